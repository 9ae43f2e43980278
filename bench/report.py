"""Post-process the raw pytest-benchmark JSON of a CPU suite into a summary JSON and markdown tables.

    python bench/report.py RAW.json [--suite ot|analysis] [--outdir bench/results] [--tag NAME]
    python bench/report.py --compare BEFORE.json AFTER.json [--out FILE.md]

The suite is read off the JSON (bench/test_analysis_cpu.py records an ``analysis`` section in the
top-level ``grounded_fast`` one; anything else is bench/test_ot_cpu.py); ``--suite`` names it:

  ot        bench/test_ot_cpu.py (bash bench/run_cpu.sh) -> bench/results/cpu-<tag>-<kernel commit>.json
            and .md, named by the host tag and the commit of the kernels measured, and cpu.md (a copy)
  analysis  bench/test_analysis_cpu.py (bash bench/run_analysis_cpu.sh) -> analysis-cpu-<tag>.json
            and analysis-cpu.md (analysis-cpu-quick.md for a quick-mode run, ANALYSIS_BENCH_QUICK=1)

``--compare`` sets our medians (and the peer ratios) of two OT summaries side by side.

Everything comes from the JSON: timings (pytest-benchmark stats), ratios, work, accuracy and memory
(``extra_info`` of each benchmark), machine / versions / threads / yardsticks / memory probes (the
top-level ``grounded_fast`` section written by bench/conftest.py and the suite).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
from typing import Callable, NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # run as `python bench/report.py` or imported: this checkout's grounded_fast, bench/timing.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

from timing import fmt_ratio, fmt_spread  # noqa: E402


# ------------------------------------------------------------------------------ formatting (both suites)
def _fmt_t(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def _fmt_e(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.{digits}e}"


def _mb(x):
    return "-" if x is None else f"{x / 2**20:.1f} MiB"


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _la(x):
    return "-" if not x else "/".join(f"{v:.2f}" for v in x)


# ------------------------------------------------------------------------------ OT suite (test_ot_cpu.py)
OT_CASE_LABEL = {
    "1": "partial, cosine (d=384), reg 0.05, m 0.5",
    "2": "partial, sqeuclidean 2-d (max 1), reg 0.05, m 0.5",
    "3": "balanced, cosine (d=384), reg 0.05",
    "4": "balanced, sqeuclidean 2-d (max 1), reg 0.05",
    "4s": "balanced, sqeuclidean 2-d + 1, reg 1e-3",
}


def _shape(sh):
    return f"{sh[0]} x {sh[1]}x{sh[2]}"


VARIANTS = ["f32", "f64", "f32_log", "f64_log"]
ARRAY_ORDER = {"t32": 0, "t64": 1, "np64": 2}


def device_label(env: dict) -> str:
    """'2-core CPU VM (Intel(R) Xeon(R) Processor)' from the run's lscpu."""
    cpu = env.get("lscpu") or {}
    n = cpu.get("CPU(s)") or env.get("os_cpu_count")
    vm = " VM" if cpu.get("Hypervisor vendor") else ""
    return f"{n}-core CPU{vm} ({cpu.get('Model name')})"


def kernel_commit(env: dict) -> tuple[str, str]:
    """(short hash, date) of the last commit touching the kernels' files; '+dirty' when they had
    uncommitted changes."""
    full = (env.get("git_kernel_commit") or env.get("git_commit") or "?").split(" ", 1)
    short = full[0][:7] + ("+dirty" if env.get("git_dirty_kernel_files") else "")
    return short, (full[1] if len(full) > 1 else "?")


def _spread(r: dict) -> str:
    return fmt_spread(r["median_s"], r["min_s"], r["max_s"])


def _ratio(r) -> str:
    return "-" if r is None else fmt_ratio(r)


def _err(acc: dict | None):
    acc = acc or {}
    return acc.get("partial_err", acc.get("marginal_err_l1"))


