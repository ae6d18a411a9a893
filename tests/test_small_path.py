"""The 64-128-10 relu batch-32 step (issue 11, bench config "small") and what
was changed for it: the GEMM's fused epilogue (bias + relu, the dsrc
derivatives applied in the micro-kernel before its store), the AVX-512 path
running small or thin products on the AVX2 blocked kernels, the one-pass
squared-error loss row, steps of fewer than 2**18 forward multiply-adds
per thread staying serial, and the blocked path reading a small op(A) where it
is instead of packing it (K.set_gemm_unpacked_a).

None of them may change a bit: the fused epilogue is the per-lane twin of the
separate pass (tests/c/gemm_check.c, tests/test_gemm_c.py check every
epilogue against sub-problems on every ISA), and the AVX2 and AVX-512 paths
must agree bitwise for it to be right to mix them.
"""
import numpy as np
import pytest

import fastbp
from fastbp import _kernels as K
from fastbp import reference
from tolerances import assert_close

ISAS = K.gemm_isas()
SMALL = [64, 128, 10]


@pytest.fixture(autouse=True)
def _restore():
    isa, n_threads = K.gemm_isa(), fastbp.get_num_threads()
    threshold = K.set_parallel_threshold(0)
    K.set_parallel_threshold(threshold)
    unpacked_a = K.set_gemm_unpacked_a(True)
    fastbp.set_num_threads(1)
    yield
    K.set_gemm_isa(isa)
    K.set_parallel_threshold(threshold)
    K.set_gemm_unpacked_a(unpacked_a)
    fastbp.set_num_threads(n_threads)


def data(sizes, n, dtype, output="identity", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Y = rng.standard_normal((n, sizes[-1])).astype(dtype)
    if output == "sigmoid":
        Y = 1 / (1 + np.exp(-Y))
    return X, Y


def fit(sizes, X, Y, *, activation="relu", output="identity", bias=True, batch_size=32,
        epochs=2, lr=0.01):
    net = fastbp.MLP(sizes, activation=activation, output=output, loss="squared_error",
                     bias=bias, dtype=X.dtype.name, seed=3)
    hist = net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=lr, shuffle=True, seed=5)
    return net._theta.tobytes(), list(hist.loss)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs the AVX2 and AVX-512 paths")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("sizes, batch_size", [(SMALL, 32), (SMALL, 7), ([40, 300, 24, 3], 50),
                                               ([64, 128, 10], 200)])
def test_avx2_and_avx512_agree(dtype, activation, sizes, batch_size):
    """Fits on the AVX-512 path (which runs small or thin products on the AVX2
    kernels, the others on its own) give the bits of the AVX2 path."""
    X, Y = data(sizes, 400, dtype)
    got = {}
    for isa in ("avx2", "avx512"):
        K.set_gemm_isa(isa)
        assert K.gemm_isa() == isa
        got[isa] = fit(sizes, X, Y, activation=activation, batch_size=batch_size)
    assert got["avx512"][0] == got["avx2"][0], "parameters differ between avx2 and avx512"
    assert got["avx512"][1] == got["avx2"][1], "loss histories differ between avx2 and avx512"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["identity", "sigmoid"])
def test_small_config_matches_reference(isa, dtype, output):
    """Two epochs of the small config (relu, squared error, batch 32, shuffled)
    against the pure-Python reference of the same dtype, on every code path
    (the blocked GEMM reading op(A) unpacked, asserted)."""
    K.set_gemm_isa(isa)
    kw = dict(activation="relu", output=output, loss="squared_error", bias=True, dtype=dtype,
              seed=0)
    fast, ref = fastbp.MLP(SMALL, **kw), reference.MLP(SMALL, **kw)
    for k in range(len(SMALL) - 1):
        ref.weights[k][...] = fast.weights[k]
        ref.biases[k][...] = fast.biases[k]
    X, Y = data(SMALL, 96, dtype, output=output, seed=9)
    before = K.gemm_unpacked_a_calls()
    hf = fast.fit(X, Y, epochs=2, batch_size=32, lr=0.01, seed=11)
    assert K.gemm_unpacked_a_calls() > before   # on the unpacked-A path (the default)
    hr = ref.fit(X, Y, epochs=2, batch_size=32, lr=0.01, seed=11)
    assert_close(hf.loss, hr.loss, dtype, "history")
    for k in range(len(SMALL) - 1):
        assert_close(fast.weights[k], ref.weights[k], dtype, f"W{k}")
        assert_close(fast.biases[k], ref.biases[k], dtype, f"b{k}")


