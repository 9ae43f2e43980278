"""Interleaved A/B of our CPU OT calls between two checkouts: fresh processes alternate
BEFORE, AFTER, BEFORE, ... so that the machine's drift (large on a shared 2-core VM: tens of per
cent between bench/run_cpu.sh runs) falls on both sides alike.

    python bench/ab_interleaved.py BEFORE_DIR AFTER_DIR [--rounds 8] [--threads 2] [--out FILE.jsonl]

Each directory is a checkout with its extension built *on this machine* (``python setup.py
build_ext --inplace``: an extension built elsewhere compiles for another CPU). A round runs, in a
fresh interpreter per side, each case of ``CASES`` (the 'ours' calls of bench/test_ot_cpu.py, auto
domain, through that checkout's bench/cases.py): 2 warm-up calls, then the median of 7. Prints a
markdown table of the median over rounds (min-max) per side and their ratio; ``--out`` keeps every
round's numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = {
    "1 partial 64x64x197x1000": ("ours_partial", "grounded_bert", (), 1000),
    "2 partial 512^2x100": ("ours_partial", "points2d", (512, 0), 100),
    "3 balanced 64x64x197x100": ("ours_balanced", "grounded_bert", (), 100),
    "4 balanced 2048^2x100": ("ours_balanced", "points2d", (2048, 0), 100),
}

_CHILD = r"""
import json, os, statistics, sys, time
root, threads = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [root, os.path.join(root, "bench")]
import torch
torch.set_num_threads(threads)
import cases
out = {}
for name, (fn, maker, args, iters) in json.loads(sys.argv[3]).items():
    p = getattr(cases, maker)(*args)
    for dt in (torch.float32, torch.float64):
        f = lambda: getattr(cases, fn)(p, dt, iters)
        f(); f()
        ts = []
        for _ in range(7):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        out[f"{name} {str(dt)[6:]}"] = statistics.median(ts) * 1e3
print(json.dumps(out))
"""


def run_side(root: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=root)
    res = subprocess.run([sys.executable, "-c", _CHILD, root, str(threads), json.dumps(CASES)], env=env,
                         capture_output=True, text=True, check=True, cwd=root)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows = []
    for r in range(args.rounds):
        for side, root in (("before", args.before), ("after", args.after)):
            rows.append({"round": r, "side": side, "ms": run_side(os.path.abspath(root), args.threads)})
            print(f"round {r + 1}/{args.rounds} {side} done", file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in rows)
    print(f"| case (ms) | before: median of {args.rounds} processes (min-max) | after | after / before |")
    print("|---|---|---|---|")
    for case in rows[0]["ms"]:
        b = [x["ms"][case] for x in rows if x["side"] == "before"]
        a = [x["ms"][case] for x in rows if x["side"] == "after"]
        print(f"| {case} | {statistics.median(b):.2f} ({min(b):.2f}-{max(b):.2f}) | "
              f"{statistics.median(a):.2f} ({min(a):.2f}-{max(a):.2f}) | {statistics.median(a) / statistics.median(b):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
