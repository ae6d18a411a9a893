"""predict's fast path (issue 11: microsecond predict).

``MLP.predict`` hands a C-contiguous float32/float64 ndarray to a compiled
fast path (``Network.predict_fast``) that makes check_X's checks itself, and
runs small calls with the GIL held in a workspace cached per model, one row
at a time through ``fbp_rowdot``; the estimators of ``fastbp.sklearn`` skip
scikit-learn's checking machinery for such arrays.  Here:

* the fast path gives bitwise the general path's output (``_predict_general``:
  check_X and ``Network.predict``), for every model dtype x input dtype, every
  activation and output, every GEMM code path, small and large calls, the
  parallel path, layers deeper than one GEMM slab;
* every input it declines or rejects gives the general path's result or
  error, with the messages the rest of the suite pins;
* the cached workspace is reused (no allocation growth), and concurrent
  predicts from several Python threads on one model stay correct;
* the estimators' fast path gives the general path's bits and scikit-learn's
  errors and warnings.
"""
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _kernels

ACT_OUT = [("relu", "softmax", "cross_entropy"), ("tanh", "identity", "squared_error"),
           ("sigmoid", "sigmoid", "binary_cross_entropy"), ("identity", "softmax", "cross_entropy")]
# 30-64-2 (the issue's; one row by fbp_rowdot, 3+ rows by the GEMM), n_out
# not a multiple of 8, a layer deeper than one 256-wide GEMM slab (by
# fbp_rowdot, and by the GEMM), no hidden layer.
SIZES = [[30, 64, 2], [7, 13, 5, 3], [300, 9, 3], [300, 19, 9], [6, 3]]
ROWS = [1, 2, 9, 64, 65, 700]


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), np.abs(a.astype(float) - b.astype(float)).max()


def _X(rows, n_in, dtype, seed=0, scale=2.0):
    return (np.random.default_rng(seed).standard_normal((rows, n_in)) * scale).astype(dtype)


@pytest.fixture
def isa():
    before = _kernels.gemm_isa()
    yield _kernels.set_gemm_isa
    _kernels.set_gemm_isa(before)


@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_dtype", ["float32", "float64"])
@pytest.mark.parametrize("act, output, loss", ACT_OUT)
def test_fast_path_is_bitwise_the_general_path(model_dtype, x_dtype, act, output, loss, isa):
    for path in _kernels.gemm_isas():
        isa(path)
        for sizes in SIZES:
            for bias in (True, False):
                net = fastbp.MLP(sizes, activation=act, output=output, loss=loss, bias=bias,
                                 dtype=model_dtype, seed=3)
                for rows in ROWS:
                    X = _X(rows, sizes[0], x_dtype, seed=rows)
                    fast = net._predict_fast(X)
                    assert fast is not None, "the fast path declined a case it takes"
                    _same(fast, net._predict_general(X))
                    _same(net.predict(X), fast)


def test_float64_input_converts_as_check_x_does():
    """float64 values between float32 neighbours, beyond float32's precision, tiny
    (denormal in float32) and large: the fast path's cast is numpy's."""
    net = fastbp.MLP([4, 8, 2], output="identity", loss="squared_error", seed=0)
    X = np.array([[1 + 2.0**-30, 1 - 2.0**-25, 1e-40, 3e38],
                  [np.nextafter(1.0, 2.0), -1e-45, 1.5e-39, -3.4e38]])
    _same(net.predict(X), net._predict_general(X))
    _same(net.predict(X), net.predict(X.astype(np.float32)))
    wide = fastbp.MLP([4, 8, 2], output="identity", loss="squared_error", dtype="float64", seed=0)
    X32 = X.astype(np.float32)
    _same(wide.predict(X32), wide.predict(X32.astype(np.float64)))


def test_parallel_path_matches(isa):
    """Threshold 0 and 2 threads: the fast path goes through run_call's team,
    as the general path does, and gives the same bits."""
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    try:
        fastbp.set_num_threads(2)
        net = fastbp.MLP([30, 64, 2], seed=1)
        for rows in (1, 5, 100, 5000):
            X = _X(rows, 30, np.float64, seed=rows)
            r0 = _kernels.parallel_regions()
            fast = net.predict(X)
            assert (_kernels.parallel_regions() > r0 or not _kernels.openmp_enabled()
                    or fastbp.get_num_threads() < 2)   # OMP_THREAD_LIMIT=1
            _same(fast, net._predict_general(X))
            with fastbp.threads(1):
                _same(net.predict(X), fast)
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(threshold)


