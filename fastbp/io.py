"""Saving and loading :class:`fastbp.MLP` models as versioned ``.npz`` files.

The format is documented in ``docs/model-format.md``.  In short: an
uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` members) holding the
architecture, the dtype, one array per weight matrix and bias vector, and the
optimizer state needed to resume training.

Writing is atomic: the archive is written to a temporary file in the target's
directory, flushed and fsynced, then moved over the target with
:func:`os.replace`, so an interrupted save never leaves a broken file where a
good one was.

Reading never unpickles anything and never trusts the file: the zip members
and every ``.npy`` header are checked (names, dtypes, shapes, sizes) *before*
any array data is read, array data is read in bounded amounts, and parameters
must be finite.  Every problem with the file's contents raises
:class:`ModelFileError`, a :class:`ValueError` whose message names the problem.
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only; avoids an import cycle with model.py
    from .model import MLP

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_PARAMS",
    "ModelFileError",
    "save",
    "load",
]

#: Value of the ``format`` key of every fastbp model file.
FORMAT_NAME = "fastbp-mlp"
#: The format version this module writes, and the highest one it reads
#: (version 2 added the optional ``feature_names_in`` key, version 3 the
#: optimizer's config and step count and the model's ``dropout``).
FORMAT_VERSION = 3
#: Default cap on the number of parameters :func:`load` accepts (see ``max_params``).
MAX_PARAMS = 1 << 30

PathLike = Union[str, "os.PathLike[str]"]

_ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
# The names are stored as strings and checked against these closed lists, so
# a name added later (the exp output and the Poisson loss joined version 3
# files with no version change: no reader can misread them) is refused by an
# older reader with a message naming it, never read as something else.
_OUTPUTS = ("identity", "sigmoid", "softmax", "exp")
_LOSSES = ("squared_error", "binary_cross_entropy", "cross_entropy", "poisson")
_DTYPES = ("float32", "float64")

_OPT_PREFIX = "optimizer."
_OPT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Metadata members (strings, scalars, layer_sizes) are tiny: cap what we read of them.
_MAX_META_BYTES = 1 << 16
_MAX_STR_CHARS = 64
_MAX_LAYERS = 100_000
_MAX_OPT_ARRAYS = 64
_MAX_NAME_CHARS = 1024
_MAX_NAMES_BYTES = 1 << 26  # the whole feature_names_in member
_MAX_CONFIG_CHARS = 4096  # the optimizer_config JSON


class ModelFileError(ValueError):
    """A model file is malformed, corrupted, truncated, foreign or inconsistent.

    A subclass of :class:`ValueError`; the message names the file's problem.
    """


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def _state_of(net: "MLP") -> Dict[str, np.ndarray]:
    """The members of the model's optimizer state (``{}`` when the model has none).

    ``optimizer_config`` (the config as JSON) and ``optimizer_step`` when the
    state names its optimizer; one ``optimizer.<name>`` array per state array.
    """
    getter = getattr(net, "optimizer_state", None)
    if getter is None:
        return {}
    state = dict(getter())
    if not state:
        return {}
    out: Dict[str, np.ndarray] = {}
    config = state.pop("optimizer", None)
    step = state.pop("step", None)
    if config is not None:
        text = json.dumps(config, sort_keys=True, allow_nan=False)
        if len(text) > _MAX_CONFIG_CHARS:
            raise ValueError(f"the optimizer config takes {len(text)} characters as JSON, "
                             f"at most {_MAX_CONFIG_CHARS}")
        out["optimizer_config"] = np.array(text)
        out["optimizer_step"] = np.array(0 if step is None else int(step), dtype=np.int64)
    for name, value in state.items():
        if not isinstance(name, str) or not _OPT_NAME.match(name):
            raise ValueError(f"optimizer state name {name!r} is not a valid identifier")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"optimizer state {name!r} has unsupported dtype {arr.dtype}")
        out[_OPT_PREFIX + name] = np.array(arr, order="C", copy=True)
    if len(out) > _MAX_OPT_ARRAYS:
        raise ValueError(f"optimizer state has {len(out)} arrays, at most {_MAX_OPT_ARRAYS}")
    return out


def _arrays_of(net: "MLP") -> Dict[str, np.ndarray]:
    """Every array of the file, by key (see docs/model-format.md)."""
    from . import __version__

    arrays: Dict[str, np.ndarray] = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "fastbp_version": np.array(str(__version__)),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activation": np.array(net.activation),
        "output": np.array(net.output),
        "loss": np.array(net.loss_name),
        "bias": np.array(bool(net.bias)),
        "dtype": np.array(np.dtype(net.dtype).name),
    }
    # Copies, not views: the file is written after the model's lock is released.
    for k in range(net.n_layers):
        arrays[f"weight_{k}"] = np.array(net.weights[k], order="C", copy=True)
        if net.bias:
            arrays[f"bias_{k}"] = np.array(net.biases[k], order="C", copy=True)
    arrays.update(_state_of(net))
    dropout = getattr(net, "_dropout", None)
    if dropout is not None:
        arrays["dropout"] = np.array(dropout, dtype=np.float64)
    names = getattr(net, "feature_names_in_", None)
    if names is not None:
        arrays["feature_names_in"] = _names_array(names, net.layer_sizes[0])
    return arrays


def _names_array(names: Any, n_in: int) -> np.ndarray:
    """Feature names as the unicode array stored in the file."""
    names = [str(n) for n in names]
    if len(names) != n_in:
        raise ValueError(f"feature_names_in_ has {len(names)} names, the network has {n_in} inputs")
    for name in names:
        if name.endswith("\0") or len(name) > _MAX_NAME_CHARS:
            raise ValueError(
                f"feature name {name[:40]!r} cannot be stored: names must be at most "
                f"{_MAX_NAME_CHARS} characters and not end in a NUL character"
            )
    out = np.array(names, dtype=f"<U{max([1] + [len(n) for n in names])}")
    if out.nbytes > _MAX_NAMES_BYTES:
        raise ValueError(
            f"the feature names take {out.nbytes} bytes as a unicode array, more than the "
            f"{_MAX_NAMES_BYTES} a model file may hold"
        )
    return out


def _snapshot(net: "MLP") -> Dict[str, np.ndarray]:
    """Every array of the file, read as one consistent state.

    The model's lock (when it has one) is held while the parameters, the
    optimizer state and the feature names are copied, so a save issued while
    another thread trains the model waits for that call to end instead of
    mixing layers of different steps.
    """
    lock = getattr(net, "_lock", None)
    if lock is None:
        return _arrays_of(net)
    with lock:
        return _arrays_of(net)


def _new_file_mode(path: str) -> int:
    """Permission bits for the saved file: the old file's, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    umask = None
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError, IndexError):
        umask = None
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(net: "MLP", path: PathLike) -> None:
    """Save a model, its parameters and its optimizer state to ``path`` atomically.

    Parameters
    ----------
    net : fastbp.MLP
        The model.  Its optimizer state (``net.optimizer_state()``, when the
        model has one) is saved too, so that training can resume exactly, and
        its ``feature_names_in_`` when it has them.  The model is read under
        its lock: a save issued while another thread fits the model waits for
        the fit to end and writes one consistent state.
    path : str or os.PathLike
        Destination file, used exactly as given (no ``.npz`` suffix is added).
        An existing file there is replaced.

    Raises
    ------
    OSError
        When the file cannot be written; ``path`` is then left as it was
        (the old file intact, or no file) and no temporary file remains.

    Notes
    -----
    The archive is written to a temporary file in the same directory, flushed
    and fsynced, then renamed over ``path`` with :func:`os.replace`, which is
    atomic: readers see the old file or the new one, never a partial one.

    Examples
    --------
    >>> import fastbp, fastbp.io, tempfile, os
    >>> net = fastbp.MLP([4, 8, 3], seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> fastbp.io.save(net, path)
    >>> fastbp.io.load(path).layer_sizes
    (4, 8, 3)
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    arrays = _snapshot(net)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same
    directory, which is flushed, fsynced and renamed over ``path``.  On any
    error ``path`` is left as it was and the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


class _Archive:
    """Checked, bounded access to the ``.npy`` members of a zip archive."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self._zf = zf
        self.members: Dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise ModelFileError(f"unexpected member {name!r} (not a .npy array)")
            key = name[:-4]
            if key in self.members:
                raise ModelFileError(f"duplicate member {name!r}")
            if info.flag_bits & 0x1:
                raise ModelFileError(f"member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ModelFileError(
                    f"member {name!r} uses unsupported compression method {info.compress_type}"
                )
            self.members[key] = info

    def header(self, key: str, f: IO[bytes]) -> Tuple[Tuple[int, ...], bool, np.dtype]:
        """Read and check the ``.npy`` header of member ``key`` from ``f``."""
        try:
            version = np.lib.format.read_magic(f)
        except ValueError as exc:
            raise ModelFileError(f"{key!r} is not a .npy array ({exc})") from None
        if version != (1, 0):
            raise ModelFileError(f"{key!r}: unsupported .npy format version {version}")
        try:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError as exc:
            raise ModelFileError(f"{key!r}: bad .npy header ({exc})") from None
        if dtype.hasobject:
            raise ModelFileError(f"{key!r} is an object array, which is never loaded")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise ModelFileError(f"{key!r} has a structured dtype {dtype}")
        if any(n < 0 for n in shape):
            raise ModelFileError(f"{key!r}: bad .npy header (negative dimension in {shape})")
        return tuple(int(n) for n in shape), bool(fortran), dtype

    def read(
        self,
        key: str,
        kinds: str,
        shape: Optional[Tuple[int, ...]] = None,
        itemsize: Optional[int] = None,
        max_bytes: int = _MAX_META_BYTES,
    ) -> np.ndarray:
        """Member ``key`` as an array, after checking its header.

        ``kinds`` are the allowed dtype kinds, ``shape`` and ``itemsize`` the
        required ones (None: any), ``max_bytes`` caps the data read.
        """
        info = self.members.get(key)
        if info is None:
            raise ModelFileError(f"missing key {key!r}")
        with self._zf.open(info) as f:
            got_shape, fortran, dtype = self.header(key, f)
            if dtype.kind not in kinds:
                raise ModelFileError(f"{key!r} has dtype {dtype}, expected kind {kinds!r}")
            if itemsize is not None and dtype.itemsize != itemsize:
                raise ModelFileError(
                    f"{key!r} has dtype {dtype}, expected {itemsize}-byte items"
                )
            if shape is not None and got_shape != shape:
                raise ModelFileError(f"{key!r} has shape {got_shape}, expected {shape}")
            count = 1
            for n in got_shape:
                count *= n
            nbytes = count * dtype.itemsize
            if nbytes > max_bytes:
                raise ModelFileError(
                    f"{key!r} declares {nbytes} bytes of data (shape {got_shape}), "
                    f"more than the {max_bytes} allowed"
                )
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ModelFileError(
                    f"{key!r} is truncated: {len(data)} of {nbytes} data bytes"
                )
            if f.read(1):  # also makes zipfile check the CRC at the end of the member
                raise ModelFileError(f"{key!r} has trailing bytes after its data")
        arr = np.frombuffer(data, dtype=dtype)
        arr = arr.reshape(got_shape, order="F" if fortran else "C")
        return np.array(arr, dtype=dtype.newbyteorder("="), order="C", copy=True)

    def string(self, key: str) -> str:
        arr = self.read(key, "U", shape=(), max_bytes=4 * _MAX_STR_CHARS)
        return str(arr[()])

    def integer(self, key: str) -> int:
        return int(self.read(key, "iu", shape=())[()])

    def json(self, key: str, max_chars: int) -> Any:
        arr = self.read(key, "U", shape=(), max_bytes=4 * max_chars)
        try:
            return json.loads(str(arr[()]))
        except ValueError as exc:
            raise ModelFileError(f"{key!r} is not valid JSON ({exc})") from None


