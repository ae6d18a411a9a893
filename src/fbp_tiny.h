/* fbp_tiny.h (included by _kernels.pyx through src/_tiny.pxi only): the
 * fused per-sample SGD loop of a net whose every layer fits one vector.
 *
 * Design
 * ------
 * The packed plain-SGD path of the tiny-net epoch (_tiny.pxi's tiny_loop1,
 * fbp_packed_* of fbp_narrow.c) runs a batch-1 step as two kernel calls through
 * function pointers, the row kernels of _rows.pxi and the Cython loop's
 * bookkeeping: ~730 instructions for a 2-2-1 step, of which the arithmetic
 * is a fifth.  ft_sgd1_* runs the same steps, for nets whose every layer
 * fits one 32-byte vector (fbp_packed's `one`: widths <= 8 floats / 4
 * doubles) at batch 1 without sample weights, as ONE loop over the samples:
 * the visiting order, the forward pass, identity output + squared error
 * inline (other output/loss pairs through the caller's row kernels, one
 * callback per step), the finite check, the deltas, the SGD update of both
 * weight copies and of the biases, the loss and accuracy sums.
 *
 * Bits: every operation is the one fbp_packed_* / tiny_loop1 performs, in
 * the same order, on the same buffer layout (fbp_packed): the forward
 * chains fma(h_i, WT_k[i], a) from 0 in i order, the bias add, the
 * activation by the same lane-wise sigmoid / tanh (fbp_vmath.h's, which
 * the GEMM's epilogue uses: the same code, so the same bits; the tests
 * compare with the general path on every code path), the deltas
 * (sum_j d_j WN_k[j]) * act'(A_k), the update fma(-lr, fma(s, v, 0), W) of
 * each row of both copies, b -= lr (0 + d), the loss (double) rounded to the
 * dtype and summed from 0.0.  What differs is where values live: the
 * activations, deltas and biases stay in vectors (registers for one and two
 * hidden layers, whose layer loops are unrolled; lanes are broadcast by a
 * permute on the FMA ISAs), A_0 is read where it is in X, the squared error
 * is formed on vectors (each lane's double operations as loss_row's, the
 * loss summed lane by lane in order), and WN_0 (the row copy of W_0, read
 * by no product of the step) is not updated in the loop but rebuilt from
 * WT_0 on return (fma(a, b, c) == fma(b, a, c): the two copies hold the
 * same bits).  On return theta's biases and both weight copies are as
 * tiny_loop1 leaves them (the activation and delta rows of buf are scratch
 * that tiny_loop1 writes before it reads), so the caller can run any step
 * (a snapshot) with tiny_loop1 in between.
 * Code paths: fbp_gemm_isa() "generic" runs the plain instance (mul then
 * add), the FMA ISAs the fused-multiply-add one (AVX2 and AVX-512 alike, as
 * fbp_packed_* do).  Contraction is off in every function here.
 * Serial: the caller's thread only, no allocation. */
#ifndef FBP_TINY_H
#define FBP_TINY_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "fbp_gemm.h"
/* The activations (vsigmoid_* / vtanh_*), the lane helpers, vfma_*,
 * MADD_PLAIN, TARGET_FMA, FBP_X86 (and <immintrin.h> there). */
#include "fbp_vmath.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#define FT_NOFUSE _Pragma("clang fp contract(off)")
#else
#define FT_NOFUSE
#endif
/* The 32-byte vector helpers are static inline: no ABI is exposed. */
#pragma GCC diagnostic ignored "-Wpsabi"

#define FT_INLINE static inline __attribute__((always_inline))
/* The widths of the lane loops (i < ni, j < no; the loop's WIDTH): each is
 * at most VL already (fbp_packed's `one`), which the compiler cannot know.
 * The FMA instances say so (FT_LANE_MAX: a min per width per call, hoisted
 * out of the step loop), and GCC unrolls them to at most VL trips: 10% (f32)
 * and 22% (f64) fewer instructions per 2-2-1 step (callgrind,
 * bench/NOTES.md).  The plain instances take the width as it is
 * (FT_WIDTH): bounded, GCC unrolls them otherwise and runs up to 1.4% more
 * instructions (f64); see FT_BCAST_PLAIN for the warning this leaves. */
