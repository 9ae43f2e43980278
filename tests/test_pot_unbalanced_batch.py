"""grounded_fast.ot.unbalanced and grounded_fast.ot.batch.solve_batch against POT 0.9.7.post1:
reg_m forms, several histograms, reference measure c, every method, warnings; solve_batch's
potentials, log and gradient modes, and its unbalanced / partial extension."""
import math
import warnings

import numpy as np
import ot as pot
import pytest
import torch

import grounded_fast.ot as ot
from grounded_fast.ops import UNBALANCED, entropic_ot

from conftest import assert_close

TIGHT = dict(stopThr=1e-13, numItermax=100000)


def _problem(seed=0, n=5, m=7):
    rng = np.random.default_rng(seed)
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return a / a.sum(), b / b.sum(), M / M.max()


def _batch(seed=0, B=3, n=5, m=6, mass_b=1.0):
    rng = np.random.default_rng(seed)
    Ms = np.stack([pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2))) for _ in range(B)])
    A, Bw = rng.random((B, n)) + 0.1, rng.random((B, m)) + 0.1
    return Ms / Ms.max(), A / A.sum(1, keepdims=True), mass_b * Bw / Bw.sum(1, keepdims=True)


def _pot_quiet(f, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kw)


def _assert_same_log(l2, l1, rtol=1e-8, err_len=True):
    assert sorted(l2) == sorted(l1)
    if err_len:
        assert len(l2["err"]) == len(l1["err"])
    for k in ("logu", "logv"):
        assert_close(l2[k], l1[k], rtol=rtol, atol=1e-10, name=k)
    for k in ("cost", "total_cost"):
        if k in l1:
            assert float(l2[k]) == pytest.approx(float(l1[k]), rel=rtol, abs=1e-13), k


def _gen_kl(x, y):
    return np.sum(x * np.log(x / y) - x + y)


# ------------------------------------------------------------------------------ ot.unbalanced
REG_M_FORMS = [[2.0], np.array([0.7]), torch.tensor([0.7], dtype=torch.float64), np.array([0.5, 3.0]),
               torch.tensor([0.5, 3.0], dtype=torch.float64), (1.0, math.inf), (math.inf, 0.3), (0.0, 1.0), 0.0]


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
def test_reg_m_forms_match_pot(reg_type):
    """1-element and 2-element reg_m of every container, inf on one side, 0 (no penalty)."""
    a, b, M = _problem()
    for reg_m in REG_M_FORMS:
        pot_reg_m = reg_m.numpy() if isinstance(reg_m, torch.Tensor) else reg_m  # POT mixes no torch into numpy
        P1, l1 = _pot_quiet(pot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.1, pot_reg_m, reg_type=reg_type, log=True,
                            **TIGHT)
        P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, reg_type=reg_type, log=True, **TIGHT)
        assert_close(P2, P1, rtol=1e-9, atol=1e-15, name=f"plan, reg_m={reg_m}")
        _assert_same_log(l2, l1)


def test_invalid_reg_m_raises():
    a, b, M = _problem()
    for bad, exc in [(float("nan"), ValueError), (-1.0, ValueError), ((1.0, -0.5), ValueError),
                     ((1.0, 2.0, 3.0), ValueError), (np.ones((2, 1)), ValueError), ((), ValueError),
                     (torch.tensor([1.0, 2.0], requires_grad=True), NotImplementedError), ("1.0", TypeError)]:
        with pytest.raises(exc, match="reg_m"):
            ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, bad)


