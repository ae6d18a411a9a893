"""fastbp.onnx_export: exported graphs pass onnx's checker and, run by onnxruntime, give
fastbp's predictions."""
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp import onnx_export as ox
from tolerances import ACTIVATIONS, PAIRS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# |onnxruntime - fastbp| <= RTOL * |fastbp| for sigmoid, softmax and exp outputs, and
# <= RTOL * S for identity outputs, where S = |W_L| |h| + |b_L| is the size of the
# terms the last layer sums (its result can cancel to anything near 0).  Measured
# worst cases on SIZES (`python tests/test_onnx.py` prints the table of
# docs/onnx.md): float32 3.9e-7, float64 2.1e-15.
RTOL = {"float32": 1e-6, "float64": 1e-14}
# Hidden tanh layers in float32: fastbp's tanh and onnxruntime's are up to 2.6
# and 4.5 ulp from the exact tanh, and their differences add up in the next
# layer's sums.  Measured 1.0e-6 on SIZES (1.8e-6 on 50-200-100-10), where
# fastbp's own predictions are 8.2e-7 and the graph's 7.5e-7 from the exact
# function of the same float32 parameters.
RTOL_TANH_FLOAT32 = 2.5e-6
SIZES = (6, 24, 16, 4)

_ACT = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
}


def session(proto, threads=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def make_net(activation="tanh", output="softmax", loss="cross_entropy", bias=True,
             dtype="float32", sizes=SIZES, seed=0):
    net = fastbp.MLP(list(sizes), activation=activation, output=output, loss=loss,
                     bias=bias, dtype=dtype, seed=seed)
    if bias:
        rng = np.random.default_rng(seed + 100)
        for b in net.biases:
            b[...] = rng.normal(scale=0.5, size=b.shape)
    return net


def inputs(net, n, seed=0):
    rng = np.random.default_rng(seed)
    return (2.0 * rng.normal(size=(n, net.layer_sizes[0]))).astype(net.dtype)


def term_scale(net, X):
    """|W_L| |h_{L-1}| + |b_L| in float64: the size of the terms the last layer sums."""
    h = X.astype(np.float64)
    for k in range(net.n_layers - 1):
        h = h @ net.weights[k].astype(np.float64).T
        if net.bias:
            h = h + net.biases[k]
        h = _ACT[net.activation](h)
    S = np.abs(h) @ np.abs(net.weights[-1].astype(np.float64)).T
    return S + np.abs(net.biases[-1]) if net.bias else S


def rtol_for(net):
    if net.dtype == np.float32 and net.activation == "tanh" and net.n_layers > 1:
        return RTOL_TANH_FLOAT32
    return RTOL[net.dtype.name]


def assert_matches_predict(net, got, X, rtol=None):
    expected = net.predict(X)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    rtol = rtol_for(net) if rtol is None else rtol
    scale = term_scale(net, X) if net.output == "identity" else np.abs(expected.astype(np.float64))
    err = np.abs(got.astype(np.float64) - expected)
    bound = rtol * scale
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{net!r}: error {err[worst]:.3g} at {worst}, bound {bound[worst]:.3g} "
        f"({err[worst] / max(scale[worst], 1e-300):.3g} relative)"
    )


