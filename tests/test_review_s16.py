"""Regressions kept from the session-16 second reading of the kernels.

What these guard, each checked while reading the code (tests/test_sparse.py,
test_tiny.py and test_threads*.py hold the broad matrices; these add the
corners they leave out):

* sparse vs dense first layer (src/_sparse.pxi): the same *bits*, compared
  as unsigned integers (``assert_array_equal`` treats -0 and +0 as equal),
  on 1, 2 and 3 threads, fine and coarse tiles, three K-slabs of the
  forward (n_in > 512) and two of the weight gradient (batch > 256), three
  layers, dropout, sample weights with zero entries, plain SGD, momentum,
  Adam and clipped AdamW; read-only CSR arrays with int32 and int64
  indices; the caller's matrix unchanged after an error;
* the per-layer gradient (src/_layers.pxi): bitwise ``flat_gradient`` on
  any thread count, two K-slabs, F-order and negative-stride X, and not
  affected by the caller reusing its X buffer between ``form()`` calls;
* the narrow-net epoch (src/_tiny.pxi): bitwise the general path (as bits,
  signs of zero included) with shuffling, zero-weight batches, momentum and
  nesterov, and an epoch run in pieces (first_step / max_steps) equal to
  the epoch in one go on both paths;
* the thread team (src/_steps.pxi, src/fbp_team.h): the same bits for any
  thread count and tile mode with the timing-driven modes (probe, back-off)
  live, and FTZ/DAZ left as the caller had them after a fit, also one
  that diverges.
"""
import numpy as np
import pytest

import fastbp
from fastbp import _kernels as K
from fastbp import optim


@pytest.fixture
def sps():
    """scipy.sparse (the sparse tests skip without it; the others do not need it)."""
    return pytest.importorskip("scipy.sparse")


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bits(a, b, what=""):
    np.testing.assert_array_equal(bits(a), bits(b), err_msg=what)


@pytest.fixture(autouse=True)
def _restore():
    before = fastbp.get_num_threads()
    threshold = K.set_parallel_threshold(0)
    tiles = K.set_tile_mode(0)
    yield
    fastbp.set_num_threads(before)
    K.set_parallel_threshold(threshold)
    K.set_tile_mode(tiles)
    K.set_tiny_path(True)
    K.set_tiny_packed(True)


def sparse_X(sps, n, n_in, density, seed, dtype):
    rng = np.random.default_rng(seed)
    X = sps.random(n, n_in, density=density, random_state=rng, format="csr", dtype=np.float64)
    X.data = rng.standard_normal(X.nnz)
    return X.astype(dtype)


# ---------------------------------------------------------------------------
# Sparse first layer

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam", "adamw-clip"])
def test_sparse_same_bits_threads_tiles_slabs(sps, dtype, opt):
    n, n_in = 330, 520
    X = sparse_X(sps, n, n_in, 0.03, 1, dtype)
    Xd = X.toarray()
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, n)
    sw = rng.random(n)
    sw[::7] = 0
    kw = {"sgd": dict(lr=0.05), "momentum": dict(lr=0.05, momentum=0.9),
          "adam": dict(optimizer=optim.Adam(lr=1e-3)),
          "adamw-clip": dict(optimizer=optim.AdamW(lr=1e-3), clip_grad_norm=0.3)}[opt]
    ref = None
    for n_threads, tiles, batch in ((1, 0, 300), (2, 1, 300), (3, 2, 300), (3, 0, 7)):
        fastbp.set_num_threads(n_threads)
        K.set_tile_mode(tiles)
        out = []
        for Xi in (X, Xd):
            net = fastbp.MLP([n_in, 13, 6, 5], activation="tanh", dtype=dtype, seed=3,
                             dropout=0.2)
            net.fit(Xi, y, epochs=1, batch_size=batch, seed=2, sample_weight=sw,
                    flush_denormals=False, **kw)
            out.append((net.flat_parameters.copy(), net.predict(Xi), net.flat_gradient(Xi, y)[1]))
        for a, b, what in zip(out[0], out[1], ("theta", "predict", "gradient")):
            assert_bits(a, b, f"sparse vs dense {what}, t{n_threads} tiles {tiles} b{batch}")
        if batch == 300:
            if ref is None:
                ref = out[0]
            for a, b in zip(out[0], ref):
                assert_bits(a, b, f"t{n_threads} vs t1")


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_sparse_read_only_arrays(sps, index_dtype):
    X = sps.random(30, 10, density=0.3, random_state=1, format="csr")
    X.indices = X.indices.astype(index_dtype)
    X.indptr = X.indptr.astype(index_dtype)
    for a in (X.data, X.indices, X.indptr):
        a.flags.writeable = False
    y = np.arange(30) % 3
    a, b = fastbp.MLP([10, 4, 3], seed=0), fastbp.MLP([10, 4, 3], seed=0)
    a.fit(X, y, epochs=2, batch_size=4, lr=0.1, seed=1, flush_denormals=False)  # bitwise: FTZ off
    b.fit(X.toarray(), y, epochs=2, batch_size=4, lr=0.1, seed=1, flush_denormals=False)
    assert_bits(a.flat_parameters, b.flat_parameters)
    assert_bits(a.predict(X), b.predict(X.toarray()))