@pytest.mark.parametrize("reg_m", [1.0, (0.5, 3.0), (math.inf, 0.3)])
def test_stabilized_matches_pot_with_its_err_cadence(reg_m):
    a, b, M = _problem()
    P1, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, method="sinkhorn_stabilized", log=True, **TIGHT)
    P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, method="sinkhorn_stabilized", tau=1e3, log=True,
                                               **TIGHT)
    assert_close(P2, P1, rtol=1e-9, atol=1e-14, name="plan")
    _assert_same_log(l2, l1)  # 'err' every 10th iteration, as POT's stabilised solver
    P3 = ot.unbalanced.sinkhorn_stabilized_unbalanced(a, b, M, 0.1, reg_m, "kl", None, None, 1e3, **TIGHT)
    assert_close(P3, P1, rtol=1e-9, atol=1e-14, name="sinkhorn_stabilized_unbalanced")


def test_stabilized_warns_when_not_converged():
    a, b, M = _problem()
    with pytest.warns(UserWarning, match="Stabilized Unbalanced Sinkhorn did not converge"):
        pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, method="sinkhorn_stabilized", numItermax=3)
    with pytest.warns(UserWarning, match="Stabilized Unbalanced Sinkhorn did not converge"):
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, method="sinkhorn_stabilized", numItermax=3)
    with warnings.catch_warnings():  # POT's Sinkhorn-Knopp does not warn on the iteration limit
        warnings.simplefilter("error")
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, numItermax=3)


def test_reg_scaling_warns_and_runs_sinkhorn_knopp():
    a, b, M = _problem()
    with pytest.warns(UserWarning, match="Method not implemented yet"):
        P1, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, (0.5, 2.0), method="sinkhorn_reg_scaling",
                                                    log=True, **TIGHT)
    with pytest.warns(UserWarning, match="Method not implemented yet"):
        P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, (0.5, 2.0), method="sinkhorn_reg_scaling",
                                                   log=True, **TIGHT)
    assert_close(P2, P1, rtol=1e-9, atol=1e-15, name="plan")
    _assert_same_log(l2, l1)
    P3 = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, M, 0.1, (0.5, 2.0), **TIGHT)
    assert_close(P3, P1, rtol=1e-9, atol=1e-15, name="sinkhorn_knopp_unbalanced")


def test_translation_invariant_fixed_point():
    """Same minimiser as POT's translation-invariant Sinkhorn for reg_m1 = reg_m2 and one side inf;
    for reg_m1 != reg_m2 POT's iteration stops off the minimiser (a plan whose objective is higher
    and which scaling improves), and this returns POT's Sinkhorn-Knopp minimiser."""
    a, b, M = _problem()
    kw = dict(method="sinkhorn_translation_invariant", log=True, **TIGHT)
    for reg_m in (1.0, (0.5, 0.5), (1.0, math.inf), (math.inf, 0.3)):
        P1, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, **kw)
        P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, **kw)
        assert_close(P2, P1, rtol=1e-8, atol=1e-13, name=f"plan {reg_m}")
        _assert_same_log(l2, l1, rtol=1e-7, err_len=False)
    reg, (r1, r2) = 0.1, (0.5, 3.0)

    def objective(P):
        return np.sum(P * M) + reg * _gen_kl(P, a[:, None] * b) + r1 * _gen_kl(P.sum(1), a) + r2 * _gen_kl(P.sum(0), b)
    P_ti = pot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, (r1, r2), method="sinkhorn_translation_invariant", **TIGHT)
    P_kn = pot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, (r1, r2), **TIGHT)
    P = ot.unbalanced.sinkhorn_unbalanced_translation_invariant(a, b, M, reg, (r1, r2), **TIGHT)
    assert_close(P, P_kn, rtol=1e-9, atol=1e-15, name="plan vs POT's Sinkhorn-Knopp")
    assert objective(P_ti) > objective(P) + 1e-6  # POT's TI plan is not the minimiser
    assert objective(P_ti * 0.999) < objective(P_ti)  # ... scaling it down improves it
    with pytest.raises(ZeroDivisionError):
        pot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, (0.0, 1.0), method="sinkhorn_translation_invariant")
    with pytest.raises(ValueError, match="translation_invariant"):
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, (0.0, 1.0), method="sinkhorn_translation_invariant")


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_stabilized", "sinkhorn_translation_invariant",
                                    "sinkhorn_reg_scaling"])
