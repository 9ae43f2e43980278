"""entropic_ot_features: entropic OT with the cost recomputed from features (never stored on the
'triton' / 'cuda' paths). Every backend that runs here (the chunked torch passes, the Triton
kernels under TRITON_INTERPRET=1, the materialising 'cpu' path) against ``entropic_ot`` on the
materialised ``cost_matrix(x, y, cost)`` with autograd through it (float64, awkward shapes,
zero-weight padding, balanced / unbalanced / partial), gradcheck of the envelope gradients at
convergence, the heuristic choosing the cost source, the losses, and bad inputs. The CUDA kernels
are compiled by test_cuda_compile.py and run by test_entropic_ot_gpu.py on a GPU."""
import math
import os

import pytest
import torch

from grounded_fast.nn import PartialOTLoss, SinkhornLoss
from grounded_fast.ops import (BALANCED, PARTIAL, UNBALANCED, choose_cost_source, entropic_ot, entropic_ot_features,
                               feature_dim_limit)
from grounded_fast.ot import cost_matrix
from grounded_fast.ops.costs import cost_from_features
from grounded_fast.ops.entropic_ot import SolveSpec
from grounded_fast.ops.entropic_ot_features import backend_torch, driver
from grounded_fast.ops.entropic_ot_features.backend_torch import TorchFeaturePasses

from conftest import assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
needs_triton = pytest.mark.skipif(not HAVE_TRITON or (DEVICE == "cpu" and not INTERPRET),
                                  reason="needs triton on a GPU or TRITON_INTERPRET=1")
NAMES = ("plan", "log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")
CASES = {  # problem, kwargs, gradient w.r.t. (a, b) defined
    "balanced": (BALANCED, {}, True),
    "unbalanced": (UNBALANCED, dict(reg_m=(0.7, 2.0)), True),
    "unbalanced-onesided-noref": (UNBALANCED, dict(reg_m=(0.5, math.inf), kl_ref=False), False),
    "partial": (PARTIAL, dict(mass=0.6), True),
}
REG = {"sqeuclidean": 0.3, "cosine": 0.1}
# the comparisons run few iterations on purpose (same iterates, converged or not)
pytestmark = pytest.mark.filterwarnings("ignore:entropic_ot. problems .* did not converge")


