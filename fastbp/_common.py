"""Configuration, validation and initialisation shared by the fast model and the reference.

Both :class:`fastbp.MLP` and :class:`fastbp.reference.MLP` go through these
functions, so the two accept exactly the same inputs, reject the same mistakes
with the same messages, and start from the same parameters for the same seed.
Nothing unchecked may reach the compiled kernels: they run without bounds checks.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .history import History  # noqa: F401  (re-exported: the reference uses it)

# The codes are shared with the C kernels (FBP_ACT_* in src/fbp_gemm.h).
ACTIVATIONS = {"identity": 0, "sigmoid": 1, "relu": 2, "tanh": 3}
OUTPUTS = {"identity": 0, "sigmoid": 1, "softmax": 2, "exp": 3}
LOSSES = {"squared_error": 0, "binary_cross_entropy": 1, "cross_entropy": 2, "poisson": 3}
DTYPES = {"float32": np.float32, "float64": np.float64}

# Limits of the compiled kernels (src/_kernels.pyx: MAX_LAYERS, 32-bit GEMM
# dimensions), enforced here so that both implementations accept the same nets.
MAX_LAYERS = 64
MAX_WIDTH = 2**31 - 1
# Batch sizes above this behave exactly like a batch of all the samples (the
# kernels cap a call at 2**31 - 1 rows); capping keeps the value in an int64.
_MAX_BATCH = 2**62

# Losses that only make sense after one particular output activation.
_LOSS_NEEDS_OUTPUT = {"binary_cross_entropy": "sigmoid", "cross_entropy": "softmax",
                      "poisson": "exp"}
# The losses whose fits report an accuracy (the others are regression losses).
CLASSIFICATION_LOSSES = ("binary_cross_entropy", "cross_entropy")


def _choice(kind: str, value: Any, valid: dict) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"unknown {kind} {value!r}; expected one of {', '.join(map(repr, valid))}"
        )
    return value


def check_dtype(dtype: Any) -> type:
    """Return np.float32 or np.float64 for a dtype spelt any numpy way."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected 'float32' or 'float64'")
    return DTYPES[name]


def check_config(
    layer_sizes: Sequence[int], activation: str, output: str, loss: str, dtype: Any
) -> Tuple[Tuple[int, ...], type]:
    """Validate the constructor's arguments; return (layer sizes, numpy dtype)."""
    try:
        given = list(layer_sizes)
        ok = len(given) >= 2 and all(
            isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1
            for n in given
        )
        sizes = tuple(int(n) for n in given)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"layer_sizes must be a sequence of at least two positive integers "
            f"(input size first), got {layer_sizes!r}"
        )
    if len(sizes) - 1 > MAX_LAYERS:
        raise ValueError(
            f"at most {MAX_LAYERS} weight layers are supported, got {len(sizes) - 1}"
        )
    if max(sizes) > MAX_WIDTH:
        raise ValueError(f"layer sizes must be at most {MAX_WIDTH}, got {max(sizes)}")
    _choice("activation", activation, ACTIVATIONS)
    _choice("output", output, OUTPUTS)
    _choice("loss", loss, LOSSES)
    needed = _LOSS_NEEDS_OUTPUT.get(loss)
    if needed is not None and output != needed:
        raise ValueError(f"loss={loss!r} requires output={needed!r}, got output={output!r}")
    if output == "softmax" and sizes[-1] < 2:
        raise ValueError("output='softmax' needs at least 2 output units")
    return sizes, check_dtype(dtype)


