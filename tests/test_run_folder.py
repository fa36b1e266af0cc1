"""Output folders (issue 14, items 3, 4, 9): one run per folder, a manifest that says whether it is complete,
Ctrl-C -> one line with the resume command (exit 130), ``--resume`` equal to an uninterrupted run, and recipe flags
refused at parse time."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback
from transformers.hf_argparser import string_to_bool

from oe_common.experiments import arg_types
from oe_common.experiments.experiment import Stage
from oe_common.experiments.recipe_guard import interruption_message, recipe_guard, resume_command
from oe_common.experiments.run_folder import LOCK_NAME, MANIFEST_NAME, RunFolder, RunFolderError

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


# ================================================================================================ item 9: flags
def _parsers():
    from oe_text.lm.recipe_cli import build_parser as text_parser
    from oe_vision.density_recipe import build_parser as density_parser
    from oe_vision.recipe_cli import build_parser as vision_parser

    return {"ptb_word": text_parser("word"), "mnist": vision_parser("mnist"), "cifar10": vision_parser("cifar10"), "pixelcnn": density_parser()}


def test_every_numeric_flag_of_every_recipe_has_a_checked_type():
    checked = {arg_types.positive_int, arg_types.non_negative_int, arg_types.positive_float, arg_types.non_negative_float, arg_types.probability}
    for name, parser in _parsers().items():
        numeric = [a for a in parser._actions if a.type is not None and a.type not in (str, string_to_bool)]
        assert numeric, name
        unchecked = [a.dest for a in numeric if a.type not in checked]
        assert not unchecked, (name, unchecked)  # plain int / float accept 0, negatives, nan


BAD = [
    ("--oe-lambda", "-1"), ("--batch-size", "0"), ("--baseline-max-steps", "0"), ("--oe-max-steps", "-3"), ("--n-draws", "0"),
    ("--baseline-max-minutes", "0"), ("--oe-max-minutes", "-2"), ("--baseline-epochs", "0"), ("--oe-epochs", "nan"),
    ("--threads", "0"), ("--seed", "-1"), ("--batch-size", "2.5"), ("--oe-lambda", "inf"),
]


@pytest.mark.parametrize("recipe", ["ptb_word", "mnist", "pixelcnn"])
@pytest.mark.parametrize("flag,value", BAD)
def test_bad_numeric_flags_are_usage_errors(recipe, flag, value, capsys):
    parser = _parsers()[recipe]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and value in err, err


@pytest.mark.parametrize("flag,value", [("--lr", "0"), ("--oe-lr", "-0.1"), ("--oe-batch-size", "0"), ("--train-size", "0"),
                                        ("--ood-size", "-5"), ("--num-workers", "-1"), ("--test-size", "0")])
def test_bad_vision_flags_are_usage_errors(flag, value):
    with pytest.raises(SystemExit) as exc:
        _parsers()["cifar10"].parse_args([flag, value])
    assert exc.value.code == 2


@pytest.mark.parametrize("flag,value", [("--margin", "-1"), ("--nr-filters", "0"), ("--baseline-lr", "0"), ("--nr-logistic-mix", "-2")])
def test_bad_pixelcnn_flags_are_usage_errors(flag, value):
    with pytest.raises(SystemExit) as exc:
        _parsers()["pixelcnn"].parse_args([flag, value])
    assert exc.value.code == 2


def test_good_values_parse():
    args = _parsers()["ptb_word"].parse_args(["--oe-lambda", "0", "--batch-size", "1", "--seed", "0", "--oe-max-minutes", "0.5"])
    assert (args.oe_lambda, args.batch_size, args.seed, args.oe_max_minutes) == (0.0, 1, 0, 0.5)
    args = _parsers()["pixelcnn"].parse_args(["--margin", "0", "--num-workers", "0", "--nr-filters", "8"])
    assert (args.margin_per_subpixel, args.num_workers, args.nr_filters) == (0.0, 0, 8)
    assert arg_types.probability("0.05") == 0.05
    for bad in ("0", "1", "1.5", "-0.1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            arg_types.probability(bad)


# ================================================================================================ item 3: folders
CONFIG = {"a": 1, "b": (1, 2)}


def _manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_new_folder_gets_a_running_manifest_first_and_complete_last(tmp_path):
    out = tmp_path / "run"
    run = RunFolder.open(out, CONFIG, command=["recipe.py", "--x"])
    m = _manifest(out)
    assert m["status"] == "running" and m["command"] == ["recipe.py", "--x"] and m["config"] == {"a": 1, "b": [1, 2]}
    run.start_stage("baseline")
    assert _manifest(out)["stage"] == "baseline"
    run.finish_stage("baseline", {"x": 1.5}, {"s": np.arange(3.0)})
    assert _manifest(out)["stages_done"] == ["baseline"] and _manifest(out)["status"] == "running"
    run.complete()
    m = _manifest(out)
    assert m["status"] == "complete" and m["stage"] is None and "finished" in m
    assert not (out / "stages").exists()  # resume state is dropped once complete


def test_a_non_empty_folder_is_refused_without_a_flag(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match="--overwrite.*--resume"):
        RunFolder.open(tmp_path, CONFIG)
    assert (tmp_path / "results.json").read_text() == "{}" and not (tmp_path / MANIFEST_NAME).exists()
    with pytest.raises(RunFolderError, match="exclude each other"):
        RunFolder.open(tmp_path, CONFIG, overwrite=True, resume=True)


def test_overwrite_clears_a_run_but_never_a_folder_that_holds_no_run(tmp_path):
    run_dir = tmp_path / "run"
    run = RunFolder.open(run_dir, CONFIG)
    (run_dir / "oe_model").mkdir(parents=True)
    (run_dir / "oe_model" / "model.safetensors").write_bytes(b"old")
    (run_dir / "results.json").write_text("{}")
    run.complete()
    RunFolder.open(run_dir, CONFIG, overwrite=True).close()
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME, MANIFEST_NAME]
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(RunFolderError, match="--overwrite refused.*nothing is deleted"):
        RunFolder.open(other, CONFIG, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "precious"


def test_resume_loads_finished_stages_and_refuses_what_it_cannot_resume(tmp_path):
    run = RunFolder.open(tmp_path / "r", CONFIG)
    arrays = {"ptb/test": {"nll": np.array([1.0, 2.0]), "mask": None}, "t": torch.arange(4, dtype=torch.float32)}
    run.finish_stage("baseline", {"records": [{"auroc": 0.5}], "t": (1, 2)}, arrays)
    run.close()  # the run ends (its lock is released)
    again = RunFolder.open(tmp_path / "r", CONFIG, resume=True)
    assert again.stage_done("baseline") and not again.stage_done("oe") and _manifest(tmp_path / "r")["resumed"] == 1
    state, loaded = again.load_stage("baseline")
    assert state == {"records": [{"auroc": 0.5}], "t": [1, 2]}
    assert isinstance(loaded["ptb/test"]["nll"], np.ndarray) and loaded["ptb/test"]["nll"].tolist() == [1.0, 2.0]
    assert loaded["ptb/test"]["mask"] is None and torch.equal(loaded["t"], arrays["t"])
    again.close()
    with pytest.raises(RunFolderError, match=r"another configuration \(a: 1 -> 2\)"):
        RunFolder.open(tmp_path / "r", {**CONFIG, "a": 2}, resume=True)
    again.complete()
    with pytest.raises(RunFolderError, match="complete run"):
        RunFolder.open(tmp_path / "r", CONFIG, resume=True)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match="no readable run_manifest.json"):
        RunFolder.open(tmp_path / "old", CONFIG, resume=True)
    RunFolder.open(tmp_path / "new", CONFIG, resume=True)  # nothing there yet: a new run
    assert _manifest(tmp_path / "new")["resumed"] == 0


def test_other_processes_neither_check_nor_write(tmp_path, monkeypatch):
    RunFolder.open(tmp_path, CONFIG).finish_stage("baseline", {}, {})  # rank 0 was first
    before = (tmp_path / MANIFEST_NAME).read_text()
    monkeypatch.setenv("RANK", "1")
    other = RunFolder.open(tmp_path, CONFIG)  # rank 1 sees rank 0's manifest: not "a previous run"
    assert not other.stage_done("baseline")
    other.start_stage("oe")
    other.complete()
    assert (tmp_path / MANIFEST_NAME).read_text() == before
    assert RunFolder.open(tmp_path, CONFIG, resume=True).stage_done("baseline")


def test_last_checkpoint_is_the_newest_complete_one(tmp_path):
    run = RunFolder.open(tmp_path, CONFIG)
    folder = tmp_path / "checkpoints" / "oe"
    for step, complete in ((50, True), (100, True), (150, False)):  # 150: interrupted while saving
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert run.last_checkpoint("oe") == str(folder / "checkpoint-100") and run.last_checkpoint("baseline") is None
    run.start_stage("oe")
    line = interruption_message(tmp_path, "python r.py --resume")
    assert "stage 'oe' continues from its checkpoint at step 100" in line and line.endswith("python r.py --resume")
    run.start_stage("baseline")
    assert "stage 'baseline' restarts" in interruption_message(tmp_path, "c")


def test_resume_command_drops_overwrite_and_adds_resume():
    assert resume_command(["--preset", "tiny", "--overwrite", "--output-dir", "a b"], "recipes/x.py") == \
        "python recipes/x.py --preset tiny --output-dir 'a b' --resume"
    assert resume_command(["--resume"], "x.py") == "python x.py --resume"


def test_recipe_guard_turns_ctrl_c_into_one_line_and_exit_130(tmp_path, capsys):
    import sys

    from tqdm.auto import tqdm

    RunFolder.open(tmp_path, CONFIG).start_stage("oe")
    with pytest.raises(SystemExit) as exc:
        with recipe_guard("x.py", tmp_path, ["--preset", "tiny"], "recipes/x.py"):
            bar = tqdm(total=10, file=sys.stderr, mininterval=0)  # open when Ctrl-C comes, as the Trainer's
            bar.update(3)
            raise KeyboardInterrupt
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    line = err.split("\r")[-1]  # what the terminal shows on the last line: the message alone, the bar erased before it
    assert line.startswith("interrupted in stage 'oe'") and line.strip().endswith("python recipes/x.py --preset tiny --resume")
    with pytest.raises(SystemExit) as exc:
        with recipe_guard("x.py", tmp_path):
            raise RunFolderError("output folder 'a' already holds files")
    assert exc.value.code == 1 and capsys.readouterr().err == "x.py: error: output folder 'a' already holds files\n"


def test_ctrl_c_under_oe_train_ends_with_the_recipes_one_line_and_exit_code(tmp_path, sleeping_recipe):
    """A real SIGINT to the process group of ``oe train <recipe>``: the recipe's line only, its exit code 130."""
    import os
    import signal
    import subprocess
    import sys

    script, env = sleeping_recipe
    proc = subprocess.Popen([sys.executable, "-m", "oe_common.deployment.cli", "train", str(script), str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True,
                            # a shell that starts the suite in the background ignores SIGINT, and children inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == b"ready"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, lines)
    assert "interrupted in stage 'oe'" in lines[0] and lines[0].endswith(f"fake_recipe.py {tmp_path / 'out'} --resume")


# ---- the recipes' entry points (no data is loaded: these fail before) ------------------------------------------------------
class _DataLoaded(Exception):
    pass


def _no_data(*args, **kwargs):
    raise _DataLoaded


def test_text_recipe_refuses_a_previous_run_and_leaves_it_untouched(tmp_path, monkeypatch, capsys):
    import oe_text.lm.lm_experiment
    from oe_text.lm.recipe_cli import main

    monkeypatch.setattr(oe_text.lm.lm_experiment, "load_text_oe_data", _no_data)
    previous = RunFolder.open(tmp_path, CONFIG)
    (tmp_path / "results.json").write_text('{"old": true}')
    previous.complete()
    with pytest.raises(SystemExit) as exc:
        main("word", ["--preset", "test", "--output-dir", str(tmp_path)])
    assert exc.value.code == 1
    assert "ptb_word_oe.py: error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME, "results.json"])
    assert (tmp_path / "results.json").read_text() == '{"old": true}'
    with pytest.raises(_DataLoaded):  # --overwrite: cleared, then the run starts
        main("word", ["--preset", "test", "--output-dir", str(tmp_path), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, MANIFEST_NAME] and _manifest(tmp_path)["status"] == "running"


@pytest.mark.parametrize("recipe", ["text", "vision", "density"])
def test_ctrl_c_in_a_recipe_prints_one_line_with_the_resume_command(recipe, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if recipe == "text":
        import oe_text.lm.lm_experiment
        from oe_text.lm.recipe_cli import main as text_main

        monkeypatch.setattr(oe_text.lm.lm_experiment, "load_text_oe_data", interrupt)
        main, prog = (lambda argv: text_main("word", argv)), "ptb_word_oe.py"
    elif recipe == "vision":
        import oe_vision.classifier_experiment
        from oe_vision.recipe_cli import main as vision_main

        monkeypatch.setattr(oe_vision.classifier_experiment, "load_vision_data", interrupt)
        main, prog = (lambda argv: vision_main("mnist", argv)), "mnist_oe.py"
    else:
        import oe_vision.density_experiment
        from oe_vision.density_recipe import main

        monkeypatch.setattr(oe_vision.density_experiment, "load_density_data", interrupt)
        prog = "pixelcnn_oe.py"
    argv = ["--preset", "test", "--output-dir", str(tmp_path / "out")]
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the recipe (a traceback for the user)")
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "interrupted in stage 'data'" in err and err.strip().endswith(f"recipes/{prog} --preset test --output-dir {tmp_path / 'out'} --resume")
    assert _manifest(tmp_path / "out")["status"] == "running"  # not complete: visibly incomplete


# ================================================================================================ item 4: resume
class _InterruptAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class _FirstStep(TrainerCallback):
    """Appends to ``starts`` the global step each trainer starts training at (0, or the resumed checkpoint's step)."""

    def __init__(self, starts: list):
        self.starts, self.seen = starts, False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.seen:
            self.seen = True
            self.starts.append(state.global_step)


def _interrupt_stage(monkeypatch, stage_name: str | None, step: int, starts: list) -> list:
    """Hooks of the staged runner (:mod:`oe_common.experiments.experiment`), for every pipeline: the trainer of stage
    ``stage_name`` raises KeyboardInterrupt at ``step``; every trainer appends its first step to ``starts``; every
    stage the runner trains is recorded as ``(stage, the checkpoint it resumes from)``."""
    calls: list = []
    callbacks, last_checkpoint = Stage.callbacks, RunFolder.last_checkpoint

    def stage_callbacks(stage):
        return callbacks(stage) + [_FirstStep(starts)] + ([_InterruptAt(step)] if stage.name == stage_name else [])

    def recorded(run, stage):
        calls.append((stage, last_checkpoint(run, stage)))
        return calls[-1][1]

    monkeypatch.setattr(Stage, "callbacks", stage_callbacks)
    monkeypatch.setattr(RunFolder, "last_checkpoint", recorded)
    return calls


def _same(records) -> str:
    return json.dumps(records, sort_keys=True)  # NaN-safe comparison


def _check_interrupt_and_resume(run_fn, cfg, data, tmp_path, monkeypatch, step):
    """Run ``cfg`` whole, and interrupted in the OE stage at ``step`` then resumed: the same records, the finished
    baseline loaded (not trained again), the OE stage continued from its last checkpoint, resume state dropped.
    Returns ``(calls, reference, resumed, starts, message)``: the stages trained by the resume, both results, where
    each trainer started, the one-line interrupt message."""
    reference = run_fn(cfg, tmp_path / "reference", data=data)
    out = tmp_path / "interrupted"
    starts: list[int] = []
    with monkeypatch.context() as mp:
        _interrupt_stage(mp, "oe", step, starts)
        with pytest.raises(KeyboardInterrupt):
            run_fn(cfg, out, data=data)
    manifest = _manifest(out)
    assert manifest["status"] == "running" and manifest["stages_done"] == ["baseline"] and manifest["stage"] == "oe"
    assert not (out / "results.json").exists()
    with pytest.raises(RunFolderError):  # a rerun without a flag would mix two runs
        run_fn(cfg, out, data=data)
    message = interruption_message(out, "RESUME")
    calls = _interrupt_stage(monkeypatch, None, 0, starts)  # record the calls only
    resumed = run_fn(cfg, out, data=data, resume=True)
    assert _manifest(out)["status"] == "complete"
    assert [c[0] for c in calls] == ["oe"]  # the finished baseline was loaded, not trained again
    assert _same(resumed["records"]) == _same(reference["records"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads((tmp_path / "reference" / "results.json").read_text())["records"]
    assert not (out / "checkpoints").exists() and not (tmp_path / "reference" / "checkpoints").exists()  # resume state dropped
    return calls, reference, resumed, starts, message


@pytest.mark.slow
def test_text_run_interrupted_in_the_oe_stage_resumes_from_its_checkpoint_to_the_same_results(tmp_path, monkeypatch, data_dir):
    import oe_text.lm.lm_experiment as module
    from oe_text.lm.data import load_text_oe_data

    cfg = module.preset_config("word", "test", batch_size=8, baseline_max_steps=6, oe_max_steps=6, eval_steps=2, oe_eval_steps=2,
                               train_windows=400, valid_windows=16, test_windows=40, ewt_windows=20, n_draws=2, eval_batch_size=40)
    data = load_text_oe_data(cfg.level, data_dir, protocol=cfg.protocols, seq_len=cfg.seq_len)
    calls, reference, resumed, starts, message = _check_interrupt_and_resume(module.run_text_oe, cfg, data, tmp_path, monkeypatch, 3)
    assert "stage 'oe' continues from its checkpoint at step 2" in message
    assert starts == [0, 0, 2]  # interrupted baseline + oe, resumed oe: from step 2, not 0
    assert calls[0][1].endswith("checkpoints/oe/checkpoint-2")  # continued from the last checkpoint, not from step 0
    for stage in ("baseline", "oe"):
        assert resumed["meta"]["test_quality"][stage]["perplexity"] == reference["meta"]["test_quality"][stage]["perplexity"]
        assert resumed["meta"]["test_quality"][stage]["steps"] == 6


# The vision and PixelCNN++ recipes: tests/test_vision_resume.py (same helpers).
