"""POT-compatible drop-in API: ``import grounded_fast.ot as ot``.

Provides ``ot.sinkhorn``, ``ot.sinkhorn2``, ``ot.solve``, ``ot.dist``, ``ot.bregman.{sinkhorn,
sinkhorn2, sinkhorn_knopp, sinkhorn_log, greenkhorn, sinkhorn_stabilized,
sinkhorn_epsilon_scaling}``, ``ot.partial.{entropic_partial_wasserstein,
entropic_partial_wasserstein_logscale}``, ``ot.unbalanced.{sinkhorn_unbalanced,
sinkhorn_unbalanced2, sinkhorn_knopp_unbalanced, sinkhorn_stabilized_unbalanced,
sinkhorn_unbalanced_translation_invariant}``, ``ot.batch.solve_batch`` (extended with unbalanced
and partial problems) and ``ot.utils.OTResult`` with POT 0.9.7's names, arguments, defaults,
warnings and log keys; numpy in -> numpy out, torch in -> torch out. ``ot.solve`` runs the
entropic cases here and hands the others to POT. Each module's docstring lists its deliberate
differences from POT.

Every other POT name is delegated to the installed POT (``ot``): ``grounded_fast.ot.emd`` is
``ot.emd``, ``grounded_fast.ot.partial.partial_wasserstein`` is ``ot.partial.partial_wasserstein``,
``import grounded_fast.ot.gromov`` binds ``ot.gromov``; without POT these raise an ImportError
(``pip install pot``). ``grounded_fast.patch_pot()`` goes the other way: POT's own functions are
replaced by the ones defined here (see ``_pot``).
"""
from . import batch, bregman, partial, solvers, unbalanced, utils
from ._pot import delegating as _delegating, install_finder as _install_finder
from .bregman import sinkhorn, sinkhorn2
from .costs import cost_matrix, dist
from .solvers import solve
from .unbalanced import sinkhorn_unbalanced, sinkhorn_unbalanced2

__all__ = ["batch", "bregman", "partial", "solvers", "unbalanced", "utils", "sinkhorn", "sinkhorn2", "solve",
           "dist", "cost_matrix", "sinkhorn_unbalanced", "sinkhorn_unbalanced2"]

__getattr__, __dir__ = _delegating(__name__)
_install_finder()
