/* fbp_gemm_kernels.h: the GEMM's per-ISA code as macro templates (internal).
 *
 * Design
 * ------
 * The packing, the micro-kernels, the small path and the serial blocked
 * driver are written once, here, as macros over the vector primitives V_T,
 * V_LOAD, V_LOADU, V_STOREU, V_SET1, V_FMA, V_MUL and the scalar S_FMA, and
 * instantiated per ISA and dtype in their own files under their own target
 * attribute (fbp_gemm_generic.c, fbp_gemm_avx2.c, fbp_gemm_avx512.c), each
 * file defining the primitives just before the instantiation.  One source
 * for every ISA is what makes the ISAs compute each element by the same
 * sequence of operations (fbp_gemm.c, "Per-element invariance"); one file
 * per ISA keeps the target attributes apart and each file short.  Everything
 * here is static (the micro-kernels, the packing) except each ISA's small
 * path and blocked drivers, which are the hidden fbp_gemm_small_* /
 * fbp_gemm_blk_* (and the pre-packed fbp_gemm_blk_*_pre, with its packing
 * fbp_gemm_blk_*_packb by columns and fbp_gemm_blk_*_packb_rows by rows) that fbp_gemm.c dispatches to.  Include it after
 * fbp_gemm_internal.h.
 */
#ifndef FBP_GEMM_KERNELS_H
#define FBP_GEMM_KERNELS_H

#include "fbp_gemm_internal.h"

/* ------------------------------------------------------------------------ */
/* Packing                                                                   */
/* ------------------------------------------------------------------------ */

/* Transposed packing (pack_tr): lane l of a sliver is row l of the source,
 * contiguous along k; dst[k*W + l] = src[l*lds + k].  TR_LANES_* moves any
 * number of lanes in register blocks, blocks of k outer (a block of dst rows
 * is written across all the lanes its blocks cover before the next): 4 x 4
 * then 2 lanes x 4 k floats, 2 x 2 doubles in SSE2 registers, then element
 * by element (tr_rest_*); the _wide variants (the AVX2 and AVX-512 files,
 * which define FBP_PACK_WIDE; compiled for AVX, which both have) first take
 * 8 x 8 floats / 4 x 4 doubles in 256-bit registers, then the lanes left over
 * (fewer than 8 / 4) in a second pass over k.  Pure data movement: any
 * blocking writes the same bytes. */
#if defined(FBP_X86) && defined(__SSE2__)
INLINE void tr4x4_f32(const float *s, int64_t lds, float *d, int64_t W)
{
    __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
    __m128 r2 = _mm_loadu_ps(s + 2 * lds), r3 = _mm_loadu_ps(s + 3 * lds);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(d, r0);
    _mm_storeu_ps(d + W, r1);
    _mm_storeu_ps(d + 2 * W, r2);
    _mm_storeu_ps(d + 3 * W, r3);
}
INLINE void tr2x4_f32(const float *s, int64_t lds, float *d, int64_t W)
{
    const __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
    const __m128 lo = _mm_unpacklo_ps(r0, r1), hi = _mm_unpackhi_ps(r0, r1);
    _mm_storel_pi((__m64 *)d, lo);
    _mm_storeh_pi((__m64 *)(d + W), lo);
    _mm_storel_pi((__m64 *)(d + 2 * W), hi);
    _mm_storeh_pi((__m64 *)(d + 3 * W), hi);
}
INLINE void tr2x2_f64(const double *s, int64_t lds, double *d, int64_t W)
{
    const __m128d r0 = _mm_loadu_pd(s), r1 = _mm_loadu_pd(s + lds);
    _mm_storeu_pd(d, _mm_unpacklo_pd(r0, r1));
    _mm_storeu_pd(d + W, _mm_unpackhi_pd(r0, r1));
}
#endif

/* Lanes [l0, lanes) of depth kc: per block of k, SSE2 blocks across the
 * lanes, then element by element; then the last k one by one.  k blocks
 * outer, so that each block of dst rows is written across the lanes before
 * the next (a sliver is up to KC x NR, with its source more than L1 holds:
 * lane groups outer wrote each dst line in several passes, measured 5-6%
 * slower on a 2-thread step of 784-256-128-10). */
INLINE void tr_rest_f32(const float *src, int64_t lds, int64_t l0, int64_t lanes,
                        int64_t kc, int64_t W, float *dst)
{
    int64_t k = 0;
#if defined(FBP_X86) && defined(__SSE2__)
    for (; k + 4 <= kc; k += 4) {
        int64_t l = l0;
        for (; l + 4 <= lanes; l += 4) tr4x4_f32(src + l * lds + k, lds, dst + k * W + l, W);
        for (; l + 2 <= lanes; l += 2) tr2x4_f32(src + l * lds + k, lds, dst + k * W + l, W);
        for (; l < lanes; l++)
            for (int64_t q = 0; q < 4; q++) dst[(k + q) * W + l] = src[l * lds + k + q];
    }
#endif
    for (; k < kc; k++)
        for (int64_t l = l0; l < lanes; l++) dst[k * W + l] = src[l * lds + k];
}
INLINE void tr_rest_f64(const double *src, int64_t lds, int64_t l0, int64_t lanes,
                        int64_t kc, int64_t W, double *dst)
{
    int64_t k = 0;
#if defined(FBP_X86) && defined(__SSE2__)
    for (; k + 2 <= kc; k += 2) {
        int64_t l = l0;
        for (; l + 2 <= lanes; l += 2) tr2x2_f64(src + l * lds + k, lds, dst + k * W + l, W);
        for (; l < lanes; l++) {
            dst[k * W + l] = src[l * lds + k];
            dst[(k + 1) * W + l] = src[l * lds + k + 1];
        }
    }
#endif
    for (; k < kc; k++)
        for (int64_t l = l0; l < lanes; l++) dst[k * W + l] = src[l * lds + k];
}

