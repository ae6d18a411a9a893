/* fbp_optim.h: the optimizers' per-element updates, header-only.
 *
 * Design
 * ------
 * * torch.optim's single-tensor SGD, Adam/AdamW and RMSprop as range kernels
 *   over a contiguous slice [0, n) of the flat parameter vector `theta`, its
 *   gradient and the optimizer's flat state arrays.  Every element's update
 *   reads and writes only that element's slots, so a caller may split the
 *   vector into any ranges, in any order, on any threads, and get the same
 *   bits: the compiled epoch calls them on the rows of W_k right after those
 *   gradient rows are formed (still in cache), each thread on the rows it
 *   owns, so every write is private to its thread.
 * * What is constant over a step (the learning rate, bias corrections, step
 *   size, the decay factor, ...) is computed ONCE per step by
 *   fbp_<opt>_prepare_<sfx>() in double (into a
 *   fbp_<opt>_step_<sfx> struct), exactly as torch computes those Python
 *   floats (same libm pow), and rounded once to the element type, as torch's
 *   kernels round a Python scalar.  The range kernels then do only element
 *   arithmetic, in the element type (float32 in float32), in torch's order:
 *   the reference is fastbp/optim.py's `update`, and the kernels give its
 *   bits exactly (tests/test_optim_c.py).  Only torch's own vectorised
 *   kernels differ from both, by their FMAs (a few ulp per step).
 * * No multiply-add may be contracted into an FMA here, whatever the build
 *   flags (-march=native turns FMA on and GCC contracts by default in gnu
 *   modes): the functions below are compiled with fp-contract off (a GCC
 *   optimize pragma, which also keeps GCC from inlining them into callers
 *   built with other options: one call per range; clang: `fp contract(off)`
 *   in each body), so results never depend on the flags.  sqrt and division
 *   are IEEE (correctly rounded) in C, as in numpy and torch.
 * * Build with -fno-math-errno where possible: it changes no result (only
 *   whether sqrt of a negative sets errno) but lets GCC vectorise the loops
 *   with sqrt (Adam: 0.81 against 3.19 ns per float32 element, one run;
 *   "no-math-errno" in the optimize pragma below had no such effect with
 *   GCC 12, so it is the build's flag to set).
 * * Float and double variants come from one macro body each
 *   (FBP_OPTIM_DEFINE), suffixes _f32 and _f64 as in fbp_gemm.h.
 * * `first` of SGD is torch's first step: momentum_buffer = g (not
 *   momentum * 0 + g).  `step` arguments are the step number AFTER
 *   the increment, 1 for the first update (torch's `state["step"]`).
 * * Adam has a second variant, scikit-learn's AdamOptimizer (its own
 *   prepare function, fbp_adam_sklearn_prepare; `sklearn` set in the step
 *   struct): eps added to sqrt(v) unscaled, the bias corrections folded into
 *   one float64 rate, as scikit-learn's numpy code rounds it (fastbp/optim.py's
 *   private _SklearnAdam is its reference).
 * * fbp_adam_l2z_rows: either Adam on up to 4 rows with scikit-learn's l2
 *   term before it and the gradient rows zeroed after it, chunk by chunk, so
 *   that the sparse first layer (src/_sparse.pxi) loads each weight and
 *   moment once per step; the same operations as fbp_l2_row (_optim.pxi)
 *   then fbp_adam_range, hence the same bits.
 * * Optional `sq` (IN/OUT, may be NULL): adds sum(theta_i^2) over the range,
 *   taken before the update, in double, in index order (for the l2 penalty
 *   of scikit-learn's alpha).
 */
#ifndef FBP_OPTIM_H
#define FBP_OPTIM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Elements per chunk of fbp_adam_l2z_rows: 4 rows of w, g, m, v stay in L1. */
#define FBP_FUSED_CHUNK 256

