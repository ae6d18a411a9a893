"""Philox-4x32-10 and the dropout mapping: fastbp/_philox.py and src/fbp_philox.h.

Both against Random123's published known-answer vectors (kat_vectors,
Philox-4x32 with 10 and 7 rounds); the numpy-vectorised uniforms against the
scalar pure-Python ones; the C uniforms and the C range kernel (applied in
runs that start anywhere inside a Philox block) against Python, exactly; the
mapping's documented form; and the statistics of the masks (a loose check
that the stream is not broken: mean, per-lane means, no equal layers).
"""
import subprocess

import numpy as np
import pytest

from fastbp import _philox as P
from test_optim_c import build_c

# Random123 kat_vectors: (rounds, counter, key, expected output)
KAT = [
    (10, (0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    (10, (0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    (10, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
    (7, (0, 0, 0, 0), (0, 0), (0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48)),
    (7, (0xffffffff,) * 4, (0xffffffff,) * 2, (0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662)),
    (7, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a)),
]


@pytest.mark.parametrize("rounds, counter, key, expected", KAT)
def test_python_kat(rounds, counter, key, expected):
    assert P.philox4x32(counter, key, rounds) == expected
    if rounds == 10:
        assert P.philox4x32_10(counter, key) == expected


def test_vectorised_kat():
    for rounds, counter, key, expected in KAT:
        if rounds == 10:
            words = P._philox_arrays(*(np.array([c]) for c in counter), *key)
            assert tuple(int(w[0]) for w in words) == expected


@pytest.fixture(scope="module")
def philox_exe(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("philox_c"), "philox_check.c", "philox_check",
                   "library")


def _run(exe, *args):
    res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_c_kat(philox_exe):
    out = _run(philox_exe, "kat")
    assert "FAIL" not in out and "6 vectors, 0 failed" in out, out


def test_c_sanitized(tmp_path):
    exe = build_c(tmp_path, "philox_check.c", "philox_check", "sanitized")
    assert "0 failed" in _run(exe, "kat")
    out = _run(exe, "range", "f32", 5, 1, 2, 3, 2 ** 34 - 70, 67, "0.5")
    assert len(out.split()) == 67


def test_mapping_is_the_documented_one():
    seed, epoch, step, row, unit = 0x0123456789ABCDEF, 7, 11, 13, 4 * 1000 + 3
    word = P.philox4x32_10((1000, row, step, epoch), (0x89ABCDEF, 0x01234567))[3]
    assert P.dropout_uniform(seed, epoch, step, row, unit) == (word >> 8) * 2.0 ** -24
    assert P.dropout_keep(seed, epoch, step, row, unit, 0.25) == ((word >> 8) / 2 ** 24 >= 0.25)
    assert P.dropout_scale(0.25, np.float32) == np.float32(1 / 0.75)
    assert P.dropout_scale(0.0) == 1.0


def test_vectorised_equals_scalar():
    seed = 2 ** 64 - 5
    for epoch, step, unit0 in [(0, 0, 0), (3, 9, 5), (2 ** 32 - 1, 2 ** 32 - 1, 2 ** 34 - 40)]:
        u = P.dropout_uniforms(seed, epoch, step, 5, 37, unit0)
        ref = [[P.dropout_uniform(seed, epoch, step, i, unit0 + j) for j in range(37)]
               for i in range(5)]
        assert np.array_equal(u, np.array(ref))
        assert np.array_equal(P.dropout_mask(seed, epoch, step, 5, 37, 0.3, unit0),
                              np.array(ref) >= 0.3)
    assert P.dropout_uniforms(1, 0, 0, 0, 4).shape == (0, 4)
    assert P.dropout_uniforms(1, 0, 0, 3, 0).shape == (3, 0)


@pytest.mark.parametrize("seed, epoch, step, unit0", [
    (0, 0, 0, 0), (12345, 3, 17, 6), (2 ** 64 - 1, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 34 - 64)])
def test_c_uniforms_equal_python(philox_exe, seed, epoch, step, unit0):
    out = _run(philox_exe, "uniforms", seed, epoch, step, 6, 41, unit0)
    c = np.array([[float(v) for v in line.split()] for line in out.splitlines()])
    ref = P.dropout_uniforms(seed, epoch, step, 6, 41, unit0) * 2 ** 24
    assert np.array_equal(c, ref)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_c_range_equals_python(philox_exe, dtype, p):
    seed, epoch, step, row, unit0, n = 987654321987, 2, 5, 3, 7, 300
    out = _run(philox_exe, "range", dtype, seed, epoch, step, row, unit0, n, repr(p))
    c = np.array([float.fromhex(v) for v in out.split()])
    T = np.float32 if dtype == "f32" else np.float64
    x = (1 + np.arange(n) / 8.0).astype(T)
    keep = P.dropout_uniforms(seed, epoch, step, row + 1, n, unit0)[row] >= p
    ref = np.where(keep, x * P.dropout_scale(p, T), T(0))
    assert ref.dtype == T
    assert np.array_equal(c, ref.astype(np.float64))
    if p == 0.0:
        assert np.array_equal(c, x.astype(np.float64))


def test_mask_statistics():
    """Loose sanity of the stream: keep rate, each output lane, layers differ."""
    p = 0.3
    m = P.dropout_mask(42, 0, 0, 400, 256, p)
    assert abs(m.mean() - (1 - p)) < 0.01           # 102,400 draws: sd 0.0014
    for lane in range(4):
        assert abs(m[:, lane::4].mean() - (1 - p)) < 0.02
    u = P.dropout_uniforms(42, 0, 0, 400, 256)
    assert not np.array_equal(u[:, :128], u[:, 128:])
    base = P.dropout_uniforms(42, 0, 0, 4, 8)
    for seed, epoch, step in [(42, 1, 0), (42, 0, 1), (43, 0, 0), (2 ** 32 + 42, 0, 0)]:
        assert not np.array_equal(P.dropout_uniforms(seed, epoch, step, 4, 8), base)
    assert u.min() >= 0.0 and u.max() < 1.0


@pytest.mark.parametrize("call", [
    lambda: P.dropout_key(-1), lambda: P.dropout_key(2 ** 64), lambda: P.dropout_key(1.5),
    lambda: P.dropout_counter(2 ** 32, 0, 0, 0), lambda: P.dropout_counter(0, -1, 0, 0),
    lambda: P.dropout_counter(0, 0, 2 ** 32, 0), lambda: P.dropout_counter(0, 0, 0, 2 ** 34),
    lambda: P.dropout_scale(1.0), lambda: P.dropout_scale(-0.1),
    lambda: P.philox4x32((0, 0, 0), (0, 0)), lambda: P.philox4x32((0, 0, 0, 2 ** 32), (0, 0)),
    lambda: P.dropout_uniforms(1, 0, 0, -1, 3),
])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
