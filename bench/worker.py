"""One measurement, run in a fresh subprocess: ``python -m bench.worker SPEC``.

``SPEC`` is a JSON object (see :func:`run_spec`).  The worker imports what
the measurement needs, limits every thread pool it knows of to ``threads``
(the parent also sets ``OMP_NUM_THREADS`` and friends), resets the peak-RSS
counter and takes its memory baseline, builds the data and
the model from the shared initial parameters, runs the first warm-up epoch,
checks it against a float64 numpy run of the same epoch (:mod:`bench.verify`;
a peer that fails is not timed), runs the other warm-up and the timed epochs,
records which threads did the work (CPU time per thread from
``/proc/self/task``) and prints one JSON line with the result on stdout.

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

    def reset_peak(self) -> None:
        """Restart the peak from the current RSS (where the counter can be
        reset; else a no-op)."""
        if self._reset:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

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


def thread_cpu_ns() -> dict[str, int]:
    """CPU time (user + system, ns) of each thread of this process so far.

    From ``/proc/self/task/*/schedstat`` (ns), else ``/proc/self/task/*/stat``
    (clock ticks); empty where neither exists.
    """
    out: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
                continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = int((int(fields[11]) + int(fields[12])) * tick_ns)
        except (OSError, ValueError, IndexError):
            pass
    return out


#: Shorter timed windows are not judged: a running thread's CPU time in
#: /proc is only brought up to date at the scheduler's ticks (a few ms).
MIN_USAGE_WALL_S = 0.2

#: A thread counts as busy when its CPU time is at least this fraction of the wall time.
BUSY_FRACTION = 0.1


def thread_usage(before: dict[str, int], after: dict[str, int], wall_s: float) -> dict[str, Any]:
    """Which threads worked between two :func:`thread_cpu_ns` snapshots.

    ``threads_busy`` counts the threads whose CPU time was at least
    :data:`BUSY_FRACTION` of ``wall_s``; ``cpu_s`` is the CPU time of all
    threads; ``thread_cpu_s`` the per-thread times, largest first.
    """
    per = sorted(((after[t] - before.get(t, 0)) / 1e9 for t in after), reverse=True)
    return {"threads_busy": sum(c >= BUSY_FRACTION * wall_s for c in per),
            "threads_alive": len(after), "cpu_s": sum(per), "wall_s": wall_s,
            "thread_cpu_s": [round(c, 4) for c in per[:8]]}


def measure_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one peer on one configuration; see the module docstring.

    The first warm-up epoch starts from the shared initial parameters in the
    shared batch order and is checked against a float64 numpy run of the same
    epoch (:mod:`bench.verify`); a peer that fails the check is refused
    (``status`` ``"refused"``) and not timed.  The peer's modules must already
    be imported and the thread limits set.
    """
    import gc

    import numpy as np

    from bench import verify
    from bench.configs import CONFIGS
    from bench.peers import PEERS, Shuffle, init_params

    peer, cfg = PEERS[spec["peer"]], CONFIGS[spec["config"]]
    mem = MemoryMeter()
    n = cfg.samples(spec["quick"])
    rng = np.random.default_rng(spec["seed"])
    X = rng.standard_normal((n, cfg.sizes[0])).astype(spec["dtype"])
    Y = rng.standard_normal((n, cfg.sizes[-1])).astype(spec["dtype"])
    init = init_params(cfg.sizes, spec["dtype"], spec["seed"])
    shuffle = Shuffle(spec["seed"], n)
    t0 = time.perf_counter()
    trainer = peer.build(cfg, X, Y, spec["lr"], init, shuffle)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = [trainer.epoch(0)]  # the first warm-up epoch: compiles, and is verified
    first_epoch_s = time.perf_counter() - t0
    peak_before_check = mem.peak_over_baseline_mib()  # (the copy params() makes: not the peer's)
    got = trainer.params()
    # The check's float64 numpy epoch runs on one BLAS thread: with more,
    # OpenBLAS's threads spin for about 0.1 s after its last product (140 ms
    # of CPU in the next 0.5 s, measured here), into the first timed epochs
    # of the peer, on a core that a peer on 2 threads needs.
    quiet = _limit_threads(1)
    try:
        check = verify.check(got, cfg, X, Y, spec["lr"], init, shuffle(0))
    finally:
        if quiet is not None:
            quiet.restore_original_limits()
    del got
    gc.collect()
    base = {"n_samples": n, "verify": check, "build_s": build_s,
            "first_epoch_s": first_epoch_s, "peer_info": trainer.info}
    if not check["ok"]:
        return {"status": "refused", "note": "not timed: " + check["reason"], **base}
    mem.reset_peak()  # the float64 check's memory is not the peer's
    times = []
    e = 1
    while e < spec["warmup"]:
        losses.append(trainer.epoch(e))
        e += 1
    cpu0, wall0 = thread_cpu_ns(), time.perf_counter()
    while (len(times) < spec["repeats"] or sum(times) < spec["min_time"]) \
            and len(times) < MAX_EPOCHS:
        t0 = time.perf_counter()
        losses.append(trainer.epoch(e))
        times.append(time.perf_counter() - t0)
        e += 1
    usage = thread_usage(cpu0, thread_cpu_ns(), time.perf_counter() - wall0)
    best = min(times)
    median = sorted(times)[len(times) // 2]
    out = {
        "status": "ok", **base, "best_s": best, "median_s": median, "times_s": times,
        "samples_per_s": n / best, "median_samples_per_s": n / median,
        "gflops": n * cfg.flops_per_sample / best / 1e9,
        "peak_rss_mib": max(peak_before_check, mem.peak_over_baseline_mib()),
        "memory_method": mem.method,
        "baseline_rss_mib": mem.baseline_kib / 1024,
        "data_mib": (X.nbytes + Y.nbytes) / MiB, "losses": losses[-10:],
        "thread_usage": usage, "peer_info": trainer.info,
    }
    if not all(np.isfinite(losses)):
        out["note"] = "non-finite loss"
    elif usage["wall_s"] >= MIN_USAGE_WALL_S \
            and usage["cpu_s"] > (spec["threads"] + 0.25) * usage["wall_s"]:
        out["note"] = (f"used {usage['cpu_s'] / usage['wall_s']:.2f} CPUs for "
                       f"{spec['threads']} thread(s) asked (see thread_usage)")
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
        ``status`` (``"ok"``, ``"skipped"``, ``"refused"`` (failed the check
        against float64, not timed) or ``"error"``), the measurements,
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
    if spec["kind"] == "peer" and spec["peer"].startswith("torch") and result["status"] == "ok":
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