def _choice(key: str, value: str, valid: Tuple[str, ...]) -> str:
    if value not in valid:
        raise ModelFileError(
            f"{key!r} is {value!r}; expected one of {', '.join(map(repr, valid))} "
            "(a newer fastbp may know it)"
        )
    return value


def _read_model(
    ar: _Archive, max_params: int
) -> Tuple[Dict[str, Any], List[np.ndarray], List[Optional[np.ndarray]], Dict[str, np.ndarray]]:
    if "format" not in ar.members:
        raise ModelFileError(
            f"not a fastbp model file: no 'format' key (keys: {sorted(ar.members)[:8]})"
        )
    fmt = ar.string("format")
    if fmt != FORMAT_NAME:
        raise ModelFileError(f"not a fastbp model file: format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = ar.integer("version")
    if version < 1 or version > FORMAT_VERSION:
        raise ModelFileError(
            f"unsupported format version {version}; this fastbp reads versions 1 to "
            f"{FORMAT_VERSION} (a newer fastbp may read it)"
        )

    sizes_arr = ar.read("layer_sizes", "iu", max_bytes=8 * _MAX_LAYERS)
    if sizes_arr.ndim != 1 or sizes_arr.shape[0] < 2:
        raise ModelFileError(
            f"'layer_sizes' must be 1-D with at least 2 entries, got shape {sizes_arr.shape}"
        )
    sizes = tuple(int(n) for n in sizes_arr)
    if any(n < 1 for n in sizes):
        raise ModelFileError(f"'layer_sizes' must be positive, got {list(sizes)}")
    activation = _choice("activation", ar.string("activation"), _ACTIVATIONS)
    output = _choice("output", ar.string("output"), _OUTPUTS)
    loss = _choice("loss", ar.string("loss"), _LOSSES)
    bias = bool(ar.read("bias", "b", shape=())[()])
    dtype_name = _choice("dtype", ar.string("dtype"), _DTYPES)
    dtype = np.dtype(dtype_name)
    n_layers = len(sizes) - 1

    n_params = sum(sizes[k] * sizes[k + 1] + (sizes[k + 1] if bias else 0) for k in range(n_layers))
    if n_params > max_params:
        raise ModelFileError(
            f"the architecture {list(sizes)} has {n_params} parameters, more than "
            f"max_params={max_params}"
        )

    expected = {"format", "version", "fastbp_version", "layer_sizes", "activation",
                "output", "loss", "bias", "dtype"}
    optional = {"fastbp_version"}
    if version >= 2:
        optional.add("feature_names_in")
    if version >= 3:
        optional |= {"dropout", "optimizer_config", "optimizer_step"}
    expected |= optional
    expected.update(f"weight_{k}" for k in range(n_layers))
    if bias:
        expected.update(f"bias_{k}" for k in range(n_layers))
    missing = sorted(expected - set(ar.members) - optional)
    if missing:
        raise ModelFileError(f"missing key(s) {', '.join(map(repr, missing))}")
    opt_keys = []
    for key in ar.members:
        if key in expected:
            continue
        name = key[len(_OPT_PREFIX):]
        if key.startswith(_OPT_PREFIX) and _OPT_NAME.match(name):
            opt_keys.append(key)
        else:
            raise ModelFileError(f"unexpected key {key!r}")
    if len(opt_keys) > _MAX_OPT_ARRAYS:
        raise ModelFileError(f"{len(opt_keys)} optimizer arrays, at most {_MAX_OPT_ARRAYS}")
    if "fastbp_version" in ar.members:
        ar.string("fastbp_version")  # informational, but must be well formed

    weights: List[np.ndarray] = []
    biases: List[Optional[np.ndarray]] = []
    for k in range(n_layers):
        n_in, n_out = sizes[k], sizes[k + 1]
        W = ar.read(f"weight_{k}", "f", shape=(n_out, n_in), itemsize=dtype.itemsize,
                    max_bytes=n_out * n_in * dtype.itemsize)
        _check_finite(f"weight_{k}", W)
        weights.append(W)
        if bias:
            b = ar.read(f"bias_{k}", "f", shape=(n_out,), itemsize=dtype.itemsize,
                        max_bytes=n_out * dtype.itemsize)
            _check_finite(f"bias_{k}", b)
            biases.append(b)
        else:
            biases.append(None)

    if version >= 3:
        state = _read_state_v3(ar, opt_keys, n_params, dtype)
    else:
        state = _read_state_v1(ar, opt_keys, n_params, dtype)

    config = dict(layer_sizes=sizes, activation=activation, output=output, loss=loss,
                  bias=bias, dtype=dtype_name)
    if "feature_names_in" in ar.members:
        names = ar.read("feature_names_in", "U", shape=(sizes[0],),
                        max_bytes=min(sizes[0] * 4 * _MAX_NAME_CHARS, _MAX_NAMES_BYTES))
        config["feature_names_in"] = [str(n) for n in names]
    if "dropout" in ar.members:
        if n_layers < 2:
            raise ModelFileError("'dropout' is present but the network has no hidden layer")
        p = ar.read("dropout", "f", shape=(n_layers - 1,), itemsize=8, max_bytes=8 * _MAX_LAYERS)
        if not np.all((p >= 0) & (p < 1)):
            raise ModelFileError(f"'dropout' must hold probabilities in [0, 1), got {p.tolist()}")
        probs = [float(v) for v in p]
        config["dropout"] = probs[0] if len(set(probs)) == 1 else tuple(probs)
    return config, weights, biases, state


def _read_state_v1(ar: _Archive, opt_keys: List[str], n_params: int,
                   dtype: np.dtype) -> Dict[str, Any]:
    """Versions 1 and 2: ``optimizer.<name>`` arrays, for the model to accept or refuse."""
    state: Dict[str, Any] = {}
    budget = 4 * max(n_params, 1) * 8 + _MAX_META_BYTES  # all optimizer arrays together
    for key in sorted(opt_keys):
        name = key[len(_OPT_PREFIX):]
        if name == "velocity":
            arr = ar.read(key, "f", shape=(n_params,), itemsize=dtype.itemsize,
                          max_bytes=n_params * dtype.itemsize)
        else:
            arr = ar.read(key, "biuf", max_bytes=budget)
        budget -= arr.nbytes
        if arr.dtype.kind == "f":
            _check_finite(key, arr)
        state[name] = arr
    return state


def _read_state_v3(ar: _Archive, opt_keys: List[str], n_params: int,
                   dtype: np.dtype) -> Dict[str, Any]:
    """Version 3: the optimizer's config names the state arrays the file must hold.

    Without ``optimizer_config`` only ``optimizer.velocity`` (SGD momentum
    whose settings are unknown, as versions 1 and 2 kept it) may be present.
    Every array must be (n_params,) of the model's dtype and finite.
    """
    from . import optim

    names = sorted(key[len(_OPT_PREFIX):] for key in opt_keys)
    state: Dict[str, Any] = {}
    if "optimizer_config" in ar.members:
        raw = ar.json("optimizer_config", _MAX_CONFIG_CHARS)
        try:
            opt = optim.Optimizer.from_config(raw)
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"'optimizer_config' is not an optimizer config: {exc}") from None
        wanted = sorted(("velocity" if (opt.name == "sgd" and k == "momentum_buffer") else k)
                        for k in opt.state_names())
        if not wanted:
            raise ModelFileError(f"'optimizer_config' names {opt!r}, which keeps no state")
        if names != wanted:
            raise ModelFileError(f"the optimizer state of {opt!r} needs arrays "
                                 f"{[_OPT_PREFIX + k for k in wanted]}, the file has "
                                 f"{[_OPT_PREFIX + k for k in names]}")
        if "optimizer_step" not in ar.members:
            raise ModelFileError("missing key 'optimizer_step'")
        step = ar.integer("optimizer_step")
        if step < 0:
            raise ModelFileError(f"'optimizer_step' must be >= 0, got {step}")
        state["optimizer"] = raw
        state["step"] = step
    else:
        if "optimizer_step" in ar.members:
            raise ModelFileError("'optimizer_step' without 'optimizer_config'")
        if names and names != ["velocity"]:
            raise ModelFileError(f"without 'optimizer_config' the only optimizer array is "
                                 f"'optimizer.velocity', the file has "
                                 f"{[_OPT_PREFIX + k for k in names]}")
    for name in names:
        key = _OPT_PREFIX + name
        arr = ar.read(key, "f", shape=(n_params,), itemsize=dtype.itemsize,
                      max_bytes=n_params * dtype.itemsize)
        _check_finite(key, arr)
        state[name] = arr
    return state


