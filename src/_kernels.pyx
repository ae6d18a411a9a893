# fastbp._kernels: the compiled training loop.
#
# Design
# ------
# * A network is described by a `Spec`: the layer sizes and, for each layer k,
#   the offset of W_k (n_out, n_in, row-major) and of b_k (n_out,) inside ONE
#   flat parameter vector `theta`.  The Python model's `weights[k]` are views of
#   that vector, so an SGD update is a write into theta and nothing is copied.
# * All scratch lives in ONE flat workspace buffer `ws` (same dtype), carved by
#   the offsets of a `Work`: the activations A_0..A_L of one batch (A_0 is the
#   gathered input, A_L holds the output layer's logits z), the outputs yhat,
#   the deltas dloss/dZ_k of every layer, the gathered targets and the
#   per-sample losses.  It is allocated once per call (once per fit), never
#   per step.
# * Forward: A_k = act(A_{k-1} W_k^T + b_k) is one GEMM with a fused bias +
#   activation epilogue (src/fbp_gemm.c).  The output activation and the loss are
#   applied row by row here.
# * Backward reuses the cached activations: the derivative of a hidden activation
#   is computed from its stored output (sigmoid' = a(1-a), relu' = [a>0],
#   tanh' = 1-a^2), fused into the GEMM that forms delta_{k-1} = (delta_k W_k) *
#   act'(A_{k-1}).  Every delta is formed BEFORE any W changes; then the SGD
#   step W_k += (-lr) delta_k^T A_{k-1} is itself a GEMM with beta = 1, so no
#   weight gradient is ever materialised in plain SGD.
# * The optimizer path (fastbp.optim's SGD/Adam/AdamW/RMSprop, src/_optim.pxi):
#   the gradient rows of W_k are formed in `grad` and the optimizer steps them
#   at once, in the same part-2 tile (still in cache), its state in flat
#   vectors shaped like theta; each step is bitwise numpy's optimizer.update
#   on Network.gradients' gradient.  Sample weights scale each row's output
#   delta by s_i / sum s (`Extra`); dropout keeps a masked copy D_k of each
#   hidden activation, masks from Philox recomputed in the backward pass
#   (src/_dropout.pxi).  Each write these add inside a region belongs to the
#   tile's own rows or units, as below; the .pxi files say why in detail.
# * Threads (OpenMP), built to hold up on a busy machine: nothing waits for
#   a thread that holds no work.  A call (a fit epoch, a predict or loss call,
#   a gradients call) opens ONE parallel region for all its steps, and only
#   when its largest step is worth splitting (one thread per par_min_macs
#   multiply-adds of the forward pass).  Thread 0, the caller, drives the
#   call; each step is published to the team as a generation of "waves" of
#   tiles (see fbp_team and the block above Plan): any thread, the caller
#   included, claims the next tile of the current wave, and a thread that
#   finds none left waits only for the tiles still in progress.  A thread that
#   wakes late finds the tiles taken (tagged claims fail) and waits for the
#   next step, so a descheduled thread costs the others nothing unless it
#   holds a tile.  Steps split the batch rows (row split) or, for a small
#   batch, the output units of every layer (unit split).  When most of a step
#   still goes on waiting (the other threads keep being descheduled), thread 0
#   runs the following steps serially for a while (fbp_team_account).  A
#   row split first packs each large W_k once for all its row tiles (the
#   pack wave, into the call's workspace; _steps.pxi).  Every tile writes
#   only its own rows or columns of the activations and deltas, its own
#   rows of W_k / grad and entries of b_k and colsum, or its own columns of
#   one packed W_k, so every write
#   inside a region is private to the thread running that tile; per-sample
#   losses are summed in row order, bias gradients are column sums in row
#   order, and the GEMM gives each element the same bits whatever block it is
#   computed in (fbp_gemm.h), so a step gives the same result on any number
#   of threads, whichever thread takes which tile.  Each thread of a region
#   runs with the caller's FTZ/DAZ mode and restores its own on exit.
# * Everything below `def` runs without the GIL.  The `def` wrappers take
#   arrays that fastbp/_common.py has already validated (shape, dtype,
#   contiguity, finiteness); they only assert what they rely on.
# * One exception, `Network.predict_fast` (MLP.predict's fast path): it does
#   check_X's checks itself, with numpy's C API, for the common case (a
#   C-contiguous float32/float64 ndarray), and a call too small to gain from
#   threads or from releasing the GIL (SMALL_ROWS, SMALL_MACS) runs with the
#   GIL held in a workspace cached in the Network (only the thread holding
#   the GIL, and the model's lock, runs in it: one user at a time).
from cython.parallel cimport parallel, threadid
from cpython.mem cimport PyMem_Free, PyMem_Realloc, PyMem_Malloc
from libc.math cimport exp, log, log1p, fabs, isfinite, NAN
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

cimport numpy as cnp
import numpy as np

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "fbp_gemm.h" nogil:
    void fbp_gemm_f32(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda,
                      const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc,
                      const float *bias, int act,
                      const float *dsrc, int64_t ldd,
                      int n_threads)
    void fbp_gemm_f64(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      double alpha, const double *A, int64_t lda,
                      const double *B, int64_t ldb,
                      double beta, double *C, int64_t ldc,
                      const double *bias, int act,
                      const double *dsrc, int64_t ldd,
                      int n_threads)
    const char *fbp_gemm_isa()
    int fbp_gemm_set_isa(const char *name)
    int fbp_gemm_set_unpacked_a(int on)
    int64_t fbp_gemm_unpacked_a_calls()
    void fbp_gemm_tile_shape(int elem_size, int64_t *mr, int64_t *nr)
    int64_t fbp_gemm_buffer_bytes(int elem_size, int64_t M, int64_t N, int64_t K)
    int64_t fbp_gemm_packed_size(int elem_size, int64_t N, int64_t K)
    int64_t fbp_gemm_packed_nr(int elem_size)
    int fbp_gemm_pack_b_f32(int trans_b, int64_t N, int64_t K, const float *B, int64_t ldb,
                             float *Bp, int64_t j0, int64_t j1)
    int fbp_gemm_pack_b_f64(int trans_b, int64_t N, int64_t K, const double *B, int64_t ldb,
                             double *Bp, int64_t j0, int64_t j1)
    void fbp_gemm_pack_b_rows_f32(int trans_b, int64_t N, int64_t K, const float *B,
                                  int64_t ldb, float *Bp, int64_t k0, int64_t k1)
    void fbp_gemm_pack_b_rows_f64(int trans_b, int64_t N, int64_t K, const double *B,
                                  int64_t ldb, double *Bp, int64_t k0, int64_t k1)
    void fbp_gemm_packed_f32(int trans_a, int64_t M, int64_t N, int64_t K,
                             float alpha, const float *A, int64_t lda, const float *Bp,
                             float beta, float *C, int64_t ldc,
                             const float *bias, int act, const float *dsrc, int64_t ldd)
    void fbp_gemm_packed_f64(int trans_a, int64_t M, int64_t N, int64_t K,
                             double alpha, const double *A, int64_t lda, const double *Bp,
                             double beta, double *C, int64_t ldc,
                             const double *bias, int act, const double *dsrc, int64_t ldd)

cdef extern from "fbp_team.h" nogil:
    int FBP_OPENMP
    int fbp_omp_max_threads()
    void FBP_BARRIER()
    void fbp_colsum_f32(const float *d, int64_t m, int64_t n, int64_t ld, float *out)
    void fbp_colsum_f64(const double *d, int64_t m, int64_t n, int64_t ld, double *out)
    unsigned int fbp_ftz_set(int on)
    void fbp_ftz_restore(unsigned int old)
    int fbp_ftz_is_on()
    unsigned int fbp_ftz_mode()
    unsigned int fbp_ftz_enter(unsigned int mode)
    void fbp_ftz_leave(unsigned int old)
    int fbp_team_size()
    void fbp_count_parallel(int team)
    int64_t fbp_parallel_count()
    void fbp_install_atfork()
    int fbp_serial_after_fork()
    int fbp_omp_thread_limit()
    ctypedef struct fbp_team:
        pass
    void fbp_team_init(fbp_team *T)
    void fbp_team_invalidate(fbp_team *T, unsigned g)
    void fbp_team_open(fbp_team *T, unsigned g, int nw, const int *n, int loss_wave)
    void fbp_team_quit(fbp_team *T)
    int fbp_team_nw(fbp_team *T)
    int fbp_team_loss_wave(fbp_team *T)
    int fbp_team_claim(fbp_team *T, int v, unsigned g)
    void fbp_team_finish(fbp_team *T, int v)
    int fbp_team_wait_wave(fbp_team *T, int v, unsigned g)
    unsigned fbp_team_next(fbp_team *T, unsigned last)
    int fbp_poll_signals()
    int64_t fbp_now_ns()
    int fastbp_kernels_abi()

fbp_install_atfork()


def serial_after_fork():
    """True in a process forked after this module ran a team of threads:
    there every call runs on one thread (libgomp is not fork-safe)."""
    return bool(fbp_serial_after_fork())


def thread_limit():
    """OpenMP's cap on the threads of a team (OMP_THREAD_LIMIT; huge when unset)."""
    return fbp_omp_thread_limit()


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

# Codes shared with fastbp/_common.py and fbp_gemm.h.
cdef enum:
    ACT_IDENTITY = 0
    ACT_SIGMOID = 1
    ACT_RELU = 2
    ACT_TANH = 3
    OUT_IDENTITY = 0
    OUT_SIGMOID = 1
    OUT_SOFTMAX = 2
    OUT_EXP = 3
    LOSS_SQUARED = 0
    LOSS_BCE = 1
    LOSS_CE = 2
    LOSS_POISSON = 3

