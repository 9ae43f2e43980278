"""``grounded-fast`` command line.

    grounded-fast compare-pot [--iters N]   short OT comparison against POT (prints a table)
    grounded-fast run grounding|flava-ablation|groundedbert [--preset tiny|small|paper] [--config FILE] [--out DIR]
                      [--executor local|ray] [--workers N] [--threads-per-unit T] [--ray-address ADDR] [--resume]
                                            run or resume a study, then write its report
    grounded-fast report DIR                rebuild the report of a finished or partial run
    grounded-fast export DIR [--format csv|parquet]   the run's result tables as files
    grounded-fast bench [--quick]           the OT speed comparison against POT (GeomLoss too if installed)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch


def _time(fn, repeat=3):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compare_pot(iters: int = 100) -> list[dict]:
    """Time grounded_fast against POT at equal iteration counts on a few small cases; returns rows."""
    import ot as pot

    import grounded_fast.ot as got
    from grounded_fast.ops import PARTIAL, entropic_ot

    rng = np.random.default_rng(0)
    rows = []
    # partial OT at GroundedBERT's shape: B problems of 64 tokens x 197 patches, cosine cost
    B, n, m, d = 16, 64, 197, 384
    x = torch.randn(B, n, d)
    y = torch.randn(B, m, d)
    C = got.cost_matrix(x, y, "cosine")
    a, b = torch.full((B, n), 1 / n), torch.full((B, m), 1 / m)
    mass = torch.full((B,), 0.5)
    ours = _time(lambda: entropic_ot(C, a, b, reg=0.05, problem=PARTIAL, mass=mass, max_iter=iters,
                                     check_every=0, warn=False))
    Cn, an, bn = C.double().numpy(), a[0].double().numpy(), b[0].double().numpy()
    k = 2  # POT is timed on k problems and scaled to B
    # stopThr=-1: POT runs all iterations (its default stops once its error is exactly 0)
    pot_t = _time(lambda: [pot.partial.entropic_partial_wasserstein(an, bn, Cn[i], 0.05, m=0.5, numItermax=iters,
                                                                    stopThr=-1) for i in range(k)],
                  repeat=1) * B / k
    ref = entropic_ot(C[:1].double(), a[:1].double(), b[:1].double(), reg=0.05, problem=PARTIAL,
                      mass=mass[:1].double(), max_iter=iters, check_every=0, warn=False).plan[0].numpy()
    pot_plan = pot.partial.entropic_partial_wasserstein(an, bn, Cn[0], 0.05, m=0.5, numItermax=iters,
                                                        stopThr=-1)
    rows.append(dict(case=f"partial B={B} {n}x{m} cosine, {iters} it", ours_s=ours, pot_s=pot_t,
                     max_diff=float(np.abs(ref - pot_plan).max())))
    # balanced, one 1024 x 1024 problem
    N = 1024
    M = pot.dist(rng.normal(size=(N, 2)), rng.normal(size=(N, 2)))
    M /= M.max()
    u = np.full(N, 1 / N)
    Mt, ut = torch.tensor(M), torch.tensor(u)
    ours = _time(lambda: got.sinkhorn(ut, ut, Mt, 0.05, numItermax=iters, stopThr=0, warn=False))
    pot_t = _time(lambda: pot.sinkhorn(u, u, M, 0.05, numItermax=iters, stopThr=0, warn=False), repeat=1)
    diff = np.abs(got.sinkhorn(u, u, M, 0.05, numItermax=iters, stopThr=0, warn=False)
                  - pot.sinkhorn(u, u, M, 0.05, numItermax=iters, stopThr=0, warn=False)).max()
    rows.append(dict(case=f"balanced {N}x{N} float64 vs exp-domain, {iters} it", ours_s=ours, pot_s=pot_t,
                     max_diff=float(diff)))
    # stability at small reg: marginal violation of the returned plan
    u2, M2 = u[:256] * 4, M[:256, :256]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns "numerical errors" here: the point of the row
        p_small = pot.sinkhorn(u2, u2, M2, 1e-4, numItermax=1000, warn=False)
    o_small = got.sinkhorn(u2, u2, M2, 1e-4, numItermax=1000, warn=False)
    viol = lambda P: float(np.nan_to_num(np.abs(P.sum(1) - u2).sum() + np.abs(P.sum(0) - u2).sum(), nan=np.inf))
    rows.append(dict(case="balanced 256x256, reg=1e-4, 1000 it: marginal error", ours_s=None, pot_s=None,
                     max_diff=None, ours_finite=f"{viol(o_small):.1e}", pot_finite=f"{viol(p_small):.1e}"))
    return rows


def _print(rows):
    print(f"{'case':<52} {'grounded_fast':>14} {'POT':>11} {'speed-up':>9} {'max |dP|':>10}")
    for r in rows:
        if r["ours_s"] is None:
            print(f"{r['case']:<52} {r['ours_finite']:>14} {r['pot_finite']:>11}")
            continue
        print(f"{r['case']:<52} {r['ours_s'] * 1e3:>11.1f} ms {r['pot_s'] * 1e3:>8.0f} ms "
              f"{r['pot_s'] / r['ours_s']:>8.0f}x {r['max_diff']:>10.1e}")


def _have_pot(command: str) -> bool:
    import importlib.util
    if importlib.util.find_spec("ot") is None:
        print(f"{command} needs POT: pip install pot==0.9.7.post1", file=sys.stderr)
        return False
    return True


def _geomloss_line(quick: bool) -> None:
    """One balanced case against GeomLoss' tensorized Sinkhorn, per iteration, if GeomLoss is installed."""
    try:
        from geomloss import SamplesLoss
        from geomloss.sinkhorn_divergence import epsilon_schedule
    except ImportError:
        print("GeomLoss not installed: no GeomLoss comparison")
        return
    from grounded_fast.ops import entropic_ot
    n = 256 if quick else 1024
    x, y = torch.randn(n, 3), torch.randn(n, 3)
    C = (torch.cdist(x, y) ** 2 / 2)[None]
    a = torch.full((1, n), 1.0 / n)
    iters = 20
    ours = _time(lambda: entropic_ot(C, a, a, reg=0.05, max_iter=iters, check_every=0, warn=False)) / iters
    steps = len(epsilon_schedule(2, float((torch.cat([x, y]).amax(0) - torch.cat([x, y]).amin(0)).norm()),
                                 0.05 ** 0.5, 0.9))
    loss = SamplesLoss("sinkhorn", p=2, blur=0.05 ** 0.5, scaling=0.9, debias=False, backend="tensorized")
    theirs = _time(lambda: loss(x, y)) / steps
    print(f"{'balanced ' + str(n) + 'x' + str(n) + ' vs GeomLoss tensorized (per iteration)':<52} "
          f"{ours * 1e6:>11.1f} us {theirs * 1e6:>8.0f} us {theirs / ours:>8.1f}x")


