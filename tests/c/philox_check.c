/* philox_check.c: src/fbp_philox.h against Random123's known answers and fastbp/_philox.py.
 *
 * Built and run by tests/test_philox.py:
 *   philox_check kat
 *       Random123's kat_vectors for Philox-4x32-10 and -7; prints one line per
 *       failure and "N failed"; exit status 1 on any failure.
 *   philox_check uniforms SEED EPOCH STEP N_ROWS N_UNITS UNIT0
 *       prints fbp_dropout_uniform(...) * 2^24 (an integer) for rows
 *       0 .. N_ROWS-1 (one line each), units UNIT0 .. UNIT0+N_UNITS-1.
 *   philox_check range f32|f64 SEED EPOCH STEP ROW UNIT0 N P
 *       x[j] = 1 + j/8, then fbp_dropout_range on runs of 1 .. 9 units
 *       (varying starts, so runs begin anywhere in a Philox block); prints
 *       every x[j] with %a (exact).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fbp_philox.h"

static const uint32_t KAT[][11] = {
    /* rounds, counter[4], key[2], expected[4] */
    {10, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
     0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
    {10, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
     0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
    {10, 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
     0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    {7, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
     0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48},
    {7, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
     0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662},
    {7, 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
     0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a},
};

static int kat(void)
{
    int i, j, failed = 0;
    for (i = 0; i < (int)(sizeof KAT / sizeof KAT[0]); i++) {
        uint32_t out[4];
        if (KAT[i][0] == 10)
            fbp_philox4x32_10(&KAT[i][1], &KAT[i][5], out);
        else
            fbp_philox4x32(&KAT[i][1], &KAT[i][5], (int)KAT[i][0], out);
        for (j = 0; j < 4; j++) {
            if (out[j] != KAT[i][7 + j]) {
                printf("FAIL kat %d (rounds %u) word %d: %08x, expected %08x\n", i,
                       KAT[i][0], j, out[j], KAT[i][7 + j]);
                failed++;
            }
        }
    }
    printf("%d vectors, %d failed\n", (int)(sizeof KAT / sizeof KAT[0]), failed);
    return failed != 0;
}

static int uniforms(char **a)
{
    uint64_t seed = strtoull(a[0], NULL, 0);
    uint32_t epoch = (uint32_t)strtoul(a[1], NULL, 0), step = (uint32_t)strtoul(a[2], NULL, 0);
    long n_rows = strtol(a[3], NULL, 0), n_units = strtol(a[4], NULL, 0), i, j;
    uint64_t unit0 = strtoull(a[5], NULL, 0);
    for (i = 0; i < n_rows; i++) {
        for (j = 0; j < n_units; j++)
            printf("%s%.0f", j ? " " : "",
                   fbp_dropout_uniform(seed, epoch, step, (uint32_t)i, unit0 + (uint64_t)j)
                   * 16777216.0);
        printf("\n");
    }
    return 0;
}

#define RANGE(T, SFX)                                                                  \
static int range_##SFX(uint64_t seed, uint32_t epoch, uint32_t step, uint32_t row,     \
                       uint64_t unit0, long n, double p)                               \
{                                                                                      \
    T *x = malloc(sizeof(T) * (size_t)(n + 1));                                        \
    T scale = (T)(1.0 / (1.0 - p));                                                    \
    long j, start, len = 1;                                                            \
    if (!x) return 1;                                                                  \
    for (j = 0; j < n; j++)                                                            \
        x[j] = (T)(1 + j / 8.0);                                                       \
    for (start = 0; start < n; start += len, len = len % 9 + 1) {                      \
        long m = len < n - start ? len : n - start;                                    \
        fbp_dropout_range_##SFX(x + start, m, unit0 + (uint64_t)start, seed, epoch,    \
                                step, row, p, scale);                                  \
    }                                                                                  \
    for (j = 0; j < n; j++)                                                            \
        printf("%a\n", (double)x[j]);                                                  \
    free(x);                                                                           \
    return 0;                                                                          \
}

RANGE(float, f32)
RANGE(double, f64)

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "kat") == 0)
        return kat();
    if (argc == 8 && strcmp(argv[1], "uniforms") == 0)
        return uniforms(argv + 2);
    if (argc == 10 && strcmp(argv[1], "range") == 0) {
        uint64_t seed = strtoull(argv[3], NULL, 0), unit0 = strtoull(argv[7], NULL, 0);
        uint32_t epoch = (uint32_t)strtoul(argv[4], NULL, 0);
        uint32_t step = (uint32_t)strtoul(argv[5], NULL, 0);
        uint32_t row = (uint32_t)strtoul(argv[6], NULL, 0);
        long n = strtol(argv[8], NULL, 0);
        double p = strtod(argv[9], NULL);
        if (strcmp(argv[2], "f32") == 0)
            return range_f32(seed, epoch, step, row, unit0, n, p);
        return range_f64(seed, epoch, step, row, unit0, n, p);
    }
    fprintf(stderr, "usage: philox_check kat | uniforms SEED EPOCH STEP N_ROWS N_UNITS "
                    "UNIT0 | range f32|f64 SEED EPOCH STEP ROW UNIT0 N P\n");
    return 2;
}
