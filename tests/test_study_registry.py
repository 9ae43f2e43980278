"""Studies come from the registry: a toy study defined and registered here, and nowhere else, runs
end to end through the generic runner and the CLI (plan, units on the local executor, store,
report, resume); and results directories of schema 1 (the store before the registry) still open."""
import dataclasses
import json
import os
import sqlite3
import time

import pytest
import torch
from store_schema_v1 import V1_SCHEMA

from grounded_fast.cli import main
from grounded_fast.experiments import studies
from grounded_fast.experiments.store import SCHEMA_VERSION, ResultStore
from grounded_fast.experiments.studies import registry
from grounded_fast.models.config import ModelConfig

PREPARED = []   # one entry per call of the toy study's prepare (in this process: workers=1)


@dataclasses.dataclass
class ToyConfig(ModelConfig):
    n: int = 3
    offset: int = 10
    presets = {"tiny": {}}

    def validate(self) -> None:
        self.require_at_least(1, "n")


def _plan(cfg):
    return [studies.Unit("square", f"k{k}", k, {"k": k}) for k in range(cfg.n)]


def _prepare(cfg, out_dir, progress, device):
    assert device == torch.device("cpu")    # resolved by the runner, passed explicitly
    PREPARED.append(out_dir)
    return {"offset": cfg.offset}


def _run_unit(k, cfg, out_dir, shared, progress, device):
    from grounded_fast._atomic import write_atomic
    from grounded_fast.experiments.runner import unit_result
    assert device == torch.device("cpu")
    progress(1, 1)
    path = os.path.join(out_dir, "toy", f"k{k}.txt")
    write_atomic(path, f"{k}\n".encode())
    return unit_result(time.time(), [(0, path)], [{"name": "value", "value": k * k + shared["offset"]}], {"k": k})


def _total(store, cfg, out_dir, shared, device):
    total = sum(m["value"] for m in store.metrics(name="value"))
    return {"payload": {"total": total}, "metrics": [{"name": "total", "value": total}]}


def _report(store, out_dir):
    from grounded_fast.experiments.report import Report
    rep = Report("Toy study")
    value = {m["run_id"]: m["value"] for m in store.metrics(name="value")}
    rep.add_table(["run", "k", "value"], [[r["run_id"], r["labels"]["k"], value[r["run_id"]]] for r in store.runs()]
                  or None)
    return rep


TOY = studies.Study(name="toy", config_cls=ToyConfig, plan=_plan, prepare=_prepare, run_unit=_run_unit,
                    results=lambda store, cfg: store.unit("total")["payload"],
                    summary=lambda res: [f"  total {res['total']:g}"], report=_report,
                    after=(studies.Step("total", _total),))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", TOY)
    PREPARED.clear()
    yield TOY


def test_the_three_studies_are_registered_and_unknown_names_are_one_clear_error():
    assert studies.available() == ["flava-ablation", "groundedbert", "grounding"]
    assert studies.get("grounding").config_cls.__name__ == "GroundingStudyConfig"
    with pytest.raises(ValueError, match=r"unknown study 'nope'; available: \['flava-ablation'"):
        studies.get("nope")
    grounding = studies.get("grounding")
    units = grounding.plan(grounding.config_cls.from_preset("tiny"))
    assert len(units) == 9 * 2 * 3 and units[0].unit_id == "train/P-noise0-seed0"
    assert units[-1].labels == {"setup": "P∧C∧T", "noise": 0.5, "seed": 2}
    flava = studies.get("flava-ablation")
    assert [u.unit_id for u in flava.plan(flava.config_cls.from_preset("tiny"))][:2] == [
        "cell/text10000-images0-seed0", "cell/text10000-images50-seed0"]


