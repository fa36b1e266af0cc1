"""Corpora for the PTB language-model OE experiments (paper section 5, Table 6): PTB in-distribution,
WikiText-2 as the outlier-exposure set, the five English Web Treebank domains as test anomalies, each loaded as
one int array of vocabulary ids per split / domain from the data directory (``data_dir=`` or ``$OE_DATA_DIR``).

Main names: :func:`load_text_oe_data` (all three), :func:`ptb_vocab`, :func:`ptb_stream`, :func:`wikitext_stream`,
:func:`ewt_streams`, the EWT protocols :data:`PROTOCOLS` / :data:`DEFAULT_PROTOCOLS`,
:data:`KNOWN_SIZES` (the size checks). Streams, protocols, the Hub fallback, caching and
the data checks: docs/text.md ("Data and protocols", "Streams in detail") and docs/data.md.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from oe_common.experiments.data_dir import MissingDataError, require_files, resolve_data_dir
from oe_common.experiments.data_integrity import (
    DataIntegrityError,
    check_counts,
    checks_enabled,
    expected_sha256,
    reading,
    verify_checksums,
)

from .normalize import (
    EOS,
    UNK,
    ConlluWord,
    derive_char_string,
    normalize_ewt_clean,
    normalize_ewt_paper,
    spell_words,
    wikitext_char_lines,
)
from .controls import control_description, control_lines, rare_word_pool, word_unk_share
from .vocab import Vocabulary
from .windows import num_windows, windows_dataset

__all__ = [
    "seeded_subset_indices",
    "LEVELS",
    "PROTOCOLS",
    "CHAR_ONLY_PROTOCOLS",
    "DEFAULT_PROTOCOLS",
    "EWT_DOMAINS",
    "EWT_SPLITS",
    "DEFAULT_SEQ_LEN",
    "ConlluSentence",
    "TextOEData",
    "read_conllu",
    "ptb_vocab",
    "ptb_stream",
    "wikitext_stream",
    "ewt_sentences",
    "ewt_streams",
    "load_text_oe_data",
    "unk_fraction",
    "char_unk_share",
    "clear_cache",
    "KNOWN_SIZES",
]

logger = logging.getLogger(__name__)

LEVELS = ("word", "char")
PROTOCOLS = ("paper", "clean", "spelled")
#: Protocols that exist only at character level (``spelled`` has no vocabulary cut: a word LM cannot read it).
CHAR_ONLY_PROTOCOLS = ("spelled",)
#: The protocols a run evaluates by default, the first being the headline one. Char: ``spelled`` (what a
#: character model should read), plus ``paper`` / ``clean`` so the effect of the word cut's ``<unk>`` stays visible.
DEFAULT_PROTOCOLS = {"word": ("paper", "clean"), "char": ("spelled", "paper", "clean")}
EWT_DOMAINS = ("answers", "email", "newsgroup", "reviews", "weblog")
EWT_SPLITS = ("train", "dev", "test")
DEFAULT_SEQ_LEN = {"word": 70, "char": 150}
_SPLITS = ("train", "valid", "test")
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}

_PTB_WORD = {s: f"ptb.{s}.txt" for s in _SPLITS}
_PTB_CHAR = {"train": "ptb.char.train.txt.gz", "valid": "ptb.char.valid.txt", "test": "ptb.char.test.txt"}
_WIKI = {"train": "wiki.train.tokens.gz", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}

_PTB_HINT = (
    "These are Mikolov's simple-examples files data/ptb.{train,valid,test}.txt (see data/README.md; "
    "any file may be plain or .gz)."
)
_PTB_CHAR_HINT = (
    "These are Mikolov's ptb.char.{train,valid,test}.txt (plain or .gz). Without them the char files are "
    "derived from ptb/ptb.{train,valid,test}.txt."
)
_WIKI_HINT = "These are the tokenized WikiText-2 (wikitext-2-v1) files wiki.{train,valid,test}.tokens (plain or .gz)."
#: Sizes of the standard corpora (data/README.md), keyed by ``<folder>/<file>`` (a ``.gz`` twin has its plain name's
#: entry). Loaders compare what they read with them. ``tokens``: ``line.split()`` tokens plus one ``<eos>`` per line
#: (char files: characters); ``vocabulary``: distinct tokens incl. ``<eos>``; ``sentences``: CoNLL-U sentences.
KNOWN_SIZES: dict[str, dict[str, int]] = {
    "ptb/ptb.train.txt": {"lines": 42_068, "tokens": 929_589, "vocabulary": 10_000},
    "ptb/ptb.valid.txt": {"lines": 3_370, "tokens": 73_760},
    "ptb/ptb.test.txt": {"lines": 3_761, "tokens": 82_430},
    "ptb/ptb.char.train.txt": {"lines": 42_068, "tokens": 5_017_482, "vocabulary": 50},
    "ptb/ptb.char.valid.txt": {"lines": 3_370, "tokens": 393_042},
    "ptb/ptb.char.test.txt": {"lines": 3_761, "tokens": 442_423},
    "wikitext-2/wiki.train.tokens": {"lines": 36_718, "tokens": 2_088_628, "vocabulary": 33_278},
    "wikitext-2/wiki.valid.tokens": {"lines": 3_760, "tokens": 217_646},
    "wikitext-2/wiki.test.tokens": {"lines": 4_358, "tokens": 245_569},
    "ewt/en_ewt-ud-train.conllu": {"sentences": 12_544},
    "ewt/en_ewt-ud-dev.conllu": {"sentences": 2_001},
    "ewt/en_ewt-ud-test.conllu": {"sentences": 2_077},
}

_EWT_HINT = (
    "These are the UD English-EWT files en_ewt-ud-{train,dev,test}.conllu (plain or .gz) from "
    "https://github.com/UniversalDependencies/UD_English-EWT; there is no Hub fallback for EWT."
)


# =============================================================================================== utilities
# Keys hold file stats, vocabulary fingerprints, or the id() of another cached object (stable while cached;
# clear_cache() drops everything at once, so a reused id can never hit a stale entry).
_CACHE: dict[tuple, Any] = {}


def seeded_subset_indices(length: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``n`` of ``length`` examples (all when ``n`` is None or not
    smaller): how the text experiments cap an evaluation or outlier set."""
    if n is None or n >= length:
        return np.arange(length)
    return np.sort(np.random.default_rng(seed).choice(length, size=n, replace=False))


