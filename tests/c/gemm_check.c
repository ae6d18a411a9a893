/* gemm_check.c: standalone correctness check of the GEMM (src/fbp_*.c).
 *
 * Compiled and run by tests/test_gemm_c.py:
 *     gcc -O3 -std=gnu11 -fopenmp -Isrc tests/c/gemm_check.c src/fbp_*.c -lm
 * For every code path the CPU supports (fbp_gemm_set_isa), both dtypes, all
 * four transpose combinations, alpha/beta (beta = 0 with a NaN-filled C),
 * leading dimensions wider than the matrices, bias on/off, every activation
 * and the dsrc epilogue, it compares against a double-precision triple loop
 * with an error bound, checks that the padding between N and ldc is never
 * written, and that n_threads = 2, 3, 8 give the same bits as n_threads = 1.
 * The activations are also checked alone over their whole range (+-0, tiny,
 * near the exp overflow/underflow thresholds, inf, NaN) to 4 ulp, and their
 * max error in ulps against long double libm is measured over a sweep and
 * printed (fails above 4 ulp).
 *
 * Per-element invariance (the contract in fbp_gemm.h): for many shapes (M, N
 * 1..300, K = 1, 7, 255, 256, 257, 600, straddling the small/blocked switch,
 * MR/NR/MC edges and the KC slab boundary) it computes a full C, then
 * recomputes random row ranges, column ranges, single rows/columns and single
 * elements as sub-problems (pointer offsets into A, B, C, bias, dsrc and
 * sub-sizes, so the code path changes; sometimes copied into arrays with
 * other leading dimensions), with n_threads 1, 2, 3, and requires bitwise
 * equality.  Every epilogue (bias, each activation, dsrc), the alpha/beta
 * pairs fastbp uses (1/0, -lr/1) and a generic pair, all transposes, both
 * dtypes, every ISA this CPU supports.  The same with the packing-buffer
 * allocation made to fail (aligned_alloc is interposed below): the fallback
 * must give the same bits.
 *
 * Pre-packed op(B) (fbp_gemm_pack_b_*, fbp_gemm_packed_*): for every ISA,
 * both dtypes, all transposes, every epilogue and the alpha/beta pairs
 * above, on shapes M = 1..13 x N (not multiples of NR) x K = 1..600 (many
 * of them small-path or AVX2-tile shapes for the unpacked call), MR/NR/MC/KC
 * edges, N > NC = 4096 (two panels) and K = 0, the packed call must equal
 * the unpacked one (n_threads = 1) bitwise: with op(B) packed in one range
 * and in random NR-aligned ranges in shuffled order (sometimes two threads
 * at once), each range writing only its own elements (every element of the
 * packed buffer by exactly one range), nothing outside
 * fbp_gemm_packed_size elements (guards on both sides), on all rows and on
 * random row tiles, on a Bp off the vector alignment, and in a fresh thread
 * whose buffer allocation fails.
 * Packed by rows (fbp_gemm_pack_b_rows_*): random row ranges (off and
 * across the KC = 256 slab boundary, K up to 777, N across the panel),
 * each writing only its own elements, equal to the column pack's, every
 * element by exactly one range, none outside; in shuffled order (sometimes
 * two threads at once) bitwise the column pack; the packed call on it
 * equals the unpacked call.
 *
 * 64-bit indices: the same products with every leading dimension 2**31 + 7
 * (so row 1 of each operand starts past 2**31 elements: an int or 32-bit
 * long anywhere in the index arithmetic would wrap), on sparse mappings of
 * which only the touched pages exist, must equal the compact computation
 * bitwise (small and blocked paths, 1 and 2 threads, every transpose).
 *
 * Prints one line per failure and a summary; exit status 1 on any failure.
 * Argument "quick" runs a reduced set (used for the sanitizer build).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "fbp_gemm.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static long n_cases, n_fail;
static const char *isa_now = "?";

/* The library's packing buffers come from aligned_alloc; this definition in
 * the executable takes precedence over libc's, so the test can make it fail. */
static int fail_alloc;
static long n_refused;
void *aligned_alloc(size_t alignment, size_t size)
{
    void *p;
    if (__atomic_load_n(&fail_alloc, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&n_refused, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    return posix_memalign(&p, alignment < sizeof(void *) ? sizeof(void *)
                                                         : alignment, size)
           ? NULL : p;
}

static double ref_act(double z, int act)
{
    switch (act) {
    case FBP_ACT_SIGMOID: return 1.0 / (1.0 + exp(-z));
    case FBP_ACT_RELU: return z > 0 ? z : 0.0;
    case FBP_ACT_TANH: return tanh(z);
    default: return z;
    }
}

static double ref_dact(double a, int act)
{
    switch (act) {
    case FBP_ACT_SIGMOID: return a * (1.0 - a);
    case FBP_ACT_RELU: return a > 0 ? 1.0 : 0.0;
    case FBP_ACT_TANH: return 1.0 - a * a;
    default: return 1.0;
    }
}

struct cfg {
    int ta, tb, M, N, K, pad, bias, act, dsrc, poison;
    double alpha, beta;
};

#define SENTINEL 12345.0

#define DEFINE_CHECK(T, SFX, EPS)                                               \
static void check_##SFX(struct cfg g, int threads_check)                        \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    const int ar = g.ta ? K : M, ac = g.ta ? M : K;                             \
    const int br = g.tb ? N : K, bc = g.tb ? K : N;                             \
    const int lda = ac + g.pad, ldb = bc + 2 * g.pad, ldc = N + g.pad;          \
    const int ldd = N + 3 * g.pad;                                              \
    T *A = malloc(sizeof(T) * ((size_t)ar * lda + 1));                          \
    T *B = malloc(sizeof(T) * ((size_t)br * ldb + 1));                          \
    T *C0 = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *C = malloc(sizeof(T) * (size_t)M * ldc);                                 \
    T *C1 = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *D = malloc(sizeof(T) * ((size_t)M * ldd + 1));                           \
    T *bias = malloc(sizeof(T) * N);                                            \
    for (long i = 0; i < (long)ar * lda; i++) A[i] = (T)urand();                \
    for (long i = 0; i < (long)br * ldb; i++) B[i] = (T)urand();                \
    for (int j = 0; j < N; j++) bias[j] = (T)urand();                           \
    for (long i = 0; i < (long)M * ldd; i++) {                                  \
        double u = urand();                                                     \
        D[i] = (T)(g.act == FBP_ACT_SIGMOID ? 0.5 + 0.5 * u                     \
                   : g.act == FBP_ACT_RELU ? (u > 0 ? u : 0) : u);              \
    }                                                                           \
    for (int i = 0; i < M; i++)                                                 \
        for (int j = 0; j < ldc; j++)                                           \
            C0[(long)i * ldc + j] = j >= N ? (T)SENTINEL                        \
                                  : g.beta == 0 ? (T)NAN : (T)urand();          \
    if (g.poison) { /* one NaN and one Inf in op(A): must propagate */          \
        A[0] = (T)NAN;                                                          \
        A[(long)(ar - 1) * lda + ac - 1] = (T)INFINITY;                         \
    }                                                                           \
    const T *bp = g.bias ? bias : NULL, *dp = g.dsrc ? D : NULL;                \
    memcpy(C, C0, sizeof(T) * (size_t)M * ldc);                                 \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C, ldc, bp, g.act, dp, ldd, 1);                              \
    n_cases++;                                                                  \
    int bad = 0;                                                                \
    for (int i = 0; i < M && bad < 3; i++)                                      \
        for (int j = 0; j < ldc && bad < 3; j++) {                              \
            const double got = C[(long)i * ldc + j];                            \
            if (j >= N) {                                                       \
                if (got != SENTINEL) {                                          \
                    printf("FAIL %s %s ta=%d tb=%d M=%d N=%d K=%d: padding "    \
                           "C[%d][%d] written\n", isa_now, #SFX, g.ta, g.tb,    \
                           M, N, K, i, j);                                      \
                    bad++;                                                      \
                }                                                               \
                continue;                                                       \
            }                                                                   \
            double s = 0, sa = 0;                                               \
            for (int k = 0; k < K; k++) {                                       \
                double a = g.ta ? A[(long)k * lda + i] : A[(long)i * lda + k];  \
                double b = g.tb ? B[(long)j * ldb + k] : B[(long)k * ldb + j];  \
                s += a * b;                                                     \
                sa += fabs(a * b);                                              \
            }                                                                   \
            double c = g.alpha * s, scale = fabs(g.alpha) * sa;                 \
            if (g.beta != 0) {                                                  \
                double c0 = C0[(long)i * ldc + j];                              \
                c += g.beta * c0;                                               \
                scale += fabs(g.beta * c0);                                     \
            }                                                                   \
            if (g.bias) { c += bias[j]; scale += fabs(bias[j]); }               \
            double want;                                                        \
            if (g.dsrc) {                                                       \
                double d = ref_dact(D[(long)i * ldd + j], g.act);               \
                want = c * d;                                                   \
                scale *= fabs(d);                                               \
            } else {                                                            \
                want = ref_act(c, g.act);                                       \
            }                                                                   \
            double tol = (K + 8) * EPS * scale + 8 * EPS * (1 + fabs(want));    \
            int ok = isnan(want) ? isnan(got)                                   \
                   : isinf(want) ? got == want                                  \
                   : fabs(got - want) <= tol;                                   \
            if (!ok) {                                                          \
                printf("FAIL %s %s ta=%d tb=%d M=%d N=%d K=%d pad=%d a=%g "     \
                       "b=%g bias=%d act=%d dsrc=%d: C[%d][%d]=%.9g want "      \
                       "%.9g (tol %.3g)\n", isa_now, #SFX, g.ta, g.tb, M, N,    \
                       K, g.pad, g.alpha, g.beta, g.bias, g.act, g.dsrc, i, j,  \
                       got, want, tol);                                         \
                bad++;                                                          \
            }                                                                   \
        }                                                                       \
    if (threads_check) {                                                        \
        static const int nts[] = {2, 3, 8};                                     \
        for (int t = 0; t < 3; t++) {                                           \
            memcpy(C1, C0, sizeof(T) * (size_t)M * ldc);                        \
            fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb,     \
                           (T)g.beta, C1, ldc, bp, g.act, dp, ldd, nts[t]);     \
            if (memcmp(C, C1, sizeof(T) * (size_t)M * ldc) != 0) {              \
                printf("FAIL %s %s ta=%d tb=%d M=%d N=%d K=%d: n_threads=%d "   \
                       "differs from n_threads=1\n", isa_now, #SFX, g.ta,       \
                       g.tb, M, N, K, nts[t]);                                  \
                bad++;                                                          \
            }                                                                   \
        }                                                                       \
    }                                                                           \
    if (bad) n_fail++;                                                          \
    free(A); free(B); free(C0); free(C); free(C1); free(D); free(bias);         \
}

