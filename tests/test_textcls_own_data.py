"""Your own data in the text-classifier recipe (issue 21 items 1, 3, 5): files (.csv with quoted commas, .tsv,
.jsonl, .gz), a saved / script-free dataset folder, string and integer labels, --ood-file / --validation-ood-file,
the checks that run before anything is written, a checkpoint with a head of another size, and `oe build-detector`
reproducing the recipe's own detector scores.

Training runs use the paper's GRU with a word-level vocabulary (``--word-vocab-size``: no Hugging Face cache needed)
or a tiny BERT saved locally, the ``test`` preset, and a data directory holding only WikiText-2 (the outlier source),
so that every named anomaly set is absent: seconds each.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_posthoc_detector import write_table
from test_textcls_detector import WORDS, random_texts, tiny_bert, tiny_tokenizer

from oe_common.deployment import cli
from oe_common.experiments.table_files import TableFileError
from oe_text.textcls import textcls_experiment as tx
from oe_text.textcls.textcls_files import VALIDATION_FRACTION, load_own_textcls, named_anomaly_sets
from oe_text.textcls.textcls_recipe import main as recipe_main

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
LABELS = ["billing, refunds", "greeting", "travel"]  # a comma inside a label too
FAST = ["--model", "gru", "--preset", "test", "--word-vocab-size", "300", "--baseline-epochs", "2", "--outlier-examples", "200",
        "--n-draws", "2", "--threads", "1"]


def rows(n: int, seed: int, labels=LABELS) -> list[dict]:
    """Texts whose words depend on the label (learnable), every 4th with a quoted comma and quote inside."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % len(labels)
        words = rng.choice(WORDS[k * 5:(k + 1) * 5 + 3], size=int(rng.integers(3, 8)))
        text = " ".join(words)
        out.append({"text": f'{text}, "{i}"' if i % 4 == 0 else text, "label": labels[k]})
    return out


@pytest.fixture(scope="module")
def wikitext_only(tmp_path_factory, data_dir) -> Path:
    """A data directory with WikiText-2 only: the named anomaly sets (CLINC150, SST-2, ... EWT) are absent."""
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext-2").symlink_to(Path(data_dir) / "wikitext-2")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("own")
    return {
        "train": write_table(d / "intents.csv", rows(90, 1)),
        "validation": write_table(d / "validation.jsonl", rows(30, 2)),
        "test": write_table(d / "test.tsv.gz", rows(30, 3)),
        "ood": write_table(d / "noise.jsonl.gz", [{"text": t} for t in random_texts(40, seed=7)]),
        "ood2": write_table(d / "other.csv", [{"text": f"other, {t}"} for t in random_texts(25, seed=8)]),
        "val_ood": write_table(d / "val_ood.csv", [{"text": t} for t in random_texts(30, seed=9)]),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, files, wikitext_only):
    out = tmp_path_factory.mktemp("run") / "run"
    result = recipe_main([*FAST, "--train-file", str(files["train"]), "--validation-file", str(files["validation"]),
                          "--test-file", str(files["test"]), "--ood-file", f"noise={files['ood']}", "--ood-file",
                          f"other={files['ood2']}", "--validation-ood-file", str(files["val_ood"]),
                          "--detector-score", "mahalanobis", "--output-dir", str(out), "--data-dir", str(wikitext_only)])
    return out, result


