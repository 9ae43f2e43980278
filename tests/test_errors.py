"""Bad input gives clear errors naming the argument; failures are never silent NaNs."""
import glob
import math
import os
import re

import numpy as np
import pytest
import torch

import grounded_fast.ot as ot
from grounded_fast.ops import PARTIAL, entropic_ot

from conftest import make_problem


@pytest.fixture
def prob():
    return make_problem(2, 4, 5)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda C, a, b: (C, a[:, :3], b), ValueError, "a must have shape"),
    (lambda C, a, b: (C, a, b[:1]), ValueError, "b must have shape"),
    (lambda C, a, b: (C[0], a, b), ValueError, "single .* a must be 1-d"),
    (lambda C, a, b: (C[0, 0], a[0], b[0]), ValueError, "C must be \\(B, n, m\\) or \\(n, m\\)"),
    (lambda C, a, b: (C, -a, b), ValueError, "a has negative"),
    (lambda C, a, b: (C, a, b * math.nan), ValueError, "b contains NaN"),
    (lambda C, a, b: (C * math.inf, a, b), ValueError, "C .* NaN or inf"),
    (lambda C, a, b: (C, a.float(), b), TypeError, "a has dtype"),
    (lambda C, a, b: (C[:0], a[:0], b[:0]), ValueError, "empty batch"),
    (lambda C, a, b: (C.long(), a, b), TypeError, "floating-point"),
])
def test_op_input_errors(prob, mutate, exc, match):
    with pytest.raises(exc, match=match):
        entropic_ot(*mutate(*prob), reg=0.1)


def test_value_checks_report_the_first_failure_in_order(prob):
    """All value checks are read at once (one device-to-host copy); the error is still the first
    failing check in argument order, and an overflowing sum of a finite C is not an error."""
    C, a, b = prob
    with pytest.raises(ValueError, match="a contains NaN"):
        entropic_ot(C, a * math.nan, -b, reg=0.1)
    with pytest.raises(ValueError, match="b has negative"):
        entropic_ot(C, a, -b, reg=0.1, problem=PARTIAL, mass=torch.full((2,), math.nan, dtype=C.dtype))
    with pytest.raises(ValueError, match="transported mass"):
        entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=torch.tensor([0.5, math.nan], dtype=C.dtype))
    big = torch.full((1, 3, 4), 3e38, dtype=torch.float32)  # the sum overflows to inf; every entry is finite
    sol = entropic_ot(big, torch.full((1, 3), 1 / 3), torch.full((1, 4), 1 / 4), reg=1e38, max_iter=3, warn=False)
    assert torch.isfinite(sol.value).all()


def test_a_solve_reads_device_values_twice(prob, monkeypatch):
    """On a GPU every read of a tensor's value on the host is a synchronisation: a solve makes two,
    one for all input checks and one for the status report (there were nine)."""
    C, a, b = prob
    reads = []

    def counted(name, orig):
        def read(self, *args, **kw):
            reads.append(name)
            return orig(self, *args, **kw)
        return read
    for name in ("__bool__", "item", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=0.5, max_iter=5, warn=False, history=False)
    assert reads == ["tolist", "tolist"]


@pytest.mark.parametrize("reg", [0, -1.0, math.nan, math.inf])
def test_bad_reg(prob, reg):
    with pytest.raises(ValueError, match="reg"):
        entropic_ot(*prob, reg=reg)


def test_bad_mass(prob):
    C, a, b = prob
    with pytest.raises(ValueError, match="m must be <="):
        entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=torch.full((2,), 1.5, dtype=C.dtype))
    with pytest.raises(ValueError, match="m "):
        entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=torch.full((2,), -0.1, dtype=C.dtype))
    a_, b_, M = np.full(3, 1 / 3), np.full(4, 1 / 4), np.ones((3, 4))
    with pytest.raises(ValueError, match="greater than 0"):
        ot.partial.entropic_partial_wasserstein(a_, b_, M, 0.1, m=-1)
    with pytest.raises(ValueError, match="lower or equal"):
        ot.partial.entropic_partial_wasserstein(a_, b_, M, 0.1, m=2)