DEFINE_CHECK(float, f32, 5.96e-8)
DEFINE_CHECK(double, f64, 1.12e-16)

/* Activations over their whole range (incl. +-0, huge, inf, NaN) on the
 * blocked path: C[i][j] = z[j] via M x 1 ones times a 1 x N row of z. */
#define ACT_RANGE_N 80
#define DEFINE_ACT_RANGE(T, SFX, EPS, TINY)                                     \
static void act_range_##SFX(void)                                               \
{                                                                               \
    static const double mags[] = {0, 1e-30, 1e-8, 1e-3, 0.1, 0.17, 0.1733,     \
        0.35, 0.5, 1, 2, 5, 9, 10, 15, 20, 40, 44, 50, 80, 87, 87.5, 88, 88.7,  \
        89, 100, 104, 700, 708, 709, 710, 745, 800, 1e30, INFINITY};            \
    enum { NM = sizeof mags / sizeof *mags, M = 70 };                           \
    T z[ACT_RANGE_N], ones[M], *C = malloc(sizeof(T) * M * ACT_RANGE_N);        \
    int n = 0;                                                                  \
    for (int i = 0; i < NM; i++) { z[n++] = (T)mags[i]; z[n++] = -(T)mags[i]; } \
    z[n++] = (T)NAN;                                                            \
    for (int i = 0; i < M; i++) ones[i] = 1;                                    \
    for (int act = 0; act < 4; act++) {                                         \
        fbp_gemm_##SFX(0, 0, M, n, 1, 1, ones, 1, z, n, 0, C, n, NULL, act,     \
                       NULL, 0, 1);                                             \
        n_cases++;                                                              \
        int bad = 0;                                                            \
        for (int i = 0; i < M; i += M - 1)                                      \
            for (int j = 0; j < n; j++) {                                       \
                const double got = C[i * n + j], want = ref_act(z[j], act);     \
                const int ok = isnan(want) ? isnan(got)                         \
                    : isinf(want) ? got == want                                 \
                    : fabs(got - want) <= 4 * EPS * fabs(want) + TINY &&        \
                      (want == 0 || !signbit(got) == !signbit(want));           \
                if (!ok && bad++ < 3)                                           \
                    printf("FAIL %s %s act=%d z=%.9g: %.9g want %.9g\n",        \
                           isa_now, #SFX, act, (double)z[j], got, want);        \
            }                                                                   \
        if (bad) n_fail++;                                                      \
    }                                                                           \
    free(C);                                                                    \
}

DEFINE_ACT_RANGE(float, f32, 5.96e-8, 2.4e-38)
DEFINE_ACT_RANGE(double, f64, 1.12e-16, 4.5e-308)

/* Accuracy of sigmoid / tanh (the library's own exp) against a long double
 * libm reference: max error in ulps of the true value over a sweep of z
 * (wide range, |z| < 1 and |z| < 0.4 where tanh switches formula), on the
 * small path (N = 4096) and the blocked one (N = 4097, K = 1).  Printed, and
 * a failure above ULP_MAX. */
#define ULP_MAX 4.0
#define DEFINE_ULP_SWEEP(T, SFX, NEXT)                                          \
static double ulp_##SFX(T got, long double want)                                \
{                                                                               \
    const T w = (T)want;                                                        \
    if (w == 0) return got == 0 ? 0 : 1e30;                                     \
    const T u = NEXT(w < 0 ? -w : w, (T)INFINITY) - (w < 0 ? -w : w);           \
    return (double)(fabsl((long double)got - want) / u);                        \
}                                                                               \
static void ulp_sweep_##SFX(int quick)                                          \
{                                                                               \
    enum { NZ = 4097 };                                                         \
    T *z = malloc(sizeof(T) * NZ), *c = malloc(sizeof(T) * NZ), one = 1;        \
    const long rounds = quick ? 30 : 300;                                       \
    for (int act = FBP_ACT_SIGMOID; act <= FBP_ACT_TANH; act += 2) {            \
        double worst = 0, zw = 0;                                               \
        for (long r = 0; r < rounds; r++) {                                     \
            const double lim = r % 3 == 0 ? (act == FBP_ACT_SIGMOID ? 88 : 20)  \
                             : r % 3 == 1 ? 1.0 : 0.4;                          \
            const int n = NZ - (r & 1); /* 4097 blocked, 4096 small */          \
            for (int i = 0; i < n; i++) {                                       \
                double u = (r * NZ + i) * 0.6180339887498949;                   \
                z[i] = (T)((2 * (u - floor(u)) - 1) * lim);                     \
            }                                                                   \
            fbp_gemm_##SFX(0, 0, 1, n, 1, 1, &one, 1, z, n, 0, c, n, NULL, act, \
                           NULL, 0, 1);                                         \
            for (int i = 0; i < n; i++) {                                       \
                const long double zl = z[i];                                    \
                const long double w = act == FBP_ACT_SIGMOID                    \
                    ? 1 / (1 + expl(-zl)) : tanhl(zl);                          \
                const double e = ulp_##SFX(c[i], w);                            \
                if (e > worst) { worst = e; zw = z[i]; }                        \
            }                                                                   \
        }                                                                       \
        n_cases++;                                                              \
        printf("  %s %s %-7s max error %.2f ulp (z = %.9g)%s\n", isa_now, #SFX, \
               act == FBP_ACT_SIGMOID ? "sigmoid" : "tanh", worst, zw,          \
               worst > ULP_MAX ? "  FAIL" : "");                                \
        if (worst > ULP_MAX) n_fail++;                                          \
    }                                                                           \
    free(z); free(c);                                                           \
}
DEFINE_ULP_SWEEP(float, f32, nextafterf)
DEFINE_ULP_SWEEP(double, f64, nextafter)

static void check(struct cfg g, int threads_check)
{
    check_f32(g, threads_check);
    check_f64(g, threads_check);
}

/* Cycle the options so that every combination of the cheap ones is hit. */
static unsigned opt_counter;
static struct cfg make(int ta, int tb, int M, int N, int K)
{
    static const double alphas[] = {1.0, -0.5, 0.37};
    static const double betas[] = {0.0, 1.0, -0.7};
    unsigned u = opt_counter++;
    struct cfg g = {ta, tb, M, N, K, 0, 0, 0, 0, 0, 1.0, 0.0};
    g.pad = (int)(u % 3 == 0 ? 0 : u % 5);
    g.alpha = alphas[u % 3];
    g.beta = betas[(u / 3) % 3];
    g.bias = (u / 2) % 2;
    g.act = (int)((u / 4) % 4);
    g.dsrc = (u / 16) % 2;
    return g;
}

/* ------------------------------------------------------------------------ */
/* Per-element invariance                                                    */
/* ------------------------------------------------------------------------ */

struct icfg {
    int ta, tb, M, N, K, bias, act, dsrc, nt;
    double alpha, beta;
};

static unsigned irand(unsigned n) /* uniform in [0, n) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((rng_state >> 33) % n);
}

/* Random layout of op(X) (rows x cols of op(X); trans: stored transposed)
 * with leading dimension = stored width + pad. */
#define DEFINE_INVAR(T, SFX)                                                    \
static T *relayout_##SFX(const T *X, long ldx, int trans, int r0, int rows,     \
                         int c0, int cols, int pad, int *ld_out)                \
{   /* op(X)[r0:r0+rows, c0:c0+cols] into a fresh array, same trans */          \
    const int sr = trans ? cols : rows, sc = trans ? rows : cols;               \
    const int ld = sc + pad;                                                    \
    T *Y = malloc(sizeof(T) * ((size_t)sr * ld + 1));                           \
    for (int r = 0; r < sr; r++)                                                \
        for (int c = 0; c < ld; c++)                                            \
            Y[(long)r * ld + c] = c >= sc ? (T)NAN                              \
                : trans ? X[(long)(c0 + r) * ldx + r0 + c]                      \
                        : X[(long)(r0 + r) * ldx + c0 + c];                     \
    *ld_out = ld;                                                               \
    return Y;                                                                   \
}                                                                               \
                                                                                \
struct call_##SFX {                                                             \
    int ta, tb, M, N, K, lda, ldb, ldc, act, ldd, nt;                           \
    T alpha, beta;                                                              \
    const T *A, *B, *bias, *dsrc;                                               \
    T *C;                                                                       \
};                                                                              \
static void *call_##SFX(void *arg)                                              \
{                                                                               \
    const struct call_##SFX *q = arg;                                           \
    fbp_gemm_##SFX(q->ta, q->tb, q->M, q->N, q->K, q->alpha, q->A, q->lda,      \
                   q->B, q->ldb, q->beta, q->C, q->ldc, q->bias, q->act,        \
                   q->dsrc, q->ldd, q->nt);                                     \
    return NULL;                                                                \
}                                                                               \
                                                                                \
