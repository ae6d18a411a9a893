"""fastbp.sklearn's solvers against scikit-learn's own MLP, run for run.

With the same ``random_state`` both estimators draw the same initial weights,
the same validation split and the same batches, and apply the same updates
(adam, sgd with every learning-rate rule) or hand scipy the same objective
in the same packing (lbfgs).  In float64 the two runs then differ only by the
rounding of the gradients (fastbp's GEMM sums in another order than BLAS),
which stays at 1e-15 relative for SGD and Adam.  L-BFGS amplifies such
differences by about 10x per 10 evaluations (its curvature pairs and line
search feed them back), so the lbfgs comparisons stop at 40 iterations,
where both runs still agree to better than 1e-7.
"""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from sklearn import neural_network as sknn  # noqa: E402
from sklearn.datasets import load_digits, load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastbp  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

from _helpers import (  # noqa: E402
    assert_adam_matches_sklearn, assert_params_close, assert_stochastic_same, rel_error)

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # scikit-learn's own overflow warnings in the divergence comparisons
    pytest.mark.filterwarnings("ignore::RuntimeWarning:sklearn.*"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    from threadpoolctl import threadpool_limits

    before = fastbp.get_num_threads()
    fastbp.set_num_threads(1)
    with threadpool_limits(1):
        yield
    fastbp.set_num_threads(before)


def _digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X)[:600], y[:600]


def _iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _regression():
    X, y = make_regression(n_samples=240, n_features=8, n_targets=2, noise=1.0,
                           random_state=0)
    return X, y / y.std(axis=0)


DATA = {
    "digits": (_digits(), MLPClassifier, sknn.MLPClassifier),
    "iris": (_iris(), MLPClassifier, sknn.MLPClassifier),
    "regression": (_regression(), MLPRegressor, sknn.MLPRegressor),
}


def _fit_both(data, **kw):
    (X, y), ours_cls, sk_cls = DATA[data]
    kw = dict(dict(hidden_layer_sizes=(16,), alpha=1e-3), **kw)
    ours = ours_cls(**kw).fit(X, y)
    theirs = sk_cls(**{k: v for k, v in kw.items() if k != "dtype"}).fit(X, y)
    return ours, theirs


# ---------------------------------------------------------------------------
# lbfgs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("data", list(DATA))
def test_lbfgs_iterates_match_sklearn(data, seed):
    ours, theirs = _fit_both(data, solver="lbfgs", max_iter=40, random_state=seed)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    assert isinstance(ours.loss_, float)
    assert_params_close(ours, theirs)
    for name in ("n_layers_", "n_outputs_", "out_activation_", "t_", "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for name in ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_"):
        assert not hasattr(ours, name) and not hasattr(theirs, name), name


@pytest.mark.parametrize("kw", [
    dict(activation="tanh", alpha=0.0), dict(activation="logistic", hidden_layer_sizes=(7, 5)),
    dict(activation="identity", hidden_layer_sizes=()), dict(alpha=1.0, max_fun=25),
])
def test_lbfgs_options_match_sklearn(kw):
    ours, theirs = _fit_both("iris", **dict(dict(solver="lbfgs", max_iter=30, random_state=0),
                                            **kw))
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    assert_params_close(ours, theirs)


def test_lbfgs_convergence_warning_as_sklearn():
    (X, y), _, _ = DATA["iris"]
    messages = []
    for cls in (MLPClassifier, sknn.MLPClassifier):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(solver="lbfgs", max_iter=3, random_state=0).fit(X, y)
        messages.append([str(w.message) for w in caught if w.category is ConvergenceWarning])
    assert messages[0] == messages[1] and len(messages[0]) == 1
    assert "max_iter=3" in messages[0][0]


