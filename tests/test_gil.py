"""The kernels release the GIL; one model's calls are serialised by its lock.

* Two models trained at once in two Python threads give the bits serial
  training gives.
* One model used from two threads at once (fit in one, step or predict in the
  other) neither crashes nor tears an update: every prediction is that of a
  state the model really was in, and the final weights are those of one of the
  serial orders.

* While one model's compiled epoch runs, another Python thread runs (shown
  without timing: see test_the_kernels_release_the_gil).
* A save waits for a fit running in another thread and writes one whole state.

The speed-up itself is a benchmark (tools/gil_bench.py), not a timed test.
"""
import threading

import numpy as np
import pytest

import fastbp


@pytest.fixture(autouse=True)
def one_thread():
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(1)
    yield
    fastbp.set_num_threads(before)


def params(net):
    return b"".join(np.asarray(p).tobytes() for p in list(net.weights) + list(net.biases) if p is not None)


def problem(seed, n=2000, sizes=(64, 96, 10)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n)
    return X, y


def run_threads(*targets):
    errors = []

    def wrap(f):
        def g():
            try:
                f()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
        return g

    ts = [threading.Thread(target=wrap(f)) for f in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
        assert not t.is_alive(), "thread hung"
    assert not errors, errors


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_models_in_two_threads_match_serial(dtype):
    data = [problem(1), problem(2)]
    cfgs = [dict(activation="relu", seed=3), dict(activation="tanh", seed=4)]

    def train(k, out):
        net = fastbp.MLP([64, 96, 10], dtype=dtype, **cfgs[k])
        net.fit(*data[k], epochs=3, batch_size=16, lr=0.05, seed=k)
        out[k] = (params(net), net.predict(data[k][0]).tobytes())

    serial = {}
    train(0, serial)
    train(1, serial)
    for _ in range(3):
        par = {}
        run_threads(lambda: train(0, par), lambda: train(1, par))
        assert par == serial


def test_fit_and_step_on_one_model_from_two_threads():
    X, y = problem(5, n=1500)
    Xs, ys = X[:50], y[:50]

    def fresh():
        return fastbp.MLP([64, 96, 10], seed=7)

    def do_fit(net, callbacks=()):
        net.fit(X, y, epochs=2, batch_size=8, lr=0.05, seed=0, callbacks=list(callbacks))

    def do_step(net):
        net.step(Xs, ys, 0.1)

    orders = {}
    for name, (first, second) in {"fit, step": (do_fit, do_step),
                                  "step, fit": (do_step, do_fit)}.items():
        net = fresh()
        first(net)
        second(net)
        orders[params(net)] = name
    assert len(orders) == 2
    seen = []

    # A step issued while the fit runs (from the fit's first callback on) waits
    # for the fit: the serial order "fit, step", deterministically.
    net = fresh()
    issuing = threading.Event()

    def first_epoch_lets_the_step_go(epoch, logs):
        if epoch == 0:
            stepper.start()
            assert issuing.wait(30)

    def step_during_fit():
        issuing.set()
        do_step(net)

    stepper = threading.Thread(target=step_during_fit)
    run_threads(lambda: do_fit(net, [first_epoch_lets_the_step_go]))
    stepper.join(60)
    assert not stepper.is_alive()
    seen.append(orders.get(params(net), "torn"))

    # A fit issued while a step holds the model's lock waits for it: "step, fit".
    net = fresh()
    locked, issued = threading.Event(), threading.Event()

    def stepper_holding_the_lock():
        with net._lock:
            locked.set()
            assert issued.wait(30)
            do_step(net)

    def fitter():
        assert locked.wait(30)
        issued.set()
        do_fit(net)

    run_threads(stepper_holding_the_lock, fitter)
    seen.append(orders.get(params(net), "torn"))

    # Free-running: whichever gets the lock first, never a torn update.
    for trial in range(2):
        net = fresh()
        run_threads(lambda: do_fit(net), lambda: do_step(net))
        seen.append(orders.get(params(net), "torn"))
    assert seen[:2] == ["fit, step", "step, fit"]
    assert "torn" not in seen, f"torn update: final weights match no serial order ({seen})"


def test_predict_while_fitting_sees_whole_states_only():
    X, y = problem(6, n=1500)
    net = fastbp.MLP([64, 96, 10], seed=8)

    def observe():
        loss, grads = net.gradients(X[:20], y[:20])
        return (net.predict(X[:20]).tobytes(), net.loss(X[:20], y[:20]), loss,
                b"".join(g.tobytes() for pair in grads for g in pair))

    before = observe()
    seen = []
    done = threading.Event()

    def fitter():
        try:
            net.fit(X, y, epochs=3, batch_size=4, lr=0.05, seed=0)
        finally:
            done.set()

    def observer():
        while not done.is_set():
            seen.append(observe())
        seen.append(observe())

    run_threads(fitter, observer)
    after = observe()
    assert all(a != b for a, b in zip(before, after))
    # Predictions, losses and gradients each come from one whole state (no call
    # ran inside the fit).  The calls of one observation take the lock one by
    # one, so the fit may start or end between them: each is checked alone.
    for obs in seen:
        for k, what in enumerate(["predict", "loss", "gradients' loss", "gradients"]):
            assert obs[k] in (before[k], after[k]), f"{what} saw a half-trained model"


def test_the_kernels_release_the_gil():
    """While one thread is inside a compiled epoch, another runs Python code.

    The interpreter's switch interval is set to 10 s, so no thread is forced
    off the GIL: the other thread can run only when the fitting thread
    releases it.  The schedule (called just before each epoch's compiled
    loop) wakes the other thread; the epoch's callback (just after the loop)
    checks whether it ran in between, and stops the fit once it has.  A
    kernel that held the GIL would leave it asleep through every epoch.  No
    timing is involved: on a busy machine the other thread merely needs to
    be scheduled once during one of up to 100 epochs of ~10 ms.  The model is
    tiny so that no numpy call on the parameters releases the GIL either.
    """
    import sys

    rng = np.random.default_rng(16)
    X = rng.normal(size=(50_000, 4))
    y = rng.integers(0, 2, size=50_000)
    net = fastbp.MLP([4, 6, 2], seed=17)
    assert net.n_params < 500  # numpy releases the GIL only for larger loops
    go, finished, window, ran = threading.Event(), threading.Event(), [None], []

    def schedule(epoch, lr0):
        window[0] = epoch
        go.set()
        return lr0

    def stop_once_overlapped(epoch, logs):
        window[0] = None
        return epoch in ran

    def other():
        while not finished.is_set():
            if go.wait(0.01):
                go.clear()
                if window[0] is not None:
                    ran.append(window[0])

    hist = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        t = threading.Thread(target=other)
        t.start()
        try:
            hist.append(net.fit(X, y, epochs=100, batch_size=1, lr=0.01, shuffle=False,
                                schedule=schedule, callbacks=[stop_once_overlapped]))
        finally:
            finished.set()
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert hist[0].stopped_early, "no epoch let another thread run: the GIL was held"
    assert ran and ran[0] == hist[0].epochs - 1


def test_many_threads_many_models_no_crash():
    X, y = problem(9, n=300, sizes=(16, 24, 4))
    nets = [fastbp.MLP([16, 24, 4], seed=s) for s in range(6)]
    serial = []
    for s in range(6):
        ref = fastbp.MLP([16, 24, 4], seed=s)
        ref.fit(X, y, epochs=2, batch_size=5, lr=0.1, seed=s)
        serial.append(params(ref))
    run_threads(*[lambda k=k: nets[k].fit(X, y, epochs=2, batch_size=5, lr=0.1, seed=k)
                  for k in range(6)])
    assert [params(n) for n in nets] == serial


@pytest.mark.parametrize("how", ["method", "function"])
def test_save_issued_during_a_fit_waits_for_it(tmp_path, how):
    """A save from another thread while a fit runs writes the fit's final state.

    Deterministic: the fit's first callback lets the saver start and then
    waits up to 0.3 s for its save to finish.  A save that takes the model's
    lock cannot finish before the fit ends, so the callback times out and the
    file holds the final weights; a save that read the parameters without the
    lock would finish inside the wait and hold the weights of epoch 1.
    """
    X, y = problem(10, n=300)
    net = fastbp.MLP([64, 96, 10], seed=11)
    path = tmp_path / "m.npz"
    in_fit, saved, order = threading.Event(), threading.Event(), []

    def cb(epoch, logs):
        if epoch == 0:
            in_fit.set()
            saved.wait(0.3)
        order.append(("epoch", epoch, saved.is_set()))

    def fitter():
        net.fit(X, y, epochs=3, batch_size=16, lr=0.05, momentum=0.9, seed=0, callbacks=[cb])

    def saver():
        assert in_fit.wait(30)
        if how == "method":
            net.save(path)
        else:
            fastbp.io.save(net, path)
        saved.set()

    run_threads(fitter, saver)
    assert [e for _, e, _ in order] == [0, 1, 2]
    assert not any(done for _, _, done in order), "the save finished inside the fit"
    back = fastbp.load(path)
    assert back._theta.tobytes() == net._theta.tobytes()
    assert back.optimizer_state()["velocity"].tobytes() == net.optimizer_state()["velocity"].tobytes()


def test_repeated_saves_during_a_fit_each_hold_one_whole_state(tmp_path):
    """The experiment of issue 8: saves in a loop while a fit runs; every file
    is the state before the fit or the state after it (the fit holds the lock
    from its first step to its last), never layers from different steps."""
    X, y = problem(12, n=1500)
    net = fastbp.MLP([64, 96, 10], seed=13)
    before = params(net)
    done, files = threading.Event(), []

    def fitter():
        try:
            net.fit(X, y, epochs=3, batch_size=4, lr=0.05, seed=0)
        finally:
            done.set()

    def saver():
        while not done.is_set() or not files:
            path = tmp_path / f"m{len(files)}.npz"
            net.save(path)
            files.append(path)

    run_threads(fitter, saver)
    after = params(net)
    assert before != after
    states = [params(fastbp.load(p)) for p in files]
    assert set(states) <= {before, after}, "a saved file mixes layers of different steps"


def test_a_callback_may_checkpoint_the_model(tmp_path):
    """The lock is re-entrant: saving from a fit's own callback works, and each
    checkpoint is the model at the end of its epoch."""
    X, y = problem(14, n=200)
    net, twin = fastbp.MLP([64, 96, 10], seed=15), fastbp.MLP([64, 96, 10], seed=15)
    net.fit(X, y, epochs=3, batch_size=16, lr=0.05, shuffle=False,
            callbacks=[lambda e, logs: net.save(tmp_path / f"ckpt{e}.npz")])
    for e in range(3):
        twin.fit(X, y, epochs=1, batch_size=16, lr=0.05, shuffle=False)
        assert params(fastbp.load(tmp_path / f"ckpt{e}.npz")) == params(twin)
