/* fma_peak.c: the machine's peak fused multiply-add throughput, per ISA.
 *
 *   gcc -O2 -std=gnu11 -fopenmp bench/c/fma_peak.c -o /tmp/fma_peak
 *   /tmp/fma_peak [trials] [--json]
 *
 * Each thread runs a register-resident chain of independent FMAs,
 * acc[i] = acc[i] * m + c for NACC accumulators (NACC vectors in flight: more
 * than FMA latency x FMA ports on any current x86 core, so the loop is bound by
 * FMA throughput, not latency), with nothing loaded or stored in the loop.  The
 * values converge to c / (1 - m) = 1, so nothing overflows or turns denormal.
 * GFLOP/s counts 2 flops per lane per FMA.  For AVX2+FMA (ymm, 12
 * accumulators: 16 registers) and AVX-512F (zmm, 24 of 32 registers), float32
 * and float64, 1 and 2 threads (OpenMP, one chain per thread); each figure is
 * the best of `trials` (default 15) timings of ~20 ms loops, so that some
 * trials dodge other processes on a shared machine.  An ISA the CPU does not
 * report (__builtin_cpu_supports) is skipped.  --json prints one JSON object.
 *
 * This is the ceiling for a GEMM on the same ISA: a GEMM's GFLOP/s (2 M N K
 * flops) over this figure is its efficiency.  The FMAs are written with
 * intrinsics; GCC at -O2 keeps the accumulators in registers (check with
 * objdump -d: the loop is NACC vfmadd instructions, a counter and a branch).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile double g_sink; /* keeps the results live */

#define REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define REP24(X) REP12(X) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) \
                 X(20) X(21) X(22) X(23)

/* One kernel: `iters` rounds of NACC independent FMAs, returns a sum of the
 * accumulators (so that the compiler cannot drop them). */
