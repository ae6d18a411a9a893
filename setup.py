"""Build the compiled kernels of fastbp.

Everything about the build lives here, in one place:

* Cython directives (set once, for every module): bounds checks, wraparound,
  initialisation checks off and C division on.  ``FASTBP_BOUNDSCHECK=1`` in the
  environment turns the checks back on for a debug/CI run.
* ``-O3``, ``-fno-math-errno`` (it changes no result; the optimizers' sqrt
  loops vectorise) and OpenMP.  OpenMP is detected by compiling a tiny
  program; where the compiler has none the extension still builds,
  serially, and the build says so loudly.
* No ``-march=native`` by default (the wheels must run on any x86-64); the GEMM
  picks AVX2/AVX-512 code paths at run time.  ``FASTBP_NATIVE=1`` opts in.
* ``FASTBP_SANITIZE=address`` (or ``undefined``, or both comma-separated) builds
  with that sanitizer at ``-O1``, as the sanitizers' documentation advises
  (tools/memcheck.sh; -O3 with AddressSanitizer took three times as long to
  compile).
* The C files of the extension are compiled side by side, one per core.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler_has_openmp() -> bool:
    """Compile and link a tiny OpenMP program with the C compiler Python uses."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        return False
    src = textwrap.dedent(
        """
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 ? 0 : 1;
        }
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "omp_check.c")
        with open(c_file, "w") as f:
            f.write(src)
        try:
            res = subprocess.run(
                [cc, "-fopenmp", c_file, "-o", os.path.join(tmp, "omp_check")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return False
        return res.returncode == 0


BOUNDSCHECK = _flag("FASTBP_BOUNDSCHECK")
NATIVE = _flag("FASTBP_NATIVE")
SANITIZE = os.environ.get("FASTBP_SANITIZE", "").strip()
if SANITIZE and not set(SANITIZE.split(",")) <= {"address", "undefined"}:
    raise SystemExit(f"setup.py: FASTBP_SANITIZE={SANITIZE!r}: expected address, undefined "
                     "or address,undefined")
if SANITIZE and sys.platform == "win32":
    raise SystemExit("setup.py: FASTBP_SANITIZE needs GCC or Clang (-fsanitize)")
OPENMP = _compiler_has_openmp()

if not OPENMP:
    bar = "!" * 78
    sys.stderr.write(
        f"\n{bar}\n"
        "fastbp: the C compiler has no OpenMP support (-fopenmp failed).\n"
        "fastbp will build and run correctly, but SERIALLY: set_num_threads() has\n"
        "no effect.  Install a compiler with OpenMP (gcc, or clang + libomp).\n"
        f"{bar}\n\n"
    )

# -fno-math-errno changes no result (only whether sqrt of a negative number
# sets errno) and lets GCC vectorise the sqrt loops of src/fbp_optim.h.
# -Wno-psabi: GCC's notes that passing 32-byte vectors changed ABI in GCC 4.6
# concern functions with an external ABI; the kernels' vector helpers are
# static inline (src/fbp_vmath.h), and GCC prints the notes despite the
# headers' pragma.
compile_args = (["-O3", "-std=gnu11", "-fno-math-errno", "-Wno-psabi"] if sys.platform != "win32"
                else ["/O2"])
link_args = []
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
if NATIVE:
    compile_args.append("-march=native")
if BOUNDSCHECK:
    compile_args.append("-DFASTBP_DEBUG=1")
if SANITIZE:
    # After -O3: the last -O wins.
    compile_args += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g", "-O1"]
    link_args.append(f"-fsanitize={SANITIZE}")

# The one place the Cython directives are set.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": BOUNDSCHECK,
    "wraparound": BOUNDSCHECK,
    "initializedcheck": BOUNDSCHECK,
    "cdivision": True,
    "embedsignature": True,
}


# The C files of the GEMM and the tiny-net kernels (src/fbp_gemm.c says which
# holds what); their headers are in `depends`.
C_SOURCES = [
    "src/fbp_gemm.c",           # driver, ISA dispatch, packing buffers
    "src/fbp_gemm_generic.c",   # per-ISA micro-kernels, small path, blocked driver
    "src/fbp_gemm_avx2.c",
    "src/fbp_gemm_avx512.c",
    "src/fbp_narrow.c",         # fbp_narrow_*, fbp_packed_*
]


def _extensions():
    import numpy
    from Cython.Build import cythonize
    from Cython.Compiler.Options import directive_types

    # A misspelt directive must fail the build, never be silently ignored.
    unknown = sorted(set(DIRECTIVES) - set(directive_types))
    if unknown:
        raise SystemExit(f"setup.py: unknown Cython directives {unknown}")

    ext = Extension(
        "fastbp._kernels",
        sources=["src/_kernels.pyx", *C_SOURCES],
        include_dirs=["src", numpy.get_include()],   # numpy's C API: MLP.predict's fast path
        depends=sorted(glob.glob("src/*.h") + glob.glob("src/*.pxi")),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    # The .c files are compiled with the same flags; Cython only translates the .pyx.
    return cythonize(
        [ext],
        compiler_directives=DIRECTIVES,
        # Regenerate the C when the build mode changes, never reuse a stale file.
        force=True,
        quiet=True,
    )


class build_ext(_build_ext):
    """Compile the C files of each extension side by side, one per core.

    setuptools' own ``--parallel`` runs whole extensions in parallel, and
    fastbp has one; its six C files took 72 s one after the other.  The
    object list keeps the sources' order (the link line is unchanged).
    """

    def build_extensions(self):
        compile_one = self.compiler.compile
        workers = os.cpu_count() or 1

        def compile_side_by_side(sources, *args, **kwargs):
            if workers < 2 or len(sources) < 2:
                return compile_one(sources, *args, **kwargs)
            with ThreadPoolExecutor(min(workers, len(sources))) as pool:
                parts = pool.map(lambda src: compile_one([src], *args, **kwargs), sources)
                return [obj for part in parts for obj in part]

        self.compiler.compile = compile_side_by_side
        super().build_extensions()


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
