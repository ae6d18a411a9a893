"""fastbp.io: versioned .npz model files, atomic saves, hostile-file validation."""
import io as _stdio
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

import fastbp
import fastbp.io as fio
from fastbp.io import ModelFileError

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]
HEADS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
         ("identity", "squared_error"), ("sigmoid", "squared_error"), ("exp", "poisson"),
         ("exp", "squared_error")]


def make_net(dtype="float64", bias=True, activation="relu", output="softmax",
             loss="cross_entropy", sizes=(5, 7, 6, 3), seed=3):
    net = fastbp.MLP(list(sizes), activation=activation, output=output, loss=loss,
                     bias=bias, dtype=dtype, seed=seed)
    # Make every parameter non-trivial (biases start at zero).
    rng = np.random.default_rng(seed + 100)
    net._theta[...] = rng.normal(size=net._theta.shape).astype(net.dtype)
    return net


def data(net, n=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, net.layer_sizes[0]))
    n_out = net.layer_sizes[-1]
    if net.loss_name == "cross_entropy":
        Y = rng.integers(0, n_out, size=n)
    else:
        Y = rng.uniform(size=(n, n_out))
    return X, Y


def assert_same_model(a, b):
    assert type(b) is fastbp.MLP
    assert a.layer_sizes == b.layer_sizes
    assert (a.activation, a.output, a.loss_name, a.bias, a.dtype) == \
           (b.activation, b.output, b.loss_name, b.bias, b.dtype)
    assert a._theta.tobytes() == b._theta.tobytes()
    for k in range(a.n_layers):
        assert a.weights[k].dtype == b.weights[k].dtype
        assert a.weights[k].tobytes() == b.weights[k].tobytes()
        if a.bias:
            assert a.biases[k].tobytes() == b.biases[k].tobytes()
        else:
            assert b.biases[k] is None
    X, _ = data(a)
    assert a.predict(X).tobytes() == b.predict(X).tobytes()


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: "-".join(h))
def test_round_trip_bit_identical(tmp_path, dtype, bias, activation, head):
    output, loss = head
    net = make_net(dtype, bias, activation, output, loss)
    path = tmp_path / "model.npz"
    fio.save(net, path)
    back = fio.load(path)
    assert_same_model(net, back)
    # Training goes on identically from the loaded copy.
    X, Y = data(net, seed=1)
    assert net.step(X, Y, 0.05) == back.step(X, Y, 0.05)
    assert net._theta.tobytes() == back._theta.tobytes()


@pytest.mark.parametrize("sizes", [(3, 1), (2, 2), (1, 4, 1), (6, 5, 4, 3, 2)])
def test_round_trip_shapes(tmp_path, sizes):
    output, loss = ("softmax", "cross_entropy") if sizes[-1] >= 2 else ("identity", "squared_error")
    net = make_net(sizes=sizes, output=output, loss=loss)
    fio.save(net, str(tmp_path / "m.npz"))  # str paths too
    assert_same_model(net, fio.load(str(tmp_path / "m.npz")))


def test_load_from_file_object_and_no_suffix_added(tmp_path):
    net = make_net()
    path = tmp_path / "model.bin"
    fio.save(net, path)
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    with open(path, "rb") as f:
        assert_same_model(net, fio.load(f))
    assert_same_model(net, fio.load(_stdio.BytesIO(path.read_bytes())))


def test_save_overwrites_and_keeps_mode(tmp_path):
    path = tmp_path / "m.npz"
    fio.save(make_net(seed=1), path)
    os.chmod(path, 0o640)
    net = make_net(seed=2)
    fio.save(net, path)
    assert_same_model(net, fio.load(path))
    assert (os.stat(path).st_mode & 0o777) == 0o640


def test_file_is_plain_npz_with_documented_keys(tmp_path):
    net = make_net(bias=True, sizes=(4, 3, 2))
    path = tmp_path / "m.npz"
    fio.save(net, path)
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        assert {"format", "version", "fastbp_version", "layer_sizes", "activation", "output",
                "loss", "bias", "dtype", "weight_0", "bias_0", "weight_1", "bias_1"} <= keys
        assert keys - {"format", "version", "fastbp_version", "layer_sizes", "activation",
                       "output", "loss", "bias", "dtype", "weight_0", "bias_0", "weight_1",
                       "bias_1"} <= {k for k in keys if k.startswith("optimizer.")}
        assert str(z["format"]) == "fastbp-mlp"
        assert int(z["version"]) == fio.FORMAT_VERSION == 3
        assert z["layer_sizes"].dtype == np.int64 and list(z["layer_sizes"]) == [4, 3, 2]
        assert z["bias"].dtype == np.bool_ and bool(z["bias"])
        assert str(z["dtype"]) == "float64"
        assert z["weight_1"].shape == (2, 3) and z["weight_1"].dtype == np.float64
        assert np.array_equal(z["weight_0"], net.weights[0])
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_deflated_archive_is_accepted(tmp_path):
    net = make_net()
    path = tmp_path / "m.npz"
    np.savez_compressed(path, **fio._arrays_of(net))
    assert_same_model(net, fio.load(path))


