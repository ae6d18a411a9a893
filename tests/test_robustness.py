"""Nothing unchecked reaches the kernels (they run without bounds checks).

Bad data gives a ValueError whose message names the problem, and leaves the
model exactly as it was; any memory layout of valid data gives the same bits
as a C-contiguous copy and is never written; divergence stops training with a
FloatingPointError and finite weights; results do not depend on the number of
threads.  Each check runs against both implementations where it applies.
"""
import re

import numpy as np
import pytest

import fastbp
from fastbp import reference

IMPLS = {"reference": reference.MLP, "fast": fastbp.MLP}


@pytest.fixture(params=sorted(IMPLS))
def MLP(request):
    return IMPLS[request.param]


@pytest.fixture
def threads():
    before = fastbp.get_num_threads()
    yield fastbp.set_num_threads
    fastbp.set_num_threads(before)


def params_of(net):
    """A copy of every parameter, to compare bitwise."""
    return [np.array(w) for w in net.weights] + [np.array(b) for b in net.biases if b is not None]


def assert_same_params(before, net):
    after = params_of(net)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), "parameters changed"


def data(n=10, n_in=3, n_out=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, size=n)


# ---------------------------------------------------------------------------
# Bad input: ValueError naming the problem, model unchanged.

def _bad_inputs():
    X, y = data()
    Xnan = X.copy(); Xnan[4, 1] = np.nan
    Xinf = X.copy(); Xinf[7, 2] = -np.inf
    Xnan2 = X.copy(); Xnan2[3, 0] = np.nan; Xnan2[6, 0] = np.inf
    Ynan = np.eye(2)[y]; Ynan[5, 1] = np.nan
    Yinf = np.eye(2)[y]; Yinf[2, 0] = np.inf
    Xbig = X.copy(); Xbig[8, 0] = 1e300   # finite in float64, overflows float32
    return [
        # (name, X, Y, message regex)
        ("X 1-D", X[0], None, r"X must be 2-D.*1-D"),
        ("X 3-D", X[None], None, r"X must be 2-D.*3-D"),
        ("X 0-D", np.float64(1.0), None, r"X must be 2-D.*0-D"),
        ("X empty", np.empty((0, 3)), None, r"X is empty"),
        ("X n_features", X[:, :2], None, r"X has 2 features per sample, the network expects 3"),
        ("X NaN", Xnan, None, r"X contains NaN or Inf \(first in row 4\)"),
        ("X Inf", Xinf, None, r"X contains NaN or Inf \(first in row 7\)"),
        ("X first bad row", Xnan2, None, r"first in row 3\)"),
        ("X complex", X.astype(complex), None, r"X: unsupported dtype complex128"),
        ("X object", X.astype(object), None, r"X: unsupported dtype object"),
        ("X strings", X.astype(str), None, r"X: unsupported dtype <U"),
        ("X bytes", X.astype("S8"), None, r"X: unsupported dtype \|S8"),
        ("X None", None, None, r"X: unsupported dtype object"),
        ("X datetime", np.zeros((10, 3), "datetime64[s]"), None, r"X: unsupported dtype datetime64"),
        ("Y n_samples", X, y[:7], r"X has 10 samples but Y has 7"),
        ("Y n_outputs", X, np.ones((10, 3)), r"Y has 3 outputs per sample, the network has 2"),
        ("Y 3-D", X, np.ones((10, 2, 1)), r"Y must be 1-D or 2-D, got 3-D"),
        ("Y 0-D", X, np.float64(1), r"Y must be 1-D or 2-D, got 0-D"),
        ("Y NaN", X, Ynan, r"Y contains NaN or Inf \(first in row 5\)"),
        ("Y Inf", X, Yinf, r"Y contains NaN or Inf \(first in row 2\)"),
        ("labels NaN", X, np.where(np.arange(10) == 6, np.nan, 0.0), r"Y contains NaN or Inf \(first in row 6\)"),
        ("label too big", X, np.where(np.arange(10) == 3, 2, y), r"labels must lie in \[0, 1\] \(row 3 is 2\)"),
        ("label negative", X, np.where(np.arange(10) == 9, -1, y), r"labels must lie in \[0, 1\] \(row 9 is -1\)"),
        ("label huge", X, np.where(np.arange(10) == 1, 2**40, y), r"labels must lie in \[0, 1\] \(row 1"),
        ("label uint64", X, np.full(10, 2**64 - 1, dtype=np.uint64), r"labels must lie in \[0, 1\] \(row 0"),
        ("label float", X, np.where(np.arange(10) == 2, 0.5, y), r"labels must be integers \(row 2 is 0.5\)"),
        ("label bool", X, y.astype(bool), r"labels must be integers, got booleans"),
        ("label complex", X, y.astype(complex), r"Y: unsupported dtype complex128"),
        ("label strings", X, y.astype(str), r"Y: unsupported dtype <U"),
        ("CE one-hot negative", X, np.where(np.arange(10)[:, None] == 4, -1.0, np.eye(2)[y]),
         r"must be non-negative \(first negative in row 4\)"),
        ("Y None", X, None, r"Y: unsupported dtype object"),
    ]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_every_method(MLP, case):
    name, X, Y, pattern = case
    net = MLP([3, 4, 2], seed=1, dtype="float64")
    before = params_of(net)
    calls = [
        lambda: net.loss(X, Y),
        lambda: net.gradients(X, Y),
        lambda: net.step(X, Y, 0.1),
        lambda: net.fit(X, Y, epochs=2, batch_size=3, lr=0.1),
    ]
    if Y is None and not name.startswith("Y"):
        calls.append(lambda: net.predict(X))
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call()
        assert_same_params(before, net)


