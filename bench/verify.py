"""The check every peer passes before it is timed.

The worker trains the peer for its first (warm-up) epoch from the shared
initial parameters in the shared batch order, then runs the same epoch of the
same SGD in float64 numpy (:class:`bench.numpy_mlp.NumpyMLP`, each batch
converted to float64 as it is gathered, the float32 data and initial values
taken exactly), and compares the parameters.  The error is measured against
the size of the epoch's update::

    err = ||theta_peer - theta_64|| / ||theta_64 - theta_0||

(2-norms over all weights and biases), i.e. the fraction of the epoch's
update that the peer got wrong.  A peer whose ``err`` exceeds
:data:`TOLERANCE` for its dtype is refused: the harness reports it and times
nothing.

Why these tolerances (measured, bench/NOTES.md has the table): a correct
float32 peer differs from float64 only by rounding (each stored parameter
rounds to 2^-24 relative at every step, each product adds about sqrt(K)
times that), and every correct peer on the four issue configurations came to
``err`` between 6e-6 and 8.4e-5 in float32 (<= 3e-15 in float64).  The
smallest real mistakes give, on the same configurations: a learning rate 3%
off 0.008-0.019, another batch order 0.04-0.41, the biases left un-updated
0.06-1.3, the loss averaged over the outputs too 0.76-1.0.  The float32
tolerance 1e-3 sits 12x above the largest rounding error and 8x below the
smallest mistake (a 1% learning-rate error, 0.003, is still caught); the
float64 one, 1e-10, is 3e4 above float64 rounding.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bench.configs import Config
from bench.numpy_mlp import NumpyMLP

Params = list[tuple[np.ndarray, np.ndarray]]

#: Largest ``err`` accepted, per dtype of the peer (see the module docstring).
TOLERANCE = {"float32": 1e-3, "float64": 1e-10}


def reference_epoch(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                    order: np.ndarray) -> Params:
    """One epoch of mini-batch SGD in float64 numpy from ``init`` in ``order``."""
    net = NumpyMLP(cfg.sizes, activation=cfg.activation, dtype="float64")
    net.set_params([(W.astype(np.float64), b.astype(np.float64)) for W, b in init])
    net.fit_epoch(X, Y, cfg.batch_size, lr, order)
    return list(zip(net.weights, net.biases))


def _flat(params: Params) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(np.float64) for wb in params for a in wb])


def compare(got: Params, want: Params, init: Params, dtype: str) -> dict[str, Any]:
    """Compare a peer's parameters after one epoch with the float64 run.

    Returns
    -------
    dict
        ``ok`` (bool), ``err`` (the relative error defined in the module
        docstring), ``tolerance``, ``update_norm`` (``||theta_64 - theta_0||``)
        and ``max_abs_diff``; ``reason`` when not ok.
    """
    tol = TOLERANCE[dtype]
    shapes_got = [(np.shape(W), np.shape(b)) for W, b in got]
    shapes_want = [(W.shape, b.shape) for W, b in want]
    if shapes_got != shapes_want:
        return {"ok": False, "err": None, "tolerance": tol,
                "reason": f"parameter shapes {shapes_got} instead of {shapes_want}"}
    g, w, w0 = _flat(got), _flat(want), _flat(init)
    update = float(np.linalg.norm(w - w0))
    out: dict[str, Any] = {"tolerance": tol, "update_norm": update,
                           "max_abs_diff": float(np.max(np.abs(g - w))) if g.size else 0.0}
    if not np.all(np.isfinite(g)):
        return {**out, "ok": False, "err": None, "reason": "non-finite parameters"}
    if update == 0.0:
        return {**out, "ok": False, "err": None,
                "reason": "the float64 epoch does not change the parameters (lr 0?)"}
    err = float(np.linalg.norm(g - w)) / update
    out.update(ok=bool(err <= tol), err=err)
    if not out["ok"]:
        out["reason"] = (f"after one epoch the parameters differ from the float64 numpy "
                         f"run by {err:.3g} of the epoch's update (tolerance {tol:g})")
    return out


def check(got: Params, cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
          order: np.ndarray) -> dict[str, Any]:
    """:func:`reference_epoch` then :func:`compare` (see the module docstring)."""
    want = reference_epoch(cfg, X, Y, lr, init, order)
    return compare(got, want, init, X.dtype.name)
