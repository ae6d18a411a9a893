"""Tests of the benchmark harness (bench/), including a ``--quick`` smoke run."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: import it from the checkout
    sys.path.insert(0, str(ROOT))

from bench import fma_peak, peers, report, verify, worker  # noqa: E402
from bench.configs import CONFIGS, Config  # noqa: E402
from bench.numpy_mlp import NumpyMLP  # noqa: E402
from bench.run import blas_warning, parse_args  # noqa: E402


def _run(args: list[str], extra_pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # OPENBLAS_* are left as they are, never unset here
    paths = [str(p) for p in (extra_pythonpath, ROOT) if p is not None]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_flops_per_sample() -> None:
    assert CONFIGS["tiny"].flops_per_sample == 6 * (2 * 2 + 2 * 1)
    assert CONFIGS["mnist"].flops_per_sample == 6 * (784 * 256 + 256 * 128 + 128 * 10)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_numpy_mlp_gradients_match_finite_differences(activation: str) -> None:
    rng = np.random.default_rng(1)
    net = NumpyMLP([3, 5, 4, 2], activation=activation, dtype="float64", seed=2)
    for b in net.biases:
        b[:] = rng.standard_normal(b.shape)
    X, Y = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    loss, gws, gbs = net.gradients(X, Y)
    assert loss == pytest.approx(net.loss(X, Y))
    eps = 1e-6
    for params, grads in ((net.weights, gws), (net.biases, gbs)):
        for P, G in zip(params, grads):
            assert G.shape == P.shape
            num = np.zeros_like(P)
            for idx in np.ndindex(P.shape):
                old = P[idx]
                P[idx] = old + eps
                up = net.loss(X, Y)
                P[idx] = old - eps
                down = net.loss(X, Y)
                P[idx] = old
                num[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(G, num, rtol=1e-5, atol=1e-7)


def test_numpy_mlp_epoch_lowers_loss_and_keeps_dtype() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 8)).astype(np.float32)
    Y = (X[:, :2] * 0.5).astype(np.float32)
    net = NumpyMLP([8, 16, 2], activation="relu", dtype="float32", seed=0)
    before = net.loss(X, Y)
    for _ in range(5):
        net.fit_epoch(X, Y, batch_size=16, lr=0.05, order=rng)
    assert net.loss(X, Y) < 0.5 * before
    assert all(W.dtype == np.float32 for W in net.weights + net.biases)


def test_blas_warning_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    value = os.environ.get("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_CORETYPE", value)  # same value if already set
    msg = blas_warning()
    assert msg is not None and "WARNING" in msg and f"OPENBLAS_CORETYPE={value}" in msg
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench" in msg


def test_quick_run_without_optional_peers(tmp_path: Path) -> None:
    """``python -m bench --quick`` passes with torch, sklearn, matplotlib absent."""
    hidden = tmp_path / "hidden"
    for mod in ("torch", "sklearn", "matplotlib"):
        (hidden / mod).mkdir(parents=True)
        (hidden / mod / "__init__.py").write_text(f"raise ModuleNotFoundError('{mod} hidden by test')\n")
    out_json, out_png = tmp_path / "quick.json", tmp_path / "quick.png"
    proc = _run(["-m", "bench", "--quick", "--json", str(out_json), "--png", str(out_png)],
                extra_pythonpath=hidden)
    assert proc.returncode == 0, proc.stderr
    assert "torch skipped" in proc.stdout and "sklearn skipped" in proc.stdout
    assert "matplotlib not installed" in proc.stdout
    assert not out_png.exists()
    doc = json.loads(out_json.read_text())
    status = {(r["spec"].get("peer", "matmul"), r["spec"].get("config")): r["status"]
              for r in doc["results"]}
    assert status[("matmul", None)] == "ok"
    for cfg in ("tiny", "small"):
        assert status[("numpy", cfg)] == "ok"
        assert status[("fastbp", cfg)] == "ok"
        assert status[("torch", cfg)] == "skipped"
        assert status[("sklearn", cfg)] == "skipped"
    assert status[("reference", "tiny")] == "ok"
    assert ("reference", "small") not in status
    for slow in ("jax", "torch_compile", "torch_scan"):  # compile for seconds: not in --quick
        assert (slow, "tiny") not in status
    for r in doc["results"]:
        if r["status"] == "ok" and r["spec"]["kind"] == "peer":
            assert r["samples_per_s"] > 0 and r["peak_rss_mib"] >= 0
            assert r["fastbp_ratio"] > 0
            assert r["verify"]["ok"] and r["verify"]["err"] < verify.TOLERANCE["float32"]
    best = {b["config"]: b for b in doc["best"]}
    assert best["small"]["best_peer"] == "numpy"  # the only other peer left
    assert best["small"]["ratio"] == pytest.approx(
        best["small"]["fastbp"] / best["small"]["peers"]["numpy"])
    assert "fastbp against the best peer" in proc.stdout
    assert doc["fma_peak"] is None  # not in --quick


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "matplotlib")),
    reason="torch, scikit-learn and matplotlib are needed for the all-peers run")
def test_quick_run_all_peers_as_script(tmp_path: Path) -> None:
    """``python bench/run.py --quick`` with every peer, on the tiny config."""
    out_json, out_png = tmp_path / "q.json", tmp_path / "q.png"
    proc = _run(["bench/run.py", "--quick", "--configs", "tiny", "--threads", "2",
                 "--json", str(out_json), "--png", str(out_png)])
    assert proc.returncode == 0, proc.stderr
    assert out_png.stat().st_size > 0
    doc = json.loads(out_json.read_text())
    peers = {r["spec"]["peer"]: r for r in doc["results"] if r["spec"]["kind"] == "peer"}
    assert set(peers) == {"fastbp", "numpy", "torch", "sklearn", "reference"}
    assert all(r["status"] == "ok" for r in peers.values()), peers
    assert peers["torch"]["torch_threads"] == 2
    for r in peers.values():
        assert all(p["num_threads"] == 2 for p in r["threadpools"])


def test_quick_busy_core_case(tmp_path: Path) -> None:
    """``--only-busy``: fastbp on 1 and 2 threads per config while the harness
    keeps one CPU busy with a process it starts (and stops) itself."""
    out_json = tmp_path / "busy.json"
    proc = _run(["-m", "bench", "--quick", "--only-busy", "--configs", "tiny",
                 "--repeats", "2", "--json", str(out_json)])
    assert proc.returncode == 0, proc.stderr
    assert "one core busy" in proc.stdout
    doc = json.loads(out_json.read_text())
    busy = doc["busy"]
    assert doc["results"] == []
    assert [r["spec"]["threads"] for r in busy["results"]] == [1, 2]
    assert all(r["status"] == "ok" and r["spec"]["busy"] for r in busy["results"])
    s = busy["summary"]["tiny"]
    assert s["ratio"] > 0 and len(s["ratio_per_round"]) == 1
    assert s["ratio_median_round"] == s["ratio_per_round"][0]
    row = [ln for ln in report.busy_table(busy).splitlines() if ln.startswith("2-2-1")][0]
    # (one round: the median equals the ratio of the best runs, both shown)
    assert row.count(report._num(s["ratio_median_round"], "x")) == 2, row
    pid = busy["busy_process"]["pid"]
    assert not os.path.exists(f"/proc/{pid}") or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", "busy loop left running"


def test_wide_config() -> None:
    wide = CONFIGS["wide"]
    assert wide.sizes == (1024, 4096, 1024) and wide.batch_size == 4


# -- the shared start, the float64 check --------------------------------

SMALL = Config("t", (5, 7, 3), "relu", 4, 30, 30)  # 30 rows: a last batch of 2


def _data(dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((30, 5)).astype(dtype),
            rng.standard_normal((30, 3)).astype(dtype))


def _numpy_epoch(dtype: str, lr: float, order: np.ndarray) -> verify.Params:
    X, Y = _data(dtype)
    net = NumpyMLP(SMALL.sizes, activation=SMALL.activation, dtype=dtype)
    net.set_params(peers.init_params(SMALL.sizes, dtype, 0))
    net.fit_epoch(X, Y, SMALL.batch_size, lr, order)
    return list(zip(net.weights, net.biases))


def test_shuffle_is_fastbps_own_order() -> None:
    sh = peers.Shuffle(5, 30)
    np.testing.assert_array_equal(sh(2), np.random.default_rng(7).permutation(30))
    X, Y = _data()
    init = peers.init_params(SMALL.sizes, "float32", 0)
    assert all(np.any(b != 0) for _, b in init)  # biases too
    trainer = peers.PEERS["fastbp"].build(SMALL, X, Y, 0.01, init, sh)
    trainer.epoch(2)
    net = NumpyMLP(SMALL.sizes, activation=SMALL.activation, dtype="float32")
    net.set_params(init)
    net.fit_epoch(X, Y, SMALL.batch_size, 0.01, sh(2))
    for (W, b), W2, b2 in zip(trainer.params(), net.weights, net.biases):
        np.testing.assert_allclose(W, W2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_accepts_rounding_and_refuses_mistakes(dtype: str) -> None:
    X, Y = _data(dtype)
    init = peers.init_params(SMALL.sizes, dtype, 0)
    order = peers.Shuffle(0, 30)(0)
    lr = 0.05
    good = verify.check(_numpy_epoch(dtype, lr, order), SMALL, X, Y, lr, init, order)
    assert good["ok"] and good["err"] < verify.TOLERANCE[dtype] / 10, good
    for bad in (_numpy_epoch(dtype, lr * 1.01, order),          # lr 1% off
                _numpy_epoch(dtype, lr, peers.Shuffle(0, 30)(1)),  # another order
                [(W, b0) for (W, _), (_, b0) in zip(_numpy_epoch(dtype, lr, order), init)]):
        res = verify.check(bad, SMALL, X, Y, lr, init, order)
        assert not res["ok"] and "differ from the float64" in res["reason"], res
    nan = [(W * np.nan, b) for W, b in _numpy_epoch(dtype, lr, order)]
    assert verify.check(nan, SMALL, X, Y, lr, init, order)["reason"] == "non-finite parameters"
    shapes = verify.check(_numpy_epoch(dtype, lr, order)[:1], SMALL, X, Y, lr, init, order)
    assert not shapes["ok"] and "shapes" in shapes["reason"]


def test_worker_refuses_a_wrong_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer off by 2% in its learning rate is reported and never timed."""
    def build(cfg, X, Y, lr, init, shuffle):  # type: ignore[no-untyped-def]
        return peers.PEERS["numpy"].build(cfg, X, Y, lr * 1.02, init, shuffle)

    monkeypatch.setitem(peers.PEERS, "wrong", peers.Peer("wrong", ("numpy",), build))
    spec = {"kind": "peer", "peer": "wrong", "config": "small", "dtype": "float32",
            "threads": 1, "quick": True, "lr": 0.001, "min_time": 0.0, "warmup": 1,
            "repeats": 3, "seed": 0}
    res = worker.run_spec(spec)
    assert res["status"] == "refused" and "not timed" in res["note"]
    assert "times_s" not in res and res["verify"]["err"] > verify.TOLERANCE["float32"]
    spec["peer"] = "numpy"
    ok = worker.run_spec(spec)
    assert ok["status"] == "ok" and len(ok["times_s"]) == 3 and ok["verify"]["ok"]


