"""The number of OpenMP threads the kernels use."""
from __future__ import annotations

import os
from typing import Optional

_n_threads: Optional[int] = None


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Set the number of threads fastbp's kernels use from now on.

    Parameters
    ----------
    n : int
        A positive number of threads.  Results do not depend on it: every
        reduction runs in a fixed order.
    """
    global _n_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be an integer >= 1, got {n!r}")
    _n_threads = n


def get_num_threads() -> int:
    """The number of threads the kernels use.

    Returns
    -------
    int
        The value given to :func:`set_num_threads`; by default
        ``OMP_NUM_THREADS`` when it is set, else the number of usable cores.
    """
    return _n_threads if _n_threads is not None else _default_threads()
