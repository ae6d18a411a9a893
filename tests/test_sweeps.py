"""Many independent fits in parallel: joblib threads and processes, GridSearchCV, Dask.

The kernels release the GIL, so a thread pool of fits runs in parallel; each
fit's kernel threads are capped so that n_jobs x threads never exceeds the
cores.  Every fit is seeded, so the parallel results are bitwise those of the
serial loop.  (See docs/distributed.md, "Sweeps".)
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import fastbp
from fastbp import _threads

joblib = pytest.importorskip("joblib")

pytestmark = pytest.mark.filterwarnings("ignore:Stochastic Optimizer:UserWarning")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
N_JOBS = 2


def _kernel_threads(n: int):
    """A cap on the kernel threads of this call: fastbp.threads(n) where it
    exists (a thread-local cap), else the process-wide set_num_threads(n)."""
    if hasattr(fastbp, "threads"):
        return fastbp.threads(n)
    fastbp.set_num_threads(n)
    return contextlib.nullcontext()


@pytest.fixture(autouse=True)
def _restore_threads():
    # set_num_threads is process-wide: put back what the process had.
    has = hasattr(_threads, "_n_threads")
    saved = getattr(_threads, "_n_threads", None)
    yield
    if has:
        _threads._n_threads = saved


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X, y


def _fit_one(lr: float, momentum: float, seed: int, threads: int):
    """One sweep point; returns the final parameters and what the kernels used."""
    X, y = _data()
    with _kernel_threads(threads):
        used = fastbp.get_num_threads()
        net = fastbp.MLP([8, 32, 2], seed=seed)
        net.fit(X, y, epochs=3, batch_size=16, lr=lr, momentum=momentum, seed=seed)
    return net.flat_parameters.copy(), used


GRID = [(lr, mu, seed) for lr in (0.01, 0.1) for mu in (0.0, 0.9) for seed in (0, 1)]


def test_thread_pool_sweep_is_bitwise_the_serial_loop_and_never_oversubscribes():
    threads = max(1, CORES // N_JOBS)
    serial = [_fit_one(lr, mu, s, threads)[0] for lr, mu, s in GRID]
    out = joblib.Parallel(n_jobs=N_JOBS, prefer="threads")(
        joblib.delayed(_fit_one)(lr, mu, s, threads) for lr, mu, s in GRID
    )
    for (theta, used), ref in zip(out, serial):
        assert used * N_JOBS <= max(CORES, N_JOBS)
        np.testing.assert_array_equal(theta, ref)


def test_loky_workers_get_a_share_of_the_cores():
    # joblib's process backend sets OMP_NUM_THREADS = cores // n_jobs in its
    # workers, and fastbp's default thread count follows OMP_NUM_THREADS.
    used = joblib.Parallel(n_jobs=N_JOBS, backend="loky")(
        joblib.delayed(fastbp.get_num_threads)() for _ in range(4)
    )
    assert all(u * N_JOBS <= max(CORES, N_JOBS) for u in used), used


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_grid_search_cv_with_fastbp_estimators(backend):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV

    from fastbp.sklearn import MLPClassifier

    X, y = _data()
    grid = {"learning_rate_init": [0.01, 0.1], "hidden_layer_sizes": [(8,), (16,)]}
    est = MLPClassifier(max_iter=5, batch_size=32, random_state=0)

    def search(n_jobs):
        gs = GridSearchCV(est, grid, cv=2, n_jobs=n_jobs)
        if backend == "threading":
            fastbp.set_num_threads(max(1, CORES // N_JOBS))
        with joblib.parallel_config(backend=backend):
            gs.fit(X, y)
        return gs

    serial, parallel = search(None), search(N_JOBS)
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    for W, W_ref in zip(parallel.best_estimator_.coefs_, serial.best_estimator_.coefs_):
        np.testing.assert_array_equal(W, W_ref)


def test_dask_backend_on_a_local_cluster():
    distributed = pytest.importorskip("distributed")
    serial = [_fit_one(lr, mu, s, 1)[0] for lr, mu, s in GRID[:4]]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with joblib.parallel_config(backend="dask"):
            out = joblib.Parallel()(
                joblib.delayed(_fit_one)(lr, mu, s, 1) for lr, mu, s in GRID[:4]
            )
    for (theta, used), ref in zip(out, serial):
        assert used == 1
        np.testing.assert_array_equal(theta, ref)


def test_the_library_imports_neither_dask_nor_ray():
    import subprocess
    import sys

    code = ("import sys, fastbp, fastbp.sklearn, fastbp.distributed; "
            "print(sorted(m for m in ('dask', 'distributed', 'ray', 'joblib', 'mpi4py') "
            "if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root), check=True).stdout
    assert "dask" not in out and "ray" not in out and "mpi4py" not in out, out