# Threads: a step (or a predict chunk) uses one thread per this many
# multiply-adds of its forward pass, at most n_threads: a step too small to
# gain runs serially, with no parallel region.  Its tiles are cut no finer than
# a quarter of it.  Results do not depend on it; the tests lower it (to 0: as
# many threads and tiles as the shape allows) to run the parallel paths on
# small nets.  2**18: a 64-128-10 step at batch 32 (303k multiply-adds, ~20 us)
# ran 0.86x as fast on 2 threads as on 1 on a quiet machine (the weights move
# between the cores every step, each row tile packs them again, two waves
# wait): such steps stay serial, with no region (bench/NOTES.md, "The
# 64-128-10 b32 step").  It was 65536.
cdef int64_t par_min_macs = 262144

cdef enum:
    # Row split (each tile: some batch rows through every layer) while every
    # thread gets at least this many rows, else the output units of every
    # layer are split (one wave per layer).
    ROWS_PER_THREAD = 16
    # Tiles per thread: rows (each row tile packs every W_k under
    # pack_min_elems again; larger ones are packed once per step, in the
    # pack wave) and units.
    ROW_TILES_PER_THREAD = 2
    UNIT_TILES_PER_THREAD = 4
    # More row tiles than ROW_TILES_PER_THREAD per thread (shorter tiles: less
    # to wait for when a thread loses its core) only for steps of more than
    # TILE_MACS multiply-adds per tile, and never under this many rows per
    # tile: a row tile reads each packed W_k (or packs a small one again),
    # and a packed element must serve many rows to cost little next to the
    # micro-kernel.  (Column
    # tiles of the unit split pack their own slice of W, and their rows are
    # few: no such cost.)
    ROW_TILE_MIN_ROWS = 64
    MAX_TILES = 1024
    MAX_WAVES = 2 * 64 + 1
    # The pack wave of a row split (_steps.pxi, plan_packs): its tiles are
    # column ranges of about this many elements of one packed W_k; a product
    # of at most PACK_SMALL_MNK multiply-adds (SMALL_MNK of
    # src/fbp_gemm_internal.h: the GEMM's small path, which packs nothing)
    # takes no pack.
    PACK_TILE_ELEMS = 32768
    PACK_SMALL_MNK = 4096

cdef int64_t TILE_MACS = 16 * 1024 * 1024

# A row split packs W_k once per step, in its pack wave, for a product of
# W_k (the forward one, and delta_k's for k >= 1) when W_k has at least
# this many elements; smaller ones are packed by each row tile's GEMM as
# before (measured in bench/NOTES.md, "pack wave").  Results do not depend
# on it (set_pack_threshold: the tests).
cdef int64_t pack_min_elems = 16384

# Test hooks (alloc_stats): fit_epoch calls that allocated their own pack
# buffer (the caller's workspace had no room for it), and the largest
# workspace (elements) a predict, loss or gradients call allocated.
cdef int64_t own_pack_calls = 0
cdef int64_t call_ws_peak = 0


cdef inline void note_own_packs() noexcept:
    """Record a fit_epoch call that allocated its own packs (alloc_stats)."""
    global own_pack_calls
    own_pack_calls += 1


cdef inline void note_call_ws(int64_t elems) noexcept:
    """Record a predict / loss / gradients call's workspace (alloc_stats)."""
    global call_ws_peak
    if elems > call_ws_peak:
        call_ws_peak = elems


# A training row split packs layer k's input H_k (the batch rows x n_in)
# for part 2 by rows, in the row tiles that wrote them (_steps.pxi,
# pack_h_rows), when H_k has at least this many elements; the unit tiles
# then read that copy instead of each packing H_k again (measured in
# bench/NOTES.md, "H packs").  Results do not depend on it
# (set_hpack_threshold: the tests).
cdef int64_t hpack_min_elems = 16384
# ... and at most this many: a larger H_k no longer stays in cache between
# its row tile and the pack, and its pack would be a second copy of a large
# input (gradients() over all of X: H_0 is X itself, never gathered).
cdef int64_t hpack_max_elems = 1 << 20

cdef enum:
    # The epoch loop polls for Ctrl-C after about this many multiply-adds.
    SIGNAL_POLL_MACS = 20000000


cdef struct Spec:
    int n_layers
    const int64_t *sizes    # n_layers + 1 widths, input first
    const int64_t *w_off    # offset of W_k in theta
    const int64_t *b_off    # offset of b_k in theta, or -1 without bias
    int hidden              # ACT_* of every hidden layer
    int output              # OUT_*
    int loss                # LOSS_*
    int n_threads
    unsigned int ftz        # the caller's FTZ/DAZ bits, set in every thread of a region
    int elem                # bytes per element (4, 8): the GEMM's tile shape
    int64_t x_nnz           # sparse X: its mean non-zeros per row, rounded up (layer 0's
                            # cost in the planner, layer_macs); -1: dense X
    int64_t x_update        # sparse X, training through grad (an optimizer, the SGD
                            # keywords, `gradients`): n_in n_out, the dense pass over
                            # W_0 a step makes, added to its cost (make_plan); else 0
    int64_t h_rows          # training: the rows of the call's largest step, which the H
                            # packs' size limit goes by (pack_layout), so that a shorter
                            # step's layout fits in the call's buffer; 0: the step's own


cdef enum:
    # What a call's workspace holds besides the activations A_1..A_L and yhat.
    WS_GATHER = 1           # A_0 and y: the gathered (shuffled) batch
    WS_TARGETS = 2          # lossv, hitv
    WS_DELTAS = 4           # delta_1..delta_L
    WS_COLSUM = 8           # bias-gradient scratch of the fused SGD step
    WS_FIT = 15
    WS_SPARSE = 16          # X is sparse (_sparse.pxi): the gathered batch has no A_0


cdef struct Work:
    int64_t rows            # capacity in batch rows
    int64_t act[65]         # act[k]: offset of A_k (rows, sizes[k]), k = 0..n_layers (A_0: WS_GATHER)
    int64_t yhat            # (rows, n_out) outputs after the output activation
    int64_t delta[65]       # delta[k]: offset of dloss/dZ_k (rows, sizes[k]), k = 1..n_layers
    int64_t y               # (rows, n_out) gathered targets
    int64_t lossv           # (rows,) per-sample loss
    int64_t hitv            # (rows,) per-sample accuracy (classification losses)
    int64_t colsum[65]      # colsum[k]: (sizes[k + 1],) bias-gradient scratch of layer k
    int64_t size            # total elements


MAX_LAYERS = 64


cdef Work make_work(const Spec *s, int64_t rows, int what) noexcept nogil:
    """Offsets of the scratch arrays a call needs (`what`: WS_* flags) inside
    one flat workspace of `rows` rows; -1 for the ones it does not need."""
    cdef Work w
    cdef int64_t off = 0
    cdef int k, L = s.n_layers
    w.rows = rows
    w.act[0] = w.y = w.lossv = w.hitv = w.delta[0] = -1
    if what & WS_GATHER and not what & WS_SPARSE:
        w.act[0] = off
        off += rows * s.sizes[0]
    for k in range(1, L + 1):
        w.act[k] = off
        off += rows * s.sizes[k]
    w.yhat = off
    off += rows * s.sizes[L]
    for k in range(1, L + 1):
        w.delta[k] = -1
        if what & WS_DELTAS:
            w.delta[k] = off
            off += rows * s.sizes[k]
    if what & WS_GATHER:
        w.y = off
        off += rows * s.sizes[L]
    if what & WS_TARGETS:
        w.lossv = off
        off += rows
        w.hitv = off
        off += rows
    for k in range(L):   # one per layer: tiles of different layers run at once
        w.colsum[k] = -1
        if what & WS_COLSUM:
            w.colsum[k] = off
            off += s.sizes[k + 1]
    w.size = off
    return w


include "_dropout.pxi"
include "_optim.pxi"

cdef struct Sparse   # _sparse.pxi


cdef struct Extra:
    # What a call adds to the plain mean-loss step (all off: zeroed).
    const void *sw          # IN sample weights (n_samples,) of the data set, or NULL
    double wsum             # this step's sum of the batch's weights (sw != NULL)
    Drop drop               # dropout of the hidden layers (training steps)
    OptK *opt               # the optimizer path (fastbp.optim), or NULL
    Sparse *sp              # X in CSR form (_sparse.pxi), or NULL: dense X


cdef inline void extra_init(Extra *e) noexcept nogil:
    e.sw = NULL
    e.wsum = 0.0
    e.drop.on = False
    e.opt = NULL
    e.sp = NULL


# ---------------------------------------------------------------------------
# GEMM dispatch on the fused type.

cdef inline void gemm(int ta, int tb, int64_t M, int64_t N, int64_t K,
                      floating alpha, const floating *A, int64_t lda,     # IN
                      const floating *B, int64_t ldb,                     # IN
                      floating beta, floating *C, int64_t ldc,            # OUT (and IN when beta != 0)
                      const floating *bias, int act,                      # IN
                      const floating *dsrc, int64_t ldd,                  # IN
                      int n_threads) noexcept nogil:
    if floating is float:
        fbp_gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                     bias, act, dsrc, ldd, n_threads)
    else:
        fbp_gemm_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                     bias, act, dsrc, ldd, n_threads)


cdef inline void gemm_packed(int ta, int64_t M, int64_t N, int64_t K,
                             floating alpha, const floating *A, int64_t lda,   # IN
                             const floating *Bp,                               # IN op(B) packed (pack_b)
                             floating beta, floating *C, int64_t ldc,          # OUT (and IN when beta != 0)
                             const floating *bias, int act,                    # IN
                             const floating *dsrc, int64_t ldd) noexcept nogil:  # IN
    """gemm(ta, <tb>, M, N, K, ..., 1) with op(B) pre-packed in Bp by
    pack_b(tb, ...) under the current ISA: the same bits, serial."""
    if floating is float:
        fbp_gemm_packed_f32(ta, M, N, K, alpha, A, lda, Bp, beta, C, ldc, bias, act, dsrc, ldd)
    else:
        fbp_gemm_packed_f64(ta, M, N, K, alpha, A, lda, Bp, beta, C, ldc, bias, act, dsrc, ldd)


