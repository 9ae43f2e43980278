"""Tests of the experiments' embedded results database (grounded_fast/experiments/store.py)."""
import csv
import hashlib
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from store_schema_v1 import V1_SCHEMA

from grounded_fast.experiments import store as store_mod
from grounded_fast.experiments.store import (
    TABLES, ResultStore, StoreError, StudyMismatchError, atomic_path)
from grounded_fast.experiments.grounding import make_run_id

STORE_FILE = Path(store_mod.__file__).resolve()
CONFIG = {"setups": ["P", "C", "T"], "seeds": 3, "train": {"epochs": 5, "lr": 1e-3}, "workers": 2}

# the documented columns of every table
COLUMNS = {
    "study": ["key", "value"],
    "runs": ["run_id", "labels", "status", "started", "finished", "wall_seconds", "error"],
    "checkpoints": ["run_id", "epoch", "path", "sha256", "size_bytes", "created"],
    "metrics": ["metric_id", "run_id", "epoch", "split", "name", "value", "unit_id", "recorded"],
    "pairwise": ["pair_id", "analysis", "population", "model_a", "model_b", "value", "unit_id", "recorded"],
    "units": ["unit_id", "kind", "status", "payload", "error", "finished"],
}


@pytest.fixture
def db(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as s:
        s.begin_study("demo", CONFIG)
        yield s


def _counts(path):
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
def test_schema_created(tmp_path):
    path = tmp_path / "sub" / "results.sqlite"
    with ResultStore(path) as s:
        assert s.journal_mode == "wal"
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(TABLES) <= tables
    for t, cols in COLUMNS.items():
        assert [c[1] for c in con.execute(f"PRAGMA table_info({t})")] == cols, t
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    # every documented column is named in the module docstring
    for cols in COLUMNS.values():
        for c in cols:
            assert f"``{c}" in store_mod.__doc__, c
    # foreign keys are enforced on the store's connection
    with ResultStore(path) as s, pytest.raises(sqlite3.IntegrityError):
        with s.transaction() as conn:
            conn.execute("INSERT INTO checkpoints VALUES ('nope', 0, 'x', 'y', 1, 'now')")


DAMAGE_ADVICE = r"restore it from a backup, or start the study afresh with `grounded-fast run \.\.\. --force-new`"


def _other_sqlite(directory):
    """An SQLite database that is not a results store (one unrelated table)."""
    other = directory / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    return other


def test_not_a_results_database(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        ResultStore(junk)
    with pytest.raises(StoreError, match="not a grounded_fast results database"):
        ResultStore(_other_sqlite(tmp_path))


def _filled_store(path):
    with ResultStore(path) as s:
        s.begin_study("demo", CONFIG)
        for u in range(40):
            s.complete_unit(f"u{u}", "train", {"pad": "x" * 500},
                            metrics=[{"run_id": f"r{u}", "epoch": e, "name": "acc", "value": 0.5} for e in range(10)])
    return path.read_bytes()


def test_empty_or_truncated_file_is_refused_and_left_alone(tmp_path):
    empty = tmp_path / "empty" / "results.sqlite"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    for read_only in (False, True):
        with pytest.raises(StoreError, match=r"0 bytes\): " + DAMAGE_ADVICE):
            ResultStore(empty, read_only=read_only)
    assert empty.read_bytes() == b"" and os.listdir(empty.parent) == ["results.sqlite"]
    cut = tmp_path / "cut" / "results.sqlite"
    data = _filled_store(cut)
    cut.write_bytes(data[:len(data) // 2])
    for read_only in (False, True):
        with pytest.raises(StoreError, match=r"malformed\): " + DAMAGE_ADVICE):
            ResultStore(cut, read_only=read_only)
    assert cut.read_bytes() == data[:len(data) // 2]


def test_new_database_appears_only_complete(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "_ensure_schema", killed)
    with pytest.raises(KeyboardInterrupt):
        ResultStore(path)
    assert os.listdir(tmp_path) == []  # no empty results.sqlite to be mistaken for a lost one
    monkeypatch.undo()
    with ResultStore(path) as s:
        s.begin_study("demo", CONFIG)
    assert os.listdir(tmp_path) == ["results.sqlite"]


def test_read_only_open_writes_nothing(tmp_path):
    with pytest.raises(StoreError, match="no results database"):
        ResultStore(tmp_path / "absent" / "results.sqlite", read_only=True)
    assert os.listdir(tmp_path) == []
    path = tmp_path / "results.sqlite"
    data = _filled_store(path)
    con = sqlite3.connect(path)  # a store in rollback-journal mode must stay so when only read
    assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    con.close()
    data = path.read_bytes()
    with ResultStore(path, read_only=True) as s:
        assert s.study_info()["name"] == "demo" and len(s.metrics(name="acc")) == 400
        with pytest.raises(StoreError, match="read-only"):
            s.complete_unit("new", "train")
        clone = pickle.loads(pickle.dumps(s))
        assert clone.read_only and clone.unit_done("u3")
        clone.close()
    assert path.read_bytes() == data and os.listdir(tmp_path) == ["results.sqlite"]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    with pytest.raises(StoreError, match="not a grounded_fast results database"):  # refused, not given a schema
        ResultStore(_other_sqlite(tmp_path), read_only=True)


def test_read_only_open_beside_a_writer(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as w:
        w.begin_study("demo", CONFIG)
        w.complete_unit("u1", "train")
        with w.transaction():  # a run in the middle of committing a unit
            w.complete_unit("u2", "train")
            t0 = time.time()
            with ResultStore(path, read_only=True, timeout=30) as r:
                assert r.done_units() == {"u1"}
            assert time.time() - t0 < 5


def test_begin_study_idempotent_and_mismatch(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as s:
        first = s.begin_study("demo", CONFIG)
        again = s.begin_study("demo", json.loads(json.dumps(CONFIG)))
        assert first["created"] == again["created"]
        assert again["config"] == CONFIG and again["name"] == "demo"
        assert again["package_version"] and again["schema_version"] == str(store_mod.SCHEMA_VERSION)
    with ResultStore(path) as s:
        assert s.begin_study("demo", {**CONFIG, "seeds": 3.0})["created"] == first["created"]  # 3 == 3.0
        with pytest.raises(StudyMismatchError, match=r"'other'.*'demo'|'demo'.*'other'"):
            s.begin_study("other", CONFIG)
        changed = {**CONFIG, "train": {"epochs": 7, "lr": 1e-3}}
        with pytest.raises(StudyMismatchError, match=r"'train\.epochs' \(stored 5, requested 7\)"):
            s.begin_study("demo", changed)
        with pytest.raises(StudyMismatchError, match=r"'extra' \(stored \(absent\), requested 1\)"):
            s.begin_study("demo", {**CONFIG, "extra": 1})
        # a key declared as not affecting results may differ; the stored config is kept
        info = s.begin_study("demo", {**CONFIG, "workers": 8}, ignore=["workers"])
        assert info["config"]["workers"] == 2
        assert s.study_info()["config"] == CONFIG  # the failed calls changed nothing


def test_complete_unit_rejects_invalid_rows_and_writes_nothing(tmp_path, db):
    good = [{"run_id": "r1", "epoch": 1, "split": "valid", "name": "acc", "value": 0.5}]
    with pytest.raises(ValueError, match="non-finite"):
        db.complete_unit("u1", "train", {"x": 1}, metrics=good + [{"run_id": "r1", "name": "loss", "value": float("nan")}],
                         runs=[{"run_id": "r1", "status": "done"}])
    with pytest.raises(TypeError, match="unknown key"):
        db.complete_unit("u1", "train", metrics=[{"name": "acc", "value": 1.0, "spilt": "test"}])
    with pytest.raises(ValueError, match="non-finite"):
        db.record_pairwise([{"analysis": "kl", "model_a": "a", "model_b": "b", "value": float("inf")}])
    assert not db.unit_done("u1")
    assert _counts(db.path) | {"study": 0} == {t: 0 for t in TABLES}


def test_complete_unit_atomic_on_failure_mid_transaction(tmp_path, db, monkeypatch):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"weights")

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ResultStore, "_insert_pairwise", staticmethod(boom))
    with pytest.raises(RuntimeError, match="disk on fire"):
        db.complete_unit("u1", "train", {"x": 1},
                         metrics=[{"run_id": "r1", "name": "acc", "value": 0.5}],
                         pairwise=[{"analysis": "kl", "model_a": "r1", "model_b": "r2", "value": 1.0}],
                         checkpoints=[("r1", 3, ck)], runs=[{"run_id": "r1", "status": "done", "labels": {"seed": 1}}])
    assert not db.unit_done("u1")
    assert _counts(db.path) | {"study": 0} == {t: 0 for t in TABLES}  # units, runs, metrics, ... all empty
    monkeypatch.undo()
    # the store is usable afterwards and the same call now records everything
    db.complete_unit("u1", "train", {"x": 1}, metrics=[{"run_id": "r1", "name": "acc", "value": 0.5}],
                     pairwise=[{"analysis": "kl", "model_a": "r1", "model_b": "r2", "value": 1.0}],
                     checkpoints=[("r1", 3, ck)], runs=[{"run_id": "r1", "status": "done", "labels": {"seed": 1}}])
    assert db.unit_done("u1") and db.unit("u1")["payload"] == {"x": 1}
    assert db.run("r1")["status"] == "done" and db.run("r1")["labels"] == {"seed": 1}
    c = _counts(db.path)
    assert (c["units"], c["metrics"], c["pairwise"], c["checkpoints"], c["runs"]) == (1, 1, 1, 1, 1)


def test_resume_semantics_after_reopen(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as s:
        s.begin_study("demo", CONFIG)
        for i in range(3):
            s.complete_unit(f"train:{i}", "train", {"i": i}, metrics=[{"run_id": f"r{i}", "name": "acc", "value": i / 10}])
        s.fail_unit("train:3", "train", ValueError("diverged"))
    with ResultStore(path) as s:
        s.begin_study("demo", CONFIG)
        assert [s.unit_done(f"train:{i}") for i in range(5)] == [True, True, True, False, False]
        assert s.done_units("train") == {"train:0", "train:1", "train:2"} and s.done_units("eval") == set()
        assert s.unit("train:3")["status"] == "failed" and "diverged" in s.unit("train:3")["error"]
        assert s.unit("nope") is None
        # a retried failed unit becomes done and loses its error
        s.complete_unit("train:3", "train", {"i": 3})
        assert s.unit_done("train:3") and s.unit("train:3")["error"] is None
        # forgetting a unit removes the results it recorded
        assert s.forget_unit("train:1") and not s.unit_done("train:1")
        assert [m["run_id"] for m in s.metrics(name="acc")] == ["r0", "r2"]
        assert s.summary()["units"] == {"train": {"done": 3}}


def test_duplicates_are_replaced_not_duplicated(db):
    for v in (0.1, 0.2, 0.3):
        db.record_metrics([{"run_id": "r1", "epoch": 2, "split": "valid", "name": "acc", "value": v},
                           {"name": "kw_p", "value": v},                       # study level: NULL run, NULL epoch
                           {"run_id": "r1", "name": "final_acc", "value": v}])  # NULL epoch
        db.record_pairwise([{"analysis": "agreement", "population": "P/P", "model_a": "a", "model_b": "b", "value": v}])
    rows = db.metrics()
    assert len(rows) == 3 and all(r["value"] == 0.3 for r in rows)
    assert len(db.pairwise("agreement")) == 1 and db.pairwise()[0]["value"] == 0.3
    # different epochs / splits are different keys
    db.record_metrics([{"run_id": "r1", "epoch": 3, "split": "valid", "name": "acc", "value": 0.9},
                       {"run_id": "r1", "epoch": 2, "split": "test", "name": "acc", "value": 0.8}])
    assert len(db.metrics(name="acc")) == 3
    assert len(db.metrics(name="acc", split="valid")) == 2 and len(db.metrics(epoch=2)) == 2
    np.testing.assert_array_equal(db.metric_values("acc", ["r1", "r9"], split="valid", epoch="last"), [0.9, np.nan])
    np.testing.assert_array_equal(db.metric_values("final_acc", ["r1"]), [0.3])
    # re-completing a unit replaces exactly its results (stale rows of the first completion go)
    db.complete_unit("e", "eval", metrics=[{"run_id": "r2", "name": "m1", "value": 1.0},
                                           {"run_id": "r2", "name": "m2", "value": 2.0}])
    db.complete_unit("e", "eval", metrics=[{"run_id": "r2", "name": "m1", "value": 5.0}])
    assert [(m["name"], m["value"]) for m in db.metrics(run_id="r2")] == [("m1", 5.0)]
    assert len(db.units()) == 1


def test_mark_run(db):
    rid = make_run_id("P", 0.1, 2)
    assert rid == "P-noise0.1-seed2"
    r = db.mark_run(rid, labels={"setup": "P", "noise": 0.1, "seed": 2}, status="running")
    assert r["status"] == "running" and r["started"] and r["finished"] is None
    r = db.mark_run(rid, status="failed", error=RuntimeError("oom"))
    assert r["finished"] and r["error"] == "RuntimeError: oom" and r["labels"]["setup"] == "P"
    r = db.mark_run(rid, status="running")  # a retry clears the failure
    assert r["error"] is None and r["finished"] is None
    r = db.mark_run(rid, status="done", wall_seconds=12.5)
    assert (r["status"], r["wall_seconds"], r["labels"]) == ("done", 12.5, {"noise": 0.1, "seed": 2, "setup": "P"})
    with pytest.raises(ValueError, match="status must be one of"):
        db.mark_run(rid, status="finished")
    with pytest.raises(TypeError, match="unknown run field"):
        db.mark_run(rid, sead=3)
    assert [x["run_id"] for x in db.runs(status="done")] == [rid]


def test_checkpoint_sha256_verification(tmp_path, db):
    ckdir = tmp_path / "checkpoints"
    paths = []
    for epoch in range(3):
        with atomic_path(ckdir / f"r1-{epoch}.pt") as tmp:
            tmp.write_bytes(bytes(range(256)) * (epoch + 1))
        paths.append(ckdir / f"r1-{epoch}.pt")
        row = db.add_checkpoint("r1", epoch, paths[-1])
        assert row["size_bytes"] == 256 * (epoch + 1) and len(row["sha256"]) == 64
    assert not list(ckdir.glob(".*tmp"))  # no temporaries left behind
    # paths below the database's directory are stored relative to it
    con = sqlite3.connect(db.path)
    assert con.execute("SELECT path FROM checkpoints WHERE epoch = 0").fetchone()[0] == "checkpoints/r1-0.pt"
    con.close()
    assert all(db.verify_checkpoint("r1", e) for e in range(3)) and db.integrity_check() == []
    assert not db.verify_checkpoint("r1", 7) and not db.verify_checkpoint("zz", 0)

    data = bytearray(paths[2].read_bytes())
    data[100] ^= 0x01  # flip one bit, same size
    paths[2].write_bytes(bytes(data))
    paths[1].unlink()
    assert db.verify_checkpoint("r1", 0)
    assert not db.verify_checkpoint("r1", 1) and not db.verify_checkpoint("r1", 2)
    problems = db.integrity_check()
    assert len(problems) == 2
    assert any("epoch 1" in p and "missing" in p for p in problems)
    assert any("epoch 2" in p and "corrupted" in p for p in problems)
    # resuming picks the newest checkpoint that still verifies
    assert db.latest_checkpoint("r1")["epoch"] == 0
    assert db.latest_checkpoint("r1", verify=False)["epoch"] == 2
    paths[0].write_bytes(b"short")  # truncated / rewritten
    assert not db.verify_checkpoint("r1", 0) and db.latest_checkpoint("r1") is None
    with pytest.raises(FileNotFoundError):
        db.add_checkpoint("r1", 5, tmp_path / "nope.pt")


def test_pairwise_matrix_symmetric(db):
    db.record_pairwise([
        {"analysis": "agreement", "population": "P/P", "model_a": "a", "model_b": "b", "value": 0.7},
        {"analysis": "agreement", "population": "P/C", "model_a": "c", "model_b": "a", "value": 0.6},
        {"analysis": "agreement", "population": "P/X", "model_a": "a", "model_b": "zz", "value": 0.1},
        {"analysis": "kl", "model_a": "a", "model_b": "b", "value": 1.0},
        {"analysis": "kl", "model_a": "b", "model_b": "a", "value": 2.0},
    ])
    m = db.pairwise_matrix("agreement", ["a", "b", "c"])
    assert m.shape == (3, 3)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(m, [[np.nan, 0.7, 0.6], [0.7, np.nan, np.nan], [0.6, np.nan, np.nan]])
    np.testing.assert_array_equal(np.diag(db.pairwise_matrix("agreement", ["a", "b", "c"], diagonal=1.0)), [1, 1, 1])
    # an asymmetric analysis recorded in both orders keeps both directions
    np.testing.assert_array_equal(db.pairwise_matrix("kl", ["a", "b"]), [[np.nan, 1.0], [2.0, np.nan]])
    assert np.isnan(db.pairwise_matrix("agreement", ["b", "a", "c"], symmetric=False)[0, 2])
    assert np.isnan(db.pairwise_matrix("missing", ["a", "b"])).all()
    with pytest.raises(ValueError, match="duplicates"):
        db.pairwise_matrix("kl", ["a", "a"])


def _populate(db, tmp_path):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"abc")
    db.mark_run("P-noise0.1-seed0", labels={"setup": "P", "noise": 0.1, "seed": 0}, status="done",
                wall_seconds=1.25)
    db.complete_unit("train:P0", "train", {"note": 'quotes " and, commas\nnewline'},
                     metrics=[{"run_id": "P-noise0.1-seed0", "epoch": 1, "split": "valid", "name": "acc", "value": 0.1 + 0.2},
                              {"name": "silhouette", "value": 1 / 3}],
                     pairwise=[{"analysis": "kl", "population": "P/P", "model_a": "x", "model_b": "y", "value": 9.28}],
                     checkpoints=[{"run_id": "P-noise0.1-seed0", "epoch": 1, "path": ck}])


def test_export_csv_round_trip(tmp_path, db):
    _populate(db, tmp_path)
    written = db.export(tmp_path / "export")
    assert sorted(p.name for p in written) == sorted(f"{t}.csv" for t in TABLES)
    con = sqlite3.connect(db.path)
    for t in TABLES:
        cur = con.execute(f"SELECT * FROM {t} ORDER BY rowid")
        header = [d[0] for d in cur.description]
        expected = [["" if v is None else str(v) for v in r] for r in cur.fetchall()]
        with open(tmp_path / "export" / f"{t}.csv", newline="", encoding="utf-8") as f:
            got = list(csv.reader(f))
        assert got[0] == header == COLUMNS[t], t
        assert sorted(got[1:]) == sorted(expected), t
    con.close()
    with open(tmp_path / "export" / "metrics.csv", newline="") as f:
        values = sorted(float(r["value"]) for r in csv.DictReader(f))
    assert values == sorted([0.1 + 0.2, 1 / 3])  # floats round-trip exactly
    with pytest.raises(ValueError, match="'csv' or 'parquet'"):
        db.export(tmp_path / "x", format="xlsx")


def test_export_parquet_works_or_raises_clear_error(tmp_path, db, monkeypatch):
    _populate(db, tmp_path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is None:
        with pytest.raises(ImportError, match="needs pyarrow.*format='csv'"):
            db.export(tmp_path / "pq", format="parquet")
    else:
        db.export(tmp_path / "pq", format="parquet")
        metrics = pq.read_table(tmp_path / "pq" / "metrics.parquet").to_pylist()
        assert sorted(m["value"] for m in metrics) == sorted([0.1 + 0.2, 1 / 3])
        assert pq.read_table(tmp_path / "pq" / "runs.parquet").column_names == COLUMNS["runs"]
    # without pyarrow the error is the clear one, whatever this machine has installed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="needs pyarrow"):
        db.export(tmp_path / "pq2", format="parquet")
    assert not (tmp_path / "pq2").exists()


def test_pickle_reopens_by_path(tmp_path, db):
    db.complete_unit("u", "train")
    clone = pickle.loads(pickle.dumps(db))
    try:
        assert clone.unit_done("u") and clone.path == db.path
    finally:
        clone.close()


# ---------------------------------------------------------------------------------------------
# processes: concurrent writers and SIGKILL at arbitrary points
# ---------------------------------------------------------------------------------------------
N_METRICS, N_PAIRS = 60, 8

# The worker loads store.py by path (no torch import: fast start) and writes units in a loop,
# skipping completed ones: rerunning the same command resumes.
WORKER = textwrap.dedent(f"""
    import importlib.util, sys, time, types
    # the store and the atomic writer it imports, without the package's __init__ (torch): fast start
    for name, path in (("grounded_fast", {str(STORE_FILE.parents[1])!r}),
                       ("grounded_fast.experiments", {str(STORE_FILE.parent)!r})):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = [path]
    spec = importlib.util.spec_from_file_location("grounded_fast.experiments.store", {str(STORE_FILE)!r})
    st = importlib.util.module_from_spec(spec); spec.loader.exec_module(st)
    db_path, prefix, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stall = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    if stall >= 0:  # stop inside the transaction of this process's (stall+1)-th unit, after its rows
        orig, calls = st.ResultStore._insert_pairwise, [0]
        def slow(conn, rows, unit_id, now):
            orig(conn, rows, unit_id, now)
            if calls[0] == stall:
                print("INTX", unit_id, flush=True)
                time.sleep(60)
            calls[0] += 1
        st.ResultStore._insert_pairwise = staticmethod(slow)
    with st.ResultStore(db_path, timeout=30) as s:
        s.begin_study("kill-test", {{"total": total}})
        for i in range(total):
            uid = f"{{prefix}}{{i}}"
            if s.unit_done(uid):
                continue
            run = f"{{prefix}}run{{i}}"
            s.mark_run(run, labels={{"setup": prefix, "seed": i}}, status="running")
            ck = s.path.parent / "ckpt" / f"{{run}}.pt"
            with st.atomic_path(ck) as tmp:
                tmp.write_bytes(uid.encode() * 2000)
            s.complete_unit(
                uid, "train", {{"i": i}},
                metrics=[{{"run_id": run, "epoch": j % 5, "split": str(j // 5), "name": "m", "value": i + j / 1000}}
                         for j in range({N_METRICS})],
                pairwise=[{{"analysis": "agreement", "model_a": run, "model_b": f"other{{k}}", "value": i * 10 + k}}
                          for k in range({N_PAIRS})],
                checkpoints=[(run, 0, ck)],
                runs=[{{"run_id": run, "status": "done", "wall_seconds": 0.0}}])
            print(uid, flush=True)
""")


def _check_complete(path, prefix=None):
    """Every recorded unit has all of its results; nothing belongs to a unit that is not done."""
    with ResultStore(path) as s:
        assert s.integrity_check() == []
        done = s.done_units()
        if prefix is not None:
            done = {u for u in done if u.startswith(prefix)}
        for uid in done:
            i = s.unit(uid)["payload"]["i"]
            ms = s.metrics(unit_id=uid)
            assert len(ms) == N_METRICS and sorted(m["value"] for m in ms) == [i + j / 1000 for j in range(N_METRICS)]
            assert sorted(p["value"] for p in s.pairwise() if p["unit_id"] == uid) == [i * 10 + k for k in range(N_PAIRS)]
            run = ms[0]["run_id"]
            assert s.run(run)["status"] == "done" and s.verify_checkpoint(run, 0)
        con = sqlite3.connect(path)
        for t in ("metrics", "pairwise"):
            orphans = con.execute(f"SELECT count(*) FROM {t} WHERE unit_id IS NULL OR unit_id NOT IN "
                                  "(SELECT unit_id FROM units WHERE status = 'done')").fetchone()[0]
            assert orphans == 0, t
        con.close()
        return done


def _worker(path, prefix, total, stall=-1):
    return subprocess.Popen([sys.executable, "-c", WORKER, str(path), prefix, str(total), str(stall)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_leaves_only_complete_units_and_rerun_resumes(tmp_path):
    path = tmp_path / "results.sqlite"
    total = 30
    seen = 0
    # kill three times: between/at the start of units, a little later, and surely inside a unit's
    # transaction (after its unit row, metrics and pairwise rows were written, before COMMIT)
    for after, delay, stall in ((2, 0.0, False), (4, 0.003, False), (3, 0.0, True)):
        proc = _worker(path, "u", total, stall=after if stall else -1)
        lines, in_tx = [], None
        while in_tx is None and (stall or len(lines) < after):
            line = proc.stdout.readline().strip()
            assert line, f"worker ended early: {proc.wait()} {proc.stderr.read()}"
            if line.startswith("INTX"):
                in_tx = line.split()[1]
            else:
                lines.append(line)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        done = _check_complete(path)
        assert set(lines) <= done and len(done) >= seen + after  # nothing reported done was lost
        if stall:
            assert len(lines) == after and in_tx not in done
        seen = len(done)
    # rerunning the same command completes the remaining units, skipping the done ones
    proc = _worker(path, "u", total)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(out.split()) == total - seen
    done = _check_complete(path)
    assert done == {f"u{i}" for i in range(total)}
    assert _counts(path)["metrics"] == total * N_METRICS and _counts(path)["pairwise"] == total * N_PAIRS


def test_concurrent_writer_processes(tmp_path):
    path = tmp_path / "results.sqlite"
    procs = [_worker(path, f"w{k}-", 8) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for k in range(3):
        assert len(_check_complete(path, f"w{k}-")) == 8
    assert _counts(path)["units"] == 24


# ---- schema 1: the store before the study registry (tests/store_schema_v1.py)


def _schema_1_store(path, tmp_path):
    """A results database as schema 1 wrote it: a grounding run with setup / noise / seed columns."""
    ck = tmp_path / "ck1.pt"
    ck.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("BEGIN")
    for stmt in V1_SCHEMA:
        con.execute(stmt)
    con.execute("PRAGMA user_version=1")
    con.executemany("INSERT INTO study VALUES (?, ?)", [("name", "grounding"), ("config", '{"seeds":[0]}'),
                                                         ("schema_version", "1")])
    con.execute("INSERT INTO runs(run_id, setup, noise, seed, status, wall_seconds) VALUES "
                "('P-noise0.1-seed0', 'P', 0.1, 0, 'done', 1.5), ('orphan', NULL, NULL, NULL, 'pending', NULL)")
    con.execute("INSERT INTO units VALUES ('train/P-noise0.1-seed0', 'train', 'done', '{}', NULL, 't')")
    con.execute("INSERT INTO checkpoints VALUES ('P-noise0.1-seed0', 1, ?, ?, 7, 't')", (str(ck), sha))
    con.execute("INSERT INTO metrics(run_id, epoch, split, name, value, unit_id, recorded) VALUES "
                "('P-noise0.1-seed0', 1, 'val', 'acc', 0.5, 'train/P-noise0.1-seed0', 't')")
    con.execute("COMMIT")
    con.close()


def test_schema_1_store_read_only_in_place_and_migrated_for_writing(tmp_path):
    path = tmp_path / "results.sqlite"
    _schema_1_store(path, tmp_path)
    before = path.read_bytes()
    want = [("P-noise0.1-seed0", {"noise": 0.1, "seed": 0, "setup": "P"}, "done", 1.5), ("orphan", {}, "pending", None)]

    def rows(s):
        return [(r["run_id"], r["labels"], r["status"], r["wall_seconds"]) for r in s.runs()]

    with ResultStore(path, read_only=True) as s:
        assert rows(s) == want
        assert s.verify_checkpoint("P-noise0.1-seed0", 1) and s.metrics(name="acc")[0]["value"] == 0.5
        assert s.study_info()["schema_version"] == str(store_mod.SCHEMA_VERSION)
    assert path.read_bytes() == before                                  # never written
    with ResultStore(path) as s:
        assert rows(s) == want and s.runs(labels={"setup": "P"})[0]["run_id"] == "P-noise0.1-seed0"
        assert s.checkpoints()[0]["sha256"] and s.unit_done("train/P-noise0.1-seed0")
        assert s.integrity_check() == []
        s.begin_study("grounding", {"seeds": [0]})                      # the run resumes
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert [c[1] for c in con.execute("PRAGMA table_info(runs)")] == COLUMNS["runs"]
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE name LIKE 'runs%'")] == ["runs"]
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
    con.close()


def test_a_failed_migration_leaves_schema_1(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"
    _schema_1_store(path, tmp_path)

    def broken(conn):
        conn.execute("ALTER TABLE runs RENAME TO runs_gone")
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(store_mod, "_migrate", broken)
    with pytest.raises(StoreError):
        ResultStore(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert con.execute("SELECT setup FROM runs WHERE run_id = 'P-noise0.1-seed0'").fetchone() == ("P",)
    con.close()
