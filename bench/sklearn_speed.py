"""fastbp.sklearn against scikit-learn's own MLP: fit times, same solver, same result.

``python -m bench.sklearn_speed`` (from the repository root) prints a
markdown table: for each data set (digits; a 50,000 x 20 ``make_classification``
set), solver (adam, sgd, lbfgs) and thread count (1, 2), the best of a few
``fit`` times of ``fastbp.sklearn.MLPClassifier`` and of
``sklearn.neural_network.MLPClassifier`` with the same parameters, and their
ratio.  scikit-learn's numpy/BLAS threads are set to the same count with
threadpoolctl, fastbp's with its ``n_threads``.

Both run the same number of epochs (``n_iter_no_change=inf`` for sgd and adam)
or L-BFGS iterations (``tol=0``), in float64.  Before any timing, each case
checks that the two fits agree: ``loss_curve_`` (adam, sgd) or ``loss_``
(lbfgs) within 1e-6 relative, equal ``n_iter_``.  The two estimators are
timed interleaved (fastbp, scikit-learn, fastbp, ...) in one process, so a
busy machine slows both alike; the table says the load average.

Options: ``--repeats N`` (default 3), ``--quick`` (fewer epochs, for a smoke
test), ``--cases digits,tabular``, ``--solvers adam,sgd,lbfgs``,
``--threads 1,2``, ``--profile`` (where fastbp's time goes, per case: a
cProfile of one fit on the process-time clock and the share of its CPU time
spent in the compiled epoch or loss/gradient calls).

Besides wall time the table gives each fit's CPU time (``time.process_time``,
all threads of the process): on a shared machine a 1-thread fit's CPU time
moves far less with the load than its wall time.  The last column is
fastbp's arithmetic rate (sgd, adam: the GEMMs' multiply-adds x 2 per CPU
second), to compare with the machine's FMA peak (``bench/fma_peak.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np


def _data(name: str) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits, make_classification
    from sklearn.preprocessing import StandardScaler

    if name == "digits":
        X, y = load_digits(return_X_y=True)
    else:
        X, y = make_classification(n_samples=50_000, n_features=20, n_informative=10,
                                   n_classes=3, random_state=0)
    return StandardScaler().fit_transform(X), y


# (data set, solver) -> the estimator's parameters (both estimators get the same).
def _params(data: str, solver: str, quick: bool) -> Dict[str, Any]:
    kw: Dict[str, Any] = dict(hidden_layer_sizes=(100,), solver=solver, random_state=0,
                              alpha=1e-4)
    if solver == "lbfgs":
        kw.update(max_iter=10 if quick else 40, tol=0.0)
    else:
        epochs = {"digits": 30, "tabular": 5}[data]
        kw.update(max_iter=2 if quick else epochs, n_iter_no_change=np.inf, tol=0.0,
                  learning_rate_init=0.01 if solver == "sgd" else 0.001)
    return kw


def _agree(ours: Any, theirs: Any, solver: str) -> float:
    """Relative difference of the two fits' losses (asserting equal iteration counts)."""
    if ours.n_iter_ != theirs.n_iter_:
        raise AssertionError(f"n_iter_ differs: {ours.n_iter_} vs {theirs.n_iter_}")
    if solver == "lbfgs":
        a, b = np.array([ours.loss_]), np.array([theirs.loss_])
    else:
        a, b = np.asarray(ours.loss_curve_), np.asarray(theirs.loss_curve_)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _fit_time(est: Any, X: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """(wall, CPU) seconds of est.fit(X, y); CPU: this process, all its threads."""
    c0, t0 = time.process_time(), time.perf_counter()
    est.fit(X, y)
    return time.perf_counter() - t0, time.process_time() - c0


def _flops(X: np.ndarray, n_out: int, kw: Dict[str, Any]) -> float:
    """Multiply-adds x 2 of the sgd/adam fit: per sample, the forward pass, the
    weight gradients and the deltas of every layer but the first."""
    sizes = [X.shape[1], *kw["hidden_layer_sizes"], n_out]
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2.0 * X.shape[0] * kw["max_iter"] * (2 * sum(pairs) + sum(pairs[1:]))


def run(cases: List[str], solvers: List[str], thread_counts: List[int], repeats: int,
        quick: bool, profile: bool) -> List[Dict[str, Any]]:
    from sklearn.base import clone
    from sklearn.neural_network import MLPClassifier as SkMLP
    from threadpoolctl import threadpool_limits

    from fastbp.sklearn import MLPClassifier

    rows = []
    for data in cases:
        X, y = _data(data)
        for solver in solvers:
            kw = _params(data, solver, quick)
            for nt in thread_counts:
                ours = MLPClassifier(n_threads=nt, **kw)
                theirs = SkMLP(**kw)
                with threadpool_limits(nt), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # the check: the same fit, to rounding
                    diff = _agree(clone(ours).fit(X, y), clone(theirs).fit(X, y), solver)
                    if diff > 1e-6:
                        raise AssertionError(f"{data} {solver}: losses differ by {diff:.2e}")
                    t_ours, t_theirs = [], []
                    for _ in range(repeats):
                        t_ours.append(_fit_time(clone(ours), X, y))
                        t_theirs.append(_fit_time(clone(theirs), X, y))
                    if profile:
                        _profile(clone(ours), X, y)
                row = dict(data=data, solver=solver, threads=nt, n_iter=kw["max_iter"],
                           fastbp=min(t[0] for t in t_ours), sklearn=min(t[0] for t in t_theirs),
                           fastbp_cpu=min(t[1] for t in t_ours),
                           sklearn_cpu=min(t[1] for t in t_theirs), diff=diff)
                row["ratio"] = row["sklearn"] / row["fastbp"]
                row["cpu_ratio"] = row["sklearn_cpu"] / row["fastbp_cpu"]
                row["gflops"] = (_flops(X, len(np.unique(y)), kw) / row["fastbp_cpu"] / 1e9
                                 if solver != "lbfgs" else float("nan"))
                rows.append(row)
                print(f"{data:8s} {solver:6s} {nt}t  wall: fastbp {row['fastbp']:.3f} s  "
                      f"sklearn {row['sklearn']:.3f} s  {row['ratio']:.1f}x;  CPU: "
                      f"{row['fastbp_cpu']:.3f} s {row['sklearn_cpu']:.3f} s "
                      f"{row['cpu_ratio']:.1f}x  (losses agree to {diff:.1e})",
                      file=sys.stderr, flush=True)
    return rows


def _profile(est: Any, X: np.ndarray, y: np.ndarray) -> None:
    import cProfile
    import pstats

    # the process-time clock: on a shared machine wall-clock profiles mostly
    # measure the other processes
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    est.fit(X, y)
    prof.disable()
    total = time.process_time() - c0
    stats = pstats.Stats(prof, stream=sys.stderr)
    # the epoch closures of fastbp/sklearn.py and fastbp/model.py: one compiled
    # call each (nested for sgd, hence the max); lbfgs: the loss/gradient calls
    inner = [ct for (_, _, name), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
             if name in ("epoch", "mean_loss_grad")]
    if inner and total > 0:
        print(f"compiled calls: {max(inner):.3f} of {total:.3f} CPU s "
              f"({100 * max(inner) / total:.0f}%)", file=sys.stderr)
    stats.sort_stats("tottime").print_stats(12)


def table(rows: List[Dict[str, Any]]) -> str:
    sizes = {"digits": "digits (1,797 x 64, 10 classes)",
             "tabular": "make_classification (50,000 x 20, 3 classes)"}
    out = ["| data | solver | epochs / iterations | threads | fastbp wall (s) "
           "| scikit-learn wall (s) | speed-up (wall) | fastbp CPU (s) | scikit-learn CPU (s) "
           "| speed-up (CPU) | fastbp GFLOP/s per CPU-s |", "|---" * 11 + "|"]
    for r in rows:
        gf = "-" if r["gflops"] != r["gflops"] else f"{r['gflops']:.1f}"
        out.append(f"| {sizes[r['data']]} | {r['solver']} | {r['n_iter']} | {r['threads']} "
                   f"| {r['fastbp']:.3f} | {r['sklearn']:.3f} | **{r['ratio']:.1f}x** "
                   f"| {r['fastbp_cpu']:.3f} | {r['sklearn_cpu']:.3f} | {r['cpu_ratio']:.1f}x "
                   f"| {gf} |")
    return "\n".join(out)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sklearn_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", default="digits,tabular")
    p.add_argument("--solvers", default="adam,sgd,lbfgs")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    load = os.getloadavg()
    rows = run(a.cases.split(","), a.solvers.split(","),
               [int(t) for t in a.threads.split(",")], a.repeats, a.quick, a.profile)
    load_after = os.getloadavg()
    print(table(rows))
    print(f"\nBest of {a.repeats} fits each, interleaved, float64, hidden_layer_sizes=(100,); "
          f"load average {load[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} CPUs).  CPU: process time of all the process's threads "
          f"(on 1 thread the steadier figure on a busy machine).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
