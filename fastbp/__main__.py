"""Command line: ``python -m fastbp demo``."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    from . import MLP, get_num_threads, set_num_threads
    from .datasets import FOUR_PIXEL_CLASSES, four_pixel_images

    if args.threads:
        set_num_threads(args.threads)
    X, y = four_pixel_images(args.samples + args.samples // 4, seed=args.seed)
    n_train = args.samples
    X_train, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    net = MLP([4, 16, len(FOUR_PIXEL_CLASSES)], activation="tanh", output="softmax",
              loss="cross_entropy", seed=args.seed)
    print(f"fastbp demo: the four-pixel images ({', '.join(FOUR_PIXEL_CLASSES)})")
    print(f"{net!r}, {n_train} training / {len(y_test)} test images, "
          f"{get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    hist = net.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - t0
    for epoch, loss in enumerate(hist.loss):
        print(f"epoch {epoch + 1:3d}  loss {loss:.4f}")
    accuracy = float(np.mean(net.predict(X_test).argmax(axis=1) == y_test))
    print(f"test accuracy {accuracy:.3f}  ({seconds:.2f} s, "
          f"{args.epochs * n_train / max(seconds, 1e-9):,.0f} samples/s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastbp", description="fastbp command line")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small network on the built-in four-pixel images")
    d.add_argument("--epochs", type=int, default=20, help="epochs to train (default 20)")
    d.add_argument("--samples", type=int, default=2000, help="training images (default 2000)")
    d.add_argument("--batch-size", type=int, default=16, help="mini-batch size (default 16)")
    d.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m fastbp`` and the ``fastbp`` script."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as exc:
        print(f"fastbp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
