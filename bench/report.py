"""Post-process a pytest-benchmark JSON of bench/test_ot_cpu.py into a summary JSON and markdown
tables, named by the host tag and the commit of the kernels measured:

    python bench/report.py RAW.json [--outdir bench/results] [--tag NAME]
        -> bench/results/cpu-<tag>-<kernel commit>.json and .md, and bench/results/cpu.md (a copy)
    python bench/report.py --compare BEFORE.json AFTER.json [--out FILE.md]
        -> our medians (and the peer ratios) of two such summaries side by side

Everything comes from the JSON: timings (pytest-benchmark stats), ratios and accuracy figures
(``extra_info`` of each benchmark), machine / versions / threads / throughput / memory (the
top-level ``grounded_fast`` section written by bench/conftest.py).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as `python bench/report.py`: this checkout's grounded_fast
    sys.path.insert(0, ROOT)

from grounded_fast._bench import fmt_ratio, fmt_spread  # noqa: E402

CASE_LABEL = {
    "1": "partial, cosine (d=384), reg 0.05, m 0.5",
    "2": "partial, sqeuclidean 2-d (max 1), reg 0.05, m 0.5",
    "3": "balanced, cosine (d=384), reg 0.05",
    "4": "balanced, sqeuclidean 2-d (max 1), reg 0.05",
    "4s": "balanced, sqeuclidean 2-d + 1, reg 1e-3",
}
EXPS_PER_ENTRY_ITER = 2  # one exp per entry in the row pass and one in the column pass


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


def summarise(raw: dict) -> dict:
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
        row = {"key": ei["key"], "case": ei["case"], "label": CASE_LABEL.get(ei["case"], ""), "benchmark": b["name"],
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


def markdown(s: dict) -> str:
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


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _la(x):
    return "-" if not x else "/".join(f"{v:.2f}" for v in x)


def run_cli(doc: str, summarise_fn, markdown_fn, json_prefix: str, md_name, argv=None, snapshot_name=None) -> None:
    """The command line shared by the report scripts: raw pytest-benchmark JSON -> summary JSON
    ``<json_prefix>-<tag>.json`` and the markdown ``md_name(summary)`` in --outdir; with
    ``snapshot_name(summary, tag)`` the summary JSON and markdown are written under that name
    instead, and the markdown copied to ``md_name(summary)``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default=None,
                    help=f"name in {json_prefix}-<tag>.json (default: 'ci' if $CI is set, else hostname)")
    args = ap.parse_args(argv)
    with open(args.raw) as f:
        raw = json.load(f)
    s = summarise_fn(raw)
    s["source_json"] = os.path.relpath(args.raw, os.path.dirname(args.outdir))
    tag = args.tag or ("ci" if os.environ.get("CI") else socket.gethostname())
    os.makedirs(args.outdir, exist_ok=True)
    stem = snapshot_name(s, tag) if snapshot_name else f"{json_prefix}-{tag}"
    out_json = os.path.join(args.outdir, f"{stem}.json")
    out_md = os.path.join(args.outdir, f"{stem}.md" if snapshot_name else md_name(s))
    with open(out_json, "w") as f:
        json.dump(s, f, indent=1, default=str)
    md = markdown_fn(s)
    with open(out_md, "w") as f:
        f.write(md)
    written = [out_json, out_md]
    if snapshot_name:
        shutil.copyfile(out_md, os.path.join(args.outdir, md_name(s)))
        written.append(os.path.join(args.outdir, md_name(s)))
    print(md)
    print("wrote " + ", ".join(written))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compare"]:
        ap = argparse.ArgumentParser(description="compare two summaries of bench/report.py")
        ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), required=True)
        ap.add_argument("--out", default=None, help="also write the markdown here")
        args = ap.parse_args(argv)
        with open(args.compare[0]) as f0, open(args.compare[1]) as f1:
            md = compare(json.load(f0), json.load(f1))
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
        print(md)
        return
    run_cli(__doc__, summarise, markdown, "cpu", lambda s: "cpu.md", argv,
            snapshot_name=lambda s, tag: f"cpu-{tag}-{s['kernel_commit']}")


if __name__ == "__main__":
    main()
