"""The captioned-corpus reader (grounded_fast.data.corpora), the COCO loader and the demo exporters.

Round trips: the demo corpus written in each format (data.export) reads back with the same ids,
captions, second-language captions and image pixels per split. Errors: one test per kind of bad input.
"""
import base64
import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from grounded_fast import cli
from grounded_fast.data import CorpusItem, DataFormatError, DemoCorpus, corpus_files, encode_png, read_corpus
from grounded_fast.data.export import write_demo_dataset
from grounded_fast.data.formats.coco import load_coco_captions

SHARED_MULTI30K = Path("/work/shared/data/multi30k")
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def corpus():
    return DemoCorpus(24, 0)


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    """fmt -> a folder holding the corpus in that format (no encoder features)."""
    root = tmp_path_factory.mktemp("exported")
    return {fmt: (write_demo_dataset(corpus, root / fmt, fmt, features=False), root / fmt)[1]
            for fmt in ("vatex", "coco", "wit", "multi30k")}


def _expected(corpus, split, fmt):
    """(ids, captions, other) the reader must give for ``split`` of the exported corpus."""
    items = [corpus[i] for i in corpus.splits[split]]
    ids = [str(it.index) if fmt == "coco" else it.scene_id for it in items]
    if fmt == "wit":
        return ids, [(it.target,) for it in items], [() for _ in items]
    captions = [(it.target, *it.paraphrases) for it in items]
    other = [() for _ in items] if fmt == "coco" else [tuple(it.translations) for it in items]
    return ids, captions, other


@pytest.mark.parametrize("fmt", ["vatex", "coco", "wit", "multi30k"])
def test_round_trip(fmt, corpus, exported):
    files = corpus_files(fmt, exported[fmt])
    assert sorted(files) == sorted(SPLITS)
    for split in SPLITS:
        got = read_corpus(fmt, exported[fmt], split)
        ids, captions, other = _expected(corpus, split, fmt)
        assert [it.item_id for it in got] == ids
        assert [it.captions for it in got] == captions
        assert [it.other for it in got] == other
        assert all(it.features_path is None for it in got)
        if fmt == "vatex":
            assert all(it.image_path is None and it.image_bytes is None for it in got)
            continue
        for it, i in zip(got[:2], corpus.splits[split][:2]):
            image = it.image()
            assert image.dtype == np.uint8 and np.array_equal(image, corpus[i].image)
    assert len(read_corpus(fmt, exported[fmt], "train", max_items=3)) == 3
    assert (exported[fmt] / "README.txt").is_file()


def test_vatex_features_from_the_shipped_encoder(tmp_path):
    corpus = DemoCorpus(10, 1)
    write_demo_dataset(corpus, tmp_path, "vatex")
    items = read_corpus("vatex", tmp_path, "train")
    assert [it.features_path for it in items] == [tmp_path / "features" / f"{it.item_id}.npy" for it in items]
    a, b = items[0].features(), items[1].features()
    assert a.shape == (49, 1280) and a.dtype == np.float32 and np.isfinite(a).all()
    assert not np.array_equal(a, b)
    assert "German" in (tmp_path / "README.txt").read_text()


def test_multi30k_pads_to_five_descriptions(tmp_path):
    corpus = DemoCorpus(12, 0, num_paraphrases=1)
    write_demo_dataset(corpus, tmp_path, "multi30k")
    it = read_corpus("multi30k", tmp_path, "train")[0]
    src = corpus[corpus.splits["train"][0]]
    en = (src.target, src.paraphrases[0])
    assert it.captions == en * 2 + en[:1]
    assert it.other == tuple(src.translations) * 2 + tuple(src.translations[:1])


def test_vatex_without_test_file_halves_val(corpus, exported, tmp_path):
    for name in ("vatex_training_v1.0.json", "vatex_validation_v1.0.json"):
        shutil.copy(exported["vatex"] / name, tmp_path / name)
    val_ids = [corpus[i].scene_id for i in corpus.splits["val"]]  # 3 videos: 2 + 1
    assert corpus_files("vatex", tmp_path)["test"] == tmp_path / "vatex_validation_v1.0.json"
    assert [it.item_id for it in read_corpus("vatex", tmp_path, "val")] == val_ids[:2]
    assert [it.item_id for it in read_corpus("vatex", tmp_path, "test")] == val_ids[2:]
    (tmp_path / "vatex_validation_v1.0.json").write_text(json.dumps(
        [{"videoID": "v0", "enCap": ["a"], "chCap": ["b"]}]))
    with pytest.raises(DataFormatError, match="'test' is empty"):
        read_corpus("vatex", tmp_path, "test")


