"""Property-based tests (hypothesis): the compiled model against the reference.

Random architectures (1-3 weight layers), batch sizes, memory layouts,
activations, output/loss pairs and seeds, each test run for float32 and
float64 alike.  Half the examples are small (widths and rows 1-20), half
large enough (widths and rows 8-40, up to M*N*K = 64000) that most of them
send some GEMM down the blocked path (M*N*K > 4096); ``hypothesis.event``
reports which (``--hypothesis-show-statistics``).  float64 must agree with
the float64 reference within the one tolerance table, float32 with the
float64 reference started from the same parameters within the bounds derived
from the operation count (tests/tolerances.py), and a float32 fit must be,
bit for bit, its steps; any layout must give the very same bits; and
arbitrary junk must give a ValueError (or work), never anything else.

How many examples: a share of the loaded profile's ``max_examples``
(tests/conftest.py: ``dev`` locally, derandomized; ``ci`` when CI is set,
random and five times as many).
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastbp  # noqa: E402
from fastbp import reference  # noqa: E402

from tolerances import PAIRS, assert_close, assert_within, float32_bounds  # noqa: E402

DTYPES = ["float32", "float64"]
SMALL_MNK = 4096  # SMALL_MNK in src/fbp_gemm_internal.h: above this a GEMM takes the blocked path


def examples(share):
    """``share`` times the loaded profile's max_examples (tests/conftest.py)."""
    return max(1, round(settings.default.max_examples * share))


@st.composite
def problems(draw, dtype):
    n_layers = draw(st.integers(1, 3))
    output, loss = draw(st.sampled_from(PAIRS))
    lo, hi = (8, 40) if draw(st.booleans()) else (1, 20)
    widths = draw(st.lists(st.integers(lo, hi), min_size=n_layers + 1, max_size=n_layers + 1))
    if output == "softmax":
        widths[-1] = max(widths[-1], 2)
    cfg = dict(
        layer_sizes=widths,
        activation=draw(st.sampled_from(["identity", "sigmoid", "relu", "tanh"])),
        output=output,
        loss=loss,
        bias=draw(st.booleans()),
        dtype=dtype,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    n = draw(st.integers(lo, hi))
    data_seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(["C", "F", "strided", "negative", "list", "other dtype"]))
    labels = loss == "cross_entropy" and draw(st.booleans())
    batch_size = draw(st.integers(1, n + 5))
    shuffle = draw(st.booleans())
    mnk = max(n * a * b for a, b in zip(widths, widths[1:]))
    event("blocked GEMM" if mnk > SMALL_MNK else "small GEMMs only")
    return cfg, n, data_seed, layout, labels, batch_size, shuffle


def make_data(cfg, n, data_seed, labels):
    """A batch of float32 values (exact in float64, in any layout or dtype)."""
    rng = np.random.default_rng(data_seed)
    sizes, loss = cfg["layer_sizes"], cfg["loss"]
    # |x| about 1 whatever the width, so that SGD at lr 0.05 does not diverge
    X = rng.normal(scale=sizes[0] ** -0.5, size=(n, sizes[0])).astype(np.float32).astype(np.float64)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], size=n)
        Y = y if labels else np.eye(sizes[-1])[y]
    elif loss == "binary_cross_entropy" or cfg["output"] != "identity":
        Y = rng.uniform(size=(n, sizes[-1]))
    else:
        Y = rng.normal(size=(n, sizes[-1]))
    if Y.dtype.kind == "f":
        Y = Y.astype(np.float32).astype(np.float64)
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


def all_params(net):
    return [np.asarray(w) for w in net.weights] + [np.asarray(b) for b in net.biases if b is not None]


class Compare:
    """float64: within TOL of the float64 reference; float32: within the
    derived bound (looked up in ``bounds``) of the float64 reference."""

    def __init__(self, dtype, bounds):
        self.dtype, self.bounds = dtype, bounds

    def __call__(self, fast, ref, key, what):
        if self.dtype == "float64":
            assert_close(fast, ref, "float64", what)
        else:
            assert_within(fast, ref, key(self.bounds) if callable(key) else self.bounds[key], what)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(1.0))
