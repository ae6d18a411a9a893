"""The one tolerance table for the compiled kernels against the pure-Python reference.

Used by every test that compares ``fastbp.MLP`` with ``fastbp.reference.MLP``
(tests/test_kernels.py, tests/test_properties.py), together with the lists of
activations and output/loss pairs that those tests and the gradient checks sweep.
"""
import numpy as np

# |fast - reference| <= rtol * |reference| + atol * scale, where scale is the
# largest |value| of the quantity compared (so sums that cancel are judged
# against the size of their terms, not of their result).
TOL = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=1e-4, atol=1e-5),
}

ACTIVATIONS = ["identity", "sigmoid", "relu", "tanh"]
PAIRS = [
    ("identity", "squared_error"),
    ("sigmoid", "squared_error"),
    ("softmax", "squared_error"),
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
]


def assert_close(actual, expected, dtype, what=""):
    """Assert fast-vs-reference agreement within TOL[dtype]."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    if not expected.size:
        return
    tol = TOL[dtype]
    scale = max(1e-300, float(np.max(np.abs(expected))))
    bound = tol["rtol"] * np.abs(expected) + tol["atol"] * scale
    err = np.abs(actual - expected)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"{what}: max err {err.max():.3g}, bound {bound.flat[worst]:.3g}"
    )
