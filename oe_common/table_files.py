"""A user's own data files as columns: ``.csv`` (RFC 4180 quoting), ``.tsv``, ``.jsonl``, each optionally ``.gz``.

The files are read by ``datasets`` (``load_dataset("csv" | "json", data_files=...)``; tab-separated with
``delimiter="\\t"``), never by a hand-written parser. CSV and TSV cells are taken verbatim: ``NA``, ``null`` or an
empty cell stay the strings they are (no missing-value guessing), so an empty text is reported as such. The
``datasets`` cache goes into a temporary folder that is removed afterwards: reading a file leaves nothing behind.

Every problem is a :class:`TableFileError` (a :class:`~oe_common.data_dir.DataError`) with a one-line message
naming the file; a column that is not there is a :class:`MissingColumnError` listing the columns found.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .data_dir import DataError
from .preprocessing import some_indices

__all__ = ["TABLE_SUFFIXES", "TableFileError", "MissingColumnError", "read_columns", "text_column"]

#: The file types read (each also gzip-compressed, with ``.gz`` appended).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


class TableFileError(DataError, ValueError):
    """A data file that cannot be used: missing, of an unknown type, empty, undecodable, with bad cells."""


class MissingColumnError(TableFileError):
    """A column asked for is not in the file (the message lists the columns found)."""


def _kind(path: Path) -> str:
    """The file's type suffix (``.csv`` / ``.tsv`` / ``.jsonl``), ``.gz`` stripped."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise TableFileError(f"{path}: unknown file type; give a {', '.join(TABLE_SUFFIXES)} file (optionally .gz)")


def _is_empty(path: Path) -> bool:
    """True when the file (decompressed, for ``.gz``) holds no byte or only white space."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return not f.read(4096).strip()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise TableFileError(f"cannot read {path}: {exc}") from None


def read_columns(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, list[Any]]:
    """The values of ``columns`` in the data file ``path``, one list per column (one value per row, file order).

    Raises:
        TableFileError: the file is missing, of another type, empty (or a header only), or not UTF-8 / not valid
            for its type (the reader's reason is given).
        MissingColumnError: a column is not in the file (the columns found are listed).
    """
    import datasets

    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise TableFileError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if _is_empty(path):
        raise TableFileError(f"{path} is empty: it has no rows")
    if kind == ".jsonl":
        builder, options = "json", {}
    else:  # verbatim cells: no NA guessing, so "NA" stays a text and an empty cell is an empty text
        builder, options = "csv", {"keep_default_na": False, "na_filter": False, **({"delimiter": "\t"} if kind == ".tsv" else {})}
    bars_were_on, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a reader error is our one line, not also a logged traceback
    try:
        with tempfile.TemporaryDirectory(prefix="oe-table-") as cache:
            try:
                table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **options)
            except Exception as exc:  # DatasetGenerationError wraps the reader's own error (UnicodeDecodeError, ArrowInvalid, ...)
                raise TableFileError(f"cannot read {path} as {kind[1:]}: {_reason(exc)}") from None
            found = list(table.column_names)
            missing = [c for c in columns if c not in found]
            if missing:
                raise MissingColumnError(f"{path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(map(repr, found))}")
            if len(table) == 0:
                raise TableFileError(f"{path} has no rows (only a header)")
            return {c: list(table[c]) for c in columns}  # plain lists (newer datasets return a lazy Column)
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _reason(exc: BaseException) -> str:
    """The reader's error on one line (``datasets`` raises its own error *from* the reader's)."""
    if "corresponds to no data" in str(exc):  # a header without rows
        return "it has no rows"
    inner = exc.__cause__ or exc
    text = " ".join(str(inner).split())[:300]
    return f"{type(inner).__name__}: {text}"


def text_column(values: Sequence[Any], path: str | os.PathLike, column: str) -> list[str]:
    """``values`` (one column) as texts; an empty / whitespace-only / non-string cell is an error naming its rows.

    Rows are numbered from 1 in data order (the header of a CSV / TSV file is not a row).
    """
    bad = [i + 1 for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if bad:
        raise TableFileError(f"{path}: column {column!r} has {len(bad)} empty or non-text cell(s) at row {some_indices(bad)}; every row needs a text")
    return list(values)
