"""Drop-in for ``ot.bregman``: entropic OT by Sinkhorn iterations, in the log domain.

Same names, arguments, defaults, return values, warnings and ``log`` keys as POT 0.9.7 for
``sinkhorn`` / ``sinkhorn2`` and the solvers behind their ``method``: ``sinkhorn_knopp``
('sinkhorn'), ``sinkhorn_log``, ``greenkhorn``, ``sinkhorn_stabilized`` and
``sinkhorn_epsilon_scaling``. Empty ``a`` / ``b`` mean uniform weights; ``b`` of shape (m, k) gives
the k losses where POT does ('sinkhorn', 'sinkhorn_log', 'sinkhorn_stabilized'; POT's greenkhorn and
epsilon scaling fail on it, here a ValueError). ``sinkhorn2`` takes the methods POT's takes.

Every method runs the log-stable kernel of :func:`grounded_fast.ops.entropic_ot`:

* 'sinkhorn', 'sinkhorn_log', 'sinkhorn_stabilized': POT's iterates from POT's starting point and
  POT's stop test (marginal error every 10 iterations; stabilized every ``print_period``), so the
  plan, 'err', 'niter' / 'n_iter' and the scalings ('u', 'log_u', 'logu', 'alpha', ...) agree with
  POT's wherever POT's are finite; where POT's exp-domain iterations underflow to NaN or stop on
  "numerical errors", these stay finite and accurate.
* 'sinkhorn_epsilon_scaling': POT's outer loop over the decreasing regularisations, each inner
  stabilized solve one kernel call (same iterates, warnings and log).
* 'greenkhorn': full Sinkhorn sweeps in place of POT's greedy one-coordinate updates, to the same
  fixed point (the entropic plan).

Deliberate differences:

* ``reg <= 0`` (or not finite) raises ValueError; POT runs and returns NaN or a meaningless plan.
* greenkhorn: ``numItermax`` bounds full sweeps (n + m coordinate updates each), stopping when the
  marginal error is below ``stopThr`` (POT's max-norm test is then met too), so it warns later
  than POT's greedy loop; log 'n_iter' counts sweeps, and 'u', 'v' are the scalings in
  ``sinkhorn_knopp``'s gauge (POT's greedy path ends in another gauge u c, v / c: the plan
  u_i K_ij v_j is the same).
* stabilized: ``tau`` has no effect (the kernel absorbs its scalings at its own thresholds; the
  iterates are the same). With several histograms each stops on its own marginal error (POT stops
  all on the relative change of the scalings; 'sinkhorn' stops all on their joint error), and
  'err' lists the largest error over the histograms at each check.
* epsilon scaling: the inner solves' non-convergence warnings follow ``warn`` (POT warns from
  them even with ``warn=False``).
* A NaN or inf only comes from a numerical failure the op reports (status 2): then POT's
  "numerical errors" UserWarning (methods where POT has it) besides the op's RuntimeWarning.
* Keywords: POT's method keywords (``tau``, ``print_period``, ``epsilon0``, ``numInnerItermax``)
  are accepted by every method, as POT's ``sinkhorn`` does; other unknown keywords raise
  TypeError (POT ignores them). Extras: ``backend=`` picks the kernel, ``grad=`` the gradient
  (default envelope gradients; ``'autodiff'`` unrolls, like POT).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..ops import BALANCED, entropic_ot
from ._common import (NOT_CONVERGED, check_reg, envelope_loss, err_list, prepare, print_verbose,
                      warn_not_converged)
from ._pot import delegating as _delegating

__all__ = ["sinkhorn", "sinkhorn2", "sinkhorn_log", "sinkhorn_knopp", "greenkhorn", "sinkhorn_stabilized",
           "sinkhorn_epsilon_scaling"]
__getattr__, __dir__ = _delegating(__name__)  # other POT names: the installed POT's (see _pot)

_METHODS = ("sinkhorn", "sinkhorn_log", "greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling")
_LOSS_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized")  # those POT's sinkhorn2 accepts
_POT_KEYWORDS = frozenset(("tau", "print_period", "epsilon0", "numInnerItermax"))
_KNOPP_NUMERICAL = "Warning: numerical errors at iteration %d"
_STABILIZED_NUMERICAL = "Numerical errors at iteration %d"


class _Problem:
    """The user's arrays as torch tensors: a (n,), b (m,) or (m, k), M (n, m); ``k`` = 0 for one
    histogram. Solves them as one batch of max(k, 1) balanced problems sharing M."""

    def __init__(self, a, b, M, reg, kwargs, allowed=_POT_KEYWORDS):
        self.reg = check_reg(reg)
        self.conv, self.a, self.b, self.M = prepare(a, b, M)
        self.n, self.m = self.M.shape
        self.k = 0 if self.b.dim() == 1 else self.b.shape[1]
        self.opts = dict(backend=kwargs.pop("backend", None), grad=kwargs.pop("grad", "envelope"))
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")

    def one_histogram(self, method: str) -> None:
        if self.k:
            raise ValueError(f"method '{method}' takes one target histogram b of shape ({self.m},), got "
                             f"shape {tuple(self.b.shape)} (POT's fails on it too); use 'sinkhorn', "
                             "'sinkhorn_log' or 'sinkhorn_stabilized' for several histograms")

    def tensor(self, x) -> torch.Tensor:
        return self.conv.to_torch(x).to(device=self.M.device, dtype=self.M.dtype)

    def full(self, size: int, value: float) -> torch.Tensor:
        return torch.full((size,), value, dtype=self.M.dtype, device=self.M.device)

    def _rows(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """(size,) or POT's column layout (size, k) -> the op's (B, size)."""
        B = max(self.k, 1)
        if x.dim() == 1:
            return x.expand(B, size).contiguous()
        if x.dim() == 2 and tuple(x.shape) == (size, B):
            return x.T.contiguous()
        raise ValueError(f"warmstart vectors must have shape ({size},) or ({size}, {B}), got {tuple(x.shape)}")

    def solve(self, lu0, lv0, reg, max_iter, tol, check_every, history):
        """lu0 (n,) or (n, k), lv0 likewise: the op's start (log scalings of exp(-M / reg))."""
        B, n, m = max(self.k, 1), self.n, self.m
        M = self.M[None] if B == 1 else self.M.expand(B, n, m).contiguous()
        b = self.b[None] if self.k == 0 else self.b.T.contiguous()
        return entropic_ot(M, self.a.expand(B, n).contiguous(), b, reg=float(reg), problem=BALANCED,
                           log_u0=self._rows(lu0, n), log_v0=self._rows(lv0, m), max_iter=int(max_iter),
                           tol=float(tol), check_every=int(check_every), warn=False, history=bool(history),
                           **self.opts)

    def cols(self, x: torch.Tensor):
        """The op's (B, size) -> POT's (size,) or (size, k), in the user's array type."""
        return self.conv.out(x[0] if self.k == 0 else x.T)

    def history(self, sol) -> torch.Tensor:
        """The stop criterion at each check; for several histograms their joint norm (POT's error
        for 'sinkhorn'), a histogram that has stopped counting 0; -1 once all have stopped."""
        h = sol.err_history
        if self.k == 0:
            return h[0]
        joint = h.clamp_min(0).square().sum(0).sqrt()
        return torch.where((h >= 0).any(0), joint, -1.0)

    def niter(self, sol) -> int:
        return int(sol.n_iter.max()) - 1  # POT's last iteration index

    def report(self, sol, warn: bool, numerical, stacklevel: int = 4) -> None:
        if numerical is not None and (sol.status == 2).any():
            warnings.warn(numerical % self.niter(sol), UserWarning, stacklevel=stacklevel)
        warn_not_converged(sol, warn)

    def run(self, lu0, lv0, max_iter, tol, every: int, verbose: bool, log: bool, warn: bool, numerical,
            header_every: int = 200):
        """``solve`` at ``self.reg`` with POT's check cadence ``every``, then POT's verbose table and
        warnings (``numerical``: POT's numerical-error message of the method, or None)."""
        sol = self.solve(lu0, lv0, self.reg, max_iter, tol, every, log or verbose)
        if verbose:
            print_verbose(self.history(sol), every, header_every=header_every)
        self.report(sol, warn, numerical, stacklevel=5)
        return sol

    def result(self, sol):
        """The plan (n, m), or the k losses for several histograms."""
        return self.conv.out(sol.plan[0] if self.k == 0 else envelope_loss(sol))

    def loss(self, sol):
        """<P, M> (or the k losses) with the envelope gradient."""
        out = envelope_loss(sol)
        return self.conv.out(out[0] if self.k == 0 else out)


