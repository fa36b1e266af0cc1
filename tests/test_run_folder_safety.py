"""Nothing lost, nothing silently wrong (issue 24): what ``--overwrite`` may delete (item 1), the lock a live run holds
(item 3), the data folder as part of a run (item 5), write failures and parse-time checks (item 13), SIGTERM, one
numbering per message, readable weights, ``--help``, an output folder inside the data folder (item 14)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from oe_common.experiments.experiment import run_experiment
from oe_common.experiments.run_folder import LOCK_NAME, MANIFEST_NAME, RunFolder, RunFolderError

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"a": 1}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _DataLoaded(Exception):
    pass


def _ptb_main(monkeypatch, loader=None):
    """``recipes/ptb_word_oe.py``'s main with its data loader replaced (``loader``; default: raise _DataLoaded)."""
    import oe_text.lm.lm_experiment
    from oe_text.lm.recipe_cli import main

    def no_data(*args, **kwargs):
        raise _DataLoaded

    monkeypatch.setattr(oe_text.lm.lm_experiment, "load_text_oe_data", loader or no_data)
    return lambda argv: main("word", argv)


def _one_error_line(capsys, prog: str = "ptb_word_oe.py") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    return err.strip()


# ================================================================================================ item 1: --overwrite
@pytest.mark.parametrize("marker", ["results.json", MANIFEST_NAME, "checkpoints", "old_manifest"])
def test_overwrite_refuses_a_folder_that_merely_holds_a_run_file_name(marker, tmp_path, capsys, monkeypatch):
    """The issue's reproduction: a copy of docs/ with an empty results.json, run with --overwrite, lost all its files."""
    import shutil

    copy = tmp_path / "COPY"
    shutil.copytree(REPO_ROOT / "docs", copy)
    if marker == "checkpoints":
        (copy / "checkpoints").mkdir()
    elif marker == "old_manifest":  # a manifest without the marker RunFolder writes (hand-made, or copied from elsewhere)
        (copy / MANIFEST_NAME).write_text(json.dumps({"status": "complete", "stage": None, "made": ["data.md"]}))
    else:
        (copy / marker).write_text("{}")
    before = _listing(copy)
    main = _ptb_main(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "test", "--output-dir", str(copy), "--overwrite"])
    assert exc.value.code == 1
    line = _one_error_line(capsys)
    assert "--overwrite refused" in line and "nothing is deleted" in line
    assert _listing(copy) == before  # nothing deleted, nothing written (not even the lock file)


def test_overwrite_deletes_only_the_files_the_run_made(tmp_path):
    out = tmp_path / "run"
    run = RunFolder.open(out, CONFIG)
    run.finish_stage("baseline", {"x": 1}, {"s": np.arange(3.0)})
    (out / "oe_model").mkdir()
    (out / "oe_model" / "model.safetensors").write_bytes(b"weights")
    (out / "results.json").write_text("{}")
    run.complete()
    first = _manifest(out)
    (out / "notes.md").write_text("my notes on this run")  # the user's, added after the run
    (tmp_path / "outside.txt").write_text("keep")
    manifest = _manifest(out)
    manifest.setdefault("made", []).append("../outside.txt")  # a manifest is never a way to delete outside the folder
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    again = RunFolder.open(out, CONFIG, overwrite=True)
    assert (out / "notes.md").read_text() == "my notes on this run" and (tmp_path / "outside.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME, "notes.md"])
    assert first["written_by"] == "oe_common.experiments.run_folder" and len(first["run_id"]) == 32
    assert first["made"] == sorted([MANIFEST_NAME, "oe_model", "results.json"])
    assert _manifest(out)["kept"] == ["notes.md"] and _manifest(out)["run_id"] != manifest["run_id"]
    (out / "results.json").write_text("{}")
    again.complete()
    assert _manifest(out)["made"] == sorted([MANIFEST_NAME, "results.json"])  # the kept file is still not the run's
    RunFolder.open(out, CONFIG, overwrite=True).close()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME, "notes.md"])


