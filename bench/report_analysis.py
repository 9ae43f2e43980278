"""Post-process a pytest-benchmark JSON of bench/test_analysis_cpu.py into
bench/results/analysis-cpu-<tag>.json (summary) and bench/results/analysis-cpu.md (tables;
analysis-cpu-quick.md for a quick-mode run, ANALYSIS_BENCH_QUICK=1).

    python bench/report_analysis.py RAW.json [--outdir bench/results] [--tag NAME]

Everything comes from the JSON: timings (pytest-benchmark stats), ratios, work, accuracy and memory
(``extra_info`` of each benchmark), machine / versions / yardsticks (the top-level
``grounded_fast`` section written by bench/conftest.py and test_analysis_cpu.py).
"""
from __future__ import annotations

import time

from report import _f, _fmt_e, _fmt_t, _la, _mb, _pct, run_cli

CASE_LABEL = {
    "A": "pairwise agreement + KL + entropy from logits, streamed",
    "B": "attention distance, metric='jsd'",
}
# bytes moved per FMA by torch.addcmul(x, y, z, out=o): 3 float32 loads + 1 store
ADDCMUL_BYTES_PER_FMA = 16


def _row(b: dict) -> dict:
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


def summarise(raw: dict) -> dict:
    gf = raw.get("grounded_fast", {})
    thr = gf.get("throughput_before", {}) or {}
    rows = [_row(b) for b in raw["benchmarks"] if "case" in b.get("extra_info", {})]
    for r in rows:
        if r["side"] == "ours":
            r["yardstick_fractions"] = yardstick_fractions(r, thr)
    cases = []
    for c in sorted({r["case"] for r in rows}):
        side = {r["side"]: r for r in rows if r["case"] == c}
        ours, base = side.get("ours"), side.get("baseline")
        any_side = ours or base
        cases.append({"case": c, "label": CASE_LABEL.get(c, ""), "ours": ours, "baseline": base,
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


# ------------------------------------------------------------------------------ markdown
def _machine(s: dict) -> list[str]:
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


def _size(c: dict) -> str:
    o = c["ours"] or c["baseline"]
    sh = o["shape"]
    if c["case"] == "A":
        return f"M={sh[0]}, N={sh[1]}, V={sh[2]} ({o['work']['positions']} counted)"
    return f"M={sh[0]}, N={sh[1]} x T={sh[2]}, S={sh[3]} ({o['work']['rows']} counted rows)"


def _mem_pair(c: dict) -> str:
    ours, base = (((r or {}).get("memory") or {}) for r in (c["ours"], c["baseline"]))
    inp = ours.get("input_bytes", base.get("input_bytes"))
    return f"{_mb(ours.get('rss_peak_extra_bytes'))} / {_mb(base.get('rss_peak_extra_bytes'))} (input {_mb(inp)})"


def _results(s: dict) -> list[str]:
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
        L.append(f"| {c['case']}: {c['label']} | {_size(c)} | {b['impl'] + note if b else '-'} | "
                 f"{_fmt_t(b['median_s']) + ' (' + _fmt_t(b['min_s']) + ')' if b else '-'} | "
                 f"{_fmt_t(o['median_s']) + ' (' + _fmt_t(o['min_s']) + ')' if o else '-'} | "
                 f"{'**%.1fx**' % c['ratio'] if c['ratio'] else '-'} | >= {c['target']:g}x | {met} | {_mem_pair(c)} |")
    dirty = [r["benchmark"] for c in s["cases"] for r in (c["ours"], c["baseline"])
             if r and (r.get("foreign_cpu_fraction") or 0) > 0.10]
    if dirty:
        L.append(f"\n**Warning:** other processes took > 10% of the CPUs during: {', '.join(dirty)}.")
    return L + [""]


def _throughput(s: dict) -> list[str]:
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


def _accuracy(s: dict) -> list[str]:
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


def _memory(s: dict) -> list[str]:
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


def _notes(s: dict) -> list[str]:
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


def markdown(s: dict) -> str:
    quick = s["analysis"].get("quick")
    L = ["# CPU analysis-kernel benchmarks: grounded_fast vs straightforward per-pair implementations (same run)\n"]
    if quick:
        L.append("**QUICK MODE (ANALYSIS_BENCH_QUICK=1): small sizes, a smoke test of the pipeline; the figures are "
                 "not the benchmark.**\n")
    L.append(f"Generated by `bash bench/run_analysis_cpu.sh` (bench/test_analysis_cpu.py + bench/report_analysis.py) "
             f"on {s['generated']}; suite started {s['suite_started']}, pytest wall "
             f"{(s.get('suite_wall_s') or 0):.0f} s.\n")
    L += _machine(s) + _results(s) + _throughput(s) + _accuracy(s) + _memory(s) + _notes(s)
    return "\n".join(L)


def main():
    run_cli(__doc__, summarise, markdown, "analysis-cpu",
            lambda s: "analysis-cpu-quick.md" if s["analysis"].get("quick") else "analysis-cpu.md")


if __name__ == "__main__":
    main()
