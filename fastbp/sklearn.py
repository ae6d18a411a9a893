"""scikit-learn compatible estimators backed by :class:`fastbp.MLP`.

:class:`MLPClassifier` and :class:`MLPRegressor` follow scikit-learn's
``sklearn.neural_network`` estimators of the same names with
``solver="sgd"`` and ``learning_rate="constant"``: same parameters (the
subset that applies to SGD), same fitted attributes, same initialisation,
shuffling, L2 penalty, momentum update, stopping rule and warnings.  Given the
same ``random_state`` they draw the same initial weights and visit the samples
in the same order as scikit-learn, so the two follow the same trajectory up to
floating-point rounding.  Each epoch runs as one call into fastbp's compiled
kernels (forward, backward, penalty and momentum update of every batch), with
its buffers allocated once per fit.

scikit-learn is an optional dependency (``pip install fastbp[sklearn]``):
``import fastbp`` never imports it, this module does.

See ``docs/sklearn.md`` for a usage page and the list of scikit-learn checks
that are expected to fail, with reasons.
"""
from __future__ import annotations

import functools
import numbers
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import Tags, check_random_state, column_or_1d, shuffle
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "fastbp.sklearn needs scikit-learn >= 1.6, which is not installed (or too old: "
        f"{exc}). Install it with `pip install 'fastbp[sklearn]'` or "
        "`pip install 'scikit-learn>=1.6'`; the rest of fastbp works without it."
    ) from exc

