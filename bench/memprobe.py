"""Peak extra memory of one solve, measured in a fresh process (used by test_ot_cpu.py).

    python bench/memprobe.py PROBE        # prints one JSON object

Method (the same for our torch solver and for POT's numpy solvers):
  1. build the inputs (torch tensors for ours, numpy float64 arrays for POT) and run the same solver
     once on a tiny problem, so that thread pools, code pages and lazy imports are already resident;
  2. gc, read VmRSS, then reset the kernel's peak-RSS counter (write "5" to /proc/self/clear_refs);
  3. run the solve once and keep its result alive; read VmHWM (peak RSS since the reset).
  rss_peak_extra_bytes = VmHWM - VmRSS(before): every page touched by the solve, outputs included,
  at page granularity. For POT additionally: tracemalloc's peak of traced (numpy + Python)
  allocations during the solve minus the amount traced before it (tracemalloc cannot see torch's
  allocator, so for ours only the RSS figure exists).
Memory does not depend on the iteration count for either library (all state is allocated before the
loop or freed every iteration), so the probes run few iterations (ITERS below) to stay fast.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ITERS = 20


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_probe(fn) -> dict:
    gc.collect()
    before = _status("VmRSS")
    ok = _reset_peak()
    if not ok:  # fall back to getrusage: the peak over the whole process lifetime
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = fn()
    peak = _status("VmHWM") if ok else __import__("resource").getrusage(0).ru_maxrss * 1024
    del res
    return {"rss_peak_extra_bytes": max(peak - before, 0),
            "rss_method": "VmHWM after clear_refs minus VmRSS before" if ok else "ru_maxrss delta (lifetime peak)"}


def _tracemalloc_probe(fn) -> dict:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    res = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del res
    return {"tracemalloc_peak_extra_bytes": peak - base}


def main(probe: str) -> dict:
    import numpy as np  # noqa: F401
    import torch

    import cases

    torch.set_num_threads(2)
    if probe.startswith("case1"):
        p = cases.grounded_bert()
        tiny = cases.grounded_bert(B=2, n=8, m=9, d=16)
    elif probe.startswith("case4"):
        p = cases.points2d(2048, seed=4)
        tiny = cases.points2d(16, seed=5)
    else:
        raise SystemExit(f"unknown probe {probe!r}")
    B = p.shape[0]
    kind = probe.split("_", 1)[1]
    if probe.startswith("case1"):
        if kind in ("ours_f32", "ours_f64"):
            dt = torch.float32 if kind == "ours_f32" else torch.float64
            fn = lambda q=p: cases.ours_partial(q, dt, ITERS)  # noqa: E731
            fn_tiny = lambda: cases.ours_partial(tiny, dt, 2)  # noqa: E731
        elif kind == "pot":
            fn = lambda: cases.pot_partial_loop(p, range(B), ITERS)  # noqa: E731  (keeps all 64 plans)
            fn_tiny = lambda: cases.pot_partial_loop(tiny, range(2), 2)  # noqa: E731
        else:
            raise SystemExit(f"unknown probe {probe!r}")
    else:
        if kind in ("ours_f32", "ours_f64"):
            dt = torch.float32 if kind == "ours_f32" else torch.float64
            fn = lambda: cases.ours_balanced(p, dt, ITERS)  # noqa: E731
            fn_tiny = lambda: cases.ours_balanced(tiny, dt, 2)  # noqa: E731
        elif kind == "pot":
            fn = lambda: cases.pot_sinkhorn(p, ITERS)  # noqa: E731
            fn_tiny = lambda: cases.pot_sinkhorn(tiny, 2)  # noqa: E731
        else:
            raise SystemExit(f"unknown probe {probe!r}")
    fn_tiny()
    fn_tiny()
    out = {"probe": probe, "iters": ITERS, "shape": list(p.shape)}
    out.update(_rss_probe(fn))
    if kind == "pot":
        out.update(_tracemalloc_probe(fn))
    # size of the returned plan(s), for context
    r = fn()
    if isinstance(r, list):
        out["output_bytes"] = int(sum(x.nbytes for x in r))
    elif hasattr(r, "plan"):
        out["output_bytes"] = int(r.plan.numel() * r.plan.element_size())
    else:
        out["output_bytes"] = int(r.nbytes)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
