"""Sparse X (scipy.sparse): the CSR first layer (src/_sparse.pxi) against the dense path.

The claim tested is bitwise: a fit, prediction, loss or gradient on a CSR
matrix equals the same call on its dense copy, values and the sign of every
zero (``assert_same``; the fits with ``flush_denormals=False``: with FTZ/DAZ
on, a zero may differ in sign, see test_zero_sign_under_ftz), for
every hidden activation and output/loss pair, both dtypes, bias on and off,
1 and 2 threads on the row split and the unit split (the 2-thread calls
asserted to run a parallel region), every GEMM code path of the CPU, first
layers of one and of several K-slabs (n_in > 256) and batches of more than
one slab (> 256 rows).  The sparse sums take the dense GEMM's terms in its
order and slabs, leaving out the zero ones, which change nothing (see
src/_sparse.pxi).  Against the pure-Python reference (which densifies sparse
input) the usual tolerances (tests/tolerances.py TOL) hold.  Then the input
handling (formats, index dtypes, unsorted and duplicate indices, empty rows,
bad values, the caller's matrix left as it was) and the scikit-learn
estimators on sparse input against scikit-learn's own and against dense
input (as values: the estimators always fit with FTZ/DAZ on).
"""
import itertools
import subprocess
import sys

import numpy as np
import pytest

sps = pytest.importorskip("scipy.sparse")

import fastbp  # noqa: E402
from fastbp import _kernels, optim, reference  # noqa: E402
from fastbp._sparse import CSR, check_sparse_X  # noqa: E402

from tolerances import ACTIVATIONS, PAIRS, TOL, assert_close  # noqa: E402

DTYPES = ["float32", "float64"]


@pytest.fixture
def threads():
    """Set the thread count; with 2 threads every call takes the parallel path."""
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    yield fastbp.set_num_threads
    fastbp.set_num_threads(before)
    _kernels.set_parallel_threshold(threshold)


@pytest.fixture
def isa():
    before = _kernels.gemm_isa()
    yield _kernels.set_gemm_isa
    _kernels.set_gemm_isa(before)


def sparse_data(n, n_in, density, seed, dtype="float64", empty=()):
    """A CSR matrix (random pattern and values, the rows `empty` without entries)."""
    rng = np.random.default_rng(seed)
    X = sps.random(n, n_in, density=density, random_state=rng, format="csr", dtype=np.float64)
    X.data = rng.standard_normal(X.nnz)
    if len(empty):
        keep = np.ones(n)
        keep[list(empty)] = 0
        X = sps.csr_matrix(sps.diags(keep) @ X)
        X.eliminate_zeros()
    return X.astype(dtype)


def targets(loss, n, n_out, seed):
    rng = np.random.default_rng(seed)
    if loss == "cross_entropy":
        return rng.integers(0, n_out, n)
    if loss == "binary_cross_entropy":
        return (rng.random((n, n_out)) < 0.5).astype(float)
    if loss == "poisson":
        return rng.poisson(1.0, (n, n_out)).astype(float)
    return rng.standard_normal((n, n_out))


def ran_in_parallel(call):
    before = _kernels.parallel_regions()
    result = call()
    return result, _kernels.parallel_regions() > before