def test_float32_overflow_names_row(MLP):
    X, y = data()
    X[8, 0] = 1e300
    net = MLP([3, 4, 2], dtype="float32")
    before = params_of(net)
    with pytest.raises(ValueError, match=r"X row 8 overflows float32"):
        net.fit(X, y, epochs=1)
    with pytest.raises(ValueError, match=r"X row 8 overflows float32"):
        net.predict(X)
    Y = np.zeros((10, 1)); Y[5] = -1e200
    reg = MLP([3, 1], output="identity", loss="squared_error", dtype="float32")
    with pytest.raises(ValueError, match=r"Y row 5 overflows float32"):
        reg.step(X[:, :3] * 0, Y, 0.1)
    assert_same_params(before, net)


@pytest.mark.parametrize("bad, row", [(-0.01, 3), (1.5, 6), (2, 0)])
def test_bce_targets_outside_unit_interval(MLP, bad, row):
    X, _ = data()
    Y = np.full((10, 2), 0.5)
    Y[row, 1] = bad
    net = MLP([3, 2], output="sigmoid", loss="binary_cross_entropy")
    before = params_of(net)
    with pytest.raises(ValueError, match=rf"binary_cross_entropy targets must lie in \[0, 1\] \(first outside in row {row}\)"):
        net.fit(X, Y, epochs=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net.loss(X, Y)
    assert_same_params(before, net)
    net.loss(X, np.clip(Y, 0, 1))  # the boundary values themselves are fine


@pytest.mark.parametrize("bad, row", [(-0.01, 3), (-1e300, 0), (-3, 9)])
def test_poisson_targets_must_be_non_negative(MLP, bad, row):
    X, _ = data()
    Y = np.full((10, 2), 2.0)
    Y[row, 1] = bad
    keep = Y.copy()
    net = MLP([3, 2], output="exp", loss="poisson")
    before = params_of(net)
    for call in (lambda: net.fit(X, Y, epochs=1), lambda: net.loss(X, Y),
                 lambda: net.gradients(X, Y), lambda: net.step(X, Y, 0.1)):
        with pytest.raises(ValueError, match=rf"^poisson targets must be non-negative "
                                             rf"\(first negative in row {row}\)$"):
            call()
    assert_same_params(before, net)
    assert np.array_equal(Y, keep)
    Y[row, 1] = 0.0  # zero counts are fine (0 log 0 = 0)
    assert np.isfinite(net.loss(X, Y))


def test_regression_target_shapes(MLP):
    X, _ = data()
    net1 = MLP([3, 1], output="identity", loss="squared_error")
    net1.loss(X, np.ones(10))          # 1-D target with one output is fine
    net2 = MLP([3, 2], output="identity", loss="squared_error")
    with pytest.raises(ValueError, match=r"Y must have shape \(n_samples, 2\), got \(10,\)"):
        net2.loss(X, np.ones(10))


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), -float("inf"), "0.1",
                                True, [0.1], np.array([0.1, 0.2]), 1j])
def test_bad_lr(MLP, lr):
    X, y = data()
    net = MLP([3, 2], seed=3)
    before = params_of(net)
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got"):
        net.step(X, y, lr)
    with pytest.raises(ValueError, match=r"lr must be a positive finite number"):
        net.fit(X, y, epochs=1, lr=lr)
    assert_same_params(before, net)


@pytest.mark.parametrize("lr", [0.1, np.float32(0.1), np.float64(0.1), 1, np.array(0.1)])
def test_good_lr_spellings(MLP, lr):
    X, y = data()
    MLP([3, 2]).step(X, y, lr)


@pytest.mark.parametrize("kw, pattern", [
    (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(batch_size=-5), r"batch_size must be an integer >= 1, got -5"),
    (dict(batch_size=2.0), r"batch_size must be an integer >= 1, got 2.0"),
    (dict(batch_size=True), r"batch_size must be an integer >= 1"),
    (dict(batch_size=None), r"batch_size must be an integer >= 1"),
    (dict(epochs=-1), r"epochs must be an integer >= 0, got -1"),
    (dict(epochs=1.5), r"epochs must be an integer >= 0, got 1.5"),
    (dict(epochs="3"), r"epochs must be an integer >= 0, got '3'"),
])
def test_bad_fit_args(MLP, kw, pattern):
    X, y = data()
    net = MLP([3, 2], seed=2)
    before = params_of(net)
    with pytest.raises(ValueError, match=pattern):
        net.fit(X, y, **{"epochs": 1, **kw})
    assert_same_params(before, net)


def test_epochs_zero_and_huge_batch(MLP):
    X, y = data()
    net = MLP([3, 2], seed=2, dtype="float64")
    before = params_of(net)
    hist = net.fit(X, y, epochs=0)
    assert hist.loss == []
    assert_same_params(before, net)
    # A batch larger than the data (even beyond int64) is one batch of everything.
    a, b = MLP([3, 2], seed=2, dtype="float64"), MLP([3, 2], seed=2, dtype="float64")
    a.fit(X, y, epochs=2, batch_size=2**70, lr=0.1, shuffle=False)
    b.fit(X, y, epochs=2, batch_size=10, lr=0.1, shuffle=False)
    assert_same_params(params_of(a), b)


