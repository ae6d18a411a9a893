"""The H packs of a training row split (src/_steps.pxi, pack_h_rows).

Part 2 of a step multiplies, per unit tile of layer k, some columns of
delta_{k+1} (transposed) by the layer input H_k (the batch rows x n_in:
the gathered X rows, D_k with dropout, else A_k), and each such GEMM
packed H_k again.  On a row split each row tile now packs its own rows of
H_k (fbp_gemm_pack_b_rows_*) right after writing them, into the step's
pack buffer, and the unit tiles run fbp_gemm_packed_* on that copy.  Here:

* the path runs (``team_stats``: ``hpacks`` counts the row ranges packed,
  ``tiles_hpack`` the unit tiles that read a packed H_k; per step exactly
  what the rule gives), never on 1 thread, below the threshold, on the
  unit split, for a sparse X's layer 0 or an H_k of more than 2**20
  elements;
* the results are bitwise those of 1 thread for coarse and fine tiles,
  float32 and float64, relu and tanh, with and without bias, with dropout,
  sample weights, Adam (the gradient path) and plain SGD (the fused step),
  on every GEMM code path, for fits (also a shorter last batch),
  ``gradients`` (X used in place) and a sparse X;
* the H packs are in the workspace the fit reports (``workspace_size``
  with ``n_threads``, ``History.workspace_bytes``), and a ``fit_epoch``
  workspace without room for them still gives the same bits.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastbp
from fastbp import _kernels
from _helpers import random_xy, shuffled_fit, why_no_teams

NO_TEAMS = why_no_teams()
pytestmark = pytest.mark.skipif(NO_TEAMS is not None, reason=str(NO_TEAMS))

DTYPES = ["float32", "float64"]
# At batch 64: H_0 64 x 200 (12800 elements), H_1 64 x 300 (19200), H_2
# 64 x 260 (16640); on 2 threads 2 coarse row tiles of 32 rows and 2 coarse
# unit tiles per layer (every one above the small path's 4096 multiply-adds).
SIZES, BATCH, N = [200, 300, 260, 40], 64, 192
STEPS = 2 * N // BATCH   # two epochs


@pytest.fixture
def forced():
    """Every step with more than one thread through the team (threshold 0),
    coarse tiles unless a test says otherwise, every H_k packed (threshold
    0); restored afterwards."""
    threads, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    mode, isa = _kernels.set_tile_mode(2), _kernels.gemm_isa()
    pack = _kernels.set_pack_threshold(16384)
    hpack = _kernels.set_hpack_threshold(0)
    yield
    fastbp.set_num_threads(threads)
    _kernels.set_parallel_threshold(threshold)
    _kernels.set_tile_mode(mode)
    _kernels.set_pack_threshold(pack)
    _kernels.set_hpack_threshold(hpack)
    _kernels.set_gemm_isa(isa)


def _data(dtype, n=N, sizes=SIZES, seed=0):
    return random_xy(dtype, n, sizes, seed)


def _fit(dtype, threads, *, sizes=SIZES, **kw):
    """theta after a shuffled fit, its history's losses, and the team counters."""
    return shuffled_fit(dtype, threads, sizes=sizes, batch_size=BATCH, n=N, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_h_packs_run_by_the_rule(forced, dtype):
    """Coarse tiles on 2 threads: per step each of the 2 row tiles packs its
    rows of every H_k at or above the threshold, and each of the 2 unit
    tiles of those layers reads the copy; 1 thread, or a threshold above
    every H_k: none."""
    for threshold, layers in ((0, 3), (16384, 2), (19200, 1), (19201, 0)):
        _kernels.set_hpack_threshold(threshold)
        _, _, st = _fit(dtype, 2)
        assert st["steps_team"] == STEPS
        assert st["hpacks"] == STEPS * 2 * layers, threshold
        assert st["tiles_hpack"] == STEPS * 2 * layers, threshold
    _kernels.set_hpack_threshold(0)
    _, _, st = _fit(dtype, 1)
    assert st["hpacks"] == st["tiles_hpack"] == st["steps_team"] == 0
    _kernels.set_tile_mode(1)    # fine: more row tiles and unit tiles, all packed
    _, _, st = _fit(dtype, 2)
    assert st["steps_fine"] == st["steps_team"] == STEPS
    assert st["hpacks"] > STEPS * 2 * 3 and st["tiles_hpack"] > STEPS * 2 * 3


def test_unit_split_and_small_products_take_no_h_pack(forced):
    """A small batch (the unit split) packs no H_k; nor does a layer whose
    narrowest unit tile runs on the GEMM's small path (<= 4096
    multiply-adds)."""
    X, Y = _data("float32", n=32)
    fastbp.set_num_threads(2)
    net = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                     dtype="float32", seed=0)
    _kernels.team_stats(reset=True)
    net.fit(X, Y, epochs=1, batch_size=16, lr=1e-3)     # 16 rows on 2 threads: unit split
    st = _kernels.team_stats()
    assert st["steps_team"] == 2 and st["hpacks"] == st["tiles_hpack"] == 0
    # 64 rows, coarse, unit tiles cut at multiples of the micro-tile's MR
    # (6 on generic/AVX2, 12 on AVX-512 float32): layers 0 and 1 of MR + 2
    # units split into MR and 2 units; layer 0's whole product (MR + 2) x 12
    # x 64 exceeds 4096 multiply-adds, its narrowest tile 2 x 12 x 64 does
    # not; layer 1's narrowest is 2 x (MR + 2) x 64, layer 2 one tile of
    # 4 x (MR + 2) x 64: every narrowest tile on the small path
    mr, _ = _kernels.gemm_tile_shape("float32")
    sizes = [12, mr + 2, mr + 2, 4]
    assert (mr + 2) * 12 * 64 > 4096 >= 4 * (mr + 2) * 64
    Xs, Ys = _data("float32", n=64, sizes=sizes)
    a, _, st = _fit("float32", 2, sizes=sizes, X=Xs, Y=Ys)
    b, _, _ = _fit("float32", 1, sizes=sizes, X=Xs, Y=Ys)
    assert st["steps_team"] > 0 and st["hpacks"] == st["tiles_hpack"] == 0
    assert a.tobytes() == b.tobytes()