/* Full C once, then `nsub` sub-problems compared bitwise with it.  nomem:     \
 * each sub-problem runs in a fresh thread (its thread-local packing buffer,  \
 * and its OpenMP team's, still empty) while aligned_alloc fails. */           \
static void invar_##SFX(struct icfg g, int nsub, int nomem)                     \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    const int ar = g.ta ? K : M, ac = g.ta ? M : K;                             \
    const int br = g.tb ? N : K, bc = g.tb ? K : N;                             \
    const int lda = ac + 1, ldb = bc + 3, ldc = N + 2, ldd = N + 1;             \
    T *A = malloc(sizeof(T) * ((size_t)ar * lda + 1));                          \
    T *B = malloc(sizeof(T) * ((size_t)br * ldb + 1));                          \
    T *C0 = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *C = malloc(sizeof(T) * (size_t)M * ldc);                                 \
    T *Cs = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *D = malloc(sizeof(T) * ((size_t)M * ldd + 1));                           \
    T *bias = malloc(sizeof(T) * N);                                            \
    for (long i = 0; i < (long)ar * lda; i++) A[i] = (T)urand();                \
    for (long i = 0; i < (long)br * ldb; i++) B[i] = (T)urand();                \
    for (int j = 0; j < N; j++) bias[j] = (T)urand();                           \
    for (long i = 0; i < (long)M * ldd; i++) {                                  \
        double u = urand();                                                     \
        D[i] = (T)(g.act == FBP_ACT_SIGMOID ? 0.5 + 0.5 * u                     \
                   : g.act == FBP_ACT_RELU ? (u > 0 ? u : 0) : u);              \
    }                                                                           \
    for (long i = 0; i < (long)M * ldc; i++)                                    \
        C0[i] = g.beta == 0 ? (T)NAN : (T)(4 * urand());                        \
    const T *bp = g.bias ? bias : NULL, *dp = g.dsrc ? D : NULL;                \
    memcpy(C, C0, sizeof(T) * (size_t)M * ldc);                                 \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C, ldc, bp, g.act, dp, ldd, g.nt);                           \
    int bad = 0;                                                                \
    for (int s = 0; s < nsub && bad < 3; s++) {                                 \
        int i0, mi, j0, nj;                                                     \
        switch (s % 6) {                                                        \
        case 0: i0 = irand(M); mi = 1; j0 = irand(N); nj = 1; break;            \
        case 1: i0 = irand(M); mi = 1; j0 = 0; nj = N; break;                   \
        case 2: i0 = 0; mi = M; j0 = irand(N); nj = 1; break;                   \
        case 3: i0 = irand(M); mi = 1 + irand(M - i0); j0 = 0; nj = N; break;   \
        case 4: i0 = 0; mi = M; j0 = irand(N); nj = 1 + irand(N - j0); break;   \
        default: i0 = irand(M); mi = 1 + irand(M - i0);                         \
                 j0 = irand(N); nj = 1 + irand(N - j0); break;                  \
        }                                                                       \
        const int nt = 1 + irand(3), relay = s % 4 == 3;                        \
        const T *As = g.ta ? A + i0 : A + (long)i0 * lda;                       \
        const T *Bs = g.tb ? B + (long)j0 * ldb : B + j0;                       \
        int ldas = lda, ldbs = ldb, ldcs = ldc;                                 \
        T *Ar = NULL, *Br = NULL, *Cr = NULL;                                   \
        memcpy(Cs, C0, sizeof(T) * (size_t)M * ldc);                            \
        T *Cp = Cs + (long)i0 * ldc + j0;                                       \
        if (relay) { /* other leading dimensions, fresh arrays */               \
            Ar = relayout_##SFX(A, lda, g.ta, i0, mi, 0, K, 5, &ldas);          \
            Br = relayout_##SFX(B, ldb, g.tb, 0, K, j0, nj, 2, &ldbs);          \
            Cr = relayout_##SFX(C0, ldc, 0, i0, mi, j0, nj, 7, &ldcs);          \
            As = Ar; Bs = Br; Cp = Cr;                                          \
        }                                                                       \
        struct call_##SFX q = {g.ta, g.tb, mi, nj, K, ldas, ldbs, ldcs, g.act,  \
                               ldd, nt, (T)g.alpha, (T)g.beta, As, Bs,          \
                               bp ? bp + j0 : NULL,                             \
                               dp ? dp + (long)i0 * ldd + j0 : NULL, Cp};       \
        if (nomem) {                                                            \
            pthread_t th;                                                       \
            __atomic_store_n(&fail_alloc, 1, __ATOMIC_RELAXED);                 \
            const int err = pthread_create(&th, NULL, call_##SFX, &q);          \
            if (!err) pthread_join(th, NULL);                                   \
            __atomic_store_n(&fail_alloc, 0, __ATOMIC_RELAXED);                 \
            if (err) {                                                          \
                printf("FAIL cannot create a thread\n");                        \
                bad++;                                                          \
            }                                                                   \
        } else {                                                                \
            call_##SFX(&q);                                                     \
        }                                                                       \
        n_cases++;                                                              \
        for (int i = 0; i < mi && bad < 3; i++)                                 \
            for (int j = 0; j < nj && bad < 3; j++) {                           \
                const T want = C[(long)(i0 + i) * ldc + j0 + j];                \
                const T got = Cp[(long)i * ldcs + j];                           \
                if (memcmp(&want, &got, sizeof(T)) != 0) {                      \
                    printf("FAIL invariance %s %s ta=%d tb=%d M=%d N=%d K=%d "  \
                           "a=%g b=%g bias=%d act=%d dsrc=%d nt=%d/%d: C[%d][%d]"\
                           " = %.17g full, %.17g as part of rows %d+%d cols "   \
                           "%d+%d%s%s\n", isa_now, #SFX, g.ta, g.tb, M, N, K,   \
                           g.alpha, g.beta, g.bias, g.act, g.dsrc, g.nt, nt,    \
                           i0 + i, j0 + j, (double)want, (double)got, i0, mi,   \
                           j0, nj, relay ? " (relaid)" : "",                    \
                           nomem ? " (alloc failing)" : "");                    \
                    bad++;                                                      \
                }                                                               \
            }                                                                   \
        if (!relay) /* nothing outside the sub-block written */                 \
            for (int i = 0; i < M && bad < 3; i++)                              \
                for (int j = 0; j < ldc && bad < 3; j++) {                      \
                    const long o = (long)i * ldc + j;                           \
                    if (i >= i0 && i < i0 + mi && j >= j0 && j < j0 + nj)       \
                        continue;                                               \
                    if (memcmp(Cs + o, C0 + o, sizeof(T)) != 0) {               \
                        printf("FAIL invariance %s %s: C[%d][%d] outside "      \
                               "the sub-block written\n", isa_now, #SFX, i, j); \
                        bad++;                                                  \
                    }                                                           \
                }                                                               \
        free(Ar); free(Br); free(Cr);                                           \
    }                                                                           \
    if (bad) n_fail++;                                                          \
    free(A); free(B); free(C0); free(C); free(Cs); free(D); free(bias);         \
}

DEFINE_INVAR(float, f32)
DEFINE_INVAR(double, f64)

static void invar(struct icfg g, int nsub, int nomem)
{
    invar_f32(g, nsub, nomem);
    invar_f64(g, nsub, nomem);
}

/* alpha/beta: forward and delta (1, 0), fused update (-lr, 1), generic. */
static const double inv_ab[][2] = {{1.0, 0.0}, {-0.01, 1.0}, {0.37, -0.7}};

/* Epilogue variant e in 0..15: bias, activation, dsrc. */
static struct icfg icfg_make(int ta, int tb, int M, int N, int K, int e,
                             int ab, int nt)
{
    struct icfg g = {ta, tb, M, N, K, e & 1, (e >> 1) & 3, (e >> 3) & 1, nt,
                     inv_ab[ab][0], inv_ab[ab][1]};
    return g;
}

static void run_invariance(int quick)
{
    static const int ms[] = {1, 2, 3, 5, 6, 7, 12, 13, 17, 31, 33, 64, 97,
                             145, 300};
    /* K = 22: in the packing's transposes (fbp_gemm_kernels.h, TR_LANES_*),
     * float: two 8-deep blocks, a 4-deep one and two single k; double: five
     * 4-deep blocks and a 2-deep one */
    static const int ks[] = {1, 7, 22, 255, 256, 257, 600};
    enum { NMS = sizeof ms / sizeof *ms, NKS = sizeof ks / sizeof *ks };
    unsigned u = 0;
    /* shape sweep: every M x N x K of the lists, options cycled */
    for (int a = 0; a < NMS; a += quick ? 3 : 1)
        for (int b = 0; b < NMS; b += quick ? 4 : 1)
            for (int c = 0; c < NKS; c++, u++) {
                const int M = ms[a], N = ms[b], K = ks[c];
                if ((double)M * N * K > 6e6 && (quick || u % 3)) continue;
                invar(icfg_make(u & 1, (u >> 1) & 1, M, N, K, (u / 4) % 16,
                                (u / 3) % 3, 1 + u % 3), quick ? 3 : 8, 0);
            }
    /* option sweep: every transpose x epilogue x alpha/beta x n_threads on
     * shapes mixing the small and blocked paths and the KC boundary */
    static const int sh[][3] = {{37, 53, 257}, {13, 300, 7}, {150, 70, 256},
                                {300, 19, 600}, {64, 33, 255}};
    for (unsigned s = 0; s < sizeof sh / sizeof *sh; s++) {
        if (quick && s >= 2) break;
        for (int t = 0; t < 4; t++)
            for (int e = 0; e < 16; e++)
                for (int ab = 0; ab < 3; ab++)
                    invar(icfg_make(t & 1, t >> 1, sh[s][0], sh[s][1], sh[s][2],
                                    e, ab, 1 + (e + ab + t) % 3),
                          quick ? 2 : 6, 0);
    }
}