def init_params(
    sizes: Sequence[int], activation: str, bias: bool, dtype: type, seed: Optional[int]
) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]]]:
    """Initial weights and biases.

    Layer k (W of shape (n_out, n_in)) draws W from
    - He normal, N(0, 2 / n_in), when its output goes through a ReLU;
    - Xavier/Glorot uniform, U(-a, a) with a = sqrt(6 / (n_in + n_out)), otherwise
      (every non-ReLU hidden layer and the output layer).
    Biases start at zero.  Draws come from ``numpy.random.default_rng(seed)``,
    in float64, layer by layer, then are rounded to ``dtype``.
    """
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    n_layers = len(sizes) - 1
    for k in range(n_layers):
        n_in, n_out = sizes[k], sizes[k + 1]
        if activation == "relu" and k < n_layers - 1:
            W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in))
        else:
            a = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-a, a, size=(n_out, n_in))
        weights.append(W.astype(dtype))
        biases.append(np.zeros(n_out, dtype=dtype) if bias else None)
    return weights, biases


def check_params(
    sizes: Sequence[int],
    bias: bool,
    dtype: type,
    weights: Optional[Sequence[Any]],
    biases: Optional[Sequence[Any]],
    default: Tuple[List[np.ndarray], List[Optional[np.ndarray]]],
) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]]]:
    """Copies of explicit initial parameters, checked against the architecture."""
    W_out, b_out = default
    n_layers = len(sizes) - 1
    if weights is not None:
        weights = _sequence("weights", weights)
        if len(weights) != n_layers:
            raise ValueError(f"weights: expected {n_layers} arrays, got {len(weights)}")
        W_out = [
            _param(f"weights[{k}]", w, (sizes[k + 1], sizes[k]), dtype)
            for k, w in enumerate(weights)
        ]
    if biases is not None:
        if not bias:
            raise ValueError("biases were given but bias=False")
        biases = _sequence("biases", biases)
        if len(biases) != n_layers:
            raise ValueError(f"biases: expected {n_layers} arrays, got {len(biases)}")
        b_out = [_param(f"biases[{k}]", b, (sizes[k + 1],), dtype) for k, b in enumerate(biases)]
    return W_out, b_out


def _sequence(name: str, value: Any) -> Sequence[Any]:
    """``value`` as something with len() and indexing (one array per layer)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(
            f"{name} must be a sequence of arrays, one per layer, got {type(value).__name__}"
        )
    return list(value)


def _param(name: str, value: Any, shape: Tuple[int, ...], dtype: type) -> np.ndarray:
    arr = _numeric(name, value)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    with np.errstate(over="ignore"):
        out = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.all(np.isfinite(out)):  # finite float64 can overflow to Inf in float32
        raise ValueError(f"{name} contains NaN or Inf in {np.dtype(dtype).name} (a value overflows it)")
    return out


def _numeric(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name}: unsupported dtype {arr.dtype}; expected real numbers (float, int or bool)"
        )
    return arr


# Up to this many values, _first_bad_row looks at every value at once (a
# small temporary costs less than the errstate and the float64 sum).
_SMALL_CHECK = 4096


def _compiled_check() -> Optional[Callable[..., int]]:
    """The kernels' one-pass check (``_kernels.first_nonfinite_row``), or None
    where the kernels are not built (the pure-Python reference shares these
    checks and runs without them)."""
    global _COMPILED
    if _COMPILED is None:
        try:
            from ._kernels import first_nonfinite_row
        except ImportError:
            _COMPILED = False
        else:
            _COMPILED = first_nonfinite_row
    return _COMPILED or None


_COMPILED: Any = None


def _first_bad_row(arr: np.ndarray) -> Optional[int]:
    """Index of the first row holding NaN or Inf, or None."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return None
    if (arr.size > _SMALL_CHECK and arr.ndim == 2 and arr.flags.c_contiguous
            and arr.dtype in (np.float32, np.float64)):
        # one pass over the values, no temporary: about a quarter of the
        # numpy check's time on a large array (in _check.pxi)
        check = _compiled_check()
        if check is not None:
            bad = check(arr)
            return None if bad < 0 else bad
    if arr.size > _SMALL_CHECK:
        # A finite sum proves every value finite without a temporary the size
        # of the data; only a NaN, an Inf or an overflowing sum needs the full look.
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(arr.sum(dtype=np.float64)):
                return None
    finite = np.isfinite(arr)
    if finite.all():
        return None
    rows = finite.reshape(finite.shape[0], -1).all(axis=1)
    return int(np.argmin(rows))


