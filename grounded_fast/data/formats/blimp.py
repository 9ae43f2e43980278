"""BLiMP (Warstadt et al. 2020): 67 paradigms x 1000 English minimal pairs.

One JSON-lines file per paradigm, ``<UID>.jsonl``, each line an object with ``sentence_good``,
``sentence_bad``, ``field``, ``linguistics_term``, ``UID``, ``pairID`` and boolean method flags
(``simple_LM_method``, ``one_prefix_method``, ``two_prefix_method``, ``lexically_identical``);
some paradigms add prefix fields (``one_prefix_prefix``, ...), kept in ``extra``. Read from a
directory of ``.jsonl`` files or directly from the released ``BLiMP.zip`` (members
``data/*.jsonl``), without extracting; macOS metadata (``__MACOSX/``, ``._*``) is ignored.
"""
from __future__ import annotations

import difflib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ._io import DataFormatError, PathLike, iter_lines, iter_stream_lines

__all__ = ["BlimpPair", "load_blimp", "list_blimp_phenomena", "BLIMP_CATEGORIES", "blimp_category"]

_REQUIRED = ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID")
_FLAGS = ("simple_LM_method", "one_prefix_method", "two_prefix_method", "lexically_identical")
_KNOWN = frozenset(_REQUIRED + _FLAGS)


@dataclass(frozen=True)
class BlimpPair:
    """One minimal pair. ``uid`` is the paradigm (phenomenon) id, ``pair_id`` its index (int,
    0..999), flags are bool or None when absent, ``extra`` holds the remaining keys. Values are
    kept as released: ``field`` is spelled ``syntax_semantics`` in 13 paradigms and
    ``syntax/semantics`` in ``principle_A_case_2``."""
    sentence_good: str
    sentence_bad: str
    field: str
    linguistics_term: str
    uid: str
    pair_id: int
    simple_lm_method: Optional[bool] = None
    one_prefix_method: Optional[bool] = None
    two_prefix_method: Optional[bool] = None
    lexically_identical: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


#: the 12 phenomenon categories of the BLiMP paper (its Table 4), by the pairs' ``linguistics_term``. The
#: release spells 13 terms: its two ``s-selection`` paradigms (animate_subject_passive / _trans) are
#: counted under argument structure, which then has the paper's 9 paradigms.
BLIMP_CATEGORIES = {
    "anaphor_agreement": "anaphor agreement", "argument_structure": "argument structure",
    "s-selection": "argument structure", "binding": "binding", "control_raising": "control / raising",
    "determiner_noun_agreement": "determiner–noun agreement", "ellipsis": "ellipsis",
    "filler_gap_dependency": "filler–gap", "irregular_forms": "irregular forms", "island_effects": "island effects",
    "npi_licensing": "NPI licensing", "quantifiers": "quantifiers", "subject_verb_agreement": "subject–verb agreement",
}


def blimp_category(linguistics_term: str) -> str:
    """The BLiMP paper's category of a pair's ``linguistics_term`` ('npi_licensing' -> 'NPI
    licensing'); ValueError for a term the release does not use."""
    try:
        return BLIMP_CATEGORIES[linguistics_term]
    except KeyError:
        raise ValueError(f"unknown BLiMP linguistics_term {linguistics_term!r}; known: "
                         f"{sorted(BLIMP_CATEGORIES)}") from None


