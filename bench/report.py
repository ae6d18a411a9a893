"""Output of the benchmark: ratios, the stdout table and the bar chart."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.configs import CONFIGS
from bench.peers import PEERS

Result = dict[str, Any]


def _key(spec: dict[str, Any]) -> tuple[str, int]:
    return spec["dtype"], spec["threads"]


def add_ratios(results: list[Result]) -> list[Result]:
    """Add ``fastbp_ratio`` and ``matmul_fraction`` to each successful peer result.

    ``fastbp_ratio`` is fastbp's samples/s over the peer's on the same
    configuration, dtype and thread count in the same run (> 1: fastbp is
    faster).  ``matmul_fraction`` is the peer's GFLOP/s over the numpy matmul
    GFLOP/s measured for the same dtype and thread count.
    """
    matmul = {_key(r["spec"]): r for r in results
              if r["spec"]["kind"] == "matmul" and r["status"] == "ok"}
    fastbp = {(r["spec"]["config"], *_key(r["spec"])): r for r in results
              if r["spec"].get("peer") == "fastbp" and r["status"] == "ok"}
    for r in results:
        if r["spec"]["kind"] != "peer" or r["status"] != "ok":
            continue
        f = fastbp.get((r["spec"]["config"], *_key(r["spec"])))
        r["fastbp_ratio"] = f["samples_per_s"] / r["samples_per_s"] if f else None
        m = matmul.get(_key(r["spec"]))
        r["matmul_fraction"] = r["gflops"] / m["gflops"] if m else None
    return results


def header(env: dict[str, Any], quick: bool) -> str:
    """A few lines on the machine and the libraries."""
    v = env["versions"]
    lines = [
        f"fastbp benchmark ({'quick smoke run' if quick else 'full run'})",
        f"CPU: {env.get('cpu')} ({env['cpu_count']} logical CPUs), Python {env['python']}",
        "versions: " + ", ".join(f"{k} {v[k] or 'absent'}" for k in v),
    ]
    for b in [b for b in env.get("blas") or [] if b.get("user_api") == "blas"]:
        lines.append(f"BLAS: {b['internal_api']} {b['version']}, core type "
                     f"(threadpoolctl architecture) {b['architecture']}")
    if env.get("blas") is None:
        lines.append("BLAS: threadpoolctl absent; BLAS threads limited by environment only")
    return "\n".join(lines)


def _num(x: float | None, suffix: str = "") -> str:
    """A number with about three significant digits, ``-`` for None."""
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}{suffix}"
    if abs(x) >= 0.01:
        return f"{x:.3g}{suffix}"
    return f"{x:.1e}{suffix}"


def table(doc: dict[str, Any]) -> str:
    """The results as a plain-text table, one block per (dtype, threads)."""
    results = doc["results"]
    out: list[str] = []
    cols = (f"{'config':<30} {'peer':<10} {'samples/s':>11} {'GFLOP/s':>8} "
            f"{'%matmul':>7} {'fastbp x':>8} {'peak MiB':>8}  note")
    notes: dict[str, str] = {}
    for key in dict.fromkeys(_key(r["spec"]) for r in results):
        dtype, threads = key
        block = [r for r in results if _key(r["spec"]) == key]
        mm = next((r for r in block if r["spec"]["kind"] == "matmul"), None)
        roof = (f"numpy matmul {mm['n']}x{mm['n']}: {mm['gflops']:.1f} GFLOP/s"
                if mm and mm["status"] == "ok" else "numpy matmul: failed")
        out += ["", f"== {dtype}, {threads} thread{'s' * (threads > 1)} -- {roof}", cols,
                "-" * len(cols)]
        for r in block:
            s = r["spec"]
            if s["kind"] != "peer":
                continue
            label = CONFIGS[s["config"]].label
            if r["status"] != "ok":
                if r["status"] == "skipped":
                    notes[s["peer"]] = r.get("note", "")
                out.append(f"{label:<30} {s['peer']:<10} {r['status']:>11}  {r.get('note', '')}")
                continue
            frac = r.get("matmul_fraction")
            pct = "-" if frac is None else f"{100 * frac:.1f}%"
            out.append(
                f"{label:<30} {s['peer']:<10} {r['samples_per_s']:>11,.0f} "
                f"{_num(r['gflops']):>8} {pct:>7} {_num(r.get('fastbp_ratio'), 'x'):>8} "
                f"{r['peak_rss_mib']:>8.1f}  {r.get('note', '')}")
    meta = doc["meta"]
    out += [
        "",
        f"samples/s and GFLOP/s: {meta['timing']} (one epoch = shuffled mini-batch SGD "
        "on random data, squared error, identity output);",
        f"  GFLOP/s counts {meta['flops_per_sample']};",
        "  %matmul = GFLOP/s over the numpy matmul GFLOP/s of the same dtype and threads;",
        "  fastbp x = fastbp samples/s over the peer's, same config/dtype/threads, same run.",
        f"peak MiB: {meta['memory']}.",
    ]
    out += [f"note: {p} skipped: {n}" for p, n in notes.items()]
    loads = [r["loadavg_1min"] for r in results if "loadavg_1min" in r]
    cpus = doc["environment"].get("cpu_count") or 1
    if loads and max(loads) > cpus:
        out.append(f"WARNING: the 1-minute load average reached {max(loads):.1f} on {cpus} "
                   "CPUs during the run: other processes competed, figures are noisy "
                   "(see loadavg_1min per result in the JSON).")
    return "\n".join(out)


def busy_table(busy: dict[str, Any]) -> str:
    """The busy-core case: fastbp's 2-thread over 1-thread speed per config."""
    b = busy["busy_process"]
    out = ["", f"== one core busy: a busy-looping process pinned to CPU {b['cpu']} "
               f"(of {b['cpus']}), fastbp {busy['dtype']}, {busy['rounds']} interleaved round(s)",
           f"{'config':<30} {'1 thread':>11} {'2 threads':>11} {'2t / 1t':>8}  per round"]
    out.append("-" * len(out[-1]))
    for cfg, s in busy["summary"].items():
        rounds = " ".join(f"{x:.2f}" for x in s["ratio_per_round"])
        one, two = s["samples_per_s_1t"], s["samples_per_s_2t"]
        out.append(f"{CONFIGS[cfg].label:<30} {one or 0:>11,.0f} {two or 0:>11,.0f} "
                   f"{_num(s['ratio'], 'x'):>8}  {rounds}")
    out.append("samples/s: the median timed epoch of each run, best run of the rounds; "
               "2t / 1t > 1: the second thread helps despite the busy core.")
    return "\n".join(out)


