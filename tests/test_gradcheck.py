"""Gradients against central finite differences, and numerically extreme logits.

Every hidden activation x every valid (output, loss) pair x bias on/off, on a
small random 3-4-5-3 network in float64.  The finite differences perturb the
stored parameter arrays in place (``net.weights[k][i, j] += h``) and call
``net.loss``, so they go through the same public API as ``gradients``.
"""
import itertools
import math
import warnings

import numpy as np
import pytest

from tolerances import ACTIVATIONS
from tolerances import PAIRS as OUTPUT_LOSS

SIZES = [3, 4, 5, 3]
N_SAMPLES = 6
H = 1e-6
# central differences: truncation ~H^2 * f''' plus cancellation ~eps * |loss| / H
RTOL, ATOL = 1e-6, 1e-8
# relu kinks: every hidden pre-activation stays this far from 0, far beyond
# what a perturbation of size H can move it
MIN_ABS_Z = 1e-2


def random_targets(rng, output, loss, n, n_out):
    if loss == "binary_cross_entropy":
        return rng.uniform(0.0, 1.0, size=(n, n_out))
    if loss == "cross_entropy":
        # soft, un-normalised rows (sum != 1) exercise the (sum_k y_k) softmax_j - y_j rule
        Y = rng.uniform(0.0, 1.0, size=(n, n_out))
        Y[0] = 0.0
        Y[0, 1] = 1.0  # and one one-hot row
        return Y
    if loss == "poisson":
        Y = rng.poisson(1.5, size=(n, n_out)).astype(float)
        Y[0] = 0.0  # 0 log 0 = 0
        return Y
    return rng.normal(0.0, 1.0, size=(n, n_out))


