/* fbp_gemm.c: the project's own GEMM (no BLAS), contract in fbp_gemm.h:
 * the driver (path choice, thread grid), the run-time ISA dispatch and the
 * threads' packing buffers.
 *
 * Design
 * ------
 * Two paths, chosen from (M, N, K) only, never from n_threads, and giving
 * the same bits per element (see "Per-element invariance" below):
 *
 *  - small: M*N*K <= SMALL_MNK or K == 0.  A plain i/j/k loop straight on the
 *    caller's arrays, no packing, no threads, compiled once per ISA (the
 *    same FMA or mul+add as that ISA's micro-kernel).  Tiny nets (M=1, N=2,
 *    K=2) call this millions of times, so it has to cost tens of nanoseconds:
 *    the public entry point is a single indirect jmp to the current ISA's
 *    small function (which makes the small-or-not test itself and passes
 *    other shapes on to rest_*), and the row epilogue is out of line so that
 *    the loop itself needs no realigned frame.
 *
 *  - blocked (Goto/BLIS): for each NC-wide column panel, for each KC-deep
 *    slab of K, op(B)[KC x NC] is packed into NR-wide slivers (k-major, NR
 *    contiguous values per k); for each MC-tall row block op(A)[MC x KC] is
 *    packed into MR-tall slivers (MR contiguous values per k), unless it is
 *    small and not transposed: then the micro-kernel's _u twins read its rows
 *    where they are (fbp_gemm_kernels.h, NAME##_ua).  Edge slivers are
 *    zero-padded to full MR / NR (an unpacked edge tile repeats its last
 *    row).  The micro-kernel keeps an MR x NR tile of C in vector registers
 *    and runs k = 0..kc-1 with one FMA per (row, vector) per k:
 *    acc += bcast(a[k][r]) * b[k][v].
 *    Then it writes   C  = alpha*acc                 (first slab, beta == 0)
 *                     C  = fma(alpha, acc, beta*C)   (first slab)
 *                     C  = fma(alpha, acc, C)        (later slabs)
 *    and after the last slab the epilogue (bias, activation or dsrc
 *    derivative): bias, relu and the dsrc derivatives on the tile's
 *    registers before that store (the micro-kernel's EP_* epilogues, per
 *    lane the operations of epi_elem), sigmoid and tanh (and bias with
 *    dsrc) on the stored tile while it is still in L1, by a vectorised exp
 *    (see "Vector sigmoid / tanh" below), on this path and on the small one.
 *    Edge tiles use half-height (MR/2 rows) and/or half-width (NR/2)
 *    variants of the micro-kernel when they fit.
 *
 *    Per ISA (chosen at run time, FBP_GEMM_ISA or fbp_gemm_set_isa override):
 *      isa      dtype  MR x NR   MC   KC    NC    vector
 *      avx512   f32     8 x 32   288  256   4096  zmm, 16 accumulators
 *               f64     8 x 16   144  256   4096  (B in chunks of 512 / 256
 *                                                   columns, A sliver outer)
 *      avx2     f32     6 x 16   144  256   4096  ymm + FMA, 12 accumulators
 *               f64     6 x  8    72  256   4096
 *      generic  f32     6 x  8   144  256   4096  16-byte GCC vectors (SSE2)
 *               f64     6 x  4    72  256   4096
 *    The avx512 path runs small or thin products on the avx2 driver
 *    (avx2_tiles below: same bits; not the pre-packed calls, below).
 *    KC x NR of B (16 KiB for avx2) stays in L1 across the MC/MR loop, the
 *    MC x KC block of A (144 KiB) in L2, the KC x NC panel of B in L3.
 *
 * Threads: the M x N output is cut into a tm x tn grid of sub-blocks whose
 * borders are multiples of MR / NR (grid chosen to balance micro-tiles), and
 * sub-block p goes to OpenMP thread p (static).  Every thread runs the serial
 * blocked algorithm above on its own sub-block with its own thread-local
 * packing buffers, so each thread writes only to its own rows/columns of C
 * and its own buffers: there is nothing shared to race on.  Fewer threads than
 * n_threads are used when the problem is too small to pay for the fork; this
 * changes speed, never bits.
 *
 * Per-element invariance (the contract in fbp_gemm.h): on one code path
 * (ISA), C[i][j] is a function of row i of op(A), column j of op(B), C[i][j],
 * bias[j], dsrc[i][j] and (K, alpha, beta, act) only, not of M, N, the
 * position of (i, j), the leading dimensions or n_threads, because every way
 * of computing an element performs the same floating-point operations in the
 * same order:
 *   1. K-slabs [0, FBP_KC), [FBP_KC, 2 FBP_KC), ...: one constant for every
 *      path and ISA, so the boundaries depend on K only.
 *   2. Per slab, acc = 0 then acc = V_FMA(a_k, b_k, acc) for k in order.  In
 *      the micro-kernels that is lane (r, l) of one register chain; padding
 *      lanes (zero-padded slivers) are separate lanes and never mix in.  The
 *      small path does the same with S_FMA, defined next to V_FMA in each ISA
 *      block as its scalar twin (_mm256_fmadd_ps <-> __builtin_fmaf, plain
 *      x*y+z <-> x*y+z), so the small path of an ISA matches its kernels.
 *   3. The slab is folded in as in the store modes: alpha*acc, or
 *      fma(alpha, acc, beta*C) on the first slab, fma(alpha, acc, C) later;
 *      the partial c goes through C (or the edge scratch tile) as a T, exactly
 *      the scalar path's T c.
 *   4. The epilogue is one function, epi_row, called per row by the blocked
 *      driver (per tile, after the last slab) and by the small path (per row);
 *      sigmoid/tanh always go through the vector exp (partial vectors are
 *      padded, lanes are independent).  Per ISA it is one instance: plain
 *      IEEE +, -, *, / for generic, the same plus explicit fused
 *      multiply-adds (the "f" instance) for AVX2 and AVX-512, which share it
 *      (32-byte and 1-lane code, lane-wise identical), so within an ISA the
 *      small and blocked paths and every vector/scalar position agree.
 *   5. Contraction is off in every file (the pragma at the top of
 *      fbp_gemm_internal.h, which each file includes first), so the compiler
 *      cannot turn a*b+c into an FMA in one copy of an expression and not in
 *      another (GCC contracts by default in gnu11 wherever the target has
 *      FMA: the AVX2/AVX-512 functions, or everything under -march=native).
 * Hence the path (small or blocked), the edge-kernel variant, packed or
 * unpacked op(A), the thread grid (sub-block borders are multiples of MR /
 * NR anyway) and the allocation fallback never change bits.  The AVX-512
 * kernels come from the same macros with _mm512 intrinsics and S_FMA =
 * __builtin_fma*, consistent by construction, but this has only been run on
 * CPUs without AVX-512.
 * Different ISAs may differ from each other (FMA vs mul+add) but an ISA is
 * fixed for the life of the process unless a test forces one.
 *
 * Pre-packed op(B) (fbp_gemm_pack_b_*, fbp_gemm_packed_*; issue 11): a
 * step split into row tiles calls the GEMM once per tile with the whole
 * W_k as op(B), and each call packed all of op(B) again (4 tiles of 64
 * rows: +40-60% over one call).  So op(B) can be packed once, by the caller,
 * into the blocked driver's own layout: panel jc (NC wide), slab pc (KC
 * deep), the NR-wide slivers exactly as the driver packs them into its
 * buffer, at Bp + jc*K + pc*ncp (ncp = nc rounded up to NR; the panels
 * before jc are NC wide, a multiple of every NR, so the offset needs no
 * table).  The packed call runs the current ISA's serial driver
 * (NAME##_pre in fbp_gemm_kernels.h) with that pointer where the driver
 * would pack: the same slab loop (NAME##_slab), so the same kernel calls on
 * the same values.  It does so for every M, also where the unpacked call
 * takes the small path or the AVX2 tiles: the per-element invariance makes
 * those agree, and one layout per ISA keeps the pack simple.  The layout
 * is the ISA's (its NR), hence pack and call under one ISA.  Concurrent
 * packs are race-free: fbp_gemm_pack_b_*(j0, j1) writes, in every slab,
 * only the slivers of columns [j0, j1) (j0 a multiple of NR), which are
 * disjoint byte ranges of Bp for disjoint column ranges; it reads only B
 * and has no state, no buffer and no allocation.  The packed call only
 * reads Bp (any number of row tiles may share it at once) and writes its
 * own rows of C and its own thread buffer (A's block, unless A is read
 * unpacked).  Without a buffer it runs the small path's loop on Bp
 * (NAME##_pre_small: same bits); a Bp off the vector alignment (the
 * kernels' aligned loads) is copied a slab at a time into the buffer first.
 *
 * Packing by rows (fbp_gemm_pack_b_rows_*; issue 11): the part-2 unit
 * tiles of a row-split step each multiply some rows of delta^T by the same
 * op(B) = H_k (K = the batch rows), whose rows the row tiles of the step
 * wrote.  So each row tile packs its own rows [k0, k1) of op(B), while they
 * are in its cache, into the same layout: in each slab the rows cross, in
 * every sliver, the run of values (k0' - pc) * NR .. (k1' - pc) * NR, a
 * byte range no other row range touches (the zero padding lanes of the last
 * sliver in the same rows: each row range pads its own rows).  Stateless,
 * like the column pack.
 *
 * Memory: one thread-local buffer per thread (MC*KC + KC*min(NC, N) values;
 * MC*KC for a packed call), grown on demand and reused; freed by a pthread
 * key destructor when the thread exits.  If it cannot be allocated the
 * thread computes its sub-block with the small path of the same ISA: slow,
 * but the same bits.
 *
 * Files (split by concern; fbp_gemm_internal.h and fbp_gemm_kernels.h are
 * internal, the only public header is fbp_gemm.h):
 *   fbp_gemm.c           this file: entry points, path choice, thread grid,
 *                        ISA choice and dispatch tables, packing buffers,
 *                        FTZ/DAZ of the pool threads;
 *   fbp_gemm_internal.h  what every file shares: contraction off, the
 *                        constants, vector exp / sigmoid / tanh, the
 *                        epilogue, the job struct, the hidden cross-file
 *                        declarations;
 *   fbp_gemm_kernels.h   the per-ISA templates: packing, micro-kernels,
 *                        small path, serial blocked driver;
 *   fbp_gemm_generic.c, fbp_gemm_avx2.c, fbp_gemm_avx512.c
 *                        their instantiation per ISA, each under its own
 *                        target attribute;
 *   fbp_narrow.c         the narrow and packed tiny-net kernels
 *                        (fbp_narrow_*, fbp_packed_*).
 * Calls across files: the dispatch through function pointers and the small
 * path's out-of-line call to fbp_gemm_rest_* (calls in one file too), and two
 * that one file used to inline: the packing-buffer lookup (once per blocked
 * call and thread, ~10 instructions) and fbp_gemm_current_isa() in the
 * fbp_narrow_* / fbp_packed_* getters (once per epoch); none inside a loop.
 *
 * No -ffast-math.
 */
