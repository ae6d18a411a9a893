# _dropout.pxi: inverted dropout on the hidden activations of a training step
# (included by _kernels.pyx).
#
# Design
# ------
# * Hidden layer k (1 <= k < L) with drop probability p_k > 0 keeps two
#   arrays of a batch: A_k = act(z_k), as the GEMM epilogue wrote it (the
#   backward pass takes act' from it), and D_k = mask_k * scale_k * A_k, the
#   layer's output that the next layer's forward pass and W_{k+1}'s
#   gradient read.  D_k lives in a separate buffer `dbuf` (Drop.off[k]).
# * Masks are Philox-4x32-10 of (seed; unit, row, step, epoch) exactly as
#   docs/optim.md and fastbp/_philox.py map them (src/fbp_philox.h): a pure
#   function of the coordinates, so whichever thread forms whichever block
#   of D_k gets the same mask, and nothing is stored between the forward and
#   the backward pass: the backward pass recomputes it, delta_k =
#   ((delta_{k+1} W_k) * act'(A_k)) * mask * scale, by the same call on
#   the delta's run.  `unit` counts hidden units of all hidden layers in
#   order (Drop.unit0[k] is layer k's first), `row` is the row's position in
#   the batch, `step` the batch's index in the epoch.
# * Why every write inside a parallel region is private to its thread: the
#   tile that forms A_k[r0:r1, j0:j1] (forward) or delta_k[r0:r1, j0:j1]
#   (backward) -- its own rows (row split) or columns (unit split) -- is the
#   one that writes D_k[r0:r1, j0:j1] or masks that block of delta_k;
#   fbp_dropout_range writes only its run [0, n).
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "fbp_philox.h" nogil:
    void fbp_dropout_range_f32(float *x, int64_t n, uint64_t unit0, uint64_t seed,
                               uint32_t epoch, uint32_t step, uint32_t row, double p,
                               float scale)
    void fbp_dropout_range_f64(double *x, int64_t n, uint64_t unit0, uint64_t seed,
                               uint32_t epoch, uint32_t step, uint32_t row, double p,
                               double scale)


cdef struct Drop:
    # Dropout of one call (a training step's hidden layers); on == 0: none.
    bint on
    void *dbuf               # D_k arrays (rows, sizes[k]) at off[k]
    int64_t off[65]          # offset of D_k in dbuf, -1 where p_k == 0 (and k == 0, L)
    double p[65]             # p_k, k = 1 .. L-1
    uint64_t unit0[65]       # global unit index of layer k's unit 0
    uint64_t seed
    uint32_t epoch
    uint32_t step            # the batch's index in the epoch (set per step)


cdef int64_t drop_layout(const Spec *s, Drop *d, const double *p,   # IN p_1 .. p_{L-1}, or NULL
                         int64_t rows) noexcept nogil:
    """Offsets of the D_k arrays for batches of `rows` rows; returns the
    elements dbuf needs (0: no dropout)."""
    cdef int k, L = s.n_layers
    cdef int64_t total = 0
    cdef uint64_t unit = 0
    d.on = False
    for k in range(L + 1):
        d.off[k] = -1
        d.p[k] = 0.0
        d.unit0[k] = 0
    if p == NULL:
        return 0
    for k in range(1, L):
        d.unit0[k] = unit
        unit += <uint64_t>s.sizes[k]
        d.p[k] = p[k - 1]
        if p[k - 1] > 0:
            d.off[k] = total
            total += rows * s.sizes[k]
            d.on = True
    return total


cdef inline bint drop_layer(const Drop *d, int k) noexcept nogil:
    return d.on and d.off[k] >= 0


cdef void drop_block(const Drop *d, int k,
                     floating *x, int64_t ld,    # IN/OUT block of rows r0..r1, columns j0..j1 (row 0 at x)
                     int64_t r0, int64_t r1, int64_t j0, int64_t j1) noexcept nogil:
    """x[i, j] = keep(i, unit0[k] + j) ? x[i, j] * scale : 0 on the block."""
    cdef int64_t i
    cdef double p = d.p[k]
    cdef floating scale = <floating>(1.0 / (1.0 - p))
    if j1 <= j0:
        return
    for i in range(r0, r1):
        if floating is float:
            fbp_dropout_range_f32(x + i * ld + j0, j1 - j0, d.unit0[k] + <uint64_t>j0, d.seed,
                                  d.epoch, d.step, <uint32_t>i, p, scale)
        else:
            fbp_dropout_range_f64(x + i * ld + j0, j1 - j0, d.unit0[k] + <uint64_t>j0, d.seed,
                                  d.epoch, d.step, <uint32_t>i, p, scale)


cdef void drop_forward(const Drop *d, int k,
                       const floating *a,         # IN A_k (ld sizes[k])
                       floating *out,             # OUT D_k (ld sizes[k])
                       int64_t n, int64_t r0, int64_t r1, int64_t j0, int64_t j1) noexcept nogil:
    """D_k[r0:r1, j0:j1] = mask * scale * A_k[r0:r1, j0:j1]."""
    cdef int64_t i
    if j1 <= j0:
        return
    for i in range(r0, r1):
        memcpy(out + i * n + j0, a + i * n + j0, (j1 - j0) * sizeof(floating))
    drop_block(d, k, out, n, r0, r1, j0, j1)