# -- the network -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("output,loss", PAIRS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_onnxruntime_equals_predict(activation, output, loss, bias, dtype):
    net = make_net(activation, output, loss, bias, dtype)
    proto = ox.to_onnx(net)
    onnx.checker.check_model(proto, full_check=True)
    sess = session(proto)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    tensor = {"float32": "tensor(float)", "float64": "tensor(double)"}[dtype]
    assert (inp.name, inp.type, inp.shape) == ("X", tensor, ["N", SIZES[0]])
    assert (out.name, out.type, out.shape) == ("Y", tensor, ["N", SIZES[-1]])
    for n in (1, 7, 4000):
        X = inputs(net, n, seed=n)
        assert_matches_predict(net, sess.run(["Y"], {"X": X})[0], X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_one_layer_and_a_large_batch_on_two_threads(activation, dtype):
    # No hidden layer; a batch larger than onnxruntime's and fastbp's blocks.
    for sizes, output, loss in [((9, 5), "softmax", "cross_entropy"),
                                ((40, 64, 3), "sigmoid", "binary_cross_entropy"),
                                ((40, 64, 3), "identity", "squared_error")]:
        net = make_net(activation, output, loss, sizes=sizes, dtype=dtype, seed=3)
        X = inputs(net, 20000, seed=1)
        assert_matches_predict(net, session(net.to_onnx(), threads=2).run(None, {"X": X})[0], X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits(dtype):
    # Logits of +-80 and +-1e4: tiny probabilities keep their relative accuracy,
    # saturated ones are exactly 0 and 1, nothing is NaN.
    z = np.array([[-1e4, -80.0, 0.0, 80.0], [3.0, -3.0, 1e4, -1e4], [-30.0, -20.0, -16.0, 16.0]])
    for output, loss in [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")]:
        net = fastbp.MLP([4, 4], activation="identity", output=output, loss=loss, dtype=dtype,
                         weights=[np.eye(4)], biases=[np.zeros(4)])
        X = z.astype(dtype)
        got = session(net.to_onnx()).run(None, {"X": X})[0]
        expected = net.predict(X)
        assert np.all(np.isfinite(got))
        tiny = np.abs(expected) < np.finfo(dtype).tiny  # underflowed in both
        assert np.array_equal(got[tiny], expected[tiny])
        np.testing.assert_allclose(got[~tiny], expected[~tiny], rtol=RTOL[dtype], atol=0)


def test_graph_layout_and_metadata():
    net = make_net("relu", "softmax", "cross_entropy", sizes=(3, 5, 2), dtype="float64")
    proto = ox.to_onnx(net)
    g = proto.graph
    assert [n.op_type for n in g.node][:3] == ["Gemm", "Relu", "Gemm"]
    assert {n.op_type for n in g.node[3:]} == {"ReduceMax", "Sub", "Add", "Exp", "Mul",
                                                "ReduceSum", "Div"}
    gemm = g.node[0]
    assert list(gemm.input) == ["X", "W0", "b0"]
    assert [(a.name, a.i) for a in gemm.attribute] == [("transB", 1)]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    for k in range(2):
        np.testing.assert_array_equal(init[f"W{k}"], net.weights[k])  # (n_out, n_in), as fastbp
        np.testing.assert_array_equal(init[f"b{k}"], net.biases[k])
        assert init[f"W{k}"].dtype == np.float64
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    assert proto.ir_version == 7
    assert (proto.producer_name, proto.producer_version) == ("fastbp", fastbp.__version__)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == {"fastbp_version": fastbp.__version__, "layer_sizes": "[3, 5, 2]",
                    "activation": "relu", "output": "softmax", "loss": "cross_entropy",
                    "bias": "true", "dtype": "float64"}

    plain = ox.to_onnx(make_net("identity", "identity", "squared_error", bias=False,
                                sizes=(3, 5, 2)))
    assert [n.op_type for n in plain.graph.node] == ["Gemm", "Gemm"]
    assert [(list(n.input), list(n.output)) for n in plain.graph.node] == [
        (["X", "W0"], ["z0"]), (["z0", "W1"], ["Y"])]
    assert [t.name for t in plain.graph.initializer] == ["W0", "W1"]


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_opsets(opset):
    net = make_net("sigmoid", "softmax", "cross_entropy")
    proto = ox.to_onnx(net, opset=opset, input_name="features", output_name="proba")
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    X = inputs(net, 50)
    assert_matches_predict(net, session(proto).run(["proba"], {"features": X})[0], X)


def test_newest_opset_passes_the_checker():
    newest = onnx.defs.onnx_opset_version()
    onnx.checker.check_model(ox.to_onnx(make_net(), opset=newest), full_check=True)


def test_writes_the_file_atomically(tmp_path):
    net = make_net("tanh", "sigmoid", "binary_cross_entropy")
    path = tmp_path / "net.onnx"
    path.write_bytes(b"an older file")
    os.chmod(path, 0o640)
    proto = net.to_onnx(path)
    assert isinstance(proto, onnx.ModelProto)
    assert path.read_bytes() == proto.SerializeToString()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # the old file's mode is kept
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]  # no temporary file left
    X = inputs(net, 10)
    loaded = onnx.load(str(path))
    assert_matches_predict(net, session(loaded).run(None, {"X": X})[0], X)
    ox.to_onnx(net, str(tmp_path / "str_path.onnx"))  # str paths too
    assert (tmp_path / "str_path.onnx").is_file()


def test_model_unchanged():
    net = make_net()
    before = [w.copy() for w in net.weights], [b.copy() for b in net.biases]
    ox.to_onnx(net)
    for k in range(net.n_layers):
        assert np.array_equal(net.weights[k], before[0][k])
        assert np.array_equal(net.biases[k], before[1][k])


def test_bad_arguments_raise_and_write_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    net = make_net()
    with pytest.raises(TypeError, match="expects a fastbp.MLP, got str"):
        ox.to_onnx("model.npz", out)
    with pytest.raises(TypeError, match="expects a fastbp.MLP, got MLP"):
        ox.to_onnx(fastbp.reference.MLP([2, 2]), out)
    with pytest.raises(ValueError, match="opset must be between 13 and"):
        ox.to_onnx(net, out, opset=12)
    with pytest.raises(TypeError, match="opset must be an integer"):
        ox.to_onnx(net, out, opset="13")
    with pytest.raises(ValueError, match="input_name must be a non-empty string"):
        ox.to_onnx(net, out, input_name="")
    with pytest.raises(ValueError, match="must differ"):
        ox.to_onnx(net, out, input_name="Y")
    bad = make_net()
    bad.weights[1][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"weights\[1\] holds NaN or Inf"):
        bad.to_onnx(out)
    assert os.listdir(tmp_path) == []


def test_unwritable_paths_raise_and_leave_no_file(tmp_path, monkeypatch):
    net = make_net()
    with pytest.raises(FileNotFoundError):
        net.to_onnx(tmp_path / "missing" / "net.onnx")
    with pytest.raises(IsADirectoryError):
        net.to_onnx(tmp_path)
    # A failure after the temporary file was written: the old file survives.
    path = tmp_path / "net.onnx"
    path.write_bytes(b"old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        net.to_onnx(path)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into read-only directories")
def test_read_only_directory(tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError):
            make_net().to_onnx(tmp_path / "net.onnx")
        assert os.listdir(tmp_path) == []
    finally:
        os.chmod(tmp_path, 0o700)


def test_importing_fastbp_never_imports_onnx():
    code = ("import sys, fastbp, fastbp.onnx_export; net = fastbp.MLP([3, 2]); "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_onnx_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'fastbp\[onnx\]'"):
        make_net().to_onnx()


# -- scikit-learn estimators -------------------------------------------------------------


@pytest.fixture
def skl():
    pytest.importorskip("sklearn")
    import fastbp.sklearn

    return fastbp.sklearn


def fit_quietly(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after a few epochs
        return est.fit(X, y)


def run_estimator(est, X):
    proto = est.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(None, {"X": X})


LABELS = {
    "int": lambda rng, n: rng.integers(0, 4, n) * 3 - 2,
    "string": lambda rng, n: np.array(["cat", "dog", "emu"])[rng.integers(0, 3, n)],
    "binary": lambda rng, n: np.array([-7, 11])[rng.integers(0, 2, n)],
    "binary-string": lambda rng, n: np.array(["no", "yes"])[rng.integers(0, 2, n)],
    "bool": lambda rng, n: rng.integers(0, 2, n).astype(bool),
    "float": lambda rng, n: rng.integers(0, 3, n) * 1.0,
    "object-str": lambda rng, n: np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)],
    "one-class": lambda rng, n: np.full(n, 5),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(LABELS))
def test_classifier_labels_and_probabilities(skl, kind, dtype):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5)).astype(dtype)
    y = LABELS[kind](rng, 300)
    clf = fit_quietly(skl.MLPClassifier(hidden_layer_sizes=(12,), activation="tanh",
                                        max_iter=20, learning_rate_init=0.05,
                                        random_state=0, dtype=dtype), X, y)
    names, (label, proba) = run_estimator(clf, X)
    assert names == ["label", "probabilities"]
    expected = clf.predict(X)
    assert np.array_equal(label, expected)
    assert label.shape == (300,)
    want_kind = {"int": "i", "binary": "i", "one-class": "i", "bool": "b", "float": "f"}
    assert label.dtype.kind == want_kind.get(kind, "O")  # strings come back as str objects
    if label.dtype.kind == "O":
        assert all(isinstance(v, str) for v in label)
    elif label.dtype.kind == "i":
        assert label.dtype == np.int64
    p = clf.predict_proba(X)
    assert proba.shape == p.shape == (300, max(2, len(clf.classes_)))
    rtol = RTOL_TANH_FLOAT32 if dtype == "float32" else RTOL[dtype]
    np.testing.assert_allclose(proba, p, rtol=rtol, atol=0)


