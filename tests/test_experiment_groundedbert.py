"""The GroundedBERT study end to end at micro scale through the command line (real frozen encoders,
the built-in GLUE-format task written and read back in SST-2 format), then a no-op rerun."""
import subprocess
import sys

import numpy as np
import pytest
import torch

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
    assert sum("dev score" in ln and "(2 seeds)" in ln for ln in res.stdout.splitlines()) == 3
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


GLUE_FILES = {   # task -> (train / dev file names, header, one row per label kind)
    "cola": ("dev.tsv", None, ["gj04\t1\t\tthe dog runs fast .", "gj04\t0\t*\tthe dog run fast quickly the ."]),
    "mrpc": ("dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             ["1\t1\t2\ta dog runs .\ta dog is running .", "0\t3\t4\ta cat sleeps .\tthe market fell ."]),
    "stsb": ("dev.tsv", "index\tsentence1\tsentence2\tscore",
             ["0\ta dog runs .\ta dog is running .\t4.6", "1\ta cat sleeps .\tthe market fell .\t0.2"]),
    "mnli": ("dev_matched.tsv", "index\tsentence1\tsentence2\tgold_label",
             ["0\ta dog runs .\tan animal moves .\tentailment", "1\ta dog runs .\ta cat sleeps .\tneutral",
              "2\ta dog runs .\tno dog runs .\tcontradiction"]),
}


@pytest.fixture(scope="module")
def glue_run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("glue-run")     # one feature cache: the pre-training data is encoded once


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_every_glue_layout_from_a_path(glue_run_dir, tmp_path, task):
    """A GLUE task from a path in its release layout (MNLI's dev_matched.tsv, CoLA without a header,
    pairs, STS-B's float scores): read, encoded (a pair as one sequence split by the encoder's
    separator), a classifier or regressor trained, and scored by the task's GLUE metric."""
    from scipy import stats
    from sklearn import metrics
    from grounded_fast.data.formats.glue import GLUE_TASKS, glue_score
    from grounded_fast.experiments.groundedbert_study import prepare, run_variant
    dev_file, header, rows = GLUE_FILES[task]
    for name, n in (("train.tsv", 8), (dev_file, 4)):
        lines = ([header] if header else []) + [r for _ in range(n) for r in rows]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cfg = GroundedBertStudyConfig.from_preset("tiny", num_scenes=40, pretrain_steps=2, finetune_steps=6, batch_size=4,
                                              seeds=[0], variants=["text-only", "balanced"],
                                              downstream={"kind": "glue", "path": str(tmp_path), "task": task})
    data = prepare(cfg, str(glue_run_dir))
    spec = GLUE_TASKS[task]
    assert data["num_labels"] == spec.num_labels and len(data["task"]["dev"][1]) == 4 * len(rows)
    assert data["task"]["train"][1].dtype == (torch.float32 if task == "stsb" else torch.long)
    metrics_, _ = run_variant("balanced", 0, cfg, data, str(tmp_path / "out"))
    assert ("dev_accuracy" in metrics_) == (task != "stsb") and np.isfinite(metrics_["dev_score"])
    # the score is the task's GLUE metric (sklearn / scipy on the same predictions)
    y = np.array([0, 1, 1, 0]) if task != "stsb" else np.array([0.1, 0.9, 0.5, 0.3])
    p = np.array([0, 1, 0, 0]) if task != "stsb" else np.array([0.2, 0.8, 0.7, 0.1])
    expected = {"accuracy": metrics.accuracy_score, "f1": metrics.f1_score, "matthews": metrics.matthews_corrcoef,
                "pearson": lambda a, b: stats.pearsonr(a, b)[0]}[spec.metric](y, p)
    assert glue_score(task, p, y) == pytest.approx(expected)
