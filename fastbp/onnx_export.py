"""Export :class:`fastbp.MLP` models and :mod:`fastbp.sklearn` estimators to ONNX.

The ``onnx`` package is optional: importing :mod:`fastbp` or this module never
imports it; the functions here import it when called and raise
:class:`ImportError` with an install hint when it is missing
(``pip install "fastbp[onnx]"``, which also installs onnxruntime to run the
exported files).

The graph of :func:`to_onnx` (docs/onnx.md draws it): one input ``X`` of
shape ``(N, n_in)``, ``N`` a dynamic batch dimension; for each layer k a
``Gemm(h, W<k>, b<k>, transB=1)``, with ``W<k>`` stored as fastbp holds it,
(n_out, n_in), and no third input without bias; then the layer's activation:
``Relu``, ``Tanh``, nothing for identity, ``1 / (1 + Exp(-z))`` for sigmoid,
and after the last layer for softmax ``Exp(z - max z) / ReduceSum`` with the
subtraction's rounding error compensated (:func:`_output_softmax`), for the
exp output (``loss="poisson"``) ``Exp(z)``.  Both
keep small values' relative accuracy, which onnxruntime's own ``Sigmoid``
and ``Softmax`` kernels lose.  The one output ``Y``, ``(N, n_out)``, is what
``net.predict`` returns.  Everything computes in the model's dtype, float32
or float64.

:func:`estimator_to_onnx` builds on the same network and adds the outputs
skl2onnx gives for scikit-learn's MLPs with ``zipmap=False``: ``label`` and
``probabilities`` for a classifier, ``variable`` for a regressor.

:func:`pipeline_to_onnx` (what ``python -m fastbp export`` writes) wraps the
same network in its preprocessing: a float64 input ``features`` of raw
feature values, standardised in the graph, and the outputs ``predict``
prints: ``label`` (the class names) and ``probabilities``, or ``variable``
in the target's units.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

    from .model import MLP

__all__ = ["to_onnx", "estimator_to_onnx", "pipeline_to_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

#: The default opset.  Every operator used (Gemm, Relu, Tanh, Exp, Neg, Add,
#: Sub, Mul, Div, ReduceMax, ReduceSum, Concat, ArgMax, Gather, Greater, Cast)
#: has float64 support and its current form at opset 13, which runtimes of the
#: last years implement (onnxruntime since 1.7; tested with 1.32).
DEFAULT_OPSET = 13
#: The lowest opset accepted (ReduceSum takes its axes as an input from 13 on).
MIN_OPSET = 13

_HIDDEN_OPS = {"relu": "Relu", "sigmoid": "sigmoid", "tanh": "Tanh", "identity": None}
_OUTPUT_OPS = {"softmax": "softmax", "sigmoid": "sigmoid", "identity": None, "exp": "Exp"}

PathLike = Union[str, "os.PathLike[str]"]


def _onnx() -> Any:
    try:
        import onnx
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError(
            "ONNX export needs the onnx package, which is not installed: "
            "pip install 'fastbp[onnx]' (or pip install onnx onnxruntime)"
        ) from exc
    return onnx


def _version() -> str:
    from . import __version__

    return str(__version__)


# -- checking ---------------------------------------------------------------------


def _check_model(model: Any) -> "MLP":
    from .model import MLP

    if not isinstance(model, MLP):
        raise TypeError(f"to_onnx expects a fastbp.MLP, got {type(model).__name__}")
    with model._lock:
        for k in range(model.n_layers):
            params = [("weights", model.weights[k])]
            if model.bias:
                params.append(("biases", model.biases[k]))
            for name, arr in params:
                if not np.isfinite(arr).all():
                    raise ValueError(
                        f"the model's {name}[{k}] holds NaN or Inf: it cannot be exported"
                    )
    return model


def _check_opset(onnx: Any, opset: Any) -> int:
    newest = int(onnx.defs.onnx_opset_version())
    if opset is None:
        return DEFAULT_OPSET
    if not isinstance(opset, (int, np.integer)) or isinstance(opset, (bool, np.bool_)):
        raise TypeError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= int(opset) <= newest:
        raise ValueError(
            f"opset must be between {MIN_OPSET} and {newest} (the newest this onnx "
            f"{onnx.__version__} knows), got {opset}"
        )
    return int(opset)


def _check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


# -- graph building ------------------------------------------------------------------


class _Graph:
    """Nodes and initializers under construction, with unique tensor names."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx = onnx
        self.opset = opset
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._taken: set = set()
        self._axes: Optional[str] = None

    def axes(self) -> str:
        """The constant ``[-1]`` (the last axis), for the reductions' axes input."""
        if self._axes is None:
            self._axes = self.const("last_axis", np.array([-1], dtype=np.int64))
        return self._axes

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        if value.dtype.kind in "UO":
            tensor = self.onnx.helper.make_tensor(
                name, self.onnx.TensorProto.STRING, value.shape,
                [s.encode("utf-8") for s in value.ravel().tolist()],
            )
        else:
            tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: List[str], output: Optional[str] = None,
             **attrs: Any) -> str:
        out = output if output is not None else self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(
            op, inputs, [out], name=self.name(f"{op}_node"), **attrs))
        return out


