"""``TrainerCallback``s: a wall-clock budget for one training run.

GPU time here comes in fixed budgets (a command that runs past its limit returns nothing), and how fast a model
trains on an unseen machine is not known in advance. :class:`TimeBudgetCallback` turns "train for N epochs" into
"train for N epochs or M minutes, whichever comes first", so that the evaluation after training still runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["TimeBudgetCallback", "check_time_budget", "time_budget_callbacks", "training_steps_report"]


class TimeBudgetCallback(TrainerCallback):
    """Stop training once ``max_seconds`` of wall-clock time have passed since training began.

    Checked at the end of every optimizer step. The step at which the budget runs out is evaluated and saved
    (when the run evaluates / saves by steps or epochs at all), so ``load_best_model_at_end`` still chooses among
    all evaluated checkpoints, the last one included. With several processes the decision is all-reduced (any
    process over budget stops all), so that no process waits in a collective for one that has stopped.

    The learning-rate schedule was planned for the full run: a run cut short ends at a higher learning rate
    than planned. Report :attr:`stopped_at_step` with the results (``None`` = the budget was not reached).

    Args:
        max_seconds: the budget (> 0), in seconds of wall-clock time from ``on_train_begin``.
        clock: the time source (seconds); injectable for tests.
    """

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.perf_counter):
        if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self.stopped_at_step: int | None = None
        self._start: float | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._start = self.clock()
        self.stopped_at_step = None

    def _over_budget(self, args: TrainingArguments) -> bool:
        over = self._start is not None and self.clock() - self._start >= self.max_seconds
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1.0 if over else 0.0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item() > 0)
        return over

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.stopped_at_step is not None or state.global_step >= state.max_steps or not self._over_budget(args):
            return control
        self.stopped_at_step = state.global_step
        control.should_training_stop = True
        if args.eval_strategy != "no":  # str enums: compare by value
            control.should_evaluate = True
        if args.save_strategy != "no":
            control.should_save = True
        return control

    def summary(self, state: TrainerState) -> dict[str, Any]:
        """``{"max_seconds", "stopped_at_step", "planned_steps"}`` for a results file (after ``train``)."""
        return {"max_seconds": self.max_seconds, "stopped_at_step": self.stopped_at_step, "planned_steps": state.max_steps}


def check_time_budget(name: str, minutes: float | None) -> None:
    """Raise ``ValueError`` unless ``minutes`` is ``None`` (no budget) or a positive number (a config field check)."""
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ValueError(f"{name} must be a positive number of minutes (or None for no budget), got {minutes!r}")


def time_budget_callbacks(minutes: float | None) -> list[TrainerCallback]:
    """``[TimeBudgetCallback(minutes * 60)]``, or ``[]`` for ``None`` (no budget): for ``Trainer(callbacks=...)``."""
    return [] if minutes is None else [TimeBudgetCallback(minutes * 60.0)]


def training_steps_report(trainer: Any) -> dict[str, Any]:
    """After ``trainer.train()``: ``{"steps", "planned_steps", "time_budget_minutes", "stopped_by_time_budget"}``.

    ``time_budget_minutes`` is ``None`` when the trainer had no :class:`TimeBudgetCallback`.
    """
    budget = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudgetCallback)), None)
    return {
        "steps": int(trainer.state.global_step),
        "planned_steps": int(trainer.state.max_steps),
        "time_budget_minutes": None if budget is None else budget.max_seconds / 60.0,
        "stopped_by_time_budget": budget is not None and budget.stopped_at_step is not None,
    }
