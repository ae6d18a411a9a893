"""fastbp.torch_interop: the same numbers in fastbp and PyTorch."""
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import torch_interop as ti

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]
HEADS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
         ("identity", "squared_error"), ("sigmoid", "squared_error"),
         ("softmax", "squared_error"), ("exp", "poisson"), ("exp", "squared_error")]
# Predictions and one-step parameters: fastbp's kernels and torch's sum in
# different orders, so agreement is to rounding.
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_importing_fastbp_never_imports_torch():
    code = ("import sys, fastbp, fastbp.io, fastbp.torch_interop; "
            "net = fastbp.MLP([3, 2]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def make_net(dtype="float64", bias=True, activation="tanh", output="softmax",
             loss="cross_entropy", sizes=(5, 7, 6, 3), seed=0):
    net = fastbp.MLP(list(sizes), activation=activation, output=output, loss=loss,
                     bias=bias, dtype=dtype, seed=seed)
    if bias:
        rng = np.random.default_rng(seed + 1)
        for b in net.biases:
            b[...] = rng.normal(scale=0.3, size=b.shape)
    return net


def data(net, n=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, net.layer_sizes[0])).astype(net.dtype)
    n_out = net.layer_sizes[-1]
    if net.loss_name == "cross_entropy":
        Y = rng.integers(0, n_out, size=n)
    else:
        Y = rng.uniform(size=(n, n_out)).astype(net.dtype)
    return X, Y


def as_tensors(torch, X, Y):
    Yt = torch.from_numpy(np.asarray(Y))
    return torch.from_numpy(X), Yt


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(h))
def test_predictions_and_loss_agree(torch, dtype, bias, activation, head):
    net = make_net(dtype, bias, activation, *head)
    seq = ti.to_torch(net)
    assert isinstance(seq, torch.nn.Sequential) and len(seq) == 2 * net.n_layers
    X, Y = data(net)
    Xt, Yt = as_tensors(torch, X, Y)
    with torch.no_grad():
        out = seq(Xt)
        z = seq[:-1](Xt)
        loss = ti.torch_loss(net)(z, Yt)
    assert out.dtype == {"float32": torch.float32, "float64": torch.float64}[dtype]
    np.testing.assert_allclose(out.numpy(), net.predict(X), **TOL[dtype])
    np.testing.assert_allclose(float(loss), net.loss(X, Y), **TOL[dtype])


def test_to_torch_layout(torch):
    nn = torch.nn
    net = make_net("float32", activation="relu", sizes=(4, 8, 6, 3))
    seq = ti.to_torch(net)
    kinds = [type(m) for m in seq]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Softmax]
    assert seq[-1].dim == 1
    for k in range(net.n_layers):
        assert seq[2 * k].weight.detach().numpy().tobytes() == net.weights[k].tobytes()
        assert seq[2 * k].bias.detach().numpy().tobytes() == net.biases[k].tobytes()
    # Copies: changing one model leaves the other alone.
    with torch.no_grad():
        seq[0].weight.zero_()
    assert np.abs(net.weights[0]).sum() > 0
    nobias = ti.to_torch(make_net(bias=False, output="identity", loss="squared_error"))
    assert all(m.bias is None for m in nobias if isinstance(m, nn.Linear))
    assert isinstance(nobias[-1], nn.Identity)
    assert isinstance(ti.to_torch(make_net(output="sigmoid", loss="binary_cross_entropy"))[-1],
                      nn.Sigmoid)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(h))
def test_round_trip_through_torch_is_exact(torch, dtype, bias, activation, head):
    output, loss = head
    net = make_net(dtype, bias, activation, output, loss)
    back = ti.from_torch(ti.to_torch(net), loss=loss)
    assert back.layer_sizes == net.layer_sizes
    assert (back.activation, back.output, back.loss_name, back.bias, back.dtype) == \
           (net.activation, net.output, net.loss_name, net.bias, net.dtype)
    assert back._theta.tobytes() == net._theta.tobytes()
    X, _ = data(net)
    assert back.predict(X).tobytes() == net.predict(X).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(h))
