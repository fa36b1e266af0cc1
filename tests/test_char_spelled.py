"""The char-level EWT protocol ``spelled`` (no word-vocabulary cut) and the detector's ``spelled`` normaliser.

Hand-made lines pin the rule down; the real-data tests (skipped without ``$OE_DATA_DIR``) check the ``<unk>``
share of the converted EWT stream against PTB test's and that raw English reads like its CoNLL-U words.
"""

from __future__ import annotations

import csv
import difflib
import os
from pathlib import Path

import pytest

from oe_text.lm import data as D
from oe_text.lm.normalize import (
    ConlluWord,
    normalize_ewt_clean,
    normalize_ewt_spelled,
    spell_words,
    spelled_line,
    tokenize_english,
)
from oe_text.lm.vocab import Vocabulary

#: PTB-char's 48 word characters (ptb.char.train.txt; ``_`` is the separator), as listed in oe_text.lm.normalize.
PTB_CHARS = frozenset("#$&'*-./0123456789<>N\\abcdefghijklmnopqrstuvwxyz")


def _char_vocab() -> Vocabulary:
    return Vocabulary([*sorted(PTB_CHARS | {"_"}), "<eos>"], unk=None, level="char")


# ============================================================================================ raw lines
@pytest.mark.parametrize(
    "line, expected",
    [
        # sentence punctuation dropped, abbreviations keep their period, numbers and % are N (PTB: "N N")
        ("The U.S. economy grew 3.5% in 1999, Mr. Smith said.", "the_u.s._economy_grew_N_N_in_N_mr._smith_said"),
        # clitics split as PTB writes them; brackets, dashes and quotes are punctuation
        ('I don\'t know (really) -- it\'s "fine"!', "i_do_n't_know_really_it_'s_fine"),
        ("It\u2019s John\u2019s \u201cbest\u201d", "it_'s_john_'s_best"),  # curly apostrophes and quotes
        # accented letters are not PTB characters: dropped, as the paper drops them from WikiText-2
        ("Caf\u00e9 na\u00efve R\u00e9sum\u00e9", "caf_nave_rsum"),
        # <unk>-like strings in raw text must not look like PTB's <unk> marker; '_' is the separator
        ("<unk> and <UNK> in <<Compaq.com test_case", "unk_and_unk_in_compaq.com_testcase"),
        # $ split off numbers; '/' between words split and PTB-escaped; a number glued to a unit split
        ("food/drinks cost $5 at 4pm, 1/2 off", "food_\\/_drinks_cost_$_N_at_N_pm_N_off"),
        # PTB keeps 1950s / 20th / '80s / & / hyphenated compounds as words; '*' is escaped
        ("The 1950s, 20th-century '80s R&D state-of-the-art *", "the_1950s_20th-century_'80s_r&d_state-of-the-art_\\*"),
        # possessive plural vs quotes; runs of periods separate words
        ("the students' books 'quoted' great...the end", "the_students_'_books_quoted_great_the_end"),
        ("!!! ... -- \u2026", ""),  # punctuation only: nothing left (the detector reports it as empty)
        ("-2 degrees, .5 mile", "N_degrees_N_mile"),
    ],
)
def test_spelled_line_hand_made(line, expected):
    assert spelled_line(line, PTB_CHARS) == expected


def test_tokenize_english_marks_punctuation():
    words = tokenize_english("Hello, (world)!")
    assert [(w.form, w.upos == "PUNCT") for w in words] == [
        ("Hello", False), (",", True), ("(", True), ("world", False), (")", True), ("!", True)
    ]


def test_spell_words_drops_non_ptb_characters_markers_and_empty_words():
    assert spell_words(["caf\u00e9", "<unk>", "N", "\u00e9\u00e9", "a_b", "x"], PTB_CHARS) == "caf_unk_N_ab_x"
    # the charset decides: without digits they disappear too
    assert spell_words(["r2d2", "n"], PTB_CHARS - set("0123456789")) == "rd_n"
    assert spell_words([], PTB_CHARS) == ""


# ============================================================================================ CoNLL-U words
def _ud(*spec: tuple[str, str, bool]) -> list[ConlluWord]:
    return [ConlluWord(form, upos, "HYPH" if form == "-" else "_", space) for form, upos, space in spec]


# "The state-of-the-art café costs $5.50 (about 40%)." as UD tokenises it
UD_SENTENCE = _ud(
    ("The", "DET", True), ("state", "NOUN", False), ("-", "PUNCT", False), ("of", "ADP", False), ("-", "PUNCT", False),
    ("the", "DET", False), ("-", "PUNCT", False), ("art", "NOUN", True), ("café", "NOUN", True), ("costs", "VERB", True),
    ("$", "SYM", False), ("5.50", "NUM", True), ("(", "PUNCT", False), ("about", "ADV", True), ("40", "NUM", False),
    ("%", "SYM", False), (")", "PUNCT", False), (".", "PUNCT", True),
)


