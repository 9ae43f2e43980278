"""GPU benchmark of the analysis kernels: each GPU backend against the device's measured floor.

    python bench/gpu_analysis.py                      # on a GPU machine (bench/gpu_lease.py runs it)
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
Reported: median time (CUDA events, after warm-up), floor, floor / time (target >= 0.5), and a
check of each timed backend against the float64 torch reference on a slice of the same inputs.
Results: bench/results/gpu-<device>.json and .md (``--out`` overrides the stem), rewritten after
every row (a run stopped at a time limit keeps what it measured).
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


def check_agreement(backend, logits, mask, positions: int = 64) -> dict:
    """Errors of ``backend`` on the first ``positions`` of a timed chunk against the float64 torch
    reference on the same (rounded) logits: relative for KL and entropy, the largest difference
    of an agreement rate (one argmax flip moves a rate by 1 / positions)."""
    from grounded_fast.analysis import PairwiseAgreement
    sub, m = logits[:, :positions], mask[:positions]
    got = run_agreement(backend, [sub], m, sub.shape[1], sub.shape[1])()
    ref_acc = PairwiseAgreement(sub.shape[0], backend="torch")
    ref_acc.update(sub.double(), m)
    ref = ref_acc.compute()
    return {"kl": rel_err(got["kl"], ref["kl"]), "entropy": rel_err(got["entropy"], ref["entropy"]),
            "agreement": float((got["agreement"].double() - ref["agreement"]).abs().max())}


def check_attention(backend, attn, tmask, items: int = 5) -> dict:
    """Relative error of ``backend``'s JSD matrix on the first ``items`` of the timed attention
    against the float64 torch reference."""
    from grounded_fast.analysis import attention_distance
    sub, m = attn[:, :items], tmask[:items]
    got = attention_distance(sub, "jsd", m, backend=backend)
    return {"jsd": rel_err(got, attention_distance(sub.double(), "jsd", m, backend="torch"))}


# check limits: far above float32 / 3xTF32 rounding (the tests hold the tight tolerances), far
# below what a broken kernel gives; an agreement rate may move by two argmax flips in 64 positions
AGREEMENT_LIMITS = {"kl": 1e-3, "entropy": 1e-3, "agreement": 2 / 64}
ATTENTION_LIMITS = {"jsd": 1e-3}


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


def write_results(res: dict, stem: str, render, announce: bool = True) -> None:
    """stem.json (the results dict) and stem.md (``render(res)``), each written whole then renamed
    (a run killed mid-write leaves the previous complete file)."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    for path, text in ((stem + ".json", json.dumps(res, indent=1)), (stem + ".md", render(res))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    if announce:
        print(f"wrote {stem}.json and {stem}.md")


