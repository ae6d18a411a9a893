"""Tolerances for the compiled kernels against the pure-Python reference.

Two kinds, used by every test that compares ``fastbp.MLP`` with
``fastbp.reference.MLP`` (tests/test_kernels.py, tests/test_properties.py,
tests/test_reference_optim.py):

* ``TOL``: one relative table for two implementations computing in the same
  dtype (float64 against float64: 1e-10; the float32 reference, which rounds
  every stored value to float32, against the float32 kernels: 1e-4).
* ``float32 bounds`` (the functions below): the float32 kernels against the
  float64 reference started from the same parameters (float32 values, exact in
  float64) on the same float32 data.  The reference is then the exact answer
  to 1e-16, and the kernels' error is bounded per element, from the data, by
  counting the roundings each result goes through (first-order running error
  analysis, with u = 2**-24 the unit roundoff of float32):

  - a GEMM element sum_k a_k b_k (+ bias) of K terms: gamma(K) * sum_k |a_k b_k|
    with gamma(n) = n u (K products or FMAs, the K-slab folds, the bias add),
    plus |B| times the error already in A (and |A| times B's);
  - an activation: |f'(z)| times the error of z, plus its own rounding (the
    vector sigmoid/tanh: at most about 2.3 and 3.2 ulp, tests/c/gemm_check.c,
    taken as 8 u |h|; relu and identity: none; relu's kink is allowed to flip
    where |z| is within z's error);
  - the row kernels (output activation, per-sample loss, output delta): they
    compute in double from the float32 logits z (and, for squared error, the
    stored float32 outputs yhat) and round once, so their own error is u times
    the result, plus the first-order effect of the error already in z / yhat.

  Every bound is doubled (``SAFETY``) for the neglected O(u^2) terms.  With
  exact logits (a one-layer net fed the rows of an identity matrix, whose GEMM
  is exact) the row kernels' bound is 2 u |result| (plus, for squared error
  after sigmoid/softmax, the effect of rounding yhat): a systematic error of
  8 u in any of them fails (shown in tests/test_kernels.py).
"""
import numpy as np

from fastbp import _common

# |fast - reference| <= rtol * |reference| + atol * scale, where scale is the
# largest |value| of the quantity compared (so sums that cancel are judged
# against the size of their terms, not of their result).
TOL = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=1e-4, atol=1e-5),
}

ACTIVATIONS = ["identity", "sigmoid", "relu", "tanh"]
PAIRS = [
    ("identity", "squared_error"),
    ("sigmoid", "squared_error"),
    ("softmax", "squared_error"),
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
    ("exp", "poisson"),
    ("exp", "squared_error"),
]


def assert_close(actual, expected, dtype, what=""):
    """Assert fast-vs-reference agreement within TOL[dtype]."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    if not expected.size:
        return
    tol = TOL[dtype]
    scale = max(1e-300, float(np.max(np.abs(expected))))
    bound = tol["rtol"] * np.abs(expected) + tol["atol"] * scale
    err = np.abs(actual - expected)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"{what}: max err {err.max():.3g}, bound {bound.flat[worst]:.3g}"
    )


def assert_within(actual, expected, bound, what=""):
    """Assert |actual - expected| <= bound element-wise (float32 kernels against
    the float64 reference, ``bound`` from the functions below)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    assert actual.shape == expected.shape, what
    err = np.abs(actual - expected)
    # the smallest float32 spacing: a value that underflows is off by that much
    ok = err <= bound + 2.0 ** -149
    if not np.all(ok):
        worst = np.unravel_index(int(np.argmax(err - bound)), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {ok.size} elements off; at {worst}: fast "
            f"{actual[worst]!r}, reference {expected[worst]!r}, err {err[worst]:.3g} "
            f"= {err[worst] / max(abs(expected[worst]), 1e-300) / U:.3g} u relative, "
            f"bound {bound[worst]:.3g}"
        )