/* fbp_adam_l2z_rows is also compiled for AVX2 and AVX-512 (GCC's
 * target_clones: the loader picks the widest the CPU has), with the
 * range kernel inlined (flatten): the wheels' baseline is SSE2, where its
 * float64 division and sqrt take 2 lanes.  Wider vectors change no bit:
 * every operation is a correctly rounded IEEE one, none is contracted
 * (fp-contract is off below), and the sums of squares keep their order. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FBP_WIDE_CLONES \
    __attribute__((target_clones("default", "avx2", "avx512f"), flatten, unused))
#elif defined(__GNUC__)
#define FBP_WIDE_CLONES __attribute__((unused))
#else
#define FBP_WIDE_CLONES
#endif

/* No FMA contraction in the functions below (see the design notes): GCC
 * through an optimize pragma around them, clang through a pragma at the start
 * of each body (it then applies to that body only). */
#if defined(__clang__)
#define FBP_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define FBP_NO_CONTRACT
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

/* torch's lerp (aten/src/ATen/native/Lerp.h) with a scalar weight w:
 * |w| < 0.5 ? a + w (b - a) : b - (b - a)(1 - w). */
#define FBP_LERP(a, b, small, w, one_minus_w) \
    ((small) ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (one_minus_w))

/* torch.maximum: NaN if either is NaN. */
#define FBP_MAXIMUM(a, b) (((a) != (a) || (a) > (b)) ? (a) : (b))

#define FBP_OPTIM_DEFINE(T, SFX, SQRT)                                                 \
                                                                                       \
/* *sq += sum theta_i^2 over [0, n), in double, in index order (sq may be NULL) */    \
static inline void fbp_sq_add_##SFX(const T *theta, int64_t n, double *sq)             \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    int64_t i;                                                                         \
    double acc;                                                                        \
    if (sq == NULL) return;                                                            \
    acc = *sq;                                                                         \
    for (i = 0; i < n; i++)                                                            \
        acc += (double)theta[i] * (double)theta[i];                                    \
    *sq = acc;                                                                         \
}                                                                                      \
                                                                                       \
/* ---- SGD: torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov) */     \
typedef struct {                                                                       \
    T neg_lr;          /* (T)(-lr) */                                                  \
    T weight_decay;    /* (T)weight_decay; used when has_decay */                      \
    T momentum;        /* (T)momentum; used when has_momentum */                       \
    int has_decay;     /* weight_decay != 0 */                                         \
    int has_momentum;  /* momentum != 0: a momentum_buffer */                          \
    int nesterov;                                                                      \
    int first;         /* first step: buf = g */                                       \
} fbp_sgd_step_##SFX;                                                                  \
                                                                                       \
static inline fbp_sgd_step_##SFX fbp_sgd_prepare_##SFX(                                \
    double lr, double momentum, int nesterov, double weight_decay,                     \
    int64_t step)      /* IN the step number after the increment (1 = first) */        \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    fbp_sgd_step_##SFX s;                                                              \
    s.neg_lr = (T)(-lr);                                                               \
    s.weight_decay = (T)weight_decay;                                                  \
    s.momentum = (T)momentum;                                                          \
    s.has_decay = weight_decay != 0;                                                   \
    s.has_momentum = momentum != 0;                                                    \
    s.nesterov = nesterov != 0;                                                        \
    s.first = step <= 1;                                                               \
    return s;                                                                          \
}                                                                                      \
                                                                                       \
/* g = grad + wd*theta; buf = first ? g : mu*buf + g;                                  \
 * g = nesterov ? g + mu*buf : buf; theta = theta + (-lr)*g */                         \
