"""The optimizer paths (momentum, Nesterov, weight decay, scikit-learn's l2) against the reference.

``fastbp.reference.MLP.fit`` takes ``momentum``, ``nesterov``, ``weight_decay``
(torch.optim.SGD, decay on the biases too) and ``l2`` (what the scikit-learn
estimators pass to ``fastbp.model.Epochs``: mean loss + l2 / (2 m) ||W||^2 per
batch of m rows, weights only), written one parameter at a time, with the
velocity as state in the fast model's layout.  Here, for every setting, dtype,
thread count and bias setting:

- float64: whole fits (several epochs, shuffled, a last smaller batch) of the
  fast model and the reference agree within 1e-10 relative, parameters,
  velocity and the loss history (with l2: the objective, scikit-learn's
  ``loss_``);
- float32: step by step, the reference (float64) is set to the fast model's
  parameters and velocity before each step, and the step's result must lie
  within the bound derived from its roundings (tests/tolerances.py: the
  gradient's bound carried through g = grad + decay theta, v = mu v + g,
  theta -= lr (g + mu v | v), each operation rounded in float32); and on its
  own, from an exact gradient, within a few ulp
  (``test_optimizer_float32_within_a_few_ulp``).  With the velocity update
  of src/_kernels.pyx's sgd_range multiplied by (1 + 8 * 2**-24) in float32
  (injected by hand, never committed), that test failed in all 6 of its
  momentum cases, while tests/test_trainer.py and tests/test_torch_interop.py
  (PyTorch's SGD) passed.

``fit(optimizer=...)`` with fastbp.optim's SGD, Adam, AdamW and RMSprop, and
``sample_weight`` (each batch minimises sum s_i loss_i / sum s_i), are checked
against PyTorch (skipped without it) in float64: parameters, loss history and
every state array after three epochs within 1e-10, for three activation /
output / loss combinations, weighted and not.
"""
import itertools

import numpy as np
import pytest

import fastbp
from fastbp import _kernels, reference
from fastbp.model import Epochs

from tolerances import assert_close, assert_within, float32_bounds, float32_sgd_bound
from _helpers import torch_optimizer

SIZES = [4, 6, 3]
N = 11            # batch 4: batches of 4, 4, 3
BATCH = 4
LR = 0.125        # exact in float32
OPTIMIZERS = {
    "momentum": dict(momentum=0.875),
    "nesterov": dict(momentum=0.5, nesterov=True),
    "weight_decay": dict(weight_decay=0.0625),
    "l2": dict(l2=0.25),
    "all": dict(momentum=0.75, nesterov=True, weight_decay=0.03125, l2=0.1),
}
CASES = list(itertools.product(OPTIMIZERS, ["float32", "float64"], [1, 2], [True, False]))
IDS = [f"{o}-{d}-t{t}-{'b' if b else 'nob'}" for o, d, t, b in CASES]


@pytest.fixture
def threads():
    """Set the thread count, with every step on the parallel path when > 1."""
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    yield fastbp.set_num_threads
    fastbp.set_num_threads(before)
    _kernels.set_parallel_threshold(threshold)


def models(bias, dtype, seed=5):
    """A fast model of ``dtype`` and a float64 reference with the same (float32) parameters."""
    init = fastbp.MLP(SIZES, activation="tanh", bias=bias, dtype="float32", seed=seed)
    weights = [np.array(W) for W in init.weights]
    biases = None
    if bias:
        rng = np.random.default_rng(seed)
        biases = [rng.normal(scale=0.3, size=n).astype(np.float32) for n in SIZES[1:]]
    kw = dict(activation="tanh", output="softmax", loss="cross_entropy", bias=bias,
              weights=weights, biases=biases)
    return fastbp.MLP(SIZES, dtype=dtype, **kw), reference.MLP(SIZES, dtype="float64", **kw)


def data(seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], size=N)


def fast_epochs(fast, X, Y, epochs, seed, opt):
    """The fast model's fit with these optimizer settings, through Epochs as
    MLP.fit and the scikit-learn estimators drive it (MLP.fit has no l2)."""
    Xc, Yc = fast._XY(X, Y)
    runner = Epochs(fast, Xc, Yc, BATCH, momentum=opt.get("momentum", 0.0),
                    nesterov=opt.get("nesterov", False), weight_decay=opt.get("weight_decay", 0.0),
                    l2=opt.get("l2", 0.0))
    rng = np.random.default_rng(seed)
    objective = []
    for epoch in range(epochs):
        order = rng.permutation(N).astype(np.int64)
        loss_sum, _, penalty_sum = runner.epoch(order, LR, epoch)
        objective.append((loss_sum + penalty_sum) / N)
    return objective


