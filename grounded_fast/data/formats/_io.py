"""Shared I/O for the format readers: the error type and byte-exact line iteration.

Lines are split on ``\\n`` only (a trailing ``\\r`` is dropped, so CRLF files read like LF files;
other Unicode line separators inside a field are kept), a UTF-8 byte-order mark at the start of a
file is dropped, and gzip input is recognised by its magic bytes whatever the file is called.
Each line is decoded separately so that invalid UTF-8 is reported with its line number; damaged
compressed data (a bad deflate block, a truncated stream, a CRC mismatch) raises DataFormatError
naming the file, chained from the decompressor's error.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = ["DataFormatError", "PathLike", "open_binary", "iter_lines", "iter_stream_lines",
           "read_lines", "read_text", "line_of_offset", "iter_tsv"]

PathLike = Union[str, "os.PathLike[str]"]

_GZIP_MAGIC = b"\x1f\x8b"
_CSV_FIELD_LIMIT = 1 << 30
# What gzip and zip members raise on damaged data: a bad header or trailer (OSError, incl.
# gzip.BadGzipFile), a truncated stream (EOFError), a bad deflate block (zlib.error), a CRC
# mismatch in a zip member (zipfile.BadZipFile).
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)


class DataFormatError(ValueError):
    """Malformed or missing input data.

    ``path`` (str) names the file (``archive.zip!member`` for a zip member), ``line`` (int, 1-based)
    the offending line or None when the problem is not tied to one line (a missing file,
    mismatched line counts). ``str(err)`` is ``"path:line: what is wrong"`` (``"path: ..."``
    without a line).
    """

    def __init__(self, path: Union[PathLike, str], line: Optional[int], message: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the attributes when pickled (e.g. across worker processes)
        return (type(self), (self.path, self.line, self.reason))


def _maybe_gunzip(stream: IO[bytes], name: str) -> IO[bytes]:
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # type: ignore[arg-type]
    if stream.peek(2)[:2] == _GZIP_MAGIC:  # type: ignore[union-attr]
        return gzip.GzipFile(fileobj=stream, mode="rb", filename=name)
    return stream


def _open_file(path: PathLike) -> IO[bytes]:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataFormatError(path, None, "is a directory, expected a file") from None


def _corrupt(name: str, lines_read: int, err: BaseException) -> DataFormatError:
    where = f"after line {lines_read}" if lines_read else "at the start"
    return DataFormatError(name, None, f"cannot read compressed data ({where}): {err}; the file "
                           "is damaged or truncated, download or extract it again")


@contextmanager
def open_binary(path: PathLike) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading bytes, decompressing gzip transparently.

    A missing file raises DataFormatError (``path: file not found``); damaged gzip data shows
    on reading, as the errors in ``_DECOMPRESSION_ERRORS`` (the caller's to report).
    """
    raw = _open_file(path)
    try:
        yield _maybe_gunzip(raw, os.fspath(path))  # reads no compressed data yet
    finally:
        raw.close()


def iter_stream_lines(stream: IO[bytes], name: str) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a binary stream (gzip detected), 1-based,
    without the line terminator. ``name`` is used in error messages: invalid UTF-8 names the
    line; damaged compressed data (gzip, or a zip member's deflate data or CRC) raises
    DataFormatError chained from the decompressor's error."""
    lineno = 0
    try:
        for raw in _maybe_gunzip(stream, name):
            lineno += 1
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(name, lineno, f"not valid UTF-8 (byte {raw[e.start]:#04x} "
                                      f"at column {e.start + 1})") from None
            yield lineno, text
    except _DECOMPRESSION_ERRORS as e:
        raise _corrupt(name, lineno, e) from e


def iter_lines(path: PathLike) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of the file at ``path`` (see module doc)."""
    with _open_file(path) as f:
        yield from iter_stream_lines(f, os.fspath(path))


def read_lines(path: PathLike) -> List[str]:
    """All lines of ``path`` as a list of str (line i of the file at index i - 1)."""
    return [text for _, text in iter_lines(path)]


def line_of_offset(data: Union[str, bytes], offset: int) -> int:
    """1-based line number of character/byte ``offset`` in ``data``."""
    newline = "\n" if isinstance(data, str) else b"\n"
    return data.count(newline, 0, offset) + 1  # type: ignore[arg-type]


def read_text(path: PathLike) -> str:
    """Whole file as str (gzip detected, BOM dropped, CRLF kept as-is); invalid UTF-8 raises
    DataFormatError naming the line."""
    with open_binary(path) as f:
        try:
            data = f.read()
        except _DECOMPRESSION_ERRORS as e:
            raise _corrupt(os.fspath(path), 0, e) from e
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, line_of_offset(data, e.start), "not valid UTF-8") from None


_QUOTING_HINT = "read with quoted=False if the file does not use csv quoting"


def iter_tsv(path: PathLike, quoted: bool = False, delimiter: str = "\t",
             quoting_hint: str = _QUOTING_HINT) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank record of a tab-separated file (or one
    separated by another single-character ``delimiter``, e.g. ``","``).

    quoted=False: every line is one record, split on the delimiter, quotes are ordinary
    characters (the GLUE convention). quoted=True: csv-style quoting (a field may be enclosed in
    ``"``, with ``""`` for a quote and delimiters/newlines inside, as pandas ``to_csv`` writes
    it); the line number is the record's first line; broken quoting raises DataFormatError
    whose message ends with ``quoting_hint`` (what to do).
    Lines that are empty after removing the terminator are skipped.
    """
    name = os.fspath(path)
    if not quoted:
        for lineno, text in iter_lines(path):
            if text:
                yield lineno, text.split(delimiter)
        return
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:  # base64 images are larger than the default
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    last = [0]

    def feed() -> Iterator[str]:
        for lineno, text in iter_lines(path):
            last[0] = lineno
            yield text + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(name, start, f"bad quoting in the record starting here: {e} "
                                  f"({quoting_hint})") from None
        if row and row != [""]:
            yield start, row
        start = last[0] + 1


def check_files_exist(paths: Sequence[Path], what: str, detail: str, shown: int = 5) -> None:
    """DataFormatError naming the first ``shown`` missing files of ``paths`` and their count:
    ``"<what> not found (<n> of <len(paths)> <detail>: a, b and 3 more)"``."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        listed = ", ".join(str(p) for p in missing[:shown])
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise DataFormatError(missing[0], None, f"{what} not found ({len(missing)} of {len(paths)} {detail}: "
                              f"{listed}{more})")