#define FT_LANE_MAX(n, VL) ((n) < (VL) ? (n) : (int64_t)(VL))
#define FT_WIDTH(n, VL) (n)

/* The steps' output/loss for the pairs not inline: ctx, the logits z and
 * the target row y (n_out each); writes dL (n_out, the scaled dloss/dz) and
 * *hit (the sample's accuracy rounded to the dtype, 0 for the squared loss);
 * returns the sample's loss rounded to the dtype. */
typedef double (*ft_loss_fn)(void *ctx, const void *z, const void *y, void *dL, double *hit);

typedef struct {
    const fbp_packed *P;       /* the layout of buf (P->one) */
    const int64_t *sizes;      /* n_layers + 1 widths */
    const int64_t *b_off;      /* offset of b_k in theta, or -1 */
    int hidden;                /* FBP_ACT_* of the hidden layers */
    int inline_loss;           /* 1: identity output + squared error here; 0: loss_fn */
    int hits;                  /* accumulate the accuracy (not the squared loss) */
    ft_loss_fn loss_fn;
    void *ctx;
} ft_net;

/* Unaligned loads / stores and the lane mask, on fbp_vmath.h's 32-byte
 * vectors (VT, VI: vf32 / vi32, vf64 / vi64).  Like fbp_vmath.h's lane
 * helpers, every helper taking or returning a vector exists once per target
 * (TGT; suffix f32 / f64 generic, f32f / f64f TARGET_FMA), and each instance
 * of the loop calls only those of its own target (clang rejects a call that
 * passes a 32-byte vector between functions of different targets). */
typedef float ft_vu_f32 __attribute__((vector_size(32), aligned(sizeof(float))));
typedef double ft_vu_f64 __attribute__((vector_size(32), aligned(sizeof(double))));
#define FT_LANES(T, SFX, VT, VI, VL, VU, TGT)                                   \
TGT FT_INLINE VT ft_ld_##SFX(const T *p) { return (VT)*(const VU *)p; }         \
TGT FT_INLINE void ft_st_##SFX(T *p, VT x) { *(VU *)p = (VU)x; }                \
/* Lanes l < n of x, the others 0 (fbp_packed's keep). */                       \
TGT FT_INLINE VT ft_keep_##SFX(VT x, int64_t n)                                 \
{                                                                               \
    VI lane;                                                                    \
    _Pragma("GCC unroll 8")                                                     \
    for (int l = 0; l < VL; l++) lane[l] = l;                                   \
    return (VT)((VI)x & (lane < (VI){} + (__typeof__(lane[0]))n));              \
}
FT_LANES(float, f32, vf32, vi32, 8, ft_vu_f32, )
FT_LANES(double, f64, vf64, vi64, 4, ft_vu_f64, )
#ifdef FBP_X86
FT_LANES(float, f32f, vf32, vi32, 8, ft_vu_f32, TARGET_FMA)
FT_LANES(double, f64f, vf64, vi64, 4, ft_vu_f64, TARGET_FMA)
#endif

/* Lane i of v in every lane: plain, through memory (GCC's v[i]); FMA ISAs,
 * one permute (no store-to-load round trip on the step's dependency chain).
 * In the plain instances GCC unrolls a lane loop of unknown width one trip
 * past VL (the trip count it infers from the vector's bounds), a copy that
 * is never run (i < ni <= VL) but reads lane VL of hv[k] / dv[k]: a false
 * "may be used uninitialized", silenced here, at the read it is reported
 * at (bounding i, at the read or by FT_LANE_MAX, costs those instances
 * 0.9-1.4% more instructions on f64). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define FT_BCAST_PLAIN(LSFX, v, i) splat_##LSFX((v)[i])
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#ifdef FBP_X86
TARGET_FMA FT_INLINE vf32 ft_bcast_f32f(vf32 v, int64_t i)
{
    return (vf32)_mm256_permutevar8x32_ps((__m256)v, _mm256_set1_epi32((int)i));
}
TARGET_FMA FT_INLINE vf64 ft_bcast_f64f(vf64 v, int64_t i)
{
    const __m256i idx = _mm256_set1_epi64x((int64_t)(2 * i) | ((int64_t)(2 * i + 1) << 32));
    return (vf64)_mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps((__m256d)v), idx));
}
#define FT_BCAST_FMA(LSFX, v, i) ft_bcast_##LSFX(v, i)
#endif

/* Lanes l < r of p, the others 0: plain, element by element; FMA ISAs, one
 * masked load (no scalar stores for the vector load to wait for). */
