"""fastbp.sklearn: scikit-learn compatible MLPClassifier / MLPRegressor.

scikit-learn is optional: the whole module is skipped without it.  Besides
scikit-learn's own estimator checks, the estimators are compared with
``sklearn.neural_network``'s MLPs run with ``solver="sgd"``: same
initialisation, shuffling, penalty and update rule, so in float64 the two
follow the same trajectory to rounding.
"""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network as sknn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import (  # noqa: E402
    GridSearchCV,
    cross_val_score,
    train_test_split,
)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import (  # noqa: E402
    check_methods_subset_invariance,
    parametrize_with_checks,
)

import fastbp  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread (fastbp's, and BLAS's for scikit-learn's own MLP)
    is fastest, and immune to a busy machine."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    before = fastbp.get_num_threads()
    fastbp.set_num_threads(1)
    with threadpool_limits(1):
        yield
    fastbp.set_num_threads(before)


# ---------------------------------------------------------------------------
# scikit-learn's own estimator checks
# ---------------------------------------------------------------------------

# Small but real configurations: the checks insist on training accuracy > 0.83
# and R^2 > 0.5, and make_regression's unscaled targets need a modest step.
CHECKED = [
    MLPClassifier(solver="sgd", max_iter=30, learning_rate_init=0.01, random_state=0),
    MLPRegressor(solver="sgd", max_iter=50, learning_rate_init=0.002, random_state=0),
    MLPClassifier(max_iter=30, learning_rate_init=0.01, random_state=0),
    MLPRegressor(max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPClassifier(solver="lbfgs", max_iter=50, random_state=0),
    MLPRegressor(solver="lbfgs", max_iter=50, random_state=0),
    MLPRegressor(loss="poisson", max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPRegressor(loss="poisson", solver="lbfgs", max_iter=50, random_state=0),
]


def _check_id(est):
    loss = "-poisson" if getattr(est, "loss", None) == "poisson" else ""
    return f"{type(est).__name__}-{est.solver}{loss}"


def _expected_failures(est):
    """Checks that cannot pass, with the reason (docs/sklearn.md lists them)."""
    if getattr(est, "loss", None) == "poisson":
        return {"check_regressor_multioutput": (
            "feeds make_regression's negative targets unchanged (it ignores the "
            "positive_only tag); loss='poisson' refuses y < 0")}
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failures)
def test_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("est", CHECKED, ids=_check_id)
def test_subset_invariance_float64(est):
    est = clone(est).set_params(dtype="float64")
    check_methods_subset_invariance(type(est).__name__, est)


# ---------------------------------------------------------------------------
# Optional dependency
# ---------------------------------------------------------------------------

def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_fastbp_does_not_import_sklearn():
    r = _run("import sys, fastbp; fastbp.MLP([2, 2]); print('sklearn' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_clear_error_without_sklearn():
    r = _run(
        "import sys; sys.modules['sklearn'] = None\n"
        "import fastbp\n"
        "try:\n"
        "    import fastbp.sklearn\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "scikit-learn" in r.stdout and "pip install" in r.stdout


# ---------------------------------------------------------------------------
# Same trajectory as scikit-learn's MLP with solver="sgd"
# ---------------------------------------------------------------------------

def _pair(ours_cls, sk_cls, solver="sgd", **kw):
    common = dict(random_state=3, max_iter=8, solver=solver, **kw)
    ours = ours_cls(dtype="float64", **common)
    theirs = sk_cls(**common)
    return ours, theirs


def _assert_same_state(ours, theirs):
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    for name in ("n_iter_", "t_", "n_outputs_", "n_layers_", "out_activation_", "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    if theirs.best_loss_ is None:  # scikit-learn keeps no best loss with early stopping
        assert ours.best_loss_ is None
    else:
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-9)
    if theirs.validation_scores_ is None:
        assert ours.validation_scores_ is None
    else:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_)


CLF_X, CLF_Y = make_classification(
    n_samples=157, n_features=6, n_informative=4, n_classes=3, random_state=0
)
REG_X, REG_Y = make_regression(n_samples=143, n_features=5, n_targets=3, noise=0.5,
                               random_state=0)
REG_Y = REG_Y / REG_Y.std(axis=0)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(alpha=0.5, batch_size=32, momentum=0.5),
    dict(nesterovs_momentum=False, activation="tanh", hidden_layer_sizes=(7, 5)),
    dict(activation="logistic", learning_rate_init=0.05, shuffle=False),
    dict(early_stopping=True, validation_fraction=0.2, learning_rate_init=0.02),
    dict(activation="identity", hidden_layer_sizes=()),
], ids=["default", "alpha-batch", "tanh-classic-momentum", "logistic-noshuffle",
        "early-stopping", "linear"])
def test_classifier_matches_sklearn_sgd(kw):
    ours, theirs = _pair(MLPClassifier, sknn.MLPClassifier, **kw)
    ours.fit(CLF_X, CLF_Y)
    theirs.fit(CLF_X, CLF_Y)
    _assert_same_state(ours, theirs)
    np.testing.assert_allclose(ours.predict_proba(CLF_X), theirs.predict_proba(CLF_X),
                               rtol=1e-7, atol=1e-10)


def test_binary_classifier_matches_sklearn_sgd():
    y = np.where(CLF_Y == 1, "yes", "no")
    ours, theirs = _pair(MLPClassifier, sknn.MLPClassifier, alpha=0.01)
    ours.fit(CLF_X, y)
    theirs.fit(CLF_X, y)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 1
    _assert_same_state(ours, theirs)
    assert (ours.predict(CLF_X) == theirs.predict(CLF_X)).all()


@pytest.mark.parametrize("kw", [dict(), dict(alpha=0.3, early_stopping=True)])
def test_multioutput_regressor_matches_sklearn_sgd(kw):
    ours, theirs = _pair(MLPRegressor, sknn.MLPRegressor, learning_rate_init=0.01, **kw)
    ours.fit(REG_X, REG_Y)
    theirs.fit(REG_X, REG_Y)
    _assert_same_state(ours, theirs)
    np.testing.assert_allclose(ours.predict(REG_X), theirs.predict(REG_X), rtol=1e-7)


def test_partial_fit_and_warm_start_match_sklearn_sgd():
    ours, theirs = _pair(MLPClassifier, sknn.MLPClassifier, alpha=0.01)
    classes = np.unique(CLF_Y)
    for est in (ours, theirs):
        for lo in (0, 60, 120):  # the momentum buffer carries over between calls
            est.partial_fit(CLF_X[lo:lo + 60], CLF_Y[lo:lo + 60], classes=classes)
    _assert_same_state(ours, theirs)
    for est in (ours, theirs):
        est.set_params(warm_start=True).fit(CLF_X, CLF_Y)
    _assert_same_state(ours, theirs)
    assert len(ours.loss_curve_) == 3 + 8


# ---------------------------------------------------------------------------
# Labels, attributes, stopping
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "emu"]), np.array([-3, 7, 10]), np.array([False, True]),
    np.array(["a", "b"]), np.array([2.0, 0.0]),
], ids=["str3", "int3", "bool", "str2", "float2"])
def test_classes_of_any_type(labels):
    rng = np.random.default_rng(0)
    idx = rng.integers(len(labels), size=120)
    X = rng.normal(size=(120, 3)) + 3 * idx[:, None]
    y = labels[idx]
    clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=40,
                        random_state=0).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    pred = clf.predict(X)
    assert pred.dtype == y.dtype and set(pred) <= set(labels)
    assert clf.score(X, y) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (120, len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-6)
    expected = "logistic" if len(labels) == 2 else "softmax"
    assert clf.out_activation_ == expected