/* The same with the packing buffers unobtainable (the blocked driver's
 * fallback); the full C is computed normally. */
static void run_invariance_nomem(int quick)
{
    static const int sh[][3] = {{37, 53, 257}, {150, 70, 256}, {64, 33, 600}};
    const long refused = n_refused;
    for (unsigned s = 0; s < sizeof sh / sizeof *sh; s++)
        for (int t = 0; t < 4; t++)
            for (int e = 0; e < 16; e += quick ? 5 : 1)
                invar(icfg_make(t & 1, t >> 1, sh[s][0], sh[s][1], sh[s][2],
                                e, e % 3, 1 + (e + t) % 3), 3, 1);
    if (n_refused == refused) {
        printf("FAIL allocation-failure check: no allocation was refused\n");
        n_fail++;
    }
}

/* ------------------------------------------------------------------------ */
/* Pre-packed op(B) (fbp_gemm_pack_b_*, fbp_gemm_packed_*)                   */
/* ------------------------------------------------------------------------ */

/* Guard elements on each side of a packed buffer (a multiple of 64 bytes,
 * so that Bp itself stays 64-byte aligned), and their fill: a NaN payload
 * no packed value (op(B) in [-1, 1), padding zeros) can equal. */
#define PK_GUARD 32
static const uint64_t PK_FILL64 = 0x7ff4dead5eed0badull;
static const uint32_t PK_FILL32 = 0x7fa5eedbu;

/* NR-aligned cut points of [0, N): cuts[0] = 0 < ... < cuts[n] = N, n <= 6,
 * random; returns n. */
static int pk_cuts(int64_t N, int64_t nr, int64_t *cuts)
{
    const int64_t slivers = (N + nr - 1) / nr;
    int n = 1 + (int)irand(slivers < 6 ? (unsigned)slivers : 6u);
    cuts[0] = 0;
    for (int r = 1; r < n; r++) { /* distinct, increasing sliver indices */
        int64_t s = cuts[r - 1] / nr + 1 +
                    irand((unsigned)(slivers - cuts[r - 1] / nr - (n - r)));
        cuts[r] = s * nr;
    }
    cuts[n] = N;
    return n;
}

/* The operands of one check call (struct icfg): op(A) and op(B) stored with
 * padded leading dimensions, bias, dsrc (values the activation's derivative
 * takes), and C0: NaN where beta == 0, SENTINEL in C's padding. */
#define DEFINE_OPERANDS(T, SFX)                                                 \
struct ops_##SFX {                                                              \
    int lda, ldb, ldc, ldd;                                                     \
    T *A, *B, *C0, *D, *bias;                                                   \
};                                                                              \
static struct ops_##SFX ops_make_##SFX(struct icfg g)                           \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    const int ar = g.ta ? K : M, ac = g.ta ? M : K;                             \
    const int br = g.tb ? N : K, bc = g.tb ? K : N;                             \
    struct ops_##SFX o = {ac + 1, bc + 3, N + 2, N + 1, 0, 0, 0, 0, 0};         \
    o.A = malloc(sizeof(T) * ((size_t)ar * o.lda + 1));                         \
    o.B = malloc(sizeof(T) * ((size_t)br * o.ldb + 1));                         \
    o.C0 = malloc(sizeof(T) * (size_t)M * o.ldc);                               \
    o.D = malloc(sizeof(T) * ((size_t)M * o.ldd + 1));                          \
    o.bias = malloc(sizeof(T) * N);                                             \
    for (long i = 0; i < (long)ar * o.lda; i++) o.A[i] = (T)urand();            \
    for (long i = 0; i < (long)br * o.ldb; i++) o.B[i] = (T)urand();            \
    for (int j = 0; j < N; j++) o.bias[j] = (T)urand();                         \
    for (long i = 0; i < (long)M * o.ldd; i++) {                                \
        double u = urand();                                                     \
        o.D[i] = (T)(g.act == FBP_ACT_SIGMOID ? 0.5 + 0.5 * u                   \
                     : g.act == FBP_ACT_RELU ? (u > 0 ? u : 0) : u);            \
    }                                                                           \
    for (long i = 0; i < (long)M * o.ldc; i++)                                  \
        o.C0[i] = i % o.ldc >= N ? (T)SENTINEL                                  \
                : g.beta == 0 ? (T)NAN : (T)(4 * urand());                      \
    return o;                                                                   \
}                                                                               \
static void ops_free_##SFX(struct ops_##SFX *o)                                 \
{                                                                               \
    free(o->A); free(o->B); free(o->C0); free(o->D); free(o->bias);             \
}
DEFINE_OPERANDS(float, f32)
DEFINE_OPERANDS(double, f64)

#define DEFINE_PACKCHK(T, SFX, FILL)                                            \
static int pk_is_fill_##SFX(const T *p)                                         \
{                                                                               \
    return memcmp(p, &FILL, sizeof(T)) == 0;                                    \
}                                                                               \
static T *pk_alloc_##SFX(int64_t size)                                          \
{   /* size elements between two guards, all FILL, Bp 64-byte aligned */       \
    T *buf = aligned_alloc(64, sizeof(T) * (size_t)(size + 2 * PK_GUARD + 64));  \
    for (int64_t i = 0; i < size + 2 * PK_GUARD + 64; i++)                      \
        memcpy(buf + i, &FILL, sizeof(T));                                      \
    return buf;                                                                 \
}                                                                               \
static int pk_guards_ok_##SFX(const T *Bp, int64_t size)                        \
{                                                                               \
    for (int64_t i = 1; i <= PK_GUARD; i++)                                     \
        if (!pk_is_fill_##SFX(Bp - i) || !pk_is_fill_##SFX(Bp + size + i - 1))  \
            return 0;                                                           \
    return 1;                                                                   \
}                                                                               \
struct pkcall_##SFX {                                                           \
    int ta, M, N, K, lda, ldc, act, ldd;                                        \
    T alpha, beta;                                                              \
    const T *A, *Bp, *bias, *dsrc;                                              \
    T *C;                                                                       \
    /* packing job (pk_pack_thread): ranges order[first], order[first + step] */ \
    int tb, ldb, nr_cuts, first, step;                                          \
    const int64_t *cuts;                                                        \
    const int *order;                                                           \
    const T *B;                                                                 \
    T *Bw;                                                                      \
};                                                                              \
static void *pkcall_##SFX(void *arg)                                            \
{                                                                               \
    const struct pkcall_##SFX *q = arg;                                         \
    fbp_gemm_packed_##SFX(q->ta, q->M, q->N, q->K, q->alpha, q->A, q->lda,      \
                          q->Bp, q->beta, q->C, q->ldc, q->bias, q->act,        \
                          q->dsrc, q->ldd);                                     \
    return NULL;                                                                \
}                                                                               \
static void *pk_pack_thread_##SFX(void *arg)                                    \
{                                                                               \
    const struct pkcall_##SFX *q = arg;                                         \
    for (int r = q->first; r < q->nr_cuts; r += q->step)                        \
        fbp_gemm_pack_b_##SFX(q->tb, q->N, q->K, q->B, q->ldb, q->Bw,           \
                              q->cuts[q->order[r]], q->cuts[q->order[r] + 1]);  \
    return NULL;                                                                \
}                                                                               \
                                                                                \
/* The packed call against the unpacked one (n_threads = 1), bitwise: op(B)     \
 * packed in one range, then again in random NR-aligned ranges in shuffled     \
 * order (each range alone must write its own elements only, every element    \
 * written by exactly one range; with `conc` the ranges packed by two threads \
 * at once), the guards around Bp untouched, C's padding untouched; the       \
 * packed call on all rows, on random row tiles (pointer offsets), on a Bp    \
 * that is not vector-aligned and, with `nomem`, in a fresh thread whose      \
 * buffer allocation fails. */                                                 \
