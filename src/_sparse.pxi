# _sparse.pxi (included by _kernels.pyx): the first layer on sparse (CSR) input.
#
# Design
# ------
# * The data set X stays in CSR form: the stored values `data` and their
#   columns `indices` (int64, increasing within a row, no duplicates: the
#   Python side canonicalises a copy when needed), and for each data-set row
#   r the range lo[r]..hi[r] of its entries.  lo/hi rather than one indptr so
#   that a row subset (a shuffled batch, a validation slice, an estimator's
#   X.take) is two small index arrays over the same data, never a copy of X.
# * A batch is its rows' ranges: batch row i is data-set row rows[i] (the
#   shuffled order) or start + i; nothing of X is gathered (A_0 is not even
#   allocated: WS_SPARSE), only the targets.  Thread 0 sets rows/start for
#   each step (sparse_bind) before publishing it, as it sets e.wsum.
# * Only layer 0 changes: its forward z_ij = sum over row i's entries
#   (c, v) of v W_0[j, c], then bias and the hidden activation; its weight
#   gradient dW_0[j, c] = sum_i delta_1[i, j] x_ic as a scatter of
#   delta_1[i, j] * (row i) into row j of the gradient (or of the SGD step
#   on W_0).  The later layers and every delta run as before (the input's
#   own delta, delta_0, is never formed).
# * Same bits as the dense GEMM on the dense copy of X (fbp_gemm.h), but
#   for the sign of a zero under FTZ/DAZ (below): the
#   dense product sums each element in K-slabs of FBP_KC = 256, per slab an
#   accumulator from +0 chained with fma (mul then add on the generic code
#   path) in k order, the slabs combined as c = alpha*acc, then
#   c = fma(alpha, acc, c).  The sparse sums walk the same terms in the same
#   order with the same slabs and operations, leaving out the terms whose x
#   is 0 (or, for the gradient, whose delta is 0).  Leaving them out changes
#   no value, and no bit with FTZ/DAZ off: such a term adds +-0 to an
#   accumulator that is then never -0 (it starts at +0, and a sum that
#   rounds to zero is +0 in round-to-nearest), so the finite dense sums see
#   the same value before and after each zero term.  With FTZ/DAZ on (`fit`'s
#   default, flush_denormals=True) a zero may differ in sign, nothing else:
#   a tiny term that flushes makes the accumulator -0, the dense sum's next
#   zero term turns it back into +0 (-0 + +0 = +0), the sparse sum, which
#   skips that term, keeps -0 (and the other way round in a step
#   W - lr*g).  Giving the dense sign would take a test and an add per
#   stored value in the forward (is the next column k+1? is the slab
#   over?: +27% instructions in the 4-row dot alone, callgrind, 100 entries
#   a row), more for empty slabs, and per (row, column) of the gradient:
#   not done.  -0 and +0 are the same value, and what follows them (sums,
#   products, the activations, losses and optimizers; nothing divides by
#   them) keeps the results equal as values.  The bias and activation are
#   the GEMM's own epilogue (a K = 0 call with beta = 1: c = fma(1, 0, c) =
#   c, then the epilogue).  The code path (fused or not) is the GEMM's
#   current one (`fused`), so results stay equal under FBP_GEMM_ISA too.
#   Contraction is off in the C below: every fma is written out.
# * A weight of +-Inf or NaN in W_0 gives NaN in the dense product for a
#   zero x and not here.  The kernel does not look at the weights: when the
#   batch's rows lack that weight's feature the sparse loss is finite and
#   the step is applied where the dense one (NaN loss) is not.  Either way
#   the fit stops at the same weights: fastbp.model's weight check after the
#   epoch finds the step that made a weight non-finite and rewinds to the
#   weights it started from (the error says "update made weights NaN or
#   Inf", where the dense fit, stopped by the NaN loss of a later step, says
#   "loss was NaN or Inf").
# * Threads: the tiles are those of _steps.pxi.  A forward tile writes the
#   block A_1[r0:r1, j0:j1] it owns (its rows in the row split, its columns in
#   the unit split) and D_1 there; a part-2 tile owns units o0..o1 of layer 0
#   and writes only rows o0..o1 of W_0 / grad (and of the optimizer state,
#   through opt_units), b_0[o0:o1] and colsum[o0:o1].  The scratch rows `tmp`
#   that a part-2 tile accumulates a K-slab in (and, with Adam, forms up to 4
#   gradient rows in) are the running thread's own (block
#   omp_get_thread_num() of n_tmp blocks of SP_TMP_ROWS rows, zero again
#   after each use), so
#   every write inside a parallel region is private to its thread; each sum
#   has a fixed order whatever the tiling, so any thread count gives the same
#   bits.
# * Cost: the forward and the gradient touch nnz(batch) * n_out entries of
#   W_0 (4 rows j of W_0 at a time in the outer loop, so they stay in cache
#   while the tile's rows walk them); the optimizer's update stays dense in
#   W_0 (Adam moves every weight).  With Adam (no clipping) the gradient rows
#   of 4 units at a time are formed in scratch rows, then the l2 term, the
#   update and their zeroing run in one pass over those rows of W_0 and the
#   moments (opt_rows_l2z, fbp_adam_l2z_rows): each weight and moment is
#   loaded once per step; other optimizers step each unit's row of grad
#   right after it is formed (opt_units).

