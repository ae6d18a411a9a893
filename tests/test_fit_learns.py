"""fit: it learns, and it is exactly the sequence of SGD steps it claims to be.

The reference is slow, so its learning runs are small; the compiled model gets
the bigger ones.  The whole file must run in well under a minute.
"""
import numpy as np
import pytest

from fastbp._common import History


def is_reference(impl):
    return impl.__module__ == "fastbp.reference"


# ---------------------------------------------------------------------------
# Data sets made here
# ---------------------------------------------------------------------------

def sine_data(n, rng):
    """y = sin(x) on [-3, 3]."""
    x = np.linspace(-3.0, 3.0, n)
    rng.shuffle(x)
    return x.reshape(-1, 1), np.sin(x).reshape(-1, 1)


# The four-pixel images of the seeds (2x2, pixels tl, tr, bl, br in [-1, 1]):
# solid, vertical, diagonal, horizontal.  Each class is a +-sign pattern; the
# image or its negative, with random magnitudes and noise, so no single linear
# rule separates the classes (a hidden layer is needed).
PATTERNS = np.array([
    [1, 1, 1, 1],     # solid
    [1, -1, 1, -1],   # vertical
    [1, -1, -1, 1],   # diagonal
    [1, 1, -1, -1],   # horizontal
], dtype=float)


def four_pixel_data(n, rng):
    labels = rng.integers(0, 4, size=n)
    sign = rng.choice([-1.0, 1.0], size=(n, 1))
    magnitude = rng.uniform(0.5, 1.0, size=(n, 4))
    X = sign * PATTERNS[labels] * magnitude + rng.normal(0.0, 0.05, size=(n, 4))
    return X, labels


def blobs(n, rng, centers):
    labels = rng.integers(0, len(centers), size=n)
    X = np.asarray(centers, dtype=float)[labels] + rng.normal(0.0, 0.6, size=(n, 2))
    return X, labels


def accuracy(net, X, labels):
    return float(np.mean(np.argmax(net.predict(X), axis=1) == labels))


# ---------------------------------------------------------------------------
# It learns
# ---------------------------------------------------------------------------

def test_fit_learns_sine_regression(impl):
    rng = np.random.default_rng(0)
    if is_reference(impl):
        X, Y = sine_data(40, rng)
        net = impl([1, 8, 1], activation="tanh", output="identity", loss="squared_error",
                   dtype="float64", seed=1)
        hist = net.fit(X, Y, epochs=500, batch_size=8, lr=0.1, seed=2)
        target = 0.01
    else:
        X, Y = sine_data(400, rng)
        net = impl([1, 32, 32, 1], activation="tanh", output="identity", loss="squared_error",
                   dtype="float32", seed=1)
        hist = net.fit(X, Y, epochs=400, batch_size=16, lr=0.05, seed=2)
        target = 0.002
    assert isinstance(hist, History) and len(hist.loss) == (500 if is_reference(impl) else 400)
    assert hist.loss[-1] < hist.loss[0] / 10
    final = net.loss(X, Y)  # mean 1/2 (yhat - y)^2; predicting 0 would give ~0.23
    assert final < target
    X_test = np.linspace(-2.9, 2.9, 23).reshape(-1, 1)
    assert np.abs(net.predict(X_test) - np.sin(X_test)).max() < (0.3 if is_reference(impl) else 0.15)


def test_fit_learns_four_pixel_images(impl):
    rng = np.random.default_rng(1)
    n_train = 80 if is_reference(impl) else 2000
    X, labels = four_pixel_data(n_train, rng)
    X_test, labels_test = four_pixel_data(400, rng)
    net = impl([4, 8, 4], activation="relu", output="softmax", loss="cross_entropy",
               dtype="float32", seed=3)
    before = accuracy(net, X_test, labels_test)
    epochs = 60 if is_reference(impl) else 100
    hist = net.fit(X, labels, epochs=epochs, batch_size=8, lr=0.1, seed=4)
    assert hist.loss[-1] < 0.1 < hist.loss[0]
    assert before < 0.6
    assert accuracy(net, X_test, labels_test) >= 0.97


def test_fit_learns_blobs_binary_cross_entropy(impl):
    # three blobs, multi-label style targets: unit j says "is it blob j" (sigmoid + BCE)
    rng = np.random.default_rng(5)
    centers = [(-2.0, 0.0), (2.0, 0.0), (0.0, 2.5)]
    n = 90 if is_reference(impl) else 1500
    X, labels = blobs(n, rng, centers)
    Y = np.eye(3)[labels]
    net = impl([2, 6, 3], activation="sigmoid", output="sigmoid", loss="binary_cross_entropy",
               dtype="float64", seed=6)
    hist = net.fit(X, Y, epochs=60 if is_reference(impl) else 100, batch_size=10, lr=0.5, seed=7)
    assert hist.loss[-1] < hist.loss[0] / 2
    X_test, labels_test = blobs(300, rng, centers)
    assert accuracy(net, X_test, labels_test) >= 0.9


# ---------------------------------------------------------------------------
# fit is exactly a sequence of step calls
# ---------------------------------------------------------------------------

def small_problem():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(23, 3))
    labels = rng.integers(0, 3, size=23)
    return X, labels


def small_net(impl, dtype="float32", seed=5):
    return impl([3, 5, 3], activation="tanh", output="softmax", loss="cross_entropy",
                bias=True, dtype=dtype, seed=seed)


