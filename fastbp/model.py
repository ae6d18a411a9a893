"""fastbp.MLP: the public model, a thin layer over the compiled kernels."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from . import _common as C
from . import _sparse
from . import optim
from . import schedules
from ._kernels import Network
from ._progress import Progress
from ._threads import get_num_threads
from .history import History
from .schedules import ScheduleLike

if TYPE_CHECKING:  # pragma: no cover
    import torch

Callback = Callable[[int, Dict[str, Any]], Any]

# predict() and loss() run the kernels on chunks of rows: at most 4096 (which
# bounds their scratch memory) and about 2**28 multiply-adds each, so that
# Ctrl-C, polled between chunks, acts within tens of milliseconds.  Results do
# not depend on the chunking.
_CHUNK_ROWS = 4096
_CHUNK_MACS = 2**28

Grads = List[Tuple[np.ndarray, Optional[np.ndarray]]]
OptimizerLike = Union[optim.Optimizer, str, Dict[str, Any]]


class _Default:
    """A keyword's default that can be told from the same value given explicitly.

    ``fit(momentum=...)`` must know whether the caller gave ``momentum`` (an
    error with ``optimizer=``) even when the value equals the default; the
    repr is the value's, so signatures read as usual.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _given(value: Any) -> bool:
    return not isinstance(value, _Default)


def _value(value: Any) -> Any:
    return value.value if isinstance(value, _Default) else value


# The SGD momentum buffer is called "velocity" in optimizer_state() and in
# model files (its name since format 1); every other state array keeps the
# name torch.optim gives it.
_SGD_PUBLIC = {"momentum_buffer": "velocity"}


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

    def __reduce__(self) -> Tuple[Any, ...]:
        # copy, deepcopy and pickle make a plain list (of the same arrays, or
        # of copies): only the model's own list writes into the model.
        return (list, (list(self),))


class LayerGradients:
    """One batch's gradient, formed layer by layer, last layer first.

    Made by :meth:`MLP.layer_gradients`, which has already run the forward
    pass.  Iterating yields ``(k, gradient[slices[k]])`` for k = n_layers-1
    down to 0, each formed just before it is yielded (one GIL-free compiled
    call per layer); :meth:`form` forms one at a time.

    Attributes
    ----------
    loss : float
        The batch's mean loss (NaN or Inf when not finite: each layer's
        gradient is then all NaN, as with :meth:`MLP.flat_gradient`).
    gradient : ndarray of shape (n_params,)
        The flat gradient; layer k's entries are valid once it is formed.
    slices : list of slice
        ``gradient[slices[k]]`` is layer k's gradient: ``W_k`` (row-major)
        then ``b_k``, contiguous in the flat layout.
    next_layer : int
        The layer :meth:`form` forms next; -1 once all are formed.
    """

    def __init__(self, net: "MLP", X: np.ndarray, Y: np.ndarray, grad: np.ndarray) -> None:
        k_net = net._net
        self._net, self._model, self._X, self.gradient = k_net, net, X, grad
        self._threads = get_num_threads()
        self._ws = np.empty(int(k_net.workspace_size(X.shape[0], "gradients")), dtype=net.dtype)
        ends = [int(k_net.w_off[k + 1]) for k in range(net.n_layers - 1)] + [net.n_params]
        self.slices = [slice(int(k_net.w_off[k]), ends[k]) for k in range(net.n_layers)]
        with net._lock:
            self.loss = float(k_net.layerwise_forward(net._theta, X, Y, self._ws, self._threads))
        self.next_layer = net.n_layers - 1

    def form(self) -> Tuple[int, np.ndarray]:
        """Form the next layer's gradient (and the delta below it).

        Returns
        -------
        (int, ndarray)
            The layer k and its gradient, a view ``gradient[slices[k]]``.
        """
        k = self.next_layer
        if k < 0:
            raise ValueError("every layer's gradient is formed already")
        if np.isfinite(self.loss):
            with self._model._lock:
                self._net.layerwise_backward(k, self._model._theta, self._X, self._ws,
                                             self.gradient, self._threads)
        else:
            self.gradient[self.slices[k]] = np.nan
        self.next_layer = k - 1
        if k == 0:
            self._ws = self._X = None  # the workspace is not needed any more
        return k, self.gradient[self.slices[k]]

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        while self.next_layer >= 0:
            yield self.form()