cdef extern from *:
    """
    /* No contraction in these helpers (every fma is written out), and only
       in them: GCC pushes and pops its options; clang's float_control
       push/pop saves and restores its FP pragma state, FP_CONTRACT included
       (clang >= 11), so the rest of _kernels.c keeps the command line's. */
    #if defined(__clang__)
    #pragma float_control(push)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    static int fbp_sp_tid(void) { return omp_get_thread_num(); }
    #else
    static int fbp_sp_tid(void) { return 0; }
    #endif
    #define FBP_SP_KC_SHIFT 8   /* fbp_gemm.c's FBP_KC = 256: the K-slab depth of every path */
    #define FBP_SP_KC (1 << FBP_SP_KC_SHIFT)
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define FBP_SP_TARGET_FMA __attribute__((target("fma")))
    #else
    #define FBP_SP_TARGET_FMA
    #endif

    /* sum_p val[p] w[idx[p]] over p0..p1 (columns increasing), in the GEMM's
       K-slabs: acc = FMA(v, w, acc) per slab, slabs combined by adds.
       IN idx, val (the data set), p0, p1, w (a row of W_0); returns the sum. */
    #define FBP_SP_DOT(NAME, T, FMA, TARGET)                                      \\
    static TARGET T NAME(const int64_t *idx, const T *val, int64_t p0, int64_t p1, \\
                         const T *w)                                              \\
    {                                                                             \\
        T c = 0, acc = 0;                                                         \\
        int64_t slab = -1;                                                        \\
        int first = 1;                                                            \\
        for (int64_t p = p0; p < p1; p++) {                                       \\
            const int64_t k = idx[p], sk = k >> FBP_SP_KC_SHIFT;                  \\
            if (sk != slab) {                                                     \\
                if (slab >= 0) { c = first ? acc : c + acc; first = 0; }          \\
                slab = sk; acc = 0;                                               \\
            }                                                                     \\
            acc = FMA(val[p], w[k], acc);                                         \\
        }                                                                         \\
        if (slab >= 0) c = first ? acc : c + acc;                                 \\
        return c;                                                                 \\
    }
    /* The same for 4 rows of W at once (w + u*ldw, u = 0..3), into out[u*ldo]:
       4 independent chains, each exactly NAME's.
       IN idx, val, p0, p1, w, ldw; OUT out[0], out[ldo], out[2 ldo], out[3 ldo]. */
    #define FBP_SP_DOT4(NAME, T, FMA, TARGET)                                     \\
    static TARGET void NAME(const int64_t *idx, const T *val, int64_t p0, int64_t p1, \\
                            const T *w, int64_t ldw, T *out, int64_t ldo)         \\
    {                                                                             \\
        const T *w1 = w + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;                    \\
        T c0 = 0, c1 = 0, c2 = 0, c3 = 0, a0 = 0, a1 = 0, a2 = 0, a3 = 0;         \\
        int64_t slab = -1;                                                        \\
        int first = 1;                                                            \\
        for (int64_t p = p0; p < p1; p++) {                                       \\
            const int64_t k = idx[p], sk = k >> FBP_SP_KC_SHIFT;                  \\
            if (sk != slab) {                                                     \\
                if (slab >= 0) {                                                  \\
                    if (first) { c0 = a0; c1 = a1; c2 = a2; c3 = a3; first = 0; } \\
                    else { c0 = c0 + a0; c1 = c1 + a1; c2 = c2 + a2; c3 = c3 + a3; } \\
                }                                                                 \\
                slab = sk; a0 = a1 = a2 = a3 = 0;                                 \\
            }                                                                     \\
            const T v = val[p];                                                   \\
            a0 = FMA(v, w[k], a0);                                                \\
            a1 = FMA(v, w1[k], a1);                                               \\
            a2 = FMA(v, w2[k], a2);                                               \\
            a3 = FMA(v, w3[k], a3);                                               \\
        }                                                                         \\
        if (slab >= 0) {                                                          \\
            if (first) { c0 = a0; c1 = a1; c2 = a2; c3 = a3; }                    \\
            else { c0 = c0 + a0; c1 = c1 + a1; c2 = c2 + a2; c3 = c3 + a3; }      \\
        }                                                                         \\
        out[0] = c0; out[ldo] = c1; out[2 * ldo] = c2; out[3 * ldo] = c3;         \\
    }
    /* g[idx[p]] = FMA(d, val[p], g[idx[p]]) over p0..p1.
       IN idx, val, p0, p1, d; IN/OUT g (a row, n_in). */
    #define FBP_SP_AXPY(NAME, T, FMA, TARGET)                                     \\
    static TARGET void NAME(const int64_t *idx, const T *val, int64_t p0, int64_t p1, \\
                            T d, T *g)                                            \\
    {                                                                             \\
        for (int64_t p = p0; p < p1; p++)                                         \\
            g[idx[p]] = FMA(d, val[p], g[idx[p]]);                                \\
    }
    /* g[c] = FMA(alpha, tmp[c], g[c]) and tmp[c] = 0 for the columns c of
       p0..p1 (a column seen again adds FMA(alpha, 0, g) = g).
       IN idx, p0, p1, alpha; IN/OUT tmp (zero after), g (rows, n_in). */
    #define FBP_SP_MERGE(NAME, T, FMA, TARGET)                                    \\
    static TARGET void NAME(const int64_t *idx, int64_t p0, int64_t p1, T alpha,  \\
                            T *tmp, T *g)                                         \\
    {                                                                             \\
        for (int64_t p = p0; p < p1; p++) {                                       \\
            const int64_t c = idx[p];                                             \\
            g[c] = FMA(alpha, tmp[c], g[c]);                                      \\
            tmp[c] = 0;                                                           \\
        }                                                                         \\
    }
    #define FBP_SP_MULADD(a, b, c) ((a) * (b) + (c))
    FBP_SP_DOT(fbp_sp_dot_f32, float, FBP_SP_MULADD, )
    FBP_SP_DOT(fbp_sp_dot_f64, double, FBP_SP_MULADD, )
    FBP_SP_DOT(fbp_sp_dot_f32f, float, __builtin_fmaf, FBP_SP_TARGET_FMA)
    FBP_SP_DOT(fbp_sp_dot_f64f, double, __builtin_fma, FBP_SP_TARGET_FMA)
    FBP_SP_DOT4(fbp_sp_dot4_f32, float, FBP_SP_MULADD, )
    FBP_SP_DOT4(fbp_sp_dot4_f64, double, FBP_SP_MULADD, )
    FBP_SP_DOT4(fbp_sp_dot4_f32f, float, __builtin_fmaf, FBP_SP_TARGET_FMA)
    FBP_SP_DOT4(fbp_sp_dot4_f64f, double, __builtin_fma, FBP_SP_TARGET_FMA)
    FBP_SP_AXPY(fbp_sp_axpy_f32, float, FBP_SP_MULADD, )
    FBP_SP_AXPY(fbp_sp_axpy_f64, double, FBP_SP_MULADD, )
    FBP_SP_AXPY(fbp_sp_axpy_f32f, float, __builtin_fmaf, FBP_SP_TARGET_FMA)
    FBP_SP_AXPY(fbp_sp_axpy_f64f, double, __builtin_fma, FBP_SP_TARGET_FMA)
    FBP_SP_MERGE(fbp_sp_merge_f32, float, FBP_SP_MULADD, )
    FBP_SP_MERGE(fbp_sp_merge_f64, double, FBP_SP_MULADD, )
    FBP_SP_MERGE(fbp_sp_merge_f32f, float, __builtin_fmaf, FBP_SP_TARGET_FMA)
    FBP_SP_MERGE(fbp_sp_merge_f64f, double, __builtin_fma, FBP_SP_TARGET_FMA)
    #if defined(__clang__)
    #pragma float_control(pop)
    #elif defined(__GNUC__)
    #pragma GCC pop_options
    #endif
    """
    int fbp_sp_tid() nogil
    int FBP_SP_KC
    float fbp_sp_dot_f32(const int64_t *idx, const float *val, int64_t p0, int64_t p1, const float *w) nogil
    double fbp_sp_dot_f64(const int64_t *idx, const double *val, int64_t p0, int64_t p1, const double *w) nogil
    float fbp_sp_dot_f32f(const int64_t *idx, const float *val, int64_t p0, int64_t p1, const float *w) nogil
    double fbp_sp_dot_f64f(const int64_t *idx, const double *val, int64_t p0, int64_t p1, const double *w) nogil
    void fbp_sp_dot4_f32(const int64_t *idx, const float *val, int64_t p0, int64_t p1, const float *w, int64_t ldw, float *out, int64_t ldo) nogil
    void fbp_sp_dot4_f64(const int64_t *idx, const double *val, int64_t p0, int64_t p1, const double *w, int64_t ldw, double *out, int64_t ldo) nogil
    void fbp_sp_dot4_f32f(const int64_t *idx, const float *val, int64_t p0, int64_t p1, const float *w, int64_t ldw, float *out, int64_t ldo) nogil
    void fbp_sp_dot4_f64f(const int64_t *idx, const double *val, int64_t p0, int64_t p1, const double *w, int64_t ldw, double *out, int64_t ldo) nogil
    void fbp_sp_axpy_f32(const int64_t *idx, const float *val, int64_t p0, int64_t p1, float d, float *g) nogil
    void fbp_sp_axpy_f64(const int64_t *idx, const double *val, int64_t p0, int64_t p1, double d, double *g) nogil
    void fbp_sp_axpy_f32f(const int64_t *idx, const float *val, int64_t p0, int64_t p1, float d, float *g) nogil
    void fbp_sp_axpy_f64f(const int64_t *idx, const double *val, int64_t p0, int64_t p1, double d, double *g) nogil
    void fbp_sp_merge_f32(const int64_t *idx, int64_t p0, int64_t p1, float alpha, float *tmp, float *g) nogil
    void fbp_sp_merge_f64(const int64_t *idx, int64_t p0, int64_t p1, double alpha, double *tmp, double *g) nogil
    void fbp_sp_merge_f32f(const int64_t *idx, int64_t p0, int64_t p1, float alpha, float *tmp, float *g) nogil
    void fbp_sp_merge_f64f(const int64_t *idx, int64_t p0, int64_t p1, double alpha, double *tmp, double *g) nogil


