"""The compiled kernels against the pure-Python reference.

Every specialisation (float32/float64, 1 and 2 threads, bias on/off, every
hidden activation, every output/loss pair) is compared on loss, predictions,
every gradient and an SGD step, on batch sizes 1, odd and larger than the
thread count (the GEMM's small path, M*N*K <= 4096) and on a net whose every
GEMM takes the blocked path even when two threads split it, each on every
GEMM code path the CPU has (``fastbp._kernels.gemm_isas()``).  Every
2-thread case with more than one row asserts that it really ran a parallel
region (``fastbp._kernels.parallel_regions()``).

float64 is held to the one relative table (tests/tolerances.py, 1e-10).
float32 is compared with the float64 reference started from the same
parameters on the same data, within per-element bounds derived from the
operation count (tests/tolerances.py): a few ulp for the row kernels (output
activation, loss, output delta), checked on their own with exact logits in
``test_row_kernels_float32_within_a_few_ulp``, and c K u sum|terms| for the
GEMMs.  Proof that this finds what it should: with an error of
(1 + 8 * 2**-24) injected by hand into one float32 row kernel of
src/_kernels.pyx (never committed), rebuilt, every test of this file and of
tests/test_properties.py as they were before (float32 within 1e-4 of the
float32 reference; 506 tests) still passed, and these failed:

- output delta of binary cross entropy (loss_row, ``delta[j]`` of LOSS_BCE):
  the 6 sigmoid/binary_cross_entropy row-kernel cases;
- softmax output (output_row, ``yhat[j]``): the 12 row-kernel cases with
  softmax output, and 8 cases of the matrix (relu, softmax, batch 33);
- output delta of squared error (loss_row, ``delta[j] = scale * g``): the 18
  row-kernel cases with squared error (identity, sigmoid, softmax output);
- per-sample cross-entropy loss (loss_row, ``loss`` of LOSS_CE): the 6
  softmax/cross_entropy row-kernel cases.

The same injection into the exp output and the Poisson loss (src/_rows.pxi),
one at a time, against this file with the exp pairs: the exp output
(``yhat[j]`` of OUT_EXP) failed the 12 exp row-kernel cases (poisson and
squared error) and 136 cases of the matrix; the per-sample Poisson loss and
the Poisson output delta each failed the 6 exp/poisson row-kernel cases and
the 64 float64 exp/poisson cases of the matrix.
"""
import functools
import itertools

import numpy as np
import pytest

import fastbp
from fastbp import _kernels, reference

from tolerances import (ACTIVATIONS, PAIRS, SAFETY, U, assert_close, assert_within, delta_bound,
                        float32_bounds, loss_bound, output_bound)

DTYPES = ["float32", "float64"]
THREADS = [1, 2]
BATCHES = [1, 5, 33]
SMALL = [4, 7, 5, 3]
# Every GEMM of this net (forward, backward and update of each layer, all of
# the same M*N*K = batch * n_in * n_out) is above the small path's 4096, also
# with the batch rows or the output units split in two: 10 * 24 * 40 / 2 = 4800,
# 10 * 40 * 24 / 2 = 4800, 10 * 24 * 36 / 2 = 4320.  The pure-Python reference
# takes about 10 ms on it.
BLOCKED, BLOCKED_BATCH = [24, 40, 24, 36], 10
SHAPES = [(SMALL, n) for n in BATCHES] + [(BLOCKED, BLOCKED_BATCH)]
LR = 0.25  # exact in float32, so both models take the same step size


@pytest.fixture
def threads():
    """Set the thread count; with more than one thread, every batch step and
    prediction takes the parallel path, however small the network."""
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)

    def set_threads(n):
        fastbp.set_num_threads(n)

    yield set_threads
    fastbp.set_num_threads(before)
    _kernels.set_parallel_threshold(threshold)


@pytest.fixture
def isas():
    """The GEMM code paths this CPU has; the one in use is restored afterwards."""
    before = _kernels.gemm_isa()
    yield _kernels.gemm_isas()
    _kernels.set_gemm_isa(before)