def flat(net):
    """Parameters in the fast model's flat order (W_0, b_0, W_1, b_1, ...)."""
    parts = []
    for k in range(net.n_layers):
        parts.append(np.asarray(net.weights[k]).ravel())
        if net.bias:
            parts.append(np.asarray(net.biases[k]))
    return np.concatenate(parts)


@pytest.mark.parametrize("name,dtype,n_threads,bias", CASES, ids=IDS)
def test_optimizer_matches_reference(name, dtype, n_threads, bias, threads):
    threads(n_threads)
    opt = OPTIMIZERS[name]
    X, y = data()
    fast, ref = models(bias, dtype)
    if dtype == "float64":
        before = _kernels.parallel_regions()
        objective = fast_epochs(fast, X, y, epochs=3, seed=7, opt=opt)
        assert n_threads == 1 or _kernels.parallel_regions() > before, "ran serially on 2 threads"
        hist = ref.fit(X, y, epochs=3, batch_size=BATCH, lr=LR, seed=7, **opt)
        assert_close(objective, hist.loss, dtype, "loss history")
        assert_close(fast._theta, flat(ref), dtype, "parameters")
        if "momentum" in opt:
            assert_close(fast.optimizer_state()["velocity"], ref.optimizer_state()["velocity"],
                         dtype, "velocity")
        else:
            assert fast.optimizer_state() == ref.optimizer_state() == {}
        return
    # float32: each step from the same state, against its derived bound
    decay_b = opt.get("weight_decay", 0.0)  # l2 spares the biases
    mu, nesterov = opt.get("momentum", 0.0), opt.get("nesterov", False)
    for step, start in enumerate(range(0, 3 * BATCH, BATCH)):
        Xb, yb = X[start:start + BATCH], y[start:start + BATCH]
        m = len(Xb)
        decay_w = opt.get("weight_decay", 0.0) + opt.get("l2", 0.0) / m
        for k in range(ref.n_layers):  # the reference takes the fast model's state
            ref.weights[k][...] = fast.weights[k]
            if bias:
                ref.biases[k][...] = fast.biases[k]
        if mu:
            ref.set_optimizer_state(fast.optimizer_state())
        v0 = fast.optimizer_state().get("velocity")
        B = float32_bounds(ref, Xb, yb)
        theta0 = flat(ref)
        grad = np.concatenate([a.ravel() for k in range(ref.n_layers) for a in
                               ((B["dW_value"][k], B["db_value"][k]) if bias else (B["dW_value"][k],))])
        egrad = np.concatenate([a.ravel() for k in range(ref.n_layers) for a in
                                ((B["dW"][k], B["db"][k]) if bias else (B["dW"][k],))])
        decay = np.concatenate([np.full(a.size, d) for k in range(ref.n_layers) for a, d in
                                (((ref.weights[k], decay_w), (ref.biases[k], decay_b)) if bias
                                 else ((ref.weights[k], decay_w),))])
        etheta, evel = float32_sgd_bound(theta0, grad, egrad, v0 if v0 is not None else 0.0,
                                         LR, mu, nesterov, decay)
        before = _kernels.parallel_regions()
        fast_epochs_step(fast, Xb, yb, opt)
        assert n_threads == 1 or _kernels.parallel_regions() > before, "ran serially on 2 threads"
        ref.fit(Xb, yb, epochs=1, batch_size=m, lr=LR, shuffle=False, **opt)
        assert_within(fast._theta, flat(ref), etheta, f"step {step}: parameters")
        if mu:
            assert_within(fast.optimizer_state()["velocity"], ref.optimizer_state()["velocity"],
                          evel, f"step {step}: velocity")


def fast_epochs_step(fast, Xb, yb, opt):
    """One optimizer step of the fast model on one batch (the velocity is the model's)."""
    Xc, Yc = fast._XY(Xb, yb)
    runner = Epochs(fast, Xc, Yc, len(Xc), momentum=opt.get("momentum", 0.0),
                    nesterov=opt.get("nesterov", False), weight_decay=opt.get("weight_decay", 0.0),
                    l2=opt.get("l2", 0.0))
    *_, status = runner.run(None, LR)
    assert status == 0


