"""POT-compatible drop-in API: ``import grounded_fast.ot as ot``.

Provides ``ot.sinkhorn``, ``ot.sinkhorn2``, ``ot.dist``, ``ot.bregman.{sinkhorn, sinkhorn2,
sinkhorn_log, sinkhorn_knopp}``, ``ot.partial.entropic_partial_wasserstein``,
``ot.unbalanced.{sinkhorn_unbalanced, sinkhorn_unbalanced2, sinkhorn_knopp_unbalanced,
sinkhorn_stabilized_unbalanced, sinkhorn_unbalanced_translation_invariant}`` and
``ot.batch.solve_batch`` (extended with unbalanced and partial problems) with POT 0.9.7's names,
arguments, defaults and log keys; numpy in -> numpy out, torch in -> torch out. Each module's
docstring lists its deliberate differences from POT.
"""
from . import batch, bregman, partial, unbalanced
from .bregman import sinkhorn, sinkhorn2
from .costs import cost_matrix, dist
from .unbalanced import sinkhorn_unbalanced, sinkhorn_unbalanced2

__all__ = ["batch", "bregman", "partial", "unbalanced", "sinkhorn", "sinkhorn2", "dist", "cost_matrix",
           "sinkhorn_unbalanced", "sinkhorn_unbalanced2"]
