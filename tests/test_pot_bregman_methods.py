"""POT 0.9.7's Sinkhorn methods (greenkhorn, stabilized, epsilon scaling), uniform defaults, several
histograms, warnings and ``ot.solve``: grounded_fast.ot against POT on the same inputs."""
import inspect
import sys
import warnings

import numpy as np
import ot as pot
import pytest
import torch

import grounded_fast.ot as ot
import grounded_fast.ot.bregman as gf_bregman
from grounded_fast.ops import OTSolution

from conftest import assert_close

METHODS = ["sinkhorn", "sinkhorn_log", "greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"]
LOSS_METHODS = ["sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"]


def _problem(rng, n=23, m=31, scale=1.0):
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    M = scale * M / M.max()
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return a / a.sum(), b / b.sum(), M


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _pair_sums(x, y):
    """alpha_i + beta_j: the dual potentials without their gauge (alpha + c, beta - c)."""
    return np.asarray(x)[:, None] + np.asarray(y)[None, :]


@pytest.mark.parametrize("reg", [0.1, 0.02])
@pytest.mark.parametrize("method", ["greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"])
def test_methods_match_pot(rng, method, reg):
    a, b, M = _problem(rng)
    kw = dict(numItermax=10000) if method == "greenkhorn" else {}  # POT's greenkhorn converges in this budget
    P1, l1 = _quiet(pot.sinkhorn, a, b, M, reg, method=method, log=True, **kw)
    P2, l2 = ot.sinkhorn(a, b, M, reg, method=method, log=True, **kw)
    assert isinstance(P2, np.ndarray) and P2.dtype == np.float64
    assert sorted(l1) == sorted(l2)
    assert_close(P2, P1, rtol=1e-6, atol=1e-11, name="plan")
    if method == "greenkhorn":  # scalings in another gauge, same plan u_i K_ij v_j
        assert isinstance(l2["n_iter"], int)
        assert_close(l2["u"][:, None] * np.exp(-M / reg) * l2["v"][None, :], P1, rtol=1e-6, atol=1e-11, name="uKv")
    elif method == "sinkhorn_stabilized":  # POT's iterates: same stop and, without absorption, same gauge
        assert l1["n_iter"] == l2["n_iter"] and len(l1["err"]) == len(l2["err"])
        assert_close(l2["err"][1:], l1["err"][1:], rtol=1e-5, atol=1e-15, name="err")
        assert_close(_pair_sums(l2["alpha"], l2["beta"]), _pair_sums(l1["alpha"], l1["beta"]), rtol=1e-9,
                     atol=1e-10, name="alpha + beta")
        if reg == 0.1:  # POT did not absorb (|u|, |v| < tau): its gauge is sinkhorn_knopp's
            for k in ("logu", "logv", "alpha", "beta"):
                assert_close(l2[k], l1[k], rtol=1e-9, atol=1e-12, name=k)
        assert_close(l2["warmstart"][0], l2["alpha"], rtol=0, atol=0)
    else:  # POT's outer loop over the decreasing regularisations
        assert l1["niter"] == l2["niter"] and len(l1["err"]) == len(l2["err"])
        assert_close(_pair_sums(l2["alpha"], l2["beta"]), _pair_sums(l1["alpha"], l1["beta"]), rtol=1e-9,
                     atol=1e-8, name="alpha + beta")


def test_bregman_functions_have_pot_signatures():
    for name in ("sinkhorn", "sinkhorn2", "sinkhorn_knopp", "sinkhorn_log", "greenkhorn", "sinkhorn_stabilized",
                 "sinkhorn_epsilon_scaling"):
        ours = list(inspect.signature(getattr(ot.bregman, name)).parameters.values())
        theirs = [p for p in inspect.signature(getattr(pot.bregman, name)).parameters.values()
                  if p.kind != p.VAR_KEYWORD]
        assert [(p.name, p.default) for p in ours[:len(theirs)]] == [(p.name, p.default) for p in theirs], name


