"""scikit-learn compatible estimators backed by :class:`fastbp.MLP`.

:class:`MLPClassifier` and :class:`MLPRegressor` follow scikit-learn's
``sklearn.neural_network`` estimators of the same names: the same parameters,
fitted attributes, initialisation, shuffling, validation split, L2 penalty,
solvers (``"adam"``, the default, ``"sgd"`` and ``"lbfgs"``), learning-rate
rules, stopping rules, warnings and errors.  Given the same ``random_state``
they draw the same initial weights and visit the samples in the same order
as scikit-learn, so the two follow the same trajectory up to floating-point
rounding.

- ``solver="sgd"`` and ``solver="adam"``: each epoch (or ``partial_fit``)
  runs as one call into fastbp's compiled kernels: forward, backward, L2
  term and update of every batch, with or without sample weights.  adam is
  scikit-learn's Adam (which differs from ``torch.optim.Adam`` in where
  ``epsilon`` enters), the private ``fastbp.optim._SklearnAdam``, with
  numpy's roundings of scikit-learn's update.
- ``solver="lbfgs"``: scikit-learn's call of :func:`scipy.optimize.minimize`
  (same objective, same packing of the parameters, same options); each
  evaluation of the loss and gradient of the whole data set is one GIL-free
  kernel call.

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
    from sklearn.utils import Tags, check_random_state, column_or_1d, gen_batches
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "fastbp.sklearn needs scikit-learn >= 1.6, which is not installed (or too old: "
        f"{exc}). Install it with `pip install 'fastbp[sklearn]'` or "
        "`pip install 'scikit-learn>=1.6'`; the rest of fastbp works without it."
    ) from exc

from . import _common as C
from . import _sparse
from ._threads import MAX_THREADS, get_num_threads, threads
from .model import MLP, Epochs, ParamList
from .optim import _SklearnAdam

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> fastbp's.
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
# scikit-learn's out_activation_ names -> fastbp's (output, loss).
_OUTPUTS = {
    "identity": ("identity", "squared_error"),
    "logistic": ("sigmoid", "binary_cross_entropy"),
    "softmax": ("softmax", "cross_entropy"),
    "exp": ("exp", "poisson"),
}
# MLPRegressor's loss -> its out_activation_, as scikit-learn's _initialize sets it.
_REGRESSION_OUTPUTS = {"squared_error": "identity", "poisson": "exp"}
# scikit-learn's message for negative targets of a Poisson loss (its trees' and
# forests' criterion="poisson"; its MLPRegressor documents y >= 0).
_NEGATIVE_Y = "Some value(s) of y are negative which is not allowed for Poisson regression."
_SOLVERS = ("lbfgs", "sgd", "adam")
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")

# scikit-learn's message when a fit leaves non-finite parameters.
_NON_FINITE = (
    "Solver produced non-finite parameter weights. The input data may contain large "
    "values and need to be preprocessed."
)


# Sparse X (scipy.sparse): accepted as scikit-learn's MLP accepts it (other
# formats converted to CSR by validate_data), kept sparse (fastbp/_sparse.py).
_SPARSE_FORMATS = ["csr", "csc"]


def _dense_or_csr(X: Any, dtype: Any) -> Any:
    """The network's X: C-contiguous of ``dtype``, or a sparse X as a checked CSR."""
    if _sparse.is_sparse(X):
        return _sparse.check_sparse_X(X, X.shape[1], dtype)
    return np.ascontiguousarray(X, dtype=dtype)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and bool(np.isfinite(value))
    )


def _lbfgs_iprint_options(verbose: Any) -> Dict[str, Any]:
    """scikit-learn's ``_get_additional_lbfgs_options_dict("iprint", ...)``:
    ``iprint`` only for scipy < 1.15, which deprecated it."""
    import scipy

    from .optim import _version_tuple

    if _version_tuple(scipy.__version__) >= (1, 15):
        return {}
    return {"iprint": 1 if (verbose is True or verbose >= 1) else -1}


def _check_lbfgs_result(result: Any, max_iter: int) -> int:
    """scikit-learn's ``_check_optimize_result("lbfgs", ...)``: the iteration
    count (at most ``max_iter``), with its ConvergenceWarning when scipy did
    not report success."""
    n_iter = min(int(result.nit), max_iter)
    if result.status != 0:
        msg = (
            f"lbfgs failed to converge after {n_iter} iteration(s) "
            f"(status={result.status}):\n{result.message}\n"
        )
        if n_iter == max_iter:
            msg += (
                "\nIncrease the number of iterations to improve the "
                f"convergence (max_iter={max_iter})."
            )
        msg += (
            "\nYou might also want to scale the data as shown in:\n"
            "    https://scikit-learn.org/stable/modules/preprocessing.html"
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=4)
    return n_iter


def _thread_capped(method: Any) -> Any:
    """Run an estimator method under ``fastbp.threads(self.n_threads)``."""
    @functools.wraps(method)
    def capped(self: Any, *args: Any, **kwargs: Any) -> Any:
        with threads(self.n_threads):
            return method(self, *args, **kwargs)
    return capped


_BLAS_CONTROLLER: Any = None


