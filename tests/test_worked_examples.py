"""The two worked numeric examples of the lecture notes (seed 003), through the public API.

Every expected value is derived here, independently of the library, with the
chain rule written out node by node in plain Python floats (float64).  The
library must match those exact values to ~1e-12.  Separately, the figures the
slides print (4 decimals) are checked against the exact values: the slides
round intermediate results, mostly truncate rather than round, and contain a
few slips; those are listed, with the exact value, in ``*_SLIPS`` below and the
tests assert that exactly those figures disagree.
"""
import math

import numpy as np
import pytest

TOL = 1e-12


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def close(a, b, tol=TOL):
    return abs(a - b) <= tol


# ===========================================================================
# Example 1: 2-2-1 sigmoid network, no biases, squared error, eta = 0.7
#   z_a = x1 w1 + x2 w3    h_a = s(z_a)
#   z_b = x1 w2 + x2 w4    h_b = s(z_b)
#   z_c = h_a w5 + h_b w6  y   = s(z_c)      E = 1/2 (y_t - y)^2
# ===========================================================================

X1 = (0.23, 0.82)
YT1 = 1.0
ETA1 = 0.7
W_221 = dict(w1=0.1, w2=0.5, w3=0.4, w4=0.3, w5=0.2, w6=0.6)


def derive_221(w):
    """Forward pass, loss and every gradient of example 1, node by node."""
    x1, x2 = X1
    n = {}
    n["z_a"] = x1 * w["w1"] + x2 * w["w3"]
    n["h_a"] = sig(n["z_a"])
    n["z_b"] = x1 * w["w2"] + x2 * w["w4"]
    n["h_b"] = sig(n["z_b"])
    n["z_c"] = n["h_a"] * w["w5"] + n["h_b"] * w["w6"]
    n["y"] = sig(n["z_c"])
    n["E"] = 0.5 * (YT1 - n["y"]) ** 2
    # backward: output node first
    n["dE/dy"] = -(YT1 - n["y"])
    n["dy/dz_c"] = n["y"] * (1.0 - n["y"])
    dE_dzc = n["dE/dy"] * n["dy/dz_c"]
    n["dE/dw5"] = dE_dzc * n["h_a"]
    n["dE/dw6"] = dE_dzc * n["h_b"]
    # hidden nodes: dz_c/dh_a = w5, dz_c/dh_b = w6
    n["dh_a/dz_a"] = n["h_a"] * (1.0 - n["h_a"])
    n["dh_b/dz_b"] = n["h_b"] * (1.0 - n["h_b"])
    dE_dza = dE_dzc * w["w5"] * n["dh_a/dz_a"]
    dE_dzb = dE_dzc * w["w6"] * n["dh_b/dz_b"]
    n["dE/dw1"] = dE_dza * x1
    n["dE/dw3"] = dE_dza * x2
    n["dE/dw2"] = dE_dzb * x1
    n["dE/dw4"] = dE_dzb * x2
    return n


def matrices_221(w):
    """The slide's weights as W in z = W h: row = receiving unit, column = input."""
    W1 = [[w["w1"], w["w3"]],   # z_a = x1 w1 + x2 w3
          [w["w2"], w["w4"]]]   # z_b = x1 w2 + x2 w4
    W2 = [[w["w5"], w["w6"]]]   # z_c = h_a w5 + h_b w6
    return W1, W2


EX1 = derive_221(W_221)
W_221_NEW = {k: v - ETA1 * EX1["dE/d" + k] for k, v in W_221.items()}
EX1_AFTER = derive_221(W_221_NEW)


def net_221(impl):
    W1, W2 = matrices_221(W_221)
    return impl([2, 2, 1], activation="sigmoid", output="sigmoid", loss="squared_error",
                bias=False, dtype="float64", weights=[W1, W2])


def test_221_matrices_match_slide():
    # guards the transcription of the slide: W1 = [[0.1, 0.4], [0.5, 0.3]], W2 = [[0.2, 0.6]]
    assert matrices_221(W_221) == ([[0.1, 0.4], [0.5, 0.3]], [[0.2, 0.6]])


def test_221_forward(impl):
    net = net_221(impl)
    yhat = net.predict(np.array([X1]))
    assert yhat.shape == (1, 1) and yhat.dtype == np.float64
    assert close(yhat[0, 0], EX1["y"])
    assert close(net.loss(np.array([X1]), np.array([[YT1]])), EX1["E"])


