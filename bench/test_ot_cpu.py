"""CPU benchmarks: grounded_fast's batched log-domain OT kernels against POT 0.9.7 and GeomLoss 0.3.1, same run.

    bash bench/run_cpu.sh          # runs this file, then bench/report.py -> bench/results/cpu.md

Every comparison runs both libraries for the SAME number of iterations (our op with
check_every=0, POT with a stop threshold it can never meet, GeomLoss with max_iter) and, like for
like, on the same dtype: POT on torch float32 / float64 tensors, beside it POT on numpy float64.
Every side runs with the same threads (bench/conftest.py pins torch and every BLAS / OpenMP pool).
Ratios (peer effective median / our median; > 1 = ours faster) are formed by bench/report.py. Where
a peer is timed on a subset of a batch (a loop over problems), its time is scaled linearly to the
whole batch.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cases
from cases import ARRAY_DTYPE, ARRAYS
from conftest import _SESSION, max_abs, memprobe, record, run_bench

DT = {"f32": torch.float32, "f64": torch.float64}
# our variants: dtype, and domain 'auto' (default: stabilised scaling domain, log-domain hand-over on underflow)
# or '_log' (domain='log': log-sum-exp passes only; skipped if this grounded_fast lacks domain=)
VARIANTS = ["f32", "f64", "f32_log", "f64_log"]


def _variant(v: str):
    if v.endswith("_log") and not cases.HAS_DOMAIN:
        pytest.skip("grounded_fast.ops.entropic_ot has no domain= argument")
    return DT[v[:3]], v[:3], ("log" if v.endswith("_log") else "auto")


ITERS_1 = 1000   # case 1 (partial, 64 x 64x197)
ITERS_2 = 100    # case 2 (partial, 512 x 512): POT's partial costs O(n^3) an iteration (a product with a diagonal matrix)
ITERS_3 = 100    # case 3 (balanced, 64 x 64x197): POT's solve_batch and GeomLoss take tens of ms an iteration
ITERS_4 = 100    # case 4 (balanced, 2048 x 2048)
POT_SUBSET = 2   # problems of a batch timed for POT's per-problem loops (then x B/2)
ACC_PROBLEMS = slice(0, 2)
SMALL_REG = 1e-3
GEOMLOSS_CHECK_ITERS = 3000  # GeomLoss run this long on two problems: its plan against the converged one
PARTIAL_PEERS = [(method, array) for method in ("sinkhorn", "sinkhorn_log") for array in ARRAYS]


def _marginal_err(P, a, b) -> float:
    """max over the batch of ||P 1 - a||_1 + ||P^T 1 - b||_1 (float64)."""
    P, a, b = cases.to_numpy(P), cases.to_numpy(a), cases.to_numpy(b)
    if P.ndim == 2:
        P, a, b = P[None], a[None], b[None]
    return float(np.max(np.abs(P.sum(2) - a).sum(1) + np.abs(P.sum(1) - b).sum(1)))


def _partial_err(P, a, b, mass: float = cases.MASS) -> float:
    """Partial OT's constraint violation, max over the batch: ||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1
    + |sum P - mass| (float64)."""
    P, a, b = cases.to_numpy(P), cases.to_numpy(a), cases.to_numpy(b)
    if P.ndim == 2:
        P, a, b = P[None], a[None], b[None]
    over = np.maximum(P.sum(2) - a, 0).sum(1) + np.maximum(P.sum(1) - b, 0).sum(1)
    return float(np.max(over + np.abs(P.sum((1, 2)) - mass)))


def _peer_info(peer: str, solver: str, array: str) -> dict:
    return dict(peer=peer, solver=solver, array=array, array_label=ARRAYS[array], dtype=ARRAY_DTYPE[array])


def _vs_ours(registry, case: str, P, sl) -> dict:
    """max abs difference between a peer's plans and ours (problems ``sl``) at the same iterations."""
    out = {}
    for d in ("f32", "f64"):
        if f"case{case}/ours_{d}" in registry:
            out[f"max_abs_diff_vs_ours_{d}"] = max_abs(registry[f"case{case}/ours_{d}"]["result"].plan[sl], P)
    return out


