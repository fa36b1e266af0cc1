"""The `oe` command line: score / eval / train driven through main([...]), bad inputs, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oe_common.deployment import cli, plugins
from oe_common.deployment.detector import OODDetector
from oe_text.lm.preprocessing import TextPreprocessing
from oe_vision.preprocessing import ImagePreprocessing
from oe_text.lm.models import build_language_model
from oe_text.lm.vocab import Vocabulary
from oe_vision import MnistConvNetConfig, MnistConvNetForImageClassification

WORDS = [f"w{i}" for i in range(12)]


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    vocab = Vocabulary.build(WORDS)
    torch.manual_seed(0)
    model = build_language_model("lstm", len(vocab), "tiny", embedding_size=8, hidden_size=16)
    det = OODDetector(model, TextPreprocessing(vocab, seq_len=5), device="cpu", training={"oe_lambda": 0.5})
    det.fit_threshold(["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w0"], target_fpr=0.25)
    return det.save_pretrained(tmp_path_factory.mktemp("models") / "text")


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MnistConvNetForImageClassification(MnistConvNetConfig(image_size=16))
    det = OODDetector(model, ImagePreprocessing(size=16, channels=1), device="cpu", threshold=-0.5)
    return det.save_pretrained(tmp_path_factory.mktemp("models") / "image")


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def image_folder(path: Path, values) -> Path:
    path.mkdir()
    for i, v in enumerate(values):
        Image.fromarray(np.full((20, 20), v, dtype=np.uint8)).save(path / f"img{i:02d}.png")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# =============================================================================================== help
@pytest.mark.parametrize("command", [[], ["score"], ["eval"], ["train"]])
def test_help(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    assert "usage: oe" in capsys.readouterr().out


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "oe_common.deployment.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "score" in result.stdout and "eval" in result.stdout and "train" in result.stdout


def test_usage_error_exit_code(capsys):
    assert cli.main(["score", "--input", "x.txt"]) == 2  # --model missing
    assert "--model" in capsys.readouterr().err


# =============================================================================================== score
def test_score_text_file(text_model, tmp_path, capsys):
    lines = ["w1 w2 w3", "w4 unknown words here", "w5 " * 12]
    src = write_lines(tmp_path / "in.txt", lines)
    out = tmp_path / "scores.jsonl"
    assert cli.main(["score", "--model", str(text_model), "--input", str(src), "--output", str(out), "--batch-size", "2"]) == 0
    records = read_jsonl(out)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(set(r) == {"index", "score", "is_anomaly"} and isinstance(r["is_anomaly"], bool) for r in records)
    expected = OODDetector.from_pretrained(text_model, device="cpu").score(lines)
    np.testing.assert_allclose([r["score"] for r in records], expected, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "scores.jsonl"]  # no temp file left

    assert cli.main(["score", "--model", str(text_model), "--input", str(src), "--device", "cpu"]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == records


def test_score_image_folder(image_model, tmp_path):
    folder = image_folder(tmp_path / "imgs", [0, 128, 255])
    (folder / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "s.jsonl"
    assert cli.main(["score", "--model", str(image_model), "--input", str(folder), "--output", str(out)]) == 0
    records = read_jsonl(out)
    assert [r["file"] for r in records] == ["img00.png", "img01.png", "img02.png"]
    assert all(-1.0 <= r["score"] <= -0.1 for r in records)


def test_missing_input_fails_without_output(text_model, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    code = cli.main(["score", "--model", str(text_model), "--input", str(tmp_path / "nope.txt"), "--output", str(out)])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_empty_line_fails_naming_the_line(text_model, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["w1 w2", "", "w3"])
    out = tmp_path / "scores.jsonl"
    assert cli.main(["score", "--model", str(text_model), "--input", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "empty" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_over_long_line_with_long_text_error(text_model, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["w1", "w2 " * 30])
    code = cli.main(["score", "--model", str(text_model), "--input", str(src), "--long-text", "error"])
    assert code == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "longer than seq_len=5" in err


def test_unreadable_image_is_named(image_model, tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", [10, 20])
    (folder / "img05.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "s.jsonl"
    assert cli.main(["score", "--model", str(image_model), "--input", str(folder), "--output", str(out)]) == 1
    assert "img05.png" in capsys.readouterr().err
    assert not out.exists()


def test_wrong_input_kind_and_bad_model(text_model, image_model, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["w1"])
    assert cli.main(["score", "--model", str(image_model), "--input", str(src)]) == 1
    assert "FOLDER" in capsys.readouterr().err
    assert cli.main(["score", "--model", str(text_model), "--input", str(tmp_path)]) == 1
    assert "one example per line" in capsys.readouterr().err
    assert cli.main(["score", "--model", str(tmp_path / "no-model"), "--input", str(src)]) == 1
    assert "does not exist" in capsys.readouterr().err


# =============================================================================================== eval
def test_eval_prints_the_metrics_table(text_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    in_file = write_lines(tmp_path / "ptb.txt", [" ".join(rng.choice(WORDS[:6], 5)) for _ in range(20)])
    out_a = write_lines(tmp_path / "email.txt", [" ".join(rng.choice(WORDS[6:], 7)) for _ in range(8)])
    out_b = write_lines(tmp_path / "reviews.txt", ["x y z " * 3 for _ in range(8)])
    report = tmp_path / "table.json"
    argv = ["eval", "--model", str(text_model), "--in", str(in_file), "--out", str(out_a), str(out_b),
            "--recall-level", "0.9", "--json", str(report)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| D_out^test | FPR90 ↓ | AUROC ↑ | AUPR ↑ |" in table
    assert "| email |" in table and "| reviews |" in table and "**mean**" in table
    rows = json.loads(report.read_text())["rows"]
    assert [r["name"] for r in rows] == ["email", "reviews", "mean"] and rows[0]["n_out"] == 4


def test_eval_bad_anomaly_file(text_model, tmp_path, capsys):
    in_file = write_lines(tmp_path / "ptb.txt", ["w1 w2"] * 10)
    assert cli.main(["eval", "--model", str(text_model), "--in", str(in_file), "--out", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err


# =============================================================================================== train
def test_train_unknown_and_missing_recipe(tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "no-such-recipe"]) == 1
    assert "unknown recipe" in capsys.readouterr().err
    monkeypatch.setattr(plugins, "_RECIPES", dict(plugins._RECIPES))
    plugins.register_recipe("ghost", "oe_ghost_recipe_module_that_does_not_exist:main")
    assert cli.main(["train", "ghost", "--preset", "tiny"]) == 1
    assert "oe_ghost_recipe_module_that_does_not_exist" in capsys.readouterr().err
    assert cli.main(["train", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(plugins.recipes()) and "ptb-word" in plugins.recipes()


def test_every_listed_recipe_is_an_importable_main():
    for name, recipe in plugins.recipes().items():
        assert callable(recipe.load()), name


def test_the_modality_packages_register_their_recipes_through_the_entry_point_group():
    """`oe train --list` in a fresh interpreter: nothing imported by hand, the installed entry points find every recipe."""
    code = "import json; from oe_common.deployment.plugins import recipes; print(json.dumps(sorted(recipes())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["cifar10", "mnist", "pixelcnn", "ptb-char", "ptb-word", "text-classification"]


def test_train_runs_the_recipe_in_process_with_its_arguments(tmp_path, monkeypatch):
    record = tmp_path / "argv.json"
    (tmp_path / "oe_toy_recipe.py").write_text(
        "import argparse, json, sys\n"
        "def main(level, argv=None):\n"
        f"    json.dump([level, argv], open({str(record)!r}, 'w'))\n"
        "    argparse.ArgumentParser(prog='toy').parse_args([a for a in argv if a != '--fail'][2:])\n"
        "    if '--fail' in argv: raise SystemExit(3)\n"
        "    return {'ok': 1}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_RECIPES", dict(plugins._RECIPES))
    plugins.register_recipe("toy", "oe_toy_recipe:main", level="word")
    assert cli.main(["train", "toy", "--preset", "tiny"]) == 0
    assert json.loads(record.read_text()) == ["word", ["--preset", "tiny"]]
    assert cli.main(["train", "toy", "--preset", "tiny", "--help"]) == 0  # the recipe's --help
    assert cli.main(["train", "toy", "--preset", "tiny", "--bad-flag"]) == 2  # the recipe's usage error
    assert cli.main(["train", "toy", "--preset", "tiny", "--fail"]) == 3  # the recipe's exit code
    script = tmp_path / "recipe.py"
    script.write_text(f"import json, sys\njson.dump(sys.argv, open({str(record)!r}, 'w'))\nsys.exit(3 if '--fail' in sys.argv else 0)\n")
    assert cli.main(["train", str(script), "--preset", "tiny"]) == 0
    assert json.loads(record.read_text()) == [str(script), "--preset", "tiny"]
    assert cli.main(["train", str(script), "--fail"]) == 3


# =============================================================================================== plugin commands
def test_a_registered_command_runs_with_the_clis_flags_errors_and_exit_codes(monkeypatch, capsys):
    def add_arguments(parser):
        parser.add_argument("--times", type=int, required=True)

    def run(args):
        if args.times < 0:
            raise cli.CliError(f"--times {args.times}: give a count\nof at least 0")
        print("hi " * args.times)
        return 0

    monkeypatch.setattr(plugins, "_COMMANDS", dict(plugins._COMMANDS))
    plugins.register_command("greet", add_arguments, run, help="say hi")
    assert cli.main(["greet", "--times", "2"]) == 0 and capsys.readouterr().out.strip() == "hi hi"
    assert cli.main(["greet", "--times", "-1"]) == 1
    assert capsys.readouterr().err == "oe greet: error: --times -1: give a count of at least 0\n"  # one line
    assert cli.main(["greet"]) == 2 and "oe greet: error: the following arguments are required: --times" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "greet" in capsys.readouterr().out


def test_fetch_checkpoint_is_registered_through_the_entry_point_group():
    """A fresh interpreter: `oe fetch-checkpoint` comes from the installed entry points (oe_common knows nothing of it)."""
    code = "from oe_common.deployment.cli import main; raise SystemExit(main(['fetch-checkpoint', '--list']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "all-minilm-l6-v2" in done.stdout.split(), done.stderr