def hidden_preactivations(weights, biases, X, activation):
    """All hidden-layer z for the rows of X, computed here with numpy."""
    act = {"identity": lambda z: z, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
           "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    h, zs = X, []
    for W, b in zip(weights[:-1], biases[:-1]):
        z = h @ W.T + (b if b is not None else 0.0)
        zs.append(z)
        h = act(z)
    return np.concatenate([z.ravel() for z in zs])


def make_case(impl, activation, output, loss, bias, seed):
    """A random float64 net and a batch whose hidden pre-activations avoid 0."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0.0, 0.8, size=(SIZES[k + 1], SIZES[k])) for k in range(len(SIZES) - 1)]
    biases = [rng.normal(0.0, 0.3, size=SIZES[k + 1]) for k in range(len(SIZES) - 1)] if bias else None
    if output == "exp":  # logits of order 1: exp(z) (squared) not so large that the
        weights[-1] *= 0.3  # differences' cancellation eps * |loss| / H swamps the small entries
    net = impl(SIZES, activation=activation, output=output, loss=loss, bias=bias,
               dtype="float64", weights=weights, biases=biases)
    rows = []
    while len(rows) < N_SAMPLES:  # keep candidate samples away from relu's kink
        x = rng.normal(0.0, 1.0, size=(1, SIZES[0]))
        if np.abs(hidden_preactivations(net.weights, net.biases, x, activation)).min() > MIN_ABS_Z:
            rows.append(x[0])
    X = np.array(rows)
    Y = random_targets(rng, output, loss, N_SAMPLES, SIZES[-1])
    return net, X, Y


def numeric_gradient(net, X, Y, param):
    """Central differences of net.loss with respect to every entry of ``param``."""
    grad = np.zeros_like(param)
    for idx in np.ndindex(param.shape):
        saved = param[idx]
        param[idx] = saved + H
        up = net.loss(X, Y)
        param[idx] = saved - H
        down = net.loss(X, Y)
        param[idx] = saved
        grad[idx] = (up - down) / (2 * H)
    return grad


CASES = list(itertools.product(ACTIVATIONS, OUTPUT_LOSS, [True, False]))


@pytest.mark.parametrize(
    "activation,output_loss,bias", CASES,
    ids=[f"{a}-{o}-{l}-{'bias' if b else 'nobias'}" for a, (o, l), b in CASES],
)
def test_gradients_match_finite_differences(impl, activation, output_loss, bias):
    output, loss = output_loss
    seed = CASES.index((activation, output_loss, bias))
    net, X, Y = make_case(impl, activation, output, loss, bias, seed)
    before = [W.copy() for W in net.weights]

    value, grads = net.gradients(X, Y)
    assert value == pytest.approx(net.loss(X, Y), rel=1e-14)
    assert len(grads) == len(SIZES) - 1
    for k, (dW, db) in enumerate(grads):
        assert dW.dtype == np.float64 and dW.shape == net.weights[k].shape
        np.testing.assert_allclose(dW, numeric_gradient(net, X, Y, net.weights[k]),
                                   rtol=RTOL, atol=ATOL, err_msg=f"dW[{k}]")
        if bias:
            assert db.dtype == np.float64 and db.shape == net.biases[k].shape
            np.testing.assert_allclose(db, numeric_gradient(net, X, Y, net.biases[k]),
                                       rtol=RTOL, atol=ATOL, err_msg=f"db[{k}]")
        else:
            assert db is None
    # the check is not vacuous: the gradients are not all zero
    assert max(np.abs(dW).max() for dW, _ in grads) > 1e-3
    # gradients() does not touch the parameters (the finite differences restored them)
    for W, W0 in zip(net.weights, before):
        assert np.array_equal(W, W0)


def test_relu_derivative_is_zero_for_dead_units(impl):
    # a unit with z < 0 for every sample passes no gradient to its inputs
    W1 = [[1.0, 0.0], [-1.0, -1.0]]  # unit 1 is dead for positive inputs
    W2 = [[0.5, 2.0]]
    net = impl([2, 2, 1], activation="relu", output="identity", loss="squared_error",
               bias=False, dtype="float64", weights=[W1, W2])
    X = np.array([[1.0, 2.0], [0.5, 0.25]])
    Y = np.array([[3.0], [-1.0]])
    _, ((dW1, _), (dW2, _)) = net.gradients(X, Y)
    assert np.all(dW1[1] == 0.0)
    assert dW2[0, 1] == 0.0
    # unit 0 is alive: dl/dz_out = 0.5*x0 - y, dW1[0] = mean((0.5*x0 - y) * 0.5 * x)
    r = 0.5 * X[:, 0] - Y[:, 0]
    np.testing.assert_allclose(dW1[0], (r[:, None] * 0.5 * X).mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(dW2[0, 0], (r * X[:, 0]).mean(), rtol=1e-14)


# ---------------------------------------------------------------------------
# Extreme logits: |z| up to 1e4 must give finite, correct losses and gradients
# ---------------------------------------------------------------------------

BIG = 1e4


def single_layer(impl, output, loss, dtype, W):
    """A one-layer net with x = [1]: the logits are exactly the column W."""
    return impl([1, len(W)], activation="identity", output=output, loss=loss, bias=False,
                dtype=dtype, weights=[np.array(W, dtype=float).reshape(-1, 1)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_extreme_logits(impl, dtype):
    # logits (1e4, -1e4, 1e4, -1e4, 0.5) against targets (1, 1, 0, 0, 0)
    z = [BIG, -BIG, BIG, -BIG, 0.5]
    y = [1.0, 1.0, 0.0, 0.0, 0.0]
    net = single_layer(impl, "sigmoid", "binary_cross_entropy", dtype, z)
    X, Y = np.ones((1, 1)), np.array([y])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings either
        with np.errstate(all="raise"):
            value, ((dW, _),) = net.gradients(X, Y)
            loss = net.loss(X, Y)
            yhat = net.predict(X)
    # per unit: 0 (right and sure), 1e4 (wrong and sure), 1e4, 0, log(1 + e^0.5)
    expected = 2 * BIG + math.log1p(math.exp(0.5))
    rtol = 1e-6 if dtype == "float32" else 1e-12
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=rtol)
    assert value == pytest.approx(expected, rel=rtol)
    assert np.all(np.isfinite(dW))
    # dl/dz = sigmoid(z) - y: 0, -1, +1, 0, sigmoid(0.5)
    np.testing.assert_allclose(dW[:, 0], [0.0, -1.0, 1.0, 0.0, 1 / (1 + math.exp(-0.5))],
                               rtol=rtol, atol=0)
    np.testing.assert_array_equal(yhat[0, :4], [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_extreme_logits(impl, dtype):
    z = [BIG, -BIG, 0.0]
    net = single_layer(impl, "softmax", "cross_entropy", dtype, z)
    X = np.ones((3, 1))
    labels = np.array([0, 1, 2])  # right and sure / wrong by 2e4 / wrong by 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            value, ((dW, _),) = net.gradients(X, labels)
            loss = net.loss(X, labels)
            yhat = net.predict(X)
    # per-sample losses: logsumexp(z) - z_label = 1e4 - z_label -> 0, 2e4, 1e4
    expected = (0.0 + 2 * BIG + BIG) / 3
    rtol = 1e-6 if dtype == "float32" else 1e-12
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=rtol)
    assert value == pytest.approx(expected, rel=rtol)
    # dl/dz = softmax(z) - y = (1, 0, 0) - onehot: mean over the rows -> (2/3, -1/3, -1/3)
    assert np.all(np.isfinite(dW))
    np.testing.assert_allclose(dW[:, 0], [2 / 3, -1 / 3, -1 / 3], rtol=rtol, atol=0)
    np.testing.assert_array_equal(yhat, np.tile([1.0, 0.0, 0.0], (3, 1)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_softmax_outputs_saturate_without_overflow(impl, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            sig = single_layer(impl, "sigmoid", "squared_error", dtype, [BIG, -BIG])
            _, ((dW, _),) = sig.gradients(np.ones((1, 1)), np.array([[0.0, 1.0]]))
            yhat = sig.predict(np.ones((1, 1)))
            soft = single_layer(impl, "softmax", "squared_error", dtype, [BIG, -BIG, BIG])
            p = soft.predict(np.ones((1, 1)))
    np.testing.assert_array_equal(yhat, [[1.0, 0.0]])
    # saturated sigmoid: a(1 - a) = 0, so no gradient flows (and no NaN)
    np.testing.assert_array_equal(dW, np.zeros((2, 1)))
    np.testing.assert_allclose(p, [[0.5, 0.0, 0.5]], rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_poisson_hand_computed_and_extreme_logits(impl, dtype):
    """Per unit y log(y / mu) - y + mu with mu = e^z and dl/dz = mu - y, by hand:
    z = log 2, y = 3: 3 log 1.5 - 1; z = 0, y = 0: 1 (0 log 0 = 0); z = -30,
    y = 1: 29 + e^-30; z = -1e4, y = 2 (mu underflows to 0; the loss, written
    in z, stays finite): 2 log 2 + 2e4 - 2."""
    z = [math.log(2.0), 0.0, -30.0, -BIG]
    y = [3.0, 0.0, 1.0, 2.0]
    net = single_layer(impl, "exp", "poisson", dtype, z)
    z = net.weights[0][:, 0].astype(float)  # log 2 as the dtype holds it
    X, Y = np.ones((1, 1)), np.array([y])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            value, ((dW, _),) = net.gradients(X, Y)
            loss = net.loss(X, Y)
            mu = net.predict(X)
    expected = (3 * math.log(3.0) - 3 * z[0] - 3 + math.exp(z[0])) + 1.0 \
        + (30.0 - 1.0 + math.exp(-30.0)) + (2 * math.log(2.0) + 2 * BIG - 2.0)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    assert loss == pytest.approx(expected, rel=rtol) and value == pytest.approx(expected, rel=rtol)
    assert loss == pytest.approx(3 * math.log(1.5) - 1 + 1 + 29 + 2 * math.log(2) + 2 * BIG - 2,
                                 rel=rtol)
    np.testing.assert_allclose(mu[0], [2.0, 1.0, math.exp(-30.0), 0.0], rtol=rtol, atol=0)
    np.testing.assert_allclose(dW[:, 0], [2.0 - 3.0, 1.0, math.exp(-30.0) - 1.0, -2.0],
                               rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_overflow_is_a_non_finite_loss(impl, dtype):
    """Past exp's overflow (z = 1000) the output and the Poisson loss are +inf:
    step and fit raise FloatingPointError and leave the model as it was."""
    net = single_layer(impl, "exp", "poisson", dtype, [1000.0, 0.5])
    X, Y = np.ones((2, 1)), np.array([[1.0, 2.0], [0.0, 1.0]])
    before = net.weights[0].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isposinf(net.predict(X)[:, 0]).all()
        assert np.isposinf(net.loss(X, Y))
        with pytest.raises(FloatingPointError):
            net.step(X, Y, 0.1)
        with pytest.raises(FloatingPointError):
            net.fit(X, Y, epochs=1, batch_size=2, lr=0.1)
    np.testing.assert_array_equal(net.weights[0], before)


# The compiled model against the reference on every activation, output/loss
# pair, bias setting, dtype and thread count: tests/test_kernels.py.
