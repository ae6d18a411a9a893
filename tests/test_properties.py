"""Property-based tests (hypothesis): the compiled model against the reference.

Random architectures (1-3 weight layers, widths 1-20), batch sizes, dtypes,
memory layouts, activations, output/loss pairs and seeds.  The fast model must
agree with the pure-Python reference within the one tolerance table
(tests/tolerances.py); any layout must give the very same
bits; and arbitrary junk must give a ValueError (or work), never anything else.
"""
from datetime import timedelta

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastbp  # noqa: E402
from fastbp import reference  # noqa: E402

from tolerances import PAIRS, assert_close  # noqa: E402  (the one tolerance table)
SETTINGS = dict(
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,   # the same examples on every run: CI stays reproducible
    database=None,
)


@st.composite
def problems(draw):
    n_layers = draw(st.integers(1, 3))
    output, loss = draw(st.sampled_from(PAIRS))
    widths = draw(st.lists(st.integers(1, 20), min_size=n_layers + 1, max_size=n_layers + 1))
    if output == "softmax":
        widths[-1] = max(widths[-1], 2)
    cfg = dict(
        layer_sizes=widths,
        activation=draw(st.sampled_from(["identity", "sigmoid", "relu", "tanh"])),
        output=output,
        loss=loss,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    n = draw(st.integers(1, 20))
    data_seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(["C", "F", "strided", "negative", "list", "other dtype"]))
    labels = loss == "cross_entropy" and draw(st.booleans())
    batch_size = draw(st.integers(1, 25))
    shuffle = draw(st.booleans())
    return cfg, n, data_seed, layout, labels, batch_size, shuffle


def make_data(cfg, n, data_seed, labels):
    rng = np.random.default_rng(data_seed)
    sizes, loss = cfg["layer_sizes"], cfg["loss"]
    X = rng.normal(size=(n, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], size=n)
        Y = y if labels else np.eye(sizes[-1])[y]
    elif loss == "binary_cross_entropy" or cfg["output"] != "identity":
        Y = rng.uniform(size=(n, sizes[-1]))
    else:
        Y = rng.normal(size=(n, sizes[-1]))
    return X, Y


def relayout(A, layout, dtype):
    A = np.asarray(A, dtype=dtype) if layout != "other dtype" else np.asarray(A)
    if A.ndim == 1:
        return np.repeat(A, 2)[::2] if layout in ("strided", "negative") else A
    if layout == "C":
        return np.ascontiguousarray(A)
    if layout == "F":
        return np.asfortranarray(A)
    if layout == "strided":
        big = np.zeros((A.shape[0] * 2, A.shape[1] * 3), dtype=A.dtype)
        big[::2, ::3] = A
        return big[::2, ::3]
    if layout == "negative":
        return np.ascontiguousarray(A[::-1, ::-1])[::-1, ::-1]
    if layout == "list":
        return A.tolist()
    return A  # "other dtype": float64 data into a float32 model, or vice versa


def close(fast, ref, dtype, what):
    assert_close(fast, ref, dtype, what)


def all_params(net):
    return [np.asarray(w) for w in net.weights] + [np.asarray(b) for b in net.biases if b is not None]


@settings(max_examples=100, **SETTINGS)
@given(problems())
def test_fast_matches_reference(problem):
    cfg, n, data_seed, layout, labels, batch_size, shuffle = problem
    dtype = cfg["dtype"]
    X, Y = make_data(cfg, n, data_seed, labels)
    Xl, Yl = relayout(X, layout, dtype), relayout(Y, layout, dtype)
    fast, ref = fastbp.MLP(**cfg), reference.MLP(**cfg)
    for a, b in zip(all_params(fast), all_params(ref)):
        assert a.tobytes() == b.tobytes(), "same seed, different initial parameters"

    close(fast.predict(Xl), ref.predict(Xl), dtype, "predict")
    close(fast.loss(Xl, Yl), ref.loss(Xl, Yl), dtype, "loss")
    lf, gf = fast.gradients(Xl, Yl)
    lr_, gr = ref.gradients(Xl, Yl)
    close(lf, lr_, dtype, "gradients: loss")
    for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, gr)):
        close(dWf, dWr, dtype, f"dW[{k}]")
        assert (dbf is None) == (dbr is None)
        if dbf is not None:
            close(dbf, dbr, dtype, f"db[{k}]")

    close(fast.step(Xl, Yl, 0.1), ref.step(Xl, Yl, 0.1), dtype, "step: loss")
    for k, (a, b) in enumerate(zip(all_params(fast), all_params(ref))):
        close(a, b, dtype, f"step: parameter array {k}")

    hf = fast.fit(Xl, Yl, epochs=2, batch_size=batch_size, lr=0.05, shuffle=shuffle, seed=data_seed)
    hr = ref.fit(Xl, Yl, epochs=2, batch_size=batch_size, lr=0.05, shuffle=shuffle, seed=data_seed)
    close(hf.loss, hr.loss, dtype, "fit: history")
    for k, (a, b) in enumerate(zip(all_params(fast), all_params(ref))):
        close(a, b, dtype, f"fit: parameter array {k}")