static void packchk_##SFX(struct icfg g, int conc, int nomem)                   \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    struct ops_##SFX o = ops_make_##SFX(g);                                     \
    const int lda = o.lda, ldb = o.ldb, ldc = o.ldc, ldd = o.ldd;               \
    const T *A = o.A, *B = o.B, *C0 = o.C0;                                     \
    T *C = malloc(sizeof(T) * (size_t)M * ldc);                                 \
    T *Cp = malloc(sizeof(T) * (size_t)M * ldc);                                \
    const T *bp = g.bias ? o.bias : NULL, *dp = g.dsrc ? o.D : NULL;            \
    memcpy(C, C0, sizeof(T) * (size_t)M * ldc);                                 \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C, ldc, bp, g.act, dp, ldd, 1);                              \
    const int64_t size = fbp_gemm_packed_size(sizeof(T), N, K);                 \
    const int64_t nr = fbp_gemm_packed_nr(sizeof(T));                           \
    int bad = 0;                                                                \
    const char *what = "";                                                      \
    if (size != (int64_t)K * ((N + nr - 1) / nr * nr)) {                        \
        what = "packed_size";                                                   \
        bad++;                                                                  \
    }                                                                           \
    /* one range */                                                             \
    T *buf1 = pk_alloc_##SFX(size), *Bp1 = buf1 + PK_GUARD;                     \
    fbp_gemm_pack_b_##SFX(g.tb, N, K, B, ldb, Bp1, 0, N);                       \
    for (int64_t i = 0; i < size && !bad; i++)                                  \
        if (pk_is_fill_##SFX(Bp1 + i)) { what = "element left unpacked"; bad++; } \
    if (!bad && !pk_guards_ok_##SFX(Bp1, size)) { what = "guard written"; bad++; } \
    /* several ranges: each alone, then all in shuffled order into one Bp */    \
    int64_t cuts[8];                                                            \
    const int ncut = pk_cuts(N, nr, cuts);                                      \
    T *buf2 = pk_alloc_##SFX(size), *Bp2 = buf2 + PK_GUARD;                     \
    unsigned char *cnt = calloc((size_t)size + 1, 1);                           \
    for (int r = 0; r < ncut && !bad; r++) {                                    \
        T *bufr = pk_alloc_##SFX(size), *Bpr = bufr + PK_GUARD;                 \
        fbp_gemm_pack_b_##SFX(g.tb, N, K, B, ldb, Bpr, cuts[r], cuts[r + 1]);   \
        for (int64_t i = 0; i < size; i++)                                      \
            if (!pk_is_fill_##SFX(Bpr + i)) {                                   \
                cnt[i]++;                                                       \
                if (memcmp(Bpr + i, Bp1 + i, sizeof(T)) != 0) {                 \
                    what = "a range packs other values than the whole";         \
                    bad++;                                                      \
                    break;                                                      \
                }                                                               \
            }                                                                   \
        if (!bad && !pk_guards_ok_##SFX(Bpr, size)) { what = "guard written (range)"; bad++; } \
        free(bufr);                                                             \
    }                                                                           \
    for (int64_t i = 0; i < size && !bad; i++)                                  \
        if (cnt[i] != 1) { what = "element not written by exactly one range"; bad++; } \
    free(cnt);                                                                  \
    int order[8];                                                               \
    for (int r = 0; r < ncut; r++) order[r] = r;                                \
    for (int r = ncut - 1; r > 0; r--) {                                        \
        const int s = (int)irand((unsigned)r + 1), t = order[r];                \
        order[r] = order[s]; order[s] = t;                                      \
    }                                                                           \
    if (conc) { /* two threads at once, alternate ranges of the order */      \
        struct pkcall_##SFX p0 = {.N = N, .K = K, .tb = g.tb, .ldb = ldb,       \
                                  .nr_cuts = ncut, .first = 0, .step = 2,       \
                                  .cuts = cuts, .order = order, .B = B,         \
                                  .Bw = Bp2};                                   \
        struct pkcall_##SFX p1 = p0;                                            \
        p1.first = 1;                                                           \
        pthread_t t0, t1;                                                       \
        const int e0 = pthread_create(&t0, NULL, pk_pack_thread_##SFX, &p0);    \
        const int e1 = pthread_create(&t1, NULL, pk_pack_thread_##SFX, &p1);    \
        if (!e0) pthread_join(t0, NULL);                                        \
        if (!e1) pthread_join(t1, NULL);                                        \
        if (e0 || e1) { what = "cannot create a thread"; bad++; }               \
    } else {                                                                    \
        for (int r = 0; r < ncut; r++)                                          \
            fbp_gemm_pack_b_##SFX(g.tb, N, K, B, ldb, Bp2, cuts[order[r]],      \
                                  cuts[order[r] + 1]);                          \
    }                                                                           \
    if (!bad && memcmp(Bp1, Bp2, sizeof(T) * (size_t)size) != 0) {              \
        what = "ranges packed in shuffled order differ from one range";         \
        bad++;                                                                  \
    }                                                                           \
    if (!bad && !pk_guards_ok_##SFX(Bp2, size)) { what = "guard written (ranges)"; bad++; } \
    /* the packed call: all rows; row tiles; misaligned Bp; no buffer */        \
    for (int v = 0; v < 4 && !bad; v++) {                                       \
        if (v == 3 && !nomem) break;                                            \
        memcpy(Cp, C0, sizeof(T) * (size_t)M * ldc);                            \
        const T *Bv = Bp2;                                                      \
        T *mis = NULL;                                                          \
        if (v == 2) { /* one element off the vector alignment */                \
            mis = malloc(sizeof(T) * ((size_t)size + 1));                       \
            memcpy(mis + 1, Bp2, sizeof(T) * (size_t)size);                     \
            Bv = mis + 1;                                                       \
        }                                                                       \
        int64_t rc[8] = {0, M};                                                 \
        int nrc = 1;                                                            \
        if (v == 1 && M > 1) { /* random row tiles */                           \
            nrc = 2 + (int)irand(M < 4 ? (unsigned)M - 1 : 3u);                 \
            if (nrc > M) nrc = M;                                               \
            for (int r = 1; r < nrc; r++)                                       \
                rc[r] = rc[r - 1] + 1 + irand((unsigned)(M - rc[r - 1] - (nrc - r))); \
            rc[nrc] = M;                                                        \
        }                                                                       \
        for (int r = 0; r < nrc; r++) {                                         \
            const int64_t i0 = rc[r], mi = rc[r + 1] - rc[r];                   \
            struct pkcall_##SFX q = {                                           \
                .ta = g.ta, .M = (int)mi, .N = N, .K = K, .lda = lda,           \
                .ldc = ldc, .act = g.act, .ldd = ldd, .alpha = (T)g.alpha,      \
                .beta = (T)g.beta, .A = g.ta ? A + i0 : A + i0 * lda, .Bp = Bv, \
                .bias = bp, .dsrc = dp ? dp + i0 * ldd : NULL,                  \
                .C = Cp + i0 * ldc};                                            \
            if (v == 3) {                                                       \
                pthread_t th;                                                   \
                __atomic_store_n(&fail_alloc, 1, __ATOMIC_RELAXED);             \
                const int err = pthread_create(&th, NULL, pkcall_##SFX, &q);    \
                if (!err) pthread_join(th, NULL);                               \
                __atomic_store_n(&fail_alloc, 0, __ATOMIC_RELAXED);             \
                if (err) { what = "cannot create a thread"; bad++; }            \
            } else {                                                            \
                pkcall_##SFX(&q);                                               \
            }                                                                   \
        }                                                                       \
        free(mis);                                                              \
        n_cases++;                                                              \
        if (!bad && memcmp(C, Cp, sizeof(T) * (size_t)M * ldc) != 0) {          \
            what = v == 0 ? "packed call differs from the unpacked one"         \
                 : v == 1 ? "packed row tiles differ from the unpacked call"    \
                 : v == 2 ? "packed call on a misaligned Bp differs"            \
                          : "packed call with allocation failing differs";      \
            bad++;                                                              \
        }                                                                       \
    }                                                                           \
    if (bad) {                                                                  \
        printf("FAIL packed %s %s ta=%d tb=%d M=%d N=%d K=%d a=%g b=%g "        \
               "bias=%d act=%d dsrc=%d ranges=%d%s: %s\n", isa_now, #SFX,       \
               g.ta, g.tb, M, N, K, g.alpha, g.beta, g.bias, g.act, g.dsrc,     \
               ncut, conc ? " (concurrent)" : "", what);                        \
        n_fail++;                                                               \
    }                                                                           \
    free(buf1); free(buf2); free(C); free(Cp);                                  \
    ops_free_##SFX(&o);                                                         \
}
DEFINE_PACKCHK(float, f32, PK_FILL32)
DEFINE_PACKCHK(double, f64, PK_FILL64)

/* ------------------------------------------------------------------------ */
/* op(A) read unpacked (fbp_gemm_kernels.h, NAME##_ua)                       */
/* ------------------------------------------------------------------------ */

/* The call with unpacked A allowed, then with it off: the same bits, and
 * nothing outside C's M x N written (the unpacked kernels read rows past an
 * edge tile's last one as that row, never past A).  Returns whether the
 * first call read A unpacked. */
#define DEFINE_UACHK(T, SFX)                                                    \
static int uachk_##SFX(struct icfg g)                                           \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    struct ops_##SFX o = ops_make_##SFX(g);                                     \
    const int lda = o.lda, ldb = o.ldb, ldc = o.ldc, ldd = o.ldd;               \
    const T *A = o.A, *B = o.B, *C0 = o.C0;                                     \
    T *C1 = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *C2 = malloc(sizeof(T) * (size_t)M * ldc);                                \
    const T *bp = g.bias ? o.bias : NULL, *dp = g.dsrc ? o.D : NULL;            \
    memcpy(C1, C0, sizeof(T) * (size_t)M * ldc);                                \
    memcpy(C2, C0, sizeof(T) * (size_t)M * ldc);                                \
    const int64_t before = fbp_gemm_unpacked_a_calls();                                 \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C1, ldc, bp, g.act, dp, ldd, g.nt);                          \
    const int used = fbp_gemm_unpacked_a_calls() > before;                      \
    fbp_gemm_set_unpacked_a(0);                                                 \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C2, ldc, bp, g.act, dp, ldd, g.nt);                          \
    fbp_gemm_set_unpacked_a(1);                                                 \
    n_cases++;                                                                  \
    const char *what = memcmp(C1, C2, sizeof(T) * (size_t)M * ldc) != 0         \
        ? "differs from the packed call" : NULL;                                \
    /* the pre-packed call (NAME##_pre) with unpacked A on and off: the bits   \
     * of the call above */                                                    \
    const int64_t size = fbp_gemm_packed_size(sizeof(T), N, K);                 \
    T *buf = pk_alloc_##SFX(size), *Bp = buf + PK_GUARD;                        \
    fbp_gemm_pack_b_##SFX(g.tb, N, K, B, ldb, Bp, 0, N);                        \
    for (int on = 1; on >= 0 && !what; on--) {                                  \
        memcpy(C2, C0, sizeof(T) * (size_t)M * ldc);                            \
        fbp_gemm_set_unpacked_a(on);                                            \
        fbp_gemm_packed_##SFX(g.ta, M, N, K, (T)g.alpha, A, lda, Bp, (T)g.beta, \
                              C2, ldc, bp, g.act, dp, ldd);                     \
        n_cases++;                                                              \
        if (memcmp(C1, C2, sizeof(T) * (size_t)M * ldc) != 0)                   \
            what = on ? "pre-packed call with unpacked A differs"               \
                      : "pre-packed call with packed A differs";                \
    }                                                                           \
    fbp_gemm_set_unpacked_a(1);                                                 \
    if (what) {                                                                 \
        printf("FAIL unpacked A %s %s ta=%d tb=%d M=%d N=%d K=%d a=%g b=%g "    \
               "bias=%d act=%d dsrc=%d nt=%d: %s\n", isa_now, #SFX, g.ta, g.tb, \
               M, N, K, g.alpha, g.beta, g.bias, g.act, g.dsrc, g.nt, what);    \
        n_fail++;                                                               \
    }                                                                           \
    free(buf); free(C1); free(C2);                                              \
    ops_free_##SFX(&o);                                                         \
    return used;                                                                \
}
DEFINE_UACHK(float, f32)
DEFINE_UACHK(double, f64)