#define FT_PLOAD(T, SFX, VT)                                                    \
FT_INLINE VT ft_pload_##SFX(const T *p, int64_t r)                              \
{                                                                               \
    VT x = {0};                                                                 \
    for (int64_t l = 0; l < r; l++) x[l] = p[l];                                \
    return x;                                                                   \
}
FT_PLOAD(float, f32, vf32)
FT_PLOAD(double, f64, vf64)
#define FT_PLOAD_PLAIN(LSFX, p, r) ft_pload_##LSFX(p, r)
#ifdef FBP_X86
TARGET_FMA FT_INLINE vf32 ft_pload_f32f(const float *p, int64_t r)
{
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return (vf32)_mm256_maskload_ps(p, m);
}
TARGET_FMA FT_INLINE vf64 ft_pload_f64f(const double *p, int64_t r)
{
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3));
    return (vf64)_mm256_maskload_pd(p, m);
}
#define FT_PLOAD_FMA(LSFX, p, r) ft_pload_##LSFX(p, r)
#endif

/* The squared error of logits z against targets y (n lanes, the others 0 in
 * both), as loss_row computes it (identity output, scale 1): returns
 * dL = (T)((double)z - (double)y) lane-wise (0 beyond n) and adds 0.5 g g of
 * lanes 0 .. n-1 in order to *loss (double). */
typedef double ft_vd4 __attribute__((vector_size(32)));
typedef float ft_vf4 __attribute__((vector_size(16)));
#define FT_SQLOSS(SFX32, SFX64, TGT)                                            \
TGT FT_INLINE vf32 ft_sqloss_##SFX32(vf32 z, vf32 y, int64_t n, double *loss)   \
{                                                                               \
    FT_NOFUSE                                                                   \
    const ft_vd4 g0 = __builtin_convertvector(__builtin_shufflevector(z, z, 0, 1, 2, 3), ft_vd4) \
                      - __builtin_convertvector(__builtin_shufflevector(y, y, 0, 1, 2, 3), ft_vd4); \
    const ft_vd4 g1 = __builtin_convertvector(__builtin_shufflevector(z, z, 4, 5, 6, 7), ft_vd4) \
                      - __builtin_convertvector(__builtin_shufflevector(y, y, 4, 5, 6, 7), ft_vd4); \
    const ft_vf4 d0 = __builtin_convertvector(g0, ft_vf4), d1 = __builtin_convertvector(g1, ft_vf4); \
    double acc = *loss;                                                         \
    for (int64_t j = 0; j < n && j < 4; j++) acc += 0.5 * g0[j] * g0[j];        \
    for (int64_t j = 4; j < n; j++) acc += 0.5 * g1[j - 4] * g1[j - 4];         \
    *loss = acc;                                                                \
    return __builtin_shufflevector(d0, d1, 0, 1, 2, 3, 4, 5, 6, 7);             \
}                                                                               \
TGT FT_INLINE vf64 ft_sqloss_##SFX64(vf64 z, vf64 y, int64_t n, double *loss)   \
{                                                                               \
    FT_NOFUSE                                                                   \
    const vf64 g = z - y;                                                       \
    double acc = *loss;                                                         \
    for (int64_t j = 0; j < n; j++) acc += 0.5 * g[j] * g[j];                   \
    *loss = acc;                                                                \
    return g;                                                                   \
}
FT_SQLOSS(f32, f64, )
#ifdef FBP_X86
FT_SQLOSS(f32f, f64f, TARGET_FMA)
#endif