cdef enum:
    # Scratch rows (n_in each) per thread: row 0 accumulates a K-slab of a
    # gradient row, rows 1..4 hold the gradient rows of up to 4 units on
    # the fused Adam path (sparse_update_units); all zero between uses.
    SP_TMP_ROWS = 5


cdef struct Sparse:
    const int64_t *lo       # IN (n_rows,) first entry of data-set row r
    const int64_t *hi       # IN (n_rows,) one past its last entry
    const int64_t *indices  # IN column of each entry (increasing within a row)
    const void *data        # IN value of each entry (theta's dtype)
    void *tmp               # scratch: n_tmp blocks of SP_TMP_ROWS rows of n_in, all zero between uses
    int n_tmp
    bint fused              # the GEMM's code path uses fused multiply-adds
    const int64_t *rows     # this step: batch row i is data-set row rows[i] ...
    int64_t start           # ... or start + i when rows == NULL (sparse_bind)


cdef inline void sparse_bind(Sparse *sp,            # OUT its rows, start (or NULL: dense X)
                             const int64_t *rows,   # IN  the batch's data-set rows, or NULL
                             int64_t start) noexcept nogil:  # IN  the first row when rows is NULL
    """The batch of the next step (thread 0, before the step is published)."""
    if sp != NULL:
        sp.rows = rows
        sp.start = start