def _pairs(p: _Problem, warmstart):
    """sinkhorn_log's warmstart: (log_u, log_v), or POT's one pair per histogram for b (m, k)."""
    if p.k and len(warmstart) == p.k and isinstance(warmstart[0], (tuple, list)):
        return (torch.stack([p.tensor(w[0]) for w in warmstart], 1),
                torch.stack([p.tensor(w[1]) for w in warmstart], 1))
    return p.tensor(warmstart[0]), p.tensor(warmstart[1])


def _sinkhorn_knopp(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs):
    p = _Problem(a, b, M, reg, kwargs)
    if warmstart is None:  # POT starts from u = 1 / n (v is computed first)
        lu0, lv0 = p.full(p.n, -math.log(p.n)), p.full(p.m, -math.log(p.m))
    else:
        lu0, lv0 = p.tensor(warmstart[0]), p.tensor(warmstart[1])
    sol = p.run(lu0, lv0, numItermax, stopThr, 10, verbose, log, warn, _KNOPP_NUMERICAL)
    lg = None
    if log:
        lg = {"err": err_list(p.conv, p.history(sol)), "niter": p.niter(sol),
              "u": p.cols(torch.exp(sol.log_u)), "v": p.cols(torch.exp(sol.log_v))}
    return p, sol, lg