#include "fbp_gemm_internal.h"
#ifdef FBP_X86
#include <cpuid.h>
#endif

#define MIN_FLOPS_PER_THREAD 400000.0

static const char *const isa_names[N_ISA] = {"generic", "avx2", "avx512"};

/* ------------------------------------------------------------------------ */
/* Thread-local packing buffer                                              */
/* ------------------------------------------------------------------------ */

static pthread_key_t buf_key;
static pthread_once_t buf_key_once = PTHREAD_ONCE_INIT;
static __thread void *tl_buf;
static __thread size_t tl_cap;

static void buf_free(void *p) { free(p); }
static void buf_key_init(void) { (void)pthread_key_create(&buf_key, buf_free); }

/* 64-byte aligned scratch of at least `bytes`, owned by the calling thread. */
void *fbp_gemm_thread_buf(size_t bytes)
{
    if (tl_cap >= bytes) return tl_buf;
    pthread_once(&buf_key_once, buf_key_init);
    free(tl_buf);
    tl_cap = 0;
    bytes = (bytes + 4095) & ~(size_t)4095;
    tl_buf = aligned_alloc(64, bytes);
    pthread_setspecific(buf_key, tl_buf);
    if (tl_buf) tl_cap = bytes;
    return tl_buf;
}

/* ------------------------------------------------------------------------ */
/* Run-time ISA choice                                                       */
/* ------------------------------------------------------------------------ */