def check_X(X: Any, n_in: int, dtype: type) -> np.ndarray:
    """Inputs as a C-contiguous (n_samples, n_in) array of ``dtype``.

    The caller's array is never written: the result is either a fresh copy or
    the caller's own array, which the kernels only read.
    """
    arr = _numeric("X", X)
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_in={n_in}), got {arr.ndim}-D")
    if arr.shape[0] == 0:
        raise ValueError("X is empty (0 samples)")
    if arr.shape[1] != n_in:
        raise ValueError(f"X has {arr.shape[1]} features per sample, the network expects {n_in}")
    bad = _first_bad_row(arr)
    if bad is not None:
        raise ValueError(f"X contains NaN or Inf (first in row {bad})")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    # Finite float64 can overflow to Inf in float32 (unconverted: checked above).
    bad = _first_bad_row(out) if out is not arr else None
    if bad is not None:
        raise ValueError(f"X row {bad} overflows {np.dtype(dtype).name}")
    return out


def check_Y(Y: Any, n_samples: int, n_out: int, loss: str, dtype: type) -> np.ndarray:
    """Targets as a C-contiguous (n_samples, n_out) array of ``dtype``.

    Integer labels of shape (n_samples,) are accepted for ``cross_entropy`` and
    turned into one-hot rows; a 1-D target is accepted when n_out == 1.
    """
    arr = _numeric("Y", Y)
    if arr.ndim == 0 or arr.ndim > 2:
        raise ValueError(f"Y must be 1-D or 2-D, got {arr.ndim}-D")
    if arr.shape[0] != n_samples:
        raise ValueError(f"X has {n_samples} samples but Y has {arr.shape[0]}")
    bad = _first_bad_row(arr)
    if bad is not None:
        raise ValueError(f"Y contains NaN or Inf (first in row {bad})")
    if arr.ndim == 1 and loss == "cross_entropy":
        return _one_hot(arr, n_out, dtype)
    if arr.ndim == 1:
        if n_out != 1:
            raise ValueError(f"Y must have shape (n_samples, {n_out}), got {arr.shape}")
        arr = arr.reshape(-1, 1)
    if arr.shape[1] != n_out:
        raise ValueError(
            f"Y has {arr.shape[1]} outputs per sample, the network has {n_out}"
            + (" (or pass integer labels of shape (n_samples,))" if loss == "cross_entropy" else "")
        )
    if loss == "binary_cross_entropy" and ((arr < 0).any() or (arr > 1).any()):
        row = int(np.argmax(((arr < 0) | (arr > 1)).any(axis=1)))
        raise ValueError(f"binary_cross_entropy targets must lie in [0, 1] (first outside in row {row})")
    if loss == "cross_entropy" and (arr < 0).any():
        row = int(np.argmax((arr < 0).any(axis=1)))
        raise ValueError(f"cross_entropy target rows must be non-negative (first negative in row {row})")
    if loss == "poisson" and (arr < 0).any():
        row = int(np.argmax((arr < 0).any(axis=1)))
        raise ValueError(f"poisson targets must be non-negative (first negative in row {row})")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    bad = _first_bad_row(out) if out is not arr else None
    if bad is not None:
        raise ValueError(f"Y row {bad} overflows {np.dtype(dtype).name}")
    return out


