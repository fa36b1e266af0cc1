"""Text corpora for the PTB OE experiments: vocabulary, normalisation rules, EWT protocols, windows, loaders.

Hand-written fixtures (tiny PTB / WikiText / CoNLL-U files in tmp_path) pin every rule down exactly; a few
checks then run on the real corpora in $OE_DATA_DIR.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from oe_common.experiments.data_dir import MissingDataError
from oe_text.lm import data as D
from oe_text.lm.normalize import (
    ConlluWord,
    derive_char_string,
    is_number,
    join_hyphenated,
    normalize_ewt_clean,
    normalize_ewt_paper,
    ptb_escape,
    wikitext_char_line,
    wikitext_char_lines,
)
from oe_text.lm.vocab import Vocabulary
from oe_text.lm.windows import make_windows, num_windows, windows_dataset


def windows_to_stream(windows) -> np.ndarray:
    """Inverse of make_windows: the real (unmasked) ids of all windows (a dict of arrays or a Dataset), in order."""
    rows = windows if isinstance(windows, dict) else windows.with_format("numpy")[:]
    input_ids, mask = np.asarray(rows["input_ids"]), np.asarray(rows["attention_mask"])
    return input_ids[mask.astype(bool)].astype(np.int64) if input_ids.size else np.zeros(0, dtype=np.int64)

# ============================================================================================ fixtures
PTB_TRAIN = [
    " the cat sat on the mat ",
    " the dog ate N fish ",
    " a <unk> is here ",
    " mr. smith 's snack-food cost $ N in the 1950s ",
    " do n't buy data and\\/or 2-for-1 30-year 46-year-old 78s ",
    " the quick brown fox jumps over the lazy dog ",
]
PTB_VALID = [" the zebra sat ", " a dog "]
PTB_TEST = [" the cat is here ", " N fish "]


def derive_char_file(lines: list[str]) -> str:
    """Mikolov's PTB-char format (data/ptb/derive_char.py): no leading space on line 1, file ends with '\\n '."""
    s = "".join(" " + " _ ".join(" ".join(w) for w in line.split()) + " \n" for line in lines)
    return s[1:] + " "


WIKI_TRAIN = [
    " ",
    " = Big Title = ",
    " ",
    " The cat sat on the mat @-@ like 1 @,@ 000 times , in 3 @.@ 5 seconds . ",
    " Café a_b <unk> ! ",
    " 1990 ",
]
WIKI_VALID = [" the dog ", " "]

CONLLU_TRAIN = """\
# newdoc id = answers-0001
# sent_id = answers-0001-0001
# text = The Cat don't sat on 3.5 mats, $1,000 total.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tCat\tcat\tNOUN\tNN\t_\t5\tnsubj\t_\t_
3-4\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
3\tdo\tdo\tAUX\tVBP\t_\t5\taux\t_\t_
4\tn't\tnot\tPART\tRB\t_\t5\tadvmod\t_\t_
5\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\t_
5.1\tsat\tsit\tVERB\tVBD\t_\t_\t_\t5:conj\tCopyOf=5
6\ton\ton\tADP\tIN\t_\t8\tcase\t_\t_
7\t3.5\t3.5\tNUM\tCD\t_\t8\tnummod\t_\t_
8\tmats\tmat\tNOUN\tNNS\t_\t5\tobl\t_\tSpaceAfter=No
9\t,\t,\tPUNCT\t,\t_\t5\tpunct\t_\t_
10\t$\t$\tSYM\t$\t_\t11\tcompound\t_\tSpaceAfter=No
11\t1,000\t1,000\tNUM\tCD\t_\t5\tobj\t_\t_
12\ttotal\ttotal\tADJ\tJJ\t_\t5\tadvmod\t_\tSpaceAfter=No
13\t.\t.\tPUNCT\t.\t_\t5\tpunct\t_\t_

"""

