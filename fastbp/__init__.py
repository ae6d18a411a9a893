"""fastbp: dense multilayer perceptrons trained by backpropagation and SGD on the CPU.

The compiled kernels (Cython + C, float32 and float64, OpenMP) do the work;
:mod:`fastbp.reference` is a pure-Python implementation of the same model that
every kernel is tested against.
"""
from . import io, reference, schedules
from ._threads import get_num_threads, set_num_threads
from .history import History
from .io import ModelFileError, load
from .model import MLP

__version__ = "0.1.0"

__all__ = [
    "MLP", "History", "load", "ModelFileError", "io", "reference", "schedules",
    "set_num_threads", "get_num_threads", "__version__",
]