def _one_hot(labels: np.ndarray, n_out: int, dtype: type) -> np.ndarray:
    if labels.dtype.kind == "f":
        if not np.all(labels == np.round(labels)):
            row = int(np.argmax(labels != np.round(labels)))
            raise ValueError(f"cross_entropy labels must be integers (row {row} is {labels[row].item()!r})")
    elif labels.dtype.kind == "b":
        raise ValueError("cross_entropy labels must be integers, got booleans")
    idx = labels.astype(np.int64)
    out_of_range = (idx < 0) | (idx >= n_out)
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise ValueError(
            f"cross_entropy labels must lie in [0, {n_out - 1}] (row {row} is {labels[row].item()!r})"
        )
    onehot = np.zeros((labels.shape[0], n_out), dtype=dtype)
    onehot[np.arange(labels.shape[0]), idx] = 1
    return onehot


def check_lr(lr: Any, dtype: Optional[type] = None) -> float:
    # Strings, booleans and arrays of more than one value are not learning rates,
    # even though float() would take some of them.
    if isinstance(lr, (str, bytes, bool, np.bool_)) or (
        isinstance(lr, np.ndarray) and (lr.ndim != 0 or lr.dtype.kind not in "iuf")
    ):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if dtype is not None:
        with np.errstate(over="ignore", under="ignore"):
            in_dtype = dtype(value)
        if not (np.isfinite(in_dtype) and in_dtype > 0):
            raise ValueError(f"lr={lr!r} is not a positive finite {np.dtype(dtype).name}")
    return value


def check_fit_args(epochs: Any, batch_size: Any) -> Tuple[int, int]:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(epochs), min(int(batch_size), _MAX_BATCH)



def check_validation_split(split: Any) -> float:
    """``fit(validation_split=...)`` as a float in [0, 1)."""
    if isinstance(split, (str, bytes, bool, np.bool_)):
        raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}")
    try:
        value = float(split)
    except (TypeError, ValueError):
        raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {split!r}")
    return value


def check_validation(
    X: np.ndarray, Y: np.ndarray, data: Any, split: Any,
    check_pair: Callable[[Any, Any], Tuple[np.ndarray, np.ndarray]],
) -> Tuple[np.ndarray, np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]:
    """The training rows and the validation pair of ``fit``'s two options.

    Parameters
    ----------
    X, Y : ndarray
        The checked training set.
    data : (X_val, Y_val) or None
        ``validation_data``, checked with ``check_pair(X_val, Y_val)``.
    split : float
        ``validation_split``: the last ``round(n * split)`` rows of X, Y are
        held out (not shuffled, as Keras does).
    check_pair : callable
        The caller's check of a data pair (``MLP._XY``).

    Returns
    -------
    (X_train, Y_train, (X_val, Y_val) or None)

    Raises
    ------
    ValueError
        Both options given, ``data`` not a pair, a split out of [0, 1) or one
        that leaves an empty training or validation set.
    """
    if data is not None:
        if split:
            raise ValueError("give validation_data or validation_split, not both")
        try:
            Xv, Yv = data
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (X_val, Y_val)") from None
        return X, Y, check_pair(Xv, Yv)
    value = check_validation_split(split)
    if value == 0.0:
        return X, Y, None
    n_val = int(round(X.shape[0] * value))
    if n_val < 1 or n_val >= X.shape[0]:
        raise ValueError(
            f"validation_split={value} of {X.shape[0]} samples leaves an empty training "
            "or validation set"
        )
    cut = X.shape[0] - n_val
    return X[:cut], Y[:cut], (X[cut:], Y[cut:])


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; only ``bool`` and ``numpy.bool_`` are booleans.

    A string such as ``"False"`` or ``"no"``, an integer, None or an array is
    refused rather than taken for its truth value.

    Raises
    ------
    ValueError
        Naming the parameter ``name`` and the value given.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be a bool (True or False), got {value!r}")


