# _tiny.pxi (included by _kernels.pyx, after _epoch.pxi): the epoch of a
# narrow net.
#
# Design
# ------
# * A narrow net at a small batch (the seeds' 2-2-1 at batch 1, ...: the rule
#   is at TINY_MAX_WIDTH below) spends almost all of a general step
#   (_steps.pxi) on what surrounds the arithmetic: five GEMM calls through
#   the general entry point, the per-layer plumbing of
#   forward_cols/update_units, gathers and column sums (callgrind: 2,260
#   instructions per 2-2-1 step).  tiny_epoch runs the same epoch
#   (run_epoch's contract, for the cases below) on kernels of fbp_gemm.h
#   made for it, the row kernels of _rows.pxi called directly, and nothing
#   per layer but the products (733 instructions per 2-2-1 step):
#   - plain SGD: each W_k is kept for the call in two zero-padded vector
#     copies (fbp_packed_*: rows for the backward pass, columns for the
#     forward pass, both updated by the same FMAs), so that no product
#     repacks or gathers anything; unpacked into theta before returning,
#     whatever the status, and into the snapshot when one is taken;
#     batches of one row without sample weights have a loop of their own
#     (tiny_loop1), and when every layer fits one vector (8 floats / 4
#     doubles: the seeds' 2-2-1) the whole loop is one C function
#     (tiny_fused1 -> ft_sgd1_* of fbp_tiny.h: 290 instructions per 2-2-1
#     step against tiny_loop1's 727), tiny_loop1 taking the snapshot step;
#   - the legacy SGD keywords (momentum, nesterov, weight decay, l2): the
#     narrow kernels (fbp_narrow_*) on theta's own layout form the gradient,
#     then sgd_update as in run_epoch.
# * Results: bitwise those of the general path.  Each product is the one
#   update_units / forward_cols / backprop_cols compute (same operands, same
#   alpha/beta, same epilogue; fbp_gemm.h); the output rows, losses and
#   output deltas come from the same row kernels with the same scale; the
#   bias step, the per-sample loss slots (rounded to the dtype), their sums
#   in row order, the weight sums, snapshots and the legacy optimizer
#   (sgd_update) are the same code or the same expressions in the same
#   order.  tests/test_tiny.py checks it against the general path (forced by
#   set_tiny_path(False); the narrow kernels instead of the packed ones by
#   set_tiny_packed(False); tiny_loop1 instead of the fused loop by
#   set_tiny_fused(False)) on every code path.
# * Covered: every hidden activation and output/loss pair, both dtypes,
#   bias on/off, the batches the rule admits, shuffled or not, sample weights, plain SGD
#   and the legacy SGD keywords (momentum, nesterov, weight decay, l2).  The
#   general path runs: the optimizer path (optimizer=, clip_norm), dropout
#   with some p > 0, and any call with a team of threads (a step this small
#   never gets one: make_plan keeps it serial).
# * Serial: no parallel region is ever open here (T == NULL), so every write
#   is the calling thread's.

from libc.stdlib cimport malloc, free

