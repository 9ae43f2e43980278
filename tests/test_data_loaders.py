"""Loaders for the real data formats (grounded_fast.data.loaders).

Real copies under /work/shared/data are used when present (Multi30k, BLiMP); CI clones may lack
them, so those tests skip. The shipped Multi30k subset and every generated-file test always run.
"""
import base64
import csv
import gzip
import io
import json
import pickle
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from grounded_fast.data.loaders import (
    GLUE_TASKS, DataFormatError, GlueTask, Multi30kImage, list_blimp_phenomena, load_blimp, load_cola,
    load_glue_tsv, load_mrpc, load_multi30k, load_multi30k_builtin, load_multi30k_jsonl, load_sst2,
    load_vatex, load_wit_tsv, write_multi30k_jsonl)

SHARED = Path("/work/shared/data")
MULTI30K = SHARED / "multi30k" / "task2"
BLIMP_ZIP = SHARED / "blimp" / "BLiMP.zip"
needs_multi30k = pytest.mark.skipif(not (MULTI30K / "raw").is_dir(),
                                    reason=f"real Multi30k copy not available at {MULTI30K}")
needs_blimp = pytest.mark.skipif(not BLIMP_ZIP.is_file(), reason=f"real BLiMP zip not available at {BLIMP_ZIP}")


@contextmanager
def raises_at(path, line, match=None):
    """Expect a DataFormatError naming ``path`` (a suffix of err.path) and ``line``."""
    with pytest.raises(DataFormatError, match=match) as info:
        yield info
    err = info.value
    assert err.path.endswith(str(path)), f"error names {err.path!r}, expected {path!r}"
    assert err.line == line, f"error line {err.line}, expected {line}: {err}"
    prefix = f"{err.path}:{line}:" if line is not None else f"{err.path}:"
    assert str(err).startswith(prefix), str(err)


def write_bytes(path, text, crlf=False, bom=False, gz=False):
    data = text.replace("\n", "\r\n") if crlf else text
    raw = (b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# ---------------------------------------------------------------- common behaviour
def test_error_carries_path_and_line_and_pickles():
    err = DataFormatError("dir/a.tsv", 7, "wrong number of fields")
    assert isinstance(err, ValueError)
    assert (err.path, err.line, str(err)) == ("dir/a.tsv", 7, "dir/a.tsv:7: wrong number of fields")
    assert str(DataFormatError(Path("b.json"), None, "file not found")) == "b.json: file not found"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, str(again)) == (err.path, err.line, str(err))


SST2_TEXT = ("sentence\tlabel\n"
             "hide new secretions from the parental units \t0\n"
             "contains no wit , only labored gags \t0\n"
             "that loves its characters and communicates something rather beautiful about human nature \t1\n")


@pytest.mark.parametrize("variant", [dict(), dict(crlf=True), dict(bom=True, crlf=True), dict(gz=True),
                                     dict(gz=True, bom=True, crlf=True)])
def test_crlf_bom_gzip_read_like_plain(tmp_path, variant):
    plain = load_sst2(write_bytes(tmp_path / "plain.tsv", SST2_TEXT))
    other = load_sst2(write_bytes(tmp_path / "train.tsv", SST2_TEXT, **variant))
    assert other == plain and len(plain) == 3
    plain = load_cola(write_bytes(tmp_path / "plain.tsv", COLA_TRAIN))  # text in the last column
    other = load_cola(write_bytes(tmp_path / "train.tsv", COLA_TRAIN, **variant))
    assert other == plain and plain[0].texts[0].endswith("we propose.")


