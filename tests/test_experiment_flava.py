"""The FLAVA ablation study end to end at micro scale through the command line: every cell is
trained and evaluated (PPPL, BLiMP on the shipped subset), the report is written, and rerunning
the finished command recomputes nothing."""
import subprocess
import sys

from grounded_fast.experiments.flava_ablation import FlavaStudyConfig, plan_cells, unpack_blimp_groups

MICRO = """
text_volumes = [2000, 6000]
image_volumes = [0, 30]
steps = 12
eval_every = 6
batch_size = 16
pppl_sentences = 10
blimp_pairs_per_phenomenon = 1
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
        assert {r["name"] for r in rows} == {"pppl", "blimp", "step"}
        assert all(0 <= r["value"] <= 100 for r in rows if r["name"] == "blimp")
        assert all(r["value"] > 1 for r in rows if r["name"] == "pppl")
        assert len(store.checkpoints()) == 4 and store.integrity_check() == []
        for unit in store.units(kind="cell"):           # each pair's paradigm, for the per-category tables
            groups = unpack_blimp_groups(unit["payload"]["blimp_groups"])
            assert len(groups) == 67 and {n for *_, n in groups} == {1}
            assert len(unit["payload"]["blimp_correct"]) == 67
    report = (out / "report.md").read_text()
    assert "BLiMP" in report and "71.32" in report                 # ours beside the reference
    assert "| NPI licensing | 7 |" in report and "| mean of the 12 categories | 67 |" in report
    for row in ("| images vs text only | 2K / 30 | 2K / none | 0 |", "| images vs text only | 6K / 30 | 6K / none | 0 |",
                "| more text | 6K / none | 2K / none | 0 |", "| more text | 6K / 30 | 2K / 30 | 0 |"):
        assert row in report, row
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "report.md").read_text() == report


def test_flava_config_validation():
    cfg = FlavaStudyConfig.from_preset("tiny")
    assert len(plan_cells(cfg)) == 8
    import pytest
    with pytest.raises(ValueError, match="blimp_pairs_per_phenomenon"):
        FlavaStudyConfig.from_preset("tiny", blimp_pairs_per_phenomenon=50)
    with pytest.raises(ValueError, match="unknown"):
        FlavaStudyConfig.from_preset("tiny", wordz=3)
