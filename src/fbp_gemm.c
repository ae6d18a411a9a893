/* fbp_gemm.c: the project's own GEMM (no BLAS), contract in fbp_gemm.h.
 *
 * Design
 * ------
 * Two paths, chosen from (M, N, K) only, never from n_threads, and giving
 * the same bits per element (see "Per-element invariance" below):
 *
 *  - small: M*N*K <= SMALL_MNK or K == 0.  A plain i/j/k loop straight on the
 *    caller's arrays, no packing, no threads, compiled once per ISA (the
 *    same FMA or mul+add as that ISA's micro-kernel).  Tiny nets (M=1, N=2,
 *    K=2) call this millions of times, so it has to cost tens of nanoseconds:
 *    the public entry point is a single indirect jmp to the current ISA's
 *    small function (which makes the small-or-not test itself and passes
 *    other shapes on to rest_*), and the row epilogue is out of line so that
 *    the loop itself needs no realigned frame.
 *
 *  - blocked (Goto/BLIS): for each NC-wide column panel, for each KC-deep
 *    slab of K, op(B)[KC x NC] is packed into NR-wide slivers (k-major, NR
 *    contiguous values per k); for each MC-tall row block op(A)[MC x KC] is
 *    packed into MR-tall slivers (MR contiguous values per k).  Edge slivers
 *    are zero-padded to full MR / NR.  The micro-kernel keeps an MR x NR tile
 *    of C in vector registers and runs k = 0..kc-1 with one FMA per
 *    (row, vector) per k: acc += bcast(a[k][r]) * b[k][v].
 *    Then it writes   C  = alpha*acc                 (first slab, beta == 0)
 *                     C  = fma(alpha, acc, beta*C)   (first slab)
 *                     C  = fma(alpha, acc, C)        (later slabs)
 *    and after the last slab the epilogue (bias, activation or dsrc
 *    derivative) runs on the tile while it is still in L1; sigmoid and tanh
 *    use a vectorised exp (see "Vector sigmoid / tanh" below), on this path
 *    and on the small one.  Edge tiles use half-height (MR/2 rows) and/or
 *    half-width (NR/2) variants of the micro-kernel when they fit.
 *
 *    Per ISA (chosen at run time, FBP_GEMM_ISA or fbp_gemm_set_isa override):
 *      isa      dtype  MR x NR   MC   KC    NC    vector
 *      avx512   f32    12 x 32   144  256   4096  zmm, 24 accumulators
 *               f64    12 x 16    72  256   4096
 *      avx2     f32     6 x 16   144  256   4096  ymm + FMA, 12 accumulators
 *               f64     6 x  8    72  256   4096
 *      generic  f32     6 x  8   144  256   4096  16-byte GCC vectors (SSE2)
 *               f64     6 x  4    72  256   4096
 *    KC x NR of B (16 KiB for avx2) stays in L1 across the MC/MR loop, the
 *    MC x KC block of A (144 KiB) in L2, the KC x NC panel of B in L3.
 *
 * Threads: the M x N output is cut into a tm x tn grid of sub-blocks whose
 * borders are multiples of MR / NR (grid chosen to balance micro-tiles), and
 * sub-block p goes to OpenMP thread p (static).  Every thread runs the serial
 * blocked algorithm above on its own sub-block with its own thread-local
 * packing buffers, so each thread writes only to its own rows/columns of C
 * and its own buffers: there is nothing shared to race on.  Fewer threads than
 * n_threads are used when the problem is too small to pay for the fork; this
 * changes speed, never bits.
 *
 * Per-element invariance (the contract in fbp_gemm.h): on one code path
 * (ISA), C[i][j] is a function of row i of op(A), column j of op(B), C[i][j],
 * bias[j], dsrc[i][j] and (K, alpha, beta, act) only, not of M, N, the
 * position of (i, j), the leading dimensions or n_threads, because every way
 * of computing an element performs the same floating-point operations in the
 * same order:
 *   1. K-slabs [0, FBP_KC), [FBP_KC, 2 FBP_KC), ...: one constant for every
 *      path and ISA, so the boundaries depend on K only.
 *   2. Per slab, acc = 0 then acc = V_FMA(a_k, b_k, acc) for k in order.  In
 *      the micro-kernels that is lane (r, l) of one register chain; padding
 *      lanes (zero-padded slivers) are separate lanes and never mix in.  The
 *      small path does the same with S_FMA, defined next to V_FMA in each ISA
 *      block as its scalar twin (_mm256_fmadd_ps <-> __builtin_fmaf, plain
 *      x*y+z <-> x*y+z), so the small path of an ISA matches its kernels.
 *   3. The slab is folded in as in the store modes: alpha*acc, or
 *      fma(alpha, acc, beta*C) on the first slab, fma(alpha, acc, C) later;
 *      the partial c goes through C (or the edge scratch tile) as a T, exactly
 *      the scalar path's T c.
 *   4. The epilogue is one function, epi_row, called per row by the blocked
 *      driver (per tile, after the last slab) and by the small path (per row);
 *      sigmoid/tanh always go through the vector exp (partial vectors are
 *      padded, lanes are independent).  Per ISA it is one instance: plain
 *      IEEE +, -, *, / for generic, the same plus explicit fused
 *      multiply-adds (the "f" instance) for AVX2 and AVX-512, which share it
 *      (32-byte and 1-lane code, lane-wise identical), so within an ISA the
 *      small and blocked paths and every vector/scalar position agree.
 *   5. Contraction is off for the whole file (pragma below), so the compiler
 *      cannot turn a*b+c into an FMA in one copy of an expression and not in
 *      another (GCC contracts by default in gnu11 wherever the target has
 *      FMA: the AVX2/AVX-512 functions, or everything under -march=native).
 * Hence the path (small or blocked), the edge-kernel variant, the thread grid
 * (sub-block borders are multiples of MR / NR anyway) and the allocation
 * fallback never change bits.  The AVX-512 kernels come from the same macros
 * with _mm512 intrinsics and S_FMA = __builtin_fma*, consistent by
 * construction, but this has only been run on CPUs without AVX-512.
 * Different ISAs may differ from each other (FMA vs mul+add) but an ISA is
 * fixed for the life of the process unless a test forces one.
 *
 * Memory: one thread-local buffer per thread (MC*KC + KC*min(NC, N) values),
 * grown on demand and reused; freed by a pthread key destructor when the
 * thread exits.  If it cannot be allocated the thread computes its
 * sub-block with the small path of the same ISA: slow, but the same bits.
 *
 * No -ffast-math.
 */
/* Every mul and add below is rounded on its own: an FMA only where the code
 * asks for one (V_FMA / S_FMA of the FMA ISAs).  Compiler contraction of
 * a*b+c (GCC's default in gnu modes wherever the target has FMA: the
 * AVX2/AVX-512 functions, any -march=native build) would let two compilations
 * of the same expression round differently, breaking the per-element
 * invariance described above. */
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
#define MIN_FLOPS_PER_THREAD 400000.0
#define INLINE static inline __attribute__((always_inline))

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, N_ISA = 3 };
static const char *const isa_names[N_ISA] = {"generic", "avx2", "avx512"};

/* ------------------------------------------------------------------------ */
/* Thread-local packing buffer                                              */
/* ------------------------------------------------------------------------ */

static pthread_key_t buf_key;
static pthread_once_t buf_key_once = PTHREAD_ONCE_INIT;
static __thread void *tl_buf;
static __thread size_t tl_cap;

static void buf_free(void *p) { free(p); }
static void buf_key_init(void) { (void)pthread_key_create(&buf_key, buf_free); }

/* 64-byte aligned scratch of at least `bytes`, owned by the calling thread. */
static void *thread_buf(size_t bytes)
{
    if (tl_cap >= bytes) return tl_buf;
    pthread_once(&buf_key_once, buf_key_init);
    free(tl_buf);
    tl_cap = 0;
    bytes = (bytes + 4095) & ~(size_t)4095;
    tl_buf = aligned_alloc(64, bytes);
    pthread_setspecific(buf_key, tl_buf);
    if (tl_buf) tl_cap = bytes;
    return tl_buf;
}

/* ------------------------------------------------------------------------ */
/* Per-dtype generic pieces: job, activations, epilogue, packing             */
/* ------------------------------------------------------------------------ */

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
}                                                                               \
                                                                                \
/* A sliver of W lanes, k-major: dst[k*W + l] = op(X)[lane l][k0 + k],          \
 * lanes >= `lanes` zero.  _cp: a lane's values are contiguous across lanes     \
 * (src[k*lds + l]); _tr: contiguous along k (src[l*lds + k]), transposed in    \
 * small register blocks (TRANSPOSE_##SFX, 2 or 4 lanes x KB k) when full. */   \
