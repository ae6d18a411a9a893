"""Helpers shared by several test modules (imported as ``from _helpers import ...``)."""
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