# ============================================================================ case 1: partial, B=64
@pytest.fixture(scope="module")
def case1_ref(case1):
    """float64 converged references (our kernel, tol 1e-14) for problems 0, 1 at m=0.5 and, as a
    problem whose constraints are active, m=0.95; cross-checked against the pure-torch reference."""
    out = {}
    for mass in (cases.MASS, 0.95):
        r = cases.reference_partial(case1, ACC_PROBLEMS, mass=mass)
        rt = cases.reference_partial(case1, ACC_PROBLEMS, mass=mass, backend="torch")
        out[mass] = {"plan": r.plan, "n_iter": r.n_iter.tolist(), "status": r.status.tolist(),
                     "cpu_vs_torch_reference": max_abs(r.plan, rt.plan), "plan_max": float(r.plan.max())}
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_case1_partial_ours(benchmark, registry, case1, case1_ref, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_partial(case1, dt, ITERS_1, domain=dom),
                         rounds=5 if variant == "f32" else 3)
    ref = case1_ref[cases.MASS]
    hard = case1_ref[0.95]
    o95 = cases.ours_partial(case1, dt, ITERS_1, mass=0.95, sl=ACC_PROBLEMS, domain=dom)
    acc = {"max_abs_err_vs_ref": max_abs(out.plan[ACC_PROBLEMS], ref["plan"]),
           "ref_plan_max": ref["plan_max"], "ref_n_iter": ref["n_iter"],
           "ref_cpu_vs_torch_reference": ref["cpu_vs_torch_reference"],
           "m095_max_abs_err_vs_ref": max_abs(o95.plan, hard["plan"]), "m095_ref_n_iter": hard["n_iter"],
           "m095_ref_plan_max": hard["plan_max"], "partial_err": _partial_err(out.plan, case1.an, case1.bn)}
    record(benchmark, registry, f"case1/ours_{variant}", med, out, case="1", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=PARTIAL, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case1.shape, iters=ITERS_1, accuracy=acc, statuses=sorted(set(out.status.tolist())))


@pytest.mark.parametrize("method,array", PARTIAL_PEERS, ids=[f"{m}-{a}" for m, a in PARTIAL_PEERS])
def test_case1_partial_pot(benchmark, registry, case1, case1_ref, method, array):
    idx = slice(0, POT_SUBSET)
    out, med = run_bench(benchmark, lambda: cases.pot_partial_loop(case1, range(POT_SUBSET), ITERS_1, method=method,
                                                                   array=array), rounds=3)
    P = np.stack([cases.to_numpy(x) for x in out])
    ref = case1_ref[cases.MASS]
    hard = case1_ref[0.95]
    p95 = np.stack([cases.to_numpy(x) for x in cases.pot_partial_loop(case1, range(2), ITERS_1, mass=0.95,
                                                                       method=method, array=array)])
    acc = {"max_abs_err_vs_ref": max_abs(P[ACC_PROBLEMS], ref["plan"]),
           "ref_plan_max": ref["plan_max"], "ref_n_iter": ref["n_iter"],
           "m095_max_abs_err_vs_ref": max_abs(p95, hard["plan"]), "m095_ref_n_iter": hard["n_iter"],
           "partial_err": _partial_err(P, case1.an[idx], case1.bn[idx]), **_vs_ours(registry, "1", P, idx)}
    record(benchmark, registry, f"case1/pot_{method}_{array}", med, None, case="1", side="peer",
           impl=f"ot.partial.entropic_partial_wasserstein(method={method!r}, stopThr=-1), loop",
           shape=case1.shape, iters=ITERS_1, timed_problems=POT_SUBSET, accuracy=acc,
           **_peer_info("POT", f"entropic_partial_wasserstein {method}", array))


# ============================================================================ case 2: partial, 512 x 512
@pytest.fixture(scope="module")
def case2_ref(case2):
    r = cases.reference_partial(case2, slice(0, 1))
    return {"plan": r.plan, "n_iter": r.n_iter.tolist(), "plan_max": float(r.plan.max())}