@pytest.mark.parametrize("name", ["momentum", "nesterov", "weight_decay"])
def test_fit_keywords_match_reference(name):
    """MLP.fit's own keywords, two fits in a row: the velocity carries over."""
    opt = OPTIMIZERS[name]
    X, y = data()
    fast, ref = models(True, "float64")
    for seed in (1, 2):
        hf = fast.fit(X, y, epochs=2, batch_size=BATCH, lr=LR, seed=seed, **opt)
        hr = ref.fit(X, y, epochs=2, batch_size=BATCH, lr=LR, seed=seed, **opt)
        assert_close(hf.loss, hr.loss, "float64", "history")
        assert_close(fast._theta, flat(ref), "float64", "parameters")


def test_velocity_is_state():
    X, y = data()
    _, ref = models(True, "float64")
    assert ref.optimizer_state() == {}
    ref.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, momentum=0.9)
    state = ref.optimizer_state()
    assert state["velocity"].shape == (ref.n_params,) and np.any(state["velocity"] != 0)
    # the state round-trips, also into the fast model, and resuming equals one long fit
    fast, other = models(True, "float64")
    fast.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, momentum=0.9, shuffle=False)
    other.set_optimizer_state(fast.optimizer_state())
    np.testing.assert_array_equal(other.optimizer_state()["velocity"], fast.optimizer_state()["velocity"])
    one, two = models(True, "float64")[1], models(True, "float64")[1]
    one.fit(X, y, epochs=2, batch_size=BATCH, lr=LR, momentum=0.9, shuffle=False)
    two.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, momentum=0.9, shuffle=False)
    two.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, momentum=0.9, shuffle=False)
    np.testing.assert_array_equal(flat(one), flat(two))
    two.reset_optimizer()
    assert two.optimizer_state() == {}
    with pytest.raises(ValueError, match="velocity"):
        two.set_optimizer_state({"velocity": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown"):
        two.set_optimizer_state({"moments": np.zeros(two.n_params)})


def test_l2_penalises_weights_only():
    """With l2 alone, a bias gets exactly the plain gradient step."""
    X, y = data()
    a, b = models(True, "float64")[1], models(True, "float64")[1]
    a.fit(X, y, epochs=1, batch_size=N, lr=LR, shuffle=False, l2=0.5)
    b.fit(X, y, epochs=1, batch_size=N, lr=LR, shuffle=False)
    for k in range(a.n_layers):
        np.testing.assert_array_equal(a.biases[k], b.biases[k])
        assert not np.array_equal(a.weights[k], b.weights[k])


@pytest.mark.parametrize("kw", [dict(momentum=-0.1), dict(momentum="0.9"), dict(weight_decay=np.inf),
                                dict(l2=-1.0), dict(nesterov=True), dict(momentum=0.9, nesterov="False")])
def test_bad_optimizer_settings(kw):
    X, y = data()
    _, ref = models(True, "float64")
    before = flat(ref).copy()
    with pytest.raises(ValueError):
        ref.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, **kw)
    np.testing.assert_array_equal(flat(ref), before)


@pytest.mark.parametrize("name,n_threads", list(itertools.product(OPTIMIZERS, [1, 2])))
def test_optimizer_float32_within_a_few_ulp(name, n_threads, threads):
    """The float32 optimizer step on its own: a one-layer net without bias fed
    the rows of the identity (so z = W's columns and dW = delta^T exactly),
    identity output and squared error (delta = (z - y) / 4, rounded once), so
    the gradient is off by at most u |grad| and the bound is a few ulp of the
    optimizer's own operations."""
    from tolerances import delta_bound

    threads(n_threads)
    opt = OPTIMIZERS[name]
    mu, nesterov = opt.get("momentum", 0.0), opt.get("nesterov", False)
    m, n_out = 4, 5
    rng = np.random.default_rng(3)
    W = rng.normal(size=(n_out, m)).astype(np.float32)
    kw = dict(activation="identity", output="identity", loss="squared_error", bias=False, weights=[W])
    fast = fastbp.MLP([m, n_out], dtype="float32", **kw)
    ref = reference.MLP([m, n_out], dtype="float64", **kw)
    X = np.eye(m, dtype=np.float32)
    decay = opt.get("weight_decay", 0.0) + opt.get("l2", 0.0) / m
    for step in range(3):
        Y = rng.normal(size=(m, n_out)).astype(np.float32)
        ref.weights[0][...] = fast.weights[0]
        if mu:
            ref.set_optimizer_state(fast.optimizer_state())
        v0 = fast.optimizer_state().get("velocity", 0.0)
        Z = np.asarray(ref.weights[0]).T
        d, ed = delta_bound("squared_error", "identity", Z, 0.0 * Z, Z, 0.0 * Z, Y.astype(float))
        etheta, evel = float32_sgd_bound(flat(ref), d.T.ravel(), ed.T.ravel(), v0, LR, mu,
                                         nesterov, decay)
        fast_epochs_step(fast, X, Y, opt)
        ref.fit(X, Y, epochs=1, batch_size=m, lr=LR, shuffle=False, **opt)
        assert_within(fast._theta, flat(ref), etheta, f"step {step}: W")
        if mu:
            assert_within(fast.optimizer_state()["velocity"], ref.optimizer_state()["velocity"],
                          evel, f"step {step}: velocity")


# ---------------------------------------------------------------------------
# fit(optimizer=fastbp.optim...) and sample_weight, against PyTorch (float64)
# ---------------------------------------------------------------------------

def torch_objective(torch, layers, activation, output, loss, X, Y, s):
    """sum_i s_i loss_i / sum_i s_i of the batch, in torch, as fastbp defines the losses."""
    F = torch.nn.functional
    act = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh,
           "sigmoid": torch.sigmoid}[activation]
    h = X
    for k, layer in enumerate(layers):
        h = layer(h)
        if k < len(layers) - 1:
            h = act(h)
    if loss == "cross_entropy":
        per = -(Y * F.log_softmax(h, dim=1)).sum(dim=1)
    elif loss == "binary_cross_entropy":
        per = F.binary_cross_entropy_with_logits(h, Y, reduction="none").sum(dim=1)
    else:
        out = {"identity": h, "sigmoid": torch.sigmoid(h), "softmax": torch.softmax(h, dim=1)}[output]
        per = 0.5 * ((out - Y) ** 2).sum(dim=1)
    return (s * per).sum() / s.sum()