cdef extern from "fbp_gemm.h" nogil:
    ctypedef struct fbp_narrow_net:
        int n_layers
        int hidden
        const int64_t *sizes
        const int64_t *w_off
        const int64_t *b_off
        const int64_t *act
        const int64_t *delta
    ctypedef struct fbp_narrow_ops_f32:
        void (*fwd)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                    const float *W, int64_t ldw, const float *bias, int act,
                    float *C, int64_t ldc) noexcept nogil
        void (*bwd)(int64_t M, int64_t N, int64_t K, const float *D, int64_t ldd,
                    const float *W, int64_t ldw, int act, const float *Aact, int64_t lda,
                    float *C, int64_t ldc) noexcept nogil
        void (*wgrad)(int64_t N, int64_t K, int64_t M, float alpha, const float *D,
                      int64_t ldd, const float *H, int64_t ldh, float beta, float *W,
                      int64_t ldw) noexcept nogil
        void (*net_fwd)(const fbp_narrow_net *net, const float *theta, int64_t M,
                        const float *x, float *ws) noexcept nogil
        void (*net_bwd)(const fbp_narrow_net *net, const float *theta, int64_t M,
                        float *ws) noexcept nogil
        void (*net_wgrad)(const fbp_narrow_net *net, int64_t M, float alpha, const float *x,
                          const float *ws, float beta, float *out) noexcept nogil
    ctypedef struct fbp_narrow_ops_f64:
        void (*fwd)(int64_t M, int64_t N, int64_t K, const double *A, int64_t lda,
                    const double *W, int64_t ldw, const double *bias, int act,
                    double *C, int64_t ldc) noexcept nogil
        void (*bwd)(int64_t M, int64_t N, int64_t K, const double *D, int64_t ldd,
                    const double *W, int64_t ldw, int act, const double *Aact, int64_t lda,
                    double *C, int64_t ldc) noexcept nogil
        void (*wgrad)(int64_t N, int64_t K, int64_t M, double alpha, const double *D,
                      int64_t ldd, const double *H, int64_t ldh, double beta, double *W,
                      int64_t ldw) noexcept nogil
        void (*net_fwd)(const fbp_narrow_net *net, const double *theta, int64_t M,
                        const double *x, double *ws) noexcept nogil
        void (*net_bwd)(const fbp_narrow_net *net, const double *theta, int64_t M,
                        double *ws) noexcept nogil
        void (*net_wgrad)(const fbp_narrow_net *net, int64_t M, double alpha, const double *x,
                          const double *ws, double beta, double *out) noexcept nogil
    ctypedef struct fbp_packed:
        int n_layers
        int64_t M
        int64_t nv[65]
        int64_t ld[65]
        int64_t wn[64]
        int64_t wt[64]
        int64_t act[65]
        int64_t delta[65]
        int64_t size
        int one
    int64_t fbp_packed_layout(int elem_size, int n_layers, const int64_t *sizes, int64_t M,
                              fbp_packed *p)
    ctypedef struct fbp_packed_ops_f32:
        void (*pack)(const fbp_packed *p, const int64_t *sizes, const float *theta,
                     const int64_t *w_off, float *buf) noexcept nogil
        void (*unpack)(const fbp_packed *p, const int64_t *sizes, const float *buf,
                       const int64_t *w_off, float *out) noexcept nogil
        void (*fwd)(const fbp_packed *p, const int64_t *sizes, float *buf, const float *theta,
                    const int64_t *b_off, int hidden, int64_t M) noexcept nogil
        void (*bwd)(const fbp_packed *p, const int64_t *sizes, float *buf, int hidden,
                    int64_t M, float alpha) noexcept nogil
    ctypedef struct fbp_packed_ops_f64:
        void (*pack)(const fbp_packed *p, const int64_t *sizes, const double *theta,
                     const int64_t *w_off, double *buf) noexcept nogil
        void (*unpack)(const fbp_packed *p, const int64_t *sizes, const double *buf,
                       const int64_t *w_off, double *out) noexcept nogil
        void (*fwd)(const fbp_packed *p, const int64_t *sizes, double *buf, const double *theta,
                    const int64_t *b_off, int hidden, int64_t M) noexcept nogil
        void (*bwd)(const fbp_packed *p, const int64_t *sizes, double *buf, int hidden,
                    int64_t M, double alpha) noexcept nogil
    const fbp_packed_ops_f32 *fbp_packed_f32()
    const fbp_packed_ops_f64 *fbp_packed_f64()
    const fbp_narrow_ops_f32 *fbp_narrow_f32()
    const fbp_narrow_ops_f64 *fbp_narrow_f64()

cdef extern from "fbp_tiny.h" nogil:
    ctypedef double (*ft_loss_fn)(void *ctx, const void *z, const void *y, void *dL,
                                  double *hit) noexcept nogil
    ctypedef struct ft_net:
        const fbp_packed *P
        const int64_t *sizes
        const int64_t *b_off
        int hidden
        int inline_loss
        int hits
        ft_loss_fn loss_fn
        void *ctx
    int ft_sgd1_f32(const ft_net *net, float *buf, float *theta, const float *X, const float *Y,
                    const int64_t *order, int64_t first, int64_t end, float lr,
                    double *loss_sum, double *hit_sum, int64_t *n_done)
    int ft_sgd1_f64(const ft_net *net, double *buf, double *theta, const double *X,
                    const double *Y, const int64_t *order, int64_t first, int64_t end,
                    double lr, double *loss_sum, double *hit_sum, int64_t *n_done)


# Which epochs the narrow path takes (measured with callgrind, bench/NOTES.md):
# every layer at most TINY_MAX_WIDTH wide (256: one K-slab per product), and
# a batch of one row, or rows * n_in * n_out <= TINY_MAX_MNK for every layer.
# Beyond that the general path's products are blocked GEMMs, whose
# micro-kernel reuses each broadcast and each loaded vector of W across rows:
# it wins from there (e.g. 32-32-32 at batch 8, 16-16-16 at 32, 64-128-10 at
# 2), while below it the general path runs the GEMM's scalar small path and
# the narrow path takes 1.2x to 8x fewer instructions.
cdef int64_t TINY_MAX_WIDTH = 256
cdef int64_t TINY_MAX_MNK = 4096

# The test hooks: False forces the general path (set_tiny_path), or the
# narrow kernels instead of the packed ones for plain SGD (set_tiny_packed).
cdef bint tiny_on = True
cdef bint tiny_packed_on = True
cdef bint tiny_fused_on = True


