/* fbp_team.h: the threading machinery of src/_kernels.pyx, in plain C.
 *
 * What is here: OpenMP detection, FTZ/DAZ control per thread, the test hook
 * that counts parallel regions, fork safety, and `fbp_team`, the work queue
 * of one parallel region (a generation of waves of tiles, claimed by tagged
 * CAS, waited on with a short spin and then a futex).  Nothing here touches
 * the network's data: the kernels in _steps.pxi do, and say why each of
 * their writes is private to the thread running a tile.  The only state
 * shared between threads is an fbp_team, every field of which is read and
 * written with __atomic builtins (thread 0 alone reads and writes
 * serial_until and backoff).
 *
 * Included once, by the C file Cython generates from _kernels.pyx (after
 * Python.h, which fbp_poll_signals needs).
 */
#ifndef FBP_TEAM_H
#define FBP_TEAM_H
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#define FBP_OPENMP 1
static int fbp_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define FBP_OPENMP 0
static int fbp_omp_max_threads(void) { return 1; }
#endif

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

/* Flush-to-zero / denormals-are-zero: denormal floats slow x86 arithmetic by
   10x or more, and SGD can drive small weights and activations there.  The
   MXCSR bits are per thread: the calling thread sets them for a fit epoch, and
   every thread of a step's parallel region sets them on entry and restores its
   own previous value on exit, so no thread relies on another's state. */
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

/* Test hook: parallel regions entered with a team of more than one
   thread (counted once per region, by its thread 0). */
static int64_t fbp_n_parallel = 0;
static void fbp_count_parallel(int team) {
    if (team > 1) __atomic_fetch_add(&fbp_n_parallel, 1, __ATOMIC_RELAXED);
}
static int64_t fbp_parallel_count(void) {
    return __atomic_load_n(&fbp_n_parallel, __ATOMIC_RELAXED);
}

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

#ifdef _OPENMP
static int fbp_omp_thread_limit(void) { return omp_get_thread_limit(); }
#else
static int fbp_omp_thread_limit(void) { return 1; }
#endif

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

/* Marks this library for threadpoolctl (fastbp/_threads.py registers a
   controller that looks for this symbol). */
__attribute__((visibility("default"))) int fastbp_kernels_abi(void) { return 1; }

#endif /* FBP_TEAM_H */