def test_fortran_order_and_byteswapped_arrays_are_accepted(tmp_path):
    net = make_net(dtype="float64", sizes=(4, 3, 2))
    arrays = fio._arrays_of(net)
    arrays["weight_0"] = np.asfortranarray(arrays["weight_0"])
    arrays["weight_1"] = arrays["weight_1"].astype(">f8")
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    assert_same_model(net, fio.load(path))


# ---------------------------------------------------------------------------
# optimizer state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizer_state_round_trip(tmp_path, dtype):
    net = make_net(dtype=dtype)
    assert net.optimizer_state() == {}
    # Give the model a non-trivial velocity, through its own API.
    v = np.random.default_rng(7).normal(size=net.n_params).astype(net.dtype)
    net.set_optimizer_state({"velocity": v})
    state = net.optimizer_state()
    assert set(state) == {"velocity"} and state["velocity"].tobytes() == v.tobytes()
    path = tmp_path / "m.npz"
    fio.save(net, path)
    with np.load(path, allow_pickle=False) as z:
        assert {k[len("optimizer."):] for k in z.files if k.startswith("optimizer.")} == set(state)
    back = fio.load(path)
    assert_same_model(net, back)
    got = back.optimizer_state()
    assert set(got) == set(state)
    for name in state:
        a, b = np.asarray(state[name]), np.asarray(got[name])
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_resume_after_load_is_bit_identical(tmp_path, dtype, nesterov):
    """fit / save / load / fit equals one uninterrupted model's two fits."""
    net = make_net(dtype=dtype)
    X, Y = data(net, n=40, seed=5)
    kw = dict(batch_size=8, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    net.fit(X, Y, epochs=2, seed=1, **kw)
    assert "velocity" in net.optimizer_state()
    fio.save(net, tmp_path / "ckpt.npz")
    back = fio.load(tmp_path / "ckpt.npz")
    assert back.optimizer_state()["velocity"].tobytes() == net.optimizer_state()["velocity"].tobytes()
    net.fit(X, Y, epochs=2, seed=2, **kw)
    back.fit(X, Y, epochs=2, seed=2, **kw)
    assert_same_model(net, back)
    # Without the saved velocity the continuation would differ.
    fresh = fio.load(tmp_path / "ckpt.npz")
    fresh.set_optimizer_state({})
    fresh.fit(X, Y, epochs=2, seed=2, **kw)
    assert fresh._theta.tobytes() != net._theta.tobytes()


def test_empty_optimizer_state_round_trip(tmp_path):
    net = make_net()
    net.fit(*data(net), epochs=1, momentum=0.9)
    assert "velocity" in net.optimizer_state()
    net.set_optimizer_state({})  # clears the velocity
    assert not net.optimizer_state()
    fio.save(net, tmp_path / "m.npz")
    back = fio.load(tmp_path / "m.npz")
    assert_same_model(net, back)
    assert not back.optimizer_state()


@pytest.mark.parametrize("opt", [
    fastbp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
    fastbp.optim.Adam(lr=0.01, amsgrad=True),
    fastbp.optim.AdamW(lr=0.02, betas=(0.8, 0.99)),
    fastbp.optim.RMSprop(momentum=0.5, centered=True),
], ids=lambda o: o.name)
def test_version_3_keeps_the_optimizer_config_step_and_arrays(tmp_path, opt):
    """The state of any optimizer, set through the model's API: its config as
    JSON, the step count and one array per state name."""
    net = make_net(dtype="float32", sizes=(4, 5, 3))
    rng = np.random.default_rng(1)
    names = [("velocity" if opt.name == "sgd" else k) for k in opt.state_names()]
    state = {"optimizer": opt.get_config(), "step": 12}
    state.update({k: rng.uniform(size=net.n_params).astype(np.float32) for k in names})
    net.set_optimizer_state(state)
    path = tmp_path / "m.npz"
    fio.save(net, path)
    with np.load(path, allow_pickle=False) as z:
        import json
        assert json.loads(str(z["optimizer_config"])) == opt.get_config()
        assert int(z["optimizer_step"]) == 12
        assert sorted(k for k in z.files if k.startswith("optimizer.")) == \
            sorted("optimizer." + k for k in names)
    got = fio.load(path).optimizer_state()
    assert got["optimizer"] == opt.get_config() and got["step"] == 12
    assert set(got) == set(state)
    for k in names:
        assert got[k].dtype == np.float32 and got[k].tobytes() == state[k].tobytes()


def _v3_state_file(tmp_path, opt=None, step=3, **arrays):
    """A good file with an optimizer_config / optimizer_step and the given arrays."""
    import json

    opt = opt or fastbp.optim.Adam()
    extra = {"optimizer_config": np.array(json.dumps(opt.get_config()))}
    if step is not None:
        extra["optimizer_step"] = np.array(step, dtype=np.int64)
    extra.update({"optimizer." + k: v for k, v in arrays.items()})
    return hostile(tmp_path, **extra)


def test_hostile_version_3_optimizer_state(tmp_path):
    import json

    n = good_arrays(sizes=(4, 3, 2))[0].n_params
    z = np.zeros(n)
    ok = dict(exp_avg=z, exp_avg_sq=z)
    assert fio.load(_v3_state_file(tmp_path, **ok)).optimizer_state()["step"] == 3
    load_error(_v3_state_file(tmp_path, exp_avg=z),
               r"needs arrays \['optimizer.exp_avg', 'optimizer.exp_avg_sq'\]")
    load_error(_v3_state_file(tmp_path, **ok, max_exp_avg_sq=z), "needs arrays")
    load_error(_v3_state_file(tmp_path, step=None, **ok), "missing key 'optimizer_step'")
    load_error(_v3_state_file(tmp_path, step=-2, **ok), "'optimizer_step' must be >= 0")
    load_error(_v3_state_file(tmp_path, exp_avg=z, exp_avg_sq=np.zeros(n + 1)),
               r"'optimizer.exp_avg_sq' has shape")
    load_error(_v3_state_file(tmp_path, exp_avg=z, exp_avg_sq=np.zeros(n, np.float32)),
               "'optimizer.exp_avg_sq' has dtype float32")
    bad = z.copy()
    bad[2] = np.inf
    load_error(_v3_state_file(tmp_path, exp_avg=z, exp_avg_sq=bad),
               "'optimizer.exp_avg_sq' contains NaN or Inf")
    load_error(_v3_state_file(tmp_path, fastbp.optim.SGD()), "keeps no state")
    for config, match in [("{not json", "not valid JSON"),
                          (json.dumps({"name": "nadam"}), "unknown optimizer name"),
                          (json.dumps({"name": "adam", "lr": -1}), "lr must be"),
                          (json.dumps({"name": "adam", "bogus": 1}), "unknown Adam"),
                          (json.dumps([1, 2]), "must be a dict"),
                          ("x" * 5000, "declares")]:
        load_error(hostile(tmp_path, optimizer_config=np.array(config),
                           optimizer_step=np.array(1), **{"optimizer." + k: v
                                                          for k, v in ok.items()}), match)
    load_error(hostile(tmp_path, optimizer_step=np.array(1)), "'optimizer_step' without")
    # Version 2 files know nothing of these keys.
    v2 = {"version": np.array(2, dtype=np.int64)}
    load_error(hostile(tmp_path, v2, optimizer_step=np.array(1)), "unexpected key 'optimizer_step'")
    load_error(hostile(tmp_path, v2, dropout=np.array([0.5])), "unexpected key 'dropout'")


def test_version_2_velocity_loads_as_sgd_momentum(tmp_path):
    net = make_net(sizes=(4, 3, 2))
    X, Y = data(net, n=20)
    net.fit(X, Y, epochs=1, batch_size=4, momentum=0.9, seed=0)
    arrays = fio._arrays_of(net)
    for key in ("optimizer_config", "optimizer_step"):
        del arrays[key]
    arrays["version"] = np.array(2, dtype=np.int64)
    np.savez(tmp_path / "v2.npz", **arrays)
    back = fio.load(tmp_path / "v2.npz")
    assert set(back.optimizer_state()) == {"velocity"}
    net.fit(X, Y, epochs=1, batch_size=4, momentum=0.9, seed=1)
    back.fit(X, Y, epochs=1, batch_size=4, momentum=0.9, seed=1)
    assert back._theta.tobytes() == net._theta.tobytes()
    with pytest.raises(ValueError, match="cannot continue"):
        back.fit(X, Y, epochs=1, optimizer=fastbp.optim.Adam())


def test_dropout_is_saved(tmp_path):
    for dropout in (0.25, (0.1, 0.5)):
        net = fastbp.MLP([4, 6, 5, 2], dropout=dropout, seed=0)
        fio.save(net, tmp_path / "m.npz")
        back = fio.load(tmp_path / "m.npz")
        assert back.dropout == dropout and repr(back) == repr(net)
    fio.save(fastbp.MLP([4, 6, 2]), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        assert "dropout" not in z.files
    for bad, match in [(np.array([0.5, 1.0]), r"probabilities in \[0, 1\)"),
                       (np.array([0.5, np.nan]), r"probabilities in \[0, 1\)"),
                       (np.array([0.5]), r"'dropout' has shape"),
                       (np.array([1, 2], dtype=np.int64), "'dropout' has dtype")]:
        arrays = fio._arrays_of(fastbp.MLP([4, 6, 5, 2], dropout=0.1))
        arrays["dropout"] = bad
        np.savez(tmp_path / "d.npz", **arrays)
        load_error(tmp_path / "d.npz", match)
    arrays = fio._arrays_of(fastbp.MLP([4, 2]))
    arrays["dropout"] = np.zeros(0)
    np.savez(tmp_path / "d.npz", **arrays)
    load_error(tmp_path / "d.npz", "no hidden layer")


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def _good_file(tmp_path):
    net = make_net(seed=11)
    path = tmp_path / "model.npz"
    fio.save(net, path)
    return net, path, path.read_bytes()


def _assert_untouched(tmp_path, path, before):
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name], "a temporary file was left behind"


def test_failure_inside_savez_keeps_old_file(tmp_path, monkeypatch):
    net, path, before = _good_file(tmp_path)
    real = np.savez

    def half_then_crash(f, **arrays):
        buf = _stdio.BytesIO()
        real(buf, **arrays)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise KeyboardInterrupt("interrupted mid-write")

    monkeypatch.setattr(fio.np, "savez", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fio.save(make_net(seed=12), path)
    _assert_untouched(tmp_path, path, before)
    assert_same_model(net, fio.load(path))


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_failure_at_commit_keeps_old_file(tmp_path, monkeypatch, target):
    net, path, before = _good_file(tmp_path)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fio.os, target, boom)
    with pytest.raises(OSError, match="No space"):
        fio.save(make_net(seed=12), path)
    monkeypatch.undo()
    _assert_untouched(tmp_path, path, before)
    assert_same_model(net, fio.load(path))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(fio.os, "replace", boom)
    with pytest.raises(OSError):
        fio.save(make_net(), tmp_path / "new.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        fio.save(make_net(), tmp_path / "no" / "such" / "dir.npz")


def test_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        fio.load(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------
# hostile and broken files
# ---------------------------------------------------------------------------


def npy_bytes(arr, allow_pickle=False):
    buf = _stdio.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=allow_pickle)
    return buf.getvalue()


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """Write a zip of members {member name: bytes or array}."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, value in members.items():
            zf.writestr(name, value if isinstance(value, bytes) else npy_bytes(value))
    return path


def good_arrays(**kw):
    net = make_net(**kw)
    return net, dict(fio._arrays_of(net))


def load_error(path, match, **kw):
    with pytest.raises(ModelFileError, match=match) as info:
        fio.load(path, **kw)
    assert isinstance(info.value, ValueError)
    return info.value


def hostile(tmp_path, change=None, drop=(), dtype="float64", bias=True, **extra):
    """A good file's arrays, with `change` applied, `drop` removed and `extra` added."""
    _, arrays = good_arrays(dtype=dtype, bias=bias, sizes=(4, 3, 2))
    for key in drop:
        del arrays[key]
    arrays.update(change or {})
    members = {k + ".npy": v for k, v in arrays.items()}
    members.update({k + ".npy": v for k, v in extra.items()})
    return write_zip(tmp_path / "bad.npz", members)


@pytest.mark.parametrize("content, match", [
    (b"", "not a readable fastbp model file"),
    (b"hello, this is not a model", "not a readable fastbp model file"),
    (b"\x00" * 1000, "not a readable fastbp model file"),
    (pickle.dumps({"weights": [1, 2, 3]}), "not a readable fastbp model file"),
    (npy_bytes(np.zeros((3, 4))), "not a readable fastbp model file"),
    (b"PK\x03\x04" + b"\xff" * 200, "not a readable fastbp model file"),
])
def test_non_npz_bytes(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    load_error(path, match)


def test_foreign_npz_without_format(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.zeros(3), b=np.ones((2, 2)))
    load_error(path, "not a fastbp model file: no 'format' key")


def test_wrong_format_name(tmp_path):
    load_error(hostile(tmp_path, {"format": np.array("keras-h5")}),
               "format is 'keras-h5', expected 'fastbp-mlp'")


def test_format_stored_as_bytes_is_rejected(tmp_path):
    load_error(hostile(tmp_path, {"format": np.array(b"fastbp-mlp")}), "'format' has dtype")


@pytest.mark.parametrize("version", [0, 4, 99, -1])
def test_unknown_version(tmp_path, version):
    load_error(hostile(tmp_path, {"version": np.array(version, dtype=np.int64)}),
               f"unsupported format version {version}")


def test_version_of_wrong_type(tmp_path):
    load_error(hostile(tmp_path, {"version": np.array(1.0)}), "'version' has dtype")
    load_error(hostile(tmp_path, {"version": np.array([1, 1])}), r"'version' has shape \(2,\)")


@pytest.mark.parametrize("key", ["version", "layer_sizes", "activation", "output", "loss",
                                 "bias", "dtype", "weight_0", "weight_1", "bias_1"])
def test_missing_key(tmp_path, key):
    load_error(hostile(tmp_path, drop=[key]), f"missing key.*'{key}'")


def test_missing_fastbp_version_is_fine(tmp_path):
    net, arrays = good_arrays()
    del arrays["fastbp_version"]
    np.savez(tmp_path / "m.npz", **arrays)
    assert_same_model(net, fio.load(tmp_path / "m.npz"))


def test_unexpected_keys(tmp_path):
    load_error(hostile(tmp_path, junk=np.zeros(2)), "unexpected key 'junk'")
    load_error(hostile(tmp_path, bias=False, bias_0=np.zeros(3)), "unexpected key 'bias_0'")
    load_error(hostile(tmp_path, **{"optimizer.bad name": np.zeros(2)}),
               "unexpected key 'optimizer.bad name'")


def test_non_npy_member_and_duplicates(tmp_path):
    _, arrays = good_arrays()
    members = {k + ".npy": v for k, v in arrays.items()}
    members["README.txt"] = b"hi"
    load_error(write_zip(tmp_path / "a.npz", members), "unexpected member 'README.txt'")
    path = tmp_path / "b.npz"
    with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "w") as zf:
            for k, v in arrays.items():
                zf.writestr(k + ".npy", npy_bytes(v))
            zf.writestr("weight_0.npy", npy_bytes(arrays["weight_0"]))
    load_error(path, "duplicate member 'weight_0.npy'")


@pytest.mark.parametrize("key, value, match", [
    ("activation", np.array("gelu"), "'activation' is 'gelu'"),
    ("output", np.array("relu"), "'output' is 'relu'"),
    ("loss", np.array("hinge"), "'loss' is 'hinge'"),
    ("dtype", np.array("float16"), "'dtype' is 'float16'"),
    ("dtype", np.array("object"), "'dtype' is 'object'"),
    ("activation", np.array("x" * 500), "'activation' declares"),
    ("activation", np.array(["relu", "tanh"]), "'activation' has shape"),
    ("bias", np.array(1), "'bias' has dtype"),
    ("loss", np.array("binary_cross_entropy"), "inconsistent model file: loss="),
    ("loss", np.array("poisson"),
     "inconsistent model file: loss='poisson' requires output='exp', got output='softmax'"),
    ("output", np.array("exp"),
     "inconsistent model file: loss='cross_entropy' requires output='softmax', got output='exp'"),
])
def test_bad_config_values(tmp_path, key, value, match):
    load_error(hostile(tmp_path, {key: value}), match)


def test_a_reader_before_poisson_refuses_it_by_name(tmp_path, monkeypatch):
    """The exp output and the poisson loss are version 3 names: a reader
    without them (the lists as they were) refuses the file, naming the value."""
    path = tmp_path / "poisson.npz"
    net = make_net(output="exp", loss="poisson")
    net.save(path)
    assert int(np.load(path)["version"]) == 3
    assert_same_model(net, fio.load(path))
    monkeypatch.setattr(fio, "_OUTPUTS", ("identity", "sigmoid", "softmax"))
    load_error(path, r"^'output' is 'exp'; expected one of 'identity', 'sigmoid', 'softmax' "
                     r"\(a newer fastbp may know it\)$")
    monkeypatch.setattr(fio, "_OUTPUTS", fio._OUTPUTS + ("exp",))
    monkeypatch.setattr(fio, "_LOSSES", ("squared_error", "binary_cross_entropy", "cross_entropy"))
    load_error(path, r"^'loss' is 'poisson'; expected one of")


@pytest.mark.parametrize("sizes, match", [
    (np.array([4]), "at least 2 entries"),
    (np.array([[4, 3, 2]]), "must be 1-D"),
    (np.array([4, 0, 2]), "must be positive"),
    (np.array([4, -3, 2]), "must be positive"),
    (np.array([4.0, 3.0, 2.0]), "'layer_sizes' has dtype"),
    (np.array([4, 3, 5]), r"'weight_1' has shape \(2, 3\), expected \(5, 3\)"),
    (np.array([4, 3, 2, 2]), "missing key.*'weight_2'"),
    (np.array([4, 3]), "unexpected key 'weight_1'"),
])
def test_bad_layer_sizes(tmp_path, sizes, match):
    load_error(hostile(tmp_path, {"layer_sizes": sizes}), match)


def test_absurd_architecture_is_refused_before_reading_parameters(tmp_path):
    huge = np.array([100_000, 100_000, 100_000], dtype=np.int64)
    load_error(hostile(tmp_path, {"layer_sizes": huge}), "more than max_params")
    load_error(hostile(tmp_path, {"layer_sizes": np.array([2**62, 2**62])}), "more than max_params")
    # The cap is adjustable.
    load_error(hostile(tmp_path), "more than max_params=10", max_params=10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wrong_parameter_shapes(tmp_path, dtype):
    _, arrays = good_arrays(dtype=dtype, sizes=(4, 3, 2))
    load_error(hostile(tmp_path, {"weight_0": arrays["weight_0"].T}, dtype=dtype),
               r"'weight_0' has shape \(4, 3\), expected \(3, 4\)")
    load_error(hostile(tmp_path, {"bias_1": np.zeros((2, 1), dtype)}, dtype=dtype),
               r"'bias_1' has shape \(2, 1\), expected \(2,\)")
    load_error(hostile(tmp_path, {"weight_1": arrays["weight_1"].ravel()}, dtype=dtype),
               r"'weight_1' has shape \(6,\)")


@pytest.mark.parametrize("value, match", [
    (np.zeros((3, 4), np.float32), "'weight_0' has dtype float32, expected 8-byte"),
    (np.zeros((3, 4), np.int64), "'weight_0' has dtype int64, expected kind 'f'"),
    (np.zeros((3, 4), np.complex128), "'weight_0' has dtype complex128"),
    (np.zeros((3, 4), "U3"), "'weight_0' has dtype <U3"),
    (np.zeros((3, 4), [("a", "f4"), ("b", "f4")]), "structured dtype"),
])
def test_wrong_parameter_dtypes(tmp_path, value, match):
    load_error(hostile(tmp_path, {"weight_0": value}), match)


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    calls = []

    def trap(*args, **kwargs):
        calls.append(args)
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "Unpickler", trap)
    obj = np.empty((3, 4), dtype=object)
    obj[...] = 1.0
    pickled = {
        "weight_0": npy_bytes(obj, allow_pickle=True),
        "format": npy_bytes(np.array("fastbp-mlp", dtype=object), allow_pickle=True),
        "layer_sizes": npy_bytes(np.array([4, 3, 2], dtype=object), allow_pickle=True),
    }
    for key, member in pickled.items():
        load_error(hostile(tmp_path, {key: member}), f"'{key}' is an object array")
    load_error(hostile(tmp_path, **{"optimizer.velocity": pickled["weight_0"]}),
               "'optimizer.velocity' is an object array")
    assert calls == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["weight_0", "bias_1", "weight_1"])
def test_non_finite_parameters(tmp_path, bad, key):
    _, arrays = good_arrays(sizes=(4, 3, 2))
    value = arrays[key].copy()
    value.flat[1] = bad
    load_error(hostile(tmp_path, {key: value}), f"'{key}' contains NaN or Inf")


def test_bad_optimizer_state(tmp_path):
    net, arrays = good_arrays(sizes=(4, 3, 2))
    n = net.n_params
    load_error(hostile(tmp_path, **{"optimizer.velocity": np.zeros(n + 1)}),
               r"'optimizer.velocity' has shape")
    load_error(hostile(tmp_path, **{"optimizer.velocity": np.zeros(n, np.float32)}),
               r"'optimizer.velocity' has dtype float32")
    v = np.zeros(n)
    v[3] = np.nan
    load_error(hostile(tmp_path, **{"optimizer.velocity": v}), "'optimizer.velocity' contains NaN")
    load_error(hostile(tmp_path, **{"optimizer.other": np.array(["s"])}),
               r"without 'optimizer_config' the only optimizer array is 'optimizer.velocity'")
    v2 = {"version": np.array(2, dtype=np.int64)}  # versions 1 and 2 read any optimizer.* array
    load_error(hostile(tmp_path, v2, **{"optimizer.other": np.array(["s"])}),
               "'optimizer.other' has dtype")


def test_optimizer_state_without_model_support(tmp_path, monkeypatch):
    net, _ = good_arrays(sizes=(4, 3, 2))
    for name in ("set_optimizer_state",):
        if hasattr(fastbp.MLP, name):
            monkeypatch.delattr(fastbp.MLP, name)
    path = hostile(tmp_path, **{"optimizer.velocity": np.zeros(net.n_params)})
    load_error(path, "holds optimizer state .*velocity.* cannot restore")


def test_optimizer_state_rejected_by_the_model(tmp_path, monkeypatch):
    def refuse(self, state):
        raise ValueError("velocity has the wrong length")

    monkeypatch.setattr(fastbp.MLP, "set_optimizer_state", refuse, raising=False)
    net, _ = good_arrays(sizes=(4, 3, 2))
    path = hostile(tmp_path, **{"optimizer.velocity": np.zeros(net.n_params)})
    load_error(path, "bad optimizer state: velocity has the wrong length")


def _raw_npy(header_dict_text, data=b"", version=(1, 0)):
    """An .npy member with a hand-written header."""
    h = header_dict_text.encode("latin1")
    if version == (1, 0):
        pad = 64 - (10 + len(h) + 1) % 64
        h = h + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data
    pad = 64 - (12 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return bytes([0x93]) + b"NUMPY" + bytes(version) + len(h).to_bytes(4, "little") + h + data


def test_huge_declared_array_is_refused_without_allocating(tmp_path):
    big = _raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }",
                   b"\x00" * 64)
    load_error(hostile(tmp_path, **{"optimizer.velocity": big}), "'optimizer.velocity' has shape")
    v2 = {"version": np.array(2, dtype=np.int64)}
    load_error(hostile(tmp_path, v2, **{"optimizer.other": big}), "'optimizer.other' declares")
    load_error(hostile(tmp_path, {"layer_sizes": big}), "'layer_sizes' has dtype")
    neg = _raw_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (-1,), }", b"\x00" * 64)
    load_error(hostile(tmp_path, {"layer_sizes": neg}), "negative dimension")
    load_error(hostile(tmp_path, v2, **{"optimizer.other": neg}), "negative dimension")
    load_error(hostile(tmp_path, **{"optimizer.velocity": neg}), "negative dimension")
    huge_str = _raw_npy("{'descr': '<U100000', 'fortran_order': False, 'shape': (), }")
    load_error(hostile(tmp_path, {"activation": huge_str}), "'activation' declares")
    load_error(hostile(tmp_path, {"weight_0": big}), r"'weight_0' has shape \(1000000000000,\)")


