"""Issue #14, items 6-8 and 10: corrupt checkpoints, bad output paths, byte-order marks, argument checks.

Every test here failed before the fix (a traceback, a wrong exit code, a changed score, a lost file).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from oe_common.deployment import cli
from oe_common.deployment.detector import DetectorCheckpointError, OODDetector, threshold_for_fpr, threshold_for_tpr
from oe_text.lm.preprocessing import TextPreprocessing
from oe_common.maths.metrics import evaluate_ood, fpr_at_recall, ood_metrics
from oe_text.lm.models import build_language_model
from oe_text.lm.vocab import Vocabulary

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
WORDS = [f"w{i}" for i in range(12)]


def _detector() -> OODDetector:
    vocab = Vocabulary.build(WORDS)
    torch.manual_seed(0)
    model = build_language_model("lstm", len(vocab), "tiny", embedding_size=8, hidden_size=16)
    return OODDetector(model, TextPreprocessing(vocab, seq_len=5), device="cpu", threshold=2.0, progress=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _detector().save_pretrained(tmp_path_factory.mktemp("models") / "good")


@pytest.fixture
def model_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


@pytest.fixture
def lines(tmp_path) -> Path:
    path = tmp_path / "x.txt"
    path.write_text("w1 w2 w3\nw4 w5\n", encoding="utf-8")
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _commands(model: Path, lines: Path) -> list[list]:
    return [["score", "--no-progress", "--model", model, "--input", lines],
            ["eval", "--no-progress", "--model", model, "--in", lines, "--out", lines, "--ratio", "1"]]


# =============================================================================================== item 6
def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:2000])


def _empty(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def _nan(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _bad_json_vocab(folder: Path) -> None:
    (folder / "vocab.json").write_text('{"tokens": ["a"', encoding="utf-8")


def _wrong_vocab(folder: Path) -> None:  # valid JSON, not a vocabulary
    data = json.loads((folder / "vocab.json").read_text())
    del data["tokens"]
    (folder / "vocab.json").write_text(json.dumps(data), encoding="utf-8")


def _vocab_not_an_object(folder: Path) -> None:
    (folder / "vocab.json").write_text("[1, 2, 3]", encoding="utf-8")


@pytest.mark.parametrize(
    "damage, file_name",
    [(_truncate, "model.safetensors"), (_empty, "model.safetensors"), (_nan, "model.safetensors"),
     (_bad_json_vocab, "vocab.json"), (_wrong_vocab, "vocab.json"), (_vocab_not_an_object, "vocab.json")],
)
def test_corrupt_checkpoint_files_are_one_line_errors_naming_the_file(model_copy, lines, damage, file_name, capsys):
    damage(model_copy)
    for argv in _commands(model_copy, lines):
        code, out, err = _run(argv, capsys)
        assert code == 1, (argv[0], err)
        message = err.strip().splitlines()
        assert len(message) == 1 and message[0].startswith(f"oe {argv[0]}: error:"), err
        assert str(model_copy / file_name) in message[0], message[0]
        assert out == ""
    with pytest.raises(DetectorCheckpointError, match=file_name):
        OODDetector.from_pretrained(model_copy, device="cpu")


def test_nan_scores_are_refused(capsys, lines):
    det = _detector()
    with pytest.raises(ValueError, match="NaN"):
        det.predict_from_scores([0.5, float("nan"), 3.0])
    assert det.predict_from_scores(np.array([0.5, 3.0])).tolist() == [False, True]
    assert det.predict_from_scores(torch.tensor([3.0])).tolist() == [True]


# =============================================================================================== item 7
def _never_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the detector was loaded (and would have scored) before the output was checked")

    monkeypatch.setattr(OODDetector, "from_pretrained", classmethod(fail))


def test_unwritable_output_folder_fails_before_scoring(saved, lines, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    real_mkstemp = cli.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # a read-only folder, also when the tests run as root
        if dir is not None and Path(dir) == out_dir:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cli.tempfile, "mkstemp", mkstemp)
    _never_load(monkeypatch)
    code, out, err = _run(["score", "--model", saved, "--input", lines, "--output", out_dir / "s.jsonl"], capsys)
    assert code == 1 and "cannot write" in err and str(out_dir) in err and len(err.strip().splitlines()) == 1
    assert not list(out_dir.iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_folder_with_chmod(saved, lines, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    _never_load(monkeypatch)
    try:
        code, _, err = _run(["score", "--model", saved, "--input", lines, "--output", out_dir / "s.jsonl"], capsys)
    finally:
        out_dir.chmod(0o755)
    assert code == 1 and "cannot write" in err


def test_output_equal_to_input_is_refused(saved, lines, tmp_path, monkeypatch, capsys):
    before = lines.read_bytes()
    link = tmp_path / "link.txt"
    link.symlink_to(lines)
    sub = tmp_path / "sub"
    sub.mkdir()
    spellings = [
        (lines, lines),
        (lines, tmp_path / "sub" / ".." / "x.txt"),  # another spelling of the same path
        (link, lines),  # the input is a symlink to the output
        (lines, link),  # the output is a symlink to the input
    ]
    _never_load(monkeypatch)
    for source, output in spellings:
        code, _, err = _run(["score", "--model", saved, "--input", source, "--output", output], capsys)
        assert code == 1 and "is the input file" in err, (source, output, err)
    code, _, err = _run(["eval", "--model", saved, "--in", lines, "--out", lines, "--json", link], capsys)
    assert code == 1 and "is the input file" in err
    assert lines.read_bytes() == before


def test_a_permission_error_at_write_time_is_a_clean_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "mkstemp", refuse)
    with pytest.raises(cli.CliError, match="cannot write"):
        cli.atomic_write_text(tmp_path / "s.jsonl", "x\n")


# =============================================================================================== item 8
def test_byte_order_mark_does_not_change_the_first_score(saved, tmp_path, capsys):
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("w1 w2 w3\nw4 w5\n", encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    scores = {}
    for path in (plain, bom):
        code, out, err = _run(["score", "--no-progress", "--model", saved, "--input", path], capsys)
        assert code == 0, err
        scores[path.name] = [json.loads(line)["score"] for line in out.splitlines()]
    assert scores["bom.txt"] == scores["plain.txt"]
    assert cli.read_text_lines(bom) == ["w1 w2 w3", "w4 w5"]


def test_standard_input(saved, monkeypatch, capsys):
    import io
    import sys

    class Stdin:
        buffer = io.BytesIO(b"\xef\xbb\xbfw1 w2 w3\r\nw4 w5\n")

    monkeypatch.setattr(sys, "stdin", Stdin)
    code, out, err = _run(["score", "--no-progress", "--model", saved, "--input", "-"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    expected = OODDetector.from_pretrained(saved, device="cpu", progress=False).score(["w1 w2 w3", "w4 w5"])
    assert [r["score"] for r in rows] == pytest.approx(expected.tolist(), rel=1e-12)


# =============================================================================================== item 10
def test_fit_threshold_checks_the_target_before_scoring(monkeypatch):
    det = _detector()
    calls = []
    monkeypatch.setattr(det, "score", lambda data: calls.append(len(data)) or np.zeros(len(data)))
    for kwargs in ({"target_fpr": 1.5}, {"target_fpr": True}, {}, {"target_fpr": 0.1, "target_tpr": 0.9},
                   {"target_tpr": 0.9}, {"target_tpr": 0.0}):
        with pytest.raises(ValueError):
            det.fit_threshold(["w1 w2"] * 10, **kwargs)
    assert calls == []  # nothing was scored
    with pytest.raises(ValueError):
        det.fit_threshold(["w1"], ["w2"], target_tpr=float("nan"))
    assert calls == []


def test_numpy_numbers_are_accepted_and_bools_refused():
    rng = np.random.default_rng(0)
    ins, outs = rng.normal(size=200), rng.normal(1.0, 1.0, size=100)
    assert ood_metrics(ins, outs, recall_level=np.float32(0.95)) == ood_metrics(ins, outs, recall_level=0.95)
    assert fpr_at_recall(ins, outs, np.float64(0.9)) == fpr_at_recall(ins, outs, 0.9)
    table = evaluate_ood(ins, {"x": outs}, recall_level=np.float32(0.95))
    assert table.recall_level == 0.95 and table.fpr_label == "FPR95"
    for bad in (True, np.bool_(True), float("nan"), "0.95"):
        with pytest.raises(ValueError, match="recall_level"):
            ood_metrics(ins, outs, recall_level=bad)
    assert threshold_for_fpr(ins, np.float32(0.1)) == threshold_for_fpr(ins, 0.1)
    assert threshold_for_tpr(ins, outs, np.float32(0.9)) == threshold_for_tpr(ins, outs, 0.9)
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(ins, False)
    with pytest.raises(ValueError, match="target_tpr"):
        threshold_for_tpr(ins, outs, True)
    det = _detector()
    det.fit_threshold_from_scores(ins, target_fpr=np.float32(0.1))
    assert det.threshold_info["target_fpr"] == 0.1


def test_save_pretrained_keeps_a_users_readme(tmp_path):
    from oe_common.deployment.model_card import is_oe_model_card

    folder = tmp_path / "det"
    folder.mkdir()
    user_readme = "# My project\n\nNotes I do not want to lose.\n"
    (folder / "README.md").write_text(user_readme)
    with pytest.raises(DetectorCheckpointError, match="README.md"):
        _detector().save_pretrained(folder)
    assert (folder / "README.md").read_text() == user_readme
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]  # nothing written beside it
    # another library's card (front matter without our library_name) is the user's too
    other = "---\nlibrary_name: transformers\n---\n# GPT-2 fine-tune\n"
    (folder / "README.md").write_text(other)
    with pytest.raises(DetectorCheckpointError):
        _detector().save_pretrained(folder)
    # our own card is replaced on a re-save
    (folder / "README.md").unlink()
    _detector().save_pretrained(folder)
    assert is_oe_model_card((folder / "README.md").read_text())
    _detector().save_pretrained(folder)
    assert not is_oe_model_card(user_readme) and not is_oe_model_card(other) and not is_oe_model_card("---\n: [\n---\n")


def test_save_pretrained_removes_stale_weight_files(tmp_path):
    folder = _detector().save_pretrained(tmp_path / "det")
    stale_index = {"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(stale_index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"old")
    _detector().save_pretrained(folder)
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names
    assert "model.safetensors.index.json" not in names and "model-00001-of-00002.safetensors" not in names
    OODDetector.from_pretrained(folder, device="cpu")
