# _rows.pxi (included by _kernels.pyx): the row kernels, one sample at a time.
#
# The output activation, the loss and the output delta dloss/dz of one
# sample's row, in double precision whatever the dtype.  They are called
# from the tiles of _steps.pxi with the tile's own rows, and write only the
# row they are given (yhat, delta, per-sample loss and hit slots), so any
# tile may call them inside a parallel region.

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
    elif s.output == OUT_EXP:
        for j in range(n):
            yhat[j] = <floating>exp(z[j])
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
    cdef double loss = 0.0, g, zj, yj, ez, zmax, lse, ysum, gp
    if s.loss == LOSS_SQUARED and s.output != OUT_SOFTMAX:
        # One pass (the softmax Jacobian below needs the whole row first).
        for j in range(n):
            g = <double>yhat[j] - <double>y[j]
            loss += 0.5 * g * g
            if delta != NULL:
                if s.output == OUT_SIGMOID:
                    g = g * yhat[j] * (1.0 - yhat[j])
                elif s.output == OUT_EXP:       # exp' = exp
                    g = g * yhat[j]
                delta[j] = <floating>(scale * g)
    elif s.loss == LOSS_SQUARED:   # softmax output: the full Jacobian
        gp = 0.0
        for j in range(n):
            g = <double>yhat[j] - <double>y[j]
            loss += 0.5 * g * g
            gp += g * yhat[j]
        if delta != NULL:
            for j in range(n):
                g = <double>yhat[j] - <double>y[j]
                delta[j] = <floating>(scale * (yhat[j] * (g - gp)))
    elif s.loss == LOSS_BCE:
        for j in range(n):
            zj = z[j]
            loss += (zj if zj > 0 else 0.0) - zj * y[j] + log1p(exp(-fabs(zj)))
            if delta != NULL:
                delta[j] = <floating>(scale * (sigmoid(zj) - y[j]))
    elif s.loss == LOSS_POISSON:
        # half Poisson deviance y log(y / yhat) - y + yhat with yhat = exp(z),
        # written in z as (exp(z) - y) + y (log y - z): no log of an
        # underflowed yhat, and near the fit (y ~ exp(z)) two small
        # differences instead of large terms that cancel.  y >= 0, 0 log 0 = 0.
        # With the log link dloss/dz = exp(z) - y.
        for j in range(n):
            zj = z[j]
            yj = y[j]
            ez = exp(zj)
            loss += ez - yj
            if yj > 0:
                loss += yj * (log(yj) - zj)
            if delta != NULL:
                delta[j] = <floating>(scale * (ez - yj))
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
    for sigmoid outputs, the fraction of outputs on the right side of 1/2;
    0 for the Poisson loss (a regression loss: no accuracy is reported)."""
    cdef int64_t j, n = s.sizes[s.n_layers], arg_hat = 0, arg_y = 0
    cdef double hits = 0.0
    if s.loss == LOSS_POISSON:
        return 0.0
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
