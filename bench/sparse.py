"""Sparse input: one adam epoch of MLPClassifier, fastbp vs scikit-learn.

``python -m bench.sparse`` builds a TF-IDF-like data set (by default 20,000
rows, 50,000 features, 0.2% non-zeros, 10 classes; scipy CSR), then times
one epoch (``max_iter=1``) of ``fastbp.sklearn.MLPClassifier`` and of
``sklearn.neural_network.MLPClassifier`` with the same parameters (adam, one
hidden layer of 128, ``batch_size="auto"`` = 200, ``random_state=0``) on the
same matrix, float32 and float64 (the matrix's dtype, which the fitted
parameters follow in both), alternating the two, and prints the times, their
ratio and how far apart the fitted weights are (max |difference| over max
|weight|).  Wall times on a shared machine are noisy: the ratios are measured
in one run, interleaved, and the load average is printed with them, as are
the CPU seconds of the process (``time.process_time``), steadier under load;
with one thread (the default) both fits are single-threaded.

Options: ``--rows``, ``--features``, ``--density``, ``--classes``,
``--hidden``, ``--repeat`` (runs of each, the fastest kept), ``--threads``
(fastbp's; scikit-learn's BLAS is capped the same way when threadpoolctl is
installed), ``--dtype float32|float64|both``, ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np


def tfidf_like(n_rows: int, n_features: int, density: float, n_classes: int,
               seed: int = 0) -> Tuple[Any, np.ndarray]:
    """A TF-IDF-like CSR matrix (float64) and labels.

    Each row holds about ``density * n_features`` distinct terms drawn with
    Zipf-like frequencies (exponent 1), valued by a log term count times the
    idf, rows scaled to unit 2-norm; labels are the argmax of a random linear
    map of the rows, so that the task is learnable.
    """
    import scipy.sparse as sps

    rng = np.random.default_rng(seed)
    per_row = np.clip(rng.poisson(density * n_features, n_rows), 1, n_features)
    freq = 1.0 / np.arange(1, n_features + 1)
    freq /= freq.sum()
    rank_to_col = rng.permutation(n_features)
    rows, cols = [], []
    for i, k in enumerate(per_row):
        # k distinct terms: the first k distinct of 3k draws (about k for k << n_features)
        draws = rank_to_col[rng.choice(n_features, size=3 * int(k), p=freq)]
        _, first = np.unique(draws, return_index=True)
        c = np.sort(draws[np.sort(first)[: int(k)]])
        rows.append(np.full(c.size, i))
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    tf = 1.0 + np.log(rng.integers(1, 5, r.size))
    df = np.bincount(c, minlength=n_features)
    idf = np.log((1 + n_rows) / (1 + df)) + 1.0
    X = sps.csr_matrix((tf * idf[c], (r, c)), shape=(n_rows, n_features))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sps.diags(1.0 / np.maximum(norms, 1e-12)) @ X
    X = sps.csr_matrix(X)
    X.sort_indices()
    y = np.asarray((X @ rng.standard_normal((n_features, n_classes))).argmax(axis=1)).ravel()
    return X, y


def _fit_once(cls: Any, X: Any, y: np.ndarray, hidden: int) -> Tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, the fitted estimator)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after one epoch
        est = cls(hidden_layer_sizes=(hidden,), solver="adam", max_iter=1, random_state=0)
        t0, c0 = time.perf_counter(), time.process_time()
        est.fit(X, y)
        return time.perf_counter() - t0, time.process_time() - c0, est


def run(rows: int, features: int, density: float, classes: int, hidden: int, repeat: int,
        threads: int, dtypes: List[str]) -> Dict[str, Any]:
    """Time both estimators; returns the figures (see the module's notes)."""
    import sklearn
    from sklearn.neural_network import MLPClassifier as SkMLP

    import fastbp
    from fastbp.sklearn import MLPClassifier as FbMLP

    fastbp.set_num_threads(threads)
    limiter: Any = None
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=threads)
    except ImportError:
        pass
    X64, y = tfidf_like(rows, features, density, classes)
    out: Dict[str, Any] = {
        "rows": rows, "features": features, "density": density, "nnz": int(X64.nnz),
        "classes": classes, "hidden": hidden, "threads": threads,
        "sklearn": sklearn.__version__, "gemm_isa": fastbp._kernels.gemm_isa(),
        "load_before": os.getloadavg(), "results": {},
    }
    for name in dtypes:
        X = X64.astype(np.dtype(name))
        fb_t, sk_t, fb_c, sk_c = [], [], [], []
        fb = sk = None
        for _ in range(repeat):  # interleaved: both see the same load
            t, c, fb = _fit_once(FbMLP, X, y, hidden)
            fb_t.append(t)
            fb_c.append(c)
            t, c, sk = _fit_once(SkMLP, X, y, hidden)
            sk_t.append(t)
            sk_c.append(c)
        diff = max(float(np.abs(a - b).max() / np.abs(a).max())
                   for a, b in zip(sk.coefs_ + sk.intercepts_, fb.coefs_ + fb.intercepts_))
        out["results"][name] = {
            "fastbp_s": min(fb_t), "sklearn_s": min(sk_t), "ratio": min(sk_t) / min(fb_t),
            "fastbp_cpu_s": min(fb_c), "sklearn_cpu_s": min(sk_c),
            "cpu_ratio": min(sk_c) / min(fb_c),
            "fastbp_all": fb_t, "sklearn_all": sk_t, "max_rel_weight_diff": diff,
            "coef_dtype": str(fb.coefs_[0].dtype),
        }
    out["load_after"] = os.getloadavg()
    if limiter is not None:
        limiter.unregister()
    return out


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sparse", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--features", type=int, default=50000)
    ap.add_argument("--density", type=float, default=0.002)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args(argv)
    dtypes = ["float32", "float64"] if a.dtype == "both" else [a.dtype]
    res = run(a.rows, a.features, a.density, a.classes, a.hidden, max(1, a.repeat),
              max(1, a.threads), dtypes)
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"adam epoch, {a.rows} x {a.features} CSR, {res['nnz']} non-zeros "
          f"({res['nnz'] / (a.rows * a.features):.2%}), {a.classes} classes, hidden {a.hidden}, "
          f"{res['threads']} thread(s), GEMM {res['gemm_isa']}, scikit-learn {res['sklearn']}")
    print(f"load average before {res['load_before'][0]:.2f}, after {res['load_after'][0]:.2f}")
    for name, r in res["results"].items():
        print(f"{name}: wall fastbp {r['fastbp_s']:.2f} s, scikit-learn {r['sklearn_s']:.2f} s, "
              f"ratio {r['ratio']:.1f}x; CPU fastbp {r['fastbp_cpu_s']:.2f} s, scikit-learn "
              f"{r['sklearn_cpu_s']:.2f} s, ratio {r['cpu_ratio']:.1f}x; weights agree to "
              f"{r['max_rel_weight_diff']:.1e} (relative to max |w|), coefs_ {r['coef_dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
