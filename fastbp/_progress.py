"""Progress display for ``fit(verbose=1)``, and the one number format of the displays.

Where standard error goes decides the display:

- a terminal: a live bar per epoch that fits the terminal's width (tqdm's
  when installed, else a simple built-in one), then the epoch's metrics, next
  to the bar when they fit and on their own line(s) when they do not;
- anything else (a file, a pipe, CI logs): one line per epoch with every
  metric, and nothing in between;
- a Jupyter kernel with tqdm installed: tqdm's notebook bar.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Dict, List, Optional

#: Seconds between two redraws of the built-in bar.
REDRAW_SECONDS = 0.1


def format_value(v: float) -> str:
    """A metric as every display writes it: 4 decimals (``0.1234``, ``12.3456``),
    or 4 significant digits in exponent form when that would hide it
    (``1.234e-05``, ``1.234e+06``)."""
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4f}"
    return f"{v:.3e}"


def format_logs(logs: Dict[str, Any]) -> str:
    """``loss 0.1234  accuracy 0.9500  val_loss ...  lr 0.01``: an epoch's metrics."""
    parts = [f"loss {format_value(logs['loss'])}"]
    for key in ("accuracy", "val_loss", "val_accuracy"):
        if logs.get(key) is not None:
            parts.append(f"{key} {format_value(logs[key])}")
    parts.append(f"lr {logs['lr']:.3g}")
    return "  ".join(parts)


def _wrap(parts: List[str], width: int, indent: str = "  ") -> List[str]:
    """Join ``parts`` with two spaces into lines of at most ``width`` characters."""
    lines: List[str] = []
    line = ""
    for part in parts:
        candidate = f"{line}  {part}" if line else indent + part
        if line and len(candidate) > width:
            lines.append(line)
            candidate = indent + part
        line = candidate[:width]
    return lines + ([line] if line else [])


def _is_terminal(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Reports training progress on stderr; silent when ``verbose`` is 0.

    Parameters
    ----------
    verbose : int
        0: nothing; otherwise the display the module docstring describes.
    epochs, n_batches, n_samples : int
        Of the fit, for the bar and the rates.
    """

    def __init__(self, verbose: int, epochs: int, n_batches: int, n_samples: int) -> None:
        self.verbose = verbose
        self.epochs, self.n_batches, self.n_samples = epochs, n_batches, n_samples
        self._bar: Any = None
        self._tqdm: Any = None
        self._t0 = self._drawn_at = 0.0
        self._drawn = 0  # length of the built-in bar's line on screen
        self._done = self._samples = self._epoch = 0
        self.mode = "off"
        if not verbose:
            return
        terminal = _is_terminal(sys.stderr)
        notebook = not terminal and "ipykernel" in sys.modules
        if terminal or notebook:
            try:
                if notebook:
                    from tqdm.auto import tqdm
                else:
                    from tqdm import tqdm
                self._tqdm, self.mode = tqdm, "tqdm"
            except ImportError:
                self.mode = "bar" if terminal else "lines"
        else:
            self.mode = "lines"

    @property
    def live(self) -> bool:
        """Whether the epoch should be run in pieces to update a live bar."""
        return self.mode in ("tqdm", "bar")

    @staticmethod
    def width() -> int:
        """Columns available on the terminal (one less than its width, so that no
        line ends in the last column, where some terminals wrap)."""
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def _desc(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.epochs}"

    def start_epoch(self, epoch: int) -> None:
        """Called before the epoch's first batch."""
        self._t0 = time.perf_counter()
        self._done, self._epoch = 0, epoch
        if self.mode == "tqdm":
            self._bar = self._tqdm(
                total=self.n_batches, desc=self._desc(epoch), unit="batch", leave=True,
                file=sys.stderr, ncols=self.width(), dynamic_ncols=False,
                nrows=shutil.get_terminal_size((80, 24)).lines,  # tqdm hides bars on 0 rows
            )
        elif self.mode == "bar":
            self._drawn_at = 0.0
            self._draw_bar(0.0)

    def _rate(self, samples: int) -> str:
        return f"{samples / max(time.perf_counter() - self._t0, 1e-9):,.0f} samples/s"

    def update(self, batches: int, samples: int, running_loss: float) -> None:
        """Called after each piece of the epoch: ``batches`` more done, ``samples``
        seen so far, their mean loss."""
        self._done += batches
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"loss {format_value(running_loss)}, {self._rate(samples)}", refresh=False)
            self._bar.update(batches)
        elif self.mode == "bar":
            self._samples = samples
            if time.perf_counter() - self._drawn_at >= REDRAW_SECONDS:
                self._draw_bar(running_loss)

    # -- the built-in bar ---------------------------------------------------------

    def _bar_line(self, done: int, tail: str) -> str:
        width = self.width()
        count = f"{done}/{self.n_batches}"
        head = self._desc(self._epoch)
        room = width - len(head) - len(count) - len(tail) - 6  # " [", "] ", "  "
        if room < 10:  # too narrow for the tail: bar and count only
            tail, room = "", width - len(head) - len(count) - 4
        n = max(1, min(30, room))
        filled = n * done // max(self.n_batches, 1)
        line = f"{head} [{'#' * filled}{'.' * (n - filled)}] {count}" + (f"  {tail}" if tail
                                                                         else "")
        return line[:width]

    def _write_bar(self, line: str) -> None:
        pad = " " * max(0, self._drawn - len(line))
        sys.stderr.write("\r" + line + pad)
        sys.stderr.flush()
        self._drawn = len(line)
        self._drawn_at = time.perf_counter()

    def _draw_bar(self, running_loss: float) -> None:
        tail = "" if self._done == 0 else (
            f"loss {format_value(running_loss)}  {self._rate(self._samples)}")
        self._write_bar(self._bar_line(self._done, tail))

    # -- end of an epoch ---------------------------------------------------------

    def end_epoch(self, epoch: int, logs: Dict[str, Any]) -> None:
        """Called after the epoch (and its validation): shows its metrics."""
        if self.mode == "off":
            return
        metrics = format_logs(logs)
        rate = f"{self.n_samples / max(logs['seconds'], 1e-9):,.0f} samples/s"
        if self.mode == "lines":
            print(f"{self._desc(epoch)}  {self.n_batches}/{self.n_batches} batches  {metrics}  "
                  f"{logs['seconds']:.2f}s  {rate}", file=sys.stderr, flush=True)
            return
        width = self.width()
        if self._bar is not None:  # tqdm
            def fit(postfix: str) -> bool:  # with a bar of 10 characters
                meter = dict(self._bar.format_dict, ncols=None, postfix=postfix or None)
                return len(self._bar.format_meter(**meter)) <= width

            fits = fit(metrics)
            self._bar.set_postfix_str(metrics if fits else rate if fit(rate) else "",
                                      refresh=False)
            self._bar.close()
            self._bar = None
        else:  # the built-in bar
            self._done = self.n_batches
            line = self._bar_line(self._done, metrics)
            fits = metrics in line
            if not fits:
                line = self._bar_line(self._done, rate)
            self._write_bar(line)
            sys.stderr.write("\n")
            self._drawn = 0
        if not fits:
            lines = _wrap(metrics.split("  "), width)
            sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Called when the fit ends, normally or not."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode == "bar" and self._drawn:  # interrupted mid-epoch: end the line
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = 0
