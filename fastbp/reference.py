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
   dl/dW[i][j] = dl/dz_i * h_j and dl/db_i = dl/dz_i;
4. the *optimizer step*, one parameter at a time: SGD, torch.optim.SGD's
   momentum, Nesterov and weight decay, scikit-learn's L2 penalty, or one of
   fastbp.optim's algorithms (SGD, Adam, AdamW, RMSprop) as their docstrings
   write them, after clipping the gradient's global norm when asked
   (torch.nn.utils.clip_grad_norm_).

Training steps apply inverted dropout to the hidden activations: each unit
is kept when its Philox uniform (:mod:`fastbp._philox`, keyed by seed,
epoch, batch, row and unit) is >= p and then scaled by 1/(1 - p), else set
to 0; the backward pass multiplies by the same factor.

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
from . import _philox

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


def exp_or_inf(z: float) -> float:
    """e^z, or +inf where it overflows a double (as C's exp), not OverflowError."""
    try:
        return math.exp(z)
    except OverflowError:
        return math.inf


def derivative_from_output(name: str, a: float) -> float:
    """da/dz of the activation ``name``, expressed through its output a.

    sigmoid' = a (1 - a), relu' = [a > 0], tanh' = 1 - a^2, identity' = 1,
    and for the exp output exp' = a.
    """
    if name == "identity":
        return 1.0
    if name == "exp":
        return a
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
    if name == "exp":
        return [exp_or_inf(zj) for zj in z]
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
    if loss == "poisson":
        # half Poisson deviance y log(y / yhat) - y + yhat with yhat = e^z, in z:
        # (e^z - y) + y (log y - z), 0 log 0 = 0 (the targets are >= 0)
        return sum((exp_or_inf(zj) - t) + (t * (math.log(t) - zj) if t > 0.0 else 0.0)
                   for zj, t in zip(z, y))
    raise ValueError(f"unknown loss {loss!r}")


def output_delta(loss: str, output: str, z: Vector, yhat: Vector, y: Vector) -> Vector:
    """dl/dz_j for every output logit z_j of one sample (the start of backprop)."""
    if loss == "binary_cross_entropy":
        # sigmoid output and BCE together: the 1/(a(1-a)) and a(1-a) cancel
        return [yh - t for yh, t in zip(yhat, y)]
    if loss == "poisson":
        # exp output (the log link) and Poisson together: dl/dyhat = 1 - y/yhat
        # times dyhat/dz = yhat gives yhat - y
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
# The optimizers, one parameter at a time: torch.optim.SGD (momentum, Nesterov,
# weight decay), scikit-learn's L2 penalty, and the algorithms of
# fastbp.optim (SGD, Adam, AdamW, RMSprop, torch's semantics)
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


def clip_grad_norm(grad: Vector, max_norm: float) -> Vector:
    """torch.nn.utils.clip_grad_norm_ on one flat gradient.

    total = sqrt(sum g^2) over every parameter; when
    coef = max_norm / (total + 1e-6) is below 1 every component is scaled by it.
    """
    total = math.sqrt(sum(g * g for g in grad))
    coef = max_norm / (total + 1e-6)
    return [g * coef for g in grad] if coef < 1.0 else grad


def sgd_object_parameter(opt: Any, theta: float, grad: float, state: Dict[str, float],
                         t: int, lr: float) -> float:
    """fastbp.optim.SGD's step t (1, 2, ...) of one parameter; updates ``state``.

    g = grad + weight_decay * theta; with momentum, b = g at t = 1, else
    b = momentum * b + g, and g = g + momentum * b (Nesterov) or b;
    theta - lr * g.
    """
    g = grad + opt.weight_decay * theta
    if opt.momentum != 0.0:
        b = g if t == 1 else opt.momentum * state["momentum_buffer"] + g
        state["momentum_buffer"] = b
        g = g + opt.momentum * b if opt.nesterov else b
    return theta - lr * g