def _problem(B, n, m, d, dtype=torch.float64, seed=0, pad=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = torch.randn(B, m, d, generator=g, dtype=torch.float64) / math.sqrt(d) + 0.3
    a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.1
    if pad and n > 2:
        a[0, -1] = 0.0
    if pad and m > 2:
        b[-1, 1] = 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return [t.to(dtype).to(device) for t in (x, y, a, b)]


def _reference(x, y, a, b, cost, problem, kw, grads_ab, **opts):
    """entropic_ot on the materialised cost (torch backend), value gradients through cost_matrix."""
    leaves = [t.detach().clone().requires_grad_(i < 2 or grads_ab) for i, t in enumerate((x, y, a, b))]
    C = cost_matrix(leaves[0], leaves[1], cost)
    sol = entropic_ot(C, leaves[2], leaves[3], reg=REG[cost], problem=problem, backend="torch", warn=False, **kw,
                      **opts)
    wrt = leaves if grads_ab else leaves[:2]
    return sol, torch.autograd.grad(sol.value.sum(), wrt)


def _compare(sol, ref, rtol, atol, name):
    for nm, o, r in zip(NAMES, sol, ref):
        if o is None:
            continue
        o, r = o.detach().cpu(), r.detach().cpu()
        if nm in ("n_iter", "status"):
            assert torch.equal(o, r), f"{name} {nm}: {o.tolist()} != {r.tolist()}"
        elif nm in ("log_u", "log_v"):
            fin = torch.isfinite(r)
            assert torch.equal(torch.isfinite(o), fin), f"{name} {nm}: masks differ"
            assert_close(o[fin], r[fin], rtol=rtol, atol=max(atol, 1e-4 if o.dtype != torch.float64 else atol),
                         name=f"{name} {nm}")
        else:
            assert_close(o, r, rtol=rtol, atol=atol, name=f"{name} {nm}")


def _check_backend(backend, shape, cost, case, dtype=torch.float64, max_iter=12, check_every=5, device="cpu",
                   rtol=None, atol=None):
    B, n, m, d = shape
    problem, kw, grads_ab = CASES[case]
    x, y, a, b = _problem(B, n, m, d, dtype=torch.float64, seed=n + 3 * m + d)
    opts = dict(max_iter=max_iter, check_every=check_every)
    ref, gref = _reference(x, y, a, b, cost, problem, kw, grads_ab, **opts)
    leaves = [t.to(dtype).to(device).requires_grad_(i < 2 or grads_ab) for i, t in enumerate((x, y, a, b))]
    sol = entropic_ot_features(*leaves, reg=REG[cost], cost=cost, problem=problem, backend=backend,
                               return_plan=True, warn=False, **kw, **opts)
    got = torch.autograd.grad(sol.value.sum(), leaves if grads_ab else leaves[:2])
    if rtol is None:
        rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (3e-4, 2e-5)
    name = f"{backend}/{cost}/{case}/{shape}"
    _compare(sol, ref, rtol, atol, name)
    for g, r, nm in zip(got, gref, ("dx", "dy", "da", "db")):
        assert_close(g.cpu(), r, rtol=rtol, atol=atol * 10, name=f"{name} {nm}")


# ----------------------------------------------------------------------------------- torch
def test_cost_from_features_is_cost_matrix():
    x, y, _, _ = _problem(2, 7, 13, 5)
    x[0, 2] = 0.0  # a zero vector: orthogonal to everything under cosine
    for cost, code in (("sqeuclidean", 0), ("cosine", 1)):
        assert_close(cost_from_features(x, y, code, torch.float64), cost_matrix(x, y, cost), rtol=0, atol=0,
                     name=cost)
        blocks = TorchFeaturePasses(x, y, code, 0.1, torch.float64)
        assert_close(blocks.cost_block(2, 5, 3, 11), cost_matrix(x, y, cost)[:, 2:5, 3:11], rtol=1e-15, atol=1e-15,
                     name=f"{cost} block")


@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_backend_matches_materialised(cost, case, monkeypatch):
    monkeypatch.setattr(backend_torch, "CHUNK_ELEMENTS", 40)  # several chunks of rows / columns per pass
    _check_backend("torch", (3, 13, 29, 4), cost, case, max_iter=40)


def test_torch_passes_hold_one_chunk_of_the_cost(monkeypatch):
    seen = []
    orig = TorchFeaturePasses.cost_block

    def spy(self, i0, i1, j0, j1):
        seen.append(self.B * (i1 - i0) * (j1 - j0))
        return orig(self, i0, i1, j0, j1)

    monkeypatch.setattr(TorchFeaturePasses, "cost_block", spy)
    x, y, a, b = _problem(2, 30, 20, 3)
    sol = entropic_ot_features(x.requires_grad_(), y, a, b, reg=0.3, problem=PARTIAL, max_iter=12, backend="torch",
                               warn=False)
    sol.value.sum().backward()
    assert seen and max(seen) <= backend_torch.CHUNK_ELEMENTS
    monkeypatch.setattr(backend_torch, "CHUNK_ELEMENTS", 100)
    seen.clear()
    entropic_ot_features(x, y, a, b, reg=0.3, max_iter=3, backend="torch", warn=False)
    assert max(seen) <= 2 * 30 * 2 and len(seen) > 10  # 100 // (B * width) >= 1 row or column per chunk


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 7, 3), (2, 5, 1, 2)])
def test_torch_backend_degenerate_shapes(shape):
    for case in ("balanced", "partial"):
        _check_backend("torch", shape, "sqeuclidean", case, max_iter=10, check_every=0)