def test_normalize_ewt_spelled_is_clean_without_the_cut():
    expected = "the_state-of-the-art_caf_costs_$_N_about_N_N"
    assert normalize_ewt_spelled(UD_SENTENCE, PTB_CHARS) == expected
    # the same words as clean would give before its word cut, spelled out
    assert normalize_ewt_clean(UD_SENTENCE) == ["the", "state-of-the-art", "café", "costs", "$", "N", "about", "N", "N"]
    # and the raw sentence reads the same
    assert spelled_line("The state-of-the-art café costs $5.50 (about 40%).", PTB_CHARS) == expected


CONLLU = """# sent_id = email-0001
# text = Zyxq's café <unk> costs $5!
1-2\tZyxq's\t_\t_\t_\t_\t_\t_\t_\t_
1\tZyxq\tzyxq\tPROPN\tNNP\t_\t3\tnmod:poss\t_\t_
2\t's\t's\tPART\tPOS\t_\t1\tcase\t_\t_
3\tcafé\tcafé\tNOUN\tNN\t_\t5\tnsubj\t_\t_
4\t<unk>\t<unk>\tX\tFW\t_\t3\tdep\t_\t_
5\tcosts\tcost\tVERB\tVBZ\t_\t0\troot\t_\t_
6\t$\t$\tSYM\t$\t_\t5\tobj\t_\tSpaceAfter=No
7\t5\t5\tNUM\tCD\t_\t6\tnummod\t_\tSpaceAfter=No
8\t!\t!\tPUNCT\t.\t_\t5\tpunct\t_\t_

# sent_id = email-0002
# text = !!
1\t!!\t!!\tPUNCT\t.\t_\t0\troot\t_\t_

# sent_id = weblog-0001
# text = The cat.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

"""