FITS = {
    "relu-sgd": dict(),
    "tanh-nobias": dict(activation="tanh", bias=False),
    "dropout": dict(dropout=0.3),
    "weights": dict(weights=True),
    "adam": dict(optimizer=lambda: fastbp.optim.Adam(lr=1e-3)),
    "adam-tanh-dropout-weights": dict(activation="tanh", dropout=[0.2, 0.1], weights=True,
                                      optimizer=lambda: fastbp.optim.Adam(lr=1e-3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FITS))
def test_fit_bitwise_threads_tiles_and_h_packs(forced, dtype, case):
    """1 thread, 2 threads coarse and fine with every H_k packed, 2 threads
    without H packs: one theta, one loss history."""
    kw = FITS[case]
    ref, ref_loss, _ = _fit(dtype, 1, **kw)
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, loss, st = _fit(dtype, 2, **kw)
        assert st["tiles_hpack"] > 0 and st["hpacks"] > 0, "the H packs did not run"
        assert got.tobytes() == ref.tobytes(), f"tile mode {mode}"
        assert loss.tobytes() == ref_loss.tobytes()
    _kernels.set_hpack_threshold(10**12)
    got, _, st = _fit(dtype, 2, **kw)
    assert st["hpacks"] == st["tiles_hpack"] == 0
    assert got.tobytes() == ref.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_isa(forced, dtype):
    """On each GEMM code path (its own packed layout and NR): H packs, fine
    or coarse, give the bits of 1 thread on that path."""
    kw = dict(activation="tanh", dropout=0.2, weights=True,
              optimizer=lambda: fastbp.optim.Adam(lr=1e-3))
    for isa in _kernels.gemm_isas():
        _kernels.set_gemm_isa(isa)
        _kernels.set_tile_mode(2)
        ref, _, _ = _fit(dtype, 1, **kw)
        ref_sgd, _, _ = _fit(dtype, 1)
        for mode in (2, 1):
            _kernels.set_tile_mode(mode)
            got, _, st = _fit(dtype, 2, **kw)
            assert st["tiles_hpack"] > 0, isa
            assert got.tobytes() == ref.tobytes(), (isa, mode)
            got, _, st = _fit(dtype, 2)
            assert st["tiles_hpack"] > 0, isa
            assert got.tobytes() == ref_sgd.tobytes(), (isa, mode, "sgd")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_and_a_shorter_last_batch(forced, dtype):
    """gradients (X used in place: H_0 packed from X's rows) and a fit whose
    last batch is shorter (32 of 64 rows: its own, smaller layout in the
    buffer sized for 64) on 2 threads equal 1 thread's bits."""
    X, Y = _data(dtype)
    sw = np.random.default_rng(4).uniform(0, 2, BATCH).astype(dtype)

    def grads(threads):
        fastbp.set_num_threads(threads)
        net = fastbp.MLP(SIZES, activation="tanh", output="identity", loss="squared_error",
                         dtype=dtype, seed=2, dropout=[0.1, 0.2])
        _kernels.team_stats(reset=True)
        loss, g = net.gradients(X[:BATCH], Y[:BATCH], sample_weight=sw)
        out = [np.float64(loss)] + [a for pair in g for a in pair]
        return out, _kernels.team_stats()

    ref, _ = grads(1)
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, st = grads(2)
        assert st["hpacks"] > 0 and st["tiles_hpack"] > 0
        for a, b in zip(got, ref):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), mode
    n = 3 * BATCH + 32
    X, Y = _data(dtype, n=n, seed=6)
    _kernels.set_tile_mode(2)
    ref, ref_loss, _ = _fit(dtype, 1, X=X, Y=Y, optimizer=lambda: fastbp.optim.Adam(lr=1e-3))
    for mode in (2, 1):
        _kernels.set_tile_mode(mode)
        got, loss, st = _fit(dtype, 2, X=X, Y=Y, optimizer=lambda: fastbp.optim.Adam(lr=1e-3))
        assert st["steps_team"] == 2 * 4
        if mode == 2:
            assert st["hpacks"] == st["tiles_hpack"] == st["steps_team"] * 2 * 3
        assert got.tobytes() == ref.tobytes() and loss.tobytes() == ref_loss.tobytes(), mode


