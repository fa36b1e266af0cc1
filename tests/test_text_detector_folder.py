"""Issue #14 item 5: the PTB recipes write ``<output_dir>/detector/``, a detector that scores raw sentences."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from oe_common.deployment import cli
from oe_common.deployment.detector import OODDetector, threshold_for_fpr
from oe_text.lm.data import load_text_oe_data, ptb_stream, ptb_vocab
from oe_text.lm.models import build_language_model
from oe_text.lm.normalize import normalize_text

TORCH_THREADS = 1  # small models: see the conftest fixture _torch_threads


def _ptb_file_lines(data_dir, name: str) -> list[str]:
    return [line.strip() for line in (data_dir / "ptb" / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_stream_lines_give_back_the_ptb_validation_sentences(data_dir):
    from oe_text.lm.lm_experiment import stream_lines

    word_lines = _ptb_file_lines(data_dir, "ptb.valid.txt")
    word_vocab = ptb_vocab("word", data_dir)
    assert stream_lines(ptb_stream("valid", "word", data_dir, vocab=word_vocab), word_vocab) == word_lines
    # char level: the characters with "_" turned back into spaces are the word lines, and the detector's
    # ptb_char normaliser maps them back to the PTB-char file exactly
    char_vocab = ptb_vocab("char", data_dir)
    char_lines = stream_lines(ptb_stream("valid", "char", data_dir, vocab=char_vocab), char_vocab)
    assert char_lines == word_lines
    char_file = _ptb_file_lines(data_dir, "ptb.char.valid.txt")
    charset = char_vocab.symbols()
    assert [normalize_text(line, "ptb_char", charset) for line in char_lines[:300]] == [line.split() for line in char_file[:300]]


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory, data_dir):
    from oe_text.lm.lm_experiment import preset_config

    cfg = preset_config("word", "test", valid_windows=6, protocols=("clean",), n_draws=2)
    data = load_text_oe_data("word", data_dir, protocol="clean")
    rng = np.random.default_rng(0)
    fake = {"nll": {"ptb/test": rng.normal(size=100), "clean/email": rng.normal(2, 1, 40), "clean/weblog": rng.normal(0.5, 1, 40)}}
    folder, records = _detector_from_fake_scores(cfg, data, fake, tmp_path_factory.mktemp("run"))
    return folder, cfg, data, records


def _detector_from_fake_scores(cfg, data, scores, output_dir):
    """The experiment's detector hook on an untrained model and stages evaluated on ``scores``, saved as the runner
    saves it; returns the folder and the records."""
    from oe_text.lm.lm_experiment import PTBLanguageModelExperiment

    experiment = PTBLanguageModelExperiment(cfg)
    experiment.data = data
    torch.manual_seed(0)
    model = build_language_model(cfg.model, len(data.vocab), cfg.model_preset)
    results = {stage: experiment.detection_result(stage, scores) for stage in ("baseline", "oe")}
    detector = experiment.detector(results, {"oe": model})
    return detector.save_pretrained(output_dir / "detector"), [r for result in results.values() for r in result.records]


def test_detector_folder_contents_and_threshold(saved_detector, data_dir):
    folder, cfg, data, records = saved_detector
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "detector_config.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    det = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert det.task == "causal-lm" and det.score_name == "nll" and det.preprocessing.normalizer == "ptb"
    # provenance: the datasets, then the run's settings from its config
    assert (det.training["in_distribution_dataset"], det.training["test_anomaly_datasets"]) == ("ptb", [f"ewt/clean/{d}" for d in ("answers", "email", "newsgroup", "reviews", "weblog")])
    assert (det.training["oe_lambda"], det.training["model"], det.training["valid_windows"]) == (cfg.oe_lambda, cfg.model, 6)
    assert det.preprocessing.seq_len == data.seq_len and len(det.vocab) == 10_000
    # the threshold: 5% false alarms on the complete PTB validation sentences inside the run's 6 validation windows
    stream = data.streams["ptb/valid"][: 6 * (data.seq_len + 1)]
    n_lines = int((stream == data.vocab.eos_id).sum())
    lines = _ptb_file_lines(data_dir, "ptb.valid.txt")[:n_lines]
    info = det.threshold_info
    assert info["rule"] == "target_fpr" and info["target_fpr"] == 0.05 and info["n_in"] == n_lines >= 10
    scores = det.score(lines)  # other batches than the recipe's (eval_batch_size): equal up to float rounding
    assert det.threshold == pytest.approx(threshold_for_fpr(scores, 0.05), rel=1e-6)
    assert np.mean(scores > det.threshold * (1 + 1e-6 * np.sign(det.threshold))) <= 0.05 == info["target_fpr"]
    # the stored evaluation is the recipe's own OE / nll / clean records
    (mean,) = [r for r in records if (r["stage"], r["protocol"], r["ood_set"]) == ("oe", "clean", "mean")]
    rows = {row["name"]: row for row in det.evaluation["rows"]}
    assert set(rows) == {"email", "weblog", "mean"} and rows["mean"]["auroc"] == mean["auroc"]
    card = (folder / "README.md").read_text()
    assert "PTB validation sentences" in card and "5.00%" in card and "windows of 70 word tokens" in card


def test_raw_english_is_normalised_like_ptb(saved_detector):
    folder = saved_detector[0]
    det = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    raw, ptb = det.score(["The Stock Market fell 5 % , analysts said .", "the stock market fell N % analysts said"])
    assert raw == ptb


def test_oe_score_runs_on_the_detector_folder(saved_detector, tmp_path, capsys):
    folder = saved_detector[0]
    sentences = tmp_path / "x.txt"
    sentences.write_text("the stock market fell\nlol idk wat ur talking about !!!\n", encoding="utf-8")
    assert cli.main(["score", "--no-progress", "--model", str(folder), "--input", str(sentences)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(isinstance(r["is_anomaly"], bool) for r in rows)


@pytest.mark.slow
def test_run_text_oe_writes_the_detector_folder(tmp_path, data_dir):
    from oe_text.lm.lm_experiment import preset_config, run_text_oe

    cfg = preset_config("word", "test", baseline_max_steps=2, oe_max_steps=2, eval_steps=2, oe_eval_steps=2, ewt_windows=20,
                        test_windows=50, valid_windows=4, n_draws=1, protocols=("clean",))
    result = run_text_oe(cfg, tmp_path, data_dir=data_dir)
    folder = tmp_path / "detector"
    assert result["paths"]["detector"] == folder
    config = json.loads((folder / "detector_config.json").read_text())
    assert config["threshold_info"]["target_fpr"] == 0.05 and config["training"]["recipe"] == "recipes/ptb_word_oe.py"
    # the README's line: a sentence on standard input, scored by the saved detector
    proc = subprocess.run([sys.executable, "-m", "oe_common.deployment.cli", "score", "--no-progress", "--model", str(folder), "--input", "-"],
                          input="the stock market fell\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    det = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert row["score"] == pytest.approx(float(det.score("the stock market fell")[0]), rel=1e-6)
    assert row["is_anomaly"] == bool(row["score"] > config["threshold"])


def test_char_detector_reads_raw_english_like_the_spelled_protocol(tmp_path, data_dir):
    """Issue #16: the char recipe's detector reads raw English with the ``spelled`` rule (its card shows the
    ``spelled`` records), while its threshold is fitted on PTB validation read as in training (``ptb_char``:
    ``spelled`` would turn PTB's ``N`` and ``<unk>`` into letters)."""
    from oe_text.lm.lm_experiment import preset_config

    cfg = preset_config("char", "test", valid_windows=3, protocols=("spelled", "clean"), n_draws=2)
    data = load_text_oe_data("char", data_dir, protocol=("spelled", "clean"))
    rng = np.random.default_rng(0)
    fake = {"nll": {"ptb/test": rng.normal(size=100), "spelled/email": rng.normal(2, 1, 40), "clean/email": rng.normal(0.5, 1, 40)}}
    folder, records = _detector_from_fake_scores(cfg, data, fake, tmp_path)
    det = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert det.preprocessing.normalizer == "spelled"
    (mean,) = [r for r in records if (r["stage"], r["protocol"], r["ood_set"]) == ("oe", "spelled", "mean")]
    assert {row["name"]: row["auroc"] for row in det.evaluation["rows"]}["mean"] == mean["auroc"]
    stream = data.streams["ptb/valid"][: 3 * (data.seq_len + 1)]
    n_lines = int((stream == data.vocab.eos_id).sum())
    lines = _ptb_file_lines(data_dir, "ptb.valid.txt")[:n_lines]
    as_trained = OODDetector(det.model, type(det.preprocessing)(data.vocab, normalizer="ptb_char", seq_len=data.seq_len),
                             score="nll", device="cpu", progress=False)
    assert det.threshold == threshold_for_fpr(as_trained.score(lines), 0.05)
    assert "ptb_char" in det.threshold_info["data"]
    # a raw sentence goes through the spelled rule: numbers become N, capitals lower-case
    assert det.preprocessing.encode(["The 3 cats."])[0].tolist() == data.vocab.encode(["<eos>", *"the_N_cats", "<eos>"]).tolist()
