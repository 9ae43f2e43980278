"""``grounded-fast`` command line.

    grounded-fast run STUDY [--preset tiny|small|paper] [--config FILE] [--out DIR]
                      [--executor local|ray] [--workers N] [--threads-per-unit T] [--ray-address ADDR] [--resume]
                      [--device auto|cpu|cuda|cuda:N] [--gpus-per-unit F]
                                            run or resume a study (grounding, flava-ablation,
                                            groundedbert, ...), then write its report
    grounded-fast report DIR [--to OUT]     rebuild the report of a finished or partial run
    grounded-fast export DIR [--format csv|parquet] [--to OUT]   the run's result tables as files
    grounded-fast analyse PAIRS.csv [--populations-regex RE | --populations FILE] [--to OUT]
                                            populations compared on a table of model pairs (report)
    grounded-fast demo-data --format vatex|coco|wit|multi30k DIR [--scenes N] [--seed S] [--no-features]
                            [--overwrite]   the demo corpus written in a real dataset's layout
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def load_config_file(path: str) -> dict:
    """Overrides from a YAML (.yaml / .yml: plain values only, no tags) or TOML (.toml) file, as a
    dict. Raises ValueError naming the file (and the line of a syntax error), OSError if unreadable."""
    if not path.endswith((".toml", ".yaml", ".yml")):
        raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".toml"):
        from ._toml import tomllib
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise ValueError(f"{path}: line {line}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:   # its message ends "(at line L, column C)"
            raise ValueError(f"{path}: invalid TOML: {exc}") from None
    else:
        import yaml
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: {_yaml_problem(exc)}") from None
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{path}: config keys must be names, got {bad[0]!r}")
    return data


def _yaml_problem(exc) -> str:
    """One line: where (line, column) and what is wrong in a YAML file PyYAML refused."""
    import re

    import yaml
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if isinstance(exc, yaml.constructor.ConstructorError) and tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{where}the YAML tag {name} is not accepted (a config holds plain values: numbers, strings, "
                "lists, mappings)")
    return f"invalid YAML: {where}{' '.join(problem.split())}"


def _study_config(args, config_cls, db: str):
    """The study config: ``--preset`` + ``--config``, or with a bare ``--resume`` the run's stored one."""
    from .experiments.store import ResultStore
    if args.resume and not os.path.exists(db):
        raise ValueError(f"--resume: no run to resume in {os.path.dirname(db) or '.'} (no results.sqlite)")
    if args.resume and not (args.preset or args.config):
        with ResultStore(db, read_only=True) as store:
            info = store.study_info()
        if info.get("name") != args.study:
            raise ValueError(f"--resume: {os.path.dirname(db)} holds a {info.get('name')!r} run, not {args.study!r}")
        cfg = config_cls.from_dict(info["config"])
        cfg.check_runnable()
        return cfg
    overrides = load_config_file(args.config) if args.config else {}
    try:
        cfg = config_cls.from_preset(args.preset or "tiny", **overrides)
        cfg.check_runnable()
        return cfg
    except (ValueError, TypeError) as exc:
        raise (TypeError if isinstance(exc, TypeError) else ValueError)(
            f"{args.config}: {exc}" if args.config else str(exc)) from None


