"""Shared fixtures: run the math tests against both implementations.

``impl`` is the model class under test: the pure-Python oracle
(``fastbp.reference.MLP``) and the compiled model (``fastbp.MLP``).  If the
compiled model cannot be imported (not built yet: ``python setup.py
build_ext --inplace``), its cases fail with the import error instead of being
skipped, so a missing build never passes silently.

Hypothesis profiles (tests/test_properties.py): ``dev``, the default, draws
the same examples on every run (derandomized) and few of them, so a local run
takes seconds; ``ci``, loaded when the environment variable ``CI`` is set (CI
sets CI=true), draws fresh random examples on every run, five times as many,
and prints the seed blob of any failure so that it can be replayed with
``@reproduce_failure``.  ``HYPOTHESIS_PROFILE=dev|ci`` chooses one explicitly.
Each test asks for a share of the profile's ``max_examples``
(``test_properties.examples``).
"""
import importlib
import os

import pytest

import fastbp.reference

IMPLEMENTATIONS = ["reference", "fast"]

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # test_properties.py skips itself
    pass
else:
    _COMMON = dict(
        deadline=None,  # timing is not under test, and the machine may be busy
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    settings.register_profile("dev", max_examples=50, derandomize=True, **_COMMON)
    settings.register_profile("ci", max_examples=250, derandomize=False, print_blob=True, **_COMMON)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


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