#if defined(FBP_X86) && defined(FBP_PACK_WIDE)
#define PACK_TARGET __attribute__((target("avx")))
PACK_TARGET INLINE void tr8x8_f32(const float *s, int64_t lds, float *d, int64_t W)
{
    const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds);
    const __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    const __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    const __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    /* per 128-bit half: pairs of rows interleaved, then 4-row columns */
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    /* column k of the block: the low (k < 4) or high halves of u_k%4, u_k%4+4 */
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + W, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * W, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * W, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * W, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * W, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * W, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * W, _mm256_permute2f128_ps(u3, u7, 0x31));
}
PACK_TARGET INLINE void tr4x4_f64(const double *s, int64_t lds, double *d, int64_t W)
{
    const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + lds);
    const __m256d r2 = _mm256_loadu_pd(s + 2 * lds), r3 = _mm256_loadu_pd(s + 3 * lds);
    const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(d + W, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(d + 2 * W, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(d + 3 * W, _mm256_permute2f128_pd(t1, t3, 0x31));
}
/* All lanes: B x B blocks (BLOCK) over the lanes that fill them, per block of
 * k; their last k and the other lanes by tr_rest_##SFX. */
#define DEFINE_TR_WIDE(T, SFX, B, BLOCK)                                        \
PACK_TARGET INLINE void tr_lanes_wide_##SFX(const T *src, int64_t lds, int64_t lanes, \
                                            int64_t kc, int64_t W, T *dst)      \
{                                                                               \
    const int64_t lb = lanes / B * B;                                           \
    int64_t k = 0;                                                              \
    for (; k + B <= kc; k += B)                                                 \
        for (int64_t l = 0; l < lb; l += B)                                     \
            BLOCK(src + l * lds + k, lds, dst + k * W + l, W);                  \
    if (k < kc) tr_rest_##SFX(src + k, lds, 0, lb, kc - k, W, dst + k * W);     \
    tr_rest_##SFX(src, lds, lb, lanes, kc, W, dst);                             \
}
DEFINE_TR_WIDE(float, f32, 8, tr8x8_f32)
DEFINE_TR_WIDE(double, f64, 4, tr4x4_f64)
#define TR_LANES_f32 tr_lanes_wide_f32
#define TR_LANES_f64 tr_lanes_wide_f64
#else
#define PACK_TARGET
#define TR_LANES_f32(src, lds, lanes, kc, W, dst) tr_rest_f32(src, lds, 0, lanes, kc, W, dst)
#define TR_LANES_f64(src, lds, lanes, kc, W, dst) tr_rest_f64(src, lds, 0, lanes, kc, W, dst)
#endif

#define DEFINE_PACK(T, SFX)                                                     \
/* A sliver of W lanes, k-major: dst[k*W + l] = op(X)[lane l][k0 + k],          \
 * lanes >= `lanes` zero.  _cp: a lane's values are contiguous across lanes     \
 * (src[k*lds + l]); _tr: contiguous along k (src[l*lds + k]), TR_LANES_##SFX.  \
 * A partial sliver's rows are zeroed (W is the driver's MR or NR: each row's \
 * memset is a few inline stores), _cp row by row, _tr in a pass of its own     \
 * before the transposes; then its lanes are written. */                       \
PACK_TARGET INLINE void pack_cp_##SFX(const T *src, int64_t lds, int64_t lanes, \
                                      int64_t kc, int64_t W, T *dst)            \
{                                                                               \
    if (lanes == W) {                                                           \
        for (int64_t k = 0; k < kc; k++)                                        \
            memcpy(dst + (int64_t)k * W, src + k * lds, W * sizeof(T));         \
        return;                                                                 \
    }                                                                           \
    for (int64_t k = 0; k < kc; k++) {                                          \
        memset(dst + (int64_t)k * W, 0, W * sizeof(T));                         \
        for (int64_t l = 0; l < lanes; l++) dst[(int64_t)k * W + l] = src[k * lds + l]; \
    }                                                                           \
}                                                                               \
PACK_TARGET INLINE void pack_tr_##SFX(const T *src, int64_t lds, int64_t lanes, \
                                      int64_t kc, int64_t W, T *dst)            \
{                                                                               \
    if (lanes < W)                                                              \
        for (int64_t k = 0; k < kc; k++) memset(dst + (int64_t)k * W, 0, W * sizeof(T)); \
    TR_LANES_##SFX(src, lds, lanes, kc, W, dst);                                \
}                                                                               \
                                                                                \
/* op(A)[i0:i0+mc, k0:k0+kc] -> MR-row slivers, each kc x MR. */                \
PACK_TARGET INLINE void pack_a_##SFX(const struct job_##SFX *jb, int64_t i0,    \
                                     int64_t mc, int64_t k0, int64_t kc,        \
                                     int64_t MR, T *dst)                        \
{                                                                               \
    const int64_t lda = jb->lda;                                                \
    for (int64_t s = 0; s < mc; s += MR, dst += (int64_t)MR * kc) {             \
        const int64_t m = mc - s < MR ? mc - s : MR;                            \
        if (jb->ta)                                                             \
            pack_cp_##SFX(jb->A + k0 * lda + i0 + s, lda, m, kc, MR, dst);      \
        else                                                                    \
            pack_tr_##SFX(jb->A + (i0 + s) * lda + k0, lda, m, kc, MR, dst);    \
    }                                                                           \
}                                                                               \
                                                                                \