def load_config_file(path: str) -> dict:
    """Overrides from a YAML (.yaml / .yml) or TOML (.toml) file, as a dict."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".toml"):
        import tomllib
        data = tomllib.loads(raw.decode())
    elif path.endswith((".yaml", ".yml")):
        import yaml
        data = yaml.safe_load(raw) or {}
    else:
        raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    return data


def _study_config(args, config_cls, db: str):
    """The study config: ``--preset`` + ``--config``, or with a bare ``--resume`` the run's stored one."""
    from .experiments.store import ResultStore
    if args.resume and not os.path.exists(db):
        raise ValueError(f"--resume: no run to resume in {os.path.dirname(db) or '.'} (no results.sqlite)")
    if args.resume and not (args.preset or args.config):
        with ResultStore(db) as store:
            info = store.study_info()
        if info.get("name") != args.study:
            raise ValueError(f"--resume: {os.path.dirname(db)} holds a {info.get('name')!r} run, not {args.study!r}")
        return config_cls.from_dict(info["config"])
    overrides = load_config_file(args.config) if args.config else {}
    return config_cls.from_preset(args.preset or "tiny", **overrides)


def _run_study(args) -> int:
    from .experiments.executors import ExecutorConfig, session
    from .experiments.flava_ablation import FlavaStudyConfig
    from .experiments.groundedbert_study import GroundedBertStudyConfig
    from .experiments.grounding import GroundingStudyConfig
    from .experiments.store import StudyMismatchError
    config_cls = {"grounding": GroundingStudyConfig, "flava-ablation": FlavaStudyConfig,
                  "groundedbert": GroundedBertStudyConfig}[args.study]
    out = args.out or os.path.join("runs", f"{args.study}-{args.preset or 'tiny'}")
    try:
        executor = ExecutorConfig(args.executor, args.workers, args.threads_per_unit, args.ray_address)
        cfg = _study_config(args, config_cls, os.path.join(out, "results.sqlite"))
    except (ValueError, TypeError, OSError) as exc:
        print(f"grounded-fast run: bad config: {exc}", file=sys.stderr)
        return 2
    import importlib.util
    if executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        print("grounded-fast run --executor ray needs Ray: pip install 'ray>=2.9'", file=sys.stderr)
        return 2
    try:
        with session(executor):
            return _run_and_report(args.study, cfg, out, not args.no_progress, executor)
    except ConnectionError as exc:
        print(f"grounded-fast run: {exc}", file=sys.stderr)
        return 2
    except StudyMismatchError as exc:
        print(f"grounded-fast run: {out} holds another run ({exc}); rerun with that run's settings, use "
              "--resume to continue it as it was, or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngrounded-fast run: interrupted; the finished units are recorded in {out}: rerun the same "
              f"command (or `grounded-fast run {args.study} --resume --out {out}`) to continue", file=sys.stderr)
        return 130


