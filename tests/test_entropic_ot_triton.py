"""The Triton backend of the entropic OT op (persistent 'small' kernel and streaming 'stream'
passes), run by Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set by conftest.py), or
on CUDA tensors on a GPU machine, against the float64-capable reference: same iterates, stop
tests, statuses and outputs; envelope gradients through the op."""
import math
import os

import pytest
import torch

pytest.importorskip("triton")

from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, SolveSpec, entropic_ot  # noqa: E402
from grounded_fast.reference.entropic_ot import entropic_ot_reference  # noqa: E402

from conftest import TOL, assert_close, make_problem  # noqa: E402

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a GPU or TRITON_INTERPRET=1")
NAMES = ("plan", "log_u", "log_v", "log_scale", "value", "value_linear", "n_iter", "status", "err_history")
CASES = {  # problem kind, reg_m, kl_ref
    "balanced": (BALANCED, (math.inf, math.inf), True),
    "unbalanced": (UNBALANCED, (0.7, 2.0), True),
    "unbalanced-entropy-onesided": (UNBALANCED, (0.5, math.inf), False),
    "partial": (PARTIAL, (math.inf, math.inf), True),
}


def _args(B, n, m, case, dtype, max_iter, check_every=5, pad=True, seed=0, warm=False):
    C, a, b = make_problem(B, n, m, dtype=torch.float64, seed=seed)
    if pad and n > 2:
        a[0, -1] = 0.0
        a = a / a.sum(1, keepdim=True)
    if pad and m > 2:
        b[-1, 1] = 0.0
        b = b / b.sum(1, keepdim=True)
    problem, (ra, rb), kl_ref = CASES[case]
    mass = torch.full((B,), 0.6, dtype=torch.float64) if problem == PARTIAL else torch.zeros(B, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    lu0 = 0.1 * torch.randn(B, n, generator=g, dtype=torch.float64) if warm else torch.zeros(B, n, dtype=torch.float64)
    lv0 = 0.1 * torch.randn(B, m, generator=g, dtype=torch.float64) if warm else torch.zeros(B, m, dtype=torch.float64)
    tensors = [t.to(dtype).to(DEVICE) for t in (C, a, b, mass, lu0, lv0)]
    # float32 partial OT: its stop quantity, the log plan's change, rounds to ~1e-5 here, so a smaller
    # tol would make the stopping iteration depend on each backend's rounding
    tol = 1e-9 if dtype == torch.float64 else (1e-3 if problem == PARTIAL else 1e-6)
    return (*tensors, SolveSpec(problem, 0.1, ra, rb, kl_ref, max_iter, tol, check_every))


def _compare(out, ref, dtype, name="", partial=False):
    """Outputs against the reference's; float32 partial OT's err_history (its log-plan change, which
    rounds to ~1e-5 sqrt(n m)) within 2e-3."""
    rtol, atol = (TOL[dtype]["rtol"], TOL[dtype]["atol"]) if dtype == torch.float64 else (2e-4, 1e-5)
    for nm, o, r in zip(NAMES, out, ref):
        o, r = o.cpu(), r.cpu()
        if nm == "err_history" and partial and dtype == torch.float32:
            assert_close(o, r, rtol=rtol, atol=2e-3, name=f"{name} {nm}")
        elif nm in ("n_iter", "status"):
            assert torch.equal(o, r), f"{name} {nm}: {o.tolist()} != {r.tolist()}"
        elif nm in ("log_u", "log_v"):
            fin = torch.isfinite(r)
            assert torch.equal(torch.isfinite(o), fin), f"{name} {nm}: masks differ"
            assert_close(o[fin], r[fin], rtol=rtol, atol=max(atol, 1e-4 if dtype != torch.float64 else atol),
                         name=f"{name} {nm}")
        else:
            assert_close(o, r, rtol=rtol, atol=atol, name=f"{name} {nm}")


@pytest.mark.parametrize("regime", ["small", "stream"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_reference(regime, case, dtype):
    from grounded_fast.ops.entropic_ot.backend_triton import solve as entropic_ot_triton
    args = _args(3, 13, 29, case, dtype, max_iter=40 if regime == "small" else 25)
    out = entropic_ot_triton(*args, regime=regime)
    ref = entropic_ot_reference(*args)
    _compare(out, ref, dtype, f"{regime}/{case}", partial=case == "partial")


@pytest.mark.parametrize("regime", ["small", "stream"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 5, 1), (1, 41, 133), (2, 9, 32), (1, 3, 48)])
def test_triton_awkward_shapes(regime, shape):
    from grounded_fast.ops.entropic_ot.backend_triton import solve as entropic_ot_triton
    B, n, m = shape
    for case in ("balanced", "partial"):
        args = _args(B, n, m, case, torch.float64, max_iter=15, check_every=0, pad=False, seed=n + m)
        _compare(entropic_ot_triton(*args, regime=regime), entropic_ot_reference(*args), torch.float64,
                 f"{regime}/{case}/{shape}")


@pytest.mark.parametrize("regime", ["small", "stream"])
def test_triton_converges_with_warm_start_and_history(regime):
    from grounded_fast.ops.entropic_ot.backend_triton import solve as entropic_ot_triton
    args = _args(2, 9, 11, "balanced", torch.float64, max_iter=400, check_every=10, warm=True)
    out = entropic_ot_triton(*args, regime=regime)
    ref = entropic_ot_reference(*args)
    assert out[7].tolist() == [0, 0], "both problems should converge"
    _compare(out, ref, torch.float64, regime)
    args_h = (*args[:6], args[6].replace(history=3))  # keep 3 entries
    assert entropic_ot_triton(*args_h, regime=regime)[8].shape == (2, 3)


def test_regime_choice():
    from grounded_fast.ops.entropic_ot.backend_triton import choose_regime
    assert choose_regime(64, 197) == "small" and choose_regime(128, 256) == "small"
    assert choose_regime(128, 512) == "stream" and choose_regime(4096, 4096) == "stream"


@pytest.mark.parametrize("problem", [BALANCED, PARTIAL])
def test_op_backend_triton_with_envelope_gradients(problem):
    C, a, b = make_problem(2, 6, 9, dtype=torch.float32, seed=3)
    C = C.to(DEVICE).requires_grad_()
    a, b = a.to(DEVICE).requires_grad_(), b.to(DEVICE).requires_grad_()
    kw = dict(reg=0.1, problem=problem, max_iter=200, mass=0.5 if problem == PARTIAL else None)
    got = entropic_ot(C, a, b, backend="triton", **kw)
    ref = entropic_ot(C.detach().cpu().requires_grad_(), a.detach().cpu().requires_grad_(),
                      b.detach().cpu().requires_grad_(), backend="torch", **kw)
    assert_close(got.plan.cpu(), ref.plan, rtol=2e-4, atol=1e-6, name="plan")
    g = torch.autograd.grad(got.value.sum(), (C, a, b))
    C2, a2, b2 = (t.detach().cpu().requires_grad_() for t in (C, a, b))
    r = entropic_ot(C2, a2, b2, backend="torch", **kw)
    gr = torch.autograd.grad(r.value.sum(), (C2, a2, b2))
    for x, y, nm in zip(g, gr, ("dC", "da", "db")):
        assert_close(x.cpu(), y, rtol=2e-4, atol=2e-5, name=nm)


@pytest.mark.parametrize("cost_dtype", [torch.float32, torch.bfloat16])
def test_triton_op_opcheck(cost_dtype):
    C, a, b = make_problem(2, 4, 5, dtype=torch.float32)
    spec = SolveSpec(BALANCED, 0.1, max_iter=20, tol=1e-6, check_every=5)
    args = (C.to(cost_dtype), a, b, torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 5), *spec.op_args(), "triton")
    torch.library.opcheck(torch.ops.grounded_fast.entropic_ot.default,
                          tuple(t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in args))


@pytest.mark.parametrize("regime,shape", [("small", (2, 13, 29)), ("stream", (1, 40, 900))])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["balanced", "unbalanced", "partial"])
def test_triton_reads_half_costs_as_they_are(regime, shape, half, case):
    """A bfloat16 / float16 C goes to the Triton kernels as it is (float32 weights and potentials):
    the same iterates, bit for bit, as the float32 copy of it, and gradients in C's dtype."""
    from grounded_fast.ops.entropic_ot.backend_triton import choose_regime
    problem, kw = {"balanced": (BALANCED, {}), "unbalanced": (UNBALANCED, dict(reg_m=(0.7, 2.0))),
                   "partial": (PARTIAL, dict(mass=0.5))}[case]
    C, a, b = make_problem(*shape, dtype=torch.float32, seed=3)
    assert choose_regime(*shape[1:]) == regime
    C, a, b = C.to(half).to(DEVICE), a.to(half).to(DEVICE), b.to(half).to(DEVICE)
    sols, grads = [], []
    for cost, wa, wb in ((C, a, b), (C.float(), a.float(), b.float())):
        leaf = cost.clone().requires_grad_()
        sols.append(entropic_ot(leaf, wa, wb, reg=0.2, problem=problem, max_iter=6, check_every=2, backend="triton",
                                warn=False, **kw))
        grads.append(torch.autograd.grad(sols[-1].value.sum(), leaf)[0])
    for name in ("log_u", "log_v", "log_scale", "n_iter"):
        assert torch.equal(getattr(sols[0], name), getattr(sols[1], name)), name
    assert sols[0].plan.dtype == half and grads[0].dtype == half
    assert torch.equal(grads[0], grads[1].to(half))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(5, 7), (19, 300)])
