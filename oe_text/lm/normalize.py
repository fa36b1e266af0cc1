"""Text normalisation rules that map WikiText-2 and the English Web Treebank onto PTB's conventions.

Details: docs/modules.md, section ``oe_text.lm.normalize``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Iterable, NamedTuple, Sequence

from .vocab import EOS, UNK

__all__ = [
    "EOS",
    "UNK",
    "NUM",
    "WORD_SEP",
    "NUMBER_RE",
    "is_number",
    "ConlluWord",
    "normalize_ewt_paper",
    "normalize_ewt_clean",
    "join_hyphenated",
    "ptb_escape",
    "derive_char_string",
    "unsplit_wikitext",
    "wikitext_char_lines",
    "wikitext_char_line",
    "normalize_ptb_line",
    "NORMALIZERS",
    "CHAR_NORMALIZERS",
    "register_normalizer",
    "normalize_text",
    "spell_words",
    "normalize_ewt_spelled",
    "tokenize_english",
    "spelled_line",
]

NUM = "N"
WORD_SEP = "_"

#: A number, PTB style: optional sign, then digit groups joined by ``. , : / -`` (or PTB's escaped ``\\/``),
#: optionally starting with a decimal point. Matches ``3``, ``3.5``, ``.5``, ``1,000``, ``-2``, ``10:30``,
#: ``1/2``, ``08/16/2000``, ``1990-91``, ``555-1234``; not ``1990s``, ``3rd``, ``30-year``, ``Q1``, ``5.``,
#: ``1,`` or anything with a letter.
NUMBER_RE = re.compile(r"[+-]?\.?[0-9]+(?:(?:[.,:/-]|\\/)[0-9]+)*")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_PTB_ESCAPES = (("/", "\\/"), ("*", "\\*"))


def is_number(token: str) -> bool:
    """True if ``token`` is a number that PTB writes as ``N`` (``%`` included; see docs/modules.md)."""
    return token == "%" or NUMBER_RE.fullmatch(token) is not None


def ptb_escape(token: str) -> str:
    """PTB's escaping: ``/`` -> ``\\/`` and ``*`` -> ``\\*`` (already escaped ones are left alone)."""
    for raw, escaped in _PTB_ESCAPES:
        if raw in token:
            token = token.replace(escaped, raw).replace(raw, escaped)
    return token


class ConlluWord(NamedTuple):
    """One syntactic word of a CoNLL-U sentence (multiword-token ranges and empty nodes are not words)."""

    form: str
    upos: str = "_"
    xpos: str = "_"
    space_after: bool = True


def normalize_ewt_paper(words: Sequence[ConlluWord]) -> list[str]:
    """Protocol ``paper``: the FORM of every syntactic word, unchanged (what the released code fed its word LM).

    No lower-casing, punctuation kept, numbers kept; OOV -> ``<unk>`` happens at encoding time.
    """
    return [w.form for w in words]


def join_hyphenated(words: Sequence[ConlluWord]) -> list[ConlluWord]:
    """Glue UD's split hyphens back onto their neighbours, as PTB writes compounds (``long - term`` -> ``long-term``).

    A word is a joining hyphen when its FORM is ``-``, its XPOS is ``HYPH`` (or its UPOS is PUNCT), there is no
    space before it (the previous word has ``SpaceAfter=No``) and none after it, and a next word exists.
    Chains (``state - of - the - art``) become one word. Spaced dashes (``a - b``) are left alone.
    """
    out: list[ConlluWord] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if (
            out
            and w.form == "-"
            and (w.xpos == "HYPH" or w.upos == "PUNCT")
            and not out[-1].space_after
            and not w.space_after
            and i + 1 < n
            and out[-1].upos != "PUNCT"
            and words[i + 1].upos != "PUNCT"
        ):
            prev, nxt = out[-1], words[i + 1]
            upos = prev.upos if prev.upos == nxt.upos else "X"
            out[-1] = ConlluWord(prev.form + "-" + nxt.form, upos, "_", nxt.space_after)
            i += 2
            continue
        out.append(w)
        i += 1
    return out


