"""The entropic OT op family ``grounded_fast::entropic_ot`` (balanced, unbalanced KL, partial).

One package, one module per role:

* ``spec``     — :class:`SolveSpec`, the solve's scalars, validated once; problem kinds.
* ``inputs``   — input checks and handling shared with ``entropic_ot_features``.
* ``op``       — the custom op: one schema with an explicit ``backend`` argument, one fake, one
                 autograd formula (envelope gradients).
* ``api``      — :func:`entropic_ot`, the public function (backend choice, warnings).
* ``driver``   — the iterations over two log-sum-exp passes, shared by every streaming backend,
                 and the plan / objective from the potentials.
* ``verdict``  — the feasibility verdict every backend applies, and its warnings.
* ``backend_cpu``, ``backend_cuda``, ``backend_triton`` — one module per backend; the 'torch'
  backend is the float64 oracle, :func:`grounded_fast.reference.entropic_ot_reference`.
"""
from .api import GRAD_MODES, OTSolution, entropic_ot
from .spec import BALANCED, HISTORY_CAP, PARTIAL, UNBALANCED, SolveSpec

__all__ = ["entropic_ot", "OTSolution", "SolveSpec", "BALANCED", "UNBALANCED", "PARTIAL", "HISTORY_CAP",
           "GRAD_MODES"]