def check_optimizer(momentum: Any, nesterov: Any, weight_decay: Any) -> Tuple[float, bool, float]:
    """torch.optim.SGD's settings, checked: (momentum, nesterov, weight_decay)."""
    for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(value, (str, bytes, bool, np.bool_)) or (
            isinstance(value, np.ndarray) and value.ndim != 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    try:
        mu, wd = float(momentum), float(weight_decay)
    except (TypeError, ValueError):
        raise ValueError("momentum and weight_decay must be numbers") from None
    if not (np.isfinite(mu) and mu >= 0):
        raise ValueError(f"momentum must be a finite number >= 0, got {momentum!r}")
    if not (np.isfinite(wd) and wd >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    nesterov = check_bool("nesterov", nesterov)
    if nesterov and mu == 0:
        raise ValueError("nesterov=True needs momentum > 0")
    return mu, nesterov, wd


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer (not a bool) >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_callbacks(callbacks: Any) -> List[Any]:
    """The epoch-end hooks of ``fit(callbacks=...)``, checked before training.

    Each entry must be callable as ``cb(epoch, logs)`` or have a callable
    ``on_epoch_end(epoch, logs)`` (which wins); returns the hooks to call.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or callable(callbacks) or not hasattr(callbacks, "__iter__"):
        raise ValueError(
            f"callbacks must be a sequence of callables, got {type(callbacks).__name__}"
        )
    hooks = []
    for k, cb in enumerate(list(callbacks)):
        hook = getattr(cb, "on_epoch_end", cb)
        if not callable(hook):
            raise ValueError(
                f"callbacks[{k}] must be callable as cb(epoch, logs) or have a callable "
                f"on_epoch_end(epoch, logs), got {cb!r}"
            )
        hooks.append(hook)
    return hooks


# -- feature names (scikit-learn's feature_names_in_) --------------------------


def feature_names(X: Any) -> Optional[np.ndarray]:
    """The column names of a data frame, as scikit-learn reads them.

    Returns an object array of the names when ``X`` is a data frame (pandas,
    or anything with ``columns`` and the ``__dataframe__`` protocol) whose
    column names are all strings; None for arrays and for frames whose names
    are not strings (pandas' default integer columns).

    Raises
    ------
    TypeError
        When some names are strings and others are not (scikit-learn's rule).
    """
    if isinstance(X, np.ndarray) or not hasattr(X, "columns"):
        return None
    if not (hasattr(X, "__dataframe__") or type(X).__module__.split(".")[0] == "pandas"):
        return None
    names = np.asarray(list(X.columns), dtype=object)
    if names.ndim != 1:
        return None
    kinds = sorted({type(n).__name__ for n in names})
    strings = [isinstance(n, str) for n in names]
    if len(kinds) > 1 and any(strings):
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {kinds} as feature name / column name types. If you want "
            "feature names to be stored and validated, you must convert them all to "
            "strings, by using X.columns = X.columns.astype(str) for example. Otherwise "
            "you can remove feature / column names from your input data, or convert them "
            "all to a non-string data type."
        )
    if names.size == 0 or not all(strings):
        return None
    return names


def check_feature_names(seen: Optional[np.ndarray], X: Any, owner: str = "MLP") -> None:
    """Compare the column names of ``X`` with those recorded at fit (``seen``).

    Does nothing when no names were recorded.  A plain array after a data
    frame is accepted with a ``UserWarning``; a frame whose columns differ or
    come in another order raises ``ValueError``, with scikit-learn's message.
    """
    if seen is None:
        return
    names = feature_names(X)
    if names is None:
        _warn(f"X does not have valid feature names, but {owner} was fitted with feature names")
        return
    if len(names) == len(seen) and all(a == b for a, b in zip(names, seen)):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(names) - set(seen))
    missing = sorted(set(seen) - set(names))

    def listed(items: List[str]) -> str:
        out = "".join(f"- {name}\n" for name in items[:5])
        return out + ("- ...\n" if len(items) > 5 else "")

    if unexpected:
        message += "Feature names unseen at fit time:\n" + listed(unexpected)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
    if not unexpected and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def check_names_param(names: Any, n_in: int) -> np.ndarray:
    """Explicit feature names: ``n_in`` strings, as an object array (a copy)."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__len__"):
        raise ValueError(f"feature names must be a sequence of {n_in} strings, got {names!r}")
    out = np.asarray(list(names), dtype=object)
    if out.shape != (n_in,) or not all(isinstance(n, str) for n in out):
        raise ValueError(f"feature names must be a sequence of {n_in} strings, got {names!r}")
    return out


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside the fastbp package."""
    import os
    import sys
    import warnings

    here = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        level += 1
        frame = frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


# -- sample weights and dropout -------------------------------------------------


def check_sample_weight(
    sample_weight: Any, n_samples: int, dtype: type, *, name: str = "sample_weight"
) -> Optional[np.ndarray]:
    """Per-sample weights as a C-contiguous (n_samples,) array of ``dtype``, or None.

    scikit-learn's definition: a batch's objective is Σ s_i ℓ_i / Σ s_i.
    Weights must be finite and >= 0; zeros are allowed (a batch whose
    weights sum to 0 contributes nothing), but not all of them: the
    weighted mean over the data would be undefined.  The caller's array is
    never written (the result is a copy or the caller's own array, which the
    kernels only read).

    Raises
    ------
    ValueError
        For a wrong shape, a non-numeric dtype, or a negative, NaN or Inf
        weight (naming the first bad row), a weight that overflows ``dtype``,
        or weights that are all zero.
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, (str, bytes)):
        raise ValueError(f"{name} must be an array of shape ({n_samples},), got {sample_weight!r}")
    arr = _numeric(name, sample_weight)
    if arr.dtype.kind == "b":
        raise ValueError(f"{name} must be real numbers, got booleans")
    if arr.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},) (one weight per sample), "
                         f"got {arr.shape}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr < 0) if arr.dtype.kind == "f" else arr < 0
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite and >= 0 (row {row} is {arr[row].item()!r})")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        row = int(np.argmin(np.isfinite(out)))
        raise ValueError(f"{name} row {row} overflows {np.dtype(dtype).name}")
    if not out.any():
        raise ValueError(f"{name} is all zero: the weighted mean loss is undefined")
    return out


