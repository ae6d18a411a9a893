"""The compiled NaN / Inf check of the data (src/_check.pxi) against numpy,
through fastbp._common's checks as fit, predict and the estimators use it."""
import numpy as np
import pytest

import fastbp
from fastbp import _common, _kernels


def numpy_first_bad(x):
    rows = np.isfinite(x).all(axis=1)
    return -1 if rows.all() else int(np.argmin(rows))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (3, 7), (1000, 3), (70, 20000), (5000, 300)])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 64, 100])
def test_first_nonfinite_row_matches_numpy(dtype, shape, n_threads):
    rng = np.random.default_rng(hash((dtype, shape, n_threads)) % 2**32)
    x = rng.standard_normal(shape).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    x.flat[rng.integers(0, x.size, 3)] = tiny          # denormals are finite
    x.flat[rng.integers(0, x.size, 3)] = np.finfo(dtype).max
    assert _kernels.first_nonfinite_row(x, n_threads) == -1
    for bad in (np.nan, np.inf, -np.inf):
        for _ in range(3):
            y = x.copy()
            at = rng.integers(0, y.size, rng.integers(1, 4))
            y.flat[at] = bad
            assert _kernels.first_nonfinite_row(y, n_threads) == numpy_first_bad(y)
    y = x.copy()
    y[-1, -1] = np.nan      # the very last value
    assert _kernels.first_nonfinite_row(y, n_threads) == shape[0] - 1
    y[0, 0] = -np.inf
    assert _kernels.first_nonfinite_row(y, n_threads) == 0


def test_first_nonfinite_row_threads_ran_and_flush_to_zero():
    if _kernels.max_threads() < 2 or not _kernels.openmp_enabled():
        pytest.skip("needs OpenMP and 2 threads")
    x = np.ones((4096, 512), np.float32)
    x[3000, 100] = np.inf
    x[3500, 0] = np.nan
    before = _kernels.parallel_regions()
    assert _kernels.first_nonfinite_row(x, 2) == 3000
    assert _kernels.parallel_regions() == before + 1
    small = np.ones((10, 10), np.float32)
    assert _kernels.first_nonfinite_row(small, 2) == -1
    assert _kernels.parallel_regions() == before + 1       # small: serial
    # with flush-to-zero / denormals-are-zero on, a denormal still reads as finite
    x = np.full((4096, 512), np.finfo(np.float32).smallest_subnormal, np.float32)
    previous = _kernels.flush_denormals_enabled()
    _kernels._set_flush_denormals(True)
    try:
        assert _kernels.first_nonfinite_row(x, 2) == -1
        x[4095, 511] = np.inf
        assert _kernels.first_nonfinite_row(x, 2) == 4095
    finally:
        _kernels._set_flush_denormals(previous)


def test_first_nonfinite_row_rejects():
    with pytest.raises(ValueError, match="n_threads"):
        _kernels.first_nonfinite_row(np.ones((2, 2)), 0)
    with pytest.raises(ValueError):      # not C-contiguous: the caller's numpy path
        _kernels.first_nonfinite_row(np.ones((4, 4))[:, ::2], 1)
    assert _kernels.first_nonfinite_row(np.ones((0, 4)), 1) == -1
    assert _kernels.first_nonfinite_row(np.ones((4, 0)), 1) == -1


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", ">f8"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_check_X_names_the_first_bad_row(dtype, layout):
    """check_X takes the compiled check for C-contiguous native float32 / float64
    and numpy's otherwise; the message is the same either way."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 40)).astype(dtype)
    x[417, 5] = np.nan
    x[530, 0] = np.inf
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=1)[:, ::2]
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first in row 417\)"):
        _common.check_X(x, 40, np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0)
    out = _common.check_X(x, 40, np.float64)
    assert out.flags.c_contiguous and np.array_equal(out, np.asarray(x, np.float64))


def test_fit_rejects_bad_X_and_Y_and_leaves_the_model():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 50)).astype(np.float32)
    Y = rng.standard_normal((3000, 3)).astype(np.float32)
    net = fastbp.MLP([50, 16, 3], output="identity", loss="squared_error", dtype="float32", seed=0)
    before = [w.copy() for w in net.weights]
    Xb = X.copy()
    Xb[2999, 49] = -np.inf
    with pytest.raises(ValueError, match="first in row 2999"):
        net.fit(Xb, Y, epochs=1)
    Yb = Y.copy()
    Yb[1234, 1] = np.nan
    with pytest.raises(ValueError, match=r"Y contains NaN or Inf \(first in row 1234\)"):
        net.fit(X, Yb, epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.weights))
    with pytest.raises(ValueError, match="first in row 2999"):
        net.predict(Xb)


def test_float64_X_overflowing_float32_is_named():
    X = np.ones((3000, 50))
    X[2500, 7] = 1e300          # finite in float64, Inf in float32
    with pytest.raises(ValueError, match="X row 2500 overflows float32"):
        _common.check_X(X, 50, np.float32)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork")
def test_first_nonfinite_row_serial_in_a_forked_child():
    """GNU libgomp is not fork-safe: in a child forked after a team ran, a
    parallel region waits for ever (src/fbp_team.h).  Like every other kernel,
    the check then runs on one thread whatever n_threads asks for."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    if not _kernels.openmp_enabled() or _kernels.thread_limit() < 2:
        pytest.skip("needs OpenMP and 2 threads")
    code = """
        import os, sys, time
        import numpy as np
        from fastbp import _kernels
        x = np.ones((4096, 512), np.float32)
        x[3000, 7] = np.nan
        before = _kernels.parallel_regions()
        assert _kernels.first_nonfinite_row(x, 2) == 3000
        if _kernels.parallel_regions() == before:
            print("NOTEAM"); sys.exit(0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.write(w, b"CHILD %d" % _kernels.first_nonfinite_row(x, 2))
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("HANG"); sys.exit(0)
        print(os.read(r, 100).decode())
    """
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "NOTEAM" in proc.stdout:
        pytest.skip("the runtime gave the parent no team of two threads")
    assert "HANG" not in proc.stdout, "the check hung in a child forked after a team ran"
    assert proc.stdout.split() == ["CHILD", "3000"], proc.stdout
