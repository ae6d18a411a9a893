"""Progress display for ``fit(verbose=1)``: tqdm when installed, else a line per epoch."""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional


def _fmt(logs: Dict[str, Any]) -> str:
    parts = [f"loss {logs['loss']:.4g}"]
    for key in ("accuracy", "val_loss", "val_accuracy"):
        if logs.get(key) is not None:
            parts.append(f"{key} {logs[key]:.4g}")
    parts.append(f"lr {logs['lr']:.3g}")
    return "  ".join(parts)


class Progress:
    """Reports training progress; silent when ``verbose`` is 0.

    With tqdm, a live bar per epoch (batches done, running loss, samples/s,
    ETA); without it, one line per epoch on stderr.
    """

    def __init__(self, verbose: int, epochs: int, n_batches: int, n_samples: int) -> None:
        self.verbose = verbose
        self.epochs, self.n_batches, self.n_samples = epochs, n_batches, n_samples
        self._bar: Any = None
        self._tqdm: Any = None
        self._t0 = 0.0
        if verbose:
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm
            except ImportError:
                self._tqdm = None

    @property
    def live(self) -> bool:
        """Whether the epoch should be run in pieces to update a live bar."""
        return self._tqdm is not None

    def start_epoch(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        if self._tqdm is not None:
            self._bar = self._tqdm(
                total=self.n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                leave=True, file=sys.stderr,
            )

    def update(self, batches: int, samples: int, running_loss: float) -> None:
        if self._bar is not None:
            rate = samples / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.set_postfix_str(f"loss {running_loss:.4g}, {rate:,.0f} samples/s", refresh=False)
            self._bar.update(batches)

    def end_epoch(self, epoch: int, logs: Dict[str, Any]) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(logs))
            self._bar.close()
            self._bar = None
        else:
            rate = self.n_samples / max(logs["seconds"], 1e-9)
            print(
                f"epoch {epoch + 1}/{self.epochs}  {_fmt(logs)}  "
                f"{logs['seconds']:.2f}s  {rate:,.0f} samples/s",
                file=sys.stderr, flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
