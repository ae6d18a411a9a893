/* fbp_gemm_internal.h: what the GEMM's C files share (internal, not installed).
 *
 * Design
 * ------
 * The GEMM is split by concern over several C files (fbp_gemm.c says which);
 * this header is what every one of them needs and what must be one
 * definition for all of them, so that the per-element invariance of
 * fbp_gemm.h holds across files:
 *   - contraction off (the pragma below, before any other include: every
 *     function of every file that includes this header first is compiled
 *     with it), the constants that fix the arithmetic (FBP_KC, SMALL_MNK)
 *     and the blocking;
 *   - the lane-wise vector exp / sigmoid / tanh and the epilogue (epi_row_*),
 *     static inline, one source for the small, blocked and narrow paths;
 *   - the job of a blocked call (struct job_*) and the activation
 *     derivative;
 *   - the functions one file defines and another calls: non-static, prefixed
 *     fbp_gemm_, with hidden visibility (never exported from the extension).
 * Include it first, before any system header.  Nothing here has state; the
 * threads' packing buffers are fbp_gemm.c's.
 */
#ifndef FBP_GEMM_INTERNAL_H
#define FBP_GEMM_INTERNAL_H

/* Every mul and add below is rounded on its own: an FMA only where the code
 * asks for one (V_FMA / S_FMA of the FMA ISAs).  Compiler contraction of
 * a*b+c (GCC's default in gnu modes wherever the target has FMA: the
 * AVX2/AVX-512 functions, any -march=native build) would let two compilations
 * of the same expression round differently, breaking the per-element
 * invariance described in fbp_gemm.c. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FBP_X86 1
#include <immintrin.h>
#endif
#include "fbp_gemm.h"

/* The 32-byte vector helpers below are static inline: no ABI is exposed. */
#pragma GCC diagnostic ignored "-Wpsabi"

#define SMALL_MNK ((int64_t)4096)
/* K-slab depth of every path and ISA: slab boundaries depend on K only. */
#define FBP_KC 256
/* MC (per dtype) and NC of the blocked drivers, the same for every ISA. */
#define MC_F32 144
#define MC_F64 72
#define NC_ALL 4096
#define INLINE static inline __attribute__((always_inline))

#define FBP_HIDDEN __attribute__((visibility("hidden")))

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, N_ISA = 3 };

/* ------------------------------------------------------------------------ */
/* Vector sigmoid / tanh for the epilogue (every path)                      */
/* ------------------------------------------------------------------------ */

/* GCC vectors of VL lanes: 32 bytes (ymm inside the AVX2/AVX-512 functions,
 * the helpers are always_inline, SSE pairs in the generic ones) and 1 lane
 * (scalar code from the same source, for the ends of rows).
 *   exp(x)   = 2^n * (1 + expm1(r)),  n = round(x / ln2), r = x - n ln2,
 *              expm1(r) by its Taylor series (|r| <= ln2/2, degree 7 / 13,
 *              truncation < 0.3 ulp), |x| clamped; overflow -> inf,
 *              x below the normal range -> 0; NaN propagates.
 *   sigmoid  = 1 / (1 + exp(-z))
 *   tanh(z)  = sign(z) * -e / (2 + e),  e = expm1(-2|z|): the Taylor series
 *              directly while |2z| <= ln2/2 (no cancellation), else
 *              p 2^n + (2^n - 1) with p = expm1(r) (no cancellation either).
 * Only IEEE +, -, *, /, MADD(a, b, c) = a*b + c (plain mul then add in the
 * generic instance, a fused multiply-add in the "f" instance used by the FMA
 * ISAs; contraction is off, so nothing else is fused), compares, bit
 * operations and exact conversions, all lane-wise: a lane's result depends on
 * its input only, not on the vector width, so every element of C gets the
 * same bits wherever it falls on one ISA.  Max error against long double
 * libm (tests/c/gemm_check.c sweep): sigmoid 2.34 (f32) / 2.36 (f64) ulp,
 * tanh 3.16 / 3.60 ulp. */
/* Lane primitives: VT/VI a float/int vector of VL lanes, or for the
 * single-lane instances ("s" suffix) plain T/IT scalars.  splat: all lanes c;
 * bits/frombits: reinterpret; sel: m ? a : b lane-wise (m from a compare);
 * cvt: exact integral float -> int. */