cdef inline void sparse_range(const Sparse *sp,     # IN  the data set and this step's batch
                              int64_t i,            # IN  a batch row
                              int64_t *p0,          # OUT its first entry
                              int64_t *p1) noexcept nogil:  # OUT one past its last
    """The entries p0..p1 of batch row i."""
    cdef int64_t r = sp.rows[i] if sp.rows != NULL else sp.start + i
    p0[0] = sp.lo[r]
    p1[0] = sp.hi[r]


cdef inline floating sparse_dot(const Sparse *sp,          # IN  the data set
                                int64_t p0, int64_t p1,    # IN  the entries of one row
                                const floating *w) noexcept nogil:   # IN  a row of W_0
    if floating is float:
        if sp.fused:
            return fbp_sp_dot_f32f(sp.indices, <const float *>sp.data, p0, p1, w)
        return fbp_sp_dot_f32(sp.indices, <const float *>sp.data, p0, p1, w)
    else:
        if sp.fused:
            return fbp_sp_dot_f64f(sp.indices, <const double *>sp.data, p0, p1, w)
        return fbp_sp_dot_f64(sp.indices, <const double *>sp.data, p0, p1, w)


cdef inline void sparse_dot4(const Sparse *sp,             # IN  the data set
                             int64_t p0, int64_t p1,       # IN  the entries of one row
                             const floating *w, int64_t ldw,     # IN  4 rows of W_0
                             floating *out, int64_t ldo) noexcept nogil:  # OUT out[0], out[ldo], ...
    if floating is float:
        if sp.fused:
            fbp_sp_dot4_f32f(sp.indices, <const float *>sp.data, p0, p1, w, ldw, out, ldo)
        else:
            fbp_sp_dot4_f32(sp.indices, <const float *>sp.data, p0, p1, w, ldw, out, ldo)
    else:
        if sp.fused:
            fbp_sp_dot4_f64f(sp.indices, <const double *>sp.data, p0, p1, w, ldw, out, ldo)
        else:
            fbp_sp_dot4_f64(sp.indices, <const double *>sp.data, p0, p1, w, ldw, out, ldo)