def test_lbfgs_float32_and_dtype():
    (X, y), _, _ = DATA["iris"]
    X32 = X.astype(np.float32)
    # scipy hands each point over in float32 (the start's dtype): both evaluate
    # in float32, with two summation orders (2.8e-7 apart at the start), then
    # end with scipy's float64 solution as parameters
    ours = MLPClassifier(solver="lbfgs", max_iter=10, random_state=0).fit(X32, y)
    theirs = sknn.MLPClassifier(solver="lbfgs", max_iter=10, random_state=0).fit(X32, y)
    assert ours.n_iter_ == theirs.n_iter_
    assert_params_close(ours, theirs, rtol=1e-4)
    assert ours.predict_proba(X32).dtype == theirs.predict_proba(X32).dtype == np.float64
    # the estimator's own dtype wins: float32 parameters (scipy still works in float64)
    ours = MLPClassifier(solver="lbfgs", max_iter=20, random_state=0, dtype="float32")
    ours.fit(X, y)
    assert all(c.dtype == np.float32 for c in ours.coefs_ + ours.intercepts_)
    assert ours.score(X, y) > 0.9


def test_lbfgs_multilabel_and_multioutput_match_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 0.5]).astype(int)
    for solver in ("lbfgs", "adam"):
        kw = dict(solver=solver, hidden_layer_sizes=(8,), max_iter=25, random_state=1)
        ours = MLPClassifier(**kw).fit(X, Y)
        theirs = sknn.MLPClassifier(**kw).fit(X, Y)
        assert ours.out_activation_ == theirs.out_activation_ == "logistic"
        assert_params_close(ours, theirs)
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-7)


def test_lbfgs_has_no_partial_fit():
    for cls in (MLPClassifier, MLPRegressor):
        est = cls(solver="lbfgs")
        assert not hasattr(est, "partial_fit")
        with pytest.raises(AttributeError, match="partial_fit"):
            est.partial_fit
        assert hasattr(cls(solver="adam"), "partial_fit")
        assert hasattr(cls(solver="sgd"), "partial_fit")
    assert not hasattr(sknn.MLPClassifier(solver="lbfgs"), "partial_fit")


def test_lbfgs_huge_values_as_sklearn():
    # scipy stops at the start (a non-finite objective there); the parameters
    # stay finite and nothing is raised, in scikit-learn as here
    (X, y), _, _ = DATA["regression"]
    for scale in (1e150, 1e200):
        ours = MLPRegressor(solver="lbfgs", max_iter=5, random_state=0).fit(X * scale, y * scale)
        theirs = sknn.MLPRegressor(solver="lbfgs", max_iter=5, random_state=0)
        theirs.fit(X * scale, y * scale)
        assert ours.n_iter_ == theirs.n_iter_ == 0
        assert_params_close(ours, theirs, rtol=0)


# ---------------------------------------------------------------------------
# adam
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("data", list(DATA))
def test_adam_matches_sklearn(data, seed, early_stopping):
    assert_adam_matches_sklearn(_fit_both, data, seed, early_stopping)


@pytest.mark.parametrize("kw", [
    dict(learning_rate="invscaling"), dict(learning_rate="adaptive", tol=0.5),
    dict(beta_1=0.5, beta_2=0.9, epsilon=1e-4, shuffle=False),
    dict(n_iter_no_change=np.inf, tol=10.0), dict(tol=10.0, n_iter_no_change=2),
    dict(activation="logistic", hidden_layer_sizes=(6, 5), alpha=0.3),
    dict(batch_size=1, max_iter=2),
])
def test_adam_options_match_sklearn(kw):
    # adam ignores learning_rate, as scikit-learn's does
    ours, theirs = _fit_both("iris", **dict(dict(solver="adam", max_iter=15, random_state=0,
                                                 learning_rate_init=0.02), **kw))
    assert_stochastic_same(ours, theirs)


def test_adam_float32_follows_x():
    (X, y), _, _ = DATA["iris"]
    X32 = X.astype(np.float32)
    kw = dict(solver="adam", max_iter=10, random_state=0, learning_rate_init=0.01)
    ours = MLPClassifier(**kw).fit(X32, y)
    theirs = sknn.MLPClassifier(**kw).fit(X32, y)
    assert all(c.dtype == np.float32 for c in ours.coefs_ + ours.intercepts_)
    # float32 rounding of two different summation orders, over 10 epochs
    assert rel_error(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_) < 1e-4
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-5)
    assert ours.predict_proba(X32).dtype == np.float32
    assert ours.predict_proba(X).dtype == np.float64
    ours = MLPClassifier(dtype="float64", **kw).fit(X32, y)
    assert ours.coefs_[0].dtype == np.float64


