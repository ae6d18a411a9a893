"""Build and run the standalone C check of the GEMM (tests/c/gemm_check.c).

The C program compares the GEMM (src/fbp_*.c) against a double-precision triple loop
for every code path the CPU supports and checks bitwise equality across
n_threads = 1, 2, 3, 8.  It also checks the per-element invariance of the
contract (fbp_gemm.h): every element of C is bitwise the same when recomputed
as part of any sub-problem (single elements, rows, columns, random blocks via
pointer offsets or relaid out with other leading dimensions, other n_threads,
and with the packing-buffer allocation failing), whatever path that takes.  And that
the pre-packed calls (fbp_gemm_pack_b_* + fbp_gemm_packed_*) equal the unpacked call
bitwise for every ISA, dtype, transpose, epilogue and store mode, with op(B) packed in
one column range or several (shuffled, or by two threads at once; each element written
by exactly one range, nothing beyond fbp_gemm_packed_size), on row tiles, on a
misaligned pack and with the allocation failing, and that a column range off the NR grid is
refused (-1, nothing written).  And that op(B) packed by row ranges
(fbp_gemm_pack_b_rows_*: off and across the slab boundary, shuffled, concurrent) equals the
column pack bitwise, each range writing only its own elements, and the packed call on it the
unpacked call.  It is compiled with the flags the library build uses
(-O3 -std=gnu11 -fopenmp), a second time with AddressSanitizer and a third with
UndefinedBehaviorSanitizer (each at -O1, stopping at the first error) on a
reduced case list (which feeds the activations NaN and extreme values: the
exp's 2^n is built with well-defined shifts, src/fbp_vmath.h).  Skipped only
when no C compiler is available.
"""
import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
CHECK = os.path.join(ROOT, "tests", "c", "gemm_check.c")
# The GEMM is split over several C files (src/fbp_gemm.c lists them).
C_SOURCES = sorted(glob.glob(os.path.join(SRC, "fbp_*.c")))
FLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-pthread"]


def _cc():
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "gcc", "cc"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()[0]
    return None


def _has_openmp(cc, tmp_path):
    src = tmp_path / "omp.c"
    src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
    res = subprocess.run([cc, "-fopenmp", str(src), "-o", str(tmp_path / "omp")],
                         capture_output=True)
    return res.returncode == 0


def _build_and_run(tmp_path, name, extra_flags, args=()):
    cc = _cc()
    if cc is None:
        pytest.skip("no C compiler found (CC, sysconfig CC, gcc, cc): cannot build gemm_check.c")
    flags = FLAGS + (["-fopenmp"] if _has_openmp(cc, tmp_path) else [])
    exe = tmp_path / name
    cmd = [cc, *flags, *extra_flags, "-I", SRC, CHECK, *C_SOURCES,
           "-lm", "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        return build, None
    env = dict(os.environ)
    env.pop("FBP_GEMM_ISA", None)
    run = subprocess.run([str(exe), *args], capture_output=True, text=True,
                         env=env, timeout=300)
    return build, run


def _assert_ok(build, run):
    assert build.returncode == 0, "gemm_check.c failed to compile:\n" + build.stderr
    assert "warning" not in build.stderr, "compiler warnings:\n" + build.stderr
    out = run.stdout + run.stderr
    assert run.returncode == 0, "gemm_check reported failures:\n" + out[-20000:]
    assert "FAIL" not in out, out[-20000:]
    assert " 0 failed" in out, out[-20000:]


def test_gemm_c_check(tmp_path):
    _assert_ok(*_build_and_run(tmp_path, "gemm_check", []))


def test_gemm_c_check_asan(tmp_path):
    cc = _cc()
    if cc is None:
        pytest.skip("no C compiler found: cannot build gemm_check.c")
    probe = tmp_path / "asan.c"
    probe.write_text("int main(void){return 0;}\n")
    if subprocess.run([cc, "-fsanitize=address", str(probe), "-o", str(tmp_path / "asan")],
                      capture_output=True).returncode != 0:
        pytest.skip("compiler cannot link -fsanitize=address")
    _assert_ok(*_build_and_run(tmp_path, "gemm_check_asan",
                               # -O1: ASan at -O3 takes ~30 s to compile
                               ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer"],
                               ["quick"]))


def test_gemm_c_check_ubsan(tmp_path):
    cc = _cc()
    if cc is None:
        pytest.skip("no C compiler found: cannot build gemm_check.c")
    probe = tmp_path / "ubsan.c"
    probe.write_text("int main(void){return 0;}\n")
    if subprocess.run([cc, "-fsanitize=undefined", str(probe), "-o", str(tmp_path / "ubsan")],
                      capture_output=True).returncode != 0:
        pytest.skip("compiler cannot link -fsanitize=undefined")
    build, run = _build_and_run(tmp_path, "gemm_check_ubsan",
                                ["-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all"],
                                ["quick"])
    _assert_ok(build, run)
    assert "runtime error" not in run.stdout + run.stderr
