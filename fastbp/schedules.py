"""Learning-rate schedules for :meth:`fastbp.MLP.fit`.

A schedule maps the 0-based epoch number and the initial learning rate to the
learning rate of that epoch (constant within an epoch, as PyTorch's schedulers
stepped once per epoch).  ``fit(schedule=...)`` takes an instance, a name
(``"constant"``, ``"step"``, ``"invscaling"``, ``"cosine"``, with default
parameters) or any callable ``f(epoch, lr0) -> lr``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np


def _number(name: str, value: Any) -> float:
    """A finite real number (not a string, not a bool)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def _integer(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _guard(f: Callable[[], float]) -> float:
    """``f()``, with an overflow or a division by an underflowed zero giving inf."""
    try:
        return f()
    except (OverflowError, ZeroDivisionError):
        return math.inf


class Schedule:
    """Base class: ``schedule(epoch, lr0)`` returns the epoch's learning rate."""

    def __call__(self, epoch: int, lr0: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bounding_epochs(self, epochs: int) -> Optional[Tuple[int, ...]]:
        """Epochs whose rates bound those of every epoch of a fit, or None.

        The built-in schedules are monotone (or bounded by lr0 and lr_min), so
        :meth:`fastbp.MLP.fit` checks their rates before training starts; a
        subclass (user code) returns None and is checked epoch by epoch.
        """
        return None


class Constant(Schedule):
    """lr = lr0."""

    def __call__(self, epoch: int, lr0: float) -> float:
        return lr0

    def _bounding_epochs(self, epochs: int) -> Optional[Tuple[int, ...]]:
        return (0,) if type(self) is Constant else None

    def __repr__(self) -> str:
        return "Constant()"


class StepDecay(Schedule):
    """lr = lr0 * gamma ** (epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``.

    Parameters
    ----------
    step_size : int
        Epochs between decays.
    gamma : float
        Factor of each decay.
    """

    def __init__(self, step_size: int = 10, gamma: float = 0.5) -> None:
        self.step_size = _integer("StepDecay step_size", step_size)
        self.gamma = _number("StepDecay gamma", gamma)
        if not self.gamma > 0:
            raise ValueError(f"StepDecay gamma must be > 0, got {gamma!r}")

    def __call__(self, epoch: int, lr0: float) -> float:
        return _guard(lambda: lr0 * self.gamma ** (epoch // self.step_size))

    def _bounding_epochs(self, epochs: int) -> Optional[Tuple[int, ...]]:
        return (0, max(0, epochs - 1)) if type(self) is StepDecay else None

    def __repr__(self) -> str:
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma})"


class InverseScaling(Schedule):
    """lr = lr0 / (epoch + 1) ** power_t, as scikit-learn's ``invscaling`` (per epoch).

    Parameters
    ----------
    power_t : float
        Exponent of the decay.
    """

    def __init__(self, power_t: float = 0.5) -> None:
        self.power_t = _number("InverseScaling power_t", power_t)

    def __call__(self, epoch: int, lr0: float) -> float:
        try:
            return lr0 / (epoch + 1) ** self.power_t
        except OverflowError:  # the divisor overflows (power_t > 0): the rate is 0
            return 0.0
        except ZeroDivisionError:  # the divisor underflows to 0 (power_t < 0)
            return math.inf

    def _bounding_epochs(self, epochs: int) -> Optional[Tuple[int, ...]]:
        return (0, max(0, epochs - 1)) if type(self) is InverseScaling else None

    def __repr__(self) -> str:
        return f"InverseScaling(power_t={self.power_t})"


class Cosine(Schedule):
    """Cosine annealing from lr0 to lr_min over t_max epochs (``CosineAnnealingLR``).

    Parameters
    ----------
    t_max : int or None
        Length of the half cosine in epochs; None means the ``epochs`` of the fit.
    lr_min : float
        Learning rate at the end.
    """

    def __init__(self, t_max: Optional[int] = None, lr_min: float = 0.0) -> None:
        self.t_max = None if t_max is None else _integer("Cosine t_max", t_max)
        self.lr_min = _number("Cosine lr_min", lr_min)
        if self.lr_min < 0:
            raise ValueError(f"Cosine lr_min must be >= 0, got {lr_min!r}")

    def __call__(self, epoch: int, lr0: float) -> float:
        t_max = self.t_max or 1
        return self.lr_min + (lr0 - self.lr_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2

    def _bounding_epochs(self, epochs: int) -> Optional[Tuple[int, ...]]:
        # Every rate lies between lr0 (epoch 0) and lr_min (>= 0, finite).
        return (0,) if type(self) is Cosine else None

    def __repr__(self) -> str:
        return f"Cosine(t_max={self.t_max}, lr_min={self.lr_min})"


_NAMES = {"constant": Constant, "step": StepDecay, "invscaling": InverseScaling, "cosine": Cosine}

ScheduleLike = Union[None, str, Schedule, Callable[[int, float], float]]


def resolve(schedule: ScheduleLike, epochs: int) -> Callable[[int, float], float]:
    """Turn what ``fit(schedule=...)`` accepts into a callable ``f(epoch, lr0)``."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, str):
        if schedule not in _NAMES:
            raise ValueError(
                f"unknown schedule {schedule!r}; expected one of {', '.join(map(repr, _NAMES))}, "
                "a fastbp.schedules.Schedule or a callable f(epoch, lr0)"
            )
        schedule = _NAMES[schedule]()
    if isinstance(schedule, Cosine) and schedule.t_max is None:
        schedule = Cosine(max(1, epochs), schedule.lr_min)
    if not callable(schedule):
        raise ValueError(f"schedule must be a name, a Schedule or a callable, got {schedule!r}")
    return schedule


def check_ahead(
    schedule: Callable[[int, float], float], epochs: int, lr0: float
) -> Tuple[Optional[float], bool]:
    """Check before training what can be checked of a schedule's rates.

    The rate of the first epoch is always computed (once) and checked here;
    for the built-in schedules the rates of all ``epochs`` are (their extremes
    are known).

    Returns
    -------
    lr_first : float or None
        The first epoch's rate (None when ``epochs`` is 0).
    all_checked : bool
        True when every epoch's rate is known to be valid; False when the
        schedule is user code, whose later rates are checked as they come.

    Raises
    ------
    ValueError
        When a rate that is checked is not a finite number >= 0.
    """
    if epochs == 0:
        return None, True
    first = check_lr_value(schedule(0, lr0), 0)
    bounding = schedule._bounding_epochs(epochs) if isinstance(schedule, Schedule) else None
    if bounding is None:
        return first, False
    for epoch in bounding:
        if epoch:
            check_lr_value(schedule(epoch, lr0), epoch)
    return first, True


def check_lr_value(value: Any, epoch: int) -> float:
    """The schedule's learning rate for an epoch, checked."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"the schedule returned {value!r} for epoch {epoch}")
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the schedule returned {value!r} for epoch {epoch}") from None
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the schedule returned lr={value!r} for epoch {epoch}; need >= 0")
    return lr
