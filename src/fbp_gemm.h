/* fbp_gemm.h: the project's own dense matrix product for float and double.
 *
 * Row-major throughout.  One entry point per dtype computes
 *
 *     C[M, N] = epilogue( alpha * op(A)[M, K] @ op(B)[K, N] + beta * C )
 *
 * where op(X) is X or X^T (trans_* != 0), lda/ldb/ldc are row strides in
 * elements (sizes, strides and every index computed from them are 64-bit:
 * int64_t throughout, never int or long, so a problem with 2**31 rows or more
 * or an offset beyond 2**31 elements is fine on every platform), and the epilogue, applied once to the finished sum, is
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
 * C must not overlap A or B: the blocked path reads a small op(A) where it
 * is (fbp_gemm_set_unpacked_a, below), and packs each K-slab of A and B
 * after the previous slab's sums were written to C.
 *
 * Contract that the rest of fastbp relies on:
 *   - Per-element invariance: for fixed (trans_a, trans_b, K, alpha, beta,
 *     act, whether bias / dsrc are given) and fixed values of row i of op(A),
 *     column j of op(B), the incoming C[i, j] (when beta != 0), bias[j] and
 *     dsrc[i, j], the result C[i, j] is bitwise the same for every M, N,
 *     every position of (i, j) in the problem, every lda/ldb/ldc/ldd and
 *     every n_threads >= 1.  So a sub-block of C computed on its own (pointer
 *     offsets into A, B, C, bias, dsrc and smaller M, N) equals the same
 *     block of the full product: 1 row predicted alone equals that row inside
 *     a batch, and a batch's rows may be split across threads (or calls) in
 *     any way without changing a bit.
 *     How: every path (small and blocked, full and edge micro-kernels, op(A)
 *     packed or read where it is, the fallback used when a packing buffer
 *     cannot be allocated) computes each
 *     element with one sequence of floating-point operations:
 *         for each K-slab [k0, k1) of FBP_KC = 256 (boundaries depend on K):
 *             acc = 0; for k = k0..k1-1: acc = fma(op(A)[i,k], op(B)[k,j], acc)
 *             first slab: c = alpha*acc            (beta == 0)
 *                         c = fma(alpha, acc, beta*C[i,j])
 *             later:      c = fma(alpha, acc, c)
 *         then the epilogue above, by the same code on every path (sigmoid
 *         and tanh by the library's own exp, not libm).
 *     "fma" is a fused multiply-add on the AVX2/AVX-512 code paths and a
 *     multiply then an add on the generic one, so results may differ between
 *     code paths (i.e. between machines, or under FBP_GEMM_ISA), never
 *     between shapes on one machine.  Likewise the exp inside sigmoid and
 *     tanh uses fused multiply-adds on the FMA code paths (one shared
 *     implementation for AVX2 and AVX-512) and mul+add on the generic one.
 *     K == 0 gives c = alpha*0 (+ beta*C) then the epilogue.
 *   - Determinism: in particular, for fixed inputs the result is bitwise
 *     identical for every n_threads >= 1.
 *   - n_threads <= 1 never enters an OpenMP parallel region.  The threads of
 *     a region run with the caller's FTZ/DAZ mode (set on entry, each
 *     thread's own mode restored on exit).
 *   - No allocation per call beyond thread-local packing buffers that are
 *     reused across calls.
 *   - Callable without the GIL from any thread.
 *   - Pre-packed op(B) (fbp_gemm_pack_b_*, fbp_gemm_packed_*, below) is one
 *     more path under the invariance: a packed call gives bitwise what the
 *     unpacked call gives (for any n_threads), for every shape and every
 *     way the pack was split into column ranges, provided the pack and the
 *     call ran under the same ISA.
 */
#ifndef FBP_GEMM_H
#define FBP_GEMM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FBP_ACT_IDENTITY = 0,
    FBP_ACT_SIGMOID = 1,
    FBP_ACT_RELU = 2,
    FBP_ACT_TANH = 3
};

/* The entry points fbp_gemm_f32 (T = float) and fbp_gemm_f64 (T = double),
 * as described at the top of this file. */
