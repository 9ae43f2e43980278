"""Analysis of many models' behaviour: the "Grounded and Well-rounded" methodology.

- :mod:`.agreement`: all-pairs argmax agreement, KL, JSD and entropy from logits (fused kernel,
  streaming over positions) — :class:`PairwiseAgreement`, :func:`pairwise_agreement`;
- :mod:`.attention`: all-pairs attention-pattern distances (``segment_l2``, ``jsd``, ``tv``,
  ``hellinger``, ``l2``) — :func:`attention_distance`, :class:`AttentionDistance`;
- :mod:`.populations`: accuracy-matched populations (greedy matching + Kruskal-Wallis);
- :mod:`.stats`: Kruskal-Wallis, Mann-Whitney U with effect size, correlations of pairwise
  matrices, Mantel permutation test, RSA;
- :mod:`.pairs_table`: a CSV of model pairs (yours, or a study's ``pairwise.csv`` export) analysed
  by population — :func:`load_pairs`, :func:`analyse_pairs` (``grounded-fast analyse``);
- :mod:`.concreteness`: the Brysbaert et al. (2014) norms (shipped), abstract/concrete word
  selection, silhouette scores.
"""
from .agreement import PairwiseAgreement, pairwise_agreement
from .attention import METRICS as ATTENTION_METRICS
from .attention import AttentionDistance, attention_distance
from .concreteness import (DEFAULT_NORMS_PATH, ConcretenessNorms, concreteness_silhouette,
                           load_concreteness_norms, select_concreteness_words)
from .pairs_table import PairsAnalysis, PairsTable, PairsTableError, analyse_pairs, load_pairs
from .populations import Candidate, MatchedPopulations, TraceEntry, match_populations
from .stats import (CorrelationResult, KruskalResult, MannWhitneyResult, MantelResult, kruskal_wallis,
                    mann_whitney, mantel, matrix_correlation, rsa)

__all__ = ["PairwiseAgreement", "pairwise_agreement", "AttentionDistance", "attention_distance",
           "ATTENTION_METRICS", "DEFAULT_NORMS_PATH", "ConcretenessNorms", "load_concreteness_norms",
           "select_concreteness_words", "concreteness_silhouette", "Candidate", "TraceEntry",
           "MatchedPopulations", "match_populations", "KruskalResult", "MannWhitneyResult",
           "CorrelationResult", "MantelResult", "kruskal_wallis", "mann_whitney", "matrix_correlation",
           "mantel", "rsa", "PairsTable", "PairsAnalysis", "PairsTableError", "load_pairs", "analyse_pairs"]
