"""Study reports: the reference values, plot helpers, the Markdown / self-contained HTML writer."""
import base64
import os
import re
from pathlib import Path

import numpy as np
import pytest

from grounded_fast.experiments import report as rep
from grounded_fast.experiments.report import (
    NOT_COMPUTED, MissingData, Report, Table, agreement_heatmap, correlation_summary,
    distance_vs_agreement_scatter, format_number, reference_findings,
    reference_section, reference_tables, require, silhouette_boxplot,
)
from grounded_fast.experiments.studies.flava_ablation import flava_grid_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- reference values
def test_reference_grounding_values():
    sec = reference_section("grounding")
    assert "Grounded and Well-rounded" in sec.title
    assert sec.source.startswith("Source:") and "vid-txt-diff" in sec.source
    agreement, silhouette = sec.tables
    assert agreement.header == ["population pair", "C/C", "P/P", "T/T", "C/P", "C/T", "P/T"]
    assert agreement.value("mean agreement", "C/C") == pytest.approx(0.687)
    assert agreement.value("mean agreement", "P/T") == pytest.approx(0.669)
    assert agreement.value("mean KL", "C/T") == pytest.approx(11.64)
    assert agreement.text_rows[0][1] == ".687"  # printed verbatim
    assert silhouette.caption.startswith("Silhouette (abstract vs concrete words")
    assert silhouette.value("mono-task, input embeddings", "C") == pytest.approx(0.0260)
    assert silhouette.value("multi-modal, input embeddings", "PCT") == pytest.approx(0.0248)
    assert silhouette.value("mono-task, input embeddings", "PC") is None  # empty cell
    assert len(silhouette.rows) == 4
    assert any("0.289" in f and "Kruskal" in f for f in sec.findings)
    assert not any(f.startswith("Source:") for f in sec.findings)


def test_reference_flava_and_groundedbert():
    grid, categories = reference_tables("flava-ablation")
    assert grid.header == ["words", "images", "BLiMP (%)", "PPPL"]
    assert len(grid.rows) == 8
    assert grid.value({"words": "100M", "images": "none"}, "BLiMP (%)") == pytest.approx(71.32)
    assert grid.value({"words": "10M", "images": "4M"}, "PPPL") == pytest.approx(25.86)
    assert grid.text_rows[4][3] == "6.90"  # printed verbatim
    with pytest.raises(KeyError):
        grid.value("10M", "PPPL")  # four rows start with 10M: ambiguous
    assert categories.header == ["category", "10M words", "100M words"] and len(categories.rows) == 12
    assert categories.value("island effects", "100M words") == pytest.approx(48.4)
    assert "pseudo-perplexity" in grid.units and "%" in categories.units
    assert any("does not consistently help" in f for f in reference_findings("flava-ablation"))
    assert reference_tables("groundedbert") == []
    assert any("GLUE" in f for f in reference_findings("groundedbert"))
    with pytest.raises(KeyError, match=r"no \[studies.no-such-study\] in .*: it has \['flava-ablation', 'groundedbert', 'grounding'\]"):
        reference_tables("no-such-study")


def _published_markdown():
    """The original REFERENCE_RESULTS.md in a ``shared/`` folder beside the checkout (or beside a
    folder of worktrees), or None."""
    for folder in Path(__file__).resolve().parents[1:4]:
        p = folder / "shared" / "REFERENCE_RESULTS.md"
        if p.is_file():
            return p
    return None


def _parse_published_markdown(text):
    """REFERENCE_RESULTS.md -> (preamble, {heading: [("p", paragraph) | ("t", rows of cell texts)]}):
    '## ' starts a section, '|' lines make a table (its separator row dropped), other lines join
    into paragraphs."""
    preamble, sections, current, para, table = [], {}, None, [], []

    def flush():
        if para:
            (current if current is not None else preamble).append(("p", " ".join(para)) if current is not None
                                                                   else " ".join(para))
            para.clear()
        if table:
            current.append(("t", [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])] for ln in table
                                  if not re.fullmatch(r"\|(\s*:?-{2,}:?\s*\|)+", ln.strip())]))
            table.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("## "):
            flush()
            current = sections[s[3:]] = []
        elif s.startswith("# ") or not s:
            flush()
        elif s.startswith("|"):
            if para:
                flush()
            table.append(s)
        else:
            if table:
                flush()
            para.append(s)
    flush()
    return " ".join(preamble), sections