def test_adam_partial_fit_warm_start_and_pickle_match_sklearn():
    (X, y), _, _ = DATA["iris"]
    kw = dict(solver="adam", hidden_layer_sizes=(10,), random_state=0, learning_rate_init=0.01,
              max_iter=5)
    ours, theirs = MLPClassifier(**kw), sknn.MLPClassifier(**kw)
    classes = np.unique(y)
    for est in (ours, theirs):
        for lo in (0, 50, 100):  # the moments and the step count carry over
            est.partial_fit(X[lo:lo + 50], y[lo:lo + 50], classes=classes)
    assert_stochastic_same(ours, theirs)
    ours = pickle.loads(pickle.dumps(ours))  # with the optimizer's state
    for est in (ours, theirs):
        est.partial_fit(X, y)
    assert_stochastic_same(ours, theirs)
    for est in (ours, theirs):  # fit (warm) starts a new optimizer, as in scikit-learn
        est.set_params(warm_start=True).fit(X, y)
    assert_stochastic_same(ours, theirs)
    assert len(ours.loss_curve_) == 4 + 5


def test_adam_verbose_prints_as_sklearn(capsys):
    outputs = []
    for cls in (MLPClassifier, sknn.MLPClassifier):
        (X, y), _, _ = DATA["iris"]
        cls(solver="adam", max_iter=30, tol=0.05, n_iter_no_change=2, verbose=True,
            early_stopping=True, random_state=0).fit(X, y)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "Validation score" in outputs[0] and "Stopping." in outputs[0]


def test_adam_divergence():
    (X, y), _, _ = DATA["regression"]
    for est in (MLPRegressor(solver="adam", learning_rate_init=1e300, max_iter=5, random_state=0),
                sknn.MLPRegressor(solver="adam", learning_rate_init=1e300, max_iter=5,
                                  random_state=0)):
        with pytest.raises(ValueError, match="^Solver produced non-finite parameter weights"):
            est.fit(X, y)
    # Adam's steps are bounded by the rate: huge data gives a huge loss, finite weights
    kw = dict(solver="adam", learning_rate_init=1e4, max_iter=6, random_state=0)
    ours = MLPRegressor(**kw).fit(X * 1e100, y * 1e100)
    theirs = sknn.MLPRegressor(**kw).fit(X * 1e100, y * 1e100)
    assert ours.n_iter_ == theirs.n_iter_
    assert_params_close(ours, theirs)


# ---------------------------------------------------------------------------
# sgd's learning-rate rules
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(learning_rate="invscaling", learning_rate_init=0.2, power_t=0.3),
    dict(learning_rate="invscaling", learning_rate_init=0.2, nesterovs_momentum=False),
    dict(learning_rate="adaptive", learning_rate_init=0.1, tol=0.01, n_iter_no_change=2),
    dict(learning_rate="adaptive", learning_rate_init=0.1, tol=0.05, n_iter_no_change=1,
         early_stopping=True),
    dict(learning_rate="constant", n_iter_no_change=np.inf, tol=10.0),
])
@pytest.mark.parametrize("data", ["iris", "regression"])
def test_sgd_learning_rate_rules_match_sklearn(data, kw):
    ours, theirs = _fit_both(data, **dict(dict(solver="sgd", max_iter=40, random_state=0,
                                               batch_size=32), **kw))
    assert_stochastic_same(ours, theirs)
    if kw.get("n_iter_no_change") == np.inf:
        assert ours.n_iter_ == 40


def test_sgd_adaptive_verbose_prints_as_sklearn(capsys):
    outputs = []
    for cls in (MLPClassifier, sknn.MLPClassifier):
        (X, y), _, _ = DATA["iris"]
        cls(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=0.02,
            n_iter_no_change=1, max_iter=40, verbose=True, random_state=0).fit(X, y)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "Setting learning rate to" in outputs[0]


