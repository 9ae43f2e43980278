"""GPU benchmark of the entropic OT op: each GPU backend against POT on the GPU and the device floor.

    python bench/gpu_ot.py                       # on a GPU machine (bench/gpu_lease.py runs it)
    python bench/gpu_ot.py --smoke --device cpu --backends cpu,torch   # tiny sizes, any machine

Cases (the issue's targets on an H100):
  1  partial, B=128 x 64 tokens x 197 patches (cosine cost), reg 0.05, m 0.5, 1000 fixed iterations:
     >= 1000x POT's entropic_partial_wasserstein looped over the batch on CUDA tensors (POT timed
     on a few problems and fewer iterations, scaled linearly), <= 5 us per iteration for the batch;
  2  balanced, B=16 x 4096 x 4096 float32 given C, 50 iterations: bytes of C read per iteration
     (two passes) / time per iteration >= 70% of the measured copy bandwidth; >= 10x POT
     ot.batch.solve_batch (log_sinkhorn) on the GPU;
  3  balanced, one 8192 x 8192 problem from d=64 float32 features, 50 iterations, cost |x - y|^2 / 2
     (GeomLoss's p=2 convention), reg 0.05: our C-from-memory path (C materialised here, then
     entropic_ot) and our features path (entropic_ot_features: the cost rebuilt from the features
     in every pass, never stored; rows with cost_source 'features', also timed as a whole
     forward + backward of the loss) against GeomLoss SamplesLoss(backend='tensorized') per
     iteration (target >= 3x); ``choose_cost_source``'s pick is recorded beside them;
  4  partial (m 0.5) and unbalanced (KL weights 1) at case 2's size, float32 C, 50 iterations: the
     two-read streaming regime against the one-read fused one, both GPU backends (no target: POT
     has no batched partial or unbalanced solver on the GPU to compare with).
POT / GeomLoss are optional: missing peers are reported as such. Results:
bench/results/gpu-ot-<device>.json and .md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gpu_analysis import (ResultLog, check_label, device_name, median_time, rel_err, result_stem,  # noqa: E402
                          short_commit, yardsticks)


def _cosine_cost(B, n, m, d, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(B, n, d, generator=g, device=device), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(B, m, d, generator=g, device=device), dim=-1)
    return 1 - x @ y.transpose(1, 2)


def _ours(C, problem, iters, backend, mass=None):
    from grounded_fast.ops import entropic_ot
    B, n, m = C.shape
    a = torch.full((B, n), 1.0 / n, device=C.device, dtype=C.dtype)
    b = torch.full((B, m), 1.0 / m, device=C.device, dtype=C.dtype)
    return lambda: entropic_ot(C, a, b, reg=0.05, problem=problem, mass=mass, max_iter=iters, check_every=0,
                               backend=backend, warn=False, history=False)


def _ours_features(x, y, iters, backend, backward=False):
    """entropic_ot_features on one (n, d) x (m, d) problem; with ``backward`` also the envelope
    gradient of the value w.r.t. the features."""
    from grounded_fast.ops import entropic_ot_features
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, device=x.device)
    b = torch.full((m,), 1.0 / m, device=x.device)

    def run():
        xr = x.detach().requires_grad_(backward)
        sol = entropic_ot_features(xr, y, a, b, reg=0.05, max_iter=iters, check_every=0, backend=backend, warn=False,
                                   history=False)
        if backward:
            sol.value.backward()
        return sol.value
    return run


def _ours_regime(C, iters, regime, backend="triton", problem=0, mass=0.0, reg_m=float("inf")):
    """A GPU backend's solver with a chosen regime (the op picks 'small' or 'stream' itself);
    ``problem`` 0 / 1 / 2: balanced / unbalanced (KL weight ``reg_m`` both sides) / partial (``mass``)."""
    from grounded_fast.ops import SolveSpec
    if backend == "cuda":
        from grounded_fast.ops.entropic_ot.backend_cuda import solve
    else:
        from grounded_fast.ops.entropic_ot.backend_triton import solve
    B, n, m = C.shape
    a = torch.full((B, n), 1.0 / n, device=C.device)
    b = torch.full((B, m), 1.0 / m, device=C.device)
    lu0, lv0 = (torch.zeros(*shape, device=C.device) for shape in ((B, n), (B, m)))
    mass_t = torch.full((B,), float(mass), device=C.device)
    reg_m = reg_m if problem == 1 else float("inf")
    spec = SolveSpec(problem, 0.05, reg_m, reg_m, True, iters, 0.0, 0)
    return lambda: solve(C, a, b, mass_t, lu0, lv0, spec, regime=regime)


def _ours_materialised(x, y, iters, backend):
    """The 'memory' route of choose_cost_source from features: C = cost_matrix(x, y) built inside the
    timed call, then entropic_ot."""
    from grounded_fast.ops import entropic_ot
    from grounded_fast.ot.costs import cost_matrix
    a = torch.full((1, x.shape[0]), 1.0 / x.shape[0], device=x.device)
    b = torch.full((1, y.shape[0]), 1.0 / y.shape[0], device=x.device)
    return lambda: entropic_ot(cost_matrix(x, y)[None], a, b, reg=0.05, max_iter=iters, check_every=0,
                               backend=backend, warn=False, history=False).value


def _timed(fn, device, rounds, label, notes):
    """median_time, or None with a note when the backend fails (one failure must not lose the rest)."""
    try:
        return median_time(fn, device, rounds=rounds)
    except Exception as exc:  # noqa: BLE001 - recorded in the results, not hidden
        notes.append(f"{label} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        print(notes[-1], file=sys.stderr, flush=True)
        return None


def _per_iteration(make, iters, device, rounds, label, notes):
    """Timings of ``make(iters)()`` and ``make(2 * iters)()`` plus the time per iteration between
    them, (time of 2 x iters - time of iters) / iters: an iteration without the call's fixed costs
    (input checks, launches, plan and objective). None with a note when the backend fails."""
    t = _timed(make(iters), device, rounds, label, notes)
    t2 = _timed(make(2 * iters), device, rounds, f"{label} x2", notes)
    if t is None or t2 is None:
        return None
    return t, t2["median_s"], (t2["median_s"] - t["median_s"]) / iters


def _pot():
    try:
        import ot
        return ot
    except ImportError:
        return None


def _reference(C, problem, iters, mass=None, reg_m=math.inf):
    """The float64 torch reference on the same (rounded) C, uniform weights, ``iters`` iterations:
    what every timed solve of that C is checked against."""
    from grounded_fast.ops import entropic_ot
    B, n, m = C.shape
    a = torch.full((B, n), 1.0 / n, device=C.device, dtype=torch.float64)
    b = torch.full((B, m), 1.0 / m, device=C.device, dtype=torch.float64)
    return entropic_ot(C.double(), a, b, reg=0.05, problem=problem, mass=mass, reg_m=(reg_m, reg_m), max_iter=iters,
                       check_every=0, backend="torch", warn=False, history=False)


def _errors(out, ref) -> dict:
    """Relative errors of a solve's plan (when it has one) and value against the reference."""
    if not isinstance(out, tuple):  # a value alone (the feature paths)
        return {"value": rel_err(out, ref.value)}
    return {"plan": rel_err(out[0], ref.plan), "value": rel_err(out[4], ref.value)}


