"""The outlier corpus of the text-classifier recipe's OE stage (``--outliers``).

``wikitext2`` (default): the paper's WikiText-2 train sentences, a seeded subset of ``outlier_examples``, in memory.
A file (``.txt`` one text per line, ``.csv`` / ``.tsv`` / ``.jsonl`` with ``--outlier-text-column``, each optionally
``.gz``), a dataset folder, or a Hugging Face Hub dataset id (``--outlier-config``, ``--outlier-split``) is STREAMED:
a ``datasets.IterableDataset`` read lazily, a chunk at a time, so a multi-GB corpus is never loaded whole; the
trainer's outlier stream shuffles it in a buffer and cycles it (:class:`oe_common.training.outlier_stream.OutlierStream`).
Folders and Hub ids go through the real ``datasets.load_dataset(..., streaming=True)``; no dataset script runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from oe_common.experiments.data_dir import MissingDataError
from oe_common.experiments.table_files import TEXT_SUFFIXES, MissingColumnError, TableFileError, only_texts, quiet_datasets, stream_text_column

from ..lm.data import seeded_subset_indices
from .textcls_data import wikitext_sentences

__all__ = ["WIKITEXT2", "OutlierCorpus", "load_outlier_corpus", "outlier_source_kind"]

#: The default corpus: the paper's WikiText-2 train sentences.
WIKITEXT2 = "wikitext2"


@dataclasses.dataclass
class OutlierCorpus:
    """``texts``: rows ``{"text": str}``; a ``datasets.Dataset`` (WikiText-2) or a streaming ``IterableDataset``."""

    name: str  # what the records' ``outliers`` key says: "wikitext2", or the file / folder / Hub id as given
    kind: str  # "wikitext2" | "file" | "folder" | "hub"
    texts: Any

    @property
    def streamed(self) -> bool:
        return self.kind != "wikitext2"

    def describe(self, text_column: str, split: str, config: str | None) -> dict[str, Any]:
        """What the run's meta records about the corpus."""
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "streamed": self.streamed}
        if self.kind in ("file", "folder", "hub"):
            info["text_column"] = text_column
        if self.kind in ("folder", "hub"):
            info.update(split=split, config=config)
        if not self.streamed:
            info["texts"] = len(self.texts)
        return info


def outlier_source_kind(source: str) -> str:
    """``wikitext2``, ``file`` (an existing file, or a name ending in a data-file suffix), ``folder`` (an existing
    directory) or ``hub`` (anything else: a Hub dataset id)."""
    if source == WIKITEXT2:
        return "wikitext2"
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return "folder"
    name = path.name.lower().removesuffix(".gz")
    if path.exists() or name.endswith(TEXT_SUFFIXES):
        return "file"
    return "hub"


def load_outlier_corpus(source: str, data_dir: str | os.PathLike | None = None, *, text_column: str = "text",
                        split: str = "train", config: str | None = None, examples: int | None = None,
                        seed: int = 0) -> OutlierCorpus:
    """The corpus ``source`` names (see the module docstring). ``examples`` (WikiText-2 only): a seeded subset of that
    many sentences (``seed``); a streamed corpus is read as far as the training steps need.

    Raises a one-line :class:`~oe_common.experiments.data_dir.DataError` naming the source: a missing / empty / unreadable file,
    a missing text column (the columns found are listed), a dataset the Hub cannot give (offline, unknown id)."""
    kind = outlier_source_kind(source)
    if kind == "wikitext2":
        sentences = wikitext_sentences("train", data_dir)
        return OutlierCorpus(WIKITEXT2, kind, sentences.select(seeded_subset_indices(len(sentences), examples, seed)))
    if kind == "file":
        return OutlierCorpus(source, kind, stream_text_column(Path(os.path.expanduser(source)), text_column))
    return OutlierCorpus(source, kind, _stream_dataset(source, kind, text_column, split, config))


def _stream_dataset(source: str, kind: str, column: str, split: str, config: str | None) -> Any:
    """``load_dataset(source, config, split=split, streaming=True)`` reduced to ``{"text"}`` rows of ``column``."""
    import datasets

    what = f"the outlier dataset {'folder' if kind == 'folder' else 'id'} {source!r}"
    path = os.path.expanduser(source) if kind == "folder" else source
    try:
        with quiet_datasets():
            stream = datasets.load_dataset(path, config, split=split, streaming=True)
            first = next(iter(stream))
    except StopIteration:
        raise TableFileError(f"{what} has no rows in split {split!r}") from None
    except Exception as exc:  # unknown id, offline Hub, no such split / config, unreadable files
        reason = " ".join(str(exc).split())[:300]
        hint = "" if kind == "folder" else "; give a local file or dataset folder, or run where the Hub is reachable"
        raise MissingDataError(f"cannot stream {what} (split {split!r}{f', config {config!r}' if config else ''}): "
                               f"{type(exc).__name__}: {reason}{hint}") from None
    if column not in first:
        raise MissingColumnError(f"{what} has no column {column!r}; its columns: {', '.join(map(repr, first))}; "
                                 "choose one with --outlier-text-column")
    return only_texts(stream, column)

