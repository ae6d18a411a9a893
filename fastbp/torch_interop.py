"""Conversion between :class:`fastbp.MLP` and PyTorch ``nn.Sequential`` models.

PyTorch is optional: importing :mod:`fastbp` or this module never imports
``torch``; the functions here import it when called and raise
:class:`ImportError` with an install hint when it is missing
(``pip install "fastbp[torch]"``).

The layout of the PyTorch model made by :func:`to_torch` is fixed:
``[Linear, act, Linear, act, ..., Linear, out]`` where ``act`` is the hidden
activation module (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh`` or
``nn.Identity``) and ``out`` the output activation (``nn.Softmax(dim=1)``,
``nn.Sigmoid`` or ``nn.Identity``).  ``seq[2 * k]`` is the k-th Linear layer
and ``seq[:-1]`` maps inputs to the logits z.  To train with PyTorch's
fused losses drop the output module: ``nn.CrossEntropyLoss`` and
``nn.BCEWithLogitsLoss`` take the logits, ``seq[:-1](x)``; :func:`torch_loss`
gives the loss that matches fastbp's exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

    from .model import MLP

__all__ = ["to_torch", "from_torch", "torch_loss"]

_DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy",
                 "identity": "squared_error", "exp": "poisson"}
_EXP_CLASS: Any = None


def _exp_class(torch: Any) -> Any:
    """``fastbp.torch_interop.Exp``, the ``nn.Module`` of fastbp's exp output
    (torch has none), made on first use so that importing this module never
    imports torch."""
    global _EXP_CLASS
    if _EXP_CLASS is None:
        class Exp(torch.nn.Module):
            """y = exp(x) element-wise: fastbp's ``output="exp"`` (the log link)."""

            def forward(self, x: Any) -> Any:
                return torch.exp(x)

        Exp.__module__, Exp.__qualname__ = __name__, "Exp"
        _EXP_CLASS = Exp
    return _EXP_CLASS


def __getattr__(name: str) -> Any:
    # ``fastbp.torch_interop.Exp`` (also for unpickling a module that holds one)
    if name == "Exp":
        return _exp_class(_torch())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "PyTorch interop needs torch, which is not installed: "
            "pip install 'fastbp[torch]' (or pip install torch)"
        ) from exc
    return torch


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def to_torch(net: "MLP") -> "nn.Sequential":
    """A PyTorch ``nn.Sequential`` computing the same function as ``net``.

    Parameters
    ----------
    net : fastbp.MLP
        The model; its parameters are copied (the two models do not share memory).

    Returns
    -------
    torch.nn.Sequential
        ``[Linear, act, ..., Linear, out]``: 2 * ``net.n_layers`` modules on the
        CPU, in ``net``'s dtype (float32 or float64).  Each ``Linear`` has
        ``weight = net.weights[k]`` (shape (n_out, n_in), the same convention)
        and ``bias = net.biases[k]`` (no bias when ``net.bias`` is False).
        ``act`` is ``nn.ReLU()``, ``nn.Sigmoid()``, ``nn.Tanh()`` or
        ``nn.Identity()``; the output activation ``out`` is ``nn.Softmax(dim=1)``,
        ``nn.Sigmoid()`` or ``nn.Identity()``.

    Notes
    -----
    The model's output equals ``net.predict``.  For training with PyTorch's
    ``nn.CrossEntropyLoss`` or ``nn.BCEWithLogitsLoss``, which expect logits,
    drop the output module: ``seq[:-1]``.  :func:`torch_loss` gives fastbp's
    exact loss on those logits.

    Examples
    --------
    >>> import fastbp, numpy as np
    >>> from fastbp.torch_interop import to_torch
    >>> net = fastbp.MLP([4, 8, 3], seed=0)
    >>> seq = to_torch(net)            # doctest: +SKIP
    >>> seq                            # doctest: +SKIP
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=3, bias=True)
      (3): Softmax(dim=1)
    )
    """
    torch = _torch()
    nn = torch.nn
    tdtype = _torch_dtype(torch, net.dtype)
    hidden = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}
    modules: List[Any] = []
    for k in range(net.n_layers):
        n_in, n_out = net.layer_sizes[k], net.layer_sizes[k + 1]
        lin = nn.Linear(n_in, n_out, bias=net.bias, dtype=tdtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(net.weights[k], copy=True)))
            if net.bias:
                lin.bias.copy_(torch.from_numpy(np.array(net.biases[k], copy=True)))
        modules.append(lin)
        if k < net.n_layers - 1:
            modules.append(hidden[net.activation]())
    if net.output == "softmax":
        modules.append(nn.Softmax(dim=1))
    elif net.output == "sigmoid":
        modules.append(nn.Sigmoid())
    elif net.output == "exp":
        modules.append(_exp_class(torch)())
    else:
        modules.append(nn.Identity())
    return nn.Sequential(*modules)