def _one_blas_thread() -> Any:
    """A context limiting numpy's and scipy's BLAS to one thread (threadpoolctl,
    a scikit-learn dependency).  The controller (a scan of the loaded
    libraries, ~10 ms) is made once, after scipy.optimize is imported."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


# Rows per kernel call of the L-BFGS objective: pieces whose activations and
# deltas (2 * sum of the layer widths per row) fill about this many bytes.
# Not a function of the thread count, so neither is the result.  (50,000 x 20
# rows, hidden 100, float64, CPU ms per evaluation on a busy machine: one
# call 89; pieces of 512 rows 54, of 2,048 rows 59; on 2 threads, whose
# parallel regions cost more per call, 512 rows 128, 2,048 rows 88, one
# call 101.)
_LBFGS_PIECE_BYTES = 2 << 20


def _lbfgs_pieces(
    n_rows: int, layer_sizes: Sequence[int], itemsize: int, sw: Optional[np.ndarray],
) -> List[Tuple[int, int, float]]:
    """The L-BFGS objective's row pieces: (start, stop, share) with share the
    piece's rows (or weight sum, in double in row order, as the kernels take
    it) over the whole set's; a piece of weight 0 is left out.  One piece
    (the whole set, share 1) when it is small."""
    rows = max(256, _LBFGS_PIECE_BYTES // (2 * itemsize * int(sum(layer_sizes))))
    if n_rows <= 2 * rows:
        return [(0, n_rows, 1.0)]
    bounds = [(a, min(a + rows, n_rows)) for a in range(0, n_rows, rows)]
    if sw is None:
        sizes = [float(b - a) for a, b in bounds]
    else:
        sizes = [float(np.cumsum(sw[a:b], dtype=np.float64)[-1]) for a, b in bounds]
    total = float(np.sum(sizes))
    return [(a, b, w / total) for (a, b), w in zip(bounds, sizes) if w > 0]


class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`.

    Not part of the public API; see the subclasses for the parameters.
    """

    _classifier: bool = False
    # True: sgd and adam run per batch (one kernel call for each batch's
    # gradient, the update in numpy), the reference the compiled epoch is
    # tested against (tests/test_sklearn_solvers.py); False: one compiled
    # call per epoch.
    _per_batch: bool = False

    def __init__(
        self,
        hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: Union[int, str] = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Union[int, np.random.RandomState, None] = None,
        tol: float = 1e-4,
        verbose: Union[bool, int] = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: Union[int, float] = 10,
        max_fun: int = 15000,
        dtype: Optional[str] = None,
        n_threads: Optional[int] = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
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
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
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
        for name, options in (("activation", _ACTIVATIONS), ("solver", _SOLVERS),
                              ("learning_rate", _LEARNING_RATES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in options:
                raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
        n_iter_no_change = self.n_iter_no_change
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
            ("power_t", _is_real(self.power_t) and self.power_t >= 0, "a finite number >= 0"),
            ("max_iter", _is_int(self.max_iter) and self.max_iter >= 1, "an integer >= 1"),
            ("momentum", _is_real(self.momentum) and 0 <= self.momentum <= 1, "a number in [0, 1]"),
            ("tol", _is_real(self.tol) and self.tol >= 0, "a finite number >= 0"),
            (
                "validation_fraction",
                _is_real(self.validation_fraction) and 0 <= self.validation_fraction < 1,
                "a number in [0, 1)",
            ),
            ("beta_1", _is_real(self.beta_1) and 0 <= self.beta_1 < 1, "a number in [0, 1)"),
            ("beta_2", _is_real(self.beta_2) and 0 <= self.beta_2 < 1, "a number in [0, 1)"),
            ("epsilon", _is_real(self.epsilon) and self.epsilon > 0, "a finite number > 0"),
            (
                "n_iter_no_change",
                (_is_int(n_iter_no_change) and n_iter_no_change >= 1)
                or (isinstance(n_iter_no_change, numbers.Real)
                    and not isinstance(n_iter_no_change, (bool, np.bool_))
                    and n_iter_no_change == np.inf),
                "an integer >= 1 or numpy.inf",
            ),
            ("max_fun", _is_int(self.max_fun) and self.max_fun >= 1, "an integer >= 1"),
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
        if self.dtype is not None:
            C.check_dtype(self.dtype)
        self._check_loss()
        return hidden

    def _check_loss(self) -> None:
        pass

    def _compute_dtype(self, X_dtype: np.dtype, first_pass: bool) -> type:
        """The dtype the network computes in.

        The estimator's ``dtype`` when given; else, on a continued fit, the
        network's; else scikit-learn's: float32 for float32 X, float64
        otherwise (lbfgs then ends with float64 parameters, see
        :meth:`_fit_lbfgs`).
        """
        if self.dtype is not None:
            return C.check_dtype(self.dtype)
        if not first_pass:
            return self._net.dtype.type
        return np.float32 if X_dtype == np.float32 else np.float64

    # -- fitted state -----------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_net")

    @property
    def coefs_(self) -> List[np.ndarray]:
        """Weight matrices in scikit-learn's orientation.

        ``coefs_[i]`` has shape (n_in, n_out) of layer i: the transpose of
        ``fastbp.MLP.weights[i]``.  The arrays are views of the model's
        parameters, so in-place writes go into the model; so do
        ``coefs_[i] = array`` and ``coefs_ = [arrays]`` (shapes checked).
        """
        if not hasattr(self, "_net"):
            raise AttributeError("coefs_ is only available after fit")
        return ParamList("coefs_", [W.T for W in self._net.weights])

    @coefs_.setter
    def coefs_(self, value: Sequence[ArrayLike]) -> None:
        self._assign("coefs_", value, [W.T for W in self._net.weights] if hasattr(self, "_net")
                     else None)

    @property
    def intercepts_(self) -> List[np.ndarray]:
        """Bias vectors, ``intercepts_[i]`` of shape (n_out,) of layer i (views,
        assignable like :attr:`coefs_`)."""
        if not hasattr(self, "_net"):
            raise AttributeError("intercepts_ is only available after fit")
        return ParamList("intercepts_", list(self._net.biases))

    @intercepts_.setter
    def intercepts_(self, value: Sequence[ArrayLike]) -> None:
        self._assign("intercepts_", value, list(self._net.biases) if hasattr(self, "_net")
                     else None)

    def _assign(self, name: str, value: Any, targets: Optional[List[np.ndarray]]) -> None:
        """``coefs_ = [...]`` / ``intercepts_ = [...]``: copy into the model, all or nothing."""
        if targets is None:
            raise AttributeError(
                f"{name} can only be assigned on a fitted estimator (fit or partial_fit "
                "first: the network's layer sizes come from the data)"
            )
        if isinstance(value, np.ndarray) or not hasattr(value, "__len__"):
            raise ValueError(f"{name} must be a list of {len(targets)} arrays")
        if len(value) != len(targets):
            raise ValueError(f"{name} must be a list of {len(targets)} arrays, got {len(value)}")
        new = [C._param(f"{name}[{k}]", v, t.shape, t.dtype.type)
               for k, (v, t) in enumerate(zip(value, targets))]
        for t, v in zip(targets, new):
            t[...] = v

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
                "optimizer_state": net.optimizer_state(),
            }
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        spec = state.pop("_net_state", None)
        old_velocities = state.pop("_velocities", None)  # pickles from the per-batch Python loop
        # Pickles from before the solvers: an SGD estimator, in float32 by default.
        if "solver" not in state:
            state.update(solver="sgd", learning_rate="constant", power_t=0.5, beta_1=0.9,
                         beta_2=0.999, epsilon=1e-8, max_fun=15000)
            state.setdefault("dtype", "float32")
            if not self._classifier:
                state.setdefault("loss", "squared_error")
            if spec is not None:
                lr = float(state.get("learning_rate_init", 0.001))
                state.setdefault("_optimizer", {"solver": "sgd", "lr": lr, "lr_used": lr})
        super().__setstate__(state)
        if spec is not None:
            self._net = MLP(
                spec["layer_sizes"], activation=spec["activation"], output=spec["output"],
                loss=spec["loss"], dtype=spec["dtype"], seed=0,
                weights=spec["weights"], biases=spec["biases"],
            )
            if "optimizer_state" in spec:
                self._net.set_optimizer_state(spec["optimizer_state"])
                return
            velocity = spec.get("velocity")  # pickles from before the optimizer objects
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

    def _score_function(
        self, y: np.ndarray, y_pred: np.ndarray, sample_weight: Optional[np.ndarray] = None,
    ) -> float:
        raise NotImplementedError

    def _check_solver(self) -> bool:
        """scikit-learn's condition for ``partial_fit`` to exist."""
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                f"{self.solver} is not stochastic."
            )
        return True

    # -- training -----------------------------------------------------------------

    @_thread_capped
    def _forward(self, X: ArrayLike) -> np.ndarray:
        """Network outputs, shape (n_samples, n_outputs_).

        The network computes in its dtype; the outputs come back in the
        dtype numpy gives X's floating dtype (float64 for non-float X) with
        the parameters', as scikit-learn's do.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32),
                          accept_sparse=_SPARSE_FORMATS)
        out = self._net.predict(X)
        return out.astype(np.result_type(X.dtype, self._net.dtype), copy=False)

    # -- prediction's fast path ------------------------------------------------
    # (predict-side only: the general path above stays scikit-learn's own
    # check_is_fitted and validate_data.)

    def _forward_fast(self, X: Any) -> Optional[np.ndarray]:
        """:meth:`_forward` for the common case, without scikit-learn's checking
        machinery; None when the case is not one it takes (the caller then
        calls :meth:`_forward`, whose checks raise and warn).

        Taken: a fitted estimator (scikit-learn's ``check_is_fitted``: ``_net``
        is set), fitted without feature names (so ``validate_data`` would
        neither warn nor compare names), ``n_threads`` None or a valid ``int``,
        and ``X`` an exact ``numpy.ndarray`` of shape (n_samples >= 1,
        ``n_features_in_``), C-contiguous, float32 or float64 (which
        ``validate_data(dtype=(np.float64, np.float32))`` passes through
        unchanged), all finite (its ``ensure_all_finite``) -- the model's
        compiled fast path makes the array checks.  The output dtype is
        :meth:`_forward`'s.
        """
        net = self.__dict__.get("_net")
        if net is None or type(X) is not np.ndarray:
            return None
        if getattr(self, "feature_names_in_", None) is not None:
            return None
        cap = self.n_threads
        if cap is not None and (type(cap) is not int or not 1 <= cap <= MAX_THREADS):
            return None
        if getattr(self, "n_features_in_", None) != net.layer_sizes[0] or net._feature_names is not None:
            return None
        out = net._predict_fast(X, cap)
        if out is not None and out.dtype != X.dtype:
            out = out.astype(np.result_type(X.dtype, out.dtype), copy=False)
        return out

    @_thread_capped
    def _fit(
        self, X: ArrayLike, y: ArrayLike, incremental: bool, sample_weight: Any = None,
    ) -> "_BaseMLP":
        hidden = self._check_params()
        if self.early_stopping and incremental and self.solver in _STOCHASTIC_SOLVERS:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "_net") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = self._compute_dtype(X.dtype, first_pass)
        X_dtype = X.dtype
        sw = None
        if sample_weight is not None:
            # scikit-learn's checks and messages (shape, finite, not all zero),
            # then the kernels' condition: no negative weight
            sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            bad = np.flatnonzero(sw < 0)
            if bad.size:
                raise ValueError(
                    f"sample_weight must be >= 0 (fastbp's kernels take no negative "
                    f"weights); sample_weight[{bad[0]}] = {sw[bad[0]]!r}"
                )
            sw = np.ascontiguousarray(sw, dtype=dtype)
        X = _dense_or_csr(X, dtype)
        Y = self._target(Y, dtype)
        n_samples, n_features = X.shape
        layer_units = [n_features] + hidden + [Y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, dtype, X_dtype)
        elif (
            list(self._net.layer_sizes) != layer_units
            or self._net.dtype != np.dtype(dtype)
        ):
            raise ValueError(
                f"cannot continue training a network of layer sizes "
                f"{list(self._net.layer_sizes)} ({self._net.dtype.name}) with layer sizes "
                f"{layer_units} ({np.dtype(dtype).name}); "
                "set warm_start=False to start afresh"
            )
        if self.solver in _STOCHASTIC_SOLVERS:
            self._fit_stochastic(X, Y, incremental, sw)
        else:
            self._fit_lbfgs(X, Y, sw)
        if not np.isfinite(self._net.flat_parameters).all():
            raise ValueError(_NON_FINITE)
        return self

    def _target(self, Y: np.ndarray, dtype: type) -> np.ndarray:
        """The network's target array (n_samples, n_outputs), C-contiguous, in ``dtype``."""
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        return np.ascontiguousarray(Y, dtype=dtype)

    def _initialize(self, layer_units: List[int], dtype: type, X_dtype: np.dtype) -> None:
        """Fresh network, drawn exactly as scikit-learn's MLP draws its parameters.

        As scikit-learn, the draws are rounded to X's dtype (float32 X: float32
        starting weights, also for lbfgs, which then computes in float64).
        """
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        output, loss = _OUTPUTS[self.out_activation_]
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights, biases = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            # (the model copies them: no copy here when the dtypes agree)
            weights.append(coef.T.astype(X_dtype, copy=False).astype(dtype, copy=False))
            biases.append(intercept.astype(X_dtype, copy=False).astype(dtype, copy=False))
        self._net = MLP(
            layer_units, activation=_ACTIVATIONS[self.activation], output=output, loss=loss,
            dtype=dtype, seed=0, weights=weights, biases=biases,
        )
        # the point to restore after early stopping (the only reader)
        self._best_params = self._copy_params() if self.early_stopping else None
        if self.solver in _STOCHASTIC_SOLVERS:
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

    def _copy_params(self) -> np.ndarray:
        return self._net.flat_parameters.copy()

    def _set_params(self, params: np.ndarray) -> None:
        self._net.flat_parameters[...] = params

    def _loss_scale(self) -> float:
        # scikit-learn reports 0.5 * mean over samples AND outputs of the
        # squared error; fastbp's loss sums over the outputs (same gradient).
        return 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0

    # -- L-BFGS ---------------------------------------------------------------------

    def _sklearn_layout(self) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
        """Where scikit-learn's packed vector keeps each of the model's parameters.

        scikit-learn packs ``coefs_`` (each (n_in, n_out), row-major) and
        then ``intercepts_``; the model keeps W_k (n_out, n_in) and b_k layer
        by layer.  Returns ``perm`` with ``theta = x[perm]`` and the slices
        of ``x`` that hold each ``coefs_[k]``.
        """
        net = self._net
        sizes = net.layer_sizes
        perm = np.empty(net.n_params, dtype=np.intp)
        coef_slices = []
        pos = 0
        for k in range(net.n_layers):
            n_in, n_out = sizes[k], sizes[k + 1]
            w0 = net._net.w_off[k]
            # W_k[i, j] (at w0 + i n_in + j) is coefs_[k][j, i] (at pos + j n_out + i)
            idx = pos + np.arange(n_in)[None, :] * n_out + np.arange(n_out)[:, None]
            perm[w0 : w0 + n_in * n_out] = idx.ravel()
            coef_slices.append((pos, pos + n_in * n_out))
            pos += n_in * n_out
        for k in range(net.n_layers):
            n_out = sizes[k + 1]
            b0 = net._net.b_off[k]
            perm[b0 : b0 + n_out] = pos + np.arange(n_out)
            pos += n_out
        return perm, coef_slices

    def _fit_lbfgs(self, X: np.ndarray, Y: np.ndarray, sw: Optional[np.ndarray]) -> None:
        """scikit-learn's ``_fit_lbfgs``: the same objective, packing and scipy call.

        The objective is the mean loss plus ``alpha / (2 n) sum ||W||^2``
        (scikit-learn's), its gradient the mean loss's plus ``(alpha / n)
        W``; with sample weights s, the weighted mean ``sum s_i l_i / sum s``
        and ``alpha / (2 sum s)``, as scikit-learn's.  The kernels compute
        the loss and gradient of the whole data set in GIL-free calls (see
        below).  scipy sees the parameters
        packed as scikit-learn packs them (all ``coefs_``, then all
        ``intercepts_``), so it takes the same iterates.

        dtypes as in scikit-learn: scipy keeps its iterate in float64 but
        hands the function each point in the starting vector's dtype, so a
        float32 network evaluates in float32; scikit-learn's parameters then
        end as scipy's float64 solution, and so do these (the network is
        rebuilt in float64) unless the estimator's ``dtype`` says float32.

        The loss and gradient of a large data set are taken in pieces of
        rows whose activations stay in cache (``_lbfgs_pieces``; 1.5x faster
        than one call on 50,000 x 20 rows), each one kernel call, and
        combined in a fixed order: the result does not depend on the thread
        count.  scipy's own vector work (``setulb``'s BLAS calls on vectors
        of n_params) runs with one BLAS thread (threadpoolctl, as
        scikit-learn's KMeans limits BLAS): more threads only add
        synchronisation at these sizes (0.4 ms a call on one thread, 14 ms
        on two busy cores); the objective's kernels use ``n_threads``.
        """
        import scipy.optimize

        net = self._net
        n = X.shape[0] if sw is None else sw.sum()
        pieces = _lbfgs_pieces(X.shape[0], net.layer_sizes, net.dtype.itemsize, sw)
        perm, coef_slices = self._sklearn_layout()
        w_slices = [(net._net.w_off[k], net._net.w_off[k] + W.size)
                    for k, W in enumerate(net.weights)]
        theta = net.flat_parameters
        T = net.dtype.type
        grad = np.empty_like(theta)
        grad_x = np.empty_like(theta)
        alpha = float(self.alpha)
        scale = self._loss_scale()
        n_threads = get_num_threads()

        part = np.empty_like(theta) if len(pieces) > 1 else grad

        def mean_loss_grad() -> float:
            """The (weighted) mean loss over the data set; its gradient into grad."""
            if len(pieces) == 1:
                return net._net.gradients(theta, X, Y, grad, n_threads, sample_weight=sw)
            total = 0.0
            grad[...] = 0
            for a, b, share in pieces:   # share: the piece's rows (weight) / the total
                lp = net._net.gradients(theta, X[a:b], Y[a:b], part, n_threads,
                                        sample_weight=None if sw is None else sw[a:b])
                total += share * lp
                np.multiply(part, share, out=part)
                np.add(grad, part, out=grad)
            return total

        def loss_grad(x: np.ndarray) -> Tuple[float, np.ndarray]:
            with np.errstate(over="ignore", invalid="ignore"):
                theta[...] = x[perm]
            loss = T(mean_loss_grad() * scale)
            values = T(0)
            for a, b in coef_slices:
                s = x[a:b]
                values += np.dot(s, s)
            loss += (0.5 * alpha) * values / n
            if alpha:
                for a, b in w_slices:
                    grad[a:b] += (alpha / n) * theta[a:b]
            grad_x[perm] = grad
            return loss, grad_x

        x0 = np.empty_like(theta)
        x0[perm] = theta
        with net._lock, _one_blas_thread():
            result = scipy.optimize.minimize(
                loss_grad, x0, method="L-BFGS-B", jac=True,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                         **_lbfgs_iprint_options(self.verbose)},
            )
            self.n_iter_ = _check_lbfgs_result(result, self.max_iter)
            self.loss_ = result.fun
            solution = np.asarray(result.x, dtype=np.float64)[perm]
            if self.dtype is None and net.dtype != np.float64:
                self._net = MLP(
                    net.layer_sizes, activation=net.activation, output=net.output,
                    loss=net.loss_name, dtype="float64", seed=0,
                    weights=[np.zeros(W.shape) for W in net.weights],
                    biases=[np.zeros(b.shape) for b in net.biases],
                )
                net = self._net
            with np.errstate(over="ignore", invalid="ignore"):
                net.flat_parameters[...] = solution

    # -- SGD and Adam -------------------------------------------------------------

    def _new_optimizer(self, n_params: int, dtype: type) -> Dict[str, Any]:
        """scikit-learn's SGDOptimizer / AdamOptimizer state, made by fit
        (and by the first partial_fit), kept by later partial_fit calls."""
        lr = float(self.learning_rate_init)
        if self.solver == "sgd":
            # "lr_used": the rate of the last step taken; the model's velocity
            # u relates to scikit-learn's v as v = -lr_used * u.
            return {"solver": "sgd", "lr": lr, "lr_used": lr}
        return {"solver": "adam", "t": 0, "ms": np.zeros(n_params, dtype=dtype),
                "vs": np.zeros(n_params, dtype=dtype)}

    def _fit_stochastic(
        self, X: np.ndarray, Y: np.ndarray, incremental: bool, sw: Optional[np.ndarray],
    ) -> None:
        """scikit-learn's ``_fit_stochastic``: the same draws, batches, updates and rules.

        Everything random is drawn here exactly as scikit-learn draws it (the
        validation split, then one shuffle of ``sample_idx`` per epoch).
        Each epoch is one call into the compiled loop, which visits the rows
        in that order in consecutive batches and applies the penalty and the
        update (sgd's momentum, or scikit-learn's Adam) after each one, with
        sample weights scaled as scikit-learn 1.9 scales them.
        """
        net = self._net
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer(net.n_params, net.dtype.type)
            if self._optimizer["solver"] == "sgd":
                # scikit-learn's fit (warm or not) starts from zero velocity
                net.reset_optimizer()

        X_val = y_val = sw_val = None
        if self.early_stopping:
            stratify = Y.astype(bool) if (self._classifier and self.n_outputs_ == 1) else None
            if sw is None:
                X, X_val, Y, Y_val = train_test_split(
                    X, Y, random_state=self._random_state,
                    test_size=self.validation_fraction, stratify=stratify,
                )
            else:  # the same split, the weights going with their rows
                X, X_val, Y, Y_val, sw, sw_val = train_test_split(
                    X, Y, sw, random_state=self._random_state,
                    test_size=self.validation_fraction, stratify=stratify,
                )
                sw = np.ascontiguousarray(sw)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            y_val = self._validation_target(Y_val)
            X, Y = _dense_or_csr(X, X.dtype), np.ascontiguousarray(Y)

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

        sample_idx = np.arange(n_samples)
        self.n_iter_ = 0
        runner = None
        with net._lock:
            if self._per_batch:
                epoch = self._batch_epoch(X, Y, sw, batch_size)
            elif self._optimizer["solver"] == "sgd":
                runner = Epochs(
                    net, X, Y, batch_size, momentum=float(self.momentum),
                    nesterov=bool(self.nesterovs_momentum), weight_decay=0.0,
                    l2=float(self.alpha), flush_denormals=True, sample_weight=sw,
                    sklearn_weights=True,
                )
                epoch = self._sgd_epoch(runner)
            else:
                epoch = self._adam_epoch(X, Y, sw, batch_size)
            try:
                self._run_epochs(epoch, sample_idx, incremental, X_val, y_val, sw_val)
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
            finally:
                epoch = runner = None  # the workspace goes before the lock is released
            if self.early_stopping and self._best_params is not None:
                self._set_params(self._best_params)

    def _sgd_epoch(self, runner: Epochs) -> Any:
        """One SGD epoch in the compiled loop: (sum of the batch losses, each
        weighted by its size, with the L2 term), or None when it diverged."""
        net = self._net
        opt = self._optimizer
        scale = self._loss_scale()

        def epoch(order: Optional[np.ndarray]) -> Optional[float]:
            lr = C.check_lr(opt["lr"], net.dtype.type)
            if lr != opt["lr_used"] and runner.velocity.size:
                # scikit-learn's v = -lr_used u; the next step uses lr: v = -lr u'
                # (in place: the runner's buffer is the model's velocity)
                runner.velocity *= net.dtype.type(opt["lr_used"] / lr)
            opt["lr_used"] = lr
            try:
                loss_sum, _, penalty_sum = runner.epoch(order, lr, self.n_iter_)
            except FloatingPointError:
                return None  # the kernel rewound to the last step whose loss was finite
            return scale * loss_sum + penalty_sum

        return epoch

    def _adam_epoch(
        self, X: np.ndarray, Y: np.ndarray, sw: Optional[np.ndarray], batch_size: int,
    ) -> Any:
        """One adam epoch in the compiled loop: scikit-learn's Adam
        (``_SklearnAdam``) on the estimator's moments, after each batch's
        gradient and L2 term (weighted: scikit-learn 1.9's scaling).  Returns
        the sum of the batch losses, each weighted by its row count, with the
        L2 term, or None when a batch's loss was not finite (the kernel then
        stops before that batch's update)."""
        net = self._net
        opt = self._optimizer
        adam = _SklearnAdam(lr=float(self.learning_rate_init),
                            betas=(float(self.beta_1), float(self.beta_2)),
                            eps=float(self.epsilon))
        kernels, theta = net._net, net.flat_parameters
        dtype = theta.dtype
        n_threads = get_num_threads()
        # with room for the pack wave's packed weights and the H packs, so
        # that no epoch allocates them itself (workspace_size, as
        # fastbp.model's Epochs) (sparse X: by the steps' own plan,
        # nnz_per_row and the gradient the optimizer path takes)
        ws = np.empty(kernels.workspace_size(min(batch_size, X.shape[0]),
                                             sparse=_sparse.is_sparse(X), n_threads=n_threads,
                                             itemsize=dtype.itemsize,
                                             nnz_per_row=_sparse.nnz_per_row(X), grad=True),
                      dtype=dtype)
        grad, empty = np.empty_like(theta), np.empty(0, dtype=dtype)
        kw: Dict[str, Any] = dict(l2=float(self.alpha), optimizer=adam)
        if sw is not None:
            kw.update(sample_weight=sw, sklearn_weights=True)
        scale = self._loss_scale()
        lr = adam.lr

        def epoch(order: Optional[np.ndarray]) -> Optional[float]:
            state = {"step": opt["t"], "exp_avg": opt["ms"], "exp_avg_sq": opt["vs"]}
            try:
                loss_sum, _, penalty_sum, _, status = kernels.fit_epoch(
                    theta, X, Y, order, batch_size, ws, grad, empty, n_threads, lr,
                    state=state, **kw)
            finally:
                opt["t"] = int(state["step"])  # also after Ctrl-C
            return None if status else scale * loss_sum + penalty_sum

        return epoch

    def _batch_epoch(
        self, X: np.ndarray, Y: np.ndarray, sw: Optional[np.ndarray], batch_size: int,
    ) -> Any:
        """One sgd or adam epoch per batch (``_per_batch``, the compiled
        epoch's reference): the loss and gradient of each batch in one kernel
        call, then the L2 term and the update in numpy.

        Adam: scikit-learn's ``AdamOptimizer`` with the same numpy operations
        (``_SklearnAdam.update``) on the flat parameter vector.  sgd: the
        momentum update in the kernel's form (the model's velocity ``u``,
        scikit-learn's ``v = -lr u``), so that weighted and unweighted calls
        can follow each other.  With sample weights s, a batch minimises
        ``sum s_i l_i / sum s + alpha / (2 sum s) ||W||^2`` and its loss
        counts with the batch's row count in ``loss_``, as in scikit-learn
        (``sum s`` in double in row order, as the kernels take it; a batch
        whose weights sum to 0 is skipped, as the kernels skip it, where
        scikit-learn would divide by 0).
        """
        net = self._net
        solver = self._optimizer["solver"]
        velocity = None
        if solver == "sgd":
            if net._velocity is None:  # the model's SGD momentum buffer, as the kernel's
                net.set_optimizer_state({"velocity": np.zeros_like(net.flat_parameters)})
            velocity = net._velocity
        mu, nesterov = net.dtype.type(self.momentum), bool(self.nesterovs_momentum)
        opt = self._optimizer
        theta = net.flat_parameters
        grad = np.empty_like(theta)
        w_slices = [(net._net.w_off[k], net._net.w_off[k] + W.size)
                    for k, W in enumerate(net.weights)]
        alpha = float(self.alpha)
        scale = self._loss_scale()
        lr_init = float(self.learning_rate_init)
        adam = _SklearnAdam(lr=lr_init, betas=(float(self.beta_1), float(self.beta_2)),
                            eps=float(self.epsilon))
        n_samples = X.shape[0]
        n_threads = get_num_threads()

        def epoch(order: Optional[np.ndarray]) -> Optional[float]:
            accumulated = 0.0
            for batch in gen_batches(n_samples, batch_size):
                swb = None
                if order is None:
                    Xb, Yb = X[batch], Y[batch]
                    if sw is not None:
                        swb = sw[batch]
                else:
                    idx = order[batch]
                    Xb, Yb = X.take(idx, axis=0), Y.take(idx, axis=0)
                    if sw is not None:
                        swb = sw.take(idx)
                m = Xb.shape[0]
                denom = m if swb is None else float(np.cumsum(swb, dtype=np.float64)[-1])
                if not denom > 0:
                    continue
                loss = net._net.gradients(theta, Xb, Yb, grad, n_threads,
                                          sample_weight=swb) * scale
                values = 0.0
                for a, b in w_slices:
                    s = theta[a:b]
                    values += np.dot(s, s)
                loss += (0.5 * alpha) * values / denom
                if alpha:
                    for a, b in w_slices:
                        grad[a:b] += (alpha / denom) * theta[a:b]
                accumulated += loss * m
                if solver == "sgd":
                    lr = opt["lr"]
                    if lr != opt["lr_used"]:  # as in _sgd_epoch
                        np.multiply(velocity, net.dtype.type(opt["lr_used"] / lr), out=velocity)
                        opt["lr_used"] = lr
                    np.multiply(velocity, mu, out=velocity)
                    np.add(velocity, grad, out=velocity)
                    step = grad + mu * velocity if nesterov else velocity
                    np.subtract(theta, net.dtype.type(lr) * step, out=theta)
                    continue
                # scikit-learn's AdamOptimizer._get_updates, on flat vectors
                state = {"step": opt["t"], "exp_avg": opt["ms"], "exp_avg_sq": opt["vs"]}
                adam.update(theta, grad, state, lr_init)
                opt["t"] = state["step"]
            return accumulated

        return epoch

    def _run_epochs(
        self, epoch: Any, sample_idx: np.ndarray, incremental: bool,
        X_val: Optional[np.ndarray], y_val: Optional[np.ndarray],
        sw_val: Optional[np.ndarray] = None,
    ) -> None:
        n_samples = sample_idx.shape[0]
        diverged = False
        for _ in range(self.max_iter):
            order = None
            if self.shuffle:
                # sklearn.utils.shuffle(sample_idx, random_state=...) as it runs
                # (resample: arange, RandomState.shuffle, indexing), without its
                # parameter validation (0.1 ms a call: a few % of a digits epoch)
                perm = np.arange(n_samples)
                self._random_state.shuffle(perm)
                sample_idx = sample_idx[perm]
                order = sample_idx.astype(np.int64, copy=False)
            if diverged:
                loss_sum: Optional[float] = np.nan
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    loss_sum = epoch(order)
            if loss_sum is None:
                # A diverged SGD epoch: the kernel stopped at the first non-finite
                # loss and rewound the weights.  scikit-learn's run goes on with
                # NaN parameters: a NaN loss (and validation score) per epoch,
                # which never counts as "no improvement", up to max_iter.
                if not self.early_stopping:
                    raise ValueError(
                        _NON_FINITE + f" (The training loss became NaN or Inf in "
                        f"iteration {self.n_iter_ + 1}.)"
                    )
                diverged = True
                loss_sum = np.nan
            self.n_iter_ += 1
            self.loss_ = np.float64(loss_sum) / n_samples
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

            self._update_no_improvement_count(X_val, y_val, diverged, sw_val)

            opt = self._optimizer
            if opt["solver"] == "sgd" and self.learning_rate == "invscaling":
                opt["lr"] = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                msg = "%s did not improve more than tol=%f for %d consecutive epochs." % (
                    what, self.tol, self.n_iter_no_change)
                if self._trigger_stopping(msg):
                    break
                self._no_improvement_count = 0

            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(
                    "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                    "optimization hasn't converged yet." % self.max_iter,
                    ConvergenceWarning,
                    stacklevel=5,
                )

    def _trigger_stopping(self, msg: str) -> bool:
        """scikit-learn's ``trigger_stopping``: stop, or (sgd with
        ``learning_rate="adaptive"``) divide the rate by 5 and go on."""
        opt = self._optimizer
        if opt["solver"] != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if opt["lr"] <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        opt["lr"] /= 5.0
        if self.verbose:
            print(msg + " Setting learning rate to %f" % opt["lr"])
        return False

    def _update_no_improvement_count(
        self, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray], diverged: bool = False,
        sw_val: Optional[np.ndarray] = None,
    ) -> None:
        if self.early_stopping:
            if diverged:
                score = np.nan
            else:
                y_pred = self._predict_checked(X_val)
                if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
                    score = np.nan
                else:
                    score = self._score_function(y_val, y_pred, sw_val)
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
        tags.input_tags.sparse = True
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
    solver : {"adam", "sgd", "lbfgs"}, default="adam"
        scikit-learn's solvers: ``"adam"`` (scikit-learn's Adam, see
        ``beta_1``) and ``"sgd"`` (mini-batch SGD with momentum), each epoch
        one compiled call, and ``"lbfgs"`` (full-batch L-BFGS-B through
        ``scipy.optimize.minimize``, as scikit-learn calls it; needs scipy).
    alpha : float, default=0.0001
        Strength of the L2 penalty, exactly as in scikit-learn: each
        mini-batch of m samples (the whole set for lbfgs) minimises ``mean
        loss + alpha / (2 m) * sum(||W||^2)`` over the weight matrices (not
        the intercepts), i.e. every step adds ``(alpha / m) * W`` to the
        weights' gradient.  The reported losses include this term.
    batch_size : int or "auto", default="auto"
        Mini-batch size of sgd and adam; ``"auto"`` is ``min(200,
        n_samples)``.  Larger values are clipped to n_samples (with a
        warning).  Unused by lbfgs.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        sgd's learning-rate rule, as scikit-learn's: ``"constant"``;
        ``"invscaling"``: after each epoch the rate becomes
        ``learning_rate_init / (t_ + 1) ** power_t``; ``"adaptive"``: when
        the stopping rule fires (see ``tol``) the rate is divided by 5 and
        training goes on, until the rate is at most 1e-6.  adam and lbfgs
        ignore it, as scikit-learn's do.
    learning_rate_init : float, default=0.001
        The initial step size of sgd and adam.
    power_t : float, default=0.5
        Exponent of ``"invscaling"``.
    max_iter : int, default=200
        Maximum number of epochs (sgd, adam) or of L-BFGS iterations.
    shuffle : bool, default=True
        Shuffle the samples before each epoch (sgd, adam).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffling and the validation split,
        with the same draws as scikit-learn's MLP.
    tol : float, default=1e-4
        sgd and adam stop (or, with ``learning_rate="adaptive"``, slow
        down) when the training loss (or, with ``early_stopping``, the
        validation score) has not improved by at least ``tol`` for more
        than ``n_iter_no_change`` consecutive epochs.  For lbfgs, scipy's
        ``gtol``.
    verbose : bool or int, default=False
        Print the loss (and validation score) after each epoch, in
        scikit-learn's words.
    warm_start : bool, default=False
        Make ``fit`` start from the current parameters instead of a fresh
        initialisation (the optimizer's state is reset, as in scikit-learn).
    momentum : float, default=0.9
        sgd's momentum, in [0, 1].
    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum (sgd).
    early_stopping : bool, default=False
        sgd and adam: hold out ``validation_fraction`` of the training data,
        stop when its score stops improving, and keep the parameters of the
        best epoch.
    validation_fraction : float, default=0.1
        Share of the training data held out with ``early_stopping``.
    beta_1, beta_2 : float, default=0.9, 0.999
        adam's decay rates of the first and second moment estimates, in
        [0, 1).
    epsilon : float, default=1e-8
        adam's epsilon, scikit-learn's way: the step is ``lr_t * m / (sqrt(v)
        + epsilon)`` with ``lr_t = learning_rate_init * sqrt(1 - beta_2**t)
        / (1 - beta_1**t)`` (torch adds epsilon after the bias correction
        of ``sqrt(v)`` instead).
    n_iter_no_change : int or numpy.inf, default=10
        Epochs without an improvement of ``tol`` tolerated (sgd, adam);
        ``np.inf`` never stops early.
    max_fun : int, default=15000
        lbfgs: maximum number of loss evaluations (scipy's ``maxfun``).
    dtype : {None, "float32", "float64"}, default=None
        Precision of the parameters and of all computation.  None follows
        scikit-learn: float32 when X is float32, float64 otherwise (and
        float64 for lbfgs, whose parameters scikit-learn keeps in scipy's
        float64 vector); a continued fit (``warm_start``, ``partial_fit``)
        keeps the network's.  Inputs are converted to it.
    n_threads : int or None, default=None
        At most this many threads for this estimator's fit and predict
        calls (through ``fastbp.threads``, local to the calling Python
        thread, so estimators fitted in parallel threads do not
        oversubscribe); None: the global setting (``fastbp.get_num_threads``).
"""

_ATTRIBUTES_DOC = """
    loss_ : numpy.float64
        sgd, adam: training loss of the last epoch (mean of the per-batch
        losses, each taken before its update, with the L2 term); lbfgs: the
        objective at the solution.
    best_loss_ : numpy.float64 or None
        Lowest ``loss_`` seen; None with ``early_stopping``.  sgd and adam
        only (as in scikit-learn, lbfgs does not set it).
    loss_curve_ : list of numpy.float64
        ``loss_`` after each epoch (sgd, adam).
    validation_scores_ : list of float or None
        Score on the held-out set after each epoch with ``early_stopping``
        (NaN once the parameters are not finite), else None (sgd, adam).
    best_validation_score_ : float or None
        Best of ``validation_scores_``, or None (sgd, adam).
    t_ : int
        Number of training samples seen (0 for lbfgs).
    coefs_ : list of ndarray
        ``coefs_[i]`` of shape (n_in, n_out), the weights of layer i, in the
        network's dtype (views of the model: in-place writes go into it, and
        so do ``coefs_[i] = a`` and ``coefs_ = [...]``, shapes checked).
    intercepts_ : list of ndarray
        ``intercepts_[i]`` of shape (n_out,), the biases of layer i (views,
        assignable as ``coefs_``).
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names seen in fit, when X had string column names.
    n_iter_ : int
        Number of epochs (sgd, adam; 1 for partial_fit) or L-BFGS iterations
        run by the last call to fit.
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
        """Multi-layer perceptron classifier trained in fastbp's kernels.

    A drop-in for ``sklearn.neural_network.MLPClassifier``, with the same
    parameters, solvers and results (to rounding).  Multiclass targets use a softmax output and
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
            self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset,
            accept_sparse=_SPARSE_FORMATS,
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
        return X, self._label_binarizer.transform(y)

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _predict_checked(self, X: np.ndarray) -> np.ndarray:
        out = self._net.predict(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def _validation_target(self, Y: np.ndarray) -> np.ndarray:
        return self._label_binarizer.inverse_transform(Y)

    def _score_function(
        self, y: np.ndarray, y_pred: np.ndarray, sample_weight: Optional[np.ndarray] = None,
    ) -> float:
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
            ) -> "MLPClassifier":
        """Fit the model to data X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (dense).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or a multilabel indicator matrix.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, finite and >= 0, not all zero: each batch (lbfgs:
            the whole set) minimises ``sum s_i l_i / sum s + alpha / (2 sum
            s) ||W||^2``, as in scikit-learn; the early-stopping split keeps
            each row's weight and the validation score is weighted.

        Returns
        -------
        self : MLPClassifier
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    @available_if(lambda est: est._check_solver())
    def partial_fit(
        self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
        classes: Optional[ArrayLike] = None,
    ) -> "MLPClassifier":
        """Update the model with one epoch over the given data (sgd and adam).

        As in scikit-learn, the attribute does not exist for
        ``solver="lbfgs"`` (``hasattr(est, "partial_fit")`` is False and the
        call raises AttributeError).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, as for :meth:`fit`.
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
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

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
        out = self._forward_fast(X)
        if out is None:
            out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._labels_of(out)

    def _labels_of(self, out: np.ndarray) -> np.ndarray:
        """``self._label_binarizer.inverse_transform(out)``.

        For binary and multiclass targets computed here by LabelBinarizer's
        own steps (the class of the largest output, clipped to the classes;
        or of ``out > 0.5``, its threshold for labels 0/1), without its
        checking overhead; multilabel targets and any other binarizer go to
        ``inverse_transform``.
        """
        lb = self._label_binarizer
        if (type(lb) is LabelBinarizer and type(out) is np.ndarray
                and lb.neg_label == 0 and lb.pos_label == 1 and not lb.sparse_input_):
            classes = lb.classes_
            if type(classes) is np.ndarray and classes.ndim == 1:
                if lb.y_type_ == "multiclass" and out.ndim == 2 and out.shape[1] == classes.shape[0]:
                    return classes[np.clip(np.argmax(out, axis=1), 0, classes.shape[0] - 1)]
                if lb.y_type_ == "binary" and out.ndim == 1 and classes.shape[0] == 2:
                    return classes[(out > 0.5).astype(np.intp)]
        return lb.inverse_transform(out)

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
        out = self._forward_fast(X)
        if out is None:
            out = self._forward(X)
        if self.n_outputs_ == 1:
            # np.vstack([1 - p, p]).T without vstack's overhead: the same
            # values, dtype and (Fortran-ordered) layout.
            p = out.ravel()
            both = np.empty((2, p.shape[0]), dtype=p.dtype)
            np.subtract(1, p, out=both[0])
            both[1] = p
            return both.T
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
        """Multi-layer perceptron regressor trained in fastbp's kernels.

    A drop-in for ``sklearn.neural_network.MLPRegressor``, one or several outputs:
    identity output and squared error, or (``loss="poisson"``) the exp output
    and the half Poisson deviance.  The loss reported in ``loss_curve_`` is
    scikit-learn's: for squared error half the mean over samples and outputs
    of the squared error (plus the L2 term), whose gradient is taken, as in
    scikit-learn, of half the sum over outputs; for Poisson the mean over
    samples of the deviance summed over outputs.
"""
        + """
    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default="squared_error"
        As in scikit-learn: ``"squared_error"`` is half the squared error
        with an identity output; ``"poisson"`` is the half Poisson deviance
        ``y log(y / mu) - y + mu`` with the log link, the output ``mu =
        exp(z)`` (``out_activation_ == "exp"``; ``predict`` returns ``mu``),
        its gradient ``mu - y`` with respect to z.  It needs ``y >= 0``:
        negative targets raise ValueError (scikit-learn 1.9 documents the
        condition but does not check it, and its fit then reports NaN losses).
        With ``warm_start`` or ``partial_fit`` the loss cannot change between
        fits (ValueError).
"""
        + _PARAMS_DOC.replace("    Parameters\n    ----------\n", "")
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
            self, X, y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32),
            reset=reset, accept_sparse=_SPARSE_FORMATS,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError(_NEGATIVE_Y)
        if not reset and hasattr(self, "_net") and self.out_activation_ != self._out_activation():
            raise ValueError(
                f"cannot continue training a network fitted with loss="
                f"{'poisson' if self.out_activation_ == 'exp' else 'squared_error'!r} "
                f"with loss={self.loss!r}; set warm_start=False to start afresh"
            )
        return X, y

    def _target(self, Y: np.ndarray, dtype: type) -> np.ndarray:
        with np.errstate(over="ignore"):
            Y = super()._target(Y, dtype)
        if not np.isfinite(Y).all():
            raise ValueError(f"y does not fit in {np.dtype(dtype).name}")
        return Y

    def _check_loss(self) -> None:
        if not isinstance(self.loss, str) or self.loss not in _REGRESSION_OUTPUTS:
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")

    def _out_activation(self) -> str:
        return _REGRESSION_OUTPUTS[self.loss]

    def _predict_checked(self, X: np.ndarray) -> np.ndarray:
        out = self._net.predict(X)
        return out.ravel() if out.shape[1] == 1 else out

    def _validation_target(self, Y: np.ndarray) -> np.ndarray:
        return Y.ravel() if Y.shape[1] == 1 else Y

    def __init__(
        self,
        loss: str = "squared_error",
        hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: Union[int, str] = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Union[int, np.random.RandomState, None] = None,
        tol: float = 1e-4,
        verbose: Union[bool, int] = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: Union[int, float] = 10,
        max_fun: int = 15000,
        dtype: Optional[str] = None,
        n_threads: Optional[int] = None,
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, dtype=dtype, n_threads=n_threads,
        )
        self.loss = loss

    def _score_function(
        self, y: np.ndarray, y_pred: np.ndarray, sample_weight: Optional[np.ndarray] = None,
    ) -> float:
        return r2_score(y, y_pred, sample_weight=sample_weight)

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
            ) -> "MLPRegressor":
        """Fit the model to data X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (dense).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, finite and >= 0, not all zero: each batch (lbfgs:
            the whole set) minimises ``sum s_i l_i / sum s + alpha / (2 sum
            s) ||W||^2``, as in scikit-learn; the early-stopping split keeps
            each row's weight and the validation R^2 is weighted.

        Returns
        -------
        self : MLPRegressor
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
                    ) -> "MLPRegressor":
        """Update the model with one epoch over the given data (sgd and adam).

        As in scikit-learn, the attribute does not exist for
        ``solver="lbfgs"`` (``hasattr(est, "partial_fit")`` is False and the
        call raises AttributeError).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, as for :meth:`fit`.

        Returns
        -------
        self : MLPRegressor
            The updated estimator.
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

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
        out = self._forward_fast(X)
        if out is None:
            out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # the Poisson loss takes only y >= 0 (scikit-learn's checks then give y > 0)
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags
