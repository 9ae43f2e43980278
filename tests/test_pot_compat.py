"""grounded_fast.ot as a drop-in for POT: same results, return types and log keys."""
import numpy as np
import ot as pot
import pytest
import torch

import grounded_fast.ot as ot

from conftest import assert_close


def _problem(rng, n=23, m=31, scale=1.0):
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    M = scale * M / M.max()
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return a / a.sum(), b / b.sum(), M


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log"])
def test_sinkhorn_matches_pot(rng, method):
    a, b, M = _problem(rng)
    P1, l1 = pot.sinkhorn(a, b, M, 0.05, method=method, log=True)
    P2, l2 = ot.sinkhorn(a, b, M, 0.05, method=method, log=True)
    assert isinstance(P2, np.ndarray) and P2.dtype == np.float64
    assert sorted(l1) == sorted(l2)
    assert l1["niter"] == l2["niter"] and len(l1["err"]) == len(l2["err"])
    assert_close(P2, P1, rtol=1e-9, atol=1e-14, name="plan")
    assert_close(l2["u"], l1["u"], rtol=1e-8, atol=0, name="u")
    assert_close(l2["err"], l1["err"], rtol=1e-6, atol=1e-15, name="err")


def test_sinkhorn2_and_multiple_histograms(rng):
    a, b, M = _problem(rng)
    assert ot.sinkhorn2(a, b, M, 0.1) == pytest.approx(pot.sinkhorn2(a, b, M, 0.1), rel=1e-10)
    B2 = np.stack([b, b[::-1]], 1)
    assert_close(ot.sinkhorn(a, B2, M, 0.1), pot.sinkhorn(a, B2, M, 0.1), rtol=1e-9, atol=0)
    assert_close(ot.bregman.sinkhorn_log(a, b, M, 0.1), pot.bregman.sinkhorn_log(a, b, M, 0.1), rtol=1e-9, atol=1e-15)
    assert_close(ot.bregman.sinkhorn_knopp(a, b, M, 0.1), pot.bregman.sinkhorn_knopp(a, b, M, 0.1), rtol=1e-9,
                 atol=1e-15)


def test_uniform_defaults_and_lists():
    M = [[0.0, 1.0], [2.0, 0.5]]
    assert_close(ot.sinkhorn([], [], M, 1.0), pot.sinkhorn([], [], np.array(M), 1.0), rtol=1e-9, atol=1e-15)


def test_torch_in_torch_out_same_dtype(rng):
    a, b, M = _problem(rng)
    for dt in (torch.float32, torch.float64):
        ta, tb, tM = (torch.tensor(x, dtype=dt) for x in (a, b, M))
        P = ot.sinkhorn(ta, tb, tM, 0.1, stopThr=1e-9 if dt == torch.float64 else 1e-6)
        assert isinstance(P, torch.Tensor) and P.dtype == dt
        assert_close(P, pot.sinkhorn(a, b, M, 0.1), rtol=1e-3 if dt == torch.float32 else 1e-9, atol=1e-7)
        loss = ot.sinkhorn2(ta, tb, tM, 0.1)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0


@pytest.mark.parametrize("mass", [None, 0.3, 0.8])
def test_partial_matches_pot(rng, mass):
    a, b, M = _problem(rng)
    b = b * 1.3
    P1, l1 = pot.partial.entropic_partial_wasserstein(a, b, M, 0.1, m=mass, log=True)
    P2, l2 = ot.partial.entropic_partial_wasserstein(a, b, M, 0.1, m=mass, log=True)
    assert sorted(l2) == sorted(list(l1) + ["stopped_at_floor"])
    assert_close(P2, P1, rtol=1e-8, atol=1e-14, name="plan")
    assert l2["partial_w_dist"] == pytest.approx(l1["partial_w_dist"], rel=1e-9)