def plot(doc: dict[str, Any], path: Path) -> str:
    """Draw a bar chart of samples/s to ``path``; returns a line for stdout.

    One panel per configuration, one group of bars per (dtype, threads), one
    bar per peer, log scale.  Nothing is drawn when matplotlib is absent.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "note: matplotlib not installed, no chart drawn"
    ok = [r for r in doc["results"] if r["spec"]["kind"] == "peer" and r["status"] == "ok"]
    configs = list(dict.fromkeys(r["spec"]["config"] for r in ok))
    if not ok:
        return "note: no results to plot"
    peers = list(dict.fromkeys(r["spec"]["peer"] for r in ok))
    groups = list(dict.fromkeys(_key(r["spec"]) for r in ok))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.6 * len(configs) + 1, 4.2),
                             squeeze=False)
    width = 0.8 / len(peers)
    colors = {p: f"C{i}" for i, p in enumerate(PEERS)}
    for ax, cfg in zip(axes[0], configs):
        lowest = min(r["samples_per_s"] for r in ok if r["spec"]["config"] == cfg)
        for j, peer in enumerate(peers):
            xs, ys = [], []
            for g, key in enumerate(groups):
                r = next((r for r in ok if r["spec"]["config"] == cfg
                          and r["spec"]["peer"] == peer and _key(r["spec"]) == key), None)
                if r:
                    xs.append(g + (j - (len(peers) - 1) / 2) * width)
                    ys.append(r["samples_per_s"])
            ax.bar(xs, ys, width, label=peer, color=colors[peer])
        ax.set_yscale("log")
        ax.set_ylim(bottom=10 ** math.floor(math.log10(lowest)))  # bars start a decade down
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{d.replace('float', 'f')}\n{t}t" for d, t in groups])
        ax.set_title(CONFIGS[cfg].label, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("samples/s (log), higher is better")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in peers]
    fig.legend(handles, peers, loc="upper right", fontsize=8, ncol=len(peers))
    fig.suptitle("One epoch of mini-batch SGD, samples/s: " + doc["meta"]["timing"],
                 fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"
