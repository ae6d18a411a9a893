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
#   runs the following steps serially for a while (fbp_team_account).  Every
#   tile writes only its own rows or columns of the activations and deltas,
#   its own rows of W_k / grad and entries of b_k and colsum, so every write
#   inside a region is private to the thread running that tile; per-sample
#   losses are summed in row order, bias gradients are column sums in row
#   order, and the GEMM gives each element the same bits whatever block it is
#   computed in (fbp_gemm.h), so a step gives the same result on any number
#   of threads, whichever thread takes which tile.  Each thread of a region
#   runs with the caller's FTZ/DAZ mode and restores its own on exit.
# * Everything below `def` runs without the GIL.  The `def` wrappers take
#   arrays that fastbp/_common.py has already validated (shape, dtype,
#   contiguity, finiteness); they only assert what they rely on.
from cython.parallel cimport parallel, threadid
from libc.math cimport exp, log, log1p, fabs, isfinite, NAN
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import numpy as np

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
    void fbp_gemm_tile_shape(int elem_size, int64_t *mr, int64_t *nr)
    int64_t fbp_gemm_buffer_bytes(int elem_size, int64_t M, int64_t N, int64_t K)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FBP_OPENMP 1
    static int fbp_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FBP_OPENMP 0
    static int fbp_omp_max_threads(void) { return 1; }
    #endif
    """
    int FBP_OPENMP
    int fbp_omp_max_threads() nogil

cdef extern from *:
    """
    /* A barrier of the enclosing parallel region (every thread reaches it). */
    #ifdef _OPENMP
    #define FBP_BARRIER() _Pragma("omp barrier")
    #else
    #define FBP_BARRIER() ((void)0)
    #endif
    /* out[j] = sum_i d[i * ld + j], i = 0..m-1 in order: restrict lets the
       compiler vectorise across j, each lane still summing its column in row
       order. */
    #define FBP_COLSUM(T, NAME)                                                \
    static void NAME(const T *restrict d, int64_t m, int64_t n, int64_t ld,  \
                     T *restrict out) {                                      \
        for (int64_t j = 0; j < n; j++) out[j] = 0;                          \
        for (int64_t i = 0; i < m; i++)                                      \
            for (int64_t j = 0; j < n; j++) out[j] += d[i * ld + j];         \
    }
    FBP_COLSUM(float, fbp_colsum_f32)
    FBP_COLSUM(double, fbp_colsum_f64)
    """
    void FBP_BARRIER() nogil
    void fbp_colsum_f32(const float *d, int64_t m, int64_t n, int64_t ld, float *out) nogil
    void fbp_colsum_f64(const double *d, int64_t m, int64_t n, int64_t ld, double *out) nogil

# Flush-to-zero / denormals-are-zero: denormal floats slow x86 arithmetic by
# 10x or more, and SGD can drive small weights and activations there.  The
# MXCSR bits are per thread: the calling thread sets them for a fit epoch, and
# every thread of a step's parallel region sets them on entry and restores its
# own previous value on exit, so no thread relies on another's state.
cdef extern from *:
    """
    #if defined(__SSE2__) || defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    #define FBP_FTZ_BITS 0x8040u
    /* Set (on != 0) or clear FTZ/DAZ in this thread; returns the old MXCSR. */
    static unsigned int fbp_ftz_set(int on) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr((old & ~FBP_FTZ_BITS) | (on ? FBP_FTZ_BITS : 0u));
        return old;
    }
    static void fbp_ftz_restore(unsigned int old) { _mm_setcsr(old); }
    static int fbp_ftz_is_on(void) { return (_mm_getcsr() & FBP_FTZ_BITS) == FBP_FTZ_BITS; }
    /* The FTZ/DAZ bits of this thread; set them to `mode` (returning the old
       MXCSR) and put the old value back. */
    static unsigned int fbp_ftz_mode(void) { return _mm_getcsr() & FBP_FTZ_BITS; }
    static unsigned int fbp_ftz_enter(unsigned int mode) {
        unsigned int old = _mm_getcsr();
        if ((old & FBP_FTZ_BITS) != mode) _mm_setcsr((old & ~FBP_FTZ_BITS) | mode);
        return old;
    }
    static void fbp_ftz_leave(unsigned int old) { if (_mm_getcsr() != old) _mm_setcsr(old); }
    #else
    static unsigned int fbp_ftz_set(int on) { (void)on; return 0u; }
    static void fbp_ftz_restore(unsigned int old) { (void)old; }
    static int fbp_ftz_is_on(void) { return 0; }
    static unsigned int fbp_ftz_mode(void) { return 0u; }
    static unsigned int fbp_ftz_enter(unsigned int mode) { (void)mode; return 0u; }
    static void fbp_ftz_leave(unsigned int old) { (void)old; }
    #endif
    #ifdef _OPENMP
    static int fbp_team_size(void) { return omp_get_num_threads(); }
    #else
    static int fbp_team_size(void) { return 1; }
    #endif
    """
    unsigned int fbp_ftz_set(int on) nogil
    void fbp_ftz_restore(unsigned int old) nogil
    int fbp_ftz_is_on() nogil
    unsigned int fbp_ftz_mode() nogil
    unsigned int fbp_ftz_enter(unsigned int mode) nogil
    void fbp_ftz_leave(unsigned int old) nogil
    int fbp_team_size() nogil

cdef extern from *:
    """
    /* Test hook: parallel regions entered with a team of more than one
       thread (counted once per region, by its thread 0). */
    static int64_t fbp_n_parallel = 0;
    static void fbp_count_parallel(int team) {
        if (team > 1) __atomic_fetch_add(&fbp_n_parallel, 1, __ATOMIC_RELAXED);
    }
    static int64_t fbp_parallel_count(void) {
        return __atomic_load_n(&fbp_n_parallel, __ATOMIC_RELAXED);
    }
    """
    void fbp_count_parallel(int team) nogil
    int64_t fbp_parallel_count() nogil

cdef extern from *:
    """
    /* GNU libgomp is not fork-safe: in a child forked after a team of more
       than one thread ran here, the forking thread's pool names threads the
       child does not have, and the child's next parallel region waits for
       them forever (multiprocessing's default start method on Linux is
       fork).  Such a child runs every call serially: the same bits. */
    #if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
    #include <pthread.h>
    static int fbp_forked = 0;
    static void fbp_atfork_child(void) {
        if (fbp_parallel_count() > 0) fbp_forked = 1;
    }
    static void fbp_install_atfork(void) { (void)pthread_atfork(NULL, NULL, fbp_atfork_child); }
    static int fbp_serial_after_fork(void) { return fbp_forked; }
    #else
    static void fbp_install_atfork(void) {}
    static int fbp_serial_after_fork(void) { return 0; }
    #endif
    """
    void fbp_install_atfork()
    int fbp_serial_after_fork() nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    static int fbp_omp_thread_limit(void) { return omp_get_thread_limit(); }
    #else
    static int fbp_omp_thread_limit(void) { return 1; }
    #endif
    """
    int fbp_omp_thread_limit()

fbp_install_atfork()


def serial_after_fork():
    """True in a process forked after this module ran a team of threads:
    there every call runs on one thread (libgomp is not fork-safe)."""
    return bool(fbp_serial_after_fork())


def thread_limit():
    """OpenMP's cap on the threads of a team (OMP_THREAD_LIMIT; huge when unset)."""
    return fbp_omp_thread_limit()

