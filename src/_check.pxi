# _check.pxi (included by _kernels.pyx): the NaN / Inf check of the data a
# call is given (fastbp/_common.py, _first_bad_row), in compiled code.
#
# Design: numpy's check of a large X (a float64 sum, or isfinite with a
# temporary the size of the data) cost 7.5 ms per fit call on 16,384 x 784
# float32, 8% of a 2-thread epoch of 784-256-128-10.  Here one pass reads
# each value once, with no temporary: per row, bad |= (x - x) != 0, true
# exactly for NaN and +-Inf (x - x is 0 for every finite x, denormals and
# flush-to-zero included, NaN otherwise), an integer OR the compiler
# vectorises; the row is done when its last value is.  With threads the rows
# are cut into one contiguous block per thread; the thread of a block scans it in
# order and writes only that block's slot first[b] (the first bad row of the
# block, or the block's end), so every write inside the parallel region is
# private to its thread; the caller takes the least slot: the same first bad row as
# a serial scan, for any number of threads.  (In a process forked after a
# team ran, one thread whatever n_threads says: libgomp is not fork-safe,
# fbp_team.h.)

# Below this many values the check runs on the calling thread alone.
DEF CHECK_PAR_MIN = 1 << 20


cdef int64_t first_bad_in(const floating *x, int64_t n_in,   # IN rows of n_in values
                          int64_t r0, int64_t r1) noexcept nogil:
    """The first row in r0..r1 holding NaN or Inf, or r1."""
    cdef int64_t i, j
    cdef const floating *row
    cdef int bad
    for i in range(r0, r1):
        row = x + i * n_in
        bad = 0
        for j in range(n_in):
            bad |= (row[j] - row[j]) != 0
        if bad:
            return i
    return r1


cdef int64_t first_bad_rows(const floating *x, int64_t n_samples, int64_t n_in,  # IN
                            int n_threads) noexcept nogil:
    """The first row of x (n_samples x n_in, C order) holding NaN or Inf, or
    -1: with n_threads threads for a large x (see the block above)."""
    cdef int64_t first[64]
    cdef int64_t best = n_samples
    cdef int t = 0, b = 0, size = 1, nt = n_threads
    if nt > 64:
        nt = 64
    if nt > n_samples:
        nt = <int>n_samples
    if nt <= 1 or n_samples * n_in < CHECK_PAR_MIN or fbp_serial_after_fork():
        # (a child forked after a team ran: one thread, as every kernel)
        best = first_bad_in(x, n_in, 0, n_samples)
    else:
        with parallel(num_threads=nt):
            # block b to thread b, b + size, ...: all blocks scanned even when
            # the runtime starts fewer threads than asked (or has no OpenMP)
            t = threadid()
            size = fbp_team_size()
            if t == 0:
                fbp_count_parallel(size)   # (parallel_regions: the tests)
            b = t
            while b < nt:
                first[b] = first_bad_in(x, n_in, part(n_samples, b, nt),
                                        part(n_samples, b + 1, nt))
                b = b + size
        for b in range(nt):
            if first[b] < part(n_samples, b + 1, nt) and first[b] < best:
                best = first[b]
    return -1 if best == n_samples else best


def first_nonfinite_row(const floating[:, ::1] x, int n_threads=1):
    """The index of the first row of ``x`` holding NaN or Inf, or -1
    (fastbp/_common.py's check of X and Y; threads only for a large x).

    Parameters
    ----------
    x : C-contiguous 2-D float32 or float64 array.
    n_threads : int
        Threads at most (``fastbp.get_num_threads()``).
    """
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        return -1
    cdef int64_t r
    with nogil:
        r = first_bad_rows(&x[0, 0], x.shape[0], x.shape[1], n_threads)
    return int(r)
