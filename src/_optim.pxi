# _optim.pxi: the optimizers of fastbp.optim inside the compiled epoch
# (included by _kernels.pyx).
#
# Design
# ------
# * The optimizer path of fit_epoch (an `optimizer=` object: SGD, Adam, AdamW,
#   RMSprop) forms each step's gradient in the part-2 tiles (per output unit
#   of W_k, see the block above Plan) and, on the same thread, right after
#   the gradient rows of units o0..o1 exist, applies to them: scikit-learn's
#   l2 term (grad W += (l2/m) W, weights only, with the per-unit sum of W^2
#   before the step for the penalty), then the optimizer's range kernel from
#   src/fbp_optim.h on the rows of W_k and the entries of b_k.  The rows are
#   still in cache and no pass over the whole vector is added.
# * The optimizer state is flat vectors shaped like theta (fastbp.optim's
#   `state` dict): element i of every state array belongs to parameter i, so
#   the tile that owns a parameter row owns its state rows too.
# * Per-step scalars (bias corrections, step size, ...) are prepared once per
#   step, by thread 0 before it publishes the step (fbp_<opt>_prepare), into
#   the OptK every tile reads; they give numpy's `optimizer.update` bits
#   exactly (fbp_optim.h), and since the gradient rows are the same bits as
#   Network.gradients gives (per-element GEMM invariance), a fit_epoch step is
#   bitwise that numpy update on that gradient.
# * With clip_norm the whole gradient is needed before any update: the tiles
#   then only form the gradient (and per-unit sums of its squares); thread 0
#   sums those in unit order, takes the coefficient, and applies the
#   optimizer to the whole vector after the step (serially: no thread waits).
# * Why every write inside a parallel region is private to its thread: a
#   part-2 tile owns the units o0..o1 of layer k; it writes only grad, theta,
#   the state arrays and the snapshots at the offsets of W_k rows o0..o1 and
#   b_k entries o0..o1, and usq/gsq at those units' slots.  Tiles of one wave
#   own disjoint units, so no element is written by two threads; the range
#   kernels touch only their [0, n) (fbp_optim.h).  Nothing is reduced across
#   tiles: per-unit partials are summed by thread 0 in unit order, so the
#   results do not depend on the thread count or on which thread ran a tile.
# * l2 and clip scale factors are element operations written as C with
#   fp-contract off (no FMA under -march=native), the same operations as the
#   numpy replay (g + T(l2/m) * W, g * T(coef)).
from libc.math cimport sqrt