cdef extern from *:
    """
    /* A team: the threads of one parallel region, which may run many steps.
       Thread 0 (the caller) drives: for each step it publishes a generation
       g with the step's waves (a wave: n tiles that may run in any order),
       then takes tiles itself.  The other threads wait for a new generation,
       then take tiles from the same waves.  A tile is claimed by a CAS on
       word[v] = (g << 32) | next: a thread still on an old generation (one
       that was descheduled and wakes late) fails the tag check and goes back
       to waiting, so nobody ever waits for a thread that holds no tile; a
       thread waits only for tiles in progress (wave by wave), spinning
       briefly, then asleep on a futex (an event count) so that a descheduled
       holder gets the core back at once.  Publishing: every word is first
       tagged with g but no tile (so no claim of g-1 can succeed while the
       step's data are rewritten), then the step data, then the words, then
       seq = g.  A claimed tile's data are stable: a generation ends only
       when all its claimed tiles are finished.  fbp_team_finish publishes a
       tile's writes (seq_cst increments), fbp_team_wait_wave returns once
       every tile's writes are visible. */
    #include <limits.h>
    #include <string.h>
    #if defined(__linux__)
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #elif defined(_WIN32)
    #include <windows.h>
    #else
    #include <sched.h>
    #endif
    #define FBP_MAXW 129
    #define FBP_SPIN 2000
    #define FBP_NO_TILE 0x7fffffffLL
    typedef struct {
        int64_t word[FBP_MAXW];
        int done[FBP_MAXW];
        int n[FBP_MAXW];
        int nw, loss_wave, hi;
        unsigned seq;
        int quit, ev, sleepers;
        /* thread 0 only: run serially until this time (ns), and the last backoff */
        int64_t serial_until, backoff;
    } fbp_team;
    #include <time.h>
    static int64_t fbp_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    /* Thread 0, before a step: 1 while the team is backing off (serial). */
    static int fbp_team_backing_off(fbp_team *T) {
        return T->serial_until != 0 && fbp_now_ns() < T->serial_until;
    }
    /* Thread 0, after a parallel step that took step_ns, of which it spent
       wait_ns waiting for tiles that other threads held: when more than half
       the step went on waiting (the other threads are descheduled: a busy
       machine), run the next steps serially for 20 times that wait (so a
       failed attempt costs at most ~5%), doubling while attempts keep
       failing, up to a second; a good step ends the backoff.  Results do
       not depend on it (they do not depend on the thread count). */
    static void fbp_team_account(fbp_team *T, int64_t step_ns, int64_t wait_ns) {
        if (2 * wait_ns > step_ns && wait_ns > 20000) {
            int64_t b = 20 * wait_ns;
            if (T->backoff * 2 > b) b = T->backoff * 2;
            if (b > 1000000000LL) b = 1000000000LL;
            T->backoff = b;
            T->serial_until = fbp_now_ns() + b;
        } else {
            T->backoff = 0;
            T->serial_until = 0;
        }
    }
    static inline void fbp_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    static void fbp_team_init(fbp_team *T) { memset(T, 0, sizeof *T); }
    static void fbp_notify(fbp_team *T) {
        __atomic_add_fetch(&T->ev, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&T->sleepers, __ATOMIC_SEQ_CST) > 0) {
    #if defined(__linux__)
            syscall(SYS_futex, &T->ev, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    #endif
        }
    }
    static void fbp_sleep(fbp_team *T, int e) {
    #if defined(__linux__)
        syscall(SYS_futex, &T->ev, FUTEX_WAIT_PRIVATE, e, NULL, NULL, 0);
    #elif defined(_WIN32)
        (void)T; (void)e; SwitchToThread();
    #else
        (void)T; (void)e; sched_yield();
    #endif
    }
    /* Caller: no claim succeeds from now until fbp_team_open(g). */
    static void fbp_team_invalidate(fbp_team *T, unsigned g) {
        for (int v = 0; v < T->hi; v++)
            __atomic_store_n(&T->word[v], ((int64_t)g << 32) | FBP_NO_TILE, __ATOMIC_SEQ_CST);
    }
    static void fbp_team_open(fbp_team *T, unsigned g, int nw, const int *n, int loss_wave) {
        int top = nw > T->hi ? nw : T->hi;
        for (int v = 0; v < top; v++) {
            __atomic_store_n(&T->done[v], 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&T->n[v], v < nw ? n[v] : 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&T->word[v], (int64_t)g << 32, __ATOMIC_SEQ_CST);
        }
        T->hi = top;
        __atomic_store_n(&T->nw, nw, __ATOMIC_SEQ_CST);
        __atomic_store_n(&T->loss_wave, loss_wave, __ATOMIC_SEQ_CST);
        __atomic_store_n(&T->seq, g, __ATOMIC_SEQ_CST);
        fbp_notify(T);
    }
    static void fbp_team_quit(fbp_team *T) {
        __atomic_store_n(&T->quit, 1, __ATOMIC_SEQ_CST);
        fbp_notify(T);
    }
    static int fbp_team_nw(fbp_team *T) { return __atomic_load_n(&T->nw, __ATOMIC_SEQ_CST); }
    static int fbp_team_loss_wave(fbp_team *T) { return __atomic_load_n(&T->loss_wave, __ATOMIC_SEQ_CST); }
    /* A tile of wave v of generation g: its index, -1 when none is left, -2
       when g is over. */
    static int fbp_team_claim(fbp_team *T, int v, unsigned g) {
        int64_t w = __atomic_load_n(&T->word[v], __ATOMIC_SEQ_CST);
        for (;;) {
            if ((unsigned)((uint64_t)w >> 32) != g) return -2;
            int64_t idx = w & 0xffffffffLL;
            if (idx >= __atomic_load_n(&T->n[v], __ATOMIC_SEQ_CST)) return -1;
            if (__atomic_compare_exchange_n(&T->word[v], &w, w + 1, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                return (int)idx;
        }
    }
    static void fbp_team_finish(fbp_team *T, int v) {
        if (__atomic_add_fetch(&T->done[v], 1, __ATOMIC_SEQ_CST) ==
            __atomic_load_n(&T->n[v], __ATOMIC_SEQ_CST))
            fbp_notify(T);
    }
    /* 0: wave v of g is finished; -2: g is over; 1: not yet. */
    static int fbp_wave_state(fbp_team *T, int v, unsigned g) {
        if (__atomic_load_n(&T->done[v], __ATOMIC_SEQ_CST) >= __atomic_load_n(&T->n[v], __ATOMIC_SEQ_CST))
            return __atomic_load_n(&T->seq, __ATOMIC_SEQ_CST) == g ? 0 : -2;
        return __atomic_load_n(&T->seq, __ATOMIC_SEQ_CST) == g ? 1 : -2;
    }
    static int fbp_team_wait_wave(fbp_team *T, int v, unsigned g) {
        int r, e;
        for (int i = 0; i < FBP_SPIN; i++) {
            if ((r = fbp_wave_state(T, v, g)) != 1) return r;
            fbp_pause();
        }
        __atomic_add_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
        for (;;) {
            e = __atomic_load_n(&T->ev, __ATOMIC_SEQ_CST);
            if ((r = fbp_wave_state(T, v, g)) != 1) break;
            fbp_sleep(T, e);
        }
        __atomic_sub_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
        return r;
    }
    /* A worker: the next generation after `last`, or 0 once the team quits. */
    static unsigned fbp_team_next(fbp_team *T, unsigned last) {
        unsigned g = 0;
        int e;
        for (int i = 0; i < FBP_SPIN; i++) {
            if (__atomic_load_n(&T->quit, __ATOMIC_SEQ_CST)) return 0;
            if ((g = __atomic_load_n(&T->seq, __ATOMIC_SEQ_CST)) != last) return g;
            fbp_pause();
        }
        __atomic_add_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
        for (;;) {
            e = __atomic_load_n(&T->ev, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&T->quit, __ATOMIC_SEQ_CST)) { g = 0; break; }
            if ((g = __atomic_load_n(&T->seq, __ATOMIC_SEQ_CST)) != last) break;
            fbp_sleep(T, e);
        }
        __atomic_sub_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
        return g;
    }
    /* Ctrl-C from inside a region (thread 0, the caller's thread): -1 with
       the exception set in the caller's thread state. */
    static int fbp_poll_signals(void) {
        PyGILState_STATE st = PyGILState_Ensure();
        int r = PyErr_CheckSignals();
        PyGILState_Release(st);
        return r;
    }
    """
    ctypedef struct fbp_team:
        pass
    void fbp_team_init(fbp_team *T) nogil
    void fbp_team_invalidate(fbp_team *T, unsigned g) nogil
    void fbp_team_open(fbp_team *T, unsigned g, int nw, const int *n, int loss_wave) nogil
    void fbp_team_quit(fbp_team *T) nogil
    int fbp_team_nw(fbp_team *T) nogil
    int fbp_team_loss_wave(fbp_team *T) nogil
    int fbp_team_claim(fbp_team *T, int v, unsigned g) nogil
    void fbp_team_finish(fbp_team *T, int v) nogil
    int fbp_team_wait_wave(fbp_team *T, int v, unsigned g) nogil
    unsigned fbp_team_next(fbp_team *T, unsigned last) nogil
    int fbp_poll_signals() nogil
    int64_t fbp_now_ns() nogil
    int fbp_team_backing_off(fbp_team *T) nogil
    void fbp_team_account(fbp_team *T, int64_t step_ns, int64_t wait_ns) nogil

cdef extern from *:
    """
    /* Marks this library for threadpoolctl (fastbp/_threads.py registers a
       controller that looks for this symbol). */
    __attribute__((visibility("default"))) int fastbp_kernels_abi(void) { return 1; }
    """
    int fastbp_kernels_abi() nogil

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
    LOSS_SQUARED = 0
    LOSS_BCE = 1
    LOSS_CE = 2

# Threads: a step (or a predict chunk) uses one thread per this many
# multiply-adds of its forward pass, at most n_threads: a step too small to
# gain runs serially, with no parallel region.  Its tiles are cut no finer than
# a quarter of it.  Results do not depend on it; the tests lower it (to 0: as
# many threads and tiles as the shape allows) to run the parallel paths on
# small nets.
cdef int64_t par_min_macs = 65536

