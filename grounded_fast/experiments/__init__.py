"""Experiment runners: studies as resumable units of work, a SQLite result store, reports.

- :mod:`.studies`: one module per study (``grounding``, ``flava-ablation``, ``groundedbert``), each
  a :class:`~.studies.Study` found through the registry (``studies.available()``, ``studies.get``);
- :mod:`.runner`: ``run_study(study, config, out_dir)`` (resumable; SIGKILL-safe) and
  ``study_report(out_dir)``;
- :mod:`.store`: :class:`ResultStore` (schema in its docstring), export to CSV / Parquet;
- :mod:`.report`: Markdown + self-contained HTML reports with matplotlib figures, beside the
  reference values of the original studies (``reference_results.toml``).
Command line: ``grounded-fast run grounding --preset tiny``, ``grounded-fast report DIR``.
"""
from .grounding import GroundingStudyConfig, RunSpec, plan_runs
from .runner import run_study, study_report
from .store import ResultStore, StudyMismatchError
from .studies import Study, Unit, available, get

__all__ = ["GroundingStudyConfig", "RunSpec", "plan_runs", "run_study", "study_report", "Study", "Unit", "available",
           "get", "ResultStore", "StudyMismatchError"]