@settings(max_examples=40, **SETTINGS)
@given(problems(), st.integers(1, 8))
def test_layout_and_threads_do_not_change_bits(problem, n_threads):
    cfg, n, data_seed, layout, labels, batch_size, shuffle = problem
    dtype = cfg["dtype"]
    X, Y = make_data(cfg, n, data_seed, labels)
    X, Y = np.asarray(X, dtype=dtype), np.asarray(Y, dtype=dtype if Y.ndim == 2 else None)
    Xl, Yl = relayout(X, layout, dtype), relayout(Y, layout, dtype)
    keep = [np.array(a, copy=True) for a in (Xl, Yl)]
    from fastbp import _kernels

    # Every step and prediction with n_threads > 1 takes the parallel path.
    before, threshold = fastbp.get_num_threads(), _kernels.set_parallel_threshold(0)
    try:
        results = []
        for Xv, Yv, t in [(X, Y, 1), (Xl, Yl, n_threads)]:
            fastbp.set_num_threads(t)
            net = fastbp.MLP(**cfg)
            out = [net.predict(Xv), net.gradients(Xv, Yv)[1]]
            net.fit(Xv, Yv, epochs=2, batch_size=batch_size, lr=0.05, shuffle=shuffle, seed=1)
            out.append(all_params(net))
            results.append(repr([np.asarray(o).tobytes() if isinstance(o, np.ndarray) else
                                 [tuple(x.tobytes() if x is not None else None for x in
                                        (p if isinstance(p, tuple) else (p,))) for p in o]
                                 for o in out]))
    finally:
        fastbp.set_num_threads(before)
        _kernels.set_parallel_threshold(threshold)
    assert results[0] == results[1]
    for old, new in zip(keep, (Xl, Yl)):
        assert np.asarray(new).tobytes() == old.tobytes(), "an input was written"


junk_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_,
                           np.complex128, np.dtype("U3"), np.dtype("O"), np.dtype("M8[s]")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements=None,
)


@settings(max_examples=80, **SETTINGS)
@given(junk_arrays, junk_arrays, st.sampled_from(PAIRS), st.sampled_from(["float32", "float64"]))
def test_junk_gives_value_error_or_works(X, Y, pair, dtype):
    output, loss = pair
    net = fastbp.MLP([3, 2], output=output, loss=loss, dtype=dtype, seed=0)
    before = [p.tobytes() for p in all_params(net)]
    keep = [X.tobytes() if X.dtype.kind != "O" else None, Y.tobytes() if Y.dtype.kind != "O" else None]
    for call in (lambda: net.predict(X), lambda: net.loss(X, Y), lambda: net.gradients(X, Y),
                 lambda: net.step(X, Y, 0.01), lambda: net.fit(X, Y, epochs=1, batch_size=2, lr=0.01)):
        try:
            call()
        except ValueError as exc:
            assert str(exc)
            assert [p.tobytes() for p in all_params(net)] == before, "a failed call changed the model"
        except FloatingPointError:
            # Finite inputs whose loss overflows (float16/int extremes): the model is kept.
            assert [p.tobytes() for p in all_params(net)] == before
        else:
            before = [p.tobytes() for p in all_params(net)]
    if keep[0] is not None:
        assert X.tobytes() == keep[0]
    if keep[1] is not None:
        assert Y.tobytes() == keep[1]
