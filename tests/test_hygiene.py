"""The step planner on sparse X: layer 0 costs its non-zeros, not n_in * n_out.

With a scipy CSR X (src/_sparse.pxi) layer 0's forward and gradient walk only
the stored entries, so the planner (forward_macs / make_plan in
src/_steps.pxi, and the threshold of one thread per par_min_macs
multiply-adds) costs that layer as rows * (mean non-zeros per row of the data
set) * n_out.  Checked through the team_stats hook (as tests/test_threads.py
uses it): a small sparse problem (50,000 features, 0.2% non-zeros) runs its
steps serially, opening no parallel region, where the same rows dense open one
and go through the team; a larger sparse one still takes the team; and every
fit gives bitwise the weights of the 1-thread fit (the plan changes who
computes what, never the arithmetic).  A training step whose update passes
over all of W_0 (an optimizer, the SGD keywords, `gradients`: Spec.x_update)
adds those n_in * n_out weights to its cost.
"""

import numpy as np
import pytest

sps = pytest.importorskip("scipy.sparse")

import fastbp  # noqa: E402
from fastbp import _kernels  # noqa: E402
from _helpers import why_no_teams  # noqa: E402


NO_TEAMS = why_no_teams()
needs_teams = pytest.mark.skipif(NO_TEAMS is not None, reason=str(NO_TEAMS))

N_IN = 50_000
DENSITY = 0.002      # 100 non-zeros a row


@pytest.fixture
def restore_threads():
    before = fastbp._threads._n_threads
    threshold = _kernels.set_parallel_threshold(65536)   # the default, whatever a test left
    yield
    fastbp._threads._n_threads = before
    _kernels.set_parallel_threshold(threshold)


def _sparse(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = sps.random(n, N_IN, density=DENSITY, random_state=rng, format="csr",
                   dtype=np.float64)
    X.data = rng.standard_normal(X.nnz)
    Y = np.eye(2)[rng.integers(0, 2, n)]
    return X.astype(dtype), Y.astype(dtype)


def _fit(X, Y, hidden, batch_size, dtype, threads, epochs=1):
    """A fit on `threads` threads: its weights and biases and the team's counters."""
    fastbp.set_num_threads(threads)
    net = fastbp.MLP([N_IN, hidden, 2], activation="relu", dtype=dtype, seed=0)
    _kernels.team_stats(reset=True)
    net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=0.05, seed=1, flush_denormals=False)
    stats = _kernels.team_stats()
    return list(net.weights) + list(net.biases), stats


def _team_steps(st):
    """Steps that ran in a parallel region (through the team, or serially there)."""
    return st["steps_team"] + st["steps_backoff"] + st["steps_probe"] + st["steps_small"]


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_sparse_steps_run_serially(restore_threads, dtype):
    """8 hidden units, batch 32: a step's sparse cost is 32 * (100 * 8 + 8 * 2)
    = 26,112 multiply-adds, under one thread's 65,536, where the dense cost
    32 * (50,000 * 8 + 16) = 12.8 M takes two threads."""
    X, Y = _sparse(64, dtype)
    ref, st1 = _fit(X, Y, 8, 32, dtype, threads=1)
    assert st1["regions"] == 0
    got, st = _fit(X, Y, 8, 32, dtype, threads=2)
    assert st["regions"] == 0 and _team_steps(st) == 0 and st["tiles_worker"] == 0
    _assert_same(got, ref)
    # The same rows dense: their cost sends the fit to the team (one region,
    # both steps in it), with the same values (dense X: the same sums).
    dense, st_d = _fit(X.toarray(), Y, 8, 32, dtype, threads=2)
    if NO_TEAMS is None:
        assert st_d["regions"] == 1 and _team_steps(st_d) == 2
    for x, y in zip(dense, ref):
        np.testing.assert_array_equal(x, y)