static inline void fbp_sgd_range_##SFX(                                                \
    T *theta,                    /* IN/OUT n parameters */                             \
    const T *grad,               /* IN n gradient values */                            \
    T *buf,                      /* IN/OUT momentum_buffer, NULL without momentum */   \
    int64_t n,                                                                         \
    const fbp_sgd_step_##SFX *step, /* IN this step's scalars */                       \
    double *sq)                  /* IN/OUT += sum theta^2 before, or NULL */           \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    int64_t i;                                                                         \
    /* a local copy: stores through theta (T *) cannot then alias the scalars */       \
    const fbp_sgd_step_##SFX sc = *step, *s = &sc;                                     \
    fbp_sq_add_##SFX(theta, n, sq);                                                    \
    for (i = 0; i < n; i++) {                                                          \
        T g = grad[i];                                                                 \
        if (s->has_decay)                                                              \
            g = g + s->weight_decay * theta[i];                                        \
        if (s->has_momentum) {                                                         \
            T b = s->first ? g : s->momentum * buf[i] + g;                             \
            buf[i] = b;                                                                \
            g = s->nesterov ? g + s->momentum * b : b;                                 \
        }                                                                              \
        theta[i] = theta[i] + s->neg_lr * g;                                           \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* ---- Adam / AdamW: torch.optim.Adam(lr, betas, eps, weight_decay, amsgrad,          \
 *      decoupled_weight_decay) */                                                     \
typedef struct {                                                                       \
    T lerp_w;          /* (T)(1 - beta1): exp_avg.lerp_(g, 1 - beta1) */               \
    T lerp_1mw;        /* (T)1 - lerp_w */                                             \
    T beta2;           /* (T)beta2 */                                                  \
    T one_minus_beta2; /* (T)(1 - beta2) */                                            \
    T bc2_sqrt;        /* (T)pow(1 - pow(beta2, step), 0.5) */                         \
    T eps;             /* (T)eps */                                                    \
    T neg_step_size;   /* (T)(-(lr / (1 - pow(beta1, step)))) */                       \
    T weight_decay;    /* (T)weight_decay (Adam: into the gradient) */                 \
    T decay_factor;    /* (T)(1 - lr*weight_decay) (AdamW: theta *= it) */             \
    int lerp_small;    /* |lerp_w| < 0.5 */                                            \
    int has_decay;     /* weight_decay != 0 */                                         \
    int decoupled;     /* AdamW */                                                     \
    int amsgrad;                                                                       \
    /* scikit-learn's AdamOptimizer (fbp_adam_sklearn_prepare; 0 for torch's): */      \
    int sklearn;                                                                       \
    T beta1;           /* (T)beta1 */                                                  \
    T one_minus_beta1; /* (T)(1 - beta1) */                                            \
    double neg_lr_t;   /* -(lr * sqrt(1 - beta2^t) / (1 - beta1^t)), in double */      \
} fbp_adam_step_##SFX;                                                                 \
                                                                                       \
static inline fbp_adam_step_##SFX fbp_adam_prepare_##SFX(                              \
    double lr, double beta1, double beta2, double eps, double weight_decay,            \
    int decoupled, int amsgrad,                                                        \
    int64_t step)      /* IN the step number after the increment (1 = first) */        \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    fbp_adam_step_##SFX s;                                                             \
    double bias_correction1 = 1 - pow(beta1, (double)step);                            \
    double bias_correction2 = 1 - pow(beta2, (double)step);                            \
    double step_size = lr / bias_correction1;                                          \
    double bias_correction2_sqrt = pow(bias_correction2, 0.5); /* Python's ** 0.5 */   \
    s.lerp_w = (T)(1 - beta1);                                                         \
    s.lerp_1mw = (T)1 - s.lerp_w;                                                      \
    s.lerp_small = fabs((double)s.lerp_w) < 0.5;                                       \
    s.beta2 = (T)beta2;                                                                \
    s.one_minus_beta2 = (T)(1 - beta2);                                                \
    s.bc2_sqrt = (T)bias_correction2_sqrt;                                             \
    s.eps = (T)eps;                                                                    \
    s.neg_step_size = (T)(-step_size);                                                 \
    s.weight_decay = (T)weight_decay;                                                  \
    s.decay_factor = (T)(1 - lr * weight_decay);                                       \
    s.has_decay = weight_decay != 0;                                                   \
    s.decoupled = decoupled != 0;                                                      \
    s.amsgrad = amsgrad != 0;                                                          \
    s.sklearn = 0;                                                                     \
    s.beta1 = (T)beta1;                                                                \
    s.one_minus_beta1 = s.lerp_w;                                                      \
    s.neg_lr_t = 0.0;                                                                  \
    return s;                                                                          \
}                                                                                      \
                                                                                       \
/* scikit-learn's AdamOptimizer._get_updates (sklearn/neural_network/                  \
 * _stochastic_optimizers.py): learning_rate = lr_init * np.sqrt(1 - beta_2**t)        \
 * / (1 - beta_1**t), a float64 scalar, computed here in double in that order         \
 * (libm pow as Python's float ** int, sqrt correctly rounded as np.sqrt). */           \
