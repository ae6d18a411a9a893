"""fastbp.MLP: the public model, a thin layer over the compiled kernels."""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _common as C
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
        self.bias = C.check_bool("bias", bias)
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
        self._velocity: Optional[np.ndarray] = None  # momentum, once a fit uses it
        # Column names of the first data frame trained on (feature_names_in_).
        self._feature_names: Optional[np.ndarray] = None
        # Serialises calls from several Python threads; re-entrant so that a
        # fit callback may call predict/loss on the model.
        self._lock = threading.RLock()

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
        X : array_like of shape (n_samples, n_in)
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
        if np.may_share_memory(Xc, g):
            Xc = Xc.copy()
        if np.may_share_memory(Yc, g):
            Yc = Yc.copy()
        with self._lock:
            loss = float(self._net.gradients(self._theta, Xc, Yc, g, get_num_threads()))
        if reduction == "sum":
            m = Xc.shape[0]
            g *= self.dtype.type(m)
            loss *= m
        return loss, g

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
        )
        with self._lock:
            state = {"config": config, "theta": self._theta.copy(), **self.optimizer_state()}
            if self._feature_names is not None:
                state["feature_names_in_"] = list(self._feature_names)
            return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state["config"])  # type: ignore[misc]
        theta = C._param("theta", state["theta"], self._theta.shape, self.dtype.type)
        self._theta[...] = theta
        self.set_optimizer_state({k: v for k, v in state.items() if k == "velocity"})
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
        return (
            f"MLP({list(self.layer_sizes)}, activation={self.activation!r}, "
            f"output={self.output!r}, loss={self.loss_name!r}, bias={self.bias}, "
            f"dtype={self.dtype.name!r})"
        )

    # -- checking -----------------------------------------------------------

    def _chunk_rows(self) -> int:
        macs_per_row = sum(a * b for a, b in zip(self.layer_sizes, self.layer_sizes[1:]))
        return max(16, min(_CHUNK_ROWS, _CHUNK_MACS // macs_per_row))

    def _X(self, X: Any) -> np.ndarray:
        C.check_feature_names(self._feature_names, X, type(self).__name__)
        return C.check_X(X, self.layer_sizes[0], self.dtype.type)

    def _XY(self, X: Any, Y: Any) -> Tuple[np.ndarray, np.ndarray]:
        Xc = self._X(X)
        Yc = C.check_Y(Y, Xc.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype.type)
        # Training writes the parameters while it reads X and Y: data that is
        # (a view of) the parameters themselves is read from a copy.
        if np.may_share_memory(Xc, self._theta):
            Xc = Xc.copy()
        if np.may_share_memory(Yc, self._theta):
            Yc = Yc.copy()
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
            self._net.predict(self._theta, Xc, out, self._chunk_rows(), get_num_threads())
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
            loss, _ = self._net.loss(self._theta, Xc, Yc, self._chunk_rows(), get_num_threads())
        return float(loss)

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
        grads: Grads = [
            (self._view_w(k, g), self._view_b(k, g) if self.bias else None)
            for k in range(self.n_layers)
        ]
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
            When the loss is NaN or Inf, or the update would make a parameter
            NaN or Inf; the model is then left unchanged.
        """
        names = C.feature_names(X)
        Xc, Yc = self._XY(X, Y)
        lr = C.check_lr(lr, self.dtype.type)
        n = Xc.shape[0]
        with self._lock:
            before = self._theta.copy()
            loss_sum, _, _, _, status = Epochs(self, Xc, Yc, n).run(None, lr)
            if status:
                raise FloatingPointError(
                    "the loss is not finite on this batch; the model was not updated"
                )
            if not np.isfinite(self._theta).all():
                np.copyto(self._theta, before)
                raise FloatingPointError(
                    f"the update made parameters NaN or Inf; the model was not updated. "
                    f"Try a smaller learning rate (lr={lr:g})."
                )
            if names is not None and self._feature_names is None:
                self._feature_names = names
        return float(loss_sum / n)

    def workspace_nbytes(self, batch_size: int) -> int:
        """Bytes of the kernel workspace a fit with this batch size allocates (once, per call).

        The workspace holds one batch of activations per layer, the outputs, two
        delta buffers, the gathered targets and per-sample losses.  A fit
        allocates more than this (see :attr:`History.workspace_bytes`, which
        reports all of it).
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
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        schedule: ScheduleLike = None,
        validation_data: Optional[Tuple[Any, Any]] = None,
        validation_split: float = 0.0,
        early_stopping: bool = False,
        patience: int = 10,
        callbacks: Optional[Sequence[Callback]] = None,
        verbose: int = 0,
        flush_denormals: bool = True,
    ) -> History:
        """Train by mini-batch SGD.

        Each epoch visits the samples in batches of ``batch_size`` (after a
        fresh permutation drawn from ``numpy.random.default_rng(seed)`` when
        ``shuffle``), and applies one SGD step per batch; the last, smaller
        batch takes the mean over its own rows.  So ``fit(shuffle=False)``
        equals :meth:`step` on consecutive slices, and the same seed gives
        bit-identical weights, for any number of threads.  Every epoch runs in
        compiled code without the GIL, with one workspace allocated per call.

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
            Learning rate (of the first epoch, when a schedule is given).
        shuffle : bool
            Shuffle the samples afresh before each epoch.
        seed : int or None
            Seed of the shuffling.
        momentum, nesterov, weight_decay : float, bool, float
            Exactly ``torch.optim.SGD(params, lr, momentum, dampening=0,
            weight_decay, nesterov)``: ``g = ∇ℓ + weight_decay·θ`` (biases
            included), ``v = momentum·v + g``, ``θ -= lr·(g + momentum·v if
            nesterov else v)``.  The velocity ``v`` is the model's optimizer
            state: it persists across ``fit`` calls (see
            :meth:`optimizer_state`, :meth:`reset_optimizer`).
        schedule : str, Schedule or callable, optional
            Learning rate per epoch: ``"constant"``, ``"step"``,
            ``"invscaling"``, ``"cosine"``, a :mod:`fastbp.schedules` object, or
            ``f(epoch, lr0) -> lr``.
        validation_data : (X_val, Y_val), optional
            Data on which ``val_loss`` (and ``val_accuracy``) are measured after
            each epoch.
        validation_split : float
            Instead of ``validation_data``: hold out this fraction of the
            samples, the last ones (before any shuffling), as Keras does.
        early_stopping : bool
            Stop when ``val_loss`` has not improved for ``patience`` epochs, and
            end with the weights of the epoch with the lowest ``val_loss``.
            Needs validation data.
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
            (parameters, velocity, feature names) and the error re-raised.
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
        epochs, batch_size = C.check_fit_args(epochs, batch_size)
        lr0 = C.check_lr(lr, self.dtype.type)
        shuffle = C.check_bool("shuffle", shuffle)
        early_stopping = C.check_bool("early_stopping", early_stopping)
        flush_denormals = C.check_bool("flush_denormals", flush_denormals)
        momentum, nesterov, weight_decay = C.check_optimizer(momentum, nesterov, weight_decay)
        if not isinstance(verbose, (bool, np.bool_)):
            C.check_int("verbose", verbose, 0)
        verbose = int(verbose)
        patience = C.check_int("patience", patience, 1)
        X_conv = _allocated(Xc, X) + _allocated(Yc, Y)
        Xc, Yc, val = self._validation(Xc, Yc, validation_data, validation_split)
        if early_stopping and val is None:
            raise ValueError("early_stopping needs validation_data or validation_split")
        if validation_data is not None:
            X_conv += _allocated(val[0], validation_data[0]) + _allocated(val[1], validation_data[1])
        lr_of = schedules.resolve(schedule, epochs)
        lr_first, schedule_checked = schedules.check_ahead(lr_of, epochs, lr0)
        callbacks = C.check_callbacks(callbacks)
        rng = np.random.default_rng(seed)
        n = Xc.shape[0]
        n_batches = -(-n // batch_size)
        classify = self.loss_name != "squared_error"

        hist = History()
        progress = Progress(verbose, epochs, n_batches, n)
        best_val, since_best = np.inf, 0

        with self._lock:
            # User code (callbacks, a schedule of one's own) runs between
            # epochs and may raise: then the model goes back to this copy.
            restore, restore_bytes = None, 0
            if callbacks or not schedule_checked:
                velocity = self._velocity
                if momentum and velocity is not None:  # only a fit with momentum changes it
                    velocity = velocity.copy()
                    restore_bytes += velocity.nbytes
                restore = (self._theta.copy(), velocity, self._feature_names)
                restore_bytes += restore[0].nbytes
            velocity_existed = self._velocity is not None
            runner = Epochs(
                self, Xc, Yc, batch_size, momentum=momentum, nesterov=nesterov,
                weight_decay=weight_decay, flush_denormals=flush_denormals,
            )
            best = None  # the best epoch's (theta, velocity) under early stopping
            if early_stopping:
                best = (np.empty_like(self._theta), np.empty_like(runner.velocity))
            hist.workspace_bytes = self._fit_bytes(
                runner, n, epochs, shuffle, X_conv, val, restore_bytes, best,
                new_velocity=runner.velocity.size > 0 and not velocity_existed,
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
                        "loss": loss_sum / n,
                        "accuracy": hit_sum / n if classify else None,
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
                            np.copyto(best[1], runner.velocity)
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
                    # The best epoch's weights, and its momentum.
                    np.copyto(self._theta, best[0])
                    np.copyto(runner.velocity, best[1])
            except KeyboardInterrupt:
                raise  # Ctrl-C: left at the last completed step
            except BaseException:
                if restore is not None and not diverged:
                    np.copyto(self._theta, restore[0])
                    self._velocity = restore[1]
                    self._feature_names = restore[2]
                raise
            finally:
                progress.close()
                del runner  # the workspace goes before the lock is released
        return hist

    def _fit_bytes(
        self, runner: "Epochs", n: int, epochs: int, shuffle: bool, converted: int,
        val: Optional[Tuple[np.ndarray, np.ndarray]], restore_bytes: int,
        best: Optional[Tuple[np.ndarray, np.ndarray]], new_velocity: bool,
    ) -> int:
        """Bytes a fit allocates (see History.workspace_bytes)."""
        item = self.dtype.itemsize
        total = runner.nbytes + converted + restore_bytes
        if new_velocity:
            total += runner.velocity.nbytes
        if epochs:
            total += runner.snapshot_nbytes
        if best is not None:
            total += best[0].nbytes + best[1].nbytes
        if shuffle and epochs:
            # One int64 permutation per epoch; the previous one is alive while
            # the next is drawn (the rewind may replay the previous epoch).
            total += 8 * n * min(epochs, 2)
        if val is not None and epochs:
            rows = max(1, min(self._chunk_rows(), val[0].shape[0]))
            total += int(self._net.workspace_size(rows, "loss")) * item
        return int(total)

    def _validation(
        self, X: np.ndarray, Y: np.ndarray, data: Optional[Tuple[Any, Any]], split: float
    ) -> Tuple[np.ndarray, np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]:
        """Training arrays and the checked validation pair (or None)."""
        if data is not None:
            if split:
                raise ValueError("give validation_data or validation_split, not both")
            try:
                Xv, Yv = data
            except (TypeError, ValueError):
                raise ValueError("validation_data must be a pair (X_val, Y_val)") from None
            return X, Y, self._XY(Xv, Yv)
        if isinstance(split, (str, bytes, bool, np.bool_)):
            raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}")
        try:
            split = float(split)
        except (TypeError, ValueError):
            raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}") from None
        if not 0.0 <= split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {split!r}")
        if split == 0.0:
            return X, Y, None
        n_val = int(round(X.shape[0] * split))
        if n_val < 1 or n_val >= X.shape[0]:
            raise ValueError(
                f"validation_split={split} of {X.shape[0]} samples leaves an empty training "
                "or validation set"
            )
        cut = X.shape[0] - n_val
        return X[:cut], Y[:cut], (X[cut:], Y[cut:])

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

    def optimizer_state(self) -> Dict[str, np.ndarray]:
        """A copy of the optimizer's state, for saving and resuming.

        Returns
        -------
        dict
            ``{"velocity": flat array of n_params}`` once a fit with momentum
            has run; empty otherwise.
        """
        return {} if self._velocity is None else {"velocity": self._velocity.copy()}

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` returned.

        Parameters
        ----------
        state : dict
            ``{}`` or ``{"velocity": array of n_params}``.
        """
        unknown = set(state) - {"velocity"}
        if unknown:
            raise ValueError(f"unknown optimizer state keys {sorted(unknown)}")
        if "velocity" in state and state["velocity"] is not None:
            self._velocity = C._param("velocity", state["velocity"], (self.n_params,), self.dtype.type)
        else:
            self._velocity = None

    def reset_optimizer(self) -> None:
        """Forget the momentum velocity: the next fit starts from rest."""
        self._velocity = None


class Epochs:
    """Runs training epochs of one data set through the compiled loop.

    Everything a fit needs is allocated here, once: the workspace (one
    batch of activations per layer, deltas, gathered targets), the gradient
    for the optimizer path, and the start-of-epoch copies used to rewind on
    divergence; the momentum velocity is the model's own (persistent)
    buffer.  ``MLP.fit``, ``MLP.step`` and :mod:`fastbp.sklearn` drive the
    kernels through this class.  The caller holds the model's lock.

    Parameters
    ----------
    model : MLP
    X, Y : ndarray
        Checked, C-contiguous arrays of the model's dtype.
    batch_size : int
    momentum, nesterov, weight_decay : float, bool, float
        torch.optim.SGD's settings (see :meth:`MLP.fit`).
    l2 : float
        scikit-learn's ``alpha``: each step on m samples minimises the mean
        loss + l2 / (2 m) ||W||^2, over the weights only.
    flush_denormals : bool
        Run with FTZ/DAZ on.
    """

    def __init__(
        self, model: "MLP", X: np.ndarray, Y: np.ndarray, batch_size: int, *,
        momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
        l2: float = 0.0, flush_denormals: bool = True,
    ) -> None:
        nesterov = C.check_bool("nesterov", nesterov)
        flush_denormals = C.check_bool("flush_denormals", flush_denormals)
        self.model, self.X, self.Y, self.batch_size = model, X, Y, batch_size
        self.settings = dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                             l2=l2, flush_denormals=flush_denormals)
        n, dtype = X.shape[0], model.dtype
        self.n_batches = -(-n // batch_size)
        empty = np.empty(0, dtype=dtype)
        self.ws = np.empty(model._net.workspace_size(min(batch_size, n)), dtype=dtype)
        self.grad = np.empty_like(model._theta) if (momentum or weight_decay or l2) else empty
        if momentum and model._velocity is None:
            model._velocity = np.zeros_like(model._theta)
        self.velocity = model._velocity if momentum else empty
        # One saved copy of the parameters (and velocity) and how to replay
        # forward from it: see epoch() and _fail().
        self._saved: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._anchor: Optional[Tuple[int, Optional[np.ndarray], float]] = None  # (epoch, order, lr)

    @property
    def nbytes(self) -> int:
        """Bytes of scratch allocated for the fit (workspace and gradient)."""
        return int(self.ws.nbytes + self.grad.nbytes)

    @property
    def snapshot_nbytes(self) -> int:
        """Bytes of the rewind copy of the parameters and velocity (taken by :meth:`epoch`)."""
        return int(self.model._theta.nbytes + self.velocity.nbytes)

    def run(
        self, order: Optional[np.ndarray], lr: float, first: int = 0, steps: int = -1,
        snapshot_step: int = -1,
    ) -> Tuple:
        """Steps ``first`` .. ``first + steps`` of an epoch; the kernel's raw result
        (loss_sum, hit_sum, penalty_sum, n_done, status).  With ``snapshot_step``
        the kernel saves the parameters at that step (see :meth:`epoch`)."""
        m = self.model
        saved = self._saved if snapshot_step >= 0 else (None, None)
        return m._net.fit_epoch(
            m._theta, self.X, self.Y, order, self.batch_size, self.ws, self.grad,
            self.velocity, get_num_threads(), lr, first_step=first, max_steps=steps,
            snapshot=saved[0], snapshot_velocity=saved[1], snapshot_step=snapshot_step,
            **self.settings,
        )

    def epoch(
        self, order: Optional[np.ndarray], lr: float, epoch: int,
        progress: Optional[Progress] = None,
    ) -> Tuple[float, float, float]:
        """One whole epoch; returns the sums of the loss, accuracy and l2 penalty.

        With a live progress display, the epoch runs a few batches at a time
        (the result is the same).  When the loss becomes NaN or Inf, or the
        parameters stop being finite, the model is rewound to the last good
        step (see :meth:`_fail`) and FloatingPointError is raised.

        Rewinding needs one saved copy of the parameters (and velocity): the
        kernel takes it during each epoch's first step, once that step's loss
        is known to be finite and before its update, so it always holds the
        start of the last epoch whose first loss was finite.
        """
        m = self.model
        if self._saved is None:
            self._saved = (np.empty_like(m._theta), np.empty_like(self.velocity))
        piece = max(1, self.n_batches // 100) if progress is not None and progress.live else -1
        n = self.X.shape[0]
        totals = np.zeros(3)
        steps = 0
        while steps < self.n_batches:
            *sums, done, status = self.run(order, lr, steps, piece, snapshot_step=0)
            batches = -(-done // self.batch_size)
            if steps == 0 and batches > 0:
                self._anchor = (epoch, order, lr)
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
        weights it started from are the last good ones.  Everything is
        rebuilt from the saved copy by replaying steps, which is exact: the
        kernels are deterministic.
        """
        m = self.model
        assert self._saved is not None

        def restore() -> None:
            np.copyto(m._theta, self._saved[0])
            np.copyto(self.velocity, self._saved[1])

        if self._anchor is not None and self._anchor[0] == epoch:
            restore()  # the start of this epoch
            if failed < self.n_batches:
                if failed >= 2:
                    self.run(order, lr, 0, failed - 1)
            else:  # find the step that overflowed the weights
                failed = 0
                while True:
                    before = (m._theta.copy(), self.velocity.copy())
                    self.run(order, lr, failed, 1)
                    if not np.isfinite(m._theta).all():
                        np.copyto(m._theta, before[0])
                        np.copyto(self.velocity, before[1])
                        break
                    failed += 1
                where = f"batch {failed + 1}, whose update made weights NaN or Inf"
                self._raise(epoch, where, lr)
        elif self._anchor is not None:
            # This epoch's first loss was not finite: go back to the start of
            # the previous epoch and replay it up to its last step.
            restore()
            _, prev_order, prev_lr = self._anchor
            if self.n_batches >= 2:
                self.run(prev_order, prev_lr, 0, self.n_batches - 1)
        else:  # the fit's first loss was not finite: nothing better than the start
            assert failed == 0
        self._raise(epoch, f"batch {failed + 1}, whose loss was NaN or Inf", lr)

    @staticmethod
    def _raise(epoch: int, where: str, lr: float) -> None:
        raise FloatingPointError(
            f"training diverged at epoch {epoch + 1}, {where}; the weights are restored "
            f"to the last good step. Try a smaller learning rate (lr={lr:g})."
        )


def _allocated(checked: np.ndarray, given: Any) -> int:
    """Bytes of ``checked`` when checking ``given`` allocated it (a converted copy)."""
    if checked is given or not checked.flags.owndata:
        return 0
    return int(checked.nbytes)