def test_sparse_error_leaves_the_callers_matrix_alone(sps):
    # unsorted columns (canonicalised on a copy) and a NaN: the error names the row
    X = sps.csr_matrix((np.array([1.0, 2.0, np.nan, 3.0]), np.array([1, 0, 2, 0]),
                        np.array([0, 2, 3, 4])), shape=(3, 3))
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    net = fastbp.MLP([3, 2, 2], seed=0)
    theta = net.flat_parameters.copy()
    with pytest.raises(ValueError, match="row 1"):
        net.fit(X, np.array([0, 1, 0]), epochs=1, lr=0.1)
    for a, b in zip((X.data, X.indices, X.indptr), before):
        np.testing.assert_array_equal(a, b)
    assert_bits(net.flat_parameters, theta)


# ---------------------------------------------------------------------------
# Gradients one layer at a time

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes,m", [([300, 37, 11, 4], 130), ([300, 37, 11, 4], 17),
                                     ([5, 3, 2], 40), ([64, 300, 4], 9)])
def test_layer_gradients_bitwise_any_threads(dtype, sizes, m):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], m)
    net = fastbp.MLP(sizes, activation="relu", dtype=dtype, seed=1)
    ref = None
    for n_threads in (1, 2, 3):
        fastbp.set_num_threads(n_threads)
        g = net.flat_gradient(X, y)[1]
        lg = net.layer_gradients(X, y)
        assert [k for k, _ in lg] == list(range(len(sizes) - 2, -1, -1))
        ref = g if ref is None else ref
        assert_bits(g, ref, f"flat_gradient t{n_threads}")
        assert_bits(lg.gradient, ref, f"layer_gradients t{n_threads}")


def test_layer_gradients_layouts_and_reused_buffer():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 300))
    y = rng.integers(0, 3, 50)
    net = fastbp.MLP([300, 8, 3], seed=0)
    expected = net.flat_gradient(X, y)[1]
    for Xi in (np.asfortranarray(X), np.ascontiguousarray(X[::-1])[::-1]):
        lg = net.layer_gradients(Xi, y)
        list(lg)
        assert_bits(lg.gradient, expected)
    buf = X.copy()
    lg = net.layer_gradients(buf, y)
    lg.form()
    buf[:] = rng.standard_normal(buf.shape)   # the caller refills its batch buffer
    list(lg)
    assert_bits(lg.gradient, expected)


# ---------------------------------------------------------------------------
# The narrow-net epoch

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, nesterov=True),
                                dict(lr=0.05, weight_decay=0.01)])
