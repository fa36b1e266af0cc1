"""A user's own data files as columns: ``.csv`` (RFC 4180 quoting), ``.tsv``, ``.jsonl``, each optionally ``.gz``.

The files are read by ``datasets`` (``load_dataset("csv" | "json", data_files=...)``; tab-separated with
``delimiter="\\t"``), never by a hand-written parser. CSV and TSV cells are taken verbatim: ``NA``, ``null`` or an
empty cell stay the strings they are (no missing-value guessing), so an empty text is reported as such. The
``datasets`` cache goes into a temporary folder that is removed afterwards: reading a file leaves nothing behind.

Every problem is a :class:`TableFileError` (a :class:`~oe_common.experiments.data_dir.DataError`) with a one-line message
naming the file; a column that is not there is a :class:`MissingColumnError` listing the columns found.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from .data_dir import DataError
from ..deployment.preprocessing import some_indices

__all__ = ["quiet_datasets", "TABLE_SUFFIXES", "TEXT_SUFFIXES", "TableFileError", "MissingColumnError", "read_columns", "text_column",
           "stream_text_column"]

#: The file types read (each also gzip-compressed, with ``.gz`` appended).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
#: The file types :func:`stream_text_column` reads: the tables and ``.txt`` (one text per line), each optionally ``.gz``.
TEXT_SUFFIXES = (".txt", *TABLE_SUFFIXES)


class TableFileError(DataError, ValueError):
    """A data file that cannot be used: missing, of an unknown type, empty, undecodable, with bad cells."""


class MissingColumnError(TableFileError):
    """A column asked for is not in the file (the message lists the columns found)."""


def _kind(path: Path, suffixes: Sequence[str] = TABLE_SUFFIXES) -> str:
    """The file's type suffix (one of ``suffixes``), ``.gz`` stripped."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    for suffix in suffixes:
        if name.endswith(suffix):
            return suffix
    raise TableFileError(f"{path}: unknown file type; give a {', '.join(suffixes)} file (optionally .gz)")


def _builder(kind: str) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` loader of a file type and its options: verbatim CSV / TSV cells (no NA guessing, so "NA"
    stays a text and an empty cell is an empty text)."""
    if kind == ".jsonl":
        return "json", {}
    if kind == ".txt":
        return "text", {}
    return "csv", {"keep_default_na": False, "na_filter": False, **({"delimiter": "\t"} if kind == ".tsv" else {})}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise TableFileError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if _is_empty(path):
        raise TableFileError(f"{path} is empty: it has no rows")


def _is_empty(path: Path) -> bool:
    """True when the file (decompressed, for ``.gz``) holds no byte or only white space."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return not f.read(4096).strip()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise TableFileError(f"cannot read {path}: {exc}") from None


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets`` without progress bars and with only critical log records inside the block (restored after): a
    reader error becomes our one line, not also a logged traceback."""
    import datasets

    bars_were_on, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


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
    _check_file(path)
    builder, options = _builder(kind)
    with quiet_datasets(), tempfile.TemporaryDirectory(prefix="oe-table-") as cache:
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


def stream_text_column(path: str | os.PathLike, column: str = "text", chunk_bytes: int | None = None) -> Any:
    """The texts of ``column`` in the data file ``path`` as a STREAMING ``datasets.IterableDataset`` of ``{"text": str}``
    rows, in file order; the file is read lazily, a chunk at a time, never whole.

    ``.txt`` files hold one text per line (``column`` must then be ``"text"``); ``.csv`` / ``.tsv`` / ``.jsonl`` are
    read as by :func:`read_columns`; each optionally ``.gz``. Rows whose text is empty, white space only or not a
    string are skipped (a streamed corpus is not checked row by row before use). ``chunk_bytes``: read size of the
    ``.txt`` / ``.jsonl`` loaders (``datasets``' default 10 MiB; CSV is read 10,000 rows at a time).

    Raises (after reading the first chunk only):
        TableFileError: the file is missing, of another type, empty, or unreadable as its type.
        MissingColumnError: ``column`` is not in the file (the columns found are listed).
    """
    import datasets

    path = Path(path)
    kind = _kind(path, TEXT_SUFFIXES)
    _check_file(path)
    if kind == ".txt" and column != "text":
        raise TableFileError(f"{path}: a .txt file holds one text per line and has no column {column!r}; "
                             "a text column can be chosen in .csv / .tsv / .jsonl files")
    builder, options = _builder(kind)
    if chunk_bytes is not None and kind in (".txt", ".jsonl"):
        options["chunksize"] = int(chunk_bytes)
    with quiet_datasets():
        stream = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **options)
        try:
            first = next(iter(stream))
        except StopIteration:
            raise TableFileError(f"{path} is empty: it has no rows") from None
        except Exception as exc:
            raise TableFileError(f"cannot read {path} as {kind[1:]}: {_reason(exc)}") from None
    if column not in first:
        raise MissingColumnError(f"{path} has no column {column!r}; its columns: {', '.join(map(repr, first))}")
    return only_texts(stream, column)


def only_texts(stream: Any, column: str) -> Any:
    """``stream`` (a ``datasets.IterableDataset``) reduced to ``{"text": str}`` rows of ``column``, lazily, without
    the rows whose text is empty, white space only or not a string."""
    stream = stream.select_columns([column])
    if column != "text":
        stream = stream.rename_column(column, "text")
    return stream.filter(lambda row: isinstance(row["text"], str) and bool(row["text"].strip()))
