"""Tests of the command line: ``python -m fastbp {demo,train,predict,bench,digits}``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest

from fastbp import cli
from fastbp._data import DataError, Preprocessor, infer_task, load_training_data

ROOT = Path(__file__).resolve().parent.parent


def run(argv: Sequence[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(argv: Sequence[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if
                                                       env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "fastbp", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> List[List[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    """A small 3-class CSV with string labels and named features."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [4, 0], [0, 4]], dtype=float)
    y = rng.integers(0, 3, 300)
    X = centres[y] + rng.normal(0, 0.7, (300, 2)) + 100  # offset: scaling must matter
    names = np.array(["cat", "dog", "emu"])[y]
    return write_csv(tmp_path / "blobs.csv", ["width", "height", "animal"],
                     [[f"{a:.4f}", f"{b:.4f}", n] for (a, b), n in zip(X, names)])


@pytest.fixture
def regression_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    y = 50 + 10 * X[:, 0] - 5 * X[:, 1] + 3 * np.tanh(X[:, 2])
    return write_csv(tmp_path / "houses.csv", ["a", "b", "c", "price"],
                     [[*r, t] for r, t in zip(X.round(5), y.round(5))])


# -- demo and help ------------------------------------------------------------------------


def test_demo_runs_as_module_with_its_output_format() -> None:
    r = run_subprocess(["demo", "--epochs", "3", "--samples", "400"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fastbp demo: the four-pixel images (solid, vertical,")
    assert lines[1].startswith("MLP([4, 16, 4]") and "400 training / 100 test images" in lines[1]
    assert [ln.split()[:2] for ln in lines[2:5]] == [["epoch", "1"], ["epoch", "2"], ["epoch", "3"]]
    assert lines[5].startswith("test accuracy ")


@pytest.mark.parametrize("command", ["demo", "train", "predict", "digits"])
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: python -m fastbp {command}")


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("demo", "train", "predict", "bench", "digits"):
        assert command in out


def test_main_is_the_console_script_entry_point() -> None:
    from fastbp.__main__ import main

    assert main is cli.main


# -- train and predict ----------------------------------------------------------------------


def test_train_predict_classifier_with_string_labels(blobs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(["train", blobs, "--target", "animal", "--hidden", "16",
                          "--epochs", "15", "--lr", "0.05", "-q"], capsys)
    assert code == 0, err
    assert "task: classification, 3 classes (inferred" in out and "non-numeric" in out
    assert out.count("accuracy") == 2  # train and validation lines
    model, side = tmp_path / "blobs.fastbp.npz", tmp_path / "blobs.fastbp.json"
    assert model.is_file() and side.is_file()
    meta = json.loads(side.read_text())
    assert meta["classes"] == ["cat", "dog", "emu"]
    assert meta["features"] == ["width", "height"] and meta["target"] == "animal"
    assert meta["x_mean"][0] == pytest.approx(101.3, abs=1.0)  # the scaler is stored

    preds = tmp_path / "preds.csv"
    code, out, err = run(["predict", model, blobs, "--output", preds, "--proba"], capsys)
    assert code == 0, err
    rows = read_csv(preds)
    assert rows[0] == ["animal", "p(cat)", "p(dog)", "p(emu)"]
    truth = [r[2] for r in read_csv(blobs)[1:]]
    assert len(rows) == len(truth) + 1
    assert np.mean([r[0] == t for r, t in zip(rows[1:], truth)]) > 0.95
    p = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert "accuracy" in out and "against column 'animal'" in out


def test_predict_to_stdout_and_from_the_sidecar(blobs: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "m.npz"
    assert run(["train", blobs, "-o", model, "--epochs", "2", "-q"], capsys)[0] == 0
    assert (tmp_path / "m.json").is_file()  # default target: the last column
    code, out, err = run(["predict", tmp_path / "m.json", blobs], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "animal" and len(lines) == 301
    assert set(lines[1:]) <= {"cat", "dog", "emu"}
    assert "against column 'animal'" in err  # the score goes to stderr, not into the CSV


def test_regression_is_inferred_and_values_come_back_in_target_units(
        regression_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(["train", regression_csv, "--target", "price", "--epochs", "40",
                          "--dtype", "float64", "--threads", "1", "-q"], capsys)
    assert code == 0, err
    assert "task: regression (inferred" in out and "r2" in out and "rmse" in out
    side = json.loads((tmp_path / "houses.fastbp.json").read_text())
    assert side["task"] == "regress" and side["y_mean"][0] == pytest.approx(50, abs=2)
    preds = tmp_path / "p.csv"
    code, out, err = run(["predict", tmp_path / "houses.fastbp.npz", regression_csv, "-o",
                          preds], capsys)
    assert code == 0, err
    pred = np.array([float(r[0]) for r in read_csv(preds)[1:]])
    truth = np.array([float(r[3]) for r in read_csv(regression_csv)[1:]])
    assert 1 - np.mean((pred - truth) ** 2) / truth.var() > 0.95


def test_task_override_and_npz_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0)  # 4 integer values
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=y)
    code, out, _ = run(["train", data, "--epochs", "2", "-q", "--validation-split", "0"], capsys)
    assert code == 0 and "classification, 4 classes" in out and "validation:" not in out
    code, out, _ = run(["train", data, "--task", "regress", "--epochs", "2", "-q"], capsys)
    assert code == 0 and "task: regression (chosen with --task)" in out
    np.savez(tmp_path / "new.npz", X=X[:5])  # predict needs only X
    code, out, err = run(["predict", tmp_path / "d.fastbp.npz", tmp_path / "new.npz"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 6 and "against" not in err


def test_plot_and_training_options(blobs: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    code, out, err = run(["train", blobs, "--epochs", "30", "--momentum", "0.5", "--nesterov",
                          "--weight-decay", "1e-4", "--schedule", "cosine", "--early-stopping",
                          "--patience", "2", "--activation", "tanh", "--hidden", "8,8",
                          "--plot", png, "-q"], capsys)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
    options = json.loads((tmp_path / "blobs.fastbp.json").read_text())["training"]["options"]
    assert options["hidden"] == [8, 8] and options["schedule"] == "cosine"


def test_progress_is_shown_by_default(blobs: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(["train", blobs, "--epochs", "2"], capsys)
    assert code == 0
    assert "epoch" in err or "epoch" in out


def test_infer_task() -> None:
    assert infer_task(np.array(["a", "b", "a"]))[0] == "classify"
    assert infer_task(np.array([0.0, 1.0, 2.0, 1.0]))[0] == "classify"
    assert infer_task(np.arange(100.0))[0] == "regress"  # many distinct integers
    assert infer_task(np.array([0.5, 1.0, 2.0]))[0] == "regress"
    assert infer_task(np.zeros((5, 2)))[0] == "regress"


def test_preprocessor_round_trip(tmp_path: Path) -> None:
    X = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    pre = Preprocessor.fit(X, np.array([3.0, 1.0, 3.0]), "classify", ["a", "b"], "t")
    assert pre.classes == ["1", "3"]
    np.testing.assert_allclose(pre.transform(X)[:, 1], 0.0)  # a constant column is centred
    pre.save(tmp_path / "s.json")
    again = Preprocessor.load(tmp_path / "s.json")
    assert again == pre
    np.testing.assert_array_equal(again.encode(np.array([1.0, 3.0])), [0, 1])
    with pytest.raises(DataError, match="unknown class"):
        again.encode(np.array([7.0]))


# -- errors: one line, status 2, never a traceback -------------------------------------------


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastbp: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    write_csv(tmp_path / "text_feature.csv", ["a", "b", "y"], [[1, 2, 0], [3, "zz", 1]])
    write_csv(tmp_path / "empty_cell.csv", ["a", "b", "y"], [[1, 2, 0], [3, "", 1]])
    write_csv(tmp_path / "nan.csv", ["a", "b", "y"], [[1, 2, 0], [3, "nan", 1]])
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,0\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("a,b,y\n")
    (tmp_path / "dup.csv").write_text("a,a,y\n1,2,0\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd")
    (tmp_path / "garbage.npz").write_text("not a zip")
    np.savez(tmp_path / "no_y.npz", X=np.zeros((3, 2)))
    np.savez(tmp_path / "one_class.npz", X=np.arange(6.0).reshape(3, 2), y=np.array(["a"] * 3))
    write_csv(tmp_path / "ok.csv", ["a", "b", "y"], [[i, i % 3, i % 2] for i in range(20)])
    write_csv(tmp_path / "words.csv", ["a", "b", "y"], [[i, i % 3, "xy"[i % 2]]
                                                        for i in range(20)])
    return tmp_path


@pytest.mark.parametrize("argv, fragments", [
    (["train", "missing.csv"], ["missing.csv: no such file"]),
    (["train", "."], ["is a directory"]),
    (["train", "text_feature.csv"], ["line 3", "column 'b'", "'zz' is not a number"]),
    (["train", "empty_cell.csv"], ["line 3", "column 'b'", "missing value"]),
    (["train", "nan.csv"], ["line 3", "not a finite number"]),
    (["train", "ragged.csv"], ["line 3", "2 fields"]),
    (["train", "empty.csv"], ["empty file"]),
    (["train", "header_only.csv"], ["no data rows"]),
    (["train", "dup.csv"], ["duplicate column"]),
    (["train", "binary.csv"], ["not a UTF-8 text CSV"]),
    (["train", "garbage.npz"], ["not an .npz file"]),
    (["train", "no_y.npz"], ["no array named 'y'"]),
    (["train", "one_class.npz"], ["single class"]),
    (["train", "ok.csv", "--target", "nope"], ["no column named 'nope'"]),
    (["train", "words.csv", "--task", "regress"], ["cannot regress", "not numeric"]),
    (["train", "ok.csv", "--hidden", "64,x"], ["--hidden", "64,x"]),
    (["train", "ok.csv", "--hidden", "-3"], ["--hidden"]),
    (["train", "ok.csv", "--lr", "-1"], ["--lr"]),
    (["train", "ok.csv", "--lr", "nan"], ["--lr"]),
    (["train", "ok.csv", "--epochs", "0"], ["--epochs", "must be >= 1"]),
    (["train", "ok.csv", "--epochs", "ten"], ["--epochs", "not an integer"]),
    (["train", "ok.csv", "--validation-split", "1"], ["--validation-split"]),
    (["train", "ok.csv", "--momentum", "1.5"], ["--momentum"]),
    (["train", "ok.csv", "--activation", "softsign"], ["--activation", "invalid choice"]),
    (["train", "ok.csv", "--dtype", "float16"], ["--dtype"]),
    (["train", "ok.csv", "--threads", "-2"], ["--threads"]),
    (["train", "ok.csv", "--early-stopping", "--validation-split", "0"], ["--early-stopping"]),
    (["train", "ok.csv", "-o", "no/such/dir/m.npz"], ["does not exist"]),
    (["train", "ok.csv", "--lr", "1e30", "-q"], ["NaN or Inf"]),
    (["train"], ["required", "DATA"]),
    (["predict", "missing.npz", "ok.csv"], ["missing.npz: no such model file"]),
    (["predict", "garbage.npz", "ok.csv"], ["garbage.json", "sidecar"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["required"]),
])
def test_errors_are_one_line(argv: List[str], fragments: List[str], bad_files: Path,
                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
                             ) -> None:
    monkeypatch.chdir(bad_files)
    code, _, err = run(argv, capsys)
    _assert_one_line_error(code, err, *fragments)


def test_predict_errors(bad_files: Path, capsys: pytest.CaptureFixture,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bad_files)
    assert run(["train", "ok.csv", "-o", "m.npz", "--epochs", "1", "-q"], capsys)[0] == 0
    _assert_one_line_error(*run(["predict", "m.npz", "missing.csv"], capsys)[::2],
                           "missing.csv: no such file")
    write_csv(bad_files / "other.csv", ["a", "c"], [[1, 2]])
    _assert_one_line_error(*run(["predict", "m.npz", "other.csv"], capsys)[::2],
                           "missing feature column(s) 'b'")
    _assert_one_line_error(*run(["predict", "m.npz", "text_feature.csv"], capsys)[::2],
                           "'zz' is not a number")
    _assert_one_line_error(*run(["predict", "m.npz", "ok.csv", "-o", "nodir/p.csv"],
                                capsys)[::2], "does not exist")
    np.savez(bad_files / "wide.npz", X=np.zeros((2, 5)))
    _assert_one_line_error(*run(["predict", "m.npz", "wide.npz"], capsys)[::2],
                           "X has 5 columns, the model expects 2")
    (bad_files / "m.json").write_text("{not json")
    _assert_one_line_error(*run(["predict", "m.npz", "ok.csv"], capsys)[::2], "m.json")
    (bad_files / "m.json").write_text("{}")
    (bad_files / "m.npz").write_bytes(b"PK\x03\x04 truncated")
    _assert_one_line_error(*run(["predict", "m.npz", "ok.csv"], capsys)[::2], "m.json")


def test_error_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    r = run_subprocess(["train", tmp_path / "missing.csv", "--target", "y"])
    assert r.returncode == 2
    assert r.stderr.strip() == f"fastbp: error: {tmp_path / 'missing.csv'}: no such file"


def test_load_training_data_keeps_numeric_and_string_targets(bad_files: Path) -> None:
    numeric = load_training_data(bad_files / "ok.csv", "y")
    assert numeric.y.dtype == np.float64 and numeric.features == ["a", "b"]
    words = load_training_data(bad_files / "words.csv")
    assert words.y.dtype.kind == "U" and words.X.shape == (20, 2)


# -- bench ---------------------------------------------------------------------------------


def test_bench_passes_its_arguments_to_the_harness(capfd: pytest.CaptureFixture) -> None:
    if cli.find_bench() is None:
        pytest.skip("no bench/ next to this fastbp")
    assert cli.main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: python -m bench" in out and "--quick" in out


def test_bench_without_the_harness_says_so(capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "find_bench", lambda: None)
    _assert_one_line_error(*run(["bench", "--quick"], capsys)[::2], "bench/", "source checkout")


# -- a real data set: scikit-learn's digits ------------------------------------------------------


def test_digits_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    header = [f"pixel{j}" for j in range(64)] + ["digit"]
    train, test = order[:1400], order[1400:]
    write_csv(tmp_path / "train.csv", header, [[*X[i].astype(int), y[i]] for i in train])
    write_csv(tmp_path / "test.csv", header, [[*X[i].astype(int), y[i]] for i in test])
    code, out, err = run(["train", tmp_path / "train.csv", "--target", "digit", "--hidden", "64",
                          "--epochs", "20", "-q"], capsys)
    assert code == 0, err
    assert "task: classification, 10 classes" in out
    code, _, err = run(["predict", tmp_path / "train.fastbp.npz", tmp_path / "test.csv", "-o",
                        tmp_path / "pred.csv"], capsys)
    assert code == 0, err
    pred = [r[0] for r in read_csv(tmp_path / "pred.csv")[1:]]
    accuracy = np.mean([p == str(t) for p, t in zip(pred, y[test])])
    assert accuracy > 0.9


def test_digits_command_compares_with_sklearn(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    code, out, err = run(["digits", "--epochs", "5", "--threads", "1"], capsys)
    assert code == 0, err
    rows = {ln.rsplit(None, 2)[0]: float(ln.split()[-2]) for ln in out.splitlines()[2:]}
    assert rows["fastbp.MLP (SGD)"] > 0.9
    assert "sklearn MLPClassifier (same SGD)" in rows