def adam_parameter(opt: Any, theta: float, grad: float, state: Dict[str, float],
                   t: int, lr: float) -> float:
    """fastbp.optim.Adam's (AdamW's) step t of one parameter; updates ``state``.

    Adam: g = grad + weight_decay * theta; AdamW: theta *= 1 - lr * weight_decay
    first instead.  m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2,
    vmax = max(vmax, v) with amsgrad, and
    theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    """
    beta1, beta2 = opt.betas
    g = grad
    if opt.name == "adamw":
        theta = theta * (1.0 - lr * opt.weight_decay)
    else:
        g = g + opt.weight_decay * theta
    m = beta1 * state["exp_avg"] + (1.0 - beta1) * g
    v = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * g * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    if opt.amsgrad:
        v = max(state["max_exp_avg_sq"], v)
        state["max_exp_avg_sq"] = v
    denom = math.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + opt.eps
    return theta - lr / (1.0 - beta1 ** t) * m / denom


def rmsprop_parameter(opt: Any, theta: float, grad: float, state: Dict[str, float],
                      t: int, lr: float) -> float:
    """fastbp.optim.RMSprop's step of one parameter; updates ``state``.

    g = grad + weight_decay * theta; v = alpha v + (1 - alpha) g^2; centered:
    gbar = alpha gbar + (1 - alpha) g and d = sqrt(v - gbar^2) + eps, else
    d = sqrt(v) + eps; with momentum b = momentum b + g / d and theta - lr b,
    else theta - lr g / d.
    """
    a = opt.alpha
    g = grad + opt.weight_decay * theta
    v = a * state["square_avg"] + (1.0 - a) * g * g
    state["square_avg"] = v
    if opt.centered:
        gbar = a * state["grad_avg"] + (1.0 - a) * g
        state["grad_avg"] = gbar
        d = math.sqrt(v - gbar * gbar) + opt.eps
    else:
        d = math.sqrt(v) + opt.eps
    if opt.momentum > 0.0:
        b = opt.momentum * state["momentum_buffer"] + g / d
        state["momentum_buffer"] = b
        return theta - lr * b
    return theta - lr * g / d


OPTIMIZER_STEPS = {"sgd": sgd_object_parameter, "adam": adam_parameter,
                   "adamw": adam_parameter, "rmsprop": rmsprop_parameter}


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

class _Default(float):
    """fit's default learning rate: 0.01, told apart from an ``lr`` given by identity."""


_DEFAULT_LR = _Default(0.01)