#define DEFINE_VLANES(T, SFX, VT, VI, IT, VL)                                   \
typedef T VT __attribute__((vector_size(VL * sizeof(T))));                      \
typedef IT VI __attribute__((vector_size(VL * sizeof(T))));                     \
INLINE VT splat_##SFX(T c) { return (VT){} + c; }                               \
INLINE VI bits_##SFX(VT x) { return (VI)x; }                                    \
INLINE VT frombits_##SFX(VI i) { return (VT)i; }                                \
INLINE VT sel_##SFX(VI m, VT a, VT b)                                           \
{                                                                               \
    return (VT)(((VI)a & m) | ((VI)b & ~m));                                    \
}                                                                               \
INLINE VI cvt_##SFX(VT n) { return __builtin_convertvector(n, VI); }
#define DEFINE_SLANES(T, SFX, IT)                                               \
INLINE T splat_##SFX(T c) { return c; }                                         \
INLINE IT bits_##SFX(T x) { IT i; memcpy(&i, &x, sizeof i); return i; }         \
INLINE T frombits_##SFX(IT i) { T x; memcpy(&x, &i, sizeof x); return x; }      \
INLINE T sel_##SFX(IT m, T a, T b) { return m ? a : b; }                        \
INLINE IT cvt_##SFX(T n) { return (IT)n; }

#define DEFINE_VMATH(T, SFX, LSFX, VT, VI, IT, NTAYLOR, MANT, BIAS, XMAX, XMIN, \
                     MADD, TGT)                                                 \
/* expm1(r) = r * sum_{k < NTAYLOR} r^k / (k+1)!, the sum by Estrin's scheme    \
 * (pairs with r, then with r^2, r^4, r^8: a dependency chain of 4 mul+add      \
 * levels instead of NTAYLOR - 1 for Horner's; the latency matters for the      \
 * few-element rows of tiny nets). */                                           \
