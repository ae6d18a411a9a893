"""Time fit epochs of a harness network on 1 or 2 threads, optionally with a
busy-looping process pinned to CPU 1 (as ``python -m bench --only-busy``
starts), and print the thread team's counters (``_kernels.team_stats``).

    python tools/busy_stats.py CONFIG THREADS BUSY(0|1) [TREE]

CONFIG: a harness configuration (bench/configs.py: tiny, small, mnist, large,
wide), with the harness's sizes, activation, batch and samples per epoch.

TREE: the source tree whose built ``fastbp`` to import (default: this one).
8 timed epochs after a warm-up one (EPOCHS=N in the environment: N); prints
the median and best epoch, then the counters summed over the timed epochs.
PER_EPOCH=1 in the environment: also each epoch's time, thread 0's CPU time
in it and its team and serial steps (a serial epoch whose CPU time is well
under its wall time shared its core).
FBP_TILE_MODE=0|1|2 in the environment: ``_kernels.set_tile_mode`` first (1:
the row split's tiles always fine, 2 always coarse, while the team still
backs off as usual; 0, the default: as the team picks).
"""
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.configs import CONFIGS  # noqa: E402


def main() -> None:
    cfg, n_threads, busy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, sys.argv[4] if len(sys.argv) > 4 else HERE)
    import fastbp
    from fastbp import _kernels as K
    c = CONFIGS[cfg]
    sizes, batch_size, n_samples = c.sizes, c.batch_size, c.n_samples
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, sizes[0])).astype(np.float32)
    Y = rng.standard_normal((n_samples, sizes[-1])).astype(np.float32)
    spin = "import os\nos.sched_setaffinity(0, {1})\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin]) if busy else None
    try:
        time.sleep(0.2)
        fastbp.set_num_threads(n_threads)
        if os.environ.get("FBP_TILE_MODE"):
            K.set_tile_mode(int(os.environ["FBP_TILE_MODE"]))
        net = fastbp.MLP(list(sizes), activation=c.activation, output="identity",
                         loss="squared_error", dtype="float32", seed=0)
        net.fit(X, Y, epochs=1, batch_size=batch_size, lr=1e-3)
        K.team_stats(reset=True)
        times, stats = [], {}
        for _ in range(int(os.environ.get("EPOCHS", "8"))):
            t, cpu = time.perf_counter(), time.thread_time()
            net.fit(X, Y, epochs=1, batch_size=batch_size, lr=1e-3)
            times.append(time.perf_counter() - t)
            cpu = time.thread_time() - cpu
            st = K.team_stats(reset=True)
            stats = {k: stats.get(k, 0) + v for k, v in st.items()}
            if os.environ.get("PER_EPOCH") == "1":
                serial = st["steps_backoff"] + st["steps_probe"] + st["steps_small"]
                print(f"  epoch {times[-1]:.3f} s, thread 0 CPU {cpu:.3f} s: "
                      f"{st['steps_team']} team steps, {serial} serial "
                      f"({st['steps_probe']} probes), {st['backoffs']} back-offs")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    print(f"{cfg} {n_threads} {'busy' if busy else 'idle'} median {np.median(times):.3f} s "
          f"min {min(times):.3f}")
    print({k: v for k, v in stats.items() if v})


if __name__ == "__main__":
    main()