def test_multilabel():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 1]).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.05, max_iter=100,
                        random_state=0).fit(X, Y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    assert clf.predict(X).shape == (200, 3)
    assert clf.predict_proba(X).shape == (200, 3)
    assert clf.score(X, Y) > 0.8  # subset accuracy


def test_fitted_attributes_and_orientation():
    clf = MLPClassifier(hidden_layer_sizes=(9, 4), max_iter=5, random_state=0, dtype="float32")
    with pytest.raises(NotFittedError):
        clf.predict(CLF_X)
    clf.fit(CLF_X, CLF_Y)
    assert [c.shape for c in clf.coefs_] == [(6, 9), (9, 4), (4, 3)]
    assert [b.shape for b in clf.intercepts_] == [(9,), (4,), (3,)]
    for c, W in zip(clf.coefs_, clf.model_.weights):
        assert c.dtype == np.float32
        np.testing.assert_array_equal(c, W.T)
    assert clf.n_features_in_ == 6 and clf.n_outputs_ == 3 and clf.n_layers_ == 4
    assert clf.n_iter_ == 5 == len(clf.loss_curve_) and clf.t_ == 5 * 157
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.loss_ == clf.loss_curve_[-1]
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    # predictions come back in X's floating dtype
    assert clf.predict_proba(CLF_X).dtype == np.float64
    assert clf.predict_proba(CLF_X.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_stopping_rule_and_convergence_warning(solver):
    # A huge tol: after the first epoch (an improvement on best_loss_ = inf) no
    # epoch improves, and training stops once more than n_iter_no_change did not.
    est = MLPRegressor(tol=1e9, n_iter_no_change=3, max_iter=50, random_state=0, solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(REG_X, REG_Y)
    assert est.n_iter_ == 1 + 3 + 1
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPRegressor(max_iter=3, random_state=0, solver=solver).fit(REG_X, REG_Y)
    # early stopping keeps the best epoch's parameters
    est = MLPRegressor(early_stopping=True, n_iter_no_change=2, max_iter=60,
                       learning_rate_init=0.01, random_state=0, solver=solver).fit(REG_X, REG_Y)
    assert est.best_loss_ is None
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert len(est.validation_scores_) == est.n_iter_ < 60


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_rules(solver):
    clf = MLPClassifier(random_state=0, solver=solver)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(CLF_X, CLF_Y)
    clf.partial_fit(CLF_X[:10], CLF_Y[:10], classes=[0, 1, 2])
    assert clf.n_iter_ == 1 and clf.t_ == 10
    clf.partial_fit(CLF_X, CLF_Y)
    assert clf.t_ == 167 and len(clf.loss_curve_) == 2
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(CLF_X[:3], [0, 1, 5])
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True, solver=solver).partial_fit(CLF_X, CLF_Y,
                                                                      classes=[0, 1, 2])


@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(0,)), dict(hidden_layer_sizes=(3.5,)),
    dict(activation="sigmoid"), dict(alpha=-1.0), dict(batch_size=0),
    dict(batch_size="big"), dict(learning_rate_init=0), dict(max_iter=0),
    dict(momentum=1.5), dict(validation_fraction=1.0), dict(n_iter_no_change=0),
    dict(tol=-1), dict(dtype="float16"), dict(shuffle="yes"),
    dict(solver="newton"), dict(learning_rate="cyclic"), dict(power_t=-0.5),
    dict(beta_1=1.0), dict(beta_2=-0.1), dict(epsilon=0.0), dict(max_fun=0),
    dict(n_iter_no_change=2.5), dict(n_iter_no_change=-np.inf), dict(loss="huber"),
    dict(loss="poisson"), dict(validation_fraction=-0.1), dict(learning_rate_init=np.nan),
])
def test_invalid_params(params):
    with pytest.raises(ValueError):
        MLPRegressor(**params).fit(REG_X, REG_Y)


