"""The command line: ``python -m fastbp {demo,train,predict,bench,digits,export}``.

``train`` fits a network to a CSV or .npz file and writes two files: the model
(``MODEL.npz``, the format of :mod:`fastbp.io`) and a sidecar ``MODEL.json``
with what ``predict`` needs to use it on raw data: the task, the feature and
target names, the feature scaler, and the class names (classification) or the
target scaler (regression); plus the training options and final metrics, for
the record.

Reading the data (delimiter detection, decimal commas, column selection,
missing values, task inference) is :mod:`fastbp._data`'s; the progress display
is :mod:`fastbp._progress`'s.  ``train`` refuses to overwrite an existing model
or sidecar unless given ``--force``.

Every error the user can cause (a missing or malformed file, an unknown
column, a missing value, a bad option value, ...) is reported as one line,
``fastbp: error: ...``, with exit status 2; never a traceback.  Things that
look wrong but do not stop the command are ``fastbp: warning: ...`` lines on
standard error.
"""
from __future__ import annotations

import argparse
import csv
import io as _stdio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

import numpy as np

from ._data import (Preprocessor, as_class_names, class_names, infer_task,
                    load_features, load_training_data, sep_name)
from ._progress import format_value

PROG = "python -m fastbp"
ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
SCHEDULES = ("constant", "step", "invscaling", "cosine")

#: Exit status of every reported error (as argparse uses for usage errors).
EXIT_ERROR = 2


class CLIError(Exception):
    """An error to report as ``fastbp: error: <message>`` and exit status 2."""


# -- argument parsing ------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``fastbp: error: ...``."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see {self.prog} --help)"
        _print_error(message + hint)
        raise SystemExit(EXIT_ERROR)


def _print_error(message: str) -> None:
    print(f"fastbp: error: {' '.join(str(message).split())}", file=sys.stderr)


def _print_warning(message: str) -> None:
    print(f"fastbp: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {low}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_in(low: float, high: float, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"{text!r}: must be in {lo}{low:g}, {high:g}{hi}")
        return value

    parse.__name__ = "number"
    return parse


def _positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, eps)."""
    return _float_in(0, float("inf"), low_open=True, high_open=True)(text)


_positive_float.__name__ = "number"


def _add_sgd_options(p: argparse.ArgumentParser, epochs: int) -> None:
    """--epochs, --batch-size, --lr and --momentum of plain SGD (the digits comparison)."""
    p.add_argument("--epochs", type=_int_at_least(1), default=epochs,
                   help=f"epochs (default {epochs})")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32,
                   help="mini-batch size (default 32)")
    p.add_argument("--lr", type=_positive_float, default=0.01,
                   help="learning rate (default 0.01)")
    p.add_argument("--momentum", type=_float_in(0, 1, high_open=True), default=0.9,
                   help="SGD momentum (default 0.9; 0 for plain SGD)")


def _betas(text: str) -> Tuple[float, float]:
    """``"0.9,0.999"`` -> ``(0.9, 0.999)``, each in [0, 1)."""
    parts = text.split(",")
    unit = _float_in(0, 1, high_open=True)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two numbers such as 0.9,0.999")
    return unit(parts[0].strip()), unit(parts[1].strip())


#: ``--optimizer`` choices: (fastbp.optim class name, the hyper-parameters `train`
#: gives it unless told otherwise (the rest are torch's defaults), and the options
#: that apply to it besides --lr and --weight-decay).  AdamW's weight decay of 1 (torch's
#: default is 0.01) and the other defaults of TRAIN_DEFAULTS were chosen by measurement
#: (tools/cli_defaults_check.py, on splits the reported table does not use).
OPTIMIZERS: Dict[str, Tuple[str, Dict[str, float], Tuple[str, ...]]] = {
    "adam": ("Adam", {"lr": 1e-3}, ("betas", "eps")),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 1.0}, ("betas", "eps")),
    "sgd": ("SGD", {"lr": 0.01, "momentum": 0.9}, ("momentum", "nesterov")),
    "rmsprop": ("RMSprop", {"lr": 1e-3}, ("momentum", "eps")),
}

#: Hyper-parameters that `train` gives the optimizer instead, for a regression target
#: (squared error on the standardised target): AdamW's weight decay 2.  Chosen by
#: measurement as the rest: on the selection splits of tools/cli_defaults_check.py,
#: diabetes met its target in 27 of 36 runs with decay 1, 32 with 1.5, 35 with 2,
#: 32 with 3.
REGRESSION_DEFAULTS: Dict[str, Dict[str, float]] = {"adamw": {"weight_decay": 2.0}}

#: Defaults of `train` besides the optimizer's hyper-parameters.  ``refit`` (train
#: again on every row for the epochs early stopping picked) won on the selection runs
#: of tools/cli_defaults_check.py: 122 of the 144 classification targets against 115,
#: every data set's mean up; ``average`` (checkpoint averaging) did not (113).
#: ``label_smoothing`` 0.05 (classification only) then met 124 of 144 (breast cancer
#: 36/36 instead of 34/36; digits' mean 0.9833 instead of 0.9798; 0.1 met 122, 0.2
#: 121); dropout 0.1 (122), a cosine schedule (116), a Yeo-Johnson transform of the
#: features (107) and an ensemble of 5 seeds (124, with wine's and breast cancer's
#: means down, at 5 times the cost) did not win.
#:
#: Then, for breast cancer's miss on split 0 (its fit ran all 200 epochs and kept epoch
#: 186, so the cap looked binding), twelve candidates on the same selection runs
#: (classification targets met of 144; means of iris, wine, breast cancer, digits),
#: against these defaults' 124 (0.9452 16/36, 0.9883, 0.9782, 0.9833, the last three
#: 36/36); none won, so none was run on seeds 3, 4 or split 0: 400 epochs 123 (0.9547
#: but 15/36, 0.9840, 0.9786, 0.9831), 300 epochs 123 (0.9510, 0.9846, 0.9788, 0.9827),
#: 400 epochs with patience 100 122, lr 2e-3 120 (breast cancer 33/36), weight decay
#: 0.5 119 (wine 33/36), 128 hidden units 120 (wine 32/36, breast cancer 0.9798, digits
#: 0.9861), two hidden layers of 64 116, batches of 32 for 400 epochs 121, validation
#: split 0.3 123 (wine 0.9870), a refit for early stopping's number of optimizer steps
#: (epochs x train rows / all rows) instead of its epochs 123 (wine 0.9901, breast
#: cancer 35/36; with 400 epochs 122), and the kept epoch picked by validation accuracy
#: with the loss breaking ties 118 (iris 0.9291).  The last two were measured with a
#: patch not kept.  Iris's count barely moves: its misses are whole splits (3, 4, 5, 8,
#: 9, 12 under every candidate), where 0.95 of 38 test rows allows one error.
TRAIN_DEFAULTS = {"optimizer": "adamw", "epochs": 200, "patience": 50, "batch_size": 16,
                  "refit": True, "average": 1, "label_smoothing": 0.05}


def _add_optimizer_options(p: argparse.ArgumentParser) -> None:
    """``train``'s --optimizer and its hyper-parameters, --epochs, --batch-size."""
    d = TRAIN_DEFAULTS

    def default(option: str, fallback: str) -> str:
        values = [f"{name} {kw[option]:g}" + (
            f" ({REGRESSION_DEFAULTS[name][option]:g} for regression)"
            if option in REGRESSION_DEFAULTS.get(name, {}) else "")
            for name, (_, kw, _) in OPTIMIZERS.items() if option in kw]
        return ", ".join(values) + (f"; {fallback}" if fallback else "")

    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=d["optimizer"],
                   help=f"the optimizer, as torch.optim's (default {d['optimizer']})")
    p.add_argument("--epochs", type=_int_at_least(1), default=d["epochs"],
                   help=f"most epochs to train (default {d['epochs']}; early stopping can "
                   "end sooner, and keeps the epoch of the lowest validation loss)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=d["batch_size"],
                   help=f"mini-batch size (default {d['batch_size']})")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"learning rate (default per optimizer: {default('lr', '')})")
    p.add_argument("--momentum", type=_float_in(0, 1, high_open=True), default=None,
                   help="momentum of sgd or rmsprop (default "
                   f"{default('momentum', 'rmsprop 0')})")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    p.add_argument("--betas", type=_betas, default=None, metavar="B1,B2",
                   help="adam/adamw moment decay rates (default 0.9,0.999)")
    p.add_argument("--eps", type=_positive_float, default=None,
                   help="adam/adamw/rmsprop denominator term (default 1e-8)")
    p.add_argument("--weight-decay", type=_float_in(0, float("inf"), high_open=True),
                   default=None,
                   help="weight decay, biases included: decoupled for adamw (each step "
                   "shrinks the parameters by lr*decay), an L2 term in the gradient for the "
                   f"others (default {default('weight_decay', 'others 0')})")


