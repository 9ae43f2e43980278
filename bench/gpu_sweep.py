"""Tile-configuration sweeps of the Triton kernels on a GPU: the measurements behind the CONFIG
constants of csrc/ot/triton/sinkhorn_stream.py, sinkhorn_fused.py and the agreement kernel's BV.

    python bench/gpu_sweep.py stream   # row / column LSE passes, B=16 x 4096^2, float32 and bfloat16 C
    python bench/gpu_sweep.py fused    # the one-pass regime's two kernels (+ the merge), same problem
    python bench/gpu_sweep.py cross    # the agreement products, M=40, N=1000, V=30522
    python bench/gpu_sweep.py agree    # a whole agreement chunk (same sizes): two passes vs one pass
    python bench/gpu_sweep.py attention  # Triton attention JSD, M=40, R=20000, S=72: tiles, warps, programs
    python bench/gpu_sweep.py small    # Triton persistent OT kernel, partial B=128 x 64x197 and 128x256:
                                       # warps per program, and the streaming regime beside it

Each configuration is timed alone with triton.testing.do_bench (median); the stream and fused
sweeps report the fraction of the measured copy bandwidth (bytes of C read from device memory /
time), the fused one also the time of one whole iteration; the agree sweep the fraction of one
read of the logits. Results: bench/results/
gpu-sweep-<kind>-<device>.json and .md (the best configurations first). Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gpu_analysis import copy_bandwidth, device_name, git_commit, result_stem, write_results  # noqa: E402


def _time(fn):
    from triton.testing import do_bench
    try:
        return do_bench(fn, warmup=10, rep=60)
    except Exception as exc:  # noqa: BLE001 - an infeasible configuration is a result too
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def sweep_stream(bw: float) -> list:
    import triton
    import triton.language as tl
    from grounded_fast.triton_kernels.common import device_scalars
    from grounded_fast.triton_kernels.ot import sinkhorn_stream as ss
    B, n = 16, 4096
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        C = torch.rand(B, n, n, device="cuda").to(dt)
        v, out = torch.randn(B, n, device="cuda"), torch.empty(B, n, device="cuda")
        inv = device_scalars(C.device, 20.0)
        for kern, name in ((ss._row_lse, "row"), (ss._col_lse, "col")):
            for BR, BT, warps in itertools.product((16, 32, 64, 128), (32, 64, 128, 256), (4, 8)):
                if not 2048 <= BR * BT <= 16384:
                    continue
                ms = _time(lambda: kern[(B, triton.cdiv(n, BR))](C, v, out, n, n, inv, DT=tl.float32, BR=BR, BT=BT,
                                                                   num_warps=warps))
                rows.append({"dtype": str(dt), "pass": name, "BR": BR, "BT": BT, "warps": warps, "ms": ms,
                             "fraction": C.numel() * C.element_size() / (ms * 1e-3) / bw if isinstance(ms, float)
                             else None})
                print(rows[-1], flush=True)
    return rows


def sweep_fused(bw: float, device: str = "cuda", sizes=(16, 4096, 4096)) -> list:
    """One fused iteration (``fused_pass``: the kernel and the merge) over the knobs of
    both kernels: rows in registers (RESIDENT_TILE, RESIDENT_PER_THREAD -> warps, RESIDENT_PER_SM)
    and rows streamed twice through L2 (CONFIG, programs per SM)."""
    import triton
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    B, n, m = sizes
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device == "cuda" else 2
    saved = (sf.RESIDENT_TILE, dict(sf.RESIDENT_PER_THREAD), sf.RESIDENT_PER_SM, sf.CONFIG)
    rows = []
    try:
        for dt in (torch.float32, torch.bfloat16):
            C = torch.rand(B, n, m, device=device).to(dt)
            lv, la = torch.randn(B, m, device=device), torch.full((B, n), -math.log(n), device=device)
            lu, act = torch.zeros(B, n, device=device), torch.ones(B, dtype=torch.bool, device=device)
            configs = [("resident", tile, per_thread, per_sm) for tile, per_thread, per_sm in
                       itertools.product((4096, 8192, 16384), (16, 32, 64), (1, 2, 4, 8))]
            configs += [("l2", (BR, BT, warps), None, per_sm) for BR, BT, warps, per_sm in
                        itertools.product((4, 8, 16), (256, 512, 1024), (4, 8), (2, 4, 8)) if BR * BT <= 16384]
            for kernel, tile, per_thread, per_sm in configs:
                if kernel == "resident":
                    sf.RESIDENT_TILE, sf.RESIDENT_PER_THREAD[4], sf.RESIDENT_PER_SM = tile, per_thread, per_sm
                    BR, BM, warps = sf.resident_layout(n, m, torch.float32)
                    P = sf.programs_per_problem(B, n, BR, C.device, per_sm)
                    knobs = {"BR": BR, "BT": BM, "warps": warps}
                else:
                    sf.CONFIG = tile
                    P = sf.programs_per_problem(B, n, tile[0], C.device, per_sm)
                    knobs = dict(zip(("BR", "BT", "warps"), tile))
                try:
                    step = sf.fused_pass(C, 0.05, programs=P, resident=kernel == "resident")
                    ms = _time(lambda: step(lv, lu, la, act))
                except Exception as exc:  # noqa: BLE001 - an infeasible configuration is a result too
                    ms = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                rows.append({"dtype": str(dt), "form": kernel, **knobs, "programs_per_sm": per_sm,
                             "programs_per_problem": triton.cdiv(n, triton.cdiv(triton.cdiv(n, P), knobs["BR"])
                                                                 * knobs["BR"]),
                             "ms_per_iteration": ms, "fraction_one_read": C.numel() * C.element_size()
                             / (ms * 1e-3) / bw if isinstance(ms, float) else None})
                print(rows[-1], flush=True)
            rows += _sweep_cuda_fused(C, lv, lu, la, act, bw, sms)
    finally:
        sf.RESIDENT_TILE, per_thread, sf.RESIDENT_PER_SM, sf.CONFIG = saved
        sf.RESIDENT_PER_THREAD.clear()
        sf.RESIDENT_PER_THREAD.update(per_thread)
    return rows


def _sweep_cuda_fused(C, lv, lu, la, act, bw: float, sms: int) -> list:
    """The CUDA fused pass (kernel + merge) at 1 to 4 blocks per SM over the batch (cuda_ot.fused_pass's
    default: 2 where m <= 4096), where the CUDA extension is built."""
    from grounded_fast import _backend
    if C.device.type != "cuda" or not _backend.cuda_extension_available():
        return []
    from grounded_fast.ops.entropic_ot import backend_cuda as cuda_ot
    B, n, m = C.shape
    rows = []
    for per_sm in (1, 2, 3, 4):
        P = cuda_ot.fused_blocks(B, n, m, sms, per_sm)
        step = cuda_ot.fused_pass(C, 0.05, blocks=P)
        ms = _time(lambda: step(lv, lu, la, act))
        rows.append({"dtype": str(C.dtype), "form": "cuda", "BR": 1, "BT": m, "warps": 8, "programs_per_sm": per_sm,
                     "programs_per_problem": P, "ms_per_iteration": ms, "fraction_one_read":
                     C.numel() * C.element_size() / (ms * 1e-3) / bw if isinstance(ms, float) else None})
        print(rows[-1], flush=True)
    return rows


def sweep_cross(bw: float) -> list:
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    M, N, V = 40, 1000, 30522
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        z = torch.randn(M, N, V, device="cuda").to(dt)
        w = torch.ones(N, device="cuda")
        lse = torch.logsumexp(z.float(), -1).contiguous()
        for BV, warps, stages, per_sm in itertools.product((32, 64, 128), (4, 8), (2, 3), (1, 4)):
            per, progs = pa._slices(N, per_sm * torch.cuda.get_device_properties(0).multi_processor_count)
            part = torch.empty(progs, 64, 64, device="cuda")
            ms = _time(lambda: pa._cross[(progs,)](z, w, lse, part, M, N, V, per, BM=64, BV=BV, num_warps=warps,
                                                    num_stages=stages))
            rows.append({"dtype": str(dt), "BV": BV, "warps": warps, "stages": stages, "programs": progs, "ms": ms})
            print(rows[-1], flush=True)
    return rows


def sweep_agree(bw: float, device: str = "cuda", sizes=(40, 1000, 30522)) -> list:
    """One chunk of ``pairwise_agreement_triton`` (every kernel, the checks and torch's sums): the
    two-pass kernels at their CONFIG, the one-pass kernel over (BV, warps, stages), both over the
    number of programs per multiprocessor and with or without the aligned vector loads."""
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    M, N, V = sizes
    saved = dict(pa.ONE_PASS_CONFIG), pa.PROGRAMS_PER_SM, pa.VECTOR_LOADS
    rows = []
    try:
        for dt in (torch.float32, torch.bfloat16):
            g = torch.Generator(device=device).manual_seed(0)
            z = (3 * torch.randn(1, N, V, generator=g, device=device)
                 + torch.randn(M, N, V, generator=g, device=device)).to(dt)
            mask = torch.ones(N, dtype=torch.bool, device=device)
            configs = [("two_pass", None)] + [("one_pass", c) for c in itertools.product((16, 32, 64), (4, 8), (2, 3))]
            for (form, cfg), per_sm, vec in itertools.product(configs, (2, 4, 8), (True, False)):
                pa.PROGRAMS_PER_SM, pa.VECTOR_LOADS = per_sm, vec
                if cfg is not None:
                    pa.ONE_PASS_CONFIG[64] = cfg
                ms = _time(lambda: pa.pairwise_agreement_triton(z, mask, False, form == "one_pass"))
                bv, warps, stages = cfg if cfg else ("-", "-", "-")
                rows.append({"dtype": str(dt), "form": form, "BV": bv, "warps": warps, "stages": stages,
                             "programs_per_sm": per_sm, "vector_loads": vec, "ms": ms,
                             "fraction_one_read": z.numel() * z.element_size() / (ms * 1e-3) / bw
                             if isinstance(ms, float) else None})
                print(rows[-1], flush=True)
            del z
    finally:
        pa.ONE_PASS_CONFIG.update(saved[0])
        pa.PROGRAMS_PER_SM, pa.VECTOR_LOADS = saved[1], saved[2]
    return rows


def sweep_attention(bw: float, device: str = "cuda", sizes=(40, 20000, 72)) -> list:
    """``attention_pair_sums_triton`` (JSD, every kernel and torch's sums) over its CONFIG."""
    from grounded_fast.ops.analysis import ATTENTION_METRICS
    from grounded_fast.triton_kernels.analysis import attention_distance as ad
    M, R, S = sizes
    g = torch.Generator(device=device).manual_seed(1)
    attn = torch.softmax(torch.randn(M, R, S, generator=g, device=device), -1)
    w = torch.ones(R, dtype=torch.float64, device=device)
    empty = torch.empty(0, dtype=torch.bool, device=device)
    saved = dict(ad.CONFIG)
    rows = []
    try:
        for BI, warps, per_sm in itertools.product((8, 16, 32), (2, 4, 8), (2, 4, 8)):
            ad.CONFIG.update(BI=BI, num_warps=warps, programs_per_sm=per_sm)
            ms = _time(lambda: ad.attention_pair_sums_triton(attn, empty, w, ATTENTION_METRICS["jsd"]))
            rows.append({"dtype": str(attn.dtype), "BI": BI, "warps": warps, "programs_per_sm": per_sm, "ms": ms})
            print(rows[-1], flush=True)
    finally:
        ad.CONFIG.update(saved)
    return rows


def sweep_small(bw: float, device: str = "cuda", shapes=((128, 64, 197), (128, 128, 256)), iters=(200, 400)) -> list:
    """Partial OT (m = 0.5, costs in [0, 1]) at issue 3's case 1 and at the largest tile the
    persistent regime takes (32K entries): the persistent kernel over WARPS_LARGE_TILE, and the
    streaming regime beside it (the regime choice, sinkhorn_small.MAX_TILE). Microseconds per
    iteration between two iteration counts (no fixed costs)."""
    from grounded_fast.ops import PARTIAL, SolveSpec
    from grounded_fast.triton_kernels.ot import sinkhorn_small as sm
    from grounded_fast.triton_kernels.ot.sinkhorn_stream import sinkhorn_stream
    saved = sm.WARPS_LARGE_TILE
    rows = []
    try:
        for B, n, m in shapes:
            g = torch.Generator(device=device).manual_seed(0)
            C = torch.rand(B, n, m, generator=g, device=device)
            a, b = torch.full((B, n), 1.0 / n, device=device), torch.full((B, m), 1.0 / m, device=device)
            mass = torch.full((B,), 0.5, device=device)
            lu0, lv0 = torch.zeros(B, n, device=device), torch.zeros(B, m, device=device)
            for regime, warps in [("small", w) for w in (4, 8, 16, 32)] + [("stream", "-")]:
                solve = sm.sinkhorn_small if regime == "small" else sinkhorn_stream
                if regime == "small":
                    sm.WARPS_LARGE_TILE = warps
                ms = [_time(lambda: solve(C, a, b, mass, lu0, lv0, SolveSpec(PARTIAL, 0.05, max_iter=it, tol=0.0,
                                                                              check_every=0, history=0)))
                      for it in iters]
                ok = all(isinstance(t, float) for t in ms)
                rows.append({"dtype": str(C.dtype), "form": f"B={B} {n}x{m}", "regime": regime, "warps": warps,
                             "ms": ms[0] if ok else next(t for t in ms if not isinstance(t, float)),
                             "us_per_iteration": (ms[1] - ms[0]) * 1e3 / (iters[1] - iters[0]) if ok else None})
                print(rows[-1], flush=True)
    finally:
        sm.WARPS_LARGE_TILE = saved
    return rows


def render(res: dict) -> str:
    """Markdown: the five fastest configurations per dtype (and pass)."""
    key = {"fused": "ms_per_iteration", "small": "us_per_iteration"}.get(res["kind"], "ms")
    rows = res["rows"]
    def group(r):  # the stream sweep's pass, the agree sweep's form
        return r["dtype"], r.get("pass", r.get("form", ""))
    ok = sorted((r for r in rows if isinstance(r[key], float)), key=lambda r: (*group(r), r[key]))
    lines = [f"# Triton {res['kind']} sweep on {res['device']}", "", f"commit `{res['commit'][:12]}`, torch "
             f"{res['torch']}, triton {res['triton']}, copy bandwidth {res['copy_bandwidth_Bps'] / 1e9:.0f} GB/s", ""]
    lines += [f"- {n}" for n in res.get("notes", [])] + [""] * bool(res.get("notes"))
    for grp in sorted({group(r) for r in ok}):
        best = [r for r in ok if group(r) == grp][:5]
        lines += [f"## {' '.join(g for g in grp if g)}", "", "| " + " | ".join(best[0]) + " |",
                  "|" + "---|" * len(best[0])]
        lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
                  for r in best] + [""]
    failed = [r for r in rows if not isinstance(r[key], float)]
    if failed:
        lines += [f"{len(failed)} configurations failed (e.g. {failed[0]})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("stream", "fused", "cross", "agree", "attention", "small"))
    ap.add_argument("--out", default=None, help="output stem (default bench/results/gpu-sweep-<kind>-<device>)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_sweep.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton
    x = torch.empty(2 ** 28, device="cuda")  # 1 GiB of float32
    bw = copy_bandwidth(x, torch.empty_like(x))
    del x
    rows = {"stream": sweep_stream, "fused": sweep_fused, "cross": sweep_cross, "agree": sweep_agree,
            "attention": sweep_attention, "small": sweep_small}[args.kind](bw)
    name = device_name(torch.device("cuda"))
    stem = args.out or result_stem(name, f"gpu-sweep-{args.kind}-")
    res = {"kind": args.kind, "device": name, "commit": git_commit(), "torch": torch.__version__,
           "triton": triton.__version__, "copy_bandwidth_Bps": bw, "rows": rows}
    write_results(res, stem, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