CONLLU_DEV = """\
# sent_id = email-0002-0001
# text = Mr. Smith’s snack-food costs 5% and/or more.
1\tMr.\tMr.\tPROPN\tNNP\t_\t2\tcompound\t_\t_
2\tSmith\tSmith\tPROPN\tNNP\t_\t7\tnsubj\t_\tSpaceAfter=No
3\t’s\t's\tPART\tPOS\t_\t2\tcase\t_\t_
4\tsnack\tsnack\tNOUN\tNN\t_\t6\tcompound\t_\tSpaceAfter=No
5\t-\t-\tPUNCT\tHYPH\t_\t6\tpunct\t_\tSpaceAfter=No
6\tfood\tfood\tNOUN\tNN\t_\t7\tnsubj\t_\t_
7\tcosts\tcost\tVERB\tVBZ\t_\t0\troot\t_\t_
8\t5\t5\tNUM\tCD\t_\t9\tnummod\t_\tSpaceAfter=No
9\t%\t%\tSYM\tNN\t_\t7\tobj\t_\t_
10\tand/or\tand/or\tCCONJ\tCC\t_\t11\tcc\t_\t_
11\tmore\tmore\tADJ\tJJR\t_\t7\tadvmod\t_\tSpaceAfter=No
12\t.\t.\tPUNCT\t.\t_\t7\tpunct\t_\t_

# sent_id = email-0002-0002
# text = !!
1\t!!\t!!\tPUNCT\t.\t_\t0\troot\t_\t_

"""