def test_invalid_utf8_names_line(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_bytes(b"sentence\tlabel\ngood one\t1\nbad \xff byte\t0\n")
    with raises_at(p, 3, match="UTF-8"):
        load_sst2(p)


def test_truncated_gzip_is_a_data_format_error(tmp_path):
    p = tmp_path / "train.tsv.gz"
    body = SST2_TEXT.split("\n", 1)[1]
    p.write_bytes(gzip.compress((SST2_TEXT + body * 200).encode())[:-30])
    with pytest.raises(DataFormatError, match="compressed") as info:
        load_sst2(p)
    assert info.value.path == str(p)


def damaged_gzip(path, text):
    """Write ``text`` gzipped with 30 bytes of its deflate stream inverted (a bad block, not a
    truncation); returns ``path``."""
    data = bytearray(gzip.compress(text.encode("utf-8"), mtime=0))
    data[30:60] = bytes(b ^ 0xFF for b in data[30:60])
    path.write_bytes(bytes(data))
    return path


@contextmanager
def raises_corrupt(path):
    """Expect a DataFormatError naming ``path`` (no line) chained from the decompressor's error."""
    with raises_at(path, None, match="cannot read compressed data") as info:
        yield info
    assert isinstance(info.value.__cause__, (zlib.error, OSError, EOFError, zipfile.BadZipFile)), \
        repr(info.value.__cause__)


MULTI30K_JSONL = "".join(json.dumps({"image": f"{i}.jpg", "en": [f"a {i}"] * 5, "de": [f"b {i}"] * 5}) + "\n"
                         for i in range(300))
WIT_PLAIN = "image_url\tcaption_reference_description\n" + "".join(f"{i}.jpg\tcaption {i}\n" for i in range(600))


@pytest.mark.parametrize("loader,text", [
    (load_sst2, SST2_TEXT + "a sentence that goes on\t1\n" * 600),
    (lambda p: load_wit_tsv(p, page_column=None, section_column=None), WIT_PLAIN),
    (lambda p: load_wit_tsv(p, page_column=None, section_column=None, quoted=False), WIT_PLAIN),
    (load_multi30k_jsonl, MULTI30K_JSONL),
], ids=["glue", "wit", "wit-plain", "multi30k-jsonl"])
def test_damaged_gzip_is_a_data_format_error(tmp_path, loader, text):
    p = damaged_gzip(tmp_path / "data.gz", text)
    with raises_corrupt(p):
        loader(p)


def test_gzip_is_decompressed_once(tmp_path):
    p = tmp_path / "train.tsv.gz"  # a gzip file inside a gzip file: one level, like zcat and read_text
    p.write_bytes(gzip.compress(gzip.compress(SST2_TEXT.encode())))
    with raises_at(p, 1, match="not valid UTF-8"):
        load_sst2(p)


def test_missing_file(tmp_path):
    with raises_at(tmp_path / "nope.tsv", None, match="file not found"):
        load_sst2(tmp_path / "nope.tsv")


# ---------------------------------------------------------------- VATEX
def make_vatex(tmp_path, lengths=(3, 5, 1), dim=1024, gz=False):
    items = [{"videoID": f"vid{i}_000010_000020",
              "enCap": [f"A person does thing {j} in video {i}." for j in range(10)],
              "chCap": [f"一个人在视频{i}中做第{j}件事。" for j in range(10)]} for i in range(len(lengths))]
    ann = tmp_path / ("ann.json.gz" if gz else "ann.json")
    write_bytes(ann, json.dumps(items, ensure_ascii=False, indent=2), gz=gz)
    feat = tmp_path / "i3d"
    feat.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for it, T in zip(items, lengths):
        arrays[it["videoID"]] = rng.standard_normal((T, dim)).astype(np.float32)
        np.save(feat / f"{it['videoID']}.npy", arrays[it["videoID"]])
    return ann, feat, items, arrays


def item_lines(path):
    """1-based lines where the items of an indent=2 JSON dump start."""
    text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [i + 1 for i, line in enumerate(text.decode().split("\n")) if line == "  {"]


@pytest.mark.parametrize("gz", [False, True])
def test_vatex_loads_captions_and_lazy_features(tmp_path, gz):
    ann, feat, items, arrays = make_vatex(tmp_path, gz=gz)
    ds = load_vatex(ann, feat, check_shapes=True)
    assert len(ds) == 3 and [v.video_id for v in ds] == [it["videoID"] for it in items]
    v = ds[1]
    assert v.en == tuple(items[1]["enCap"]) and v.zh == tuple(items[1]["chCap"])
    assert len(v.en) == len(v.zh) == 10
    x = ds.features(1)
    assert isinstance(x, np.memmap) and x.shape == (5, 1024) and not x.flags.writeable
    np.testing.assert_array_equal(x, arrays[v.video_id])
    assert ds.by_id(items[2]["videoID"]).features(mmap=False).shape == (1, 1024)
    assert [x.line for x in ds] == item_lines(ann)
    assert load_vatex(ann).videos[0].feature_path is None  # captions only


def test_vatex_missing_feature_file_named(tmp_path):
    ann, feat, items, _ = make_vatex(tmp_path)
    (feat / f"{items[1]['videoID']}.npy").unlink()
    with raises_at(feat / f"{items[1]['videoID']}.npy", None, match="1 of 3 videos lack features"):
        load_vatex(ann, feat)


def test_vatex_feature_shape_validated(tmp_path):
    ann, feat, items, _ = make_vatex(tmp_path)
    bad = feat / f"{items[0]['videoID']}.npy"
    np.save(bad, np.zeros((4, 512), np.float32))
    ds = load_vatex(ann, feat)  # existence only
    with raises_at(bad, None, match=r"\(T, 1024\).*\(4, 512\)"):
        ds.features(0)
    with raises_at(bad, None, match="shape"):
        load_vatex(ann, feat, check_shapes=True)
    assert load_vatex(ann, feat, feature_dim=None).features(0).shape == (4, 512)
    np.save(bad, np.zeros(7, np.float32))  # 1-D
    with raises_at(bad, None, match="shape"):
        ds.features(0)


def test_vatex_json_syntax_error_line(tmp_path):
    p = tmp_path / "ann.json"
    good = '  {"videoID": "a", "enCap": ["x"], "chCap": ["y"]}'
    p.write_text("[\n" + good + ",\n" + good.replace('"a"', '"b"') + "\n" + good + "\n]\n")  # missing comma
    with raises_at(p, 4, match="expected ',' or ']'"):
        load_vatex(p, n_captions=1)
    p.write_text('[\n  {"videoID": "a",\n   "enCap": ["x" "y"]}\n]')
    with raises_at(p, 3, match="invalid JSON"):
        load_vatex(p, n_captions=None)
    p.write_text('{"videoID": "a"}')
    with raises_at(p, 1, match="JSON list"):
        load_vatex(p)


def test_vatex_item_errors_name_item_and_line(tmp_path):
    ann, _, items, _ = make_vatex(tmp_path)
    items[1]["enCap"] = items[1]["enCap"][:9]
    ann.write_text(json.dumps(items, indent=2, ensure_ascii=False))
    with raises_at(ann, item_lines(ann)[1], match=r"item 1 .*'enCap' has 9 captions, expected 10"):
        load_vatex(ann)
    items[1]["enCap"].append("   ")
    ann.write_text(json.dumps(items, indent=2, ensure_ascii=False))
    with raises_at(ann, item_lines(ann)[1], match=r"'enCap'\[9\] is empty"):
        load_vatex(ann)
    items[1] = dict(items[2])
    ann.write_text(json.dumps(items, ensure_ascii=False))
    with raises_at(ann, 1, match="item 2: duplicate videoID"):
        load_vatex(ann)
    del items[0]["chCap"]
    ann.write_text(json.dumps(items[:1], ensure_ascii=False))
    with raises_at(ann, 1, match=r"item 0: missing key\(s\) \['chCap'\]"):
        load_vatex(ann)
    assert load_vatex(ann, require_chinese=False)[0].zh == ()


# ---------------------------------------------------------------- Multi30k (shipped subset)
def test_multi30k_builtin_subset():
    train, val = load_multi30k_builtin("train"), load_multi30k_builtin("val")
    assert len(train) == 1000 and len(val) == 200
    for split in (train, val):
        assert len({im.image_id for im in split}) == len(split)
        for im in split:
            assert im.image_id.endswith(".jpg")
            assert len(im.en) == len(im.de) == 5 and all(s.strip() == s and s for s in im.en + im.de)
    first = train[0]
    assert first.image_id == "1000092795.jpg"
    assert first.en[0] == "Two young guys with shaggy hair look at their hands while hanging out in the yard."
    assert first.de[0] == "Zwei Männer betrachten etwas im Garten"
    assert len(first.paraphrase_pairs()) == 10 and first.translation_pairs()[0] == (first.en[0], first.de[0])
    assert {im.image_id for im in train}.isdisjoint(im.image_id for im in val)
    with pytest.raises(ValueError, match="available"):
        load_multi30k_builtin("test")


def test_multi30k_builtin_files_are_small():
    import grounded_fast.data.formats.multi30k as m
    total = sum(f.stat().st_size for f in m._BUILTIN_DIR.iterdir())
    assert total < 750_000          # every built-in file together (the English pool is about half)
    assert (m._BUILTIN_DIR / "README.md").read_text().count("Elliott") >= 1


# ---------------------------------------------------------------- Multi30k (real copy)
@pytest.fixture(scope="module")
def multi30k_train():
    return load_multi30k(MULTI30K, "train")


@needs_multi30k
@pytest.mark.parametrize("split", ["train", "val", "test_2016"])
def test_multi30k_real_counts_and_first_caption(split, request):
    images = request.getfixturevalue("multi30k_train") if split == "train" else load_multi30k(MULTI30K, split)
    ids = (MULTI30K / "image_splits" / f"{split}_images.txt").read_text().split()
    assert [im.image_id for im in images] == ids
    for lang in ("en", "de"):
        for k in (1, 5):
            with gzip.open(MULTI30K / "raw" / f"{split}.{k}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
            assert len([x for x in lines if x]) == len(ids)
            assert getattr(images[0], lang)[k - 1] == lines[0].strip()
            assert getattr(images[-1], lang)[k - 1] == lines[len(ids) - 1].strip()


def test_multi30k_builtin_english_pool_extends_the_subset():
    from grounded_fast.data import iter_multi30k_builtin_english
    pool = list(iter_multi30k_builtin_english())
    assert len(pool) == 20_000 and sum(len(s.split()) for s in pool) == 242_040
    assert pool[:5000] == [s for im in load_multi30k_builtin("train") for s in im.en]
    assert all(s and s.strip() == s for s in pool)


@needs_multi30k
def test_multi30k_builtin_equals_real_prefix(multi30k_train):
    from grounded_fast.data import iter_multi30k_builtin_english
    assert list(iter_multi30k_builtin_english()) == [s for im in multi30k_train[:4000] for s in im.en]
    assert load_multi30k_builtin("train") == multi30k_train[:1000]
    assert load_multi30k_builtin("val") == load_multi30k(SHARED / "multi30k", "val")[:200]  # parent folder


@needs_multi30k
def test_multi30k_real_split_without_captions():
    with pytest.raises(DataFormatError, match="10 file"):
        load_multi30k(MULTI30K, "test_2017")  # image list exists, task 2 has no descriptions


# ---------------------------------------------------------------- Multi30k (generated)
def make_multi30k(tmp_path, n=3, split="val", gz=True):
    root = tmp_path / "task2"
    (root / "raw").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "image_splits" / f"{split}_images.txt").write_text("".join(f"{100 + i}.jpg\n" for i in range(n)))
    for lang in ("en", "de"):
        for k in range(1, 6):
            text = "".join(f"{lang} description {k} of image {i}\n" for i in range(n))
            write_bytes(root / "raw" / (f"{split}.{k}.{lang}" + (".gz" if gz else "")), text, gz=gz)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_multi30k_generated(tmp_path, gz):
    root = make_multi30k(tmp_path, gz=gz)
    images = load_multi30k(tmp_path, "val")  # parent of task2/ works too
    assert images == load_multi30k(root, "val")
    assert images[2] == Multi30kImage("102.jpg", tuple(f"en description {k} of image 2" for k in range(1, 6)),
                                      tuple(f"de description {k} of image 2" for k in range(1, 6)))


def test_multi30k_missing_files_named(tmp_path):
    root = make_multi30k(tmp_path)
    (root / "raw" / "val.3.de.gz").unlink()
    (root / "raw" / "val.4.de.gz").unlink()
    with raises_at(root / "raw" / "val.3.de.gz", None, match=r"2 file\(s\).*val\.4\.de\.gz"):
        load_multi30k(root, "val")
    with raises_at(tmp_path / "empty", None, match="not a Multi30k"):
        load_multi30k(tmp_path / "empty", "val")


def test_multi30k_line_count_mismatch_names_files_and_counts(tmp_path):
    root = make_multi30k(tmp_path)
    write_bytes(root / "raw" / "val.2.en.gz", "a\nb\nc\nd\n", gz=True)
    write_bytes(root / "raw" / "val.5.de.gz", "a\nb\n", gz=True)
    with raises_at(root / "raw" / "val.2.en.gz", None, match="3 images") as info:
        load_multi30k(root, "val")
    msg = str(info.value)
    assert "val.2.en.gz has 4" in msg and "val.5.de.gz has 2" in msg and "val_images.txt" in msg


def test_multi30k_empty_line_and_duplicate_id(tmp_path):
    root = make_multi30k(tmp_path)
    write_bytes(root / "raw" / "val.1.de.gz", "a\n \nc\n", gz=True)
    with raises_at(root / "raw" / "val.1.de.gz", 2, match="empty line"):
        load_multi30k(root, "val")
    root = make_multi30k(tmp_path / "b")
    (root / "image_splits" / "val_images.txt").write_text("1.jpg\r\n2.jpg\r\n1.jpg\r\n")
    with raises_at(root / "image_splits" / "val_images.txt", 3, match="duplicate image id '1.jpg'"):
        load_multi30k(root, "val")


def test_multi30k_jsonl_roundtrip_and_errors(tmp_path):
    images = load_multi30k(make_multi30k(tmp_path), "val")
    p = tmp_path / "sub.jsonl.gz"
    write_multi30k_jsonl(images, p)
    first = p.read_bytes()
    write_multi30k_jsonl(images, p)
    assert p.read_bytes() == first  # reproducible
    assert load_multi30k_jsonl(p) == images
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"image": "1.jpg", "en": ["a"] * 5, "de": ["b"] * 5})] * 2
    short = json.dumps({"image": "2.jpg", "en": ["a"], "de": ["b"] * 5})
    bad.write_text("\n".join(lines + [short]) + "\n")
    with raises_at(bad, 3, match="'en' has 1 descriptions, expected 5"):
        load_multi30k_jsonl(bad)
    bad.write_text(lines[0] + "\n{oops\n")
    with raises_at(bad, 2, match="invalid JSON"):
        load_multi30k_jsonl(bad)