static inline fbp_adam_step_##SFX fbp_adam_sklearn_prepare_##SFX(                      \
    double lr, double beta1, double beta2, double eps,                                 \
    int64_t step)      /* IN the step number after the increment (1 = first) */        \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    fbp_adam_step_##SFX s = fbp_adam_prepare_##SFX(lr, beta1, beta2, eps, 0.0, 0, 0,   \
                                                   step);                              \
    s.sklearn = 1;                                                                     \
    s.neg_lr_t = -(lr * sqrt(1 - pow(beta2, (double)step))                             \
                   / (1 - pow(beta1, (double)step)));                                  \
    return s;                                                                          \
}                                                                                      \
                                                                                       \
/* AdamW: theta *= 1 - lr wd.  Adam: g = grad + wd theta.                              \
 * m = lerp(m, g, 1 - beta1); v = v*beta2; v = v + ((1 - beta2)*g)*g;                  \
 * amsgrad: vmax = maximum(vmax, v), used for v;                                       \
 * denom = sqrt(v) / bc2_sqrt + eps; theta = theta + ((-step_size)*m) / denom */       \
static inline void fbp_adam_range_##SFX(                                               \
    T *theta,                     /* IN/OUT n parameters */                            \
    const T *grad,                /* IN n gradient values */                           \
    T *exp_avg,                   /* IN/OUT first moment m */                          \
    T *exp_avg_sq,                /* IN/OUT second moment v */                         \
    T *max_exp_avg_sq,            /* IN/OUT running max of v (amsgrad), or NULL */     \
    int64_t n,                                                                         \
    const fbp_adam_step_##SFX *step, /* IN this step's scalars */                      \
    double *sq)                   /* IN/OUT += sum theta^2 before, or NULL */          \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    int64_t i;                                                                         \
    /* a local copy: stores through theta (T *) cannot then alias the scalars */       \
    const fbp_adam_step_##SFX sc = *step, *s = &sc;                                    \
    fbp_sq_add_##SFX(theta, n, sq);                                                    \
    if (s->sklearn) {                                                                  \
        /* numpy's roundings of scikit-learn's update in T: m, v and sqrt(v) + eps     \
         * in T (Python floats act as T), the update in double (the float64 rate),    \
         * theta += update rounded once to T (numpy's in-place add). */                \
        for (i = 0; i < n; i++) {                                                      \
            T g = grad[i], m, v, d;                                                    \
            m = s->beta1 * exp_avg[i] + s->one_minus_beta1 * g;                        \
            exp_avg[i] = m;                                                            \
            v = s->beta2 * exp_avg_sq[i] + s->one_minus_beta2 * (g * g);               \
            exp_avg_sq[i] = v;                                                         \
            d = SQRT(v) + s->eps;                                                      \
            theta[i] = (T)((double)theta[i] + (s->neg_lr_t * (double)m) / (double)d);  \
        }                                                                              \
        return;                                                                        \
    }                                                                                  \
    for (i = 0; i < n; i++) {                                                          \
        T g = grad[i], p = theta[i], m, v, d;                                          \
        if (s->has_decay) {                                                            \
            if (s->decoupled)                                                          \
                p = p * s->decay_factor;                                               \
            else                                                                       \
                g = g + s->weight_decay * p;                                           \
        }                                                                              \
        m = FBP_LERP(exp_avg[i], g, s->lerp_small, s->lerp_w, s->lerp_1mw);            \
        exp_avg[i] = m;                                                                \
        v = exp_avg_sq[i] * s->beta2;                                                  \
        v = v + (s->one_minus_beta2 * g) * g;                                          \
        exp_avg_sq[i] = v;                                                             \
        if (s->amsgrad) {                                                              \
            v = FBP_MAXIMUM(max_exp_avg_sq[i], v);                                     \
            max_exp_avg_sq[i] = v;                                                     \
        }                                                                              \
        d = SQRT(v) / s->bc2_sqrt;                                                     \
        d = d + s->eps;                                                                \
        theta[i] = p + (s->neg_step_size * m) / d;                                     \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* Adam on nr <= 4 rows of a weight matrix with scikit-learn's l2 term and the      \
 * gradient's zeroing in the same pass (the sparse first layer, _sparse.pxi): per     \
 * row r (theta + r*ld, grad + r*ldg, the state arrays + r*ld), when has_l2:          \
 * sq[r] = sum theta_i^2 before the step (double, index order) and                    \
 * g_i = g_i + c*theta_i; then fbp_adam_range's update; then g_i = 0.  The same bits \
 * as fbp_l2_row (_optim.pxi) then fbp_adam_range on the row, but every element is   \
 * loaded from memory once: the rows go by chunks of FBP_FUSED_CHUNK elements that   \
 * stay in L1 between the sum, the update and the zeroing, and the nr sums are       \
 * interleaved (nr independent chains of double adds instead of one).                \
 * max_exp_avg_sq may be NULL (no amsgrad). */                                        \
FBP_WIDE_CLONES                                                                        \
static void fbp_adam_l2z_rows_##SFX(                                                   \
    T *theta,                     /* IN/OUT nr rows of n parameters (stride ld) */     \
    T *grad,                      /* IN/OUT their gradient rows (stride ldg), 0 after */ \
    T *exp_avg, T *exp_avg_sq,    /* IN/OUT moments (stride ld) */                     \
    T *max_exp_avg_sq,            /* IN/OUT running max of v (amsgrad), or NULL */     \
    int64_t ld, int64_t ldg, int nr, int64_t n,                                        \
    int has_l2, T c,              /* l2: g = g + c*theta first */                      \
    const fbp_adam_step_##SFX *step, /* IN this step's scalars */                      \
    double *sq)                   /* OUT sq[r] (has_l2), else unused */                \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    double acc[4] = {0.0, 0.0, 0.0, 0.0};                                              \
    int64_t i0, i, len;                                                                \
    int r;                                                                             \
    for (i0 = 0; i0 < n; i0 += FBP_FUSED_CHUNK) {                                      \
        len = n - i0 < FBP_FUSED_CHUNK ? n - i0 : FBP_FUSED_CHUNK;                     \
        if (has_l2 && nr == 4) {                                                       \
            const T *w0 = theta + i0, *w1 = w0 + ld, *w2 = w1 + ld, *w3 = w2 + ld;     \
            double a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];                 \
            for (i = 0; i < len; i++) {                                                \
                a0 += (double)w0[i] * (double)w0[i];                                   \
                a1 += (double)w1[i] * (double)w1[i];                                   \
                a2 += (double)w2[i] * (double)w2[i];                                   \
                a3 += (double)w3[i] * (double)w3[i];                                   \
            }                                                                          \
            acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;                        \
        } else if (has_l2) {                                                           \
            for (r = 0; r < nr; r++) {                                                 \
                const T *w = theta + r * ld + i0;                                      \
                double a = acc[r];                                                     \
                for (i = 0; i < len; i++) a += (double)w[i] * (double)w[i];            \
                acc[r] = a;                                                            \
            }                                                                          \
        }                                                                              \
        for (r = 0; r < nr; r++) {                                                     \
            T *w = theta + r * ld + i0, *g = grad + r * ldg + i0;                      \
            if (has_l2)                                                                \
                for (i = 0; i < len; i++) g[i] = g[i] + c * w[i];                      \
            fbp_adam_range_##SFX(w, g, exp_avg + r * ld + i0, exp_avg_sq + r * ld + i0, \
                                 max_exp_avg_sq ? max_exp_avg_sq + r * ld + i0 : NULL, \
                                 len, step, NULL);                                     \
            memset(g, 0, (size_t)len * sizeof(T));                                     \
        }                                                                              \
    }                                                                                  \
    if (has_l2)                                                                        \
        for (r = 0; r < nr; r++) sq[r] = acc[r];                                       \
}                                                                                      \
                                                                                       \