/* The loop.  NAME: instance; ESFX: its activations; LSFX: lane helpers. */
#define FT_SGD1(NAME, T, LSFX, ESFX, VT, VI, VL, VFMA, BCAST, PLOAD, WIDTH, TGT) \
TGT FT_INLINE int NAME##_L(const ft_net *net, T *buf, T *theta, const T *X,     \
                           const T *Y, const int64_t *order, int64_t first,     \
                           int64_t end, T lr, double *loss_sum, double *hit_sum, \
                           int64_t *n_done, const int L)                        \
{                                                                               \
    FT_NOFUSE                                                                   \
    const fbp_packed *P = net->P;                                               \
    const int hidden = net->hidden;                                             \
    const int64_t n_in = net->sizes[0], n_out = net->sizes[L];                  \
    const VT va = splat_##LSFX(-lr), vlr = splat_##LSFX(lr), zero = {0};  \
    VT bias[64], hv[65] = {{0}}, dv[65] = {{0}};                                \
    double total, loss_acc = *loss_sum, hit_acc = *hit_sum;                     \
    int status = 0;                                                             \
    int64_t step;                                                               \
    for (int k = 0; k < L; k++) {   /* the biases, zero-padded */               \
        bias[k] = zero;                                                         \
        if (net->b_off[k] >= 0)                                                 \
            for (int64_t j = 0; j < net->sizes[k + 1]; j++)                     \
                bias[k][j] = theta[net->b_off[k] + j];                          \
    }                                                                           \
    for (step = first; step < end; step++) {                                    \
        const int64_t r = order ? order[step] : step;                           \
        const T *x = X + r * n_in, *y = Y + r * n_out;                          \
        /* Forward (fbp_packed fwd, M = 1, one vector per row). */              \
        _Pragma("GCC unroll 4")                                                 \
        for (int k = 0; k < L; k++) {                                           \
            const int64_t ni = WIDTH(net->sizes[k], VL);                        \
            const int64_t no = WIDTH(net->sizes[k + 1], VL);                    \
            const int64_t ldo = P->ld[k + 1];                                   \
            const T *wt = buf + P->wt[k];                                       \
            VT a = zero;                                                        \
            if (k == 0)                                                         \
                for (int64_t i = 0; i < ni; i++)                                \
                    a = VFMA(splat_##LSFX(x[i]), ft_ld_##LSFX(wt + i * ldo), a); \
            else                                                                \
                for (int64_t i = 0; i < ni; i++)                                \
                    a = VFMA(BCAST(LSFX, hv[k], i), ft_ld_##LSFX(wt + i * ldo), a); \
            if (net->b_off[k] >= 0) a = a + bias[k];                            \
            if (k < L - 1) {                                                    \
                if (hidden == FBP_ACT_RELU) a = (VT)((VI)a & (a > 0));          \
                else if (hidden == FBP_ACT_SIGMOID) a = vsigmoid_##ESFX(a);   \
                else if (hidden == FBP_ACT_TANH) a = vtanh_##ESFX(a);         \
            }                                                                   \
            if (no < VL) a = ft_keep_##LSFX(a, no);                             \
            hv[k + 1] = a;                                                      \
        }                                                                       \
        /* Output and loss (output_row + loss_row, scale 1), rounded. */        \
        double lossv, hit = 0.0;                                                \
        if (net->inline_loss) {                                                 \
            double loss = 0.0;                                                  \
            dv[L] = ft_sqloss_##LSFX(hv[L], PLOAD(LSFX, y, n_out), n_out, &loss); \
            lossv = (double)(T)loss;                                            \
        } else {                                                                \
            T *z = buf + P->act[L], *dL = buf + P->delta[L];                    \
            ft_st_##LSFX(z, hv[L]);                                             \
            lossv = net->loss_fn(net->ctx, z, y, dL, &hit);                     \
            dv[L] = ft_ld_##LSFX(dL);                                           \
        }                                                                       \
        total = 0.0;                                                            \
        total += lossv;                                                         \
        if (!isfinite(total)) { status = 1; break; }                            \
        /* delta_k, k = L-1 .. 1 (fbp_packed bwd). */                           \
        _Pragma("GCC unroll 4")                                                 \
        for (int k = L - 1; k > 0; k--) {                                       \
            const int64_t no = WIDTH(net->sizes[k + 1], VL), ldi = P->ld[k];    \
            const T *wn = buf + P->wn[k];                                       \
            VT a = zero;                                                        \
            for (int64_t j = 0; j < no; j++)                                    \
                a = VFMA(BCAST(LSFX, dv[k + 1], j), ft_ld_##LSFX(wn + j * ldi), a); \
            const VT xa = hv[k];                                                \
            if (hidden == FBP_ACT_SIGMOID) a = a * (xa * ((T)1 - xa));          \
            else if (hidden == FBP_ACT_RELU)                                    \
                a = a * (VT)((VI)splat_##LSFX((T)1) & (xa > 0));             \
            else if (hidden == FBP_ACT_TANH) a = a * (((T)1 - xa) * ((T)1 + xa)); \
            dv[k] = a;                                                          \
        }                                                                       \
        /* W_k = fma(-lr, delta_{k+1}^T A_k, W_k) on both copies (WN_0 on     \
         * return), then the biases. */                                         \
        _Pragma("GCC unroll 4")                                                 \
        for (int k = 0; k < L; k++) {                                           \
            const int64_t ni = WIDTH(net->sizes[k], VL);                        \
            const int64_t no = WIDTH(net->sizes[k + 1], VL);                    \
            const int64_t ldi = P->ld[k], ldo = P->ld[k + 1];                   \
            T *wn = buf + P->wn[k], *wt = buf + P->wt[k];                       \
            if (k > 0)                                                          \
                for (int64_t j = 0; j < no; j++)                                \
                    ft_st_##LSFX(wn + j * ldi,                                  \
                                 VFMA(va, VFMA(BCAST(LSFX, dv[k + 1], j), hv[k], zero), \
                                      ft_ld_##LSFX(wn + j * ldi)));             \
            for (int64_t i = 0; i < ni; i++) {                                  \
                const VT hi = k == 0 ? splat_##LSFX(x[i]) : BCAST(LSFX, hv[k], i); \
                ft_st_##LSFX(wt + i * ldo,                                      \
                             VFMA(va, VFMA(hi, dv[k + 1], zero),                \
                                  ft_ld_##LSFX(wt + i * ldo)));                 \
            }                                                                   \
        }                                                                       \
        _Pragma("GCC unroll 4")                                                 \
        for (int k = 0; k < L; k++)                                             \
            if (net->b_off[k] >= 0) bias[k] = bias[k] - vlr * (zero + dv[k + 1]); \
        loss_acc += total;                                                      \
        if (net->hits) {                                                        \
            total = 0.0;                                                        \
            total += hit;                                                       \
            hit_acc += total;                                                   \
        }                                                                       \
    }                                                                           \
    /* Back to tiny_loop1's state: the biases in theta, WN_0 from WT_0 (the    \
     * activations and deltas in buf are scratch: tiny_loop1 writes them       \
     * before it reads them). */                                                \
    for (int k = 0; k < L; k++)                                                 \
        if (net->b_off[k] >= 0)                                                 \
            for (int64_t j = 0; j < net->sizes[k + 1]; j++)                     \
                theta[net->b_off[k] + j] = bias[k][j];                          \
    {                                                                           \
        const int64_t ni = net->sizes[0], no = net->sizes[1];                   \
        T *wn = buf + P->wn[0];                                                 \
        const T *wt = buf + P->wt[0];                                           \
        for (int64_t j = 0; j < no; j++)                                        \
            for (int64_t i = 0; i < ni; i++)                                    \
                wn[j * P->ld[0] + i] = wt[i * P->ld[1] + j];                    \
    }                                                                           \
    *loss_sum = loss_acc;                                                       \
    *hit_sum = hit_acc;                                                         \
    *n_done = step - first;                                                     \
    return status;                                                              \
}                                                                               \
/* One and two hidden layers with L constant: the layer loops unrolled, the    \
 * activations, deltas and biases in registers. */                              \
static TGT int NAME(const ft_net *net, T *buf, T *theta, const T *X, const T *Y, \
                    const int64_t *order, int64_t first, int64_t end, T lr,     \
                    double *loss_sum, double *hit_sum, int64_t *n_done)         \
{                                                                               \
    switch (net->P->n_layers) {                                                 \
    case 2: return NAME##_L(net, buf, theta, X, Y, order, first, end, lr, loss_sum, \
                            hit_sum, n_done, 2);                                \
    case 3: return NAME##_L(net, buf, theta, X, Y, order, first, end, lr, loss_sum, \
                            hit_sum, n_done, 3);                                \
    default: return NAME##_L(net, buf, theta, X, Y, order, first, end, lr, loss_sum, \
                             hit_sum, n_done, net->P->n_layers);                \
    }                                                                           \
}

FT_SGD1(ft_sgd1_plain_f32, float, f32, f32, vf32, vi32, 8, MADD_PLAIN, FT_BCAST_PLAIN,
        FT_PLOAD_PLAIN, FT_WIDTH, )
FT_SGD1(ft_sgd1_plain_f64, double, f64, f64, vf64, vi64, 4, MADD_PLAIN, FT_BCAST_PLAIN,
        FT_PLOAD_PLAIN, FT_WIDTH, )
#ifdef FBP_X86
FT_SGD1(ft_sgd1_fma_f32, float, f32f, f32f, vf32, vi32, 8, vfma_f32, FT_BCAST_FMA,
        FT_PLOAD_FMA, FT_LANE_MAX, TARGET_FMA)
FT_SGD1(ft_sgd1_fma_f64, double, f64f, f64f, vf64, vi64, 4, vfma_f64, FT_BCAST_FMA,
        FT_PLOAD_FMA, FT_LANE_MAX, TARGET_FMA)
#endif

/* Steps first .. end-1 of the visiting order (NULL: 0..n-1) on the packed
 * buffer buf (P->one) and the biases of theta, on the current code path.
 * Adds the steps' losses to *loss_sum (and accuracies to *hit_sum) in step
 * order; *n_done = the steps applied.  Returns 0, or 1 at a step whose loss
 * is not finite (that step not applied). */
static int ft_sgd1_f32(const ft_net *net, float *buf, float *theta, const float *X,
                       const float *Y, const int64_t *order, int64_t first, int64_t end,
                       float lr, double *loss_sum, double *hit_sum, int64_t *n_done)
{
#ifdef FBP_X86
    if (strcmp(fbp_gemm_isa(), "generic") != 0)
        return ft_sgd1_fma_f32(net, buf, theta, X, Y, order, first, end, lr, loss_sum,
                               hit_sum, n_done);
#endif
    return ft_sgd1_plain_f32(net, buf, theta, X, Y, order, first, end, lr, loss_sum,
                             hit_sum, n_done);
}

static int ft_sgd1_f64(const ft_net *net, double *buf, double *theta, const double *X,
                       const double *Y, const int64_t *order, int64_t first, int64_t end,
                       double lr, double *loss_sum, double *hit_sum, int64_t *n_done)
{
#ifdef FBP_X86
    if (strcmp(fbp_gemm_isa(), "generic") != 0)
        return ft_sgd1_fma_f64(net, buf, theta, X, Y, order, first, end, lr, loss_sum,
                               hit_sum, n_done);
#endif
    return ft_sgd1_plain_f64(net, buf, theta, X, Y, order, first, end, lr, loss_sum,
                             hit_sum, n_done);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif /* FBP_TINY_H */