INLINE void pack_cp_##SFX(const T *src, int64_t lds, int64_t lanes, int64_t kc, int64_t W, \
                          T *dst)                                               \
{                                                                               \
    if (lanes == W) {                                                           \
        for (int64_t k = 0; k < kc; k++)                                        \
            memcpy(dst + (int64_t)k * W, src + k * lds, W * sizeof(T));         \
        return;                                                                 \
    }                                                                           \
    for (int64_t k = 0; k < kc; k++) {                                          \
        int64_t l = 0;                                                          \
        for (; l < lanes; l++) dst[(int64_t)k * W + l] = src[k * lds + l];      \
        for (; l < W; l++) dst[(int64_t)k * W + l] = 0;                         \
    }                                                                           \
}                                                                               \
INLINE void pack_tr_##SFX(const T *src, int64_t lds, int64_t lanes, int64_t kc, int64_t W, \
                          T *dst)                                               \
{                                                                               \
    int64_t k = 0;                                                              \
    if (lanes == W) k = TRANSPOSE_##SFX(src, lds, kc, W, dst);                  \
    for (; k < kc; k++)                                                         \
        for (int64_t l = 0; l < W; l++)                                         \
            dst[(int64_t)k * W + l] = l < lanes ? src[l * lds + k] : (T)0;      \
}                                                                               \
                                                                                \
/* op(A)[i0:i0+mc, k0:k0+kc] -> MR-row slivers, each kc x MR. */                \
INLINE void pack_a_##SFX(const struct job_##SFX *jb, int64_t i0, int64_t mc,    \
                         int64_t k0, int64_t kc, int64_t MR, T *dst)            \
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
INLINE void pack_b_##SFX(const struct job_##SFX *jb, int64_t k0, int64_t kc,    \
                         int64_t j0, int64_t nc, int64_t NR, T *dst)            \
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

/* Register-block transposes for pack_tr: rows of the source are lanes.
 * Return how many k (a multiple of the block depth) were packed; the
 * caller finishes the rest.  W is a multiple of 2 (f64) or 2 + 4a (f32). */
#if defined(FBP_X86) && defined(__SSE2__)
INLINE int64_t transpose_f32(const float *src, int64_t lds, int64_t kc, int64_t W, float *dst)
{
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
        int64_t l = 0;
        for (; l + 4 <= W; l += 4) {
            const float *s = src + l * lds + k;
            __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
            __m128 r2 = _mm_loadu_ps(s + 2 * lds), r3 = _mm_loadu_ps(s + 3 * lds);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            float *d = dst + (int64_t)k * W + l;
            _mm_storeu_ps(d, r0);
            _mm_storeu_ps(d + W, r1);
            _mm_storeu_ps(d + 2 * W, r2);
            _mm_storeu_ps(d + 3 * W, r3);
        }
        if (l < W) { /* two lanes left */
            const float *s = src + l * lds + k;
            __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
            __m128 lo = _mm_unpacklo_ps(r0, r1), hi = _mm_unpackhi_ps(r0, r1);
            float *d = dst + (int64_t)k * W + l;
            _mm_storel_pi((__m64 *)d, lo);
            _mm_storeh_pi((__m64 *)(d + W), lo);
            _mm_storel_pi((__m64 *)(d + 2 * W), hi);
            _mm_storeh_pi((__m64 *)(d + 3 * W), hi);
        }
    }
    return k;
}
INLINE int64_t transpose_f64(const double *src, int64_t lds, int64_t kc, int64_t W, double *dst)
{
    int64_t k = 0;
    for (; k + 2 <= kc; k += 2)
        for (int64_t l = 0; l < W; l += 2) {
            const double *s = src + l * lds + k;
            __m128d r0 = _mm_loadu_pd(s), r1 = _mm_loadu_pd(s + lds);
            double *d = dst + (int64_t)k * W + l;
            _mm_storeu_pd(d, _mm_unpacklo_pd(r0, r1));
            _mm_storeu_pd(d + W, _mm_unpackhi_pd(r0, r1));
        }
    return k;
}
#define TRANSPOSE_f32 transpose_f32
#define TRANSPOSE_f64 transpose_f64
#else
#define TRANSPOSE_f32(src, lds, kc, W, dst) 0
#define TRANSPOSE_f64(src, lds, kc, W, dst) 0
#endif

DEFINE_COMMON(float, f32)
DEFINE_COMMON(double, f64)

/* Everything that is not the small path (defined with the entry points). */
static void rest_f32(int, int, int64_t, int64_t, int64_t, float, const float *,
                     int64_t, const float *, int64_t, float, float *, int64_t,
                     const float *, int, const float *, int64_t, int);
static void rest_f64(int, int, int64_t, int64_t, int64_t, double, const double *,
                     int64_t, const double *, int64_t, double, double *, int64_t,
                     const double *, int, const double *, int64_t, int);

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
/* Micro-kernel and blocked driver, instantiated per ISA and dtype           */
/* ------------------------------------------------------------------------ */

/* Uses the vector primitives V_T, V_LOAD (aligned), V_LOADU, V_STOREU,
 * V_SET1, V_FMA(a, b, c) = a*b + c, V_MUL, defined just before each use.
 * Computes MR rows x NV vectors of VL lanes from slivers packed AS rows and
 * BS columns wide (AS >= MR, BS >= NV * VL: the edge variants). */
#define DEFINE_UKERNEL(NAME, T, TARGET, MR, AS, NV, VL, BS)                     \
static TARGET void NAME(int64_t kc, const T *restrict a, const T *restrict b,   \
                        T *restrict c, int64_t ldc, T alpha, T beta, int mode)  \
{                                                                               \
    V_T acc[MR][NV];                                                            \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)                   \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)                \
            acc[r][v] = V_SET1((T)0);                                           \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++) {                 \
        __builtin_prefetch(c + r * ldc, 1, 3);                                  \
        __builtin_prefetch(c + r * ldc + NV * VL - 1, 1, 3);                    \
    }                                                                           \
    _Pragma("GCC unroll 4")                                                     \
    for (int64_t k = 0; k < kc; k++, a += AS, b += BS) {                        \
        V_T bv[NV];                                                             \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)                \
            bv[v] = V_LOAD(b + v * VL);                                         \
        _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++) {             \
            V_T av = V_SET1(a[r]);                                              \
            _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++)            \
                acc[r][v] = V_FMA(av, bv[v], acc[r][v]);                        \
        }                                                                       \
    }                                                                           \
    const V_T va = V_SET1(alpha), vb = V_SET1(beta);                            \
    _Pragma("GCC unroll 16") for (int64_t r = 0; r < MR; r++)                   \
        _Pragma("GCC unroll 4") for (int64_t v = 0; v < NV; v++) {              \
            T *p = c + r * ldc + v * VL;                                        \
            if (mode == 0)                                                      \
                V_STOREU(p, V_MUL(va, acc[r][v]));                              \
            else if (mode == 1)                                                 \
                V_STOREU(p, V_FMA(va, acc[r][v], V_MUL(vb, V_LOADU(p))));       \
            else                                                                \
                V_STOREU(p, V_FMA(va, acc[r][v], V_LOADU(p)));                  \
        }                                                                       \
}

/* The full MR x NR kernel and its half-height / half-width variants for edge
 * tiles.  Every element still gets the identical FMA chain and update. */