def _run_study(args) -> int:
    from .experiments import studies
    from .experiments.device import resolve_device
    from .experiments.executors import ExecutorConfig, session
    from .experiments.run_lock import RunDirBusyError
    from .experiments.runner import StudyDataError
    from .experiments.store import StoreError, StudyMismatchError
    config_cls = studies.get(args.study).config_cls
    out = args.out or os.path.join("runs", f"{args.study}-{args.preset or 'tiny'}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"grounded-fast run: --device: {exc}", file=sys.stderr)
        return 2
    gpus = _gpus_per_unit(args.gpus_per_unit, args.executor)
    if isinstance(gpus, str):
        print(f"grounded-fast run: --gpus-per-unit {gpus}", file=sys.stderr)
        return 2
    try:
        executor = ExecutorConfig(args.executor, args.workers, args.threads_per_unit, args.ray_address, device, gpus)
        cfg = _study_config(args, config_cls, os.path.join(out, "results.sqlite"))
    except StoreError as exc:
        print(f"grounded-fast run: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        print(f"grounded-fast run: bad config: {exc}", file=sys.stderr)
        return 2
    import importlib.util
    if executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        print("grounded-fast run --executor ray needs Ray: pip install 'ray>=2.9'", file=sys.stderr)
        return 2
    try:
        with session(executor):
            return _run_and_report(args.study, cfg, out, not args.no_progress, executor, args.force_new)
    except (ConnectionError, RunDirBusyError, StoreError) as exc:
        print(f"grounded-fast run: {exc}", file=sys.stderr)
        return 2
    except StudyDataError as exc:
        print(f"grounded-fast run: data: {exc} (no unit was started; details in {os.path.join(out, 'run.log')})",
              file=sys.stderr)
        return 2
    except StudyMismatchError as exc:
        print(f"grounded-fast run: {out} holds another run ({exc}); rerun with that run's settings, use "
              "--resume to continue it as it was, --force-new to start afresh there (its store is kept, "
              "renamed), or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngrounded-fast run: interrupted; the finished units are recorded in {out}: rerun the same "
              f"command (or `grounded-fast run {args.study} --resume --out {out}`) to continue", file=sys.stderr)
        return 130


def _gpus_per_unit(value, executor: str):
    """``--gpus-per-unit``: None (not given), a float > 0, or the reason it is refused (a string)."""
    import math
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        return f"must be a number > 0 (fractional allowed), got {value!r}"
    if executor != "ray":
        return "is for --executor ray (the local pool gives each worker a GPU of its own, or shares the only one)"
    return x


def _run_and_report(study: str, cfg, out: str, progress: bool, executor, force_new: bool = False) -> int:
    from .experiments import studies
    from .experiments.runner import run_study, study_report, warning_counts
    from .experiments.store import ResultStore
    t0 = time.time()
    entry = studies.get(study)
    res = run_study(entry, cfg, out, progress=progress, executor=executor, force_new=force_new)
    md, html = study_report(out)
    from .experiments.device import describe
    print(f"{study} done in {time.time() - t0:.0f} s on {describe(executor.device)}; report: {md} and {html}")
    print("\n".join(entry.summary(res)))
    with ResultStore(os.path.join(out, "results.sqlite"), read_only=True) as store:
        counted = warning_counts(store)
    if counted:
        total = sum(sum(u.values()) for u in counted.values())
        print(f"{total} warning{'s' * (total != 1)} of {len(counted)} kind{'s' * (len(counted) != 1)} raised "
              f"inside the units: counted in {os.path.join(out, 'run.log')} and the report's last section")
    return 0


def _open_run(command: str, run_dir: str):
    """The read-only store of the run in ``run_dir``, or None after printing why there is none
    (no directory, no ``results.sqlite``, a damaged one, or no study recorded in it)."""
    from .experiments.store import ResultStore, StoreError
    db = os.path.join(run_dir, "results.sqlite")
    if not os.path.isdir(run_dir) or not os.path.exists(db):
        what = "no such directory" if not os.path.isdir(run_dir) else "no results.sqlite in it"
        print(f"grounded-fast {command}: {run_dir} holds no run ({what}); give the --out directory of a "
              "`grounded-fast run`", file=sys.stderr)
        return None
    try:
        store = ResultStore(db, read_only=True)
    except StoreError as exc:
        print(f"grounded-fast {command}: {exc}", file=sys.stderr)
        return None
    if store.study_info().get("name") is None:
        store.close()
        print(f"grounded-fast {command}: {db} holds no run (no study was ever started in it)", file=sys.stderr)
        return None
    return store


def _verify_run(command: str, run_dir: str) -> int:
    """Check the run directory (see ``experiments.verify``): 0 when healthy, else 1 after one line
    per problem on stderr."""
    from .experiments.verify import check_run
    result = check_run(run_dir)
    if not result.problems:
        print(f"{run_dir}: {result.summary()}")
        return 0
    for problem in result.problems:
        print(f"grounded-fast {command}: {problem}", file=sys.stderr)
    print(f"grounded-fast {command}: {run_dir}: {result.summary()}; rerun the study (the same command) to "
          "recompute what is damaged", file=sys.stderr)
    return 1


def _positive_int(s: str) -> int:
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return n


def _analyse_pairs(args) -> int:
    """``grounded-fast analyse``: load, analyse, write the report; exit 2 on a bad input."""
    from .analysis.pairs_table import PairsTableError, analyse_pairs, load_pairs
    from .experiments.pairs_report import pairs_report
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    try:
        table = load_pairs(args.pairs, metrics=split(args.metrics), model_columns=split(args.model_columns),
                           asymmetric=args.asymmetric)
        result = analyse_pairs(table, args.populations, regex=args.populations_regex, directional=args.directional,
                               permutations=args.permutations, bootstrap=args.bootstrap, seed=args.seed)
    except (PairsTableError, OSError) as exc:
        print(f"grounded-fast analyse: {exc}", file=sys.stderr)
        return 2
    out = args.to or os.path.splitext(args.pairs)[0] + "-analysis"
    md, html = pairs_report(result, out)
    print(f"{len(result.models)} models, populations {result.sizes}")
    for name, m in result.metrics.items():
        p = m.permutation
        print(f"  {name} ({m.handling}): mean(within) - mean(between) = {p.difference:.4g}, permutation p = "
              f"{p.pvalue:.3g} ({p.permutations} {'orderings, exact' if p.exact else f'permutations, seed {p.seed}'})")
    print("  (the report's Kruskal-Wallis / Mann-Whitney p-values assume independent pairs; these do not)")
    print(f"report: {md} and {html}")
    return 0


def _demo_data(args) -> int:
    """``grounded-fast demo-data``: write the demo corpus in a real format; exit 2 on a bad DIR or size."""
    from .data.demo import DemoCorpus
    from .data.export import write_demo_dataset
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        print(f"grounded-fast demo-data: {args.dir} is a file, not a folder", file=sys.stderr)
        return 2
    if os.path.isdir(args.dir) and os.listdir(args.dir) and not args.overwrite:
        print(f"grounded-fast demo-data: {args.dir} is not empty; give an empty or new folder, or --overwrite "
              "(replaces files of the same names, keeps the others)", file=sys.stderr)
        return 2
    try:
        corpus = DemoCorpus(args.scenes, args.seed)
        files = write_demo_dataset(corpus, args.dir, args.format, features=not args.no_features,
                                   progress=not args.no_progress and sys.stderr.isatty())
    except ValueError as exc:
        print(f"grounded-fast demo-data: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{split} {len(idx)}" for split, idx in corpus.splits.items())
    print(f"{args.format} demo corpus ({args.scenes} scenes, seed {args.seed}; {sizes}) in {args.dir}:")
    print(*(f"  {split}: {path}" for split, path in files.items()), sep="\n")
    return 0


def _preset_costs_epilog() -> str:
    """What each study x preset costs (``experiments/preset_costs.toml``), for ``run --help``."""
    from .experiments import preset_costs
    try:
        table = preset_costs.table()
    except (OSError, ValueError, KeyError) as exc:
        return f"preset costs: unavailable ({exc})"
    return ("preset costs: units; wall time on 2 CPU cores (1 thread per unit) estimated from per-step times\n"
            "measured by bench/preset_costs.py, beside a measured tiny run (the whole command, report included);\n"
            "GPU-hours of paper where a GPU measured them:\n\n" + table)


def main(argv=None) -> int:
    from .experiments import studies
    parser = argparse.ArgumentParser(prog="grounded-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume: rerun the same command) a study", epilog=_preset_costs_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("study", choices=studies.available(), help="the study")
    r.add_argument("--preset", default=None, choices=studies.presets(), help="scale (default tiny)")
    r.add_argument("--config", help="YAML or TOML file of config overrides (validated: unknown keys are errors)")
    r.add_argument("--out", default=None, help="output directory (default runs/<study>-<preset>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    fresh = r.add_mutually_exclusive_group()
    fresh.add_argument("--resume", action="store_true",
                       help="continue the run in --out with the config stored in it (rerunning the same command "
                            "resumes too; --resume also works without repeating --preset / --config)")
    fresh.add_argument("--force-new", action="store_true",
                       help="start afresh in --out: its results.sqlite (damaged, or another run's) is kept as "
                            "results.sqlite.set-aside-<time> and every unit is recomputed")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where training units run: a local process pool (default) or Ray; results are identical")
    r.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: CPU cores / threads per unit; 1 runs in this process)")
    r.add_argument("--threads-per-unit", type=int, default=1,
                   help="torch threads of every unit, whatever the executor (results depend on it; default 1)")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster address for --executor ray (default: RAY_ADDRESS, else a local Ray instance)")
    r.add_argument("--device", default="auto",
                   help="where models, feature extraction and the analysis run: auto (CUDA when available; "
                        "default), cpu, cuda (the local pool gives each worker a GPU of its own when there are "
                        "several) or cuda:N; training in bf16 autocast on CUDA")
    r.add_argument("--gpus-per-unit", default=None,
                   help="GPUs each Ray task requests (fractional allowed, e.g. 0.25: four units per GPU; default 1 "
                        "when the device is CUDA, else 0)")
    rp = sub.add_parser("report", help="rebuild the report (report.md, report.html) of a run directory")
    rp.add_argument("dir")
    rp.add_argument("--to", default=None, help="output directory (default DIR; DIR itself is only read)")
    rp.add_argument("--no-verify", action="store_true",
                    help="skip the check of DIR's checkpoints, files and feature caches against their hashes "
                         "(`grounded-fast verify DIR` alone; exit 1 when something is damaged)")
    vp = sub.add_parser("verify", help="check a run directory's store, checkpoints, files and feature caches "
                                       "against their recorded hashes (exit 1 when something is damaged)")
    vp.add_argument("dir", help="the run directory (--out of `grounded-fast run`)")
    ex = sub.add_parser("export", help="write a run's result tables (runs, units, checkpoints, metrics, pairwise)")
    ex.add_argument("dir")
    ex.add_argument("--format", choices=["csv", "parquet"], default="csv")
    ex.add_argument("--to", default=None, help="output directory (default DIR/export)")
    an = sub.add_parser("analyse", help="compare populations of models on a CSV of model pairs (yours, or a "
                                        "store's pairwise.csv from `export`): matrices, tests, report")
    an.add_argument("pairs", help="CSV: model_1, model_2 and one column per metric, or a pairwise.csv export")
    pops = an.add_mutually_exclusive_group()
    pops.add_argument("--populations-regex", default=None,
                      help="regex whose first capture group is a model's population, e.g. '^([A-Z]+)-' "
                           "(default for a pairwise.csv export: the run id's first '-' field)")
    pops.add_argument("--populations", default=None, help="CSV with the columns model, population")
    an.add_argument("--metrics", default=None, help="comma-separated metrics to analyse (default: all)")
    an.add_argument("--model-columns", default=None, help="the two model columns, e.g. 'a,b' (default model_1,model_2)")
    an.add_argument("--asymmetric", action="append", default=None, metavar="METRIC",
                    help="a directional metric such as KL (both orders of every pair given); repeatable. "
                         "Default: detected (both orders everywhere, values differ)")
    an.add_argument("--directional", choices=["mean", "ordered"], default="mean",
                    help="directional metrics: 'mean' of both directions (default), or 'ordered' pairs kept")
    an.add_argument("--permutations", type=_positive_int, default=9999, help="label shufflings (default 9999)")
    an.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of the CIs (default 2000)")
    an.add_argument("--seed", type=int, default=0, help="seed of the permutations and bootstrap (default 0)")
    an.add_argument("--to", default=None, help="report directory (default PAIRS-analysis beside the CSV)")
    dd = sub.add_parser("demo-data", help="write the built-in demo corpus in a real dataset's layout (vatex, "
                                          "coco, wit, multi30k), e.g. to try the real-data path of a study")
    dd.add_argument("dir", help="output folder (created; must be empty unless --overwrite)")
    dd.add_argument("--format", required=True, choices=["vatex", "coco", "wit", "multi30k"], help="the layout")
    dd.add_argument("--scenes", type=_positive_int, default=300, help="generated scenes (default 300; split "
                                                                       "80/10/10 into train/val/test)")
    dd.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    dd.add_argument("--no-features", action="store_true",
                    help="vatex: no features/<videoID>.npy (default: the shipped EfficientNet-Lite0's 49 x 1280 "
                         "patch features of each scene, computed on the CPU)")
    dd.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    dd.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.cmd == "demo-data":
        return _demo_data(args)
    if args.cmd == "run":
        return _run_study(args)
    if args.cmd == "export":
        store = _open_run("export", args.dir)
        if store is None:
            return 2
        with store:
            try:
                paths = store.export(args.to or os.path.join(args.dir, "export"), format=args.format)
            except ImportError as exc:
                print(f"grounded-fast export: {exc}", file=sys.stderr)
                return 2
        print(*paths, sep="\n")
        return 0
    if args.cmd == "analyse":
        return _analyse_pairs(args)
    if args.cmd == "report":
        from .experiments import studies
        from .experiments.runner import study_report
        store = _open_run("report", args.dir)
        if store is None:
            return 2
        with store:
            study = store.study_info().get("name")
        if study not in studies.available():
            print(f"grounded-fast report: {args.dir} holds a {study!r} run, a study this grounded_fast does not "
                  f"know (known: {', '.join(studies.available())}); register it before reporting", file=sys.stderr)
            return 2
        print(*study_report(args.dir, args.to), sep="\n")
        return 0 if args.no_verify else _verify_run("report", args.dir)
    if args.cmd == "verify":
        store = _open_run("verify", args.dir)
        if store is None:
            return 2
        store.close()
        return _verify_run("verify", args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
