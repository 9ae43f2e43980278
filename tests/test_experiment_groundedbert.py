"""The GroundedBERT study end to end at micro scale through the command line (real frozen encoders,
the built-in GLUE-format task written and read back in SST-2 format), then a no-op rerun."""
import subprocess
import sys

import pytest

from grounded_fast.experiments.groundedbert_study import GroundedBertStudyConfig

MICRO = """
num_scenes = 40
variants = ["text-only", "none", "partial-0.5"]
pretrain_steps = 8
finetune_steps = 20
batch_size = 8
"""


def test_groundedbert_micro_run(tmp_path):
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    out = tmp_path / "gb"
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", "groundedbert", "--config", str(cfg), "--out", str(out),
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum("dev accuracy" in ln for ln in res.stdout.splitlines()) == 3
    assert (out / "glue-demo" / "train.tsv").read_text().startswith("sentence\tlabel\n")
    from grounded_fast.experiments.store import ResultStore
    with ResultStore(str(out / "results.sqlite")) as store:
        acc = {m["run_id"]: m["value"] for m in store.metrics(name="dev_accuracy")}
        share = {m["run_id"]: m["value"] for m in store.metrics(name="ot_share_of_step_time")}
        assert set(acc) == {"text-only", "none", "partial-0.5"} and all(0 <= v <= 1 for v in acc.values())
        assert share["none"] == 0.0 and 0 < share["partial-0.5"] < 1
        assert store.integrity_check() == []
    report = (out / "report.md").read_text()
    assert "partial-0.5" in report and "GroundedBERT" in report
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "report.md").read_text() == report


def test_groundedbert_config_validation():
    with pytest.raises(ValueError, match="partial-<mass"):
        GroundedBertStudyConfig.from_preset("tiny", variants=["partial-2"])
