"""POT-compatible drop-in API: ``import grounded_fast.ot as ot``.

Provides ``ot.sinkhorn``, ``ot.sinkhorn2``, ``ot.dist``, ``ot.bregman.{sinkhorn, sinkhorn2,
sinkhorn_log, sinkhorn_knopp}``, ``ot.partial.entropic_partial_wasserstein``,
``ot.unbalanced.{sinkhorn_unbalanced, sinkhorn_unbalanced2}`` and ``ot.batch.solve_batch`` with
POT 0.9.7's names, arguments, defaults and log keys; numpy in -> numpy out, torch in -> torch out.

Every other POT name is delegated to the installed POT (``ot``): ``grounded_fast.ot.emd`` is
``ot.emd``, ``grounded_fast.ot.partial.partial_wasserstein`` is ``ot.partial.partial_wasserstein``,
``import grounded_fast.ot.gromov`` binds ``ot.gromov``; without POT these raise an ImportError
(``pip install pot``). ``grounded_fast.patch_pot()`` goes the other way: POT's own functions are
replaced by the ones defined here (see ``_pot``).
"""
from . import batch, bregman, partial, unbalanced
from ._pot import delegating as _delegating, install_finder as _install_finder
from .bregman import sinkhorn, sinkhorn2
from .costs import cost_matrix, dist
from .unbalanced import sinkhorn_unbalanced, sinkhorn_unbalanced2

__all__ = ["batch", "bregman", "partial", "unbalanced", "sinkhorn", "sinkhorn2", "dist", "cost_matrix",
           "sinkhorn_unbalanced", "sinkhorn_unbalanced2"]

__getattr__, __dir__ = _delegating(__name__)
_install_finder()