def make_optimizer(args: argparse.Namespace, task: str = "classify") -> Any:
    """The :mod:`fastbp.optim` object ``train``'s options describe.

    Parameters
    ----------
    args : argparse.Namespace
        ``train``'s options.
    task : {"classify", "regress"}
        For ``"regress"``, :data:`REGRESSION_DEFAULTS` replace the optimizer's
        defaults (options given on the command line still win).

    Raises
    ------
    CLIError
        When an option does not apply to ``--optimizer`` (e.g. ``--momentum``
        with adam), or a combination is invalid (``--nesterov`` without momentum).
    """
    from . import optim

    cls_name, defaults, own = OPTIMIZERS[args.optimizer]
    given = {"momentum": args.momentum is not None, "nesterov": bool(args.nesterov),
             "betas": args.betas is not None, "eps": args.eps is not None}
    for option, is_given in given.items():
        if is_given and option not in own:
            users = [n for n, (_, _, o) in OPTIMIZERS.items() if option in o]
            raise CLIError(f"--{option} applies to --optimizer {' or '.join(users)}, not "
                           f"{args.optimizer}")
    kw: Dict[str, Any] = dict(defaults)
    if task == "regress":
        kw.update(REGRESSION_DEFAULTS.get(args.optimizer, {}))
    for option in ("lr", "weight_decay", "momentum", "betas", "eps"):
        if getattr(args, option) is not None:
            kw[option] = getattr(args, option)
    if args.nesterov:
        if kw.get("momentum", 0) == 0:
            raise CLIError("--nesterov needs --momentum > 0")
        kw["nesterov"] = True
    try:
        return getattr(optim, cls_name)(**kw)
    except ValueError as exc:
        raise CLIError(f"--optimizer {args.optimizer}: {exc}") from None


def describe_optimizer(opt: Any) -> str:
    """``Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0)``: the
    hyper-parameters, switched-off flags left out."""
    parts = []
    for key, value in opt.get_config().items():
        if key == "name" or value is False:
            continue
        if isinstance(value, list):
            value = "(" + ", ".join(f"{v:g}" for v in value) + ")"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    return f"{type(opt).__name__}({', '.join(parts)})"


def _sep(text: str) -> str:
    """``--sep``: one character; ``tab`` (or ``\\t``) for a tab."""
    if text.lower() in ("tab", "\\t", "\t"):
        return "\t"
    if len(text) != 1 or text in "\r\n\"":
        raise argparse.ArgumentTypeError(f"{text!r}: expected one character, such as ';' or tab")
    return text


