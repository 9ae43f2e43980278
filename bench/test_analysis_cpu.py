"""CPU benchmarks: grounded_fast's analysis kernels against straightforward per-pair implementations.

    bash bench/run_analysis_cpu.sh                           # -> bench/results/analysis-cpu.md
    ANALYSIS_BENCH_QUICK=1 bash bench/run_analysis_cpu.sh    # smoke test at small sizes

Data and callables: bench/analysis_cases.py. Both sides of a case run in the same session;
``ratio`` = baseline effective time / our time (> 1: ours faster), beside the issue's target.

Case A, agreement + KL + entropy (M=40, N=20000 positions, V=30522, float32, chunks of 50):
  ours streams all N positions through PairwiseAgreement (a pool of 4 chunks cycled), timed after a
  1-chunk warm-up over 2 rounds of the whole stream. The per-pair PyTorch baseline is timed on the
  first chunk of the stream (its counted positions, the same call ours makes per chunk; 1 warm-up +
  3 rounds, ~1.5 s each) and scaled linearly by counted positions to the whole stream (its cost per
  position grows slightly with the chunk, so timing fewer positions would flatter it). On that chunk
  both results are checked: agreement exactly, KL and entropy within rtol RTOL + atol ATOL.
Case B, attention JSD (M=40, 500 items x 40 targets = 20000 rows, S=72): ours = attention_distance;
  the per-pair NumPy float64 baseline loops over all 780 pairs, timed once in full (~20-30 s);
  results checked within rtol RTOL + atol ATOL.
Memory: one chunk update (A) and one attention call (B), ours and baseline, each in a fresh
  process (bench/analysis_memprobe.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import analysis_cases as cases
from analysis_memprobe import PROBES
from conftest import HERE, ROOT, _SESSION, max_abs, run_bench

TARGET = {"A": 10.0, "B": 20.0}
RTOL, ATOL = 1e-4, 1e-6
OURS_ROUNDS_A = 2
BASELINE_ROUNDS_A = 3


@pytest.fixture(scope="module")
def stream():
    return cases.logit_stream()


@pytest.fixture(scope="module")
def attn_data():
    return cases.attention_data()


@pytest.fixture(scope="module", autouse=True)
def _describe_run():
    _SESSION["analysis"] = {"quick": cases.QUICK, "agreement_size": asdict(cases.AGREE),
                            "attention_size": asdict(cases.ATTN), "targets": TARGET, "rtol": RTOL, "atol": ATOL}


# ------------------------------------------------------------------------------ helpers
def _record(benchmark, registry, case: str, side: str, median: float, *, impl: str, work: dict,
            scale: float = 1.0, **extra) -> dict:
    """Fill extra_info (effective median = median x scale, work rates) and the registry; once both
    sides of a case are in, write the ratio baseline / ours into both."""
    eff = median * scale
    info = benchmark.extra_info
    info.update(key=f"{case}/{side}", case=case, side=side, impl=impl, median_s=median, extrapolation_factor=scale,
                effective_median_s=eff, work=work, rates={k: v / eff for k, v in work.items()}, target=TARGET[case])
    info.update(extra)
    registry[f"analysis/{case}/{side}"] = {"median": eff, "extra": info}
    ours, base = registry.get(f"analysis/{case}/ours"), registry.get(f"analysis/{case}/baseline")
    if ours and base:
        ratio = base["median"] / ours["median"]
        for r in (ours, base):
            r["extra"].update(ratio=ratio, target_met=ratio >= TARGET[case])
    return info


def _offdiag(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[~np.eye(x.shape[0], dtype=bool)]


def _spread(x) -> dict:
    """min / mean / max of the off-diagonal entries of an (M, M) matrix."""
    v = _offdiag(x)
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}


def _max_rel(x, ref) -> float:
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    nz = ref != 0
    return float(np.max(np.abs(x[nz] - ref[nz]) / np.abs(ref[nz])))


def _compare(x, ref, name: str) -> dict:
    """Max abs / rel difference of ``x`` from ``ref`` and whether they are within RTOL / ATOL."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return {f"{name}_max_abs_diff": max_abs(x, ref), f"{name}_max_rel_diff": _max_rel(x, ref),
            f"{name}_close": bool(np.allclose(x, ref, rtol=RTOL, atol=ATOL))}


