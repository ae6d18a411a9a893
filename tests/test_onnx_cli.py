"""``python -m fastbp export``: the model and its sidecar as one ONNX graph.

Models are trained by the CLI itself on small CSV files (string class names,
integer class labels, a regression target), exported, run in onnxruntime on
the raw feature columns, and compared with what ``python -m fastbp predict``
prints for the same file.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

from _helpers import read_csv, write_csv

from fastbp import cli
from fastbp import onnx_export as ox
from fastbp._data import load_features

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: Relative agreement of the graph's numbers with predict's (the network's
#: float32 rounding in onnxruntime and in fastbp's kernels; float64: a few ulp).
RTOL = {"float32": 1e-6, "float64": 1e-12}


def iris_like(path: Path, labels: Sequence[object], seed: int = 0, n: int = 240) -> Path:
    """Three classes in four features with offsets and scales far from 0 and 1, so that
    a graph without the standardisation gets them wrong."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    X = centres[y] + rng.normal(0, 0.35, (n, 4))
    X[:, 0] = X[:, 0] * 1000.0 + 25000.0  # a feature in other units
    rows = [[repr(float(v)) for v in x] + [labels[c]] for x, c in zip(X, y)]
    return write_csv(path, ["sepal_length", "sepal_width", "petal_length", "petal_width",
                            "species"], rows)


def regression_csv(path: Path, seed: int = 0, n: int = 300) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [2.0, 50.0, 0.01] + [10.0, -300.0, 1.0]
    y = 150.0 + 20.0 * np.tanh((X[:, 0] - 10) / 2) + 0.3 * (X[:, 1] + 300) \
        + 500.0 * (X[:, 2] - 1) + rng.normal(0, 2.0, n)
    rows = [[repr(float(v)) for v in x] + [repr(float(t))] for x, t in zip(X, y)]
    return write_csv(path, ["dose", "pressure", "ratio", "response"], rows)


def train(data: Path, model: Path, dtype: str, *extra: str) -> None:
    code = cli.main(["train", str(data), "-o", str(model), "--dtype", dtype, "-q",
                     "--epochs", "40", "--threads", "1", *extra])
    assert code == 0


def predict_cli(model: Path, data: Path, out: Path, capsys, *extra: str) -> List[List[str]]:
    """What ``python -m fastbp predict`` writes, as CSV rows (header first)."""
    code = cli.main(["predict", str(model), str(data), "-o", str(out), "--threads", "1", *extra])
    capsys.readouterr()
    assert code == 0
    return read_csv(out)


def export(model: Path, out: Path, capsys, *extra: str) -> str:
    code = cli.main(["export", str(model), str(out), *extra])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    return stdout


def run_graph(path: Path, X: np.ndarray) -> Dict[str, np.ndarray]:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features"]
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"features": X})))


