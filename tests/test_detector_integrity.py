"""Issue #24, items 2, 8, 9 and part of 14: a detector folder is never overwritten by the CLI's outputs, a
NaN / Infinity threshold and a file changed after the save do not load, and ``--batch-size 0`` is a usage error.

Each test failed before the fix (the file was overwritten with exit 0, the detector loaded and flagged nothing, the
swapped tokenizer loaded silently, ``--batch-size 0`` was blamed on the checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from oe_common.deployment import cli
from oe_common.deployment.detector import DETECTOR_CONFIG_NAME, DetectorCheckpointError, OODDetector

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
WORDS = "the a cat dog sat on mat is good bad movie what how where".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = ["the cat sat on the mat", "what a good movie", "how bad is the dog", "where is the cat"]


def _tokenizer_detector() -> OODDetector:
    from transformers import BertTokenizer

    from oe_text import GRUClassifierConfig, GRUForSequenceClassification, TokenizerPreprocessing

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(SPECIAL + WORDS)})
    torch.manual_seed(0)
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=len(tok), embedding_size=8, hidden_size=8, num_labels=3, pad_token_id=0))
    return OODDetector(model, TokenizerPreprocessing(tok, max_length=16), device="cpu", progress=False, threshold=-0.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _tokenizer_detector().save_pretrained(tmp_path_factory.mktemp("detectors") / "good")


@pytest.fixture
def model_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "det"))


@pytest.fixture
def lines(tmp_path) -> Path:
    path = tmp_path / "x.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# =============================================================================================== item 2
def test_cli_outputs_inside_the_model_folder_are_refused(model_copy, lines, tmp_path, capsys):
    before = _snapshot(model_copy)
    link = tmp_path / "link.json"
    link.symlink_to(model_copy / "config.json")  # a symlink elsewhere that points into the folder
    sub = model_copy / "results"
    sub.mkdir()
    cases = [
        ["score", "--model", model_copy, "--input", lines, "--output", model_copy / "tokenizer.json"],
        ["score", "--model", model_copy, "--input", lines, "--output", sub / "scores.jsonl"],  # a new file in a subfolder
        ["score", "--model", model_copy, "--input", lines, "--output", link],
        ["eval", "--model", model_copy, "--in", lines, "--out", lines, "--ratio", "1", "--json", model_copy / DETECTOR_CONFIG_NAME],
        ["eval", "--model", tmp_path / "det" / ".." / "det", "--in", lines, "--out", lines, "--ratio", "1", "--json", model_copy / "new.json"],
    ]
    for argv in cases:
        code, out, err = _run(argv, capsys)
        message = err.strip().splitlines()
        assert code == 2 and len(message) == 1 and "is inside the model folder" in message[0], (argv, err)
        flag = "--output" if argv[0] == "score" else "--json"
        assert message[0].startswith(f"oe {argv[0]}: error: {flag} ") and out == ""
    assert _snapshot(model_copy) == before and not list(sub.iterdir()) and not (model_copy / "new.json").exists()
    OODDetector.from_pretrained(model_copy, device="cpu")  # still loads
    # outside the folder (a sibling whose name starts the same way included) is written as before
    sibling = tmp_path / "det-scores.jsonl"
    code, out, err = _run(["score", "--no-progress", "--model", model_copy, "--input", lines, "--output", sibling], capsys)
    assert code == 0, err
    assert len(sibling.read_text().splitlines()) == len(TEXTS)


def test_hard_link_to_a_model_file_is_refused(model_copy, lines, tmp_path, capsys):
    link = tmp_path / "hard.json"
    try:
        os.link(model_copy / "tokenizer_config.json", link)
    except OSError:
        pytest.skip("no hard links on this file system")
    code, _, err = _run(["score", "--model", model_copy, "--input", lines, "--output", link], capsys)
    assert code == 2 and "is inside the model folder" in err


# =============================================================================================== item 8
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", '"0.5"', "true"])
def test_a_non_finite_threshold_in_the_config_does_not_load(model_copy, lines, value, capsys):
    path = model_copy / DETECTOR_CONFIG_NAME
    path.write_text(path.read_text().replace('"threshold": -0.5', f'"threshold": {value}'))
    assert json.loads(path.read_text())["threshold"] != -0.5
    with pytest.raises(DetectorCheckpointError) as err:
        OODDetector.from_pretrained(model_copy, device="cpu")
    message = str(err.value)
    assert str(path) in message and '"threshold"' in message and "\n" not in message
    code, out, err_text = _run(["score", "--model", model_copy, "--input", lines], capsys)
    assert code == 1 and out == "" and len(err_text.strip().splitlines()) == 1 and '"threshold"' in err_text


def test_a_non_finite_threshold_is_refused_in_memory():
    det = _tokenizer_detector()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            OODDetector(det.model, det.preprocessing, device="cpu", threshold=bad)
        det.threshold = bad
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            det.predict_from_scores([0.1, 0.2])


# =============================================================================================== item 9
def _swap_two_token_ids(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    path.write_text(json.dumps(data), encoding="utf-8")


def test_config_records_the_sha256_of_every_saved_file(saved):
    import hashlib

    recorded = json.loads((saved / DETECTOR_CONFIG_NAME).read_text())["file_sha256"]
    on_disk = {p.name for p in saved.iterdir() if p.is_file()} - {DETECTOR_CONFIG_NAME}
    assert set(recorded) == on_disk and {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= on_disk
    assert all(hashlib.sha256((saved / name).read_bytes()).hexdigest() == digest for name, digest in recorded.items())


def test_a_tokenizer_with_two_ids_swapped_does_not_load(model_copy, lines, capsys):
    _swap_two_token_ids(model_copy / "tokenizer.json")
    with pytest.raises(DetectorCheckpointError) as err:
        OODDetector.from_pretrained(model_copy, device="cpu")
    message = str(err.value)
    assert str(model_copy / "tokenizer.json") in message and "sha256" in message and "\n" not in message
    code, out, err_text = _run(["score", "--model", model_copy, "--input", lines], capsys)
    lines_out = err_text.strip().splitlines()
    assert code == 1 and out == "" and len(lines_out) == 1 and str(model_copy / "tokenizer.json") in lines_out[0]


def test_a_folder_saved_without_hashes_loads_with_a_warning(model_copy, saved, caplog):
    """Folders saved before hashes were recorded still load (nothing to check them against), with a warning."""
    path = model_copy / DETECTOR_CONFIG_NAME
    config = json.loads(path.read_text())
    del config["file_sha256"]
    path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="oe_common.deployment.detector"):
        loaded = OODDetector.from_pretrained(model_copy, device="cpu", progress=False)
    assert any("records no file hashes" in r.getMessage() for r in caplog.records)
    reference = OODDetector.from_pretrained(saved, device="cpu", progress=False)
    np.testing.assert_allclose(loaded.score(TEXTS), reference.score(TEXTS), rtol=1e-6)
    config["file_sha256"] = {"../outside": "0" * 64}
    path.write_text(json.dumps(config))
    with pytest.raises(DetectorCheckpointError, match="file_sha256"):
        OODDetector.from_pretrained(model_copy, device="cpu")


def test_a_recorded_file_that_is_gone_is_named_as_missing(model_copy):
    (model_copy / "README.md").unlink()
    with pytest.raises(DetectorCheckpointError, match="is missing README.md"):
        OODDetector.from_pretrained(model_copy, device="cpu")


def test_saving_again_into_the_folder_records_the_new_files(model_copy):
    det = OODDetector.from_pretrained(model_copy, device="cpu", progress=False)
    (model_copy / "notes.txt").write_text("the user's file, not the detector's\n")
    det.threshold = 0.25
    det.save_pretrained(model_copy)
    recorded = json.loads((model_copy / DETECTOR_CONFIG_NAME).read_text())["file_sha256"]
    assert "notes.txt" not in recorded and "tokenizer.json" in recorded
    (model_copy / "notes.txt").write_text("edited")  # not the detector's: loading does not depend on it
    assert OODDetector.from_pretrained(model_copy, device="cpu").threshold == 0.25


# =============================================================================================== item 14 (part)
@pytest.mark.parametrize("command", ["score", "eval"])
def test_batch_size_zero_is_a_usage_error_about_the_flag(saved, lines, command, capsys):
    argv = ["score", "--model", saved, "--input", lines] if command == "score" else ["eval", "--model", saved, "--in", lines, "--out", lines]
    code, out, err = _run([*argv, "--batch-size", "0"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"oe {command}: error: argument --batch-size: must be a positive integer")
    assert "checkpoint" not in err and "detector" not in err