def set_tiny_path(bint on):
    """Use the narrow-net epoch (on, the default) or force the general path
    for every fit epoch (a test hook: the results are the same bits);
    returns the previous setting."""
    global tiny_on
    previous, tiny_on = tiny_on, on
    return bool(previous)


def set_tiny_packed(bint on):
    """Run plain SGD on the narrow path with packed weights (on, the
    default) or on the narrow kernels (a test hook: the same bits);
    returns the previous setting."""
    global tiny_packed_on
    previous, tiny_packed_on = tiny_packed_on, on
    return bool(previous)


def set_tiny_fused(bint on):
    """Run batch-1 plain SGD of a net whose every layer fits one vector in
    the fused loop of fbp_tiny.h (on, the default) or in tiny_loop1 (a test
    hook: the same bits); returns the previous setting."""
    global tiny_fused_on
    previous, tiny_fused_on = tiny_fused_on, on
    return bool(previous)


def set_tiny_limits(max_width=None, max_mnk=None):
    """Set the widest layer and the largest rows * n_in * n_out of a layer
    (batches of more than one row) the narrow path takes (None: leave as
    is); returns the previous (max_width, max_mnk).  For tests and
    measurements: the results are the same bits either way."""
    global TINY_MAX_WIDTH, TINY_MAX_MNK
    previous = (int(TINY_MAX_WIDTH), int(TINY_MAX_MNK))
    if max_width is not None:
        if not 1 <= max_width <= 256:
            raise ValueError("max_width must be in [1, 256]")
        TINY_MAX_WIDTH = max_width
    if max_mnk is not None:
        if max_mnk < 0:
            raise ValueError("max_mnk must be >= 0")
        TINY_MAX_MNK = max_mnk
    return previous


cdef bint tiny_fits(int n_layers, const int64_t *sizes, int64_t rows) noexcept nogil:
    """The width and size rule above, for batches of `rows` rows."""
    cdef int k
    for k in range(n_layers + 1):
        if sizes[k] > TINY_MAX_WIDTH:
            return False
    if rows <= 1:
        return True
    for k in range(n_layers):
        if rows * sizes[k] * sizes[k + 1] > TINY_MAX_MNK:
            return False
    return True


def tiny_path_applies(sizes, int64_t batch_size, int64_t n_samples):
    """Whether a net of these layer widths runs its (serial, plain-SGD or
    legacy-SGD, dropout-free) fit epochs of n_samples rows in batches of
    batch_size on the narrow path."""
    cdef const int64_t[::1] sz = np.ascontiguousarray(sizes, dtype=np.int64)
    return bool(tiny_on) and bool(tiny_fits(<int>sz.shape[0] - 1, &sz[0],
                                            min(batch_size, n_samples)))


cdef bint tiny_applies(const Spec *s, const Extra *e, int64_t rows) noexcept nogil:
    """Whether run_epoch may hand this (serial) epoch of batches of `rows`
    rows to tiny_epoch."""
    if not tiny_on or e.opt != NULL or e.drop.on or e.sp != NULL:   # (e.sp: sparse X, dense only here)
        return False
    return tiny_fits(s.n_layers, s.sizes, rows)


cdef struct TinyOps:
    const fbp_narrow_ops_f32 *f32
    const fbp_narrow_ops_f64 *f64
    fbp_narrow_net net
    # the packed path (plain SGD): its kernels, layout and buffer (NULL: none)
    const fbp_packed_ops_f32 *p32
    const fbp_packed_ops_f64 *p64
    fbp_packed P
    void *buf


cdef inline void t_net_fwd(const TinyOps *ops, const floating *theta, int64_t m,
                           const floating *x,                   # IN  (m, n_in)
                           floating *ws) noexcept nogil:        # OUT A_1 .. A_L
    if floating is float:
        ops.f32.net_fwd(&ops.net, theta, m, x, ws)
    else:
        ops.f64.net_fwd(&ops.net, theta, m, x, ws)


cdef inline void t_net_bwd(const TinyOps *ops, const floating *theta, int64_t m,
                           floating *ws) noexcept nogil:        # IN delta_L, A_k; OUT delta_k
    if floating is float:
        ops.f32.net_bwd(&ops.net, theta, m, ws)
    else:
        ops.f64.net_bwd(&ops.net, theta, m, ws)


cdef inline void t_net_wgrad(const TinyOps *ops, int64_t m, floating alpha,
                             const floating *x, const floating *ws,  # IN A_0 (x), A_k, delta_k
                             floating beta,
                             floating *out) noexcept nogil:          # IN/OUT the W_k of out
    if floating is float:
        ops.f32.net_wgrad(&ops.net, m, alpha, x, ws, beta, out)
    else:
        ops.f64.net_wgrad(&ops.net, m, alpha, x, ws, beta, out)