def test_fused_finalize_matches_reference_finalize(case, dtype, n, m):
    """The one-pass plan/objective kernel against the torch finalize on the same potentials: padded
    entries, an empty problem (all b zero: plan and value 0), -inf potentials at padding, a half C."""
    from grounded_fast.ops.entropic_ot.driver import finalize, nonempty_problems
    from grounded_fast.triton_kernels.ot.finalize import finalize_triton
    C, a, b, mass, _, _, spec = _args(3, n, m, case, dtype, 1)
    problem = spec.problem
    b[2] = 0.0  # problem 2 is empty
    g = torch.Generator().manual_seed(n + m)
    lu = (torch.randn(3, n, generator=g, dtype=torch.float64) - math.log(n)).to(dtype).to(DEVICE)
    lv = (torch.randn(3, m, generator=g, dtype=torch.float64) - math.log(m)).to(dtype).to(DEVICE)
    lu = torch.where(a > 0, lu, float("-inf"))
    lv = torch.where(b > 0, lv, float("-inf"))
    w = torch.tensor([0.0, -0.3, 0.2], dtype=dtype, device=DEVICE)
    nonempty = nonempty_problems(a, b, mass, problem)
    assert nonempty.tolist() == [True, True, False]
    got = finalize_triton(C, a, b, lu, lv, w, spec, nonempty)
    ref = finalize(C, a, b, lu, lv, w, spec, nonempty)
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-7)
    for name, o, r in zip(("plan", "value", "value_linear"), got, ref):
        assert o.dtype == r.dtype
        assert_close(o.cpu(), r.cpu(), rtol=rtol, atol=atol, name=name)
    assert float(got[0][2].abs().sum()) == 0.0 and float(got[1][2]) == 0.0
    if dtype == torch.float32:  # a bfloat16 C is read as it is: the same as finalising its float32 copy
        Ch = C.to(torch.bfloat16)
        got_h = finalize_triton(Ch, a, b, lu, lv, w, spec, nonempty)
        ref_h = finalize(Ch.float(), a, b, lu, lv, w, spec, nonempty)
        for name, o, r in zip(("plan", "value", "value_linear"), got_h, ref_h):
            assert_close(o.cpu(), r.cpu(), rtol=rtol, atol=atol, name=f"bf16 {name}")


