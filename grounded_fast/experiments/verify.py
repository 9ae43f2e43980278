"""Check a run directory against what it recorded: the store (SQLite integrity), the checkpoints
and the files units recorded (sha256 and size), every feature cache under it (each shard's
sha256 against its index) and every token file (its tokens and word counts against its record). Used by ``grounded-fast verify`` and, by default, ``grounded-fast report``.
Reads only; a rerun of the study recomputes whatever is found damaged."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .._atomic import check_file
from ..data.features import FeatureCache
from ..data.token_file import RECORD_SUFFIX, token_file_problems
from .store import ResultStore

__all__ = ["RunCheck", "check_run"]


@dataclasses.dataclass
class RunCheck:
    """``problems``: one line per damaged item (empty: healthy); ``checked``: how many items of each
    kind (checkpoints, files, shards) were checked."""
    problems: list[str]
    checked: dict

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        return f"{len(self.problems)} problem(s) in {counts}" if self.problems else f"ok: {counts} verified"


def feature_cache_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """The feature-cache directories under ``out_dir`` (those holding ``<key dir>/index.json``)."""
    return sorted({index.parent.parent for index in Path(out_dir).rglob("index.json")})


def check_run(out_dir: str | os.PathLike) -> RunCheck:
    """Check the run in ``out_dir`` (its ``results.sqlite`` must open: see ``ResultStore``)."""
    root = Path(out_dir)
    with ResultStore(root / "results.sqlite", read_only=True) as store:
        problems = store.integrity_check()
        checkpoints = len(store.checkpoints())
        files = 0
        for unit in store.units():
            for rel, rec in unit["payload"].get("files", {}).items():
                files += 1
                problem = check_file(root / rel, rec["sha256"], rec["size"])
                if problem:
                    problems.append(f"unit {unit['unit_id']}: {problem}")
    shards = 0
    for directory in feature_cache_dirs(root):
        found, ok = FeatureCache(directory, progress=False).problems()
        problems += found
        shards += ok + len(found)
    token_files = sorted(root.rglob("*.tokens" + RECORD_SUFFIX))
    for record in token_files:
        problems += token_file_problems(str(record))
    counts = {"checkpoints": checkpoints, "files": files, "feature shards": shards}
    return RunCheck(problems, {**counts, "token files": len(token_files)} if token_files else counts)