def clear_cache() -> None:
    """Forget every cached corpus (e.g. after changing files in place)."""
    _CACHE.clear()


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        value = build()
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        _CACHE[key] = value
    return _CACHE[key]


def _stat_key(paths: Iterable[Path]) -> tuple:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return level


def _check_split(split: str, allowed: Sequence[str] = _SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")
    return split


def _check_protocol(protocol: str, level: str | None = None) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if level == "word" and protocol in CHAR_ONLY_PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is char-level only (no vocabulary cut); word-level protocols: 'paper', 'clean'")
    return protocol


def _variant(folder: Path, name: str) -> Path | None:
    """``name`` in ``folder``, accepting the gzipped / plain twin (``x.txt`` <-> ``x.txt.gz``)."""
    candidates = [name, name[:-3]] if name.endswith(".gz") else [name, name + ".gz"]
    for cand in candidates:
        p = folder / cand
        if p.is_file():
            return p
    return None


def _locate(data_dir, sub: str, names: Sequence[str], corpus: str, hint: str) -> list[Path]:
    """The files ``names`` (or their .gz/plain twins) in ``<data_dir>/sub``, or a MissingDataError naming all missing."""
    folder = resolve_data_dir(data_dir) / sub
    found = [_variant(folder, n) for n in names]
    missing = [n for n, f in zip(names, found, strict=True) if f is None]
    if missing:
        require_files(folder, missing, corpus, hint)  # raises MissingDataError with the standard message
    paths = [f for f in found if f is not None]
    verify_checksums(paths)
    return paths


def _read_text(path: Path) -> str:
    """The whole file as text (gzip when the name ends in .gz); undecodable data is a one-line error naming it."""
    with reading(path):
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        with open(path, encoding="utf-8") as f:
            return f.read()


def _known_sizes(path: Path) -> dict[str, int] | None:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return KNOWN_SIZES.get(f"{path.parent.name}/{name}")


def _read_lines(path: Path) -> list[str]:
    """:func:`_text_lines` of ``path``, checked against :data:`KNOWN_SIZES` when it is a standard corpus file.

    A file that a ``SHA256SUMS`` lists was verified by :func:`_locate` before this read, which pins its content
    exactly; counting its tokens again would only cost time (0.6 s CPU for PTB + WikiText), so it is skipped.
    """
    lines = _text_lines(_read_text(path))
    known = _known_sizes(path)
    if known and checks_enabled() and expected_sha256(path) is None:
        tokens = "\n".join(lines).split()
        found = {"lines": len(lines), "tokens": len(tokens) + len(lines)}
        if "vocabulary" in known:
            found["vocabulary"] = len(set(tokens) | {EOS})
        check_counts(path, found, known)
    return lines


def _text_lines(text: str) -> list[str]:
    """Lines as ``for line in file`` gives them (split on ``\\n`` only); a final unterminated blank fragment
    (PTB-char's trailing ``" "``, or the empty string after the last newline) is dropped."""
    lines = text.split("\n")
    if lines and not lines[-1].strip():
        lines.pop()
    return lines


def _hub_disabled() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        value = os.environ.get(var)
        if value is not None and value.strip().lower() not in ("", "0", "false", "no", "off"):
            return True
    return False


def _hub_lines(err: MissingDataError, path: str, name: str | None, split: str, column: str) -> list[str]:
    """Rows of a Hub dataset as text lines; only called after the local files were found missing."""
    call = f"datasets.load_dataset({path!r}{'' if name is None else ', ' + repr(name)}, split={split!r})"
    if _hub_disabled():
        raise MissingDataError(f"{err} (HF_HUB_OFFLINE is set, so the Hub fallback {call} was not tried.)") from None
    try:
        import datasets

        logger.warning("%s Falling back to the Hugging Face Hub: %s", err, call)
        ds = datasets.load_dataset(path, name, split=split)
        rows = ds[column]
    except Exception as exc:  # network down, dataset moved, ...: report both problems
        raise MissingDataError(f"{err} The Hub fallback {call} failed too: {type(exc).__name__}: {exc}") from exc
    return [str(r).rstrip("\n") for r in rows]


def _encode_char_string(s: str, vocab: Vocabulary, what: str) -> np.ndarray:
    """Encode a string whose characters are char tokens and ``\\n`` is ``<eos>``."""
    try:
        raw = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        bad = sorted({c for c in s if ord(c) >= 128})[:10]
        raise ValueError(f"{what}: non-ASCII characters not in the char vocabulary: {bad}") from None
    ids = vocab.char_lookup_table()[raw]
    if ids.size and ids.min() < 0:
        bad = sorted({chr(b) for b in np.unique(raw[ids < 0])})
        raise ValueError(f"{what}: characters not in the char vocabulary: {bad}")
    return ids


def _word_ids(lines: Iterable[Sequence[str]], vocab: Vocabulary) -> np.ndarray:
    """``tokens + [eos]`` for every token list, encoded (OOV -> unk)."""
    eos = vocab.eos
    flat: list[str] = []
    for toks in lines:
        flat.extend(toks)
        flat.append(eos)
    return vocab.encode(flat)


def _text_line_ids(lines: Sequence[str], vocab: Vocabulary) -> np.ndarray:
    """``line.split() + [eos]`` for every text line, encoded (OOV -> unk) -- one C-level split of the whole text."""
    if not lines:
        return np.zeros(0, dtype=np.int64)
    sep = f" {vocab.eos}\n"
    return vocab.encode((sep.join(lines) + sep).split())


def char_unk_share(ids: np.ndarray, vocab: Vocabulary) -> float:
    """Fraction of the char tokens of ``ids`` that belong to a spelled ``<unk>`` (``5 * #"<unk>" / len(ids)``,
    ``<eos>`` counted in the denominator). PTB test: 5.4%."""
    ids = np.asarray(ids)
    marker = [vocab.stoi.get(c) for c in UNK]
    if ids.size < len(marker) or any(m is None for m in marker):
        return 0.0
    hits = (np.lib.stride_tricks.sliding_window_view(ids, len(marker)) == marker).all(axis=1)
    return float(hits.sum() * len(marker) / ids.size)


def unk_fraction(ids: np.ndarray, vocab: Vocabulary) -> float:
    """Fraction of ids in ``ids`` that are ``vocab.unk_id`` (``<eos>`` counted in the denominator)."""
    ids = np.asarray(ids)
    if vocab.unk_id is None:
        raise ValueError("this vocabulary has no unk token")
    return float((ids == vocab.unk_id).mean()) if ids.size else 0.0


# =============================================================================================== PTB
#: The line corpora: data-directory folder, file per split, corpus name, hint, and the Hub fallback's
#: ``(path, name, column)`` (tried only when a local file is missing).
_LINE_CORPORA = {
    "ptb": ("ptb", _PTB_WORD, "PTB (word level)", _PTB_HINT, ("ptb_text_only", None, "sentence")),
    "wikitext": ("wikitext-2", _WIKI, "WikiText-2", _WIKI_HINT, ("wikitext", "wikitext-2-v1", "text")),
}


def _corpus_lines(corpus: str, split: str, data_dir) -> list[str]:
    """The text lines of ``split`` of a corpus of :data:`_LINE_CORPORA` (``"ptb"`` word level or ``"wikitext"``)."""
    _check_split(split)
    folder, files, name, hint, (hub_path, hub_name, column) = _LINE_CORPORA[corpus]
    try:
        paths = _locate(data_dir, folder, [files[s] for s in _SPLITS], name, hint)
    except MissingDataError as err:
        return _cached(("hub", hub_path, hub_name, split), lambda err=err: _hub_lines(err, hub_path, hub_name, _HUB_SPLIT[split], column))
    path = paths[_SPLITS.index(split)]
    return _cached(("lines",) + _stat_key([path]), lambda: _read_lines(path))


def _ptb_char_string(split: str, data_dir) -> str:
    """PTB-char split as one string: one character per char token, ``\\n`` = ``<eos>``."""
    _check_split(split)
    try:
        paths = _locate(data_dir, "ptb", [_PTB_CHAR[s] for s in _SPLITS], "PTB (char level)", _PTB_CHAR_HINT)
    except MissingDataError as char_err:
        try:
            word_lines = _corpus_lines("ptb", split, data_dir)
        except MissingDataError as word_err:
            raise MissingDataError(f"{char_err} {word_err}") from None
        logger.info("PTB char files missing; deriving ptb.char.%s from the word lines (derive_char.py rule)", split)
        return _cached(
            ("ptb_char_derived", id(word_lines)),
            lambda: "".join(derive_char_string(line.split()) + "\n" for line in word_lines),
        )
    path = paths[_SPLITS.index(split)]

    def build() -> str:
        lines = _read_lines(path)
        # Every char token is a single character separated by whitespace, so removing the whitespace of each
        # line is `line.split()`; this runs at C speed on the 5M-character train file.
        return "".join("".join(line.split()) + "\n" for line in lines)

    return _cached(("ptb_char_string",) + _stat_key([path]), build)


def ptb_vocab(level: str = "word", data_dir=None) -> Vocabulary:
    """The PTB vocabulary of ``level`` built from the train split (ids in first-appearance order).

    Word: 10,000 tokens incl. ``<eos>`` and ``<unk>`` (``unk="<unk>"``). Char: 50 symbols incl. ``_`` and
    ``<eos>`` (``unk=None``).
    """
    _check_level(level)
    if level == "word":
        lines = _corpus_lines("ptb", "train", data_dir)

        def tokens():
            for line in lines:
                yield from line.split()
                yield EOS

        return _cached(("ptb_vocab", "word", id(lines)), lambda: Vocabulary.build(tokens(), unk=UNK, eos=EOS, level="word"))
    text = _ptb_char_string("train", data_dir)
    return _cached(
        ("ptb_vocab", "char", id(text)),
        lambda: Vocabulary.build((EOS if c == "\n" else c for c in dict.fromkeys(text)), unk=None, eos=EOS, level="char"),
    )


def ptb_stream(split: str = "train", level: str = "word", data_dir=None, vocab: Vocabulary | None = None) -> np.ndarray:
    """PTB ``split`` (train/valid/test) as an id array (int64) of the PTB vocabulary of ``level`` (or ``vocab``)."""
    _check_level(level)
    _check_split(split)
    vocab = vocab if vocab is not None else ptb_vocab(level, data_dir)
    if level == "word":
        lines = _corpus_lines("ptb", split, data_dir)
        return _cached(("ptb_stream", "word", id(lines), vocab.fingerprint), lambda: _text_line_ids(lines, vocab))
    text = _ptb_char_string(split, data_dir)
    return _cached(("ptb_stream", "char", id(text), vocab.fingerprint), lambda: _encode_char_string(text, vocab, f"PTB char {split}"))


# =============================================================================================== WikiText-2
def wikitext_stream(split: str = "train", level: str = "word", data_dir=None, vocab: Vocabulary | None = None) -> np.ndarray:
    """WikiText-2 ``split`` mapped onto the PTB vocabulary of ``level`` (rules: docs/text.md, "Data and protocols")."""
    _check_level(level)
    _check_split(split)
    vocab = vocab if vocab is not None else ptb_vocab(level, data_dir)
    lines = _corpus_lines("wikitext", split, data_dir)
    if level == "word":
        if vocab.unk is None:
            raise ValueError("word-level WikiText needs a vocabulary with an unk token")
        return _cached(("wikitext_stream", "word", id(lines), vocab.fingerprint), lambda: _text_line_ids(lines, vocab))

    def build() -> np.ndarray:
        char_lines = wikitext_char_lines(lines, vocab.symbols())
        return _encode_char_string("".join(l + "\n" for l in char_lines), vocab, f"WikiText char {split}")

    return _cached(("wikitext_stream", "char", id(lines), vocab.fingerprint), build)


# =============================================================================================== EWT
class ConlluSentence(NamedTuple):
    sent_id: str
    domain: str
    words: list[ConlluWord]


_SENT_ID_RE = re.compile(r"#\s*sent_id\s*=?\s*(\S.*?)\s*$")


def read_conllu(path: str | os.PathLike) -> Iterator[ConlluSentence]:
    """Sentences of a CoNLL-U file (plain or .gz) with their syntactic words.

    Multiword-token lines (``1-2``) and empty nodes (``8.1``) are not words; a multiword token's
    ``SpaceAfter=No`` is given to its last word (its inner words have no space after them). The domain is the
    part of ``# sent_id`` before the first ``-``; a sentence without ``# sent_id`` is an error.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    sent_id: str | None = None
    words: list[ConlluWord] = []
    no_space: set[str] = set()
    start = 0

    def flush(lineno: int) -> ConlluSentence:
        if sent_id is None:
            raise ValueError(f"{path}: the sentence at lines {start}-{lineno} has no '# sent_id' comment (it gives the domain)")
        return ConlluSentence(sent_id, sent_id.split("-", 1)[0], words)

    with opener(path, "rt", encoding="utf-8") as f:
        lineno = 0
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    yield flush(lineno)
                sent_id, words, no_space, start = None, [], set(), 0
                continue
            if not start:
                start = lineno
            if line.startswith("#"):
                m = _SENT_ID_RE.match(line)
                if m:
                    sent_id = m.group(1)
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise ValueError(f"{path}:{lineno}: a CoNLL-U word line has 10 tab-separated columns, found {len(cols)}")
            tid, misc = cols[0], cols[9]
            if "-" in tid:  # multiword token a-b: its words follow
                a, b = tid.split("-", 1)
                no_space.update(str(k) for k in range(int(a), int(b)))
                if "SpaceAfter=No" in misc.split("|"):
                    no_space.add(b)
                continue
            if "." in tid:  # empty node
                continue
            space_after = "SpaceAfter=No" not in misc.split("|") and tid not in no_space
            words.append(ConlluWord(cols[1], cols[3], cols[4], space_after))
        if words:
            yield flush(lineno)


def _ewt_files(data_dir, splits: Sequence[str]) -> list[Path]:
    for s in splits:
        _check_split(s, EWT_SPLITS)
    return _locate(data_dir, "ewt", [f"en_ewt-ud-{s}.conllu" for s in splits], "English Web Treebank (UD)", _EWT_HINT)


def _ewt_parsed(data_dir, splits: Sequence[str]) -> dict[str, list[list[ConlluWord]]]:
    files = _ewt_files(data_dir, splits)  # checked against SHA256SUMS by _locate

    def build() -> dict[str, list[list[ConlluWord]]]:
        by_domain: dict[str, list[list[ConlluWord]]] = {d: [] for d in EWT_DOMAINS}
        for path in files:
            n = 0
            with reading(path):
                try:
                    for sent in read_conllu(path):
                        by_domain.setdefault(sent.domain, []).append(sent.words)
                        n += 1
                except ValueError as exc:  # a malformed line: read_conllu's message names the file and line
                    if isinstance(exc, UnicodeDecodeError):
                        raise
                    raise DataIntegrityError(str(exc)) from None
            check_counts(path, {"sentences": n}, _known_sizes(path))
        return {d: s for d, s in by_domain.items() if s}

    return _cached(("ewt_parsed",) + _stat_key(files), build)


def ewt_sentences(
    protocol: str = "clean",
    data_dir=None,
    word_vocab: Vocabulary | None = None,
    splits: Sequence[str] = EWT_SPLITS,
    map_oov: bool = True,
) -> dict[str, list[list[str]]]:
    """Per EWT domain, the word tokens of every sentence under ``protocol`` (no ``<eos>``).

    Args:
        protocol: ``"paper"``, ``"clean"`` or ``"spelled"`` (docs/text.md, "Data and protocols"). ``"spelled"`` gives the
            ``"clean"`` words without the OOV cut (``map_oov`` is ignored): the words its char strings spell.
        data_dir: the data directory (else ``$OE_DATA_DIR``).
        word_vocab: the vocabulary for the OOV cut (default: PTB's word vocabulary from ``data_dir``).
        splits: UD splits to read, in this order (default train, dev, test).
        map_oov: replace tokens outside ``word_vocab`` with ``<unk>`` (False: the normalised words before the cut).

    Domains come in the order answers, email, newsgroup, reviews, weblog (then any other, in order of first
    appearance). Under ``"clean"`` sentences left without tokens are skipped. The result is cached: do not
    modify it in place.
    """
    _check_protocol(protocol)
    parsed = _ewt_parsed(data_dir, splits)
    norm = normalize_ewt_paper if protocol == "paper" else normalize_ewt_clean
    if protocol == "spelled":
        map_oov = False
    if map_oov:
        word_vocab = word_vocab if word_vocab is not None else ptb_vocab("word", data_dir)
        if word_vocab.unk is None:
            raise ValueError("the OOV cut needs a word vocabulary with an unk token")
    vocab_key = word_vocab.fingerprint if map_oov else None

    def build() -> dict[str, list[list[str]]]:
        out: dict[str, list[list[str]]] = {}
        stoi = word_vocab.stoi if map_oov else None
        unk = word_vocab.unk if map_oov else None
        for domain, sents in parsed.items():
            rows = []
            for words in sents:
                toks = norm(words)
                if not toks:
                    continue
                if stoi is not None:
                    toks = [t if t in stoi else unk for t in toks]
                rows.append(toks)
            out[domain] = rows
        return out

    return _cached(("ewt_sentences", protocol, id(parsed), vocab_key), build)


def ewt_streams(
    level: str = "word",
    protocol: str = "clean",
    data_dir=None,
    vocab: Vocabulary | None = None,
    word_vocab: Vocabulary | None = None,
    splits: Sequence[str] = EWT_SPLITS,
) -> dict[str, np.ndarray]:
    """Per EWT domain, the id stream of ``level`` under ``protocol`` (``<eos>`` after each sentence).

    ``vocab`` is the vocabulary of ``level`` (default PTB's); ``word_vocab`` the word vocabulary of the OOV cut
    (default PTB's; at word level it defaults to ``vocab``).
    """
    _check_level(level)
    _check_protocol(protocol, level)
    vocab = vocab if vocab is not None else ptb_vocab(level, data_dir)
    if word_vocab is None:
        word_vocab = vocab if level == "word" else ptb_vocab("word", data_dir)
    sents = ewt_sentences(protocol, data_dir, word_vocab=word_vocab, splits=splits)

    def build() -> dict[str, np.ndarray]:
        out = {}
        charset = set(vocab.symbols()) - {"_"}
        for domain, rows in sents.items():
            if level == "word":
                ids = _word_ids(rows, vocab)
            elif protocol == "spelled":
                spelled = (spell_words(words, charset) for words in rows)
                text = "".join(s + "\n" for s in spelled if s)
                ids = _encode_char_string(text, vocab, f"EWT {domain} (spelled, char)")
            else:
                kept = (_keep_chars(words, charset) for words in rows)
                text = "".join(derive_char_string(words) + "\n" for words in kept if words)
                ids = _encode_char_string(text, vocab, f"EWT {domain} ({protocol}, char)")
            ids.flags.writeable = False
            out[domain] = ids
        return out

    return _cached(("ewt_streams", level, protocol, id(sents), vocab.fingerprint), build)


def _keep_chars(words: Sequence[str], charset: set[str]) -> list[str]:
    """Drop characters outside ``charset`` (a no-op for PTB vocabulary words); words left empty disappear."""
    out = []
    for w in words:
        if not all(c in charset for c in w):
            w = "".join(c for c in w if c in charset)
        if w:
            out.append(w)
    return out


# =============================================================================================== bundle
@dataclass
class TextOEData:
    """Everything the PTB OE experiment needs at one level (returned by :func:`load_text_oe_data`).

    Every dataset has the columns ``input_ids``, ``labels`` (== input_ids, -100 on padding) and
    ``attention_mask``, rows of ``seq_len + 1`` ids (see :mod:`oe_text.lm.windows`).
    """

    level: str
    seq_len: int
    vocab: Vocabulary
    word_vocab: Vocabulary
    ptb_train: Any
    ptb_valid: Any
    ptb_test: Any
    wikitext_train: Any
    wikitext_valid: Any
    ewt: dict[str, dict[str, Any]]
    streams: dict[str, np.ndarray] = field(repr=False)
    stats: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Per protocol, PTB test rewritten to that protocol's writing of rare words (windows; :mod:`oe_text.lm.controls`).
    controls: dict[str, Any] = field(default_factory=dict, repr=False)


def load_text_oe_data(
    level: str = "word",
    data_dir=None,
    protocol: str | Sequence[str] | None = None,
    seq_len: int | None = None,
    *,
    drop_last: bool = False,
    ewt_splits: Sequence[str] = EWT_SPLITS,
) -> TextOEData:
    """Load PTB (train/valid/test), WikiText-2 (train/valid) and the EWT domains as windows at ``level``.

    Args:
        level: ``"word"`` or ``"char"``.
        data_dir: the data directory (else ``$OE_DATA_DIR``).
        protocol: the EWT protocol(s) to load: any of ``"paper"``, ``"clean"``, ``"spelled"`` (char only);
            default :data:`DEFAULT_PROTOCOLS` of ``level`` (word: paper, clean; char: spelled, paper, clean).
        seq_len: predicted tokens per window (default 70 word / 150 char).
        drop_last: drop every stream's final partial window instead of padding it.
        ewt_splits: the UD splits to read for EWT (default all three).
    """
    _check_level(level)
    if protocol is None:
        protocol = DEFAULT_PROTOCOLS[level]
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if not protocols:
        raise ValueError("give at least one EWT protocol")
    for p in protocols:
        _check_protocol(p, level)
    seq_len = DEFAULT_SEQ_LEN[level] if seq_len is None else seq_len
    word_vocab = ptb_vocab("word", data_dir)
    vocab = word_vocab if level == "word" else ptb_vocab("char", data_dir)

    streams: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        streams[f"ptb/{split}"] = ptb_stream(split, level, data_dir, vocab=vocab)
    for split in ("train", "valid"):
        streams[f"wikitext/{split}"] = wikitext_stream(split, level, data_dir, vocab=vocab)
    for p in protocols:
        for domain, ids in ewt_streams(level, p, data_dir, vocab=vocab, word_vocab=word_vocab, splits=ewt_splits).items():
            streams[f"ewt/{p}/{domain}"] = ids

    def win(key: str):
        return windows_dataset(streams[key], seq_len, pad_id=vocab.eos_id, drop_last=drop_last)

    ewt = {p: {k.split("/")[2]: win(k) for k in streams if k.startswith(f"ewt/{p}/")} for p in protocols}
    control_stats = _add_control_streams(streams, level, protocols, data_dir, vocab, word_vocab, ewt_splits)
    stats: dict[str, Any] = {
        "tokens": {k: int(v.size) for k, v in streams.items()},
        "windows": {k: num_windows(v.size, seq_len, drop_last) for k, v in streams.items()},
    }
    if level == "word":
        stats["unk_fraction"] = {k: unk_fraction(v, vocab) for k, v in streams.items()}
    else:  # the word-level OOV rate of the EWT words the char streams were spelled from (0 under "spelled")
        stats["char_unk_share"] = {k: char_unk_share(v, vocab) for k, v in streams.items()}
        stats["ewt_word_unk_fraction"] = {
            f"ewt/{p}/{d}": (sum(t == word_vocab.unk for s in rows for t in s) / max(1, sum(len(s) for s in rows)))
            for p in protocols
            for d, rows in ewt_sentences(p, data_dir, word_vocab=word_vocab, splits=ewt_splits).items()
        }
    stats["controls"] = control_stats
    return TextOEData(
        level=level,
        seq_len=seq_len,
        vocab=vocab,
        word_vocab=word_vocab,
        ptb_train=win("ptb/train"),
        ptb_valid=win("ptb/valid"),
        ptb_test=win("ptb/test"),
        wikitext_train=win("wikitext/train"),
        wikitext_valid=win("wikitext/valid"),
        ewt=ewt,
        streams=streams,
        stats=stats,
        controls={p: win(f"control/{p}") for p in protocols},
    )


def _add_control_streams(streams: dict[str, np.ndarray], level: str, protocols: Sequence[str], data_dir, vocab: Vocabulary,
                         word_vocab: Vocabulary, ewt_splits: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Add ``streams["control/<protocol>"]`` (PTB test rewritten to the protocol's share of ``<unk>`` among words,
    :func:`oe_text.lm.controls.control_lines`, seed 0) for every protocol; return what each control did."""
    test_ids = ptb_stream("test", "word", data_dir, vocab=word_vocab)
    ptb_share = float((test_ids == word_vocab.unk_id).sum() / max(1, (test_ids != word_vocab.eos_id).sum()))
    charset = set(vocab.symbols()) - {"_"}
    out = {}
    for p in protocols:
        sents = ewt_sentences(p, data_dir, word_vocab=word_vocab, splits=ewt_splits)
        target = 0.0 if p == "spelled" else word_unk_share(s for rows in sents.values() for s in rows)

        def build(p: str = p, target: float = target) -> tuple[np.ndarray, dict[str, Any]]:
            pool = []
            if target < ptb_share:
                lines_in = _corpus_lines("wikitext", "valid", data_dir)
                pool = _cached(("rare_word_pool", id(lines_in), word_vocab.fingerprint), lambda: rare_word_pool(lines_in, word_vocab))
            lines = control_lines(test_ids, ptb_stream("train", "word", data_dir, vocab=word_vocab), word_vocab, target, pool)
            if level == "word":
                ids = _word_ids(lines, vocab)
            else:
                text = "".join((spell_words(words, charset) if p == "spelled" else derive_char_string(words)) + "\n" for words in lines)
                ids = _encode_char_string(text, vocab, f"control of protocol {p} (char)")
            ids.flags.writeable = False
            return ids, {"ptb_unk_share": ptb_share, "target_unk_share": target, "reached_unk_share": word_unk_share(lines),
                         "description": control_description(p, ptb_share, target)}

        ids, stats = _cached(("control_stream", level, p, id(test_ids), id(sents), vocab.fingerprint), build)
        streams[f"control/{p}"], out[p] = ids, dict(stats)
    return out