def test_features_folder(exported, tmp_path):
    root = tmp_path / "vatex"
    shutil.copytree(exported["vatex"], root)
    ids = [it.item_id for it in read_corpus("vatex", root, "train")]
    feats = root / "features"
    feats.mkdir()
    np.save(feats / f"{ids[0]}.npy", np.arange(8, dtype=np.float64))  # (D,) is read as (1, D)
    with pytest.raises(DataFormatError, match=rf"features file not found \({len(ids) - 1} of {len(ids)} items.*"
                                              r"and \d+ more\)") as info:
        read_corpus("vatex", root, "train")
    assert info.value.path.endswith(f"{ids[1]}.npy")
    item = read_corpus("vatex", root, "train", max_items=1)[0]
    assert item.features().shape == (1, 8) and item.features().dtype == np.float32
    np.save(feats / f"{ids[0]}.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DataFormatError, match=r"shape \(T, D\)"):
        item.features()
    with pytest.raises(DataFormatError, match="features folder not found"):
        read_corpus("coco", exported["coco"], "train", features=tmp_path / "nope")
    with pytest.raises(ValueError, match="'x' has no features"):
        CorpusItem("x", ("a",)).features()
    with pytest.raises(ValueError, match="'x' has no image"):
        CorpusItem("x", ("a",)).image()
    with pytest.raises(ValueError, match="vatex has no images"):
        read_corpus("vatex", root, "train", images=tmp_path)


def test_missing_images_are_named_with_their_count(exported, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(exported["multi30k"], root)
    pngs = sorted((root / "images").glob("*.png"))
    for p in pngs[:7]:
        p.unlink()
    missing = sum(1 for i in read_corpus("multi30k", exported["multi30k"], "train") if not (root / "images" /
                  i.image_path.name).is_file())
    with pytest.raises(DataFormatError, match=rf"image file not found \({missing} of \d+ items"):
        read_corpus("multi30k", root, "train")
    shutil.rmtree(root / "images")  # the default folder is optional: no images then
    assert all(it.image_path is None for it in read_corpus("multi30k", root, "train"))


def test_corpus_files_errors(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        corpus_files("coco", tmp_path / "nope")
    with pytest.raises(DataFormatError, match="no train split"):
        corpus_files("wit", tmp_path)
    with pytest.raises(ValueError, match="unknown corpus kind 'flickr'"):
        read_corpus("flickr", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        read_corpus("coco", exported["coco"], "dev")
    root = tmp_path / "coco"
    shutil.copytree(exported["coco"], root)
    (root / "annotations" / "captions_test.json").unlink()
    with pytest.raises(DataFormatError, match="no 'test' split"):
        read_corpus("coco", root, "test")
    with pytest.raises(DataFormatError, match="unknown split"):
        corpus_files("coco", root, {"dev": "x.json"})


def test_coco_glob_ambiguity_and_override(exported, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(exported["coco"], root)
    ann = root / "annotations"
    (ann / "captions_train.json").rename(ann / "captions_train2017.json")
    shutil.copy(ann / "captions_train2017.json", ann / "captions_train2014.json")
    with pytest.raises(DataFormatError, match="captions_train2014.json, captions_train2017.json"):
        read_corpus("coco", root, "train")
    files = corpus_files("coco", root, {"train": "annotations/captions_train2017.json"})
    assert files["train"] == ann / "captions_train2017.json"
    (root / "train").rename(root / "train2017")  # the image folder follows the file name
    items = read_corpus("coco", root, "train", splits={"train": str(ann / "captions_train2017.json")})
    assert items[0].image_path.parent == root / "train2017"


def _coco(tmp_path, images=None, annotations=None, name="captions_x.json"):
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}] if images is None else images,
            "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": " two "},
                            {"image_id": 1, "caption": "uno"}] if annotations is None else annotations}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_coco_loader(tmp_path):
    images = load_coco_captions(_coco(tmp_path))
    assert [(im.image_id, im.file_name, im.captions, im.image_path) for im in images] == [
        ("1", "a.png", ("one", "uno"), None), ("2", "b.png", ("two",), None)]
    gz = tmp_path / "captions_y.json.gz"
    gz.write_bytes(gzip.compress(_coco(tmp_path).read_bytes()))
    assert load_coco_captions(gz) == images
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"image file not found \(1 of 2 images.*b\.png") as info:
        load_coco_captions(_coco(tmp_path), folder)
    assert info.value.path.endswith("b.png")