from . import _common as C
from ._threads import threads
from .model import MLP, Epochs

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> fastbp's.
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
# scikit-learn's out_activation_ names -> fastbp's (output, loss).
_OUTPUTS = {
    "identity": ("identity", "squared_error"),
    "logistic": ("sigmoid", "binary_cross_entropy"),
    "softmax": ("softmax", "cross_entropy"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )


def _thread_capped(method: Any) -> Any:
    """Run an estimator method under ``fastbp.threads(self.n_threads)``."""
    @functools.wraps(method)
    def capped(self: Any, *args: Any, **kwargs: Any) -> Any:
        with threads(self.n_threads):
            return method(self, *args, **kwargs)
    return capped


class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`.

    Not part of the public API; see the subclasses for the parameters.
    """

    _classifier: bool = False

    def __init__(
        self,
        hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
        activation: str = "relu",
        *,
        alpha: float = 0.0001,
        batch_size: Union[int, str] = "auto",
        learning_rate_init: float = 0.001,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Union[int, np.random.RandomState, None] = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        dtype: str = "float32",
        n_threads: Optional[int] = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.n_threads = n_threads

    # -- parameter checking ---------------------------------------------------

    def _check_params(self) -> List[int]:
        """Validate the hyper-parameters; return the hidden layer sizes as a list."""
        hidden = self.hidden_layer_sizes
        if not hasattr(hidden, "__iter__"):
            hidden = [hidden]
        hidden = list(hidden)
        if not all(_is_int(h) and h > 0 for h in hidden):
            raise ValueError(
                f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        checks = [
            ("alpha", _is_real(self.alpha) and self.alpha >= 0, "a finite number >= 0"),
            (
                "batch_size",
                self.batch_size == "auto" if isinstance(self.batch_size, str)
                else _is_int(self.batch_size) and self.batch_size >= 1,
                "'auto' or an integer >= 1",
            ),
            (
                "learning_rate_init",
                _is_real(self.learning_rate_init) and self.learning_rate_init > 0,
                "a finite number > 0",
            ),
            ("max_iter", _is_int(self.max_iter) and self.max_iter >= 1, "an integer >= 1"),
            ("momentum", _is_real(self.momentum) and 0 <= self.momentum <= 1, "a number in [0, 1]"),
            ("tol", _is_real(self.tol) and self.tol >= 0, "a finite number >= 0"),
            (
                "validation_fraction",
                _is_real(self.validation_fraction) and 0 < self.validation_fraction < 1,
                "a number in (0, 1)",
            ),
            (
                "n_iter_no_change",
                _is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1,
                "an integer >= 1",
            ),
        ]
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            C.check_bool(name, getattr(self, name))  # the message of fastbp.MLP's booleans
        checks.append(
            ("verbose", isinstance(self.verbose, (bool, np.bool_)) or _is_int(self.verbose),
             "a bool or an integer")
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        C.check_dtype(self.dtype)
        return hidden

    def _np_dtype(self) -> type:
        return C.check_dtype(self.dtype)

    # -- fitted state -----------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_net")

    @property
    def coefs_(self) -> List[np.ndarray]:
        """Weight matrices in scikit-learn's orientation.

        ``coefs_[i]`` has shape (n_in, n_out) of layer i: the transpose of
        ``fastbp.MLP.weights[i]``.  The arrays are views of the model's
        parameters, so in-place writes go into the model.
        """
        if not hasattr(self, "_net"):
            raise AttributeError("coefs_ is only available after fit")
        return [W.T for W in self._net.weights]

    @property
    def intercepts_(self) -> List[np.ndarray]:
        """Bias vectors, ``intercepts_[i]`` of shape (n_out,) of layer i (views)."""
        if not hasattr(self, "_net"):
            raise AttributeError("intercepts_ is only available after fit")
        return list(self._net.biases)

    @property
    def model_(self) -> MLP:
        """The underlying :class:`fastbp.MLP` (shared, not a copy)."""
        if not hasattr(self, "_net"):
            raise AttributeError("model_ is only available after fit")
        return self._net

    def to_onnx(self, path: Any = None, **kwargs: Any) -> Any:
        """The fitted estimator as an ``onnx.ModelProto`` with skl2onnx's outputs.

        Written to ``path`` if given.  Needs the ``onnx`` package; see
        :func:`fastbp.onnx_export.estimator_to_onnx`.
        """
        from .onnx_export import estimator_to_onnx

        return estimator_to_onnx(self, path, **kwargs)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(super().__getstate__())  # sklearn may hand back the live __dict__
        net = state.pop("_net", None)
        if net is not None:
            state["_net_state"] = {
                "layer_sizes": net.layer_sizes,
                "activation": net.activation,
                "output": net.output,
                "loss": net.loss_name,
                "dtype": net.dtype.name,
                "weights": [W.copy() for W in net.weights],
                "biases": [b.copy() for b in net.biases],
                # partial_fit continues with the momentum velocity
                **net.optimizer_state(),
            }
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        spec = state.pop("_net_state", None)
        old_velocities = state.pop("_velocities", None)  # pickles from the per-batch Python loop
        super().__setstate__(state)
        if spec is not None:
            self._net = MLP(
                spec["layer_sizes"], activation=spec["activation"], output=spec["output"],
                loss=spec["loss"], dtype=spec["dtype"], seed=0,
                weights=spec["weights"], biases=spec["biases"],
            )
            velocity = spec.get("velocity")
            if velocity is None and old_velocities is not None:
                # scikit-learn's v_s (weights then biases) is -lr times the model's
                net = self._net
                velocity = np.zeros(net.n_params, dtype=net.dtype)
                n = net.n_layers
                for k, (v_w, v_b) in enumerate(zip(old_velocities[:n], old_velocities[n:])):
                    w0, b0 = net._net.w_off[k], net._net.b_off[k]
                    velocity[w0 : w0 + v_w.size] = np.ravel(v_w)
                    velocity[b0 : b0 + v_b.size] = np.ravel(v_b)
                velocity /= -float(self.learning_rate_init)
            self._net.set_optimizer_state({"velocity": velocity})

    # -- hooks the subclasses fill in ---------------------------------------------

    def _validate_input(
        self, X: ArrayLike, y: ArrayLike, incremental: bool, reset: bool
    ) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _out_activation(self) -> str:
        raise NotImplementedError

    def _predict_checked(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _validation_target(self, Y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _score_function(self, y: np.ndarray, y_pred: np.ndarray) -> float:
        raise NotImplementedError

    # -- training -----------------------------------------------------------------

    @_thread_capped
    def _forward(self, X: ArrayLike) -> np.ndarray:
        """Network outputs, shape (n_samples, n_outputs_).

        The network computes in ``dtype``; the outputs are returned in the
        floating dtype of X (float64 for non-float X), as scikit-learn does.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        out = self._net.predict(X)
        return out.astype(X.dtype, copy=False)

    @_thread_capped
    def _fit(self, X: ArrayLike, y: ArrayLike, incremental: bool) -> "_BaseMLP":
        hidden = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "_net") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples, n_features = X.shape
        layer_units = [n_features] + hidden + [Y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units)
        elif (
            list(self._net.layer_sizes) != layer_units
            or self._net.dtype != np.dtype(self._np_dtype())
        ):
            raise ValueError(
                f"cannot continue training a network of layer sizes "
                f"{list(self._net.layer_sizes)} ({self._net.dtype.name}) with layer sizes "
                f"{layer_units} ({np.dtype(self._np_dtype()).name}); "
                "set warm_start=False to start afresh"
            )
        self._fit_stochastic(X, Y, incremental)
        return self

    def _initialize(self, layer_units: List[int]) -> None:
        """Fresh network, drawn exactly as scikit-learn's MLP draws its parameters."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        output, loss = _OUTPUTS[self.out_activation_]
        dtype = self._np_dtype()
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights, biases = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            weights.append(coef.T.astype(dtype))
            biases.append(intercept.astype(dtype))
        self._net = MLP(
            layer_units, activation=_ACTIVATIONS[self.activation], output=output, loss=loss,
            dtype=dtype, seed=0, weights=weights, biases=biases,
        )
        self._best_params = self._copy_params()
        self.loss_curve_: List[float] = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_: Optional[List[float]] = []
            self.best_validation_score_: Optional[float] = -np.inf
            self.best_loss_: Optional[float] = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _copy_params(self) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        return [W.copy() for W in self._net.weights], [b.copy() for b in self._net.biases]

    def _set_params(self, params: Tuple[List[np.ndarray], List[np.ndarray]]) -> None:
        for k, (W, b) in enumerate(zip(*params)):
            self._net.weights[k][...] = W
            self._net.biases[k][...] = b

    def _fit_stochastic(self, X: np.ndarray, Y: np.ndarray, incremental: bool) -> None:
        """The SGD epochs: each one runs whole in fastbp's compiled loop.

        Everything random is drawn here exactly as scikit-learn draws it (the
        validation split, then one shuffle of ``sample_idx`` per epoch); the
        kernel then visits the rows in that order in consecutive batches and
        applies the penalty and the momentum update after each one.
        """
        net = self._net
        if not incremental:
            # As scikit-learn, fit() (warm or not) restarts the optimizer;
            # partial_fit() keeps its velocity (the model's) from call to call.
            net.reset_optimizer()

        X_val = y_val = None
        if self.early_stopping:
            stratify = Y.astype(bool) if (self._classifier and self.n_outputs_ == 1) else None
            X, X_val, Y, Y_val = train_test_split(
                X, Y, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify,
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            y_val = self._validation_target(Y_val)

        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. "
                    "It is going to be clipped"
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        # scikit-learn reports 0.5 * mean over samples AND outputs of the
        # squared error; fastbp's loss sums over the outputs (same gradient).
        loss_scale = 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0
        lr = C.check_lr(self.learning_rate_init, self._np_dtype())
        # scikit-learn's update v_s <- mu v_s - lr g; theta += v_s (Nesterov:
        # theta += mu v_s - lr g) is torch's v <- mu v + g; theta -= lr v
        # (lr (g + mu v)) with v_s = -lr v: the same steps at a constant lr,
        # up to rounding.  The kernel's l2 is scikit-learn's alpha exactly.
        mu = float(self.momentum)

        sample_idx = np.arange(n_samples)
        self.n_iter_ = 0
        with net._lock:
            X, Y = net._XY(X, Y)
            runner = Epochs(
                net, X, Y, batch_size, momentum=mu, nesterov=bool(self.nesterovs_momentum),
                weight_decay=0.0, l2=float(self.alpha), flush_denormals=True,
            )
            try:
                self._run_epochs(runner, sample_idx, lr, loss_scale, incremental, X_val, y_val)
            finally:
                del runner  # the workspace goes before the lock is released
            if self.early_stopping:
                self._set_params(self._best_params)

    def _run_epochs(
        self, runner: Epochs, sample_idx: np.ndarray, lr: float, loss_scale: float,
        incremental: bool, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray],
    ) -> None:
        n_samples = sample_idx.shape[0]
        for _ in range(self.max_iter):
            order = None
            if self.shuffle:
                sample_idx = shuffle(sample_idx, random_state=self._random_state)
                order = sample_idx.astype(np.int64, copy=False)
            try:
                loss_sum, _, penalty_sum = runner.epoch(order, lr, self.n_iter_)
            except FloatingPointError:
                # The model is back at the last step with a finite loss.
                raise ValueError(
                    "Solver produced non-finite parameter weights (the training loss "
                    f"became NaN or Inf at iteration {self.n_iter_ + 1}). The input "
                    "data may contain large values and need to be preprocessed, or "
                    f"learning_rate_init={lr:g} is too large."
                ) from None
            # Each batch's loss (mean, with alpha / (2 m) ||W||^2) weighted by
            # its size m, over n_samples: scikit-learn's loss_.
            self.n_iter_ += 1
            self.loss_ = (loss_scale * loss_sum + penalty_sum) / n_samples
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

            self._update_no_improvement_count(X_val, y_val)

            if self._no_improvement_count > self.n_iter_no_change:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(
                        "%s did not improve more than tol=%f for %d consecutive epochs. "
                        "Stopping." % (what, self.tol, self.n_iter_no_change)
                    )
                break
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(
                    "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                    "optimization hasn't converged yet." % self.max_iter,
                    ConvergenceWarning,
                    stacklevel=5,
                )

    def _update_no_improvement_count(
        self, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray]
    ) -> None:
        if self.early_stopping:
            y_pred = self._predict_checked(X_val)
            if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
                score = np.nan
            else:
                score = float(self._score_function(y_val, y_pred))
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._copy_params()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.target_tags.required = True
        return tags


_PARAMS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Widths of the hidden layers; ``()`` gives no hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden-layer activation (scikit-learn's names; ``"logistic"`` is
        fastbp's ``"sigmoid"``).
    alpha : float, default=0.0001
        Strength of the L2 penalty, exactly as in scikit-learn: each
        mini-batch of m samples minimises ``mean loss + alpha / (2 m) *
        sum(||W||^2)`` over the weight matrices (not the intercepts), i.e.
        every SGD step adds ``(alpha / m) * W`` to the weights' gradient.
        The reported losses include this term.
    batch_size : int or "auto", default="auto"
        Mini-batch size; ``"auto"`` is ``min(200, n_samples)``.  Larger
        values are clipped to n_samples (with a warning).
    learning_rate_init : float, default=0.001
        The (constant) SGD learning rate.
    max_iter : int, default=200
        Maximum number of epochs (passes over the data).
    shuffle : bool, default=True
        Shuffle the samples before each epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffling and the validation split,
        with the same draws as scikit-learn's MLP.
    tol : float, default=1e-4
        Tolerance of the stopping rule: training stops when the training loss
        (or, with ``early_stopping``, the validation score) has not improved
        by at least ``tol`` for more than ``n_iter_no_change`` consecutive
        epochs.
    verbose : bool, default=False
        Print the loss (and validation score) after each epoch.
    warm_start : bool, default=False
        Make ``fit`` start from the current parameters instead of a fresh
        initialisation (the momentum buffer is reset, as in scikit-learn).
    momentum : float, default=0.9
        SGD momentum, in [0, 1].
    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop when its
        score stops improving, and keep the parameters of the best epoch.
    validation_fraction : float, default=0.1
        Share of the training data held out with ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without an improvement of ``tol`` tolerated before stopping.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the parameters and of all computation; inputs are
        converted to it.
    n_threads : int or None, default=None
        At most this many threads for this estimator's fit and predict
        calls (through ``fastbp.threads``, local to the calling Python
        thread, so estimators fitted in parallel threads do not
        oversubscribe); None: the global setting (``fastbp.get_num_threads``).
"""

_ATTRIBUTES_DOC = """
    loss_ : float
        Training loss of the last epoch (mean of the per-batch losses, each
        taken before its update, with the L2 term).
    best_loss_ : float or None
        Lowest ``loss_`` seen; None with ``early_stopping``.
    loss_curve_ : list of float
        ``loss_`` after each epoch.
    validation_scores_ : list of float or None
        Score on the held-out set after each epoch with ``early_stopping``,
        else None.
    best_validation_score_ : float or None
        Best of ``validation_scores_``, or None.
    t_ : int
        Number of training samples seen.
    coefs_ : list of ndarray
        ``coefs_[i]`` of shape (n_in, n_out), the weights of layer i
        (views of the model: in-place writes go into it).
    intercepts_ : list of ndarray
        ``intercepts_[i]`` of shape (n_out,), the biases of layer i (views).
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names seen in fit, when X had string column names.
    n_iter_ : int
        Number of epochs run by the last call to fit (1 for partial_fit).
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of output units.
    out_activation_ : str
        Output activation, in scikit-learn's names.
    model_ : fastbp.MLP
        The underlying fastbp network.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = (
        """Multi-layer perceptron classifier trained by SGD in fastbp's kernels.

    A drop-in for ``sklearn.neural_network.MLPClassifier(solver="sgd",
    learning_rate="constant")``.  Multiclass targets use a softmax output and
    the cross-entropy; binary targets use one logistic output unit and the
    binary cross-entropy, as scikit-learn does; multilabel indicator targets
    use one logistic unit per label.  Class labels may be of any type
    (strings, integers, booleans).
"""
        + _PARAMS_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        Class labels (for multilabel targets, the label indices).
"""
        + _ATTRIBUTES_DOC
        + """
    See Also
    --------
    MLPRegressor : The regressor.
    fastbp.MLP : The network underneath.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from fastbp.sklearn import MLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01,
    ...                     max_iter=300, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    """
    )

    _classifier = True

    def _validate_input(
        self, X: ArrayLike, y: ArrayLike, incremental: bool, reset: bool
    ) -> Tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(
            self, X, y, multi_output=True, dtype=self._np_dtype(), reset=reset
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, "
                        f"`y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        Y = self._label_binarizer.transform(y).astype(self._np_dtype())
        return X, Y

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _predict_checked(self, X: np.ndarray) -> np.ndarray:
        out = self._net.predict(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def _validation_target(self, Y: np.ndarray) -> np.ndarray:
        return self._label_binarizer.inverse_transform(Y)

    def _score_function(self, y: np.ndarray, y_pred: np.ndarray) -> float:
        return accuracy_score(y, y_pred)

    def fit(self, X: ArrayLike, y: ArrayLike) -> "MLPClassifier":
        """Fit the model to data X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (dense).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or a multilabel indicator matrix.

        Returns
        -------
        self : MLPClassifier
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(
        self, X: ArrayLike, y: ArrayLike, classes: Optional[ArrayLike] = None
    ) -> "MLPClassifier":
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels.
        classes : array-like of shape (n_classes,), default=None
            All the classes that any call may see; required on the first
            call, optional (and then checked) afterwards.

        Returns
        -------
        self : MLPClassifier
            The updated estimator.
        """
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if not first and classes is not None and not np.array_equal(
            self.classes_, unique_labels(classes)
        ):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                f"was: {self.classes_!r}"
            )
        if first:
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
            self.classes_ = self._label_binarizer.classes_
        return self._fit(X, y, incremental=True)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_labels)
            Predicted labels (an indicator matrix for multilabel targets).
        """
        out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Probability of each class, in the order of ``classes_`` (for
            multilabel targets, the independent probability of each label).
        """
        out = self._forward(X)
        if self.n_outputs_ == 1:
            p = out.ravel()
            return np.vstack([1 - p, p]).T
        return out

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Log-probabilities (``-inf`` where a probability underflowed to 0).
        """
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = (
        """Multi-layer perceptron regressor trained by SGD in fastbp's kernels.

    A drop-in for ``sklearn.neural_network.MLPRegressor(solver="sgd",
    learning_rate="constant")``: identity output, squared error, one or
    several outputs.  The loss reported in ``loss_curve_`` is scikit-learn's,
    half the mean over samples and outputs of the squared error (plus the L2
    term); the gradient is that of half the sum over outputs, as in
    scikit-learn.
