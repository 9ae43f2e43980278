"""Running a study resumably: units of work recorded in the result store, skipped when done.

``run_grounding`` (features, one training run per grid point, analysis), ``run_flava`` (one unit per
grid cell) and ``run_groundedbert`` (one unit per variant) leave in ``out_dir``: ``results.sqlite``
(the store), the encoder-feature cache, the checkpoints, ``run.log`` and ``run.lock`` (held while a
run is going: a second run on ``out_dir`` raises ``RunDirBusyError``); ``*_report`` rebuild
``report.md`` / ``report.html`` from the store, which they only read. Every unit commits its results in one transaction
after its files are completely written, so killing the process at any moment (SIGKILL included)
and rerunning the same command continues at the first unit not done: a half-done unit is redone
from its seed (deterministic), checkpoints and the other files of done units (recorded with their
sha256 in the unit's payload under ``files``) are verified before they count.
Training units run on an executor (``executors.py``: a local process pool by default, or Ray)
with identical results; only this process writes the store.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
from tqdm.auto import tqdm

from .._atomic import Written, check_file
from .executors import ExecutorConfig, Task, run_tasks
from .grounding import GroundingStudyConfig, analyse, plan_runs, train_run
from .run_lock import hold_run_lock
from .store import ResultStore, set_aside

log = logging.getLogger("grounded_fast.experiments")


def _logger(out_dir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(out_dir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, unit="unit")


class _UnitBars:
    """One progress bar per running unit (below the study's bar), fed by the executor's reports."""

    def __init__(self, enabled: bool, unit: str):
        self.enabled, self.unit, self.bars, self.positions = enabled, unit, {}, {}

    def update(self, task: Task, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(task.key)
        if bar is None:
            used = set(self.positions.values())
            self.positions[task.key] = next(p for p in range(1, len(self.bars) + 2) if p not in used)
            bar = self.bars[task.key] = tqdm(total=total, desc=task.key.split("/", 1)[-1], unit=self.unit,
                                             leave=False, position=self.positions[task.key])
        bar.total = total
        bar.update(done - bar.n)

    def close(self, key: str) -> None:
        bar = self.bars.pop(key, None)
        self.positions.pop(key, None)
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def _study(name: str, cfg, out_dir: str, force_new: bool = False):
    """The result store of study ``name`` in ``out_dir`` (created or resumed), with ``run.log``,
    under the directory's run lock (a second run on ``out_dir`` raises ``RunDirBusyError``).
    ``cfg`` is checked first (it may have changed since its construction): a bad value writes nothing.
    ``force_new``: an existing ``results.sqlite`` (damaged, or another run's) is set aside (renamed,
    see ``store.set_aside``) and the study starts afresh."""
    cfg.check()
    db = os.path.join(out_dir, "results.sqlite")
    with hold_run_lock(out_dir):
        kept = set_aside(db) if force_new else None
        with ResultStore(db) as store:
            store.begin_study(name, cfg.to_dict())
            handler = _logger(out_dir)
            if kept is not None:
                log.info("--force-new: the previous results.sqlite was kept as %s", kept)
            try:
                yield store
            finally:
                log.removeHandler(handler)
                handler.close()


def _unit_result(start: float, checkpoints: List[tuple], metrics: List[dict], payload: Optional[dict] = None) -> dict:
    """What a unit returns to the main process: ``checkpoints`` [(epoch, path)], ``metrics`` rows
    (without run_id), ``payload`` (the unit's record), ``wall_seconds`` since ``start``."""
    return {"payload": payload or {}, "metrics": metrics, "checkpoints": checkpoints,
            "wall_seconds": time.time() - start}


def _commit(store: ResultStore, task: Task, out: dict) -> None:
    """Record a finished unit ('<kind>/<run_id>') and all its results in one transaction."""
    kind, run_id = task.key.split("/", 1)
    store.complete_unit(task.key, kind, {"run_id": run_id, **out["payload"]},
                        metrics=[{"run_id": run_id, **m} for m in out["metrics"]],
                        checkpoints=[(run_id, epoch, path) for epoch, path in out["checkpoints"]],
                        runs=[{"run_id": run_id, "status": "done", "wall_seconds": out["wall_seconds"]}])
    log.info("%s done in %.1f s: %s", run_id, out["wall_seconds"], json.dumps(out["metrics"]))


def _file_records(out_dir: str, written: List[Written]) -> Dict[str, dict]:
    """{path relative to ``out_dir``: {"sha256", "size"}} of files written by the atomic writer,
    for a unit's payload (verified by :func:`_units_done`)."""
    return {os.path.relpath(w.path, out_dir): {"sha256": w.sha256, "size": w.size} for w in written}


def _units_done(store: ResultStore, unit: str, run_id: str) -> bool:
    """Whether ``unit`` is recorded as done, all its run's checkpoints (at least one) verify and
    so do the files recorded in its payload."""
    ckpts = store.checkpoints(run_id)
    if not (store.unit_done(unit) and ckpts and all(store.verify_checkpoint(c["run_id"], c["epoch"])
                                                    for c in ckpts)):
        return False
    root = os.path.dirname(os.path.abspath(store.path))
    for rel, rec in store.unit(unit)["payload"].get("files", {}).items():
        problem = check_file(os.path.join(root, rel), rec["sha256"], rec["size"])
        if problem:
            log.warning("%s is redone: %s", unit, problem)
            return False
    return True


def _run_units(store: ResultStore, items: List[tuple], bar, progress: bool, executor: ExecutorConfig,
               prepare: Callable[[], object], unit: str = "step") -> None:
    """Independent units: ``items`` are (unit_id '<kind>/<run_id>', work); a unit recorded as done
    with verified checkpoints is skipped (``bar`` advanced); ``prepare()`` (the shared inputs) runs
    only if some unit is left; ``work(data, progress) -> _unit_result(...)`` runs on ``executor``
    and each result is committed here as it arrives. A run is marked 'running' when it first
    reports progress and 'failed' (with the error) when it raises."""
    tasks = [Task(uid, work) for uid, work in items if not _units_done(store, uid, uid.split("/", 1)[1])]
    bar.update(len(items) - len(tasks))
    if not tasks:
        return
    bars, started = _UnitBars(progress, unit), set()

    def on_progress(task, done, total):
        if task.key not in started:
            started.add(task.key)
            store.mark_run(task.key.split("/", 1)[1], status="running")
        bars.update(task, done, total)

    def on_result(task, result):
        bars.close(task.key)
        _commit(store, task, result)
        bar.update(1)

    log.info("%d units on the %s executor (%d threads per unit)", len(tasks), executor.kind,
             executor.threads_per_unit)
    try:
        run_tasks(executor, tasks, prepare(), on_result, on_progress)
    except BaseException as exc:
        for key in started:
            if not store.unit_done(key):
                store.mark_run(key.split("/", 1)[1], status="failed", error=exc)
        log.error("stopped: %r", exc)
        raise
    finally:
        for key in list(bars.bars):
            bars.close(key)


def _train_grounding(spec, cfg, out_dir: str, shared, progress) -> dict:
    """Unit of the grounding study: one training run (see ``train_run``); runs on the executor."""
    data, vocab = shared
    start, run_dir = time.time(), os.path.join(out_dir, "runs", spec.run_id)
    results = train_run(spec, cfg, data, vocab, run_dir, progress=lambda epoch: progress(epoch, cfg.epochs))
    return _unit_result(start, [(e, os.path.join(run_dir, f"epoch{e}", "model.pt")) for e in results],
                        [{"epoch": e, "split": "val", "name": k, "value": v} for e, r in results.items()
                         for k, v in r.items()])


def run_grounding(cfg: GroundingStudyConfig, out_dir: str, progress: bool = True,
                  executor: Optional[ExecutorConfig] = None, force_new: bool = False) -> Dict:
    """Run (or resume) the grounding study in ``out_dir``; returns the analysis results. The
    training runs go to ``executor`` (default: the local pool); features and analysis run here.
    ``force_new``: start afresh, the existing store set aside (see ``_study``)."""
    from ..data import DemoCorpus
    from ..data.sources import demo_grounding_data

    with _study("grounding", cfg, out_dir, force_new) as store:
        specs = plan_runs(cfg)
        todo = [spec for spec in specs if not _units_done(store, f"train/{spec.run_id}", spec.run_id)]
        bar = _progress(len(specs) + 2, "grounding study", progress)
        data = vocab = None
        if todo or not store.unit_done("analysis") or not store.unit_done("features"):
            t0 = time.time()
            data, vocab = demo_grounding_data(DemoCorpus(cfg.num_scenes, cfg.corpus_seed),
                                              os.path.join(out_dir, "features"), max_target_len=cfg.max_target_len,
                                              progress=progress)
            if not store.unit_done("features"):
                store.complete_unit("features", "features", {"train": len(data["train"]), "val": len(data["val"]),
                                                             "test": len(data["test"]), "vocab": len(vocab)})
                log.info("features ready in %.1f s", time.time() - t0)
        bar.update(1 + len(specs) - len(todo))
        for spec in todo:
            store.mark_run(spec.run_id, labels={"setup": spec.setup, "noise": spec.noise, "seed": spec.seed},
                           status="pending")
        _run_units(store, [(f"train/{s.run_id}", functools.partial(_train_grounding, s, cfg, out_dir)) for s in todo],
                   bar, progress, executor or ExecutorConfig(), lambda: (data, vocab), "epoch")
        if store.unit_done("analysis"):
            result = store.unit("analysis")["payload"]
        else:
            candidates: Dict[str, Dict[str, float]] = {s: {} for s in cfg.setups}
            dirs = {}
            for spec in specs:
                for row in store.metrics(name="val_token_accuracy", run_id=spec.run_id):
                    mid = f"{spec.run_id}@{row['epoch']}"
                    candidates[spec.setup][mid] = row["value"]
                    dirs[mid] = os.path.join(out_dir, "runs", spec.run_id, f"epoch{row['epoch']}")
            res = analyse(candidates, dirs, data, vocab, cfg)
            result = _jsonable(res)
            models = res["models"]
            pairwise = [{"analysis": name, "model_a": models[i], "model_b": models[j], "value": float(res[name][i, j])}
                        for name in ("agreement", "kl") if name in res
                        for i in range(len(models)) for j in range(len(models)) if i != j]
            metrics = [{"name": f"{name}[{pair}]", "value": v, "split": "test"}
                       for pair, row in res.get("pair_table", {}).items() for name, v in row.items()]
            store.complete_unit("analysis", "analysis", result, pairwise=pairwise, metrics=metrics)
            log.info("analysis done: %s", json.dumps(result.get("pair_table", {})))
        bar.update(1)
        bar.close()
        return result


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def grounding_report(out_dir: str, to: Optional[str] = None) -> tuple:
    """Rebuild ``report.md`` / ``report.html`` of a finished or partial grounding run from its store
    (only read) into ``to`` (default ``out_dir``)."""
    from .report import Report, agreement_heatmap, distance_vs_agreement_scatter, silhouette_boxplot

    store = ResultStore(os.path.join(out_dir, "results.sqlite"), read_only=True)
    info = store.study_info()
    rep = Report("Grounded and Well-rounded: a reproduction on the demo corpus")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(info.get('config', {}))}`.")
    runs = store.runs()
    rep.add_heading("Training runs")
    rep.add_table(["run", "status", "best val token accuracy"],
                  [[r["run_id"], r["status"], max((m["value"] for m in store.metrics(name="val_token_accuracy",
                                                                                      run_id=r["run_id"])),
                                                  default=None)] for r in runs] or None)
    analysis = store.unit("analysis")
    res = analysis["payload"] if analysis else None
    rep.add_heading("Accuracy-matched populations")
    if res:
        rep.add_paragraph(f"Stopped because: {res['stopped_because']}; "
                          f"{len(next(iter(res['populations'].values())))} models per population.")
        rep.add_table(["size", "Kruskal-Wallis H", "p"], res["trace"])
        rep.add_heading("Agreement and KL between populations (test targets, teacher forcing)")
        pairs = sorted(res.get("pair_table", {}).items())
        from .report import Table
        ours = Table(["population pair", "mean agreement", "mean KL (nats / token)"],
                     [[k, v["agreement"], v["kl"]] for k, v in pairs])
        rep.add_reference("grounding", ours=ours)
        models = res["models"]
        if "agreement" in res:
            groups = [m.split("-")[0] for m in models]
            rep.add_figure(agreement_heatmap(np.array(res["agreement"]), models, groups=groups), "agreement",
                           "Pairwise argmax agreement of the matched models, grouped by setup")
        if "attention_distance" in res and len(res["attention_distance"]) >= 3:
            d = np.array(res["attention_distance"])
            mm = [k for k, m in enumerate(models) if m.startswith("multimodal")]
            kl = np.array(res["kl"])[mm][:, mm]
            iu = np.triu_indices(len(mm), 1)
            note = None
            if "mantel_p" in res.get("attention_vs_kl", {}):
                note = f"Mantel p = {res['attention_vs_kl']['mantel_p']:.3g}"
            rep.add_figure(distance_vs_agreement_scatter(d[iu], 0.5 * (kl + kl.T)[iu], note=note),
                           "attention_vs_kl", "Attention segment-share distance vs KL (multimodal models)")
        if "segment_shares" in res:
            shares = np.array(res["segment_shares"]).mean(0)
            rep.add_table(["source", "mean attention share"], [[s, v] for s, v in zip(("C", "P", "T"), shares)],
                          caption="Multimodal models: attention mass per source segment (reference PCT: "
                                  ".32 C / .30 P / .38 T)")
        if res.get("silhouette"):
            words = res["concreteness_words"]
            rep.add_heading("Concreteness: silhouettes of abstract vs concrete words")
            rep.add_paragraph(f"{len(words['abstract'])} abstract words ({', '.join(words['abstract'])}) and "
                              f"{len(words['concrete'])} concrete words ({', '.join(words['concrete'])}) of the "
                              "decoders' vocabulary, by the Brysbaert et al. (2014) norms; Euclidean silhouette.")
            for kind in ("input_embeddings", "hidden_states"):
                values = {s: [res["silhouette"][m][kind] for m in res["populations"][s]
                              if kind in res["silhouette"][m]] for s in res["populations"]}
                if any(values.values()):
                    rep.add_figure(silhouette_boxplot(values, title=f"Silhouette, {kind.replace('_', ' ')}"),
                                   f"silhouette_{kind}", f"Silhouette per population ({kind.replace('_', ' ')})")
                test = res.get("silhouette_tests", {}).get(kind)
                if test and "kruskal_p" in test:
                    rep.add_table(["test", "p"], [["Kruskal-Wallis across populations", test["kruskal_p"]]]
                                  + [[f"Mann-Whitney {k}", v] for k, v in test["mann_whitney"].items()],
                                  caption=f"Silhouettes ({kind.replace('_', ' ')}): population differences")
    else:
        rep.add_table(["population pair", "mean agreement"], None)
        rep.add_reference("grounding", ours=None)
    store.close()
    return rep.write(to or out_dir)


def _flava_unit(cell, cfg, out_dir: str, data, progress) -> dict:
    """Unit of the FLAVA ablation: one grid cell (see ``train_cell``); runs on the executor."""
    from .flava_ablation import cell_id, checkpoint_dir, train_cell

    start, cdir = time.time(), checkpoint_dir(out_dir, cell_id(*cell))
    res = train_cell(*cell, cfg, data, cdir, progress=progress)
    return _unit_result(start, [(int(res["step"]), os.path.join(cdir, "model.pt"))],
                        [{"split": "best", "name": k, "value": float(v)} for k, v in res.items()], res)


def run_flava(cfg, out_dir: str, progress: bool = True, executor: Optional[ExecutorConfig] = None,
              force_new: bool = False) -> List[dict]:
    """Run (or resume) the FLAVA ablation grid in ``out_dir`` (cells on ``executor``); returns one
    row per cell. ``force_new``: start afresh, the existing store set aside (see ``_study``)."""
    from .flava_ablation import cell_id, grid_rows, plan_cells, prepare

    with _study("flava-ablation", cfg, out_dir, force_new) as store:
        items = [(f"cell/{cell_id(*c)}", functools.partial(_flava_unit, c, cfg, out_dir)) for c in plan_cells(cfg)]
        with _progress(len(items), "flava ablation", progress) as bar:
            _run_units(store, items, bar, progress, executor or ExecutorConfig(), lambda: prepare(cfg))
        return grid_rows(store.metrics(split="best"))


def flava_report(out_dir: str, to: Optional[str] = None) -> tuple:
    """Rebuild the FLAVA ablation's report from its store (only read) into ``to`` (default ``out_dir``)."""
    from .flava_ablation import grid_rows
    from .report import Report, flava_grid_heatmap, flava_grid_table

    with ResultStore(os.path.join(out_dir, "results.sqlite"), read_only=True) as store:
        info = store.study_info()
        rows = grid_rows(store.metrics(split="best"))
    rep = Report("Acquiring linguistic knowledge from multimodal input: the ablation grid, small scale")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(info.get('config', {}))}`. Text: "
                      "shipped Multi30k English captions; images: demo scenes with their captions; BLiMP: the "
                      "shipped subset; PPPL on held-out Multi30k captions; best-PPPL checkpoint per cell.")
    grid = [{"text": r["text"], "images": r["images"], "blimp": r.get("blimp"), "pppl": r.get("pppl")} for r in rows]
    rep.add_reference("flava-ablation", ours=flava_grid_table(grid) if grid else None)
    if grid:
        rep.add_figure(flava_grid_heatmap(grid), "flava_grid", "BLiMP accuracy and pseudo-perplexity per cell")
    return rep.write(to or out_dir)


