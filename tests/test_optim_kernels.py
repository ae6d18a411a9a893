"""The optimizer path of the compiled epoch (issue 9, kernel side).

``Network.fit_epoch(..., optimizer=, state=)`` runs fastbp.optim's SGD, Adam,
AdamW and RMSprop inside the compiled epoch, fused into the weight-gradient
tiles.  Each step must be *bitwise* ``optimizer.update`` (numpy) applied to
the gradient ``Network.gradients`` gives for the same batch (plus the l2 term,
then clipping), for every optimizer and option, both dtypes, with and
without biases, on 1 and 2 threads (both parallel plans), on the small and
the blocked GEMM paths, on every GEMM code path of this CPU.  Sample weights
are checked against independently computed weighted gradients (duplicated
and removed rows), dropout masks against fastbp._philox through a numpy
forward/backward pass, clipping against a numpy clip of the replayed
gradient; snapshots, the step count, pieces of an epoch and divergence too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastbp import _kernels, _philox, optim
from fastbp._common import ACTIVATIONS, LOSSES, OUTPUTS

DTYPES = [np.float32, np.float64]

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.05),
    "sgd-momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "sgd-nesterov-decay": lambda: optim.SGD(lr=0.05, momentum=0.8, nesterov=True,
                                            weight_decay=0.01),
    "sgd-decay": lambda: optim.SGD(lr=0.05, weight_decay=0.1),
    "adam": lambda: optim.Adam(lr=0.01),
    "adam-decay-amsgrad": lambda: optim.Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05,
                                             amsgrad=True),
    "adam-amsgrad": lambda: optim.Adam(lr=0.02, amsgrad=True),
    "adamw": lambda: optim.AdamW(lr=0.01),
    "adamw-amsgrad": lambda: optim.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True),
    "rmsprop": lambda: optim.RMSprop(lr=0.005),
    "rmsprop-momentum": lambda: optim.RMSprop(lr=0.005, momentum=0.9, weight_decay=0.01),
    "rmsprop-centered": lambda: optim.RMSprop(lr=0.005, centered=True),
    "rmsprop-centered-momentum": lambda: optim.RMSprop(lr=0.002, alpha=0.9, momentum=0.5,
                                                       centered=True, weight_decay=0.02),
    # scikit-learn's Adam (fastbp.sklearn's adam): the kernels' sklearn variant
    "sklearn-adam": lambda: optim._SklearnAdam(lr=0.01),
    "sklearn-adam-betas": lambda: optim._SklearnAdam(lr=0.02, betas=(0.5, 0.9), eps=1e-4),
}

# (sizes, n_samples, batch): small GEMMs on the unit split (a small batch),
# and GEMMs on the blocked path with the row split on 2 threads.
SHAPES = {
    "small": ([4, 6, 3], 21, 5),
    "blocked": ([20, 48, 33, 6], 100, 40),
}


@pytest.fixture
def forced():
    """Every step with 2 threads goes through the team (threshold 0)."""
    threshold = _kernels.set_parallel_threshold(0)
    isa = _kernels.gemm_isa()
    yield
    _kernels.set_parallel_threshold(threshold)
    _kernels.set_gemm_isa(isa)


def _problem(sizes, n, dtype, bias, hidden="tanh", seed=0, loss="cross_entropy"):
    out = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid",
           "squared_error": "identity"}[loss]
    net = _kernels.Network(sizes, ACTIVATIONS[hidden], OUTPUTS[out], LOSSES[loss], bias)
    rng = np.random.default_rng(seed)
    theta = (rng.standard_normal(net.n_params) * 0.4).astype(dtype)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], n)]
    else:
        Y = rng.random((n, sizes[-1])).astype(dtype)
    order = rng.permutation(n).astype(np.int64)
    return net, theta, X, np.ascontiguousarray(Y), order


def _weight_mask(net):
    """True at the entries of theta that are weights (not biases)."""
    mask = np.zeros(net.n_params, dtype=bool)
    for k in range(len(net.sizes) - 1):
        off = int(net.w_off[k])
        mask[off:off + int(net.sizes[k]) * int(net.sizes[k + 1])] = True
    return mask


def _fit(net, theta, X, Y, order, batch, opt, state, n_threads, lr, **kw):
    n = X.shape[0]
    ws = np.empty(net.workspace_size(min(batch, n), dropout=kw.get("dropout")),
                  dtype=theta.dtype)
    grad = np.empty_like(theta)
    empty = np.empty(0, dtype=theta.dtype)
    return net.fit_epoch(theta, X, Y, order, batch, ws, grad, empty, n_threads, lr,
                         optimizer=opt, state=state, **kw)


def _unit_sumsq(net, g):
    """Per output unit (layers in order): sum of its gradient's squares, W row
    then bias entry, sequentially in float64 (np.cumsum adds in order)."""
    parts = []
    for k in range(len(net.sizes) - 1):
        n_in, n_out = int(net.sizes[k]), int(net.sizes[k + 1])
        off = int(net.w_off[k])
        sq = g[off:off + n_in * n_out].reshape(n_out, n_in).astype(np.float64) ** 2
        if net.b_off[k] >= 0:
            b = g[int(net.b_off[k]):int(net.b_off[k]) + n_out].astype(np.float64) ** 2
            sq = np.hstack([sq, b[:, None]])
        parts.append(np.cumsum(sq, axis=1)[:, -1])
    return np.concatenate(parts)


def _replay(net, theta, X, Y, order, batch, opt, state, lr, *, l2=0.0, clip_norm=0.0,
            sample_weight=None, dropout=None, seed=0, epoch=0, first_step=0, max_steps=-1,
            sklearn_weights=False):
    """The epoch again in numpy: per batch Network.gradients (one thread),
    + T(l2/m) W, clip, optimizer.update.  Returns (loss_sum, penalty_sum,
    n_done, steps applied).  sklearn_weights with sample weights:
    T(l2/sum s) W, and m times the batch's mean loss and penalty."""
    T = theta.dtype.type
    n = X.shape[0]
    wmask = _weight_mask(net)
    loss_sum = penalty = 0.0
    n_done = applied = 0
    for step, start in enumerate(range(first_step * batch, n, batch), start=first_step):
        if max_steps >= 0 and step - first_step >= max_steps:
            break
        idx = order[start:start + batch]
        m = len(idx)
        Xb, Yb = np.ascontiguousarray(X[idx]), np.ascontiguousarray(Y[idx])
        swb = None if sample_weight is None else np.ascontiguousarray(sample_weight[idx])
        n_done += m
        if swb is not None and not swb.astype(np.float64).sum() > 0:
            continue
        g = np.empty_like(theta)
        loss = net.gradients(theta, Xb, Yb, g, 1, sample_weight=swb, dropout=dropout,
                             seed=seed, epoch=epoch, step=step)
        wsum = m if swb is None else float(np.cumsum(swb.astype(np.float64))[-1])
        sk = sklearn_weights and swb is not None
        den = wsum if sk else m
        loss_sum += loss * (m if sk else wsum)
        if l2:
            pen = 0.5 * l2 * float(np.sum(theta[wmask].astype(np.float64) ** 2))
            penalty += pen / den * m if sk else pen
            g[wmask] = g[wmask] + T(l2 / den) * theta[wmask]
        if clip_norm:
            total = math.sqrt(float(np.cumsum(_unit_sumsq(net, g))[-1]))
            coef = clip_norm / (total + 1e-6)
            if coef < 1:
                g = g * T(coef)
        opt.update(theta, g, state, lr)
        applied += 1
    return loss_sum, penalty, n_done, applied


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    assert int(a["step"]) == int(b["step"])
    for key in a:
        if key != "step":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _check_epoch(net, theta0, X, Y, order, batch, make_opt, n_threads, lr=None, epochs=2,
                 **kw):
    """fit_epoch (epochs epochs) == the numpy replay, bitwise; returns the results."""
    opt = make_opt()
    lr = opt.lr if lr is None else lr
    theta_k, theta_r = theta0.copy(), theta0.copy()
    state_k = opt.init_state(net.n_params, theta0.dtype)
    state_r = opt.init_state(net.n_params, theta0.dtype)
    for epoch in range(epochs):
        before = _kernels.parallel_regions()
        res = _fit(net, theta_k, X, Y, order, batch, opt, state_k, n_threads, lr, epoch=epoch,
                   **kw)
        if n_threads > 1:
            assert _kernels.parallel_regions() > before, "the 2-thread epoch ran serially"
        ref = _replay(net, theta_r, X, Y, order, batch, opt, state_r, lr, epoch=epoch,
                      **{k: v for k, v in kw.items() if k != "flush_denormals"})
        assert res[4] == 0
        np.testing.assert_array_equal(theta_k, theta_r)
        _assert_same_state(state_k, state_r)
        assert res[3] == ref[2]
        rtol = 1e-5 if theta0.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(res[0], ref[0], rtol=rtol)
        np.testing.assert_allclose(res[2], ref[1], rtol=1e-12)
    return theta_k, state_k


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_epoch_is_the_numpy_update_bitwise(forced, name, dtype, bias, n_threads, shape):
    sizes, n, batch = SHAPES[shape]
    net, theta, X, Y, order = _problem(sizes, n, dtype, bias)
    for isa in _kernels.gemm_isas():
        _kernels.set_gemm_isa(isa)
        _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads)