def test_several_histograms_match_pot(method):
    """b (m, k): k linear costs out of both functions, log {'err', 'logu' (n, k), 'logv' (m, k)};
    POT uses the reference 1 whatever reg_type, and so do we."""
    rng = np.random.default_rng(3)
    a, _, M = _problem()
    Bh = rng.random((M.shape[1], 3)) + 0.1
    Bh /= Bh.sum(0)
    r1, l1 = _pot_quiet(pot.unbalanced.sinkhorn_unbalanced, a, Bh, M, 0.1, 1.0, method=method, log=True, **TIGHT)
    r2, l2 = _pot_quiet(ot.unbalanced.sinkhorn_unbalanced, a, Bh, M, 0.1, 1.0, method=method, log=True, **TIGHT)
    assert isinstance(r2, np.ndarray) and r2.shape == (3,)
    assert_close(r2, r1, rtol=1e-9, atol=1e-14, name="losses")
    assert sorted(l2) == sorted(l1) == ["err", "logu", "logv"]
    for k in ("logu", "logv"):
        assert_close(l2[k], l1[k], rtol=1e-8, atol=1e-10, name=k)
    if method != "sinkhorn_translation_invariant":
        assert len(l2["err"]) == len(l1["err"])
    with pytest.warns(UserWarning) as record:
        r3 = ot.unbalanced.sinkhorn_unbalanced2(a, Bh, M, 0.1, 1.0, method=method, returnCost="total", **TIGHT)
    assert any("Reg_type not implemented yet" in str(w.message) for w in record)
    assert_close(r3, r1, rtol=1e-9, atol=1e-14, name="sinkhorn_unbalanced2")
    # each column is the single problem with reg_type='entropy'
    for i in range(3):
        P = ot.unbalanced.sinkhorn_unbalanced(a, Bh[:, i], M, 0.1, 1.0, reg_type="entropy", **TIGHT)
        assert float(np.sum(P * M)) == pytest.approx(r2[i], rel=1e-9)


def test_several_histograms_torch_warmstart_and_gradient():
    rng = np.random.default_rng(4)
    a, _, M = _problem()
    Bh = rng.random((M.shape[1], 2)) + 0.1
    ta, tB = torch.tensor(a), torch.tensor(Bh)
    tM = torch.tensor(M, requires_grad=True)
    loss, lg = ot.unbalanced.sinkhorn_unbalanced(ta, tB, tM, 0.1, 1.0, reg_type="entropy", log=True, **TIGHT)
    assert isinstance(loss, torch.Tensor) and loss.shape == (2,) and lg["logu"].shape == (5, 2)
    loss.sum().backward()
    plans = [ot.unbalanced.sinkhorn_unbalanced(a, Bh[:, i], M, 0.1, 1.0, reg_type="entropy", **TIGHT)
             for i in range(2)]
    assert_close(tM.grad, plans[0] + plans[1], rtol=1e-9, atol=1e-14, name="dM = sum of plans")
    ws = (lg["logu"].detach(), lg["logv"].detach())  # (n, k), (m, k) warm start: converged at once
    loss2, lg2 = ot.unbalanced.sinkhorn_unbalanced(ta, tB, tM.detach(), 0.1, 1.0, reg_type="entropy",
                                                   warmstart=ws, log=True, stopThr=1e-10)
    assert len(lg2["err"]) <= 2
    assert_close(loss2, loss.detach(), rtol=1e-9, atol=1e-14, name="warm-started losses")


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_stabilized"])
def test_reference_measure_c_matches_pot(method):
    a, b, M = _problem()
    rng = np.random.default_rng(5)
    c = rng.random(M.shape) + 0.05
    for reg_m in (1.0, (0.5, math.inf)):
        P1, l1 = pot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, reg_m, method=method, c=c, log=True, **TIGHT)
        P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, reg_m, method=method, c=c, log=True, **TIGHT)
        assert_close(P2, P1, rtol=1e-9, atol=1e-14, name="plan")
        _assert_same_log(l2, l1)
    # c = a b^T is the default reference
    P3 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, 1.0, method=method, c=np.outer(a, b), **TIGHT)
    P4 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, 1.0, method=method, **TIGHT)
    assert_close(P3, P4, rtol=1e-9, atol=1e-15, name="c = a b^T")
    with pytest.warns(UserWarning, match="overwritten by the one matrix"):
        P5 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, 1.0, method=method, c=c, reg_type="entropy", **TIGHT)
    P6 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.05, 1.0, method=method, reg_type="entropy", **TIGHT)
    assert_close(P5, P6, rtol=0, atol=0, name="entropy ignores c")