# --------------------------------------------------------------------------
# float32 error bounds
# --------------------------------------------------------------------------

U = 2.0 ** -24          # unit roundoff of float32: half an ulp of 1
SAFETY = 2.0            # the first-order bounds, doubled
KC = 256                # the GEMM's K-slab depth (FBP_KC, src/fbp_gemm_internal.h): one more rounding per slab
ACT_ROUNDING = {"identity": 0.0, "relu": 0.0, "sigmoid": 8 * U, "tanh": 8 * U}


def gamma(n):
    """First-order bound of the relative error of n rounded operations."""
    return n * U


def gemm_ops(K):
    """Roundings per GEMM element of depth K: K products/FMAs and adds, the
    slab folds, the bias add and the alpha scaling."""
    return K + K // KC + 2


def gemm_bound(A, eA, B, eB, bias=None):
    """Error bound of the float32 GEMM A @ B (+ bias): rounding plus propagated.

    A (M, K) with element-wise error bound eA, B (K, N) with eB (0 or arrays).
    """
    aA, aB = np.abs(A), np.abs(B)
    terms = aA @ aB + (np.abs(bias) if bias is not None else 0.0)
    bound = gamma(gemm_ops(A.shape[1])) * terms
    if np.any(eA):
        bound = bound + np.asarray(eA) @ aB
    if np.any(eB):
        bound = bound + aA @ np.asarray(eB)
    return bound


def activation(name, z):
    """(f(z), f'(z)) of a hidden activation, in float64."""
    if name == "identity":
        return z, np.ones_like(z)
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(float)
    if name == "sigmoid":
        h = 0.5 * (1.0 + np.tanh(0.5 * z))
        return h, h * (1.0 - h)
    h = np.tanh(z)
    return h, 1.0 - h * h


def activation_bound(name, z, ez):
    """Error bound of the hidden activation f(z) of float32 logits with error ez."""
    h, d = activation(name, z)
    if name == "relu":  # 1-Lipschitz; where the kink may flip, up to the error of z
        return h, np.where(z > -ez, ez, 0.0)
    return h, np.abs(d) * ez + ACT_ROUNDING[name] * np.abs(h)


def output_bound(output, z, ez):
    """(yhat, bound): the output activation, computed in double from the float32
    logits (error ez) and rounded once (identity copies z)."""
    if output == "identity":
        return z, ez
    if output == "sigmoid":
        s = 0.5 * (1.0 + np.tanh(0.5 * z))
        return s, s * (1.0 - s) * ez + U * s
    if output == "exp":
        s = np.exp(z)
        return s, s * ez + U * s
    e = np.exp(z - z.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    # |d s_j / d z_k| = s_j |[j == k] - s_k| <= s_j ([j == k] + s_k)
    return s, s * (ez + (s * ez).sum(axis=1, keepdims=True)) + U * s


def loss_bound(loss, z, ez, s, es, Y):
    """(per-sample losses, bound): computed in double from the float32 logits
    (cross entropies) or outputs (squared error), each rounded once to float32."""
    if loss == "squared_error":
        g = s - Y
        ell = 0.5 * (g * g).sum(axis=1)
        return ell, (np.abs(g) * es + es * es).sum(axis=1) + U * ell
    if loss == "binary_cross_entropy":
        ell = (np.maximum(z, 0) - z * Y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
        return ell, (np.abs(s - Y) * ez).sum(axis=1) + U * ell
    if loss == "poisson":  # from the logits: y log y - y z - y + exp(z), d/dz = exp(z) - y
        ylogy = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1.0)), 0.0)
        ell = (ylogy - Y * z - Y + np.exp(z)).sum(axis=1)
        return ell, (np.abs(s - Y) * ez).sum(axis=1) + U * ell
    ysum = Y.sum(axis=1, keepdims=True)
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    ell = (Y * (lse - z)).sum(axis=1)
    return ell, (np.abs(ysum * s - Y) * ez).sum(axis=1) + U * ell


