"""fastbp: dense multilayer perceptrons trained by backpropagation and SGD on the CPU.

The compiled kernels (Cython + C, float32 and float64, OpenMP) do the work;
:mod:`fastbp.reference` is a pure-Python implementation of the same model that
every kernel is tested against.
"""
import os as _os

# libgomp reads this once, when the kernels load it.  Its default makes idle
# OpenMP threads spin for milliseconds after each parallel region, which on a
# shared or busy machine steals the core the other thread needs; a short spin
# keeps back-to-back regions (one per GEMM) fast either way.  A value set by
# the user wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

try:  # a source folder without the compiled kernels: say so, not "cannot import name"
    from . import _kernels  # noqa: E402, F401
except ImportError as _exc:
    from .__main__ import missing_kernels
    missing_kernels(_exc)
from . import io, reference, schedules  # noqa: E402
from ._threads import MAX_THREADS, get_num_threads, set_num_threads, threads  # noqa: E402
from .history import History  # noqa: E402
from .io import ModelFileError, load  # noqa: E402
from .model import MLP  # noqa: E402
from ._threads import _install_threadpoolctl_hook  # noqa: E402

_install_threadpoolctl_hook()  # threadpoolctl.threadpool_limits then limits fastbp

__version__ = "0.1.0"

__all__ = [
    "MLP", "History", "load", "ModelFileError", "io", "reference", "schedules",
    "set_num_threads", "get_num_threads", "threads", "MAX_THREADS", "__version__",
]
