"""Tabular data for the command line: CSV and .npz loading, task inference, scaling.

Nothing here depends on pandas: CSV files are read with the :mod:`csv` module
(the delimiter found by :class:`csv.Sniffer` unless given) and converted
column by column with numpy.  Every problem with the input (missing file,
ragged rows, unknown or non-numeric columns, missing values, ...) raises
:class:`DataError` with a one-line message naming the file, and the first few
bad cells by line and column, with a count of them all.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

#: A numeric target with at most this many distinct integer values may be
#: class labels (unless ``--task`` says otherwise) ...
MAX_INTEGER_CLASSES = 20

#: ... and only when there are at least this many rows per distinct value on
#: average.  Fewer than five examples of a class are too few to learn it from
#: (and a validation split of 20% then holds about one of each), whereas a
#: target such as a score or an age, with a new value every few rows, is a
#: quantity: 16 distinct integers on 20 rows is a regression.  Two distinct
#: values are always classes.
MIN_ROWS_PER_CLASS = 5

#: Version of the sidecar JSON written next to a model by ``fastbp train``.
SIDECAR_VERSION = 1

#: Cells read as missing values (compared case-insensitively, after stripping
#: blanks): pandas' default ``na_values``, plus ``?`` (the UCI repository's).
MISSING_TOKENS = frozenset(t.lower() for t in (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?"))

#: Delimiters detected automatically (by :class:`csv.Sniffer`); ``--sep`` takes any.
DELIMITERS = (",", ";", "\t")

#: Names of a column that holds row identifiers rather than a feature.
ID_NAMES = frozenset(("id", "index"))

#: Header of pandas' unnamed index column (``DataFrame.to_csv()`` writes an
#: empty name; reading and writing again gives ``Unnamed: 0``).
INDEX_NAMES = ("", "Unnamed: 0")

#: How many bad cells an error message names before it gives only a count.
SHOWN_CELLS = 5

#: Bytes of the file :class:`csv.Sniffer` looks at.
SNIFF_BYTES = 64 * 1024


class DataError(ValueError):
    """Bad input data: the message is one line, fit for ``fastbp: error: ...``."""


def sep_name(sep: str) -> str:
    """A delimiter as the user would write it: ``'\\t'`` -> ``"tab"``, else ``repr``."""
    return "tab" if sep == "\t" else repr(sep)


# -- reading ---------------------------------------------------------------------


@dataclass
class Cells:
    """One column parsed as numbers.

    Attributes
    ----------
    values : ndarray of float64
        The numbers, NaN where a cell is missing or bad.
    missing : ndarray of bool
        Cells that hold a missing-value token (:data:`MISSING_TOKENS`).
    bad : list of int
        Rows whose cell is neither a number nor missing (text, or Inf).
    """

    values: np.ndarray
    missing: np.ndarray
    bad: List[int]


def parse_numbers(cells: Sequence[str], decimal: str = ".") -> Cells:
    """Parse CSV cells as float64, telling missing cells from bad ones."""
    if decimal != ".":
        cells = [c.replace(decimal, ".") for c in cells]
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():  # the fast path
        return Cells(values, np.zeros(len(cells), dtype=bool), [])
    values = np.full(len(cells), np.nan)
    missing = np.zeros(len(cells), dtype=bool)
    bad: List[int] = []
    for i, cell in enumerate(cells):
        if cell.strip().lower() in MISSING_TOKENS:
            missing[i] = True
            continue
        try:
            v = float(cell)
        except ValueError:
            bad.append(i)
            continue
        if math.isfinite(v):
            values[i] = v
        else:
            bad.append(i)
    return Cells(values, missing, bad)


def is_missing(cells: Sequence[str]) -> np.ndarray:
    """Which cells hold a missing-value token (:data:`MISSING_TOKENS`)."""
    return np.array([c.strip().lower() in MISSING_TOKENS for c in cells], dtype=bool)


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
    sep : str
        The delimiter (given, or detected).
    decimal : str
        The decimal mark of numbers: ``"."`` or ``","``.
    """

    path: str
    names: List[str]
    columns: List[Tuple[str, ...]]
    lines: List[int]
    sep: str = ","
    decimal: str = "."

    @property
    def n_rows(self) -> int:
        """Number of data rows."""
        return len(self.lines)

    def index(self, name: str) -> int:
        """Position of column ``name``; :class:`DataError` when there is none."""
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"{self.path}: no column named {name!r} ({self.shown_names()})"
                            ) from None

    def shown_names(self) -> str:
        """``columns: 'a', 'b', ...``, for messages."""
        shown = ", ".join(repr(n) for n in self.names[:8])
        more = f", ... ({len(self.names)} columns)" if len(self.names) > 8 else ""
        return f"columns: {shown}{more}"

    def check_names(self, names: Sequence[str], option: str) -> None:
        """:class:`DataError` naming every one of ``names`` that is not a column."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise DataError(f"{option}: no column(s) named {', '.join(map(repr, unknown))} in "
                            f"{self.path} ({self.shown_names()})")

    def numeric(self, names: Sequence[str], missing_hint: str = "") -> Tuple[np.ndarray,
                                                                                np.ndarray]:
        """The columns ``names`` as float64, and which rows have a missing cell.

        Parameters
        ----------
        names : sequence of str
        missing_hint : str
            Appended to the error about missing values (e.g. how to drop them).

        Returns
        -------
        X : ndarray of shape (n_rows, len(names)), float64, NaN where missing
        missing : ndarray of shape (n_rows, len(names)), bool

        Raises
        ------
        DataError
            When a column is missing, or a cell is neither a finite number nor a
            missing-value token; the message names the first few such cells
            (line and column) and counts them.
        """
        X = np.empty((self.n_rows, len(names)), dtype=np.float64)
        missing = np.zeros((self.n_rows, len(names)), dtype=bool)
        bad: List[Tuple[int, int]] = []  # (row, column) in file order
        for j, name in enumerate(names):
            cells = parse_numbers(self.columns[self.index(name)], self.decimal)
            X[:, j], missing[:, j] = cells.values, cells.missing
            bad += [(i, j) for i in cells.bad]
        if bad:
            self._raise_bad(sorted(bad), names)
        return X, missing

    def _raise_bad(self, bad: List[Tuple[int, int]], names: Sequence[str]) -> NoReturn:
        def cell(i: int, j: int) -> str:
            return self.columns[self.index(names[j])][i].strip()

        shown = "; ".join(f"line {self.lines[i]}, column {names[j]!r}: {_short(cell(i, j))!r}"
                          for i, j in bad[:SHOWN_CELLS])
        more = f"; and {len(bad) - SHOWN_CELLS} more" if len(bad) > SHOWN_CELLS else ""
        infinite = [(i, j) for i, j in bad if _is_float(cell(i, j))]
        if len(infinite) == len(bad):
            what = f"{_count(len(bad), 'cell')} with a number that is not finite"
            raise DataError(f"{self.path}: {what} ({shown}{more})")
        i, j = next((i, j) for i, j in bad if not _is_float(cell(i, j)))
        hint = ("encode categories as numbers first, or leave the column out with --drop "
                f"{names[j]}")
        if self.decimal == "." and _is_float(cell(i, j).replace(",", ".")):
            hint = "for decimal commas, give --decimal ,"
        if len(bad) == 1:
            what = (f"line {self.lines[i]}, column {names[j]!r}: {_short(cell(i, j))!r} is not "
                    "a number")
        else:
            what = f"{len(bad)} cells are not numbers ({shown}{more})"
        raise DataError(f"{self.path}: {what}; feature columns must be numeric: {hint}")

    def raise_missing(self, missing: np.ndarray, names: Sequence[str], hint: str) -> NoReturn:
        """:class:`DataError` naming the first few missing cells and counting them all.

        Parameters
        ----------
        missing : ndarray of shape (n_rows, len(names)), bool
        names : sequence of str
            The columns of ``missing``.
        hint : str
            What to do about them (appended).
        """
        rows, cols = np.nonzero(missing)
        shown = "; ".join(f"line {self.lines[i]}, column {names[j]!r}"
                          for i, j in zip(rows[:SHOWN_CELLS].tolist(),
                                          cols[:SHOWN_CELLS].tolist()))
        more = f"; and {len(rows) - SHOWN_CELLS} more" if len(rows) > SHOWN_CELLS else ""
        n_rows = int(missing.any(axis=1).sum())
        one = len(rows) == 1
        raise DataError(
            f"{self.path}: {'missing value' if one else f'{len(rows)} missing values'} "
            f"({shown}{more}) in {_count(n_rows, 'row')}" + (f"; {hint}" if hint else ""))

    def strings(self, name: str) -> np.ndarray:
        """Column ``name``'s cells, stripped of surrounding blanks, as an array of str."""
        return np.array([c.strip() for c in self.columns[self.index(name)]], dtype=str)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a data file")
    return p


