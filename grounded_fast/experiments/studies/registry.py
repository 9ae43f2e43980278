"""The study registry: ``available()``, ``get(name)``, ``register(study)``; what a :class:`Study` is.

A study is a config class (with its presets), the units it plans, how one unit runs (on an
executor, from the shared inputs prepared once in the main process), the steps done in the main
process before and after the units (e.g. features, the analysis), its results and summary lines,
and its report. ``experiments.runner.run_study`` / ``study_report`` and the CLI work from these
alone, so a new study is one module that builds a :class:`Study` and registers it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type

from ...models.config import ModelConfig


@dataclass(frozen=True)
class Unit:
    """One independent unit of work: recorded in the store as ``'<kind>/<run_id>'``, its run row
    labelled with ``labels`` (JSON values, e.g. {'setup': 'P', 'noise': 0.1, 'seed': 2});
    ``spec`` is what the study's ``run_unit`` needs to run it (picklable)."""
    kind: str
    run_id: str
    spec: Any = None
    labels: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unit_id(self) -> str:
        return f"{self.kind}/{self.run_id}"


@dataclass(frozen=True)
class Step:
    """A unit done in the main process, before or after the independent units (skipped when the
    store records ``unit_id`` as done). ``run(store, cfg, out_dir, shared, device=device)`` (device:
    the run's ``torch.device``, where its computations go) returns the unit's record:
    ``{"payload": {...}, "metrics": [...], "pairwise": [...]}`` (each key optional), which the
    runner commits in one transaction (its payload gains ``device``: where it ran)."""
    unit_id: str
    run: Callable[..., Dict[str, Any]]


@dataclass(frozen=True)
class Study:
    """A study as the runner, the report and the CLI see it.

    name: as the CLI spells it (``grounded-fast run <name>``) and as the store records it.
    config_cls: its config (a :class:`ModelConfig` with ``presets``; ``check()`` before anything is written).
    plan(cfg) -> [Unit]: the independent units, in a fixed order.
    prepare(cfg, out_dir, progress, device=device) -> shared: the inputs every unit and step needs,
        computed once in the main process (only when something is left to do; feature extraction
        on ``device``) and shipped to the workers: CPU tensors (a pool worker's GPU is set after
        they arrive).
    run_unit(spec, cfg, out_dir, shared, progress, device=device) -> ``runner.unit_result(...)``:
        one unit, on the executor; a module-level function (pickled for the process pool and Ray).
        Its models and batches go to ``device`` (a ``torch.device``: cpu, cuda or cuda:N; the
        training forward passes under ``experiments.device.autocast(device)``), its checkpoints are
        saved from CPU state. It returns at least one checkpoint (a unit counts as done only while
        its checkpoints, and the files its payload records with ``runner.file_records``, verify);
        ``progress(done, total)`` feeds its bar. The runner adds ``device`` to its payload.
    results(store, cfg) -> what ``run_study`` returns (read from the store).
    summary(results) -> the lines the CLI prints after a run.
    report(store, out_dir) -> a ``report.Report`` of the run (the store is only read; partial runs
        give placeholders).
    before / after: :class:`Step` s done in the main process before / after the units.
    progress_unit: what a unit's progress counts (its bar's unit: 'epoch', 'step').
    """
    name: str
    config_cls: Type[ModelConfig]
    plan: Callable[[Any], List[Unit]]
    prepare: Callable[..., Any]
    run_unit: Callable[..., Dict[str, Any]]
    results: Callable[[Any, Any], Any]
    summary: Callable[[Any], List[str]]
    report: Callable[[Any, str], Any]
    before: Sequence[Step] = ()
    after: Sequence[Step] = ()
    progress_unit: str = "step"


_REGISTRY: Dict[str, Study] = {}


def register(study: Study) -> None:
    """Make ``study`` available to ``grounded-fast run`` / ``report`` and :func:`get` (a study of
    the same name is replaced)."""
    _REGISTRY[study.name] = study


def available() -> List[str]:
    """Names of the registered studies."""
    return sorted(_REGISTRY)


def get(name: Optional[str]) -> Study:
    """The registered study ``name``; ValueError naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown study {name!r}; available: {available()}")
    return _REGISTRY[name]


def presets() -> List[str]:
    """The presets of every registered study's config, sorted."""
    return sorted({p for s in _REGISTRY.values() for p in s.config_cls.presets})