/* op(B)[k0:k0+kc, j0:j0+nc] -> NR-column slivers, each kc x NR. */             \
PACK_TARGET INLINE void pack_b_##SFX(const struct job_##SFX *jb, int64_t k0,    \
                                     int64_t kc, int64_t j0, int64_t nc,        \
                                     int64_t NR, T *dst)                        \
{                                                                               \
    const int64_t ldb = jb->ldb;                                                \
    for (int64_t s = 0; s < nc; s += NR, dst += (int64_t)NR * kc) {             \
        const int64_t n = nc - s < NR ? nc - s : NR;                            \
        if (jb->tb)                                                             \
            pack_tr_##SFX(jb->B + (j0 + s) * ldb + k0, ldb, n, kc, NR, dst);    \
        else                                                                    \
            pack_cp_##SFX(jb->B + k0 * ldb + j0 + s, ldb, n, kc, NR, dst);      \
    }                                                                           \
}

DEFINE_PACK(float, f32)
DEFINE_PACK(double, f64)

/* ------------------------------------------------------------------------ */
/* Micro-kernel and blocked driver, instantiated per ISA and dtype           */
/* ------------------------------------------------------------------------ */

/* The epilogues a micro-kernel applies to its tile in registers before the
 * store (the driver's fused epilogue, after the last K-slab), each the
 * lane-wise twin of epi_elem (fbp_gemm_internal.h): the same operations in
 * the same order, so the same bits as the separate epilogue pass. */
enum {
    EP_NONE = 0,    /* nothing (or the driver runs epilogue_* after the kernel) */
    EP_BIAS = 1,    /* x + b                       (identity with bias) */
    EP_RELU = 2,    /* relu(x [+ b])               (x > 0 ? x : 0) */
    EP_DRELU = 3,   /* x * (d > 0 ? 1 : 0)         (dsrc, no bias) */
    EP_DSIG = 4,    /* x * (d * (1 - d)) */
    EP_DTANH = 5    /* x * ((1 - d) * (1 + d)) */
};

/* The fused epilogue of a blocked call: EP_* from act / bias / dsrc (sigmoid
 * and tanh of the forward, and bias with dsrc, stay in epilogue_*). */
INLINE int fused_epilogue(const void *bias, int act, const void *dsrc)
{
    if (!dsrc) {
        if (act == FBP_ACT_RELU) return EP_RELU;
        return act == FBP_ACT_IDENTITY && bias ? EP_BIAS : EP_NONE;
    }
    if (bias) return EP_NONE;
    switch (act) {
    case FBP_ACT_RELU: return EP_DRELU;
    case FBP_ACT_SIGMOID: return EP_DSIG;
    case FBP_ACT_TANH: return EP_DTANH;
    default: return EP_NONE;
    }
}

/* Uses the vector primitives V_T, V_I (the integer vector of V_T's size),
 * V_LOAD (aligned), V_LOADU, V_STOREU, V_SET1, V_FMA(a, b, c) = a*b + c,
 * V_MUL, defined just before each use, and GCC's vector operators on V_T.
 * Computes MR rows x NV vectors of VL lanes from the B sliver packed BS
 * columns wide (BS >= NV * VL: the edge variants) and op(A)'s rows: UA 0,
 * the A sliver packed AS rows wide (AS >= MR; lda, mv unused); UA 1, op(A)
 * as it is in the caller's A (not transposed: row r of the tile at a + r *
 * lda, contiguous along k), rows from mv on reading row mv - 1 (valid
 * memory; such a tile is an edge tile, computed in the driver's scratch, of
 * which only mv rows are copied to C).  Then the epilogue `ep`
 * (EP_*: bias[0 : NV*VL] and dsrc rows at ldd, the tile's own columns)
 * before the store.  Both read the same values in the same order: the same
 * bits. */
#define DEFINE_UKERNEL(NAME, T, TARGET, MR, AS, NV, VL, BS, UA)                 \
static TARGET void NAME(int64_t kc, const T *restrict a, const T *restrict b,   \
                        T *restrict c, int64_t ldc, T alpha, T beta, int mode,  \
                        int ep, const T *restrict bias, const T *restrict dsrc, \
                        int64_t ldd, int64_t lda, int64_t mv)                   \
{                                                                               \
    V_T acc[MR][NV];                                                            \
    const T *ar[MR];                                                            \
    if (UA)                                                                     \
        _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)               \
            ar[r] = a + (r < mv ? r : mv - 1) * lda;                            \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)                   \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)                \
            acc[r][v] = V_SET1((T)0);                                           \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++) {                 \
        __builtin_prefetch(c + r * ldc, 1, 3);                                  \
        __builtin_prefetch(c + r * ldc + NV * VL - 1, 1, 3);                    \
    }                                                                           \
    _Pragma("GCC unroll 4")                                                     \
    for (int64_t k = 0; k < kc; k++, a += (UA ? 0 : AS), b += BS) {            \
        V_T bv[NV];                                                             \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)                \
            bv[v] = V_LOAD(b + v * VL);                                         \
        _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++) {             \
            V_T av = V_SET1(UA ? ar[r][k] : a[r]);                              \
            _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)            \
                acc[r][v] = V_FMA(av, bv[v], acc[r][v]);                        \
        }                                                                       \
    }                                                                           \
    const V_T va = V_SET1(alpha), vb = V_SET1(beta);                            \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)                   \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++) {              \
            const T *p = c + r * ldc + v * VL;                                  \
            if (mode == 0)                                                      \
                acc[r][v] = V_MUL(va, acc[r][v]);                               \
            else if (mode == 1)                                                 \
                acc[r][v] = V_FMA(va, acc[r][v], V_MUL(vb, V_LOADU(p)));        \
            else                                                                \
                acc[r][v] = V_FMA(va, acc[r][v], V_LOADU(p));                   \
        }                                                                       \
    if (ep != EP_NONE) {                                                        \
        const V_T zero = V_SET1((T)0), one = V_SET1((T)1);                      \
        if (ep <= EP_RELU) {                                                    \
            if (bias) {                                                         \
                V_T bb[NV];                                                     \
                _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)        \
                    bb[v] = V_LOADU(bias + v * VL);                             \
                _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)       \
                    _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)    \
                        acc[r][v] = acc[r][v] + bb[v];                          \
            }                                                                   \
            if (ep == EP_RELU)                                                  \
                _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)       \
                    _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)    \
                        acc[r][v] = (V_T)((V_I)acc[r][v] & (V_I)(acc[r][v] > zero)); \
        } else {                                                                \
            _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)           \
                _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++) {      \
                    const V_T d = V_LOADU(dsrc + r * ldd + v * VL);             \
                    if (ep == EP_DRELU)                                         \
                        acc[r][v] = acc[r][v] * (V_T)((V_I)one & (V_I)(d > zero)); \
                    else if (ep == EP_DSIG)                                     \
                        acc[r][v] = acc[r][v] * (d * (one - d));                \
                    else                                                        \
                        acc[r][v] = acc[r][v] * ((one - d) * (one + d));        \
                }                                                               \
        }                                                                       \
    }                                                                           \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)                   \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)                \
            V_STOREU(c + r * ldc + v * VL, acc[r][v]);                          \
}