static int isa_supported(int isa)
{
#ifdef FBP_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX512) return __builtin_cpu_supports("avx512f") &&
                                  __builtin_cpu_supports("avx2") &&
                                  __builtin_cpu_supports("fma");
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2") &&
                                __builtin_cpu_supports("fma");
#endif
    return isa == ISA_GENERIC;
}

static int isa_from_name(const char *name)
{
    for (int i = 0; i < N_ISA; i++)
        if (strcmp(name, isa_names[i]) == 0) return i;
    return -1;
}

static int g_isa = -1;

/* Small path per ISA. */
typedef fbp_gemm_fn_f32 *small_f32_fn;
typedef fbp_gemm_fn_f64 *small_f64_fn;
static const small_f32_fn small_f32_table[N_ISA] = {
    fbp_gemm_small_generic_f32,
#ifdef FBP_X86
    fbp_gemm_small_avx2_f32, fbp_gemm_small_avx512_f32,
#endif
};
static const small_f64_fn small_f64_table[N_ISA] = {
    fbp_gemm_small_generic_f64,
#ifdef FBP_X86
    fbp_gemm_small_avx2_f64, fbp_gemm_small_avx512_f64,
#endif
};

/* The small path of the current ISA, called through this pointer so the
 * entry point makes no other call (a tail call with its arguments in place).
 * It starts at a resolver that settles the ISA on first use. */