def _sinkhorn_log(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs):
    p = _Problem(a, b, M, reg, kwargs)
    if warmstart is None:
        lu0, lv0 = p.full(p.n, 0.0), p.full(p.m, 0.0)
    else:
        lu0, lv0 = _pairs(p, warmstart)
    sol = p.run(lu0, lv0, numItermax, stopThr, 10, verbose, log, warn, None)
    lg = None
    if log:
        lg = {} if p.k else {"err": err_list(p.conv, p.history(sol)), "niter": p.niter(sol)}
        lg.update(log_u=p.cols(sol.log_u), log_v=p.cols(sol.log_v),
                  u=p.cols(torch.exp(sol.log_u)), v=p.cols(torch.exp(sol.log_v)))
    return p, sol, lg


def _stabilized_start(p: _Problem, reg, alpha, beta):
    """POT's start: K = exp(-(M - alpha - beta) / reg), u = 1 / n, v = 1 / m."""
    lu0 = p.full(p.n, -math.log(p.n)) if alpha is None else alpha / reg - math.log(p.n)
    lv0 = p.full(p.m, -math.log(p.m)) if beta is None else beta / reg - math.log(p.m)
    return lu0, lv0


def _sinkhorn_stabilized(a, b, M, reg, numItermax, tau, stopThr, warmstart, verbose, print_period, log, warn,
                         kwargs):
    p = _Problem(a, b, M, reg, kwargs)
    alpha, beta = (None, None) if warmstart is None else (p.tensor(warmstart[0]), p.tensor(warmstart[1]))
    sol = p.run(*_stabilized_start(p, p.reg, alpha, beta), numItermax, stopThr, print_period, verbose, log, warn,
                _STABILIZED_NUMERICAL, header_every=print_period * 20)
    lg = None
    if log:
        logu, logv = p.cols(sol.log_u), p.cols(sol.log_v)
        al, be = p.cols(p.reg * sol.log_u), p.cols(p.reg * sol.log_v)
        lg = {"err": err_list(p.conv, p.history(sol)), "n_iter": p.niter(sol), "logu": logu, "logv": logv,
              "alpha": al, "beta": be, "warmstart": (al, be)}
    return p, sol, lg