TGT INLINE VT vexpm1_taylor_##SFX(VT r)                                         \
{                                                                               \
    VT q[16];                                                                   \
    T f = 1;                                                                    \
    _Pragma("GCC unroll 16")                                                    \
    for (int k = 0; k < NTAYLOR; k++) {                                         \
        f *= k + 1;                                                             \
        q[k] = splat_##LSFX((T)1 / f);                                          \
    }                                                                           \
    VT pw = r;                                                                  \
    _Pragma("GCC unroll 4")                                                     \
    for (int lev = 0, n = NTAYLOR; lev < 4; lev++, n = (n + 1) / 2) {           \
        _Pragma("GCC unroll 8")                                                 \
        for (int i = 0; i < 8; i++) {                                           \
            if (2 * i + 1 < n) q[i] = MADD(q[2 * i + 1], pw, q[2 * i]);         \
            else if (2 * i < n) q[i] = q[2 * i];                                \
        }                                                                       \
        pw = pw * pw;                                                           \
    }                                                                           \
    return q[0] * r;                                                            \
}                                                                               \
TGT INLINE VT vexp_##SFX(VT x)                                                  \
{                                                                               \
    const VT hi = splat_##LSFX((T)XMAX), lo = splat_##LSFX((T)XMIN);            \
    const VI big = x > hi, tiny = x < lo;                                       \
    VT xc = sel_##LSFX(big, hi, sel_##LSFX(tiny, lo, x));                       \
    const T magic = (T)1.5 * ((IT)1 << MANT);                                   \
    VT n = MADD(xc, splat_##LSFX((T)1.44269504088896340736),                    \
                splat_##LSFX(magic)) - magic;                                   \
    VT r = MADD(n, splat_##LSFX((T)-0.693145751953125), xc);                    \
    r = MADD(n, splat_##LSFX((T)-1.42860682030941723212e-6), r);                \
    const VT s = frombits_##LSFX((cvt_##LSFX(n) + (BIAS - 1)) << MANT);         \
    VT y = MADD(vexpm1_taylor_##SFX(r), s, s) * (T)2; /* (1 + expm1) s 2 */     \
    y = sel_##LSFX(big, splat_##LSFX((T)INFINITY), y);                          \
    return sel_##LSFX(tiny, splat_##LSFX(0), y);                                \
}                                                                               \
/* expm1(y) for y <= 0 (tanh's), without the cancellation of exp(y) - 1:        \
 * 2^n (1 + p) - 1 = p 2^n + (2^n - 1), 2^n - 1 exact while it matters; y       \
 * below the normal range gives -1; NaN propagates. */                          \
TGT INLINE VT vexpm1_neg_##SFX(VT y)                                            \
{                                                                               \
    const VT lo = splat_##LSFX((T)XMIN);                                        \
    const VT xc = sel_##LSFX(y < lo, lo, y);                                    \
    const T magic = (T)1.5 * ((IT)1 << MANT);                                   \
    VT n = MADD(xc, splat_##LSFX((T)1.44269504088896340736),                    \
                splat_##LSFX(magic)) - magic;                                   \
    VT r = MADD(n, splat_##LSFX((T)-0.693145751953125), xc);                    \
    r = MADD(n, splat_##LSFX((T)-1.42860682030941723212e-6), r);                \
    const VT s = frombits_##LSFX((cvt_##LSFX(n) + BIAS) << MANT);               \
    return MADD(vexpm1_taylor_##SFX(r), s, s - (T)1);                           \
}                                                                               \
TGT INLINE VT vsigmoid_##SFX(VT z)                                              \
{                                                                               \
    return (T)1 / ((T)1 + vexp_##SFX(-z));                                      \
}                                                                               \
TGT INLINE VT vtanh_##SFX(VT z)                                                 \
{                                                                               \
    const VI sign = bits_##LSFX(z) & bits_##LSFX(-splat_##LSFX(0)); /* -(+0) */ \
    const VT y = (T)-2 * frombits_##LSFX(bits_##LSFX(z) & ~sign);               \
    const VI near0 = y >= (T)-0.34657359027997264;                              \
    const VT e = sel_##LSFX(near0, vexpm1_taylor_##SFX(y),                      \
                            vexpm1_neg_##SFX(y));                               \
    return frombits_##LSFX(bits_##LSFX(-e / ((T)2 + e)) | sign);                \
}

/* 32-byte vectors and single lanes: the same code, lane by lane the same
 * operations, so the same bits. */
DEFINE_VLANES(float, f32, vf32, vi32, int32_t, 8)
DEFINE_SLANES(float, f32s, int32_t)
DEFINE_VLANES(double, f64, vf64, vi64, int64_t, 4)
DEFINE_SLANES(double, f64s, int64_t)
/* Each twice: with plain mul + add (the generic ISA) and, suffix "f", with
 * explicit fused multiply-adds (the FMA ISAs, AVX2 and AVX-512 alike: the
 * same 32-byte / 1-lane code, lane by lane the same operations, so the same
 * bits on both). */
#define MADD_PLAIN(a, b, c) ((a) * (b) + (c))
DEFINE_VMATH(float, f32, f32, vf32, vi32, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             MADD_PLAIN, )
DEFINE_VMATH(float, f32s, f32s, float, int32_t, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             MADD_PLAIN, )
DEFINE_VMATH(double, f64, f64, vf64, vi64, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             MADD_PLAIN, )
DEFINE_VMATH(double, f64s, f64s, double, int64_t, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             MADD_PLAIN, )
#ifdef FBP_X86
#define TARGET_FMA __attribute__((target("avx2,fma")))
TARGET_FMA INLINE vf32 vfma_f32(vf32 a, vf32 b, vf32 c)
{
    return (vf32)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
TARGET_FMA INLINE vf64 vfma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
DEFINE_VMATH(float, f32f, f32, vf32, vi32, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             vfma_f32, TARGET_FMA)
DEFINE_VMATH(float, f32fs, f32s, float, int32_t, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             __builtin_fmaf, TARGET_FMA)
DEFINE_VMATH(double, f64f, f64, vf64, vi64, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             vfma_f64, TARGET_FMA)
DEFINE_VMATH(double, f64fs, f64s, double, int64_t, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             __builtin_fma, TARGET_FMA)
#endif

/* c[0:j] = act(c[0:j] + b[0:j]) (b may be NULL), act sigmoid or tanh, for
 * the whole vectors j = n - n % VL of the row; returns j. */
#define DEFINE_VACT(T, SFX, VT, VL, TGT)                                        \
TGT INLINE int64_t vact_row_##SFX(T *c, const T *b, int64_t n, int act)         \
{                                                                               \
    int64_t j = 0;                                                              \
    for (; j + VL <= n; j += VL) {                                              \
        VT x, bv;                                                               \
        memcpy(&x, c + j, sizeof x);                                            \
        if (b) { memcpy(&bv, b + j, sizeof bv); x = x + bv; }                   \
        x = act == FBP_ACT_SIGMOID ? vsigmoid_##SFX(x) : vtanh_##SFX(x);        \
        memcpy(c + j, &x, sizeof x);                                            \
    }                                                                           \
    return j;                                                                   \
}
DEFINE_VACT(float, f32, vf32, 8, )
DEFINE_VACT(double, f64, vf64, 4, )
#ifdef FBP_X86
DEFINE_VACT(float, f32f, vf32, 8, TARGET_FMA)
DEFINE_VACT(double, f64f, vf64, 4, TARGET_FMA)
#endif

#define DEFINE_COMMON(T, SFX)                                                   \
struct job_##SFX {                                                              \
    int ta, tb, act;                                                            \
    int64_t M, N, K;                                                            \
    T alpha, beta;                                                              \
    const T *A, *B, *bias, *dsrc;                                               \
    T *C;                                                                       \
    int64_t lda, ldb, ldc, ldd;                                                 \
};                                                                              \
                                                                                \
/* Written without a*b+c so FMA contraction cannot change it. */                \
INLINE T dact_##SFX(T a, int act)                                               \
{                                                                               \
    switch (act) {                                                              \
    case FBP_ACT_SIGMOID: return a * ((T)1 - a);                                \
    case FBP_ACT_RELU: return a > 0 ? (T)1 : (T)0;                              \
    case FBP_ACT_TANH: return ((T)1 - a) * ((T)1 + a);                          \
    default: return (T)1;                                                       \
    }                                                                           \
}                                                                               \
                                                                                \
INLINE int has_epilogue_##SFX(const struct job_##SFX *jb)                       \
{                                                                               \
    return jb->bias || jb->act != FBP_ACT_IDENTITY;                             \
}

DEFINE_COMMON(float, f32)
DEFINE_COMMON(double, f64)

/* The epilogue, once per dtype and exp flavour (ESFX: plain, or "f" with
 * explicit FMAs for the FMA ISAs), used by the small and blocked paths of an
 * ISA alike. */
#define DEFINE_EPI(T, SFX, ESFX, TGT)                                           \
/* The epilogue of one element x = C[i][j], already alpha/beta-summed (b: the   \
 * bias row or NULL, d: the dsrc row or NULL): the one definition used by       \
 * every path (the small path per element, the blocked path per row through     \
 * epi_row, each ISA).  Sigmoid/tanh are the 1-lane instances of the vector     \
 * code that epi_row runs on whole vectors: lane by lane the same operations    \
 * (contraction is off, FMAs only where written), so the same bits on every     \
 * path of an ISA. */                                                           \
TGT INLINE T epi_elem_##ESFX(T x, const T *b, const T *d, int64_t j, int act)   \
{                                                                               \
    if (b) x = x + b[j];                                                        \
    if (d) return x * dact_##SFX(d[j], act);                                    \
    switch (act) {                                                              \
    case FBP_ACT_RELU: return x > 0 ? x : (T)0;                                 \
    case FBP_ACT_SIGMOID: return vsigmoid_##ESFX##s(x);                         \
    case FBP_ACT_TANH: return vtanh_##ESFX##s(x);                               \
    default: return x;                                                          \
    }                                                                           \
}                                                                               \
                                                                                \
/* epi_elem on the row c[0:n] (b, d: bias / dsrc + j0 or NULL); the loops are   \
 * specialised so that they vectorise, sigmoid/tanh take whole vectors. */      \
TGT INLINE void epi_row_##ESFX(T *c, const T *b, const T *d, int64_t n, int act) \
{                                                                               \
    int64_t j = 0;                                                              \
    if (d && !b) { /* the backward pass: one loop per act, so that it vectorises */ \
        switch (act) {                                                          \
        case FBP_ACT_RELU:                                                      \
            for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], NULL, d, j, FBP_ACT_RELU); \
            break;                                                              \
        case FBP_ACT_SIGMOID:                                                   \
            for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], NULL, d, j, FBP_ACT_SIGMOID); \
            break;                                                              \
        case FBP_ACT_TANH:                                                      \
            for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], NULL, d, j, FBP_ACT_TANH); \
            break;                                                              \
        default:                                                                \
            for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], NULL, d, j, act);   \
        }                                                                       \
    } else if (d) {                                                             \
        for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], b, d, j, act);          \
    } else if (act == FBP_ACT_IDENTITY) {                                       \
        if (b)                                                                  \
            for (; j < n; j++)                                                  \
                c[j] = epi_elem_##ESFX(c[j], b, NULL, j, FBP_ACT_IDENTITY);     \
    } else if (act == FBP_ACT_RELU) {                                           \
        if (b)                                                                  \
            for (; j < n; j++)                                                  \
                c[j] = epi_elem_##ESFX(c[j], b, NULL, j, FBP_ACT_RELU);         \
        else                                                                    \
            for (; j < n; j++)                                                  \
                c[j] = epi_elem_##ESFX(c[j], NULL, NULL, j, FBP_ACT_RELU);      \
    } else {                                                                    \
        j = vact_row_##ESFX(c, b, n, act);                                      \
        for (; j < n; j++) c[j] = epi_elem_##ESFX(c[j], b, NULL, j, act);       \
    }                                                                           \
}                                                                               \
                                                                                \
