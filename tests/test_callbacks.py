"""TimeBudgetCallback: stops at the step where the budget runs out, evaluates and saves that step (fake clock)."""

from __future__ import annotations

import itertools

import pytest

from _oe_tiny import hf_dataset, lm_rows, tiny_gpt2_lm
from oe_common.callbacks import TimeBudgetCallback
from oe_common.trainer import OETrainer, OETrainingArguments

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def ticking_clock(seconds_per_call: float = 1.0):
    """A clock that advances ``seconds_per_call`` every time it is read (read once at train begin, once per step)."""
    counter = itertools.count()
    return lambda: next(counter) * seconds_per_call


def train(tmp_path, budget: TimeBudgetCallback, max_steps: int) -> OETrainer:
    data = hf_dataset(lm_rows(64, seed=1))
    args = OETrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=max_steps, learning_rate=1e-3,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, logging_steps=100,
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
    assert budget.summary(trainer.state) == {"max_seconds": 3.5, "stopped_at_step": 4, "planned_steps": 10}


def test_a_run_within_its_budget_is_not_touched(tmp_path):
    budget = TimeBudgetCallback(100.0, clock=ticking_clock())
    trainer = train(tmp_path, budget, max_steps=3)
    assert trainer.state.global_step == 3 and budget.stopped_at_step is None
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [3]  # only the Trainer's own last-step evaluation


@pytest.mark.parametrize("bad", [0, -1.0, None, "5"])
def test_budget_must_be_positive(bad):
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudgetCallback(bad)