def test_zip_bomb_member_is_read_only_up_to_the_declared_size(tmp_path):
    # A deflated member of correct header but a gigabyte of trailing zeros:
    # the reader stops after the declared data and refuses the trailing bytes.
    _, arrays = good_arrays(sizes=(4, 3, 2))
    bomb = npy_bytes(arrays["weight_0"]) + b"\x00" * (64 << 20)
    members = {k + ".npy": v for k, v in arrays.items()}
    members["weight_0.npy"] = bomb
    path = write_zip(tmp_path / "bomb.npz", members, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < (2 << 20)
    load_error(path, "'weight_0' has trailing bytes")


@pytest.mark.parametrize("header, match", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", "'weight_0' is truncated"),
    ("{'descr': '<f8', 'fortran_order': False}", "bad .npy header"),
    ("not a dict at all", "bad .npy header"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (3, 4), }", "object array"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3, -4), }", "negative dimension"),
    ("__import__('os').system('echo pwned')", "bad .npy header"),
])
def test_malformed_npy_headers(tmp_path, header, match):
    load_error(hostile(tmp_path, {"weight_0": _raw_npy(header, b"\x00" * 16)}), match)


def test_unsupported_npy_versions(tmp_path):
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }"
    load_error(hostile(tmp_path, {"weight_0": _raw_npy(hdr, b"\x00" * 96, (2, 0))}),
               r"unsupported .npy format version \(2, 0\)")
    load_error(hostile(tmp_path, {"weight_0": b"\x93NUMPY\x09\x00" + b"\x00" * 100}),
               r"unsupported .npy format version \(9, 0\)")
    load_error(hostile(tmp_path, {"weight_0": b"garbage" * 20}), "'weight_0' is not a .npy array")