static fbp_gemm_fn_f32 small_f32_resolve;
static fbp_gemm_fn_f64 small_f64_resolve;
static small_f32_fn g_small_f32 = small_f32_resolve;
static small_f64_fn g_small_f64 = small_f64_resolve;

static void set_current_isa(int isa)
{
    __atomic_store_n(&g_small_f32, small_f32_table[isa], __ATOMIC_RELAXED);
    __atomic_store_n(&g_small_f64, small_f64_table[isa], __ATOMIC_RELAXED);
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
}


static int best_isa(void)
{
    int isa = N_ISA - 1;
    while (!isa_supported(isa)) isa--;
    return isa;
}

static int current_isa(void)
{
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa >= 0) return isa;
    isa = best_isa();
    const char *env = getenv("FBP_GEMM_ISA");
    if (env && *env) {
        int want = isa_from_name(env);
        if (want >= 0 && want < isa) isa = want;
    }
    set_current_isa(isa);
    return isa;
}

#define DEFINE_RESOLVE(T, SFX)                                                  \
static void small_##SFX##_resolve(                                              \
    int ta, int tb, int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t lda, \
    const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, int act, \
    const T *dsrc, int64_t ldd, int n_threads)                                  \
{                                                                               \
    small_##SFX##_table[current_isa()](ta, tb, M, N, K, alpha, A, lda, B, ldb,  \
                                      beta, C, ldc, bias, act, dsrc, ldd,       \
                                      n_threads);                               \
}
DEFINE_RESOLVE(float, f32)
DEFINE_RESOLVE(double, f64)

int fbp_gemm_set_isa(const char *name)
{
    int isa = (name && *name) ? isa_from_name(name) : best_isa();
    if (isa < 0 || !isa_supported(isa)) return -1;
    set_current_isa(isa);
    return 0;
}

const char *fbp_gemm_isa(void) { return isa_names[current_isa()]; }

int fbp_gemm_current_isa(void) { return current_isa(); }

/* ------------------------------------------------------------------------ */
/* Entry points: path choice and the thread grid                             */
/* ------------------------------------------------------------------------ */

/* Thread grid tm x tn (tm * tn == nt) minimising the largest sub-block, in
 * micro-tiles; ties go to splitting N (each thread packs its own B). */
static void choose_grid(int64_t M, int64_t N, int64_t MR, int64_t NR, int nt, int *tm, int *tn)
{
    const int64_t tiles_m = (M + MR - 1) / MR, tiles_n = (N + NR - 1) / NR;
    int64_t best = -1;
    for (int a = 1; a <= nt; a++) {
        if (nt % a) continue;
        const int b = nt / a;
        if (a > tiles_m || b > tiles_n) continue;
        const int64_t cost = ((tiles_m + a - 1) / a) * ((tiles_n + b - 1) / b);
        if (best < 0 || cost < best) { best = cost; *tm = a; *tn = b; }
    }
    if (best < 0) { *tm = 1; *tn = 1; }
}

