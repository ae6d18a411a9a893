"""setup.py's build switches: a misspelt value fails the build and says why."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value", ["memory", "address,thread", "adress"])
def test_an_unknown_sanitizer_fails_the_build_and_names_the_value(value):
    env = dict(os.environ, FASTBP_SANITIZE=value)
    res = subprocess.run([sys.executable, os.path.join(ROOT, "setup.py"), "--name"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert f"FASTBP_SANITIZE={value!r}" in res.stderr
    assert "expected address, undefined or address,undefined" in res.stderr