def _run_and_report(study: str, cfg, out: str, progress: bool, executor) -> int:
    from .experiments.runner import (flava_report, grounding_report, groundedbert_report, run_flava, run_grounding,
                                     run_groundedbert)
    t0 = time.time()
    if study == "grounding":
        res = run_grounding(cfg, out, progress=progress, executor=executor)
        md, html = grounding_report(out)
        lines = [f"  {pair:28s} agreement {row['agreement']:.3f}  KL {row['kl']:.3f}"
                 for pair, row in sorted(res.get("pair_table", {}).items())]
    elif study == "groundedbert":
        rows = run_groundedbert(cfg, out, progress=progress, executor=executor)
        md, html = groundedbert_report(out)
        lines = [f"  {r['variant']:12s} dev accuracy {r.get('dev_accuracy', float('nan')):.3f}"
                 + (f"  OT share of step time {r['ot_share_of_step_time']:.2f}" if "ot_share_of_step_time" in r else "")
                 for r in rows]
    else:
        rows = run_flava(cfg, out, progress=progress, executor=executor)
        md, html = flava_report(out)
        lines = [f"  text {r['text']:>6} images {r['images']:>5} seed {r['seed']}: BLiMP {r.get('blimp', 0):.1f}% "
                 f"PPPL {r.get('pppl', float('nan')):.1f}" for r in rows]
    print(f"{study} done in {time.time() - t0:.0f} s; report: {md} and {html}")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="grounded-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compare-pot", help="short OT comparison against POT (needs `pip install pot`)")
    p.add_argument("--iters", type=int, default=100, help="Sinkhorn iterations for both libraries")
    r = sub.add_parser("run", help="run (or resume: rerun the same command) a study")
    r.add_argument("study", choices=["grounding", "flava-ablation", "groundedbert"], help="the study")
    r.add_argument("--preset", default=None, choices=["tiny", "small", "paper"], help="scale (default tiny)")
    r.add_argument("--config", help="YAML or TOML file of config overrides (validated: unknown keys are errors)")
    r.add_argument("--out", default=None, help="output directory (default runs/<study>-<preset>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out with the config stored in it (rerunning the same command "
                        "resumes too; --resume also works without repeating --preset / --config)")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where training units run: a local process pool (default) or Ray; results are identical")
    r.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: CPU cores / threads per unit; 1 runs in this process)")
    r.add_argument("--threads-per-unit", type=int, default=1,
                   help="torch threads of every unit, whatever the executor (results depend on it; default 1)")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster address for --executor ray (default: RAY_ADDRESS, else a local Ray instance)")
    rp = sub.add_parser("report", help="rebuild the report (report.md, report.html) of a run directory")
    rp.add_argument("dir")
    ex = sub.add_parser("export", help="write a run's result tables (runs, units, checkpoints, metrics, pairwise)")
    ex.add_argument("dir")
    ex.add_argument("--format", choices=["csv", "parquet"], default="csv")
    ex.add_argument("--to", default=None, help="output directory (default DIR/export)")
    bp = sub.add_parser("bench", help="OT speed comparison against POT (and GeomLoss if installed)")
    bp.add_argument("--quick", action="store_true", help="few iterations (a smoke check)")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return _run_study(args)
    if args.cmd == "export":
        from .experiments.store import ResultStore
        with ResultStore(os.path.join(args.dir, "results.sqlite")) as store:
            try:
                paths = store.export(args.to or os.path.join(args.dir, "export"), format=args.format)
            except ImportError as exc:
                print(f"grounded-fast export: {exc}", file=sys.stderr)
                return 2
        print(*paths, sep="\n")
        return 0
    if args.cmd == "bench":
        if not _have_pot("bench"):
            return 2
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; equal iterations")
        _print(compare_pot(10 if args.quick else 200))
        _geomloss_line(quick=args.quick)
        return 0
    if args.cmd == "report":
        from .experiments.runner import flava_report, grounding_report, groundedbert_report
        from .experiments.store import ResultStore
        with ResultStore(os.path.join(args.dir, "results.sqlite")) as store:
            study = store.study_info().get("name")
        report = {"flava-ablation": flava_report, "groundedbert": groundedbert_report}.get(study, grounding_report)
        print(*report(args.dir), sep="\n")
        return 0
    if args.cmd == "compare-pot":
        if not _have_pot("compare-pot"):
            return 2
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        _print(compare_pot(args.iters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
