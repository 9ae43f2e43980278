"""The grounding analysis streams over chunks of test items (so that paper-size populations fit in
memory): its sums equal a one-shot pass, whatever the chunk size, and each piece equals a direct
computation on the stacked outputs (pairwise agreement / KL per token and per sentence, attention
shares of the multi-modal models, hidden-state means at word occurrences, embedding rows)."""
import pytest
import torch

import grounded_fast.analysis as ga
import grounded_fast.models as gm
from grounded_fast.data.demo import Vocab
from grounded_fast.data.sources import GroundingData
from grounded_fast.experiments.grounding import pairwise_per_sentence, summarise_test_set
from grounded_fast.models.grounding_seq2seq import shift_targets

SETUPS = ["P", "P∨C", "P∧C", "P∧T", "P∧C∧T"]
DIMS = {"C": 6, "P": 5, "T": 4}


def _data(n=7, g=torch.Generator().manual_seed(0)):
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(12)])
    sources = {}
    for t, d in DIMS.items():
        length = {"C": 3, "P": 4, "T": 5}[t]
        mask = torch.ones(n, length, dtype=torch.bool)
        mask[::2, -1] = False                                     # some padded source positions
        sources[t] = (torch.randn(n, length, d, generator=g), mask)
    targets = torch.randint(4, len(vocab), (n, 6), generator=g)
    targets[:, -1] = vocab.eos_id
    targets[1, 3:] = 0                                            # a shorter sentence
    targets[1, 2] = vocab.eos_id
    data = GroundingData(sources, targets, [str(i) for i in range(n)], [""] * n)
    return {"test": data}, vocab


def _models(tmp_path):
    dirs = []
    for k, setup in enumerate(SETUPS):
        torch.manual_seed(k)
        model = gm.build("grounding-seq2seq", "tiny", vocab_size=16, setup=setup, source_dims=DIMS, max_len=8)
        gm.save(model, str(tmp_path / str(k)))
        dirs.append(str(tmp_path / str(k)))
    return dirs


def test_streamed_sums_equal_a_one_shot_pass_and_a_direct_computation(tmp_path):
    data, vocab = _data()
    dirs = _models(tmp_path)
    words = [vocab.stoi[w] for w in ("w1", "w5", "w7", "w11")]
    one = summarise_test_set(dirs, data, vocab, word_ids=words, chunk_items=100)
    for chunk in (1, 3):      # float32 forward passes over other batch sizes: equal to float32 rounding
        streamed = summarise_test_set(dirs, data, vocab, word_ids=words, chunk_items=chunk)
        for key in ("agreement", "kl", "kl_sentence"):
            torch.testing.assert_close(streamed.pairwise[key], one.pairwise[key], rtol=1e-5, atol=1e-6)
        assert (streamed.pairwise["tokens"], streamed.pairwise["sentences"]) == (one.pairwise["tokens"], 7)
        assert streamed.seen == one.seen and sorted(streamed.shares) == sorted(one.shares) == [2, 3, 4]
        for k in one.shares:
            torch.testing.assert_close(streamed.shares[k], one.shares[k], rtol=1e-5, atol=1e-6)
        for a, b in zip(streamed.hidden, one.hidden):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # direct: every model on the whole batch
    test = data["test"]
    src, tgt = test.batch(torch.arange(len(test)))
    tin, tout = shift_targets(tgt, vocab.bos_id, vocab.pad_id)
    mask = tout != vocab.pad_id
    logits, shares = [], {}
    for k, d in enumerate(dirs):
        model = gm.load(d).eval()
        states = {}
        model.decoder.register_forward_hook(lambda mod, inp, o: states.__setitem__("h", o))
        with torch.no_grad():
            out = model(src, tin, task="P" if model.config.kind == "multi-task" else None)
        logits.append(out[0])
        torch.testing.assert_close(one.embeddings[k], model.embed.weight.detach()[words])
        for j, w in enumerate(one.seen):
            torch.testing.assert_close(one.hidden[k][j], states["h"][tin == words[w]].mean(0), rtol=1e-5, atol=1e-6)
        if model.config.kind == "multi-modal":
            acc = ga.AttentionDistance(1, "segment_l2", num_segments=3)
            smask = torch.cat([src[t][1] for t in model.config.tasks], 1)
            acc.update(out[1][-1][None], mask, smask, out[2])
            shares[k] = acc.segment_shares()[0]
    direct = pairwise_per_sentence(torch.stack(logits), mask)
    for key in ("agreement", "kl", "kl_sentence"):
        torch.testing.assert_close(one.pairwise[key], direct[key], rtol=1e-9, atol=1e-12)
    for k, row in shares.items():
        torch.testing.assert_close(one.shares[k], row, rtol=1e-9, atol=1e-12)
    assert float(one.shares[3][0]) == 0.0                       # P∧T has no C


