/* fbp_vmath.h: the lane-wise vector exp / sigmoid / tanh (internal, not
 * installed), one source for the GEMM's epilogue (fbp_gemm_internal.h, so
 * fbp_gemm*.c and fbp_narrow.c) and the fused batch-1 loop (fbp_tiny.h,
 * included into _kernels.c).
 *
 * Design
 * ------
 * Static inline functions only: no state, no ABI.  Every mul and add is
 * rounded on its own, an FMA only where an instance asks for one (MADD):
 * the bits of a lane must not depend on which compilation unit, caller or
 * vector width computes it.  Contraction is therefore off for the code of
 * this header, and only for it, so that a file can include it anywhere
 * without its other functions changing:
 *   - GCC: push_options / optimize("fp-contract=off") / pop_options around
 *     the definitions.  GCC decides contraction per function after inlining,
 *     so a caller must be compiled with contraction off too (fbp_gemm_internal.h
 *     turns it off for its whole file, fbp_tiny.h for its own functions);
 *   - clang: the standard's `#pragma STDC FP_CONTRACT OFF` at the start of
 *     each function body (FBP_VM_NOFUSE), in force to the end of that body
 *     (C11 7.12.2) and kept by the operations after inlining.
 * -Wpsabi is off from here on, as it was in both including headers.
 */
#ifndef FBP_VMATH_H
#define FBP_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#ifndef FBP_X86
#define FBP_X86 1
#endif
#include <immintrin.h>
#endif

#if defined(__clang__)
#define FBP_VM_NOFUSE _Pragma("STDC FP_CONTRACT OFF")
#else
#define FBP_VM_NOFUSE
#endif
/* The 32-byte vector helpers below are static inline: no ABI is exposed. */
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

#define FBP_VM_INLINE static inline __attribute__((always_inline))

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
 * cvt: exact integral float -> int (a NaN lane, whose result is NaN
 * whatever 2^n is, gives some int: 0 in the single-lane instances, where a
 * cast of NaN would be undefined; the x86 vector conversion's INT_MIN,
 * whose low bits are 0's, so 2^n comes out the same); shl: i << s on the
 * lane's bits as unsigned (2^n is built from n + bias, negative for a NaN
 * lane: a signed left shift of it would be undefined; the same bits).  The vector ones exist once per target
 * (TGT: none for the generic instances, TARGET_FMA for the "f" ones, suffix
 * f32f / f64f), so that no function taking or returning a 32-byte vector is
 * called from one of another target: clang rejects such calls (the AVX
 * vector ABI differs), whether or not they are inlined. */
#define DEFINE_VTYPES(T, VT, VI, VU, IT, UT, VL)                                \
typedef T VT __attribute__((vector_size(VL * sizeof(T))));                      \
typedef IT VI __attribute__((vector_size(VL * sizeof(T))));                     \
typedef UT VU __attribute__((vector_size(VL * sizeof(T))));
#define DEFINE_VLANES(T, SFX, VT, VI, VU, TGT)                                  \
TGT FBP_VM_INLINE VT splat_##SFX(T c) { return (VT){} + c; }                    \
TGT FBP_VM_INLINE VI shl_##SFX(VI i, int s) { return (VI)((VU)i << s); }        \
TGT FBP_VM_INLINE VI bits_##SFX(VT x) { return (VI)x; }                         \
TGT FBP_VM_INLINE VT frombits_##SFX(VI i) { return (VT)i; }                     \
TGT FBP_VM_INLINE VT sel_##SFX(VI m, VT a, VT b)                                \
{                                                                               \
    return (VT)(((VI)a & m) | ((VI)b & ~m));                                    \
}                                                                               \
TGT FBP_VM_INLINE VI cvt_##SFX(VT n) { return __builtin_convertvector(n, VI); }
#define DEFINE_SLANES(T, SFX, IT, UT)                                           \
FBP_VM_INLINE T splat_##SFX(T c) { return c; }                                  \
FBP_VM_INLINE IT shl_##SFX(IT i, int s) { return (IT)((UT)i << s); }            \
FBP_VM_INLINE IT bits_##SFX(T x) { IT i; memcpy(&i, &x, sizeof i); return i; }  \
FBP_VM_INLINE T frombits_##SFX(IT i) { T x; memcpy(&x, &i, sizeof x); return x; } \
FBP_VM_INLINE T sel_##SFX(IT m, T a, T b) { return m ? a : b; }                 \
FBP_VM_INLINE IT cvt_##SFX(T n) { return n == n ? (IT)n : 0; }

#define DEFINE_VMATH(T, SFX, LSFX, VT, VI, IT, NTAYLOR, MANT, BIAS, XMAX, XMIN, \
                     MADD, TGT)                                                 \
/* expm1(r) = r * sum_{k < NTAYLOR} r^k / (k+1)!, the sum by Estrin's scheme    \
 * (pairs with r, then with r^2, r^4, r^8: a dependency chain of 4 mul+add      \
 * levels instead of NTAYLOR - 1 for Horner's; the latency matters for the      \
 * few-element rows of tiny nets). */                                           \