def test_partial_stable_where_pot_is_nan(rng):
    a, b, M = _problem(rng, scale=10.0)
    with np.errstate(all="ignore"):  # POT prints "numerical errors" and returns NaN
        P_pot = pot.partial.entropic_partial_wasserstein(a, b, M, 0.01, m=0.5)
    assert not np.isfinite(P_pot).all()  # POT's exp-domain solver breaks down
    with pytest.warns(UserWarning, match="did not converge"):  # 1000 iterations are not enough here (nor for POT)
        P = ot.partial.entropic_partial_wasserstein(a, b, M, 0.01, m=0.5)
    assert np.isfinite(P).all() and P.sum() == pytest.approx(0.5, rel=1e-9)
    P_log = pot.partial.entropic_partial_wasserstein(a, b, M, 0.01, m=0.5, method="sinkhorn_log")
    assert_close(P, P_log, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg_m", [1.0, (0.5, 3.0)])
def test_unbalanced_matches_pot(rng, reg_type, reg_m):
    a, b, M = _problem(rng)
    with pytest.warns(UserWarning) if reg_type == "entropy" else _nullctx():
        P1, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, reg_type=reg_type, log=True)
    P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, reg_type=reg_type, log=True)
    assert sorted(l1) == sorted(l2) and len(l1["err"]) == len(l2["err"])
    assert_close(P2, P1, rtol=1e-8, atol=1e-14, name="plan")
    for k in ("logu", "logv"):
        assert_close(l2[k], l1[k], rtol=1e-8, atol=1e-10, name=k)
    for k in ("cost", "total_cost"):
        assert l2[k] == pytest.approx(l1[k], rel=1e-8, abs=1e-12)
    l_lin = ot.unbalanced.sinkhorn_unbalanced2(a, b, M, 0.1, reg_m, reg_type=reg_type)
    assert l_lin == pytest.approx(l1["cost"], rel=1e-8)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_solve_batch_matches_pot(rng):
    Ms = np.stack([_problem(rng, 12, 17)[2] for _ in range(5)])
    for reg_type in ("entropy", "kl"):
        r1 = pot.batch.solve_batch(Ms, 0.1, max_iter=5000, tol=1e-12, reg_type=reg_type)
        r2 = ot.batch.solve_batch(Ms, 0.1, max_iter=5000, tol=1e-12, reg_type=reg_type)
        assert_close(r2.plan, r1.plan, rtol=1e-7, atol=1e-13, name="plan")
        assert_close(r2.value, r1.value, rtol=1e-7, atol=1e-12, name="value")
        assert_close(r2.value_linear, r1.value_linear, rtol=1e-7, atol=1e-12, name="value_linear")


def test_dist_matches_pot(rng):
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3))
    for metric in ("sqeuclidean", "euclidean", "cosine"):
        assert_close(ot.dist(x, y, metric=metric), pot.dist(x, y, metric=metric), rtol=1e-9, atol=1e-12, name=metric)


@pytest.mark.parametrize("grad", ["envelope", "detach", "autodiff", "last_step"])
def test_solve_batch_grad_modes(rng, grad):
    Ms = torch.tensor(np.stack([_problem(rng, 6, 7)[2] for _ in range(3)]), requires_grad=True)
    res = ot.batch.solve_batch(Ms, 0.5, max_iter=200, tol=1e-9, grad=grad)
    ref = pot.batch.solve_batch(Ms.detach().numpy(), 0.5, max_iter=200, tol=1e-9)
    assert_close(res.plan, ref.plan, rtol=1e-5, atol=1e-9)
    if grad == "detach":
        assert not res.value.requires_grad
        return
    res.value.sum().backward()
    assert torch.isfinite(Ms.grad).all()
    if grad == "envelope":  # dV/dM = P
        assert_close(Ms.grad, res.plan, rtol=1e-9, atol=1e-12)
    if grad in ("autodiff", "last_step"):
        assert res.plan.requires_grad


def test_warmstart_and_verbose_like_pot(rng, capsys):
    a, b, M = _problem(rng)
    _, lg = pot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", log=True, stopThr=1e-6)
    P1 = pot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", warmstart=(lg["log_u"], lg["log_v"]))
    P2, l2 = ot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", warmstart=(lg["log_u"], lg["log_v"]), log=True)
    assert_close(P2, P1, rtol=1e-9, atol=1e-15)
    capsys.readouterr()
    ot.sinkhorn(a, b, M, 0.1, verbose=True)
    out = capsys.readouterr().out
    assert "It." in out and "Err" in out and len(out.splitlines()) >= 3


def test_unbalanced2_total_cost_torch(rng):
    a, b, M = _problem(rng)
    _, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, log=True)
    tot = ot.unbalanced.sinkhorn_unbalanced2(torch.tensor(a), torch.tensor(b), torch.tensor(M), 0.1, 1.0,
                                             returnCost="total")
    assert isinstance(tot, torch.Tensor) and float(tot) == pytest.approx(l1["total_cost"], rel=1e-8)


def test_partial_logscale_matches_pot_log_domain(rng):
    """method='sinkhorn_log' / entropic_partial_wasserstein_logscale: POT's log-domain solver's plan,
    distance and stop quantity, check for check (both measure ||log P - log P_prev||_F)."""
    a, b, M = _problem(rng, scale=5.0)
    b = b * 1.3
    for reg in (0.1, 0.01):
        P1, l1 = pot.partial.entropic_partial_wasserstein_logscale(a, b, M, reg, m=0.6, log=True)
        P2, l2 = ot.partial.entropic_partial_wasserstein_logscale(a, b, M, reg, m=0.6, log=True)
        P3, l3 = ot.partial.entropic_partial_wasserstein(a, b, M, reg, m=0.6, method="sinkhorn_log", log=True)
        assert_close(P2, P1, rtol=1e-8, atol=1e-14, name=f"plan {reg}")
        assert_close(P3, P2, rtol=0, atol=0, name="same solver")
        assert l2["partial_w_dist"] == pytest.approx(l1["partial_w_dist"], rel=1e-9)
        k = min(len(l1["err"]), len(l2["err"]))
        big = [i for i in range(k) if l1["err"][i] > 1e-9]  # above the rounding level
        assert_close(np.array(l2["err"])[big], np.array(l1["err"])[big], rtol=1e-6, atol=1e-12, name=f"err {reg}")
        assert len(l2["err"]) <= len(l1["err"]) + 1  # ours also stops at the rounding floor


