"""POT's result object, ``ot.utils.OTResult``, for ``solve`` and ``batch.solve_batch``."""
from __future__ import annotations

import torch

from ._pot import delegating as _delegating

__all__ = ["OTResult"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)


class OTResult:
    """The attributes of POT 0.9.7's ``ot.utils.OTResult`` (read-only properties): ``value``,
    ``value_linear``, ``value_quad``, ``plan``, ``sparse_plan``, ``lazy_plan``, ``potentials``,
    ``potential_a``, ``potential_b``, ``marginals``, ``marginal_a``, ``marginal_b``, ``status``,
    ``log``, ``citation``; numpy arrays or torch tensors as the solver returned them. Also
    ``n_iter`` (``log['n_iter']`` where the solver records it, else None). ``backend`` and
    ``batch_size`` are accepted for POT's signature and unused (no lazy plans here)."""

    def __init__(self, potentials=None, value=None, value_linear=None, value_quad=None, plan=None, log=None,
                 backend=None, sparse_plan=None, lazy_plan=None, status=None, batch_size=100):
        self._potentials = potentials
        self._value = value
        self._value_linear = value_linear
        self._value_quad = value_quad
        self._plan = plan
        self._log = log
        self._sparse_plan = sparse_plan
        self._lazy_plan = lazy_plan
        self._status = status

    def __repr__(self):
        parts = [f"{k}={v}" for k, v in (("value", self._value), ("value_linear", self._value_linear))
                 if v is not None]
        if self._plan is not None:
            parts.append(f"plan={type(self._plan).__name__}(shape={tuple(self._plan.shape)})")
        return "OTResult(" + ",".join(parts) + ")"

    @property
    def potentials(self):
        return self._potentials

    @property
    def potential_a(self):
        return None if self._potentials is None else self._potentials[0]

    @property
    def potential_b(self):
        return None if self._potentials is None else self._potentials[1]

    @property
    def plan(self):
        if self._plan is None and self._sparse_plan is not None:
            sp = self._sparse_plan
            return sp.to_dense() if isinstance(sp, torch.Tensor) else sp.toarray()
        return self._plan

    @property
    def sparse_plan(self):
        if self._sparse_plan is not None or self._plan is None:
            return self._sparse_plan
        if isinstance(self._plan, torch.Tensor):
            return self._plan.to_sparse_csr()
        import scipy.sparse
        return scipy.sparse.csr_matrix(self._plan)

    @property
    def lazy_plan(self):
        return self._lazy_plan

    @property
    def value(self):
        return self._value

    @property
    def value_linear(self):
        return self._value_linear

    @property
    def value_quad(self):
        return self._value_quad

    @property
    def marginals(self):
        return None if self._plan is None else (self.marginal_a, self.marginal_b)

    @property
    def marginal_a(self):  # POT sums axis 1 (for a batch of plans too)
        return None if self._plan is None else self._plan.sum(1)

    @property
    def marginal_b(self):
        return None if self._plan is None else self._plan.sum(0)

    @property
    def status(self):
        return self._status

    @property
    def log(self):
        return self._log

    @property
    def n_iter(self):
        return self._log.get("n_iter") if isinstance(self._log, dict) else None

    @property
    def a_to_b(self):
        raise NotImplementedError()

    @property
    def b_to_a(self):
        raise NotImplementedError()

    @property
    def citation(self):
        return ("POT library: POT Python Optimal Transport library, Journal of Machine Learning Research, "
                "22(78):1-8, 2021. Website: https://pythonot.github.io/ (grounded_fast.ot mirrors its API).")