cdef extern from "fbp_optim.h" nogil:
    ctypedef struct fbp_sgd_step_f32:
        pass
    ctypedef struct fbp_sgd_step_f64:
        pass
    ctypedef struct fbp_adam_step_f32:
        pass
    ctypedef struct fbp_adam_step_f64:
        pass
    ctypedef struct fbp_rmsprop_step_f32:
        pass
    ctypedef struct fbp_rmsprop_step_f64:
        pass
    fbp_sgd_step_f32 fbp_sgd_prepare_f32(double lr, double momentum, int nesterov,
                                         double weight_decay, int64_t step)
    fbp_sgd_step_f64 fbp_sgd_prepare_f64(double lr, double momentum, int nesterov,
                                         double weight_decay, int64_t step)
    fbp_adam_step_f32 fbp_adam_prepare_f32(double lr, double beta1, double beta2, double eps,
                                           double weight_decay, int decoupled, int amsgrad,
                                           int64_t step)
    fbp_adam_step_f64 fbp_adam_prepare_f64(double lr, double beta1, double beta2, double eps,
                                           double weight_decay, int decoupled, int amsgrad,
                                           int64_t step)
    fbp_adam_step_f32 fbp_adam_sklearn_prepare_f32(double lr, double beta1, double beta2,
                                                   double eps, int64_t step)
    fbp_adam_step_f64 fbp_adam_sklearn_prepare_f64(double lr, double beta1, double beta2,
                                                   double eps, int64_t step)
    fbp_rmsprop_step_f32 fbp_rmsprop_prepare_f32(double lr, double alpha, double eps,
                                                 double weight_decay, double momentum,
                                                 int centered)
    fbp_rmsprop_step_f64 fbp_rmsprop_prepare_f64(double lr, double alpha, double eps,
                                                 double weight_decay, double momentum,
                                                 int centered)
    void fbp_sgd_range_f32(float *theta, const float *grad, float *buf, int64_t n,
                           const fbp_sgd_step_f32 *step, double *sq)
    void fbp_sgd_range_f64(double *theta, const double *grad, double *buf, int64_t n,
                           const fbp_sgd_step_f64 *step, double *sq)
    void fbp_adam_range_f32(float *theta, const float *grad, float *exp_avg,
                            float *exp_avg_sq, float *max_exp_avg_sq, int64_t n,
                            const fbp_adam_step_f32 *step, double *sq)
    void fbp_adam_range_f64(double *theta, const double *grad, double *exp_avg,
                            double *exp_avg_sq, double *max_exp_avg_sq, int64_t n,
                            const fbp_adam_step_f64 *step, double *sq)
    void fbp_adam_l2z_rows_f32(float *theta, float *grad, float *exp_avg, float *exp_avg_sq,
                               float *max_exp_avg_sq, int64_t ld, int64_t ldg, int nr,
                               int64_t n, int has_l2, float c, const fbp_adam_step_f32 *step,
                               double *sq)
    void fbp_adam_l2z_rows_f64(double *theta, double *grad, double *exp_avg,
                               double *exp_avg_sq, double *max_exp_avg_sq, int64_t ld,
                               int64_t ldg, int nr, int64_t n, int has_l2, double c,
                               const fbp_adam_step_f64 *step, double *sq)
    void fbp_rmsprop_range_f32(float *theta, const float *grad, float *square_avg,
                               float *momentum_buffer, float *grad_avg, int64_t n,
                               const fbp_rmsprop_step_f32 *step, double *sq)
    void fbp_rmsprop_range_f64(double *theta, const double *grad, double *square_avg,
                               double *momentum_buffer, double *grad_avg, int64_t n,
                               const fbp_rmsprop_step_f64 *step, double *sq)