# check limit: far above float32 rounding over the timed iterations (the tests hold the tight
# tolerances), far below what a broken kernel gives; an output in a 16-bit dtype (the op returns
# the plan and value of a bfloat16 C in bfloat16) is allowed its own rounding, the dtype's eps
CHECK_LIMIT = 1e-3


def _checked(row: dict, out, ref) -> dict:
    errors = _errors(out, ref)
    dtype = (out[0] if isinstance(out, tuple) else out).dtype
    limit = max(CHECK_LIMIT, torch.finfo(dtype).eps)
    return {**row, "errors": errors, "check": check_label(errors, dict.fromkeys(errors, limit))}


def render_markdown(res: dict) -> str:
    """The markdown table of a results dict (as written to the .json)."""
    ys = res["yardsticks"]
    lines = [f"# GPU OT benchmarks on {res['device']}", "",
             f"commit `{short_commit(res['commit'])}`, {res['date']}, torch {res['torch']}, "
             f"triton {res['triton']}{' (SMOKE sizes)' if res['smoke'] else ''}", "",
             f"Measured copy bandwidth {ys['copy_bandwidth_Bps'] / 1e9:.0f} GB/s (bytes read + written); the bandwidth "
             "fraction is bytes of C read per iteration / time per iteration over it.", "",
             "| case | backend | median | per iteration | vs POT | bandwidth fraction | check |",
             "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        vs = "-" if r.get("vs_pot") is None else f"{r['vs_pot']:.0f}x (target {r['target_vs_pot']}x)"
        bwf = "-" if "bandwidth_fraction" not in r else f"{r['bandwidth_fraction']:.2f}"
        if "target_bandwidth_fraction" in r:
            bwf += f" (target {r['target_bandwidth_fraction']})"
        per = "-" if "us_per_iter" not in r else f"{r['us_per_iter']:.2f} us (target 5)"
        if "call_us_per_iter" in r:
            per += f"; whole call / it: {r['call_us_per_iter']:.2f} us"
        if "s_per_iter" in r:
            per = f"{r['s_per_iter'] * 1e3:.3f} ms"
            if r.get("vs_pot_per_iter") is not None:
                vs = f"{r['vs_pot']:.1f}x / {r['vs_pot_per_iter']:.1f}x (target {r['target_vs_pot']}x)"
        if "vs_geomloss_per_iter" in r:
            vs = f"GeomLoss {r['vs_geomloss_per_iter']:.1f}x per iteration (target 3x)"
        if r.get("cost_source") == "features" and r.get("vs_memory_path") is not None:
            mem = f"{r['vs_memory_path']:.2f}x our C-from-memory"
            vs = mem if vs == "-" else f"{vs}; {mem}"
        lines.append(f"| {r['case']} | {r['backend']} | {r['median_s'] * 1e3:.2f} ms | {per} | {vs} | {bwf} | "
                     f"{r.get('check', '-')} |")
    lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def case_1(ctx) -> None:
    """Partial, GroundedBERT's shape."""
    device, log, ot = ctx.device, ctx.log, ctx.ot
    B1, n1, m1, it1 = (8, 16, 24, 50) if ctx.smoke else (128, 64, 197, 1000)
    C1 = _cosine_cost(B1, n1, m1, 384 if not ctx.smoke else 16, device)
    pot1 = None
    if ot is not None:
        k, it_pot = (2, 20) if ctx.smoke else (4, 100)
        a1 = torch.full((n1,), 1.0 / n1, device=device)
        b1 = torch.full((m1,), 1.0 / m1, device=device)
        t = median_time(lambda: [ot.partial.entropic_partial_wasserstein(a1, b1, C1[i], 0.05, m=0.5,
                                                                        numItermax=it_pot, stopThr=-1)
                                 for i in range(k)], device, rounds=2)
        pot1 = t["median_s"] * (B1 / k) * (it1 / it_pot)
        log.note(f"case 1 POT: {k}/{B1} problems x {it_pot}/{it1} iterations timed, scaled linearly")
    ref = _reference(C1, ctx.PARTIAL, it1, mass=0.5)
    for bk in ctx.backends:
        make = lambda k: _ours(C1, ctx.PARTIAL, k, bk, mass=0.5)  # noqa: E731
        timed = _per_iteration(make, it1, device, 5, f"case 1 {bk}", log.notes)
        if timed is None:
            continue
        t, t2, per_it = timed
        log.add(_checked({"case": f"1 partial B={B1} {n1}x{m1} cosine, {it1} it", "backend": bk, **t,
                          "median_2x_s": t2, "call_us_per_iter": t["median_s"] / it1 * 1e6,
                          "us_per_iter": per_it * 1e6, "target_us_per_iter": 5.0, "pot_s": pot1,
                          "vs_pot": None if pot1 is None else pot1 / t["median_s"], "target_vs_pot": 1000},
                         make(it1)(), ref))
    log.note("case 1: per iteration = (time of 2 x it - time of it) / it (the whole call / it beside it); "
             "'vs POT' compares whole calls")


def case_2(ctx) -> None:
    """Balanced, large given C: the bandwidth target and POT solve_batch."""
    device, log, ot = ctx.device, ctx.log, ctx.ot
    B2, n2, it2 = (2, 300, 10) if ctx.smoke else (16, 4096, 50)
    C2 = torch.rand(B2, n2, n2, device=device)
    pot2 = pot2_it = None
    if ot is not None and hasattr(ot, "batch"):
        a2 = torch.full((B2, n2), 1.0 / n2, device=device)
        pot_t = [median_time(lambda: ot.batch.solve_batch(C2, 0.05, a2, a2, max_iter=k * it2, tol=0,
                                                          method="log_sinkhorn"), device, rounds=2)["median_s"]
                 for k in (1, 2)]
        pot2, pot2_it = pot_t[0], (pot_t[1] - pot_t[0]) / it2
    # the float32 C for every backend; a bfloat16 C (half the bytes) for Triton, which reads it;
    # and both backends' one-read regime ('fused': one read of C per iteration instead of two)
    C2h = C2.to(torch.bfloat16)
    runs2 = [(bk, C2, None) for bk in ctx.backends]
    if "triton" in ctx.backends:
        runs2 += [("triton", C2h, None)]
    runs2 += [(bk, C2x, "fused") for bk in ctx.backends if bk in ("cuda", "triton") for C2x in (C2, C2h)]
    refs = {}
    for bk, C2x, regime in runs2:
        label = ("" if C2x.dtype == torch.float32 else ", bfloat16 C") + (f", regime {regime}" if regime else "")
        run = (lambda k: _ours(C2x, ctx.BALANCED, k, bk)) if regime is None else \
            (lambda k: _ours_regime(C2x, k, regime, bk))
        timed = _per_iteration(run, it2, device, 3, f"case 2 {bk}{label}", log.notes)
        if timed is None:
            continue
        t, t2, per_it = timed
        reads = 2 if regime is None else 1  # reads of C from device memory per iteration
        bw = reads * C2x.numel() * C2x.element_size() / per_it
        if C2x.dtype not in refs:
            refs[C2x.dtype] = _reference(C2x, ctx.BALANCED, it2)
        log.add(_checked({"case": f"2 balanced B={B2} {n2}x{n2} given C{label}, {it2} it", "backend": bk, **t,
                          "median_2x_s": t2, "s_per_iter": per_it, "c_reads_per_iter": reads,
                          "bandwidth_Bps": bw, "bandwidth_fraction": bw / ctx.ys["copy_bandwidth_Bps"],
                          "target_bandwidth_fraction": 0.7, "pot_s": pot2, "pot_s_per_iter": pot2_it,
                          "vs_pot": None if pot2 is None else pot2 / t["median_s"],
                          "vs_pot_per_iter": None if pot2_it is None else pot2_it / per_it, "target_vs_pot": 10},
                         run(it2)(), refs[C2x.dtype]))
    log.note("case 2: per iteration = (time of 2 x it - time of it) / it, i.e. without the one-off plan and "
             "objective; the bandwidth fraction is from it (bytes of C read from device memory per iteration: "
             "two reads, one in the fused regime); 'vs POT' compares whole solves (plan included) and, after "
             "the slash, iterations")


def case_3(ctx) -> None:
    """Balanced from features: C from memory (materialised here) and C recomputed, vs GeomLoss."""
    device, log = ctx.device, ctx.log
    n3, d3, it3 = (256, 8, 10) if ctx.smoke else (8192, 64, 50)
    g = torch.Generator(device=device).manual_seed(3)
    x, y = torch.randn(n3, d3, generator=g, device=device), torch.randn(n3, d3, generator=g, device=device)
    C3 = (torch.cdist(x, y) ** 2 / 2)[None]
    x3, y3 = x / 2 ** 0.5, y / 2 ** 0.5  # our sqeuclidean has no 1/2: |x3 - y3|^2 = |x - y|^2 / 2
    from grounded_fast.ops import choose_cost_source
    pick = choose_cost_source(n3, n3, d3, x.dtype, device=device)
    log.note(f"case 3: choose_cost_source(n={n3}, m={n3}, d={d3}, float32, {device.type}) -> {pick!r}")
    ref = _reference(C3, ctx.BALANCED, it3)
    case3 = []
    for bk in ctx.backends:
        run = _ours(C3, ctx.BALANCED, it3, bk)
        t = _timed(run, device, 3, f"case 3 memory {bk}", log.notes)
        if t is None:
            continue
        case3.append(_checked({"case": f"3 balanced {n3}x{n3} from d={d3} features (C given), {it3} it",
                               "backend": bk, "cost_source": "memory", **t}, run(), ref))
        log.add(case3[-1])
    memory_s = {r["backend"]: r["median_s"] for r in case3}
    for bk in ctx.backends:  # the whole 'memory' route from the features, C built inside the timing
        run = _ours_materialised(x3, y3, it3, bk)
        t = _timed(run, device, 3, f"case 3 materialised {bk}", log.notes)
        if t is None:
            continue
        case3.append(_checked({"case": f"3 balanced {n3}x{n3} from d={d3} features (C built from them, then read), "
                                       f"{it3} it", "backend": bk, "cost_source": "memory", **t}, run(), ref))
        log.add(case3[-1])
    # the feature kernels: 'cuda' and 'triton'; on a CPU-only run the chunked torch passes stand in
    feat_backends = [b for b in ctx.backends if b in ("cuda", "triton")] or (["torch"] if device.type == "cpu" else [])
    for bk in feat_backends:
        run = _ours_features(x3, y3, it3, bk)
        t = _timed(run, device, 3, f"case 3 features {bk}", log.notes)
        tb = _timed(_ours_features(x3, y3, it3, bk, backward=True), device, 3, f"case 3 features+backward {bk}",
                    log.notes)
        if t is None or tb is None:
            continue
        mem = memory_s.get(bk if bk != "torch" else "cpu")
        case3.append(_checked({"case": f"3 balanced {n3}x{n3} from d={d3} features (recomputed), {it3} it",
                               "backend": bk, "cost_source": "features", **t, "with_backward_s": tb["median_s"],
                               "memory_path_s": mem, "vs_memory_path": None if mem is None else mem / t["median_s"],
                               "target_vs_geomloss_per_iter": 3}, run(), ref))
        log.add(case3[-1])
    try:
        from geomloss import SamplesLoss
        try:
            from geomloss.sinkhorn_divergence import epsilon_schedule
        except ImportError:  # geomloss >= 0.3.1 keeps the Sinkhorn helpers under _legacy
            from geomloss._legacy.sinkhorn_divergence import epsilon_schedule
    except ImportError:
        log.note("GeomLoss not installed: case 3 has no peer")
        return
    # GeomLoss anneals eps over a schedule of its own (cost |x - y|^2 / 2, final eps = blur^2);
    # the comparison is per Sinkhorn iteration, with its final eps equal to ours (0.05).
    try:
        blur, scaling = 0.05 ** 0.5, 0.9
        diameter = float((torch.cat([x, y]).amax(0) - torch.cat([x, y]).amin(0)).norm())
        steps = len(epsilon_schedule(2, diameter, blur, scaling))
        loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, backend="tensorized")
        t = median_time(lambda: loss(x, y), device, rounds=3)
        per_geom = t["median_s"] / steps
        for r in case3:
            r["geomloss_s_per_iter"] = per_geom
            r["vs_geomloss_per_iter"] = per_geom / (r["median_s"] / it3)
        log.note(f"case 3 GeomLoss tensorized: {steps} iterations (eps schedule, scaling {scaling}), "
                 f"{per_geom * 1e3:.3f} ms per iteration; ratio per iteration (target 3x)")
        log.write(announce=False)
    except Exception as exc:  # a peer failing must not lose our results
        log.note(f"GeomLoss comparison failed: {type(exc).__name__}: {exc}")


