"""The native CPU op against the float64 PyTorch reference: every problem kind, awkward shapes,
padding, non-contiguous inputs, dtypes; op registration (opcheck) and torch.compile."""
import math

import pytest
import torch

from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED, SolveSpec, entropic_ot
from grounded_fast.reference import entropic_ot_reference

from conftest import TOL, assert_close, make_problem

KINDS = [BALANCED, UNBALANCED, PARTIAL]
KW = {BALANCED: {}, UNBALANCED: dict(reg_m=(0.7, 2.0), check_every=1), PARTIAL: {}}


def _both(C, a, b, problem, domain="auto", **kw):
    kw = {**KW[problem], **kw}
    if problem == PARTIAL:
        kw.setdefault("mass", 0.6 * torch.minimum(a.sum(1), b.sum(1)))
    native = entropic_ot(C, a, b, problem=problem, backend="cpu", warn=False, domain=domain, **kw)
    ref = entropic_ot(C.double(), a.double(), b.double(), problem=problem, backend="torch", warn=False,
                      **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    return native, ref


@pytest.mark.parametrize("domain", ["auto", "log"])
@pytest.mark.parametrize("problem", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 5, 1), (3, 41, 401), (257, 3, 4), (1, 64, 197)])
def test_matches_reference_float64(problem, shape, domain):
    C, a, b = make_problem(*shape)
    nat, ref = _both(C, a, b, problem, domain, reg=0.05, max_iter=300, tol=1e-10)
    assert torch.equal(nat.n_iter, ref.n_iter)
    assert torch.equal(nat.status, ref.status)
    assert_close(nat.plan, ref.plan, **TOL[torch.float64], name="plan")
    assert_close(nat.value, ref.value, rtol=1e-9, atol=1e-12, name="value")
    assert_close(nat.value_linear, ref.value_linear, rtol=1e-9, atol=1e-12, name="value_linear")


@pytest.mark.parametrize("domain", ["auto", "log"])
@pytest.mark.parametrize("problem", KINDS)
def test_float32_error_within_k_of_pytorch_float32(problem, domain):
    """flash-attention's rule: our float32 error is at most a few times that of the plain PyTorch
    reference run in float32, both against the float64 reference."""
    C, a, b = make_problem(4, 41, 67, seed=3)
    kw = dict(reg=0.05, max_iter=200, check_every=0)
    nat32, ref64 = _both(C.float(), a.float(), b.float(), problem, domain, **kw)
    mass32 = 0.6 * torch.minimum(a.sum(1), b.sum(1)).float()
    torch32 = entropic_ot(C.float(), a.float(), b.float(), problem=problem, backend="torch", warn=False,
                          **{**KW[problem], **kw}, **({"mass": mass32} if problem == PARTIAL else {}))
    err_ours = (nat32.plan.double() - ref64.plan).abs().max().item()
    err_torch = (torch32.plan.double() - ref64.plan).abs().max().item()
    assert err_ours <= 5 * err_torch + 1e-7, (err_ours, err_torch)


@pytest.mark.parametrize("problem", KINDS)
def test_padding_gives_exact_zeros_and_matches_unpadded(problem):
    C, a, b = make_problem(3, 9, 13, seed=1)
    a[0, 6:] = 0
    b[1, 10:] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    sol = entropic_ot(C, a, b, problem=problem, reg=0.1, warn=False, **KW[problem],
                      **({"mass": torch.full((3,), 0.5, dtype=C.dtype)} if problem == PARTIAL else {}))
    assert torch.all(sol.plan[0, 6:] == 0) and torch.all(sol.plan[1, :, 10:] == 0)
    assert torch.isneginf(sol.log_u[0, 6:]).all() and torch.isneginf(sol.log_v[1, 10:]).all()
    small = entropic_ot(C[:1, :6], a[:1, :6], b[:1], problem=problem, reg=0.1, warn=False, **KW[problem],
                        **({"mass": torch.full((1,), 0.5, dtype=C.dtype)} if problem == PARTIAL else {}))
    assert_close(sol.plan[0, :6], small.plan[0], rtol=1e-9, atol=1e-13, name="padded vs cropped")


def test_non_contiguous_inputs():
    C, a, b = make_problem(2, 13, 11, seed=2)
    Ct = C.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    a2 = torch.stack([a, a], -1)[..., 0]
    assert not Ct.is_contiguous() and not a2.is_contiguous()
    s1 = entropic_ot(Ct, a2, b, reg=0.1, warn=False)
    s2 = entropic_ot(C, a, b, reg=0.1, warn=False)
    assert torch.equal(s1.plan, s2.plan)


