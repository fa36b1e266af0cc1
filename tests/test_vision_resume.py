"""Issue 14 item 4 for the vision and PixelCNN++ recipes: their stages save checkpoints every ``save_steps``, Ctrl-C
names the checkpoint ``--resume`` continues from, and a run interrupted in the OE stage after a checkpoint resumes
from it (not from step 0) to the results of an uninterrupted run. Helpers shared with the text recipe's test in
``tests/test_run_folder.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_run_folder import _check_interrupt_and_resume


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


@pytest.mark.slow
def test_vision_run_interrupted_in_the_oe_stage_resumes_from_its_checkpoint_to_the_same_results(tmp_path, monkeypatch, data_dir):
    import oe_vision.classifier_experiment as module

    cfg = module.preset_config("mnist", "test", holdout_size=100, train_size=300, test_size=200, ood_size=60, oe_pool_size=300,
                               baseline_max_steps=12, oe_max_steps=8, branch=False, calibration=False, save_models=False, n_draws=2,
                               logging_steps=2, save_steps=2)
    data = module.load_vision_data(cfg, data_dir)
    calls, reference, resumed, starts, message = _check_interrupt_and_resume(module.run_vision_oe, cfg, data, tmp_path, monkeypatch, 5)
    assert "stage 'oe' continues from its checkpoint at step 4" in message and message.endswith("RESUME")
    assert calls[0][1].endswith("checkpoints/oe/checkpoint-4")
    assert starts == [0, 0, 4]  # interrupted baseline + oe, resumed oe: from step 4, not 0
    for stage in ("baseline", "oe"):
        torch.testing.assert_close(resumed["outputs"][stage]["test"]["logits"], reference["outputs"][stage]["test"]["logits"], rtol=0, atol=0)
        assert resumed["meta"]["training_steps"][stage]["steps"] == reference["meta"]["training_steps"][stage]["steps"]
    # the last logged training loss (step 8) is the same; Trainer's run-average train_loss covers the resumed steps only
    assert resumed["meta"]["train_logs"]["oe"]["loss"] == reference["meta"]["train_logs"]["oe"]["loss"]


@pytest.mark.slow
def test_density_run_interrupted_in_the_oe_stage_resumes_from_its_checkpoint_to_the_same_results(tmp_path, monkeypatch, data_dir):
    import oe_vision.density_experiment as module

    # margin 5.3 nats per subpixel: after this baseline the held-out outliers are 6.9-8.5 bits/dim above the test
    # images, so about half the pairs are active (with the paper's 1, none is, and the margin check below could not fail)
    cfg = dataclasses.replace(module.preset_config("mnist", "test"), baseline_max_steps=10, oe_max_steps=6, logging_steps=2, save_steps=2,
                              margin_per_subpixel=5.3)
    data = module.load_density_data(cfg, data_dir)
    calls, reference, resumed, starts, message = _check_interrupt_and_resume(module.run_density_oe, cfg, data, tmp_path, monkeypatch, 3)
    assert "stage 'oe' continues from its checkpoint at step 2" in message
    assert calls[0][1].endswith("checkpoints/oe/checkpoint-2")
    assert starts == [0, 0, 2]  # interrupted baseline + oe, resumed oe: from step 2, not 0
    for stage in ("baseline", "oe"):
        np.testing.assert_array_equal(resumed["scores"][stage]["test"], reference["scores"][stage]["test"])
    # the margin counts continue from the checkpoint: the fraction covers all 6 OE steps, as uninterrupted
    assert 0 < reference["meta"]["oe_margin_active_fraction"] < 1
    assert resumed["meta"]["oe_margin_active_fraction"] == reference["meta"]["oe_margin_active_fraction"]
    assert resumed["meta"]["train_logs"]["oe"]["loss"] == reference["meta"]["train_logs"]["oe"]["loss"]


def test_save_steps_flag_sets_the_checkpoint_interval_and_is_checked():
    from oe_vision import density_experiment, density_recipe, recipe_cli

    assert density_recipe.parse_args(["--save-steps", "7"])[1].save_steps == 7
    assert density_experiment.preset_config("mnist", "test").save_steps == 16
    cfg = density_experiment.preset_config("mnist", "test", save_steps=5)
    assert density_experiment.training_arguments(cfg, density_experiment.PixelCNNDensityExperiment(cfg).stages()[1], "x").save_steps == 5
    vision = recipe_cli.build_parser("mnist")
    assert vision.parse_args(["--save-steps", "7"]).save_steps == 7
    from oe_vision.classifier_experiment import VisionClassifierExperiment, preset_config, training_arguments

    cfg = preset_config("mnist", "test", save_steps=9)
    args = training_arguments(cfg, VisionClassifierExperiment(cfg).stages()[1], "x")
    assert (args.save_strategy, args.save_steps, args.save_total_limit, args.save_only_model) == ("steps", 9, 1, False)
    for parser in (vision, density_recipe.build_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--save-steps", "0"])
    with pytest.raises(ValueError, match="save_steps"):
        preset_config("mnist", "test", save_steps=0)


def test_resuming_from_the_last_steps_checkpoint_trains_no_further_step(tmp_path):
    """A run interrupted after its last step (while scoring) resumes from the checkpoint saved at that step: no step
    past ``max_steps`` (``Trainer`` alone runs one more before it checks), the checkpoint's weights kept."""
    from _oe_tiny import hf_dataset, lm_rows, tiny_gpt2_lm

    from oe_common.training.trainer import OETrainer, OETrainingArguments

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