def case_4(ctx) -> None:
    """Partial and unbalanced at case 2's size, two reads of C an iteration against one."""
    device, log = ctx.device, ctx.log
    B4, n4, it4 = (2, 48, 4) if ctx.smoke else (16, 4096, 50)
    C4 = torch.rand(B4, n4, n4, device=device)
    for kind, problem, extra in (("partial m=0.5", ctx.PARTIAL, dict(mass=0.5)),
                                 ("unbalanced reg_m=1", ctx.UNBALANCED, dict(reg_m=1.0))):
        ref = None
        for bk in [b for b in ctx.backends if b in ("cuda", "triton")]:
            for regime in ("stream", "fused"):
                run = lambda k: _ours_regime(C4, k, regime, bk, problem, **extra)  # noqa: E731
                timed = _per_iteration(run, it4, device, 3, f"case 4 {kind} {bk} {regime}", log.notes)
                if timed is None:
                    continue
                t, t2, per_it = timed
                reads = 2 if regime == "stream" else 1
                bw = reads * C4.numel() * C4.element_size() / per_it
                if ref is None:
                    ref = _reference(C4, problem, it4, **extra)
                log.add(_checked({"case": f"4 {kind} B={B4} {n4}x{n4} given C, regime {regime}, {it4} it",
                                  "backend": bk, **t, "median_2x_s": t2, "s_per_iter": per_it,
                                  "c_reads_per_iter": reads, "bandwidth_Bps": bw,
                                  "bandwidth_fraction": bw / ctx.ys["copy_bandwidth_Bps"]}, run(it4)(), ref))
    log.note("case 4: per iteration as in case 2; no stop tests (check_every 0), so partial's plan-change "
             "pass is not timed")


