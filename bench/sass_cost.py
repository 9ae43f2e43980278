"""Static cost of the Triton agreement and attention kernels on a GPU, without one: compile for
sm_90 (Triton's own ptxas), disassemble (its cuobjdump), and count the instructions of the
innermost loop.

    python bench/sass_cost.py                    # one-pass kernel, every tile configuration
    python bench/sass_cost.py --kernel cross     # the two-pass kernels, as the launcher sets them
    python bench/sass_cost.py --kernel attention # the attention pair kernels (JSD), per pair and entry
    python bench/sass_cost.py --config fp32,64,32,4,3 --json   # one configuration, JSON rows
    python bench/sass_cost.py --kernel fused     # the OT fused regime's kernels, Triton and CUDA (nvcc), case 2

For each configuration: registers, spill bytes (STACK), shared memory, and the instructions of one
iteration of the innermost loop -- the hot path, leaving out the one-pass kernel's rare branch (a
row's maximum grew: the argmax and rescaling) -- as lane-instructions per logit entry:
instructions x 32 x warps / entries per iteration. An H100 issues about 132 x 4 x 32 x 1.755e9 =
2.96e13 lane-instructions per second, so at 40 models, 20 000 positions and V = 30 522 (the
benchmark's case A; the tiled kernels compute 64 rows) each lane-instruction per entry is about 1.3
ms of issue time (0.8 ms for _row_stats, one row per model) against a floor of 37.9 ms. For the
attention kernels (case B) the unit is a pair and source entry of a tile, and the time counts the
6 tiles of 16 x 16 pairs that run for 40 models, against a floor of 2.34 ms. It is a bound on one
resource, not a timing: memory, the tensor cores and latency are not modelled (bench/gpu_sweep.py
agree times the same configurations on a GPU). For the fused OT kernel the unit is an entry of C and
the time is one Sinkhorn iteration of bench/gpu_ot.py case 2 (B=16 x 4096^2), against ~0.36 ms for
reading its C once at the copy bandwidth.
Results: bench/results/sass-cost-analysis.md, bench/results/sass-cost-ot.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUE_RATE = 132 * 4 * 32 * 1.755e9   # H100 SXM lane-instructions / s
# entries each kernel computes for the benchmark's cases (the issue time's multiplier)
CASE_A_TILED = 64 * 20000 * 30522     # case A: 64 tile rows (40 models padded) x positions x vocabulary
CASE_A_ROWS = 40 * 20000 * 30522      # _row_stats: one row per model
CASE_B_PAIRS = 20000 * 6 * 256 * 80   # case B: rows x the 6 tiles of 16 x 16 pairs that run x 80 sources


def _compile(fn, signature: dict, constexprs: dict, warps: int, stages: int, aligned=()) -> tuple[str, str]:
    """(resource usage, SASS) of ``fn`` for sm_90. ``aligned``: arguments a launch passes as multiples
    of 16 (pointers from torch, sizes like 4096), which the JIT specialises on: without the hint the
    loads of a row-major tile are not vectorised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from grounded_fast.triton_kernels.common.fast_math import LAUNCH  # the options the launches pass
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in aligned}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages, **LAUNCH))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        return _disassemble(f.name)


def _disassemble(cubin: str) -> tuple[str, str]:
    """(resource usage, SASS) of a cubin file, by the cuobjdump that ships with Triton."""
    import triton
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return tuple(subprocess.run([cuobjdump, flag, cubin], capture_output=True, text=True, check=True).stdout
                 for flag in ("-res-usage", "-sass"))