@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "adamw-amsgrad", "rmsprop-centered"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_l2_and_schedule_lr(forced, name, dtype, n_threads):
    """scikit-learn's l2 (alpha) before the optimizer, weights only, with its
    penalty; lr overrides optimizer.lr."""
    sizes, n, batch = SHAPES["blocked"]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True, hidden="relu")
    _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads,
                 lr=OPTIMIZERS[name]().lr * 0.5, l2=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("clip_norm", [0.05, 1e6])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_clip_grad_norm(forced, dtype, n_threads, clip_norm, shape):
    """The clipped epoch == numpy's clip of the replayed gradient, then the
    update (0.05 clips every step, 1e6 none)."""
    sizes, n, batch = SHAPES[shape]
    for name, bias in (("adam-decay-amsgrad", True), ("sgd-momentum", False),
                       ("rmsprop-centered-momentum", True)):
        net, theta, X, Y, order = _problem(sizes, n, dtype, bias)
        _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads,
                     clip_norm=clip_norm, l2=0.1)


def test_clip_really_clips():
    sizes, n, batch = SHAPES["small"]
    net, theta, X, Y, order = _problem(sizes, n, np.float64, True)
    a, b = theta.copy(), theta.copy()
    opt = optim.SGD(lr=0.1)
    _fit(net, a, X, Y, order, batch, opt, opt.init_state(net.n_params, a.dtype), 1, 0.1)
    _fit(net, b, X, Y, order, batch, opt, opt.init_state(net.n_params, b.dtype), 1, 0.1,
         clip_norm=1e-3)
    # each of the 5 steps moves theta by exactly lr * 1e-3 / (1 + 1e-6/|g|) in norm at most
    assert np.linalg.norm(b - theta) <= 5 * 0.1 * 1e-3 * (1 + 1e-9)
    assert np.linalg.norm(a - theta) > 10 * np.linalg.norm(b - theta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("nesterov", [False, True])
def test_clip_with_the_sgd_keywords(forced, dtype, n_threads, nesterov):
    """clip_norm without optimizer=: the SGD keywords as optim.SGD with the
    velocity as its buffer, never a first step (v = mu v + g)."""
    sizes, n, batch = SHAPES["blocked"]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True)
    a, velocity = theta.copy(), np.zeros_like(theta)
    ws = np.empty(net.workspace_size(batch), dtype)
    snap, snap_v = np.empty_like(a), np.empty_like(a)
    opt = optim.SGD(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    b, state = theta.copy(), {"step": 1, "momentum_buffer": np.zeros_like(theta)}
    for epoch in range(2):
        r = net.fit_epoch(a, X, Y, order, batch, ws, np.empty_like(a), velocity, n_threads, 0.05,
                          momentum=0.9, nesterov=nesterov, weight_decay=0.01, l2=0.2,
                          clip_norm=0.5, snapshot=snap, snapshot_velocity=snap_v,
                          snapshot_step=1)
        assert r[4] == 0
        _replay(net, b, X, Y, order, batch, opt, state, 0.05, l2=0.2, clip_norm=0.5,
                max_steps=1)
        np.testing.assert_array_equal(snap, b)
        np.testing.assert_array_equal(snap_v, state["momentum_buffer"])
        _replay(net, b, X, Y, order, batch, opt, state, 0.05, l2=0.2, clip_norm=0.5,
                first_step=1)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(velocity, state["momentum_buffer"])


def _weights(n, rng, dtype, zeros=True):
    w = rng.integers(0, 4, n).astype(dtype)
    if not zeros:
        w += 1
    return w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sample_weights_epoch(forced, dtype, n_threads, shape):
    """Weighted epochs (zero weights, and one batch whose weights are all 0)
    == the replay with weighted gradients; the zero batch applies no step."""
    sizes, n, batch = SHAPES[shape]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True)
    sw = _weights(n, np.random.default_rng(3), dtype)
    sw[order[batch:2 * batch]] = 0          # batch 1 of the epoch weighs nothing
    for name in ("adam", "sgd-nesterov-decay", "rmsprop-momentum"):
        _, state = _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads,
                                sample_weight=sw, l2=0.05, epochs=1)
        live = sum(sw[order[i:i + batch]].any() for i in range(0, n, batch))
        assert live <= -(-n // batch) - 1 and state["step"] == live


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sklearn_weights_epoch(forced, dtype, n_threads, shape):
    """sklearn_weights=True: l2 over each batch's weight sum and scikit-learn's
    loss sums, for the optimizer path (scikit-learn's and torch's Adam) and
    the legacy SGD keywords (fastbp.sklearn's sgd), bitwise the replay."""
    sizes, n, batch = SHAPES[shape]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True, hidden="relu")
    sw = _weights(n, np.random.default_rng(4), dtype) * dtype(0.37)
    sw[order[batch:2 * batch]] = 0          # batch 1 of the epoch weighs nothing
    for name in ("sklearn-adam", "adam"):
        _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads,
                     sample_weight=sw, l2=0.3, sklearn_weights=True)
    # the SGD keywords: v = mu v + (g + T(l2 / sum s) W); theta -= lr (g + mu v)
    a, velocity = theta.copy(), np.zeros_like(theta)
    ws = np.empty(net.workspace_size(batch), dtype)
    opt = optim.SGD(lr=0.05, momentum=0.9, nesterov=True)
    b, state = theta.copy(), {"step": 1, "momentum_buffer": np.zeros_like(theta)}
    for epoch in range(2):
        r = net.fit_epoch(a, X, Y, order, batch, ws, np.empty_like(a), velocity, n_threads,
                          0.05, momentum=0.9, nesterov=True, l2=0.3, sample_weight=sw,
                          sklearn_weights=True)
        ref = _replay(net, b, X, Y, order, batch, opt, state, 0.05, l2=0.3, sample_weight=sw,
                      sklearn_weights=True)
        assert r[4] == 0
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(velocity, state["momentum_buffer"])
        np.testing.assert_allclose(r[0], ref[0], rtol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(r[2], ref[1], rtol=1e-12)
    # unweighted, the flag changes nothing
    c, d = theta.copy(), theta.copy()
    sc, sd = (optim._SklearnAdam(lr=0.01).init_state(net.n_params, dtype) for _ in range(2))
    rc = _fit(net, c, X, Y, order, batch, optim._SklearnAdam(lr=0.01), sc, n_threads, 0.01,
              l2=0.3)
    rd = _fit(net, d, X, Y, order, batch, optim._SklearnAdam(lr=0.01), sd, n_threads, 0.01,
              l2=0.3, sklearn_weights=True)
    np.testing.assert_array_equal(c, d)
    assert rc == rd


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_weights_of_one_change_nothing(dtype):
    sizes, n, batch = SHAPES["blocked"]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True)
    a, b = theta.copy(), theta.copy()
    opt = optim.Adam(lr=0.01)
    sa, sb = opt.init_state(net.n_params, dtype), opt.init_state(net.n_params, dtype)
    ra = _fit(net, a, X, Y, order, batch, opt, sa, 1, 0.01)
    rb = _fit(net, b, X, Y, order, batch, opt, sb, 1, 0.01, sample_weight=np.ones(n, dtype))
    np.testing.assert_array_equal(a, b)
    _assert_same_state(sa, sb)
    assert ra == rb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_weighted_gradients_are_duplicated_rows(forced, dtype, n_threads):
    """Integer weights: the weighted objective is the mean over the batch with
    row i repeated s_i times (zero: removed); so are its loss and gradient."""
    sizes = SHAPES["blocked"][0]
    net, theta, X, Y, _ = _problem(sizes, 60, dtype, True)
    sw = _weights(60, np.random.default_rng(5), dtype)
    rep = np.repeat(np.arange(60), sw.astype(int))
    g_w, g_d = np.empty_like(theta), np.empty_like(theta)
    loss_w = net.gradients(theta, X, Y, g_w, n_threads, sample_weight=sw)
    loss_d = net.gradients(theta, np.ascontiguousarray(X[rep]), np.ascontiguousarray(Y[rep]),
                           g_d, 1)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss_w, loss_d, rtol=tol)
    np.testing.assert_allclose(g_w, g_d, rtol=tol * 50, atol=tol * np.abs(g_d).max())
    mean_w = net.loss(theta, X, Y, 7, n_threads, sample_weight=sw)
    mean_d = net.loss(theta, np.ascontiguousarray(X[rep]), np.ascontiguousarray(Y[rep]), 7, 1)
    np.testing.assert_allclose(mean_w, mean_d, rtol=tol)
    # weights summing to zero: nothing
    g = np.full_like(theta, 7)
    assert net.gradients(theta, X, Y, g, n_threads, sample_weight=np.zeros(60, dtype)) == 0.0
    assert not g.any()
    assert net.loss(theta, X, Y, 7, 1, sample_weight=np.zeros(60, dtype)) == (0.0, 0.0)