def _columns(text: str) -> List[str]:
    """``"a,b"`` -> ``["a", "b"]`` (column names for --drop and --features)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated column names")
    return names


def _add_format_options(p: argparse.ArgumentParser) -> None:
    """--sep and --decimal, shared by train and predict."""
    p.add_argument("--sep", type=_sep, metavar="CHAR",
                   help="CSV delimiter (default: detected among ',', ';' and tab; 'tab' "
                   "for a tab)")
    p.add_argument("--decimal", choices=(".", ","), default=".",
                   help="decimal mark of the numbers in a CSV (default '.')")


def _hidden(text: str) -> List[int]:
    """``"64,32"`` -> ``[64, 32]``; ``""`` or ``"none"`` -> ``[]`` (no hidden layer)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated layer widths such as 64,32") from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: layer widths must be >= 1")
        sizes.append(size)
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m fastbp`` and its subcommands."""
    p = _Parser(prog=PROG, description="fastbp: train dense MLPs by backpropagation and SGD "
                "on the CPU.  Run `%(prog)s COMMAND --help` for a command's options.")
    p.add_argument("--version", action="version", version=f"fastbp {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train a small network on the built-in four-pixel images",
                       description="Train a small network on the built-in four-pixel images.")
    d.add_argument("--epochs", type=_int_at_least(0), default=20, help="epochs to train (default 20)")
    d.add_argument("--samples", type=_int_at_least(1), default=2000,
                   help="training images (default 2000)")
    d.add_argument("--batch-size", type=_int_at_least(1), default=16,
                   help="mini-batch size (default 16)")
    d.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--threads", type=_int_at_least(0), default=0,
                   help="threads (default: all cores)")
    d.set_defaults(func=_demo)

    t = sub.add_parser(
        "train", help="train a network on a CSV or .npz file",
        description="Train a network on DATA: a CSV file with a header row (every column but "
        "the target is a numeric feature) or an .npz file with arrays X and y.  Features are "
        "standardised.  Writes the model (MODEL.npz) and a sidecar MODEL.json holding the "
        "scaler, the feature names and the class names, which `predict` reads.")
    t.add_argument("data", metavar="DATA", help="training data: .csv or .npz")
    t.add_argument("--target", metavar="COLUMN",
                   help="CSV column to predict (default: the last column)")
    _add_format_options(t)
    t.add_argument("--features", type=_columns, metavar="COL,...",
                   help="the feature columns, in this order (default: every column but the "
                   "target and a pandas index column)")
    t.add_argument("--drop", type=_columns, metavar="COL,...", default=[],
                   help="columns to leave out of the features (e.g. a row identifier)")
    t.add_argument("--missing", choices=("error", "drop"), default="error",
                   help="rows with a missing value (empty, NA, nan, null, ?, ...): error "
                   "(default) names them; drop leaves them out and says how many")
    t.add_argument("--task", choices=("auto", "classify", "regress"), default="auto",
                   help="auto (default): classify when the target is non-numeric, or has at "
                   "most 20 distinct integer values with 5 or more rows per value (or just "
                   "two values), else regress")
    t.add_argument("--hidden", type=_hidden, default=[64], metavar="N,N,...",
                   help="hidden layer widths (default 64; 'none' for no hidden layer)")
    t.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden activation (default relu)")
    t.add_argument("--label-smoothing", type=_float_in(0, 1, high_open=True), default=None,
                   metavar="EPS",
                   help="classification: train on the targets (1 - EPS) * one-hot + EPS / "
                   "n_classes, as torch's CrossEntropyLoss(label_smoothing=EPS); the "
                   "validation loss early stopping judges and the final train and validation "
                   "figures are against the true labels, the per-epoch training loss against "
                   "the smoothed targets (default "
                   f"{TRAIN_DEFAULTS['label_smoothing']:g}; 0 for none)")
    _add_optimizer_options(t)
    t.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning-rate schedule (default constant)")
    t.add_argument("--validation-split", type=_float_in(0, 1, high_open=True), default=0.2,
                   metavar="FRACTION",
                   help="fraction of rows held out, at random, for validation (default 0.2)")
    t.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when the validation loss has not improved for --patience "
                   "epochs and keep the weights of the best epoch (default: on when there "
                   "is a validation split; --no-early-stopping trains every epoch and keeps "
                   "the last)")
    t.add_argument("--patience", type=_int_at_least(1), default=TRAIN_DEFAULTS["patience"],
                   help="epochs without improvement before early stopping (default "
                   f"{TRAIN_DEFAULTS['patience']})")
    t.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="after early stopping has picked the number of epochs on the "
                   "validation split, train again from the same initial weights on every "
                   "row (validation rows included) for that many epochs, and keep that model "
                   f"(default: {'on' if TRAIN_DEFAULTS['refit'] else 'off'} under early "
                   "stopping; --refit without early stopping is an error)")
    t.add_argument("--average", type=_int_at_least(1), default=TRAIN_DEFAULTS["average"],
                   metavar="N",
                   help="keep the mean of the weights at the end of the last N epochs "
                   "(checkpoint averaging); early stopping then judges, and keeps, the "
                   f"averaged weights (default {TRAIN_DEFAULTS['average']}: no averaging)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the initial weights and the shuffling (default 0)")
    t.add_argument("--threads", type=_int_at_least(0), default=0,
                   help="threads (default: all cores)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision (default float32)")
    t.add_argument("-o", "--output", metavar="MODEL",
                   help="model file (default DATA.fastbp.npz; the sidecar is MODEL.json)")
    t.add_argument("--force", action="store_true",
                   help="overwrite an existing model file and sidecar (without it, train "
                   "refuses to, before training)")
    t.add_argument("--plot", metavar="PNG", help="write the loss curves to this PNG "
                   "(needs matplotlib)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    r = sub.add_parser(
        "predict", help="predict with a trained model",
        description="Predict with a model written by `train`: class names for a classifier, "
        "values for a regressor, one row per row of DATA.  DATA must have the feature columns "
        "the model was trained on (others are ignored); when it also has the target column, "
        "the accuracy (or RMSE and R^2) is reported.")
    r.add_argument("model", metavar="MODEL", help="model file (.npz; its sidecar .json is "
                   "read too)")
    r.add_argument("data", metavar="DATA", help="data: .csv or .npz (array X)")
    r.add_argument("-o", "--output", metavar="CSV", help="write predictions here (default: "
                   "standard output)")
    _add_format_options(r)
    r.add_argument("--proba", action="store_true",
                   help="also write each class's probability (classifiers)")
    r.add_argument("--threads", type=_int_at_least(0), default=0,
                   help="threads (default: all cores)")
    r.set_defaults(func=_predict)

    sub.add_parser(
        "bench", add_help=False, help="run the benchmark harness (bench/ in a source checkout); "
        "arguments are passed on: `bench --help` shows its options")

    g = sub.add_parser(
        "digits", help="fastbp against scikit-learn's MLPClassifier on the digits data set",
        description="Train fastbp and scikit-learn's MLPClassifier on scikit-learn's bundled "
        "8x8 digits (1797 images), with the same split, scaling, architecture and SGD "
        "settings, and print their test accuracies (needs scikit-learn).")
    g.add_argument("--hidden", type=_hidden, default=[64], metavar="N,N,...",
                   help="hidden layer widths (default 64)")
    _add_sgd_options(g, epochs=30)
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    g.add_argument("--threads", type=_int_at_least(0), default=0,
                   help="threads (default: all cores)")
    g.set_defaults(func=_digits)

    _add_export_parser(sub)
    return p


def _version() -> str:
    from . import __version__

    return str(__version__)


def _set_threads(n: int) -> None:
    from . import set_num_threads

    if n:
        set_num_threads(n)


# -- demo -----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """``demo``: the four-pixel images (output format is stable)."""
    from . import MLP, get_num_threads
    from .datasets import FOUR_PIXEL_CLASSES, four_pixel_images

    _set_threads(args.threads)
    X, y = four_pixel_images(args.samples + args.samples // 4, seed=args.seed)
    n_train = args.samples
    X_train, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    net = MLP([4, 16, len(FOUR_PIXEL_CLASSES)], activation="tanh", output="softmax",
              loss="cross_entropy", seed=args.seed)
    print(f"fastbp demo: the four-pixel images ({', '.join(FOUR_PIXEL_CLASSES)})")
    print(f"{net!r}, {n_train} training / {len(y_test)} test images, "
          f"{get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    hist = net.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - t0
    for epoch, loss in enumerate(hist.loss):
        print(f"epoch {epoch + 1:3d}  loss {loss:.4f}")
    accuracy = float(np.mean(net.predict(X_test).argmax(axis=1) == y_test))
    print(f"test accuracy {accuracy:.3f}  ({seconds:.2f} s, "
          f"{args.epochs * n_train / max(seconds, 1e-9):,.0f} samples/s)")
    return 0


# -- train ----------------------------------------------------------------------------


def default_model_path(data: str) -> str:
    """``digits.csv`` -> ``digits.fastbp.npz``, next to the data."""
    p = Path(data)
    return str(p.with_name(p.stem + ".fastbp.npz")) if p.suffix else str(p) + ".fastbp.npz"


def sidecar_path(model: str) -> str:
    """The sidecar of a model file: ``MODEL.npz`` -> ``MODEL.json``."""
    return model[:-4] + ".json" if model.lower().endswith(".npz") else model + ".json"


def smooth_labels(labels: np.ndarray, n_classes: int, eps: float) -> np.ndarray:
    """Label smoothing: the float64 targets ``(1 - eps) * one_hot(labels) + eps / n_classes``.

    As ``torch.nn.CrossEntropyLoss(label_smoothing=eps)`` builds them: each row
    sums to 1, its label gets ``1 - eps + eps / n_classes``, every other class
    ``eps / n_classes``.

    Parameters
    ----------
    labels : ndarray of int, shape (n_samples,)
        Label indices in ``0 .. n_classes - 1`` (:meth:`Preprocessor.encode`).
    n_classes : int
        Number of classes, >= 2.
    eps : float
        In [0, 1); 0 gives the one-hot rows.

    Raises
    ------
    ValueError
        When ``eps`` is outside [0, 1), ``n_classes`` < 2, or a label is not an
        integer in range.
    """
    if isinstance(eps, bool) or not (
            isinstance(eps, (int, float, np.floating)) and 0 <= eps < 1):
        raise ValueError(f"label smoothing must be in [0, 1), got {eps!r}")
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (
            labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise ValueError(f"labels must be a 1-D array of integers in [0, {n_classes}), got "
                         f"{labels.dtype} of shape {labels.shape}")
    out = np.full((labels.shape[0], int(n_classes)), eps / n_classes)
    out[np.arange(labels.shape[0]), labels] += 1.0 - eps
    return out


def split_rows(n: int, fraction: float, seed: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Random training and validation row indices, ``round(n * fraction)`` held out.

    Raises
    ------
    CLIError
        When either part would be empty.
    """
    n_val = int(round(n * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise CLIError(f"{n} row(s) are too few to hold out a validation fraction of {fraction:g}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def metrics(net: Any, pre: Preprocessor, X: np.ndarray, Y: np.ndarray) -> Dict[str, float]:
    """Loss and accuracy (classification) or RMSE and R^2 (regression, in target units).

    Parameters
    ----------
    net : fastbp.MLP
    pre : Preprocessor
    X : ndarray
        Standardised features.
    Y : ndarray
        Encoded targets (:meth:`Preprocessor.encode`).
    """
    out = net.predict(X).astype(np.float64)
    result = {"loss": float(net.loss(X, Y))}
    if pre.task == "classify":
        result["accuracy"] = float(np.mean(out.argmax(axis=1) == Y))
    else:
        err = out - Y
        result["rmse"] = float(np.sqrt(np.mean((err * np.asarray(pre.y_scale)) ** 2)))
        var = Y.var(axis=0)
        r2 = 1.0 - (err ** 2).mean(axis=0) / np.where(var > 0, var, 1.0)
        result["r2"] = float(np.mean(r2))
    return result


def _loss_name(task: str) -> str:
    return "cross entropy" if task == "classify" else "squared error, standardised target"


def _format_metrics(m: Dict[str, float], task: str = "classify") -> str:
    """``loss 0.1234  accuracy 0.9500``: every figure as :func:`format_value` writes it."""
    parts = []
    for k, v in m.items():
        if k == "loss":
            parts.append(f"loss {format_value(v)} ({_loss_name(task)})")
        else:
            parts.append(f"{k} {format_value(v)}")
    return "  ".join(parts)


class CheckpointAverage:
    """A ``fit`` callback for checkpoint averaging: the mean of the weights at the
    end of the last ``window`` epochs (fewer in the first epochs) and, given
    validation data, early stopping on the validation loss of that mean.

    The training itself is untouched: the mean is only measured (the model's
    weights are swapped for it for one loss evaluation, then restored bit for
    bit) until :meth:`finish` writes the kept mean into the model.  The mean is
    taken in float64, in a fixed order, then rounded to the model's dtype.

    Parameters
    ----------
    net : fastbp.MLP
        The model being fit (``net.fit(..., callbacks=[avg])``).
    window : int
        Epochs averaged, >= 1 (1: the last epoch's weights).
    validation : (X, Y), optional
        Data the mean is scored on after each epoch; without it the mean of
        the last ``window`` epochs is kept.
    patience : int, optional
        With ``validation``: stop (the callback returns True) when the mean's
        validation loss has not improved for this many epochs.
    """

    def __init__(self, net: Any, window: int, validation: Optional[Tuple[Any, Any]] = None,
                 patience: Optional[int] = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.net, self.window, self.validation, self.patience = net, window, validation, patience
        self._last: List[np.ndarray] = []
        self.val_loss: List[float] = []
        self.best_loss = np.inf
        self.best_epoch: Optional[int] = None
        self.best: Optional[np.ndarray] = None
        self._since_best = 0

    def mean(self) -> np.ndarray:
        """The mean of the weights of the last ``window`` epochs seen."""
        return np.mean(np.stack(self._last), axis=0, dtype=np.float64).astype(
            self.net.flat_parameters.dtype)

    def __call__(self, epoch: int, logs: Dict[str, Any]) -> bool:
        if len(self._last) == self.window:
            self._last.pop(0)
        self._last.append(self.net.flat_parameters.copy())
        if self.validation is None:
            return False
        theta = self.net.flat_parameters  # the model's storage
        saved = theta.copy()
        theta[...] = self.mean()
        try:
            loss = float(self.net.loss(*self.validation))
        finally:
            theta[...] = saved
        self.val_loss.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self._since_best = loss, epoch, 0
            self.best = self.mean()
        else:
            self._since_best += 1
        return self.patience is not None and self._since_best >= self.patience

    def finish(self) -> None:
        """Write the kept mean into the model: the one with the lowest validation
        loss, or (without validation data) the mean of the last epochs."""
        if self.best is not None:
            self.net.flat_parameters = self.best
        elif self._last:
            self.net.flat_parameters = self.mean()


def _train(args: argparse.Namespace) -> int:
    """``train``: fit a network to a CSV/.npz file; write the model and its sidecar."""
    from . import MLP, __version__, get_num_threads, schedules
    from . import io as model_io

    _set_threads(args.threads)
    if args.early_stopping and args.validation_split == 0:
        raise CLIError("--early-stopping needs a validation split > 0")
    early_stopping = args.validation_split > 0 if args.early_stopping is None \
        else args.early_stopping
    if args.refit and not early_stopping:
        raise CLIError("--refit needs early stopping (it trains again for the number of "
                       "epochs early stopping picks): a --validation-split > 0, without "
                       "--no-early-stopping")
    if args.refit is None:
        args.refit = early_stopping and bool(TRAIN_DEFAULTS["refit"])
    optimizer = make_optimizer(args)  # bad combinations fail before reading the data
    model_path = args.output or default_model_path(args.data)
    side_path = sidecar_path(model_path)
    for out in (model_path, side_path, args.plot):  # fail before training, not after
        _check_writable(out)
    data = load_training_data(args.data, args.target, sep=args.sep, decimal=args.decimal,
                              features=args.features, drop=args.drop, missing=args.missing,
                              task=args.task)
    for message in data.warnings:
        _print_warning(message)
    overwrites = [p for p in (model_path, side_path) if Path(p).exists()]
    if overwrites and not args.force:
        verb = "exists" if len(overwrites) == 1 else "exist"
        raise CLIError(f"{' and '.join(overwrites)} already {verb}: give --force to overwrite "
                       "(train refuses otherwise), or -o to write elsewhere")
    n, d = data.X.shape
    task, reason = infer_task(data.y)
    if args.task == "auto":
        note = f"inferred from target {data.target!r}: {reason}; --task to override"
    else:
        task, note = args.task, "chosen with --task"
    if task == "regress" and data.y.dtype.kind in "US":
        raise CLIError(f"cannot regress on target {data.target!r}: it is not numeric")
    optimizer = make_optimizer(args, task)  # the task's defaults (REGRESSION_DEFAULTS)
    if args.label_smoothing is None:
        args.label_smoothing = float(TRAIN_DEFAULTS["label_smoothing"]) \
            if task == "classify" else 0.0
    elif task == "regress" and args.label_smoothing > 0:
        raise CLIError(f"--label-smoothing applies to classification; target "
                       f"{data.target!r} is regressed ({note})")
    train_rows, val_rows = split_rows(n, args.validation_split, args.seed)
    pre = Preprocessor.fit(data.X[train_rows], data.y[train_rows], task, data.features,
                           data.target)
    if task == "classify":  # every class of the file, even one seen only in validation rows
        pre.classes = class_names(data.y)
    if task == "classify" and len(pre.classes) < 2:
        raise CLIError(f"target {data.target!r} has a single class ({pre.classes[0]!r}): "
                       "nothing to classify")
    X = pre.transform(data.X)
    Y = pre.encode(data.y)

    def new_net() -> Any:  # the same initial weights every time (the seed's)
        if task == "classify":
            return MLP([d, *args.hidden, len(pre.classes)], activation=args.activation,
                       output="softmax", loss="cross_entropy", dtype=args.dtype,
                       seed=args.seed)
        return MLP([d, *args.hidden, pre.n_outputs], activation=args.activation,
                   output="identity", loss="squared_error", dtype=args.dtype, seed=args.seed)

    net = new_net()
    what = (f"classification, {len(pre.classes)} classes" if task == "classify" else
            "regression" + (f", {pre.n_outputs} targets" if pre.n_outputs > 1 else ""))
    Xt, Yt = X[train_rows], Y[train_rows]
    Xv, Yv = X[val_rows], Y[val_rows]
    for message in data.notes:
        print(f"note: {message}")
    fmt = "" if data.sep in (None, ",") else f" ({sep_name(data.sep)}-separated)"
    print(f"data: {args.data}{fmt}: {n} rows, {d} features, target {data.target!r}")
    print(f"task: {what} ({note})")
    if task == "regress":
        print("loss: squared error on the standardised target (mean 0, standard deviation 1 "
              "over the training rows); rmse and r2 are in target units")
    elif args.label_smoothing > 0:
        print(f"loss: cross entropy, trained on labels smoothed by {args.label_smoothing:g} "
              "(--label-smoothing): the per-epoch training loss is against those targets; "
              "the validation loss, early stopping's, and the final figures against the true "
              "labels")
    print(f"model: {net!r}, {len(train_rows)} training / {len(val_rows)} validation rows, "
          f"{get_num_threads()} thread(s)")
    stopping = (f"early stopping on the validation loss (patience {args.patience}; the best "
                "epoch's weights are kept)" if early_stopping else "no early stopping"
                + (" (no validation split)" if args.validation_split == 0 else ""))
    if args.average > 1:
        stopping = stopping.replace("the validation loss", "the validation loss of the "
                                    f"mean of the last {args.average} epochs' weights")
        stopping = stopping.replace("the best epoch's weights are kept",
                                    "the best mean is kept")
        if not early_stopping:
            stopping += f"; the mean of the last {args.average} epochs' weights is kept"
    if args.refit:
        stopping += "; then trained again on every row for the epochs it picks (--refit)"
    print(f"optimizer: {describe_optimizer(optimizer)}, batch {args.batch_size}, "
          f"{'up to ' if early_stopping else ''}{args.epochs} epochs"
          + (f", {args.schedule} schedule" if args.schedule != "constant" else "")
          + f"; {stopping}")
    sys.stdout.flush()

    def fit(net: Any, X_fit: np.ndarray, Y_fit: np.ndarray, epochs: int, schedule: Any,
            validation: bool) -> Any:
        """``net.fit`` with train's options; checkpoint averaging when --average > 1."""
        avg = None
        if args.average > 1:
            judged = validation and early_stopping  # else the last epochs' mean is kept
            avg = CheckpointAverage(net, args.average, (Xv, Yv) if judged else None,
                                    args.patience if judged else None)
        if task == "classify" and args.label_smoothing > 0:
            Y_fit = smooth_labels(Y_fit, len(pre.classes), args.label_smoothing)
        hist = net.fit(
            X_fit, Y_fit, epochs=epochs, batch_size=args.batch_size, seed=args.seed,
            optimizer=make_optimizer(args, task), schedule=schedule,
            validation_data=(Xv, Yv) if validation else None,
            early_stopping=early_stopping and validation and avg is None,
            patience=args.patience, callbacks=None if avg is None else [avg],
            verbose=0 if args.quiet else 1,
        )
        if avg is not None:
            avg.finish()
            if validation and early_stopping:
                hist.best_epoch = avg.best_epoch  # the kept mean's last epoch
        return hist

    t0 = time.perf_counter()
    hist = fit(net, Xt, Yt, args.epochs, args.schedule, len(val_rows) > 0)
    seconds = time.perf_counter() - t0
    final = {"train": metrics(net, pre, Xt, Yt)}
    print(f"train:      {_format_metrics(final['train'], task)}")
    if len(val_rows):
        final["validation"] = metrics(net, pre, Xv, Yv)
        print(f"validation: {_format_metrics(final['validation'], task)}")
    epochs_run = len(hist.loss)
    kept = ""
    if early_stopping and hist.best_epoch is not None:
        kept = (f"; stopped early, kept epoch {hist.best_epoch + 1}" if hist.stopped_early
                else f"; kept epoch {hist.best_epoch + 1}, the lowest validation loss")
    print(f"{epochs_run} epoch(s) in {seconds:.2f} s{kept}")
    refit: Optional[Dict[str, Any]] = None
    if args.refit and hist.best_epoch is not None:
        # The same number of epochs (passes over each row) on every row, from the
        # same initial weights, shuffling seed and per-epoch learning rates.
        refit_epochs = hist.best_epoch + 1
        refit = {"epochs": refit_epochs, "selection": {
            "train_rows": len(train_rows), "validation_rows": len(val_rows),
            "epochs_run": epochs_run, "seconds": round(seconds, 4), "metrics": final}}
        pre = Preprocessor.fit(data.X, data.y, task, data.features, data.target)
        if task == "classify":
            pre.classes = class_names(data.y)
        X, Y = pre.transform(data.X), pre.encode(data.y)
        net = new_net()
        t0 = time.perf_counter()
        fit(net, X, Y, refit_epochs, schedules.resolve(args.schedule, args.epochs), False)
        refit_seconds = time.perf_counter() - t0
        seconds += refit_seconds
        final = {"train": metrics(net, pre, X, Y)}
        print(f"refit: {refit_epochs} epoch(s) on all {n} rows (the validation rows too) in "
              f"{refit_seconds:.2f} s; the validation figures above are the early-stopping "
              "run's")
        print(f"train:      {_format_metrics(final['train'], task)} (all rows)")

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "quiet")}
    options["early_stopping"] = early_stopping  # as resolved, with the optimizer's values
    options.update({k: v for k, v in optimizer.get_config().items() if k in options})
    pre.info = {
        "model_file": os.path.basename(model_path),
        "fastbp_version": str(__version__),
        "training": {"data": args.data, "rows": n,
                     "train_rows": n if refit else len(train_rows),
                     "validation_rows": 0 if refit else len(val_rows),
                     "epochs_run": epochs_run,
                     "best_epoch": None if hist.best_epoch is None else hist.best_epoch + 1,
                     "seconds": round(seconds, 4), "optimizer": optimizer.get_config(),
                     "options": options, "metrics": final, "refit": refit},
    }
    model_io.save(net, model_path)
    pre.save(side_path)
    print(f"saved: {model_path} (model), {side_path} (scaler, names)"
          + (f"; overwrote the previous {' and '.join(overwrites)} (--force)"
             if overwrites else ""))
    if args.plot:
        try:
            hist.plot(args.plot, loss_name=_loss_name(task))
        except ImportError as exc:
            raise CLIError(f"cannot write {args.plot}: {exc}") from None
        print(f"saved: {args.plot} (loss curves)")
    return 0


def _check_writable(path: Optional[str]) -> None:
    """Raise :class:`CLIError` when ``path`` cannot be an output file."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory")
    if not parent.is_dir():
        raise CLIError(f"{path}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{path}: directory {str(parent)!r} is not writable")


# -- predict --------------------------------------------------------------------------


def load_model(path: str) -> Tuple[Any, Preprocessor]:
    """A model written by ``train`` and its sidecar.

    Parameters
    ----------
    path : str
        The model file (``MODEL.npz``), or its sidecar (``MODEL.json``).

    Returns
    -------
    net : fastbp.MLP
    pre : Preprocessor

    Raises
    ------
    CLIError, DataError, ValueError
        When either file is missing or malformed, or they do not match.
    """
    from . import io as model_io

    if path.lower().endswith(".json"):
        side = path
        pre = Preprocessor.load(side)
        model = str(Path(side).with_name(str(pre.info.get("model_file") or
                                             Path(side).stem + ".npz")))
    else:
        model, side = path, sidecar_path(path)
        if not Path(model).is_file():
            raise CLIError(f"{model}: no such model file")
        if not Path(side).is_file():
            raise CLIError(f"{side}: no such file: the sidecar `fastbp train` writes next to "
                           f"the model (with the scaler and names) is needed to predict")
        pre = Preprocessor.load(side)
    try:
        net = model_io.load(model)
    except FileNotFoundError:
        raise CLIError(f"{model}: no such model file") from None
    except ValueError as exc:
        raise CLIError(f"{model}: {exc}") from None
    if net.layer_sizes[0] != len(pre.features) or net.layer_sizes[-1] != pre.n_outputs:
        raise CLIError(f"{model} ({net.layer_sizes[0]} inputs, {net.layer_sizes[-1]} outputs) "
                       f"does not match its sidecar {side} ({len(pre.features)} features, "
                       f"{pre.n_outputs} outputs)")
    return net, pre


def _write_predictions(f: TextIO, pre: Preprocessor, pred: np.ndarray,
                       proba: Optional[np.ndarray]) -> None:
    w = csv.writer(f, lineterminator="\n")
    if pre.task == "classify":
        header = [pre.target]
        if proba is not None:
            header += [f"p({c})" for c in pre.classes]
        w.writerow(header)
        for i, name in enumerate(pred.tolist()):
            row = [name]
            if proba is not None:
                row += [f"{p:.6g}" for p in proba[i].tolist()]
            w.writerow(row)
    else:
        k = pred.shape[1]
        w.writerow([pre.target] if k == 1 else [f"{pre.target}_{j}" for j in range(k)])
        for row in pred.tolist():
            w.writerow([f"{v:.10g}" for v in row])


def _predict(args: argparse.Namespace) -> int:
    """``predict``: predictions of a trained model on new rows."""
    _set_threads(args.threads)
    _check_writable(args.output)
    net, pre = load_model(args.model)
    X, y, known = load_features(args.data, pre.features, pre.target, sep=args.sep,
                                decimal=args.decimal)
    out = net.predict(pre.transform(X)).astype(np.float64)
    pred = pre.decode(out)
    proba = out if (args.proba and pre.task == "classify") else None
    if args.output:
        buf = _stdio.StringIO()
        _write_predictions(buf, pre, pred, proba)
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
        report: TextIO = sys.stdout
        print(f"wrote {len(pred)} predictions to {args.output}", file=report)
    else:
        _write_predictions(sys.stdout, pre, pred, proba)
        report = sys.stderr
    if y is not None and known is not None and known.any():
        _report_score(pre, pred[known], y[known], int((~known).sum()), report)
    return 0


def _report_score(pre: Preprocessor, pred: np.ndarray, y: np.ndarray, n_unknown: int,
                  report: TextIO) -> None:
    """Accuracy, or RMSE and R^2, of ``pred`` against the data's target column ``y``;
    a warning about labels the model never saw."""
    rows = f"{len(pred)} rows" + (f"; {n_unknown} row{'s' if n_unknown != 1 else ''} "
                                  "without a target value not scored" if n_unknown else "")
    if pre.task == "classify":
        truth = as_class_names(y)
        unseen = ~np.isin(truth, np.asarray(pre.classes, dtype=str))
        if unseen.any():
            labels = sorted(set(truth[unseen].tolist()))
            shown = ", ".join(map(repr, labels[:5])) + (
                f", ... ({len(labels)} labels)" if len(labels) > 5 else "")
            _print_warning(f"{int(unseen.sum())} row{'s' if unseen.sum() != 1 else ''} of "
                           f"column {pre.target!r} hold label{'s' if len(labels) > 1 else ''} "
                           f"the model never saw in training ({shown}): they count as wrong "
                           "in the accuracy")
        acc = float(np.mean(pred == truth))
        print(f"accuracy {format_value(acc)} against column {pre.target!r} ({rows})",
              file=report)
    elif y.dtype.kind not in "US":
        Yv = y.reshape(len(pred), -1).astype(np.float64)
        if Yv.shape[1] == pred.shape[1]:
            err = pred - Yv
            var = Yv.var(axis=0)
            r2 = float(np.mean(1 - (err ** 2).mean(axis=0) / np.where(var > 0, var, 1.0)))
            print(f"rmse {format_value(float(np.sqrt(np.mean(err ** 2))))}  "
                  f"r2 {format_value(r2)} against column {pre.target!r} ({rows})", file=report)


# -- bench ----------------------------------------------------------------------------


def find_bench() -> Optional[Path]:
    """The source checkout holding ``bench/`` next to this ``fastbp/``, if any."""
    root = Path(__file__).resolve().parent.parent
    if (root / "bench" / "run.py").is_file() and (root / "bench" / "__main__.py").is_file():
        return root
    return None


def _bench(argv: Sequence[str]) -> int:
    """``bench``: run ``python -m bench ARGS`` from the source checkout."""
    root = find_bench()
    if root is None:
        raise CLIError(
            "the benchmark harness is not here: it lives in the bench/ folder of a fastbp "
            "source checkout and is not installed with the package; run `python -m fastbp "
            "bench` from a clone (e.g. after `pip install -e .`)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=str(root), env=env)
    except KeyboardInterrupt:
        return 130


# -- digits ---------------------------------------------------------------------------


def _digits(args: argparse.Namespace) -> int:
    """``digits``: fastbp and scikit-learn's MLPClassifier on sklearn's digits."""
    import warnings

    try:
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise CLIError("the digits comparison needs scikit-learn: pip install scikit-learn") \
            from None
    from . import MLP

    _set_threads(args.threads)
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=args.seed,
                                              stratify=y)
    pre = Preprocessor.fit(X_tr, y_tr, "classify", [f"pixel{j}" for j in range(64)], "digit")
    X_tr, X_te = pre.transform(X_tr), pre.transform(X_te)
    print(f"digits: {len(y_tr)} training / {len(y_te)} test images, 8x8 pixels, 10 classes; "
          f"hidden {args.hidden}, relu, {args.epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr:g}, momentum {args.momentum:g}")
    rows: List[Tuple[str, float, float]] = []

    net = MLP([64, *args.hidden, 10], activation="relu", seed=args.seed)
    t0 = time.perf_counter()
    net.fit(X_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            momentum=args.momentum, seed=args.seed)
    rows.append(("fastbp.MLP (SGD)", time.perf_counter() - t0,
                 float(np.mean(net.predict(X_te).argmax(axis=1) == y_te))))

    peers = [
        ("sklearn MLPClassifier (same SGD)", dict(
            solver="sgd", learning_rate_init=args.lr, momentum=args.momentum,
            nesterovs_momentum=False, learning_rate="constant", batch_size=args.batch_size,
            max_iter=args.epochs, alpha=0.0, tol=0.0, n_iter_no_change=args.epochs + 1)),
    ]
    for name, kw in peers:
        clf = MLPClassifier(hidden_layer_sizes=tuple(args.hidden), activation="relu",
                            random_state=args.seed, **kw)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X_tr, y_tr)
        rows.append((name, time.perf_counter() - t0, float(clf.score(X_te, y_te))))
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  test accuracy  train seconds")
    for name, seconds, acc in rows:
        print(f"{name:<{width}}  {acc:13.4f}  {seconds:13.3f}")
    return 0


# -- export ---------------------------------------------------------------------------


def _add_export_parser(sub: Any) -> None:
    """Register ``export MODEL OUT``: a model file (and its sidecar) to an ONNX file."""
    e = sub.add_parser(
        "export", help="export a trained model, with its scaling and class names, to ONNX",
        description="Write MODEL (a model file from `train`, with its sidecar MODEL.json) as "
        "an ONNX file OUT that computes what `predict` prints.  Its input `features` is a "
        "float64 (N, n_features) tensor of the raw feature values, columns in the order "
        "`train` used (printed here, and in the file's metadata `features`); the graph "
        "standardises them.  Outputs: `label` (N,) (the class names: int64 when they are "
        "all integers, else strings) and `probabilities` (N, n_classes) for a classifier; "
        "`variable` (N, n_targets), float64 in the target's units, for a regressor.  "
        "--network-only writes the bare network instead (input X, standardised features; "
        "output Y), which also works for a model file without a sidecar.  See "
        "docs/onnx.md; needs the onnx package: pip install 'fastbp[onnx]'.")
    e.add_argument("model", metavar="MODEL", help="model file (.npz; its sidecar .json is "
                   "read too)")
    e.add_argument("output", metavar="OUT", help="ONNX file to write")
    e.add_argument("--opset", type=_int_at_least(1), default=None,
                   help="ONNX opset to declare (default 13, the lowest accepted)")
    e.add_argument("--network-only", action="store_true",
                   help="the network alone: standardised features in, network outputs out "
                   "(no sidecar needed)")
    e.add_argument("--force", action="store_true",
                   help="overwrite OUT if it exists (without it, export refuses to)")
    e.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    """``export``: a model file and its sidecar as one ONNX graph (or the bare network)."""
    from . import io as model_io
    from .onnx_export import pipeline_to_onnx, to_onnx

    _check_writable(args.output)
    if Path(args.output).exists() and not args.force:
        raise CLIError(f"{args.output} already exists: give --force to overwrite it (export "
                       "refuses otherwise)")
    if not args.network_only:
        side = args.model if args.model.lower().endswith(".json") else sidecar_path(args.model)
        if Path(args.model).is_file() and not Path(side).is_file():
            raise CLIError(f"{side}: no such file: the sidecar `fastbp train` writes next to "
                           "the model holds the feature scaling and class names the graph "
                           "needs; give --network-only to export the bare network (input "
                           "standardised features) instead")
        net, pre = load_model(args.model)
        kw: Dict[str, Any] = {"classes": pre.classes} if pre.task == "classify" else {
            "y_mean": pre.y_mean, "y_scale": pre.y_scale}
        proto = pipeline_to_onnx(net, args.output, x_mean=pre.x_mean, x_scale=pre.x_scale,
                                 feature_names=pre.features, target_name=pre.target,
                                 opset=args.opset, **kw)
        outs = ", ".join(f"{o.name} {_onnx_shape(o)}" for o in proto.graph.output)
        print(f"saved: {args.output} (ONNX opset {proto.opset_import[0].version}: input "
              f"features (N, {len(pre.features)}) float64, raw values; outputs {outs})")
        print(f"features, in this order: {', '.join(pre.features)}")
        return 0
    try:
        net = model_io.load(args.model)
    except ValueError as exc:
        raise CLIError(f"{args.model}: {exc}") from None
    proto = to_onnx(net, args.output, opset=args.opset)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    print(f"saved: {args.output} (ONNX opset {proto.opset_import[0].version}: input X "
          f"(N, {n_in}), output Y (N, {n_out}), {net.dtype.name})")
    side = sidecar_path(args.model)
    if Path(side).is_file():
        print(f"note: --network-only: {side} is not in the ONNX graph: standardise the "
              "features as it says (x_mean, x_scale) and read the outputs with its class "
              "names or target scale", file=sys.stderr)
    return 0


def _onnx_shape(value_info: Any) -> str:
    """``(N, 3) float32`` for an ONNX graph output."""
    import onnx

    t = value_info.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    if t.elem_type == onnx.TensorProto.STRING:
        elem = "string"
    else:
        elem = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {elem}"


# -- entry point ------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 after an error reported as one line
        ``fastbp: error: ...`` on standard error, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return _bench(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error already reported
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        return int(args.func(args))
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `predict ... | head`: stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except (CLIError, ValueError, OSError, FloatingPointError, ImportError, MemoryError) as exc:
        _print_error(_describe(exc))
        return EXIT_ERROR


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return "out of memory"
    return str(exc) or type(exc).__name__