def _named_graph(onnx: Any, opset: int, input_name: str, names: Sequence[str]) -> "_Graph":
    """A new graph with its input and output names reserved (the input may
    not take an output's name)."""
    if input_name in names:
        raise ValueError(f"input_name must not be one of the output names {tuple(names)}")
    g = _Graph(onnx, opset)
    g.name(input_name)
    for name in names:
        g.name(name)
    return g


def _network(g: _Graph, net: "MLP", x: str, output: Optional[str]) -> str:
    """Append ``net``'s forward pass from tensor ``x``; return its output's name.

    The last node writes ``output`` when given (a fresh name otherwise).
    """
    n = net.n_layers
    h = x
    final = output if output is not None else g.name("y")
    for k in range(n):
        W = g.const(f"W{k}", np.array(net.weights[k], dtype=net.dtype, copy=True))
        inputs = [h, W]
        if net.bias:
            inputs.append(g.const(f"b{k}", np.array(net.biases[k], dtype=net.dtype, copy=True)))
        op = _HIDDEN_OPS[net.activation] if k < n - 1 else _OUTPUT_OPS[net.output]
        last = k == n - 1
        z = g.node("Gemm", inputs, final if last and op is None else g.name(f"z{k}"),
                   transB=1)
        if op is None:
            h = z
        elif op == "softmax":
            h = _output_softmax(g, z, final)
        elif op == "sigmoid":
            h = _sigmoid(g, net, z, final if last else g.name(f"h{k + 1}"))
        else:  # Relu, Tanh; Exp (the exp output, the log link of the Poisson loss)
            h = g.node(op, [z], final if last else g.name(f"h{k + 1}"))
    return h


def _output_softmax(g: _Graph, z: str, output: str) -> str:
    """softmax(z) over the last axis, to a few ulp relative for every z.

    The usual stable form exp(z − m) / Σ exp(z − m), m = max z, loses
    accuracy in its first step: d = fl(z − m) is rounded, and an absolute
    error δ in d is a relative error δ in exp(d); for logits spread over
    ±16 that is up to half an ulp of 32, 1e-6 in float32.  (onnxruntime's
    ``Softmax`` measured 1.2e-6 relative from the exact softmax of random
    logits; fastbp computes its output activation in double and rounds,
    6e-8; this graph 3.3e-7.)  Here the rounding error of the subtraction,
    err = (z − m) − d, is recovered exactly with Knuth's TwoSum (plain
    additions; no fused multiply-add needed) and folded back in to first
    order, exp(z − m) = exp(d) (1 + err), before the sum and the division.
    """
    keep = {"keepdims": 1}
    if g.opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        m = g.node("ReduceMax", [z, g.axes()], **keep)
    else:
        m = g.node("ReduceMax", [z], axes=[-1], **keep)
    # TwoSum(a, b) with a = z, b = -m: s = a + b, t = s - a,
    # err = (a - (s - t)) + (b - t), exactly a + b - s.
    d = g.node("Sub", [z, m])
    t = g.node("Sub", [d, z])
    err = g.node("Sub", [g.node("Sub", [z, g.node("Sub", [d, t])]),
                         g.node("Add", [m, t])])  # (b - t) = -(m + t)
    e = g.node("Exp", [d])
    e = g.node("Add", [e, g.node("Mul", [e, err])])
    total = g.node("ReduceSum", [e, g.axes()], **keep)
    return g.node("Div", [e, total], output)


