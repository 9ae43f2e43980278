"""The GPU backends of the entropic OT op (CUDA extension and Triton; both regimes) on CUDA tensors
against the reference on the same device. Skipped without a GPU; run by bench/gpu_lease.py."""
import math

import pytest
import torch

from grounded_fast import _backend
from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, SolveSpec, entropic_ot
from grounded_fast.reference.entropic_ot import entropic_ot_reference

from conftest import assert_close, make_problem
from kernel_cases import check_fused_pass

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CASES = {"balanced": (BALANCED, (math.inf, math.inf), True), "unbalanced": (UNBALANCED, (0.7, 2.0), True),
         "unbalanced-entropy": (UNBALANCED, (0.5, math.inf), False), "partial": (PARTIAL, (math.inf, math.inf), True)}
NAMES = ("plan", "log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")


def _solver(backend, features=False):
    """The backend's solver on a given C (or, with ``features``, from features); skips the test
    where the backend is not there."""
    if backend == "cuda":
        if not _backend.cuda_extension_available():
            pytest.skip("CUDA extension not built (FORCE_CUDA=1)")
        from grounded_fast.ops.entropic_ot import backend_cuda
        from grounded_fast.ops.entropic_ot_features import backend_cuda as features_cuda
        return features_cuda.solve if features else backend_cuda.solve
    if not _backend.triton_available():
        pytest.skip("triton not installed")
    if features:
        from grounded_fast.ops.entropic_ot_features.backend_triton import solve as features_triton
        return features_triton
    from grounded_fast.ops.entropic_ot.backend_triton import solve
    return solve


# float32 partial OT: its stop quantity, the log plan's change, rounds to ~1e-5 x sqrt(n m) (the
# history's values there are rounding noise), so tol sits above it and the history gets this atol
F32_PARTIAL_TOL, F32_PARTIAL_HIST_ATOL = 1e-3, 2e-3


def _assert_outputs(names, out, ref, dtype, rtol, atol, hist_atol=None):
    """Solver outputs against the reference's: counts and status exactly; potentials where finite
    (same finite pattern; float32 atol at least 1e-4); err_history within rtol / ``hist_atol``
    (default atol); the rest within rtol / atol."""
    for nm, o, r in zip(names, out, ref):
        if nm == "err_history" and hist_atol is not None:
            assert_close(o.cpu(), r.cpu(), rtol=rtol, atol=hist_atol, name=nm)
        elif nm in ("n_iter", "status"):
            assert torch.equal(o.cpu(), r.cpu()), f"{nm}: {o.tolist()} != {r.tolist()}"
        elif nm in ("log_u", "log_v"):
            fin = torch.isfinite(r)
            assert torch.equal(torch.isfinite(o), fin)
            assert_close(o[fin].cpu(), r[fin].cpu(), rtol=rtol, atol=max(atol, 1e-4 if dtype == torch.float32 else 0),
                         name=nm)
        else:
            assert_close(o.cpu(), r.cpu(), rtol=rtol, atol=atol, name=nm)


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
    f32_partial = dtype == torch.float32 and problem == PARTIAL
    args += [SolveSpec(problem, 0.1, ra, rb, kl_ref, 60, 1e-9 if dtype == torch.float64 else
                       (F32_PARTIAL_TOL if f32_partial else 1e-6), 5)]
    if regime == "small" and backend == "triton" and not __import__(
            "grounded_fast.triton_kernels.ot.sinkhorn_small", fromlist=["fits"]).fits(n, m):
        pytest.skip("tile too large for the Triton persistent kernel")
    out = solve(*args, regime=regime)
    ref = entropic_ot_reference(*args)
    _assert_outputs(NAMES, out, ref, dtype, *((1e-9, 1e-12) if dtype == torch.float64 else (2e-4, 1e-5)),
                    hist_atol=F32_PARTIAL_HIST_ATOL if f32_partial else None)


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


# ------------------------------------------------------------ cost recomputed from features
FEATURE_CASES = {"balanced": (BALANCED, {}), "unbalanced": (UNBALANCED, dict(reg_m=(0.7, 2.0))),
                 "partial": (PARTIAL, dict(mass=0.6))}


