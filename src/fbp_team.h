/* fbp_team.h: the threading machinery of src/_kernels.pyx, in plain C.
 *
 * What is here: OpenMP detection, FTZ/DAZ control per thread, the test hook
 * that counts parallel regions, fork safety, and `fbp_team`, the work queue
 * of one parallel region (a generation of waves of tiles, claimed by tagged
 * CAS, waited on with a short spin and then a futex).  Nothing here touches
 * the network's data: the kernels in _steps.pxi do, and say why each of
 * their writes is private to the thread running a tile.  The only state
 * shared between threads is an fbp_team, every field of which is read and
 * written with __atomic builtins (thread 0 alone reads and writes its
 * tune, last_end and n_team_steps).  How thread 0 runs each step (serially
 * while backing off or to time a serial step, else through the team with
 * coarse or fine tiles) is fbp_team_mode / fbp_team_account, from what
 * the last steps took; fbp_stats counts what happened, for the tests and
 * for explaining a timing (_kernels.team_stats()).
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
   every tile's writes are visible.  A training step stops before its
   updates when its loss is not finite.  The verdict: the thread that
   finishes the last tile of the loss wave (fbp_team_loss_last, a count
   of loss tiles run to their end, taken while it still holds its tile)
   sums the losses and stores (g << 1) | finite in one word
   (fbp_team_verdict) before fbp_team_finish counts its tile done.  So
   the step cannot end (nor its data or losses be rewritten) while it
   reads them, every other loss tile's writes are visible to it, and
   whoever sees the wave finished (fbp_team_wait_wave) sees g's verdict:
   nobody waits for it, neither thread 0 for a worker nor a worker for
   thread 0.  A worker that comes late, once g is over, finds a word of
   a later generation (or its wave's count reset) and reads -2, never
   another step's verdict as g's. */
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
/* Test hook: what the teams did, summed over every call since the last
   reset (fbp_stats_reset), to explain a timing.  Relaxed atomic adds, a few
   per step or tile: cheap next to a tile.  Thread 0 adds the step, wait and
   back-off figures; any thread adds its tiles, sleeps and wake-ups. */
typedef struct {
    int64_t regions;        /* parallel regions (one per call) */
    int64_t steps_team;     /* steps (or chunks) run through the team */
    int64_t steps_small;    /* steps in a region run serially: too small to split */
    int64_t steps_backoff;  /* steps in a region run serially: backing off */
    int64_t backoffs;       /* back-off triggers (fbp_team_account) */
    int64_t slow_backoffs;  /* of which because team steps were no faster */
    int64_t steps_probe;    /* steps in a region run serially to time them */
    int64_t steps_fine;     /* team steps with fine tiles */
    int64_t fines;          /* switches to fine tiles */
    int64_t tiles_caller, tiles_worker;
    int64_t late;           /* a worker found its generation over */
    int64_t step_ns;        /* thread 0: the team steps, publishing to return */
    int64_t wait_ns;        /* thread 0: of which waiting for others' tiles */
    int64_t wait_last_ns;   /* thread 0: of which waiting in the last wave */
    int64_t gap_ns, gaps;   /* thread 0: between two team steps of a region */
    int64_t sleeps_wave;    /* futex sleeps waiting for a wave (any thread) */
    int64_t sleeps_next;    /* futex sleeps of a worker waiting for a step */
    int64_t wakes;          /* FUTEX_WAKE calls */
    int64_t wake_ns, wake_n; /* a worker asleep for a step: publish to its first claim */
    int64_t verdicts;       /* loss verdicts published (by the last loss tile's thread) */
    int64_t verdicts_worker; /* of which by a worker */
    int64_t verdict_stops;  /* threads that read "not finite" and stopped */
    int64_t tiles_pack;     /* tiles of a row split's pack wave (any thread) */
    int64_t hpacks;         /* row ranges of an H_k a row tile packed for part 2 */
    int64_t tiles_hpack;    /* part-2 unit tiles that read such a packed H_k */
    int64_t probe_ns, probe_cpu_ns; /* thread 0: the probes' time, and its CPU time in them */
} fbp_stats_t;
static fbp_stats_t fbp_stats;
#define FBP_STAT(f, v) __atomic_fetch_add(&fbp_stats.f, (int64_t)(v), __ATOMIC_RELAXED)
#define FBP_N_STATS ((int)(sizeof(fbp_stats_t) / sizeof(int64_t)))
static void fbp_stats_read(int64_t *out) {
    int64_t *p = (int64_t *)&fbp_stats;
    for (int i = 0; i < FBP_N_STATS; i++) out[i] = __atomic_load_n(&p[i], __ATOMIC_RELAXED);
}
static void fbp_stat_serial_step(int mode) {
    if (mode == 0) FBP_STAT(steps_backoff, 1);
    else if (mode == 1) FBP_STAT(steps_probe, 1);
    else FBP_STAT(steps_small, 1);
}
static void fbp_stat_tiles(int caller, int64_t n, int late) {
    if (caller) FBP_STAT(tiles_caller, n); else FBP_STAT(tiles_worker, n);
    if (late) FBP_STAT(late, 1);
}
static void fbp_stat_probe(int64_t wall_ns, int64_t cpu_ns) {
    FBP_STAT(probe_ns, wall_ns);
    FBP_STAT(probe_cpu_ns, cpu_ns);
}
static void fbp_stat_region(void) { FBP_STAT(regions, 1); }
static void fbp_stat_pack_tile(void) { FBP_STAT(tiles_pack, 1); }
static void fbp_stat_hpack(void) { FBP_STAT(hpacks, 1); }
static void fbp_stat_hpack_tile(void) { FBP_STAT(tiles_hpack, 1); }
static void fbp_stats_reset(void) {
    int64_t *p = (int64_t *)&fbp_stats;
    for (int i = 0; i < FBP_N_STATS; i++) __atomic_store_n(&p[i], 0, __ATOMIC_RELAXED);
}