# last sentence without a trailing blank line (end of file)
CONLLU_TEST = """\
# sent_id = weblog-0003-0001
# text = State-of-the-art 1990-91 data - fine
1\tState\tstate\tNOUN\tNN\t_\t7\tcompound\t_\tSpaceAfter=No
2\t-\t-\tPUNCT\tHYPH\t_\t1\tpunct\t_\tSpaceAfter=No
3\tof\tof\tADP\tIN\t_\t1\tcase\t_\tSpaceAfter=No
4\t-\t-\tPUNCT\tHYPH\t_\t1\tpunct\t_\tSpaceAfter=No
5\tthe\tthe\tDET\tDT\t_\t1\tdet\t_\tSpaceAfter=No
6\t-\t-\tPUNCT\tHYPH\t_\t1\tpunct\t_\tSpaceAfter=No
7\tart\tart\tNOUN\tNN\t_\t0\troot\t_\t_
8\t1990\t1990\tNUM\tCD\t_\t7\tnmod\t_\tSpaceAfter=No
9\t-\t-\tPUNCT\tHYPH\t_\t10\tpunct\t_\tSpaceAfter=No
10\t91\t91\tNUM\tCD\t_\t8\tnmod\t_\t_
11\tdata\tdatum\tNOUN\tNNS\t_\t7\tdep\t_\t_
12\t-\t-\tPUNCT\t:\t_\t7\tpunct\t_\t_
13\tfine\tfine\tADJ\tJJ\t_\t7\tamod\t_\t_
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _lines(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


@pytest.fixture()
def tiny(tmp_path, monkeypatch) -> Path:
    """A complete tiny data directory (some files gzipped, as in the real one)."""
    D.clear_cache()
    monkeypatch.setenv("OE_SKIP_DATA_CHECKS", "1")  # standard file names, not the standard corpus sizes
    root = tmp_path / "data"
    for split, lines in (("train", PTB_TRAIN), ("valid", PTB_VALID), ("test", PTB_TEST)):
        _write(root / "ptb" / f"ptb.{split}.txt", _lines(lines))
    _write(root / "ptb" / "ptb.char.train.txt.gz", derive_char_file(PTB_TRAIN))
    _write(root / "ptb" / "ptb.char.valid.txt", derive_char_file(PTB_VALID))
    _write(root / "ptb" / "ptb.char.test.txt", derive_char_file(PTB_TEST))
    _write(root / "wikitext-2" / "wiki.train.tokens.gz", _lines(WIKI_TRAIN))
    _write(root / "wikitext-2" / "wiki.valid.tokens", _lines(WIKI_VALID))
    _write(root / "wikitext-2" / "wiki.test.tokens", _lines(WIKI_VALID))
    _write(root / "ewt" / "en_ewt-ud-train.conllu", CONLLU_TRAIN)
    _write(root / "ewt" / "en_ewt-ud-dev.conllu.gz", CONLLU_DEV)
    _write(root / "ewt" / "en_ewt-ud-test.conllu", CONLLU_TEST)
    yield root
    D.clear_cache()


def toks(vocab: Vocabulary, ids) -> list[str]:
    return vocab.decode(ids)


def chars(vocab: Vocabulary, ids) -> str:
    """A char stream as a readable string: '|' for <eos>."""
    return "".join("|" if t == "<eos>" else t for t in vocab.decode(ids))


# ============================================================================================ Vocabulary
def test_vocabulary_first_appearance_order_encode_decode_and_json(tmp_path):
    v = Vocabulary.build("b a b <eos> c <unk>".split())
    assert v.itos == ["b", "a", "<eos>", "c", "<unk>"] and len(v) == 5
    assert (v.eos, v.eos_id, v.unk, v.unk_id) == ("<eos>", 2, "<unk>", 4)
    ids = v.encode(["a", "zzz", "c", "<eos>"])
    assert ids.dtype == np.int64 and ids.tolist() == [1, 4, 3, 2]
    assert v.decode(ids) == ["a", "<unk>", "c", "<eos>"]
    assert v.decode([1, -100, 3]) == ["a", "c"]  # label padding is skipped
    with pytest.raises(KeyError, match="zzz"):
        v.encode(["zzz"], oov="error")
    path = v.save(tmp_path / "vocab.json")
    assert json.loads(path.read_text())["tokens"] == v.itos
    w = Vocabulary.load(path)
    assert w == v and w.fingerprint == v.fingerprint and w.level == "word"
    # unk/eos are appended when the stream never had them
    assert Vocabulary.build(["x"]).itos == ["x", "<eos>", "<unk>"]


def test_vocabulary_without_unk_and_invalid_input():
    v = Vocabulary.build(list("ab_a") + ["<eos>"], unk=None, level="char")
    assert v.unk is None and v.unk_id is None and len(v) == 4
    with pytest.raises(KeyError):
        v.encode(["z"])
    with pytest.raises(KeyError):
        v.token_to_id("z")
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "a", "<eos>"])
    with pytest.raises(ValueError, match="eos"):
        Vocabulary(["a", "<unk>"])
    with pytest.raises(ValueError, match="unk"):
        Vocabulary(["a", "<eos>"])
    with pytest.raises(IndexError):
        v.decode([99])


# ============================================================================================ normalisation rules
@pytest.mark.parametrize(
    "token", ["3", "42", "3.5", ".5", "1,000", "1,000,000", "-2", "+7", "10:30", "1/2", "1\\/2", "08/16/2000", "1990-91", "555-1234", "%"]
)
def test_is_number_positive(token):
    assert is_number(token)


@pytest.mark.parametrize(
    "token", ["1990s", "'80s", "3rd", "20th", "30-year", "2-for-1", "Q1", "AS400", "5.", "1,", "-", ".", "N", "one", "x3-9890", "3.5m", ""]
)
def test_is_number_negative(token):
    assert not is_number(token)


def test_ptb_escape():
    assert ptb_escape("and/or") == "and\\/or"
    assert ptb_escape("and\\/or") == "and\\/or"  # never double-escaped
    assert ptb_escape("**") == "\\*\\*"
    assert ptb_escape("cat") == "cat"


def W(form, upos="NOUN", xpos="NN", space_after=True):
    return ConlluWord(form, upos, xpos, space_after)


def test_join_hyphenated_glued_chains_only():
    words = [W("long", space_after=False), W("-", "PUNCT", "HYPH", False), W("term"), W("a"), W("-", "PUNCT", ":"), W("b")]
    assert [w.form for w in join_hyphenated(words)] == ["long-term", "a", "-", "b"]
    chain = [W("state", space_after=False), W("-", "PUNCT", "HYPH", False), W("of", space_after=False),
             W("-", "PUNCT", "HYPH", False), W("art")]
    assert [w.form for w in join_hyphenated(chain)] == ["state-of-art"]
    # a hyphen at the end of the sentence is not glued to anything
    assert [w.form for w in join_hyphenated([W("x", space_after=False), W("-", "PUNCT", "HYPH", False)])] == ["x", "-"]


def test_normalize_ewt_clean_rules():
    words = [
        W("The", "DET", "DT"), W("U.S.", "PROPN", "NNP"), W("’s", "PART", "POS"), W(",", "PUNCT", ","),
        W("3,000", "NUM", "CD"), W("%", "SYM", "NN"), W("1990s", "NUM", "CD"), W("and/or", "CCONJ", "CC"),
        W("$", "SYM", "$"), W(":)", "SYM", "NFP"), W("!!", "PUNCT", "."), W("Two", "NUM", "CD"),
    ]
    assert normalize_ewt_clean(words) == ["the", "u.s.", "'s", "N", "N", "1990s", "and\\/or", "$", ":)", "two"]
    assert normalize_ewt_clean([W("?", "PUNCT", ".")]) == []
    assert normalize_ewt_paper(words) == [w.form for w in words]  # paper protocol: FORMs untouched


def test_derive_char_string_is_ptb_rule():
    assert derive_char_string(["a", "<unk>", "N"]) == "a_<unk>_N"
    # exactly derive_char.py: split the derived file per line and compare
    derived = derive_char_file([" a <unk> N ", " bc "])
    per_line = [line.split() + ["<eos>"] for line in derived.split("\n") if line.strip()]
    assert per_line == [[*derive_char_string(["a", "<unk>", "N"]), "<eos>"], [*derive_char_string(["bc"]), "<eos>"]]


def test_wikitext_char_rules():
    charset = set("abcdefghijklmnopqrstuvwxyz0123456789<>N.'-$\\/&#*") | {"_"}
    assert wikitext_char_line(" The cat sat on the mat @-@ like 1 @,@ 000 times , in 3 @.@ 5 seconds . ", charset) == (
        "the_cat_sat_on_the_mat-like_1000_times_in_3.5_seconds_."
    )
    assert wikitext_char_line(" = = Early Life = = ", charset) == "early_life"
    assert wikitext_char_line(" Café a_b <unk> ! ", charset) == "caf_ab_<unk>"  # é, _ and ! dropped
    assert wikitext_char_line(" ", charset) == ""
    # blank lines (and lines emptied by the filter) are dropped unless keep_empty
    assert wikitext_char_lines([" ", " a ", " ! ", " B "], charset) == ["a", "b"]
    assert wikitext_char_lines([" ", " a "], charset, keep_empty=True) == ["", "a"]


# ============================================================================================ loaders on the tiny corpus
def test_ptb_word_tiny(tiny):
    v = D.ptb_vocab("word", tiny)
    assert v.itos[:8] == ["the", "cat", "sat", "on", "mat", "<eos>", "dog", "ate"]
    assert v.unk == "<unk>" and "<unk>" in v and v.level == "word"
    assert toks(v, D.ptb_stream("valid", "word", tiny)) == ["the", "<unk>", "sat", "<eos>", "a", "dog", "<eos>"]
    assert toks(v, D.ptb_stream("test", "word", tiny)) == "the cat is here <eos> N fish <eos>".split()
    train = D.ptb_stream("train", "word", tiny)
    assert train.size == sum(len(line.split()) + 1 for line in PTB_TRAIN)
    assert not train.flags.writeable  # cached arrays are read-only


def test_ptb_char_tiny_reads_files_and_matches_derivation(tiny, tmp_path):
    cv = D.ptb_vocab("char", tiny)
    assert cv.unk is None and cv.level == "char" and cv.itos[:4] == ["t", "h", "e", "_"]
    symbols = set("".join(PTB_TRAIN).replace(" ", "")) | {"_", "<eos>"}
    assert set(cv.itos) == symbols and len(cv) == len(symbols)
    assert chars(cv, D.ptb_stream("valid", "char", tiny)) == "the_zebra_sat|a_dog|"
    # without char files, the loader derives them from the word files: same vocabulary and streams
    for name in ("ptb.char.train.txt.gz", "ptb.char.valid.txt", "ptb.char.test.txt"):
        (tiny / "ptb" / name).unlink()
    D.clear_cache()
    assert D.ptb_vocab("char", tiny) == cv
    assert chars(cv, D.ptb_stream("valid", "char", tiny)) == "the_zebra_sat|a_dog|"


def test_wikitext_word_tiny_ptb_vocab_no_lowercasing(tiny):
    v = D.ptb_vocab("word", tiny)
    got = toks(v, D.wikitext_stream("train", "word", tiny))
    expected = (
        ["<eos>"]
        + ["<unk>"] * 4 + ["<eos>"]
        + ["<eos>"]
        # The @-@ like 1 @,@ 000 times , | in | 3 @.@ 5 seconds .
        + "<unk> cat sat on the mat <unk> <unk> <unk> <unk> <unk> <unk> <unk> in <unk> <unk> <unk> <unk> <unk> <eos>".split()
        + "<unk> <unk> <unk> <unk> <eos>".split()
        + ["<unk>", "<eos>"]
    )
    assert got == expected
    ids = D.wikitext_stream("train", "word", tiny)
    assert D.unk_fraction(ids, v) == pytest.approx(expected.count("<unk>") / len(expected))


def test_wikitext_char_tiny(tiny):
    cv = D.ptb_vocab("char", tiny)
    assert chars(cv, D.wikitext_stream("train", "char", tiny)) == (
        "big_title|the_cat_sat_on_the_mat-like_1000_times_in_3.5_seconds_.|caf_ab_<unk>|1990|"
    )
    assert chars(cv, D.wikitext_stream("valid", "char", tiny)) == "the_dog|"


def test_read_conllu_words_multiword_empty_nodes(tiny):
    sents = list(D.read_conllu(tiny / "ewt" / "en_ewt-ud-train.conllu"))
    assert len(sents) == 1 and sents[0].sent_id == "answers-0001-0001" and sents[0].domain == "answers"
    forms = [w.form for w in sents[0].words]
    assert forms == ["The", "Cat", "do", "n't", "sat", "on", "3.5", "mats", ",", "$", "1,000", "total", "."]
    assert "don't" not in forms and forms.count("sat") == 1  # range line and empty node 5.1 skipped
    do, nt = sents[0].words[2], sents[0].words[3]
    assert not do.space_after and nt.space_after  # inside the multiword token / after it
    gz = list(D.read_conllu(tiny / "ewt" / "en_ewt-ud-dev.conllu.gz"))
    assert [s.sent_id for s in gz] == ["email-0002-0001", "email-0002-0002"]
    assert [s.domain for s in D.read_conllu(tiny / "ewt" / "en_ewt-ud-test.conllu")] == ["weblog"]  # no final blank line


def test_read_conllu_rejects_missing_sent_id_and_bad_lines(tmp_path):
    p = tmp_path / "x.conllu"
    p.write_text("1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sent_id"):
        list(D.read_conllu(p))
    p.write_text("# sent_id = a-1\n1\ta\tb\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="10 tab-separated"):
        list(D.read_conllu(p))


def test_ewt_paper_protocol_tiny(tiny):
    s = D.ewt_sentences("paper", tiny)
    assert list(s) == ["answers", "email", "weblog"]  # canonical domain order, only domains present
    assert s["answers"] == [
        ["<unk>", "<unk>", "do", "n't", "sat", "on", "<unk>", "<unk>", "<unk>", "$", "<unk>", "<unk>", "<unk>"]
    ]
    assert len(s["email"]) == 2 and s["email"][1] == ["<unk>"]  # the "!!" sentence is kept under paper
    raw = D.ewt_sentences("paper", tiny, map_oov=False)
    assert raw["email"][0][:3] == ["Mr.", "Smith", "’s"]  # no lower-casing, no folding
    v = D.ptb_vocab("word", tiny)
    stream = D.ewt_streams("word", "paper", tiny)
    assert toks(v, stream["answers"]) == s["answers"][0] + ["<eos>"]
    assert toks(v, stream["email"]).count("<eos>") == 2


def test_ewt_clean_protocol_tiny(tiny):
    s = D.ewt_sentences("clean", tiny)
    assert s["answers"] == [["the", "cat", "do", "n't", "sat", "on", "N", "<unk>", "$", "N", "<unk>"]]
    # Mr. -> mr.; ’s -> 's; snack - food glued; 5 % -> N N; and/or -> and\/or (in vocab); "!!" sentence dropped
    assert s["email"] == [["mr.", "smith", "'s", "snack-food", "<unk>", "N", "N", "and\\/or", "<unk>"]]
    # chain hyphens glued (OOV), 1990 - 91 glued then a number, spaced dash removed as PUNCT
    assert s["weblog"] == [["<unk>", "N", "data", "<unk>"]]
    raw = D.ewt_sentences("clean", tiny, map_oov=False)
    assert raw["weblog"] == [["state-of-the-art", "N", "data", "fine"]]
    assert raw["email"][0][4] == "costs"


def test_ewt_char_both_protocols_tiny(tiny):
    cv = D.ptb_vocab("char", tiny)
    clean = D.ewt_streams("char", "clean", tiny)
    assert chars(cv, clean["answers"]) == "the_cat_do_n't_sat_on_N_<unk>_$_N_<unk>|"
    assert chars(cv, clean["email"]) == "mr._smith_'s_snack-food_<unk>_N_N_and\\/or_<unk>|"
    assert chars(cv, clean["weblog"]) == "<unk>_N_data_<unk>|"
    paper = D.ewt_streams("char", "paper", tiny)
    assert chars(cv, paper["answers"]) == "<unk>_<unk>_do_n't_sat_on_<unk>_<unk>_<unk>_$_<unk>_<unk>_<unk>|"
    assert chars(cv, paper["email"]).endswith("|<unk>|")
    # NOT the released code's bug: in-vocabulary words are spelled out, not collapsed into < u n k >
    assert "sat" in chars(cv, paper["answers"])


def test_ewt_splits_selection_and_order(tiny):
    only_dev = D.ewt_sentences("paper", tiny, splits=("dev",))
    assert list(only_dev) == ["email"]
    assert D.ewt_sentences("paper", tiny, splits=D.EWT_SPLITS) == D.ewt_sentences("paper", tiny)
    with pytest.raises(ValueError):
        D.ewt_sentences("paper", tiny, splits=("validation",))
    with pytest.raises(ValueError, match="protocol"):
        D.ewt_sentences("released", tiny)


def test_load_text_oe_data_tiny_both_levels(tiny):
    for level, seq_len in (("word", 3), ("char", 8)):
        d = D.load_text_oe_data(level, tiny, seq_len=seq_len)
        assert d.level == level and d.seq_len == seq_len and d.vocab.level == level
        assert tuple(d.ewt) == D.DEFAULT_PROTOCOLS[level] and list(d.ewt["clean"]) == ["answers", "email", "weblog"]
        for ds in [d.ptb_train, d.ptb_valid, d.ptb_test, d.wikitext_train, d.wikitext_valid, *d.ewt["paper"].values()]:
            assert ds.column_names == ["input_ids", "labels", "attention_mask"]
            assert len(ds[0]["input_ids"]) == seq_len + 1
        np.testing.assert_array_equal(windows_to_stream(d.ptb_test), d.streams["ptb/test"])
        np.testing.assert_array_equal(windows_to_stream(d.ewt["clean"]["email"]), d.streams["ewt/clean/email"])
        assert d.stats["windows"]["ptb/test"] == len(d.ptb_test)
    only = D.load_text_oe_data("word", tiny, protocol="paper", seq_len=3)
    assert list(only.ewt) == ["paper"]


# ============================================================================================ windows
def test_windows_partition_the_stream_without_overlap():
    ids = np.arange(23)
    w = make_windows(ids, seq_len=4)  # width 5: 4 full windows + a padded one with 3 real ids
    assert w["input_ids"].shape == (5, 5) and num_windows(23, 4) == 5
    np.testing.assert_array_equal(windows_to_stream(w), ids)  # concatenation == stream, each id once
    real = w["input_ids"][w["attention_mask"] == 1]
    assert len(set(real.tolist())) == real.size == ids.size  # no id in two windows
    np.testing.assert_array_equal(w["input_ids"][1], [5, 6, 7, 8, 9])  # window k = ids[k*5:(k+1)*5]
    # labels == input_ids (HF shifts internally) except -100 on padding; seq_len predictions per full window
    assert (w["labels"][:4] == w["input_ids"][:4]).all()
    np.testing.assert_array_equal(w["labels"][4], [20, 21, 22, -100, -100])
    np.testing.assert_array_equal(w["attention_mask"][4], [1, 1, 1, 0, 0])
    predicted = (w["labels"][:, 1:] != -100).sum(1)
    np.testing.assert_array_equal(predicted, [4, 4, 4, 4, 2])
    assert predicted.sum() == ids.size - len(predicted)  # only each window's first token is unpredicted


def test_windows_no_state_or_context_shared_between_windows():
    ids = np.arange(100, 140)
    base = make_windows(ids, seq_len=7)
    changed = ids.copy()
    changed[:8] = 0  # rewrite window 0 entirely
    other = make_windows(changed, seq_len=7)
    for key in ("input_ids", "labels", "attention_mask"):
        np.testing.assert_array_equal(base[key][1:], other[key][1:])  # later windows do not depend on it
    assert set(base) == {"input_ids", "labels", "attention_mask"}  # nothing carried


def test_windows_remainders_drop_last_offset_and_dataset():
    assert make_windows(np.arange(11), 4)["input_ids"].shape == (2, 5)  # remainder 1: nothing to predict -> dropped
    assert make_windows(np.arange(12), 4, drop_last=True)["input_ids"].shape == (2, 5)
    assert make_windows(np.arange(3), 4)["input_ids"].shape == (1, 5)
    assert make_windows(np.arange(1), 4)["input_ids"].shape == (0, 5)
    np.testing.assert_array_equal(make_windows(np.arange(12), 4, offset=2)["input_ids"][0], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(make_windows(np.arange(7), 4, pad_id=9)["input_ids"][1], [5, 6, 9, 9, 9])
    with pytest.raises(ValueError):
        make_windows(np.arange(10), 0)
    ds = windows_dataset(np.arange(12), 4, pad_id=0)
    assert len(ds) == 3 and ds.column_names == ["input_ids", "labels", "attention_mask"]
    batch = ds.with_format("torch")[:]
    assert batch["input_ids"].shape == (3, 5) and str(batch["labels"].dtype) == "torch.int64"
    assert batch["labels"][2].tolist() == [10, 11, -100, -100, -100]
    np.testing.assert_array_equal(windows_to_stream(ds), np.arange(12))
    assert len(windows_dataset(np.arange(1), 4)) == 0


# ============================================================================================ missing data
def test_missing_corpus_names_files_and_folder(tmp_path):
    D.clear_cache()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError) as err:
        D.ptb_vocab("word", empty)
    msg = str(err.value)
    assert "ptb.train.txt" in msg and "ptb.valid.txt" in msg and "ptb.test.txt" in msg and str(empty / "ptb") in msg
    assert "HF_HUB_OFFLINE" in msg  # says why the Hub was not tried
    with pytest.raises(MissingDataError, match="ptb.char.train.txt.gz"):
        D.ptb_stream("train", "char", empty)
    with pytest.raises(MissingDataError, match="wiki.train.tokens.gz"):
        D.wikitext_stream("train", "word", empty, vocab=Vocabulary.build(["a"]))
    with pytest.raises(MissingDataError, match=r"en_ewt-ud-train\.conllu.*en_ewt-ud-dev\.conllu"):
        D.ewt_sentences("clean", empty, map_oov=False)
    with pytest.raises(MissingDataError, match="en_ewt-ud-test.conllu"):
        D.ewt_sentences("clean", empty, map_oov=False, splits=("test",))


def test_missing_data_dir_entirely(monkeypatch):
    D.clear_cache()
    monkeypatch.delenv("OE_DATA_DIR", raising=False)
    with pytest.raises(MissingDataError, match="OE_DATA_DIR"):
        D.ptb_vocab("word")


def test_hub_fallback_only_when_files_missing_and_online(tmp_path, monkeypatch):
    """The Hub code path is real but never touches the network here: load_dataset is replaced."""
    import datasets

    D.clear_cache()
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if path == "ptb_text_only":
            return {"sentence": {"train": ["the cat", "a <unk> sat"], "validation": ["the dog"], "test": ["a cat"]}[split]}
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    empty = tmp_path / "empty"
    empty.mkdir()
    # offline (conftest sets HF_HUB_OFFLINE=1): never called
    with pytest.raises(MissingDataError):
        D.ptb_vocab("word", empty)
    assert calls == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    v = D.ptb_vocab("word", empty)
    assert v.itos == ["the", "cat", "<eos>", "a", "<unk>", "sat"]
    assert toks(v, D.ptb_stream("valid", "word", empty)) == ["the", "<unk>", "<eos>"]
    assert ("ptb_text_only", None, "validation") in calls
    assert D.ptb_vocab("char", empty).itos[:4] == ["t", "h", "e", "_"]  # char derived from the Hub word lines
    with pytest.raises(MissingDataError, match="no network"):  # a failing Hub reports both problems
        D.wikitext_stream("train", "word", empty, vocab=v)
    assert ("wikitext", "wikitext-2-v1", "train") in calls
    D.clear_cache()


# ============================================================================================ real corpora
def test_real_ptb_counts_and_vocabularies(data_dir):
    D.clear_cache()
    v = D.ptb_vocab("word", data_dir)
    assert len(v) == 10_000 and v.unk == "<unk>" and v.eos == "<eos>"
    assert v.itos[:3] == ["aer", "banknote", "berlitz"]  # first-appearance order of train
    assert [D.ptb_stream(s, "word", data_dir).size for s in ("train", "valid", "test")] == [929_589, 73_760, 82_430]
    cv = D.ptb_vocab("char", data_dir)
    assert len(cv) == 50 and "_" in cv and "<eos>" in cv and cv.unk is None
    assert [D.ptb_stream(s, "char", data_dir).size for s in ("train", "valid", "test")] == [
        4_975_414 + 42_068, 389_672 + 3_370, 438_662 + 3_761,
    ]
    # PTB-char is exactly the derivation rule we apply to EWT (checked on test; train/valid hold too)
    word_test = D._corpus_lines("ptb", "test", data_dir)
    derived = np.concatenate([cv.encode([*derive_char_string(line.split()), "<eos>"]) for line in word_test])
    np.testing.assert_array_equal(derived, D.ptb_stream("test", "char", data_dir))


def test_real_ewt_domains_sentence_counts(data_dir):
    expected = {"answers": 3488, "email": 4899, "newsgroup": 2391, "reviews": 3814, "weblog": 2030}
    paper = D.ewt_sentences("paper", data_dir)
    assert {d: len(s) for d, s in paper.items()} == expected
    clean = D.ewt_sentences("clean", data_dir)
    for d, n in expected.items():
        assert 0.95 * n <= len(clean[d]) <= n  # only all-punctuation sentences disappear
    v = D.ptb_vocab("word", data_dir)
    streams = D.ewt_streams("word", "paper", data_dir)
    assert {d: int((s == v.eos_id).sum()) for d, s in streams.items()} == expected


def test_real_wikitext_unk_fraction_and_full_bundle(data_dir, capsys):
    d = D.load_text_oe_data("word", data_dir)
    frac = d.stats["unk_fraction"]["wikitext/train"]
    with capsys.disabled():
        print(f"\n[oe_text] WikiText-2 train <unk> fraction under the PTB vocabulary: {frac:.4f}", file=sys.stderr)
    assert 0.3 <= frac <= 0.5
    assert d.stats["tokens"]["wikitext/train"] == 2_088_628
    assert len(d.ptb_test) == num_windows(82_430, 70) == 1161
    assert set(d.ewt["clean"]) == set(D.EWT_DOMAINS) == set(d.ewt["paper"])
    # clean normalisation leaves far fewer unknown words than the released code's protocol
    for dom in D.EWT_DOMAINS:
        assert d.stats["unk_fraction"][f"ewt/clean/{dom}"] < 0.2 < d.stats["unk_fraction"][f"ewt/paper/{dom}"]
    row = d.ptb_test[0]
    assert row["labels"] == row["input_ids"] and sum(row["attention_mask"]) == 71


def test_real_char_bundle(data_dir):
    d = D.load_text_oe_data("char", data_dir, protocol="clean")
    assert d.seq_len == 150 and len(d.vocab) == 50
    assert len(d.ptb_test) == num_windows(438_662 + 3_761, 150)
    text = chars(d.vocab, d.streams["ewt/clean/reviews"][:2000])
    assert "<unk>" in text and text.count("<unk>") < text.count("_")  # most words are spelled out
    assert not any(c.isupper() and c != "N" for c in text)
