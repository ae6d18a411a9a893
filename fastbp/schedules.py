"""Learning-rate schedules for :meth:`fastbp.MLP.fit`.

A schedule maps the 0-based epoch number and the initial learning rate to the
learning rate of that epoch (constant within an epoch, as PyTorch's schedulers
stepped once per epoch).  ``fit(schedule=...)`` takes an instance, a name
(``"constant"``, ``"step"``, ``"invscaling"``, ``"cosine"``, with default
parameters) or any callable ``f(epoch, lr0) -> lr``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union


class Schedule:
    """Base class: ``schedule(epoch, lr0)`` returns the epoch's learning rate."""

    def __call__(self, epoch: int, lr0: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class Constant(Schedule):
    """lr = lr0."""

    def __call__(self, epoch: int, lr0: float) -> float:
        return lr0

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
        if int(step_size) < 1 or not 0 < gamma:
            raise ValueError("StepDecay needs step_size >= 1 and gamma > 0")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, epoch: int, lr0: float) -> float:
        return lr0 * self.gamma ** (epoch // self.step_size)

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
        self.power_t = float(power_t)

    def __call__(self, epoch: int, lr0: float) -> float:
        return lr0 / (epoch + 1) ** self.power_t

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
        if t_max is not None and int(t_max) < 1:
            raise ValueError("Cosine needs t_max >= 1")
        self.t_max, self.lr_min = (None if t_max is None else int(t_max)), float(lr_min)

    def __call__(self, epoch: int, lr0: float) -> float:
        t_max = self.t_max or 1
        return self.lr_min + (lr0 - self.lr_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2

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


def check_lr_value(value: Any, epoch: int) -> float:
    """The schedule's learning rate for an epoch, checked."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the schedule returned {value!r} for epoch {epoch}") from None
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the schedule returned lr={value!r} for epoch {epoch}; need >= 0")
    return lr
