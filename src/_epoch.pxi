# _epoch.pxi (included by _kernels.pyx): the calls.
#
# A fit epoch (run_epoch: shuffle order, the steps, the SGD or optimizer
# update, divergence snapshots), chunked predict/loss (chunk_rows), and the
# driver that opens one parallel region per call (run_call): thread 0 runs
# the call and publishes each step to the team; the other threads only run
# tiles (team_worker, _steps.pxi).  Everything written here outside a tile
# (totals, snapshots, the shuffled order, the update of a serial step) is
# written by thread 0 alone, between steps, while no tile is in progress.

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
    bint sk_weights          # with sample weights, scikit-learn 1.9's scaling (see run_epoch)


cdef struct Totals:
    double loss              # sum of the per-sample losses seen (weighted: sum s_i loss_i)
    double hits              # sum of the per-sample accuracies seen (weighted likewise)
    double penalty           # sum over steps of l2/2 ||W||^2 before the step
    int64_t n_done           # samples consumed by completed steps
    bint snap_done           # the snapshot was taken
    int64_t snap_count       # the optimizer's step count at the snapshot


cdef double sgd_update(const Spec *s, floating *theta, const floating *grad,
                       floating *velocity, const Optim *o,
                       double m) noexcept nogil:     # IN l2's divisor: the rows (or weight sum)
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
                   floating *packs,           # the team steps' pack buffer (call_packs), or NULL
                   ) noexcept nogil:
    """One epoch of mini-batch training, entirely in compiled code.

    Legacy SGD: plain SGD (grad == NULL) fuses the update into the
    weight-gradient GEMM; with momentum, weight decay or l2 the gradient is
    formed in `grad` and the optimizer applied to it.  The optimizer path
    (e.opt, fastbp.optim): the gradient rows are formed in `grad` and the
    optimizer applied to them on the spot (opt_units), or, with clipping,
    to the whole gradient after the step.  Sample weights (e.sw): a batch
    whose weights sum to 0 is skipped (no update, the step count stays);
    with o.sk_weights (scikit-learn 1.9) a weighted batch's l2 term is
    l2 / (2 sum s) ||W||^2 (its gradient (l2 / sum s) W) instead of
    l2 / (2 m), and t.loss / t.penalty add m times the batch's mean loss /
    penalty (scikit-learn's accumulated_loss) instead of the weighted sums.
    Stops early (returning 1) before applying a step whose batch loss is not
    finite, leaving theta as it was after the last good step.  At step
    `snap_step`, once its loss is known to be finite and before its update,
    theta (and the velocity or optimizer state) are copied to `snap`: the
    caller's point to rewind to should a later step diverge.  Polls for
    Ctrl-C every few tens of millions of multiply-adds and returns -1 with
    KeyboardInterrupt set (in the calling thread's state), again between steps.
    """
    cdef int64_t start, m, k, macs = 0, macs_per_row = 0, steps = 0
    cdef double batch_loss, den, per_row
    cdef bint snap_here, fused, sk_rows
    cdef const int64_t *rows
    cdef OptK *ok = e.opt
    if T == NULL and not (o.sk_weights and e.sw != NULL) and tiny_applies(s, e, w.rows):
        # A narrow net's serial epoch: the narrow-kernel loop of _tiny.pxi
        # (the same contract and bits; scikit-learn's weighted-batch scaling
        # is not there: such epochs take the tiled path).
        return tiny_epoch(s, e, theta, grad, velocity, ws, w, X, Y, order, n_samples,
                          batch_size, o, first_step, max_steps, snap, snap_vel, snap_step,
                          n_params, t)
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
            # scikit-learn 1.9 with sample weights: l2 / (2 sum s) per batch,
            # and the batch's mean objective counts m times in the totals.
            sk_rows = o.sk_weights and e.sw != NULL
            den = e.wsum if sk_rows else <double>m
            if ok != NULL:
                ok.l2_den = den
                opt_prepare(ok)
            if batch_step(s, e, T, gen, job, theta, grad, <floating>o.lr,
                          snap if snap_here and fused else NULL,
                          ws, w, X, Y, rows, start, m, &batch_loss, packs):
                return 1
            if snap_here:
                t.snap_done = True
                t.snap_count = ok.step if ok != NULL else 0
                if not fused:
                    snapshot_all(ok, snap, snap_vel, theta, velocity, n_params)
            per_row = <double>m / den if sk_rows else 1.0
            if ok != NULL:
                if ok.clip != 0:
                    opt_clipped_update(s, ok, theta, grad, n_params)
                if ok.l2 != 0:
                    t.penalty += (0.5 * ok.l2 * opt_unit_sum(ok.usq, ok.n_units)) * per_row
                ok.step += 1
            elif grad != NULL:
                t.penalty += sgd_update(s, theta, grad, velocity, o, den) * per_row
            if sk_rows:
                t.loss += (weighted_sum(ws + w.lossv, e, rows, start, m) / den) * m
            else:
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
                    double *totals,         # OUT [loss sum, accuracy sum] with Y (weighted with e.sw)
                    floating *packs         # the team chunks' pack buffer (call_packs), or NULL
                    ) noexcept nogil:
    """predict / loss over n rows, `chunk` rows at a time; -1 on Ctrl-C
    (polled between chunks).  theta does not change during the call, so
    the team chunks pack each W_k^T once (the first chunk whose row split
    takes that pack) and later chunks read it (reuse_packs)."""
    cdef int64_t start = 0, m, n_out = s.sizes[s.n_layers]
    cdef bint have[PK_SLOTS]    # the packs an earlier chunk wrote (reuse_packs)
    cdef int q
    for q in range(PK_SLOTS):
        have[q] = False
    while start < n:
        m = min(chunk, n - start)
        predict_rows(s, e, T, gen, job, theta, ws, w, X, Y, start, m, packs, have)
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
    void *packs             # the pack buffer of its team steps (64-byte aligned), or NULL
    double totals[2]        # chunks: loss and accuracy sums; grad: the loss sum