def test_sgd_partial_fit_keeps_the_schedule_as_sklearn():
    (X, y), _, _ = DATA["regression"]
    kw = dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.05,
              random_state=0, hidden_layer_sizes=(8,))
    ours, theirs = MLPRegressor(**kw), sknn.MLPRegressor(**kw)
    for est in (ours, theirs):
        for lo in (0, 80, 160, 0):
            est.partial_fit(X[lo:lo + 80], y[lo:lo + 80])
    assert_stochastic_same(ours, theirs)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_divergence_with_early_stopping_as_sklearn(solver):
    """scikit-learn does not raise: it records NaN losses and validation scores
    up to max_iter and restores the best epoch's (finite) parameters."""
    (X, y), _, _ = DATA["regression"]
    kw = dict(solver=solver, learning_rate_init=10.0 if solver == "sgd" else 1e300,
              max_iter=12, early_stopping=True, random_state=0)
    Xb, yb = (X * 1e3, y * 1e3) if solver == "sgd" else (X, y)
    ours = MLPRegressor(**kw).fit(Xb, yb)
    theirs = sknn.MLPRegressor(**kw).fit(Xb, yb)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_array_equal(np.isfinite(ours.validation_scores_),
                                  np.isfinite(theirs.validation_scores_))
    assert np.isnan(ours.validation_scores_[-1])
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_,
                                                        rel=1e-7)
    for p in ours.coefs_ + ours.intercepts_:
        assert np.isfinite(p).all()
    assert_params_close(ours, theirs)


# ---------------------------------------------------------------------------
# Assignable coefs_ / intercepts_
# ---------------------------------------------------------------------------

def test_coefs_and_intercepts_are_assignable():
    (X, y), _, _ = DATA["iris"]
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)
    theirs = sknn.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=1).fit(X, y)
    clf.coefs_ = [c.copy() for c in theirs.coefs_]
    clf.intercepts_ = [b.copy() for b in theirs.intercepts_]
    np.testing.assert_allclose(clf.predict_proba(X), theirs.predict_proba(X), rtol=1e-12)
    # an item assignment writes into the model too
    clf.coefs_[1] = np.zeros((5, 3))
    clf.intercepts_[1] = np.array([0.0, 0.0, 1.0])
    assert (clf.model_.weights[1] == 0).all() and clf.model_.biases[1][2] == 1
    assert (clf.predict(X) == clf.classes_[2]).all()
    before = [c.copy() for c in clf.coefs_]
    with pytest.raises(ValueError, match="shape"):
        clf.coefs_ = [np.zeros((4, 5)), np.zeros((6, 3))]
    with pytest.raises(ValueError, match="2 arrays"):
        clf.coefs_ = [np.zeros((4, 5))]
    with pytest.raises(ValueError, match="NaN"):
        clf.intercepts_ = [np.full(5, np.nan), np.zeros(3)]
    for a, b in zip(clf.coefs_, before):  # all or nothing
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AttributeError, match="fitted"):
        MLPClassifier().coefs_ = before


# ---------------------------------------------------------------------------
# Sample weights
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(solver="lbfgs", max_iter=30),
    dict(solver="adam", max_iter=8),
    dict(solver="adam", max_iter=8, early_stopping=True),
    dict(solver="sgd", max_iter=8, learning_rate="invscaling", learning_rate_init=0.05),
    dict(solver="sgd", max_iter=8, early_stopping=True, nesterovs_momentum=False),
], ids=["lbfgs", "adam", "adam-early-stopping", "sgd-invscaling", "sgd-early-stopping"])
@pytest.mark.parametrize("data", list(DATA))
def test_sample_weight_matches_sklearn(data, kw):
    (X, y), ours_cls, sk_cls = DATA[data]
    sw = np.random.default_rng(0).uniform(0, 3, len(X))
    sw[::7] = 0.0  # zero weights are allowed
    kw = dict(kw, random_state=0, hidden_layer_sizes=(16,), alpha=1e-2)
    ours = ours_cls(**kw).fit(X, y, sample_weight=sw)
    theirs = sk_cls(**kw).fit(X, y, sample_weight=sw)
    assert ours.n_iter_ == theirs.n_iter_
    assert_params_close(ours, theirs)
    if kw["solver"] == "lbfgs":
        assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    else:
        assert_stochastic_same(ours, theirs)
    unweighted = ours_cls(**kw).fit(X, y)
    assert rel_error(unweighted.coefs_, ours.coefs_) > 1e-6  # the weights do something