def normalize_ewt_clean(words: Sequence[ConlluWord]) -> list[str]:
    """Protocol ``clean``: the sentence normalised the way PTB itself was (before the vocabulary cut).

    In order: glue split hyphens (:func:`join_hyphenated`); drop words whose UPOS is ``PUNCT``; curly
    apostrophes ``\u2019 \u2018`` -> ``'``; lower-case; numbers (:func:`is_number`, ``%`` included) -> ``N``;
    ``/`` and ``*`` escaped as in PTB (:func:`ptb_escape`). OOV -> ``<unk>`` happens at encoding time.
    Symbols that UD tags SYM rather than PUNCT (``$ # % & + :)`` ...) are kept, as PTB keeps ``$ # &``.
    The result can be empty (a sentence made only of punctuation); loaders then skip the sentence.
    """
    out = []
    for w in join_hyphenated(words):
        if w.upos == "PUNCT":
            continue
        tok = w.form.translate(_APOSTROPHES).lower()
        if not tok or tok.isspace():
            continue
        if is_number(tok):
            out.append(NUM)
            continue
        out.append(ptb_escape(tok))
    return out


# ---------------------------------------------------------------------------------------------- characters
def derive_char_string(words: Sequence[str]) -> str:
    """PTB-char derivation of one line of (already normalised, vocabulary-mapped) words: ``_`` between words.

    ``derive_char_string(["the", "<unk>", "N"]) == "the_<unk>_N"`` -- one character per char token, the exact
    rule of ``data/ptb/derive_char.py`` (which writes the same characters separated by spaces).
    """
    return WORD_SEP.join(words)


def _char_filter_re(charset: Iterable[str]) -> re.Pattern:
    chars = sorted(set(charset) - {WORD_SEP})
    if any(len(c) != 1 for c in chars):
        raise ValueError("charset must contain single characters")
    return re.compile("[^" + "".join(re.escape(c) for c in chars) + r"\s]+")


def unsplit_wikitext(line: str) -> str:
    """Glue WikiText's ``@-@``, ``@,@``, ``@.@`` back onto their neighbours (``role @-@ playing`` -> ``role-playing``,
    ``1 @,@ 000`` -> ``1,000``, ``3 @.@ 5`` -> ``3.5``); the result has one leading and one trailing space."""
    return f" {line} ".replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")


def wikitext_char_lines(lines: Iterable[str], charset: Iterable[str], keep_empty: bool = False) -> list[str]:
    """WikiText lines -> PTB-char strings (one per kept line; each character is one char token, no eos).

    Rule (the paper's, with the released code's problems fixed):

    1. ``@-@``, ``@,@``, ``@.@`` are glued back onto their neighbours (``role @-@ playing`` -> ``role-playing``,
       ``1 @,@ 000`` -> ``1,000``, ``3 @.@ 5`` -> ``3.5``): PTB writes such compounds as one word, and the
       ``@`` is not a PTB character anyway.
    2. lower-case;
    3. drop every character that is not a PTB word character (``charset`` minus ``_``). ``_`` is dropped too,
       since it is PTB-char's word separator. Digits ARE PTB characters (``1950s``) and are kept -- the released
       code meant to turn digits into ``N`` but compared characters with ints, and the paper lists "WikiText
       digits dropped" as a problem; we keep them. So ``1 @,@ 000`` -> ``1000`` (the comma is not a PTB
       character), ``= = Section = =`` -> ``section``, ``<unk>`` stays ``< u n k >``, accented letters vanish;
    4. words left empty disappear (no ``__``); ``_`` between the remaining words;
    5. lines left empty (WikiText's blank lines, or lines of dropped characters only) are dropped
       (``keep_empty=False``, the default): PTB-char has no empty lines, and a lone ``<eos>`` carries no text.
       The word level, by contrast, keeps an ``<eos>`` for every line as the standard loader does.
    """
    drop = _char_filter_re(charset)
    out = []
    for line in lines:
        line = unsplit_wikitext(line)
        words = drop.sub("", line.lower()).split()
        if words or keep_empty:
            out.append(WORD_SEP.join(words))
    return out


