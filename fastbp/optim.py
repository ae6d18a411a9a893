"""Optimizers: torch.optim's SGD, Adam, AdamW and RMSprop, and a full-batch L-BFGS.

Each optimizer is an object with torch's constructor arguments as attributes
and torch's defaults.  It holds hyper-parameters only; the per-parameter state
(moments, momentum buffers, the step count) lives in a separate dict of flat
arrays that the caller owns, exactly as fastbp keeps its parameters in one
flat vector.  This module is the reference the compiled kernels
(``src/fbp_optim.h``) are tested against; see ``docs/optim.md``.

The contract
------------
Every optimizer ``opt`` has:

``opt.name``
    ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"`` or ``"lbfgs"``.
hyper-parameter attributes
    Named as torch's constructor arguments (``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``momentum``, ...; L-BFGS: ``max_iter``, ``max_fun``,
    ``tol`` as scikit-learn names them).  Assigning one re-validates it.
``opt.get_config()`` / ``Optimizer.from_config(config)``
    A JSON-able dict ``{"name": ..., <every hyper-parameter>}`` (``betas`` as a
    list) and back; ``from_config`` on the base class dispatches on ``name``.
    Objects compare equal (``==``) when their class and config are equal;
    ``repr`` is the constructor call; they pickle (through ``from_config``,
    so an unpickled object is validated again).
``opt.state_names()``
    The tuple of flat per-parameter state arrays the optimizer needs, named as
    torch's ``optimizer.state[p]`` keys:

    ========  ===========================================================
    SGD       ``("momentum_buffer",)`` if ``momentum != 0``, else ``()``
    Adam(W)   ``("exp_avg", "exp_avg_sq")`` + ``("max_exp_avg_sq",)`` with
              ``amsgrad``
    RMSprop   ``("square_avg",)`` + ``("momentum_buffer",)`` if
              ``momentum > 0`` + ``("grad_avg",)`` if ``centered``
    LBFGS     ``()`` (full batch; scipy keeps its own history)
    ========  ===========================================================

    The state dict also holds ``"step"``, a Python ``int``: the number of
    updates applied so far (torch keeps it for Adam and RMSprop; here every
    optimizer keeps it, and SGD uses ``step == 0`` for torch's first-step
    ``momentum_buffer = grad``).
``opt.init_state(n_params, dtype)``
    ``{"step": 0, name: zeros(n_params, dtype) for name in state_names()}``.
``opt.check_state(state, n_params, dtype)``
    Raises ValueError naming the first missing, extra or malformed entry.
``opt.update(theta, grad, state, lr=None)``
    One step, in place on ``theta`` and the arrays of ``state`` (``grad`` is
    not modified), ``state["step"] += 1``.  It is torch.optim's single-tensor
    algorithm (``foreach=False, fused=False``) with the same operations in the
    same order, computed in ``theta``'s dtype: per-step scalars (bias
    corrections, step sizes) are computed in Python floats (double) exactly
    as torch computes them and rounded once to the dtype, as torch's kernels
    round a Python scalar.  ``lr`` overrides ``opt.lr`` for this step (a
    schedule scales it per epoch).  The weight decay applies to every element
    (torch applies it to biases too).  Differences from torch itself come only
    from torch's vectorised kernels fusing some multiply-adds (FMA); they are
    a few ulp per step (tests/test_optim.py measures them).
``LBFGS.minimize(fun_and_grad, theta0, callback=None)``
    Full-batch L-BFGS-B through :func:`scipy.optimize.minimize`, with the
    options scikit-learn's MLP passes (``maxfun``, ``maxiter``, ``gtol``).

Bad hyper-parameters (negative or non-finite ``lr``, ``betas`` outside
[0, 1), ``eps <= 0``, ``momentum < 0``, ``alpha`` outside [0, 1),
``nesterov`` without momentum, flags that are not booleans, strings, ...)
raise ValueError naming the parameter.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LBFGS", "LBFGSResult",
    "OPTIMIZERS", "get",
]

State = Dict[str, Any]


# -- validation helpers ------------------------------------------------------

def _real(name: str, value: Any) -> float:
    """``value`` as a finite Python float; bool, str, complex, None are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _nonneg(name: str, value: Any) -> float:
    out = _real(name, value)
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