def test_sample_weight_partial_fit_matches_sklearn():
    (X, y), _, _ = DATA["iris"]
    sw = np.random.default_rng(1).uniform(0.5, 2, len(X))
    classes = np.unique(y)
    for solver in ("sgd", "adam"):
        kw = dict(solver=solver, random_state=0, hidden_layer_sizes=(8,), learning_rate_init=0.01)
        ours, theirs = MLPClassifier(**kw), sknn.MLPClassifier(**kw)
        for est in (ours, theirs):
            est.partial_fit(X[:75], y[:75], sample_weight=sw[:75], classes=classes)
            est.partial_fit(X[75:], y[75:])  # unweighted after weighted: same state
            est.partial_fit(X, y, sw)
        assert_stochastic_same(ours, theirs)


def test_sample_weight_errors():
    (X, y), _, _ = DATA["iris"]
    est = MLPClassifier(max_iter=2, random_state=0)
    with pytest.raises(ValueError, match="shape"):
        est.fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        est.fit(X, y, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="NaN|infinity"):
        est.fit(X, y, sample_weight=np.full(len(X), np.nan))
    bad = np.ones(len(X))
    bad[5] = -1.0
    with pytest.raises(ValueError, match=r"sample_weight\[5\]"):
        est.fit(X, y, sample_weight=bad)
    assert not hasattr(est, "coefs_")  # nothing fitted


# ---------------------------------------------------------------------------
# The compiled epoch (sgd and adam): one kernel call per epoch, bitwise the
# per-batch path (each batch's gradient from the kernels, the update in numpy)
# ---------------------------------------------------------------------------

class _Counting:
    """The model's kernel object, counting its fit_epoch and gradients calls."""

    def __init__(self, kernels):
        self._kernels = kernels
        self.calls = {"fit_epoch": 0, "gradients": 0}

    def __getattr__(self, name):
        attr = getattr(self._kernels, name)
        if name not in self.calls:
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_one_compiled_call_per_epoch(solver, weighted):
    (X, y), _, _ = DATA["digits"]
    sw = np.random.default_rng(0).uniform(0.2, 2, len(X)) if weighted else None
    est = MLPClassifier(solver=solver, hidden_layer_sizes=(16,), max_iter=4, tol=0.0,
                        n_iter_no_change=np.inf, random_state=0, warm_start=True)
    est.partial_fit(X, y, classes=np.unique(y), sample_weight=sw)
    counting = est._net._net = _Counting(est._net._net)
    est.partial_fit(X, y, sample_weight=sw)
    assert counting.calls == {"fit_epoch": 1, "gradients": 0}
    est.fit(X, y, sample_weight=sw)  # warm: the same network, 4 epochs of 3 batches each
    assert est.n_iter_ == 4
    assert counting.calls == {"fit_epoch": 1 + 4, "gradients": 0}
    est._per_batch = True  # the reference path: one gradients call per batch
    est.fit(X, y, sample_weight=sw)
    assert counting.calls == {"fit_epoch": 5, "gradients": 4 * 3}


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_compiled_epoch_is_the_per_batch_path_bitwise(solver, weighted, dtype, n_threads):
    from fastbp import _kernels

    (X, y), _, _ = DATA["digits"]
    X = X.astype(dtype)
    sw = None
    if weighted:
        sw = np.random.default_rng(1).uniform(0, 3, len(X))
        sw[::5] = 0.0
    threshold = _kernels.set_parallel_threshold(0)  # every step of 2 threads in the team
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(n_threads)
    try:
        for extra in (dict(), dict(early_stopping=True, validation_fraction=0.2),
                      dict(learning_rate="invscaling", nesterovs_momentum=False,
                           hidden_layer_sizes=(12, 7), activation="tanh", batch_size=64)):
            kw = dict(dict(solver=solver, hidden_layer_sizes=(16,), alpha=0.01, max_iter=6,
                           learning_rate_init=0.02 if solver == "sgd" else 0.005,
                           random_state=0, n_threads=n_threads), **extra)
            regions = _kernels.parallel_regions()
            ours = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
            if n_threads == 2:
                assert _kernels.parallel_regions() > regions, "the fit ran serially"
            ref = MLPClassifier(**kw)
            ref._per_batch = True
            ref.fit(X, y, sample_weight=sw)
            assert ours.coefs_[0].dtype == dtype
            assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_
            for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
                np.testing.assert_array_equal(a, b)
            rtol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=rtol)
            if ref.validation_scores_ is not None:
                assert ours.validation_scores_ == ref.validation_scores_
            if extra.get("early_stopping"):
                continue
            # and partial_fit goes on from the same state (moments, velocity, t)
            for est in (ours, ref):
                est.partial_fit(X[:300], y[:300], sample_weight=None if sw is None else sw[:300])
            for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
                np.testing.assert_array_equal(a, b)
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(threshold)