def test_221_gradients(impl):
    net = net_221(impl)
    loss, grads = net.gradients(np.array([X1]), np.array([[YT1]]))
    assert close(loss, EX1["E"])
    assert len(grads) == 2
    (dW1, db1), (dW2, db2) = grads
    assert db1 is None and db2 is None
    assert dW1.shape == (2, 2) and dW2.shape == (1, 2)
    assert dW1.dtype == np.float64 and dW2.dtype == np.float64
    expected_dW1, expected_dW2 = matrices_221({k: EX1["dE/d" + k] for k in W_221})
    np.testing.assert_allclose(dW1, expected_dW1, rtol=0, atol=TOL)
    np.testing.assert_allclose(dW2, expected_dW2, rtol=0, atol=TOL)


def test_221_sgd_step_and_loss_after(impl):
    net = net_221(impl)
    X, Y = np.array([X1]), np.array([[YT1]])
    loss_before = net.step(X, Y, ETA1)
    assert close(loss_before, EX1["E"])
    W1_new, W2_new = matrices_221(W_221_NEW)
    np.testing.assert_allclose(net.weights[0], W1_new, rtol=0, atol=TOL)
    np.testing.assert_allclose(net.weights[1], W2_new, rtol=0, atol=TOL)
    loss_after = net.loss(X, Y)
    assert close(loss_after, EX1_AFTER["E"])
    assert loss_after < loss_before  # "check that the error has decreased"


# The slide's printed figures for example 1, and the exact value each stands for.
SLIDE_221 = [
    ("z_a", "0.351", EX1["z_a"]),
    ("h_a", "0.5868", EX1["h_a"]),
    ("z_b", "0.361", EX1["z_b"]),
    ("h_b", "0.5892", EX1["h_b"]),
    ("z_c", "0.4708", EX1["z_c"]),
    ("y", "0.6155", EX1["y"]),
    ("E", "0.0739", EX1["E"]),
    ("dE/dy", "-0.3844", EX1["dE/dy"]),
    ("dy/dz_c", "0.2365", EX1["dy/dz_c"]),
    ("dh_a/dz_a", "0.2424", EX1["dh_a/dz_a"]),
    ("dh_b/dz_b", "0.2420", EX1["dh_b/dz_b"]),
    ("dE/dw1", "-0.0010", EX1["dE/dw1"]),
    ("dE/dw2", "-0.0030", EX1["dE/dw2"]),
    ("dE/dw3", "-0.0036", EX1["dE/dw3"]),
    ("dE/dw4", "-0.0108", EX1["dE/dw4"]),
    ("dE/dw5", "-0.0533", EX1["dE/dw5"]),
    ("dE/dw6", "-0.0535", EX1["dE/dw6"]),
    ("w1_new", "0.1007", W_221_NEW["w1"]),
    ("w2_new", "0.5021", W_221_NEW["w2"]),
    ("w3_new", "0.4025", W_221_NEW["w3"]),
    ("w4_new", "0.3075", W_221_NEW["w4"]),
    ("w5_new", "0.2373", W_221_NEW["w5"]),
    ("w6_new", "0.6374", W_221_NEW["w6"]),
    # the slide with the second forward pass is an image: no figures for the loss after
]

# Figures off by one unit or more in their last printed digit (exact values in
# the comments).  All come from the slide carrying rounded/truncated
# intermediates forward, plus one arithmetic slip:
SLIPS_221 = {
    # exact 0.4709415; the slide sums its truncated h_a, h_b: 0.5868*0.2 + 0.5892*0.6 = 0.47088
    "z_c",
    # exact 0.6156066; the slide evaluates s(0.4708) = 0.61557
    "y",
    # exact 0.2366351; even the slide's own 0.6155*(1 - 0.6155) = 0.23666, not 0.2365 (slip)
    "dy/dz_c",
    # exact -0.0536017; the slide's rounded factors give -0.3844*0.2365*0.5892 = -0.053565
    "dE/dw6",
    # exact 0.6375212 (= 0.6 + 0.7*0.0536017); follows from the dE/dw6 figure
    "w6_new",
}
# (dE/dy is printed -0.3844, exact -0.3843934: fine; the slide text writes
# -(1.0 - 0.6155) = -0.3844, which is really -0.3845 - one more rounding slip
# that happens to land on the exact value.)


def figure_agrees(printed, exact):
    """True when the figure ``printed`` (a string, as on the slide) is ``exact``
    rounded or truncated to its printed decimals: off by less than one unit in
    its last digit."""
    unit = 10.0 ** -len(printed.split(".")[1])
    return abs(exact - float(printed)) < unit


