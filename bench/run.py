"""Command line of the benchmark: ``python -m bench`` or ``python bench/run.py``.

Runs every (dtype, threads, configuration, peer) measurement in a fresh
subprocess (:mod:`bench.worker`), plus one numpy matmul per (dtype, threads)
as the roofline, then prints a table and writes a JSON file and, when
matplotlib is installed, a bar chart.

The busy-core case (on by default in a full run, ``--busy`` / ``--no-busy``):
the harness starts a process that busy-loops on one CPU (pinned to the last
CPU it may use), then times fastbp on 1 and 2 threads for every
configuration, interleaved over a few rounds, and reports the 2-thread /
1-thread ratio of the median epochs, as a desktop with a browser, a second
job or a ``GridSearchCV(n_jobs=...)`` would see it.

``--rounds N`` repeats every measurement N times, round after round, and
the best-peer table reports the median of the rounds' ratios (bench/report.py).

On a machine that sets ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` run it as::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fma_peak, report  # noqa: E402
from bench.configs import CONFIGS, QUICK_CONFIGS  # noqa: E402
from bench.peers import PEERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOW_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# PJRT_NPROC sizes XLA:CPU's thread pools (JAX); the old XLA_FLAGS intra-op
# recipes do nothing in current jaxlib.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PJRT_NPROC")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; see ``python -m bench --help``."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark fastbp against numpy, PyTorch (eager and torch.compile), "
        "JAX, scikit-learn and the pure-Python reference: one epoch of shuffled "
        "mini-batch SGD on random data, every peer first checked against float64.",
        epilog="Run as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run of seconds: tiny data, configs "
                   f"{','.join(QUICK_CONFIGS)}, float32, 1 thread, 1 timed epoch")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), metavar="NAME",
                   help=f"configurations ({', '.join(f'{k}: {c.label}' for k, c in CONFIGS.items())})")
    p.add_argument("--peers", nargs="+", choices=list(PEERS), metavar="NAME",
                   help=f"peers (default all: {', '.join(PEERS)}; quick: those that do "
                   "not compile for seconds, "
                   f"{', '.join(k for k, v in PEERS.items() if v.quick)})")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], metavar="DTYPE",
                   help="float32 and/or float64 (default both; quick: float32)")
    p.add_argument("--threads", nargs="+", type=int, metavar="N",
                   help="thread counts (default 1 2; quick: 1)")
    p.add_argument("--repeats", type=int, help="timed epochs, best taken (default 5; quick: 1)")
    p.add_argument("--min-time", type=float,
                   help="more timed epochs, until they add up to this many seconds "
                   "(default 1; quick: 0)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up epochs, >= 1: the first one (compilation included) "
                   "is checked against float64 numpy (default 1)")
    p.add_argument("--lr", type=float, default=0.001, help="SGD learning rate (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and weights (default 0)")
    p.add_argument("--matmul-n", type=int,
                   help="size of the square roofline matmul (default 2048; quick: 256)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds allowed per measurement subprocess (default 900)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="JSON output (default bench/results/bench[-quick].json)")
    p.add_argument("--png", type=Path, metavar="PATH",
                   help="bar chart output (default bench/results/bench[-quick].png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the bar chart")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure everything this many times, round after round (each "
                   "round every peer in turn, fresh processes); the best-peer table then "
                   "gives the median over rounds of fastbp / the round's best peer, with "
                   "its range: on a host whose speed drifts between minutes, a ratio "
                   "taken within one round is steadier than one run's (default 1)")
    p.add_argument("--busy", action=argparse.BooleanOptionalAction, default=None,
                   help="also time fastbp on 1 and 2 threads with one CPU kept busy by a "
                   "busy-looping process the harness starts (default: on; quick: off)")
    p.add_argument("--only-busy", action="store_true",
                   help="run the busy-core case only (implies --busy)")
    p.add_argument("--busy-rounds", type=int,
                   help="interleaved rounds of the busy-core case (default 3; quick: 1)")
    p.add_argument("--fma", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the FMA peak per ISA with bench/c/fma_peak.c (needs a C "
                   "compiler; default: on; quick: off)")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first warm-up epoch is the verified one)")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    q = args.quick
    args.configs = args.configs or list(QUICK_CONFIGS if q else CONFIGS)
    args.peers = args.peers or [k for k, v in PEERS.items() if v.quick or not q]
    args.dtypes = args.dtypes or (["float32"] if q else ["float32", "float64"])
    args.threads = args.threads or ([1] if q else [1, 2])
    args.repeats = args.repeats or (1 if q else 5)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if q else 1.0)
    args.matmul_n = args.matmul_n or (256 if q else 2048)
    args.busy = True if args.only_busy else (args.busy if args.busy is not None else not q)
    args.busy_rounds = args.busy_rounds or (1 if q else 3)
    args.fma = args.fma if args.fma is not None else not q
    stem = "bench-quick" if q else "bench"
    args.json = args.json or ROOT / "bench" / "results" / f"{stem}.json"
    args.png = args.png or ROOT / "bench" / "results" / f"{stem}.png"
    return args


def timing_text(args: argparse.Namespace) -> str:
    """How each figure was timed, in words."""
    text = f"best epoch of {args.repeats} timed"
    if args.min_time > 0:
        text = f"best epoch of >= {args.repeats} timed (>= {args.min_time:g} s in all)"
    return f"{text} after {args.warmup} warm-up"


def blas_warning() -> str | None:
    """A loud warning when OpenBLAS tuning variables that slow numpy are set."""
    set_vars = {k: os.environ[k] for k in SLOW_BLAS_ENV if k in os.environ}
    if not set_vars:
        return None
    shown = " ".join(f"{k}={v}" for k, v in set_vars.items())
    return (
        "!" * 78 + "\n"
        f"WARNING: {shown} is set in the environment.\n"
        "It overrides OpenBLAS's CPU detection and slows numpy (and so the numpy\n"
        "and scikit-learn peers and the matmul roofline).  For representative\n"
        "numbers run:\n"
        "    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench\n"
        + "!" * 78
    )


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker: thread variables set, repository importable."""
    env = dict(os.environ)
    for k in THREAD_ENV:
        env[k] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


