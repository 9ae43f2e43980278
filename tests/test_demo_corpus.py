"""The built-in demo corpus: determinism, images that show the scene graph, captions that describe
it (English paraphrases, German agreement), the vocabulary, save/load and the splits."""
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from grounded_fast.data.demo import (ADVERBS, COLOURS, DE_ADJECTIVE, DE_NOUN, EN_PATTERN, EN_RELATION,
                                     EN_SIZE, EVALUATIONS, FRAMES, INVERSE, MAX_PARAPHRASES, PATTERNS,
                                     RADIUS, RELATIONS, RGB, SHADE, SHAPES, SPECIAL_TOKENS, DemoCorpus,
                                     Relation, SceneGraph, SceneObject, Style, Vocab, build_vocab,
                                     caption_pair, caption_tags, german_noun_phrase, render_scene, tokenize)


@pytest.fixture(scope="module")
def corpus():
    return DemoCorpus(num_scenes=40, seed=0)


def _digest(corpus):
    h = hashlib.sha256()
    for item in corpus:
        h.update(json.dumps(item.to_json(), sort_keys=True).encode())
        h.update(item.image.tobytes())
    return h.hexdigest()


def _in_palette(image, colours):
    """bool (H, W): the pixel has exactly one of the RGB ``colours``."""
    return np.any([np.all(image == np.array(c, dtype=np.uint8), axis=-1) for c in colours], axis=0)


def _centroid(image, colour, shade=True):
    """(x, y) pixel centroid and pixel count of the exact colour (and, with ``shade``, its shade)."""
    ys, xs = np.nonzero(_in_palette(image, [RGB[colour]] + [SHADE[colour]] * shade))
    return np.array([xs.mean(), ys.mean()]), len(xs)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_other_seed_differs():
    a, b, c = (DemoCorpus(12, seed=seed, image_size=96) for seed in (5, 5, 6))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert [x.graph for x in a] != [x.graph for x in c]


def test_shorter_corpus_is_a_prefix():
    short, long = DemoCorpus(5, seed=3), DemoCorpus(12, seed=3)
    for s, t in zip(short, long):
        assert (s.graph, s.target, s.paraphrases) == (t.graph, t.target, t.paraphrases)
        assert s.translations == t.translations


# ----------------------------------------------------------------------------- images
def test_images_show_objects_where_the_graph_puts_them(corpus):
    seen_relations, seen_counts, seen_patterns = set(), set(), set()
    for item in corpus:
        image, size = item.image, item.image_size
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and not image.flags.writeable
        seen_counts.add(len(item.graph.objects))
        centres = []
        for obj in item.graph.objects:
            centre, count = _centroid(image, obj.colour)
            disc = np.pi * (RADIUS[obj.size] * size) ** 2
            assert 0.2 * disc < count < disc, (item.scene_id, obj)
            expected = np.array([obj.x, obj.y]) * size - 0.5  # pixel i covers [i, i + 1)
            assert np.abs(centre - expected).max() < 1.0, (item.scene_id, obj)
            centres.append(centre)
            shaded = _in_palette(image, [SHADE[obj.colour]]).sum()  # the pattern is drawn, and only then
            assert (shaded > 0.1 * count) if obj.pattern != "plain" else shaded == 0, (item.scene_id, obj)
            seen_patterns.add(obj.pattern)
        rel, objects = item.graph.relation, item.graph.objects
        if rel is None:
            continue
        seen_relations.add(rel.name)
        dx, dy = centres[rel.object] - centres[rel.subject]
        if rel.name == "left_of":
            assert dx > 2 * abs(dy)
        elif rel.name == "right_of":
            assert -dx > 2 * abs(dy)
        elif rel.name == "above":
            assert dy > 2 * abs(dx)
        elif rel.name == "below":
            assert -dy > 2 * abs(dx)
        elif rel.name == "far_from":
            assert np.hypot(dx, dy) > 0.6 * size - 1
        else:
            reach = (RADIUS[objects[rel.subject].size] + RADIUS[objects[rel.object].size]) * size
            assert abs(dy) < 0.05 * size and reach < abs(dx) < reach + 0.15 * size
    assert seen_relations == set(RELATIONS) and seen_counts == {1, 2, 3} and seen_patterns == set(PATTERNS)


