"""Threads: the tiled parallel kernels, the thread controls, FTZ/DAZ per region.

* Bitwise equality of predict, loss, gradients, an SGD step and a fit across
  1, 2 and 3 threads on both parallel plans (batch rows split, and the
  output units of every layer split for a small batch), both dtypes, with
  ``parallel_regions()`` proving that the parallel path ran.
* The API: ``set_num_threads`` validation, ``get_num_threads`` semantics,
  ``fastbp.threads`` (nesting, restoring, local to a Python thread),
  threadpoolctl, the scikit-learn estimators' ``n_threads``.
* FTZ/DAZ: a flush-to-zero fit must not leave OpenMP threads flushing later
  calls (checked in a fresh process, where the pool is born inside that fit).
* The workspace of ``gradients`` and ``Network.fit_workspace_nbytes``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import _kernels
from _helpers import why_no_teams

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ["float32", "float64"]


NO_TEAMS = why_no_teams()
#: Tests that need a parallel region to get two threads.
needs_teams = pytest.mark.skipif(NO_TEAMS is not None, reason=str(NO_TEAMS))


def _cap(n):
    """What get_num_threads() gives for a setting of n: OMP_THREAD_LIMIT caps it."""
    return min(n, _kernels.thread_limit())


@pytest.fixture
def forced():
    """Every step and chunk with more than one thread goes parallel, cut into
    as many tiles as its shape allows (the kernels' test threshold at 0)."""
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    yield
    fastbp.set_num_threads(before)
    _kernels.set_parallel_threshold(threshold)


@pytest.fixture
def restore_threads():
    before = fastbp._threads._n_threads
    yield
    fastbp._threads._n_threads = before


def _data(sizes, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Y = rng.integers(0, sizes[-1], n)
    return X, Y


def _run_all(sizes, n, batch, dtype, activation, threads):
    """Every kernel result of one configuration on `threads` threads."""
    fastbp.set_num_threads(threads)
    X, Y = _data(sizes, n, dtype)
    net = fastbp.MLP(sizes, activation=activation, output="softmax", loss="cross_entropy",
                     dtype=dtype, seed=1)
    before = _kernels.parallel_regions()
    pred = net.predict(X)
    loss = net.loss(X, Y)
    gl, grads = net.gradients(X[:batch], Y[:batch])
    step = net.step(X[:batch], Y[:batch], 0.05)
    hist = net.fit(X, Y, epochs=2, batch_size=batch, lr=0.05, momentum=0.5, seed=3)
    plain = fastbp.MLP(sizes, activation=activation, output="softmax", loss="cross_entropy",
                       dtype=dtype, seed=2)
    plain.fit(X, Y, epochs=1, batch_size=batch, lr=0.05, seed=4)   # the fused SGD step
    regions = _kernels.parallel_regions() - before
    out = [pred, np.float64(loss), np.float64(gl), np.float64(step), np.array(hist.loss)]
    out += [g for pair in grads for g in pair] + list(net.weights) + list(net.biases)
    out += list(plain.weights) + list(plain.biases)
    return out, regions


# (sizes, n, batch): row split (batch >= 16 rows per thread), unit split
# (small batch), a deep net whose unit tiles span layers, and odd widths.
CASES = [
    ([13, 37, 29, 5], 150, 64, "tanh"),
    ([13, 37, 29, 5], 21, 4, "sigmoid"),
    ([7, 50, 3], 40, 3, "relu"),
    ([9, 17, 33, 65, 11, 4], 70, 35, "relu"),
    ([5, 300, 6], 9, 1, "tanh"),
]


@pytest.fixture(params=[1, 2], ids=["fine", "coarse"])
def tiles(request):
    """The row split's tiles: fine (several per thread) or coarse (one per
    thread), which the team picks between at run time."""
    before = _kernels.set_tile_mode(request.param)
    yield request.param
    _kernels.set_tile_mode(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[0])) + f"-b{c[2]}")