def test_divergence_is_an_error():
    est = MLPRegressor(solver="sgd", learning_rate_init=10.0, max_iter=50, random_state=0)
    with pytest.raises(ValueError, match="non-finite"):
        est.fit(REG_X, REG_Y * 1e3)
    # the kernel rewinds to the last step whose loss was finite
    for p in est.coefs_ + est.intercepts_:
        assert np.isfinite(p).all()


def test_epochs_run_in_the_compiled_loop(monkeypatch):
    """One kernel call per epoch: no per-batch Python (MLP.gradients / MLP.step)."""
    from fastbp import model as fbm

    def forbidden(*args, **kwargs):
        raise AssertionError("per-batch Python path used")

    calls = []
    epoch = fbm.Epochs.epoch

    def counting(self, order, lr, index, progress=None):
        calls.append(None if order is None else order.dtype)
        return epoch(self, order, lr, index, progress)

    monkeypatch.setattr(fbm.MLP, "gradients", forbidden)
    monkeypatch.setattr(fbm.MLP, "step", forbidden)
    monkeypatch.setattr(fbm.Epochs, "epoch", counting)
    clf = MLPClassifier(solver="sgd", hidden_layer_sizes=(5,), batch_size=7, max_iter=4,
                        n_iter_no_change=9, random_state=0).fit(CLF_X, CLF_Y)
    assert clf.n_iter_ == 4 and calls == [np.int64] * 4
    clf.partial_fit(CLF_X, CLF_Y)
    MLPRegressor(solver="sgd", max_iter=2, shuffle=False, random_state=0).fit(REG_X, REG_Y)
    assert calls == [np.int64] * 5 + [None] * 2


def test_pickle_keeps_partial_fit_velocity():
    est = MLPRegressor(solver="sgd", dtype="float64", learning_rate_init=0.01, random_state=0)
    est.partial_fit(REG_X, REG_Y)
    copy = pickle.loads(pickle.dumps(est))
    for e in (est, copy):
        e.partial_fit(REG_X, REG_Y)
    np.testing.assert_array_equal(copy.predict(REG_X), est.predict(REG_X))
    # ... and it is not a velocity of zero: that would be another step
    fresh = pickle.loads(pickle.dumps(est))
    fresh.model_.reset_optimizer()
    est.partial_fit(REG_X, REG_Y)
    fresh.partial_fit(REG_X, REG_Y)
    assert not np.array_equal(fresh.predict(REG_X), est.predict(REG_X))