/* Whether the blocked drivers may read a small op(A) unpacked: on unless
 * FBP_GEMM_UNPACKED_A=0 (read once) or fbp_gemm_set_unpacked_a(0). */
static int unpacked_a = -1;

int64_t fbp_gemm_ua_bytes(void)
{
    int c = __atomic_load_n(&unpacked_a, __ATOMIC_RELAXED);
    if (c < 0) {
        const char *env = getenv("FBP_GEMM_UNPACKED_A");
        int from_env = !(env && strcmp(env, "0") == 0), unset = -1;
        /* only if still unset: a concurrent fbp_gemm_set_unpacked_a wins */
        c = __atomic_compare_exchange_n(&unpacked_a, &unset, from_env, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED) ? from_env : unset;
    }
    return c ? FBP_UA_BYTES : 0;
}

int fbp_gemm_set_unpacked_a(int on)
{
    const int previous = fbp_gemm_ua_bytes() > 0;
    __atomic_store_n(&unpacked_a, on != 0, __ATOMIC_RELAXED);
    return previous;
}

/* Blocked driver calls (a whole call, or one part of its thread grid) that
 * read op(A) unpacked, counted per thread (no shared line written). */
static __thread int64_t ua_calls;
void fbp_gemm_note_ua(void) { ua_calls++; }
int64_t fbp_gemm_unpacked_a_calls(void) { return ua_calls; }

/* Whether this CPU's 512-bit FMAs are two 256-bit halves: AMD family 19h
 * (Zen 4), where the rule below was measured.  FBP_GEMM_AVX2_TILES=0 or 1,
 * read once, overrides it (for tests and benchmarks; speed only). */
static int half_width_avx512(void)
{
    static int cached = -1;
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c >= 0) return c;
    c = 0;
#ifdef FBP_X86
    unsigned int a, b, cx, d;
    if (__get_cpuid(0, &a, &b, &cx, &d) && b == 0x68747541u && d == 0x69746e65u &&
        cx == 0x444d4163u && __get_cpuid(1, &a, &b, &cx, &d)) {  /* "AuthenticAMD" */
        unsigned int family = (a >> 8) & 0xfu;
        if (family == 0xfu) family += (a >> 20) & 0xffu;
        c = family == 0x19u;
    }
#endif
    const char *env = getenv("FBP_GEMM_AVX2_TILES");
    if (env && (strcmp(env, "0") == 0 || strcmp(env, "1") == 0)) c = env[0] == '1';
    __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    return c;
}

/* On the AVX-512 path of a CPU whose 512-bit FMAs are two halves
 * (half_width_avx512), whether a product runs the AVX2 blocked driver
 * instead: when it is small (the packing, the calls and the edge tiles weigh
 * more than the wider vectors save) or thin (fewer than 12 rows, the
 * AVX-512 tile's height until session 20 (now 8; the rule was not
 * re-measured), or fewer columns than its half width: the 512-bit tiles would
 * mostly be padding).  Measured on a Zen 4 core (bench/NOTES.md, "The 64-128-10 b32
 * step"): 32x10x128 forward 0.53x, M=4 N=4096 K=1024 0.46-0.63x the AVX2
 * speed.  On an Intel Xeon with two 512-bit FMA units and the 8-row tiles
 * (session 20) the rule cost 64-128-10 b32 epochs 13-17% (float32) and
 * 27% (float64) on 1 thread (bench/NOTES.md), so it is for Zen 4 alone.
 * The bits are the same: the two ISAs run the same FMA chain per
 * element with the same K-slabs and share the "f" epilogue (fbp_gemm.h). */
#define AVX2_BELOW_MACS ((int64_t)1 << 20)
static int avx2_tiles(int64_t M, int64_t N, int64_t K)
{
    return half_width_avx512() && (M < 12 || N < 16 || M * N * K < AVX2_BELOW_MACS);
}