def test_antialiasing_only_blends_edges(corpus):
    graph = corpus[2].graph
    hard, soft = render_scene(graph, 128, antialias=False), render_scene(graph, 128)
    colours = [(255, 255, 255), *(RGB[o.colour] for o in graph.objects), *(SHADE[o.colour] for o in graph.objects)]
    assert _in_palette(hard, colours).all()
    blended = ~_in_palette(soft, colours)
    assert 0 < blended.sum() < 0.05 * blended.size
    for obj in graph.objects:  # anti-aliasing turns edge pixels of each shape into blends
        assert _centroid(soft, obj.colour)[1] < _centroid(hard, obj.colour)[1]


def test_palette_colours_never_arise_as_blends():
    palette = [*RGB.values(), *SHADE.values()]
    assert len(set(palette)) == len(palette)
    for c in palette:  # a 4x4-sample edge pixel: white + k/16 of the way to the colour
        for k in range(1, 16):
            blend = tuple(int(np.rint(255 + k / 16 * (v - 255))) for v in c)
            assert blend not in palette, (c, k)


def test_every_shape_renders_centred_inside_its_circle():
    for i, shape in enumerate(SHAPES):
        obj = SceneObject(shape, COLOURS[i % len(COLOURS)], "large", 0.5, 0.5, PATTERNS[i % len(PATTERNS)])
        image = render_scene(SceneGraph((obj,)), 160)
        centre, count = _centroid(image, obj.colour)
        disc = np.pi * (RADIUS["large"] * 160) ** 2
        assert 0.25 * disc < count < disc and np.abs(centre - 79.5).max() < 1.0, shape
        ys, xs = np.nonzero(np.any(image != 255, axis=-1))
        assert np.hypot(xs + 0.5 - 80, ys + 0.5 - 80).max() <= RADIUS["large"] * 160 + 1, shape


# ----------------------------------------------------------------------------- captions
def test_paraphrases_and_translations_describe_the_same_graph(corpus):
    for item in corpus:
        assert len(item.paraphrases) == 4 and len(item.translations) == 5
        assert len({item.target, *item.paraphrases}) == 5
        for en, de in zip([item.target, *item.paraphrases], item.translations):
            en_tokens, de_tokens = tokenize(en), re.findall(r"\w+", de)  # German keeps case
            for obj in item.graph.objects:
                assert obj.colour in en_tokens and obj.shape in en_tokens, (en, obj)
                assert set(EN_SIZE[obj.size]) & set(en_tokens), (en, obj)
                if obj.pattern != "plain":
                    assert set(EN_PATTERN[obj.pattern]) & set(en_tokens), (en, obj)
                    assert any(t.startswith(DE_ADJECTIVE[obj.pattern]) for t in de_tokens), (de, obj)
                assert any(t.startswith(DE_NOUN[obj.shape][0]) for t in de_tokens), (de, obj)  # Herz(en)
                for adjective in (DE_ADJECTIVE[obj.size], DE_ADJECTIVE[obj.colour]):
                    assert any(t.startswith(adjective) for t in de_tokens), (de, adjective)
            drawn = {w for o in item.graph.objects for w in EN_PATTERN[o.pattern]}  # no pattern not drawn
            assert {w for p in PATTERNS for w in EN_PATTERN[p] if w} & set(en_tokens) <= drawn, en
            rel = item.graph.relation
            if rel is not None:
                assert any(p in en for p in EN_RELATION[rel.name] + EN_RELATION[INVERSE[rel.name]]), en


