# _steps.pxi (included by _kernels.pyx): one step of a call, cut into tiles.
#
# How a step is planned (row split or unit split), the tiles of its two
# parts, and how the team of a parallel region runs them (fbp_team in
# fbp_team.h).  Why each write inside a parallel region is private to its
# thread is said in the block above `Plan`.

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
#   * row split (enough rows per thread): [pack wave,] row tiles of part 1,
#     then the unit tiles of part 2 (every layer's units, one list).
#     Every row tile multiplies its rows by the whole of each W_k (forward:
#     op(B) = W_k^T; delta_k, k >= 1: op(B) = W_k), and a GEMM packs its
#     op(B) afresh on every call: without more, each row tile would pack
#     every W_k again.  So the step starts with a pack wave (plan_packs):
#     its tiles are column ranges (multiples of the packed NR) of each
#     W_k^T and W_k worth packing (pack_layout: W_k of pack_min_elems
#     elements or more, not sparse X's layer 0, whose forward product walks
#     X's entries; and only where a row tile's product would take the
#     GEMM's blocked path), written by fbp_gemm_pack_b_* into the step's
#     pack buffer; the row tiles then call fbp_gemm_packed_* on those
#     copies (the same bits as gemm: fbp_gemm.h).  The packs live in the
#     call's workspace (call_packs elements, after the activations) and are
#     valid only in the step whose pack wave wrote them: theta changes in
#     part 2, and the next step packs again.  (A predict / loss call is
#     the exception: theta is the same for all its chunks, so each pack is
#     written once per call, by the first chunk whose row split takes it,
#     and later chunks' row tiles read it without a pack wave of their own:
#     reuse_packs, chunk_rows.)  They reach the tiles through the step's
#     Job (job.packs, set by team_run when the plan says use_packs), never
#     through state that outlives the call; a serial step (one thread, a
#     step the team runs serially, the unit split) passes NULL and every
#     GEMM packs its own, as before.  Coarse tiles (one of rows, and one of each layer's units,
#     per thread) unless the last coarse steps left thread 0 waiting: then
#     fine ones (several per thread: less to wait for when a thread loses
#     its core).  Each unit tile of layer k multiplies by the layer's input
#     (op(B) = H_k = layer_in: X's rows, D_k with dropout, else A_k; K = the
#     m batch rows, N = n_in), and its GEMM would pack all of H_k again, cold
#     (the other row tiles wrote the other rows).  So in a training row
#     split each row tile also packs its own rows of H_k (pack_h_rows:
#     fbp_gemm_pack_b_rows_*) right after writing them (H_0 after the
#     gather, H_k after forward_cols of layer k - 1), into the H pack of
#     the step (Plan.hk: pack_layout, for an H_k of hpack_min_elems to
#     hpack_max_elems elements, not sparse X's layer 0, whose gradient walks X's
#     entries; plan_hpacks keeps those whose narrowest unit tile takes the
#     GEMM's blocked path), and the unit tiles call fbp_gemm_packed_* on
#     it (update_units_h; the same bits).  The H packs follow the W packs
#     in the same buffer (call_packs counts both; the layout for the m of
#     each step, monotone in m, so a call sized for its largest batch has
#     room for a shorter last one) and, like them, are valid only in their
#     step;
#   * unit split (a small batch): part 1 layer by layer, each GEMM's output
#     columns cut into tiles: forward waves 0..L-1, one wave of output rows
#     and losses, backprop waves for delta_{L-1} .. delta_1, then the same
#     part-2 wave.  (Each column tile packs only its own columns of W_k: no
#     pack wave.)
# Each tile writes only its own rows (row split) or columns (unit split) of
# A_k / delta_k, its own slots of yhat, lossv, hitv, and in part 2 its own
# rows of W_k, grad, entries of b_k and of colsum; a pack tile writes only
# its own column range of one pack (fbp_gemm_pack_b_*: disjoint ranges
# write disjoint parts of Bp, and each pack has its own 64-byte aligned
# slot of the buffer), reading W_k, which nothing writes before part 2;
# a row tile also writes its own rows of each H pack (fbp_gemm_pack_b_rows_*:
# disjoint row ranges write disjoint bytes, padding lanes included, and
# the H packs have slots of their own after the W packs), reading only the
# rows of H_k it wrote itself (or X's rows);
# what a tile reads was finished in an earlier wave (the row tiles read the
# packs after the pack wave, the unit tiles the H packs after the row
# wave, whose ends fbp_team_wait_wave makes visible; part 2 writes theta,
# grad and colsum, never H_k or its pack), or in an earlier chunk of the
# same forward call (finished before the caller opened this chunk's
# generation, which a thread sees before its first tile).
# So every write inside a parallel region is private to the thread running
# that tile.  The GEMM gives each element the same bits whatever block it
# is computed in, packed op(B) or not (fbp_gemm.h), per-sample losses are
# summed in row order and bias gradients are column sums in row order, so a
# step gives the same bits on 1 thread as on any number of them, whichever
# thread takes which tile, with or without the pack wave.

cdef extern from "fbp_team.h" nogil:
    int FBP_N_STATS
    void fbp_stats_read(int64_t *out)
    void fbp_stats_reset()
    int FBP_MODE_SERIAL, FBP_MODE_PROBE, FBP_MODE_FINE, FBP_MODE_COARSE
    int fbp_team_mode(fbp_team *T, int64_t key)
    void fbp_serial_begin(int mode, int64_t *t)
    void fbp_team_serial_done(fbp_team *T, int64_t key, const int64_t *t)
    void fbp_team_account(fbp_team *T, int64_t key, int64_t step_ns, int64_t wait_ns, int fine)
    void fbp_tune_load(fbp_team *T, int64_t key)
    void fbp_tune_store(const fbp_team *T)
    void fbp_tune_forget()
    void fbp_team_account_test(int n_ser, const int64_t *ser, int n, const int64_t *step,
                               const int64_t *wait, int64_t then_key, int64_t *out)
    int64_t fbp_shape_key(int64_t macs, int64_t m, int flags)
    void fbp_stat_tiles(int caller, int64_t n, int late)
    void fbp_stat_region()
    void fbp_stat_pack_tile()
    void fbp_stat_hpack()
    void fbp_stat_hpack_tile()
    void fbp_stat_team_step(fbp_team *T, int64_t t0, int64_t t1, int64_t wait,
                            int64_t wait_last, int fine)
    int fbp_team_loss_last(fbp_team *T, int v)
    void fbp_team_verdict(fbp_team *T, unsigned g, int finite, int caller)
    int fbp_team_read_verdict(fbp_team *T, unsigned g)

