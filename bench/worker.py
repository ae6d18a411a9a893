"""One measurement, run in a fresh subprocess: ``python -m bench.worker SPEC``.

``SPEC`` is a JSON object (see :func:`run_spec`).  The worker imports what
the measurement needs, limits every thread pool it knows of to ``threads``
(the parent also sets ``OMP_NUM_THREADS`` and friends), resets the peak-RSS
counter and takes its memory baseline, builds the data and
the model, runs the warm-up and timed epochs and prints one JSON line with the
result on stdout.

Memory: ``peak_rss_mib`` is the peak resident set size of the process
(``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``
after the imports) minus the resident set size right after the imports
(``VmRSS``).  It therefore includes the training data, the model and
everything the peer allocates while training.  Where the counter cannot be
reset, ``resource.getrusage`` (``ru_maxrss``) is used instead, which cannot see
below the peak reached during the imports.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import sys
import time
from typing import Any

MiB = 1024 * 1024
MAX_EPOCHS = 1000  # cap on timed epochs when min_time asks for more than repeats


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryMeter:
    """Peak RSS of this process over a baseline taken at construction.

    Attributes
    ----------
    method : str
        How the peak is measured, for the report.
    """

    def __init__(self) -> None:
        reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current VmRSS
            reset = _proc_status_kib("VmHWM") is not None
        except OSError:
            pass
        if reset:
            self.method = "VmHWM-after-reset minus VmRSS after imports (/proc/self)"
        else:
            self.method = "ru_maxrss minus RSS after imports (not reset: floor = import peak)"
        self._reset = reset
        rss = _proc_status_kib("VmRSS")
        self.baseline_kib = rss if rss is not None else self._maxrss_kib()

    @staticmethod
    def _maxrss_kib() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r // 1024 if sys.platform == "darwin" else r

    def peak_over_baseline_mib(self) -> float:
        """Peak RSS since construction minus the baseline, in MiB."""
        peak = _proc_status_kib("VmHWM") if self._reset else self._maxrss_kib()
        return max(0, (peak or 0) - self.baseline_kib) / 1024


def _blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "num_threads",
            "architecture", "threading_layer")
    return [{k: d.get(k) for k in keys} for d in threadpool_info()]


def _limit_threads(n: int) -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n)


def measure_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of ``A @ B`` for square ``n x n`` matrices: the roofline."""
    import numpy as np

    n = spec["matmul_n"]
    rng = np.random.default_rng(spec["seed"])
    A = rng.standard_normal((n, n)).astype(spec["dtype"])
    B = rng.standard_normal((n, n)).astype(spec["dtype"])
    C = np.empty_like(A)
    times = []
    for i in range(spec["warmup"] + max(spec["repeats"], 3)):
        t0 = time.perf_counter()
        np.matmul(A, B, out=C)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"status": "ok", "n": n, "best_s": best, "times_s": times,
            "gflops": 2.0 * n**3 / best / 1e9}


def measure_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one peer on one configuration; see the module docstring.

    The peer's modules must already be imported and the thread limits set.
    """
    import numpy as np

    from bench.configs import CONFIGS
    from bench.peers import PEERS

    peer, cfg = PEERS[spec["peer"]], CONFIGS[spec["config"]]
    mem = MemoryMeter()
    n = cfg.samples(spec["quick"])
    rng = np.random.default_rng(spec["seed"])
    X = rng.standard_normal((n, cfg.sizes[0])).astype(spec["dtype"])
    Y = rng.standard_normal((n, cfg.sizes[-1])).astype(spec["dtype"])
    epoch = peer.build(cfg, X, Y, spec["lr"], spec["seed"])
    times, losses = [], []
    e = 0
    while (len(times) < spec["repeats"] or sum(times) < spec["min_time"]) \
            and len(times) < MAX_EPOCHS:
        t0 = time.perf_counter()
        losses.append(epoch(e))
        if e >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
        e += 1
    best = min(times)
    median = sorted(times)[len(times) // 2]
    out = {
        "status": "ok", "n_samples": n, "best_s": best, "median_s": median, "times_s": times,
        "samples_per_s": n / best, "median_samples_per_s": n / median,
        "gflops": n * cfg.flops_per_sample / best / 1e9,
        "peak_rss_mib": mem.peak_over_baseline_mib(), "memory_method": mem.method,
        "baseline_rss_mib": mem.baseline_kib / 1024,
        "data_mib": (X.nbytes + Y.nbytes) / MiB, "losses": losses[-10:],
    }
    if not all(np.isfinite(losses)):
        out["note"] = "non-finite loss"
    return out


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement.

    Parameters
    ----------
    spec : dict
        ``kind`` (``"peer"`` or ``"matmul"``), ``dtype``, ``threads``,
        ``warmup``, ``repeats``, ``seed``; for ``"peer"`` also ``peer``,
        ``config``, ``quick``, ``lr`` and ``min_time`` (timed epochs go on past
        ``repeats`` until they add up to ``min_time`` seconds); for ``"matmul"`` also ``matmul_n``.

    Returns
    -------
    dict
        ``status`` (``"ok"``, ``"skipped"`` or ``"error"``), the measurements,
        and the thread pools as threadpoolctl saw them while measuring.
    """
    import numpy  # noqa: F401  (loads BLAS before the limits are set)

    if spec["kind"] == "peer":
        from bench.peers import PEERS

        peer = PEERS[spec["peer"]]
        for mod in peer.modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as exc:  # not installed: skip with a note
                return {"status": "skipped", "note": f"{mod} not installed ({exc})"}
            # any other ImportError (e.g. a broken build) propagates: an error
        if peer.set_threads is not None:
            peer.set_threads(spec["threads"])
    # Libraries are loaded now, so threadpoolctl sees all their pools.
    limits = _limit_threads(spec["threads"])
    try:
        result = measure_matmul(spec) if spec["kind"] == "matmul" else measure_peer(spec)
        result["threadpools"] = _blas_info()
    finally:
        if limits is not None:
            limits.restore_original_limits()
    if spec["kind"] == "peer" and spec["peer"] == "torch" and result["status"] == "ok":
        import torch

        result["torch_threads"] = torch.get_num_threads()
    result["loadavg_1min"] = os.getloadavg()[0]  # > cpu_count: other work competed
    result["python"] = platform.python_version()
    result["pid"] = os.getpid()
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the spec given as the first argument, print JSON."""
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    try:
        result = run_spec(spec)
    except Exception as exc:  # report, never hang the harness
        result = {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