/* ---- RMSprop: torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum,           \
 *      centered) */                                                                   \
typedef struct {                                                                       \
    T alpha;           /* (T)alpha */                                                  \
    T one_minus_alpha; /* (T)(1 - alpha): addcmul value and lerp weight */             \
    T lerp_1mw;        /* (T)1 - one_minus_alpha */                                    \
    T eps;             /* (T)eps */                                                    \
    T neg_lr;          /* (T)(-lr) */                                                  \
    T weight_decay;    /* (T)weight_decay */                                           \
    T momentum;        /* (T)momentum */                                               \
    int lerp_small;    /* |one_minus_alpha| < 0.5 */                                   \
    int has_decay;     /* weight_decay != 0 */                                         \
    int has_momentum;  /* momentum > 0: a momentum_buffer */                           \
    int centered;      /* a grad_avg */                                                \
} fbp_rmsprop_step_##SFX;                                                              \
                                                                                       \
static inline fbp_rmsprop_step_##SFX fbp_rmsprop_prepare_##SFX(                        \
    double lr, double alpha, double eps, double weight_decay, double momentum,         \
    int centered)                                                                      \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    fbp_rmsprop_step_##SFX s;                                                          \
    s.alpha = (T)alpha;                                                                \
    s.one_minus_alpha = (T)(1 - alpha);                                                \
    s.lerp_1mw = (T)1 - s.one_minus_alpha;                                             \
    s.lerp_small = fabs((double)s.one_minus_alpha) < 0.5;                              \
    s.eps = (T)eps;                                                                    \
    s.neg_lr = (T)(-lr);                                                               \
    s.weight_decay = (T)weight_decay;                                                  \
    s.momentum = (T)momentum;                                                          \
    s.has_decay = weight_decay != 0;                                                   \
    s.has_momentum = momentum > 0;                                                     \
    s.centered = centered != 0;                                                        \
    return s;                                                                          \
}                                                                                      \
                                                                                       \