def _memprobe(probe: str) -> dict:
    """bench/analysis_memprobe.py PROBE in a fresh interpreter (same environment); returns its JSON."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "analysis_memprobe.py"), probe], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    if r.returncode != 0:
        return {"probe": probe, "error": r.stderr[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _agreement_work(M: int, V: int, positions: int, logits_bytes: int) -> dict:
    """Work of case A over ``positions`` counted positions: the Gram-product flops (2 M^2 V per
    position), exps (one per logit), logits bytes read."""
    return {"positions": positions, "gemm_flop": 2 * M * M * V * positions, "exp": M * V * positions,
            "logits_bytes": logits_bytes}


# ============================================================================ case A: agreement
def test_agreement_ours(benchmark, registry, stream):
    M, V = cases.AGREE.M, cases.AGREE.V
    cases.ours_agreement([next(iter(stream))], M)  # warm-up: one chunk
    out, med = run_bench(benchmark, lambda: cases.ours_agreement(stream, M), rounds=OURS_ROUNDS_A, warmup_rounds=0)
    assert out["count"] == stream.counted
    _record(benchmark, registry, "A", "ours", med,
            impl=f"grounded_fast.analysis.PairwiseAgreement({M}).update per chunk of {cases.AGREE.chunk}, compute()",
            work=_agreement_work(M, V, stream.counted, stream.logits_bytes),
            shape=[M, stream.N, V], dtype="float32", positions=stream.N, counted_positions=stream.counted,
            rounds_note=f"1 warm-up chunk, {OURS_ROUNDS_A} rounds of the whole stream",
            result={"agreement": _spread(out["agreement"]), "kl": _spread(out["kl"]),
                    "entropy_mean": float(out["entropy"].mean()), "count": out["count"]})


def test_agreement_baseline(benchmark, registry, stream):
    M, V = cases.AGREE.M, cases.AGREE.V
    z, mask = stream.chunks[0], stream.masks[0]
    timed = int(mask.sum())
    out, med = run_bench(benchmark, lambda: cases.baseline_agreement(z, mask), rounds=BASELINE_ROUNDS_A)
    ours = cases.ours_agreement([(z, mask)], M)
    acc = {"count_equal": ours["count"] == out["count"], "agreement_equal": bool(torch.equal(ours["agreement"], out["agreement"])),
           **_compare(ours["agreement"], out["agreement"], "agreement"), **_compare(ours["kl"], out["kl"], "kl"),
           **_compare(ours["entropy"], out["entropy"], "entropy")}
    scale = stream.counted / timed
    _record(benchmark, registry, "A", "baseline", med, scale=scale,
            impl="torch float32: log_softmax, exp, argmax per chunk; Python loop over the M(M-1) ordered pairs",
            work=_agreement_work(M, V, stream.counted, stream.logits_bytes),
            shape=[M, stream.N, V], dtype="float32", timed_counted_positions=timed, counted_positions=stream.counted,
            timed_note=f"{timed}/{stream.counted} counted positions timed (chunk 0 of {cases.AGREE.chunk}), x{scale:.1f}",
            accuracy=acc)
    assert acc["agreement_equal"] and acc["count_equal"], acc
    assert acc["kl_close"] and acc["entropy_close"], acc


# ============================================================================ case B: attention
def _attention_work(d: cases.AttentionData) -> dict:
    return {"pair_entries": d.pair_entries, "rows": d.counted_rows}


def test_attention_ours(benchmark, registry, attn_data):
    out, med = run_bench(benchmark, lambda: cases.ours_attention(attn_data), rounds=3)
    _record(benchmark, registry, "B", "ours", med, impl="grounded_fast.analysis.attention_distance(metric='jsd')",
            work=_attention_work(attn_data), shape=list(attn_data.attn.shape), dtype="float32",
            counted_rows=attn_data.counted_rows, result={"jsd": _spread(out)})


def test_attention_baseline(benchmark, registry, attn_data):
    out, med = run_bench(benchmark, lambda: cases.baseline_attention(attn_data), rounds=1, warmup_rounds=0)
    acc = _compare(cases.ours_attention(attn_data), out, "jsd")
    _record(benchmark, registry, "B", "baseline", med,
            impl="NumPy float64: mask + renormalise once; Python loop over the M(M-1)/2 pairs, vectorised over rows",
            work=_attention_work(attn_data), shape=list(attn_data.attn.shape), dtype="float64",
            counted_rows=attn_data.counted_rows, rounds_note="1 round, no warm-up", accuracy=acc)
    assert acc["jsd_close"], acc


# ============================================================================ memory
@pytest.mark.parametrize("probe", PROBES)
def test_memory(registry, probe):
    """Peak extra memory of one call, in a fresh interpreter (see bench/analysis_memprobe.py)."""
    r = _memprobe(probe)
    _SESSION["memory"][probe] = r
    case, side = ("A" if probe.startswith("agreement") else "B"), probe.split("_")[1]
    entry = registry.get(f"analysis/{case}/{side}")
    if entry is not None:
        entry["extra"]["memory"] = r
    assert "error" not in r, r.get("error")
