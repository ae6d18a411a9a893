# _layers.pxi (included by _kernels.pyx): the gradient one layer at a time.
#
# Design
# ------
# Network.gradients forms the whole gradient in one call.  A data-parallel
# caller (fastbp.distributed) wants layer k's gradient as soon as it exists,
# to send it while the kernel goes on with the layers below, as PyTorch DDP
# and Horovod overlap their reductions with backward.  So the same batch
# step is cut at the layer boundaries into calls, each releasing the GIL:
#   * lw_forward: every row through every layer, the per-sample losses and
#     delta_L (the workspace of `gradients`: activations and deltas; X and Y
#     are read in place, no gathered batch);
#   * lw_backward(k), for k = L-1 down to 0: the gradient of W_k and b_k
#     (update_units, from delta_{k+1} and A_k) and, for k >= 1, delta_k
#     (backprop_cols, from delta_{k+1}, W_k and A_k).  Both read only what
#     earlier calls finished and write disjoint arrays, so they are tiles of
#     one parallel loop.
# Between calls the workspace holds the state; nothing else is kept.  The
# calls run the tile functions of a `gradients` step (_steps.pxi) on the same
# data, so the result has its bits: the GEMM gives each element the same bits
# whatever block it is computed in, bias gradients are column sums over every
# row in row order, and losses and output deltas are per row.
#
# Threads: a call opens one parallel region when its multiply-adds give each
# thread at least par_min_macs (fewer threads otherwise, none after a fork);
# any thread takes the next tile (dynamic schedule).  The tiles are row tiles
# of the forward pass, and unit tiles of grad W_k plus column tiles of
# delta_k.  Each tile writes only its own rows of A_k, yhat, lossv, hitv and
# delta_L, or its own rows of grad W_k and entries of grad b_k, or its own
# columns of delta_k: every write inside a region is private to the thread
# running the tile.  Each thread runs with the caller's FTZ/DAZ mode.
from cython.parallel cimport prange


cdef inline int lw_threads(const Spec *s, int64_t macs) noexcept nogil:
    """Threads for a call of `macs` multiply-adds (as make_plan decides)."""
    cdef int64_t nt = s.n_threads
    if fbp_serial_after_fork():
        return 1
    if par_min_macs > 0:
        nt = min(nt, macs // par_min_macs)
    return <int>max(<int64_t>1, nt)


cdef double lw_forward(const Spec *s, const Extra *e,
                       const floating *theta,       # IN  parameters
                       floating *ws, const Work *w,  # OUT activations, yhat, lossv, hitv, delta_L
                       const floating *X,           # IN  (m, n_in) the batch
                       const floating *Y,           # IN  (m, n_out) its targets
                       int64_t m) noexcept nogil:
    """Forward pass, losses and delta_L of the mean loss over m rows; returns
    the sum of the per-sample losses (in row order)."""
    cdef int nt = lw_threads(s, forward_macs(s, m))
    cdef int64_t n_tiles = 1, t
    cdef unsigned int csr = 0   # (set in every thread; 0 for the firstprivate copy)
    if nt > 1:
        n_tiles = min(<int64_t>ROW_TILES_PER_THREAD * nt, m // ROWS_PER_THREAD)
    if n_tiles <= 1:
        forward_rows(s, e, theta, ws, w, X, 0, m, NULL, NULL)
        loss_rows(s, e, ws, w, Y, NULL, 0, m, 0, m, True)
    else:
        with parallel(num_threads=nt):
            csr = fbp_ftz_enter(s.ftz)
            if threadid() == 0:
                fbp_count_parallel(fbp_team_size())
            for t in prange(n_tiles, schedule="dynamic"):
                forward_rows(s, e, theta, ws, w, X, part(m, t, n_tiles), part(m, t + 1, n_tiles),
                             NULL, NULL)
                loss_rows(s, e, ws, w, Y, NULL, 0, m, part(m, t, n_tiles),
                          part(m, t + 1, n_tiles), True)
            fbp_ftz_leave(csr)
    return row_sum(ws + w.lossv, m)


cdef void lw_backward(const Spec *s, const Extra *e,
                      const floating *theta,       # IN  parameters (as lw_forward saw them)
                      floating *grad,              # OUT W_k and b_k's entries of the gradient
                      floating *ws, const Work *w,  # IN A_k, delta_{k+1}; OUT delta_k (k >= 1)
                      const floating *X,           # IN  (m, n_in) the batch (A_0)
                      int64_t m, int k) noexcept nogil:
    """Layer k's gradient, then (k >= 1) delta_k, for the batch lw_forward ran."""
    cdef int64_t n_in = s.sizes[k], n_out = s.sizes[k + 1], mr, nr, t, c
    cdef int64_t macs = m * n_in * n_out
    cdef int nt = lw_threads(s, 2 * macs if k > 0 else macs), ng, nd = 0
    cdef unsigned int csr = 0   # (set in every thread; 0 for the firstprivate copy)
    if nt <= 1:
        update_units(s, e, <floating *>NULL, grad, <floating>0, <floating *>NULL, ws, w, X,
                     m, k, 0, n_out)
        if k > 0:
            backprop_cols(s, e, theta, ws, w, k, 0, m, 0, n_in, NULL)
        return
    fbp_gemm_tile_shape(s.elem, &mr, &nr)
    ng = tiles_for(n_out, macs, mr, nt)
    if k > 0:
        nd = tiles_for(n_in, macs, nr, nt)
    with parallel(num_threads=nt):
        csr = fbp_ftz_enter(s.ftz)
        if threadid() == 0:
            fbp_count_parallel(fbp_team_size())
        for t in prange(ng + nd, schedule="dynamic"):
            if t < ng:
                update_units(s, e, <floating *>NULL, grad, <floating>0, <floating *>NULL, ws, w,
                             X, m, k, cut(n_out, t, ng, mr), cut(n_out, t + 1, ng, mr))
            else:
                c = t - ng
                backprop_cols(s, e, theta, ws, w, k, 0, m, cut(n_in, c, nd, nr),
                              cut(n_in, c + 1, nd, nr), NULL)
        fbp_ftz_leave(csr)
