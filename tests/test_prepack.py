"""The pack wave of a row-split team step (src/_steps.pxi, plan_packs).

A row split on a team packs each W_k once per step, in a wave of column
tiles before the row tiles (forward W_k^T, and W_k for delta_k, k >= 1),
and the row tiles run fbp_gemm_packed_* on that copy.  Here:

* the layers of the test nets really take the pack path (``tiles_pack`` of
  ``team_stats`` counts the pack tiles: per step exactly what the rule
  gives; per predict / loss call once, however many chunks it runs),
  serial steps and the unit split never do;
* the results are bitwise those of 1 thread, of fine and coarse tiles and
  of the path without packs (``set_pack_threshold``), float32 and float64,
  relu and tanh, with and without bias, with dropout, sample weights and
  Adam, on every GEMM code path, for fits, ``gradients``, ``predict`` and
  ``loss``, and with a sparse X (no pack for layer 0's forward product);
* a 2-thread fit and step against the pure-Python reference within the
  float32 bounds (tests/tolerances.py);
* the packs are in the workspace the fit reports (``workspace_size`` with
  ``n_threads``; on sparse X by the call's own sparse plan, ``nnz_per_row``),
  and a ``fit_epoch`` workspace without them still works.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastbp
from fastbp import _kernels, reference
from _helpers import random_xy, shuffled_fit, why_no_teams
from tolerances import assert_close, assert_within, float32_bounds

NO_TEAMS = why_no_teams()
pytestmark = pytest.mark.skipif(NO_TEAMS is not None, reason=str(NO_TEAMS))

DTYPES = ["float32", "float64"]
# Every W_k but the last has >= 16384 elements (the default pack_min_elems):
# packs W_0^T, W_1^T and W_1 (backprop); the 260 x 40 output layer packs its
# own, as before.  At batch 64 on 2 threads a coarse row tile has 32 rows.
SIZES, BATCH, N = [200, 300, 260, 40], 64, 192
PACKED = [(0, "fwd"), (1, "fwd"), (1, "bwd")]


@pytest.fixture
def forced():
    """Every step with more than one thread through the team (threshold 0),
    coarse tiles unless a test says otherwise, no H packs (tests/test_hpack.py:
    the workspace here holds the W packs only); restored afterwards."""
    threads, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    mode, isa = _kernels.set_tile_mode(2), _kernels.gemm_isa()
    pack = _kernels.set_pack_threshold(16384)
    hpack = _kernels.set_hpack_threshold(10**12)
    yield
    _kernels.set_hpack_threshold(hpack)
    fastbp.set_num_threads(threads)
    _kernels.set_parallel_threshold(threshold)
    _kernels.set_tile_mode(mode)
    _kernels.set_pack_threshold(pack)
    _kernels.set_gemm_isa(isa)


def _data(dtype, n=N, sizes=SIZES, seed=0):
    return random_xy(dtype, n, sizes, seed)


def _pack_tiles(itemsize, sizes=SIZES, packed=PACKED):
    """Pack tiles per step by the rule of plan_packs (PACK_TILE_ELEMS 32768,
    at most one tile per packed NR of columns)."""
    fastbp.MLP(sizes, dtype="float32" if itemsize == 4 else "float64")   # (the ISA settled)
    nr = _kernels.gemm_packed_size(itemsize, 1, 1)   # K = 1: N rounded up to NR
    total = 0
    for k, d in packed:
        N_, K_ = (sizes[k + 1], sizes[k]) if d == "fwd" else (sizes[k], sizes[k + 1])
        total += max(1, min(-(-N_ // nr), N_ * K_ // 32768))
    return total


def _fit(dtype, threads, *, sizes=SIZES, **kw):
    """theta after a shuffled fit, its history's losses, and the team counters."""
    return shuffled_fit(dtype, threads, sizes=sizes, batch_size=BATCH, n=N, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_layers_take_the_pack_path(forced, dtype):
    """Two threads: every step (8) runs its pack wave with the tiles the rule
    gives; one thread, or the threshold above every W_k: no pack tile."""
    itemsize = np.dtype(dtype).itemsize
    _, _, st = _fit(dtype, 2)
    assert st["steps_team"] == 2 * N // BATCH
    assert st["tiles_pack"] == st["steps_team"] * _pack_tiles(itemsize) > 0
    _, _, st = _fit(dtype, 1)
    assert st["tiles_pack"] == 0 and st["steps_team"] == 0
    _kernels.set_pack_threshold(10**9)
    _, _, st = _fit(dtype, 2)
    assert st["tiles_pack"] == 0 and st["steps_team"] == 2 * N // BATCH
    _kernels.set_pack_threshold(0)   # the output layer too (260 x 40 at 32 rows: blocked)
    _, _, st = _fit(dtype, 2)
    every = PACKED + [(2, "fwd"), (2, "bwd")]
    assert st["tiles_pack"] == st["steps_team"] * _pack_tiles(itemsize, packed=every)


def test_unit_split_and_small_products_take_no_pack(forced):
    """A small batch (the unit split) packs nothing; nor does a product that
    a row tile runs on the GEMM's small path (<= 4096 multiply-adds)."""
    _kernels.set_pack_threshold(0)
    X, Y = _data("float32", n=32)
    fastbp.set_num_threads(2)
    net = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                     dtype="float32", seed=0)
    _kernels.team_stats(reset=True)
    net.fit(X, Y, epochs=1, batch_size=16, lr=1e-3)     # 16 rows on 2 threads: unit split
    st = _kernels.team_stats()
    assert st["steps_team"] == 2 and st["tiles_pack"] == 0
    sizes = [8, 12, 8, 4]    # 32-row tiles: 32 * 8 * 12 = 3072 and 32 * 8 * 4: small path
    Xs, Ys = _data("float32", n=64, sizes=sizes)
    a, _, st = _fit("float32", 2, sizes=sizes, X=Xs, Y=Ys)
    b, _, _ = _fit("float32", 1, sizes=sizes, X=Xs, Y=Ys)
    assert st["steps_team"] > 0 and st["tiles_pack"] == 0
    assert a.tobytes() == b.tobytes()


