/* fbp_gemm.h: the project's own dense matrix product for float and double.
 *
 * Row-major throughout.  One entry point per dtype computes
 *
 *     C[M, N] = epilogue( alpha * op(A)[M, K] @ op(B)[K, N] + beta * C )
 *
 * where op(X) is X or X^T (trans_* != 0), lda/ldb/ldc are row strides in
 * elements, and the epilogue, applied once to the finished sum, is
 *
 *     if bias != NULL:  C[i, j] += bias[j]                 (length N)
 *     then              C[i, j]  = act(C[i, j])            (FBP_ACT_*)
 *     if dsrc != NULL:  C[i, j] *= act'(from dsrc[i, j])   (derivative from the
 *                                                            stored activation)
 *
 * The derivative is taken from the stored *output* of the activation,
 * a = act(z): sigmoid' = a (1 - a), relu' = [a > 0], tanh' = 1 - a^2,
 * identity' = 1.  With dsrc the activation `act` names whose derivative to
 * use and no activation is applied to C itself.
 *
 * beta == 0 means C is write-only (never read, may hold NaN).
 *
 * Contract that the rest of fastbp relies on:
 *   - Determinism: for fixed (trans_a, trans_b, M, N, K) the result is bitwise
 *     identical for every n_threads >= 1.  The k-sum of each C[i, j] runs in
 *     an order that depends only on K (never on the thread count or on where
 *     (i, j) falls in a tile).
 *   - n_threads <= 1 never enters an OpenMP parallel region.
 *   - No allocation per call beyond thread-local packing buffers that are
 *     reused across calls.
 *   - Callable without the GIL from any thread.
 */
#ifndef FBP_GEMM_H
#define FBP_GEMM_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FBP_ACT_IDENTITY = 0,
    FBP_ACT_SIGMOID = 1,
    FBP_ACT_RELU = 2,
    FBP_ACT_TANH = 3
};

void fbp_gemm_f32(int trans_a, int trans_b, int M, int N, int K,
                  float alpha, const float *A, int lda,
                  const float *B, int ldb,
                  float beta, float *C, int ldc,
                  const float *bias, int act,
                  const float *dsrc, int ldd,
                  int n_threads);

void fbp_gemm_f64(int trans_a, int trans_b, int M, int N, int K,
                  double alpha, const double *A, int lda,
                  const double *B, int ldb,
                  double beta, double *C, int ldc,
                  const double *bias, int act,
                  const double *dsrc, int ldd,
                  int n_threads);

/* Name of the code path chosen at run time ("avx512", "avx2", "generic"). */
const char *fbp_gemm_isa(void);

/* Test/benchmark hook: force the code path by name ("generic", "avx2",
 * "avx512"; NULL or "" = the best one the CPU supports).  Returns 0 when the
 * path is now in use, -1 (nothing changed) when it is unknown, not compiled in
 * or not supported by this CPU.  Not to be called while another thread is
 * inside fbp_gemm_*.  The environment variable FBP_GEMM_ISA, read once on
 * first use, does the same (an unsupported name leaves the best path). */
int fbp_gemm_set_isa(const char *name);

#ifdef __cplusplus
}
#endif
#endif