def test_german_noun_phrase_agreement():
    circle = SceneObject("circle", "red", "small", 0.5, 0.5)  # der Kreis
    square = SceneObject("square", "blue", "large", 0.5, 0.5)  # das Quadrat
    diamond = SceneObject("diamond", "orange", "large", 0.5, 0.5)  # die Raute
    got = {(o.shape, case): german_noun_phrase(o, case)
           for o in (circle, square, diamond) for case in ("nom", "acc", "dat")}
    assert got == {
        ("circle", "nom"): "ein kleiner roter Kreis", ("circle", "acc"): "einen kleinen roten Kreis",
        ("circle", "dat"): "einem kleinen roten Kreis",
        ("square", "nom"): "ein großes blaues Quadrat", ("square", "acc"): "ein großes blaues Quadrat",
        ("square", "dat"): "einem großen blauen Quadrat",
        ("diamond", "nom"): "eine große orangefarbene Raute",
        ("diamond", "acc"): "eine große orangefarbene Raute",
        ("diamond", "dat"): "einer großen orangefarbenen Raute",
    }
    heart = SceneObject("heart", "pink", "medium", 0.5, 0.5, "striped")  # das Herz, dem Herzen
    assert german_noun_phrase(heart, "dat", "schön") == "einem schönen mittelgroßen pinkfarbenen gestreiften Herzen"
    assert german_noun_phrase(heart, "acc") == "ein mittelgroßes pinkfarbenes gestreiftes Herz"


def test_german_captions_of_hand_built_scenes():
    two = SceneGraph((SceneObject("circle", "red", "small", 0.2, 0.5),
                      SceneObject("square", "blue", "large", 0.7, 0.5)), Relation("left_of"))
    assert caption_pair(two, 0) == ("a small red circle is to the left of a large blue square",
                                    "ein kleiner roter Kreis ist links von einem großen blauen Quadrat")
    assert caption_pair(two, 4)[1] == ("das Bild zeigt einen kleinen roten Kreis, "
                                       "der links von einem großen blauen Quadrat ist")
    three = SceneGraph((SceneObject("diamond", "yellow", "large", 0.5, 0.2),
                        SceneObject("triangle", "green", "small", 0.5, 0.8),
                        SceneObject("star", "purple", "small", 0.1, 0.1)), Relation("above"))
    extra_en = ", and there is also a small purple star"
    extra_de = ", und es gibt auch einen kleinen violetten Stern"
    german = [caption_pair(three, t)[1].replace(extra_de, "") for t in range(5)]
    assert german == ["eine große gelbe Raute ist über einem kleinen grünen Dreieck",
                      "es gibt eine große gelbe Raute über einem kleinen grünen Dreieck",
                      "über einem kleinen grünen Dreieck ist eine große gelbe Raute",
                      "ein kleines grünes Dreieck ist unter einer großen gelben Raute",
                      "das Bild zeigt eine große gelbe Raute, die über einem kleinen grünen Dreieck ist"]
    assert all(caption_pair(three, t)[1].endswith(extra_de) for t in range(5))
    assert caption_pair(three, 0)[0] == "a large yellow diamond is above a small green triangle" + extra_en
    assert caption_pair(three, 3)[0] == "a small green triangle is below a large yellow diamond" + extra_en
    one = SceneGraph((SceneObject("cross", "orange", "large", 0.5, 0.5),))
    assert [caption_pair(one, t)[1] for t in (0, 1, 5, 6, 7)] == [
        "ein großes orangefarbenes Kreuz", "es gibt ein großes orangefarbenes Kreuz",
        "ein großes orangefarbenes Kreuz auf weißem Hintergrund",
        "ein Bild von einem großen orangefarbenen Kreuz",
        "ein Kreuz, das groß und orangefarben ist"]
    assert caption_pair(one, 7)[0] == "a cross that is large and orange"