def test_sample_weight_bad_layout():
    net, theta, X, Y, order = _problem([4, 6, 3], 10, np.float64, True)
    g = np.empty_like(theta)
    for bad in (np.ones(9), np.ones(10, np.float32), np.ones((10, 1)), [1.0] * 10):
        with pytest.raises(ValueError, match="sample_weight"):
            net.gradients(theta, X, Y, g, 1, sample_weight=bad)


# -- dropout ----------------------------------------------------------------

def _numpy_grad(net, theta, X, Y, p, seed, epoch, step, hidden="tanh"):
    """Mean cross-entropy gradient of a softmax MLP with inverted dropout, in
    float64 numpy, masks from fastbp._philox."""
    sizes = [int(v) for v in net.sizes]
    L = len(sizes) - 1
    act = {"tanh": (np.tanh, lambda a: 1 - a * a),
           "relu": (lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(float))}[hidden]
    Ws, bs = [], []
    for k in range(L):
        off = int(net.w_off[k])
        Ws.append(theta[off:off + sizes[k] * sizes[k + 1]].reshape(sizes[k + 1], sizes[k]))
        bs.append(theta[int(net.b_off[k]):int(net.b_off[k]) + sizes[k + 1]])
    m = X.shape[0]
    hs, acts, masks = [X], [None], [None]
    unit0 = 0
    for k in range(L):
        z = hs[-1] @ Ws[k].T + bs[k]
        if k == L - 1:
            break
        a = act[0](z)
        keep = _philox.dropout_mask(seed, epoch, step, m, sizes[k + 1], p[k], unit0)
        unit0 += sizes[k + 1]
        scale = 1.0 / (1.0 - p[k])
        acts.append(a)
        masks.append(keep * scale)
        hs.append(a * keep * scale)
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    yhat = e / e.sum(axis=1, keepdims=True)
    delta = (yhat - Y) / m
    grads = [None] * L
    for k in range(L - 1, -1, -1):
        grads[k] = (delta.T @ hs[k], delta.sum(axis=0))
        if k:
            delta = (delta @ Ws[k]) * act[1](acts[k]) * masks[k]
    g = np.zeros_like(theta)
    for k in range(L):
        off = int(net.w_off[k])
        g[off:off + sizes[k] * sizes[k + 1]] = grads[k][0].ravel()
        g[int(net.b_off[k]):int(net.b_off[k]) + sizes[k + 1]] = grads[k][1]
    return g