@pytest.fixture()
def tiny_ewt(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OE_SKIP_DATA_CHECKS", "1")  # a 3-sentence stand-in under the real file name
    D.clear_cache()
    (tmp_path / "ewt").mkdir()
    (tmp_path / "ewt" / "en_ewt-ud-dev.conllu").write_text(CONLLU, encoding="utf-8")
    yield tmp_path
    D.clear_cache()


def test_ewt_char_streams_spelled_vs_cut_protocols(tiny_ewt):
    char_vocab = _char_vocab()
    word_vocab = Vocabulary(["the", "cat", "costs", "$", "N", "'s", "<unk>", "<eos>"], level="word")

    def decoded(protocol: str) -> dict[str, str]:
        streams = D.ewt_streams("char", protocol, tiny_ewt, vocab=char_vocab, word_vocab=word_vocab, splits=("dev",))
        return {d: "".join("|" if t == "<eos>" else t for t in char_vocab.decode(ids)) for d, ids in streams.items()}

    # no word cut: the unknown name and the accented word are spelled out, the literal <unk> loses its < >;
    # the punctuation-only sentence is skipped (no empty line, no lone <eos>)
    assert decoded("spelled") == {"email": "zyxq_'s_caf_unk_costs_$_N|", "weblog": "the_cat|"}
    # clean cuts the same words with the PTB word vocabulary: <unk> spelled out
    assert decoded("clean") == {"email": "<unk>_'s_<unk>_<unk>_costs_$_N|", "weblog": "the_cat|"}
    spelled = D.ewt_streams("char", "spelled", tiny_ewt, vocab=char_vocab, word_vocab=word_vocab, splits=("dev",))
    clean = D.ewt_streams("char", "clean", tiny_ewt, vocab=char_vocab, word_vocab=word_vocab, splits=("dev",))
    assert D.char_unk_share(spelled["email"], char_vocab) == 0.0
    assert D.char_unk_share(clean["email"], char_vocab) == pytest.approx(15 / len(clean["email"]))
    # the sentences behind 'spelled' are the clean words without the cut
    assert D.ewt_sentences("spelled", tiny_ewt, word_vocab=word_vocab, splits=("dev",))["email"] == [
        ["zyxq", "'s", "café", "<unk>", "costs", "$", "N"]
    ]
    with pytest.raises(ValueError, match="char-level only"):
        D.ewt_streams("word", "spelled", tiny_ewt, vocab=word_vocab, splits=("dev",))


def test_char_unk_share_counts_whole_markers_only():
    v = _char_vocab()
    ids = v.encode(list("<unk>_a_<un_k>") + ["<eos>"])
    assert D.char_unk_share(ids, v) == pytest.approx(5 / 15)


# ============================================================================================ defaults
def test_char_runs_default_to_spelled_first_and_keep_the_other_protocols():
    from oe_text.lm.lm_experiment import TextOEConfig, preset_config
    from oe_text.lm.recipe_cli import build_parser

    assert D.DEFAULT_PROTOCOLS["char"][0] == "spelled" and set(D.DEFAULT_PROTOCOLS["char"]) == set(D.PROTOCOLS)
    assert preset_config("char", "tiny").protocols == ("spelled", "paper", "clean")
    assert preset_config("word", "tiny").protocols == ("paper", "clean")
    assert preset_config("char", "tiny", protocols=("clean",)).protocols == ("clean",)
    with pytest.raises(ValueError, match="protocols"):
        TextOEConfig(level="word", protocols=("spelled",))
    assert build_parser("char").parse_args(["--protocols", "paper", "spelled"]).protocols == ["paper", "spelled"]
    with pytest.raises(SystemExit):
        build_parser("word").parse_args(["--protocols", "spelled"])


# ============================================================================================ detector
def test_detector_spelled_normalizer_reads_raw_english_like_the_evaluation():
    from oe_common.deployment.detector import DetectorInputError
    from oe_text.lm.preprocessing import TextPreprocessing
    from oe_text.lm.normalize import NORMALIZERS, normalize_text

    assert "spelled" in NORMALIZERS
    vocab = _char_vocab()
    line = "The state-of-the-art café costs $5.50 (about 40%)."
    assert "".join(normalize_text(line, "spelled", vocab.symbols())) == normalize_ewt_spelled(UD_SENTENCE, PTB_CHARS)
    pre = TextPreprocessing(vocab, normalizer="spelled", seq_len=150).resolved("causal-lm")
    (ids,) = pre.encode([line])
    assert vocab.decode(ids) == ["<eos>", *"the_state-of-the-art_caf_costs_$_N_about_N_N", "<eos>"]
    with pytest.raises(DetectorInputError, match="empty after the 'spelled'"):
        pre.encode(["ok", "!!! ..."])
    with pytest.raises(ValueError, match="char"):
        TextPreprocessing(Vocabulary(["a", "<unk>", "<eos>"], level="word"), normalizer="spelled")


# ============================================================================================ real data
@pytest.fixture(scope="module")
def real_data() -> Path:
    value = os.environ.get("OE_DATA_DIR")
    if not value or not (Path(value) / "ewt").is_dir() or not (Path(value) / "ptb").is_dir():
        pytest.skip("OE_DATA_DIR with ptb/ and ewt/ not available")
    return Path(value)


def test_real_spelled_ewt_unk_share_below_ptb_test(real_data):
    vocab = D.ptb_vocab("char", real_data)
    ptb_share = D.char_unk_share(D.ptb_stream("test", "char", real_data, vocab=vocab), vocab)
    assert ptb_share == pytest.approx(0.0542, abs=5e-4)  # 4,762 <unk> x 5 of 438,662 + 3,761 tokens
    spelled = D.ewt_streams("char", "spelled", real_data, vocab=vocab)
    clean = D.ewt_streams("char", "clean", real_data, vocab=vocab)
    assert list(spelled) == list(D.EWT_DOMAINS)
    for domain, ids in spelled.items():
        assert D.char_unk_share(ids, vocab) < ptb_share
        assert D.char_unk_share(clean[domain], vocab) > ptb_share  # the word cut's artifact this protocol removes
        # no word cut: at least as many characters as 'clean' (rare words are longer than '<unk>' on average)
        assert ids.size > clean[domain].size
        text = "".join("|" if i == vocab.eos_id else vocab.itos[i] for i in ids[:5000])
        assert "<" not in text and ">" not in text and not any(c.isupper() and c != "N" for c in text)


def test_real_raw_ewt_text_reads_like_its_conllu_words(real_data):
    """The detector's raw-text rule reproduces the evaluation's string for most EWT dev sentences."""
    charset = D.ptb_vocab("char", real_data).symbols()
    text = {}
    with open(real_data / "ewt" / "sentences.tsv", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        for row in rows:
            text[row[2]] = row[3]
    (dev,) = D._ewt_files(real_data, ("dev",))
    n = same = total = differing = 0
    for sent in D.read_conllu(dev):
        a, b = normalize_ewt_spelled(sent.words, charset), spelled_line(text[sent.sent_id], charset)
        same += a == b
        total += len(a)
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        differing += max(len(a), len(b)) - sum(m.size for m in matcher.get_matching_blocks())
        n += 1
    assert n == 2001
    assert same / n > 0.90, same / n  # measured 0.918 (1,837 of 2,001)
    assert differing / total < 0.01, differing / total  # measured 0.53% of characters