def test_reference_data_holds_the_published_values():
    """reference_results.toml has exactly the values, captions, sources and findings of
    ../shared/REFERENCE_RESULTS.md (it was generated from it; no value retyped)."""
    path = _published_markdown()
    if path is None:
        pytest.skip("shared/REFERENCE_RESULTS.md not beside this checkout")
    preamble, sections = _parse_published_markdown(path.read_text(encoding="utf-8"))
    assert rep.reference_preamble() == preamble
    titles = {reference_section(key).title: key for key in rep.reference_studies()}
    assert sorted(titles) == sorted(sections)
    for title, blocks in sections.items():
        source, findings, tables, captions = "", [], [], {}
        for i, (kind, block) in enumerate(blocks):
            if kind == "t":
                tables.append(block)
            elif block.endswith(":") and i + 1 < len(blocks) and blocks[i + 1][0] == "t":
                captions[len(tables)] = block[:-1].rstrip(",; ")  # a paragraph introducing a table
            elif block.startswith("Source:") and not source:
                source = block
            else:
                findings.append(block)
        sec = reference_section(titles[title])
        assert (sec.source, sec.findings) == (source, findings)
        assert [[t.header] + t.text_rows for t in sec.tables] == tables
        assert {j: sec.tables[j].caption for j in captions} == captions
        assert all(t.caption and t.units for t in sec.tables)  # the others are captioned in the data file
        text = " ".join(b if k == "p" else " ".join(" ".join(r) for r in b) for k, b in blocks)
        for aspect, paper, source in (sec.scale.text_rows if sec.scale is not None else []):
            if source == "published results":  # every number of such a row is in the published section
                for number in re.findall(r"\d+(?:[,.]\d+)*[KM]?", paper):
                    assert re.search(rf"(?<![\d,.]){re.escape(number)}(?![\d,.KM])", text), \
                        f"{title}: scale {aspect!r} value {number} not in REFERENCE_RESULTS.md"
        prose = " ".join(findings)
        for key, table in sec.stated.items():       # values a finding states: every one is in a finding
            for row in table.text_rows:
                for cell in row:
                    if re.fullmatch(r"-?\d*\.?\d+", cell):
                        assert re.search(rf"(?<![\d.]){re.escape(cell)}(?!\d)", prose), \
                            f"{title}: stated.{key} value {cell} not in the findings of REFERENCE_RESULTS.md"


def test_stated_values_of_the_grounding_study():
    """The attention shares the grounding report prints beside ours: one row per multi-modal setup
    under our names of the paper's setups, a share for each of its sources (summing to 1, as
    published to two digits), none for a source it lacks."""
    from grounded_fast.models.grounding_seq2seq import canonical_setup, setup_kind, setup_sources
    shares = rep.reference_stated("grounding", "attention_shares")
    setups = [r["setup"] for r in shares.as_dicts()]
    assert setups == [s for s in setups if canonical_setup(s) == s and setup_kind(s) == "multi-modal"]
    assert len(setups) == 3
    for row in shares.as_dicts():
        given = {t for t in ("C", "P", "T") if row[t] is not None}
        assert given == set(setup_sources(row["setup"]))
        assert abs(sum(row[t] for t in given) - 1) <= 0.015
    assert rep.reference_stated("grounding", "attention_vs_kl").as_dicts() == [{"statistic": "pearson", "value": 0.289}]
    with pytest.raises(KeyError, match="stated.nope"):
        rep.reference_stated("grounding", "nope")


def test_reference_data_from_another_file(tmp_path):
    p = tmp_path / "ref.toml"
    p.write_text('preamble = "Intro line."\n[studies.groundedbert]\ntitle = "GroundedBERT (someone)"\n'
                 'source = "Source: somewhere."\nfindings = ["Claim one."]\n[[studies.groundedbert.tables]]\n'
                 'caption = "Scores per task"\nunits = "accuracy in %"\nheader = ["task", "score", "n"]\n'
                 'rows = [["SST-2", "91.5", "1,000"], ["a | b", "", "x"]]\n', encoding="utf-8")
    sec = reference_section("groundedbert", path=p)
    (t,) = sec.tables
    assert t.caption == "Scores per task" and t.units == "accuracy in %"
    assert t.value("SST-2", "score") == pytest.approx(91.5)
    assert t.value("SST-2", "n") == 1000.0
    assert t.rows[1] == ["a | b", None, "x"] and t.text_rows[1] == ["a | b", "", "x"]
    assert sec.source == "Source: somewhere." and sec.findings == ["Claim one."]
    assert rep.reference_preamble(p) == "Intro line."
    with pytest.raises(KeyError, match=r"no \[studies.grounding\]"):
        reference_section("grounding", path=p)


@pytest.mark.parametrize("body,message", [
    ("studies = 3", "no \\[studies"),
    ('[studies.grounding]\nsource = "x"', "studies.grounding.title: expected a string"),
    ('[studies.grounding]\ntitle = "t"\nfinding = ["x"]', "unknown key.*'finding'"),
    ('[studies.grounding]\ntitle = "t"\n[[studies.grounding.tables]]\nheader = ["a", "b"]\nrows = [["1"]]',
     r"studies.grounding.tables\[0\].rows\[0\]: 1 cells, the header has 2"),
    ('[studies.grounding]\ntitle = "t"\n[[studies.grounding.tables]]\nheader = ["a"]\nrows = [[0.5]]',
     r"tables\[0\].rows\[0\]: expected a list of strings"),
    ("[studies.grounding\n", "not valid TOML"),
])
def test_malformed_reference_data_is_one_clear_error(tmp_path, body, message):
    p = tmp_path / "ref.toml"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        reference_section("grounding", path=p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)
    page = Report("t", reference_path=p).add_reference("grounding", None).to_markdown()
    assert "reference values unavailable" in page and str(p) in page  # the report still renders


