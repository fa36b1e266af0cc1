"""One staged experiment runner: every recipe pipeline (PTB language models, vision classifiers, PixelCNN++, text
classifiers) is a configuration of it.

Details: docs/experiments.md, section ``oe_common.experiments.experiment``.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import set_seed

from ..training.callbacks import check_time_budget, time_budget_callbacks, training_steps_report
from .data_dir import MissingDataError, resolve_data_dir
from .files import make_readable
from .reporting import current_attempt, recorded_attempts
from .run_folder import RunFolder

__all__ = ["Stage", "StageResult", "StagedExperiment", "StageModels", "run_experiment", "train_log", "shared_training_arguments",
           "stage_logs", "all_records"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: the stage's name in records, checkpoints (``checkpoints/<name>/``) and saved models (``<name>_model``).
        learning_rate: peak learning rate of the stage's schedule.
        epochs: passes over the in-distribution training set (used when ``max_steps <= 0``).
        max_steps: optimisation steps; ``> 0`` overrides ``epochs``.
        max_minutes: wall-clock budget (``None``: none); see :func:`oe_common.training.callbacks.time_budget_callbacks`.
        oe_lambda: weight of the OE term, ``loss = L_in + oe_lambda * L_OE``; ``None``: the stage sees no outliers.
        init: ``None``: a fresh model, built right after ``set_seed(seed)``; else the name of an earlier stage whose
            trained model this stage continues to train.
        train: ``False``: the stage's model is used as built (e.g. a given pretrained checkpoint), not trained.
    """

    name: str
    learning_rate: float
    epochs: float = 1.0
    max_steps: int = -1
    max_minutes: float | None = None
    oe_lambda: float | None = None
    init: str | None = None
    train: bool = True

    def __post_init__(self) -> None:
        if self.train and not self.max_steps > 0 and not self.epochs > 0:
            raise ValueError(f"stage {self.name!r}: give epochs > 0 or max_steps > 0")
        check_time_budget(f"{self.name} max_minutes", self.max_minutes)

    @property
    def uses_outliers(self) -> bool:
        """Whether the stage trains with the outlier set (``oe_lambda`` is not ``None``)."""
        return self.oe_lambda is not None

    def training_arguments(self, output_dir: str | Path) -> dict[str, Any]:
        """The stage's ``OETrainingArguments`` keywords: ``output_dir`` (``<output_dir>/checkpoints/<name>``),
        ``learning_rate``, ``num_train_epochs``, ``max_steps`` and, with outliers, ``oe_lambda``."""
        kwargs = {"output_dir": str(Path(output_dir) / "checkpoints" / self.name), "learning_rate": self.learning_rate,
                  "num_train_epochs": self.epochs, "max_steps": self.max_steps}
        if self.uses_outliers:
            kwargs["oe_lambda"] = self.oe_lambda
        return kwargs

    def callbacks(self) -> list[Any]:
        """The stage's Trainer callbacks: its time budget (none without one)."""
        return time_budget_callbacks(self.max_minutes)


@dataclasses.dataclass
class StageResult:
    """What a finished stage leaves: JSON-able ``state`` (``state["records"]``: its records) and ``arrays``."""

    state: dict[str, Any]
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self.state.get("records", []))


class StageModels(dict):
    """``{stage name: trained model}``; a stage finished in an earlier attempt is loaded from the run folder on
    first use (``StagedExperiment.build_model`` gives the class, ``RunFolder.load_stage_model`` the weights)."""

    def __init__(self, loader: Callable[[str], Any]):
        super().__init__()
        self._loader = loader

    def __missing__(self, name: str) -> Any:
        self[name] = model = self._loader(name)
        return model


def train_log(trainer: Any) -> dict[str, float]:
    """The last logged training values and the run summary of ``trainer`` (``loss``, ``train_runtime``, ...)."""
    history = trainer.state.log_history
    logged = [entry for entry in history if "loss" in entry]
    summary = {**(logged[-1] if logged else {}), **(history[-1] if history else {})}
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}


def shared_training_arguments(stage: Stage, output_dir: str | Path, config: Any) -> dict[str, Any]:
    """``stage.training_arguments(output_dir)`` plus what every pipeline sets alike: batch sizes ``config.batch_size``
    / ``config.eval_batch_size``, ``seed = data_seed = config.seed``, a cosine schedule, step checkpoints of which only
    the newest is kept, no reporting integration, pinned memory on CUDA."""
    return {**stage.training_arguments(output_dir), "per_device_train_batch_size": config.batch_size,
            "per_device_eval_batch_size": config.eval_batch_size, "lr_scheduler_type": "cosine", "save_strategy": "steps",
            "save_total_limit": 1, "report_to": "none", "seed": int(config.seed), "data_seed": int(config.seed),
            "dataloader_pin_memory": torch.cuda.is_available()}


