"""WiT-style image-text TSV (Srinivasan et al. 2021, Wikipedia-based Image Text).

A tab-separated file with a header row. The columns used (names configurable):

* the image: a path/URL column (WiT: ``image_url``) and/or a base64-encoded image-bytes column
  (the Kaggle WiT image files: ``b64_bytes``);
* the caption: ``caption_reference_description`` (the caption shown under the image);
* context: ``context_page_description`` and ``context_section_description`` (reference
  descriptions of the page and of the section the image appears in).

Other columns are kept in ``WitRecord.fields``. Fields may use csv-style quoting (as pandas
writes TSV: ``"..."`` around fields containing tabs, newlines or quotes); gzip is detected.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from typing import Collection, Dict, Iterator, List, Optional

from ._io import DataFormatError, PathLike, iter_tsv

__all__ = ["WitRecord", "load_wit_tsv", "iter_wit_captions"]


@dataclass(frozen=True)
class WitRecord:
    """One row: ``caption`` (str), ``image_path`` (str or None), ``image_bytes`` (decoded
    base64, bytes or None), ``page_description`` / ``section_description`` (str, "" when the
    column is not used or empty), ``line`` (the row's first line in the file) and ``fields``
    (every column of the row but the base64 one, name -> str)."""
    caption: str
    image_path: Optional[str]
    image_bytes: Optional[bytes] = field(default=None, repr=False)
    page_description: str = ""
    section_description: str = ""
    line: int = 0
    fields: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)


def _open_tsv(path: PathLike, quoted: bool):
    """(file name, an iterator of the (line, fields) after the header, the header's line number, the
    column names) of a TSV with a header row; DataFormatError for an empty file."""
    name = os.fspath(path)
    rows = iter_tsv(path, quoted=quoted)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(name, 1, "empty file (a header row is required)")
    header_line, header = first
    return name, rows, header_line, [c.strip() for c in header]


def iter_wit_captions(path: PathLike, caption_column: str = "caption_reference_description",
                      quoted: bool = True) -> Iterator[str]:
    """The non-empty captions of a WiT-style TSV, in file order, streamed (no image column is
    read or decoded: a text corpus of any size). DataFormatError for a missing header or caption
    column, a row with the wrong number of fields, or a file with no caption."""
    name, rows, header_line, columns = _open_tsv(path, quoted)
    if caption_column not in columns:
        raise DataFormatError(name, header_line, f"header lacks the caption column {caption_column!r} "
                              f"(columns: {columns})")
    k, n = columns.index(caption_column), 0
    for lineno, row in rows:
        if len(row) != len(columns):
            raise DataFormatError(name, lineno, f"expected {len(columns)} tab-separated fields "
                                  f"(as in the header), got {len(row)}")
        caption = row[k].strip()
        if caption:
            n += 1
            yield caption
    if n == 0:
        raise DataFormatError(name, None, f"no non-empty {caption_column!r} after the header row")


def load_wit_tsv(path: PathLike, *, caption_column: str = "caption_reference_description",
                 image_column: Optional[str] = "image_url", base64_column: Optional[str] = None,
                 page_column: Optional[str] = "context_page_description",
                 section_column: Optional[str] = "context_section_description",
                 skip_empty_captions: bool = True, languages: Optional[Collection[str]] = None,
                 language_column: str = "language", quoted: bool = True,
                 max_records: Optional[int] = None) -> List[WitRecord]:
    """Read a WiT-style TSV with a header row.

    caption_column, image_column (path/URL), base64_column (image bytes), page_column,
    section_column: column names; a column set to None is not used. At least one of
    image_column / base64_column is required. Every used column must be in the header.
    skip_empty_captions: drop rows whose caption is empty (common in WiT: many images have no
    reference description); False keeps them. languages: keep only rows whose
    ``language_column`` value is in this set (e.g. ``{"en"}``); None keeps all. quoted:
    csv-style quoting (False: split every line on tabs, quotes are literal). max_records: stop
    after this many records.

    Returns :class:`WitRecord` in file order (empty when every row is filtered out). Raises
    DataFormatError naming file and line for a missing header or required column, a row with
    the wrong number of fields, an empty image field, undecodable base64, or broken quoting;
    naming the file when no row follows the header.
    """
    if image_column is None and base64_column is None:
        raise ValueError("give image_column and/or base64_column")
    name, rows, header_line, columns = _open_tsv(path, quoted)
    required = [c for c in (caption_column, image_column, base64_column, page_column, section_column)
                if c is not None]
    if languages is not None:
        required.append(language_column)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataFormatError(name, header_line, f"header lacks required column(s) {missing} "
                              f"(columns: {columns})")
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise DataFormatError(name, header_line, f"duplicate column name(s) {dup}")
    idx = {c: i for i, c in enumerate(columns)}
    keep_lang = set(languages) if languages is not None else None
    out: List[WitRecord] = []
    if max_records is not None and max_records <= 0:
        return out
    n_rows = 0
    for lineno, row in rows:
        n_rows += 1
        if len(row) != len(columns):
            raise DataFormatError(name, lineno, f"expected {len(columns)} tab-separated fields "
                                  f"(as in the header), got {len(row)}")
        if keep_lang is not None and row[idx[language_column]] not in keep_lang:
            continue
        caption = row[idx[caption_column]].strip()
        if not caption and skip_empty_captions:
            continue
        image_path = None
        if image_column is not None:
            image_path = row[idx[image_column]].strip()
            if not image_path and base64_column is None:
                raise DataFormatError(name, lineno, f"empty image column {image_column!r}")
        image_bytes = None
        if base64_column is not None:
            b64 = row[idx[base64_column]].strip()
            if not b64:
                raise DataFormatError(name, lineno, f"empty image column {base64_column!r}")
            try:
                image_bytes = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise DataFormatError(name, lineno, f"column {base64_column!r} is not valid base64: {e}") from None
        out.append(WitRecord(
            caption=caption, image_path=image_path or None, image_bytes=image_bytes,
            page_description=row[idx[page_column]].strip() if page_column is not None else "",
            section_description=row[idx[section_column]].strip() if section_column is not None else "",
            line=lineno, fields={c: v for c, v in zip(columns, row) if c != base64_column}))
        if max_records is not None and len(out) >= max_records:
            break
    if n_rows == 0:
        raise DataFormatError(name, None, "no rows after the header row")
    return out