#define FBP_MAXW 129
#define FBP_SPIN 2000
#define FBP_NO_TILE 0x7fffffffLL
/* What thread 0 has learnt about the steps of one shape (thread 0 only;
   carried from call to call through fbp_tune_hint):
   - back-off: run serially until serial_until (when waiting took over
     half a step, or a team step was no faster than a serial one);
   - fine tiles until fine_until (when coarse tiles left it waiting);
   - the last FBP_SER_RING serial steps of this shape (key), each with
     the time it ended (ser_ns[], ser_end[]; ser_n of them, the next one
     into ser_next), and when a serial step was last timed (ser_at): what
     a serial step takes is the lower median of those that ended within
     2 FBP_SER_STALE_NS (fbp_ser_ns);
   - par_ns: the running mean of a team step of this shape; blk_ns, blk_n:
     the timed team steps since the last block was judged, prev_ns, prev_n:
     that block's, when it passed (fbp_team_account);
   - untimed: the next team step is not timed (the first after a back-off:
     the workers, asleep while thread 0 ran serially, wake during it);
   - slow: the back-off is because team steps of this shape were no faster
     (a property of the shape: a call of another shape does not inherit it,
     fbp_tune_load), not because threads waited (the machine is busy: that
     one carries over). */
#define FBP_SER_RING 8
typedef struct {
    int64_t key;
    int64_t serial_until, backoff;
    int64_t fine_until, fine_len;
    int64_t ser_ns[FBP_SER_RING], ser_end[FBP_SER_RING];
    int64_t ser_n, ser_next, ser_at;
    int64_t par_ns;
    int64_t blk_ns, blk_n, prev_ns, prev_n;
    int64_t untimed, slow;
    int64_t strikes;        /* consecutive team steps that waited over half of them */
    int64_t slow_strikes;   /* consecutive timed team steps no faster than serial ones */
} fbp_tune;
static fbp_tune fbp_tune_hint;
static char fbp_tune_lock;
/* A serial step is timed again when the last one is older than this. */
#define FBP_SER_STALE_NS 4000000000LL

