"""The embedded results database of an experiment study (SQLite, stdlib ``sqlite3``).

One study = one database file (by convention ``<results dir>/results.sqlite``). Everything a study
produces that later steps or reports need is recorded here: the study's identity and config, the
trained runs, their checkpoints (with integrity hashes), scalar metrics, pairwise model
comparisons, and the *units of work* the runner has completed, so that a rerun of the same command
skips what is already done.

Durability and resumption
-------------------------
* The database is opened in WAL mode with ``synchronous=FULL`` and ``foreign_keys=ON``. A new
  database is built beside its path and linked into place complete, so an existing empty (0-byte)
  or unreadable ``results.sqlite`` is always damage: opening it raises :class:`StoreError` (with
  what to do) instead of silently starting an empty study over it.
* ``ResultStore(path, read_only=True)`` only reads: an SQLite ``mode=ro`` connection, no WAL
  switch, no schema creation, nothing created when the file is absent; it works in a read-only
  directory and beside a run that is writing.
* Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``). :meth:`ResultStore.complete_unit`
  writes a unit's status row *and* all of its results (run updates, checkpoints, metrics, pairwise
  values) in a single transaction, so a process killed at any point (SIGKILL included) leaves either
  the whole unit or nothing of it; SQLite's WAL recovery discards an uncommitted tail on the next
  open. A unit counts as done only when its row says ``status = 'done'`` (:meth:`unit_done`).
* Checkpoint files are hashed (sha256 + size) when they are registered; :meth:`verify_checkpoint`,
  :meth:`latest_checkpoint` and :meth:`integrity_check` recompute the hash, so a truncated or
  corrupted file is never resumed from. Write checkpoint files with :func:`atomic_path` or
  :func:`grounded_fast._atomic.write_atomic` (temporary file, fsync, rename) *before* registering them.
* Several processes may open the same file (the runner's workers write through their own
  connections): writers wait up to ``timeout`` seconds for the lock. A store object re-opens its
  connection in a forked child and can be pickled (it re-opens by path). Within one process the
  object may be shared by threads (an internal lock serialises access).

Schema (version 2, kept in ``PRAGMA user_version``)
---------------------------------------------------
Timestamps are ISO-8601 UTC strings with milliseconds (``2024-05-01T12:00:00.123+00:00``).

``study`` — key/value metadata, one row per key
    ``key TEXT PRIMARY KEY``  one of: ``name`` (study name), ``config`` (canonical JSON of the
    study config, sorted keys), ``schema_version``, ``package_version`` and ``git_commit`` /
    ``git_dirty`` (of the code that created the study; NULL outside a git checkout of this project:
    see ``_git_info``),
    ``last_package_version`` / ``last_git_commit`` (of the code that last called ``begin_study``),
    ``created``, ``updated`` (times of creation / of the last ``begin_study``).
    ``value TEXT``  the value (NULL when unknown).

``runs`` — one row per trained model (or other unit result a study names a run)
    ``run_id TEXT PRIMARY KEY``  deterministic id chosen by the study, e.g. ``'P-noise0.1-seed2'``;
    ``labels TEXT NOT NULL DEFAULT '{}'``  JSON object of the study's labels of the run (grounding:
    ``{"noise": 0.1, "seed": 2, "setup": "P"}``; the FLAVA ablation: text, images, seed), sorted keys;
    ``status TEXT NOT NULL DEFAULT 'pending'``  one of ``pending | running | done | failed``;
    ``started TEXT``, ``finished TEXT``  timestamps; ``wall_seconds REAL``  training wall time;
    ``error TEXT``  the error of a failed run. A run row is created as ``pending`` on first mention
    (by ``mark_run``, or by a checkpoint or metric that names it).

``checkpoints`` — model checkpoints, ``PRIMARY KEY (run_id, epoch)``
    ``run_id TEXT NOT NULL`` → ``runs`` (ON DELETE CASCADE); ``epoch INTEGER NOT NULL`` (>= 0);
    ``path TEXT NOT NULL``  relative to the database's directory when the file lies below it
    (so a results directory can be moved), absolute otherwise; ``sha256 TEXT NOT NULL``  hex digest;
    ``size_bytes INTEGER NOT NULL``; ``created TEXT NOT NULL``  time of registration.

``metrics`` — scalar results
    ``metric_id INTEGER PRIMARY KEY``  row id (a replaced row gets a new id);
    ``run_id TEXT`` → ``runs`` (ON DELETE CASCADE), NULL for a study-level metric;
    ``epoch INTEGER``  (>= 0), NULL when not tied to an epoch (final / run-level value);
    ``split TEXT NOT NULL DEFAULT ''``  e.g. ``'train'``, ``'valid'``, ``'test'``;
    ``name TEXT NOT NULL``; ``value REAL NOT NULL``  always finite;
    ``unit_id TEXT`` → ``units`` (ON DELETE CASCADE), the unit that recorded it (NULL when recorded
    outside a unit); ``recorded TEXT NOT NULL``  time written.
    Unique on ``(run_id, epoch, split, name)`` with NULL equal to NULL (a unique index over
    ``IFNULL(run_id, ''), IFNULL(epoch, -1), split, name``): recording the same key again replaces
    the row instead of duplicating it.

``pairwise`` — model-pair comparisons, unique on ``(analysis, model_a, model_b)``
    ``pair_id INTEGER PRIMARY KEY``; ``analysis TEXT NOT NULL``  e.g. ``'agreement'``, ``'kl'``,
    ``'attention_segment_l2'``; ``population TEXT``  the population / group label of the pair
    (e.g. ``'C/P'``), may be NULL; ``model_a TEXT NOT NULL``, ``model_b TEXT NOT NULL``  model ids
    (usually run ids; order matters for asymmetric analyses such as KL(a‖b));
    ``value REAL NOT NULL``  finite; ``unit_id TEXT`` → ``units`` (ON DELETE CASCADE);
    ``recorded TEXT NOT NULL``.

``units`` — the runner's units of work
    ``unit_id TEXT PRIMARY KEY``  deterministic id chosen by the runner (e.g. ``'train:P-noise0.1-seed2'``);
    ``kind TEXT NOT NULL``  e.g. ``'train'``, ``'evaluate'``, ``'pairwise'``;
    ``status TEXT NOT NULL``  ``pending | running | done | failed``;
    ``payload TEXT NOT NULL DEFAULT '{}'``  JSON object with whatever the unit wants to remember;
    ``error TEXT``  the error of a failed unit; ``finished TEXT``  time of completion / failure.
    Re-completing a unit first deletes the metrics and pairwise rows it recorded before, so a unit's
    results are exactly those of its last completion.

Older schemas
-------------
Version 1 (grounded_fast before the study registry) had grounding's ``setup TEXT, noise REAL,
seed INTEGER`` columns in ``runs`` instead of ``labels``. Opening a version-1 database for writing
migrates it in place, in one transaction (the non-NULL ones of the three columns become the
``labels`` JSON, the columns are dropped, ``user_version`` and the study's ``schema_version``
become 2; a crash leaves it version 1).
A read-only open never writes: the database is copied into memory (``sqlite3`` backup API, one
consistent snapshot) and the same migration runs on the copy, so ``report`` / ``export`` /
``verify`` see version 2 whatever the file holds.

Export: :meth:`ResultStore.export` writes one file per table (``<table>.csv`` or
``<table>.parquet``), NULL as an empty CSV field, floats with ``repr`` precision (exact round trip).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .._atomic import atomic_path, check_file, fsync_dir, sha256_file, temp_name

__all__ = [
    "ResultStore", "StoreError", "StudyMismatchError", "atomic_path", "set_aside",
    "SCHEMA_VERSION", "STATUSES", "TABLES",
]

SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed")
TABLES = ("study", "runs", "checkpoints", "metrics", "pairwise", "units")

_STATUS_CHECK = "CHECK (status IN ('pending', 'running', 'done', 'failed'))"
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS study (
        key TEXT PRIMARY KEY,
        value TEXT
    )""",
    f"""CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY CHECK (run_id <> ''),
        labels TEXT NOT NULL DEFAULT '{{}}',
        status TEXT NOT NULL DEFAULT 'pending' {_STATUS_CHECK},
        started TEXT,
        finished TEXT,
        wall_seconds REAL,
        error TEXT
    )""",
    f"""CREATE TABLE IF NOT EXISTS units (
        unit_id TEXT PRIMARY KEY CHECK (unit_id <> ''),
        kind TEXT NOT NULL,
        status TEXT NOT NULL {_STATUS_CHECK},
        payload TEXT NOT NULL DEFAULT '{{}}',
        error TEXT,
        finished TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL CHECK (epoch >= 0),
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (run_id, epoch)
    )""",
    """CREATE TABLE IF NOT EXISTS metrics (
        metric_id INTEGER PRIMARY KEY,
        run_id TEXT REFERENCES runs(run_id) ON DELETE CASCADE,
        epoch INTEGER CHECK (epoch IS NULL OR epoch >= 0),
        split TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL CHECK (name <> ''),
        value REAL NOT NULL,
        unit_id TEXT REFERENCES units(unit_id) ON DELETE CASCADE,
        recorded TEXT NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS metrics_key
        ON metrics (IFNULL(run_id, ''), IFNULL(epoch, -1), split, name)""",
    "CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, split)",
    "CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id)",
    "CREATE INDEX IF NOT EXISTS metrics_unit ON metrics (unit_id)",
    """CREATE TABLE IF NOT EXISTS pairwise (
        pair_id INTEGER PRIMARY KEY,
        analysis TEXT NOT NULL CHECK (analysis <> ''),
        population TEXT,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        value REAL NOT NULL,
        unit_id TEXT REFERENCES units(unit_id) ON DELETE CASCADE,
        recorded TEXT NOT NULL,
        UNIQUE (analysis, model_a, model_b)
    )""",
    "CREATE INDEX IF NOT EXISTS pairwise_unit ON pairwise (unit_id)",
    "CREATE INDEX IF NOT EXISTS units_kind ON units (kind, status)",
]
_RUNS_V1_LABELS = ("setup", "noise", "seed")   # version 1's grounding-specific columns of ``runs``


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a version-1 database to version 2 inside the caller's transaction, foreign keys off
    (SQLite's table-rebuild procedure: the new ``runs`` replaces the old one, whose dropping must
    not cascade to the checkpoints and metrics that refer to it)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
        return
    new_runs = _SCHEMA[1].replace("IF NOT EXISTS runs", "runs_v2")
    conn.execute(new_runs)
    rows = conn.execute(f"SELECT run_id, {', '.join(_RUNS_V1_LABELS)}, status, started, finished, wall_seconds, "
                        "error FROM runs").fetchall()
    conn.executemany(
        "INSERT INTO runs_v2(run_id, labels, status, started, finished, wall_seconds, error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r[0], _dumps({k: v for k, v in zip(_RUNS_V1_LABELS, r[1:4]) if v is not None}, "labels")) + tuple(r[4:])
         for r in rows])
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise StoreError(f"migrating the results database to schema version {SCHEMA_VERSION}: "
                         f"{len(broken)} row(s) refer to missing rows")
    conn.execute("UPDATE study SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


_ORDER = {"study": "key", "runs": "run_id", "checkpoints": "run_id, epoch", "metrics": "metric_id",
          "pairwise": "pair_id", "units": "unit_id"}
_RUN_FIELDS = ("labels", "status", "started", "finished", "wall_seconds", "error")
_METRIC_KEYS = frozenset({"run_id", "epoch", "split", "name", "value"})
_PAIR_KEYS = frozenset({"analysis", "population", "model_a", "model_b", "value"})
_REPO_ROOT = Path(__file__).resolve().parents[2]   # the checkout holding the package, when it is one
_GIT_TIMEOUT_S = 5.0                               # all git commands of one _git_info call together


class StoreError(RuntimeError):
    """The database cannot be used as asked (not a results database, newer schema, ...)."""


class StudyMismatchError(ValueError):
    """``begin_study`` on a database that holds another study or an incompatible config."""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(obj: Any, where: str = "config") -> Any:
    """Convert a config into plain JSON types (dicts with str keys, lists, str, numbers, bool, None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v, where) for v in obj)
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} value {obj!r} cannot be stored as JSON")


def _dumps(obj: Any, where: str) -> str:
    return json.dumps(_jsonable(obj, where), sort_keys=True, separators=(",", ":"))


def _same(a: Any, b: Any) -> bool:
    """Equality for config values: 3 == 3.0, NaN == NaN, but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


_MISSING = object()


def _config_diffs(stored: Any, given: Any, ignore: Sequence[str], prefix: str = "") -> list[str]:
    """Dotted keys (with 'stored ..., requested ...') where two configs differ."""
    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in ignore)

    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for k in sorted(set(stored) | set(given)):
            key = f"{prefix}.{k}" if prefix else k
            if ignored(key):
                continue
            out += _config_diffs(stored.get(k, _MISSING), given.get(k, _MISSING), ignore, key)
        return out
    if stored is _MISSING or given is _MISSING or not _same(stored, given):
        def show(v: Any) -> str:
            return "(absent)" if v is _MISSING else json.dumps(v)
        return [f"'{prefix or '<config>'}' (stored {show(stored)}, requested {show(given)})"]
    return []