cdef inline void pack_b(int tb, int64_t N, int64_t K,
                        const floating *B, int64_t ldb,   # IN  op(B): B (K x N) or B^T (B: N x K)
                        floating *Bp,                     # OUT its columns j0..j1, packed
                        int64_t j0, int64_t j1) noexcept nogil:
    """Columns j0..j1 of op(B) into the pre-packed Bp (fbp_gemm_packed_size
    elements; j0 a multiple of fbp_gemm_packed_nr, j1 too or N): disjoint
    column ranges write disjoint parts of Bp.  (Other cuts are refused,
    nothing written: fbp_gemm_pack_b_* returns -1; pack_tile's are cut at
    Plan.pk_nr, so never.)"""
    if floating is float:
        fbp_gemm_pack_b_f32(tb, N, K, B, ldb, Bp, j0, j1)
    else:
        fbp_gemm_pack_b_f64(tb, N, K, B, ldb, Bp, j0, j1)


cdef inline void pack_b_rows(int tb, int64_t N, int64_t K,
                             const floating *B, int64_t ldb,   # IN  op(B): B (K x N) or B^T (B: N x K)
                             floating *Bp,                     # OUT its rows k0..k1, packed
                             int64_t k0, int64_t k1) noexcept nogil:
    """Rows k0..k1 of op(B) (every column) into the pre-packed Bp (the
    layout of pack_b): disjoint row ranges write disjoint parts of Bp."""
    if floating is float:
        fbp_gemm_pack_b_rows_f32(tb, N, K, B, ldb, Bp, k0, k1)
    else:
        fbp_gemm_pack_b_rows_f64(tb, N, K, B, ldb, Bp, k0, k1)


cdef inline void column_sums(const floating *d, int64_t m, int64_t n, int64_t ld,  # IN (m, n)
                             floating *out) noexcept nogil:                      # OUT (n,)
    """out[j] = sum_i d[i, j], summed in row order."""
    if floating is float:
        fbp_colsum_f32(d, m, n, ld, out)
    else:
        fbp_colsum_f64(d, m, n, ld, out)


include "_sparse.pxi"
include "_rows.pxi"
include "_steps.pxi"
include "_epoch.pxi"
include "_tiny.pxi"
include "_layers.pxi"
include "_check.pxi"


# ---------------------------------------------------------------------------
# predict's fast path (Network.predict_fast): the input checks of
# fastbp._common.check_X in compiled code, and small calls without the
# Python-level overhead of a general call.

cdef enum:
    # A predict of at most SMALL_ROWS rows and SMALL_MACS multiply-adds, that
    # runs serially anyway, runs with the GIL held (releasing and taking it
    # back costs more than the call, and can lose the GIL to another thread
    # for a switch interval) in the Network's cached workspace.
    SMALL_ROWS = 64
    SMALL_MACS = 65536
    FINITE_BLOCK = 1024     # values checked between early exits


cdef extern from *:
    """
    /* One input row through one dense layer, for predict's small path:
     * z[j] = sum_k x[k] W[j, k] (W: n_out x n_in, row-major), each element by
     * the GEMM's own sequence of operations (fbp_gemm.h, "Per-element
     * invariance"): per FBP_KC = 256 slab of k an accumulator from 0 chained
     * over k in order with the code path's S_FMA (a fused multiply-add on the
     * AVX2/AVX-512 paths: the _fma variants; mul then add on the generic
     * one), the first slab taken as alpha*acc with alpha = 1, later slabs
     * folded in as S_FMA(1, acc, c).  So z is bitwise what fbp_gemm gives
     * before its epilogue.  Eight outputs at a time: eight independent chains
     * the pipeline overlaps (one chain after another, as the GEMM's small
     * path runs them, waits on each FMA's latency).  Contraction is off here,
     * as in fbp_gemm.c: a*b+c is never fused unless written so. */
    #include <stdint.h>
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    #if defined(__clang__)   /* GCC's pragma is ignored there: the standard one, per body */
    #define FBP_ROW_NOFUSE _Pragma("STDC FP_CONTRACT OFF")
    #else
    #define FBP_ROW_NOFUSE
    #endif
    #define FBP_ROW_KC 256
    #define FBP_MULADD(x, y, z) ((x) * (y) + (z))
    #define FBP_DEFINE_ROWDOT(NAME, T, FMA, ATTR)                                  \\
    static ATTR void NAME(const T *x, const T *W, int64_t n_in, int64_t n_out,   \\
                          T *z)                                                  \\
    {                                                                            \\
        FBP_ROW_NOFUSE                                                           \\
        int64_t j = 0;                                                           \\
        for (; j + 8 <= n_out; j += 8) {                                         \\
            const T *w = W + j * n_in;                                           \\
            T c[8] = {0}; /* written at k0 == 0 before any read (for gcc) */  \\
            int64_t k0 = 0;                                                      \\
            do {                                                                 \\
                const int64_t k1 = n_in - k0 <= FBP_ROW_KC ? n_in : k0 + FBP_ROW_KC; \\
                T a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                               \\
                for (int64_t k = k0; k < k1; k++) {                              \\
                    const T xk = x[k];                                           \\
                    _Pragma("GCC unroll 8")                                      \\
                    for (int r = 0; r < 8; r++)                                  \\
                        a[r] = FMA(xk, w[r * n_in + k], a[r]);                   \\
                }                                                                \\
                _Pragma("GCC unroll 8")                                          \\
                for (int r = 0; r < 8; r++)                                      \\
                    c[r] = k0 == 0 ? (T)1 * a[r] : FMA((T)1, a[r], c[r]);        \\
                k0 = k1;                                                         \\
            } while (k0 < n_in);                                                 \\
            for (int r = 0; r < 8; r++)                                          \\
                z[j + r] = c[r];                                                 \\
        }                                                                        \\
        for (; j < n_out; j++) {                                                 \\
            const T *w = W + j * n_in;                                           \\
            T c = 0;                                                             \\
            int64_t k0 = 0;                                                      \\
            do {                                                                 \\
                const int64_t k1 = n_in - k0 <= FBP_ROW_KC ? n_in : k0 + FBP_ROW_KC; \\
                T a = 0;                                                         \\
                for (int64_t k = k0; k < k1; k++)                                \\
                    a = FMA(x[k], w[k], a);                                      \\
                c = k0 == 0 ? (T)1 * a : FMA((T)1, a, c);                        \\
                k0 = k1;                                                         \\
            } while (k0 < n_in);                                                 \\
            z[j] = c;                                                            \\
        }                                                                        \\
    }
    FBP_DEFINE_ROWDOT(fbp_rowdot_f32, float, FBP_MULADD, )
    FBP_DEFINE_ROWDOT(fbp_rowdot_f64, double, FBP_MULADD, )
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    FBP_DEFINE_ROWDOT(fbp_rowdot_f32_fma, float, __builtin_fmaf, __attribute__((target("fma"))))
    FBP_DEFINE_ROWDOT(fbp_rowdot_f64_fma, double, __builtin_fma, __attribute__((target("fma"))))
    #else
    #define fbp_rowdot_f32_fma fbp_rowdot_f32
    #define fbp_rowdot_f64_fma fbp_rowdot_f64
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void fbp_rowdot_f32(const float *x, const float *W, int64_t n_in, int64_t n_out, float *z) nogil
    void fbp_rowdot_f64(const double *x, const double *W, int64_t n_in, int64_t n_out, double *z) nogil
    void fbp_rowdot_f32_fma(const float *x, const float *W, int64_t n_in, int64_t n_out, float *z) nogil
    void fbp_rowdot_f64_fma(const double *x, const double *W, int64_t n_in, int64_t n_out, double *z) nogil


cdef enum:
    # SMALL_MNK (src/fbp_gemm_internal.h): up to it the GEMM runs one scalar chain after
    # another, and fbp_rowdot is faster.  Only speed depends on it (every
    # path gives the same bits); FBP_ROW_KC must equal FBP_KC (src/fbp_gemm_internal.h)
    # (tests/test_latency.py has a layer deeper than one slab).
    GEMM_SMALL_MNK = 4096


cdef void forward_small(const Spec *s, const floating *theta,   # IN  parameters
                        floating *ws, const Work *w,           # OUT activations A_1..A_L rows 0..n-1
                        const floating *x,                     # IN  (n, n_in) input rows
                        floating *out,                         # OUT (n, n_out) outputs
                        int64_t n, bint fused) noexcept nogil:
    """forward_rows (no dropout) for predict's small path, with the same bits.

    A layer whose product the GEMM would run on its small path (M*N*K <=
    SMALL_MNK: one scalar chain after another) takes fbp_rowdot row by row
    (the GEMM's sums; `fused` on the FMA code paths), then the GEMM's
    epilogue: bias and ReLU written out here, the same operations as
    epi_elem; sigmoid and tanh by the GEMM itself, called with K = 0 and
    beta = 1 (c = 1*0 + 1*c, exact: a sum from fbp_rowdot is never -0), so
    with its own exp.  Larger layers call the GEMM as forward_cols does.
    Then output_row."""
    cdef int k, L = s.n_layers, act
    cdef int64_t i, j, n_in, n_out
    cdef const floating *h = x
    cdef const floating *W
    cdef const floating *b
    cdef floating *z
    for k in range(L):
        n_in, n_out = s.sizes[k], s.sizes[k + 1]
        W = theta + s.w_off[k]
        b = theta + s.b_off[k] if s.b_off[k] >= 0 else NULL
        z = ws + w.act[k + 1]
        act = s.hidden if k < L - 1 else ACT_IDENTITY
        if n * n_in * n_out > GEMM_SMALL_MNK:
            gemm(0, 1, n, n_out, n_in, <floating>1, h, n_in, W, n_in, <floating>0, z, n_out,
                 b, act, NULL, 0, 1)
        else:
            for i in range(n):
                if floating is float:
                    if fused:
                        fbp_rowdot_f32_fma(h + i * n_in, W, n_in, n_out, z + i * n_out)
                    else:
                        fbp_rowdot_f32(h + i * n_in, W, n_in, n_out, z + i * n_out)
                else:
                    if fused:
                        fbp_rowdot_f64_fma(h + i * n_in, W, n_in, n_out, z + i * n_out)
                    else:
                        fbp_rowdot_f64(h + i * n_in, W, n_in, n_out, z + i * n_out)
            if act == ACT_SIGMOID or act == ACT_TANH:
                gemm(0, 1, n, n_out, 0, <floating>1, h, n_in, W, n_in, <floating>1, z, n_out,
                     b, act, NULL, 0, 1)
            else:
                if b != NULL:
                    for i in range(n):
                        for j in range(n_out):
                            z[i * n_out + j] = z[i * n_out + j] + b[j]
                if act == ACT_RELU:
                    for j in range(n * n_out):
                        if not z[j] > 0:
                            z[j] = 0
        h = z
    for i in range(n):
        output_row(s, h + i * s.sizes[L], out + i * s.sizes[L])


cdef bint all_finite(const floating *x, int64_t n) noexcept nogil:
    """True when every x[i] is finite: x - x is 0 for finite x, NaN for
    NaN and +-Inf (branch-free within a block, so it vectorises)."""
    cdef int64_t i, j, end
    cdef bint ok
    i = 0
    while i < n:
        end = min(n, i + FINITE_BLOCK)
        ok = True
        for j in range(i, end):
            ok &= (x[j] - x[j]) == 0
        if not ok:
            return False
        i = end
    return True


cdef bint load_input(const void *src, bint convert,   # IN X's values (theta's dtype unless convert)
                     floating *buf,                   # OUT X in theta's dtype when convert
                     int64_t count, const floating **xin) noexcept nogil:
    """X as the kernels read it (xin), and whether check_X would pass it:
    every value finite, and still finite once cast to theta's dtype (a C
    cast, round to nearest, as numpy's astype: float64 beyond float32's
    range becomes Inf).  False sends the caller to the general path, whose
    check_X raises the message."""
    cdef int64_t i
    if not convert:
        xin[0] = <const floating *>src
        return all_finite(<const floating *>src, count)
    if floating is float:
        for i in range(count):
            buf[i] = <float>(<const double *>src)[i]
    else:
        for i in range(count):
            buf[i] = <double>(<const float *>src)[i]
    xin[0] = buf
    return all_finite(<const floating *>buf, count)


cdef object _get_num_threads = None


cdef int threads_now(object cap) except -1:
    """fastbp.get_num_threads(), capped by `cap` (None: no cap): the thread
    count a call under fastbp.threads(cap) would get."""
    global _get_num_threads
    if _get_num_threads is None:
        from fastbp._threads import get_num_threads
        _get_num_threads = get_num_threads
    cdef int n = _get_num_threads()
    if cap is not None and cap < n:
        n = cap
    return n


cdef object predict_fast_typed(Network net, floating *theta, cnp.ndarray x, bint convert,
                               int64_t chunk, object cap):
    """Network.predict_fast once the arrays' kinds are known (theta: floating)."""
    cdef int type_num = cnp.NPY_FLOAT if floating is float else cnp.NPY_DOUBLE
    cdef Spec s = net.spec
    cdef int64_t n = cnp.PyArray_DIMS(x)[0], n_in = s.sizes[0], n_out = s.sizes[s.n_layers]
    cdef int64_t count = n * n_in, need, macs
    cdef cnp.npy_intp dims[2]
    cdef const void *src = cnp.PyArray_DATA(x)
    cdef const floating *xin = NULL
    cdef floating *ws
    cdef floating *buf = NULL
    cdef void *grown
    cdef bint ok, own = False
    cdef Work w
    cdef Extra e
    cdef Call c
    cdef int status = 0
    chunk = max(1, min(chunk, n))
    extra_init(&e)
    dims[0], dims[1] = n, n_out
    out = cnp.PyArray_EMPTY(2, dims, type_num, 0)
    cdef floating *out_p = <floating *>cnp.PyArray_DATA(out)
    # Serial whatever the thread count: run_call's own rule (make_plan).
    macs = forward_macs(&s, chunk)
    if (par_min_macs > 0 and macs // par_min_macs <= 1 and n <= chunk and n <= SMALL_ROWS
            and macs <= SMALL_MACS):
        s = net._spec(1, sizeof(floating))
        w = make_work(&s, n, 0)
        need = (w.size + (count if convert else 0)) * <int64_t>sizeof(floating)
        if net.small_busy:          # in use (a free-threaded build): a fresh one
            ws = <floating *>PyMem_Malloc(need)
            if ws == NULL:
                raise MemoryError()
            own = True
        else:
            if need > net.small_bytes:
                grown = PyMem_Realloc(net.small_ws, need)
                if grown == NULL:
                    raise MemoryError()
                net.small_ws, net.small_bytes = grown, need
                net.small_allocations += 1
            ws = <floating *>net.small_ws
            net.small_busy = True
        if convert:
            buf = ws + w.size
        ok = load_input(src, convert, buf, count, &xin)
        if ok:
            forward_small(&s, theta, ws, &w, xin, out_p, n, fbp_gemm_isa()[0] != b'g')
        if own:
            PyMem_Free(ws)
        else:
            net.small_busy = False
        return out if ok else None
    # Larger calls: as Network.predict (a fresh workspace, the GIL released,
    # the threads of the call), with the checks done here.
    s = net._spec(threads_now(cap), sizeof(floating))
    w = make_work(&s, chunk, 0)
    cdef int64_t n_pack = call_packs(&s, chunk, False)
    cdef cnp.ndarray ws_arr = np.empty(w.size + n_pack,
                                       dtype=np.float32 if floating is float else np.float64)
    note_call_ws(w.size + n_pack)
    cdef cnp.ndarray conv
    if convert:   # check_X's converted copy
        conv = np.empty(count, dtype=np.float32 if floating is float else np.float64)
        buf = <floating *>cnp.PyArray_DATA(conv)
    ws = <floating *>cnp.PyArray_DATA(ws_arr)
    c.kind, c.ws, c.Y, c.n, c.chunk, c.e = CALL_CHUNKS, ws, NULL, n, chunk, &e
    c.out = out_p
    c.packs = align_packs(ws + w.size) if n_pack > 0 else NULL
    with nogil:
        ok = load_input(src, convert, buf, count, &xin)
        if ok:
            c.X = xin
            status = run_call(&s, &w, &c, chunk, False, theta)
    if not ok:
        return None
    if status == -1:
        _raise_pending()   # Ctrl-C between chunks
    return out


