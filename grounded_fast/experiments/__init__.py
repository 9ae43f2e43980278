"""Experiment runners: studies as resumable units of work, a SQLite result store, reports.

- :mod:`.grounding`: the "Grounded and Well-rounded" study (config, training units, analysis);
- :mod:`.runner`: ``run_grounding(config, out_dir)`` (resumable; SIGKILL-safe) and
  ``grounding_report(out_dir)``;
- :mod:`.store`: :class:`ResultStore` (schema in its docstring), export to CSV / Parquet;
- :mod:`.report`: Markdown + self-contained HTML reports with matplotlib figures, beside the
  reference values of the original studies (``reference_results.toml``).
Command line: ``grounded-fast run grounding --preset tiny``, ``grounded-fast report DIR``.
"""
from .grounding import GroundingStudyConfig, RunSpec, plan_runs
from .runner import grounding_report, run_grounding
from .store import ResultStore, StudyMismatchError

__all__ = ["GroundingStudyConfig", "RunSpec", "plan_runs", "run_grounding", "grounding_report", "ResultStore",
           "StudyMismatchError"]