def test_reference_measure_with_zeros():
    """c = 0 entries give exact zero plan entries, as POT's; a zero row of c a zero plan row."""
    a, b, M = _problem()
    rng = np.random.default_rng(6)
    c = rng.random(M.shape)
    c[c < 0.3] = 0
    assert (c == 0).any() and (c > 0).any(1).all() and (c > 0).any(0).all()
    for reg in (0.1, 0.01):
        P1, l1 = _pot_quiet(pot.unbalanced.sinkhorn_unbalanced, a, b, M, reg, 1.0, c=c, log=True, **TIGHT)
        P2, l2 = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, 1.0, c=c, log=True, **TIGHT)
        assert_close(P2, P1, rtol=1e-9, atol=1e-15, name="plan")
        assert np.all(P2[c == 0] == 0)
        assert not np.isfinite(l1["total_cost"])  # POT: 0 log(0 / 0) = NaN
        assert np.isfinite(l2["total_cost"]) and l2["cost"] == pytest.approx(l1["cost"], rel=1e-9)
    c[2] = 0
    P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, c=c, **TIGHT)
    assert np.all(P[2] == 0) and np.isfinite(P).all()
    # the rest is the problem without row 2 (whose weight only enters its own KL term)
    keep = np.arange(5) != 2
    Pk = ot.unbalanced.sinkhorn_unbalanced(a[keep], b, M[keep], 0.1, 1.0, c=c[keep], **TIGHT)
    assert_close(P[keep], Pk, rtol=1e-9, atol=1e-15, name="other rows")
    for bad in (-c, np.full_like(c, np.nan), c[:, :3]):
        with pytest.raises(ValueError, match="c"):
            ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, c=bad)
    with pytest.raises(TypeError, match="mixed"):
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, c=torch.tensor(c))


@pytest.mark.parametrize("returnCost", ["linear", "total"])
def test_unbalanced2_gradients_with_c_match_pot(returnCost):
    """grad='autodiff' is POT's unrolled gradient; the default envelope gradient is dM = P."""
    a, b, M = _problem()
    c = np.random.default_rng(7).random(M.shape) + 0.1
    ta, tb, tc = torch.tensor(a), torch.tensor(b), torch.tensor(c)
    grads = []
    for lib, kw in ((pot, {}), (ot, {"grad": "autodiff"}), (ot, {})):
        tM = torch.tensor(M, requires_grad=True)
        loss = lib.unbalanced.sinkhorn_unbalanced2(ta, tb, tM, 0.1, (1.0, 2.0), c=tc, returnCost=returnCost, **kw,
                                                   **TIGHT)
        loss.backward()
        grads.append((float(loss.detach()), tM.grad))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-10) and grads[2][0] == pytest.approx(grads[0][0], rel=1e-10)
    assert_close(grads[1][1], grads[0][1], rtol=1e-7, atol=1e-12, name="autodiff dM")
    P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, (1.0, 2.0), c=c, **TIGHT)
    assert_close(grads[2][1], P, rtol=1e-9, atol=1e-15, name="envelope dM")


