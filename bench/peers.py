"""The peers: one factory per implementation, all with the same interface.

A peer's ``build`` function receives the configuration, the training data and
the hyper-parameters and returns an *epoch function*: called with the epoch
index, it trains for one epoch of shuffled mini-batch SGD on that data and
returns a loss (each peer's own convention; it is only a sanity check).
The modules a peer needs are listed in ``Peer.modules`` so that the worker can
import them (and skip the peer when one is missing) before it takes its
memory baseline.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.configs import Config

EpochFn = Callable[[int], float]
BuildFn = Callable[[Config, np.ndarray, np.ndarray, float, int], EpochFn]


@dataclass(frozen=True)
class Peer:
    """One implementation to benchmark.

    Parameters
    ----------
    name : str
        Name used on the command line and in the output.
    modules : tuple of str
        Modules it needs; it is skipped with a note when one cannot be imported.
    build : callable
        ``build(config, X, Y, lr, seed) -> epoch_fn`` (see the module docstring).
    set_threads : callable or None
        Sets the peer's own thread count (beyond OMP/BLAS, set for all peers).
    configs : tuple of str or None
        Configurations it runs on; ``None`` for all.
    """

    name: str
    modules: tuple[str, ...]
    build: BuildFn
    set_threads: Callable[[int], None] | None = None
    configs: tuple[str, ...] | None = None

    def runs_on(self, config: Config) -> bool:
        """Whether this peer is benchmarked on ``config``."""
        return self.configs is None or config.name in self.configs


# -- fastbp and its pure-Python reference ---------------------------------

def _build_fastbp_like(cls: Any) -> BuildFn:
    def build(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
        net = cls(list(cfg.sizes), activation=cfg.activation, output="identity",
                  loss="squared_error", bias=True, dtype=X.dtype.name, seed=seed)

        def epoch(e: int) -> float:
            hist = net.fit(X, Y, epochs=1, batch_size=cfg.batch_size, lr=lr,
                           shuffle=True, seed=seed + e)
            return float(hist.loss[-1])

        return epoch

    return build


def _build_fastbp(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
    import fastbp

    return _build_fastbp_like(fastbp.MLP)(cfg, X, Y, lr, seed)


def _build_reference(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
    import fastbp.reference

    return _build_fastbp_like(fastbp.reference.MLP)(cfg, X, Y, lr, seed)


def _fastbp_threads(n: int) -> None:
    import fastbp

    fastbp.set_num_threads(n)


# -- the hand-written numpy peer ------------------------------------------

def _build_numpy(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
    from bench.numpy_mlp import NumpyMLP

    net = NumpyMLP(cfg.sizes, activation=cfg.activation, dtype=X.dtype, seed=seed)
    rng = np.random.default_rng(seed)
    return lambda e: net.fit_epoch(X, Y, cfg.batch_size, lr, rng)


# -- PyTorch eager --------------------------------------------------------

def _build_torch(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    dtype = getattr(torch, X.dtype.name)
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[cfg.activation]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(cfg.sizes[:-1], cfg.sizes[1:]):
        layers += [nn.Linear(n_in, n_out, dtype=dtype), act()]
    model = nn.Sequential(*layers[:-1])  # identity output
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(X), cfg.batch_size

    def epoch(e: int) -> float:
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            x, y = Xt[idx], Yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * torch.sum((model(x) - y) ** 2) / len(x)
            loss.backward()
            opt.step()
            total += loss.item()
        return total / -(-n // bs)

    return epoch


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass


# -- scikit-learn ---------------------------------------------------------

def _build_sklearn(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, seed: int) -> EpochFn:
    from sklearn.neural_network import MLPRegressor

    model = MLPRegressor(
        hidden_layer_sizes=cfg.sizes[1:-1],
        activation={"sigmoid": "logistic"}.get(cfg.activation, cfg.activation),
        solver="sgd", alpha=0.0, batch_size=cfg.batch_size, learning_rate="constant",
        learning_rate_init=lr, momentum=0.0, nesterovs_momentum=False, shuffle=True,
        random_state=seed,
    )
    y = Y.ravel() if Y.shape[1] == 1 else Y

    def epoch(e: int) -> float:
        model.partial_fit(X, y)
        return float(model.loss_)

    return epoch


#: All peers, in the order of the output.  fastbp comes first.
PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("fastbp", ("fastbp",), _build_fastbp, _fastbp_threads),
        Peer("numpy", ("numpy",), _build_numpy),
        Peer("torch", ("torch",), _build_torch, _torch_threads),
        Peer("sklearn", ("sklearn.neural_network",), _build_sklearn),
        Peer("reference", ("fastbp.reference",), _build_reference, configs=("tiny",)),
    )
}