# ---------------------------------------------------------------- WiT-style TSV
WIT_COLUMNS = ["language", "page_url", "image_url", "page_title", "caption_reference_description",
               "context_page_description", "context_section_description", "b64_bytes"]


def make_wit(path, rows, columns=WIT_COLUMNS):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")  # pandas-style minimal quoting
    w.writerow(columns)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def wit_row(i, caption, lang="en", image=None):
    img = image if image is not None else bytes([137, 80, 78, 71, i])
    return [lang, f"https://en.wikipedia.org/wiki/Page_{i}", f"https://upload.wikimedia.org/{i}.jpg",
            f"Page {i}", caption, f"Page {i} is about\tthings.\nSecond line.", f"Section {i}",
            base64.b64encode(img).decode()]


def test_wit_reads_quoted_fields_bytes_and_lines(tmp_path):
    p = make_wit(tmp_path / "wit.tsv", [wit_row(0, 'A "quoted" caption'), wit_row(1, ""),
                                        wit_row(2, "Ein Bild", lang="de"), wit_row(3, "Last one")])
    recs = load_wit_tsv(p, base64_column="b64_bytes")
    assert [r.caption for r in recs] == ['A "quoted" caption', "Ein Bild", "Last one"]  # empty skipped
    assert [r.line for r in recs] == [2, 6, 8]  # each context field spans two lines
    r = recs[0]
    assert r.image_path == "https://upload.wikimedia.org/0.jpg" and r.image_bytes == bytes([137, 80, 78, 71, 0])
    assert r.page_description == "Page 0 is about\tthings.\nSecond line." and r.section_description == "Section 0"
    assert r.fields["page_title"] == "Page 0" and "b64_bytes" not in r.fields
    assert [r.caption for r in load_wit_tsv(p, languages={"en"})] == ['A "quoted" caption', "Last one"]
    assert len(load_wit_tsv(p, skip_empty_captions=False)) == 4
    assert len(load_wit_tsv(p, max_records=2)) == 2