def test_declined_inputs_take_the_general_path():
    net = fastbp.MLP([5, 6, 3], seed=0)
    X = _X(40, 5, np.float64)
    expected = net._predict_general(X)
    big_endian = X.astype(">f8")
    unaligned = np.frombuffer(b"\0" + X.tobytes(), dtype=np.float64, offset=1).reshape(40, 5)
    assert not unaligned.flags.aligned
    readonly = X.copy()
    readonly.flags.writeable = False
    declined = {
        "fortran": np.asfortranarray(X), "strided": np.repeat(X, 2, axis=0)[::2],
        "big endian": big_endian, "unaligned": unaligned, "list": X.tolist(),
        "matrix subclass": X.view(np.matrix), "float16": X.astype(np.float16),
        "int": np.round(X * 10).astype(np.int64), "longdouble": X.astype(np.longdouble),
    }
    for name, value in declined.items():
        assert net._predict_fast(value) is None, name
        want = expected if name not in ("float16", "int", "longdouble") else net._predict_general(value)
        _same(net.predict(value), want)
    _same(net._predict_fast(readonly), expected)   # read-only arrays are taken


@pytest.mark.parametrize("rows", [1, 5, 64, 3000])
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_errors_are_the_general_paths(rows, model_dtype):
    net = fastbp.MLP([30, 64, 2], dtype=model_dtype, seed=0)
    good = _X(rows, 30, np.float64)
    bad_row = rows // 2
    cases = {}
    for value, what in ((np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf")):
        for dt in (np.float32, np.float64):
            X = good.astype(dt)
            X[bad_row, 7] = value
            cases[f"{what} {dt.__name__}"] = (X, f"X contains NaN or Inf (first in row {bad_row})")
    over = good.copy()
    over[bad_row, 3] = 1e300
    cases["overflow"] = (over, f"X row {bad_row} overflows float32" if model_dtype == "float32"
                         else None)
    cases["features"] = (good[:, :29].copy(), "X has 29 features per sample, the network expects 30")
    cases["1-D"] = (good[0].copy(), "X must be 2-D (n_samples, n_in=30), got 1-D")
    cases["3-D"] = (good[None].copy(), "X must be 2-D (n_samples, n_in=30), got 3-D")
    cases["empty"] = (good[:0].copy(), "X is empty (0 samples)")
    cases["strings"] = (np.full((rows, 30), "a"), "X: unsupported dtype <U1; expected real numbers")
    for name, (X, message) in cases.items():
        if message is None:   # float64 model: 1e300 is fine
            _same(net.predict(X), net._predict_general(X))
            continue
        theta = net._theta.copy()
        with pytest.raises(ValueError) as general:
            net._predict_general(X)
        with pytest.raises(ValueError) as fast:
            net.predict(X)
        assert str(fast.value) == str(general.value), name
        assert str(fast.value).startswith(message), (name, str(fast.value))
        assert net._theta.tobytes() == theta.tobytes()


def test_feature_names_are_checked_first():
    pd = pytest.importorskip("pandas")
    X = _X(20, 3, np.float64)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    net = fastbp.MLP([3, 4, 2], seed=0)
    net.fit(frame, np.arange(20) % 2, epochs=1, lr=0.01)
    with pytest.warns(UserWarning, match="X does not have valid feature names, but MLP was fitted"):
        got = net.predict(X)
    _same(got, net.predict(frame))
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        net.predict(frame[["b", "a", "c"]])
    Xnan = X.copy()
    Xnan[4, 0] = np.nan
    with pytest.raises(ValueError, match="first in row 4"), pytest.warns(UserWarning):
        net.predict(Xnan)


def test_small_workspace_is_reused():
    net = fastbp.MLP([30, 64, 2], seed=0)
    one = _X(1, 30, np.float32)
    one64 = one.astype(np.float64)
    net.predict(one)
    assert net._net.small_allocations == 1
    for _ in range(500):
        net.predict(one)
        net.predict(one64)   # the converted row lives in the same workspace
    assert net._net.small_allocations == 2   # grown once, for the converted row
    net.predict(_X(16, 30, np.float64))
    grown = net._net.small_allocations
    for k in range(500):
        net.predict(_X(1 + k % 16, 30, np.float64, seed=k))
    assert net._net.small_allocations == grown
    # No allocation growth: only the outputs, which are given back.
    tracemalloc.start()
    try:
        for _ in range(50):
            net.predict(one)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(3000):
            net.predict(one)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 1024 and peak - base < 4096, (current - base, peak - base)


def test_concurrent_predicts_on_one_model():
    """Several Python threads predicting on one model (small calls on the
    cached workspace, large ones on the threads) while another thread swaps
    the parameters between two states: every output is that of one state."""
    net = fastbp.MLP([30, 64, 2], seed=0)
    states = [net._theta.copy(), fastbp.MLP([30, 64, 2], seed=1)._theta.copy()]
    inputs = [_X(r, 30, dt, seed=r) for r in (1, 3, 40, 2000) for dt in (np.float32, np.float64)]
    expected = []
    for theta in states:
        net.flat_parameters = theta
        expected.append([net._predict_general(X).tobytes() for X in inputs])
    stop = threading.Event()
    errors = []

    def predictor(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                k = int(rng.integers(len(inputs)))
                got = net.predict(inputs[k]).tobytes()
                if got not in (expected[0][k], expected[1][k]):
                    errors.append(f"input {k}: a torn or wrong prediction")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    def swapper():
        i = 0
        while not stop.is_set():
            net.flat_parameters = states[i % 2]
            i += 1

    threads = [threading.Thread(target=predictor, args=(s,)) for s in range(4)]
    swap = threading.Thread(target=swapper)
    swap.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    swap.join(30)
    assert not any(t.is_alive() for t in threads + [swap])
    assert not errors, errors[:5]


# -- fastbp.sklearn ------------------------------------------------------------

@pytest.fixture(scope="module")
def estimators():
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6))
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dtype in (None, "float32", "float64"):
            kw = dict(hidden_layer_sizes=(9,), max_iter=5, random_state=0, dtype=dtype)
            fits[f"binary {dtype}"] = MLPClassifier(**kw).fit(X, (X[:, 0] > 0).astype(int))
            fits[f"strings {dtype}"] = MLPClassifier(**kw).fit(
                X, np.array(["cat", "dog", "emu"])[np.arange(120) % 3])
            fits[f"multilabel {dtype}"] = MLPClassifier(**kw).fit(X, (X[:, :3] > 0).astype(int))
            fits[f"regressor {dtype}"] = MLPRegressor(**kw).fit(X, X[:, 0])
            fits[f"regressor 2 {dtype}"] = MLPRegressor(**kw).fit(X, X[:, :2])
    return X, fits


def test_estimator_fast_path_matches_general(estimators):
    X, fits = estimators
    for name, est in fits.items():
        for dt in (np.float32, np.float64):
            for rows in (1, 300):
                Xr = np.ascontiguousarray(np.resize(X, (rows, 6)), dtype=dt)
                fast = est._forward_fast(Xr)
                assert fast is not None, name
                _same(fast, est._forward(Xr))
                if hasattr(est, "predict_proba"):
                    proba = est.predict_proba(Xr)
                    out = est._forward(Xr)
                    if est.n_outputs_ == 1:
                        p = out.ravel()
                        want = np.vstack([1 - p, p]).T
                        assert proba.flags.f_contiguous == want.flags.f_contiguous
                    else:
                        want = out
                    _same(proba, want)
                    labels = est.predict(Xr)
                    ravel = out.ravel() if est.n_outputs_ == 1 else out
                    want = est._label_binarizer.inverse_transform(ravel)
                    assert labels.dtype == want.dtype and labels.shape == want.shape
                    assert (labels == want).all(), name
                    _same(est.predict_log_proba(Xr), np.log(proba))
                else:
                    out = est._forward(Xr)
                    _same(est.predict(Xr), out.ravel() if out.shape[1] == 1 else out)


def test_estimator_fast_path_skips_sklearn_machinery(monkeypatch, estimators):
    X, fits = estimators
    import fastbp.sklearn as fsk

    def boom(*args, **kwargs):
        raise AssertionError("scikit-learn's machinery ran")

    monkeypatch.setattr(fsk, "validate_data", boom)
    monkeypatch.setattr(fsk, "check_is_fitted", boom)
    fits["binary None"].predict_proba(X[:1])
    fits["strings None"].predict(X[:1])
    fits["regressor None"].predict(X[:1])
    with pytest.raises(AssertionError, match="machinery"):
        fits["binary None"].predict_proba(np.asfortranarray(X[:4]))


def _message(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - compared below
            return type(exc), str(exc), [str(w.message) for w in seen]
    return None, None, [str(w.message) for w in seen]


def test_estimator_errors_and_warnings_match_scikit_learn():
    """The same inputs to fastbp's MLPClassifier (fast path first) and to
    scikit-learn's: the same exception type and message, the same warnings."""
    sk_nn = pytest.importorskip("sklearn.neural_network")
    from fastbp.sklearn import MLPClassifier

    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 4))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)
        theirs = sk_nn.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)
    nan = X[:3].copy()
    nan[1, 2] = np.nan
    inf = X[:3].copy()
    inf[2, 0] = np.inf
    inputs = {
        "features": X[:2, :3].copy(), "NaN": nan, "Inf": inf, "1-D": X[0].copy(),
        "empty": X[:0].copy(), "3-D": X[None, :2].copy(),
        "float32 NaN": nan.astype(np.float32),
    }
    for name, value in inputs.items():
        for method in ("predict_proba", "predict"):
            got = _message(lambda: getattr(ours, method)(value))
            want = _message(lambda: getattr(theirs, method)(value))
            assert got[0] is not None and got[:2] == want[:2], (name, method, got, want)
            assert got[2] == want[2], (name, method)
    unfitted = _message(lambda: MLPClassifier().predict_proba(X[:1]))
    sk_unfitted = _message(lambda: sk_nn.MLPClassifier().predict_proba(X[:1]))
    assert unfitted[:2] == sk_unfitted[:2]


