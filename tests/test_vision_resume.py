"""Issue 14 item 4 for the vision and PixelCNN++ recipes: their stages save checkpoints every ``save_steps``, Ctrl-C
names the checkpoint ``--resume`` continues from, and a run interrupted in the OE stage after a checkpoint resumes
from it (not from step 0) to the results of an uninterrupted run. Helpers shared with the text recipe's test in
``tests/test_run_folder.py``."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch
from test_run_folder import _check_interrupt_and_resume, _InterruptAt
from transformers import TrainerCallback

from oe_common.run_folder import interruption_message

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


class _FirstStep(TrainerCallback):
    """Appends to ``starts`` the global step each trainer starts training at (0, or the resumed checkpoint's step)."""

    def __init__(self, starts: list):
        self.starts, self.seen = starts, False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.seen:
            self.seen = True
            self.starts.append(state.global_step)


def _interrupt_and_resume(module, run_fn, cfg, data, tmp_path, monkeypatch, step: int):
    """``_check_interrupt_and_resume`` (OE stage interrupted at ``step``) that also records where each trainer started
    and the one-line interrupt message seen before the resume. Returns ``(calls, reference, resumed, starts, message)``."""
    starts: list[int] = []
    messages: list[str] = []
    original = module.time_budget_callbacks
    monkeypatch.setattr(module, "time_budget_callbacks", lambda minutes: original(minutes) + [_FirstStep(starts)])

    def run(cfg, output_dir, data, resume=False):
        if resume:
            messages.append(interruption_message(output_dir, "RESUME"))
        return run_fn(cfg, output_dir, data=data, resume=resume)

    calls, reference, resumed = _check_interrupt_and_resume(run, cfg, data, tmp_path, monkeypatch, module, 1, step)
    assert not (tmp_path / "interrupted" / "checkpoints").exists()  # resume state of finished stages is dropped
    assert not (tmp_path / "reference" / "checkpoints").exists()
    return calls, reference, resumed, starts, messages[0]


def _runner_hooks(monkeypatch):
    """What ``_interrupt_stage`` patches (``time_budget_callbacks``, ``train_stage``), wired to the staged runner: the
    callbacks of every stage (``Stage.callbacks``) and every ``train`` of the vision experiment's trainers go through it."""
    import oe_common.experiment as experiment
    from oe_vision.classifier_experiment import VisionClassifierExperiment

    hooks = types.SimpleNamespace(time_budget_callbacks=experiment.time_budget_callbacks, train_stage=lambda *args, **kwargs: None)
    monkeypatch.setattr(experiment, "time_budget_callbacks", lambda minutes: hooks.time_budget_callbacks(minutes))
    make_trainer = VisionClassifierExperiment.make_trainer

    def recording_trainer(self, stage, model, output_dir):
        trainer = make_trainer(self, stage, model, output_dir)
        train = trainer.train

        def recorded_train(resume_from_checkpoint=None):
            hooks.train_stage(model, self.data, self.config, stage.name, output_dir, resume_from_checkpoint=resume_from_checkpoint)
            return train(resume_from_checkpoint=resume_from_checkpoint)

        trainer.train = recorded_train
        return trainer

    monkeypatch.setattr(VisionClassifierExperiment, "make_trainer", recording_trainer)
    return hooks


@pytest.mark.slow
def test_vision_run_interrupted_in_the_oe_stage_resumes_from_its_checkpoint_to_the_same_results(tmp_path, monkeypatch, data_dir):
    import oe_vision.classifier_experiment as module

    cfg = module.preset_config("mnist", "test", holdout_size=100, train_size=300, test_size=200, ood_size=60, oe_pool_size=300,
                               baseline_max_steps=12, oe_max_steps=8, branch=False, calibration=False, save_models=False, n_draws=2,
                               logging_steps=2, save_steps=2)
    data = module.load_vision_data(cfg, data_dir)
    hooks = _runner_hooks(monkeypatch)
    calls, reference, resumed, starts, message = _interrupt_and_resume(hooks, module.run_vision_oe, cfg, data, tmp_path, monkeypatch, 5)
    assert "stage 'oe' continues from its checkpoint at step 4" in message and message.endswith("RESUME")
    assert calls[0][1].endswith("checkpoints/oe/checkpoint-4")
    assert starts == [0, 0, 0, 0, 4]  # reference baseline + oe, interrupted baseline + oe, resumed oe: from step 4, not 0
    for stage in ("baseline", "oe"):
        torch.testing.assert_close(resumed["outputs"][stage]["test"]["logits"], reference["outputs"][stage]["test"]["logits"], rtol=0, atol=0)
        assert resumed["meta"]["training_steps"][stage]["steps"] == reference["meta"]["training_steps"][stage]["steps"]
    # the last logged training loss (step 8) is the same; Trainer's run-average train_loss covers the resumed steps only
    assert resumed["meta"]["train_logs"]["oe"]["loss"] == reference["meta"]["train_logs"]["oe"]["loss"]


def _interrupt_runner_stage(monkeypatch, stage_name: str | None, step: int, starts: list) -> list:
    """Hooks of :mod:`oe_common.experiment`, for any pipeline on the runner: the trainer of stage ``stage_name`` raises
    KeyboardInterrupt at ``step``; every trainer appends its first step to ``starts``; every stage the runner trains is
    recorded as ``(stage, the checkpoint it resumes from)``."""
    from oe_common.experiment import Stage
    from oe_common.run_folder import RunFolder

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


@pytest.mark.slow
def test_density_run_interrupted_in_the_oe_stage_resumes_from_its_checkpoint_to_the_same_results(tmp_path, monkeypatch, data_dir):
    import oe_vision.density_experiment as module
    from oe_common.run_folder import RunFolderError

    # margin 5.3 nats per subpixel: after this baseline the held-out outliers are 6.9-8.5 bits/dim above the test
    # images, so about half the pairs are active (with the paper's 1, none is, and the margin check below could not fail)
    cfg = dataclasses.replace(module.preset_config("mnist", "test"), baseline_max_steps=10, oe_max_steps=6, logging_steps=2, save_steps=2,
                              margin_per_subpixel=5.3)
    data = module.load_density_data(cfg, data_dir)
    starts: list[int] = []
    reference = module.run_density_oe(cfg, tmp_path / "reference", data=data)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as mp:
        _interrupt_runner_stage(mp, "oe", 3, starts)
        with pytest.raises(KeyboardInterrupt):
            module.run_density_oe(cfg, out, data=data)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["stages_done"] == ["baseline"] and manifest["stage"] == "oe"
    assert not (out / "results.json").exists()
    with pytest.raises(RunFolderError):  # a rerun without a flag would mix two runs
        module.run_density_oe(cfg, out, data=data)
    message = interruption_message(out, "RESUME")
    calls = _interrupt_runner_stage(monkeypatch, None, 0, starts)
    resumed = module.run_density_oe(cfg, out, data=data, resume=True)
    assert json.loads((out / "run_manifest.json").read_text())["status"] == "complete"
    assert not (out / "checkpoints").exists() and not (tmp_path / "reference" / "checkpoints").exists()  # resume state dropped
    assert "stage 'oe' continues from its checkpoint at step 2" in message
    assert [c[0] for c in calls] == ["oe"] and calls[0][1].endswith("checkpoints/oe/checkpoint-2")  # the baseline was loaded
    assert starts == [0, 0, 2]  # interrupted baseline + oe, resumed oe: from step 2, not 0
    assert json.dumps(resumed["records"], sort_keys=True) == json.dumps(reference["records"], sort_keys=True)
    for stage in ("baseline", "oe"):
        np.testing.assert_array_equal(resumed["scores"][stage]["test"], reference["scores"][stage]["test"])
    # the margin counts continue from the checkpoint: the fraction covers all 6 OE steps, as uninterrupted
    assert 0 < reference["meta"]["oe_margin_active_fraction"] < 1
    assert resumed["meta"]["oe_margin_active_fraction"] == reference["meta"]["oe_margin_active_fraction"]
    assert resumed["meta"]["train_logs"]["oe"]["loss"] == reference["meta"]["train_logs"]["oe"]["loss"]


def test_save_steps_flag_sets_the_checkpoint_interval_and_is_checked():
    from oe_vision import density_experiment, recipe_cli

    assert density_experiment.parse_args(["--save-steps", "7"])[1].save_steps == 7
    assert density_experiment.preset_config("mnist", "test").save_steps == 16
    cfg = density_experiment.preset_config("mnist", "test", save_steps=5)
    assert density_experiment.training_arguments(cfg, density_experiment.PixelCNNDensityExperiment(cfg).stages()[1], "x").save_steps == 5
    vision = recipe_cli.build_parser("mnist")
    assert vision.parse_args(["--save-steps", "7"]).save_steps == 7
    from oe_vision.classifier_experiment import VisionClassifierExperiment, preset_config, training_arguments

    cfg = preset_config("mnist", "test", save_steps=9)
    args = training_arguments(cfg, VisionClassifierExperiment(cfg).stages()[1], "x")
    assert (args.save_strategy, args.save_steps, args.save_total_limit, args.save_only_model) == ("steps", 9, 1, False)
    for parser in (vision, density_experiment.build_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--save-steps", "0"])
    with pytest.raises(ValueError, match="save_steps"):
        preset_config("mnist", "test", save_steps=0)


def test_resuming_from_the_last_steps_checkpoint_trains_no_further_step(tmp_path):
    """A run interrupted after its last step (while scoring) resumes from the checkpoint saved at that step: no step
    past ``max_steps`` (``Trainer`` alone runs one more before it checks), the checkpoint's weights kept."""
    from _oe_tiny import hf_dataset, lm_rows, tiny_gpt2_lm

    from oe_common.trainer import OETrainer, OETrainingArguments

    def trainer():
        args = OETrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, learning_rate=0.01,
                                   save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", disable_tqdm=True,
                                   use_cpu=True, seed=0)
        return OETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=hf_dataset(lm_rows(48, seed=1)),
                         outlier_dataset=hf_dataset(lm_rows(20, seed=2, outliers=True)))

    full = trainer()
    full.train()
    assert (tmp_path / "out" / "checkpoint-3" / "trainer_state.json").is_file()  # Trainer saves at the last step too
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.state.global_step == 3
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