@pytest.mark.parametrize("images, annotations, match", [
    ("bad", None, "expected an object with the lists"),
    ([], [], "no images"),
    ([{"id": 1}], [], r"images\[0\]: expected an object with keys 'id', 'file_name'"),
    ([{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], [], "duplicate image id 1"),
    ([{"id": 1, "file_name": "/etc/a.png"}], [], "unsafe file_name"),
    ([{"id": 1, "file_name": "../a.png"}], [], "unsafe file_name"),
    (None, [{"image_id": 3, "caption": "x"}], r"annotations\[0\]: image_id 3 is not in 'images'"),
    (None, [{"image_id": 1}], r"annotations\[0\]: expected an object with keys 'image_id', 'caption'"),
    (None, [{"image_id": 1, "caption": "  "}, {"image_id": 2, "caption": "b"}], "empty caption"),
    (None, [{"image_id": 1, "caption": "a"}], r"image '2' has no caption \(1 of 2"),
])
def test_coco_loader_errors(tmp_path, images, annotations, match):
    path = _coco(tmp_path, images, annotations)
    if images == "bad":
        path.write_text('{"images": [')
        match = "invalid JSON"
    with pytest.raises(DataFormatError, match=match) as info:
        load_coco_captions(path)
    assert info.value.path == str(path)


def _wit(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def test_wit_base64_row_ids_and_urls(tmp_path, corpus):
    png = encode_png(corpus[0].image)
    b64 = base64.b64encode(png).decode()
    header = ["image_url", "b64_bytes", "caption_reference_description"]
    _wit(tmp_path / "wit_train.tsv", header, [["http://x/a.jpg", b64, "a shape"], ["u", b64, ""],
                                             ["http://x/c.jpg", b64, "another"]])
    items = read_corpus("wit", tmp_path, "train")
    assert [(it.item_id, it.captions) for it in items] == [("train-0", ("a shape",)), ("train-2", ("another",))]
    assert np.array_equal(items[0].image(), corpus[0].image) and items[0].image_path is None
    _wit(tmp_path / "wit_train.tsv", ["id", "image_url", "caption_reference_description"],
         [["a", "pics/a.png", "x"], ["b", "http://upload.wikimedia.org/b.jpg", "y"]])
    with pytest.raises(DataFormatError, match="web address .*download the images first") as info:
        read_corpus("wit", tmp_path, "train")
    assert info.value.line == 3
    _wit(tmp_path / "wit_train.tsv", ["id", "image_url", "caption_reference_description"],
         [["a", "pics/a.png", "x"], ["a", str(tmp_path / "pics" / "b.png"), "y"]])
    with pytest.raises(DataFormatError, match="duplicate item id 'a'"):
        read_corpus("wit", tmp_path, "train")
    _wit(tmp_path / "wit_train.tsv", ["id", "image_url", "caption_reference_description"],
         [["a", "pics/a.png", "x"], ["b", str(tmp_path / "pics" / "b.png"), "y"]])
    with pytest.raises(DataFormatError, match=r"image file not found \(2 of 2"):
        read_corpus("wit", tmp_path, "train")
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png)
    (tmp_path / "pics" / "b.png").write_bytes(b"not a png")
    a, b = read_corpus("wit", tmp_path, "train")
    assert a.image_path == tmp_path / "pics" / "a.png" and np.array_equal(a.image(), corpus[0].image)
    with pytest.raises(DataFormatError, match="not a readable image"):
        b.image()
    (tmp_path / "wit_train.tsv.gz").write_bytes(b"")
    with pytest.raises(DataFormatError, match="both wit_train.tsv and wit_train.tsv.gz"):
        read_corpus("wit", tmp_path, "train")


@pytest.mark.skipif(not (SHARED_MULTI30K / "task2" / "raw").is_dir(), reason="real Multi30k copy not available")
def test_real_multi30k():
    items = read_corpus("multi30k", SHARED_MULTI30K, "test", max_items=5)
    assert len(items) == 5 and all(len(it.captions) == 5 and len(it.other) == 5 for it in items)
    assert all(it.item_id.isdigit() for it in items)  # Flickr30k file stems


def test_cli_demo_data(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["demo-data", "--format", "coco", str(out), "--scenes", "12", "--seed", "3"]) == 0
    assert "coco demo corpus (12 scenes, seed 3" in capsys.readouterr().out
    assert [it.item_id for it in read_corpus("coco", out, "val")] == [
        str(i) for i in DemoCorpus(12, 3).splits["val"]]
    assert cli.main(["demo-data", "--format", "wit", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli.main(["demo-data", "--format", "wit", str(out), "--scenes", "12", "--overwrite"]) == 0
    assert len(read_corpus("wit", out, "train")) == len(DemoCorpus(12, 0).splits["train"])
    assert cli.main(["demo-data", "--format", "vatex", str(tmp_path / "e"), "--scenes", "3"]) == 2
    assert "no test items" in capsys.readouterr().err
