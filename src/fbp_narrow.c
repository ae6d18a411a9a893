/* fbp_narrow.c: the tiny-net kernels of the compiled epoch (contract in
 * fbp_gemm.h): fbp_narrow_* (the three products of a training step of a net
 * whose every layer is narrow) and fbp_packed_* (plain SGD on such a net
 * with each W_k kept in two padded copies for a whole call).
 *
 * Design
 * ------
 * They give bitwise what fbp_gemm_* gives on the current code path, and so
 * use the GEMM's own arithmetic from fbp_gemm_internal.h (FBP_KC slabs, the
 * vector exp / sigmoid / tanh, the epilogue epi_row_*, the activation
 * derivative, contraction off) rather than a copy of it; they are a file of
 * their own because they are a different concern from the general GEMM
 * (short rows, unit strides, whole nets per call, no packing, no threads)
 * and only share that arithmetic.  Two instances each: plain mul + add (the
 * generic ISA) and explicit FMAs (AVX2 and AVX-512 share one, as their small
 * paths share the scalar FMA and the "f" epilogue); the table returned is
 * that of fbp_gemm_current_isa().  Serial, no allocation, no state: every
 * write is to the caller's output, workspace or packed buffer.
 */
#include "fbp_gemm_internal.h"

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
TGT INLINE void NAME##_fwd(int64_t M, int64_t N, int64_t K,                     \
                           const T *A, int64_t lda, /* IN  (M, K) */            \
                           const T *W, int64_t ldw, /* IN  (N, K) */            \
                           const T *bias, int act, /* IN  (N) or NULL */        \
                           T *C, int64_t ldc) /* OUT (M, N) */                  \
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
TGT INLINE void NAME##_bwd(int64_t M, int64_t N, int64_t K,                     \
                           const T *D, int64_t ldd, /* IN  (M, K) */            \
                           const T *W, int64_t ldw, int act, /* IN  (K, N) */   \
                           const T *Aact, int64_t lda, /* IN  (M, N) */         \
                           T *C, int64_t ldc) /* OUT (M, N) */                  \
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
                             const T *D, int64_t ldd, /* IN  (M, N) */          \
                             const T *H, int64_t ldh, /* IN  (M, K) */          \
                             T beta, T *W, int64_t ldw) /* IN/OUT (N, K) */     \
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
static TGT void NAME##_net_fwd(const fbp_narrow_net *net, /* IN */              \
                               const T *theta, int64_t M, /* IN */              \
                               const T *x, /* IN  (M, sizes[0]) */              \
                               T *ws) /* OUT A_1 .. A_L */                      \
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
static TGT void NAME##_net_bwd(const fbp_narrow_net *net, /* IN */              \
                               const T *theta, int64_t M, /* IN */              \
                               T *ws) /* IN A_k, delta_L; OUT delta_k */        \
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
static TGT void NAME##_net_wgrad(const fbp_narrow_net *net, int64_t M, T alpha, /* IN */ \
                                 const T *x, /* IN  (M, sizes[0]) */            \
                                 const T *ws, T beta, /* IN  A_k, delta_k */    \
                                 T *out) /* IN/OUT the W_k */                   \
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
    return &narrow_##SFX##_table[fbp_gemm_current_isa()];                       \
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
int64_t fbp_packed_layout(int elem_size, int n_layers,
                          const int64_t *sizes,     /* IN  n_layers + 1 widths */
                          int64_t M,
                          fbp_packed *p)            /* OUT */
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
static TGT void NAME##_pack(const fbp_packed *p, const int64_t *sizes, /* IN */ \
                            const T *theta, const int64_t *w_off, /* IN */      \
                            T *buf) /* OUT */                                   \
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
static TGT void NAME##_unpack(const fbp_packed *p, const int64_t *sizes, /* IN */ \
                              const T *buf, const int64_t *w_off, /* IN */      \
                              T *theta) /* OUT the W_k */                       \
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
static TGT void NAME##_fwd(const fbp_packed *p, const int64_t *sizes, /* IN */  \
                           T *buf, /* IN A_0; OUT A_1 .. A_L */                 \
                           const T *theta, const int64_t *b_off, /* IN */       \
                           int hidden, int64_t M)                               \
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
static TGT void NAME##_bwd(const fbp_packed *p, const int64_t *sizes, /* IN */  \
                           T *buf, /* IN/OUT */                                 \
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
    return &packed_##SFX##_table[fbp_gemm_current_isa()];                       \
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