def summarise_ot(raw: dict) -> dict:
    gf = raw.get("grounded_fast", {})
    env = gf.get("environment", {})
    thr = gf.get("throughput_before", {}) or {}
    benches = {}
    for b in raw["benchmarks"]:
        ei = b.get("extra_info", {})
        benches[b["name"]] = {"name": b["name"], "stats": {k: b["stats"][k] for k in ("min", "max", "median", "mean",
                                                                                        "stddev", "iqr", "rounds")},
                              "extra": ei}
    ours_rows, peer_rows = [], []
    for b in benches.values():
        ei = b["extra"]
        if "case" not in ei:
            continue
        f = ei.get("extrapolation_factor", 1)
        st = ei.get("timing") or b["stats"]  # a re-measured attempt kept over pytest-benchmark's own
        row = {"key": ei["key"], "case": ei["case"], "label": OT_CASE_LABEL.get(ei["case"], ""), "benchmark": b["name"],
               "impl": ei["impl"], "dtype": ei["dtype"], "domain": ei.get("domain"), "shape": ei["shape"],
               "iters": ei["iters"], "median_s": ei["effective_median_s"], "min_s": st["min"] * f,
               "max_s": st["max"] * f, "rounds": st["rounds"], "timed_problems": ei.get("timed_problems"),
               "attempts": len(ei.get("attempts") or [1]),
               "throughput_entry_iters_per_s": ei["throughput_entry_iters_per_s"],
               "foreign_cpu_fraction": ei.get("foreign_cpu_fraction"), "idle_wait": ei.get("idle_wait"),
               "threads": ei.get("threads"), "accuracy": ei.get("accuracy"), "rounds_note": ei.get("rounds_note")}
        if ei["side"] == "ours":
            dt, tp = ei["dtype"], ei["throughput_entry_iters_per_s"]
            exp16, mm = thr.get(f"exp_{dt}_16M"), thr.get(f"matmul_{dt}_gflops")
            row["throughput_over_exp16M"] = tp / (exp16 * 1e9) if exp16 else None
            row["throughput_over_fma_peak"] = tp / (mm * 1e9 / 2) if mm else None  # FMA/s = GFLOP/s / 2
            ours_rows.append(row)
        else:
            row.update({k: ei.get(k) for k in ("peer", "solver", "array", "array_label")})
            peer_rows.append(row)
    order = {v: i for i, v in enumerate(VARIANTS)}
    ours_rows.sort(key=lambda r: (r["case"], order.get(r["key"].split("ours_")[-1], 9)))
    peer_rows.sort(key=lambda r: (r["case"], r["peer"] or "", r["solver"] or "", ARRAY_ORDER.get(r["array"], 9)))
    by_key = {r["key"]: r for r in ours_rows}
    comparisons = []
    for p in peer_rows:
        o, olog = by_key.get(f"case{p['case']}/ours_{p['dtype']}"), by_key.get(f"case{p['case']}/ours_{p['dtype']}_log")
        o32 = by_key.get(f"case{p['case']}/ours_f32")
        comparisons.append({
            "case": p["case"], "peer": p["key"], "ours": o["key"] if o else None, "dtype": p["dtype"],
            "array": p["array"], "peer_median_s": p["median_s"], "ours_median_s": o["median_s"] if o else None,
            "ratio_peer_over_ours": p["median_s"] / o["median_s"] if o else None,
            "ratio_peer_over_ours_log": p["median_s"] / olog["median_s"] if olog else None,
            # POT on numpy float64 against our float32: the old README basis, not like for like
            "ratio_numpy_f64_peer_over_ours_f32": p["median_s"] / o32["median_s"] if o32 and p["array"] == "np64" else None})
    threads = sorted({json.dumps(r["threads"], sort_keys=True) for r in ours_rows + peer_rows if r.get("threads")})
    short, date = kernel_commit(env)
    small = next((b for b in benches.values() if b["extra"].get("small_reg")), None)
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "suite_started": gf.get("started"),
        "suite_wall_s": gf.get("suite_wall_s"),
        "kernel_commit": short, "kernel_commit_date": date, "device": device_label(env),
        "threads": env.get("threads_pinned"), "thread_states": [json.loads(t) for t in threads],
        "environment": env,
        "pytest_benchmark_machine_info": {k: raw.get("machine_info", {}).get(k) for k in ("node", "processor", "cpu")},
        "commit_info": raw.get("commit_info"),
        "throughput_before": thr,
        "throughput_after": gf.get("throughput_after"),
        "cpu_busy_before": gf.get("cpu_busy_before"), "cpu_busy_after": gf.get("cpu_busy_after"),
        "loadavg_before": gf.get("loadavg_before"), "loadavg_after": gf.get("loadavg_after"),
        "ours": ours_rows,
        "peers": peer_rows,
        "comparisons": comparisons,
        "small_reg": {"benchmark": small["name"], "ours_f32_median_s": small["extra"]["effective_median_s"],
                      "reg": small["extra"].get("reg"), "results": small["extra"]["small_reg"]} if small else None,
        "memory": gf.get("memory", {}),
        "benchmarks": benches,
    }


