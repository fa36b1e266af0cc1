"""Text-classification corpora for OOD detection (the paper's appendix experiments and CLINC150), as ``datasets``.

Read from the data directory (``data_dir=...`` or ``$OE_DATA_DIR``; layout and provenance in
``textcls/SOURCES.md`` of the data folder)::

    textcls/clinc150/{train,validation,test}.tsv.gz, oos_{train,validation,test}.tsv.gz
    textcls/sst2/{train,validation,test}.tsv.gz, train_sentences.tsv.gz
    textcls/trec/{train,test}.tsv.gz
    textcls/multi30k/test.txt.gz          OOD only
    wikitext-2/wiki.{train,valid,test}.tokens[.gz]    the OE source (sentences, see wikitext_sentences)
    ewt/{answers,email,newsgroup,reviews,weblog}.txt   OOD only (raw sentences, one per line)

``*.tsv.gz``: header ``text<TAB>label``, then one ``text<TAB>label`` per line, NO quoting (``csv.QUOTE_NONE``).
A missing file raises :class:`oe_common.experiments.data_dir.MissingDataError`, a malformed one :class:`MalformedDataError`;
both are one line naming the file and the data directory. Before it is read, every file is checked against the data
folder's ``SHA256SUMS`` (:func:`oe_common.experiments.data_integrity.verify_checksums`: a truncated or changed file raises
:class:`~oe_common.experiments.data_integrity.DataIntegrityError`; files it does not list and ``OE_SKIP_DATA_CHECKS=1`` skip it).

In-distribution sets (:func:`load_textcls`) are a ``DatasetDict`` with ``train`` / ``validation`` / ``test``,
columns ``text`` (str) and ``label`` (``ClassLabel``; names sorted, ids = positions in :attr:`TextClsData.label_names`):

* ``clinc150``: 150 intents; 15,000 / 3,000 / 4,500 (the out-of-scope files are OOD sets, not a 151st class).
* ``sst2``: labels ``"0"`` (negative) / ``"1"`` (positive); 67,349 / 872 / 1,821 (``train_split="train_sentences"``:
  6,920 whole training sentences, the OE paper's training set).
* ``trec``: TREC-50 (the whole ``COARSE:fine`` string, as the paper); ``trec6``: the coarse part. No official
  validation split: a seeded ``validation_fraction`` of the DISTINCT train questions (duplicates stay on one side)
  is carved out; train keeps the rest, both in file order. Label names are those of the whole train file;
  every test label must occur in it.

OOD sets (:func:`load_ood_texts`) are ``Dataset`` s with one ``text`` column: ``clinc150_oos`` (``oos_test``;
``clinc150_oos_train`` / ``clinc150_oos_validation`` too), ``multi30k``, ``ewt_<domain>``, and the test texts of
the in-distribution sets by their names (``clinc150``, ``sst2``, ``trec``).
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oe_common.experiments.data_dir import DataError, require_files, resolve_data_dir
from oe_common.experiments.data_integrity import verify_checksums

from ..lm.data import EWT_DOMAINS, _corpus_lines
from ..lm.normalize import unsplit_wikitext

__all__ = [
    "TEXTCLS_DATASETS",
    "TRAIN_SPLITS",
    "OOD_SETS",
    "MalformedDataError",
    "TextClsData",
    "read_tsv",
    "load_textcls",
    "labelled_dataset",
    "load_ood_texts",
    "wikitext_sentences",
    "split_wikitext_sentences",
]

TEXTCLS_DATASETS = ("clinc150", "sst2", "trec", "trec6")
OOD_SETS = (
    "clinc150_oos", "clinc150_oos_train", "clinc150_oos_validation", "multi30k",
    *(f"ewt_{d}" for d in EWT_DOMAINS), "clinc150", "sst2", "trec",
)
#: The training files a set offers (``load_textcls(train_split=...)``); the first is the default.
TRAIN_SPLITS = {"sst2": ("train", "train_sentences")}
_FOLDER = {"clinc150": "clinc150", "sst2": "sst2", "trec": "trec", "trec6": "trec"}
_HINT = "See textcls/SOURCES.md of the shared data folder for these files."
_HEADER = ["text", "label"]


class MalformedDataError(DataError, ValueError):
    """A corpus file exists but does not have the documented format (a :class:`~oe_common.experiments.data_dir.DataError`: a
    recipe prints its one line and exits 1)."""


@dataclass(frozen=True)
class TextClsData:
    """An in-distribution text-classification set: ``splits`` (train/validation/test) and its label names."""

    name: str
    splits: "datasets.DatasetDict"  # noqa: F821 - imported lazily
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _malformed(path: Path, data_dir: Path, what: str) -> MalformedDataError:
    return MalformedDataError(f"{path}: {what} (data directory {data_dir}; the format is described in textcls/SOURCES.md)")


def read_tsv(path: str | Path, data_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a ``text<TAB>label`` file (gzip or plain) with that header, no quoting.

    Raises:
        MalformedDataError: bad gzip / UTF-8, wrong header, a line without exactly one tab, an empty text or label.
    """
    path = Path(path)
    where = Path(data_dir) if data_dir is not None else path.parent
    opener = gzip.open if path.name.endswith(".gz") else open
    texts, labels = [], []
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            header = next(reader, None)
            if header != _HEADER:
                raise _malformed(path, where, f"the first line must be the header 'text<TAB>label', got {header!r}")
            for row in reader:
                if len(row) != 2 or not row[0] or not row[1]:
                    raise _malformed(path, where, f"line {reader.line_num}: expected 'text<TAB>label' with both non-empty, got {row!r}"[:300])
                texts.append(row[0])
                labels.append(row[1])
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _malformed(path, where, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if not texts:
        raise _malformed(path, where, "has a header but no example")
    return texts, labels


def _read_lines(path: Path, data_dir: Path) -> list[str]:
    """Non-empty lines of a text file (gzip or plain); an empty line or no line is malformed."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise _malformed(path, data_dir, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty or not lines:
        raise _malformed(path, data_dir, f"empty line(s) at {empty[:5]}" if empty else "holds no line")
    return lines


def _files(data_dir, folder: str, names: list[str], corpus: str) -> tuple[Path, list[Path]]:
    """``(data directory, paths)``: every file present (else MissingDataError) and matching ``SHA256SUMS``."""
    root = resolve_data_dir(data_dir)
    paths = require_files(root / folder, names, corpus, _HINT)
    verify_checksums(paths)
    return root, paths


def _trec_validation_mask(texts: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of train rows that go to validation: a seeded ``fraction`` of the distinct texts."""
    distinct = list(dict.fromkeys(texts))
    n_val = int(round(fraction * len(distinct)))
    chosen = set(np.asarray(distinct, dtype=object)[np.random.default_rng(seed).permutation(len(distinct))[:n_val]])
    return np.array([t in chosen for t in texts], dtype=bool)


def load_textcls(name: str, data_dir=None, *, validation_fraction: float = 0.1, seed: int = 0,
                 train_split: str = "train") -> TextClsData:
    """The in-distribution set ``name`` (one of :data:`TEXTCLS_DATASETS`); see the module docstring.

    Args:
        validation_fraction / seed: TREC only: the share of distinct train questions moved to ``validation``.
        train_split: the file the ``train`` split is read from: ``"train"`` (``train.tsv.gz``) or, for SST-2 only,
            ``"train_sentences"`` (``train_sentences.tsv.gz``: the 6,920 whole training sentences the OE paper's
            SST classifier trained on, instead of GLUE's 67,349 phrases and sentences).
    """
    import datasets

    if name not in TEXTCLS_DATASETS:
        raise ValueError(f"unknown text-classification set {name!r}; choose one of {TEXTCLS_DATASETS}")
    allowed = TRAIN_SPLITS.get(name, ("train",))
    if train_split not in allowed:
        raise ValueError(f"train_split {train_split!r} is not available for {name}; choose one of {allowed}")
    folder = _FOLDER[name]
    split_names = ["train", "test"] if folder == "trec" else ["train", "validation", "test"]
    files = [f"{train_split if s == 'train' else s}.tsv.gz" for s in split_names]
    root, paths = _files(data_dir, f"textcls/{folder}", files, f"text classification ({name})")
    rows = {s: read_tsv(p, root) for s, p in zip(split_names, paths, strict=True)}
    if name == "trec6":
        rows = {s: (t, [lab.split(":", 1)[0] for lab in labs]) for s, (t, labs) in rows.items()}
    label_names = sorted(set(rows["train"][1]))  # from the whole train file, before any validation carve-out
    if folder == "trec":
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
        texts, labels = rows["train"]
        is_val = _trec_validation_mask(texts, validation_fraction, seed)
        for split, rows_of in (("validation", np.flatnonzero(is_val)), ("train", np.flatnonzero(~is_val))):
            rows[split] = ([texts[i] for i in rows_of], [labels[i] for i in rows_of])

    index = {lab: i for i, lab in enumerate(label_names)}
    for split in ("validation", "test"):
        unknown = sorted(set(rows[split][1]) - set(index))
        if unknown:
            path = paths[split_names.index(split)] if split in split_names else paths[0]
            raise _malformed(path, root, f"{split} labels not in the train labels: {unknown[:5]}")
    splits = datasets.DatasetDict({split: labelled_dataset(rows[split][0], [index[lab] for lab in rows[split][1]], label_names, split)
                                   for split in ("train", "validation", "test")})
    return TextClsData(name=name, splits=splits, label_names=label_names)


def labelled_dataset(texts: list[str], label_ids: list[int], label_names: list[str], split: str):
    """A ``Dataset`` of ``text`` (str) and ``label`` (``ClassLabel`` of ``label_names``; ``label_ids`` are positions)."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)})
    return datasets.Dataset.from_dict({"text": texts, "label": label_ids}, features=features, split=split)


def _text_dataset(texts: list[str]):
    import datasets

    return datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))


def load_ood_texts(name: str, data_dir=None):
    """The OOD set ``name`` (one of :data:`OOD_SETS`) as a ``Dataset`` with one ``text`` column."""
    if name.startswith("clinc150_oos"):
        split = {"clinc150_oos": "test", "clinc150_oos_train": "train", "clinc150_oos_validation": "validation"}.get(name)
        if split is None:
            raise ValueError(f"unknown OOD set {name!r}; choose one of {OOD_SETS}")
        root, (path,) = _files(data_dir, "textcls/clinc150", [f"oos_{split}.tsv.gz"], "CLINC150 out-of-scope")
        texts, labels = read_tsv(path, root)
        if set(labels) != {"oos"}:
            raise _malformed(path, root, f"out-of-scope file with labels other than 'oos': {sorted(set(labels) - {'oos'})[:5]}")
        return _text_dataset(texts)
    if name == "multi30k":
        root, (path,) = _files(data_dir, "textcls/multi30k", ["test.txt.gz"], "Multi30K")
        return _text_dataset(_read_lines(path, root))
    if name.startswith("ewt_") and name[4:] in EWT_DOMAINS:
        root, (path,) = _files(data_dir, "ewt", [f"{name[4:]}.txt"], "English Web Treebank (raw sentences)")
        return _text_dataset(_read_lines(path, root))
    if name in ("clinc150", "sst2", "trec"):
        folder = _FOLDER[name]
        root, (path,) = _files(data_dir, f"textcls/{folder}", ["test.tsv.gz"], f"text classification ({name})")
        return _text_dataset(read_tsv(path, root)[0])
    raise ValueError(f"unknown OOD set {name!r}; choose one of {OOD_SETS}")


# =============================================================================================== WikiText-2 sentences
_SENTENCE_END = re.compile(r"(?<=\s[.!?])\s+")  # after a sentence-final token: the text is already tokenized


def split_wikitext_sentences(lines: list[str], min_words: int = 3, max_words: int = 60, detokenize: bool = True) -> list[str]:
    """Sentences of tokenized WikiText lines, with the OE paper's filters (its ``reformat_wikitext.py``).

    Blank lines and headings (lines starting `` =``) are skipped; a line is split after every ``.``, ``?`` or
    ``!`` token; a sentence is kept when it does not start with ``@`` or a digit and has ``min_words`` to
    ``max_words`` whitespace tokens (the paper: 3 to 60). The paper split with NLTK's punkt; splitting at
    sentence-final TOKENS is the same on this tokenized text except for rare cases (e.g. a quote closing after
    the period stays with the next sentence). ``detokenize`` glues ``@-@`` / ``@,@`` / ``@.@`` back
    (:func:`oe_text.lm.normalize.unsplit_wikitext`) so that subword tokenizers see ordinary text; ``<unk>`` tokens
    are kept, as in the paper.
    """
    out = []
    for line in lines:
        if not line.strip() or line.startswith(" ="):
            continue
        for sentence in _SENTENCE_END.split(line.strip()):
            sentence = sentence.strip()
            if not sentence or sentence[0] == "@" or sentence[0].isdigit():
                continue
            if not min_words <= len(sentence.split()) <= max_words:
                continue
            out.append(unsplit_wikitext(sentence).strip() if detokenize else sentence)
    return out


def wikitext_sentences(split: str = "train", data_dir=None, *, min_words: int = 3, max_words: int = 60, detokenize: bool = True):
    """WikiText-2 ``split`` (train/valid/test) as a ``Dataset`` of sentences (``text``): the OE source of the
    paper's text classifiers. Lines come from :mod:`oe_text.lm.data`'s WikiText reader; see :func:`split_wikitext_sentences`."""
    lines = _corpus_lines("wikitext", split, data_dir)
    return _text_dataset(split_wikitext_sentences(lines, min_words, max_words, detokenize))