@pytest.mark.parametrize("kw, pattern", [
    (dict(activation="softplus"), r"unknown activation 'softplus'; expected one of 'identity', 'sigmoid', 'relu', 'tanh'"),
    (dict(activation=None), r"unknown activation None; expected one of"),
    (dict(output="logsoftmax"), r"unknown output 'logsoftmax'; expected one of 'identity', 'sigmoid', 'softmax'"),
    (dict(loss="mse"), r"unknown loss 'mse'; expected one of 'squared_error', 'binary_cross_entropy', 'cross_entropy'"),
    (dict(output="identity", loss="cross_entropy"), r"loss='cross_entropy' requires output='softmax', got output='identity'"),
    (dict(output="sigmoid", loss="cross_entropy"), r"loss='cross_entropy' requires output='softmax'"),
    (dict(output="softmax", loss="binary_cross_entropy"), r"loss='binary_cross_entropy' requires output='sigmoid', got output='softmax'"),
    (dict(output="identity", loss="binary_cross_entropy"), r"requires output='sigmoid'"),
    (dict(output="identity", loss="poisson"), r"^loss='poisson' requires output='exp', got output='identity'$"),
    (dict(output="softmax", loss="poisson"), r"^loss='poisson' requires output='exp', got output='softmax'$"),
    (dict(output="exp", loss="cross_entropy"), r"^loss='cross_entropy' requires output='softmax', got output='exp'$"),
    (dict(output="exp", loss="binary_cross_entropy"), r"^loss='binary_cross_entropy' requires output='sigmoid', got output='exp'$"),
    (dict(output="exp", loss="Poisson"), r"unknown loss 'Poisson'; expected one of .*'poisson'"),
    (dict(dtype="float16"), r"unsupported dtype 'float16'; expected 'float32' or 'float64'"),
    (dict(dtype="int32"), r"unsupported dtype"),
    (dict(dtype=complex), r"unsupported dtype"),
    (dict(dtype="nonsense"), r"unsupported dtype 'nonsense'"),
])
def test_bad_config(MLP, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        MLP([3, 4, 2], **kw)


@pytest.mark.parametrize("sizes", [[3], [], [3, 0, 2], [3, -1], [3, 2.5], ["3", 2], None, 5, "34",
                                   [2] * 66, [True, 2], [3.0, 2]])
def test_bad_layer_sizes(MLP, sizes):
    with pytest.raises(ValueError, match=r"layer_sizes|at most 64 weight layers"):
        MLP(sizes, output="identity", loss="squared_error")


def test_softmax_needs_two_outputs(MLP):
    with pytest.raises(ValueError, match=r"softmax' needs at least 2 output units"):
        MLP([3, 1])


def test_layer_limits_agree(MLP):
    MLP([2] * 65, output="identity", loss="squared_error")   # 64 layers: fine
    with pytest.raises(ValueError, match=r"at most 64 weight layers are supported, got 65"):
        MLP([2] * 66, output="identity", loss="squared_error")
    with pytest.raises(ValueError, match=r"layer sizes must be at most 2147483647"):
        MLP([2, 2**31, 2], output="identity", loss="squared_error")


@pytest.mark.parametrize("kw, pattern", [
    (dict(weights=[np.ones((4, 3))]), r"weights: expected 2 arrays, got 1"),
    (dict(weights=[np.ones((3, 4)), np.ones((2, 4))]), r"weights\[0\]: expected shape \(4, 3\), got \(3, 4\)"),
    (dict(weights=[np.ones((4, 3)), np.ones((2, 5))]), r"weights\[1\]: expected shape \(2, 4\), got \(2, 5\)"),
    (dict(weights=[np.ones((4, 3)), np.full((2, 4), np.nan)]), r"weights\[1\] contains NaN or Inf"),
    (dict(weights=[np.full((4, 3), np.inf), np.ones((2, 4))]), r"weights\[0\] contains NaN or Inf"),
    (dict(weights=[np.ones((4, 3), complex), np.ones((2, 4))]), r"weights\[0\]: unsupported dtype complex128"),
    (dict(weights=[np.ones((4, 3)).astype(str), np.ones((2, 4))]), r"weights\[0\]: unsupported dtype <U"),
    (dict(weights=[None, np.ones((2, 4))]), r"weights\[0\]: unsupported dtype object"),
    (dict(weights=[np.ones((4, 3)), np.full((2, 4), 1e300)], dtype="float32"), r"weights\[1\] contains NaN or Inf"),
    (dict(weights=5), r"weights must be a sequence of arrays, one per layer, got int"),
    (dict(weights="ab"), r"weights must be a sequence of arrays"),
    (dict(weights=(w for w in [np.ones((4, 3)), np.ones((2, 4))])), r"weights must be a sequence of arrays, one per layer, got generator"),
    (dict(biases=[np.ones(4)]), r"biases: expected 2 arrays, got 1"),
    (dict(biases=[np.ones(4), np.ones(3)]), r"biases\[1\]: expected shape \(2,\), got \(3,\)"),
    (dict(biases=[np.ones(4), np.array([1.0, np.nan])]), r"biases\[1\] contains NaN or Inf"),
    (dict(biases=[np.ones(4), np.ones(2)], bias=False), r"biases were given but bias=False"),
    (dict(biases=3.0), r"biases must be a sequence of arrays, one per layer, got float"),
])
def test_bad_constructor_params(MLP, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        MLP([3, 4, 2], **kw)


def test_constructor_params_are_copied(MLP):
    W = [np.arange(12.0).reshape(3, 4).T.copy(), np.ones((2, 4), dtype=np.float32)]
    b = [np.zeros(4, dtype=np.int64), np.array([1, 0], dtype=bool)]
    keep = [w.tobytes() for w in W + b]
    net = MLP([3, 4, 2], weights=W, biases=b, dtype="float64")
    net.step(*data(), 0.5)
    assert [w.tobytes() for w in W + b] == keep
    assert not np.shares_memory(np.asarray(net.weights[0]), W[0])


# ---------------------------------------------------------------------------
# Layouts: same bits as a C-contiguous copy, caller's arrays never written.

def _layouts(A, tmp_path, tag):
    """(name, array) pairs holding A's values in many memory layouts."""
    n, d = A.shape
    out = [("C", np.ascontiguousarray(A)), ("F", np.asfortranarray(A))]
    big = np.zeros((2 * n, 3 * d), dtype=A.dtype)
    big[::2, ::3] = A
    out.append(("strided", big[::2, ::3]))
    out.append(("negative strides", np.ascontiguousarray(A[::-1, ::-1])[::-1, ::-1]))
    ro = A.copy()
    ro.flags.writeable = False
    out.append(("read-only", ro))
    out.append(("big-endian", A.astype(A.dtype.newbyteorder(">"))))
    out.append(("list", A.tolist()))
    path = tmp_path / f"{tag}.dat"
    mm = np.memmap(path, dtype=A.dtype, mode="w+", shape=A.shape)
    mm[...] = A
    mm.flush()
    del mm
    out.append(("memmap r", np.memmap(path, dtype=A.dtype, mode="r", shape=A.shape)))
    out.append(("memmap r+", np.memmap(path, dtype=A.dtype, mode="r+", shape=A.shape)))
    pathF = tmp_path / f"{tag}F.dat"
    mm = np.memmap(pathF, dtype=A.dtype, mode="w+", shape=A.shape, order="F")
    mm[...] = A
    mm.flush()
    del mm
    out.append(("memmap F", np.memmap(pathF, dtype=A.dtype, mode="r", shape=A.shape, order="F")))
    return out


def _results(net_factory, X, Y):
    """Every public computation on (X, Y), as bytes."""
    res = {}
    net = net_factory()
    res["predict"] = net.predict(X).tobytes()
    res["loss"] = repr(net.loss(X, Y))
    loss, grads = net.gradients(X, Y)
    res["gradients"] = repr(loss) + str(b"".join(g.tobytes() for pair in grads for g in pair if g is not None))
    net.step(X, Y, 0.05)
    res["step"] = b"".join(p.tobytes() for p in params_of(net))
    net = net_factory()
    hist = net.fit(X, Y, epochs=2, batch_size=4, lr=0.05, seed=7)
    res["fit"] = repr(hist.loss) + str(b"".join(p.tobytes() for p in params_of(net)))
    return res


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["labels", "one-hot", "regression"])
def test_layouts_bitwise_and_untouched(MLP, dtype, kind, tmp_path):
    rng = np.random.default_rng(11)
    n = 9 if MLP is reference.MLP else 37
    X = rng.normal(size=(n, 5)).astype(dtype)
    if kind == "labels":
        cfg = dict(output="softmax", loss="cross_entropy")
        Y = rng.integers(0, 3, size=n)
    elif kind == "one-hot":
        cfg = dict(output="softmax", loss="cross_entropy")
        Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, size=n)]
    else:
        cfg = dict(output="identity", loss="squared_error")
        Y = rng.normal(size=(n, 3)).astype(dtype)
    factory = lambda: MLP([5, 6, 3], activation="tanh", dtype=dtype, seed=4, **cfg)  # noqa: E731
    expected = _results(factory, np.ascontiguousarray(X), np.ascontiguousarray(Y))
    Ys = [("C", Y)] + (_layouts(Y, tmp_path, "Y") if Y.ndim == 2 else [
        ("strided labels", np.repeat(Y, 2)[::2]), ("read-only labels", Y.copy()), ("list", Y.tolist())])
    for (xname, Xv), (yname, Yv) in [(x, Ys[0]) for x in _layouts(X, tmp_path, "X")] + \
            [(("C", X), y) for y in Ys[1:]]:
        if isinstance(Yv, np.ndarray) and yname.startswith("read-only"):
            Yv.flags.writeable = False
        before = [np.array(a, copy=True) for a in (Xv, Yv)]
        got = _results(factory, Xv, Yv)
        for what in expected:
            assert got[what] == expected[what], f"{what} differs for X {xname}, Y {yname}"
        for old, new in zip(before, (Xv, Yv)):
            assert np.asarray(new).tobytes() == old.tobytes(), f"X {xname} / Y {yname} was written"


