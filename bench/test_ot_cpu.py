"""CPU benchmarks: grounded_fast's batched log-domain OT kernels against POT 0.9.7, same run.

    bash bench/run_cpu.sh          # runs this file, then bench/report.py -> bench/results/cpu.md

Every comparison runs both libraries for the SAME number of iterations (our op with
check_every=0, POT with a stop threshold it can never meet). POT-vs-ours ratios (POT effective
median / our median; > 1 = ours faster) go into ``benchmark.extra_info``. Where POT is timed on a
subset of a batch (it loops over problems), its time is scaled linearly to the whole batch.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cases
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
ITERS_2 = 1000   # case 2 (partial, 512 x 512): POT's default numItermax; POT costs O(n^3) per iteration (~8 s)
ITERS_3 = 1000   # case 3 (balanced, 64 x 64x197)
ITERS_4 = 100    # case 4 (balanced, 2048 x 2048)
POT_SUBSET = 4   # problems of a batch timed for POT's per-problem loops (then x B/4)
ACC_PROBLEMS = slice(0, 2)
SMALL_REG = 1e-3


def _marginal_err(P, a, b) -> float:
    """max over the batch of ||P 1 - a||_1 + ||P^T 1 - b||_1 (float64)."""
    P = P.detach().double().numpy() if isinstance(P, torch.Tensor) else np.asarray(P, dtype=np.float64)
    if P.ndim == 2:
        P, a, b = P[None], np.asarray(a)[None], np.asarray(b)[None]
    return float(np.max(np.abs(P.sum(2) - a).sum(1) + np.abs(P.sum(1) - b).sum(1)))


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
           "m095_ref_plan_max": hard["plan_max"]}
    record(benchmark, registry, f"case1/ours_{variant}", med, out, case="1", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=PARTIAL, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case1.shape, iters=ITERS_1, accuracy=acc, statuses=sorted(set(out.status.tolist())))


def test_case1_partial_pot(benchmark, registry, case1, case1_ref):
    idx = range(POT_SUBSET)
    out, med = run_bench(benchmark, lambda: cases.pot_partial_loop(case1, idx, ITERS_1), rounds=3)
    ref = case1_ref[cases.MASS]
    hard = case1_ref[0.95]
    p95 = cases.pot_partial_loop(case1, range(2), ITERS_1, mass=0.95)
    acc = {"max_abs_err_vs_ref": max_abs(np.stack(out[:2]), ref["plan"]),
           "ref_plan_max": ref["plan_max"], "ref_n_iter": ref["n_iter"],
           "m095_max_abs_err_vs_ref": max_abs(np.stack(p95), hard["plan"]), "m095_ref_n_iter": hard["n_iter"]}
    ours = registry.get("case1/ours_f64")
    if ours is not None:
        acc["max_abs_diff_vs_ours_f64"] = max_abs(ours["result"].plan[:POT_SUBSET], np.stack(out))
    record(benchmark, registry, "case1/pot", med, None, case="1", side="pot",
           impl="ot.partial.entropic_partial_wasserstein (numpy f64, stopThr=-1), loop", dtype="f64",
           shape=case1.shape, iters=ITERS_1, timed_problems=POT_SUBSET, accuracy=acc)


# ============================================================================ case 2: partial, 512 x 512
@pytest.fixture(scope="module")
def case2_ref(case2):
    r = cases.reference_partial(case2, slice(0, 1))
    return {"plan": r.plan, "n_iter": r.n_iter.tolist(), "plan_max": float(r.plan.max())}


@pytest.mark.parametrize("variant", VARIANTS)
def test_case2_partial512_ours(benchmark, registry, case2, case2_ref, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_partial(case2, dt, ITERS_2, domain=dom), rounds=10 if dom == "auto" else 3)
    record(benchmark, registry, f"case2/ours_{variant}", med, out, case="2", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=PARTIAL, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case2.shape,
           iters=ITERS_2, accuracy={"max_abs_err_vs_ref": max_abs(out.plan, case2_ref["plan"]),
                                    "ref_n_iter": case2_ref["n_iter"], "ref_plan_max": case2_ref["plan_max"]})


def test_case2_partial512_pot(benchmark, registry, case2, case2_ref):
    # 3 rounds (~7-9 s each): POT's own time varies by +-20% run to run on this machine
    out, med = run_bench(benchmark, lambda: cases.pot_partial_loop(case2, range(1), ITERS_2), rounds=3,
                         warmup_rounds=0)
    record(benchmark, registry, "case2/pot", med, None, case="2", side="pot",
           impl="ot.partial.entropic_partial_wasserstein (numpy f64, stopThr=-1)", dtype="f64", shape=case2.shape,
           iters=ITERS_2, accuracy={"max_abs_err_vs_ref": max_abs(out[0], case2_ref["plan"][0])}, rounds_note="3 rounds, no warm-up")


# ============================================================================ case 3: balanced, B=64
@pytest.mark.parametrize("variant", VARIANTS)
def test_case3_balanced_ours(benchmark, registry, case1, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_balanced(case1, dt, ITERS_3, domain=dom),
                         rounds=5 if variant == "f32" else 3)
    record(benchmark, registry, f"case3/ours_{variant}", med, out, case="3", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=BALANCED, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case1.shape,
           iters=ITERS_3, accuracy={"marginal_err_l1": _marginal_err(out.plan, case1.an, case1.bn)})


def test_case3_balanced_pot_solve_batch(benchmark, registry, case1):
    out, med = run_bench(benchmark, lambda: cases.pot_solve_batch(case1, ITERS_3), rounds=2, warmup_rounds=0)
    acc = {"marginal_err_l1": _marginal_err(out.plan, case1.an, case1.bn), "pot_n_iter_log": int(out.log["n_iter"])}
    for d in ("f32", "f64"):
        if f"case3/ours_{d}" in registry:
            acc[f"max_abs_diff_vs_ours_{d}"] = max_abs(registry[f"case3/ours_{d}"]["result"].plan, out.plan)
    record(benchmark, registry, "case3/pot_solve_batch", med, None, case="3", side="pot",
           impl="ot.batch.solve_batch(method='log_sinkhorn', tol=0) (numpy f64, whole batch)", dtype="f64",
           shape=case1.shape, iters=ITERS_3, accuracy=acc, rounds_note="2 rounds, no warm-up")


def test_case3_balanced_pot_sinkhorn_log(benchmark, registry, case1):
    idx = range(POT_SUBSET)
    out, med = run_bench(benchmark, lambda: cases.pot_sinkhorn_log_loop(case1, idx, ITERS_3), rounds=3)
    P = np.stack(out)
    acc = {"marginal_err_l1": _marginal_err(P, case1.an[:POT_SUBSET], case1.bn[:POT_SUBSET])}
    for d in ("f32", "f64"):
        if f"case3/ours_{d}" in registry:
            acc[f"max_abs_diff_vs_ours_{d}"] = max_abs(registry[f"case3/ours_{d}"]["result"].plan[:POT_SUBSET], P)
    record(benchmark, registry, "case3/pot_sinkhorn_log", med, None, case="3", side="pot",
           impl="ot.bregman.sinkhorn_log(stopThr=0) (numpy f64), loop", dtype="f64", shape=case1.shape,
           iters=ITERS_3, timed_problems=POT_SUBSET, accuracy=acc)


# ============================================================================ case 4: balanced, 2048 x 2048
@pytest.mark.parametrize("variant", VARIANTS)
def test_case4_balanced2048_ours(benchmark, registry, case4, variant):
    dt, dtype, dom = _variant(variant)
    out, med = run_bench(benchmark, lambda: cases.ours_balanced(case4, dt, ITERS_4, domain=dom), rounds=3)
    record(benchmark, registry, f"case4/ours_{variant}", med, out, case="4", side="ours",
           impl=f"grounded_fast.ops.entropic_ot(problem=BALANCED, check_every=0, domain={dom!r})", dtype=dtype,
           domain=dom, shape=case4.shape,
           iters=ITERS_4, accuracy={"marginal_err_l1": _marginal_err(out.plan, case4.an, case4.bn)})


def test_case4_balanced2048_pot(benchmark, registry, case4):
    out, med = run_bench(benchmark, lambda: cases.pot_sinkhorn(case4, ITERS_4), rounds=3)
    acc = {"marginal_err_l1": _marginal_err(out, case4.an[0], case4.bn[0])}
    for d in ("f32", "f64"):
        if f"case4/ours_{d}" in registry:
            acc[f"max_abs_diff_vs_ours_{d}"] = max_abs(registry[f"case4/ours_{d}"]["result"].plan[0], out)
    record(benchmark, registry, "case4/pot", med, None, case="4", side="pot",
           impl="ot.sinkhorn (exp-domain sinkhorn_knopp, numpy f64, stopThr=0)", dtype="f64", shape=case4.shape,
           iters=ITERS_4, accuracy=acc)


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
        key = f"{case}/{kind}"
        if key in registry:
            registry[key]["extra"]["memory"] = r
        assert "error" not in r, r.get("error")