def _sigmoid(g: _Graph, net: "MLP", z: str, output: str) -> str:
    """σ(z) = 1 / (1 + exp(−z)), to about an ulp relative for every z.

    onnxruntime's ``Sigmoid`` kernel has an absolute error of about an ulp
    of 1 (float32: a rational approximation on a clipped range; float64
    through tanh), a large relative error for small values: on random
    logits its float32 results were on average 25 ulp and at worst 2e5 ulp
    from the exact value (probabilities of 1e-7 off by 100%), float64 up to
    1e-3 relative at z = −30; this form stays within 2 ulp
    on the same logits, as fastbp's kernels do.  Below 1e-38 (float32) it gives 0.
    """
    one = g.const("one", np.array(1.0, dtype=net.dtype))
    e = g.node("Exp", [g.node("Neg", [z])])
    return g.node("Div", [one, g.node("Add", [one, e])], output)


def _tensor_info(onnx: Any, name: str, dtype: Any, shape: List[Any]) -> Any:
    elem = dtype if isinstance(dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype))
    return onnx.helper.make_tensor_value_info(name, elem, shape)


def _make_model(onnx: Any, g: _Graph, inputs: List[Any], outputs: List[Any], opset: int,
                graph_name: str, doc: str, metadata: dict) -> Any:
    graph = onnx.helper.make_graph(g.nodes, graph_name, inputs, outputs,
                                   initializer=g.initializers, doc_string=doc)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(
        graph, opset_imports=opsets, producer_name="fastbp", producer_version=_version(),
        doc_string=doc,
    )
    # The oldest IR version that carries this opset, so older runtimes load the file.
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    return model


def _metadata(net: "MLP") -> dict:
    return {
        "fastbp_version": _version(),
        "layer_sizes": json.dumps(list(net.layer_sizes)),
        "activation": net.activation,
        "output": net.output,
        "loss": net.loss_name,
        "bias": json.dumps(net.bias),
        "dtype": net.dtype.name,
    }


# -- writing ----------------------------------------------------------------------------


def _save(model: Any, path: PathLike) -> None:
    """Write ``model`` to ``path`` atomically (temporary file, fsync, rename)."""
    from .io import atomic_write

    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if model.ByteSize() >= 2**31:
        raise ValueError(
            f"{path}: the model needs {model.ByteSize()} bytes, over protobuf's 2 GiB "
            "limit for one ONNX file"
        )
    data = model.SerializeToString()
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    atomic_write(path, lambda f: f.write(data))


# -- public API ---------------------------------------------------------------------------