# The fields of fbp_stats_t (fbp_team.h), in order.
_TEAM_STATS = ("regions", "steps_team", "steps_small", "steps_backoff", "backoffs",
               "slow_backoffs", "steps_probe", "steps_fine", "fines", "tiles_caller",
               "tiles_worker", "late", "step_ns", "wait_ns", "wait_last_ns", "gap_ns", "gaps",
               "sleeps_wave", "sleeps_next", "wakes", "wake_ns", "wake_n",
               "verdicts", "verdicts_worker", "verdict_stops", "tiles_pack",
               "hpacks", "tiles_hpack", "probe_ns", "probe_cpu_ns")


def team_stats(bint reset=False):
    """Test hook: what the thread teams did since the last reset, summed
    over calls (a dict of counts and nanoseconds, see fbp_stats_t in
    fbp_team.h); with reset, the counters are zeroed after reading."""
    cdef int64_t v[32]
    assert FBP_N_STATS == len(_TEAM_STATS) and FBP_N_STATS <= 32
    fbp_stats_read(v)
    if reset:
        fbp_stats_reset()
    return {name: int(v[i]) for i, name in enumerate(_TEAM_STATS)}


def team_account_test(steps, ser_ns=0, int64_t then_key=0, bint backoff=False):
    """Test hook: how a new team accounts for made-up coarse team steps
    ``[(step_ns, wait_ns), ...]`` (at most 64) of one shape (key 1) after
    serial steps ``ser_ns``: one step's ns (0: none), or windows of them
    ``[[ns, ...], ...]`` (at most 16 steps), each window ending as if
    FBP_SER_STALE_NS had passed (a step two windows old is forgotten).  Returns ``(par_ns, backing_off)``, the mean
    team step it keeps and whether it now runs serially (fbp_team_account);
    with ``then_key``, the same for the next call's team, of steps of shape
    ``then_key``, after this one stored what it learnt (fbp_tune_load).
    With ``backoff``, also the length of the last back-off in ns (0: none
    since a block of team steps passed)."""
    cdef int64_t st[64]
    cdef int64_t wt[64]
    cdef int64_t sr[32]
    cdef int64_t out[3]
    cdef int i, n = len(steps), n_ser = 0
    if n > 64:
        raise ValueError("at most 64 steps")
    if isinstance(ser_ns, int):
        windows = [[ser_ns]] if ser_ns != 0 else []
    else:
        windows = [list(w) for w in ser_ns]
    if sum(len(w) for w in windows) > 16:
        raise ValueError("at most 16 serial steps")
    for k, w in enumerate(windows):
        for x in w:
            if x <= 0:
                raise ValueError("a serial step takes a positive time")
            sr[n_ser] = x
            n_ser += 1
        if k + 1 < len(windows):
            sr[n_ser] = -1
            n_ser += 1
    for i in range(n):
        st[i], wt[i] = steps[i]
    fbp_team_account_test(n_ser, sr, n, st, wt, then_key, out)
    if backoff:
        return int(out[0]), bool(out[1]), int(out[2])
    return int(out[0]), bool(out[1])


# Tiles of the row split's row and unit waves: 0 as fbp_team_account picks
# (coarse, fine after a step that waited), 1 always fine, 2 always coarse.
# The tests' threshold 0 (par_min_macs) uses coarse unless told otherwise.
cdef int tile_mode = 0


def set_tile_mode(int mode):
    """Test hook: the row split's tiles, 0 as the team picks, 1 fine, 2
    coarse (results are the same); also forgets what earlier calls learnt
    about their steps.  Returns the previous mode."""
    global tile_mode
    if mode not in (0, 1, 2):
        raise ValueError("the tile mode must be 0, 1 or 2")
    previous, tile_mode = tile_mode, mode
    fbp_tune_forget()
    return previous


cdef enum:
    PK_BACK = 64            # Plan.pk[PK_BACK + k]: the pack of W_k for delta_k
    PK_SLOTS = 128


cdef struct Plan:
    int nt                  # threads asked for (1: serial, no parallel region)
    bint by_units           # unit split (else row split)
    int n_waves
    int loss_wave           # the loss is complete after this wave (-1: no loss)
    int64_t row_align       # row tiles start at multiples of this
    int64_t mr, nr          # the GEMM's micro-tile (units align to mr, columns to nr)
    int64_t p2_first[65]    # part 2: first tile of layer k in the last wave; [L] = count
    int n_tiles[MAX_WAVES]  # tiles of each wave
    # The pack wave of a row split (pack_layout, make_plan_tiles):
    int pack_wave           # 0, or -1: none (every GEMM packs its own op(B), or reuse_packs
                            # left none to write)
    bint use_packs          # the row tiles read the packs of pk[] (Job.packs): a pack
                            # wave, or packs an earlier chunk of the call wrote
    int row_wave            # the row split's wave of row tiles (1 after a pack wave, else 0)
    int n_packs             # packs the pack wave writes
    int64_t pk_nr           # pack tiles' columns start at multiples of this (fbp_gemm_packed_nr)
    int64_t pk[PK_SLOTS]    # where in the step's packs the row tiles find W_k^T (pk[k], forward)
                            # and W_k (pk[PK_BACK + k], delta_k) packed; -1: gemm packs it
    int pk_slot[PK_SLOTS]   # pack i of the wave is pk[pk_slot[i]]
    int pk_first[PK_SLOTS + 1]   # pack i's first tile in the pack wave; [n_packs] = count
    # The H packs of a training row split (pack_layout, plan_hpacks):
    int n_hpacks            # layers whose input H_k the row tiles pack (0: none)
    int64_t hk[64]          # where in the step's packs H_k (op(B) of layer k's part-2
                            # product: K = m rows, N = n_in) goes; -1: the unit tiles pack it


cdef struct Job:
    # One step (or forward chunk) as every thread of the team reads it (only
    # after claiming one of its tiles: then it cannot change; the loss
    # verdict too is taken while holding one, see team_waves).
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
    void *packs             # this step's packs (Plan.pk), 64-byte aligned, or NULL


cdef inline int64_t part(int64_t n, int64_t t, int64_t nt) noexcept nogil:
    """Start of part t of n items split into nt contiguous parts."""
    return n * t // nt


