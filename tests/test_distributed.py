"""The public flat views of MLP, and fastbp.distributed over MPI.

The MPI tests launch ``mpiexec -n 2`` / ``-n 3`` (oversubscribed on a 2-core
machine, 1 kernel thread per rank) on small networks in subprocesses, each in
a second or two; they skip when mpi4py or mpiexec is absent.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastbp
from fastbp import distributed as fd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))


def _data(n=120, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(np.float32)
    y = rng.integers(0, n_out, n)
    return X, y


# ---------------------------------------------------------------------------
# flat views
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_flat_parameters_layout_and_storage(bias):
    net = fastbp.MLP([4, 6, 5, 3], bias=bias, seed=1)
    flat = net.flat_parameters
    assert flat.shape == (net.n_params,) and flat.dtype == net.dtype
    pieces = []
    for W, b in zip(net.weights, net.biases):
        pieces.append(W.ravel())
        if bias:
            pieces.append(b)
    np.testing.assert_array_equal(flat, np.concatenate(pieces))
    # It is the model's storage: a write changes the model.
    before = net.predict(np.ones((1, 4)))
    flat[0] += 1.0
    assert net.weights[0][0, 0] == flat[0]
    assert not np.array_equal(net.predict(np.ones((1, 4))), before)
    for (W, b), (Wv, bv) in zip(zip(net.weights, net.biases), net.unflatten(flat)):
        assert np.shares_memory(W, Wv) and np.array_equal(W, Wv)
        assert (bv is None) == (not bias)


def test_flat_parameters_setter_copies_and_checks():
    net = fastbp.MLP([3, 4, 2], seed=0)
    storage = net.flat_parameters
    new = np.arange(net.n_params, dtype=np.float64) / 100
    net.flat_parameters = new
    assert net.flat_parameters is storage  # copied in, not rebound
    np.testing.assert_array_equal(storage, new.astype(np.float32))
    kept = storage.copy()
    with pytest.raises(ValueError, match="shape"):
        net.flat_parameters = new[:-1]
    bad = new.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.flat_parameters = bad
    np.testing.assert_array_equal(net.flat_parameters, kept)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flat_gradient_mean_is_gradients_flattened(dtype):
    X, y = _data(37)
    net = fastbp.MLP([5, 8, 3], dtype=dtype, seed=2)
    loss, g = net.flat_gradient(X, y)
    loss2, grads = net.gradients(X, y)
    assert loss == loss2
    for (dW, db), (gW, gb) in zip(grads, net.unflatten(g)):
        np.testing.assert_array_equal(dW, gW)
        np.testing.assert_array_equal(db, gb)


def test_flat_gradient_sum_is_the_gradient_of_the_summed_loss():
    X, y = _data(37)
    net = fastbp.MLP([5, 8, 3], dtype="float64", seed=2)
    loss_m, g_m = net.flat_gradient(X, y)
    loss_s, g_s = net.flat_gradient(X, y, reduction="sum")
    assert loss_s == pytest.approx(37 * loss_m, rel=1e-14)
    # Against the sum of per-sample gradients, each formed on its own.
    total = sum(net.flat_gradient(X[i:i + 1], y[i:i + 1])[1] for i in range(37))
    np.testing.assert_allclose(g_s, total, rtol=1e-12, atol=1e-14)
    # A power-of-two batch: exactly 2**k times the mean's gradient.
    _, g32 = net.flat_gradient(X[:32], y[:32], reduction="sum")
    np.testing.assert_array_equal(g32, 32 * net.flat_gradient(X[:32], y[:32])[1])


def test_flat_gradient_out_and_bad_arguments():
    X, y = _data(10)
    net = fastbp.MLP([5, 4, 3], seed=0)
    theta = net.flat_parameters.copy()
    out = np.empty(net.n_params, dtype=np.float32)
    loss, g = net.flat_gradient(X, y, out=out)
    assert g is out
    np.testing.assert_array_equal(out, net.flat_gradient(X, y)[1])
    with pytest.raises(ValueError, match="reduction"):
        net.flat_gradient(X, y, reduction="max")
    with pytest.raises(ValueError, match="dtype"):
        net.flat_gradient(X, y, out=np.empty(net.n_params))
    with pytest.raises(ValueError, match="shape"):
        net.flat_gradient(X, y, out=np.empty(net.n_params + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        net.flat_gradient(X, y, out=np.empty(2 * net.n_params, dtype=np.float32)[::2])
    ro = np.empty(net.n_params, dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        net.flat_gradient(X, y, out=ro)
    with pytest.raises(ValueError, match="overlap"):
        net.flat_gradient(X, y, out=net.flat_parameters)
    with pytest.raises(TypeError):
        net.flat_gradient(X, y, out=[0.0] * net.n_params)
    with pytest.raises(ValueError, match="features"):
        net.flat_gradient(X[:, :4], y)
    np.testing.assert_array_equal(net.flat_parameters, theta)


def test_flat_gradient_not_finite_loss_gives_nan():
    net = fastbp.MLP([1, 1], activation="identity", output="identity", loss="squared_error",
                     dtype="float32", weights=[[[3e38]]], biases=[[0.0]])
    loss, g = net.flat_gradient(np.array([[1e3]]), np.array([0.0]))
    assert not np.isfinite(loss) and np.isnan(g).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("sizes, bias", [([5, 8, 3], True), ([5, 33, 20, 7, 3], True),
                                         ([5, 9, 6, 3], False), ([5, 3], True)])
def test_layer_gradients_are_bitwise_flat_gradient(dtype, threads, sizes, bias):
    from fastbp import _kernels

    X, y = _data(70)
    net = fastbp.MLP(sizes, activation="tanh", bias=bias, dtype=dtype, seed=2)
    loss, ref = net.flat_gradient(X, y)
    before = fastbp.get_num_threads()
    old = _kernels.set_parallel_threshold(0)   # every call through threads, when threads > 1
    regions = _kernels.parallel_regions()
    try:
        fastbp.set_num_threads(threads)
        out = np.full(net.n_params, np.nan, dtype=dtype)
        lg = net.layer_gradients(X, y, out=out)
        assert lg.gradient is out and lg.loss == loss and lg.next_layer == net.n_layers - 1
        seen = []
        for k, g_k in lg:
            seen.append(k)
            assert np.shares_memory(g_k, out) and g_k.shape == (lg.slices[k].stop
                                                                 - lg.slices[k].start,)
            # Layer k is complete as soon as it is yielded; the layers below not yet.
            np.testing.assert_array_equal(g_k, ref[lg.slices[k]])
            assert np.isnan(out[:lg.slices[k].start]).all()
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(old)
    assert seen == list(range(net.n_layers - 1, -1, -1))
    np.testing.assert_array_equal(out, ref)
    if threads > 1 and _kernels.openmp_enabled() and not _kernels.serial_after_fork():
        assert _kernels.parallel_regions() > regions   # the threaded path ran
    assert [lg.slices[k] for k in range(net.n_layers)] == fd._layer_slices(net)
    with pytest.raises(ValueError, match="formed already"):
        lg.form()


@pytest.mark.parametrize("activation, output, loss", [
    ("relu", "identity", "squared_error"), ("sigmoid", "sigmoid", "binary_cross_entropy"),
    ("tanh", "exp", "poisson")])
def test_layer_gradients_of_every_output_and_loss(activation, output, loss):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 5))
    Y = rng.random(size=(40, 3)) if loss != "binary_cross_entropy" else \
        (rng.random(size=(40, 3)) > 0.5).astype(float)
    net = fastbp.MLP([5, 7, 6, 3], activation=activation, output=output, loss=loss,
                     dtype="float64", seed=4)
    lg = net.layer_gradients(X, Y)
    for _ in lg:
        pass
    loss_ref, ref = net.flat_gradient(X, Y)
    assert lg.loss == loss_ref
    np.testing.assert_array_equal(lg.gradient, ref)


def test_layer_gradients_bad_arguments_and_non_finite_loss():
    X, y = _data(10)
    net = fastbp.MLP([5, 4, 3], seed=0)
    theta = net.flat_parameters.copy()
    with pytest.raises(ValueError, match="dtype"):
        net.layer_gradients(X, y, out=np.empty(net.n_params))
    with pytest.raises(ValueError, match="overlap"):
        net.layer_gradients(X, y, out=net.flat_parameters)
    with pytest.raises(ValueError, match="features"):
        net.layer_gradients(X[:, :4], y)
    np.testing.assert_array_equal(net.flat_parameters, theta)
    big = fastbp.MLP([1, 1], activation="identity", output="identity", loss="squared_error",
                     dtype="float32", weights=[[[3e38]]], biases=[[0.0]])
    lg = big.layer_gradients(np.array([[1e3]]), np.array([0.0]))
    assert not np.isfinite(lg.loss)
    assert [k for k, _ in lg] == [0] and np.isnan(lg.gradient).all()


def test_unflatten_views_any_vector():
    net = fastbp.MLP([3, 4, 2], seed=0)
    v = np.zeros(net.n_params, dtype=np.float64)
    layers = net.unflatten(v)
    assert [W.shape for W, _ in layers] == [(4, 3), (2, 4)]
    assert [b.shape for _, b in layers] == [(4,), (2,)]
    layers[1][0][1, 2] = 7.0
    assert v[net.n_params - 2 - 8 + 1 * 4 + 2] == 7.0  # W_1 sits before b_1 (2 entries)
    with pytest.raises(ValueError, match="shape"):
        net.unflatten(v[:-1])
    with pytest.raises(TypeError):
        net.unflatten(list(v))


def test_combine_gradients_is_a_rank_order_float64_sum():
    rng = np.random.default_rng(0)
    g = [rng.normal(size=50).astype(np.float32) for _ in range(3)]
    rows = [5, 0, 6]
    expected = np.zeros(50)
    for gi, m in zip(g, rows):
        if m:
            expected = expected + gi.astype(np.float64) * (m / 11)
    np.testing.assert_array_equal(fd.combine_gradients(g, rows), expected.astype(np.float32))
    np.testing.assert_array_equal(fd.combine_gradients(g[:1], [4]), g[0])


@pytest.mark.parametrize("options, message", [
    (dict(validation_data=(np.zeros((4, 5)), [0, 1, 2, 0]), validation_split=0.2), "not both"),
    (dict(validation_data=np.zeros((4, 5))), "must be a pair"),
    (dict(validation_split="0.2"), "must be a number"),
    (dict(validation_split=1.0), r"must be in \[0, 1\)"),
    (dict(validation_split=0.001), "leaves an empty training or validation set"),
])
def test_validation_options_are_checked_as_mlp_fit_checks_them(options, message):
    X, y = _data(50)
    net = fastbp.MLP([5, 4, 3], seed=0)
    args = dict(validation_data=None, validation_split=0.0, n_samples=None, epochs=1,
                batch_size=8, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                patience=3, early_stopping=False, shuffle=True, optimizer=None,
                optimizer_state=None, callbacks=None)
    with pytest.raises(ValueError, match=message):
        fd._check_local(net, X, y, **dict(args, **options))
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, epochs=1, **options)


def test_validation_split_holds_out_the_last_rows_and_needs_the_whole_set():
    X, y = _data(50)
    net = fastbp.MLP([5, 4, 3], seed=0)
    args = dict(validation_data=None, validation_split=0.2, n_samples=None, epochs=1,
                batch_size=8, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                patience=3, early_stopping=False, shuffle=True, optimizer=None,
                optimizer_state=None, callbacks=None)
    local = fd._check_local(net, X, y, **args)
    assert local["X"].shape[0] == 40 and local["val"][0].shape[0] == 10
    np.testing.assert_array_equal(local["val"][0], X[40:])
    with pytest.raises(ValueError, match="needs the whole data set on every rank"):
        fd._check_local(net, X, y, **dict(args, n_samples=100))


def test_missing_mpi4py_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"fastbp\[mpi\]"):
        fd.fit(fastbp.MLP([2, 2]), np.zeros((4, 2)), np.zeros(4, dtype=int))


# ---------------------------------------------------------------------------
# MPI: launched in subprocesses
# ---------------------------------------------------------------------------


def _mpiexec():
    for name in ("mpiexec", "mpirun"):
        here = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.exists(here):
            return here
        found = shutil.which(name)
        if found:
            return found
    return None


WORKER = textwrap.dedent(
    """
    import json, sys, numpy as np
    import fastbp, fastbp.distributed as fd
    from mpi4py import MPI

    cfg = json.loads(sys.argv[1])
    comm = MPI.COMM_WORLD
    rank, K = comm.Get_rank(), comm.Get_size()
    fastbp.set_num_threads(cfg.get("threads", 1))
    if cfg.get("allreduce"):
        g = np.random.default_rng(rank).normal(size=1001).astype(np.float32)
        out = np.empty_like(g)
        fd.FixedOrderAllreduce(comm, 1001, np.float32)(g, [3 + r for r in range(K)], out)
        outs = comm.gather(out)
        if rank == 0:
            np.savez(cfg["out"], outs=np.array(outs))
        sys.exit(0)
    rng = np.random.default_rng(0)
    n, n_in = cfg.get("n", 150), cfg.get("n_in", 5)
    X = rng.normal(size=(n, n_in)).astype(np.float32)
    y = rng.integers(0, 3, n)
    Xv, yv = X[:40] + 0.5, y[:40]
    if rank == 1 and cfg.get("nan_row"):
        X = X.copy()
        X[cfg["nan_row"], 2] = np.nan
    if rank == 1 and cfg.get("bad_width"):
        X = X[:, :-1]
        n_in -= 1
    net = fastbp.MLP([n_in, *cfg.get("hidden", [16]), 3], seed=1 + rank)   # rank 0's win
    kw = dict(cfg["fit"])
    if rank == 1 and "rank1_batch" in cfg:
        kw["batch_size"] = cfg["rank1_batch"]
    if rank == 1:
        kw.update(cfg.get("rank1_fit", {}))
    if cfg.get("validation"):
        kw["validation_data"] = (Xv, yv)
    if cfg.get("sharded"):
        # Each rank memory-maps only its own rows (uneven blocks).
        cuts = [0, 37, 90, n] if K == 3 else [0, 61, n]
        lo, hi = cuts[rank], cuts[rank + 1]
        path = f"{cfg['out']}.rank{rank}.npy"
        np.save(path, X[lo:hi])
        X, y = np.load(path, mmap_mode="r"), y[lo:hi]
        kw["n_samples"] = n
        if cfg.get("validation"):
            vcuts = [0, 13, 40] if K == 2 else [0, 10, 25, 40]
            a, b = vcuts[rank], vcuts[rank + 1]
            kw["validation_data"] = (Xv[a:b], yv[a:b])
    if rank == 1 and cfg.get("fail_at"):
        calls = [0]
        def failing(real):
            def call(*a, **k):
                calls[0] += 1
                if calls[0] == cfg["fail_at"]:
                    raise RuntimeError("boom in the gradient")
                return real(*a, **k)
            return call
        net.flat_gradient = failing(net.flat_gradient)
        net.layer_gradients = failing(net.layer_gradients)
    if "optimizer" in cfg:
        from fastbp import optim
        kw["optimizer"] = optim.Optimizer.from_config(cfg["optimizer"])
    try:
        hist = fd.fit(net, X, y, **kw)
    except (ValueError, FloatingPointError) as exc:
        finite = bool(np.isfinite(net.flat_parameters).all())
        sys.stdout.write(f"CAUGHT rank {rank}: {exc} finite={finite}\\n")
        sys.stdout.flush()
        sys.exit(0)
    thetas = comm.gather(net.flat_parameters.copy())
    vel = comm.gather(net.optimizer_state().get("velocity"))
    if hist.optimizer_state is not None:
        vel = comm.gather(np.concatenate([hist.optimizer_state[k] for k in sorted(
            hist.optimizer_state) if k != "step"] + [[hist.optimizer_state["step"]]]))
    if rank == 0:
        np.savez(cfg["out"], thetas=np.array(thetas), loss=np.array(hist.loss),
                 val_loss=np.array(hist.val_loss),
                 requests=np.array([hist.comm_detail["requests"]]),
                 velocity=np.array(vel) if vel[0] is not None else np.zeros(0))
    """
)


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    pytest.importorskip("mpi4py")
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec/mpirun on PATH")
    folder = tmp_path_factory.mktemp("mpi")
    script = folder / "worker.py"
    script.write_text(WORKER)
    flags = []
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        flags = ["--oversubscribe"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    counter = [0]

    def run(K, cfg, expect_ok=True, timeout=60):
        counter[0] += 1
        out = str(folder / f"run{counter[0]}.npz")
        cfg = dict(cfg, out=out)
        t0 = time.perf_counter()
        proc = subprocess.run([exe, *flags, "-n", str(K), sys.executable, str(script),
                               json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        proc.seconds = time.perf_counter() - t0
        if expect_ok:
            assert proc.returncode == 0, proc.stderr[-3000:]
            if os.path.exists(out):
                with np.load(out) as z:
                    proc.result = {k: z[k] for k in z.files}
        return proc

    return run


def _replay(K, fit):
    """One process replaying a K-rank run: the same shards, the same reduction."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1)
    theta = net.flat_parameters
    v = np.zeros_like(theta)
    f32 = np.float32
    mu, wd = fit.get("momentum", 0.0), fit.get("weight_decay", 0.0)
    nest = fit.get("nesterov", False)
    order_rng = np.random.default_rng(fit["seed"])
    B = fit["batch_size"]
    for _ in range(fit["epochs"]):
        order = order_rng.permutation(150)
        for b in range(-(-150 // B)):
            rows = order[b * B:(b + 1) * B]
            m = len(rows)
            cut = [m * r // K for r in range(K + 1)]
            grads, counts = [], []
            for r in range(K):
                idx = rows[cut[r]:cut[r + 1]]
                grads.append(net.flat_gradient(X[idx], y[idx])[1] if len(idx)
                             else np.zeros_like(theta))
                counts.append(len(idx))
            g = fd.combine_gradients(grads, counts)
            if wd:
                g = g + f32(wd) * theta
            if mu:
                v *= f32(mu)
                v += g
                g = g + f32(mu) * v if nest else v
            theta -= f32(fit["lr"]) * g
    return net, X, y


FIT = dict(epochs=2, batch_size=16, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
           seed=3)


@pytest.mark.parametrize("K", [2, 3])
def test_ranks_bitwise_equal_repeatable_and_equal_to_the_replay(mpi_run, K):
    a = mpi_run(K, dict(fit=FIT)).result
    b = mpi_run(K, dict(fit=FIT)).result
    thetas = a["thetas"]
    assert thetas.shape[0] == K
    for t in thetas[1:]:
        np.testing.assert_array_equal(t, thetas[0])
    for v in a["velocity"][1:]:
        np.testing.assert_array_equal(v, a["velocity"][0])
    np.testing.assert_array_equal(a["thetas"], b["thetas"])
    np.testing.assert_array_equal(a["loss"], b["loss"])
    net, _, _ = _replay(K, FIT)
    np.testing.assert_array_equal(net.flat_parameters, thetas[0])


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("fit", [
    dict(epochs=1, batch_size=16, lr=0.1, seed=3),                     # plain SGD
    dict(epochs=1, batch_size=32, lr=0.05, momentum=0.9, seed=4),      # momentum
])
def test_within_rounding_of_single_process_fit(mpi_run, K, fit):
    res = mpi_run(K, dict(fit=fit, validation=True)).result
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1)
    hist = net.fit(X, y, **fit, validation_data=(X[:40] + 0.5, y[:40]))
    ref = net.flat_parameters
    theta = res["thetas"][0]
    rel = np.linalg.norm(theta.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64))
    assert rel <= 1e-6, rel
    np.testing.assert_allclose(res["loss"], hist.loss, rtol=1e-6)
    np.testing.assert_allclose(res["val_loss"], hist.val_loss, rtol=1e-6)


@pytest.mark.parametrize("K", [2, 3])
def test_each_rank_holding_its_own_rows_equals_the_whole_set_on_every_rank(mpi_run, K):
    whole = mpi_run(K, dict(fit=FIT, validation=True)).result
    own = mpi_run(K, dict(fit=FIT, validation=True, sharded=True)).result
    np.testing.assert_array_equal(own["thetas"], whole["thetas"])
    np.testing.assert_array_equal(own["loss"], whole["loss"])
    np.testing.assert_allclose(own["val_loss"], whole["val_loss"], rtol=1e-12)


def test_resume_from_a_checkpoint_gives_the_same_bits(mpi_run, tmp_path):
    ckpt = str(tmp_path / "ckpt.npz")
    opts = dict(FIT, early_stopping=True, patience=5)
    straight = mpi_run(2, dict(fit=dict(opts, epochs=4), validation=True)).result
    mpi_run(2, dict(fit=dict(opts, epochs=2, checkpoint=ckpt), validation=True))
    assert os.path.exists(ckpt)
    resumed = mpi_run(2, dict(fit=dict(opts, epochs=4, resume=ckpt), validation=True)).result
    np.testing.assert_array_equal(resumed["thetas"], straight["thetas"])
    np.testing.assert_array_equal(resumed["velocity"], straight["velocity"])
    np.testing.assert_array_equal(resumed["loss"], straight["loss"])
    # Resuming on 3 ranks also works (the bits then follow K = 3 from epoch 3 on).
    three = mpi_run(3, dict(fit=dict(opts, epochs=4, resume=ckpt), validation=True)).result
    assert len(three["loss"]) == 4
    np.testing.assert_array_equal(three["loss"][:2], straight["loss"][:2])


def test_an_exception_on_rank_1_aborts_the_job_naming_rank_1(mpi_run):
    proc = mpi_run(2, dict(fit=dict(FIT, epochs=50), fail_at=3), expect_ok=False, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "rank 1 of 2 failed: RuntimeError: boom in the gradient" in proc.stderr, proc.stderr
    assert proc.seconds < 30, proc.seconds


@pytest.mark.parametrize("cfg, pattern", [
    (dict(rank1_batch=8), r"batch_size differs across ranks \(rank 0: 16, rank 1: 8\)"),
    (dict(rank1_fit=dict(overlap=False)), r"overlap differs across ranks \(rank 0: True, "
                                          r"rank 1: False\)"),
    (dict(bad_width=True), r"layer_sizes differs across ranks \(rank 0: \[5, 16, 3\], "
                           r"rank 1: \[4, 16, 3\]\)"),
])
def test_mismatched_options_or_shapes_are_reported_on_every_rank(mpi_run, cfg, pattern):
    import re

    proc = mpi_run(2, dict(cfg, fit=FIT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert sorted(ln.split(":")[0] for ln in lines) == ["CAUGHT rank 0", "CAUGHT rank 1"]
    for ln in lines:
        assert re.search(pattern, ln), ln


@pytest.mark.parametrize("cfg, message", [
    (dict(nan_row=7), "bad input on rank 1: ValueError: X contains NaN or Inf (first in row 7)"),
    (dict(fit=dict(FIT, n_samples=149)), "n_samples=149 but the ranks hold 150 + 150 = 300 rows"),
    (dict(fit=dict(FIT, resume="/nonexistent/ckpt.npz")), "cannot resume from '/nonexistent"),
])
def test_bad_data_on_one_rank_is_reported_on_every_rank(mpi_run, cfg, message):
    proc = mpi_run(2, dict(dict(fit=FIT), **cfg))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert all(message in ln for ln in lines), lines


def test_slab_mode_is_bitwise_the_same_for_every_K(mpi_run):
    fit = dict(FIT, epochs=1, batch_size=40, slab_rows=8)
    runs = [mpi_run(K, dict(fit=fit, validation=True)).result for K in (1, 2, 3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r["thetas"][0], runs[0]["thetas"][0])
        for t in r["thetas"]:
            np.testing.assert_array_equal(t, r["thetas"][0])
        np.testing.assert_array_equal(r["velocity"][0], runs[0]["velocity"][0])
    # The sharded layout gives the same bits too.
    own = mpi_run(3, dict(fit=fit, validation=True, sharded=True)).result
    np.testing.assert_array_equal(own["thetas"][0], runs[0]["thetas"][0])
    # And it is still within rounding of MLP.fit.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1)
    net.fit(X, y, **{k: v for k, v in fit.items() if k != "slab_rows"})
    ref = net.flat_parameters.astype(np.float64)
    assert np.linalg.norm(runs[0]["thetas"][0] - ref) / np.linalg.norm(ref) <= 1e-6


@pytest.mark.parametrize("K", [2, 3])
def test_fixed_order_allreduce_equals_combine_gradients_on_every_rank(mpi_run, K):
    outs = mpi_run(K, dict(allreduce=True, fit={})).result["outs"]
    grads = [np.random.default_rng(r).normal(size=1001).astype(np.float32) for r in range(K)]
    expected = fd.combine_gradients(grads, [3 + r for r in range(K)])
    for out in outs:
        np.testing.assert_array_equal(out, expected)


TORCH_WORKER = textwrap.dedent(
    """
    import json, os, sys, numpy as np
    import torch.distributed as dist
    import fastbp, fastbp.distributed as fd

    cfg = json.loads(sys.argv[1])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + cfg["port"],
                            rank=int(sys.argv[2]), world_size=2)
    fastbp.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1 + dist.get_rank())
    fd.fit(net, X, y, comm=fd.TorchComm(), **cfg["fit"])
    np.save(cfg["out"] + str(dist.get_rank()) + ".npy", net.flat_parameters)
    dist.destroy_process_group()
    """
)


def test_torch_distributed_gloo_gives_the_same_bits_as_mpi(tmp_path):
    pytest.importorskip("torch")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = tmp_path / "torch_worker.py"
    script.write_text(TORCH_WORKER)
    out = str(tmp_path / "theta")
    cfg = json.dumps(dict(fit=FIT, port=port, out=out))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), cfg, str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    t0, t1 = np.load(out + "0.npy"), np.load(out + "1.npy")
    np.testing.assert_array_equal(t0, t1)
    net, _, _ = _replay(2, FIT)
    np.testing.assert_array_equal(t0, net.flat_parameters)


def test_divergence_stops_every_rank_alike_at_the_last_good_step(mpi_run):
    proc = mpi_run(2, dict(fit=dict(FIT, lr=1e30)))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert len(lines) == 2, proc.stdout + proc.stderr
    for ln in lines:
        assert "training diverged at epoch 1, batch" in ln and "finite=True" in ln, ln


def test_one_rank_with_momentum_is_bitwise_mlp_fit(mpi_run):
    res = mpi_run(1, dict(fit=FIT)).result
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1)
    hist = net.fit(X, y, **FIT)
    np.testing.assert_array_equal(res["thetas"][0], net.flat_parameters)
    np.testing.assert_array_equal(res["velocity"][0], net.optimizer_state()["velocity"])
    np.testing.assert_allclose(res["loss"], hist.loss, rtol=1e-12)


ADAM = {"name": "adam", "lr": 0.001, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.01,
        "amsgrad": True}


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("config", [ADAM, {"name": "sgd", "momentum": 0.9, "nesterov": True,
                                           "weight_decay": 1e-3},
                                    {"name": "rmsprop", "momentum": 0.5, "centered": True}])
def test_optimizer_objects_give_the_replay_of_one_whole_vector_update(mpi_run, K, config):
    from fastbp import optim

    fit = dict(epochs=2, batch_size=16, lr=0.01, seed=3)
    res = mpi_run(K, dict(fit=fit, optimizer=config)).result
    for t in res["thetas"][1:]:
        np.testing.assert_array_equal(t, res["thetas"][0])
    for v in res["velocity"][1:]:
        np.testing.assert_array_equal(v, res["velocity"][0])
    # The replay: the same shards and combine_gradients, then opt.update on the whole vector.
    opt = optim.Optimizer.from_config(config)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    net = fastbp.MLP([5, 16, 3], seed=1)
    theta = net.flat_parameters
    state = opt.init_state(net.n_params, np.float32)
    order_rng = np.random.default_rng(3)
    for _ in range(2):
        order = order_rng.permutation(150)
        for b in range(-(-150 // 16)):
            rows = order[b * 16:(b + 1) * 16]
            cut = [len(rows) * r // K for r in range(K + 1)]
            grads = [net.flat_gradient(X[rows[cut[r]:cut[r + 1]]], y[rows[cut[r]:cut[r + 1]]])[1]
                     for r in range(K)]
            opt.update(theta, fd.combine_gradients(grads, np.diff(cut)), state, lr=0.01)
    np.testing.assert_array_equal(res["thetas"][0], theta)
    flat = np.concatenate([state[k] for k in sorted(state) if k != "step"] + [[state["step"]]])
    np.testing.assert_array_equal(res["velocity"][0], flat)


def test_resume_with_an_optimizer_object(mpi_run, tmp_path):
    ckpt = str(tmp_path / "adam.npz")
    straight = mpi_run(3, dict(fit=dict(FIT_ADAM, epochs=3), optimizer=ADAM)).result
    mpi_run(3, dict(fit=dict(FIT_ADAM, epochs=1, checkpoint=ckpt), optimizer=ADAM))
    resumed = mpi_run(3, dict(fit=dict(FIT_ADAM, epochs=3, resume=ckpt), optimizer=ADAM)).result
    np.testing.assert_array_equal(resumed["thetas"], straight["thetas"])
    np.testing.assert_array_equal(resumed["velocity"], straight["velocity"])
    # A checkpoint of another optimizer is refused on every rank.
    proc = mpi_run(2, dict(fit=dict(FIT_ADAM, epochs=3, resume=ckpt),
                           optimizer=dict(ADAM, name="adamw")))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert len(lines) == 2 and all("written with optimizer" in ln for ln in lines), proc.stdout


FIT_ADAM = dict(batch_size=16, lr=0.01, seed=5)


def test_optimizer_and_momentum_together_are_refused(mpi_run):
    proc = mpi_run(2, dict(fit=dict(FIT_ADAM, momentum=0.9), optimizer=ADAM))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert len(lines) == 2 and all("not both" in ln for ln in lines), proc.stdout


def test_more_ranks_times_threads_than_cores_is_warned_about(mpi_run):
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("needs 2 cores for a run that fits")
    quiet = mpi_run(2, dict(fit=dict(FIT, epochs=1), threads=1))
    assert "kernel threads each" not in quiet.stderr
    loud = mpi_run(2, dict(fit=dict(FIT, epochs=1), threads=cores))
    assert f"2 ranks on this node x {cores} kernel threads each > {cores} cores" in loud.stderr


# ---------------------------------------------------------------------------
# overlap: the reduction started layer by layer, the same bits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("K, config", [
    (2, None), (3, None), (2, ADAM), (3, {"name": "rmsprop", "momentum": 0.5, "centered": True}),
    (3, {"name": "adamw", "lr": 0.001, "weight_decay": 0.1}),
])
def test_overlap_gives_the_same_bits_as_without(mpi_run, tmp_path, K, config):
    # 3 layers: with K = 3 the chunk boundaries fall inside layers, and the
    # last layer (51 entries) lies inside one chunk.
    fit = dict(FIT if config is None else FIT_ADAM, epochs=3, early_stopping=True, patience=5)
    base = dict(validation=True, hidden=[16, 12])
    if config is not None:
        base["optimizer"] = config
    runs = {}
    for overlap in (False, True):   # with overlap, every layer on its own (bucket_bytes=0)
        ckpt = str(tmp_path / f"ckpt-{overlap}.npz")
        runs[overlap] = mpi_run(K, dict(base, fit=dict(fit, overlap=overlap, checkpoint=ckpt,
                                                       bucket_bytes=0)))
    off, on = runs[False].result, runs[True].result
    for key in ("thetas", "velocity", "loss", "val_loss"):
        np.testing.assert_array_equal(on[key], off[key], err_msg=key)
    for t in on["thetas"][1:]:
        np.testing.assert_array_equal(t, on["thetas"][0])
    with np.load(str(tmp_path / "ckpt-False.npz")) as a, \
            np.load(str(tmp_path / "ckpt-True.npz")) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            if key != "meta":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The layer-wise path ran: one non-blocking request per layer per step.
    steps = 3 * -(-150 // fit["batch_size"])
    assert int(off["requests"][0]) == 0
    assert int(on["requests"][0]) == 3 * steps


def test_overlap_resumes_a_run_checkpointed_without_it(mpi_run, tmp_path):
    ckpt = str(tmp_path / "ckpt.npz")
    straight = mpi_run(2, dict(fit=dict(FIT, epochs=3, overlap=False), validation=True)).result
    mpi_run(2, dict(fit=dict(FIT, epochs=1, checkpoint=ckpt, overlap=False), validation=True))
    resumed = mpi_run(2, dict(fit=dict(FIT, epochs=3, resume=ckpt, bucket_bytes=0),
                              validation=True)).result
    np.testing.assert_array_equal(resumed["thetas"], straight["thetas"])
    np.testing.assert_array_equal(resumed["velocity"], straight["velocity"])
    assert int(resumed["requests"][0]) == 2 * 2 * -(-150 // FIT["batch_size"])


def test_buckets_group_the_layers_last_first_until_the_cap():
    net = fastbp.MLP([5, 16, 12, 3], seed=0)       # layers of 96, 204 and 39 entries
    slices = fd._layer_slices(net)
    assert [(sl.start, sl.stop) for sl in slices] == [(0, 96), (96, 300), (300, 339)]
    assert fd._buckets(slices, 4, 0) == [(2, slice(300, 339)), (1, slice(96, 300)),
                                         (0, slice(0, 96))]
    assert fd._buckets(slices, 4, 400) == [(1, slice(96, 339)), (0, slice(0, 96))]
    assert fd._buckets(slices, 4, 1 << 20) == [(0, slice(0, 339))]


@pytest.mark.parametrize("K", [2, 3])
def test_overlap_in_buckets_gives_the_same_bits(mpi_run, K):
    # Buckets of 400 bytes: layers 2 and 1 go out together, then layer 0.
    base = dict(validation=True, hidden=[16, 12])
    off = mpi_run(K, dict(base, fit=dict(FIT, overlap=False))).result
    on = mpi_run(K, dict(base, fit=dict(FIT, bucket_bytes=400))).result
    one = mpi_run(K, dict(base, fit=dict(FIT))).result   # the default: one bucket
    for res in (on, one):
        for key in ("thetas", "velocity", "loss", "val_loss"):
            np.testing.assert_array_equal(res[key], off[key], err_msg=key)
    steps = FIT["epochs"] * -(-150 // FIT["batch_size"])
    assert int(on["requests"][0]) == 2 * steps
    assert int(one["requests"][0]) == 0   # nothing to overlap: the plain step


def test_overlap_is_off_with_slab_rows_and_must_agree_across_ranks(mpi_run):
    fit = dict(FIT, epochs=1, batch_size=40, slab_rows=8, bucket_bytes=0)
    res = mpi_run(2, dict(fit=fit)).result
    assert int(res["requests"][0]) == 0   # the slab tree's one exchange per step
    proc = mpi_run(2, dict(fit=dict(FIT, overlap="yes")))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CAUGHT")]
    assert len(lines) == 2 and all("overlap" in ln for ln in lines), proc.stdout