def _flatten(torch: Any, module: Any) -> List[Any]:
    nn = torch.nn
    if isinstance(module, nn.Sequential):
        out: List[Any] = []
        for child in module:
            out.extend(_flatten(torch, child))
        return out
    return [module]


def _describe(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def from_torch(
    module: "nn.Module",
    *,
    loss: Optional[str] = None,
    dtype: Optional[Any] = None,
    activation: Optional[str] = None,
) -> "MLP":
    """A :class:`fastbp.MLP` computing the same function as a PyTorch model.

    Parameters
    ----------
    module : torch.nn.Sequential or torch.nn.Linear
        Linear layers, each but the last followed by at most one hidden
        activation (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``; none or
        ``nn.Identity`` means identity), the same activation after every hidden
        layer, and after the last Linear optionally one output activation:
        ``nn.Softmax(dim=1)`` (or ``dim=-1``), ``nn.Sigmoid``, ``nn.Identity``
        or :class:`fastbp.torch_interop.Exp` (what :func:`to_torch` gives for
        ``output="exp"``).
        Nested ``nn.Sequential`` containers are flattened; ``nn.Identity``
        modules anywhere are ignored.  Every Linear must have a bias, or none
        must; all must share one dtype, float32 or float64.
    loss : {"cross_entropy", "binary_cross_entropy", "squared_error", "poisson"}, optional
        The fastbp loss.  Default: ``cross_entropy`` after a softmax,
        ``binary_cross_entropy`` after a sigmoid, ``poisson`` after an exp,
        ``squared_error`` otherwise.
    dtype : {"float32", "float64"}, optional
        The model's dtype; default: the Linear layers' dtype (any other dtype,
        e.g. float16, must then be converted explicitly with this argument).
    activation : str, optional
        Hidden activation to record for a model with no hidden layer (one
        Linear), where it plays no role; default ``"identity"``.  For models
        with hidden layers it must match the modules when given.

    Returns
    -------
    fastbp.MLP
        A model whose parameters are copies of the module's.

    Raises
    ------
    ValueError
        For unsupported modules (anything other than the ones above, e.g.
        ``nn.Dropout``, ``nn.LogSoftmax``, ``nn.Conv2d``), mixed hidden
        activations, two activations in a row, mismatched layer widths, mixed
        bias or dtypes, or a loss that does not fit the output activation.
    ImportError
        When torch is not installed.
    """
    torch = _torch()
    nn = torch.nn
    from .model import MLP

    if not isinstance(module, nn.Module):
        raise ValueError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    mods = [m for m in _flatten(torch, module) if not isinstance(m, nn.Identity)]
    if not mods or not isinstance(mods[0], nn.Linear):
        first = _describe(mods[0]) if mods else "nothing"
        raise ValueError(f"the model must start with nn.Linear, found {first}")

    def kind(m: Any, position: int) -> str:
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Tanh):
            return "tanh"
        if isinstance(m, nn.Sigmoid):
            return "sigmoid"
        if isinstance(m, nn.Softmax):
            if m.dim not in (1, -1):
                raise ValueError(f"module {position}: nn.Softmax(dim={m.dim}) is unsupported; "
                                 "only dim=1 (or -1) over the features")
            return "softmax"
        if isinstance(m, _exp_class(torch)):
            return "exp"
        raise ValueError(
            f"module {position}: unsupported module {_describe(m)}; supported are nn.Linear, "
            "nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Identity, and nn.Softmax(dim=1) as output"
        )

    linears: List[Any] = []
    acts: List[Optional[str]] = []  # acts[k]: the activation after linears[k], or None
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            linears.append(m)
            acts.append(None)
            continue
        name = kind(m, i)
        if acts[-1] is not None:
            raise ValueError(f"module {i}: two activations in a row ({acts[-1]}, {name})")
        acts[-1] = name

    hidden = [a or "identity" for a in acts[:-1]]
    if "softmax" in hidden:
        raise ValueError("nn.Softmax is supported only as the output activation")
    if "exp" in hidden:
        raise ValueError("fastbp.torch_interop.Exp is supported only as the output activation")
    if len(set(hidden)) > 1:
        raise ValueError(
            f"fastbp uses one activation for every hidden layer, the model has {hidden}"
        )
    if hidden:
        if activation is not None and activation != hidden[0]:
            raise ValueError(f"activation={activation!r} but the model's hidden layers use "
                             f"{hidden[0]!r}")
        activation = hidden[0]
    elif activation is None:
        activation = "identity"
    output = acts[-1] or "identity"
    if output in ("relu", "tanh"):
        raise ValueError(f"unsupported output activation {output!r}; fastbp's outputs are "
                         "identity, sigmoid, softmax and exp")

    sizes = [linears[0].in_features]
    for k, lin in enumerate(linears):
        if lin.in_features != sizes[-1]:
            raise ValueError(f"Linear layer {k} has in_features={lin.in_features}, but the "
                             f"previous layer has {sizes[-1]} outputs")
        sizes.append(lin.out_features)
    has_bias = {lin.bias is not None for lin in linears}
    if len(has_bias) > 1:
        raise ValueError("either every Linear layer must have a bias or none")
    bias = has_bias.pop()

    dtypes = {str(lin.weight.dtype) for lin in linears}
    dtypes |= {str(lin.bias.dtype) for lin in linears if lin.bias is not None}
    if dtype is None:
        if len(dtypes) > 1:
            raise ValueError(f"the Linear layers mix dtypes {sorted(dtypes)}; pass dtype=")
        name = dtypes.pop().replace("torch.", "")
        if name not in ("float32", "float64"):
            raise ValueError(f"unsupported parameter dtype {name}; pass dtype='float32' "
                             "or dtype='float64' to convert")
        dtype = name

    def numpy_of(t: Any) -> np.ndarray:
        t = t.detach().to("cpu")
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float64)
        return t.numpy().copy()

    weights = [numpy_of(lin.weight) for lin in linears]
    biases = [numpy_of(lin.bias) for lin in linears] if bias else None
    if loss is None:
        loss = _DEFAULT_LOSS[output]
    return MLP(sizes, activation=activation, output=output, loss=loss, bias=bias,
               dtype=dtype, weights=weights, biases=biases)


