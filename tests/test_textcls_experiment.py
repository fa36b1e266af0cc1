"""oe_text.textcls.textcls_experiment / recipes/textcls_oe.py: the text-classification OE pipeline on the one runner.

One module-scoped run of the ``test`` preset (the paper's GRU on 800 TREC-50 questions, seconds) is shared by the
tests. The tokenizer is a word-level BERT tokenizer built from the training questions (monkeypatched over the
MiniLM one), so these tests do not depend on the Hugging Face cache; tests/test_hub_checkpoints.py covers the real
checkpoint."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from oe_common.deployment import cli
from oe_text.textcls import textcls_experiment as tx
from oe_text.textcls.textcls_recipe import main as recipe_main

TORCH_THREADS = 1  # tiny model: see the conftest fixture _torch_threads
REPO_ROOT = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokenizer(texts, size: int = 3000):
    """A lower-casing word-level BertTokenizer over the ``size`` most common words of ``texts``."""
    from transformers import BertTokenizer

    counts = collections.Counter(w for t in texts for w in _WORD.findall(t.lower()))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in counts.most_common(size)]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


@pytest.fixture(scope="module")
def trec_tokenizer(data_dir):
    """The word-level tokenizer the module's TREC run uses (in place of the recipe's load_tokenizer)."""
    from oe_text.textcls.textcls_data import load_textcls

    return word_tokenizer(load_textcls("trec", data_dir).splits["train"]["text"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, trec_tokenizer):
    patch = pytest.MonkeyPatch()
    patch.setattr(tx, "load_tokenizer", lambda model: trec_tokenizer)
    out = tmp_path_factory.mktemp("textcls") / "run"
    try:
        result = recipe_main(["--dataset", "trec", "--model", "gru", "--preset", "test", "--output-dir", str(out),
                              "--data-dir", str(data_dir)])
    finally:
        patch.undo()
    return out, result


def test_records_follow_the_issue_schema(run):
    out, result = run
    records = json.loads((out / "results.json").read_text())["records"]
    assert records == json.loads(json.dumps(result["records"])) and out.joinpath("run_manifest.json").is_file()
    acc = [r for r in records if r["task"] == "accuracy"]
    assert [(r["dataset"], r["model"], r["stage"]) for r in acc] == [("trec", "gru", "baseline"), ("trec", "gru", "oe")]
    assert all(0 <= r["accuracy"] <= 1 for r in acc)
    det = [r for r in records if r["task"] == "detection"]
    keys = {"dataset", "model", "stage", "score", "ood_set", "auroc", "aupr", "fpr90", "fpr95", "n_in", "n_out", "n_draws", "task"}
    assert all(keys <= set(r) and "draws" not in r and "domain" not in r for r in det)
    sets = {r["ood_set"] for r in det}
    assert sets == set(tx.ood_set_names("trec")) | {"mean"} and "clinc150_oos" not in sets
    assert {r["score"] for r in det} == set(tx.TEXTCLS_SCORES)
    assert len(det) == 2 * len(tx.TEXTCLS_SCORES) * len(sets)
    # fractions; FPR at 95% recall is never below FPR at 90% (same draws); the mean row is the mean of the sets
    assert all(0 <= r[k] <= 1 for r in det for k in ("auroc", "aupr", "fpr90", "fpr95"))
    assert all(r["fpr95"] >= r["fpr90"] for r in det)
    oe_msp = [r for r in det if r["stage"] == "oe" and r["score"] == "msp"]
    mean = next(r for r in oe_msp if r["ood_set"] == "mean")
    assert mean["auroc"] == pytest.approx(np.mean([r["auroc"] for r in oe_msp if r["ood_set"] != "mean"]))
    assert all(r["n_in"] == 200 and r["n_out"] == 40 and r["n_draws"] == 2 for r in oe_msp if r["ood_set"] != "mean")
    mis = [r for r in records if r["task"] == "misclassification"]
    assert {(r["stage"], r["score"]) for r in mis} == {(s, k) for s in ("baseline", "oe") for k in tx.TEXTCLS_SCORES}


def test_detection_numbers_equal_a_recomputation_from_the_saved_scores(run):
    """AUROC and FPR95 of one set, recomputed from the stage's saved scores with scikit-learn and the same seeded
    draws (evaluate_ood's generator for set i: default_rng([seed, i]))."""
    from sklearn.metrics import roc_auc_score

    _, result = run
    arrays = result["arrays"]["oe"]
    record = next(r for r in result["records"] if r["stage"] == "oe" and r.get("ood_set") == "multi30k" and r["score"] == "energy")
    ins, outs = arrays["test"]["energy"], arrays["ood"]["multi30k"]["energy"]
    rng = np.random.default_rng([0, list(arrays["ood"]).index("multi30k")])
    aurocs, fprs = [], []
    for _ in range(2):
        sample = outs[rng.choice(outs.size, size=ins.size // 5, replace=False)]
        aurocs.append(roc_auc_score(np.r_[np.zeros(ins.size), np.ones(sample.size)], np.r_[ins, sample]))
        threshold = np.sort(sample)[::-1][int(np.ceil(0.95 * sample.size)) - 1]  # flags >= 95% of the anomalies
        fprs.append(np.mean(ins >= threshold))
    assert record["auroc"] == pytest.approx(np.mean(aurocs))
    assert record["fpr95"] == pytest.approx(np.mean(fprs))


def test_oe_separates_outliers_better_than_the_baseline(run):
    """OE on WikiText-2 sentences raises the in-vs-EWT separation (mean msp AUROC over the EWT domains)."""
    _, result = run
    det = [r for r in result["records"] if r["task"] == "detection" and r["score"] == "msp" and r["ood_set"].startswith("ewt_")]
    auroc = {stage: np.mean([r["auroc"] for r in det if r["stage"] == stage]) for stage in ("baseline", "oe")}
    assert auroc["oe"] > auroc["baseline"] + 0.05, auroc


def test_report_plots_and_detector_round_trip_in_a_fresh_process(run, tmp_path):
    out, _ = run
    md = (out / "results.md").read_text()
    assert "Score selected on validation data" in md and "Misclassification" in md and "baseline → oe" in md
    assert "Best score" not in md and "best" not in md.lower()
    assert (out / "roc_oe.png").stat().st_size > 0 and (out / "hist_baseline.png").stat().st_size > 0
    card = (out / "detector" / "README.md").read_text()
    assert "trec" in card and "accuracy" in card.lower()
    queries = tmp_path / "queries.txt"
    queries.write_text("what is the capital of france ?\nthe cat sat on the mat and purred all day long\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from oe_common.deployment.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "score", "--model", str(out / "detector"), "--input", str(queries)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-1500:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(rows) == 2 and all(np.isfinite(r["score"]) for r in rows)
    from oe_common.deployment.detector import OODDetector

    det = OODDetector.from_pretrained(out / "detector", device="cpu")
    validation = {r["score"]: r for r in _result(run)["records"] if r["task"] == "selection" and r["stage"] == "oe"}
    expected = tx.select_score({k: v for k, v in validation.items()}, tx.DETECTOR_SCORES)
    assert det.score_name == expected and det.threshold is not None
    assert [r["score"] for r in rows] == pytest.approx(det.score([q for q in queries.read_text().splitlines()]).tolist())


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imdb"], "--dataset"),
    (["--oe-lambda", "-1"], "--oe-lambda"),
    (["--preset", "paper"], "--preset"),
    (["--baseline-max-minutes", "0"], "--baseline-max-minutes"),
    (["--oe-loss", "kl"], "--oe-loss"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        recipe_main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_oe_train_lists_and_runs_the_recipe(capsys):
    assert cli.main(["train", "--list"]) == 0
    assert "text-classification" in capsys.readouterr().out
    assert cli.main(["train", "text-classification", "--dataset", "nope"]) == 2


def test_presets_and_config_checks():
    tiny = tx.preset_config("tiny", dataset="clinc150", model="minilm")
    assert tiny.oe_lambda == 1.0 and tiny.oe_loss == "uniform" and tiny.max_length == 24 and tiny.n_draws == 10
    assert tx.preset_config("full", dataset="sst2", model="gru").max_length == 64
    assert tx.preset_config("full", model="gru").baseline_lr != tx.preset_config("full", model="minilm").baseline_lr
    assert tx.preset_config("full", model="minilm").mahalanobis_examples is None  # feature scores fit on every training text
    stages = tx.TextClsExperiment(tiny).stages()
    assert [(s.name, s.oe_lambda, s.init) for s in stages] == [("baseline", None, None), ("oe", 1.0, "baseline")]
    hub = tx.TextClsConfig(dataset="imdb")  # not a named set: a datasets Hub id / saved folder (issue 21)
    assert hub.own_data and hub.max_length == 64 and not tx.TextClsConfig().own_data
    with pytest.raises(ValueError, match="need --train-file"):
        tx.TextClsConfig(test_file="test.csv")
    assert tx.ood_set_names("clinc150")[0] == "clinc150_oos"


@pytest.mark.parametrize("padding, group_by_length", [("longest", False), ("longest", True), ("max_length", False)])
def test_oe_step_is_one_forward_padded_to_the_longest_text_or_to_max_length(tmp_path, padding, group_by_length):
    """--padding longest: each OE step's in-distribution + outlier batch is ONE forward pass padded to its longest
    text (with --group-by-length the in-distribution batches come from the Trainer's LengthGroupedSampler); --padding
    max_length: every step is (2B, max_length)."""
    import datasets

    from oe_common.experiments.experiment import Stage
    from oe_text import GRUClassifierConfig, GRUForSequenceClassification

    texts = ["what is a cat", "how far is the moon from the earth today", "why", "who wrote the book about the sea",
             "is it", "the cat sat on the mat"]
    tok = word_tokenizer(texts)
    enc = tok(texts, truncation=True, max_length=16)  # at most 11 tokens: none is truncated
    train = datasets.Dataset.from_dict({**enc, "labels": [0, 1, 2, 0, 1, 2]})
    outliers = datasets.Dataset.from_dict(dict(tok(texts[::-1], truncation=True, max_length=16)))
    cfg = tx.TextClsConfig(dataset="trec", model="gru", padding=padding, group_by_length=group_by_length, max_length=16, batch_size=3)
    exp = tx.TextClsExperiment(cfg)
    exp.data = types.SimpleNamespace(tokenizer=tok, train=train, outliers=outliers)
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=len(tok), embedding_size=4, hidden_size=4, num_labels=3))
    shapes, lengths = [], []

    def record(_module, _args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        lengths.append(kwargs["attention_mask"].sum(1).tolist())

    model.register_forward_pre_hook(record, with_kwargs=True)
    trainer = exp.make_trainer(Stage("oe", 1e-3, max_steps=4, oe_lambda=1.0), model, tmp_path)
    assert trainer.args.train_sampling_strategy == ("group_by_length" if group_by_length else "random")
    trainer.train()
    assert len(shapes) == 4  # one forward pass per step
    for shape, real in zip(shapes, lengths):
        assert shape == (6, 16 if padding == "max_length" else max(real))  # 3 + 3 rows
    if group_by_length:  # the Trainer's sampler groups by length: the first batch holds the longest text
        assert max(lengths[0][:3]) == max(len(ids) for ids in enc["input_ids"])
    with pytest.raises(ValueError, match="padding"):
        tx.TextClsConfig(padding="dynamic")


def test_head_learning_rate_scale_puts_the_classifier_in_its_own_groups(tmp_path):
    import torch

    from oe_common.experiments.experiment import Stage
    from oe_text import GRUClassifierConfig, GRUForSequenceClassification

    tok = word_tokenizer(["what is a cat"])
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=len(tok), embedding_size=4, hidden_size=4, num_labels=3))
    exp = tx.TextClsExperiment(tx.TextClsConfig(dataset="trec", model="gru", head_lr_scale=10.0))
    exp.data = types.SimpleNamespace(tokenizer=tok, train=[{"input_ids": [2, 5, 3], "labels": 0}], outliers=None)
    trainer = exp.make_trainer(Stage("baseline", 1e-3, max_steps=1), model, tmp_path)
    head = {id(p) for p in model.classifier.parameters()}
    lrs = {(id(p) in head): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lrs == {True: pytest.approx(1e-2), False: pytest.approx(1e-3)}
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(model.parameters()))
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decay[id(model.classifier.bias)] == 0.0 and decay[id(model.classifier.weight)] == 0.01
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


def _result(run):
    return run[1]


def test_every_anomaly_set_is_drawn_from_whole(run, data_dir):
    """Issue 24 item 10: the tiny/full presets score every text of every anomaly set (no seeded cap before the
    draws), and n_out_available / n_set report the set's real size."""
    from oe_text.textcls.textcls_data import load_ood_texts

    for preset in ("tiny", "full"):
        for model in ("minilm", "gru"):
            assert tx.preset_config(preset, dataset="clinc150", model=model).ood_examples is None, (preset, model)
    det = [r for r in _result(run)["records"] if r["task"] == "detection" and r["ood_set"] != "mean"]
    sizes = {name: len(load_ood_texts(name, data_dir)) for name in tx.ood_set_names("trec")}
    assert all(r["n_set"] == sizes[r["ood_set"]] and r["n_out_available"] == sizes[r["ood_set"]] for r in det)
    assert all("ood_subset" not in r for r in det)
    # the draws differ: two distinct draws from each set larger than a draw, and a spread between them
    assert all(r["n_draws"] == 2 for r in det if r["n_set"] > r["n_out"])
    assert any(r["auroc_std"] > 0 for r in det if r["stage"] == "baseline" and r["score"] == "msp")


def test_score_is_selected_on_validation_data_and_labelled(run):
    """Issue 23.1: per stage the score with the highest AUROC of the in-distribution validation texts vs held-out
    WikiText-2 valid sentences (TREC has no validation anomalies) is selected; its detection records, and only
    those, carry selected_on; every record says what the stage trained on as outliers and the training split."""
    from sklearn.metrics import roc_auc_score

    records, arrays = _result(run)["records"], _result(run)["arrays"]
    sel = [r for r in records if r["task"] == "selection"]
    assert {(r["stage"], r["score"]) for r in sel} == {(s, k) for s in ("baseline", "oe") for k in tx.TEXTCLS_SCORES}
    for stage in ("baseline", "oe"):
        rows = {r["score"]: r for r in sel if r["stage"] == stage}
        ins, outs = arrays[stage]["validation"], arrays[stage]["selection"]
        for score, row in rows.items():
            y = np.r_[np.zeros(ins[score].size), np.ones(outs[score].size)]
            assert row["auroc"] == pytest.approx(roc_auc_score(y, np.r_[ins[score], outs[score]]))
            assert row["selection_set"] == "wikitext2_valid" and row["n_out"] == outs[score].size
        chosen = [k for k, r in rows.items() if r["selected"]]
        assert chosen == [max(rows, key=lambda k: (rows[k]["auroc"], -rows[k]["fpr95"]))]
        det = [r for r in records if r["task"] == "detection" and r["stage"] == stage]
        assert {r["score"] for r in det if r.get("selected")} == set(chosen)
        assert all(("selected_on" in r) == (r["score"] == chosen[0]) for r in det)
        assert all("trec validation" in r["selected_on"] and "wikitext2_valid" in r["selected_on"] for r in det if r.get("selected"))
    outliers = {(r["stage"], r["outliers"], r["train_split"]) for r in records if "stage" in r}
    assert outliers == {("baseline", "none", "train"), ("oe", "wikitext2", "train")}


def test_select_score_breaks_ties_on_fpr95_and_respects_the_allowed_scores():
    rows = {"msp": {"auroc": 0.9, "fpr95": 0.3}, "knn": {"auroc": 0.95, "fpr95": 0.5}, "energy": {"auroc": 0.95, "fpr95": 0.2}}
    assert tx.select_score(rows) == "energy"
    assert tx.select_score(rows, ("msp", "knn")) == "knn"
    with pytest.raises(ValueError, match="no score"):
        tx.select_score(rows, ("mahalanobis",))


def test_extra_outliers_add_an_oe_stage_from_the_same_baseline_with_the_extra_set_at_its_share(data_dir):
    """Issue 23.2: --extra-outliers clinc150_oos_train adds the stage oe_extra (init = baseline) whose outlier pool
    is WikiText-2 plus the 100 oos_train queries repeated to extra_outlier_share of it."""
    import datasets

    from oe_common.experiments.experiment import Stage
    from oe_text.textcls.textcls_data import load_ood_texts

    cfg = tx.preset_config("test", dataset="clinc150", model="gru", extra_outliers="clinc150_oos_train", extra_outlier_share=0.25)
    exp = tx.TextClsExperiment(cfg)
    assert [(s.name, s.init, s.oe_lambda) for s in exp.stages()] == [
        ("baseline", None, None), ("oe", "baseline", 1.0), ("oe_extra", "baseline", 1.0)]
    assert tx.stage_outliers("oe_extra", cfg) == "wikitext2+clinc150_oos_train"
    extra = load_ood_texts("clinc150_oos_train", data_dir)
    wiki = datasets.Dataset.from_dict({"text": [f"wiki sentence {i}" for i in range(600)]})

    def tokenize(batch):
        return {"n": [len(t) for t in batch["text"]]}

    pool = exp._extra_outlier_pool(wiki, extra, tokenize)
    n_extra = len(pool) - len(wiki)
    assert n_extra == 200 and n_extra / len(pool) == pytest.approx(0.25)  # ceil(1/3 * 600 / 100) = 2 repeats
    exp.data = types.SimpleNamespace(outliers="wiki", extra_outliers="pool")
    assert exp._stage_outliers(Stage("oe_extra", 1e-3, oe_lambda=1.0)) == "pool"
    assert exp._stage_outliers(Stage("oe", 1e-3, oe_lambda=1.0)) == "wiki"
    assert exp._stage_outliers(Stage("baseline", 1e-3)) is None
    with pytest.raises(SystemExit):
        recipe_main(["--extra-outliers", "clinc150_oos_validation"])


def test_sst2_trains_on_the_sentence_level_split_when_asked(data_dir):
    """Issue 23.3: --train-split train_sentences reads sst2/train_sentences.tsv.gz (6,920 whole sentences)."""
    from oe_text.textcls.textcls_data import load_textcls

    full = load_textcls("sst2", data_dir)
    sentences = load_textcls("sst2", data_dir, train_split="train_sentences")
    assert len(sentences.splits["train"]) == 6920 and len(full.splits["train"]) == 67349
    assert sentences.splits["test"]["text"] == full.splits["test"]["text"] and sentences.label_names == ["0", "1"]
    with pytest.raises(ValueError, match="train_sentences"):
        load_textcls("trec", data_dir, train_split="train_sentences")
    with pytest.raises(ValueError, match="train_split"):
        tx.TextClsConfig(dataset="clinc150", train_split="train_sentences")
    assert tx.preset_config("full", dataset="sst2", model="gru", train_split="train_sentences").train_split == "train_sentences"


def test_word_level_tokenizer_keeps_the_most_frequent_training_words_and_unks_the_rest(tmp_path):
    """--word-vocab-size (the paper's torchtext vocabulary): lower-cased words, the N most frequent, others [UNK];
    it saves and reloads as the detector folder's tokenizer."""
    from transformers import AutoTokenizer

    tok = tx.word_level_tokenizer(["The cat sat , on the mat .", "the cat ran"], 3)
    assert len(tok) == 5 + 3
    assert tok.convert_ids_to_tokens(tok("The zebra sat on a CAT!")["input_ids"]) == [
        "[CLS]", "the", "[UNK]", "sat", "[UNK]", "[UNK]", "cat", "[UNK]", "[SEP]"]  # the, cat (2 each), sat (first of 1s)
    assert tok.convert_ids_to_tokens(tok("ran")["input_ids"])[1] == "[UNK]"
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("the zebra cat")["input_ids"] == tok("the zebra cat")["input_ids"]
    with pytest.raises(ValueError, match="word_vocab_size"):
        tx.TextClsConfig(model="minilm", word_vocab_size=100)


def test_cased_word_vocabulary_keeps_capitals_as_other_words(tmp_path):
    """--word-vocab-cased (the paper's SST vocabulary was cased): "The" and "the" are two words, a lower-cased text
    does not match the capitalised word, and the saved tokenizer keeps the case; without --word-vocab-size it is refused."""
    from transformers import AutoTokenizer

    tok = tx.word_level_tokenizer(["The cat sat .", "The dog ran .", "the end"], 3, lowercase=False)
    assert tok.convert_ids_to_tokens(tok("The the THE .")["input_ids"])[1:-1] == ["The", "[UNK]", "[UNK]", "."]
    assert "the" not in tok.get_vocab() and "The" in tok.get_vocab()  # "the" (1x) loses to "The" and "." (2x each)
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("The the")["input_ids"] == tok("The the")["input_ids"]
    lower = tx.word_level_tokenizer(["The cat sat .", "The dog ran .", "the end"], 3)
    assert lower.convert_ids_to_tokens(lower("The the THE")["input_ids"])[1:-1] == ["the"] * 3
    assert tx.TextClsConfig(model="gru", word_vocab_size=10, word_vocab_cased=True).word_vocab_cased
    with pytest.raises(ValueError, match="word_vocab_size too"):
        tx.TextClsConfig(model="gru", word_vocab_cased=True)


def test_rescore_tool_reproduces_the_runs_validation_table_and_applies_set_overrides(run, trec_tokenizer, data_dir, tmp_path,
                                                                                    monkeypatch, repo_script):
    """tools/rescore_textcls_run.py re-runs the recipe's evaluation on a finished run's saved stage models: without
    overrides it gives the run's own validation table (same fitted scores, same texts); ``--set knn_k=3`` changes the
    k-NN scores only, and a field that is not a config field is refused."""
    out, result = run
    tool = repo_script("tools/rescore_textcls_run.py")
    monkeypatch.setattr(tx, "load_tokenizer", lambda model: trec_tokenizer)  # the fixture's run used this tokenizer
    selection = {r["score"]: [r["auroc"], r["fpr95"]] for r in result["records"]
                 if r["task"] == "selection" and r["stage"] == "oe"}

    def table(path):
        rows = json.loads(path.read_text())["stages"]["oe"]["validation"]
        return {score: [row["auroc"], row["fpr95"]] for score, row in rows.items()}

    argv = [str(out), "--stages", "oe", "--test-set", "sst2", "--data-dir", str(data_dir), "--threads", "1"]
    tool.main([*argv, "--bootstrap", "20", "--out", str(tmp_path / "same.json")])
    same = table(tmp_path / "same.json")
    assert same.keys() == selection.keys()
    assert all(np.allclose(same[score], selection[score], rtol=0, atol=1e-9) for score in selection)
    # --bootstrap: the selected score's test AUROC on all test texts vs the whole set, with its interval
    stage = json.loads((tmp_path / "same.json").read_text())["stages"]["oe"]
    drawn = next(r for r in stage["test_of_selected"] if r["ood_set"] == "sst2")
    boot = stage["bootstrap_of_selected"]["sst2"]
    assert (boot["n_in"], boot["n_out"]) == (drawn["n_in"], drawn["n_set"])
    assert boot["auroc"]["low"] <= boot["auroc"]["value"] <= boot["auroc"]["high"] and boot["auroc"]["std"] > 0
    assert abs(boot["auroc"]["value"] - drawn["auroc"]) < 0.1  # the draws' mean over subsets of the same set
    with pytest.raises(SystemExit, match="--bootstrap 1"):
        tool.main([*argv, "--bootstrap", "1", "--out", str(tmp_path / "bad.json")])
    tool.main([*argv, "--set", "knn_k=3", "--out", str(tmp_path / "k3.json")])
    assert json.loads((tmp_path / "k3.json").read_text())["overrides"] == ["knn_k=3"]
    k3 = table(tmp_path / "k3.json")
    changed = {score for score in selection if not np.allclose(k3[score], selection[score], rtol=0, atol=1e-9)}
    assert changed and changed <= {"knn", "knn_mean"}
    with pytest.raises(SystemExit, match="not_a_field"):
        tool.main([*argv, "--set", "not_a_field=1", "--out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="not JSON"):
        tool.main([*argv, "--set", "knn_k=three", "--out", str(tmp_path / "bad.json")])


def test_paper_casing_tool_capitalises_sst2_and_lower_cases_every_other_text(data_dir, capsys, repo_script):
    """tools/sst2_paper_casing.py (a diagnostic of the paper code's casing): inside ``paper_casing()`` the SST-2 texts
    start with a capital, the outliers, the selection set and every anomaly set are lower-case, a cased word vocabulary
    keeps the capitals; on exit the recipe's readers are the library's again."""
    from oe_text.textcls.textcls_data import load_textcls

    tool = repo_script("tools/sst2_paper_casing.py")
    originals = (tx.load_textcls, tx.named_anomaly_sets, tx.load_outlier_corpus, tx.wikitext_sentences)
    cfg = tx.preset_config("test", dataset="sst2", model="gru", train_split="train_sentences", word_vocab_size=2000,
                           word_vocab_cased=True)
    with tool.paper_casing():
        data = tx.TextClsExperiment(cfg).load_data(data_dir)
        with pytest.raises(ValueError, match="SST-2 only"):
            tx.TextClsExperiment(tx.preset_config("test", dataset="trec", model="gru")).load_data(data_dir)
    assert (tx.load_textcls, tx.named_anomaly_sets, tx.load_outlier_corpus, tx.wikitext_sentences) == originals
    plain = load_textcls("sst2", data_dir, train_split="train_sentences").splits["train"]["text"]
    assert data.train_texts[:50] == [tool.capitalise_first_letter(t) for t in plain[:50]]
    for texts in (data.train_texts, data.validation_texts, data.test_texts):
        assert all(t[:1] == t[:1].upper() for t in texts) and any(t[:1] != t[:1].lower() for t in texts)
    others = [*data.selection_texts, *data.outlier_corpus.texts["text"], *(t for ts in data.ood.values() for t in ts)]
    assert all(t == t.lower() for t in others) and len(data.ood) == 8
    assert "It" in data.tokenizer.get_vocab() and data.tokenizer("It it")["input_ids"][1] != data.tokenizer("it")["input_ids"][1]
    with pytest.raises(SystemExit) as exc:
        tool.main(["--dataset", "trec"])
    assert exc.value.code == 2 and "--dataset sst2" in capsys.readouterr().err