def _positive(name: str, value: Any) -> float:
    out = _real(name, value)
    if not out > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


def _unit(name: str, value: Any) -> float:
    """A number in [0, 1)."""
    out = _real(name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return out


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _count(name: str, value: Any) -> int:
    """An integer >= 1 (not a bool, not a float)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _betas(value: Any) -> Tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return (_unit("betas[0]", value[0]), _unit("betas[1]", value[1]))


def _lerp_(start: np.ndarray, end: np.ndarray, weight: Any) -> None:
    """``start.lerp_(end, weight)`` as torch's scalar kernel computes it, in place.

    ``start + w (end - start)`` when ``|w| < 0.5``, else
    ``end - (end - start)(1 - w)``, with ``w`` rounded to the dtype first.
    """
    T = start.dtype.type
    w = T(weight)
    if abs(w) < 0.5:
        start += w * (end - start)
    else:
        start[...] = end - (end - start) * (T(1) - w)


# -- the base class ----------------------------------------------------------

class Optimizer:
    """Base class of the optimizers: hyper-parameters, config, state layout.

    Subclasses define ``name``, ``_defaults`` (the constructor's arguments and
    defaults, in order), ``_check(params) -> params`` and ``_step``.
    """

    name: str = ""
    _defaults: Dict[str, Any] = {}

    def __init__(self, **params: Any) -> None:
        for key, value in self._check(params).items():
            object.__setattr__(self, key, value)

    # hyper-parameters
    @classmethod
    def _check(cls, params: Dict[str, Any]) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> Dict[str, Any]:
        return {key: getattr(self, key) for key in self._defaults}

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self._defaults:
            raise AttributeError(f"{type(self).__name__} has no hyper-parameter {key!r}")
        params = self._params()
        params[key] = value
        object.__setattr__(self, key, self._check(params)[key])

    def get_config(self) -> Dict[str, Any]:
        """The hyper-parameters as a JSON-able dict, with ``"name"``.

        Returns
        -------
        dict
            ``{"name": self.name, <each constructor argument>: value}``;
            tuples become lists.
        """
        config: Dict[str, Any] = {"name": self.name}
        for key, value in self._params().items():
            config[key] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Optimizer":
        """An optimizer from :meth:`get_config`'s dict.

        On the base class the class is chosen by ``config["name"]``; on a
        subclass the name, if given, must be the subclass's.  Missing
        hyper-parameters take their defaults; unknown keys are an error.

        Parameters
        ----------
        config : dict

        Returns
        -------
        Optimizer
        """
        if not isinstance(config, dict):
            raise ValueError(f"an optimizer config must be a dict, got {type(config).__name__}")
        params = dict(config)
        name = params.pop("name", None)
        if cls is Optimizer:
            if name not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer name {name!r}; expected one of "
                                 f"{sorted(OPTIMIZERS)}")
            cls = OPTIMIZERS[name]
        elif name is not None and name != cls.name:
            raise ValueError(f"config is for optimizer {name!r}, not {cls.name!r}")
        unknown = sorted(set(params) - set(cls._defaults))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} hyper-parameters {unknown}")
        if "betas" in params and isinstance(params["betas"], list):
            params["betas"] = tuple(params["betas"])
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.get_config() == other.get_config()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable: hyper-parameters can be set

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> Tuple[Any, Tuple[Dict[str, Any]]]:
        return (_from_config, (self.get_config(),))

    # state
    def state_names(self) -> Tuple[str, ...]:
        """Names of the flat per-parameter state arrays this optimizer needs.

        Returns
        -------
        tuple of str
            torch's ``optimizer.state[p]`` keys, in a fixed order.
        """
        return ()

    def init_state(self, n_params: int, dtype: Any = np.float64) -> State:
        """A fresh state: ``{"step": 0}`` and a zero array per state name.

        Parameters
        ----------
        n_params : int
            Length of the flat parameter vector.
        dtype : float32 or float64

        Returns
        -------
        dict
        """
        n = _count_params(n_params)
        dt = _float_dtype(dtype)
        state: State = {"step": 0}
        for key in self.state_names():
            state[key] = np.zeros(n, dtype=dt)
        return state

    def check_state(self, state: Any, n_params: int, dtype: Any) -> None:
        """Raise ValueError unless ``state`` fits this optimizer and parameter vector.

        Parameters
        ----------
        state : dict
            ``{"step": int >= 0, name: array (n_params,) of dtype}`` for each
            of :meth:`state_names`, nothing else (``step`` may also be a 0-d
            integer array, as ``np.load`` returns it).
        n_params : int
        dtype : float32 or float64
        """
        dt = _float_dtype(dtype)
        if not isinstance(state, dict):
            raise ValueError(f"optimizer state must be a dict, got {type(state).__name__}")
        expected = ("step",) + self.state_names()
        missing = [k for k in expected if k not in state]
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}({self._short()}) state needs keys {list(expected)}; "
                f"missing {missing}, unexpected {extra}"
            )
        step = state["step"]
        if isinstance(step, np.ndarray) and step.ndim == 0 and step.dtype.kind in "iu":
            step = step.item()  # as np.load gives it back
        if (isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral)
                or step < 0):
            raise ValueError(f"state['step'] must be an integer >= 0, got {step!r}")
        for key in self.state_names():
            arr = state[key]
            if not isinstance(arr, np.ndarray) or arr.shape != (n_params,) or arr.dtype != dt:
                got = (f"{arr.shape} {arr.dtype}" if isinstance(arr, np.ndarray)
                       else type(arr).__name__)
                raise ValueError(f"state[{key!r}] must be an array of shape ({n_params},) "
                                 f"and dtype {dt}, got {got}")
            if not (arr.flags.c_contiguous and arr.flags.writeable):
                raise ValueError(f"state[{key!r}] must be C-contiguous and writeable")

    def _short(self) -> str:
        return ""

    # the step
    def update(self, theta: np.ndarray, grad: np.ndarray, state: State,
               lr: Optional[float] = None) -> None:
        """One optimizer step, in place on ``theta`` and ``state``.

        Parameters
        ----------
        theta : ndarray (n_params,), float32 or float64
            The flat parameters, C-contiguous and writeable; updated in place.
        grad : array-like (n_params,)
            The gradient of the loss at ``theta`` (converted to theta's dtype;
            never modified).
        state : dict
            From :meth:`init_state` (or a previous update); updated in place.
        lr : float, optional
            This step's learning rate instead of ``self.lr``.
        """
        if not isinstance(theta, np.ndarray) or theta.ndim != 1:
            raise ValueError("theta must be a 1-D numpy array")
        dt = _float_dtype(theta.dtype)
        if not (theta.flags.c_contiguous and theta.flags.writeable):
            raise ValueError("theta must be C-contiguous and writeable")
        g = np.asarray(grad)
        if g.shape != theta.shape:
            raise ValueError(f"grad has shape {g.shape}, theta {theta.shape}")
        if not np.issubdtype(g.dtype, np.number) or np.iscomplexobj(g):
            raise ValueError(f"grad must be real numbers, got dtype {g.dtype}")
        g = g.astype(dt, copy=False)
        self.check_state(state, theta.shape[0], dt)
        step_lr = self.lr if lr is None else _nonneg("lr", lr)  # type: ignore[attr-defined]
        self._step(theta, g, state, step_lr)
        state["step"] = int(state["step"]) + 1

    def _step(self, theta: np.ndarray, grad: np.ndarray, state: State,
              lr: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _from_config(config: Dict[str, Any]) -> Optimizer:
    return Optimizer.from_config(config)


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _count_params(n: Any) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n_params must be an integer >= 0, got {n!r}")
    return int(n)


# -- SGD ---------------------------------------------------------------------

class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD`` (dampening 0).

    With :math:`\lambda` = ``weight_decay``, :math:`\mu` = ``momentum``,
    :math:`\eta` = ``lr``, at step :math:`t = 1, 2, \dots`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &= g_t \text{ if } t = 1 \text{ else } \mu b_{t-1} + g_t \\
        g_t &\leftarrow g_t + \mu b_t \text{ (nesterov) else } b_t \\
        \theta_t &= \theta_{t-1} - \eta g_t

    (the middle lines only when :math:`\mu \ne 0`).

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and >= 0.  (0.01 is fastbp's ``fit`` default;
        ``torch.optim.SGD`` defaults to 1e-3.)
    momentum : float, default 0.0
        >= 0.  State ``momentum_buffer`` (:math:`b`) when non-zero.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0``.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, biases included, >= 0.
    """

    name = "sgd"
    _defaults = {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    @classmethod
    def _check(cls, p: Dict[str, Any]) -> Dict[str, Any]:
        out = {"lr": _nonneg("lr", p["lr"]), "momentum": _nonneg("momentum", p["momentum"]),
               "nesterov": _flag("nesterov", p["nesterov"]),
               "weight_decay": _nonneg("weight_decay", p["weight_decay"])}
        if out["nesterov"] and out["momentum"] == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return out

    def state_names(self) -> Tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def _short(self) -> str:
        return f"momentum={self.momentum!r}"

    def _step(self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float) -> None:
        T = theta.dtype.type
        g = grad
        if self.weight_decay != 0:
            g = g + T(self.weight_decay) * theta          # grad.add(param, alpha=wd)
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            if state["step"] == 0:
                buf[...] = g                               # buf = grad.clone()
            else:
                buf *= T(self.momentum)                    # buf.mul_(mu).add_(grad)
                buf += g
            g = g + T(self.momentum) * buf if self.nesterov else buf
        theta += T(-lr) * g                                # param.add_(grad, alpha=-lr)


# -- Adam and AdamW ----------------------------------------------------------

class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (``amsgrad`` optional).

    With :math:`\beta_1, \beta_2` = ``betas``, :math:`\eta` = ``lr``,
    :math:`\lambda` = ``weight_decay``, at step :math:`t = 1, 2, \dots`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t
              \quad\text{(torch's lerp)} \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ (amsgrad) else } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    computed as torch does: ``denom = sqrt(v) / bias_correction2_sqrt + eps``,
    ``theta += (-step_size * m) / denom``.

    Parameters
    ----------
    lr : float, default 1e-3
        Finite and >= 0.
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        > 0.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient (biases included), >= 0.
    amsgrad : bool, default False
        Normalise by the running maximum of :math:`v` (state
        ``max_exp_avg_sq``).

    Notes
    -----
    State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`),
    ``max_exp_avg_sq`` (:math:`\hat v`, amsgrad only) and ``step``.
    """

    name = "adam"
    _decoupled = False
    _defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                 "amsgrad": False}
    lr: float
    betas: Tuple[float, float]
    eps: float
    weight_decay: float
    amsgrad: bool

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @classmethod
    def _check(cls, p: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr": _nonneg("lr", p["lr"]), "betas": _betas(p["betas"]),
                "eps": _positive("eps", p["eps"]),
                "weight_decay": _nonneg("weight_decay", p["weight_decay"]),
                "amsgrad": _flag("amsgrad", p["amsgrad"])}

    def state_names(self) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _short(self) -> str:
        return f"amsgrad={self.amsgrad!r}"

    def _step(self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float) -> None:
        T = theta.dtype.type
        beta1, beta2 = self.betas
        step = int(state["step"]) + 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        g = grad
        if self.weight_decay != 0:
            if self._decoupled:
                theta *= T(1 - lr * self.weight_decay)     # param.mul_(1 - lr * wd)
            else:
                g = g + T(self.weight_decay) * theta       # grad.add(param, alpha=wd)
        _lerp_(exp_avg, g, 1 - beta1)                      # exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq *= T(beta2)                             # .mul_(beta2)
        exp_avg_sq += (T(1 - beta2) * g) * g               # .addcmul_(grad, grad, 1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if self.amsgrad:
            second = state["max_exp_avg_sq"]
            np.maximum(second, exp_avg_sq, out=second)
        else:
            second = exp_avg_sq
        denom = np.sqrt(second) / T(bias_correction2_sqrt)
        denom += T(self.eps)
        theta += (T(-step_size) * exp_avg) / denom         # param.addcdiv_(m, denom, -step_size)


class _SklearnAdam(Optimizer):
    """scikit-learn's ``AdamOptimizer`` (private: :mod:`fastbp.sklearn`'s adam).

    Not torch's Adam: at step t, with the gradient g (scikit-learn's, with
    its l2 term already in it; intercepts get none),
    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``,
    ``rate = lr sqrt(1 - beta2**t) / (1 - beta1**t)`` and ``theta += -rate m
    / (sqrt(v) + eps)``, with numpy's roundings of
    ``sklearn/neural_network/_stochastic_optimizers.py`` (1.9): the moments
    and ``sqrt(v) + eps`` in theta's dtype (Python floats are weak scalars),
    the rate a float64 scalar, so the update is float64 and is rounded once
    to theta's dtype by the in-place add.  The compiled epoch runs it as the
    ``sklearn`` variant of ``fbp_adam_range`` (``optimizer=`` of
    ``Network.fit_epoch``), bitwise equal to this.  State as Adam's:
    ``exp_avg`` (scikit-learn's ``ms``), ``exp_avg_sq`` (``vs``), ``step``
    (``t``).  Not in :data:`OPTIMIZERS`; torch's classes are unchanged.
    """

    name = "sklearn_adam"
    _defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    lr: float
    betas: Tuple[float, float]
    eps: float
    weight_decay = 0.0  # read by the kernels' setup: scikit-learn's Adam has none

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps)

    @classmethod
    def _check(cls, p: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr": _nonneg("lr", p["lr"]), "betas": _betas(p["betas"]),
                "eps": _positive("eps", p["eps"])}

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), (self.lr, self.betas, self.eps))

    def state_names(self) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _step(self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float) -> None:
        beta_1, beta_2 = self.betas
        t = int(state["step"]) + 1
        ms, vs = state["exp_avg"], state["exp_avg_sq"]
        ms *= beta_1                                       # beta_1 * m + (1 - beta_1) * grad
        ms += (1 - beta_1) * grad
        vs *= beta_2                                       # beta_2 * v + (1 - beta_2) * grad**2
        vs += (1 - beta_2) * (grad**2)
        rate = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)   # np.float64
        np.add(theta, -rate * ms / (np.sqrt(vs) + self.eps), out=theta)


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    As :class:`Adam`, except that the decay does not enter the gradient;
    each step first shrinks the parameters (biases included):

    .. math::

        \theta_{t-1} \leftarrow \theta_{t-1} (1 - \eta \lambda)

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
    amsgrad : bool, default False
    """

    name = "adamw"
    _decoupled = True
    _defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                 "amsgrad": False}

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# -- RMSprop -----------------------------------------------------------------

class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop`` (momentum and centered optional).

    With :math:`\alpha` = ``alpha``, :math:`\mu` = ``momentum``,
    :math:`\eta` = ``lr``, :math:`\lambda` = ``weight_decay``:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1 - \alpha) g_t
            \quad\text{(centered; torch's lerp)} \\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered) else }
              \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / d_t,\quad \theta_t = \theta_{t-1} - \eta b_t
              \quad\text{(momentum > 0)} \\
        \theta_t &= \theta_{t-1} - \eta\, g_t / d_t \quad\text{(otherwise)}

    Parameters
    ----------
    lr : float, default 1e-2
        Finite and >= 0.
    alpha : float, default 0.99
        Smoothing constant, in [0, 1).
    eps : float, default 1e-8
        > 0.
    weight_decay : float, default 0.0
        >= 0, biases included.
    momentum : float, default 0.0
        >= 0.
    centered : bool, default False
        Normalise by the estimated variance of the gradient.

    Notes
    -----
    State: ``square_avg`` (:math:`v`), ``momentum_buffer`` (:math:`b`, if
    momentum > 0), ``grad_avg`` (:math:`\bar g`, if centered) and ``step``.
    """

    name = "rmsprop"
    _defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                 "centered": False}
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False) -> None:
        super().__init__(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    @classmethod
    def _check(cls, p: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr": _nonneg("lr", p["lr"]), "alpha": _unit("alpha", p["alpha"]),
                "eps": _positive("eps", p["eps"]),
                "weight_decay": _nonneg("weight_decay", p["weight_decay"]),
                "momentum": _nonneg("momentum", p["momentum"]),
                "centered": _flag("centered", p["centered"])}

    def state_names(self) -> Tuple[str, ...]:
        return (("square_avg",) + (("momentum_buffer",) if self.momentum > 0 else ())
                + (("grad_avg",) if self.centered else ()))

    def _short(self) -> str:
        return f"momentum={self.momentum!r}, centered={self.centered!r}"

    def _step(self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float) -> None:
        T = theta.dtype.type
        alpha = self.alpha
        square_avg = state["square_avg"]
        g = grad
        if self.weight_decay != 0:
            g = g + T(self.weight_decay) * theta           # grad.add(param, alpha=wd)
        square_avg *= T(alpha)                             # .mul_(alpha)
        square_avg += (T(1 - alpha) * g) * g               # .addcmul_(grad, grad, 1 - alpha)
        if self.centered:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, g, 1 - alpha)                 # grad_avg.lerp_(grad, 1 - alpha)
            avg = np.sqrt(square_avg + (T(-1) * grad_avg) * grad_avg)
        else:
            avg = np.sqrt(square_avg)
        avg += T(self.eps)
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= T(self.momentum)                        # buf.mul_(mu).addcdiv_(grad, avg)
            buf += g / avg
            theta += T(-lr) * buf                          # param.add_(buf, alpha=-lr)
        else:
            theta += (T(-lr) * g) / avg                    # param.addcdiv_(grad, avg, -lr)


# -- L-BFGS ------------------------------------------------------------------

class LBFGSResult(NamedTuple):
    """What :meth:`LBFGS.minimize` returns (a named tuple).

    Attributes
    ----------
    theta : ndarray
        The final parameters, in the dtype of ``theta0``.
    n_iter : int
        L-BFGS iterations done (``result.nit``).
    n_fun : int
        Calls of ``fun_and_grad`` (``result.nfev``).
    result : scipy.optimize.OptimizeResult
        scipy's full result (``fun``, ``success``, ``message``, ...).
    """

    theta: np.ndarray
    n_iter: int
    n_fun: int
    result: Any

    @property
    def loss(self) -> float:
        """The objective at ``theta`` (``result.fun``)."""
        return float(self.result.fun)

    @property
    def converged(self) -> bool:
        """Whether scipy reports convergence (``result.success``)."""
        return bool(self.result.success)


def _import_scipy_optimize() -> Any:
    try:
        import scipy
        import scipy.optimize
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fastbp.optim.LBFGS needs scipy (scipy.optimize.minimize with "
            "method='L-BFGS-B'): pip install 'fastbp[lbfgs]' or pip install scipy"
        ) from exc
    return scipy


class LBFGS(Optimizer):
    r"""Full-batch L-BFGS: :func:`scipy.optimize.minimize` with ``method="L-BFGS-B"``.

    As scikit-learn's ``MLPClassifier(solver="lbfgs")``: each iteration uses
    the loss and gradient of the whole data set; scipy's limited-memory BFGS
    with its line search does the rest (no line search of fastbp's own).
    Stops after ``max_iter`` iterations, ``max_fun`` evaluations, or when
    the largest gradient component falls below ``tol`` (scipy's ``gtol``).

    Parameters
    ----------
    max_iter : int, default 200
        scipy's ``maxiter``, >= 1.
    max_fun : int, default 15000
        scipy's ``maxfun``, >= 1.
    tol : float, default 1e-4
        scipy's ``gtol``, >= 0.

    Notes
    -----
    Needs scipy (the ``[lbfgs]`` extra), imported when :meth:`minimize`
    runs.  There is no per-parameter state to keep between fits and no
    learning rate: :meth:`update` is refused.
    """

    name = "lbfgs"
    _defaults = {"max_iter": 200, "max_fun": 15000, "tol": 1e-4}
    max_iter: int
    max_fun: int
    tol: float

    def __init__(self, max_iter: int = 200, max_fun: int = 15000, tol: float = 1e-4) -> None:
        super().__init__(max_iter=max_iter, max_fun=max_fun, tol=tol)

    @classmethod
    def _check(cls, p: Dict[str, Any]) -> Dict[str, Any]:
        return {"max_iter": _count("max_iter", p["max_iter"]),
                "max_fun": _count("max_fun", p["max_fun"]),
                "tol": _nonneg("tol", p["tol"])}

    def update(self, theta: np.ndarray, grad: np.ndarray, state: State,
               lr: Optional[float] = None) -> None:
        """Refused: L-BFGS is full-batch; use :meth:`minimize`."""
        raise TypeError("LBFGS takes no per-batch steps: it minimises the full-batch "
                        "objective with LBFGS.minimize(fun_and_grad, theta0)")

    def scipy_options(self) -> Dict[str, Any]:
        """The ``options`` passed to scipy, as scikit-learn's MLP passes them.

        ``{"maxfun": max_fun, "maxiter": max_iter, "gtol": tol}``, plus
        ``"iprint": -1`` for scipy older than 1.15 (which deprecated it).
        """
        scipy = _import_scipy_optimize()
        options: Dict[str, Any] = {"maxfun": self.max_fun, "maxiter": self.max_iter,
                                   "gtol": self.tol}
        if _version_tuple(scipy.__version__) < (1, 15):
            options["iprint"] = -1
        return options

    def minimize(
        self,
        fun_and_grad: Callable[[np.ndarray], Tuple[float, np.ndarray]],
        theta0: np.ndarray,
        *,
        callback: Optional[Callable[[np.ndarray], Optional[bool]]] = None,
    ) -> LBFGSResult:
        """Minimise ``fun_and_grad`` from ``theta0`` with scipy's L-BFGS-B.

        Parameters
        ----------
        fun_and_grad : callable
            ``fun_and_grad(theta) -> (loss, grad)``: the full-batch objective
            and its gradient (``jac=True``).  ``theta`` is a fresh 1-D array in
            the dtype of ``theta0`` (scipy works in float64; the values are
            rounded to float32 for a float32 ``theta0``).
        theta0 : ndarray (n_params,)
            Start; not modified.
        callback : callable, optional
            ``callback(theta)`` after each iteration; returning True stops.

        Returns
        -------
        LBFGSResult
            ``(theta, n_iter, n_fun, result)``.
        """
        scipy = _import_scipy_optimize()
        x0 = np.asarray(theta0)
        if x0.ndim != 1 or not (np.issubdtype(x0.dtype, np.floating)
                                or np.issubdtype(x0.dtype, np.integer)):
            raise ValueError("theta0 must be a 1-D array of real numbers")
        dt = np.dtype(np.float64) if x0.dtype.kind != "f" else _float_dtype(x0.dtype)
        if not np.isfinite(x0).all():
            raise ValueError("theta0 must be finite")
        n_calls = 0

        def fun(x: np.ndarray) -> Tuple[float, np.ndarray]:
            nonlocal n_calls
            n_calls += 1
            loss, grad = fun_and_grad(x.astype(dt, copy=True))
            g = np.asarray(grad, dtype=np.float64).reshape(-1)
            if g.shape != x.shape:
                raise ValueError(f"fun_and_grad returned a gradient of {g.size} "
                                 f"values for {x.size} parameters")
            return float(loss), g

        stopped: list = []  # the iterate at which the callback asked to stop
        n_seen = 0
        cb = None
        if callback is not None:
            def cb(xk: np.ndarray) -> None:
                nonlocal n_seen
                n_seen += 1
                theta = np.array(xk, dtype=dt)
                if callback(theta) is True:
                    stopped.append(theta)
                    raise StopIteration

        try:
            res = scipy.optimize.minimize(fun, x0.astype(np.float64), method="L-BFGS-B",
                                          jac=True, callback=cb, options=self.scipy_options())
        except StopIteration:
            if not stopped:
                raise
            # scipy < 1.11 lets the callback's StopIteration out of minimize
            res = scipy.optimize.OptimizeResult(
                x=stopped[0].astype(np.float64), fun=float(fun_and_grad(stopped[0].copy())[0]),
                nit=n_seen, nfev=n_calls,
                success=False, status=99, message="stopped by the callback")
        n_fun = int(getattr(res, "nfev", n_calls))
        return LBFGSResult(np.asarray(res.x, dtype=np.float64).astype(dt), int(res.nit),
                           n_fun, res)


def _version_tuple(version: str) -> Tuple[int, ...]:
    out = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


OPTIMIZERS: Dict[str, type] = {cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop, LBFGS)}


def get(optimizer: Any) -> Optimizer:
    """An optimizer from an instance (returned as is), a name or a config dict.

    Parameters
    ----------
    optimizer : Optimizer, str or dict
        ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"lbfgs"`` (torch's
        defaults), or :meth:`Optimizer.get_config`'s dict.

    Returns
    -------
    Optimizer
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                             f"{sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer]()
    if isinstance(optimizer, dict):
        return Optimizer.from_config(optimizer)
    raise ValueError(f"optimizer must be an Optimizer, a name or a config dict, "
                     f"got {type(optimizer).__name__}")
