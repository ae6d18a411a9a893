"""MLP.fit's trainer: optimizer, schedules, validation, early stopping, callbacks, progress."""
import numpy as np
import pytest

import fastbp
from fastbp import schedules


def blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + rng.normal(scale=0.6, size=(n, 2)), y


def net(dtype="float64", **kw):
    return fastbp.MLP([2, 8, 3], activation="tanh", dtype=dtype, seed=0, **kw)


def manual_sgd(model, X, Y, epochs, batch_size, lr, momentum, nesterov, weight_decay):
    """torch.optim.SGD's update written out with numpy, on consecutive slices."""
    params = [p for k in range(model.n_layers) for p in (model.weights[k], model.biases[k])]
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(epochs):
        for start in range(0, X.shape[0], batch_size):
            _, grads = model.gradients(X[start:start + batch_size], Y[start:start + batch_size])
            flat = [g for pair in grads for g in pair]
            for p, g, v in zip(params, flat, velocity):
                g = g + weight_decay * p
                if momentum:
                    v *= momentum
                    v += g
                    g = g + momentum * v if nesterov else v
                p -= lr * g


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [
    (0.0, False, 0.01), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.003),
])
def test_optimizer_is_torch_sgd(momentum, nesterov, weight_decay):
    X, y = blobs()
    a, b = net(), net()
    a.fit(X, y, epochs=3, batch_size=16, lr=0.05, shuffle=False, momentum=momentum,
          nesterov=nesterov, weight_decay=weight_decay)
    manual_sgd(b, X, y, 3, 16, 0.05, momentum, nesterov, weight_decay)
    for k in range(a.n_layers):
        np.testing.assert_allclose(a.weights[k], b.weights[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.biases[k], b.biases[k], rtol=1e-10, atol=1e-12)


def test_optimizer_matches_pytorch():
    torch = pytest.importorskip("torch")
    X, y = blobs()
    model = net()
    layers = []
    for k in range(model.n_layers):
        lin = torch.nn.Linear(*model.weights[k].shape[::-1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(model.weights[k].copy()))
            lin.bias.copy_(torch.from_numpy(model.biases[k].copy()))
        layers += [lin, torch.nn.Tanh()]
    seq = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(seq.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(2):
        for start in range(0, len(X), 16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(seq(Xt[start:start + 16]), yt[start:start + 16]).backward()
            opt.step()
    model.fit(X, y, epochs=2, batch_size=16, lr=0.05, shuffle=False, momentum=0.9,
              nesterov=True, weight_decay=0.01)
    for k, lin in enumerate(layers[::2]):
        np.testing.assert_allclose(model.weights[k], lin.weight.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model.biases[k], lin.bias.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_velocity_persists_and_resets():
    X, y = blobs()
    a, b = net(), net()
    a.fit(X, y, epochs=2, batch_size=16, lr=0.05, shuffle=False, momentum=0.9)
    b.fit(X, y, epochs=1, batch_size=16, lr=0.05, shuffle=False, momentum=0.9)
    b.fit(X, y, epochs=1, batch_size=16, lr=0.05, shuffle=False, momentum=0.9)
    np.testing.assert_array_equal(a._theta, b._theta)
    state = a.optimizer_state()
    assert state["velocity"].shape == (a.n_params,)
    c = net()
    c.set_optimizer_state(state)
    np.testing.assert_array_equal(c.optimizer_state()["velocity"], state["velocity"])
    c.reset_optimizer()
    assert c.optimizer_state() == {}
    with pytest.raises(ValueError, match="velocity"):
        c.set_optimizer_state({"velocity": np.zeros(3)})


@pytest.mark.parametrize("schedule,expected", [
    (None, [0.1, 0.1, 0.1, 0.1]),
    ("constant", [0.1, 0.1, 0.1, 0.1]),
    (schedules.StepDecay(step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05]),
    (schedules.InverseScaling(power_t=1.0), [0.1, 0.05, 0.1 / 3, 0.025]),
    ("cosine", [0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05, 0.1 * (1 + np.cos(3 * np.pi / 4)) / 2]),
    (lambda epoch, lr0: lr0 / (1 + epoch), [0.1, 0.05, 0.1 / 3, 0.025]),
])
def test_schedules(schedule, expected):
    X, y = blobs()
    hist = net().fit(X, y, epochs=4, lr=0.1, schedule=schedule)
    np.testing.assert_allclose(hist.lr, expected, rtol=1e-12)


def test_schedule_applies_the_rate():
    X, y = blobs()
    a, b = net(), net()
    a.fit(X, y, epochs=2, batch_size=30, lr=0.1, shuffle=False,
          schedule=schedules.StepDecay(step_size=1, gamma=0.5))
    b.fit(X, y, epochs=1, batch_size=30, lr=0.1, shuffle=False)
    b.fit(X, y, epochs=1, batch_size=30, lr=0.05, shuffle=False)
    np.testing.assert_array_equal(a._theta, b._theta)


def test_bad_schedules():
    X, y = blobs()
    with pytest.raises(ValueError, match="unknown schedule"):
        net().fit(X, y, epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="schedule returned"):
        net().fit(X, y, epochs=1, schedule=lambda e, lr: -1.0)


def test_validation_split_and_metrics():
    X, y = blobs(200)
    model = net()
    hist = model.fit(X, y, epochs=5, batch_size=16, lr=0.1, validation_split=0.25)
    assert len(hist.val_loss) == len(hist.val_accuracy) == len(hist.accuracy) == 5
    assert len(hist.seconds) == 5 and all(s > 0 for s in hist.seconds)
    # The held-out part is the last quarter, and the metrics are measured on it.
    assert hist.val_loss[-1] == pytest.approx(model.loss(X[150:], y[150:]), rel=1e-12)
    acc = np.mean(model.predict(X[150:]).argmax(axis=1) == y[150:])
    assert hist.val_accuracy[-1] == pytest.approx(acc)
    assert 0.8 < hist.accuracy[-1] <= 1.0


def test_training_accuracy_is_running_mean():
    X, y = blobs(64)
    a, b = net(), net()
    hist = a.fit(X, y, epochs=1, batch_size=64, lr=0.1)  # one batch: accuracy before the step
    acc = np.mean(b.predict(X).argmax(axis=1) == y)
    assert hist.accuracy[0] == pytest.approx(acc)
    reg = fastbp.MLP([2, 4, 1], output="identity", loss="squared_error", seed=0)
    assert reg.fit(X, X[:, :1], epochs=1).accuracy == []


def test_validation_data_and_errors():
    X, y = blobs()
    model = net()
    hist = model.fit(X[:100], y[:100], epochs=2, validation_data=(X[100:], y[100:]))
    assert len(hist.val_loss) == 2
    with pytest.raises(ValueError, match="not both"):
        model.fit(X, y, epochs=1, validation_data=(X, y), validation_split=0.1)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(X, y, epochs=1, validation_split=1.5)
    with pytest.raises(ValueError, match="features"):
        model.fit(X, y, epochs=1, validation_data=(X[:, :1], y))
    with pytest.raises(ValueError, match="early_stopping needs"):
        model.fit(X, y, epochs=1, early_stopping=True)


def test_early_stopping_restores_best():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = rng.integers(0, 3, size=60)  # pure noise: validation loss soon rises
    model = fastbp.MLP([2, 64, 3], activation="relu", dtype="float64", seed=0)
    hist = model.fit(X, y, epochs=200, batch_size=4, lr=0.2, validation_split=0.5,
                     early_stopping=True, patience=3)
    assert hist.stopped_early
    assert len(hist.loss) < 200
    best = int(np.argmin(hist.val_loss))
    assert hist.best_epoch == best
    assert len(hist.val_loss) == best + 1 + 3
    assert model.loss(X[30:], y[30:]) == pytest.approx(hist.val_loss[best], rel=1e-12)


def test_callbacks_see_logs_and_can_stop():
    X, y = blobs()
    seen = []

    def cb(epoch, logs):
        seen.append((epoch, sorted(logs)))
        return epoch == 2

    class Recorder:
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, logs):
            self.epochs.append(epoch)

    rec = Recorder()
    hist = net().fit(X, y, epochs=10, callbacks=[cb, rec])
    assert [e for e, _ in seen] == [0, 1, 2] and rec.epochs == [0, 1, 2]
    assert seen[0][1] == ["accuracy", "epoch", "loss", "lr", "seconds"]
    assert hist.stopped_early and len(hist.loss) == 3


def test_callback_may_use_the_model():
    X, y = blobs()
    model = net()
    losses = []
    model.fit(X, y, epochs=2, callbacks=[lambda e, logs: losses.append(model.loss(X, y))])
    assert len(losses) == 2


def test_verbose_prints_progress(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    X, y = blobs()
    net().fit(X, y, epochs=2, verbose=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("epoch 1/2") and "samples/s" in err[0]
    net().fit(X, y, epochs=2, verbose=0)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_in_pieces_equals_epoch_in_one_go(dtype):
    """What a live progress bar does: run the epoch a few batches at a time."""
    X, y = blobs(100)
    a, b = net(dtype), net(dtype)
    Xc, Yc = a._XY(X, y)
    order = np.random.default_rng(0).permutation(100).astype(np.int64)
    ws = np.empty(a._net.workspace_size(8), dtype=dtype)
    empty = np.empty(0, dtype=dtype)
    whole = a._net.fit_epoch(a._theta, Xc, Yc, order, 8, ws, empty, empty, 1, 0.1)
    total = [0.0, 0.0, 0]
    for first in range(0, 13, 3):
        l, h, _, done, status = b._net.fit_epoch(b._theta, Xc, Yc, order, 8, ws, empty, empty, 1,
                                                 0.1, first_step=first, max_steps=3)
        assert status == 0
        total = [total[0] + l, total[1] + h, total[2] + done]
    np.testing.assert_array_equal(a._theta, b._theta)
    assert whole[3] == total[2] == 100
    assert whole[0] == pytest.approx(total[0], rel=1e-6)


def test_history_plot(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = blobs()
    hist = net().fit(X, y, epochs=3, validation_split=0.2)
    path = tmp_path / "curves.png"
    hist.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workspace_is_reported():
    X, y = blobs()  # float64 C arrays, as the model's dtype: no converted copy of X
    model = net()
    params, onehot, perm = model.n_params * 8, 120 * 3 * 8, 120 * 8
    snapshot = params  # the rewind copy
    hist = model.fit(X, y, epochs=1, batch_size=16)
    assert hist.workspace_bytes == model.workspace_nbytes(16) + snapshot + onehot + perm
    hist = model.fit(X, y, epochs=2, batch_size=16, shuffle=False)
    assert hist.workspace_bytes == model.workspace_nbytes(16) + snapshot + onehot
    # Momentum: the gradient, a new velocity and its rewind copy; two live permutations.
    hist = model.fit(X, y, epochs=2, batch_size=16, momentum=0.9)
    assert hist.workspace_bytes == (model.workspace_nbytes(16) + 3 * params + snapshot + onehot
                                    + 2 * perm)
    # The velocity now exists: not allocated again.
    hist = model.fit(X, y, epochs=2, batch_size=16, momentum=0.9)
    assert hist.workspace_bytes == (model.workspace_nbytes(16) + 2 * params + snapshot + onehot
                                    + 2 * perm)
    # A callback: the restore copy of the parameters and velocity.
    hist = model.fit(X, y, epochs=2, batch_size=16, momentum=0.9, callbacks=[lambda e, logs: None])
    assert hist.workspace_bytes == (model.workspace_nbytes(16) + 4 * params + snapshot + onehot
                                    + 2 * perm)
    # Early stopping: the best epoch's parameters (no momentum in this fit: no
    # velocity copies); the validation workspace.
    hist = model.fit(X, y, epochs=2, batch_size=16, validation_split=0.25, early_stopping=True)
    assert hist.workspace_bytes == (model.workspace_nbytes(16) + params + snapshot + onehot
                                    + 2 * 90 * 8 + model._net.workspace_size(30, "loss") * 8)


def test_bad_optimizer_arguments():
    X, y = blobs()
    for kw, msg in [({"momentum": -0.1}, "momentum"), ({"weight_decay": np.inf}, "weight_decay"),
                    ({"nesterov": True}, "nesterov"), ({"patience": 0}, "patience")]:
        with pytest.raises(ValueError, match=msg):
            net().fit(X, y, epochs=1, **kw)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_flush_denormals_is_scoped_to_the_fit(n_threads):
    from fastbp import _kernels

    before = fastbp.get_num_threads()
    fastbp.set_num_threads(n_threads)
    try:
        X, y = blobs()
        assert not _kernels.flush_denormals_enabled()
        seen = []
        net().fit(X, y, epochs=2, callbacks=[lambda e, logs: seen.append(_kernels.flush_denormals_enabled())])
        assert seen == [False, False]  # on inside the compiled epoch only
        assert not _kernels.flush_denormals_enabled()
        # Results are unchanged where no denormals occur.
        a, b = net("float32"), net("float32")
        a.fit(X, y, epochs=2, seed=0, flush_denormals=True)
        b.fit(X, y, epochs=2, seed=0, flush_denormals=False)
        np.testing.assert_array_equal(a._theta, b._theta)
    finally:
        fastbp.set_num_threads(before)


def test_flush_denormals_flushes():
    # One float32 step whose weight update is denormal: x = 1e-20 and the
    # backpropagated delta is 1e-20, so dW1 = 1e-40 (below float32's 1.2e-38).
    X = np.full((1, 1), 1e-20, dtype=np.float32)
    Y = np.full((1, 1), -1e-20, dtype=np.float32)
    W1 = {}
    for flag in (False, True):
        m = fastbp.MLP([1, 1, 1], activation="identity", output="identity", loss="squared_error",
                       bias=False, weights=[np.zeros((1, 1)), np.ones((1, 1))])
        m.fit(X, Y, epochs=1, batch_size=1, lr=1.0, flush_denormals=flag)
        W1[flag] = float(m.weights[0][0, 0])
    assert W1[False] == pytest.approx(-1e-40, rel=1e-2)  # a denormal, kept
    assert W1[True] == 0.0                                # flushed


def test_public_wiring_of_files_and_torch(tmp_path):
    X, y = blobs()
    model = net()
    model.fit(X, y, epochs=2, momentum=0.9)
    path = tmp_path / "m.npz"
    model.save(path)
    back = fastbp.load(path)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    np.testing.assert_array_equal(back.optimizer_state()["velocity"], model.optimizer_state()["velocity"])
    torch = pytest.importorskip("torch")
    seq = model.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(seq(torch.from_numpy(X)).numpy(), model.predict(X), rtol=1e-12)
    again = fastbp.MLP.from_torch(seq)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_pickle_and_deepcopy():
    import copy
    import pickle

    X, y = blobs()
    model = net("float32")
    model.fit(X, y, epochs=2, momentum=0.9)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert repr(clone) == repr(model)
        np.testing.assert_array_equal(clone.predict(X), model.predict(X))
        np.testing.assert_array_equal(clone.optimizer_state()["velocity"],
                                      model.optimizer_state()["velocity"])
        clone.fit(X, y, epochs=1)  # independent storage
        assert not np.array_equal(clone._theta, model._theta)
        clone.weights[0][...] = 0
        assert clone.weights[0].base is clone._theta  # views survived the round trip


def test_live_progress_bar_runs_epochs_in_pieces(capsys):
    pytest.importorskip("tqdm")
    X, y = blobs(400)
    a, b = net(), net()
    ha = a.fit(X, y, epochs=2, batch_size=2, seed=3, verbose=1)  # 200 batches: run in pieces
    hb = b.fit(X, y, epochs=2, batch_size=2, seed=3, verbose=0)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "200/200" in err
    np.testing.assert_array_equal(a._theta, b._theta)
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=1e-12)


def test_early_stopping_restores_the_best_epochs_velocity_too():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = rng.integers(0, 3, size=60)
    kw = dict(batch_size=4, lr=0.05, momentum=0.9, validation_split=0.5, seed=0)
    a = fastbp.MLP([2, 64, 3], activation="relu", dtype="float64", seed=0)
    hist = a.fit(X, y, epochs=200, early_stopping=True, patience=3, **kw)
    assert hist.stopped_early
    b = fastbp.MLP([2, 64, 3], activation="relu", dtype="float64", seed=0)
    b.fit(X, y, epochs=hist.best_epoch + 1, **kw)  # the same run, stopped at the best epoch
    np.testing.assert_array_equal(a._theta, b._theta)
    np.testing.assert_array_equal(a.optimizer_state()["velocity"], b.optimizer_state()["velocity"])


@pytest.mark.parametrize("make, pattern", [
    (lambda: schedules.StepDecay(step_size=0), "step_size must be an integer >= 1"),
    (lambda: schedules.StepDecay(step_size=2.5), "step_size must be an integer >= 1"),
    (lambda: schedules.StepDecay(gamma="0.5"), "gamma must be a finite number"),
    (lambda: schedules.StepDecay(gamma=0.0), "gamma must be > 0"),
    (lambda: schedules.InverseScaling(power_t=float("nan")), "power_t must be a finite number"),
    (lambda: schedules.Cosine(t_max=0), "t_max must be an integer >= 1"),
    (lambda: schedules.Cosine(lr_min=-0.1), "lr_min must be >= 0"),
])
def test_schedule_parameters_are_checked(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_built_in_schedules_overflow_to_inf_not_to_an_exception():
    assert schedules.StepDecay(1, gamma=1e200)(3, 0.1) == float("inf")
    assert schedules.InverseScaling(power_t=-400.0)(6, 0.1) == float("inf")
    assert schedules.InverseScaling(power_t=400.0)(6, 0.1) == 0.0


def test_fit_signature_shows_the_defaults_and_takes_positional_arguments():
    import inspect

    sig = inspect.signature(fastbp.MLP.fit)
    shown = {k: repr(p.default) for k, p in sig.parameters.items()
             if p.default is not inspect.Parameter.empty}
    assert shown["epochs"] == "10" and shown["batch_size"] == "32" and shown["lr"] == "None"
    assert shown["shuffle"] == "True" and shown["momentum"] == "0.0"
    assert shown["nesterov"] == "False" and shown["weight_decay"] == "0.0"
    X, y = blobs()
    a, b = net(), net()
    a.fit(X, y, 2, 16, 0.05, False)
    b.fit(X, y, epochs=2, batch_size=16, lr=0.05, shuffle=False)
    np.testing.assert_array_equal(a._theta, b._theta)
    # The defaults given explicitly are the defaults.
    c = net()
    c.fit(X, y, 2, 16, 0.05, False, momentum=0.0, nesterov=False, weight_decay=0.0)
    np.testing.assert_array_equal(a._theta, c._theta)


def test_shorthand_lr_none_is_001_and_step_lr_optional():
    X, y = blobs()
    a, b = net(), net()
    a.fit(X, y, epochs=1, seed=0)
    b.fit(X, y, epochs=1, seed=0, lr=0.01)
    np.testing.assert_array_equal(a._theta, b._theta)
    a.step(X[:8], y[:8])
    b.step(X[:8], y[:8], 0.01)
    np.testing.assert_array_equal(a._theta, b._theta)