@pytest.mark.parametrize("case", list(CASES))
def test_row_then_col_hook_keeps_the_iterates(case):
    """solve_potentials with both half-iterations handed to one callable (the fused regime's driver)
    gives the reference's iterates, torch closures on both sides (float64): bit for bit for balanced
    problems, to rounding for the others (their row updates are regrouped)."""
    from grounded_fast.ops.entropic_ot.driver import solve_potentials
    C, a, b, mass, lu0, lv0, spec = _args(3, 11, 17, case, torch.float64, 1, warm=True)
    problem, reg = spec.problem, spec.reg
    a, b, C, mass, lu0, lv0 = (t.cpu() for t in (a, b, C, mass, lu0, lv0))
    b[1] = b[1] * torch.linspace(0.2, 2.0, b.shape[1], dtype=b.dtype)  # converges at another pace
    b = b / b.sum(1, keepdim=True)
    K = -C / reg
    row = lambda lv: torch.logsumexp(K + lv[:, None, :], 2)  # noqa: E731
    col = lambda lu: torch.logsumexp(K + lu[:, :, None], 1)  # noqa: E731

    def row_then_col(lv, lu, la, active, scale, cap):
        x = la - scale * row(lv)
        if cap:
            x = torch.minimum(x, lu)
        new = torch.where(la == -math.inf, -math.inf, torch.where(active[:, None], x, lu))
        return new, col(new)

    for max_iter, check_every in ((7, 0), (200, 3), (200, 1)):
        run = spec.replace(max_iter=max_iter, tol=1e-9, check_every=check_every, history=-1)
        plain = solve_potentials(row, col, a, b, mass, lu0, lv0, run)
        hooked = solve_potentials(row, col, a, b, mass, lu0, lv0, run, row_then_col=row_then_col)
        for name, x, y in zip(("log_u", "log_v", "log_scale", "n_iter", "status", "err_history"), plain, hooked):
            if problem == BALANCED or name in ("n_iter", "status"):
                assert torch.equal(x, y), f"{name} differs (max_iter {max_iter}, check_every {check_every})"
            else:
                assert torch.equal(torch.isfinite(x), torch.isfinite(y)), f"{name}: masks differ"
                fin = torch.isfinite(x)
                assert_close(y[fin], x[fin], rtol=1e-11, atol=1e-11, name=f"{name} ({max_iter}, {check_every})")
        if check_every:
            assert len(set(plain[3].tolist())) > 1  # the problems retired at different iterations