def test_trailing_bytes_in_member(tmp_path):
    _, arrays = good_arrays(sizes=(4, 3, 2))
    load_error(hostile(tmp_path, {"weight_0": npy_bytes(arrays["weight_0"]) + b"\x01"}),
               "'weight_0' has trailing bytes")


def test_encrypted_flag_and_odd_compression_are_refused(tmp_path):
    _, arrays = good_arrays(sizes=(4, 3, 2))
    path = write_zip(tmp_path / "b.npz", {k + ".npy": v for k, v in arrays.items()},
                     compression=zipfile.ZIP_BZIP2)
    load_error(path, "unsupported compression method")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_truncation_is_refused(tmp_path, dtype):
    net = make_net(dtype=dtype, sizes=(4, 3, 2))
    good = tmp_path / "good.npz"
    fio.save(net, good)
    blob = good.read_bytes()
    bad = tmp_path / "cut.npz"
    for n in range(0, len(blob), 7):
        bad.write_bytes(blob[:n])
        with pytest.raises(ModelFileError):
            fio.load(bad)


def test_every_single_byte_corruption_is_refused_or_harmless(tmp_path):
    """Flip each byte: the load fails with ModelFileError or yields the same model.

    (Some bytes, such as zip timestamps, do not matter; every byte that does
    is covered by a CRC, a header check or a key check.)
    """
    net = make_net(dtype="float32", sizes=(3, 2, 2))
    good = tmp_path / "good.npz"
    fio.save(net, good)
    blob = bytearray(good.read_bytes())
    bad = tmp_path / "flip.npz"
    refused = 0
    for i in range(len(blob)):
        corrupt = bytearray(blob)
        corrupt[i] ^= 0xA5
        bad.write_bytes(bytes(corrupt))
        try:
            back = fio.load(bad)
        except ModelFileError:
            refused += 1
        else:
            assert_same_model(net, back)
    assert refused > len(blob) // 2