def test_unpickle_per_batch_loop_velocities():
    """Pickles from before the compiled loop kept scikit-learn's velocities
    (v_s = -lr * the model's) as a list, weights then biases."""
    est = MLPRegressor(solver="sgd", dtype="float64", learning_rate_init=0.01, random_state=0)
    est.partial_fit(REG_X, REG_Y)
    state = est.__getstate__()
    state["_net_state"] = dict(state["_net_state"])
    state["_net_state"].pop("optimizer_state")
    net, views = est.model_, []
    for k in range(net.n_layers):
        w0, b0 = net._net.w_off[k], net._net.b_off[k]
        W, b = net.weights[k], net.biases[k]
        views.append((net._velocity[w0:w0 + W.size].reshape(W.shape),
                      net._velocity[b0:b0 + b.size]))
    state["_velocities"] = [-0.01 * v for v, _ in views] + [-0.01 * v for _, v in views]
    old = MLPRegressor.__new__(MLPRegressor)
    old.__setstate__(state)
    assert not hasattr(old, "_velocities")
    np.testing.assert_allclose(old.model_._velocity, est.model_._velocity, rtol=1e-14)
    old.partial_fit(REG_X, REG_Y)
    est.partial_fit(REG_X, REG_Y)
    np.testing.assert_allclose(old.predict(REG_X), est.predict(REG_X), rtol=1e-12)


def test_unpickle_before_the_solvers():
    """Pickles from before solver= were SGD estimators (float32 by default):
    they load as solver="sgd" and continue with their velocity."""
    est = MLPRegressor(solver="sgd", dtype="float32", learning_rate_init=0.01, random_state=0)
    est.partial_fit(REG_X, REG_Y)
    state = est.__getstate__()
    for key in ("solver", "learning_rate", "power_t", "beta_1", "beta_2", "epsilon",
                "max_fun", "loss", "_optimizer"):
        state.pop(key)
    old = MLPRegressor.__new__(MLPRegressor)
    old.__setstate__(state)
    assert old.get_params()["solver"] == "sgd" and old.loss == "squared_error"
    old.partial_fit(REG_X, REG_Y)
    est.partial_fit(REG_X, REG_Y)
    np.testing.assert_array_equal(old.predict(REG_X), est.predict(REG_X))


def test_verbose_prints_as_sklearn(capsys):
    ours, theirs = _pair(MLPClassifier, sknn.MLPClassifier, verbose=True)
    ours.fit(CLF_X, CLF_Y)
    printed = capsys.readouterr().out
    theirs.fit(CLF_X, CLF_Y)
    assert printed == capsys.readouterr().out
    assert printed.count("Iteration") == 8


def test_pickle_and_clone_round_trip():
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    clf.fit(CLF_X, CLF_Y)
    before = clf.predict_proba(CLF_X)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(CLF_X), before)
    assert back.loss_curve_ == clf.loss_curve_
    np.testing.assert_array_equal(clf.predict_proba(CLF_X), before)  # original intact
    back.partial_fit(CLF_X, CLF_Y)  # and trainable
    assert clone(clf).get_params() == clf.get_params()


# ---------------------------------------------------------------------------
# Meta-estimators and a real data set
# ---------------------------------------------------------------------------

def test_pipeline_gridsearch_cross_val_score():
    X, y = CLF_X * 10 + 5, CLF_Y
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,),
                                                         learning_rate_init=0.05,
                                                         max_iter=30, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.6
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                               "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]}, cv=2)
    grid.fit(X, y)
    assert grid.best_score_ > 0.6
    assert grid.predict(X).shape == y.shape
    reg = make_pipeline(StandardScaler(), MLPRegressor(learning_rate_init=0.01, max_iter=30,
                                                       random_state=0))
    assert cross_val_score(reg, REG_X, REG_Y[:, 0], cv=3).mean() > 0.8


def test_digits_accuracy_close_to_sklearn():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    ours = MLPClassifier(solver="sgd", learning_rate_init=0.01, max_iter=60, random_state=0)
    theirs = sknn.MLPClassifier(max_iter=60, random_state=0)  # sklearn's default: adam
    acc_ours = ours.fit(Xtr, ytr).score(Xte, yte)
    acc_theirs = theirs.fit(Xtr, ytr).score(Xte, yte)
    assert acc_ours > 0.95
    assert acc_ours > acc_theirs - 0.03, (acc_ours, acc_theirs)