#define FBP_GEMM_DECL(T, SFX)                                                   \
void fbp_gemm_##SFX(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,  \
                    T alpha, const T *A, int64_t lda,                           \
                    const T *B, int64_t ldb,                                    \
                    T beta, T *C, int64_t ldc,                                  \
                    const T *bias, int act,                                     \
                    const T *dsrc, int64_t ldd,                                 \
                    int n_threads);
FBP_GEMM_DECL(float, f32)
FBP_GEMM_DECL(double, f64)

/* Pre-packed op(B).  A caller that multiplies many row blocks of op(A) by
 * the same op(B) (the row tiles of a training step, every one with the
 * whole W_k) packs op(B) once with fbp_gemm_pack_b_* (column ranges may be
 * packed by different threads at once) and runs each block with
 * fbp_gemm_packed_*, which reads the packed copy instead of packing op(B)
 * again in every call.
 *
 * Layout: the blocked driver's own (fbp_gemm.c, "Pre-packed op(B)"): for
 * each NC = 4096 wide column panel jc, for each KC = 256 deep K-slab pc, the
 * NR-wide slivers of op(B)[pc:pc+kc, jc:jc+nc], k-major (NR values per k),
 * the last sliver zero-padded, at Bp + jc*K + pc*ncp (ncp = nc rounded up to
 * NR).  It depends on the code path: pack and packed call must run under
 * the same ISA (fbp_gemm_isa(); fbp_gemm_set_isa in between invalidates a
 * pack, and so does an FBP_GEMM_ISA that differs between processes: a pack
 * is not a file format).
 *
 * Alignment: Bp should be 64-byte aligned (the micro-kernels read it with
 * aligned vector loads).  A Bp off its ISA's vector alignment is still
 * correct, only slower: each slab is copied into the thread buffer first.
 *
 * fbp_gemm_packed_size: elements (not bytes) of a pre-packed op(B) of K x N
 * for the current ISA: K * (N rounded up to fbp_gemm_packed_nr); 0 when
 * N <= 0 or K <= 0. */
int64_t fbp_gemm_packed_size(int elem_size, int64_t N, int64_t K);

/* NR of the packed layout of the current ISA (the micro-tile width of
 * fbp_gemm_tile_shape): column ranges given to fbp_gemm_pack_b_* start at
 * multiples of it. */
int64_t fbp_gemm_packed_nr(int elem_size);

/* fbp_gemm_pack_b_f32 (T = float) and fbp_gemm_pack_b_f64 (T = double):
 * pack columns [j0, j1) of op(B) (K x N; op(B) = B if trans_b == 0 (B is
 * K x N, row stride ldb), B^T if trans_b == 1 (B is N x K, row stride ldb))
 * into Bp, which holds fbp_gemm_packed_size(sizeof(T), N, K) elements.  j0 a
 * multiple of fbp_gemm_packed_nr, j1 a multiple of it or N (0 <= j0 <= j1 <=
 * N; j1 > N is taken as N, j0 < 0 as 0, an empty range or K <= 0 writes
 * nothing).  It writes exactly the slivers of those columns in every slab
 * (the padding of the last sliver belongs to the range that holds column
 * N - 1), so different column ranges write disjoint parts of Bp and threads
 * may pack them concurrently; never writes outside Bp[0 : packed_size].
 * Returns 0; -1, writing nothing, for a non-empty range that breaks the
 * rule (j0 not a multiple of NR: its slivers would run past the end of Bp;
 * j1 < N not a multiple of NR: it would write padding that belongs to the
 * next range).  Serial, no allocation, nogil-safe.
 *
 * fbp_gemm_pack_b_rows_f32 / fbp_gemm_pack_b_rows_f64: the same packing
 * (the same Bp, of fbp_gemm_packed_size(sizeof(T), N, K) elements) of rows
 * [k0, k1) of op(B) only, every column (0 <= k0 <= k1 <= K; k0 < 0 is taken
 * as 0, k1 > K as K; an empty range or N <= 0 writes nothing).  No
 * alignment asked of k0 or k1: in every slab and sliver it writes exactly
 * the k-major values of those rows (the zero padding lanes of the last
 * sliver included), so different row ranges write disjoint parts of Bp,
 * threads may pack them concurrently, and ranges that cover [0, K) leave
 * Bp bitwise as fbp_gemm_pack_b_SFX(0, N) does; never writes outside
 * Bp[0 : packed_size].  For a product whose op(B) rows are produced in
 * row blocks by different threads (a training step's layer input H_k,
 * K = the batch rows): each packs its own rows while they are in its
 * cache.  Serial, no allocation, nogil-safe.
 *
 * fbp_gemm_packed_f32 / fbp_gemm_packed_f64: as fbp_gemm_SFX(trans_a,
 * <trans_b>, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act, dsrc,
 * ldd, 1) with op(B) given pre-packed in Bp (all N columns, packed by
 * fbp_gemm_pack_b_SFX under the same ISA): the same bits, for every M >= 0
 * (including the shapes the unpacked call would send to the small path or
 * to the AVX2 tiles: the packed call always runs the current ISA's blocked
 * driver, and the per-element invariance above makes every path agree).
 * Serial (calling thread only); its thread buffer holds A's MC x KC block
 * only (none when op(A) is read unpacked; plus one slab of Bp when Bp is
 * misaligned); when that buffer cannot
 * be allocated, the small path's loop on Bp (same bits, slower).  Rows
 * [i0, i1) of a product are the call with A, C, dsrc offset to row i0 and
 * M = i1 - i0, the same Bp: this is how row tiles share one pack. */