@needs_teams
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_sparse_steps_use_the_team(restore_threads, dtype):
    """64 hidden units, batch 256: 256 * (100 * 64 + 64 * 2) = 1.67 M
    multiply-adds a step, worth two threads: one region per epoch, every
    step in it, the same bits as 1 thread."""
    X, Y = _sparse(512, dtype, seed=1)
    ref, _ = _fit(X, Y, 64, 256, dtype, threads=1, epochs=2)
    got, st = _fit(X, Y, 64, 256, dtype, threads=2, epochs=2)
    assert st["regions"] == 2 and _team_steps(st) == 4
    _assert_same(got, ref)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_sparse_predict_and_gradients_serial(restore_threads, dtype):
    """The other calls plan the same way: a sparse predict or loss call of
    64 rows (64 * (100 * 8 + 16) = 52,224 multiply-adds; dense, 25.6 M)
    opens no region; gradients also zeroes every row of W_0's gradient
    (50,000 * 8 entries, Spec.x_update) and takes the team; all give the
    1-thread bits."""
    X, Y = _sparse(64, dtype, seed=2)
    net = fastbp.MLP([N_IN, 8, 2], activation="tanh", dtype=dtype, seed=0)
    out = {}
    for threads in (1, 2):
        fastbp.set_num_threads(threads)
        _kernels.team_stats(reset=True)
        out[threads] = [net.predict(X), net.loss(X, Y)]
        assert _kernels.team_stats()["regions"] == 0
        loss, grads = net.gradients(X, Y)
        out[threads] += [loss] + [g for gw in grads for g in gw]
        if threads == 2 and NO_TEAMS is None:
            assert _kernels.team_stats()["regions"] == 1
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(a, b)


def test_empty_sparse_rows_cost_nothing_in_layer_0(restore_threads):
    """Rows without entries: layer 0 costs 0 (mean 0 non-zeros), the fit runs
    (serially) and matches its dense copy."""
    X = sps.csr_matrix((64, N_IN), dtype=np.float64)
    Y = np.eye(2)[np.arange(64) % 2]
    ref, _ = _fit(X, Y, 8, 32, "float64", threads=1)
    got, st = _fit(X, Y, 8, 32, "float64", threads=2)
    assert st["regions"] == 0
    _assert_same(got, ref)


def _fit_opt(X, Y, hidden, batch_size, dtype, threads, optimizer, **kw):
    """_fit with an optimizer object (or the SGD keywords in kw)."""
    fastbp.set_num_threads(threads)
    net = fastbp.MLP([N_IN, hidden, 2], activation="relu", dtype=dtype, seed=0)
    _kernels.team_stats(reset=True)
    net.fit(X, Y, epochs=1, batch_size=batch_size, seed=1, flush_denormals=False,
            optimizer=optimizer, **kw)
    return list(net.weights) + list(net.biases), _kernels.team_stats()


@needs_teams
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", ["adam", "momentum"])
def test_sparse_dense_update_of_w0_still_uses_the_team(restore_threads, dtype, how):
    """With an optimizer (Adam, or SGD momentum through the gradient path) the
    update of W_0 is dense on sparse X too: each step reads and writes all
    50,000 x 8 = 400,000 weights (and the moments), 6 times the threshold,
    while its sparse forward costs 26,112 multiply-adds.  The planner adds
    that update to a training step's cost, so the fit goes through the team
    (one region, both steps in it) as it did when layer 0 was costed as dense,
    rather than running every dense update on one thread; the same bits."""
    X, Y = _sparse(64, dtype, seed=3)
    if how == "adam":
        args = dict(optimizer=fastbp.optim.Adam(lr=1e-3))
    else:
        args = dict(optimizer=None, lr=0.05, momentum=0.9)
    ref, _ = _fit_opt(X, Y, 8, 32, dtype, 1, **args)
    got, st = _fit_opt(X, Y, 8, 32, dtype, 2, **args)
    assert st["regions"] == 1 and _team_steps(st) == 2, st
    _assert_same(got, ref)