def all_records(results: Mapping[str, StageResult]) -> list[dict[str, Any]]:
    """The records of every stage, in stage order."""
    return [record for result in results.values() for record in result.records]


def stage_logs(results: Mapping[str, StageResult]) -> dict[str, dict[str, Any]]:
    """``{"train_logs": {stage: train_log}, "training_steps": {stage: steps report}}`` of the trained stages' states."""
    return {"train_logs": {name: r.state["train_log"] for name, r in results.items()},
            "training_steps": {name: r.state["training_steps"] for name, r in results.items() if "training_steps" in r.state}}


class StagedExperiment(abc.ABC):
    """A pipeline: what one experiment trains, evaluates and reports. Subclasses set ``config`` (a dataclass: its
    fields are the run's configuration in ``run_manifest.json``) and implement the abstract hooks."""

    config: Any
    #: Name of the folder that holds a stage's saved model: ``<output_dir>/<stage>_model``.
    model_dir_suffix = "_model"

    def __init__(self, config: Any):
        self.config = config
        self.data: Any = None

    # ---- what every pipeline says --------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @abc.abstractmethod
    def stages(self) -> Sequence[Stage]:
        """The stages, in the order they run."""

    @abc.abstractmethod
    def load_data(self, data_dir: str | Path | None) -> Any:
        """Load (and return) the data bundle; the runner stores it as ``self.data``."""

    @abc.abstractmethod
    def build_model(self, stage: Stage) -> Any:
        """A fresh model for ``stage`` (the runner has just called ``set_seed(seed)``); also the class a finished
        stage's saved model is loaded as."""

    @abc.abstractmethod
    def make_trainer(self, stage: Stage, model: Any, output_dir: Path) -> Any:
        """The Trainer of ``stage`` (not yet trained). Use ``stage.training_arguments(output_dir)`` and
        ``stage.callbacks()``; pass the outlier set only when ``stage.uses_outliers``."""

    @abc.abstractmethod
    def evaluate(self, stage: Stage, model: Any, trainer: Any) -> StageResult:
        """Score the trained model of ``stage``: its records (``state["records"]``), metrics and arrays."""

    @abc.abstractmethod
    def report(self, results: Mapping[str, StageResult], models: StageModels, seconds: dict[str, float],
               output_dir: Path, is_main: bool) -> dict[str, Any]:
        """Write ``results.json`` / ``results.md`` / plots (main process) and return the run's result
        (``{"records": [...], "meta": {...}, "paths": {...}, ...}``)."""

    # ---- defaults a pipeline may override ------------------------------------------------------------------------
    def continue_model(self, stage: Stage, model: Any) -> Any:
        """The model ``stage`` trains, given the trained model of ``stage.init``: by default that model itself (trained
        further in place). Override to build on it instead (e.g. a new part around a copy of it, left frozen)."""
        return model

    def detector(self, results: Mapping[str, StageResult], models: StageModels) -> Any | None:
        """The run's deployable detector (an :class:`oe_common.deployment.detector.OODDetector` with its threshold fitted on
        validation data and :meth:`provenance` as its ``training``), or ``None`` (the default: no detector). The runner
        saves it, on the main process after :meth:`report`, as ``<output_dir>/detector`` (``paths["detector"]``); a
        run with several returns ``{folder name: detector}`` (each saved as ``<output_dir>/<name>``, ``paths[name]``)."""
        return None

    def provenance(self, **datasets: Any) -> dict[str, Any]:
        """The detector card's ``training`` entry: ``datasets`` (``in_distribution_dataset``, ``outlier_dataset``,
        ``test_anomaly_datasets``, ...), then every set field of the config (its settings: ``oe_lambda``, rates, ...)."""
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if v not in (None, (), [], {})}
        return {**datasets, **settings}

    def save_model(self, stage: Stage, model: Any, trainer: Any, output_dir: Path) -> Path | None:
        """Save the stage's trained model (safetensors) when ``config.save_models`` (default ``True``); return its
        folder, or ``None`` when not saved."""
        if not getattr(self.config, "save_models", True):
            return None
        folder = output_dir / f"{stage.name}{self.model_dir_suffix}"
        trainer.save_model(str(folder))
        return folder


