"""Output of the benchmark: ratios, the stdout table and the bar chart."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench import fma_peak
from bench.configs import CONFIGS
from bench.peers import PEERS

Result = dict[str, Any]


def _key(spec: dict[str, Any]) -> tuple[str, int]:
    return spec["dtype"], spec["threads"]


def _round(spec: dict[str, Any]) -> int:
    """The round of a measurement (``--rounds``; 0 in a run of one round)."""
    return spec.get("round", 0)


def _what(spec: dict[str, Any]) -> tuple[Any, ...]:
    """What a measurement measures, whatever its round."""
    return (spec["kind"], spec.get("peer"), spec.get("config"), *_key(spec))


def add_ratios(results: list[Result]) -> list[Result]:
    """Add ``fastbp_ratio`` and ``matmul_fraction`` to each successful peer result.

    ``fastbp_ratio`` is fastbp's samples/s over the peer's on the same
    configuration, dtype and thread count in the same run (> 1: fastbp is
    faster).  ``matmul_fraction`` is the peer's GFLOP/s over the numpy matmul
    GFLOP/s measured for the same dtype and thread count.  Both within one
    round (``--rounds``).
    """
    matmul = {(*_key(r["spec"]), _round(r["spec"])): r for r in results
              if r["spec"]["kind"] == "matmul" and r["status"] == "ok"}
    fastbp = {(r["spec"]["config"], *_key(r["spec"]), _round(r["spec"])): r for r in results
              if r["spec"].get("peer") == "fastbp" and r["status"] == "ok"}
    for r in results:
        if r["spec"]["kind"] != "peer" or r["status"] != "ok":
            continue
        f = fastbp.get((r["spec"]["config"], *_key(r["spec"]), _round(r["spec"])))
        r["fastbp_ratio"] = f["samples_per_s"] / r["samples_per_s"] if f else None
        m = matmul.get((*_key(r["spec"]), _round(r["spec"])))
        r["matmul_fraction"] = r["gflops"] / m["gflops"] if m else None
    return results


def merge_rounds(results: list[Result]) -> list[Result]:
    """One result per measurement, whatever the number of rounds.

    A measurement made in one round is returned as it is.  Of one made in
    several, the round with the median samples/s (the lower of the two
    middle ones) stands for it, with ``fastbp_ratio`` the median of the
    rounds' ratios and ``rounds``: each round's samples/s (None where it
    failed) and which round stands.  Failed rounds are left out unless all
    failed (then the first stands).
    """
    groups: dict[tuple[Any, ...], list[Result]] = {}
    for r in results:
        groups.setdefault(_what(r["spec"]), []).append(r)
    out = []
    for rs in groups.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        ok = [r for r in rs if r["status"] == "ok"]
        if not ok:
            out.append(rs[0])
            continue
        value = "samples_per_s" if rs[0]["spec"]["kind"] == "peer" else "gflops"
        ok.sort(key=lambda r: r[value])
        mid = dict(ok[(len(ok) - 1) // 2])
        ratios = [r["fastbp_ratio"] for r in ok if r.get("fastbp_ratio") is not None]
        if ratios:
            mid["fastbp_ratio"] = statistics.median(ratios)
        mid["rounds"] = {"n": len(rs), "stands": _round(mid["spec"]),
                         value: [r.get(value) if r["status"] == "ok" else None for r in rs]}
        out.append(mid)
    return out


#: Peers that are never "the best peer": fastbp itself and its pure-Python reference.
NOT_PEERS = ("fastbp", "reference")

#: The configuration whose fastbp GFLOP/s is stated as a fraction of the FMA peak.
PEAK_CONFIG = "large"


def best_peers(results: list[Result]) -> list[dict[str, Any]]:
    """Per (config, dtype, threads) of the run: the fastest peer other than
    fastbp (and its reference) and fastbp's samples/s over that peer's.

    Over several rounds (``--rounds``): ``ratio`` is the median of the
    rounds' ratios, each fastbp's samples/s over the fastest other peer's of
    the same round; samples/s are (lower) medians over the rounds, ``best_peer`` the
    peer with the highest median; ``rounds`` holds each round's ratio and
    best peer.

    Returns
    -------
    list of dict
        ``config``, ``dtype``, ``threads``, ``fastbp`` (samples/s or None),
        ``best_peer``, ``best`` (its samples/s), ``ratio`` (fastbp / best, >
        1: fastbp is faster), ``peers`` (samples/s of each timed peer) and,
        over several rounds, ``rounds``.
    """
    out = []
    ok = [r for r in results if r["spec"]["kind"] == "peer" and r["status"] == "ok"]
    keys = dict.fromkeys((r["spec"]["config"], *_key(r["spec"])) for r in results
                         if r["spec"]["kind"] == "peer")
    for cfg, dtype, threads in keys:
        mine = [r for r in ok if (r["spec"]["config"], *_key(r["spec"])) == (cfg, dtype, threads)]
        rounds = sorted({_round(r["spec"]) for r in mine})
        per_round = []   # (fastbp, {peer: samples/s} of the others) of each round
        for rnd in rounds:
            rs = {r["spec"]["peer"]: r["samples_per_s"] for r in mine if _round(r["spec"]) == rnd}
            per_round.append((rs.get("fastbp"),
                              {p: v for p, v in rs.items() if p not in NOT_PEERS}))
        ratios = [f / max(o.values()) for f, o in per_round if f and o]
        best_each = [max(o, key=o.__getitem__) if o else None for _, o in per_round]
        peers = dict.fromkeys(r["spec"]["peer"] for r in mine)
        med = {p: statistics.median_low([r["samples_per_s"] for r in mine
                                         if r["spec"]["peer"] == p]) for p in peers}
        others = {p: v for p, v in med.items() if p not in NOT_PEERS}
        best = max(others, key=others.__getitem__) if others else None
        entry = {"config": cfg, "dtype": dtype, "threads": threads, "fastbp": med.get("fastbp"),
                 "best_peer": best, "best": others.get(best) if best else None,
                 "ratio": statistics.median(ratios) if ratios else None, "peers": med}
        if len(rounds) > 1:
            entry["rounds"] = {"n": len(rounds), "ratio": ratios, "best_peer": best_each}
        out.append(entry)
    return out


def peak_fractions(results: list[Result], fma: dict[str, Any] | None) -> list[dict[str, Any]]:
    """fastbp's GFLOP/s on :data:`PEAK_CONFIG` as a fraction of the FMA peak
    of the same dtype and thread count: of the best ISA measured, and of the
    ISA fastbp's GEMM ran (``peer_info.gemm_isa``)."""
    out = []
    for r in results:
        s = r["spec"]
        if s["kind"] != "peer" or s["peer"] != "fastbp" or s["config"] != PEAK_CONFIG \
                or r["status"] != "ok":
            continue
        best = fma_peak.peak(fma, s["dtype"], s["threads"])
        isa = (r.get("peer_info") or {}).get("gemm_isa")
        own = fma_peak.peak(fma, s["dtype"], s["threads"], isa) if isa else None
        out.append({"config": s["config"], "dtype": s["dtype"], "threads": s["threads"],
                    "gflops": r["gflops"], "gemm_isa": isa,
                    "peak_gflops": best[0] if best else None,
                    "peak_isa": best[1] if best else None,
                    "fraction": r["gflops"] / best[0] if best else None,
                    "own_isa_peak_gflops": own[0] if own else None,
                    "own_isa_fraction": r["gflops"] / own[0] if own else None})
    return out


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
    """The results as a plain-text table, one block per (dtype, threads); a
    measurement of several rounds is its median round (:func:`merge_rounds`)."""
    results = merge_rounds(doc["results"])
    out: list[str] = []
    cols = (f"{'config':<30} {'peer':<10} {'samples/s':>11} {'GFLOP/s':>8} "
            f"{'%matmul':>7} {'fastbp x':>8} {'peak MiB':>8}  note")
    notes: dict[str, str] = {}
    refused: list[str] = []
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
                if r["status"] == "refused":
                    refused.append(f"{s['peer']} on {label} {dtype} {threads}t: "
                                   f"{r.get('note', '')}")
                out.append(f"{label:<30} {s['peer']:<10} {r['status']:>11}  {r.get('note', '')}")
                continue
            frac = r.get("matmul_fraction")
            pct = "-" if frac is None else f"{100 * frac:.1f}%"
            note = r.get("note", "")
            if "rounds" in r:
                sps = [x for x in r["rounds"]["samples_per_s"] if x is not None]
                note = (f"median of {len(sps)} rounds, {min(sps):,.0f}-{max(sps):,.0f}; "
                        + note).rstrip("; ")
            out.append(
                f"{label:<30} {s['peer']:<10} {r['samples_per_s']:>11,.0f} "
                f"{_num(r['gflops']):>8} {pct:>7} {_num(r.get('fastbp_ratio'), 'x'):>8} "
                f"{r['peak_rss_mib']:>8.1f}  {note}")
    meta = doc["meta"]
    out += [
        "",
        f"samples/s and GFLOP/s: {meta['timing']} (one epoch = shuffled mini-batch SGD "
        "on random data, squared error, identity output);",
        f"  GFLOP/s counts {meta['flops_per_sample']};",
        "  %matmul = GFLOP/s over the numpy matmul GFLOP/s of the same dtype and threads;",
        "  fastbp x = fastbp samples/s over the peer's, same config/dtype/threads, same run"
        + (" (several rounds: the median of the rounds' ratios)." if meta.get("rounds", 1) > 1
           else "."),
        f"peak MiB: {meta['memory']}.",
    ]
    out.append("Every peer was first checked: its parameters after the first (warm-up) "
               "epoch against a float64 numpy run of the same epoch (bench/verify.py).")
    out += [f"note: {p} skipped: {n}" for p, n in notes.items()]
    out += [f"REFUSED (failed the float64 check, not timed): {x}" for x in refused]
    loads = [r["loadavg_1min"] for r in results if "loadavg_1min" in r]
    cpus = doc["environment"].get("cpu_count") or 1
    if loads and max(loads) > cpus:
        out.append(f"WARNING: the 1-minute load average reached {max(loads):.1f} on {cpus} "
                   "CPUs during the run: other processes competed, figures are noisy "
                   "(see loadavg_1min per result in the JSON).")
    return "\n".join(out)