cdef enum:
    # Row split (each tile: some batch rows through every layer) while every
    # thread gets at least this many rows, else the output units of every
    # layer are split (one wave per layer).
    ROWS_PER_THREAD = 16
    # Tiles per thread: rows (each row tile packs every W again) and units.
    ROW_TILES_PER_THREAD = 2
    UNIT_TILES_PER_THREAD = 4
    # More row tiles than ROW_TILES_PER_THREAD per thread (shorter tiles: less
    # to wait for when a thread loses its core) only for steps of more than
    # TILE_MACS multiply-adds per tile, and never under this many rows per
    # tile: every row tile packs each W again, and a packed element must
    # serve many rows to cost little next to the micro-kernel.  (Column
    # tiles of the unit split pack their own slice of W, and their rows are
    # few: no such cost.)
    ROW_TILE_MIN_ROWS = 64
    MAX_TILES = 1024
    MAX_WAVES = 2 * 64 + 1

cdef int64_t TILE_MACS = 16 * 1024 * 1024

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


cdef enum:
    # What a call's workspace holds besides the activations A_1..A_L and yhat.
    WS_GATHER = 1           # A_0 and y: the gathered (shuffled) batch
    WS_TARGETS = 2          # lossv, hitv
    WS_DELTAS = 4           # delta_1..delta_L
    WS_COLSUM = 8           # bias-gradient scratch of the fused SGD step
    WS_FIT = 15


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
    if what & WS_GATHER:
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


cdef struct Extra:
    # What a call adds to the plain mean-loss step (all off: zeroed).
    const void *sw          # IN sample weights (n_samples,) of the data set, or NULL
    double wsum             # this step's sum of the batch's weights (sw != NULL)
    Drop drop               # dropout of the hidden layers (training steps)
    OptK *opt               # the optimizer path (fastbp.optim), or NULL


cdef inline void extra_init(Extra *e) noexcept nogil:
    e.sw = NULL
    e.wsum = 0.0
    e.drop.on = False
    e.opt = NULL


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


cdef inline void column_sums(const floating *d, int64_t m, int64_t n, int64_t ld,  # IN (m, n)
                             floating *out) noexcept nogil:                      # OUT (n,)
    """out[j] = sum_i d[i, j], summed in row order."""
    if floating is float:
        fbp_colsum_f32(d, m, n, ld, out)
    else:
        fbp_colsum_f64(d, m, n, ld, out)


# ---------------------------------------------------------------------------
# Row kernels: output activation, loss and output delta of one sample.

cdef inline double sigmoid(double z) noexcept nogil:
    cdef double e
    if z >= 0:
        return 1.0 / (1.0 + exp(-z))
    e = exp(z)
    return e / (1.0 + e)


cdef inline double sum_exp(const floating *z, int64_t n,   # IN  (n,) logits
                          double *zmax) noexcept nogil:      # OUT max of z
    """sum_j exp(z_j - max z), the stable core of softmax and log-sum-exp."""
    cdef int64_t j
    cdef double total = 0.0
    zmax[0] = z[0]
    for j in range(1, n):
        if z[j] > zmax[0]:
            zmax[0] = z[j]
    for j in range(n):
        total += exp(z[j] - zmax[0])
    return total


cdef void output_row(const Spec *s,
                     const floating *z,      # IN  (n_out,) logits
                     floating *yhat,         # OUT (n_out,) output activation
                     ) noexcept nogil:
    cdef int64_t j, n = s.sizes[s.n_layers]
    cdef double zmax, total
    if s.output == OUT_IDENTITY:
        for j in range(n):
            yhat[j] = z[j]
    elif s.output == OUT_SIGMOID:
        for j in range(n):
            yhat[j] = <floating>sigmoid(z[j])
    else:
        total = sum_exp(z, n, &zmax)
        for j in range(n):
            yhat[j] = <floating>(exp(z[j] - zmax) / total)


cdef double loss_row(const Spec *s,
                     const floating *z,      # IN  (n_out,) logits
                     const floating *yhat,   # IN  (n_out,) outputs
                     const floating *y,      # IN  (n_out,) targets
                     floating *delta,        # OUT (n_out,) scale * dloss/dz, or NULL
                     double scale) noexcept nogil:
    """Loss of one sample; with `delta`, also its gradient w.r.t. the logits."""
    cdef int64_t j, n = s.sizes[s.n_layers]
    cdef double loss = 0.0, g, zj, zmax, lse, ysum, gp
    if s.loss == LOSS_SQUARED:
        gp = 0.0
        for j in range(n):
            g = <double>yhat[j] - <double>y[j]
            loss += 0.5 * g * g
            gp += g * yhat[j]
        if delta != NULL:
            for j in range(n):
                g = <double>yhat[j] - <double>y[j]
                if s.output == OUT_SIGMOID:
                    g = g * yhat[j] * (1.0 - yhat[j])
                elif s.output == OUT_SOFTMAX:   # full softmax Jacobian
                    g = yhat[j] * (g - gp)
                delta[j] = <floating>(scale * g)
    elif s.loss == LOSS_BCE:
        for j in range(n):
            zj = z[j]
            loss += (zj if zj > 0 else 0.0) - zj * y[j] + log1p(exp(-fabs(zj)))
            if delta != NULL:
                delta[j] = <floating>(scale * (sigmoid(zj) - y[j]))
    else:
        lse = sum_exp(z, n, &zmax)
        lse = zmax + log(lse)
        ysum = 0.0
        for j in range(n):
            ysum += y[j]
            loss += y[j] * (lse - z[j])
        if delta != NULL:
            for j in range(n):
                delta[j] = <floating>(scale * (ysum * exp(z[j] - lse) - y[j]))
    return loss


cdef double hit_row(const Spec *s,
                    const floating *yhat,   # IN (n_out,) outputs
                    const floating *y,      # IN (n_out,) targets
                    ) noexcept nogil:
    """Accuracy of one sample: for softmax, 1 when argmax yhat == argmax y;
    for sigmoid outputs, the fraction of outputs on the right side of 1/2."""
    cdef int64_t j, n = s.sizes[s.n_layers], arg_hat = 0, arg_y = 0
    cdef double hits = 0.0
    if s.output == OUT_SOFTMAX:
        for j in range(1, n):
            if yhat[j] > yhat[arg_hat]:
                arg_hat = j
            if y[j] > y[arg_y]:
                arg_y = j
        return 1.0 if arg_hat == arg_y else 0.0
    for j in range(n):
        if (yhat[j] > 0.5) == (y[j] > 0.5):
            hits += 1.0
    return hits / n


# ---------------------------------------------------------------------------
# Batch kernels.  A step is, in order:
#   1. per batch row: gather the row, forward through every layer, loss and
#      delta_L, then every delta_k down to the first layer, all with the
#      weights as they are;
#   2. per row of W_k (output unit): the weight and bias gradient of that
#      unit, or the SGD step on it, which needs every row's delta.
# With threads the work is cut into tiles that any thread of the step takes
# from a shared counter (see fbp_team): a "wave" is a set of tiles that may run
# in any order, and a thread moves to the next wave once every tile of this
# one is finished.  Two plans:
#   * row split (enough rows per thread): wave 0 = row tiles of part 1,
#     wave 1 = unit tiles of part 2 (every layer's units, one list);
#   * unit split (a small batch): part 1 layer by layer, each GEMM's output
#     columns cut into tiles: forward waves 0..L-1, one wave of output rows
#     and losses, backprop waves for delta_{L-1} .. delta_1, then the same
#     part-2 wave.
# Each tile writes only its own rows (row split) or columns (unit split) of
# A_k / delta_k, its own slots of yhat, lossv, hitv, and in part 2 its own
# rows of W_k, grad, entries of b_k and of colsum; what it reads was finished
# in an earlier wave.  So every write inside a parallel region is private to
# the thread running that tile.  The GEMM gives each element the same bits
# whatever block it is computed in (fbp_gemm.h), per-sample losses are summed
# in row order and bias gradients are column sums in row order, so a step
# gives the same bits on 1 thread as on any number of them, whichever thread
# takes which tile.

cdef struct Plan:
    int nt                  # threads asked for (1: serial, no parallel region)
    bint by_units           # unit split (else row split)
    int n_waves
    int loss_wave           # the loss is complete after this wave (-1: no loss)
    int64_t row_align       # row tiles start at multiples of this
    int64_t mr, nr          # the GEMM's micro-tile (units align to mr, columns to nr)
    int64_t p2_first[65]    # part 2: first tile of layer k in the last wave; [L] = count
    int n_tiles[MAX_WAVES]  # tiles of each wave


cdef struct Job:
    # One step (or forward chunk) as every thread of the team reads it (only
    # after claiming one of its tiles: then it cannot change).
    Plan plan
    void *theta
    void *grad
    void *snap
    const int64_t *rows
    int64_t start, m
    double lr
    bint train
    bint has_y
    const Extra *e          # sample weights, dropout, the optimizer path