def test_models_analysed_block_pair_by_block_pair_equal_one_pass(tmp_path, monkeypatch):
    """Populations too big to load at once (the paper's 360 models) run in passes over pairs of
    blocks; the stitched summary equals the one-pass summary, whatever the block size, and the
    memory budget decides the passes."""
    import grounded_fast.experiments.grounding as eg
    data, vocab = _data()
    dirs = _models(tmp_path)
    words = [vocab.stoi[w] for w in ("w1", "w5", "w7", "w11")]
    one = summarise_test_set(dirs, data, vocab, word_ids=words)
    passes = []
    real = eg._summarise_pass
    monkeypatch.setattr(eg, "_summarise_pass", lambda d, *a: passes.append(len(d)) or real(d, *a))
    for per_pass, expected in ((2, [2] * 10), (4, [4, 3, 3])):   # blocks of 1 (5 blocks); of 2 (2, 2, 1)
        passes.clear()
        blocked = summarise_test_set(dirs, data, vocab, word_ids=words, models_per_pass=per_pass)
        assert passes == expected
        for key in ("agreement", "kl", "kl_sentence"):
            torch.testing.assert_close(blocked.pairwise[key], one.pairwise[key], rtol=1e-6, atol=1e-9)
        assert (blocked.pairwise["tokens"], blocked.pairwise["sentences"]) == (one.pairwise["tokens"], 7)
        assert blocked.seen == one.seen and sorted(blocked.shares) == sorted(one.shares) == [2, 3, 4]
        for k in one.shares:
            torch.testing.assert_close(blocked.shares[k], one.shares[k])
        for a, b in zip(blocked.hidden + blocked.embeddings, one.hidden + one.embeddings):
            torch.testing.assert_close(a, b)
    size = sum(p.numel() * p.element_size() for p in gm.load(dirs[0]).parameters())
    monkeypatch.setattr(eg, "ANALYSIS_MODEL_BYTES", 3 * size)          # 3 models fit: blocks of 1
    passes.clear()
    summarise_test_set(dirs, data, vocab, word_ids=words)
    assert passes == [2] * 10
    monkeypatch.setattr(eg, "ANALYSIS_MODEL_BYTES", 5 * size)          # all five fit: one pass
    passes.clear()
    summarise_test_set(dirs, data, vocab, word_ids=words)
    assert passes == [5]
    with pytest.raises(ValueError, match="models_per_pass"):
        summarise_test_set(dirs, data, vocab, models_per_pass=1)


def test_the_model_budget_is_at_most_half_the_free_memory(monkeypatch):
    import os

    import grounded_fast.experiments.grounding as eg
    pages = {"SC_AVPHYS_PAGES": 1 << 18, "SC_PAGE_SIZE": 4096}                # 1 GiB available
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert eg.analysis_model_budget("cpu") == 1 << 29
    pages["SC_AVPHYS_PAGES"] = 1 << 30                                          # 4 TiB: the constant caps it
    assert eg.analysis_model_budget("cpu") == eg.ANALYSIS_MODEL_BYTES

    def unsupported(name):
        raise ValueError(name)
    monkeypatch.setattr(os, "sysconf", unsupported)
    assert eg.analysis_model_budget("cpu") == eg.ANALYSIS_MODEL_BYTES
