"""The FLAVA ablation study end to end at micro scale through the command line: every cell is
trained and evaluated (PPPL, BLiMP on the shipped subset), the report is written, and rerunning
the finished command recomputes nothing."""
import subprocess
import sys

import pytest

from grounded_fast.data import BLIMP_BUILTIN
from grounded_fast.experiments.flava_ablation import FlavaStudyConfig, plan_cells, unpack_blimp_groups

MICRO = """
text_volumes = [2000, 6000]
image_volumes = [0, 30]
steps = 12
eval_every = 6
batch_size = 16
pppl_sentences = 10
blimp_pairs_per_phenomenon = 1
glue_steps = 20
"""


def test_flava_ablation_micro_run(tmp_path):
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO)
    out = tmp_path / "flava"
    cmd = [sys.executable, "-m", "grounded_fast.cli", "run", "flava-ablation", "--config", str(cfg), "--out", str(out),
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if "BLiMP" in ln]
    assert len(lines) == 4
    from grounded_fast.experiments.store import ResultStore
    with ResultStore(str(out / "results.sqlite")) as store:
        rows = store.metrics(split="best")
        assert {r["name"] for r in rows} == {"pppl", "blimp", "step", "glue"}
        assert all(0 <= r["value"] <= 1 for r in rows if r["name"] == "glue")       # the demo task's accuracy
        assert all(0 <= r["value"] <= 100 for r in rows if r["name"] == "blimp")
        assert all(r["value"] > 1 for r in rows if r["name"] == "pppl")
        assert len(store.checkpoints()) == 4 and store.integrity_check() == []
        for unit in store.units(kind="cell"):           # each pair's paradigm, for the per-category tables
            groups = unpack_blimp_groups(unit["payload"]["blimp_groups"])
            assert len(groups) == 67 and {n for *_, n in groups} == {1}
            assert len(unit["payload"]["blimp_correct"]) == 67
    report = (out / "report.md").read_text()
    assert "BLiMP" in report and "71.32" in report                 # ours beside the reference
    assert "GLUE demo task accuracy" in report and "after 20 fine-tuning steps" in report
    assert "| NPI licensing | 7 |" in report and "| mean of the 12 categories | 67 |" in report
    for row in ("| images vs text only | 2K / 30 | 2K / none | 0 |", "| images vs text only | 6K / 30 | 6K / none | 0 |",
                "| more text | 6K / none | 2K / none | 0 |", "| more text | 6K / 30 | 2K / 30 | 0 |"):
        assert row in report, row
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "report.md").read_text() == report


def test_flava_config_validation():
    cfg = FlavaStudyConfig.from_preset("tiny")
    assert len(plan_cells(cfg)) == 8
    with pytest.raises(ValueError, match="blimp_pairs_per_phenomenon = 1001: must be in"):
        FlavaStudyConfig.from_preset("tiny", blimp_pairs_per_phenomenon=1001)
    more = FlavaStudyConfig.from_preset("tiny", blimp_pairs_per_phenomenon=50)    # the release from a path may hold them
    with pytest.raises(ValueError, match="blimp_pairs_per_phenomenon = 50: must be <= 20 with the shipped BLiMP"):
        more.check_runnable()                   # the shipped subset does not: refused before a run writes anything
    zip_cfg = FlavaStudyConfig.from_preset("tiny", blimp_pairs_per_phenomenon=50,
                                           blimp={"kind": "blimp", "path": BLIMP_BUILTIN})
    zip_cfg.check_runnable()                    # a path is counted when the study prepares its inputs
    from grounded_fast.experiments.flava_ablation import prepare
    with pytest.raises(ValueError, match=r"= 50 exceeds the pairs of 67 BLiMP paradigm\(s\) in .*blimp_first20.zip"):
        prepare(zip_cfg, "/nonexistent-never-written")
    with pytest.raises(ValueError, match="unknown"):
        FlavaStudyConfig.from_preset("tiny", wordz=3)


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_flava_glue_evaluation_reads_a_glue_directory(tmp_path, task):
    """The GLUE evaluation from a path: sentence pairs encoded as the tokenizer's pairs, a
    classifier (MRPC, F1) or regressor (STS-B, Pearson) fine-tuned on the text encoder's [CLS] state,
    the task's metric returned; the model handed in is left untouched."""
    import numpy as np
    import torch

    import grounded_fast.models as gm
    from grounded_fast.experiments.flava_ablation import _glue_splits, glue_finetune, tokenizer
    header, rows = {"mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                             ["1\t1\t2\ta dog runs .\ta dog is running .", "0\t3\t4\ta cat sleeps .\tthe market fell ."]),
                    "stsb": ("index\tsentence1\tsentence2\tscore",
                             ["0\ta dog runs .\ta dog is running .\t4.6", "1\ta cat sleeps .\tthe market fell .\t0.2"])}[task]
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("\n".join([header] + rows * 4) + "\n")
    cfg = FlavaStudyConfig.from_preset("tiny", glue={"kind": "glue", "path": str(tmp_path), "task": task},
                                       glue_steps=4, batch_size=4)
    tok = tokenizer()
    glue = _glue_splits(cfg, tok, str(tmp_path / "run"))
    ids, labels = glue["dev"]
    assert ids.shape == (8, cfg.max_text_len) and int((ids[0] == tok.sep_token_id).sum()) == 2   # a pair
    assert labels.dtype == (torch.float32 if task == "stsb" else torch.long)
    model = gm.build("flava", "tiny", vocab_size=tok.vocab_size, max_text_len=cfg.max_text_len, pad_id=tok.pad_token_id,
                     cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, mask_id=tok.mask_token_id)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = glue_finetune(model, glue, cfg, seed=0, device="cpu")
    assert np.isfinite(score) and -1 <= score <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pretraining_optimizer_default_and_the_authors_schedule():
    """Default: one AdamW learning rate, constant (the tiny / small runs as before). Paper: the
    authors' text-encoder rate in its own group, linear warm-up from 0, cosine decay to 0."""
    import grounded_fast.models as gm
    from grounded_fast.experiments.flava_ablation import _optimizer
    model = gm.build("flava", "tiny", vocab_size=100, max_text_len=8)

    def trace(cfg, at):
        opt, schedule = _optimizer(model, cfg)
        out = {}
        for step in range(max(at) + 1):
            if step in at:
                out[step] = [g["lr"] for g in opt.param_groups]
            opt.step()
            schedule.step()
        return opt, out

    opt, lrs = trace(FlavaStudyConfig.from_preset("tiny"), {0, 50, 119})
    assert len(opt.param_groups) == 1 and set(map(tuple, lrs.values())) == {(1e-3,)}
    assert opt.defaults["weight_decay"] == 0.01
    paper = FlavaStudyConfig.from_preset("paper")
    opt, lrs = trace(paper, {0, 5000, 10000, 15000, 20000})
    text = {id(p) for m in (model.tok, model.tpos, model.text_enc) for p in m.parameters()}
    assert {id(p) for p in model.text_parameters()} == text
    assert {id(p) for p in opt.param_groups[1]["params"]} == text
    assert lrs[0] == [0.0, 0.0] and lrs[10000] == pytest.approx([1e-3, 7.5e-4])
    assert lrs[5000] == pytest.approx([5e-4, 3.75e-4]) and lrs[15000] == pytest.approx([5e-4, 3.75e-4])
    assert lrs[20000] == pytest.approx([0.0, 0.0], abs=1e-12) and opt.defaults["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="lr_schedule = 'linear': must be one of"):
        FlavaStudyConfig.from_dict({"lr_schedule": "linear"})