cdef inline int64_t part(int64_t n, int64_t t, int64_t nt) noexcept nogil:
    """Start of part t of n items split into nt contiguous parts."""
    return n * t // nt


cdef inline int64_t cut(int64_t n, int64_t t, int64_t nt, int64_t align) noexcept nogil:
    """Start of tile t of n items cut into nt tiles at multiples of align."""
    return min(n, part((n + align - 1) // align, t, nt) * align)


cdef inline int tiles_for(int64_t n, int64_t macs, int64_t align, int nt) noexcept nogil:
    """Tiles for n items (at multiples of align) worth `macs` multiply-adds."""
    cdef int64_t t = UNIT_TILES_PER_THREAD * nt, lim = (n + align - 1) // align
    if par_min_macs > 0:
        t = min(t, max(<int64_t>1, 4 * macs // par_min_macs))
    return <int>max(<int64_t>1, min(min(t, lim), <int64_t>MAX_TILES))


cdef inline int64_t widest(int64_t n, int64_t nt, int64_t align) noexcept nogil:
    """The widest of the tiles cut(n, t, nt, align) (for buffer sizes)."""
    return min(n, (((n + align - 1) // align + nt - 1) // nt) * align)


cdef int64_t forward_macs(const Spec *s, int64_t m) noexcept nogil:
    cdef int64_t macs = 0
    cdef int k
    for k in range(s.n_layers):
        macs += s.sizes[k] * s.sizes[k + 1]
    return m * macs


cdef void make_plan(const Spec *s, int64_t m, bint train, bint with_loss,
                    Plan *p) noexcept nogil:
    """Threads, split and tiles for m rows: a training step (train), or a
    forward pass, with per-sample losses when with_loss."""
    cdef int64_t macs = forward_macs(s, m), units, work, t1
    cdef int k, L = s.n_layers, nw = 0, nt = s.n_threads
    if par_min_macs > 0:
        nt = <int>min(<int64_t>nt, macs // par_min_macs)
    p.nt = max(1, nt)
    p.loss_wave = -1
    p.n_waves = 0
    if p.nt == 1:
        return
    fbp_gemm_tile_shape(s.elem, &p.mr, &p.nr)
    nt = p.nt
    p.by_units = m < <int64_t>ROWS_PER_THREAD * nt
    if not p.by_units:
        p.row_align = p.mr if m >= 4 * p.mr * nt else 1
        work = 3 * macs if train else macs
        t1 = max(<int64_t>ROW_TILES_PER_THREAD * nt, work // TILE_MACS)
        t1 = min(t1, max(<int64_t>ROW_TILES_PER_THREAD * nt, m // ROW_TILE_MIN_ROWS))
        t1 = min(t1, (m + p.row_align - 1) // p.row_align)
        p.n_tiles[0] = <int>t1
    if not p.by_units:
        if with_loss:
            p.loss_wave = 0
        nw = 1
    else:
        for k in range(L):       # forward, layer by layer, output columns
            p.n_tiles[nw] = tiles_for(s.sizes[k + 1], m * s.sizes[k] * s.sizes[k + 1], p.nr, nt)
            nw += 1
        p.n_tiles[nw] = <int>min(m, <int64_t>nt)   # output activation (and loss) rows
        if with_loss:
            p.loss_wave = nw
        nw += 1
        if train:
            for k in range(L - 1, 0, -1):   # delta_k, columns
                p.n_tiles[nw] = tiles_for(s.sizes[k], m * s.sizes[k] * s.sizes[k + 1], p.nr, nt)
                nw += 1
    if train:
        p.p2_first[0] = 0
        for k in range(L):
            units = s.sizes[k + 1]
            p.p2_first[k + 1] = p.p2_first[k] + tiles_for(units, m * s.sizes[k] * units, p.mr, nt)
        p.n_tiles[nw] = <int>p.p2_first[L]
        nw += 1
    p.n_waves = nw


cdef inline const floating *layer_in(const Extra *e, floating *ws, const Work *w,
                                     const floating *x, int k) noexcept nogil:
    """The input of layer k (of W_k): the batch for k == 0, D_k where dropout
    is on, else A_k."""
    if k == 0:
        return x
    if drop_layer(&e.drop, k):
        return <floating *>e.drop.dbuf + e.drop.off[k]
    return ws + w.act[k]


cdef void forward_rows(const Spec *s, const Extra *e,
                       const floating *theta,       # IN  parameters
                       floating *ws, const Work *w,  # OUT activations, yhat rows r0..r1
                       const floating *x,           # IN  batch input, row 0 (ld n_in)
                       int64_t r0, int64_t r1) noexcept nogil:
    """Every layer's activations for batch rows r0..r1, cached in the workspace."""
    cdef int k, L = s.n_layers
    cdef int64_t i, n_out
    for k in range(L):
        forward_cols(s, e, theta, ws, w, x, k, r0, r1, 0, s.sizes[k + 1])
    n_out = s.sizes[L]
    for i in range(r0, r1):
        output_row(s, ws + w.act[L] + i * n_out, ws + w.yhat + i * n_out)


cdef inline void forward_cols(const Spec *s, const Extra *e, const floating *theta,
                              floating *ws, const Work *w,   # OUT A_{k+1}[r0:r1, j0:j1] (and D_{k+1})
                              const floating *x,             # IN  batch input (ld n_in)
                              int k, int64_t r0, int64_t r1, int64_t j0, int64_t j1) noexcept nogil:
    """A_{k+1}[r0:r1, j0:j1] = act(A_k[r0:r1] W_k[j0:j1]^T + b_k[j0:j1]) (with
    dropout, the input is D_k and D_{k+1} gets the masked block)."""
    cdef int64_t n_in = s.sizes[k], n_out = s.sizes[k + 1]
    gemm(0, 1, r1 - r0, j1 - j0, n_in,
         <floating>1, layer_in(e, ws, w, x, k) + r0 * n_in, n_in,
         theta + s.w_off[k] + j0 * n_in, n_in,
         <floating>0, ws + w.act[k + 1] + r0 * n_out + j0, n_out,
         theta + s.b_off[k] + j0 if s.b_off[k] >= 0 else NULL,
         s.hidden if k < s.n_layers - 1 else ACT_IDENTITY,
         NULL, 0, 1)
    if drop_layer(&e.drop, k + 1):
        drop_forward(&e.drop, k + 1, ws + w.act[k + 1],
                     <floating *>e.drop.dbuf + e.drop.off[k + 1], n_out, r0, r1, j0, j1)


cdef inline double row_weight(const floating *sw,   # IN the data set's sample weights
                              const int64_t *rows, int64_t start, int64_t i) noexcept nogil:
    """s_i, the sample weight of batch row i."""
    return sw[rows[i]] if rows != NULL else sw[start + i]


cdef void loss_rows(const Spec *s, const Extra *e,
                    floating *ws, const Work *w,  # IN logits, yhat; OUT lossv, hitv, delta_L rows
                    const floating *y,            # IN  batch targets, row 0 (ld n_out)
                    const int64_t *rows, int64_t start,  # the batch's rows (for the weights)
                    int64_t m, int64_t r0, int64_t r1, bint want_delta) noexcept nogil:
    """Per-sample loss (and accuracy) of rows r0..r1; delta_L of the batch
    objective: the mean loss over m rows, or with sample weights
    sum_i s_i loss_i / sum_i s_i (row i's delta scaled by s_i / sum s)."""
    cdef int L = s.n_layers
    cdef int64_t i, n_out = s.sizes[L]
    cdef floating *d
    cdef double scale = 1.0 / m
    for i in range(r0, r1):
        d = NULL
        if want_delta:
            d = ws + w.delta[L] + i * n_out
            if e.sw != NULL:
                scale = row_weight(<const floating *>e.sw, rows, start, i) / e.wsum
        ws[w.lossv + i] = <floating>loss_row(s, ws + w.act[L] + i * n_out,
                                             ws + w.yhat + i * n_out, y + i * n_out,
                                             d, scale)
        if s.loss != LOSS_SQUARED:
            ws[w.hitv + i] = <floating>hit_row(s, ws + w.yhat + i * n_out, y + i * n_out)


cdef inline void backprop_cols(const Spec *s, const Extra *e, const floating *theta,
                               floating *ws, const Work *w,  # IN delta_{k+1}, A_k; OUT delta_k[r0:r1, j0:j1]
                               int k, int64_t r0, int64_t r1, int64_t j0, int64_t j1) noexcept nogil:
    """delta_k[r0:r1, j0:j1] = (delta_{k+1}[r0:r1] W_k[:, j0:j1]) * act'(A_k[r0:r1, j0:j1])
    (times the dropout mask and scale of layer k)."""
    cdef int64_t n_in = s.sizes[k], n_out = s.sizes[k + 1]
    gemm(0, 0, r1 - r0, j1 - j0, n_out,
         <floating>1, ws + w.delta[k + 1] + r0 * n_out, n_out,
         theta + s.w_off[k] + j0, n_in,
         <floating>0, ws + w.delta[k] + r0 * n_in + j0, n_in,
         NULL, s.hidden, ws + w.act[k] + r0 * n_in + j0, n_in, 1)
    if drop_layer(&e.drop, k):
        drop_block(&e.drop, k, ws + w.delta[k], n_in, r0, r1, j0, j1)


cdef void backprop_rows(const Spec *s, const Extra *e,
                        const floating *theta,        # IN  parameters (unchanged yet)
                        floating *ws, const Work *w,  # IN activations, delta_L; OUT delta_k rows
                        int64_t r0, int64_t r1) noexcept nogil:
    """delta_k = (delta_{k+1} W_k) * act'(A_k) for rows r0..r1, k = L-1 .. 1."""
    cdef int k
    for k in range(s.n_layers - 1, 0, -1):
        backprop_cols(s, e, theta, ws, w, k, r0, r1, 0, s.sizes[k])


cdef void gather_rows(const Spec *s, floating *ws, const Work *w,
                      const floating *X, const floating *Y,   # IN the data set
                      const int64_t *rows,                    # IN the batch's row indices
                      int64_t r0, int64_t r1) noexcept nogil:
    """Copy rows r0..r1 of the batch into A_0 and y."""
    cdef int64_t i, j, n_in = s.sizes[0], n_out = s.sizes[s.n_layers]
    for i in range(r0, r1):   # loops, not memcpy: rows of tiny nets are a few values
        for j in range(n_in):
            ws[w.act[0] + i * n_in + j] = X[rows[i] * n_in + j]
        for j in range(n_out):
            ws[w.y + i * n_out + j] = Y[rows[i] * n_out + j]


cdef void phase1(const Spec *s, const Extra *e, const floating *theta,
                 floating *ws, const Work *w,
                 const floating *X, const floating *Y,   # IN the data set
                 const int64_t *rows,                    # IN the batch's row indices, or NULL
                 int64_t start, int64_t m, int64_t r0, int64_t r1,
                 bint want_delta) noexcept nogil:
    """Rows r0..r1 of a batch: gather, forward, loss, and (want_delta) backprop."""
    cdef const floating *x = X + start * s.sizes[0]
    cdef const floating *y = Y + start * s.sizes[s.n_layers]
    if rows != NULL:
        gather_rows(s, ws, w, X, Y, rows, r0, r1)
        x = ws + w.act[0]
        y = ws + w.y
    forward_rows(s, e, theta, ws, w, x, r0, r1)
    loss_rows(s, e, ws, w, y, rows, start, m, r0, r1, want_delta)
    if want_delta:
        backprop_rows(s, e, theta, ws, w, r0, r1)


cdef void update_units(const Spec *s, const Extra *e,
                       floating *theta,        # IN, and OUT when grad == NULL or on the optimizer path
                       floating *grad,         # OUT gradient of the batch objective, or NULL
                       floating lr,            # the SGD step when grad == NULL
                       floating *snap,         # OUT copy of what this call updates, or NULL
                       floating *ws, const Work *w,  # IN activations, deltas; colsum scratch
                       const floating *x,      # IN batch input, row 0 (ld n_in)
                       int64_t m, int k, int64_t o0, int64_t o1) noexcept nogil:
    """Units o0..o1 of layer k: store their gradient (and, on the optimizer
    path, step them right away: opt_units), or the fused plain SGD step."""
    cdef int64_t j, n_in = s.sizes[k], n_out = s.sizes[k + 1]
    cdef const floating *d = ws + w.delta[k + 1] + o0   # columns o0..o1 of delta (ld n_out)
    cdef const floating *h = layer_in(e, ws, w, x, k)
    cdef floating *colsum
    if o1 <= o0:
        return
    if grad != NULL:
        gemm(1, 0, o1 - o0, n_in, m,
             <floating>1, d, n_out, h, n_in,
             <floating>0, grad + s.w_off[k] + o0 * n_in, n_in,
             NULL, ACT_IDENTITY, NULL, 0, 1)
        if s.b_off[k] >= 0:
            column_sums(d, m, o1 - o0, n_out, grad + s.b_off[k] + o0)
        if e.opt != NULL:
            opt_units(s, e.opt, theta, grad, snap, m, k, o0, o1)
        return
    if snap != NULL:
        memcpy(snap + s.w_off[k] + o0 * n_in, theta + s.w_off[k] + o0 * n_in,
               (o1 - o0) * n_in * sizeof(floating))
        if s.b_off[k] >= 0:
            memcpy(snap + s.b_off[k] + o0, theta + s.b_off[k] + o0,
                   (o1 - o0) * sizeof(floating))
    gemm(1, 0, o1 - o0, n_in, m,
         -lr, d, n_out, h, n_in,
         <floating>1, theta + s.w_off[k] + o0 * n_in, n_in,
         NULL, ACT_IDENTITY, NULL, 0, 1)
    if s.b_off[k] >= 0:
        colsum = ws + w.colsum[k]
        column_sums(d, m, o1 - o0, n_out, colsum + o0)
        for j in range(o0, o1):
            theta[s.b_off[k] + j] -= lr * colsum[j]


cdef inline double row_sum(const floating *v, int64_t m) noexcept nogil:
    """sum_i v[i] in row order, in double."""
    cdef int64_t i
    cdef double total = 0.0
    for i in range(m):
        total += v[i]
    return total


cdef double weighted_sum(const floating *v, const Extra *e, const int64_t *rows,
                         int64_t start, int64_t m) noexcept nogil:
    """sum_i s_i v[i] in row order, in double (sum_i v[i] without weights)."""
    cdef int64_t i
    cdef double total = 0.0
    if e.sw == NULL:
        return row_sum(v, m)
    for i in range(m):
        total += row_weight(<const floating *>e.sw, rows, start, i) * v[i]
    return total


cdef double weight_sum(const Extra *e, const floating *dtype_of,  # (unused: picks the dtype of e.sw)
                       const int64_t *rows,
                       int64_t start, int64_t m) noexcept nogil:
    """sum_i s_i of a batch, in row order, in double."""
    cdef int64_t i
    cdef double total = 0.0
    for i in range(m):
        total += row_weight(<const floating *>e.sw, rows, start, i)
    return total


cdef void run_tile(const Spec *s, const Plan *p, int wave, int64_t t, const Job *job,
                   floating *theta, floating *ws, const Work *w,
                   const floating *X, const floating *Y) noexcept nogil:
    """Tile t of wave `wave` of the plan (see the block above Plan)."""
    cdef int L = s.n_layers, k
    cdef int64_t n = p.n_tiles[wave], a, b, i
    cdef const Extra *e = job.e
    cdef const int64_t *rows = job.rows
    cdef int64_t start = job.start, m = job.m
    cdef bint train = job.train
    cdef const floating *x = X + start * s.sizes[0]
    cdef const floating *y = Y + start * s.sizes[L] if Y != NULL else NULL
    if rows != NULL:
        x = ws + w.act[0]
        y = ws + w.y
    if train and wave == p.n_waves - 1:       # part 2: the units of one layer
        k = 0
        while p.p2_first[k + 1] <= t:
            k += 1
        n = p.p2_first[k + 1] - p.p2_first[k]
        t -= p.p2_first[k]
        update_units(s, e, theta, <floating *>job.grad, <floating>job.lr, <floating *>job.snap,
                     ws, w, x, m, k,
                     cut(s.sizes[k + 1], t, n, p.mr), cut(s.sizes[k + 1], t + 1, n, p.mr))
    elif not p.by_units:                      # row split: rows through everything
        a, b = cut(m, t, n, p.row_align), cut(m, t + 1, n, p.row_align)
        if Y == NULL:
            forward_rows(s, e, theta, ws, w, x, a, b)
        else:
            phase1(s, e, theta, ws, w, X, Y, rows, start, m, a, b, train)
    elif wave < L:                            # unit split: forward of layer `wave`
        k = wave
        forward_cols(s, e, theta, ws, w, x, k, 0, m, cut(s.sizes[k + 1], t, n, p.nr),
                     cut(s.sizes[k + 1], t + 1, n, p.nr))
    elif wave == L:                           # output activation and loss rows
        a, b = part(m, t, n), part(m, t + 1, n)
        for i in range(a, b):
            output_row(s, ws + w.act[L] + i * s.sizes[L], ws + w.yhat + i * s.sizes[L])
        if Y != NULL:
            loss_rows(s, e, ws, w, y, rows, start, m, a, b, train)
    else:                                     # delta_k, k = L-1 .. 1
        k = L - 1 - (wave - L - 1)
        backprop_cols(s, e, theta, ws, w, k, 0, m, cut(s.sizes[k], t, n, p.nr),
                      cut(s.sizes[k], t + 1, n, p.nr))


cdef int team_waves(fbp_team *T, unsigned g, const Spec *s, const Work *w, Job *job,
                    floating *theta, floating *ws, const floating *X, const floating *Y,
                    bint caller, int64_t *waited) noexcept nogil:
    """One thread's share of generation g: take tiles until a wave has none
    left, wait for the ones still running, go on to the next wave.  After the
    loss wave every thread sums the losses (in row order: all agree) and
    stops before the updates when the sum is not finite (returns 1).  -2:
    generation g is over (a late thread).  Workers do not wait for the last
    wave; the caller does, so the step is complete when it returns."""
    cdef int v, t, r, nw = fbp_team_nw(T), lw = fbp_team_loss_wave(T)
    cdef int64_t t0
    for v in range(nw):
        while True:
            t = fbp_team_claim(T, v, g)
            if t == -2:
                return -2
            if t < 0:
                break
            run_tile(s, &job.plan, v, t, job, theta, ws, w, X, Y if job.has_y else NULL)
            fbp_team_finish(T, v)
        if v == nw - 1 and not caller:
            return 0
        if caller:
            t0 = fbp_now_ns()
            r = fbp_team_wait_wave(T, v, g)
            waited[0] += fbp_now_ns() - t0
        else:
            r = fbp_team_wait_wave(T, v, g)
        if r != 0:
            return -2
        if v == lw and job.train and not isfinite(row_sum(ws + w.lossv, job.m)):
            return 1
    return 0


cdef void team_worker(fbp_team *T, const Spec *s, const Work *w, Job *job,
                      floating *theta, floating *ws, const floating *X,
                      const floating *Y) noexcept nogil:
    """A thread of the team other than the caller: every generation until quit."""
    cdef unsigned g = 0
    while True:
        g = fbp_team_next(T, g)
        if g == 0:
            return
        team_waves(T, g, s, w, job, theta, ws, X, Y, False, NULL)


cdef void team_run(fbp_team *T, unsigned *gen, Job *job, const Plan *p,
                   const Spec *s, const Work *w, const Extra *e,
                   floating *theta, floating *grad, floating lr, floating *snap,
                   floating *ws, const floating *X, const floating *Y,
                   const int64_t *rows, int64_t start, int64_t m, bint train) noexcept nogil:
    """The caller: publish one step (or chunk) to the team, then take part."""
    cdef int64_t t0 = fbp_now_ns(), waited = 0
    cdef unsigned g = gen[0] + 1
    if g == 0:
        g = 1
    gen[0] = g
    fbp_team_invalidate(T, g)      # from here no claim succeeds until open
    job.plan = p[0]
    job.theta, job.grad, job.snap, job.lr, job.e = theta, grad, snap, lr, e
    job.rows, job.start, job.m, job.train, job.has_y = rows, start, m, train, Y != NULL
    if rows != NULL and p.by_units:   # the (small) batch is gathered first
        gather_rows(s, ws, w, X, Y, rows, 0, m)
    fbp_team_open(T, g, p.n_waves, p.n_tiles, p.loss_wave)
    team_waves(T, g, s, w, job, theta, ws, X, Y, True, &waited)
    if par_min_macs > 0:   # (the tests' threshold 0: every step through the team)
        fbp_team_account(T, fbp_now_ns() - t0, waited)


cdef int batch_step(const Spec *s, const Extra *e, fbp_team *T, unsigned *gen, Job *job,
                    floating *theta,            # IN, OUT when grad == NULL or e.opt fuses the update
                    floating *grad,             # OUT the gradient, or NULL for the fused SGD step
                    floating lr,
                    floating *snap,             # OUT theta before the fused step, or NULL
                    floating *ws, const Work *w,
                    const floating *X, const floating *Y,  # IN the data set
                    const int64_t *rows,        # IN the batch's row indices, or NULL
                    int64_t start, int64_t m,
                    double *loss) noexcept nogil:  # OUT sum of the batch's per-sample losses
    """One batch: the gradient into `grad` (and on the optimizer path of e.opt,
    the optimizer step fused after it), or the plain SGD step on theta.

    Returns 1 (and changes nothing) when the batch loss is not finite.
    Serially the two parts run in turn; with a team (T != NULL) and a step
    worth splitting, as the plan's waves.  `snap` is filled just before
    theta changes.
    """
    cdef Plan p
    cdef int k
    cdef const floating *x = X + start * s.sizes[0]
    if T != NULL and not fbp_team_backing_off(T):
        make_plan(s, m, True, True, &p)
        if p.nt > 1:
            team_run(T, gen, job, &p, s, w, e, theta, grad, lr, snap, ws, X, Y, rows, start, m, True)
            loss[0] = row_sum(ws + w.lossv, m)
            return 0 if isfinite(loss[0]) else 1
    if rows != NULL:
        x = ws + w.act[0]
    phase1(s, e, theta, ws, w, X, Y, rows, start, m, 0, m, True)
    loss[0] = row_sum(ws + w.lossv, m)
    if not isfinite(loss[0]):
        return 1
    for k in range(s.n_layers):
        update_units(s, e, theta, grad, lr, snap, ws, w, x, m, k, 0, s.sizes[k + 1])
    return 0


cdef void predict_rows(const Spec *s, const Extra *e, fbp_team *T, unsigned *gen, Job *job,
                       const floating *theta, floating *ws, const Work *w,
                       const floating *X,      # IN the data set
                       const floating *Y,      # IN targets, or NULL for outputs only
                       int64_t start, int64_t m) noexcept nogil:
    """Forward (with Y, also the per-sample losses) of m rows from `start`,
    into rows 0..m-1 of the workspace."""
    cdef Plan p
    if T != NULL and not fbp_team_backing_off(T):
        make_plan(s, m, False, Y != NULL, &p)
        if p.nt > 1:
            team_run(T, gen, job, &p, s, w, e, <floating *>theta, NULL, <floating>0, NULL, ws, X, Y,
                     NULL, start, m, False)
            return
    if Y != NULL:
        phase1(s, e, theta, ws, w, X, Y, NULL, start, m, 0, m, False)
    else:
        forward_rows(s, e, theta, ws, w, X + start * s.sizes[0], 0, m)


cdef double sgd_range(floating *theta, const floating *grad, floating *velocity,
                      int64_t n, floating lr, floating momentum, bint nesterov,
                      floating decay, bint want_sq) noexcept nogil:
    """torch.optim.SGD on one contiguous range:
    g += decay*theta; v = mu*v + g; theta -= lr*(nesterov ? g + mu*v : v).
    Returns sum(theta^2) before the update when want_sq."""
    cdef int64_t i
    cdef floating g
    cdef double sq = 0.0
    for i in range(n):
        if want_sq:
            sq += <double>theta[i] * theta[i]
        g = grad[i] + decay * theta[i]
        if momentum != 0:
            velocity[i] = momentum * velocity[i] + g
            g = (g + momentum * velocity[i]) if nesterov else velocity[i]
        theta[i] -= lr * g
    return sq


cdef struct Optim:
    double lr
    double momentum          # torch.optim.SGD's momentum (dampening 0)
    bint nesterov
    double weight_decay      # torch's: g += weight_decay * theta, biases included
    double l2                # scikit-learn's alpha: loss += l2 / (2 m) ||W||^2, weights only


cdef struct Totals:
    double loss              # sum of the per-sample losses seen (weighted: sum s_i loss_i)
    double hits              # sum of the per-sample accuracies seen (weighted likewise)
    double penalty           # sum over steps of l2/2 ||W||^2 before the step
    int64_t n_done           # samples consumed by completed steps
    bint snap_done           # the snapshot was taken
    int64_t snap_count       # the optimizer's step count at the snapshot


cdef double sgd_update(const Spec *s, floating *theta, const floating *grad,
                       floating *velocity, const Optim *o, int64_t m) noexcept nogil:
    """The optimizer step on every layer; returns the l2 penalty before it."""
    cdef int k
    cdef int64_t off, n
    cdef double sq = 0.0
    cdef floating lr = <floating>o.lr, mu = <floating>o.momentum
    cdef floating w_decay = <floating>(o.weight_decay + o.l2 / m)
    cdef floating b_decay = <floating>o.weight_decay
    for k in range(s.n_layers):
        off = s.w_off[k]
        n = s.sizes[k] * s.sizes[k + 1]
        sq += sgd_range(theta + off, grad + off, velocity + off if velocity != NULL else NULL,
                        n, lr, mu, o.nesterov, w_decay, o.l2 != 0)
        if s.b_off[k] >= 0:
            off = s.b_off[k]
            sgd_range(theta + off, grad + off, velocity + off if velocity != NULL else NULL,
                      s.sizes[k + 1], lr, mu, o.nesterov, b_decay, False)
    return 0.5 * o.l2 * sq


cdef void snapshot_all(const OptK *ok, floating *snap, floating *snap_vel,
                       const floating *theta, const floating *velocity,
                       int64_t n_params) noexcept nogil:
    """The snapshot of a step taken by thread 0 in one go (theta, and the
    velocity or the optimizer's state)."""
    memcpy(snap, theta, n_params * sizeof(floating))
    if snap_vel != NULL and velocity != NULL:
        memcpy(snap_vel, velocity, n_params * sizeof(floating))
    if ok != NULL:
        opt_copy(ok, snap, theta, 0, n_params)


cdef int run_epoch(const Spec *s, Extra *e,
                   fbp_team *T, unsigned *gen, Job *job,   # the team, or T == NULL: serial
                   floating *theta,           # IN/OUT parameters
                   floating *grad,            # scratch gradient (optimizer path), or NULL
                   floating *velocity,        # IN/OUT momentum buffer, or NULL
                   floating *ws, const Work *w,
                   const floating *X,         # IN (n_samples, n_in)
                   const floating *Y,         # IN (n_samples, n_out)
                   const int64_t *order,      # IN visiting order, or NULL for 0..n-1
                   int64_t n_samples, int64_t batch_size,
                   const Optim *o,            # IN the legacy SGD settings
                   int64_t first_step,        # start at this batch of the epoch
                   int64_t max_steps,         # stop after this many steps (-1: no limit)
                   floating *snap,            # OUT copy of theta at step snap_step, or NULL
                   floating *snap_vel,        # OUT copy of velocity there, or NULL
                   int64_t snap_step,
                   int64_t n_params,
                   Totals *t,                 # OUT what the epoch saw
                   ) noexcept nogil:
    """One epoch of mini-batch training, entirely in compiled code.

    Legacy SGD: plain SGD (grad == NULL) fuses the update into the
    weight-gradient GEMM; with momentum, weight decay or l2 the gradient is
    formed in `grad` and the optimizer applied to it.  The optimizer path
    (e.opt, fastbp.optim): the gradient rows are formed in `grad` and the
    optimizer applied to them on the spot (opt_units), or, with clipping,
    to the whole gradient after the step.  Sample weights (e.sw): a batch
    whose weights sum to 0 is skipped (no update, the step count stays).
    Stops early (returning 1) before applying a step whose batch loss is not
    finite, leaving theta as it was after the last good step.  At step
    `snap_step`, once its loss is known to be finite and before its update,
    theta (and the velocity or optimizer state) are copied to `snap`: the
    caller's point to rewind to should a later step diverge.  Polls for
    Ctrl-C every few tens of millions of multiply-adds and returns -1 with
    KeyboardInterrupt set (in the calling thread's state), again between steps.
    """
    cdef int64_t start, m, k, macs = 0, macs_per_row = 0, steps = 0
    cdef double batch_loss
    cdef bint snap_here, fused
    cdef const int64_t *rows
    cdef OptK *ok = e.opt
    for k in range(s.n_layers):
        macs_per_row += 3 * s.sizes[k] * s.sizes[k + 1]
    t.loss = t.hits = t.penalty = 0.0
    t.n_done = 0
    t.snap_done = False
    t.snap_count = 0
    start = first_step * batch_size
    while start < n_samples and steps != max_steps:
        m = min(batch_size, n_samples - start)
        rows = order + start if order != NULL else NULL
        snap_here = snap != NULL and first_step + steps == snap_step
        e.drop.step = <uint32_t>(first_step + steps)
        if e.sw != NULL:
            e.wsum = weight_sum(e, theta, rows, start, m)
        if e.sw != NULL and not e.wsum > 0:
            # Weights summing to 0: the batch contributes nothing.
            if snap_here:
                snapshot_all(ok, snap, snap_vel, theta, velocity, n_params)
                t.snap_done = True
                t.snap_count = ok.step if ok != NULL else 0
        else:
            fused = grad == NULL or (ok != NULL and ok.clip == 0)
            if ok != NULL:
                opt_prepare(ok)
            if batch_step(s, e, T, gen, job, theta, grad, <floating>o.lr,
                          snap if snap_here and fused else NULL,
                          ws, w, X, Y, rows, start, m, &batch_loss):
                return 1
            if snap_here:
                t.snap_done = True
                t.snap_count = ok.step if ok != NULL else 0
                if not fused:
                    snapshot_all(ok, snap, snap_vel, theta, velocity, n_params)
            if ok != NULL:
                if ok.clip != 0:
                    opt_clipped_update(s, ok, theta, grad, n_params)
                if ok.l2 != 0:
                    t.penalty += 0.5 * ok.l2 * opt_unit_sum(ok.usq, ok.n_units)
                ok.step += 1
            elif grad != NULL:
                t.penalty += sgd_update(s, theta, grad, velocity, o, m)
            t.loss += weighted_sum(ws + w.lossv, e, rows, start, m)
            if s.loss != LOSS_SQUARED:
                t.hits += weighted_sum(ws + w.hitv, e, rows, start, m)
        t.n_done += m
        start += m
        steps += 1
        macs += m * macs_per_row
        if macs >= SIGNAL_POLL_MACS:
            macs = 0
            if fbp_poll_signals() == -1:
                return -1
    return 0


cdef int chunk_rows(const Spec *s, const Extra *e, fbp_team *T, unsigned *gen, Job *job,
                    const floating *theta, floating *ws, const Work *w,
                    const floating *X, const floating *Y,   # IN data, targets or NULL
                    int64_t n, int64_t chunk,
                    floating *out,          # OUT (n, n_out) outputs, or NULL
                    double *totals          # OUT [loss sum, accuracy sum] with Y (weighted with e.sw)
                    ) noexcept nogil:
    """predict / loss over n rows, `chunk` rows at a time; -1 on Ctrl-C
    (polled between chunks)."""
    cdef int64_t start = 0, m, n_out = s.sizes[s.n_layers]
    while start < n:
        m = min(chunk, n - start)
        predict_rows(s, e, T, gen, job, theta, ws, w, X, Y, start, m)
        if out != NULL:
            memcpy(out + start * n_out, ws + w.yhat, m * n_out * sizeof(floating))
        if Y != NULL:
            totals[0] += weighted_sum(ws + w.lossv, e, NULL, start, m)
            if s.loss != LOSS_SQUARED:
                totals[1] += weighted_sum(ws + w.hitv, e, NULL, start, m)
        start += m
        if start < n and fbp_poll_signals() == -1:
            return -1
    return 0


cdef enum:
    CALL_EPOCH = 0
    CALL_CHUNKS = 1
    CALL_GRAD = 2


cdef struct Call:
    # The arguments of one kernel call, for drive().
    int kind
    void *theta
    void *grad
    void *velocity
    void *ws
    void *snap
    void *snap_vel
    void *out
    const void *X
    const void *Y
    const int64_t *order
    int64_t n, batch_size, first_step, max_steps, snap_step, n_params, chunk
    const Optim *o
    Totals *t
    Extra *e
    double totals[2]        # chunks: loss and accuracy sums; grad: the loss sum


cdef int drive(const Spec *s, const Work *w, Call *c, fbp_team *T, unsigned *gen, Job *job,
               floating *theta) noexcept nogil:
    """Run call c, with the team T (on its thread 0) or serially (T == NULL)."""
    if c.kind == CALL_EPOCH:
        return run_epoch(s, c.e, T, gen, job, theta, <floating *>c.grad, <floating *>c.velocity,
                         <floating *>c.ws, w, <const floating *>c.X, <const floating *>c.Y,
                         c.order, c.n, c.batch_size, c.o, c.first_step, c.max_steps,
                         <floating *>c.snap, <floating *>c.snap_vel, c.snap_step,
                         c.n_params, c.t)
    if c.kind == CALL_CHUNKS:
        return chunk_rows(s, c.e, T, gen, job, theta, <floating *>c.ws, w, <const floating *>c.X,
                          <const floating *>c.Y, c.n, c.chunk, <floating *>c.out, c.totals)
    return batch_step(s, c.e, T, gen, job, theta, <floating *>c.grad, <floating>0, NULL,
                      <floating *>c.ws, w, <const floating *>c.X, <const floating *>c.Y,
                      NULL, 0, c.n, &c.totals[0])


cdef int run_call(const Spec *s, const Work *w, Call *c, int64_t rows, bint train,
                  floating *theta) noexcept nogil:
    """Run call c: serially when its largest step (`rows` rows) is too small
    to split, else in ONE parallel region for the whole call (every step or
    chunk of it), thread 0 driving the call and the others taking tiles.
    Each thread runs with the caller's FTZ/DAZ mode and restores its own."""
    cdef Plan p
    cdef fbp_team T
    cdef Job job
    cdef unsigned gen = 0
    cdef int status = 0, tid = 0
    cdef int *status_p = &status
    cdef unsigned int csr = 0
    make_plan(s, rows, train, True, &p)
    if p.nt <= 1 or fbp_serial_after_fork():
        return drive(s, w, c, NULL, &gen, &job, theta)
    fbp_team_init(&T)
    with parallel(num_threads=p.nt):
        tid = threadid()
        csr = fbp_ftz_enter(s.ftz)
        if tid == 0:
            fbp_count_parallel(fbp_team_size())
            status_p[0] = drive(s, w, c, &T, &gen, &job, theta)
            fbp_team_quit(&T)
        else:
            team_worker(&T, s, w, &job, theta, <floating *>c.ws, <const floating *>c.X,
                        <const floating *>c.Y)
        fbp_ftz_leave(csr)
    return status


cdef int _raise_pending() except -1:
    """Propagate the exception a kernel left set (Ctrl-C)."""
    return -1


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
        self._bind()

    cdef void _bind(self):
        cdef const int64_t[::1] sz = self.sizes, wo = self.w_off, bo = self.b_off
        self.spec.sizes = &sz[0]
        self.spec.w_off = &wo[0]
        self.spec.b_off = &bo[0]

    def workspace_size(self, int64_t rows, str kind="fit", dropout=None):
        """Elements of scratch one call allocates for `rows` rows (a batch, or
        a predict/loss chunk): kind "fit" (what `fit_epoch` needs: the
        caller allocates it), "predict", "loss" or "gradients" (what those
        calls allocate themselves, chunk rows or all of X for gradients).
        With `dropout` (as fit_epoch and gradients take it), "fit" and
        "gradients" include the dropped activations of the hidden layers
        whose p > 0."""
        cdef int what
        cdef Drop d
        cdef const double[::1] p_v
        cdef int64_t extra = 0
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
        return int(self.workspace_size(rows, dropout=dropout) * itemsize + p.nt * per_thread)

    cdef Spec _spec(self, int n_threads, int elem):
        """The spec of one call: its thread count, element size, and the
        calling thread's FTZ/DAZ mode (every thread of a region runs with it)."""
        cdef Spec s = self.spec
        s.n_threads = n_threads if n_threads > 0 else 1
        s.ftz = fbp_ftz_mode()
        s.elem = elem
        return s

    def _check(self, theta, X, Y=None):
        if theta.shape[0] != self.n_params:
            raise ValueError("theta has the wrong length")
        if X.shape[1] != self.sizes[0] or X.shape[0] < 1:
            raise ValueError("X has the wrong shape")
        if Y is not None and (Y.shape[0] != X.shape[0] or Y.shape[1] != self.sizes[self.spec.n_layers]):
            raise ValueError("Y has the wrong shape")

    def predict(self, const floating[::1] theta, const floating[:, ::1] X,
                floating[:, ::1] out, int64_t chunk, int n_threads):
        """out = network(X), computed `chunk` rows at a time (no dropout)."""
        self._check(theta, X)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t n = X.shape[0], n_out = s.sizes[s.n_layers]
        cdef int64_t start, m
        if out.shape[0] != n or out.shape[1] != n_out:
            raise ValueError("out has the wrong shape")
        chunk = max(1, min(chunk, n))
        cdef Work w = make_work(&s, chunk, 0)
        cdef floating[::1] ws = np.empty(w.size, dtype=np.asarray(theta).dtype)
        cdef Call c
        cdef Extra e
        cdef int status
        extra_init(&e)
        c.kind, c.ws, c.X, c.Y, c.n, c.chunk, c.e = CALL_CHUNKS, &ws[0], &X[0, 0], NULL, n, chunk, &e
        c.out = &out[0, 0]
        with nogil:
            status = run_call(&s, &w, &c, chunk, False, <floating *>&theta[0])
        if status == -1:
            _raise_pending()   # Ctrl-C between chunks
        return np.asarray(out)

    def loss(self, const floating[::1] theta, const floating[:, ::1] X,
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
        cdef const floating[::1] sw
        cdef double total_w = n
        chunk = max(1, min(chunk, n))
        cdef Work w = make_work(&s, chunk, WS_TARGETS)
        cdef floating[::1] ws = np.empty(w.size, dtype=np.asarray(theta).dtype)
        cdef Call c
        cdef Extra e
        cdef int status
        extra_init(&e)
        if sample_weight is not None:
            sw = _weights_view(sample_weight, theta, n)
            e.sw = &sw[0]
            total_w = weight_sum(&e, &theta[0], NULL, 0, n)
            if not total_w > 0:
                return 0.0, 0.0
        c.kind, c.ws, c.X, c.Y, c.n, c.chunk, c.e = CALL_CHUNKS, &ws[0], &X[0, 0], &Y[0, 0], n, chunk, &e
        c.out = NULL
        c.totals[0] = c.totals[1] = 0.0
        with nogil:
            status = run_call(&s, &w, &c, chunk, False, <floating *>&theta[0])
        if status == -1:
            _raise_pending()   # Ctrl-C between chunks
        return c.totals[0] / total_w, c.totals[1] / total_w

    def gradients(self, const floating[::1] theta, const floating[:, ::1] X,
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
        cdef const floating[::1] sw
        cdef const double[::1] p_v
        cdef Extra e
        extra_init(&e)
        if sample_weight is not None:
            sw = _weights_view(sample_weight, theta, m)
            e.sw = &sw[0]
            e.wsum = weight_sum(&e, &theta[0], NULL, 0, m)
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
        cdef floating[::1] ws = np.empty(w.size, dtype=np.asarray(theta).dtype)
        cdef Call c
        cdef int status
        c.kind, c.ws, c.X, c.Y, c.n, c.grad, c.e = CALL_GRAD, &ws[0], &X[0, 0], &Y[0, 0], m, &grad[0], &e
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

    def fit_epoch(self, floating[::1] theta, const floating[:, ::1] X,
                  const floating[:, ::1] Y, order, int64_t batch_size,
                  floating[::1] ws, floating[::1] grad, floating[::1] velocity,
                  int n_threads, double lr, double momentum=0.0, bint nesterov=False,
                  double weight_decay=0.0, double l2=0.0, int64_t first_step=0,
                  int64_t max_steps=-1, bint flush_denormals=False,
                  floating[::1] snapshot=None, floating[::1] snapshot_velocity=None,
                  int64_t snapshot_step=-1, *, optimizer=None, state=None,
                  snapshot_state=None, sample_weight=None, dropout=None,
                  uint64_t seed=0, uint32_t epoch=0, double clip_norm=0.0):
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
        """
        self._check(theta, X, Y)
        cdef Spec s = self._spec(n_threads, sizeof(floating))
        cdef int64_t n = X.shape[0]
        cdef int64_t rows = max(1, min(batch_size, n)), n_drop = 0
        cdef Work w = make_work(&s, rows, WS_FIT)
        cdef Optim o
        cdef Totals t
        cdef Extra e
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
        if ws.shape[0] < w.size:
            raise ValueError("workspace too small")
        if not (clip_norm >= 0 and clip_norm < float("inf")):
            raise ValueError("clip_norm must be finite and >= 0")
        o.lr, o.momentum, o.nesterov = lr, momentum, nesterov
        o.weight_decay, o.l2 = weight_decay, l2
        extra_init(&e)
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
        if n_drop > 0:
            if ws.shape[0] >= w.size + n_drop:
                e.drop.dbuf = &ws[w.size]
            else:
                dbuf = np.empty(n_drop, dtype=np.asarray(theta).dtype)
                e.drop.dbuf = &dbuf[0]
        # The calling thread runs with FTZ/DAZ as asked for the whole call;
        # the threads of each parallel step set that mode (on, or the
        # caller's own, normally off) and restore theirs afterwards.
        cdef unsigned int csr = fbp_ftz_set(1) if flush_denormals else 0
        s.ftz = fbp_ftz_mode()
        cdef Call c
        c.kind, c.grad, c.velocity, c.ws, c.X, c.Y = CALL_EPOCH, grad_p, vel_p, &ws[0], &X[0, 0], &Y[0, 0]
        c.order, c.n, c.batch_size, c.o, c.first_step, c.max_steps = order_p, n, batch_size, &o, first_step, max_steps
        c.snap, c.snap_vel, c.snap_step, c.n_params, c.t = snap_p, snap_vel_p, snapshot_step, self.n_params, &t
        c.e = &e
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
    ok.nesterov = ok.decoupled = ok.amsgrad = ok.centered = False
    ok.weight_decay = optimizer.weight_decay
    if ok.kind == OPT_SGD:
        ok.momentum, ok.nesterov = optimizer.momentum, optimizer.nesterov
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


def parallel_regions():
    """How many parallel regions have run with a team of more than one
    thread since the module was loaded: a test hook to prove that a parallel
    path really ran.  A call (a fit epoch, or part of one; a predict or loss
    call; a gradients call) opens one region for all its steps when its
    largest step is worth splitting, none otherwise."""
    return fbp_parallel_count()