# ---------------------------------------------------------------------------
# Divergence (compiled model): stop, say where, keep the last good weights.

def _step_replay(factory, X, Y, batch_size, lr, epochs):
    """Snapshots after each SGD step made by step() on consecutive slices.

    Returns (snapshots, where, kind): snapshots[s] are the parameters after s
    steps; where = (epoch, batch, last_of_epoch) is the 1-based position of
    the first step that step() refused (leaving the model alone), and kind is
    "loss" when that batch's loss was not finite, "update" when its update
    would have made a parameter NaN or Inf.
    """
    net = factory()
    snaps = [params_of(net)]
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    for epoch in range(1, epochs + 1):
        for b, start in enumerate(range(0, n, batch_size), start=1):
            before = params_of(net)
            try:
                net.step(X[start:start + batch_size], Y[start:start + batch_size], lr)
            except FloatingPointError as exc:
                assert_same_params(before, net)
                kind = "update" if "update made parameters" in str(exc) else "loss"
                return snaps, (epoch, b, b == n_batches), kind
            snaps.append(params_of(net))
    return snaps, None, None


def _check_where(msg, kind, epoch, batch, last):
    """fit names the batch whose loss was not finite, or the batch whose update
    made the weights non-finite when no loss showed it before the epoch ended."""
    if kind == "loss":
        assert f"epoch {epoch}, batch {batch}, whose loss was NaN or Inf" in msg, msg
    elif last:
        assert f"epoch {epoch}, batch {batch}, whose update made weights NaN or Inf" in msg, msg
    else:
        assert (f"epoch {epoch}, batch {batch + 1}, whose loss was NaN or Inf" in msg
                or f"epoch {epoch}, batch {batch}, whose update made weights NaN or Inf" in msg), msg
    assert "smaller learning rate" in msg