/* Shapes of small nets' steps and around the tile edges (MR 6 and 8, NR 8 to
 * 32), K around 16 KiB of op(A) per call, every transpose, epilogue and
 * alpha/beta cycled, 1 and 2 threads; then shapes whose thread grid splits
 * them on 2 and 3 threads into parts (rows from i0 > 0, or columns) under
 * the limit.  Fails unless some call of each dtype read A unpacked and some
 * did not (ta = 1, or too large). */
static void run_unpacked_a(int quick)
{
    static const int ms[] = {1, 3, 5, 6, 7, 8, 9, 13, 17, 32, 33, 64, 128};
    static const int ns[] = {1, 10, 16, 17, 33, 64, 128};
    static const int ks[] = {7, 22, 64, 128, 257, 300};
    enum { NMS = sizeof ms / sizeof *ms, NNS = sizeof ns / sizeof *ns,
           NKS = sizeof ks / sizeof *ks };
    long used[2] = {0, 0}, not_used[2] = {0, 0};
    unsigned u = 0;
    for (int a = 0; a < NMS; a += quick ? 2 : 1)
        for (int b = 0; b < NNS; b++)
            for (int c = 0; c < NKS; c++, u++) {
                const struct icfg g = icfg_make(u & 1 && u % 5 == 0, (u >> 1) & 1,
                                                ms[a], ns[b], ks[c], (u / 4) % 16,
                                                (u / 3) % 3, 1 + u % 2);
                const int r32 = uachk_f32(g), r64 = uachk_f64(g);
                used[0] += r32; not_used[0] += !r32;
                used[1] += r64; not_used[1] += !r64;
            }
    static const int split[][3] = {{300, 300, 22}, {256, 128, 16}, {512, 256, 8},
                                   {301, 70, 13}, {97, 400, 31}};
    for (unsigned q = 0; q < sizeof split / sizeof *split; q++)
        for (int nt = 2; nt <= 3; nt++)
            for (int e = 0; e < 16; e += quick ? 5 : 3, u++) {
                const struct icfg g = icfg_make(0, (int)(u & 1), split[q][0], split[q][1],
                                                split[q][2], e, (int)(u % 3), nt);
                (void)uachk_f32(g);
                (void)uachk_f64(g);
            }
    for (int d = 0; d < 2; d++)
        if (!used[d] || !not_used[d]) {
            printf("FAIL unpacked A %s: %ld calls read A unpacked, %ld did not "
                   "(the check needs both)\n", d ? "f64" : "f32", used[d], not_used[d]);
            n_fail++;
        }
}

/* Column ranges off the NR grid (fbp_gemm.h: j0 a multiple of NR, j1 too or
 * N): refused, -1, and nothing written, neither in Bp nor in its guards
 * (a j0 off the grid used to write its last sliver past the end of Bp);
 * the ranges on the grid around them still pack (0). */
#define DEFINE_PACKGRID(T, SFX, FILL)                                           \
static void pk_offgrid_##SFX(void)                                              \
{                                                                               \
    const int64_t nr = fbp_gemm_packed_nr(sizeof(T));                           \
    const int64_t N = 3 * nr + 5, K = 300; /* two slabs */                      \
    const int64_t size = fbp_gemm_packed_size(sizeof(T), N, K);                 \
    const int64_t cuts[][2] = {{nr - 1, N}, {1, nr}, {2 * nr + 1, N},           \
                               {nr, nr + 1}, {0, 2 * nr - 1}};                  \
    T *B = malloc(sizeof(T) * (size_t)(N * K));                                 \
    for (int64_t i = 0; i < N * K; i++) B[i] = (T)urand();                      \
    int bad = 0;                                                                \
    for (int tb = 0; tb < 2; tb++)                                              \
        for (unsigned c = 0; c < sizeof cuts / sizeof *cuts; c++) {             \
            T *buf = pk_alloc_##SFX(size), *Bp = buf + PK_GUARD;                \
            int r = 0;                                                          \
            r = fbp_gemm_pack_b_##SFX(tb, N, K, B, tb ? K : N, Bp, cuts[c][0],  \
                                      cuts[c][1]);                              \
            int written = 0;                                                    \
            for (int64_t i = -PK_GUARD; i < size + PK_GUARD; i++)               \
                if (!pk_is_fill_##SFX(Bp + i)) written++;                       \
            n_cases++;                                                          \
            if (r != -1 || written) {                                           \
                printf("FAIL packed %s %s off-grid range [%ld, %ld) of N=%ld "  \
                       "(NR %ld) tb=%d: returned %d, wrote %d elements%s\n",    \
                       isa_now, #SFX, (long)cuts[c][0], (long)cuts[c][1],       \
                       (long)N, (long)nr, tb, r, written,                       \
                       pk_guards_ok_##SFX(Bp, size) ? "" : " (guards too)");    \
                bad++;                                                          \
            }                                                                   \
            /* on the grid: 0, and packed */                                    \
            r = fbp_gemm_pack_b_##SFX(tb, N, K, B, tb ? K : N, Bp, nr, N);      \
            n_cases++;                                                          \
            if (r != 0 || pk_is_fill_##SFX(Bp + nr * K)) {                      \
                printf("FAIL packed %s %s range [%ld, %ld): returned %d\n",     \
                       isa_now, #SFX, (long)nr, (long)N, r);                    \
                bad++;                                                          \
            }                                                                   \
            free(buf);                                                          \
        }                                                                       \
    if (bad) n_fail++;                                                          \
    free(B);                                                                    \
}
DEFINE_PACKGRID(float, f32, PK_FILL32)
DEFINE_PACKGRID(double, f64, PK_FILL64)

static void packchk(struct icfg g, int conc, int nomem)
{
    packchk_f32(g, conc, nomem);
    packchk_f64(g, conc, nomem);
}

static void run_packed(int quick)
{
    /* thin: M = 1..13 (the AVX-512 build's AVX2 tiles, MR 6 / 12 edges), N
     * not a multiple of NR, K around the slab depth; many are small-path
     * shapes for the unpacked call */
    static const int ns[] = {1, 5, 17, 33, 100};
    static const int ks[] = {1, 7, 255, 256, 257, 600};
    enum { NNS = sizeof ns / sizeof *ns, NKS = sizeof ks / sizeof *ks };
    unsigned u = 0;
    const long refused = n_refused;
    for (int M = 1; M <= 13; M += quick ? 4 : 1)
        for (int b = 0; b < NNS; b++)
            for (int c = 0; c < NKS; c += quick ? 2 : 1, u++)
                packchk(icfg_make(u & 1, (u >> 1) & 1, M, ns[b], ks[c],
                                  (u / 4) % 16, (u / 3) % 3, 1),
                        0, u % 5 == 0);
    /* every transpose x epilogue x store mode on shapes mixing the paths,
     * MR/NR/MC edges and the KC boundary (on the larger ones, a quarter of
     * the combinations, cycled) */
    static const int sh[][3] = {{37, 53, 257}, {13, 40, 300}, {2, 9, 7},
                                {150, 70, 256}, {145, 33, 600}, {64, 48, 255}};
    for (unsigned s = 0; s < sizeof sh / sizeof *sh; s++) {
        if (quick && s >= 2) break;
        for (int t = 0; t < 4; t++)
            for (int e = 0; e < 16; e += quick ? 3 : 1)
                for (int ab = 0; ab < 3; ab++, u++) {
                    if (s >= 3 && (e + ab + t + (int)s) % 4) continue;
                    packchk(icfg_make(t & 1, t >> 1, sh[s][0], sh[s][1],
                                      sh[s][2], e, ab, 1),
                            u % 7 == 0, u % 11 == 0);
                }
    }
    /* N > NC = 4096: two panels (the second one narrow), one and two slabs */
    static const int wide[][3] = {{3, 4100, 3}, {14, 4133, 260}, {1, 4097, 1}};
    for (unsigned s = 0; s < sizeof wide / sizeof *wide; s++)
        for (int t = 0; t < 4; t++, u++)
            packchk(icfg_make(t & 1, t >> 1, wide[s][0], wide[s][1], wide[s][2],
                              (int)(u % 16), (int)(u % 3), 1),
                    t == 1, t == 2 && !quick);
    /* K == 0 (no B read, Bp empty: c = alpha*0 (+ beta*C), then the
     * epilogue) */
    for (int t = 0; t < 2; t++)
        packchk(icfg_make(t, t, 5, 20, 0, 3 + 8 * t, 1 + t, 1), 0, 0);
    /* M == 0 and N == 0: nothing written, nothing read */
    {
        float c[4] = {1, 2, 3, 4}, bp[64], a[4] = {0};
        for (int i = 0; i < 64; i++) bp[i] = 7;
        fbp_gemm_packed_f32(0, 0, 3, 2, 1, a, 2, bp, 0, c, 4, NULL, 0, NULL, 0);
        fbp_gemm_packed_f32(1, 2, 0, 2, 1, a, 2, bp, 0, c, 4, NULL, 0, NULL, 0);
        fbp_gemm_pack_b_f32(0, 3, 2, a, 2, bp, 0, 0);
        n_cases++;
        if (c[0] != 1 || c[1] != 2 || c[2] != 3 || c[3] != 4 || bp[0] != 7) {
            printf("FAIL packed %s: M == 0 / N == 0 / empty range wrote\n", isa_now);
            n_fail++;
        }
    }
    pk_offgrid_f32();
    pk_offgrid_f64();
    if (n_refused == refused) {
        printf("FAIL packed allocation-failure check: no allocation was refused\n");
        n_fail++;
    }
}

/* ------------------------------------------------------------------------ */
/* Pre-packed op(B) by rows (fbp_gemm_pack_b_rows_*)                         */
/* ------------------------------------------------------------------------ */

/* Cut points of [0, K): rows[0] = 0 < ... < rows[n] = K, n <= 7, anywhere
 * (off the slab boundary as often as on it), sometimes one at a slab
 * boundary +-1; returns n. */
static int pkr_cuts(int64_t K, int64_t *rows)
{
    int n = 1 + (int)irand(K < 7 ? (unsigned)K : 7u);
    rows[0] = 0;
    for (int r = 1; r < n; r++)
        rows[r] = rows[r - 1] + 1 + irand((unsigned)(K - rows[r - 1] - (n - r)));
    rows[n] = K;
    if (n >= 2 && K > 258 && irand(2)) { /* one cut next to a slab boundary */
        const int64_t at = 255 + irand(3); /* FBP_KC = 256 */
        if (at > rows[n - 2] && at < K) rows[n - 1] = at;
    }
    return n;
}

#define DEFINE_ROWPACKCHK(T, SFX)                                               \
struct pkrow_##SFX {                                                            \
    int tb, N, K, ldb, n, first, step;                                          \
    const int64_t *rows;                                                        \
    const int *order;                                                           \
    const T *B;                                                                 \
    T *Bp;                                                                      \
};                                                                              \
static void *pkrow_thread_##SFX(void *arg)                                      \
{                                                                               \
    const struct pkrow_##SFX *q = arg;                                          \
    for (int r = q->first; r < q->n; r += q->step)                              \
        fbp_gemm_pack_b_rows_##SFX(q->tb, q->N, q->K, q->B, q->ldb, q->Bp,      \
                                   q->rows[q->order[r]],                        \
                                   q->rows[q->order[r] + 1]);                   \
    return NULL;                                                                \
}                                                                               \
/* Rows of op(B) packed in random ranges: each range alone writes only its     \
 * own elements, equal to those of the whole column pack (every element of     \
 * the packed buffer by exactly one range, guards untouched); all of them in   \
 * shuffled order (with `conc`, two threads at once) equal the column pack     \
 * bitwise; and the packed call on that copy equals the unpacked call. */      \
