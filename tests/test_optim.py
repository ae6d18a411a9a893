"""fastbp.optim: the optimizers against torch.optim, their validation, config and pickling,
and LBFGS against scipy.

The torch comparison: from the same parameters and the same fixed sequence of
random gradients (scales varying per step), 100 steps of every optimizer and
option, with a learning rate that changes every step (as a schedule does) and
with the constructor's; torch runs the single-tensor algorithm
(``foreach=False``).  The difference of theta and of every state array is
measured as max |ours - torch| / max |torch| (the largest error against the
array's scale: an elementwise ratio is meaningless where a value crosses
zero).  Bounds: the issue's, float64 1e-10 and float32 1e-5, and tighter
ones that still leave a margin of 10x or more over what this machine measures
(torch 2.13 on its AVX-512 kernels, all cases: float64 5.0e-16, float32
2.3e-7).  The residual is torch's vectorised kernels fusing multiply-adds
(FMA), which numpy and fastbp's kernels do not (tests/test_optim_c.py holds
those to the bit).
"""
import copy
import json
import math
import pickle
import sys

import numpy as np
import pytest

from fastbp import optim

TOL = {"float64": 1e-10, "float32": 1e-5}      # the issue's
TIGHT = {"float64": 1e-14, "float32": 3e-6}    # measured 5.0e-16 and 2.3e-7
N, STEPS = 301, 100

CASES = [
    optim.SGD(),
    optim.SGD(lr=0.1, weight_decay=0.01),
    optim.SGD(lr=0.05, momentum=0.9),
    optim.SGD(lr=0.05, momentum=0.5, weight_decay=0.1),
    optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    optim.Adam(),
    optim.Adam(lr=0.01, weight_decay=0.1),
    optim.Adam(amsgrad=True),
    optim.Adam(lr=0.01, amsgrad=True, weight_decay=0.01),
    optim.Adam(lr=0.01, betas=(0.3, 0.6), eps=1e-6),  # torch's lerp takes its other branch
    optim.Adam(betas=(0.0, 0.0)),
    optim.AdamW(),
    optim.AdamW(amsgrad=True),
    optim.AdamW(weight_decay=0.0),
    optim.AdamW(lr=0.01, weight_decay=0.5, betas=(0.45, 0.9)),
    optim.RMSprop(),
    optim.RMSprop(weight_decay=0.01),
    optim.RMSprop(momentum=0.9),
    optim.RMSprop(centered=True),
    optim.RMSprop(lr=0.001, centered=True, momentum=0.9, weight_decay=0.01),
    optim.RMSprop(alpha=0.3, centered=True),  # lerp's other branch
]


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(N).astype(dtype)
    grads = [(rng.standard_normal(N) * rng.uniform(0.05, 3.0)).astype(dtype)
             for _ in range(STEPS)]
    return theta0, grads


def _torch_optimizer(torch, opt, param):
    kwargs = {k: v for k, v in opt.get_config().items() if k != "name"}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop}[opt.name]
    return cls([param], foreach=False, **kwargs)


def _rel(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(ours - ref)) / scale) if scale > 0 else float(np.max(np.abs(ours)))


def _versus_torch(opt, dtype, schedule):
    torch = pytest.importorskip("torch")
    theta0, grads = _problem(dtype)
    theta, state = theta0.copy(), opt.init_state(N, dtype)
    param = torch.nn.Parameter(torch.from_numpy(theta0.copy()))
    topt = _torch_optimizer(torch, opt, param)
    for k, g in enumerate(grads):
        lr = opt.lr * (1.0 + 0.5 * math.sin(k)) if schedule else None
        if schedule:
            topt.param_groups[0]["lr"] = lr
        g_before = g.copy()
        opt.update(theta, g, state, lr=lr)
        assert np.array_equal(g, g_before)  # the gradient is never modified
        param.grad = torch.from_numpy(g.copy())
        topt.step()
    assert theta.dtype == np.dtype(dtype)
    errors = {"theta": _rel(theta, param.detach().numpy())}
    tstate = topt.state[param]
    for name in opt.state_names():
        assert state[name].dtype == np.dtype(dtype)
        errors[name] = _rel(state[name], tstate[name].numpy())
    assert state["step"] == STEPS
    if "step" in tstate:
        assert int(tstate["step"]) == STEPS
    assert set(opt.state_names()) <= set(tstate)
    return errors


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", CASES, ids=repr)
def test_matches_torch(opt, dtype):
    errors = _versus_torch(opt, dtype, schedule=False)
    assert max(errors.values()) <= TOL[dtype], errors
    assert max(errors.values()) <= TIGHT[dtype], errors


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                 optim.Adam(amsgrad=True, weight_decay=0.01), optim.AdamW(),
                                 optim.RMSprop(centered=True, momentum=0.5)], ids=repr)