@pytest.mark.parametrize("variant", VARIANTS)
def test_case2_partial512_ours(benchmark, registry, case2, case2_ref, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_partial(case2, dt, ITERS_2, domain=dom),
                         rounds=10 if dom == "auto" else 3)
    record(benchmark, registry, f"case2/ours_{variant}", med, out, case="2", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=PARTIAL, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case2.shape,
           iters=ITERS_2, accuracy={"max_abs_err_vs_ref": max_abs(out.plan, case2_ref["plan"]),
                                    "ref_n_iter": case2_ref["n_iter"], "ref_plan_max": case2_ref["plan_max"],
                                    "partial_err": _partial_err(out.plan, case2.an, case2.bn)})


@pytest.mark.parametrize("method,array", PARTIAL_PEERS, ids=[f"{m}-{a}" for m, a in PARTIAL_PEERS])
def test_case2_partial512_pot(benchmark, registry, case2, case2_ref, method, array):
    # 3 rounds, no warm-up: about a second each
    out, med = run_bench(benchmark, lambda: cases.pot_partial_loop(case2, range(1), ITERS_2, method=method,
                                                                   array=array), rounds=3, warmup_rounds=0)
    P = cases.to_numpy(out[0])
    record(benchmark, registry, f"case2/pot_{method}_{array}", med, None, case="2", side="peer",
           impl=f"ot.partial.entropic_partial_wasserstein(method={method!r}, stopThr=-1)", shape=case2.shape,
           iters=ITERS_2, accuracy={"max_abs_err_vs_ref": max_abs(P, case2_ref["plan"][0]),
                                    "partial_err": _partial_err(P, case2.an, case2.bn),
                                    **_vs_ours(registry, "2", P[None], slice(0, 1))},
           rounds_note="3 rounds, no warm-up", **_peer_info("POT", f"entropic_partial_wasserstein {method}", array))