@pytest.mark.parametrize("weighted", [False, True])
def test_lbfgs_in_pieces_matches_sklearn_and_any_thread_count(monkeypatch, weighted):
    """Large sets: the objective is summed over row pieces (one kernel call
    each); still scikit-learn's iterates, and bitwise the same on 1 and 2
    threads."""
    import fastbp.sklearn as fsk
    from fastbp import _kernels

    (X, y), _, _ = DATA["digits"]
    sw = np.random.default_rng(2).uniform(0, 2, len(X)) if weighted else None
    monkeypatch.setattr(fsk, "_LBFGS_PIECE_BYTES", 16 * 1024)
    pieces = fsk._lbfgs_pieces(len(X), [64, 16, 10], 8, sw)
    assert len(pieces) == 3 and pieces[-1][1] == len(X)
    assert sum(p[2] for p in pieces) == pytest.approx(1.0, rel=1e-15)
    kw = dict(solver="lbfgs", hidden_layer_sizes=(16,), alpha=1e-3, max_iter=30,
              random_state=0)
    calls = []
    real = fsk._lbfgs_pieces
    monkeypatch.setattr(fsk, "_lbfgs_pieces", lambda *a: calls.append(1) or real(*a))
    ours = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
    assert calls and len(real(len(X), ours.model_.layer_sizes, 8, sw)) == 3
    theirs = sknn.MLPClassifier(**kw).fit(X, y, sample_weight=sw)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    assert_params_close(ours, theirs)
    threshold = _kernels.set_parallel_threshold(0)
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        two = MLPClassifier(n_threads=2, **kw).fit(X, y, sample_weight=sw)
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(threshold)
    assert two.loss_ == ours.loss_
    for a, b in zip(two.coefs_ + two.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_compiled_epoch_is_the_per_batch_path_regressor(solver, loss):
    (X, y), _, _ = DATA["regression"]
    y = np.exp(y / 3) if loss == "poisson" else y
    sw = np.random.default_rng(3).uniform(0, 2, len(X))
    kw = dict(solver=solver, loss=loss, hidden_layer_sizes=(8,), alpha=0.05, max_iter=5,
              learning_rate_init=0.005, batch_size=32, random_state=0)
    for weights in (None, sw):
        ours = MLPRegressor(**kw).fit(X, y, sample_weight=weights)
        ref = MLPRegressor(**kw)
        ref._per_batch = True
        ref.fit(X, y, sample_weight=weights)
        for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sklearn_adam_reference_is_sklearns_adam_bitwise(dtype):
    """fastbp.optim._SklearnAdam (the compiled variant's reference) against
    scikit-learn's own AdamOptimizer, 50 steps, bit for bit."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    from fastbp import optim

    rng = np.random.default_rng(0)
    theta = (rng.standard_normal(301) * 10.0 ** rng.integers(-3, 2, 301)).astype(dtype)
    ours, theirs = theta.copy(), theta.copy()
    sk = AdamOptimizer([theirs], learning_rate_init=0.01, beta_1=0.8, beta_2=0.99,
                       epsilon=1e-6)
    opt = optim._SklearnAdam(lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    state = opt.init_state(theta.size, dtype)
    for _ in range(50):
        g = (rng.standard_normal(301) * 10.0 ** rng.integers(-6, 1, 301)).astype(dtype)
        sk.update_params([theirs], [g])
        opt.update(ours, g, state)
    assert theirs.dtype == dtype and state["step"] == sk.t == 50
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(state["exp_avg"], sk.ms[0])
    np.testing.assert_array_equal(state["exp_avg_sq"], sk.vs[0])
