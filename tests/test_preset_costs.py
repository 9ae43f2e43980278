"""Each preset's cost: the shipped table (every study x preset, provenance), `run --help` and the
README show it, and bench/preset_costs.py's arithmetic on fake timings."""
import contextlib
import importlib.util
import io
import pathlib

import pytest
import torch

from grounded_fast.cli import main
from grounded_fast.experiments import preset_costs, studies

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("preset_costs_script", ROOT / "bench" / "preset_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_table_covers_every_study_and_preset_with_provenance():
    costs = preset_costs.load()
    for name, m in costs["measurements"].items():
        assert m["commit"] and m["device"] and m["date"], name
    for name in studies.available():
        study = studies.get(name)
        assert sorted(costs[name]) == sorted(study.config_cls.presets), name
        for preset, row in costs[name].items():
            assert row["measurement"] in costs["measurements"]
            assert row["units"] == len(study.plan(study.config_cls.from_preset(preset))), (name, preset)
            if row["minutes_on_2_cores"] == "unmeasured":       # on the CPU; a GPU measurement may exist
                assert row["unmeasured_because"] and preset == "paper"
                continue
            assert row["minutes_on_2_cores"] > 0 and row["cpu_core_hours"] > 0 and row["step_seconds"]
        assert "end_to_end_minutes" in costs[name]["tiny"]
        gpu = costs[name]["paper"]["gpu_hours"]
        assert gpu == "unmeasured" or (gpu > 0 and costs[name]["paper"]["gpu_measurement"] in costs["measurements"])


def test_run_help_shows_the_table():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["run", "--help"])
    for line in preset_costs.table().splitlines():
        assert line in out.getvalue()


def test_readme_table_is_the_shipped_one():
    text = (ROOT / "README.md").read_text()
    start, end = preset_costs.README_MARKERS
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block.strip() == preset_costs.table().strip(), \
        "README's preset table is stale: python bench/preset_costs.py --write-shipped"


def test_fmt_minutes():
    assert [preset_costs.fmt_minutes(m) for m in (0.5, 1.6, 95, 150, 2500)] == ["30 s", "1.6 min", "95 min",
                                                                              "2.5 h", "42 h"]


def test_estimate_arithmetic():
    s = _script()
    entry = {"prepare": {"estimate_s": 10.0}, "after_s": 5.0, "unit_kinds": ["a", "a", "b"],
             "kinds": {"a": {"steps": {"train": {"per_unit": 100, "step_s": 0.5}}, "overhead_s": 2.0},
                       "b": {"steps": {"pre": {"per_unit": 10, "step_s": 1.0}, "fine": {"per_unit": 4, "step_s": 0.5}},
                             "overhead_s": 1.0}}}
    est = s.estimate(entry, workers=2, threads=2, threads_per_unit=1)
    assert est["unit_s"] == {"a": 52.0, "b": 13.0}
    assert est["units_s"] == 117.0
    assert est["wall_s"] == 10.0 + 65.0 + 5.0            # a | a, then b on the first free worker
    assert est["core_hours"] == pytest.approx((15.0 * 2 + 117.0) / 3600)
    assert s.makespan([3, 1, 1, 1], 2) == 3 and s.makespan([1, 1, 3], 2) == 4 and s.makespan([2, 2], 1) == 4


class _FakeProbe:
    """Replays fixed timestamps instead of running anything."""
    repeats = 3

    def __init__(self, shared, stamps):
        self.shared, self.stamps = shared, stamps

    def prepare(self, study, cfg):
        return 10.0, self.shared, "unused"

    def unit(self, study, unit, cfg, out_dir, shared):
        return self.stamps(unit)


