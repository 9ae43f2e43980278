"""A solve that reports convergence returns a feasible plan; every other outcome says what failed.

Regression tests for the partial-OT stop test that fired on an underflowed plan (infeasible plans
reported converged), the rounding-floor stop (POT's stopThr=1e-100 defaults), the feasibility
verdict, the validated inputs, and hypothesis property tests over shapes, scales, reg, mass and
dtype: "finite" and "reported converged => feasible".
"""
import warnings

import numpy as np
import ot as pot
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grounded_fast.ot as got
from grounded_fast.nn import SinkhornLoss
from grounded_fast.ops import BALANCED, PARTIAL, entropic_ot
from grounded_fast.ops.entropic_ot import HISTORY_CAP, SolveSpec

from conftest import assert_close

# the feasibility a converged plan has in the tests below: relative to the mass, float64 to 1e-6 and
# float32 to 1e-2 (costs up to 1e4 x reg, where float32 resolves the plan's entries to ~1e-3)
FEASIBLE = {torch.float64: 1e-6, torch.float32: 1e-2}


def partial_violation(P, a, b, mass):
    """(||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1 + |sum P - m|) / m, in float64."""
    P, a, b = (torch.as_tensor(x).double() for x in (P, a, b))
    r, c = P.sum(-1), P.sum(-2)
    return float(((r - a).clamp_min(0).sum() + (c - b).clamp_min(0).sum() + (P.sum() - mass).abs()) / mass)


# ----------------------------------------------------------------- the reported reproducers
def test_underflowed_plan_no_longer_stops_the_partial_solve():
    """[[10, 3]] at reg 0.008: exp(-C/reg) of the cheap column dominates by e^875, so the plan
    read [[0, 0.5]] (column 2 gets 0.5 > b2 = 0.2) and its change read 0 at the first check."""
    P, lg = got.partial.entropic_partial_wasserstein([1.0], [0.8, 0.2], [[10.0, 3.0]], reg=0.008, m=0.5, log=True)
    assert_close(P, np.array([[0.3, 0.2]]), rtol=0, atol=1e-9, name="plan")
    assert lg["partial_w_dist"] == pytest.approx(3.6, abs=1e-8)
    P_pot, lg_pot = pot.partial.entropic_partial_wasserstein_logscale(
        np.array([1.0]), np.array([0.8, 0.2]), np.array([[10.0, 3.0]]), reg=0.008, m=0.5, log=True)
    assert_close(P, P_pot, rtol=0, atol=1e-12, name="POT logscale plan")
    # the same stop quantity as POT's log-domain solver, check for check
    k = min(len(lg["err"]), len(lg_pot["err"])) - 3  # the last checks are at the rounding level
    assert_close(np.array(lg["err"][:k]), np.array(lg_pot["err"][:k]), rtol=1e-6, atol=1e-9, name="err")


@pytest.mark.parametrize("backend,domain", [("cpu", "auto"), ("cpu", "log"), ("torch", "auto")])
def test_underflow_reproducer_on_every_cpu_path(backend, domain):
    C = torch.tensor([[[10.0, 3.0]]], dtype=torch.float64)
    sol = entropic_ot(C, torch.tensor([[1.0]], dtype=C.dtype), torch.tensor([[0.8, 0.2]], dtype=C.dtype), reg=0.008,
                      problem=PARTIAL, mass=0.5, tol=1e-100, backend=backend, domain=domain)
    assert sol.status.tolist() == [0]
    assert_close(sol.plan[0], torch.tensor([[0.3, 0.2]], dtype=C.dtype), rtol=0, atol=1e-9, name=backend)


