"""Text-classification corpora (oe_text.textcls.textcls_data): real counts from textcls/SOURCES.md, format errors, WikiText sentences."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from oe_common.experiments.data_dir import MissingDataError
from oe_text.textcls.textcls_data import (
    OOD_SETS,
    MalformedDataError,
    load_ood_texts,
    load_textcls,
    read_tsv,
    split_wikitext_sentences,
    wikitext_sentences,
)


# ------------------------------------------------------------------------------------------------ real data
def test_clinc150_counts_and_labels(data_dir):
    d = load_textcls("clinc150", data_dir)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 15000, "validation": 3000, "test": 4500}
    assert d.num_labels == 150 and d.label_names == sorted(d.label_names) and "oos" not in d.label_names
    assert d.splits["train"].features["label"].names == d.label_names
    assert set(Counter(d.splits["train"]["label"]).values()) == {100}  # 150 intents x 100
    assert set(Counter(d.splits["test"]["label"]).values()) == {30}
    assert d.splits["train"].column_names == ["text", "label"]


def test_clinc150_keeps_double_quotes_verbatim(data_dir):
    """No quoting: texts holding '"' come back exactly as in the file (csv's default dialect would mangle them)."""
    texts, _ = read_tsv(data_dir / "textcls/clinc150/train.tsv.gz")
    raw = gzip.open(data_dir / "textcls/clinc150/train.tsv.gz", "rt", encoding="utf-8").read().split("\n")[1:-1]
    assert [line.split("\t")[0] for line in raw] == texts
    assert any('"' in t for t in texts)


def test_sst2_counts(data_dir):
    d = load_textcls("sst2", data_dir)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 67349, "validation": 872, "test": 1821}
    assert d.label_names == ["0", "1"]
    assert Counter(d.splits["train"]["label"]) == {0: 29780, 1: 37569}
    assert Counter(d.splits["test"]["label"]) == {0: 912, 1: 909}


def test_trec_fine_coarse_and_seeded_validation(data_dir):
    d = load_textcls("trec", data_dir, seed=0)
    full_texts, full_labels = read_tsv(data_dir / "textcls/trec/train.tsv.gz")
    train, val = d.splits["train"], d.splits["validation"]
    assert len(train) + len(val) == 5452 and len(d.splits["test"]) == 500
    assert d.num_labels == 50 and all(":" in n for n in d.label_names)  # TREC-50 = the fine labels
    # the two parts partition the train file, both in file order, and no question is on both sides
    assert Counter(train["text"]) + Counter(val["text"]) == Counter(full_texts)
    assert not set(train["text"]) & set(val["text"])
    val_set = set(val["text"])
    assert [t for t in full_texts if t in val_set] == val["text"]  # file order kept (duplicates included)
    assert 0.09 < len(set(val["text"])) / len(set(full_texts)) < 0.11
    names = d.label_names
    assert Counter(names[i] for i in train["label"]) + Counter(names[i] for i in val["label"]) == Counter(full_labels)
    # seeded: same seed -> same split, another seed -> another split
    assert load_textcls("trec", data_dir, seed=0).splits["validation"]["text"] == val["text"]
    assert load_textcls("trec", data_dir, seed=1).splits["validation"]["text"] != val["text"]
    coarse = load_textcls("trec6", data_dir)
    assert coarse.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert Counter(coarse.label_names[i] for i in coarse.splits["test"]["label"]) == {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}


def test_ood_sets(data_dir):
    sizes = {"clinc150_oos": 1000, "clinc150_oos_train": 100, "clinc150_oos_validation": 100, "multi30k": 1000,
             "ewt_answers": 3488, "ewt_email": 4899, "ewt_newsgroup": 2391, "ewt_reviews": 3814, "ewt_weblog": 2030,
             "clinc150": 4500, "sst2": 1821, "trec": 500}
    assert set(sizes) == set(OOD_SETS)
    for name, n in sizes.items():
        ds = load_ood_texts(name, data_dir)
        assert ds.column_names == ["text"] and len(ds) == n, name
    assert load_ood_texts("multi30k", data_dir)[0]["text"] == "A man in an orange hat starring at something."
    with pytest.raises(ValueError, match="unknown OOD set"):
        load_ood_texts("wmt16", data_dir)


def test_wikitext_sentences_real(data_dir):
    texts = wikitext_sentences("valid", data_dir)["text"]
    tokenized = wikitext_sentences("valid", data_dir, detokenize=False)["text"]
    assert len(texts) == len(tokenized) > 5000
    assert all(3 <= len(t.split()) <= 60 for t in tokenized)  # the paper's filter counts the tokens
    assert not any("@-@" in t or t.startswith(("=", "@")) or t[0].isdigit() for t in texts)
    assert any("@-@" in t for t in tokenized)


# ------------------------------------------------------------------------------------------------ rules and errors
def test_split_wikitext_sentences_rules():
    lines = [
        " = Valkyria Chronicles = ",
        " ",
        " The game was released in 2011 . It sold 1 @,@ 000 copies ! Why ? ",
        " 1990 was a year . @-@ starts with at . Role @-@ playing games are fun to play . ",
        " " + " ".join(["word"] * 61) + " . ",
    ]
    assert split_wikitext_sentences(lines) == [
        "The game was released in 2011 .", "It sold 1,000 copies !", "Role-playing games are fun to play .",
    ]
    assert split_wikitext_sentences(lines, detokenize=False)[1] == "It sold 1 @,@ 000 copies !"
    assert split_wikitext_sentences(lines, min_words=1)[2] == "Why ?"


