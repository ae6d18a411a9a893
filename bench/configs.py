"""Benchmark configurations.

Each configuration is one network shape trained for one epoch of shuffled
mini-batch SGD with ``loss="squared_error"`` and ``output="identity"`` on
random data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Config:
    """One benchmark configuration.

    Parameters
    ----------
    name : str
        Short name used on the command line and in the output.
    sizes : tuple of int
        Layer widths, input first, e.g. ``(784, 256, 10)``.
    activation : str
        Hidden-layer activation, ``"relu"`` or ``"sigmoid"``.
    batch_size : int
        Mini-batch size.
    n_samples : int
        Samples per epoch in a full run.
    n_samples_quick : int
        Samples per epoch in a ``--quick`` run.
    """

    name: str
    sizes: tuple[int, ...]
    activation: str
    batch_size: int
    n_samples: int
    n_samples_quick: int

    @property
    def label(self) -> str:
        """Human-readable label, e.g. ``"784-256-10 relu b128"``."""
        return f"{'-'.join(map(str, self.sizes))} {self.activation} b{self.batch_size}"

    @property
    def n_params(self) -> int:
        """Number of weights (biases excluded)."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops_per_sample(self) -> int:
        """FLOPs per training sample: ``6 * sum(n_in * n_out)``.

        Two for the forward matrix product, two for the backward product with
        the weights and two for the weight gradient; biases and activations
        are not counted.
        """
        return 6 * self.n_params

    def samples(self, quick: bool) -> int:
        """Samples per epoch for a quick or a full run."""
        return self.n_samples_quick if quick else self.n_samples

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict, with its label and FLOPs."""
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d["label"] = self.label
        d["flops_per_sample"] = self.flops_per_sample
        return d


#: All configurations, smallest first.  ``n_samples`` is chosen so that one
#: fastbp epoch takes a fraction of a second to a second on a 2-core machine
#: and the slowest peer a few seconds.
CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("tiny", (2, 2, 1), "sigmoid", 1, 4096, 64),
        Config("small", (64, 128, 10), "relu", 32, 32768, 256),
        Config("mnist", (784, 256, 128, 10), "relu", 128, 16384, 512),
        Config("large", (1024, 2048, 2048, 1024), "relu", 256, 1024, 256),
        # A wide layer at a tiny batch: too few rows to split them, so the
        # output units of each layer are split between threads.
        Config("wide", (1024, 4096, 1024), "relu", 4, 512, 16),
    )
}

#: Configurations a ``--quick`` run uses unless ``--configs`` is given.
QUICK_CONFIGS: tuple[str, ...] = ("tiny", "small")
