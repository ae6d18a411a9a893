/* optim_check.c: runs the range kernels of src/fbp_optim.h on a case file.
 *
 * Built and driven by tests/test_optim_c.py, which writes the case, runs
 *     optim_check CASE_FILE OUT_FILE
 * and compares OUT_FILE bit for bit with fastbp/optim.py's numpy `update`.
 *
 * CASE_FILE (native byte order):
 *   int64  kind (0 SGD, 1 Adam/AdamW, 2 RMSprop, 3 scikit-learn's Adam), elem (4 float, 8 double),
 *          n, n_steps, n_state, step0 (the state's step count), split_seed, 0
 *   double hyper[8]
 *            SGD:     momentum, nesterov, weight_decay
 *            Adam:    beta1, beta2, eps, weight_decay, decoupled, amsgrad
 *            RMSprop: alpha, eps, weight_decay, momentum, centered
 *   double lr[n_steps]                     this step's learning rate
 *   T      theta[n], state[n_state][n], grad[n_steps][n]
 * The state arrays come in optim.py's state_names() order.
 * OUT_FILE: T theta[n], state[n_state][n], then double sq[n_steps]: the
 * kernels' `sq` output (sum of theta^2 before each step).
 *
 * Each step splits [0, n) into ranges of random lengths (0 .. 70, from
 * split_seed and the step) and calls the kernel on each range in index
 * order, so the result also shows that a range's update does not depend on
 * where the ranges start and end.  Exit status 0, or 1 with a message on
 * stderr for a malformed case.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fbp_optim.h"

static uint64_t lcg;
static int64_t next_len(void)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (int64_t)((lcg >> 33) % 71);
}

static int read_all(FILE *f, void *dst, size_t bytes)
{
    return fread(dst, 1, bytes, f) == bytes;
}

#define RUN(T, SFX)                                                                    \
static int run_##SFX(const int64_t *h, const double *hyp, const double *lrs,           \
                     FILE *in, FILE *out)                                              \
{                                                                                      \
    int64_t kind = h[0], n = h[2], n_steps = h[3], n_state = h[4], step0 = h[5];       \
    int64_t k, start, len;                                                             \
    T *theta = malloc(sizeof(T) * (size_t)(n + 1));                                    \
    T *state = malloc(sizeof(T) * (size_t)(n_state * n + 1));                          \
    T *grad = malloc(sizeof(T) * (size_t)(n + 1));                                     \
    double *sq = calloc((size_t)(n_steps + 1), sizeof(double));                        \
    if (!theta || !state || !grad || !sq) {                                            \
        fprintf(stderr, "out of memory\n");                                            \
        return 1;                                                                      \
    }                                                                                  \
    if (!read_all(in, theta, sizeof(T) * (size_t)n)                                    \
        || !read_all(in, state, sizeof(T) * (size_t)(n_state * n))) {                  \
        fprintf(stderr, "short case file (theta/state)\n");                            \
        return 1;                                                                      \
    }                                                                                  \
    for (k = 0; k < n_steps; k++) {                                                    \
        int64_t step = step0 + k + 1;                                                  \
        if (!read_all(in, grad, sizeof(T) * (size_t)n)) {                              \
            fprintf(stderr, "short case file (grad %ld)\n", (long)k);                  \
            return 1;                                                                  \
        }                                                                              \
        lcg = (uint64_t)h[6] * 0x9E3779B97F4A7C15ull + (uint64_t)k;                    \
        if (kind == 0) {                                                               \
            fbp_sgd_step_##SFX s = fbp_sgd_prepare_##SFX(lrs[k], hyp[0], hyp[1] != 0,  \
                                                      hyp[2], step);                   \
            if (s.has_momentum != (n_state == 1)) {                                    \
                fprintf(stderr, "SGD: n_state does not match momentum\n");             \
                return 1;                                                              \
            }                                                                          \
            for (start = 0; start < n; start += len) {                                 \
                len = next_len();                                                      \
                if (len > n - start) len = n - start;                                  \
                fbp_sgd_range_##SFX(theta + start, grad + start,                       \
                                    s.has_momentum ? state + start : NULL,             \
                                    len, &s, &sq[k]);                                  \
            }                                                                          \
        } else if (kind == 1 || kind == 3) {  /* 3: scikit-learn's (hyp b1, b2, eps) */\
            fbp_adam_step_##SFX s = kind == 1                                          \
                ? fbp_adam_prepare_##SFX(lrs[k], hyp[0], hyp[1], hyp[2], hyp[3],       \
                                         hyp[4] != 0, hyp[5] != 0, step)               \
                : fbp_adam_sklearn_prepare_##SFX(lrs[k], hyp[0], hyp[1], hyp[2], step); \
            if (n_state != 2 + s.amsgrad) {  /* scikit-learn's: amsgrad off, 2 */      \
                fprintf(stderr, "Adam: n_state does not match amsgrad\n");             \
                return 1;                                                              \
            }                                                                          \
            for (start = 0; start < n; start += len) {                                 \
                len = next_len();                                                      \
                if (len > n - start) len = n - start;                                  \
                fbp_adam_range_##SFX(theta + start, grad + start, state + start,       \
                                     state + n + start,                                \
                                     s.amsgrad ? state + 2 * n + start : NULL,         \
                                     len, &s, &sq[k]);                                 \
            }                                                                          \
        } else if (kind == 2) {                                                        \
            fbp_rmsprop_step_##SFX s = fbp_rmsprop_prepare_##SFX(lrs[k], hyp[0], hyp[1], \
                                                              hyp[2], hyp[3],          \
                                                              hyp[4] != 0);            \
            T *buf = s.has_momentum ? state + n : NULL;                                \
            T *gavg = s.centered ? state + (1 + s.has_momentum) * n : NULL;            \
            if (n_state != 1 + s.has_momentum + s.centered) {                          \
                fprintf(stderr, "RMSprop: n_state does not match the options\n");      \
                return 1;                                                              \
            }                                                                          \
            for (start = 0; start < n; start += len) {                                 \
                len = next_len();                                                      \
                if (len > n - start) len = n - start;                                  \
                fbp_rmsprop_range_##SFX(theta + start, grad + start, state + start,    \
                                        buf ? buf + start : NULL,                      \
                                        gavg ? gavg + start : NULL, len, &s, &sq[k]);  \
            }                                                                          \
        } else {                                                                       \
            fprintf(stderr, "unknown kind %ld\n", (long)kind);                         \
            return 1;                                                                  \
        }                                                                              \
    }                                                                                  \
    fwrite(theta, sizeof(T), (size_t)n, out);                                          \
    fwrite(state, sizeof(T), (size_t)(n_state * n), out);                              \
    fwrite(sq, sizeof(double), (size_t)n_steps, out);                                  \
    free(theta); free(state); free(grad); free(sq);                                    \
    return 0;                                                                          \
}

