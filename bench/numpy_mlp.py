"""A hand-written matrix-form MLP in numpy, the baseline peer.

Samples are rows: a batch ``X`` has shape ``(batch, n_in)``.  Weights follow
fastbp's layout, ``W`` of shape ``(n_out, n_in)`` with ``z = W h + b`` per
sample, which for a batch of rows is ``Z = H @ W.T + b``.  The output layer
is the identity and the loss is the squared error
``0.5 * sum((out - Y)**2) / batch``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Array = np.ndarray


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_grad(h: Array) -> Array:
    return h * (1.0 - h)


def _relu(z: Array) -> Array:
    return np.maximum(z, 0)


def _relu_grad(h: Array) -> Array:
    return (h > 0).astype(h.dtype)


def _tanh_grad(h: Array) -> Array:
    return 1.0 - h * h


#: activation name -> (function of z, derivative expressed in h = f(z))
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "relu": (_relu, _relu_grad),
    "tanh": (np.tanh, _tanh_grad),
}


class NumpyMLP:
    """Dense MLP trained by backprop and plain SGD, in matrix form.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first.
    activation : {"sigmoid", "relu", "tanh"}
        Hidden-layer activation; the output layer is the identity.
    dtype : str or numpy dtype
        Floating-point type of the weights and of the computation.
    seed : int
        Seed of the weight initialisation (scaled normal, ``1/sqrt(n_in)``).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        dtype: str | np.dtype = "float32",
        seed: int = 0,
    ) -> None:
        self.act, self.act_grad = ACTIVATIONS[activation]
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.weights = [
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(self.dtype)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        ]
        self.biases = [np.zeros(n_out, dtype=self.dtype) for n_out in sizes[1:]]

    def set_params(self, params: Sequence[tuple[Array, Array]]) -> None:
        """Copy ``[(W, b), ...]`` (``W`` of shape ``(n_out, n_in)``) into the
        model, converted to its dtype."""
        if len(params) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} layers, got {len(params)}")
        for k, (W, b) in enumerate(params):
            if np.shape(W) != self.weights[k].shape or np.shape(b) != self.biases[k].shape:
                raise ValueError(f"layer {k}: shapes {np.shape(W)}, {np.shape(b)} instead of "
                                 f"{self.weights[k].shape}, {self.biases[k].shape}")
            self.weights[k][...] = W
            self.biases[k][...] = b

    def forward(self, X: Array) -> list[Array]:
        """Activations of every layer, input first, output (identity) last."""
        hs = [X]
        last = len(self.weights) - 1
        for k, (W, b) in enumerate(zip(self.weights, self.biases)):
            z = hs[-1] @ W.T + b
            hs.append(z if k == last else self.act(z))
        return hs

    def predict(self, X: Array) -> Array:
        """Network output for the rows of ``X``."""
        return self.forward(X)[-1]

    def loss(self, X: Array, Y: Array) -> float:
        """Squared error ``0.5 * sum((out - Y)**2) / batch``."""
        r = self.predict(X) - Y
        return 0.5 * float(np.sum(r * r)) / len(X)

    def gradients(self, X: Array, Y: Array) -> tuple[float, list[Array], list[Array]]:
        """Loss and its gradients with respect to the weights and biases.

        Returns
        -------
        loss : float
        grad_weights : list of ndarray
            Same shapes as ``weights``.
        grad_biases : list of ndarray
            Same shapes as ``biases``.
        """
        hs = self.forward(X)
        r = hs[-1] - Y
        loss = 0.5 * float(np.sum(r * r)) / len(X)
        delta = r / self.dtype.type(len(X))  # dL/dz of the output layer
        gws: list[Array] = []
        gbs: list[Array] = []
        for k in range(len(self.weights) - 1, -1, -1):
            gws.append(delta.T @ hs[k])
            gbs.append(delta.sum(axis=0))
            if k > 0:
                delta = (delta @ self.weights[k]) * self.act_grad(hs[k])
        return loss, gws[::-1], gbs[::-1]

    def step(self, X: Array, Y: Array, lr: float) -> float:
        """One SGD step on the batch ``(X, Y)``; returns the loss before it."""
        loss, gws, gbs = self.gradients(X, Y)
        lr_ = self.dtype.type(lr)
        for W, b, gW, gb in zip(self.weights, self.biases, gws, gbs):
            W -= lr_ * gW
            b -= lr_ * gb
        return loss

    def fit_epoch(
        self, X: Array, Y: Array, batch_size: int, lr: float,
        order: np.random.Generator | Array,
    ) -> float:
        """One epoch of shuffled mini-batch SGD; returns the mean batch loss.

        ``order`` is the permutation of the rows to visit, or a generator
        that draws it (``order.permutation(len(X))``).  Each batch is
        gathered and converted to the model's dtype (so a float64 model
        trains on float32 data without a float64 copy of the data set); the
        last, smaller batch takes the mean over its own rows.
        """
        perm = order.permutation(len(X)) if isinstance(order, np.random.Generator) \
            else np.asarray(order)
        losses = []
        for i in range(0, len(X), batch_size):
            idx = perm[i : i + batch_size]  # gather each batch: no copy of the data set
            x, y = X[idx], Y[idx]
            if x.dtype != self.dtype:
                x, y = x.astype(self.dtype), y.astype(self.dtype)
            losses.append(self.step(x, y, lr))
        return float(np.mean(losses))