FITS = {
    "relu": dict(),
    "tanh-nobias": dict(activation="tanh", bias=False),
    "dropout": dict(dropout=0.3),
    "weights": dict(weights=True),
    "adam": dict(optimizer=lambda: fastbp.optim.Adam(lr=1e-3)),
    "adam-tanh-dropout-weights": dict(activation="tanh", dropout=[0.2, 0.1], weights=True,
                                      optimizer=lambda: fastbp.optim.Adam(lr=1e-3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FITS))
def test_fit_bitwise_threads_tiles_and_packs(forced, dtype, case):
    """1 thread, 2 threads coarse and fine, 2 threads without packs: one theta."""
    kw = FITS[case]
    ref, ref_loss, _ = _fit(dtype, 1, **kw)
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, loss, st = _fit(dtype, 2, **kw)
        assert st["tiles_pack"] > 0, "the pack wave did not run"
        if mode == 1:
            assert st["steps_fine"] == st["steps_team"] > 0
        assert got.tobytes() == ref.tobytes(), f"tile mode {mode}"
        assert loss.tobytes() == ref_loss.tobytes()
    _kernels.set_pack_threshold(10**9)
    got, _, st = _fit(dtype, 2, **kw)
    assert st["tiles_pack"] == 0
    assert got.tobytes() == ref.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_isa(forced, dtype):
    """On each GEMM code path (its own packed layout and NR): packs, fine or
    coarse, give the bits of 1 thread on that path."""
    kw = dict(activation="tanh", dropout=0.2, weights=True,
              optimizer=lambda: fastbp.optim.Adam(lr=1e-3))
    for isa in _kernels.gemm_isas():
        _kernels.set_gemm_isa(isa)
        _kernels.set_tile_mode(2)
        ref, _, _ = _fit(dtype, 1, **kw)
        for mode in (2, 1):
            _kernels.set_tile_mode(mode)
            got, _, st = _fit(dtype, 2, **kw)
            assert st["tiles_pack"] > 0, isa
            assert got.tobytes() == ref.tobytes(), (isa, mode)


def _forward_calls(dtype, threads, sw):
    fastbp.set_num_threads(threads)
    X, Y = _data(dtype)
    net = fastbp.MLP(SIZES, activation="tanh", output="identity", loss="squared_error",
                     dtype=dtype, seed=2)
    kw = dict(sample_weight=sw) if sw is not None else {}
    _kernels.team_stats(reset=True)
    pred = net.predict(X)
    loss = net.loss(X, Y, **kw)
    fwd = _kernels.team_stats()["tiles_pack"]
    if sw is not None:
        kw = dict(sample_weight=sw[:BATCH])
    gl, grads = net.gradients(X[:BATCH], Y[:BATCH], **kw)
    out = [pred, np.float64(loss), np.float64(gl)] + [g for pair in grads for g in pair]
    return out, fwd, _kernels.team_stats()["tiles_pack"] - fwd


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_calls_and_gradients(forced, dtype, weighted):
    """predict and loss (forward packs only) and gradients (both) on 2
    threads, fine and coarse, equal 1 thread's bit for bit."""
    sw = np.random.default_rng(4).uniform(0, 2, N).astype(dtype) if weighted else None
    ref, fwd, grad = _forward_calls(dtype, 1, sw)
    assert fwd == grad == 0
    itemsize = np.dtype(dtype).itemsize
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, fwd, grad = _forward_calls(dtype, 2, sw)
        assert fwd >= 2 * _pack_tiles(itemsize, packed=[(0, "fwd"), (1, "fwd")])
        assert grad == _pack_tiles(itemsize)
        for a, b in zip(got, ref):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_sparse_x_packs_all_but_layer_0_forward(forced):
    """A CSR X: layer 0's forward product is sparse_forward_cols (no pack),
    the other packs run, and 2 threads give 1 thread's bits."""
    sps = pytest.importorskip("scipy.sparse")
    X = sps.random(N, SIZES[0], density=0.1, format="csr", dtype=np.float64,
                   random_state=np.random.default_rng(3))
    _, Y = _data("float64")
    for opt in (None, lambda: fastbp.optim.Adam(lr=1e-3)):
        ref, _, _ = _fit("float64", 1, X=X, Y=Y, optimizer=opt)
        got, _, st = _fit("float64", 2, X=X, Y=Y, optimizer=opt)
        assert st["tiles_pack"] == st["steps_team"] * _pack_tiles(8, packed=PACKED[1:]) > 0
        assert got.tobytes() == ref.tobytes()


def test_two_thread_step_and_fit_match_the_reference(forced):
    """The float32 kernels with the pack wave against the float64 reference
    (per-element float32 bounds) on one step, and a float32 fit against the
    float32 reference (TOL).  (A net the pure-Python reference runs in tens
    of milliseconds, every W_k packed: threshold 0; 16-row tiles, every
    product of a tile above the small path's 4096.)"""
    _kernels.set_pack_threshold(0)
    sizes, batch = [24, 40, 24, 36], 32
    rng = np.random.default_rng(8)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    Y = rng.standard_normal((batch, sizes[-1])).astype(np.float32)
    init = fastbp.MLP(sizes, activation="tanh", dtype="float32", seed=3)
    weights = [np.array(W) for W in init.weights]
    biases = [rng.normal(scale=0.3, size=n).astype(np.float32) for n in sizes[1:]]
    kw = dict(activation="tanh", output="identity", loss="squared_error", weights=weights,
              biases=biases)
    ref = reference.MLP(sizes, dtype="float64", **kw)
    bounds = float32_bounds(ref, X, Y, lr=0.25)
    ref_grads = ref.gradients(X, Y)
    fastbp.set_num_threads(2)
    fast = fastbp.MLP(sizes, dtype="float32", **kw)
    _kernels.team_stats(reset=True)
    lf, gf = fast.gradients(X, Y)
    every = [(0, "fwd"), (1, "fwd"), (1, "bwd"), (2, "fwd"), (2, "bwd")]
    assert _kernels.team_stats()["tiles_pack"] == _pack_tiles(4, sizes, every)
    assert_within(lf, ref_grads[0], bounds["loss"], "loss")
    for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, ref_grads[1])):
        assert_within(dWf, dWr, bounds["dW"][k], f"dW{k}")
        assert_within(dbf, dbr, bounds["db"][k], f"db{k}")
    ref.step(X, Y, 0.25)
    fast.step(X, Y, 0.25)
    for k in range(len(sizes) - 1):
        assert_within(fast.weights[k], ref.weights[k], bounds["W_step"][k], f"W{k}")
        assert_within(fast.biases[k], ref.biases[k], bounds["b_step"][k], f"b{k}")
    # a fit of 2 epochs of 3 shuffled batches against the float32 reference
    Xf = rng.standard_normal((3 * batch, sizes[0])).astype(np.float32)
    Yf = rng.standard_normal((3 * batch, sizes[-1])).astype(np.float32)
    fast = fastbp.MLP(sizes, dtype="float32", **kw)
    slow = reference.MLP(sizes, dtype="float32", **kw)
    _kernels.team_stats(reset=True)
    hf = fast.fit(Xf, Yf, epochs=2, batch_size=batch, lr=0.01, seed=11)
    assert _kernels.team_stats()["tiles_pack"] == 6 * _pack_tiles(4, sizes, every)
    hr = slow.fit(Xf, Yf, epochs=2, batch_size=batch, lr=0.01, seed=11)
    assert_close(hf.loss, hr.loss, "float32", "history")
    for k in range(len(sizes) - 1):
        assert_close(fast.weights[k], slow.weights[k], "float32", f"W{k}")
        assert_close(fast.biases[k], slow.biases[k], "float32", f"b{k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_packs_are_in_the_reported_workspace(forced, dtype):
    """workspace_size(n_threads=2) = that of 1 thread + the aligned packs of
    the layout + 64 bytes; History.workspace_bytes and workspace_nbytes
    count them; a fit_epoch workspace without them gives the same bits."""
    item = np.dtype(dtype).itemsize
    fastbp.set_num_threads(2)
    net = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                     dtype=dtype, seed=0)
    k_net = net._net
    al = 64 // item
    up = lambda n: -(-n // al) * al   # noqa: E731
    packs = (up(_kernels.gemm_packed_size(item, 300, 200))
             + up(_kernels.gemm_packed_size(item, 260, 300))
             + up(_kernels.gemm_packed_size(item, 300, 260)) + al)
    one = k_net.workspace_size(BATCH)
    assert k_net.workspace_size(BATCH, n_threads=2, itemsize=item) == one + packs
    fwd = up(_kernels.gemm_packed_size(item, 300, 200)) + up(_kernels.gemm_packed_size(item, 260, 300)) + al
    assert k_net.workspace_size(BATCH, "loss", n_threads=2, itemsize=item) == \
        k_net.workspace_size(BATCH, "loss") + fwd
    assert k_net.workspace_size(16, n_threads=2, itemsize=item) == k_net.workspace_size(16)
    assert net.workspace_nbytes(BATCH) == (one + packs) * item
    assert k_net.fit_workspace_nbytes(BATCH, N, item, 2) > (one + packs) * item
    X, Y = _data(dtype)
    hist = net.fit(X, Y, epochs=1, batch_size=BATCH, lr=1e-3, shuffle=False)
    fastbp.set_num_threads(1)
    again = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                       dtype=dtype, seed=0)
    assert hist.workspace_bytes - again.fit(X, Y, epochs=1, batch_size=BATCH, lr=1e-3,
                                            shuffle=False).workspace_bytes == packs * item
    # the kernel call with a workspace that has no room for the packs
    theta = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                       dtype=dtype, seed=0)._theta.copy()
    empty = np.empty(0, dtype=dtype)
    _kernels.team_stats(reset=True)
    k_net.fit_epoch(theta, X, Y, None, BATCH, np.empty(one, dtype=dtype), empty, empty, 2, 1e-3,
                    flush_denormals=True)
    assert _kernels.team_stats()["tiles_pack"] > 0
    assert theta.tobytes() == again._theta.tobytes()