CASES = {"1": case_1, "2": case_2, "3": case_3, "4": case_4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", default="1,2,3,4", help="comma-separated cases of 1,2,3,4, run in the order given")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}: choose among {sorted(CASES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    import grounded_fast  # noqa: F401
    from grounded_fast import _backend
    from grounded_fast.ops import BALANCED, PARTIAL, UNBALANCED
    usable = {b: _backend.backend_usable(b, device) for b in _backend.BACKENDS}
    backends = [b for b in args.backends.split(",") if usable.get(b)]
    skipped = [b for b in args.backends.split(",") if b and not usable.get(b)]
    ys = yardsticks(device, args.smoke)
    name = device_name(device)
    log = ResultLog(args.out or result_stem(name, "gpu-ot-"), render_markdown, name, args.smoke, ys, skipped)
    ctx = SimpleNamespace(device=device, backends=backends, smoke=args.smoke, ot=_pot(), ys=ys, log=log,
                          BALANCED=BALANCED, PARTIAL=PARTIAL, UNBALANCED=UNBALANCED)
    if ctx.ot is None:
        log.note("POT not installed: no POT ratios")
    for c in cases:
        CASES[c](ctx)
    log.note("check: each timed solve's plan and value against the float64 torch reference on the same C "
             f"(relative errors; 'WRONG' over {CHECK_LIMIT:g}, or the eps of a 16-bit output dtype)")
    log.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