cdef extern from *:
    """
    /* Element passes of the optimizer path, with no FMA contraction whatever
       the flags (the numpy replay rounds every product and sum). */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    #if defined(__clang__)
    #define FBP_NC _Pragma("clang fp contract(off)")
    #else
    #define FBP_NC
    #endif
    #define FBP_OPTK_DEFINE(T, SFX)                                              \
    /* g[i] = g[i] + c * w[i]; returns sum w[i]^2 (before), in index order. */ \
    static double fbp_l2_row_##SFX(T *restrict g, const T *restrict w,          \
                                   int64_t n, T c) {                            \
        FBP_NC                                                                  \
        double sq = 0.0;                                                        \
        for (int64_t i = 0; i < n; i++) sq += (double)w[i] * (double)w[i];     \
        for (int64_t i = 0; i < n; i++) g[i] = g[i] + c * w[i];                 \
        return sq;                                                              \
    }                                                                           \
    /* acc + sum g[i]^2 in index order, in double. */                           \
    static double fbp_sumsq_##SFX(const T *g, int64_t n, double acc) {          \
        FBP_NC                                                                  \
        for (int64_t i = 0; i < n; i++) acc += (double)g[i] * (double)g[i];    \
        return acc;                                                             \
    }                                                                           \
    /* g[i] = g[i] * c */                                                       \
    static void fbp_scale_##SFX(T *g, int64_t n, T c) {                         \
        FBP_NC                                                                  \
        for (int64_t i = 0; i < n; i++) g[i] = g[i] * c;                        \
    }
    FBP_OPTK_DEFINE(float, f32)
    FBP_OPTK_DEFINE(double, f64)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    double fbp_l2_row_f32(float *g, const float *w, int64_t n, float c) nogil
    double fbp_l2_row_f64(double *g, const double *w, int64_t n, double c) nogil
    double fbp_sumsq_f32(const float *g, int64_t n, double acc) nogil
    double fbp_sumsq_f64(const double *g, int64_t n, double acc) nogil
    void fbp_scale_f32(float *g, int64_t n, float c) nogil
    void fbp_scale_f64(double *g, int64_t n, double c) nogil


cdef enum:
    OPT_SGD = 1
    OPT_ADAM = 2
    OPT_RMSPROP = 3

# fastbp.optim's names -> kernel codes, and the order of each one's state
# arrays in OptK.st (torch's names; absent ones stay NULL).
# "sklearn_adam": fastbp.optim._SklearnAdam, scikit-learn's AdamOptimizer (OptK.sklearn).
_OPT_KIND = {"sgd": OPT_SGD, "adam": OPT_ADAM, "adamw": OPT_ADAM, "rmsprop": OPT_RMSPROP,
             "sklearn_adam": OPT_ADAM}
_OPT_SLOTS = {
    OPT_SGD: ("momentum_buffer",),
    OPT_ADAM: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    OPT_RMSPROP: ("square_avg", "momentum_buffer", "grad_avg"),
}


cdef struct OptK:
    # An optimizer of fastbp.optim as the kernels run it.
    int kind                 # OPT_*
    double lr                # this call's learning rate (overrides optimizer.lr)
    double momentum, weight_decay, beta1, beta2, eps, alpha
    bint nesterov, decoupled, amsgrad, centered
    bint sklearn             # OPT_ADAM: scikit-learn's AdamOptimizer (fbp_adam_sklearn_prepare)
    void *st[3]              # IN/OUT state arrays (n_params), NULL when unused (slots: _OPT_SLOTS)
    void *snap_st[3]         # OUT their copies at the snapshot step, or NULL
    int64_t step             # updates applied so far (state["step"])
    double l2                # scikit-learn's alpha (weights only, before the optimizer)
    double l2_den            # this step's divisor of l2 (the batch's rows, or with
                             # sklearn_weights its weight sum), set by run_epoch
    double clip              # clip_grad_norm's max_norm, 0: none
    double *usq              # OUT per unit: sum of W row^2 before the step (l2 != 0)
    double *gsq              # OUT per unit: sum of its gradient^2 (clip != 0)
    int64_t uoff[65]         # first slot of layer k's units in usq / gsq
    int64_t n_units
    # this step's scalars (fbp_<opt>_prepare), set by thread 0 before the step
    fbp_sgd_step_f32 sgd32
    fbp_sgd_step_f64 sgd64
    fbp_adam_step_f32 adam32
    fbp_adam_step_f64 adam64
    fbp_rmsprop_step_f32 rms32
    fbp_rmsprop_step_f64 rms64


cdef void opt_prepare(OptK *o) noexcept nogil:
    """This step's scalars, for step number o.step + 1 (thread 0, between steps)."""
    cdef int64_t step = o.step + 1
    if o.kind == OPT_SGD:
        o.sgd32 = fbp_sgd_prepare_f32(o.lr, o.momentum, o.nesterov, o.weight_decay, step)
        o.sgd64 = fbp_sgd_prepare_f64(o.lr, o.momentum, o.nesterov, o.weight_decay, step)
    elif o.kind == OPT_ADAM and o.sklearn:
        o.adam32 = fbp_adam_sklearn_prepare_f32(o.lr, o.beta1, o.beta2, o.eps, step)
        o.adam64 = fbp_adam_sklearn_prepare_f64(o.lr, o.beta1, o.beta2, o.eps, step)
    elif o.kind == OPT_ADAM:
        o.adam32 = fbp_adam_prepare_f32(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                                        o.decoupled, o.amsgrad, step)
        o.adam64 = fbp_adam_prepare_f64(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                                        o.decoupled, o.amsgrad, step)
    else:
        o.rms32 = fbp_rmsprop_prepare_f32(o.lr, o.alpha, o.eps, o.weight_decay, o.momentum,
                                          o.centered)
        o.rms64 = fbp_rmsprop_prepare_f64(o.lr, o.alpha, o.eps, o.weight_decay, o.momentum,
                                          o.centered)


