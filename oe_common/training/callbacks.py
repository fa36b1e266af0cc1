"""``TrainerCallback``s: a wall-clock budget for one training run.

GPU time here comes in fixed budgets (a command that runs past its limit returns nothing), and how fast a model
trains on an unseen machine is not known in advance. :class:`TimeBudgetCallback` turns "train for N epochs" into
"train for N epochs or M minutes, whichever comes first", so that the evaluation after training still runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["TimeBudgetCallback", "TIME_BUDGET_STATE_NAME", "find_time_budget", "check_time_budget", "time_budget_callbacks",
           "training_steps_report"]

#: File in a checkpoint folder that records a :class:`TimeBudgetCallback`'s plan and seconds used (read when resuming).
TIME_BUDGET_STATE_NAME = "oe_time_budget.json"


class TimeBudgetCallback(TrainerCallback):
    """Stop training once ``max_seconds`` of wall-clock time have passed since training began.

    Checked at the end of every optimizer step. The step at which the budget runs out is evaluated and saved
    (when the run evaluates / saves by steps or epochs at all), so ``load_best_model_at_end`` still chooses among
    all evaluated checkpoints, the last one included. With several processes every decision is all-reduced (any
    process over budget stops all; the smallest fitted step count wins), so that no process waits in a collective
    for one that has stopped.

    Without ``fit_schedule`` the learning-rate schedule stays planned for the full run, so a run cut short ends at
    a higher learning rate than planned. With ``fit_schedule=True``, after ``probe_steps`` optimizer steps the
    callback measures the seconds per step from step ``probe_steps // 4`` on (so start-up costs such as CUDA
    initialisation do not count; evaluations in between do) and, when the planned steps do not fit,
    lowers the run's step count to ``done + (safety * max_seconds - elapsed) / seconds_per_step`` and re-plans the
    learning-rate schedule for it (transformers' schedules, which keep ``num_training_steps`` in a
    ``functools.partial``; for any other scheduler it warns and only the step count changes). The run then ends
    the way a run of that length ends (last-step evaluation and checkpoint included); the hard stop at
    ``max_seconds`` stays as the backstop.

    After ``train``: :attr:`planned_steps` (the run's steps at the start), :attr:`fitted_steps` (``None`` = not
    re-planned), :attr:`stopped_at_step` (``None`` = the hard stop was not needed); :func:`training_steps_report`
    puts them in a dict for a results file.

    Resuming: :meth:`resume_state` (what ``OETrainer`` writes into every checkpoint as
    :data:`TIME_BUDGET_STATE_NAME`) holds the plan and the seconds used so far; :meth:`load_resume_state` before ``train(resume_from_checkpoint=...)`` makes the resumed run keep
    that plan (step count, learning-rate schedule, hard stop) and count its budget from those seconds, so a
    resumed run trains the steps an uninterrupted one would, and a finished one trains no more.

    Args:
        max_seconds: the budget (> 0), in seconds of wall-clock time from ``on_train_begin``.
        fit_schedule: re-plan the step count and learning-rate schedule to the budget (see above).
        probe_steps: optimizer steps before re-planning (>= 2).
        safety: fraction of the budget the re-planned run aims to use (0 < safety <= 1).
        clock: the time source (seconds); injectable for tests.
    """

    def __init__(self, max_seconds: float, fit_schedule: bool = False, probe_steps: int = 20, safety: float = 0.9,
                 clock: Callable[[], float] = time.perf_counter):
        if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
        if not (isinstance(probe_steps, int) and probe_steps >= 2):
            raise ValueError(f"probe_steps must be an int >= 2, got {probe_steps!r}")
        if not 0 < safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {safety!r}")
        self.max_seconds = float(max_seconds)
        self.fit_schedule = fit_schedule
        self.probe_steps = probe_steps
        self.safety = float(safety)
        self.clock = clock
        self.planned_steps: int | None = None
        self.fitted_steps: int | None = None
        self.stopped_at_step: int | None = None
        self._start: float | None = None
        self._probe_from: tuple[int, float] | None = None  # (step, elapsed seconds) where the timing window starts
        self._saved: dict[str, Any] | None = None  # a checkpoint's resume_state, applied at the next on_train_begin

    def _settings(self) -> dict[str, Any]:
        return {"max_seconds": self.max_seconds, "fit_schedule": self.fit_schedule, "probe_steps": self.probe_steps,
                "safety": self.safety}

    def resume_state(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint: the settings, ``elapsed_seconds`` (budget used so far, read now),
        ``planned_steps``, ``fitted_steps``, ``stopped_at_step`` and the timing window ``probe_from``."""
        elapsed = None if self._start is None else self.clock() - self._start
        return {**self._settings(), "elapsed_seconds": elapsed, "planned_steps": self.planned_steps,
                "fitted_steps": self.fitted_steps, "stopped_at_step": self.stopped_at_step,
                "probe_from": None if self._probe_from is None else list(self._probe_from)}

    def load_resume_state(self, saved: Mapping[str, Any] | None, checkpoint: str = "the checkpoint") -> None:
        """Continue from ``checkpoint``'s :meth:`resume_state` at the next ``on_train_begin`` (a state saved with other
        settings or another step count is ignored there, with a warning: the run is then planned afresh; so is
        ``saved=None``, a checkpoint saved without a time budget)."""
        if saved is None:
            logger.warning(f"OETrainer: {checkpoint} has no {TIME_BUDGET_STATE_NAME} (saved without a time budget): the "
                           "budget counts from now and the schedule is planned afresh")
        self._saved = None if saved is None else dict(saved)

    def _restore(self, state: TrainerState, lr_scheduler: Any) -> bool:
        saved, self._saved = self._saved, None
        if saved is None or saved.get("elapsed_seconds") is None:
            return False
        if {k: saved.get(k) for k in self._settings()} != self._settings() or saved.get("planned_steps") != state.max_steps:
            logger.warning(
                f"TimeBudgetCallback: the checkpoint's budget ({ {k: saved.get(k) for k in self._settings()} }, "
                f"{saved.get('planned_steps')} planned steps) differs from this run's ({self._settings()}, "
                f"{state.max_steps} steps): the budget counts from now and the schedule is planned afresh"
            )
            return False
        self._start = self.clock() - float(saved["elapsed_seconds"])
        self.planned_steps, self.fitted_steps, self.stopped_at_step = saved["planned_steps"], saved["fitted_steps"], saved["stopped_at_step"]
        self._probe_from = None if saved["probe_from"] is None else (int(saved["probe_from"][0]), float(saved["probe_from"][1]))
        if self.stopped_at_step is not None:  # the hard stop ended that run: it trains no more
            state.max_steps = min(state.max_steps, max(self.stopped_at_step, state.global_step))
        elif self.fitted_steps is not None and self.fitted_steps < state.max_steps:
            state.max_steps = self.fitted_steps
            self._replan(lr_scheduler)
        return True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._restore(state, kwargs.get("lr_scheduler")):
            return
        self._start = self.clock()
        self.planned_steps, self.fitted_steps, self.stopped_at_step = state.max_steps, None, None
        self._probe_from = None

    @staticmethod
    def _all_reduce(args: TrainingArguments, value: float, op: Any) -> float:
        """``value`` reduced over all processes with ``op`` (itself with one process)."""
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            tensor = torch.tensor([float(value)], dtype=torch.float32, device=args.device)  # step counts: exact below 2**24
            dist.all_reduce(tensor, op=op)
            value = float(tensor.item())
        return value

    def _fit(self, args: TrainingArguments, state: TrainerState, lr_scheduler: Any, elapsed: float) -> None:
        done = state.global_step
        first_step, first_elapsed = self._probe_from
        per_step = (elapsed - first_elapsed) / max(1, done - first_step)
        left = max(0.0, self.safety * self.max_seconds - elapsed)
        affordable = done + int(left // per_step) if per_step > 0 else state.max_steps
        affordable = int(self._all_reduce(args, min(affordable, state.max_steps), dist.ReduceOp.MIN))
        self.fitted_steps = max(affordable, done)
        if self.fitted_steps >= state.max_steps:
            return
        state.max_steps = self.fitted_steps
        self._replan(lr_scheduler)

    def _replan(self, lr_scheduler: Any) -> None:
        if not _replan_schedule(lr_scheduler, self.fitted_steps):
            logger.warning(
                f"TimeBudgetCallback: the run now ends at step {self.fitted_steps} (of {self.planned_steps}), but its "
                f"learning-rate scheduler ({type(lr_scheduler).__name__}) could not be re-planned: it stays planned for "
                f"{self.planned_steps} steps"
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.stopped_at_step is not None or state.global_step >= state.max_steps or self._start is None:
            return control
        elapsed = self.clock() - self._start
        if self.fit_schedule and self._probe_from is None and state.global_step >= max(1, self.probe_steps // 4):
            self._probe_from = (state.global_step, elapsed)
        elif self.fit_schedule and self.fitted_steps is None and state.global_step >= self.probe_steps:
            self._fit(args, state, kwargs.get("lr_scheduler"), elapsed)
        over = self._all_reduce(args, 1.0 if elapsed >= self.max_seconds else 0.0, dist.ReduceOp.MAX) > 0
        if not over and state.global_step < state.max_steps:
            return control
        if over:
            self.stopped_at_step = state.global_step
        control.should_training_stop = True
        if args.eval_strategy != "no":  # str enums: compare by value
            control.should_evaluate = True
        if args.save_strategy != "no":
            control.should_save = True
        return control


def _replan_schedule(lr_scheduler: Any, num_training_steps: int) -> bool:
    """Set ``num_training_steps`` of a transformers ``LambdaLR`` schedule (its lambdas are ``functools.partial``s
    with that keyword); ``True`` on success. Accelerate's wrapper is looked through."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, functools.partial) and "num_training_steps" in f.keywords for f in lambdas):
        return False
    scheduler.lr_lambdas = [functools.partial(f.func, *f.args, **{**f.keywords, "num_training_steps": num_training_steps}) for f in lambdas]
    return True


def find_time_budget(callbacks: Iterable[TrainerCallback]) -> TimeBudgetCallback | None:
    """The first :class:`TimeBudgetCallback` of ``callbacks`` (e.g. ``trainer.callback_handler.callbacks``), if any."""
    return next((c for c in callbacks if isinstance(c, TimeBudgetCallback)), None)


def check_time_budget(name: str, minutes: float | None) -> None:
    """Raise ``ValueError`` unless ``minutes`` is ``None`` (no budget) or a positive number (a config field check)."""
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ValueError(f"{name} must be a positive number of minutes (or None for no budget), got {minutes!r}")


def time_budget_callbacks(minutes: float | None) -> list[TrainerCallback]:
    """``[TimeBudgetCallback(minutes * 60, fit_schedule=True)]``, or ``[]`` for ``None`` (no budget): what the
    recipes pass to ``Trainer(callbacks=...)`` for ``--*-max-minutes``."""
    return [] if minutes is None else [TimeBudgetCallback(minutes * 60.0, fit_schedule=True)]


def training_steps_report(trainer: Any) -> dict[str, Any]:
    """After ``trainer.train()``: ``{"steps", "planned_steps", "time_budget_minutes", "fitted_steps",
    "shortened_by_time_budget", "stopped_by_time_budget"}``.

    ``planned_steps`` is the run's step count when training began; ``fitted_steps`` the count a
    ``fit_schedule`` budget re-planned it to (``None``: not re-planned); ``shortened_by_time_budget``: re-planned
    to fewer steps; ``stopped_by_time_budget``: the hard stop at the budget was needed. ``time_budget_minutes`` is
    ``None`` when the trainer had no :class:`TimeBudgetCallback`.
    """
    budget = find_time_budget(trainer.callback_handler.callbacks)
    planned = budget.planned_steps if budget is not None and budget.planned_steps is not None else trainer.state.max_steps
    fitted = None if budget is None else budget.fitted_steps
    return {
        "steps": int(trainer.state.global_step),
        "planned_steps": int(planned),
        "time_budget_minutes": None if budget is None else budget.max_seconds / 60.0,
        "fitted_steps": fitted,
        "shortened_by_time_budget": fitted is not None and fitted < planned,
        "stopped_by_time_budget": budget is not None and budget.stopped_at_step is not None,
    }