@pytest.mark.skipif(not K.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_steps_stay_serial_on_two_threads(dtype):
    """With the shipped threshold a 64-128-10 b32 step (303k forward
    multiply-adds) opens no parallel region on 2 threads (the same serial
    code as 1 thread), a b128 step (1.2M) does; the bits never change."""
    K.set_parallel_threshold(262144)
    X, Y = data(SMALL, 512, dtype)
    one = fit(SMALL, X, Y, batch_size=32)
    one128 = fit(SMALL, X, Y, batch_size=128)
    fastbp.set_num_threads(2)
    if fastbp.get_num_threads() < 2:
        pytest.skip("one thread only (OMP_THREAD_LIMIT)")
    before = K.parallel_regions()
    two = fit(SMALL, X, Y, batch_size=32)
    assert K.parallel_regions() == before, "a 303k multiply-add step opened a region"
    two128 = fit(SMALL, X, Y, batch_size=128)
    assert K.parallel_regions() > before, "a 1.2M multiply-add step ran serially"
    assert two == one
    assert two128 == one128


@pytest.mark.skipif(not K.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("isa", ISAS)
def test_small_config_team_same_bits(isa):
    """Threshold 0: the small config's steps through the team (row split, and
    the unit split at batch 7) give the bits of one thread."""
    K.set_gemm_isa(isa)
    K.set_parallel_threshold(0)
    X, Y = data(SMALL, 160, "float32")
    for batch_size in (32, 7):
        fastbp.set_num_threads(1)
        one = fit(SMALL, X, Y, batch_size=batch_size)
        fastbp.set_num_threads(2)
        before = K.parallel_regions()
        two = fit(SMALL, X, Y, batch_size=batch_size)
        assert K.parallel_regions() > before or fastbp.get_num_threads() < 2
        assert two == one, f"batch {batch_size}"


def test_threshold_argument():
    """set_parallel_threshold returns the previous value and refuses < 0."""
    previous = K.set_parallel_threshold(123)
    assert K.set_parallel_threshold(previous) == 123
    with pytest.raises(ValueError, match=">= 0"):
        K.set_parallel_threshold(-1)


def test_shipped_threshold():
    """The threshold a fresh process starts with is 2**18 multiply-adds per
    thread (the rule test_small_steps_stay_serial_on_two_threads relies on)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c",
                          "from fastbp import _kernels as K; print(K.set_parallel_threshold(0))"],
                         cwd=root, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=root))
    assert int(out.stdout) == 2 ** 18


@pytest.mark.skipif("avx512" not in ISAS, reason="the CPU has no AVX-512")
def test_avx2_tiles_switch_changes_no_bit():
    """FBP_GEMM_AVX2_TILES=1 (small and thin products on the AVX2 kernels, the
    default on Zen 4) and =0 (all on the AVX-512 kernels, the default
    elsewhere) give the same bits: fits of the small config and of thin and
    wide layers, float32 and float64, in fresh processes (the switch is read
    once)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = (
        "import hashlib, numpy as np, fastbp\n"
        "fastbp.set_num_threads(1)\n"
        "h = hashlib.sha256()\n"
        "for sizes, bs in (([64, 128, 10], 32), ([40, 300, 7], 5), ([9, 33, 20, 3], 16)):\n"
        "    for dt in ('float32', 'float64'):\n"
        "        rng = np.random.default_rng(0)\n"
        "        X = rng.standard_normal((160, sizes[0])).astype(dt)\n"
        "        Y = rng.standard_normal((160, sizes[-1])).astype(dt)\n"
        "        net = fastbp.MLP(sizes, activation='tanh', output='identity',\n"
        "                         loss='squared_error', dtype=dt, seed=0)\n"
        "        net.fit(X, Y, epochs=2, batch_size=bs, lr=1e-2, seed=1)\n"
        "        for W, b in zip(net.weights, net.biases):\n"
        "            h.update(W.tobytes()); h.update(b.tobytes())\n"
        "        h.update(net.predict(X).tobytes())\n"
        "print(fastbp._kernels.gemm_isa(), h.hexdigest())\n")
    digests = set()
    for value in ("0", "1"):
        env = dict(os.environ, PYTHONPATH=root, FBP_GEMM_AVX2_TILES=value)
        env.pop("FBP_GEMM_ISA", None)
        out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                             text=True, check=True, env=env)
        isa, digest = out.stdout.split()
        assert isa == "avx512"
        digests.add(digest)
    assert len(digests) == 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("sizes, batch_size, threads", [
    (SMALL, 32, 1), (SMALL, 7, 1), ([9, 33, 20, 3], 13, 1), ([40, 300, 24, 3], 50, 1),
    ([64, 200, 130, 10], 96, 2)])
def test_unpacked_a_gives_the_packed_bits(isa, dtype, activation, sizes, batch_size, threads):
    """The blocked GEMM reading a small op(A) where it is (the batch's rows of
    X and of each H_k in the forward, delta in the backward) gives the bits of
    packing it: fits with it on and off, every ISA, both dtypes, batches whose
    last tile is partial, and a 2-thread fit through the team (a parallel
    region opened, asserted; its row tiles have 48 rows, under the limit).
    The caller's thread counts the unpacked calls: the path ran, and not at
    all when it is off (tests/c/gemm_check.c compares the two on row splits
    across threads)."""
    if threads > 1 and not (K.openmp_enabled() and K.thread_limit() >= 2):
        pytest.skip("needs 2 OpenMP threads")
    K.set_gemm_isa(isa)
    fastbp.set_num_threads(threads)
    if threads > 1:
        K.set_parallel_threshold(1)
    X, Y = data(sizes, 200, dtype)
    before, regions = K.gemm_unpacked_a_calls(), K.parallel_regions()
    on = fit(sizes, X, Y, activation=activation, batch_size=batch_size)
    assert K.gemm_unpacked_a_calls() > before      # counted on the caller's thread
    assert threads == 1 or K.parallel_regions() > regions
    K.set_gemm_unpacked_a(False)
    before = K.gemm_unpacked_a_calls()
    off = fit(sizes, X, Y, activation=activation, batch_size=batch_size)
    assert K.gemm_unpacked_a_calls() == before
    assert on == off
    assert K.set_gemm_unpacked_a(True) is False

