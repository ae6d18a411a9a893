"""Alternate 1-thread and 2-thread fit epochs of a harness network in one
process, optionally with a busy-looping process pinned to CPU 1, and print
the 2-thread over 1-thread speed of each adjacent pair's summary.

    python tools/busy_pairs.py CONFIG PAIRS BUSY(0|1) [TREE]

CONFIG: a harness configuration (bench/configs.py: tiny, small, mnist, large,
wide), with the harness's sizes, activation, batch and samples per epoch.
PAIRS: how many (1-thread, 2-thread) pairs of epochs, after one warm-up
epoch of each; the order inside a pair alternates.
TREE: the source tree whose built ``fastbp`` to import (default: this one).

The harness (``python -m bench --only-busy``) times 1 and 2 threads in
separate fresh processes, minutes apart; on a shared host whose speed drifts
by 10-40% within seconds, a pair of epochs a fraction of a second apart is a
steadier comparison (the team's state carries from one 2-thread call to the
next, as in one long fit).  Prints the median, mean and quartiles of the
pairs' 1t-time / 2t-time, the ratio of the summed times, and the team's
counters (``_kernels.team_stats``) over the 2-thread epochs.
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
    cfg, n_pairs, busy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tree = sys.argv[4] if len(sys.argv) > 4 else HERE
    sys.path.insert(0, tree)
    import fastbp
    from fastbp import _kernels as K
    c = CONFIGS[cfg]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((c.n_samples, c.sizes[0])).astype(np.float32)
    Y = rng.standard_normal((c.n_samples, c.sizes[-1])).astype(np.float32)
    net = fastbp.MLP(list(c.sizes), activation=c.activation, output="identity",
                     loss="squared_error", dtype="float32", seed=0)
    spin = "import os\nos.sched_setaffinity(0, {1})\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin]) if busy else None

    def epoch(threads: int) -> float:
        fastbp.set_num_threads(threads)
        t = time.perf_counter()
        net.fit(X, Y, epochs=1, batch_size=c.batch_size, lr=1e-3)
        return time.perf_counter() - t

    try:
        time.sleep(0.2)
        epoch(1)
        epoch(2)
        K.team_stats(reset=True)
        one, two = [], []
        for i in range(n_pairs):
            if i % 2:
                two.append(epoch(2))
                one.append(epoch(1))
            else:
                one.append(epoch(1))
                two.append(epoch(2))
        st = K.team_stats()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    r = np.array(one) / np.array(two)
    print(f"{cfg} {'busy' if busy else 'idle'} {n_pairs} pairs, 2t/1t speed: median "
          f"{np.median(r):.3f} mean {r.mean():.3f} quartiles {np.quantile(r, 0.25):.3f}-"
          f"{np.quantile(r, 0.75):.3f}; summed {sum(one):.2f} s / {sum(two):.2f} s = "
          f"{sum(one) / sum(two):.3f}")
    serial = st["steps_backoff"] + st["steps_probe"] + st["steps_small"]
    print(f"2t epochs: {st['steps_team']} team steps, {serial} serial ({st['steps_probe']} "
          f"probes), {st['backoffs']} back-offs ({st['slow_backoffs']} slow)")


if __name__ == "__main__":
    main()