def test_partial_distance_gradients(rng):
    """log['partial_w_dist'] with torch inputs that require grad: envelope gradients of the
    regularised objective (dM = P, da = reg log_u, db = reg log_v) by default, POT's unrolled
    gradient of <P, M> with grad='autodiff' (checked against POT's torch autodiff)."""
    a, b, M = _problem(rng, n=7, m=9)
    b = b * 1.5

    def leaves():
        return [torch.tensor(x, requires_grad=True) for x in (a, b, M)]

    ta, tb, tM = leaves()
    P, lg = ot.partial.entropic_partial_wasserstein(ta, tb, tM, 0.2, m=0.5, log=True, stopThr=1e-14)
    lg["partial_w_dist"].backward()
    assert_close(tM.grad, P.detach(), rtol=1e-12, atol=1e-15, name="dM = P")
    assert ta.grad is not None and tb.grad is not None and bool((ta.grad <= 1e-12).all())  # multipliers <= 0
    # the envelope gradient is the regularised objective's: check dM against finite differences of it
    def objective(Mx):
        with torch.no_grad():
            Px = ot.partial.entropic_partial_wasserstein(torch.tensor(a), torch.tensor(b), Mx, 0.2, m=0.5,
                                                         stopThr=1e-14)
            return float((Px * Mx).sum() + 0.2 * (Px * torch.log(Px)).sum())
    E = torch.zeros_like(tM)
    E[2, 3] = 1e-6
    fd = (objective(tM.detach() + E) - objective(tM.detach() - E)) / 2e-6
    assert fd == pytest.approx(float(tM.grad[2, 3]), rel=1e-5)
    ta, tb, tM = leaves()
    _, lg = ot.partial.entropic_partial_wasserstein(ta, tb, tM, 0.2, m=0.5, log=True, grad="autodiff", numItermax=200)
    lg["partial_w_dist"].backward()
    pa, pb, pM = leaves()
    _, lp = pot.partial.entropic_partial_wasserstein(pa, pb, pM, 0.2, m=0.5, log=True, numItermax=200)
    lp["partial_w_dist"].backward()
    for name, x, y in (("M", tM, pM), ("a", ta, pa), ("b", tb, pb)):
        assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-9, name=f"autodiff d{name}")


def test_partial_batch_extension_matches_single_problems(rng):
    """M (B, n, m) with a (B, n), b (B, m), m (B,): each problem as solved alone; zero weights pad."""
    probs = [_problem(rng, n=11, m=13) for _ in range(3)]
    A = np.stack([p[0] for p in probs])
    Bw = np.stack([p[1] * 1.2 for p in probs])
    Ms = np.stack([p[2] for p in probs])
    A[1, -2:] = 0  # padding
    A[1] /= A[1].sum()
    masses = np.array([0.3, 0.5, 0.9])
    P, lg = ot.partial.entropic_partial_wasserstein(A, Bw, Ms, 0.1, m=masses, log=True)
    assert P.shape == (3, 11, 13) and lg["partial_w_dist"].shape == (3,) and len(lg["err"]) == 3
    assert np.all(P[1, -2:] == 0)
    for k in range(3):
        Pk, lk = ot.partial.entropic_partial_wasserstein(A[k], Bw[k], Ms[k], 0.1, m=masses[k], log=True)
        assert_close(P[k], Pk, rtol=1e-9, atol=1e-15, name=f"problem {k}")
        assert lg["partial_w_dist"][k] == pytest.approx(lk["partial_w_dist"], rel=1e-9)
        P_pot = pot.partial.entropic_partial_wasserstein(A[k][A[k] > 0], Bw[k], Ms[k][A[k] > 0], 0.1, m=masses[k])
        assert_close(P[k][A[k] > 0], P_pot, rtol=1e-6, atol=1e-12, name=f"POT {k}")
    with pytest.raises(ValueError, match="m must be a number or have shape"):
        ot.partial.entropic_partial_wasserstein(A, Bw, Ms, 0.1, m=np.ones(2) * 0.3)
    with pytest.raises(ValueError, match="a must have shape"):
        ot.partial.entropic_partial_wasserstein(A[0], Bw, Ms, 0.1)