cdef inline void sparse_axpy(const Sparse *sp,             # IN  the data set
                             int64_t p0, int64_t p1,       # IN  the entries of one row
                             floating d,                   # IN  its factor
                             floating *g) noexcept nogil:  # IN/OUT a row (n_in)
    if floating is float:
        if sp.fused:
            fbp_sp_axpy_f32f(sp.indices, <const float *>sp.data, p0, p1, d, g)
        else:
            fbp_sp_axpy_f32(sp.indices, <const float *>sp.data, p0, p1, d, g)
    else:
        if sp.fused:
            fbp_sp_axpy_f64f(sp.indices, <const double *>sp.data, p0, p1, d, g)
        else:
            fbp_sp_axpy_f64(sp.indices, <const double *>sp.data, p0, p1, d, g)


cdef inline void sparse_merge(const Sparse *sp,            # IN  the data set
                              int64_t p0, int64_t p1,      # IN  the entries of one row
                              floating alpha,              # IN
                              floating *tmp,                         # IN/OUT (zero after)
                              floating *g) noexcept nogil:           # IN/OUT a row (n_in)
    if floating is float:
        if sp.fused:
            fbp_sp_merge_f32f(sp.indices, p0, p1, alpha, tmp, g)
        else:
            fbp_sp_merge_f32(sp.indices, p0, p1, alpha, tmp, g)
    else:
        if sp.fused:
            fbp_sp_merge_f64f(sp.indices, p0, p1, alpha, tmp, g)
        else:
            fbp_sp_merge_f64(sp.indices, p0, p1, alpha, tmp, g)