# ----------------------------------------------------------------------------- number formatting
@pytest.mark.parametrize("value,text", [
    (0.687, "0.687"), (9.2843, "9.28"), (71.32, "71.3"), (0.02194, "0.0219"), (7e-6, "7e-06"),
    (12345.6, "12346"), (9.996, "10.0"), (0.5, "0.500"), (3, "3"), (None, ""), ("10M", "10M"),
    (float("nan"), "nan"), ((0.5, 0.0123), "0.500 ± 0.0123"), (np.float32(0.25), "0.250"), (-1.5, "-1.50"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_number_tensor_and_digits():
    torch = pytest.importorskip("torch")
    assert format_number(torch.tensor(0.123456)) == "0.123"
    assert format_number(0.123456, digits=5) == "0.12346"


# ----------------------------------------------------------------------------- plots
def _sym(M, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 0.8, (M, M))
    a = (a + a.T) / 2
    np.fill_diagonal(a, 1.0)
    return a


def test_agreement_heatmap_shape_and_boundaries(tmp_path):
    M = 9
    A = _sym(M)
    groups = list("CPTCPTCPT")
    fig = agreement_heatmap(A, [f"m{i}" for i in range(M)], "agreement", groups=groups,
                            path=tmp_path / "hm.png")
    assert len(fig.axes) == 2  # heatmap + colorbar
    ax = fig.axes[0]
    img = ax.images[0].get_array()
    assert img.shape == (M, M)
    # models reordered so each population is contiguous: C = 0, 3, 6 first, then P = 1, 4, 7
    order = [0, 3, 6, 1, 4, 7, 2, 5, 8]
    np.testing.assert_allclose(np.asarray(img), A[np.ix_(order, order)])
    assert len(ax.lines) == 2 * 2  # 2 boundaries, horizontal + vertical
    assert [t.get_text() for t in ax.get_xticklabels()] == ["C", "P", "T"]
    assert [t.get_text() for t in ax.get_yticklabels()][:3] == ["m0", "m3", "m6"]
    assert len(ax.texts) == M * M  # values written for small M
    assert (tmp_path / "hm.png").read_bytes().startswith(PNG_MAGIC)


def test_agreement_heatmap_plain_large_and_errors():
    torch = pytest.importorskip("torch")
    fig = agreement_heatmap(torch.tensor(_sym(20)), title="KL", colorbar_label="KL")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (20, 20)
    assert len(ax.lines) == 0 and len(ax.texts) == 0  # no groups, no annotation above 12 models
    assert ax.get_title() == "KL"
    with pytest.raises(MissingData):
        agreement_heatmap(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="square"):
        agreement_heatmap(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="labels"):
        agreement_heatmap(_sym(3), ["a", "b"])


def test_scatter_points_groups_and_annotation():
    rng = np.random.default_rng(1)
    x = rng.random(45)
    y = 0.7 - 0.2 * x + rng.normal(0, 0.02, 45)
    groups = ["C/P"] * 15 + ["C/T"] * 20 + ["P/T"] * 10
    fig = distance_vs_agreement_scatter(x, y, groups=groups, note="Mantel p = 0.01")
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    assert sorted(len(c.get_offsets()) for c in ax.collections) == [10, 15, 20]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 45
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["C/P", "C/T", "P/T"]
    (text,) = ax.texts
    r = np.corrcoef(x, y)[0, 1]
    assert f"Pearson r = {r:.3f}" in text.get_text()
    assert "Spearman" in text.get_text() and "n = 45" in text.get_text() and "Mantel p = 0.01" in text.get_text()
    assert len(ax.lines) == 1  # least-squares line
    assert "(p = " in text.get_text()
    # model pairs are not independent: no p-values of their own, the Mantel test's in the note
    fig = distance_vs_agreement_scatter(x, y, p_values=False, note="Mantel p = 0.01; paper: r = 0.289")
    (text,) = fig.axes[0].texts
    assert "(p = " not in text.get_text() and f"Pearson r = {r:.3f}\n" in text.get_text()
    assert text.get_text().endswith("Mantel p = 0.01\npaper: r = 0.289")

    fig = distance_vs_agreement_scatter([0.1, 0.2], [0.5, 0.6], annotate=True, fit_line=False)
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 2
    assert "n/a" in ax.texts[0].get_text()  # too few points for a correlation
    with pytest.raises(MissingData):
        distance_vs_agreement_scatter([], [])
    with pytest.raises(ValueError, match="length"):
        distance_vs_agreement_scatter([1, 2, 3], [1, 2])


def test_correlation_summary_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    x, y = rng.random(30), rng.random(30)
    x[3] = np.nan
    out = correlation_summary(x, y)
    ok = np.isfinite(x)
    assert out["n"] == 29
    assert out["pearson"] == pytest.approx(stats.pearsonr(x[ok], y[ok])[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(x[ok], y[ok])[0])


def test_silhouette_boxplot():
    rng = np.random.default_rng(3)
    values = {"P": rng.normal(0.02, 0.01, 10), "C": list(rng.normal(0.03, 0.01, 7)), "T": []}
    fig = silhouette_boxplot(values, reference={"P": 0.0219, "C": 0.0260, "T": 0.0231})
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # one box per group with data
    # 2 jittered point series + 1 series of reference diamonds (3 groups)
    assert [len(c.get_offsets()) for c in ax.collections] == [10, 7, 3]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["P\n(n = 10)", "C\n(n = 7)", "T\n(n = 0)"]
    fig = silhouette_boxplot({"P": [0.1, 0.2, 0.3]}, show_points=False)
    assert len(fig.axes[0].patches) == 1 and len(fig.axes[0].collections) == 0
    with pytest.raises(MissingData):
        silhouette_boxplot({"P": [], "C": []})
    with pytest.raises(MissingData):
        silhouette_boxplot({})


def _flava_rows():
    rows = []
    for words in (100_000, 1_000_000):
        for images in (0, 4_000, 40_000):
            if (words, images) == (1_000_000, 40_000):
                continue  # a missing cell (partial run)
            rows.append(dict(text_volume=words, image_volume=images, blimp=60.0 + images / 4000, pppl=20.0 - words / 1e5))
    rows.append(dict(text_volume=100_000, image_volume=0, blimp=62.0, pppl=12.0))  # a second seed
    return rows


def test_flava_grid_heatmap():
    fig = flava_grid_heatmap(_flava_rows())
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2 and len(fig.axes) == 4  # BLiMP, PPPL (+ 2 colorbars)
    blimp = np.ma.filled(heat[0].images[0].get_array().astype(float), np.nan)
    assert blimp.shape == (2, 3)
    assert blimp[0, 0] == pytest.approx(61.0)  # the two seeds averaged
    assert blimp[0, 2] == pytest.approx(70.0)
    assert np.isnan(blimp[1, 2])  # missing cell
    assert [t.get_text() for t in heat[0].get_xticklabels()] == ["none", "4K", "40K"]
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["100K", "1M"]
    assert "—" in [t.get_text() for t in heat[1].texts]
    with pytest.raises(MissingData):
        flava_grid_heatmap([])
    with pytest.raises(KeyError, match="image volume"):
        flava_grid_heatmap([dict(words="10M", blimp=60)])


# ----------------------------------------------------------------------------- the report
def _full_report():
    r = Report("Grounding study (tiny)")
    r.add_heading("Agreement")
    r.add_paragraph("Teacher-forced argmax agreement.")
    r.add_figure(agreement_heatmap(_sym(6), [f"m{i}" for i in range(6)], groups=list("CCPPTT")), "agreement",
                 "Agreement heatmap")
    r.add_figure(silhouette_boxplot({"P": [0.01, 0.02, 0.03], "C": [0.02, 0.03]}), "silhouette", "Silhouette")
    r.add_table(["pair", "mean agreement", "models"], [["C/C", 0.712345, 40], ["C/P", 0.65, 40]], caption="ours")
    r.add_reference("grounding", Table(["population pair", "C/C"], [["mean agreement", 0.70123]]))
    return r


def test_write_md_and_self_contained_html(tmp_path):
    r = _full_report()
    md_path, html_path = r.write(tmp_path / "out")
    assert md_path == tmp_path / "out" / "report.md" and html_path == tmp_path / "out" / "report.html"
    md = md_path.read_text(encoding="utf-8")
    page = html_path.read_text(encoding="utf-8")
    # markdown: relative links to PNG files that exist
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["figures/agreement.png", "figures/silhouette.png"]
    for link in links:
        assert (md_path.parent / link).read_bytes().startswith(PNG_MAGIC)
    # html: every figure embedded, nothing external or local
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    assert all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)
    assert page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "figures/" not in page and "<link" not in page and "href=" not in page
    assert re.findall(r'src="(?!data:)', page) == []
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    # numbers: 3 significant digits by default; reference values verbatim beside ours
    for text in (md, page):
        assert "0.712" in text and "0.712345" not in text and "0.701" in text
        assert ".687" in text and "71.32" not in text
        assert NOT_COMPUTED not in text
    assert '<div class="compare">' in page
    assert "| C/C | 0.712 | 40 |" in md


def test_html_and_markdown_escaping(tmp_path):
    r = Report("A <b>bold</b> & title")
    fig = silhouette_boxplot({"P": [0.1, 0.2]})
    r.add_figure(fig, "fig", caption='evil <script>alert("x")</script>')
    r.add_paragraph("p < 0.05 & <img src=x onerror=alert(1)>")
    r.add_table(["a|b", "<th>"], [["x|y\nz", "<td>"]], caption="<i>cap</i>")
    md_path, html_path = r.write(tmp_path)
    page = html_path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<title>A &lt;b&gt;bold&lt;/b&gt; &amp; title</title>" in page
    assert "<th>&lt;th&gt;</th>" in page and "<td>&lt;td&gt;</td>" in page and "<i>" not in page
    md = md_path.read_text(encoding="utf-8")
    assert "<script>" not in md and "<img src=x" not in md and "p < 0.05" in md
    assert "| a\\|b | &lt;th> |" in md and "| x\\|y z | &lt;td> |" in md


def test_partial_run_placeholders(tmp_path):
    r = Report("Partial")
    r.add_table(["pair", "agreement"], None, caption="Agreement per pair")
    r.add_table(["pair", "agreement"], [], caption="Empty table")
    r.add_figure(None, "heatmap", "Agreement heatmap")
    r.add_reference("flava-ablation", None)
    with r.section("Attention"):
        r.add_paragraph("this paragraph is rolled back")
        r.add_figure(distance_vs_agreement_scatter([], []), "scatter")
    with r.section("Silhouette"):
        require(None, "silhouette values")
    with r.section("Done"):
        r.add_paragraph("kept")
    md_path, html_path = r.write(tmp_path)
    for text in (md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")):
        assert text.count(NOT_COMPUTED) == 6
        assert "Agreement per pair" in text and "rolled back" not in text and "kept" in text
        assert "silhouette values missing" in text
        assert "71.32" in text  # the reference is still printed
    assert not (tmp_path / "figures").exists() or not list((tmp_path / "figures").iterdir())
    with pytest.raises(ValueError):  # other errors are not swallowed
        with r.section("Bug"):
            raise ValueError("a real bug")


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    r = _full_report()
    r.write(tmp_path)
    r.write(tmp_path)  # overwrite in place
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert names == ["figures", "figures/agreement.png", "figures/silhouette.png", "report.html", "report.md"]
    before = (tmp_path / "report.md").read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(rep.os, "replace", failing_replace)
    r2 = Report("new title")
    with pytest.raises(OSError, match="disk full"):
        r2.write(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "report.md").read_bytes() == before  # old report intact
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_figure_names_made_safe_and_unique(tmp_path):
    r = Report("names")
    for _ in range(3):
        r.add_figure(silhouette_boxplot({"P": [0.1, 0.2]}), "Agreement / C vs P.png")
    r.add_figure(silhouette_boxplot({"P": [0.1, 0.2]}), "Agreement-C-vs-P-2")
    md_path, html_path = r.write(tmp_path)
    files = sorted(os.listdir(tmp_path / "figures"))
    assert files == ["Agreement-C-vs-P-2-2.png", "Agreement-C-vs-P-2.png", "Agreement-C-vs-P-3.png",
                     "Agreement-C-vs-P.png"]
    assert html_path.read_text(encoding="utf-8").count("data:image/png;base64,") == 4


def test_table_digits_and_validation():
    r = Report("digits", digits=2)
    r.add_table(["x", "y"], [[0.123456, 1234.5]], digits=4)
    r.add_table(["x"], [[0.123456]])
    md = r.to_markdown()
    assert "| 0.1235 | 1235 |" in md or "| 0.1235 | 1234 |" in md
    assert "| 0.12 |" in md
    with pytest.raises(ValueError, match="cells"):
        Table(["a", "b"], [[1]])


def test_markdown_layout_and_units(tmp_path):
    """The Markdown template's exact output: one blank line between blocks, a caption above its
    table, units below; the same blocks in the HTML page."""
    p = tmp_path / "ref.toml"
    p.write_text('preamble = "Read me."\n[studies.groundedbert]\ntitle = "GB (someone)"\nsource = "Source: x."\n'
                 'findings = ["Claim."]\n[[studies.groundedbert.tables]]\ncaption = "Published"\nunits = "%"\n'
                 'header = ["task", "score"]\nrows = [["SST-2", "91.5"]]\n', encoding="utf-8")
    r = Report("T", reference_path=p)
    r.add_heading("H", level=3).add_paragraph("text").add_table(["a", "b"], [["x", 0.5]], caption="cap")
    r.add_reference("groundedbert", Table(["task", "score"], [["SST-2", 90.04]], units="% accuracy"))
    r.add_table(["a"], None, caption="later")
    assert r.to_markdown() == """# T

### H

text

*cap*

| a | b |
|---|---:|
| x | 0.500 |

### Ours vs the reference: GB (someone)

**Ours**

| task | score |
|---|---:|
| SST-2 | 90.0 |

*Units: % accuracy*

**Reference (original study)**

*Read me.*

Source: x.

*Published*

| task | score |
|---|---:|
| SST-2 | 91.5 |

*Units: %*

Claim.

> *not computed yet (run incomplete): later*
"""
    page = r.to_html()
    assert '<p class="note">Units: % accuracy</p>' in page and '<p class="note">Units: %</p>' in page
    assert '<td class="num">91.5</td>' in page and "<caption>Published</caption>" in page
    assert page.index("<h3>H</h3>") < page.index("<caption>cap</caption>") < page.index('<div class="compare">')


# ----------------------------------------------------------------------------- scale and significance
def test_reference_scale_of_every_study():
    from grounded_fast.experiments import studies
    assert rep.reference_studies() == studies.available()     # every registered study has its published values
    for study in rep.reference_studies():
        scale = rep.reference_scale(study)
        assert scale.header == rep.SCALE_HEADER and scale.rows
        assert {r[2] for r in scale.text_rows} <= {"published results", "authors' code", "paper"}
    g = {r[0]: r[1] for r in rep.reference_scale("grounding").text_rows}
    assert g["populations"].startswith("40 ") and "1,000" in g["evaluation items"] and "d_model 512" in g["model"]


def test_malformed_scale_is_one_clear_error(tmp_path):
    p = tmp_path / "ref.toml"
    p.write_text('[studies.grounding]\ntitle = "t"\n[studies.grounding.scale]\nheader = ["aspect", "paper"]\n'
                 'rows = [["a", "b"]]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"studies.grounding.scale.header: expected \['aspect', 'paper', 'source'\]"):
        rep.reference_scale("grounding", path=p)


def test_scale_table_puts_ours_beside_the_paper():
    page = Report("t").add_scale("grounding", {"populations": "7 accuracy-matched models each",
                                               "items (train / val / test)": "48 / 6 / 6"}).to_markdown()
    assert "| populations | 7 accuracy-matched models each | 40 accuracy-matched models each | published results |" in page
    assert "| model | — | 6-layer Transformer decoder" in page          # the paper's aspect we do not give
    assert "| items (train / val / test) | 48 / 6 / 6 | — |  |" in page  # ours only
    assert page.index("| populations") < page.index("| items (train")


@pytest.mark.parametrize("p,text", [(0.0031, "p = 0.0031 (significant)"), (0.049, "p = 0.049 (significant)"),
                                    (0.05, "p = 0.050 (not significant)"), (0.73, "p = 0.73 (not significant)"),
                                    (float("nan"), "n/a"), (None, "n/a")])
def test_significance_wording(p, text):
    assert rep.significance(p) == text


def test_tests_note_counts_the_tests():
    note = rep.tests_note(4)
    assert note.startswith("4 tests") and "p < 0.013" in note and "not evidence of none" in note
    assert rep.tests_note(1).startswith("1 test;")


def test_mcnemar_exact_hand_case():
    from grounded_fast.experiments.significance import mcnemar_exact
    a = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]  # right for A only on items 0-5, for B only on item 6
    b = [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    res = mcnemar_exact(a, b)
    assert (res.only_a, res.only_b, res.n) == (6, 1, 10)
    assert res.pvalue == pytest.approx(2 * (1 + 7) / 2 ** 7)     # two-sided binomial: P(X <= 1) + P(X >= 6), n 7
    assert mcnemar_exact(b, a).pvalue == pytest.approx(res.pvalue)
    assert mcnemar_exact(a, a).pvalue == 1.0                     # no discordant item
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact(a, b[:5])


def test_intervals_contain_the_point():
    from grounded_fast.experiments.significance import bootstrap_mean_ci, t_interval, wilson_interval
    lo, hi = wilson_interval(7, 10)
    assert lo < 0.7 < hi and (lo, hi) == pytest.approx((0.3968, 0.8922), abs=1e-4)  # Wilson (1927), z = 1.96
    x = np.random.default_rng(0).random(200) < 0.6
    lo, hi = bootstrap_mean_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.2
    assert bootstrap_mean_ci(x) == (lo, hi)                      # seeded
    assert bootstrap_mean_ci(np.ones(5)) == (1.0, 1.0) and np.isnan(bootstrap_mean_ci([1.0])[0])
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and (hi - lo) / 2 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)  # t(0.975, 2) sd / sqrt(n)
    assert np.isnan(t_interval([5.0])[1])


def test_correctness_strings_round_trip():
    from grounded_fast.experiments.significance import pack_correct, unpack_correct
    bits = pack_correct(np.array([True, False, True, True]))
    assert bits == "1011" and unpack_correct(bits).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="cell/x blimp_correct"):
        unpack_correct("10a1", "cell/x blimp_correct")


def test_kl_per_sentence_against_a_float64_reference():
    torch = pytest.importorskip("torch")
    from grounded_fast.experiments.grounding import pairwise_per_sentence
    g = torch.Generator().manual_seed(0)
    M, B, T, V = 3, 5, 6, 11
    logits = 3 * torch.randn(M, B, T, V, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = False                                              # a sentence with no counted token is not counted
    res = pairwise_per_sentence(logits, mask)
    logp = torch.log_softmax(logits.double(), -1)
    kl = (logp.exp()[:, None] * (logp[:, None] - logp[None])).sum(-1)   # (M, M, B, T) per position
    kl = torch.where(mask, kl, torch.zeros(()))
    per_sentence = kl.sum(-1)[..., mask.any(1)].mean(-1)          # sum over a sentence's tokens, mean over sentences
    per_token = kl.sum((-1, -2)) / mask.sum()
    assert res["sentences"] == 4 and res["tokens"] == int(mask.sum())
    torch.testing.assert_close(res["kl_sentence"].double(), per_sentence, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res["kl"].double(), per_token, rtol=1e-5, atol=1e-6)
    assert res["kl_sentence"][0, 1] > res["kl"][0, 1] > 0


# ----------------------------------------------------------------------------- study reports from a store
def _store(tmp_path, study, config):
    from grounded_fast.experiments.store import ResultStore
    store = ResultStore(str(tmp_path / "results.sqlite"))
    store.begin_study(study, config)
    return store


def _unit(store, kind, run_id, payload, metrics, split=""):
    store.complete_unit(f"{kind}/{run_id}", kind, {"run_id": run_id, **payload},
                        metrics=[{"run_id": run_id, "split": split, "name": k, "value": v} for k, v in metrics.items()],
                        runs=[{"run_id": run_id, "status": "done"}])


FLAVA_CFG = {"text_volumes": [2000], "image_volumes": [0, 30], "seeds": [0], "steps": 12, "eval_every": 6,
             "batch_size": 16, "pppl_sentences": 10, "blimp_pairs_per_phenomenon": 1, "model_preset": "tiny",
             "corpus_seed": 0}


def test_flava_report_scale_cis_and_paired_tests(tmp_path):
    from grounded_fast.experiments.studies import get
    study = get("flava-ablation")
    with _store(tmp_path, "flava-ablation", FLAVA_CFG) as store:
        page = study.report(store, str(tmp_path)).to_markdown()          # nothing run yet: placeholders
        assert "Scale: ours against the paper" in page and "| seeds per cell | 1 | 5 |" in page
        assert "no image cell with a finished text-only cell" in page and NOT_COMPUTED in page
        text, images = "1" * 40 + "0" * 27, "1" * 38 + "0" * 29        # 67 pairs; 2 discordant: not significant
        for i, bits in ((0, text), (30, images)):
            _unit(store, "cell", f"text2000-images{i}-seed0", {"blimp_correct": bits},
                  {"blimp": 100 * bits.count("1") / 67, "pppl": 900.0 + i, "step": 12.0}, split="best")
        page = study.report(store, str(tmp_path)).to_markdown()
    assert "| BLiMP | 67 pairs (1 per phenomenon of the shipped subset) | all 67 phenomena × 1,000 pairs |" in page
    assert "trained too short to select" in page                         # every best step is the last
    row = next(ln for ln in page.splitlines() if ln.startswith("| 2K | none |"))
    lo, hi = (float(v) for v in re.search(r"\[([\d.]+), ([\d.]+)\]", row).groups())
    assert lo < 100 * 40 / 67 < hi and "67 BLiMP pairs (bootstrap)" in row
    assert "| images vs text only | 2K / 30 | 2K / none | 0 | -2.99 | 0 | 2 | p = 0.50 (not significant) |" in page
    assert "paired t over seeds" not in page                           # one seed: no test over seeds
    assert "1 test;" in page and "63.96" in page                       # the published grid beside ours
    assert "no cell with its BLiMP pairs' paradigms recorded" in page


def test_flava_report_blimp_per_category_beside_the_paper(tmp_path):
    """Per category (the BLiMP paper's 12; its s-selection paradigms under argument structure)
    for the text-only cells, with a t interval over seeds, beside the authors' text-only cells;
    the mean of the categories as the authors average; one row per paradigm for every cell."""
    from grounded_fast.data import BLIMP_BUILTIN, load_blimp
    from grounded_fast.data.formats.blimp import blimp_category
    from grounded_fast.experiments.flava_ablation import pack_blimp_groups, unpack_blimp_groups
    from grounded_fast.experiments.studies import get
    pairs, seen = [], set()
    for p in load_blimp(BLIMP_BUILTIN):          # one pair per paradigm, as blimp_pairs_per_phenomenon = 1
        if p.uid not in seen:
            seen.add(p.uid)
            pairs.append(p)
    groups = pack_blimp_groups(pairs)
    assert [(u, n) for u, _, n in unpack_blimp_groups(groups)] == [(p.uid, 1) for p in pairs]
    category = np.array([blimp_category(p.linguistics_term) for p in pairs])
    rng = np.random.default_rng(0)
    bits = {s: rng.random(67) < 0.6 for s in (0, 1)}
    bits[0][category == "anaphor agreement"] = bits[1][category == "anaphor agreement"] = True
    cfg = {**FLAVA_CFG, "seeds": [0, 1]}
    study = get("flava-ablation")
    with _store(tmp_path, "flava-ablation", cfg) as store:
        for i in (0, 30):
            for seed, b in bits.items():
                packed = "".join("1" if v else "0" for v in (b if i == 0 else ~b))
                _unit(store, "cell", f"text2000-images{i}-seed{seed}", {"blimp_correct": packed, "blimp_groups": groups},
                      {"blimp": 100 * b.mean(), "pppl": 900.0 + seed, "step": 6.0}, split="best")
        page = study.report(store, str(tmp_path)).to_markdown()
    from grounded_fast.experiments.significance import bootstrap_mean_ci, t_interval
    cell = next(ln for ln in page.splitlines() if ln.startswith("| 2K | none | 2 |"))     # both CIs of BLiMP, PPPL's
    blimp = [100 * b.mean() for b in bits.values()]
    boot = [100 * v for v in bootstrap_mean_ci(np.mean([bits[0], bits[1]], 0))]
    assert (f"| {rep.format_interval(*t_interval(blimp)[1:])} | {rep.format_interval(*boot)}, 67 BLiMP pairs "
            f"(bootstrap) | {rep.format_number(900.5)} | {rep.format_interval(*t_interval([900.0, 901.0])[1:])} |") in cell
    assert "| category | pairs | ours, 2K words (%) | 95% CI | paper, 10M words | paper, 100M words |" in page
    assert "| anaphor agreement | 2 | 100 | [100, 100] | 76.3 | 96.3 |" in page
    assert "| argument structure | 9 |" in page                  # 7 argument_structure + 2 s-selection paradigms
    per_seed = {s: [100 * b[category == c].mean() for c in dict.fromkeys(category)] for s, b in bits.items()}
    row = next(ln for ln in page.splitlines() if ln.startswith("| binding | 7 |"))
    b = [100 * bits[s][category == "binding"].mean() for s in (0, 1)]
    assert f"| binding | 7 | {rep.format_number(np.mean(b))} |" in row and "Student t over the seeds" in page
    mean_row = next(ln for ln in page.splitlines() if ln.startswith("| mean of the 12 categories |"))
    assert f"| 67 | {rep.format_number(np.mean([np.mean(v) for v in zip(*per_seed.values())]))} |" in mean_row
    assert sum(ln.startswith(f"| {p.uid} |") for p in pairs for ln in page.splitlines()) == 67
    assert "| paradigm | category | pairs | 2K words, none images | 2K words, 30 images |" in page
    diffs = [100 * ((~b).mean() - b.mean()) for b in bits.values()]          # the image cells hold the complements
    from grounded_fast.experiments.significance import t_interval
    from scipy import stats
    mean, lo, hi = t_interval(diffs)
    assert (f"| images vs text only | 2K / 30 | 2K / none | 2 | {rep.format_number(mean)} | "
            f"{rep.format_interval(lo, hi)} | {rep.significance(stats.ttest_1samp(diffs, 0).pvalue)} |") in page


def test_groundedbert_report_wilson_and_mcnemar(tmp_path):
    from grounded_fast.experiments.studies import get
    study = get("groundedbert")
    cfg = {"num_scenes": 40, "variants": ["text-only", "partial-0.5"], "seeds": [0], "pretrain_steps": 8,
           "finetune_steps": 20, "batch_size": 8, "model_preset": "tiny"}
    with _store(tmp_path, "groundedbert", cfg) as store:
        assert NOT_COMPUTED in study.report(store, str(tmp_path)).to_markdown()
        base, grounded = "1" * 30 + "0" * 20, "1" * 40 + "0" * 10      # 10 items right only with grounding
        _unit(store, "variant", "text-only-seed0", {"dev_correct": base}, {"dev_accuracy": 0.6, "dev_majority": 0.5})
        _unit(store, "variant", "partial-0.5-seed0", {"dev_correct": grounded}, {"dev_accuracy": 0.8})
        page = study.report(store, str(tmp_path)).to_markdown()
    assert "| text encoder | shipped MiniLM (384-d states), frozen | BERT-base, frozen | paper |" in page
    assert "50 dev items" in page and "| text-only | 1 | 0.600 | [0.462, 0.724] | dev items (Wilson) |" in page
    assert "| partial-0.5 | 0 | 0.200 | 10 | 0 | p = 0.0020 (significant) |" in page       # 2 / 2**10
    assert "1 test;" in page and "majority label scores 0.500" in page
    assert "paired t over seeds" not in page                                             # one seed: no such test


def test_groundedbert_report_over_seeds(tmp_path):
    """Several seeds: the mean dev accuracy with a Student-t CI over seeds, and the paired t-test of
    the per-seed differences against text-only (scipy's one-sample t on the differences)."""
    from scipy import stats
    from grounded_fast.experiments.significance import t_interval
    from grounded_fast.experiments.studies import get
    study = get("groundedbert")
    cfg = {"num_scenes": 40, "variants": ["text-only", "balanced"], "seeds": [0, 1, 2], "pretrain_steps": 8,
           "finetune_steps": 20, "batch_size": 8, "model_preset": "tiny"}
    rights = {("text-only", 0): 30, ("text-only", 1): 32, ("text-only", 2): 29,
              ("balanced", 0): 35, ("balanced", 1): 33, ("balanced", 2): 36}
    with _store(tmp_path, "groundedbert", cfg) as store:
        for (v, seed), k in rights.items():
            _unit(store, "variant", f"{v}-seed{seed}", {"dev_correct": "1" * k + "0" * (50 - k)},
                  {"dev_accuracy": k / 50})
        page = study.report(store, str(tmp_path)).to_markdown()
    mean, lo, hi = t_interval([k / 50 for (v, _), k in rights.items() if v == "balanced"])
    assert f"| balanced | 3 | {rep.format_number(mean)} | {rep.format_interval(lo, hi)} | 3 seeds (t) |" in page
    diffs = [(rights[("balanced", s)] - rights[("text-only", s)]) / 50 for s in range(3)]
    p = stats.ttest_1samp(diffs, 0).pvalue
    mean, lo, hi = t_interval(diffs)
    assert (f"| balanced | 3 | {rep.format_number(mean)} | {rep.format_interval(lo, hi)} | {rep.significance(p)} |"
            in page)
    assert page.count("| balanced | 1 |") == 1 and "| seeds | 3 per variant (0, 1, 2) |" in page


def _grounding_analysis(sizes):
    """An analysis record as the grounding study's analysis step writes it, for populations of ``sizes``."""
    import torch
    from grounded_fast.experiments.grounding import pairwise_per_sentence, population_tests
    pops = {s: [f"{s}-noise0-seed{k}@2" for k in range(n)] for s, n in sizes.items()}
    models = [m for ms in pops.values() for m in ms]
    setup_of = {m: m.split("-")[0] for m in models}
    g = torch.Generator().manual_seed(0)
    res = pairwise_per_sentence(torch.randn(len(models), 4, 5, 9, generator=g), torch.ones(4, 5, dtype=torch.bool))
    out = {"populations": pops, "trace": [(2, 0.1, 0.9)], "stopped_because": "p_below_threshold", "models": models,
           "agreement": res["agreement"].numpy(), "kl": res["kl"].numpy(), "kl_sentence": res["kl_sentence"].numpy(),
           "eval_items": {"sentences": res["sentences"], "tokens": res["tokens"]},
           "pair_table": {"P/C": {"agreement": 0.5, "kl": 0.4, "kl_sentence": 2.0, "model_pairs": 1}}}
    out["population_tests"] = population_tests(out, models, setup_of)
    return out


@pytest.mark.parametrize("sizes", [{"P": 1, "C": 1}, {"P": 3, "C": 3}])
def test_grounding_report_scale_units_and_within_between(tmp_path, sizes):
    from grounded_fast.experiments.studies import get
    study = get("grounding")
    cfg = {"setups": list(sizes), "seeds": [0, 1], "noise_levels": [0.0], "epochs": 2, "checkpoint_epochs": [2],
           "p_threshold": 0.5, "num_scenes": 40, "corpus_seed": 0, "model_preset": "tiny"}
    with _store(tmp_path, "grounding", cfg) as store:
        page = study.report(store, str(tmp_path)).to_markdown()          # partial run: placeholders
        assert "| populations | not matched yet (run incomplete) | 40 accuracy-matched models each |" in page
        store.complete_unit("features", "features", {"train": 32, "val": 4, "test": 4, "vocab": 30})
        store.complete_unit("analysis", "analysis", _grounding_analysis(sizes))
        page = study.report(store, str(tmp_path)).to_markdown()
    n = set(sizes.values()).pop()
    assert f"| populations | {n} accuracy-matched model{'s' if n > 1 else ''} each (P, C) |" in page
    assert "| evaluation items | 4 test items (20 target tokens), teacher forcing | 1,000 test items" in page
    assert "| items (train / val / test) | 32 / 4 / 4; target vocabulary 30 | — |" in page
    assert "| C/P | 1 | 0.500 |" in page and "| .657 | 2.00 |" in page and "| 11.48 | 0.400 |" in page
    assert "KL: nats, summed over a sentence's target tokens" in page
    if n == 1:
        assert "No test of within- vs between-population differences" in page
    else:
        assert re.search(r"\| agreement \(share of tokens\) \| 6 \| 9 \| [-\d.e]+ \| p = [\d.]+ \((not )?significant\) \|",
                         page) and "2 tests, each called significant" in page
