"""Tests of the benchmark harness (bench/), including a ``--quick`` smoke run."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: import it from the checkout
    sys.path.insert(0, str(ROOT))

from bench.configs import CONFIGS  # noqa: E402
from bench.numpy_mlp import NumpyMLP  # noqa: E402
from bench.run import blas_warning  # noqa: E402


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
        net.fit_epoch(X, Y, batch_size=16, lr=0.05, rng=rng)
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
    for r in doc["results"]:
        if r["status"] == "ok" and r["spec"]["kind"] == "peer":
            assert r["samples_per_s"] > 0 and r["peak_rss_mib"] >= 0
            assert r["fastbp_ratio"] > 0


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
    pid = busy["busy_process"]["pid"]
    assert not os.path.exists(f"/proc/{pid}") or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", "busy loop left running"


def test_wide_config() -> None:
    wide = CONFIGS["wide"]
    assert wide.sizes == (1024, 4096, 1024) and wide.batch_size == 4