def test_wit_configurable_columns_and_plain_mode(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("path\tcap\tpage\r\nimgs/a.png\tA dog\tDogs\r\nimgs/b.png\t\"odd\" quote\tCats\r\n")
    recs = load_wit_tsv(p, image_column="path", caption_column="cap", page_column="page",
                        section_column=None, quoted=False)
    assert [(r.image_path, r.caption, r.page_description, r.section_description) for r in recs] == [
        ("imgs/a.png", "A dog", "Dogs", ""), ("imgs/b.png", '"odd" quote', "Cats", "")]
    with raises_at(p, 1, match=r"lacks required column\(s\) \['context_section_description'\]"):
        load_wit_tsv(p, image_column="path", caption_column="cap", page_column="page", quoted=False)


def test_wit_errors_name_file_and_line(tmp_path):
    rows = [wit_row(0, "ok"), wit_row(1, "ok too")]
    p = make_wit(tmp_path / "wit.tsv", rows)
    text = p.read_text()
    p.write_text(text + "en\tonly\tthree\n")
    with raises_at(p, 6, match="expected 8 tab-separated fields"):
        load_wit_tsv(p)
    bad = [list(r) for r in rows]
    bad[1][-1] = "not*base64!"
    make_wit(p, bad)
    with raises_at(p, 4, match="'b64_bytes' is not valid base64"):
        load_wit_tsv(p, base64_column="b64_bytes")
    assert len(load_wit_tsv(p)) == 2  # the bytes column is not used by default
    make_wit(p, rows, columns=[c for c in WIT_COLUMNS if c != "caption_reference_description"] + ["x"])
    with raises_at(p, 1, match="caption_reference_description"):
        load_wit_tsv(p)
    p.write_text("\t".join(WIT_COLUMNS) + '\nen\t"unterminated\tx\n')
    with raises_at(p, 2, match="quoting"):
        load_wit_tsv(p)
    p.write_text("")
    with raises_at(p, 1, match="header"):
        load_wit_tsv(p)


# ---------------------------------------------------------------- BLiMP
@pytest.fixture(scope="module")
def blimp_all():
    return load_blimp(BLIMP_ZIP)


@needs_blimp
def test_blimp_real_zip_67_by_1000(blimp_all):
    uids = list_blimp_phenomena(BLIMP_ZIP)
    assert len(uids) == 67 and "anaphor_gender_agreement" in uids
    assert len(blimp_all) == 67_000
    counts = {}
    for p in blimp_all:
        counts[p.uid] = counts.get(p.uid, 0) + 1
    assert sorted(counts) == uids and set(counts.values()) == {1000}
    # values as released: the README's "syntax-semantics" is spelled two ways, and there are 13
    # linguistics terms (the README says 12); the loader keeps them unchanged
    assert {p.field for p in blimp_all} == {"morphology", "syntax", "semantics", "syntax_semantics",
                                            "syntax/semantics"}
    assert len({p.linguistics_term for p in blimp_all}) == 13


@needs_blimp
def test_blimp_real_filter_by_uid():
    pairs = load_blimp(BLIMP_ZIP, "anaphor_gender_agreement")
    with zipfile.ZipFile(BLIMP_ZIP) as z:
        first = json.loads(z.read("data/anaphor_gender_agreement.jsonl").decode().split("\n")[0])
    assert len(pairs) == 1000 and [p.pair_id for p in pairs] == list(range(1000))
    p = pairs[0]
    assert (p.sentence_good, p.sentence_bad) == (first["sentence_good"], first["sentence_bad"])
    assert (p.sentence_good, p.field, p.linguistics_term) == ("Katherine can't help herself.", "morphology",
                                                              "anaphor_agreement")
    assert p.one_prefix_method is True and p.extra["one_prefix_word_bad"] == "himself"
    two = load_blimp(BLIMP_ZIP, ["npi_present_1", "adjunct_island"])
    assert [q.uid for q in two[::1000]] == ["adjunct_island", "npi_present_1"]
    with pytest.raises(ValueError, match="did you mean"):
        load_blimp(BLIMP_ZIP, "anaphor_gender_agreemnt")


def blimp_line(uid, i, **over):
    d = {"sentence_good": f"Good sentence {i}.", "sentence_bad": f"Sentence good {i}.", "field": "syntax",
         "linguistics_term": "island_effects", "UID": uid, "simple_LM_method": True,
         "one_prefix_method": False, "two_prefix_method": False, "lexically_identical": True,
         "pairID": str(i)}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not None})