def optim_cases():
    from fastbp import optim

    return {
        "sgd": optim.SGD(lr=0.1),
        "sgd-momentum-decay": optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
        "sgd-nesterov": optim.SGD(lr=0.05, momentum=0.8, nesterov=True),
        "adam": optim.Adam(lr=0.01),
        "adam-amsgrad-decay": optim.Adam(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
        "adamw": optim.AdamW(lr=0.01, weight_decay=0.1),
        "rmsprop": optim.RMSprop(lr=0.01),
        "rmsprop-centered-momentum": optim.RMSprop(lr=0.005, alpha=0.9, momentum=0.5, centered=True,
                                                   weight_decay=0.01),
    }


OPTIM_NAMES = ["sgd", "sgd-momentum-decay", "sgd-nesterov", "adam", "adam-amsgrad-decay", "adamw",
               "rmsprop", "rmsprop-centered-momentum"]
TORCH_PAIRS = [("tanh", "softmax", "cross_entropy"), ("relu", "sigmoid", "binary_cross_entropy"),
               ("sigmoid", "softmax", "squared_error")]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("net", TORCH_PAIRS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("name", OPTIM_NAMES)
def test_reference_optimizers_match_torch(name, net, weighted):
    torch = pytest.importorskip("torch")
    activation, output, loss = net
    opt = optim_cases()[name]
    rng = np.random.default_rng(4)
    X = rng.normal(size=(N, SIZES[0]))
    if loss == "cross_entropy":
        Y = np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], size=N)]
    else:
        Y = rng.uniform(size=(N, SIZES[-1]))
    s = rng.uniform(0.2, 2.0, size=N) if weighted else np.ones(N)
    ref = reference.MLP(SIZES, activation=activation, output=output, loss=loss, dtype="float64",
                        seed=1)
    for b in ref.biases:
        b[...] = rng.normal(scale=0.3, size=b.shape)
    layers = []
    for W, b in zip(ref.weights, ref.biases):
        layer = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(W.copy()))
            layer.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(layer)
    t_opt = torch_optimizer(opt, [p for layer in layers for p in layer.parameters()])
    Xt, Yt, st = (torch.from_numpy(a) for a in (X, Y, s))
    torch_history = []
    for epoch in range(3):
        total = 0.0
        for start in range(0, N, BATCH):
            sl = slice(start, start + BATCH)
            t_opt.zero_grad()
            value = torch_objective(torch, layers, activation, output, loss, Xt[sl], Yt[sl], st[sl])
            value.backward()
            t_opt.step()
            total += value.item() * float(st[sl].sum())
        torch_history.append(total / float(st.sum()))

    hist = ref.fit(X, Y, epochs=3, batch_size=BATCH, shuffle=False, optimizer=opt,
                   sample_weight=s if weighted else None)
    torch_theta = np.concatenate([p.detach().numpy().ravel() for layer in layers
                                  for p in (layer.weight, layer.bias)])
    assert_close(flat(ref), torch_theta, "float64", f"{name}: parameters after 3 epochs")
    assert_close(hist.loss, torch_history, "float64", f"{name}: loss history")
    # the state is fastbp.optim's, and what torch keeps
    state = ref.optimizer_state()
    assert state["step"] == 3 * 3 and set(state) == {"step", *opt.state_names()}
    for key in opt.state_names():
        torch_state = np.concatenate([t_opt.state[p][key].numpy().ravel() for layer in layers
                                      for p in (layer.weight, layer.bias)])
        assert_close(state[key], torch_state, "float64", f"{name}: state {key}")