def best_table(doc: dict[str, Any]) -> str:
    """Per (config, dtype, threads): the best peer and fastbp's ratio to it."""
    rounds = any("rounds" in b for b in doc["best"])
    cols = (f"{'config':<30} {'dtype':<7} {'thr':>3} {'fastbp':>11} {'best peer':<13} "
            f"{'its samples/s':>13} {'fastbp/best':>11}" + ("  per round" if rounds else ""))
    out = ["", "== fastbp against the best peer (fastest other than fastbp and its "
               "reference, same config/dtype/threads, same run)", cols, "-" * len(cols)]
    for b in doc["best"]:
        f = "-" if b["fastbp"] is None else f"{b['fastbp']:,.0f}"
        best = "-" if b["best"] is None else f"{b['best']:,.0f}"
        per = ""
        if "rounds" in b:
            per = "  " + " ".join(f"{x:.2f}" for x in b["rounds"]["ratio"])
        out.append(f"{CONFIGS[b['config']].label:<30} {b['dtype']:<7} {b['threads']:>3} "
                   f"{f:>11} {b['best_peer'] or '-':<13} {best:>13} "
                   f"{_num(b['ratio'], 'x'):>11}{per}")
    if rounds:
        out.append("Several rounds: samples/s are medians over the rounds; fastbp/best is the "
                   "median of the rounds' ratios (per round: fastbp over that round's fastest "
                   "other peer), listed in round order.")
    return "\n".join(out)