"""
        + _PARAMS_DOC
        + """
    Attributes
    ----------
"""
        + _ATTRIBUTES_DOC
        + """
    See Also
    --------
    MLPClassifier : The classifier.
    fastbp.MLP : The network underneath.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbp.sklearn import MLPRegressor
    >>> X = np.linspace(-2, 2, 200).reshape(-1, 1)
    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01,
    ...                    max_iter=500, random_state=0).fit(X, X.ravel() ** 2)
    >>> reg.score(X, X.ravel() ** 2) > 0.9
    True
    """
    )

    def _validate_input(
        self, X: ArrayLike, y: ArrayLike, incremental: bool, reset: bool
    ) -> Tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=self._np_dtype(), reset=reset
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        Y = np.ascontiguousarray(y, dtype=self._np_dtype())
        if not np.isfinite(Y).all():
            raise ValueError(f"y does not fit in {np.dtype(self._np_dtype()).name}")
        return X, Y

    def _out_activation(self) -> str:
        return "identity"

    def _predict_checked(self, X: np.ndarray) -> np.ndarray:
        out = self._net.predict(X)
        return out.ravel() if out.shape[1] == 1 else out

    def _validation_target(self, Y: np.ndarray) -> np.ndarray:
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _score_function(self, y: np.ndarray, y_pred: np.ndarray) -> float:
        return r2_score(y, y_pred)

    def fit(self, X: ArrayLike, y: ArrayLike) -> "MLPRegressor":
        """Fit the model to data X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (dense).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self : MLPRegressor
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: ArrayLike, y: ArrayLike) -> "MLPRegressor":
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self : MLPRegressor
            The updated estimator.
        """
        return self._fit(X, y, incremental=True)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions; 1-D when the model has a single output.
        """
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