cdef int tiny_step(const Spec *s, const Extra *e, const TinyOps *ops,
                   floating *theta,            # IN, OUT when grad == NULL
                   floating *grad,             # OUT the gradient, or NULL for the fused SGD step
                   floating lr,
                   floating *snap,             # OUT theta before the fused step, or NULL
                   int64_t n_params,
                   floating *ws, const Work *w,
                   const floating *X, const floating *Y,  # IN the data set
                   const int64_t *rows,        # IN the batch's row indices, or NULL
                   int64_t start, int64_t m,
                   double *loss) noexcept nogil:  # OUT sum of the batch's per-sample losses
    """batch_step on the narrow kernels (serial): the same bits.  Returns 1
    (and changes nothing) when the batch loss is not finite."""
    cdef int k, L = s.n_layers
    cdef int64_t i, j, n_in = s.sizes[0], n_out = s.sizes[L], no, boff
    cdef const floating *x
    cdef const floating *y
    cdef floating *d
    cdef floating *z = ws + w.act[L]
    cdef floating *yhat = ws + w.yhat
    cdef floating *dL = ws + w.delta[L]
    cdef floating *colsum
    cdef double scale = 1.0 / m
    # The batch: one row is read where it is; more are gathered (A_0, y).
    if rows == NULL:
        x = X + start * n_in
        y = Y + start * n_out
    elif m == 1:
        x = X + rows[0] * n_in
        y = Y + rows[0] * n_out
    else:
        for i in range(m):
            for j in range(n_in):
                ws[w.act[0] + i * n_in + j] = X[rows[i] * n_in + j]
            for j in range(n_out):
                ws[w.y + i * n_out + j] = Y[rows[i] * n_out + j]
        x = ws + w.act[0]
        y = ws + w.y
    # Forward (forward_cols), output rows and losses (loss_rows).
    t_net_fwd(ops, theta, m, x, ws)
    for i in range(m):
        output_row(s, z + i * n_out, yhat + i * n_out)
        if e.sw != NULL:
            scale = row_weight(<const floating *>e.sw, rows, start, i) / e.wsum
        ws[w.lossv + i] = <floating>loss_row(s, z + i * n_out, yhat + i * n_out,
                                             y + i * n_out, dL + i * n_out, scale)
        if s.loss != LOSS_SQUARED:
            ws[w.hitv + i] = <floating>hit_row(s, yhat + i * n_out, y + i * n_out)
    loss[0] = row_sum(ws + w.lossv, m)
    if not isfinite(loss[0]):
        return 1
    # delta_k, k = L-1 .. 1 (backprop_cols).
    t_net_bwd(ops, theta, m, ws)
    # The weight gradients, or the fused SGD step (update_units).
    if grad != NULL:
        t_net_wgrad(ops, m, <floating>1, x, ws, <floating>0, grad)
        for k in range(L):
            if s.b_off[k] >= 0:
                no = s.sizes[k + 1]
                column_sums(ws + w.delta[k + 1], m, no, no, grad + s.b_off[k])
        return 0
    if snap != NULL:
        memcpy(snap, theta, n_params * sizeof(floating))
    t_net_wgrad(ops, m, -lr, x, ws, <floating>1, theta)
    for k in range(L):
        boff = s.b_off[k]
        if boff < 0:
            continue
        no = s.sizes[k + 1]
        d = ws + w.delta[k + 1]
        if m == 1:   # column_sums of one row: 0 + d
            for j in range(no):
                theta[boff + j] -= lr * (<floating>0 + d[j])
        else:
            colsum = ws + w.colsum[k]
            column_sums(d, m, no, no, colsum)
            for j in range(no):
                theta[boff + j] -= lr * colsum[j]
    return 0


cdef inline void t_unpack(const TinyOps *ops, const Spec *s,
                          floating *out) noexcept nogil:   # OUT the W_k of out (laid out as theta)
    if floating is float:
        ops.p32.unpack(&ops.P, s.sizes, <const float *>ops.buf, s.w_off, out)
    else:
        ops.p64.unpack(&ops.P, s.sizes, <const double *>ops.buf, s.w_off, out)


