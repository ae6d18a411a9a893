"""Helpers shared by several test modules (imported as ``from _helpers import ...``)."""
import csv

import pytest


def torch_optimizer(opt, params):
    """torch.optim's twin of a fastbp.optim object: the same settings, single-tensor
    algorithm (``foreach=False``).  Skips the test when torch is absent."""
    torch = pytest.importorskip("torch")
    cfg = opt.get_config()
    name = cfg.pop("name")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop}[name]
    return cls(params, foreach=False, **cfg)


def write_csv(path, header, rows):
    """Write ``rows`` under ``header`` to the CSV file ``path``; return ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    """The rows of the CSV file ``path``, as lists of strings."""
    with open(path, newline="") as f:
        return list(csv.reader(f))
