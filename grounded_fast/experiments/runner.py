"""Running a study resumably: units of work recorded in the result store, skipped when done.

``run_study(study, cfg, out_dir)`` runs any registered study (``studies/``: grounding = features,
one training run per grid point, analysis; flava-ablation = one unit per grid cell; groundedbert =
one unit per variant) and leaves in ``out_dir``: ``results.sqlite`` (the store), the study's files
(feature cache, checkpoints), ``run.log`` and ``run.lock`` (held while a run is going: a second run
on ``out_dir`` raises ``RunDirBusyError``); ``study_report(out_dir)`` rebuilds ``report.md`` /
``report.html`` from the store, which it only reads. Every unit commits its results in one transaction
after its files are completely written, so killing the process at any moment (SIGKILL included)
and rerunning the same command continues at the first unit not done: a half-done unit is redone
from its seed (deterministic), checkpoints and the other files of done units (recorded with their
sha256 in the unit's payload under ``files``) are verified before they count.
Training units run on an executor (``executors.py``: a local process pool by default, or Ray)
with identical results; only this process writes the store. The device (``device.py``: cpu,
cuda, cuda:N) is passed to the study's ``prepare``, ``run_unit`` and steps as ``device=``, and
every unit's payload records the one it ran on (``device``).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .._atomic import Written, check_file
from .._progress import progress_bar
from .device import describe, resolve_device
from .executors import ExecutorConfig, Task, run_tasks
from .run_lock import hold_run_lock
from .store import ResultStore, set_aside

log = logging.getLogger("grounded_fast.experiments")


def _logger(out_dir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(out_dir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


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
            bar = self.bars[task.key] = progress_bar(total, task.key.split("/", 1)[-1], True, self.unit,
                                                  every=max(1, total // 10), leave=False,
                                                  position=self.positions[task.key])
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
    cfg.check_runnable()
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


def unit_result(start: float, checkpoints: List[tuple], metrics: List[dict], payload: Optional[dict] = None) -> dict:
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
    _log_warnings(task.key, out["payload"])


def file_records(out_dir: str, written: List[Written]) -> Dict[str, dict]:
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
    """Independent units left to do (the caller skips those :func:`_units_done` accepts): ``items``
    are (unit_id '<kind>/<run_id>', work); ``prepare()`` (the shared inputs) runs only if some unit
    is left; ``work(data, progress) -> unit_result(...)`` runs on ``executor`` and each result is
    committed here as it arrives (``bar`` advanced). A run is marked 'running' when it first
    reports progress and 'failed' (with the error) when it raises."""
    tasks = [Task(uid, work) for uid, work in items]
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

    log.info("%d units on the %s executor (%d threads per unit, device %s)", len(tasks), executor.kind,
             executor.threads_per_unit, executor.device)
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


def run_study(study, cfg, out_dir: str, progress: bool = True, executor: Optional[ExecutorConfig] = None,
              force_new: bool = False, device=None) -> Any:
    """Run (or resume) ``study`` (a ``studies.Study``) with config ``cfg`` in ``out_dir``; returns
    ``study.results``. Its ``before`` steps, then its units (on ``executor``, default the local
    pool), then its ``after`` steps; whatever the store records as done (units with verified
    checkpoints and files) is skipped, and the shared inputs are prepared only when something is
    left. ``force_new``: start afresh, the existing store set aside (see ``_study``). ``device``:
    'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device (see ``device.resolve_device``; None: the
    executor's, by default the CPU); it replaces the executor's and reaches ``prepare``,
    ``run_unit`` and the steps."""
    executor = executor or ExecutorConfig()
    device = resolve_device(executor.device if device is None else device)
    executor = dataclasses.replace(executor, device=device)
    with _study(study.name, cfg, out_dir, force_new) as store:
        units = study.plan(cfg)
        todo = [u for u in units if not _units_done(store, u.unit_id, u.run_id)]
        steps = list(study.before) + list(study.after)
        bar = progress_bar(len(units) + len(steps), f"{study.name} study", progress)
        shared: List[Any] = []

        def prepared():
            if not shared:
                t0 = time.time()
                shared.append(_prepare(study, cfg, out_dir, progress, device))
                log.info("shared inputs ready in %.1f s", time.time() - t0)
            return shared[0]

        for step in study.before:
            _run_step(store, step, cfg, out_dir, prepared, bar, device)
        for u in todo:
            store.mark_run(u.run_id, labels=dict(u.labels), status="pending")
        bar.update(len(units) - len(todo))
        _run_units(store, [(u.unit_id, functools.partial(_counting_warnings, functools.partial(
                       _on_device, device, functools.partial(study.run_unit, u.spec, cfg, out_dir)))) for u in todo],
                   bar, progress, executor, prepared, study.progress_unit)
        for step in study.after:
            _run_step(store, step, cfg, out_dir, prepared, bar, device)
        bar.close()
        return study.results(store, cfg)


class StudyDataError(RuntimeError):
    """The study's inputs could not be prepared from its data (a missing or malformed file, a split
    without items, too little data for the config, an encoder directory that is not a model): one
    line saying what, raised before any unit trains; the traceback is in ``run.log``."""


def _prepare(study, cfg, out_dir: str, progress: bool, device):
    """``study.prepare(..., device=device)``, its data errors raised as :class:`StudyDataError`."""
    from ..models.encoders import EncoderNotAvailableError
    try:
        return study.prepare(cfg, out_dir, progress, device=device)
    except (ValueError, OSError, EncoderNotAvailableError) as exc:
        log.exception("preparing the study's inputs failed")
        raise StudyDataError(f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)) from exc


def _on_device(device, run_unit: Callable[..., dict], data, progress) -> dict:
    """``run_unit(data, progress, device=device)``, its payload recording the device (see
    :func:`_with_device`)."""
    return _with_device(run_unit(data, progress, device=device), device)


def _with_device(out: dict, device) -> dict:
    """A unit's record with ``payload['device']`` = ``describe(device)``, described in the process
    that ran it (a pool worker with a GPU of its own sees it as cuda:0)."""
    out["payload"] = {**out.get("payload", {}), "device": describe(device)}
    return out


def _run_step(store: ResultStore, step, cfg, out_dir: str, prepared: Callable[[], Any], bar, device) -> None:
    """A main-process step (``studies.Step``): run unless done, its record committed in one transaction."""
    if not store.unit_done(step.unit_id):
        t0 = time.time()
        data = prepared()
        out = _counting_warnings(lambda *_: _with_device(step.run(store, cfg, out_dir, data, device=device), device),
                                 None, None)
        store.complete_unit(step.unit_id, step.unit_id, jsonable(out.get("payload", {})),
                            metrics=out.get("metrics", ()), pairwise=out.get("pairwise", ()))
        log.info("%s done in %.1f s", step.unit_id, time.time() - t0)
        _log_warnings(step.unit_id, out.get("payload", {}))
    bar.update(1)


def _counting_warnings(work: Callable[[Any, Any], dict], data, progress) -> dict:
    """``work(data, progress)`` with the Python warnings it raises recorded instead of printed
    (expected ones, such as the OT loss not converging in some training steps, would flood the
    console): its result's payload gains ``warnings`` {kind: count} (see :func:`warning_kind`),
    which ``run.log``, the report and the CLI's last line show."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = work(data, progress)
    if caught:
        counts = collections.Counter(warning_kind(w.message, w.category) for w in caught)
        out["payload"] = {**out.get("payload", {}), "warnings": dict(sorted(counts.items()))}
    return out