def make_blimp_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/", "")
        z.writestr("__MACOSX/data/._aa_test.jsonl", b"\x00\x05\x16\x07\xb0junk")
        for uid, lines in members.items():
            z.writestr(f"data/{uid}.jsonl", "\n".join(lines) + "\n")
    return path


def test_blimp_generated_zip_and_directory(tmp_path):
    members = {"aa_test": [blimp_line("aa_test", i) for i in range(3)],
               "bb_test": [blimp_line("bb_test", i) for i in range(2)]}
    z = make_blimp_zip(tmp_path / "b.zip", members)
    from_zip = load_blimp(z)
    assert [(p.uid, p.pair_id) for p in from_zip] == [("aa_test", 0), ("aa_test", 1), ("aa_test", 2),
                                                      ("bb_test", 0), ("bb_test", 1)]
    d = tmp_path / "blimp" / "data"
    d.mkdir(parents=True)
    for uid, lines in members.items():
        write_bytes(d / f"{uid}.jsonl", "\n".join(lines) + "\n\n", crlf=uid == "bb_test")
    (d / "._aa_test.jsonl").write_bytes(b"\x00\x05\x16\x07\xb0")
    assert load_blimp(d) == from_zip == load_blimp(tmp_path / "blimp")  # data/ subdirectory found
    assert list_blimp_phenomena(d) == ["aa_test", "bb_test"]
    assert load_blimp(z, "bb_test") == from_zip[3:]