#define DEFINE_KERNELS(UK, T, TARGET, MR, NV, VL)                               \
DEFINE_UKERNEL(UK, T, TARGET, MR, MR, NV, VL, NV * VL)                          \
DEFINE_UKERNEL(UK##_m, T, TARGET, MR / 2, MR, NV, VL, NV * VL)                  \
DEFINE_UKERNEL(UK##_n, T, TARGET, MR, MR, NV / 2, VL, NV * VL)                  \
DEFINE_UKERNEL(UK##_mn, T, TARGET, MR / 2, MR, NV / 2, VL, NV * VL)

/* The small path of one ISA: a plain i/j/k loop straight on the caller's
 * arrays (C is M x N at C), no packing, no threads.  It computes each element
 * exactly as the blocked path of the same ISA does (see "Per-element
 * invariance" above): per FBP_KC slab an accumulator from 0 chained with
 * S_FMA (the micro-kernel's V_FMA: a fused multiply-add on the FMA ISAs, mul
 * then add on generic) in k order, the slab combined with alpha/beta/C as the
 * micro-kernel's store modes 0/1/2, then the shared row epilogue.  NAME##_block
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
static TARGET __attribute__((noinline)) void NAME(                              \
    int ta, int tb, int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t lda, \
    const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, int act, \
    const T *dsrc, int64_t ldd, int n_threads)                                  \
{                                                                               \
    if (__builtin_expect(!(M > 0 && N > 0 && K >= 0 &&                          \
                           (int64_t)M * N * K <= SMALL_MNK), 0)) {              \
        rest_##SFX(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,  \
                   act, dsrc, ldd, n_threads);                                  \
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

/* Serial blocked GEMM on the sub-block rows [i0,i1) x cols [j0,j1). */
#define DEFINE_DRIVER(NAME, UK, SM, T, SFX, ESFX, TARGET, MR, NR, MC, KC, NC)   \
static TARGET void NAME(const struct job_##SFX *jb, int64_t i0, int64_t i1,     \
                        int64_t j0, int64_t j1)                                 \
{                                                                               \
    const int64_t K = jb->K;                                                    \
    const int64_t ldc = jb->ldc;                                                \
    const int64_t ncmax = j1 - j0 < NC ? j1 - j0 : NC;                          \
    const int64_t kcmax = K < KC ? K : KC;                                      \
    const size_t na = (size_t)MC * kcmax;                                       \
    const size_t nb = (size_t)((ncmax + NR - 1) / NR * NR) * kcmax;             \
    T *pa = thread_buf((na + nb) * sizeof(T));                                  \
    if (!pa) { SM##_block(jb, i0, i1, j0, j1); return; }                        \
    T *pb = pa + na;                                                            \
    const int epi = has_epilogue_##SFX(jb);                                     \
    for (int64_t jc = j0; jc < j1; jc += NC) {                                  \
        const int64_t nc = j1 - jc < NC ? j1 - jc : NC;                         \
        for (int64_t pc = 0; pc < K; pc += KC) {                                \
            const int64_t kc = K - pc < KC ? K - pc : KC;                       \
            const int mode = pc > 0 ? 2 : (jb->beta != 0 ? 1 : 0);              \
            const int last = pc + kc == K;                                      \
            pack_b_##SFX(jb, pc, kc, jc, nc, NR, pb);                           \
            for (int64_t ic = i0; ic < i1; ic += MC) {                          \
                const int64_t mc = i1 - ic < MC ? i1 - ic : MC;                 \
                pack_a_##SFX(jb, ic, mc, pc, kc, MR, pa);                       \
                for (int64_t jr = 0; jr < nc; jr += NR) {                       \
                    const int64_t n = nc - jr < NR ? nc - jr : NR;              \
                    const T *b = pb + (int64_t)jr * kc;                         \
                    for (int64_t ir = 0; ir < mc; ir += MR) {                   \
                        const int64_t m = mc - ir < MR ? mc - ir : MR;          \
                        const T *a = pa + (int64_t)ir * kc;                     \
                        T *c = jb->C + (int64_t)(ic + ir) * ldc + jc + jr;      \
                        const int hm = m <= MR / 2, hn = n <= NR / 2;           \
                        const int64_t rows = hm ? MR / 2 : MR;                  \
                        const int64_t cols = hn ? NR / 2 : NR;                  \
                        void (*uk)(int64_t, const T *, const T *, T *, int64_t, T, \
                                   T, int) = hm ? (hn ? UK##_mn : UK##_m)       \
                                                : (hn ? UK##_n : UK);           \
                        if (m == rows && n == cols) {                           \
                            uk(kc, a, b, c, ldc, jb->alpha, jb->beta, mode);    \
                        } else {                                                \
                            T t[MR * NR] __attribute__((aligned(64)));          \
                            if (mode)                                           \
                                for (int64_t r = 0; r < m; r++)                 \
                                    memcpy(t + r * cols, c + r * ldc,           \
                                           n * sizeof(T));                      \
                            uk(kc, a, b, t, cols, jb->alpha, jb->beta, mode);   \
                            for (int64_t r = 0; r < m; r++)                     \
                                memcpy(c + r * ldc, t + r * cols,               \
                                       n * sizeof(T));                          \
                        }                                                       \
                        if (last && epi)                                        \
                            epilogue_##ESFX(jb, ic + ir, jc + jr, m, n);        \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}

/* --- generic: 16-byte GCC vectors, plain mul + add --------------------- */
typedef float gv_f32 __attribute__((vector_size(16)));
typedef double gv_f64 __attribute__((vector_size(16)));
#define TARGET_GENERIC

#define V_T gv_f32
#define V_LOAD(p) (*(const gv_f32 *)(p))
#define V_LOADU(p) ({ gv_f32 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define V_STOREU(p, x) ({ gv_f32 v_ = (x); memcpy((p), &v_, sizeof v_); })
#define V_SET1(s) ((gv_f32){(s), (s), (s), (s)})
#define V_FMA(x, y, z) ((x) * (y) + (z))
#define S_FMA(x, y, z) ((x) * (y) + (z)) /* scalar twin of V_FMA */
#define V_MUL(x, y) ((x) * (y))
DEFINE_KERNELS(uk_generic_f32, float, TARGET_GENERIC, 6, 2, 4)
DEFINE_SMALL(sm_generic_f32, float, f32, f32, TARGET_GENERIC)
DEFINE_DRIVER(blk_generic_f32, uk_generic_f32, sm_generic_f32, float, f32, f32,
              TARGET_GENERIC,
              6, 8, MC_F32, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1

#define V_T gv_f64
#define V_LOAD(p) (*(const gv_f64 *)(p))
#define V_LOADU(p) ({ gv_f64 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define V_STOREU(p, x) ({ gv_f64 v_ = (x); memcpy((p), &v_, sizeof v_); })
#define V_SET1(s) ((gv_f64){(s), (s)})
DEFINE_KERNELS(uk_generic_f64, double, TARGET_GENERIC, 6, 2, 2)
DEFINE_SMALL(sm_generic_f64, double, f64, f64, TARGET_GENERIC)
DEFINE_DRIVER(blk_generic_f64, uk_generic_f64, sm_generic_f64, double, f64, f64,
              TARGET_GENERIC,
              6, 4, MC_F64, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL

#ifdef FBP_X86
/* --- avx2 + fma ---------------------------------------------------------- */
#define TARGET_AVX2 __attribute__((target("avx2,fma")))

#define V_T __m256
#define V_LOAD _mm256_load_ps
#define V_LOADU _mm256_loadu_ps
#define V_STOREU _mm256_storeu_ps
#define V_SET1 _mm256_set1_ps
#define V_FMA _mm256_fmadd_ps
#define S_FMA __builtin_fmaf /* scalar twin of V_FMA */
#define V_MUL _mm256_mul_ps
DEFINE_KERNELS(uk_avx2_f32, float, TARGET_AVX2, 6, 2, 8)
DEFINE_SMALL(sm_avx2_f32, float, f32, f32f, TARGET_AVX2)
DEFINE_DRIVER(blk_avx2_f32, uk_avx2_f32, sm_avx2_f32, float, f32, f32f,
              TARGET_AVX2,
              6, 16, MC_F32, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL

#define V_T __m256d
#define V_LOAD _mm256_load_pd
#define V_LOADU _mm256_loadu_pd
#define V_STOREU _mm256_storeu_pd
#define V_SET1 _mm256_set1_pd
#define V_FMA _mm256_fmadd_pd
#define S_FMA __builtin_fma
#define V_MUL _mm256_mul_pd
DEFINE_KERNELS(uk_avx2_f64, double, TARGET_AVX2, 6, 2, 4)
DEFINE_SMALL(sm_avx2_f64, double, f64, f64f, TARGET_AVX2)
DEFINE_DRIVER(blk_avx2_f64, uk_avx2_f64, sm_avx2_f64, double, f64, f64f,
              TARGET_AVX2,
              6, 8, MC_F64, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL

/* --- avx512f -------------------------------------------------------------- */
#define TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))

#define V_T __m512
#define V_LOAD _mm512_load_ps
#define V_LOADU _mm512_loadu_ps
#define V_STOREU _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_FMA _mm512_fmadd_ps
#define S_FMA __builtin_fmaf
#define V_MUL _mm512_mul_ps
DEFINE_KERNELS(uk_avx512_f32, float, TARGET_AVX512, 12, 2, 16)
DEFINE_SMALL(sm_avx512_f32, float, f32, f32f, TARGET_AVX512)
DEFINE_DRIVER(blk_avx512_f32, uk_avx512_f32, sm_avx512_f32, float, f32, f32f,
              TARGET_AVX512,
              12, 32, MC_F32, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL

#define V_T __m512d
#define V_LOAD _mm512_load_pd
#define V_LOADU _mm512_loadu_pd
#define V_STOREU _mm512_storeu_pd
#define V_SET1 _mm512_set1_pd
#define V_FMA _mm512_fmadd_pd
#define S_FMA __builtin_fma
#define V_MUL _mm512_mul_pd
DEFINE_KERNELS(uk_avx512_f64, double, TARGET_AVX512, 12, 2, 8)
DEFINE_SMALL(sm_avx512_f64, double, f64, f64f, TARGET_AVX512)
DEFINE_DRIVER(blk_avx512_f64, uk_avx512_f64, sm_avx512_f64, double, f64, f64f,
              TARGET_AVX512,
              12, 16, MC_F64, FBP_KC, NC_ALL)
#undef V_T
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL
#endif /* FBP_X86 */

/* ------------------------------------------------------------------------ */
/* Run-time ISA choice                                                       */
/* ------------------------------------------------------------------------ */

static int isa_supported(int isa)
{
#ifdef FBP_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX512) return __builtin_cpu_supports("avx512f") &&
                                  __builtin_cpu_supports("avx2") &&
                                  __builtin_cpu_supports("fma");
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2") &&
                                __builtin_cpu_supports("fma");
#endif
    return isa == ISA_GENERIC;
}

static int isa_from_name(const char *name)
{
    for (int i = 0; i < N_ISA; i++)
        if (strcmp(name, isa_names[i]) == 0) return i;
    return -1;
}

static int g_isa = -1;

/* Small path per ISA. */
typedef void (*small_f32_fn)(int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
    const float *, int64_t, float, float *, int64_t, const float *, int, const float *,
    int64_t, int);
typedef void (*small_f64_fn)(int, int, int64_t, int64_t, int64_t, double, const double *, int64_t,
    const double *, int64_t, double, double *, int64_t, const double *, int, const double *,
    int64_t, int);
static const small_f32_fn small_f32_table[N_ISA] = {
    sm_generic_f32,
#ifdef FBP_X86
    sm_avx2_f32, sm_avx512_f32,
#endif
};
static const small_f64_fn small_f64_table[N_ISA] = {
    sm_generic_f64,
#ifdef FBP_X86
    sm_avx2_f64, sm_avx512_f64,
#endif
};

/* The small path of the current ISA, called through this pointer so the
 * entry point makes no other call (a tail call with its arguments in place).
 * It starts at a resolver that settles the ISA on first use. */
static void small_f32_resolve(int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
    const float *, int64_t, float, float *, int64_t, const float *, int, const float *,
    int64_t, int);
static void small_f64_resolve(int, int, int64_t, int64_t, int64_t, double, const double *, int64_t,
    const double *, int64_t, double, double *, int64_t, const double *, int, const double *,
    int64_t, int);
static small_f32_fn g_small_f32 = small_f32_resolve;
static small_f64_fn g_small_f64 = small_f64_resolve;

static void set_current_isa(int isa)
{
    __atomic_store_n(&g_small_f32, small_f32_table[isa], __ATOMIC_RELAXED);
    __atomic_store_n(&g_small_f64, small_f64_table[isa], __ATOMIC_RELAXED);
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
}


static int best_isa(void)
{
    int isa = N_ISA - 1;
    while (!isa_supported(isa)) isa--;
    return isa;
}

static int current_isa(void)
{
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa >= 0) return isa;
    isa = best_isa();
    const char *env = getenv("FBP_GEMM_ISA");
    if (env && *env) {
        int want = isa_from_name(env);
        if (want >= 0 && want < isa) isa = want;
    }
    set_current_isa(isa);
    return isa;
}

#define DEFINE_RESOLVE(T, SFX)                                                  \
static void small_##SFX##_resolve(                                              \
    int ta, int tb, int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t lda, \
    const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, int act, \
    const T *dsrc, int64_t ldd, int n_threads)                                  \
{                                                                               \
    small_##SFX##_table[current_isa()](ta, tb, M, N, K, alpha, A, lda, B, ldb,  \
                                      beta, C, ldc, bias, act, dsrc, ldd,       \
                                      n_threads);                               \
}
DEFINE_RESOLVE(float, f32)
DEFINE_RESOLVE(double, f64)

int fbp_gemm_set_isa(const char *name)
{
    int isa = (name && *name) ? isa_from_name(name) : best_isa();
    if (isa < 0 || !isa_supported(isa)) return -1;
    set_current_isa(isa);
    return 0;
}

const char *fbp_gemm_isa(void) { return isa_names[current_isa()]; }

/* ------------------------------------------------------------------------ */
/* Entry points: path choice and the thread grid                             */
/* ------------------------------------------------------------------------ */

/* Thread grid tm x tn (tm * tn == nt) minimising the largest sub-block, in
 * micro-tiles; ties go to splitting N (each thread packs its own B). */
static void choose_grid(int64_t M, int64_t N, int64_t MR, int64_t NR, int nt, int *tm, int *tn)
{
    const int64_t tiles_m = (M + MR - 1) / MR, tiles_n = (N + NR - 1) / NR;
    int64_t best = -1;
    for (int a = 1; a <= nt; a++) {
        if (nt % a) continue;
        const int b = nt / a;
        if (a > tiles_m || b > tiles_n) continue;
        const int64_t cost = ((tiles_m + a - 1) / a) * ((tiles_n + b - 1) / b);
        if (best < 0 || cost < best) { best = cost; *tm = a; *tn = b; }
    }
    if (best < 0) { *tm = 1; *tn = 1; }
}

/* Blocked driver and its micro-tile shape, per ISA. */
struct blk_f32 { void (*fn)(const struct job_f32 *, int64_t, int64_t, int64_t, int64_t); int64_t MR, NR; };
struct blk_f64 { void (*fn)(const struct job_f64 *, int64_t, int64_t, int64_t, int64_t); int64_t MR, NR; };
static const struct blk_f32 blk_f32_table[N_ISA] = {
    {blk_generic_f32, 6, 8},
#ifdef FBP_X86
    {blk_avx2_f32, 6, 16}, {blk_avx512_f32, 12, 32},
#endif
};
static const struct blk_f64 blk_f64_table[N_ISA] = {
    {blk_generic_f64, 6, 4},
#ifdef FBP_X86
    {blk_avx2_f64, 6, 8}, {blk_avx512_f64, 12, 16},
#endif
};
void fbp_gemm_tile_shape(int elem_size, int64_t *mr, int64_t *nr)
{
    const int isa = current_isa();
    *mr = elem_size == 4 ? blk_f32_table[isa].MR : blk_f64_table[isa].MR;
    *nr = elem_size == 4 ? blk_f32_table[isa].NR : blk_f64_table[isa].NR;
}

int64_t fbp_gemm_buffer_bytes(int elem_size, int64_t M, int64_t N, int64_t K)
{
    if (M <= 0 || N <= 0 || K <= 0 || M * N * K <= SMALL_MNK) return 0;
    int64_t mr, nr;
    fbp_gemm_tile_shape(elem_size, &mr, &nr);
    const int64_t mc = elem_size == 4 ? MC_F32 : MC_F64;
    const int64_t ncmax = N < NC_ALL ? N : NC_ALL, kcmax = K < FBP_KC ? K : FBP_KC;
    const int64_t bytes = (mc * kcmax + (ncmax + nr - 1) / nr * nr * kcmax) * elem_size;
    return (bytes + 4095) & ~(int64_t)4095; /* thread_buf's rounding */
}

/* FTZ/DAZ (MXCSR bits 15 and 6) are per thread, and a thread starts with
 * the mode of the thread that created it: a pool thread born inside a
 * flush-to-zero fit would otherwise keep flushing in every later call. */
#if defined(FBP_X86) && defined(__SSE2__)
#define FBP_FTZ_BITS 0x8040u
static unsigned int fbp_ftz_mode(void) { return _mm_getcsr() & FBP_FTZ_BITS; }
static unsigned int fbp_ftz_enter(unsigned int mode)
{
    const unsigned int old = _mm_getcsr();
    if ((old & FBP_FTZ_BITS) != mode) _mm_setcsr((old & ~FBP_FTZ_BITS) | mode);
    return old;
}
static void fbp_ftz_leave(unsigned int old)
{
    if (_mm_getcsr() != old) _mm_setcsr(old);
}
#else
static unsigned int fbp_ftz_mode(void) { return 0u; }
static unsigned int fbp_ftz_enter(unsigned int mode) { (void)mode; return 0u; }
static void fbp_ftz_leave(unsigned int old) { (void)old; }
#endif

#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#define THREAD_COUNT() omp_get_num_threads()
#else
#define THREAD_ID() 0
#define THREAD_COUNT() 1
#endif

#define DEFINE_ENTRY(T, SFX)                                                    \
static void run_blocked_##SFX(const struct job_##SFX *jb,                       \
                              const struct blk_##SFX *blk, int n_threads)       \
{                                                                               \
    const int64_t M = jb->M, N = jb->N, MR = blk->MR, NR = blk->NR;             \
    const double flops = 2.0 * M * N * jb->K;                                   \
    int nt = n_threads, tm = 1, tn = 1;                                         \
    if (flops < MIN_FLOPS_PER_THREAD * nt)                                      \
        nt = (int)(flops / MIN_FLOPS_PER_THREAD);                               \
    if (nt > 1) choose_grid(M, N, MR, NR, nt, &tm, &tn);                        \
    const int parts = tm * tn;                                                  \
    if (parts <= 1) { blk->fn(jb, 0, M, 0, N); return; }                        \
    const int64_t tiles_m = (M + MR - 1) / MR, tiles_n = (N + NR - 1) / NR;     \
    /* Each thread of the region runs with the caller's FTZ/DAZ mode (set   \
     * here, its own restored after), whatever mode it was created with. */   \
    const unsigned int ftz = fbp_ftz_mode();                                    \
    _Pragma("omp parallel num_threads(parts)")                                  \
    {                                                                           \
    const unsigned int saved = fbp_ftz_enter(ftz);                              \
    for (int p = THREAD_ID(); p < parts; p += THREAD_COUNT()) {                 \
        const int pi = p / tn, pj = p % tn;                                     \
        const int64_t i0 = (tiles_m * pi / tm) * MR;                           \
        const int64_t i1 = (tiles_m * (pi + 1) / tm) * MR;                     \
        const int64_t j0 = (tiles_n * pj / tn) * NR;                           \
        const int64_t j1 = (tiles_n * (pj + 1) / tn) * NR;                     \
        blk->fn(jb, i0, i1 < M ? i1 : M, j0, j1 < N ? j1 : N);                  \
    }                                                                           \
    fbp_ftz_leave(saved);                                                       \
    }                                                                           \
}                                                                               \
                                                                                \
static __attribute__((noinline)) void blocked_##SFX(                            \
    int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T *A, \
    int64_t lda, const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, \
    int act, const T *dsrc, int64_t ldd, int n_threads)                         \
{                                                                               \
    const struct job_##SFX jb = {                                               \
        .ta = trans_a, .tb = trans_b, .act = act, .M = M, .N = N, .K = K,       \
        .alpha = alpha, .beta = beta, .A = A, .B = B, .bias = bias,             \
        .dsrc = dsrc, .C = C, .lda = lda, .ldb = ldb, .ldc = ldc, .ldd = ldd};  \
    run_blocked_##SFX(&jb, &blk_##SFX##_table[current_isa()], n_threads);       \
}                                                                               \
                                                                                \
static __attribute__((noinline)) void rest_##SFX(                               \
    int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T *A, \
    int64_t lda, const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, \
    int act, const T *dsrc, int64_t ldd, int n_threads)                         \
{                                                                               \
    if (M <= 0 || N <= 0) return;                                               \
    if (K < 0) K = 0;                                                           \
    if (act == FBP_ACT_IDENTITY) dsrc = NULL;                                   \
    if (K == 0)                                                                 \
        small_##SFX##_table[current_isa()](trans_a, trans_b, M, N, K, alpha, A, \
                                          lda, B, ldb, beta, C, ldc, bias, act, \
                                          dsrc, ldd, n_threads);                \
    else                                                                        \
        blocked_##SFX(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta,   \
                      C, ldc, bias, act, dsrc, ldd, n_threads);                 \
}                                                                               \
                                                                                \
/* Nothing but a jump to the current ISA's entry (its small path, which         \
 * passes other shapes on to rest_*): with no test here GCC compiles this to    \
 * one indirect jmp, the arguments left in place (tiny nets call this           \
 * millions of times). */                                                       \
void fbp_gemm_##SFX(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,  \
                    T alpha, const T *A, int64_t lda, const T *B, int64_t ldb,  \
                    T beta, T *C, int64_t ldc, const T *bias, int act,          \
                    const T *dsrc, int64_t ldd, int n_threads)                  \
{                                                                               \
    __atomic_load_n(&g_small_##SFX, __ATOMIC_RELAXED)(                          \
        trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,   \
        act, dsrc, ldd, n_threads);                                             \
}

DEFINE_ENTRY(float, f32)
DEFINE_ENTRY(double, f64)

/* ------------------------------------------------------------------------ */
/* Narrow kernels (fbp_narrow_*: the tiny-net path of the compiled epoch)    */
/* ------------------------------------------------------------------------ */

/* The three products of a training step of a net whose every layer is
 * narrow, as fbp_gemm_* computes them (the equivalences are in fbp_gemm.h),
 * without the generality that costs a tiny product more than its
 * arithmetic: unit strides, no alpha on the forward and backward products,
 * independent accumulator chains interleaved (4 output elements at a time)
 * so that the FMA latency is hidden, and the activation of a short row on
 * one zero-padded vector instead of element by element.  Every element is
 * the same sequence of operations as in the small path of the same ISA: one
 * accumulator from 0 per FBP_KC slab, chained in k order with S_FMA (a fused
 * multiply-add on the FMA ISAs, mul then add on generic), folded in as
 * alpha*acc / fma(alpha, acc, beta*C) / fma(alpha, acc, c), then the shared
 * epilogue (lane-wise the same operations on a vector as on one lane).
 * AVX2 and AVX-512 share one instance: their small paths use the same
 * scalar FMA and the same epilogue instance ("f"), so their bits agree. */
/* Partial vectors: r < VL elements at p, zero-padded.  The FMA ISAs use
 * masked moves; generic, element loops. */
#define DEFINE_PARTIAL(T, SFX, VT, VL, TGT)                                     \
TGT INLINE VT pload_##SFX(const T *p, int64_t r)                                \
{                                                                               \
    VT x = {0};                                                                 \
    for (int64_t l = 0; l < r; l++) x[l] = p[l];                                \
    return x;                                                                   \
}                                                                               \
TGT INLINE void pstore_##SFX(T *p, VT x, int64_t r)                             \
{                                                                               \
    for (int64_t l = 0; l < r; l++) p[l] = x[l];                                \
}
DEFINE_PARTIAL(float, f32, vf32, 8, )
DEFINE_PARTIAL(double, f64, vf64, 4, )
#ifdef FBP_X86
TARGET_FMA INLINE __m256i pmask_f32f(int64_t r)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
TARGET_FMA INLINE vf32 pload_f32f(const float *p, int64_t r)
{
    return (vf32)_mm256_maskload_ps(p, pmask_f32f(r));
}
TARGET_FMA INLINE void pstore_f32f(float *p, vf32 x, int64_t r)
{
    _mm256_maskstore_ps(p, pmask_f32f(r), (__m256)x);
}
TARGET_FMA INLINE __m256i pmask_f64f(int64_t r)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3));
}
TARGET_FMA INLINE vf64 pload_f64f(const double *p, int64_t r)
{
    return (vf64)_mm256_maskload_pd(p, pmask_f64f(r));
}
TARGET_FMA INLINE void pstore_f64f(double *p, vf64 x, int64_t r)
{
    _mm256_maskstore_pd(p, pmask_f64f(r), (__m256d)x);
}
#endif

#define DEFINE_NARROW(NAME, T, SFX, ESFX, VT, VL, SFMA, VFMA, TGT)             \
typedef T NAME##_vu __attribute__((vector_size(VL * sizeof(T)), aligned(sizeof(T)))); \
TGT INLINE VT NAME##_vload(const T *p) { return (VT)*(const NAME##_vu *)p; }    \
TGT INLINE void NAME##_vstore(T *p, VT x) { *(NAME##_vu *)p = (NAME##_vu)x; }   \
/* act(c[0:n] + b[0:n]) for sigmoid / tanh: whole vectors, then the tail of    \
 * the row in one zero-padded vector (lanes are independent). */               \
TGT INLINE void NAME##_act(T *c, const T *b, int64_t n, int act)               \
{                                                                               \
    int64_t j = vact_row_##ESFX(c, b, n, act);                                  \
    if (j < n) {                                                                \
        VT x = pload_##ESFX(c + j, n - j);                                      \
        if (b) x = x + pload_##ESFX(b + j, n - j);                              \
        x = act == FBP_ACT_SIGMOID ? vsigmoid_##ESFX(x) : vtanh_##ESFX(x);      \
        pstore_##ESFX(c + j, x, n - j);                                         \
    }                                                                           \
}                                                                               \
/* C[M, N] = epi(A[M, K] W[N, K]^T + bias): fbp_gemm(0, 1, M, N, K, 1, A, lda,  \
 * W, ldw, 0, C, ldc, bias, act, NULL, 0, 1), for K <= FBP_KC. */               \
TGT INLINE void NAME##_fwd(int64_t M, int64_t N, int64_t K, const T *A, int64_t lda, \
                           const T *W, int64_t ldw, const T *bias, int act,     \
                           T *C, int64_t ldc)                                   \
{                                                                               \
    for (int64_t i = 0; i < M; i++, A += lda, C += ldc) {                       \
        int64_t j = 0;                                                          \
        for (; j + 4 <= N; j += 4) {                                            \
            const T *w0 = W + j * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw; \
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                   \
            for (int64_t k = 0; k < K; k++) {                                   \
                a0 = SFMA(A[k], w0[k], a0);                                     \
                a1 = SFMA(A[k], w1[k], a1);                                     \
                a2 = SFMA(A[k], w2[k], a2);                                     \
                a3 = SFMA(A[k], w3[k], a3);                                     \
            }                                                                   \
            C[j] = a0; C[j + 1] = a1; C[j + 2] = a2; C[j + 3] = a3;             \
        }                                                                       \
        if (j + 2 <= N) {                                                       \
            const T *w0 = W + j * ldw, *w1 = w0 + ldw;                          \
            T a0 = 0, a1 = 0;                                                   \
            for (int64_t k = 0; k < K; k++) {                                   \
                a0 = SFMA(A[k], w0[k], a0);                                     \
                a1 = SFMA(A[k], w1[k], a1);                                     \
            }                                                                   \
            C[j] = a0; C[j + 1] = a1;                                           \
            j += 2;                                                             \
        }                                                                       \
        if (j < N) {                                                            \
            const T *w0 = W + j * ldw;                                          \
            T a0 = 0;                                                           \
            for (int64_t k = 0; k < K; k++) a0 = SFMA(A[k], w0[k], a0);         \
            C[j] = a0;                                                          \
        }                                                                       \
        if (act == FBP_ACT_SIGMOID || act == FBP_ACT_TANH)                      \
            NAME##_act(C, bias, N, act);                                        \
        else if (act == FBP_ACT_RELU)                                           \
            epi_row_##ESFX(C, bias, NULL, N, act);                              \
        else if (bias)                                                          \
            for (j = 0; j < N; j++) C[j] = C[j] + bias[j];                      \
    }                                                                           \
}                                                                               \
/* C[M, N] = (D[M, K] W[K, N]) * act'(from Aact): fbp_gemm(0, 0, M, N, K, 1,    \
 * D, ldd, W, ldw, 0, C, ldc, NULL, act, Aact, lda, 1), for K <= FBP_KC:        \
 * whole vectors across N (one chain per lane), then the tail element-wise. */  \
TGT INLINE void NAME##_bwd(int64_t M, int64_t N, int64_t K, const T *D, int64_t ldd, \
                           const T *W, int64_t ldw, int act, const T *Aact,     \
                           int64_t lda, T *C, int64_t ldc)                      \
{                                                                               \
    for (int64_t i = 0; i < M; i++, D += ldd, C += ldc, Aact += lda) {          \
        int64_t j = 0;                                                          \
        for (; j + VL <= N; j += VL) {                                          \
            VT a = {0};                                                         \
            for (int64_t k = 0; k < K; k++)                                     \
                a = VFMA((VT){} + D[k], NAME##_vload(W + k * ldw + j), a);      \
            NAME##_vstore(C + j, a);                                            \
        }                                                                       \
        for (; j < N; j++) {                                                    \
            T a0 = 0;                                                           \
            for (int64_t k = 0; k < K; k++) a0 = SFMA(D[k], W[k * ldw + j], a0); \
            C[j] = a0;                                                          \
        }                                                                       \
        if (act != FBP_ACT_IDENTITY)                                            \
            for (j = 0; j < N; j++) C[j] = C[j] * dact_##SFX(Aact[j], act);     \
    }                                                                           \
}                                                                               \
/* W[N, K] = alpha D[M, N]^T H[M, K] + beta W, beta 0 or 1: fbp_gemm(1, 0, N,   \
 * K, M, alpha, D, ldd, H, ldh, beta, W, ldw, NULL, 0, NULL, 0, 1), any M:      \
 * whole vectors across K (one chain per K-slab of M per lane), then the tail. */ \
TGT INLINE T NAME##_wgrad1(int64_t M, T alpha, const T *D, int64_t ldd,         \
                           const T *H, int64_t ldh, T beta, T w)                \
{                                                                               \
    T c = 0;                                                                    \
    int64_t r0 = 0;                                                             \
    do {                                                                        \
        const int64_t r1 = M - r0 <= FBP_KC ? M : r0 + FBP_KC;                  \
        T a = 0;                                                                \
        for (int64_t r = r0; r < r1; r++) a = SFMA(D[r * ldd], H[r * ldh], a);  \
        if (r0 > 0) c = SFMA(alpha, a, c);                                      \
        else if (beta == 0) c = alpha * a;                                      \
        else c = SFMA(alpha, a, beta * w);                                      \
        r0 = r1;                                                                \
    } while (r0 < M);                                                           \
    return c;                                                                   \
}                                                                               \
TGT INLINE void NAME##_wgrad(int64_t N, int64_t K, int64_t M, T alpha,          \
                             const T *D, int64_t ldd, const T *H, int64_t ldh,  \
                             T beta, T *W, int64_t ldw)                         \
{                                                                               \
    const VT va = (VT){} + alpha, vb = (VT){} + beta;                           \
    for (int64_t j = 0; j < N; j++, W += ldw) {                                 \
        int64_t i = 0;                                                          \
        for (; i + VL <= K; i += VL) {                                          \
            VT c = {0};                                                         \
            int64_t r0 = 0;                                                     \
            do {                                                                \
                const int64_t r1 = M - r0 <= FBP_KC ? M : r0 + FBP_KC;          \
                VT a = {0};                                                     \
                for (int64_t r = r0; r < r1; r++)                               \
                    a = VFMA((VT){} + D[r * ldd + j], NAME##_vload(H + r * ldh + i), a); \
                if (r0 > 0) c = VFMA(va, a, c);                                 \
                else if (beta == 0) c = va * a;                                 \
                else c = VFMA(va, a, vb * NAME##_vload(W + i));                 \
                r0 = r1;                                                        \
            } while (r0 < M);                                                   \
            NAME##_vstore(W + i, c);                                            \
        }                                                                       \
        for (; i < K; i++)                                                      \
            W[i] = NAME##_wgrad1(M, alpha, D + j, ldd, H + i, ldh, beta, W[i]); \
    }                                                                           \
}                                                                               \
/* Every layer of a net, as the general step runs them (see fbp_gemm.h); a     \
 * batch of one row gets its own instance (M constant). */                      \
TGT INLINE void NAME##_net_fwd_m(const fbp_narrow_net *net, const T *theta, int64_t M, \
                                 const T *x, T *ws)                            \
{                                                                               \
    const int L = net->n_layers;                                                \
    const T *h = x;                                                             \
    for (int k = 0; k < L; k++) {                                               \
        const int64_t ni = net->sizes[k], no = net->sizes[k + 1];               \
        T *out = ws + net->act[k + 1];                                          \
        NAME##_fwd(M, no, ni, h, ni, theta + net->w_off[k], ni,                 \
                   net->b_off[k] >= 0 ? theta + net->b_off[k] : NULL,           \
                   k < L - 1 ? net->hidden : FBP_ACT_IDENTITY, out, no);        \
        h = out;                                                                \
    }                                                                           \
}                                                                               \
static TGT void NAME##_net_fwd(const fbp_narrow_net *net, const T *theta, int64_t M, \
                               const T *x, T *ws)                              \
{                                                                               \
    if (M == 1) NAME##_net_fwd_m(net, theta, 1, x, ws);                         \
    else NAME##_net_fwd_m(net, theta, M, x, ws);                                \
}                                                                               \
TGT INLINE void NAME##_net_bwd_m(const fbp_narrow_net *net, const T *theta, int64_t M, \
                                 T *ws)                                         \
{                                                                               \
    for (int k = net->n_layers - 1; k > 0; k--) {                               \
        const int64_t ni = net->sizes[k], no = net->sizes[k + 1];               \
        NAME##_bwd(M, ni, no, ws + net->delta[k + 1], no, theta + net->w_off[k], ni, \
                   net->hidden, ws + net->act[k], ni, ws + net->delta[k], ni);  \
    }                                                                           \
}                                                                               \
static TGT void NAME##_net_bwd(const fbp_narrow_net *net, const T *theta, int64_t M, \
                               T *ws)                                           \
{                                                                               \
    if (M == 1) NAME##_net_bwd_m(net, theta, 1, ws);                            \
    else NAME##_net_bwd_m(net, theta, M, ws);                                   \
}                                                                               \
TGT INLINE void NAME##_net_wgrad_m(const fbp_narrow_net *net, int64_t M, T alpha, \
                                   const T *x, const T *ws, T beta, T *out)     \
{                                                                               \
    for (int k = 0; k < net->n_layers; k++) {                                   \
        const int64_t ni = net->sizes[k], no = net->sizes[k + 1];               \
        NAME##_wgrad(no, ni, M, alpha, ws + net->delta[k + 1], no,              \
                     k == 0 ? x : ws + net->act[k], ni, beta, out + net->w_off[k], ni); \
    }                                                                           \
}                                                                               \
static TGT void NAME##_net_wgrad(const fbp_narrow_net *net, int64_t M, T alpha, \
                                 const T *x, const T *ws, T beta, T *out)       \
{                                                                               \
    if (M == 1) NAME##_net_wgrad_m(net, 1, alpha, x, ws, beta, out);            \
    else NAME##_net_wgrad_m(net, M, alpha, x, ws, beta, out);                   \
}                                                                               \
static TGT void NAME##_fwd1(int64_t M, int64_t N, int64_t K, const T *A, int64_t lda, \
                            const T *W, int64_t ldw, const T *bias, int act,    \
                            T *C, int64_t ldc)                                  \
{                                                                               \
    NAME##_fwd(M, N, K, A, lda, W, ldw, bias, act, C, ldc);                     \
}                                                                               \
static TGT void NAME##_bwd1(int64_t M, int64_t N, int64_t K, const T *D, int64_t ldd, \
                            const T *W, int64_t ldw, int act, const T *Aact,    \
                            int64_t lda, T *C, int64_t ldc)                     \
{                                                                               \
    NAME##_bwd(M, N, K, D, ldd, W, ldw, act, Aact, lda, C, ldc);                \
}                                                                               \
static TGT void NAME##_wgradf(int64_t N, int64_t K, int64_t M, T alpha,         \
                              const T *D, int64_t ldd, const T *H, int64_t ldh, \
                              T beta, T *W, int64_t ldw)                        \
{                                                                               \
    NAME##_wgrad(N, K, M, alpha, D, ldd, H, ldh, beta, W, ldw);                 \
}