def test_multilabel_classifier(skl):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    Y = (rng.random((200, 3)) < 0.4).astype(int)
    clf = fit_quietly(skl.MLPClassifier(hidden_layer_sizes=(8,), max_iter=10,
                                        learning_rate_init=0.1, random_state=0), X, Y)
    names, (label, proba) = run_estimator(clf, X)
    assert names == ["label", "probabilities"]
    assert label.shape == (200, 3) and label.dtype == np.int64
    assert np.array_equal(label, clf.predict(X))
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=RTOL["float32"], atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_regressor(skl, n_outputs, dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(250, 6)).astype(dtype)
    y = X[:, :n_outputs] ** 2 + rng.normal(scale=0.1, size=(250, n_outputs))
    if n_outputs == 1:
        y = y.ravel()
    reg = fit_quietly(skl.MLPRegressor(hidden_layer_sizes=(16,), max_iter=20,
                                       learning_rate_init=0.01, random_state=0,
                                       dtype=dtype), X, y)
    names, (variable,) = run_estimator(reg, X)
    assert names == ["variable"]
    assert variable.shape == (250, n_outputs)  # (N, 1) for one target, as skl2onnx
    assert_matches_predict(reg.model_, variable, X)
    np.testing.assert_allclose(variable.reshape(reg.predict(X).shape), reg.predict(X),
                               rtol=0, atol=10 * RTOL[dtype] * float(np.abs(variable).max()))