@given(data=st.data())
def test_fast_matches_reference(dtype, data):
    cfg, n, data_seed, layout, labels, batch_size, shuffle = data.draw(problems(dtype))
    X, Y = make_data(cfg, n, data_seed, labels)
    Xl, Yl = relayout(X, layout, dtype), relayout(Y, layout, dtype)
    fast, same = fastbp.MLP(**cfg), reference.MLP(**cfg)
    for a, b in zip(all_params(fast), all_params(same)):
        assert a.tobytes() == b.tobytes(), "same seed, different initial parameters"
    # the float64 reference from the very same parameters
    ref = reference.MLP(**dict(cfg, dtype="float64", weights=fast.weights,
                               biases=fast.biases if cfg["bias"] else None))
    lr = 0.125
    close = Compare(dtype, float32_bounds(ref, X, Y, lr=lr) if dtype == "float32" else None)
    replay = fastbp.MLP(**dict(cfg, weights=fast.weights, biases=fast.biases if cfg["bias"] else None))

    close(fast.predict(Xl), ref.predict(Xl), "predict", "predict")
    close(fast.loss(Xl, Yl), ref.loss(Xl, Yl), "loss", "loss")
    lf, gf = fast.gradients(Xl, Yl)
    lr_, gr = ref.gradients(Xl, Yl)
    close(lf, lr_, "loss", "gradients: loss")
    for k, ((dWf, dbf), (dWr, dbr)) in enumerate(zip(gf, gr)):
        close(dWf, dWr, lambda B: B["dW"][k], f"dW[{k}]")
        assert (dbf is None) == (dbr is None)
        if dbf is not None:
            close(dbf, dbr, lambda B: B["db"][k], f"db[{k}]")

    close(fast.step(Xl, Yl, lr), ref.step(Xl, Yl, lr), "loss", "step: loss")
    for k in range(fast.n_layers):
        close(fast.weights[k], ref.weights[k], lambda B: B["W_step"][k], f"step: W[{k}]")
        if cfg["bias"]:
            close(fast.biases[k], ref.biases[k], lambda B: B["b_step"][k], f"step: b[{k}]")

    fit = dict(epochs=2, batch_size=batch_size, lr=0.05, shuffle=shuffle, seed=data_seed)
    if dtype == "float64":
        try:
            hf = fast.fit(Xl, Yl, **fit)
        except FloatingPointError:
            # The exp output can overflow: a diverging fit must diverge in the
            # reference too (same parameters, same steps).
            with pytest.raises(FloatingPointError):
                ref.fit(Xl, Yl, **fit)
            return
        hr = ref.fit(Xl, Yl, **fit)
        close(hf.loss, hr.loss, None, "fit: history")
        for k, (a, b) in enumerate(zip(all_params(fast), all_params(ref))):
            close(a, b, None, f"fit: parameter array {k}")
        return
    # float32: a fit is, bit for bit, the steps it takes (each bounded as above)
    replay.step(Xl, Yl, lr)
    try:
        fast.fit(Xl, Yl, **fit)
        diverged = False
    except FloatingPointError:   # the exp output can overflow: so must the replay
        diverged = True
    rng = np.random.default_rng(data_seed)
    try:
        for _ in range(2):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                replay.step(X[idx], Y[idx], 0.05)
    except FloatingPointError:
        assert diverged, "the replayed steps diverge, the fit did not"
        # Both diverge.  The fit then rewinds by its own rule (to before the
        # step whose update led to the non-finite loss), not step by step.
        return
    else:
        assert not diverged, "the fit diverged, its replayed steps did not"
    for a, b in zip(all_params(fast), all_params(replay)):
        assert a.tobytes() == b.tobytes(), "a float32 fit is not its steps"


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(0.4))
@given(data=st.data(), n_threads=st.integers(1, 8))
def test_layout_and_threads_do_not_change_bits(dtype, data, n_threads):
    problem = data.draw(problems(dtype))
    cfg, n, data_seed, layout, labels, batch_size, shuffle = problem
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
            try:
                net.fit(Xv, Yv, epochs=2, batch_size=batch_size, lr=0.05, shuffle=shuffle, seed=1)
                out.append(np.array("fitted"))
            except FloatingPointError as exc:
                # The exp output can overflow.  A diverging fit must diverge at
                # the same step in every layout and thread count, and rewind to
                # the same bits.
                out.append(np.array(str(exc)))
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


@settings(max_examples=examples(0.8))
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