typedef struct {
    int64_t word[FBP_MAXW];
    int done[FBP_MAXW];
    int n[FBP_MAXW];
    int nw, loss_wave, hi;
    unsigned seq;
    int quit, ev, sleepers;
    fbp_tune tune;          /* thread 0 only */
    int64_t n_team_steps;   /* thread 0 only: team steps run by this team */
    int64_t last_end;       /* thread 0 only: when its last team step returned */
    int64_t published;      /* when seq was last set (for the wake-up latency) */
    int64_t verdict;        /* (g << 1) | finite: the loss verdict of generation g */
    int loss_done;          /* loss tiles of the current generation run to their end */
} fbp_team;
#include <time.h>
static int64_t fbp_clock_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}
static int64_t fbp_now_ns(void) { return fbp_clock_ns(CLOCK_MONOTONIC); }
/* The calling thread's CPU time (a system call: the vDSO does not serve this clock). */
static int64_t fbp_thread_cpu_ns(void) { return fbp_clock_ns(CLOCK_THREAD_CPUTIME_ID); }
/* How thread 0 runs the next step (fbp_team_mode). */
enum { FBP_MODE_SERIAL = 0, FBP_MODE_PROBE = 1, FBP_MODE_FINE = 2, FBP_MODE_COARSE = 3 };
/* Thread 0, before a step of shape `key`: serially (backing off, or
   FBP_MODE_PROBE: timing a serial step of this shape, at most once per
   FBP_SER_STALE_NS once a team step was timed), or through the team with
   fine or coarse tiles.  Results do not depend on it (they do not depend
   on the thread count or the tiles). */
static int fbp_team_mode(fbp_team *T, int64_t key) {
    fbp_tune *u = &T->tune;
    int64_t now = fbp_now_ns();
    if (u->serial_until != 0 && now < u->serial_until) return FBP_MODE_SERIAL;
    if (u->key == key && u->par_ns != 0 &&
        (u->ser_at == 0 || now - u->ser_at > FBP_SER_STALE_NS))
        return FBP_MODE_PROBE;
    return u->fine_until != 0 && now < u->fine_until ? FBP_MODE_FINE : FBP_MODE_COARSE;
}
/* The key of a step's shape: its multiply-adds, rows and kind. */
static int64_t fbp_shape_key(int64_t macs, int64_t m, int flags) {
    uint64_t k = (uint64_t)macs * 1000003u + (uint64_t)m;
    return (int64_t)((k << 2 | (uint64_t)flags) & 0x7fffffffffffffffULL) | 1;
}
static int64_t fbp_mean_in(int64_t mean, int64_t x) { return mean == 0 ? x : (3 * mean + x) / 4; }
/* What a serial step of this shape takes at `now` (0: none timed): the
   lower median of the last FBP_SER_RING serial steps that ended within 2
   FBP_SER_STALE_NS.  Not their mean: what slows a serial step (a cold
   start, thread 0 sharing its core for a moment, as a probe of a team that
   kept running on a busy machine does) only ever slows it, and a mean of
   such steps (2.10 ms against 1.75 ms in a traced 784-256-128-10 b128 run
   on a busy core, from a call's first, cold steps) made team steps no
   faster than serial ones look faster; and not older steps, which are of
   another state of the machine. */
static int64_t fbp_ser_ns(const fbp_tune *u, int64_t now) {
    int64_t v[FBP_SER_RING];
    int n = 0;
    for (int i = 0; i < u->ser_n; i++) {
        if (now - u->ser_end[i] > 2 * FBP_SER_STALE_NS) continue;
        int j = n++;            /* insertion sort: at most FBP_SER_RING values */
        for (; j > 0 && v[j - 1] > u->ser_ns[i]; j--) v[j] = v[j - 1];
        v[j] = u->ser_ns[i];
    }
    return n == 0 ? 0 : v[(n - 1) / 2];
}
/* A serial step of shape `key` took step_ns, ending at `now`. */
static void fbp_serial_account(fbp_team *T, int64_t key, int64_t step_ns, int64_t now) {
    fbp_tune *u = &T->tune;
    T->last_end = 0;        /* (the stats' gaps are between team steps) */
    if (u->key != key) return;
    u->ser_ns[u->ser_next] = step_ns;
    u->ser_end[u->ser_next] = now;
    u->ser_next = (u->ser_next + 1) % FBP_SER_RING;
    if (u->ser_n < FBP_SER_RING) u->ser_n++;
    u->ser_at = now;
}
/* Thread 0, before a serial step in a region run in `mode`: its start
   into t[0], and for a probe, thread 0's CPU time into t[1] (else -1). */
