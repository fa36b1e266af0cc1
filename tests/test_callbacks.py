"""TimeBudgetCallback: stops at the step where the budget runs out, evaluates and saves that step (fake clock)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from transformers import TrainerCallback

from _oe_tiny import hf_dataset, lm_rows, tiny_gpt2_lm
import logging

from oe_common.training.callbacks import TimeBudgetCallback, training_steps_report
from oe_common.training.trainer import OETrainer, OETrainingArguments

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def ticking_clock(seconds_per_call: float = 1.0):
    """A clock that advances ``seconds_per_call`` every time it is read (read once at train begin, once per step)."""
    counter = itertools.count()
    return lambda: next(counter) * seconds_per_call


def train(tmp_path, budget: TimeBudgetCallback, max_steps: int, scheduler: str = "linear") -> OETrainer:
    data = hf_dataset(lm_rows(64, seed=1))
    args = OETrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=max_steps, learning_rate=1e-3,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, logging_steps=100,
        lr_scheduler_type=scheduler, warmup_steps=0,
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    trainer = OETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=data, eval_dataset=data.select(range(8)),
                        outlier_dataset=hf_dataset(lm_rows(16, seed=2, outliers=True)), callbacks=[budget])
    trainer.train()
    return trainer


def test_training_stops_at_the_step_where_the_budget_runs_out_and_that_step_is_evaluated_and_saved(tmp_path):
    budget = TimeBudgetCallback(3.5, clock=ticking_clock())  # steps end at t = 1, 2, 3, 4 -> over budget after step 4
    trainer = train(tmp_path, budget, max_steps=10)
    assert trainer.state.global_step == 4 and budget.stopped_at_step == 4
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [4]
    assert (tmp_path / "out" / "checkpoint-4").is_dir()
    assert (budget.planned_steps, budget.fitted_steps) == (10, None)
    report = training_steps_report(trainer)
    assert report["stopped_by_time_budget"] and not report["shortened_by_time_budget"] and report["planned_steps"] == 10


def test_a_run_within_its_budget_is_not_touched(tmp_path):
    budget = TimeBudgetCallback(100.0, clock=ticking_clock())
    trainer = train(tmp_path, budget, max_steps=3)
    assert trainer.state.global_step == 3 and budget.stopped_at_step is None
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [3]  # only the Trainer's own last-step evaluation


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_fit_schedule_shortens_the_run_and_its_learning_rate_schedule_to_the_budget(tmp_path, scheduler):
    # 1 s per step: timed over steps 1..4, then (0.9 * 10 s - 4 s) / 1 s = 5 more steps fit -> the run ends at step 9
    budget = TimeBudgetCallback(10.0, fit_schedule=True, probe_steps=4, clock=ticking_clock())
    trainer = train(tmp_path, budget, max_steps=20, scheduler=scheduler)
    assert trainer.state.global_step == 9 and budget.fitted_steps == 9 and budget.stopped_at_step is None
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # annealed to 0 at the new end
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [9] and (tmp_path / "out" / "checkpoint-9").is_dir()
    report = training_steps_report(trainer)
    assert report == {"steps": 9, "planned_steps": 20, "time_budget_minutes": pytest.approx(10 / 60), "fitted_steps": 9,
                      "shortened_by_time_budget": True, "stopped_by_time_budget": False}


def test_fit_schedule_keeps_a_plan_that_fits(tmp_path):
    budget = TimeBudgetCallback(100.0, fit_schedule=True, probe_steps=4, clock=ticking_clock())
    trainer = train(tmp_path, budget, max_steps=10)
    assert trainer.state.global_step == 10 and budget.fitted_steps == 10
    assert not training_steps_report(trainer)["shortened_by_time_budget"]


def test_fit_schedule_with_a_scheduler_it_cannot_replan_warns_and_still_shortens_the_run(tmp_path, caplog):
    budget = TimeBudgetCallback(10.0, fit_schedule=True, probe_steps=4, clock=ticking_clock())
    with caplog.at_level(logging.WARNING, logger="oe_common.training.callbacks"):
        trainer = train(tmp_path, budget, max_steps=20, scheduler="constant")
    assert trainer.state.global_step == 9 and "could not be re-planned" in caplog.text
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3)


@pytest.mark.parametrize("bad", [0, -1.0, None, "5"])
def test_budget_must_be_positive(bad):
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudgetCallback(bad)


def test_fit_settings_are_checked():
    with pytest.raises(ValueError, match="probe_steps"):
        TimeBudgetCallback(10.0, probe_steps=1)
    with pytest.raises(ValueError, match="safety"):
        TimeBudgetCallback(10.0, safety=1.5)


# ---- resuming with a budget: the plan and the seconds used travel in the checkpoint ------------------------------
class _Interrupt(Exception):
    pass


class _InterruptAfterSave(TrainerCallback):
    """Raise right after the checkpoint of ``step`` is written: the process dies there."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt


def budget_run(out, resume: bool = False, interrupt_at: int | None = None, clock_offset: float = 0.0):
    """100 planned steps, a 10 s budget fitted after 20 steps, 0.2 s per step on a fake clock (each attempt's clock
    starts elsewhere: wall time between attempts does not count); a checkpoint every 10 steps, the LR logged every step."""
    data = hf_dataset(lm_rows(64, seed=1))
    args = OETrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=100, learning_rate=1e-2, eval_strategy="no",
        save_strategy="steps", save_steps=10, logging_steps=1, lr_scheduler_type="linear", warmup_steps=0,
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    clock = ticking_clock(0.2)
    budget = TimeBudgetCallback(10.0, fit_schedule=True, clock=lambda: clock_offset + clock())
    callbacks = [budget] + ([_InterruptAfterSave(interrupt_at)] if interrupt_at else [])
    trainer = OETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=data,
                        outlier_dataset=hf_dataset(lm_rows(16, seed=2, outliers=True)), callbacks=callbacks)
    if interrupt_at:
        with pytest.raises(_Interrupt):
            trainer.train()
    else:
        trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer


def lr_per_step(trainer) -> dict[int, float]:
    return {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return budget_run(tmp_path_factory.mktemp("budget_whole"))


def test_a_resumed_run_trains_the_schedule_of_an_uninterrupted_one(tmp_path, uninterrupted):
    budget_run(tmp_path, interrupt_at=30)
    resumed = budget_run(tmp_path, resume=True, clock_offset=1000.0)
    whole = uninterrupted
    assert training_steps_report(whole)["shortened_by_time_budget"] and 30 < whole.state.global_step < 50  # ~45 fit
    assert resumed.state.global_step == whole.state.global_step
    assert lr_per_step(resumed) == pytest.approx(lr_per_step(whole), rel=1e-9, abs=1e-12)  # steps 31.. included
    assert training_steps_report(resumed) == training_steps_report(whole)


def test_a_finished_stage_resumed_while_scoring_does_not_train_again(tmp_path, uninterrupted):
    out = tmp_path / "finished"
    shutil.copytree(Path(uninterrupted.args.output_dir), out)
    resumed = budget_run(out, resume=True, clock_offset=1000.0)
    assert resumed.state.global_step == uninterrupted.state.global_step
    assert lr_per_step(resumed) == lr_per_step(uninterrupted)
    assert training_steps_report(resumed) == training_steps_report(uninterrupted)
