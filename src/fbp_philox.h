/* fbp_philox.h: Philox-4x32-10 and the dropout masks drawn from it, header-only.
 *
 * Design
 * ------
 * * Philox-4x32-10 (Salmon et al., SC'11; Random123) maps a counter of four
 *   32-bit words and a key of two to four random 32-bit words: ten rounds of
 *   two 32x32->64-bit multiplies and XORs, the key bumped by Weyl constants
 *   between rounds.  It is a pure function: no state, so any thread computes
 *   the random numbers of any (row, unit) in any order and a fit gives the
 *   same mask, and the same bits, for any number of threads.  The reference
 *   is fastbp/_philox.py; both are checked against Random123's published
 *   known-answer vectors (tests/test_philox.py).
 * * The dropout mapping (the same in fastbp/_philox.py and docs/optim.md):
 *     key     = (seed & 0xffffffff, seed >> 32)
 *     counter = (unit / 4, row, step, epoch)
 *     word    = output word unit % 4
 *     u       = (word >> 8) * 2^-24                 in [0, 1), exact in float
 *     keep    = u >= p     (in double; p as the caller's double)
 *     kept h *= scale = (T)(1 / (1 - p)), dropped h = 0.
 *   `unit` counts the hidden units of all hidden layers in order (layer 1's
 *   first), `row` is the position in the batch, `step` the batch's index in
 *   the epoch, `epoch` the epoch's index; all 0-based.
 * * fbp_dropout_range_<sfx> applies the mask to a contiguous run of units of
 *   one row in place; it writes only x[0 .. n), so threads that own
 *   different rows (or different runs) never write the same element.  The
 *   same call on the row's delta gives the backward pass (the derivative of
 *   h -> mask * scale * h is mask * scale).
 */
#ifndef FBP_PHILOX_H
#define FBP_PHILOX_H

#include <stdint.h>

#define FBP_PHILOX_M0 0xD2511F53u
#define FBP_PHILOX_M1 0xCD9E8D57u
#define FBP_PHILOX_W0 0x9E3779B9u
#define FBP_PHILOX_W1 0xBB67AE85u

/* Philox-4x32 with `rounds` rounds (10 is the standard; Random123 also
 * publishes known answers for 7). */
static inline void fbp_philox4x32(
    const uint32_t ctr_in[4],   /* IN counter */
    const uint32_t key_in[2],   /* IN key */
    int rounds,
    uint32_t out[4])            /* OUT four random words */
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    int r;
    for (r = 0; r < rounds; r++) {
        uint64_t p0 = (uint64_t)FBP_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)FBP_PHILOX_M1 * c2;
        if (r) {
            k0 += FBP_PHILOX_W0;
            k1 += FBP_PHILOX_W1;
        }
        c0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

static inline void fbp_philox4x32_10(
    const uint32_t ctr[4],      /* IN counter */
    const uint32_t key[2],      /* IN key */
    uint32_t out[4])            /* OUT four random words */
{
    fbp_philox4x32(ctr, key, 10, out);
}

/* The four uniforms of units 4*block .. 4*block+3 of one row. */
static inline void fbp_dropout_block(uint64_t seed, uint32_t epoch, uint32_t step,
                                     uint32_t row, uint32_t block,
                                     double u[4])  /* OUT (word >> 8) * 2^-24 */
{
    uint32_t ctr[4], key[2], w[4];
    int j;
    ctr[0] = block;
    ctr[1] = row;
    ctr[2] = step;
    ctr[3] = epoch;
    key[0] = (uint32_t)seed;
    key[1] = (uint32_t)(seed >> 32);
    fbp_philox4x32_10(ctr, key, w);
    for (j = 0; j < 4; j++)
        u[j] = (double)(w[j] >> 8) * (1.0 / 16777216.0);
}

/* The uniform that decides `unit` (< 2^34) of `row`. */
static inline double fbp_dropout_uniform(uint64_t seed, uint32_t epoch, uint32_t step,
                                         uint32_t row, uint64_t unit)
{
    double u[4];
    fbp_dropout_block(seed, epoch, step, row, (uint32_t)(unit >> 2), u);
    return u[unit & 3];
}

#define FBP_PHILOX_DEFINE(T, SFX)                                                      \
/* x[j] (unit unit0 + j of `row`) = u >= p ? x[j] * scale : 0, j = 0 .. n-1 */         \
static inline void fbp_dropout_range_##SFX(                                            \
    T *x,               /* IN/OUT n activations (or deltas) of one row */              \
    int64_t n,                                                                         \
    uint64_t unit0,     /* IN the global unit index of x[0] */                         \
    uint64_t seed, uint32_t epoch, uint32_t step, uint32_t row,                        \
    double p,           /* IN drop probability, in [0, 1) */                           \
    T scale)            /* IN (T)(1 / (1 - p)) */                                      \
{                                                                                      \
    double u[4];                                                                       \
    int64_t j = 0;                                                                     \
    while (j < n) {                                                                    \
        uint64_t unit = unit0 + (uint64_t)j;                                           \
        int lane = (int)(unit & 3);                                                    \
        fbp_dropout_block(seed, epoch, step, row, (uint32_t)(unit >> 2), u);           \
        for (; lane < 4 && j < n; lane++, j++)                                         \
            x[j] = u[lane] >= p ? x[j] * scale : (T)0;                                 \
    }                                                                                  \
}

FBP_PHILOX_DEFINE(float, f32)
FBP_PHILOX_DEFINE(double, f64)

#endif /* FBP_PHILOX_H */