def _check_divergence(factory, X, Y, batch_size, lr, epochs=6):
    snaps, where, kind = _step_replay(factory, X, Y, batch_size, lr, epochs)
    assert where is not None, "the test data should diverge"
    epoch, batch, last = where
    net = factory()
    with pytest.raises(FloatingPointError) as info:
        net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=lr, shuffle=False)
    msg = str(info.value)
    _check_where(msg, kind, epoch, batch, last)
    assert "smaller learning rate" in msg and "NaN or Inf" in msg
    params = params_of(net)
    assert all(np.isfinite(p).all() for p in params), f"non-finite weights after: {msg}"
    # The last good weights: those before the step that made them bad (for a
    # non-finite loss, the weights the batch saw were left by the step before).
    failing = len(snaps)          # 1-based global index of the step refused
    assert_same_params(snaps[max(0, failing - 2 if kind == "loss" else failing - 1)], net)
    net.predict(X)


@pytest.mark.parametrize("dtype, lr", [("float32", 1e38), ("float64", 1e300), ("float32", 1e30)])
@pytest.mark.parametrize("batch_size", [4, 5])
def test_divergence_within_epoch(dtype, lr, batch_size):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3))
    Y = rng.normal(size=(16, 2)) * 100
    factory = lambda: fastbp.MLP([3, 4, 2], output="identity", loss="squared_error", dtype=dtype, seed=0)  # noqa: E731
    _check_divergence(factory, X, Y, batch_size, lr)


def test_divergence_at_epoch_boundary():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3))
    Y = rng.normal(size=(8, 2)) * 100
    factory = lambda: fastbp.MLP([3, 4, 2], activation="relu", output="identity",  # noqa: E731
                                 loss="squared_error", dtype="float32", seed=0)
    _check_divergence(factory, X, Y, 8, 1e38)


def test_divergence_with_shuffle_matches_replay():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3))
    Y = rng.normal(size=(20, 2)) * 100
    lr = 1e300
    net = fastbp.MLP([3, 8, 2], activation="relu", output="identity", loss="squared_error",
                     dtype="float64", seed=0)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch \d+, batch \d+.*smaller learning rate"):
        net.fit(X, Y, epochs=20, batch_size=3, lr=lr, seed=5)
    assert all(np.isfinite(p).all() for p in params_of(net))
    assert np.isfinite(net.predict(X)).all()


def test_step_with_nonfinite_loss_leaves_model():
    X = np.ones((4, 3)) * 1e35
    Y = np.ones((4, 2))
    net = fastbp.MLP([3, 2], output="identity", loss="squared_error", dtype="float32",
                     weights=[np.full((2, 3), 1e8)])
    before = params_of(net)
    with pytest.raises(FloatingPointError, match=r"not finite.*not updated"):
        net.step(X, Y, 0.1)
    assert_same_params(before, net)


# ---------------------------------------------------------------------------
# Determinism across thread counts.

@pytest.mark.parametrize("sizes, activation, dtype, batch_size, n", [
    ([20, 16, 5], "sigmoid", "float32", 1, 40),
    ([20, 16, 5], "tanh", "float64", 7, 100),
    ([20, 33, 17, 5], "tanh", "float32", 129, 300),
    ([20, 33, 5], "sigmoid", "float64", 129, 300),
    ([300, 200, 10], "relu", "float32", 129, 600),
    ([300, 200, 10], "tanh", "float64", 64, 400),
])
def test_fit_bitwise_same_for_any_thread_count(threads, sizes, activation, dtype, batch_size, n):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n)
    results = []
    for t in (1, 2, 3, 8):
        threads(t)
        net = fastbp.MLP(sizes, activation=activation, dtype=dtype, seed=9)
        hist = net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, seed=1)
        pred = net.predict(X)
        results.append((hist.loss, b"".join(p.tobytes() for p in params_of(net)), pred.tobytes()))
    for r in results[1:]:
        assert r == results[0]


@pytest.mark.parametrize("seed", range(6))
def test_divergence_with_shuffle_rewinds_exactly(seed):
    """Shuffled fit: the weights after divergence are those step() reaches on the
    same batches, up to the step before the one that made them bad."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(10, 3))
    Y = rng.normal(size=(10, 2)) * 100
    lr = float(10 ** rng.uniform(1.5, 3))
    factory = lambda: fastbp.MLP([3, 5, 2], activation="relu", output="identity",  # noqa: E731
                                 loss="squared_error", dtype="float64", seed=seed)
    batch_size, epochs = 3, 30
    # The batches fit visits, in order, and step() on each of them.
    order_rng = np.random.default_rng(seed)
    batches = []
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(10)
        starts = list(range(0, 10, batch_size))
        batches += [(epoch, b, b == len(starts), order[s:s + batch_size])
                    for b, s in enumerate(starts, start=1)]
    net = factory()
    snaps = [params_of(net)]
    for epoch, b, last, idx in batches:
        try:
            net.step(X[idx], Y[idx], lr)
        except FloatingPointError as exc:
            kind = "update" if "update made parameters" in str(exc) else "loss"
            break
        snaps.append(params_of(net))
    else:
        pytest.skip("this draw does not diverge")
    fitted = factory()
    with pytest.raises(FloatingPointError) as info:
        fitted.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    msg = str(info.value)
    _check_where(msg, kind, epoch, b, last)
    failing = len(snaps)
    assert_same_params(snaps[max(0, failing - 2 if kind == "loss" else failing - 1)], fitted)


# ---------------------------------------------------------------------------
# Found in review: a smaller OpenMP team than asked for, FTZ already on in the
# caller, weights overflowing while the loss stays finite, callbacks that
# change the weights, copies of the parameter lists.

TEAM_CHILD = """
import sys, numpy as np, fastbp
from fastbp import _kernels
_kernels.set_parallel_threshold(0)
rng = np.random.default_rng(0)
X = rng.normal(size=(256, 32)); y = rng.integers(0, 3, 256)
out = []
for n in (1, 4):
    fastbp.set_num_threads(n)
    net = fastbp.MLP([32, 64, 3], seed=0)
    net.fit(X, y, epochs=3, batch_size=64, lr=0.1, seed=0)
    out.append(net._theta.tobytes() + net.predict(X).tobytes())