def test_styled_captions_of_hand_built_scenes():
    """Non-visual words: adverb after the finite verb, frame before a clause (German: comma, the
    clause unchanged), evaluative adjective on the subject, closing tag; noun phrases take no adverb
    or frame."""
    two = SceneGraph((SceneObject("circle", "red", "small", 0.2, 0.5),
                      SceneObject("square", "blue", "large", 0.7, 0.5)), Relation("left_of"))
    style = Style(adverb=0, frame=1, evaluation=0, tag=0)
    assert caption_pair(two, 0, style=style) == (
        "I believe a nice small red circle is probably to the left of a large blue square, in my opinion",
        "ich glaube, ein schöner kleiner roter Kreis ist wahrscheinlich links von einem großen blauen Quadrat, "
        "meiner Meinung nach")
    assert caption_pair(two, 2, style=Style(adverb=17))[1] == (
        "links von einem großen blauen Quadrat ist höchstwahrscheinlich ein kleiner roter Kreis")
    assert caption_pair(two, 4, style=Style(adverb=1, evaluation=3)) == (
        "the picture apparently shows a simple small red circle that is to the left of a large blue square",
        "das Bild zeigt anscheinend einen einfachen kleinen roten Kreis, der links von einem großen blauen "
        "Quadrat ist")
    one = SceneGraph((SceneObject("cross", "orange", "large", 0.5, 0.5, "striped"),))
    count_tag = len(caption_tags(one)) - 1
    assert caption_tags(one)[count_tag] == (", exactly one shape", ", genau eine Form")
    assert caption_pair(one, 0, style=Style(0, 0, 1, count_tag)) == (
        "a pretty large orange striped cross, exactly one shape",
        "ein hübsches großes orangefarbenes gestreiftes Kreuz, genau eine Form")
    assert caption_pair(one, 7, style=Style(evaluation=1)) == (
        "a pretty cross that is large, orange and striped",
        "ein hübsches Kreuz, das groß, orangefarben und gestreift ist")
    assert caption_pair(one, 3, style=Style(adverb=4, frame=4)) == (
        "I would say you can clearly see a large orange striped cross",
        "ich würde sagen, man sieht eindeutig ein großes orangefarbenes gestreiftes Kreuz")
    three = SceneGraph(two.objects + (SceneObject("star", "purple", "small", 0.5, 0.1),), Relation("left_of"))
    assert caption_tags(three)[-2:] == [(", so there are exactly three shapes", ", also gibt es genau drei Formen"),
                                        (", three shapes altogether", ", insgesamt drei Formen")]


def test_non_visual_words_vary_and_are_translated(corpus):
    """Each caption's adverb, frame, evaluative adjective and tag appear in its German exactly; the
    target carries them too, and an item's captions differ in them."""
    def words(en, de):
        found = set()
        for k, (e, g) in enumerate(ADVERBS):
            assert bool(re.search(rf"\b{e}\b", en)) == bool(re.search(rf"\b{g}\b", de)), (en, de, e)
            found |= {("adverb", k)} if re.search(rf"\b{e}\b", en) else set()
        for k, (e, g) in enumerate(EVALUATIONS):
            assert bool(re.search(rf"\b{e}\b", en)) == bool(re.search(rf"\b{g}(e|er|es|en)\b", de)), (en, de, e)
            found |= {("evaluation", k)} if re.search(rf"\b{e}\b", en) else set()
        for k, (e, g) in enumerate(FRAMES):
            assert en.startswith(e + " ") == de.startswith(g + ", "), (en, de)
            found |= {("frame", k)} if en.startswith(e + " ") else set()
        return found

    styled_targets, differing = 0, 0
    for item in corpus:
        styles = [words(en, de) for en, de in zip([item.target, *item.paraphrases], item.translations)]
        styled_targets += bool(styles[0])
        differing += len({frozenset(x) for x in styles}) > 1
    assert styled_targets > len(corpus) // 3 and differing > len(corpus) // 2


def test_tiny_preset_vocabulary_has_abstract_and_concrete_words():
    """The tiny preset's decoder vocabulary (300 scenes, seed 0, train targets) holds >= 30 words of
    each class by the Brysbaert norms at the grounding study's thresholds; targets fit the decoder."""
    from grounded_fast.experiments.grounding import concreteness_words
    corpus = DemoCorpus(300, seed=0)
    targets = [corpus[i].target for i in corpus.splits["train"]]
    words = concreteness_words(build_vocab(targets))
    assert len(words["abstract"]) >= 30 and len(words["concrete"]) >= 30, words
    assert max(len(tokenize(t)) for t in corpus.texts("en")) + 2 <= 64  # GroundingSeq2SeqConfig.max_len