def _features(B, n, m, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g, dtype=torch.float64) / d ** 0.5
    y = torch.randn(B, m, d, generator=g, dtype=torch.float64) / d ** 0.5 + 0.3
    a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.1
    if n > 2:
        a[0, -1] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return [t.to(dtype).cuda() for t in (x, y, a, b)]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", list(FEATURE_CASES))
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 13, 29, 3), (2, 41, 401, 16), (1, 300, 257, 70)])
def test_gpu_features_backend_matches_reference(backend, case, cost, dtype, shape):
    """The feature kernels (CUDA; Triton with 3xTF32 / fp64 tensor-core products) against the
    chunked torch passes on the same device; (1, 300, 257) splits the streamed axis."""
    from grounded_fast.ops.entropic_ot_features.driver import cost_code
    from grounded_fast.reference.ot_features import entropic_ot_features_reference
    solve = _solver(backend, features=True)
    B, n, m, d = shape
    x, y, a, b = _features(B, n, m, d, dtype, seed=n + d)
    problem, kw = FEATURE_CASES[case]
    mass = torch.full((B,), kw.get("mass", 0.0), dtype=dtype, device="cuda")
    ra, rb = kw.get("reg_m", (math.inf, math.inf))
    reg = 0.3 if cost == "sqeuclidean" else 0.1
    f32_partial = dtype == torch.float32 and problem == PARTIAL
    args = [x, y, a, b, mass, torch.zeros_like(a), torch.zeros_like(b), cost_code(cost),
            SolveSpec(problem, reg, ra, rb, True, 60,
                      1e-9 if dtype == torch.float64 else (F32_PARTIAL_TOL if f32_partial else 1e-5),
                      5)]  # float32: a tol well above rounding, so n_iter is stable
    out, ref = solve(*args), entropic_ot_features_reference(*args)
    names = ("log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")
    _assert_outputs(names, out, ref, dtype, *((1e-9, 1e-12) if dtype == torch.float64 else (5e-4, 2e-5)),
                    hist_atol=F32_PARTIAL_HIST_ATOL if f32_partial else None)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
def test_gpu_features_passes_and_half_inputs(backend, cost):
    """Every pass with 1 and several splits, float64 / float32 / bfloat16 / float16 features,
    against the torch passes on the same (rounded) values."""
    _solver(backend, features=True)
    from grounded_fast.ops.entropic_ot_features.backend_torch import TorchFeaturePasses
    from grounded_fast.ops.entropic_ot_features.driver import cost_code
    code = cost_code(cost)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        x, y, _, _ = _features(2, 97, 1031, 40, torch.float64, seed=7)
        x, y = x.to(dtype), y.to(dtype)
        dt = torch.float64 if dtype == torch.float64 else torch.float32
        ref = TorchFeaturePasses(x, y, code, 0.2, dt)
        lu, lv = torch.randn(2, 97, dtype=dt, device="cuda"), torch.randn(2, 1031, dtype=dt, device="cuda")
        w = torch.randn(2, dtype=dt, device="cuda")
        rtol, atol = (1e-10, 1e-12) if dt == torch.float64 else (2e-4, 1e-5)
        if backend == "triton":
            from grounded_fast.triton_kernels.ot.sinkhorn_features import TritonFeaturePasses
            variants = [TritonFeaturePasses(x, y, code, 0.2, splits=s) for s in (1, 5)]
        else:
            from grounded_fast.ops.entropic_ot_features.backend_cuda import CudaFeaturePasses
            variants = [CudaFeaturePasses(x, y, code, 0.2)]
            for s in (1, 3, 7):
                got = torch.ops.grounded_fast.ot_feat_lse_cuda(variants[0].x, variants[0].y, variants[0].s,
                                                               variants[0].t, lv, 5.0, code, s)
                assert_close(got.cpu(), ref.lse(True, lv).cpu(), rtol=rtol, atol=atol, name=f"cuda lse splits={s}")
        for got in variants:
            assert_close(got.lse(True, lv).cpu(), ref.lse(True, lv).cpu(), rtol=rtol, atol=atol, name="row lse")
            assert_close(got.lse(False, lu).cpu(), ref.lse(False, lu).cpu(), rtol=rtol, atol=atol, name="col lse")
            for o, r in zip(got.row_stats(lu, lv, w), ref.row_stats(lu, lv, w)):
                assert_close(o.cpu(), r.cpu(), rtol=rtol * 10, atol=atol, name="row stats")
            for o, r in zip(got.products(lu, lv, w), ref.products(lu, lv, w)):
                assert_close(o.cpu(), r.cpu(), rtol=rtol * 10, atol=atol, name="products")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_features_envelope_gradients(backend):
    _solver(backend, features=True)
    from grounded_fast.ops import entropic_ot_features
    x, y, a, b = _features(3, 50, 70, 8, torch.float64, seed=2)
    outs = []
    for dev, bk in (("cuda", backend), ("cpu", "torch")):
        leaves = [t.to(dev).requires_grad_() for t in (x, y, a, b)]
        sol = entropic_ot_features(*leaves, reg=0.1, cost="cosine", problem=PARTIAL, mass=0.5, backend=bk,
                                   max_iter=300)
        outs.append([g.cpu() for g in torch.autograd.grad(sol.value.sum(), leaves)])
    for g, r, nm in zip(*outs, ("dx", "dy", "da", "db")):
        assert_close(g, r, rtol=1e-8, atol=1e-10, name=nm)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 13, 29), (2, 41, 401), (1, 300, 900)])