def _groundedbert_unit(variant: str, cfg, out_dir: str, data, progress) -> dict:
    """Unit of the GroundedBERT study: one variant (see ``run_variant``); runs on the executor."""
    from .groundedbert_study import HEAD_FILE, run_variant

    start, vdir = time.time(), os.path.join(out_dir, "variants", variant)
    res, files = run_variant(variant, cfg, data, vdir, progress=progress)
    return _unit_result(start, [(0, str(files["model.pt"].path))],
                        [{"split": "", "name": k, "value": float(v)} for k, v in res.items()],
                        {**res, "files": _file_records(out_dir, [files[HEAD_FILE]])})


def run_groundedbert(cfg, out_dir: str, progress: bool = True,
                     executor: Optional[ExecutorConfig] = None, force_new: bool = False) -> List[dict]:
    """Run (or resume) the GroundedBERT study in ``out_dir`` (variants on ``executor``); returns
    one row per variant. ``force_new``: start afresh, the existing store set aside (see ``_study``)."""
    from .groundedbert_study import prepare, variant_rows

    with _study("groundedbert", cfg, out_dir, force_new) as store:
        items = [(f"variant/{v}", functools.partial(_groundedbert_unit, v, cfg, out_dir)) for v in cfg.variants]
        with _progress(len(items), "groundedbert study", progress) as bar:
            _run_units(store, items, bar, progress, executor or ExecutorConfig(), lambda: prepare(cfg, out_dir))
        return variant_rows(store.metrics())