cdef int tiny_pstep(const Spec *s, const Extra *e, const TinyOps *ops,
                    floating *theta,           # IN/OUT biases (the W_k live in ops.buf)
                    floating lr,
                    floating *snap,            # OUT theta before the step, or NULL
                    int64_t n_params,
                    floating *ws, const Work *w,   # yhat, lossv, hitv, colsum
                    const floating *X, const floating *Y,  # IN the data set
                    const int64_t *rows,       # IN the batch's row indices, or NULL
                    int64_t start, int64_t m,
                    double *loss) noexcept nogil:  # OUT sum of the batch's per-sample losses
    """The fused plain SGD step of tiny_step on the packed weights (ops.buf):
    the same bits.  Returns 1 (and changes nothing) when the batch loss is
    not finite."""
    cdef int k, L = s.n_layers
    cdef int64_t i, j, r, no, boff, n_in = s.sizes[0], n_out = s.sizes[L]
    cdef const fbp_packed *P = &ops.P
    cdef floating *buf = <floating *>ops.buf
    cdef floating *a0 = buf + P.act[0]
    cdef floating *z = buf + P.act[L]
    cdef floating *dL = buf + P.delta[L]
    cdef floating *yhat = ws + w.yhat
    cdef floating *d
    cdef floating *colsum
    cdef const floating *y
    cdef int64_t ld0 = P.ld[0], ldL = P.ld[L]
    cdef double scale = 1.0 / m
    for i in range(m):
        r = rows[i] if rows != NULL else start + i
        for j in range(n_in):
            a0[i * ld0 + j] = X[r * n_in + j]
    if floating is float:
        ops.p32.fwd(P, s.sizes, buf, theta, s.b_off, s.hidden, m)
    else:
        ops.p64.fwd(P, s.sizes, buf, theta, s.b_off, s.hidden, m)
    for i in range(m):
        y = Y + (rows[i] if rows != NULL else start + i) * n_out
        output_row(s, z + i * ldL, yhat + i * n_out)
        if e.sw != NULL:
            scale = row_weight(<const floating *>e.sw, rows, start, i) / e.wsum
        ws[w.lossv + i] = <floating>loss_row(s, z + i * ldL, yhat + i * n_out, y,
                                             dL + i * ldL, scale)
        if s.loss != LOSS_SQUARED:
            ws[w.hitv + i] = <floating>hit_row(s, yhat + i * n_out, y)
    loss[0] = row_sum(ws + w.lossv, m)
    if not isfinite(loss[0]):
        return 1
    if snap != NULL:
        memcpy(snap, theta, n_params * sizeof(floating))
        t_unpack(ops, s, snap)
    if floating is float:
        ops.p32.bwd(P, s.sizes, buf, s.hidden, m, -lr)
    else:
        ops.p64.bwd(P, s.sizes, buf, s.hidden, m, -lr)
    for k in range(L):
        boff = s.b_off[k]
        if boff < 0:
            continue
        no = s.sizes[k + 1]
        d = buf + P.delta[k + 1]
        if m == 1:   # column_sums of one row: 0 + d
            for j in range(no):
                theta[boff + j] -= lr * (<floating>0 + d[j])
        else:
            colsum = ws + w.colsum[k]
            column_sums(d, m, no, P.ld[k + 1], colsum)
            for j in range(no):
                theta[boff + j] -= lr * colsum[j]
    return 0


cdef inline int64_t steps_end(int64_t n_samples,   # IN
                               int64_t first_step,  # IN (>= 0)
                               int64_t max_steps    # IN (< 0: no limit)
                               ) noexcept nogil:
    """The step after the last of a batch-1 epoch run from first_step for at
    most max_steps steps: min(n_samples, first_step + max_steps) without
    forming the sum (it wraps for max_steps near 2**63)."""
    if max_steps < 0 or max_steps >= n_samples - first_step:
        return n_samples
    return first_step + max_steps


