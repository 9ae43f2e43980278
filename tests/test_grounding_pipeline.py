"""End to end on real inputs: demo scenes -> shipped encoders (cached) -> a tiny grounding decoder
trained on C / P / T sources -> pairwise agreement and attention analysis of two such models."""
import pytest
import torch

import grounded_fast.analysis as ga
import grounded_fast.models as M
from grounded_fast.data import DemoCorpus
from grounded_fast.data.sources import demo_grounding_data
from grounded_fast.models.grounding_seq2seq import make_optimizer, shift_targets


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    corpus = DemoCorpus(num_scenes=24, seed=3)
    cache = str(tmp_path_factory.mktemp("features"))
    data, vocab = demo_grounding_data(corpus, cache, progress=False)
    again, _ = demo_grounding_data(corpus, cache, progress=False)      # served from the cache
    assert torch.equal(again["train"].sources["C"][0], data["train"].sources["C"][0])
    return data, vocab


def _train(data, vocab, seed, steps=40):
    torch.manual_seed(seed)
    model = M.build("grounding-seq2seq", "tiny", vocab_size=len(vocab), setup="multimodal",
                    source_dims={"C": 1280, "P": 384, "T": 384})
    opt = make_optimizer(model)
    tr = data["train"]
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(tr), generator=g)[:8]
        src, tgt = tr.batch(idx)
        tin, tout = shift_targets(tgt, 1, 0)
        logits, _, _ = model(src, tin)
        loss = model.loss(logits, tout)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_demo_features_have_the_encoders_shapes(demo_data):
    data, vocab = demo_data
    tr = data["train"]
    assert tr.sources["C"][0].shape[1:] == (49, 1280)
    assert tr.sources["P"][0].shape[2] == 384 and tr.sources["T"][0].shape[2] == 384
    assert len(tr) + len(data["val"]) + len(data["test"]) == 24
    assert int(tr.targets[0][(tr.targets[0] != 0).sum() - 1]) == vocab.eos_id


def test_multimodal_decoder_learns_and_is_analysable(demo_data):
    data, vocab = demo_data
    m1, losses = _train(data, vocab, seed=0)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    m2, _ = _train(data, vocab, seed=1)
    src, tgt = data["train"].batch(torch.arange(len(data["train"])))
    tin, tout = shift_targets(tgt, 1, 0)
    with torch.no_grad():
        outs = [m(src, tin) for m in (m1, m2)]
    logits = torch.stack([o[0] for o in outs])                    # (M=2, B, T, V)
    mask = tout != 0
    res = ga.pairwise_agreement(logits, mask, jsd=True)
    assert 0 < res["agreement"][0, 1] <= 1 and res["kl"][0, 1] > 0
    attn = torch.stack([o[1][-1] for o in outs])                  # last layer (M, B, heads, T, S)
    segments = outs[0][2]
    d = ga.attention_distance(attn, "segment_l2", target_mask=mask, source_mask=torch.cat(
        [src[t][1] for t in ("C", "P", "T")], 1), segments=segments)
    assert d.shape == (2, 2) and d[0, 1] > 0


def test_multi30k_builtin_gives_p_and_t_sources(tmp_path):
    from grounded_fast.data import load_multi30k_builtin
    from grounded_fast.data.sources import multi30k_grounding_data
    images = load_multi30k_builtin("val")[:10]
    data, vocab = multi30k_grounding_data(images, str(tmp_path), progress=False)
    assert set(data.sources) == {"P", "T"} and len(data) == 10
    assert data.texts[0] == images[0].en[0]
    assert vocab.decode(data.targets[0]) == vocab.decode(vocab.encode(images[0].en[0]))
    model = M.build("grounding-seq2seq", "tiny", vocab_size=len(vocab), setup="T", source_dims={"T": 384})
    src, tgt = data.batch(torch.arange(4))
    assert model(src, shift_targets(tgt, 1, 0)[0])[0].shape[:2] == tgt.shape


def test_groundedbert_on_the_shipped_encoders():
    corpus = DemoCorpus(num_scenes=4, seed=1)
    texts = [it.target for it in corpus]
    states, mask, patches = M.GroundedBERT.encode(texts, [it.image for it in corpus])
    assert states.shape[0] == 4 and states.shape[2] == 384 and patches.shape == (4, 49, 1280)
    model = M.build("groundedbert", "tiny")
    out = model.pretrain_losses(states, mask.bool(), patches, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["ot"]) and out["ot"] != 0
    assert all(p.grad is not None for p in model.ground.parameters())
    assert model.classify(states).shape == (4, 2)


def test_grounding_study_config_validation():
    from grounded_fast.experiments.grounding import GroundingStudyConfig, plan_runs
    assert len(plan_runs(GroundingStudyConfig.from_preset("tiny"))) == 9 * 2 * 3
    for bad, key in ((dict(setups=["P"]), "at least 2"), (dict(setups=["P", "X"]), "must be one of"),
                     (dict(pivot="T", setups=["P", "C"]), "pivot"), (dict(checkpoint_epochs=[9]), "checkpoint_epochs"),
                     (dict(epochs=0), "epochs"), (dict(noise_levels=[-0.1]), "noise_levels"),
                     (dict(epochz=3), "unknown"), (dict(seeds="0"), "seeds")):
        with pytest.raises((ValueError, TypeError), match=key):
            GroundingStudyConfig.from_preset("tiny", **bad)