def test_bitwise_equal_across_threads(forced, tiles, dtype, case):
    sizes, n, batch, activation = case
    ref, regions = _run_all(sizes, n, batch, dtype, activation, 1)
    assert regions == 0          # one thread never opens a parallel region
    for t in (2, 3):
        got, regions = _run_all(sizes, n, batch, dtype, activation, t)
        assert regions > 0 or NO_TEAMS, "the parallel path did not run"
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_layer_small_batch_default_threshold(dtype):
    """1024-512-256 at batch 4 (default threshold): the unit split runs in
    parallel and gives the same bits as one thread."""
    sizes = [1024, 512, 256]
    X, Y = _data(sizes, 8, dtype)
    results = []
    before = fastbp.get_num_threads()
    try:
        for t in (1, 2):
            fastbp.set_num_threads(t)
            net = fastbp.MLP(sizes, output="softmax", loss="cross_entropy", dtype=dtype, seed=0)
            r0 = _kernels.parallel_regions()
            g = net.gradients(X[:4], Y[:4])[1]
            net.fit(X, Y, epochs=1, batch_size=4, lr=0.01, shuffle=False)
            p = net.predict(X[:4])
            results.append(([w for pair in g for w in pair] + list(net.weights) + [p],
                            _kernels.parallel_regions() - r0))
    finally:
        fastbp.set_num_threads(before)
    assert results[0][1] == 0 and (results[1][1] >= 3 or NO_TEAMS)   # one region per call
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_threshold_row_split_any_mode(restore_threads, dtype):
    """256-256-10 at batch 128 (default threshold): the steps the team runs
    (coarse, fine, serial back-offs and timed serial probes, as the team
    picks them) give the bits of one thread, and the counters account for
    every step."""
    sizes = [256, 256, 10]
    X, Y = _data(sizes, 1024, dtype)
    out = {}
    previous = _kernels.set_tile_mode(0)
    try:
        for t, mode in ((1, 0), (2, 0), (2, 1), (2, 2)):
            fastbp.set_num_threads(t)
            _kernels.set_tile_mode(mode)
            net = fastbp.MLP(sizes, output="softmax", loss="cross_entropy", dtype=dtype, seed=0)
            _kernels.team_stats(reset=True)
            net.fit(X, Y, epochs=2, batch_size=128, lr=0.05, seed=1)
            st = _kernels.team_stats()
            out[t, mode] = [net.predict(X)] + list(net.weights) + list(net.biases)
            if t == 1:
                assert st["regions"] == 0
            elif NO_TEAMS is None:
                assert st["regions"] == 2                   # one per epoch
                assert (st["steps_team"] + st["steps_backoff"] + st["steps_probe"]
                        + st["steps_small"]) == 16          # 8 steps an epoch
                assert st["wait_last_ns"] <= st["wait_ns"] <= st["step_ns"]
                # the probes' wall and CPU time (thread 0's, at most its wall)
                assert (st["steps_probe"] == 0) == (st["probe_ns"] == 0)
                assert 0 <= st["probe_cpu_ns"] <= st["probe_ns"] + 1_000_000
                if mode == 1:
                    assert st["steps_fine"] == st["steps_team"]
                if mode == 2:
                    assert st["steps_fine"] == 0
    finally:
        _kernels.set_tile_mode(previous)
    for key, got in out.items():
        for a, b in zip(out[1, 0], got):
            np.testing.assert_array_equal(a, b, err_msg=str(key))


def test_team_stats_and_tile_mode_hooks():
    stats = _kernels.team_stats(reset=True)
    assert set(stats) >= {"regions", "steps_team", "steps_backoff", "backoffs", "wait_ns",
                          "sleeps_wave", "sleeps_next", "wakes",
                          "verdicts", "verdicts_worker", "verdict_stops"}
    assert all(v == 0 for v in _kernels.team_stats().values())
    with pytest.raises(ValueError, match="tile mode"):
        _kernels.set_tile_mode(3)


NONFINITE_STRESS = textwrap.dedent("""
    import json
    import numpy as np
    import fastbp
    from fastbp import _kernels

    _kernels.set_parallel_threshold(0)      # every step with > 1 thread through the team
    CASES = [([8, 24, 16, 4], 4), ([8, 24, 4], 64)]   # unit split (small batch), row split
    N = 256

    def params(net):
        return b"".join(a.tobytes() for a in list(net.weights) + list(net.biases))

    def run(threads, sizes, batch, bad):
        # A fit whose batch holding row `bad` has an Inf loss, then steps that
        # alternate a good batch and that bad one: the message and the weights.
        fastbp.set_num_threads(threads)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((N, sizes[0]))
        Y = rng.standard_normal((N, sizes[-1]))
        Y[bad] = 1e30                    # float32: its squared error is Inf
        net = fastbp.MLP(sizes, output="identity", loss="squared_error", dtype="float32",
                         seed=1)
        try:
            net.fit(X, Y, epochs=1, batch_size=batch, lr=0.01, shuffle=False)
            msg = None
        except FloatingPointError as e:
            msg = str(e)
        out = [msg, params(net).hex()]
        b0 = (bad // batch) * batch
        for i in range(20):
            s = b0 if i % 2 else (b0 + batch) % N
            before = params(net)
            try:
                net.step(X[s:s + batch], Y[s:s + batch], 0.01)
                assert s != b0, "a step with an Inf loss went through"
            except FloatingPointError:
                assert s == b0 and params(net) == before, "a refused step changed the model"
                refused[0] += threads > 1
            out.append(params(net).hex())
        refused[0] += threads > 1 and msg is not None    # the fit's own Inf step
        return out

    refused = [0]     # refused steps of the runs on a team (each a team step)

    _kernels.team_stats(reset=True)
    for sizes, batch in CASES:
        for bad in (0, 37, 130, 255):
            ref = run(1, sizes, batch, bad)
            assert ref[0] is not None and "whose loss was NaN or Inf" in ref[0], ref[0]
            for t in (2, 3, 4):
                for _ in range(2):
                    assert run(t, sizes, batch, bad) == ref, (t, sizes, batch, bad)
    print(json.dumps(dict(_kernels.team_stats(), refused=refused[0])))
""")