def assert_close(got: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    err = np.abs(got.astype(np.float64) - expected) / np.abs(expected)
    assert err.max() <= rtol, f"worst relative error {err.max():.3g} > {rtol:g}"


def network_outputs(model: Path, data: Path) -> np.ndarray:
    """The network's outputs as ``predict`` computes them, before decoding."""
    net, pre = cli.load_model(str(model))
    X, _, _ = load_features(str(data), pre.features)
    return net.predict(pre.transform(X)).astype(np.float64)


# -- the graph equals predict -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["strings", "integers"])
def test_classifier_graph_gives_predicts_labels_and_probabilities(tmp_path, capsys, dtype,
                                                                  kind):
    labels = ["setosa", "versicolor", "virginica"] if kind == "strings" else [0, 1, 2]
    data = iris_like(tmp_path / "iris.csv", labels)
    fresh = iris_like(tmp_path / "new.csv", labels, seed=1, n=500)
    model = tmp_path / "iris.npz"
    train(data, model, dtype)
    stdout = export(model, tmp_path / "iris.onnx", capsys)
    assert "input features (N, 4) float64" in stdout
    assert f"label (N,) {'string' if kind == 'strings' else 'int64'}" in stdout
    assert f"probabilities (N, 3) {dtype}" in stdout
    assert "sepal_length, sepal_width, petal_length, petal_width" in stdout

    printed = predict_cli(model, fresh, tmp_path / "pred.csv", capsys, "--proba")
    X, _, _ = load_features(str(fresh), ["sepal_length", "sepal_width", "petal_length",
                                         "petal_width"])
    out = run_graph(tmp_path / "iris.onnx", X)
    label = out["label"]
    assert label.shape == (500,)
    assert label.dtype == (np.int64 if kind == "integers" else object)
    assert [str(v) for v in label.tolist()] == [row[0] for row in printed[1:]]
    assert len(set(label.tolist())) == 3
    assert out["probabilities"].dtype == np.dtype(dtype)
    assert_close(out["probabilities"], network_outputs(model, fresh), RTOL[dtype])
    shown = np.array([[float(v) for v in row[1:]] for row in printed[1:]])
    assert_close(out["probabilities"], shown, 5e-6)  # predict prints 6 digits

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "iris.onnx")).metadata_props}
    assert meta["task"] == "classify" and meta["target"] == "species"
    assert json.loads(meta["features"]) == ["sepal_length", "sepal_width", "petal_length",
                                            "petal_width"]
    assert json.loads(meta["classes"]) == [str(c) for c in labels]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_regressor_graph_gives_predicts_values_in_target_units(tmp_path, capsys, dtype):
    data = regression_csv(tmp_path / "reg.csv")
    fresh = regression_csv(tmp_path / "new.csv", seed=1, n=400)
    model = tmp_path / "reg.npz"
    train(data, model, dtype, "--hidden", "16,8")
    stdout = export(model, tmp_path / "reg.onnx", capsys)
    assert "input features (N, 3) float64" in stdout and "variable (N, 1) float64" in stdout

    printed = predict_cli(model, fresh, tmp_path / "pred.csv", capsys)
    X, _, _ = load_features(str(fresh), ["dose", "pressure", "ratio"])
    (variable,) = run_graph(tmp_path / "reg.onnx", X).values()
    assert variable.shape == (400, 1) and variable.dtype == np.float64
    net, pre = cli.load_model(str(model))
    expected = pre.decode(network_outputs(model, fresh))
    assert_close(variable, expected, RTOL[dtype])
    shown = np.array([[float(row[0])] for row in printed[1:]])
    assert_close(variable, shown, 1e-9)  # predict prints 10 digits
    assert np.std(variable) > 10  # in target units, not standardised


def test_the_graph_standardises_in_float64_as_predict_does(tmp_path, capsys):
    """With a float64 linear model the graph's arithmetic is predict's, step for step."""
    data = regression_csv(tmp_path / "reg.csv")
    model = tmp_path / "lin.npz"
    train(data, model, "float64", "--hidden", "none")
    export(model, tmp_path / "lin.onnx", capsys)
    X, _, _ = load_features(str(data), ["dose", "pressure", "ratio"])
    (variable,) = run_graph(tmp_path / "lin.onnx", X).values()
    net, pre = cli.load_model(str(model))
    expected = pre.decode(net.predict(pre.transform(X)))
    assert_close(variable, expected, 1e-14)


def test_network_only_writes_the_bare_network(tmp_path, capsys):
    data = iris_like(tmp_path / "iris.csv", ["a", "b", "c"])
    model = tmp_path / "iris.npz"
    train(data, model, "float32")
    code = cli.main(["export", str(model), str(tmp_path / "net.onnx"), "--network-only"])
    stdout, stderr = capsys.readouterr()
    assert code == 0 and "input X (N, 4), output Y (N, 3), float32" in stdout
    assert "--network-only" in stderr and "is not in the ONNX graph" in stderr
    net, pre = cli.load_model(str(model))
    assert (onnx.load(str(tmp_path / "net.onnx")).SerializeToString()
            == ox.to_onnx(net).SerializeToString())


# -- bad input: a clear error, files as they were ---------------------------------------------


@pytest.fixture
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    data = iris_like(folder / "iris.csv", ["x", "y", "z"])
    train(data, folder / "iris.npz", "float32")
    return folder


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("case", ["no-sidecar", "bad-sidecar", "mismatch", "exists",
                                  "no-dir", "is-dir", "opset", "no-model"])
