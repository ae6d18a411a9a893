"""The kernels release the GIL; one model's calls are serialised by its lock.

* Two models trained at once in two Python threads give the bits serial
  training gives.
* One model used from two threads at once (fit in one, step or predict in the
  other) neither crashes nor tears an update: every prediction is that of a
  state the model really was in, and the final weights are those of one of the
  serial orders.

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

    def do_fit(net):
        net.fit(X, y, epochs=2, batch_size=8, lr=0.05, seed=0)

    def do_step(net):
        net.step(Xs, ys, 0.1)

    orders = set()
    for first, second in [(do_fit, do_step), (do_step, do_fit)]:
        net = fresh()
        first(net)
        second(net)
        orders.add(params(net))
    assert len(orders) == 2
    seen = set()
    for trial in range(4):
        net = fresh()
        started = threading.Event()

        def fitter():
            started.set()
            do_fit(net)

        def stepper():
            if trial % 2:
                started.wait()
            do_step(net)

        run_threads(fitter, stepper)
        final = params(net)
        assert final in orders, "torn update: final weights match no serial order"
        seen.add(final)


def test_predict_while_fitting_sees_whole_states_only():
    X, y = problem(6, n=1500)
    net = fastbp.MLP([64, 96, 10], seed=8)
    before = net.predict(X[:20]).tobytes()
    preds = []
    done = threading.Event()

    def fitter():
        try:
            net.fit(X, y, epochs=3, batch_size=4, lr=0.05, seed=0)
        finally:
            done.set()

    def predictor():
        while not done.is_set():
            preds.append(net.predict(X[:20]).tobytes())
            net.loss(X[:20], y[:20])
            net.gradients(X[:20], y[:20])
        preds.append(net.predict(X[:20]).tobytes())

    run_threads(fitter, predictor)
    after = net.predict(X[:20]).tobytes()
    assert before != after
    assert set(preds) <= {before, after}, "a prediction saw a half-trained model"


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
