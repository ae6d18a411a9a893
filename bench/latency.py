"""``python -m bench.latency``: the per-call latency of predict (issue 11).

Measures, per call, the best time over many short timeit repeats (a repeat
lasts about a millisecond, so that on a busy machine some repeats run
undisturbed; the best of them is fairly robust to other load, the mean is
not):

* ``fastbp.MLP.predict`` of a 30-64-2 ReLU/softmax float32 network on 1 row
  of float32 and of float64 input, and on batches of 10, 100 and 10,000
  rows (100 and 10,000 rows on 1 and 2 threads: the parallel path; 10,000
  rows also with float64 input);
* ``fastbp.sklearn.MLPClassifier`` (30-64-1, binary: a logistic output, as
  scikit-learn builds it; float64, scikit-learn's default) ``predict_proba``
  and ``predict`` on 1 row, and ``MLPRegressor`` (30-64-2) ``predict``;
* references when installed: PyTorch (the same 30-64-2 float32 network,
  ``torch.inference_mode()``, a tensor made once) and scikit-learn's own
  ``MLPClassifier.predict_proba`` / ``predict`` on 1 row.

``--before DIR`` times a second fastbp checkout (with its kernels built in
place, e.g. ``git archive main | tar -x -C DIR`` and ``python setup.py
build_ext --inplace`` there) in the same run: each implementation runs in a
subprocess of its own, alternating rounds, and each figure is the best over
the rounds.  The load average is printed before and after.

Usage: ``python -m bench.latency [--before DIR] [--rounds N] [--quick] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent

# (key, label) in the order of the table.
CASES = [
    ("predict_1_f32", "MLP.predict 30-64-2, 1 row, float32 X"),
    ("predict_1_f64", "MLP.predict 30-64-2, 1 row, float64 X"),
    ("predict_10", "MLP.predict, 10 rows"),
    ("predict_100", "MLP.predict, 100 rows, 2 threads"),
    ("predict_100_t1", "MLP.predict, 100 rows, 1 thread"),
    ("predict_10k_t1", "MLP.predict, 10,000 rows, 1 thread"),
    ("predict_10k_t2", "MLP.predict, 10,000 rows, 2 threads"),
    ("predict_10k_f64", "MLP.predict, 10,000 rows float64 X, 2 threads"),
    ("sk_proba_1", "sklearn MLPClassifier.predict_proba, 1 row"),
    ("sk_predict_1", "sklearn MLPClassifier.predict, 1 row"),
    ("sk_reg_1", "sklearn MLPRegressor.predict, 1 row"),
    ("torch_1", "ref: torch inference_mode, 1 row"),
    ("sklearn_proba_1", "ref: scikit-learn MLPClassifier.predict_proba, 1 row"),
    ("sklearn_predict_1", "ref: scikit-learn MLPClassifier.predict, 1 row"),
]


def best_us(fn: Callable[[], object], quick: bool) -> float:
    """Best time per call in microseconds over many ~1 ms timeit repeats."""
    fn()
    t = timeit.Timer(fn)
    number, elapsed = 1, 0.0
    while elapsed < 1e-3 and number < 1 << 20:  # calls per repeat: about 1 ms
        elapsed = t.timeit(number)
        if elapsed < 1e-3:
            number *= 2
    repeats = 5 if quick else max(20, min(300, int(0.3 / max(elapsed, 1e-6))))
    return min(t.repeat(repeat=repeats, number=number)) / number * 1e6


def measure(quick: bool) -> Dict[str, float]:
    """Every case this interpreter can run: {key: microseconds per call}."""
    import numpy as np

    import fastbp

    warnings.simplefilter("ignore")  # ConvergenceWarning of the short fits
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10000, 30))
    X32 = X.astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    net = fastbp.MLP([30, 64, 2], activation="relu", output="softmax", loss="cross_entropy",
                     dtype="float32", seed=0)
    net.fit(X32[:2000], y[:2000], epochs=1, batch_size=32, lr=0.05, seed=0)
    res: Dict[str, float] = {}
    one32, one64 = X32[:1].copy(), X[:1].copy()
    with fastbp.threads(2):
        res["predict_1_f32"] = best_us(lambda: net.predict(one32), quick)
        res["predict_1_f64"] = best_us(lambda: net.predict(one64), quick)
        b10, b100 = X32[:10].copy(), X32[:100].copy()
        res["predict_10"] = best_us(lambda: net.predict(b10), quick)
        res["predict_100"] = best_us(lambda: net.predict(b100), quick)
        with fastbp.threads(1):
            res["predict_100_t1"] = best_us(lambda: net.predict(b100), quick)
            res["predict_10k_t1"] = best_us(lambda: net.predict(X32), quick)
        res["predict_10k_t2"] = best_us(lambda: net.predict(X32), quick)
        res["predict_10k_f64"] = best_us(lambda: net.predict(X), quick)
    n_fit = 500 if quick else 2000
    try:
        from fastbp.sklearn import MLPClassifier, MLPRegressor
    except ImportError:
        MLPClassifier = MLPRegressor = None  # type: ignore[assignment,misc]
    if MLPClassifier is not None:
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=3, random_state=0, n_threads=2)
        clf.fit(X[:n_fit], y[:n_fit])
        reg = MLPRegressor(hidden_layer_sizes=(64,), max_iter=3, random_state=0, n_threads=2)
        reg.fit(X[:n_fit], X[:n_fit, :2])
        res["sk_proba_1"] = best_us(lambda: clf.predict_proba(one64), quick)
        res["sk_predict_1"] = best_us(lambda: clf.predict(one64), quick)
        res["sk_reg_1"] = best_us(lambda: reg.predict(one64), quick)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(2)
        model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 2), torch.nn.Softmax(dim=1))
        t1 = torch.from_numpy(one32)

        def torch_call() -> object:
            with torch.inference_mode():
                return model(t1)

        res["torch_1"] = best_us(torch_call, quick)
    try:
        from sklearn.neural_network import MLPClassifier as SkMLP
    except ImportError:
        SkMLP = None
    if SkMLP is not None:
        sk = SkMLP(hidden_layer_sizes=(64,), max_iter=3, random_state=0).fit(X[:n_fit], y[:n_fit])
        res["sklearn_proba_1"] = best_us(lambda: sk.predict_proba(one64), quick)
        res["sklearn_predict_1"] = best_us(lambda: sk.predict(one64), quick)
    return res


def _worker(path: Path, quick: bool) -> Dict[str, float]:
    """measure() in a fresh interpreter that imports fastbp from ``path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # This file run as a script: the checkout's own bench/ (if any) is not imported.
    args = [sys.executable, str(Path(__file__).resolve()), "--worker"] + (["--quick"] if quick else [])
    out = subprocess.run(args, env=env, cwd=str(path), capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"bench.latency: the run with {path} failed:\n{out.stderr}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def table(results: Dict[str, Dict[str, float]]) -> str:
    """A markdown table: one row per case, one column per implementation."""
    names = list(results)
    head = "| case | " + " | ".join(f"{n} (µs)" for n in names)
    head += " | after / before |" if len(names) == 2 else " |"
    lines = [head, "|" + "---|" * (len(names) + 1 + (len(names) == 2))]
    for key, label in CASES:
        vals = [results[n].get(key) for n in names]
        if all(v is None for v in vals):
            continue
        cells = [f"{v:.2f}" if v is not None else "-" for v in vals]
        row = f"| {label} | " + " | ".join(cells) + " |"
        if len(names) == 2:
            a, b = vals[1], vals[0]
            row += f" {a / b:.2f} |" if a is not None and b is not None else " - |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, help="another fastbp checkout to time in the same run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per implementation")
    p.add_argument("--quick", action="store_true", help="a short smoke run (few repeats)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:   # one implementation, in this interpreter (see _worker)
        print("RESULT", json.dumps(measure(args.quick)))
        return 0
    print(f"load average before: {_load()}  (2 cores shared: best-of timings, see the docstring)")
    impls = {"before": args.before.resolve()} if args.before else {}
    impls["after"] = ROOT
    results: Dict[str, Dict[str, float]] = {name: {} for name in impls}
    for _ in range(max(1, args.rounds)):
        for name, path in impls.items():
            for key, us in _worker(path, args.quick).items():
                results[name][key] = min(us, results[name].get(key, float("inf")))
    print(f"load average after: {_load()}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
