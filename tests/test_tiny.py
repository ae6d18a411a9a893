"""The narrow-net epoch (src/_tiny.pxi, the fbp_narrow_* / fbp_packed_* kernels
of src/fbp_gemm.c): bitwise the general path, on every GEMM code path.

The general path is forced with ``_kernels.set_tiny_path(False)``, the narrow
kernels instead of the packed ones (plain SGD) with ``set_tiny_packed(False)``,
the packed batch-1 loop instead of the fused one (src/fbp_tiny.h: every layer
one vector) with ``set_tiny_fused(False)``.
"""
import numpy as np
import pytest

import fastbp
from fastbp import _kernels as K
from fastbp import reference
from tolerances import ACTIVATIONS, PAIRS, assert_close

ISAS = K.gemm_isas()


@pytest.fixture(autouse=True)
def _restore():
    isa = K.gemm_isa()
    limits = K.set_tiny_limits()
    with fastbp.threads(1):
        yield
    K.set_gemm_isa(isa)
    K.set_tiny_path(True)
    K.set_tiny_packed(True)
    K.set_tiny_fused(True)
    K.set_tiny_limits(*limits)


def data(sizes, n, output, loss, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        Y = rng.integers(0, sizes[-1], n)
    elif loss == "binary_cross_entropy":
        Y = (rng.random((n, sizes[-1])) > 0.5).astype(dtype)
    elif output == "identity":
        Y = rng.standard_normal((n, sizes[-1])).astype(dtype)
    else:
        Y = rng.random((n, sizes[-1])).astype(dtype)
    return X, Y


def epoch_setup(sizes, n, activation, output, dtype, batch_size=1, seed=0, data_seed=0):
    """X, Y (squared error), a model and the buffers ``fit_epoch`` takes: its
    workspace for ``batch_size`` rows and an empty array (no state, no snapshot)."""
    X, Y = data(sizes, n, output, "squared_error", dtype, seed=data_seed)
    net = fastbp.MLP(sizes, activation=activation, output=output, loss="squared_error",
                     dtype=dtype, seed=seed)
    ws = np.empty(net._net.workspace_size(batch_size), dtype=dtype)
    return X, Y, net, ws, np.empty(0, dtype=dtype)


def run(path, sizes, X, Y, *, activation="sigmoid", output="identity", loss="squared_error",
        bias=True, batch_size=1, shuffle=True, epochs=2, lr=0.05, **kw):
    """(theta bytes, loss history or divergence message) of a fit on `path`:
    "packed" (fused where it applies), "loop1" (packed, never fused), "narrow"
    or "general"."""
    K.set_tiny_path(path != "general")
    K.set_tiny_packed(path in ("packed", "loop1"))
    K.set_tiny_fused(path == "packed")
    net = fastbp.MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
                     dtype=X.dtype.name, seed=3)
    try:
        hist = net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=lr, shuffle=shuffle,
                       seed=5, **kw)
    except FloatingPointError as err:   # diverged: the same step, the same rewind
        return net._theta.tobytes(), str(err), net
    return net._theta.tobytes(), list(hist.loss), net


def assert_paths_agree(sizes, X, Y, paths=("packed", "narrow"), **kw):
    general = run("general", sizes, X, Y, **kw)
    for path in paths:
        got = run(path, sizes, X, Y, **kw)
        assert got[0] == general[0], f"{path}: parameters differ from the general path"
        assert got[1] == general[1], f"{path}: loss history differs from the general path"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_bitwise_general_path(isa, dtype, activation, pair):
    """Every hidden activation and output/loss pair, both dtypes, bias on
    and off, batch 1 and larger, shuffled or not, on each code path."""
    K.set_gemm_isa(isa)
    output, loss = pair
    sizes = [3, 5, 4, 2]
    X, Y = data(sizes, 13, output, loss, dtype)
    for bias in (True, False):
        for batch_size, shuffle in ((1, True), (1, False), (4, True), (13, False)):
            assert K.tiny_path_applies(sizes, batch_size, len(X))
            assert_paths_agree(sizes, X, Y, activation=activation, output=output, loss=loss,
                               bias=bias, batch_size=batch_size, shuffle=shuffle)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [[2, 2, 1], [9, 17, 8, 3], [40, 33, 5], [1, 70, 1]],
                         ids=lambda s: "-".join(map(str, s)))