def test_flava_probe_separates_steps_evaluation_and_build():
    s = _script()
    # 2 x 4 steps of 0.1 s; model build 2 s before the first; an evaluation of 1 s after step 4 and
    # after the last; BLiMP + save 0.5 s at the end
    ts = [2.1, 2.2, 2.3, 2.4, 3.5, 3.6, 3.7, 3.8]
    study = studies.get("flava-ablation")
    cfg = study.config_cls.from_preset("tiny", glue_steps=0)
    e = s.probe_flava(study, cfg, _FakeProbe(None, lambda u: (0.0, ts, 3.8 + 1.5)))
    k = e["kinds"]["text+images"]
    # the probe evaluates 20 of tiny's 100 PPPL sentences and 1 of its 5 BLiMP pairs per phenomenon
    assert k["steps"]["train"]["step_s"] == pytest.approx(0.1) and k["eval_s"] == pytest.approx(5 * 1.0)
    assert k["overhead_s"] == pytest.approx(2.0 + 3 * 5.0 + 5 * 0.5)    # tiny: 3 evaluations (40, 80, 120)
    assert s.unit_seconds(k) == pytest.approx(120 * 0.1 + 19.5)
    assert e["kinds"]["text"]["units"] == 2 and k["units"] == 6
    assert e["unit_kinds"] == ["text", "text+images", "text+images", "text+images"] * 2
    # the GLUE evaluation is timed apart (not scaled with the BLiMP pairs) and added to every cell
    s.probe_flava_glue = lambda cfg, shared, probe: 7.0
    k = s.probe_flava(study, study.config_cls.from_preset("tiny"), _FakeProbe(None, lambda u: (0.0, ts, 3.8 + 1.5)))
    assert k["kinds"]["text"]["glue_s"] == 7.0
    assert k["kinds"]["text+images"]["overhead_s"] == pytest.approx(2.0 + 3 * 5.0 + 5 * 0.5 + 7.0)


def test_groundedbert_probe_pretrain_and_finetune_steps():
    s = _script()
    # 4 pre-training steps of 0.2 s (build 1 s before), then 4 fine-tuning steps of 0.05 s, 0.3 s at the end
    pre = [1.2, 1.4, 1.6, 1.8]
    fine = [1.85, 1.9, 1.95, 2.0]
    study = studies.get("groundedbert")
    cfg = study.config_cls.from_preset("tiny", variants=("text-only", "partial-0.5"))
    stamps = lambda u: (0.0, fine, 2.3) if u.spec[0] == "text-only" else (0.0, pre + fine, 2.3)  # noqa: E731
    e = s.probe_groundedbert(study, cfg, _FakeProbe(None, stamps))
    k = e["kinds"]["partial-0.5"]
    assert k["steps"]["pretrain"]["step_s"] == pytest.approx(0.2)
    assert k["steps"]["finetune"]["step_s"] == pytest.approx(0.05)
    assert k["overhead_s"] == pytest.approx(2.3 - 4 * 0.2 - 4 * 0.05)
    assert s.unit_seconds(k) == pytest.approx(120 * 0.2 + 150 * 0.05 + 1.3)
    assert list(e["kinds"]["text-only"]["steps"]) == ["finetune"]
    assert e["prepare"]["estimate_s"] == 10.0
    assert k["units"] == 3 and e["unit_kinds"] == ["text-only"] * 3 + ["partial-0.5"] * 3   # one probe per variant


