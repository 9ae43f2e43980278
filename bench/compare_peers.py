"""The short OT speed comparison against POT (and GeomLoss's batched matrix solver when it is
installed): one table, grounded_fast and each peer at equal iteration counts on the same dtypes and
array types, both sides pinned to the same threads, every time the median (min-max) of several runs.

    python bench/compare_peers.py [--quick] [--iters K] [--threads N] [--repeat R]

``--threads N`` pins torch's and every BLAS / OpenMP pool of both sides to N threads (default: all
cores); ``--quick`` is a smoke check (10 iterations, a 256 x 256 balanced problem, 3 runs a time).
Needs POT (``pip install pot==0.9.7.post1``); the GeomLoss row needs ``geomloss==0.3.1``.
(Formerly the ``grounded-fast compare-pot`` / ``grounded-fast bench`` subcommands.) The full CPU
suite with published results is ``bash bench/run_cpu.sh``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # run as `python bench/compare_peers.py`: this checkout's grounded_fast, bench/cases.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

_DT = {torch.float32: "f32", torch.float64: "f64"}


def peer_rows(iters: int, repeat: int, quick: bool, geomloss: bool) -> list[dict]:
    """The comparison rows (see :func:`compare_peers`), run under the caller's thread pinning."""
    import ot as pot

    import grounded_fast.ot as got
    from timing import time_repeats
    from grounded_fast.ops import BALANCED, PARTIAL, entropic_ot

    T = lambda fn, scale=1.0: time_repeats(fn, repeat=repeat, scale=scale)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    rows = []
    # partial OT at GroundedBERT's shape: B problems of 64 tokens x 197 patches, cosine cost
    B, n, m, d = 16, 64, 197, 384
    C32 = got.cost_matrix(torch.randn(B, n, d, generator=g), torch.randn(B, m, d, generator=g), "cosine")
    k = 2  # POT loops over problems: timed on k of them, scaled to B
    case = f"partial B={B} {n}x{m} cosine {{}}, {iters} it"
    for dt, peers in ((torch.float32, (("sinkhorn", "torch"), ("sinkhorn_log", "torch"))),
                      (torch.float64, (("sinkhorn", "numpy"),))):
        C, a, b = C32.to(dt), torch.full((B, n), 1 / n, dtype=dt), torch.full((B, m), 1 / m, dtype=dt)
        mass = torch.full((B,), 0.5, dtype=dt)
        run = lambda: entropic_ot(C, a, b, reg=0.05, problem=PARTIAL, mass=mass, max_iter=iters,  # noqa: E731
                                  check_every=0, warn=False)
        ours, plan = T(run), run().plan[0]
        for method, lib in peers:
            Cp, ap, bp = (C.numpy(), a.numpy(), b.numpy()) if lib == "numpy" else (C, a, b)
            mp = 0.5 if lib == "numpy" else mass[0]  # POT's log-domain partial needs m as a tensor of the backend
            # stopThr=-1: POT runs all iterations (its default stops once its error is exactly 0)
            solve = lambda i: pot.partial.entropic_partial_wasserstein(  # noqa: E731
                ap[i], bp[i], Cp[i], 0.05, m=mp, numItermax=iters, stopThr=-1, method=method)
            theirs = T(lambda: [solve(i) for i in range(k)], scale=B / k)
            diff = float(np.abs(np.asarray(solve(0), dtype=np.float64) - plan.double().numpy()).max())
            name = "entropic_partial_wasserstein" + (" sinkhorn_log" if method == "sinkhorn_log" else "")
            rows.append(dict(case=case.format(_DT[dt]), peer=f"POT {name}, {lib} {_DT[dt]}",
                             ours=ours, theirs=theirs, check=f"max |dP| {diff:.1e}"))
    # balanced, one N x N problem, POT's exp-domain Sinkhorn
    N = 256 if quick else 1024
    rng = np.random.default_rng(0)
    M = pot.dist(rng.normal(size=(N, 2)), rng.normal(size=(N, 2)))
    M /= M.max()
    u = np.full(N, 1 / N)
    for dt, lib in ((torch.float32, "torch"), (torch.float64, "numpy")):
        Mt, ut = torch.tensor(M, dtype=dt), torch.tensor(u, dtype=dt)
        Mp, up = (M, u) if lib == "numpy" else (Mt, ut)
        ours_fn = lambda: got.sinkhorn(ut, ut, Mt, 0.05, numItermax=iters, stopThr=0, warn=False)  # noqa: E731
        pot_fn = lambda: pot.sinkhorn(up, up, Mp, 0.05, numItermax=iters, stopThr=0, warn=False)  # noqa: E731
        diff = float(np.abs(np.asarray(ours_fn(), dtype=np.float64) - np.asarray(pot_fn(), dtype=np.float64)).max())
        rows.append(dict(case=f"balanced {N}x{N} sqeuclidean {_DT[dt]}, {iters} it", peer=f"POT sinkhorn (exp domain), "
                         f"{lib} {_DT[dt]}", ours=T(ours_fn), theirs=T(pot_fn), check=f"max |dP| {diff:.1e}"))
    if geomloss:
        from cases import geomloss_solve_batch
        # GeomLoss's batched matrix solver on the partial case's costs, balanced, same reg and iterations
        a, b = torch.full((B, n), 1 / n), torch.full((B, m), 1 / m)
        ours_fn = lambda: entropic_ot(C32, a, b, reg=0.05, problem=BALANCED, max_iter=iters,  # noqa: E731
                                      check_every=0, warn=False).plan
        gl_fn = lambda: geomloss_solve_batch(C32, a, b, reg=0.05, iters=iters)[0]  # noqa: E731
        err = lambda P: float(((P.double().sum(2) - a).abs().sum(1) + (P.double().sum(1) - b).abs().sum(1)).max())  # noqa: E731
        rows.append(dict(case=f"balanced B={B} {n}x{m} cosine f32, {iters} it",
                         peer="GeomLoss ot.solve_batch (eps annealed to reg), torch f32", ours=T(ours_fn),
                         theirs=T(gl_fn), check=f"marginal err ours {err(ours_fn()):.1e}, GeomLoss {err(gl_fn()):.1e}"))
    # stability at small reg: marginal violation of the returned plan (not timed)
    u2, M2 = u[:256] * 4, M[:256, :256]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns "numerical errors" here: the point of the row
        p_small = pot.sinkhorn(u2, u2, M2, 1e-4, numItermax=1000, warn=False)
    o_small = got.sinkhorn(u2, u2, M2, 1e-4, numItermax=1000, warn=False)
    viol = lambda P: float(np.nan_to_num(np.abs(P.sum(1) - u2).sum() + np.abs(P.sum(0) - u2).sum(), nan=np.inf))  # noqa: E731
    rows.append(dict(case="balanced 256x256 reg=1e-4 f64, 1000 it", peer="POT sinkhorn (exp domain), numpy f64",
                     ours=None, theirs=None, check=f"marginal error ours {viol(o_small):.1e}, POT {viol(p_small):.1e}"))
    return rows