def test_mixed_inputs():
    a, b, M = np.full(3, 1 / 3), np.full(4, 1 / 4), np.ones((3, 4))
    with pytest.raises(TypeError, match="mixed numpy and torch"):
        ot.sinkhorn(torch.tensor(a), b, M, 0.1)
    with pytest.raises(TypeError, match="dtypes"):
        ot.sinkhorn(torch.tensor(a), torch.tensor(b, dtype=torch.float32), torch.tensor(M), 0.1)
    with pytest.raises(ValueError, match="M must be a 2-d"):
        ot.sinkhorn(a, b, np.ones((2, 3, 4)), 0.1)
    with pytest.raises(ValueError, match="Unknown method"):
        ot.sinkhorn(a, b, M, 0.1, method="nope")


def test_non_convergence_warns(prob):
    with pytest.warns(RuntimeWarning, match="did not converge"):
        entropic_ot(*prob, reg=1e-3, max_iter=2, tol=1e-12)
    a, b, M = np.full(3, 1 / 3), np.full(4, 1 / 4), np.random.default_rng(0).random((3, 4))
    with pytest.warns(UserWarning, match="Sinkhorn did not converge"):
        ot.sinkhorn(a, b, M, 1e-3, numItermax=2)


def test_explicit_backend_that_cannot_run(prob):
    with pytest.raises(RuntimeError, match="cuda"):
        entropic_ot(*prob, reg=0.1, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        entropic_ot(*prob, reg=0.1, backend="tpu")


def test_backend_usable_follows_the_device_and_the_build(monkeypatch):
    """A built CUDA extension does not make 'cuda' usable on CPU tensors (a build machine without a
    GPU has one); Triton runs CPU tensors only under its interpreter."""
    from grounded_fast import _backend
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(_backend, "_CUDA_ERROR", None)  # as if built with CUDA
    assert not _backend.backend_usable("cuda", cpu) and _backend.backend_usable("cuda", gpu)
    assert _backend.backend_usable("torch", cpu) and _backend.backend_usable("cpu", cpu)
    assert not _backend.backend_usable("cpu", gpu)
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not _backend.backend_usable("triton", cpu) and _backend.backend_usable("triton", gpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.backend_usable("triton", cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.backend_usable("tpu", cpu)
    with pytest.raises(RuntimeError, match="need CUDA tensors, got cpu"):
        _backend.choose_backend(cpu, "cuda", gpu=("cuda",))


def test_env_backend(prob, monkeypatch):
    monkeypatch.setenv("GROUNDED_FAST_BACKEND", "torch")
    s1 = entropic_ot(*prob, reg=0.1)
    monkeypatch.setenv("GROUNDED_FAST_BACKEND", "cpu")
    s2 = entropic_ot(*prob, reg=0.1)
    assert torch.allclose(s1.plan, s2.plan, rtol=1e-10, atol=1e-14)


def test_mass_as_number_and_ignored_for_balanced(prob):
    C, a, b = prob
    s1 = entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=0.5)
    s2 = entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=torch.full((2,), 0.5, dtype=C.dtype))
    assert torch.equal(s1.plan, s2.plan)
    entropic_ot(C, a, b, reg=0.1, mass=5.0)  # balanced: mass is not used, so not checked
    with pytest.raises(TypeError, match="mass must be"):
        entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass="half")
    with pytest.raises(ValueError, match="mass must be a scalar or have shape"):
        entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=torch.ones(3, dtype=C.dtype))


def test_fixed_iteration_mode_does_not_warn(prob, recwarn):
    entropic_ot(*prob, reg=1e-3, max_iter=3, check_every=0)
    assert not [w for w in recwarn if "did not converge" in str(w.message)]


def test_extension_error_messages_avoid_ostream():
    """The C++ / CUDA sources raise through GF_CHECK (csrc/common/check.h), never TORCH_CHECK: on the
    H100 machine an integer in a TORCH_CHECK message segfaulted the extension instead of raising."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    sources = [p for ext in ("cpp", "cu", "h") for p in glob.glob(os.path.join(root, "**", f"*.{ext}"), recursive=True)]
    offenders = [os.path.relpath(p, root) for p in sources if not p.endswith(os.path.join("common", "check.h"))
                 and re.search(r"\bTORCH_CHECK\s*\(", open(p).read())]
    assert sources and not offenders, f"TORCH_CHECK in {offenders}: use GF_CHECK"