def delta_bound(loss, output, z, ez, s, es, Y):
    """(delta_L, bound): d(mean loss)/dz of the output logits, computed in double
    from the float32 logits (cross entropies) or outputs (squared error) and
    rounded once."""
    m = z.shape[0]
    if loss == "binary_cross_entropy":
        d = (s - Y) / m
        sens = s * (1.0 - s) * ez / m
    elif loss == "poisson":  # exp(z) - y from the logits
        d = (s - Y) / m
        sens = s * ez / m
    elif loss == "cross_entropy":
        ysum = Y.sum(axis=1, keepdims=True)
        d = (ysum * s - Y) / m
        sens = ysum * s * (ez + (s * ez).sum(axis=1, keepdims=True)) / m
    else:
        g = s - Y
        if output == "identity":
            d, sens = g / m, es / m
        elif output == "sigmoid":
            d = g * s * (1.0 - s) / m
            sens = np.abs(s * (1.0 - s) + g * (1.0 - 2.0 * s)) * es / m
        elif output == "exp":  # d/ds of (s - y) s
            d = g * s / m
            sens = np.abs(s + g) * es / m
        else:  # the full softmax Jacobian: d_j = s_j (g_j - sum_k g_k s_k)
            gs = (g * s).sum(axis=1, keepdims=True)
            d = s * (g - gs) / m
            spread = ((np.abs(g) + s) * es).sum(axis=1, keepdims=True)
            sens = (np.abs(g - gs) * es + s * (es + spread)) / m
    return d, sens + U * np.abs(d)


def derivative_bound(name, h, eh):
    """(f'(h), bound) of a hidden activation's derivative, taken from the
    stored float32 output h (error eh) in the backward GEMM's epilogue."""
    if name == "identity":
        return np.ones_like(h), np.zeros_like(h)
    if name == "relu":
        return (h > 0).astype(float), np.zeros_like(h)
    if name == "sigmoid":
        d = h * (1.0 - h)
        return d, np.abs(1.0 - 2.0 * h) * eh + 4 * U * (h * h + d)
    d = 1.0 - h * h
    return d, 2.0 * np.abs(h) * eh + 4 * U * (h * h + d)