def params(net):
    return [p.copy() for p in net.weights + net.biases if p is not None]


def assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.max(np.abs(x.astype(float) - y))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_without_shuffle_is_consecutive_steps(impl, dtype):
    X, labels = small_problem()
    batch, epochs, lr = 7, 3, 0.3  # 23 rows: batches of 7, 7, 7 and a last one of 2
    a, b = small_net(impl, dtype), small_net(impl, dtype)
    hist = a.fit(X, labels, epochs=epochs, batch_size=batch, lr=lr, shuffle=False)
    expected_hist = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch):
            xb, yb = X[start:start + batch], labels[start:start + batch]
            total += b.step(xb, yb, lr) * len(xb)
        expected_hist.append(total / len(X))
    assert_bitwise_equal(params(a), params(b))
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(hist.loss, expected_hist, rtol=rtol)
    assert params(a)[0].dtype == np.dtype(dtype)


def test_fit_with_shuffle_follows_default_rng_permutations(impl):
    X, labels = small_problem()
    batch, epochs, lr, seed = 5, 2, 0.3, 42
    a, b = small_net(impl), small_net(impl)
    a.fit(X, labels, epochs=epochs, batch_size=batch, lr=lr, shuffle=True, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch):
            idx = order[start:start + batch]
            b.step(X[idx], labels[idx], lr)
    assert_bitwise_equal(params(a), params(b))


def test_last_partial_batch_uses_its_own_mean(impl):
    # 10 rows, batch_size 4: batches 4, 4, 2; the last update is lr * the mean over 2 rows
    X, labels = small_problem()
    X, labels = X[:10], labels[:10]
    a, b = small_net(impl, "float64"), small_net(impl, "float64")
    b.step(X[:4], labels[:4], 0.2)
    b.step(X[4:8], labels[4:8], 0.2)
    before = params(b)
    _, grads = b.gradients(X[8:], labels[8:])
    a.fit(X, labels, epochs=1, batch_size=4, lr=0.2, shuffle=False)
    # gradients of the mean over the last 2 rows, by hand from per-row gradients
    per_row = [b.gradients(X[i:i + 1], labels[i:i + 1])[1] for i in (8, 9)]
    for k, (dW, db) in enumerate(grads):
        np.testing.assert_allclose(dW, (per_row[0][k][0] + per_row[1][k][0]) / 2, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(db, (per_row[0][k][1] + per_row[1][k][1]) / 2, rtol=1e-12, atol=1e-15)
    # params() lists the weights, then the biases
    n = len(grads)
    expected = [before[k] - 0.2 * grads[k][0] for k in range(n)] + \
               [before[n + k] - 0.2 * grads[k][1] for k in range(n)]
    for got, want in zip(params(a), expected):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_batch_larger_than_data_is_one_full_batch(impl):
    X, labels = small_problem()
    a, b = small_net(impl), small_net(impl)
    hist = a.fit(X, labels, epochs=2, batch_size=1000, lr=0.1, shuffle=False)
    losses = [b.step(X, labels, 0.1) for _ in range(2)]
    assert_bitwise_equal(params(a), params(b))
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-6)


def test_same_seed_gives_bit_identical_weights(impl):
    X, labels = small_problem()
    runs = []
    for fit_seed in (7, 7, 8):
        net = small_net(impl, seed=1)
        net.fit(X, labels, epochs=2, batch_size=4, lr=0.2, shuffle=True, seed=fit_seed)
        runs.append(params(net))
    assert_bitwise_equal(runs[0], runs[1])
    # a different shuffle seed does change the result (so the check above can fail)
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))
    # and so does a different initialisation seed
    assert not np.array_equal(small_net(impl, seed=1).weights[0], small_net(impl, seed=2).weights[0])


def test_epochs_zero_returns_empty_history_and_changes_nothing(impl):
    X, labels = small_problem()
    net = small_net(impl)
    before = params(net)
    hist = net.fit(X, labels, epochs=0, batch_size=4, lr=0.2)
    assert isinstance(hist, History)
    assert hist.loss == []
    assert_bitwise_equal(params(net), before)


def test_fit_does_not_modify_inputs_and_writes_into_stored_arrays(impl):
    X, labels = small_problem()
    X0, labels0 = X.copy(), labels.copy()
    net = small_net(impl)
    stored = net.weights[0]
    hist = net.fit(X, labels, epochs=2, batch_size=6, lr=0.2, seed=0)
    assert len(hist.loss) == 2 and all(np.isfinite(hist.loss))
    assert np.array_equal(X, X0) and np.array_equal(labels, labels0)
    assert net.weights[0] is stored  # updated in place
    assert not np.array_equal(stored, small_net(impl).weights[0])


def test_history_is_the_mean_of_batch_losses_before_each_update(impl):
    # epochs of one full batch: hist.loss[e] is the loss before epoch e's update
    X, labels = small_problem()
    net = small_net(impl, "float64")
    probe = small_net(impl, "float64")
    hist = net.fit(X, labels, epochs=3, batch_size=len(X), lr=0.5, shuffle=False)
    expected = []
    for _ in range(3):
        expected.append(probe.loss(X, labels))
        probe.step(X, labels, 0.5)
    np.testing.assert_allclose(hist.loss, expected, rtol=1e-12)
    assert hist.loss[2] < hist.loss[0]