/* Blocked driver and its micro-tile shape, per ISA; its pre-packed twin and
 * that packing. */
struct blk_f32 {
    fbp_blk_fn_f32 *fn; int64_t MR, NR, MC;
    fbp_pre_fn_f32 *pre; fbp_packb_fn_f32 *packb; fbp_packbr_fn_f32 *packb_rows;
};
struct blk_f64 {
    fbp_blk_fn_f64 *fn; int64_t MR, NR, MC;
    fbp_pre_fn_f64 *pre; fbp_packb_fn_f64 *packb; fbp_packbr_fn_f64 *packb_rows;
};
#define BLK(NAME, MR, NR, MC) {NAME, MR, NR, MC, NAME##_pre, NAME##_packb, NAME##_packb_rows}
static const struct blk_f32 blk_f32_table[N_ISA] = {
    BLK(fbp_gemm_blk_generic_f32, 6, 8, MC_F32),
#ifdef FBP_X86
    BLK(fbp_gemm_blk_avx2_f32, 6, 16, MC_F32),
    BLK(fbp_gemm_blk_avx512_f32, MR512, 32, MC512_F32),
#endif
};
static const struct blk_f64 blk_f64_table[N_ISA] = {
    BLK(fbp_gemm_blk_generic_f64, 6, 4, MC_F64),
#ifdef FBP_X86
    BLK(fbp_gemm_blk_avx2_f64, 6, 8, MC_F64),
    BLK(fbp_gemm_blk_avx512_f64, MR512, 16, MC512_F64),
#endif
};
#undef BLK
void fbp_gemm_tile_shape(int elem_size, int64_t *mr, int64_t *nr)
{
    const int isa = current_isa();
    *mr = elem_size == 4 ? blk_f32_table[isa].MR : blk_f64_table[isa].MR;
    *nr = elem_size == 4 ? blk_f32_table[isa].NR : blk_f64_table[isa].NR;
}

int64_t fbp_gemm_buffer_bytes(int elem_size, int64_t M, int64_t N, int64_t K)
{
    if (M <= 0 || N <= 0 || K <= 0 || M * N * K <= SMALL_MNK) return 0;
    int64_t mr, nr;
    fbp_gemm_tile_shape(elem_size, &mr, &nr);
    const int isa = current_isa();
    const int64_t mc = elem_size == 4 ? blk_f32_table[isa].MC : blk_f64_table[isa].MC;
    const int64_t ncmax = N < NC_ALL ? N : NC_ALL, kcmax = K < FBP_KC ? K : FBP_KC;
    const int64_t bytes = (mc * kcmax + (ncmax + nr - 1) / nr * nr * kcmax) * elem_size;
    return (bytes + 4095) & ~(int64_t)4095; /* thread_buf's rounding */
}

/* FTZ/DAZ (MXCSR bits 15 and 6) are per thread, and a thread starts with
 * the mode of the thread that created it: a pool thread born inside a
 * flush-to-zero fit would otherwise keep flushing in every later call. */
#if defined(FBP_X86) && defined(__SSE2__)
#define FBP_FTZ_BITS 0x8040u
static unsigned int fbp_ftz_mode(void) { return _mm_getcsr() & FBP_FTZ_BITS; }
static unsigned int fbp_ftz_enter(unsigned int mode)
{
    const unsigned int old = _mm_getcsr();
    if ((old & FBP_FTZ_BITS) != mode) _mm_setcsr((old & ~FBP_FTZ_BITS) | mode);
    return old;
}
static void fbp_ftz_leave(unsigned int old)
{
    if (_mm_getcsr() != old) _mm_setcsr(old);
}
#else
static unsigned int fbp_ftz_mode(void) { return 0u; }
static unsigned int fbp_ftz_enter(unsigned int mode) { (void)mode; return 0u; }
static void fbp_ftz_leave(unsigned int old) { (void)old; }
#endif

#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#define THREAD_COUNT() omp_get_num_threads()
#else
#define THREAD_ID() 0
#define THREAD_COUNT() 1
#endif