def check_dropout(dropout: Any, n_hidden: int) -> Tuple[Any, Optional[np.ndarray]]:
    """``MLP(dropout=)``: (the value to keep, float64 array per hidden layer or None).

    A number applies to every hidden layer, a sequence gives one probability
    per hidden layer; each in [0, 1).  The array is None when every
    probability is 0 (no dropout).
    """
    def one(name: str, p: Any) -> float:
        if isinstance(p, (str, bytes, bool, np.bool_)) or not isinstance(
                p, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        return p

    if dropout is None:
        return 0.0, None
    if isinstance(dropout, (list, tuple, np.ndarray)):
        values = list(np.asarray(dropout, dtype=object).ravel()) if isinstance(
            dropout, np.ndarray) else list(dropout)
        if len(values) != n_hidden:
            raise ValueError(f"dropout: expected one probability per hidden layer "
                             f"({n_hidden}), got {len(values)}")
        probs = [one(f"dropout[{k}]", p) for k, p in enumerate(values)]
        kept: Any = tuple(probs)
    else:
        p = one("dropout", dropout)
        if p > 0 and n_hidden == 0:
            raise ValueError("dropout applies to hidden layers; this network has none")
        probs, kept = [p] * n_hidden, p
    if not any(probs):
        return kept, None
    return kept, np.array(probs, dtype=np.float64)


def check_clip_norm(value: Any) -> float:
    """``fit(clip_grad_norm=)``: None (no clipping) or a finite number > 0."""
    if value is None:
        return 0.0
    if isinstance(value, (str, bytes, bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise ValueError(f"clip_grad_norm must be None or a finite number > 0, got {value!r}")
    out = float(value)
    if not (np.isfinite(out) and out > 0):
        raise ValueError(f"clip_grad_norm must be None or a finite number > 0, got {value!r}")
    return out