#define SFMA_PLAIN(x, y, z) ((x) * (y) + (z))
DEFINE_NARROW(nw_plain_f32, float, f32, f32, vf32, 8, SFMA_PLAIN, SFMA_PLAIN, )
DEFINE_NARROW(nw_plain_f64, double, f64, f64, vf64, 4, SFMA_PLAIN, SFMA_PLAIN, )
#ifdef FBP_X86
DEFINE_NARROW(nw_fma_f32, float, f32, f32f, vf32, 8, __builtin_fmaf, vfma_f32, TARGET_FMA)
DEFINE_NARROW(nw_fma_f64, double, f64, f64f, vf64, 4, __builtin_fma, vfma_f64, TARGET_FMA)
#endif

#define DEFINE_NARROW_TABLE(T, SFX)                                             \
static const fbp_narrow_ops_##SFX narrow_##SFX##_table[N_ISA] = {                  \
    {nw_plain_##SFX##_fwd1, nw_plain_##SFX##_bwd1, nw_plain_##SFX##_wgradf,    \
     nw_plain_##SFX##_net_fwd, nw_plain_##SFX##_net_bwd, nw_plain_##SFX##_net_wgrad}, \
    NARROW_FMA_ENTRIES(SFX)                                                     \
};                                                                              \
const fbp_narrow_ops_##SFX *fbp_narrow_##SFX(void)                                  \
{                                                                               \
    return &narrow_##SFX##_table[current_isa()];                                \
}
#ifdef FBP_X86
#define NARROW_FMA_ENTRIES(SFX)                                                 \
    {nw_fma_##SFX##_fwd1, nw_fma_##SFX##_bwd1, nw_fma_##SFX##_wgradf,          \
     nw_fma_##SFX##_net_fwd, nw_fma_##SFX##_net_bwd, nw_fma_##SFX##_net_wgrad}, \
    {nw_fma_##SFX##_fwd1, nw_fma_##SFX##_bwd1, nw_fma_##SFX##_wgradf,          \
     nw_fma_##SFX##_net_fwd, nw_fma_##SFX##_net_bwd, nw_fma_##SFX##_net_wgrad},
#else
#define NARROW_FMA_ENTRIES(SFX)
#endif
DEFINE_NARROW_TABLE(float, f32)
DEFINE_NARROW_TABLE(double, f64)

/* ------------------------------------------------------------------------ */
/* Packed narrow nets (fbp_packed_*: plain SGD on a narrow net, whole epoch) */
/* ------------------------------------------------------------------------ */

/* For plain SGD on a narrow net the compiled epoch keeps each W_k, for the
 * whole call, in two zero-padded copies laid out for 32-byte vectors (VL = 8
 * floats or 4 doubles): WN_k, row j of W_k in ceil(n_in / VL) vectors, and
 * WT_k, column i of W_k in ceil(n_out / VL) vectors.  Then every product of
 * a step is a short run of whole-vector FMAs with a broadcast scalar and
 * nothing is repacked or gathered:
 *   forward   A_{k+1}[r] = act(sum_i A_k[r][i] WT_k[i] + b_k)    (lanes: units j)
 *   backward  delta_k[r] = (sum_j delta_{k+1}[r][j] WN_k[j]) * act'(A_k[r])  (lanes: i)
 *   update    WN_k[j] = fma(-lr, sum_r delta_{k+1}[r][j] A_k[r], WN_k[j]), and
 *             WT_k[i] = fma(-lr, sum_r A_k[r][i] delta_{k+1}[r], WT_k[i]),
 * every lane one chain in the GEMM's k order (sums from 0, one FMA per term,
 * K-slabs of FBP_KC rows for the update): element for element the same
 * operations as the GEMM calls of the general step (fbp_gemm.h), so the
 * same bits, and WN_k and WT_k hold the same values.  The activations and
 * deltas of a batch live in the packed buffer too, rows padded to whole
 * vectors; their padding lanes are kept 0 (masked after each activation),
 * so the padding of WN/WT stays 0 and no padding lane ever feeds a real one.
 * The biases stay in theta (the caller updates them). */
int64_t fbp_packed_layout(int elem_size, int n_layers, const int64_t *sizes, int64_t M,
                          fbp_packed *p)
{
    const int64_t VL = elem_size == 4 ? 8 : 4;
    int64_t off = 0;
    p->n_layers = n_layers;
    p->M = M;
    for (int k = 0; k <= n_layers; k++) {
        p->nv[k] = (sizes[k] + VL - 1) / VL;
        p->ld[k] = p->nv[k] * VL;
    }
    for (int k = 0; k < n_layers; k++) {
        p->wn[k] = off;
        off += sizes[k + 1] * p->ld[k];
        p->wt[k] = off;
        off += sizes[k] * p->ld[k + 1];
    }
    for (int k = 0; k <= n_layers; k++) {
        p->act[k] = off;
        off += M * p->ld[k];
        p->delta[k] = off;
        off += M * p->ld[k];
    }
    p->size = off;
    p->one = 1;
    for (int k = 0; k <= n_layers; k++)
        if (p->nv[k] != 1) p->one = 0;
    return off;
}

#define DEFINE_PACKED(NAME, T, SFX, ESFX, VT, VI, VL, VFMA, TGT)                \
/* Unaligned loads and stores typed T (not memcpy: a char-typed store would    \
 * make the compiler reload every int64 of the layout after it). */            \
typedef T NAME##_vu __attribute__((vector_size(VL * sizeof(T)), aligned(sizeof(T)))); \
TGT INLINE VT NAME##_ld(const T *p) { return (VT)*(const NAME##_vu *)p; }       \
TGT INLINE void NAME##_st(T *p, VT x) { *(NAME##_vu *)p = (NAME##_vu)x; }       \
/* Lanes l < n of x, the others 0. */                                           \
TGT INLINE VT NAME##_keep(VT x, int64_t n)                                      \
{                                                                               \
    VI lane;                                                                    \
    _Pragma("GCC unroll 8")                                                     \
    for (int l = 0; l < VL; l++) lane[l] = l;                                   \
    return (VT)((VI)x & (lane < (VI){} + (__typeof__(lane[0]))n));              \
}                                                                               \
static TGT void NAME##_pack(const fbp_packed *p, const int64_t *sizes, const T *theta, \
                            const int64_t *w_off, T *buf)                       \
{                                                                               \
    for (int k = 0; k < p->n_layers; k++) {                                     \
        const int64_t ni = sizes[k], no = sizes[k + 1];                         \
        const T *W = theta + w_off[k];                                          \
        T *wn = buf + p->wn[k], *wt = buf + p->wt[k];                           \
        memset(wn, 0, no * p->ld[k] * sizeof(T));                               \
        memset(wt, 0, ni * p->ld[k + 1] * sizeof(T));                           \
        for (int64_t j = 0; j < no; j++)                                        \
            for (int64_t i = 0; i < ni; i++) {                                  \
                wn[j * p->ld[k] + i] = W[j * ni + i];                           \
                wt[i * p->ld[k + 1] + j] = W[j * ni + i];                       \
            }                                                                   \
    }                                                                           \
    for (int k = 0; k <= p->n_layers; k++) {                                    \
        memset(buf + p->act[k], 0, p->M * p->ld[k] * sizeof(T));                \
        memset(buf + p->delta[k], 0, p->M * p->ld[k] * sizeof(T));              \
    }                                                                           \
}                                                                               \
static TGT void NAME##_unpack(const fbp_packed *p, const int64_t *sizes, const T *buf, \
                              const int64_t *w_off, T *theta)                   \
{                                                                               \
    for (int k = 0; k < p->n_layers; k++) {                                     \
        const int64_t ni = sizes[k], no = sizes[k + 1];                         \
        for (int64_t j = 0; j < no; j++)                                        \
            memcpy(theta + w_off[k] + j * ni, buf + p->wn[k] + j * p->ld[k], ni * sizeof(T)); \
    }                                                                           \
}                                                                               \
/* Forward of rows 0..M-1 of A_0 (already in the buffer) through every layer. */ \
TGT INLINE void NAME##_fwd_m(const fbp_packed *p, const int64_t *sizes, T *buf,  \
                             const T *theta, const int64_t *b_off, int hidden,  \
                             int64_t M, int one)                                \
{                                                                               \
    const int L = p->n_layers;                                                  \
    for (int k = 0; k < L; k++) {                                               \
        const int64_t ni = sizes[k], no = sizes[k + 1], nv = one ? 1 : p->nv[k + 1]; \
        const int64_t ldi = p->ld[k], ldo = p->ld[k + 1];                       \
        const int act = k < L - 1 ? hidden : FBP_ACT_IDENTITY;                  \
        const T *wt = buf + p->wt[k];                                           \
        const T *b = b_off[k] >= 0 ? theta + b_off[k] : NULL;                   \
        for (int64_t r = 0; r < M; r++) {                                       \
            const T *h = buf + p->act[k] + r * ldi;                             \
            T *out = buf + p->act[k + 1] + r * ldo;                             \
            for (int64_t v = 0; v < nv; v++) {                                  \
                VT a = {0};                                                     \
                for (int64_t i = 0; i < ni; i++)                                \
                    a = VFMA((VT){} + h[i], NAME##_ld(wt + i * ldo + v * VL), a); \
                const int64_t n = no - v * VL;                                  \
                if (b) a = a + (n >= VL ? NAME##_ld(b + v * VL) : pload_##ESFX(b + v * VL, n)); \
                if (act == FBP_ACT_RELU) {                                      \
                    a = (VT)((VI)a & (a > 0));                                  \
                } else if (act == FBP_ACT_SIGMOID) {                            \
                    a = vsigmoid_##ESFX(a);                                     \
                } else if (act == FBP_ACT_TANH) {                               \
                    a = vtanh_##ESFX(a);                                        \
                }                                                               \
                NAME##_st(out + v * VL, n >= VL ? a : NAME##_keep(a, n));       \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}                                                                               \
static TGT void NAME##_fwd(const fbp_packed *p, const int64_t *sizes, T *buf,   \
                           const T *theta, const int64_t *b_off, int hidden, int64_t M) \
{                                                                               \
    if (p->one && M == 1) NAME##_fwd_m(p, sizes, buf, theta, b_off, hidden, 1, 1); \
    else if (M == 1) NAME##_fwd_m(p, sizes, buf, theta, b_off, hidden, 1, 0);   \
    else NAME##_fwd_m(p, sizes, buf, theta, b_off, hidden, M, 0);               \
}                                                                               \
/* sum over rows r of slab [r0, r1) of bcast(s[r * lds]) * v[r * ldv], from 0. */ \
TGT INLINE VT NAME##_chain(const T *s, int64_t lds, const T *v, int64_t ldv,    \
                           int64_t r0, int64_t r1)                              \
{                                                                               \
    VT a = {0};                                                                 \
    for (int64_t r = r0; r < r1; r++)                                           \
        a = VFMA((VT){} + s[r * lds], NAME##_ld(v + r * ldv), a);               \
    return a;                                                                   \
}                                                                               \
/* W[v] = fma(alpha, sum_r s[r] v[r], W[v]) by K-slabs of rows, in place. */     \
TGT INLINE void NAME##_upd(T *w, VT va, const T *s, int64_t lds, const T *v,   \
                           int64_t ldv, int64_t M)                              \
{                                                                               \
    VT c = NAME##_ld(w);                                                        \
    int64_t r0 = 0;                                                             \
    do {                                                                        \
        const int64_t r1 = M - r0 <= FBP_KC ? M : r0 + FBP_KC;                  \
        c = VFMA(va, NAME##_chain(s, lds, v, ldv, r0, r1), c);                  \
        r0 = r1;                                                                \
    } while (r0 < M);                                                           \
    NAME##_st(w, c);                                                            \
}                                                                               \
/* The deltas of layers L-1 .. 1 (delta_L in the buffer), then the SGD step    \
 * W_k -= lr delta_{k+1}^T A_k on both copies of every W_k. */                  \
TGT INLINE void NAME##_bwd_m(const fbp_packed *p, const int64_t *sizes, T *buf, \
                             int hidden, int64_t M, T alpha, int one)           \
{                                                                               \
    const int L = p->n_layers;                                                  \
    const VT va = (VT){} + alpha;                                               \
    for (int k = L - 1; k > 0; k--) {                                           \
        const int64_t no = sizes[k + 1], nv = one ? 1 : p->nv[k];               \
        const int64_t ldi = p->ld[k], ldo = p->ld[k + 1];                       \
        const T *wn = buf + p->wn[k];                                           \
        for (int64_t r = 0; r < M; r++) {                                       \
            const T *d = buf + p->delta[k + 1] + r * ldo;                       \
            const T *h = buf + p->act[k] + r * ldi;                             \
            T *out = buf + p->delta[k] + r * ldi;                               \
            for (int64_t v = 0; v < nv; v++) {                                  \
                VT a = {0};                                                     \
                for (int64_t j = 0; j < no; j++)                                \
                    a = VFMA((VT){} + d[j], NAME##_ld(wn + j * ldi + v * VL), a); \
                const VT x = NAME##_ld(h + v * VL);                             \
                if (hidden == FBP_ACT_SIGMOID) a = a * (x * ((T)1 - x));        \
                else if (hidden == FBP_ACT_RELU)                                \
                    a = a * (VT)((VI)((VT){} + (T)1) & (x > 0));                \
                else if (hidden == FBP_ACT_TANH) a = a * (((T)1 - x) * ((T)1 + x)); \
                NAME##_st(out + v * VL, a);                                     \
            }                                                                   \
        }                                                                       \
    }                                                                           \
    for (int k = 0; k < L; k++) {                                               \
        const int64_t ni = sizes[k], no = sizes[k + 1];                         \
        const int64_t ldi = p->ld[k], ldo = p->ld[k + 1];                       \
        const T *h = buf + p->act[k], *d = buf + p->delta[k + 1];               \
        const int64_t nvi = one ? 1 : p->nv[k], nvo = one ? 1 : p->nv[k + 1];   \
        T *wn = buf + p->wn[k], *wt = buf + p->wt[k];                           \
        for (int64_t j = 0; j < no; j++)                                        \
            for (int64_t v = 0; v < nvi; v++)                                   \
                NAME##_upd(wn + j * ldi + v * VL, va, d + j, ldo, h + v * VL, ldi, M); \
        for (int64_t i = 0; i < ni; i++)                                        \
            for (int64_t v = 0; v < nvo; v++)                                   \
                NAME##_upd(wt + i * ldo + v * VL, va, h + i, ldi, d + v * VL, ldo, M); \
    }                                                                           \
}                                                                               \
static TGT void NAME##_bwd(const fbp_packed *p, const int64_t *sizes, T *buf,   \
                           int hidden, int64_t M, T alpha)                      \
{                                                                               \
    if (p->one && M == 1) NAME##_bwd_m(p, sizes, buf, hidden, 1, alpha, 1);     \
    else if (M == 1) NAME##_bwd_m(p, sizes, buf, hidden, 1, alpha, 0);          \
    else NAME##_bwd_m(p, sizes, buf, hidden, M, alpha, 0);                      \
}

DEFINE_PACKED(pk_plain_f32, float, f32, f32, vf32, vi32, 8, SFMA_PLAIN, )
DEFINE_PACKED(pk_plain_f64, double, f64, f64, vf64, vi64, 4, SFMA_PLAIN, )
#ifdef FBP_X86
DEFINE_PACKED(pk_fma_f32, float, f32, f32f, vf32, vi32, 8, vfma_f32, TARGET_FMA)
DEFINE_PACKED(pk_fma_f64, double, f64, f64f, vf64, vi64, 4, vfma_f64, TARGET_FMA)
#endif

#define DEFINE_PACKED_TABLE(T, SFX)                                             \
static const fbp_packed_ops_##SFX packed_##SFX##_table[N_ISA] = {              \
    {pk_plain_##SFX##_pack, pk_plain_##SFX##_unpack, pk_plain_##SFX##_fwd,      \
     pk_plain_##SFX##_bwd},                                                     \
    PACKED_FMA_ENTRIES(SFX)                                                     \
};                                                                              \
const fbp_packed_ops_##SFX *fbp_packed_##SFX(void)                              \
{                                                                               \
    return &packed_##SFX##_table[current_isa()];                                \
}
#ifdef FBP_X86
#define PACKED_FMA_ENTRIES(SFX)                                                 \
    {pk_fma_##SFX##_pack, pk_fma_##SFX##_unpack, pk_fma_##SFX##_fwd, pk_fma_##SFX##_bwd}, \
    {pk_fma_##SFX##_pack, pk_fma_##SFX##_unpack, pk_fma_##SFX##_fwd, pk_fma_##SFX##_bwd},
#else
#define PACKED_FMA_ENTRIES(SFX)
#endif
DEFINE_PACKED_TABLE(float, f32)
DEFINE_PACKED_TABLE(double, f64)