#define DEFINE_ENTRY(T, SFX)                                                    \
static void run_blocked_##SFX(const struct job_##SFX *jb,                       \
                              const struct blk_##SFX *blk, int n_threads)       \
{                                                                               \
    const int64_t M = jb->M, N = jb->N, MR = blk->MR, NR = blk->NR;             \
    const double flops = 2.0 * M * N * jb->K;                                   \
    int nt = n_threads, tm = 1, tn = 1;                                         \
    if (flops < MIN_FLOPS_PER_THREAD * nt)                                      \
        nt = (int)(flops / MIN_FLOPS_PER_THREAD);                               \
    if (nt > 1) choose_grid(M, N, MR, NR, nt, &tm, &tn);                        \
    const int parts = tm * tn;                                                  \
    if (parts <= 1) { blk->fn(jb, 0, M, 0, N); return; }                        \
    const int64_t tiles_m = (M + MR - 1) / MR, tiles_n = (N + NR - 1) / NR;     \
    /* Each thread of the region runs with the caller's FTZ/DAZ mode (set   \
     * here, its own restored after), whatever mode it was created with. */   \
    const unsigned int ftz = fbp_ftz_mode();                                    \
    _Pragma("omp parallel num_threads(parts)")                                  \
    {                                                                           \
    const unsigned int saved = fbp_ftz_enter(ftz);                              \
    for (int p = THREAD_ID(); p < parts; p += THREAD_COUNT()) {                 \
        const int pi = p / tn, pj = p % tn;                                     \
        const int64_t i0 = (tiles_m * pi / tm) * MR;                           \
        const int64_t i1 = (tiles_m * (pi + 1) / tm) * MR;                     \
        const int64_t j0 = (tiles_n * pj / tn) * NR;                           \
        const int64_t j1 = (tiles_n * (pj + 1) / tn) * NR;                     \
        blk->fn(jb, i0, i1 < M ? i1 : M, j0, j1 < N ? j1 : N);                  \
    }                                                                           \
    fbp_ftz_leave(saved);                                                       \
    }                                                                           \
}                                                                               \
                                                                                \
static __attribute__((noinline)) void blocked_##SFX(                            \
    int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T *A, \
    int64_t lda, const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, \
    int act, const T *dsrc, int64_t ldd, int n_threads)                         \
{                                                                               \
    const struct job_##SFX jb = {                                               \
        .ta = trans_a, .tb = trans_b, .act = act, .M = M, .N = N, .K = K,       \
        .alpha = alpha, .beta = beta, .A = A, .B = B, .bias = bias,             \
        .dsrc = dsrc, .C = C, .lda = lda, .ldb = ldb, .ldc = ldc, .ldd = ldd};  \
    const int isa = current_isa();                                              \
    run_blocked_##SFX(&jb, &blk_##SFX##_table[isa == ISA_AVX512 && avx2_tiles(M, N, K) \
                                              ? ISA_AVX2 : isa], n_threads);    \
}                                                                               \
                                                                                \
FBP_HIDDEN __attribute__((noinline)) void fbp_gemm_rest_##SFX(                  \
    int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T *A, \
    int64_t lda, const T *B, int64_t ldb, T beta, T *C, int64_t ldc, const T *bias, \
    int act, const T *dsrc, int64_t ldd, int n_threads)                         \
{                                                                               \
    if (M <= 0 || N <= 0) return;                                               \
    if (K < 0) K = 0;                                                           \
    if (act == FBP_ACT_IDENTITY) dsrc = NULL;                                   \
    if (K == 0)                                                                 \
        small_##SFX##_table[current_isa()](trans_a, trans_b, M, N, K, alpha, A, \
                                          lda, B, ldb, beta, C, ldc, bias, act, \
                                          dsrc, ldd, n_threads);                \
    else                                                                        \
        blocked_##SFX(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta,   \
                      C, ldc, bias, act, dsrc, ldd, n_threads);                 \
}                                                                               \
                                                                                \
/* Nothing but a jump to the current ISA's entry (its small path, which         \
 * passes other shapes on to fbp_gemm_rest_*): with no test here GCC compiles this to    \
 * one indirect jmp, the arguments left in place (tiny nets call this           \
 * millions of times). */                                                       \