def run_experiment(experiment: StagedExperiment, output_dir: str | Path, data_dir: str | Path | None = None, data: Any = None,
                   overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run every stage of ``experiment``, then its report, in ``output_dir``.

    ``output_dir`` must be new or empty, unless ``overwrite`` (its contents are deleted first) or ``resume`` (an
    interrupted run there continues: finished stages are loaded, the running one continues from its last
    checkpoint); see :class:`oe_common.experiments.run_folder.RunFolder`. ``data``: an already loaded data bundle (tests).

    Returns what ``experiment.report`` returns.
    """
    output_dir = Path(output_dir)
    read_from = None if data is not None else _data_folder(data_dir)
    run = RunFolder.open(output_dir, dataclasses.asdict(experiment.config), overwrite=overwrite, resume=resume, data_dir=read_from)
    run.record_attempt(current_attempt())  # a resumed run's report names every attempt's commit
    try:
        return _run_stages(experiment, run, output_dir, data_dir, data)
    finally:
        run.close()  # the lock is released and the files made are recorded, however the run ended


def _data_folder(data_dir: str | Path | None) -> Path | None:
    """The data folder a run reads (``data_dir``, else ``$OE_DATA_DIR``); ``None`` when there is none (loading the
    data then fails with its own message)."""
    try:
        return resolve_data_dir(data_dir)
    except MissingDataError:
        return None


def _run_stages(experiment: StagedExperiment, run: RunFolder, output_dir: Path, data_dir: str | Path | None, data: Any) -> dict[str, Any]:
    run.start_stage("data")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    set_seed(experiment.seed)
    experiment.data = data if data is not None else experiment.load_data(data_dir)
    seconds["data"] = time.perf_counter() - started

    stages = list(experiment.stages())
    by_name = {stage.name: stage for stage in stages}
    continued = {stage.init for stage in stages if stage.init is not None}
    unknown = continued - set(by_name)
    if unknown:
        raise ValueError(f"stage init {sorted(unknown)} names no stage of {list(by_name)}")
    models = StageModels(lambda name: run.load_stage_model(name, experiment.build_model(by_name[name])))
    results: dict[str, StageResult] = {}
    for stage in stages:
        if run.stage_done(stage.name):  # --resume: a finished stage is loaded, not trained again
            state, arrays = run.load_stage(stage.name)
            results[stage.name] = StageResult(state, arrays)
            seconds.update({f"{stage.name}_{k}": v for k, v in state.get("seconds", {}).items()})
            continue
        run.start_stage(stage.name)
        if stage.init is None:
            set_seed(experiment.seed)
            model = experiment.build_model(stage)
        else:
            model = experiment.continue_model(stage, models[stage.init])
        t0 = time.perf_counter()
        trainer = experiment.make_trainer(stage, model, output_dir)
        if stage.train:
            trainer.train(resume_from_checkpoint=run.last_checkpoint(stage.name))
        seconds[f"{stage.name}_train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = experiment.evaluate(stage, model, trainer)
        seconds[f"{stage.name}_eval"] = time.perf_counter() - t0
        result.state["seconds"] = {k: seconds[f"{stage.name}_{k}"] for k in ("train", "eval")}
        if stage.train:
            result.state.setdefault("training_steps", training_steps_report(trainer))
        result.state.setdefault("train_log", train_log(trainer))
        model_dir = experiment.save_model(stage, model, trainer, output_dir) if run.is_main else None
        if model_dir is not None:
            make_readable(model_dir)
        run.finish_stage(stage.name, result.state, result.arrays, model_dir=model_dir,
                         model=model if stage.name in continued else None)
        run.drop_checkpoints(stage.name)  # resume state only: the stage's model and state are saved
        results[stage.name] = result
        models[stage.name] = model

    run.start_stage("report")
    seconds["total"] = time.perf_counter() - started
    with recorded_attempts(run.manifest["attempts"]):
        outcome = experiment.report(results, models, seconds, output_dir, run.is_main)
        detectors = experiment.detector(results, models) if run.is_main else None
        for name, detector in (detectors.items() if isinstance(detectors, Mapping) else [("detector", detectors)]):
            if detector is not None:
                outcome.setdefault("paths", {})[name] = detector.save_pretrained(output_dir / name)
    run.complete()  # last: the folder now holds a complete run
    return outcome
