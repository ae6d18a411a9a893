"""fastbp.distributed on this machine: K = 1 vs K = 2 processes, 1 kernel thread each.

    python -m bench.distributed            # a few minutes on an idle machine
    python -m bench.distributed --quick    # a smoke run
    python -m bench.distributed --config 784-256-128-10   # one configuration

For each configuration (784-256-128-10 batch 128, 1024-2048-2048-1024 batch
256; relu, identity output, squared error, float32, plain SGD, random data)
it launches ``mpiexec -n K python -m bench.distributed --worker ...`` three
times: K = 1; K = 2, alternating epochs with ``overlap=False`` and
``overlap=True`` in the same processes (so both see the same load); and K = 2
again with MPICH's asynchronous progress thread (``MPIR_CVAR_ASYNC_PROGRESS=1``;
one short epoch per mode, as ``--quick``: it is slow on 2 cores).  It reports, per training step:
the wall time, the speedup of K = 2 over K = 1, and the time spent in
communication by part (the gradient's reduce-scatter, with overlap the time
inside its non-blocking calls and of that the final wait; the parameters'
allgather; the shard losses' allgather), the overlapped fraction of the
reduce-scatter, the load average at the start and the end, plus the
reduction's cost per byte of gradient.  It also times, in one process, the gradient of one
shard at the shard sizes K = 8, 64 and 512 would give, and the per-step local
work that does not shrink with K (the float64 sum of the received chunks and
the optimizer update), the inputs of the step-time model in
docs/distributed.md, which this script prints as well.

Wall-clock figures on a shared machine vary between runs: the output says
so, and JSON goes to ``bench/results/distributed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

CONFIGS = {
    "784-256-128-10": dict(sizes=[784, 256, 128, 10], batch=128, steps=60, steps_quick=6),
    "1024-2048-2048-1024": dict(sizes=[1024, 2048, 2048, 1024], batch=256, steps=8,
                                steps_quick=2),
}
NETWORK_GBPS = 25.0     # the modelled link
LATENCY_S = 10e-6       # the modelled per-message latency of MPI over such a link
MODEL_K = (8, 64, 512)
ROUNDS = 5              # epochs per mode (K = 2: alternating without and with overlap)


def _net(sizes: List[int]):
    import fastbp

    return fastbp.MLP(sizes, activation="relu", output="identity", loss="squared_error", seed=0)


def _data(sizes: List[int], n: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    Y = rng.normal(size=(n, sizes[-1])).astype(np.float32)
    return X, Y


def worker(name: str, quick: bool) -> None:
    """Run under mpiexec: time distributed steps; rank 0 prints one JSON line.

    With K > 1 it alternates epochs with ``overlap=False``, with the default
    ``overlap=True`` and, when the default buckets hold more than one layer,
    with every layer on its own (``bucket_bytes=0``), in the same processes
    (so all see the same load), and keeps the fastest epoch of each."""
    import fastbp
    import fastbp.distributed as fd

    fastbp.set_num_threads(1)
    cfg = CONFIGS[name]
    steps = cfg["steps_quick"] if quick else cfg["steps"]
    B = cfg["batch"]
    X, Y = _data(cfg["sizes"], B * steps)
    net = _net(cfg["sizes"])
    comm = fd.MPIComm()
    modes: Dict[str, Dict[str, Any]] = {"off": dict(overlap=False)}
    if comm.size > 1:
        modes["on"] = {}
        slices = fd._layer_slices(net)
        if len(fd._buckets(slices, 4, 1 << 20)) < len(slices):
            modes["per_layer"] = dict(bucket_bytes=0)
    for kw in modes.values():   # warm up every path
        fd.fit(net, X[: 2 * B], Y[: 2 * B], comm=comm, epochs=1, batch_size=B, lr=1e-4, seed=0,
               **kw)
    # Time the shard gradients too (the one-call path): wall and CPU time of this rank.
    real, spent = net.flat_gradient, [0.0, 0.0]

    def timed(*a: Any, **k: Any) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        out = real(*a, **k)
        spent[0] += time.perf_counter() - w0
        spent[1] += time.thread_time() - c0
        return out

    net.flat_gradient = timed
    best: Dict[str, Dict[str, Any]] = {}
    ratios: Dict[str, Dict[str, List[float]]] = {
        mode: {"step": [], "gradient_comm": []} for mode in modes if mode != "off"}
    for _ in range(1 if quick else ROUNDS):
        this: Dict[str, Dict[str, Any]] = {}
        for mode, kw in modes.items():
            spent[:] = [0.0, 0.0]
            hist = fd.fit(net, X, Y, comm=comm, epochs=1, batch_size=B, lr=1e-4, seed=0, **kw)
            run = dict(step_s=hist.seconds[0] / steps, comm_s=hist.comm_seconds / steps,
                       grad_wall_s=spent[0] / steps, grad_cpu_s=spent[1] / steps,
                       requests_per_step=hist.comm_detail["requests"] / steps,
                       **{f"{k}_s": v / steps for k, v in hist.comm_detail.items()
                          if k != "requests"})
            # The gradient's communication: the losses' allgather and the
            # reduce-scatter (a rank's wait for the slower one lands in the
            # first of them without overlap, in the final wait with it).
            run["gradient_comm_s"] = run["losses_s"] + run["exchange_s"]
            this[mode] = run
            if mode not in best or run["step_s"] < best[mode]["step_s"]:
                best[mode] = run
        for mode in ratios:   # paired: adjacent epochs see about the same load
            ratios[mode]["step"].append(this[mode]["step_s"] / this["off"]["step_s"])
            ratios[mode]["gradient_comm"].append(this[mode]["gradient_comm_s"]
                                                 / this["off"]["gradient_comm_s"])
    grad_cpu = max(comm.allgather(best["off"]["grad_cpu_s"]))
    # The reduction alone, on the gradient's size.
    reduce = fd.FixedOrderAllreduce(comm, net.n_params, net.dtype)
    g = np.ones(net.n_params, dtype=net.dtype)
    out = np.empty_like(g)
    rows = [1] * comm.size
    reps = 3 if quick else 20
    reduce(g, rows, out)
    alone = []
    for _ in range(reps):  # each call starts together (a barrier first), so no rank waits
        comm.comm.Barrier()
        t0 = time.perf_counter()
        reduce(g, rows, out)
        alone.append(time.perf_counter() - t0)
    if comm.rank == 0:
        res = dict(config=name, K=comm.size, n_params=net.n_params,
                   async_progress=_async_progress(), grad_cpu_s_max_rank=grad_cpu,
                   reduce_s=float(np.median(alone)))
        res.update(best["off"])
        for mode, key in (("on", "overlap"), ("per_layer", "per_layer")):
            if mode in best:
                res[key] = best[mode]
                res[key]["ratio_median"] = {k: float(np.median(v))
                                            for k, v in ratios[mode].items()}
        print(json.dumps(res), flush=True)


def _async_progress() -> bool:
    """Whether MPICH's asynchronous progress thread was asked for."""
    return any(os.environ.get(v, "0") not in ("", "0")
               for v in ("MPIR_CVAR_ASYNC_PROGRESS", "MPICH_ASYNC_PROGRESS"))


