"""The C range kernels of src/fbp_optim.h against fastbp.optim's numpy `update`.

tests/c/optim_check.c is compiled with the library's flags (-O3 -std=gnu11
-fopenmp, as setup.py and tests/test_gemm_c.py use), again with
-march=native -fno-math-errno (FASTBP_NATIVE=1's flags: FMA available, and
the sqrt loops vectorised), and once with AddressSanitizer and UBSan.  For
every optimizer and option, both dtypes, 100 steps with a learning rate that
changes per step, the C program updates each step's vector in ranges of random
lengths; theta and every state array must equal numpy's BIT FOR BIT, and the
`sq` output (sum of theta^2 before each step, in index order) must equal the
same sum taken in Python.  Data exchange: a binary case file and an output
file (layout in optim_check.c).  Skipped only when no C compiler is found.
"""
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

from fastbp import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
C_DIR = os.path.join(ROOT, "tests", "c")
FLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-pthread"]

BUILDS = {
    "library": [],
    "native": ["-march=native", "-fno-math-errno"],
    "sanitized": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"],
}


def c_compiler():
    """The C compiler setup.py would use, or None."""
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "gcc", "cc"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()[0]
    return None


def _accepts(cc, flags, tmp):
    probe = tmp / "probe.c"
    probe.write_text("int main(void){return 0;}\n")
    return subprocess.run([cc, *flags, str(probe), "-o", str(tmp / "probe")],
                          capture_output=True).returncode == 0