def test_paraphrase_count_limits_and_scene_validation():
    full = DemoCorpus(10, seed=1, num_paraphrases=MAX_PARAPHRASES)
    assert all(len(set(item.paraphrases) | {item.target}) == MAX_PARAPHRASES + 1 for item in full)
    with pytest.raises(ValueError):
        DemoCorpus(2, num_paraphrases=MAX_PARAPHRASES + 1)
    red = SceneObject("circle", "red", "small", 0.3, 0.3)
    with pytest.raises(ValueError):
        SceneGraph((red, SceneObject("star", "red", "large", 0.7, 0.7)), Relation("above"))
    with pytest.raises(ValueError):
        SceneGraph((red,), Relation("above"))
    with pytest.raises(ValueError):
        SceneObject("blob", "red", "small", 0.5, 0.5)
    with pytest.raises(ValueError):
        SceneObject("circle", "red", "small", 0.5, 0.5, "tartan")


def test_task_sources_share_the_target(corpus):
    item = corpus[1]
    assert item.source("C") is item.image
    assert item.source("P", 2) == item.paraphrases[2]
    assert item.source("T") == item.translations[0] and item.source("T") != item.target
    with pytest.raises(ValueError):
        item.source("X")


# ----------------------------------------------------------------------------- vocabulary
def test_vocab_round_trip(corpus):
    vocab = build_vocab(corpus.texts("en") + corpus.texts("de"))
    assert tuple(vocab.itos[:4]) == SPECIAL_TOKENS and len(vocab) == len(set(vocab.itos))
    for text in corpus.texts("en")[:50]:
        ids = vocab.encode(text)
        assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id and vocab.unk_id not in ids
        assert vocab.decode(ids) == text.lower()  # lowercase but the pronoun "I"
        assert vocab.decode(torch.tensor([vocab.pad_id] * 2 + ids + [vocab.pad_id] * 3)) == text.lower()
    for text in corpus.texts("de")[:50]:
        assert vocab.decode(vocab.encode(text)) == text.lower()
    assert vocab.encode("a zebra", add_bos_eos=False) == [vocab.stoi["a"], vocab.unk_id]
    assert vocab.decode([vocab.bos_id, vocab.stoi["a"], vocab.eos_id, vocab.stoi["a"]]) == "a"


def test_tokenizer_and_vocab_order():
    assert tokenize("Ein großer Kreis, links!") == ["ein", "großer", "kreis", ",", "links", "!"]
    assert build_vocab(["b a a , c"]).itos[4:] == ["a", ",", "b", "c"]
    assert build_vocab(["a b b", "c b"], min_freq=2).itos[4:] == ["b"]
    with pytest.raises(ValueError):
        Vocab(["a", "<pad>", "<bos>", "<eos>", "<unk>"])


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    corpus = DemoCorpus(6, seed=2, image_size=64, num_paraphrases=3)
    corpus.save(tmp_path, images=True)
    loaded = DemoCorpus.load(tmp_path)
    assert list(loaded) == list(corpus) and loaded.splits == corpus.splits
    assert (loaded.seed, loaded.image_size, loaded.num_paraphrases) == (2, 64, 3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(loaded, corpus))
    raw = (tmp_path / "scenes.jsonl").read_bytes()
    assert "\\u00" not in raw.decode("utf-8") and "ü".encode() in raw  # über, grün: UTF-8 unescaped
    image_module = pytest.importorskip("PIL.Image")
    for item in corpus:
        with image_module.open(tmp_path / "images" / f"{item.scene_id}.png") as png:
            assert np.array_equal(np.asarray(png.convert("RGB")), item.image)
    (tmp_path / "corpus.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ValueError):
        DemoCorpus.load(tmp_path)


# ----------------------------------------------------------------------------- splits
def test_splits_disjoint_covering_seeded():
    corpus = DemoCorpus(50, seed=1)
    splits = corpus.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    assert sorted(sum(splits.values(), [])) == list(range(50))
    assert all(corpus[i].split == name for name, idx in splits.items() for i in idx)
    assert DemoCorpus(50, seed=1).splits == splits
    assert DemoCorpus(50, seed=2).splits["test"] != splits["test"]
    assert [len(v) for v in DemoCorpus(8, split_fractions=(0.5, 0.25, 0.25)).splits.values()] == [4, 2, 2]
    with pytest.raises(ValueError):
        DemoCorpus(8, split_fractions=(0.5, 0.4, 0.2))