def test_cpu_backend_materialises_and_matches():
    _check_backend("cpu", (2, 9, 11, 3), "cosine", "partial", max_iter=30, rtol=1e-9, atol=1e-11)
    _check_backend("cpu", (2, 9, 11, 3), "sqeuclidean", "unbalanced", max_iter=30, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
def test_gradcheck_at_convergence(cost):
    """The envelope gradient is the true gradient of the converged objective: gradcheck w.r.t. the
    features (balanced; a, b live on the simplex there) and w.r.t. everything (unbalanced)."""
    x, y, a, b = _problem(1, 3, 4, 2, pad=False, seed=5)
    opts = dict(reg=0.5, cost=cost, max_iter=5000, tol=1e-14, check_every=1, backend="torch", history=False)

    def balanced(x_, y_):
        return entropic_ot_features(x_, y_, a, b, **opts).value

    def unbalanced(x_, y_, a_, b_):
        return entropic_ot_features(x_, y_, a_, b_, problem=UNBALANCED, reg_m=(0.8, 1.5), **opts).value

    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    assert torch.autograd.gradcheck(balanced, leaves[:2], eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(unbalanced, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_autodiff_and_detach_modes():
    x, y, a, b = _problem(2, 5, 6, 3, pad=False)
    xr = x.clone().requires_grad_()
    env = entropic_ot_features(xr, y, a, b, reg=0.5, max_iter=3000, tol=1e-13, backend="torch")
    auto = entropic_ot_features(xr, y, a, b, reg=0.5, max_iter=3000, tol=1e-13, grad="autodiff")
    assert_close(auto.value, env.value, rtol=1e-10, atol=1e-12, name="value")
    g_env, = torch.autograd.grad(env.value.sum(), xr)
    g_auto, = torch.autograd.grad(auto.value.sum(), xr)
    assert_close(g_env, g_auto, rtol=1e-6, atol=1e-9, name="envelope vs autodiff at convergence")
    det = entropic_ot_features(xr, y, a, b, reg=0.5, max_iter=50, backend="torch", grad="detach", warn=False)
    assert det.value.grad_fn is None and det.plan is None


def test_unbatched_inputs_and_optional_plan():
    x, y, a, b = _problem(1, 6, 8, 3)
    batched = entropic_ot_features(x, y, a, b, reg=0.3, max_iter=20, backend="torch", warn=False, return_plan=True)
    single = entropic_ot_features(x[0], y[0], a[0], b[0], reg=0.3, max_iter=20, backend="torch", warn=False)
    assert single.plan is None and single.value.shape == () and single.log_u.shape == (6,)
    assert_close(single.value, batched.value[0], rtol=0, atol=0)
    assert batched.plan.shape == (1, 6, 8)
    assert_close(batched.plan.sum((1, 2)), torch.ones(1, dtype=torch.float64), rtol=1e-6, atol=1e-6, name="mass")


def test_empty_problems_in_a_batch_are_zero_and_finite():
    x, y, a, b = _problem(3, 5, 6, 2, pad=False)
    a[1] = 0.0
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    backends = [("torch", "cpu")] + ([("triton", DEVICE)] if HAVE_TRITON and (INTERPRET or DEVICE == "cuda") else [])
    for bk, dev in backends:
        leaves = [t.detach().to(dev).requires_grad_() for t in leaves]
        mass = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64, device=dev)
        sol = entropic_ot_features(*leaves, reg=0.3, problem=PARTIAL, mass=mass, max_iter=8, backend=bk, warn=False,
                                   return_plan=True)
        assert sol.value[1] == 0 and sol.value[2] == 0 and torch.isfinite(sol.value).all()
        assert sol.plan[1:].abs().sum() == 0
        grads = torch.autograd.grad(sol.value.sum(), leaves)
        for g in grads:
            assert torch.isfinite(g).all()
        assert grads[0][1:].abs().sum() == 0 and grads[1][1:].abs().sum() == 0


# ---------------------------------------------------------------------------------- triton
@needs_triton
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 13, 3), (1, 41, 37, 16), (2, 5, 9, 70)])
def test_triton_passes_match_torch_passes(cost, shape):
    """Every kernel (row / column LSE with 1 and 3 splits, row stats, products) on
    awkward shapes, d = 70 walking the features in two chunks, against the chunked torch passes."""
    from grounded_fast.triton_kernels.ot.sinkhorn_features import TritonFeaturePasses
    B, n, m, d = shape
    x, y, _, _ = _problem(B, n, m, d, device=DEVICE)
    code = driver.cost_code(cost)
    ref = TorchFeaturePasses(x, y, code, REG[cost], torch.float64, chunk_elements=64)
    g = torch.Generator().manual_seed(1)
    lu, lv, w = (torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE) for s in ((B, n), (B, m), (B,)))
    if n > 1:
        lu[0, -1] = -math.inf  # a masked row
    for splits in (1, 3):
        got = TritonFeaturePasses(x, y, code, REG[cost], splits=splits)
        assert_close(got.lse(True, lv), ref.lse(True, lv), rtol=1e-12, atol=1e-12, name=f"row lse/{splits}")
        assert_close(got.lse(False, lu), ref.lse(False, lu), rtol=1e-12, atol=1e-12, name=f"col lse/{splits}")
    for o, r, nm in zip(got.row_stats(lu, lv, w), ref.row_stats(lu, lv, w), ("r", "pc", "plp")):
        assert_close(o, r, rtol=1e-11, atol=1e-13, name=nm)
    for o, r, nm in zip(got.products(lu, lv, w), ref.products(lu, lv, w), ("PY", "r", "PtX", "c")):
        assert_close(o, r, rtol=1e-11, atol=1e-13, name=nm)


@needs_triton
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_backend_matches_materialised(cost, case):
    _check_backend("triton", (2, 7, 13, 3), cost, case, device=DEVICE)


