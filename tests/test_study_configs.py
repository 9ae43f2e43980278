"""Study configs are checked in full before a run writes anything: a bad value (or a bad config
file) is one line naming the file, the key, the value and what is allowed, the CLI exits 2, the
output directory is left as it was, and the corrected command then runs on the same --out."""
import json
import os

import pytest

from grounded_fast import cli
from grounded_fast.experiments.flava_ablation import FlavaStudyConfig
from grounded_fast.experiments.groundedbert_study import GroundedBertStudyConfig
from grounded_fast.experiments.grounding import GroundingStudyConfig
from grounded_fast.experiments.store import ResultStore

CONFIGS = {"grounding": GroundingStudyConfig, "flava-ablation": FlavaStudyConfig,
           "groundedbert": GroundedBertStudyConfig}


@pytest.fixture
def study_start(monkeypatch):
    """The CLI's study work replaced by its start (the runner's ``_study``: out dir, store, config
    recorded), so that a test sees what a run would write first; the calls are returned."""
    from grounded_fast.experiments.runner import _study
    calls = []

    def start_only(study, cfg, out, progress, executor, force_new=False):
        with _study(study, cfg, out, force_new):
            calls.append(study)
        return 0

    monkeypatch.setattr(cli, "_run_and_report", start_only)
    return calls