#define FBP_GEMM_PACKED_DECL(T, SFX)                                            \
int fbp_gemm_pack_b_##SFX(int trans_b, int64_t N, int64_t K,                    \
                          const T *B, int64_t ldb,   /* IN  */                  \
                          T *Bp,                     /* OUT */                  \
                          int64_t j0, int64_t j1);                              \
void fbp_gemm_pack_b_rows_##SFX(int trans_b, int64_t N, int64_t K,              \
                                const T *B, int64_t ldb,   /* IN  */            \
                                T *Bp,                     /* OUT */            \
                                int64_t k0, int64_t k1);                        \
void fbp_gemm_packed_##SFX(int trans_a, int64_t M, int64_t N, int64_t K,        \
                           T alpha, const T *A, int64_t lda,   /* IN  */        \
                           const T *Bp,                        /* IN  */        \
                           T beta, T *C, int64_t ldc,          /* OUT */        \
                           const T *bias, int act,             /* IN  */        \
                           const T *dsrc, int64_t ldd);        /* IN  */
FBP_GEMM_PACKED_DECL(float, f32)
FBP_GEMM_PACKED_DECL(double, f64)

/* Micro-tile shape of the current code path for elements of `elem_size`
 * bytes (4: float, 8: double): callers that split a product into pieces
 * themselves cut rows at multiples of *mr and columns at multiples of *nr so
 * that no piece runs the slower edge kernels more than needed (any cut gives
 * the same bits). */
void fbp_gemm_tile_shape(int elem_size, int64_t *mr, int64_t *nr);

/* Bytes of the calling thread's packing buffer that one call of this shape
 * (N, K; M does not matter) needs on the current code path at most (a call
 * that reads op(A) unpacked needs A's block less): 0 for the small path.
 * The buffer is allocated on first need, grown, and reused by every later
 * call in that thread until the thread exits. */
int64_t fbp_gemm_buffer_bytes(int elem_size, int64_t M, int64_t N, int64_t K);

/* Narrow kernels: the three products of a training step of a net whose
 * every layer is narrow (the compiled epoch's tiny-net path), specialised for
 * short rows (no packing, unit strides, interleaved accumulators, short rows'
 * activations on one padded vector).  Each gives bitwise what the GEMM gives
 * on the current code path (fbp_gemm_isa()):
 *   fwd(M, N, K, A, lda, W, ldw, bias, act, C, ldc)
 *     == fbp_gemm(0, 1, M, N, K, 1, A, lda, W, ldw, 0, C, ldc, bias, act, NULL, 0, 1)
 *   bwd(M, N, K, D, ldd, W, ldw, act, Aact, lda, C, ldc)
 *     == fbp_gemm(0, 0, M, N, K, 1, D, ldd, W, ldw, 0, C, ldc, NULL, act, Aact, lda, 1)
 *   wgrad(N, K, M, alpha, D, ldd, H, ldh, beta, W, ldw), beta 0 or 1
 *     == fbp_gemm(1, 0, N, K, M, alpha, D, ldd, H, ldh, beta, W, ldw, NULL, 0, NULL, 0, 1)
 * fwd and bwd need K <= 256 (one K-slab); wgrad takes any M.  Serial,
 * no allocation.  The table returned is that of the current code path
 * (fetch it again after fbp_gemm_set_isa). */
