"""The model zoo: registry, configs, forward/backward, a tiny training run whose loss drops, save/load."""
import math

import pytest
import torch

import grounded_fast.models as M
from grounded_fast.models.flava import LOSSES, KMeansCodebook, LossScheduler, patchify
from grounded_fast.models.grounding_seq2seq import (SETUPS, TASKS, canonical_setup, make_optimizer, round_robin,
                                                   setup_kind, setup_sources, shift_targets, token_accuracy)
from grounded_fast.models.groundedbert import derangement


def test_registry_lists_and_builds():
    assert M.available() == ["flava", "groundedbert", "grounding-seq2seq"]
    for name in M.available():
        assert isinstance(M.build(name, "tiny"), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model"):
        M.build("bert")
    with pytest.raises(ValueError, match="unknown preset"):
        M.build("flava", "huge")


@pytest.mark.parametrize("name", ["grounding-seq2seq", "flava", "groundedbert"])
def test_config_round_trip_and_validation(name):
    model = M.build(name, "tiny")
    cfg = model.config
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown .* key.*'colour'"):
        type(cfg).from_dict({**cfg.to_dict(), "colour": 1})
    key = "d_model" if hasattr(cfg, "d_model") else "ground_dim"
    with pytest.raises(TypeError, match=key):
        type(cfg).from_dict({**cfg.to_dict(), key: "big"})
    with pytest.raises(ValueError, match=key):
        M.build(name, "tiny", **{key: 0})


def test_paper_presets_have_the_papers_sizes():
    c = M.GroundingSeq2SeqConfig.from_preset("paper")
    assert (c.d_model, c.num_layers, c.num_heads, c.ffn_dim, c.proj_hidden, c.proj_dropout, c.dropout) == \
        (512, 6, 8, 2048, 2048, 0.5, 0.1)
    assert M.FlavaConfig.from_preset("paper").text_mask_prob == 0.4


# ------------------------------------------------------------------------- grounding seq2seq
def _seq2seq_batch(B=6, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = {"C": (torch.randn(B, 5, 12, generator=g), torch.ones(B, 5, dtype=torch.bool)),
           "P": (torch.randn(B, 7, 8, generator=g), torch.ones(B, 7, dtype=torch.bool)),
           "T": (torch.randn(B, 6, 8, generator=g), torch.ones(B, 6, dtype=torch.bool))}
    src["P"][1][0, 5:] = False
    tok = torch.randint(3, V, (B, 9), generator=g)
    tok[:, -1] = 2
    tok[1, 6:], tok[1, 5] = 0, 2
    return src, tok


SEQ2SEQ_S = {"C": 5, "P": 7, "T": 6}        # source lengths of _seq2seq_batch


@pytest.mark.parametrize("setup", SETUPS)
def test_seq2seq_trains_and_returns_cross_attention(setup):
    torch.manual_seed(0)
    model = M.build("grounding-seq2seq", "tiny", vocab_size=40, setup=setup,
                    source_dims={"C": 12, "P": 8, "T": 8})
    sources = setup_sources(setup)
    assert tuple(model.proj) == sources and model.config.kind == setup_kind(setup)
    src, tok = _seq2seq_batch()
    tin, tout = shift_targets(tok, 1, 0)
    opt = make_optimizer(model)
    multi_task = model.config.kind == "multi-task"
    tasks = round_robin(list(sources), 40) if multi_task else [None] * 40
    losses = []
    for task in tasks:
        logits, attn, segs = model(src, tin, task=task)
        loss = model.loss(logits, tout)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    model.eval()
    logits, attn, segs = model(src, tin, task="P" if multi_task else None)
    used = sources if model.config.kind == "multi-modal" else ("P",) if multi_task else (setup,)
    S = sum(SEQ2SEQ_S[t] for t in used)
    assert logits.shape == (6, 9, 40) and len(attn) == 2 and attn[0].shape == (6, 4, 9, S)
    assert torch.allclose(attn[0].sum(-1), torch.ones(6, 4, 9), atol=1e-5)       # distributions over memory
    assert segs.tolist() == [i for t in used for i in [TASKS.index(t)] * SEQ2SEQ_S[t]]   # C 0, P 1, T 2
    if "P" in used and len(used) > 1:
        start = sum(SEQ2SEQ_S[t] for t in used[:used.index("P")])
        assert float(attn[0][0, :, :, start + 5:start + 7].abs().max()) == 0.0   # padded P positions get none
    assert token_accuracy(logits, tout) > 0.5


def test_setup_names_are_the_papers_with_the_old_and_ascii_spellings():
    assert SETUPS == ("P", "C", "T", "P∨C", "P∨T", "P∨C∨T", "P∧C", "P∧T", "P∧C∧T")
    for given, name in [("multitask", "P∨C∨T"), ("multimodal", "P∧C∧T"), ("C|P", "P∨C"), ("T & P", "P∧T"),
                        ("C∧T∧P", "P∧C∧T"), ("P", "P")]:
        assert canonical_setup(given) == name
        assert M.build("grounding-seq2seq", "tiny", vocab_size=9, setup=given).config.setup == name
    for bad in ("P|P", "X", "P|C&T", ""):
        with pytest.raises(ValueError, match="setup must be one of"):
            M.build("grounding-seq2seq", "tiny", vocab_size=9, setup=bad)


def test_seq2seq_noise_only_in_training_and_errors():
    model = M.build("grounding-seq2seq", "tiny", vocab_size=40, setup="P", source_dims={"P": 8}, noise_sigma=1.0)
    src, tok = _seq2seq_batch()
    tin, _ = shift_targets(tok, 1, 0)
    model.eval()
    a, b = model(src, tin)[0], model(src, tin)[0]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(src, tin)[0]
    torch.manual_seed(2)
    assert not torch.equal(c, model(src, tin)[0])
    with pytest.raises(ValueError, match="sources lack"):
        model({"C": src["C"]}, tin)
    mt = M.build("grounding-seq2seq", "tiny", vocab_size=40, setup="P∨T", source_dims={"C": 12, "P": 8, "T": 8})
    with pytest.raises(ValueError, match=r"multi-task model P∨T: pass task= one of \['P', 'T'\], got 'C'"):
        mt(src, tin, task="C")
    with pytest.raises(ValueError, match="source_dims"):
        M.build("grounding-seq2seq", "tiny", setup="multimodal", source_dims={"P": 8})


@pytest.mark.parametrize("name", ["grounding-seq2seq", "flava", "groundedbert"])
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = M.build(name, "tiny").eval()
    M.save(model, str(tmp_path / name))
    again = M.load(str(tmp_path / name)).eval()
    assert again.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    torch.manual_seed(1)
    if name == "grounding-seq2seq":
        c = model.config
        src = {t: (torch.randn(2, 4, c.source_dims[t]), torch.ones(2, 4, dtype=torch.bool)) for t in c.tasks}
        tin = torch.randint(3, 50, (2, 5))
        assert torch.equal(model(src, tin)[0], again(src, tin)[0])
    elif name == "flava":
        ids = torch.randint(110, 300, (2, 6))
        assert torch.equal(model.text(ids), again.text(ids))
    else:
        h = torch.randn(2, 5, model.config.text_dim)
        assert torch.equal(model.classify(h), again.classify(h))
    (tmp_path / name / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupted weights"):
        M.load(str(tmp_path / name))


# ------------------------------------------------------------------------- GroundedBERT
@pytest.mark.parametrize("ot", ["partial", "balanced", "none"])
def test_groundedbert_pretraining_loss_drops(ot):
    torch.manual_seed(0)
    model = M.build("groundedbert", "tiny", ot=ot, text_dim=32, vision_dim=48)
    B, L = 8, 10
    txt = torch.randn(B, L, 32)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, 7:] = False
    patches = (txt[:, :7].repeat(1, 7, 1) @ torch.randn(32, 48))   # images that depend on their text
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(60):
        out = model.pretrain_losses(txt, mask, patches, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: v.item() for k, v in out.items()}
    assert out["match"].item() < 0.3 * first["match"]
    if ot == "none":
        assert out["ot"].item() == 0.0
    else:
        assert out["ot"].item() < first["ot"]
    assert model.classify(txt).shape == (B, 2) and model.representation(txt).shape == (B, L, 32 + 64)


def test_derangement_has_no_fixed_point():
    for B in (2, 3, 10):
        for s in range(20):
            p = derangement(B, torch.Generator().manual_seed(s))
            assert sorted(p.tolist()) == list(range(B)) and bool((p != torch.arange(B)).all())


# ------------------------------------------------------------------------- FLAVA
def test_flava_losses_drop_and_pll():
    torch.manual_seed(0)
    model = M.build("flava", "tiny", vocab_size=200)
    c = model.config
    B = 8
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(110, 200, (B, 12), generator=g)
    ids[:, 0], ids[:, -1] = c.cls_id, c.sep_id
    ids[2, 8:], ids[2, 7] = c.pad_id, c.sep_id
    imgs = torch.rand(B, 3, 32, 32, generator=g)
    codes = KMeansCodebook(c.codebook_size, c.patch_size).fit(imgs).encode(imgs)
    assert codes.shape == (B, c.num_patches) and int(codes.max()) < c.codebook_size
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    sched = LossScheduler({k: 1.0 for k in LOSSES})
    first = None
    for _ in range(40):
        losses = model.losses(ids, imgs, codes, paired=True, generator=g)
        opt.zero_grad()
        sched.total(losses).backward()
        opt.step()
        first = first or {k: v.item() for k, v in losses.items()}
    assert set(losses) == set(LOSSES)
    for k in ("mlm", "mim", "mmm_text", "mmm_image"):
        assert losses[k].item() < 0.8 * first[k], (k, first[k], losses[k].item())
    assert losses["contrastive"].item() < first["contrastive"]      # random pairs: slower to memorise
    model.eval()
    pll = model.pseudo_log_likelihood(ids)
    assert pll.shape == (B,) and bool((pll < 0).all())
    assert 1.0 <= M.pseudo_perplexity(model, ids) < c.vocab_size
    assert M.blimp_accuracy(model, ids, ids) == 0.0     # ties are not wins
    text_only = model.losses(ids=ids, generator=g)
    assert set(text_only) == {"mlm"}


def test_patchify_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    assert torch.equal(p[0, 1], x[0, :, 0:2, 2:4].reshape(-1))


def test_loss_scheduler_rules():
    s = LossScheduler({"mlm": 1.0, "mim": 0.5}, patience=2, revive_after=6)
    assert s.step({"mlm": 3.0, "mim": 3.0}) == {"mlm": 1.0, "mim": 0.5}          # improvements, capped
    w = s.step({"mlm": 3.5, "mim": 2.0})
    assert math.isclose(w["mlm"], 0.7) and w["mim"] == 0.5
    assert s.step({"mlm": 2.0})["mlm"] == pytest.approx(0.77)                    # x1.1 after improving
    s.step({"mlm": 2.5})
    assert s.step({"mlm": 2.6})["mlm"] == 0.0                                   # patience ran out
    for _ in range(5):
        assert s.step({"mlm": 1.0})["mlm"] == 0.0
    assert s.step({"mlm": 1.0})["mlm"] == pytest.approx(0.7)                     # revived at 0.7 x initial
    assert float(s.total({"mlm": torch.tensor(2.0), "mim": torch.tensor(4.0)})) == pytest.approx(0.7 * 2 + 0.5 * 4)