def test_sparse_x_packs_no_h_0(forced):
    """A CSR X: layer 0's gradient walks X's entries (no H_0 pack), H_1 and
    H_2 are packed, and 2 threads give 1 thread's bits (SGD and Adam)."""
    sps = pytest.importorskip("scipy.sparse")
    X = sps.random(N, SIZES[0], density=0.1, format="csr", dtype=np.float64,
                   random_state=np.random.default_rng(3))
    _, Y = _data("float64")
    for opt in (None, lambda: fastbp.optim.Adam(lr=1e-3)):
        ref, _, _ = _fit("float64", 1, X=X, Y=Y, optimizer=opt)
        got, _, st = _fit("float64", 2, X=X, Y=Y, optimizer=opt)
        assert st["hpacks"] == st["tiles_hpack"] == st["steps_team"] * 2 * 2 > 0
        assert got.tobytes() == ref.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_h_packs_are_in_the_reported_workspace(forced, dtype):
    """workspace_size(n_threads=2) of a fit or gradients = that of 1 thread
    + the aligned W packs + the aligned H packs (K = the rows, N = n_in) +
    64 bytes (predict and loss: no H pack); History.workspace_bytes and
    workspace_nbytes count them; a fit_epoch workspace without room for
    the packs gives the same bits."""
    item = np.dtype(dtype).itemsize
    fastbp.set_num_threads(2)
    net = fastbp.MLP(SIZES, activation="relu", output="identity", loss="squared_error",
                     dtype=dtype, seed=0)
    k_net = net._net
    al = 64 // item
    up = lambda n: -(-n // al) * al   # noqa: E731
    size = _kernels.gemm_packed_size
    wpacks = up(size(item, 300, 200)) + up(size(item, 260, 300)) + up(size(item, 300, 260))
    hpacks = sum(up(size(item, n_in, BATCH)) for n_in in SIZES[:-1])
    one = k_net.workspace_size(BATCH)
    assert k_net.workspace_size(BATCH, n_threads=2, itemsize=item) == one + wpacks + hpacks + al
    assert k_net.workspace_size(BATCH, "gradients", n_threads=2, itemsize=item) == \
        k_net.workspace_size(BATCH, "gradients") + wpacks + hpacks + al
    fwd = up(size(item, 300, 200)) + up(size(item, 260, 300)) + al
    assert k_net.workspace_size(BATCH, "loss", n_threads=2, itemsize=item) == \
        k_net.workspace_size(BATCH, "loss") + fwd
    _kernels.set_hpack_threshold(16384)   # H_1, H_2 only
    h12 = up(size(item, 300, BATCH)) + up(size(item, 260, BATCH))
    assert k_net.workspace_size(BATCH, n_threads=2, itemsize=item) == one + wpacks + h12 + al
    _kernels.set_hpack_threshold(0)
    packs = wpacks + hpacks + al
    assert net.workspace_nbytes(BATCH) == (one + packs) * item
    X, Y = _data(dtype)
    _kernels.team_stats(reset=True)
    hist = net.fit(X, Y, epochs=1, batch_size=BATCH, lr=1e-3, shuffle=False)
    assert _kernels.team_stats()["hpacks"] > 0
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
    assert _kernels.team_stats()["tiles_hpack"] > 0
    assert theta.tobytes() == again._theta.tobytes()


def test_a_large_h_k_is_not_packed(forced):
    """gradients() over 4096 rows of 512 inputs: H_0 (X itself, 2**21
    elements) is above hpack_max_elems (2**20) and not packed (no second
    copy of X), H_1 (4096 x 4) is; 1 thread's bits."""
    X = np.random.default_rng(0).standard_normal((4096, 512)).astype("float32")
    Y = np.random.default_rng(1).standard_normal((4096, 2)).astype("float32")
    out = []
    for threads in (1, 2):
        fastbp.set_num_threads(threads)
        net = fastbp.MLP([512, 4, 2], output="identity", loss="squared_error", seed=0)
        _kernels.team_stats(reset=True)
        loss, g = net.gradients(X, Y)
        out.append([np.float64(loss)] + [a for pair in g for a in pair])
    st = _kernels.team_stats()
    assert st["steps_team"] == 1 and st["hpacks"] == 2 and st["tiles_hpack"] == 1
    for a, b in zip(*out):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_set_hpack_threshold_validates():
    with pytest.raises(ValueError, match=">= 0"):
        _kernels.set_hpack_threshold(-1)
    previous = _kernels.set_hpack_threshold(123)
    assert _kernels.set_hpack_threshold(previous) == 123


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_shorter_last_batch_stays_in_the_calls_layout(forced, dtype):
    """The H packs' size limit goes by the call's largest step: at batch
    1100, H_0 (1100 x 1024) is above hpack_max_elems, and the last batch's
    900 x 1024 is below it; judged by that batch's own rows, its H_0 pack
    would lie past the buffer the call sized for its 1100-row steps.  A
    fit_epoch workspace of exactly workspace_size(1100, n_threads=2) with a
    guard after it: the guard is untouched, H_0 is never packed, and the
    bits are 1 thread's."""
    sizes, batch, n = [1024, 16, 2], 1100, 2000
    X, Y = _data(dtype, n=n, sizes=sizes)
    item = np.dtype(dtype).itemsize
    out = []
    for threads in (1, 2):
        net = fastbp.MLP(sizes, activation="relu", output="identity", loss="squared_error",
                         dtype=dtype, seed=0)
        theta = net._theta.copy()
        size = net._net.workspace_size(batch, n_threads=threads, itemsize=item)
        buf = np.full(size + 4096, 7.0, dtype=dtype)
        empty = np.empty(0, dtype=dtype)
        _kernels.team_stats(reset=True)
        net._net.fit_epoch(theta, X, Y, None, batch, buf[:size], empty, empty, threads, 1e-3,
                           flush_denormals=True)
        st = _kernels.team_stats()
        assert np.all(buf[size:] == 7.0)
        out.append(theta)
    # H_1 (16 inputs) is packed on both steps, H_0 on neither: 2 row tiles each
    assert st["steps_team"] == 2 and st["hpacks"] == 4
    assert out[0].tobytes() == out[1].tobytes()