def _disagreeing(figures):
    return {name for name, printed, exact in figures if not figure_agrees(printed, exact)}


def test_221_slide_figures_agree_to_their_rounding():
    assert _disagreeing(SLIDE_221) == SLIPS_221


# ===========================================================================
# Example 2: 3-2-2 sigmoid network with biases, squared error, eta = 0.01
#   z_a = x1 w1 + x2 w3 + x3 w5 + b1     h_a = s(z_a)
#   z_b = x1 w2 + x2 w4 + x3 w6 + b2     h_b = s(z_b)
#   z_c = h_a w7 + h_b w9 + b3           y1 = s(z_c)
#   z_d = h_a w8 + h_b w10 + b4          y2 = s(z_d)
#   E = 1/2 [(y_t1 - y1)^2 + (y_t2 - y2)^2]
# ===========================================================================

X2 = (1.0, 4.0, 5.0)
YT2 = (0.1, 0.05)
ETA2 = 0.01
P_322 = dict(w1=0.1, w2=0.2, w3=0.3, w4=0.4, w5=0.5, w6=0.6, w7=0.7, w8=0.8, w9=0.9, w10=0.1,
             b1=0.5, b2=0.5, b3=0.5, b4=0.5)


def derive_322(p):
    """Forward pass, loss and every gradient of example 2, node by node."""
    x1, x2, x3 = X2
    t1, t2 = YT2
    n = {}
    n["z_a"] = x1 * p["w1"] + x2 * p["w3"] + x3 * p["w5"] + p["b1"]
    n["h_a"] = sig(n["z_a"])
    n["z_b"] = x1 * p["w2"] + x2 * p["w4"] + x3 * p["w6"] + p["b2"]
    n["h_b"] = sig(n["z_b"])
    n["z_c"] = n["h_a"] * p["w7"] + n["h_b"] * p["w9"] + p["b3"]
    n["y1"] = sig(n["z_c"])
    n["z_d"] = n["h_a"] * p["w8"] + n["h_b"] * p["w10"] + p["b4"]
    n["y2"] = sig(n["z_d"])
    n["E"] = 0.5 * ((t1 - n["y1"]) ** 2 + (t2 - n["y2"]) ** 2)
    # backward: output nodes
    n["dE/dy1"] = -(t1 - n["y1"])
    n["dE/dy2"] = -(t2 - n["y2"])
    n["dy1/dz_c"] = n["y1"] * (1.0 - n["y1"])
    n["dy2/dz_d"] = n["y2"] * (1.0 - n["y2"])
    dE_dzc = n["dE/dy1"] * n["dy1/dz_c"]
    dE_dzd = n["dE/dy2"] * n["dy2/dz_d"]
    n["dE/dw7"] = dE_dzc * n["h_a"]
    n["dE/dw9"] = dE_dzc * n["h_b"]
    n["dE/db3"] = dE_dzc
    n["dE/dw8"] = dE_dzd * n["h_a"]
    n["dE/dw10"] = dE_dzd * n["h_b"]
    n["dE/db4"] = dE_dzd
    # hidden nodes: each h feeds both z_c and z_d, so both paths add up
    n["dh_a/dz_a"] = n["h_a"] * (1.0 - n["h_a"])
    n["dh_b/dz_b"] = n["h_b"] * (1.0 - n["h_b"])
    dE_dha = dE_dzc * p["w7"] + dE_dzd * p["w8"]
    dE_dhb = dE_dzc * p["w9"] + dE_dzd * p["w10"]
    dE_dza = dE_dha * n["dh_a/dz_a"]
    dE_dzb = dE_dhb * n["dh_b/dz_b"]
    n["dE/dw1"] = dE_dza * x1
    n["dE/dw3"] = dE_dza * x2
    n["dE/dw5"] = dE_dza * x3
    n["dE/db1"] = dE_dza
    n["dE/dw2"] = dE_dzb * x1
    n["dE/dw4"] = dE_dzb * x2
    n["dE/dw6"] = dE_dzb * x3
    n["dE/db2"] = dE_dzb
    return n


def matrices_322(p):
    """(W1, b1, W2, b2) with rows = receiving units, as in z = W h + b."""
    W1 = [[p["w1"], p["w3"], p["w5"]],   # z_a
          [p["w2"], p["w4"], p["w6"]]]   # z_b
    b1 = [p["b1"], p["b2"]]
    W2 = [[p["w7"], p["w9"]],            # z_c = h_a w7 + h_b w9 + b3
          [p["w8"], p["w10"]]]           # z_d = h_a w8 + h_b w10 + b4
    b2 = [p["b3"], p["b4"]]
    return W1, b1, W2, b2