def wikitext_char_line(line: str, charset: Iterable[str]) -> str:
    """:func:`wikitext_char_lines` for one line (``""`` if nothing is left)."""
    res = wikitext_char_lines([line], charset, keep_empty=True)
    return res[0]


# ---------------------------------------------------------------------------------------------- raw text lines
# Tokens the "ptb" rule drops as punctuation (PTB keeps $ # & ' % * / as words or N).
_PUNCT_CHARS = frozenset('!"(),-.:;?[]{}`\u2013\u2014\u2026\u201c\u201d\u00ab\u00bb')
_PUNCT_TOKENS = frozenset({"``", "''", "-lrb-", "-rrb-", "-lcb-", "-rcb-"})


def normalize_ptb_line(line: str) -> list[str]:
    """A raw, whitespace-tokenised English line under PTB word conventions: the EWT ``clean`` rule
    (:func:`normalize_ewt_clean`) with every token made only of punctuation (``. , ? ! : ; ( ) " -- ...``) treated
    as PUNCT and dropped. PTB's own ``N`` stays ``N`` (lower-casing would make it the word ``n``), so the rule is
    idempotent on PTB text. Punctuation glued to a word (``end.``) is not split off: tokenise first."""
    words = []
    for tok in line.split():
        punct = tok in _PUNCT_TOKENS or all(c in _PUNCT_CHARS for c in tok)
        words.append(ConlluWord("0" if tok == NUM else tok, "PUNCT" if punct else "X"))
    return normalize_ewt_clean(words)


#: Normalisers of raw text lines by name (``TextPreprocessing(normalizer=...)``): ``fn(line, charset) -> tokens``,
#: ``charset`` being the char vocabulary's symbols (None for a word vocabulary). Add one with ONE line in the block
#: below: ``register_normalizer("name", fn)``, with ``char=True`` when it produces characters.
NORMALIZERS: dict[str, Callable[[str, frozenset[str] | None], list[str]]] = {}
#: The names in :data:`NORMALIZERS` that produce characters (they need a char vocabulary and get its ``charset``).
CHAR_NORMALIZERS: set[str] = set()


def register_normalizer(name: str, fn: Callable[[str, frozenset[str] | None], list[str]], *, char: bool = False) -> None:
    """Register ``fn(line, charset) -> tokens`` as normaliser ``name`` (``char=True``: it yields characters)."""
    NORMALIZERS[name] = fn
    if char:
        CHAR_NORMALIZERS.add(name)


def normalize_text(line: str, normalizer: str, charset: Iterable[str] | None = None) -> list[str]:
    """Tokens of one raw text line under a registered normaliser (no ``<eos>``):

    * ``"whitespace"``: ``line.split()``: text already in the corpus' token format (PTB / WikiText word files,
      PTB-char files with space-separated characters, EWT ``paper`` protocol).
    * ``"ptb"``: :func:`normalize_ptb_line` (lower-case, numbers -> ``N``, punctuation tokens dropped, ``/ *`` escaped).
    * ``"ptb_char"``: ``"ptb"`` spelled out as PTB-char (:func:`derive_char_string`); characters outside
      ``charset`` are dropped.
    * ``"wikitext_char"``: the WikiText-2 character rule (:func:`wikitext_char_line`).
    """
    fn = NORMALIZERS.get(normalizer)
    if fn is None:
        raise ValueError(f"unknown normalizer {normalizer!r}; choose one of {tuple(NORMALIZERS)}")
    if normalizer in CHAR_NORMALIZERS and charset is None:
        raise ValueError(f"the {normalizer!r} normaliser needs the character set (the char vocabulary)")
    return fn(line, None if charset is None else frozenset(charset))