def test_one_sgd_step_matches_torch_optim_sgd(torch, dtype, bias, activation, head):
    net = make_net(dtype, bias, activation, *head)
    seq = ti.to_torch(net)
    X, Y = data(net, n=13, seed=3)
    Xt, Yt = as_tensors(torch, X, Y)
    lr = 0.3
    opt = torch.optim.SGD(seq.parameters(), lr=lr)
    opt.zero_grad()
    loss_t = ti.torch_loss(net)(seq[:-1](Xt), Yt)
    loss_t.backward()
    opt.step()
    loss_f = net.step(X, Y, lr)
    np.testing.assert_allclose(loss_f, float(loss_t.detach()), **TOL[dtype])
    after = ti.from_torch(seq, loss=net.loss_name)
    np.testing.assert_allclose(after._theta, net._theta, **TOL[dtype])
    # And the step changed something: the comparison is not vacuous.
    assert not np.allclose(ti.from_torch(ti.to_torch(make_net(dtype, bias, activation, *head)),
                                         loss=net.loss_name)._theta, net._theta)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_explicit_torch_losses_match(torch, dtype):
    """The scalings spelled out in the docs, with torch's own loss modules."""
    nn = torch.nn
    cases = [
        (("softmax", "cross_entropy"), lambda z, y, n: nn.CrossEntropyLoss()(z, y)),
        (("sigmoid", "binary_cross_entropy"),
         lambda z, y, n: nn.BCEWithLogitsLoss(reduction="sum")(z, y) / n),
        (("identity", "squared_error"), lambda z, y, n: nn.MSELoss(reduction="sum")(z, y) / (2 * n)),
    ]
    for head, fn in cases:
        net = make_net(dtype, True, "relu", *head)
        X, Y = data(net, n=11)
        Xt, Yt = as_tensors(torch, X, Y)
        with torch.no_grad():
            loss = fn(ti.to_torch(net)[:-1](Xt), Yt, X.shape[0])
        np.testing.assert_allclose(float(loss), net.loss(X, Y), **TOL[dtype])


def test_cross_entropy_with_probability_targets(torch):
    net = make_net("float64")
    X, labels = data(net)
    Y = np.eye(3)[labels] * 0.8 + 0.2 / 3
    Xt, Yt = as_tensors(torch, X, Y)
    with torch.no_grad():
        loss = ti.torch_loss(net)(ti.to_torch(net)[:-1](Xt), Yt)
    np.testing.assert_allclose(float(loss), net.loss(X, Y), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_training_matches_torch(torch, nesterov):
    net = make_net("float64", True, "tanh", "softmax", "cross_entropy")
    seq = ti.to_torch(net)
    X, Y = data(net, n=24, seed=4)
    Xt, Yt = as_tensors(torch, X, Y)
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    opt = torch.optim.SGD(seq.parameters(), **kw)
    loss_fn = ti.torch_loss(net)
    for epoch in range(3):
        for s in range(0, 24, 8):
            opt.zero_grad()
            loss_fn(seq[:-1](Xt[s:s + 8]), Yt[s:s + 8]).backward()
            opt.step()
    net.fit(X, Y, epochs=3, batch_size=8, shuffle=False, **kw)
    np.testing.assert_allclose(ti.from_torch(seq)._theta, net._theta, rtol=1e-10, atol=1e-12)


def test_from_torch_infers_and_defaults(torch):
    nn = torch.nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 2), nn.Softmax(dim=-1))
    net = ti.from_torch(m)
    assert (net.layer_sizes, net.activation, net.output, net.loss_name, net.dtype) == \
           ((4, 5, 2), "sigmoid", "softmax", "cross_entropy", np.dtype("float32"))
    m = nn.Sequential(nn.Linear(4, 5, dtype=torch.float64), nn.Linear(5, 1, dtype=torch.float64),
                      nn.Sigmoid())
    net = ti.from_torch(m)
    assert (net.activation, net.output, net.loss_name, net.dtype) == \
           ("identity", "sigmoid", "binary_cross_entropy", np.dtype("float64"))
    net = ti.from_torch(m, loss="squared_error", dtype="float32")
    assert net.loss_name == "squared_error" and net.dtype == np.float32
    # No output module: identity output, squared error.
    net = ti.from_torch(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert (net.activation, net.output, net.loss_name) == ("relu", "identity", "squared_error")
    # A bare Linear, nested Sequentials and stray Identity modules.
    net = ti.from_torch(nn.Linear(3, 2))
    assert net.layer_sizes == (3, 2) and net.output == "identity"
    nested = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Tanh()),
                           nn.Sequential(nn.Linear(4, 2)), nn.Identity())
    net = ti.from_torch(nested)
    assert (net.layer_sizes, net.activation, net.output) == ((3, 4, 2), "tanh", "identity")
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net.predict(X), nested(torch.from_numpy(X)).numpy(),
                                   rtol=2e-5, atol=2e-6)
    # Parameters that require grad, and float16 with an explicit dtype.
    half = nn.Sequential(nn.Linear(3, 2).to(torch.float16))
    with pytest.raises(ValueError, match="unsupported parameter dtype float16"):
        ti.from_torch(half)
    assert ti.from_torch(half, dtype="float32").dtype == np.float32