class ResultLog:
    """The rows and notes of one benchmark run. Each row is printed and stem.json / stem.md are
    rewritten at once, so that a run stopped at a lease's time limit keeps every row it measured."""

    def __init__(self, stem: str, render, name: str, smoke: bool, ys: dict, skipped: list):
        self.stem, self.render = stem, render
        self.name, self.smoke, self.ys, self.skipped = name, smoke, ys, skipped
        self.results: list = []
        self.notes: list = []

    def add(self, row: dict) -> None:
        self.results.append(row)
        print(row, flush=True)
        self.write(announce=False)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, announce: bool = True) -> None:
        res = run_metadata(self.name, self.smoke, self.ys, self.skipped, self.results, notes=self.notes)
        write_results(res, self.stem, self.render, announce)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the finite entries of ref (NaN where out is not
    finite there: a NaN never passes)."""
    out, ref = out.double().reshape(ref.shape), ref.double()
    keep = torch.isfinite(ref)
    if not bool(torch.isfinite(out[keep]).all()):
        return float("nan")
    den = float(ref[keep].norm())
    return float((out[keep] - ref[keep]).norm()) / (den if den > 0 else 1.0)


def check_label(errors: dict, limits: dict) -> str:
    """'ok' or 'WRONG' (an error over its limit, or NaN), then the errors: the check column of the
    result tables."""
    bad = any(not (e <= limits[k]) for k, e in errors.items())
    return ("WRONG " if bad else "ok ") + ", ".join(f"{k} {e:.1e}" for k, e in errors.items())


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
             "| case | dtype | backend | median | floor | floor / time | target | check |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['backend']} | {r['median_s'] * 1e3:.2f} ms | "
                     f"{r['floor_s'] * 1e3:.2f} ms ({r['floor_bound']}) | {r['floor_fraction']:.2f} | >= 0.5 | "
                     f"{r.get('check', '-')} |")
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
    usable = {b: _backend.backend_usable(b, device) for b in _backend.BACKENDS}
    usable["triton_two_pass"] = usable["triton"]
    skipped = [b for b in backends if not usable.get(b)]
    backends = [b for b in backends if usable.get(b)]
    M, N, V, chunk = (4, 64, 1000, 16) if args.smoke else (40, 20000, 30522, 1000)
    Mb, R, S = (4, 200, 72) if args.smoke else (40, 20000, 72)
    ys = yardsticks(device, args.smoke)
    name = device_name(device)
    log = ResultLog(args.out or result_stem(name, "gpu-"), markdown, name, args.smoke, ys, skipped)
    for dtype in (torch.float32, torch.bfloat16):
        pool, mask = agreement_case(M, N, V, chunk, dtype, device)
        nbytes = M * N * V * pool[0].element_size()
        # reading the logits once at the measured copy bandwidth (bytes read + written per second:
        # a read-only stream moves bytes at about the same total rate)
        t_bw, t_fl = nbytes / ys["copy_bandwidth_Bps"], 2 * M * M * V * N / ys["fp32_matmul_flops"]
        for b in backends:
            t = median_time(run_agreement(b, pool, mask, N, chunk), device, rounds=3)
            errors = check_agreement(b, pool[0], mask)
            floor = max(t_bw, t_fl)
            log.add({"case": f"A agreement M={M} N={N} V={V} (chunks of {chunk})", "dtype": str(dtype)[6:],
                     "backend": b, **t, "floor_s": floor, "floor_bound": "bytes" if t_bw >= t_fl else "flops",
                     "floor_fraction": floor / t["median_s"], "errors": errors,
                     "check": check_label(errors, AGREEMENT_LIMITS)})
        del pool
    g = torch.Generator(device=device).manual_seed(1)
    attn = torch.softmax(torch.randn(Mb, R // 40 if not args.smoke else 5, 40, S, generator=g, device=device), -1)
    tmask = torch.ones(attn.shape[1], 40, dtype=torch.bool, device=device)
    pair_entries = Mb * (Mb - 1) // 2 * R * S
    t_bw, t_lg = attn.numel() * 4 / ys["copy_bandwidth_Bps"], pair_entries / ys["log_rate_per_s"]
    for b in (b for b in backends if b != "triton_two_pass"):
        t = median_time(run_attention(b, attn, tmask), device, rounds=5)
        errors = check_attention(b, attn, tmask)
        floor = max(t_bw, t_lg)
        log.add({"case": f"B attention jsd M={Mb} R={R} S={S}", "dtype": "float32", "backend": b, **t,
                 "floor_s": floor, "floor_bound": "bytes" if t_bw >= t_lg else "logs",
                 "floor_fraction": floor / t["median_s"], "errors": errors,
                 "check": check_label(errors, ATTENTION_LIMITS)})
    log.note("check: the backend on the first 64 positions (A) / 5 items (B) of the timed inputs against the "
             "float64 torch reference; 'WRONG' when an error passes its limit " +
             ", ".join(f"{k} {v:.2g}" for k, v in {**AGREEMENT_LIMITS, **ATTENTION_LIMITS}.items()))
    log.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
