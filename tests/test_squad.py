"""SQuAD v1.1 / v2.0: the reader (and its errors), the official scores, windows and answer spans,
and the GroundedBERT study on a SQuAD directory (the demo corpus written as SQuAD and read back)."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grounded_fast.data import DemoCorpus, DataFormatError
from grounded_fast.data.export import write_demo_squad
from grounded_fast.data.formats.squad import SquadExample, load_squad, normalize_answer, squad_files, squad_scores
from grounded_fast.experiments.squad_span import NOT_CONTEXT, encode_squad, predict_answers

CONTEXT = "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall."


def _doc(qas, version="v2.0", context=CONTEXT):
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def _qa(qid, question, answer=None, impossible=False):
    answers = [] if answer is None else [{"text": answer, "answer_start": CONTEXT.index(answer)}]
    return {"id": qid, "question": question, "answers": answers, "is_impossible": impossible}


def test_load_squad_reads_answerable_and_unanswerable_questions(tmp_path):
    f = _write(tmp_path / "dev-v2.0.json", _doc([_qa("a", "Where is it?", "Paris"),
                                                  _qa("b", "Who built it?", impossible=True)]))
    a, b = load_squad(f)
    assert (a.qid, a.answers, a.answer_starts, a.is_impossible) == ("a", ("Paris",), (23,), False)
    assert CONTEXT[23:28] == "Paris"
    assert b.answers == () and b.is_impossible


@pytest.mark.parametrize("doc, needle", [
    (_doc([{"id": "a", "question": "q", "answers": [{"text": "Paris", "answer_start": 3}]}]),
     "answer 'Paris' is not at character 3"),
    (_doc([_qa("a", "q", "Paris"), _qa("a", "q2", "1889")]), "question id 'a' appears twice"),
    (_doc([{"id": "a", "question": "q", "answers": []}]), "has no answer and is not marked is_impossible"),
    ({"version": "v2.0"}, 'no "data" list'),
    (_doc([]), "no question"),
])
def test_load_squad_errors_name_the_file_and_question(tmp_path, doc, needle):
    f = _write(tmp_path / "x.json", doc)
    with pytest.raises(DataFormatError, match=needle) as err:
        load_squad(f)
    assert str(f) in str(err.value)


def test_squad_files_prefers_a_complete_pair(tmp_path):
    with pytest.raises(ValueError, match="found: train-v1.1.json"):
        _write(tmp_path / "train-v1.1.json", _doc([]))
        squad_files(tmp_path)
    _write(tmp_path / "dev-v1.1.json", _doc([]))
    assert squad_files(tmp_path)["dev"].endswith("dev-v1.1.json")
    _write(tmp_path / "train-v2.0.json", _doc([]))
    _write(tmp_path / "dev-v2.0.json", _doc([]))
    assert squad_files(tmp_path)["train"].endswith("train-v2.0.json")


def test_scores_follow_the_official_script():
    ex = [SquadExample("a", "q", CONTEXT, ("Eiffel Tower", "the tower"), (4, 0)),
          SquadExample("b", "q", CONTEXT, (), ()),
          SquadExample("c", "q", CONTEXT, (), ()),
          SquadExample("d", "q", CONTEXT, ("1889",), (49,))]
    s = squad_scores({"a": "The Eiffel-Tower!", "b": "", "c": "Paris", "d": "in 1889"}, ex)
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("The Eiffel-Tower!") == "eiffeltower"       # punctuation removed, not split on
    assert s["exact"].tolist() == [0.0, 1.0, 0.0, 0.0]
    # a: "eiffeltower" vs "eiffel tower" -> 0; vs "tower" -> 0: F1 0. d: {in, 1889} vs {1889}: P 1/2, R 1 -> 2/3
    assert s["f1"].tolist() == pytest.approx([0.0, 1.0, 0.0, 2 / 3])
    s = squad_scores({"a": "tower in Paris", "b": "x", "c": "", "d": "1889"}, ex)
    # a: best of "eiffel tower" (common 1: P 1/3, R 1/2 -> 0.4) and "tower" (after "the" removed; P 1/3, R 1 -> 0.5)
    assert s["f1"].tolist() == pytest.approx([0.5, 0.0, 1.0, 1.0])
    with pytest.raises(KeyError, match="'d'"):
        squad_scores({"a": "", "b": "", "c": ""}, ex)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc the,.", max_size=20), st.lists(st.text(alphabet="abc the,.", max_size=20), min_size=1,
                                                            max_size=3))
def test_f1_bounds_exact_match(pred, golds):
    ex = [SquadExample("q", "q", "", tuple(golds), tuple(0 for _ in golds))]
    s = squad_scores({"q": pred}, ex)
    assert 0 <= s["exact"][0] <= s["f1"][0] <= 1
    for g in golds:     # a gold answer scores 1, unless it normalises to "" beside one that does not (the script drops it)
        if normalize_answer(g) or not any(map(normalize_answer, golds)):
            assert squad_scores({"q": g}, ex)["exact"][0] == 1 == squad_scores({"q": g}, ex)["f1"][0]


@pytest.fixture(scope="module")
def tokenizer():
    from grounded_fast.models.encoders import TextEncoder
    return TextEncoder.from_pretrained().tokenizer


def test_windows_hold_the_answer_tokens(tokenizer):
    long = " ".join(f"filler{k}" for k in range(40)) + " the answer is zebra crossing . " + \
        " ".join(f"more{k}" for k in range(40))
    at = long.index("zebra crossing")
    ex = [SquadExample("long", "what is the answer?", long, ("zebra crossing",), (at,)),
          SquadExample("none", "what is missing?", "nothing here", (), ())]
    w = encode_squad(ex, tokenizer, max_length=48, stride=16)
    assert w["input_ids"].shape[1] == 48 and w["example"].tolist().count(0) > 2    # the long context: several windows
    holding = [k for k in range(len(w["example"])) if w["example"][k] == 0 and w["start"][k] > 0]
    assert holding                                  # the answer is whole in some window
    for k in range(len(w["example"])):
        if k in holding:
            a, b = int(w["offsets"][k, w["start"][k], 0]), int(w["offsets"][k, w["end"][k], 1])
            assert long[a:b] == "zebra crossing"
        else:
            assert w["start"][k] == 0 and w["end"][k] == 0          # [CLS]: not in this window
    ctx = w["offsets"][:, :, 0] != NOT_CONTEXT
    assert not ctx[:, 0].any() and (w["token_type_ids"][ctx] == 1).all()    # [CLS] and the question are not context
    with pytest.raises(ValueError, match="'x': 12 question tokens leave a window of 16 tokens room for 1 context"):
        encode_squad([SquadExample("x", "a very long question " * 3, "ctx", (), ())], tokenizer, 16, 4)
    long_q = encode_squad([SquadExample("y", "why " * 100, "because", (), ())], tokenizer, 80, 4)
    first = long_q["token_type_ids"][0][long_q["attention_mask"][0] == 1]
    assert first.tolist().count(0) == 64 + 2        # [CLS] + 64 question tokens + [SEP]


def test_predict_answers_best_span_and_no_answer(tokenizer):
    ex = [SquadExample("a", "what year?", CONTEXT, ("1889",), (CONTEXT.index("1889"),)),
          SquadExample("b", "who?", CONTEXT, (), ())]
    w = encode_squad(ex, tokenizer, max_length=64, stride=16)
    s = torch.zeros(w["input_ids"].shape)
    e = torch.zeros(w["input_ids"].shape)
    s[0, w["start"][0]] = e[0, w["end"][0]] = 5.0       # the gold span of a
    s[1, 0] = e[1, 0] = 4.0                             # no answer for b ...
    ctx_b = (w["offsets"][1, :, 0] != NOT_CONTEXT).nonzero()[:, 0]
    s[1, ctx_b[0]] = e[1, ctx_b[2]] = 3.0               # ... beats its best span (6 < 8)
    assert predict_answers(ex, w, s, e, allow_no_answer=True) == {"a": "1889", "b": ""}
    v1 = predict_answers(ex, w, s, e)                   # v1.1: always a span
    assert v1["a"] == "1889" and v1["b"] == CONTEXT[int(w["offsets"][1, ctx_b[0], 0]):int(w["offsets"][1, ctx_b[2], 1])]
    assert predict_answers(ex, w, s, e, max_answer_tokens=2)["b"] != v1["b"]        # a 3-token span is too long
    assert squad_scores(predict_answers(ex, w, s, e, allow_no_answer=True), ex)["exact"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("version", ["v2.0", "v1.1"])
def test_demo_corpus_as_squad_reads_back(tmp_path, version):
    files = write_demo_squad(DemoCorpus(60, 0), tmp_path, version)
    for split, f in files.items():
        examples = load_squad(f)           # every answer is at its offset (the reader checks)
        assert examples and all(e.question.startswith("what colour is the ") for e in examples)
        assert any(e.is_impossible for e in examples) == (version == "v2.0")
    assert squad_files(tmp_path) == {k: str(v) for k, v in files.items()}


def test_every_answer_maps_to_its_tokens(tmp_path, tokenizer):
    """Over the demo SQuAD's questions, in windows short enough to cut contexts: each window that
    holds the gold answer whole spans exactly its characters; every answer is held by some window."""
    examples = load_squad(write_demo_squad(DemoCorpus(60, 0), tmp_path)["train"])
    w = encode_squad(examples, tokenizer, max_length=24, stride=8)
    held = set()
    for k in range(len(w["example"])):
        ex = examples[int(w["example"][k])]
        if w["start"][k] > 0:
            a, b = int(w["offsets"][k, w["start"][k], 0]), int(w["offsets"][k, w["end"][k], 1])
            assert ex.context[a:b] == ex.answers[0] and w["start"][k] <= w["end"][k]
            held.add(ex.qid)
    assert held == {e.qid for e in examples if e.answers} and len(w["example"]) > len(examples)


def test_groundedbert_on_squad_end_to_end(tmp_path, capsys):
    from grounded_fast import cli
    from grounded_fast.experiments.store import ResultStore
    write_demo_squad(DemoCorpus(60, 0), tmp_path / "squad")
    cfg = tmp_path / "gb.toml"
    cfg.write_text('variants = ["text-only", "partial-0.5"]\nseeds = [1]\npretrain_steps = 3\nfinetune_steps = 3\n'
                   'batch_size = 8\nmodel_preset = "tiny"\nnum_scenes = 60\n'
                   f'[downstream]\nkind = "squad"\npath = "{tmp_path / "squad"}"\nmax_length = 64\ndoc_stride = 16\n'
                   'max_items = 24\n')
    out = tmp_path / "run"
    code = cli.main(["run", "groundedbert", "--config", str(cfg), "--out", str(out), "--no-progress", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    with ResultStore(str(out / "results.sqlite"), read_only=True) as store:
        rows = {(m["run_id"], m["name"]): m["value"] for m in store.metrics()}
    for run in ("text-only-seed1", "partial-0.5-seed1"):
        assert 0 <= rows[run, "dev_exact"] <= rows[run, "dev_score"] <= 1
    report = (out / "report.md").read_text()
    for needle in ("SQuAD at", "dev F1", "dev exact match − text-only", "exact McNemar"):
        assert needle in report, needle


def test_squad_config_errors(tmp_path):
    from grounded_fast.experiments.groundedbert_study import GroundedBertStudyConfig
    with pytest.raises(ValueError, match="not a SQuAD task directory"):
        GroundedBertStudyConfig.from_dict({"downstream": {"kind": "squad", "path": str(tmp_path)}})
    write_demo_squad(DemoCorpus(40, 0), tmp_path)
    with pytest.raises(ValueError, match="doc_stride"):
        GroundedBertStudyConfig.from_dict({"downstream": {"kind": "squad", "path": str(tmp_path), "max_length": 64,
                                                          "doc_stride": 64}})
