"""Post-process a pytest-benchmark JSON of bench/test_ot_cpu.py into
bench/results/cpu-<hostname or 'ci'>.json (summary) and bench/results/cpu.md (tables).

    python bench/report.py RAW.json [--outdir bench/results] [--tag NAME]

Everything comes from the JSON: timings (pytest-benchmark stats), ratios and accuracy figures
(``extra_info`` of each benchmark), machine / versions / throughput / memory (the top-level
``grounded_fast`` section written by bench/conftest.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import time

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


def summarise(raw: dict) -> dict:
    gf = raw.get("grounded_fast", {})
    env = gf.get("environment", {})
    thr = gf.get("throughput_before", {}) or {}
    benches = {}
    for b in raw["benchmarks"]:
        ei = b.get("extra_info", {})
        benches[b["name"]] = {"name": b["name"], "stats": {k: b["stats"][k] for k in ("min", "median", "mean", "stddev", "rounds")},
                              "extra": ei}
    ours_rows, pot_rows, comparisons = [], [], []
    for b in benches.values():
        ei = b["extra"]
        if "case" not in ei:
            continue
        f = ei.get("extrapolation_factor", 1)
        row = {"key": ei["key"], "case": ei["case"], "label": CASE_LABEL.get(ei["case"], ""), "benchmark": b["name"],
               "impl": ei["impl"], "dtype": ei["dtype"], "domain": ei.get("domain"), "shape": ei["shape"],
               "iters": ei["iters"], "median_s": ei["effective_median_s"], "min_s": b["stats"]["min"] * f,
               "rounds": b["stats"]["rounds"], "timed_problems": ei.get("timed_problems"),
               "throughput_entry_iters_per_s": ei["throughput_entry_iters_per_s"],
               "foreign_cpu_fraction": ei.get("foreign_cpu_fraction"), "idle_wait": ei.get("idle_wait")}
        if ei["side"] == "ours":
            dt, tp = ei["dtype"], ei["throughput_entry_iters_per_s"]
            exp16, mm = thr.get(f"exp_{dt}_16M"), thr.get(f"matmul_{dt}_gflops")
            row["throughput_over_exp16M"] = tp / (exp16 * 1e9) if exp16 else None
            row["throughput_over_fma_peak"] = tp / (mm * 1e9 / 2) if mm else None  # FMA/s = GFLOP/s / 2
            row["vs_pot"] = ei.get("vs_pot", {})
            ours_rows.append(row)
        else:
            row["ratio_vs"] = ei.get("ratio_vs", {})
            pot_rows.append(row)
    by_key = {r["key"]: r for r in ours_rows}
    for p in pot_rows:
        for ok, ratio in p["ratio_vs"].items():
            o = by_key.get(ok)
            comparisons.append({"case": p["case"], "pot": p["key"], "ours": ok, "pot_median_s": p["median_s"],
                                "ours_median_s": o["median_s"] if o else None, "ratio_pot_over_ours": ratio})
    order = {"f32": 0, "f64": 1, "f32_log": 2, "f64_log": 3}
    ours_rows.sort(key=lambda r: (r["case"], order.get(r["key"].split("ours_")[-1], 9)))
    pot_rows.sort(key=lambda r: (r["case"], r["key"]))
    accuracy = {b["name"]: b["extra"].get("accuracy") for b in benches.values() if b["extra"].get("accuracy")}
    small = next((b for b in benches.values() if b["extra"].get("small_reg")), None)
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "suite_started": gf.get("started"),
        "suite_wall_s": gf.get("suite_wall_s"),
        "environment": env,
        "pytest_benchmark_machine_info": {k: raw.get("machine_info", {}).get(k) for k in ("node", "processor", "cpu")},
        "commit_info": raw.get("commit_info"),
        "throughput_before": thr,
        "throughput_after": gf.get("throughput_after"),
        "cpu_busy_before": gf.get("cpu_busy_before"), "cpu_busy_after": gf.get("cpu_busy_after"),
        "loadavg_before": gf.get("loadavg_before"), "loadavg_after": gf.get("loadavg_after"),
        "ours": ours_rows,
        "pot": pot_rows,
        "comparisons": comparisons,
        "accuracy": accuracy,
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
    L.append("# CPU OT benchmarks: grounded_fast vs POT (same run, equal iterations)\n")
    L.append(f"Generated by `bash bench/run_cpu.sh` (bench/test_ot_cpu.py + bench/report.py) on {s['generated']}; "
             f"suite started {s['suite_started']}, pytest wall {s['suite_wall_s']:.0f} s.\n"
             if s.get("suite_wall_s") else "")
    L.append("## Machine and software\n")
    L.append(f"- CPU: {cpu.get('Model name')}; {cpu.get('CPU(s)')} logical CPUs ({cpu.get('Socket(s)')} socket x "
             f"{cpu.get('Core(s) per socket')} cores x {cpu.get('Thread(s) per core')} threads), L2 {cpu.get('L2 cache')}, "
             f"L3 {cpu.get('L3 cache')}, hypervisor {cpu.get('Hypervisor vendor')}; host `{env.get('hostname')}`")
    L.append(f"- torch {env.get('torch')} ({env.get('torch_threads')} intra-op threads, OpenMP), numpy {env.get('numpy')} "
             f"({env.get('blas_numpy')}, default threads), POT {env.get('pot')}, Python {env.get('python')}")
    dirty = env.get("git_dirty_package_files") or []
    L.append(f"- grounded_fast git commit `{env.get('git_commit', '?')[:12]}`"
             + (f", with uncommitted changes in {', '.join(dirty)}" if dirty else " (package files clean)")
             + f"; native extension file written {env.get('extension_mtime')} (last commit touching csrc/: "
             f"{env.get('git_last_csrc_commit')})")
    L.append(f"- thread env: {env.get('env')}")
    L.append(f"- machine busy (all processes) just before the suite: {100 * (s.get('cpu_busy_before') or 0):.0f}%, "
             f"just after: {100 * (s.get('cpu_busy_after') or 0):.0f}%; load average before {_la(s.get('loadavg_before'))}, "
             f"after {_la(s.get('loadavg_after'))}")
    L.append("")
    L.append("Measured throughput of this CPU (bench/throughput.py, torch, 2 threads; before / after the suite):\n")
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
        L.append(f"\n**Note:** yardsticks moved > 20% between start and end ({', '.join(drift)}). On this VM the "
                 "exp yardsticks vary by up to ~30% between back-to-back runs even with no other process busy, so the "
                 "`/exp16M` fractions below carry that uncertainty.")
    L.append("")
    L.append("## POT vs ours at equal iteration counts\n")
    L.append("Each cell: **POT time / our time** (> 1: ours faster), our median in parentheses. `f32`, `f64`: "
             "our default (`domain='auto'`: stabilised scaling-domain iterations, log-domain iterations where they would underflow); "
             "`log`: `domain='log'` (log-sum-exp passes only). POT medians (min in parentheses) are for the whole "
             "batch; `k/B timed` = POT timed on k problems of the batch and scaled linearly by B/k.\n")
    variants = ["f32", "f64", "f32_log", "f64_log"]
    L.append("| case | shape x iters | POT baseline | POT median (min) | " + " | ".join(f"vs ours {v.replace('_', ' ')}" for v in variants) + " |")
    L.append("|---|---|---|---|" + "---|" * len(variants))
    ours_by_key = {r["key"]: r for r in s["ours"]}
    for p in s["pot"]:
        B = p["shape"][0]
        sub = f" [{p['timed_problems']}/{B} timed, x{B // p['timed_problems']}]" if p.get("timed_problems") and p["timed_problems"] < B else ""
        rounds = f", {p['rounds']} round{'s' if p['rounds'] != 1 else ''}" if p["rounds"] < 3 else ""
        cells = []
        for v in variants:
            k = f"case{p['case']}/ours_{v}"
            r = p["ratio_vs"].get(k)
            o = ours_by_key.get(k)
            cells.append(f"**{r:.2f}x** ({_fmt_t(o['median_s'])})" if r is not None and o else "-")
        L.append(f"| {p['case']}: {p['label']} | {_shape(p['shape'])} x {p['iters']} | {p['impl']}{sub}{rounds} | "
                 f"{_fmt_t(p['median_s'])} ({_fmt_t(p['min_s'])}) | " + " | ".join(cells) + " |")
    slower = [c for c in s["comparisons"] if c["ratio_pot_over_ours"] < 1]
    if slower:
        L.append("\n**POT faster than ours in:** " + "; ".join(
            f"case {c['case']}: {c['pot'].split('/')[1]} vs {c['ours'].split('/')[1]} ({c['ratio_pot_over_ours']:.2f}x)"
            for c in slower))
    L.append("")
    L.append("## Our kernel: time and throughput\n")
    L.append("Throughput = cost entries x iterations / s (B*n*m*iters / median). `/exp16M` = throughput / this CPU's "
             "torch.exp rate on 16M elements of the same dtype (the requested yardstick); `/FMA peak` = throughput / "
             "(2048^3 matmul FLOP/s / 2) of the same dtype. A log-domain iteration costs 2 exp per entry (row and column "
             "log-sum-exp), a scaling-domain iteration 2 FMA per entry (two matrix-vector passes), so 0.5 in the "
             "matching column would mean bound by that yardstick. `foreign CPU` = share of the machine's CPU time taken "
             "by other processes while the benchmark ran (> 10% = contaminated timing).\n")
    L.append("| case | shape x iters | variant | median (min) | rounds | throughput (G entry-it/s) | /exp16M | /FMA peak | foreign CPU |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in s["ours"]:
        v = r["key"].split("ours_")[-1]
        L.append(f"| {r['case']}: {r['label']} | {_shape(r['shape'])} x {r['iters']} | {v.replace('_', ' ')} ({r['domain']}) | "
                 f"{_fmt_t(r['median_s'])} ({_fmt_t(r['min_s'])}) | {r['rounds']} | {r['throughput_entry_iters_per_s'] / 1e9:.3f} | "
                 f"{_f(r['throughput_over_exp16M'])} | {_f(r['throughput_over_fma_peak'])} | {_pct(r['foreign_cpu_fraction'])} |")
    L.append("")
    L.append("POT throughput for reference (same definition, whole-batch effective time): " + "; ".join(
        f"case {p['case']} {p['key'].split('/')[1]}: {p['throughput_entry_iters_per_s'] / 1e9:.4f} G entry-it/s "
        f"(foreign CPU {_pct(p['foreign_cpu_fraction'])})" for p in s["pot"]) + ".")
    dirty = [r["benchmark"] for r in s["ours"] + s["pot"] if (r.get("foreign_cpu_fraction") or 0) > 0.10]
    if dirty:
        L.append(f"\n**Warning:** other processes took > 10% of the CPUs during: {', '.join(dirty)}.")
    L.append("")
    L.append("## Matched accuracy (partial OT)\n")
    L.append("Max abs error of the plan after the timed iterations vs a float64 reference run to convergence "
             "(our kernel, float64, tol 1e-14 on POT's ||P_k - P_k-1||_F; it agrees with the pure-torch reference "
             "to the figure in the last column). Case 1: problems 0 and 1; `m=0.95` is a supplementary run on the same "
             "two problems with mass 0.95 (the mass constraints are active there, unlike m=0.5).\n")
    trivial = sorted({str(a.get("ref_n_iter")) for a in s["accuracy"].values() if a.get("ref_n_iter")
                      and max(a["ref_n_iter"]) <= 2})
    if trivial:
        L.append("Note: at m=0.5 the float64 reference stops after 1 iteration (the mass constraints P1 <= a, "
                 "P^T1 <= b are inactive: the scaled kernel m K / sum K already satisfies them), so the m=0.5 errors only "
                 "show rounding; the m=0.95 column (constraints active, reference converges in ~50 iterations) is the "
                 "informative comparison.\n")
    L.append("| benchmark | max abs err (m=0.5) | ref plan max | ref iterations to converge | max abs err (m=0.95, same iters) | ref iters (m=0.95) | cpu vs torch ref |")
    L.append("|---|---|---|---|---|---|---|")
    for name, a in s["accuracy"].items():
        if "max_abs_err_vs_ref" not in a:
            continue
        L.append(f"| {name} | {_fmt_e(a['max_abs_err_vs_ref'])} | {_fmt_e(a.get('ref_plan_max'))} | {a.get('ref_n_iter', '-')} | "
                 f"{_fmt_e(a.get('m095_max_abs_err_vs_ref'))} | {a.get('m095_ref_n_iter', '-')} | "
                 f"{_fmt_e(a.get('ref_cpu_vs_torch_reference'))} |")
    L.append("")
    L.append("Balanced cases (3, 4): marginal error max_b (||P1-a||_1 + ||P^T1-b||_1) of each plan, and max abs "
             "difference between our plan and POT's at the same iteration count:\n")
    L.append("| benchmark | marginal err | max abs diff vs ours f32 | vs ours f64 |")
    L.append("|---|---|---|---|")
    for name, a in s["accuracy"].items():
        if "marginal_err_l1" not in a:
            continue
        L.append(f"| {name} | {_fmt_e(a['marginal_err_l1'])} | {_fmt_e(a.get('max_abs_diff_vs_ours_f32'))} | "
                 f"{_fmt_e(a.get('max_abs_diff_vs_ours_f64'))} |")
    sr = s.get("small_reg")
    if sr:
        L.append("")
        L.append(f"## Small regularisation (case 4, 2048 x 2048, reg {sr['reg']}, 100 iterations)\n")
        L.append(f"(a) the max-1 squared-Euclidean cost; (b) the same cost + 1 (values in [1, 2]; same balanced optimum). "
                 f"Our float32 solve of (b) took {_fmt_t(sr['ours_f32_median_s'])} (1 round).\n")
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
                 "granularity. For POT also tracemalloc's peak of numpy/Python allocations during the solve. Memory "
                 "does not depend on the iteration count, so the probes run 20 iterations. Case 1 POT = the loop over "
                 "all 64 problems, keeping the 64 plans.\n")
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
             "where noted); medians reported, min in parentheses. Inputs are built outside the timed region; POT "
             "gets numpy float64 copies of the same (float32-rounded) costs.")
    L.append("- Equal iterations: ours `entropic_ot(..., check_every=0)` runs exactly `max_iter`; POT's partial solver "
             "gets `stopThr=-1` (it stops when its error <= stopThr, and on case 1 its error reaches exactly 0.0 after "
             "~10 iterations), Sinkhorn solvers `stopThr=0` / `tol=0`.")
    L.append("- POT per-problem loops (case 1 partial, case 3 sinkhorn_log) are timed on the first 4 problems of the "
             "64 and scaled x16 (linear extrapolation: the problems are independent and equal-sized).")
    L.append("- Throughput counts each cost entry once per iteration (B*n*m*iters / time); POT's ratio uses the "
             "extrapolated whole-batch time.")
    return "\n".join(L) + "\n"


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _la(x):
    return "-" if not x else "/".join(f"{v:.2f}" for v in x)


def run_cli(doc: str, summarise_fn, markdown_fn, json_prefix: str, md_name) -> None:
    """The command line shared by the report scripts: raw pytest-benchmark JSON -> summary JSON
    ``<json_prefix>-<tag>.json`` and the markdown ``md_name(summary)`` in --outdir."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default=None,
                    help=f"name in {json_prefix}-<tag>.json (default: 'ci' if $CI is set, else hostname)")
    args = ap.parse_args()
    with open(args.raw) as f:
        raw = json.load(f)
    s = summarise_fn(raw)
    s["source_json"] = os.path.relpath(args.raw, os.path.dirname(args.outdir))
    tag = args.tag or ("ci" if os.environ.get("CI") else socket.gethostname())
    os.makedirs(args.outdir, exist_ok=True)
    out_json = os.path.join(args.outdir, f"{json_prefix}-{tag}.json")
    out_md = os.path.join(args.outdir, md_name(s))
    with open(out_json, "w") as f:
        json.dump(s, f, indent=1, default=str)
    md = markdown_fn(s)
    with open(out_md, "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {out_json} and {out_md}")


def main():
    run_cli(__doc__, summarise, markdown, "cpu", lambda s: "cpu.md")


if __name__ == "__main__":
    main()