def build_c(tmp, source, name, build):
    """Compile tests/c/<source> with the library's flags plus BUILDS[build].

    Skips when there is no compiler or it lacks what the build needs; fails
    on a compile error or any warning.
    """
    cc = c_compiler()
    if cc is None:
        pytest.skip(f"no C compiler found (CC, sysconfig CC, gcc, cc): cannot build {source}")
    extra = BUILDS[build]
    if not _accepts(cc, extra, tmp):
        pytest.skip(f"{cc} cannot build with {' '.join(extra)}")
    flags = FLAGS + (["-fopenmp"] if _accepts(cc, ["-fopenmp"], tmp) else [])
    exe = tmp / f"{name}_{build}"
    res = subprocess.run([cc, *flags, *extra, "-I", SRC, os.path.join(C_DIR, source),
                          "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert res.returncode == 0, f"{source} failed to compile:\n{res.stderr}"
    assert "warning" not in res.stderr, f"compiler warnings:\n{res.stderr}"
    return exe


@pytest.fixture(scope="module", params=sorted(BUILDS))
def optim_exe(request, tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("optim_c"), "optim_check.c", "optim_check",
                   request.param)


# (kind code, hyper[8] as optim_check.c reads them, optimizer)
def _case(opt):
    if isinstance(opt, optim.SGD):
        return 0, [opt.momentum, float(opt.nesterov), opt.weight_decay]
    if isinstance(opt, optim._SklearnAdam):
        return 3, [opt.betas[0], opt.betas[1], opt.eps]
    if isinstance(opt, optim.Adam):  # and AdamW
        return 1, [opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay,
                   float(opt._decoupled), float(opt.amsgrad)]
    return 2, [opt.alpha, opt.eps, opt.weight_decay, opt.momentum, float(opt.centered)]


OPTIMIZERS = [
    optim.SGD(lr=0.05),
    optim.SGD(lr=0.05, weight_decay=0.01),
    optim.SGD(lr=0.05, momentum=0.9),
    optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    optim.Adam(),
    optim.Adam(lr=0.01, weight_decay=0.1),
    optim.Adam(amsgrad=True),
    optim.Adam(lr=0.01, betas=(0.3, 0.6), amsgrad=True, weight_decay=0.01),  # lerp weight >= 0.5
    optim.AdamW(),
    optim.AdamW(lr=0.01, amsgrad=True, weight_decay=0.5),
    optim.RMSprop(),
    optim.RMSprop(weight_decay=0.01, momentum=0.9),
    optim.RMSprop(centered=True),
    optim.RMSprop(alpha=0.3, centered=True, momentum=0.5, weight_decay=0.1),  # lerp weight >= 0.5
    optim._SklearnAdam(),  # scikit-learn's Adam (private; fastbp.sklearn's adam)
    optim._SklearnAdam(lr=0.01, betas=(0.3, 0.6), eps=1e-4),
]


def _data(n, n_steps, dtype, seed):
    """theta and gradients with mixed magnitudes, exact zeros and tiny values."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)
    theta[::17] = 0.0
    grads = rng.standard_normal((n_steps, n)) * 10.0 ** rng.integers(-6, 2, (n_steps, n))
    grads[:, ::13] = 0.0
    grads[::9, 5] = 1e-30
    lrs = 0.05 * (1.0 + 0.5 * np.sin(np.arange(n_steps)))
    return theta.astype(dtype), grads.astype(dtype), lrs


def _run_c(exe, tmp, opt, theta, state_arrays, grads, lrs, step0, split_seed):
    kind, hyper = _case(opt)
    n, n_steps = theta.size, grads.shape[0]
    header = np.array([kind, theta.itemsize, n, n_steps, len(state_arrays), step0,
                       split_seed, 0], dtype=np.int64)
    case, out = tmp / "case.bin", tmp / "out.bin"
    with open(case, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(hyper + [0.0] * (8 - len(hyper)), dtype=np.float64).tobytes())
        f.write(np.asarray(lrs, dtype=np.float64).tobytes())
        f.write(theta.tobytes())
        for arr in state_arrays:
            f.write(arr.tobytes())
        f.write(np.ascontiguousarray(grads).tobytes())
    res = subprocess.run([str(exe), str(case), str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    raw = out.read_bytes()
    k = theta.itemsize * n
    theta_c = np.frombuffer(raw[:k], dtype=theta.dtype)
    states_c = [np.frombuffer(raw[k * (i + 1):k * (i + 2)], dtype=theta.dtype)
                for i in range(len(state_arrays))]
    sq = np.frombuffer(raw[k * (len(state_arrays) + 1):], dtype=np.float64)
    assert sq.size == n_steps
    return theta_c, states_c, sq


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=repr)
def test_c_kernels_equal_numpy_bitwise(optim_exe, tmp_path, opt, dtype):
    n, n_steps = 523, 100
    theta0, grads, lrs = _data(n, n_steps, dtype, seed=len(repr(opt)))
    state = opt.init_state(n, dtype)
    theta = theta0.copy()
    sq_ref = []
    for g, lr in zip(grads, lrs):
        acc = 0.0
        for x in theta.tolist():
            acc += x * x
        sq_ref.append(acc)
        opt.update(theta, g, state, lr=lr)
    init = opt.init_state(n, dtype)
    theta_c, states_c, sq = _run_c(optim_exe, tmp_path, opt, theta0,
                                   [init[k] for k in opt.state_names()], grads, lrs, 0,
                                   split_seed=7)
    assert np.isfinite(theta).all()
    assert np.array_equal(_bits(theta_c), _bits(theta)), (
        f"theta: {np.count_nonzero(_bits(theta_c) != _bits(theta))} of {n} elements differ")
    for name, arr in zip(opt.state_names(), states_c):
        assert np.array_equal(_bits(arr), _bits(state[name])), name
    assert np.array_equal(sq, np.array(sq_ref))


@pytest.mark.parametrize("opt", [optim.SGD(lr=0.1, momentum=0.9), optim.Adam(amsgrad=True),
                                 optim.RMSprop(centered=True, momentum=0.9),
                                 optim._SklearnAdam(betas=(0.8, 0.99))], ids=repr)
def test_c_kernels_resume_from_a_state(optim_exe, tmp_path, opt):
    """Starting at step 37 with a non-zero state (not SGD's first step)."""
    n, dtype = 64, "float32"
    theta0, grads, lrs = _data(n, 5, dtype, seed=3)
    rng = np.random.default_rng(4)
    state = opt.init_state(n, dtype)
    for key in opt.state_names():  # a reachable state: grad_avg^2 < square_avg
        state[key][:] = rng.uniform(0.0, 0.5 if key == "grad_avg" else 2.0, n).astype(dtype)
    if "square_avg" in state:
        state["square_avg"] += 0.5
    state["step"] = 37
    start = {k: state[k].copy() for k in opt.state_names()}
    theta = theta0.copy()
    for g, lr in zip(grads, lrs):
        opt.update(theta, g, state, lr=lr)
    theta_c, states_c, _ = _run_c(optim_exe, tmp_path, opt, theta0,
                                  [start[k] for k in opt.state_names()], grads, lrs, 37,
                                  split_seed=11)
    assert np.array_equal(_bits(theta_c), _bits(theta))
    for name, arr in zip(opt.state_names(), states_c):
        assert np.array_equal(_bits(arr), _bits(state[name])), name
