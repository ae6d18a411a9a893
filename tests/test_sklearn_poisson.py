"""fastbp.sklearn.MLPRegressor(loss="poisson") against scikit-learn's, run for run.

scikit-learn 1.9's Poisson MLP: the exp output (``out_activation_ == "exp"``,
the log link), the half Poisson deviance y log(y / mu) - y + mu averaged over
the samples and summed over the outputs, and the output delta mu - y.  With
the same ``random_state`` both estimators take the same steps, so in float64
they agree to rounding (measured at most 5e-15 relative for adam and sgd
and 1.1e-10 for lbfgs after 40 iterations on these sets); the tests hold them to 1e-7, as
tests/test_sklearn_solvers.py does for squared error, with the same helpers
(tests/_helpers.py).
"""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from sklearn import neural_network as sknn  # noqa: E402

from fastbp.sklearn import MLPRegressor  # noqa: E402

from _helpers import (  # noqa: E402
    assert_adam_matches_sklearn, assert_params_close, assert_stochastic_same, rel_error)
from test_sklearn_solvers import one_thread  # noqa: E402,F401  (the module's autouse fixture)

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:sklearn.*"),
]


def _counts(n_targets=1, n=240, seed=0):
    """Poisson counts with a log-linear mean in standardised features (zeros included)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    W = rng.normal(scale=0.4, size=(6, n_targets))
    y = rng.poisson(np.exp(X @ W + 0.3)).astype(float)
    return X, (y.ravel() if n_targets == 1 else y)


DATA = {"counts": _counts(1), "counts2": _counts(2, seed=1)}


def _fit_both(data, **kw):
    X, y = DATA[data] if isinstance(data, str) else data
    kw = dict(dict(loss="poisson", hidden_layer_sizes=(16,), alpha=1e-3), **kw)
    sw = kw.pop("sample_weight", None)
    ours = MLPRegressor(**kw).fit(X, y, sample_weight=sw)
    theirs = sknn.MLPRegressor(**{k: v for k, v in kw.items() if k != "dtype"})
    theirs.fit(X, y, sample_weight=sw)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    return ours, theirs


def _assert_predict_close(ours, theirs, X):
    mu = ours.predict(X)
    assert mu.shape == theirs.predict(X).shape and (mu > 0).all()
    assert rel_error([mu], [theirs.predict(X)]) <= 1e-7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("data", list(DATA))
def test_lbfgs_iterates_match_sklearn(data, seed):
    ours, theirs = _fit_both(data, solver="lbfgs", max_iter=40, random_state=seed)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    assert_params_close(ours, theirs)
    _assert_predict_close(ours, theirs, DATA[data][0])


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("data", list(DATA))
def test_adam_matches_sklearn(data, seed, early_stopping):
    ours, theirs = assert_adam_matches_sklearn(_fit_both, data, seed, early_stopping)
    _assert_predict_close(ours, theirs, DATA[data][0])


@pytest.mark.parametrize("kw", [
    dict(learning_rate="constant"), dict(learning_rate="invscaling", learning_rate_init=0.05),
    dict(learning_rate="adaptive", tol=0.5, n_iter_no_change=2),
    dict(nesterovs_momentum=False, shuffle=False), dict(early_stopping=True),
])
@pytest.mark.parametrize("data", list(DATA))
def test_sgd_matches_sklearn(data, kw):
    ours, theirs = _fit_both(data, **dict(dict(solver="sgd", max_iter=15, random_state=0,
                                               learning_rate_init=0.01), **kw))
    assert_stochastic_same(ours, theirs)


@pytest.mark.parametrize("solver,early_stopping",
                         [("adam", False), ("adam", True), ("sgd", False), ("sgd", True),
                          ("lbfgs", False)])
def test_sample_weight_matches_sklearn(solver, early_stopping):
    X, y = DATA["counts"]
    sw = np.random.default_rng(5).uniform(0.0, 3.0, size=len(y))
    ours, theirs = _fit_both("counts", solver=solver, max_iter=10, random_state=0,
                             learning_rate_init=0.01, sample_weight=sw,
                             early_stopping=early_stopping)
    assert_params_close(ours, theirs)
    if solver != "lbfgs":
        assert_stochastic_same(ours, theirs)


def test_partial_fit_warm_start_and_pickle_match_sklearn():
    X, y = DATA["counts"]
    kw = dict(loss="poisson", solver="adam", hidden_layer_sizes=(10,), random_state=0,
              learning_rate_init=0.01, max_iter=5)
    ours, theirs = MLPRegressor(**kw), sknn.MLPRegressor(**kw)
    for est in (ours, theirs):
        for lo in (0, 80, 160):
            est.partial_fit(X[lo:lo + 80], y[lo:lo + 80])
    assert_stochastic_same(ours, theirs)
    ours = pickle.loads(pickle.dumps(ours))
    for est in (ours, theirs):
        est.set_params(warm_start=True).fit(X, y)
    assert_stochastic_same(ours, theirs)


def test_hand_computed_loss_and_predict():
    """One sample, no hidden layer, zero weights and intercept log 2: mu = 2, so
    for y = 3 the half deviance is 3 log(3/2) - 3 + 2 and the one gradient
    step of sgd (no momentum, alpha 0) moves the intercept by -lr (mu - y) = lr."""
    X, y = np.zeros((1, 2)), np.array([3.0])
    est = MLPRegressor(loss="poisson", solver="sgd", hidden_layer_sizes=(), alpha=0.0,
                       momentum=0.0, learning_rate_init=0.5, max_iter=1, shuffle=False,
                       random_state=0)
    est.partial_fit(X, y)  # initialises; then set a known state
    est.coefs_ = [np.zeros((2, 1))]
    est.intercepts_ = [np.array([np.log(2.0)])]
    assert est.predict(X) == pytest.approx([2.0], rel=1e-15)
    assert est.model_.loss(X, y) == pytest.approx(3 * np.log(1.5) - 3 + 2, rel=1e-15)
    est.partial_fit(X, y)
    assert est.loss_curve_[-1] == pytest.approx(3 * np.log(1.5) - 1, rel=1e-15)
    assert est.intercepts_[0][0] == pytest.approx(np.log(2.0) + 0.5, rel=1e-15)


def test_negative_targets_raise_and_change_nothing():
    X, y = DATA["counts"]
    bad = y.copy()
    bad[7] = -1.0
    msg = "^Some value\\(s\\) of y are negative which is not allowed for Poisson regression.$"
    for solver in ("adam", "sgd", "lbfgs"):
        with pytest.raises(ValueError, match=msg):
            MLPRegressor(loss="poisson", solver=solver).fit(X, bad)
    est = MLPRegressor(loss="poisson", max_iter=3, random_state=0).fit(X, y)
    before = [c.copy() for c in est.coefs_ + est.intercepts_], list(est.loss_curve_)
    kept = bad.copy()
    for call in (lambda: est.partial_fit(X, bad), lambda: est.set_params(warm_start=True).fit(X, bad)):
        with pytest.raises(ValueError, match=msg):
            call()
    assert all(np.array_equal(a, b) for a, b in zip(est.coefs_ + est.intercepts_, before[0]))
    assert est.loss_curve_ == before[1] and np.array_equal(bad, kept)
    # zeros are fine (0 log 0 = 0), as are squared-error fits of negative targets
    MLPRegressor(loss="poisson", max_iter=2).fit(X, np.zeros_like(y))
    MLPRegressor(max_iter=2).fit(X, bad)


def test_bad_loss_and_loss_change():
    X, y = DATA["counts"]
    for loss in ("absolute_error", None, "Poisson"):
        with pytest.raises(ValueError, match="^loss must be 'squared_error' or 'poisson', got"):
            MLPRegressor(loss=loss).fit(X, y)
    est = MLPRegressor(max_iter=2, random_state=0).fit(X, y)
    assert est.out_activation_ == "identity" and est.model_.loss_name == "squared_error"
    with pytest.raises(ValueError, match="cannot continue training a network fitted with "
                                         "loss='squared_error' with loss='poisson'"):
        est.set_params(loss="poisson", warm_start=True).fit(X, y)
    est.set_params(warm_start=False).fit(X, y)  # afresh: now the exp output
    assert est.out_activation_ == "exp" and est.model_.output == "exp"
    assert est.model_.loss_name == "poisson"


@pytest.mark.parametrize("solver,rate", [("sgd", 5.0), ("adam", 100.0)])
def test_exp_overflow_diverges_as_sklearn(solver, rate):
    """exp(z) overflows to inf: scikit-learn's divergence error, and with early
    stopping its NaN losses and scores to max_iter."""
    X, y = DATA["counts"]
    kw = dict(loss="poisson", solver=solver, learning_rate_init=rate, hidden_layer_sizes=(8,),
              max_iter=15, random_state=0)
    for est in (MLPRegressor(**kw), sknn.MLPRegressor(**kw)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with pytest.raises(ValueError, match="^Solver produced non-finite parameter weights"):
                est.fit(X, y)
    kw["early_stopping"] = True
    ours = MLPRegressor(**kw).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = sknn.MLPRegressor(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_array_equal(np.isfinite(ours.loss_curve_), np.isfinite(theirs.loss_curve_))
    assert np.isnan(ours.validation_scores_[-1])
    assert_params_close(ours, theirs)


def test_float32_and_onnx_export():
    X, y = DATA["counts2"]
    X32 = X.astype(np.float32)
    kw = dict(loss="poisson", max_iter=8, random_state=0, learning_rate_init=0.01)
    ours = MLPRegressor(**kw).fit(X32, y)
    theirs = sknn.MLPRegressor(**kw).fit(X32, y)
    assert all(c.dtype == np.float32 for c in ours.coefs_)
    assert rel_error(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_) < 1e-4
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sess = ort.InferenceSession(ours.to_onnx().SerializeToString(),
                                providers=["CPUExecutionProvider"])
    (variable,) = sess.run(None, {"X": X32})
    np.testing.assert_allclose(variable, ours.predict(X32), rtol=1e-5)