# ---------------------------------------------------------------------------
# Python-facing wrappers.  They validate what the kernels rely on and allocate.

cdef class Network:
    """Layout of one MLP's parameters in a flat vector, and the kernels over it.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first.
    hidden, output, loss : int
        Codes from fastbp._common (ACTIVATIONS, OUTPUTS, LOSSES).
    bias : bool
        Whether each layer has a bias vector.
    """
    cdef Spec spec
    cdef readonly object sizes, w_off, b_off
    cdef readonly int64_t n_params
    # predict_fast's cached workspace for small calls (SMALL_ROWS): grown on
    # need, freed with the Network; small_allocations counts its (re)allocations.
    cdef void *small_ws
    cdef int64_t small_bytes
    cdef bint small_busy
    cdef readonly int64_t small_allocations

    def __dealloc__(self):
        PyMem_Free(self.small_ws)

    def __init__(self, sizes, int hidden, int output, int loss, bint bias):
        cdef int k
        cdef int64_t off = 0
        if not 1 <= len(sizes) - 1 <= MAX_LAYERS:
            raise ValueError(f"between 1 and {MAX_LAYERS} layers are supported")
        self.sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        self.w_off = np.empty(len(sizes) - 1, dtype=np.int64)
        self.b_off = np.empty(len(sizes) - 1, dtype=np.int64)
        if (self.sizes < 1).any() or (self.sizes >= 2**31).any():
            raise ValueError("layer sizes must be in [1, 2**31)")
        for k in range(len(sizes) - 1):
            self.w_off[k] = off
            off += self.sizes[k] * self.sizes[k + 1]
            if bias:
                self.b_off[k] = off
                off += self.sizes[k + 1]
            else:
                self.b_off[k] = -1
        self.n_params = off
        self.spec.n_layers = len(sizes) - 1
        self.spec.hidden = hidden
        self.spec.output = output
        self.spec.loss = loss
        self.spec.n_threads = 1
        self.spec.x_nnz = -1
        self.spec.x_update = 0
        self.spec.h_rows = 0
        self._bind()

    cdef void _bind(self):
        cdef const int64_t[::1] sz = self.sizes, wo = self.w_off, bo = self.b_off
        self.spec.sizes = &sz[0]
        self.spec.w_off = &wo[0]
        self.spec.b_off = &bo[0]

    def workspace_size(self, int64_t rows, str kind="fit", dropout=None, *, bint sparse=False,
                       int n_threads=1, int itemsize=8, int64_t nnz_per_row=-1,
                       bint grad=False):
        """Elements of scratch one call allocates for `rows` rows (a batch, or
        a predict/loss chunk): kind "fit" (what `fit_epoch` needs: the
        caller allocates it), "predict", "loss" or "gradients" (what those
        calls allocate themselves, chunk rows or all of X for gradients).
        With `dropout` (as fit_epoch and gradients take it), "fit" and
        "gradients" include the dropped activations of the hidden layers
        whose p > 0.  `sparse`: for a sparse X (fastbp._sparse.CSR), whose
        batch is never gathered (no A_0 in "fit").  With `n_threads` > 1
        (and `itemsize`, 4 or 8, the dtype's), also the packed weights of
        the team steps' pack wave when a step of `rows` rows is a row split
        on that many threads (the current GEMM code path's layout; a
        fit_epoch workspace without them allocates them for the call).

        On sparse X the call plans its steps by their sparse cost (layer
        0 at X's mean stored entries per row, layer_macs; on a training
        step through a gradient also the pass over all of W_0, x_update),
        so the split, and whether it packs, follows that cost:
        `nnz_per_row` is X's mean stored entries per row, rounded up
        (fastbp._sparse.nnz_per_row), and `grad` (kind "fit") says that
        the fit passes fit_epoch a gradient (an optimizer, momentum,
        weight decay, l2 or clip_norm; "gradients" always does).  With
        them the size is the call's own (call_packs of the same plan).
        Without nnz_per_row (sparse, -1) the packs are counted whenever
        some step of `rows` rows could be a row split on a team (at least
        2 ROWS_PER_THREAD rows): enough for any X, maybe more than used."""
        cdef int what
        cdef Drop d
        cdef const double[::1] p_v
        cdef int64_t extra = 0
        cdef Spec s
        cdef bint train
        cdef int64_t pk[PK_SLOTS]
        cdef int64_t hk[64]
        if itemsize not in (4, 8):
            raise ValueError("itemsize must be 4 or 8")
        if kind == "fit":
            what = WS_FIT
        elif kind == "predict":
            what = 0
        elif kind == "loss":
            what = WS_TARGETS
        elif kind == "gradients":
            what = WS_TARGETS | WS_DELTAS
        else:
            raise ValueError(f"kind must be 'fit', 'predict', 'loss' or 'gradients', got {kind!r}")
        if dropout is not None and kind in ("fit", "gradients"):
            p_v = _dropout_view(dropout, self.spec.n_layers)
            extra = drop_layout(&self.spec, &d, &p_v[0] if p_v.shape[0] > 0 else NULL, rows)
        if sparse:
            what |= WS_SPARSE
        if nnz_per_row < -1 or (nnz_per_row >= 0 and not sparse):
            raise ValueError("nnz_per_row must be >= 0, and is for a sparse X only")
        if n_threads > 1:
            # The call's own plan (call_packs on the call's Spec: x_data and
            # fit_epoch / gradients set x_nnz and x_update so).
            s = self._spec(n_threads, itemsize)
            train = kind in ("fit", "gradients")
            if not sparse:
                extra += call_packs(&s, rows, train)
            elif nnz_per_row >= 0:
                s.x_nnz = nnz_per_row
                if train and (grad or kind == "gradients"):
                    s.x_update = s.sizes[0] * s.sizes[1]
                extra += call_packs(&s, rows, train)
            elif rows >= 2 * <int64_t>ROWS_PER_THREAD:   # (the fewest rows of a row split)
                s.x_nnz = 0
                extra += pack_layout(&s, train, rows, pk, hk)
        return make_work(&self.spec, rows, what).size + extra

    def fit_workspace_nbytes(self, int64_t batch_size, int64_t n_samples, int itemsize,
                             int n_threads, dropout=None):
        """Bytes of kernel scratch a fit of n_samples rows in batches of
        batch_size needs: the workspace (`workspace_size`, allocated by the
        caller for the fit) plus the GEMM's packing buffers of the threads
        its steps run on (fbp_gemm_buffer_bytes of the largest product a tile
        of a step computes, per thread; each thread allocates its buffer on
        first need and keeps it for later calls, so a second fit on the same
        threads allocates none of it again).

        Parameters
        ----------
        batch_size, n_samples : int
            As given to the fit (n_samples >= 1).
        itemsize : int
            4 (float32) or 8 (float64).
        n_threads : int
            The thread count the fit runs with (fastbp.get_num_threads()).
        dropout : ndarray, optional
            As fit_epoch takes it: the workspace then includes the dropped
            activations (workspace_size(rows, dropout=dropout)).

        Returns
        -------
        int
        """
        if batch_size < 1 or n_samples < 1 or itemsize not in (4, 8):
            raise ValueError("batch_size and n_samples must be >= 1 and itemsize 4 or 8")
        cdef Spec s = self._spec(n_threads, itemsize)
        cdef int64_t rows = min(batch_size, n_samples), per_thread = 0, r, c
        cdef Plan p
        cdef int k, L = s.n_layers
        make_plan(&s, rows, True, True, &p)
        # The largest product a thread may compute: with row tiles, the
        # tallest tile's rows; with unit tiles, whole rows of every GEMM but
        # at most one tile's columns (the widest tile).  Part 2 (all plans):
        # the widest unit tile times n_in, over K = the batch.
        for k in range(L):
            if p.nt == 1 or not p.by_units:
                r = rows if p.nt == 1 else widest(rows, p.n_tiles[0], p.row_align)
                per_thread = max(per_thread, fbp_gemm_buffer_bytes(itemsize, r, s.sizes[k + 1], s.sizes[k]))
                if k > 0:
                    per_thread = max(per_thread, fbp_gemm_buffer_bytes(itemsize, r, s.sizes[k], s.sizes[k + 1]))
            else:
                per_thread = max(per_thread, fbp_gemm_buffer_bytes(
                    itemsize, rows, widest(s.sizes[k + 1], p.n_tiles[k], p.nr), s.sizes[k]))
                if k > 0:
                    per_thread = max(per_thread, fbp_gemm_buffer_bytes(
                        itemsize, rows, widest(s.sizes[k], p.n_tiles[2 * L - k], p.nr), s.sizes[k + 1]))
            c = s.sizes[k + 1] if p.nt == 1 else \
                widest(s.sizes[k + 1], p.p2_first[k + 1] - p.p2_first[k], p.mr)
            per_thread = max(per_thread, fbp_gemm_buffer_bytes(itemsize, c, s.sizes[k], rows))
        # (and the pack wave's buffer: workspace_size with n_threads)
        return int(self.workspace_size(rows, dropout=dropout, n_threads=n_threads,
                                       itemsize=itemsize) * itemsize + p.nt * per_thread)

    cdef Spec _spec(self, int n_threads, int elem):
        """The spec of one call: its thread count, element size, and the
        calling thread's FTZ/DAZ mode (every thread of a region runs with it)."""
        cdef Spec s = self.spec
        s.n_threads = n_threads if n_threads > 0 else 1
        s.ftz = fbp_ftz_mode()
        s.elem = elem
        s.x_nnz = -1            # (x_data sets it for a sparse X)
        s.x_update = 0          # (fit and gradients set it for a sparse X)
        s.h_rows = 0            # (fit and gradients set it: their largest step)
        return s

    def _check(self, theta, X, Y=None):
        if theta.shape[0] != self.n_params:
            raise ValueError("theta has the wrong length")
        if X.shape[1] != self.sizes[0] or X.shape[0] < 1:
            raise ValueError("X has the wrong shape")
        if Y is not None and (Y.shape[0] != X.shape[0] or Y.shape[1] != self.sizes[self.spec.n_layers]):
            raise ValueError("Y has the wrong shape")

    def predict(self, const floating[::1] theta, X,
                floating[:, ::1] out, int64_t chunk, int n_threads):
        """out = network(X), computed `chunk` rows at a time (no dropout).

        X (here and in loss, gradients, fit_epoch): a C-contiguous array
        (n_samples, n_in) of theta's dtype, or a fastbp._sparse.CSR of it."""
        self._check(theta, X)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t n = X.shape[0], n_out = s.sizes[s.n_layers]
        cdef int64_t start, m
        if out.shape[0] != n or out.shape[1] != n_out:
            raise ValueError("out has the wrong shape")
        chunk = max(1, min(chunk, n))
        cdef Work w = make_work(&s, chunk, 0)
        cdef floating[::1] ws
        cdef Call c
        cdef Extra e
        cdef int status
        cdef Sparse sp
        cdef _SparseView spv = _SparseView()
        extra_init(&e)
        cdef const floating *xp = x_data(X, theta, &theta[0], spv, &sp, &e, &s, n_threads, False)
        cdef int64_t n_pack = call_packs(&s, chunk, False)
        ws = np.empty(w.size + n_pack, dtype=np.asarray(theta).dtype)
        note_call_ws(w.size + n_pack)
        c.kind, c.ws, c.X, c.Y, c.n, c.chunk, c.e = CALL_CHUNKS, &ws[0], xp, NULL, n, chunk, &e
        c.out = &out[0, 0]
        c.packs = align_packs(&ws[w.size]) if n_pack > 0 else NULL
        with nogil:
            status = run_call(&s, &w, &c, chunk, False, <floating *>&theta[0])
        if status == -1:
            _raise_pending()   # Ctrl-C between chunks
        return np.asarray(out)

    def predict_fast(self, theta, X, int64_t chunk, cap=None):
        """MLP.predict's fast path: network(X) as a new array, or None when X
        is not a case it takes; the caller then takes the general path
        (check_X and `predict`), which raises the errors.

        Taken: X an exact numpy.ndarray, 2-D of shape (n >= 1, n_in),
        C-contiguous, aligned, native byte order, float32 or float64, every
        value finite and still finite once cast to theta's dtype (numpy's
        cast, round to nearest): check_X's checks, done here in compiled
        code.  `theta`: the model's parameter vector (an exact ndarray of
        n_params float32 or float64, contiguous).  `chunk`: rows per chunk,
        as `predict`'s.  `cap`: at most this many threads (what a call
        inside fastbp.threads(cap) gets), or None.

        A call that runs serially whatever the thread count (make_plan's
        rule) of at most SMALL_ROWS rows and SMALL_MACS multiply-adds runs
        with the GIL held, in a workspace this Network keeps (grown when a
        call needs more, counted by `small_allocations`); a call that finds
        it in use (possible only without a GIL) takes a fresh one.  Larger
        calls run as `predict` does: a fresh workspace, the GIL released,
        the threads of the call.  The output is bitwise `predict`'s on the
        array check_X makes of X (the same kernels on the same rows).
        """
        cdef cnp.ndarray th, x
        cdef int tt, xt
        cdef int behaved = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
        if not (cnp.PyArray_CheckExact(X) and cnp.PyArray_CheckExact(theta)):
            return None
        th, x = <cnp.ndarray>theta, <cnp.ndarray>X
        tt, xt = cnp.PyArray_TYPE(th), cnp.PyArray_TYPE(x)
        if (tt != cnp.NPY_FLOAT and tt != cnp.NPY_DOUBLE) or (xt != cnp.NPY_FLOAT and xt != cnp.NPY_DOUBLE):
            return None
        if (cnp.PyArray_NDIM(th) != 1 or cnp.PyArray_DIMS(th)[0] != self.n_params
                or (cnp.PyArray_FLAGS(th) & behaved) != behaved or not cnp.PyArray_ISNOTSWAPPED(th)):
            return None
        if (cnp.PyArray_NDIM(x) != 2 or cnp.PyArray_DIMS(x)[0] < 1
                or cnp.PyArray_DIMS(x)[1] != self.spec.sizes[0]
                or (cnp.PyArray_FLAGS(x) & behaved) != behaved or not cnp.PyArray_ISNOTSWAPPED(x)):
            return None
        if tt == cnp.NPY_FLOAT:
            return predict_fast_typed(self, <float *>cnp.PyArray_DATA(th), x, xt != tt, chunk, cap)
        return predict_fast_typed(self, <double *>cnp.PyArray_DATA(th), x, xt != tt, chunk, cap)

    def loss(self, const floating[::1] theta, X,
             const floating[:, ::1] Y, int64_t chunk, int n_threads, *, sample_weight=None):
        """(mean per-sample loss, mean per-sample accuracy) over the rows (no dropout).

        With `sample_weight` (an array (n_samples,) of theta's dtype, finite
        and >= 0: the caller checks), the weighted means sum_i s_i l_i /
        sum_i s_i and sum_i s_i hit_i / sum_i s_i; (0.0, 0.0) when the weights
        sum to 0.  The accuracy is 0 for squared_error (not a classification
        loss)."""
        self._check(theta, X, Y)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t n = X.shape[0], start, m
        cdef double total_w
        chunk = max(1, min(chunk, n))
        cdef Work w = make_work(&s, chunk, WS_TARGETS)
        cdef floating[::1] ws
        cdef Call c
        cdef Extra e
        cdef int status
        cdef Sparse sp
        cdef _SparseView spv = _SparseView()
        cdef const floating *xp = x_and_weights(X, sample_weight, theta, &theta[0], spv, &sp, &e,
                                                &s, n_threads, False, &total_w)
        if sample_weight is not None and not total_w > 0:
            return 0.0, 0.0
        cdef int64_t n_pack = call_packs(&s, chunk, False)
        ws = np.empty(w.size + n_pack, dtype=np.asarray(theta).dtype)
        note_call_ws(w.size + n_pack)
        c.kind, c.ws, c.X, c.Y, c.n, c.chunk, c.e = CALL_CHUNKS, &ws[0], xp, &Y[0, 0], n, chunk, &e
        c.out = NULL
        c.packs = align_packs(&ws[w.size]) if n_pack > 0 else NULL
        c.totals[0] = c.totals[1] = 0.0
        with nogil:
            status = run_call(&s, &w, &c, chunk, False, <floating *>&theta[0])
        if status == -1:
            _raise_pending()   # Ctrl-C between chunks
        return c.totals[0] / total_w, c.totals[1] / total_w

    def gradients(self, const floating[::1] theta, X,
                  const floating[:, ::1] Y, floating[::1] grad, int n_threads, *,
                  sample_weight=None, dropout=None, uint64_t seed=0, uint32_t epoch=0,
                  uint32_t step=0):
        """grad = d(objective)/d(theta) over the whole of X as one batch; returns
        the objective: the mean loss, or with `sample_weight` (n_samples,)
        the weighted mean sum_i s_i l_i / sum_i s_i (weights summing to 0:
        grad = 0 and 0.0 returned).  With `dropout` (float64 (n_layers - 1,),
        p per hidden layer) the hidden activations are dropped as in a
        training step at batch `step` of `epoch` under `seed` (row i of X is
        batch row i).  When the loss is not finite, grad is all NaN."""
        self._check(theta, X, Y)
        if grad.shape[0] != self.n_params:
            raise ValueError("grad has the wrong length")
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t m = X.shape[0], i, n_drop
        cdef const double[::1] p_v
        cdef Extra e
        cdef Sparse sp
        cdef _SparseView spv = _SparseView()
        cdef double total_w
        cdef const floating *xp = x_and_weights(X, sample_weight, theta, &theta[0], spv, &sp, &e,
                                                &s, n_threads, True, &total_w)
        if e.sp != NULL:    # every row of W_0's gradient is zeroed, then scattered into
            s.x_update = s.sizes[0] * s.sizes[1]
        if sample_weight is not None:
            e.wsum = total_w
            if not e.wsum > 0:
                for i in range(self.n_params):
                    grad[i] = 0
                return 0.0
        if dropout is not None:
            p_v = _dropout_view(dropout, self.spec.n_layers)
            n_drop = drop_layout(&s, &e.drop, &p_v[0] if p_v.shape[0] > 0 else NULL, m)
            e.drop.seed, e.drop.epoch, e.drop.step = seed, epoch, step
        else:
            n_drop = 0
        cdef floating[::1] dbuf = np.empty(max(n_drop, 1), dtype=np.asarray(theta).dtype)
        e.drop.dbuf = &dbuf[0]
        # No gathered batch (X is used in place) and no SGD scratch: only
        # what a gradient over X needs.
        cdef Work w = make_work(&s, m, WS_TARGETS | WS_DELTAS)
        s.h_rows = m
        cdef int64_t n_pack = call_packs(&s, m, True)
        cdef floating[::1] ws = np.empty(w.size + n_pack, dtype=np.asarray(theta).dtype)
        note_call_ws(w.size + n_pack)
        cdef Call c
        cdef int status
        c.kind, c.ws, c.X, c.Y, c.n, c.grad, c.e = CALL_GRAD, &ws[0], xp, &Y[0, 0], m, &grad[0], &e
        c.packs = align_packs(&ws[w.size]) if n_pack > 0 else NULL
        with nogil:
            status = run_call(&s, &w, &c, m, True, <floating *>&theta[0])
            if status:
                for i in range(self.n_params):
                    grad[i] = <floating>NAN
        if e.sw != NULL:
            if status:
                return float("nan")
            return weighted_sum(&ws[w.lossv], &e, NULL, 0, m) / e.wsum
        return c.totals[0] / m

    def layerwise_forward(self, const floating[::1] theta, const floating[:, ::1] X,
                          const floating[:, ::1] Y, floating[::1] ws, int n_threads):
        """The first call of `gradients` cut at the layers (src/_layers.pxi):
        the forward pass over X (one batch), the per-sample losses and the
        output delta, into `ws` (workspace_size(len(X), "gradients")
        elements at least).  Returns the mean loss.  Then call
        layerwise_backward(k, ...) for k = n_layers-1 down to 0 with the same
        theta (unchanged), X and ws; together they give `gradients`' bits."""
        self._check(theta, X, Y)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t m = X.shape[0]
        cdef Work w = make_work(&s, m, WS_TARGETS | WS_DELTAS)
        cdef Extra e
        cdef double total
        if ws.shape[0] < w.size:
            raise ValueError("workspace too small")
        extra_init(&e)
        with nogil:
            total = lw_forward(&s, &e, &theta[0], &ws[0], &w, &X[0, 0], &Y[0, 0], m)
        return total / m

    def layerwise_backward(self, int k, const floating[::1] theta, const floating[:, ::1] X,
                           floating[::1] ws, floating[::1] grad, int n_threads):
        """Layer k's entries of the gradient (W_k then b_k, at w_off[k]) into
        `grad` (n_params), and for k >= 1 the delta layer k-1 needs, into
        `ws`.  Call it for k = n_layers-1 down to 0, after layerwise_forward
        on the same theta, X and ws (src/_layers.pxi)."""
        self._check(theta, X)
        if not 0 <= k < self.spec.n_layers:
            raise ValueError(f"layer {k} out of range")
        if grad.shape[0] != self.n_params:
            raise ValueError("grad has the wrong length")
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t m = X.shape[0]
        cdef Work w = make_work(&s, m, WS_TARGETS | WS_DELTAS)
        cdef Extra e
        if ws.shape[0] < w.size:
            raise ValueError("workspace too small")
        extra_init(&e)
        with nogil:
            lw_backward(&s, &e, &theta[0], &grad[0], &ws[0], &w, &X[0, 0], m, k)

    def fit_epoch(self, floating[::1] theta, X,
                  const floating[:, ::1] Y, order, int64_t batch_size,
                  floating[::1] ws, floating[::1] grad, floating[::1] velocity,
                  int n_threads, double lr, double momentum=0.0, bint nesterov=False,
                  double weight_decay=0.0, double l2=0.0, int64_t first_step=0,
                  int64_t max_steps=-1, bint flush_denormals=False,
                  floating[::1] snapshot=None, floating[::1] snapshot_velocity=None,
                  int64_t snapshot_step=-1, *, optimizer=None, state=None,
                  snapshot_state=None, sample_weight=None, dropout=None,
                  uint64_t seed=0, uint32_t epoch=0, double clip_norm=0.0,
                  bint sklearn_weights=False):
        """One epoch (see run_epoch).

        Returns (loss_sum, hit_sum, penalty_sum, n_done, status): sums over the
        samples of the loss and accuracy (with sample weights: of s_i loss_i
        and s_i hit_i), the sum over the steps of the l2 penalty
        l2/2 ||W||^2, the samples consumed (rows, weighted or not), and 1 when
        it stopped at a non-finite loss (else 0).

        The epoch starts at batch `first_step` and, with max_steps >= 0, stops
        after that many steps: an epoch may be run in pieces (a progress bar)
        or replayed up to a given step, with the same result as in one go.
        With flush_denormals, the epoch runs with FTZ/DAZ on in every thread
        (restored to the caller's setting afterwards).
        `ws` must hold workspace_size(min(batch_size, n_samples)) elements
        (workspace_size(..., dropout) with dropout, else the dropout arrays
        are allocated for the call);
        `grad` (n_params) is used when momentum, weight_decay or l2 is
        non-zero or with an optimizer, `velocity` (n_params) when momentum
        is; either may be empty otherwise.  `order` is None or an int64
        array of n_samples row indices.  With `snapshot` (n_params), theta is
        copied there at step `snapshot_step` once that step's loss is known
        to be finite, before its update (and the velocity to
        `snapshot_velocity`, if momentum; the optimizer state's arrays to
        `snapshot_state`'s, and its "step" set to the step count there).

        `optimizer` (a fastbp.optim SGD, Adam, AdamW or RMSprop; then
        momentum, nesterov and weight_decay must stay 0/False) with `state`
        (optimizer.init_state's dict): each step is exactly
        optimizer.update(theta, g, state, lr) on the step's gradient g
        (Network.gradients of the batch, + (l2/m) W on the weights, then
        clipped), fused into the step's weight-gradient tiles; state["step"]
        is the count of updates applied when this returns (also on
        divergence or Ctrl-C).  `sample_weight` (n_samples,) of theta's
        dtype, finite and >= 0: the batch objective is sum s_i l_i / sum s_i;
        a batch whose weights sum to 0 is skipped (no update).  `dropout`:
        float64 (n_layers - 1,) drop probabilities in [0, 1), one per hidden
        layer: masks from Philox keyed by `seed`, (unit, row in the batch,
        batch index in the epoch, `epoch`), as fastbp._philox maps them.
        `clip_norm` > 0: torch's clip_grad_norm_ on each step's gradient
        (after l2, before weight decay and the optimizer): total = 2-norm of
        the whole gradient, summed in double per output unit (W row then b
        entry) and over units in order; the gradient is multiplied by
        T(clip_norm / (total + 1e-6)) when that is < 1.  Without an
        optimizer, the SGD keywords then run as optim.SGD(lr, momentum,
        nesterov, weight_decay) with `velocity` as its momentum buffer
        (v = mu v + g on every step) and l2 added before the decay.
        `sklearn_weights` (with `sample_weight`): scikit-learn 1.9's scaling of
        a weighted batch: the l2 term is l2 / (2 sum s) ||W||^2 (gradient
        (l2 / sum s) W, sum s in double in row order) instead of l2 / (2 m),
        and loss_sum / penalty_sum add m * (sum s_i l_i / sum s) and
        m * l2 / (2 sum s) ||W||^2 per batch (scikit-learn's accumulated
        loss); unweighted calls are unchanged.
        """
        self._check(theta, X, Y)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t n = X.shape[0]
        cdef int64_t rows = max(1, min(batch_size, n)), n_drop = 0
        cdef Sparse sp
        cdef _SparseView spv = _SparseView()
        cdef Extra e
        extra_init(&e)
        cdef const floating *xp = x_data(X, theta, &theta[0], spv, &sp, &e, &s, n_threads, True)
        cdef Work w = make_work(&s, rows, WS_FIT | (WS_SPARSE if e.sp != NULL else 0))
        cdef Optim o
        cdef Totals t
        cdef OptK ok
        cdef const int64_t[::1] order_v
        cdef const int64_t *order_p = NULL
        cdef floating *grad_p = NULL
        cdef floating *vel_p = NULL
        cdef floating *snap_p = NULL
        cdef floating *snap_vel_p = NULL
        cdef const floating[::1] sw
        cdef const double[::1] p_v
        cdef floating[::1] st_v
        cdef double[::1] usq, gsq
        cdef int status, q
        if batch_size < 1 or first_step < 0:
            raise ValueError("batch_size must be >= 1 and first_step >= 0")
        if first_step > n // batch_size + (1 if n % batch_size else 0):
            # so that first_step * batch_size (the first row) cannot wrap
            raise ValueError(f"first_step {first_step} is past the epoch's last batch")
        if ws.shape[0] < w.size:
            raise ValueError("workspace too small")
        if not (clip_norm >= 0 and clip_norm < float("inf")):
            raise ValueError("clip_norm must be finite and >= 0")
        o.lr, o.momentum, o.nesterov = lr, momentum, nesterov
        o.weight_decay, o.l2 = weight_decay, l2
        o.sk_weights = sklearn_weights
        memset(&ok, 0, sizeof(OptK))   # every state and snapshot pointer NULL until set
        if order is not None:
            order_v = order
            if order_v.shape[0] != n:
                raise ValueError("order must have n_samples entries")
            if n and (np.min(order) < 0 or np.max(order) >= n):
                raise ValueError("order has indices out of range")
            order_p = &order_v[0]
        if optimizer is not None:
            if momentum != 0 or nesterov or weight_decay != 0:
                raise ValueError("with optimizer=, leave momentum, nesterov and weight_decay "
                                 "at their defaults (the optimizer carries them)")
            _opt_setup(&ok, optimizer, state, self.n_params, np.asarray(theta).dtype, lr,
                       l2, clip_norm)
            for q, name in enumerate(_OPT_SLOTS[ok.kind]):
                ok.st[q] = ok.snap_st[q] = NULL
                if name in state:
                    st_v = state[name]
                    ok.st[q] = &st_v[0]
                    if snapshot_state is not None and snapshot is not None and snapshot_step >= 0:
                        st_v = snapshot_state[name]
                        if st_v.shape[0] != self.n_params:
                            raise ValueError(f"snapshot_state[{name!r}] needs n_params entries")
                        ok.snap_st[q] = &st_v[0]
            e.opt = &ok
        if optimizer is not None or momentum != 0 or weight_decay != 0 or l2 != 0 or clip_norm:
            if grad.shape[0] != self.n_params:
                raise ValueError("grad needs n_params entries")
            grad_p = &grad[0]
            if e.sp != NULL:    # W_0's gradient rows zeroed, the update of every weight
                s.x_update = s.sizes[0] * s.sizes[1]
        if momentum != 0:
            if velocity.shape[0] != self.n_params:
                raise ValueError("velocity needs n_params entries")
            vel_p = &velocity[0]
        if snapshot is not None and snapshot_step >= 0:
            if snapshot.shape[0] != self.n_params:
                raise ValueError("snapshot needs n_params entries")
            snap_p = &snapshot[0]
            if vel_p != NULL:
                if snapshot_velocity is None or snapshot_velocity.shape[0] != self.n_params:
                    raise ValueError("snapshot_velocity needs n_params entries")
                snap_vel_p = &snapshot_velocity[0]
        if optimizer is None and clip_norm != 0:
            # The legacy SGD keywords with clipping: torch.optim.SGD through
            # the optimizer path with the velocity as its momentum_buffer and
            # never a "first" step (the velocity goes on as v = mu v + g).
            ok.kind = OPT_SGD
            ok.lr, ok.momentum, ok.nesterov, ok.weight_decay = lr, momentum, nesterov, weight_decay
            ok.l2, ok.clip, ok.step = l2, clip_norm, 1
            ok.st[0], ok.snap_st[0] = vel_p, snap_vel_p
            ok.st[1] = ok.st[2] = ok.snap_st[1] = ok.snap_st[2] = NULL
            e.opt = &ok
        if e.opt != NULL:
            ok.n_units = 0
            for q in range(s.n_layers):
                ok.uoff[q] = ok.n_units
                ok.n_units += s.sizes[q + 1]
            usq = np.zeros(ok.n_units if l2 != 0 else 1)
            gsq = np.zeros(ok.n_units if clip_norm != 0 else 1)
            ok.usq, ok.gsq = &usq[0], &gsq[0]
        if sample_weight is not None:
            sw = _weights_view(sample_weight, theta, n)
            e.sw = &sw[0]
        if dropout is not None:
            p_v = _dropout_view(dropout, self.spec.n_layers)
            n_drop = drop_layout(&s, &e.drop, &p_v[0] if p_v.shape[0] > 0 else NULL, rows)
            e.drop.seed, e.drop.epoch = seed, epoch
        cdef floating[::1] dbuf
        cdef floating[::1] pbuf
        cdef int64_t used = w.size, n_pack
        if n_drop > 0:
            if ws.shape[0] >= w.size + n_drop:
                e.drop.dbuf = &ws[w.size]
                used += n_drop
            else:
                dbuf = np.empty(n_drop, dtype=np.asarray(theta).dtype)
                e.drop.dbuf = &dbuf[0]
        # The packs of the team steps (workspace_size(..., n_threads=) has
        # room for them after the dropped activations; else allocated here).
        s.h_rows = rows
        n_pack = call_packs(&s, rows, True)
        cdef void *packs = NULL
        if n_pack > 0:
            if ws.shape[0] >= used + n_pack:
                packs = align_packs(&ws[used])
            else:
                pbuf = np.empty(n_pack, dtype=np.asarray(theta).dtype)
                packs = align_packs(&pbuf[0])
                note_own_packs()
        # The calling thread runs with FTZ/DAZ as asked for the whole call;
        # the threads of each parallel step set that mode (on, or the
        # caller's own, normally off) and restore theirs afterwards.
        cdef unsigned int csr = fbp_ftz_set(1) if flush_denormals else 0
        s.ftz = fbp_ftz_mode()
        cdef Call c
        c.kind, c.grad, c.velocity, c.ws, c.X, c.Y = CALL_EPOCH, grad_p, vel_p, &ws[0], xp, &Y[0, 0]
        c.order, c.n, c.batch_size, c.o, c.first_step, c.max_steps = order_p, n, batch_size, &o, first_step, max_steps
        c.snap, c.snap_vel, c.snap_step, c.n_params, c.t = snap_p, snap_vel_p, snapshot_step, self.n_params, &t
        c.e = &e
        c.packs = packs
        with nogil:
            status = run_call(&s, &w, &c, rows, True, &theta[0])
        if flush_denormals:
            fbp_ftz_restore(csr)
        if optimizer is not None:
            state["step"] = int(ok.step)
            if t.snap_done and snapshot_state is not None:
                snapshot_state["step"] = int(t.snap_count)
        if status == -1:
            _raise_pending()   # Ctrl-C
        return t.loss, t.hits, t.penalty, t.n_done, status