def test_fused_row_target():
    """The unbalanced row update's la: (1 - fa) sa + fa la on the support, -inf off it, never NaN
    (fa = 1, a one-sided problem, with sa = la = -inf off the support: 0 x -inf)."""
    from grounded_fast.ops.entropic_ot.driver import fused_row_target
    ma = torch.tensor([[True, False, True]])
    la = torch.log(torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64))
    sa = torch.tensor([[0.3, -math.inf, -0.2]], dtype=torch.float64)
    assert torch.equal(fused_row_target(la, sa, 1.0, ma), torch.where(ma, la, -math.inf))
    got = fused_row_target(la, sa, 0.25, ma)
    assert torch.isneginf(got[0, 1]) and torch.allclose(got[0, [0, 2]], 0.75 * sa[0, [0, 2]] + 0.25 * la[0, [0, 2]])


def _use_fused_kernel(sf, kernel, monkeypatch, m: int):
    """Steer the fused regime to one of its kernels: whole rows in registers in blocks of several rows
    ("resident"), of two (its pair form: rows of 4096 columns on a GPU) or of one ("resident-one-row"),
    or rows streamed twice through L2 ("l2")."""
    if kernel == "resident-one-row":
        monkeypatch.setattr(sf, "RESIDENT_TILE", 1)
    if kernel == "resident-two-rows":
        monkeypatch.setattr(sf, "RESIDENT_TILE", 2 << (m - 1).bit_length())  # 2 x the padded row
    if kernel == "l2":
        monkeypatch.setattr(sf, "RESIDENT_MAX_M", {4: 0, 8: 0})


FUSED_SHAPES = [((3, 13, 29), None), ((2, 37, 300), 3), ((1, 1, 5), None), ((2, 21, 1), 2)]