@needs_triton
@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
def test_triton_backend_float32(cost):
    _check_backend("triton", (2, 41, 37, 16), cost, "balanced", dtype=torch.float32, max_iter=10, device=DEVICE)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_features_accumulate_in_float32(dtype):
    """Half-precision features are read as they are; the passes equal the float32 ones on the same
    (rounded) values."""
    x, y, a, b = _problem(2, 9, 21, 5, dtype=torch.float32)
    x, y = x.to(dtype).to(DEVICE), y.to(dtype).to(DEVICE)
    a, b = a.to(DEVICE), b.to(DEVICE)
    xr = x.clone().requires_grad_()
    half = entropic_ot_features(xr, y, a, b, reg=0.3, max_iter=10, backend="triton", warn=False)
    full = entropic_ot_features(x.float(), y.float(), a, b, reg=0.3, max_iter=10, backend="torch", warn=False)
    assert half.value.dtype == dtype and half.log_u.dtype == torch.float32
    fin = torch.isfinite(full.log_u)
    assert torch.equal(torch.isfinite(half.log_u), fin)
    assert_close(half.log_u[fin], full.log_u[fin], rtol=1e-4, atol=1e-4, name="log_u")
    assert_close(half.value.float(), full.value, rtol=1e-2, atol=1e-3, name="value")
    g, = torch.autograd.grad(half.value.float().sum(), xr)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()


@needs_triton
def test_triton_padding_equals_cropped_and_noncontiguous():
    x, y, a, b = _problem(2, 8, 12, 3, pad=False)
    a[1, 5:] = 0.0
    b[1, 9:] = 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    kw = dict(reg=0.3, cost="cosine", problem=PARTIAL, mass=0.5, max_iter=10, check_every=0, backend="triton")
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous, same values
    full = entropic_ot_features(xt.to(DEVICE), y.to(DEVICE), a.to(DEVICE), b.to(DEVICE), **kw)
    crop = entropic_ot_features(x[1:, :5].to(DEVICE), y[1:, :9].to(DEVICE), a[1:, :5].to(DEVICE),
                                b[1:, :9].to(DEVICE), **kw)
    assert_close(full.value[1:].cpu(), crop.value.cpu(), rtol=1e-12, atol=1e-14, name="padded vs cropped")


@needs_triton
def test_features_op_opcheck():
    x, y, a, b = _problem(1, 3, 4, 2, pad=False, device=DEVICE)
    z = torch.zeros(1, dtype=torch.float64, device=DEVICE)
    for backend in ("torch", "triton"):
        spec = SolveSpec(BALANCED, 0.5, max_iter=12, tol=1e-9, check_every=5, history=-1)
        args = (x, y, a, b, z, torch.zeros_like(a), torch.zeros_like(b), 1, *spec.op_args(), backend)
        torch.library.opcheck(torch.ops.grounded_fast.entropic_ot_features.default, args)
        torch.library.opcheck(torch.ops.grounded_fast.ot_features_products.default,
                              (x, y, torch.zeros_like(a), torch.zeros_like(b), z, 0, 0.5, backend))