#define DEFINE_CHAIN(NAME, TARGET, VT, SET1, FMA, REDUCE, REP)                  \
__attribute__((target(TARGET), noinline))                                     \
static double NAME(long iters)                                                 \
{                                                                              \
    const VT m = SET1(0.999999), c = SET1(0.000001);                           \
    REP(DECL_##NAME)                                                           \
    for (long it = 0; it < iters; it++) {                                      \
        REP(STEP_##NAME)                                                       \
    }                                                                          \
    VT s = a0;                                                                 \
    REP(SUM_##NAME)                                                            \
    return REDUCE(s);                                                          \
}

/* --- AVX2 + FMA, 256-bit --- */
#define DECL_avx2_f32(i) __m256 a##i = _mm256_set1_ps(0.5f + 0.01f * i);
#define STEP_avx2_f32(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define SUM_avx2_f32(i) s = _mm256_add_ps(s, a##i);
#define DECL_avx2_f64(i) __m256d a##i = _mm256_set1_pd(0.5 + 0.01 * i);
#define STEP_avx2_f64(i) a##i = _mm256_fmadd_pd(a##i, m, c);
#define SUM_avx2_f64(i) s = _mm256_add_pd(s, a##i);
#define SET1_PS8(x) _mm256_set1_ps((float)(x))
#define SET1_PD4(x) _mm256_set1_pd(x)
__attribute__((target("avx2,fma"))) static double red_ps8(__m256 v)
{ float t[8]; _mm256_storeu_ps(t, v); return t[0] + t[7]; }
__attribute__((target("avx2,fma"))) static double red_pd4(__m256d v)
{ double t[4]; _mm256_storeu_pd(t, v); return t[0] + t[3]; }
DEFINE_CHAIN(avx2_f32, "avx2,fma", __m256, SET1_PS8, _, red_ps8, REP12)
DEFINE_CHAIN(avx2_f64, "avx2,fma", __m256d, SET1_PD4, _, red_pd4, REP12)

/* --- AVX-512F, 512-bit --- */
#define DECL_avx512_f32(i) __m512 a##i = _mm512_set1_ps(0.5f + 0.01f * i);
#define STEP_avx512_f32(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define SUM_avx512_f32(i) s = _mm512_add_ps(s, a##i);
#define DECL_avx512_f64(i) __m512d a##i = _mm512_set1_pd(0.5 + 0.01 * i);
#define STEP_avx512_f64(i) a##i = _mm512_fmadd_pd(a##i, m, c);
#define SUM_avx512_f64(i) s = _mm512_add_pd(s, a##i);
#define SET1_PS16(x) _mm512_set1_ps((float)(x))
#define SET1_PD8(x) _mm512_set1_pd(x)
__attribute__((target("avx512f"))) static double red_ps16(__m512 v)
{ float t[16]; _mm512_storeu_ps(t, v); return t[0] + t[15]; }
__attribute__((target("avx512f"))) static double red_pd8(__m512d v)
{ double t[8]; _mm512_storeu_pd(t, v); return t[0] + t[7]; }
DEFINE_CHAIN(avx512_f32, "avx512f", __m512, SET1_PS16, _, red_ps16, REP24)
DEFINE_CHAIN(avx512_f64, "avx512f", __m512d, SET1_PD8, _, red_pd8, REP24)

struct kernel {
    const char *isa, *dtype;
    double (*fn)(long);
    int flops_per_iter; /* 2 x lanes x accumulators */
    int supported;
};

/* Wall time of `iters` rounds on each of `nt` threads (all running at once). */
static double timed(const struct kernel *k, long iters, int nt)
{
    double t0 = now();
#pragma omp parallel num_threads(nt)
    {
        double r = k->fn(iters);
#pragma omp atomic
        g_sink += r;
    }
    return now() - t0;
}

/* GFLOP/s of all threads together: best of `trials` loops of ~20 ms. */
static double peak(const struct kernel *k, int nt, int trials)
{
    long iters = 1000;
    for (;;) { /* calibrate on one thread to ~20 ms */
        double dt = timed(k, iters, 1);
        if (dt > 0.005) { iters = (long)(iters * 0.02 / dt) + 1; break; }
        iters *= 4;
    }
    double best = 1e30;
    for (int t = 0; t < trials; t++) {
        double dt = timed(k, iters, nt);
        if (dt < best) best = dt;
    }
    return (double)k->flops_per_iter * iters * nt / best * 1e-9;
}

int main(int argc, char **argv)
{
    int trials = 15, json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else trials = atoi(argv[i]) > 0 ? atoi(argv[i]) : trials;
    }
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = __builtin_cpu_supports("avx512f");
    struct kernel ks[] = {
        {"avx2", "float32", avx2_f32, 2 * 8 * 12, avx2},
        {"avx2", "float64", avx2_f64, 2 * 4 * 12, avx2},
        {"avx512", "float32", avx512_f32, 2 * 16 * 24, avx512},
        {"avx512", "float64", avx512_f64, 2 * 8 * 24, avx512},
    };
    const int nk = sizeof ks / sizeof *ks;
    if (json) printf("{\"trials\": %d, \"results\": [", trials);
    else printf("FMA peak, GFLOP/s (best of %d ~20 ms loops; 2 flops per lane per FMA)\n"
                "%-7s %-8s %9s %9s %6s\n", trials, "isa", "dtype", "1 thread",
                "2 threads", "2t/1t");
    for (int i = 0; i < nk; i++) {
        const struct kernel *k = &ks[i];
        if (!k->supported) {
            if (json) printf("%s{\"isa\": \"%s\", \"dtype\": \"%s\", \"supported\": false}",
                             i ? ", " : "", k->isa, k->dtype);
            else printf("%-7s %-8s %9s\n", k->isa, k->dtype, "not supported by this CPU");
            continue;
        }
        double g1 = peak(k, 1, trials), g2 = peak(k, 2, trials);
        if (json)
            printf("%s{\"isa\": \"%s\", \"dtype\": \"%s\", \"supported\": true, "
                   "\"gflops\": {\"1\": %.3f, \"2\": %.3f}}", i ? ", " : "", k->isa,
                   k->dtype, g1, g2);
        else
            printf("%-7s %-8s %9.1f %9.1f %6.2f\n", k->isa, k->dtype, g1, g2, g2 / g1);
        fflush(stdout);
    }
    if (json) printf("]}\n");
    return 0;
}
