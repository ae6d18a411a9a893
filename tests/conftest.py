"""Shared fixtures: run the math tests against both implementations.

``impl`` is the model class under test: the pure-Python oracle
(``fastbp.reference.MLP``) and the compiled model (``fastbp.MLP``).  If the
compiled model cannot be imported (not built yet: ``python setup.py
build_ext --inplace``), its cases fail with the import error instead of being
skipped, so a missing build never passes silently.
"""
import importlib

import pytest

import fastbp.reference

IMPLEMENTATIONS = ["reference", "fast"]


def load_impl(name):
    """The MLP class called ``name`` in IMPLEMENTATIONS."""
    if name == "reference":
        return fastbp.reference.MLP
    try:
        return importlib.import_module("fastbp").MLP
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"fastbp.MLP is not importable ({exc!r}); build it with "
                    "`python setup.py build_ext --inplace`", pytrace=False)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """Each MLP implementation in turn."""
    return load_impl(request.param)


@pytest.fixture
def fast_impl():
    """The compiled fastbp.MLP only."""
    return load_impl("fast")