def fma_table(doc: dict[str, Any]) -> str:
    """The FMA peak per ISA and fastbp's GEMM efficiency on the large config."""
    fma = doc["fma_peak"]
    out = ["", "== FMA peak (bench/c/fma_peak.c: register-resident chains of independent "
               "FMAs), GFLOP/s"]
    if fma.get("status") != "ok":
        return "\n".join(out + [f"not measured: {fma.get('note', '')}"])
    out.append(f"{'isa':<7} {'dtype':<8} {'1 thread':>9} {'2 threads':>9}")
    for r in fma["results"]:
        if not r.get("supported"):
            out.append(f"{r['isa']:<7} {r['dtype']:<8} not supported by this CPU")
            continue
        g = r["gflops"]
        out.append(f"{r['isa']:<7} {r['dtype']:<8} {g.get('1', 0):>9.1f} {g.get('2', 0):>9.1f}")
    for p in doc.get("peak_fraction") or []:
        if p["fraction"] is None:
            continue
        own = "" if p["own_isa_fraction"] is None or p["gemm_isa"] == p["peak_isa"] else \
            f"; {100 * p['own_isa_fraction']:.1f}% of its own ISA's ({p['gemm_isa']})"
        out.append(f"fastbp {CONFIGS[p['config']].label}, {p['dtype']}, {p['threads']} "
                   f"thread(s), GEMM {p['gemm_isa']}: {p['gflops']:.1f} GFLOP/s = "
                   f"{100 * p['fraction']:.1f}% of the {p['peak_isa']} peak "
                   f"{p['peak_gflops']:.1f}{own}")
    if fma.get("loadavg_1min", 0) > (doc["environment"].get("cpu_count") or 1):
        out.append(f"WARNING: load average {fma['loadavg_1min']:.1f} while measuring the "
                   "peak: the 2-thread figures are low")
    return "\n".join(out)


