"""Problem data and solver callables shared by the CPU benchmark suite (test_ot_cpu.py) and the
memory probe (memprobe.py). Every function here is deterministic (fixed seeds).

Cases (results: bench/results/cpu.md, produced by bench/run_cpu.sh):
  1  partial OT, GroundedBERT shape: B=64 problems of 64 tokens x 197 patches, cosine cost of
     random normal d=384 features, reg=0.05, transported mass 0.5.
  2  partial OT, one 512 x 512 problem, squared-Euclidean cost of random 2-d points (max 1).
  3  balanced OT, the case-1 costs (B=64 of 64 x 197), reg=0.05.
  4  balanced OT, one 2048 x 2048 problem, squared-Euclidean cost of random 2-d points (max 1).
Peers: POT 0.9.7 on torch float32 / float64 tensors (like for like) and numpy float64; GeomLoss
0.3.1's batched matrix solver (case 3) on torch tensors.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import grounded_fast as gf
from grounded_fast.ops import BALANCED, PARTIAL, entropic_ot

REG = 0.05
MASS = 0.5
# entropic_ot(domain='auto'|'log'): 'auto' = stabilised scaling-domain iterations (matrix-vector
# passes on an absorbed kernel) with log-domain iterations where they would underflow; 'log' = log-sum-exp passes only.
HAS_DOMAIN = "domain" in inspect.signature(entropic_ot).parameters


def _domain_kw(domain: str) -> dict:
    if domain == "auto":
        return {}
    if not HAS_DOMAIN:
        raise NotImplementedError("this grounded_fast has no domain= argument")
    return {"domain": domain}


@dataclass
class Problem:
    """A batch of problems in float32 / float64 torch and float64 numpy."""

    C32: torch.Tensor
    a32: torch.Tensor
    b32: torch.Tensor
    C64: torch.Tensor
    a64: torch.Tensor
    b64: torch.Tensor
    Cn: np.ndarray   # (B, n, m) float64
    an: np.ndarray   # (B, n)
    bn: np.ndarray   # (B, m)

    @property
    def shape(self):
        return tuple(self.C32.shape)

    @property
    def entries(self) -> int:
        B, n, m = self.shape
        return B * n * m


def _problem(C32: torch.Tensor) -> Problem:
    """Uniform weights; float64 copies are made from the float32 cost, so every solver (ours in
    float32 or float64, POT in float64) solves the same problem up to float32 rounding."""
    C32 = C32.contiguous()
    B, n, m = C32.shape
    a32 = torch.full((B, n), 1.0 / n)
    b32 = torch.full((B, m), 1.0 / m)
    C64, a64, b64 = C32.double(), a32.double(), b32.double()
    return Problem(C32, a32, b32, C64, a64, b64, C64.numpy().copy(), a64.numpy().copy(), b64.numpy().copy())


def grounded_bert(B: int = 64, n: int = 64, m: int = 197, d: int = 384, seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g)
    y = torch.randn(B, m, d, generator=g)
    return _problem(gf.ot.cost_matrix(x, y, "cosine"))


def points2d(n: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(n, 2, generator=g, dtype=torch.float64)
    C = gf.ot.cost_matrix(x, y, "sqeuclidean")
    C = C / C.max()
    return _problem(C.float()[None])


# ------------------------------------------------------------------------------ our solvers
def ours_partial(p: Problem, dtype: torch.dtype, iters: int, mass: float = MASS, reg: float = REG,
                 sl: slice = slice(None), domain: str = "auto"):
    C, a, b = (p.C32, p.a32, p.b32) if dtype == torch.float32 else (p.C64, p.a64, p.b64)
    C, a, b = C[sl], a[sl], b[sl]
    mt = torch.full((C.shape[0],), mass, dtype=dtype)
    return entropic_ot(C, a, b, reg=reg, problem=PARTIAL, mass=mt, max_iter=iters, check_every=0, warn=False,
                       **_domain_kw(domain))


def ours_balanced(p: Problem, dtype: torch.dtype, iters: int, reg: float = REG, shift: float = 0.0,
                  domain: str = "auto"):
    C, a, b = (p.C32, p.a32, p.b32) if dtype == torch.float32 else (p.C64, p.a64, p.b64)
    if shift:
        C = C + shift
    return entropic_ot(C, a, b, reg=reg, problem=BALANCED, max_iter=iters, check_every=0, warn=False,
                       **_domain_kw(domain))


def reference_partial(p: Problem, idx, mass: float = MASS, reg: float = REG, backend: str = "cpu"):
    """float64, run to convergence (tol 1e-14 on POT's ||P_k - P_{k-1}||_F, checked every 10)."""
    C, a, b = p.C64[idx], p.a64[idx], p.b64[idx]
    mt = torch.full((C.shape[0],), mass, dtype=torch.float64)
    return entropic_ot(C, a, b, reg=reg, problem=PARTIAL, mass=mt, max_iter=200_000, tol=1e-14,
                       check_every=10, warn=False, backend=backend)


# ------------------------------------------------------------------------------ peers
# The array types a peer is run on: like for like, POT gets torch tensors of our dtype; POT on numpy
# float64 (its usual use) is kept beside them.
ARRAYS = {"t32": "torch f32", "t64": "torch f64", "np64": "numpy f64"}
ARRAY_DTYPE = {"t32": "f32", "t64": "f64", "np64": "f64"}


def arrays(p: Problem, array: str):
    """(C, a, b) of ``p`` as the peer gets them: 't32' / 't64' torch, 'np64' numpy float64."""
    return {"t32": (p.C32, p.a32, p.b32), "t64": (p.C64, p.a64, p.b64), "np64": (p.Cn, p.an, p.bn)}[array]


def to_numpy(x) -> np.ndarray:
    return x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def pot_partial_loop(p: Problem, idx, iters: int, mass: float = MASS, reg: float = REG, method: str = "sinkhorn",
                     array: str = "np64"):
    """POT's entropic partial OT looped over problems ``idx``: ``method`` 'sinkhorn' (its default,
    exp domain) or 'sinkhorn_log' (entropic_partial_wasserstein_logscale). stopThr=-1 so that
    exactly ``iters`` iterations run (POT stops when its error is <= stopThr, and on these
    problems its error reaches exactly 0.0 after ~10 iterations)."""
    import ot
    C, a, b = arrays(p, array)
    # POT's log-domain partial takes log(m) with its backend: m must be a tensor for torch arrays
    m = mass if array == "np64" else torch.tensor(mass, dtype=C.dtype)
    return [ot.partial.entropic_partial_wasserstein(a[i], b[i], C[i], reg, m=m, numItermax=iters, stopThr=-1.0,
                                                    method=method) for i in idx]


def pot_sinkhorn_log_loop(p: Problem, idx, iters: int, reg: float = REG, array: str = "np64"):
    import ot
    C, a, b = arrays(p, array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": expected with stopThr=0
        return [ot.bregman.sinkhorn_log(a[i], b[i], C[i], reg, numItermax=iters, stopThr=0) for i in idx]


def pot_solve_batch(p: Problem, iters: int, reg: float = REG, array: str = "np64"):
    import ot
    C, a, b = arrays(p, array)
    return ot.batch.solve_batch(C, reg, a, b, max_iter=iters, tol=0, method="log_sinkhorn")


def pot_sinkhorn(p: Problem, iters: int, reg: float = REG, shift: float = 0.0, array: str = "np64"):
    """POT's exp-domain Sinkhorn-Knopp on the single problem of ``p``."""
    import ot
    C, a, b = arrays(p, array)
    M = C[0] + shift if shift else C[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.sinkhorn(a[0], b[0], M, reg, numItermax=iters, stopThr=0)


def geomloss_solve_batch(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, reg: float, iters: int):
    """GeomLoss's batched matrix solver on given costs: ``geomloss.ot.solve_batch`` (GeomLoss >= 0.3.1,
    method 'auto'). C (B,n,m), a (B,n), b (B,m) torch tensors; returns (plan (B,n,m), value (B,)).

    ``reg`` is passed as GeomLoss's temperature eps itself: ``solve_batch`` takes eps, where
    ``SamplesLoss`` takes blur with eps = blur^p. It anneals eps geometrically from max C - min C
    down to ``reg`` over ``iters`` symmetric (averaged) Sinkhorn updates, then makes one last full
    update at eps = reg, and returns plan = a_i b_j exp((f_i + g_j - C_ij) / reg): for balanced
    problems the same entropic plan as ours and POT's at reg, reached along another path (its
    marginal error at equal iterations differs). ``value`` is GeomLoss's dual value of
    <P, C> + reg KL(P | a b^T); ours (POT's convention, <P, C> + reg sum P log P) equals it
    + reg (sum a log a + sum b log b) at a feasible plan.
    """
    from geomloss import ot as gl_ot
    res = gl_ot.solve_batch(C, a=a, b=b, reg=reg, max_iter=iters)
    return res.plan, res.value


def geomloss_batch(p: Problem, iters: int, reg: float = REG, array: str = "t32"):
    """GeomLoss's batched matrix solver (geomloss.ot.solve_batch, method 'auto') on the whole batch:
    eps annealed from the cost range to ``reg`` over ``iters`` updates, then one at ``reg``
    (see :func:`geomloss_solve_batch`). Returns (plan, value)."""
    C, a, b = arrays(p, array)
    return geomloss_solve_batch(C, a, b, reg=reg, iters=iters)


def kl_value(value, a, b, reg: float = REG):
    """Our / POT's objective (<P, C> + reg sum P log P) in GeomLoss's convention
    (<P, C> + reg KL(P | a b^T)), for a feasible balanced plan."""
    a, b = to_numpy(a), to_numpy(b)
    ent = lambda w: np.where(w > 0, w * np.log(np.where(w > 0, w, 1)), 0).sum(-1)  # noqa: E731
    return to_numpy(value) - reg * (ent(a) + ent(b))
