"""POT-style property tests: marginals, mass, stability at small reg, limits in reg."""
import numpy as np
import ot as pot
import pytest
import torch

from grounded_fast.ops import BALANCED, PARTIAL, entropic_ot

from conftest import assert_close, make_problem


def test_balanced_marginals():
    C, a, b = make_problem(4, 30, 45)
    sol = entropic_ot(C, a, b, reg=0.02, tol=1e-11, max_iter=20000)
    assert (sol.status == 0).all()
    assert_close(sol.plan.sum(2), a, rtol=0, atol=1e-10)
    assert_close(sol.plan.sum(1), b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mass", [0.1, 0.5, 0.99])
def test_partial_mass_and_inequalities(mass):
    C, a, b = make_problem(3, 25, 40, seed=4)
    b = 1.5 * b
    sol = entropic_ot(C, a, b, reg=0.02, problem=PARTIAL, mass=torch.full((3,), mass, dtype=C.dtype),
                      max_iter=3000, tol=1e-14, warn=False)
    assert_close(sol.plan.sum((1, 2)), torch.full((3,), mass, dtype=C.dtype), rtol=1e-12, atol=0)
    assert (sol.plan.sum(2) <= a * (1 + 1e-6) + 1e-12).all()
    assert (sol.plan.sum(1) <= b * (1 + 1e-6) + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("problem", [BALANCED, PARTIAL])
def test_finite_at_reg_1e_3_of_cost_scale(dtype, problem):
    C, a, b = make_problem(2, 40, 50, dtype=dtype, scale=100.0)
    kw = dict(mass=torch.full((2,), 0.5, dtype=dtype)) if problem == PARTIAL else {}
    sol = entropic_ot(C, a, b, reg=0.1, problem=problem, max_iter=500, warn=False, **kw)  # reg = 1e-3 x scale
    assert torch.isfinite(sol.plan).all() and torch.isfinite(sol.value).all()
    assert (sol.status != 2).all()
    target = 0.5 if problem == PARTIAL else 1.0
    assert sol.plan.double().sum((1, 2)).sub(target).abs().max() < (1e-4 if dtype == torch.float32 else 1e-9)


def test_partial_approaches_exact_as_reg_to_zero(rng):
    n, m = 12, 15
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    M /= M.max()
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    exact = np.sum(pot.partial.partial_wasserstein(a, b, M, m=0.6) * M)
    gaps = []
    for reg in (0.05, 0.01, 0.002):
        C = torch.tensor(M)[None]
        sol = entropic_ot(C, torch.tensor(a)[None], torch.tensor(b)[None], reg=reg, problem=PARTIAL,
                          mass=torch.tensor([0.6], dtype=torch.float64), max_iter=20000, tol=1e-12, warn=False)
        gaps.append(abs(sol.value_linear.item() - exact))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3, gaps


def test_agrees_with_pot_exp_domain_at_large_reg(rng):
    n, m = 30, 20
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    P_pot = pot.partial.entropic_partial_wasserstein(a, b, M, 5.0, m=0.7, numItermax=500)
    sol = entropic_ot(torch.tensor(M)[None], torch.tensor(a)[None], torch.tensor(b)[None], reg=5.0, problem=PARTIAL,
                      mass=torch.tensor([0.7], dtype=torch.float64), max_iter=500, tol=1e-100, warn=False)
    assert_close(sol.plan[0], P_pot, rtol=1e-9, atol=1e-15)