def test_unbalanced_keyword_arguments():
    a, b, M = _problem()
    ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, tau=1e4)  # POT's stabilisation threshold: accepted
    with pytest.raises(TypeError, match="unexpected keyword"):
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, taux=1e4)
    with pytest.raises(ValueError, match="Unknown method"):
        ot.unbalanced.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, method="sinkhorn_log")
    with pytest.raises(ValueError, match="returnCost"):
        ot.unbalanced.sinkhorn_unbalanced2(a, b, M, 0.1, 1.0, returnCost="quadratic")


# ------------------------------------------------------------------- float32 unbalanced stop tests
def test_cpu_float32_unbalanced_no_false_convergence():
    """POT's u = exp(lu - s_a) reaches e^300 here: the CPU kernel's scaling domain read its stop
    quantity as 0 (inf - inf) and stopped at iteration 11 with a plan 0.09 off."""
    a, b, M = _problem()
    M = np.where(np.random.default_rng(0).random(M.shape) < 0.3, 5.0, M)
    args = [torch.tensor(x, dtype=torch.float32) for x in (M, a, b)]
    kw = dict(reg=1e-3, problem=UNBALANCED, reg_m=(1.0, 1.0), check_every=1, tol=1e-6, max_iter=100000)
    ref = entropic_ot(*(t.double() for t in args), domain="log", **{**kw, "tol": 1e-9}).plan
    sol = entropic_ot(*args, backend="cpu", **kw)
    assert_close(sol.plan, ref, rtol=1e-3, atol=1e-5, name="float32 plan")


def test_reference_float32_unbalanced_stops():
    """The same overflow made the torch reference's stop quantity NaN, so it never stopped."""
    a, b, M = _problem()
    M = np.where(np.random.default_rng(0).random(M.shape) < 0.3, 5.0, M)  # float64 stops after 1107 iterations
    args = [torch.tensor(x, dtype=torch.float32) for x in (M, a, b)]
    sol = entropic_ot(*args, reg=3e-3, problem=UNBALANCED, reg_m=(1.0, 1.0), kl_ref=False, check_every=1,
                      tol=1e-5, max_iter=3000, backend="torch", warn=False)
    assert int(sol.status) == 0 and torch.isfinite(sol.err_history[sol.err_history >= 0]).all()


# ------------------------------------------------------------------------------ ot.batch.solve_batch
@pytest.mark.parametrize("method", ["auto", "log_sinkhorn", "sinkhorn"])
def test_solve_batch_potentials_and_log_match_pot(method):
    Ms, A, Bw = _batch()
    for reg_type in ("entropy", "kl"):
        r1 = pot.batch.solve_batch(Ms, 0.1, A, Bw, max_iter=5000, tol=1e-12, method=method, reg_type=reg_type)
        r2 = ot.batch.solve_batch(Ms, 0.1, A, Bw, max_iter=5000, tol=1e-12, method=method, reg_type=reg_type)
        for k in ("plan", "value", "value_linear"):
            assert_close(getattr(r2, k), getattr(r1, k), rtol=1e-9, atol=1e-12, name=k)
        for p2, p1 in zip(r2.potentials, r1.potentials):  # same gauge: POT's first u, then the same iterates
            assert_close(p2, p1, rtol=1e-8, atol=1e-10, name="potentials")
        assert_close(r2.potential_a, r1.potential_a, rtol=1e-8, atol=1e-10, name="potential_a")
        assert sorted(r2.log) == sorted(r1.log) == ["n_iter"]
        assert isinstance(r2.log["n_iter"], int) and abs(r2.log["n_iter"] - r1.log["n_iter"]) <= 10


def _torch_batch(grad_ab=True):
    Ms, A, Bw = _batch(1)
    return (torch.tensor(Ms, requires_grad=True), torch.tensor(A, requires_grad=grad_ab),
            torch.tensor(Bw, requires_grad=grad_ab))