def compare_peers(iters: int = 200, threads: int | None = None, repeat: int = 5, quick: bool = False,
                  geomloss: bool = False) -> list[dict]:
    """Time grounded_fast against POT at equal iteration counts (and against GeomLoss's batched matrix
    solver with ``geomloss``; it must be installed). Both sides run pinned to ``threads`` threads
    (torch and every BLAS / OpenMP pool; default: all cores), every timing is ``repeat`` runs after
    a warm-up. Returns rows: case, peer, ``ours`` and ``theirs`` (:class:`timing.Timing`,
    None for the untimed accuracy row) and a check (plans' max difference or marginal errors)."""
    import ot  # noqa: F401  (loaded before pinning: its OpenMP pool must exist to be pinned)
    if geomloss:
        import geomloss as _  # noqa: F401
    from timing import default_threads, pinned_threads
    with pinned_threads(default_threads() if threads is None else threads):
        return peer_rows(iters, repeat, quick, geomloss)


def print_table(rows) -> None:
    from timing import fmt_ratio, fmt_threads
    timed = [r for r in rows if r["ours"] is not None]
    states = {fmt_threads(t.threads) for r in timed for t in (r["ours"], r["theirs"])}
    reps = {len(t.samples) for r in timed for t in (r["ours"], r["theirs"])}
    same = f"{states.pop()}, the same for grounded_fast and every peer" if len(states) == 1 else \
        f"NOT the same in every row: {' | '.join(sorted(states))}"
    print(f"threads: {same}; each time: median (min-max) of {'/'.join(map(str, sorted(reps)))} runs after a "
          "warm-up; POT's per-problem loops timed on 2 problems, scaled to the batch")
    print(f"{'case':<42} {'peer':<57} {'grounded_fast':>22} {'peer':>22} {'speed-up':>9}  check")
    for r in rows:
        if r["ours"] is None:
            print(f"{r['case']:<42} {r['peer']:<57} {'':>22} {'':>22} {'':>9}  {r['check']}")
            continue
        ratio = fmt_ratio(r["theirs"].median / r["ours"].median)
        print(f"{r['case']:<42} {r['peer']:<57} {str(r['ours']):>22} {str(r['theirs']):>22} {ratio:>9}  {r['check']}")


def _have_pot() -> bool:
    if importlib.util.find_spec("ot") is None:
        print("bench/compare_peers.py needs POT: pip install pot==0.9.7.post1", file=sys.stderr)
        return False
    return True


def _have_geomloss() -> bool:
    if importlib.util.find_spec("geomloss") is None:
        print("GeomLoss not installed (pip install geomloss==0.3.1): no GeomLoss row")
        return False
    return True


def _positive_int(s: str) -> int:
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return n


def main(argv=None) -> int:
    from timing import default_threads
    parser = argparse.ArgumentParser(prog="bench/compare_peers.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke check: 10 iterations (unless --iters), a 256 x 256 balanced problem "
                             "(1024 x 1024 without), 3 runs a time (unless --repeat)")
    parser.add_argument("--iters", type=_positive_int, default=None,
                        help="Sinkhorn iterations for every library (default 200, 10 with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help=f"threads of both sides: torch's and every BLAS / OpenMP pool (default: all cores, "
                             f"{default_threads()} here)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help="timed runs of each side after a warm-up; the median and min-max are printed "
                             "(default 5, 3 with --quick)")
    args = parser.parse_args(argv)
    if not _have_pot():
        return 2
    iters = args.iters or (10 if args.quick else 200)
    print(f"torch {torch.__version__}; equal iterations")
    print_table(compare_peers(iters, args.threads, args.repeat or (3 if args.quick else 5), quick=args.quick,
                              geomloss=_have_geomloss()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