print("SAME" if out[0] == out[1] else "DIFFERENT")
"""


@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "2"}, {"OMP_DYNAMIC": "true"}])
def test_a_smaller_openmp_team_gives_the_same_result(env):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = dict(os.environ, **env, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", TEAM_CHILD], capture_output=True, text=True,
                         env=full, timeout=120)
    assert out.stdout.strip() == "SAME", out.stdout + out.stderr


def test_flush_denormals_holds_in_every_thread_when_the_caller_already_flushes(threads):
    from fastbp import _kernels

    threshold = _kernels.set_parallel_threshold(0)
    X = np.full((4, 1), 1e-20, dtype=np.float32)
    Y = np.full((4, 1), -1e-20, dtype=np.float32)
    kw = dict(activation="identity", output="identity", loss="squared_error", bias=False,
              weights=[np.zeros((1, 1)), np.ones((1, 1))])
    try:
        threads(2)
        fastbp.MLP([1, 1, 1], **kw).fit(X, Y, epochs=1, batch_size=4, lr=1.0)  # start the pool
        before = _kernels._set_flush_denormals(True)
        try:
            results = []
            for n in (1, 2):
                threads(n)
                net = fastbp.MLP([1, 1, 1], **kw)
                net.fit(X, Y, epochs=1, batch_size=4, lr=1.0)
                results.append(net._theta.copy())
        finally:
            _kernels._set_flush_denormals(before)
    finally:
        _kernels.set_parallel_threshold(threshold)
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0][0] == 0.0  # the denormal update was flushed in both


def test_weights_overflowing_behind_a_finite_loss_are_rewound():
    # ReLU maps the -Inf pre-activation of an overflowed unit to 0: the loss
    # stays finite while the weight is -Inf.
    X = np.full((3, 1), 1e30)
    Y = np.zeros((3, 1))
    net = fastbp.MLP([1, 1, 1], activation="relu", output="identity", loss="squared_error",
                     bias=False, dtype="float32",
                     weights=[np.full((1, 1), 1e-30), np.full((1, 1), 1e9)])
    first = params_of(net)
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 1, whose update made weights"):
        net.fit(X, Y, epochs=2, batch_size=1, lr=1.0, shuffle=False)
    assert all(np.isfinite(p).all() for p in params_of(net))
    assert_same_params(first, net)  # the first step overflowed: back to the start


def test_rewind_after_a_callback_changed_the_weights_lands_on_a_visited_state():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4)) * 3
    y = rng.integers(0, 3, 50)
    for lr in (3.0, 10.0, 30.0, 100.0):
        net = fastbp.MLP([4, 8, 3], seed=0)

        def shrink(epoch, logs):
            for W in net.weights:
                W *= 0.5

        try:
            net.fit(X, y, epochs=30, batch_size=10, lr=lr, shuffle=False, callbacks=[shrink])
            continue
        except FloatingPointError:
            pass
        restored = net._theta.copy()
        # Every state the same training passes through, step by step.
        twin, visited, done = fastbp.MLP([4, 8, 3], seed=0), [], False
        for _ in range(30):
            for s in range(5):
                visited.append(twin._theta.copy())
                try:
                    twin.step(X[s * 10:(s + 1) * 10], y[s * 10:(s + 1) * 10], lr)
                except FloatingPointError:
                    done = True
                    break
            if done:
                break
            for W in twin.weights:
                W *= 0.5
        assert any(np.array_equal(restored, v) for v in visited), f"lr={lr}"


def test_parameter_lists_copy_and_pickle_as_plain_lists():
    import copy
    import pickle

    net = fastbp.MLP([3, 4, 2], seed=0)
    shallow, deep = copy.copy(net.weights), copy.deepcopy(net.weights)
    pickled = pickle.loads(pickle.dumps(net.weights))
    for other in (shallow, deep, pickled):
        assert type(other) is list and len(other) == 2
        np.testing.assert_array_equal(other[0], net.weights[0])
    assert shallow[0] is net.weights[0]
    deep[0][...] = 7  # a deep copy is independent of the model
    assert not (net.weights[0] == 7).any()


# ---------------------------------------------------------------------------
# Booleans must be bool: a string such as "False" is not silently True.

_NOT_BOOLS = ["False", "no", "", 0, 1, 1.0, None, [True], np.array([True]), np.int64(1)]


@pytest.mark.parametrize("name", ["shuffle", "nesterov", "early_stopping", "flush_denormals"])
@pytest.mark.parametrize("value", _NOT_BOOLS, ids=repr)
def test_fit_booleans_must_be_bool(name, value):
    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1, dtype="float64")
    before = params_of(net)
    kw = {name: value, "momentum": 0.9, "validation_split": 0.25}
    with pytest.raises(ValueError, match=rf"{name} must be a bool.*got {re.escape(repr(value))}"):
        net.fit(X, y, epochs=2, batch_size=4, **kw)
    assert_same_params(before, net)
    assert net.optimizer_state() == {}


@pytest.mark.parametrize("value", _NOT_BOOLS, ids=repr)
def test_constructor_bias_must_be_bool(value):
    with pytest.raises(ValueError, match=rf"bias must be a bool.*got {re.escape(repr(value))}"):
        fastbp.MLP([3, 4, 2], bias=value)


def test_numpy_bools_are_bools():
    X, y = data(n=20)
    a = fastbp.MLP([3, 4, 2], seed=1, bias=np.True_)
    b = fastbp.MLP([3, 4, 2], seed=1, bias=True)
    assert a.bias is True and repr(a) == repr(b)
    assert fastbp.MLP([3, 4, 2], bias=np.False_).biases[0] is None
    kw = dict(epochs=2, batch_size=4, momentum=0.9, validation_split=0.25, seed=0)
    a.fit(X, y, shuffle=np.True_, nesterov=np.True_, early_stopping=np.False_,
          flush_denormals=np.bool_(True), **kw)
    b.fit(X, y, shuffle=True, nesterov=True, early_stopping=False, flush_denormals=True, **kw)
    assert a._theta.tobytes() == b._theta.tobytes()


def test_check_bool_helper():
    from fastbp import _common as C

    assert C.check_bool("x", True) is True and C.check_bool("x", np.False_) is False
    for bad in _NOT_BOOLS:
        with pytest.raises(ValueError, match=r"^x must be a bool \(True or False\), got "):
            C.check_bool("x", bad)


# ---------------------------------------------------------------------------
# A fit that fails after training started leaves the model as it was.

def _state(net):
    state = net.optimizer_state()
    return net._theta.tobytes(), {k: v.tobytes() if isinstance(v, np.ndarray) else v
                                  for k, v in state.items()}


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("had_velocity", [False, True])
def test_schedule_failing_mid_fit_restores_the_model(momentum, had_velocity):
    X, y = data(n=40)
    net = fastbp.MLP([3, 8, 2], seed=1, dtype="float64")
    if had_velocity:
        net.fit(X, y, epochs=1, batch_size=8, momentum=0.5)
    before = _state(net)
    calls = []

    def schedule(epoch, lr0):
        calls.append(epoch)
        return float("nan") if epoch == 3 else lr0

    with pytest.raises(ValueError, match=r"schedule returned lr=nan for epoch 3"):
        net.fit(X, y, epochs=6, batch_size=8, lr=0.1, momentum=momentum, schedule=schedule)
    assert calls == [0, 1, 2, 3]  # three epochs trained, then restored
    assert _state(net) == before
    assert ("velocity" in net.optimizer_state()) == had_velocity


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("k")])
def test_callback_raising_mid_fit_restores_the_model(error):
    X, y = data(n=40)
    net = fastbp.MLP([3, 8, 2], seed=1, dtype="float32")
    before = _state(net)

    def cb(epoch, logs):
        if epoch == 2:
            raise error

    with pytest.raises(type(error)):
        net.fit(X, y, epochs=5, batch_size=8, momentum=0.9, nesterov=True, callbacks=[cb])
    assert _state(net) == before and net.optimizer_state() == {}
    # A callback returning something without a truth value fails the same way.
    with pytest.raises(ValueError, match="truth value"):
        net.fit(X, y, epochs=5, batch_size=8, callbacks=[lambda e, logs: np.ones(2)])
    assert _state(net) == before


def test_the_restored_model_trains_as_if_the_failed_fit_never_ran():
    X, y = data(n=40)
    a, b = fastbp.MLP([3, 8, 2], seed=1), fastbp.MLP([3, 8, 2], seed=1)
    kw = dict(batch_size=8, lr=0.1, momentum=0.9, seed=0)
    a.fit(X, y, epochs=2, **kw)
    b.fit(X, y, epochs=2, **kw)
    with pytest.raises(ValueError, match="schedule returned"):
        a.fit(X, y, epochs=4, schedule=lambda e, lr0: -1.0 if e == 2 else lr0, **kw)
    a.fit(X, y, epochs=2, **kw)
    b.fit(X, y, epochs=2, **kw)
    assert _state(a) == _state(b)


class _NoHook:
    on_epoch_end = 3


class _AbstractSchedule(fastbp.schedules.Schedule):
    pass


@pytest.mark.parametrize("kw,error,pattern", [
    (dict(callbacks=[5]), ValueError, r"callbacks\[1\] must be callable .*on_epoch_end.*got 5"),
    (dict(callbacks=[_NoHook()]), ValueError, r"callbacks\[1\] must be callable"),
    (dict(callbacks=lambda e, logs: None), ValueError, r"callbacks must be a sequence"),
    (dict(callbacks="cb"), ValueError, r"callbacks must be a sequence"),
    (dict(schedule=5), ValueError, r"schedule must be a name"),
    (dict(schedule=_AbstractSchedule()), NotImplementedError, None),
    (dict(schedule=lambda e, lr0: "fast"), ValueError, r"schedule returned 'fast' for epoch 0"),
    (dict(schedule=fastbp.schedules.StepDecay(1, gamma=1e200)), ValueError,
     r"schedule returned lr=inf for epoch 5"),
    (dict(schedule=fastbp.schedules.InverseScaling(power_t=-400.0)), ValueError,
     r"schedule returned lr=inf for epoch 5"),
    (dict(verbose="yes"), ValueError, r"verbose must be an integer >= 0"),
    (dict(verbose=-1), ValueError, r"verbose must be an integer >= 0"),
    (dict(patience=2.5), ValueError, r"patience must be an integer"),
    (dict(seed="x"), (TypeError, ValueError), None),
    (dict(validation_split="0.2"), ValueError, r"validation_split must be a number"),
    (dict(validation_split=True), ValueError, r"validation_split must be a number"),
    (dict(momentum="0.9"), ValueError, r"momentum must be a finite number"),
    (dict(nesterov="True"), ValueError, r"nesterov must be a bool"),
])
def test_fit_options_are_checked_before_training(kw, error, pattern):
    X, y = data(n=40)
    net = fastbp.MLP([3, 8, 2], seed=1)
    before = _state(net)
    epochs = []
    record = [lambda e, logs: epochs.append(e)]
    if isinstance(kw.get("callbacks"), list):  # a good callback first, then the bad one
        kw = dict(kw, callbacks=record + kw["callbacks"])
    else:
        kw = dict({"callbacks": record}, **kw)
    kw = {"momentum": 0.9, **kw}
    with pytest.raises(error, match=pattern):
        net.fit(X, y, epochs=6, batch_size=8, **kw)
    assert epochs == [], "training started before the options were checked"
    assert _state(net) == before and net.optimizer_state() == {}


# ---------------------------------------------------------------------------
# Data frames: column names recorded and checked (scikit-learn's feature_names_in_).

def _frame(X, columns):
    pd = pytest.importorskip("pandas")
    return pd.DataFrame(X, columns=columns)


def test_fit_records_the_column_names():
    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1)
    assert not hasattr(net, "feature_names_in_")
    net.fit(_frame(X, ["a", "b", "c"]), y, epochs=1)
    names = net.feature_names_in_
    assert names.dtype == object and list(names) == ["a", "b", "c"]
    names[0] = "changed"  # a copy
    assert list(net.feature_names_in_) == ["a", "b", "c"]
    stepped = fastbp.MLP([3, 4, 2], seed=1)
    stepped.step(_frame(X, ["p", "q", "r"]), y, 0.1)
    assert list(stepped.feature_names_in_) == ["p", "q", "r"]


@pytest.mark.parametrize("columns,pattern", [
    (["b", "a", "c"], r"Feature names must be in the same order as they were in fit"),
    (["a", "b", "z"], r"Feature names unseen at fit time:\n- z\nFeature names seen at fit "
                      r"time, yet now missing:\n- c\n"),
])
def test_a_later_frame_with_other_columns_is_rejected(columns, pattern):
    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1)
    net.fit(_frame(X, ["a", "b", "c"]), y, epochs=1)
    before = params_of(net)
    other = _frame(X, columns)
    calls = [lambda: net.predict(other), lambda: net.loss(other, y),
             lambda: net.gradients(other, y), lambda: net.step(other, y, 0.1),
             lambda: net.fit(other, y, epochs=1),
             lambda: net.fit(_frame(X, ["a", "b", "c"]), y, epochs=1, validation_data=(other, y))]
    for call in calls:
        with pytest.raises(ValueError, match=r"^The feature names should match those that were "
                                             r"passed during fit\.\n" + pattern):
            call()
        assert_same_params(before, net)
    assert list(net.feature_names_in_) == ["a", "b", "c"]


def test_same_columns_pass_and_plain_arrays_warn():
    import warnings

    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1)
    frame = _frame(X, ["a", "b", "c"])
    net.fit(frame, y, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_frame = net.predict(frame)
        net.loss(frame, y)
    with pytest.warns(UserWarning, match=r"^X does not have valid feature names, but MLP was "
                                         r"fitted with feature names$") as record:
        from_array = net.predict(X)
    assert record[0].filename == __file__  # attributed to the caller
    np.testing.assert_array_equal(from_frame, from_array)
    for call in (lambda: net.loss(X, y), lambda: net.gradients(X, y),
                 lambda: net.step(X, y, 0.1), lambda: net.fit(X, y, epochs=1)):
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            call()


def test_frames_without_string_names_and_unnamed_models():
    import warnings

    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(_frame(X, [0, 1, 2]), y, epochs=1)  # pandas' default integer columns: no names
        assert not hasattr(net, "feature_names_in_")
        net.predict(_frame(X, ["a", "b", "c"]))     # a model without names takes any frame
        assert not hasattr(net, "feature_names_in_")
    with pytest.raises(TypeError, match="Feature names are only supported if all input "
                                        "features have string names"):
        net.fit(_frame(X, ["a", 1, "c"]), y, epochs=1)


def test_a_failed_fit_records_no_names():
    X, y = data(n=20)
    net = fastbp.MLP([3, 4, 2], seed=1)
    with pytest.raises(ValueError, match="lr"):
        net.fit(_frame(X, ["a", "b", "c"]), y, epochs=1, lr=-1)
    with pytest.raises(RuntimeError):
        net.fit(_frame(X, ["a", "b", "c"]), y, epochs=2,
                callbacks=[lambda e, logs: (_ for _ in ()).throw(RuntimeError("x"))])
    assert not hasattr(net, "feature_names_in_")


def test_feature_names_can_be_set_and_deleted():
    net = fastbp.MLP([3, 4, 2], seed=1)
    net.feature_names_in_ = ["x", "y", "z"]
    assert list(net.feature_names_in_) == ["x", "y", "z"]
    for bad in (["x", "y"], ["x", "y", 3], "xyz"):
        with pytest.raises(ValueError, match="feature names must be a sequence of 3 strings"):
            net.feature_names_in_ = bad
    del net.feature_names_in_
    assert not hasattr(net, "feature_names_in_")


def test_a_floating_point_error_from_a_callback_is_not_divergence():
    X, y = data(n=40)
    net = fastbp.MLP([3, 8, 2], seed=1)
    before = _state(net)

    def cb(epoch, logs):
        if epoch == 1:
            raise FloatingPointError("the callback's own")

    with pytest.raises(FloatingPointError, match="the callback's own"):
        net.fit(X, y, epochs=4, batch_size=8, callbacks=[cb])
    assert _state(net) == before