_BRACKETED = re.compile(r"\[[^\]]*\]")


def warning_kind(message, category) -> str:
    """A warning as one counted kind: its category and message, with bracketed lists (e.g. the
    indices of the problems that did not converge) shown as ``[...]``."""
    return f"{category.__name__}: {_BRACKETED.sub('[...]', str(message))}"


def _log_warnings(unit_id: str, payload: dict) -> None:
    for kind, n in payload.get("warnings", {}).items():
        log.warning("%s: %d x %s", unit_id, n, kind)


def warning_counts(store: ResultStore) -> Dict[str, Dict[str, int]]:
    """{warning kind: {unit id: count}} over the units the store records."""
    table: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
    for unit in store.units():
        for kind, n in unit["payload"].get("warnings", {}).items():
            table[kind][unit["unit_id"]] = int(n)
    return dict(table)


def jsonable(x):
    """``x`` with numpy arrays and scalars as lists and numbers, tuples as lists, keys as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def study_report(out_dir: str, to: Optional[str] = None) -> tuple:
    """Rebuild ``report.md`` / ``report.html`` of a finished or partial run in ``out_dir`` from its
    store (only read) into ``to`` (default ``out_dir``), with the report of the study it records.
    Returns the two paths."""
    from .studies import get

    with ResultStore(os.path.join(out_dir, "results.sqlite"), read_only=True) as store:
        study = get(store.study_info().get("name"))
        rep = study.report(store, out_dir)
        counted = warning_counts(store)
    if counted:
        rep.add_heading("Warnings during the run")
        rep.add_paragraph("Python warnings raised inside the units, counted instead of printed (also in "
                          "`run.log`, one line per unit and kind).")
        rep.add_table(["warning", "units", "times"],
                      [[kind, len(units), sum(units.values())] for kind, units in sorted(counted.items())])
    return rep.write(to or out_dir)