# --------------------------------------------------------------------------- heuristic, nn
def test_choose_cost_source():
    f32, bf16 = torch.float32, torch.bfloat16
    gpu = dict(device="cuda", free_bytes=80 << 30)
    assert choose_cost_source(8192, 8192, 64, f32, device="cpu") == "memory"            # CPU: C++ on C
    assert choose_cost_source(8192, 8192, 64, f32, cost="euclidean", **gpu) == "memory"  # no kernels
    assert choose_cost_source(64, 197, 8, f32, backend="triton", **gpu) == "memory"     # fits on-chip
    # measured on an H100 (8192^2, d = 64, float32): both backends read C faster than they rebuild it
    assert choose_cost_source(8192, 8192, 64, f32, backend="triton", **gpu) == "memory"
    assert choose_cost_source(8192, 8192, 16, f32, backend="triton", **gpu) == "features"
    assert choose_cost_source(8192, 8192, 64, bf16, backend="triton", **gpu) == "features"
    assert choose_cost_source(8192, 8192, 256, bf16, backend="triton", **gpu) == "memory"
    assert choose_cost_source(8192, 8192, 64, f32, backend="cuda", **gpu) == "memory"
    assert choose_cost_source(8192, 8192, 16, f32, backend="cuda", **gpu) == "features"
    assert choose_cost_source(8192, 8192, 64, f32, backend="torch", **gpu) == "memory"
    # C (and its plan) would not fit: features whatever d
    assert choose_cost_source(65536, 65536, 512, f32, backend="torch", **gpu) == "features"
    lim = feature_dim_limit(8192, 8192, f32, "triton")
    assert 16 < lim < 40 and feature_dim_limit(8192, 8192, bf16, "triton") > 3 * lim
    assert feature_dim_limit(256, 256, f32, "triton") < lim  # feature bytes matter for few points


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_losses_features_path_equals_materialised(backend):
    if backend == "triton" and not (HAVE_TRITON and (INTERPRET or DEVICE == "cuda")):
        pytest.skip("needs triton")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, device="cpu").to(DEVICE)
    y = torch.randn(2, 9, 5, generator=g, dtype=torch.float64, device="cpu").to(DEVICE)
    xm = torch.ones(2, 6, dtype=torch.bool, device=DEVICE)
    xm[1, 4:] = False
    for make in (lambda src: SinkhornLoss(reg=0.5, max_iter=15, backend=backend, cost_source=src),
                 lambda src: SinkhornLoss(reg=0.5, reg_m=1.0, max_iter=10, backend=backend, cost_source=src),
                 lambda src: PartialOTLoss(reg=0.1, mass=0.5, max_iter=15, backend=backend, cost_source=src)):
        out = []
        for src in ("features", "memory"):
            loss = make(src)
            mem_backend = backend if src == "features" else "torch"
            loss.backend = mem_backend
            xr = x.clone().requires_grad_()
            val = loss(xr, y, x_mask=xm)
            out.append((val, torch.autograd.grad(val.sum(), xr)[0]))
        assert_close(out[0][0].cpu(), out[1][0].cpu(), rtol=1e-9, atol=1e-12, name="loss")
        assert_close(out[0][1].cpu(), out[1][1].cpu(), rtol=1e-8, atol=1e-11, name="dloss/dx")
    loss, plan = PartialOTLoss(reg=0.1, mass=0.5, max_iter=15, backend=backend, cost_source="features")(
        x, y, return_plan=True)
    assert plan.shape == (2, 6, 9) and loss.shape == (2,)


def test_losses_auto_source_on_cpu_materialises():
    loss = SinkhornLoss(reg=0.1)
    x, y = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    assert not loss.uses_features(x, y)
    assert SinkhornLoss(reg=0.1, cost_source="features").uses_features(x, y)
    # half-precision features: weights and accumulation in float32, the loss in the features' dtype
    half = SinkhornLoss(reg=0.5, cost_source="features", backend="torch", max_iter=5)(x.bfloat16(), y.bfloat16())
    full = SinkhornLoss(reg=0.5, cost_source="features", backend="torch", max_iter=5)(
        x.bfloat16().float(), y.bfloat16().float())
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), full, rtol=1e-2)
    with pytest.raises(ValueError, match="cost_source"):
        SinkhornLoss(cost_source="disk")
    with pytest.raises(ValueError, match="cost_source='features' needs"):
        SinkhornLoss(cost="euclidean", cost_source="features")


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument():
    x, y, a, b = _problem(2, 4, 5, 3)
    kw = dict(reg=0.1, backend="torch")
    cases = [
        (dict(y=y[..., :2]), ValueError, "feature dimension d"),
        (dict(y=y[:1]), ValueError, "batch size"),
        (dict(a=a[:, :3]), ValueError, "a must have shape"),
        (dict(b=b[:1]), ValueError, "b must have shape"),
        (dict(x=x[0, 0]), ValueError, "x must be"),
        (dict(y=y.float()), TypeError, "y has dtype"),
        (dict(a=-a), ValueError, "a has negative weights"),
        (dict(x=x.clone().index_fill_(1, torch.tensor([0]), float("nan"))), ValueError, "x .* NaN"),
        (dict(cost="euclidean"), ValueError, "cost must be one of"),
        (dict(cost="manhattan"), ValueError, "cost must be one of"),
        (dict(reg=0.0), ValueError, "reg must be"),
        (dict(grad="numeric"), ValueError, "grad must be"),
        (dict(backend="opencl"), ValueError, "backend must be"),
        (dict(problem=7), ValueError, "unknown problem"),
        (dict(problem=PARTIAL, mass=2.0), ValueError, "m must be <="),
        (dict(x=x[:, :, :0], y=y[:, :, :0]), ValueError, "at least one feature"),
    ]
    for change, exc, msg in cases:
        args = dict(x=x, y=y, a=a, b=b, **kw)
        args.update(change)
        with pytest.raises(exc, match=msg):
            entropic_ot_features(args.pop("x"), args.pop("y"), args.pop("a"), args.pop("b"), **args)
    with pytest.raises(ValueError, match="y must be 2-d"):
        entropic_ot_features(x[0], y, a[0], b[0], reg=0.1)
    from grounded_fast.ops.entropic_ot_features.op import backend_module
    with pytest.raises(ValueError, match="backend must be"):
        backend_module("opencl")
