"""How many OpenMP threads the kernels use, and the controls over it.

A call (predict, loss, gradients, a fit) uses ``get_num_threads()`` threads at
most, evaluated when it starts:

* the base: the value given to :func:`set_num_threads`, or by default the
  OpenMP runtime's limit for the calling thread (``omp_get_max_threads()``:
  ``OMP_NUM_THREADS`` when set, else the usable cores; it also follows
  ``threadpoolctl.threadpool_limits(n, user_api="openmp")``);
* capped by ``threadpoolctl.threadpool_limits(n)`` (fastbp registers a
  threadpoolctl controller, user API ``"fastbp"``, when threadpoolctl is
  imported), for the whole process while the limit holds;
* capped by every :func:`threads` block the caller is inside (local to the
  calling Python thread, and to the asyncio task: a context variable, so
  fits in joblib threads do not oversubscribe and concurrent tasks do not
  see each other's caps).

Each step then uses fewer threads when it is too small to gain from them
(results do not depend on the thread count: every reduction runs in a fixed
order).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.abc
import importlib.util
import numbers
import sys
from typing import Any, Iterator, Optional, Tuple

from . import _kernels

#: The largest thread count accepted (OpenMP itself takes an ``int``; teams
#: far beyond the cores only cost).
MAX_THREADS = 1024

_n_threads: Optional[int] = None     # set_num_threads, None: the OpenMP default
_limit: Optional[int] = None         # threadpoolctl's limit, None: no limit
# The fastbp.threads caps in force, innermost last: a context variable, so
# local to each Python thread (a new thread starts with none) and to each
# asyncio task (a task runs in a copy of its creator's context).
_caps: contextvars.ContextVar[Tuple[int, ...]] = contextvars.ContextVar("fastbp_thread_caps",
                                                                         default=())


def _check_count(n: Any, what: str = "the number of threads") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # np.bool_ is not Integral
        raise ValueError(f"{what} must be an integer in [1, {MAX_THREADS}], got {n!r}")
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{what} must be an integer in [1, {MAX_THREADS}], got {n!r}")
    return n


def _base() -> int:
    return _n_threads if _n_threads is not None else max(1, min(MAX_THREADS, _kernels.max_threads()))


def set_num_threads(n: int) -> None:
    """Set the number of threads fastbp's kernels use from now on.

    Parameters
    ----------
    n : int
        An integer (Python or numpy) in ``[1, MAX_THREADS]`` (1024).  Results
        do not depend on it: every reduction runs in a fixed order.

    Raises
    ------
    ValueError
        For 0, negative numbers, numbers above ``MAX_THREADS``, booleans and
        anything that is not an integer (floats, strings).
    """
    global _n_threads
    _n_threads = _check_count(n)


def get_num_threads() -> int:
    """The number of threads a call started now from this Python thread uses
    at most.

    Returns
    -------
    int
        The :func:`set_num_threads` value (by default the OpenMP runtime's
        limit: ``OMP_NUM_THREADS`` or the usable cores), capped by a
        ``threadpoolctl.threadpool_limits`` in effect, by the
        :func:`threads` blocks this thread is in and by ``OMP_THREAD_LIMIT``.
        Steps too small to gain from threads use fewer.  1 in a process forked after fastbp ran
        threads (GNU OpenMP is not fork-safe: such a child runs serially).
    """
    if _kernels.serial_after_fork():   # a child forked after threads ran: serial
        return 1
    n = _base()
    if _limit is not None:
        n = min(n, _limit)
    caps = _caps.get()
    if caps:
        n = min(n, min(caps))
    return max(1, min(n, _kernels.thread_limit()))   # OMP_THREAD_LIMIT caps every team


@contextlib.contextmanager
def threads(n: Optional[int]) -> Iterator[int]:
    """Cap the threads of fastbp calls made from this Python thread (or
    asyncio task).

    ``with fastbp.threads(1): net.fit(...)`` runs that fit on one thread while
    other Python threads, and other asyncio tasks, keep their own setting
    (the cap is a :class:`contextvars.ContextVar`).  Blocks nest (the
    smallest cap holds) and the previous state comes back on exit, also on
    an exception.

    Parameters
    ----------
    n : int or None
        The cap, as for :func:`set_num_threads`; None: no cap (a no-op block).

    Yields
    ------
    int
        ``get_num_threads()`` inside the block.
    """
    if n is None:
        yield get_num_threads()
        return
    n = _check_count(n)
    token = _caps.set(_caps.get() + (n,))
    try:
        yield get_num_threads()
    finally:
        _caps.reset(token)


# -- threadpoolctl ------------------------------------------------------------

def _controller_get() -> int:
    """What threadpoolctl reports (and later restores): the limit that binds."""
    return _base() if _limit is None else min(_base(), _limit)


_unlimited_at: Optional[int] = None   # what _controller_get reported when no limit held


def _controller_set(n: int) -> None:
    """threadpoolctl's limit.  A value that would not cap the base, or the
    value reported when no limit held (the one threadpoolctl restores on
    leaving its block, even if set_num_threads changed the base inside),
    removes the limit."""
    global _limit, _unlimited_at
    n = max(1, int(n))
    if _limit is None:
        _unlimited_at = _base()
    _limit = None if n >= _base() or n == _unlimited_at else n


def _make_controller(threadpoolctl: Any) -> type:
    class FastbpController(threadpoolctl.LibController):
        """threadpoolctl's view of fastbp's kernels (the compiled extension)."""

        user_api = "fastbp"
        internal_api = "fastbp"
        filename_prefixes = ("_kernels",)
        check_symbols = ("fastbp_kernels_abi",)   # only fastbp's extension has it

        def get_num_threads(self) -> int:
            return _controller_get()

        def set_num_threads(self, num_threads: int) -> None:
            _controller_set(num_threads)

        def get_version(self) -> Optional[str]:
            from . import __version__

            return __version__

    return FastbpController


_registered = False


def _register(threadpoolctl: Any) -> None:
    global _registered
    if not _registered and hasattr(threadpoolctl, "register"):
        threadpoolctl.register(_make_controller(threadpoolctl))
        _registered = True


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers the controller once threadpoolctl is imported (threadpoolctl
    is optional: fastbp never imports it itself)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "threadpoolctl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                try:
                    _register(module)
                except Exception:  # never break the user's import
                    pass

        spec.loader = Loader()
        return spec


def _install_threadpoolctl_hook() -> None:
    if "threadpoolctl" in sys.modules:
        _register(sys.modules["threadpoolctl"])
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