def test_blimp_errors_name_member_and_line(tmp_path):
    good = [blimp_line("aa_test", i) for i in range(3)]
    z = make_blimp_zip(tmp_path / "b.zip", {"aa_test": good[:2] + ['{"sentence_good": "x",']})
    with raises_at("b.zip!data/aa_test.jsonl", 3, match="invalid JSON"):
        load_blimp(z)
    z = make_blimp_zip(tmp_path / "c.zip", {"aa_test": good[:1] + [blimp_line("aa_test", 1, sentence_bad=None)]})
    with raises_at("c.zip!data/aa_test.jsonl", 2, match=r"missing key\(s\) \['sentence_bad'\]"):
        load_blimp(z)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "aa_test.jsonl").write_text("\n".join(good[:2] + [blimp_line("other", 2)]) + "\n")
    with raises_at(d / "aa_test.jsonl", 3, match="does not match the file name"):
        load_blimp(d)
    (d / "aa_test.jsonl").write_text(blimp_line("aa_test", 0, pairID="zero") + "\n")
    with raises_at(d / "aa_test.jsonl", 1, match="pairID"):
        load_blimp(d)
    (tmp_path / "not.zip").write_text("hello")
    with raises_at(tmp_path / "not.zip", None, match="zip"):
        load_blimp(tmp_path / "not.zip")