/* g = grad + wd theta; v = v*alpha; v = v + ((1 - alpha)*g)*g;                        \
 * centered: ga = lerp(ga, g, 1 - alpha), avg = sqrt(v + (-ga)*ga), else sqrt(v);      \
 * avg = avg + eps; momentum: buf = buf*mu; buf = buf + g/avg;                         \
 * theta = theta + (-lr)*buf; else theta = theta + ((-lr)*g)/avg */                    \
static inline void fbp_rmsprop_range_##SFX(                                            \
    T *theta,                        /* IN/OUT n parameters */                         \
    const T *grad,                   /* IN n gradient values */                        \
    T *square_avg,                   /* IN/OUT v */                                    \
    T *momentum_buffer,              /* IN/OUT buf (momentum > 0), or NULL */          \
    T *grad_avg,                     /* IN/OUT ga (centered), or NULL */               \
    int64_t n,                                                                         \
    const fbp_rmsprop_step_##SFX *step, /* IN this step's scalars */                   \
    double *sq)                      /* IN/OUT += sum theta^2 before, or NULL */       \
{                                                                                      \
    FBP_NO_CONTRACT                                                                    \
    int64_t i;                                                                         \
    /* a local copy: stores through theta (T *) cannot then alias the scalars */       \
    const fbp_rmsprop_step_##SFX sc = *step, *s = &sc;                                 \
    fbp_sq_add_##SFX(theta, n, sq);                                                    \
    for (i = 0; i < n; i++) {                                                          \
        T g = grad[i], v, avg;                                                         \
        if (s->has_decay)                                                              \
            g = g + s->weight_decay * theta[i];                                        \
        v = square_avg[i] * s->alpha;                                                  \
        v = v + (s->one_minus_alpha * g) * g;                                          \
        square_avg[i] = v;                                                             \
        if (s->centered) {                                                             \
            T ga = FBP_LERP(grad_avg[i], g, s->lerp_small, s->one_minus_alpha,         \
                            s->lerp_1mw);                                              \
            grad_avg[i] = ga;                                                          \
            avg = SQRT(v + ((T)-1 * ga) * ga);                                         \
        } else {                                                                       \
            avg = SQRT(v);                                                             \
        }                                                                              \
        avg = avg + s->eps;                                                            \
        if (s->has_momentum) {                                                         \
            T b = momentum_buffer[i] * s->momentum;                                    \
            b = b + g / avg;                                                           \
            momentum_buffer[i] = b;                                                    \
            theta[i] = theta[i] + s->neg_lr * b;                                       \
        } else {                                                                       \
            theta[i] = theta[i] + (s->neg_lr * g) / avg;                               \
        }                                                                              \
    }                                                                                  \
}

FBP_OPTIM_DEFINE(float, f32, sqrtf)
FBP_OPTIM_DEFINE(double, f64, sqrt)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif /* FBP_OPTIM_H */