def test_worker_runs_the_check_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float64 check's numpy epoch runs on one BLAS thread (more would spin
    into the peer's first timed epochs), and the peer's own limit is back after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = {}
    real_check, real_epoch = verify.check, peers.PEERS["numpy"].build

    def blas_threads() -> list[int]:
        return [d["num_threads"] for d in threadpoolctl.threadpool_info()
                if d["user_api"] == "blas"]

    def check(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen["check"] = blas_threads()
        return real_check(*args, **kwargs)

    def build(cfg, X, Y, lr, init, shuffle):  # type: ignore[no-untyped-def]
        t = real_epoch(cfg, X, Y, lr, init, shuffle)
        epoch = t.epoch

        def timed(e):  # type: ignore[no-untyped-def]
            seen.setdefault("epochs", []).append(blas_threads())
            return epoch(e)
        t.epoch = timed
        return t

    monkeypatch.setattr(verify, "check", check)
    monkeypatch.setitem(peers.PEERS, "spy", peers.Peer("spy", ("numpy",), build))
    spec = {"kind": "peer", "peer": "spy", "config": "small", "dtype": "float32",
            "threads": 2, "quick": True, "lr": 0.001, "min_time": 0.0, "warmup": 1,
            "repeats": 2, "seed": 0}
    assert worker.run_spec(spec)["status"] == "ok"
    if not seen["check"]:
        pytest.skip("threadpoolctl sees no BLAS library")
    assert set(seen["check"]) == {1}
    assert all(set(n) == {2} for n in seen["epochs"]), seen


def test_thread_usage_counts_busy_threads() -> None:
    before = {"1": 0, "2": 0, "3": 0}
    after = {"1": int(0.9e9), "2": int(0.5e9), "3": int(0.01e9), "4": int(0.2e9)}
    u = worker.thread_usage(before, after, 1.0)
    assert u["threads_busy"] == 3 and u["threads_alive"] == 4
    assert u["cpu_s"] == pytest.approx(1.61) and u["thread_cpu_s"][0] == 0.9
    snap = worker.thread_cpu_ns()
    assert str(threading.get_native_id()) in snap or not snap


def test_best_peers_and_peak_fraction() -> None:
    def res(peer: str, sps: float, cfg: str = "large", status: str = "ok") -> dict:
        return {"spec": {"kind": "peer", "peer": peer, "config": cfg, "dtype": "float32",
                         "threads": 2}, "status": status, "samples_per_s": sps,
                "gflops": sps * CONFIGS[cfg].flops_per_sample / 1e9,
                "peer_info": {"gemm_isa": "avx2"} if peer == "fastbp" else {}}
    results = [res("fastbp", 3000.0), res("numpy", 2500.0), res("jax", 3600.0),
               res("torch", 9000.0, status="refused"), res("reference", 1e6)]
    (b,) = report.best_peers(results)
    assert b["best_peer"] == "jax" and b["ratio"] == pytest.approx(3000 / 3600)
    fma = {"status": "ok", "results": [
        {"isa": "avx2", "dtype": "float32", "supported": True, "gflops": {"1": 100, "2": 190}},
        {"isa": "avx512", "dtype": "float32", "supported": True, "gflops": {"1": 110, "2": 200}},
        {"isa": "avx512", "dtype": "float64", "supported": False}]}
    (p,) = report.peak_fractions(results, fma)
    assert p["peak_isa"] == "avx512" and p["fraction"] == pytest.approx(p["gflops"] / 200)
    assert p["own_isa_fraction"] == pytest.approx(p["gflops"] / 190)
    assert fma_peak.peak(fma, "float64", 1) is None
    assert report.best_peers([res("fastbp", 1.0)])[0]["ratio"] is None


def test_rounds_give_the_median_of_each_rounds_ratio() -> None:
    def res(peer: str, sps: float, rnd: int, status: str = "ok") -> dict:
        return {"spec": {"kind": "peer", "peer": peer, "config": "small", "dtype": "float32",
                         "threads": 1, "round": rnd}, "status": status, "samples_per_s": sps,
                "gflops": sps * 1e-6, "peak_rss_mib": 1.0}
    # The host is twice as fast in round 1: fastbp / best is 1.2, 1.25, 0.8 per round
    # (the best peer jax, jax, numpy), while fastbp's best run over the others' best
    # runs would say 2.0 / 1.7.
    results = [res("fastbp", 1.2, 0), res("jax", 1.0, 0), res("numpy", 0.5, 0),
               res("fastbp", 2.0, 1), res("jax", 1.6, 1), res("numpy", 1.0, 1),
               res("fastbp", 0.8, 2), res("jax", 0.9, 2), res("numpy", 1.0, 2),
               res("torch", 5.0, 2, status="failed")]
    report.add_ratios(results)
    assert results[1]["fastbp_ratio"] == pytest.approx(1.2)   # within its own round
    (b,) = report.best_peers(results)
    assert b["rounds"]["ratio"] == pytest.approx([1.2, 1.25, 0.8])
    assert b["rounds"]["best_peer"] == ["jax", "jax", "numpy"]
    assert b["ratio"] == pytest.approx(1.2)
    assert b["fastbp"] == pytest.approx(1.2) and b["best_peer"] == "jax"
    assert b["best"] == pytest.approx(1.0) and "torch" not in b["peers"]
    merged = {r["spec"]["peer"]: r for r in report.merge_rounds(results)}
    assert merged["jax"]["samples_per_s"] == 1.0 and merged["jax"]["spec"]["round"] == 0
    assert merged["jax"]["rounds"] == {"n": 3, "stands": 0, "samples_per_s": [1.0, 1.6, 0.9]}
    assert merged["jax"]["fastbp_ratio"] == pytest.approx(1.2)   # median of 1.2, 1.25, 0.889
    assert merged["torch"]["status"] == "failed" and "rounds" not in merged["torch"]
    # One round: as before, nothing added.
    one = [r for r in results if r["spec"]["round"] == 0]
    (b1,) = report.best_peers(one)
    assert "rounds" not in b1 and b1["ratio"] == pytest.approx(1.2)
    assert report.merge_rounds(one) == one


def test_rounds_must_be_positive() -> None:
    from bench import run
    with pytest.raises(SystemExit):
        run.parse_args(["--rounds", "0"])
    assert run.parse_args(["--rounds", "3"]).rounds == 3


def test_quick_run_in_two_rounds(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    proc = _run(["-m", "bench", "--quick", "--peers", "fastbp", "numpy", "--configs", "tiny",
                 "--rounds", "2", "--no-plot", "--json", str(out_json)])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    assert doc["meta"]["rounds"] == 2
    rounds = [(r["spec"].get("peer", "matmul"), r["spec"]["round"]) for r in doc["results"]]
    assert rounds == [("matmul", 0), ("fastbp", 0), ("numpy", 0),
                      ("matmul", 1), ("fastbp", 1), ("numpy", 1)]
    (b,) = doc["best"]
    assert len(b["rounds"]["ratio"]) == 2 and b["ratio"] > 0
    assert "median of 2 rounds" in proc.stdout and "per round" in proc.stdout


@pytest.mark.skipif(fma_peak.compiler() is None, reason="no C compiler")
def test_fma_peak_runs() -> None:
    out = fma_peak.measure(trials=1)
    assert out["status"] == "ok", out
    by = {(r["isa"], r["dtype"]): r for r in out["results"]}
    assert set(by) == {(i, d) for i in ("avx2", "avx512") for d in ("float32", "float64")}
    for r in by.values():
        if r["supported"]:
            assert r["gflops"]["1"] > 0 and r["gflops"]["2"] > 0


def test_warmup_must_include_the_verified_epoch() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--warmup", "0"])
    assert "jax" not in parse_args(["--quick"]).peers
    assert "jax" in parse_args([]).peers


def test_jax_peer_tiny(tmp_path: Path) -> None:
    """The JAX peer in a worker: verified, timed, on the thread count asked."""
    pytest.importorskip("jax")
    spec = {"kind": "peer", "peer": "jax", "config": "small", "dtype": "float32",
            "threads": 1, "quick": True, "lr": 0.001, "min_time": 0.0, "warmup": 1,
            "repeats": 2, "seed": 0}
    proc = _run(["-m", "bench.worker", json.dumps(spec)])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["status"] == "ok", res
    assert res["verify"]["ok"] and res["peer_info"]["PJRT_NPROC"] == "1"


def test_torch_scan_body_matches_numpy() -> None:
    """The whole-epoch torch.compile peer's step (backward written out), run eagerly."""
    torch = pytest.importorskip("torch")
    for act in ("relu", "sigmoid", "tanh"):
        cfg = Config("t", (5, 7, 3), act, 4, 30, 30)
        X, Y = _data("float64")
        init = peers.init_params(cfg.sizes, "float64", 0)
        body = peers._torch_scan_body(cfg, 0.1)
        params = [torch.from_numpy(a.copy()) for W, b in init for a in (W, b)]
        new, loss = body(params, (torch.from_numpy(X[:4]), torch.from_numpy(Y[:4])))
        net = NumpyMLP(cfg.sizes, activation=act, dtype="float64")
        net.set_params(init)
        want_loss = net.step(X[:4], Y[:4], 0.1)
        assert float(loss) == pytest.approx(want_loss, rel=1e-12)
        for k, (W, b) in enumerate(zip(net.weights, net.biases)):
            np.testing.assert_allclose(new[2 * k].numpy(), W, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(new[2 * k + 1].numpy(), b, rtol=1e-12, atol=1e-14)


def test_sklearn_peer_follows_the_shared_order() -> None:
    pytest.importorskip("sklearn")
    X, Y = _data()
    init = peers.init_params(SMALL.sizes, "float32", 0)
    sh = peers.Shuffle(0, 30)
    t = peers.PEERS["sklearn"].build(SMALL, X, Y, 0.05, init, sh)
    t.epoch(0)
    assert verify.check(t.params(), SMALL, X, Y, 0.05, init, sh(0))["ok"]


def test_numpy_mlp_set_params_checks_shapes() -> None:
    net = NumpyMLP([3, 4, 2])
    with pytest.raises(ValueError, match="expected 2 layers"):
        net.set_params([(np.zeros((4, 3)), np.zeros(4))])
    with pytest.raises(ValueError, match="layer 1"):
        net.set_params([(np.zeros((4, 3)), np.zeros(4)), (np.zeros((2, 3)), np.zeros(2))])