/* A net as the net_* kernels take it: the layout of the flat parameter vector
 * theta (W_k at w_off[k], (sizes[k+1], sizes[k]) row-major; b_k at b_off[k]
 * or -1) and of one workspace ws (A_k at act[k], delta_k at delta[k], both
 * (M, sizes[k]) row-major), the activation of every hidden layer. */
typedef struct {
    int n_layers;
    int hidden;
    const int64_t *sizes, *w_off, *b_off, *act, *delta;
} fbp_narrow_net;

/* The net_* kernels run the products of every layer of one step:
 *   net_fwd(net, theta, M, x, ws): A_{k+1} = fwd(A_k, W_k, b_k, act) for k = 0..L-1
 *     (A_0 = x, (M, sizes[0]); the output layer's act identity);
 *   net_bwd(net, theta, M, ws): delta_k = bwd(delta_{k+1}, W_k, act'(A_k)), k = L-1..1;
 *   net_wgrad(net, M, alpha, x, ws, beta, out): W_k of out (laid out as theta)
 *     = wgrad(alpha, delta_{k+1}, A_k, beta) for every k (A_0 = x);
 * the biases are the caller's.
 * Declared per dtype: fbp_narrow_ops_f32 and fbp_narrow_f32() (T = float),
 * fbp_narrow_ops_f64 and fbp_narrow_f64() (T = double). */
#define FBP_NARROW_OPS(T, SFX)                                                  \
typedef struct {                                                                \
    void (*fwd)(int64_t M, int64_t N, int64_t K,                                \
                const T *A, int64_t lda,          /* IN  (M, K) */              \
                const T *W, int64_t ldw,          /* IN  (N, K) */              \
                const T *bias, int act,           /* IN  (N) or NULL */         \
                T *C, int64_t ldc);               /* OUT (M, N) */              \
    void (*bwd)(int64_t M, int64_t N, int64_t K,                                \
                const T *D, int64_t ldd,          /* IN  (M, K) */              \
                const T *W, int64_t ldw, int act, /* IN  (K, N) */              \
                const T *Aact, int64_t lda,       /* IN  (M, N) */              \
                T *C, int64_t ldc);               /* OUT (M, N) */              \
    void (*wgrad)(int64_t N, int64_t K, int64_t M, T alpha,                     \
                  const T *D, int64_t ldd,        /* IN  (M, N) */              \
                  const T *H, int64_t ldh, T beta, /* IN  (M, K) */             \
                  T *W, int64_t ldw);             /* IN/OUT (N, K) */           \
    void (*net_fwd)(const fbp_narrow_net *net,    /* IN */                      \
                    const T *theta, int64_t M,    /* IN */                      \
                    const T *x,                   /* IN  (M, sizes[0]) */       \
                    T *ws);                       /* OUT A_1 .. A_L */          \
    void (*net_bwd)(const fbp_narrow_net *net,    /* IN */                      \
                    const T *theta, int64_t M,    /* IN */                      \
                    T *ws);                       /* IN A_k, delta_L; OUT delta_k */ \
    void (*net_wgrad)(const fbp_narrow_net *net, int64_t M, T alpha, /* IN */   \
                      const T *x,                 /* IN  (M, sizes[0]) */       \
                      const T *ws, T beta,        /* IN  A_k, delta_k */        \
                      T *out);                    /* IN/OUT the W_k */          \
} fbp_narrow_ops_##SFX;                                                         \
const fbp_narrow_ops_##SFX *fbp_narrow_##SFX(void);
FBP_NARROW_OPS(float, f32)
FBP_NARROW_OPS(double, f64)