def test_fixed_iteration_mode_runs_exactly_max_iter():
    C, a, b = make_problem(3, 8, 9)
    for problem in KINDS:
        sol = entropic_ot(C, a, b, problem=problem, reg=0.5, max_iter=37, check_every=0, warn=False,
                          **({k: v for k, v in KW[problem].items() if k != "check_every"}))
        assert sol.n_iter.tolist() == [37, 37, 37]
        assert sol.err_history.shape == (3, 0)


def test_half_precision_inputs_computed_in_float32():
    C, a, b = make_problem(2, 16, 20, dtype=torch.float64)
    ref = entropic_ot(C, a, b, reg=0.1, warn=False)
    for dt in (torch.float16, torch.bfloat16):
        sol = entropic_ot(C.to(dt), a.to(dt), b.to(dt), reg=0.1, warn=False)
        assert sol.plan.dtype == dt and torch.isfinite(sol.plan.float()).all()
        assert (sol.plan.double() - ref.plan).abs().max() < 2e-3


def test_warm_start_converges_immediately():
    C, a, b = make_problem(2, 20, 30)
    sol = entropic_ot(C, a, b, reg=0.05, tol=1e-10, max_iter=5000)
    warm = entropic_ot(C, a, b, reg=0.05, tol=1e-10, max_iter=5000, log_u0=sol.log_u, log_v0=sol.log_v)
    assert (warm.n_iter <= 2).all() and (sol.n_iter > 20).all()
    assert_close(warm.plan, sol.plan, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("problem", KINDS)
def test_opcheck(problem):
    C, a, b = make_problem(2, 5, 6)
    C.requires_grad_()
    mass = torch.full((2,), 0.5, dtype=C.dtype) if problem == PARTIAL else torch.zeros(2, dtype=C.dtype)
    reg_m = (0.7, 2.0) if problem == UNBALANCED else (math.inf, math.inf)
    spec = SolveSpec(problem, 0.1, reg_m[0], reg_m[1], True, 50, 1e-9, 10)
    for backend in ("cpu", "torch"):
        args = (C, a, b, mass, torch.zeros_like(a), torch.zeros_like(b), *spec.op_args(), backend)
        torch.library.opcheck(torch.ops.grounded_fast.entropic_ot.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_loss_in_torch_compile_fullgraph():
    from grounded_fast.nn import PartialOTLoss

    loss_fn = PartialOTLoss(reg=0.1, mass=0.5, cost="cosine", max_iter=100)

    @torch.compile(fullgraph=True)  # default backend (inductor): the real use
    def f(x, y):
        return loss_fn(x, y).sum()

    x = torch.randn(3, 7, 16, requires_grad=True)
    y = torch.randn(3, 11, 16)
    out = f(x, y)
    out.backward()
    eager_x = x.detach().clone().requires_grad_()
    ref = loss_fn(eager_x, y).sum()
    ref.backward()
    assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert_close(x.grad, eager_x.grad, rtol=1e-4, atol=1e-6)


def test_reference_runs_with_autograd_unrolled():
    C, a, b = make_problem(1, 4, 5)
    C.requires_grad_()
    sol = entropic_ot(C, a, b, reg=0.5, grad="autodiff", warn=False)
    assert sol.plan.requires_grad
    (sol.plan * C).sum().backward()
    assert torch.isfinite(C.grad).all()


def test_reference_direct_call_matches_op_contract():
    C, a, b = make_problem(2, 6, 7)
    out = entropic_ot_reference(C, a, b, torch.zeros(2, dtype=C.dtype), torch.zeros_like(a), torch.zeros_like(b),
                                SolveSpec(BALANCED, 0.1, max_iter=100, tol=1e-9, check_every=10))
    assert len(out) == 9 and out[0].shape == (2, 6, 7)


@pytest.mark.parametrize("problem", KINDS)
@pytest.mark.parametrize("reg,offset", [(1.0, 0), (0.05, 0), (0.01, 0), (1e-3, 0), (0.01, 10.0)])
def test_scaling_domain_matches_log_domain(problem, reg, offset):
    """The stabilised scaling iteration computes the log-domain iterates: with absorptions at small
    reg, and through the hand-over to the log domain and back when exp(-C/reg) underflows
    entirely (offset costs)."""
    C, a, b = make_problem(3, 30, 47, seed=5, scale=1.0)
    C = C + offset  # a constant shift leaves both plans unchanged but underflows exp(-C/reg)
    # tol above the rounding floor of the stop quantities (the offset makes the potentials ~ 1e3, whose
    # changes the log domain resolves to ~1e-11), and no floor stop: that depends on each domain's rounding
    kw = dict(reg=reg, problem=problem, max_iter=400, tol=1e-12 if offset == 0 else 1e-9, warn=False,
              stop_at_floor=False)
    if problem == PARTIAL:
        kw["mass"] = torch.full((3,), 0.7, dtype=C.dtype)
    kw.update(KW[problem])
    s_auto = entropic_ot(C, a, b, domain="auto", **kw)
    s_log = entropic_ot(C, a, b, domain="log", **kw)
    assert torch.equal(s_auto.n_iter, s_log.n_iter)
    assert_close(s_auto.plan, s_log.plan, rtol=1e-7, atol=1e-14, name="plan")
    assert_close(s_auto.value, s_log.value, rtol=1e-9, atol=1e-12, name="value")


@pytest.mark.parametrize("problem", KINDS)
def test_single_large_problem_split_across_threads(problem):
    """B=1 with n*m >= 2^18 runs each pass split across threads (row chunks with private column
    sums in the scaling domain, row / column blocks in the log domain); padding included."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        C, a, b = make_problem(1, 530, 517, seed=11)
        a[0, 500:] = 0
        b[0, :7] = 0
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
        kw = {**KW[problem], **dict(reg=0.02, problem=problem, max_iter=150, check_every=0, warn=False)}
        if problem == PARTIAL:
            kw["mass"] = 0.8
        s_auto = entropic_ot(C, a, b, domain="auto", **kw)
        s_log = entropic_ot(C, a, b, domain="log", **kw)
        ref = entropic_ot(C, a, b, backend="torch", **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.all(s_auto.plan[0, 500:] == 0) and torch.all(s_auto.plan[0, :, :7] == 0)
    assert_close(s_auto.plan, ref.plan, rtol=1e-7, atol=1e-15, name="auto vs reference")
    assert_close(s_log.plan, ref.plan, rtol=1e-9, atol=1e-15, name="log vs reference")


@pytest.mark.parametrize("problem", KINDS)
def test_scaling_domain_hand_over_float32(problem):
    """float32, costs offset so that exp(-C/reg) underflows: the scaling domain hands iterations to
    the log domain and back, and the plan matches the log-domain-only solve."""
    C, a, b = make_problem(2, 33, 29, dtype=torch.float32, seed=6)
    kw = {**KW[problem], **dict(reg=0.02, problem=problem, max_iter=200, check_every=0, warn=False)}
    if problem == PARTIAL:
        kw["mass"] = 0.6
    s_auto = entropic_ot(C + 3.0, a, b, domain="auto", **kw)
    s_log = entropic_ot(C + 3.0, a, b, domain="log", **kw)
    assert torch.isfinite(s_auto.plan).all() and (s_auto.status != 2).all()
    assert_close(s_auto.plan, s_log.plan, rtol=2e-3, atol=1e-7, name="plan")


def test_randomised_problems_both_domains_match_reference():
    """Seeded random problems (shapes, masks, reg over 4 decades, cost scales, offsets that make
    exp(-C/reg) underflow, all kinds, both dtypes): both CPU domains match the reference, with the
    float32 tolerance scaled by the conditioning max(C)/reg."""
    import random

    rnd = random.Random(0)
    g = torch.Generator().manual_seed(0)
    for case in range(80):
        B, n, m = rnd.choice([1, 2, 5]), rnd.randint(1, 40), rnd.randint(1, 40)
        dt = rnd.choice([torch.float32, torch.float64])
        problem = rnd.choice(KINDS)
        reg = 10 ** rnd.uniform(-3, 1)
        C = torch.rand(B, n, m, generator=g, dtype=torch.float64) * 10 ** rnd.uniform(-1, 2) + rnd.choice([0.0, 5.0])
        a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.05
        b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.05
        if n > 1 and rnd.random() < 0.5:
            a[:, rnd.randrange(n)] = 0
        if m > 1 and rnd.random() < 0.5:
            b[:, rnd.randrange(m)] = 0
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True) * (1.3 if problem == PARTIAL else 1.0)
        kw = dict(reg=reg, problem=problem, max_iter=60, check_every=0, warn=False, mass=0.7, reg_m=(0.5, 2.0))
        ref = entropic_ot(C, a, b, backend="torch", **kw)
        pmax = ref.plan.max().item()
        tol = 1e-9 if dt == torch.float64 else 2e-7 * (C.max().item() / reg) * pmax + 1e-7
        for domain in ("auto", "log"):
            sol = entropic_ot(C.to(dt), a.to(dt), b.to(dt), domain=domain, **kw)
            assert (sol.status != 2).all(), (case, domain)
            assert_close(sol.plan, ref.plan, rtol=0, atol=tol, name=f"case {case} {domain} {dt} kind {problem}")


def test_history_can_be_skipped():
    C, a, b = make_problem(2, 6, 7)
    for problem in KINDS:
        full = entropic_ot(C, a, b, reg=0.1, problem=problem, max_iter=50, warn=False, **KW[problem])
        none = entropic_ot(C, a, b, reg=0.1, problem=problem, max_iter=50, warn=False, history=False, **KW[problem])
        assert none.err_history.shape == (2, 0) and full.err_history.shape[1] > 0
        assert torch.equal(full.plan, none.plan) and torch.equal(full.n_iter, none.n_iter)


def test_single_unbatched_problem():
    C, a, b = make_problem(1, 7, 9)
    C.requires_grad_()
    one = entropic_ot(C[0], a[0], b[0], reg=0.1, problem=PARTIAL, mass=0.5)
    batched = entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=0.5)
    assert one.plan.shape == (7, 9) and one.log_u.shape == (7,) and one.value.shape == ()
    assert torch.equal(one.plan, batched.plan[0])
    one.value.backward()
    assert torch.allclose(C.grad[0], one.plan)


def test_solve_spec_checks_once_and_derives_the_rest():
    """The solve specification: every field checked when it is built (errors name the field), the
    unbalanced exponents and the history length derived, and the op's scalars its inverse."""
    s = SolveSpec(UNBALANCED, 0.5, 1.0, math.inf, max_iter=25, check_every=10, history=-1)
    assert (s.fa, s.fb, s.hist_len) == (1.0 / 1.5, 1.0, 3)
    assert SolveSpec(*s.op_args()) == s and isinstance(s.reg, float)
    assert s.replace(history=2).hist_len == 2 and s.replace(check_every=0).hist_len == 0
    for change, msg in [(dict(reg=0), "reg must be"), (dict(reg=float("nan")), "reg must be"),
                        (dict(reg=True), "reg must be"), (dict(reg_m_a=0.0), "reg_m must be > 0"),
                        (dict(reg_m_b=float("nan")), "reg_m must be > 0"), (dict(max_iter=0), "max_iter"),
                        (dict(check_every=-1), "check_every"), (dict(domain=2), "domain"),
                        (dict(floor=-1.0), "floor"), (dict(problem=5), "unknown problem")]:
        with pytest.raises(ValueError, match=msg):
            s.replace(**change)
    with pytest.raises(ValueError, match="unbalanced problems only"):
        SolveSpec(BALANCED, 0.5, 1.0, 1.0)


def test_one_schema_per_op_with_the_backend_as_its_argument():
    """Each public op is one registration whose last argument is the backend; the native kernels
    are kernel ops of their own (no per-backend copies of a public schema)."""
    ns = torch.ops.grounded_fast
    for name in ("entropic_ot", "entropic_ot_features", "ot_features_products", "pairwise_agreement",
                 "attention_pair_sums"):
        args = getattr(ns, name).default._schema.arguments
        assert "backend" in [a.name for a in args], name
    for gone in ("entropic_ot_torch", "entropic_ot_triton", "entropic_ot_cuda", "pairwise_agreement_torch",
                 "attention_pair_sums_torch"):
        with pytest.raises(AttributeError):
            getattr(ns, gone)
    C, a, b = make_problem(2, 5, 6)
    spec = SolveSpec(BALANCED, 0.1, max_iter=50, tol=1e-9, check_every=10)
    tensors = (C, a, b, torch.zeros(2, dtype=C.dtype), torch.zeros_like(a), torch.zeros_like(b))
    outs = [ns.entropic_ot(*tensors, *spec.op_args(), backend) for backend in ("cpu", "torch")]
    assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-14, name="cpu vs torch through one op")
    with pytest.raises(ValueError, match="backend must be one of"):
        ns.entropic_ot(*tensors, *spec.op_args(), "opencl")