static void fbp_serial_begin(int mode, int64_t *t) {  /* OUT t[2] */
    fbp_stat_serial_step(mode);
    t[0] = fbp_now_ns();
    t[1] = mode == FBP_MODE_PROBE ? fbp_thread_cpu_ns() : -1;
}
/* Thread 0, after a serial step of shape `key` begun at t (fbp_serial_begin). */
static void fbp_team_serial_done(fbp_team *T, int64_t key, const int64_t *t) {  /* IN t[2] */
    int64_t now = fbp_now_ns();
    if (t[1] >= 0) fbp_stat_probe(now - t[0], fbp_thread_cpu_ns() - t[1]);
    fbp_serial_account(T, key, now - t[0], now);
}
/* A back-off lasts at most FBP_BACKOFF_NS at first, and doubles while
   attempts keep failing up to FBP_BACKOFF_MAX_NS: a failed attempt on a
   busy machine (one 1024-2048-2048-1024 b256 team step, 20-40% slower than
   a serial one) then costs about 1.5% of the time instead of 6% at a
   second, and a back-off for a one-off hiccup on an idle machine still
   costs at most a second. */
#define FBP_BACKOFF_NS 1000000000LL
#define FBP_BACKOFF_MAX_NS 4000000000LL
static void fbp_back_off(fbp_tune *u, int64_t b, int64_t now, int slow) {
    if (b > FBP_BACKOFF_NS) b = FBP_BACKOFF_NS;
    if (u->backoff * 2 > b) b = u->backoff * 2;
    if (b > FBP_BACKOFF_MAX_NS) b = FBP_BACKOFF_MAX_NS;
    u->backoff = b;
    u->serial_until = now + b;
    u->par_ns = 0;          /* team steps are timed afresh, from the second */
    u->blk_ns = u->blk_n = u->prev_ns = u->prev_n = 0;
    u->untimed = 1;
    u->slow = slow;
    FBP_STAT(backoffs, 1);
    if (slow) FBP_STAT(slow_backoffs, 1);
}
/* Thread 0, after a team step of shape `key` that took step_ns, of which
   it spent wait_ns waiting for tiles that other threads held (fine: it
   ran with fine tiles):
   - more than half the step went on waiting (the other threads are
     descheduled: a busy machine) in two team steps in a row: run the next
     steps serially for 20 times that wait (a failed attempt costs at
     most ~5%; at most a second), doubling while attempts keep failing,
     up to 4 s (fbp_back_off).  One
     such step alone only switches to fine tiles: on a shared host a
     thread loses its core for a moment now and then while the machine
     is otherwise idle, and backing off for it cost 784-256-128-10 b128
     epochs up to 50% (traced: one step that waited, then 73 serial
     steps);
   - team steps no faster than serial ones (memory-bound steps, a slow
     core), the mean, the step itself and, not 10% faster, the block's
     steps so far with the block before it when that one passed (below),
     in two timed steps in a row: the same back-off, from 50
     team steps' time (one such step alone was, as above, a host's hiccup
     as often as not: traced, one slow back-off at a fresh call's second
     step, then 126 serial steps; and two slow steps in a row among faster
     ones were a noisy host's, idle otherwise: traced, 784-256-128-10 b128
     backed off after 24 team steps of 1.1-2.4 ms, 1.5 ms on average,
     against 1.75 ms serial steps);
   - a block of timed team steps (FBP_BLOCK_NS of them or more, stalls
     included, and at least FBP_BLOCK_STEPS steps: one long step is judged
     by the rule above, with the steps before it) not 10% faster than
     serial ones on average: the same back-off.  (A team only a few per
     cent faster on average is inside this host's noise, which moved
     serial steps by 30% within seconds, and on a busy machine it kept
     1,000 team steps in one traced run, 8% slower in all than serial
     ones; idle, 784-256-128-10 b128 team steps are 1.4-1.6x faster.)
     On a busy core, 784-256-128-10 b128 team steps ran 1.1-1.2 ms while
     the worker had its core and 5.5 ms (no wait: thread 0 shared a core)
     when not, 2.6 ms on average against 1.75 ms serial steps, and no two
     slow steps came in a row (traced: whole epochs on the team, 15-40%
     slower than serial ones);
   - a step of FBP_FIRST_TIMED_NS or more needs no second one in a row,
     for either reason (a hiccup does not make so long a step twice as
     slow, and a call of a few long steps has no second one to wait for);
     a slow one is still judged with the running mean and the block so far;
   - after a back-off for either reason, the first attempt that fails in
     the same way backs off again at once (the strikes stand until a good
     step);
   - otherwise a good step ends the back-off, and a block judged faster
     than serial steps its doubling (one fast step between stalls does
     not: the stalls of the steps around it are the attempt's cost); and
     after a coarse step that waited more than an eighth of it, fine tiles
     (less to wait for, more packing) for 16 steps' time, doubling while
     coarse steps keep waiting, up to a second.
   The first step of a team may wait for the other threads to start
   (tens of microseconds on an idle machine), and so may the first after a
   back-off (the workers fell asleep while thread 0 ran serially: a futex
   wake-up took 0.3-0.5 ms here, a third of a 784-256-128-10 b128 team
   step, so that timing it made one slow back-off follow another): such a
   step is never a reason for fine tiles or for ending a back-off's
   doubling, and it is timed only when it took FBP_FIRST_TIMED_NS or
   more, long enough for that start not to matter.  (A call of a few long
   steps, such as an epoch of 4 steps of 1024-2048-2048-1024, would
   otherwise run two team steps after each back-off before it can see
   that they are no faster than serial ones.) */
