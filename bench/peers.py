"""The peers: one factory per implementation, all with the same interface.

A peer's ``build`` function receives the configuration, the training data,
the learning rate, the initial parameters and the batch order, and returns a
:class:`Trainer`: ``epoch(e)`` trains for one epoch of shuffled mini-batch SGD
on that data, visiting the rows in the order ``shuffle(e)``, and returns a loss
(each peer's own convention; it is only a sanity check); ``params()`` returns
the current parameters as numpy arrays, so that the worker can check the
first epoch against a float64 numpy run of the same SGD (:mod:`bench.verify`)
before it times anything.  Every peer starts from the same weights
(:func:`init_params`) and follows the same batch order (:class:`Shuffle`).
The modules a peer needs are listed in ``Peer.modules`` so that the worker can
import them (and skip the peer when one is missing) before it takes its
memory baseline.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.configs import Config

Params = list[tuple[np.ndarray, np.ndarray]]
EpochFn = Callable[[int], float]


@dataclass(frozen=True)
class Shuffle:
    """The batch order of every peer: epoch ``e`` visits the rows in
    ``numpy.random.default_rng(seed + e).permutation(n)``, which is the order
    ``fastbp.MLP.fit(..., shuffle=True, seed=seed + e)`` draws itself.

    Parameters
    ----------
    seed : int
        Seed of epoch 0.
    n : int
        Number of samples.
    """

    seed: int
    n: int

    def __call__(self, e: int) -> np.ndarray:
        """The permutation of epoch ``e`` (int64)."""
        return np.random.default_rng(self.seed + e).permutation(self.n)


def init_params(sizes: tuple[int, ...], dtype: Any, seed: int) -> Params:
    """The initial parameters every peer starts from.

    ``W`` of shape ``(n_out, n_in)`` drawn from N(0, 1/n_in), ``b`` from
    N(0, 0.1^2) (non-zero, so that a peer that drops or mishandles the biases
    fails the check), in ``dtype``; the stream is independent of the data's.
    """
    rng = np.random.default_rng([seed, 1])
    return [((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype),
             (0.1 * rng.standard_normal(n_out)).astype(dtype))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


@dataclass
class Trainer:
    """What a peer's ``build`` returns.

    Parameters
    ----------
    epoch : callable
        ``epoch(e) -> loss``: one epoch in the order ``shuffle(e)``.
    params : callable
        ``params() -> [(W, b), ...]``: the current parameters as numpy arrays,
        ``W`` of shape ``(n_out, n_in)``.
    info : dict
        Anything the peer wants reported with its result (how it was
        configured, compile counts, ...).
    """

    epoch: EpochFn
    params: Callable[[], Params]
    info: dict[str, Any] = field(default_factory=dict)


BuildFn = Callable[[Config, np.ndarray, np.ndarray, float, Params, Shuffle], Trainer]


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
        ``build(config, X, Y, lr, init, shuffle) -> Trainer`` (see the module
        docstring).
    set_threads : callable or None
        Sets the peer's own thread count (beyond OMP/BLAS, set for all peers).
    configs : tuple of str or None
        Configurations it runs on; ``None`` for all.
    quick : bool
        Whether it runs in a ``--quick`` smoke run (peers that compile for
        many seconds do not).
    description : str
        How it is configured, for the report.
    """

    name: str
    modules: tuple[str, ...]
    build: BuildFn
    set_threads: Callable[[int], None] | None = None
    configs: tuple[str, ...] | None = None
    quick: bool = True
    description: str = ""

    def runs_on(self, config: Config) -> bool:
        """Whether this peer is benchmarked on ``config``."""
        return self.configs is None or config.name in self.configs


# -- fastbp and its pure-Python reference ---------------------------------

def _build_fastbp_like(cls: Any) -> BuildFn:
    def build(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
              shuffle: Shuffle) -> Trainer:
        net = cls(list(cfg.sizes), activation=cfg.activation, output="identity",
                  loss="squared_error", bias=True, dtype=X.dtype.name, seed=0)
        for k, (W, b) in enumerate(init):
            net.weights[k][...] = W
            net.biases[k][...] = b

        def epoch(e: int) -> float:
            # fit draws default_rng(seed).permutation(n): the order shuffle(e)
            hist = net.fit(X, Y, epochs=1, batch_size=cfg.batch_size, lr=lr,
                           shuffle=True, seed=shuffle.seed + e)
            return float(hist.loss[-1])

        def params() -> Params:
            return [(np.array(W), np.array(b)) for W, b in zip(net.weights, net.biases)]

        return Trainer(epoch, params)

    return build


