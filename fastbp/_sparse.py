"""Sparse inputs: scipy.sparse matrices as the kernels take them.

A scipy.sparse matrix (or array) X becomes a :class:`CSR`: the stored values
``data`` (the model's dtype), their columns ``indices`` (int64, increasing
within a row, no duplicates) and, per row r, the range ``lo[r]:hi[r]`` of its
entries.  The first layer's forward and weight gradient run over that
structure in compiled code (src/_sparse.pxi); nothing densifies X.  A row
subset (a batch, a validation split, ``take``) is two small index arrays over
the same ``indices`` and ``data``.

Costs, once per call (fit, predict, ...): CSR with int64 indices, sorted and
without duplicates, whose data has the model's dtype, is used as it is; int32
indices are copied to int64 (8 bytes per stored value, the data is not
copied); other formats (CSC, COO, ...) are converted to CSR first (scipy's
``tocsr``: a copy of the data and indices, O(nnz + n_samples)); unsorted or
duplicate indices are canonicalised on a copy (duplicates summed, as scipy's
``sum_duplicates`` sums them); data of another dtype is converted.  The
caller's matrix is never modified.

scipy is imported only by code that already holds a scipy.sparse object:
dense users never need it.
"""
import sys
from typing import Any, Optional

import numpy as np

__all__ = ["CSR", "is_sparse", "check_sparse_X"]


def is_sparse(X: Any) -> bool:
    """True for a scipy.sparse matrix or array (or a :class:`CSR`), without importing scipy."""
    if isinstance(X, CSR):
        return True
    sp = sys.modules.get("scipy.sparse")  # a scipy.sparse object means scipy.sparse is loaded
    return sp is not None and bool(sp.issparse(X))


