"""Envelope gradients: gradcheck in float64 (small sizes, converged solves) and agreement with
POT's unrolled autograd at convergence."""
import numpy as np
import ot as pot
import pytest
import torch

from grounded_fast.ops import PARTIAL, UNBALANCED, entropic_ot
import grounded_fast.ot as ot

from conftest import assert_close, make_problem


def _norm(x):
    return x / x.sum(-1, keepdim=True)


def test_gradcheck_balanced():
    C, a, b = make_problem(2, 4, 5, seed=7)
    C.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    # a and b enter normalised: the balanced value is defined on the simplex (centred potentials).
    f = lambda C, a, b: entropic_ot(C, _norm(a), _norm(b), reg=0.3, tol=1e-14, max_iter=100000).value
    assert torch.autograd.gradcheck(f, (C, a, b), atol=1e-7, rtol=1e-5)


def test_gradcheck_partial():
    C, a, b = make_problem(2, 4, 5, seed=8)
    b = 1.4 * b
    C.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    mass = torch.tensor([0.5, 0.7], dtype=torch.float64)
    f = lambda C, a, b: entropic_ot(C, a, b, reg=0.3, problem=PARTIAL, mass=mass, tol=1e-15, max_iter=200000,
                                    warn=False).value
    assert torch.autograd.gradcheck(f, (C, a, b), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kl_ref", [True, False])
def test_gradcheck_unbalanced(kl_ref):
    C, a, b = make_problem(2, 4, 5, seed=9)
    C.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    f = lambda C, a, b: entropic_ot(C, a, b, reg=0.3, problem=UNBALANCED, reg_m=(0.8, 1.7), kl_ref=kl_ref,
                                    tol=1e-14, check_every=1, max_iter=100000).value
    assert torch.autograd.gradcheck(f, (C, a, b), atol=1e-7, rtol=1e-5)


def test_envelope_matches_pot_unrolled_at_convergence(rng):
    n, m, reg = 9, 11, 0.2
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    # POT: unrolled autograd through sinkhorn_log of the regularised objective <P,M> + reg sum P log P
    Mp = torch.tensor(M, requires_grad=True)
    P = pot.bregman.sinkhorn_log(torch.tensor(a), torch.tensor(b), Mp, reg, numItermax=3000, stopThr=1e-14)
    (torch.sum(P * Mp) + reg * torch.sum(P * torch.log(P))).backward()
    Mg = torch.tensor(M, requires_grad=True)
    sol = entropic_ot(Mg[None], torch.tensor(a)[None], torch.tensor(b)[None], reg=reg, tol=1e-14, max_iter=3000)
    sol.value.sum().backward()
    assert_close(Mg.grad, Mp.grad, rtol=1e-6, atol=1e-10, name="dV/dM")
    # and the drop-in sinkhorn2 carries the same envelope gradient
    Md = torch.tensor(M, requires_grad=True)
    ot.sinkhorn2(torch.tensor(a), torch.tensor(b), Md, reg, stopThr=1e-14, numItermax=3000).backward()
    assert_close(Md.grad, Mp.grad, rtol=1e-6, atol=1e-10, name="sinkhorn2 grad")


def test_plan_is_not_differentiable_in_envelope_mode():
    C, a, b = make_problem(1, 3, 4)
    C.requires_grad_()
    sol = entropic_ot(C, a, b, reg=0.5)
    assert sol.value.requires_grad and not sol.plan.requires_grad and not sol.value_linear.requires_grad


def test_autodiff_mode_matches_pot_unrolled(rng):
    n, m, reg = 6, 7, 0.5
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    Mp = torch.tensor(M, requires_grad=True)
    pot.sinkhorn2(torch.tensor(a), torch.tensor(b), Mp, reg, method="sinkhorn_log", numItermax=50, stopThr=0).backward()
    Mg = torch.tensor(M, requires_grad=True)
    ot.sinkhorn2(torch.tensor(a), torch.tensor(b), Mg, reg, method="sinkhorn_log", numItermax=50, stopThr=0,
                 grad="autodiff").backward()
    assert_close(Mg.grad, Mp.grad, rtol=1e-8, atol=1e-12)