def test_own_files_run_with_their_label_names_and_only_the_anomaly_sets_given(run, files):
    out, result = run
    records = json.loads((out / "results.json").read_text())["records"]
    det = [r for r in records if r["task"] == "detection"]
    assert {r["ood_set"] for r in det} == {"noise", "other", "mean"}
    assert {r["dataset"] for r in records} == {"intents"}  # --dataset defaults to the train file's name
    noise = next(r for r in det if r["ood_set"] == "noise" and r["stage"] == "oe" and r["score"] == "msp")
    assert noise["n_in"] == 30 and noise["n_set"] == 40
    sel = [r for r in records if r["task"] == "selection"]
    assert {r["selection_set"] for r in sel} == {"val_ood"} and {r["n_out"] for r in sel} == {30} and {r["n_in"] for r in sel} == {30}
    text = (out / "results.md").read_text()
    assert "Evaluated only on the anomaly sets given and found" in text and "ewt_email" in text and "multi30k" in text
    assert f"given: {files['validation']}" in text
    training = json.loads((out / "detector" / "detector_config.json").read_text())["training"]
    assert training["train_file"] == str(files["train"]) and training["validation_texts"].startswith("given")
    assert training["in_distribution_dataset"] == "intents" and set(training["test_anomaly_datasets"]) == {"noise", "other"}
    config = json.loads((out / "detector" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert result["meta"]["n_texts"]["train"] == 90 and result["meta"]["n_texts"]["test"] == 30
    acc = next(r for r in records if r["task"] == "accuracy" and r["stage"] == "oe")
    assert acc["accuracy"] > 1 / len(LABELS)  # the label-dependent words are learnt: the labels line up with the texts


def test_oe_score_prints_the_label_names_of_your_data(run, tmp_path, capsys):
    out, result = run
    texts = [r["text"] for r in rows(30, 3)]
    src = tmp_path / "queries.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert cli.main(["score", "--model", str(out / "detector"), "--input", str(src), "--device", "cpu", "--no-progress"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 30 and {r["label"] for r in printed} <= set(LABELS)
    correct = [r["label"] == row["label"] for r, row in zip(printed, rows(30, 3), strict=True)]
    acc = next(r for r in result["records"] if r["task"] == "accuracy" and r["stage"] == "oe")
    assert np.mean(correct) == pytest.approx(acc["accuracy"])  # the recipe's test accuracy, from the printed names


def test_build_detector_on_the_recipe_model_reproduces_its_detector_scores(run, files, tmp_path):
    """Issue 21, done-when: `oe build-detector` with the same training file reproduces the recipe's own detector
    scores (the Mahalanobis score of the OE model on the test texts) to 1e-6."""
    out, result = run
    rebuilt = tmp_path / "rebuilt"
    assert cli.main(["build-detector", "--model", str(out / "detector"), "--output", str(rebuilt), "--train-file",
                     str(files["train"]), "--score", "mahalanobis", "--device", "cpu", "--no-progress"]) == 0
    from oe_common.deployment.posthoc import load_detector

    test_texts = [r["text"] for r in rows(30, 3)]
    ours = np.asarray(load_detector(rebuilt, device="cpu", progress=False).score(test_texts), dtype=np.float64)
    recipe = result["arrays"]["oe"]["test"]["mahalanobis"]
    assert ours.shape == recipe.shape == (30,) and np.ptp(recipe) > 0
    np.testing.assert_allclose(ours, recipe, rtol=1e-6, atol=1e-6)


def _cfg(**kw):
    return tx.preset_config("test", model="gru", **kw)


def test_every_file_type_gives_the_same_data(tmp_path):
    data = rows(40, 5)
    loaded = []
    for name in ("t.csv", "t.tsv", "t.jsonl", "t.csv.gz", "t.tsv.gz", "t.jsonl.gz"):
        path = write_table(tmp_path / name, data)
        own, how = load_own_textcls(_cfg(train_file=str(path), validation_file=str(path), test_file=str(path)))
        loaded.append((own.label_names, own.splits["test"]["text"], own.splits["test"]["label"]))
        assert how == f"given: {path}"
    assert all(x == loaded[0] for x in loaded)
    names, texts, labels = loaded[0]
    assert names == LABELS and texts == [r["text"] for r in data] and texts[0].endswith(', "0"')
    assert [names[i] for i in labels] == [r["label"] for r in data]


def test_the_data_is_named_after_its_file_or_folder_unless_dataset_names_it():
    assert _cfg(train_file="data/intents.csv.gz", test_file="t.csv").dataset == "intents"
    assert _cfg(train_file="data/bank_chat/train.jsonl", test_file="t.csv").dataset == "bank_chat"
    assert _cfg(train_file="data/train.csv", test_file="t.csv", dataset="mine").dataset == "mine"
    assert tx.preset_config("test", train_file="x.csv", test_file="t.csv").max_length == 64 and _cfg().dataset == "clinc150"
    tiny_own, tiny_named = tx.preset_config("tiny", train_file="x.csv", test_file="t.csv"), tx.preset_config("tiny")
    assert (tiny_own.train_examples, tiny_own.ood_examples) == (20000, 2000)  # minutes whatever the files hold
    assert (tiny_named.train_examples, tiny_named.ood_examples) == (None, None)
    assert tx.preset_config("tiny", dataset="user/hub-intents").ood_examples == 2000


def test_integer_labels_are_sorted_numerically_and_named_as_strings(tmp_path):
    data = [{"text": f"text number {i}", "label": [10, 2, 1][i % 3]} for i in range(30)]
    path = write_table(tmp_path / "ints.jsonl", data)
    own, _ = load_own_textcls(_cfg(train_file=str(path), validation_file=str(path), test_file=str(path)))
    assert own.label_names == ["1", "2", "10"]
    assert [own.label_names[i] for i in own.splits["train"]["label"]] == [str(r["label"]) for r in data]


def test_without_validation_a_seeded_stratified_tenth_of_train_is_held_out_in_file_order(tmp_path):
    train = write_table(tmp_path / "train.csv", rows(120, 1))
    test = write_table(tmp_path / "test.csv", rows(9, 2))
    own, how = load_own_textcls(_cfg(train_file=str(train), test_file=str(test), seed=3))
    tr, va = own.splits["train"], own.splits["validation"]
    assert len(va) == round(VALIDATION_FRACTION * 120) and len(tr) == 108
    assert np.bincount(va["label"]).tolist() == [4, 4, 4]  # stratified
    all_texts = [r["text"] for r in rows(120, 1)]
    for part in (tr, va):  # file order kept
        positions = [all_texts.index(t) for t in part["text"]]
        assert positions == sorted(positions)
    assert sorted(list(tr["text"]) + list(va["text"])) == sorted(all_texts)
    assert "seeded (seed 3), stratified 10%" in how and "12 of 120 rows" in how
    again, _ = load_own_textcls(_cfg(train_file=str(train), test_file=str(test), seed=3))
    other, _ = load_own_textcls(_cfg(train_file=str(train), test_file=str(test), seed=4))
    assert list(again.splits["validation"]["text"]) == list(va["text"]) != list(other.splits["validation"]["text"])


def test_a_saved_dataset_folder_and_a_folder_of_data_files_load_through_datasets(tmp_path):
    import datasets

    data = rows(60, 4)
    features = datasets.Features({"sentence": datasets.Value("string"), "intent": datasets.ClassLabel(names=["travel", "greeting", "billing, refunds"])})
    to_id = {"travel": 0, "greeting": 1, "billing, refunds": 2}
    part = {"sentence": [r["text"] for r in data], "intent": [to_id[r["label"]] for r in data]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"fit": datasets.Dataset.from_dict(part, features=features),
                          "eval": datasets.Dataset.from_dict(part, features=features)}).save_to_disk(str(saved))
    own, how = load_own_textcls(_cfg(dataset=str(saved), train_split="fit", test_split="eval", text_column="sentence", label_column="intent"))
    assert own.label_names == ["travel", "greeting", "billing, refunds"]  # the ClassLabel's own order
    assert list(own.splits["test"]["label"]) == part["intent"] and "stratified" in how  # no validation split: carved out
    own, how = load_own_textcls(_cfg(dataset=str(saved), train_split="fit", validation_split="eval", test_split="eval",
                                     text_column="sentence", label_column="intent"))
    assert how == f"given: dataset {str(saved)!r} split 'eval'" and len(own.splits["train"]) == len(own.splits["validation"]) == 60
    # a folder of plain data files: load_dataset(folder) names the splits from the file names
    folder = tmp_path / "plain"
    folder.mkdir()
    write_table(folder / "train.csv", data)
    write_table(folder / "test.csv", rows(12, 6))
    write_table(folder / "validation.csv", rows(12, 7))
    own, how = load_own_textcls(_cfg(dataset=str(folder)))
    assert own.label_names == LABELS and len(own.splits["train"]) == 60 and how.startswith("given: dataset")
    # a Hub-style dataset repository: README.md with `configs:` metadata, picked with --dataset-config
    repo = tmp_path / "repo"
    for config, n in (("small", 40), ("big", 80)):
        (repo / config).mkdir(parents=True)
        write_table(repo / config / "train.csv", rows(n, 8))
        write_table(repo / config / "test.csv", rows(15, 9))
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.csv\n  - split: test\n    path: {c}/test.csv\n"
        for c in ("small", "big")) + "---\n# my intents\n")
    for config, n in (("small", 40), ("big", 80)):
        own, _ = load_own_textcls(_cfg(dataset=str(repo), dataset_config=config))
        assert len(own.splits["train"]) + len(own.splits["validation"]) == n and own.label_names == LABELS
    unlabelled = tmp_path / "unlabelled"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(part, features=features),
                          "test": datasets.Dataset.from_dict({**part, "intent": [-1] * 60}, features=features)}).save_to_disk(str(unlabelled))
    with pytest.raises(TableFileError, match="split 'test': 60 of 60 rows have no label.*--test-split"):
        load_own_textcls(_cfg(dataset=str(unlabelled), text_column="sentence", label_column="intent"))
    with pytest.raises(TableFileError, match="has no split 'fit'.*'train'.*--train-split"):
        load_own_textcls(_cfg(dataset=str(folder), train_split="fit"))