/* Epilogue on the m x n block of C at (i0, j0). */                             \
TGT INLINE void epilogue_##ESFX(const struct job_##SFX *jb, int64_t i0, int64_t j0, \
                           int64_t m, int64_t n)                                \
{                                                                               \
    for (int64_t i = 0; i < m; i++)                                             \
        epi_row_##ESFX(jb->C + (int64_t)(i0 + i) * jb->ldc + j0,                \
                      jb->bias ? jb->bias + j0 : NULL,                          \
                      jb->dsrc ? jb->dsrc + (int64_t)(i0 + i) * jb->ldd + j0    \
                               : NULL,                                          \
                      n, jb->act);                                              \
}                                                                               \

DEFINE_EPI(float, f32, f32, )
DEFINE_EPI(double, f64, f64, )
#ifdef FBP_X86
DEFINE_EPI(float, f32, f32f, TARGET_FMA)
DEFINE_EPI(double, f64, f64f, TARGET_FMA)
#endif

/* ------------------------------------------------------------------------ */
/* Functions shared between the files (hidden)                               */
/* ------------------------------------------------------------------------ */

/* The signature of fbp_gemm_f32 / fbp_gemm_f64: every small path and the
 * rest_* functions take the arguments of the public entry point as they are. */
#define FBP_GEMM_FN_TYPE(T, SFX)                                                \
typedef void fbp_gemm_fn_##SFX(int trans_a, int trans_b, int64_t M, int64_t N,  \
                               int64_t K, T alpha, const T *A, int64_t lda,     \
                               const T *B, int64_t ldb, T beta, T *C,           \
                               int64_t ldc, const T *bias, int act,             \
                               const T *dsrc, int64_t ldd, int n_threads);      \