def test_estimator_metadata_and_file(skl, tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = np.array(["a", "b", "c"])[np.arange(60) % 3]
    clf = fit_quietly(skl.MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0),
                      X, y)
    path = tmp_path / "clf.onnx"
    proto = ox.estimator_to_onnx(clf, path)
    assert path.read_bytes() == proto.SerializeToString()
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["estimator"] == "fastbp.sklearn.MLPClassifier"
    assert meta["classes"] == '["a", "b", "c"]'
    assert meta["layer_sizes"] == "[3, 4, 3]"


def test_estimator_bad_input_raises_and_writes_nothing(skl, tmp_path):
    from sklearn.exceptions import NotFittedError

    out = tmp_path / "out.onnx"
    with pytest.raises(NotFittedError):
        skl.MLPClassifier().to_onnx(out)
    with pytest.raises(NotFittedError):
        ox.estimator_to_onnx(skl.MLPRegressor(), out)
    with pytest.raises(TypeError, match="expects a fitted fastbp.sklearn"):
        ox.estimator_to_onnx(make_net(), out)
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    with pytest.raises(TypeError, match="got MLPClassifier"):
        ox.estimator_to_onnx(SklearnMLP(), out)
    X = np.zeros((20, 2), np.float32)
    y = np.array([1, "a"] * 10, dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clf = skl.MLPClassifier(max_iter=1).fit(X, y)
        except (TypeError, ValueError):
            clf = None  # scikit-learn refuses mixed labels itself
    if clf is not None:
        with pytest.raises(TypeError, match="class labels of types"):
            clf.to_onnx(out)
    reg = fit_quietly(skl.MLPRegressor(hidden_layer_sizes=(2,), max_iter=1), X, np.zeros(20))
    with pytest.raises(ValueError, match="must not be one of the output names"):
        reg.to_onnx(out, input_name="variable")
    assert os.listdir(tmp_path) == []


def test_label_constants():
    assert ox._label_constant(np.array([3, 1], np.uint8))[0].dtype == np.int64
    with pytest.raises(ValueError, match="larger than int64"):
        ox._label_constant(np.array([2**63], np.uint64))
    values, kind = ox._label_constant(np.array([2, 5], dtype=object))
    assert values.dtype == np.int64 and kind is np.int64
    with pytest.raises(TypeError, match="class labels of types int, str"):
        ox._label_constant(np.array([1, "a"], dtype=object))
    with pytest.raises(TypeError, match="dtype complex128"):
        ox._label_constant(np.array([1j]))


# -- the command line --------------------------------------------------------------------


def test_cli_export(tmp_path, capsys):
    net = make_net("relu", "softmax", "cross_entropy")
    model = tmp_path / "net.npz"
    net.save(model)
    out = tmp_path / "net.onnx"
    assert cli.main(["export", str(model), str(out), "--network-only"]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.strip() == (f"saved: {out} (ONNX opset 13: input X (N, 6), output Y (N, 4), "
                              "float32)")
    assert stderr == ""
    X = inputs(net, 30)
    assert_matches_predict(net, session(onnx.load(str(out))).run(None, {"X": X})[0], X)

    (tmp_path / "net.json").write_text("{}")  # a sidecar, as `train` writes
    assert cli.main(["export", str(model), str(out), "--opset", "17", "--network-only",
                     "--force"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "opset 17" in stdout
    assert stderr.startswith("note: --network-only: ") and "net.json" in stderr
    assert "not in the ONNX graph" in stderr


@pytest.mark.parametrize("case", ["not-a-model", "missing", "no-dir", "is-dir", "opset"])
def test_cli_export_errors(tmp_path, capsys, case):
    model = tmp_path / "net.npz"
    make_net().save(model)
    out = tmp_path / "out.onnx"
    argv = ["export", str(model), str(out), "--network-only"]  # no sidecar: test_onnx_cli.py
    if case == "not-a-model":
        (tmp_path / "junk.npz").write_bytes(b"not a zip file")
        argv[1] = str(tmp_path / "junk.npz")
    elif case == "missing":
        argv[1] = str(tmp_path / "nothing.npz")
    elif case == "no-dir":
        argv[2] = str(tmp_path / "no" / "out.onnx")
    elif case == "is-dir":
        argv[2] = str(tmp_path)
    else:
        argv += ["--opset", "12"]
    files = sorted(os.listdir(tmp_path))
    assert cli.main(argv) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert stderr.startswith("fastbp: error: ") and stderr.count("\n") == 1, stderr
    expected = {"not-a-model": "not a readable fastbp model file", "missing": "No such file",
                "no-dir": "does not exist", "is-dir": "is a directory",
                "opset": "opset must be between 13"}[case]
    assert expected in stderr
    assert sorted(os.listdir(tmp_path)) == files  # nothing written


# -- the precision table of docs/onnx.md -------------------------------------------------


def precision_table(sizes_list=(SIZES, (50, 200, 100, 10)), n=4000, seeds=(0, 1, 2)):
    """Worst |onnxruntime - fastbp| over random inputs, in the units of assert_matches_predict.

    Run ``python tests/test_onnx.py`` (from the repository root) to print it.
    """
    rows = []
    for sizes in sizes_list:
        for dtype in ("float32", "float64"):
            for activation in ACTIVATIONS:
                cells = []
                for output, loss in [("identity", "squared_error"),
                                     ("sigmoid", "binary_cross_entropy"),
                                     ("softmax", "cross_entropy")]:
                    worst = 0.0
                    for seed in seeds:
                        for bias in (True, False):
                            net = make_net(activation, output, loss, bias, dtype, sizes, seed)
                            X = inputs(net, n, seed)
                            got = session(net.to_onnx()).run(None, {"X": X})[0]
                            expected = net.predict(X).astype(np.float64)
                            scale = (term_scale(net, X) if output == "identity"
                                     else np.abs(expected))
                            err = np.abs(got - expected)
                            rel = np.divide(err, scale, out=np.zeros_like(err), where=err > 0)
                            worst = max(worst, float(rel.max()))
                    cells.append(f"{worst:.1e}")
                rows.append(f"| {'-'.join(map(str, sizes))} | {dtype} | {activation} | "
                            + " | ".join(cells) + " |")
    return ("| network | dtype | hidden | identity | sigmoid | softmax |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


def exact(net, X):
    """The network's function in float64 arithmetic, of its (float32) parameters and X."""
    h = X.astype(np.float64)
    for k in range(net.n_layers):
        h = h @ net.weights[k].astype(np.float64).T
        if net.bias:
            h = h + net.biases[k]
        if k < net.n_layers - 1:
            h = _ACT[net.activation](h)
    if net.output == "softmax":
        e = np.exp(h - h.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return _ACT[net.output](h)


def exact_table(sizes_list=(SIZES, (50, 200, 100, 10)), n=4000, seeds=(0, 1, 2)):
    """float32: worst relative error of fastbp and of the graph from the exact function."""
    rows = []
    for sizes in sizes_list:
        for activation in ACTIVATIONS:
            for output, loss in [("sigmoid", "binary_cross_entropy"),
                                 ("softmax", "cross_entropy")]:
                worst = np.zeros(3)
                for seed in seeds:
                    for bias in (True, False):
                        net = make_net(activation, output, loss, bias, "float32", sizes, seed)
                        X = inputs(net, n, seed)
                        got = session(net.to_onnx()).run(None, {"X": X})[0].astype(np.float64)
                        mine = net.predict(X).astype(np.float64)
                        ref = exact(net, X)
                        worst = np.maximum(worst, [np.max(np.abs(mine - ref) / ref),
                                                   np.max(np.abs(got - ref) / ref),
                                                   np.max(np.abs(got - mine) / mine)])
                rows.append(f"| {'-'.join(map(str, sizes))} | {activation} | {output} | "
                            + " | ".join(f"{v:.1e}" for v in worst) + " |")
    return ("| network | hidden | output | fastbp vs exact | ONNX vs exact | ONNX vs fastbp |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; worst over seeds 0-2, "
          "bias on/off, 4000 rows of N(0, 2^2) inputs\n")
    print(precision_table())
    print("\nfloat32, relative to the exact function of the same parameters:\n")
    print(exact_table())