def to_onnx(
    model: "MLP",
    path: Optional[PathLike] = None,
    *,
    opset: Optional[int] = None,
    input_name: str = "X",
    output_name: str = "Y",
) -> "onnx.ModelProto":
    """An ONNX model computing ``model.predict``.

    Parameters
    ----------
    model : fastbp.MLP
        The network; its parameters are copied into the graph.
    path : str or os.PathLike, optional
        When given, the model is also written there, atomically (a temporary
        file in the same directory, fsynced, then renamed over ``path``): on
        any error ``path`` is left as it was and no temporary file remains.
    opset : int, optional
        The ONNX opset to declare, from :data:`MIN_OPSET` (13) to the newest
        the installed ``onnx`` knows; default :data:`DEFAULT_OPSET` (13).
        The graph is the same for every opset.
    input_name, output_name : str
        Names of the graph's input (default ``"X"``) and output (``"Y"``).

    Returns
    -------
    onnx.ModelProto
        A graph with one input ``input_name`` of shape ``(N, n_in)`` and one
        output ``output_name`` of shape ``(N, n_out)``, both in the model's
        dtype (float32 or float64), ``N`` a dynamic batch dimension.  Layer k
        is ``Gemm(h, W_k, b_k, transB=1)`` with initializers ``W<k>`` of shape
        (n_out, n_in) and ``b<k>`` (absent without bias), followed by its
        activation: ``Relu``, ``Tanh``, none for identity, ``1 / (1 + Exp(-z))``
        for sigmoid, and for a softmax output ``Exp(z - max z)``, compensated
        for the subtraction's rounding, over its ``ReduceSum``
        (see the module's notes).  The model's ``metadata_props`` hold
        ``fastbp_version``, ``layer_sizes`` (JSON), ``activation``,
        ``output``, ``loss``, ``bias`` and ``dtype``; ``producer_name`` is
        ``"fastbp"``.

    Raises
    ------
    TypeError
        When ``model`` is not a :class:`fastbp.MLP`, or ``opset`` not an integer.
    ValueError
        For an opset out of range, an empty name, or parameters holding NaN or Inf.
    OSError
        When ``path`` cannot be written (no file is then written).
    ImportError
        When the ``onnx`` package is not installed.

    Examples
    --------
    >>> import numpy as np, fastbp
    >>> net = fastbp.MLP([4, 8, 3], seed=0)
    >>> proto = net.to_onnx("net.onnx")                     # doctest: +SKIP
    >>> import onnxruntime as ort                           # doctest: +SKIP
    >>> sess = ort.InferenceSession("net.onnx")             # doctest: +SKIP
    >>> X = np.ones((2, 4), np.float32)
    >>> np.allclose(sess.run(None, {"X": X})[0], net.predict(X))  # doctest: +SKIP
    True
    """
    onnx = _onnx()
    net = _check_model(model)
    opset = _check_opset(onnx, opset)
    input_name = _check_name("input_name", input_name)
    output_name = _check_name("output_name", output_name)
    if input_name == output_name:
        raise ValueError(f"input_name and output_name must differ, both are {input_name!r}")

    g = _Graph(onnx, opset)
    g.name(input_name)
    g.name(output_name)
    with net._lock:
        _network(g, net, input_name, output_name)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    doc = f"fastbp {net!r}: {output_name} = {input_name} through the network (predict)"
    proto = _make_model(
        onnx, g,
        [_tensor_info(onnx, input_name, net.dtype, ["N", n_in])],
        [_tensor_info(onnx, output_name, net.dtype, ["N", n_out])],
        opset, "fastbp_mlp", doc, _metadata(net),
    )
    if path is not None:
        _save(proto, path)
    return proto


def _label_constant(classes: Any) -> Tuple[np.ndarray, Any]:
    """The class labels as a constant array and their ONNX element type's numpy dtype.

    Integer labels become int64, booleans bool, floating labels keep their
    dtype, strings (also object arrays of str) become an ONNX string tensor.
    """
    classes = np.asarray(classes)
    kind = classes.dtype.kind
    if kind == "b":
        return classes.astype(np.bool_), np.bool_
    if kind in "iu":
        if kind == "u" and classes.size and int(classes.max()) > np.iinfo(np.int64).max:
            raise ValueError("class labels larger than int64 can hold cannot be exported")
        return classes.astype(np.int64), np.int64
    if kind == "f":
        return classes.copy(), classes.dtype.type
    if kind == "U":
        return classes.astype(object), object
    if kind == "O":
        values = classes.tolist()
        if all(isinstance(v, str) for v in values):
            return classes.astype(object), object
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
               for v in values):
            return _label_constant(np.array(values, dtype=np.int64))
        if all(isinstance(v, (bool, np.bool_)) for v in values):
            return classes.astype(np.bool_), np.bool_
        kinds = sorted({type(v).__name__ for v in values})
        raise TypeError(
            f"class labels of types {', '.join(kinds)} cannot be exported: ONNX labels "
            "must be all strings, all integers, all booleans or all floats"
        )
    raise TypeError(f"class labels of dtype {classes.dtype} cannot be exported to ONNX")


