"""Ctrl-C during a long fit raises KeyboardInterrupt promptly and leaves a usable model.

The fit runs in a subprocess (a SIGINT must not hit pytest itself); the
subprocess reports, on stdout, when the fit started, when the interrupt
arrived in Python, and whether the weights are finite and predict works.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import fastbp
    threads, dtype, kwargs = int(sys.argv[1]), sys.argv[2], eval(sys.argv[3])
    fastbp.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8000, 400)).astype(dtype)
    y = rng.integers(0, 10, size=8000)
    net = fastbp.MLP([400, 300, 10], dtype=dtype, seed=0)
    print("START", flush=True)
    t0 = time.time()
    try:
        net.fit(X, y, epochs=1000, batch_size=64, lr=0.01, seed=0, **kwargs)
        print("FINISHED", flush=True)
    except KeyboardInterrupt:
        t = time.time()
        finite = all(np.isfinite(np.asarray(w)).all() for w in net.weights)
        finite = finite and all(np.isfinite(np.asarray(b)).all() for b in net.biases)
        p = net.predict(X[:100])
        ok = p.shape == (100, 10) and np.isfinite(p).all()
        net.step(X[:10], y[:10], 0.01)   # and it still trains
        print("INTERRUPTED", repr(t), finite, ok, flush=True)
    """
)


def interrupt(code, args=(), delay=1.0):
    """Run `code` in a subprocess, SIGINT it `delay` s after it prints START;
    returns (the words it printed, the seconds from the signal to the
    KeyboardInterrupt it reports, its stderr, its exit status)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "START", line + proc.stderr.read()
        time.sleep(delay)
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the work ended before the interrupt (exit {proc.returncode}):\n{out}{err}")
        t_sig = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fields = out.split()
    assert fields and fields[0] == "INTERRUPTED", out + err
    latency = float(fields[1]) - t_sig
    print(f"KeyboardInterrupt {latency:.3f} s after SIGINT")
    return fields, latency, err, proc.returncode


@pytest.mark.parametrize("threads, dtype, kwargs", [
    (1, "float32", "{}"),
    (2, "float64", "{}"),
    (2, "float32", "dict(momentum=0.9, weight_decay=1e-4)"),
])
def test_ctrl_c_interrupts_fit_promptly(threads, dtype, kwargs):
    fields, latency, err, status = interrupt(CHILD, (str(threads), dtype, kwargs))
    assert latency < 2.0, f"KeyboardInterrupt took {latency:.2f} s"
    assert fields[2] == "True", "non-finite weights after the interrupt"
    assert fields[3] == "True", "predict failed after the interrupt"
    assert status == 0, err


PREDICT_CHILD = textwrap.dedent(
    """
    import time
    import numpy as np
    import fastbp
    fastbp.set_num_threads(2)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40000, 400)).astype("float32")
    net = fastbp.MLP([400, 3000, 3000, 10], seed=0)
    print("START", flush=True)
    try:
        net.predict(X)  # one call of several seconds
        print("FINISHED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", repr(time.time()), flush=True)
    """
)


def test_ctrl_c_interrupts_a_long_predict():
    """predict polls for Ctrl-C between chunks of rows sized to a fixed amount
    of work, so even one long call stops promptly."""
    _, latency, _, _ = interrupt(PREDICT_CHILD, delay=0.5)
    assert latency < 1.0, f"KeyboardInterrupt took {latency:.2f} s"
