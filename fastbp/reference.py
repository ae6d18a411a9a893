"""Pure-Python reference implementation of the MLP: the oracle for the fast model.

Everything here is written the way the lecture notes write backpropagation:

1. a *forward pass* that stores the value of every node (pre-activation ``z``
   and activation ``a`` of every unit of every layer);
2. a *backward pass* that starts from dl/dz of the output units and walks the
   layers from the output down, using the multivariate chain rule: a hidden
   unit's upstream gradient is the sum over the units it feeds
   (dl/dh_j = sum_i dl/dz_i * W[i][j], the "copy gate adds gradients" rule),
   times its local derivative, taken from its stored output;
3. the *parameter gradients* from those node gradients:
   dl/dW[i][j] = dl/dz_i * h_j and dl/db_i = dl/dz_i.

It computes with Python floats (IEEE doubles) and the :mod:`math` module, one
sample at a time, with plain lists; numpy is used only to convert inputs and
to hand back results rounded to the model dtype.  It is slow on purpose: every
line should be obviously right.  Validation and initialisation go through
:mod:`fastbp._common`, exactly as in the fast model, so both accept the same
inputs and start from the same parameters.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _common

Vector = List[float]
Matrix = List[List[float]]  # row i holds the weights into unit i: z_i = sum_j W[i][j] h_j + b_i


# --------------------------------------------------------------------------
# Scalar activations and their derivatives
# --------------------------------------------------------------------------

def sigmoid(z: float) -> float:
    """1 / (1 + e^-z), never evaluating exp of a large positive number."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # z < 0, so e is in (0, 1): no overflow
    return e / (1.0 + e)


def activate(name: str, z: float) -> float:
    """Apply the element-wise activation ``name`` to one pre-activation."""
    if name == "identity":
        return z
    if name == "sigmoid":
        return sigmoid(z)
    if name == "relu":
        return z if z > 0.0 else 0.0
    if name == "tanh":
        return math.tanh(z)
    raise ValueError(f"unknown activation {name!r}")


def derivative_from_output(name: str, a: float) -> float:
    """da/dz of the activation ``name``, expressed through its output a.

    sigmoid' = a (1 - a), relu' = [a > 0], tanh' = 1 - a^2, identity' = 1.
    """
    if name == "identity":
        return 1.0
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "relu":
        return 1.0 if a > 0.0 else 0.0
    if name == "tanh":
        return 1.0 - a * a
    raise ValueError(f"unknown activation {name!r}")


def softmax(z: Vector) -> Vector:
    """exp(z_j) / sum_k exp(z_k), with the max subtracted first (no overflow)."""
    m = max(z)
    e = [math.exp(zj - m) for zj in z]
    s = sum(e)
    return [ej / s for ej in e]


def logsumexp(z: Vector) -> float:
    """log(sum_k exp(z_k)), computed stably as m + log(sum_k exp(z_k - m))."""
    m = max(z)
    return m + math.log(sum(math.exp(zj - m) for zj in z))


def output_activation(name: str, z: Vector) -> Vector:
    """The output layer's activation, applied to the whole logit vector."""
    if name == "softmax":
        return softmax(z)
    return [activate(name, zj) for zj in z]


# --------------------------------------------------------------------------
# Per-sample losses and dl/dz of the output logits
# --------------------------------------------------------------------------

def sample_loss(loss: str, z: Vector, yhat: Vector, y: Vector) -> float:
    """The loss of one sample, from its logits z, outputs yhat and target y."""
    if loss == "squared_error":
        return 0.5 * sum((yh - t) * (yh - t) for yh, t in zip(yhat, y))  # inf, not OverflowError
    if loss == "binary_cross_entropy":
        # -[y log s(z) + (1-y) log(1-s(z))] rewritten so it never takes log(0)
        return sum(max(zj, 0.0) - zj * t + math.log1p(math.exp(-abs(zj))) for zj, t in zip(z, y))
    if loss == "cross_entropy":
        # -sum_j y_j log softmax(z)_j = sum_j y_j (logsumexp(z) - z_j)
        lse = logsumexp(z)
        return sum(t * (lse - zj) for zj, t in zip(z, y))
    raise ValueError(f"unknown loss {loss!r}")