def _opcode(text: str) -> str:
    """'FADD' for '@!P0 FADD.FTZ R1, R2, R3' (no predicate, no modifiers)."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def _instructions(sass: str) -> list[tuple[int, str]]:
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def hot_loop(sass: str) -> tuple[int, collections.Counter]:
    """(instructions, opcode counts) of one iteration of the innermost loop (a conditional backward
    branch with no other inside), without the body of its forward conditional branches.

    Only a conditional branch closes a loop: the compiler may move a rare block out of line, after
    the function's body, and end it with an unconditional jump back into the loop (Triton 3.8 does
    so for the one-pass kernel's rescaling branch); that jump spans most of the code and is no loop.
    """
    ins = _instructions(sass)
    branches, loops = [], []
    for addr, text in ins:
        m = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if m:
            tgt = int(m.group(1), 16)
            branches.append((addr, tgt))
            if tgt < addr and text.lstrip().startswith("@"):
                loops.append((tgt, addr))
    inner = [(lo, hi) for lo, hi in loops
             if not any(lo <= l2 and h2 <= hi and (l2, h2) != (lo, hi) for l2, h2 in loops)]
    if not inner:
        raise RuntimeError("no loop found")
    lo, hi = max(inner, key=lambda r: r[1] - r[0])  # the V loop: the longest innermost loop
    skipped = [(addr + 16, tgt - 16) for addr, tgt in branches if lo < addr < hi and addr < tgt <= hi]
    counts = collections.Counter()
    for addr, text in ins:
        if lo <= addr <= hi and not any(a <= addr <= b for a, b in skipped):
            counts[_opcode(text)] += 1
    return sum(counts.values()), counts


AGREE_SIG = {"z_ptr": "*fp32", "w_ptr": "*fp32", "lse_ptr": "*fp32", "top_ptr": "*i32", "ent_ptr": "*fp32",
             "bad_ptr": "*i32", "out_ptr": "*fp32", "M": "i32", "N": "i32", "V": "i32", "per_prog": "i32"}


def one_pass_rows(configs) -> list[dict]:
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    rows = []
    for dtype, BM, BV, warps, stages in configs:
        bf16 = dtype == "bf16"
        sig = dict(AGREE_SIG, z_ptr=f"*{dtype}")
        const = dict(BM=BM, BV=BV, BF16_Z=bf16, VEC=16 // (2 if bf16 else 4), ALIGN=16, SUM_COL=not bf16)
        rows.append(_row("one_pass", dtype, (BM, BV, warps, stages), BM * BV, warps, CASE_A_TILED,
                         *_compile(pa._stats_cross, sig, const, warps, stages)))
    return rows


def two_pass_rows(dtypes) -> list[dict]:
    from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
    rows = []
    for dtype in dtypes:
        vec = 16 // (2 if dtype == "bf16" else 4)
        sig = {k: v for k, v in AGREE_SIG.items() if k not in ("out_ptr", "M", "per_prog")}
        sig["z_ptr"] = f"*{dtype}"
        rows.append(_row("row_stats", dtype, (1, 1024, 4, 3), 1024, 4, CASE_A_ROWS,
                         *_compile(pa._row_stats, sig, dict(BV=1024, ENT=False, VEC=vec, ALIGN=16), 4, 3)))
        sig = {"z_ptr": f"*{dtype}", "w_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32",
               "N": "i32", "V": "i32", "per_prog": "i32", "n_tiles": "i32"}
        rows.append(_row("cross", dtype, (64, 64, 4, 3), 64 * 64, 4, CASE_A_TILED,
                         *_compile(pa._cross, sig, dict(BM=64, BV=64, TILED=False, VEC=vec, ALIGN=16), 4, 3)))
    return rows


ATTN_SIG = {"x_ptr": "*fp32", "smask_ptr": "*i8", "M": "i32", "R": "i32", "S": "i32", "per_prog": "i32",
            "n_tiles": "i32"}


def attention_rows() -> list[dict]:
    """The attention kernels for case B (JSD, M = 40, R = 20 000, S = 72: tiles of 16 x 16 models, 16
    sources a step), per pair and source entry of a tile (16 x 16 x 16 per iteration)."""
    from grounded_fast.triton_kernels.analysis import attention_distance as ad
    BI, BS, warps = ad.CONFIG["BI"], 16, ad.CONFIG["num_warps"]
    const = dict(METRIC=3, HAS_MASK=False, BI=BI, BS=BS)
    lin = dict(ATTN_SIG, scale_ptr="*fp32", out_ptr="*fp32", NB="i32")
    per_row = dict(ATTN_SIG, w_ptr="*fp32", scale_ptr="*fp32", nh_ptr="*fp32", out_ptr="*fp32")
    rows = []
    for name, fn, sig in (("attention _pairs_linear", ad._pairs_linear, lin), ("attention _pairs", ad._pairs, per_row)):
        rows.append(_row(name, "fp32", (BI, BS, warps, 3), BI * BI * BS, warps, CASE_B_PAIRS,
                         *_compile(fn, {k: sig[k] for k in fn.arg_names if k not in const}, const, warps, 3)))
    return rows


FUSED_SIG = {"C_ptr": "*fp32", "lv_ptr": "*fp32", "la_ptr": "*fp32", "lu_ptr": "*fp32", "out_ptr": "*fp32",
             "act_ptr": "*i1", "pmx_ptr": "*fp32", "psm_ptr": "*fp32", "n": "i32", "m": "i32", "rows_per_prog": "i32",
             "n_prog": "i32", "scalars_ptr": "*fp64"}
CASE_2_ITERATION = 16 * 4096 * 4096   # bench/gpu_ot.py case 2: entries of C one Sinkhorn iteration reads


def fused_rows() -> list[dict]:
    """The fused OT regime's resident kernel as it runs on case 2 (B=16 x 4096^2: blocks of 2 rows of
    4096 columns, float32 or bfloat16 C), balanced and capped (partial) row updates; per entry of C,
    and the issue time of one Sinkhorn iteration (one read of C: its floor is ~0.36 ms at an H100's
    copy bandwidth)."""
    import torch
    import triton.language as tl
    from grounded_fast.triton_kernels.ot import sinkhorn_fused as sf
    BR, BM, warps = sf.resident_layout(4096, 4096, torch.float32)
    rows = []
    for dtype in ("fp32", "bf16"):
        for name, scaled, cap in (("_resident_rows", False, False), ("_resident_rows capped", True, True)):
            const = dict(DT=tl.float32, BR=BR, BM=BM, SCALED=scaled, CAP=cap)
            rows.append(_row(name, dtype, (BR, BM, warps, 3), BR * BM, warps, CASE_2_ITERATION,
                             *_compile(sf._resident_rows, dict(FUSED_SIG, C_ptr=f"*{dtype}"), const, warps, 3,
                                       aligned=list(FUSED_SIG))))
    return rows


CUDA_TYPES = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}


def cuda_fused_rows() -> list[dict]:
    """The CUDA backend's fused kernel (csrc/ot/cuda/sinkhorn_fused.cu, nvcc for sm_90) at 16 columns a
    thread (rows of 4096: case 2): the whole row loop of fused_rows_kernel, every path of it (its
    per-entry branches are taken on live entries), per entry of C (a thread does 16 of a row)."""
    import shutil
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc is not on the PATH")
    csrc = os.path.join(os.path.dirname(HERE), "csrc")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "fused.cubin")
        subprocess.run([nvcc, "-cubin", "-O3", "-std=c++17", "-I", csrc, "-gencode", "arch=compute_90,code=sm_90",
                        "-o", cubin, os.path.join(csrc, "ot", "cuda", "sinkhorn_fused.cu")], check=True,
                       capture_output=True)
        res, sass = _disassemble(cubin)
    usage = {m.group(1): (int(m.group(2)), int(m.group(3)))
             for m in re.finditer(r"Function (\S+):\s*REG:(\d+) STACK:(\d+)", res)}
    rows = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name = part.split("\n")[0].strip()
        m = re.search(r"fused_rows_kernelI(f|6__half|13__nv_bfloat16)Li(\d+)E", name)
        if not m or m.group(2) != "16":
            continue
        ins = _instructions(part)
        loops = [(int(b.group(1), 16), a) for a, t in ins for b in [re.search(r"BRA\s.*?0x([0-9a-f]+)", t)]
                 if b and int(b.group(1), 16) < a]
        lo, hi = max(loops, key=lambda r: r[1] - r[0])
        counts = collections.Counter(_opcode(t) for a, t in ins if lo <= a <= hi)
        n = sum(counts.values())
        regs, stack = usage.get(name, (0, 0))
        rows.append({"kernel": "fused_rows_kernel (CUDA)", "dtype": CUDA_TYPES[m.group(1)], "config": (16, 256),
                     "regs": regs, "stack": stack, "hot": n, "per_entry": n / 16,
                     "case_ms": n / 16 * CASE_2_ITERATION / ISSUE_RATE * 1e3,
                     "mix": ", ".join(f"{k} {v}" for k, v in counts.most_common(12))})
    return rows


def _row(kernel, dtype, config, entries, warps, case_entries, res, sass) -> dict:
    """``entries``: entries one loop iteration computes; ``case_entries``: entries of the benchmark case."""
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
    n, counts = hot_loop(sass)
    per_entry = n * 32 * warps / entries
    return {"kernel": kernel, "dtype": dtype, "config": config, "regs": int(usage.group(1)),
            "stack": int(usage.group(2)), "hot": n, "per_entry": per_entry,
            "case_ms": per_entry * case_entries / ISSUE_RATE * 1e3,
            "mix": ", ".join(f"{k} {v}" for k, v in counts.most_common(12))}


def markdown(rows) -> str:
    out = ["| kernel | input | configuration | registers | spill bytes | hot loop | per entry "
           "| issue time (its case) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['kernel']} | {r['dtype']} | {r['config']} | {r['regs']} | {r['stack']} | {r['hot']} | "
                   f"{r['per_entry']:.1f} | {r['case_ms']:.3g} ms |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=["one_pass", "cross", "attention", "all", "fused"], default="all",
                    help="all: the analysis kernels; fused: the OT fused regime's kernels (Triton and CUDA)")
    ap.add_argument("--config", action="append", default=[],
                    help="dtype,BM,BV,warps,stages of the one-pass kernel (repeatable; replaces the sweep)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (and write no file)")
    ap.add_argument("--out", default=None, help="default bench/results/sass-cost-analysis.md, "
                                                  "sass-cost-ot.md for --kernel fused")
    args = ap.parse_args(argv)
    if args.out is None and not args.json:
        args.out = os.path.join(HERE, "results", "sass-cost-ot.md" if args.kernel == "fused" else
                                "sass-cost-analysis.md")
    # compiled, not interpreted (the kernels must be JIT functions), with Triton's FMA contraction
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = []
    if args.config:
        rows = one_pass_rows([(c[0], *map(int, c[1:])) for c in (x.split(",") for x in args.config)])
        print(json.dumps(rows) if args.json else markdown(rows))
        return 0
    if args.kernel in ("one_pass", "all"):
        configs = [(dt, 64, bv, w, 3) for dt in ("fp32", "bf16") for bv in (16, 32, 64) for w in (4, 8)]
        configs += [(dt, bm, bv, w, 3) for dt in ("fp32", "bf16")
                    for bm, bv, w in ((16, 32, 4), (16, 64, 4), (32, 32, 4), (32, 64, 4), (128, 16, 8), (128, 32, 8))]
        rows += one_pass_rows(configs)
    if args.kernel in ("cross", "all"):
        rows += two_pass_rows(("fp32", "bf16"))
    if args.kernel in ("attention", "all"):
        rows += attention_rows()
    if args.kernel == "fused":
        rows += fused_rows() + cuda_fused_rows()
    if args.json:
        print(json.dumps(rows))
        return 0
    table = markdown(rows)
    print(table)
    for r in rows:
        print(r["kernel"], r["dtype"], r["config"], r["mix"], file=sys.stderr)
    if args.out:
        import triton
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            if args.kernel == "fused":
                f.write(f"# Static cost of the fused OT regime's kernels (sm_90 SASS: Triton {triton.__version__}; "
                        "CUDA from nvcc)\n\n`python bench/sass_cost.py --kernel fused`: see its docstring. "
                        "Lane-instructions per entry of C in one row block (2 x 4096 entries, 8 warps), and the "
                        "issue time of one Sinkhorn iteration of bench/gpu_ot.py case 2 (16 x 4096^2 entries) at "
                        "an H100's 2.96e13 lane-instructions/s, against ~0.36 ms for one read of its 1 GiB C at "
                        "the copy bandwidth. The CUDA kernel (16 columns of a row a thread, 256 threads) counts "
                        "its whole row loop, every path, per entry. Not a timing.\n\n" + table + "\n")
                return 0
            f.write("# Static cost of the agreement and attention kernels "
                    f"(sm_90 SASS, Triton {triton.__version__})\n\n"
                    "`python bench/sass_cost.py`: see its docstring. Lane-instructions per logit entry in one "
                    "iteration of the V loop (hot path); the issue time is that count over case A's "
                    "20 000 x 30 522 entries of 64 tile rows (40 models for _row_stats) at an H100's 2.96e13 "
                    "lane-instructions/s (attention: per pair and source entry, over case B's 20 000 rows x "
                    "6 tiles x 256 pairs x 80 sources). Not a timing.\n\n")
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
