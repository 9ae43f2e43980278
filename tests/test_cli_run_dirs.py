"""The CLI and run directories: ``report`` / ``export`` only read (missing, empty, damaged, read-only
or busy directories), a damaged store is never overwritten, and one run at a time per ``--out``."""
import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from grounded_fast.cli import main
from grounded_fast.experiments.run_lock import hold_run_lock
from grounded_fast.experiments.store import ResultStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = 'num_scenes = 40\nsetups = ["P", "C"]\nnoise_levels = [0.0]\nseeds = [0]\nepochs = 1\ncheckpoint_epochs = [1]\n'


def _groundedbert_run(run_dir):
    """A run directory as ``run groundedbert`` leaves it (store and report), without training."""
    with ResultStore(run_dir / "results.sqlite") as store:
        store.begin_study("groundedbert", {"variants": ["bert", "bert+ot"]})
        for variant, acc in (("bert", 0.625), ("bert+ot", 0.875)):
            store.complete_unit(f"variant/{variant}", "variant", {},
                                metrics=[{"run_id": variant, "name": "dev_accuracy", "value": acc}])
    assert main(["report", str(run_dir)]) == 0
    assert "0.875" in (run_dir / "report.md").read_text()
    return run_dir


def _listing(d):
    """The files under ``d`` but SQLite's -wal / -shm (a reader may leave them, empty: see the callers)."""
    return sorted(os.path.relpath(os.path.join(root, f), d) for root, _, files in os.walk(d) for f in files
                  if not f.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("cmd", ["report", "export"])
def test_no_run_is_refused_and_nothing_created(tmp_path, capsys, cmd):
    missing = tmp_path / "missing"
    assert main([cmd, str(missing)]) == 2
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([cmd, str(empty)]) == 2
    assert os.listdir(empty) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("holds no run" in line for line in err), err


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_store_is_one_clear_error_and_nothing_is_overwritten(tmp_path, capsys, damage):
    run_dir = _groundedbert_run(tmp_path / "run")
    db = run_dir / "results.sqlite"
    data = db.read_bytes()
    assert not os.path.getsize(f"{db}-wal") if os.path.exists(f"{db}-wal") else True  # all in `data`
    db.write_bytes(b"" if damage == "empty" else data[:len(data) // 2])
    before = {f: (run_dir / f).read_bytes() for f in _listing(run_dir)}
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 2
    assert main(["export", str(run_dir)]) == 2
    assert main(["run", "groundedbert", "--out", str(run_dir), "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("restore it from a backup, or start the study afresh with `grounded-fast run "
                                 "... --force-new`" in line for line in err), err
    assert {f: (run_dir / f).read_bytes() for f in _listing(run_dir) if f != "run.lock"} == before


@pytest.fixture
def start_only(monkeypatch):
    """``run``'s study work replaced by the runner's start (lock, store, config recorded)."""
    from grounded_fast import cli
    from grounded_fast.experiments.runner import _study

    def start(study, cfg, out, progress, executor, force_new=False):
        with _study(study, cfg, out, force_new):
            pass
        return 0
    monkeypatch.setattr(cli, "_run_and_report", start)


def test_force_new_sets_a_damaged_or_other_store_aside_and_starts_afresh(tmp_path, capsys, start_only):
    run_dir = _groundedbert_run(tmp_path / "run")
    db = run_dir / "results.sqlite"
    db.write_bytes(b"")
    run = ["run", "groundedbert", "--out", str(run_dir), "--no-progress"]
    assert main(run) == 2
    assert main(run + ["--force-new"]) == 0
    kept = [f for f in os.listdir(run_dir) if f.startswith("results.sqlite.set-aside-") and "-wal" not in f
            and "-shm" not in f]
    assert len(kept) == 1 and (run_dir / kept[0]).read_bytes() == b""
    with ResultStore(db, read_only=True) as store:
        assert store.study_info()["name"] == "groundedbert" and not store.units()
    # another study's store in --out: refused, then set aside with --force-new
    capsys.readouterr()
    other = ["run", "grounding", "--out", str(run_dir), "--no-progress"]
    assert main(other) == 2
    assert "--force-new to start afresh" in capsys.readouterr().err
    assert main(other + ["--force-new"]) == 0
    with ResultStore(db, read_only=True) as store:
        assert store.study_info()["name"] == "grounding"
    assert len([f for f in os.listdir(run_dir) if f.startswith("results.sqlite.set-aside-")
                and not f.endswith(("-wal", "-shm"))]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(run + ["--force-new", "--resume"])
    assert exit_.value.code == 2


def _run_without_root_override(code):
    """Run ``code`` in a Python subprocess for which file permissions apply: as is for a normal user;
    as root, with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped (skips where that is impossible)."""
    def drop():
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec too
                    os._exit(99)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=drop, env=env,
                         capture_output=True, text=True, timeout=300)
    if res.returncode == 99:
        pytest.skip("cannot drop root's permission override here")
    return res


@pytest.mark.skipif(sys.platform != "linux", reason="Linux permissions and capabilities")
@pytest.mark.parametrize("sqlite_files", ["left by a reader", "none"])
def test_report_and_export_from_a_read_only_directory(tmp_path, sqlite_files):
    run_dir = _groundedbert_run(tmp_path / "run")
    if sqlite_files == "none":  # as a writer leaves it: SQLite cannot make its -shm file here
        for suffix in ("-wal", "-shm"):
            (run_dir / f"results.sqlite{suffix}").unlink(missing_ok=True)
    before = {f: (run_dir / f).read_bytes() for f in _listing(run_dir)}
    os.chmod(run_dir, 0o555)
    try:
        probe = _run_without_root_override(f"open({str(run_dir / 'probe')!r}, 'w')")
        assert probe.returncode != 0 and "Permission" in probe.stderr, "the directory is not read-only"
        res = _run_without_root_override(f"""
            from grounded_fast.cli import main
            assert main(["export", {str(run_dir)!r}, "--to", {str(tmp_path / "csv")!r}]) == 0
            assert main(["report", {str(run_dir)!r}, "--to", {str(tmp_path / "rep")!r}]) == 0
        """)
    finally:
        os.chmod(run_dir, 0o755)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "0.875" in (tmp_path / "rep" / "report.md").read_text()
    assert "dev_accuracy" in (tmp_path / "csv" / "metrics.csv").read_text()
    assert {f: (run_dir / f).read_bytes() for f in _listing(run_dir)} == before


def test_report_and_export_read_a_store_being_written(tmp_path):
    run_dir = _groundedbert_run(tmp_path / "run")
    writer = sqlite3.connect(run_dir / "results.sqlite", timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a run committing a unit holds the write lock
        writer.execute("DELETE FROM metrics")
        assert main(["export", str(run_dir), "--to", str(tmp_path / "csv")]) == 0
        assert main(["report", str(run_dir), "--to", str(tmp_path / "rep")]) == 0
    finally:
        writer.rollback()
        writer.close()
    assert "0.875" in (tmp_path / "rep" / "report.md").read_text()


HOLDER = textwrap.dedent("""
    import sys, time
    from grounded_fast.experiments.run_lock import hold_run_lock
    with hold_run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_second_run_on_one_out_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = main(["run", "grounding", "--preset", "tiny", "--config", str(cfg), "--out", str(out),
                   "--no-progress", "--workers", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"in use by another run (pid {holder.pid}" in err[0], err
        assert os.listdir(out) == ["run.lock"]  # nothing trained, nothing stored
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock of a dead holder
        holder.wait()
        holder.stdout.close()
    with hold_run_lock(out):
        pass


def _run_with_files(run_dir):
    """A run directory whose unit recorded a file (as a variant's head.pt) and with a feature cache of
    two shards (as the studies' encoder caches)."""
    import numpy as np

    from grounded_fast._atomic import write_atomic
    from grounded_fast.data.features import FeatureCache
    head = write_atomic(run_dir / "variants" / "bert" / "head.pt", bytes(range(200)))
    with ResultStore(run_dir / "results.sqlite") as store:
        store.begin_study("groundedbert", {"variants": ["bert"]})
        store.complete_unit("variant/bert", "variant",
                            {"files": {"variants/bert/head.pt": {"sha256": head.sha256, "size": head.size}}},
                            metrics=[{"run_id": "bert", "name": "dev_accuracy", "value": 0.5}])
    FeatureCache(run_dir / "features", progress=False).get_or_compute(
        [str(i) for i in range(4)], list, lambda ids: np.stack([np.full(3, float(i)) for i in ids]),
        batch_size=2, key="encoder:v1")
    return run_dir


@pytest.mark.parametrize("damage", ["shard", "head", "none"])
def test_report_and_verify_check_shards_and_recorded_files(tmp_path, capsys, damage):
    run_dir = _run_with_files(tmp_path / "run")
    shards = sorted(run_dir.glob("features/*/shard-*.npz"))
    assert len(shards) == 2
    target = {"shard": shards[0], "head": run_dir / "variants" / "bert" / "head.pt"}.get(damage)
    if target is not None:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    capsys.readouterr()
    expected = 0 if target is None else 1
    assert main(["verify", str(run_dir)]) == expected
    assert main(["report", str(run_dir)]) == expected
    assert main(["report", str(run_dir), "--no-verify"]) == 0
    out, err = capsys.readouterr()
    if target is None:
        assert "ok: 0 checkpoints, 1 files, 2 feature shards verified" in out and not err
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 4 and str(target) in lines[0] and "1 problem(s)" in lines[1], lines
    assert main(["verify", str(tmp_path / "nothing")]) == 2
