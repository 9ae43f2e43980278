"""Peak extra memory of one analysis call, measured in a fresh process (used by test_analysis_cpu.py).

    python bench/analysis_memprobe.py PROBE      # prints one JSON object

PROBE is one of ``PROBES``:
  agreement_ours / agreement_baseline   one chunk of case A (M x chunk x V float32 logits, the first
                                        chunk of the stream): PairwiseAgreement update + compute /
                                        analysis_cases.baseline_agreement;
  attention_ours / attention_baseline   the whole case-B input: attention_distance(metric='jsd') /
                                        analysis_cases.baseline_attention (NumPy float64).
Method and figures: bench/memprobe.py's (its probes are reused): inputs built and the same call run
twice on a tiny input first, then VmRSS read, the peak-RSS counter reset, the call run once (result
kept) and VmHWM read; rss_peak_extra_bytes = VmHWM - VmRSS(before). For the NumPy baseline also
tracemalloc's peak (tracemalloc cannot see torch's allocator). ``input_bytes``: size of the input
the call reads, for context. Sizes follow ANALYSIS_BENCH_QUICK like the benchmarks.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROBES = ("agreement_ours", "agreement_baseline", "attention_ours", "attention_baseline")


def _agreement_calls(side: str):
    """(call on one full-size chunk, call on a tiny chunk, the full-size input)."""
    import analysis_cases as cases

    z, mask = cases.logit_chunk(cases.AGREE, seed=0)
    tz, tmask = cases.logit_chunk(replace(cases.AGREE, chunk=4, V=64), seed=99)
    if side == "ours":
        return (lambda: cases.ours_agreement([(z, mask)], z.shape[0]),
                lambda: cases.ours_agreement([(tz, tmask)], tz.shape[0]), z)
    return lambda: cases.baseline_agreement(z, mask), lambda: cases.baseline_agreement(tz, tmask), z


def _attention_calls(side: str):
    """(call on the full-size input, call on a tiny input, the full-size attention tensor)."""
    import analysis_cases as cases

    d = cases.attention_data()
    tiny = cases.attention_data(replace(cases.ATTN, N=2, T=4), seed=99)
    fn = cases.ours_attention if side == "ours" else cases.baseline_attention
    return lambda: fn(d), lambda: fn(tiny), d.attn


def main(probe: str) -> dict:
    import torch

    import analysis_cases as cases
    import memprobe

    if probe not in PROBES:
        raise SystemExit(f"unknown probe {probe!r}; one of {PROBES}")
    torch.set_num_threads(2)
    case, side = probe.split("_")
    fn, fn_tiny, x = (_agreement_calls if case == "agreement" else _attention_calls)(side)
    fn_tiny()
    fn_tiny()
    out = {"probe": probe, "quick": cases.QUICK, "shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
           "input_bytes": x.numel() * x.element_size()}
    out.update(memprobe._rss_probe(fn))
    if probe == "attention_baseline":
        out.update(memprobe._tracemalloc_probe(fn))
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