def test_nonfinite_loss_in_team_steps_rewinds_exactly_and_never_hangs():
    """Many short team steps (threshold 0) on 2, 3 and 4 threads, both plans,
    with an Inf batch loss at a chosen step of a fit and then every other
    step(): the weights are those of 1 thread after the fit's rewind and
    after every step, a refused step changes nothing, and nothing deadlocks
    (a subprocess with a timeout).  One verdict per training team step,
    published by the thread of the loss wave's last tile (team_stats()
    ["verdicts"]), and every refused step stopped on it: its caller and the
    workers that got that far ("verdict_stops", at most 4 threads each)."""
    stats = json.loads(_python(NONFINITE_STRESS).strip().splitlines()[-1])
    assert stats["refused"] == 2 * 4 * 3 * 2 * 11, stats   # cases, rows, threads, repeats
    if NO_TEAMS is None:
        assert stats["steps_team"] > 0 and stats["tiles_worker"] > 0, stats
        assert stats["verdicts"] == stats["steps_team"], stats   # (every one trains)
        assert stats["refused"] <= stats["verdict_stops"] <= 4 * stats["refused"], stats


def test_small_steps_stay_serial(restore_threads):
    """A step too small to gain (2-2-1, batch 1) opens no parallel region."""
    fastbp.set_num_threads(2)
    net = fastbp.MLP([2, 2, 1], activation="sigmoid", output="identity", loss="squared_error")
    X = np.random.default_rng(0).standard_normal((64, 2))
    before = _kernels.parallel_regions()
    net.fit(X, X[:, :1], epochs=1, batch_size=1, lr=0.1)
    net.predict(X[:1])
    assert _kernels.parallel_regions() == before


@needs_teams
def test_large_predict_goes_parallel(restore_threads):
    fastbp.set_num_threads(2)
    net = fastbp.MLP([64, 256, 10], output="softmax", loss="cross_entropy")
    X = np.random.default_rng(0).standard_normal((512, 64))
    before = _kernels.parallel_regions()
    net.predict(X)
    assert _kernels.parallel_regions() > before
    fastbp.set_num_threads(1)
    before = _kernels.parallel_regions()
    net.predict(X)
    assert _kernels.parallel_regions() == before


# -- set_num_threads / get_num_threads ------------------------------------------

@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", True, False, None, 2**31,
                                 fastbp.MAX_THREADS + 1, np.bool_(True), np.float64(2)])
def test_set_num_threads_rejects(restore_threads, bad):
    fastbp.set_num_threads(2)
    with pytest.raises(ValueError, match="number of threads"):
        fastbp.set_num_threads(bad)
    assert fastbp.get_num_threads() == _cap(2)     # unchanged


@pytest.mark.parametrize("good", [1, 3, np.int64(2), np.int32(4), np.uint8(5), fastbp.MAX_THREADS])
def test_set_num_threads_accepts(restore_threads, good):
    fastbp.set_num_threads(good)
    assert fastbp.get_num_threads() == _cap(int(good))
    assert type(fastbp.get_num_threads()) is int


def test_default_follows_openmp(restore_threads):
    fastbp._threads._n_threads = None
    assert fastbp.get_num_threads() == _cap(max(1, _kernels.max_threads()))


# -- fastbp.threads ---------------------------------------------------------------

def test_threads_context_nests_and_restores(restore_threads):
    fastbp.set_num_threads(4)
    with fastbp.threads(3) as n:
        assert n == _cap(3) == fastbp.get_num_threads()
        with fastbp.threads(1):
            assert fastbp.get_num_threads() == _cap(1)
            with fastbp.threads(2):          # a cap: the smallest holds
                assert fastbp.get_num_threads() == _cap(1)
        assert fastbp.get_num_threads() == _cap(3)
        with fastbp.threads(8):              # above the setting: no effect
            assert fastbp.get_num_threads() == _cap(3)
        with fastbp.threads(None):
            assert fastbp.get_num_threads() == _cap(3)
    assert fastbp.get_num_threads() == _cap(4)
    with pytest.raises(RuntimeError):
        with fastbp.threads(1):
            raise RuntimeError("boom")
    assert fastbp.get_num_threads() == _cap(4)
    for bad in (0, -2, 1.5, "1", True, 2**31):
        with pytest.raises(ValueError):
            with fastbp.threads(bad):
                pass
    assert fastbp.get_num_threads() == _cap(4)