cdef const floating *x_and_weights(X, sample_weight, theta, const floating *dtype_of,  # IN
                                   _SparseView view, Sparse *sp, Extra *e,        # OUT
                                   Spec *s,                     # IN/OUT (x_data: s.x_nnz)
                                   int n_threads, bint train,
                                   double *total_w) except NULL:                 # OUT
    """The setup `Network.loss` and `Network.gradients` share: `e`
    initialised (extra_init), the kernels' X returned (x_data: the first
    element of dense rows, or a CSR filled into `sp`, kept alive by `view`,
    e.sp and s.x_nnz set) and, with `sample_weight`, e.sw pointing at the weights
    (_weights_view checks their shape and dtype and copies nothing, so they
    live as long as the caller's argument) and *total_w their sum
    (weight_sum, in row order, in double).  Without weights e.sw is NULL and
    *total_w the number of rows.  e.wsum is left to the caller."""
    cdef const floating[::1] sw
    cdef int64_t n = X.shape[0]
    extra_init(e)
    cdef const floating *xp = x_data(X, theta, dtype_of, view, sp, e, s, n_threads, train)
    total_w[0] = n
    if sample_weight is not None:
        sw = _weights_view(sample_weight, theta, n)
        e.sw = &sw[0]
        total_w[0] = weight_sum(e, dtype_of, NULL, 0, n)
    return xp