def check_format(sep: Optional[str], decimal: str) -> None:
    """:class:`DataError` for a ``--sep`` / ``--decimal`` pair that cannot work."""
    if sep is not None and len(sep) != 1:
        raise DataError(f"--sep {sep!r}: the delimiter must be one character (or 'tab')")
    if sep is not None and sep in "\r\n\"":
        raise DataError(f"--sep {sep!r}: not a usable delimiter")
    if decimal not in (".", ","):
        raise DataError(f"--decimal {decimal!r}: must be '.' or ','")
    if sep == decimal:
        raise DataError(f"--decimal {decimal} needs another delimiter than {sep_name(sep)} "
                        "(give --sep ';' for example)")


def detect_sep(sample: str, decimal: str = ".") -> str:
    """The delimiter of a CSV sample: what :class:`csv.Sniffer` finds among
    :data:`DELIMITERS` (not the decimal mark), else ``","`` (``";"`` with
    decimal commas)."""
    candidates = "".join(s for s in DELIMITERS if s != decimal)
    try:
        return csv.Sniffer().sniff(sample, delimiters=candidates).delimiter
    except csv.Error:
        return candidates[0]


def read_csv(path: PathLike, sep: Optional[str] = None, decimal: str = ".") -> Table:
    """Read a delimited text file whose first row names the columns.

    Blank lines are skipped; a leading UTF-8 byte-order mark is ignored.

    Parameters
    ----------
    path : str or Path
    sep : str, optional
        The delimiter; by default the one :class:`csv.Sniffer` detects among
        comma, semicolon and tab in the first 64 KiB.
    decimal : {".", ","}
        The decimal mark of the numbers.

    Returns
    -------
    Table

    Raises
    ------
    DataError
        When the file is missing, not UTF-8 text, empty, has no data rows, a
        header that parses as one column while another delimiter would split
        it, duplicate or empty column names (an empty name is allowed only for
        the first column: pandas' index), or a row with the wrong number of
        fields.
    """
    check_format(sep, decimal)
    p = _check_file(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a UTF-8 text CSV file") from None
    given = sep is not None
    if sep is None:
        sample = text[:SNIFF_BYTES]
        if len(text) > SNIFF_BYTES and "\n" in sample:
            sample = sample[: sample.rindex("\n") + 1]
        sep = detect_sep(sample, decimal)
    try:
        reader = csv.reader(_stdio.StringIO(text), delimiter=sep)
        header: Optional[List[str]] = None
        rows: List[List[str]] = []
        lines: List[int] = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                if len(header) == 1:
                    _check_one_column(p, header[0], sep, given)
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{p}, line {reader.line_num}: {len(row)} fields, but the header "
                    f"has {len(header)}" + ("" if sep == "," else f" ({sep_name(sep)}-separated)")
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{p}: malformed CSV ({exc})") from None
    if header is None:
        raise DataError(f"{p}: empty file (expected a header row naming the columns)")
    if not rows:
        raise DataError(f"{p}: no data rows after the header")
    for j, name in enumerate(header):
        if not name and j > 0:
            raise DataError(f"{p}: column {j + 1} of the header has no name")
    dup = sorted({n for n in header if header.count(n) > 1})
    if dup:
        raise DataError(f"{p}: duplicate column name(s) {', '.join(map(repr, dup))}")
    columns = [tuple(col) for col in zip(*rows)]
    return Table(str(p), header, columns, lines, sep, decimal)


def _check_one_column(p: Path, header: str, sep: str, given: bool) -> None:
    """A header that parses as one column: say which delimiter would split it."""
    others = [s for s in DELIMITERS + ("|",) if s != sep and s in header]
    if others:
        how = f"with --sep {sep_name(sep)}" if given else f"as {sep_name(sep)}-separated"
        likely = max(others, key=header.count)
        raise DataError(
            f"{p}: the header parses as one column {how}, but it looks "
            f"{sep_name(likely)}-separated: give --sep {sep_name(likely)}")


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


def _npz_X(arrays: Dict[str, np.ndarray], path: PathLike, allow_nan: bool = False) -> np.ndarray:
    if "X" not in arrays:
        raise DataError(f"{path}: no array named 'X' (found: {', '.join(arrays) or 'none'})")
    X = arrays["X"]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: X must be a non-empty 2-D array, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = np.isinf(X) if allow_nan else ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path}: X[{i}, {j}] is {'Inf' if allow_nan else 'NaN or Inf'} "
                        f"({int(bad.sum())} such value(s))")
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
    notes : list of str
        Things the user should hear about (e.g. the index column that was
        left out); one line each.
    warnings : list of str
        Things that look wrong but do not stop training (e.g. a column of row
        identifiers among the features); one line each.
    dropped : int
        Rows left out for missing values (``missing="drop"``).
    sep : str or None
        The CSV delimiter (None for .npz).
    """

    X: np.ndarray
    y: np.ndarray
    features: List[str]
    target: str
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dropped: int = 0
    sep: Optional[str] = None


def _split_names(names: Optional[Union[str, Sequence[str]]]) -> List[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if n.strip()]


def load_training_data(
    path: PathLike,
    target: Optional[str] = None,
    *,
    sep: Optional[str] = None,
    decimal: str = ".",
    features: Optional[Union[str, Sequence[str]]] = None,
    drop: Optional[Union[str, Sequence[str]]] = None,
    missing: str = "error",
    task: str = "auto",
) -> Dataset:
    """Load features and targets from a CSV or .npz file.

    Parameters
    ----------
    path : str or Path
        A CSV file with a header row, or an .npz file holding arrays ``X``
        (n_samples, n_features) and ``y`` (n_samples,) or (n_samples, k).
    target : str, optional
        The CSV column to predict.  Default: the last column.  Ignored for .npz files.
    sep, decimal : str
        The CSV delimiter (default: detected) and decimal mark (see :func:`read_csv`).
    features : str or sequence of str, optional
        The feature columns, in this order (a comma-separated string, or names).
        Default: every column but the target and pandas' unnamed index column
        (a first column named ``""`` or ``"Unnamed: 0"``), which is read as the
        row index.
    drop : str or sequence of str, optional
        Columns to leave out of the features.
    missing : {"error", "drop"}
        What to do with rows holding a missing value (:data:`MISSING_TOKENS`)
        in a feature or the target: report them, or leave them out.
    task : {"auto", "classify", "regress"}
        Unless ``"classify"``, a target whose cells are numbers but for a few
        (at most 10%) is an error naming those cells, rather than labels.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
    """
    if missing not in ("error", "drop"):
        raise DataError(f"missing must be 'error' or 'drop', got {missing!r}")
    if is_npz(path):
        if features or drop or target is not None:
            raise DataError(f"{path}: --target, --features and --drop name CSV columns; an "
                            ".npz file holds the features in X and the target in y")
        return _load_npz(path, missing)
    table = read_csv(path, sep, decimal)
    names = list(table.names)
    index_col = names[0] if names[0] in INDEX_NAMES and len(names) > 1 else None
    chosen, dropped = _split_names(features), _split_names(drop)
    table.check_names(chosen, "--features")
    table.check_names(dropped, "--drop")
    usable = [n for n in names if n != index_col]
    if len(usable) < 2 and not chosen:
        raise DataError(f"{path}: needs at least two columns (features and a target)")
    target = usable[-1] if target is None else target
    table.index(target)
    if target in chosen:
        raise DataError(f"--features: {target!r} is the target, not a feature")
    if target in dropped:
        raise DataError(f"--drop: {target!r} is the target (choose another with --target)")
    notes: List[str] = []
    if index_col is not None and index_col not in chosen and target != index_col:
        what = "an empty name" if index_col == "" else repr(index_col)
        notes.append(f"the first column ({what}) is pandas' unnamed index column: read as the "
                     "row index, not a feature")
    feats = chosen or [n for n in usable if n != target]
    feats = [n for n in feats if n not in dropped]
    if not feats:
        raise DataError(f"{path}: no feature columns left (after --drop/--features)")

    X, x_missing = table.numeric(feats)
    y, y_missing = _target(table, target, task)
    miss = np.column_stack([x_missing, y_missing[:, None]])
    n_dropped = 0
    if miss.any():
        if missing == "error":
            table.raise_missing(miss, feats + [target],
                                "give --missing drop to drop the incomplete rows")
        keep = ~miss.any(axis=1)
        n_dropped = int((~keep).sum())
        if not keep.any():
            raise DataError(f"{path}: every row has a missing value: nothing left to train on")
        X, y = X[keep], y[keep]
        notes.append(f"dropped {n_dropped} of {table.n_rows} rows with missing values "
                     "(--missing drop)")
    warnings = [w for n, col in zip(feats, X.T) if (w := _identifier_warning(n, col))]
    return Dataset(X, y, feats, target, notes, warnings, n_dropped, table.sep)


def _target(table: Table, name: str, task: str) -> Tuple[np.ndarray, np.ndarray]:
    """The raw target column: float64 when every present cell is a number, else str;
    and which cells are missing."""
    cells = table.strings(name)
    parsed = parse_numbers(cells.tolist(), table.decimal)
    if not parsed.bad:
        return parsed.values, parsed.missing
    present = int((~parsed.missing).sum())
    if task != "classify" and len(parsed.bad) <= 0.1 * present:
        shown = "; ".join(f"line {table.lines[i]}: {_short(cells[i])!r}"
                          for i in parsed.bad[:SHOWN_CELLS])
        more = (f"; and {len(parsed.bad) - SHOWN_CELLS} more"
                if len(parsed.bad) > SHOWN_CELLS else "")
        raise DataError(
            f"{table.path}: target {name!r} holds numbers but for "
            f"{_count(len(parsed.bad), 'cell')} ({shown}{more}); fix them, or give "
            "--task classify to take its values as class labels")
    return cells, parsed.missing


def _identifier_warning(name: str, values: np.ndarray) -> Optional[str]:
    """Why column ``name`` looks like a row identifier, or None."""
    drop = f"leave it out with --drop {name}" if "," not in name else "leave it out with --drop"
    if name.strip().lower() in ID_NAMES:
        return f"column {name!r} is named like a row identifier: if it is one, {drop}"
    n = len(values)
    if n >= 20 and np.all(values == np.round(values)) and len(np.unique(values)) == n:
        return (f"column {name!r} holds unique integers, one per row, as a row identifier "
                f"does: if it is one, {drop}")
    return None


def _load_npz(path: PathLike, missing: str) -> Dataset:
    arrays = read_npz(path)
    X = _npz_X(arrays, path, allow_nan=True)
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
        y_miss = is_missing(y.tolist())
    elif y.dtype.kind not in "biuf":
        raise DataError(f"{path}: y must hold numbers or strings, got dtype {y.dtype}")
    else:
        if np.isinf(y).any():
            raise DataError(f"{path}: y holds Inf")
        y_miss = np.isnan(y.reshape(len(y), -1)).any(axis=1)
    miss = np.isnan(X).any(axis=1) | y_miss
    notes: List[str] = []
    if miss.any():
        if missing == "error":
            rows = np.flatnonzero(miss)
            shown = ", ".join(map(str, rows[:SHOWN_CELLS].tolist()))
            more = f", and {len(rows) - SHOWN_CELLS} more" if len(rows) > SHOWN_CELLS else ""
            raise DataError(f"{path}: missing values (NaN) in {_count(len(rows), 'row')} "
                            f"(rows {shown}{more}, from 0); give --missing drop to drop them")
        if miss.all():
            raise DataError(f"{path}: every row has a missing value: nothing left to train on")
        X, y = X[~miss], y[~miss]
        notes.append(f"dropped {int(miss.sum())} of {len(miss)} rows with missing values "
                     "(--missing drop)")
    return Dataset(X, y, [f"x{j}" for j in range(X.shape[1])], "y", notes, [],
                   int(miss.sum()))


def load_features(
    path: PathLike, features: Sequence[str], target: Optional[str] = None,
    *, sep: Optional[str] = None, decimal: str = ".",
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
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
    sep, decimal : str
        As for :func:`read_csv`.

    Returns
    -------
    X : ndarray of shape (n_samples, len(features)), float64
    y : ndarray or None
        Raw targets (as in :class:`Dataset`; missing cells hold NaN or their
        text), or None when absent.
    y_known : ndarray of bool or None
        Which rows have a target value (None when ``y`` is None).

    Raises
    ------
    DataError
        For a missing feature column, or a feature cell that is missing or
        not a number (the message names the first few and counts them).
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
        if y is None:
            return X, None, None
        if y.dtype.kind in "US":
            y = y.astype(str)
            return X, y, ~is_missing(y.tolist())
        return X, y, np.isfinite(y.reshape(len(y), -1)).all(axis=1)
    table = read_csv(path, sep, decimal)
    absent = [f for f in features if f not in table.names]
    if absent:
        shown = ", ".join(repr(m) for m in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise DataError(f"{path}: missing feature column(s) {shown}{more} the model was trained on")
    X, x_missing = table.numeric(features)
    if x_missing.any():
        table.raise_missing(x_missing, list(features), "the model needs every feature of a "
                            "row to predict it")
    if target is None or target not in table.names:
        return X, None, None
    y, y_missing = _target(table, target, "classify")
    return X, y, ~y_missing


# -- the task ----------------------------------------------------------------------


def infer_task(y: np.ndarray) -> Tuple[str, str]:
    """Classification or regression, from the raw targets.

    Non-numeric targets are class labels.  Numeric targets are class labels
    when their values are integers, at most :data:`MAX_INTEGER_CLASSES`
    distinct ones, with at least :data:`MIN_ROWS_PER_CLASS` rows per value
    on average (or just two values); other numeric targets are regressed.

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
    k, n = len(distinct), len(v)
    if not np.all(distinct == np.round(distinct)):
        return "regress", f"{k} distinct real values"
    counted = f"{k} distinct integer values in {n} rows"
    if k <= 2:
        return "classify", counted
    if k > MAX_INTEGER_CLASSES:
        return "regress", f"{counted}: more than {MAX_INTEGER_CLASSES}, too many for classes"
    if n < MIN_ROWS_PER_CLASS * k:
        return "regress", (f"{counted}: fewer than {MIN_ROWS_PER_CLASS} rows per value, too "
                           "few for classes")
    return "classify", (f"{counted}: at most {MAX_INTEGER_CLASSES}, with "
                        f"{MIN_ROWS_PER_CLASS} or more rows per value")


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
