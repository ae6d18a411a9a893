"""Regression tests from a second review of the threads rewrite (issue 8).

Everything that could hang runs in a subprocess with a timeout, and a forked
child is killed by its parent after a deadline, so a regression fails the
test instead of hanging the suite.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastbp import _kernels

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, timeout: float = 120, env: dict | None = None) -> str:
    """Run `code` in a fresh interpreter (this worktree's fastbp first on the
    path); return its stdout, failing the test on a non-zero exit or a hang."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
needs_openmp = pytest.mark.skipif(not _kernels.openmp_enabled(), reason="built without OpenMP")
_dynamic = os.environ.get("OMP_DYNAMIC", "").strip().lower() in ("true", "1", "yes", "on")
#: The parent must run a team of two threads (not under OMP_THREAD_LIMIT=1,
#: nor OMP_DYNAMIC=true, where OpenMP may give a region one thread).
needs_teams = pytest.mark.skipif(
    _kernels.thread_limit() < 2 or _dynamic,
    reason="OMP_THREAD_LIMIT=1 or OMP_DYNAMIC=true: no sure team of two threads")


@needs_fork
@needs_openmp
@needs_teams
def test_fork_after_a_parallel_region_does_not_hang():
    # GNU libgomp is not fork-safe: a child forked after its parent ran a
    # team of 2+ threads waits forever in its next parallel region (the
    # forking thread's pool names threads the child does not have).  The
    # default multiprocessing start method on Linux is fork, so a Pool after
    # a fit hung.  Such a child must run its calls serially (same bits).
    out = _run(
        """
        import os, sys, time
        import numpy as np
        import fastbp
        from fastbp import _kernels
        _kernels.set_parallel_threshold(0)      # every step through the team
        fastbp.set_num_threads(2)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 13)).astype("float32")
        y = rng.integers(0, 5, 64)
        def train():
            net = fastbp.MLP([13, 37, 5], dtype="float32", seed=1)
            net.fit(X, y, epochs=2, batch_size=16, lr=0.05, seed=3)
            return np.concatenate([net.predict(X).ravel()] + [w.ravel() for w in net.weights])
        before = _kernels.parallel_regions()
        ref = train()
        assert _kernels.parallel_regions() > before      # the parent ran a team
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                same = bool(np.array_equal(train(), ref))
                os.write(w, b"SAME %d %d" % (same, fastbp.get_num_threads()))
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("HANG")
            sys.exit(0)
        print(os.read(r, 100).decode())
        print("PARENT", bool(np.array_equal(train(), ref)))   # the parent keeps its threads
        """
    )
    assert "HANG" not in out, "a child forked after a parallel fit hung in its first call"
    words = out.split()
    assert words[:3] == ["SAME", "1", "1"], out   # same bits; get_num_threads() says 1
    assert words[3:] == ["PARENT", "True"], out


@needs_openmp
def test_get_num_threads_honours_omp_thread_limit():
    # OMP_THREAD_LIMIT caps every team, whatever num_threads asks for: with
    # it at 1, get_num_threads() said 2 (or the set_num_threads value) while
    # every call ran on one thread.
    out = _run(
        """
        import numpy as np
        import fastbp
        from fastbp import _kernels
        _kernels.set_parallel_threshold(0)
        fastbp.set_num_threads(3)
        before = _kernels.parallel_regions()
        fastbp.MLP([13, 37, 5], seed=0).predict(np.ones((64, 13), "float32"))
        print(fastbp.get_num_threads(), _kernels.parallel_regions() - before)
        """,
        env={"OMP_THREAD_LIMIT": "1"},
    )
    assert out.split() == ["1", "0"], out


@pytest.fixture
def thread_state():
    from fastbp import _threads

    saved = _threads._n_threads, _threads._limit
    yield _threads
    _threads._n_threads, _threads._limit = saved


def test_threadpool_limits_block_leaves_no_cap_behind(thread_state):
    # threadpoolctl restores, on leaving its block, the value fastbp
    # reported on entering it.  A set_num_threads inside the block raised
    # the base above that value, so the restore was taken as a new, lower
    # limit that held for the rest of the process.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import fastbp

    fastbp.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="fastbp"):
        assert fastbp.get_num_threads() == 1
        fastbp.set_num_threads(4)
        assert fastbp.get_num_threads() == 1        # the limit still holds inside
    assert thread_state._limit is None
    assert fastbp.get_num_threads() == min(4, _kernels.thread_limit())
    with threadpoolctl.threadpool_limits(limits=3, user_api="fastbp"):
        assert fastbp.get_num_threads() == min(3, _kernels.thread_limit())  # a limit below the base
    assert fastbp.get_num_threads() == min(4, _kernels.thread_limit())
