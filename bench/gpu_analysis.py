"""GPU benchmark of the analysis kernels: each GPU backend against the device's measured floor.

    python bench/gpu_analysis.py                      # on a GPU machine (bench/gpu_suite.sh runs it)
    python bench/gpu_analysis.py --smoke --device cpu --backends cpu,torch   # tiny sizes, any machine

Cases (the issue's sizes):
  A  pairwise agreement + KL + entropy, M=40 models, N=20000 positions, V=30522, streamed in chunks
     (float32 and bfloat16 logits);
  B  attention distance, metric 'jsd', M=40, R = N*T = 20000 rows, S=72 (float32).
Floors, from this device's measured rates (measured in the same run):
  A  max(logit bytes / copy bandwidth, 2 M^2 V N flop / fp32 matmul rate without TF32): the logits
     must be read once and the Gram product Y = P L^T costs 2 M^2 V flop per position;
  B  max(attention bytes / copy bandwidth, M(M-1)/2 R S logs / log rate): one log per pair-entry.
Backends: cuda, triton, and triton_two_pass (case A only: the Triton backend with its two-pass
agreement kernels instead of the default one-pass kernel, pairwise_agreement.ONE_PASS = False).
Reported: median time (CUDA events, after warm-up), floor, floor / time (target >= 0.5).
Results: bench/results/gpu-<device>.json and .md (``--out`` overrides the stem).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timer(device: torch.device):
    """fn -> seconds of one call (CUDA events on a GPU, perf_counter elsewhere)."""
    def run(fn):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def median_time(fn, device, warmup: int = 1, rounds: int = 5) -> dict:
    run = timer(device)
    for _ in range(warmup):
        run(fn)
    ts = [run(fn) for _ in range(rounds)]
    return {"median_s": statistics.median(ts), "min_s": min(ts), "rounds": rounds}


def copy_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """Bytes read + written per second of ``y.copy_(x)`` (median of 5)."""
    return 2 * x.numel() * x.element_size() / median_time(lambda: y.copy_(x), x.device, rounds=5)["median_s"]


def yardsticks(device: torch.device, smoke: bool) -> dict:
    """Measured copy bandwidth (bytes read + written / s), fp32 FMA matmul rate, log rate."""
    n = (1 << 20) if smoke else (1 << 28)        # 4 MiB / 1 GiB of float32
    x = torch.empty(n, dtype=torch.float32, device=device).uniform_(0.5, 2.0)
    y = torch.empty_like(x)
    copy_bps = copy_bandwidth(x, y)
    prev = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    k = 512 if smoke else 8192
    a = torch.randn(k, k, device=device)
    mm = median_time(lambda: a @ a, device, rounds=5)["median_s"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = prev
    # log rate on a cache-resident 16 MiB vector (L2 on an H100), repeated: closer to the
    # arithmetic limit than a DRAM-bound pass (a faster rate makes the floor stricter)
    small, out = x[: 1 << 22], y[: 1 << 22]
    lg = median_time(lambda: [torch.log(small, out=out) for _ in range(20)], device, rounds=5)["median_s"]
    return {"copy_bandwidth_Bps": copy_bps, "fp32_matmul_flops": 2 * k ** 3 / mm,
            "log_rate_per_s": 20 * small.numel() / lg,
            "log_rate_note": "torch.log over a cache-resident 16 MiB vector, 20 passes"}


def agreement_case(M, N, V, chunk, dtype, device, seed=0):
    """A pool of distinct chunks (related models) cycled over the stream of N positions."""
    g = torch.Generator(device=device).manual_seed(seed)
    pool = []
    for _ in range(2):
        base = torch.randn(1, chunk, V, generator=g, device=device)
        pool.append((3 * base + torch.randn(M, chunk, V, generator=g, device=device)).to(dtype))
    mask = torch.ones(chunk, dtype=torch.bool, device=device)
    return pool, mask


def run_agreement(backend, pool, mask, N, chunk):
    """backend 'triton_two_pass': the Triton backend with its two-pass kernels (ONE_PASS = False)."""
    from grounded_fast.analysis import PairwiseAgreement
    acc = PairwiseAgreement(pool[0].shape[0], backend="triton" if backend == "triton_two_pass" else backend)

    def fn():
        acc.reset()
        for k in range(N // chunk):
            acc.update(pool[k % len(pool)], mask)
        return acc.compute()
    if backend != "triton_two_pass":
        return fn

    def two_pass():
        from grounded_fast.triton_kernels.analysis import pairwise_agreement as pa
        saved, pa.ONE_PASS = pa.ONE_PASS, False
        try:
            return fn()
        finally:
            pa.ONE_PASS = saved
    return two_pass


def run_attention(backend, attn, tmask):
    from grounded_fast.analysis import attention_distance
    return lambda: attention_distance(attn, "jsd", tmask, backend=backend)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def git_commit() -> str:
    """HEAD, with '+modified' when tracked files differ from it (e.g. a copy of a working tree on a
    lent machine whose .git is older than its files): results must not claim a commit they did not run."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+modified" if dirty else "") if head else "unknown"


