"""Plain-text corpora and the token file the FLAVA ablation trains from: sentences streamed (read
no further than the largest text volume needs), tokenised in chunks into a memory-mapped file that
pickles as its path, reused when nothing changed; the study prepares from a plain-text corpus."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from grounded_fast.data.formats._io import DataFormatError
from grounded_fast.data.formats.plain_text import iter_plain_text, plain_text_files
from grounded_fast.data.token_file import TokenFile, write_token_file


def _tokenize(length):
    """A stand-in tokenizer: word lengths + 1 as ids, padded with 0 / truncated to ``length``."""
    def run(batch):
        out = np.zeros((len(batch), length), dtype=np.int64)
        for i, s in enumerate(batch):
            ids = [len(w) + 1 for w in s.split()][:length]
            out[i, :len(ids)] = ids
        return out
    return run


def test_plain_text_layout_gzip_blank_lines_and_errors(tmp_path):
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(b"a dog runs\n\n  a cat sleeps  \n"))
    (tmp_path / "val.txt").write_text("held out one\n")
    assert sorted(plain_text_files(tmp_path)) == ["train", "val"]
    assert list(iter_plain_text(tmp_path)) == ["a dog runs", "a cat sleeps"]
    assert list(iter_plain_text(tmp_path, "val")) == ["held out one"]
    (tmp_path / "val.txt").write_text("\n \n")
    with pytest.raises(DataFormatError, match="no sentence"):
        list(iter_plain_text(tmp_path, "val"))
    with pytest.raises(ValueError, match="holds no train.txt"):
        plain_text_files(tmp_path / "..")
    with pytest.raises(ValueError, match="not a directory"):
        plain_text_files(tmp_path / "train.txt.gz")


def test_token_file_streams_stops_at_the_words_and_pickles_as_its_path(tmp_path):
    consumed = []

    def sentences():              # fails if read past the sentence that reaches 10 words
        for k in range(1000):
            if k > 3:
                raise AssertionError("read past the largest text volume")
            consumed.append(k)
            yield " ".join(["word"] * (k + 2))       # 2, 3, 4, 5 words: 2, 5, 9, 14
    tf = write_token_file(sentences(), _tokenize(4), vocab_size=100, length=4, path=str(tmp_path / "t.tokens"),
                          max_words=10, chunk=2)
    assert consumed == [0, 1, 2, 3] and tf.shape == (4, 4) and tf.dtype == "uint16"
    assert tf.words().tolist() == [2, 5, 9, 14]
    assert tf[torch.tensor([3, 0])].tolist() == [[5, 5, 5, 5], [5, 5, 0, 0]] and tf[1].dtype == torch.int64
    clone = pickle.loads(pickle.dumps(tf))
    assert len(pickle.dumps(tf)) < 300 and torch.equal(clone[0:4], tf[0:4])   # the path travels, not the rows
    # the same request again: the file is reused without reading the corpus
    again = write_token_file(iter(()), _tokenize(4), 100, 4, str(tmp_path / "t.tokens"), max_words=10)
    assert again.shape == (4, 4) and torch.equal(again[0:4], tf[0:4])
    # a larger vocabulary needs int32; another max_words rewrites the file
    big = write_token_file(["a bb ccc"], _tokenize(4), 70_000, 4, str(tmp_path / "t.tokens"), max_words=None)
    assert big.dtype == "int32" and big.shape == (1, 4) and big[0].tolist() == [2, 3, 4, 0]
    with pytest.raises(ValueError, match="expected"):
        write_token_file(["a b"], _tokenize(3), 100, 4, str(tmp_path / "u.tokens"))


def test_a_damaged_token_file_is_found_by_verify_and_rewritten_on_reuse(tmp_path):
    """The record holds both files' sha256 and size: ``verify`` reports a corrupted or missing
    file (one line naming it), and the next prepare rewrites it instead of reusing it."""
    from grounded_fast.data.token_file import token_file_problems
    from grounded_fast.experiments.store import ResultStore
    from grounded_fast.experiments.verify import check_run
    run = tmp_path / "run"
    ResultStore(str(run / "results.sqlite")).close()
    path = str(run / "features" / "text-abc.tokens")
    tf = write_token_file(["a bb ccc", "dd e"], _tokenize(4), 100, 4, path)
    rows = tf[0:2].clone()
    ok = check_run(run)
    assert ok.problems == [] and ok.checked["token files"] == 1
    with open(path, "r+b") as f:        # flip one byte: same size, another hash
        f.seek(1)
        byte = f.read(1)
        f.seek(1)
        f.write(bytes([byte[0] ^ 0xFF]))
    (problem,) = check_run(run).problems
    assert "corrupted" in problem and path in problem
    fresh = write_token_file(iter(["a bb ccc", "dd e"]), _tokenize(4), 100, 4, path)
    assert torch.equal(fresh[0:2], rows) and token_file_problems(path + ".json") == []
    import os
    os.remove(path + ".words.npy")
    assert "missing file" in check_run(run).problems[0]


def test_flava_prepares_from_a_plain_text_corpus(tmp_path):
    """text.kind = "text": the training lines are tokenised only as far as the largest text volume,
    the held-out sentences are val.txt's first lines, and the token file is what training samples."""
    from grounded_fast.experiments.flava_ablation import FlavaStudyConfig, prepare, tokenizer
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [f"the {w} dog sees a small cat number {k} ." for k, w in enumerate(["big", "red", "old"] * 400)]
    (corpus / "train.txt.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    (corpus / "val.txt").write_text("\n".join(f"a held out sentence {k} ." for k in range(20)))
    cfg = FlavaStudyConfig.from_preset("tiny", text_volumes=[500, 2000], image_volumes=[0], pppl_sentences=5,
                                       blimp_pairs_per_phenomenon=1, text={"kind": "text", "path": str(corpus)})
    data = prepare(cfg, str(tmp_path / "run"))
    text = data["text"]
    assert isinstance(text, TokenFile) and len(text) == 2000 // 10        # 10 words a line: 200 lines
    assert int(data["text_words"][-1]) == 2000 and data["held_out"].shape[0] == 5
    tok = tokenizer()
    expected = tok(lines[:3], padding="max_length", truncation=True, max_length=cfg.max_text_len,
                   return_tensors="pt")["input_ids"]
    assert torch.equal(text[0:3], expected)
    with pytest.raises(ValueError, match="exceeds the text pool"):
        prepare(FlavaStudyConfig.from_preset("tiny", text_volumes=[20_000], image_volumes=[0], pppl_sentences=5,
                                             blimp_pairs_per_phenomenon=1, text={"kind": "text", "path": str(corpus)}),
                str(tmp_path / "run"))
    (corpus / "val.txt").unlink()
    with pytest.raises(ValueError, match="has no val.txt"):
        prepare(cfg, str(tmp_path / "run2"))


def test_wit_captions_stream_as_the_corpus_reader_reads_them(tmp_path):
    """FLAVA's WiT text is streamed (no image decoded) and holds the captions read_corpus reads."""
    from grounded_fast.data import DemoCorpus
    from grounded_fast.data.corpora import corpus_files, read_corpus
    from grounded_fast.data.export import write_demo_dataset
    from grounded_fast.data.formats.wit import iter_wit_captions
    write_demo_dataset(DemoCorpus(40, 0), tmp_path / "wit", "wit", features=False)
    files = corpus_files("wit", tmp_path / "wit")
    for split in ("train", "val"):
        assert list(iter_wit_captions(files[split])) == [it.captions[0] for it in read_corpus("wit", tmp_path / "wit",
                                                                                             split)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("image_url\tcaption_reference_description\na.jpg\t\n")
    with pytest.raises(DataFormatError, match="no non-empty"):
        list(iter_wit_captions(bad))
    bad.write_text("image_url\tcaption\na.jpg\tx\n")
    with pytest.raises(DataFormatError, match="lacks the caption column"):
        list(iter_wit_captions(bad))