def test_bitwise_widths(isa, dtype, sizes):
    """Layers of one, several and partial vectors (8 floats, 4 doubles), the
    seeds' 2-2-1, and widths past one vector row of the padded layout."""
    K.set_gemm_isa(isa)
    X, Y = data(sizes, 11, "identity", "squared_error", dtype, seed=1)
    for activation in ("tanh", "relu"):
        for batch_size in (1, 3):
            if K.tiny_path_applies(sizes, batch_size, len(X)):
                assert_paths_agree(sizes, X, Y, activation=activation, batch_size=batch_size,
                                   lr=0.01)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_bitwise_fused_loop(isa, dtype, activation, pair):
    """The fused batch-1 loop (every layer one vector in both dtypes: 4
    doubles): the same bits as the packed loop and the general path, every
    hidden activation and output/loss pair (identity + squared error inline,
    the others through the row kernels), bias on and off, shuffled or not,
    one and two hidden layers, on each code path."""
    K.set_gemm_isa(isa)
    output, loss = pair
    for sizes in ([2, 2, 2 if output == "softmax" else 1], [3, 4, 1, 2]):
        X, Y = data(sizes, 9, output, loss, dtype, seed=3)
        for bias in (True, False):
            for shuffle in (True, False):
                assert_paths_agree(sizes, X, Y, paths=("packed", "loop1"),
                                   activation=activation, output=output, loss=loss,
                                   bias=bias, batch_size=1, shuffle=shuffle, lr=0.1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_loop_pieces_snapshot_divergence(dtype):
    """The fused loop run in pieces and with a snapshot at each step (the
    snapshot step on the packed loop in between) equals one go of the
    packed loop, the snapshot the parameters before that step; a diverging
    fit stops at the same step with the same parameters as the packed loop."""
    sizes = [3, 4, 2]
    X, Y, net, ws, e = epoch_setup(sizes, 8, "tanh", "sigmoid", dtype, seed=1, data_seed=4)
    order = np.random.default_rng(2).permutation(8)
    K.set_tiny_fused(False)
    ref = net._theta.copy()
    ref_out = net._net.fit_epoch(ref, X, Y, order, 1, ws, e, e, 1, 0.3)
    K.set_tiny_fused(True)
    for snap_step in range(8):
        theta, snap = net._theta.copy(), np.empty_like(ref)
        out = net._net.fit_epoch(theta, X, Y, order, 1, ws, e, e, 1, 0.3, snapshot=snap,
                                 snapshot_step=snap_step)
        assert theta.tobytes() == ref.tobytes() and out[0] == ref_out[0]
        before = net._theta.copy()
        net._net.fit_epoch(before, X, Y, order, 1, ws, e, e, 1, 0.3, max_steps=snap_step)
        assert snap.tobytes() == before.tobytes()
    pieces, loss = net._theta.copy(), 0.0
    for first, steps in ((0, 3), (3, 1), (4, 2), (6, -1)):
        loss += net._net.fit_epoch(pieces, X, Y, order, 1, ws, e, e, 1, 0.3,
                                   first_step=first, max_steps=steps)[0]
    assert pieces.tobytes() == ref.tobytes()
    assert loss == pytest.approx(ref_out[0], rel=1e-12)
    Xd, Yd = data([2, 2, 1], 30, "identity", "squared_error", dtype, seed=5)
    got = {}
    for path in ("packed", "loop1"):
        got[path] = run(path, [2, 2, 1], Xd, Yd * 1e18, activation="identity", lr=1e10,
                        epochs=3)[:2]
    assert isinstance(got["packed"][1], str) and got["packed"] == got["loop1"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bitwise_legacy_sgd_and_weights(isa, dtype):
    """The legacy SGD keywords (narrow kernels + sgd_update) and sample
    weights, with a batch whose weights sum to 0."""
    K.set_gemm_isa(isa)
    sizes = [3, 6, 2]
    X, Y = data(sizes, 14, "softmax", "cross_entropy", dtype, seed=2)
    w = np.random.default_rng(4).random(14).astype(dtype)
    w[[0, 1, 2, 3]] = 0
    for kw in (dict(momentum=0.9), dict(momentum=0.5, nesterov=True), dict(weight_decay=0.01),
               dict(weight_decay=0.01, momentum=0.3)):
        for batch_size in (1, 4):
            assert_paths_agree(sizes, X, Y, activation="tanh", output="softmax",
                               loss="cross_entropy", batch_size=batch_size, shuffle=False,
                               paths=("narrow",), **kw)
    for batch_size in (1, 2, 4):
        for shuffle in (False, True):
            assert_paths_agree(sizes, X, Y, activation="relu", output="softmax",
                               loss="cross_entropy", batch_size=batch_size, shuffle=shuffle,
                               sample_weight=w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_in_pieces_and_snapshot(dtype):
    """fit_epoch run in pieces (first_step, max_steps) equals one go, and the
    snapshot of a step holds the parameters before it (packed weights
    unpacked into it)."""
    sizes = [2, 3, 1]
    X, Y, net, ws, e = epoch_setup(sizes, 9, "sigmoid", "identity", dtype)
    order = np.random.default_rng(1).permutation(9)
    theta0 = net._theta.copy()
    whole = theta0.copy()
    snap = np.empty_like(whole)
    out = net._net.fit_epoch(whole, X, Y, order, 1, ws, e, e, 1, 0.1, snapshot=snap,
                             snapshot_step=4)
    pieces = theta0.copy()
    loss = 0.0
    for first, steps in ((0, 4), (4, 1), (5, -1)):
        before = pieces.copy()
        loss += net._net.fit_epoch(pieces, X, Y, order, 1, ws, e, e, 1, 0.1,
                                   first_step=first, max_steps=steps)[0]
        if first == 4:
            assert before.tobytes() == snap.tobytes()
    assert pieces.tobytes() == whole.tobytes()
    assert loss == pytest.approx(out[0], rel=1e-12)
    assert out[3] == 9 and out[4] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_l2_penalty(dtype):
    """fit_epoch's l2 (scikit-learn's alpha) on the narrow path: the same
    parameters, velocity and penalty sum as the general path."""
    sizes = [3, 4, 2]
    X, Y, net, ws, _ = epoch_setup(sizes, 10, "tanh", "identity", dtype, batch_size=2)
    out = {}
    for on in (True, False):
        K.set_tiny_path(on)
        theta, grad, vel = net._theta.copy(), np.empty_like(net._theta), np.zeros_like(net._theta)
        res = net._net.fit_epoch(theta, X, Y, None, 2, ws, grad, vel, 1, 0.1, momentum=0.9,
                                 l2=0.3)
        out[on] = (theta.tobytes(), vel.tobytes(), res)
    assert out[True] == out[False]


@pytest.mark.parametrize("path", ["packed", "narrow", "general"])
def test_divergence_rewinds(path):
    """A diverging fit stops at the same step on every path, with the same
    parameters left (the last good step)."""
    sizes = [2, 4, 1]
    X, Y = data(sizes, 30, "identity", "squared_error", "float32")
    Y = Y * 1e18
    kw = dict(lr=1e10, epochs=3)
    K.set_tiny_path(False)
    with pytest.raises(FloatingPointError) as general_err:
        fastbp.MLP(sizes, activation="identity", output="identity", loss="squared_error",
                   seed=3).fit(X, Y, epochs=3, lr=1e10, seed=5)
    theta = {}
    for p in ("general", path):
        K.set_tiny_path(p != "general")
        K.set_tiny_packed(p == "packed")
        net = fastbp.MLP(sizes, activation="identity", output="identity", loss="squared_error",
                         seed=3)
        with pytest.raises(FloatingPointError) as err:
            net.fit(X, Y, epochs=kw["epochs"], lr=kw["lr"], seed=5)
        assert str(err.value) == str(general_err.value)
        theta[p] = net._theta.tobytes()
    assert theta[path] == theta["general"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_reference(dtype, batch_size):
    """The narrow path against the pure-Python reference of the same dtype."""
    sizes = [3, 5, 2]
    assert K.tiny_path_applies(sizes, batch_size, 17)
    kw = dict(activation="tanh", output="softmax", loss="cross_entropy", bias=True,
              dtype=dtype, seed=0)
    fast, ref = fastbp.MLP(sizes, **kw), reference.MLP(sizes, **kw)
    for k in range(len(sizes) - 1):
        ref.weights[k][...] = fast.weights[k]
        ref.biases[k][...] = fast.biases[k]
    X, Y = data(sizes, 17, "softmax", "cross_entropy", dtype, seed=9)
    hf = fast.fit(X, Y, epochs=3, batch_size=batch_size, lr=0.2, seed=11)
    hr = ref.fit(X, Y, epochs=3, batch_size=batch_size, lr=0.2, seed=11)
    assert_close(hf.loss, hr.loss, dtype, "history")
    for k in range(len(sizes) - 1):
        assert_close(fast.weights[k], ref.weights[k], dtype, f"W{k}")
        assert_close(fast.biases[k], ref.biases[k], dtype, f"b{k}")


def test_rule_and_hooks():
    """Which epochs take the narrow path (the measured rule in _tiny.pxi), and
    the hooks' checks."""
    assert K.tiny_path_applies([2, 2, 1], 1, 4096)
    assert K.tiny_path_applies([64, 128, 10], 1, 100)       # batch 1: up to 256 wide
    assert not K.tiny_path_applies([64, 128, 10], 32, 100)  # the small config: blocked GEMM
    assert K.tiny_path_applies([16, 16, 16], 16, 100)       # 16 * 256 = 4096
    assert not K.tiny_path_applies([16, 16, 16], 32, 100)
    assert K.tiny_path_applies([16, 16, 16], 32, 16)        # batches of min(32, n) rows
    assert not K.tiny_path_applies([300, 2, 1], 1, 10)
    assert K.set_tiny_fused(False) is True
    assert K.set_tiny_fused(True) is False
    assert K.set_tiny_path(False) is True
    assert not K.tiny_path_applies([2, 2, 1], 1, 10)
    with pytest.raises(ValueError):
        K.set_tiny_limits(max_width=257)
    with pytest.raises(ValueError):
        K.set_tiny_limits(max_mnk=-1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_huge_max_steps(dtype, fused):
    """A max_steps past the end (up to 2**63 - 1, where first_step + max_steps
    would wrap) runs the rest of the epoch, on the tiny paths (fused and
    packed loop) as on the general one."""
    sizes = [2, 2, 1]
    X, Y, net, ws, e = epoch_setup(sizes, 7, "sigmoid", "identity", dtype)
    order = np.random.default_rng(1).permutation(7)
    out = {}
    for path in ("tiny", "general"):
        K.set_tiny_path(path == "tiny")
        K.set_tiny_fused(fused)
        for first in (0, 1, 6):
            for steps in (-1, 6, 7, 2**62, 2**63 - 2, 2**63 - 1):
                theta = net._theta.copy()
                res = net._net.fit_epoch(theta, X, Y, order, 1, ws, e, e, 1, 0.1,
                                         first_step=first, max_steps=steps)
                out[path, first, steps] = (theta.tobytes(), res)
                assert res[3] == (7 - first if steps < 0 else min(steps, 7 - first))
    for key, val in out.items():
        assert val == out["general", *key[1:]], key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_first_step_past_the_end(dtype):
    """A first_step past the epoch's last batch is refused (first_step *
    batch_size could wrap), and leaves theta as it was; the step just past
    the last batch runs nothing."""
    sizes = [2, 2, 1]
    X, Y, net, ws, e = epoch_setup(sizes, 7, "sigmoid", "identity", dtype, batch_size=3)
    order = np.arange(7)
    theta = net._theta.copy()
    before = theta.tobytes()
    res = net._net.fit_epoch(theta, X, Y, order, 3, ws, e, e, 1, 0.1, first_step=3)
    assert res[3] == 0 and theta.tobytes() == before      # batches 0, 1, 2: 3 is the end
    for first in (4, 2**61, 2**63 - 1):
        with pytest.raises(ValueError, match="past the epoch's last batch"):
            net._net.fit_epoch(theta, X, Y, order, 3, ws, e, e, 1, 0.1, first_step=first)
        assert theta.tobytes() == before