def _finite(value: Any, what: str) -> float:
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{what}: value must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: value must be a scalar number, got {type(value).__name__} ({e})") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: non-finite value {v!r}; the store records finite numbers only "
                         "(record the failure instead, e.g. as a failed unit or a count metric)")
    return v


def _opt_str(value: Any, what: str, allow_empty: bool = True) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (not allow_empty and not value):
        raise TypeError(f"{what} must be a {'non-empty ' if not allow_empty else ''}string, got {value!r}")
    return value


def _req_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _opt_epoch(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TypeError(f"{what}: epoch must be a non-negative integer or None, got {value!r}")
    return int(value)


def _package_version() -> str | None:
    mod = sys.modules.get("grounded_fast")
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    try:
        from importlib.metadata import version
        return version("grounded_fast")
    except Exception:
        return None


def _is_project_checkout(root: Path) -> bool:
    """Whether ``root`` looks like a git checkout of this project (``.git`` and this project's
    ``pyproject.toml``); reads two files, runs nothing."""
    try:
        from .._toml import tomllib
        if not (root / ".git").exists():
            return False
        with open(root / "pyproject.toml", "rb") as f:
            return tomllib.load(f).get("project", {}).get("name") in ("grounded_fast", "grounded-fast")
    except Exception:
        return False


def _git_info(root: Path | None = None) -> tuple[str | None, str | None]:
    """(HEAD commit, 'true' / 'false': tracked files modified) of this project's checkout at ``root``
    (default: the one holding this package), or (None, None).

    Git runs only when ``root`` is a checkout of this project (:func:`_is_project_checkout`) that git
    reports as its work tree's top level: an installed package records its version only. It runs
    read-only (``--no-optional-locks``: ``git status`` does not refresh the index file), without the
    user's ``GIT_*`` variables, within ``_GIT_TIMEOUT_S`` seconds in all; any failure (git missing, a
    timeout, not a repository, "dubious ownership", ...) gives (None, None): never raises.
    """
    root = _REPO_ROOT if root is None else Path(root)
    try:
        git = shutil.which("git")
        if git is None or not _is_project_checkout(root):
            return None, None
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}   # no GIT_DIR redirect
        env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        deadline = time.monotonic() + _GIT_TIMEOUT_S

        def run(*args: str) -> subprocess.CompletedProcess:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(args, _GIT_TIMEOUT_S)
            return subprocess.run([git, "--no-optional-locks", "-c", "core.fsmonitor=false", "-C", str(root), *args],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=left, env=env)

        out = run("rev-parse", "--show-toplevel", "HEAD")
        lines = out.stdout.decode("utf-8", "replace").splitlines()
        if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
            return None, None
        st = run("status", "--porcelain", "--untracked-files=no")
        dirty = None if st.returncode != 0 else ("true" if st.stdout.strip() else "false")
        return lines[1].strip(), dirty
    except Exception:
        return None, None