def groundedbert_report(out_dir: str, to: Optional[str] = None) -> tuple:
    """Rebuild the GroundedBERT study's report from its store (only read) into ``to`` (default ``out_dir``)."""
    from .groundedbert_study import variant_rows
    from .report import Report, Table

    with ResultStore(os.path.join(out_dir, "results.sqlite"), read_only=True) as store:
        info = store.study_info()
        rows = variant_rows(store.metrics())
    cfg = info.get("config", {})
    rep = Report("GroundedBERT: partial-OT grounding, small scale")
    rep.add_paragraph(f"Run directory `{out_dir}`; config: `{json.dumps(cfg)}`. Downstream task: "
                      f"{'`' + cfg.get('glue_dir') + '` (' + cfg.get('glue_task', '') + ')' if cfg.get('glue_dir') else 'the built-in SST-2-format demo task (vertical vs horizontal relation)'}.")
    ours = Table(["variant", "dev accuracy", "matching loss (first -> last)", "OT loss (last)",
                  "OT share of step time"],
                 [[r["variant"], r.get("dev_accuracy"),
                   f"{r['pretrain_match_first']:.3f} -> {r['pretrain_match_last']:.3f}" if "pretrain_match_last" in r
                   else "-", r.get("pretrain_ot_last", "-"), r.get("ot_share_of_step_time", "-")] for r in rows])
    rep.add_reference("groundedbert", ours=ours if rows else None)
    return rep.write(to or out_dir)