def short_commit(commit: str) -> str:
    return commit[:12] + ("+modified" if commit.endswith("+modified") else "")


def write_results(res: dict, stem: str, render) -> None:
    """stem.json (the results dict) and stem.md (``render(res)``)."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(render(res))
    print(f"wrote {stem}.json and {stem}.md")


def run_metadata(name: str, smoke: bool, ys: dict, skipped: list, results: list, **extra) -> dict:
    """The JSON header both GPU benchmark scripts write: device, versions, commit, date, yardsticks."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": smoke, "yardsticks": ys,
            "backends_skipped": skipped, "results": results, **extra}


def result_stem(name: str, prefix: str) -> str:
    """bench/results/<prefix><device slug> (the directory is created)."""
    stem = os.path.join(HERE, "results", prefix + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower())
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    return stem


def markdown(res: dict) -> str:
    lines = [f"# GPU analysis benchmarks on {res['device']}", "",
             f"`python bench/gpu_analysis.py` at commit `{short_commit(res['commit'])}`, {res['date']}; torch "
             f"{res['torch']}, triton {res['triton']}{' (SMOKE sizes)' if res['smoke'] else ''}.", "",
             "Measured yardsticks: copy bandwidth {:.0f} GB/s (read + write), fp32 matmul without TF32 {:.1f} "
             "TFLOP/s, torch.log (cache-resident) {:.1f} G/s.".format(res["yardsticks"]["copy_bandwidth_Bps"] / 1e9,
                                                    res["yardsticks"]["fp32_matmul_flops"] / 1e12,
                                                    res["yardsticks"]["log_rate_per_s"] / 1e9), "",
             "| case | dtype | backend | median | floor | floor / time | target |", "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['backend']} | {r['median_s'] * 1e3:.2f} ms | "
                     f"{r['floor_s'] * 1e3:.2f} ms ({r['floor_bound']}) | {r['floor_fraction']:.2f} | >= 0.5 |")
    lines += [""] + [f"- {n}" for n in res.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backends", default="cuda,triton,triton_two_pass",
                    help="triton_two_pass: agreement only, the Triton two-pass kernels")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script, not the kernels' speed)")
    ap.add_argument("--out", default=None, help="output stem (default bench/results/gpu-<device>)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    import grounded_fast  # noqa: F401  (loads the extensions)
    from grounded_fast import _backend
    backends = [b for b in args.backends.split(",") if b]
    usable = {"cuda": _backend.cuda_extension_available(), "triton": _backend.triton_available(),
              "cpu": _backend.cpu_extension_available(), "torch": True}
    usable["triton_two_pass"] = usable["triton"]
    skipped = [b for b in backends if not usable.get(b)]
    backends = [b for b in backends if usable.get(b)]
    M, N, V, chunk = (4, 64, 1000, 16) if args.smoke else (40, 20000, 30522, 1000)
    Mb, R, S = (4, 200, 72) if args.smoke else (40, 20000, 72)
    ys = yardsticks(device, args.smoke)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        pool, mask = agreement_case(M, N, V, chunk, dtype, device)
        nbytes = M * N * V * pool[0].element_size()
        # reading the logits once at the measured copy bandwidth (bytes read + written per second:
        # a read-only stream moves bytes at about the same total rate)
        t_bw, t_fl = nbytes / ys["copy_bandwidth_Bps"], 2 * M * M * V * N / ys["fp32_matmul_flops"]
        for b in backends:
            t = median_time(run_agreement(b, pool, mask, N, chunk), device, rounds=3)
            floor = max(t_bw, t_fl)
            results.append({"case": f"A agreement M={M} N={N} V={V} (chunks of {chunk})", "dtype": str(dtype)[6:],
                            "backend": b, **t, "floor_s": floor, "floor_bound": "bytes" if t_bw >= t_fl else "flops",
                            "floor_fraction": floor / t["median_s"]})
            print(results[-1], flush=True)
        del pool
    g = torch.Generator(device=device).manual_seed(1)
    attn = torch.softmax(torch.randn(Mb, R // 40 if not args.smoke else 5, 40, S, generator=g, device=device), -1)
    tmask = torch.ones(attn.shape[1], 40, dtype=torch.bool, device=device)
    pair_entries = Mb * (Mb - 1) // 2 * R * S
    t_bw, t_lg = attn.numel() * 4 / ys["copy_bandwidth_Bps"], pair_entries / ys["log_rate_per_s"]
    for b in (b for b in backends if b != "triton_two_pass"):
        t = median_time(run_attention(b, attn, tmask), device, rounds=5)
        floor = max(t_bw, t_lg)
        results.append({"case": f"B attention jsd M={Mb} R={R} S={S}", "dtype": "float32", "backend": b, **t,
                        "floor_s": floor, "floor_bound": "bytes" if t_bw >= t_lg else "logs",
                        "floor_fraction": floor / t["median_s"]})
        print(results[-1], flush=True)
    name = device_name(device)
    res = run_metadata(name, args.smoke, ys, skipped, results)
    write_results(res, args.out or result_stem(name, "gpu-"), markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