def _is_metadata(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._")


# source -> {uid: (display name, opener of (line, text) iterator)}
_Members = Dict[str, Tuple[str, Callable[[], Iterator[Tuple[int, str]]]]]


def _members(source: Path) -> Tuple[_Members, Optional[zipfile.ZipFile]]:
    if source.is_dir():
        base = source / "data" if not any(source.glob("*.jsonl")) and (source / "data").is_dir() else source
        files = sorted(p for p in base.glob("*.jsonl") if not _is_metadata(p.name))
        return {p.name[:-len(".jsonl")]: (str(p), lambda p=p: iter_lines(p)) for p in files}, None
    if not source.exists():
        raise DataFormatError(source, None, "file not found")
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as e:
        raise DataFormatError(source, None, f"not a directory or a zip archive: {e}") from None
    out: _Members = {}
    for name in sorted(zf.namelist()):
        if name.endswith(".jsonl") and not _is_metadata(name):
            uid = name.rsplit("/", 1)[-1][:-len(".jsonl")]
            display = f"{source}!{name}"
            if uid in out:
                raise DataFormatError(display, None, f"paradigm {uid!r} appears twice in the archive "
                                      f"(also {out[uid][0]})")

            def opener(name: str = name, display: str = display) -> Iterator[Tuple[int, str]]:
                try:
                    member = zf.open(name)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
                    # a damaged local header; an unsupported compression method or encryption
                    advice = ("the archive is damaged, download it again" if isinstance(e, zipfile.BadZipFile)
                              else "extract the archive and pass the directory instead")
                    raise DataFormatError(display, None, f"cannot open the archive member: {e}; "
                                          f"{advice}") from e
                with member:
                    yield from iter_stream_lines(member, display)
            out[uid] = (display, opener)
    return out, zf


def list_blimp_phenomena(source: PathLike) -> List[str]:
    """Sorted paradigm UIDs (file names without ``.jsonl``) in a BLiMP directory or zip."""
    members, zf = _members(Path(source))
    if zf is not None:
        zf.close()
    return sorted(members)


def _parse(obj: Any, name: str, lineno: int, uid_expected: str) -> BlimpPair:
    if not isinstance(obj, dict):
        raise DataFormatError(name, lineno, f"expected a JSON object, got {type(obj).__name__}")
    try:
        values = [obj[k] for k in _REQUIRED]
    except KeyError:
        raise DataFormatError(name, lineno, f"missing key(s) {[k for k in _REQUIRED if k not in obj]}") from None
    for k, v in zip(_REQUIRED[:5], values):
        if not isinstance(v, str) or not v.strip():
            raise DataFormatError(name, lineno, f"{k!r} must be a non-empty string, got {v!r}")
    if values[4] != uid_expected:
        raise DataFormatError(name, lineno, f"UID {values[4]!r} does not match the file name "
                              f"({uid_expected!r})")
    pid = values[5]
    if isinstance(pid, bool) or not isinstance(pid, (int, str)) or not str(pid).strip().isdigit():
        raise DataFormatError(name, lineno, f"'pairID' must be a non-negative integer, got {pid!r}")
    flags = [obj.get(k) for k in _FLAGS]
    for k, v in zip(_FLAGS, flags):
        if v is not None and v is not True and v is not False:
            raise DataFormatError(name, lineno, f"{k!r} must be true/false, got {v!r}")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    return BlimpPair(*values[:5], int(pid), *flags, extra=extra)


def load_blimp(source: PathLike, phenomena: Union[str, Iterable[str], None] = None) -> List[BlimpPair]:
    """Read BLiMP minimal pairs.

    source: a directory holding the ``<UID>.jsonl`` files (or a ``data/`` subdirectory with
    them), or the ``BLiMP.zip`` archive (read in place). phenomena: one UID or several to keep
    (None: all 67); an unknown UID raises ValueError listing close matches.

    Returns :class:`BlimpPair` records ordered by UID, then by line. Blank lines are skipped.
    Raises DataFormatError naming the file (``archive.zip!member`` for the zip) and line for
    invalid JSON, missing keys, wrong types, or a UID that differs from the file name; and
    naming the file (or member) for a paradigm file without pairs and for damaged compressed
    data (a corrupt deflate stream, a CRC mismatch).
    """
    src = Path(os.fspath(source))
    members, zf = _members(src)
    try:
        if not members:
            raise DataFormatError(src, None, "no BLiMP .jsonl files found")
        if phenomena is None:
            wanted = sorted(members)
        else:
            wanted = sorted({phenomena} if isinstance(phenomena, str) else set(phenomena))
            for uid in wanted:
                if uid not in members:
                    close = difflib.get_close_matches(uid, members, n=3)
                    raise ValueError(f"unknown BLiMP phenomenon {uid!r} in {src}"
                                     + (f"; did you mean {close}?" if close else
                                        f"; {len(members)} available, see list_blimp_phenomena()"))
        out: List[BlimpPair] = []
        for uid in wanted:
            name, opener = members[uid]
            n_before = len(out)
            for lineno, text in opener():
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataFormatError(name, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
                out.append(_parse(obj, name, lineno, uid))
            if len(out) == n_before:
                raise DataFormatError(name, None, "no minimal pairs (the file is empty)")
        return out
    finally:
        if zf is not None:
            zf.close()