# ============================================================================ case 3: balanced, B=64
@pytest.fixture(scope="module")
def case3_ref(case1):
    """float64 balanced solve of problems 0, 1 at its fixed point (our kernel, 5000 iterations; the
    plan's change from 2500 to 5000 iterations is recorded). Its marginal error stays ~2e-8: the
    float64 copies of the float32 weights 1/64 and 1/197 differ in total mass by about 1e-8."""
    C, a, b = case1.C64[ACC_PROBLEMS], case1.a64[ACC_PROBLEMS], case1.b64[ACC_PROBLEMS]
    solve = lambda it: cases.entropic_ot(C, a, b, reg=cases.REG, problem=cases.BALANCED, max_iter=it,  # noqa: E731
                                         check_every=0, warn=False)
    r, half = solve(5000), solve(2500)
    return {"plan": r.plan, "value": r.value, "value_linear": r.value_linear, "n_iter": r.n_iter.tolist(),
            "plan_change_2500_to_5000": max_abs(r.plan, half.plan), "plan_max": float(r.plan.max()),
            "marginal_err_l1": _marginal_err(r.plan, a, b)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_case3_balanced_ours(benchmark, registry, case1, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_balanced(case1, dt, ITERS_3, domain=dom),
                         rounds=10 if dom == "auto" else 3)
    record(benchmark, registry, f"case3/ours_{variant}", med, out, case="3", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=BALANCED, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case1.shape,
           iters=ITERS_3, accuracy={"marginal_err_l1": _marginal_err(out.plan, case1.an, case1.bn)})


@pytest.mark.parametrize("array", list(ARRAYS))
def test_case3_balanced_pot_solve_batch(benchmark, registry, case1, array):
    out, med = run_bench(benchmark, lambda: cases.pot_solve_batch(case1, ITERS_3, array=array), rounds=3,
                         warmup_rounds=0)
    acc = {"marginal_err_l1": _marginal_err(out.plan, case1.an, case1.bn), "pot_n_iter_log": int(out.log["n_iter"]),
           **_vs_ours(registry, "3", cases.to_numpy(out.plan), slice(None))}
    record(benchmark, registry, f"case3/pot_solve_batch_{array}", med, None, case="3", side="peer",
           impl="ot.batch.solve_batch(method='log_sinkhorn', tol=0), whole batch", shape=case1.shape,
           iters=ITERS_3, accuracy=acc, rounds_note="3 rounds, no warm-up",
           **_peer_info("POT", "batch.solve_batch log_sinkhorn", array))


@pytest.mark.parametrize("array", list(ARRAYS))
def test_case3_balanced_pot_sinkhorn_log(benchmark, registry, case1, array):
    idx = slice(0, POT_SUBSET)
    out, med = run_bench(benchmark, lambda: cases.pot_sinkhorn_log_loop(case1, range(POT_SUBSET), ITERS_3,
                                                                        array=array), rounds=3)
    P = np.stack([cases.to_numpy(x) for x in out])
    acc = {"marginal_err_l1": _marginal_err(P, case1.an[idx], case1.bn[idx]), **_vs_ours(registry, "3", P, idx)}
    record(benchmark, registry, f"case3/pot_sinkhorn_log_{array}", med, None, case="3", side="peer",
           impl="ot.bregman.sinkhorn_log(stopThr=0), loop", shape=case1.shape,
           iters=ITERS_3, timed_problems=POT_SUBSET, accuracy=acc, **_peer_info("POT", "bregman.sinkhorn_log", array))


@pytest.mark.parametrize("array", ["t32", "t64"])
def test_case3_balanced_geomloss(benchmark, registry, case1, case3_ref, array):
    """GeomLoss's batched matrix solver at the same iterations and final eps = reg. It anneals eps,
    so its marginal error at equal iterations differs from ours; its plan is checked to be the
    entropic plan at reg by a long run on two problems against our converged float64 solve."""
    pytest.importorskip("geomloss", reason="GeomLoss not installed (pip install geomloss==0.3.1): no GeomLoss rows")
    (P, value), med = run_bench(benchmark, lambda: cases.geomloss_batch(case1, ITERS_3, array=array), rounds=3,
                                warmup_rounds=1)
    acc = {"marginal_err_l1": _marginal_err(P, case1.an, case1.bn), **_vs_ours(registry, "3", P, slice(None))}
    long = cases.Problem(*(t[ACC_PROBLEMS] for t in (case1.C32, case1.a32, case1.b32, case1.C64, case1.a64,
                                                      case1.b64, case1.Cn, case1.an, case1.bn)))
    Pl, vl = cases.geomloss_batch(long, GEOMLOSS_CHECK_ITERS, array="t64")
    ref_kl = cases.kl_value(case3_ref["value"], long.a64, long.b64)
    acc["long_run"] = {"iters": GEOMLOSS_CHECK_ITERS, "problems": 2,
                       "plan_max_abs_diff_vs_converged": max_abs(Pl, case3_ref["plan"]),
                       "converged_plan_max": case3_ref["plan_max"], "converged_n_iter": case3_ref["n_iter"],
                       "converged_plan_change_2500_to_5000": case3_ref["plan_change_2500_to_5000"],
                       "converged_marginal_err_l1": case3_ref["marginal_err_l1"],
                       "marginal_err_l1": _marginal_err(Pl, long.an, long.bn),
                       "value_kl_diff_vs_converged": float(np.abs(cases.to_numpy(vl) - ref_kl).max()),
                       "linear_value_diff_vs_converged": float(np.abs(
                           (cases.to_numpy(Pl) * long.Cn).sum((1, 2)) - cases.to_numpy(case3_ref["value_linear"])).max())}
    record(benchmark, registry, f"case3/geomloss_{array}", med, None, case="3", side="peer",
           impl="geomloss.ot.solve_batch(reg=0.05, max_iter=iters, method='auto'), whole batch", shape=case1.shape,
           iters=ITERS_3, accuracy=acc, **_peer_info("GeomLoss", "ot.solve_batch (eps annealed to reg)", array))


# ============================================================================ case 4: balanced, 2048 x 2048
@pytest.mark.parametrize("variant", VARIANTS)
def test_case4_balanced2048_ours(benchmark, registry, case4, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_balanced(case4, dt, ITERS_4, domain=dom), rounds=3)
    record(benchmark, registry, f"case4/ours_{variant}", med, out, case="4", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=BALANCED, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case4.shape,
           iters=ITERS_4, accuracy={"marginal_err_l1": _marginal_err(out.plan, case4.an, case4.bn)})


@pytest.mark.parametrize("array", list(ARRAYS))
def test_case4_balanced2048_pot(benchmark, registry, case4, array):
    out, med = run_bench(benchmark, lambda: cases.pot_sinkhorn(case4, ITERS_4, array=array), rounds=3)
    P = cases.to_numpy(out)
    acc = {"marginal_err_l1": _marginal_err(P, case4.an[0], case4.bn[0]), **_vs_ours(registry, "4", P[None], slice(0, 1))}
    record(benchmark, registry, f"case4/pot_{array}", med, None, case="4", side="peer",
           impl="ot.sinkhorn (exp-domain sinkhorn_knopp, stopThr=0)", shape=case4.shape,
           iters=ITERS_4, accuracy=acc, **_peer_info("POT", "sinkhorn (exp domain)", array))


def _finite_summary(P, a, b, warns) -> dict:
    P = P.detach().double().numpy() if isinstance(P, torch.Tensor) else np.asarray(P, dtype=np.float64)
    fin = bool(np.isfinite(P).all())
    return {"finite": fin, "plan_mass": float(P.sum()) if fin else float("nan"),
            "marginal_err_l1": _marginal_err(P, a, b) if fin else float("nan"),
            "warnings": sorted({str(w.message).split("\n")[0][:90] for w in warns})}


def test_case4_small_reg(benchmark, registry, case4):
    """reg = 1e-3 at the same 100 iterations. (a) the max-1 cost as is; (b) the same cost + 1
    (cost values in [1, 2]: 'cost scale 1'; the balanced optimum is unchanged by a constant
    shift). Timed: ours f32 on (b). Records whether each output is finite, its mass, marginal error."""
    an, bn = case4.an[0], case4.bn[0]
    out, med = run_bench(benchmark, lambda: cases.ours_balanced(case4, torch.float32, ITERS_4, reg=SMALL_REG, shift=1.0),
                         rounds=1, warmup_rounds=0)
    res = {}
    for shift in (0.0, 1.0):
        tag = "shift1" if shift else "shift0"
        for d in ("f32", "f64"):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                o = out if (d == "f32" and shift) else cases.ours_balanced(case4, DT[d], ITERS_4, reg=SMALL_REG, shift=shift)
            res[f"ours_{d}_{tag}"] = _finite_summary(o.plan[0], an, bn, w)
            res[f"ours_{d}_{tag}"]["status"] = o.status.tolist()
            if shift:
                ref0 = cases.ours_balanced(case4, DT[d], ITERS_4, reg=SMALL_REG)
                res[f"ours_{d}_{tag}"]["max_abs_diff_vs_unshifted"] = max_abs(o.plan, ref0.plan)
        import ot
        M = case4.Cn[0] + shift
        with warnings.catch_warnings(record=True) as w, np.errstate(all="warn"):
            warnings.simplefilter("always")
            P = ot.sinkhorn(an, bn, M, SMALL_REG, numItermax=ITERS_4, stopThr=0)
        res[f"pot_{tag}"] = _finite_summary(P, an, bn, w)
    record(benchmark, registry, "case4s/ours_f32", med, None, case="4s", side="ours",
           impl="grounded_fast.ops.entropic_ot(problem=BALANCED, check_every=0), reg=1e-3, cost+1",
           dtype="f32", domain="auto", shape=case4.shape, iters=ITERS_4, small_reg=res, reg=SMALL_REG,
           rounds_note="1 round, no warm-up")


# ============================================================================ case 5: memory
@pytest.mark.parametrize("case", ["case1", "case4"])
def test_memory(registry, case):
    """Peak extra memory per solve, each in a fresh interpreter (see bench/memprobe.py)."""
    probes = {"case1": ["ours_f32", "ours_f64", "pot"], "case4": ["ours_f32", "ours_f64", "pot"]}[case]
    for kind in probes:
        r = memprobe(f"{case}_{kind}")
        _SESSION["memory"][f"{case}_{kind}"] = r
        key = f"{case}/{kind}" if kind != "pot" else {"case1": "case1/pot_sinkhorn_np64", "case4": "case4/pot_np64"}[case]
        if key in registry:
            registry[key]["extra"]["memory"] = r
        assert "error" not in r, r.get("error")