cdef void sparse_forward_cols(const Spec *s,                  # IN  the network
                              const Extra *e,                 # IN  e.sp: X and the batch; dropout
                              const floating *theta,          # IN  W_0, b_0
                              floating *ws, const Work *w,    # OUT A_1[r0:r1, j0:j1] (and D_1)
                              int64_t r0, int64_t r1,         # IN  the tile's batch rows
                              int64_t j0, int64_t j1) noexcept nogil:  # IN  and units
    """A_1[r0:r1, j0:j1] = act(X_batch[r0:r1] W_0[j0:j1]^T + b_0[j0:j1]), X
    sparse; bitwise the dense forward_cols of layer 0 on X's dense copy
    (a zero's sign aside under FTZ/DAZ, see the top)."""
    cdef const Sparse *sp = e.sp
    cdef int64_t i, j, p0, p1, n_in = s.sizes[0], n_out = s.sizes[1]
    cdef floating *z = ws + w.act[1]
    cdef const floating *W = theta + s.w_off[0]
    if r1 <= r0 or j1 <= j0:
        return
    # Units 4 at a time (4 independent sums hide the multiply-add latency);
    # their rows of W_0 stay in cache while the tile's rows walk them.
    j = j0
    while j + 4 <= j1:
        for i in range(r0, r1):
            sparse_range(sp, i, &p0, &p1)
            sparse_dot4(sp, p0, p1, W + j * n_in, n_in, z + i * n_out + j, 1)
        j += 4
    for j in range(j, j1):
        for i in range(r0, r1):
            sparse_range(sp, i, &p0, &p1)
            z[i * n_out + j] = sparse_dot(sp, p0, p1, W + j * n_in)
    # The GEMM's epilogue on the finished sums: K = 0, beta = 1 (c = c + 0).
    gemm(0, 1, r1 - r0, j1 - j0, 0,
         <floating>1, W, 1, W, 1,
         <floating>1, z + r0 * n_out + j0, n_out,
         theta + s.b_off[0] + j0 if s.b_off[0] >= 0 else NULL,
         s.hidden if s.n_layers > 1 else ACT_IDENTITY,
         NULL, 0, 1)
    if drop_layer(&e.drop, 1):
        drop_forward(&e.drop, 1, ws + w.act[1], <floating *>e.drop.dbuf + e.drop.off[1],
                     n_out, r0, r1, j0, j1)


cdef void sparse_unit_rows(const Sparse *sp,          # IN  the data set and this step's batch
                           const floating *d, int64_t ld,  # IN column j of delta_1
                           int64_t m,                 # IN  batch rows
                           floating alpha,            # IN
                           bint accumulate_first,     # IN
                           floating *tmp,             # IN/OUT scratch row (n_in), zero in and out
                           floating *g) noexcept nogil:  # IN/OUT a row of grad or W_0 (n_in)
    """g += alpha * sum_i d[i] x_i, K-slab by K-slab as the GEMM (alpha = 1 on
    a zeroed g: the gradient; alpha = -lr on W_0: the SGD step).  With
    accumulate_first the first slab's sum goes straight into g (the GEMM's
    c = alpha*acc with alpha = 1 and beta = 0)."""
    cdef int64_t i, i0, i1, p0, p1
    cdef floating di
    i0 = 0
    while i0 < m:
        i1 = min(m, i0 + FBP_SP_KC)
        if i0 == 0 and accumulate_first:
            for i in range(i0, i1):
                di = d[i * ld]
                if di != 0:
                    sparse_range(sp, i, &p0, &p1)
                    sparse_axpy(sp, p0, p1, di, g)
        else:
            for i in range(i0, i1):
                di = d[i * ld]
                if di != 0:
                    sparse_range(sp, i, &p0, &p1)
                    sparse_axpy(sp, p0, p1, di, tmp)
            for i in range(i0, i1):
                if d[i * ld] != 0:
                    sparse_range(sp, i, &p0, &p1)
                    sparse_merge(sp, p0, p1, alpha, tmp, g)
        i0 = i1