def test_matches_torch_with_a_learning_rate_per_step(opt, dtype):
    errors = _versus_torch(opt, dtype, schedule=True)
    assert max(errors.values()) <= TOL[dtype], errors
    assert max(errors.values()) <= TIGHT[dtype], errors


def test_first_steps_by_hand():
    """Two steps of each optimizer written out (float64, one element)."""
    theta, g = np.array([2.0]), np.array([0.5])
    # SGD momentum: b1 = g, theta1 = theta - lr b1; b2 = mu b1 + g.
    opt, st, th = optim.SGD(lr=0.1, momentum=0.9), None, theta.copy()
    st = opt.init_state(1)
    opt.update(th, g, st)
    assert th[0] == 2.0 - 0.1 * 0.5 and st["momentum_buffer"][0] == 0.5
    opt.update(th, g, st)
    assert st["momentum_buffer"][0] == 0.9 * 0.5 + 0.5
    # Adam step 1: m = 0.1 g, v = 0.001 g^2, theta -= lr * (m / 0.1) / (sqrt(v / 0.001) + eps).
    opt, th = optim.Adam(lr=0.01), theta.copy()
    st = opt.init_state(1)
    opt.update(th, g, st)
    assert th[0] == pytest.approx(2.0 - 0.01 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    assert st["step"] == 1
    # AdamW: the same step after theta *= 1 - lr wd.
    opt, th = optim.AdamW(lr=0.01, weight_decay=0.1), theta.copy()
    st = opt.init_state(1)
    opt.update(th, g, st)
    assert th[0] == pytest.approx(2.0 * (1 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    # RMSprop step 1: v = (1 - alpha) g^2, theta -= lr g / (sqrt(v) + eps).
    opt, th = optim.RMSprop(lr=0.01, alpha=0.9), theta.copy()
    st = opt.init_state(1)
    opt.update(th, g, st)
    assert th[0] == pytest.approx(2.0 - 0.01 * 0.5 / (math.sqrt(0.1 * 0.25) + 1e-8), rel=1e-15)


# -- state layout ------------------------------------------------------------

@pytest.mark.parametrize("opt, names", [
    (optim.SGD(), ()),
    (optim.SGD(momentum=0.9), ("momentum_buffer",)),
    (optim.Adam(), ("exp_avg", "exp_avg_sq")),
    (optim.Adam(amsgrad=True), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    (optim.AdamW(amsgrad=True), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    (optim.RMSprop(), ("square_avg",)),
    (optim.RMSprop(momentum=0.9, centered=True), ("square_avg", "momentum_buffer", "grad_avg")),
    (optim.RMSprop(centered=True), ("square_avg", "grad_avg")),
    (optim.LBFGS(), ()),
], ids=repr)
def test_state_names_and_init(opt, names):
    assert opt.state_names() == names
    for dtype in ("float32", "float64"):
        st = opt.init_state(7, dtype)
        assert set(st) == {"step", *names} and st["step"] == 0
        for key in names:
            assert st[key].dtype == np.dtype(dtype) and st[key].shape == (7,)
            assert not st[key].any()
        opt.check_state(st, 7, dtype)


def test_bad_state_and_arrays_leave_everything_unchanged():
    opt = optim.Adam(amsgrad=True)
    theta = np.arange(5.0)
    good = opt.init_state(5)
    bad_states = [
        {k: v for k, v in good.items() if k != "max_exp_avg_sq"},
        {**good, "momentum_buffer": np.zeros(5)},
        {**good, "exp_avg": np.zeros(4)},
        {**good, "exp_avg": np.zeros(5, np.float32)},
        {**good, "exp_avg": [0.0] * 5},
        {**good, "exp_avg": np.zeros(10)[::2]},
        {**good, "step": -1},
        {**good, "step": 1.5},
        "not a dict",
    ]
    for st in bad_states:
        snapshot = theta.copy()
        with pytest.raises(ValueError):
            opt.update(theta, np.ones(5), st)
        assert np.array_equal(theta, snapshot)
    ro = np.arange(5.0)
    ro.setflags(write=False)
    for th, g in [(np.zeros((5, 1)), np.ones((5, 1))), (np.arange(5), np.ones(5)),
                  (theta, np.ones(4)), (theta, np.array(["a"] * 5)), (ro, np.ones(5)),
                  (np.zeros(10)[::2], np.ones(5)), (theta, np.ones(5) + 1j)]:
        with pytest.raises(ValueError):
            opt.update(th, g, opt.init_state(5))
    assert np.array_equal(theta, np.arange(5.0)) and good["step"] == 0
    with pytest.raises(ValueError, match="lr"):
        opt.update(theta, np.ones(5), good, lr=-1.0)
    assert np.array_equal(theta, np.arange(5.0)) and good["step"] == 0
    with pytest.raises(ValueError, match="dtype"):
        opt.init_state(3, np.int64)
    with pytest.raises(ValueError, match="n_params"):
        opt.init_state(-1)


def test_grad_is_converted_to_theta_dtype():
    opt = optim.SGD(lr=0.5)
    theta = np.ones(3, dtype=np.float32)
    opt.update(theta, np.array([1, 2, 3]), opt.init_state(3, np.float32))
    assert theta.dtype == np.float32 and np.array_equal(theta, [0.5, 0.0, -0.5])


# -- hyper-parameters --------------------------------------------------------

BAD = [
    (optim.SGD, dict(lr=-0.1), "lr"),
    (optim.SGD, dict(lr=float("nan")), "lr"),
    (optim.SGD, dict(lr=float("inf")), "lr"),
    (optim.SGD, dict(lr="0.1"), "lr"),
    (optim.SGD, dict(lr=None), "lr"),
    (optim.SGD, dict(lr=True), "lr"),
    (optim.SGD, dict(lr=1 + 2j), "lr"),
    (optim.SGD, dict(momentum=-0.5), "momentum"),
    (optim.SGD, dict(momentum=float("inf")), "momentum"),
    (optim.SGD, dict(nesterov=True), "nesterov"),
    (optim.SGD, dict(momentum=0.9, nesterov=1), "nesterov"),
    (optim.SGD, dict(momentum=0.9, nesterov="yes"), "nesterov"),
    (optim.SGD, dict(weight_decay=-1e-4), "weight_decay"),
    (optim.Adam, dict(lr=-1e-3), "lr"),
    (optim.Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (optim.Adam, dict(betas=(-0.1, 0.999)), r"betas\[0\]"),
    (optim.Adam, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (optim.Adam, dict(betas=(0.9, float("nan"))), r"betas\[1\]"),
    (optim.Adam, dict(betas=0.9), "betas"),
    (optim.Adam, dict(betas=(0.9, 0.99, 0.999)), "betas"),
    (optim.Adam, dict(betas="ab"), "betas"),
    (optim.Adam, dict(eps=0.0), "eps"),
    (optim.Adam, dict(eps=-1e-8), "eps"),
    (optim.Adam, dict(weight_decay=float("nan")), "weight_decay"),
    (optim.Adam, dict(amsgrad=0), "amsgrad"),
    (optim.Adam, dict(amsgrad="False"), "amsgrad"),
    (optim.AdamW, dict(weight_decay=-0.01), "weight_decay"),
    (optim.AdamW, dict(betas=(0.9, 1.5)), r"betas\[1\]"),
    (optim.RMSprop, dict(alpha=1.0), "alpha"),
    (optim.RMSprop, dict(alpha=-0.01), "alpha"),
    (optim.RMSprop, dict(eps=0), "eps"),
    (optim.RMSprop, dict(momentum=-1), "momentum"),
    (optim.RMSprop, dict(centered=None), "centered"),
    (optim.RMSprop, dict(lr=float("-inf")), "lr"),
    (optim.LBFGS, dict(max_iter=0), "max_iter"),
    (optim.LBFGS, dict(max_iter=10.0), "max_iter"),
    (optim.LBFGS, dict(max_iter=True), "max_iter"),
    (optim.LBFGS, dict(max_fun=-5), "max_fun"),
    (optim.LBFGS, dict(tol=-1e-4), "tol"),
    (optim.LBFGS, dict(tol=float("nan")), "tol"),
]


@pytest.mark.parametrize("cls, kwargs, name", BAD, ids=lambda v: repr(v))
def test_bad_hyper_parameters(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_assignment_is_validated():
    opt = optim.Adam()
    opt.lr = 0.5
    assert opt.lr == 0.5 and isinstance(opt.lr, float)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1
    assert opt.lr == 0.5
    opt.betas = [0.5, 0.6]
    assert opt.betas == (0.5, 0.6)
    with pytest.raises(AttributeError):
        opt.momentum = 0.9
    sgd = optim.SGD(momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        sgd.momentum = 0.0
    assert sgd.momentum == 0.9


def test_defaults_are_torchs():
    assert optim.SGD().get_config() == dict(name="sgd", lr=0.01, momentum=0.0, nesterov=False,
                                            weight_decay=0.0)
    assert optim.Adam().get_config() == dict(name="adam", lr=1e-3, betas=[0.9, 0.999],
                                             eps=1e-8, weight_decay=0.0, amsgrad=False)
    assert optim.AdamW().get_config() == dict(name="adamw", lr=1e-3, betas=[0.9, 0.999],
                                              eps=1e-8, weight_decay=1e-2, amsgrad=False)
    assert optim.RMSprop().get_config() == dict(name="rmsprop", lr=1e-2, alpha=0.99, eps=1e-8,
                                                weight_decay=0.0, momentum=0.0, centered=False)
    assert optim.LBFGS().get_config() == dict(name="lbfgs", max_iter=200, max_fun=15000,
                                              tol=1e-4)
    torch = pytest.importorskip("torch")
    import inspect
    for ours, theirs in [(optim.SGD, torch.optim.SGD), (optim.Adam, torch.optim.Adam),
                         (optim.AdamW, torch.optim.AdamW), (optim.RMSprop, torch.optim.RMSprop)]:
        sig = inspect.signature(theirs).parameters
        for key, value in ours()._params().items():
            if ours is optim.SGD and key == "lr":
                continue  # fastbp keeps 0.01 (its fit's default); torch's SGD moved to 1e-3
            assert sig[key].default == value, (ours, key)


ALL = CASES + [optim.LBFGS(), optim.LBFGS(max_iter=5, max_fun=50, tol=0.0)]


@pytest.mark.parametrize("opt", ALL, ids=repr)
def test_config_round_trip(opt):
    config = json.loads(json.dumps(opt.get_config()))
    assert config == opt.get_config()
    back = optim.Optimizer.from_config(config)
    assert type(back) is type(opt) and back == opt
    assert type(opt).from_config(config) == opt
    assert optim.get(config) == opt
    assert eval(repr(opt), {**vars(optim)}) == opt


@pytest.mark.parametrize("opt", ALL, ids=repr)
def test_pickle(opt):
    back = pickle.loads(pickle.dumps(opt))
    assert type(back) is type(opt) and back == opt and back is not opt
    assert copy.deepcopy(opt) == opt and copy.copy(opt) == opt


def test_state_survives_npz(tmp_path):
    opt = optim.Adam(amsgrad=True)
    theta, state = np.ones(4), opt.init_state(4)
    opt.update(theta, np.arange(4.0), state)
    np.savez(tmp_path / "s.npz", **state)
    with np.load(tmp_path / "s.npz") as f:
        loaded = {k: f[k].copy() for k in f.files}
    opt.update(theta, np.arange(4.0), loaded)
    assert loaded["step"] == 2 and isinstance(loaded["step"], int)


def test_equality_and_config_errors():
    assert optim.Adam() == optim.Adam() and optim.Adam() != optim.AdamW(weight_decay=0.0)
    assert optim.Adam(lr=0.1) != optim.Adam()
    with pytest.raises(TypeError):
        hash(optim.Adam())
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.Optimizer.from_config({"name": "adagrad"})
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.Optimizer.from_config({"lr": 0.1})
    with pytest.raises(ValueError, match="momentum"):
        optim.Adam.from_config({"name": "adam", "momentum": 0.9})
    with pytest.raises(ValueError, match="'sgd'"):
        optim.Adam.from_config({"name": "sgd"})
    with pytest.raises(ValueError, match="dict"):
        optim.Optimizer.from_config([("name", "sgd")])
    with pytest.raises(ValueError, match="lr"):
        optim.Optimizer.from_config({"name": "sgd", "lr": -1})
    assert optim.Adam.from_config({"lr": 0.5}) == optim.Adam(lr=0.5)
    assert optim.get("rmsprop") == optim.RMSprop()
    opt = optim.SGD()
    assert optim.get(opt) is opt
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.get("adagrad")
    with pytest.raises(ValueError):
        optim.get(3)
    assert sorted(optim.OPTIMIZERS) == ["adam", "adamw", "lbfgs", "rmsprop", "sgd"]


# -- L-BFGS --------------------------------------------------------------------

def _quadratic(n=12, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T + n * np.eye(n)
    b = rng.standard_normal(n)
    return A, b, lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b)


def _logistic(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, 5))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.3 * rng.standard_normal(200) > 0)

    def fun(w):
        z = X @ w[:5] + w[5]
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5e-2 * w[:5] @ w[:5]
        r = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        return loss, np.concatenate([X.T @ r + 1e-2 * w[:5], [r.sum()]])
    return fun


def _scipy_direct(fun, x0, opt):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    return scipy_optimize.minimize(fun, x0, method="L-BFGS-B", jac=True,
                                   options=opt.scipy_options())


def test_lbfgs_quadratic():
    pytest.importorskip("scipy")
    A, b, fun = _quadratic()
    opt = optim.LBFGS(tol=1e-10)
    theta0 = np.zeros(12)
    res = opt.minimize(fun, theta0)
    theta, n_iter, n_fun, scipy_res = res
    direct = _scipy_direct(fun, theta0, opt)
    assert np.array_equal(theta, direct.x) and n_iter == direct.nit and n_fun == direct.nfev
    assert scipy_res.success and res.converged and res.loss == direct.fun
    # scipy stops on its relative reduction of f (ftol) here, before gtol
    assert np.allclose(theta, np.linalg.solve(A, b), rtol=0, atol=1e-5)
    assert not theta0.any()


def test_lbfgs_logistic_regression():
    pytest.importorskip("scipy")
    fun = _logistic()
    opt = optim.LBFGS()
    res = opt.minimize(fun, np.zeros(6))
    direct = _scipy_direct(fun, np.zeros(6), opt)
    assert np.array_equal(res.theta, direct.x)
    assert (res.n_iter, res.n_fun) == (direct.nit, direct.nfev)
    assert res.converged and np.abs(fun(res.theta)[1]).max() <= opt.tol
    assert res.theta[4] > res.theta[0] > 0 > res.theta[1]  # the signs of the true weights


def test_lbfgs_options_limits_and_dtype():
    scipy = pytest.importorskip("scipy")
    opt = optim.LBFGS(max_iter=3)
    options = opt.scipy_options()
    assert (options["maxiter"], options["maxfun"], options["gtol"]) == (3, 15000, 1e-4)
    assert ("iprint" in options) == (optim._version_tuple(scipy.__version__) < (1, 15))
    A, b, fun = _quadratic(30)
    res = opt.minimize(fun, np.zeros(30))
    assert res.n_iter == 3 and not res.converged
    res = optim.LBFGS(max_fun=4).minimize(fun, np.zeros(30))
    assert res.n_fun <= 5 and not res.converged
    seen = []

    def fun32(x):
        seen.append(x.dtype)
        loss, g = fun(x.astype(np.float64))
        return loss, g.astype(np.float32)
    res = optim.LBFGS(max_iter=5).minimize(fun32, np.zeros(30, np.float32))
    assert res.theta.dtype == np.float32 and set(seen) == {np.dtype(np.float32)}


def test_lbfgs_callback_stops():
    pytest.importorskip("scipy")
    A, b, fun = _quadratic(30)
    calls = []

    def cb(theta):
        calls.append(theta.copy())
        return len(calls) == 2
    res = optim.LBFGS(tol=0.0).minimize(fun, np.zeros(30), callback=cb)
    assert len(calls) == 2 and res.n_iter == 2 and not res.converged
    assert np.array_equal(res.theta, calls[-1])


def test_lbfgs_callback_stops_on_old_scipy(monkeypatch):
    """scipy < 1.11 lets a callback's StopIteration out of minimize: caught here."""
    scipy_optimize = pytest.importorskip("scipy.optimize")

    def old_minimize(fun, x0, method, jac, callback, options):
        x = np.array(x0, dtype=np.float64)
        for _ in range(10):
            x = x - 0.1 * fun(x)[1]
            callback(x)
        raise AssertionError("the callback should have stopped it")
    monkeypatch.setattr(scipy_optimize, "minimize", old_minimize)
    A, b, fun = _quadratic(5)
    res = optim.LBFGS().minimize(fun, np.zeros(5), callback=lambda th: True)
    assert res.result.status == 99 and not res.converged
    assert res.n_iter == 1 and res.n_fun == 1
    assert res.loss == fun(res.theta)[0]


def test_lbfgs_bad_input():
    pytest.importorskip("scipy")
    A, b, fun = _quadratic(4)
    opt = optim.LBFGS()
    for bad in (np.zeros((2, 2)), np.array([0.0, np.nan, 0, 0]), np.array(["a"] * 4)):
        with pytest.raises(ValueError, match="theta0"):
            opt.minimize(fun, bad)
    with pytest.raises(ValueError, match="gradient"):
        opt.minimize(lambda x: (0.0, np.zeros(3)), np.zeros(4))
    with pytest.raises(TypeError, match="minimize"):
        opt.update(np.zeros(4), np.zeros(4), opt.init_state(4))


def test_lbfgs_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"fastbp\[lbfgs\]"):
        optim.LBFGS().minimize(lambda x: (0.0, x), np.zeros(2))
    optim.LBFGS(max_iter=3)  # constructing and configuring need no scipy