def test_pathlib_and_error_type():
    assert issubclass(ModelFileError, ValueError)
    assert fio.FORMAT_NAME == "fastbp-mlp"
    assert isinstance(pathlib.Path("x"), os.PathLike)  # save/load take Path (tmp_path) and str


# ---------------------------------------------------------------------------
# feature names (format version 2)
# ---------------------------------------------------------------------------


def named_net(names=("a", "b", "c", "d", "e")):
    net = make_net()
    net.feature_names_in_ = list(names)
    return net


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_feature_names_round_trip(tmp_path):
    net = named_net(["a", "b b", "ünï", "x" * 300, ""])
    fio.save(net, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["feature_names_in"].dtype.kind == "U"
        assert list(z["feature_names_in"]) == list(net.feature_names_in_)
    back = fio.load(tmp_path / "m.npz")
    assert_same_model(net, back)
    assert back.feature_names_in_.dtype == object
    assert list(back.feature_names_in_) == ["a", "b b", "ünï", "x" * 300, ""]
    # A model without names writes no names key, and loads without names.
    fio.save(make_net(), tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as z:
        assert "feature_names_in" not in z.files
    assert not hasattr(fio.load(tmp_path / "plain.npz"), "feature_names_in_")


def test_feature_names_of_a_data_frame_survive_save_and_pickle(tmp_path):
    pd = pytest.importorskip("pandas")
    net = make_net()
    X, Y = data(net, n=12)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    net.fit(frame, Y, epochs=1)
    net.save(tmp_path / "m.npz")
    for back in (fastbp.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(net))):
        assert list(back.feature_names_in_) == list(frame.columns)
        with pytest.raises(ValueError, match="same order"):
            back.predict(frame[frame.columns[::-1]])
        np.testing.assert_array_equal(back.predict(frame), net.predict(frame))


def test_version_1_files_still_load(tmp_path):
    net = make_net()
    arrays = fio._arrays_of(net)
    arrays["version"] = np.array(1, dtype=np.int64)
    np.savez(tmp_path / "v1.npz", **arrays)
    back = fio.load(tmp_path / "v1.npz")
    assert_same_model(net, back)
    assert not hasattr(back, "feature_names_in_")
    # Names are not part of version 1: such a file is foreign or tampered.
    load_error(hostile(tmp_path, {"version": np.array(1, dtype=np.int64)},
                       feature_names_in=np.array(["a", "b", "c", "d"])),
               "unexpected key 'feature_names_in'")


def test_pickles_without_feature_names_still_load():
    net = make_net()
    state = net.__getstate__()
    assert "feature_names_in_" not in state  # as an older fastbp pickled it
    back = fastbp.MLP.__new__(fastbp.MLP)
    back.__setstate__(state)
    assert_same_model(net, back)
    assert not hasattr(back, "feature_names_in_")


@pytest.mark.parametrize("names, match", [
    (np.array(["a", "b", "c"]), r"'feature_names_in' has shape \(3,\), expected \(4,\)"),
    (np.array([b"a", b"b", b"c", b"d"]), "'feature_names_in' has dtype"),
    (np.array([1, 2, 3, 4]), "'feature_names_in' has dtype"),
    (np.array("abcd"), r"'feature_names_in' has shape \(\), expected \(4,\)"),
    (np.array(["a" * 2000, "b", "c", "d"]), "'feature_names_in' declares .* bytes"),
])
def test_bad_feature_names_in_a_file(tmp_path, names, match):
    load_error(hostile(tmp_path, feature_names_in=names), match)


def test_names_that_cannot_be_stored_are_refused_before_writing(tmp_path):
    net = named_net(["a", "b", "c", "d", "e\0"])
    with pytest.raises(ValueError, match="cannot be stored"):
        fio.save(net, tmp_path / "m.npz")
    assert not os.listdir(tmp_path)