cdef void opt_range(const OptK *o,
                    floating *theta,          # IN/OUT parameters [off, off + n)
                    const floating *grad,     # IN their gradient
                    int64_t off, int64_t n) noexcept nogil:
    """The optimizer step on theta[off:off + n] (and the state there)."""
    cdef floating *s0 = <floating *>o.st[0] + off if o.st[0] != NULL else NULL
    cdef floating *s1 = <floating *>o.st[1] + off if o.st[1] != NULL else NULL
    cdef floating *s2 = <floating *>o.st[2] + off if o.st[2] != NULL else NULL
    if n <= 0:
        return
    if floating is float:
        if o.kind == OPT_SGD:
            fbp_sgd_range_f32(theta + off, grad + off, s0, n, &o.sgd32, NULL)
        elif o.kind == OPT_ADAM:
            fbp_adam_range_f32(theta + off, grad + off, s0, s1, s2, n, &o.adam32, NULL)
        else:
            fbp_rmsprop_range_f32(theta + off, grad + off, s0, s1, s2, n, &o.rms32, NULL)
    else:
        if o.kind == OPT_SGD:
            fbp_sgd_range_f64(theta + off, grad + off, s0, n, &o.sgd64, NULL)
        elif o.kind == OPT_ADAM:
            fbp_adam_range_f64(theta + off, grad + off, s0, s1, s2, n, &o.adam64, NULL)
        else:
            fbp_rmsprop_range_f64(theta + off, grad + off, s0, s1, s2, n, &o.rms64, NULL)


cdef inline void opt_copy(const OptK *o, floating *snap,   # OUT snapshot of theta, or NULL
                          const floating *theta, int64_t off, int64_t n) noexcept nogil:
    """Copy theta[off:off + n] and the state there into the snapshots."""
    cdef int q
    if snap == NULL or n <= 0:
        return
    memcpy(snap + off, theta + off, n * sizeof(floating))
    for q in range(3):
        if o.st[q] != NULL and o.snap_st[q] != NULL:
            memcpy(<floating *>o.snap_st[q] + off, <floating *>o.st[q] + off,
                   n * sizeof(floating))


cdef void opt_units(const Spec *s, const OptK *o,
                    floating *theta,        # IN/OUT W_k rows o0..o1, b_k[o0:o1]
                    floating *grad,         # IN/OUT their gradient rows (formed by the caller)
                    floating *snap,         # OUT theta (and state) copies of those rows, or NULL
                    int64_t m, int k, int64_t o0, int64_t o1) noexcept nogil:
    """Right after the gradient of units o0..o1 of layer k is formed: l2
    (g + T(l2 / l2_den) W, l2_den the batch's rows m unless run_epoch set
    the weight sum), then the optimizer on those rows (or, with clipping, the sums of squares
    only: the update waits for the whole gradient)."""
    cdef int64_t n_in = s.sizes[k], j, woff = s.w_off[k], boff = s.b_off[k]
    cdef floating c = <floating>(o.l2 / (o.l2_den if o.l2_den > 0 else <double>m))
    cdef double acc
    if o.l2 != 0:
        for j in range(o0, o1):
            if floating is float:
                o.usq[o.uoff[k] + j] = fbp_l2_row_f32(grad + woff + j * n_in,
                                                      theta + woff + j * n_in, n_in, c)
            else:
                o.usq[o.uoff[k] + j] = fbp_l2_row_f64(grad + woff + j * n_in,
                                                      theta + woff + j * n_in, n_in, c)
    if o.clip != 0:
        for j in range(o0, o1):
            if floating is float:
                acc = fbp_sumsq_f32(grad + woff + j * n_in, n_in, 0.0)
                if boff >= 0:
                    acc = fbp_sumsq_f32(grad + boff + j, 1, acc)
            else:
                acc = fbp_sumsq_f64(grad + woff + j * n_in, n_in, 0.0)
                if boff >= 0:
                    acc = fbp_sumsq_f64(grad + boff + j, 1, acc)
            o.gsq[o.uoff[k] + j] = acc
        return
    opt_copy(o, snap, theta, woff + o0 * n_in, (o1 - o0) * n_in)
    opt_range(o, theta, grad, woff + o0 * n_in, (o1 - o0) * n_in)
    if boff >= 0:
        opt_copy(o, snap, theta, boff + o0, o1 - o0)
        opt_range(o, theta, grad, boff + o0, o1 - o0)