/* The full MR x NR kernel and its half-height / half-width variants for edge
 * tiles, on a packed A sliver and (_u*) on op(A) unpacked.  Every element
 * still gets the identical FMA chain and update. */
#define DEFINE_KERNELS(UK, T, TARGET, MR, NV, VL)                               \
DEFINE_UKERNEL(UK, T, TARGET, MR, MR, NV, VL, NV * VL, 0)                       \
DEFINE_UKERNEL(UK##_m, T, TARGET, MR / 2, MR, NV, VL, NV * VL, 0)               \
DEFINE_UKERNEL(UK##_n, T, TARGET, MR, MR, NV / 2, VL, NV * VL, 0)               \
DEFINE_UKERNEL(UK##_mn, T, TARGET, MR / 2, MR, NV / 2, VL, NV * VL, 0)          \
DEFINE_UKERNEL(UK##_u, T, TARGET, MR, MR, NV, VL, NV * VL, 1)                   \
DEFINE_UKERNEL(UK##_um, T, TARGET, MR / 2, MR, NV, VL, NV * VL, 1)              \
DEFINE_UKERNEL(UK##_un, T, TARGET, MR, MR, NV / 2, VL, NV * VL, 1)              \
DEFINE_UKERNEL(UK##_umn, T, TARGET, MR / 2, MR, NV / 2, VL, NV * VL, 1)

/* The small path of one ISA: a plain i/j/k loop straight on the caller's
 * arrays (C is M x N at C), no packing, no threads.  It computes each element
 * exactly as the blocked path of the same ISA does (see "Per-element
 * invariance" in fbp_gemm.c): per FBP_KC slab an accumulator from 0 chained
 * with S_FMA (the micro-kernel's V_FMA: a fused multiply-add on the FMA
 * ISAs, mul then add on generic) in k order, the slab combined with
 * alpha/beta/C as the micro-kernel's store modes 0/1/2, then the shared row
 * epilogue.  NAME is this ISA's hidden entry point.  NAME##_block
 * runs it on a sub-block of a job: the blocked driver's fallback when its
 * packing buffer cannot be allocated (same bits, only slower). */
#define DEFINE_SMALL(NAME, T, SFX, ESFX, TARGET)                                \
/* The row epilogue out of line: its vector code (32-byte aligned stack) would  \
 * otherwise make every small call pay for a realigned frame. */                \
static TARGET __attribute__((noinline)) void NAME##_epi(                        \
    T *c, const T *b, const T *d, int64_t n, int act)                           \
{                                                                               \
    epi_row_##ESFX(c, b, d, n, act);                                            \
}                                                                               \
TARGET INLINE void NAME##_body(int ta, int tb, int64_t M, int64_t N, int64_t K, T alpha, \
                        const T *A, int64_t lda, const T *B, int64_t ldb, T beta, \
                        T *C, int64_t ldc, const T *bias, int act,              \
                        const T *dsrc, int64_t ldd)                             \
{                                                                               \
    if (act == FBP_ACT_IDENTITY) dsrc = NULL;                                   \
    const int64_t sai = ta ? 1 : lda, sak = ta ? lda : 1;                       \
    const int64_t sbk = tb ? 1 : ldb, sbj = tb ? ldb : 1;                       \
    const int epi = bias || act != FBP_ACT_IDENTITY;                            \
    if (K <= FBP_KC) { /* one slab (or K == 0): the common case */              \
        for (int64_t i = 0; i < M; i++, A += sai, C += ldc) {                   \
            if (beta == 0)                                                      \
                for (int64_t j = 0; j < N; j++) {                               \
                    const T *b = B + j * sbj;                                   \
                    T acc = 0;                                                  \
                    for (int64_t k = 0; k < K; k++)                             \
                        acc = S_FMA(A[k * sak], b[k * sbk], acc);               \
                    C[j] = alpha * acc;                                         \
                }                                                               \
            else                                                                \
                for (int64_t j = 0; j < N; j++) {                               \
                    const T *b = B + j * sbj;                                   \
                    T acc = 0;                                                  \
                    for (int64_t k = 0; k < K; k++)                             \
                        acc = S_FMA(A[k * sak], b[k * sbk], acc);               \
                    C[j] = S_FMA(alpha, acc, beta * C[j]);                      \
                }                                                               \
            if (epi)                                                            \
                NAME##_epi(C, bias, dsrc ? dsrc + (int64_t)i * ldd : NULL, N, act); \
        }                                                                       \
        return;                                                                 \
    }                                                                           \
    for (int64_t i = 0; i < M; i++, A += sai, C += ldc) {                       \
        for (int64_t j = 0; j < N; j++) {                                       \
            const T *b = B + j * sbj;                                           \
            T c = 0;                                                            \
            int64_t k0 = 0;                                                     \
            do {                                                                \
                const int64_t k1 = K - k0 <= FBP_KC ? K : k0 + FBP_KC;          \
                T acc = 0;                                                      \
                for (int64_t k = k0; k < k1; k++)                               \
                    acc = S_FMA(A[k * sak], b[k * sbk], acc);                   \
                if (k0 > 0) c = S_FMA(alpha, acc, c);                           \
                else if (beta == 0) c = alpha * acc;                            \
                else c = S_FMA(alpha, acc, beta * C[j]);                        \
                k0 = k1;                                                        \
            } while (k0 < K);                                                   \
            C[j] = c;                                                           \
        }                                                                       \
        if (epi)                                                                \
            NAME##_epi(C, bias, dsrc ? dsrc + (int64_t)i * ldd : NULL, N, act); \
    }                                                                           \
}                                                                               \
/* The entry point of this ISA (fbp_gemm_* jumps here): the small path, or      \
 * the rest (blocked, degenerate shapes) when the shape is not small. */        \
FBP_HIDDEN TARGET __attribute__((noinline)) void NAME(                              \
    int ta, int tb, int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t lda, \
    const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, int act, \
    const T *dsrc, int64_t ldd, int n_threads)                                  \
{                                                                               \
    if (__builtin_expect(!(M > 0 && N > 0 && K >= 0 &&                          \
                           (int64_t)M * N * K <= SMALL_MNK), 0)) {              \
        fbp_gemm_rest_##SFX(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C,    \
                            ldc, bias, act, dsrc, ldd, n_threads);              \
        return;                                                                 \
    }                                                                           \
    NAME##_body(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,     \
                act, dsrc, ldd);                                                \
}                                                                               \
static TARGET void NAME##_block(const struct job_##SFX *jb, int64_t i0, int64_t i1, \
                                int64_t j0, int64_t j1)                         \
{                                                                               \
    NAME##_body(jb->ta, jb->tb, i1 - i0, j1 - j0, jb->K, jb->alpha,             \
                jb->A + i0 * (jb->ta ? 1 : jb->lda), jb->lda,                   \
                jb->B + j0 * (jb->tb ? jb->ldb : 1), jb->ldb, jb->beta,         \
                jb->C + i0 * jb->ldc + j0, jb->ldc,                             \
                jb->bias ? jb->bias + j0 : NULL, jb->act,                       \
                jb->dsrc ? jb->dsrc + i0 * jb->ldd + j0 : NULL, jb->ldd);       \
}

/* The serial blocked drivers of one ISA:
 *   NAME(jb, i0, i1, j0, j1)   rows [i0,i1) x cols [j0,j1) of a job, packing
 *                              op(B) itself (per panel and slab, into the
 *                              thread buffer after A's block);
 *   NAME##_pre(jb, Bp)         the whole job with op(B) pre-packed in Bp by
 *                              NAME##_packb (fbp_gemm.h: fbp_gemm_pack_b_*);
 *   NAME##_packb(..., j0, j1)  that packing, columns [j0, j1) only;
 *   NAME##_packb_rows(..., k0, k1)  the same layout, rows [k0, k1) of op(B)
 *                              only (all columns).
 * The pre-packed layout is the driver's own: for each NC-wide panel jc, for
 * each KC-deep slab pc, the NR-wide slivers of op(B)[pc:pc+kc, jc:jc+nc]
 * (k-major, edge sliver zero-padded), i.e. what NAME packs into its buffer,
 * at Bp + jc*K + pc*ncp (ncp = nc rounded up to NR; every panel before jc is
 * NC wide, a multiple of NR).  Both drivers run NAME##_slab on each slab, so
 * they compute every tile with the same kernel calls on the same values. */
#define DEFINE_DRIVER(NAME, UK, SM, T, SFX, ESFX, TARGET, MR, NR, MC, KC, NC, JB) \
/* n elements (a row of an edge tile) from s to d: whole vectors, then the   \
 * rest (fewer than a vector's lanes, at most 15) in pieces of 8, 4, 2 and 1 \
 * elements, each a copy of constant size that the compiler writes inline    \
 * (a copy of n elements, or a plain loop, which GCC turns into one, calls   \
 * memcpy: that cost a narrow layer's tiles more than the copy itself). */   \
TARGET INLINE void NAME##_copy(T *restrict d, const T *restrict s, int64_t n)  \
{                                                                               \
    enum { VL_ = (int)(sizeof(V_T) / sizeof(T)) };                              \
    int64_t j = 0;                                                              \
    for (; j + VL_ <= n; j += VL_) V_STOREU(d + j, V_LOADU(s + j));            \
    const int64_t r = n - j;                                                    \
    if (VL_ > 8 && (r & 8)) { memcpy(d + j, s + j, 8 * sizeof(T)); j += 8; }    \
    if (VL_ > 4 && (r & 4)) { memcpy(d + j, s + j, 4 * sizeof(T)); j += 4; }    \
    if (VL_ > 2 && (r & 2)) { memcpy(d + j, s + j, 2 * sizeof(T)); j += 2; }    \
    if (r & 1) d[j] = s[j];                                                     \
}                                                                               \
/* One micro-tile: rows ic+ir.., columns jc+jr.. (m x n of them) of C from the \
 * A sliver at a (ua: op(A)'s row ic+ir in the caller's A, unpacked) and the  \
 * B sliver at b, depth kc; store mode and epilogue as NAME##_slab says. */   \
TARGET INLINE void NAME##_tile(const struct job_##SFX *jb, const T *a,         \
                           const T *b, int64_t ic, int64_t ir, int64_t jc,      \
                           int64_t jr, int64_t m, int64_t n, int64_t kc,        \
                           int mode, int last, int epi, int fep, int ua)        \
{                                                                               \
    const int64_t ldc = jb->ldc;                                                \
    T *c = jb->C + (int64_t)(ic + ir) * ldc + jc + jr;                          \
    const int hm = m <= MR / 2, hn = n <= NR / 2;                               \
    const int64_t rows = hm ? MR / 2 : MR;                                      \
    const int64_t cols = hn ? NR / 2 : NR;                                      \
    void (*uk)(int64_t, const T *, const T *, T *, int64_t, T,                  \
               T, int, int, const T *, const T *, int64_t, int64_t, int64_t) =  \
        ua ? (hm ? (hn ? UK##_umn : UK##_um) : (hn ? UK##_un : UK##_u))         \
           : (hm ? (hn ? UK##_mn : UK##_m) : (hn ? UK##_n : UK));               \
    const int ep = last ? fep : EP_NONE;                                        \
    const T *bias = jb->bias ? jb->bias + jc + jr : NULL;                       \
    const T *dsrc = jb->dsrc ? jb->dsrc + (int64_t)(ic + ir) * jb->ldd + jc + jr : NULL; \
    if (m == rows && n == cols) {                                               \
        uk(kc, a, b, c, ldc, jb->alpha, jb->beta, mode, ep, bias,               \
           dsrc, jb->ldd, jb->lda, m);                                          \
    } else {                                                                    \
        /* the tile in scratch; what the fused epilogue                         \
         * reads beyond the block, zero */                                      \
        T t[MR * NR] __attribute__((aligned(64)));                              \
        T tbias[NR], tdsrc[MR * NR];                                            \
        if (mode)                                                               \
            for (int64_t r = 0; r < m; r++)                                     \
                NAME##_copy(t + r * cols, c + r * ldc, n);                      \
        if (ep != EP_NONE && bias && n < cols) {                                \
            memset(tbias, 0, sizeof tbias);                                     \
            NAME##_copy(tbias, bias, n);                                        \
            bias = tbias;                                                       \
        }                                                                       \
        if (ep >= EP_DRELU) {                                                   \
            memset(tdsrc, 0, rows * cols * sizeof(T));                          \
            for (int64_t r = 0; r < m; r++)                                     \
                NAME##_copy(tdsrc + r * cols, dsrc + r * jb->ldd, n);           \
            dsrc = tdsrc;                                                       \
        }                                                                       \
        uk(kc, a, b, t, cols, jb->alpha, jb->beta, mode, ep, bias,              \
           dsrc, cols, jb->lda, m);                                             \
        for (int64_t r = 0; r < m; r++)                                         \
            NAME##_copy(c + r * ldc, t + r * cols, n);                          \
    }                                                                           \
    if (last && epi && fep == EP_NONE)                                          \
        epilogue_##ESFX(jb, ic + ir, jc + jr, m, n);                            \
}                                                                               \
/* One KC slab (depth kc at pc) of the panel [jc, jc+nc), rows [i0, i1):        \
 * op(B)'s slivers at pb, op(A) packed into pa in blocks of mcb rows (ua: read  \
 * where it is, NAME##_ua; pa unused).  Loop order (speed only: every tile is   \
 * the same kernel call on the same values whatever the order): JB == 0, B     \
 * sliver outer, A slivers inner (the B sliver stays in L1, A's block in L2);  \
 * JB > 0, per chunk of JB columns of op(B) (in L2), A sliver outer (in L1),   \
 * the chunk's B slivers inner. */                                              \
TARGET INLINE void NAME##_slab(const struct job_##SFX *jb, const T *pb, T *pa,  \
                               int64_t mcb, int64_t i0, int64_t i1,             \
                               int64_t jc, int64_t nc, int64_t pc, int64_t kc,  \
                               int epi, int fep, int ua)                        \
{                                                                               \
    const int mode = pc > 0 ? 2 : (jb->beta != 0 ? 1 : 0);                      \
    const int last = pc + kc == jb->K;                                          \
    const int64_t as = ua ? jb->lda : kc;  /* from a tile's rows to the next's */ \
    for (int64_t ic = i0; ic < i1; ic += mcb) {                                 \
        const int64_t mc = i1 - ic < mcb ? i1 - ic : mcb;                       \
        const T *ab = ua ? jb->A + ic * jb->lda + pc : pa;                      \
        if (!ua) pack_a_##SFX(jb, ic, mc, pc, kc, MR, pa);                      \
        if (JB == 0) {                                                          \
            for (int64_t jr = 0; jr < nc; jr += NR) {                           \
                const int64_t n = nc - jr < NR ? nc - jr : NR;                  \
                for (int64_t ir = 0; ir < mc; ir += MR)                         \
                    NAME##_tile(jb, ab + ir * as, pb + jr * kc, ic, ir, jc, jr, \
                                mc - ir < MR ? mc - ir : MR, n, kc, mode, last, \
                                epi, fep, ua);                                  \
            }                                                                   \
            continue;                                                           \
        }                                                                       \
        for (int64_t jq = 0; jq < nc; jq += (JB > 0 ? JB : NR)) {               \
            const int64_t je = nc - jq < JB ? nc : jq + JB;                     \
            for (int64_t ir = 0; ir < mc; ir += MR) {                           \
                const int64_t m = mc - ir < MR ? mc - ir : MR;                  \
                for (int64_t jr = jq; jr < je; jr += NR)                        \
                    NAME##_tile(jb, ab + ir * as, pb + jr * kc, ic, ir, jc, jr, \
                                m, je - jr < NR ? je - jr : NR, kc, mode, last, \
                                epi, fep, ua);                                  \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}                                                                               \
/* Whether rows [i0, i1) of op(A) are read where they are instead of packed:    \
 * not transposed (each tile row contiguous along k) and at most              \
 * fbp_gemm_ua_bytes() of them, where packing them cost more than it saved    \
 * (bench/NOTES.md, "Session 26").  Speed only: the same values reach the     \
 * same FMAs. */                                                               \
TARGET INLINE int NAME##_ua(const struct job_##SFX *jb, int64_t i0, int64_t i1) \
{                                                                               \
    const int64_t lim = fbp_gemm_ua_bytes();                                    \
    return !jb->ta && lim > 0 && (i1 - i0) * jb->K * (int64_t)sizeof(T) <= lim;  \
}                                                                               \
FBP_HIDDEN TARGET void NAME(const struct job_##SFX *jb, int64_t i0, int64_t i1, \
                        int64_t j0, int64_t j1)                                 \
{                                                                               \
    const int64_t K = jb->K;                                                    \
    const int64_t ncmax = j1 - j0 < NC ? j1 - j0 : NC;                          \
    const int64_t kcmax = K < KC ? K : KC;                                      \
    const int ua = NAME##_ua(jb, i0, i1);                                       \
    const size_t na = ua ? 0 : (size_t)MC * kcmax;   /* A's block */            \
    const size_t nb = (size_t)((ncmax + NR - 1) / NR * NR) * kcmax;             \
    T *pa = fbp_gemm_thread_buf((na + nb) * sizeof(T));                         \
    if (!pa) { SM##_block(jb, i0, i1, j0, j1); return; }                        \
    T *pb = pa + na;                                                            \
    const int epi = has_epilogue_##SFX(jb);                                     \
    const int fep = epi ? fused_epilogue(jb->bias, jb->act, jb->dsrc) : EP_NONE; \
    if (ua) fbp_gemm_note_ua();                                                 \
    for (int64_t jc = j0; jc < j1; jc += NC) {                                  \
        const int64_t nc = j1 - jc < NC ? j1 - jc : NC;                         \
        for (int64_t pc = 0; pc < K; pc += KC) {                                \
            const int64_t kc = K - pc < KC ? K - pc : KC;                       \
            pack_b_##SFX(jb, pc, kc, jc, nc, NR, pb);                           \
            NAME##_slab(jb, pb, pa, MC, i0, i1, jc, nc, pc, kc, epi, fep, ua);  \
        }                                                                       \
    }                                                                           \
}                                                                               \
/* Columns [j0, j1) of op(B) (j0 a multiple of NR, j1 one or N) into the        \
 * pre-packed layout at Bp: in every slab, only those columns' slivers. */      \
FBP_HIDDEN TARGET void NAME##_packb(int tb, int64_t N, int64_t K, const T *B,   \
                                    int64_t ldb, T *Bp, int64_t j0, int64_t j1) \
{                                                                               \
    if (j1 > N) j1 = N;                                                         \
    if (j0 < 0) j0 = 0;                                                         \
    if (K <= 0 || j0 >= j1) return;                                             \
    const struct job_##SFX jb = {.tb = tb, .B = B, .ldb = ldb};                 \
    for (int64_t jc = j0 / NC * NC; jc < j1; jc += NC) {                        \
        const int64_t nc = N - jc < NC ? N - jc : NC;                           \
        const int64_t ncp = (nc + NR - 1) / NR * NR;                            \
        const int64_t s0 = j0 > jc ? j0 : jc;                                   \
        const int64_t s1 = j1 < jc + nc ? j1 : jc + nc;                         \
        for (int64_t pc = 0; pc < K; pc += KC) {                                \
            const int64_t kc = K - pc < KC ? K - pc : KC;                       \
            pack_b_##SFX(&jb, pc, kc, s0, s1 - s0, NR,                          \
                         Bp + jc * K + pc * ncp + (s0 - jc) * kc);              \
        }                                                                       \
    }                                                                           \
}                                                                               \
/* Rows [k0, k1) of op(B) (all N columns) into the pre-packed layout at Bp:    \
 * in each slab the rows cross, in every sliver, the k-major run of those     \
 * rows (NR values each, the last sliver's padding lanes zero): disjoint      \
 * row ranges write disjoint bytes, together what NAME##_packb writes. */     \
FBP_HIDDEN TARGET void NAME##_packb_rows(int tb, int64_t N, int64_t K,          \
                                         const T *B, int64_t ldb, T *Bp,        \
                                         int64_t k0, int64_t k1)                \
{                                                                               \
    if (k0 < 0) k0 = 0;                                                         \
    if (k1 > K) k1 = K;                                                         \
    if (N <= 0 || k0 >= k1) return;                                             \
    for (int64_t jc = 0; jc < N; jc += NC) {                                    \
        const int64_t nc = N - jc < NC ? N - jc : NC;                           \
        const int64_t ncp = (nc + NR - 1) / NR * NR;                            \
        for (int64_t pc = k0 / KC * KC; pc < k1; pc += KC) {                    \
            const int64_t kc = K - pc < KC ? K - pc : KC;                       \
            const int64_t r0 = k0 > pc ? k0 : pc;                               \
            const int64_t r1 = k1 < pc + kc ? k1 : pc + kc;                     \
            T *slab = Bp + jc * K + pc * ncp + (r0 - pc) * NR;                  \
            for (int64_t s = 0; s < nc; s += NR) {                              \
                const int64_t n = nc - s < NR ? nc - s : NR;                    \
                if (tb)                                                         \
                    pack_tr_##SFX(B + (jc + s) * ldb + r0, ldb, n, r1 - r0, NR, \
                                  slab + s * kc);                               \
                else                                                            \
                    pack_cp_##SFX(B + r0 * ldb + jc + s, ldb, n, r1 - r0, NR,   \
                                  slab + s * kc);                               \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}                                                                               \
/* The pre-packed job when no buffer can be had: the small path's loop          \
 * (same operations per element, fbp_gemm.c) reading op(B) from Bp, where       \
 * op(B)[k][j] of slab pc sits at stride NR along k. */                         \
static TARGET __attribute__((noinline)) void NAME##_pre_small(                  \
    const struct job_##SFX *jb, const T *Bp)                                    \
{                                                                               \
    const int64_t M = jb->M, N = jb->N, K = jb->K, ldc = jb->ldc;               \
    const int64_t sai = jb->ta ? 1 : jb->lda, sak = jb->ta ? jb->lda : 1;       \
    const T alpha = jb->alpha, beta = jb->beta;                                 \
    const T *A = jb->A;                                                         \
    T *C = jb->C;                                                               \
    const int epi = has_epilogue_##SFX(jb);                                     \
    for (int64_t i = 0; i < M; i++, A += sai, C += ldc) {                       \
        for (int64_t j = 0; j < N; j++) {                                       \
            const int64_t jc = j / NC * NC, jl = j - jc;                        \
            const int64_t nc = N - jc < NC ? N - jc : NC;                       \
            const int64_t ncp = (nc + NR - 1) / NR * NR;                        \
            const T *panel = Bp + jc * K + jl % NR;                             \
            T c = 0;                                                            \
            for (int64_t pc = 0; pc < K; pc += KC) {                            \
                const int64_t kc = K - pc < KC ? K - pc : KC;                   \
                const T *b = panel + pc * ncp + (jl - jl % NR) * kc;            \
                T acc = 0;                                                      \
                for (int64_t k = 0; k < kc; k++)                                \
                    acc = S_FMA(A[(pc + k) * sak], b[k * NR], acc);             \
                if (pc > 0) c = S_FMA(alpha, acc, c);                           \
                else if (beta == 0) c = alpha * acc;                            \
                else c = S_FMA(alpha, acc, beta * C[j]);                        \
            }                                                                   \
            C[j] = c;                                                           \
        }                                                                       \
        if (epi)                                                                \
            SM##_epi(C, jb->bias, jb->dsrc ? jb->dsrc + i * jb->ldd : NULL, N,  \
                     jb->act);                                                  \
    }                                                                           \
}                                                                               \
/* The whole job (K >= 1) on op(B) pre-packed at Bp.  A Bp not aligned to       \
 * the vector (the kernels' aligned loads) is copied slab by slab into the      \
 * buffer after A's block; otherwise the buffer holds A's block only (none     \
 * when A is read unpacked). */                                                 \
FBP_HIDDEN TARGET void NAME##_pre(const struct job_##SFX *jb, const T *Bp)      \
{                                                                               \
    const int64_t K = jb->K, N = jb->N;                                         \
    const int64_t ncmax = N < NC ? N : NC;                                      \
    const int64_t kcmax = K < KC ? K : KC;                                      \
    const int copy = (uintptr_t)Bp % sizeof(V_T) != 0;                          \
    const int ua = NAME##_ua(jb, 0, jb->M);                                     \
    const size_t na = ua ? 0 : (size_t)MC * kcmax;   /* A's block */            \
    const size_t nb = copy ? (size_t)((ncmax + NR - 1) / NR * NR) * kcmax : 0;  \
    T *pa = NULL, *pb = NULL;   /* no buffer at all: unpacked A, aligned Bp */  \
    if (na + nb > 0) {                                                          \
        pa = fbp_gemm_thread_buf((na + nb) * sizeof(T));                        \
        if (!pa) { NAME##_pre_small(jb, Bp); return; }                          \
        pb = pa + na;                                                           \
    }                                                                           \
    const int epi = has_epilogue_##SFX(jb);                                     \
    const int fep = epi ? fused_epilogue(jb->bias, jb->act, jb->dsrc) : EP_NONE; \
    if (ua) fbp_gemm_note_ua();                                                 \
    for (int64_t jc = 0; jc < N; jc += NC) {                                    \
        const int64_t nc = N - jc < NC ? N - jc : NC;                           \
        const int64_t ncp = (nc + NR - 1) / NR * NR;                            \
        for (int64_t pc = 0; pc < K; pc += KC) {                                \
            const int64_t kc = K - pc < KC ? K - pc : KC;                       \
            const T *b = Bp + jc * K + pc * ncp;                                \
            if (copy) {                                                         \
                memcpy(pb, b, (size_t)(ncp * kc) * sizeof(T));                  \
                b = pb;                                                         \
            }                                                                   \
            NAME##_slab(jb, b, pa, MC, 0, jb->M, jc, nc, pc, kc, epi, fep, ua); \
        }                                                                       \
    }                                                                           \
}

#endif /* FBP_GEMM_KERNELS_H */