TGT FBP_VM_INLINE VT vexpm1_taylor_##SFX(VT r)                                  \
{                                                                               \
    FBP_VM_NOFUSE                                                               \
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
TGT FBP_VM_INLINE VT vexp_##SFX(VT x)                                           \
{                                                                               \
    FBP_VM_NOFUSE                                                               \
    const VT hi = splat_##LSFX((T)XMAX), lo = splat_##LSFX((T)XMIN);            \
    const VI big = x > hi, tiny = x < lo;                                       \
    VT xc = sel_##LSFX(big, hi, sel_##LSFX(tiny, lo, x));                       \
    const T magic = (T)1.5 * ((IT)1 << MANT);                                   \
    VT n = MADD(xc, splat_##LSFX((T)1.44269504088896340736),                    \
                splat_##LSFX(magic)) - magic;                                   \
    VT r = MADD(n, splat_##LSFX((T)-0.693145751953125), xc);                    \
    r = MADD(n, splat_##LSFX((T)-1.42860682030941723212e-6), r);                \
    const VT s = frombits_##LSFX(shl_##LSFX(cvt_##LSFX(n) + (BIAS - 1), MANT)); \
    VT y = MADD(vexpm1_taylor_##SFX(r), s, s) * (T)2; /* (1 + expm1) s 2 */     \
    y = sel_##LSFX(big, splat_##LSFX((T)INFINITY), y);                          \
    return sel_##LSFX(tiny, splat_##LSFX(0), y);                                \
}                                                                               \
/* expm1(y) for y <= 0 (tanh's), without the cancellation of exp(y) - 1:        \
 * 2^n (1 + p) - 1 = p 2^n + (2^n - 1), 2^n - 1 exact while it matters; y       \
 * below the normal range gives -1; NaN propagates. */                          \
TGT FBP_VM_INLINE VT vexpm1_neg_##SFX(VT y)                                     \
{                                                                               \
    FBP_VM_NOFUSE                                                               \
    const VT lo = splat_##LSFX((T)XMIN);                                        \
    const VT xc = sel_##LSFX(y < lo, lo, y);                                    \
    const T magic = (T)1.5 * ((IT)1 << MANT);                                   \
    VT n = MADD(xc, splat_##LSFX((T)1.44269504088896340736),                    \
                splat_##LSFX(magic)) - magic;                                   \
    VT r = MADD(n, splat_##LSFX((T)-0.693145751953125), xc);                    \
    r = MADD(n, splat_##LSFX((T)-1.42860682030941723212e-6), r);                \
    const VT s = frombits_##LSFX(shl_##LSFX(cvt_##LSFX(n) + BIAS, MANT));       \
    return MADD(vexpm1_taylor_##SFX(r), s, s - (T)1);                           \
}                                                                               \
TGT FBP_VM_INLINE VT vsigmoid_##SFX(VT z)                                       \
{                                                                               \
    FBP_VM_NOFUSE                                                               \
    return (T)1 / ((T)1 + vexp_##SFX(-z));                                      \
}                                                                               \
TGT FBP_VM_INLINE VT vtanh_##SFX(VT z)                                          \
{                                                                               \
    FBP_VM_NOFUSE                                                               \
    const VI sign = bits_##LSFX(z) & bits_##LSFX(-splat_##LSFX(0)); /* -(+0) */ \
    const VT y = (T)-2 * frombits_##LSFX(bits_##LSFX(z) & ~sign);               \
    const VI near0 = y >= (T)-0.34657359027997264;                              \
    const VT e = sel_##LSFX(near0, vexpm1_taylor_##SFX(y),                      \
                            vexpm1_neg_##SFX(y));                               \
    return frombits_##LSFX(bits_##LSFX(-e / ((T)2 + e)) | sign);                \
}

/* 32-byte vectors and single lanes: the same code, lane by lane the same
 * operations, so the same bits. */
DEFINE_VTYPES(float, vf32, vi32, vu32, int32_t, uint32_t, 8)
DEFINE_VTYPES(double, vf64, vi64, vu64, int64_t, uint64_t, 4)
DEFINE_VLANES(float, f32, vf32, vi32, vu32, )
DEFINE_SLANES(float, f32s, int32_t, uint32_t)
DEFINE_VLANES(double, f64, vf64, vi64, vu64, )
DEFINE_SLANES(double, f64s, int64_t, uint64_t)
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
DEFINE_VLANES(float, f32f, vf32, vi32, vu32, TARGET_FMA)
DEFINE_VLANES(double, f64f, vf64, vi64, vu64, TARGET_FMA)
TARGET_FMA FBP_VM_INLINE vf32 vfma_f32(vf32 a, vf32 b, vf32 c)
{
    return (vf32)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
TARGET_FMA FBP_VM_INLINE vf64 vfma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
DEFINE_VMATH(float, f32f, f32f, vf32, vi32, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             vfma_f32, TARGET_FMA)
DEFINE_VMATH(float, f32fs, f32s, float, int32_t, int32_t, 7, 23, 127, 88.72283935546875, -87.3365478515625,
             __builtin_fmaf, TARGET_FMA)
DEFINE_VMATH(double, f64f, f64f, vf64, vi64, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             vfma_f64, TARGET_FMA)
DEFINE_VMATH(double, f64fs, f64s, double, int64_t, int64_t, 13, 52, 1023, 709.782712893384, -708.3964185322641,
             __builtin_fma, TARGET_FMA)
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif /* FBP_VMATH_H */