def _sinkhorn_epsilon_scaling(a, b, M, reg, numItermax, epsilon0, numInnerItermax, tau, stopThr, warmstart,
                              verbose, print_period, log, warn, kwargs):
    p = _Problem(a, b, M, reg, kwargs)
    p.one_histogram("sinkhorn_epsilon_scaling")
    num_min = 35  # POT: enough decrease steps that the last regularisation is reg to double precision
    numItermax = max(num_min, int(numItermax))
    if warmstart is None:
        alpha, beta = p.full(p.n, 0.0), p.full(p.m, 0.0)
    else:
        alpha, beta = p.tensor(warmstart[0]), p.tensor(warmstart[1])
    ma, mb = p.a > 0, p.b > 0
    errs, err, sol = [], 1.0, None
    for ii in range(numItermax):
        regi = (float(epsilon0) - p.reg) * math.exp(-ii) + p.reg
        # a zero weight's potential is -inf; its row / column is zero whatever the start
        lu0, lv0 = _stabilized_start(p, regi, torch.where(ma, alpha, 0), torch.where(mb, beta, 0))
        sol = p.solve(lu0, lv0, regi, numInnerItermax, stopThr, 20, False)
        p.report(sol, warn, _STABILIZED_NUMERICAL)
        alpha, beta = regi * sol.log_u[0], regi * sol.log_v[0]
        # Each solve starting from u = 1 / n moves the gauge by about regi log n (POT's absorptions
        # move it further): centre it, so that float32 keeps alpha_i + beta_j - M_ij accurate.
        c = (alpha[ma].mean() - beta[mb].mean()) / 2
        alpha, beta = alpha - c, beta + c
        if ii % print_period == 0:
            G = sol.plan[0].detach()
            e = torch.linalg.vector_norm(G.sum(0) - p.b) ** 2 + torch.linalg.vector_norm(G.sum(1) - p.a) ** 2
            err = float(e)
            errs.append(p.conv.out(e))
            if verbose:
                if ii % (print_period * 10) == 0:
                    print("{:5s}|{:12s}".format("It.", "Err") + "\n" + "-" * 19)
                print("{:5d}|{:8e}|".format(ii, err))
        if err <= stopThr and ii > num_min:
            break
    else:
        if warn:
            warnings.warn(NOT_CONVERGED, UserWarning, stacklevel=3)
    lg = None
    if log:
        al, be = p.conv.out(alpha), p.conv.out(beta)
        lg = {"err": errs, "alpha": al, "beta": be, "warmstart": (al, be), "niter": ii}
    return p, sol, lg


def _greenkhorn(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs):
    p = _Problem(a, b, M, reg, kwargs, allowed=frozenset())
    p.one_histogram("greenkhorn")
    if warmstart is None:
        lu0, lv0 = p.full(p.n, -math.log(p.n)), p.full(p.m, -math.log(p.m))
    else:
        lu0, lv0 = p.tensor(warmstart[0]), p.tensor(warmstart[1])
    sol = p.solve(lu0, lv0, p.reg, numItermax, stopThr, 1, False)  # POT's greenkhorn prints nothing
    p.report(sol, warn, None)
    lg = None
    if log:
        lg = {"u": p.cols(torch.exp(sol.log_u)), "v": p.cols(torch.exp(sol.log_v)), "n_iter": p.niter(sol)}
    return p, sol, lg


def _returned(p, sol, lg, log):
    out = p.result(sol)
    return (out, lg) if log else out


def _check_method(method, allowed):
    if not isinstance(method, str) or method.lower() not in allowed:
        raise ValueError("Unknown method '%s'." % method)
    return method.lower()


def sinkhorn(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
             warn=True, warmstart=None, **kwargs):
    """Entropic OT plan (n, m) between histograms a (n,) and b (m,) for cost M (n, m), like
    ``ot.sinkhorn``; with b of shape (m, k) returns the k losses (k,). ``log=True`` adds the log dict
    of the method. ``method``: 'sinkhorn', 'sinkhorn_log', 'greenkhorn', 'sinkhorn_stabilized',
    'sinkhorn_epsilon_scaling' (POT's keywords of each pass through ``kwargs``)."""
    meth = _check_method(method, _METHODS)
    common = dict(numItermax=numItermax, stopThr=stopThr, verbose=verbose, log=log, warn=warn, warmstart=warmstart)
    if meth == "sinkhorn":
        return sinkhorn_knopp(a, b, M, reg, **common, **kwargs)
    if meth == "sinkhorn_log":
        return sinkhorn_log(a, b, M, reg, **common, **kwargs)
    if meth == "greenkhorn":  # POT's sinkhorn passes it none of the method keywords
        return greenkhorn(a, b, M, reg, **common, **{k: v for k, v in kwargs.items() if k not in _POT_KEYWORDS})
    if meth == "sinkhorn_stabilized":
        return sinkhorn_stabilized(a, b, M, reg, **common, **kwargs)
    return sinkhorn_epsilon_scaling(a, b, M, reg, **common, **kwargs)