/* Packed narrow nets: plain SGD on a narrow net with each W_k kept, for a
 * whole call, in two zero-padded copies laid out for 32-byte vectors
 * (fbp_narrow.c says how), the activations and deltas of a batch with them in
 * one buffer of fbp_packed_layout()'s size (rows of A_k and delta_k at
 * act[k] + r * ld[k], delta[k] + r * ld[k]).  The same bits as the general
 * step's GEMM calls on the current code path:
 *   pack(p, sizes, theta, w_off, buf): W_k -> both copies, activations 0;
 *   unpack(p, sizes, buf, w_off, out): the W_k back into out (laid out as theta);
 *   fwd(p, sizes, buf, theta, b_off, hidden, M): A_1 .. A_L of rows 0..M-1
 *     from A_0 (the caller's copy into the buffer; biases read from theta;
 *     A_L = the output layer's logits);
 *   bwd(p, sizes, buf, hidden, M, alpha): delta_{L-1} .. delta_1 from delta_L
 *     (the caller's), then W_k = fma(alpha, delta_{k+1}^T A_k, W_k) (SGD: alpha
 *     = -lr) on both copies; the biases are the caller's.
 * Widths up to 256 (one K-slab on the forward and backward products). */
typedef struct {
    int n_layers;
    int64_t M;                       /* rows capacity */
    int64_t nv[65], ld[65];          /* vectors per row of layer k, and the row stride */
    int64_t wn[64], wt[64];          /* offsets of WN_k, WT_k */
    int64_t act[65], delta[65];      /* offsets of A_k, delta_k (M rows of ld[k]) */
    int64_t size;                    /* elements of the buffer */
    int one;                         /* every layer fits one vector */
} fbp_packed;
int64_t fbp_packed_layout(int elem_size, int n_layers,
                          const int64_t *sizes,     /* IN  n_layers + 1 widths */
                          int64_t M,
                          fbp_packed *p);           /* OUT */
#define FBP_PACKED_OPS(T, SFX)                                                  \
typedef struct {                                                                \
    void (*pack)(const fbp_packed *p, const int64_t *sizes,   /* IN */          \
                 const T *theta, const int64_t *w_off,        /* IN */          \
                 T *buf);                                     /* OUT */         \
    void (*unpack)(const fbp_packed *p, const int64_t *sizes, /* IN */          \
                   const T *buf, const int64_t *w_off,        /* IN */          \
                   T *out);                                   /* OUT the W_k */ \
    void (*fwd)(const fbp_packed *p, const int64_t *sizes,    /* IN */          \
                T *buf,                                       /* IN A_0; OUT A_1 .. A_L */ \
                const T *theta, const int64_t *b_off,         /* IN */          \
                int hidden, int64_t M);                                         \
    void (*bwd)(const fbp_packed *p, const int64_t *sizes,    /* IN */          \
                T *buf,                                       /* IN/OUT */      \
                int hidden, int64_t M, T alpha);                                \
} fbp_packed_ops_##SFX;                                                         \
const fbp_packed_ops_##SFX *fbp_packed_##SFX(void);
FBP_PACKED_OPS(float, f32)
FBP_PACKED_OPS(double, f64)

/* Name of the code path chosen at run time ("avx512", "avx2", "generic"). */
const char *fbp_gemm_isa(void);

/* Test/benchmark hook: force the code path by name ("generic", "avx2",
 * "avx512"; NULL or "" = the best one the CPU supports).  Returns 0 when the
 * path is now in use, -1 (nothing changed) when it is unknown, not compiled in
 * or not supported by this CPU.  Not to be called while another thread is
 * inside fbp_gemm_*.  The environment variable FBP_GEMM_ISA, read once on
 * first use, does the same (an unsupported name leaves the best path). */
int fbp_gemm_set_isa(const char *name);

/* Test/benchmark hook: whether the blocked path may read a small op(A) where
 * it is instead of packing it (on by default; fbp_gemm_kernels.h, NAME##_ua).
 * Speed only: the same bits either way.  The environment variable
 * FBP_GEMM_UNPACKED_A=0, read once on first use, turns it off.  Returns the
 * previous setting.  Not to be called while another thread is inside
 * fbp_gemm_*. */
int fbp_gemm_set_unpacked_a(int on);
/* Test hook: how many blocked driver calls (a whole call, or one part of a
 * call's thread grid) that read op(A) unpacked the calling thread has run. */
int64_t fbp_gemm_unpacked_a_calls(void);

#ifdef __cplusplus
}
#endif
#endif
