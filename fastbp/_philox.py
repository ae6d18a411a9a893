"""Philox-4x32-10, the counter-based generator of the dropout masks, in pure Python.

This is the reference: ``src/fbp_philox.h`` implements the same functions in C
and both are checked against Random123's published known-answer vectors
(tests/test_philox.py).  Philox (Salmon, Moraes, Dror and Shaw, "Parallel
random numbers: as easy as 1, 2, 3", SC'11) maps a 128-bit counter and a
64-bit key to 128 random bits; there is no sequential state, so any thread
can compute the random numbers of any (row, unit) in any order and every
number of threads gives the same mask.

The dropout mapping
-------------------
For inverted dropout with probability ``p`` on hidden unit ``unit`` of
batch row ``row``, at batch ``step`` of ``epoch``, under the 64-bit ``seed``:

* key     = (seed & 0xffffffff, seed >> 32)
* counter = (unit // 4, row, step, epoch), four 32-bit words
* word    = output word ``unit % 4`` of Philox-4x32-10(counter, key)
* u       = (word >> 8) * 2**-24, a uniform in [0, 1) exact in float32
* keep the unit when ``u >= p`` (compared in double, ``p`` a Python float);
  a kept activation is multiplied by ``scale = dtype(1 / (1 - p))`` (computed
  in double, rounded once to the model's dtype), a dropped one is 0.

So one Philox call gives the uniforms of four consecutive units.  Meanings of
the coordinates (the convention the kernels and ``fastbp.reference`` share):
``unit`` counts the hidden units of ALL hidden layers in order (layer 1's
units first, then layer 2's, ...), so different layers get different masks
(a per-layer index alone would give layers 1 and 2 the same uniforms);
``row`` is the sample's position within its batch (0-based), ``step`` the
batch's index within the epoch (0-based), ``epoch`` the epoch's index
(0-based) as the caller counts it.  Each must be in [0, 2**32) (``unit`` in
[0, 2**34)) and ``seed`` in [0, 2**64).
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence, Tuple

import numpy as np

__all__ = [
    "philox4x32", "philox4x32_10", "dropout_key", "dropout_counter",
    "dropout_uniform", "dropout_keep", "dropout_scale", "dropout_uniforms",
    "dropout_mask",
]

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53  # multipliers (Random123's PHILOX_M4x32_0/1)
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # Weyl key increments (golden ratio, sqrt(3) - 1)
PHILOX_W1 = 0xBB67AE85
TWO_M24 = 2.0 ** -24


def _round(ctr: Tuple[int, int, int, int], key: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """One Philox-4x32 round: two 32x32 -> 64-bit products, XORs with the key."""
    p0 = PHILOX_M0 * ctr[0]
    p1 = PHILOX_M1 * ctr[2]
    hi0, lo0 = p0 >> 32, p0 & MASK32
    hi1, lo1 = p1 >> 32, p1 & MASK32
    return (hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0)


def philox4x32(counter: Sequence[int], key: Sequence[int], rounds: int = 10) -> Tuple[int, ...]:
    """Philox-4x32 with ``rounds`` rounds: 4 words of counter, 2 of key -> 4 words.

    Parameters
    ----------
    counter : 4 ints in [0, 2**32)
    key : 2 ints in [0, 2**32)
    rounds : int
        10 is the standard (Philox-4x32-10); Random123 also publishes 7.

    Returns
    -------
    tuple of 4 ints in [0, 2**32)
    """
    ctr = tuple(_word("counter", c) for c in counter)
    k = tuple(_word("key", c) for c in key)
    if len(ctr) != 4 or len(k) != 2:
        raise ValueError("Philox-4x32 takes a counter of 4 words and a key of 2")
    for r in range(rounds):
        if r:
            k = ((k[0] + PHILOX_W0) & MASK32, (k[1] + PHILOX_W1) & MASK32)
        ctr = _round(ctr, k)  # type: ignore[arg-type]
    return ctr


def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> Tuple[int, ...]:
    """Philox-4x32-10 (see :func:`philox4x32`)."""
    return philox4x32(counter, key, 10)


def _word(name: str, value: Any, bits: int = 32) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < 2 ** bits:
        raise ValueError(f"{name} must be in [0, 2**{bits}), got {value!r}")
    return int(value)


def dropout_key(seed: int) -> Tuple[int, int]:
    """The Philox key of a 64-bit seed: ``(seed & 0xffffffff, seed >> 32)``."""
    s = _word("seed", seed, 64)
    return (s & MASK32, s >> 32)


def dropout_counter(epoch: int, step: int, row: int, unit: int) -> Tuple[int, int, int, int]:
    """The Philox counter of a unit: ``(unit // 4, row, step, epoch)``."""
    return (_word("unit", unit, 34) >> 2, _word("row", row), _word("step", step),
            _word("epoch", epoch))


def dropout_uniform(seed: int, epoch: int, step: int, row: int, unit: int) -> float:
    """The uniform in [0, 1) that decides unit ``unit`` of batch row ``row``.

    ``(word >> 8) * 2**-24`` with ``word`` = output ``unit % 4`` of
    Philox-4x32-10(:func:`dropout_counter`, :func:`dropout_key`).
    """
    word = philox4x32_10(dropout_counter(epoch, step, row, unit), dropout_key(seed))[unit % 4]
    return (word >> 8) * TWO_M24


def dropout_keep(seed: int, epoch: int, step: int, row: int, unit: int, p: float) -> bool:
    """Whether the unit is kept: ``dropout_uniform(...) >= p``."""
    return dropout_uniform(seed, epoch, step, row, unit) >= float(p)


def dropout_scale(p: float, dtype: Any = np.float64) -> Any:
    """The factor of the kept activations: ``dtype(1 / (1 - p))``, for ``0 <= p < 1``."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
    return np.dtype(dtype).type(1.0 / (1.0 - p))


# -- vectorised (numpy) versions, equal to the scalar ones above --------------

def _philox_arrays(c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray,
                   k0: int, k1: int) -> Tuple[np.ndarray, ...]:
    """Philox-4x32-10 on uint64 arrays holding 32-bit words (broadcasting)."""
    m = np.uint64(MASK32)
    ctr = [np.asarray(c, dtype=np.uint64) & m for c in (c0, c1, c2, c3)]
    ctr = list(np.broadcast_arrays(*ctr))
    key0, key1 = np.uint64(k0), np.uint64(k1)
    for r in range(10):
        if r:
            key0 = np.uint64((int(key0) + PHILOX_W0) & MASK32)
            key1 = np.uint64((int(key1) + PHILOX_W1) & MASK32)
        p0 = np.uint64(PHILOX_M0) * ctr[0]
        p1 = np.uint64(PHILOX_M1) * ctr[2]
        ctr = [(p1 >> np.uint64(32)) ^ ctr[1] ^ key0, p1 & m,
               (p0 >> np.uint64(32)) ^ ctr[3] ^ key1, p0 & m]
    return tuple(ctr)


def dropout_uniforms(seed: int, epoch: int, step: int, n_rows: int, n_units: int,
                     unit0: int = 0, dtype: Any = np.float64) -> np.ndarray:
    """The uniforms of rows ``0 .. n_rows-1`` and units ``unit0 .. unit0+n_units-1``.

    Returns
    -------
    ndarray (n_rows, n_units)
        ``[i, j] == dropout_uniform(seed, epoch, step, i, unit0 + j)``, exactly
        (every value is a multiple of 2**-24, exact in float32 too).
    """
    k0, k1 = dropout_key(seed)
    _word("epoch", epoch)
    _word("step", step)
    if n_rows < 0 or n_units < 0 or (n_rows and n_rows - 1 >= 2 ** 32):
        raise ValueError("n_rows and n_units must be >= 0 and rows < 2**32")
    if n_units:
        _word("unit", unit0 + n_units - 1, 34)
    _word("unit", unit0, 34)
    units = np.arange(unit0, unit0 + n_units, dtype=np.uint64)
    rows = np.arange(n_rows, dtype=np.uint64)[:, None]
    words = _philox_arrays(units[None, :] >> np.uint64(2), rows, np.uint64(step),
                           np.uint64(epoch), k0, k1)
    lane = (units & np.uint64(3)).astype(np.intp)
    picked = np.choose(lane[None, :], words) if n_units and n_rows else np.zeros(
        (n_rows, n_units), dtype=np.uint64)
    return ((picked >> np.uint64(8)).astype(np.float64) * TWO_M24).astype(dtype)


def dropout_mask(seed: int, epoch: int, step: int, n_rows: int, n_units: int, p: float,
                 unit0: int = 0) -> np.ndarray:
    """The keep mask (bool, ``(n_rows, n_units)``): ``dropout_uniforms(...) >= p``."""
    return dropout_uniforms(seed, epoch, step, n_rows, n_units, unit0) >= float(p)