cdef inline int64_t cut(int64_t n, int64_t t, int64_t nt, int64_t align) noexcept nogil:
    """Start of tile t of n items cut into nt tiles at multiples of align."""
    return min(n, part((n + align - 1) // align, t, nt) * align)


cdef inline int tiles_for(int64_t n, int64_t macs, int64_t align, int nt,
                          int per_thread=UNIT_TILES_PER_THREAD) noexcept nogil:
    """Tiles for n items (at multiples of align) worth `macs` multiply-adds,
    at most per_thread per thread."""
    cdef int64_t t = per_thread * nt, lim = (n + align - 1) // align
    if par_min_macs > 0:
        t = min(t, max(<int64_t>1, 4 * macs // par_min_macs))
    return <int>max(<int64_t>1, min(min(t, lim), <int64_t>MAX_TILES))


cdef inline int64_t widest(int64_t n, int64_t nt, int64_t align) noexcept nogil:
    """The widest of the tiles cut(n, t, nt, align) (for buffer sizes)."""
    return min(n, (((n + align - 1) // align + nt - 1) // nt) * align)


cdef inline int64_t layer_macs(const Spec *s, int64_t m, int k) noexcept nogil:
    """The multiply-adds of layer k's forward product for m rows, the
    planner's cost of it: m n_in n_out, but on sparse X (s.x_nnz >= 0) m
    x_nnz n_out for layer 0, whose forward and gradient walk only the stored
    entries (_sparse.pxi: x_nnz is the data set's mean per row, so every
    step of a call has the same cost and key)."""
    if k == 0 and s.x_nnz >= 0:
        return m * s.x_nnz * s.sizes[1]
    return m * s.sizes[k] * s.sizes[k + 1]


cdef int64_t forward_macs(const Spec *s, int64_t m) noexcept nogil:
    """The multiply-adds of the forward pass of m rows (layer_macs): what the
    threads of a step (make_plan) and its shape key (step_key) go by."""
    cdef int64_t macs = 0
    cdef int k
    for k in range(s.n_layers):
        macs += layer_macs(s, m, k)
    return macs


cdef void make_plan(const Spec *s, int64_t m, bint train, bint with_loss,
                    Plan *p) noexcept nogil:
    """The plan with coarse tiles (the widest tiles: what buffer sizes
    must allow for), without packs."""
    make_plan_tiles(s, m, train, with_loss, False, False, p)


cdef int64_t pack_layout(const Spec *s, bint train, int64_t rows,
                         int64_t *pk,                   # OUT PK_SLOTS offsets
                         int64_t *hk) noexcept nogil:   # OUT n_layers offsets
    """The packs a row-split step of `rows` rows of a call may use, and where
    they go in the call's pack buffer (offsets in elements, multiples of 64
    bytes): pk[k] W_k^T packed for layer k's forward product, pk[PK_BACK + k]
    (training, k >= 1) W_k for delta_k's; -1 for a product that never takes
    one: sparse X's layer 0 (sparse_forward_cols packs nothing), a W_k of
    fewer than pack_min_elems elements.  Training, hk[k]: layer k's input
    H_k (rows x n_in) packed as op(B) of its part-2 product (the row tiles
    pack it by rows), for an H_k of hpack_min_elems to hpack_max_elems
    elements, not
    sparse X's layer 0 (sparse_update_units walks X's entries); -1: none.
    The upper limit is tested on s.h_rows (the call's largest step) where
    it is set, so that the layout stays monotone in rows.
    Returns the buffer's elements, with 64 bytes to align its start (0: no
    packs).  Monotone in rows (for one s.h_rows): a call sized for its
    largest step has room for every shorter one's."""
    cdef int64_t off = 0, n_in, n_out, al = 64 // s.elem
    cdef int k, q
    for q in range(PK_SLOTS):
        pk[q] = -1
    for k in range(s.n_layers):
        hk[k] = -1
    for k in range(s.n_layers):
        n_in, n_out = s.sizes[k], s.sizes[k + 1]
        if n_in * n_out < pack_min_elems:
            continue
        if not (k == 0 and s.x_nnz >= 0):
            pk[k] = off
            off += (fbp_gemm_packed_size(s.elem, n_out, n_in) + al - 1) // al * al
        if train and k >= 1:
            pk[PK_BACK + k] = off
            off += (fbp_gemm_packed_size(s.elem, n_in, n_out) + al - 1) // al * al
    # (the upper limit goes by the call's largest step, s.h_rows: by the
    # step's own rows a shorter last batch could take an H pack that the
    # call's layout, of its largest step, has no room for)
    cdef int64_t h_rows = s.h_rows if s.h_rows > 0 else rows
    for k in range(s.n_layers):
        if (train and hpack_min_elems <= rows * s.sizes[k]
                and h_rows * s.sizes[k] <= hpack_max_elems
                and not (k == 0 and s.x_nnz >= 0)):
            hk[k] = off
            off += (fbp_gemm_packed_size(s.elem, s.sizes[k], rows) + al - 1) // al * al
    return off + al if off > 0 else 0


cdef int64_t call_packs(const Spec *s, int64_t rows, bint train) noexcept nogil:
    """Elements of the pack buffer a call whose largest step has `rows`
    rows needs (pack_layout), 0 when none of its steps can be a row split
    on a team (a step of fewer rows is no more likely to be one)."""
    cdef Plan p
    make_plan(s, rows, train, True, &p)
    if p.nt <= 1 or p.by_units:
        return 0
    return pack_layout(s, train, rows, p.pk, p.hk)


cdef inline floating *align_packs(floating *buf) noexcept nogil:
    """The 64-byte aligned start of a pack buffer (call_packs elements)."""
    return <floating *>((<uintptr_t>buf + 63) & ~(<uintptr_t>63))


cdef int plan_packs(const Spec *s, bint train, int64_t m, int64_t rows,
                    Plan *p) noexcept nogil:
    """The pack wave of a row-split step whose row tiles have at least
    `rows` rows (of m): the packs of pack_layout whose products a row tile would
    run on the GEMM's blocked path (more than PACK_SMALL_MNK multiply-adds;
    on the small path nothing is packed), each cut into column tiles of
    about PACK_TILE_ELEMS elements at multiples of the packed NR.  Returns
    1 with p's pack fields set, or 0 (no pack wave: p.pack_wave = -1)."""
    cdef int q, k, i, n = 0
    cdef int64_t N, K, elems = 0, chunk, t
    p.pack_wave = -1
    p.n_packs = 0
    if pack_layout(s, train, m, p.pk, p.hk) == 0:
        return 0
    for q in range(PK_SLOTS):
        if p.pk[q] < 0:
            continue
        k = q if q < PK_BACK else q - PK_BACK
        if rows * s.sizes[k] * s.sizes[k + 1] <= PACK_SMALL_MNK:
            p.pk[q] = -1
            continue
        p.pk_slot[n] = q
        n += 1
        elems += s.sizes[k] * s.sizes[k + 1]
    if n == 0:
        return 0
    p.pk_nr = fbp_gemm_packed_nr(s.elem)
    chunk = max(<int64_t>PACK_TILE_ELEMS, elems // (MAX_TILES - n) + 1)
    p.pk_first[0] = 0
    for i in range(n):
        q = p.pk_slot[i]
        k = q if q < PK_BACK else q - PK_BACK
        N = s.sizes[k + 1] if q < PK_BACK else s.sizes[k]
        K = s.sizes[k] if q < PK_BACK else s.sizes[k + 1]
        t = max(<int64_t>1, min((N + p.pk_nr - 1) // p.pk_nr, N * K // chunk))
        p.pk_first[i + 1] = p.pk_first[i] + <int>t
    p.n_packs = n
    p.pack_wave = 0
    p.use_packs = True
    p.n_tiles[0] = p.pk_first[n]
    return 1


cdef void reuse_packs(Plan *p,
                      bint *have) noexcept nogil:   # IN/OUT have[q]: pack q already written
    """A chunk of a predict / loss call (chunk_rows): W does not change
    during the call, so a pack that an earlier chunk's pack wave wrote is
    still valid.  Drops those packs from p's pack wave (their pk[q] stay:
    the row tiles read them), and the pack wave itself when none is left
    to write (p.use_packs stays set); marks the packs the wave will write
    in `have` (the call's caller finishes every wave of a chunk before the
    next chunk: fbp_team_wait_wave, and each chunk's generation is opened
    after that)."""
    cdef int i, n = 0, w
    cdef int cnt[PK_SLOTS]
    if p.pack_wave < 0:
        return
    for i in range(p.n_packs):
        if have[p.pk_slot[i]]:
            continue
        cnt[n] = p.pk_first[i + 1] - p.pk_first[i]
        p.pk_slot[n] = p.pk_slot[i]
        have[p.pk_slot[i]] = True
        n += 1
    p.n_packs = n
    for i in range(n):
        p.pk_first[i + 1] = p.pk_first[i] + cnt[i]
    p.n_tiles[0] = p.pk_first[n]
    if n > 0:
        return
    for w in range(p.n_waves - 1):    # no pack to write: the waves move down one
        p.n_tiles[w] = p.n_tiles[w + 1]
    p.n_waves -= 1
    if p.loss_wave >= 0:
        p.loss_wave -= 1
    p.row_wave = 0
    p.pack_wave = -1


cdef void plan_hpacks(const Spec *s, int64_t m, Plan *p) noexcept nogil:
    """The H packs of a training row split of m rows (p.hk of pack_layout,
    set by plan_packs; p.p2_first set): keep H_k where the narrowest unit
    tile of layer k runs its product (units x n_in x m) on the GEMM's
    blocked path (more than PACK_SMALL_MNK multiply-adds: the small path
    packs nothing); sets p.n_hpacks."""
    cdef int k, t, n
    cdef int64_t units, narrow
    p.n_hpacks = 0
    for k in range(s.n_layers):
        if p.hk[k] < 0:
            continue
        units = s.sizes[k + 1]
        n = <int>(p.p2_first[k + 1] - p.p2_first[k])
        narrow = units
        for t in range(n):
            narrow = min(narrow, cut(units, t + 1, n, p.mr) - cut(units, t, n, p.mr))
        if narrow * s.sizes[k] * m <= PACK_SMALL_MNK:
            p.hk[k] = -1
        else:
            p.n_hpacks += 1


cdef void make_plan_tiles(const Spec *s, int64_t m, bint train, bint with_loss, bint fine,
                          bint with_packs, Plan *p) noexcept nogil:
    """Threads, split and tiles for m rows: a training step (train), or a
    forward pass, with per-sample losses when with_loss; with_packs: a row
    split may start with a pack wave (plan_packs; the caller has a pack
    buffer of call_packs elements).

    The row split's tiles are coarse (one tile of rows and one of each
    layer's units per thread: each unit tile packs the layer's input again,
    and each row tile the W_k the pack wave leaves out, so the fewer the
    cheaper) or,
    when the last coarse steps left thread 0 waiting (fine), ROW_TILES_ /
    UNIT_TILES_PER_THREAD per thread (less to wait for when a thread loses
    its core).  The unit split's column tiles pack only their own slice of
    W_k: always UNIT_TILES_PER_THREAD.  Any tiles give the same bits."""
    # (a training step on sparse X may also pass over all of W_0: s.x_update)
    cdef int64_t macs = forward_macs(s, m) + (s.x_update if train else 0), units, work
    cdef int64_t t1 = 0, rows, i
    cdef int k, L = s.n_layers, nw = 0, nt = s.n_threads
    if par_min_macs > 0:
        nt = <int>min(<int64_t>nt, macs // par_min_macs)
    p.nt = max(1, nt)
    p.loss_wave = -1
    p.n_waves = 0
    p.pack_wave = -1
    p.use_packs = False
    p.row_wave = 0
    p.n_packs = 0
    p.n_hpacks = 0
    if p.nt == 1:
        return
    fbp_gemm_tile_shape(s.elem, &p.mr, &p.nr)
    nt = p.nt
    p.by_units = m < <int64_t>ROWS_PER_THREAD * nt
    if not p.by_units and not fine:   # halves (thirds...) of the rows
        p.row_align = 1
        t1 = nt
    elif not p.by_units:
        p.row_align = p.mr if m >= 4 * p.mr * nt else 1
        work = 3 * macs if train else macs
        t1 = max(<int64_t>ROW_TILES_PER_THREAD * nt, work // TILE_MACS)
        t1 = min(t1, max(<int64_t>ROW_TILES_PER_THREAD * nt, m // ROW_TILE_MIN_ROWS))
        t1 = min(t1, (m + p.row_align - 1) // p.row_align)
    if not p.by_units:
        if with_packs:   # the shortest row tile decides which products take a pack
            rows = m
            for i in range(t1):
                rows = min(rows, cut(m, i + 1, t1, p.row_align) - cut(m, i, t1, p.row_align))
            nw = plan_packs(s, train, m, rows, p)
        p.row_wave = nw
        p.n_tiles[nw] = <int>t1
        if with_loss:
            p.loss_wave = nw
        nw += 1
    else:
        for k in range(L):       # forward, layer by layer, output columns
            p.n_tiles[nw] = tiles_for(s.sizes[k + 1], layer_macs(s, m, k), p.nr, nt,
                                      UNIT_TILES_PER_THREAD)
            nw += 1
        p.n_tiles[nw] = <int>min(m, <int64_t>nt)   # output activation (and loss) rows
        if with_loss:
            p.loss_wave = nw
        nw += 1
        if train:
            for k in range(L - 1, 0, -1):   # delta_k, columns
                p.n_tiles[nw] = tiles_for(s.sizes[k], m * s.sizes[k] * s.sizes[k + 1], p.nr, nt,
                                          UNIT_TILES_PER_THREAD)
                nw += 1
    if train:
        # (part 2 costs layer 0 densely on sparse X too: with Adam its update
        # is dense in W_0, and its tiles pack nothing, so more cost little)
        p.p2_first[0] = 0
        for k in range(L):
            units = s.sizes[k + 1]
            p.p2_first[k + 1] = p.p2_first[k] + tiles_for(
                units, m * s.sizes[k] * units, p.mr, nt,
                UNIT_TILES_PER_THREAD if fine or p.by_units else 1)
        p.n_tiles[nw] = <int>p.p2_first[L]
        nw += 1
        if with_packs and not p.by_units:
            plan_hpacks(s, m, p)
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


cdef inline const floating *packed_w(const floating *packs,   # IN the step's packs, or NULL
                                     const int64_t *pk, int q) noexcept nogil:
    """The packed W_k of slot q (Plan.pk) for a row tile, or NULL: its GEMM
    packs W_k itself (no pack wave, or none for this product)."""
    if packs == NULL or pk[q] < 0:
        return NULL
    return packs + pk[q]


cdef inline void pack_h_rows(const Spec *s, const Extra *e, floating *ws, const Work *w,
                             const floating *x,    # IN  batch input, row 0 (ld n_in)
                             int k, int64_t m, int64_t r0, int64_t r1,
                             floating *packs,      # OUT rows r0..r1 of H_k packed (Plan.hk)
                             const int64_t *hk) noexcept nogil:
    """Rows r0..r1 of layer k's input H_k (layer_in: X's rows, D_k or A_k),
    just written by this row tile, into H_k's pack of the step (op(B) of
    the part-2 product, K = m), if it has one: a row range writes only its
    own bytes of the pack (fbp_gemm_pack_b_rows_*)."""
    if hk == NULL or hk[k] < 0:
        return
    pack_b_rows(0, s.sizes[k], m, layer_in(e, ws, w, x, k), s.sizes[k],
                packs + hk[k], r0, r1)
    fbp_stat_hpack()


cdef void forward_rows(const Spec *s, const Extra *e,
                       const floating *theta,       # IN  parameters
                       floating *ws, const Work *w,  # OUT activations, yhat rows r0..r1
                       const floating *x,           # IN  batch input, row 0 (ld n_in)
                       int64_t r0, int64_t r1,
                       const floating *packs,       # IN  the step's packs (Plan.pk), or NULL
                       const int64_t *pk) noexcept nogil:
    """Every layer's activations for batch rows r0..r1, cached in the workspace."""
    forward_rows_h(s, e, theta, ws, w, x, r0, r1, packs, pk, NULL, 0)


cdef void forward_rows_h(const Spec *s, const Extra *e,
                         const floating *theta,       # IN  parameters
                         floating *ws, const Work *w,  # OUT activations, yhat rows r0..r1
                         const floating *x,           # IN  batch input, row 0 (ld n_in)
                         int64_t r0, int64_t r1,
                         const floating *packs,       # IN  the step's packs (Plan.pk); OUT rows r0..r1
                                                      #     of the H packs (Plan.hk), or NULL
                         const int64_t *pk,
                         const int64_t *hk,           # Plan.hk of a training row split, or NULL
                         int64_t m) noexcept nogil:   # the batch's rows (K of the H packs)
    """forward_rows, and with hk, each H_k (k >= 1) packed by rows r0..r1
    right after forward_cols wrote them (pack_h_rows; H_0 is the caller's)."""
    cdef int k, L = s.n_layers
    cdef int64_t i, n_out
    for k in range(L):
        forward_cols(s, e, theta, ws, w, x, k, r0, r1, 0, s.sizes[k + 1],
                     packed_w(packs, pk, k))
        if hk != NULL and k + 1 < L:
            pack_h_rows(s, e, ws, w, x, k + 1, m, r0, r1, <floating *>packs, hk)
    n_out = s.sizes[L]
    for i in range(r0, r1):
        output_row(s, ws + w.act[L] + i * n_out, ws + w.yhat + i * n_out)


cdef inline void forward_cols(const Spec *s, const Extra *e, const floating *theta,
                              floating *ws, const Work *w,   # OUT A_{k+1}[r0:r1, j0:j1] (and D_{k+1})
                              const floating *x,             # IN  batch input (ld n_in)
                              int k, int64_t r0, int64_t r1, int64_t j0, int64_t j1,
                              const floating *bp) noexcept nogil:  # IN W_k^T packed, or NULL
    """A_{k+1}[r0:r1, j0:j1] = act(A_k[r0:r1] W_k[j0:j1]^T + b_k[j0:j1]) (with
    dropout, the input is D_k and D_{k+1} gets the masked block).  With bp
    (all the columns: j0 = 0, j1 = n_out), the GEMM reads W_k^T from the
    pack wave's copy instead of packing it: the same bits."""
    cdef int64_t n_in = s.sizes[k], n_out = s.sizes[k + 1]
    if k == 0 and e.sp != NULL:   # sparse X: _sparse.pxi
        sparse_forward_cols(s, e, theta, ws, w, r0, r1, j0, j1)
        return
    if bp != NULL:
        gemm_packed(0, r1 - r0, n_out, n_in,
                    <floating>1, layer_in(e, ws, w, x, k) + r0 * n_in, n_in, bp,
                    <floating>0, ws + w.act[k + 1] + r0 * n_out, n_out,
                    theta + s.b_off[k] if s.b_off[k] >= 0 else NULL,
                    s.hidden if k < s.n_layers - 1 else ACT_IDENTITY, NULL, 0)
    else:
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
                               int k, int64_t r0, int64_t r1, int64_t j0, int64_t j1,
                               const floating *bp) noexcept nogil:  # IN W_k packed, or NULL
    """delta_k[r0:r1, j0:j1] = (delta_{k+1}[r0:r1] W_k[:, j0:j1]) * act'(A_k[r0:r1, j0:j1])
    (times the dropout mask and scale of layer k).  With bp (all the
    columns: j0 = 0, j1 = n_in), W_k comes from the pack wave's copy."""
    cdef int64_t n_in = s.sizes[k], n_out = s.sizes[k + 1]
    if bp != NULL:
        gemm_packed(0, r1 - r0, n_in, n_out,
                    <floating>1, ws + w.delta[k + 1] + r0 * n_out, n_out, bp,
                    <floating>0, ws + w.delta[k] + r0 * n_in, n_in,
                    NULL, s.hidden, ws + w.act[k] + r0 * n_in, n_in)
    else:
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
                        int64_t r0, int64_t r1,
                        const floating *packs,        # IN  the step's packs (Plan.pk), or NULL
                        const int64_t *pk) noexcept nogil:
    """delta_k = (delta_{k+1} W_k) * act'(A_k) for rows r0..r1, k = L-1 .. 1."""
    cdef int k
    for k in range(s.n_layers - 1, 0, -1):
        backprop_cols(s, e, theta, ws, w, k, r0, r1, 0, s.sizes[k],
                      packed_w(packs, pk, PK_BACK + k))


cdef void gather_rows(const Spec *s, floating *ws, const Work *w,
                      const floating *X, const floating *Y,   # IN the data set
                      const int64_t *rows,                    # IN the batch's row indices
                      int64_t r0, int64_t r1) noexcept nogil:
    """Copy rows r0..r1 of the batch into A_0 and y."""
    # (no A_0: sparse X, _sparse.pxi)
    cdef int64_t i, j, n_in = s.sizes[0] if w.act[0] >= 0 else 0, n_out = s.sizes[s.n_layers]
    for i in range(r0, r1):
        if n_in >= 16:   # memcpy for longer rows, loops for tiny nets' few values
            memcpy(ws + w.act[0] + i * n_in, X + rows[i] * n_in, n_in * sizeof(floating))
        else:
            for j in range(n_in):
                ws[w.act[0] + i * n_in + j] = X[rows[i] * n_in + j]
        for j in range(n_out):
            ws[w.y + i * n_out + j] = Y[rows[i] * n_out + j]


cdef void phase1(const Spec *s, const Extra *e, const floating *theta,
                 floating *ws, const Work *w,
                 const floating *X, const floating *Y,   # IN the data set
                 const int64_t *rows,                    # IN the batch's row indices, or NULL
                 int64_t start, int64_t m, int64_t r0, int64_t r1,
                 bint want_delta,
                 const floating *packs,                  # IN the step's packs (Plan.pk), or NULL
                 const int64_t *pk) noexcept nogil:
    """Rows r0..r1 of a batch: gather, forward, loss, and (want_delta) backprop."""
    phase1_h(s, e, theta, ws, w, X, Y, rows, start, m, r0, r1, want_delta, packs, pk, NULL)


cdef void phase1_h(const Spec *s, const Extra *e, const floating *theta,
                   floating *ws, const Work *w,
                   const floating *X, const floating *Y,   # IN the data set
                   const int64_t *rows,                    # IN the batch's row indices, or NULL
                   int64_t start, int64_t m, int64_t r0, int64_t r1,
                   bint want_delta,
                   const floating *packs,                  # IN the step's packs (Plan.pk), or NULL;
                                                           # OUT rows r0..r1 of the H packs
                   const int64_t *pk,
                   const int64_t *hk) noexcept nogil:      # Plan.hk (training row split), or NULL
    """phase1, and with hk, rows r0..r1 of each H_k packed for part 2 as
    soon as they are written (H_0: after the gather)."""
    cdef const floating *x = X + start * s.sizes[0]
    cdef const floating *y = Y + start * s.sizes[s.n_layers]
    if rows != NULL:
        gather_rows(s, ws, w, X, Y, rows, r0, r1)
        x = ws + w.act[0]
        y = ws + w.y
    if hk != NULL:
        pack_h_rows(s, e, ws, w, x, 0, m, r0, r1, <floating *>packs, hk)
    forward_rows_h(s, e, theta, ws, w, x, r0, r1, packs, pk, hk, m)
    loss_rows(s, e, ws, w, y, rows, start, m, r0, r1, want_delta)
    if want_delta:
        backprop_rows(s, e, theta, ws, w, r0, r1, packs, pk)


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
    update_units_h(s, e, theta, grad, lr, snap, ws, w, x, m, k, o0, o1, NULL)


cdef inline void units_product(int64_t n_units, int64_t n_in, int64_t m, floating alpha,
                               const floating *d, int64_t ld_d,  # IN  delta_{k+1}'s columns of the units
                               const floating *h,       # IN  H_k (m x n_in, ld n_in)
                               const floating *hp,      # IN  H_k packed by the row tiles, or NULL
                               floating beta,
                               floating *c) noexcept nogil:  # OUT the units' rows (ld n_in)
    """c = alpha d^T H_k + beta c for n_units units: op(B) = H_k read from
    its H pack (hp) or packed by the GEMM itself; the same bits."""
    if hp != NULL:
        gemm_packed(1, n_units, n_in, m, alpha, d, ld_d, hp, beta, c, n_in,
                    NULL, ACT_IDENTITY, NULL, 0)
    else:
        gemm(1, 0, n_units, n_in, m, alpha, d, ld_d, h, n_in, beta, c, n_in,
             NULL, ACT_IDENTITY, NULL, 0, 1)


cdef void update_units_h(const Spec *s, const Extra *e,
                         floating *theta,        # IN, and OUT when grad == NULL or on the optimizer path
                         floating *grad,         # OUT gradient of the batch objective, or NULL
                         floating lr,            # the SGD step when grad == NULL
                         floating *snap,         # OUT copy of what this call updates, or NULL
                         floating *ws, const Work *w,  # IN activations, deltas; colsum scratch
                         const floating *x,      # IN batch input, row 0 (ld n_in)
                         int64_t m, int k, int64_t o0, int64_t o1,
                         const floating *hp) noexcept nogil:  # IN H_k packed by the row tiles, or NULL
    """update_units; with hp, the product reads op(B) = H_k from the step's
    H pack (Plan.hk) instead of packing H_k itself: the same bits."""
    cdef int64_t j, n_in = s.sizes[k], n_out = s.sizes[k + 1]
    cdef const floating *d = ws + w.delta[k + 1] + o0   # columns o0..o1 of delta (ld n_out)
    cdef const floating *h = layer_in(e, ws, w, x, k)
    cdef floating *colsum
    if o1 <= o0:
        return
    if k == 0 and e.sp != NULL:   # sparse X: _sparse.pxi
        sparse_update_units(s, e, theta, grad, lr, snap, ws, w, m, o0, o1)
        return
    if hp != NULL:
        fbp_stat_hpack_tile()
    if grad != NULL:
        units_product(o1 - o0, n_in, m, <floating>1, d, n_out, h, hp,
                      <floating>0, grad + s.w_off[k] + o0 * n_in)
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
    units_product(o1 - o0, n_in, m, -lr, d, n_out, h, hp,
                  <floating>1, theta + s.w_off[k] + o0 * n_in)
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


cdef void pack_tile(const Spec *s, const Plan *p, int64_t t,
                    const floating *theta,   # IN  the W_k (unchanged until part 2)
                    floating *packs) noexcept nogil:   # OUT this tile's columns of one pack
    """Tile t of the pack wave: columns [j0, j1) of op(B) of one pack
    (W_k^T for the forward product, W_k for delta_k's) into its slot."""
    cdef int i = 0, q, k
    cdef int64_t n, N, K
    while p.pk_first[i + 1] <= t:
        i += 1
    q = p.pk_slot[i]
    n = p.pk_first[i + 1] - p.pk_first[i]
    t -= p.pk_first[i]
    k = q if q < PK_BACK else q - PK_BACK
    N = s.sizes[k + 1] if q < PK_BACK else s.sizes[k]
    K = s.sizes[k] if q < PK_BACK else s.sizes[k + 1]
    pack_b(1 if q < PK_BACK else 0, N, K, theta + s.w_off[k], s.sizes[k],
           packs + p.pk[q], cut(N, t, n, p.pk_nr), cut(N, t + 1, n, p.pk_nr))
    fbp_stat_pack_tile()


cdef void run_tile(const Spec *s, const Plan *p, int wave, int64_t t, const Job *job,
                   floating *theta, floating *ws, const Work *w,
                   const floating *X, const floating *Y) noexcept nogil:
    """Tile t of wave `wave` of the plan (see the block above Plan)."""
    cdef int L = s.n_layers, k
    cdef int64_t n = p.n_tiles[wave], a, b, i
    cdef floating *packs = <floating *>job.packs if p.use_packs or p.n_hpacks > 0 else NULL
    cdef const int64_t *hk = p.hk if packs != NULL and p.n_hpacks > 0 else NULL
    cdef const Extra *e = job.e
    cdef const int64_t *rows = job.rows
    cdef int64_t start = job.start, m = job.m
    cdef bint train = job.train
    cdef const floating *x = X + start * s.sizes[0]
    cdef const floating *y = Y + start * s.sizes[L] if Y != NULL else NULL
    if rows != NULL:
        x = ws + w.act[0]
        y = ws + w.y
    if wave == p.pack_wave:                   # row split: columns of one packed W_k
        pack_tile(s, p, t, theta, packs)
    elif train and wave == p.n_waves - 1:     # part 2: the units of one layer
        k = 0
        while p.p2_first[k + 1] <= t:
            k += 1
        n = p.p2_first[k + 1] - p.p2_first[k]
        t -= p.p2_first[k]
        update_units_h(s, e, theta, <floating *>job.grad, <floating>job.lr, <floating *>job.snap,
                       ws, w, x, m, k,
                       cut(s.sizes[k + 1], t, n, p.mr), cut(s.sizes[k + 1], t + 1, n, p.mr),
                       packs + hk[k] if hk != NULL and hk[k] >= 0 else NULL)
    elif not p.by_units:                      # row split: rows through everything
        a, b = cut(m, t, n, p.row_align), cut(m, t + 1, n, p.row_align)
        if Y == NULL:
            forward_rows(s, e, theta, ws, w, x, a, b, packs, p.pk)
        else:
            phase1_h(s, e, theta, ws, w, X, Y, rows, start, m, a, b, train, packs, p.pk,
                     hk if train else NULL)
    elif wave < L:                            # unit split: forward of layer `wave`
        k = wave
        forward_cols(s, e, theta, ws, w, x, k, 0, m, cut(s.sizes[k + 1], t, n, p.nr),
                     cut(s.sizes[k + 1], t + 1, n, p.nr), NULL)
    elif wave == L:                           # output activation and loss rows
        a, b = part(m, t, n), part(m, t + 1, n)
        for i in range(a, b):
            output_row(s, ws + w.act[L] + i * s.sizes[L], ws + w.yhat + i * s.sizes[L])
        if Y != NULL:
            loss_rows(s, e, ws, w, y, rows, start, m, a, b, train)
    else:                                     # delta_k, k = L-1 .. 1
        k = L - 1 - (wave - L - 1)
        backprop_cols(s, e, theta, ws, w, k, 0, m, cut(s.sizes[k], t, n, p.nr),
                      cut(s.sizes[k], t + 1, n, p.nr), NULL)


# What each thread of a team step reads and writes.  Inside a tile: only
# its own slots (the block above Plan), and it reads the Job, theta and the
# workspace only after claiming the tile (g cannot end while it holds one).
# Outside a tile a thread writes nothing but fbp_team's atomics and its own
# locals (the caller: also `waited`, its own).  The loss verdict of a
# training step: the thread that finishes the last tile of the loss wave,
# still holding that tile (fbp_team_loss_last), sums lossv in row order and
# publishes whether the sum is finite (fbp_team_verdict, one atomic word
# tagged with g) before it counts the tile done; every thread reads the word
# once the wave is finished (fbp_team_read_verdict), so nobody waits for the
# verdict and no thread reads lossv or the Job after its last tile (g may be
# over and the caller writing g + 1's by then).  A late worker reads a later
# generation's word as -2.  batch_step reads lossv again after the step: the
# caller's own read, every loss tile finished before.
cdef int team_waves(fbp_team *T, unsigned g, const Spec *s, const Work *w, Job *job,
                    floating *theta, floating *ws, const floating *X, const floating *Y,
                    bint caller, int64_t *waited) noexcept nogil:
    """One thread's share of generation g: take tiles until a wave has none
    left, wait for the ones still running, go on to the next wave.  After the
    loss wave of a training step (lw; -1 for a forward pass) every thread
    reads the verdict that the thread of the wave's last tile published (see
    the block above), and stops before the updates when the sum is not
    finite (returns 1).  -2: generation g is over (a late thread).  Workers
    do not wait for the last wave; the caller does, so the step is complete
    when it returns; it adds its waiting to waited[0] (and that of the last
    wave to waited[1])."""
    cdef int v, t, r = 0, nw = fbp_team_nw(T), lw = fbp_team_loss_wave(T)
    cdef int64_t t0, dt, ran = 0
    for v in range(nw):
        while True:
            t = fbp_team_claim(T, v, g)
            if t == -2:
                fbp_stat_tiles(caller, ran, 1)
                return -2
            if t < 0:
                break
            run_tile(s, &job.plan, v, t, job, theta, ws, w, X, Y if job.has_y else NULL)
            if v == lw and fbp_team_loss_last(T, v):   # still holding the tile
                fbp_team_verdict(T, g, isfinite(row_sum(ws + w.lossv, job.m)), caller)
            fbp_team_finish(T, v)
            ran += 1
        if v == nw - 1 and not caller:
            break
        if caller:
            t0 = fbp_now_ns()
            r = fbp_team_wait_wave(T, v, g)
            dt = fbp_now_ns() - t0
            waited[0] += dt
            if v == nw - 1:
                waited[1] += dt
        else:
            r = fbp_team_wait_wave(T, v, g)
        if r != 0:
            fbp_stat_tiles(caller, ran, 1)
            return -2
        if v == lw:
            r = fbp_team_read_verdict(T, g)
            if r == -2:
                fbp_stat_tiles(caller, ran, 1)
                return -2
            if r == 1:
                break
    fbp_stat_tiles(caller, ran, 0)
    return r


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


cdef inline int64_t step_key(const Spec *s, int64_t m, bint train) noexcept nogil:
    """What identifies the shape of a step for fbp_team_mode's timings."""
    return fbp_shape_key(forward_macs(s, m), m, train)


cdef inline int step_mode(fbp_team *T, int64_t key) noexcept nogil:
    """How thread 0 runs the next step: FBP_MODE_* (see fbp_team_mode)."""
    cdef int mode
    if par_min_macs == 0:    # the tests' threshold: every step through the team
        return FBP_MODE_FINE if tile_mode == 1 else FBP_MODE_COARSE
    mode = fbp_team_mode(T, key)
    if mode >= FBP_MODE_FINE and tile_mode != 0:
        return FBP_MODE_FINE if tile_mode == 1 else FBP_MODE_COARSE
    return mode


cdef void team_run(fbp_team *T, unsigned *gen, Job *job, const Plan *p,
                   const Spec *s, const Work *w, const Extra *e,
                   floating *theta, floating *grad, floating lr, floating *snap,
                   floating *ws, const floating *X, const floating *Y,
                   const int64_t *rows, int64_t start, int64_t m, bint train,
                   int64_t key, bint fine,
                   floating *packs) noexcept nogil:   # the plan's pack buffer, or NULL
    """The caller: publish one step (or chunk) to the team, then take part."""
    cdef int64_t t0 = fbp_now_ns(), t1
    cdef int64_t waited[2]
    cdef unsigned g = gen[0] + 1
    waited[0] = waited[1] = 0
    if g == 0:
        g = 1
    gen[0] = g
    fbp_team_invalidate(T, g)      # from here no claim succeeds until open
    job.plan = p[0]
    job.theta, job.grad, job.snap, job.lr, job.e = theta, grad, snap, lr, e
    job.rows, job.start, job.m, job.train, job.has_y = rows, start, m, train, Y != NULL
    job.packs = packs if p.use_packs or p.n_hpacks > 0 else NULL
    if rows != NULL and p.by_units:   # the (small) batch is gathered first
        gather_rows(s, ws, w, X, Y, rows, 0, m)
    # (the loss verdict is for training steps only: no loss wave otherwise)
    fbp_team_open(T, g, p.n_waves, p.n_tiles, p.loss_wave if train else -1)
    team_waves(T, g, s, w, job, theta, ws, X, Y, True, waited)
    t1 = fbp_now_ns()
    fbp_stat_team_step(T, t0, t1, waited[0], waited[1], fine)
    if par_min_macs > 0:   # (the tests' threshold 0: every step through the team)
        fbp_team_account(T, key, t1 - t0, waited[0], fine)


cdef int batch_step(const Spec *s, const Extra *e, fbp_team *T, unsigned *gen, Job *job,
                    floating *theta,            # IN, OUT when grad == NULL or e.opt fuses the update
                    floating *grad,             # OUT the gradient, or NULL for the fused SGD step
                    floating lr,
                    floating *snap,             # OUT theta before the fused step, or NULL
                    floating *ws, const Work *w,
                    const floating *X, const floating *Y,  # IN the data set
                    const int64_t *rows,        # IN the batch's row indices, or NULL
                    int64_t start, int64_t m,
                    double *loss,               # OUT sum of the batch's per-sample losses
                    floating *packs) noexcept nogil:  # a team step's pack buffer (call_packs), or NULL
    """One batch: the gradient into `grad` (and on the optimizer path of e.opt,
    the optimizer step fused after it), or the plain SGD step on theta.

    Returns 1 (and changes nothing) when the batch loss is not finite.
    Serially the two parts run in turn, every GEMM packing its own op(B);
    with a team (T != NULL) and a step worth splitting, as the plan's waves
    (a row split: first the pack wave into `packs`, valid for this step
    only).  `snap` is filled just before theta changes.
    """
    cdef Plan p
    cdef int k, mode = -1
    cdef int64_t key = 0
    cdef int64_t t0[2]
    cdef const floating *x = X + start * s.sizes[0]
    sparse_bind(e.sp, rows, start)   # sparse X: the batch's rows (_sparse.pxi)
    if T != NULL:
        key = step_key(s, m, True)
        mode = step_mode(T, key)
        if mode >= FBP_MODE_FINE:
            make_plan_tiles(s, m, True, True, mode == FBP_MODE_FINE, packs != NULL, &p)
            if p.nt > 1:
                team_run(T, gen, job, &p, s, w, e, theta, grad, lr, snap, ws, X, Y, rows,
                         start, m, True, key, mode == FBP_MODE_FINE, packs)
                loss[0] = row_sum(ws + w.lossv, m)
                return 0 if isfinite(loss[0]) else 1
        fbp_serial_begin(mode, t0)
    if rows != NULL:
        x = ws + w.act[0]
    phase1(s, e, theta, ws, w, X, Y, rows, start, m, 0, m, True, NULL, NULL)
    loss[0] = row_sum(ws + w.lossv, m)
    if not isfinite(loss[0]):
        return 1
    for k in range(s.n_layers):
        update_units(s, e, theta, grad, lr, snap, ws, w, x, m, k, 0, s.sizes[k + 1])
    if T != NULL:
        fbp_team_serial_done(T, key, t0)
    return 0


cdef void predict_rows(const Spec *s, const Extra *e, fbp_team *T, unsigned *gen, Job *job,
                       const floating *theta, floating *ws, const Work *w,
                       const floating *X,      # IN the data set
                       const floating *Y,      # IN targets, or NULL for outputs only
                       int64_t start, int64_t m,
                       floating *packs,   # a team chunk's pack buffer, or NULL
                       bint *have) noexcept nogil:  # IN/OUT the packs written by earlier chunks
    """Forward (with Y, also the per-sample losses) of m rows from `start`,
    into rows 0..m-1 of the workspace (a row split on a team: after a pack
    wave of the forward products' W_k^T into `packs`, of those that no
    earlier chunk of the call packed: reuse_packs)."""
    cdef Plan p
    sparse_bind(e.sp, NULL, start)   # sparse X: the chunk's rows (_sparse.pxi)
    cdef int mode = -1
    cdef int64_t key = 0
    cdef int64_t t0[2]
    if T != NULL:
        key = step_key(s, m, False)
        mode = step_mode(T, key)
        if mode >= FBP_MODE_FINE:
            make_plan_tiles(s, m, False, Y != NULL, mode == FBP_MODE_FINE, packs != NULL, &p)
            if p.nt > 1:
                reuse_packs(&p, have)
                team_run(T, gen, job, &p, s, w, e, <floating *>theta, NULL, <floating>0, NULL,
                         ws, X, Y, NULL, start, m, False, key, mode == FBP_MODE_FINE, packs)
                return
        fbp_serial_begin(mode, t0)
    if Y != NULL:
        phase1(s, e, theta, ws, w, X, Y, NULL, start, m, 0, m, False, NULL, NULL)
    else:
        forward_rows(s, e, theta, ws, w, X + start * s.sizes[0], 0, m, NULL, NULL)
    if T != NULL:
        fbp_team_serial_done(T, key, t0)
