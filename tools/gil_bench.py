"""How much faster two models train in two Python threads than one after the other.

    python tools/gil_bench.py [--sizes 256,256,10] [--n 20000] [--epochs 3] [--repeat 3]

The kernels release the GIL, so with fastbp.set_num_threads(1) two threads
should approach 2x on two free cores.  Prints the serial and threaded wall
times and their ratio (best of --repeat).
"""
import argparse
import os
import threading
import time

import numpy as np

import fastbp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,256,10")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    fastbp.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, sizes[0])).astype(args.dtype)
    y = rng.integers(0, sizes[-1], size=args.n)

    def train(seed: int) -> None:
        net = fastbp.MLP(sizes, dtype=args.dtype, seed=seed)
        net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, lr=0.01, seed=seed)

    train(0)  # warm-up
    serial = threaded = float("inf")
    cpu_threaded = 0.0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        train(1)
        train(2)
        serial = min(serial, time.perf_counter() - t0)
        ts = [threading.Thread(target=train, args=(s,)) for s in (1, 2)]
        c0, t0 = time.process_time(), time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        if wall < threaded:
            threaded, cpu_threaded = wall, time.process_time() - c0
    print(f"sizes={sizes} n={args.n} epochs={args.epochs} batch_size={args.batch_size} "
          f"dtype={args.dtype} isa={fastbp._kernels.gemm_isa()}")
    print(f"serial (two fits, one after the other): {serial:.3f} s")
    print(f"two Python threads at once:             {threaded:.3f} s")
    print(f"speed-up: {serial / threaded:.2f}x")
    # CPU seconds per wall second while the two threads ran: ~2 when they run
    # in parallel; the speed-up can only follow when two cores are free.
    print(f"cores busy during the threaded run: {cpu_threaded / threaded:.2f} "
          f"(usable cores: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