def test_stabilized_warmstart_and_pot_keywords(rng):
    a, b, M = _problem(rng)
    _, lg = pot.bregman.sinkhorn_stabilized(a, b, M, 0.05, stopThr=1e-4, log=True)
    for kw in (dict(warmstart=lg["warmstart"]), dict(tau=1e5, print_period=10)):
        P1, l1 = _quiet(pot.bregman.sinkhorn_stabilized, a, b, M, 0.05, log=True, **kw)
        P2, l2 = ot.bregman.sinkhorn_stabilized(a, b, M, 0.05, log=True, **kw)
        assert l1["n_iter"] == l2["n_iter"] and len(l1["err"]) == len(l2["err"]), kw
        assert_close(P2, P1, rtol=1e-9, atol=1e-14, name="plan")
    # POT's sinkhorn passes its keywords on; the methods that do not use them ignore them, as POT
    kw = dict(epsilon0=100.0, numInnerItermax=50, print_period=5, tau=1e4)
    P1, l1 = _quiet(pot.sinkhorn, a, b, M, 0.05, method="sinkhorn_epsilon_scaling", log=True, **kw)
    P2, l2 = _quiet(ot.sinkhorn, a, b, M, 0.05, method="sinkhorn_epsilon_scaling", log=True, **kw)
    assert l1["niter"] == l2["niter"] and len(l1["err"]) == len(l2["err"])
    assert_close(P2, P1, rtol=1e-8, atol=1e-13, name="epsilon scaling plan")
    for method in METHODS:
        assert_close(ot.sinkhorn(a, b, M, 0.1, method=method, tau=1e3, numItermax=10000),
                     _quiet(pot.sinkhorn, a, b, M, 0.1, method=method, tau=1e3, numItermax=10000),
                     rtol=1e-6, atol=1e-11, name=method)
    with pytest.raises(TypeError, match="tua"):
        ot.sinkhorn(a, b, M, 0.1, method="sinkhorn_stabilized", tua=1e3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"])
def test_methods_torch_in_torch_out(rng, method, dtype):
    a, b, M = _problem(rng)
    ta, tb, tM = (torch.tensor(x, dtype=dtype) for x in (a, b, M))
    thr = 1e-9 if dtype == torch.float64 else 1e-6
    P, lg = ot.sinkhorn(ta, tb, tM, 0.05, method=method, stopThr=thr, numItermax=10000, log=True)
    assert isinstance(P, torch.Tensor) and P.dtype == dtype
    _, pot_log = _quiet(pot.sinkhorn, ta, tb, tM, 0.05, method=method, stopThr=thr, numItermax=10000, log=True)
    assert sorted(lg) == sorted(pot_log)
    assert all(v.dtype == dtype for v in lg.values() if isinstance(v, torch.Tensor))
    ref = _quiet(pot.sinkhorn, a, b, M, 0.05, method=method, stopThr=1e-9, numItermax=10000)
    tol = dict(rtol=1e-6, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-7)
    assert_close(P, ref, **tol, name="plan")
    if method in LOSS_METHODS:
        loss = ot.sinkhorn2(ta, tb, tM, 0.05, method=method, stopThr=thr)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.dtype == dtype
        assert float(loss) == pytest.approx(float((ref * M).sum()), rel=1e-8 if dtype == torch.float64 else 1e-4)


def test_epsilon_scaling_float32_keeps_its_accuracy(rng):
    # POT's potentials drift by ~reg_i log n each outer step; in float32 its plan loses 4 digits
    a, b, M = _problem(rng)
    ref = pot.sinkhorn(a, b, M, 0.05, method="sinkhorn_log", stopThr=1e-14, numItermax=100000)
    ta, tb, tM = (torch.tensor(x, dtype=torch.float32) for x in (a, b, M))
    P = _quiet(ot.bregman.sinkhorn_epsilon_scaling, ta, tb, tM, 0.05, stopThr=1e-6)
    assert_close(P, ref, rtol=1e-3, atol=1e-7, name="plan")


def test_empty_weights_are_uniform_for_every_method(rng):
    _, _, M = _problem(rng)
    for method in METHODS:
        P1, l1 = _quiet(pot.sinkhorn, [], [], M, 0.1, method=method, log=True, numItermax=10000)
        P2, l2 = ot.sinkhorn([], [], M, 0.1, method=method, log=True, numItermax=10000)
        assert sorted(l1) == sorted(l2), method
        assert_close(P2, P1, rtol=1e-6, atol=1e-11, name=method)
        P3 = ot.sinkhorn(torch.tensor([]), torch.tensor([]), torch.tensor(M), 0.1, method=method, numItermax=10000)
        assert isinstance(P3, torch.Tensor) and P3.dtype == torch.float64
        assert_close(P3, P1, rtol=1e-6, atol=1e-11, name=f"{method}, torch")
        if method in LOSS_METHODS:
            L1, m1 = _quiet(pot.sinkhorn2, [], [], M, 0.1, method=method, log=True)
            L2, m2 = ot.sinkhorn2([], [], M, 0.1, method=method, log=True)
            assert sorted(m1) == sorted(m2) and L2 == pytest.approx(L1, rel=1e-9), method
        else:  # as POT's sinkhorn2
            with pytest.raises(ValueError, match="Unknown method"):
                pot.sinkhorn2([], [], M, 0.1, method=method)
            with pytest.raises(ValueError, match="Unknown method"):
                ot.sinkhorn2([], [], M, 0.1, method=method)


@pytest.mark.parametrize("fn", ["sinkhorn", "sinkhorn2"])
def test_several_histograms_give_losses_and_pot_logs(rng, fn):
    a, b, M = _problem(rng)
    B = np.stack([b, b[::-1], np.full_like(b, 1 / len(b))], 1)
    for method in LOSS_METHODS:
        L1, l1 = _quiet(getattr(pot, fn), a, B, M, 0.1, method=method, log=True)
        L2, l2 = getattr(ot, fn)(a, B, M, 0.1, method=method, log=True)
        assert L2.shape == (3,)
        assert_close(L2, L1, rtol=1e-8, atol=1e-14, name=f"{method} losses")
        assert sorted(l1) == sorted(l2), method
        for k, v in l1.items():
            if isinstance(v, np.ndarray):
                assert l2[k].shape == v.shape, (method, k)
        scalings = {"sinkhorn": ["u", "v"], "sinkhorn_log": ["log_u", "log_v", "u", "v"],
                    "sinkhorn_stabilized": ["logu", "logv", "alpha", "beta"]}[method]
        for k in scalings:  # POT's gauge (its stabilized solve does not absorb here)
            assert_close(l2[k], l1[k], rtol=1e-6, atol=1e-12, name=f"{method} {k}")
        if method == "sinkhorn":
            assert l2["niter"] == l1["niter"] and len(l2["err"]) == len(l1["err"])
            assert_close(l2["err"], l1["err"], rtol=1e-6, atol=1e-15, name="joint err")
        tL = getattr(ot, fn)(torch.tensor(a), torch.tensor(B), torch.tensor(M), 0.1, method=method)
        assert isinstance(tL, torch.Tensor) and tL.shape == (3,)
        assert_close(tL, L1, rtol=1e-8, atol=1e-14, name=f"{method} torch losses")


@pytest.mark.parametrize("method", ["greenkhorn", "sinkhorn_epsilon_scaling"])
def test_several_histograms_unsupported_where_pot_fails(rng, method):
    a, b, M = _problem(rng)
    B = np.stack([b, b[::-1]], 1)
    with pytest.raises(ValueError):  # POT: broadcasting error / AxisError, both ValueErrors
        pot.sinkhorn(a, B, M, 0.1, method=method)
    with pytest.raises(ValueError, match="one target histogram"):
        ot.sinkhorn(a, B, M, 0.1, method=method)


def test_non_convergence_warns_like_pot(rng):
    a, b, M = _problem(rng)

    def caught(lib, method, **kw):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            lib.sinkhorn(a, b, M, 0.01, method=method, **kw)
        return [(x.category, str(x.message)) for x in w if "converge" in str(x.message)]

    for method in METHODS:
        w1, w2 = caught(pot, method, numItermax=40), caught(ot, method, numItermax=40)
        assert w1 and w2 == w1, method  # same category, message and count (epsilon scaling: its inner solves too)
        assert w2[0][0] is UserWarning
        if method != "sinkhorn_epsilon_scaling":
            assert caught(ot, method, numItermax=40, warn=False) == caught(pot, method, numItermax=40, warn=False) == []


@pytest.mark.parametrize("method,message", [("sinkhorn", "Warning: numerical errors at iteration"),
                                            ("sinkhorn_stabilized", "Numerical errors at iteration")])
def test_numerical_failure_warns_like_pot(rng, monkeypatch, method, message):
    a, b, M = _problem(rng)
    real = gf_bregman.entropic_ot

    def failing(*args, **kw):  # a kernel that reports a numerical failure (status 2)
        sol = real(*args, **kw)
        return OTSolution(*sol[:7], torch.full_like(sol.status, 2), sol.err_history)

    monkeypatch.setattr(gf_bregman, "entropic_ot", failing)
    with pytest.warns(UserWarning, match=message):
        ot.sinkhorn(a, b, M, 0.1, method=method)


def test_nonpositive_reg_raises(rng):
    a, b, M = _problem(rng)
    for reg in (0.0, -0.1, float("nan")):  # deliberate: POT runs and returns NaN or a meaningless plan
        for method in METHODS:
            with pytest.raises(ValueError, match="reg must be"):
                ot.sinkhorn(a, b, M, reg, method=method)
        for method in LOSS_METHODS:
            with pytest.raises(ValueError, match="reg must be"):
                ot.sinkhorn2(a, b, M, reg, method=method)


# ------------------------------------------------------------------------------------------- ot.solve
SOLVE_CASES = [dict(reg=0.1), dict(reg=0.05, reg_type="entropy"), dict(reg=0.1, reg_type="kl"),
               dict(reg=0.1, unbalanced=1.0), dict(reg=0.1, unbalanced=(0.5, 3.0), tol=1e-7),
               dict(reg=0.1, max_iter=30)]


@pytest.mark.parametrize("kw", SOLVE_CASES)
@pytest.mark.parametrize("weights", [True, False])
def test_solve_entropic_matches_pot(rng, kw, weights):
    a, b, M = _problem(rng)
    a, b = (a, b) if weights else (None, None)
    r1 = _quiet(pot.solve, M, a, b, **kw)
    r2 = _quiet(ot.solve, M, a, b, **kw)
    assert isinstance(r2, ot.utils.OTResult)
    assert_close(r2.plan, r1.plan, rtol=1e-8, atol=1e-14, name="plan")
    for k in ("value", "value_linear"):
        assert getattr(r2, k) == pytest.approx(getattr(r1, k), rel=1e-8, abs=1e-14), k
    for mine, theirs in zip(r2.potentials, r1.potentials):
        assert_close(mine, theirs, rtol=1e-8, atol=1e-10, name="potentials")
    assert_close(r2.potential_a, r1.potential_a, rtol=1e-8, atol=1e-10)
    for k in ("marginal_a", "marginal_b"):
        assert_close(getattr(r2, k), getattr(r1, k), rtol=1e-8, atol=1e-14, name=k)
    assert r2.status is r1.status is None and r2.log is r1.log is None
    assert r2.value_quad is None and r2.lazy_plan is None
    assert np.allclose(r2.sparse_plan.toarray(), r1.plan)


def test_solve_warns_like_pot(rng):
    a, b, M = _problem(rng)
    with pytest.warns(UserWarning, match="did not converge"):
        pot.solve(M, a, b, reg=0.01, max_iter=20)
    with pytest.warns(UserWarning, match="did not converge"):
        ot.solve(M, a, b, reg=0.01, max_iter=20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", SOLVE_CASES[:4])
def test_solve_torch(rng, dtype, kw):
    a, b, M = _problem(rng)
    r1 = pot.solve(M, a, b, **kw)
    r2 = _quiet(ot.solve, *(torch.tensor(x, dtype=dtype) for x in (M, a, b)), **kw)
    assert isinstance(r2.plan, torch.Tensor) and r2.plan.dtype == dtype and r2.value.dtype == dtype
    tol = dict(rtol=1e-8, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-7)
    assert_close(r2.plan, r1.plan, **tol, name="plan")
    assert_close(r2.value_linear, r1.value_linear, **tol, name="value_linear")


@pytest.mark.parametrize("grad", ["autodiff", "envelope", "detach", "last_step"])
@pytest.mark.parametrize("kw", [dict(reg=0.1), dict(reg=0.1, reg_type="entropy"), dict(reg=0.1, unbalanced=1.0)])
def test_solve_gradients_match_pot(rng, grad, kw):
    a, b, M = _problem(rng, 9, 11)
    out = []
    for lib in (pot, ot):
        tM, ta, tb = (torch.tensor(x, requires_grad=True) for x in (M, a, b))
        res = lib.solve(tM, ta, tb, grad=grad, **kw)
        out.append((res, tM, ta, tb))
        if res.value.requires_grad:
            res.value.backward()
    (r1, *x1), (r2, *x2) = out
    assert r2.value.item() == pytest.approx(r1.value.item(), rel=1e-9, abs=1e-15)
    for k in ("plan", "value", "value_linear"):
        assert getattr(r2, k).requires_grad == getattr(r1, k).requires_grad, k
    for name, g2, g1 in zip("Mab", x2, x1):
        assert (g2.grad is None) == (g1.grad is None), name
        if g1.grad is not None:
            assert_close(g2.grad, g1.grad, rtol=1e-7, atol=1e-12, name=f"d value / d {name}")


@pytest.mark.parametrize("kw", [dict(), dict(reg=0.0), dict(reg=0.1, reg_type="L2", max_iter=20),
                                dict(reg=0.1, unbalanced=1.0, reg_type="entropy", max_iter=20)])
def test_solve_delegates_other_cases_to_pot(rng, kw):
    a, b, M = _problem(rng, 7, 8)
    r1, r2 = _quiet(pot.solve, M, a, b, **kw), _quiet(ot.solve, M, a, b, **kw)
    assert isinstance(r2, pot.utils.OTResult)
    assert_close(r2.plan, r1.plan, rtol=0, atol=0, name="plan")
    assert r2.value == r1.value


def test_solve_without_pot(rng, monkeypatch):
    a, b, M = _problem(rng, 7, 8)
    monkeypatch.setitem(sys.modules, "ot", None)  # import ot -> ImportError
    assert ot.solve(M, a, b, reg=0.1).plan.shape == (7, 8)  # the entropic cases need no POT
    with pytest.raises(ImportError, match="pip install pot"):
        ot.solve(M, a, b)


def test_solve_argument_errors(rng):
    a, b, M = _problem(rng, 7, 8)
    with pytest.raises(ValueError, match="Unknown method"):
        pot.solve(M, a, b, reg=0.1, method="nope")
    with pytest.raises(ValueError, match="Unknown method"):
        ot.solve(M, a, b, reg=0.1, method="nope")
    with pytest.raises(ValueError, match="reg must be"):  # deliberate: POT runs Sinkhorn with it
        ot.solve(M, a, b, reg=-0.1)