def blimp_zip_bytes(path, lines, compression):
    """A one-member BLiMP zip (``data/aa_test.jsonl``); returns its bytes and the offset where
    the member's data start."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("data/aa_test.jsonl", "\n".join(lines) + "\n")
    raw = bytearray(path.read_bytes())
    return raw, raw.index(b"data/aa_test.jsonl") + len("data/aa_test.jsonl")  # no extra field


def test_blimp_damaged_zip_member_names_archive_and_member(tmp_path):
    lines = [blimp_line("aa_test", i) for i in range(300)]
    member = "d.zip!data/aa_test.jsonl"
    z = tmp_path / "d.zip"
    raw, start = blimp_zip_bytes(z, lines, zipfile.ZIP_DEFLATED)
    raw[start + 20:start + 50] = bytes(b ^ 0xFF for b in raw[start + 20:start + 50])  # a bad deflate block
    z.write_bytes(raw)
    with raises_corrupt(member):
        load_blimp(z)
    raw, _ = blimp_zip_bytes(z, lines, zipfile.ZIP_STORED)
    i = raw.index(b"Good sentence 100.")
    raw[i:i + 1] = b"H"  # still valid JSON: only the member's CRC tells
    z.write_bytes(raw)
    with raises_corrupt(member) as info:
        load_blimp(z)
    assert "CRC" in str(info.value)
    raw, _ = blimp_zip_bytes(z, lines, zipfile.ZIP_STORED)
    raw[0:4] = b"XXXX"  # the member's local header signature
    z.write_bytes(raw)
    with raises_at(member, None, match="cannot open the archive member.*download it again") as info:
        load_blimp(z)
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)


# ---------------------------------------------------------------- GLUE
COLA_TRAIN = ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
              "gj04\t1\t\tOne more pseudo generalization and I'm giving up.\n"
              "gj04\t0\t*\tThey drank the pub.\n")
COLA_TEST = "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked its way down the road.\n"
SST2_TEST = "index\tsentence\n0\tit 's a charming and often affecting journey . \n"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_TRAIN = (MRPC_HEADER +
              "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately "
              "distorting his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother "
              "of deliberately distorting his evidence .\n"
              "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for "
              "$ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for "
              "$ 1.8 billion in 1998 .\n")
MRPC_TEST = ("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
             "0\t1089874\t1089925\tPCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief "
             "financial officer , will report directly to Mr So .\tCurrent Chief Operating Officer Mike Butcher "
             "and Group Chief Financial Officer Alex Arena will report to So .\n")


def test_glue_cola_sst2_mrpc_realistic(tmp_path):
    cola = load_cola(write_bytes(tmp_path / "in_domain_train.tsv", COLA_TRAIN))
    assert [(e.texts, e.label, e.line) for e in cola][2] == (("They drank the pub.",), 0, 3)
    assert [e.label for e in cola] == [1, 1, 0]
    cola_test = load_glue_tsv(write_bytes(tmp_path / "test.tsv", COLA_TEST), "CoLA")
    assert [(e.texts[0], e.label, e.line) for e in cola_test][0] == ("Bill whistled past the house.", None, 2)
    sst = load_sst2(write_bytes(tmp_path / "sst_train.tsv", SST2_TEXT))
    assert [e.label for e in sst] == [0, 0, 1] and sst[0].texts == ("hide new secretions from the parental units ",)
    assert load_glue_tsv(write_bytes(tmp_path / "sst_test.tsv", SST2_TEST), "SST-2")[0].label is None
    mrpc = load_mrpc(write_bytes(tmp_path / "msr_paraphrase_train.txt", MRPC_TRAIN, bom=True, crlf=True))
    assert [e.label for e in mrpc] == [1, 0] and len(mrpc[0].texts) == 2
    assert mrpc[0].texts[0].startswith('Amrozi accused his brother , whom he called " the witness "')
    test = load_mrpc(write_bytes(tmp_path / "mrpc_test.tsv", MRPC_TEST))
    assert test[0].label is None and test[0].texts[1].endswith("report to So .")
    assert load_mrpc(tmp_path / "msr_paraphrase_train.txt", labels=False)[0].label is None


def test_glue_other_tasks_in_table(tmp_path):
    assert {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"} <= set(GLUE_TASKS)
    sts = write_bytes(tmp_path / "sts.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
                      "sentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t"
                      "A plane is taking off.\tAn air plane is taking off.\t5.000\n")
    assert load_glue_tsv(sts, "STS-B")[0].label == 5.0
    rte = write_bytes(tmp_path / "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n"
                      "1\tC.\tD.\tentailment\n")
    assert [e.label for e in load_glue_tsv(rte, "rte")] == [1, 0]
    custom = GlueTask("mine", ("text",), "y", num_labels=3)
    p = write_bytes(tmp_path / "mine.tsv", "y\ttext\n2\thello\n")
    assert load_glue_tsv(p, custom)[0] == load_glue_tsv(p, custom)[0]
    assert load_glue_tsv(p, custom)[0].label == 2
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_glue_tsv(p, "squad")


def test_glue_errors_name_file_and_line(tmp_path):
    p = write_bytes(tmp_path / "cola.tsv", COLA_TRAIN + "gj04\t1\tmissing sentence\n")
    with raises_at(p, 4, match="expected 4 tab-separated fields"):
        load_cola(p)
    p = write_bytes(tmp_path / "cola.tsv", COLA_TRAIN.replace("\t0\t*", "\t2\t*"))
    with raises_at(p, 3, match="label '2' is not an integer in 0..1"):
        load_cola(p)
    p = write_bytes(tmp_path / "sst.tsv", SST2_TEXT + "\t1\n")
    with raises_at(p, 5, match="empty text"):
        load_sst2(p)
    assert load_sst2(p, allow_empty_text=True)[-1].texts == ("",)
    p = write_bytes(tmp_path / "sst.tsv", "text\tlabel\nfine\t1\n")
    with raises_at(p, 1, match=r"lacks text column\(s\) \['sentence'\]"):
        load_sst2(p)
    p = write_bytes(tmp_path / "sst_test.tsv", SST2_TEST)
    with raises_at(p, 1, match="no label column"):
        load_sst2(p, labels=True)
    p = write_bytes(tmp_path / "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with raises_at(p, 2, match="not one of"):
        load_glue_tsv(p, "rte")
    p = write_bytes(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\nA.\tB.\tnan\n")
    with raises_at(p, 2, match="finite"):
        load_glue_tsv(p, "stsb")


# ---------------------------------------------------------------- empty splits, every loader
def empty_multi30k(tmp_path):
    make_multi30k(tmp_path, n=0)
    return tmp_path / "task2" / "image_splits" / "val_images.txt"


@pytest.mark.parametrize("make,load,match", [
    (lambda d: write_bytes(d / "train.tsv", ""), load_sst2, "empty file"),
    (lambda d: write_bytes(d / "train.tsv", "\r\n\n", gz=True), load_cola, "empty file"),
    (lambda d: write_bytes(d / "train.tsv", "sentence\tlabel\n\n"), load_sst2, "no examples"),
    (lambda d: write_bytes(d / "test.tsv", "index\tsentence\n"), load_cola, "no examples"),
    (lambda d: write_bytes(d / "sub.jsonl", ""), load_multi30k_jsonl, "no images"),
    (lambda d: write_bytes(d / "sub.jsonl.gz", "\n \n", gz=True), load_multi30k_jsonl, "no images"),
    (empty_multi30k, lambda p: load_multi30k(p.parents[1], "val"), "no images in split 'val'"),
    (lambda d: write_bytes(d / "ann.json", "[ ]\n"), load_vatex, "no videos"),
    (lambda d: write_bytes(d / "wit.tsv", "\t".join(WIT_COLUMNS) + "\n"), load_wit_tsv, "no rows"),
    (lambda d: write_bytes(d / "aa_test.jsonl", "\n"), load_blimp, "no minimal pairs"),
], ids=["glue-0-bytes", "glue-blank-lines", "glue-header-only", "cola-test-header-only", "multi30k-jsonl",
        "multi30k-jsonl-blank-gz", "multi30k", "vatex", "wit-header-only", "blimp-dir"])
def test_empty_split_is_an_error(tmp_path, make, load, match):
    p = make(tmp_path)
    with raises_at(p, None, match=match):
        load(p if p.name != "aa_test.jsonl" else p.parent)


def test_blimp_empty_member_in_zip_is_named(tmp_path):
    z = make_blimp_zip(tmp_path / "b.zip", {"aa_test": [blimp_line("aa_test", 0)], "bb_test": []})
    with raises_at("b.zip!data/bb_test.jsonl", None, match="no minimal pairs"):
        load_blimp(z)
    assert len(load_blimp(z, "aa_test")) == 1


def test_wit_rows_all_filtered_out_is_not_an_error(tmp_path):
    p = make_wit(tmp_path / "wit.tsv", [wit_row(0, "Ein Bild", lang="de"), wit_row(1, "")])
    assert load_wit_tsv(p, languages={"en"}) == [] and load_wit_tsv(p, max_records=0) == []


# ---------------------------------------------------------------- concreteness norms (re-export)
def test_concreteness_norms_reexported():
    from grounded_fast.analysis import load_concreteness_norms as original
    from grounded_fast.data.loaders import load_concreteness_norms
    assert load_concreteness_norms is original