/* A serial blocked GEMM on the rows [i0, i1) x columns [j0, j1) of a job. */   \
typedef void fbp_blk_fn_##SFX(const struct job_##SFX *jb, int64_t i0,           \
                              int64_t i1, int64_t j0, int64_t j1);
FBP_GEMM_FN_TYPE(float, f32)
FBP_GEMM_FN_TYPE(double, f64)

/* fbp_gemm.c: everything that is not the small path (the blocked path, the
 * degenerate shapes); the small path of each ISA passes other shapes on to
 * it. */
FBP_HIDDEN fbp_gemm_fn_f32 fbp_gemm_rest_f32;
FBP_HIDDEN fbp_gemm_fn_f64 fbp_gemm_rest_f64;
/* fbp_gemm.c: 64-byte aligned scratch of at least `bytes`, owned by the
 * calling thread (NULL when it cannot be allocated). */
FBP_HIDDEN void *fbp_gemm_thread_buf(size_t bytes);
/* fbp_gemm.c: the ISA_* code path in use (settled on first use). */
FBP_HIDDEN int fbp_gemm_current_isa(void);

/* fbp_gemm_generic.c, fbp_gemm_avx2.c, fbp_gemm_avx512.c: per ISA, the small
 * path (the entry point of that ISA: fbp_gemm_* jumps to it) and the serial
 * blocked driver (fbp_gemm.c runs it on each thread's sub-block). */
FBP_HIDDEN fbp_gemm_fn_f32 fbp_gemm_small_generic_f32;
FBP_HIDDEN fbp_gemm_fn_f64 fbp_gemm_small_generic_f64;
FBP_HIDDEN fbp_blk_fn_f32 fbp_gemm_blk_generic_f32;
FBP_HIDDEN fbp_blk_fn_f64 fbp_gemm_blk_generic_f64;
#ifdef FBP_X86
FBP_HIDDEN fbp_gemm_fn_f32 fbp_gemm_small_avx2_f32, fbp_gemm_small_avx512_f32;
FBP_HIDDEN fbp_gemm_fn_f64 fbp_gemm_small_avx2_f64, fbp_gemm_small_avx512_f64;
FBP_HIDDEN fbp_blk_fn_f32 fbp_gemm_blk_avx2_f32, fbp_gemm_blk_avx512_f32;
FBP_HIDDEN fbp_blk_fn_f64 fbp_gemm_blk_avx2_f64, fbp_gemm_blk_avx512_f64;
#endif

#endif /* FBP_GEMM_INTERNAL_H */