def _run(tmp_path, study, toml, out):
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    return cli.main(["run", study, "--config", str(cfg), "--out", str(out), "--no-progress"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def _snapshot(d):
    return {p: (os.stat(os.path.join(d, p)).st_size, os.stat(os.path.join(d, p)).st_mtime_ns)
            for p in sorted(os.listdir(d))}


BAD_VALUES = [
    ("groundedbert", "ot_reg = -1", "ot_reg = -1.0: must be a finite number > 0"),
    ("groundedbert", "ot_reg = nan", "ot_reg = nan: must be a finite number"),
    ("groundedbert", "ot_weight = inf", "ot_weight = inf: must be a finite number"),
    ("groundedbert", 'model_preset = "huge"', "model_preset = 'huge': must be one of ['paper', 'small', 'tiny']"),
    ("groundedbert", '[downstream]\ntask = "nope"', "downstream.task = 'nope': must be a GLUE task, one of"),
    ("groundedbert", '[downstream]\nkind = "glue"\npath = "{missing}"',
     "downstream.path = '{missing}': no such file or directory"),
    ("groundedbert", '[downstream]\nkind = "glue"\npath = "{here}"',
     "downstream.path = '{here}': must be a GLUE task directory holding train.tsv and dev.tsv (missing: train.tsv, "
     "dev.tsv)"),
    ("groundedbert", '[data]\nkind = "wit"', "data.kind = 'wit': must be one of ['demo', 'coco'] for this study"),
    ("groundedbert", '[data]\ntext_encoder = "{here}"',
     "data.text_encoder = '{here}': not a Hugging Face model directory (no config.json in it)"),
    ("grounding", '[data]\nkind = "vatex"', "data.path = '': must name the vatex data"),
    ("grounding", '[data]\npath = "{here}"', "data.path = '{here}': must be empty for kind 'demo'"),
    ("grounding", '[data]\nkind = "vatex"\npath = "{here}"', "data.path = '{here}': not a vatex data set: "),
    ("grounding", '[data]\nsplit = "x"', "unknown GroundingStudyConfig.data key(s) ['split']"),
    ("grounding", 'data = 3', "data = 3: must be a mapping"),
    ("flava-ablation", '[blimp]\nkind = "blimp"\npath = "{missing}"', "blimp.path = '{missing}': no such file"),
    ("flava-ablation", '[text]\nkind = "glue"', "text.kind = 'glue': must be one of"),
    ("groundedbert", "variants = [1, 2]", "variants[0] = 1: must be a string"),
    ("groundedbert", "batch_size = 1", "batch_size = 1: must be >= 2"),
    ("grounding", 'model_preset = "huge"', "model_preset = 'huge': must be one of"),
    ("grounding", "p_threshold = 0.0", "p_threshold = 0.0: must be in (0, 1]"),
    ("grounding", "seeds = [0, -1]", "seeds = [0, -1]: every value must be in [0, 2**32)"),
    ("grounding", "noise_levels = [0.1, 0.1000001]", "noise_levels = [0.1, 0.1000001]: must not repeat"),
    ("grounding", "num_scenes = 5", "num_scenes = 5: must be >= 10"),
    ("flava-ablation", 'model_preset = "huge"', "model_preset = 'huge': must be one of"),
    ("flava-ablation", "text_volumes = [1000000]", "text_volumes = [1000000]: every value must be <= "),
    ("flava-ablation", "pppl_sentences = 10000", "pppl_sentences = 10000: must be <= "),
    ("flava-ablation", "blimp_pairs_per_phenomenon = 50",
     "blimp_pairs_per_phenomenon = 50: must be <= 20 with the shipped BLiMP subset"),
    ("flava-ablation", "blimp_pairs_per_phenomenon = 1001", "blimp_pairs_per_phenomenon = 1001: must be in [1, 1000]"),
    ("flava-ablation", "image_volumes = [0, 40000]",
     "image_volumes = [0, 40000]: every value + val_pairs (64) must be <= 20000 with the demo corpus"),
    ("flava-ablation", "steps = 2.5", "steps = 2.5: must be an integer"),
]


@pytest.mark.parametrize("study, line, message", BAD_VALUES, ids=[f"{s}:{ln}" for s, ln, _ in BAD_VALUES])
def test_bad_value_is_one_line_and_writes_nothing(tmp_path, capsys, study_start, study, line, message):
    paths = {"missing": str(tmp_path / "no-such-dir"), "here": str(tmp_path)}
    out = tmp_path / "out"
    assert _run(tmp_path, study, line.format(**paths) + "\n", out) == 2
    err = _one_line_error(capsys)
    expected = message.format(**paths)
    expected = expected if expected.startswith("unknown") else f"{CONFIGS[study].__name__}.{expected}"
    assert "config.toml" in err and expected in err
    assert not out.exists() and study_start == []


@pytest.mark.parametrize("study, bad, key, good", [
    ("grounding", 'model_preset = "huge"', "model_preset", "tiny"),
    ("flava-ablation", "text_volumes = [1000000]", "text_volumes", [1000]),
    ("groundedbert", "ot_reg = -1", "ot_reg", 0.1),
])
def test_bad_config_writes_nothing_and_the_corrected_rerun_works(tmp_path, capsys, study_start, study, bad, key, good):
    out = tmp_path / "out"
    corrected = f"{key} = {json.dumps(good)}\n"
    assert _run(tmp_path, study, bad, out) == 2
    _one_line_error(capsys)
    assert not out.exists()
    assert _run(tmp_path, study, corrected, out) == 0 and study_start == [study]
    with ResultStore(str(out / "results.sqlite")) as store:
        assert store.study_info()["config"][key] == good
    before = _snapshot(out)
    assert _run(tmp_path, study, bad, out) == 2          # on the existing run: refused, nothing touched
    _one_line_error(capsys)
    assert _snapshot(out) == before
    assert _run(tmp_path, study, corrected, out) == 0 and study_start == [study, study]


def test_runner_checks_a_config_changed_after_construction(tmp_path, monkeypatch):
    import grounded_fast.experiments.studies.groundedbert as gb
    from grounded_fast.experiments.runner import run_study
    from grounded_fast.experiments.studies import get

    def prepare(*args):
        raise AssertionError("the study started with a bad config")

    monkeypatch.setattr(gb, "prepare", prepare)
    cfg = GroundedBertStudyConfig.from_preset("tiny")
    cfg.ot_weight = float("inf")
    with pytest.raises(ValueError, match=r"GroundedBertStudyConfig\.ot_weight = inf"):
        run_study(get("groundedbert"), cfg, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, text, message", [
    ("evil.yaml", '!!python/object/apply:os.system ["touch {marker}"]\n',
     "evil.yaml: line 1, column 1: the YAML tag !!python/object/apply:os.system is not accepted"),
    ("evil.yaml", "ot_reg: !!python/name:os.system\n",
     "evil.yaml: line 1, column 9: the YAML tag !!python/name:os.system is not accepted"),
    ("broken.yaml", "ot_reg: 0.1\nvariants: [none, balanced\n", "broken.yaml: invalid YAML: line 3, column 1: "),
    ("broken.yaml", "ot_reg: 0.1\n  seed: 2\n", "broken.yaml: invalid YAML: line 2, column 7: "),
    ("broken.toml", "ot_reg = 0.1\nseed = \n", "broken.toml: invalid TOML: Invalid value (at line 2, column 8)"),
    ("latin1.toml", "seed = 1\nmodel_preset = \"caf\xe9\"\n", "latin1.toml: line 2: not UTF-8 text"),
    ("list.yaml", "- ot_reg\n", "list.yaml: the config must be a mapping of keys to values"),
    ("conf.json", "[1]", "conf.json: config files must end in .toml, .yaml or .yml"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, study_start, name, text, message):
    marker = tmp_path / "ran"
    path = tmp_path / name
    path.write_bytes(text.format(marker=marker).encode("latin-1"))
    out = tmp_path / "out"
    assert cli.main(["run", "groundedbert", "--config", str(path), "--out", str(out), "--no-progress"]) == 2
    assert f"grounded-fast run: bad config: {tmp_path / message}" in _one_line_error(capsys)
    assert not out.exists() and not marker.exists()


def test_yaml_1e_3_is_a_string_and_the_error_says_so(tmp_path, capsys, study_start):
    (tmp_path / "c.yaml").write_text("ot_reg: 1e-3\n")
    assert cli.main(["run", "groundedbert", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "ot_reg = '1e-3': must be a number (YAML reads 1e-3 as a string: write 1.0e-3)" in _one_line_error(capsys)


@pytest.mark.parametrize("cls", list(CONFIGS.values()))
def test_every_preset_is_valid_and_round_trips(cls):
    for preset in cls.presets:
        cfg = cls.from_preset(preset)
        assert cls.from_dict(cfg.to_dict()) == cfg


def test_direct_construction_is_checked_and_normalised():
    with pytest.raises(TypeError, match=r"GroundedBertStudyConfig\.variants\[1\] = 2: must be a string"):
        GroundedBertStudyConfig(variants=["none", 2])
    with pytest.raises(ValueError, match=r"GroundingStudyConfig\.noise_levels\[0\] = nan: must be a finite"):
        GroundingStudyConfig(noise_levels=[float("nan")])
    cfg = GroundingStudyConfig(seeds=[0, 1], noise_levels=[0, 1])
    assert cfg.seeds == (0, 1) and cfg.noise_levels == (0.0, 1.0) and isinstance(cfg.noise_levels[0], float)


def test_the_paper_preset_constructs_and_its_run_asks_for_data_from_paths(tmp_path, capsys, study_start):
    """FLAVA's paper preset is the authors' grid: it constructs (its plan and costs are shown), and a
    run on the built-in data stops before writing anything, naming the key and where more data comes from."""
    from grounded_fast.experiments.flava_ablation import FlavaStudyConfig
    cfg = FlavaStudyConfig.from_preset("paper")
    assert (cfg.text_volumes, cfg.image_volumes, len(cfg.seeds)) == ((10**7, 10**8), (0, 40_000, 400_000, 4_000_000), 5)
    out = tmp_path / "out"
    assert cli.main(["run", "flava-ablation", "--preset", "paper", "--out", str(out), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "FlavaStudyConfig.text_volumes = [10000000, 100000000]: every value must be <= 242040" in err
    assert "[text] kind, path" in err and not out.exists() and study_start == []