def float32_bounds(net, X, Y, lr=None):
    """Error bounds of the float32 kernels on one batch, per element.

    Parameters
    ----------
    net : fastbp.reference.MLP or fastbp.MLP
        Its parameters (float32 values) and configuration.
    X, Y : array_like
        The batch, float32 values; Y as for ``loss`` (labels allowed).
    lr : float, optional
        With a learning rate: also bound the parameters after one plain SGD
        step (``step``).

    Returns
    -------
    dict
        ``predict`` (n, n_out), ``loss`` (float), ``dW``/``db`` (lists, db
        entries None without bias), and with ``lr`` ``W_step``/``b_step``:
        bounds on |float32 kernel - float64 reference|, and the float64
        values the bounds were derived from under the same keys + ``_value``.
    """
    L = net.n_layers
    X = np.asarray(X, dtype=np.float64)
    Y = _common.check_Y(Y, X.shape[0], net.layer_sizes[-1], net.loss_name, np.float64)
    Ws = [np.asarray(W, dtype=np.float64) for W in net.weights]
    bs = [np.asarray(b, dtype=np.float64) if b is not None else None for b in net.biases]
    # forward: every layer's value and error bound
    H, eH = [X], [np.zeros_like(X)]
    for k in range(L):
        z = H[-1] @ Ws[k].T + (bs[k] if bs[k] is not None else 0.0)
        ez = gemm_bound(H[-1], eH[-1], Ws[k].T, 0.0, bs[k])
        if k < L - 1:
            h, eh = activation_bound(net.activation, z, ez)
            H.append(h)
            eH.append(eh)
    s, es = output_bound(net.output, z, ez)
    ell, eell = loss_bound(net.loss_name, z, ez, s, es, Y)
    d, ed = delta_bound(net.loss_name, net.output, z, ez, s, es, Y)
    # backward: delta of every layer, then the gradients
    D, eD = [None] * L, [None] * L
    D[L - 1], eD[L - 1] = d, ed
    for k in range(L - 1, 0, -1):
        P = D[k] @ Ws[k]
        eP = gemm_bound(D[k], eD[k], Ws[k], 0.0)
        fp, efp = derivative_bound(net.activation, H[k], eH[k])
        D[k - 1] = P * fp
        eD[k - 1] = fp * eP + np.abs(P) * efp + 2 * U * np.abs(D[k - 1])
        if net.activation == "relu":  # the kink may flip where h is within its error
            z_k = H[k]
            eD[k - 1] = np.where((z_k <= eH[k]) & (eH[k] > 0), np.abs(P) + eP, eD[k - 1])
    out = dict(predict=SAFETY * es, predict_value=s,
               loss=SAFETY * float(eell.mean()), loss_value=float(ell.mean()),
               dW=[], db=[], W_step=[], b_step=[], dW_value=[], db_value=[])
    for k in range(L):
        dW = D[k].T @ H[k]
        edW = gemm_bound(D[k].T, eD[k].T, H[k], eH[k])
        out["dW"].append(SAFETY * edW)
        out["dW_value"].append(dW)
        db = edb = None
        if bs[k] is not None:
            db = D[k].sum(axis=0)
            edb = gamma(D[k].shape[0] + 1) * np.abs(D[k]).sum(axis=0) + eD[k].sum(axis=0)
            out["db"].append(SAFETY * edb)
        else:
            out["db"].append(None)
        out["db_value"].append(db)
        if lr is not None:
            # W -= lr dW as one GEMM (alpha = -lr, beta = 1): one more rounding per
            # K-slab; lr itself rounded to float32
            W1 = Ws[k] - lr * dW
            slabs = 1 + D[k].shape[0] // KC
            eW1 = lr * edW + 2 * U * lr * np.abs(dW) + slabs * U * (np.abs(W1) + lr * np.abs(dW))
            out["W_step"].append(SAFETY * eW1)
            if db is not None:
                b1 = bs[k] - lr * db
                out["b_step"].append(SAFETY * (lr * edb + 2 * U * lr * np.abs(db) + U * np.abs(b1)))
            else:
                out["b_step"].append(None)
    return out


def float32_sgd_bound(theta, grad, egrad, velocity, lr, momentum, nesterov, decay):
    """Error bounds of one float32 optimizer step (src/_kernels.pyx sgd_range)
    from exact float32 theta and velocity and a gradient with error bound egrad.

    The kernel runs, in float32, with lr, momentum and decay rounded to float32:
    g = grad + decay theta; v = momentum v + g; theta -= lr (g + momentum v
    if nesterov else v).  Returns (theta bound, velocity bound or None).
    """
    theta, grad, egrad = (np.asarray(a, dtype=np.float64) for a in (theta, grad, egrad))
    g = grad + decay * theta
    eg = egrad + U * decay * np.abs(theta) + U * (decay * np.abs(theta) + np.abs(g))
    ev = None
    if momentum:
        v = momentum * np.asarray(velocity, dtype=np.float64) + g
        ev = eg + 2 * U * momentum * np.abs(velocity) + U * np.abs(v)
        if nesterov:
            direction = g + momentum * v
            edir = eg + momentum * ev + 2 * U * momentum * np.abs(v) + U * np.abs(direction)
        else:
            direction, edir = v, ev
        g, eg = direction, edir
    theta1 = theta - lr * g
    etheta = lr * eg + 2 * U * lr * np.abs(g) + U * np.abs(theta1)
    return SAFETY * etheta, (SAFETY * ev if ev is not None else None)