def write_tsv(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def fake_clinc(root: Path, train: str = "text\tlabel\nhi\ta\nyo\tb\n") -> Path:
    for split in ("train", "validation", "test"):
        write_tsv(root / "textcls/clinc150" / f"{split}.tsv.gz", train if split == "train" else "text\tlabel\nhey\ta\n")
    return root


def test_missing_file_names_file_and_directory(tmp_path):
    root = fake_clinc(tmp_path)
    (root / "textcls/clinc150/test.tsv.gz").unlink()
    with pytest.raises(MissingDataError) as err:
        load_textcls("clinc150", root)
    msg = str(err.value)
    assert "test.tsv.gz" in msg and str(root / "textcls/clinc150") in msg and "\n" not in msg


@pytest.mark.parametrize(
    "content,message",
    [
        ("txt\tlabel\nhi\ta\n", "header"),
        ("text\tlabel\nhi\ta\tb\n", "line 2"),
        ("text\tlabel\nno tab here\n", "line 2"),
        ("text\tlabel\n\ta\n", "line 2"),
        ("text\tlabel\n", "no example"),
    ],
)
def test_malformed_tsv(tmp_path, content, message):
    root = fake_clinc(tmp_path, content)
    with pytest.raises(MalformedDataError, match=message) as err:
        load_textcls("clinc150", root)
    msg = str(err.value)
    assert "train.tsv.gz" in msg and str(root) in msg and "\n" not in msg


def test_quotes_are_data_and_bad_gzip(tmp_path):
    root = fake_clinc(tmp_path, 'text\tlabel\nsay "hi\ta\n"x" y\tb\n')
    d = load_textcls("clinc150", root)
    assert d.splits["train"]["text"] == ['say "hi', '"x" y']
    (root / "textcls/clinc150/validation.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MalformedDataError, match="validation.tsv.gz.*cannot be read"):
        load_textcls("clinc150", root)


def test_unknown_test_label_and_unknown_set(tmp_path):
    root = fake_clinc(tmp_path)
    write_tsv(root / "textcls/clinc150/test.tsv.gz", "text\tlabel\nhey\tzzz\n")
    with pytest.raises(MalformedDataError, match="zzz"):
        load_textcls("clinc150", root)
    with pytest.raises(ValueError, match="unknown text-classification set"):
        load_textcls("20ng", root)


def test_oos_file_with_other_labels_and_empty_line(tmp_path):
    write_tsv(tmp_path / "textcls/clinc150/oos_test.tsv.gz", "text\tlabel\nabc\toos\ndef\talarm\n")
    with pytest.raises(MalformedDataError, match="alarm"):
        load_ood_texts("clinc150_oos", tmp_path)
    m = tmp_path / "textcls/multi30k/test.txt.gz"
    write_tsv(m, "one\n\nthree\n")
    with pytest.raises(MalformedDataError, match="empty line"):
        load_ood_texts("multi30k", tmp_path)


# ------------------------------------------------------------------------------------------------ issue 24, item 4
def _data_dir_with_half_of_clinc_test(data_dir: Path, tmp_path: Path) -> Path:
    """A data folder like the shared one (same SHA256SUMS) whose clinc150/test.tsv.gz keeps half its lines (still
    valid gzip with the right header: only the checksum can tell)."""
    root = tmp_path / "data"
    folder = root / "textcls" / "clinc150"
    folder.mkdir(parents=True)
    (root / "SHA256SUMS").write_bytes((data_dir / "SHA256SUMS").read_bytes())
    for source in (data_dir / "textcls" / "clinc150").iterdir():
        (folder / source.name).symlink_to(source)
    lines = gzip.open(data_dir / "textcls/clinc150/test.tsv.gz", "rt", encoding="utf-8").read().split("\n")
    (folder / "test.tsv.gz").unlink()
    with gzip.open(folder / "test.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[: len(lines) // 2]) + "\n")
    return root


def test_a_truncated_file_fails_its_checksum_with_one_line_naming_it(data_dir, tmp_path, monkeypatch):
    from oe_common.experiments.data_integrity import SKIP_ENV, DataIntegrityError

    root = _data_dir_with_half_of_clinc_test(data_dir, tmp_path)
    bad = root / "textcls" / "clinc150" / "test.tsv.gz"
    for load in (lambda: load_textcls("clinc150", root), lambda: load_ood_texts("clinc150", root)):
        with pytest.raises(DataIntegrityError) as err:
            load()
        assert str(bad) in str(err.value) and "SHA256SUMS" in str(err.value) and "\n" not in str(err.value)
    assert len(load_ood_texts("clinc150_oos", root)) == 1000  # the intact files of the folder still load
    monkeypatch.setenv(SKIP_ENV, "1")  # the user's own corpus under the standard names: not checked
    assert len(load_textcls("clinc150", root).splits["test"]) == 2250
    monkeypatch.delenv(SKIP_ENV)
    (root / "SHA256SUMS").write_text("")  # a folder whose SHA256SUMS does not list the file: not checked either
    assert len(load_ood_texts("clinc150", root)) == 2250