def _grads(lib, out, grad, reg_type="entropy", **kw):
    """Gradients of a weighted sum of ``out`` w.r.t. M, a, b (a, b centred: POT's a and b gradients
    are defined up to a constant per problem, the sum of a being that of b)."""
    M, a, b = _torch_batch()
    res = lib.batch.solve_batch(M, 0.2, a, b, max_iter=3000, tol=1e-13, reg_type=reg_type, grad=grad, **kw)
    v = getattr(res, out)
    (v * torch.tensor([1.0, 2.0, 3.0], dtype=v.dtype)).sum().backward()
    centred = [None if t.grad is None else t.grad - t.grad.mean(1, keepdim=True) for t in (a, b)]
    return res, [M.grad] + centred


@pytest.mark.parametrize("grad", ["autodiff", "last_step"])
@pytest.mark.parametrize("reg_type", ["entropy", "kl"])
def test_solve_batch_unrolled_gradients_match_pot(grad, reg_type):
    for out in ("value", "value_linear"):
        r1, g1 = _grads(pot, out, grad, reg_type)
        r2, g2 = _grads(ot, out, grad, reg_type)
        assert r2.plan.requires_grad and r2.value.requires_grad
        for x, y, name in zip(g2, g1, ("dM", "da", "db")):
            assert_close(x, y, rtol=1e-7, atol=1e-10, name=f"{grad} {out} {name}")
        for p2, p1 in zip(r2.potentials, r1.potentials):
            assert_close(p2, p1, rtol=1e-8, atol=1e-10, name="potentials")


def test_solve_batch_envelope_gradients():
    """value_linear and value carry dM = P (POT's); value's a and b gradients are the exact
    (autodiff at convergence) ones, where POT's envelope has none."""
    for reg_type in ("entropy", "kl"):
        _, g_pot = _grads(pot, "value_linear", "envelope", reg_type)
        r, g = _grads(ot, "value_linear", "envelope", reg_type)
        assert_close(g[0], g_pot[0], rtol=1e-9, atol=1e-13, name="value_linear dM")
        assert g[1] is None and g[2] is None
        _, g_pot = _grads(pot, "value", "envelope", reg_type)
        _, g_exact = _grads(pot, "value", "autodiff", reg_type)
        _, g = _grads(ot, "value", "envelope", reg_type)
        assert_close(g[0], g_pot[0], rtol=1e-9, atol=1e-13, name="value dM")
        for x, y, name in zip(g, g_exact, ("dM", "da", "db")):
            assert_close(x, y, rtol=1e-7, atol=1e-10, name=f"value {name} vs autodiff")
    M, a, b = _torch_batch()
    r = ot.batch.solve_batch(M, 0.2, a, b, grad="detach")
    assert not (r.value.requires_grad or r.value_linear.requires_grad or r.plan.requires_grad)


