"""The machine's FMA peak: builds and runs ``bench/c/fma_peak.c``.

:func:`measure` compiles the C program with the C compiler found (``$CC``,
else ``cc`` or ``gcc``) in a temporary directory, runs it with ``--json`` and
returns its figures: GFLOP/s of a register-resident chain of independent
FMAs per ISA (AVX2+FMA, AVX-512F) and dtype on 1 and 2 threads.  Without a
compiler, or where the program fails, the result says so and the harness
goes on without the peak.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "c" / "fma_peak.c"


def compiler() -> str | None:
    """The C compiler to use, or None."""
    for cc in (os.environ.get("CC"), "cc", "gcc"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


def measure(quick: bool = False, trials: int | None = None,
            timeout: float = 300.0) -> dict[str, Any]:
    """Build and run the FMA peak benchmark.

    Parameters
    ----------
    quick : bool
        3 trials per figure instead of 15.
    trials : int, optional
        Trials per figure (overrides ``quick``).
    timeout : float
        Seconds allowed for the compilation and for the run, each.

    Returns
    -------
    dict
        ``status`` (``"ok"``, ``"skipped"`` or ``"error"``), ``note`` unless
        ok, and ``results``: one entry per (isa, dtype) with ``supported`` and
        ``gflops`` keyed by thread count (``"1"``, ``"2"``).
    """
    cc = compiler()
    if cc is None:
        return {"status": "skipped", "note": "no C compiler (cc, gcc or $CC) found"}
    trials = trials or (3 if quick else 15)
    with tempfile.TemporaryDirectory(prefix="fastbp-fma-") as tmp:
        exe = Path(tmp) / "fma_peak"
        cmd = [*cc.split(), "-O2", "-std=gnu11", "-fopenmp", str(SOURCE), "-o", str(exe)]
        try:
            build = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"status": "error", "note": f"compiling {SOURCE.name}: {exc}"}
        if build.returncode != 0:
            tail = (build.stderr.strip().splitlines() or ["no output"])[-1]
            return {"status": "error", "note": f"compiling {SOURCE.name} failed: {tail}"}
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        try:
            run = subprocess.run([str(exe), str(trials), "--json"], capture_output=True,
                                 text=True, timeout=timeout, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"status": "error", "note": f"running {exe.name}: {exc}"}
    if run.returncode != 0:
        return {"status": "error", "note": f"{exe.name} exit {run.returncode}: "
                                           f"{run.stderr.strip()[-200:]}"}
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError as exc:
        return {"status": "error", "note": f"unreadable output of {exe.name}: {exc}"}
    return {"status": "ok", "compiler": cc, "loadavg_1min": os.getloadavg()[0], **doc}


def peak(fma: dict[str, Any] | None, dtype: str, threads: int,
         isa: str | None = None) -> tuple[float, str] | None:
    """The highest peak for ``dtype`` on ``threads`` threads, over the ISAs
    measured (or for ``isa`` only): ``(gflops, isa)``, or None."""
    if not fma or fma.get("status") != "ok":
        return None
    best = None
    for r in fma["results"]:
        if r.get("supported") and r["dtype"] == dtype and (isa is None or r["isa"] == isa):
            g = r["gflops"].get(str(threads))
            if g is not None and (best is None or g > best[0]):
                best = (g, r["isa"])
    return best