@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_bits_with_shuffle_and_zero_weight_batches(dtype, kw, batch):
    fastbp.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((37, 3)).astype(dtype)
    y = rng.integers(0, 2, 37)
    sw = rng.random(37)
    sw[:6] = 0
    assert K.tiny_path_applies([3, 9, 5, 2], batch, 37)
    out = []
    for tiny, packed in ((True, True), (True, False), (False, True)):
        K.set_tiny_path(tiny)
        K.set_tiny_packed(packed)
        net = fastbp.MLP([3, 9, 5, 2], activation="tanh", dtype=dtype, seed=1)
        net.fit(X, y, epochs=3, batch_size=batch, seed=4,
                sample_weight=sw if batch > 1 else None, **kw)
        out.append(net.flat_parameters.copy())
    assert_bits(out[0], out[2], "packed vs general")
    assert_bits(out[1], out[2], "narrow vs general")


@pytest.mark.parametrize("batch", [1, 4])
def test_tiny_epoch_in_pieces(batch):
    net = fastbp.MLP([2, 3, 1], activation="tanh", output="identity", loss="squared_error",
                     seed=0, dtype="float64")
    k = net._net
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 2))
    Y = X[:, :1] * 0.5
    ws = np.empty(int(k.workspace_size(batch)), np.float64)
    none = np.empty(0)
    results = {}
    for tiny in (True, False):
        K.set_tiny_path(tiny)
        whole = net.flat_parameters.copy()
        r = k.fit_epoch(whole, X, Y, None, batch, ws, none, none, 1, 0.1)
        pieces = net.flat_parameters.copy()
        done = 0
        for first, steps in ((0, 1), (1, 2), (3, -1)):
            done += k.fit_epoch(pieces, X, Y, None, batch, ws, none, none, 1, 0.1,
                                first_step=first, max_steps=steps)[3]
        assert done == r[3] == 10
        assert_bits(pieces, whole)
        results[tiny] = whole
    assert_bits(results[True], results[False])


# ---------------------------------------------------------------------------
# The thread team; FTZ/DAZ

def test_team_modes_same_bits():
    K.set_parallel_threshold(65536)   # the shipped threshold: probe / back-off live
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 120)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    for sizes, batch in (([120, 200, 64, 10], 64), ([120, 300, 10], 8)):
        ref = None
        for n_threads, mode in ((1, 0), (4, 0), (3, 1), (2, 2)):
            fastbp.set_num_threads(n_threads)
            K.set_tile_mode(mode)
            net = fastbp.MLP(sizes, dtype="float32", seed=1, dropout=0.1)
            net.fit(X, y, epochs=2, batch_size=batch, seed=2, optimizer=optim.Adam(lr=1e-3))
            ref = net.flat_parameters.copy() if ref is None else ref
            assert_bits(net.flat_parameters, ref, f"{sizes} t{n_threads} mode {mode}")


@pytest.mark.parametrize("caller_ftz", [False, True])
def test_fit_leaves_the_callers_ftz_mode(caller_ftz):
    fastbp.set_num_threads(2)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 20))
    y = rng.integers(0, 3, 64)
    before = K._set_flush_denormals(caller_ftz)
    try:
        if K.flush_denormals_enabled() != caller_ftz:
            pytest.skip("no FTZ/DAZ control on this CPU")
        for flush in (True, False):
            fastbp.MLP([20, 8, 3], seed=0).fit(X, y, epochs=1, batch_size=16, lr=0.1,
                                              flush_denormals=flush)
            assert K.flush_denormals_enabled() == caller_ftz
        with pytest.raises(FloatingPointError):
            fastbp.MLP([20, 8, 3], seed=0).fit(X * 1e30, y, epochs=1, batch_size=16, lr=1e30)
        assert K.flush_denormals_enabled() == caller_ftz
        for tiny in (True, False):   # the narrow path runs in the caller's thread
            K.set_tiny_path(tiny)
            fastbp.set_num_threads(1)
            fastbp.MLP([2, 2, 1], seed=0, output="identity", loss="squared_error").fit(
                X[:, :2], X[:, :1], epochs=1, batch_size=1, lr=0.1)
            assert K.flush_denormals_enabled() == caller_ftz
    finally:
        K._set_flush_denormals(before)