def assert_same(a, b, what=""):
    """Bitwise equal (NaN aside): the same values and the same sign of every zero."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(a, b, err_msg=what)
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b),
                                      err_msg=f"{what}: the sign of a zero")


def assert_same_values(a, b, what=""):
    """Equal values (-0 == +0): for fits run with FTZ/DAZ on."""
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


NOFTZ = {"flush_denormals": False}  # the fits compared bitwise run with FTZ/DAZ off


def all_results(make, X, Y, batch, parallel, optimizer=None, epochs=2):
    """predict, loss, gradients and a 2-epoch fit of a fresh model on X (and
    whether each ran a parallel region)."""
    net = make()
    out, par = {}, []
    for name, call in (("predict", lambda: net.predict(X)), ("loss", lambda: net.loss(X, Y)),
                       ("gradients", lambda: net.gradients(X, Y))):
        out[name], p = ran_in_parallel(call)
        par.append(p)
    kw = {"optimizer": optimizer} if optimizer is not None else {"lr": 0.05}
    _, p = ran_in_parallel(lambda: net.fit(X, Y, epochs=epochs, batch_size=batch, seed=1,
                                           **kw, **NOFTZ))
    par.append(p)
    out["theta"] = net.flat_parameters.copy()
    if parallel:
        assert all(par), f"the 2-thread calls ran serially: {par}"
    return out


def assert_results_equal(r1, r2, what):
    assert_same(r1["predict"], r2["predict"], f"{what}: predict")
    assert r1["loss"] == r2["loss"], f"{what}: loss"
    assert r1["gradients"][0] == r2["gradients"][0], f"{what}: gradients' loss"
    for k, ((a, b), (c, d)) in enumerate(zip(r1["gradients"][1], r2["gradients"][1])):
        assert_same(a, c, f"{what}: dW_{k}")
        if b is not None:
            assert_same(b, d, f"{what}: db_{k}")
    assert_same(r1["theta"], r2["theta"], f"{what}: fitted parameters")


# ---------------------------------------------------------------------------
# The matrix: every activation x output/loss pair x dtype x bias x threads x split

SPLITS = {"rows": 40, "units": 5}   # batch 40: row split on 2 threads; 5: unit split
CASES = list(itertools.product(ACTIVATIONS, PAIRS, DTYPES, [True, False], [1, 2], SPLITS))


@pytest.mark.parametrize(
    "activation,pair_,dtype,bias,n_threads,split", CASES,
    ids=[f"{a}-{o}-{l}-{d}-{'b' if b else 'nob'}-t{t}-{s}" for a, (o, l), d, b, t, s in CASES])
def test_sparse_equals_dense_and_reference(activation, pair_, dtype, bias, n_threads, split,
                                           threads):
    output, loss = pair_
    threads(n_threads)
    sizes = [23, 6, 3]
    X = sparse_data(45, 23, 0.25, seed=2, dtype=dtype, empty=(0, 7, 8))
    Y = targets(loss, 45, 3, seed=3)

    def make():
        return fastbp.MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
                          dtype=dtype, seed=4)

    batch = SPLITS[split]
    r_sparse = all_results(make, X, Y, batch, n_threads > 1)
    r_dense = all_results(make, X.toarray(), Y, batch, n_threads > 1)
    assert_results_equal(r_sparse, r_dense, "sparse vs dense")
    # the reference on the same sparse matrix (it densifies)
    ref = reference.MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
                        dtype=dtype, seed=4)
    assert_close(r_sparse["predict"], ref.predict(X), dtype, "predict vs reference")
    assert_close(r_sparse["loss"], ref.loss(X, Y), dtype, "loss vs reference")
    _, ref_grads = ref.gradients(X, Y)
    for k, ((a, b), (c, d)) in enumerate(zip(r_sparse["gradients"][1], ref_grads)):
        assert_close(a, c, dtype, f"dW_{k} vs reference")
        if b is not None:
            assert_close(b, d, dtype, f"db_{k} vs reference")


# ---------------------------------------------------------------------------
# Large first layers (several K-slabs), long batches, every code path and optimizer

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam", "adamw-clip"])
def test_large_first_layer_every_isa(dtype, n_threads, opt, threads, isa):
    """n_in = 700 (3 slabs of the forward's sums), batches of 300 rows (2 slabs
    of the weight gradient's): plain SGD (the fused step on W_0), SGD with
    momentum (the gradient path), Adam (fused per unit tile) and AdamW with
    clipping (the whole gradient first)."""
    threads(n_threads)
    optimizer = {"sgd": None, "momentum": optim.SGD(lr=0.05, momentum=0.9),
                 "adam": optim.Adam(lr=1e-3),
                 "adamw-clip": optim.AdamW(lr=1e-3)}[opt]
    X = sparse_data(610, 700, 0.02, seed=5, dtype=dtype, empty=range(300, 310))
    Y = targets("cross_entropy", 610, 4, seed=6)

    def make():
        return fastbp.MLP([700, 9, 4], activation="tanh", dtype=dtype, seed=7)

    for name in _kernels.gemm_isas():
        isa(name)
        net_s, net_d = make(), make()
        kw = {"optimizer": optimizer} if optimizer is not None else {"lr": 0.05}
        if opt == "adamw-clip":
            kw["clip_grad_norm"] = 0.5
        net_s.fit(X, Y, epochs=2, batch_size=300, seed=1, **kw, **NOFTZ)
        net_d.fit(X.toarray(), Y, epochs=2, batch_size=300, seed=1, **kw, **NOFTZ)
        assert_same(net_s.flat_parameters, net_d.flat_parameters, f"{name}: fit")
        (ls, gs), (ld, gd) = net_s.gradients(X, Y), net_d.gradients(X.toarray(), Y)
        assert ls == ld
        for (a, b), (c, d) in zip(gs, gd):
            assert_same(a, c, name)
            assert_same(b, d, name)
        assert_same(net_s.predict(X), net_d.predict(X.toarray()), name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_give_the_same_bits(dtype, threads):
    """1 and 2 threads, row split and unit split, with dropout on the hidden layer."""
    X = sparse_data(200, 300, 0.05, seed=8, dtype=dtype)
    Y = targets("cross_entropy", 200, 5, seed=9)
    results = []
    for n_threads, batch in ((1, 64), (2, 64), (1, 6), (2, 6)):
        threads(n_threads)
        net = fastbp.MLP([300, 40, 5], activation="relu", dtype=dtype, seed=1, dropout=0.3)
        _, par = ran_in_parallel(lambda: net.fit(X, Y, epochs=2, batch_size=batch, seed=2,
                                                 optimizer=optim.Adam(lr=1e-3), **NOFTZ))
        assert par or n_threads == 1
        results.append(net.flat_parameters.copy())
        dense = fastbp.MLP([300, 40, 5], activation="relu", dtype=dtype, seed=1, dropout=0.3)
        dense.fit(X.toarray(), Y, epochs=2, batch_size=batch, seed=2,
                  optimizer=optim.Adam(lr=1e-3), **NOFTZ)
        assert_same(results[-1], dense.flat_parameters, f"dropout, t{n_threads}, batch {batch}")
    assert_same(results[0], results[1])
    assert_same(results[2], results[3])


@pytest.mark.filterwarnings("ignore::UserWarning")  # ConvergenceWarning: 3 iterations on purpose
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", ["sklearn-l2", "sklearn-no-l2", "amsgrad", "adamw"])
def test_fused_adam_pass_over_w0(dtype, opt, threads):
    """Adam on the sparse first layer forms up to 4 units' gradient rows in
    scratch rows, then runs the l2 term, the update and the zeroing of those
    rows in one pass over W_0 (fbp_adam_l2z_rows: chunks of 256 columns, the
    sums of W row^2 for the penalty interleaved over the 4 rows): the same
    bits as the dense path (l2 row, then Adam, per unit), on 1 and 2 threads,
    with 11 units (groups of 4, 4, 3), n_in = 600 (chunks of 256, 256, 88),
    batches of 300 rows (2 K-slabs) and the last, short batch; the penalty
    in the losses included."""
    X = sparse_data(380, 600, 0.02, seed=11, dtype=dtype, empty=(3, 200))
    y = np.random.default_rng(12).integers(0, 4, 380)
    results = []
    for n_threads in (1, 2):
        threads(n_threads)
        if opt.startswith("sklearn"):
            sk = pytest.importorskip("fastbp.sklearn")
            alpha = 0.0 if opt == "sklearn-no-l2" else 0.05
            fits = [sk.MLPClassifier(hidden_layer_sizes=(11,), alpha=alpha, batch_size=300,
                                     max_iter=3, learning_rate_init=1e-2, random_state=0,
                                     n_threads=n_threads).fit(XX, y)
                    for XX in (X, X.toarray())]
            for est in fits:
                assert est.n_iter_ == 3
            out = [np.concatenate([est.model_.flat_parameters, est.loss_curve_])
                   for est in fits]
            assert_same_values(out[0], out[1], f"{opt}: sparse vs dense, t{n_threads}")
            results.append(out[0])
            continue
        else:
            optimizer = (optim.Adam(lr=1e-2, amsgrad=True, weight_decay=1e-2)
                         if opt == "amsgrad" else optim.AdamW(lr=1e-2, weight_decay=0.1))
            out = []
            for XX in (X, X.toarray()):
                net = fastbp.MLP([600, 11, 4], activation="relu", dtype=dtype, seed=3)
                net.fit(XX, np.eye(4)[y], epochs=3, batch_size=300, seed=1,
                        optimizer=optimizer, **NOFTZ)
                out.append(net.flat_parameters.copy())
        assert_same(out[0], out[1], f"{opt}: sparse vs dense, t{n_threads}")
        results.append(out[0])
    assert_same(results[0], results[1], f"{opt}: 1 vs 2 threads")  # the same code: bitwise


def test_lbfgs_and_sample_weights_on_sparse():
    X = sparse_data(80, 50, 0.1, seed=10)
    Y = targets("cross_entropy", 80, 3, seed=11)
    sw = np.random.default_rng(0).random(80)
    fits = []
    for XX in (X, X.toarray()):
        net = fastbp.MLP([50, 8, 3], dtype="float64", seed=0)
        net.fit(XX, Y, optimizer=optim.LBFGS(max_iter=20), sample_weight=sw,
                validation_split=0.25, **NOFTZ)
        net.fit(XX, Y, epochs=2, batch_size=16, seed=0, sample_weight=sw,
                optimizer=optim.Adam(lr=1e-3), validation_data=(XX[:10], Y[:10]), **NOFTZ)
        fits.append(net.flat_parameters.copy())
    assert_same(fits[0], fits[1])


def test_zero_sign_under_ftz():
    """The documented exception (docs/sklearn.md, src/_sparse.pxi): with FTZ/DAZ
    on (fit's default) a zero may differ in sign from the dense fit's, nothing
    else.  Here the sparse product 1e-20 * delta flushes to a signed zero that
    the dense sum's skipped zero term would have turned into +0; without FTZ
    the two fits are bitwise equal."""
    X = np.array([[1e-20, 0], [0, 1]], np.float32)
    Y = np.array([[2.5e-20], [0]], np.float32)

    def fitted(XX, flush):
        net = fastbp.MLP([2, 1, 1], activation="identity", output="identity",
                         loss="squared_error", bias=False, dtype="float32",
                         weights=[np.array([[-0.0, 0.5]]), np.array([[1.0]])])
        net.fit(XX, Y, epochs=1, batch_size=2, lr=0.1, shuffle=False, flush_denormals=flush)
        return net.flat_parameters.copy()

    sparse, dense = fitted(sps.csr_matrix(X), True), fitted(X, True)
    assert_same_values(sparse, dense)
    differ = np.signbit(sparse) != np.signbit(dense)
    from fastbp import _kernels
    if _kernels.gemm_isa() != "generic":
        # On the FMA ISAs this case shows the difference (the generic GEMM's
        # dense sum keeps the same sign here): the docs' note is still needed.
        assert differ.any(), "no sign difference left: update the docs' FTZ note"
    assert (sparse[differ] == 0).all() and (dense[differ] == 0).all()
    assert_same(fitted(sps.csr_matrix(X), False), fitted(X, False))


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_non_finite_w0_weight_is_rewound(opt):
    """A step that makes a weight of W_0 Inf (or NaN, with Adam): the next
    batch lacks that feature, so its sparse loss is finite (the dense one is
    NaN: 0 * Inf) and the kernel applies it; the weight check after the
    epoch rewinds to the weights the bad step started from, those of the
    dense fit, and the optimizer state with them."""
    X = np.array([[0, 1], [1e37, 0], [0, 1]], np.float32)
    Y = np.array([[0], [-1000], [0]], np.float32)
    kw = {"sgd": dict(lr=0.1), "momentum": dict(optimizer=optim.SGD(lr=0.1, momentum=0.9)),
          "adam": dict(optimizer=optim.Adam(lr=0.1))}[opt]

    def make():
        return fastbp.MLP([2, 1, 1], activation="identity", output="identity",
                          loss="squared_error", bias=False, dtype="float32",
                          weights=[np.array([[1e-37, 0.5]]), np.array([[1.0]])])

    nets, errors = [], []
    for XX in (sps.csr_matrix(X), X):
        net = make()
        with pytest.raises(FloatingPointError) as err:
            net.fit(XX, Y, epochs=1, batch_size=1, shuffle=False, **kw, **NOFTZ)
        nets.append(net)
        errors.append(str(err.value))
    assert "batch 2, whose update made weights NaN or Inf" in errors[0]
    assert "batch 3, whose loss was NaN or Inf" in errors[1]
    good = make()  # the one good step (batch 1)
    good.fit(X[:1], Y[:1], epochs=1, batch_size=1, shuffle=False, **kw, **NOFTZ)
    assert np.isfinite(good.flat_parameters).all()
    assert not (good.flat_parameters == make().flat_parameters).all()
    for net in nets:
        assert_same(net.flat_parameters, good.flat_parameters)
        state, want = net.optimizer_state(), good.optimizer_state()
        assert state.keys() == want.keys()
        for key in want:
            if key != "optimizer":
                assert_same(state[key], want[key], key)


# ---------------------------------------------------------------------------
# Input handling

def test_empty_rows_and_an_all_empty_batch():
    """Rows without entries, and a batch (unshuffled) of nothing but such rows."""
    X = sparse_data(40, 30, 0.2, seed=12, empty=range(8, 16))
    assert all(X[8:16].getnnz(axis=1) == 0)
    Y = targets("squared_error", 40, 2, seed=13)
    nets = [fastbp.MLP([30, 5, 2], output="identity", loss="squared_error", dtype="float64",
                       seed=0) for _ in range(2)]
    for net, XX in zip(nets, (X, X.toarray())):
        net.fit(XX, Y, epochs=2, batch_size=8, shuffle=False, optimizer=optim.Adam(lr=1e-2),
                **NOFTZ)
    assert_same(nets[0].flat_parameters, nets[1].flat_parameters)
    empty = sps.csr_matrix((4, 30))
    assert_same(nets[0].predict(empty), nets[0].predict(np.zeros((4, 30))))
    # a data set without stored values: the kernels' data pointer is a
    # placeholder kept alive for the call (never read)
    fits = [fastbp.MLP([30, 5, 2], output="identity", loss="squared_error", dtype="float64",
                       seed=0) for _ in range(2)]
    for net, XX in zip(fits, (empty, np.zeros((4, 30)))):
        net.fit(XX, Y[:4], epochs=2, batch_size=3, seed=0, optimizer=optim.Adam(lr=1e-2),
                **NOFTZ)
    assert_same(fits[0].flat_parameters, fits[1].flat_parameters)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_index_dtypes(index_dtype):
    X = sparse_data(30, 20, 0.3, seed=14)
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    assert X.indices.dtype == index_dtype  # (scipy's constructor would pick int32)
    net = fastbp.MLP([20, 4, 3], dtype="float64", seed=0)
    assert_same(net.predict(X), net.predict(X.toarray()))
    checked = check_sparse_X(X, 20, np.float64)
    assert checked.indices.dtype == np.int64
    assert checked.data is X.data  # the values are not copied


def test_unsorted_and_duplicate_indices_are_canonicalised_on_a_copy():
    # values that sum exactly, so the dense copy's sums do not depend on order
    data = np.array([0.5, 1.0, 0.25, 2.0, -1.5, 0.75, 1.25])
    indices = np.array([5, 1, 5, 3, 0, 2, 0], dtype=np.int32)
    indptr = np.array([0, 4, 4, 7], dtype=np.int32)
    X = sps.csr_matrix((data, indices, indptr), shape=(3, 6))
    saved = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    assert not X.has_canonical_format
    dense = X.toarray()
    assert dense[0, 5] == 0.75 and dense[2, 0] == -0.25
    net = fastbp.MLP([6, 4, 2], dtype="float64", seed=0)
    Y = np.array([0, 1, 1])
    assert_same(net.predict(X), net.predict(dense))
    (l1, g1), (l2, g2) = net.gradients(X, Y), net.gradients(dense, Y)
    assert l1 == l2
    assert_same(g1[0][0], g2[0][0])
    c = check_sparse_X(X, 6, np.float64)
    for i in range(3):
        cols = c.indices[c.lo[i]:c.hi[i]]
        assert (np.diff(cols) > 0).all()
    # the caller's matrix is as it was
    for a, b in zip(saved, (X.data, X.indices, X.indptr)):
        assert_same(a, b)


@pytest.mark.parametrize("fmt", ["csc", "coo", "lil", "csr_array", "csc_array"])
def test_other_formats(fmt):
    X = sparse_data(25, 12, 0.3, seed=15)
    other = {"csr_array": lambda: sps.csr_array(X), "csc_array": lambda: sps.csc_array(X)}.get(
        fmt, lambda: X.asformat(fmt))()
    net = fastbp.MLP([12, 5, 3], dtype="float64", seed=0)
    Y = targets("cross_entropy", 25, 3, seed=16)
    assert_same(net.predict(other), net.predict(X))
    assert net.loss(other, Y) == net.loss(X, Y)
    n1 = fastbp.MLP([12, 5, 3], dtype="float64", seed=0)
    n2 = fastbp.MLP([12, 5, 3], dtype="float64", seed=0)
    n1.fit(other, Y, epochs=1, batch_size=7, seed=0)
    n2.fit(X, Y, epochs=1, batch_size=7, seed=0)
    assert_same(n1.flat_parameters, n2.flat_parameters)


def test_dtype_conversion_and_caller_unchanged():
    X = sparse_data(20, 10, 0.4, seed=17, dtype="float64")
    saved = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    net = fastbp.MLP([10, 4, 2], dtype="float32", seed=0)
    Y = targets("cross_entropy", 20, 2, seed=18)
    net.fit(X, Y, epochs=1, batch_size=5)
    assert_same(net.predict(X), net.predict(X.toarray()))
    for a, b in zip(saved, (X.data, X.indices, X.indptr)):
        assert_same(a, b)
    assert X.dtype == np.float64


def test_bad_input_is_a_clear_error():
    net = fastbp.MLP([10, 4, 2], dtype="float64", seed=0)
    before = net.flat_parameters.copy()
    X = sparse_data(6, 10, 0.5, seed=19)
    Y = np.array([0, 1, 0, 1, 0, 1])
    bad = X.copy()
    bad.data[bad.indptr[3]] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(first in row 3\)"):
        net.fit(bad, Y)
    bad.data[bad.indptr[3]] = np.inf
    with pytest.raises(ValueError, match="row 3"):
        net.predict(bad)
    with pytest.raises(ValueError, match="11 features per sample, the network expects 10"):
        net.predict(sps.csr_matrix((3, 11)))
    with pytest.raises(ValueError, match="empty"):
        net.predict(sps.csr_matrix((0, 10)))
    with pytest.raises(TypeError, match="real numbers"):
        net.predict(X.astype(np.complex128))
    broken = sps.csr_matrix((X.data.copy(), X.indices.copy(), X.indptr.copy()), shape=X.shape)
    broken.indices[0] = 10  # a column out of range (scipy does not check on assignment)
    with pytest.raises(ValueError, match="column indices outside"):
        net.predict(broken)
    big = sps.csr_matrix(np.array([[1e300, 0, 0, 0, 0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="overflows float32"):
        fastbp.MLP([10, 4, 2], dtype="float32").predict(big)
    assert_same(net.flat_parameters, before)


def test_bad_row_named_when_indptr_does_not_start_at_0():
    """Row pointers that start past 0 (scipy's constructor refuses them, attribute
    assignment does not): the bad row named is counted from indptr[0]."""
    X = sps.csr_matrix((3, 2))
    X.indptr, X.indices = np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1])
    X.data = np.array([9.0, 1.0, np.nan, 2.0])  # entry 0 is outside the rows; the NaN is row 1's
    net = fastbp.MLP([2, 2, 2], seed=0)
    with pytest.raises(ValueError, match=r"NaN or Inf \(first in row 1\)"):
        net.predict(X)
    X.data = np.array([np.nan, 1.0, 2.0, 1e300])  # not a stored value; row 2 overflows float32
    with pytest.raises(ValueError, match="X row 2 overflows float32"):
        fastbp.MLP([2, 2, 2], dtype="float32", seed=0).predict(X)
    X.data = np.array([np.nan, 1.0, 2.0, 3.0])   # the values outside the rows are not looked at
    assert_same(net.predict(X), net.predict(np.array([[1.0, 0], [0, 2], [0, 3]])))


def test_csr_view():
    X = sparse_data(10, 8, 0.4, seed=20)
    c = check_sparse_X(X, 8, np.float64)
    assert isinstance(c, CSR) and c.shape == (10, 8) and c.nnz == X.nnz
    assert_same(c.toarray(), X.toarray())
    assert_same(c[2:5].toarray(), X[2:5].toarray())
    assert_same(c.take([7, 1, 1]).toarray(), X[[7, 1, 1]].toarray())
    assert_same(c[[3, 0]].copy().toarray(), X[[3, 0]].toarray())
    with pytest.raises(TypeError):
        c[1, 2]


def test_dense_users_never_import_scipy():
    code = ("import sys, numpy as np, fastbp\n"
            "net = fastbp.MLP([3, 4, 2]); net.fit(np.ones((8, 3)), np.zeros(8, int), epochs=1)\n"
            "net.predict(np.ones((2, 3)))\n"
            "print('scipy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_model_file_and_onnx_unaffected(tmp_path):
    X = sparse_data(30, 12, 0.3, seed=21)
    Y = targets("cross_entropy", 30, 3, seed=22)
    net = fastbp.MLP([12, 5, 3], dtype="float64", seed=0)
    net.fit(X, Y, epochs=2, batch_size=8)
    net.save(tmp_path / "m.npz")
    again = fastbp.load(tmp_path / "m.npz")
    assert_same(again.predict(X), net.predict(X))


# ---------------------------------------------------------------------------
# scikit-learn estimators

def _sklearn():
    """scikit-learn's neural_network and fastbp's estimators (the test skips without it)."""
    pytest.importorskip("sklearn")
    from sklearn import neural_network

    from fastbp.sklearn import MLPClassifier, MLPRegressor
    return neural_network, MLPClassifier, MLPRegressor


def _rel(a, b):
    return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-300)) for x, y in zip(a, b))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_classifier_on_sparse_matches_sklearn(solver, fmt):
    neural_network, MLPClassifier, MLPRegressor = _sklearn()
    X = sparse_data(240, 60, 0.08, seed=23).asformat(fmt)
    y = np.random.default_rng(1).integers(0, 3, 240)
    kw = dict(hidden_layer_sizes=(12,), solver=solver, max_iter=8, random_state=0,
              learning_rate_init=0.01)
    ours = MLPClassifier(**kw).fit(X, y)
    theirs = neural_network.MLPClassifier(**kw).fit(X, y)
    assert _rel(theirs.coefs_ + theirs.intercepts_, ours.coefs_ + ours.intercepts_) < 1e-7
    if solver != "lbfgs":
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-7)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-7,
                               atol=1e-12)
    assert_same(ours.predict(X), theirs.predict(X))
    assert ours.score(X, y) == theirs.score(X, y)
    dense = MLPClassifier(**kw).fit(X.toarray(), y)
    for a, b in zip(dense.coefs_ + dense.intercepts_, ours.coefs_ + ours.intercepts_):
        assert_same_values(a, b)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_classifier_partial_fit_early_stopping_and_weights_on_sparse():
    neural_network, MLPClassifier, MLPRegressor = _sklearn()
    X = sparse_data(300, 40, 0.1, seed=24)
    y = np.random.default_rng(2).integers(0, 2, 300)
    sw = np.random.default_rng(3).random(300)
    kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=6)
    for est_kw, fit_kw in ((dict(early_stopping=True), {}), ({}, dict(sample_weight=sw))):
        ours = MLPClassifier(**kw, **est_kw).fit(X, y, **fit_kw)
        theirs = neural_network.MLPClassifier(**kw, **est_kw).fit(X, y, **fit_kw)
        assert _rel(theirs.coefs_, ours.coefs_) < 1e-7
    a = MLPClassifier(**kw).partial_fit(X, y, classes=[0, 1]).partial_fit(X[:50], y[:50])
    b = neural_network.MLPClassifier(**kw).partial_fit(X, y, classes=[0, 1])
    b.partial_fit(X[:50], y[:50])
    assert _rel(b.coefs_, a.coefs_) < 1e-7


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_regressor_on_sparse(dtype, loss):
    neural_network, MLPClassifier, MLPRegressor = _sklearn()
    X = sparse_data(150, 30, 0.1, seed=25, dtype=dtype)
    rng = np.random.default_rng(4)
    y = rng.standard_normal((150, 2)) if loss == "squared_error" else rng.poisson(2.0, 150)
    kw = dict(hidden_layer_sizes=(7,), random_state=0, max_iter=5, loss=loss)
    ours = MLPRegressor(**kw).fit(X, y)
    assert ours.coefs_[0].dtype == np.dtype(dtype)
    dense = MLPRegressor(**kw).fit(X.toarray(), y)
    assert_same_values(ours.predict(X), dense.predict(X.toarray()))
    assert ours.score(X, y) == dense.score(X.toarray(), y)
    if dtype == "float64":
        theirs = neural_network.MLPRegressor(**kw).fit(X, y)
        assert _rel(theirs.coefs_, ours.coefs_) < 1e-7
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-7, atol=1e-12)


def test_flat_gradient_and_layer_gradients_on_sparse():
    X = sparse_data(30, 12, 0.3, seed=26)
    Y = targets("cross_entropy", 30, 3, seed=27)
    net = fastbp.MLP([12, 5, 3], dtype="float64", seed=0)
    (l1, g1), (l2, g2) = net.flat_gradient(X, Y), net.flat_gradient(X.toarray(), Y)
    assert l1 == l2
    assert_same(g1, g2)
    with pytest.raises(TypeError, match="layer_gradients takes a dense X"):
        net.layer_gradients(X, Y)