@pytest.mark.parametrize("hidden", ["tanh", "relu"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dropout_gradients_match_philox_masks(forced, hidden, n_threads, shape):
    sizes, n, _ = SHAPES[shape]
    net, theta, X, Y, _ = _problem(sizes, n, np.float64, True, hidden=hidden)
    p = np.array([0.3, 0.55][:len(sizes) - 2])
    g = np.empty_like(theta)
    net.gradients(theta, X, Y, g, n_threads, dropout=p, seed=2**40 + 7, epoch=3, step=11)
    ref = _numpy_grad(net, theta, X, Y, p, 2**40 + 7, 3, 11, hidden)
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-13)
    # another step, epoch or seed: other masks
    for kw in ({"step": 12}, {"epoch": 4}, {"seed": 2**40 + 8}):
        args = {"seed": 2**40 + 7, "epoch": 3, "step": 11, **kw}
        g2 = np.empty_like(theta)
        net.gradients(theta, X, Y, g2, n_threads, dropout=p, **args)
        assert not np.array_equal(g, g2)
        np.testing.assert_allclose(g2, _numpy_grad(net, theta, X, Y, p, hidden=hidden, **args),
                                   rtol=1e-10, atol=1e-13)
    # p = 0 everywhere is no dropout, bitwise
    g0, gn = np.empty_like(theta), np.empty_like(theta)
    net.gradients(theta, X, Y, g0, n_threads, dropout=np.zeros(len(sizes) - 2))
    net.gradients(theta, X, Y, gn, n_threads)
    np.testing.assert_array_equal(g0, gn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dropout_epoch(forced, dtype, n_threads, shape):
    """A dropout epoch == the replay whose gradients use the same masks
    (seed, epoch, batch index), bitwise, also with the dropout arrays
    outside the workspace."""
    sizes, n, batch = SHAPES[shape]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True, hidden="relu")
    p = np.array([0.25, 0.0][:len(sizes) - 2])
    for name in ("adamw", "sgd-momentum"):
        _check_epoch(net, theta, X, Y, order, batch, OPTIMIZERS[name], n_threads, dropout=p,
                     seed=99)
    # a workspace without room for the dropout arrays: the same bits
    opt = optim.Adam(lr=0.01)
    a, b = theta.copy(), theta.copy()
    sa, sb = opt.init_state(net.n_params, dtype), opt.init_state(net.n_params, dtype)
    _fit(net, a, X, Y, order, batch, opt, sa, n_threads, 0.01, dropout=p, seed=5)
    ws = np.empty(net.workspace_size(batch), dtype)
    net.fit_epoch(b, X, Y, order, batch, ws, np.empty_like(b), np.empty(0, dtype), n_threads,
                  0.01, optimizer=opt, state=sb, dropout=p, seed=5)
    np.testing.assert_array_equal(a, b)


def test_dropout_legacy_path_and_bad_values():
    sizes, n, batch = SHAPES["small"]
    net, theta, X, Y, order = _problem(sizes, n, np.float64, True)
    ws = np.empty(net.workspace_size(batch, dropout=np.array([0.5])), np.float64)
    empty = np.empty(0)
    a = theta.copy()
    net.fit_epoch(a, X, Y, order, batch, ws, empty, empty, 1, 0.1, dropout=np.array([0.5]),
                  seed=1)
    b = theta.copy()
    opt = optim.SGD(lr=0.1)
    _replay(net, b, X, Y, order, batch, opt, opt.init_state(net.n_params, np.float64), 0.1,
            dropout=np.array([0.5]), seed=1)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    g = np.empty_like(theta)
    for bad in (np.array([1.0]), np.array([-0.1]), np.array([np.nan]), np.array([0.1, 0.2]),
                np.array([0.5], np.float32), [0.5]):
        with pytest.raises(ValueError, match="dropout"):
            net.gradients(theta, X, Y, g, 1, dropout=bad)


# -- snapshots, pieces, divergence, bad arguments ---------------------------

@pytest.mark.parametrize("name", ["adam-decay-amsgrad", "rmsprop-centered-momentum",
                                  "sgd-momentum"])
@pytest.mark.parametrize("clip_norm", [0.0, 0.1])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_snapshot_and_pieces(forced, name, clip_norm, n_threads):
    sizes, n, batch = SHAPES["blocked"]
    dtype = np.float32
    net, theta, X, Y, order = _problem(sizes, n, dtype, True)
    opt = OPTIMIZERS[name]()
    # the replay after 1 and after 3 steps
    r1, s1 = theta.copy(), opt.init_state(net.n_params, dtype)
    _replay(net, r1, X, Y, order, batch, opt, s1, opt.lr, clip_norm=clip_norm, max_steps=1)
    full, sfull = theta.copy(), opt.init_state(net.n_params, dtype)
    _replay(net, full, X, Y, order, batch, opt, sfull, opt.lr, clip_norm=clip_norm)
    # the epoch in pieces of 1 and 2 steps, the snapshot at step 1
    a, sa = theta.copy(), opt.init_state(net.n_params, dtype)
    snap = np.empty_like(a)
    snap_state = opt.init_state(net.n_params, dtype)
    snap_state["step"] = -1
    r = _fit(net, a, X, Y, order, batch, opt, sa, n_threads, opt.lr, max_steps=1,
             clip_norm=clip_norm, snapshot=snap, snapshot_step=1, snapshot_state=snap_state)
    assert r[3] == batch and sa["step"] == 1 and snap_state["step"] == -1   # no step 1 yet
    r = _fit(net, a, X, Y, order, batch, opt, sa, n_threads, opt.lr, first_step=1,
             clip_norm=clip_norm, snapshot=snap, snapshot_step=1, snapshot_state=snap_state)
    assert r[3] == n - batch and r[4] == 0
    np.testing.assert_array_equal(snap, r1)
    _assert_same_state(snap_state, s1)
    np.testing.assert_array_equal(a, full)
    _assert_same_state(sa, sfull)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_divergence_stops_before_the_bad_step(forced, dtype, n_threads):
    sizes, n, batch = SHAPES["blocked"]
    net, theta, X, Y, order = _problem(sizes, n, dtype, True, hidden="relu")
    opt = optim.Adam(lr=1e30 if dtype == np.float32 else 1e300)
    a, sa = theta.copy(), opt.init_state(net.n_params, dtype)
    with np.errstate(all="ignore"):
        r = _fit(net, a, X, Y, order, batch, opt, sa, n_threads, opt.lr)
        assert r[4] == 1
        steps = sa["step"]
        assert 1 <= steps < -(-n // batch) and r[3] == steps * batch
        b, sb = theta.copy(), opt.init_state(net.n_params, dtype)
        _replay(net, b, X, Y, order, batch, opt, sb, opt.lr, max_steps=steps)
    np.testing.assert_array_equal(a, b)
    _assert_same_state(sa, sb)


def test_bad_optimizer_arguments():
    sizes, n, batch = SHAPES["small"]
    net, theta, X, Y, order = _problem(sizes, n, np.float64, True)
    ws = np.empty(net.workspace_size(batch))
    g, empty = np.empty_like(theta), np.empty(0)
    opt = optim.Adam()
    state = opt.init_state(net.n_params, np.float64)

    def fit(**kw):
        args = dict(optimizer=opt, state=state)
        args.update(kw)
        return net.fit_epoch(theta, X, Y, order, batch, ws, g, empty, 1, 0.01, **args)

    with pytest.raises(ValueError, match="momentum"):
        fit(momentum=0.9)
    with pytest.raises(ValueError, match="state"):
        fit(state=None)
    with pytest.raises(ValueError, match="exp_avg"):
        fit(state=optim.SGD(momentum=0.5).init_state(net.n_params, np.float64))
    with pytest.raises(ValueError, match="float64"):
        fit(state=opt.init_state(net.n_params, np.float32))
    with pytest.raises(ValueError, match="optimizer"):
        fit(optimizer=optim.LBFGS())
    with pytest.raises(ValueError, match="optimizer"):
        fit(optimizer="adam")
    with pytest.raises(ValueError, match="clip_norm"):
        fit(clip_norm=-1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        fit(clip_norm=float("nan"))
    with pytest.raises(ValueError, match="lr"):
        net.fit_epoch(theta, X, Y, order, batch, ws, g, empty, 1, float("inf"),
                      optimizer=opt, state=state)
    with pytest.raises(ValueError, match="grad"):
        net.fit_epoch(theta, X, Y, order, batch, ws, empty, empty, 1, 0.01,
                      optimizer=opt, state=state)
    assert state["step"] == 0 and not state["exp_avg"].any()
