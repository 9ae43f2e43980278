"""The studies read real data from a path (a config's ``data`` sections), exercised on the demo
corpus written out in the real formats (``data.export.write_demo_dataset``, what
``grounded-fast demo-data`` writes) and read back through the real loaders:

* the grounding study's inputs from a VATEX folder (captions + per-video .npy features) and from a
  Multi30k task-2 folder (captions + the images through the vision encoder) equal its inputs from
  the in-memory demo corpus, item for item;
* every study runs end to end from exported files (grounding from VATEX; GroundedBERT from COCO
  pre-training pairs and a GLUE task directory; the FLAVA ablation from COCO pairs, Multi30k text
  and a BLiMP zip);
* data errors stop a run before any unit trains: one line naming the file, exit 2.
"""
import json
import os

import numpy as np
import pytest
import torch

from grounded_fast import cli
from grounded_fast.data import BLIMP_BUILTIN, DemoCorpus
from grounded_fast.data.export import write_demo_dataset
from grounded_fast.experiments.grounding import GroundingStudyConfig
from grounded_fast.experiments.store import ResultStore

SCENES, SEED = 40, 0
MICRO_GROUNDING = dict(num_scenes=SCENES, corpus_seed=SEED, setups=("P", "C"), noise_levels=(0.0,), seeds=(0, 1),
                       epochs=2, checkpoint_epochs=(1, 2), batch_size=8, model_preset="tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The 40-scene demo corpus written as vatex (with features), multi30k, coco and wit folders."""
    root = tmp_path_factory.mktemp("exported")
    corpus = DemoCorpus(SCENES, SEED)
    for fmt in ("vatex", "multi30k", "coco", "wit"):
        write_demo_dataset(corpus, root / fmt, fmt)
    return root


def _prepare(tmp_path, **data):
    from grounded_fast.experiments.studies.grounding import prepare
    cfg = GroundingStudyConfig.from_dict({**MICRO_GROUNDING, "data": data})
    return prepare(cfg, str(tmp_path), progress=False)


def _same(a, b, what):
    """The two splits hold the same sources and targets (trimmed to their longest sequences)."""
    assert len(a) == len(b) and a.texts == b.texts, what
    sa, ta = a.batch(torch.arange(len(a)))
    sb, tb = b.batch(torch.arange(len(b)))
    assert torch.equal(ta, tb), what
    for source in ("C", "P", "T"):
        (fa, ma), (fb, mb) = sa[source], sb[source]
        assert torch.equal(ma, mb), (what, source)
        torch.testing.assert_close(fa, fb, rtol=0, atol=1e-5, msg=f"{what} {source}")


@pytest.mark.parametrize("data", [{"kind": "vatex"}, {"kind": "multi30k"}], ids=["vatex-features", "multi30k-images"])
def test_grounding_inputs_from_exported_files_equal_the_demo_inputs(exported, tmp_path, data):
    demo, demo_vocab = _prepare(tmp_path / "demo")
    real, vocab = _prepare(tmp_path / "real", path=str(exported / data["kind"]), **{k: v for k, v in data.items()})
    assert vocab.itos == demo_vocab.itos
    for split in ("train", "val", "test"):
        _same(real[split], demo[split], f"{data['kind']} {split}")


def _run(argv, capsys=None):
    code = cli.main(argv)
    return code, (capsys.readouterr() if capsys else None)


def _toml(path, sections):
    lines = []
    for key, value in sections.items():
        if isinstance(value, dict):
            continue
        lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    for key, value in sections.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("kind", ["vatex", "multi30k"])
def test_grounding_runs_the_nine_setups_from_exported_files(exported, tmp_path, capsys, kind):
    from grounded_fast.models.grounding_seq2seq import SETUPS
    micro = {**MICRO_GROUNDING, "setups": SETUPS, "epochs": 3, "checkpoint_epochs": (1, 2, 3)}
    cfg = _toml(tmp_path / f"{kind}.toml", {**micro, "data": {"kind": kind, "path": str(exported / kind)}})
    out = tmp_path / "run"
    code, io = _run(["run", "grounding", "--config", cfg, "--out", str(out), "--no-progress"], capsys)
    assert code == 0, io.err
    with ResultStore(str(out / "results.sqlite"), read_only=True) as store:
        assert store.study_info()["config"]["data"]["kind"] == kind
        assert store.unit("features")["payload"]["train"] == len(DemoCorpus(SCENES, SEED).splits["train"])
        assert len(store.checkpoints()) == 9 * 2 * 3
        res = store.unit("analysis")["payload"]
    assert sorted(res["populations"]) == sorted(SETUPS)
    sizes = {len(v) for v in res["populations"].values()}
    assert len(sizes) == 1 and sizes.pop() >= 2               # matched: equal sizes, within-population pairs exist
    assert set(res["attention_models"]) == {m for s in ("P∧C", "P∧T", "P∧C∧T") for m in res["populations"][s]}
    shares = np.array(res["segment_shares"])
    assert np.allclose(shares.sum(1), 1) and np.all(shares[[i for i, m in enumerate(res["attention_models"])
                                                           if m.startswith("P∧T")], 0] == 0)   # no C in P∧T
    report = (out / "report.md").read_text()
    for needle in (kind, "C/C", "P/T", "Within vs between populations", "Attention of the multi-modal models",
                   "P∨C∨T", "P∧C∧T", "Kruskal-Wallis H", "(paper 0.46)", "(paper 0.55)"):
        assert needle in report, needle


def test_groundedbert_runs_from_coco_pairs_and_a_glue_directory(exported, tmp_path, capsys):
    from grounded_fast.experiments.groundedbert_study import demo_glue_task
    glue = demo_glue_task(str(tmp_path / "glue"))
    cfg = _toml(tmp_path / "gb.toml", {"variants": ("text-only", "partial-0.5"), "seeds": (0,), "pretrain_steps": 4,
                                       "finetune_steps": 4,
                                       "batch_size": 8, "model_preset": "tiny",
                                       "data": {"kind": "coco", "path": str(exported / "coco")},
                                       "downstream": {"kind": "glue", "path": glue, "task": "sst2"}})
    out = tmp_path / "run"
    code, io = _run(["run", "groundedbert", "--config", cfg, "--out", str(out), "--no-progress", "--workers", "1"],
                    capsys)
    assert code == 0, io.err
    report = (out / "report.md").read_text()
    assert "coco at" in report and f"GLUE sst2 at `{glue}`" in report


@pytest.mark.parametrize("pairs, text", [("coco", "multi30k"), ("wit", "wit")])
def test_flava_runs_from_exported_pairs_text_and_a_blimp_zip(exported, tmp_path, capsys, pairs, text):
    cfg = _toml(tmp_path / "flava.toml", {
        "text_volumes": (100, 200), "image_volumes": (0, 10), "steps": 4, "eval_every": 2, "batch_size": 8,
        "pppl_sentences": 3, "blimp_pairs_per_phenomenon": 1, "val_pairs": 8,
        "data": {"kind": pairs, "path": str(exported / pairs)},
        "text": {"kind": text, "path": str(exported / text)},
        "blimp": {"kind": "blimp", "path": BLIMP_BUILTIN}})
    out = tmp_path / "run"
    code, io = _run(["run", "flava-ablation", "--config", cfg, "--out", str(out), "--no-progress", "--workers", "1"],
                    capsys)
    assert code == 0, io.err
    with ResultStore(str(out / "results.sqlite"), read_only=True) as store:
        assert len(store.checkpoints()) == 4
        assert store.study_info()["config"]["text"]["kind"] == text
    assert f"{pairs} from `{exported / pairs}`" in (out / "report.md").read_text()


def _one_data_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("grounded-fast run: data: "), err
    for n in needles:
        assert n in err, err
    return err


def test_a_missing_feature_file_stops_the_run_before_training(exported, tmp_path, capsys):
    import shutil
    broken = tmp_path / "vatex"
    shutil.copytree(exported / "vatex", broken)
    victim = sorted((broken / "features").iterdir())[3]
    victim.unlink()
    cfg = _toml(tmp_path / "c.toml", {**MICRO_GROUNDING, "data": {"kind": "vatex", "path": str(broken)}})
    out = tmp_path / "run"
    code, _ = _run(["run", "grounding", "--config", cfg, "--out", str(out), "--no-progress"])
    assert code == 2
    _one_data_error(capsys, str(victim))
    with ResultStore(str(out / "results.sqlite"), read_only=True) as store:
        assert store.checkpoints() == [] and not store.unit_done("features")


def test_an_empty_split_and_too_little_text_are_one_line_each(exported, tmp_path, capsys):
    import shutil
    broken = tmp_path / "coco"
    shutil.copytree(exported / "coco", broken)
    ann = broken / "annotations" / "captions_train.json"
    doc = json.loads(ann.read_text())
    ann.write_text(json.dumps({**doc, "images": [], "annotations": []}))
    cfg = _toml(tmp_path / "gb.toml", {"variants": ("none",), "pretrain_steps": 2, "finetune_steps": 2, "batch_size": 4,
                                       "model_preset": "tiny", "data": {"kind": "coco", "path": str(broken)}})
    assert _run(["run", "groundedbert", "--config", cfg, "--out", str(tmp_path / "gb"), "--no-progress"])[0] == 2
    _one_data_error(capsys, str(ann))
    cfg = _toml(tmp_path / "fl.toml", {"text_volumes": (10 ** 6,), "image_volumes": (0,), "steps": 2, "eval_every": 1,
                                       "pppl_sentences": 2, "blimp_pairs_per_phenomenon": 1,
                                       "text": {"kind": "multi30k", "path": str(exported / "multi30k")}})
    assert _run(["run", "flava-ablation", "--config", cfg, "--out", str(tmp_path / "fl"), "--no-progress"])[0] == 2
    _one_data_error(capsys, "text volume 1000000 words exceeds the text pool", "multi30k captions at")


def test_data_paths_are_stored_absolute(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(exported)
    cfg = GroundingStudyConfig.from_dict({**MICRO_GROUNDING, "data": {"kind": "vatex", "path": "vatex"}})
    assert cfg.data.path == str(exported / "vatex")
    assert GroundingStudyConfig.from_dict(cfg.to_dict()) == cfg
    assert np.array_equal(np.load(exported / "vatex" / "features" / os.listdir(exported / "vatex" / "features")[0]).shape,
                          (49, 1280))