cdef int tiny_loop1(const Spec *s, const TinyOps *ops,
                    floating *theta,           # IN/OUT biases (the W_k live in ops.buf)
                    floating *ws, const Work *w,
                    const floating *X,         # IN (n_samples, n_in)
                    const floating *Y,         # IN (n_samples, n_out)
                    const int64_t *order,      # IN visiting order, or NULL for 0..n-1
                    int64_t n_samples, floating lr,
                    int64_t first_step, int64_t max_steps,
                    floating *snap,            # OUT theta before step snap_step, or NULL
                    int64_t snap_step,
                    int64_t n_params,
                    Totals *t) noexcept nogil:   # IN/OUT the sums (added to)
    """tiny_loop for batches of one row without sample weights, packed
    (the seeds' per-sample SGD): tiny_pstep's operations with what a batch
    of one does not need (gathers, weights, column sums) left out and the
    per-layer bookkeeping hoisted out of the loop.  Adds to t (the caller
    zeroes it)."""
    cdef int k, L = s.n_layers, nb = 0
    cdef int64_t j, r, step, end, macs = 0, macs_per_row = 0
    cdef int64_t n_in = s.sizes[0], n_out = s.sizes[L]
    cdef const fbp_packed *P = &ops.P
    cdef floating *buf = <floating *>ops.buf
    cdef floating *a0 = buf + P.act[0]
    cdef floating *z = buf + P.act[L]
    cdef floating *dL = buf + P.delta[L]
    cdef floating *yhat = ws + w.yhat
    cdef floating *lossv = ws + w.lossv
    cdef floating *hitv = ws + w.hitv
    cdef floating *bt[64]          # the biases in theta ...
    cdef floating *bd[64]          # ... their layer's delta row ...
    cdef int64_t bn[64]            # ... and their count
    cdef const floating *y
    cdef double total
    cdef bint hits = s.loss != LOSS_SQUARED
    for k in range(L):
        macs_per_row += 3 * s.sizes[k] * s.sizes[k + 1]
        if s.b_off[k] >= 0:
            bt[nb], bd[nb], bn[nb] = theta + s.b_off[k], buf + P.delta[k + 1], s.sizes[k + 1]
            nb += 1
    step = first_step
    end = steps_end(n_samples, first_step, max_steps)
    while step < end:
        r = order[step] if order != NULL else step
        for j in range(n_in):
            a0[j] = X[r * n_in + j]
        y = Y + r * n_out
        if floating is float:
            ops.p32.fwd(P, s.sizes, buf, theta, s.b_off, s.hidden, 1)
        else:
            ops.p64.fwd(P, s.sizes, buf, theta, s.b_off, s.hidden, 1)
        output_row(s, z, yhat)
        lossv[0] = <floating>loss_row(s, z, yhat, y, dL, 1.0)
        if hits:
            hitv[0] = <floating>hit_row(s, yhat, y)
        total = 0.0
        total += lossv[0]            # row_sum / weighted_sum of one row
        if not isfinite(total):
            return 1
        if step == snap_step and snap != NULL:
            memcpy(snap, theta, n_params * sizeof(floating))
            t_unpack(ops, s, snap)
            t.snap_done = True
        if floating is float:
            ops.p32.bwd(P, s.sizes, buf, s.hidden, 1, -lr)
        else:
            ops.p64.bwd(P, s.sizes, buf, s.hidden, 1, -lr)
        for k in range(nb):          # column_sums of one row: 0 + d
            for j in range(bn[k]):
                bt[k][j] -= lr * (<floating>0 + bd[k][j])
        t.loss += total
        if hits:
            total = 0.0
            total += hitv[0]
            t.hits += total
        t.n_done += 1
        step += 1
        macs += macs_per_row
        if macs >= SIGNAL_POLL_MACS:
            macs = 0
            if fbp_poll_signals() == -1:
                return -1
    return 0


cdef struct FusedCtx:
    # What the fused loop's loss callback needs: the net and a yhat row.
    const Spec *s
    void *yhat


cdef inline double fused_loss_row(const FusedCtx *c,     # IN the net (OUT its yhat row)
                                  const floating *z,     # IN logits (n_out)
                                  const floating *y,     # IN target row
                                  floating *dL,          # OUT dloss/dz (n_out)
                                  double *hit) noexcept nogil:   # OUT the accuracy
    """tiny_loop1's output, loss and accuracy of one sample, for the fused
    loop: the loss rounded to the dtype; *hit likewise."""
    cdef floating *yhat = <floating *>c.yhat
    output_row(c.s, z, yhat)
    cdef floating lossv = <floating>loss_row(c.s, z, yhat, y, dL, 1.0)
    if c.s.loss != LOSS_SQUARED:
        hit[0] = <floating>hit_row(c.s, yhat, y)
    return lossv


# The fused loop's callbacks (ft_loss_fn: untyped pointers, so the dtype is
# not in the signature and Cython cannot specialise one definition on it):
# fused_loss_row for each dtype.
cdef double fused_loss_f32(void *ctx,                        # IN the FusedCtx (OUT its yhat row)
                           const void *z, const void *y,     # IN logits, target row
                           void *dL, double *hit) noexcept nogil:   # OUT dloss/dz, the accuracy
    return fused_loss_row(<const FusedCtx *>ctx, <const float *>z, <const float *>y,
                          <float *>dL, hit)


cdef double fused_loss_f64(void *ctx,                        # IN the FusedCtx (OUT its yhat row)
                           const void *z, const void *y,     # IN logits, target row
                           void *dL, double *hit) noexcept nogil:   # OUT dloss/dz, the accuracy
    return fused_loss_row(<const FusedCtx *>ctx, <const double *>z, <const double *>y,
                          <double *>dL, hit)