# ----------------------------------------------------------------------------------------------
# the store
# ----------------------------------------------------------------------------------------------

def _check_row_keys(row: Any, keys: frozenset, kind: str) -> None:
    """TypeError unless ``row`` is a mapping whose keys are all in ``keys``."""
    if not isinstance(row, Mapping):
        raise TypeError(f"{kind} rows must be mappings, got {row!r}")
    unknown = set(row) - keys
    if unknown:
        raise TypeError(f"{kind} row {dict(row)!r}: unknown key(s) {sorted(unknown)}; known: {sorted(keys)}")


def set_aside(path: str | os.PathLike) -> Path | None:
    """Rename the results database at ``path`` (and its ``-wal`` / ``-shm`` files) to
    ``<name>.set-aside-<UTC time>``, so that a fresh store can start there; nothing is deleted.
    Returns the new name of the database, or None when there was none. The caller holds the run lock."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.set-aside-{stamp}")
    for suffix in ("-wal", "-shm", ""):  # the database last: a crash leaves it in place, with its log
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{target}{suffix}")
    fsync_dir(path.parent)
    return target


class ResultStore:
    """A study's results database (see the module docstring for the schema).

    Args:
        path: the database file (created with its parent directories if absent), or ``':memory:'``.
        timeout: seconds a writer waits for another connection's lock before failing.
        synchronous: SQLite ``synchronous`` level; ``'FULL'`` (default) makes every committed unit
            survive power loss too, ``'NORMAL'`` only process crashes.
        read_only: open an existing database for reading only (see the module docstring); writes
            raise :class:`StoreError`.

    Use as a context manager (``with ResultStore(p) as store: ...``) or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0, synchronous: str = "FULL",
                 read_only: bool = False):
        self.memory = os.fspath(path) == ":memory:"
        self.path = Path(path) if not self.memory else None
        self.timeout = float(timeout)
        self.read_only = bool(read_only)
        if self.read_only and self.memory:
            raise ValueError("read_only needs a database file, not ':memory:'")
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self._dir = self.path.resolve().parent if self.path is not None else None
        self._conn: sqlite3.Connection | None = None
        self._orphans: list[sqlite3.Connection] = []  # connections inherited over fork: never used
        self._closed = False
        self._connect()

    # -- connection management ------------------------------------------------------------------
    def _connect(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._depth = 0
        if self.read_only:
            self._conn = self._open_read_only()
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._refuse_empty_file()
            if not self.path.exists():
                self._create_file()
        self._conn = self._open(":memory:" if self.memory else str(self.path))

    def _open(self, target: str) -> sqlite3.Connection:
        """A read-write connection to ``target`` in WAL mode, with the schema created or checked."""
        conn = sqlite3.connect(target, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            self.journal_mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
            self._ensure_schema()
            return conn
        except BaseException as e:
            conn.close()
            self._conn = None
            if isinstance(e, sqlite3.OperationalError):
                if "locked" in str(e):
                    raise
                raise StoreError(f"{target} cannot be opened for writing ({e}): check that its directory "
                                 "is writable (to only read it, open it with read_only=True)") from e
            if isinstance(e, sqlite3.DatabaseError):
                raise StoreError(self._damaged(e)) from e
            raise

    def _create_file(self) -> None:
        """Build an empty results database beside ``self.path`` and link it into place complete
        (a process killed meanwhile leaves no half-made file; a concurrent creator's file wins)."""
        assert self.path is not None
        tmp = temp_name(self.path)
        try:
            self._open(str(tmp)).close()
            self._conn = None
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system
                if not self.path.exists():
                    os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _refuse_empty_file(self) -> None:
        assert self.path is not None
        with contextlib.suppress(OSError):
            if self.path.stat().st_size == 0:
                raise StoreError(self._damaged("it is empty: 0 bytes"))

    def _damaged(self, why: Any) -> str:
        return (f"{self.path if self.path is not None else ':memory:'} cannot be opened as a results "
                f"database ({why}): restore it from a backup, or start the study afresh with "
                "`grounded-fast run ... --force-new` (force_new=True in Python; the file is kept, renamed, "
                "and every unit is recomputed)")

    def _open_read_only(self) -> sqlite3.Connection:
        """A ``mode=ro`` connection to the existing database; in a read-only directory where SQLite
        cannot create its shared-memory file, ``immutable=1`` when no write-ahead log is pending."""
        assert self.path is not None
        if not self.path.is_file():
            raise StoreError(f"no results database at {self.path}")
        self._refuse_empty_file()
        uri = self.path.resolve().as_uri()
        try:
            conn = self._read_only_connection(f"{uri}?mode=ro")
        except sqlite3.OperationalError as e:
            wal = Path(f"{self.path}-wal")
            try:
                if "locked" in str(e) or (wal.exists() and wal.stat().st_size > 0):
                    raise
                conn = self._read_only_connection(f"{uri}?immutable=1")
            except sqlite3.OperationalError:
                raise StoreError(f"{self.path} cannot be read ({e}); if its directory is read-only, copy "
                                 "the run directory somewhere writable and read the copy") from e
        self.journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn = self._migrated_copy(conn)
        return conn

    def _migrated_copy(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """An in-memory copy of an older-schema database (``conn``, closed here), migrated: a
        read-only open sees the current schema and the file is never written."""
        copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            conn.backup(copy)
            copy.execute("BEGIN IMMEDIATE")
            _migrate(copy)
            copy.execute("COMMIT")
        except BaseException:
            copy.close()
            raise
        finally:
            conn.close()
        return copy

    def _read_only_connection(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError):  # cannot open or lock: the caller decides
                raise
            raise StoreError(self._damaged(e)) from e
        problem = None
        if version > SCHEMA_VERSION:
            problem = (f"schema version {version} is newer than this grounded_fast understands "
                       f"({SCHEMA_VERSION}); upgrade the package")
        elif version == 0 or not set(TABLES) <= tables:
            problem = f"{self.path} is an SQLite database but not a grounded_fast results database"
        if problem:
            conn.close()
            raise StoreError(problem)
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the ResultStore is closed")
        if self._pid != os.getpid():  # forked child: never touch the parent's connection
            if self._conn is not None:
                self._orphans.append(self._conn)
            self._conn = None
            self._connect()
        assert self._conn is not None
        return self._conn

    def _ensure_schema(self) -> None:
        """Create the schema in a new database, migrate an older one (one transaction, see the
        module docstring), refuse a newer one or a foreign SQLite file."""
        conn = self._connection()
        if conn.execute("PRAGMA user_version").fetchone()[0] == 1:
            conn.execute("PRAGMA foreign_keys=OFF")   # outside a transaction only; see _migrate
            try:
                with self.transaction() as c:
                    _migrate(c)
            finally:
                conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"schema version {version} is newer than this grounded_fast "
                                 f"understands ({SCHEMA_VERSION}); upgrade the package")
            if version == 0:
                others = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if others:
                    raise StoreError("the file is an SQLite database but not a grounded_fast results "
                                     "database (it has tables and no schema version)")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        self._closed = True

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": ":memory:" if self.memory else os.fspath(self.path), "timeout": self.timeout,
                "synchronous": self.synchronous, "read_only": self.read_only}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], timeout=state["timeout"], synchronous=state["synchronous"],
                      read_only=state.get("read_only", False))

    def __repr__(self) -> str:
        return f"ResultStore({'memory' if self.memory else str(self.path)!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on normal exit, rolled back on error.

        Nested ``transaction()`` blocks join the outermost one. Public write methods use it, so a
        caller can group several of them into one atomic step.
        """
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only: open it without read_only=True to write")
        conn = self._connection()
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: all reads inside see one consistent state of the database."""
        conn = self._connection()
        with self._lock:
            if self._depth or conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._snapshot() as conn:
            cur = conn.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- study ----------------------------------------------------------------------------------
    def begin_study(self, name: str, config: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> dict:
        """Create the study record, or check that the database holds this very study (idempotent).

        Args:
            name: the study name.
            config: the study config (JSON-able: dicts, lists, numbers, strings, paths, dataclasses).
            ignore: dotted config keys allowed to differ from the stored config (settings that do not
                change results, e.g. ``'workers'`` or ``'device'``); the stored config is kept.

        Returns:
            :meth:`study_info` after the call.

        Raises:
            StudyMismatchError: the database holds another study name, or a config that differs at a
                key not in ``ignore`` (the message names every differing key).
        """
        name = _req_str(name, "study name")
        cfg = json.loads(_dumps(config, "config"))
        if not isinstance(cfg, dict):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        version = _package_version()
        commit, dirty = _git_info()
        now = _now()
        with self.transaction() as conn:
            stored = dict(conn.execute("SELECT key, value FROM study").fetchall())
            if "name" not in stored:
                rows = {"name": name, "config": _dumps(cfg, "config"), "schema_version": str(SCHEMA_VERSION),
                        "package_version": version, "git_commit": commit, "git_dirty": dirty,
                        "created": now}
            else:
                where = "an in-memory database" if self.memory else str(self.path)
                if stored["name"] != name:
                    raise StudyMismatchError(
                        f"{where} holds study {stored['name']!r}, not {name!r}; use another results "
                        "directory for a different study")
                diffs = _config_diffs(json.loads(stored.get("config") or "{}"), cfg, ignore)
                if diffs:
                    shown = "; ".join(diffs[:10]) + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
                    raise StudyMismatchError(
                        f"{where} holds study {name!r} with an incompatible config; it differs at {shown}. "
                        "Resuming would mix results of different configs: use a new results directory, "
                        "or pass ignore=[...] for keys that do not affect results")
                rows = {}
            rows.update({"updated": now, "last_package_version": version, "last_git_commit": commit})
            conn.executemany("INSERT INTO study(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", list(rows.items()))
        return self.study_info()

    def study_info(self) -> dict:
        """The ``study`` table as a dict (``config`` decoded); empty before :meth:`begin_study`."""
        info = {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM study")}
        if info.get("config") is not None:
            info["config"] = json.loads(info["config"])
        return info

    # -- units ----------------------------------------------------------------------------------
    def unit_done(self, unit_id: str) -> bool:
        """Whether the unit was completed (its results are then all recorded)."""
        rows = self._rows("SELECT status FROM units WHERE unit_id = ?", (unit_id,))
        return bool(rows) and rows[0]["status"] == "done"

    def done_units(self, kind: str | None = None) -> set[str]:
        """Ids of the completed units (of one kind, or all)."""
        sql, params = "SELECT unit_id FROM units WHERE status = 'done'", []
        if kind is not None:
            sql, params = sql + " AND kind = ?", [kind]
        return {r["unit_id"] for r in self._rows(sql, params)}

    def complete_unit(self, unit_id: str, kind: str, payload: Mapping[str, Any] | None = None, *,
                      metrics: Iterable[Mapping[str, Any]] = (),
                      pairwise: Iterable[Mapping[str, Any]] = (),
                      checkpoints: Iterable[Mapping[str, Any] | Sequence] = (),
                      runs: Iterable[Mapping[str, Any]] = ()) -> None:
        """Record a finished unit of work and all of its results in ONE transaction.

        Everything is validated (and checkpoint files hashed) before the transaction starts; if any
        row is invalid or any write fails, nothing of the unit is recorded and it stays not done.

        Args:
            unit_id: the unit's deterministic id. Completing it again replaces its previous results.
            kind: the unit's kind (``'train'``, ``'evaluate'``, ...).
            payload: a JSON-able dict stored with the unit (returned by :meth:`unit`).
            metrics: rows for :meth:`record_metrics`.
            pairwise: rows for :meth:`record_pairwise`.
            checkpoints: ``{'run_id', 'epoch', 'path'}`` mappings or ``(run_id, epoch, path)`` tuples.
            runs: ``{'run_id': ..., **fields}`` updates as for :meth:`mark_run` (e.g. status 'done').
        """
        unit_id = _req_str(unit_id, "unit_id")
        kind = _req_str(kind, "kind")
        payload_json = _dumps(payload if payload is not None else {}, "payload")
        if not payload_json.startswith("{"):
            raise TypeError("payload must be a mapping")
        metric_rows = [self._metric_row(r) for r in metrics]
        pair_rows = [self._pair_row(r) for r in pairwise]
        run_rows = [self._run_update(dict(r)) for r in runs]
        ckpt_rows = [self._checkpoint_row(*self._checkpoint_args(c)) for c in checkpoints]
        now = _now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO units(unit_id, kind, status, payload, error, finished) "
                "VALUES (?, ?, 'done', ?, NULL, ?) ON CONFLICT(unit_id) DO UPDATE SET kind = excluded.kind, "
                "status = 'done', payload = excluded.payload, error = NULL, finished = excluded.finished",
                (unit_id, kind, payload_json, now))
            conn.execute("DELETE FROM metrics WHERE unit_id = ?", (unit_id,))
            conn.execute("DELETE FROM pairwise WHERE unit_id = ?", (unit_id,))
            for upd in run_rows:
                self._apply_run_update(conn, upd)
            self._insert_checkpoints(conn, ckpt_rows)
            self._insert_metrics(conn, metric_rows, unit_id, now)
            self._insert_pairwise(conn, pair_rows, unit_id, now)

    def fail_unit(self, unit_id: str, kind: str, error: str | BaseException,
                  payload: Mapping[str, Any] | None = None) -> None:
        """Record that a unit failed (it stays not done, so a rerun retries it)."""
        unit_id = _req_str(unit_id, "unit_id")
        kind = _req_str(kind, "kind")
        payload_json = _dumps(payload if payload is not None else {}, "payload")
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO units(unit_id, kind, status, payload, error, finished) "
                "VALUES (?, ?, 'failed', ?, ?, ?) ON CONFLICT(unit_id) DO UPDATE SET kind = excluded.kind, "
                "status = 'failed', payload = excluded.payload, error = excluded.error, "
                "finished = excluded.finished",
                (unit_id, kind, payload_json, _error_text(error), _now()))

    def forget_unit(self, unit_id: str) -> bool:
        """Delete a unit and the metrics / pairwise rows it recorded (to force a redo). True if it existed."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM units WHERE unit_id = ?", (unit_id,)).rowcount > 0

    def unit(self, unit_id: str) -> dict | None:
        """The unit's row (``payload`` decoded), or None."""
        rows = self.units(unit_id=unit_id)
        return rows[0] if rows else None

    def units(self, kind: str | None = None, status: str | None = None, *, unit_id: str | None = None) -> list[dict]:
        """Unit rows (``payload`` decoded), filtered by kind / status."""
        rows = self._select("units", {"kind": kind, "status": status, "unit_id": unit_id})
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows

    # -- runs -----------------------------------------------------------------------------------
    def mark_run(self, run_id: str, **fields: Any) -> dict:
        """Create or update a run row; returns the row.

        Fields: ``labels`` (a mapping of the study's labels of the run, JSON values; replaces the
        stored labels), ``status, started, finished, wall_seconds, error`` (others raise).
        ``status='running'`` stamps ``started`` (and clears ``finished``, ``error``,
        ``wall_seconds``) unless given; ``'done'`` / ``'failed'`` stamp ``finished`` unless given.
        ``error`` may be an exception.
        """
        upd = self._run_update({"run_id": run_id, **fields})
        with self.transaction() as conn:
            self._apply_run_update(conn, upd)
        row = self.run(upd["run_id"])
        assert row is not None
        return row

    def run(self, run_id: str) -> dict | None:
        """The run's row (``labels`` decoded), or None."""
        rows = self.runs(run_id=run_id)
        return rows[0] if rows else None

    def runs(self, status: str | None = None, labels: Mapping[str, Any] | None = None, *,
             run_id: str | None = None) -> list[dict]:
        """Run rows (``labels`` decoded to a dict), ordered by run_id, filtered by status and by
        ``labels`` (rows whose labels hold every given key with an equal value)."""
        rows = self._select("runs", {"status": status, "run_id": run_id})
        for r in rows:
            r["labels"] = json.loads(r["labels"])
        if labels:
            rows = [r for r in rows if all(k in r["labels"] and _same(r["labels"][k], v) for k, v in labels.items())]
        return rows

    @staticmethod
    def _run_update(fields: dict) -> dict:
        run_id = _req_str(fields.pop("run_id", None), "run_id")
        unknown = set(fields) - set(_RUN_FIELDS)
        if unknown:
            raise TypeError(f"run {run_id!r}: unknown run field(s) {sorted(unknown)}; known: {list(_RUN_FIELDS)}")
        out: dict[str, Any] = {"run_id": run_id}
        for k, v in fields.items():
            what = f"run {run_id!r} field {k!r}"
            if v is None:
                out[k] = None
            elif k == "status":
                if v not in STATUSES:
                    raise ValueError(f"{what}: status must be one of {STATUSES}, got {v!r}")
                out[k] = v
            elif k == "wall_seconds":
                out[k] = _finite(v, what)
                if out[k] < 0:
                    raise ValueError(f"{what}: negative wall time {v!r}")
            elif k == "labels":
                if not isinstance(v, Mapping):
                    raise TypeError(f"{what}: labels must be a mapping of names to JSON values, got {v!r}")
                out[k] = _dumps(v, f"run {run_id!r} labels")
            elif k in ("started", "finished"):
                out[k] = v.isoformat(timespec="milliseconds") if isinstance(v, _dt.datetime) else _opt_str(v, what)
            elif k == "error":
                out[k] = _error_text(v)
            else:
                out[k] = _opt_str(v, what)
        status = out.get("status")
        if status == "running":
            out.setdefault("started", _now())
            for k in ("finished", "error", "wall_seconds"):
                out.setdefault(k, None)
        elif status in ("done", "failed"):
            out.setdefault("finished", _now())
        return out

    @staticmethod
    def _apply_run_update(conn: sqlite3.Connection, upd: dict) -> None:
        cols = [c for c in upd if c != "run_id"]  # whitelisted by _run_update
        if not cols:
            conn.execute("INSERT OR IGNORE INTO runs(run_id) VALUES (?)", (upd["run_id"],))
            return
        conn.execute(
            f"INSERT INTO runs(run_id, {', '.join(cols)}) VALUES (?{', ?' * len(cols)}) "
            f"ON CONFLICT(run_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols)}",
            [upd["run_id"]] + [upd[c] for c in cols])

    # -- checkpoints ----------------------------------------------------------------------------
    def add_checkpoint(self, run_id: str, epoch: int, path: str | os.PathLike) -> dict:
        """Register a checkpoint file (sha256 and size computed now); replaces the run/epoch's entry.

        Write the file completely (e.g. with :func:`atomic_path`) before registering it.
        Returns the stored row (``path`` absolute).
        """
        row = self._checkpoint_row(run_id, epoch, path)
        with self.transaction() as conn:
            self._insert_checkpoints(conn, [row])
        return self._checkpoint_dict(dict(zip(("run_id", "epoch", "path", "sha256", "size_bytes", "created"), row)))

    def checkpoints(self, run_id: str | None = None) -> list[dict]:
        """Checkpoint rows (``path`` resolved to an absolute path), ordered by run and epoch."""
        return [self._checkpoint_dict(r) for r in self._select("checkpoints", {"run_id": run_id})]

    def verify_checkpoint(self, run_id: str, epoch: int) -> bool:
        """Recompute the checkpoint's sha256: False if unregistered, missing, truncated or corrupted."""
        rows = self._select("checkpoints", {"run_id": run_id, "epoch": epoch})
        return bool(rows) and self._check_file(rows[0]) is None

    def latest_checkpoint(self, run_id: str, *, verify: bool = True) -> dict | None:
        """The highest-epoch checkpoint of a run that passes verification (or None): resume from it."""
        for row in reversed(self._select("checkpoints", {"run_id": run_id})):
            if not verify or self._check_file(row) is None:
                return self._checkpoint_dict(row)
        return None

    def _checkpoint_args(self, c: Mapping[str, Any] | Sequence) -> tuple:
        if isinstance(c, Mapping):
            unknown = set(c) - {"run_id", "epoch", "path"}
            if unknown:
                raise TypeError(f"checkpoint: unknown key(s) {sorted(unknown)}")
            return c.get("run_id"), c.get("epoch"), c.get("path")
        if isinstance(c, (str, bytes)) or len(c) != 3:
            raise TypeError(f"checkpoint must be a mapping or a (run_id, epoch, path) tuple, got {c!r}")
        return tuple(c)

    def _checkpoint_row(self, run_id: str, epoch: int, path: str | os.PathLike) -> tuple:
        run_id = _req_str(run_id, "checkpoint run_id")
        ep = _opt_epoch(epoch, f"checkpoint of {run_id!r}")
        if ep is None:
            raise TypeError(f"checkpoint of {run_id!r}: epoch is required")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint of {run_id!r} epoch {ep}: no file at {p}")
        sha, size = sha256_file(p)
        return run_id, ep, self._store_path(p), sha, size, _now()

    @staticmethod
    def _insert_checkpoints(conn: sqlite3.Connection, rows: list[tuple]) -> None:
        if not rows:
            return
        conn.executemany("INSERT OR IGNORE INTO runs(run_id) VALUES (?)", [(r[0],) for r in rows])
        conn.executemany(
            "INSERT INTO checkpoints(run_id, epoch, path, sha256, size_bytes, created) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(run_id, epoch) DO UPDATE SET path = excluded.path, sha256 = excluded.sha256, "
            "size_bytes = excluded.size_bytes, created = excluded.created", rows)

    def _store_path(self, p: Path) -> str:
        rp = p.resolve()
        if self._dir is not None:
            try:
                return rp.relative_to(self._dir).as_posix()
            except ValueError:
                pass
        return str(rp)

    def _resolve_path(self, stored: str) -> Path:
        p = Path(stored)
        if p.is_absolute() or self._dir is None:
            return p
        return self._dir / p

    def _checkpoint_dict(self, row: dict) -> dict:
        return {**row, "path": str(self._resolve_path(row["path"]))}

    def _check_file(self, row: dict) -> str | None:
        """None if the checkpoint file matches its record, else what is wrong."""
        return check_file(self._resolve_path(row["path"]), row["sha256"], row["size_bytes"])

    # -- metrics --------------------------------------------------------------------------------
    def record_metrics(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record metric rows ``{'name', 'value', 'run_id'?, 'epoch'?, 'split'?}`` (one transaction).

        A row with the key ``(run_id, epoch, split, name)`` of an existing row replaces it. Values
        must be finite. Runs named here are created as pending if unknown. Returns the row count.
        """
        prepared = [self._metric_row(r) for r in rows]
        with self.transaction() as conn:
            self._insert_metrics(conn, prepared, None, _now())
        return len(prepared)

    def metrics(self, name: str | None = None, split: str | None = None, run_id: str | None = None,
                epoch: int | None = None, *, unit_id: str | None = None) -> list[dict]:
        """Metric rows matching every given filter (None = any), in recording order."""
        return self._select("metrics", {"name": name, "split": split, "run_id": run_id, "epoch": epoch,
                                        "unit_id": unit_id})

    def metric_values(self, name: str, run_ids: Sequence[str], *, split: str = "",
                      epoch: int | str | None = None) -> np.ndarray:
        """One metric for each run in ``run_ids`` as a float array (NaN where absent).

        ``epoch``: None selects the row without an epoch (run-level value), an int that epoch,
        ``'last'`` the highest recorded epoch of each run.
        """
        values = np.full(len(run_ids), np.nan)
        if epoch == "last":
            sql = ("SELECT run_id, value FROM metrics m WHERE name = ? AND split = ? AND epoch = "
                   "(SELECT max(epoch) FROM metrics WHERE run_id = m.run_id AND name = m.name AND split = m.split)")
            params: list = [name, split]
        elif epoch is None:
            sql, params = "SELECT run_id, value FROM metrics WHERE name = ? AND split = ? AND epoch IS NULL", [name, split]
        else:
            sql, params = "SELECT run_id, value FROM metrics WHERE name = ? AND split = ? AND epoch = ?", [name, split, epoch]
        found = {r["run_id"]: r["value"] for r in self._rows(sql, params) if r["run_id"] is not None}
        for i, rid in enumerate(run_ids):
            if rid in found:
                values[i] = found[rid]
        return values

    @staticmethod
    def _metric_row(row: Mapping[str, Any]) -> tuple:
        _check_row_keys(row, _METRIC_KEYS, "metric")
        name = _req_str(row.get("name"), "metric name")
        run_id = _opt_str(row.get("run_id"), f"metric {name!r} run_id", allow_empty=False)
        what = f"metric {name!r} (run {run_id!r}, epoch {row.get('epoch')!r}, split {row.get('split')!r})"
        split = _opt_str(row.get("split"), f"{what} split") or ""
        return run_id, _opt_epoch(row.get("epoch"), what), split, name, _finite(row.get("value"), what)

    @staticmethod
    def _insert_metrics(conn: sqlite3.Connection, rows: list[tuple], unit_id: str | None, now: str) -> None:
        if not rows:
            return
        conn.executemany("INSERT OR IGNORE INTO runs(run_id) VALUES (?)",
                         [(r,) for r in sorted({r[0] for r in rows if r[0] is not None})])
        conn.executemany("INSERT OR REPLACE INTO metrics(run_id, epoch, split, name, value, unit_id, recorded) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", [r + (unit_id, now) for r in rows])

    # -- pairwise -------------------------------------------------------------------------------
    def record_pairwise(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record pairwise rows ``{'analysis', 'model_a', 'model_b', 'value', 'population'?}``.

        The key ``(analysis, model_a, model_b)`` replaces an existing row. Values must be finite.
        Returns the row count.
        """
        prepared = [self._pair_row(r) for r in rows]
        with self.transaction() as conn:
            self._insert_pairwise(conn, prepared, None, _now())
        return len(prepared)

    def pairwise(self, analysis: str | None = None, population: str | None = None) -> list[dict]:
        """Pairwise rows matching the filters (None = any), in recording order."""
        return self._select("pairwise", {"analysis": analysis, "population": population})

    def pairwise_matrix(self, analysis: str, models: Sequence[str], *, symmetric: bool = True,
                        diagonal: float | None = None) -> np.ndarray:
        """An ``M×M`` float array of one analysis over ``models`` (row = model_a, column = model_b).

        Absent pairs are NaN. With ``symmetric`` (default) a pair recorded in one order only also
        fills the mirrored cell (a value recorded in both orders, e.g. KL(a‖b) and KL(b‖a), keeps
        both). ``diagonal`` fills the diagonal cells that were not recorded.
        """
        models = list(models)
        index = {m: i for i, m in enumerate(models)}
        if len(index) != len(models):
            raise ValueError("pairwise_matrix: models contains duplicates")
        out = np.full((len(models), len(models)), np.nan)
        recorded = np.zeros(out.shape, dtype=bool)
        for r in self._rows("SELECT model_a, model_b, value FROM pairwise WHERE analysis = ?", (analysis,)):
            i, j = index.get(r["model_a"]), index.get(r["model_b"])
            if i is not None and j is not None:
                out[i, j] = r["value"]
                recorded[i, j] = True
        if symmetric:
            mirror = recorded.T & ~recorded
            out[mirror] = out.T[mirror]
        if diagonal is not None:
            d = np.diagonal(out).copy()
            d[np.isnan(d)] = float(diagonal)
            np.fill_diagonal(out, d)
        return out

    @staticmethod
    def _pair_row(row: Mapping[str, Any]) -> tuple:
        _check_row_keys(row, _PAIR_KEYS, "pairwise")
        analysis = _req_str(row.get("analysis"), "pairwise analysis")
        a = _req_str(row.get("model_a"), f"pairwise {analysis!r} model_a")
        b = _req_str(row.get("model_b"), f"pairwise {analysis!r} model_b")
        pop = _opt_str(row.get("population"), f"pairwise {analysis!r} population")
        return analysis, pop, a, b, _finite(row.get("value"), f"pairwise {analysis!r} ({a}, {b})")

    @staticmethod
    def _insert_pairwise(conn: sqlite3.Connection, rows: list[tuple], unit_id: str | None, now: str) -> None:
        if rows:
            conn.executemany("INSERT OR REPLACE INTO pairwise(analysis, population, model_a, model_b, value, "
                             "unit_id, recorded) VALUES (?, ?, ?, ?, ?, ?, ?)", [r + (unit_id, now) for r in rows])

    # -- queries, checks, export ----------------------------------------------------------------
    def _select(self, table: str, filters: Mapping[str, Any]) -> list[dict]:
        # table and column names come from this module only
        conds = [(k, v) for k, v in filters.items() if v is not None]
        where = (" WHERE " + " AND ".join(f"{k} = ?" for k, _ in conds)) if conds else ""
        return self._rows(f"SELECT * FROM {table}{where} ORDER BY {_ORDER[table]}", [v for _, v in conds])

    def summary(self) -> dict:
        """Counts for a status line: units by kind and status, runs by status, rows per table."""
        with self._snapshot() as conn:
            units: dict[str, dict[str, int]] = {}
            for kind, status, n in conn.execute("SELECT kind, status, count(*) FROM units GROUP BY kind, status"):
                units.setdefault(kind, {})[status] = n
            runs = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        return {"units": units, "runs": runs, "rows": rows}

    def integrity_check(self) -> list[str]:
        """Check the database and every checkpoint file; returns the problems found (empty = healthy).

        Runs ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` and recomputes the sha256 of
        every registered checkpoint (missing, truncated and corrupted files are reported).
        """
        problems: list[str] = []
        with self._snapshot() as conn:
            msgs = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if msgs != ["ok"]:
                problems += [f"sqlite integrity_check: {m}" for m in msgs]
            for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"foreign key: {table} row {rowid} refers to a missing {parent} row")
        for row in self._select("checkpoints", {}):
            issue = self._check_file(row)
            if issue:
                problems.append(f"checkpoint {row['run_id']} epoch {row['epoch']}: {issue}")
        return problems

    def export(self, directory: str | os.PathLike, format: str = "csv") -> list[Path]:
        """Write every table to ``directory/<table>.<format>`` (``'csv'`` or ``'parquet'``).

        All tables come from one consistent snapshot; each file is written atomically. CSV uses the
        stdlib ``csv`` module (header row, NULL as an empty field). Parquet needs ``pyarrow``.
        Returns the written paths.
        """
        fmt = format.lower()
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"export format must be 'csv' or 'parquet', got {format!r}")
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as e:
                raise ImportError("export(format='parquet') needs pyarrow, which is not installed "
                                  f"({e}); install it (pip install pyarrow) or use format='csv'") from e
        out_dir = Path(directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        with self._snapshot() as conn:
            data = {}
            for t in TABLES:
                info = conn.execute(f"PRAGMA table_info({t})").fetchall()
                cols = [(c[1], (c[2] or "").upper()) for c in info]
                data[t] = (cols, conn.execute(f"SELECT * FROM {t} ORDER BY {_ORDER[t]}").fetchall())
        written = []
        for t, (cols, rows) in data.items():
            target = out_dir / f"{t}.{fmt}"
            with atomic_path(target) as tmp:
                if fmt == "csv":
                    with open(tmp, "w", newline="", encoding="utf-8") as f:
                        w = csv.writer(f)
                        w.writerow([c for c, _ in cols])
                        w.writerows([["" if v is None else v for v in r] for r in rows])
                else:
                    types = {"INTEGER": pa.int64(), "REAL": pa.float64()}
                    arrays = [pa.array([r[k] for r in rows], type=types.get(ty, pa.string()))
                              for k, (_, ty) in enumerate(cols)]
                    pq.write_table(pa.Table.from_arrays(arrays, names=[c for c, _ in cols]), str(tmp))
            written.append(target)
        return written


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    if not isinstance(error, str):
        raise TypeError(f"error must be a string or an exception, got {error!r}")
    return error