def test_solve_batch_unbalanced_extension():
    """reg_m: per problem POT's sinkhorn_unbalanced; value the documented objective; padding."""
    Ms, A, Bw = _batch(2, mass_b=1.4)
    for reg_type in ("entropy", "kl"):
        for reg_m in (1.0, (0.5, 2.0), (math.inf, 0.7), (0.0, 1.0)):
            r = ot.batch.solve_batch(Ms, 0.1, A, Bw, reg_m=reg_m, reg_type=reg_type, tol=1e-13, max_iter=100000)
            r1, r2 = (reg_m, reg_m) if np.isscalar(reg_m) else reg_m
            for i in range(len(Ms)):
                P, lg = _pot_quiet(pot.unbalanced.sinkhorn_unbalanced, A[i], Bw[i], Ms[i], 0.1, reg_m,
                                   reg_type=reg_type, log=True, **TIGHT)
                omega = (_gen_kl(P, np.outer(A[i], Bw[i])) if reg_type == "kl" else np.sum(P * np.log(P)) - P.sum())
                value = (np.sum(P * Ms[i]) + 0.1 * omega + (r1 * _gen_kl(P.sum(1), A[i]) if np.isfinite(r1) else 0)
                         + (r2 * _gen_kl(P.sum(0), Bw[i]) if np.isfinite(r2) else 0))
                assert_close(r.plan[i], P, rtol=1e-9, atol=1e-14, name=f"plan {reg_type} {reg_m}")
                assert r.value[i] == pytest.approx(value, rel=1e-9)
                assert r.value_linear[i] == pytest.approx(lg["cost"], rel=1e-9)
                u, v = r.potentials[0][i], r.potentials[1][i]
                assert_close(np.exp(u[:, None] + v[None] - Ms[i] / 0.1), P, rtol=1e-9, atol=1e-15, name="potentials")
    # zero weights are padding: the padded problem's solution is the small one's, zeros around it
    A2, B2 = A.copy(), Bw.copy()
    A2[0, 3:], B2[0, 4:] = 0, 0
    r = ot.batch.solve_batch(Ms, 0.1, A2, B2, reg_m=1.0, reg_type="entropy", tol=1e-13, max_iter=100000)
    P = _pot_quiet(pot.unbalanced.sinkhorn_unbalanced, A2[0, :3], B2[0, :4], Ms[0, :3, :4], 0.1, 1.0,
                   reg_type="entropy", **TIGHT)
    assert_close(r.plan[0, :3, :4], P, rtol=1e-9, atol=1e-15, name="padded plan")
    assert np.all(r.plan[0, 3:] == 0) and np.all(r.plan[0, :, 4:] == 0)
    r_small = ot.batch.solve_batch(Ms[:1, :3, :4], 0.1, A2[:1, :3], B2[:1, :4], reg_m=1.0, tol=1e-13, max_iter=100000)
    assert r.value[0] == pytest.approx(r_small.value[0], rel=1e-9)


def test_solve_batch_partial_extension():
    Ms, A, Bw = _batch(3, mass_b=1.3)
    for reg_type in ("entropy", "kl"):
        for m in (0.5, np.array([0.3, 0.6, 0.9]), torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)):
            r = ot.batch.solve_batch(Ms, 0.1, A, Bw, m=m, reg_type=reg_type, tol=1e-14, max_iter=100000)
            for i in range(len(Ms)):
                mi = float(m) if np.isscalar(m) else float(m[i])
                shift = 0.1 * np.log(np.outer(A[i], Bw[i])) if reg_type == "kl" else 0.0
                P = pot.partial.entropic_partial_wasserstein(A[i], Bw[i], Ms[i] - shift, 0.1, m=mi, numItermax=3000)
                ref = np.outer(A[i], Bw[i]) if reg_type == "kl" else 1.0
                assert_close(r.plan[i], P, rtol=1e-8, atol=1e-14, name=f"partial plan {reg_type}")
                assert r.plan[i].sum() == pytest.approx(mi, rel=1e-10)
                assert r.value[i] == pytest.approx(np.sum(P * Ms[i]) + 0.1 * np.sum(P * np.log(P / ref)), rel=1e-9)
                assert r.value_linear[i] == pytest.approx(np.sum(P * Ms[i]), rel=1e-9)
                u, v = r.potentials[0][i], r.potentials[1][i]
                assert_close(np.exp(u[:, None] + v[None] - Ms[i] / 0.1), r.plan[i], rtol=1e-9, atol=1e-15,
                             name="potentials")
    A2 = A.copy()
    A2[1, 2:] = 0
    r = ot.batch.solve_batch(Ms, 0.1, A2, Bw, m=0.2, tol=1e-14, max_iter=100000)
    P = pot.partial.entropic_partial_wasserstein(A2[1, :2], Bw[1], Ms[1, :2], 0.1, m=0.2, numItermax=3000)
    assert_close(r.plan[1, :2], P, rtol=1e-8, atol=1e-14, name="padded partial plan")
    assert np.all(r.plan[1, 2:] == 0)


def _fd(f, x, d, h=1e-6):
    return (f(x + h * d) - f(x - h * d)) / (2 * h)