register_normalizer("whitespace", lambda line, charset: line.split())
register_normalizer("ptb", lambda line, charset: normalize_ptb_line(line))
register_normalizer("ptb_char", lambda line, charset: [c for c in derive_char_string(normalize_ptb_line(line)) if c in charset], char=True)
register_normalizer("wikitext_char", lambda line, charset: list(wikitext_char_line(line, charset)), char=True)
# ---------------------------------------------------------------------------------------------- spelled
#: Characters PTB-char has only inside the ``<unk>`` marker (checked: every ``<`` / ``>`` of ptb.*.txt is in
#: ``<unk>``). Text spelled without a vocabulary cut has no ``<unk>``, so they are dropped like any non-PTB
#: character: a literal ``<unk>`` or ``<<Compaq.com`` in raw text must not look like PTB's marker.
_UNK_MARKER_CHARS = frozenset("<>")


@lru_cache(maxsize=8)
def _spelled_filter(charset: frozenset) -> re.Pattern:
    return _char_filter_re(charset - _UNK_MARKER_CHARS)


def spell_words(words: Sequence[str], charset: Iterable[str]) -> str:
    """PTB-char string of normalised words WITHOUT a vocabulary cut (the ``spelled`` rule's last step).

    Every character outside ``charset`` (PTB-char's symbols; ``_`` is the separator, never a word character)
    is dropped, and so are ``<`` and ``>`` (PTB-char has them only in ``<unk>``); words left empty disappear;
    ``_`` between the rest (:func:`derive_char_string`). ``spell_words(["caf\u00e9", "<unk>", "N"], ptb) ==
    "caf_unk_N"``.
    """
    drop = _spelled_filter(frozenset(charset))
    return derive_char_string(drop.sub("", " ".join(words)).split())


def normalize_ewt_spelled(words: Sequence[ConlluWord], charset: Iterable[str]) -> str:
    """Protocol ``spelled`` (char level): :func:`normalize_ewt_clean` (hyphens glued, PUNCT dropped, curly
    apostrophes straightened, lower-case, numbers -> ``N``, ``/ *`` escaped), no vocabulary cut, then
    :func:`spell_words`. The paper's rule for its char-level WikiText-2 ("converting words to lowercase, and
    leaving out characters that do not appear in PTB") on PTB-tokenised words. May return ``""``.
    """
    return spell_words(normalize_ewt_clean(words), charset)


# Raw-text tokeniser for the detector's ``spelled`` normaliser: splits what UD (and PTB) split so that a raw
# sentence reads like its CoNLL-U words (tests/test_char_spelled.py measures the agreement on EWT's raw text).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr inc corp co ltd vs etc jan feb mar apr jun jul aug sep sept oct nov dec no capt".split()
)
_INITIALISM_RE = re.compile(r"(?i)^(?:[a-z]\.)+[a-z]$")  # u.s, e.g, a.m (the final period is the one tested)
_CLITICS = frozenset({"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"})
_CLITIC_RE = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_NUMBER_UNIT_RE = re.compile(r"^([0-9]+(?:[.,][0-9]+)*)([A-Za-z]+)$")  # 375mm, 650k, 4pm -- not 1950s, 20th
_ORDINAL_SUFFIXES = frozenset({"s", "st", "nd", "rd", "th"})
_RUN_PUNCT_RE = re.compile("(\\.{2,}|--+|\u2026)")  # "great...the" -> "great ... the"


def _keeps_period(core: str) -> bool:
    """``core + "."`` is an abbreviation that keeps its period (``u.s.``, ``mr.``, an initial ``j.``)."""
    return bool(_INITIALISM_RE.match(core)) or (len(core) == 1 and core.isalpha()) or core.lower() in _ABBREVIATIONS


def _is_punct(token: str) -> bool:
    return all(c in _PUNCT_CHARS for c in token)