#define FBP_FIRST_TIMED_NS 50000000LL
#define FBP_BLOCK_NS 50000000LL
#define FBP_BLOCK_STEPS 4
/* Fine tiles for 16 steps' time, doubling while coarse steps keep
   waiting, up to a second. */
static void fbp_go_fine(fbp_tune *u, int64_t step_ns, int64_t now) {
    int64_t f = 16 * step_ns;
    if (u->fine_len * 2 > f) f = u->fine_len * 2;
    if (f > 1000000000LL) f = 1000000000LL;
    u->fine_len = f;
    u->fine_until = now + f;
    FBP_STAT(fines, 1);
}
static void fbp_team_account(fbp_team *T, int64_t key, int64_t step_ns, int64_t wait_ns,
                             int fine) {
    fbp_tune *u = &T->tune;
    int64_t now = fbp_now_ns();
    int first = T->n_team_steps++ == 0;
    if (u->key != key) return;
    first |= (int)u->untimed;
    u->untimed = 0;
    int timed = !first || step_ns >= FBP_FIRST_TIMED_NS;
    if (timed) {
        u->par_ns = fbp_mean_in(u->par_ns, step_ns);
        u->blk_ns += step_ns;
        u->blk_n++;
    }
    if (2 * wait_ns > step_ns && wait_ns > 20000) {
        if (u->strikes++ >= 1 || step_ns >= FBP_FIRST_TIMED_NS) {   /* twice in a row, or long */
            fbp_back_off(u, 20 * wait_ns, now, 0);
            return;
        }
        /* one such step alone: a thread lost its core for a moment (a
           shared host's hiccup); fine tiles and the next step decide */
        fbp_go_fine(u, step_ns, now);
        return;
    }
    u->strikes = 0;
    int64_t ser_ns = fbp_ser_ns(u, now);
    int passed = 0;         /* a block of team steps was faster than serial steps */
    if (u->blk_ns >= FBP_BLOCK_NS && u->blk_n >= FBP_BLOCK_STEPS) {
        int64_t mean = u->blk_ns / u->blk_n, blk_ns = u->blk_ns, blk_n = u->blk_n;
        u->blk_ns = u->blk_n = 0;
        if (ser_ns != 0 && 10 * mean >= 9 * ser_ns) {      /* not 10% faster */
            fbp_back_off(u, 50 * mean, now, 1);
            return;
        }
        passed = 1;
        u->prev_ns = blk_ns;
        u->prev_n = blk_n;
    }
    if (ser_ns != 0 && u->par_ns != 0 && 50 * u->par_ns >= 49 * ser_ns
            && timed && 50 * step_ns >= 49 * ser_ns
            && 10 * (u->prev_ns + u->blk_ns) >= 9 * ser_ns * (u->prev_n + u->blk_n)) {
        if (u->slow_strikes++ >= 1 || step_ns >= FBP_FIRST_TIMED_NS) {
            fbp_back_off(u, 50 * u->par_ns, now, 1);
        }
        return;     /* a strike: the next step decides (nor does it end a back-off) */
    } else if (timed) {
        u->slow_strikes = 0;
    }
    if (first && u->par_ns == 0 && u->backoff != 0) return;   /* judged by the next step */
    if (passed) u->backoff = 0;     /* the attempt succeeded: the next back-off starts afresh */
    u->serial_until = 0;
    if (fine || first) return;
    if (8 * wait_ns > step_ns && wait_ns > 20000) {
        fbp_go_fine(u, step_ns, now);
    } else {
        u->fine_len = 0;
    }
}
/* The hint a new team starts from, and where it leaves what it learnt
   (a try-lock: another Python thread's call in between only loses a hint). */