def test_export_errors_leave_files_as_they_were(trained, tmp_path, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("iris.npz", "iris.json"):
        (work / name).write_bytes((trained / name).read_bytes())
    model, out = work / "iris.npz", work / "out.onnx"
    argv = ["export", str(model), str(out)]
    expected = {
        "no-sidecar": "iris.json: no such file", "bad-sidecar": "not a fastbp sidecar file",
        "mismatch": "does not match its sidecar", "exists": "already exists: give --force",
        "no-dir": "does not exist", "is-dir": "is a directory",
        "opset": "opset must be between 13", "no-model": "no such model file"}[case]
    if case == "no-sidecar":
        (work / "iris.json").unlink()
    elif case == "bad-sidecar":
        (work / "iris.json").write_text('{"format": "something else"}')
    elif case == "mismatch":
        side = json.loads((work / "iris.json").read_text())
        side["classes"] = side["classes"][:2]
        (work / "iris.json").write_text(json.dumps(side))
    elif case == "exists":
        out.write_bytes(b"an older file")
    elif case == "no-dir":
        argv[2] = str(work / "nowhere" / "out.onnx")
    elif case == "is-dir":
        argv[2] = str(work)
    elif case == "opset":
        argv += ["--opset", "12"]
    else:
        argv[1] = str(work / "other.npz")
    before = _snapshot(work)
    assert cli.main(argv) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert stderr.startswith("fastbp: error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr, stderr
    if case == "no-sidecar":
        assert "--network-only" in stderr
    assert _snapshot(work) == before
    assert sorted(os.listdir(work)) == sorted(before)  # no temporary file left


def test_force_overwrites_and_an_unwritable_folder_is_refused(trained, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"an older file")
    export(trained / "iris.npz", out, capsys, "--force")
    assert onnx.load(str(out)).graph.input[0].name == "features"

    locked = tmp_path / "locked"
    locked.mkdir()
    if sys.platform == "win32" or os.geteuid() == 0:  # permissions do not bind root
        real_access = os.access
        monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == locked
                            else real_access(p, mode))
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert cli.main(["export", str(trained / "iris.npz"), str(locked / "x.onnx")]) == 2
        assert "is not writable" in capsys.readouterr().err
        assert os.listdir(locked) == []
    finally:
        locked.chmod(stat.S_IRWXU)


# -- the building blocks ------------------------------------------------------------------------


def test_integer_class_names_become_int64_labels():
    assert ox._cli_labels(["0", "1", "-3", "12"]).dtype == np.int64
    for names in (["0", "007"], ["1", "1.5"], ["a", "1"], ["True", "False"], ["+1", "2"],
                  ["1", str(2**63)]):
        assert ox._cli_labels(names).dtype == object, names


def test_pipeline_bad_arguments_raise():
    import fastbp

    net = fastbp.MLP([3, 4, 2], seed=0)
    ok = dict(x_mean=[0, 0, 0], x_scale=[1, 1, 1])
    bad = [
        (dict(ok), "either classes"),
        (dict(ok, classes=["a", "b"], y_mean=[0, 0], y_scale=[1, 1]), "either classes"),
        (dict(ok, y_mean=[0, 0]), "both y_mean and y_scale"),
        (dict(ok, classes=["a", "b", "c"]), "classes must name each"),
        (dict(x_mean=[0, 0], x_scale=[1, 1, 1], classes=["a", "b"]), "x_mean must hold 3"),
        (dict(x_mean=[0, 0, 0], x_scale=[1, 0, 1], classes=["a", "b"]), "non-zero"),
        (dict(x_mean=[0, np.nan, 0], x_scale=[1, 1, 1], classes=["a", "b"]), "finite"),
        (dict(ok, classes=["a", "b"], feature_names=["u", "v"]), "feature_names has 2"),
        (dict(ok, classes=["a", "b"], input_name="label"), "output names"),
    ]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            ox.pipeline_to_onnx(net, **kw)
    with pytest.raises(TypeError, match="x_scale must be a sequence of numbers"):
        ox.pipeline_to_onnx(net, x_mean=[0, 0, 0], x_scale=["a", "b", "c"], classes=["a", "b"])
    with pytest.raises(TypeError, match="expects a fastbp.MLP"):
        ox.pipeline_to_onnx("net", classes=["a", "b"], **ok)