static void rowpackchk_##SFX(struct icfg g, int conc)                           \
{                                                                               \
    const int M = g.M, N = g.N, K = g.K;                                        \
    const int ar = g.ta ? K : M, ac = g.ta ? M : K;                             \
    const int br = g.tb ? N : K, bc = g.tb ? K : N;                             \
    const int lda = ac + 2, ldb = bc + 1, ldc = N + 3;                          \
    T *A = malloc(sizeof(T) * ((size_t)ar * lda + 1));                          \
    T *B = malloc(sizeof(T) * ((size_t)br * ldb + 1));                          \
    T *C = malloc(sizeof(T) * (size_t)M * ldc);                                 \
    T *Cp = malloc(sizeof(T) * (size_t)M * ldc);                                \
    T *bias = malloc(sizeof(T) * N);                                            \
    for (long i = 0; i < (long)ar * lda; i++) A[i] = (T)urand();                \
    for (long i = 0; i < (long)br * ldb; i++) B[i] = (T)urand();                \
    for (int j = 0; j < N; j++) bias[j] = (T)urand();                           \
    for (long i = 0; i < (long)M * ldc; i++)                                    \
        C[i] = Cp[i] = i % ldc >= N ? (T)SENTINEL : (T)(4 * urand());           \
    const T *bp = g.bias ? bias : NULL;                                         \
    const int act = g.act == FBP_ACT_SIGMOID ? FBP_ACT_TANH : g.act;            \
    fbp_gemm_##SFX(g.ta, g.tb, M, N, K, (T)g.alpha, A, lda, B, ldb, (T)g.beta,  \
                   C, ldc, bp, act, NULL, 0, 1);                                \
    const int64_t size = fbp_gemm_packed_size(sizeof(T), N, K);                 \
    int bad = 0;                                                                \
    const char *what = "";                                                      \
    T *buf1 = pk_alloc_##SFX(size), *Bp1 = buf1 + PK_GUARD;                     \
    fbp_gemm_pack_b_##SFX(g.tb, N, K, B, ldb, Bp1, 0, N);                       \
    int64_t rows[9];                                                            \
    const int n = pkr_cuts(K, rows);                                            \
    unsigned char *cnt = calloc((size_t)size + 1, 1);                           \
    for (int r = 0; r < n && !bad; r++) {                                       \
        T *bufr = pk_alloc_##SFX(size), *Bpr = bufr + PK_GUARD;                 \
        fbp_gemm_pack_b_rows_##SFX(g.tb, N, K, B, ldb, Bpr, rows[r], rows[r + 1]); \
        for (int64_t i = 0; i < size; i++)                                      \
            if (!pk_is_fill_##SFX(Bpr + i)) {                                   \
                cnt[i]++;                                                       \
                if (memcmp(Bpr + i, Bp1 + i, sizeof(T)) != 0) {                 \
                    what = "a row range packs other values than the whole";     \
                    bad++;                                                      \
                    break;                                                      \
                }                                                               \
            }                                                                   \
        if (!bad && !pk_guards_ok_##SFX(Bpr, size)) { what = "guard written (row range)"; bad++; } \
        free(bufr);                                                             \
    }                                                                           \
    for (int64_t i = 0; i < size && !bad; i++)                                  \
        if (cnt[i] != 1) { what = "element not written by exactly one row range"; bad++; } \
    free(cnt);                                                                  \
    int order[9];                                                               \
    for (int r = 0; r < n; r++) order[r] = r;                                   \
    for (int r = n - 1; r > 0; r--) {                                           \
        const int s = (int)irand((unsigned)r + 1), t = order[r];                \
        order[r] = order[s]; order[s] = t;                                      \
    }                                                                           \
    T *buf2 = pk_alloc_##SFX(size), *Bp2 = buf2 + PK_GUARD;                     \
    struct pkrow_##SFX p0 = {.tb = g.tb, .N = N, .K = K, .ldb = ldb, .n = n,    \
                             .first = 0, .step = conc ? 2 : 1, .rows = rows,    \
                             .order = order, .B = B, .Bp = Bp2};                \
    if (conc) {                                                                 \
        struct pkrow_##SFX p1 = p0;                                             \
        p1.first = 1;                                                           \
        pthread_t t0, t1;                                                       \
        const int e0 = pthread_create(&t0, NULL, pkrow_thread_##SFX, &p0);      \
        const int e1 = pthread_create(&t1, NULL, pkrow_thread_##SFX, &p1);      \
        if (!e0) pthread_join(t0, NULL);                                        \
        if (!e1) pthread_join(t1, NULL);                                        \
        if (e0 || e1) { what = "cannot create a thread"; bad++; }               \
    } else {                                                                    \
        pkrow_thread_##SFX(&p0);                                                \
    }                                                                           \
    if (!bad && memcmp(Bp1, Bp2, sizeof(T) * (size_t)size) != 0) {              \
        what = "row ranges packed in shuffled order differ from the column pack"; \
        bad++;                                                                  \
    }                                                                           \
    if (!bad && !pk_guards_ok_##SFX(Bp2, size)) { what = "guard written (row ranges)"; bad++; } \
    if (!bad) {                                                                 \
        fbp_gemm_packed_##SFX(g.ta, M, N, K, (T)g.alpha, A, lda, Bp2,           \
                              (T)g.beta, Cp, ldc, bp, act, NULL, 0);            \
        n_cases++;                                                              \
        if (memcmp(C, Cp, sizeof(T) * (size_t)M * ldc) != 0) {                  \
            what = "packed call on the row-packed copy differs from the unpacked one"; \
            bad++;                                                              \
        }                                                                       \
    }                                                                           \
    if (bad) {                                                                  \
        printf("FAIL packed rows %s %s ta=%d tb=%d M=%d N=%d K=%d ranges=%d%s: %s\n", \
               isa_now, #SFX, g.ta, g.tb, M, N, K, n, conc ? " (concurrent)" : "", \
               what);                                                           \
        n_fail++;                                                               \
    }                                                                           \
    free(buf1); free(buf2);                                                     \
    free(A); free(B); free(C); free(Cp); free(bias);                            \
}
DEFINE_ROWPACKCHK(float, f32)
DEFINE_ROWPACKCHK(double, f64)

static void run_packed_rows(int quick)
{
    /* K around and across the slab depth (the rows of a training step's
     * H_k: K = the batch), N off NR and across the NC = 4096 panel */
    static const int ns[] = {1, 5, 17, 100, 300, 4100};
    static const int ks[] = {1, 2, 7, 64, 255, 256, 257, 513, 777};
    static const int ms[] = {1, 6, 37};
    enum { NNS = sizeof ns / sizeof *ns, NKS = sizeof ks / sizeof *ks,
           NMS = sizeof ms / sizeof *ms };
    unsigned u = 0;
    for (int a = 0; a < NMS; a++)
        for (int b = 0; b < NNS; b++)
            for (int c = 0; c < NKS; c++, u++) {
                if (ns[b] > 1000 && (ks[c] > 300 || a != 1)) continue;
                if (quick && u % 3) continue;
                const struct icfg g = icfg_make((int)(u & 1), (int)((u >> 1) & 1),
                                                ms[a], ns[b], ks[c], (int)(u % 16),
                                                (int)(u % 3), 1);
                rowpackchk_f32(g, u % 4 == 1);
                rowpackchk_f64(g, u % 4 == 3);
            }
    /* empty ranges, k1 past K, N == 0: nothing written */
    {
        float bp[64], b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        for (int i = 0; i < 64; i++) bp[i] = 7;
        fbp_gemm_pack_b_rows_f32(0, 2, 4, b, 2, bp, 3, 3);
        fbp_gemm_pack_b_rows_f32(0, 2, 4, b, 2, bp, 4, 9);
        fbp_gemm_pack_b_rows_f32(0, 0, 4, b, 2, bp, 0, 4);
        n_cases++;
        for (int i = 0; i < 64; i++)
            if (bp[i] != 7) {
                printf("FAIL packed rows %s: an empty range wrote\n", isa_now);
                n_fail++;
                break;
            }
    }
}

/* A rows x cols matrix at row stride ld on a sparse anonymous mapping (only
 * the pages touched exist), or NULL when the system refuses the mapping. */
static void *sparse_alloc(int64_t rows, int64_t cols, int64_t ld, size_t elem,
                          size_t *bytes)
{
    *bytes = (size_t)((rows - 1) * ld + cols) * elem;
    void *p = mmap(NULL, *bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

#define DEFINE_HUGE_LD(T, SFX)                                                  \
static int huge_ld_##SFX(int ta, int tb, int64_t M, int64_t N, int64_t K,      \
                         int nt)                                               \
{                                                                               \
    const int64_t LD = ((int64_t)1 << 31) + 7;                                 \
    const int64_t ar = ta ? K : M, ac = ta ? M : K;                             \
    const int64_t br = tb ? N : K, bc = tb ? K : N;                             \
    size_t na, nb, nc, nd;                                                      \
    T *A = sparse_alloc(ar, ac, LD, sizeof(T), &na);                            \
    T *B = sparse_alloc(br, bc, LD, sizeof(T), &nb);                            \
    T *C = sparse_alloc(M, N, LD, sizeof(T), &nc);                              \
    T *D = sparse_alloc(M, N, LD, sizeof(T), &nd);                              \
    T *a = malloc(sizeof(T) * ar * ac), *b = malloc(sizeof(T) * br * bc);       \
    T *c = malloc(sizeof(T) * M * N), *d = malloc(sizeof(T) * M * N);           \
    T *bias = malloc(sizeof(T) * N);                                            \
    int ok = 1;                                                                 \
    if (!A || !B || !C || !D) {                                                 \
        printf("skip huge-ld check: sparse mapping refused\n");                 \
        goto done;                                                              \
    }                                                                           \
    for (int64_t i = 0; i < ar; i++)                                            \
        for (int64_t j = 0; j < ac; j++)                                        \
            A[i * LD + j] = a[i * ac + j] = (T)urand();                         \
    for (int64_t i = 0; i < br; i++)                                            \
        for (int64_t j = 0; j < bc; j++)                                        \
            B[i * LD + j] = b[i * bc + j] = (T)urand();                         \
    for (int64_t i = 0; i < M; i++)                                             \
        for (int64_t j = 0; j < N; j++) {                                       \
            C[i * LD + j] = c[i * N + j] = (T)urand();                          \
            D[i * LD + j] = d[i * N + j] = (T)(0.5 + 0.5 * urand());            \
        }                                                                       \
    for (int64_t j = 0; j < N; j++) bias[j] = (T)urand();                       \
    for (int e = 0; e < 3; e++) {                                               \
        const int act = e == 0 ? FBP_ACT_TANH : FBP_ACT_SIGMOID;                \
        const T beta = e == 1 ? (T)1 : (T)0;                                    \
        const T *ds = e == 2 ? D : NULL, *dc = e == 2 ? d : NULL;               \
        const T *bs = e == 2 ? NULL : bias;                                     \
        fbp_gemm_##SFX(ta, tb, M, N, K, (T)0.75, A, LD, B, LD, beta, C, LD,     \
                       bs, act, ds, LD, nt);                                    \
        fbp_gemm_##SFX(ta, tb, M, N, K, (T)0.75, a, ac, b, bc, beta, c, N,      \
                       bs, act, dc, N, 1);                                      \
        for (int64_t i = 0; i < M; i++)                                         \
            for (int64_t j = 0; j < N; j++)                                     \
                if (memcmp(&C[i * LD + j], &c[i * N + j], sizeof(T)) != 0) ok = 0;\
    }                                                                           \
    n_cases++;                                                                  \
    if (!ok) {                                                                  \
        printf("FAIL %s %s huge ld ta=%d tb=%d %ldx%ldx%ld nt=%d: differs "     \
               "from the compact product\n", isa_now, #SFX, ta, tb, (long)M,    \
               (long)N, (long)K, nt);                                           \
        n_fail++;                                                               \
    }                                                                           \
done:                                                                           \
    if (A) munmap(A, na);                                                       \
    if (B) munmap(B, nb);                                                       \
    if (C) munmap(C, nc);                                                       \
    if (D) munmap(D, nd);                                                       \
    free(a); free(b); free(c); free(d); free(bias);                             \
    return ok;                                                                  \
}
DEFINE_HUGE_LD(float, f32)
DEFINE_HUGE_LD(double, f64)

