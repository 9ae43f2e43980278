"""The report of `grounded_fast.analysis.pairs_table` (``grounded-fast analyse PAIRS.csv``):
``report.md`` + ``report.html`` with one heatmap per metric, the per-population summaries, the
tests (their assumptions stated) and the comparisons between metrics."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

from ..analysis.pairs_table import PairsAnalysis
from .report import Report, agreement_heatmap

__all__ = ["pairs_report"]


def _p(p: float) -> str:
    return f"{p:.3g}" + ("" if p < 0.05 else " (not significant at 0.05)")


def _perm_text(n: int, exact: bool, seed: Optional[int]) -> str:
    return f"all {n} orderings (exact)" if exact else f"{n} random, seed {seed}"


def pairs_report(result: PairsAnalysis, out_dir: Union[str, os.PathLike],
                 title: Optional[str] = None) -> Tuple[Path, Path]:
    """Write the report of ``result`` (`analyse_pairs`) under ``out_dir`` (created): report.md,
    report.html and figures/. Returns (markdown path, html path)."""
    rep = Report(title or f"Pairwise analysis of {os.path.basename(result.source)}")
    sizes = ", ".join(f"{p}: {n}" for p, n in result.sizes.items())
    rep.add_paragraph(
        f"Source `{result.source}` ({'a store export, long form' if result.form == 'long' else 'wide form'}); "
        f"{len(result.models)} models in {len(result.sizes)} populations ({sizes}), populations from "
        f"{result.population_source}. Tests: {result.permutations} permutations (all orderings when M! is "
        f"fewer), seed {result.seed}; CIs: {int(result.confidence * 100)}% percentile bootstrap over models "
        f"({result.bootstrap} replicates, models resampled within each population; none for a population of "
        "2 models' within pairs).")
    rep.add_table(["model", "population"], [[m, p] for m, p in zip(result.models, result.populations)],
                  caption="Models and populations")
    rep.add_table(["metric", "handling"],
                  [[name, m.handling] for name, m in result.metrics.items()],
                  caption="Metrics: 'mean of both directions' = (X[a, b] + X[b, a]) / 2 of a directional metric; "
                          "'ordered pairs' = both directions kept (blocks per ordered population pair, tests and "
                          "Mantel over the M(M-1) ordered pairs)")
    rep.add_paragraph(f"Caveat: {result.caveat}")
    for name, m in result.metrics.items():
        rep.add_heading(f"{name} ({m.handling})")
        fig = agreement_heatmap(m.matrix, result.models, title=f"{name} ({m.handling})",
                                groups=result.populations, colorbar_label=name)
        rep.add_figure(fig, f"heatmap_{name}", caption=f"{name} per model pair (row: first model, column: second)")
        rep.add_table(["populations", "pairs", "mean", "CI low", "CI high"],
                      [["/".join(b.populations), b.n_pairs, b.mean, b.ci_low, b.ci_high] for b in m.blocks],
                      caption=f"{name}: within- and between-population pairs")
        perm = m.permutation
        rows = [["permutation test, mean(within) − mean(between)", perm.difference, _p(perm.pvalue),
                 _perm_text(perm.permutations, perm.exact, perm.seed)],
                ["Mann–Whitney within vs between (U; P(within > between))",
                 f"{m.mann_whitney.statistic:.6g}; {m.mann_whitney.effect_size:.3f}", _p(m.mann_whitney.pvalue),
                 f"{m.n_within} vs {m.n_between} pairs, assumes independence"]]
        if m.kruskal is not None:
            rows.append(["Kruskal–Wallis across the blocks above (H)", m.kruskal.statistic, _p(m.kruskal.pvalue),
                         f"{len(m.blocks)} groups, assumes independence"])
        rep.add_table(["test", "statistic", "p", "null / note"], rows,
                      caption=f"{name}: population differences (the permutation test shuffles population labels "
                              "across models and is the valid one)")
    rep.add_heading("Between metrics")
    if not result.comparisons:
        rep.add_paragraph("One metric: no comparison between metrics.")
    else:
        rep.add_table(["metrics", "pairs", "Mantel r (Pearson)", "p", "RSA rho (Spearman)", "p", "permutations"],
                      [[f"{c.metrics[0]} vs {c.metrics[1]}", "ordered" if c.ordered else "unordered",
                        c.mantel.statistic, _p(c.mantel.pvalue), c.rsa.statistic, _p(c.rsa.pvalue),
                        _perm_text(c.mantel.permutations, c.mantel.exact, c.mantel.seed)]
                       for c in result.comparisons],
                      caption="Mantel tests: rows and columns of one matrix permuted together")
    return rep.write(out_dir)