cdef int tiny_fused1(const Spec *s, const TinyOps *ops,
                     floating *theta,           # IN/OUT biases (the W_k live in ops.buf)
                     floating *ws, const Work *w,
                     const floating *X,         # IN (n_samples, n_in)
                     const floating *Y,         # IN (n_samples, n_out)
                     const int64_t *order,      # IN visiting order, or NULL for 0..n-1
                     int64_t n_samples, floating lr,
                     int64_t first_step, int64_t max_steps,
                     floating *snap,            # OUT theta before step snap_step, or NULL
                     int64_t snap_step,
                     int64_t n_params,
                     Totals *t) noexcept nogil:   # IN/OUT the sums (added to)
    """tiny_loop1 for a net whose every layer fits one vector (ops.P.one):
    the steps run in the fused loop of fbp_tiny.h (the same bits), in
    pieces of SIGNAL_POLL_MACS multiply-adds between Ctrl-C polls; the
    snapshot step, if any, by tiny_loop1.  Adds to t (the caller zeroes it)."""
    cdef ft_net net
    cdef FusedCtx ctx
    cdef int k, status
    cdef int64_t step, stop, done = 0, macs = 0, macs_per_row = 0, piece
    cdef int64_t end = steps_end(n_samples, first_step, max_steps)
    for k in range(s.n_layers):
        macs_per_row += 3 * s.sizes[k] * s.sizes[k + 1]
    piece = max(<int64_t>1, (SIGNAL_POLL_MACS + macs_per_row - 1) // macs_per_row)
    ctx.s = s
    ctx.yhat = ws + w.yhat
    net.P = &ops.P
    net.sizes, net.b_off, net.hidden = s.sizes, s.b_off, s.hidden
    net.inline_loss = s.output == OUT_IDENTITY and s.loss == LOSS_SQUARED
    net.hits = s.loss != LOSS_SQUARED
    if floating is float:
        net.loss_fn = fused_loss_f32
    else:
        net.loss_fn = fused_loss_f64
    net.ctx = &ctx
    step = first_step
    while step < end:
        stop = min(end, step + piece)
        if snap != NULL and step <= snap_step < stop:
            stop = snap_step
        if stop > step:
            if floating is float:
                status = ft_sgd1_f32(&net, <float *>ops.buf, theta, X, Y, order, step, stop,
                                     lr, &t.loss, &t.hits, &done)
            else:
                status = ft_sgd1_f64(&net, <double *>ops.buf, theta, X, Y, order, step, stop,
                                     lr, &t.loss, &t.hits, &done)
            t.n_done += done
            step += done
            if status != 0:
                return status
            macs += done * macs_per_row
        if snap != NULL and step == snap_step and step < end:
            status = tiny_loop1(s, ops, theta, ws, w, X, Y, order, n_samples, lr, step, 1,
                                snap, snap_step, n_params, t)
            if status != 0:
                return status
            step += 1
            macs += macs_per_row
        if macs >= SIGNAL_POLL_MACS:
            macs = 0
            if fbp_poll_signals() == -1:
                return -1
    return 0


cdef int tiny_loop(const Spec *s, Extra *e, TinyOps *ops,
                    floating *theta,           # IN/OUT parameters
                    floating *grad,            # scratch gradient (legacy SGD keywords), or NULL
                    floating *velocity,        # IN/OUT momentum buffer, or NULL
                    floating *ws, const Work *w,
                    const floating *X,         # IN (n_samples, n_in)
                    const floating *Y,         # IN (n_samples, n_out)
                    const int64_t *order,      # IN visiting order, or NULL for 0..n-1
                    int64_t n_samples, int64_t batch_size,
                    const Optim *o,
                    int64_t first_step, int64_t max_steps,
                    floating *snap,            # OUT theta before step snap_step, or NULL
                    floating *snap_vel,        # OUT the velocity there, or NULL
                    int64_t snap_step,
                    int64_t n_params,
                    Totals *t) noexcept nogil:   # IN/OUT the sums (added to)
    """The steps of tiny_epoch (packed when ops.buf != NULL); adds to t (the
    caller zeroes it)."""
    cdef int64_t start, m, k, macs = 0, macs_per_row = 0, steps = 0
    cdef double batch_loss
    cdef bint snap_here
    cdef const int64_t *rows
    for k in range(s.n_layers):
        macs_per_row += 3 * s.sizes[k] * s.sizes[k + 1]
    start = first_step * batch_size
    while start < n_samples and steps != max_steps:
        m = min(batch_size, n_samples - start)
        rows = order + start if order != NULL else NULL
        snap_here = snap != NULL and first_step + steps == snap_step
        if e.sw != NULL:
            e.wsum = weight_sum(e, theta, rows, start, m)
        if e.sw != NULL and not e.wsum > 0:
            # Weights summing to 0: the batch contributes nothing.
            if snap_here:
                snapshot_all(<const OptK *>NULL, snap, snap_vel, theta, velocity, n_params)
                if ops.buf != NULL:
                    t_unpack(ops, s, snap)
                t.snap_done = True
        else:
            if ops.buf != NULL:
                if tiny_pstep(s, e, ops, theta, <floating>o.lr, snap if snap_here else NULL,
                              n_params, ws, w, X, Y, rows, start, m, &batch_loss):
                    return 1
            elif tiny_step(s, e, ops, theta, grad, <floating>o.lr,
                           snap if snap_here and grad == NULL else NULL, n_params,
                           ws, w, X, Y, rows, start, m, &batch_loss):
                return 1
            if snap_here:
                t.snap_done = True
                if grad != NULL:
                    snapshot_all(<const OptK *>NULL, snap, snap_vel, theta, velocity, n_params)
            if grad != NULL:
                t.penalty += sgd_update(s, theta, grad, velocity, o, m)
            t.loss += weighted_sum(ws + w.lossv, e, rows, start, m)
            if s.loss != LOSS_SQUARED:
                t.hits += weighted_sum(ws + w.hitv, e, rows, start, m)
        t.n_done += m
        start += m
        steps += 1
        macs += m * macs_per_row
        if macs >= SIGNAL_POLL_MACS:
            macs = 0
            if fbp_poll_signals() == -1:
                return -1
    return 0


cdef int tiny_epoch(const Spec *s, Extra *e,
                    floating *theta,           # IN/OUT parameters
                    floating *grad,            # scratch gradient (legacy SGD keywords), or NULL
                    floating *velocity,        # IN/OUT momentum buffer, or NULL
                    floating *ws, const Work *w,
                    const floating *X,         # IN (n_samples, n_in)
                    const floating *Y,         # IN (n_samples, n_out)
                    const int64_t *order,      # IN visiting order, or NULL for 0..n-1
                    int64_t n_samples, int64_t batch_size,
                    const Optim *o,
                    int64_t first_step, int64_t max_steps,
                    floating *snap,            # OUT theta before step snap_step, or NULL
                    floating *snap_vel,        # OUT the velocity there, or NULL
                    int64_t snap_step,
                    int64_t n_params,
                    Totals *t) noexcept nogil:   # OUT the sums (zeroed here)
    """run_epoch for a narrow net without the optimizer path or dropout
    (tiny_applies), serially: the same contract and bits.  Plain SGD runs
    on packed copies of the weights (fbp_packed_*, allocated for the call
    and unpacked into theta before returning, whatever the status; the
    general narrow kernels if the allocation fails); the legacy SGD
    keywords (grad != NULL) on the narrow kernels."""
    cdef TinyOps ops
    cdef int status
    ops.f32 = fbp_narrow_f32()
    ops.f64 = fbp_narrow_f64()
    ops.p32 = fbp_packed_f32()
    ops.p64 = fbp_packed_f64()
    ops.net.n_layers, ops.net.hidden = s.n_layers, s.hidden
    ops.net.sizes, ops.net.w_off, ops.net.b_off = s.sizes, s.w_off, s.b_off
    # (two statements: a tuple assignment's temporaries would drop w's const)
    ops.net.act = &w.act[0]
    ops.net.delta = &w.delta[0]
    ops.buf = NULL
    if grad == NULL and tiny_packed_on:
        fbp_packed_layout(sizeof(floating), s.n_layers, s.sizes, w.rows, &ops.P)
        ops.buf = malloc(ops.P.size * sizeof(floating))
        if ops.buf != NULL:
            if floating is float:
                ops.p32.pack(&ops.P, s.sizes, theta, s.w_off, <float *>ops.buf)
            else:
                ops.p64.pack(&ops.P, s.sizes, theta, s.w_off, <double *>ops.buf)
    t.loss = t.hits = t.penalty = 0.0
    t.n_done = 0
    t.snap_done = False
    t.snap_count = 0
    if ops.buf != NULL and batch_size == 1 and e.sw == NULL and ops.P.one and tiny_fused_on:
        status = tiny_fused1(s, &ops, theta, ws, w, X, Y, order, n_samples, <floating>o.lr,
                             first_step, max_steps, snap, snap_step, n_params, t)
    elif ops.buf != NULL and batch_size == 1 and e.sw == NULL:
        status = tiny_loop1(s, &ops, theta, ws, w, X, Y, order, n_samples, <floating>o.lr,
                            first_step, max_steps, snap, snap_step, n_params, t)
    else:
        status = tiny_loop(s, e, &ops, theta, grad, velocity, ws, w, X, Y, order, n_samples,
                           batch_size, o, first_step, max_steps, snap, snap_vel, snap_step,
                           n_params, t)
    if ops.buf != NULL:
        t_unpack(&ops, s, theta)
        free(ops.buf)
    return status
