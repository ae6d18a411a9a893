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
def test_first_nonfinite_row_matches_numpy(dtype, shape):
    rng = np.random.default_rng(hash((dtype, shape)) % 2**32)
    x = rng.standard_normal(shape).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    x.flat[rng.integers(0, x.size, 3)] = tiny          # denormals are finite
    x.flat[rng.integers(0, x.size, 3)] = np.finfo(dtype).max
    assert _kernels.first_nonfinite_row(x) == -1
    for bad in (np.nan, np.inf, -np.inf):
        for _ in range(5):
            y = x.copy()
            at = rng.integers(0, y.size, rng.integers(1, 4))
            y.flat[at] = bad
            assert _kernels.first_nonfinite_row(y) == numpy_first_bad(y)
    y = x.copy()
    y[-1, -1] = np.nan      # the very last value
    assert _kernels.first_nonfinite_row(y) == shape[0] - 1
    y[0, 0] = -np.inf
    assert _kernels.first_nonfinite_row(y) == 0


def test_first_nonfinite_row_flush_to_zero_and_no_threads():
    """With flush-to-zero / denormals-are-zero on, a denormal still reads as
    finite; the check opens no parallel region (nothing to wait for on a busy core)."""
    x = np.full((4096, 512), np.finfo(np.float32).smallest_subnormal, np.float32)
    before = _kernels.parallel_regions()
    previous = _kernels.flush_denormals_enabled()
    _kernels._set_flush_denormals(True)
    try:
        assert _kernels.first_nonfinite_row(x) == -1
        x[4095, 511] = np.inf
        assert _kernels.first_nonfinite_row(x) == 4095
    finally:
        _kernels._set_flush_denormals(previous)
    assert _kernels.parallel_regions() == before


def test_first_nonfinite_row_rejects():
    with pytest.raises(ValueError):      # not C-contiguous: the caller's numpy path
        _kernels.first_nonfinite_row(np.ones((4, 4))[:, ::2])
    assert _kernels.first_nonfinite_row(np.ones((0, 4))) == -1
    assert _kernels.first_nonfinite_row(np.ones((4, 0))) == -1


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