class MLP:
    """A dense multilayer perceptron trained by backpropagation and SGD (reference).

    Parameters
    ----------
    layer_sizes : sequence of int
        Units per layer, input size first, output size last (at least two).
    activation : {"relu", "sigmoid", "tanh", "identity"}
        Activation of every hidden layer.
    output : {"softmax", "sigmoid", "identity", "exp"}
        Activation applied after the last layer.
    loss : {"cross_entropy", "binary_cross_entropy", "squared_error", "poisson"}
        Per-sample loss; ``cross_entropy`` needs ``output="softmax"``,
        ``binary_cross_entropy`` needs ``output="sigmoid"`` and ``poisson``
        (the half Poisson deviance, targets >= 0) needs ``output="exp"``.
    bias : bool
        Whether the layers have biases.
    dtype : {"float32", "float64"}
        Storage type of the parameters and of every returned array.
    seed : int or None
        Seed of the initialisation (see :func:`fastbp._common.init_params`).
    weights, biases : sequence of array_like, optional
        Explicit initial parameters, ``weights[k]`` of shape (n_out, n_in) and
        ``biases[k]`` of shape (n_out,); they are copied.
    dropout : float or sequence of float
        Inverted dropout on the hidden activations in training steps, as
        ``fastbp.MLP``: the same Philox masks.

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
        dropout: Any = 0.0,
    ) -> None:
        sizes, dt = _common.check_config(layer_sizes, activation, output, loss, dtype)
        self.dropout, probs = _common.check_dropout(dropout, len(sizes) - 2)
        # One drop probability per hidden layer (all 0: no dropout).
        self._drop: List[float] = [float(p) for p in probs] if probs is not None else []
        bias = _common.check_bool("bias", bias)
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
        # The optimizer's state, flat arrays of n_params in the fast model's
        # order (W_0, b_0, W_1, b_1, ...), in the model dtype: {"velocity"} for
        # fit's momentum keyword, {"step", <fastbp.optim state names>} for an
        # optimizer object; None until a fit needs one.
        self._state: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        drop = f", dropout={self.dropout!r}" if any(self._drop) else ""
        return (
            f"reference.MLP({list(self.layer_sizes)}, activation={self.activation!r}, "
            f"output={self.output!r}, loss={self.loss_name!r}, bias={self.bias}, "
            f"dtype={self.dtype.name!r}{drop})"
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

    def _forward(self, Ws: List[Matrix], bs: List[Optional[Vector]], x: Vector,
                 masks: Optional[List[Vector]] = None):
        """Forward pass of one sample, storing every node's value.

        Returns ``(hs, z_out, yhat)``: ``hs[k]`` is the input of layer k
        (``hs[0] = x``, ``hs[k]`` for k >= 1 the stored hidden activations),
        ``z_out`` the output logits and ``yhat`` the outputs.  With dropout
        ``masks`` (``masks[k-1][j]`` is 0 or 1/(1 - p) for hidden unit j of
        layer k), the activations passed up are ``f(z) * mask``; ``hs`` keeps
        the activations before the mask, for the derivatives.
        """
        hs = [x]
        up = x
        for k in range(self.n_layers - 1):
            z = affine(Ws[k], bs[k], up)
            hs.append([activate(self.activation, zi) for zi in z])
            up = hs[-1] if masks is None else [a * m for a, m in zip(hs[-1], masks[k])]
        z_out = affine(Ws[-1], bs[-1], up)
        yhat = output_activation(self.output, z_out)
        return hs, z_out, yhat

    def _masks(self, key: Optional[Tuple[int, int, int]], row: int) -> Optional[List[Vector]]:
        """Dropout factors of one batch row: 0 (dropped) or 1/(1 - p) (kept) per hidden unit.

        ``key`` is (seed, epoch, step); units are numbered through all hidden
        layers in order, as docs/optim.md maps them.  None without dropout.
        """
        if key is None or not any(self._drop):
            return None
        seed, epoch, step = key
        masks, unit = [], 0
        for k, p in enumerate(self._drop):
            scale = float(_philox.dropout_scale(p, self.dtype))
            layer = []
            for _ in range(self.layer_sizes[k + 1]):
                keep = _philox.dropout_keep(seed, epoch, step, row, unit, p)
                layer.append(scale if keep else 0.0)
                unit += 1
            masks.append(layer)
        return masks

    # ---- backward pass ---------------------------------------------------

    def _backward(self, Ws: List[Matrix], hs: List[Vector], dz: Vector, dWs, dbs,
                  masks: Optional[List[Vector]] = None) -> None:
        """Backward pass of one sample, adding its parameter gradients to dWs, dbs.

        ``dz`` is dl/dz of the output logits; walking from the output layer
        down, each layer's dl/dz gives its parameter gradients, and
        dl/dz of the layer below is (W^T dl/dz) times the local derivative of
        the hidden activation, taken from the stored outputs (times the
        dropout factor, when ``masks`` are given: the layer's input was
        ``f(z) * mask``).
        """
        for k in range(self.n_layers - 1, -1, -1):
            h_in = hs[k] if masks is None or k == 0 else [
                a * m for a, m in zip(hs[k], masks[k - 1])]
            accumulate_param_grads(dWs[k], dbs[k], dz, h_in)
            if k == 0:
                break  # no gradient needed for the inputs
            dh = backprop_to_input(Ws[k], dz)
            if masks is not None:
                dh = [g * m for g, m in zip(dh, masks[k - 1])]
            dz = [dhj * derivative_from_output(self.activation, a) for dhj, a in zip(dh, hs[k])]

    def _loss_and_grads(self, X: Matrix, Y: Matrix, weights: Optional[Vector] = None,
                        key: Optional[Tuple[int, int, int]] = None):
        """Mean loss and mean-loss gradients over the rows of X, in doubles.

        With ``weights`` (one s_i >= 0 per row, sum > 0), the weighted mean
        sum_i s_i loss_i / sum_i s_i and its gradients.  With a dropout
        ``key`` (seed, epoch, step), row i of the batch uses the masks of row i.
        """
        Ws, bs = self._params_as_floats()
        dWs = [[[0.0] * len(W[0]) for _ in W] for W in Ws]
        dbs = [[0.0] * len(W) if b is not None else None for W, b in zip(Ws, bs)]
        if weights is None:
            weights = [1.0] * len(X)
        total = 0.0
        for row, (x, y, s) in enumerate(zip(X, Y, weights)):
            masks = self._masks(key, row)
            hs, z_out, yhat = self._forward(Ws, bs, x, masks)
            total += s * sample_loss(self.loss_name, z_out, yhat, y)
            dz = output_delta(self.loss_name, self.output, z_out, yhat, y)
            self._backward(Ws, hs, [s * d for d in dz], dWs, dbs, masks)
        n = sum(weights)
        dWs = [[[g / n for g in row] for row in dW] for dW in dWs]
        dbs = [[g / n for g in db] if db is not None else None for db in dbs]
        return total / n, Ws, bs, dWs, dbs

    def _sgd_update(self, X: Matrix, Y: Matrix, lr: float, weights: Optional[Vector] = None,
                    key: Optional[Tuple[int, int, int]] = None) -> float:
        """One plain SGD step on a batch of already validated rows; the loss before it."""
        return self._optimizer_step(X, Y, lr, _PLAIN_SGD, weights, key)[0]

    def _optimizer_step(self, X: Matrix, Y: Matrix, lr: float, opt: dict,
                        weights: Optional[Vector] = None,
                        key: Optional[Tuple[int, int, int]] = None) -> Tuple[float, float]:
        """One optimizer step on a batch; (mean loss, l2 penalty) before it.

        ``opt`` holds torch.optim.SGD's momentum, nesterov and weight_decay
        (decay on the biases too) and scikit-learn's ``l2``: the batch of m
        rows minimises mean loss + l2 / (2 m) * sum W^2, so the weights'
        gradient gains (l2 / m) W.  Or ``opt["object"]`` is a fastbp.optim
        optimizer, applied as its docstring writes it.  The penalty returned
        is l2 / 2 * sum W^2.  ``opt["clip"]`` > 0 clips the gradient (after
        l2, before weight decay and the optimizer) to that global 2-norm.
        """
        loss, Ws, bs, dWs, dbs = self._loss_and_grads(X, Y, weights, key)
        if not math.isfinite(loss):
            # as the fast model: never write a diverged step into the parameters
            raise FloatingPointError("the loss is not finite on this batch; the model was not updated")
        m = len(X)
        penalty = l2_penalty(Ws, opt["l2"])
        if opt["l2"] != 0.0:
            dWs = [[[g + p for g, p in zip(grow, prow)] for grow, prow in zip(dW, l2_gradient(W, opt["l2"], m))]
                   for dW, W in zip(dWs, Ws)]
        theta, grad = self._flat(Ws, bs), self._flat(dWs, dbs)
        if opt.get("clip", 0.0) > 0.0:
            grad = clip_grad_norm(grad, opt["clip"])
        if opt.get("object") is not None:
            new = self._object_update(opt["object"], theta, grad, lr)
        else:
            # the weights' decay and the biases' (l2 spares the biases)
            decay = self._flat([[[opt["weight_decay"]] * len(W[0]) for _ in W] for W in Ws],
                               [[opt["weight_decay"]] * len(b) if b is not None else None for b in bs])
            momentum = opt["momentum"]
            if momentum != 0.0 and (self._state is None or "velocity" not in self._state):
                self._state = {"velocity": np.zeros(self.n_params, dtype=self.dtype)}
            vel = self._state["velocity"].tolist() if momentum != 0.0 else [None] * len(theta)
            steps = [sgd_parameter(t, g, v, lr, momentum, opt["nesterov"], d)
                     for t, g, v, d in zip(theta, grad, vel, decay)]
            new = [t for t, _ in steps]
            if momentum != 0.0:
                self._state["velocity"][...] = [v for _, v in steps]
        self._write_flat(new)
        return loss, penalty

    def _object_update(self, optimizer: Any, theta: Vector, grad: Vector, lr: float) -> Vector:
        """One step of a fastbp.optim optimizer on every parameter; the new values."""
        names = optimizer.state_names()
        state = self._state
        if state is None or set(state) != {"step", *names}:
            state = self._state = {"step": 0, **{k: np.zeros(self.n_params, dtype=self.dtype) for k in names}}
        t = int(state["step"]) + 1
        step = OPTIMIZER_STEPS[optimizer.name]
        new = []
        for i, (th, g) in enumerate(zip(theta, grad)):
            s = {k: float(state[k][i]) for k in names}
            new.append(step(optimizer, th, g, s, t, lr))
            for k in names:
                state[k][i] = s[k]
        state["step"] = t
        return new

    # ---- the flat parameter order of the fast model -----------------------

    def _flat(self, Ws: List[Matrix], bs: List[Optional[Vector]]) -> Vector:
        """Per-layer matrices and vectors as one list in the order W_0, b_0, W_1, b_1, ..."""
        out: Vector = []
        for W, b in zip(Ws, bs):
            out.extend(w for row in W for w in row)
            if b is not None:
                out.extend(b)
        return out

    def _write_flat(self, values: Vector) -> None:
        """Store a flat list (order of :meth:`_flat`) into the parameters, rounded to the dtype."""
        off = 0
        for k in range(self.n_layers):
            for arr in (self.weights[k], self.biases[k]):
                if arr is not None:
                    arr[...] = np.array(values[off:off + arr.size], dtype=self.dtype).reshape(arr.shape)
                    off += arr.size

    # ---- optimizer state -------------------------------------------------

    def optimizer_state(self) -> Dict[str, Any]:
        """A copy of the optimizer's state, laid out as the fast model's.

        Returns
        -------
        dict
            Empty before any fit that needs state.  After a fit with the
            ``momentum`` keyword: ``{"velocity": flat array of n_params}``
            (W_0, b_0, W_1, b_1, ... each row-major, as
            ``fastbp.MLP.optimizer_state``).  After a fit with a
            ``fastbp.optim`` optimizer: ``{"step": int, name: flat array}``
            for each of its ``state_names()``, the contract of fastbp.optim.
        """
        if self._state is None:
            return {}
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._state.items()}

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` returned (or the fast model's).

        Parameters
        ----------
        state : dict
            ``{}``, ``{"velocity": array of n_params}``, or ``{"step": int >= 0,
            name: array of n_params, ...}`` with fastbp.optim's state names
            (``fastbp.MLP.optimizer_state()``'s ``"optimizer"`` entry, and its
            ``"step"`` next to a ``"velocity"``, are ignored).
        """
        if not isinstance(state, dict):
            raise ValueError(f"optimizer state must be a dict, got {type(state).__name__}")
        # The fast model's state also names its optimizer (and counts SGD's
        # steps): the reference keeps only what its steps read.
        state = {k: v for k, v in state.items() if k != "optimizer"}
        if "velocity" in state:
            state.pop("step", None)
        known = {"velocity", "step", "momentum_buffer", "exp_avg", "exp_avg_sq",
                 "max_exp_avg_sq", "square_avg", "grad_avg"}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"unknown optimizer state keys {sorted(unknown)}")
        if not state or (set(state) == {"velocity"} and state["velocity"] is None):
            self._state = None
            return
        if "velocity" in state and len(state) > 1:
            raise ValueError("'velocity' (fit's momentum) cannot be mixed with fastbp.optim state")
        if "velocity" not in state:
            step = state.get("step")
            if isinstance(step, np.ndarray) and step.ndim == 0 and step.dtype.kind in "iu":
                step = step.item()
            if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
                raise ValueError(f"state['step'] must be an integer >= 0, got {step!r}")
        new: Dict[str, Any] = {}
        for k, v in state.items():
            new[k] = int(step) if k == "step" else _common._param(k, v, (self.n_params,), self.dtype.type)
        self._state = new

    def reset_optimizer(self) -> None:
        """Forget the optimizer state: the next fit starts from rest."""
        self._state = None

    @property
    def n_params(self) -> int:
        """Number of parameters (weights and biases)."""
        return sum(W.size for W in self.weights) + sum(b.size for b in self.biases if b is not None)

    def _sample_weight(self, sample_weight: Any, n: int) -> Optional[Vector]:
        """Checked sample weights as Python floats (rounded to the dtype), or None."""
        if sample_weight is None:
            return None
        sw = _common._param("sample_weight", sample_weight, (n,), self.dtype.type)
        if np.any(sw < 0):
            raise ValueError("sample_weight must be >= 0")
        if not sw.sum() > 0:
            raise ValueError("sample_weight must not sum to 0")
        return sw.tolist()

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

    def loss(self, X: Any, Y: Any, sample_weight: Any = None) -> float:
        """Mean over the samples of the per-sample loss.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels of shape
            (n_samples,) for ``cross_entropy``
        sample_weight : array_like of shape (n_samples,), optional
            Weights s_i >= 0 (not all 0): the weighted mean
            sum_i s_i loss_i / sum_i s_i.

        Returns
        -------
        float
            The mean loss, rounded to the model dtype.
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        weights = self._sample_weight(sample_weight, Xc.shape[0]) or [1.0] * Xc.shape[0]
        Ws, bs = self._params_as_floats()
        total = 0.0
        for x, y, s in zip(Xc.tolist(), Yc.tolist(), weights):
            _, z_out, yhat = self._forward(Ws, bs, x)
            total += s * sample_loss(self.loss_name, z_out, yhat, y)
        return self._round(total / sum(weights))

    def gradients(
        self, X: Any, Y: Any, sample_weight: Any = None, *, training: bool = False,
        seed: int = 0, epoch: int = 0, step: int = 0,
    ) -> Tuple[float, List[Tuple[np.ndarray, Optional[np.ndarray]]]]:
        """Mean loss and its gradients with respect to every parameter.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels
        sample_weight : array_like of shape (n_samples,), optional
            As for :meth:`loss`: the weighted mean and its gradients.
        training : bool
            Apply dropout with the masks of batch ``step`` of epoch ``epoch``
            of a fit with ``seed``, as ``fastbp.MLP.gradients``.
        seed, epoch, step : int
            The dropout key (with ``training=True``).

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
        weights = self._sample_weight(sample_weight, Xc.shape[0])
        key = _dropout_key(seed, epoch, step) if _common.check_bool("training", training) else None
        loss, _, _, dWs, dbs = self._loss_and_grads(Xc.tolist(), Yc.tolist(), weights, key)
        grads = []
        for k in range(self.n_layers):
            dW = np.array(dWs[k], dtype=self.dtype).reshape(self.weights[k].shape)
            db = np.array(dbs[k], dtype=self.dtype) if dbs[k] is not None else None
            grads.append((dW, db))
        return self._round(loss), grads

    def step(self, X: Any, Y: Any, lr: float, sample_weight: Any = None, *,
             seed: int = 0, epoch: int = 0) -> float:
        """One in-place SGD update on the batch (X, Y).

        ``W -= lr * dW`` and ``b -= lr * db`` with the gradients of the mean
        batch loss, computed in doubles and written back in the model dtype.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels
        lr : float
            Learning rate, positive and finite.
        sample_weight : array_like of shape (n_samples,), optional
            As for :meth:`loss`: the step on the weighted mean loss.
        seed, epoch : int
            The dropout key of this step (batch 0 of ``epoch``).

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
        weights = self._sample_weight(sample_weight, Xc.shape[0])
        key = _dropout_key(seed, epoch, 0)
        return self._round(self._sgd_update(Xc.tolist(), Yc.tolist(), lr, weights, key))

    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = _DEFAULT_LR,
        shuffle: bool = True,
        seed: Optional[int] = None,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        l2: float = 0.0,
        optimizer: Any = None,
        sample_weight: Any = None,
        clip_grad_norm: Optional[float] = None,
    ) -> _common.History:
        """Mini-batch SGD over the data for a number of epochs.

        Each epoch walks the samples (in the order of
        ``numpy.random.default_rng(seed).permutation`` when ``shuffle``, else
        in order) in consecutive batches of ``batch_size`` rows (the last may
        be smaller) and makes one optimizer step per batch (a :meth:`step`
        when momentum, weight_decay and l2 are 0 and no optimizer is given).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like of shape (n_samples, n_out), or integer labels
        epochs : int, >= 0
        batch_size : int, >= 1
        lr : float
            Learning rate, positive and finite.  With an optimizer and ``lr``
            not given, ``optimizer.lr``; a given ``lr`` overrides it, as
            ``optimizer.update(..., lr=lr)`` does.
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
        optimizer : fastbp.optim.SGD, Adam, AdamW or RMSprop, optional
            Instead of the keywords above (which must then be left at 0):
            every parameter follows the formulas of that class's docstring
            (torch.optim's algorithms, weight decay on the biases too), in
            doubles, rounded to the model dtype after each step.  Its state
            (``{"step": t, name: flat array}``, fastbp.optim's contract) is
            the model's (:meth:`optimizer_state`) and carries over to the next
            fit; a state of another optimizer is replaced by a fresh one.
        sample_weight : array_like of shape (n_samples,), optional
            Weights s_i >= 0: each batch minimises sum_i s_i loss_i / sum_i s_i
            over its rows (a batch whose weights are all 0 takes no step).
            Not with ``l2``.
        clip_grad_norm : float, optional
            torch.nn.utils.clip_grad_norm_ on each step's whole gradient.

        With dropout, batch ``step`` of epoch ``e`` (both counted from 0 in
        this fit) draws its masks with the key (seed, e, step): ``seed`` itself
        when it is an int, a random key when it is None, else one raw draw
        of the shuffling generator before its permutations (as ``fastbp.MLP``).

        Returns
        -------
        fastbp._common.History
            ``loss[e]`` is the mean over epoch e's samples of the loss each
            had in its batch's forward pass, before that batch's update; with
            ``l2``, of the objective: (sum over batches of m * mean loss +
            l2 / 2 * sum W^2) / n_samples, scikit-learn's ``loss_``; with
            ``sample_weight``, the weighted mean sum_i s_i loss_i / sum_i s_i.

        Raises
        ------
        FloatingPointError
            When a batch loss is NaN or Inf; the model is left as it was before
            that batch (the compiled model rewinds one step further, to weights
            whose loss was finite: that is training policy, not math).
        """
        Xc, Yc = self._inputs_and_targets(X, Y)
        epochs, batch_size = _common.check_fit_args(epochs, batch_size)
        shuffle = _common.check_bool("shuffle", shuffle)
        opt = _check_optimizer(momentum, nesterov, weight_decay, l2)
        opt["object"] = _check_optimizer_object(optimizer, opt)
        opt["clip"] = _common.check_clip_norm(clip_grad_norm)
        if optimizer is not None and lr is _DEFAULT_LR:
            lr = optimizer.lr
        lr = _common.check_lr(lr, self.dtype.type)
        weights = self._sample_weight(sample_weight, Xc.shape[0])
        if weights is not None and opt["l2"] != 0.0:
            raise ValueError("l2 is not defined with sample_weight; use weight_decay")
        rows_X, rows_Y = Xc.tolist(), Yc.tolist()
        if weights is None:
            weights = [1.0] * len(rows_X)
        n = len(rows_X)
        rng = np.random.default_rng(seed)
        drop_seed = 0
        if any(self._drop):
            if seed is None:
                drop_seed = int(np.random.default_rng().integers(0, 2**63))
            elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
                drop_seed = int(seed) % (1 << 64)
            else:
                drop_seed = int(rng.bit_generator.random_raw())
        hist = _common.History()
        for epoch in range(epochs):
            order = rng.permutation(n).tolist() if shuffle else list(range(n))
            weighted = 0.0
            for step, start in enumerate(range(0, n, batch_size)):
                idx = order[start:start + batch_size]
                batch_weights = [weights[i] for i in idx]
                if sum(batch_weights) == 0.0:
                    continue  # nothing to minimise in this batch
                batch_loss, penalty = self._optimizer_step(
                    [rows_X[i] for i in idx], [rows_Y[i] for i in idx], lr, opt, batch_weights,
                    (drop_seed, epoch, step),
                )
                weighted += self._round(batch_loss) * sum(batch_weights) + penalty
            hist.loss.append(self._round(weighted / sum(weights)))
        return hist


_PLAIN_SGD = dict(momentum=0.0, nesterov=False, weight_decay=0.0, l2=0.0)


def _dropout_key(seed: Any, epoch: Any, step: Any) -> Tuple[int, int, int]:
    """(seed mod 2**64, epoch, step), checked: the dropout masks' key."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"the dropout seed must be an integer, got {seed!r}")
    return (int(seed) % (1 << 64), _common.check_int("epoch", epoch, 0),
            _common.check_int("step", step, 0))


def _check_optimizer(momentum: Any, nesterov: Any, weight_decay: Any, l2: Any) -> dict:
    """The optimizer keywords of :meth:`MLP.fit`, checked as ``fastbp.MLP.fit`` checks them
    (and ``l2`` as a number >= 0, as the fast model's ``Epochs`` takes it)."""
    momentum, nesterov, weight_decay = _common.check_optimizer(momentum, nesterov, weight_decay)
    if isinstance(l2, (str, bytes, bool, np.bool_)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    try:
        value = float(l2)
    except (TypeError, ValueError):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, l2=value)


def _check_optimizer_object(optimizer: Any, keywords: dict) -> Any:
    """A fastbp.optim optimizer that the reference can step, or None."""
    if optimizer is None:
        return None
    from . import optim  # numpy only, like this module

    if not isinstance(optimizer, optim.Optimizer):
        raise ValueError(f"optimizer must be a fastbp.optim optimizer, got {optimizer!r}")
    if optimizer.name not in OPTIMIZER_STEPS:
        raise ValueError(f"{type(optimizer).__name__} takes no per-batch steps; the reference "
                         f"fit supports {sorted(OPTIMIZER_STEPS)}")
    if keywords["momentum"] or keywords["nesterov"] or keywords["weight_decay"] or keywords["l2"]:
        raise ValueError("give momentum, nesterov, weight_decay and l2 either as keywords "
                         "or through the optimizer, not both")
    return optimizer