def _build_fastbp(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                  shuffle: Shuffle) -> Trainer:
    import fastbp
    from fastbp import _kernels

    t = _build_fastbp_like(fastbp.MLP)(cfg, X, Y, lr, init, shuffle)
    t.info["gemm_isa"] = _kernels.gemm_isa()
    return t


def _build_reference(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                     shuffle: Shuffle) -> Trainer:
    import fastbp.reference

    return _build_fastbp_like(fastbp.reference.MLP)(cfg, X, Y, lr, init, shuffle)


def _fastbp_threads(n: int) -> None:
    import fastbp

    fastbp.set_num_threads(n)


# -- the hand-written numpy peer ------------------------------------------

def _build_numpy(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                 shuffle: Shuffle) -> Trainer:
    from bench.numpy_mlp import NumpyMLP

    net = NumpyMLP(cfg.sizes, activation=cfg.activation, dtype=X.dtype)
    net.set_params(init)
    return Trainer(lambda e: net.fit_epoch(X, Y, cfg.batch_size, lr, shuffle(e)),
                   lambda: [(W.copy(), b.copy()) for W, b in zip(net.weights, net.biases)])


# -- PyTorch: eager, and torch.compile ------------------------------------

def _torch_model(cfg: Config, init: Params) -> Any:
    import torch
    from torch import nn

    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[cfg.activation]
    layers: list[nn.Module] = []
    for W, b in init:
        lin = nn.Linear(W.shape[1], W.shape[0], dtype=getattr(torch, W.dtype.name))
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, act()]
    return nn.Sequential(*layers[:-1])  # identity output


def _torch_params(model: Any) -> Callable[[], Params]:
    lins = [m for m in model if hasattr(m, "weight")]
    return lambda: [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
                    for m in lins]


def _build_torch(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                 shuffle: Shuffle) -> Trainer:
    import torch

    model = _torch_model(cfg, init)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    n, bs = len(X), cfg.batch_size

    def epoch(e: int) -> float:
        perm = torch.from_numpy(shuffle(e))
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

    return Trainer(epoch, _torch_params(model))


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass


def _torch_loss_fn(cfg: Config) -> Callable[..., Any]:
    """``loss(params, x, y)``: the network as a pure function of its
    parameters ``[W0, b0, W1, b1, ...]``, squared error over the batch."""
    import torch
    import torch.nn.functional as F

    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[cfg.activation]

    def loss(params: list[Any], x: Any, y: Any) -> Any:
        h, last = x, len(params) // 2 - 1
        for k in range(last + 1):
            h = F.linear(h, params[2 * k], params[2 * k + 1])
            if k < last:
                h = act(h)
        return 0.5 * torch.sum((h - y) ** 2) / x.shape[0]

    return loss


def _compile_counter() -> Callable[[], int]:
    """The number of frames Dynamo compiled so far (recompiles included)."""
    from torch._dynamo.utils import counters

    return lambda: int(sum(counters["stats"].get(k, 0) for k in ("unique_graphs",)))