def test_cuda_without_cuda_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _script().main(["--device", "cuda", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


@pytest.mark.slow
def test_groundedbert_tiny_measured(tmp_path):
    s = _script()
    assert s.main(["--studies", "groundedbert", "--presets", "tiny", "--repeats", "1", "--out", str(tmp_path)]) == 0
    import json
    res = json.loads((tmp_path / "preset_costs-cpu.json").read_text())
    (e,) = res["entries"]
    assert e["estimate"]["wall_s"] > e["prepare"]["measured_s"] > 0
    assert res["meta"]["commit"] and len(res["meta"]["load_before"]) == 3
    assert (tmp_path / "preset_costs-cpu.md").read_text().count("| groundedbert | tiny |") == 1


def test_shipped_toml_round_trip():
    from grounded_fast._toml import tomllib
    s = _script()
    meta = {"commit": "abc", "dirty": False, "device": "cpu (x)", "date": "2025-01-01 00:00 UTC", "threads": 2,
            "load_before": [0.5, 0.4, 0.3], "load_after": [0.6, 0.5, 0.4]}

    def entry(preset, wall, e2e=None):
        e = {"study": "groundedbert", "preset": preset, "unit_kinds": ["text-only", "partial-0.5"],
             "kinds": {"text-only": {"steps": {"finetune": {"step_s": 0.001}}},
                       "partial-0.5": {"steps": {"pretrain": {"step_s": 0.02}, "finetune": {"step_s": 0.001}}}},
             "estimate": {"wall_s": wall, "core_hours": wall / 1800}}
        return {**e, "end_to_end_s": e2e} if e2e else e

    cpu = {"meta": meta, "entries": [entry("tiny", 30.0, 36.0), entry("paper", 7200.0)]}
    costs = tomllib.loads(s.shipped_toml(cpu, None))
    assert costs["measurements"]["cpu"]["commit"] == "abc"
    tiny, paper = costs["groundedbert"]["tiny"], costs["groundedbert"]["paper"]
    assert tiny["units"] == 2 and tiny["minutes_on_2_cores"] == 0.5 and tiny["end_to_end_minutes"] == 0.6
    assert tiny["step_seconds"] == {"text-only": 0.001, "partial-0.5 pretrain": 0.02, "partial-0.5 finetune": 0.001}
    assert "gpu_hours" not in tiny and paper["gpu_hours"] == "unmeasured"
    gpu = {"meta": {**meta, "device": "cuda (H100)"}, "entries": [entry("paper", 1800.0)]}
    costs = tomllib.loads(s.shipped_toml(cpu, gpu))
    assert costs["groundedbert"]["paper"]["gpu_hours"] == 0.5 and costs["measurements"]["cuda"]["device"] == "cuda (H100)"
    table = preset_costs.table(costs)
    assert "| groundedbert | tiny | 2 | 30 s | 36 s | - |" in table
    assert "| groundedbert | paper | 2 | 2 h | - | 0.5 |" in table


def test_update_merges_entries_with_their_own_provenance():
    """--update: the re-measured entry replaces its own, carries its run's provenance into the
    shipped TOML as a measurement of its own, and the table names the rows it covers."""
    from grounded_fast._toml import tomllib
    s = _script()
    meta = {"commit": "abc", "dirty": False, "device": "cpu (x)", "date": "2025-01-01 00:00 UTC", "threads": 2,
            "load_before": [0.5, 0.4, 0.3], "load_after": [0.6, 0.5, 0.4]}

    def entry(preset, wall, e2e=None):
        e = {"study": "groundedbert", "preset": preset, "unit_kinds": ["text-only"],
             "kinds": {"text-only": {"steps": {"finetune": {"step_s": 0.001}}}},
             "estimate": {"wall_s": wall, "core_hours": wall / 1800}}
        return {**e, "end_to_end_s": e2e} if e2e else e

    old = {"meta": meta, "entries": [entry("tiny", 30.0, 36.0), entry("small", 600.0)]}
    new_meta = {**meta, "commit": "def", "date": "2025-02-03 04:05 UTC"}
    merged = s.merge(old, {"meta": new_meta, "entries": [entry("small", 1200.0, 1500.0)]})
    assert merged["meta"] == meta and [e["preset"] for e in merged["entries"]] == ["tiny", "small"]
    assert "meta" not in merged["entries"][0] and merged["entries"][1]["meta"] == new_meta
    costs = tomllib.loads(s.shipped_toml(merged, None))
    small = costs["groundedbert"]["small"]
    assert costs["groundedbert"]["tiny"]["measurement"] == "cpu"
    assert costs["measurements"][small["measurement"]]["commit"] == "def"
    assert small["minutes_on_2_cores"] == 20.0 and small["end_to_end_minutes"] == 25.0
    table = preset_costs.table(costs)
    assert "| groundedbert | small | 1 | 20 min | 25 min | - |" in table
    assert f"Measured ({small['measurement']}; groundedbert small): cpu (x), commit def" in table
    assert "Measured (cpu): cpu (x), commit abc" in table
