"""Compare the fit speed of two built source trees, in alternating fresh
processes, pair by pair.

    python tools/ab_trees.py TREE_A TREE_B PAIRS CONFIG THREADS [EPOCHS [DTYPE]]

Each process imports the ``fastbp`` built in its tree (``python setup.py
build_ext --inplace`` there; a worktree of an older commit is the usual A),
fits the harness network CONFIG (bench/configs.py: its sizes, activation and
batch and samples per epoch) with plain SGD on random data, one warm-up
epoch then EPOCHS (default 5) timed ones, and reports its best epoch.  The
order inside a pair alternates (A B, B A, ...).  Prints each tree's best and
median and the per-pair ratio of A's best epoch time over B's (above 1: B is
faster): its median, minimum and maximum.  On a host whose speed drifts by
10-40% within seconds, a pair's ratio is a steadier figure than two separate
runs, and the spread of the ratios says how far to trust it.
"""
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(tree: str, cfg: str, threads: int, epochs: int, dtype: str) -> None:
    sys.path.insert(0, HERE)
    from bench.configs import CONFIGS
    sys.path.insert(0, tree)
    import numpy as np
    import fastbp
    if os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__))) != os.path.abspath(tree):
        raise SystemExit(f"imported {fastbp.__file__}, not the fastbp of {tree}")
    c = CONFIGS[cfg]
    fastbp.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n = c.n_samples
    X = rng.standard_normal((n, c.sizes[0])).astype(dtype)
    Y = rng.standard_normal((n, c.sizes[-1])).astype(dtype)
    net = fastbp.MLP(list(c.sizes), activation=c.activation, output="identity",
                     loss="squared_error", dtype=dtype, seed=0)
    net.fit(X, Y, epochs=1, batch_size=c.batch_size, lr=1e-4, seed=1)
    best = float("inf")
    for _ in range(epochs):
        t = time.perf_counter()
        net.fit(X, Y, epochs=1, batch_size=c.batch_size, lr=1e-4, seed=1)
        best = min(best, time.perf_counter() - t)
    print(f"best {best:.6f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    a, b, pairs, cfg, threads = sys.argv[1:6]
    epochs = sys.argv[6] if len(sys.argv) > 6 else "5"
    dtype = sys.argv[7] if len(sys.argv) > 7 else "float32"

    def run(tree: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--child", tree, cfg, threads, epochs,
                              dtype], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tree}: {out.stderr.strip()}")
        return float(out.stdout.split()[1])

    ta, tb = [], []
    for i in range(int(pairs)):
        if i % 2:
            tb.append(run(b))
            ta.append(run(a))
        else:
            ta.append(run(a))
            tb.append(run(b))
    r = [x / y for x, y in zip(ta, tb)]
    print(f"{cfg} {dtype} {threads} thread(s), {pairs} pairs, best epoch seconds:")
    print(f"  A {a}: best {min(ta):.4f} median {statistics.median(ta):.4f}")
    print(f"  B {b}: best {min(tb):.4f} median {statistics.median(tb):.4f}")
    print(f"  A/B per pair: median {statistics.median(r):.3f} min {min(r):.3f} max {max(r):.3f}")


if __name__ == "__main__":
    main()