class MLP:
    """A dense multilayer perceptron trained by backpropagation and SGD.

    Parameters
    ----------
    layer_sizes : sequence of int
        Widths of the layers, input first: ``[784, 256, 10]`` is a network with
        784 inputs, one hidden layer of 256 units and 10 outputs.
    activation : {"relu", "sigmoid", "tanh", "identity"}
        Activation of every hidden layer.
    output : {"softmax", "identity", "sigmoid", "exp"}
        Activation of the output layer (``exp``: ŷ = e^z, the log link).
    loss : {"cross_entropy", "squared_error", "binary_cross_entropy", "poisson"}
        Per-sample loss: ``squared_error`` is ½ Σ_j (ŷ_j − y_j)²;
        ``binary_cross_entropy`` (needs ``output="sigmoid"``) is Σ_j of the BCE of
        ŷ_j = σ(z_j); ``cross_entropy`` (needs ``output="softmax"``) is
        −Σ_j y_j log softmax(z)_j, i.e. −log softmax(z)[label] for labels.
        Both cross entropies are computed from the logits z, in a numerically
        stable form.  ``poisson`` (needs ``output="exp"``, targets >= 0) is
        the half Poisson deviance Σ_j [y_j log(y_j / ŷ_j) − y_j + ŷ_j] with
        ŷ_j = e^{z_j} (0 log 0 = 0), scikit-learn's ``MLPRegressor(loss="poisson")``
        per sample; its gradient with respect to z is ŷ − y.  A logit past
        e^z's overflow (z > 709.78 in float64, 88.72 in float32) makes the loss
        +inf, which ``step`` and ``fit`` treat as any non-finite loss.
        Other pairs that do not fit (such as ``loss="poisson"`` with
        ``output="identity"``) raise ValueError naming both.
    bias : bool
        Whether each layer has a bias vector (``bool`` or ``numpy.bool_``;
        anything else raises ValueError).
    dtype : {"float32", "float64"}
        Precision of the parameters and of all computation in the kernels.
    seed : int or None
        Seeds the initialisation: He normal N(0, 2/n_in) for layers followed by
        a ReLU, Xavier uniform U(±sqrt(6/(n_in+n_out))) for all others, zero
        biases (see :func:`fastbp._common.init_params`).
    weights, biases : sequence of array_like, optional
        Explicit initial parameters, ``weights[k]`` of shape (n_out, n_in) and
        ``biases[k]`` of shape (n_out,); they are copied.
    dropout : float or sequence of float, default 0.0
        Inverted dropout on the hidden activations while training (``fit``,
        ``step``, ``gradients(training=True)``): each hidden unit is zeroed
        with probability p and the kept ones are scaled by 1/(1 − p).  A
        number applies to every hidden layer, a sequence gives one p per
        hidden layer; each in [0, 1).  The masks come from Philox-4x32-10
        keyed by (seed, epoch, batch, row, unit) (docs/optim.md), so a fit
        gives the same bits for any number of threads and
        :mod:`fastbp.reference` draws the same masks.  ``predict``,
        ``loss`` and validation never drop.

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
        dropout: Union[float, Sequence[float]] = 0.0,
    ) -> None:
        sizes, np_dtype = C.check_config(layer_sizes, activation, output, loss, dtype)
        self.dropout, self._dropout = C.check_dropout(dropout, len(sizes) - 2)
        self.layer_sizes: Tuple[int, ...] = sizes
        self.activation = activation
        self.output = output
        self.loss_name = loss
        self.bias = C.check_bool("bias", bias)
        self.dtype = np.dtype(np_dtype)
        self.seed = seed
        self.n_layers = len(sizes) - 1
        given = weights is not None and (biases is not None or not self.bias)
        W0, b0 = C.check_params(   # no draws when every parameter is given
            sizes, self.bias, np_dtype, weights, biases,
            ([], [None] * self.n_layers) if given
            else C.init_params(sizes, activation, self.bias, np_dtype, seed),
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
        # The optimizer state (see optimizer_state): the algorithm's name, its
        # hyper-parameters when known, and {"step": int or None, torch's
        # state name: flat array}; None until a fit with a stateful optimizer.
        self._opt_name: Optional[str] = None
        self._opt_config: Optional[Dict[str, Any]] = None
        self._opt_state: Optional[Dict[str, Any]] = None
        # Column names of the first data frame trained on (feature_names_in_).
        self._feature_names: Optional[np.ndarray] = None
        # Serialises calls from several Python threads; re-entrant so that a
        # fit callback may call predict/loss on the model.
        self._lock = threading.RLock()
        # predict's rows per kernel chunk (a constant of the architecture).
        self._predict_chunk = self._chunk_rows()

    # -- parameters ---------------------------------------------------------

    def _view_w(self, k: int, flat: Optional[np.ndarray] = None) -> np.ndarray:
        """W_k as a (n_out, n_in) view of the parameter vector (or of `flat`, laid out alike)."""
        flat = self._theta if flat is None else flat
        off, n_in, n_out = self._net.w_off[k], self.layer_sizes[k], self.layer_sizes[k + 1]
        return flat[off : off + n_out * n_in].reshape(n_out, n_in)

    def _view_b(self, k: int, flat: Optional[np.ndarray] = None) -> np.ndarray:
        """b_k as a view of the parameter vector (or of `flat`, laid out alike)."""
        flat = self._theta if flat is None else flat
        off = self._net.b_off[k]
        return flat[off : off + self.layer_sizes[k + 1]]

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

    # -- flat views (for users' own training loops and fastbp.distributed) --

    @property
    def flat_parameters(self) -> np.ndarray:
        """The 1-D vector of length ``n_params`` that holds every parameter.

        This is the model's own storage (not a copy): writes into it change the
        model, and ``weights[k]`` / ``biases[k]`` are views of it.  Layout, in
        order for each layer k = 0 .. n_layers-1: ``W_k`` (n_out, n_in)
        row-major, then ``b_k`` (n_out,) when the model has biases; so
        ``W_k[i, j]`` sits at ``offset_k + i * n_in + j``.  :meth:`unflatten`
        gives the per-layer views of any vector laid out alike, and
        :meth:`flat_gradient` returns gradients in this layout.

        Assigning ``net.flat_parameters = v`` copies ``v`` (shape
        ``(n_params,)``, finite) into the model.
        """
        return self._theta

    @flat_parameters.setter
    def flat_parameters(self, value: Any) -> None:
        new = C._param("flat_parameters", value, self._theta.shape, self.dtype.type)
        with self._lock:
            self._theta[...] = new

    def flat_gradient(
        self, X: Any, Y: Any, *, reduction: str = "mean", out: Optional[np.ndarray] = None,
    ) -> Tuple[float, np.ndarray]:
        """The loss and its gradient as one flat vector, in one compiled call.

        The forward and backward pass over the whole of ``X`` (one batch) run in
        one call to the kernels, without the GIL, on ``get_num_threads()``
        threads; the result is bitwise the same for any thread count.

        Parameters
        ----------
        X : array_like or scipy.sparse matrix of shape (n_samples, n_in)
            A sparse X stays sparse (CSR; bitwise the results of its dense
            copy; docs/sklearn.md, "Sparse input").
        Y : array_like
            Targets, as for :meth:`loss`.
        reduction : {"mean", "sum"}
            ``"mean"``: the loss is the mean over the samples of the per-sample
            loss, and the gradient is its gradient (the same as
            :meth:`gradients`, flattened).  ``"sum"``: the sum of the
            per-sample losses and the gradient of that sum; the kernel forms
            the gradient of the mean (its output deltas scaled by
            1/n_samples), which is then multiplied by ``n_samples`` in the
            model's dtype: the gradient of the sum up to those two roundings,
            none when ``n_samples`` is a power of two.
        out : ndarray, optional
            Where to write the gradient: C-contiguous, writable, of shape
            ``(n_params,)`` and the model's dtype, not overlapping the
            parameters.  A new array when omitted.

        Returns
        -------
        loss : float
            The mean (or sum) of the per-sample losses.
        grad : ndarray of shape (n_params,)
            The gradient, laid out as :attr:`flat_parameters`; ``out`` when
            given.  All NaN when the loss is not finite.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}')
        g, Xc, Yc = self._gradient_args(X, Y, out)
        with self._lock:
            loss = float(self._net.gradients(self._theta, Xc, Yc, g, get_num_threads()))
        if reduction == "sum":
            m = Xc.shape[0]
            g *= self.dtype.type(m)
            loss *= m
        return loss, g

    def layer_gradients(self, X: Any, Y: Any, *,
                        out: Optional[np.ndarray] = None) -> "LayerGradients":
        """The gradient of :meth:`flat_gradient` formed one layer at a time, last layer first.

        This call runs the forward pass over ``X`` (one batch) and the output
        delta in one compiled call without the GIL; then each
        :meth:`LayerGradients.form` (or each step of iterating over the
        result) forms the next layer's gradient, layers ``n_layers-1`` down to
        0, and the delta the layer below needs, in one more such call.  So a
        caller can hand layer k's gradient on (to a non-blocking reduction,
        as ``fastbp.distributed.fit`` does) while the kernel forms the earlier
        layers'.  Once every layer is formed, the vector is bitwise
        ``flat_gradient(X, Y)[1]`` (mean reduction), on any number of threads.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_in)
        Y : array_like
            Targets, as for :meth:`loss`.
        out : ndarray, optional
            Where to write the gradient, as for :meth:`flat_gradient`.

        Returns
        -------
        LayerGradients
            ``loss`` (the mean loss, known at once), ``gradient`` (``out``),
            ``slices`` (layer k's entries: ``W_k`` then ``b_k``).

        Notes
        -----
        Leave the parameters unchanged until the last layer is formed: the
        delta below layer k is formed with ``W_k``.

        Examples
        --------
        >>> import numpy as np, fastbp
        >>> net = fastbp.MLP([4, 8, 3], seed=0)
        >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
        >>> lg = net.layer_gradients(X, y)
        >>> [k for k, g_k in lg]
        [1, 0]
        >>> bool((lg.gradient == net.flat_gradient(X, y)[1]).all())
        True
        """
        g, Xc, Yc = self._gradient_args(X, Y, out)
        if isinstance(Xc, _sparse.CSR):
            raise TypeError("layer_gradients takes a dense X (the per-layer kernels have no "
                            "sparse first layer): use flat_gradient or gradients for sparse X")
        return LayerGradients(self, Xc, Yc, g)

    def _gradient_args(self, X: Any, Y: Any, out: Optional[np.ndarray]
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The gradient's array (``out`` checked, or a new one) and the checked batch."""
        if out is None:
            g = np.empty_like(self._theta)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
            if out.shape != self._theta.shape or out.dtype != self.dtype:
                raise ValueError(
                    f"out must have shape ({self.n_params},) and dtype {self.dtype.name}, "
                    f"got {out.shape} {out.dtype}"
                )
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise ValueError("out must be C-contiguous and writable")
            if np.may_share_memory(out, self._theta):
                raise ValueError("out must not overlap the model's parameters")
            g = out
        Xc, Yc = self._XY(X, Y)
        if _shares(Xc, g):
            Xc = Xc.copy()
        if np.may_share_memory(Yc, g):
            Yc = Yc.copy()
        return g, Xc, Yc

    def unflatten(self, flat: np.ndarray) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """Per-layer views ``[(W_0, b_0), ...]`` of a vector laid out as :attr:`flat_parameters`.

        Parameters
        ----------
        flat : ndarray of shape (n_params,)
            Any 1-D numpy array of that length (any dtype): the parameters, a
            gradient from :meth:`flat_gradient`, an optimizer's state, ...

        Returns
        -------
        list of (ndarray, ndarray or None)
            ``W_k`` of shape (n_out, n_in) and ``b_k`` of shape (n_out,) (None
            without biases), views of ``flat``: writes go into it.
        """
        if not isinstance(flat, np.ndarray):
            raise TypeError(f"unflatten needs a numpy array, got {type(flat).__name__}")
        if flat.shape != (self.n_params,):
            raise ValueError(f"unflatten needs shape ({self.n_params},), got {flat.shape}")
        return [
            (self._view_w(k, flat), self._view_b(k, flat) if self.bias else None)
            for k in range(self.n_layers)
        ]

    def __getstate__(self) -> Dict[str, Any]:
        """Pickle support: the configuration, the parameters and the optimizer state."""
        config = dict(
            layer_sizes=self.layer_sizes, activation=self.activation, output=self.output,
            loss=self.loss_name, bias=self.bias, dtype=self.dtype.name, seed=self.seed,
            dropout=self.dropout,
        )
        with self._lock:
            state = {"config": config, "theta": self._theta.copy(),
                     "optimizer_state": self.optimizer_state()}
            if self._feature_names is not None:
                state["feature_names_in_"] = list(self._feature_names)
            return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state["config"])  # type: ignore[misc]
        theta = C._param("theta", state["theta"], self._theta.shape, self.dtype.type)
        self._theta[...] = theta
        # Pickles before the optimizer objects held a bare "velocity".
        self.set_optimizer_state(state.get("optimizer_state",
                                           {k: v for k, v in state.items() if k == "velocity"}))
        if state.get("feature_names_in_") is not None:  # absent from older pickles
            self.feature_names_in_ = state["feature_names_in_"]

    @property
    def feature_names_in_(self) -> np.ndarray:
        """Column names of the data frame the model was trained on, as scikit-learn's.

        Recorded by the first :meth:`fit` or :meth:`step` given a pandas
        DataFrame (or another data frame) whose column names are all strings,
        when the model has none yet; kept in model files and pickles.  Later
        data frames must have the same columns in the same order (ValueError
        otherwise); a plain array is accepted with a UserWarning.  The
        attribute does not exist (AttributeError) until names are recorded.
        It can be set to ``n_in`` strings, and deleted.
        """
        if self._feature_names is None:
            raise AttributeError("feature_names_in_: the model was not trained on a data frame "
                                 "with string column names")
        return self._feature_names.copy()

    @feature_names_in_.setter
    def feature_names_in_(self, names: Any) -> None:
        checked = C.check_names_param(names, self.layer_sizes[0])
        with self._lock:
            self._feature_names = checked

    @feature_names_in_.deleter
    def feature_names_in_(self) -> None:
        with self._lock:
            self._feature_names = None

    def __repr__(self) -> str:
        drop = f", dropout={self.dropout!r}" if self._dropout is not None else ""
        return (
            f"MLP({list(self.layer_sizes)}, activation={self.activation!r}, "
            f"output={self.output!r}, loss={self.loss_name!r}, bias={self.bias}, "
            f"dtype={self.dtype.name!r}{drop})"
        )

    # -- checking -----------------------------------------------------------

    def _chunk_rows(self) -> int:
        macs_per_row = sum(a * b for a, b in zip(self.layer_sizes, self.layer_sizes[1:]))
        return max(16, min(_CHUNK_ROWS, _CHUNK_MACS // macs_per_row))

    def _X(self, X: Any) -> np.ndarray:
        C.check_feature_names(self._feature_names, X, type(self).__name__)
        if _sparse.is_sparse(X):  # scipy.sparse: kept sparse (fastbp/_sparse.py)
            return _sparse.check_sparse_X(X, self.layer_sizes[0], self.dtype.type)  # type: ignore
        return C.check_X(X, self.layer_sizes[0], self.dtype.type)

    def _XY(self, X: Any, Y: Any) -> Tuple[np.ndarray, np.ndarray]:
        Xc = self._X(X)
        Yc = C.check_Y(Y, Xc.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype.type)
        # Training writes the parameters while it reads X and Y: data that is
        # (a view of) the parameters themselves is read from a copy.
        if _shares(Xc, self._theta):
            Xc = Xc.copy()
        if np.may_share_memory(Yc, self._theta):
            Yc = Yc.copy()
        return Xc, Yc

    # -- inference ----------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """Outputs of the network.

        Parameters
        ----------
        X : array_like or scipy.sparse matrix of shape (n_samples, n_in)
            A sparse X stays sparse (CSR; bitwise the results of its dense
            copy; docs/sklearn.md, "Sparse input").

        Returns
        -------
        ndarray of shape (n_samples, n_out)
            The outputs after the output activation (probabilities for
            softmax, the predicted means e^z for the exp output).

        Notes
        -----
        A C-contiguous float32 or float64 ``numpy.ndarray`` takes a compiled
        fast path (the same checks, in compiled code; a one-row call costs a
        few microseconds); anything else goes through the general checks
        (:func:`fastbp._common.check_X`).  Both give the same bits and the
        same errors.
        """
        names = self._feature_names
        if names is not None:
            C.check_feature_names(names, X, type(self).__name__)
        with self._lock:
            out = self._net.predict_fast(self._theta, X, self._predict_chunk)
        if out is None:
            out = self._predict_general(X, names_checked=True)
        return out

    def _predict_fast(self, X: Any, max_threads: Optional[int] = None) -> Optional[np.ndarray]:
        """predict's compiled fast path, or None when ``X`` is not a case it takes.

        Taken: an exact ``numpy.ndarray`` of shape (n_samples >= 1, n_in),
        C-contiguous, aligned, native byte order, float32 or float64, all
        finite in the model's dtype (see ``Network.predict_fast``).  The
        model's feature names are not checked here (the caller does).
        ``max_threads``: at most that many threads (a valid count, as
        ``fastbp.threads(max_threads)`` caps), or None.
        """
        with self._lock:
            return self._net.predict_fast(self._theta, X, self._predict_chunk, max_threads)

    def _predict_general(self, X: Any, *, names_checked: bool = False) -> np.ndarray:
        """predict through the general checks (``check_X``) and ``Network.predict``:
        every input predict accepts, and every error it raises."""
        if not names_checked:
            C.check_feature_names(self._feature_names, X, type(self).__name__)
        if _sparse.is_sparse(X):  # scipy.sparse: kept sparse (fastbp/_sparse.py)
            Xc = _sparse.check_sparse_X(X, self.layer_sizes[0], self.dtype.type)
        else:
            Xc = C.check_X(X, self.layer_sizes[0], self.dtype.type)
        out = np.empty((Xc.shape[0], self.layer_sizes[-1]), dtype=self.dtype)
        with self._lock:
            self._net.predict(self._theta, Xc, out, self._predict_chunk, get_num_threads())
        return out

    def _weights_of(self, sample_weight: Any, n: int) -> Optional[np.ndarray]:
        """Checked sample weights (None for none); a copy when they share the parameters."""
        sw = C.check_sample_weight(sample_weight, n, self.dtype.type)
        if sw is not None and np.may_share_memory(sw, self._theta):
            sw = sw.copy()
        return sw

    def loss(self, X: Any, Y: Any, *, sample_weight: Any = None) -> float:
        """Mean over the samples of the per-sample loss (no dropout).

        Parameters
        ----------
        X : array_like or scipy.sparse matrix of shape (n_samples, n_in)
            A sparse X stays sparse (CSR; bitwise the results of its dense
            copy; docs/sklearn.md, "Sparse input").
        Y : array_like of shape (n_samples, n_out), or (n_samples,)
            Targets; integer labels for ``cross_entropy``, or any 1-D target
            when the network has one output.
        sample_weight : array_like of shape (n_samples,), optional
            Weights s_i, finite and >= 0, not all zero: the result is then
            Σ s_i ℓ_i / Σ s_i (scikit-learn's definition).

        Returns
        -------
        float
        """
        Xc, Yc = self._XY(X, Y)
        sw = self._weights_of(sample_weight, Xc.shape[0])
        kw = {} if sw is None else {"sample_weight": sw}
        with self._lock:
            loss, _ = self._net.loss(self._theta, Xc, Yc, self._chunk_rows(), get_num_threads(),
                                     **kw)
        return float(loss)

    def gradients(
        self, X: Any, Y: Any, *, sample_weight: Any = None, training: bool = False,
        seed: int = 0, epoch: int = 0, step: int = 0,
    ) -> Tuple[float, Grads]:
        """The loss and its gradient with respect to every parameter.

        Parameters
        ----------
        X, Y : array_like
            One batch, as for :meth:`loss`.
        sample_weight : array_like of shape (n_samples,), optional
            Per-sample weights (see :meth:`loss`): the gradient is that of
            Σ s_i ℓ_i / Σ s_i.
        training : bool, default False
            Apply the model's dropout, as a training step does.  The masks
            are those of batch ``step`` of epoch ``epoch`` of a fit with
            ``seed`` (docs/optim.md): ``fit(..., seed=s, shuffle=False)``'s
            first step uses the gradient ``gradients(X[:batch_size], ...,
            training=True, seed=s)`` gives.  Without dropout it changes
            nothing.
        seed, epoch, step : int
            The dropout key (used with ``training=True`` only).

        Returns
        -------
        loss : float
            Mean loss over the batch.
        grads : list of (ndarray, ndarray or None)
            ``grads[k] == (dW_k, db_k)``, the gradients of the mean loss, shaped
            like ``weights[k]`` and ``biases[k]``; ``db_k`` is None without bias.
        """
        Xc, Yc = self._XY(X, Y)
        sw = self._weights_of(sample_weight, Xc.shape[0])
        training = C.check_bool("training", training)
        kw: Dict[str, Any] = {} if sw is None else {"sample_weight": sw}
        if training and self._dropout is not None:
            kw.update(dropout=self._dropout, seed=_dropout_seed(seed),
                      epoch=C.check_int("epoch", epoch, 0), step=C.check_int("step", step, 0))
        g = np.empty_like(self._theta)
        with self._lock:
            loss = self._net.gradients(self._theta, Xc, Yc, g, get_num_threads(), **kw)
        grads: Grads = [
            (self._view_w(k, g), self._view_b(k, g) if self.bias else None)
            for k in range(self.n_layers)
        ]
        return float(loss), grads

    # -- training -----------------------------------------------------------

    def _optimizer_of(
        self, optimizer: Any, lr: Any, momentum: Any = _Default(0.0),
        nesterov: Any = _Default(False), weight_decay: Any = _Default(0.0),
    ) -> optim.Optimizer:
        """The optimizer of a fit or step: the object given, or SGD from the shorthand."""
        if optimizer is not None:
            given = [name for name, v in (("lr", lr is not None), ("momentum", _given(momentum)),
                                          ("nesterov", _given(nesterov)),
                                          ("weight_decay", _given(weight_decay))) if v]
            if given:
                raise ValueError(
                    f"give either optimizer= or the SGD shorthand ({', '.join(given)}), not "
                    f"both: the optimizer object carries its own settings, e.g. "
                    f"optim.SGD(lr=0.1, momentum=0.9)")
            opt = optim.get(optimizer)
            return opt.from_config(opt.get_config())  # a private copy
        lr = C.check_lr(0.01 if lr is None else lr, self.dtype.type)
        mu, nest, wd = C.check_optimizer(_value(momentum), _value(nesterov), _value(weight_decay))
        return optim.SGD(lr=lr, momentum=mu, nesterov=nest, weight_decay=wd)

    def step(
        self, X: Any, Y: Any, lr: Optional[float] = None, *,
        optimizer: Optional[OptimizerLike] = None, sample_weight: Any = None,
        seed: int = 0, epoch: int = 0,
    ) -> float:
        """One in-place optimizer update on this batch.

        Without ``optimizer``, plain SGD: θ ← θ − lr ∇ℓ(θ).  With one (a
        :mod:`fastbp.optim` SGD, Adam, AdamW or RMSprop), its update, with
        the model's optimizer state (created on first use, kept afterwards:
        see :meth:`optimizer_state`), exactly as one step of :meth:`fit`.

        Parameters
        ----------
        X, Y : array_like
            One batch, as for :meth:`loss`.
        lr : float, optional
            Learning rate of plain SGD, positive and finite (default 0.01).
            Not with ``optimizer``.
        optimizer : Optimizer, str or dict, optional
            The update to apply (its own ``lr``).
        sample_weight : array_like of shape (n_samples,), optional
            Per-sample weights: the step minimises Σ s_i ℓ_i / Σ s_i.
        seed, epoch : int
            The dropout key of this step (batch index 0); see :meth:`gradients`.

        Returns
        -------
        float
            The batch's (weighted) mean loss before the update.

        Raises
        ------
        ValueError
            For bad arguments, or an ``optimizer`` whose state does not fit
            the model's (see :meth:`reset_optimizer`); the model is unchanged.
        FloatingPointError
            When the loss is NaN or Inf, or the update would make a parameter
            NaN or Inf; the model (and its optimizer state) is then left
            unchanged.
        """
        names = C.feature_names(X)
        Xc, Yc = self._XY(X, Y)
        opt = self._optimizer_of(optimizer, lr)
        if opt.name == "lbfgs":
            raise ValueError("LBFGS takes no single steps: use fit(X, Y, optimizer=LBFGS())")
        n = Xc.shape[0]
        sw = self._weights_of(sample_weight, n)
        seed = _dropout_seed(seed)
        epoch = C.check_int("epoch", epoch, 0)
        with self._lock:
            before = self._theta.copy()
            saved = self._save_opt()
            runner = Epochs(self, Xc, Yc, n, optimizer=opt, sample_weight=sw, seed=seed)
            loss_sum, _, _, _, status = runner.run(None, opt.lr, dropout_epoch=epoch)
            if status:
                self._restore_opt(saved)
                raise FloatingPointError(
                    "the loss is not finite on this batch; the model was not updated"
                )
            if not np.isfinite(self._theta).all():
                np.copyto(self._theta, before)
                self._restore_opt(saved)
                raise FloatingPointError(
                    f"the update made parameters NaN or Inf; the model was not updated. "
                    f"Try a smaller learning rate (lr={opt.lr:g})."
                )
            if names is not None and self._feature_names is None:
                self._feature_names = names
        total = n if sw is None else float(sw.sum(dtype=np.float64))
        return float(loss_sum / total)

    def workspace_nbytes(self, batch_size: int) -> int:
        """Bytes of the kernel workspace a fit with this batch size allocates (once, per call).

        The workspace holds one batch of activations per layer, the outputs, two
        delta buffers, the gathered targets and per-sample losses, and on
        several threads (``get_num_threads()``), when a step splits its rows,
        the weights packed once per step for the GEMMs of its row tiles.  A fit
        allocates more than this (see :attr:`History.workspace_bytes`, which
        reports all of it).
        """
        return int(self._net.workspace_size(int(batch_size), n_threads=get_num_threads(),
                                            itemsize=self.dtype.itemsize)) * self.dtype.itemsize

    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int = _Default(10),  # type: ignore[assignment]
        batch_size: int = _Default(32),  # type: ignore[assignment]
        lr: Optional[float] = None,
        shuffle: bool = _Default(True),  # type: ignore[assignment]
        seed: Optional[int] = None,
        *,
        optimizer: Optional[OptimizerLike] = None,
        momentum: float = _Default(0.0),  # type: ignore[assignment]
        nesterov: bool = _Default(False),  # type: ignore[assignment]
        weight_decay: float = _Default(0.0),  # type: ignore[assignment]
        sample_weight: Any = None,
        clip_grad_norm: Optional[float] = None,
        schedule: ScheduleLike = None,
        validation_data: Optional[Tuple[Any, Any]] = None,
        validation_split: float = 0.0,
        early_stopping: bool = False,
        patience: int = 10,
        callbacks: Optional[Sequence[Callback]] = None,
        verbose: int = 0,
        flush_denormals: bool = True,
    ) -> History:
        """Train by mini-batch gradient descent with an optimizer (SGD by default).

        Each epoch visits the samples in batches of ``batch_size`` (after a
        fresh permutation drawn from ``numpy.random.default_rng(seed)`` when
        ``shuffle``), and applies one optimizer step per batch; the last,
        smaller batch takes the mean over its own rows.  So
        ``fit(shuffle=False)`` equals :meth:`step` on consecutive slices (without
        dropout), and the same seed gives bit-identical weights, for any number
        of threads.  Every epoch runs in compiled code without the GIL, the
        optimizer's update fused into the backward pass, with one workspace
        allocated per call.  With ``optimizer=LBFGS(...)`` the fit is full-batch
        L-BFGS instead (see below).

        Parameters
        ----------
        X : array_like or scipy.sparse matrix of shape (n_samples, n_in)
            A sparse X stays sparse (CSR; bitwise the results of its dense
            copy; docs/sklearn.md, "Sparse input").
        Y : array_like
            Targets, as for :meth:`loss`.
        epochs : int, default 10
            Number of passes over the data (0 trains nothing).
        batch_size : int, default 32
            Samples per step.
        lr : float, optional
            SGD shorthand: the learning rate (of the first epoch, when a
            schedule is given); default 0.01.
        shuffle : bool, default True
            Shuffle the samples afresh before each epoch.
        seed : int or None
            Seed of the shuffling; an int also keys the dropout masks (None:
            a random key).
        optimizer : Optimizer, str or dict, optional
            A :mod:`fastbp.optim` object (``SGD``, ``Adam``, ``AdamW``,
            ``RMSprop``, ``LBFGS``), a name (torch's defaults) or a config
            dict.  Exactly ``torch.optim``'s algorithm with the same
            arguments (decay on biases too; docs/optim.md has the formulas).
            Not together with ``lr``, ``momentum``, ``nesterov``,
            ``weight_decay`` (ValueError).  The object is not modified.
        momentum, nesterov, weight_decay : float, bool, float
            SGD shorthand: ``fit(lr=a, momentum=b, nesterov=c,
            weight_decay=d)`` is ``fit(optimizer=optim.SGD(a, b, c, d))``,
            exactly ``torch.optim.SGD(params, lr, momentum, dampening=0,
            weight_decay, nesterov)``: ``g = ∇ℓ + weight_decay·θ`` (biases
            included), ``v = momentum·v + g``, ``θ -= lr·(g + momentum·v if
            nesterov else v)``.
        sample_weight : array_like of shape (n_samples,), optional
            Weights s_i, finite and >= 0, not all zero (ValueError naming the
            first bad row): each step minimises Σ s_i ℓ_i / Σ s_i over its
            batch (scikit-learn's definition); a batch whose weights sum to
            0 is skipped (no update).  ``loss`` and ``accuracy`` in the
            history are weighted means; the validation data is not weighted.
        clip_grad_norm : float, optional
            ``torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)`` after
            each step's backward pass: the gradient of all parameters is
            scaled by ``clip_grad_norm / (‖g‖₂ + 1e-6)`` when that is < 1.
        schedule : str, Schedule or callable, optional
            Learning rate per epoch, for every optimizer: ``"constant"``,
            ``"step"``, ``"invscaling"``, ``"cosine"``, a
            :mod:`fastbp.schedules` object, or ``f(epoch, lr0) -> lr``, where
            ``lr0`` is the optimizer's ``lr``.
        validation_data : (X_val, Y_val), optional
            Data on which ``val_loss`` (and ``val_accuracy``) are measured after
            each epoch.
        validation_split : float
            Instead of ``validation_data``: hold out this fraction of the
            samples, the last ones (before any shuffling), as Keras does.
        early_stopping : bool
            Stop when ``val_loss`` has not improved for ``patience`` epochs, and
            end with the weights (and optimizer state) of the epoch with the
            lowest ``val_loss``.  Needs validation data.
        patience : int
            Epochs without improvement before early stopping.
        callbacks : sequence of callables, optional
            Each is called after every epoch as ``cb(epoch, logs)`` (or
            ``cb.on_epoch_end(epoch, logs)``), ``logs`` holding the epoch's
            metrics (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
            ``lr``, ``seconds``); a callback returning True stops training.
        verbose : int
            0: silent.  1: a live progress bar (tqdm, when installed) or one
            line per epoch on stderr.
        flush_denormals : bool
            Run the epochs with flush-to-zero / denormals-are-zero on (x86),
            in every thread, restored afterwards.  Denormal numbers (below
            ~1e-38 in float32) slow arithmetic down 10x or more; flushing
            them to zero changes results only where such tiny values occur.

        Every boolean option must be ``bool`` or ``numpy.bool_``.  When ``X``
        is a data frame with string column names, the first fit records them
        as :attr:`feature_names_in_`; later frames must match them.

        The optimizer's state (SGD's velocity, Adam's moments and step
        count, ...) is the model's: it persists across ``fit`` and ``step``
        calls, files and pickles (:meth:`optimizer_state`), and is rewound
        with the weights.  A stateful optimizer whose algorithm or state
        layout differs from the stored state's is a ValueError until
        :meth:`reset_optimizer`; other hyper-parameters may change between
        fits.  Optimizers without state (SGD without momentum, L-BFGS)
        leave the stored state as it is.

        **L-BFGS** (``optimizer=optim.LBFGS(max_iter, max_fun, tol)``, needs
        scipy): minimises the full-batch (weighted) mean loss with
        :func:`scipy.optimize.minimize` (``method="L-BFGS-B"``), each
        evaluation one GIL-free kernel call over all the samples.  The
        history has one entry per iteration (``lr`` is empty); validation,
        early stopping (per iteration), callbacks, ``sample_weight`` and
        ``verbose`` work as above.  ``epochs``, ``batch_size``, ``lr``,
        ``shuffle``, the SGD shorthand, ``schedule`` and ``clip_grad_norm``
        mean nothing for it and are a ValueError when given; so is a model
        with dropout (the objective must be deterministic).

        Returns
        -------
        History
            Per-epoch ``loss``, ``accuracy`` (classification losses),
            ``val_loss``, ``val_accuracy``, ``lr`` and ``seconds``, and
            ``workspace_bytes``, the memory the fit allocated.

        Raises
        ------
        ValueError
            For any bad argument or option, checked before training starts
            (for a schedule: its first rate, and every rate of a built-in
            schedule); the model is unchanged.  When a later rate of a
            schedule of one's own is bad, or a callback raises (any
            exception), the model is restored to its state before the call
            (parameters, optimizer state, feature names) and the error
            re-raised.
        FloatingPointError
            When the loss becomes NaN or Inf; the model is left at the last
            step whose loss was finite.
        KeyboardInterrupt
            On Ctrl-C, within a fraction of a second; the model is left at the
            last completed step.
        """
        # Everything that can be checked is checked before the model changes.
        names = C.feature_names(X)
        Xc, Yc = self._XY(X, Y)
        opt = self._optimizer_of(optimizer, lr, momentum, nesterov, weight_decay)
        lbfgs = opt.name == "lbfgs"
        if lbfgs:
            given = [name for name, v in (("epochs", epochs), ("batch_size", batch_size),
                                          ("shuffle", shuffle)) if _given(v)]
            given += [name for name, v in (("schedule", schedule),
                                           ("clip_grad_norm", clip_grad_norm)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} mean nothing for full-batch LBFGS "
                                 f"(it stops by max_iter, max_fun and tol): leave them out")
            if self._dropout is not None:
                raise ValueError("LBFGS minimises a deterministic full-batch objective: a model "
                                 "with dropout cannot be fit with it")
        epochs, batch_size = C.check_fit_args(_value(epochs), _value(batch_size))
        shuffle = C.check_bool("shuffle", _value(shuffle))
        early_stopping = C.check_bool("early_stopping", early_stopping)
        flush_denormals = C.check_bool("flush_denormals", flush_denormals)
        clip = C.check_clip_norm(clip_grad_norm)
        if not isinstance(verbose, (bool, np.bool_)):
            C.check_int("verbose", verbose, 0)
        verbose = int(verbose)
        patience = C.check_int("patience", patience, 1)
        sw = self._weights_of(sample_weight, Xc.shape[0])
        X_conv = _allocated(Xc, X) + _allocated(Yc, Y)
        if sw is not None:
            X_conv += _allocated(sw, sample_weight)
        n_all = Xc.shape[0]
        Xc, Yc, val = C.check_validation(Xc, Yc, validation_data, validation_split, self._XY)
        if sw is not None and Xc.shape[0] < n_all:
            sw = sw[: Xc.shape[0]]
            if not sw.any():
                raise ValueError("sample_weight is all zero on the training rows "
                                 "(validation_split holds out the others)")
        if early_stopping and val is None:
            raise ValueError("early_stopping needs validation_data or validation_split")
        if validation_data is not None:
            X_conv += _allocated(val[0], validation_data[0]) + _allocated(val[1], validation_data[1])
        callbacks = C.check_callbacks(callbacks)
        if lbfgs:
            return self._fit_lbfgs(opt, Xc, Yc, sw, val, names, early_stopping, patience,
                                   callbacks, verbose, X_conv)
        lr0 = float(opt.lr)  # type: ignore[attr-defined]
        lr_of = schedules.resolve(schedule, epochs)
        lr_first, schedule_checked = schedules.check_ahead(lr_of, epochs, lr0)
        rng = np.random.default_rng(seed)
        drop_seed = 0
        if self._dropout is not None:
            # The masks' key: an int seed itself; None a fresh random key; a
            # Generator or SeedSequence one draw of the shuffling's generator.
            if seed is None:
                drop_seed = int(np.random.default_rng().integers(0, 2**63))
            elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
                drop_seed = _dropout_seed(seed)
            else:
                drop_seed = int(rng.bit_generator.random_raw())
        n = Xc.shape[0]
        n_batches = -(-n // batch_size)
        total = float(n) if sw is None else float(sw.sum(dtype=np.float64))
        classify = self.loss_name in C.CLASSIFICATION_LOSSES

        hist = History()
        progress = Progress(verbose, epochs, n_batches, n)
        best_val, since_best = np.inf, 0

        with self._lock:
            # User code (callbacks, a schedule of one's own) runs between
            # epochs and may raise: then the model goes back to this copy.
            stateful = bool(opt.state_names())
            had_state = self._opt_state is not None
            restore, restore_bytes = None, 0
            if callbacks or not schedule_checked:
                # Only a stateful optimizer changes the state.
                opt_saved = self._save_opt() if stateful else self._save_opt(copy=False)
                restore = (self._theta.copy(), opt_saved, self._feature_names)
                restore_bytes += restore[0].nbytes + (_state_nbytes(opt_saved[2])
                                                      if stateful else 0)
            runner = Epochs(
                self, Xc, Yc, batch_size, optimizer=opt, flush_denormals=flush_denormals,
                sample_weight=sw, clip_norm=clip, seed=drop_seed,
            )
            best = None  # the best epoch's (theta, optimizer state) under early stopping
            if early_stopping:
                best = (np.empty_like(self._theta), runner.empty_state_copy())
            hist.workspace_bytes = self._fit_bytes(
                runner, n, epochs, shuffle, X_conv, val, restore_bytes, best,
                new_state=stateful and not had_state,
            )
            if names is not None and self._feature_names is None:
                self._feature_names = names
            diverged = False
            try:
                for epoch in range(epochs):
                    lr_e = lr_first if epoch == 0 else schedules.check_lr_value(
                        lr_of(epoch, lr0), epoch)
                    order = None
                    if shuffle:
                        order = np.asarray(rng.permutation(n), dtype=np.int64)
                    t0 = time.perf_counter()
                    progress.start_epoch(epoch)
                    try:
                        loss_sum, hit_sum, _ = runner.epoch(order, lr_e, epoch, progress)
                    except FloatingPointError:
                        diverged = True  # rewound to the last good step: kept
                        raise
                    logs: Dict[str, Any] = {
                        "epoch": epoch,
                        "loss": loss_sum / total,
                        "accuracy": hit_sum / total if classify else None,
                        "lr": lr_e,
                    }
                    if val is not None:
                        v_loss, v_hit = self._net.loss(
                            self._theta, val[0], val[1], self._chunk_rows(), get_num_threads()
                        )
                        logs["val_loss"] = v_loss
                        logs["val_accuracy"] = v_hit if classify else None
                    logs["seconds"] = time.perf_counter() - t0
                    hist.record(logs)
                    progress.end_epoch(epoch, logs)

                    stop = False
                    if best is not None:
                        if logs["val_loss"] < best_val:
                            best_val, since_best = logs["val_loss"], 0
                            np.copyto(best[0], self._theta)
                            runner.copy_state(best[1])
                            hist.best_epoch = epoch
                        else:
                            since_best += 1
                            stop = since_best >= patience
                    for hook in callbacks:
                        stop = bool(hook(epoch, dict(logs))) or stop
                    if stop:
                        hist.stopped_early = epoch < epochs - 1
                        break
                if best is not None and hist.best_epoch is not None:
                    # The best epoch's weights, and its optimizer state.
                    np.copyto(self._theta, best[0])
                    runner.set_state(best[1])
            except KeyboardInterrupt:
                raise  # Ctrl-C: left at the last completed step
            except BaseException:
                if restore is not None and not diverged:
                    np.copyto(self._theta, restore[0])
                    self._restore_opt(restore[1])
                    self._feature_names = restore[2]
                raise
            finally:
                progress.close()
                del runner  # the workspace goes before the lock is released
        return hist

    def _fit_lbfgs(
        self, opt: optim.LBFGS, X: np.ndarray, Y: np.ndarray, sw: Optional[np.ndarray],
        val: Optional[Tuple[np.ndarray, np.ndarray]], names: Optional[np.ndarray],
        early_stopping: bool, patience: int, callbacks: List[Any], verbose: int, X_conv: int,
    ) -> History:
        """fit(optimizer=LBFGS(...)): full-batch L-BFGS-B through scipy."""
        optim._import_scipy_optimize()  # a clear ImportError before anything changes
        n_threads = get_num_threads()
        kw = {} if sw is None else {"sample_weight": sw}
        classify = self.loss_name in C.CLASSIFICATION_LOSSES
        grad = np.empty_like(self._theta)
        hist = History()
        item = self.dtype.itemsize
        # One kernel call at a time: the gradients' workspace for all the
        # rows, or a per-iteration loss call's (on X, and on the validation
        # rows when given); the gradient and the restore
        # copy; scipy's float64 vectors (x, g, copies, the 2 x 10 correction
        # pairs and its work arrays: about 38 of n_params, measured with
        # tracemalloc); the best iterate under early stopping.
        chunk = max(1, min(self._chunk_rows(), X.shape[0]))
        sparse = dict(sparse=_sparse.is_sparse(X), nnz_per_row=_sparse.nnz_per_row(X))
        calls = [self._net.workspace_size(X.shape[0], "gradients", n_threads=n_threads,
                                          itemsize=item, **sparse),
                 self._net.workspace_size(chunk, "loss", n_threads=n_threads,
                                          itemsize=item, **sparse)]
        if val is not None:   # each iteration's loss call on the validation rows
            calls.append(self._net.workspace_size(
                max(1, min(self._chunk_rows(), val[0].shape[0])), "loss", n_threads=n_threads,
                itemsize=item, sparse=_sparse.is_sparse(val[0]),
                nnz_per_row=_sparse.nnz_per_row(val[0])))
        hist.workspace_bytes = int(
            max(calls) * item
            + X_conv + grad.nbytes + self._theta.nbytes + 38 * 8 * self.n_params
            + (self._theta.nbytes if early_stopping else 0)
        )

        def fun_and_grad(theta: np.ndarray) -> Tuple[float, np.ndarray]:
            loss = self._net.gradients(theta, X, Y, grad, n_threads, **kw)
            return float(loss), grad

        state = {"iteration": 0, "best_val": np.inf, "since": 0, "t0": time.perf_counter()}
        best = np.empty_like(self._theta) if early_stopping else None

        def on_iteration(theta: np.ndarray) -> bool:
            it = state["iteration"]
            np.copyto(self._theta, theta)  # callbacks see the current iterate
            loss, hit = self._net.loss(self._theta, X, Y, self._chunk_rows(), n_threads, **kw)
            logs: Dict[str, Any] = {"epoch": it, "loss": loss,
                                    "accuracy": hit if classify else None, "lr": None}
            if val is not None:
                v_loss, v_hit = self._net.loss(self._theta, val[0], val[1], self._chunk_rows(),
                                               n_threads)
                logs["val_loss"] = v_loss
                logs["val_accuracy"] = v_hit if classify else None
            now = time.perf_counter()
            logs["seconds"], state["t0"] = now - state["t0"], now
            hist.record(logs)
            if verbose:  # one line per iteration (no per-batch bar: there are no batches)
                shown = "  ".join(f"{k} {logs[k]:.4g}" for k in
                                  ("loss", "accuracy", "val_loss", "val_accuracy")
                                  if logs.get(k) is not None)
                print(f"L-BFGS iteration {it + 1}/{opt.max_iter}  {shown}  "
                      f"{logs['seconds']:.2f}s", file=sys.stderr, flush=True)
            state["iteration"] = it + 1
            stop = False
            if best is not None:
                if logs["val_loss"] < state["best_val"]:
                    state["best_val"], state["since"] = logs["val_loss"], 0
                    np.copyto(best, self._theta)
                    hist.best_epoch = it
                else:
                    state["since"] += 1
                    stop = state["since"] >= patience
            for hook in callbacks:
                stop = bool(hook(it, dict(logs))) or stop
            if stop:
                hist.stopped_early = True
            return stop

        with self._lock:
            restore = (self._theta.copy(), self._feature_names)
            if names is not None and self._feature_names is None:
                self._feature_names = names
            try:
                result = opt.minimize(fun_and_grad, self._theta.copy(), callback=on_iteration)
                if not np.isfinite(result.theta).all() or not np.isfinite(result.loss):
                    # Back to the last iterate (copied by on_iteration), or the start.
                    if state["iteration"] == 0:
                        np.copyto(self._theta, restore[0])
                    raise FloatingPointError(
                        f"L-BFGS diverged after {state['iteration']} iterations (the loss or "
                        "the parameters became NaN or Inf); the weights are restored to the "
                        "last good iterate.")
                np.copyto(self._theta, result.theta)
                if best is not None and hist.best_epoch is not None:
                    np.copyto(self._theta, best)
            except (KeyboardInterrupt, FloatingPointError):
                raise  # left at the last completed iteration
            except BaseException:
                np.copyto(self._theta, restore[0])
                self._feature_names = restore[1]
                raise
        return hist

    def _fit_bytes(
        self, runner: "Epochs", n: int, epochs: int, shuffle: bool, converted: int,
        val: Optional[Tuple[np.ndarray, np.ndarray]], restore_bytes: int,
        best: Optional[Tuple[np.ndarray, Dict[str, Any]]], new_state: bool,
    ) -> int:
        """Bytes a fit allocates (see History.workspace_bytes)."""
        item = self.dtype.itemsize
        total = runner.nbytes + converted + restore_bytes
        if new_state:
            total += runner.state_nbytes
        if epochs:
            total += runner.snapshot_nbytes
        if best is not None:
            total += best[0].nbytes + _state_nbytes(best[1])
        if shuffle and epochs:
            # One int64 permutation per epoch; the previous one is alive while
            # the next is drawn (the rewind may replay the previous epoch).
            total += 8 * n * min(epochs, 2)
        if val is not None and epochs:
            rows = max(1, min(self._chunk_rows(), val[0].shape[0]))
            total += int(self._net.workspace_size(
                rows, "loss", n_threads=get_num_threads(), itemsize=item,
                sparse=_sparse.is_sparse(val[0]), nnz_per_row=_sparse.nnz_per_row(val[0]))) * item
        return int(total)

    # -- files and other frameworks -----------------------------------------

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Save the model and its optimizer state, atomically.

        The parameters, optimizer state and feature names are read under the
        model's lock, so a save issued while another thread fits the model
        waits for that fit to end and writes one consistent state (a callback
        of the fit itself may save: the lock is re-entrant).  See
        :func:`fastbp.io.save` and docs/model-format.md; read back with
        :func:`fastbp.load`.
        """
        from . import io as _io

        _io.save(self, path)

    def to_torch(self) -> "torch.nn.Sequential":
        """The same network as a ``torch.nn.Sequential`` (needs PyTorch).

        See :func:`fastbp.torch_interop.to_torch`.
        """
        from .torch_interop import to_torch

        return to_torch(self)

    def to_onnx(self, path: Optional[Union[str, "os.PathLike[str]"]] = None,
                **kwargs: Any) -> Any:
        """The same network as an ``onnx.ModelProto``, also written to ``path`` if given.

        Needs the ``onnx`` package; see :func:`fastbp.onnx_export.to_onnx`.
        """
        from .onnx_export import to_onnx

        return to_onnx(self, path, **kwargs)

    @classmethod
    def from_torch(
        cls, module: Any, *, loss: Optional[str] = None, dtype: Any = None,
        activation: Optional[str] = None,
    ) -> "MLP":
        """An MLP from a PyTorch Sequential of Linear layers and activations.

        See :func:`fastbp.torch_interop.from_torch`.
        """
        from .torch_interop import from_torch

        return from_torch(module, loss=loss, dtype=dtype, activation=activation)

    # -- optimizer state ----------------------------------------------------

    def optimizer_state(self) -> Dict[str, Any]:
        """A copy of the optimizer's state, for saving and resuming.

        Returns
        -------
        dict
            Empty until a fit or step with a stateful optimizer (SGD with
            momentum, Adam, AdamW, RMSprop) has run.  Then:
            ``"optimizer"``, the :meth:`~fastbp.optim.Optimizer.get_config`
            dict of the optimizer that trained last (its own ``lr``, not a
            schedule's rates); ``"step"``, the
            number of updates applied; and one flat array of ``n_params`` per
            state name of the optimizer, in the model's parameter order:
            torch's names (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
            ``square_avg``, ``momentum_buffer``, ``grad_avg``), except SGD's
            momentum buffer, called ``"velocity"`` (its name in every
            fastbp version).  A velocity restored from a version 1 or 2
            model file or an older pickle comes alone: ``{"velocity": v}``.
        """
        with self._lock:
            st = self._opt_state
            if st is None:
                return {}
            out: Dict[str, Any] = {}
            if self._opt_config is not None:
                out["optimizer"] = dict(self._opt_config)
            if st["step"] is not None:
                out["step"] = int(st["step"])
            for key, arr in st.items():
                if key != "step":
                    out[self._public_name(key)] = arr.copy()
            return out

    def _public_name(self, key: str) -> str:
        return _SGD_PUBLIC.get(key, key) if self._opt_name == "sgd" else key

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` returned (copies are taken).

        Parameters
        ----------
        state : dict
            ``{}`` (no state), ``{"velocity": array}`` (SGD momentum, as older
            versions kept it; ``None`` means none), or ``{"optimizer": config
            or Optimizer, "step": int, <each state name>: array (n_params,)}``.

        Raises
        ------
        ValueError
            Naming the first unknown, missing or malformed entry; the model
            is then unchanged.
        """
        if not isinstance(state, dict):
            raise ValueError(f"optimizer state must be a dict, got {type(state).__name__}")
        n, dt = self.n_params, self.dtype.type
        if "optimizer" not in state:
            unknown = sorted(set(state) - {"velocity"})
            if unknown:
                raise ValueError(f"unknown optimizer state keys {unknown} (without an "
                                 "'optimizer' entry only a 'velocity' is understood)")
            v = state.get("velocity")
            with self._lock:
                if v is None:
                    self.reset_optimizer()
                    return
                arr = C._param("velocity", v, (n,), dt)
                self._opt_name, self._opt_config = "sgd", None
                self._opt_state = {"step": None, "momentum_buffer": arr}
            return
        opt = optim.get(state["optimizer"])
        names = opt.state_names()
        internal = {"step": state.get("step")}
        public_of = (lambda k: _SGD_PUBLIC.get(k, k)) if opt.name == "sgd" else (lambda k: k)
        expected = {"optimizer", "step"} | {public_of(k) for k in names}
        unknown = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unknown or missing:
            raise ValueError(f"optimizer state for {opt!r} needs keys {sorted(expected)}; "
                             f"missing {missing}, unexpected {unknown}")
        for key in names:
            internal[key] = C._param(public_of(key), state[public_of(key)], (n,), dt)
        opt.check_state(internal, n, dt)  # the step
        internal["step"] = int(np.asarray(internal["step"]).item())
        with self._lock:
            if not names:  # stateless optimizers keep nothing
                self.reset_optimizer()
                return
            self._opt_name, self._opt_config, self._opt_state = opt.name, opt.get_config(), internal

    def reset_optimizer(self) -> None:
        """Forget the optimizer state: the next fit starts from rest (step 0, zero moments)."""
        with self._lock:
            self._opt_name = self._opt_config = self._opt_state = None

    @property
    def _velocity(self) -> Optional[np.ndarray]:
        """The live SGD momentum buffer (None without one); for fastbp.sklearn's tests."""
        st = self._opt_state
        return st["momentum_buffer"] if st is not None and self._opt_name == "sgd" else None

    def _check_optimizer_state(self, opt: optim.Optimizer) -> None:
        """ValueError when ``opt`` cannot continue from the stored state."""
        names = opt.state_names()
        st = self._opt_state
        if not names or st is None:
            return
        have = sorted(k for k in st if k != "step")
        if self._opt_name != opt.name or have != sorted(names):
            what = (optim.get(self._opt_config) if self._opt_config is not None
                    else f"{self._opt_name} with {have}")
            raise ValueError(
                f"the model holds the optimizer state of {what!r} (state "
                f"{[self._public_name(k) for k in have]}), which {opt!r} cannot continue "
                f"(it needs {list(names)}); call reset_optimizer() to start it afresh")

    def _save_opt(self, copy: bool = True) -> Tuple[Any, Any, Any]:
        """(name, config, state) of the optimizer state, its arrays copied."""
        st = self._opt_state
        if copy and st is not None:
            st = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
        return self._opt_name, self._opt_config, st

    def _restore_opt(self, saved: Tuple[Any, Any, Any]) -> None:
        self._opt_name, self._opt_config, self._opt_state = saved


def _state_nbytes(state: Optional[Dict[str, Any]]) -> int:
    if not state:
        return 0
    return int(sum(v.nbytes for k, v in state.items() if isinstance(v, np.ndarray)))


def _dropout_seed(seed: Any) -> int:
    """A dropout key from an integer seed (taken modulo 2**64)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"the dropout seed must be an integer, got {seed!r}")
    return int(seed) % (1 << 64)


class Epochs:
    """Runs training epochs of one data set through the compiled loop.

    Everything a fit needs is allocated here, once: the workspace (one
    batch of activations per layer, deltas, gathered targets), the gradient
    for the optimizer path, and the start-of-epoch copies used to rewind on
    divergence; the optimizer state is the model's own (persistent), created
    here when the model has none.  ``MLP.fit``, ``MLP.step`` and
    :mod:`fastbp.sklearn` drive the kernels through this class.  The caller
    holds the model's lock.

    Parameters
    ----------
    model : MLP
    X, Y : ndarray
        Checked, C-contiguous arrays of the model's dtype.
    batch_size : int
    momentum, nesterov, weight_decay : float, bool, float
        torch.optim.SGD's settings (see :meth:`MLP.fit`), when no
        ``optimizer`` is given.
    l2 : float
        scikit-learn's ``alpha``: each step on m samples minimises the mean
        loss + l2 / (2 m) ||W||^2, over the weights only (with any optimizer).
    flush_denormals : bool
        Run with FTZ/DAZ on.
    optimizer : fastbp.optim.Optimizer, optional
        SGD, Adam, AdamW or RMSprop (its ``lr`` is replaced by each call's).
    sample_weight : ndarray (n_samples,), optional
        Checked weights of the model's dtype.
    clip_norm : float
        > 0: clip each step's gradient to this global 2-norm (torch's
        clip_grad_norm_).
    seed : int
        Key of the dropout masks (the model's ``dropout``).
    sklearn_weights : bool
        With ``sample_weight``, scikit-learn 1.9's scaling of a weighted
        batch (its l2 term over the batch's weight sum; the loss sums as
        scikit-learn accumulates them): ``Network.fit_epoch``'s keyword.

    Raises
    ------
    ValueError
        When the optimizer cannot continue the model's stored state.
    """

    def __init__(
        self, model: "MLP", X: np.ndarray, Y: np.ndarray, batch_size: int, *,
        momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
        l2: float = 0.0, flush_denormals: bool = True, optimizer: Optional[optim.Optimizer] = None,
        sample_weight: Optional[np.ndarray] = None, clip_norm: float = 0.0, seed: int = 0,
        sklearn_weights: bool = False,
    ) -> None:
        nesterov = C.check_bool("nesterov", nesterov)
        flush_denormals = C.check_bool("flush_denormals", flush_denormals)
        self._lr_from_run = optimizer is None
        if optimizer is None:
            # (fastbp.sklearn passes nesterov=True with momentum 0: plain SGD.)
            optimizer = optim.SGD(momentum=momentum, nesterov=nesterov and momentum != 0,
                                  weight_decay=weight_decay)
        elif momentum or nesterov or weight_decay:
            raise ValueError("give momentum, nesterov and weight_decay in the optimizer object")
        if optimizer.name == "lbfgs":
            raise ValueError("LBFGS is full-batch: it takes no mini-batch epochs")
        model._check_optimizer_state(optimizer)
        self.model, self.X, self.Y, self.batch_size = model, X, Y, batch_size
        self.optimizer = optimizer
        n, dtype = X.shape[0], model.dtype
        self.n_batches = -(-n // batch_size)
        empty = np.empty(0, dtype=dtype)
        self.state: Optional[Dict[str, Any]] = None
        if optimizer.state_names():
            if model._opt_state is None:
                model._opt_name = optimizer.name
                model._opt_state = optimizer.init_state(model.n_params, dtype)
            self.state = model._opt_state
        # Plain SGD and SGD with momentum run the kernels' SGD path (the
        # velocity is SGD's momentum buffer); the others the optimizer path.
        self._sgd = optimizer.name == "sgd"
        if self._sgd:
            sgd: Any = optimizer
            self.velocity = self.state["momentum_buffer"] if self.state is not None else empty
            self.settings: Dict[str, Any] = dict(
                momentum=sgd.momentum, nesterov=sgd.nesterov, weight_decay=sgd.weight_decay,
                l2=l2, flush_denormals=flush_denormals)
            need_grad = bool(sgd.momentum or sgd.weight_decay or l2 or clip_norm)
        else:
            self.velocity = empty
            self.settings = dict(l2=l2, flush_denormals=flush_denormals, optimizer=optimizer,
                                 state=self.state)  # Adam, AdamW, RMSprop: always state
            need_grad = True
        # The new keywords go to the kernel only when used.
        if sample_weight is not None:
            self.settings["sample_weight"] = sample_weight
            if sklearn_weights:
                self.settings["sklearn_weights"] = True
        if clip_norm:
            self.settings["clip_norm"] = float(clip_norm)
        if model._dropout is not None:
            self.settings.update(dropout=model._dropout, seed=int(seed))
        self.sample_weight = sample_weight
        rows = min(batch_size, n)
        # (sparse X: sized by the steps' own plan, nnz_per_row and grad,
        # so that fit_epoch finds its packs here: workspace_size)
        self.ws = np.empty(model._net.workspace_size(rows, "fit", model._dropout,
                                                     sparse=_sparse.is_sparse(X),
                                                     n_threads=get_num_threads(),
                                                     itemsize=np.dtype(dtype).itemsize,
                                                     nnz_per_row=_sparse.nnz_per_row(X),
                                                     grad=need_grad),
                           dtype=dtype)
        self.grad = np.empty_like(model._theta) if need_grad else empty
        # One saved copy of the parameters (and optimizer state) and how to
        # replay forward from it: see epoch() and _fail().
        self._saved: Optional[Tuple[np.ndarray, Optional[Dict[str, Any]]]] = None
        self._anchor: Optional[Tuple[int, Optional[np.ndarray], float]] = None  # (epoch, order, lr)
        self._batch_weights: Optional[Tuple[Optional[np.ndarray], np.ndarray]] = None

    @property
    def nbytes(self) -> int:
        """Bytes of scratch allocated for the fit (workspace and gradient)."""
        return int(self.ws.nbytes + self.grad.nbytes)

    @property
    def state_nbytes(self) -> int:
        """Bytes of the optimizer state's arrays."""
        return _state_nbytes(self.state)

    @property
    def snapshot_nbytes(self) -> int:
        """Bytes of the rewind copy of the parameters and optimizer state (see :meth:`epoch`)."""
        return int(self.model._theta.nbytes + self.state_nbytes)

    # the optimizer state's copies
    def empty_state_copy(self) -> Optional[Dict[str, Any]]:
        """A dict shaped like the optimizer state (for rewinds and the best epoch)."""
        if self.state is None:
            return None
        return {k: (np.empty_like(v) if isinstance(v, np.ndarray) else v)
                for k, v in self.state.items()}

    def copy_state(self, into: Optional[Dict[str, Any]]) -> None:
        """Copy the live optimizer state into ``into`` (from :meth:`empty_state_copy`)."""
        if self.state is None or into is None:
            return
        for k, v in self.state.items():
            if isinstance(v, np.ndarray):
                np.copyto(into[k], v)
            else:
                into[k] = v

    def set_state(self, saved: Optional[Dict[str, Any]]) -> None:
        """Put a copy taken by :meth:`copy_state` back into the live state."""
        if self.state is None or saved is None:
            return
        for k, v in saved.items():
            if isinstance(v, np.ndarray):
                np.copyto(self.state[k], v)
            else:
                self.state[k] = v

    def _updates(self, order: Optional[np.ndarray], first: int, batches: int) -> int:
        """Updates done by ``batches`` steps from ``first`` (a batch of weight 0 does none)."""
        if self.sample_weight is None or batches <= 0:
            return batches
        cached = self._batch_weights
        if cached is None or cached[0] is not order:
            w = self.sample_weight if order is None else self.sample_weight[order]
            starts = np.arange(0, w.shape[0], self.batch_size)
            cached = self._batch_weights = (order, np.add.reduceat(w, starts) > 0)
        return int(np.count_nonzero(cached[1][first:first + batches]))

    def run(
        self, order: Optional[np.ndarray], lr: float, first: int = 0, steps: int = -1,
        snapshot_step: int = -1, dropout_epoch: int = 0,
    ) -> Tuple:
        """Steps ``first`` .. ``first + steps`` of an epoch; the kernel's raw result
        (loss_sum, hit_sum, penalty_sum, n_done, status).  With ``snapshot_step``
        the kernel saves the parameters and optimizer state at that step (see
        :meth:`epoch`).  ``dropout_epoch`` is the epoch of the dropout masks."""
        m = self.model
        saved = self._saved if snapshot_step >= 0 else (None, None)
        kw = dict(self.settings)
        if "dropout" in kw:
            kw["epoch"] = int(dropout_epoch)
        step_before = self.state["step"] if self.state is not None else None
        if self._sgd:
            snap_v = None
            if saved[0] is not None:
                snap_v = saved[1]["momentum_buffer"] if saved[1] is not None else self.velocity
            out = m._net.fit_epoch(
                m._theta, self.X, self.Y, order, self.batch_size, self.ws, self.grad,
                self.velocity, get_num_threads(), lr, first_step=first, max_steps=steps,
                snapshot=saved[0], snapshot_velocity=snap_v, snapshot_step=snapshot_step, **kw,
            )
            if self.state is not None:  # the SGD path leaves the count to us
                batches = -(-int(out[3]) // self.batch_size)
                self.state["step"] = (step_before or 0) + self._updates(order, first, batches)
        else:
            out = m._net.fit_epoch(
                m._theta, self.X, self.Y, order, self.batch_size, self.ws, self.grad,
                self.velocity, get_num_threads(), lr, first_step=first, max_steps=steps,
                snapshot=saved[0], snapshot_state=saved[1], snapshot_step=snapshot_step, **kw,
            )
        if self.state is not None:
            if self._lr_from_run:  # fastbp.sklearn's SGD: its rate is the first call's
                self.optimizer.lr, self._lr_from_run = lr, False
            m._opt_config = self.optimizer.get_config()
        return out

    def epoch(
        self, order: Optional[np.ndarray], lr: float, epoch: int,
        progress: Optional[Progress] = None,
    ) -> Tuple[float, float, float]:
        """One whole epoch; returns the sums of the loss, accuracy and l2 penalty.

        With sample weights the loss and accuracy sums are weighted (Σ s_i ℓ_i).
        With a live progress display, the epoch runs a few batches at a time
        (the result is the same).  When the loss becomes NaN or Inf, or the
        parameters stop being finite, the model is rewound to the last good
        step (see :meth:`_fail`) and FloatingPointError is raised.

        Rewinding needs one saved copy of the parameters (and optimizer
        state): the kernel takes it during each epoch's first step, once that
        step's loss is known to be finite and before its update, so it always
        holds the start of the last epoch whose first loss was finite.
        """
        m = self.model
        if self._saved is None:
            self._saved = (np.empty_like(m._theta), self.empty_state_copy())
        piece = max(1, self.n_batches // 100) if progress is not None and progress.live else -1
        n = self.X.shape[0]
        totals = np.zeros(3)
        steps = 0
        while steps < self.n_batches:
            step_before = self.state["step"] if self.state is not None else None
            *sums, done, status = self.run(order, lr, steps, piece, snapshot_step=0,
                                           dropout_epoch=epoch)
            batches = -(-done // self.batch_size)
            if steps == 0 and batches > 0:
                self._anchor = (epoch, order, lr)
                if self._saved[1] is not None:
                    self._saved[1]["step"] = step_before
            if status:
                self._fail(order, lr, epoch, steps + batches)
            totals += sums
            steps += batches
            if progress is not None:
                seen = min(steps * self.batch_size, n)
                progress.update(batches, seen, totals[0] / seen)
        if not np.isfinite(m._theta).all():  # a step overflowed the weights, not the loss
            self._fail(order, lr, epoch, self.n_batches)
        return float(totals[0]), float(totals[1]), float(totals[2])

    def _fail(self, order: Optional[np.ndarray], lr: float, epoch: int, failed: int) -> None:
        """Rewind to the last good step and raise FloatingPointError.

        Either step ``failed`` of this epoch (0-based) met a non-finite loss
        -- the weights it saw, left by the step before it, are already bad, so
        the last good weights are those that step started from -- or
        (``failed == n_batches``) every loss was finite but the weights are
        not: then the first step that made them non-finite is found, and the
        weights it started from are the last good ones.  Everything (the
        parameters and the optimizer state) is rebuilt from the saved copy by
        replaying steps, which is exact: the kernels are deterministic.
        """
        m = self.model
        assert self._saved is not None

        def restore() -> None:
            np.copyto(m._theta, self._saved[0])
            self.set_state(self._saved[1])

        if self._anchor is not None and self._anchor[0] == epoch:
            restore()  # the start of this epoch
            if failed < self.n_batches:
                if failed >= 2:
                    self.run(order, lr, 0, failed - 1, dropout_epoch=epoch)
            else:  # find the step that overflowed the weights
                failed = 0
                while True:
                    before = (m._theta.copy(), self.empty_state_copy())
                    self.copy_state(before[1])
                    self.run(order, lr, failed, 1, dropout_epoch=epoch)
                    if not np.isfinite(m._theta).all():
                        np.copyto(m._theta, before[0])
                        self.set_state(before[1])
                        break
                    failed += 1
                where = f"batch {failed + 1}, whose update made weights NaN or Inf"
                self._raise(epoch, where, lr)
        elif self._anchor is not None:
            # This epoch's first loss was not finite: go back to the start of
            # the previous epoch and replay it up to its last step.
            restore()
            prev_epoch, prev_order, prev_lr = self._anchor
            if self.n_batches >= 2:
                self.run(prev_order, prev_lr, 0, self.n_batches - 1, dropout_epoch=prev_epoch)
        else:  # the fit's first loss was not finite: nothing better than the start
            assert failed == 0
        self._raise(epoch, f"batch {failed + 1}, whose loss was NaN or Inf", lr)

    @staticmethod
    def _raise(epoch: int, where: str, lr: float) -> None:
        raise FloatingPointError(
            f"training diverged at epoch {epoch + 1}, {where}; the weights are restored "
            f"to the last good step. Try a smaller learning rate (lr={lr:g})."
        )


def _shares(X: Any, arr: np.ndarray) -> bool:
    """Whether the checked X (dense, or a sparse CSR's values) may share arr's memory."""
    return bool(np.may_share_memory(X.data if isinstance(X, _sparse.CSR) else X, arr))


def _allocated(checked: np.ndarray, given: Any) -> int:
    """Bytes of ``checked`` when checking ``given`` allocated it (a converted copy)."""
    if isinstance(checked, _sparse.CSR):
        return _sparse.allocated_bytes(checked, given)
    if checked is given or not checked.flags.owndata:
        return 0
    return int(checked.nbytes)