def output_delta(loss: str, output: str, z: Vector, yhat: Vector, y: Vector) -> Vector:
    """dl/dz_j for every output logit z_j of one sample (the start of backprop)."""
    if loss == "binary_cross_entropy":
        # sigmoid output and BCE together: the 1/(a(1-a)) and a(1-a) cancel
        return [yh - t for yh, t in zip(yhat, y)]
    if loss == "cross_entropy":
        # softmax output and CE together: dl/dz_j = (sum_k y_k) softmax_j - y_j
        total = sum(y)
        return [total * yh - t for yh, t in zip(yhat, y)]
    # squared error: dl/dyhat_j = yhat_j - y_j, then through the output activation
    g = [yh - t for yh, t in zip(yhat, y)]
    if output == "softmax":
        # full Jacobian: dyhat_k/dz_j = s_k ([k == j] - s_j), so
        # dl/dz_j = s_j (g_j - sum_k g_k s_k)
        gs = sum(gk * sk for gk, sk in zip(g, yhat))
        return [sj * (gj - gs) for gj, sj in zip(g, yhat)]
    return [gj * derivative_from_output(output, yh) for gj, yh in zip(g, yhat)]


# --------------------------------------------------------------------------
# One dense layer, forward and backward
# --------------------------------------------------------------------------

def affine(W: Matrix, b: Optional[Vector], h: Vector) -> Vector:
    """z = W h + b for one sample."""
    z = [sum(wij * hj for wij, hj in zip(row, h)) for row in W]
    if b is not None:
        z = [zi + bi for zi, bi in zip(z, b)]
    return z


def backprop_to_input(W: Matrix, dz: Vector) -> Vector:
    """dl/dh_j = sum_i dl/dz_i * W[i][j]: each h_j feeds every z_i of the layer."""
    n_in = len(W[0])
    return [sum(dz[i] * W[i][j] for i in range(len(W))) for j in range(n_in)]


def accumulate_param_grads(dW: Matrix, db: Optional[Vector], dz: Vector, h: Vector) -> None:
    """Add one sample's dl/dW[i][j] = dl/dz_i h_j and dl/db_i = dl/dz_i."""
    for i, dzi in enumerate(dz):
        row = dW[i]
        for j, hj in enumerate(h):
            row[j] += dzi * hj
        if db is not None:
            db[i] += dzi


# --------------------------------------------------------------------------
# The optimizer: torch.optim.SGD (momentum, Nesterov, weight decay) and
# scikit-learn's L2 penalty, one parameter at a time
# --------------------------------------------------------------------------

def sgd_parameter(theta: float, grad: float, velocity: Optional[float], lr: float,
                  momentum: float, nesterov: bool, decay: float) -> Tuple[float, Optional[float]]:
    """One torch.optim.SGD step (dampening 0) of one parameter; (theta, velocity) after it.

    g = grad + decay * theta; with momentum, v = momentum * v + g and the step
    direction is g + momentum * v (Nesterov) or v; theta -= lr * direction.
    ``velocity`` is None without momentum (torch keeps no buffer then).
    """
    g = grad + decay * theta
    if momentum != 0.0:
        velocity = momentum * velocity + g
        g = g + momentum * velocity if nesterov else velocity
    return theta - lr * g, velocity


def l2_gradient(W: Matrix, l2: float, m: int) -> Matrix:
    """d/dW of scikit-learn's penalty l2 / (2 m) * sum W^2 for a batch of m rows: (l2 / m) W."""
    return [[l2 / m * w for w in row] for row in W]


def l2_penalty(Ws: List[Matrix], l2: float) -> float:
    """l2 / 2 * sum of every weight squared (biases are not penalised).

    A batch of m rows minimises mean loss + l2 / (2 m) * sum W^2; weighted by m,
    its objective is m * mean loss + this.
    """
    return 0.5 * l2 * sum(w * w for W in Ws for row in W for w in row)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