def test_estimator_feature_names_and_config():
    pd = pytest.importorskip("pandas")
    sklearn = pytest.importorskip("sklearn")
    sk_nn = pytest.importorskip("sklearn.neural_network")
    from fastbp.sklearn import MLPClassifier

    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 3))
    y = (X[:, 0] > 0).astype(int)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = [(MLPClassifier(max_iter=2, random_state=0).fit(data, y),
                  sk_nn.MLPClassifier(max_iter=2, random_state=0).fit(data, y))
                 for data in (frame, X)]
    for (ours, theirs), value in zip(pairs, (X[:2], frame[:2])):
        got, want = _message(lambda: ours.predict_proba(value)), _message(
            lambda: theirs.predict_proba(value))
        assert got[0] is None and got[2] == want[2] and len(got[2]) == 1, (got, want)
    nan = X[:2].copy()
    nan[0, 0] = np.nan
    ours = pairs[1][0]
    with sklearn.config_context(assume_finite=True):   # scikit-learn skips the check
        with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first in row 0\)"):
            ours.predict_proba(nan)
    for bad in (0, "2", 2.0):
        ours.n_threads = bad
        assert _message(lambda: ours.predict_proba(X[:1]))[:2] == \
            _message(lambda: ours._forward(X[:1]))[:2] != (None, None)
    ours.n_threads = 1
    _same(ours.predict_proba(X[:1]), pairs[1][0].predict_proba(X[:1]))


def test_bench_latency_table():
    """bench/latency.py's table and timer (the full run takes minutes: not a test)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "latency.py").exists():
        pytest.skip("no bench/ folder")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import latency

    table = latency.table({"before": {"predict_1_f32": 14.0},
                           "after": {"predict_1_f32": 1.0, "torch_1": 18.0}})
    assert "| MLP.predict 30-64-2, 1 row, float32 X | 14.00 | 1.00 | 0.07 |" in table
    assert "| ref: torch inference_mode, 1 row | - | 18.00 | - |" in table
    assert "sklearn" not in table   # cases no implementation ran are left out
    assert 0 < latency.best_us(lambda: None, quick=True) < 1e3
