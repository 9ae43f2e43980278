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
seeds = [0, 1]
"""


def test_groundedbert_micro_run(tmp_path):
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    out = tmp_path / "gb"
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", "groundedbert", "--config", str(cfg), "--out", str(out),
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum("dev accuracy" in ln and "(2 seeds)" in ln for ln in res.stdout.splitlines()) == 3
    assert (out / "glue-demo" / "train.tsv").read_text().startswith("sentence\tlabel\n")
    from grounded_fast.experiments.store import ResultStore
    with ResultStore(str(out / "results.sqlite")) as store:
        acc = {m["run_id"]: m["value"] for m in store.metrics(name="dev_accuracy")}
        share = {m["run_id"]: m["value"] for m in store.metrics(name="ot_share_of_step_time")}
        assert set(acc) == {f"{v}-seed{s}" for v in ("text-only", "none", "partial-0.5") for s in (0, 1)}
        assert all(0 <= v <= 1 for v in acc.values())
        assert share["none-seed1"] == 0.0 and 0 < share["partial-0.5-seed1"] < 1
        assert {m["value"] for m in store.metrics(name="dev_majority")} == {0.6}     # 720 straight of 1,200
        assert store.integrity_check() == []
    report = (out / "report.md").read_text()
    assert "partial-0.5" in report and "GroundedBERT" in report and "| seeds | 2 per variant (0, 1) |" in report
    assert "paired t over seeds" in report and "majority label scores 0.600" in report
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "report.md").read_text() == report


def test_the_built_in_task_holds_the_dev_shapes_out(tmp_path):
    """The built-in task's label is read off the renderer's geometry (a curved outline), the first
    ten shapes train and the last ten score, and no dev shape word occurs in the training sentences."""
    from grounded_fast.data.demo import SHAPES
    from grounded_fast.data.formats.glue import load_glue_tsv
    from grounded_fast.experiments.groundedbert_study import demo_glue_task, demo_shape_is_curved
    demo_glue_task(str(tmp_path))
    split = {s: load_glue_tsv(str(tmp_path / f"{s}.tsv"), "sst2") for s in ("train", "dev")}
    assert (len(split["train"]), len(split["dev"])) == (1200, 1200)
    words = {s: {w.strip(".") for e in ex for w in e.texts[0].split()} for s, ex in split.items()}
    assert set(SHAPES[:10]) <= words["train"] and not set(SHAPES[10:]) & words["train"]
    assert set(SHAPES[10:]) <= words["dev"] and not set(SHAPES[:10]) & words["dev"]
    for ex in split.values():
        for e in ex:
            shape = e.texts[0].strip(".").split()[-1]
            assert int(e.label) == demo_shape_is_curved(shape)
    curved = [s for s in SHAPES if demo_shape_is_curved(s)]
    assert curved == ["circle", "heart", "ring", "oval", "moon", "semicircle", "teardrop"]


def test_groundedbert_config_validation():
    with pytest.raises(ValueError, match="partial-<mass"):
        GroundedBertStudyConfig.from_preset("tiny", variants=["partial-2"])
