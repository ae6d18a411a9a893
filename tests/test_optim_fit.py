"""MLP.fit / step with fastbp.optim's optimizers, sample weights, dropout and clipping.

Against torch.optim (same initial weights, same batch order), against numpy
replays of ``optimizer.update`` (bitwise), against the pure-Python reference
(dropout masks), and the optimizer state as model state: persistence across
fits, files, pickles, rewind, early stopping, reset, mismatch errors; bad
inputs.  The torch comparisons skip when torch is absent.
"""
import copy
import pickle

import numpy as np
import pytest

import fastbp
from fastbp import optim, reference, schedules

from _helpers import torch_optimizer


def blobs(n=200, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_out, size=n)
    centers = rng.normal(scale=2.0, size=(n_out, n_in))
    return centers[y] + rng.normal(size=(n, n_in)), y


def make(dtype="float64", sizes=(5, 16, 12, 3), **kw):
    return fastbp.MLP(list(sizes), activation="tanh", dtype=dtype, seed=1, **kw)


def params(net):
    return [p for k in range(net.n_layers) for p in (net.weights[k], net.biases[k])]


def max_rel(net, torch_params):
    """max |fastbp - torch| / max |torch| over every parameter."""
    ours = np.concatenate([p.ravel().astype(np.float64) for p in params(net)])
    theirs = np.concatenate([t.detach().numpy().ravel().astype(np.float64) for t in torch_params])
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def torch_copy(net):
    """A torch Sequential with the net's weights (tanh hidden), and its parameter list."""
    torch = pytest.importorskip("torch")
    dt = torch.float64 if net.dtype == np.float64 else torch.float32
    layers = []
    for k in range(net.n_layers):
        lin = torch.nn.Linear(*net.weights[k].shape[::-1]).to(dt)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(net.weights[k].copy()))
            lin.bias.copy_(torch.from_numpy(net.biases[k].copy()))
        layers += [lin, torch.nn.Tanh()]
    seq = torch.nn.Sequential(*layers[:-1])
    return seq, list(seq.parameters())


