"""Tabular data for the command line: CSV and .npz loading, task inference, scaling.

Nothing here depends on pandas: CSV files are read with the :mod:`csv` module
and converted column by column with numpy.  Every problem with the input
(missing file, ragged rows, unknown or non-numeric columns, NaN, ...) raises
:class:`DataError` with a one-line message naming the file, column and line.
"""
from __future__ import annotations

import csv
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

#: A numeric target with at most this many distinct integer values is taken
#: to be class labels (unless ``--task`` says otherwise).
MAX_INTEGER_CLASSES = 20

#: Version of the sidecar JSON written next to a model by ``fastbp train``.
SIDECAR_VERSION = 1


class DataError(ValueError):
    """Bad input data: the message is one line, fit for ``fastbp: error: ...``."""


# -- reading ---------------------------------------------------------------------


@dataclass
class Table:
    """A CSV file as named columns of strings.

    Attributes
    ----------
    path : str
        The file it was read from (for messages).
    names : list of str
        Column names from the header row.
    columns : list of tuple of str
        ``columns[j]`` holds the cells of column j, one per data row.
    lines : list of int
        The file's line number of each data row (for messages).
    """

    path: str
    names: List[str]
    columns: List[Tuple[str, ...]]
    lines: List[int]

    @property
    def n_rows(self) -> int:
        """Number of data rows."""
        return len(self.lines)

    def index(self, name: str) -> int:
        """Position of column ``name``; :class:`DataError` when there is none."""
        try:
            return self.names.index(name)
        except ValueError:
            shown = ", ".join(repr(n) for n in self.names[:8])
            more = f", ... ({len(self.names)} columns)" if len(self.names) > 8 else ""
            raise DataError(
                f"{self.path}: no column named {name!r} (columns: {shown}{more})"
            ) from None

    def numeric(self, names: Sequence[str]) -> np.ndarray:
        """The columns ``names`` as a float64 array of shape (n_rows, len(names)).

        Raises
        ------
        DataError
            When a column is missing, or a cell is empty, not a number, NaN or Inf.
        """
        out = np.empty((self.n_rows, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            out[:, j] = self._numeric_column(self.index(name), name)
        return out

    def _numeric_column(self, j: int, name: str) -> np.ndarray:
        cells = self.columns[j]
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
        if values is not None and np.isfinite(values).all():
            return values
        for i, cell in enumerate(cells):  # slow path: find the first bad cell
            where = f"{self.path}, line {self.lines[i]}, column {name!r}"
            if not cell.strip():
                raise DataError(f"{where}: missing value (feature columns must be numeric)")
            try:
                v = float(cell)
            except ValueError:
                raise DataError(
                    f"{where}: {_short(cell)!r} is not a number (feature columns must be "
                    "numeric; encode categories as numbers first)"
                ) from None
            if not math.isfinite(v):
                raise DataError(f"{where}: {cell.strip()!r} is not a finite number")
        raise DataError(f"{self.path}: column {name!r} could not be read as numbers")

    def strings(self, name: str) -> np.ndarray:
        """Column ``name``'s cells, stripped of surrounding blanks, as an array of str."""
        cells = [c.strip() for c in self.columns[self.index(name)]]
        for i, cell in enumerate(cells):
            if not cell:
                raise DataError(
                    f"{self.path}, line {self.lines[i]}, column {name!r}: missing value"
                )
        return np.array(cells, dtype=str)


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a data file")
    return p


def read_csv(path: PathLike) -> Table:
    """Read a comma-separated file whose first row names the columns.

    Blank lines are skipped; a leading UTF-8 byte-order mark is ignored.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Table

    Raises
    ------
    DataError
        When the file is missing, not UTF-8 text, empty, has no data rows,
        duplicate or empty column names, or a row with the wrong number of fields.
    """
    p = _check_file(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: Optional[List[str]] = None
            rows: List[List[str]] = []
            lines: List[int] = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{p}, line {reader.line_num}: {len(row)} fields, but the header "
                        f"has {len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise DataError(f"{p}: malformed CSV ({exc})") from None
    if header is None:
        raise DataError(f"{p}: empty file (expected a header row naming the columns)")
    if not rows:
        raise DataError(f"{p}: no data rows after the header")
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{p}: column {j + 1} of the header has no name")
    dup = sorted({n for n in header if header.count(n) > 1})
    if dup:
        raise DataError(f"{p}: duplicate column name(s) {', '.join(map(repr, dup))}")
    columns = [tuple(col) for col in zip(*rows)]
    return Table(str(p), header, columns, lines)


def read_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """The arrays of an .npz file (``allow_pickle=False``).

    Raises
    ------
    DataError
        When the file is missing or is not a readable .npz archive.
    """
    p = _check_file(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({_one_line(exc)})") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{p}: not an .npz file (not a zip archive; save one with "
                        "numpy.savez(path, X=X, y=y))")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_npz(path: PathLike) -> bool:
    """Whether ``path`` names an .npz file (by its suffix); anything else is CSV."""
    return str(path).lower().endswith(".npz")


def _npz_X(arrays: Dict[str, np.ndarray], path: PathLike) -> np.ndarray:
    if "X" not in arrays:
        raise DataError(f"{path}: no array named 'X' (found: {', '.join(arrays) or 'none'})")
    X = arrays["X"]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: X must be a non-empty 2-D array, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{path}: X[{bad[0]}, {bad[1]}] is NaN or Inf")
    return X


@dataclass
class Dataset:
    """Features and raw targets loaded for training.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray
        Raw targets: an array of str (CSV cells, or string labels from .npz),
        or a numeric array of shape (n_samples,) or (n_samples, n_targets).
    features : list of str
        Feature names (CSV header, or ``x0``, ``x1``, ... for .npz).
    target : str
        Name of the target column (``y`` for .npz).
    """

    X: np.ndarray
    y: np.ndarray
    features: List[str]
    target: str


def load_training_data(path: PathLike, target: Optional[str] = None) -> Dataset:
    """Load features and targets from a CSV or .npz file.

    Parameters
    ----------
    path : str or Path
        A CSV file with a header row, or an .npz file holding arrays ``X``
        (n_samples, n_features) and ``y`` (n_samples,) or (n_samples, k).
    target : str, optional
        The CSV column to predict; every other column is a feature, and must be
        numeric.  Default: the last column.  Ignored for .npz files.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
    """
    if is_npz(path):
        arrays = read_npz(path)
        X = _npz_X(arrays, path)
        if "y" not in arrays:
            raise DataError(f"{path}: no array named 'y' (found: {', '.join(arrays)})")
        y = arrays["y"]
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise DataError(
                f"{path}: y must have shape ({X.shape[0]},) or ({X.shape[0]}, k) to match X, "
                f"got {y.shape}"
            )
        if y.dtype.kind in "US":
            y = y.astype(str)
        elif y.dtype.kind not in "biuf":
            raise DataError(f"{path}: y must hold numbers or strings, got dtype {y.dtype}")
        elif not np.isfinite(y).all():
            raise DataError(f"{path}: y holds NaN or Inf")
        return Dataset(X, y, [f"x{j}" for j in range(X.shape[1])], "y")
    table = read_csv(path)
    if len(table.names) < 2:
        raise DataError(f"{path}: needs at least two columns (features and a target)")
    target = table.names[-1] if target is None else target
    table.index(target)
    features = [n for n in table.names if n != target]
    X = table.numeric(features)
    y = table.strings(target)
    try:
        y_num = y.astype(np.float64)
    except ValueError:
        return Dataset(X, y, features, target)
    return Dataset(X, y if not np.isfinite(y_num).all() else y_num, features, target)


def load_features(
    path: PathLike, features: Sequence[str], target: Optional[str] = None
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Load the features a model was trained on, and the targets when present.

    Parameters
    ----------
    path : str or Path
        CSV (must contain every column of ``features``; other columns are
        ignored) or .npz (``X`` with ``len(features)`` columns; ``y`` optional).
    features : sequence of str
        Feature names, in the model's order.
    target : str, optional
        Name of the target column, returned as raw targets when the CSV has it.

    Returns
    -------
    X : ndarray of shape (n_samples, len(features)), float64
    y : ndarray or None
        Raw targets (as in :class:`Dataset`), or None when absent.
    """
    if is_npz(path):
        arrays = read_npz(path)
        X = _npz_X(arrays, path)
        if X.shape[1] != len(features):
            raise DataError(
                f"{path}: X has {X.shape[1]} columns, the model expects {len(features)}"
            )
        y = arrays.get("y")
        if y is not None and (y.shape[0] != X.shape[0] or y.dtype.kind not in "biufUS"):
            y = None
        elif y is not None and y.dtype.kind in "US":
            y = y.astype(str)
        return X, y
    table = read_csv(path)
    missing = [f for f in features if f not in table.names]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{path}: missing feature column(s) {shown}{more} the model was trained on")
    X = table.numeric(features)
    y = None
    if target is not None and target in table.names:
        y = table.strings(target)
        try:
            y = y.astype(np.float64)
        except ValueError:
            pass
    return X, y


# -- the task ----------------------------------------------------------------------


def infer_task(y: np.ndarray) -> Tuple[str, str]:
    """Classification or regression, from the raw targets.

    Non-numeric targets, and numeric targets with few (at most
    :data:`MAX_INTEGER_CLASSES`) distinct integer values, are class labels;
    other numeric targets are regressed.

    Parameters
    ----------
    y : ndarray
        Raw targets as in :class:`Dataset`.

    Returns
    -------
    task : {"classify", "regress"}
    reason : str
        A short explanation, for the user.
    """
    if y.dtype.kind in "US":
        return "classify", f"non-numeric values ({len(np.unique(y))} distinct)"
    if y.ndim == 2 and y.shape[1] > 1:
        return "regress", f"{y.shape[1]} numeric targets per sample"
    v = y.reshape(-1).astype(np.float64)
    distinct = np.unique(v)
    if np.all(distinct == np.round(distinct)) and len(distinct) <= MAX_INTEGER_CLASSES:
        return "classify", f"{len(distinct)} distinct integer values"
    kind = "integer" if np.all(distinct == np.round(distinct)) else "real"
    return "regress", f"{len(distinct)} distinct {kind} values"


def class_names(y: np.ndarray) -> List[str]:
    """The sorted distinct class names of raw targets ``y``.

    Integer-valued numbers are named by their integer (``3.0`` -> ``"3"``) and
    sorted numerically; other numbers by ``repr``; strings are sorted as strings.
    """
    if y.dtype.kind in "US":
        return [str(c) for c in np.unique(y)]
    return [_number_name(v) for v in np.unique(y.reshape(-1).astype(np.float64))]


def _number_name(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def as_class_names(y: np.ndarray) -> np.ndarray:
    """Raw targets as class names, named as :func:`class_names` names them."""
    if y.dtype.kind in "US":
        return y.astype(str)
    return np.array([_number_name(v) for v in y.reshape(-1).astype(np.float64)], dtype=str)


# -- scaling and encoding -----------------------------------------------------------


@dataclass
class Preprocessor:
    """Feature standardisation and target encoding, saved next to a model.

    Features are standardised with the training rows' mean and standard
    deviation (a constant column is only centred).  Class names map to label
    indices ``0..k-1``; regression targets are standardised too, and
    :meth:`decode` undoes both.

    Attributes
    ----------
    task : {"classify", "regress"}
    features : list of str
    target : str
    x_mean, x_scale : list of float
    classes : list of str
        Class names in label order (classification only).
    y_mean, y_scale : list of float
        Per-target mean and scale (regression only).
    info : dict
        Anything else worth recording (training options, metrics).
    """

    task: str
    features: List[str]
    target: str
    x_mean: List[float]
    x_scale: List[float]
    classes: List[str] = field(default_factory=list)
    y_mean: List[float] = field(default_factory=list)
    y_scale: List[float] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, task: str, features: Sequence[str],
            target: str) -> "Preprocessor":
        """Learn the scaling (and classes) from training rows ``X``, ``y``."""
        mean, scale = _mean_scale(X)
        pre = cls(task, list(features), target, mean.tolist(), scale.tolist())
        if task == "classify":
            pre.classes = class_names(y)
        else:
            if y.dtype.kind in "US":
                raise DataError(f"target {target!r} is not numeric: cannot regress on it")
            y_mean, y_scale = _mean_scale(y.reshape(y.shape[0], -1).astype(np.float64))
            pre.y_mean, pre.y_scale = y_mean.tolist(), y_scale.tolist()
        return pre

    @property
    def n_outputs(self) -> int:
        """Width of the network's output layer."""
        return len(self.classes) if self.task == "classify" else len(self.y_mean)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised features."""
        return (X - np.asarray(self.x_mean)) / np.asarray(self.x_scale)

    def encode(self, y: np.ndarray) -> np.ndarray:
        """Raw targets to what the network trains on: labels, or scaled values.

        Raises
        ------
        DataError
            For a class the model does not know.
        """
        if self.task == "classify":
            names = as_class_names(y)
            lookup = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted(set(names.tolist()) - set(lookup))
            if unknown:
                raise DataError(
                    f"unknown class(es) {', '.join(map(repr, unknown[:5]))} in {self.target!r}"
                )
            return np.array([lookup[c] for c in names.tolist()], dtype=np.int64)
        if y.dtype.kind in "US":
            raise DataError(f"target {self.target!r} is not numeric")
        Y = y.reshape(y.shape[0], -1).astype(np.float64)
        return (Y - np.asarray(self.y_mean)) / np.asarray(self.y_scale)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Network outputs to predictions: class names, or values in target units."""
        if self.task == "classify":
            return np.asarray(self.classes, dtype=str)[outputs.argmax(axis=1)]
        return outputs.astype(np.float64) * np.asarray(self.y_scale) + np.asarray(self.y_mean)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (see :meth:`save`)."""
        d: Dict[str, Any] = {
            "format": "fastbp-cli-sidecar",
            "version": SIDECAR_VERSION,
            "task": self.task,
            "target": self.target,
            "features": self.features,
            "x_mean": self.x_mean,
            "x_scale": self.x_scale,
        }
        if self.task == "classify":
            d["classes"] = self.classes
        else:
            d["y_mean"], d["y_scale"] = self.y_mean, self.y_scale
        d.update(self.info)
        return d

    def save(self, path: PathLike) -> None:
        """Write the sidecar JSON file: one top-level key per line."""
        items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_json().items()]
        with open(path, "w", encoding="utf-8") as f:
            f.write("{\n" + ",\n".join(items) + "\n}\n")

    @classmethod
    def load(cls, path: PathLike) -> "Preprocessor":
        """Read a sidecar JSON file written by :meth:`save`.

        Raises
        ------
        DataError
            When the file is missing or is not a valid sidecar.
        """
        p = _check_file(path)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: not a readable JSON file ({_one_line(exc)})") from None
        if not isinstance(d, dict) or d.get("format") != "fastbp-cli-sidecar":
            raise DataError(f"{p}: not a fastbp sidecar file (written by `fastbp train`)")
        if d.get("version", 0) > SIDECAR_VERSION:
            raise DataError(f"{p}: sidecar version {d.get('version')} is newer than this fastbp")
        try:
            known = {"format", "version", "task", "target", "features", "x_mean", "x_scale",
                     "classes", "y_mean", "y_scale"}
            pre = cls(
                task=str(d["task"]), features=[str(f) for f in d["features"]],
                target=str(d["target"]),
                x_mean=[float(v) for v in d["x_mean"]], x_scale=[float(v) for v in d["x_scale"]],
                classes=[str(c) for c in d.get("classes", [])],
                y_mean=[float(v) for v in d.get("y_mean", [])],
                y_scale=[float(v) for v in d.get("y_scale", [])],
                info={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{p}: malformed sidecar file ({_one_line(exc)})") from None
        if pre.task not in ("classify", "regress") or len(pre.x_mean) != len(pre.features):
            raise DataError(f"{p}: malformed sidecar file")
        return pre


def _mean_scale(A: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    mean = A.mean(axis=0)
    scale = A.std(axis=0)
    scale[~(scale > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0
    return mean, scale
