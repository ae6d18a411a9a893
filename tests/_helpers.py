"""Helpers shared by several test modules (imported as ``from _helpers import ...``)."""
import csv
import os

import numpy as np
import pytest


def torch_optimizer(opt, params):
    """torch.optim's twin of a fastbp.optim object: the same settings, single-tensor
    algorithm (``foreach=False``).  Skips the test when torch is absent."""
    torch = pytest.importorskip("torch")
    cfg = opt.get_config()
    name = cfg.pop("name")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop}[name]
    return cls(params, foreach=False, **cfg)


def write_csv(path, header, rows):
    """Write ``rows`` under ``header`` to the CSV file ``path``; return ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    """The rows of the CSV file ``path``, as lists of strings."""
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------
# fastbp.sklearn against scikit-learn, run for run (tests/test_sklearn_solvers.py,
# tests/test_sklearn_poisson.py)
# ---------------------------------------------------------------------------

def rel_error(ours, theirs):
    """max |ours - theirs| / max |theirs| over a list of arrays."""
    worst = 0.0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)))
    return worst


def assert_params_close(ours, theirs, rtol=1e-7):
    """The two fitted estimators' coefs_ and intercepts_ agree to `rtol` (same shapes, dtypes)."""
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    assert [c.dtype for c in ours.coefs_] == [c.dtype for c in theirs.coefs_]
    assert rel_error(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_) <= rtol


def assert_stochastic_same(ours, theirs, rtol=1e-7):
    """Two adam/sgd fits took the same steps: iteration and step counts, loss
    curve, parameters, and the early-stopping record (validation scores or best
    loss) agree."""
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    assert len(ours.loss_curve_) == len(theirs.loss_curve_)
    assert rel_error([ours.loss_curve_], [theirs.loss_curve_]) <= rtol
    assert_params_close(ours, theirs, rtol)
    if theirs.validation_scores_ is None:
        assert ours.validation_scores_ is None and ours.best_validation_score_ is None
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=rtol)
    else:
        assert ours.best_loss_ is None
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_,
                                   rtol=1e-9)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_)
    assert isinstance(ours.loss_, np.float64)


def assert_adam_matches_sklearn(fit_both, data, seed, early_stopping):
    """The adam comparison both modules run over their data sets, seeds and
    early_stopping: ``fit_both(data, **kw)`` fits fastbp's estimator and
    scikit-learn's with the same settings (12 epochs, lr 0.01, batches of 50)
    and returns (ours, theirs); they must take the same steps.  Returns them."""
    ours, theirs = fit_both(data, solver="adam", max_iter=12, random_state=seed,
                            early_stopping=early_stopping, learning_rate_init=0.01,
                            batch_size=50)
    assert_stochastic_same(ours, theirs)
    return ours, theirs


def why_no_teams():
    """Why a parallel region here may run on one thread, or None.  Under
    OMP_THREAD_LIMIT=1 or OMP_DYNAMIC=true the results must still be the
    same bits, but a test cannot count on a team of two threads."""
    from fastbp import _kernels
    if not _kernels.openmp_enabled():
        return "built without OpenMP"
    if _kernels.thread_limit() < 2:
        return "OMP_THREAD_LIMIT=1: no team of two threads"
    if os.environ.get("OMP_DYNAMIC", "").strip().lower() in ("true", "1", "yes", "on"):
        return "OMP_DYNAMIC=true: OpenMP may run a region on one thread"
    return None


def random_xy(dtype, n, sizes, seed=0):
    """Standard normal X (n x sizes[0]) and Y (n x sizes[-1]) of `dtype`."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Y = rng.standard_normal((n, sizes[-1])).astype(dtype)
    return X, Y


def shuffled_fit(dtype, threads, *, sizes, batch_size, n, activation="relu", bias=True,
                 dropout=None, weights=False, optimizer=None, X=None, Y=None, epochs=2):
    """theta after a shuffled fit of a squared-error net on `threads` threads
    (random_xy data of n rows unless X, Y are given), its history's losses,
    and the thread teams' counters (``_kernels.team_stats``) of the fit."""
    import fastbp
    from fastbp import _kernels

    fastbp.set_num_threads(threads)
    if X is None:
        X, Y = random_xy(dtype, n, sizes)
    kw = {}
    if weights:
        kw["sample_weight"] = np.random.default_rng(5).uniform(0, 2, X.shape[0])
    if optimizer is not None:
        kw["optimizer"] = optimizer()
    else:
        kw["lr"] = 1e-3
    net = fastbp.MLP(sizes, activation=activation, output="identity", loss="squared_error",
                     bias=bias, dtype=dtype, seed=0, dropout=dropout)
    _kernels.team_stats(reset=True)
    hist = net.fit(X, Y, epochs=epochs, batch_size=batch_size, seed=1, **kw)
    return net._theta.copy(), np.array(hist.loss), _kernels.team_stats()