def estimator_to_onnx(
    estimator: Any,
    path: Optional[PathLike] = None,
    *,
    opset: Optional[int] = None,
    input_name: str = "X",
) -> "onnx.ModelProto":
    """An ONNX model of a fitted :mod:`fastbp.sklearn` estimator, as skl2onnx gives.

    The outputs follow skl2onnx's converters for scikit-learn's
    ``MLPClassifier`` and ``MLPRegressor`` with ``options={"zipmap": False}``
    (plain tensors, no ZipMap).

    Parameters
    ----------
    estimator : fastbp.sklearn.MLPClassifier or fastbp.sklearn.MLPRegressor
        A fitted estimator.
    path : str or os.PathLike, optional
        When given, the model is also written there, atomically (see :func:`to_onnx`).
    opset : int, optional
        As in :func:`to_onnx` (default 13).
    input_name : str
        Name of the input (default ``"X"``), of shape ``(N, n_features_in_)`` in
        the estimator's ``dtype`` (float32 by default; cast the data to it).

    Returns
    -------
    onnx.ModelProto
        For ``MLPClassifier``, two outputs:

        - ``label``: ``predict(X)``.  Single-label targets: shape ``(N,)``,
          ``classes_[argmax(probabilities)]`` (ArgMax, then Gather on a
          constant holding ``classes_``), an int64 tensor for integer labels,
          string for string labels, bool for booleans, float for floating
          labels.  Multilabel targets: the int64 indicator matrix
          ``probabilities > 0.5``, shape ``(N, n_labels)``.
        - ``probabilities``: ``predict_proba(X)``, shape ``(N, n_classes)``:
          the softmax outputs; for binary targets (one logistic unit p)
          the two columns ``[1 - p, p]``; for multilabel targets each label's
          own probability.

        For ``MLPRegressor``, one output ``variable`` of shape
        ``(N, n_outputs_)`` (``(N, 1)`` for a single target, as skl2onnx
        gives, where ``predict`` returns shape ``(N,)``).

    Raises
    ------
    TypeError
        When ``estimator`` is not a fastbp.sklearn estimator, or its class
        labels have no ONNX type (mixed types).
    sklearn.exceptions.NotFittedError
        When the estimator has not been fitted (a ValueError).
    ValueError, OSError, ImportError
        As for :func:`to_onnx`.
    """
    onnx = _onnx()
    try:
        from sklearn.utils.validation import check_is_fitted

        from .sklearn import MLPClassifier, MLPRegressor, _BaseMLP
    except ImportError:
        raise TypeError(
            "estimator_to_onnx expects a fitted fastbp.sklearn.MLPClassifier or "
            f"MLPRegressor, got {type(estimator).__name__} (and scikit-learn is not installed)"
        ) from None
    if not isinstance(estimator, _BaseMLP):
        raise TypeError(
            "estimator_to_onnx expects a fitted fastbp.sklearn.MLPClassifier or "
            f"MLPRegressor, got {type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    net = _check_model(estimator.model_)
    opset = _check_opset(onnx, opset)
    input_name = _check_name("input_name", input_name)
    names = ("label", "probabilities") if isinstance(estimator, MLPClassifier) else ("variable",)
    g = _named_graph(onnx, opset, input_name, names)
    n_in = net.layer_sizes[0]
    metadata = _metadata(net)
    metadata["estimator"] = f"fastbp.sklearn.{type(estimator).__name__}"
    inputs = [_tensor_info(onnx, input_name, net.dtype, ["N", n_in])]

    with net._lock:
        if isinstance(estimator, MLPRegressor):
            _network(g, net, input_name, "variable")
            outputs = [_tensor_info(onnx, "variable", net.dtype, ["N", net.layer_sizes[-1]])]
        else:
            outputs = _classifier_outputs(onnx, g, estimator, net, input_name)
            metadata["classes"] = json.dumps(np.asarray(estimator.classes_).tolist())
    doc = f"{metadata['estimator']} ({net!r}) exported by fastbp"
    proto = _make_model(onnx, g, inputs, outputs, opset, "fastbp_sklearn_mlp", doc, metadata)
    if path is not None:
        _save(proto, path)
    return proto


def _classifier_outputs(onnx: Any, g: _Graph, est: Any, net: "MLP", x: str) -> List[Any]:
    """Append ``label`` and ``probabilities`` to ``g``; return their value infos."""
    y_type = est._label_binarizer.y_type_
    n_out = net.layer_sizes[-1]
    if y_type == "multilabel-indicator":
        # LabelBinarizer.inverse_transform: indicator of p > 0.5, as int64.
        p = _network(g, net, x, "probabilities")
        half = g.const("half", np.array(0.5, dtype=net.dtype))
        above = g.node("Greater", [p, half])
        g.node("Cast", [above], "label", to=onnx.TensorProto.INT64)
        return [
            _tensor_info(onnx, "label", np.int64, ["N", n_out]),
            _tensor_info(onnx, "probabilities", net.dtype, ["N", n_out]),
        ]
    classes, label_dtype = _label_constant(est.classes_)
    if n_out == 1:
        # One logistic unit p: predict_proba is [1 - p, p].
        p = _network(g, net, x, None)
        one = g.const("one", np.array(1.0, dtype=net.dtype))
        q = g.node("Sub", [one, p])
        g.node("Concat", [q, p], "probabilities", axis=1)
        n_classes = 2
        if classes.shape[0] == 1:  # a single class seen in fit: always that class
            classes = np.concatenate([classes, classes])
    else:
        _network(g, net, x, "probabilities")
        n_classes = n_out
    # classes_[argmax]: ties go to the first maximum, as numpy's argmax.
    index = g.node("ArgMax", ["probabilities"], axis=1, keepdims=0)
    table = g.const("classes", classes)
    g.node("Gather", [table, index], "label", axis=0)
    elem = onnx.TensorProto.STRING if label_dtype is object else label_dtype
    return [
        _tensor_info(onnx, "label", elem, ["N"]),
        _tensor_info(onnx, "probabilities", net.dtype, ["N", n_classes]),
    ]


# -- a model with its preprocessing: the CLI's sidecar folded in ---------------------------
#
# Three small blocks, each appending nodes to a _Graph and returning the name of
# the tensor it computes, and pipeline_to_onnx, which chains them around
# _network.  They compute what `python -m fastbp predict` computes, operation for
# operation, so the graph's results are those of `predict` to the network's rounding.


def _standardise(g: _Graph, x: str, mean: np.ndarray, scale: np.ndarray, dtype: Any) -> str:
    """``Cast((x - mean) / scale, dtype)``: the raw float64 features standardised.

    ``Sub`` and ``Div`` run in float64, as the sidecar's ``transform`` does in
    numpy (the same two IEEE operations, so the same bits); the ``Cast`` to
    the network's dtype rounds to nearest, as ``net.predict`` converts its
    input.  No ``Cast`` when the network is float64.
    """
    centred = g.node("Sub", [x, g.const("x_mean", np.asarray(mean, dtype=np.float64))])
    z = g.node("Div", [centred, g.const("x_scale", np.asarray(scale, dtype=np.float64))])
    if np.dtype(dtype) == np.float64:
        return z
    to = g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return g.node("Cast", [z], g.name("x_standardised"), to=to)


def _unscale(g: _Graph, y: str, mean: np.ndarray, scale: np.ndarray, dtype: Any,
             output: str) -> str:
    """``Cast(y, float64) * scale + mean``: network outputs back in target units.

    As the sidecar's ``decode`` computes it: in float64, the product first.
    """
    if np.dtype(dtype) != np.float64:
        y = g.node("Cast", [y], g.name("y_float64"), to=g.onnx.TensorProto.DOUBLE)
    scaled = g.node("Mul", [y, g.const("y_scale", np.asarray(scale, dtype=np.float64))])
    return g.node("Add", [scaled, g.const("y_mean", np.asarray(mean, dtype=np.float64))],
                  output)


def _label_map(g: _Graph, scores: str, classes: np.ndarray, output: str) -> None:
    """``output = classes[argmax(scores, axis=1)]``: ``ArgMax`` (ties to the first
    maximum, as numpy's) and ``Gather`` over a constant holding ``classes``
    (a string or int64 tensor, see :func:`_cli_labels`)."""
    index = g.node("ArgMax", [scores], axis=1, keepdims=0)
    g.node("Gather", [g.const("classes", classes), index], output, axis=0)


def _cli_labels(classes: Any) -> np.ndarray:
    """The class names as the ``label`` output's constant: int64 when every
    name is an integer written as ``str(int)`` writes it (``"0"``, ``"-3"``, as
    the CLI names integer-valued targets), strings otherwise."""
    names = [str(c) for c in classes]
    try:
        values = [int(c) for c in names]
    except ValueError:
        values = None
    if values is not None and all(str(v) == c for v, c in zip(values, names)) and all(
            -2**63 <= v < 2**63 for v in values):
        return np.array(values, dtype=np.int64)
    return np.array(names, dtype=object)


def _vector(what: str, values: Any, n: int, nonzero: bool = False) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a sequence of numbers, got {values!r}") from None
    if v.shape != (n,):
        raise ValueError(f"{what} must hold {n} numbers (one per column), got shape {v.shape}")
    if not np.isfinite(v).all() or (nonzero and not (v != 0).all()):
        raise ValueError(f"{what} must be finite{' and non-zero' if nonzero else ''}: {v}")
    return v


def pipeline_to_onnx(
    model: "MLP",
    path: Optional[PathLike] = None,
    *,
    x_mean: Any,
    x_scale: Any,
    classes: Optional[Any] = None,
    y_mean: Optional[Any] = None,
    y_scale: Optional[Any] = None,
    feature_names: Optional[Any] = None,
    target_name: Optional[str] = None,
    opset: Optional[int] = None,
    input_name: str = "features",
) -> "onnx.ModelProto":
    """An ONNX model of a network with its preprocessing: raw features in,
    predictions out, as ``python -m fastbp predict`` computes them.

    ``python -m fastbp export`` calls it with the sidecar ``train`` writes.
    The graph is ``_standardise`` (features), the network of :func:`to_onnx`,
    then either ``_label_map`` (classification) or ``_unscale`` (regression).

    Parameters
    ----------
    model : fastbp.MLP
        The network, trained on standardised features ``(x - x_mean) / x_scale``.
    path : str or os.PathLike, optional
        When given, the model is also written there, atomically (see :func:`to_onnx`).
    x_mean, x_scale : sequence of float
        One per input column: the standardisation (finite; ``x_scale`` non-zero).
    classes : sequence, optional
        Classification: the class names in output order, one per output unit
        (at least two).  Give either ``classes`` or ``y_mean`` and ``y_scale``.
    y_mean, y_scale : sequence of float, optional
        Regression: one per output, the network's outputs are ``(y - y_mean) / y_scale``.
    feature_names : sequence of str, optional
        The input's columns, in order; recorded in the metadata (``features``).
    target_name : str, optional
        Recorded in the metadata (``target``).
    opset : int, optional
        As in :func:`to_onnx` (default 13).
    input_name : str
        The input's name (default ``"features"``).

    Returns
    -------
    onnx.ModelProto
        One input ``input_name``, float64 of shape ``(N, n_in)``: the raw
        feature values, columns in ``feature_names``' order.  Outputs:

        - classification: ``label``, shape ``(N,)``, the class name of the
          most probable class (int64 when every class name is an integer
          such as ``"3"``, else string), and ``probabilities``,
          ``(N, n_classes)`` in the model's dtype;
        - regression: ``variable``, float64 ``(N, n_outputs)``, in the
          target's units.

        ``metadata_props`` hold :func:`to_onnx`'s entries and ``task``,
        ``features`` (JSON), ``target``, and ``classes`` (JSON) for a classifier.

    Raises
    ------
    TypeError
        When ``model`` is not a :class:`fastbp.MLP`, a scaling is not numeric,
        or ``opset`` is not an integer.
    ValueError
        When the scalings' or ``classes``' lengths do not match the network,
        a scale is 0 or not finite, both or neither of ``classes`` and
        ``y_mean``/``y_scale`` are given, or as for :func:`to_onnx`.
    OSError, ImportError
        As for :func:`to_onnx`.
    """
    onnx = _onnx()
    net = _check_model(model)
    opset = _check_opset(onnx, opset)
    input_name = _check_name("input_name", input_name)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    mean = _vector("x_mean", x_mean, n_in)
    scale = _vector("x_scale", x_scale, n_in, nonzero=True)
    regress = y_mean is not None or y_scale is not None
    if regress == (classes is not None):
        raise ValueError("give either classes (classification) or y_mean and y_scale "
                         "(regression)")
    if feature_names is not None:
        feature_names = [str(f) for f in feature_names]
        if len(feature_names) != n_in:
            raise ValueError(f"feature_names has {len(feature_names)} names, the network "
                             f"{n_in} inputs")
    if regress:
        if y_mean is None or y_scale is None:
            raise ValueError("regression needs both y_mean and y_scale")
        out_mean = _vector("y_mean", y_mean, n_out)
        out_scale = _vector("y_scale", y_scale, n_out, nonzero=True)
        names: Tuple[str, ...] = ("variable",)
    else:
        labels = _cli_labels(classes)
        if labels.shape != (n_out,) or n_out < 2:
            raise ValueError(f"classes must name each of the network's {n_out} outputs "
                             f"(at least 2), got {len(labels)} names")
        names = ("label", "probabilities")
    g = _named_graph(onnx, opset, input_name, names)
    metadata = _metadata(net)
    metadata["task"] = "regress" if regress else "classify"
    if feature_names is not None:
        metadata["features"] = json.dumps(feature_names)
    if target_name is not None:
        metadata["target"] = str(target_name)
    with net._lock:
        x = _standardise(g, input_name, mean, scale, net.dtype)
        if regress:
            y = _network(g, net, x, None)
            _unscale(g, y, out_mean, out_scale, net.dtype, "variable")
            outputs = [_tensor_info(onnx, "variable", np.float64, ["N", n_out])]
        else:
            _network(g, net, x, "probabilities")
            _label_map(g, "probabilities", labels, "label")
            elem = onnx.TensorProto.STRING if labels.dtype == object else np.int64
            outputs = [_tensor_info(onnx, "label", elem, ["N"]),
                       _tensor_info(onnx, "probabilities", net.dtype, ["N", n_out])]
            metadata["classes"] = json.dumps([str(c) for c in classes])
    columns = ", ".join(feature_names) if feature_names is not None else f"{n_in} columns"
    doc = (f"fastbp {net!r} with its preprocessing: {input_name} (N, {n_in}) float64 holds "
           f"the raw features ({columns}); outputs {', '.join(names)}")
    proto = _make_model(onnx, g, [_tensor_info(onnx, input_name, np.float64, ["N", n_in])],
                        outputs, opset, "fastbp_pipeline", doc, metadata)
    if path is not None:
        _save(proto, path)
    return proto