def _weights_view(sample_weight, theta, int64_t n):
    """The sample weights as the kernels take them: (n,) C-contiguous, of
    theta's dtype (the caller has checked their values)."""
    a = sample_weight
    dt = np.asarray(theta).dtype
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"sample_weight must be an array of shape ({n},)")
    if a.dtype != dt or not a.flags.c_contiguous:
        raise ValueError(f"sample_weight must be C-contiguous {dt}")
    return a


def _dropout_view(dropout, int n_layers):
    """The drop probabilities: float64 (n_layers - 1,), each in [0, 1)."""
    a = dropout
    if (not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.ndim != 1
            or a.shape[0] != n_layers - 1):
        raise ValueError(f"dropout must be a float64 array of shape ({n_layers - 1},)")
    if not ((a >= 0) & (a < 1)).all():
        raise ValueError("dropout probabilities must be in [0, 1)")
    return np.ascontiguousarray(a)


cdef int _opt_setup(OptK *ok, optimizer, state, int64_t n_params, dtype, double lr,
                    double l2, double clip) except -1:
    """Fill ok from a fastbp.optim optimizer and check its state dict."""
    name = getattr(optimizer, "name", None)
    if name not in _OPT_KIND:
        raise ValueError(f"optimizer must be a fastbp.optim SGD, Adam, AdamW or RMSprop, "
                         f"got {optimizer!r}")
    if state is None:
        raise ValueError("optimizer= needs state= (optimizer.init_state(n_params, dtype))")
    optimizer.check_state(state, n_params, dtype)
    if not (lr >= 0 and lr < float("inf")):
        raise ValueError("lr must be finite and >= 0")
    ok.kind = _OPT_KIND[name]
    ok.lr, ok.l2, ok.clip = lr, l2, clip
    ok.step = int(state["step"])
    ok.momentum = ok.weight_decay = ok.beta1 = ok.beta2 = ok.eps = ok.alpha = 0.0
    ok.nesterov = ok.decoupled = ok.amsgrad = ok.centered = ok.sklearn = False
    ok.weight_decay = optimizer.weight_decay
    if ok.kind == OPT_SGD:
        ok.momentum, ok.nesterov = optimizer.momentum, optimizer.nesterov
    elif name == "sklearn_adam":   # fastbp.optim._SklearnAdam: scikit-learn's Adam
        ok.beta1, ok.beta2 = optimizer.betas
        ok.eps, ok.sklearn = optimizer.eps, True
    elif ok.kind == OPT_ADAM:
        ok.beta1, ok.beta2 = optimizer.betas
        ok.eps, ok.amsgrad, ok.decoupled = optimizer.eps, optimizer.amsgrad, name == "adamw"
    else:
        ok.alpha, ok.eps, ok.momentum = optimizer.alpha, optimizer.eps, optimizer.momentum
        ok.centered = optimizer.centered
    return 0