class CSR:
    """A checked CSR data set: rows ``lo[r]:hi[r]`` of ``indices`` / ``data``.

    Parameters
    ----------
    lo, hi : ndarray of int64, shape (n_samples,)
        Start and end of each row's entries in ``indices`` and ``data``.
    indices : ndarray of int64, shape (nnz,)
        Column of each entry, increasing within a row.
    data : ndarray of float32 or float64, shape (nnz,)
        The values, finite.
    n_cols : int
        Number of columns (features).
    """

    _fastbp_csr = True  # the kernels' marker (src/_sparse.pxi)
    __slots__ = ("lo", "hi", "indices", "data", "shape")

    def __init__(self, lo: np.ndarray, hi: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 n_cols: int) -> None:
        self.lo = np.ascontiguousarray(lo, dtype=np.int64)
        self.hi = np.ascontiguousarray(hi, dtype=np.int64)
        self.indices, self.data = indices, data
        self.shape = (int(self.lo.shape[0]), int(n_cols))

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nnz(self) -> int:
        """Stored values in these rows."""
        return int((self.hi - self.lo).sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the row ranges (the entries are shared with the source)."""
        return int(self.lo.nbytes + self.hi.nbytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> "CSR":
        """The rows ``rows`` (a slice or integer indices) as a CSR over the same entries."""
        if isinstance(rows, tuple):  # X[rows, ...] or X[rows, :] (scikit-learn's indexing)
            if len(rows) != 2 or not (rows[1] is Ellipsis or rows[1] == slice(None)):
                raise TypeError("a CSR data set is indexed by rows only")
            rows = rows[0]
        return CSR(self.lo[rows], self.hi[rows], self.indices, self.data, self.shape[1])

    def take(self, rows: Any, axis: int = 0) -> "CSR":
        """Rows ``rows`` (numpy's ``take`` along axis 0)."""
        if axis != 0:
            raise ValueError("a CSR data set takes rows only (axis=0)")
        return self[np.asarray(rows, dtype=np.intp)]

    def copy(self) -> "CSR":
        """A copy with its own entries (only these rows')."""
        counts = self.hi - self.lo
        hi = np.cumsum(counts)
        pos = np.repeat(self.lo - (hi - counts), counts) + np.arange(int(hi[-1]) if hi.size else 0)
        return CSR(hi - counts, hi, self.indices[pos], self.data[pos], self.shape[1])

    def toarray(self) -> np.ndarray:
        """The dense (n_samples, n_cols) copy (for tests and the reference)."""
        out = np.zeros(self.shape, dtype=self.data.dtype)
        for i in range(self.shape[0]):
            a, b = self.lo[i], self.hi[i]
            out[i, self.indices[a:b]] = self.data[a:b]
        return out


def _first_bad_row(indptr: np.ndarray, data: np.ndarray) -> Optional[int]:
    """The first row holding a NaN or Inf, ``data`` being the stored values
    ``indptr[0]:indptr[-1]`` (indptr need not start at 0), or None."""
    with np.errstate(over="ignore", invalid="ignore"):
        if data.dtype.kind != "f" or np.isfinite(data.sum(dtype=np.float64)):
            return None
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size == 0:
        return None
    return int(np.searchsorted(indptr, indptr[0] + bad[0], side="right") - 1)


def check_sparse_X(X: Any, n_in: int, dtype: type) -> CSR:
    """A scipy.sparse X as a checked :class:`CSR` of ``dtype`` (see the module's notes).

    Raises
    ------
    ValueError
        Not 2-D, no rows, the wrong number of columns, a broken structure
        (row pointers or column indices out of range), NaN or Inf in the
        stored values (naming the first bad row), or values that overflow
        ``dtype``.
    TypeError
        Stored values that are not real numbers.
    """
    if isinstance(X, CSR):
        if X.shape[1] != n_in:
            raise ValueError(f"X has {X.shape[1]} features per sample, the network expects {n_in}")
        if X.data.dtype != np.dtype(dtype):
            raise ValueError(f"a CSR data set of {X.data.dtype} for a {np.dtype(dtype).name} network")
        return X
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_in={n_in}), got {len(X.shape)}-D")
    kind = np.dtype(X.dtype).kind
    if kind not in "biuf":
        raise TypeError(f"sparse X must hold real numbers, got dtype {X.dtype}")
    A = X if X.format == "csr" else X.tocsr()  # CSC, COO, ...: one conversion (a copy)
    if A.shape[0] == 0:
        raise ValueError("X is empty (0 samples)")
    if A.shape[1] != n_in:
        raise ValueError(f"X has {A.shape[1]} features per sample, the network expects {n_in}")
    indptr = np.asarray(A.indptr)
    n = A.shape[0]
    if (indptr.ndim != 1 or indptr.shape[0] != n + 1 or indptr[0] < 0
            or indptr[-1] > min(A.indices.shape[0], A.data.shape[0])
            or (np.diff(indptr) < 0).any()):
        raise ValueError("sparse X has a broken structure: its row pointers (indptr) are "
                         "not non-decreasing within the stored values")
    ind = A.indices[indptr[0]:indptr[-1]]
    if ind.size and (ind.min() < 0 or ind.max() >= n_in):
        raise ValueError(f"sparse X has a broken structure: column indices outside [0, {n_in})")
    if not A.has_canonical_format:  # unsorted or duplicate columns: canonicalise a copy
        A = A.copy() if A is X else A
        A.sum_duplicates()
        indptr = np.asarray(A.indptr)
    bad = _first_bad_row(indptr, A.data[indptr[0]:indptr[-1]])
    if bad is not None:
        raise ValueError(f"X contains NaN or Inf (first in row {bad})")
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(A.data, dtype=dtype)
    if data is not A.data:
        bad = _first_bad_row(indptr, data[indptr[0]:indptr[-1]])
        if bad is not None:
            raise ValueError(f"X row {bad} overflows {np.dtype(dtype).name}")
    indptr = indptr.astype(np.int64, copy=False)
    indices = np.ascontiguousarray(A.indices, dtype=np.int64)
    return CSR(indptr[:-1], indptr[1:], indices, data, n_in)


def nnz_per_row(X: Any) -> int:
    """The mean stored entries per row of a :class:`CSR` (rounded up; 0 without
    rows), which the kernels cost a step's first layer by; -1 for a dense X.
    ``workspace_size(..., nnz_per_row=)`` takes it, so that the workspace a
    caller sizes follows the call's own plan (src/_kernels.pyx)."""
    if not isinstance(X, CSR):
        return -1
    n = X.shape[0]
    total = int((X.hi - X.lo).sum(dtype=np.int64)) if n else 0
    return -(-total // n) if n else 0


def allocated_bytes(X: CSR, given: Any) -> int:
    """Bytes that checking ``given`` into ``X`` allocated (converted or copied arrays)."""
    if X is given:
        return 0
    total = X.nbytes
    for name in ("data", "indices"):
        mine, theirs = getattr(X, name), getattr(given, name, None)
        if not (isinstance(theirs, np.ndarray) and np.may_share_memory(mine, theirs)):
            total += int(mine.nbytes)
    return total
