#!/usr/bin/env bash
# Memory-error check of the compiled kernels.
#
#   tools/memcheck.sh [asan|valgrind] [pytest args...]
#
# Clones the committed tree (HEAD of the repository this script lives in) into
# a temporary directory, builds the extension there with Cython bounds checks ON
# (FASTBP_BOUNDSCHECK=1) and, by default, AddressSanitizer
# (FASTBP_SANITIZE=address: -fsanitize=address at -O1, as ASan's documentation
# advises; libasan LD_PRELOADed into the stock Python), then runs a
# representative subset of the tests.  "valgrind" instead builds with bounds
# checks only and runs the subset under valgrind memcheck (much slower).
# Exits non-zero on any memory error, bounds-check IndexError or test failure.
# Never touches the working tree it is run from.
set -euo pipefail

MODE="${1:-asan}"
[ $# -gt 0 ] && shift
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
TESTS=(tests/test_robustness.py tests/test_properties.py tests/test_kernels.py tests/test_gil.py)
[ $# -gt 0 ] && TESTS=("$@")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastbp-memcheck.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/src"
cd "$WORK/src"

case "$MODE" in
asan)
    LIBASAN="$(${CC:-gcc} -print-file-name=libasan.so)"
    [ -f "$LIBASAN" ] || { echo "memcheck: libasan not found ($LIBASAN)" >&2; exit 2; }
    echo "memcheck: building with FASTBP_BOUNDSCHECK=1 and FASTBP_SANITIZE=address (-O1) in $WORK/src"
    FASTBP_BOUNDSCHECK=1 FASTBP_SANITIZE=address \
        "$PY" setup.py build_ext --inplace -q >build.log 2>&1 || { cat build.log; exit 2; }
    # A build that dropped the sanitizer would pass every test: refuse it.
    for so in fastbp/_kernels*.so; do
        ldd "$so" | grep -q libasan || { echo "memcheck: $so is not linked against libasan" >&2; exit 2; }
    done
    echo "memcheck: running ${TESTS[*]} under AddressSanitizer"
    # Leak detection off: CPython itself keeps its arenas until exit.
    LD_PRELOAD="$LIBASAN" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=99:detect_stack_use_after_return=0" \
    PYTHONMALLOC=malloc \
        "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
    ;;
valgrind)
    command -v valgrind >/dev/null || { echo "memcheck: valgrind not installed" >&2; exit 2; }
    echo "memcheck: building with FASTBP_BOUNDSCHECK=1 in $WORK/src"
    FASTBP_BOUNDSCHECK=1 "$PY" setup.py build_ext --inplace -q >build.log 2>&1 || { cat build.log; exit 2; }
    SUPP=()
    for f in "$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("prefix"))')"/lib/valgrind-python.supp \
             /usr/lib/valgrind/python3.supp; do
        [ -f "$f" ] && SUPP+=("--suppressions=$f")
    done
    echo "memcheck: running ${TESTS[*]} under valgrind memcheck"
    PYTHONMALLOC=malloc OMP_NUM_THREADS=2 \
        valgrind --tool=memcheck --error-exitcode=1 --errors-for-leak-kinds=none \
        --leak-check=no "${SUPP[@]}" \
        "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
    ;;
*)
    echo "usage: tools/memcheck.sh [asan|valgrind] [pytest args...]" >&2
    exit 2
    ;;
esac
echo "memcheck: clean"