BUSY_LOOP = """
import os, sys
try:
    os.sched_setaffinity(0, {int(sys.argv[1])})
except (AttributeError, OSError):
    pass
while True:
    pass
"""


@contextlib.contextmanager
def busy_core() -> Iterator[dict[str, Any]]:
    """A process busy-looping on one CPU (the last one this process may use)
    for as long as the block runs; yields its pid and CPU."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = list(range(os.cpu_count() or 1))
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpus[-1])])
    try:
        time.sleep(0.2)  # spinning by now
        yield {"pid": proc.pid, "cpu": cpus[-1], "cpus": len(cpus)}
    finally:
        proc.kill()
        proc.wait()


def busy_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """fastbp on 1 and 2 threads per configuration, interleaved over rounds."""
    dtype = args.dtypes[0]
    return [{"kind": "peer", "peer": "fastbp", "config": cfg, "dtype": dtype, "threads": t,
             "quick": args.quick, "lr": args.lr, "min_time": args.min_time,
             "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed,
             "busy": True, "round": r}
            for r in range(args.busy_rounds) for cfg in args.configs for t in (1, 2)]


def run_busy(args: argparse.Namespace) -> dict[str, Any]:
    """The busy-core case: the raw results and, per configuration, the best
    over rounds of the median-epoch samples/s on 1 and 2 threads, the ratio
    2 threads / 1 thread of those bests, the ratio of each round's pair of
    runs and their median (the steadier figure where the machine's speed
    drifts between rounds: a best run is one lucky moment)."""
    specs = busy_specs(args)
    results = []
    with busy_core() as busy:
        for i, spec in enumerate(specs, 1):
            print(f"[busy {i}/{len(specs)}] fastbp {spec['config']} {spec['dtype']} "
                  f"{spec['threads']}t ...", end=" ", file=sys.stderr, flush=True)
            res = run_worker(spec, args.timeout)
            print(res["status"], res.get("note", ""), file=sys.stderr, flush=True)
            results.append({"spec": spec, **res})
    summary = {}
    for cfg in args.configs:
        best = {}
        for t in (1, 2):
            rates = [r["median_samples_per_s"] for r in results if r["status"] == "ok"
                     and r["spec"]["config"] == cfg and r["spec"]["threads"] == t]
            best[t] = max(rates) if rates else None
        ok = {(r["spec"]["round"], r["spec"]["threads"]): r["median_samples_per_s"]
              for r in results if r["status"] == "ok" and r["spec"]["config"] == cfg}
        ratios = [ok[rnd, 2] / ok[rnd, 1] for rnd in range(args.busy_rounds)
                  if (rnd, 1) in ok and (rnd, 2) in ok]   # a failed run drops its round
        summary[cfg] = {"samples_per_s_1t": best[1], "samples_per_s_2t": best[2],
                        "ratio": best[2] / best[1] if best[1] and best[2] else None,
                        "ratio_per_round": ratios,
                        "ratio_median_round": statistics.median(ratios) if ratios else None}
    return {"busy_process": busy, "dtype": specs[0]["dtype"] if specs else None,
            "rounds": args.busy_rounds, "summary": summary, "results": results}


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess and return its result."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.worker", json.dumps(spec)],
            env=worker_env(spec["threads"]), capture_output=True, text=True,
            timeout=timeout, cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "note": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "note": f"worker exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def environment() -> dict[str, Any]:
    """What was run where: versions, CPU, BLAS, environment variables."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in SLOW_BLAS_ENV + THREAD_ENV},
        "versions": {},
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                                if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("numpy", "torch", "jax", "jaxlib", "scikit-learn", "threadpoolctl",
                 "matplotlib", "fastbp"):
        try:
            info["versions"][dist] = version(dist)
        except PackageNotFoundError:
            info["versions"][dist] = None
    if info["versions"]["fastbp"] is None:  # built in place, not installed
        try:
            import fastbp

            info["versions"]["fastbp"] = getattr(fastbp, "__version__", "in-place build")
        except ImportError:
            pass
    try:
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("user_api", "internal_api", "version",
                                                "architecture", "num_threads", "filepath")}
                        for d in threadpool_info()]
    except ImportError:
        info["blas"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = parse_args(argv)
    warning = blas_warning()
    env = environment()
    if warning:
        print(warning, file=sys.stderr)
        print(warning)
    print(report.header(env, args.quick))
    specs: list[dict[str, Any]] = []
    if args.only_busy:
        args.dtypes, args.threads = args.dtypes[:1], []
    common = {"warmup": args.warmup, "repeats": args.repeats, "seed": args.seed}
    for dtype in args.dtypes:
        for threads in args.threads:  # (none with --only-busy)
            specs.append({"kind": "matmul", "dtype": dtype, "threads": threads,
                          "matmul_n": args.matmul_n, **common})
            for cfg in args.configs:
                for peer in args.peers:
                    if PEERS[peer].runs_on(CONFIGS[cfg]):
                        specs.append({"kind": "peer", "peer": peer, "config": cfg,
                                      "dtype": dtype, "threads": threads,
                                      "quick": args.quick, "lr": args.lr,
                                      "min_time": args.min_time, **common})
    # Round-major: every measurement of round r before any of round r + 1.
    specs = [dict(spec, round=r) for r in range(args.rounds) for spec in specs]
    t_start = time.perf_counter()
    results = []
    for i, spec in enumerate(specs, 1):
        what = spec.get("peer", "matmul"), spec.get("config", spec.get("matmul_n")), \
            spec["dtype"], f"{spec['threads']}t"
        if args.rounds > 1:
            what = (*what, f"round {spec['round'] + 1}/{args.rounds}")
        print(f"[{i}/{len(specs)}] {' '.join(map(str, what))} ...", end=" ",
              file=sys.stderr, flush=True)
        res = run_worker(spec, args.timeout)
        print(res["status"], res.get("note", ""), file=sys.stderr, flush=True)
        results.append({"spec": spec, **res})
    busy = run_busy(args) if args.busy else None
    fma = None
    if args.fma:
        print("[fma] bench/c/fma_peak.c ...", end=" ", file=sys.stderr, flush=True)
        fma = fma_peak.measure(quick=args.quick)
        print(fma["status"], fma.get("note", ""), file=sys.stderr, flush=True)
    doc = {
        "meta": {"quick": args.quick, "argv": sys.argv, "rounds": args.rounds,
                 "elapsed_s": time.perf_counter() - t_start,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "blas_warning": warning,
                 "flops_per_sample": "6 * sum(n_in * n_out) (biases, activations not counted)",
                 "memory": "peak RSS of the subprocess over its RSS after imports, "
                           "including the training data (see bench/worker.py)",
                 "timing": timing_text(args)},
        "environment": env,
        "configs": {k: CONFIGS[k].to_dict() for k in args.configs},
        "results": report.add_ratios(results),
        "busy": busy,
        "fma_peak": fma,
    }
    doc["best"] = report.best_peers(doc["results"])
    doc["peak_fraction"] = report.peak_fractions(report.merge_rounds(doc["results"]), fma)
    if results:
        print(report.table(doc))
        print(report.best_table(doc))
    if fma:
        print(report.fma_table(doc))
    if busy:
        print(report.busy_table(busy))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"JSON written to {args.json}")
    if not args.no_plot and results:
        print(report.plot(doc, args.png))
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
