"""oe_common.experiments.experiment: the one staged runner (stage order, init, seeding, resume) and oe_common.experiments.recipe_args."""

from __future__ import annotations

import dataclasses
import json
import os
import types

import pytest
import torch

from oe_common.experiments.arg_types import non_negative_int
from oe_common.experiments.experiment import Stage, StagedExperiment, StageResult, run_experiment
from oe_common.experiments.presets import apply_preset
from oe_common.experiments.recipe_args import RecipeArgumentParser, flag, parse_recipe_args
from oe_common.training.trainer import OETrainingArguments


class _Linear(torch.nn.Module):
    """The smallest save_pretrained / from_pretrained model (safetensors)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def save_pretrained(self, folder):
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        save_file(self.state_dict(), f"{folder}/model.safetensors")

    @classmethod
    def from_pretrained(cls, folder):
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(f"{folder}/model.safetensors"))
        return model


class _FakeTrainer:
    """Adds ``stage.learning_rate`` to every weight per 'step' (so each stage leaves a visible trace)."""

    def __init__(self, stage, model, log, interrupt=False):
        self.stage, self.model, self.log, self.interrupt = stage, model, log, interrupt
        self.state = types.SimpleNamespace(global_step=0, max_steps=stage.max_steps, log_history=[])
        self.callback_handler = types.SimpleNamespace(callbacks=stage.callbacks())

    def train(self, resume_from_checkpoint=None):
        if self.interrupt:
            raise KeyboardInterrupt
        self.log.append(("train", self.stage.name))
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(self.stage.learning_rate * self.stage.max_steps)
        self.state.global_step = self.stage.max_steps
        self.state.log_history.append({"loss": 1.0, "step": self.stage.max_steps})

    def save_model(self, folder):
        self.model.save_pretrained(folder)


@dataclasses.dataclass
class _Config:
    seed: int = 0
    save_models: bool = True


class _Toy(StagedExperiment):
    def __init__(self, config, interrupt_at=None):
        super().__init__(config)
        self.log, self.interrupt_at, self.initial = [], interrupt_at, {}

    def stages(self):
        return [Stage("baseline", 1.0, max_steps=2), Stage("oe", 0.5, max_steps=1, oe_lambda=0.5, init="baseline"),
                Stage("scratch", 1.0, max_steps=2, oe_lambda=0.5)]

    def load_data(self, data_dir):
        return {"n": 3}

    def build_model(self, stage):
        model = _Linear()
        self.initial[stage.name] = model.layer.weight.detach().clone()
        return model

    def make_trainer(self, stage, model, output_dir):
        return _FakeTrainer(stage, model, self.log, interrupt=stage.name == self.interrupt_at)

    def evaluate(self, stage, model, trainer):
        self.log.append(("eval", stage.name))
        weight = model.layer.weight.detach().clone()
        return StageResult({"records": [{"model": stage.name, "w": float(weight.sum())}]}, {"weight": weight})

    def report(self, results, models, seconds, output_dir, is_main):
        records = [r for result in results.values() for r in result.records]
        return {"records": records, "final": models["oe"].layer.weight.detach().clone(), "states": {k: v.state for k, v in results.items()}}


def test_stages_run_in_order_with_init_and_fresh_seeded_models(tmp_path):
    toy = _Toy(_Config())
    result = run_experiment(toy, tmp_path / "run")
    assert toy.log == [("train", "baseline"), ("eval", "baseline"), ("train", "oe"), ("eval", "oe"), ("train", "scratch"), ("eval", "scratch")]
    # fresh stages start from the same seeded weights; "oe" continued the baseline's trained model (+2 then +0.5)
    assert torch.equal(toy.initial["baseline"], toy.initial["scratch"])
    assert torch.allclose(result["final"], toy.initial["baseline"] + 2.0 + 0.5)
    assert [r["model"] for r in result["records"]] == ["baseline", "oe", "scratch"]
    state = result["states"]["oe"]
    assert state["training_steps"]["steps"] == 1 and state["train_log"]["loss"] == 1.0 and set(state["seconds"]) == {"train", "eval"}
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stages_done"] == ["baseline", "oe", "scratch"]
    assert (tmp_path / "run" / "oe_model" / "model.safetensors").is_file()


def test_resume_loads_finished_stages_and_equals_an_uninterrupted_run(tmp_path):
    whole = run_experiment(_Toy(_Config()), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_Toy(_Config(), interrupt_at="scratch"), tmp_path / "cut")
    toy = _Toy(_Config())
    resumed = run_experiment(toy, tmp_path / "cut", resume=True)
    assert toy.log == [("train", "scratch"), ("eval", "scratch")]  # baseline and oe were loaded, not trained
    assert resumed["records"] == whole["records"]
    assert torch.equal(resumed["final"], whole["final"])  # the oe model was loaded from its saved folder


class _ToyWithMeta(_Toy):
    def report(self, results, models, seconds, output_dir, is_main):
        from oe_common.experiments.reporting import run_meta

        return {"meta": run_meta(seconds)}


def test_a_resumed_runs_meta_keeps_every_attempts_commit_and_start(tmp_path, monkeypatch):
    import oe_common.experiments.reporting as reporting

    monkeypatch.setattr(reporting, "_COMMIT_AT_START", "aaaa1111")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_ToyWithMeta(_Config(), interrupt_at="scratch"), tmp_path / "cut")
    monkeypatch.setattr(reporting, "_COMMIT_AT_START", "bbbb2222")
    meta = run_experiment(_ToyWithMeta(_Config()), tmp_path / "cut", resume=True)["meta"]
    assert meta["commit"] == "bbbb2222"  # the attempt that wrote the report
    assert [a["commit"] for a in meta["attempts"]] == ["aaaa1111", "bbbb2222"]
    assert all(a["started"] and a["hardware"] for a in meta["attempts"])
    manifest = json.loads((tmp_path / "cut" / "run_manifest.json").read_text())
    assert [a["commit"] for a in manifest["attempts"]] == ["aaaa1111", "bbbb2222"]
    fresh = run_experiment(_ToyWithMeta(_Config()), tmp_path / "fresh")["meta"]
    assert [a["commit"] for a in fresh["attempts"]] == ["bbbb2222"]


def test_stage_checks_and_training_arguments(tmp_path):
    with pytest.raises(ValueError, match="epochs > 0 or max_steps > 0"):
        Stage("x", 1e-3, epochs=0)
    with pytest.raises(ValueError, match="oe_lambda must be a finite number >= 0, got -1.0"):  # its one check, in the trainer's arguments
        OETrainingArguments(**Stage("x", 1e-3, oe_lambda=-1.0).training_arguments(tmp_path), report_to="none")
    from oe_text.lm.lm_experiment import preset_config

    with pytest.raises(ValueError, match="oe_lambda must be a finite number >= 0, got -1"):  # and when a config is built: before training
        preset_config("word", "test", oe_lambda=-1)
    assert Stage("base", 2e-3, epochs=3).training_arguments(tmp_path) == {
        "output_dir": str(tmp_path / "checkpoints" / "base"), "learning_rate": 2e-3, "num_train_epochs": 3, "max_steps": -1}
    oe = Stage("oe", 1e-3, max_steps=5, oe_lambda=0.5, init="base")
    assert oe.uses_outliers and oe.training_arguments(tmp_path)["oe_lambda"] == 0.5
    assert Stage("b", 1.0).callbacks() == [] and len(Stage("b", 1.0, max_minutes=1.0).callbacks()) == 1


def test_unknown_init_is_an_error(tmp_path):
    class Bad(_Toy):
        def stages(self):
            return [Stage("oe", 1.0, max_steps=1, init="nope")]

    with pytest.raises(ValueError, match="nope"):
        run_experiment(Bad(_Config()), tmp_path / "run")


# ================================================================================================ recipe_args
@dataclasses.dataclass
class _Flags:
    level: str = dataclasses.field(default="word", metadata=flag(command_line=False))
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = dataclasses.field(default=0, metadata=flag("random seed", arg_type=non_negative_int))
    protocols: tuple[str, ...] | None = None
    allow_small_sets: bool = False
    branch: bool = True
    oe_loss: str = dataclasses.field(default="uniform", metadata=flag(choices=("uniform", "energy")))
    model_overrides: dict = dataclasses.field(default_factory=dict, metadata=flag(command_line=False))

    def __post_init__(self):
        if self.batch_size > 100:
            raise ValueError("batch_size must be <= 100")


_PRESETS = {"tiny": {"batch_size": 16}, "test": {"batch_size": 4, "branch": False}}


def _parse(argv):
    parser = RecipeArgumentParser(_Flags, prog="toy.py", description="toy", presets=tuple(_PRESETS))
    return parse_recipe_args(parser, argv, lambda preset, given: apply_preset(_Flags, _PRESETS, preset, given))


def test_flags_are_generated_from_the_config_fields():
    recipe, cfg, _ = _parse([])
    assert recipe.preset == "tiny" and cfg == _Flags(batch_size=16)  # not given: the preset's value
    recipe, cfg, _ = _parse(["--preset", "test", "--batch-size", "7", "--protocols", "a", "b", "--allow-small-sets", "--branch",
                             "--oe_loss", "energy", "--seed", "0", "--output-dir", "out", "--overwrite"])
    assert (recipe.preset, recipe.output_dir, recipe.overwrite) == ("test", "out", True)
    assert cfg == _Flags(batch_size=7, protocols=("a", "b"), allow_small_sets=True, branch=True, oe_loss="energy")
    assert _parse(["--no-branch"])[1].branch is False


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "argument --batch-size"), (["--seed", "-1"], "argument --seed"), (["--lr", "nan"], "argument --lr"),
    (["--oe-loss", "x"], "argument --oe-loss"), (["--level", "char"], "unrecognized"), (["--model-overrides", "x"], "unrecognized"),
    (["--batch-size", "200"], "batch_size must be <= 100"), (["--overwrite", "--resume"], "not allowed"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