class MLP:
    """A dense multilayer perceptron trained by backpropagation and SGD (reference).

    Parameters
    ----------
    layer_sizes : sequence of int
        Units per layer, input size first, output size last (at least two).
    activation : {"relu", "sigmoid", "tanh", "identity"}
        Activation of every hidden layer.
    output : {"softmax", "sigmoid", "identity"}
        Activation applied after the last layer.
    loss : {"cross_entropy", "binary_cross_entropy", "squared_error"}
        Per-sample loss; ``cross_entropy`` needs ``output="softmax"`` and
        ``binary_cross_entropy`` needs ``output="sigmoid"``.
    bias : bool
        Whether the layers have biases.
    dtype : {"float32", "float64"}
        Storage type of the parameters and of every returned array.
    seed : int or None
        Seed of the initialisation (see :func:`fastbp._common.init_params`).
    weights, biases : sequence of array_like, optional
        Explicit initial parameters, ``weights[k]`` of shape (n_out, n_in) and
        ``biases[k]`` of shape (n_out,); they are copied.

    Attributes
    ----------
    layer_sizes : tuple of int
    activation, output, loss_name : str
    bias : bool
    dtype : numpy.dtype
    n_layers : int
        Number of weight layers, ``len(layer_sizes) - 1``.
    weights : list of numpy.ndarray
        The stored weight arrays, ``weights[k]`` of shape (n_out, n_in) as W in
        ``z = W h + b``; writing into them changes the model.
    biases : list of numpy.ndarray or None
        The stored bias arrays of shape (n_out,), or ``None`` entries when
        ``bias=False``.

    Notes
    -----
    Every call converts the parameters and inputs to Python floats, computes
    in double precision and rounds its results to the model dtype.
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
        sizes, dt = _common.check_config(layer_sizes, activation, output, loss, dtype)
        bias = bool(bias)
        default = _common.init_params(sizes, activation, bias, dt, seed)
        W, b = _common.check_params(sizes, bias, dt, weights, biases, default)
        self.layer_sizes: Tuple[int, ...] = sizes
        self.activation: str = activation
        self.output: str = output
        self.loss_name: str = loss
        self.bias: bool = bias
        self.dtype: np.dtype = np.dtype(dt)
        self.n_layers: int = len(sizes) - 1
        self.weights: List[np.ndarray] = W
        self.biases: List[Optional[np.ndarray]] = b
        # The momentum velocity, in the model dtype: one Matrix-shaped array per
        # weight and bias, created (zero) by the first fit with momentum.
        self._velocity: Optional[List[np.ndarray]] = None

    def __repr__(self) -> str:
        return (
            f"reference.MLP({list(self.layer_sizes)}, activation={self.activation!r}, "
            f"output={self.output!r}, loss={self.loss_name!r}, bias={self.bias}, "
            f"dtype={self.dtype.name!r})"
        )

    # ---- conversions between numpy and Python floats -------------------

    def _params_as_floats(self) -> Tuple[List[Matrix], List[Optional[Vector]]]:
        """The current parameters as nested lists of Python floats."""
        Ws = [W.tolist() for W in self.weights]
        bs = [b.tolist() if b is not None else None for b in self.biases]
        return Ws, bs

    def _inputs(self, X: Any) -> Matrix:
        return _common.check_X(X, self.layer_sizes[0], self.dtype.type).tolist()

    def _inputs_and_targets(self, X: Any, Y: Any) -> Tuple[np.ndarray, np.ndarray]:
        Xc = _common.check_X(X, self.layer_sizes[0], self.dtype.type)
        Yc = _common.check_Y(Y, Xc.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype.type)
        return Xc, Yc

    def _round(self, value: float) -> float:
        """A Python float rounded to the model dtype."""
        return float(self.dtype.type(value))

    # ---- forward pass ----------------------------------------------------

    def _forward(self, Ws: List[Matrix], bs: List[Optional[Vector]], x: Vector):
        """Forward pass of one sample, storing every node's value.

        Returns ``(hs, z_out, yhat)``: ``hs[k]`` is the input of layer k
        (``hs[0] = x``, ``hs[k]`` for k >= 1 the stored hidden activations),
        ``z_out`` the output logits and ``yhat`` the outputs.
        """
        hs = [x]
        for k in range(self.n_layers - 1):
            z = affine(Ws[k], bs[k], hs[-1])
            hs.append([activate(self.activation, zi) for zi in z])
        z_out = affine(Ws[-1], bs[-1], hs[-1])
        yhat = output_activation(self.output, z_out)
        return hs, z_out, yhat

    # ---- backward pass ---------------------------------------------------

    def _backward(self, Ws: List[Matrix], hs: List[Vector], dz: Vector, dWs, dbs) -> None:
        """Backward pass of one sample, adding its parameter gradients to dWs, dbs.

        ``dz`` is dl/dz of the output logits; walking from the output layer
        down, each layer's dl/dz gives its parameter gradients, and
        dl/dz of the layer below is (W^T dl/dz) times the local derivative of
        the hidden activation, taken from the stored outputs.
        """
        for k in range(self.n_layers - 1, -1, -1):
            accumulate_param_grads(dWs[k], dbs[k], dz, hs[k])
            if k == 0:
                break  # no gradient needed for the inputs
            dh = backprop_to_input(Ws[k], dz)
            dz = [dhj * derivative_from_output(self.activation, a) for dhj, a in zip(dh, hs[k])]

    def _loss_and_grads(self, X: Matrix, Y: Matrix):
        """Mean loss and mean-loss gradients over the rows of X, in doubles."""
        Ws, bs = self._params_as_floats()
        dWs = [[[0.0] * len(W[0]) for _ in W] for W in Ws]
        dbs = [[0.0] * len(W) if b is not None else None for W, b in zip(Ws, bs)]
        total = 0.0
        for x, y in zip(X, Y):
            hs, z_out, yhat = self._forward(Ws, bs, x)
            total += sample_loss(self.loss_name, z_out, yhat, y)
            dz = output_delta(self.loss_name, self.output, z_out, yhat, y)
            self._backward(Ws, hs, dz, dWs, dbs)
        n = len(X)
        dWs = [[[g / n for g in row] for row in dW] for dW in dWs]
        dbs = [[g / n for g in db] if db is not None else None for db in dbs]
        return total / n, Ws, bs, dWs, dbs

    def _sgd_update(self, X: Matrix, Y: Matrix, lr: float) -> float:
        """One plain SGD step on a batch of already validated rows; the loss before it."""
        return self._optimizer_step(X, Y, lr, _PLAIN_SGD)[0]

    def _optimizer_step(self, X: Matrix, Y: Matrix, lr: float, opt: dict) -> Tuple[float, float]:
        """One optimizer step on a batch; (mean loss, l2 penalty) before it.

        ``opt`` holds torch.optim.SGD's momentum, nesterov and weight_decay
        (decay on the biases too) and scikit-learn's ``l2``: the batch of m
        rows minimises mean loss + l2 / (2 m) * sum W^2, so the weights'
        gradient gains (l2 / m) W.  The penalty returned is l2 / 2 * sum W^2.
        """
        loss, Ws, bs, dWs, dbs = self._loss_and_grads(X, Y)
        if not math.isfinite(loss):
            # as the fast model: never write a diverged step into the parameters
            raise FloatingPointError("the loss is not finite on this batch; the model was not updated")
        m = len(X)
        penalty = l2_penalty(Ws, opt["l2"])
        if opt["l2"] != 0.0:
            dWs = [[[g + p for g, p in zip(grow, prow)] for grow, prow in zip(dW, l2_gradient(W, opt["l2"], m))]
                   for dW, W in zip(dWs, Ws)]
        params = [(Ws[k], dWs[k], self.weights[k]) for k in range(self.n_layers)]
        params += [(bs[k], dbs[k], self.biases[k]) for k in range(self.n_layers) if bs[k] is not None]
        momentum = opt["momentum"]
        if momentum != 0.0 and self._velocity is None:
            self._velocity = [np.zeros_like(stored) for _, _, stored in params]
        for i, (theta, grad, stored) in enumerate(params):
            theta, grad = np.asarray(theta).ravel().tolist(), np.asarray(grad).ravel().tolist()
            vel = self._velocity[i].ravel().tolist() if momentum != 0.0 else [None] * len(theta)
            new = [sgd_parameter(t, g, v, lr, momentum, opt["nesterov"], opt["weight_decay"])
                   for t, g, v in zip(theta, grad, vel)]
            stored[...] = np.array([t for t, _ in new], dtype=self.dtype).reshape(stored.shape)
            if momentum != 0.0:
                self._velocity[i][...] = np.array([v for _, v in new], dtype=self.dtype).reshape(stored.shape)
        return loss, penalty

    # ---- optimizer state -------------------------------------------------

    def optimizer_state(self) -> Dict[str, np.ndarray]:
        """A copy of the optimizer's state, laid out as the fast model's.

        Returns
        -------
        dict
            ``{"velocity": flat array of n_params}`` (W_0, b_0, W_1, b_1, ...
            each row-major, as ``fastbp.MLP.optimizer_state``) once a fit with
            momentum has run; empty otherwise.
        """
        if self._velocity is None:
            return {}
        return {"velocity": np.concatenate([v.ravel() for v in self._in_theta_order(self._velocity)])}

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` returned (or the fast model's).

        Parameters
        ----------
        state : dict
            ``{}`` or ``{"velocity": array of n_params}``.
        """
        unknown = set(state) - {"velocity"}
        if unknown:
            raise ValueError(f"unknown optimizer state keys {sorted(unknown)}")
        if state.get("velocity") is None:
            self._velocity = None
            return
        flat = _common._param("velocity", state["velocity"], (self.n_params,), self.dtype.type)
        parts, off = [], 0
        for arr in self._in_theta_order([*self.weights, *(b for b in self.biases if b is not None)]):
            parts.append(flat[off:off + arr.size].reshape(arr.shape).copy())
            off += arr.size
        # back from theta order (W_0, b_0, W_1, ...) to ours (all W, then all b)
        n = self.n_layers
        order = [2 * k for k in range(n)] + [2 * k + 1 for k in range(n)] if self.bias else list(range(n))
        self._velocity = [parts[i] for i in order]

    def reset_optimizer(self) -> None:
        """Forget the momentum velocity: the next fit starts from rest."""
        self._velocity = None

    @property
    def n_params(self) -> int:
        """Number of parameters (weights and biases)."""
        return sum(W.size for W in self.weights) + sum(b.size for b in self.biases if b is not None)

    def _in_theta_order(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        """Per-parameter arrays (all weights, then all biases) in the fast
        model's flat order: W_0, b_0, W_1, b_1, ..."""
        n = self.n_layers
        if not self.bias:
            return list(arrays[:n])
        return [a for k in range(n) for a in (arrays[k], arrays[n + k])]

    # ---- public API ------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """Network outputs (after the output activation).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_out), of the model dtype
        """
        rows = self._inputs(X)
        Ws, bs = self._params_as_floats()
        out = [self._forward(Ws, bs, x)[2] for x in rows]
        return np.array(out, dtype=self.dtype).reshape(len(rows), self.layer_sizes[-1])

    def loss(self, X: Any, Y: Any) -> float:
        """Mean over the samples of the per-sample loss.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels of shape
            (n_samples,) for ``cross_entropy``

        Returns
        -------
        float
            The mean loss, rounded to the model dtype.
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        Ws, bs = self._params_as_floats()
        total = 0.0
        for x, y in zip(Xc.tolist(), Yc.tolist()):
            _, z_out, yhat = self._forward(Ws, bs, x)
            total += sample_loss(self.loss_name, z_out, yhat, y)
        return self._round(total / Xc.shape[0])

    def gradients(
        self, X: Any, Y: Any
    ) -> Tuple[float, List[Tuple[np.ndarray, Optional[np.ndarray]]]]:
        """Mean loss and its gradients with respect to every parameter.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels

        Returns
        -------
        loss : float
            The mean loss, rounded to the model dtype.
        grads : list of (dW, db)
            ``grads[k] = (dW_k, db_k)`` of the mean loss, arrays of the model
            dtype shaped like ``weights[k]`` and ``biases[k]``; ``db_k`` is
            ``None`` when ``bias=False``.
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        loss, _, _, dWs, dbs = self._loss_and_grads(Xc.tolist(), Yc.tolist())
        grads = []
        for k in range(self.n_layers):
            dW = np.array(dWs[k], dtype=self.dtype).reshape(self.weights[k].shape)
            db = np.array(dbs[k], dtype=self.dtype) if dbs[k] is not None else None
            grads.append((dW, db))
        return self._round(loss), grads

    def step(self, X: Any, Y: Any, lr: float) -> float:
        """One in-place SGD update on the batch (X, Y).

        ``W -= lr * dW`` and ``b -= lr * db`` with the gradients of the mean
        batch loss, computed in doubles and written back in the model dtype.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels
        lr : float
            Learning rate, positive and finite.

        Returns
        -------
        float
            The batch loss before the update, rounded to the model dtype.

        Raises
        ------
        FloatingPointError
            When the batch loss is NaN or Inf; the parameters are not changed.
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        lr = _common.check_lr(lr, self.dtype.type)
        return self._round(self._sgd_update(Xc.tolist(), Yc.tolist(), lr))

    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 0.01,
        shuffle: bool = True,
        seed: Optional[int] = None,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        l2: float = 0.0,
    ) -> _common.History:
        """Mini-batch SGD over the data for a number of epochs.

        Each epoch walks the samples (in the order of
        ``numpy.random.default_rng(seed).permutation`` when ``shuffle``, else
        in order) in consecutive batches of ``batch_size`` rows (the last may
        be smaller) and makes one optimizer step per batch (a :meth:`step`
        when momentum, weight_decay and l2 are 0).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels
        epochs : int, >= 0
        batch_size : int, >= 1
        lr : float
            Learning rate, positive and finite.
        shuffle : bool
            Reshuffle the samples at the start of every epoch.
        seed : int or None
            Seed of the shuffling generator (one generator for the whole fit).
        momentum, nesterov, weight_decay : float, bool, float
            ``torch.optim.SGD(params, lr, momentum, dampening=0, weight_decay,
            nesterov)``, as ``fastbp.MLP.fit``: per parameter ``g = grad +
            weight_decay * theta`` (biases included), ``v = momentum * v + g``,
            ``theta -= lr * (g + momentum * v if nesterov else v)``.  The
            velocity v persists across fits (:meth:`optimizer_state`,
            :meth:`reset_optimizer`).
        l2 : float
            scikit-learn's ``alpha`` (what its estimators pass to
            ``fastbp.model.Epochs``): a batch of m rows minimises mean loss +
            l2 / (2 m) * sum W^2, over the weights only.

        Returns
        -------
        fastbp._common.History
            ``loss[e]`` is the mean over epoch e's samples of the loss each
            had in its batch's forward pass, before that batch's update; with
            ``l2``, of the objective: (sum over batches of m * mean loss +
            l2 / 2 * sum W^2) / n_samples, scikit-learn's ``loss_``.

        Raises
        ------
        FloatingPointError
            When a batch loss is NaN or Inf; the model is left as it was before
            that batch (the compiled model rewinds one step further, to weights
            whose loss was finite: that is training policy, not math).
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        epochs, batch_size = _common.check_fit_args(epochs, batch_size)
        lr = _common.check_lr(lr, self.dtype.type)
        opt = _check_optimizer(momentum, nesterov, weight_decay, l2)
        rows_X, rows_Y = Xc.tolist(), Yc.tolist()
        n = len(rows_X)
        rng = np.random.default_rng(seed)
        hist = _common.History()
        for _ in range(epochs):
            order = rng.permutation(n).tolist() if shuffle else list(range(n))
            weighted = 0.0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch_loss, penalty = self._optimizer_step(
                    [rows_X[i] for i in idx], [rows_Y[i] for i in idx], lr, opt
                )
                weighted += self._round(batch_loss) * len(idx) + penalty
            hist.loss.append(self._round(weighted / n))
        return hist


_PLAIN_SGD = dict(momentum=0.0, nesterov=False, weight_decay=0.0, l2=0.0)


def _check_optimizer(momentum: Any, nesterov: Any, weight_decay: Any, l2: Any) -> dict:
    """The optimizer settings of :meth:`MLP.fit`, checked as ``fastbp.MLP.fit`` checks them."""
    if not isinstance(nesterov, (bool, np.bool_)):
        raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
    values = {}
    for name, value in (("momentum", momentum), ("weight_decay", weight_decay), ("l2", l2)):
        if isinstance(value, (str, bytes, bool, np.bool_)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
        if not (math.isfinite(values[name]) and values[name] >= 0.0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if nesterov and values["momentum"] == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    return dict(values, nesterov=bool(nesterov))