def busy_table(busy: dict[str, Any]) -> str:
    """The busy-core case: fastbp's 2-thread over 1-thread speed per config."""
    b = busy["busy_process"]
    out = ["", f"== one core busy: a busy-looping process pinned to CPU {b['cpu']} "
               f"(of {b['cpus']}), fastbp {busy['dtype']}, {busy['rounds']} interleaved round(s)",
           f"{'config':<30} {'1 thread':>11} {'2 threads':>11} {'2t / 1t':>8} "
           f"{'median':>7}  per round"]
    out.append("-" * len(out[-1]))
    for cfg, s in busy["summary"].items():
        rounds = " ".join(f"{x:.2f}" for x in s["ratio_per_round"])
        one, two = s["samples_per_s_1t"], s["samples_per_s_2t"]
        out.append(f"{CONFIGS[cfg].label:<30} {one or 0:>11,.0f} {two or 0:>11,.0f} "
                   f"{_num(s['ratio'], 'x'):>8} {_num(s.get('ratio_median_round'), 'x'):>7}"
                   f"  {rounds}")
    out.append("samples/s: the median timed epoch of each run, best run of the rounds; "
               "2t / 1t: of those bests; median: of the rounds' 2t / 1t (each round's "
               "two runs minutes apart at most); > 1: the second thread helps despite "
               "the busy core.")
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
    ok = [r for r in merge_rounds(doc["results"])
          if r["spec"]["kind"] == "peer" and r["status"] == "ok"]
    configs = list(dict.fromkeys(r["spec"]["config"] for r in ok))
    if not ok:
        return "note: no results to plot"
    peers = list(dict.fromkeys(r["spec"]["peer"] for r in ok))
    groups = list(dict.fromkeys(_key(r["spec"]) for r in ok))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.6 * len(configs) + 1, 4.8),
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
        labels = []
        for d, t in groups:
            b = next((b for b in doc.get("best") or [] if (b["config"], b["dtype"],
                                                           b["threads"]) == (cfg, d, t)), None)
            extra = (f"\nfastbp {b['ratio']:.2f}x\n{b['best_peer']}"
                     if b and b["ratio"] is not None else "")
            labels.append(f"{d.replace('float', 'f')} {t}t{extra}")
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(CONFIGS[cfg].label, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("samples/s (log), higher is better")
    axes[0][0].set_xlabel("under each group: fastbp / best peer, and that peer", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in peers]
    fig.legend(handles, peers, loc="upper center", bbox_to_anchor=(0.5, 0.945), fontsize=8,
               ncol=len(peers), frameon=False)
    fig.suptitle("One epoch of mini-batch SGD, samples/s: " + doc["meta"]["timing"],
                 fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.89))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"