EX2 = derive_322(P_322)
P_322_NEW = {k: v - ETA2 * EX2["dE/d" + k] for k, v in P_322.items()}
EX2_AFTER = derive_322(P_322_NEW)


def net_322(impl):
    W1, b1, W2, b2 = matrices_322(P_322)
    return impl([3, 2, 2], activation="sigmoid", output="sigmoid", loss="squared_error",
                bias=True, dtype="float64", weights=[W1, W2], biases=[b1, b2])


def test_322_forward(impl):
    net = net_322(impl)
    yhat = net.predict(np.array([X2]))
    assert yhat.shape == (1, 2) and yhat.dtype == np.float64
    np.testing.assert_allclose(yhat[0], [EX2["y1"], EX2["y2"]], rtol=0, atol=TOL)
    assert close(net.loss(np.array([X2]), np.array([YT2])), EX2["E"])


def test_322_gradients(impl):
    net = net_322(impl)
    loss, grads = net.gradients(np.array([X2]), np.array([YT2]))
    assert close(loss, EX2["E"])
    (dW1, db1), (dW2, db2) = grads
    eW1, eb1, eW2, eb2 = matrices_322({k: EX2["dE/d" + k] for k in P_322})
    for got, want in ((dW1, eW1), (db1, eb1), (dW2, eW2), (db2, eb2)):
        assert got.dtype == np.float64
        assert got.shape == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_322_sgd_step_and_loss_after(impl):
    net = net_322(impl)
    X, Y = np.array([X2]), np.array([YT2])
    assert close(net.step(X, Y, ETA2), EX2["E"])
    eW1, eb1, eW2, eb2 = matrices_322(P_322_NEW)
    for got, want in ((net.weights[0], eW1), (net.biases[0], eb1),
                      (net.weights[1], eW2), (net.biases[1], eb2)):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    loss_after = net.loss(X, Y)
    assert close(loss_after, EX2_AFTER["E"])
    assert loss_after < EX2["E"]


SLIDE_322 = [
    ("z_a", "4.3", EX2["z_a"]),
    ("h_a", "0.9866", EX2["h_a"]),
    ("z_b", "5.3", EX2["z_b"]),
    ("h_b", "0.9950", EX2["h_b"]),
    ("z_c", "2.086", EX2["z_c"]),
    ("y1", "0.8895", EX2["y1"]),
    ("z_d", "1.388", EX2["z_d"]),
    ("y2", "0.8002", EX2["y2"]),
    ("E", "0.5930", EX2["E"]),
    ("dE/dy1", "0.7895", EX2["dE/dy1"]),
    ("dE/dy2", "0.7502", EX2["dE/dy2"]),
    ("dy1/dz_c", "0.0982", EX2["dy1/dz_c"]),
    ("dy2/dz_d", "0.1598", EX2["dy2/dz_d"]),
    ("dh_a/dz_a", "0.0132", EX2["dh_a/dz_a"]),
    # "Expected final results"
    ("dE/dw1", "0.0012", EX2["dE/dw1"]),
    ("dE/dw2", "0.00005", EX2["dE/dw2"]),
    ("dE/dw3", "0.0050", EX2["dE/dw3"]),
    ("dE/dw4", "0.0002", EX2["dE/dw4"]),
    ("dE/dw5", "0.0063", EX2["dE/dw5"]),
    ("dE/dw6", "0.00029", EX2["dE/dw6"]),
    ("dE/dw7", "0.0764", EX2["dE/dw7"]),
    ("dE/dw8", "0.1182", EX2["dE/dw8"]),
    ("dE/dw9", "0.0771", EX2["dE/dw9"]),
    ("dE/dw10", "0.1192", EX2["dE/dw10"]),
    ("dE/db1", "0.0012", EX2["dE/db1"]),
    ("dE/db2", "0.00005", EX2["dE/db2"]),
    ("dE/db3", "0.0775", EX2["dE/db3"]),
    ("dE/db4", "0.1198", EX2["dE/db4"]),
    ("w1_new", "0.0999", P_322_NEW["w1"]),
    ("w2_new", "0.1999", P_322_NEW["w2"]),
    ("w3_new", "0.2999", P_322_NEW["w3"]),
    ("w4_new", "0.3999", P_322_NEW["w4"]),
    ("w5_new", "0.4999", P_322_NEW["w5"]),
    ("w6_new", "0.5999", P_322_NEW["w6"]),
    ("w7_new", "0.6992", P_322_NEW["w7"]),
    ("w8_new", "0.7988", P_322_NEW["w8"]),
    ("w9_new", "0.8992", P_322_NEW["w9"]),
    ("w10_new", "0.0988", P_322_NEW["w10"]),
    ("b1_new", "0.4999", P_322_NEW["b1"]),
    ("b2_new", "0.4999", P_322_NEW["b2"]),
    ("b3_new", "0.4992", P_322_NEW["b3"]),
    ("b4_new", "0.4988", P_322_NEW["b4"]),
    # second forward pass with the new parameters
    ("z_a after", "4.29", EX2_AFTER["z_a"]),
    ("h_a after", "0.9864", EX2_AFTER["h_a"]),
    ("z_b after", "5.2989", EX2_AFTER["z_b"]),
    ("h_b after", "0.9950", EX2_AFTER["h_b"]),
    ("z_c after", "2.083", EX2_AFTER["z_c"]),
    ("y1 after", "0.8892", EX2_AFTER["y1"]),
    ("z_d after", "1.385", EX2_AFTER["z_d"]),
    ("y2 after", "0.7997", EX2_AFTER["y2"]),
    ("E after", "0.5924", EX2_AFTER["E"]),
]

