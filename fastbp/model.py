"""fastbp.MLP: the public model, a thin layer over the compiled kernels."""
from __future__ import annotations

import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _common as C
from ._kernels import Network
from ._threads import get_num_threads

# Rows per kernel call in predict() and loss(): bounds their scratch memory.
_CHUNK_ROWS = 4096

Grads = List[Tuple[np.ndarray, Optional[np.ndarray]]]


class ParamList(list):
    """A list of parameter arrays whose item assignment writes into the model.

    ``net.weights[k][...] = value`` and ``net.weights[k] = value`` both copy
    ``value`` into the model's storage (after checking its shape), so the
    list always holds views of the model's own parameters.
    """

    def __init__(self, name: str, arrays: Sequence[Optional[np.ndarray]]) -> None:
        super().__init__(arrays)
        self._name = name

    def __setitem__(self, k: Any, value: Any) -> None:
        if not isinstance(k, (int, np.integer)):
            raise TypeError(f"{self._name}: assign one array at a time")
        target = self[k]
        if target is None:
            raise ValueError(f"{self._name}[{k}] is None: the model has no biases")
        new = C._param(f"{self._name}[{k}]", value, target.shape, target.dtype.type)
        target[...] = new

    def __delitem__(self, k: Any) -> None:
        raise TypeError(f"{self._name}: the number of layers is fixed")

    def _fixed(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{self._name}: the number of layers is fixed")

    append = extend = insert = pop = remove = clear = sort = reverse = _fixed
    __iadd__ = __imul__ = _fixed  # type: ignore[assignment]


class MLP:
    """A dense multilayer perceptron trained by backpropagation and SGD.

    Parameters
    ----------
    layer_sizes : sequence of int
        Widths of the layers, input first: ``[784, 256, 10]`` is a network with
        784 inputs, one hidden layer of 256 units and 10 outputs.
    activation : {"relu", "sigmoid", "tanh", "identity"}
        Activation of every hidden layer.
    output : {"softmax", "identity", "sigmoid"}
        Activation of the output layer.
    loss : {"cross_entropy", "squared_error", "binary_cross_entropy"}
        Per-sample loss: ``squared_error`` is ½ Σ_j (ŷ_j − y_j)²;
        ``binary_cross_entropy`` (needs ``output="sigmoid"``) is Σ_j of the BCE of
        ŷ_j = σ(z_j); ``cross_entropy`` (needs ``output="softmax"``) is
        −Σ_j y_j log softmax(z)_j, i.e. −log softmax(z)[label] for labels.
        Both cross entropies are computed from the logits z, in a numerically
        stable form.
    bias : bool
        Whether each layer has a bias vector.
    dtype : {"float32", "float64"}
        Precision of the parameters and of all computation in the kernels.
    seed : int or None
        Seeds the initialisation: He normal N(0, 2/n_in) for layers followed by
        a ReLU, Xavier uniform U(±sqrt(6/(n_in+n_out))) for all others, zero
        biases (see :func:`fastbp._common.init_params`).
    weights, biases : sequence of array_like, optional
        Explicit initial parameters, ``weights[k]`` of shape (n_out, n_in) and
        ``biases[k]`` of shape (n_out,); they are copied.

    Attributes
    ----------
    weights : list of ndarray
        ``weights[k]`` has shape (n_out, n_in), as W in z = W h + b.  The arrays
        are views of the model's parameters: writes go into the model.
    biases : list of ndarray or None
        ``biases[k]`` has shape (n_out,), or is None when ``bias=False``.
    layer_sizes : tuple of int
    n_layers : int
        Number of weight layers (``len(layer_sizes) - 1``).

    Notes
    -----
    All parameters live in one contiguous vector; the kernels update it in
    place.  Calls on one model from several Python threads are serialised by
    a lock; the kernels release the GIL, so different models train in
    parallel.

    Examples
    --------
    >>> import numpy as np, fastbp
    >>> X = np.random.default_rng(0).normal(size=(256, 4))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> net = fastbp.MLP([4, 16, 2], seed=0)
    >>> hist = net.fit(X, y, epochs=20, batch_size=16, lr=0.1, seed=0)
    >>> hist.loss[-1] < hist.loss[0]
    True
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        activation: str = "relu",
        output: str = "softmax",
        loss: str = "cross_entropy",
        bias: bool = True,
        dtype: Any = "float32",
        seed: Optional[int] = 0,
        weights: Optional[Sequence[Any]] = None,
        biases: Optional[Sequence[Any]] = None,
    ) -> None:
        sizes, np_dtype = C.check_config(layer_sizes, activation, output, loss, dtype)
        self.layer_sizes: Tuple[int, ...] = sizes
        self.activation = activation
        self.output = output
        self.loss_name = loss
        self.bias = bool(bias)
        self.dtype = np.dtype(np_dtype)
        self.seed = seed
        self.n_layers = len(sizes) - 1
        W0, b0 = C.check_params(
            sizes, self.bias, np_dtype, weights, biases,
            C.init_params(sizes, activation, self.bias, np_dtype, seed),
        )
        self._net = Network(
            sizes, C.ACTIVATIONS[activation], C.OUTPUTS[output], C.LOSSES[loss], self.bias
        )
        self._theta = np.empty(self._net.n_params, dtype=np_dtype)
        self._weights = ParamList("weights", [self._view_w(k) for k in range(self.n_layers)])
        self._biases = ParamList(
            "biases", [self._view_b(k) if self.bias else None for k in range(self.n_layers)]
        )
        for k in range(self.n_layers):
            self._weights[k][...] = W0[k]
            if self.bias:
                self._biases[k][...] = b0[k]
        self._lock = threading.Lock()

    # -- parameters ---------------------------------------------------------

    def _view_w(self, k: int) -> np.ndarray:
        off, n_in, n_out = self._net.w_off[k], self.layer_sizes[k], self.layer_sizes[k + 1]
        return self._theta[off : off + n_out * n_in].reshape(n_out, n_in)

    def _view_b(self, k: int) -> np.ndarray:
        off = self._net.b_off[k]
        return self._theta[off : off + self.layer_sizes[k + 1]]

    @property
    def weights(self) -> ParamList:
        """Weight matrices, ``weights[k]`` of shape (n_out, n_in); writes go into the model."""
        return self._weights

    @property
    def biases(self) -> ParamList:
        """Bias vectors, ``biases[k]`` of shape (n_out,), or None entries without bias."""
        return self._biases

    @property
    def n_params(self) -> int:
        """Total number of trainable parameters."""
        return int(self._net.n_params)

    def __repr__(self) -> str:
        return (
            f"MLP({list(self.layer_sizes)}, activation={self.activation!r}, "
            f"output={self.output!r}, loss={self.loss_name!r}, bias={self.bias}, "
            f"dtype={self.dtype.name!r})"
        )

    # -- checking -----------------------------------------------------------

    def _X(self, X: Any) -> np.ndarray:
        return C.check_X(X, self.layer_sizes[0], self.dtype.type)

    def _XY(self, X: Any, Y: Any) -> Tuple[np.ndarray, np.ndarray]:
        Xc = self._X(X)
        Yc = C.check_Y(Y, Xc.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype.type)
        return Xc, Yc

    # -- inference ----------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """Outputs of the network.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)

        Returns
        -------
        ndarray of shape (n_samples, n_out)
            The outputs after the output activation (probabilities for softmax).
        """
        Xc = self._X(X)
        out = np.empty((Xc.shape[0], self.layer_sizes[-1]), dtype=self.dtype)
        with self._lock:
            self._net.predict(self._theta, Xc, out, _CHUNK_ROWS, get_num_threads())
        return out

    def loss(self, X: Any, Y: Any) -> float:
        """Mean over the samples of the per-sample loss.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or (n_samples,)
            Targets; integer labels for ``cross_entropy``, or any 1-D target
            when the network has one output.

        Returns
        -------
        float
        """
        Xc, Yc = self._XY(X, Y)
        with self._lock:
            return float(self._net.loss(self._theta, Xc, Yc, _CHUNK_ROWS, get_num_threads()))

    def gradients(self, X: Any, Y: Any) -> Tuple[float, Grads]:
        """The loss and its gradient with respect to every parameter.

        Parameters
        ----------
        X, Y : array_like
            One batch, as for :meth:`loss`.

        Returns
        -------
        loss : float
            Mean loss over the batch.
        grads : list of (ndarray, ndarray or None)
            ``grads[k] == (dW_k, db_k)``, the gradients of the mean loss, shaped
            like ``weights[k]`` and ``biases[k]``; ``db_k`` is None without bias.
        """
        Xc, Yc = self._XY(X, Y)
        g = np.empty_like(self._theta)
        with self._lock:
            loss = self._net.gradients(self._theta, Xc, Yc, g, get_num_threads())
        grads: Grads = []
        for k in range(self.n_layers):
            n_in, n_out = self.layer_sizes[k], self.layer_sizes[k + 1]
            w0 = self._net.w_off[k]
            dW = g[w0 : w0 + n_out * n_in].reshape(n_out, n_in)
            db = g[self._net.b_off[k] : self._net.b_off[k] + n_out] if self.bias else None
            grads.append((dW, db))
        return float(loss), grads

    # -- training -----------------------------------------------------------

    def step(self, X: Any, Y: Any, lr: float) -> float:
        """One in-place SGD update on this batch: θ ← θ − lr ∇ℓ(θ).

        Parameters
        ----------
        X, Y : array_like
            One batch, as for :meth:`loss`.
        lr : float
            Learning rate, positive and finite.

        Returns
        -------
        float
            The batch's mean loss before the update.

        Raises
        ------
        FloatingPointError
            When the loss is NaN or Inf; the model is then left unchanged.
        """
        Xc, Yc = self._XY(X, Y)
        lr = C.check_lr(lr)
        n = Xc.shape[0]
        empty = np.empty(0, dtype=self.dtype)
        ws = np.empty(self._net.workspace_size(n), dtype=self.dtype)
        with self._lock:
            loss_sum, _, status = self._net.fit_epoch(
                self._theta, Xc, Yc, None, n, lr, 0.0, False, 0.0,
                empty, empty, ws, get_num_threads(),
            )
        if status:
            raise FloatingPointError(
                "the loss is not finite on this batch; the model was not updated"
            )
        return float(loss_sum / n)

    def workspace_nbytes(self, batch_size: int) -> int:
        """Bytes of scratch a fit with this batch size allocates (once, per call).

        The workspace holds one batch of activations per layer, the outputs, two
        delta buffers, the gathered targets and per-sample losses.
        """
        return int(self._net.workspace_size(int(batch_size))) * self.dtype.itemsize

    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 0.01,
        shuffle: bool = True,
        seed: Optional[int] = None,
    ) -> C.History:
        """Train by mini-batch SGD.

        Each epoch visits the samples in batches of ``batch_size`` (after a
        fresh permutation drawn from ``numpy.random.default_rng(seed)`` when
        ``shuffle``), and applies one SGD step per batch; the last, smaller
        batch takes the mean over its own rows.  So ``fit(shuffle=False)``
        equals :meth:`step` on consecutive slices, and the same seed gives
        bit-identical weights.  Every epoch runs in compiled code without
        the GIL, with one workspace allocated per call.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like
            Targets, as for :meth:`loss`.
        epochs : int
            Number of passes over the data (0 trains nothing).
        batch_size : int
            Samples per SGD step.
        lr : float
            Learning rate.
        shuffle : bool
            Shuffle the samples afresh before each epoch.
        seed : int or None
            Seed of the shuffling.

        Returns
        -------
        History
            ``history.loss[e]`` is the mean training loss of epoch e, each
            sample's loss taken before its batch's update.

        Raises
        ------
        FloatingPointError
            When the loss becomes NaN or Inf.  The model is left at the last
            step whose loss was finite.
        """
        Xc, Yc = self._XY(X, Y)
        epochs, batch_size = C.check_fit_args(epochs, batch_size)
        lr = C.check_lr(lr)
        n = Xc.shape[0]
        rng = np.random.default_rng(seed)
        ws = np.empty(self._net.workspace_size(min(batch_size, n)), dtype=self.dtype)
        empty = np.empty(0, dtype=self.dtype)
        hist = C.History()
        with self._lock:
            for epoch in range(epochs):
                order = rng.permutation(n).astype(np.int64) if shuffle else None
                start = self._theta.copy()
                loss_sum, n_done, status = self._net.fit_epoch(
                    self._theta, Xc, Yc, order, batch_size, lr, 0.0, False, 0.0,
                    empty, empty, ws, get_num_threads(),
                )
                if status:
                    self._restore_last_good(start, Xc, Yc, order, batch_size, lr, n_done, ws)
                    raise FloatingPointError(
                        f"the training loss became NaN or Inf at epoch {epoch + 1}, batch "
                        f"{n_done // batch_size + 1}; the weights are those of the last step "
                        f"with a finite loss. Try a smaller learning rate (lr={lr:g})."
                    )
                hist.loss.append(loss_sum / n)
        return hist

    def _restore_last_good(
        self, start: np.ndarray, X: np.ndarray, Y: np.ndarray, order: Optional[np.ndarray],
        batch_size: int, lr: float, n_done: int, ws: np.ndarray,
    ) -> None:
        """Rewind the epoch to its start and replay it up to the last good step.

        The failed batch's loss was measured at the weights left by the step
        before it, so those weights are already suspect: the last good
        weights are the ones the step before that one left.  Replaying is
        exact: the kernels are deterministic.
        """
        self._theta[...] = start
        good_steps = max(0, n_done // batch_size - 1) if n_done else 0
        if good_steps:
            empty = np.empty(0, dtype=self.dtype)
            self._net.fit_epoch(
                self._theta, X, Y, order, batch_size, lr, 0.0, False, 0.0,
                empty, empty, ws, get_num_threads(), good_steps,
            )