def sinkhorn2(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
              warn=False, warmstart=None, **kwargs):
    """Entropic OT loss <P, M> (the linear cost at the entropic plan), like ``ot.sinkhorn2``; (k,)
    losses for b of shape (m, k). ``method``: 'sinkhorn', 'sinkhorn_log' or 'sinkhorn_stabilized'
    (as POT's). Its gradient is the envelope gradient of the regularised objective (see
    grounded_fast.ops)."""
    meth = _check_method(method, _LOSS_METHODS)
    if meth == "sinkhorn":
        p, sol, lg = _sinkhorn_knopp(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    elif meth == "sinkhorn_log":
        p, sol, lg = _sinkhorn_log(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    else:
        tau, print_period = kwargs.pop("tau", 1e3), kwargs.pop("print_period", 20)
        p, sol, lg = _sinkhorn_stabilized(a, b, M, reg, numItermax, tau, stopThr, warmstart, verbose, print_period,
                                          log, warn, kwargs)
    loss = p.loss(sol)
    return (loss, lg) if log else loss


def sinkhorn_knopp(a, b, M, reg, numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=True,
                   warmstart=None, **kwargs):
    """Like ``ot.bregman.sinkhorn_knopp`` (computed in the log domain: no underflow): the plan
    (n, m) or, for b (m, k), the k losses; log {'err', 'niter', 'u', 'v'}."""
    p, sol, lg = _sinkhorn_knopp(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    return _returned(p, sol, lg, log)


def sinkhorn_log(a, b, M, reg, numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=True,
                 warmstart=None, **kwargs):
    """Log-domain Sinkhorn, like ``ot.bregman.sinkhorn_log``: the plan (n, m) or the k losses;
    log {'err', 'niter', 'log_u', 'log_v', 'u', 'v'} (for b (m, k): {'log_u', 'log_v', 'u', 'v'})."""
    p, sol, lg = _sinkhorn_log(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    return _returned(p, sol, lg, log)


def greenkhorn(a, b, M, reg, numItermax=10000, stopThr=1e-9, verbose=False, log=False, warn=True,
               warmstart=None, **kwargs):
    """Like ``ot.bregman.greenkhorn``: the plan (n, m) for a (n,), b (m,); log {'u', 'v', 'n_iter'}.
    Full log-domain sweeps replace the greedy updates (same plan; see the module docstring)."""
    p, sol, lg = _greenkhorn(a, b, M, reg, numItermax, stopThr, verbose, log, warn, warmstart, kwargs)
    return _returned(p, sol, lg, log)


def sinkhorn_stabilized(a, b, M, reg, numItermax=1000, tau=1e3, stopThr=1e-9, warmstart=None, verbose=False,
                        print_period=20, log=False, warn=True, **kwargs):
    """Like ``ot.bregman.sinkhorn_stabilized``: warmstart (alpha (n,), beta (m,)) dual potentials;
    the plan (n, m) or the k losses; log {'err', 'n_iter', 'logu', 'logv', 'alpha', 'beta',
    'warmstart'}. Error checked every ``print_period`` iterations, as POT."""
    p, sol, lg = _sinkhorn_stabilized(a, b, M, reg, numItermax, tau, stopThr, warmstart, verbose, print_period,
                                      log, warn, kwargs)
    return _returned(p, sol, lg, log)


def sinkhorn_epsilon_scaling(a, b, M, reg, numItermax=100, epsilon0=1e4, numInnerItermax=100, tau=1e3,
                             stopThr=1e-9, warmstart=None, verbose=False, print_period=10, log=False, warn=True,
                             **kwargs):
    """Like ``ot.bregman.sinkhorn_epsilon_scaling``: stabilized solves at reg_i = (epsilon0 - reg)
    e^-i + reg, i < max(numItermax, 35), each warm-started from the last; the plan (n, m); log
    {'err', 'alpha', 'beta', 'warmstart', 'niter'}."""
    p, sol, lg = _sinkhorn_epsilon_scaling(a, b, M, reg, numItermax, epsilon0, numInnerItermax, tau, stopThr,
                                           warmstart, verbose, print_period, log, warn, kwargs)
    return _returned(p, sol, lg, log)