static void fbp_tune_load(fbp_team *T, int64_t key) {
    if (!__atomic_test_and_set(&fbp_tune_lock, __ATOMIC_ACQUIRE)) {
        T->tune = fbp_tune_hint;
        __atomic_clear(&fbp_tune_lock, __ATOMIC_RELEASE);
    }
    if (T->tune.key != key) {   /* the timings are of another shape */
        T->tune.key = key;
        T->tune.ser_n = T->tune.ser_next = T->tune.ser_at = 0;
        T->tune.par_ns = T->tune.blk_ns = T->tune.blk_n = 0;
        T->tune.prev_ns = T->tune.prev_n = 0;
        if (T->tune.slow)       /* and so was the slowness */
            T->tune.serial_until = T->tune.backoff = T->tune.slow = 0;
    }
}
static void fbp_tune_store(const fbp_team *T) {
    if (__atomic_test_and_set(&fbp_tune_lock, __ATOMIC_ACQUIRE)) return;
    fbp_tune_hint = T->tune;
    __atomic_clear(&fbp_tune_lock, __ATOMIC_RELEASE);
}
/* Test hook: a new team's account of n made-up coarse team steps of one
   shape (key 1: step[i], wait[i] ns), after n_ser serial steps ser[j] ns
   (-1: the serial steps so far age by FBP_SER_STALE_NS, as if that time
   had passed; aged twice, they are forgotten): out[0] the mean
   team step it keeps (par_ns), out[1] 1 if it is backing off (running
   serially) after them, out[2] how long its last back-off was (ns; 0:
   none since a block of team steps passed).  With then_key != 0, what a
   call's next team learns from it instead: the team stored as a call ends
   (fbp_tune_store) and loaded by a new team for steps of shape then_key
   (fbp_tune_load; 1: the same shape).  The hint is restored after. */
static void fbp_team_account_test(int n_ser, const int64_t *ser,              /* IN */
                                  int n, const int64_t *step,                  /* IN */
                                  const int64_t *wait, int64_t then_key,       /* IN */
                                  int64_t *out) {                              /* OUT */
    fbp_team T;
    memset(&T, 0, sizeof T);
    T.tune.key = 1;
    for (int j = 0; j < n_ser; j++) {
        if (ser[j] >= 0) {
            fbp_serial_account(&T, 1, ser[j], fbp_now_ns());
        } else {
            for (int i = 0; i < T.tune.ser_n; i++) T.tune.ser_end[i] -= FBP_SER_STALE_NS + 1;
            T.tune.ser_at -= FBP_SER_STALE_NS + 1;
        }
    }
    for (int i = 0; i < n; i++) fbp_team_account(&T, 1, step[i], wait[i], 0);
    if (then_key != 0) {
        fbp_tune saved = fbp_tune_hint;
        fbp_tune_store(&T);
        memset(&T, 0, sizeof T);
        fbp_tune_load(&T, then_key);
        fbp_tune_hint = saved;
    }
    out[0] = T.tune.par_ns;
    out[1] = T.tune.serial_until != 0;
    out[2] = T.tune.backoff;
}
/* Test hook: forget what earlier calls learnt (the lock is only ever held
   for a copy; never spin for ever, as in a child forked while it was held). */