def _check_finite(key: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.argmin(np.isfinite(arr).ravel()))
        raise ModelFileError(f"{key!r} contains NaN or Inf (first at flat index {bad})")


def load(path: Union[PathLike, IO[bytes]], max_params: int = MAX_PARAMS) -> "MLP":
    """Load a model saved by :func:`save`.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The model file.
    max_params : int
        Refuse files whose architecture declares more parameters than this
        (default :data:`MAX_PARAMS`, 2**30), before reading any parameter.

    Returns
    -------
    fastbp.MLP
        A model with bit-identical parameters, the same architecture and dtype,
        the saved optimizer state (given to ``net.set_optimizer_state``) and
        the saved ``feature_names_in_``, if any.  Files of every format
        version from 1 to :data:`FORMAT_VERSION` load.

    Raises
    ------
    ModelFileError
        A :class:`ValueError`, when the file is not a fastbp model file, is of
        an unknown version, is truncated or corrupted, or holds missing,
        unexpected, misshapen, wrongly typed, object or non-finite arrays, or
        an architecture larger than ``max_params``.  The message names the
        problem.  Nothing is ever unpickled.
    OSError
        When the file cannot be opened (missing, unreadable).
    """
    from .model import MLP

    if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
        source: Any = os.fspath(path)
        with open(source, "rb"):  # let a missing or unreadable file raise OSError as is
            pass
    else:
        source = path
    try:
        with zipfile.ZipFile(source) as zf:
            config, weights, biases, state = _read_model(_Archive(zf), int(max_params))
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error,
            NotImplementedError, RuntimeError, ValueError, OverflowError, UnicodeError,
            MemoryError, OSError) as exc:
        raise ModelFileError(
            f"not a readable fastbp model file ({type(exc).__name__}: {exc})"
        ) from None

    try:
        net = MLP(config["layer_sizes"], activation=config["activation"], output=config["output"],
                  loss=config["loss"], bias=config["bias"], dtype=config["dtype"],
                  weights=weights, biases=biases if config["bias"] else None,
                  **({"dropout": config["dropout"]} if "dropout" in config else {}))
    except ValueError as exc:
        raise ModelFileError(f"inconsistent model file: {exc}") from None
    if "feature_names_in" in config:
        net.feature_names_in_ = config["feature_names_in"]
    if state:
        setter = getattr(net, "set_optimizer_state", None)
        if setter is None:
            raise ModelFileError(
                f"the file holds optimizer state ({', '.join(sorted(state))}) but this "
                "fastbp's MLP cannot restore optimizer state"
            )
        try:
            setter(state)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFileError(f"bad optimizer state: {exc}") from None
    return net
