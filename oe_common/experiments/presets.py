"""What every experiment config shares: the stage settings (:class:`StageSettings`) and named presets as data.

A pipeline keeps its presets in one table, ``{preset: {field: value}}`` (at the top of its ``*_experiment.py``);
:func:`apply_preset` turns a preset and the settings given (a command line's flags, a caller's keywords) into the
config, the same way for every recipe.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Mapping

from .arg_types import non_negative_float
from ._checks import check_oe_lambda
from ..training.callbacks import check_time_budget
from .experiment import Stage
from .recipe_args import flag

__all__ = ["StageSettings", "stage_default", "apply_preset"]


@dataclasses.dataclass
class StageSettings:
    """The per-stage settings of the two stages every pipeline runs, ``baseline`` and ``oe`` (fine-tuning with
    outliers): ``*_max_steps > 0`` overrides the matching ``*_epochs`` (epochs count in-distribution batches; the
    outlier stream cycles independently), ``*_max_minutes`` is a wall-clock budget
    (:func:`oe_common.training.callbacks.time_budget_callbacks`), ``oe_lambda`` weighs the OE term, ``L_in + oe_lambda * L_OE``.

    A config subclasses it (each pipeline adds its learning rates, ``baseline_lr`` and ``oe_lr``) and redeclares a field
    whose default differs with :func:`stage_default`; :meth:`stage` makes the runner's stages from them.
    ``oe_lambda`` is declared here only; its one check, :func:`oe_common.experiments._checks.check_oe_lambda`, runs when a config is
    built (so a bad value fails before any training) and in ``OETrainingArguments`` (for code that builds those itself)."""

    baseline_epochs: float = 1.0
    baseline_max_steps: int = -1
    baseline_max_minutes: float | None = dataclasses.field(default=None, metadata=flag(
        "wall-clock budget of baseline training (minutes): re-planned to fit, hard stop at the budget"))
    oe_epochs: float = 1.0
    oe_max_steps: int = -1
    oe_max_minutes: float | None = dataclasses.field(default=None, metadata=flag("the same for OE fine-tuning"))
    oe_lambda: float = dataclasses.field(default=1.0, metadata=flag(arg_type=non_negative_float))
    #: The field of the baseline schedule's learning rate (the vision configs call it ``lr``).
    baseline_lr_field: ClassVar[str] = "baseline_lr"

    def __post_init__(self) -> None:
        check_oe_lambda(self.oe_lambda)
        for name in ("baseline_max_minutes", "oe_max_minutes"):
            check_time_budget(name, getattr(self, name))

    def stage(self, name: str, schedule: str, **changes: Any) -> Stage:
        """The stage ``name`` on the ``schedule`` (``"baseline"`` or ``"oe"``) settings: its learning rate, epochs, max
        steps and minutes, and with ``"oe"`` the weight ``oe_lambda``; ``changes`` (``init``, ``oe_lambda``, ``train``)
        add to or replace them."""
        learning_rate = getattr(self, self.baseline_lr_field if schedule == "baseline" else f"{schedule}_lr")
        settings = {"oe_lambda": self.oe_lambda} if schedule == "oe" else {}
        return Stage(name, learning_rate, getattr(self, f"{schedule}_epochs"), getattr(self, f"{schedule}_max_steps"),
                     getattr(self, f"{schedule}_max_minutes"), **{**settings, **changes})


def stage_default(name: str, default: Any, help: str | None = None) -> Any:
    """A redeclared :class:`StageSettings` field ``name`` with another ``default`` (and ``help``), its flag kept."""
    metadata = dict(StageSettings.__dataclass_fields__[name].metadata)
    if help is not None:
        metadata["help"] = help
    return dataclasses.field(default=default, metadata=metadata)


def apply_preset(config_cls: type, presets: Mapping[str, Mapping[str, Any]], preset: str, given: Mapping[str, Any],
                 **fixed: Any) -> Any:
    """``config_cls(**fixed, **presets[preset], **given)``: the preset's settings, each replaced by the one ``given``
    (``None`` = not given), and the fields the caller fixes (``level``, ``dataset``).

    The settings are merged before the one construction (not ``dataclasses.replace`` on a built config), so that
    what ``__post_init__`` derives (``max_length`` from ``dataset``, ``protocols`` from ``level``) follows them.

    Raises:
        ValueError: an unknown preset, a setting that is not a field of ``config_cls``, or a value the config refuses.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; available: {tuple(presets)}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; {config_cls.__name__} has {sorted(fields)}")
    settings = copy.deepcopy(dict(presets[preset]))  # a config never shares the table's dicts
    settings.update({k: v for k, v in given.items() if v is not None})
    return config_cls(**fixed, **settings)