def test_reference_optimizer_resumes_and_follows_fastbp_optim():
    """Two fits with one optimizer equal one fit of both epochs (the state carries
    over), and the per-parameter steps equal fastbp.optim's own numpy update."""
    from fastbp import optim

    X, y = data()
    Y = np.eye(SIZES[-1])[y]
    opt = optim.Adam(lr=0.01, weight_decay=0.01)
    one, two, three = (models(True, "float64")[1] for _ in range(3))
    one.fit(X, y, epochs=2, batch_size=N, shuffle=False, optimizer=opt)
    two.fit(X, y, epochs=1, batch_size=N, shuffle=False, optimizer=opt)
    two.fit(X, y, epochs=1, batch_size=N, shuffle=False, optimizer=opt)
    np.testing.assert_array_equal(flat(one), flat(two))
    theta, state = flat(three), opt.init_state(three.n_params, np.float64)
    for _ in range(2):
        _, grads = three.gradients(X, Y)
        grad = np.concatenate([a.ravel() for dW, db in grads for a in (dW, db)])
        opt.update(theta, grad, state)
        three._write_flat(theta.tolist())
    assert_close(flat(one), theta, "float64", "against fastbp.optim.Adam.update")
    # an explicit lr overrides the optimizer's
    a, b = models(True, "float64")[1], models(True, "float64")[1]
    a.fit(X, y, epochs=1, batch_size=N, shuffle=False, optimizer=optim.SGD(lr=0.5))
    b.fit(X, y, epochs=1, batch_size=N, lr=0.5, shuffle=False, optimizer=optim.SGD(lr=0.1))
    np.testing.assert_array_equal(flat(a), flat(b))


def test_sample_weight_semantics():
    X, y = data()
    ref = models(True, "float64")[1]
    ones = np.ones(N)
    assert ref.loss(X, y, sample_weight=ones) == ref.loss(X, y)
    for (dW1, db1), (dW2, db2) in zip(ref.gradients(X, y, ones)[1], ref.gradients(X, y)[1]):
        np.testing.assert_array_equal(dW1, dW2)
        np.testing.assert_array_equal(db1, db2)
    # weight 2 is the row twice; weight 0 is the row left out
    s = np.ones(N)
    s[0], s[1] = 2.0, 0.0
    X2, y2 = np.vstack([X[:1], X[:1], X[2:]]), np.concatenate([y[:1], y[:1], y[2:]])
    assert ref.loss(X, y, sample_weight=s) == pytest.approx(ref.loss(X2, y2), rel=1e-14)
    for (dW1, db1), (dW2, db2) in zip(ref.gradients(X, y, s)[1], ref.gradients(X2, y2)[1]):
        np.testing.assert_allclose(dW1, dW2, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(db1, db2, rtol=1e-13, atol=1e-16)
    a, b = models(True, "float64")[1], models(True, "float64")[1]
    a.step(X, y, LR, sample_weight=s)
    b.step(X2, y2, LR)
    assert_close(flat(a), flat(b), "float64", "weighted step")
    for bad in (-ones, np.zeros(N), np.ones(N - 1), np.full(N, np.nan), "1"):
        with pytest.raises(ValueError, match="sample_weight"):
            ref.loss(X, y, sample_weight=bad)
    with pytest.raises(ValueError, match="l2"):
        ref.fit(X, y, epochs=1, l2=0.1, sample_weight=ones)


def test_bad_optimizer_objects():
    from fastbp import optim

    X, y = data()
    ref = models(True, "float64")[1]
    before = flat(ref).copy()
    for kw in (dict(optimizer="adam"), dict(optimizer=optim.LBFGS()),
               dict(optimizer=optim.SGD(), momentum=0.9), dict(optimizer=optim.Adam(), l2=0.1)):
        with pytest.raises(ValueError):
            ref.fit(X, y, epochs=1, **kw)
    np.testing.assert_array_equal(flat(ref), before)