cdef void sparse_update_units(const Spec *s,      # IN  the network
                              const Extra *e,     # IN  e.sp: X and the batch; e.opt: the optimizer
                              floating *theta,    # IN, and OUT when grad == NULL or on the optimizer path
                              floating *grad,     # OUT gradient rows o0..o1 of W_0 (and b_0), or NULL
                              floating lr,        # IN  the SGD step when grad == NULL
                              floating *snap,     # OUT copy of what this call updates, or NULL
                              floating *ws, const Work *w,  # IN delta_1; colsum scratch
                              int64_t m,          # IN  batch rows
                              int64_t o0, int64_t o1) noexcept nogil:  # IN  the tile's units of layer 0
    """update_units of layer 0 with X sparse: the same bits as the dense one
    (a zero's sign aside under FTZ/DAZ, see the top)."""
    cdef const Sparse *sp = e.sp
    cdef int64_t j, n_in = s.sizes[0], n_out = s.sizes[1]
    cdef const floating *d = ws + w.delta[1]
    cdef int tid = fbp_sp_tid()
    cdef floating *tmp
    cdef floating *g
    cdef floating *colsum
    cdef int q, u
    if o1 <= o0:
        return
    if tid < 0 or tid >= sp.n_tmp:
        tid = 0     # a serial call inside an outer OpenMP region: its only user
    tmp = <floating *>sp.tmp + tid * SP_TMP_ROWS * n_in
    if grad != NULL:
        if s.b_off[0] >= 0:
            column_sums(d + o0, m, o1 - o0, n_out, grad + s.b_off[0] + o0)
        if opt_fuses_rows(e.opt):
            # Adam: up to 4 units' gradient rows in the thread's scratch rows
            # 1..4 (zero in and out), then l2 + Adam + zeroing in one pass
            # over them (opt_rows_l2z); W_0's rows of grad are not written.
            g = tmp + n_in
            j = o0
            while j < o1:
                q = <int>min(<int64_t>4, o1 - j)
                for u in range(q):
                    sparse_unit_rows(sp, d + j + u, n_out, m, <floating>1, True, tmp,
                                     g + u * n_in)
                opt_rows_l2z(s, e.opt, theta, g, snap, m, 0, j, q)
                j += q
            if s.b_off[0] >= 0:
                opt_copy(e.opt, snap, theta, s.b_off[0] + o0, o1 - o0)
                opt_range(e.opt, theta, grad, s.b_off[0] + o0, o1 - o0)
            return
        for j in range(o0, o1):
            memset(grad + s.w_off[0] + j * n_in, 0, n_in * sizeof(floating))
            sparse_unit_rows(sp, d + j, n_out, m, <floating>1, True, tmp,
                             grad + s.w_off[0] + j * n_in)
            if e.opt != NULL:
                # unit by unit, while its gradient row is in cache (the
                # optimizer's result does not depend on how units are grouped)
                opt_units(s, e.opt, theta, grad, snap, m, 0, j, j + 1)
        return
    if snap != NULL:
        memcpy(snap + s.w_off[0] + o0 * n_in, theta + s.w_off[0] + o0 * n_in,
               (o1 - o0) * n_in * sizeof(floating))
        if s.b_off[0] >= 0:
            memcpy(snap + s.b_off[0] + o0, theta + s.b_off[0] + o0,
                   (o1 - o0) * sizeof(floating))
    for j in range(o0, o1):
        sparse_unit_rows(sp, d + j, n_out, m, -lr, False, tmp, theta + s.w_off[0] + j * n_in)
    if s.b_off[0] >= 0:
        colsum = ws + w.colsum[0]
        column_sums(d + o0, m, o1 - o0, n_out, colsum + o0)
        for j in range(o0, o1):
            theta[s.b_off[0] + j] -= lr * colsum[j]


# ---------------------------------------------------------------------------
# The wrappers' side: a CSR data set (fastbp._sparse.CSR) as the kernels take it.