# every kernel on balanced problems; the other kinds differ in the row update only (_new_lu), which
# one-row blocks share with the others
FUSED_RUNS = ([(k, "balanced", *s) for k in ("resident", "resident-two-rows", "resident-one-row", "l2")
               for s in FUSED_SHAPES]
              + [(k, c, *FUSED_SHAPES[0]) for k in ("resident", "l2") for c in CASES if c != "balanced"]
              + [(k, "partial", *FUSED_SHAPES[1]) for k in ("resident", "l2")])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel,case,shape,programs", FUSED_RUNS)
def test_fused_regime_matches_reference(dtype, kernel, case, shape, programs, monkeypatch):
    """The one-pass regime (several programs per problem, several row blocks per program, padding,
    early retirement) against the float64 reference and the two-pass streaming regime, with each of
    its kernels: whole rows in registers (blocks of several rows, or of one: many blocks a program)
    and rows streamed twice through L2; every problem kind (unbalanced: the scaled row update;
    partial: the capped one)."""
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    from grounded_fast.ops.entropic_ot.backend_triton import solve as entropic_ot_triton
    sinkhorn_fused = sf.sinkhorn_fused
    _use_fused_kernel(sf, kernel, monkeypatch, shape[2])
    launched = []
    for name in ("_resident_rows", "_row_then_col"):
        jit = getattr(sf, name)
        monkeypatch.setattr(sf, name, _Spy(jit, name, launched))
    B, n, m = shape
    # the other kinds converge more slowly: a fixed budget of iterations (the interpreter is slow)
    args = _args(B, n, m, case, dtype, max_iter=400 if case == "balanced" else 30, check_every=2, warm=True)
    if case != "balanced" and dtype == torch.float32:  # their regrouped row updates round otherwise, and a
        args = (*args[:6], args[6].replace(tol=1e-3 if case == "partial" else 1e-5))  # stop test at 1e-6 is then at
        # float32's noise (partial OT's log-plan change: ~1e-5 sqrt(n m))
    if B > 1 and m > 2:  # the problems converge at different paces: one retires while the other runs on
        b = args[2]
        b[1] = b[1] * torch.linspace(0.05, 3.0, m, dtype=b.dtype, device=b.device)
        args = (*args[:2], b / b.sum(1, keepdim=True), *args[3:])
    out = entropic_ot_triton(*args, regime="fused")
    if B > 1 and m > 2 and dtype == torch.float64 and case == "balanced":
        assert len(set(out[6].tolist())) > 1 and int(out[6].max()) < 400, out[6].tolist()
    _compare(out, entropic_ot_reference(*args), dtype, f"fused {shape}", partial=case == "partial")
    direct = sinkhorn_fused(*args, programs=programs)
    stream = entropic_ot_triton(*args, regime="stream")
    for name, x, y in zip(("log_u", "log_v", "log_scale", "n_iter", "status", "err_history"), direct,
                          stream[1:4] + stream[6:]):
        x, y = x.cpu(), y.cpu()
        if name in ("n_iter", "status"):
            assert torch.equal(x, y), name
            continue
        fin = torch.isfinite(y)
        assert torch.equal(torch.isfinite(x), fin), f"{name}: masks differ"
        f32_hist = dtype == torch.float32 and case == "partial" and name == "err_history"  # see _compare
        assert_close(x[fin], y[fin], rtol=1e-10 if dtype == torch.float64 else 1e-4,
                     atol=1e-12 if dtype == torch.float64 else (2e-3 if f32_hist else 1e-5), name=name)
    assert set(launched) == {"_row_then_col" if kernel == "l2" else "_resident_rows"}, launched


class _Spy:
    """Stands in for a jitted kernel and records the launches made through ``kernel[grid](...)``."""

    def __init__(self, jit, name, launched):
        self.jit, self.name, self.launched = jit, name, launched

    def __getitem__(self, grid):
        self.launched.append(self.name)
        return self.jit[grid]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["resident", "resident-two-rows", "resident-one-row", "l2"])