def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FBP_OPENMP)


def max_threads():
    """OpenMP's default thread count (OMP_NUM_THREADS, else the cores)."""
    return fbp_omp_max_threads()


def set_parallel_threshold(int64_t macs):
    """Set the multiply-adds from which a batch step runs in parallel; returns
    the previous value.  For tests: results are the same either way."""
    global par_min_macs
    if macs < 0:
        raise ValueError("the threshold must be >= 0")
    previous, par_min_macs = par_min_macs, macs
    return previous


def set_hpack_threshold(int64_t elems):
    """Set the fewest elements of a layer input H_k (batch rows x n_in) that
    a training row split packs by rows for its part-2 products
    (hpack_min_elems); returns the previous value.  For tests and
    measurements: results are the same either way."""
    global hpack_min_elems
    if elems < 0:
        raise ValueError("the threshold must be >= 0")
    previous, hpack_min_elems = hpack_min_elems, elems
    return previous


def set_pack_threshold(int64_t elems):
    """Set the fewest elements of a W_k whose products a row split packs in
    its pack wave (pack_min_elems); returns the previous value.  For tests
    and measurements: results are the same either way."""
    global pack_min_elems
    if elems < 0:
        raise ValueError("the threshold must be >= 0")
    previous, pack_min_elems = pack_min_elems, elems
    return previous