@pytest.mark.parametrize("kind", [dict(reg_m=(0.5, 2.0), reg_type="kl"), dict(reg_m=1.0, reg_type="entropy"),
                                  dict(m=0.6, reg_type="kl"), dict(m=0.6, reg_type="entropy")])
@pytest.mark.parametrize("grad", ["envelope", "autodiff"])
def test_solve_batch_extension_gradients_match_finite_differences(kind, grad):
    Ms, A, Bw = _batch(4, B=2, n=4, m=5, mass_b=1.2)
    rng = np.random.default_rng(8)
    M, a, b = (torch.tensor(x, requires_grad=True) for x in (Ms, A, Bw))
    kw = dict(tol=1e-14, max_iter=100000, **kind)
    ot.batch.solve_batch(M, 0.2, a, b, grad=grad, **kw).value.sum().backward()
    for x, g in ((Ms, M.grad), (A, a.grad), (Bw, b.grad)):
        d = rng.normal(size=x.shape)
        if "m" in kind:  # partial OT: keep the weights' masses (and so m <= min(|a|, |b|))
            d = d - d.mean(-1, keepdims=True) if x.ndim == 2 else d

        def value(xx, x=x):
            args = [xx if y is x else y for y in (Ms, A, Bw)]
            return ot.batch.solve_batch(args[0], 0.2, args[1], args[2], **kw).value.sum()
        assert float((g.numpy() * d).sum()) == pytest.approx(_fd(value, x, d), rel=1e-6, abs=1e-9)


def test_solve_batch_argument_errors():
    Ms, A, Bw = _batch()
    with pytest.raises(ValueError, match="not both"):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, reg_m=1.0, m=0.5)
    with pytest.raises(NotImplementedError, match="last_step"):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, m=0.5, grad="last_step")
    with pytest.raises(ValueError, match="m must be"):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, m=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"lower or equal than min"):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, m=1.5)
    with pytest.raises(ValueError, match="reg_m"):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, reg_m=-1.0)
    for kw, msg in ((dict(method="sinkhorn_log"), "Unknown method"), (dict(reg_type="KL"), "Unknown reg_type"),
                    (dict(grad="implicit"), "Unknown grad")):
        with pytest.raises(ValueError, match=msg):
            pot.batch.solve_batch(Ms, 0.1, **kw)
        with pytest.raises(ValueError, match=msg):
            ot.batch.solve_batch(Ms, 0.1, **kw)
    with pytest.raises(ValueError, match="strictly positive reg"):
        ot.batch.solve_batch(Ms, None, method="log_sinkhorn")


@pytest.mark.parametrize("m, err, msg", [(-0.1, ValueError, "greater than 0"), (float("nan"), ValueError, "finite"),
                                          (1.5, ValueError, "lower or equal"), ("half", TypeError, "m must be"),
                                          (torch.tensor(0.5, requires_grad=True), NotImplementedError, "gradients")])
def test_partial_and_solve_batch_check_m_alike(m, err, msg):
    """entropic_partial_wasserstein and solve_batch(m=...) take the transported mass through one check."""
    Ms, A, Bw = _batch()
    with pytest.raises(err, match=msg):
        ot.batch.solve_batch(Ms, 0.1, A, Bw, m=m)
    with pytest.raises(err, match=msg):
        ot.partial.entropic_partial_wasserstein(A, Bw, Ms, 0.1, m=m)


def test_solve_batch_first_u_in_blocks():
    """POT's first u, LSE_j(-M_ij / reg), is formed over bounded blocks of problems or rows."""
    from grounded_fast.ot.batch import _row_lse
    M = torch.rand(5, 7, 11, dtype=torch.float64)
    for chunk in (1, 5, 11, 30, 77, 78, 200, 1 << 22):
        assert_close(_row_lse(M, 0.1, chunk), torch.logsumexp(-M / 0.1, 2), rtol=1e-14, atol=0, name=str(chunk))