SLIPS_322 = {
    # exact 0.8003996; the slide truncates z_d to 1.388 (exact 1.3887938) and s(1.388) = 0.80027
    "y2",
    # exact 0.7503996 = y2 - 0.05; follows from y2
    "dE/dy2",
    # exact 0.5932449; follows from y2
    "E",
    # exact 0.0765351; the slide's own factors give 0.7895*0.0982*0.9866 = 0.07649 (slip)
    "dE/dw7",
    # First-layer gradients ("Expected final results"): the slide writes the
    # right formula, dE/dw1 = (y1 path) + (y2 path), but its figures keep only
    # the y2 path (through z_d), dropping the y1 path through z_c, see
    # test_322_slide_first_layer_figures_drop_the_y1_path.  Exact values:
    "dE/dw1",   # 0.0019839
    "dE/db1",   # 0.0019839
    "dE/dw3",   # 0.0079356
    "dE/dw5",   # 0.0099196
    "dE/dw2",   # 0.0004043
    "dE/db2",   # 0.0004043
    "dE/dw4",   # 0.0016172
    "dE/dw6",   # 0.0020214
    # (The updated parameters still agree to 4 digits: eta = 0.01 hides those errors.)
    # Second forward pass: the slide computes it from its 4-digit parameters and
    # truncated intermediates (z_a = 4.29, exact 4.2991469, so s(4.29) = 0.98648),
    # and the first-layer errors above:
    "h_a after",  # exact 0.9866018
    "z_b after",  # exact 5.2998262; the slide's 0.1999 + 4*0.3999 + 5*0.5999 + 0.4999 = 5.2989
    "y1 after",   # exact 0.8893237
    "y2 after",   # exact 0.7998300
    "E after",    # exact 0.5926384 (the loss does decrease, from 0.5932449)
}


def test_322_slide_first_layer_figures_drop_the_y1_path():
    # The slide's first-layer figures are what you get with only the y2 path.
    n = EX2
    y2_path = n["dE/dy2"] * n["dy2/dz_d"]
    only_y2 = {
        "dE/dw1": y2_path * P_322["w8"] * n["dh_a/dz_a"] * X2[0],
        "dE/dw3": y2_path * P_322["w8"] * n["dh_a/dz_a"] * X2[1],
        "dE/dw5": y2_path * P_322["w8"] * n["dh_a/dz_a"] * X2[2],
        "dE/db1": y2_path * P_322["w8"] * n["dh_a/dz_a"],
        "dE/dw2": y2_path * P_322["w10"] * n["dh_b/dz_b"] * X2[0],
        "dE/dw4": y2_path * P_322["w10"] * n["dh_b/dz_b"] * X2[1],
        "dE/dw6": y2_path * P_322["w10"] * n["dh_b/dz_b"] * X2[2],
        "dE/db2": y2_path * P_322["w10"] * n["dh_b/dz_b"],
    }
    printed = {name: fig for name, fig, _ in SLIDE_322}
    for name, value in only_y2.items():
        assert figure_agrees(printed[name], value), (name, printed[name], value)
        assert not figure_agrees(printed[name], EX2[name])


def test_322_slide_figures_agree_to_their_rounding():
    assert _disagreeing(SLIDE_322) == SLIPS_322
