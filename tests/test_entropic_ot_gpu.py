"""The GPU backends of the entropic OT op (CUDA extension and Triton; both regimes) on CUDA tensors
against the reference on the same device. Skipped without a GPU; run by bench/gpu_suite.sh."""
import math

import pytest
import torch

from grounded_fast import _backend
from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, entropic_ot
from grounded_fast.reference.entropic_ot import entropic_ot_reference

from conftest import assert_close, make_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CASES = {"balanced": (BALANCED, (math.inf, math.inf), True), "unbalanced": (UNBALANCED, (0.7, 2.0), True),
         "unbalanced-entropy": (UNBALANCED, (0.5, math.inf), False), "partial": (PARTIAL, (math.inf, math.inf), True)}
NAMES = ("plan", "log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")


def _solver(backend):
    if backend == "cuda":
        if not _backend.cuda_extension_available():
            pytest.skip("CUDA extension not built (FORCE_CUDA=1)")
        from grounded_fast.ops.cuda_ot import entropic_ot_cuda
        return entropic_ot_cuda
    if not _backend.triton_available():
        pytest.skip("triton not installed")
    from grounded_fast.triton_kernels.ot.entropic_ot import entropic_ot_triton
    return entropic_ot_triton


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("regime", ["small", "stream"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 13, 29), (5, 64, 197), (2, 41, 401)])
def test_gpu_backend_matches_reference(backend, regime, case, dtype, shape):
    solve = _solver(backend)
    B, n, m = shape
    C, a, b = make_problem(B, n, m, dtype=dtype, seed=n)
    if n > 2:
        a[0, -1] = 0
        a = a / a.sum(1, keepdim=True)
    problem, (ra, rb), kl_ref = CASES[case]
    mass = torch.full((B,), 0.6, dtype=dtype) if problem == PARTIAL else torch.zeros(B, dtype=dtype)
    args = [t.cuda() for t in (C, a, b, mass, torch.zeros(B, n, dtype=dtype), torch.zeros(B, m, dtype=dtype))]
    args += [problem, 0.1, ra, rb, kl_ref, 60, 1e-9 if dtype == torch.float64 else 1e-6, 5]
    if regime == "small" and backend == "triton" and not __import__(
            "grounded_fast.triton_kernels.ot.sinkhorn_small", fromlist=["fits"]).fits(n, m):
        pytest.skip("tile too large for the Triton persistent kernel")
    out = solve(*args, regime=regime)
    ref = entropic_ot_reference(*args)
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (2e-4, 1e-5)
    for nm, o, r in zip(NAMES, out, ref):
        if nm in ("n_iter", "status"):
            assert torch.equal(o.cpu(), r.cpu()), f"{nm}: {o.tolist()} != {r.tolist()}"
        elif nm in ("log_u", "log_v"):
            fin = torch.isfinite(r)
            assert torch.equal(torch.isfinite(o), fin)
            assert_close(o[fin].cpu(), r[fin].cpu(), rtol=rtol, atol=max(atol, 1e-4 if dtype == torch.float32 else 0),
                         name=nm)
        else:
            assert_close(o.cpu(), r.cpu(), rtol=rtol, atol=atol, name=nm)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_envelope_gradients(backend):
    _solver(backend)
    C, a, b = make_problem(4, 16, 24, dtype=torch.float64, seed=1)
    outs = []
    for dev, bk in (("cuda", backend), ("cpu", "cpu")):
        Ct, at, bt = (t.to(dev).requires_grad_() for t in (C, a, b))
        sol = entropic_ot(Ct, at, bt, reg=0.1, problem=PARTIAL, mass=0.5, backend=bk, max_iter=500)
        outs.append([g.cpu() for g in torch.autograd.grad(sol.value.sum(), (Ct, at, bt))])
    for x, y, nm in zip(*outs, ("dC", "da", "db")):
        assert_close(x, y, rtol=1e-8, atol=1e-10, name=nm)