def test_set_pack_threshold_validates():
    with pytest.raises(ValueError, match=">= 0"):
        _kernels.set_pack_threshold(-1)
    with pytest.raises(ValueError, match="itemsize"):
        _kernels.gemm_packed_size(2, 4, 4)
    net = fastbp.MLP([4, 3])
    with pytest.raises(ValueError, match="itemsize"):
        net._net.workspace_size(4, n_threads=2, itemsize=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_last_partial_batch_and_chunk(forced, dtype):
    """A fit whose last batch is shorter (32 of 64 rows: 16-row coarse, 8-row
    fine tiles, every product still packed) and predict / loss in chunks
    with a shorter last one: 2 threads give 1 thread's bits, and every team
    step runs the whole pack wave (a forward call: its first chunk only)."""
    n, chunk = 3 * BATCH + 32, 64
    X, Y = _data(dtype, n=n, seed=6)
    itemsize = np.dtype(dtype).itemsize
    ref, ref_loss, _ = _fit(dtype, 1, X=X, Y=Y, optimizer=lambda: fastbp.optim.Adam(lr=1e-3))

    def forward(threads):
        net = fastbp.MLP(SIZES, activation="tanh", output="identity", loss="squared_error",
                         dtype=dtype, seed=4)
        out = np.empty((n, SIZES[-1]), dtype=dtype)
        _kernels.team_stats(reset=True)
        net._net.predict(net._theta, X, out, chunk, threads)
        loss = net._net.loss(net._theta, X, Y, chunk, threads)
        return out, np.array(loss), _kernels.team_stats()

    ref_out, ref_l, _ = forward(1)
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, loss, st = _fit(dtype, 2, X=X, Y=Y, optimizer=lambda: fastbp.optim.Adam(lr=1e-3))
        assert st["steps_team"] == 2 * 4
        assert st["tiles_pack"] == st["steps_team"] * _pack_tiles(itemsize), mode
        assert got.tobytes() == ref.tobytes() and loss.tobytes() == ref_loss.tobytes(), mode
        out, l2, st = forward(2)
        assert st["steps_team"] == 2 * 4
        fwd = _pack_tiles(itemsize, packed=[(0, "fwd"), (1, "fwd")])
        assert st["tiles_pack"] == 2 * fwd, mode   # once per call (predict, loss)
        assert out.tobytes() == ref_out.tobytes() and l2.tobytes() == ref_l.tobytes(), mode


def test_sparse_fit_packs_in_the_callers_workspace():
    """A CSR fit on 3 threads at the default parallel threshold: its steps
    plan by their sparse cost (layer 0 at ~5 stored entries per row, with
    Adam also the pass over W_0): 2 threads, a row split that packs W_1 and
    W_1^T, where the dense cost would give 3 threads and a unit split (no
    packs).  workspace_size with nnz_per_row (and grad) follows the call's
    plan, so no fit_epoch call allocates packs of its own (alloc_stats),
    for fastbp.MLP (plain SGD and Adam) and fastbp.sklearn's adam epoch;
    the bits are 1 thread's."""
    sps = pytest.importorskip("scipy.sparse")
    from fastbp import _sparse
    from fastbp.sklearn import MLPRegressor
    sizes, batch, n = [1000, 128, 128, 1], 32, 128
    X = sps.random(n, sizes[0], density=0.005, format="csr", dtype=np.float64,
                   random_state=np.random.default_rng(3))
    Y = np.random.default_rng(4).standard_normal((n, 1))
    nnz = _sparse.nnz_per_row(_sparse.check_sparse_X(X, sizes[0], np.float64))
    assert nnz == -(-X.nnz // n) and nnz <= 31   # (2 threads, with or without W_0's pass)
    threads, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(262144)
    pack = _kernels.set_pack_threshold(16384)
    try:
        k_net = fastbp.MLP(sizes, output="identity", loss="squared_error")._net
        # the premise: dense cost, 3 threads, a unit split (no packs); the
        # sparse plan's steps pack
        assert k_net.workspace_size(batch, n_threads=3) == k_net.workspace_size(batch)
        for grad in (False, True):
            assert k_net.workspace_size(batch, sparse=True, n_threads=3, nnz_per_row=nnz,
                                        grad=grad) > k_net.workspace_size(batch, sparse=True)
        for opt in (None, lambda: fastbp.optim.Adam(lr=1e-3)):
            got = []
            for t in (1, 3):
                fastbp.set_num_threads(t)
                net = fastbp.MLP(sizes, activation="relu", output="identity",
                                 loss="squared_error", dtype="float64", seed=0)
                kw = dict(optimizer=opt()) if opt else dict(lr=1e-3)
                _kernels.alloc_stats(reset=True)
                net.fit(X, Y, epochs=2, batch_size=batch, seed=1, **kw)
                assert _kernels.alloc_stats()["own_packs"] == 0, (t, opt)
                got.append(net._theta.tobytes())
            assert got[0] == got[1]
        fastbp.set_num_threads(3)
        est = MLPRegressor(hidden_layer_sizes=(128, 128), solver="adam", batch_size=batch,
                           max_iter=2, random_state=0, shuffle=True)
        _kernels.alloc_stats(reset=True)
        with pytest.warns(Warning):   # (not converged in 2 iterations)
            est.fit(X, Y.ravel())
        assert _kernels.alloc_stats()["own_packs"] == 0
    finally:
        fastbp.set_num_threads(threads)
        _kernels.set_parallel_threshold(threshold)
        _kernels.set_pack_threshold(pack)


def test_lbfgs_sparse_workspace_is_what_the_calls_allocate(forced):
    """An L-BFGS fit on CSR X: History.workspace_bytes counts the packs its
    gradients call really allocates on 2 threads (W_1^T and W_1, not layer
    0's forward pack, which a sparse X never takes): the 2-thread figure
    exceeds the 1-thread one by exactly the growth of the largest workspace
    its kernel calls allocated (alloc_stats), and that workspace is
    workspace_size's with sparse and nnz_per_row."""
    sps = pytest.importorskip("scipy.sparse")
    from fastbp import _sparse
    X = sps.random(N, SIZES[0], density=0.1, format="csr", dtype=np.float64,
                   random_state=np.random.default_rng(3))
    _, Y = _data("float64")

    def fit(threads):
        fastbp.set_num_threads(threads)
        net = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                         dtype="float64", seed=0)
        _kernels.alloc_stats(reset=True)
        hist = net.fit(X, Y, optimizer=fastbp.optim.LBFGS(max_iter=3))
        return net, hist.workspace_bytes, _kernels.alloc_stats()["call_ws"]

    net, b1, w1 = fit(1)
    assert w1 == net._net.workspace_size(N, "gradients")
    net, b2, w2 = fit(2)
    nnz = _sparse.nnz_per_row(_sparse.check_sparse_X(X, SIZES[0], np.float64))
    assert w2 == net._net.workspace_size(N, "gradients", sparse=True, n_threads=2, itemsize=8,
                                         nnz_per_row=nnz) > w1
    assert b2 - b1 == (w2 - w1) * 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_calls_pack_once_per_call(forced, dtype):
    """predict and loss in 1, 3, 6 and 8 chunks (the last one shorter) on 2
    threads: W does not change during the call, so the pack tiles of a call
    are one pack wave's (the first chunk's) whatever the chunk count, and
    the later chunks read those packs; the bits are 1 thread's, with and
    without packs (set_pack_threshold), coarse and fine tiles."""
    n = 6 * BATCH
    X, Y = _data(dtype, n=n, seed=7)
    itemsize = np.dtype(dtype).itemsize
    fwd = _pack_tiles(itemsize, packed=[(0, "fwd"), (1, "fwd")])
    net = fastbp.MLP(SIZES, activation="tanh", output="identity", loss="squared_error",
                     dtype=dtype, seed=4)

    def forward(threads, chunk):
        out = np.empty((n, SIZES[-1]), dtype=dtype)
        _kernels.team_stats(reset=True)
        net._net.predict(net._theta, X, out, chunk, threads)
        p = _kernels.team_stats()["tiles_pack"]
        loss = net._net.loss(net._theta, X, Y, chunk, threads)
        return out.tobytes(), np.array(loss).tobytes(), p, _kernels.team_stats()["tiles_pack"] - p

    chunks = (n, 2 * BATCH, BATCH, BATCH - 16)
    # 1 thread (the loss sums chunk by chunk: its bits are per chunk size)
    ref = {chunk: forward(1, chunk) for chunk in chunks}
    for chunk in chunks:
        assert ref[chunk][2:] == (0, 0) and ref[chunk][0] == ref[n][0]
    for threshold, tiles in ((16384, fwd), (10**9, 0)):
        _kernels.set_pack_threshold(threshold)
        for mode in (2, 1):
            _kernels.set_tile_mode(mode)
            for chunk in chunks:
                got = forward(2, chunk)
                assert got[2:] == (tiles, tiles), (threshold, mode, chunk)
                assert got[:2] == ref[chunk][:2], (threshold, mode, chunk)