static void fbp_tune_forget(void) {
    for (int i = 0; i < 1000000; i++) {
        if (!__atomic_test_and_set(&fbp_tune_lock, __ATOMIC_ACQUIRE)) {
            memset(&fbp_tune_hint, 0, sizeof fbp_tune_hint);
            __atomic_clear(&fbp_tune_lock, __ATOMIC_RELEASE);
            return;
        }
    }
}
/* Thread 0, after a team step from t0 to t1 (ns) of which it waited
   `wait` (`wait_last` in the last wave). */
static void fbp_stat_team_step(fbp_team *T, int64_t t0, int64_t t1, int64_t wait,
                               int64_t wait_last, int fine) {
    FBP_STAT(steps_team, 1);
    if (fine) FBP_STAT(steps_fine, 1);
    FBP_STAT(step_ns, t1 - t0);
    FBP_STAT(wait_ns, wait);
    FBP_STAT(wait_last_ns, wait_last);
    if (T->last_end != 0) { FBP_STAT(gap_ns, t0 - T->last_end); FBP_STAT(gaps, 1); }
    T->last_end = t1;
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
        FBP_STAT(wakes, 1);
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
    __atomic_store_n(&T->loss_done, 0, __ATOMIC_SEQ_CST);   /* (no loss tile of g-1 runs) */
    for (int v = 0; v < top; v++) {
        __atomic_store_n(&T->done[v], 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&T->n[v], v < nw ? n[v] : 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&T->word[v], (int64_t)g << 32, __ATOMIC_SEQ_CST);
    }
    T->hi = top;
    __atomic_store_n(&T->nw, nw, __ATOMIC_SEQ_CST);
    __atomic_store_n(&T->loss_wave, loss_wave, __ATOMIC_SEQ_CST);
    __atomic_store_n(&T->published, fbp_now_ns(), __ATOMIC_RELAXED);
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
        FBP_STAT(sleeps_wave, 1);
        fbp_sleep(T, e);
    }
    __atomic_sub_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
    return r;
}
/* Any thread, at the end of a tile of the loss wave v of g and BEFORE
   fbp_team_finish: 1 when it is the last loss tile to get here.  Every
   other loss tile's writes are then visible to it (a chain of seq_cst
   increments), and g cannot end while it has not finished its tile: it
   sums the losses and publishes the verdict (fbp_team_verdict) before
   fbp_team_finish lets anyone past the wave. */
static int fbp_team_loss_last(fbp_team *T, int v) {   /* IN, OUT loss_done */
    return __atomic_add_fetch(&T->loss_done, 1, __ATOMIC_SEQ_CST) ==
           __atomic_load_n(&T->n[v], __ATOMIC_SEQ_CST);
}
static void fbp_team_verdict(fbp_team *T,   /* OUT its verdict */
                             unsigned g, int finite, int caller) {   /* IN */
    FBP_STAT(verdicts, 1);
    if (!caller) FBP_STAT(verdicts_worker, 1);
    __atomic_store_n(&T->verdict, ((int64_t)g << 1) | (finite != 0), __ATOMIC_SEQ_CST);
}
/* After fbp_team_wait_wave(loss wave, g) returned 0: 0 when the loss of g
   is finite, 1 when it is not, -2 when g is over (a late worker: the word
   is already a later generation's).  Never waits: the verdict was stored
   before the wave's last tile was counted done. */
static int fbp_team_read_verdict(fbp_team *T, unsigned g) {   /* IN */
    int64_t d = __atomic_load_n(&T->verdict, __ATOMIC_SEQ_CST);
    int r = (unsigned)((uint64_t)d >> 1) != g ? -2 : (d & 1) ? 0 : 1;
    if (r == 1) FBP_STAT(verdict_stops, 1);
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
        FBP_STAT(sleeps_next, 1);
        fbp_sleep(T, e);
    }
    __atomic_sub_fetch(&T->sleepers, 1, __ATOMIC_SEQ_CST);
    if (g != 0) {
        FBP_STAT(wake_ns, fbp_now_ns() - __atomic_load_n(&T->published, __ATOMIC_RELAXED));
        FBP_STAT(wake_n, 1);
    }
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
