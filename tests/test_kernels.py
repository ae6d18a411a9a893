"""The compiled kernels against the pure-Python reference.

Every specialisation (float32/float64, 1 and 2 threads, bias on/off, every
hidden activation, every output/loss pair, batch sizes 1, odd, and larger than
the thread count) is compared on loss, predictions, every gradient, an SGD
step and a short fit, with the one tolerance table (tests/tolerances.py).
"""
import itertools

import numpy as np
import pytest

import fastbp
from fastbp import reference

from tolerances import ACTIVATIONS, PAIRS, assert_close

DTYPES = ["float32", "float64"]
THREADS = [1, 2]
BATCHES = [1, 5, 33]


@pytest.fixture
def threads():
    """Set the thread count; with more than one thread, every batch step and
    prediction takes the parallel path, however small the network."""
    from fastbp import _kernels

    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)

    def set_threads(n):
        fastbp.set_num_threads(n)

    yield set_threads
    fastbp.set_num_threads(before)
    _kernels.set_parallel_threshold(threshold)


def make_data(sizes, n, output, loss, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0]))
    if loss == "cross_entropy":
        Y = rng.integers(0, sizes[-1], size=n)
    elif output in ("sigmoid", "softmax") or loss == "binary_cross_entropy":
        Y = rng.uniform(size=(n, sizes[-1]))
    else:
        Y = rng.normal(size=(n, sizes[-1]))
    return X, Y


def pair(sizes, activation, output, loss, bias, dtype, seed=3):
    kw = dict(activation=activation, output=output, loss=loss, bias=bias, dtype=dtype, seed=seed)
    fast = fastbp.MLP(sizes, **kw)
    ref = reference.MLP(sizes, **kw)
    if bias:  # non-zero biases, so that their path is exercised in the forward pass
        rng = np.random.default_rng(seed + 100)
        for k in range(fast.n_layers):
            b = rng.normal(scale=0.3, size=sizes[k + 1])
            fast.biases[k][...] = b
            ref.biases[k][...] = b
    return fast, ref


def assert_same_params(fast, ref, dtype, what):
    for k in range(fast.n_layers):
        assert_close(fast.weights[k], ref.weights[k], dtype, f"{what} W{k}")
        if fast.bias:
            assert_close(fast.biases[k], ref.biases[k], dtype, f"{what} b{k}")


CASES = list(itertools.product(ACTIVATIONS, PAIRS, DTYPES, [True, False], THREADS, BATCHES))


@pytest.mark.parametrize(
    "activation,pair_,dtype,bias,n_threads,batch",
    CASES,
    ids=[f"{a}-{o}-{l}-{d}-{'b' if b else 'nob'}-t{t}-n{n}" for a, (o, l), d, b, t, n in CASES],
)
def test_fast_matches_reference(activation, pair_, dtype, bias, n_threads, batch, threads):
    output, loss = pair_
    threads(n_threads)
    sizes = [4, 7, 5, 3]
    fast, ref = pair(sizes, activation, output, loss, bias, dtype)
    X, Y = make_data(sizes, batch, output, loss, seed=batch)

    assert_close(fast.predict(X), ref.predict(X), dtype, "predict")
    assert fast.predict(X).dtype == np.dtype(dtype)
    assert_close(fast.loss(X, Y), ref.loss(X, Y), dtype, "loss")

    lf, gf = fast.gradients(X, Y)
    lr_, gr = ref.gradients(X, Y)
    assert_close(lf, lr_, dtype, "gradients loss")
    for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, gr)):
        assert dWf.dtype == np.dtype(dtype)
        assert_close(dWf, dWr, dtype, f"dW{k}")
        if bias:
            assert_close(dbf, dbr, dtype, f"db{k}")
        else:
            assert dbf is None and dbr is None

    assert_close(fast.step(X, Y, 0.3), ref.step(X, Y, 0.3), dtype, "step loss")
    assert_same_params(fast, ref, dtype, "after step")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_matches_reference(dtype, n_threads, shuffle, threads):
    threads(n_threads)
    sizes = [3, 6, 2]
    fast, ref = pair(sizes, "tanh", "softmax", "cross_entropy", True, dtype)
    X, Y = make_data(sizes, 23, "softmax", "cross_entropy", seed=7)
    hf = fast.fit(X, Y, epochs=3, batch_size=4, lr=0.2, shuffle=shuffle, seed=11)
    hr = ref.fit(X, Y, epochs=3, batch_size=4, lr=0.2, shuffle=shuffle, seed=11)
    assert_close(hf.loss, hr.loss, dtype, "history")
    assert_same_params(fast, ref, dtype, "after fit")


# Sizes that straddle the GEMM's register and cache blocks, against the reference.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("sizes,batch", [([37, 70, 19], 41), ([65, 33, 17, 9], 130), ([130, 8, 2], 3)])
def test_blocked_sizes_match_reference(dtype, n_threads, sizes, batch, threads):
    threads(n_threads)
    fast, ref = pair(sizes, "relu", "identity", "squared_error", True, dtype)
    X, Y = make_data(sizes, batch, "identity", "squared_error", seed=1)
    lf, gf = fast.gradients(X, Y)
    lr_, gr = ref.gradients(X, Y)
    assert_close(lf, lr_, dtype, "loss")
    for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, gr)):
        assert_close(dWf, dWr, dtype, f"dW{k}")
        assert_close(dbf, dbr, dtype, f"db{k}")
    fast.step(X, Y, 0.01)
    ref.step(X, Y, 0.01)
    assert_same_params(fast, ref, dtype, "after step")


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(dtype, threads):
    sizes = [50, 96, 64, 10]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, sizes[0]))
    y = rng.integers(0, 10, size=300)
    results = []
    for n in (1, 2, 3, 8):
        threads(n)
        net = fastbp.MLP(sizes, dtype=dtype, seed=0)
        hist = net.fit(X, y, epochs=2, batch_size=128, lr=0.05, seed=1)
        results.append((net._theta.copy(), hist.loss, net.predict(X), net.gradients(X, y)[1][0][0]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_threads_setting():
    before = fastbp.get_num_threads()
    try:
        fastbp.set_num_threads(3)
        assert fastbp.get_num_threads() == 3
        for bad in (0, -1, 1.5, "2", True):
            with pytest.raises(ValueError):
                fastbp.set_num_threads(bad)
    finally:
        fastbp.set_num_threads(before)