def _fails(argv: list[str], out: Path, capsys, code: int, *patterns: str) -> str:
    with pytest.raises(SystemExit) as exc:
        recipe_main([*FAST, *argv, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code, err
    line = err.splitlines()[-1]
    assert len(err.splitlines()) == 1 or err.startswith("usage:"), err  # argparse's usage errors: synopsis + one line
    for pattern in patterns:
        assert pattern in line, err
    assert not out.exists()  # nothing written before the inputs were checked
    return err


def test_bad_inputs_are_one_line_errors_before_anything_is_written(tmp_path, wikitext_only, capsys):
    d = tmp_path
    out = d / "out"
    good = write_table(d / "good.csv", rows(40, 1))
    base = ["--data-dir", str(wikitext_only), "--validation-file", str(good), "--test-file", str(good)]
    wrong_cols = write_table(d / "cols.csv", [{"utterance": r["text"], "label": r["label"]} for r in rows(40, 1)])
    _fails(["--train-file", str(wrong_cols), *base], out, capsys, 2, str(wrong_cols), "'text'", "its columns: 'utterance', 'label'")
    new_label = write_table(d / "newlabel.csv", rows(10, 2) + [{"text": "hello there", "label": "weather"}])
    _fails(["--train-file", str(good), "--data-dir", str(wikitext_only), "--test-file", str(new_label)], out, capsys, 1,
           str(new_label), "never seen in training", "'weather' (row 11)")
    empty = write_table(d / "empty.csv", rows(10, 2) + [{"text": "  ", "label": "greeting"}])
    _fails(["--train-file", str(empty), *base], out, capsys, 1, str(empty), "row 11")
    latin = d / "latin.csv"
    latin.write_bytes("text,label\nhello,greeting\ncaf\xe9 au lait,travel\n".encode("latin-1"))
    _fails(["--train-file", str(latin), *base], out, capsys, 1, str(latin), "line 3 is not UTF-8")
    few = write_table(d / "few.csv", rows(12, 1))
    _fails(["--train-file", str(few), "--test-file", str(good), "--data-dir", str(wikitext_only)], out, capsys, 1,
           str(few), "12 rows in 3 classes", "at least 30 rows")
    _fails(["--train-file", str(good), *base, "--ood-file", str(d / "missing.csv")], out, capsys, 1, "missing.csv")
    _fails(["--train-file", str(good), *base], out, capsys, 1, "no anomaly set", "--ood-file")
    _fails(["--train-file", str(good), *base, "--ood-file", f"a={good}", "--ood-file", f"a={good}"], out, capsys, 2, "--ood-file names must differ")
    _fails(["--train-file", str(good), *base, "--ood-file", f"={good}"], out, capsys, 2, "--ood-file", "NAME=PATH")
    _fails(["--validation-file", str(good)], out, capsys, 2, "--validation-file / --test-file need --train-file")
    _fails(["--train-file", str(good)], out, capsys, 2, "--train-file needs --test-file")


@pytest.fixture(scope="module")
def two_label_model(tmp_path_factory) -> Path:
    """A checkpoint with a 2-label classification head (e.g. a sentiment model), saved as users have it."""
    tok = tiny_tokenizer()
    model = tiny_bert(len(tok), seed=2)
    model.config.num_labels = 2
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(model.config)
    folder = tmp_path_factory.mktemp("ckpt") / "sentiment"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_head_of_another_size_is_reinitialised_with_a_notice_or_refused_when_kept(two_label_model, tmp_path, wikitext_only, capsys):
    good = write_table(tmp_path / "good.csv", rows(30, 1))
    args = ["--model", str(two_label_model), "--preset", "test", "--max-length", "16", "--baseline-max-steps", "2",
            "--oe-max-steps", "1", "--outlier-examples", "50", "--train-file", str(good), "--validation-file", str(good),
            "--test-file", str(good), "--data-dir", str(wikitext_only), "--threads", "1",
            "--ood-file", f"noise={write_table(tmp_path / 'noise.csv', [{'text': t} for t in random_texts(20, seed=3)])}"]
    kept = tmp_path / "kept"
    with pytest.raises(SystemExit) as exc:
        recipe_main([*args, "--keep-head", "--output-dir", str(kept)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and len(err.splitlines()) == 1 and "2-label classification head" in err and "3 labels" in err
    assert not kept.exists()
    out = tmp_path / "run"
    result = recipe_main([*args, "--output-dir", str(out)])
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "re-initialised for the 3 labels" in notices[0]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert "re-initialised" in meta["data_sources"]["head_notice"] and result["meta"]["data_sources"] == meta["data_sources"]
    assert json.loads((out / "detector" / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(LABELS)}


def test_clinc150_exported_to_quoted_csv_gives_the_records_of_the_named_set(data_dir, tmp_path):
    """Issue 21, done-when (a), at a tiny scale: tools/export_textcls_csv.py + --train-file/--validation-file/
    --test-file/--ood-file/--validation-ood-file give exactly the records of --dataset clinc150 (same seed)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        from export_textcls_csv import export
    finally:
        sys.path.pop(0)
    export("clinc150", tmp_path / "csv", str(data_dir))
    with open(tmp_path / "csv" / "train.csv", encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == ["text", "label"] and f.read(1) == '"'  # every cell quoted
    small = ["--model", "gru", "--preset", "test", "--word-vocab-size", "500", "--train-examples", "150", "--baseline-max-steps", "3",
             "--oe-max-steps", "2", "--test-examples", "40", "--ood-examples", "10", "--outlier-examples", "100",
             "--validation-examples", "30", "--n-draws", "1", "--threads", "1", "--data-dir", str(data_dir), "--dataset", "clinc150"]
    c = tmp_path / "csv"
    named = recipe_main([*small, "--output-dir", str(tmp_path / "named")])
    own = recipe_main([*small, "--train-file", str(c / "train.csv"), "--validation-file", str(c / "validation.csv"),
                       "--test-file", str(c / "test.csv"), "--ood-file", f"clinc150_oos={c / 'oos_test.csv'}",
                       "--validation-ood-file", f"clinc150_oos_validation={c / 'oos_validation.csv'}",
                       "--output-dir", str(tmp_path / "own")])
    assert len(named["records"]) > 100
    assert json.loads(json.dumps(own["records"])) == json.loads(json.dumps(named["records"]))
    assert os.path.getsize(tmp_path / "own" / "results.json") > 0


def test_anomaly_sets_named_sets_first_then_files_or_files_first_then_the_named_sets_found(data_dir, wikitext_only, tmp_path):
    mine = {"traffic": ["some text"], "sst2": ["my own sst2"]}
    sets, skipped = named_anomaly_sets(tx.ood_set_names("trec"), mine, False, data_dir)
    assert list(sets) == [n for n in tx.ood_set_names("trec") if n != "sst2"] + ["traffic", "sst2"] and not skipped
    assert sets["sst2"] == ["my own sst2"] and len(sets["multi30k"]) > 100  # a file named like a named set replaces it
    good = str(write_table(tmp_path / "good.csv", rows(40, 1)))
    own = tx.preset_config("test", model="gru", train_file=good, test_file=good)
    sets, skipped = named_anomaly_sets(tx.ood_set_names(own.dataset), mine, True, data_dir)
    assert list(sets)[:2] == ["traffic", "sst2"] and "clinc150" in sets and not skipped
    sets, skipped = named_anomaly_sets(tx.ood_set_names(own.dataset), mine, True, wikitext_only)
    assert list(sets) == ["traffic", "sst2"] and skipped == [n for n in tx.ood_set_names("good") if n != "sst2"]
    with pytest.raises(tx.MissingDataError):  # a named set's own files are required
        named_anomaly_sets(tx.ood_set_names("trec"), mine, False, wikitext_only)