static void run_huge_ld(void)
{
    /* Every operand has at most 64 rows (the mappings stay well inside the
     * address space); small path, blocked path (also split over threads). */
    static const int64_t sh[][3] = {{3, 5, 7}, {2, 40, 60}, {7, 48, 50},
                                    {40, 64, 33}};
    for (unsigned s = 0; s < sizeof sh / sizeof *sh; s++)
        for (int t = 0; t < 4; t++)
            for (int nt = 1; nt <= 2; nt++) {
                huge_ld_f32(t & 1, t >> 1, sh[s][0], sh[s][1], sh[s][2], nt);
                huge_ld_f64(t & 1, t >> 1, sh[s][0], sh[s][1], sh[s][2], nt);
            }
}

static void run_all(int quick)
{
    static const int odd[] = {1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 67};
    static const int straddle[][3] = {
        /* MR (6, 12), NR (4, 8, 16, 32), MC (72, 144), KC (256) edges */
        {5, 15, 255}, {6, 16, 256}, {7, 17, 257}, {11, 31, 129},
        {12, 32, 64}, {13, 33, 513}, {71, 9, 300}, {72, 8, 40},
        {73, 7, 33}, {143, 20, 70}, {144, 16, 10}, {145, 33, 260},
        {1, 70, 70}, {70, 1, 70}, {70, 70, 1}, {3, 4097, 3},
    };
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* every size 1..70 for each dimension, others varied */
            for (int s = 1; s <= 70; s += quick ? 7 : 1) {
                check(make(ta, tb, s, s, s), 0);
                check(make(ta, tb, s, 1 + (s * 7) % 23, 71 - s), 0);
                check(make(ta, tb, 1 + (s * 5) % 19, s, 1 + (s * 3) % 29), 0);
            }
            for (unsigned i = 0; i < sizeof odd / sizeof *odd; i++)
                for (unsigned j = 0; j < sizeof odd / sizeof *odd;
                     j += quick ? 5 : 1)
                    check(make(ta, tb, odd[i], odd[j], odd[(i + j) % 12]), 0);
            for (unsigned i = 0; i < sizeof straddle / sizeof *straddle; i++)
                check(make(ta, tb, straddle[i][0], straddle[i][1],
                           straddle[i][2]), 0);
            /* every activation x bias x dsrc x beta at one blocked size */
            for (int act = 0; act < 4; act++)
                for (int opt = 0; opt < 8; opt++) {
                    struct cfg g = make(ta, tb, 29, 37, 41);
                    g.act = act;
                    g.bias = opt & 1;
                    g.dsrc = (opt >> 1) & 1;
                    g.beta = (opt >> 2) ? 1.0 : 0.0;
                    check(g, 0);
                }
            struct cfg g = make(ta, tb, 23, 19, 37);
            g.poison = 1;
            g.act = FBP_ACT_IDENTITY;
            g.dsrc = 0;
            check(g, 0);
            /* large enough to be split over threads, in M and in N */
            static const int big[][3] = {
                {67, 131, 300}, {300, 20, 300}, {150, 301, 520}, {97, 97, 97}};
            for (unsigned i = 0; i < sizeof big / sizeof *big; i++) {
                if (quick && i > 1) break;
                check(make(ta, tb, big[i][0], big[i][1], big[i][2]), 1);
            }
        }
}

int main(int argc, char **argv)
{
    static const char *isas[] = {"generic", "avx2", "avx512"};
    const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    for (int i = 0; i < 3; i++) {
        if (fbp_gemm_set_isa(isas[i]) != 0) {
            printf("skip isa %s: not supported by this CPU/build\n", isas[i]);
            continue;
        }
        isa_now = fbp_gemm_isa();
        long before = n_fail;
        opt_counter = 0;
        act_range_f32();
        act_range_f64();
        ulp_sweep_f32(quick);
        ulp_sweep_f64(quick);
        run_all(quick);
        run_huge_ld();
        long c0 = n_cases;
        run_invariance(quick);
        run_invariance_nomem(quick);
        const long c1 = n_cases;
        run_packed(quick);
        run_packed_rows(quick);
        const long c2 = n_cases;
        run_unpacked_a(quick);
        printf("isa %s: %s (%ld invariance sub-problems, %ld pre-packed "
               "calls, %ld unpacked-A comparisons)\n", isa_now, n_fail == before ? "ok" : "FAILED",
               c1 - c0, c2 - c1, n_cases - c2);
    }
    printf("%ld cases, %ld failed\n", n_cases, n_fail);
    return n_fail ? 1 : 0;
}