def test_threads_cap_is_local_to_a_python_thread(restore_threads):
    fastbp.set_num_threads(3)
    barrier = threading.Barrier(2, timeout=10)
    seen = {}

    def worker(name, cap):
        with fastbp.threads(cap):
            barrier.wait()                       # both caps are in force now
            seen[name] = fastbp.get_num_threads()
            barrier.wait()
        seen[name + "_after"] = fastbp.get_num_threads()

    ts = [threading.Thread(target=worker, args=("a", 1)),
          threading.Thread(target=worker, args=("b", 2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == {"a": 1, "b": _cap(2), "a_after": _cap(3), "b_after": _cap(3)}
    assert fastbp.get_num_threads() == _cap(3)


def test_threads_cap_is_local_to_an_asyncio_task(restore_threads):
    """Two tasks of one event loop (one Python thread): a cap set in one
    while it awaits is not seen by the other."""
    import asyncio

    fastbp.set_num_threads(3)
    seen = {}

    async def capped(started, done):
        with fastbp.threads(1):
            started.set()
            await done.wait()          # the other task runs while the cap holds
            seen["capped"] = fastbp.get_num_threads()
        seen["capped_after"] = fastbp.get_num_threads()

    async def free(started, done):
        await started.wait()
        seen["free"] = fastbp.get_num_threads()
        done.set()

    async def main():
        started, done = asyncio.Event(), asyncio.Event()
        await asyncio.gather(capped(started, done), free(started, done))

    asyncio.run(main())
    assert seen == {"capped": 1, "free": _cap(3), "capped_after": _cap(3)}


def test_threads_cap_limits_the_kernels(restore_threads):
    fastbp.set_num_threads(2)
    net = fastbp.MLP([64, 256, 10], output="softmax", loss="cross_entropy")
    X = np.random.default_rng(0).standard_normal((512, 64))
    with fastbp.threads(1):
        before = _kernels.parallel_regions()
        net.predict(X)
        net.fit(X, X[:, :10].argmax(1), epochs=1, batch_size=128, lr=0.01)
        assert _kernels.parallel_regions() == before


# -- threadpoolctl ------------------------------------------------------------------

def test_threadpoolctl_limits_fastbp(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fastbp.set_num_threads(2)
    info = [d for d in threadpoolctl.threadpool_info() if d["user_api"] == "fastbp"]
    assert len(info) == 1 and info[0]["num_threads"] == 2
    assert info[0]["filepath"] == os.path.realpath(_kernels.__file__)
    net = fastbp.MLP([64, 256, 10], output="softmax", loss="cross_entropy")
    X = np.random.default_rng(0).standard_normal((512, 64))
    with threadpoolctl.threadpool_limits(1):
        assert fastbp.get_num_threads() == _cap(1)
        before = _kernels.parallel_regions()
        net.predict(X)
        assert _kernels.parallel_regions() == before
    assert fastbp.get_num_threads() == _cap(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="fastbp"):
        assert fastbp.get_num_threads() == _cap(1)
    fastbp.set_num_threads(3)                # no limit is left behind
    assert fastbp.get_num_threads() == _cap(3)
    # A limit above the setting does not raise it.
    with threadpoolctl.threadpool_limits(8):
        assert fastbp.get_num_threads() == _cap(3)


def test_threadpoolctl_openmp_limit_caps_the_default(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _kernels.openmp_enabled():
        pytest.skip("built without OpenMP")
    fastbp._threads._n_threads = None
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastbp.get_num_threads() == 1


def test_threadpoolctl_controller_registered_on_later_import():
    """fastbp does not import threadpoolctl; importing it afterwards registers."""
    pytest.importorskip("threadpoolctl")
    code = textwrap.dedent("""
        import sys, fastbp
        assert "threadpoolctl" not in sys.modules
        from threadpoolctl import threadpool_info, threadpool_limits
        fastbp.set_num_threads(2)
        apis = [d["user_api"] for d in threadpool_info()]
        with threadpool_limits(1):
            n = fastbp.get_num_threads()
        print(apis.count("fastbp"), n, fastbp.get_num_threads())
    """)
    out = _python(code)
    assert out.split() == ["1", "1", str(_cap(2))]


# -- scikit-learn's n_threads ----------------------------------------------------------

def test_sklearn_n_threads(restore_threads):
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPClassifier, MLPRegressor

    fastbp.set_num_threads(2)
    X = np.random.default_rng(0).standard_normal((600, 64))
    y = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=2, batch_size=200,
                        random_state=0, n_threads=1)
    assert clf.get_params()["n_threads"] == 1
    before = _kernels.parallel_regions()
    with pytest.warns(Warning):          # max_iter reached
        clf.fit(X, y)
    clf.predict(X)
    assert _kernels.parallel_regions() == before
    free = MLPClassifier(hidden_layer_sizes=(256,), max_iter=2, batch_size=200, random_state=0)
    with pytest.warns(Warning):
        free.fit(X, y)
    assert _kernels.parallel_regions() > before or NO_TEAMS
    for a, b in zip(clf.coefs_, free.coefs_):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="number of threads"):
        MLPRegressor(n_threads=0).fit(X, X[:, 0])


# -- FTZ / DAZ -------------------------------------------------------------------------

def _python(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


FTZ_CHECK = textwrap.dedent("""
    import json
    import numpy as np
    import fastbp
    from fastbp import _kernels

    _kernels.set_parallel_threshold(0)
    CASES = {"float32": 3e-39, "float64": 5e-309}

    def data(dtype):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 24)).astype(dtype)
        W = (CASES[dtype] * rng.uniform(0.5, 1.0, (16, 24))).astype(dtype)  # denormal
        return X, np.zeros((64, 16), dtype), W

    def run(dtype, n_threads):
        X, Y, W = data(dtype)
        def net():
            return fastbp.MLP([24, 16], activation="identity", output="identity",
                              loss="squared_error", bias=False, dtype=dtype, weights=[W])
        with fastbp.threads(n_threads):
            a = net()
            out = [a.predict(X), a.predict(X[:4]), np.array([a.loss(X, Y)]),
                   a.gradients(X, Y)[1][0][0], a.gradients(X[:4], Y[:4])[1][0][0]]
            for batch in (64, 4):
                b = net()
                b.fit(X, Y, epochs=1, batch_size=batch, lr=0.5, shuffle=False,
                      flush_denormals=False)
                out.append(b.weights[0].copy())
        return out

    fastbp.set_num_threads(2)
    never = {d: run(d, 1) for d in CASES}     # no flushed fit has run yet
    # The process's first parallel region: a default (flushing) fit on 2
    # threads, so OpenMP creates its threads while FTZ/DAZ are on.
    rng = np.random.default_rng(1)
    big = fastbp.MLP([24, 64, 16], output="identity", loss="squared_error")
    r0 = _kernels.parallel_regions()
    big.fit(rng.standard_normal((256, 24)), rng.standard_normal((256, 16)), epochs=1,
            batch_size=64, lr=0.01)
    report = {"fit_parallel": _kernels.parallel_regions() > r0,
              "caller_ftz_after": _kernels.flush_denormals_enabled()}
    for d in CASES:
        r0 = _kernels.parallel_regions()
        two = run(d, 2)
        report[d + "_parallel"] = _kernels.parallel_regions() - r0
        one = run(d, 1)
        report[d + "_denormal_results"] = bool(np.any((never[d][0] != 0) &
                                                      (np.abs(never[d][0]) < np.finfo(d).tiny)))
        report[d + "_two_eq_never"] = [bool(np.array_equal(a, b)) for a, b in zip(two, never[d])]
        report[d + "_one_eq_never"] = [bool(np.array_equal(a, b)) for a, b in zip(one, never[d])]
    print(json.dumps(report))
""")


def test_ftz_does_not_leak_into_later_calls():
    """After a default fit (flush_denormals=True) started OpenMP's threads,
    predict, loss, gradients and fit(flush_denormals=False) give on 2 threads
    the same bits as on 1 thread and as before any flushing fit, where the
    results are denormal."""
    report = json.loads(_python(FTZ_CHECK).strip().splitlines()[-1])
    assert (report["fit_parallel"] or NO_TEAMS) and not report["caller_ftz_after"]
    for d in DTYPES:
        assert report[d + "_denormal_results"], "the data must produce denormals"
        assert report[d + "_parallel"] > 0 or NO_TEAMS
        assert all(report[d + "_one_eq_never"]), report
        assert all(report[d + "_two_eq_never"]), report


def test_fit_flushes_in_every_thread_and_restores():
    """flush_denormals=True: denormals are flushed on 2 threads as on 1, and
    the caller's mode is back afterwards."""
    X = np.random.default_rng(0).standard_normal((64, 24)).astype("float32")
    W = (3e-39 * np.random.default_rng(1).uniform(0.5, 1, (16, 24))).astype("float32")
    before = fastbp.get_num_threads()
    threshold = _kernels.set_parallel_threshold(0)
    try:
        out = []
        for t in (1, 2):
            fastbp.set_num_threads(t)
            net = fastbp.MLP([24, 16], activation="identity", output="identity",
                             loss="squared_error", bias=False, dtype="float32", weights=[W])
            net.fit(X, np.zeros((64, 16), "float32"), epochs=1, batch_size=64, lr=0.5,
                    shuffle=False)
            out.append(net.weights[0].copy())
            assert not _kernels.flush_denormals_enabled()
        np.testing.assert_array_equal(out[0], out[1])
        assert not out[0].any()    # flushed: the denormal W is read as 0 and written as 0
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(threshold)


# -- workspaces ------------------------------------------------------------------------

def test_gradients_allocates_no_copy_of_x():
    """gradients() on X (8 MiB) allocates far less than X: no gathered-input block."""
    X = np.random.default_rng(0).standard_normal((4096, 512)).astype("float32")
    Y = np.zeros((4096, 2), "float32")
    net = fastbp.MLP([512, 4, 2], output="identity", loss="squared_error")
    net.gradients(X[:8], Y[:8])
    tracemalloc.start()
    try:
        net.gradients(X, Y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 8, peak


def test_predict_and_loss_workspace_small():
    X = np.random.default_rng(0).standard_normal((4096, 512)).astype("float32")
    net = fastbp.MLP([512, 4, 2], output="identity", loss="squared_error")
    tracemalloc.start()
    try:
        net.predict(X)
        net.loss(X, np.zeros((4096, 2), "float32"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 8, peak


def test_fit_workspace_nbytes():
    small = _kernels.Network([2, 2, 1], 1, 0, 0, True)
    for itemsize in (4, 8):
        # tiny products take the GEMM's small path: no packing buffers
        assert small.fit_workspace_nbytes(1, 10, itemsize, 2) == small.workspace_size(1) * itemsize
    big = _kernels.Network([784, 256, 10], 2, 2, 2, True)
    ws = big.workspace_size(128) * 4
    one = big.fit_workspace_nbytes(128, 1000, 4, 1)
    two = big.fit_workspace_nbytes(128, 1000, 4, 2)
    # One thread: ws + one packing buffer, for the largest of the step's
    # products: forward (128 x n_out x n_in), backprop (128 x n_in x n_out),
    # update (n_out x n_in x 128), per layer.
    shapes = [(128, 256, 784), (128, 10, 256), (128, 256, 10), (256, 784, 128), (10, 256, 128)]
    assert one - ws == max(_kernels.gemm_buffer_bytes(4, *s) for s in shapes) > 0
    assert two > one
    assert big.fit_workspace_nbytes(1000, 10, 4, 1) == \
        big.fit_workspace_nbytes(10, 10, 4, 1)     # a batch larger than the data
    with pytest.raises(ValueError):
        big.fit_workspace_nbytes(0, 10, 4, 1)


def test_workspace_size_per_kind():
    net = _kernels.Network([512, 4, 2], 1, 0, 0, True)
    rows = 100
    fit = net.workspace_size(rows)
    assert fit == net.workspace_size(rows, "fit")
    # fit: A_0..A_2, yhat, deltas 1..2, y, lossv, hitv, colsum (4 + 2)
    assert fit == rows * (512 + 4 + 2) + rows * 2 + rows * (4 + 2) + rows * 2 + 2 * rows + 6
    assert net.workspace_size(rows, "predict") == rows * (4 + 2) + rows * 2
    assert net.workspace_size(rows, "loss") == rows * (4 + 2) + rows * 2 + 2 * rows
    assert net.workspace_size(rows, "gradients") == rows * (4 + 2 + 2 + 4 + 2) + 2 * rows
    with pytest.raises(ValueError):
        net.workspace_size(rows, "train")


def test_team_account_times_a_long_first_step():
    """A team's first step is timed when it took 50 ms or more (a call of a few long
    steps then backs off after one team step no faster than a serial one); a short
    first step (which may include the workers' start) is not, and the second is."""
    K = _kernels
    ms = 1_000_000
    assert K.team_account_test([(60 * ms, 0)], ser_ns=55 * ms) == (0, True)
    assert K.team_account_test([(60 * ms, 0)], ser_ns=100 * ms) == (60 * ms, False)
    assert K.team_account_test([(5 * ms, 0)], ser_ns=4 * ms) == (0, False)
    # (short steps: two timed ones in a row no faster than serial)
    assert K.team_account_test([(5 * ms, 0), (5 * ms, 0)], ser_ns=4 * ms) == (5 * ms, False)
    assert K.team_account_test([(5 * ms, 0)] * 3, ser_ns=4 * ms) == (0, True)
    assert K.team_account_test([(30 * ms, 0)], ser_ns=100 * ms) == (0, False)
    # without a serial step's time, no step is judged slow
    assert K.team_account_test([(60 * ms, 0), (60 * ms, 0)]) == (60 * ms, False)
    with pytest.raises(ValueError, match="at most 64"):
        K.team_account_test([(ms, 0)] * 65)


def test_team_account_judges_team_steps_by_the_lower_median_of_recent_serial_steps():
    """A serial step costs the lower median of the last 8 serial steps that
    ended within two windows of FBP_SER_STALE_NS: a serial step slowed by
    something else (a call's first, cold steps; thread 0 sharing its core
    with another process, as the probe of a team that kept running on a
    busy machine does) does not make slower team steps look faster.  The
    rule before (the lesser of two windows' means) kept these 60 ms team
    steps against serial steps of 55 ms and a few slow ones."""
    K = _kernels
    ms = 1_000_000
    long_ = [(60 * ms, 0)]      # judged alone (50 ms or more)
    # one fast step, then (a window later) one slow step: the fast one counts
    assert K.team_account_test(long_, ser_ns=[[55 * ms], [100 * ms]]) == (0, True)
    assert K.team_account_test(long_, ser_ns=[[100 * ms], [55 * ms]]) == (0, True)
    assert K.team_account_test(long_, ser_ns=[[100 * ms, 20 * ms]]) == (0, True)
    # slow steps among fast ones: the median, not the mean (72 and 137 ms)
    cold = [[100 * ms] * 3 + [55 * ms] * 5]
    assert K.team_account_test(long_, ser_ns=cold) == (0, True)
    assert K.team_account_test(long_, ser_ns=[[55 * ms, 55 * ms, 300 * ms]]) == (0, True)
    assert K.team_account_test(long_, ser_ns=[[100 * ms, 100 * ms, 30 * ms]]) == \
        (60 * ms, False)
    # the last 8 steps only
    assert K.team_account_test(long_, ser_ns=[[55 * ms] * 8 + [100 * ms] * 8]) == \
        (60 * ms, False)
    # steps two windows old are forgotten
    assert K.team_account_test(long_, ser_ns=[[55 * ms], [], [100 * ms]]) == (60 * ms, False)
    assert K.team_account_test(long_, ser_ns=[[100 * ms], [100 * ms]]) == (60 * ms, False)
    # what a call learnt carries to the next call of the shape, not to another
    assert K.team_account_test(long_, ser_ns=[[55 * ms], [100 * ms]], then_key=1) == (0, True)
    assert K.team_account_test(long_, ser_ns=[[55 * ms], [100 * ms]], then_key=3) == (0, False)
    with pytest.raises(ValueError, match="positive"):
        K.team_account_test(long_, ser_ns=[[0]])
    with pytest.raises(ValueError, match="at most 16 serial"):
        K.team_account_test(long_, ser_ns=[[ms] * 17])


def test_team_account_back_off_doubles_up_to_four_seconds():
    """A first back-off lasts at most a second (a hiccup on an idle machine costs
    no more); while attempts keep failing it doubles, up to 4 s (a failed attempt
    on a busy machine then costs about 1.5% of the time, not 6%)."""
    K = _kernels
    ms = 1_000_000
    s = 1000 * ms
    slow = (60 * ms, 0)             # long: judged alone
    lengths = [K.team_account_test([slow] * n, ser_ns=55 * ms, backoff=True)[2]
               for n in range(1, 6)]
    assert lengths == [s, 2 * s, 4 * s, 4 * s, 4 * s]
    waited = (60 * ms, 40 * ms)     # waited over half of it: 20 times the wait
    lengths = [K.team_account_test([waited] * n, ser_ns=40 * ms, backoff=True)[2]
               for n in range(1, 5)]
    assert lengths == [800 * ms, 1600 * ms, 3200 * ms, 4 * s]
    # a good (timed) step ends it; once a block (4 timed team steps, 50 ms or
    # more) was faster than serial steps, the next back-off starts afresh
    fast, slower = (30 * ms, 0), (200 * ms, 0)
    assert K.team_account_test([slow, slow] + [fast] * 4, ser_ns=55 * ms, backoff=True) == \
        (30 * ms, False, 2 * s)
    assert K.team_account_test([slow, slow] + [fast] * 5, ser_ns=55 * ms,
                               backoff=True) == (30 * ms, False, 0)
    assert K.team_account_test([slow, slow] + [fast] * 5 + [slower], ser_ns=55 * ms,
                               backoff=True) == (0, True, s)
    # one slow long step after faster ones is not judged alone (a block needs 4
    # steps: a block of the 60 ms step alone would back off)
    assert K.team_account_test([fast] * 3 + [(60 * ms, 0)], ser_ns=55 * ms)[1] is False


def test_team_account_does_not_time_the_step_after_a_back_off():
    """The first team step after a back-off (its workers, asleep while thread 0
    ran serially, wake during it) is not timed: one slow back-off does not
    follow another because of it, and the back-off's doubling is kept until a
    timed step judges the attempt."""
    K = _kernels
    ms = 1_000_000
    slow, fast = (5 * ms, 0), (2 * ms, 0)
    before = K.team_stats()["backoffs"]
    # step 1: the team's first (untimed); 2, 3: slow -> back-off; 4: untimed;
    # 5: fast -> the back-off ends
    assert K.team_account_test([slow, slow], ser_ns=4 * ms) == (5 * ms, False)
    assert K.team_account_test([slow, slow, slow], ser_ns=4 * ms) == (0, True)
    assert K.team_stats()["backoffs"] - before == 1
    assert K.team_account_test([slow] * 4 + [fast], ser_ns=4 * ms) == (2 * ms, False)
    before = K.team_stats()["backoffs"]
    # after the back-off, one more slow timed step backs off again at once
    assert K.team_account_test([slow] * 5, ser_ns=4 * ms) == (0, True)
    assert K.team_stats()["backoffs"] - before == 2
    # one slow step between fast ones does not back off
    assert K.team_account_test([slow, slow, fast, slow, fast], ser_ns=4 * ms)[1] is False


def test_team_account_backs_off_when_a_block_of_team_steps_is_no_faster():
    """Team steps are also judged in blocks of 50 ms or more (and 4 or more)
    of timed steps, stalls included, which must be 10% faster than serial
    steps on average: on a busy core, 784-256-128-10 b128 team steps ran fast
    while the worker had its core and stalled when not, slower than serial
    steps on average with no two slow steps in a row, and the rule of two
    slow steps in a row kept them for whole epochs.  One stall among fast
    steps (a hiccup on an idle machine) is not a reason; and one fast step
    between stalls does not end the back-off's doubling."""
    K = _kernels
    ms = 1_000_000
    fast, stall = (3 * ms, 0), (12 * ms, 0)
    busy = [fast, fast, stall] * 3      # 8 timed steps of 51 ms: 6.4 ms each
    assert K.team_account_test(busy, ser_ns=5 * ms) == (0, True)
    # (before the block: never two slow steps in a row, no back-off)
    assert K.team_account_test(busy[:-1], ser_ns=5 * ms)[1] is False
    # faster on average: kept (the last step closes a block that passes)
    idle = [fast] * 15 + [stall]
    assert K.team_account_test(idle, ser_ns=5 * ms) == (5_250_000, False)
    before = K.team_stats()["slow_backoffs"]
    K.team_account_test(idle + [fast] * 20, ser_ns=5 * ms)
    assert K.team_stats()["slow_backoffs"] == before
    # two slow steps in a row after faster ones, the attempt still faster on
    # average: not a reason either (a noisy host); uniformly slow ones are
    noisy = [(ms, 0)] * 16 + [(4 * ms, 0)] * 5
    assert K.team_account_test(noisy, ser_ns=3 * ms)[1] is False
    assert K.team_account_test([(4 * ms, 0)] * 3, ser_ns=3 * ms) == (0, True)
    # and so when the slow steps open a new block: the block before counts
    assert K.team_account_test([(ms, 0)] * 52 + [(4 * ms, 0)] * 5, ser_ns=3 * ms)[1] is False
    # a block must be 10% faster than serial steps: 5% is not enough
    near = [(1_900_000, 0)] * 28        # the block: 27 timed steps, 51.3 ms
    assert K.team_account_test(near, ser_ns=2 * ms) == (0, True)
    assert K.team_account_test(near[:-1], ser_ns=2 * ms)[1] is False
    assert K.team_account_test([(1_700_000, 0)] * 31, ser_ns=2 * ms) == (1_700_000, False)
    # the next attempt stalls the same way: the back-off doubles
    first = K.team_account_test(busy, ser_ns=5 * ms, backoff=True)[2]
    assert first == 50 * (51 * ms // 8)
    again = busy + [fast] + [fast, stall, fast] * 3
    assert K.team_account_test(again, ser_ns=5 * ms, backoff=True) == (0, True, 2 * first)


def test_team_account_backs_off_after_two_waiting_steps_in_a_row():
    """One team step that waited over half of it (a thread lost its core for
    a moment, as it does on a shared host) switches to fine tiles and does
    not back off; two in a row do (a busy machine), and after such a
    back-off the first attempt that waits again backs off at once."""
    K = _kernels
    ms = 1_000_000
    ok, waited = (5 * ms, 0), (5 * ms, 3 * ms)
    before = K.team_stats()
    assert K.team_account_test([ok, waited], ser_ns=40 * ms) == (5 * ms, False)
    assert K.team_account_test([ok, waited, ok, waited, ok], ser_ns=40 * ms) == (5 * ms, False)
    after = K.team_stats()
    assert after["backoffs"] == before["backoffs"]
    assert after["fines"] - before["fines"] == 3
    assert K.team_account_test([ok, waited, waited], ser_ns=40 * ms) == (0, True)
    before = K.team_stats()["backoffs"]
    assert K.team_account_test([ok, waited, waited, waited], ser_ns=40 * ms) == (0, True)
    assert K.team_stats()["backoffs"] - before == 2


def test_slow_back_off_is_not_carried_to_another_shape():
    """A back-off because team steps of one shape were no faster than serial
    ones is that shape's: the next call's team, of another shape, starts on
    the team; one because threads waited (a busy machine) carries over."""
    K = _kernels
    ms = 1_000_000
    slow = [(5 * ms, 0)] * 3                # no faster than 4 ms serial, twice timed
    waited = [(5 * ms, 0), (5 * ms, 3 * ms), (5 * ms, 3 * ms)]  # waited over half, twice
    assert K.team_account_test(slow, ser_ns=4 * ms) == (0, True)
    assert K.team_account_test(slow, ser_ns=4 * ms, then_key=1) == (0, True)
    assert K.team_account_test(slow, ser_ns=4 * ms, then_key=3) == (0, False)
    assert K.team_account_test(waited, ser_ns=40 * ms, then_key=3) == (0, True)
    assert K.team_account_test(waited, ser_ns=40 * ms, then_key=1) == (0, True)