def test_gpu_half_costs(backend, half, shape):
    """A bfloat16 / float16 C through the op (Triton reads it as it is, CUDA gets a float32 copy):
    the potentials of the float32 copy's solve, and the plan and gradient in C's dtype."""
    _solver(backend)
    C, a, b = make_problem(*shape, dtype=torch.float32, seed=5)
    C, a, b = (t.to(half).cuda() for t in (C, a, b))
    sols = []
    for cost, wa, wb in ((C, a, b), (C.float(), a.float(), b.float())):
        leaf = cost.clone().requires_grad_()
        sol = entropic_ot(leaf, wa, wb, reg=0.1, problem=PARTIAL, mass=0.5, max_iter=30, backend=backend, warn=False)
        sols.append((sol, torch.autograd.grad(sol.value.sum(), leaf)[0]))
    (s1, g1), (s2, g2) = sols
    assert s1.plan.dtype == half and g1.dtype == half
    assert torch.equal(s1.n_iter, s2.n_iter)
    for name in ("log_u", "log_v", "log_scale"):
        assert_close(getattr(s1, name).cpu(), getattr(s2, name).cpu(), rtol=1e-6, atol=1e-6, name=name)
    assert_close(g1.float().cpu(), g2.to(half).float().cpu(), rtol=1e-2, atol=1e-6, name="dC")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_cuda_persistent_kernel_exact_fallback(case, dtype):
    """Costs spanning 200 reg (K log2 e spans ~290 > 64): the CUDA persistent kernel's one-pass LSE
    bound is too loose for many rows and columns, which take its exact max-then-sum path (balanced,
    at the reference's final iterate: 44 of 96 rows and 36 of 148 columns off by more than 2^64);
    the results are still the reference's."""
    solve = _solver("cuda")
    B, n, m = 4, 24, 37
    C, a, b = make_problem(B, n, m, dtype=dtype, seed=5, scale=20.0)
    problem, (ra, rb), kl_ref = CASES[case]
    mass = torch.full((B,), 0.6, dtype=dtype) if problem == PARTIAL else torch.zeros(B, dtype=dtype)
    args = [t.cuda() for t in (C, a, b, mass, torch.zeros(B, n, dtype=dtype), torch.zeros(B, m, dtype=dtype))]
    f32_partial = dtype == torch.float32 and problem == PARTIAL
    args += [SolveSpec(problem, 0.1, ra, rb, kl_ref, 80,
                       1e-9 if dtype == torch.float64 else (1e-2 if f32_partial else 1e-6), 5)]
    _assert_outputs(NAMES, solve(*args, regime="small"), entropic_ot_reference(*args), dtype,
                    *((1e-9, 1e-12) if dtype == torch.float64 else (2e-4, 1e-5)),
                    hist_atol=F32_PARTIAL_HIST_ATOL if f32_partial else None)


FUSED_SHAPES = [(3, 13, 29), (2, 300, 64), (2, 70, 2049), (1, 150, 4100), (2, 130, 8192)]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case,shape", [("balanced", s) for s in FUSED_SHAPES]
                         + [(c, s) for c in ("unbalanced", "partial") for s in FUSED_SHAPES[2:4]])
def test_gpu_fused_regime_matches_reference(backend, dtype, case, shape):
    """The opt-in one-read regime of both backends on C read as it is, against the reference on its
    float32 values: rows of 8, 16 and 32 entries a thread in CUDA (m up to 2048, 4096, 8192), padded
    rows (m = 29, 2049, 4100), several row blocks a problem, early retirement; balanced problems,
    and the scaled (unbalanced) and capped (partial) row updates."""
    solve = _solver(backend)
    B, n, m = shape
    C, a, b = make_problem(B, n, m, dtype=torch.float32, seed=m)
    C = C.to(dtype).float()  # the values the half-precision C holds
    if B > 1:  # the problems converge at different paces
        b[1] = b[1] * torch.linspace(0.05, 3.0, m, dtype=b.dtype)
        b = b / b.sum(1, keepdim=True)
    problem, (ra, rb), kl_ref = CASES[case]
    mass = torch.full((B,), 0.6) if problem == PARTIAL else torch.zeros(B)
    args = [t.cuda() for t in (C, a, b, mass, torch.zeros(B, n), torch.zeros(B, m))]
    args += [SolveSpec(problem, 0.1, ra, rb, kl_ref, 200, 1e-5, 4)]
    out = solve(args[0].to(dtype), *args[1:], regime="fused")
    ref = entropic_ot_reference(*args)
    _assert_outputs(NAMES[1:4] + NAMES[6:8], out[1:4] + out[6:8], ref[1:4] + ref[6:8], torch.float32, 2e-4, 1e-5)
    if backend == "cuda" and case == "balanced":
        with pytest.raises(ValueError, match="float32 or half-precision"):
            solve(*(t.double() for t in args[:6]), *args[6:], regime="fused")


@pytest.mark.parametrize("scale,cap", [(1.0, False), (0.7, False), (1.0, True)])
def test_gpu_cuda_fused_pass_is_one_sinkhorn_iteration(scale, cap):
    """One call of ot_fused_pass_cuda against its definition (kernel_cases.check_fused_pass)."""
    _solver("cuda")

    def fused_pass(C, m, *args):
        out = torch.ops.grounded_fast.ot_fused_pass_cuda(C.cuda(), m, *(t.cuda() for t in args[:4]), *args[4:])
        return tuple(t.cpu() for t in out)
    check_fused_pass(fused_pass, scale, cap)
