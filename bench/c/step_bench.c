/* step_bench.c: the GEMM calls of one 1024-2048-2048-1024 relu b256 training step,
 * as the step makes them: 1 thread = unpacked calls, M=256; 2 threads = pack
 * wave (each thread half of each W's columns), row tiles of 128 rows on the
 * packs (+ each tile packs its rows of H_k), part 2 = each thread half the
 * units of each layer on the H packs.  Prints ms per step (best of R) and GF/s.
 *   gcc -O3 -std=gnu11 -fopenmp -Isrc bench/c/step_bench.c src/fbp_gemm*.c src/fbp_narrow.c -lm -o /tmp/step_bench
 *   /tmp/step_bench THREADS REPS   (float32 only) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <omp.h>
#include "fbp_gemm.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
#define L 3
static const int64_t S[L+1] = {1024, 2048, 2048, 1024};
#define MB 256
typedef float T;
static T *W[L], *b[L], *H[L+1], *D[L+1], *Wp_f[L], *Wp_b[L], *Hp[L];
static void *al(size_t n){ void *p = aligned_alloc(64, (n*sizeof(T)+63)/64*64); return p; }
static void rowtile(int64_t r0, int64_t r1, int packed) {
    for (int k = 0; k < L; k++) {
        int64_t ni = S[k], no = S[k+1];
        int act = k < L-1 ? FBP_ACT_RELU : FBP_ACT_IDENTITY;
        if (packed) fbp_gemm_packed_f32(0, r1-r0, no, ni, 1, H[k]+r0*ni, ni, Wp_f[k], 0, H[k+1]+r0*no, no, b[k], act, NULL, 0);
        else fbp_gemm_f32(0, 1, r1-r0, no, ni, 1, H[k]+r0*ni, ni, W[k], ni, 0, H[k+1]+r0*no, no, b[k], act, NULL, 0, 1);
        if (packed) fbp_gemm_pack_b_rows_f32(0, ni, MB, H[k], ni, Hp[k], r0, r1);
    }
    for (int64_t i = r0*S[L]; i < r1*S[L]; i++) D[L][i] = H[L][i] * 1e-3f;
    for (int k = L-1; k >= 1; k--) {
        int64_t ni = S[k], no = S[k+1];
        if (packed) fbp_gemm_packed_f32(0, r1-r0, ni, no, 1, D[k+1]+r0*no, no, Wp_b[k], 0, D[k]+r0*ni, ni, NULL, FBP_ACT_RELU, H[k]+r0*ni, ni);
        else fbp_gemm_f32(0, 0, r1-r0, ni, no, 1, D[k+1]+r0*no, no, W[k], ni, 0, D[k]+r0*ni, ni, NULL, FBP_ACT_RELU, H[k]+r0*ni, ni, 1);
    }
}
static void units(int k, int64_t o0, int64_t o1, int packed) {
    int64_t ni = S[k], no = S[k+1];
    if (packed) fbp_gemm_packed_f32(1, o1-o0, ni, MB, -1e-6f, D[k+1]+o0, no, Hp[k], 1, W[k]+o0*ni, ni, NULL, FBP_ACT_IDENTITY, NULL, 0);
    else fbp_gemm_f32(1, 0, o1-o0, ni, MB, -1e-6f, D[k+1]+o0, no, H[k], ni, 1, W[k]+o0*ni, ni, NULL, FBP_ACT_IDENTITY, NULL, 0, 1);
}
int main(int argc, char **argv) {
    int nt = atoi(argv[1]), reps = atoi(argv[2]);
    double macs = 0;
    for (int k = 0; k < L; k++) {
        W[k] = al(S[k]*S[k+1]); b[k] = al(S[k+1]);
        for (int64_t i = 0; i < S[k]*S[k+1]; i++) W[k][i] = ((i*7919)%1001 - 500) * 1e-5f;
        for (int64_t i = 0; i < S[k+1]; i++) b[k][i] = 0.01f;
        Wp_f[k] = al(fbp_gemm_packed_size(4, S[k+1], S[k])); Wp_b[k] = al(fbp_gemm_packed_size(4, S[k], S[k+1]));
        Hp[k] = al(fbp_gemm_packed_size(4, S[k], MB));
        macs += (double)MB*S[k]*S[k+1]*(k ? 3 : 2);
    }
    for (int k = 0; k <= L; k++) { H[k] = al(MB*S[k]); D[k] = al(MB*S[k]); }
    for (int64_t i = 0; i < MB*S[0]; i++) H[0][i] = ((i*31)%97 - 48) * 0.01f;
    double best = 1e9, tsum[3] = {0};
    for (int r = 0; r < reps; r++) {
        double t0 = now(), tp = 0, tr = 0;
        if (nt == 1) {
            rowtile(0, MB, 0); tr = now();
            for (int k = 0; k < L; k++) units(k, 0, S[k+1], 0);
            tp = t0;
        } else {
            #pragma omp parallel num_threads(nt)
            {
                int t = omp_get_thread_num();
                for (int k = 0; k < L; k++) {
                    int64_t nr = fbp_gemm_packed_nr(4);
                    int64_t n = S[k+1], h = (n/2 + nr-1)/nr*nr;
                    fbp_gemm_pack_b_f32(1, n, S[k], W[k], S[k], Wp_f[k], t ? h : 0, t ? n : h);
                    if (k) { n = S[k]; h = (n/2 + nr-1)/nr*nr;
                        fbp_gemm_pack_b_f32(0, n, S[k+1], W[k], S[k], Wp_b[k], t ? h : 0, t ? n : h); }
                }
                #pragma omp barrier
                #pragma omp master
                tp = now();
                rowtile(t*MB/nt, (t+1)*MB/nt, 1);
                #pragma omp barrier
                #pragma omp master
                tr = now();
                for (int k = 0; k < L; k++) units(k, t*S[k+1]/nt, (t+1)*S[k+1]/nt, 1);
            }
        }
        double t1 = now();
        if (t1 - t0 < best) { best = t1 - t0; tsum[0] = tp - t0; tsum[1] = tr - (nt==1?t0:tp); tsum[2] = t1 - tr; }
    }
    printf("%s %d thr: step %.2f ms  %.1f GF/s  (pack %.2f rows %.2f units %.2f ms)\n", fbp_gemm_isa(), nt, best*1e3, 2*macs/best*1e-9, tsum[0]*1e3, tsum[1]*1e3, tsum[2]*1e3);
    return 0;
}