def alloc_stats(bint reset=False):
    """Test hook: what the kernel calls allocated for themselves since the
    last reset: ``own_packs``, the fit_epoch calls whose workspace had no
    room for the pack wave's buffer (so they allocated it), and
    ``call_ws``, the largest workspace (elements: activations and packs)
    a predict, loss or gradients call allocated; with reset, both zeroed
    after reading."""
    global own_pack_calls, call_ws_peak
    out = {"own_packs": int(own_pack_calls), "call_ws": int(call_ws_peak)}
    if reset:
        own_pack_calls = call_ws_peak = 0
    return out


def _set_flush_denormals(bint on):
    """Turn FTZ/DAZ on or off in the calling thread (for tests); returns the
    previous state."""
    cdef bint before = fbp_ftz_is_on()
    fbp_ftz_set(on)
    return bool(before)


def flush_denormals_enabled():
    """Whether FTZ/DAZ are on in the calling thread (they are off by default)."""
    return bool(fbp_ftz_is_on())


def gemm_isa():
    """The GEMM code path chosen at run time for this CPU."""
    return fbp_gemm_isa().decode()


def set_gemm_isa(name=None):
    """Force the GEMM's code path ("generic", "avx2", "avx512"; None: the best
    this CPU has) for tests and benchmarks; returns the previous one.  Raises
    ValueError for a path that is unknown or that this CPU lacks.  Not to be
    called while a kernel runs in another thread."""
    previous = gemm_isa()
    cdef bytes b = (name or "").encode()
    if fbp_gemm_set_isa(b) != 0:
        raise ValueError(f"GEMM code path {name!r} is unknown or not supported by this CPU")
    return previous


def set_gemm_unpacked_a(on):
    """Whether the GEMM's blocked path may read a small, non-transposed op(A)
    where it is instead of packing it (on by default; speed only, the same
    bits; ``FBP_GEMM_UNPACKED_A=0`` turns it off for a process).  Returns the
    previous setting.  A test and benchmark hook; not to be called while a
    kernel runs in another thread."""
    return bool(fbp_gemm_set_unpacked_a(1 if on else 0))


def gemm_unpacked_a_calls():
    """How many blocked GEMM driver calls (a whole call, or one part of a
    call's thread grid) that read op(A) unpacked the calling thread has run.
    A test hook."""
    return fbp_gemm_unpacked_a_calls()


def gemm_tile_shape(dtype):
    """The micro-tile (MR, NR) of the current GEMM code path for dtype
    ("float32" or "float64"): training steps cut unit tiles at multiples of
    MR.  A test hook."""
    cdef int64_t mr = 0, nr = 0
    cdef str name = np.dtype(dtype).name
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    fbp_gemm_tile_shape(4 if name == "float32" else 8, &mr, &nr)
    return int(mr), int(nr)


def gemm_isas():
    """The GEMM code paths this CPU can run, slowest first."""
    previous = gemm_isa()
    found = [name for name in ("generic", "avx2", "avx512")
             if fbp_gemm_set_isa(name.encode()) == 0]
    fbp_gemm_set_isa(previous.encode())
    return found


def gemm_buffer_bytes(int itemsize, int64_t M, int64_t N, int64_t K):
    """Bytes of packing buffer the GEMM needs (per thread, kept for later
    calls) for one M x N x K product of 4- or 8-byte elements on the current
    code path; 0 on its small path."""
    if itemsize not in (4, 8):
        raise ValueError("itemsize must be 4 or 8")
    return fbp_gemm_buffer_bytes(itemsize, M, N, K)


def gemm_packed_size(int itemsize, int64_t N, int64_t K):
    """Elements of a pre-packed op(B) of K x N (fbp_gemm_packed_size) on the
    current code path: what the pack wave's buffer holds per packed W_k."""
    if itemsize not in (4, 8):
        raise ValueError("itemsize must be 4 or 8")
    return fbp_gemm_packed_size(itemsize, N, K)


def parallel_regions():
    """How many parallel regions have run with a team of more than one
    thread since the module was loaded: a test hook to prove that a parallel
    path really ran.  A call (a fit epoch, or part of one; a predict or loss
    call; a gradients call) opens one region for all its steps when its
    largest step is worth splitting, none otherwise."""
    return fbp_parallel_count()