def test_a_study_registered_in_a_test_runs_end_to_end_through_the_cli(tmp_path, capsys, toy):
    out = tmp_path / "run"
    run = ["run", "toy", "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(run) == 0
    printed = capsys.readouterr().out
    assert "toy done in" in printed and "total 35" in printed         # 10 + 11 + 14
    with ResultStore(out / "results.sqlite", read_only=True) as store:
        assert store.study_info()["name"] == "toy" and store.study_info()["config"] == {"n": 3, "offset": 10}
        assert sorted(u["unit_id"] for u in store.units(status="done")) == ["square/k0", "square/k1", "square/k2",
                                                                            "total"]
        assert [(r["run_id"], r["labels"], r["status"]) for r in store.runs()] == [
            ("k0", {"k": 0}, "done"), ("k1", {"k": 1}, "done"), ("k2", {"k": 2}, "done")]
        assert len(store.checkpoints()) == 3
    report = (out / "report.md").read_text()
    assert "Toy study" in report and "| k2 | 2 | 14 |" in report.replace("14.0", "14")
    assert PREPARED == [str(out)]
    # a rerun is a no-op: nothing prepared, nothing recomputed; a damaged unit file is redone
    assert main(run) == 0 and PREPARED == [str(out)]
    (out / "toy" / "k1.txt").write_text("damaged\n")
    assert main(run) == 0 and PREPARED == [str(out), str(out)]
    assert (out / "toy" / "k1.txt").read_text() == "1\n"
    capsys.readouterr()
    assert main(["report", str(out), "--to", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == report


def test_report_of_a_study_this_version_does_not_know_is_one_line_exit_2(tmp_path, capsys, toy):
    out = tmp_path / "run"
    assert main(["run", "toy", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    registry._REGISTRY.pop("toy")
    capsys.readouterr()
    assert main(["report", str(out), "--to", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a 'toy' run" in err and not (tmp_path / "r").exists()


def _warning_unit(k, cfg, out_dir, shared, progress, device):
    """The toy unit, warning as a training loop whose OT loss does not always converge."""
    import warnings
    for bad in ([0, 3], [k]):
        warnings.warn(f"entropic_ot: problems {bad} did not converge within max_iter", RuntimeWarning)
    return _run_unit(k, cfg, out_dir, shared, progress, device)


def _warning_total(store, cfg, out_dir, shared, device):
    import warnings
    warnings.warn("a step's warning", UserWarning)
    return _total(store, cfg, out_dir, shared, device)


def test_warnings_inside_units_are_counted_not_printed(tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", dataclasses.replace(
        TOY, run_unit=_warning_unit, after=(studies.Step("total", _warning_total),)))
    out = tmp_path / "run"
    assert main(["run", "toy", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    printed, err = capfd.readouterr()
    assert "did not converge" not in err and "a step's warning" not in err
    assert "7 warnings of 2 kinds raised inside the units" in printed
    kind = "RuntimeWarning: entropic_ot: problems [...] did not converge within max_iter"
    with ResultStore(out / "results.sqlite", read_only=True) as store:
        assert store.unit("square/k1")["payload"]["warnings"] == {kind: 2}
        assert store.unit("total")["payload"]["warnings"] == {"UserWarning: a step's warning": 1}
    log = (out / "run.log").read_text()
    assert f"square/k2: 2 x {kind}" in log and "total: 1 x UserWarning: a step's warning" in log
    report = (out / "report.md").read_text()
    assert "## Warnings during the run" in report and f"| {kind} | 3 | 6 |" in report


def test_progress_without_a_terminal_is_plain_lines(tmp_path, capfd, toy):
    """stderr is not a terminal here (as in a log file): one line per unit, no \\r or escape codes."""
    assert main(["run", "toy", "--out", str(tmp_path / "run"), "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert [line.split(" (")[0] for line in err.splitlines() if "(" in line] == [
        "k0: 1/1 steps", "toy study: 1/4 units", "k1: 1/1 steps", "toy study: 2/4 units", "k2: 1/1 steps",
        "toy study: 3/4 units", "toy study: 4/4 units"], err


# ---- results directories written by schema 1 (runs with grounding's setup / noise / seed columns)
_V1_RUNS = next(stmt for stmt in V1_SCHEMA if "EXISTS runs (" in stmt).replace(
    "CREATE TABLE IF NOT EXISTS runs (", "CREATE TABLE runs_v1 (")


def _as_schema_1(db):
    """Rewrite a store's ``runs`` table as schema 1 had it (the old code's SQL), labels back into
    setup / noise / seed, ``user_version`` 1; checkpoints and metrics keep referring to it."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA foreign_keys=OFF")
    con.execute("BEGIN")
    con.execute(_V1_RUNS)
    for run_id, labels, *rest in con.execute("SELECT run_id, labels, status, started, finished, wall_seconds, "
                                             "error FROM runs").fetchall():
        lab = json.loads(labels)
        con.execute("INSERT INTO runs_v1 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, lab.get("setup"), lab.get("noise"), lab.get("seed"), *rest])
    con.execute("DROP TABLE runs")
    con.execute("ALTER TABLE runs_v1 RENAME TO runs")
    con.execute("UPDATE study SET value = '1' WHERE key = 'schema_version'")
    con.execute("PRAGMA user_version=1")
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _table(db, sql):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_schema_1_store_is_read_in_place_and_migrated_on_resume(tmp_path, capsys, toy, monkeypatch):
    # the toy's runs labelled as schema 1 could hold them (setup, seed)
    monkeypatch.setitem(registry._REGISTRY, "toy", dataclasses.replace(
        TOY, plan=lambda cfg: [studies.Unit("square", f"k{k}", k, {"setup": "sq", "seed": k}) for k in range(cfg.n)],
        report=lambda store, out_dir: _report_v1(store)))
    out = tmp_path / "run"
    run = ["run", "toy", "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(run) == 0
    db = out / "results.sqlite"
    report = (out / "report.md").read_text()
    counts = {t: _table(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("checkpoints", "metrics", "units")}
    _as_schema_1(db)
    assert _table(db, "SELECT run_id, setup, noise, seed FROM runs ORDER BY run_id") == [
        ("k0", "sq", None, 0), ("k1", "sq", None, 1), ("k2", "sq", None, 2)]
    old = db.read_bytes()
    # read-only opens (report, export, verify) see schema 2 and leave the file as it was
    with ResultStore(db, read_only=True) as store:
        assert [r["labels"] for r in store.runs()] == [{"seed": k, "setup": "sq"} for k in range(3)]
        assert store.runs(labels={"seed": 1})[0]["run_id"] == "k1"
    capsys.readouterr()
    assert main(["report", str(out), "--to", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").read_text() == report
    assert main(["export", str(out), "--to", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "runs.csv").read_text().splitlines()[:2] == [
        "run_id,labels,status,started,finished,wall_seconds,error", (tmp_path / "e" / "runs.csv").read_text()
        .splitlines()[1]] and '"{""seed"":0,""setup"":""sq""}"' in (tmp_path / "e" / "runs.csv").read_text()
    assert main(["verify", str(out)]) == 0
    assert db.read_bytes() == old and _table(db, "PRAGMA user_version") == [(1,)]
    # a rerun (resume) migrates the store in place: nothing lost, nothing recomputed
    assert main(run) == 0 and PREPARED == [str(out)]
    assert (out / "report.md").read_text() == report
    assert _table(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [c[1] for c in _table(db, "PRAGMA table_info(runs)")] == [
        "run_id", "labels", "status", "started", "finished", "wall_seconds", "error"]
    assert {t: _table(db, f"SELECT count(*) FROM {t}")[0][0] for t in counts} == counts
    assert _table(db, "PRAGMA foreign_key_check") == []
    with ResultStore(db, read_only=True) as store:
        assert store.study_info()["schema_version"] == str(SCHEMA_VERSION)
        assert store.run("k2")["labels"] == {"seed": 2, "setup": "sq"} and store.run("k2")["status"] == "done"
        assert all(store.verify_checkpoint(c["run_id"], c["epoch"]) for c in store.checkpoints())


def _report_v1(store):
    from grounded_fast.experiments.report import Report
    rep = Report("Toy study")
    rep.add_table(["run", "labels", "status"], [[r["run_id"], json.dumps(r["labels"], sort_keys=True), r["status"]]
                                                for r in store.runs()])
    return rep