def test_five_by_four_row_no_longer_exceeds_its_weight():
    """Costs up to 13.8 at reg 1e-3: row 3 received 0.5 where a = 0.2, reported converged."""
    M = np.array([[7.4, 13.8, 2.1, 13.8], [4.5, 6.1, 12.0, 5.9], [8.0, 0.4, 10.9, 7.8], [4.8, 11.4, 4.4, 6.6],
                  [1.9, 5.8, 3.0, 3.8]])
    a = np.full(5, 0.2)
    b = np.array([0.29356309, 0.1313248, 0.20201976, 0.37309235])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        P = got.partial.entropic_partial_wasserstein(a, b, M, reg=1e-3, m=0.5, numItermax=100000)
    assert partial_violation(P, a, b, 0.5) < 1e-9
    P_pot = pot.partial.entropic_partial_wasserstein_logscale(a, b, M, reg=1e-3, m=0.5, numItermax=100000)
    assert_close(P, P_pot, rtol=0, atol=1e-9, name="POT logscale plan")


def test_costs_of_1e30_are_a_numerical_failure_naming_reg():
    """C x 1e30 at reg 0.1: C/reg = 1e31 leaves no digit of the plan; it came back all zero
    (mass 0 instead of m) and 'converged'."""
    C, a, b = torch.rand(1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e30, \
        torch.full((1, 6), 1 / 6, dtype=torch.float64), torch.full((1, 7), 1 / 7, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="reg = 0.1 is too small") as rec:
        sol = entropic_ot(C, a, b, reg=0.1, problem=PARTIAL, mass=0.5, tol=1e-100)
    assert sol.status.tolist() == [2]
    assert "transported mass" in str(rec[0].message)


def test_float32_tiny_reg_is_a_numerical_failure_naming_reg():
    """float32 at reg 1e-8: a plan summing to 4e5 was reported as merely unconverged."""
    g = torch.Generator().manual_seed(0)
    C = torch.rand(1, 20, 30, generator=g)
    a, b = torch.full((1, 20), 1 / 20), torch.full((1, 30), 1 / 30)
    for reg in (1e-8, 1e-10):
        with pytest.warns(RuntimeWarning, match=f"reg = {reg:.3g} is too small"):
            sol = entropic_ot(C, a, b, reg=reg, warn=False)
        assert sol.status.tolist() == [2]


def test_mass_equal_to_the_smaller_total_is_accepted():
    """m = min(a.sum(), b.sum()) computed by numpy was refused for 12% of normalised a: torch's
    sum of the same float64 weights can be an ulp smaller."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.random(37)
        a /= a.sum()
        b = rng.random(23) * 2
        m = min(a.sum(), b.sum())
        M = rng.random((37, 23))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 20 iterations: not converged, not the point
            got.partial.entropic_partial_wasserstein(a, b, M, reg=0.5, m=m, numItermax=20)
            got.partial.entropic_partial_wasserstein(torch.tensor(a), torch.tensor(b), torch.tensor(M), reg=0.5, m=m,
                                                     numItermax=20)
    with pytest.raises(ValueError, match="lower or equal"):
        got.partial.entropic_partial_wasserstein(a, b, M, reg=0.5, m=m * (1 + 1e-9))
    with pytest.raises(ValueError, match="greater than 0"):
        got.partial.entropic_partial_wasserstein(a, b, M, reg=0.5, m=-0.1)
    with pytest.raises(ValueError, match="finite"):
        got.partial.entropic_partial_wasserstein(a, b, M, reg=0.5, m=float("nan"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_warm_starts_are_refused(bad):
    """A NaN warm start gave a NaN plan under a warning claiming 'the last finite iterate'; +inf
    gave entries of 8e307."""
    rng = np.random.default_rng(1)
    a, b, M = np.full(5, 0.2), np.full(4, 0.25), rng.random((5, 4))
    u0, v0 = np.zeros(5), np.zeros(4)
    u0[2] = bad
    with pytest.raises(ValueError, match="warm start"):
        got.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", warmstart=(u0, v0))
    C, ta, tb = (torch.tensor(x)[None] for x in (M, a, b))
    with pytest.raises(ValueError, match="log_u0"):
        entropic_ot(C, ta, tb, reg=0.1, log_u0=torch.tensor(u0)[None])
    with pytest.raises(ValueError, match="log_v0"):
        entropic_ot(C, ta, tb, reg=0.1, log_v0=torch.tensor(u0[:4])[None])


def test_a_warm_start_for_partial_ot_is_refused():
    C = torch.rand(1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="partial OT takes no warm start"):
        entropic_ot(C, torch.full((1, 3), 1 / 3, dtype=C.dtype), torch.full((1, 4), 0.25, dtype=C.dtype), reg=0.1,
                    problem=PARTIAL, mass=0.5, log_u0=torch.ones(1, 3, dtype=C.dtype))


@pytest.mark.parametrize("reg_m", [float("nan"), -1.0, 0.0])
def test_sinkhorn_loss_refuses_a_bad_reg_m(reg_m):
    with pytest.raises(ValueError, match="reg_m"):
        SinkhornLoss(reg=0.1, reg_m=reg_m)


def test_all_zero_weights_are_an_error_for_a_single_problem():
    M = np.random.default_rng(0).random((3, 4))
    for a, b in ((np.zeros(3), np.full(4, 0.25)), (np.full(3, 1 / 3), np.zeros(4))):
        with pytest.raises(ValueError, match="sums to 0"):
            got.sinkhorn(a, b, M, 0.1)
        with pytest.raises(ValueError, match="sums to 0"):
            got.partial.entropic_partial_wasserstein(a, b, M, 0.1)


def test_grounded_bert_shape_with_pot_defaults_stops_where_pot_does():
    """float32 torch, 64 x 197 cosine costs, reg 0.05, m 0.5, numItermax 1000, stopThr 1e-100:
    POT's plan stops changing at its first check; ours ran all 1000 iterations on a third of the
    problems (changing at the rounding level) and reported them unconverged."""
    g = torch.Generator().manual_seed(0)
    B, n, m = 8, 64, 197
    x = torch.nn.functional.normalize(torch.randn(B, n, 32, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(B, m, 32, generator=g), dim=-1)
    C = 1 - x @ y.transpose(1, 2)
    a, b = torch.full((n,), 1 / n), torch.full((m,), 1 / m)
    for k in range(B):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no non-convergence warning
            P, lg = got.partial.entropic_partial_wasserstein(a, b, C[k], 0.05, m=0.5, log=True)
        _, lg_pot = pot.partial.entropic_partial_wasserstein(a, b, C[k], 0.05, m=0.5, log=True)
        assert len(lg["err"]) <= len(lg_pot["err"]) + 1, (k, len(lg["err"]), len(lg_pot["err"]))
        assert partial_violation(P, a, b, 0.5) < FEASIBLE[torch.float32]
    batch = entropic_ot(C, a.expand(B, n), b.expand(B, m), reg=0.05, problem=PARTIAL, mass=0.5, tol=1e-100)
    assert batch.status.eq(0).all() and int(batch.n_iter.max()) <= 101  # of 1000


@pytest.mark.parametrize("max_iter", [10 ** 8, 2 ** 62])
def test_history_memory_does_not_grow_with_max_iter(max_iter):
    """The error history was sized max_iter / check_every: 300 MiB at 1e8, 7e18 bytes at 2**62."""
    C = torch.rand(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = torch.full((2, 5), 0.2, dtype=C.dtype), torch.full((2, 6), 1 / 6, dtype=C.dtype)
    for problem, kw in ((BALANCED, {}), (PARTIAL, {"mass": 0.5})):
        sol = entropic_ot(C, a, b, reg=0.1, problem=problem, max_iter=max_iter, **kw)
        assert sol.status.eq(0).all() and sol.err_history.shape[1] <= HISTORY_CAP
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged
        P, lg = got.partial.entropic_partial_wasserstein(a[0], b[0], C[0], 0.1, m=0.5, numItermax=max_iter, log=True)
    assert len(lg["err"]) < 100


def test_history_keeps_the_last_check_when_full():
    """More checks than slots: the last slot holds the last check (the stop's error)."""
    C = torch.rand(1, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, b = torch.full((1, 9), 1 / 9, dtype=C.dtype), torch.full((1, 8), 1 / 8, dtype=C.dtype)
    full = entropic_ot(C, a, b, reg=0.02, tol=1e-12, check_every=1, stop_at_floor=False)
    hist = full.err_history[0][full.err_history[0] >= 0]
    assert len(hist) > 5
    for backend in ("cpu", "torch"):
        spec = SolveSpec(BALANCED, 0.02, max_iter=1000, tol=1e-12, check_every=1, history=4)
        capped = torch.ops.grounded_fast.entropic_ot(C, a, b, torch.zeros(1, dtype=C.dtype), torch.zeros_like(a),
                                                     torch.zeros_like(b), *spec.op_args(), backend)
        h = capped[8][0]
        assert h.shape == (4,)
        assert_close(h[:3], hist[:3], rtol=1e-9, atol=0, name=f"{backend} first checks")
        assert_close(h[3], hist[-1], rtol=1e-6, atol=1e-15, name=f"{backend} last check")


# -------------------------------------------------------------------------- property tests
@st.composite
def problems(draw, partial=True):
    n, m = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = 10.0 ** draw(st.floats(-30, 30))
    reg = scale * 10.0 ** draw(st.floats(-3, 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    rng = np.random.default_rng(seed)
    C = rng.uniform(0, 10, (n, m)) * scale
    a = rng.random(n) + 0.01
    b = rng.random(m) + 0.01
    a /= a.sum()
    b = b / b.sum() * (draw(st.floats(0.5, 2.0)) if partial else 1.0)
    frac = draw(st.floats(0.01, 1.0))
    return C, a, b, reg, dtype, frac


def _check(sol, C, a, b, mass, dtype, problem):
    assert torch.isfinite(sol.plan).all(), "plan not finite"
    assert torch.isfinite(sol.value).all()
    if int(sol.status) != 0:
        return
    P = sol.plan.double()
    if problem == PARTIAL:
        e = partial_violation(P, a, b, mass)
    else:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        e = max(float((P.sum(1) - a).abs().sum()), float((P.sum(0) - b).abs().sum()))
    assert e <= FEASIBLE[dtype], f"reported converged, but infeasible by {e:.3g}"


@pytest.mark.parametrize("backend,domain", [("cpu", "auto"), ("cpu", "log"), ("torch", "auto")])
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_property_partial_converged_means_feasible(backend, domain, p):
    C, a, b, reg, dtype, frac = p
    mass = frac * min(a.sum(), b.sum())
    tC, ta, tb = (torch.tensor(x, dtype=dtype) for x in (C, a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = entropic_ot(tC, ta, tb, reg=float(reg), problem=PARTIAL, mass=float(mass), tol=1e-100,
                          max_iter=400 if backend == "torch" else 2000, backend=backend, domain=domain)
    _check(sol, C, a, b, mass, dtype, PARTIAL)


@pytest.mark.parametrize("backend,domain", [("cpu", "auto"), ("cpu", "log"), ("torch", "auto")])
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(partial=False))
def test_property_balanced_converged_means_feasible(backend, domain, p):
    C, a, b, reg, dtype, _ = p
    tC, ta, tb = (torch.tensor(x, dtype=dtype) for x in (C, a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = entropic_ot(tC, ta, tb, reg=float(reg), tol=1e-100, max_iter=400 if backend == "torch" else 2000,
                          backend=backend, domain=domain)
    _check(sol, C, a, b, None, dtype, BALANCED)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(p=problems())
def test_property_drop_in_partial_is_finite_and_feasible_or_warns(p):
    """Through the POT API with POT's defaults: a plan that comes without a warning is feasible."""
    C, a, b, reg, dtype, frac = p
    mass = frac * min(a.sum(), b.sum())
    args = [torch.tensor(x, dtype=dtype) for x in (a, b, C)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        P = got.partial.entropic_partial_wasserstein(*args, reg=float(reg), m=float(mass))
    assert torch.isfinite(P).all()
    if not any(issubclass(w.category, (RuntimeWarning, UserWarning)) for w in rec):
        assert partial_violation(P, a, b, mass) <= FEASIBLE[dtype]
