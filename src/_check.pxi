# _check.pxi (included by _kernels.pyx): the NaN / Inf check of the data a
# call is given (fastbp/_common.py, _first_bad_row), in compiled code.
#
# Design: numpy's check of a large X (a float64 sum, or isfinite with a
# temporary the size of the data) cost 7.5 ms per fit call on 16,384 x 784
# float32, 8% of a 2-thread epoch of 784-256-128-10.  Here one pass reads
# each value once, with no temporary: per row, bad |= (x - x) != 0, true
# exactly for NaN and +-Inf (x - x is 0 for every finite x, denormals and
# flush-to-zero included, NaN otherwise), an integer OR the compiler
# vectorises; the scan stops at the first row found.  On the calling thread
# only: a second thread would save about a third of a pass (1.2 ms against
# 1.8 ms on that X) and, with the other core busy, could make the call wait
# for a descheduled thread's block (issue 8); no parallel region, so nothing
# is shared.


cdef int64_t first_bad_in(const floating *x, int64_t n_in,   # IN rows of n_in values
                          int64_t n_samples) noexcept nogil:
    """The first row of x (n_samples x n_in, C order) holding NaN or Inf, or -1."""
    cdef int64_t i, j
    cdef const floating *row
    cdef int bad
    for i in range(n_samples):
        row = x + i * n_in
        bad = 0
        for j in range(n_in):
            bad |= (row[j] - row[j]) != 0
        if bad:
            return i
    return -1


def first_nonfinite_row(const floating[:, ::1] x):
    """The index of the first row of ``x`` holding NaN or Inf, or -1
    (fastbp/_common.py's check of X and Y).

    Parameters
    ----------
    x : C-contiguous 2-D float32 or float64 array (read only).

    Returns
    -------
    int
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        return -1
    cdef int64_t r
    with nogil:
        r = first_bad_in(&x[0, 0], x.shape[1], x.shape[0])
    return int(r)
