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
 *   - the lane-wise vector exp / sigmoid / tanh (fbp_vmath.h, included
 *     here) and the epilogue (epi_row_*), static inline, one source for the
 *     small, blocked and narrow paths;
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
/* MC (per dtype) and NC of the blocked drivers: MC_* for generic and AVX2,
 * NC for every ISA (the pre-packed layout's panel width). */
#define MC_F32 144
#define MC_F64 72
#define NC_ALL 4096
/* The blocked drivers read op(A) where it is, unpacked, when it is not
 * transposed and a call's rows of it take at most this many bytes
 * (fbp_gemm_kernels.h, NAME##_ua): small nets' batches.  Measured faster
 * with 8 and 16 KiB of A (64-128-10 b32's X and H_1); not measured above. */
#define FBP_UA_BYTES ((int64_t)16384)
/* The AVX-512 driver (bench/NOTES.md, "AVX-512 on an Intel Xeon (session
 * 20)"): 8-row tiles (8 x 32 f32, 8 x 16 f64, 16 accumulators; 8 divides the
 * 64- and 128-row tiles of a 2-thread step, where 12 rows padded a third of
 * a tile), A blocks of MC512_* rows, and each slab's B slivers taken in
 * chunks of JB512_* columns (kc x 512 f32 = 512 KiB, in L2) with the A
 * sliver (8 KiB) outer, in L1 (fbp_gemm_kernels.h, NAME##_slab).  None of
 * it changes the arithmetic: every tile is the same kernel call on the same
 * values in any order or grouping, with the same K-slabs. */
#define MR512 8
#define MC512_F32 288
#define MC512_F64 144
#define JB512_F32 512
#define JB512_F64 256
#define INLINE static inline __attribute__((always_inline))

#define FBP_HIDDEN __attribute__((visibility("hidden")))

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, N_ISA = 3 };

/* ------------------------------------------------------------------------ */
/* Vector sigmoid / tanh for the epilogue (every path)                      */
/* ------------------------------------------------------------------------ */

/* The lane-wise exp / sigmoid / tanh (vsigmoid_*, vtanh_*: 32-byte and
 * single-lane instances, plain and "f" with explicit FMAs), the lane helpers
 * and vfma_*: fbp_vmath.h, shared with the fused batch-1 loop of
 * fbp_tiny.h. */
#include "fbp_vmath.h"

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
                              int64_t i1, int64_t j0, int64_t j1);               \
/* The serial blocked driver of a whole job (K >= 1) on op(B) pre-packed at     \
 * Bp, and that packing (columns [j0, j1)): fbp_gemm.h, fbp_gemm_kernels.h. */  \
typedef void fbp_pre_fn_##SFX(const struct job_##SFX *jb, const T *Bp);         \
typedef void fbp_packb_fn_##SFX(int trans_b, int64_t N, int64_t K, const T *B,  \
                                int64_t ldb, T *Bp, int64_t j0, int64_t j1);    \
/* The same packing by rows [k0, k1) of op(B) (fbp_gemm_pack_b_rows_*). */      \
typedef void fbp_packbr_fn_##SFX(int trans_b, int64_t N, int64_t K, const T *B, \
                                 int64_t ldb, T *Bp, int64_t k0, int64_t k1);
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
/* fbp_gemm.c: FBP_UA_BYTES, or 0 when unpacked A is off
 * (fbp_gemm_set_unpacked_a, FBP_GEMM_UNPACKED_A). */
FBP_HIDDEN int64_t fbp_gemm_ua_bytes(void);
/* fbp_gemm.c: counts a blocked call that reads op(A) unpacked
 * (fbp_gemm_unpacked_a_calls). */
FBP_HIDDEN void fbp_gemm_note_ua(void);
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
/* The same files: per ISA, the pre-packed driver and its packing (the
 * blocked driver's NAME##_pre, NAME##_packb and NAME##_packb_rows). */
FBP_HIDDEN fbp_pre_fn_f32 fbp_gemm_blk_generic_f32_pre;
FBP_HIDDEN fbp_pre_fn_f64 fbp_gemm_blk_generic_f64_pre;
FBP_HIDDEN fbp_packb_fn_f32 fbp_gemm_blk_generic_f32_packb;
FBP_HIDDEN fbp_packb_fn_f64 fbp_gemm_blk_generic_f64_packb;
FBP_HIDDEN fbp_packbr_fn_f32 fbp_gemm_blk_generic_f32_packb_rows;
FBP_HIDDEN fbp_packbr_fn_f64 fbp_gemm_blk_generic_f64_packb_rows;
#ifdef FBP_X86
FBP_HIDDEN fbp_pre_fn_f32 fbp_gemm_blk_avx2_f32_pre, fbp_gemm_blk_avx512_f32_pre;
FBP_HIDDEN fbp_pre_fn_f64 fbp_gemm_blk_avx2_f64_pre, fbp_gemm_blk_avx512_f64_pre;
FBP_HIDDEN fbp_packb_fn_f32 fbp_gemm_blk_avx2_f32_packb, fbp_gemm_blk_avx512_f32_packb;
FBP_HIDDEN fbp_packb_fn_f64 fbp_gemm_blk_avx2_f64_packb, fbp_gemm_blk_avx512_f64_packb;
FBP_HIDDEN fbp_packbr_fn_f32 fbp_gemm_blk_avx2_f32_packb_rows, fbp_gemm_blk_avx512_f32_packb_rows;
FBP_HIDDEN fbp_packbr_fn_f64 fbp_gemm_blk_avx2_f64_packb_rows, fbp_gemm_blk_avx512_f64_packb_rows;
#endif

#endif /* FBP_GEMM_INTERNAL_H */