# ================================================================================================ item 3: the lock
_HOLDER = textwrap.dedent("""
    import sys, time
    from oe_common.experiments.run_folder import RunFolder
    run = RunFolder.open(sys.argv[1], {"a": 1}, resume=True)
    run.start_stage("oe")
    print("ready", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def live_run(tmp_path):
    """A second process that holds the run folder ``tmp_path / "run"`` (an incomplete run in stage 'oe')."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield out, proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_live_run_holds_its_folder_and_a_second_process_is_refused_naming_it(live_run, monkeypatch, capsys):
    out, proc = live_run
    before = _listing(out)
    who = f"process {proc.pid} on host {socket.gethostname()!r}, started "
    for flags in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(RunFolderError, match="in use by a live run") as exc:
            RunFolder.open(out, CONFIG, **flags)
        assert who in str(exc.value) and "stage None" not in str(exc.value)
    assert _listing(out) == before  # nothing deleted or rewritten
    main = _ptb_main(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "test", "--output-dir", str(out), "--resume"])
    assert exc.value.code == 1 and who in _one_error_line(capsys)
    monkeypatch.setenv("RANK", "1")  # another process of the same multi-process run: not refused
    assert RunFolder.open(out, CONFIG, resume=True).stage_done("baseline") is False
    monkeypatch.delenv("RANK")
    proc.kill()  # the live run dies: the OS releases its lock, the interrupted run can be resumed
    proc.wait(timeout=60)
    resumed = RunFolder.open(out, CONFIG, resume=True)
    assert _manifest(out)["resumed"] == 1 and _manifest(out)["process"]["pid"] == os.getpid()
    resumed.complete()


def test_the_runner_releases_the_lock_however_the_run_ends(tmp_path):
    from test_experiment_runner import _Config, _Toy

    with pytest.raises(KeyboardInterrupt):
        run_experiment(_Toy(_Config(), interrupt_at="oe"), tmp_path / "cut")
    run_experiment(_Toy(_Config()), tmp_path / "cut", resume=True)  # same process, next attempt: not "in use"
    assert _manifest(tmp_path / "cut")["status"] == "complete"


# ================================================================================================ item 5: the data folder
def _data_folder(path: Path, sums: str) -> Path:
    path.mkdir()
    (path / "SHA256SUMS").write_text(sums)
    return path


def test_resume_with_another_data_folder_is_refused(tmp_path):
    from test_experiment_runner import _Config, _Toy

    first = _data_folder(tmp_path / "data", "aaa  ptb/train.txt\n")
    other = _data_folder(tmp_path / "other", "bbb  ptb/train.txt\n")
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_Toy(_Config(), interrupt_at="oe"), out, data_dir=first)
    with pytest.raises(RunFolderError) as exc:
        run_experiment(_Toy(_Config()), out, data_dir=other, resume=True)
    import hashlib

    assert _manifest(out)["data"] == {"dir": str(first.resolve()), "sha256sums": hashlib.sha256(b"aaa  ptb/train.txt\n").hexdigest()}
    message = str(exc.value)
    assert str(first.resolve()) in message and str(other.resolve()) in message and f"--data-dir {first.resolve()}" in message
    assert "\n" not in message and _manifest(out)["stages_done"] == ["baseline"]
    (first / "SHA256SUMS").write_text("ccc  ptb/train.txt\n")  # same folder, other corpora
    with pytest.raises(RunFolderError, match="SHA256SUMS of the data folder .* changed"):
        run_experiment(_Toy(_Config()), out, data_dir=first, resume=True)
    (first / "SHA256SUMS").write_text("aaa  ptb/train.txt\n")
    run_experiment(_Toy(_Config()), out, data_dir=first, resume=True)
    assert _manifest(out)["status"] == "complete"