@pytest.mark.parametrize("build, match", [
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)),
     "unsupported module .*Dropout"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)),
     "unsupported module .*GELU"),
    (lambda nn: nn.Sequential(nn.Linear(3, 2), nn.LogSoftmax(dim=1)),
     "unsupported module .*LogSoftmax"),
    (lambda nn: nn.Sequential(nn.Conv1d(1, 1, 3)), "must start with nn.Linear"),
    (lambda nn: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), "must start with nn.Linear"),
    (lambda nn: nn.Sequential(), "must start with nn.Linear, found nothing"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)),
     "two activations in a row"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(),
                              nn.Linear(4, 2)), "one activation for every hidden layer"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)),
     "one activation for every hidden layer"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
     "Softmax is supported only as the output"),
    (lambda nn: nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=0)), r"Softmax\(dim=0\)"),
    (lambda nn: nn.Sequential(nn.Linear(3, 2), nn.ReLU()), "unsupported output activation 'relu'"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), "in_features=5"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False)),
     "every Linear layer must have a bias or none"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, dtype=__import__("torch").float64)),
     "mix dtypes"),
    (lambda nn: nn.Sequential(nn.Linear(3, 1), nn.Softmax(dim=1)), "at least 2 output units"),
])
def test_from_torch_rejects_unsupported(torch, build, match):
    with pytest.raises(ValueError, match=match):
        ti.from_torch(build(torch.nn))


def test_from_torch_bad_arguments(torch):
    nn = torch.nn
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="expects a torch.nn.Module"):
        ti.from_torch([nn.Linear(3, 2)])
    with pytest.raises(ValueError, match="requires output='softmax'"):
        ti.from_torch(m, loss="cross_entropy")
    with pytest.raises(ValueError, match="activation='tanh' but"):
        ti.from_torch(m, activation="tanh")
    with pytest.raises(ValueError, match="unknown loss"):
        ti.from_torch(m, loss="hinge")
    bad = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ti.from_torch(bad)


def test_exp_output_module(torch):
    """The exp output (log link) maps to fastbp.torch_interop.Exp: the default
    loss after it is poisson, it pickles, and it is refused as a hidden layer."""
    import pickle

    nn = torch.nn
    net = make_net("float64", True, "relu", "exp", "poisson")
    seq = ti.to_torch(net)
    assert isinstance(seq[-1], ti.Exp) and type(seq[-1]).__module__ == "fastbp.torch_interop"
    back = ti.from_torch(pickle.loads(pickle.dumps(seq)))
    assert (back.output, back.loss_name) == ("exp", "poisson")
    assert back._theta.tobytes() == net._theta.tobytes()
    with pytest.raises(ValueError, match="Exp is supported only as the output activation"):
        ti.from_torch(nn.Sequential(nn.Linear(3, 4), ti.Exp(), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="loss='poisson' requires output='exp'"):
        ti.from_torch(nn.Linear(3, 1), loss="poisson")
    # the torch loss is the half deviance, with torch's own PoissonNLLLoss inside
    X, Y = data(net, n=9)
    Y[0] = 0.0  # 0 log 0 = 0
    Xt, Yt = as_tensors(torch, X, Y)
    with torch.no_grad():
        z = seq[:-1](Xt)
        mu = torch.exp(z)
        by_hand = (torch.xlogy(Yt, Yt / mu) - Yt + mu).sum() / 9
        assert float(ti.torch_loss(net)(z, Yt)) == pytest.approx(float(by_hand), rel=1e-12)
    np.testing.assert_allclose(float(by_hand), net.loss(X, Y), rtol=1e-12)