void fbp_gemm_##SFX(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,  \
                    T alpha, const T *A, int64_t lda, const T *B, int64_t ldb,  \
                    T beta, T *C, int64_t ldc, const T *bias, int act,          \
                    const T *dsrc, int64_t ldd, int n_threads)                  \
{                                                                               \
    __atomic_load_n(&g_small_##SFX, __ATOMIC_RELAXED)(                          \
        trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,   \
        act, dsrc, ldd, n_threads);                                             \
}

DEFINE_ENTRY(float, f32)
DEFINE_ENTRY(double, f64)

/* ------------------------------------------------------------------------ */
/* Pre-packed op(B)                                                          */
/* ------------------------------------------------------------------------ */

int64_t fbp_gemm_packed_nr(int elem_size)
{
    int64_t mr, nr;
    fbp_gemm_tile_shape(elem_size, &mr, &nr);
    return nr;
}

int64_t fbp_gemm_packed_size(int elem_size, int64_t N, int64_t K)
{
    const int64_t nr = fbp_gemm_packed_nr(elem_size);
    if (N <= 0 || K <= 0) return 0;
    return K * ((N + nr - 1) / nr * nr);
}

/* pack_b: a range off the NR grid is refused before the driver sees it (its
 * slivers would start off the layout's, and the last one run past Bp). */
#define DEFINE_PACKED(T, SFX)                                                   \
int fbp_gemm_pack_b_##SFX(int trans_b, int64_t N, int64_t K, const T *B,        \
                          int64_t ldb, T *Bp, int64_t j0, int64_t j1)           \
{                                                                               \
    const int isa = current_isa();                                              \
    const int64_t nr = blk_##SFX##_table[isa].NR;                               \
    if (j1 > N) j1 = N;                                                         \
    if (j0 < 0) j0 = 0;                                                         \
    if (K <= 0 || j0 >= j1) return 0;                                           \
    if (j0 % nr != 0 || (j1 < N && j1 % nr != 0)) return -1;                    \
    blk_##SFX##_table[isa].packb(trans_b, N, K, B, ldb, Bp, j0, j1);            \
    return 0;                                                                   \
}                                                                               \
                                                                                \
void fbp_gemm_pack_b_rows_##SFX(int trans_b, int64_t N, int64_t K, const T *B,  \
                                int64_t ldb, T *Bp, int64_t k0, int64_t k1)     \
{                                                                               \
    blk_##SFX##_table[current_isa()].packb_rows(trans_b, N, K, B, ldb, Bp, k0,  \
                                                k1);                            \
}                                                                               \
                                                                                \
/* The current ISA's pre-packed driver for every shape with K >= 1 (never the  \
 * small path or the AVX2 tiles: Bp is in this ISA's layout; the same bits by  \
 * the per-element invariance); K == 0 reads no B: the small path. */          \
void fbp_gemm_packed_##SFX(int trans_a, int64_t M, int64_t N, int64_t K,        \
                           T alpha, const T *A, int64_t lda, const T *Bp,       \
                           T beta, T *C, int64_t ldc, const T *bias, int act,   \
                           const T *dsrc, int64_t ldd)                          \
{                                                                               \
    if (M <= 0 || N <= 0) return;                                               \
    if (act == FBP_ACT_IDENTITY) dsrc = NULL;                                   \
    const int isa = current_isa();                                              \
    if (K <= 0) {                                                               \
        static const T zero = 0; /* op(B) = B^T with ldb 0: never read */       \
        small_##SFX##_table[isa](trans_a, 1, M, N, 0, alpha, A, lda, &zero, 0,  \
                                 beta, C, ldc, bias, act, dsrc, ldd, 1);        \
        return;                                                                 \
    }                                                                           \
    const struct job_##SFX jb = {                                               \
        .ta = trans_a, .tb = 0, .act = act, .M = M, .N = N, .K = K,             \
        .alpha = alpha, .beta = beta, .A = A, .B = NULL, .bias = bias,          \
        .dsrc = dsrc, .C = C, .lda = lda, .ldb = 0, .ldc = ldc, .ldd = ldd};    \
    blk_##SFX##_table[isa].pre(&jb, Bp);                                        \
}
DEFINE_PACKED(float, f32)
DEFINE_PACKED(double, f64)