RUN(float, f32)
RUN(double, f64)

int main(int argc, char **argv)
{
    int64_t h[8];
    double hyp[8], *lrs;
    FILE *in, *out;
    int rc;
    if (argc != 3) {
        fprintf(stderr, "usage: optim_check CASE_FILE OUT_FILE\n");
        return 1;
    }
    in = fopen(argv[1], "rb");
    if (!in || !read_all(in, h, sizeof h) || !read_all(in, hyp, sizeof hyp)) {
        fprintf(stderr, "cannot read the case header of %s\n", argv[1]);
        return 1;
    }
    if (h[2] < 0 || h[3] < 0 || h[4] < 0 || h[4] > 3 || (h[1] != 4 && h[1] != 8)) {
        fprintf(stderr, "malformed case header\n");
        return 1;
    }
    lrs = malloc(sizeof(double) * (size_t)(h[3] ? h[3] : 1));
    if (!lrs || !read_all(in, lrs, sizeof(double) * (size_t)h[3])) {
        fprintf(stderr, "short case file (lr)\n");
        return 1;
    }
    out = fopen(argv[2], "wb");
    if (!out) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    rc = h[1] == 4 ? run_f32(h, hyp, lrs, in, out) : run_f64(h, hyp, lrs, in, out);
    fclose(in);
    if (fclose(out) != 0)
        rc = 1;
    free(lrs);
    return rc;
}