def test_the_data_folder_comes_from_oe_data_dir_when_not_given(tmp_path, monkeypatch):
    from test_experiment_runner import _Config, _Toy

    data = _data_folder(tmp_path / "data", "aaa  x\n")
    monkeypatch.setenv("OE_DATA_DIR", str(data))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_Toy(_Config(), interrupt_at="oe"), tmp_path / "run")
    other = _data_folder(tmp_path / "other", "aaa  x\n")
    with pytest.raises(RunFolderError, match="another data folder"):
        run_experiment(_Toy(_Config()), tmp_path / "run", data_dir=other, resume=True)


# ================================================================================================ item 13: write failures
@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_a_full_disk_gives_one_error_line_with_the_resume_command(error, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    def disk_full(*args, **kwargs):
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")  # as safetensors 0.8 says it

    main = _ptb_main(monkeypatch, disk_full)
    argv = ["--preset", "test", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    line = _one_error_line(capsys)
    assert "no space left on the device" in line and "stopped in stage 'data'" in line
    assert line.endswith(f"To resume: python recipes/ptb_word_oe.py --preset test --output-dir {tmp_path / 'out'} --resume")


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """An existing empty folder nobody may write into: 0555, and where that does not stop this process (root), the
    permission check emulated on the calls that create files and folders (``os.open`` with O_CREAT, ``os.mkdir``)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real_open, real_mkdir = os.open, os.mkdir

        def denied(path) -> bool:
            return str(Path(os.fspath(path)).absolute()).startswith(str(folder))

        def fake_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and denied(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if denied(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_a_read_only_output_dir_is_one_error_line(where, read_only_dir, monkeypatch, capsys):
    out = read_only_dir if where == "itself" else read_only_dir / "run"
    main = _ptb_main(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "test", "--output-dir", str(out)])
    assert exc.value.code == 1
    line = _one_error_line(capsys)
    assert f"cannot write to output folder {str(out)!r}" in line and "writable --output-dir" in line
    assert list(read_only_dir.iterdir()) == []


def test_max_length_above_the_models_positions_is_refused_at_parse_time(tmp_path, monkeypatch, capsys):
    from transformers import BertConfig

    import oe_text.textcls.textcls_recipe as recipe

    model = tmp_path / "small-bert"
    BertConfig(max_position_embeddings=16, vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(model)
    ran = []
    monkeypatch.setattr(recipe, "run_recipe", lambda prog, rec, cfg, *args, **kwargs: ran.append(cfg))
    argv = ["--preset", "test", "--model", str(model), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        recipe.main([*argv, "--max-length", "17"])
    assert exc.value.code == 2 and not ran and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--max-length 17" in err and "16 token positions" in err
    recipe.main([*argv, "--max-length", "16"])
    assert ran[-1].max_length == 16
    recipe.main(["--preset", "test", "--model", "gru", "--max-length", "1000"])  # the GRU has no position limit
    assert ran[-1].max_length == 1000


@pytest.mark.parametrize("n_draws", [1.5, 2.0, True])
def test_evaluate_ood_needs_a_whole_number_of_draws(n_draws):
    from oe_common.maths.metrics import evaluate_ood

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_draws must be a whole number of draws >= 1"):
        evaluate_ood(rng.normal(size=50), {"a": rng.normal(size=40)}, n_draws=n_draws)


# ================================================================================================ item 14
def test_sigterm_is_handled_like_ctrl_c(tmp_path, sleeping_recipe):
    script, env = sleeping_recipe
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1, (proc.returncode, lines)
    assert lines[0].startswith("interrupted in stage 'oe'") and lines[0].endswith(f"python {script} {out} --resume")
    assert _manifest(out)["status"] == "running"


def test_oe_score_numbers_lines_from_one_only(tmp_path, capsys):
    from oe_common.deployment import cli
    from oe_common.deployment.detector import OODDetector
    from oe_text.lm.preprocessing import TextPreprocessing
    from oe_text.lm.models import build_language_model
    from oe_text.lm.vocab import Vocabulary

    vocab = Vocabulary.build([f"w{i}" for i in range(12)])
    torch.manual_seed(0)
    model = build_language_model("lstm", len(vocab), "tiny", embedding_size=8, hidden_size=16)
    folder = OODDetector(model, TextPreprocessing(vocab, seq_len=5), device="cpu", threshold=0.0).save_pretrained(tmp_path / "det")
    src = tmp_path / "in.txt"
    for lines, expected in ((["w1 w2", "", "w3"], "empty at line 2"),
                            (["w1", "w2", "w2 " * 30], "(line 3: 31)")):
        src.write_text("\n".join(lines) + "\n")
        assert cli.main(["score", "--model", str(folder), "--input", str(src), "--long-text", "error"]) == 1
        err = capsys.readouterr().err
        assert expected in err and "index" not in err, err


def test_saved_weights_are_readable_like_any_new_file(tmp_path):
    from test_experiment_runner import _Config, _Toy

    from oe_common.deployment.detector import OODDetector
    from oe_text.lm.preprocessing import TextPreprocessing
    from oe_text.lm.models import build_language_model
    from oe_text.lm.vocab import Vocabulary

    umask = os.umask(0o022)
    try:
        vocab = Vocabulary.build(["a", "b"])
        model = build_language_model("lstm", len(vocab), "tiny", embedding_size=4, hidden_size=4)
        detector = OODDetector(model, TextPreprocessing(vocab, seq_len=4), device="cpu").save_pretrained(tmp_path / "det")
        RunFolder.open(tmp_path / "stages", CONFIG).finish_stage("baseline", {}, {"s": np.arange(3.0)})
        run_experiment(_Toy(_Config()), tmp_path / "run")
    finally:
        os.umask(umask)
    files = [*detector.glob("*"), tmp_path / "stages" / "stages" / "baseline.safetensors", *(tmp_path / "run").rglob("*.safetensors")]
    assert any(f.suffix == ".safetensors" for f in files) and len(files) > 5
    modes = {str(f.relative_to(tmp_path)): oct(f.stat().st_mode & 0o777) for f in files if f.is_file()}
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("recipe,presets,absent", [("textcls", "test: seconds; tiny: CPU in minutes; full: ", "paper"),
                                                   ("ptb_word", "test: seconds; tiny: CPU in minutes; paper: ", "full")])
def test_recipe_help_lists_its_own_presets_and_no_default_none(recipe, presets, absent, capsys):
    if recipe == "textcls":
        from oe_text.textcls.textcls_recipe import build_parser
    else:
        from oe_text.lm.recipe_cli import build_parser as text_parser

        def build_parser():
            return text_parser("word")

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "default: None" not in out
    preset_help = out[out.index("named settings ("):out.index("--data-dir DATA_DIR,")]
    assert presets in preset_help and absent not in preset_help and "default: tiny" in preset_help


def test_an_output_dir_inside_the_data_folder_is_refused(tmp_path, monkeypatch, capsys):
    data = _data_folder(tmp_path / "data", "aaa  x\n")
    main = _ptb_main(monkeypatch)
    for out in (data / "runs" / "x", data):
        with pytest.raises(SystemExit) as exc:
            main(["--preset", "test", "--data-dir", str(data), "--output-dir", str(out)])
        assert exc.value.code == 1
        line = _one_error_line(capsys)
        assert f"is inside the data folder {str(data.resolve())!r}" in line and "outside it" in line
    assert sorted(p.name for p in data.iterdir()) == ["SHA256SUMS"]


def test_overwrite_deletes_the_checkpoints_of_a_killed_run(tmp_path):
    """A run killed (``kill -9``) in training wrote checkpoints after its manifest's last record: still its own."""
    out = tmp_path / "run"
    run = RunFolder.open(out, CONFIG)
    run.start_stage("oe")
    (out / "checkpoints" / "oe" / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoints" / "oe" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    del run  # no close(): the process died, its lock went with it
    assert "checkpoints" not in _manifest(out)["made"]
    RunFolder.open(out, CONFIG, overwrite=True).close()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME])