cdef inline bint opt_fuses_rows(const OptK *o) noexcept nogil:
    """Whether opt_rows_l2z applies: Adam (torch's or scikit-learn's) without clipping."""
    return o != NULL and o.kind == OPT_ADAM and o.clip == 0


cdef void opt_rows_l2z(const Spec *s, const OptK *o,
                       floating *theta,        # IN/OUT W_k rows j0..j0+nr
                       floating *g,            # IN/OUT their gradient rows (stride n_in), 0 after
                       floating *snap,         # OUT theta (and state) copies of those rows, or NULL
                       int64_t m, int k, int64_t j0, int nr) noexcept nogil:
    """opt_units on the weights of units j0..j0+nr (nr <= 4) of layer k (not
    b_k) for Adam (opt_fuses_rows), their gradient rows in a scratch `g`
    instead of grad: the l2 term, the sums of W row^2 into usq, Adam, and g
    set back to 0, in one pass over the rows (fbp_adam_l2z_rows); the same
    bits as opt_units."""
    cdef int64_t n_in = s.sizes[k], off = s.w_off[k] + j0 * n_in
    cdef floating c = <floating>(o.l2 / (o.l2_den if o.l2_den > 0 else <double>m))
    cdef floating *s0 = <floating *>o.st[0] + off
    cdef floating *s1 = <floating *>o.st[1] + off
    cdef floating *s2 = <floating *>o.st[2] + off if o.st[2] != NULL else NULL
    cdef double sq[4]
    cdef int r
    if nr <= 0 or n_in <= 0:
        return
    opt_copy(o, snap, theta, off, nr * n_in)
    if floating is float:
        fbp_adam_l2z_rows_f32(theta + off, g, s0, s1, s2, n_in, n_in, nr, n_in, o.l2 != 0, c,
                              &o.adam32, sq)
    else:
        fbp_adam_l2z_rows_f64(theta + off, g, s0, s1, s2, n_in, n_in, nr, n_in, o.l2 != 0, c,
                              &o.adam64, sq)
    if o.l2 != 0:
        for r in range(nr):
            o.usq[o.uoff[k] + j0 + r] = sq[r]


cdef double opt_unit_sum(const double *v, int64_t n) noexcept nogil:
    """sum_i v[i] in index order."""
    cdef int64_t i
    cdef double total = 0.0
    for i in range(n):
        total += v[i]
    return total


cdef void opt_clipped_update(const Spec *s, const OptK *o,
                             floating *theta,     # IN/OUT every parameter
                             floating *grad,      # IN/OUT the whole gradient (scaled in place)
                             int64_t n_params) noexcept nogil:
    """clip_grad_norm_ then the optimizer on the whole vector (thread 0, after
    the step's gradient is complete): total = sqrt(sum over units, in order,
    of their sums of squares); coef = clip / (total + 1e-6); the gradient is
    multiplied by (T)coef when coef < 1."""
    cdef double total = sqrt(opt_unit_sum(o.gsq, o.n_units))
    cdef double coef = o.clip / (total + 1e-6)
    if coef < 1.0:
        if floating is float:
            fbp_scale_f32(grad, n_params, <float>coef)
        else:
            fbp_scale_f64(grad, n_params, <double>coef)
    opt_range(o, theta, grad, 0, n_params)
