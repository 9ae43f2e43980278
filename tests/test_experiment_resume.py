"""A real study run killed with SIGKILL resumes: rerunning the same command finishes it with every
unit recorded once, verified checkpoints and an intact database; a finished run reruns as a no-op."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

MICRO = """
num_scenes = 40
setups = ["P", "C"]
noise_levels = [0.0]
seeds = [0, 1]
epochs = 2
checkpoint_epochs = [1, 2]
batch_size = 8
"""


def _cmd(cfg, out):
    return [sys.executable, "-m", "grounded_fast.cli", "run", "grounding", "--preset", "tiny", "--config", str(cfg),
            "--out", str(out), "--no-progress"]


def _done_train_units(db):
    if not os.path.exists(db):
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        n = con.execute("SELECT COUNT(*) FROM units WHERE status = 'done' AND kind = 'train'").fetchone()[0]
        con.close()
        return n
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume(tmp_path):
    from grounded_fast.experiments.store import ResultStore
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    out = tmp_path / "run"
    db = out / "results.sqlite"
    # one worker, polled every 10 ms: the four training units of this tiny study take 0.1-0.2 s each,
    # and with two workers and 0.2 s polls the run sometimes finished all four between two looks
    proc = subprocess.Popen(_cmd(cfg, out) + ["--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while _done_train_units(db) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _done_train_units(db)
    assert 1 <= killed_at < 4
    res = subprocess.run(_cmd(cfg, out), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout
    with ResultStore(str(db)) as store:
        units = store.units()
        ids = [u["unit_id"] for u in units]
        assert len(ids) == len(set(ids)) == 1 + 4 + 1          # features, 4 training runs, analysis
        assert all(u["status"] == "done" for u in units)
        ckpts = store.checkpoints()
        assert len(ckpts) == 8 and all(store.verify_checkpoint(c["run_id"], c["epoch"]) for c in ckpts)
        assert len(store.metrics(name="val_token_accuracy")) == 8
        assert store.integrity_check() == []
    first_report = (out / "report.md").read_text()
    again = subprocess.run(_cmd(cfg, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert (out / "report.md").read_text() == first_report      # nothing recomputed differently