class _FakeComm:
    """Rank 0 of K, for timing the owner's local work without MPI."""

    def __init__(self, size: int) -> None:
        self.rank, self.size = 0, size


def local_costs(name: str, quick: bool) -> Dict[str, Any]:
    """One process: shard gradients at the shard sizes of K = 1, 8, 64, 512, and the
    per-step local work of the reduction and the update (which do not shrink with K)."""
    import fastbp
    import fastbp.distributed as fd

    fastbp.set_num_threads(1)
    cfg = CONFIGS[name]
    B = cfg["batch"]
    net = _net(cfg["sizes"])
    X, Y = _data(cfg["sizes"], B)
    grad = np.empty(net.n_params, dtype=net.dtype)
    reps = 2 if quick else 5

    def best_of(f, n=reps):
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        return min(t)

    shard = {}
    for K in (1, 2) + MODEL_K:
        m = max(1, -(-B // K))
        shard[K] = best_of(lambda: net.flat_gradient(X[:m], Y[:m], out=grad))
    # The owner's combine-and-update of its chunk (P/K entries, K pieces), as
    # fit runs it for rank 0 of K ranks; nothing is communicated here.
    owner = {}
    theta = net.flat_parameters
    empty = np.zeros(0, dtype=net.dtype)
    for K in (1, 2) + MODEL_K:
        step = fd._Step(_FakeComm(K), net.n_params, net.dtype)
        pieces = (grad.reshape(1, -1) if K == 1
                  else np.zeros((K, step.hi - step.lo), dtype=net.dtype))
        rows = [B // K + (1 if r < B % K else 0) for r in range(K)]
        owner[K] = best_of(lambda: step.update(pieces, rows, theta, empty, np.float32(1e-4),
                                               np.float32(0), False, np.float32(0)))
    del fd
    return dict(shard_grad_s={str(k): v for k, v in shard.items()},
                owner_update_s={str(k): v for k, v in owner.items()}, n_params=net.n_params)


def model(n_params: int, batch: int, local: Dict[str, Any], K: int) -> Dict[str, float]:
    """Step time on K ranks over a NETWORK_GBPS link (see docs/distributed.md)."""
    nbytes = 4 * n_params
    bw = NETWORK_GBPS * 1e9 / 8
    comm = 2 * (K - 1) * LATENCY_S + 2 * (K - 1) / K * nbytes / bw
    t1 = local["shard_grad_s"]["1"] + local["owner_update_s"]["1"]
    ideal = local["shard_grad_s"]["1"] / min(K, batch)
    shard = local["shard_grad_s"][str(K)]
    owner = local["owner_update_s"][str(K)]
    step = shard + owner + comm
    return dict(K=K, compute_ideal_s=ideal, compute_shard_s=shard, owner_s=owner,
                comm_s=comm, step_s=step, speedup=t1 / step)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", metavar="CONFIG")
    p.add_argument("--config", choices=sorted(CONFIGS), action="append",
                   help="only this configuration (repeatable; default: both)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "distributed.json"))
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick)
        return
    exe = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
           or shutil.which("mpiexec") or shutil.which("mpirun"))
    if exe is None:
        sys.exit("bench.distributed: no mpiexec found (pip install 'fastbp[mpi]')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("MPIR_CVAR_ASYNC_PROGRESS", "MPICH_ASYNC_PROGRESS"):
        env.pop(var, None)
    chosen = {n: CONFIGS[n] for n in (args.config or CONFIGS)}
    load_start = _load()
    results: Dict[str, Any] = {"note": "wall times measured in one run on a 2-core machine "
                                       "that may be shared with other jobs; they vary "
                                       "between runs", "load_average_1min_start": load_start}
    # K = 1; K = 2 (overlap off and on, alternating epochs); K = 2 with MPICH's
    # asynchronous progress thread (MPI_THREAD_MULTIPLE, which mpi4py asks for).
    # (label, K, extra environment, quick: the async runs are slow here, so they
    # time one short epoch per mode)
    launches = [("K1", 1, {}, args.quick), ("K2", 2, {}, args.quick),
                ("K2_async", 2, {"MPIR_CVAR_ASYNC_PROGRESS": "1", "MPICH_ASYNC_PROGRESS": "1"},
                 True)]
    for name, cfg in chosen.items():
        runs = {}
        for label, K, extra, quick in launches:
            cmd = [exe, "-n", str(K), sys.executable, "-m", "bench.distributed", "--worker", name]
            if quick:
                cmd.append("--quick")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, **extra),
                                  cwd=root, timeout=1800)
            if proc.returncode:
                sys.exit(proc.stderr)
            runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        local = local_costs(name, args.quick)
        P = runs["K1"]["n_params"]
        k1, k2, ka = runs["K1"], runs["K2"], runs["K2_async"]
        results[name] = dict(
            runs=runs, local=local,
            speedup=k1["step_s"] / k2["step_s"],
            speedup_overlap=k1["step_s"] / k2["overlap"]["step_s"],
            speedup_overlap_async=k1["step_s"] / ka["overlap"]["step_s"],
            overlap_step_ratio=k2["overlap"]["ratio_median"]["step"],
            per_layer_step_ratio=(k2["per_layer"]["ratio_median"]["step"]
                                  if "per_layer" in k2 else None),
            overlapped_fraction=1.0 - k2["overlap"]["ratio_median"]["gradient_comm"],
            overlapped_fraction_async=1.0 - ka["overlap"]["ratio_median"]["gradient_comm"],
            reduce_s_per_byte_K2=k2["reduce_s"] / (4 * P),
            model=[model(P, cfg["batch"], local, K) for K in MODEL_K],
        )
    load_end = _load()
    results["load_average_1min_end"] = load_end
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)

    ms = lambda v: f"{1e3 * v:.2f}"  # noqa: E731
    print(f"Load average (1 min) {load_start:.1f} at the start, {load_end:.1f} at the end, on "
          f"{os.cpu_count()} cores. This machine may be shared (up to 8 agents at once): with a "
          "load above the cores, wall times vary between runs and K = 2 ranks rarely get a core "
          "each; rerun on a quiet machine for the figures of record.")
    print(f"\nms per step (best of {ROUNDS} epochs; async: one short epoch). K=2 alternates "
          "epochs without overlap, with it (default buckets of 1 MiB) and, where the buckets "
          "join layers, with every layer on its own (bucket_bytes=0), in the same processes; "
          "'overlap/off' is the median over those pairs of the step-time ratio (below 1: "
          "overlap is faster). async = MPICH's progress thread (MPIR_CVAR_ASYNC_PROGRESS=1).")
    print("| config | batch | K=1 | K=2 | K=2 overlap | overlap/off | per-layer/off | K=2 async "
          "| K=2 async overlap | speedup K=2 / overlap / async overlap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg in chosen.items():
        r = results[name]
        k1, k2, ka = (r["runs"][k] for k in ("K1", "K2", "K2_async"))
        per = r["per_layer_step_ratio"]
        print(f"| {name} | {cfg['batch']} | {ms(k1['step_s'])} | {ms(k2['step_s'])} "
              f"| {ms(k2['overlap']['step_s'])} | {r['overlap_step_ratio']:.3f} "
              f"| {'=' if per is None else format(per, '.3f')} "
              f"| {ms(ka['step_s'])} | {ms(ka['overlap']['step_s'])} | {r['speedup']:.2f} / "
              f"{r['speedup_overlap']:.2f} / {r['speedup_overlap_async']:.2f} |")
    print("\nCommunication, ms per step of K=2 (rank 0, best epoch): the shard losses' "
          "allgather; the gradient's reduce-scatter (with overlap: the time inside its "
          "non-blocking calls, and of that the final wait); the parameters' allgather "
          "(share). A rank's wait for the slower one lands in the losses' allgather without "
          "overlap and in the final wait with it, so 'overlapped' compares the two together: "
          "1 - median over the pairs of (losses + exchange with overlap) / (without).")
    print("| config | run | total | losses | exchange | share | total, overlap | losses, "
          "overlap | exchange, overlap | (final wait) | share, overlap | overlapped "
          "| requests/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in chosen:
        r = results[name]
        for label, key in (("no async", "K2"), ("async", "K2_async")):
            a = r["runs"][key]
            o = a["overlap"]
            frac = r["overlapped_fraction" + ("_async" if key == "K2_async" else "")]
            print(f"| {name} | {label} | {ms(a['comm_s'])} ({a['comm_s'] / a['step_s']:.0%}) "
                  f"| {ms(a['losses_s'])} | {ms(a['exchange_s'])} | {ms(a['share_s'])} "
                  f"| {ms(o['comm_s'])} ({o['comm_s'] / o['step_s']:.0%}) | {ms(o['losses_s'])} "
                  f"| {ms(o['exchange_s'])} | {ms(o['wait_s'])} | {ms(o['share_s'])} "
                  f"| {'none: one bucket' if not o['requests_per_step'] else format(frac, '.0%')} "
                  f"| {o['requests_per_step']:.0f} |")
    print("\n| config | reduction alone ns/byte K=2 | shard gradient CPU ms K=1 / K=2 |")
    print("|---|---|---|")
    for name in chosen:
        r = results[name]
        print(f"| {name} | {1e9 * r['reduce_s_per_byte_K2']:.2f} "
              f"| {ms(r['runs']['K1']['grad_cpu_s_max_rank'])} / "
              f"{ms(r['runs']['K2']['grad_cpu_s_max_rank'])} |")
    print(f"\nModel: {NETWORK_GBPS:g} Gb/s, {LATENCY_S * 1e6:g} us per message; "
          "compute = this machine's 1-thread shard gradient")
    print("| config | K | shard gradient ms (ideal t1/K) | owner combine+update ms | comm ms "
          "| step ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for name in chosen:
        for m in results[name]["model"]:
            print(f"| {name} | {m['K']} | {1e3 * m['compute_shard_s']:.3f} "
                  f"({1e3 * m['compute_ideal_s']:.3f}) | {1e3 * m['owner_s']:.3f} "
                  f"| {1e3 * m['comm_s']:.3f} | {1e3 * m['step_s']:.3f} | {m['speedup']:.2f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