cdef int drive(const Spec *s, const Work *w, Call *c, fbp_team *T, unsigned *gen, Job *job,
               floating *theta) noexcept nogil:
    """Run call c, with the team T (on its thread 0) or serially (T == NULL:
    no packs)."""
    cdef floating *packs = <floating *>c.packs if T != NULL else NULL
    if c.kind == CALL_EPOCH:
        return run_epoch(s, c.e, T, gen, job, theta, <floating *>c.grad, <floating *>c.velocity,
                         <floating *>c.ws, w, <const floating *>c.X, <const floating *>c.Y,
                         c.order, c.n, c.batch_size, c.o, c.first_step, c.max_steps,
                         <floating *>c.snap, <floating *>c.snap_vel, c.snap_step,
                         c.n_params, c.t, packs)
    if c.kind == CALL_CHUNKS:
        return chunk_rows(s, c.e, T, gen, job, theta, <floating *>c.ws, w, <const floating *>c.X,
                          <const floating *>c.Y, c.n, c.chunk, <floating *>c.out, c.totals, packs)
    return batch_step(s, c.e, T, gen, job, theta, <floating *>c.grad, <floating>0, NULL,
                      <floating *>c.ws, w, <const floating *>c.X, <const floating *>c.Y,
                      NULL, 0, c.n, &c.totals[0], packs)


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
    fbp_tune_load(&T, step_key(s, rows, train))   # what earlier calls learnt
    with parallel(num_threads=p.nt):
        tid = threadid()
        csr = fbp_ftz_enter(s.ftz)
        if tid == 0:
            fbp_count_parallel(fbp_team_size())
            fbp_stat_region()
            status_p[0] = drive(s, w, c, &T, &gen, &job, theta)
            fbp_team_quit(&T)
        else:
            team_worker(&T, s, w, &job, theta, <floating *>c.ws, <const floating *>c.X,
                        <const floating *>c.Y)
        fbp_ftz_leave(csr)
    fbp_tune_store(&T)
    return status


cdef int _raise_pending() except -1:
    """Propagate the exception a kernel left set (Ctrl-C)."""
    return -1