def _build_torch_compile(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                         shuffle: Shuffle) -> Trainer:
    """The train step compiled: ``torch.compile(fullgraph=True)`` of one
    function doing the forward pass, the loss, the backward pass
    (``torch.func.grad_and_value``) and the in-place SGD update."""
    import torch

    params = [torch.from_numpy(a.copy()) for W, b in init for a in (W, b)]
    grad_and_loss = torch.func.grad_and_value(_torch_loss_fn(cfg))
    lr_ = float(lr)

    @torch.compile(fullgraph=True, dynamic=False)
    def step(params: list[Any], x: Any, y: Any) -> Any:
        grads, loss = grad_and_loss(params, x, y)
        for p, g in zip(params, grads):
            p.sub_(lr_ * g)
        return loss

    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    n, bs = len(X), cfg.batch_size
    graphs = _compile_counter()
    info: dict[str, Any] = {}

    def epoch(e: int) -> float:
        perm = torch.from_numpy(shuffle(e))
        total = torch.zeros((), dtype=Xt.dtype)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            total += step(params, Xt[idx], Yt[idx])
        info["graphs_compiled"] = graphs()
        return float(total) / -(-n // bs)

    def get() -> Params:
        return [(params[2 * k].numpy().copy(), params[2 * k + 1].numpy().copy())
                for k in range(len(params) // 2)]

    return Trainer(epoch, get, info)


def _torch_scan_body(cfg: Config, lr: float) -> Callable[..., Any]:
    """One SGD step as a pure function ``(params, (x, y)) -> (params, loss)``
    with the backward pass written out (the body of ``scan`` cannot call
    autograd)."""
    import torch

    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[cfg.activation]

    def act_grad(h: Any) -> Any:  # derivative in terms of h = act(z)
        if cfg.activation == "relu":
            return (h > 0).to(h.dtype)
        if cfg.activation == "sigmoid":
            return h * (1 - h)
        return 1 - h * h

    def body(params: list[Any], xy: tuple[Any, Any]) -> tuple[list[Any], Any]:
        x, y = xy
        n_layers = len(params) // 2
        hs = [x]
        for k in range(n_layers):
            z = torch.addmm(params[2 * k + 1], hs[-1], params[2 * k].t())
            hs.append(act(z) if k < n_layers - 1 else z)
        r = hs[-1] - y
        delta = r / x.shape[0]
        new = list(params)
        for k in range(n_layers - 1, -1, -1):
            gW, gb = delta.t() @ hs[k], delta.sum(0)
            if k > 0:
                delta = (delta @ params[2 * k]) * act_grad(hs[k])
            new[2 * k] = params[2 * k] - lr * gW
            new[2 * k + 1] = params[2 * k + 1] - lr * gb
        return new, 0.5 * torch.sum(r * r) / x.shape[0]

    return body


def _build_torch_compile_epoch(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float,
                               init: Params, shuffle: Shuffle) -> Trainer:
    """The whole epoch compiled: ``torch.compile(fullgraph=True)`` of a
    function that gathers the permuted rows, reshapes them to
    ``(n_batches, B, d)`` and runs ``torch._higher_order_ops.scan`` over the
    batches with one SGD step (backward written out) as its body."""
    import torch
    from torch._higher_order_ops.scan import scan

    body = _torch_scan_body(cfg, float(lr))
    n, bs = len(X), cfg.batch_size
    n_full = n // bs

    @torch.compile(fullgraph=True, dynamic=False)
    def run(params: list[Any], X: Any, Y: Any, perm: Any) -> tuple[list[Any], Any]:
        Xs, Ys = X[perm], Y[perm]
        xs = Xs[: n_full * bs].reshape(n_full, bs, X.shape[1])
        ys = Ys[: n_full * bs].reshape(n_full, bs, Y.shape[1])
        params, losses = scan(body, params, (xs, ys))
        total = losses.sum()
        if n_full * bs < n:  # the last, smaller batch
            params, loss = body(params, (Xs[n_full * bs:], Ys[n_full * bs:]))
            total = total + loss
        return params, total / -(-n // bs)

    state = {"params": [torch.from_numpy(a.copy()) for W, b in init for a in (W, b)]}
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    graphs = _compile_counter()
    info: dict[str, Any] = {}

    def epoch(e: int) -> float:
        state["params"], loss = run(state["params"], Xt, Yt, torch.from_numpy(shuffle(e)))
        info["graphs_compiled"] = graphs()
        return float(loss)

    def get() -> Params:
        p = state["params"]
        return [(p[2 * k].numpy().copy(), p[2 * k + 1].numpy().copy())
                for k in range(len(p) // 2)]

    return Trainer(epoch, get, info)


# -- JAX: jit of the whole epoch, lax.scan over the batches ---------------

def _build_jax(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
               shuffle: Shuffle) -> Trainer:
    """``jax.jit`` of one epoch: the permutation gather and the reshape to
    ``(n_batches, B, d)`` inside, ``lax.scan`` over the batches with the
    gradient (``jax.value_and_grad``) and the plain-SGD update in the body,
    the parameters donated."""
    import jax

    if X.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[cfg.activation]
    n, bs = len(X), cfg.batch_size
    n_full = n // bs
    lr_ = float(lr)

    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        h, last = x, len(params) - 1
        for k, (W, b) in enumerate(params):
            h = h @ W.T + b
            if k < last:
                h = act(h)
        r = h - y
        return 0.5 * jnp.sum(r * r) / x.shape[0]

    def step(params: Any, xy: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, *xy)
        return jax.tree_util.tree_map(lambda p, g: p - lr_ * g, params, grads), loss

    def run(params: Any, X: Any, Y: Any, perm: Any) -> Any:
        Xs, Ys = X[perm], Y[perm]
        xs = Xs[: n_full * bs].reshape(n_full, bs, X.shape[1])
        ys = Ys[: n_full * bs].reshape(n_full, bs, Y.shape[1])
        params, losses = jax.lax.scan(step, params, (xs, ys))
        total = losses.sum()
        if n_full * bs < n:  # the last, smaller batch
            params, loss = step(params, (Xs[n_full * bs:], Ys[n_full * bs:]))
            total = total + loss
        return params, total / -(-n // bs)

    run_jit = jax.jit(run, donate_argnums=0)
    state = {"params": [(jnp.asarray(W), jnp.asarray(b)) for W, b in init]}
    Xd, Yd = jnp.asarray(X), jnp.asarray(Y)
    info: dict[str, Any] = {"PJRT_NPROC": os.environ.get("PJRT_NPROC"),
                            "jax_devices": [str(d) for d in jax.devices()]}

    def epoch(e: int) -> float:
        perm = jnp.asarray(shuffle(e).astype(np.int32))
        state["params"], loss = run_jit(state["params"], Xd, Yd, perm)
        return float(loss)  # blocks until the epoch is done

    def get() -> Params:
        return [(np.array(W), np.array(b)) for W, b in state["params"]]

    return Trainer(epoch, get, info)


def _jax_threads(n: int) -> None:
    # XLA:CPU sizes its thread pools from PJRT_NPROC when the client is
    # created (first use), so this works after `import jax` but before any
    # array exists; the harness also sets it in the worker's environment.
    os.environ["PJRT_NPROC"] = str(n)


# -- scikit-learn ---------------------------------------------------------

class _OrderState(np.random.RandomState):
    """A RandomState whose ``shuffle`` writes a given order: scikit-learn's
    ``MLPRegressor`` draws each epoch's order with
    ``sklearn.utils.shuffle(np.arange(n), random_state=...)``, which calls
    ``random_state.shuffle(indices)``."""

    order: np.ndarray | None = None

    def shuffle(self, x: Any) -> None:  # type: ignore[override]
        if self.order is not None and len(x) == len(self.order):
            x[...] = self.order
        else:
            super().shuffle(x)


def _build_sklearn(cfg: Config, X: np.ndarray, Y: np.ndarray, lr: float, init: Params,
                   shuffle: Shuffle) -> Trainer:
    import warnings

    from sklearn.neural_network import MLPRegressor

    state = _OrderState(0)
    model = MLPRegressor(
        hidden_layer_sizes=cfg.sizes[1:-1],
        activation={"sigmoid": "logistic"}.get(cfg.activation, cfg.activation),
        solver="sgd", alpha=0.0, batch_size=cfg.batch_size, learning_rate="constant",
        learning_rate_init=lr, momentum=0.0, nesterovs_momentum=False, shuffle=True,
        random_state=state,
    )
    y = Y.ravel() if Y.shape[1] == 1 else Y
    with warnings.catch_warnings():  # one step on one row creates the model ...
        warnings.simplefilter("ignore")
        model.partial_fit(X[:1], y[:1])
    for k, (W, b) in enumerate(init):  # ... then the shared start, in place
        model.coefs_[k][...] = W.T     # (the optimizer holds these arrays)
        model.intercepts_[k][...] = b

    def epoch(e: int) -> float:
        state.order = shuffle(e)
        model.partial_fit(X, y)
        return float(model.loss_)

    return Trainer(epoch, lambda: [(c.T.copy(), i.copy())
                                   for c, i in zip(model.coefs_, model.intercepts_)])


_COMPILE_NOTE = "compiles for tens of seconds: not in --quick"

#: All peers, in the order of the output.  fastbp comes first.
PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("fastbp", ("fastbp",), _build_fastbp, _fastbp_threads,
             description="fastbp.MLP.fit, one epoch per call"),
        Peer("numpy", ("numpy",), _build_numpy,
             description="bench/numpy_mlp.py, matrix form, numpy's BLAS"),
        Peer("torch", ("torch",), _build_torch, _torch_threads,
             description="PyTorch eager: nn.Linear stack, optim.SGD"),
        Peer("torch_compile", ("torch",), _build_torch_compile, _torch_threads, quick=False,
             description="torch.compile(fullgraph) of one step: forward, loss, "
                         "torch.func.grad_and_value, in-place SGD"),
        Peer("torch_scan", ("torch",), _build_torch_compile_epoch, _torch_threads,
             quick=False,
             description="torch.compile(fullgraph) of the whole epoch: gather, reshape, "
                         "torch._higher_order_ops.scan of one SGD step (backward written out)"),
        Peer("jax", ("jax",), _build_jax, _jax_threads, quick=False,
             description="jax.jit of the whole epoch: gather, reshape, lax.scan of "
                         "value_and_grad + SGD, parameters donated; threads: PJRT_NPROC"),
        Peer("sklearn", ("sklearn.neural_network",), _build_sklearn,
             description="MLPRegressor(solver='sgd', momentum=0, alpha=0).partial_fit"),
        Peer("reference", ("fastbp.reference",), _build_reference, configs=("tiny",),
             description="fastbp.reference.MLP, pure Python"),
    )
}