def _sparse_arrays(X, dt, int64_t n_in):
    """Checked (lo, hi, indices, data) of a fastbp._sparse.CSR for the kernels:
    int64 / theta's dtype, 1-D, C-contiguous, entries in range (the values
    were checked by fastbp._sparse)."""
    lo, hi, ind, data = X.lo, X.hi, X.indices, X.data
    for name, a, t in (("lo", lo, np.int64), ("hi", hi, np.int64),
                       ("indices", ind, np.int64), ("data", data, dt)):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype != t or not a.flags.c_contiguous:
            raise ValueError(f"sparse X: {name} must be a C-contiguous 1-D {np.dtype(t)} array")
    if X.shape[1] != n_in or lo.shape[0] != X.shape[0] or hi.shape[0] != X.shape[0]:
        raise ValueError("sparse X has the wrong shape")
    if ind.shape[0] != data.shape[0]:
        raise ValueError("sparse X: indices and data differ in length")
    if lo.shape[0] and (lo.min() < 0 or hi.max() > ind.shape[0] or (hi < lo).any()):
        raise ValueError("sparse X: row ranges out of bounds")
    return lo, hi, ind, data


cdef class _SparseView:
    """Keeps the arrays of one call's Sparse alive and fills it."""
    cdef object arrays
    cdef object tmp
    cdef object placeholder     # sp.data's one byte when X stores no values

    cdef int fill(self, Sparse *sp,          # OUT every field
                  X, dt, int64_t n_in, int n_threads,  # IN
                  bint train) except -1:            # IN  (with scratch rows for training)
        cdef const int64_t[::1] lo, hi, ind
        cdef const unsigned char[::1] raw
        cdef unsigned char[::1] rw
        self.arrays = _sparse_arrays(X, dt, n_in)
        lo, hi, ind = self.arrays[0], self.arrays[1], self.arrays[2]
        data = self.arrays[3]
        sp.lo = &lo[0] if lo.shape[0] else NULL
        sp.hi = &hi[0] if hi.shape[0] else NULL
        sp.indices = &ind[0] if ind.shape[0] else NULL
        # With no stored values sp.data is never read, but it points into an
        # array this view keeps alive (a local's buffer would be freed on return).
        self.placeholder = None if data.shape[0] else np.zeros(1, np.uint8)
        raw = data.view(np.uint8) if data.shape[0] else self.placeholder
        sp.data = <const void *>&raw[0]
        sp.n_tmp = max(1, n_threads) if train else 0
        sp.tmp = NULL
        if train:
            self.tmp = np.zeros(sp.n_tmp * SP_TMP_ROWS * n_in, dtype=dt)
            rw = self.tmp.view(np.uint8)
            sp.tmp = <void *>&rw[0]
        sp.fused = fbp_gemm_isa().decode() != "generic"
        sp.rows = NULL
        sp.start = 0
        return 0


cdef int64_t mean_nnz(const Sparse *sp,                      # IN  the data set's row ranges
                      int64_t n_rows) noexcept nogil:         # IN  its rows
    """The mean stored entries per row of the data set's n_rows rows,
    rounded up (0 without rows)."""
    cdef int64_t r, total = 0
    for r in range(n_rows):
        total += sp.hi[r] - sp.lo[r]
    return (total + n_rows - 1) // n_rows if n_rows > 0 else 0


cdef const floating *x_data(X, theta, const floating *dtype_of,  # IN  (dtype_of: the fused type only)
                            _SparseView view,    # OUT keeps a sparse X's arrays alive
                            Sparse *sp,          # OUT filled for a sparse X
                            Extra *e,            # OUT e.sp = sp for a sparse X
                            Spec *s,             # IN the network; OUT s.x_nnz for a sparse X
                            int n_threads, bint train) except NULL:  # IN
    """The kernels' X: a dense (n_samples, n_in) C-contiguous array (its first
    element), or a fastbp._sparse.CSR (then e.sp = sp, filled and kept alive
    by `view`, s.x_nnz its mean non-zeros per row, which the planner costs
    layer 0 by (layer_macs), and the pointer returned is the CSR data's,
    never read as dense rows)."""
    cdef const floating[:, ::1] Xd
    if getattr(X, "_fastbp_csr", False):
        view.fill(sp, X, np.asarray(theta).dtype, s.sizes[0], n_threads, train)
        e.sp = sp
        s.x_nnz = mean_nnz(sp, X.shape[0])
        return <const floating *>sp.data
    Xd = X
    return &Xd[0, 0]