def markdown_ot(s: dict) -> str:
    env = s["environment"]
    cpu = env.get("lscpu", {})
    thr, thr2 = s["throughput_before"], s.get("throughput_after") or {}
    L = []
    L.append("# CPU OT benchmarks: grounded_fast vs POT and GeomLoss (same run, equal iterations, like for like)\n")
    L.append(f"**Kernels as of commit `{s['kernel_commit']}` ({s['kernel_commit_date']}, the last commit changing them); device: {s['device']}; "
             f"measured {s.get('suite_started')} UTC; {s.get('threads')} threads on every side (torch and every "
             f"BLAS / OpenMP pool, pinned); times are median (min-max) of the rounds listed.**\n")
    L.append(f"Reproduce (writes `bench/results/cpu-<host>-<kernel commit>.md` and `.json`, and `cpu.md`): "
             f"`bash bench/run_cpu.sh`; compare two runs: `python bench/report.py --compare BEFORE.json AFTER.json`. "
             f"Generated {s['generated']} by bench/report.py from bench/test_ot_cpu.py"
             + (f"; pytest wall {s['suite_wall_s']:.0f} s." if s.get("suite_wall_s") else "."))
    L.append("")
    L.append("The machine is shared (other processes ran during the suite; see `foreign CPU` per row and the load "
             "averages below): single timings swing by tens of per cent and the max of a row by more; compare "
             "medians, and rows whose foreign CPU share is small.\n")
    L.append("## Machine and software\n")
    L.append(f"- CPU: {cpu.get('Model name')}; {cpu.get('CPU(s)')} logical CPUs ({cpu.get('Socket(s)')} socket x "
             f"{cpu.get('Core(s) per socket')} cores x {cpu.get('Thread(s) per core')} threads), L2 {cpu.get('L2 cache')}, "
             f"L3 {cpu.get('L3 cache')}, hypervisor {cpu.get('Hypervisor vendor')}; host `{env.get('hostname')}`")
    L.append(f"- torch {env.get('torch')}, numpy {env.get('numpy')} ({env.get('blas_numpy')}), POT {env.get('pot')}, "
             f"GeomLoss {env.get('geomloss') or 'not installed'}, torchmatch {env.get('torchmatch') or 'not installed'} "
             f"(its releases need Python >= 3.13), Python {env.get('python')}")
    states = s.get("thread_states") or []
    L.append(f"- threads: {s.get('threads')} (BENCH_THREADS, default all cores) for every benchmark, ours and the peers'; "
             f"the pools as the timed calls ran: " + ("; ".join(", ".join(f"{k} {v}" for k, v in st.items()) for st in states)
                                                    or "-"))
    dirty = env.get("git_dirty_package_files") or []
    L.append(f"- git HEAD `{env.get('git_commit', '?')[:12]}`; kernels (csrc/, grounded_fast/ops, ot, reference, "
             f"triton_kernels, setup.py) last changed at `{s['kernel_commit']}` ({s['kernel_commit_date']})"
             + (f"; uncommitted changes in {', '.join(dirty)}" if dirty else "; package files clean")
             + f"; native extension file written {env.get('extension_mtime')}")
    L.append(f"- thread env: {env.get('env')}")
    L.append(f"- machine busy (all processes) just before the suite: {100 * (s.get('cpu_busy_before') or 0):.0f}%, "
             f"just after: {100 * (s.get('cpu_busy_after') or 0):.0f}%; load average before {_la(s.get('loadavg_before'))}, "
             f"after {_la(s.get('loadavg_after'))}")
    L.append("")
    L.append(f"Measured throughput of this CPU (bench/throughput.py, torch, {s.get('threads')} threads; before / after the suite):\n")
    L.append("| yardstick | before | after |")
    L.append("|---|---|---|")
    for k, lab in (("exp_f32_16M", "torch.exp, 16M float32 (G exp/s)"), ("exp_f64_16M", "torch.exp, 16M float64 (G exp/s)"),
                   ("exp_f32_cache", "torch.exp, 256K float32 cache-resident (G exp/s)"),
                   ("exp_f64_cache", "torch.exp, 256K float64 cache-resident (G exp/s)"),
                   ("addcmul_f32_16M_gflops", "torch.addcmul, 16M float32 (GFLOP/s, 1 FMA = 2 flop)"),
                   ("matmul_f32_gflops", "2048^3 matmul float32 (GFLOP/s)"),
                   ("matmul_f64_gflops", "2048^3 matmul float64 (GFLOP/s)")):
        L.append(f"| {lab} | {thr.get(k, float('nan')):.2f} | {thr2.get(k, float('nan')):.2f} |")
    L.append(f"| other processes' share of the CPUs during the measurement | {_pct(thr.get('foreign_cpu'))} | "
             f"{_pct(thr2.get('foreign_cpu'))} |")
    drift = [k for k in thr if k != "foreign_cpu" and isinstance(thr.get(k), float)
             and isinstance(thr2.get(k), float) and thr[k] > 0 and abs(thr2[k] / thr[k] - 1) > 0.2]
    if drift:
        L.append(f"\n**Note:** yardsticks moved > 20% between start and end ({', '.join(drift)}), so the "
                 "`/exp16M` fractions below carry that uncertainty.")
    L.append("")
    L.append("## Peers vs ours at equal iteration counts, like for like\n")
    L.append("**peer / ours** = peer median / our median (> 1: ours faster), with our kernel of the peer's dtype: POT "
             "on torch float32 tensors against our float32, on torch or numpy float64 against our float64 (our "
             "default `domain='auto'`: stabilised scaling-domain iterations, log-domain ones where they would "
             "underflow; `log`: `domain='log'`, log-sum-exp passes only). The last column is the old basis of the "
             "README's figures, POT on numpy float64 against our float32: not like for like. `k/B timed`: a "
             "per-problem loop timed on k problems of the batch and scaled by B/k. `err`: the plan's marginal error "
             "at the timed iterations, max over the problems checked: balanced ||P1-a||_1 + ||P^T1-b||_1; partial "
             "||(P1-a)+||_1 + ||(P^T1-b)+||_1 + |sum P - m|. GeomLoss anneals eps from the cost range down to reg, "
             "so at equal iterations its error is larger; its plan is the same (see the GeomLoss check below).\n")
    L.append("| case | shape x iters | peer | arrays | peer median (min-max) | ours | ours median (min-max) | "
             "**peer / ours** | peer / ours log | err peer | err ours | numpy-f64 peer / ours f32 (not like for like) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ours_by_key = {r["key"]: r for r in s["ours"]}
    comp = {c["peer"]: c for c in s["comparisons"]}
    for p in s["peers"]:
        c = comp.get(p["key"], {})
        o = ours_by_key.get(c.get("ours"))
        B = p["shape"][0]
        sub = f" [{p['timed_problems']}/{B} timed]" if p.get("timed_problems") and p["timed_problems"] < B else ""
        note = f", {p['rounds_note']}" if p.get("rounds_note") else f", {p['rounds']} rounds"
        L.append(f"| {p['case']}: {p['label']} | {_shape(p['shape'])} x {p['iters']} | {p['peer']} {p['solver']}{sub}{note} | "
                 f"{p['array_label']} | {_spread(p)} | {p['dtype']} | {_spread(o) if o else '-'} | "
                 f"**{_ratio(c.get('ratio_peer_over_ours'))}** | {_ratio(c.get('ratio_peer_over_ours_log'))} | "
                 f"{_fmt_e(_err(p['accuracy']))} | {_fmt_e(_err(o['accuracy'])) if o else '-'} | "
                 f"{_ratio(c.get('ratio_numpy_f64_peer_over_ours_f32'))} |")
    slower = [c for c in s["comparisons"] for k in ("ratio_peer_over_ours", "ratio_peer_over_ours_log")
              if c.get(k) is not None and c[k] < 1]
    if slower:
        L.append("\n**Peer faster than ours (like for like) in:** " + "; ".join(
            f"case {c['case']}: {c['peer'].split('/')[1]} vs ours {c['dtype']}{' log' if k.endswith('log') else ''} "
            f"({_ratio(c[k])})" for c in s["comparisons"] for k in ("ratio_peer_over_ours", "ratio_peer_over_ours_log")
            if c.get(k) is not None and c[k] < 1))
    L.append("")
    L.append("## Our kernel: time and throughput\n")
    L.append("Throughput = cost entries x iterations / s (B*n*m*iters / median). `/exp16M` = throughput / this CPU's "
             "torch.exp rate on 16M elements of the same dtype; `/FMA peak` = throughput / (2048^3 matmul FLOP/s / 2) "
             "of the same dtype. A log-domain iteration costs 2 exp per entry (row and column log-sum-exp), a "
             "scaling-domain iteration 2 FMA per entry (two matrix-vector passes), so 0.5 in the matching column would "
             "mean bound by that yardstick. `foreign CPU` = share of the machine's CPU time taken by other processes "
             "while the benchmark ran (> 10% = contaminated timing).\n")
    L.append("| case | shape x iters | variant | median (min-max) | rounds | throughput (G entry-it/s) | /exp16M | /FMA peak | foreign CPU |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in s["ours"]:
        v = r["key"].split("ours_")[-1]
        L.append(f"| {r['case']}: {r['label']} | {_shape(r['shape'])} x {r['iters']} | {v.replace('_', ' ')} ({r['domain']}) | "
                 f"{_spread(r)} | {r['rounds']} | {r['throughput_entry_iters_per_s'] / 1e9:.3f} | "
                 f"{_f(r['throughput_over_exp16M'])} | {_f(r['throughput_over_fma_peak'])} | {_foreign_cell(r)} |")
    L.append("")
    L.append("Peers' throughput (same definition, whole-batch effective time): " + "; ".join(
        f"case {p['case']} {p['key'].split('/')[1]}: {p['throughput_entry_iters_per_s'] / 1e9:.4f} G entry-it/s "
        f"(foreign CPU {_foreign_cell(p)})" for p in s["peers"]) + ".")
    dirty_rows = [r["benchmark"] for r in s["ours"] + s["peers"] if (r.get("foreign_cpu_fraction") or 0) > 0.10]
    if dirty_rows:
        L.append(f"\n**Warning:** other processes took > 10% of the CPUs during these rows even in their least "
                 f"contaminated attempt: {', '.join(dirty_rows)}.")
    L.append("")
    L.append("## Matched accuracy (partial OT)\n")
    L.append("Max abs error of the plan after the timed iterations vs a float64 reference run to convergence "
             "(our kernel, float64, tol 1e-14 on POT's ||P_k - P_k-1||_F; it agrees with the pure-torch reference "
             "to the figure in the last column). Case 1: problems 0 and 1; `m=0.95` is a supplementary run on the same "
             "two problems with mass 0.95 (the mass constraints are active there, unlike m=0.5). At m=0.5 the "
             "reference stops after 1 iteration (the constraints P1 <= a, P^T1 <= b are inactive), so the m=0.5 "
             "errors only show rounding; the m=0.95 column is the informative one.\n")
    L.append("| benchmark | max abs err (m=0.5) | ref plan max | ref iterations to converge | max abs err (m=0.95, same iters) | ref iters (m=0.95) | cpu vs torch ref |")
    L.append("|---|---|---|---|---|---|---|")
    for r in s["ours"] + s["peers"]:
        a = r.get("accuracy") or {}
        if "max_abs_err_vs_ref" not in a:
            continue
        L.append(f"| {r['benchmark']} | {_fmt_e(a['max_abs_err_vs_ref'])} | {_fmt_e(a.get('ref_plan_max'))} | {a.get('ref_n_iter', '-')} | "
                 f"{_fmt_e(a.get('m095_max_abs_err_vs_ref'))} | {a.get('m095_ref_n_iter', '-')} | "
                 f"{_fmt_e(a.get('ref_cpu_vs_torch_reference'))} |")
    L.append("")
    L.append("Max abs difference between each peer's plans and ours at the same iteration count (the problems the "
             "peer solved):\n")
    L.append("| benchmark | vs ours f32 | vs ours f64 |")
    L.append("|---|---|---|")
    for p in s["peers"]:
        a = p.get("accuracy") or {}
        L.append(f"| {p['benchmark']} | {_fmt_e(a.get('max_abs_diff_vs_ours_f32'))} | {_fmt_e(a.get('max_abs_diff_vs_ours_f64'))} |")
    geo = [p for p in s["peers"] if (p.get("accuracy") or {}).get("long_run")]
    if geo:
        lr = geo[0]["accuracy"]["long_run"]
        L.append("")
        L.append("## GeomLoss check: the problem it solves\n")
        L.append(f"`geomloss.ot.solve_batch(C, a=a, b=b, reg=0.05, max_iter=iters)` takes eps itself (not blur^p); it "
                 f"anneals eps from max C - min C down to reg over `iters` symmetric updates, then makes one last update "
                 f"at reg. Run for {lr['iters']} iterations on problems 0 and 1 (float64), against our float64 solve at "
                 f"its fixed point ({lr['converged_n_iter']} iterations; plan change from 2500 to 5000 iterations "
                 f"{_fmt_e(lr.get('converged_plan_change_2500_to_5000'))}; its marginal error "
                 f"{_fmt_e(lr.get('converged_marginal_err_l1'))}, the float64 copies of the float32 weights 1/64 and "
                 f"1/197 differing in total mass by ~1e-8):\n")
        L.append(f"- plan max abs difference {_fmt_e(lr['plan_max_abs_diff_vs_converged'])} (plan max "
                 f"{_fmt_e(lr['converged_plan_max'])}); GeomLoss's marginal error {_fmt_e(lr['marginal_err_l1'])}")
        L.append(f"- value: GeomLoss's <P,C> + reg KL(P|ab^T) against ours converted to that convention: "
                 f"{_fmt_e(lr['value_kl_diff_vs_converged'])}; <P,C>: {_fmt_e(lr['linear_value_diff_vs_converged'])}")
    sr = s.get("small_reg")
    if sr:
        L.append("")
        L.append(f"## Small regularisation (case 4, 2048 x 2048, reg {sr['reg']}, 100 iterations)\n")
        L.append(f"(a) the max-1 squared-Euclidean cost; (b) the same cost + 1 (values in [1, 2]; same balanced optimum). "
                 f"Our float32 solve of (b) took {_fmt_t(sr['ours_f32_median_s'])} (1 round). POT on numpy float64.\n")
        L.append("| solver | cost | finite | plan mass | marginal err | warnings | notes |")
        L.append("|---|---|---|---|---|---|---|")
        for k, v in sr["results"].items():
            who, cost = k.rsplit("_", 1)
            note = ""
            if "max_abs_diff_vs_unshifted" in v:
                note = f"max abs diff vs (a): {_fmt_e(v['max_abs_diff_vs_unshifted'])}"
            if "status" in v:
                note += f"{'; ' if note else ''}status {v['status']}"
            L.append(f"| {who.replace('_', ' ')} | {'(b) +1' if cost == 'shift1' else '(a)'} | {v['finite']} | "
                     f"{v['plan_mass']:.4g} | {_fmt_e(v['marginal_err_l1'])} | {'; '.join(v['warnings']) or '-'} | {note} |")
    mem = s.get("memory") or {}
    if mem:
        L.append("")
        L.append("## Peak extra memory per solve (case 5)\n")
        L.append("Each probe runs in a fresh interpreter (bench/memprobe.py): inputs built and a tiny warm-up solve run "
                 "first, then VmRSS is read, the kernel's peak-RSS counter reset (`/proc/self/clear_refs`), the solve "
                 "run once (result kept) and VmHWM read: RSS extra = VmHWM - VmRSS(before), outputs included, page "
                 "granularity. For POT (numpy float64) also tracemalloc's peak of numpy/Python allocations during the "
                 "solve. Memory does not depend on the iteration count, so the probes run 20 iterations. Case 1 POT = "
                 "the loop over all 64 problems, keeping the 64 plans.\n")
        L.append("| probe | shape | RSS extra | tracemalloc extra | returned plan(s) |")
        L.append("|---|---|---|---|---|")
        for k, v in mem.items():
            if "error" in v:
                L.append(f"| {k} | error | {v['error'][-200:]} | | |")
                continue
            L.append(f"| {k} | {_shape(v['shape'])} | {_mb(v.get('rss_peak_extra_bytes'))} | "
                     f"{_mb(v.get('tracemalloc_peak_extra_bytes'))} | {_mb(v.get('output_bytes'))} |")
    L.append("")
    L.append("## Method notes\n")
    L.append("- Timing: pytest-benchmark `pedantic(rounds=R, iterations=1, warmup_rounds=1)` (fewer rounds / no warm-up "
             "where noted); median (min-max) over the rounds. Inputs are built outside the timed region; the peers get "
             "torch float32 / float64 tensors or numpy float64 copies of the same (float32-rounded) costs.")
    L.append("- Threads: bench/conftest.py imports every peer, then pins torch's intra-op threads and every BLAS / "
             "OpenMP pool threadpoolctl finds (numpy's and scipy's OpenBLAS, torch's, POT's and scikit-learn's "
             "OpenMP) to the same count for the whole session; each row records the counts as its calls ran.")
    L.append("- Shared machine: before each row the suite waits up to BENCH_IDLE_WAIT s for idle CPUs; a row during "
             "which other processes took > 10% of the CPU time is measured again (BENCH_RETRIES, default 2 more "
             "times) and the least contaminated attempt kept: `(k attempts)` beside its foreign CPU share.")
    L.append("- Equal iterations: ours `entropic_ot(..., check_every=0)` runs exactly `max_iter`; POT's partial solvers "
             "get `stopThr=-1` (they stop when their error <= stopThr, and on case 1 it reaches exactly 0.0 after ~10 "
             "iterations), its Sinkhorn solvers `stopThr=0` / `tol=0`; GeomLoss `max_iter` (plus its final update). "
             "POT's log-domain partial solver (`method='sinkhorn_log'`) gets the mass as a tensor on torch arrays (it "
             "takes its log with the backend).")
    L.append("- Per-problem loops (POT's partial solvers in cases 1-2, sinkhorn_log in case 3) are timed on the first "
             "problems of the batch and scaled linearly (the problems are independent and equal-sized). "
             "`ot.batch.solve_batch` and GeomLoss solve the whole batch at once.")
    L.append("- GeomLoss is timed on case 3 (the batched problem); on case 4 (one 2048 x 2048 problem) its dense "
             "softmin takes seconds per ten iterations here, so it is left out to keep the suite short.")
    L.append("- Throughput counts each cost entry once per iteration (B*n*m*iters / time); ratios use the "
             "extrapolated whole-batch time.")
    return "\n".join(L) + "\n"


def compare(before: dict, after: dict) -> str:
    """Markdown: our medians of two summaries (bench/report.py JSON) side by side, and the peer ratios."""
    L = [f"# CPU OT benchmarks: {before['kernel_commit']} -> {after['kernel_commit']}\n",
         f"- before: kernels `{before['kernel_commit']}` ({before['kernel_commit_date']}), {before['device']}, measured "
         f"{before.get('suite_started')} UTC, {before.get('threads')} threads",
         f"- after: kernels `{after['kernel_commit']}` ({after['kernel_commit_date']}), {after['device']}, measured "
         f"{after.get('suite_started')} UTC, {after.get('threads')} threads", ""]
    if (before.get("device"), before.get("threads")) != (after.get("device"), after.get("threads")):
        L.append("**Warning: the two runs differ in device or threads; their times are not comparable.**\n")
    L.append("| case | shape x iters | ours | before median (min-max) | after median (min-max) | after / before |")
    L.append("|---|---|---|---|---|---|")
    b_ours = {r["key"]: r for r in before["ours"]}
    for r in after["ours"]:
        b = b_ours.get(r["key"])
        same = b is not None and b["shape"] == r["shape"] and b["iters"] == r["iters"]
        L.append(f"| {r['case']} | {_shape(r['shape'])} x {r['iters']} | {r['key'].split('ours_')[-1]} | "
                 f"{_spread(b) if same else '-'} | {_spread(r)} | {_ratio(r['median_s'] / b['median_s']) if same else '-'} |")
    L.append("")
    L.append("| peer | like-for-like ratio before | after |")
    L.append("|---|---|---|")
    b_comp = {c["peer"]: c for c in before.get("comparisons", [])}
    for c in after.get("comparisons", []):
        L.append(f"| {c['peer']} vs ours {c['dtype']} | {_ratio(b_comp.get(c['peer'], {}).get('ratio_peer_over_ours'))} | "
                 f"{_ratio(c.get('ratio_peer_over_ours'))} |")
    return "\n".join(L) + "\n"


def _foreign_cell(r: dict) -> str:
    n = r.get("attempts") or 1
    return _pct(r.get("foreign_cpu_fraction")) + (f" ({n} attempts)" if n > 1 else "")


# ------------------------------------------------------------------------------ analysis suite (test_analysis_cpu.py)
ANALYSIS_CASE_LABEL = {
    "A": "pairwise agreement + KL + entropy from logits, streamed",
    "B": "attention distance, metric='jsd'",
}
# bytes moved per FMA by torch.addcmul(x, y, z, out=o): 3 float32 loads + 1 store
ADDCMUL_BYTES_PER_FMA = 16


def _analysis_row(b: dict) -> dict:
    ei = b["extra_info"]
    f = ei["extrapolation_factor"]
    st = ei.get("timing") or b["stats"]  # a re-measured attempt kept over pytest-benchmark's own (conftest.run_bench)
    return {"key": ei["key"], "case": ei["case"], "side": ei["side"], "benchmark": b["name"], "impl": ei["impl"],
            "shape": ei["shape"], "dtype": ei["dtype"], "median_s": ei["effective_median_s"],
            "min_s": st["min"] * f, "timed_median_s": ei["median_s"], "extrapolation_factor": f,
            "rounds": st["rounds"], "timed_note": ei.get("timed_note"), "rounds_note": ei.get("rounds_note"),
            "work": ei["work"], "rates": ei["rates"], "ratio": ei.get("ratio"), "target": ei["target"],
            "target_met": ei.get("target_met"), "accuracy": ei.get("accuracy"), "result": ei.get("result"),
            "memory": ei.get("memory"), "foreign_cpu_fraction": ei.get("foreign_cpu_fraction"),
            "idle_wait": ei.get("idle_wait")}


def yardstick_fractions(row: dict, thr: dict) -> dict:
    """Our rates as fractions of this CPU's measured peak rates (bench/throughput.py, float32)."""
    rates, out = row["rates"], {}
    mm, exp_c = thr.get("matmul_f32_gflops"), thr.get("exp_f32_cache")
    bw = (thr.get("addcmul_f32_16M_gflops") or 0) / 2 * ADDCMUL_BYTES_PER_FMA
    if "gemm_flop" in rates and mm:
        out["gemm_over_matmul"] = rates["gemm_flop"] / (mm * 1e9)
    if "exp" in rates and exp_c:
        out["exp_over_exp_cache"] = rates["exp"] / (exp_c * 1e9)
    if "logits_bytes" in rates and bw:
        out["bytes_over_stream_bw"] = rates["logits_bytes"] / (bw * 1e9)
    if "pair_entries" in rates and exp_c:
        out["pair_entries_over_exp_cache"] = rates["pair_entries"] / (exp_c * 1e9)
    return out


def summarise_analysis(raw: dict) -> dict:
    gf = raw.get("grounded_fast", {})
    thr = gf.get("throughput_before", {}) or {}
    rows = [_analysis_row(b) for b in raw["benchmarks"] if "case" in b.get("extra_info", {})]
    for r in rows:
        if r["side"] == "ours":
            r["yardstick_fractions"] = yardstick_fractions(r, thr)
    cases = []
    for c in sorted({r["case"] for r in rows}):
        side = {r["side"]: r for r in rows if r["case"] == c}
        ours, base = side.get("ours"), side.get("baseline")
        any_side = ours or base
        cases.append({"case": c, "label": ANALYSIS_CASE_LABEL.get(c, ""), "ours": ours, "baseline": base,
                      "ratio": any_side.get("ratio"), "target": any_side["target"],
                      "target_met": any_side.get("target_met")})
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "suite_started": gf.get("started"),
        "suite_wall_s": gf.get("suite_wall_s"),
        "analysis": gf.get("analysis", {}),
        "environment": gf.get("environment", {}),
        "commit_info": raw.get("commit_info"),
        "throughput_before": thr,
        "throughput_after": gf.get("throughput_after"),
        "cpu_busy_before": gf.get("cpu_busy_before"), "cpu_busy_after": gf.get("cpu_busy_after"),
        "loadavg_before": gf.get("loadavg_before"), "loadavg_after": gf.get("loadavg_after"),
        "cases": cases,
        "memory": gf.get("memory", {}),
    }


def _analysis_machine(s: dict) -> list[str]:
    env = s["environment"]
    cpu = env.get("lscpu", {})
    dirty = env.get("git_dirty_package_files") or []
    L = ["## Machine and software\n",
         f"- CPU: {cpu.get('Model name')}; {cpu.get('CPU(s)')} logical CPUs ({cpu.get('Socket(s)')} socket x "
         f"{cpu.get('Core(s) per socket')} cores x {cpu.get('Thread(s) per core')} threads), L2 {cpu.get('L2 cache')}, "
         f"L3 {cpu.get('L3 cache')}, hypervisor {cpu.get('Hypervisor vendor')}; host `{env.get('hostname')}`",
         f"- torch {env.get('torch')} ({env.get('torch_threads')} intra-op threads), numpy {env.get('numpy')} "
         f"({env.get('blas_numpy')}), Python {env.get('python')}",
         f"- grounded_fast git commit `{env.get('git_commit', '?')[:12]}`"
         + (f", with uncommitted changes in {', '.join(dirty)}" if dirty else " (package files clean)")
         + f"; native extension file written {env.get('extension_mtime')}",
         f"- thread env: {env.get('env')}",
         f"- machine busy (all processes) just before the suite: {_pct(s.get('cpu_busy_before'))}, just after: "
         f"{_pct(s.get('cpu_busy_after'))}; load average before {_la(s.get('loadavg_before'))}, after "
         f"{_la(s.get('loadavg_after'))}", ""]
    thr, thr2 = s["throughput_before"], s.get("throughput_after") or {}
    L += ["Yardsticks (bench/throughput.py, torch, 2 threads, float32; before / after the suite):\n",
          "| yardstick | before | after |", "|---|---|---|"]
    for k, lab in (("matmul_f32_gflops", "2048^3 matmul (GFLOP/s)"),
                   ("exp_f32_cache", "torch.exp, 256K cache-resident (G exp/s)"),
                   ("exp_f32_16M", "torch.exp, 16M elements (G exp/s)"),
                   ("addcmul_f32_16M_gflops", "torch.addcmul, 16M elements (GFLOP/s; x8 = GB/s moved)")):
        L.append(f"| {lab} | {_f(thr.get(k))} | {_f(thr2.get(k))} |")
    L.append(f"| other processes' share of the CPUs during the measurement | {_pct(thr.get('foreign_cpu'))} | "
             f"{_pct(thr2.get('foreign_cpu'))} |")
    return L + [""]


def _analysis_size(c: dict) -> str:
    o = c["ours"] or c["baseline"]
    sh = o["shape"]
    if c["case"] == "A":
        return f"M={sh[0]}, N={sh[1]}, V={sh[2]} ({o['work']['positions']} counted)"
    return f"M={sh[0]}, N={sh[1]} x T={sh[2]}, S={sh[3]} ({o['work']['rows']} counted rows)"


def _analysis_mem_pair(c: dict) -> str:
    ours, base = (((r or {}).get("memory") or {}) for r in (c["ours"], c["baseline"]))
    inp = ours.get("input_bytes", base.get("input_bytes"))
    return f"{_mb(ours.get('rss_peak_extra_bytes'))} / {_mb(base.get('rss_peak_extra_bytes'))} (input {_mb(inp)})"


def _analysis_results(s: dict) -> list[str]:
    L = ["## Results against the targets\n",
         "Ratio = baseline effective time / our time (> 1: ours faster). Baseline effective = its median "
         "scaled linearly to the whole input where it was timed on a part (bracket). Memory = peak extra RSS of "
         "one call (case A: one chunk update; case B: one attention call), ours / baseline.\n",
         "| case | size | baseline | baseline effective (min) | ours median (min) | ratio | target | met? | memory ours / baseline |",
         "|---|---|---|---|---|---|---|---|---|"]
    for c in s["cases"]:
        o, b = c["ours"], c["baseline"]
        note = f" [{b['timed_note']}]" if b and b.get("timed_note") else ""
        note += f" ({b['rounds_note']})" if b and b.get("rounds_note") else ""
        met = "-" if c["target_met"] is None else ("**yes**" if c["target_met"] else "**NO**")
        L.append(f"| {c['case']}: {c['label']} | {_analysis_size(c)} | {b['impl'] + note if b else '-'} | "
                 f"{_fmt_t(b['median_s']) + ' (' + _fmt_t(b['min_s']) + ')' if b else '-'} | "
                 f"{_fmt_t(o['median_s']) + ' (' + _fmt_t(o['min_s']) + ')' if o else '-'} | "
                 f"{'**%.1fx**' % c['ratio'] if c['ratio'] else '-'} | >= {c['target']:g}x | {met} | {_analysis_mem_pair(c)} |")
    dirty = [r["benchmark"] for c in s["cases"] for r in (c["ours"], c["baseline"])
             if r and (r.get("foreign_cpu_fraction") or 0) > 0.10]
    if dirty:
        L.append(f"\n**Warning:** other processes took > 10% of the CPUs during: {', '.join(dirty)}.")
    return L + [""]


def _analysis_throughput(s: dict) -> list[str]:
    L = ["## Throughput against this CPU's yardsticks\n",
         "Case A counts, per counted position: 2 M^2 V flop of the Gram product (the KL / entropy sums as one "
         "matrix product), M V exps (one per logit) and M V x 4 bytes of logits (all positions of the stream). "
         "Fractions: of the 2048^3 matmul rate, of the cache-resident torch.exp rate, and of the streaming "
         "bandwidth implied by torch.addcmul (16 bytes per FMA). Case B counts pair-entries: pairs x counted rows "
         "x sources; the JSD kernel takes one log per pair-entry, hence the fraction of the exp rate (a rough "
         "transcendental yardstick). Baseline rates use its effective time.\n",
         "| case | side | time | rates | fractions of yardsticks | foreign CPU |", "|---|---|---|---|---|---|"]
    for c in s["cases"]:
        for r in (c["ours"], c["baseline"]):
            if not r:
                continue
            rt = r["rates"]
            if c["case"] == "A":
                rates = (f"{rt['positions']:.0f} positions/s, {rt['logits_bytes'] / 1e9:.2f} GB/s logits, "
                         f"{rt['gemm_flop'] / 1e9:.1f} GFLOP/s, {rt['exp'] / 1e9:.3f} G exp/s")
            else:
                rates = f"{rt['pair_entries'] / 1e9:.3f} G pair-entries/s, {rt['rows'] / 1e3:.1f} K rows/s"
            fr = ", ".join(f"{k.replace('_over_', ' / ')} {v:.3f}" for k, v in (r.get("yardstick_fractions") or {}).items())
            L.append(f"| {c['case']} | {r['side']} | {_fmt_t(r['median_s'])} | {rates} | {fr or '-'} | "
                     f"{_pct(r['foreign_cpu_fraction'])} |")
    return L + [""]


def _analysis_accuracy(s: dict) -> list[str]:
    L = ["## Same result\n",
         "Ours against the baseline on the same input (case A: the baseline's timed chunk; case B: the whole "
         f"input); close = within rtol {s['analysis'].get('rtol')} + atol {s['analysis'].get('atol')}. "
         "Max rel diff over the nonzero baseline entries.\n",
         "| case | quantity | max abs diff | max rel diff | close |", "|---|---|---|---|---|"]
    for c in s["cases"]:
        acc = (c["baseline"] or {}).get("accuracy") or {}
        for q in ("agreement", "kl", "entropy", "jsd"):
            if f"{q}_max_abs_diff" in acc:
                L.append(f"| {c['case']} | {q} | {_fmt_e(acc[q + '_max_abs_diff'])} | {_fmt_e(acc[q + '_max_rel_diff'])} | "
                         f"{acc[q + '_close']} |")
    L.append("")
    L.append("Our full-input results (off-diagonal min / mean / max), to show the data are not degenerate: " + "; ".join(
        f"{c['case']} {name}: " + "/".join(f"{v[k]:.3g}" for k in ("min", "mean", "max"))
        for c in s["cases"] if c["ours"] and c["ours"].get("result")
        for name, v in c["ours"]["result"].items() if isinstance(v, dict)) + ".")
    return L + [""]


def _analysis_memory(s: dict) -> list[str]:
    L = ["## Peak extra memory per call\n",
         "Each probe in a fresh interpreter (bench/analysis_memprobe.py, the method of bench/memprobe.py): inputs "
         "built and a tiny call run first, then VmRSS read, the peak-RSS counter reset, one call run (result kept), "
         "VmHWM read; RSS extra = VmHWM - VmRSS(before), page granularity. tracemalloc: NumPy / Python allocations "
         "only (the NumPy baseline).\n",
         "| probe | input | RSS extra | RSS extra / input | tracemalloc extra |", "|---|---|---|---|---|"]
    for k, v in s["memory"].items():
        if "error" in v:
            L.append(f"| {k} | error: {v['error'][-200:]} | | | |")
            continue
        L.append(f"| {k} | {'x'.join(map(str, v['shape']))} {v['dtype']} ({_mb(v['input_bytes'])}) | "
                 f"{_mb(v['rss_peak_extra_bytes'])} | {v['rss_peak_extra_bytes'] / v['input_bytes']:.2f} | "
                 f"{_mb(v.get('tracemalloc_peak_extra_bytes'))} |")
    return L + [""]


def _analysis_notes(s: dict) -> list[str]:
    a = s["analysis"]
    ag = a.get("agreement_size", {})
    return ["## Method notes\n",
            "- Data (bench/analysis_cases.py, fixed seeds): related models, logits / attention scores = 3 x a shared "
            "base + per-model noise with scales spread over [0.5, 1.5]; ~10% of positions masked (A); per-item target "
            "and source padding (B, rows renormalised over the valid sources).",
            f"- Case A streams N={ag.get('N')} positions in chunks of {ag.get('chunk')} through "
            f"`PairwiseAgreement.update`, cycling a pool of {ag.get('pool')} distinct generated chunks of "
            f"{_mb(4 * ag.get('M', 0) * ag.get('chunk', 0) * ag.get('V', 0))} (generating every logit of the stream "
            "would dominate the run; the kernel keeps nothing across chunks, and a chunk larger than the caches "
            "gains nothing from the reuse). Ours: "
            "1 warm-up chunk, then rounds of the whole stream. The baseline (PyTorch float32, Python loop over "
            "ordered pairs) is timed on the stream's first chunk and scaled by counted positions.",
            "- Case B baseline: NumPy float64, counted rows kept and renormalised once per model, then a Python loop "
            "over pairs i < j, each vectorised over rows, 0 log 0 = 0; timed in full, 1 round.",
            "- Timing: pytest-benchmark `pedantic(iterations=1)`, medians (min in parentheses); inputs built outside "
            "the timed region. Both sides of a case ran in the same session.", ""]


def markdown_analysis(s: dict) -> str:
    quick = s["analysis"].get("quick")
    L = ["# CPU analysis-kernel benchmarks: grounded_fast vs straightforward per-pair implementations (same run)\n"]
    if quick:
        L.append("**QUICK MODE (ANALYSIS_BENCH_QUICK=1): small sizes, a smoke test of the pipeline; the figures are "
                 "not the benchmark.**\n")
    L.append(f"Generated by `bash bench/run_analysis_cpu.sh` (bench/test_analysis_cpu.py + bench/report.py) "
             f"on {s['generated']}; suite started {s['suite_started']}, pytest wall "
             f"{(s.get('suite_wall_s') or 0):.0f} s.\n")
    L += (_analysis_machine(s) + _analysis_results(s) + _analysis_throughput(s) + _analysis_accuracy(s)
          + _analysis_memory(s) + _analysis_notes(s))
    return "\n".join(L)


# ------------------------------------------------------------------------------ command line
class Suite(NamedTuple):
    """How the report of one suite is named: the summary JSON ``<json_prefix>-<tag>.json`` and the
    markdown ``md_name(summary)``; with ``snapshot_name(summary, tag)`` the summary JSON and markdown
    are written under that name instead, and the markdown copied to ``md_name(summary)``."""
    source: str
    summarise: Callable[[dict], dict]
    markdown: Callable[[dict], str]
    json_prefix: str
    md_name: Callable[[dict], str]
    snapshot_name: Optional[Callable[[dict, str], str]] = None


SUITES = {
    "ot": Suite("bench/test_ot_cpu.py", summarise_ot, markdown_ot, "cpu", lambda s: "cpu.md",
                snapshot_name=lambda s, tag: f"cpu-{tag}-{s['kernel_commit']}"),
    "analysis": Suite("bench/test_analysis_cpu.py", summarise_analysis, markdown_analysis, "analysis-cpu",
                      lambda s: "analysis-cpu-quick.md" if s["analysis"].get("quick") else "analysis-cpu.md"),
}


def detect_suite(raw: dict) -> str:
    """'analysis' for a run of bench/test_analysis_cpu.py (its ``grounded_fast.analysis`` section, or
    benchmarks recording work rates), else 'ot'."""
    if "analysis" in (raw.get("grounded_fast") or {}):
        return "analysis"
    if any("rates" in (b.get("extra_info") or {}) for b in raw.get("benchmarks", [])):
        return "analysis"
    return "ot"


def write_report(raw_path: str, outdir: str, tag: Optional[str] = None, suite: Optional[str] = None) -> list[str]:
    """Raw pytest-benchmark JSON -> the suite's summary JSON and markdown in ``outdir`` (printed);
    returns the files written."""
    with open(raw_path) as f:
        raw = json.load(f)
    sp = SUITES[suite or detect_suite(raw)]
    s = sp.summarise(raw)
    s["source_json"] = os.path.relpath(raw_path, os.path.dirname(outdir))
    tag = tag or ("ci" if os.environ.get("CI") else socket.gethostname())
    os.makedirs(outdir, exist_ok=True)
    stem = sp.snapshot_name(s, tag) if sp.snapshot_name else f"{sp.json_prefix}-{tag}"
    out_json = os.path.join(outdir, f"{stem}.json")
    out_md = os.path.join(outdir, f"{stem}.md" if sp.snapshot_name else sp.md_name(s))
    with open(out_json, "w") as f:
        json.dump(s, f, indent=1, default=str)
    md = sp.markdown(s)
    with open(out_md, "w") as f:
        f.write(md)
    written = [out_json, out_md]
    if sp.snapshot_name:
        shutil.copyfile(out_md, os.path.join(outdir, sp.md_name(s)))
        written.append(os.path.join(outdir, sp.md_name(s)))
    print(md)
    print("wrote " + ", ".join(written))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", nargs="?",
                    help="raw pytest-benchmark JSON of bench/test_ot_cpu.py or bench/test_analysis_cpu.py")
    ap.add_argument("--suite", choices=sorted(SUITES), default=None,
                    help="the suite of RAW (default: read off the JSON)")
    ap.add_argument("--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default=None,
                    help="host name in the output files' names (default: 'ci' if $CI is set, else hostname)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="two OT summaries (cpu-<tag>-<commit>.json) side by side instead")
    ap.add_argument("--out", default=None, help="with --compare: also write the markdown here")
    args = ap.parse_args(argv)
    if (args.raw is None) == (args.compare is None):
        ap.error("give either RAW.json or --compare BEFORE.json AFTER.json")
    if args.compare:
        with open(args.compare[0]) as f0, open(args.compare[1]) as f1:
            md = compare(json.load(f0), json.load(f1))
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
        print(md)
        return
    write_report(args.raw, args.outdir, args.tag, args.suite)


if __name__ == "__main__":
    main()