def _split_core(tok: str) -> list[ConlluWord]:
    """Words of a token whose edge punctuation is already split off: ``/`` between words, number + unit, clitics."""
    if "/" in tok and "://" not in tok and not is_number(tok) and re.search(r"[A-Za-z]", tok):
        parts = [p for p in re.split(r"(/)", tok) if p]
        if len(parts) > 1:  # food/drinks -> food / drinks, as UD (PTB-escaped to \/ later)
            return [w for p in parts for w in ([ConlluWord(p, "SYM")] if p == "/" else _split_core(p))]
    m = _NUMBER_UNIT_RE.match(tok)
    if m and m.group(2).lower() not in _ORDINAL_SUFFIXES:
        return [ConlluWord(m.group(1), "NUM"), ConlluWord(m.group(2), "X")]
    m = _CLITIC_RE.match(tok)
    if m and any(ch.isalpha() for ch in m.group(1)):
        return [ConlluWord(m.group(1), "X"), ConlluWord(m.group(2), "PART")]
    return [ConlluWord(tok, "PUNCT" if _is_punct(tok) else "X")]


def tokenize_english(line: str) -> list[ConlluWord]:
    """PTB/UD-style words of one raw English line, punctuation tokens marked ``upos="PUNCT"``.

    Runs of periods, ``--`` and ``\u2026`` separate words (``great...the``). Per whitespace token: curly
    apostrophes -> ``'``; a lone ``'`` is a quote; punctuation (``. , ; : ! ? - ( ) [ ] { } " `` ``...``,
    dashes, curly quotes) split off both ends, except a sign or decimal point before a digit (``-2``, ``.5``) and
    the period of an abbreviation (``U.S.``, ``Mr.``, ``J.``); a leading ``'`` is a quote unless a digit
    follows (``'80s`` stays); ``$``/``#`` split off a number (``$5`` -> ``$ 5``), ``%`` too (``40%`` -> ``40 %``);
    a trailing ``'`` after ``s`` is the possessive (a word), otherwise a quote; ``/`` between words split
    (``food/drinks``; not URLs or numbers like ``1/2``); a number glued to a unit split (``375mm`` -> ``375 mm``,
    but ``1950s``, ``20th`` stay, as in PTB); clitics split as PTB does (``don't`` -> ``do n't``, ``it's`` -> ``it
    's``). Hyphenated words stay whole (UD splits them, :func:`join_hyphenated` glues them back). Tokens made
    only of punctuation are PUNCT.
    """
    out: list[ConlluWord] = []
    for tok in _RUN_PUNCT_RE.sub(r" \1 ", line.translate(_APOSTROPHES)).split():
        if _is_punct(tok) or tok == "'":
            out.append(ConlluWord(tok, "PUNCT"))
            continue
        head: list[ConlluWord] = []
        while len(tok) > 1:
            c, nxt = tok[0], tok[1]
            if (c in _PUNCT_CHARS and not (c in "-." and nxt.isdigit())) or (c == "'" and not nxt.isdigit() and tok.lower() not in _CLITICS):
                head.append(ConlluWord(c, "PUNCT"))
            elif c in "$#" and (nxt.isdigit() or nxt == "."):
                head.append(ConlluWord(c, "SYM"))
            else:
                break
            tok = tok[1:]
        tail: list[ConlluWord] = []
        while len(tok) > 1:
            c = tok[-1]
            if c == "." and _keeps_period(tok[:-1]):
                break
            if c in _PUNCT_CHARS:
                tail.insert(0, ConlluWord(c, "PUNCT"))
            elif c == "%" and tok[-2].isdigit():
                tail.insert(0, ConlluWord(c, "SYM"))
            elif c == "'":
                tail.insert(0, ConlluWord(c, "PART" if tok[-2] in "sS" else "PUNCT"))
            else:
                break
            tok = tok[:-1]
        out.extend(head)
        out.extend(_split_core(tok))
        out.extend(tail)
    return out


def spelled_line(line: str, charset: Iterable[str]) -> str:
    """The ``spelled`` rule on raw English: :func:`normalize_ewt_spelled` of :func:`tokenize_english` (may be ``""``)."""
    return normalize_ewt_spelled(tokenize_english(line), charset)


register_normalizer("spelled", lambda line, charset: list(spelled_line(line, charset)), char=True)