def torch_run(net, opt, X, y, epochs, batch_size, seed, sample_weight=None, clip=None,
              lr_of=None):
    """The same fit in torch: fastbp's permutations, one step per batch."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    seq, ps = torch_copy(net)
    topt = torch_optimizer(opt, ps)
    rng = np.random.default_rng(seed)
    Xt, yt = torch.from_numpy(X.astype(net.dtype)), torch.from_numpy(y)
    sw = None if sample_weight is None else torch.from_numpy(sample_weight.astype(net.dtype))
    for epoch in range(epochs):
        if lr_of is not None:
            for group in topt.param_groups:
                group["lr"] = lr_of(epoch, opt.lr)
        order = torch.from_numpy(rng.permutation(len(X)))
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            topt.zero_grad()
            if sw is None:
                loss = F.cross_entropy(seq(Xt[idx]), yt[idx])
            else:
                s = sw[idx]
                if float(s.sum()) == 0.0:
                    continue  # a batch of weight 0 takes no step
                loss = (F.cross_entropy(seq(Xt[idx]), yt[idx], reduction="none") * s).sum() / s.sum()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(ps, clip)
            topt.step()
    return ps


OPTIMIZERS = [
    optim.SGD(lr=0.05),
    optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    optim.SGD(lr=0.05, momentum=0.5, weight_decay=0.003),
    optim.Adam(lr=0.01),
    optim.Adam(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01, amsgrad=True),
    optim.AdamW(lr=0.01),
    optim.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True),
    optim.RMSprop(lr=0.001),
    optim.RMSprop(lr=0.001, alpha=0.9, weight_decay=0.01, momentum=0.5, centered=True),
    optim.RMSprop(lr=0.001, momentum=0.9),
    optim.RMSprop(lr=0.001, centered=True),
]
IDS = [repr(o) for o in OPTIMIZERS]
TOL = {"float64": 1e-10, "float32": 1e-5}


# ---------------------------------------------------------------------------
# exactly torch.optim

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=IDS)
def test_fit_is_torch_optim(opt, dtype):
    """100 steps (5 shuffled epochs of 20 batches) from the same weights."""
    X, y = blobs()
    net = make(dtype)
    ps = torch_run(net, opt, X, y, epochs=5, batch_size=10, seed=3)
    net.fit(X, y, epochs=5, batch_size=10, seed=3, optimizer=opt)
    assert max_rel(net, ps) <= TOL[dtype]
    assert net.optimizer_state().get("step", 100) == 100


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [OPTIMIZERS[1], OPTIMIZERS[4], OPTIMIZERS[8]], ids=repr)
def test_schedule_scales_every_optimizers_lr(opt, dtype):
    X, y = blobs()
    net = make(dtype)
    sched = schedules.StepDecay(step_size=1, gamma=0.5)
    ps = torch_run(net, opt, X, y, epochs=4, batch_size=10, seed=0, lr_of=sched)
    hist = net.fit(X, y, epochs=4, batch_size=10, seed=0, optimizer=opt, schedule=sched)
    np.testing.assert_allclose(hist.lr, [opt.lr * 0.5 ** e for e in range(4)], rtol=1e-15)
    assert max_rel(net, ps) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [OPTIMIZERS[1], OPTIMIZERS[3], OPTIMIZERS[6], OPTIMIZERS[8]],
                         ids=repr)
def test_sample_weight_is_torchs_weighted_mean(opt, dtype):
    X, y = blobs()
    rng = np.random.default_rng(5)
    sw = rng.uniform(0, 3, size=len(X))
    sw[rng.random(len(X)) < 0.2] = 0.0   # zero weights ...
    sw[20:30] = 0.0                       # ... and, unshuffled, a whole batch of them
    net = make(dtype)
    ps = torch_run(net, opt, X, y, epochs=4, batch_size=10, seed=2, sample_weight=sw)
    net.fit(X, y, epochs=4, batch_size=10, seed=2, optimizer=opt, sample_weight=sw)
    assert max_rel(net, ps) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [OPTIMIZERS[0], OPTIMIZERS[1], OPTIMIZERS[4], OPTIMIZERS[9]],
                         ids=repr)
def test_clip_grad_norm_is_torchs(opt, dtype):
    X, y = blobs()
    net = make(dtype)
    ps = torch_run(net, opt, X, y, epochs=3, batch_size=10, seed=4, clip=0.2)
    net.fit(X, y, epochs=3, batch_size=10, seed=4, optimizer=opt, clip_grad_norm=0.2)
    assert max_rel(net, ps) <= TOL[dtype]
    # The clip does bite: without it the weights differ.
    free = make(dtype)
    free.fit(X, y, epochs=3, batch_size=10, seed=4, optimizer=opt)
    assert max_rel(free, ps) > 100 * TOL[dtype]


def test_shorthand_is_sgd_object():
    X, y = blobs()
    a, b = make(), make()
    a.fit(X, y, epochs=2, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, seed=0)
    b.fit(X, y, epochs=2, seed=0,
          optimizer=optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))
    assert a._theta.tobytes() == b._theta.tobytes()
    assert a.optimizer_state()["velocity"].tobytes() == b.optimizer_state()["velocity"].tobytes()
    c = make()
    c.fit(X, y, epochs=2, seed=0, optimizer="sgd")  # by name: SGD(lr=0.01)
    d = make()
    d.fit(X, y, epochs=2, seed=0)  # lr None: 0.01
    assert c._theta.tobytes() == d._theta.tobytes()


# ---------------------------------------------------------------------------
# bitwise the numpy update of fastbp.optim on the kernels' gradients

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [o for o in OPTIMIZERS if o.name != "sgd"], ids=repr)
def test_fit_is_the_numpy_update_bitwise(opt, dtype):
    X, y = blobs(n=60)
    a, b = make(dtype), make(dtype)
    a.fit(X, y, epochs=2, batch_size=16, shuffle=False, optimizer=opt)
    state = opt.init_state(b.n_params, b.dtype)
    for _ in range(2):
        for start in range(0, len(X), 16):
            _, grads = b.gradients(X[start:start + 16], y[start:start + 16])
            g = np.concatenate([x.ravel() for pair in grads for x in pair])
            opt.update(b._theta, g, state, opt.lr)
    assert a._theta.tobytes() == b._theta.tobytes()
    got = a.optimizer_state()
    assert got["step"] == state["step"] == 8
    for name in opt.state_names():
        assert got[name].tobytes() == state[name].tobytes(), name


@pytest.mark.parametrize("opt", [OPTIMIZERS[1], OPTIMIZERS[4], OPTIMIZERS[8]], ids=repr)
def test_step_is_one_step_of_fit(opt):
    X, y = blobs(n=48)
    a, b = make(), make()
    a.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=opt)
    losses = [b.step(X[s:s + 16], y[s:s + 16], optimizer=opt) for s in range(0, 48, 16)]
    assert a._theta.tobytes() == b._theta.tobytes()
    assert a.optimizer_state()["step"] == b.optimizer_state()["step"] == 3
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_bitwise_for_any_thread_count(n_threads):
    X, y = blobs(n=300, n_in=40)
    before = fastbp.get_num_threads()
    out = []
    try:
        for t in (1, n_threads):
            fastbp.set_num_threads(t)
            net = make("float32", sizes=(40, 64, 48, 3), dropout=0.3)
            rng = np.random.default_rng(0)
            net.fit(X, y, epochs=2, batch_size=32, seed=0, clip_grad_norm=1.0,
                    optimizer=optim.Adam(lr=0.01, amsgrad=True),
                    sample_weight=rng.uniform(size=len(X)))
            out.append(net._theta.tobytes())
    finally:
        fastbp.set_num_threads(before)
    assert out[0] == out[1]


# ---------------------------------------------------------------------------
# sample weights

def test_weighted_loss_and_gradients_against_reference_and_definition():
    X, y = blobs(n=30)
    net = make()
    ref = reference.MLP(net.layer_sizes, activation="tanh", dtype="float64",
                        weights=list(net.weights), biases=list(net.biases))
    sw = np.random.default_rng(1).uniform(size=30)
    sw[3] = 0.0
    loss, grads = net.gradients(X, y, sample_weight=sw)
    r_loss, r_grads = ref.gradients(X, y, sample_weight=sw)
    assert loss == pytest.approx(r_loss, rel=1e-12)
    assert net.loss(X, y, sample_weight=sw) == pytest.approx(r_loss, rel=1e-12)
    for (dW, db), (rW, rb) in zip(grads, r_grads):
        np.testing.assert_allclose(dW, rW, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db, rb, rtol=1e-10, atol=1e-14)
    # Integer weights are repeated rows; weight 0 drops the row.
    reps = np.array([2, 0, 1, 3] + [1] * 26)
    rows = np.repeat(np.arange(30), reps)
    assert net.loss(X, y, sample_weight=reps) == pytest.approx(net.loss(X[rows], y[rows]), rel=1e-13)
    _, g_rep = net.gradients(X[rows], y[rows])
    _, g_w = net.gradients(X, y, sample_weight=reps)
    for (a, _), (b, _) in zip(g_w, g_rep):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
    # Uniform weights change nothing.
    assert net.loss(X, y, sample_weight=np.full(30, 7.0)) == pytest.approx(net.loss(X, y), rel=1e-14)


def test_weighted_fit_history_and_step():
    X, y = blobs(n=40)
    sw = np.random.default_rng(2).uniform(0.5, 2, size=40)
    a, b = make(), make()
    hist = a.fit(X, y, epochs=1, batch_size=8, shuffle=False, sample_weight=sw, lr=0.1)
    losses = [b.step(X[s:s + 8], y[s:s + 8], 0.1, sample_weight=sw[s:s + 8]) for s in range(0, 40, 8)]
    assert a._theta.tobytes() == b._theta.tobytes()
    batch_sums = sw.reshape(5, 8).sum(axis=1)
    assert hist.loss[0] == pytest.approx(np.dot(losses, batch_sums) / sw.sum(), rel=1e-12)


def test_zero_weight_batches_take_no_step_and_do_not_count():
    X, y = blobs(n=40)
    sw = np.ones(40)
    sw[8:16] = 0.0
    a, b = make(), make()
    a.fit(X, y, epochs=1, batch_size=8, shuffle=False, sample_weight=sw, optimizer=optim.Adam())
    keep = np.r_[0:8, 16:40]
    b.fit(X[keep], y[keep], epochs=1, batch_size=8, shuffle=False, optimizer=optim.Adam())
    np.testing.assert_allclose(a._theta, b._theta, rtol=1e-12, atol=1e-15)
    assert a.optimizer_state()["step"] == b.optimizer_state()["step"] == 4


# ---------------------------------------------------------------------------
# dropout

def _pair(dtype="float64", dropout=0.4, sizes=(5, 9, 7, 3), activation="tanh", bias=True):
    net = fastbp.MLP(list(sizes), activation=activation, dtype=dtype, seed=2, bias=bias,
                     dropout=dropout)
    ref = reference.MLP(list(sizes), activation=activation, dtype=dtype, bias=bias,
                        dropout=dropout, weights=[w.copy() for w in net.weights],
                        biases=[b.copy() for b in net.biases] if bias else None)
    return net, ref


def test_reference_dropout_gradients_are_the_derivative_of_the_masked_loss():
    X, y = blobs(n=6)
    _, ref = _pair(sizes=(5, 4, 3, 3), activation="sigmoid")
    key = (11, 2, 3)
    Xl, Yl = ref._inputs_and_targets(X, y)
    _, _, _, dWs, _ = ref._loss_and_grads(Xl.tolist(), Yl.tolist(), None, key)
    for k, (i, j) in [(0, (1, 2)), (1, (2, 0)), (2, (0, 2))]:
        W = ref.weights[k]
        h = 1e-6
        W[i, j] += h
        up = ref._loss_and_grads(Xl.tolist(), Yl.tolist(), None, key)[0]
        W[i, j] -= 2 * h
        down = ref._loss_and_grads(Xl.tolist(), Yl.tolist(), None, key)[0]
        W[i, j] += h
        assert dWs[k][i][j] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("dropout", [0.5, (0.0, 0.3), (0.6, 0.1)])
def test_dropout_fast_equals_reference(dtype, activation, dropout):
    X, y = blobs(n=24)
    net, ref = _pair(dtype, dropout, activation=activation)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=1e-5)
    for key in [(0, 0, 0), (7, 1, 2)]:
        loss, grads = net.gradients(X, y, training=True, seed=key[0], epoch=key[1], step=key[2])
        r_loss, r_grads = ref.gradients(X, y, training=True, seed=key[0], epoch=key[1],
                                        step=key[2])
        assert loss == pytest.approx(r_loss, rel=tol["rtol"], abs=tol["atol"])
        for (dW, db), (rW, rb) in zip(grads, r_grads):
            np.testing.assert_allclose(dW, rW, **tol)
            np.testing.assert_allclose(db, rb, **tol)
    net.fit(X, y, epochs=2, batch_size=8, seed=5, lr=0.1)
    ref.fit(X, y, epochs=2, batch_size=8, seed=5, lr=0.1)
    for k in range(net.n_layers):
        np.testing.assert_allclose(net.weights[k], ref.weights[k], **tol)


def test_dropout_only_while_training():
    X, y = blobs(n=30)
    drop, _ = _pair(dropout=0.5)
    plain = fastbp.MLP([5, 9, 7, 3], activation="tanh", dtype="float64", seed=2)
    assert drop.predict(X).tobytes() == plain.predict(X).tobytes()
    assert drop.loss(X, y) == plain.loss(X, y)
    l0, g0 = drop.gradients(X, y)
    l1, g1 = plain.gradients(X, y)
    assert l0 == l1 and all(a.tobytes() == b.tobytes() for p, q in zip(g0, g1) for a, b in zip(p, q))
    l2, _ = drop.gradients(X, y, training=True)
    assert l2 != l0
    # The masks depend on the key; p = 0 is no dropout at all.
    assert drop.gradients(X, y, training=True, seed=1)[0] != l2
    zero, _ = _pair(dropout=0.0)
    assert zero.gradients(X, y, training=True)[0] == l1


def test_dropout_fit_is_reproducible_and_validation_does_not_drop():
    X, y = blobs()
    a, _ = _pair(dropout=0.3)
    b, _ = _pair(dropout=0.3)
    ha = a.fit(X, y, epochs=2, seed=4, validation_split=0.2)
    hb = b.fit(X, y, epochs=2, seed=4, validation_split=0.2)
    assert a._theta.tobytes() == b._theta.tobytes()
    assert ha.val_loss[-1] == pytest.approx(a.loss(X[160:], y[160:]), rel=1e-12)
    c, _ = _pair(dropout=0.3)
    c.fit(X, y, epochs=2, seed=5, validation_split=0.2)
    assert c._theta.tobytes() != a._theta.tobytes()
    assert hb.loss == ha.loss


def test_dropout_pickles_and_repr():
    net, _ = _pair(dropout=(0.1, 0.2))
    assert "dropout=(0.1, 0.2)" in repr(net)
    back = pickle.loads(pickle.dumps(net))
    assert back.dropout == (0.1, 0.2) and back._dropout.tolist() == [0.1, 0.2]
    X, y = blobs(n=10)
    assert back.gradients(X, y, training=True)[0] == net.gradients(X, y, training=True)[0]


# ---------------------------------------------------------------------------
# the optimizer state is model state

def state_bytes(net):
    return {k: (v.tobytes() if isinstance(v, np.ndarray) else v)
            for k, v in net.optimizer_state().items()}


@pytest.mark.parametrize("opt", [OPTIMIZERS[1], OPTIMIZERS[4], OPTIMIZERS[6], OPTIMIZERS[8]],
                         ids=repr)
def test_state_persists_across_fits(opt):
    X, y = blobs(n=60)
    a, b = make(), make()
    a.fit(X, y, epochs=2, batch_size=16, shuffle=False, optimizer=opt)
    b.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=opt)
    b.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=opt)
    assert a._theta.tobytes() == b._theta.tobytes() and state_bytes(a) == state_bytes(b)
    # Without the state the second fit would differ (Adam's bias correction, ...).
    c = make()
    c.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=opt)
    c.reset_optimizer()
    assert c.optimizer_state() == {}
    c.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=opt)
    assert c._theta.tobytes() != a._theta.tobytes()


def test_state_contents():
    X, y = blobs(n=40)
    net = make("float32")
    opt = optim.Adam(lr=0.02, amsgrad=True)
    net.fit(X, y, epochs=2, batch_size=16, optimizer=opt)
    state = net.optimizer_state()
    assert set(state) == {"optimizer", "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert state["optimizer"] == opt.get_config() and state["step"] == 6
    assert all(state[k].dtype == np.float32 and state[k].shape == (net.n_params,)
               for k in opt.state_names())
    state["exp_avg"][...] = 0  # a copy
    assert net.optimizer_state()["exp_avg"].any()
    other = make("float32")
    other.set_optimizer_state(net.optimizer_state())
    assert state_bytes(other) == state_bytes(net)
    assert opt == optim.Adam(lr=0.02, amsgrad=True)  # the object given is not modified


@pytest.mark.parametrize("how", ["file", "pickle", "deepcopy"])
def test_resume_from_file_or_pickle_is_bit_identical(tmp_path, how):
    X, y = blobs(n=60)
    opt = optim.RMSprop(lr=0.005, momentum=0.5, centered=True)
    net = make("float32")
    net.fit(X, y, epochs=1, batch_size=16, seed=0, optimizer=opt)
    if how == "file":
        net.save(tmp_path / "m.npz")
        back = fastbp.load(tmp_path / "m.npz")
    elif how == "pickle":
        back = pickle.loads(pickle.dumps(net))
    else:
        back = copy.deepcopy(net)
    assert state_bytes(back) == state_bytes(net)
    net.fit(X, y, epochs=1, batch_size=16, seed=1, optimizer=opt)
    back.fit(X, y, epochs=1, batch_size=16, seed=1, optimizer=opt)
    assert back._theta.tobytes() == net._theta.tobytes() and state_bytes(back) == state_bytes(net)


def test_old_pickles_with_a_bare_velocity_still_load():
    X, y = blobs(n=40)
    net = make()
    net.fit(X, y, epochs=1, momentum=0.9)
    state = net.__getstate__()
    opt_state = state.pop("optimizer_state")
    state["velocity"] = opt_state["velocity"]  # as fastbp pickled it before
    back = fastbp.MLP.__new__(fastbp.MLP)
    back.__setstate__(state)
    assert back.optimizer_state()["velocity"].tobytes() == opt_state["velocity"].tobytes()


def test_mismatched_state_is_an_error_until_reset():
    X, y = blobs(n=40)
    net = make()
    net.fit(X, y, epochs=1, optimizer=optim.Adam())
    before = (net._theta.tobytes(), state_bytes(net))
    for other in [optim.RMSprop(), optim.Adam(amsgrad=True), optim.AdamW(),
                  optim.SGD(momentum=0.9)]:
        with pytest.raises(ValueError, match=r"cannot continue.*reset_optimizer"):
            net.fit(X, y, epochs=1, optimizer=other)
        with pytest.raises(ValueError, match=r"cannot continue"):
            net.step(X, y, optimizer=other)
        assert (net._theta.tobytes(), state_bytes(net)) == before
    with pytest.raises(ValueError, match=r"cannot continue"):
        net.fit(X, y, epochs=1, momentum=0.9)  # the shorthand is SGD
    assert (net._theta.tobytes(), state_bytes(net)) == before
    # Other hyper-parameters may change; a stateless SGD step leaves the state.
    net.fit(X, y, epochs=1, optimizer=optim.Adam(lr=0.1, eps=1e-3, weight_decay=0.1))
    adam = state_bytes(net)
    assert adam["optimizer"]["lr"] == 0.1 and adam["step"] == 4
    net.step(X, y, 0.01)
    net.fit(X, y, epochs=1, lr=0.01)
    assert state_bytes(net) == adam
    net.reset_optimizer()
    net.fit(X, y, epochs=1, optimizer=optim.RMSprop())
    assert net.optimizer_state()["step"] == 2


@pytest.mark.parametrize("opt", [optim.Adam(lr=1e-3), optim.SGD(lr=1e-3, momentum=0.9),
                                 optim.RMSprop(lr=1e-3, centered=True)], ids=repr)
def test_divergence_rewinds_the_optimizer_state_too(opt):
    X, y = blobs(n=64)
    net = make()
    # Three good epochs, then a rate that blows up the weights.
    with pytest.raises(FloatingPointError, match="diverged at epoch 4"):
        net.fit(X, y, epochs=6, batch_size=8, shuffle=False, optimizer=opt,
                schedule=lambda e, lr0: lr0 if e < 3 else 1.5e308)
    state = net.optimizer_state()
    good = state["step"]
    assert good >= 24 and np.isfinite(net._theta).all()
    # A replay of exactly that many good steps gives the same weights and state.
    replay = make()
    for t in range(good):
        s = (t % 8) * 8
        replay.step(X[s:s + 8], y[s:s + 8], optimizer=opt)
    assert replay._theta.tobytes() == net._theta.tobytes()
    assert state_bytes(replay) == state_bytes(net)


def test_early_stopping_restores_the_best_epochs_state():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    kw = dict(batch_size=4, validation_split=0.5, seed=0, optimizer=optim.Adam(lr=0.05))
    a = make()
    hist = a.fit(X, y, epochs=100, early_stopping=True, patience=3, **kw)
    assert hist.stopped_early
    b = make()
    b.fit(X, y, epochs=hist.best_epoch + 1, **kw)
    assert a._theta.tobytes() == b._theta.tobytes() and state_bytes(a) == state_bytes(b)


@pytest.mark.parametrize("had_state", [False, True])
def test_failing_callback_restores_the_state(had_state):
    X, y = blobs(n=40)
    net = make()
    if had_state:
        net.fit(X, y, epochs=1, optimizer=optim.AdamW())
    before = (net._theta.tobytes(), state_bytes(net))

    def cb(epoch, logs):
        if epoch == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        net.fit(X, y, epochs=3, optimizer=optim.AdamW(), callbacks=[cb])
    assert (net._theta.tobytes(), state_bytes(net)) == before


def test_workspace_counts_the_state():
    X, y = blobs(n=120, n_in=2)
    net = fastbp.MLP([2, 8, 3], activation="tanh", dtype="float64", seed=0)
    p = net.n_params * 8
    # Plain SGD: the workspace, the rewind copy, the one-hot targets.
    plain = net.fit(X, y, epochs=1, batch_size=16, shuffle=False).workspace_bytes
    grad = _grad_bytes(net)
    # A new exp_avg and exp_avg_sq, their rewind copies and the gradient buffer.
    hist = net.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=optim.Adam())
    assert hist.workspace_bytes - plain == 4 * p + grad
    # The state now exists: not allocated again.
    hist = net.fit(X, y, epochs=1, batch_size=16, shuffle=False, optimizer=optim.Adam())
    assert hist.workspace_bytes - plain == 2 * p + grad


def _grad_bytes(net):
    """The gradient buffer the optimizer path allocates (all of it, or none when fused)."""
    X, y = blobs(n=20, n_in=2)
    from fastbp.model import Epochs

    Xc, Yc = net._XY(X, y)
    with net._lock:
        saved = net._save_opt()
        net.reset_optimizer()
        runner = Epochs(net, Xc, Yc, 16, optimizer=optim.Adam())
        net._restore_opt(saved)
    return runner.grad.nbytes


# ---------------------------------------------------------------------------
# L-BFGS

def test_lbfgs_is_scipy_on_the_kernels_objective():
    pytest.importorskip("scipy")
    X, y = blobs(n=80)
    sw = np.random.default_rng(0).uniform(size=80)
    opt = optim.LBFGS(max_iter=30)
    net = make()
    start = net._theta.copy()
    hist = net.fit(X, y, optimizer=opt, sample_weight=sw)
    # The same minimisation written out with the public gradients().
    probe = make()

    def fun(theta):
        probe._theta[...] = theta
        loss, grads = probe.gradients(X, y, sample_weight=sw)
        return loss, np.concatenate([g.ravel() for pair in grads for g in pair])

    res = opt.minimize(fun, start)
    assert net._theta.tobytes() == res.theta.tobytes()
    assert len(hist.loss) == res.n_iter and hist.lr == []
    assert hist.loss[-1] == pytest.approx(res.loss, rel=1e-12)
    assert hist.loss[-1] < hist.loss[0] and len(hist.accuracy) == res.n_iter
    assert net.optimizer_state() == {}


def test_lbfgs_validation_callbacks_and_early_stopping():
    pytest.importorskip("scipy")
    X, y = blobs(n=80)
    seen = []
    net = make()
    hist = net.fit(X, y, optimizer=optim.LBFGS(max_iter=40), validation_split=0.25,
                   callbacks=[lambda it, logs: seen.append(it) or it == 4])
    assert seen == [0, 1, 2, 3, 4] and hist.stopped_early and len(hist.val_loss) == 5
    assert hist.val_loss[-1] == pytest.approx(net.loss(X[60:], y[60:]), rel=1e-12)
    es = make()
    h = es.fit(X, y, optimizer=optim.LBFGS(max_iter=500, tol=0.0), validation_split=0.25,
               early_stopping=True, patience=2)
    assert h.best_epoch is not None and h.val_loss[h.best_epoch] == min(h.val_loss)
    assert es.loss(X[60:], y[60:]) == pytest.approx(min(h.val_loss), rel=1e-12)


def test_lbfgs_failing_callback_restores_the_model():
    pytest.importorskip("scipy")
    X, y = blobs(n=40)
    net = make()
    before = net._theta.tobytes()

    def cb(it, logs):
        if it == 2:
            raise KeyError("x")

    with pytest.raises(KeyError):
        net.fit(X, y, optimizer=optim.LBFGS(), callbacks=[cb])
    assert net._theta.tobytes() == before


@pytest.mark.parametrize("kw", [dict(epochs=3), dict(batch_size=8), dict(shuffle=False),
                                dict(lr=0.1), dict(momentum=0.0), dict(schedule="cosine"),
                                dict(clip_grad_norm=1.0)], ids=lambda d: list(d)[0])
def test_lbfgs_rejects_options_that_mean_nothing_for_it(kw):
    X, y = blobs(n=20)
    net = make()
    before = net._theta.tobytes()
    with pytest.raises(ValueError, match=list(kw)[0]):
        net.fit(X, y, optimizer=optim.LBFGS(), **kw)
    assert net._theta.tobytes() == before


def test_lbfgs_refuses_dropout_and_single_steps():
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match="dropout"):
        make(dropout=0.2).fit(X, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="LBFGS takes no single steps"):
        make().step(X, y, optimizer=optim.LBFGS())


# ---------------------------------------------------------------------------
# bad input: ValueError naming the problem, the model unchanged

def _unchanged(net, call, error, pattern):
    before = (net._theta.tobytes(), state_bytes(net))
    with pytest.raises(error, match=pattern):
        call()
    assert (net._theta.tobytes(), state_bytes(net)) == before


@pytest.mark.parametrize("kw, pattern", [
    (dict(optimizer=optim.Adam(), lr=0.1), r"optimizer= or the SGD shorthand \(lr\)"),
    (dict(optimizer=optim.Adam(), momentum=0.0), r"\(momentum\)"),
    (dict(optimizer="sgd", nesterov=False, weight_decay=0.0), r"\(nesterov, weight_decay\)"),
    (dict(optimizer="nadam"), "unknown optimizer 'nadam'"),
    (dict(optimizer=3), "optimizer must be an Optimizer"),
    (dict(optimizer={"name": "adam", "betas": [1.0, 0.9]}), r"betas\[0\] must be in \[0, 1\)"),
    (dict(optimizer={"name": "adam", "eps": 0}), "eps must be > 0"),
    (dict(optimizer={"name": "rmsprop", "lr": float("nan")}), "lr must be"),
    (dict(clip_grad_norm=0), "clip_grad_norm must be None or a finite number > 0"),
    (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
    (dict(clip_grad_norm=float("inf")), "clip_grad_norm"),
    (dict(clip_grad_norm="1"), "clip_grad_norm"),
    (dict(sample_weight=np.ones(39)), r"sample_weight must have shape \(40,\)"),
    (dict(sample_weight=np.ones((40, 1))), r"sample_weight must have shape \(40,\)"),
    (dict(sample_weight=np.r_[np.ones(5), -1.0, np.ones(34)]), r"row 5 is -1.0"),
    (dict(sample_weight=np.r_[np.ones(7), np.nan, np.ones(32)]), r"finite and >= 0 \(row 7"),
    (dict(sample_weight=np.r_[np.ones(9), np.inf, np.ones(30)]), r"\(row 9 is inf\)"),
    (dict(sample_weight=np.zeros(40)), "sample_weight is all zero"),
    (dict(sample_weight="ones"), "sample_weight must be an array"),
    (dict(sample_weight=np.ones(40, dtype=bool)), "got booleans"),
    (dict(sample_weight=np.r_[np.zeros(30), np.ones(10)], validation_split=0.25),
     "all zero on the training rows"),
])
def test_bad_fit_arguments(kw, pattern):
    X, y = blobs(n=40)
    net = make()
    net.fit(X, y, epochs=1, optimizer=optim.Adam())
    _unchanged(net, lambda: net.fit(X, y, epochs=1, **kw), ValueError, pattern)


def test_bad_step_gradients_and_loss_arguments():
    X, y = blobs(n=10)
    net = make(dropout=0.1)
    bad = np.r_[np.ones(3), -2.0, np.ones(6)]
    for call in (lambda: net.step(X, y, sample_weight=bad), lambda: net.loss(X, y, sample_weight=bad),
                 lambda: net.gradients(X, y, sample_weight=bad)):
        _unchanged(net, call, ValueError, r"row 3 is -2.0")
    _unchanged(net, lambda: net.step(X, y, 0.1, optimizer="adam"), ValueError, r"shorthand \(lr\)")
    _unchanged(net, lambda: net.gradients(X, y, training="yes"), ValueError,
               "training must be a bool")
    _unchanged(net, lambda: net.gradients(X, y, training=True, seed=1.5), ValueError,
               "seed must be an integer")
    _unchanged(net, lambda: net.gradients(X, y, training=True, step=-1), ValueError,
               "step must be an integer >= 0")
    float32 = make("float32")
    _unchanged(float32, lambda: float32.loss(X, y, sample_weight=np.full(10, 1e300)), ValueError,
               "sample_weight row 0 overflows float32")


@pytest.mark.parametrize("dropout, pattern", [
    (1.0, r"dropout must be in \[0, 1\), got 1.0"),
    (-0.1, r"dropout must be in \[0, 1\)"),
    (float("nan"), r"dropout must be in \[0, 1\)"),
    ("0.5", "dropout must be a number"),
    (True, "dropout must be a number"),
    ((0.1,), r"one probability per hidden layer \(2\), got 1"),
    ((0.1, 1.5), r"dropout\[1\] must be in \[0, 1\)"),
])
def test_bad_dropout(dropout, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(dropout=dropout)
    with pytest.raises(ValueError, match=pattern):
        reference.MLP([5, 16, 12, 3], dropout=dropout)


def test_dropout_needs_hidden_layers():
    with pytest.raises(ValueError, match="has none"):
        fastbp.MLP([4, 3], dropout=0.5)
    assert fastbp.MLP([4, 3], dropout=0.0).dropout == 0.0


def test_set_optimizer_state_checks_everything():
    net = make()
    n = net.n_params
    good = {"optimizer": optim.Adam().get_config(), "step": 3,
            "exp_avg": np.zeros(n), "exp_avg_sq": np.zeros(n)}
    for change, pattern in [
        (dict(step=-1), r"state\['step'\] must be an integer >= 0"),
        (dict(step=1.5), r"state\['step'\] must be an integer"),
        (dict(exp_avg=np.zeros(n + 1)), r"exp_avg: expected shape"),
        (dict(exp_avg=np.full(n, np.nan)), "exp_avg contains NaN"),
        (dict(max_exp_avg_sq=np.zeros(n)), r"unexpected \['max_exp_avg_sq'\]"),
        (dict(optimizer={"name": "adam", "amsgrad": True}), r"missing \['max_exp_avg_sq'\]"),
        (dict(optimizer={"name": "nadam"}), "unknown optimizer name"),
    ]:
        _unchanged(net, lambda: net.set_optimizer_state({**good, **change}), ValueError, pattern)
    _unchanged(net, lambda: net.set_optimizer_state({"exp_avg": np.zeros(n)}), ValueError,
               "unknown optimizer state keys")
    net.set_optimizer_state(good)
    assert net.optimizer_state()["step"] == 3
    net.set_optimizer_state({"optimizer": optim.SGD().get_config(), "step": 2})  # stateless
    assert net.optimizer_state() == {}


def test_lbfgs_workspace_is_near_the_traced_peak():
    pytest.importorskip("scipy")
    import tracemalloc

    rng = np.random.default_rng(0)
    warm = fastbp.MLP([2, 3, 2])
    warm.fit(rng.normal(size=(10, 2)), rng.integers(0, 2, 10), optimizer=optim.LBFGS(max_iter=2))
    for n, sizes in [(1000, [20, 64, 32, 3]), (100, [30, 200, 100, 3])]:
        X, y = rng.normal(size=(n, sizes[0])), rng.integers(0, 3, n)
        net = fastbp.MLP(sizes, dtype="float64")
        tracemalloc.start()
        hist = net.fit(X, y, optimizer=optim.LBFGS(max_iter=10))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert 0.85 < hist.workspace_bytes / peak < 1.15


def test_lbfgs_workspace_counts_the_validation_loss_call():
    """L-BFGS with validation data: each iteration also runs a loss call on
    the validation rows, whose workspace (a chunk of up to _chunk_rows rows)
    can be the largest of the fit's kernel calls (here 2000 validation rows
    against 40 training rows).  History.workspace_bytes counts the largest
    workspace the kernel calls allocate (alloc_stats' call_ws), validation
    included, on 1 and 2 threads."""
    pytest.importorskip("scipy")
    from fastbp import _kernels
    rng = np.random.default_rng(0)
    sizes = [20, 64, 32, 3]
    X, Y = rng.normal(size=(40, 20)), rng.normal(size=(40, 3))
    Xv, Yv = rng.normal(size=(2000, 20)), rng.normal(size=(2000, 3))
    threads = fastbp.get_num_threads()
    try:
        for t in (1, 2):
            fastbp.set_num_threads(t)
            got = []
            for val in (None, (Xv, Yv)):
                net = fastbp.MLP(sizes, output="identity", loss="squared_error",
                                 dtype="float64", seed=0)
                _kernels.alloc_stats(reset=True)
                hist = net.fit(X, Y, optimizer=optim.LBFGS(max_iter=3), validation_data=val)
                got.append((hist.workspace_bytes, _kernels.alloc_stats()["call_ws"]))
            (plain, ws_plain), (with_val, ws_val) = got
            assert ws_val > ws_plain, "the premise: the validation loss call is the largest"
            # (the validation arrays need no conversion: the difference is the
            # kernel workspace alone)
            assert with_val - plain == (ws_val - ws_plain) * 8, t
    finally:
        fastbp.set_num_threads(threads)