@pytest.mark.parametrize("scale,cap", [(1.0, False), (0.7, False), (1.0, True)])
def test_fused_pass_is_one_sinkhorn_iteration(dtype, kernel, scale, cap, monkeypatch):
    """One call of the fused pass against its definition in torch: lu' = la - scale LSE_j(lv_j -
    C_ij/eps) (with ``cap``, at most lu) for active problems (zero-weight rows -inf), lu' = lu exactly
    for retired ones, and the column LSE_i(lu'_i - C_ij/eps) merged across programs; padded (-inf)
    columns of lv included."""
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    B, n, m, reg = 3, 23, 70, 0.05
    _use_fused_kernel(sf, kernel, monkeypatch, m)
    if kernel == "resident-two-rows":
        assert sf.resident_layout(n, m, torch.float32)[0] == 2
    g = torch.Generator().manual_seed(3)
    C = torch.rand(B, n, m, generator=g, dtype=torch.float64).to(dtype)
    dt = torch.float64 if dtype == torch.float64 else torch.float32
    lv = torch.randn(B, m, generator=g, dtype=dt)
    lv[:, -3:] = -math.inf
    la = torch.log(torch.rand(B, n, generator=g, dtype=dt))
    la[1, :4] = -math.inf
    lu = torch.randn(B, n, generator=g, dtype=dt) - (2.5 if cap else 0.0)  # about la - LSE: some rows capped
    active = torch.tensor([True, True, False])
    new, col = sf.fused_pass(C.to(DEVICE), reg, programs=2)(lv.to(DEVICE), lu.to(DEVICE), la.to(DEVICE),
                                                              active.to(DEVICE), scale, cap)
    new, col = new.cpu(), col.cpu()
    c = C.to(torch.float64) / reg
    ref = la.double() - scale * torch.logsumexp(lv.double()[:, None, :] - c, 2)
    if cap:
        ref = torch.minimum(ref, lu.double())
        assert (ref[:2] == lu[:2].double()).any() and (ref[:2] < lu[:2].double()).any()  # both branches taken
    ref = torch.where(active[:, None], ref, lu.double())
    ref_col = torch.logsumexp(ref[:, :, None] - c, 1)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert torch.equal(new[2], lu[2]), "a retired problem's lu changed"
    assert torch.equal(torch.isinf(new), torch.isinf(ref)) and torch.isneginf(new[1, :4]).all()
    fin = torch.isfinite(ref)
    assert_close(new.double()[fin], ref[fin], name="lu", **tol)
    assert_close(col.double(), ref_col, name="column LSE", **tol)


def test_fused_resident_layout():
    """Rows in registers up to RESIDENT_MAX_M padded columns (by the compute type's size), blocks of
    about RESIDENT_TILE entries and no more rows than the problem has; wider rows go through L2, and
    asking for registers there is an error."""
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    assert sf.resident_layout(4096, 4096, torch.float32) == (2, 4096, 8)
    assert sf.resident_layout(4096, 8192, torch.float32) == (1, 8192, 8)
    assert sf.resident_layout(4096, 8193, torch.float32) is None
    assert sf.resident_layout(4096, 4096, torch.float64) == (2, 4096, 16)
    assert sf.resident_layout(4096, 4097, torch.float64) is None
    assert sf.resident_layout(5, 29, torch.float32) == (8, 32, 1)
    assert sf.resident_layout(4096, 29, torch.float32)[0] == sf.RESIDENT_TILE // 32
    C = torch.rand(1, 3, 9000)
    with pytest.raises(ValueError, match="do not fit in registers"):
        sf.fused_pass(C, 0.1, resident=True)


def test_fused_programs_per_problem():
    """One wave of programs over the batch (rounded down), at least 64 rows each, at least one."""
    from grounded_fast.triton_kernels.ot.sinkhorn_fused import programs_per_problem
    cpu = torch.device("cpu")
    assert programs_per_problem(16, 4096, 2, cpu, per_sm=2, sms=132) == 16  # 256 programs <= 264
    assert programs_per_problem(17, 4096, 2, cpu, per_sm=2, sms=132) == 15  # 255, not 17 x 16 = 272
    assert programs_per_problem(1, 4096, 2, cpu, per_sm=2, sms=132) == 64   # 64 rows each, not 264
    assert programs_per_problem(600, 4096, 2, cpu, per_sm=2, sms=132) == 1
    assert programs_per_problem(4, 50, 128, cpu, per_sm=4, sms=132) == 1