def torch_loss(net: "MLP") -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
    """PyTorch function computing ``net``'s mean loss from the logits.

    Parameters
    ----------
    net : fastbp.MLP
        The model whose loss (``net.loss_name``) and output activation to match.

    Returns
    -------
    callable
        ``f(z, y) -> scalar tensor`` where ``z = to_torch(net)[:-1](x)`` are the
        logits (pre-output-activation) of a batch and ``y`` the targets.  It
        equals ``net.loss(x, y)``:

        - ``squared_error``: ``MSELoss(reduction="sum")(out(z), y) / (2 n)``,
          i.e. ½ Σ_j (ŷ_j − y_j)² per sample, mean over the n samples, where
          ``out`` is the output activation;
        - ``cross_entropy``: ``CrossEntropyLoss()(z, y)`` (mean; ``y`` integer
          labels or probability rows);
        - ``binary_cross_entropy``: ``BCEWithLogitsLoss(reduction="sum")(z, y) / n``
          (summed over outputs, mean over samples);
        - ``poisson``: ``(PoissonNLLLoss(log_input=True, reduction="sum")(z, y)
          + Σ (xlogy(y, y) − y)) / n``, the half Poisson deviance (torch's
          loss leaves out the terms that do not depend on z).

    Examples
    --------
    One fastbp SGD step equals one ``torch.optim.SGD`` step::

        seq = to_torch(net)
        opt = torch.optim.SGD(seq.parameters(), lr=0.1)
        torch_loss(net)(seq[:-1](x), y).backward()
        opt.step()                     # == net.step(x, y, lr=0.1)
    """
    torch = _torch()
    nn = torch.nn
    name = net.loss_name
    if name == "cross_entropy":
        ce = nn.CrossEntropyLoss()

        def f(z: Any, y: Any) -> Any:
            if y.ndim == 1:
                y = y.long()
            return ce(z, y)
    elif name == "binary_cross_entropy":
        bce = nn.BCEWithLogitsLoss(reduction="sum")

        def f(z: Any, y: Any) -> Any:
            return bce(z, y.reshape(z.shape).to(z.dtype)) / z.shape[0]
    elif name == "poisson":
        nll = nn.PoissonNLLLoss(log_input=True, reduction="sum")

        def f(z: Any, y: Any) -> Any:
            y = y.reshape(z.shape).to(z.dtype)
            return (nll(z, y) + (torch.xlogy(y, y) - y).sum()) / z.shape[0]
    else:
        out = {"softmax": lambda z: torch.softmax(z, dim=1), "sigmoid": torch.sigmoid,
               "identity": lambda z: z, "exp": torch.exp}[net.output]
        mse = nn.MSELoss(reduction="sum")

        def f(z: Any, y: Any) -> Any:
            return mse(out(z), y.reshape(z.shape).to(z.dtype)) / (2 * z.shape[0])
    return f