def make_data(sizes, n, output, loss, seed):
    """A batch of float32 values (exact in float64, so both dtypes see the same data)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    if loss == "cross_entropy":
        Y = rng.integers(0, sizes[-1], size=n)
    elif loss == "poisson":  # counts, zeros among them (0 log 0 = 0)
        Y = rng.poisson(1.5, size=(n, sizes[-1])).astype(np.float32)
    elif output in ("sigmoid", "softmax", "exp") or loss == "binary_cross_entropy":
        Y = rng.uniform(size=(n, sizes[-1])).astype(np.float32)
    else:
        Y = rng.normal(size=(n, sizes[-1])).astype(np.float32)
    return X, Y


def initial_params(sizes, activation, bias, seed=3):
    """float32 parameters (non-zero biases, so that their path is exercised)."""
    init = fastbp.MLP(sizes, activation=activation, bias=bias, dtype="float32", seed=seed)
    weights = [np.array(W) for W in init.weights]
    biases = None
    if bias:
        rng = np.random.default_rng(seed + 100)
        biases = [rng.normal(scale=0.3, size=n).astype(np.float32) for n in sizes[1:]]
    return weights, biases


def pair(sizes, activation, output, loss, bias, dtype, seed=3):
    """A fast model of ``dtype`` and a reference of the same dtype, same parameters."""
    weights, biases = initial_params(sizes, activation, bias, seed)
    kw = dict(activation=activation, output=output, loss=loss, bias=bias, dtype=dtype,
              weights=weights, biases=biases)
    return fastbp.MLP(sizes, **kw), reference.MLP(sizes, **kw)


def assert_same_params(fast, ref, dtype, what):
    for k in range(fast.n_layers):
        assert_close(fast.weights[k], ref.weights[k], dtype, f"{what} W{k}")
        if fast.bias:
            assert_close(fast.biases[k], ref.biases[k], dtype, f"{what} b{k}")


@functools.lru_cache(maxsize=None)
def reference_results(sizes, batch, activation, output, loss, bias):
    """The float64 reference on one case, once for every dtype, thread count and ISA."""
    sizes = list(sizes)
    weights, biases = initial_params(sizes, activation, bias)
    ref = reference.MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
                        dtype="float64", weights=weights, biases=biases)
    X, Y = make_data(sizes, batch, output, loss, seed=batch)
    out = dict(X=X, Y=Y, predict=ref.predict(X), loss=ref.loss(X, Y), gradients=ref.gradients(X, Y))
    out["bounds"] = float32_bounds(ref, X, Y, lr=LR)
    out["step_loss"] = ref.step(X, Y, LR)
    out["W"] = [W.copy() for W in ref.weights]
    out["b"] = [b.copy() if b is not None else None for b in ref.biases]
    return out


class Checker:
    """Compares one quantity of the fast model with the float64 reference: for
    float64 within TOL, for float32 within its derived bound."""

    def __init__(self, dtype, where):
        self.dtype, self.where = dtype, where

    def __call__(self, fast, ref, bound, what):
        what = f"{self.where}: {what}"
        if self.dtype == "float64":
            assert_close(fast, ref, "float64", what)
        else:
            assert_within(fast, ref, bound, what)


def ran_in_parallel(call):
    """call(); whether it ran at least one parallel region with >1 thread."""
    before = _kernels.parallel_regions()
    result = call()
    return result, _kernels.parallel_regions() > before


CASES = list(itertools.product(ACTIVATIONS, PAIRS, DTYPES, [True, False], THREADS, SHAPES))


@pytest.mark.parametrize(
    "activation,pair_,dtype,bias,n_threads,shape",
    CASES,
    ids=[f"{a}-{o}-{l}-{d}-{'b' if b else 'nob'}-t{t}-{'blocked' if s is BLOCKED else 'n'}{n}"
         for a, (o, l), d, b, t, (s, n) in CASES],
)
def test_fast_matches_reference(activation, pair_, dtype, bias, n_threads, shape, threads, isas):
    output, loss = pair_
    sizes, batch = shape
    threads(n_threads)
    ref = reference_results(tuple(sizes), batch, activation, output, loss, bias)
    X, Y, B = ref["X"], ref["Y"], ref["bounds"]
    # 2 threads and more than one row: every call must run a parallel region
    parallel = n_threads > 1 and batch > 1
    weights, biases = initial_params(sizes, activation, bias)
    for isa in isas:
        _kernels.set_gemm_isa(isa)
        check = Checker(dtype, isa)
        fast = fastbp.MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
                          dtype=dtype, weights=weights, biases=biases)

        pred, par = ran_in_parallel(lambda: fast.predict(X))
        assert pred.dtype == np.dtype(dtype)
        check(pred, ref["predict"], B["predict"], "predict")
        assert par or not parallel, f"{isa}: predict ran serially on 2 threads"
        value, par = ran_in_parallel(lambda: fast.loss(X, Y))
        check(value, ref["loss"], B["loss"], "loss")
        assert par or not parallel, f"{isa}: loss ran serially on 2 threads"

        (lf, gf), par = ran_in_parallel(lambda: fast.gradients(X, Y))
        assert par or not parallel, f"{isa}: gradients ran serially on 2 threads"
        lr_, gr = ref["gradients"]
        check(lf, lr_, B["loss"], "gradients loss")
        for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, gr)):
            assert dWf.dtype == np.dtype(dtype)
            check(dWf, dWr, B["dW"][k], f"dW{k}")
            if bias:
                check(dbf, dbr, B["db"][k], f"db{k}")
            else:
                assert dbf is None and dbr is None

        value, par = ran_in_parallel(lambda: fast.step(X, Y, LR))
        assert par or not parallel, f"{isa}: step ran serially on 2 threads"
        check(value, ref["step_loss"], B["loss"], "step loss")
        for k in range(fast.n_layers):
            check(fast.weights[k], ref["W"][k], B["W_step"][k], f"after step W{k}")
            if bias:
                check(fast.biases[k], ref["b"][k], B["b_step"][k], f"after step b{k}")


def test_batch_of_one_runs_in_parallel(threads):
    threads(2)
    net = fastbp.MLP(SMALL, activation="tanh", seed=0)
    X = np.ones((1, SMALL[0]))
    assert ran_in_parallel(lambda: net.gradients(X, [1]))[1]


# ---------------------------------------------------------------------------
# The float32 row kernels on their own, with exact logits: a few ulp
# ---------------------------------------------------------------------------

ROW_CASES = list(itertools.product(PAIRS, THREADS, BATCHES))


@pytest.mark.parametrize("pair_,n_threads,batch", ROW_CASES,
                         ids=[f"{o}-{l}-t{t}-n{n}" for (o, l), t, n in ROW_CASES])
def test_row_kernels_float32_within_a_few_ulp(pair_, n_threads, batch, threads):
    """Output activation, per-sample loss and output delta in float32, against
    the float64 reference, where the GEMM before them is exact: one layer
    without bias, fed the rows of the identity matrix, so z = W's columns
    exactly and dW = delta^T exactly.  Each is then computed in double and
    rounded once: the bound is 2 u |value| (plus, for squared error after
    sigmoid/softmax, the effect of the stored outputs' rounding)."""
    output, loss = pair_
    threads(n_threads)
    n_out = 4
    rng = np.random.default_rng(batch)
    W = rng.normal(scale=2.0, size=(n_out, batch)).astype(np.float32)
    X = np.eye(batch, dtype=np.float32)
    if loss == "cross_entropy":
        Y = rng.integers(0, n_out, size=batch)
        Y2 = np.eye(n_out)[Y]
    else:
        Y = rng.uniform(size=(batch, n_out)).astype(np.float32)
        Y2 = Y.astype(np.float64)
    kw = dict(output=output, loss=loss, bias=False, weights=[W])
    fast = fastbp.MLP([batch, n_out], dtype="float32", **kw)
    ref = reference.MLP([batch, n_out], dtype="float64", **kw)
    Z = W.T.astype(np.float64)                      # the logits, exactly
    zero = np.zeros_like(Z)
    s, es = output_bound(output, Z, zero)
    ell, eell = loss_bound(loss, Z, zero, s, es, Y2)
    d, ed = delta_bound(loss, output, Z, zero, s, es, Y2)

    assert_within(fast.predict(X), ref.predict(X), SAFETY * es, "output activation")
    assert_within(fast.loss(X, Y), ref.loss(X, Y), SAFETY * eell.mean(), "loss")
    lf, ((dWf, _),) = fast.gradients(X, Y)
    lr_, ((dWr, _),) = ref.gradients(X, Y)
    assert_within(lf, lr_, SAFETY * eell.mean(), "gradients loss")
    assert_within(dWf.T, dWr.T, SAFETY * ed, "output delta")
    if loss != "squared_error" or output == "identity":
        # these kernels read only exact inputs: the bound is 2 u |delta|, nothing more
        np.testing.assert_allclose(SAFETY * ed, 2 * U * np.abs(d), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("head", [("softmax", "cross_entropy"), ("exp", "poisson")])
def test_fit_matches_reference(dtype, n_threads, shuffle, head, threads):
    """The epoch loop (batching, shuffling) against the reference's of the same
    dtype; the float32 arithmetic of each step is bounded in the tests above.
    Accuracy is recorded for the classification loss only."""
    threads(n_threads)
    sizes = [3, 6, 2]
    fast, ref = pair(sizes, "tanh", *head, True, dtype)
    X, Y = make_data(sizes, 23, *head, seed=7)
    hf = fast.fit(X, Y, epochs=3, batch_size=4, lr=0.2, shuffle=shuffle, seed=11)
    hr = ref.fit(X, Y, epochs=3, batch_size=4, lr=0.2, shuffle=shuffle, seed=11)
    assert_close(hf.loss, hr.loss, dtype, "history")
    assert_same_params(fast, ref, dtype, "after fit")
    assert len(hf.accuracy) == (3 if head[1] == "cross_entropy" else 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
def test_fit_is_its_steps_bitwise(dtype, n_threads, threads):
    """fit = step on the shuffled batches, bit for bit, so the per-step float32
    bounds above cover every step of a fit."""
    threads(n_threads)
    sizes = [3, 6, 2]
    fast, _ = pair(sizes, "tanh", "softmax", "cross_entropy", True, dtype)
    steps, _ = pair(sizes, "tanh", "softmax", "cross_entropy", True, dtype)
    X, Y = make_data(sizes, 23, "softmax", "cross_entropy", seed=7)
    fast.fit(X, Y, epochs=2, batch_size=4, lr=0.2, seed=11, flush_denormals=False)
    rng = np.random.default_rng(11)
    for _ in range(2):
        order = rng.permutation(len(X))
        for start in range(0, len(X), 4):
            steps.step(X[order[start:start + 4]], Y[order[start:start + 4]], 0.2)
    assert fast._theta.tobytes() == steps._theta.tobytes()


# Sizes that straddle the GEMM's register and cache blocks, against the float64 reference.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("sizes,batch", [([37, 70, 19], 41), ([65, 33, 17, 9], 130), ([130, 8, 2], 3)])
def test_blocked_sizes_match_reference(dtype, n_threads, sizes, batch, threads, isas):
    threads(n_threads)
    ref = reference_results(tuple(sizes), batch, "relu", "identity", "squared_error", True)
    X, Y, B = ref["X"], ref["Y"], ref["bounds"]
    weights, biases = initial_params(sizes, "relu", True)
    for isa in isas:
        _kernels.set_gemm_isa(isa)
        check = Checker(dtype, isa)
        fast = fastbp.MLP(sizes, activation="relu", output="identity", loss="squared_error",
                          dtype=dtype, weights=weights, biases=biases)
        lf, gf = fast.gradients(X, Y)
        check(lf, ref["gradients"][0], B["loss"], "loss")
        for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, ref["gradients"][1])):
            check(dWf, dWr, B["dW"][k], f"dW{k}")
            check(dbf, dbr, B["db"][k], f"db{k}")
        fast.step(X, Y, LR)
        for k in range(fast.n_layers):
            check(fast.weights[k], ref["W"][k], B["W_step"][k], f"after step W{k}")
            check(fast.biases[k], ref["b"][k], B["b_step"][k], f"after step b{k}")


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
