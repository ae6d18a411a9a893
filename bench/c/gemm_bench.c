/* gemm_bench.c: GFLOP/s of fbp_gemm for the shapes backprop uses.
 *
 *   gcc -O3 -std=gnu11 -fopenmp -Isrc bench/c/gemm_bench.c src/fbp_*.c -lm \
 *       -o /tmp/gemm_bench && /tmp/gemm_bench [trials] [f32|f64]
 *
 * For each shape, 1 and 2 threads, the best of `trials` (default 15) timings of
 * a loop of calls lasting ~20 ms (short, so that some trials dodge other
 * processes on a shared machine).  FBP_GEMM_ISA=generic|avx2|avx512 forces a
 * code path.  Also reports GF/s of the 32x128x64 forward shape with a
 * sigmoid / tanh epilogue (1 thread) and ns per call of the tiny-net shape
 * M=1, N=2, K=2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fbp_gemm.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

struct shape { const char *name; int ta, tb, M, N, K; };
static const struct shape shapes[] = {
    {"fwd  ", 0, 1, 256, 2048, 1024}, {"fwd  ", 0, 1, 128, 256, 784},
    {"fwd  ", 0, 1, 32, 128, 64},     {"bwd  ", 0, 0, 256, 1024, 2048},
    {"bwd  ", 0, 0, 32, 64, 128},     {"wgrad", 1, 0, 2048, 1024, 256},
    {"wgrad", 1, 0, 128, 64, 32},
};

/* fwd: bias + relu (or g_fwd_act); bwd: dsrc sigmoid'; wgrad: alpha=-lr,
 * beta=1. */
static int g_fwd_act = 2; /* FBP_ACT_RELU */
#define DEFINE_BENCH(T, SFX)                                                    \
static double bench_##SFX(const struct shape *s, int nt, int trials,            \
                          long *reps_out)                                       \
{                                                                               \
    const int M = s->M, N = s->N, K = s->K;                                     \
    const int lda = s->ta ? M : K, ldb = s->tb ? K : N;                         \
    T *A = malloc(sizeof(T) * (size_t)M * K), *B = malloc(sizeof(T) * (size_t)K * N); \
    T *C = malloc(sizeof(T) * (size_t)M * N), *D = malloc(sizeof(T) * (size_t)M * N); \
    T *bias = malloc(sizeof(T) * N);                                            \
    for (long i = 0; i < (long)M * K; i++) A[i] = (T)((i % 13) * 0.01);         \
    for (long i = 0; i < (long)K * N; i++) B[i] = (T)((i % 7) * 0.01);          \
    for (long i = 0; i < (long)M * N; i++) { C[i] = 0; D[i] = (T)0.5; }         \
    for (int j = 0; j < N; j++) bias[j] = (T)0.1;                               \
    const int fwd = s->tb, wg = s->ta;                                          \
    const T alpha = wg ? (T)-1e-6 : (T)1, beta = wg ? (T)1 : (T)0;              \
    const T *bp = fwd ? bias : NULL, *dp = (!fwd && !wg) ? D : NULL;            \
    const int act = fwd ? g_fwd_act : (dp ? FBP_ACT_SIGMOID : FBP_ACT_IDENTITY); \
    const double flops = 2.0 * M * N * K;                                       \
    long reps = 1;                                                              \
    for (;;) { /* calibrate to ~20 ms */                                        \
        double t0 = now();                                                      \
        for (long r = 0; r < reps; r++)                                         \
            fbp_gemm_##SFX(s->ta, s->tb, M, N, K, alpha, A, lda, B, ldb, beta,  \
                           C, N, bp, act, dp, N, nt);                           \
        double dt = now() - t0;                                                 \
        if (dt > 0.01) { reps = (long)(reps * 0.02 / dt) + 1; break; }           \
        reps *= 2;                                                              \
    }                                                                           \
    double best = 1e30;                                                         \
    for (int t = 0; t < trials; t++) {                                          \
        double t0 = now();                                                      \
        for (long r = 0; r < reps; r++)                                         \
            fbp_gemm_##SFX(s->ta, s->tb, M, N, K, alpha, A, lda, B, ldb, beta,  \
                           C, N, bp, act, dp, N, nt);                           \
        double dt = (now() - t0) / reps;                                        \
        if (dt < best) best = dt;                                               \
    }                                                                           \
    free(A); free(B); free(C); free(D); free(bias);                             \
    *reps_out = reps;                                                           \
    return flops / best;                                                        \
}

DEFINE_BENCH(float, f32)
DEFINE_BENCH(double, f64)

static double tiny_ns(int nt)
{
    float A[2] = {0.3f, -0.2f}, W[4] = {0.1f, 0.2f, 0.3f, 0.4f}, b[2] = {0.f, 0.1f};
    float C[2];
    const long reps = 20000000;
    double best = 1e30;
    for (int t = 0; t < 5; t++) {
        double t0 = now();
        for (long r = 0; r < reps; r++) {
            fbp_gemm_f32(0, 1, 1, 2, 2, 1.0f, A, 2, W, 2, 0.0f, C, 2, b,
                         FBP_ACT_SIGMOID, NULL, 0, nt);
            __asm__ volatile("" : : "r"(C) : "memory");
        }
        double dt = (now() - t0) / reps;
        if (dt < best) best = dt;
    }
    return best * 1e9;
}

int main(int argc, char **argv)
{
    const int trials = argc > 1 ? atoi(argv[1]) : 15;
    const char *only = argc > 2 ? argv[2] : NULL;
    printf("isa %s, best of %d\n", fbp_gemm_isa(), trials);
    printf("%-5s %-5s %5s %5s %5s   %9s %9s  %5s\n", "dtype", "op", "M", "N", "K",
           "GF/s 1t", "GF/s 2t", "2t/1t");
    for (int d = 0; d < 2; d++) {
        const char *dn = d ? "f64" : "f32";
        if (only && strcmp(only, dn) != 0) continue;
        for (unsigned i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            const struct shape *s = &shapes[i];
            long reps;
            double g1 = d ? bench_f64(s, 1, trials, &reps) : bench_f32(s, 1, trials, &reps);
            double g2 = d ? bench_f64(s, 2, trials, &reps) : bench_f32(s, 2, trials, &reps);
            printf("%-5s %-5s %5d %5d %5d   %9.1f %9.1f  %5.2f\n", dn, s->name,
                   s->M, s->N, s->K, g1 * 1e-9, g2 * 1e-9, g2 / g1);
            fflush(stdout);
        }
    }
    /* the sigmoid / tanh epilogue on the blocked path (vector exp) */
    for (int a = FBP_ACT_SIGMOID; a <= FBP_ACT_TANH; a += 2) {
        g_fwd_act = a;
        for (int d = 0; d < 2; d++) {
            const char *dn = d ? "f64" : "f32";
            if (only && strcmp(only, dn) != 0) continue;
            const struct shape *s = &shapes[2]; /* fwd 32 x 128 x 64 */
            long reps;
            double g1 = d ? bench_f64(s, 1, trials, &reps) : bench_f32(s, 1, trials, &reps);
            printf("%-5s fwd+bias+%-7s %5d %5d %5d   %9.1f (1t)\n", dn,
                   a == FBP_ACT_SIGMOID ? "sigmoid" : "tanh", s->M, s->N, s->K,
                   g1 * 1e-9);
            fflush(stdout);
        }
    }
    g_fwd_act = FBP_ACT_RELU;
    printf("tiny f32 M=1 N=2 K=2 bias+sigmoid: %.1f ns/call (1t), %.1f ns/call (2t)\n",
           tiny_ns(1), tiny_ns(2));
    return 0;
}
