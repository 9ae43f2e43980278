"""This CPU's exp and FMA throughput, measured with torch (the yardsticks for bench/report.py).

    python bench/throughput.py [--threads 2] [--wait-idle SECONDS]

Measures, with ``threads`` intra-op threads (default 2):
  exp_f32_16M / exp_f64_16M   torch.exp on a 16M-element tensor (out= preallocated): G exp/s.
                              64-128 MiB in + out: partly memory-bound.
  exp_f32_cache / exp_f64_cache  torch.exp on 256K elements (1-2 MiB, cache-resident), repeated:
                              G exp/s, closer to the compute bound of the vectorised exp.
  addcmul_f32_16M             torch.addcmul on 16M float32 elements: 1 FMA = 2 flop per element,
                              GFLOP/s (memory-bound streaming FMA).
  matmul_f32 / matmul_f64     2048 x 2048 matmul: 2 n^3 flop, GFLOP/s (FMA peak-ish).
A ~2 s matmul burn precedes the measurements (the first seconds after an idle spell run slower
on the VM this was written on). Each figure uses the best of several timed repetitions after a warm-up (peak rate). ``foreign_cpu``:
share of the machine's CPU time used by other processes during the measurement.

``--wait-idle S``: before measuring, wait up to S seconds for the machine to be idle (other
processes using < 10% of the CPUs over a 2 s window); prints what it saw. Exit code is 0 either way.
"""
from __future__ import annotations

import argparse
import json
import time

from timing import time_repeats

N_BIG = 16 * 1024 * 1024
N_CACHE = 256 * 1024


def _best_time(fn, reps: int, warmup: int = 2) -> float:
    """Shortest of ``reps`` timed calls (a peak-rate yardstick: best-of-N is the least noisy)."""
    return time_repeats(fn, reps, warmup).min


def measure(threads: int = 2) -> dict:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = _ticks()
    try:
        g = torch.Generator().manual_seed(0)
        out = {"threads": threads}
        # ~2 s of matmuls first: on this VM the first seconds after an idle spell run slower
        A = torch.rand(1024, 1024, generator=g)
        end = time.perf_counter() + 2.0
        while time.perf_counter() < end:
            torch.mm(A, A)
        del A
        for dt, name in ((torch.float32, "f32"), (torch.float64, "f64")):
            x = -10.0 * torch.rand(N_BIG, generator=g, dtype=dt)  # exp arguments in [-10, 0], as in LSE
            y = torch.empty_like(x)
            t = _best_time(lambda: torch.exp(x, out=y), reps=9)
            out[f"exp_{name}_16M"] = N_BIG / t / 1e9
            del x, y
        rep = 128
        for dt, name in ((torch.float32, "f32"), (torch.float64, "f64")):
            xs = -10.0 * torch.rand(N_CACHE, generator=g, dtype=dt)
            ys = torch.empty_like(xs)

            def many():
                for _ in range(rep):
                    torch.exp(xs, out=ys)

            out[f"exp_{name}_cache"] = N_CACHE * rep / _best_time(many, reps=15) / 1e9
        x, y, z = (torch.rand(N_BIG, generator=g) for _ in range(3))
        o = torch.empty_like(x)
        t = _best_time(lambda: torch.addcmul(x, y, z, out=o), reps=9)
        out["addcmul_f32_16M_gflops"] = 2 * N_BIG / t / 1e9
        del x, y, z, o
        n = 2048
        for dt, name in ((torch.float32, "f32"), (torch.float64, "f64")):
            A = torch.rand(n, n, generator=g, dtype=dt)
            Bm = torch.rand(n, n, generator=g, dtype=dt)
            Cm = torch.empty(n, n, dtype=dt)
            t = _best_time(lambda: torch.mm(A, Bm, out=Cm), reps=5, warmup=1)
            out[f"matmul_{name}_gflops"] = 2 * n ** 3 / t / 1e9
        out["units"] = {"exp_*": "G exp/s", "*_gflops": "GFLOP/s"}
        t1 = _ticks()
        out["foreign_cpu"] = max(0.0, ((t1[0] - t0[0]) - (t1[2] - t0[2])) / max(t1[1] - t0[1], 1))
        return out
    finally:
        torch.set_num_threads(old)


def _ticks():
    """(busy ticks of all CPUs, all ticks, this process's user+system ticks incl. threads)."""
    with open("/proc/stat") as f:
        v = [int(s) for s in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v), int(fields[11]) + int(fields[12])


def cpu_busy_fraction(window: float = 2.0) -> float:
    """Fraction of all CPUs busy (any process, this one included) over ``window`` seconds."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(s) for s in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    t0, i0 = snap()
    time.sleep(window)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_idle(max_wait: float, threshold: float = 0.10, window: float = 2.0) -> dict:
    start = time.time()
    seen = []
    while True:
        busy = cpu_busy_fraction(window)
        seen.append(round(busy, 3))
        if busy < threshold or time.time() - start > max_wait:
            return {"idle": busy < threshold, "waited_s": round(time.time() - start, 1), "busy_samples": seen[-10:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-idle", type=float, default=None, metavar="SECONDS")
    args = ap.parse_args()
    if args.wait_idle is not None:
        print(json.dumps({"wait_idle": wait_idle(args.wait_idle)}))
        return
    print(json.dumps(measure(args.threads), indent=1))


if __name__ == "__main__":
    main()
