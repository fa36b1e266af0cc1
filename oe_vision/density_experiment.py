"""The PixelCNN++ Outlier Exposure experiment (paper Table 5) as library code; ``recipes/pixelcnn_oe.py`` parses arguments.

Details: docs/modules.md, section ``oe_vision.density_experiment``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from oe_common.experiments.arg_types import non_negative_float, non_negative_int
from oe_common.experiments.experiment import (Stage, StagedExperiment, StageModels, StageResult, all_records, run_experiment,
                                  shared_training_arguments, stage_logs)
from oe_common.experiments.presets import StageSettings, apply_preset
from oe_common.experiments.recipe_args import flag
from oe_common.experiments.reporting import percent_cell, plot_roc_and_histogram, protocol_sentence, run_meta, steps_cell, time_budget_notes, write_results

from . import data as vdata
from .detection_tables import records_by_set, row_label, unseen_and_overlap_records
from .density_trainer import DensityOETrainer, DensityOETrainingArguments, density_collate, to_uint8_pixels
from .modeling_pixelcnnpp import PixelCNNPPConfig, PixelCNNPPModel

__all__ = [
    "DATASETS",
    "PRESET_NAMES",
    "PAPER_TABLE5_MEAN",
    "OE_HELDOUT_NAME",
    "DensityOEConfig",
    "DensityData",
    "UInt8ImageDataset",
    "preset_config",
    "to_uint8_dataset",
    "load_density_data",
    "build_model",
    "training_arguments",
    "score_sets",
    "bits_per_dim_summary",
    "evaluate_density",
    "table5_markdown",
    "likelihood_markdown",
    "PixelCNNDensityExperiment",
    "run_density_oe",
]

DATASETS = ("mnist", "cifar10")
SCORE = "bits_per_dim"
#: ``model`` (the architecture) of every record.
MODEL = "pixelcnn++"
#: Row name of the held-out OE-source images.
OE_HELDOUT_NAME = "oe_source_heldout"
#: Paper Table 5, PixelCNN++ on CIFAR-10, mean over its anomaly sets (percentages): (baseline, OE).
PAPER_TABLE5_MEAN = {"fpr95": (66.6, 46.4), "auroc": (65.8, 83.7), "aupr": (39.9, 66.0)}
_ITEM_HINT = "(image, label) pairs or dicts with 'pixel_values'"


@dataclasses.dataclass
class DensityOEConfig(StageSettings):
    """Everything a PixelCNN++ OE run depends on (the stage settings: :class:`~oe_common.experiments.presets.StageSettings`)."""

    dataset: str = dataclasses.field(default="mnist", metadata=flag("in-distribution data (cifar10 needs $OE_CIFAR10_DIR or --cifar-dir)", choices=DATASETS))
    model_preset: str = "tiny"  # a PixelCNNPPConfig preset ("tiny" | "paper") ...
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict, metadata=flag(command_line=False))  # ... with these fields replaced
    baseline_checkpoint: str | None = dataclasses.field(  # a saved PixelCNNPPModel to start from (skips baseline training)
        default=None, metadata=flag("a saved PixelCNN++ (folder) to fine-tune instead of training a baseline"))
    # data
    oe_source: str = dataclasses.field(default="auto", metadata=flag(  # MNIST: "auto" (CIFAR-10 gray when available, else iSUN) | "cifar10" | "isun"; CIFAR-10: "isun" ("auto" = "isun")
        "MNIST's OE source (auto: CIFAR-10 gray when present, else iSUN)", choices=("auto", "cifar10", "isun")))
    train_size: int | None = None  # cap on the in-distribution training images (None = all)
    test_size: int | None = dataclasses.field(  # cap on the in-distribution test images (None = all: the paper's protocol)
        default=None, metadata=flag("cap on the D_in test images (smoke runs only)"))
    ood_size: int | None = dataclasses.field(default=None, metadata=flag("images per anomaly set"))  # (None = real sets in full, synthetic sets of 10,000)
    oe_holdout: int = 1000  # OE-source images never trained on, scored as "oe_source_heldout"
    oe_pool_size: int | None = None  # cap on the OE-source images used for training (None = the rest)
    cifar_dir: str | None = dataclasses.field(default=None, metadata=flag("folder with CIFAR-10's train-0*.npz / test.npz (default: $OE_CIFAR10_DIR)"))
    # optimisation (AdamW without weight decay, cosine schedule, the last weights kept)
    batch_size: int = dataclasses.field(  # in-distribution images per step; the outlier batch has the same size (the paper's pairing)
        default=32, metadata=flag("in-distribution images per step (= outliers per step)"))
    eval_batch_size: int = 256
    baseline_lr: float = 1e-3
    oe_lr: float = 3e-4  # oe_epochs 1 (paper: 1-2 epochs of OE fine-tuning)
    margin_per_subpixel: float = dataclasses.field(  # our reading of the paper's "a margin of 1 per pixel" (unit not stated)
        default=1.0, metadata=flag("margin in nats per subpixel (paper: 1)", arg_type=non_negative_float, aliases=["--margin"]))
    warmup_ratio: float = dataclasses.field(default=0.0, metadata=flag(arg_type=non_negative_float))
    max_grad_norm: float = dataclasses.field(default=1.0, metadata=flag(arg_type=non_negative_float))  # 0: no clipping
    oe_concat_forward: bool = True
    # evaluation
    n_draws: int = 1
    ratio: int = 5
    recall_level: float = 0.95
    allow_small_sets: bool = dataclasses.field(  # an anomaly set with fewer than len(test) // ratio images: an error unless True (used whole, labelled)
        default=False, metadata=flag("use an anomaly set with fewer than len(test) // 5 images whole (labelled in the tables) instead of stopping"))
    # runtime
    num_threads: int | None = dataclasses.field(default=None, metadata=flag(command_line=False))  # torch CPU threads for the run (CPU only; restored afterwards): --threads
    num_workers: int = dataclasses.field(default=0, metadata=flag(arg_type=non_negative_int))
    logging_steps: int = 50
    save_steps: int = dataclasses.field(  # a resumable checkpoint of the running stage every this many steps (best a multiple of logging_steps)
        default=500, metadata=flag("a resumable checkpoint every this many steps of each stage (default: the preset's)"))
    save_models: bool = True
    seed: int = dataclasses.field(default=0, metadata=flag(arg_type=non_negative_int))

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset == "cifar10" and self.oe_source == "auto":
            self.oe_source = "isun"  # CIFAR-10's only OE source here
        sources = ("auto", "cifar10", "isun") if self.dataset == "mnist" else ("isun",)
        if self.oe_source not in sources:
            raise ValueError(f"oe_source for {self.dataset} must be one of {sources}, got {self.oe_source!r}")
        for name in ("margin_per_subpixel", "warmup_ratio", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "n_draws", "ratio", "oe_holdout", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "test_size", "ood_size", "oe_pool_size", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if not 0.5 <= self.recall_level < 1:
            raise ValueError(f"recall_level must be in [0.5, 1), got {self.recall_level}")
        if self.baseline_checkpoint is None and self.baseline_max_steps <= 0 and not self.baseline_epochs > 0:
            raise ValueError("give baseline_epochs > 0 or baseline_max_steps > 0 (or a baseline_checkpoint)")
        if self.oe_max_steps <= 0 and not self.oe_epochs > 0:
            raise ValueError("give oe_epochs > 0 or oe_max_steps > 0")
        super().__post_init__()
        self.model_config()  # fails early on a bad preset / override

    @property
    def fpr_key(self) -> str:
        return f"fpr{round(self.recall_level * 100)}"

    def model_config(self) -> PixelCNNPPConfig:
        """The PixelCNN++ configuration; its channels / size are checked against the dataset."""
        config = PixelCNNPPConfig.from_preset(self.model_preset, **self.model_overrides)
        channels, size = (1, 28) if self.dataset == "mnist" else (3, 32)
        if (config.image_channels, config.image_size) != (channels, size):
            raise ValueError(
                f"{self.dataset} images are {channels}x{size}x{size} but the model preset {self.model_preset!r} (+ overrides) is built for "
                f"{config.image_channels}x{config.image_size}x{config.image_size}: set model_overrides image_channels / image_size"
            )
        return config


_MNIST_MODEL = dict(image_channels=1, image_size=28)
_CIFAR_TINY_MODEL = dict(image_channels=3, image_size=32)
# Presets. "test": the unit test (tiny model, a few hundred MNIST images, a few dozen steps, seconds on a CPU).
# "tiny": the CPU demo (the tiny PixelCNN++, an MNIST subset, one thread: on a shared 2-core machine the small
# convolutions ran 2-3x faster on one thread than on two). "paper": GPU runs; CIFAR-10 uses the PixelCNN++ paper's
# model (53.7 M parameters: days of training to reach its 2.92 bits/dim from scratch -- pass a trained model as
# baseline_checkpoint to fine-tune it with OE only), MNIST a mid-sized gray model.
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "test": dict(model_preset="tiny", model_overrides=dict(_MNIST_MODEL, nr_filters=8, nr_logistic_mix=2), oe_source="isun", train_size=384,
                     test_size=150, ood_size=60, oe_holdout=60, oe_pool_size=384, batch_size=16, eval_batch_size=150,
                     baseline_lr=4e-3, baseline_max_steps=40, oe_lr=2e-3, oe_max_steps=16, logging_steps=8, save_steps=16,
                     save_models=False, num_threads=1),
        "tiny": dict(model_preset="tiny", model_overrides=dict(_MNIST_MODEL), oe_source="isun", train_size=4000, test_size=1000, ood_size=200, oe_holdout=200,
                     batch_size=16, eval_batch_size=100, baseline_lr=2e-3, baseline_epochs=1.0, oe_lr=5e-4, oe_epochs=0.5,
                     logging_steps=25, save_steps=50, num_threads=1),
        "paper": dict(model_preset="tiny", model_overrides=dict(_MNIST_MODEL, nr_resnet=3, nr_filters=80, nr_logistic_mix=5, dropout=0.1),
                      oe_source="auto", oe_holdout=2000, batch_size=64, eval_batch_size=500, baseline_lr=1e-3, baseline_epochs=20.0,
                      oe_lr=2e-4, oe_epochs=2.0, n_draws=10, num_workers=4, logging_steps=100, save_steps=1000),
    },
    "cifar10": {
        "test": dict(model_preset="tiny", model_overrides=dict(_CIFAR_TINY_MODEL, nr_filters=8, nr_logistic_mix=2), train_size=256,
                     test_size=100, ood_size=40, oe_holdout=40, oe_pool_size=256, batch_size=16, eval_batch_size=100,
                     baseline_lr=4e-3, baseline_max_steps=16, oe_lr=2e-3, oe_max_steps=8, logging_steps=8, save_steps=8,
                     save_models=False, num_threads=1),
        "tiny": dict(model_preset="tiny", model_overrides=dict(_CIFAR_TINY_MODEL), train_size=3000, test_size=500, ood_size=100,
                     oe_holdout=200, batch_size=16, eval_batch_size=100, baseline_lr=2e-3, baseline_epochs=1.0, oe_lr=5e-4,
                     oe_epochs=0.5, logging_steps=25, save_steps=50, num_threads=1),
        "paper": dict(model_preset="paper", oe_holdout=1000, batch_size=32, eval_batch_size=250, baseline_lr=1e-3, baseline_epochs=100.0,
                      oe_lr=1e-4, oe_epochs=2.0, n_draws=10, num_workers=8, logging_steps=100, save_steps=500),
    },
}


PRESET_NAMES = tuple(_PRESETS["mnist"])


def preset_config(dataset: str, preset: str, **overrides: Any) -> DensityOEConfig:
    """The :class:`DensityOEConfig` of a named preset (``test``, ``tiny``, ``paper``) with ``overrides`` (``None`` ignored)."""
    if dataset not in _PRESETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return apply_preset(DensityOEConfig, _PRESETS[dataset], preset, overrides, dataset=dataset)


# ================================================================================================ data
class UInt8ImageDataset(vdata.TensorImageDataset):
    """A :class:`~oe_vision.data.TensorImageDataset` of ``uint8`` images ``(N, C, H, W)`` (``images``; labels default
    to :data:`~oe_vision.data.OOD_LABEL`). Use with :func:`oe_vision.density_trainer.density_collate` (uint8 goes to
    the model as is)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, name: str = ""):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        super().__init__(images, torch.full((len(images),), vdata.OOD_LABEL) if labels is None else labels, name)

    @property
    def images(self) -> torch.Tensor:
        return self.pixel_values


def _pairs_collate(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if batch and isinstance(batch[0], Mapping):
        return torch.stack([torch.as_tensor(b["pixel_values"]) for b in batch]), torch.as_tensor([int(b.get("labels", b.get("label", -1))) for b in batch])
    try:
        pixels, labels = zip(*((b[0], b[1]) for b in batch), strict=True)
    except (TypeError, IndexError) as err:
        raise TypeError(f"dataset items must be {_ITEM_HINT}") from err
    return torch.stack([torch.as_tensor(p) for p in pixels]), torch.as_tensor(labels, dtype=torch.int64)


def to_uint8_dataset(
    dataset: Dataset, name: str = "", unstandardize: tuple[Sequence[float], Sequence[float]] | None = None,
    batch_size: int = 512, num_workers: int = 0,
) -> UInt8ImageDataset:
    """Run ``dataset``'s transforms once and keep the images as ``uint8``.

    Items are (image, label) pairs or dicts with ``"pixel_values"``, images ``uint8`` or floats in ``[0, 1]``; ``unstandardize=(mean, std)`` first
    maps per-channel standardised images back (``x * std + mean``). Floats are clamped to ``[0, 1]`` and rounded to
    the 256 levels (:func:`~oe_vision.density_trainer.to_uint8_pixels`).
    """
    name = name or getattr(dataset, "name", "")
    if len(dataset) == 0:
        raise ValueError(f"cannot convert an empty dataset ({name})")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_pairs_collate)
    images, labels = [], []
    for pixels, label in tqdm(loader, desc=f"preparing {name}", leave=False, disable=len(dataset) <= 2 * batch_size):
        if unstandardize is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in unstandardize)
            pixels = pixels.float() * std + mean
        images.append(to_uint8_pixels(pixels))
        labels.append(label)
    return UInt8ImageDataset(torch.cat(images), torch.cat(labels), name)


@dataclasses.dataclass
class DensityData:
    """The data of one run, all :class:`UInt8ImageDataset`. ``overlap_sets``: anomaly rows that share the OE source's
    distribution (``isun_gray`` with iSUN outliers, and always the held-out OE-source images); not in the ``mean``."""

    dataset: str
    train: UInt8ImageDataset
    test: UInt8ImageDataset
    ood: dict[str, UInt8ImageDataset]
    oe_train: UInt8ImageDataset
    oe_heldout: UInt8ImageDataset
    oe_source_name: str
    overlap_sets: tuple[str, ...]

    @property
    def mean_sets(self) -> tuple[str, ...]:
        """The unseen anomaly sets, averaged in the ``mean`` rows."""
        return tuple(n for n in self.ood if n not in self.overlap_sets)

    def eval_sets(self) -> dict[str, UInt8ImageDataset]:
        """``{"test", <anomaly sets>, "oe_source_heldout"}``: what every model is scored on."""
        return {"test": self.test, **self.ood, OE_HELDOUT_NAME: self.oe_heldout}

    def stats(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train), "n_test": len(self.test), "n_ood": {n: len(d) for n, d in self.ood.items()},
            "oe_source": self.oe_source_name, "n_oe_train": len(self.oe_train), "n_oe_heldout": len(self.oe_heldout),
            "mean_sets": list(self.mean_sets), "overlap_sets": list(self.overlap_sets),
            "image_shape": list(self.test.images.shape[1:]),
        }


def load_density_data(cfg: DensityOEConfig, data_dir: str | Path | None = None) -> DensityData:
    """Load, subset and convert the data of ``cfg`` to ``uint8`` (docs/modules.md). Nothing is downloaded: missing
    corpora raise :class:`oe_vision.data.MissingDataError` naming what is expected."""
    seed, workers = cfg.seed, cfg.num_workers
    unstandardize = None
    if cfg.dataset == "mnist":
        train, test = vdata.mnist_in_distribution(data_dir)
        oe_pool = vdata.mnist_oe_source(data_dir, source=cfg.oe_source, cifar_dir=cfg.cifar_dir)
        ood = vdata.mnist_ood_sets(data_dir, n=cfg.ood_size, seed=seed)
    else:
        raw = vdata.image_transform()  # [0, 1], no standardisation, no augmentation
        train = vdata.load_cifar10("train", cfg.cifar_dir, data_dir, raw)
        test = vdata.load_cifar10("test", cfg.cifar_dir, data_dir, raw)
        oe_pool = vdata.load_isun(data_dir, vdata.image_transform(size=32, channels=3), part="oe")  # unlabeled (-1)
        oe_pool.name = "oe:isun-oe-rgb32"
        ood = vdata.cifar10_ood_sets(data_dir, n=cfg.ood_size, seed=seed)
        unstandardize = (vdata.CIFAR10_MEAN, vdata.CIFAR10_STD)
    oe_name = getattr(oe_pool, "name", "oe")
    if cfg.oe_holdout >= len(oe_pool):
        raise ValueError(f"oe_holdout {cfg.oe_holdout} leaves no OE-source image for training out of {len(oe_pool)}")
    perm = torch.randperm(len(oe_pool), generator=torch.Generator().manual_seed(seed + 4242)).tolist()
    held, rest = sorted(perm[: cfg.oe_holdout]), perm[cfg.oe_holdout :]
    rest = sorted(rest if cfg.oe_pool_size is None else rest[: cfg.oe_pool_size])
    data = DensityData(
        dataset=cfg.dataset,
        train=to_uint8_dataset(vdata.capped(train, cfg.train_size, seed, 301), f"{cfg.dataset}-train", num_workers=workers),
        test=to_uint8_dataset(vdata.capped(test, cfg.test_size, seed, 302), f"{cfg.dataset}-test", num_workers=workers),
        ood={name: to_uint8_dataset(ds, name, unstandardize, num_workers=workers) for name, ds in ood.items()},
        oe_train=to_uint8_dataset(Subset(oe_pool, rest), oe_name, num_workers=workers),
        oe_heldout=to_uint8_dataset(Subset(oe_pool, held), OE_HELDOUT_NAME, num_workers=workers),
        oe_source_name=oe_name,
        overlap_sets=(),
    )
    overlap = tuple(n for n in data.ood if cfg.dataset == "mnist" and "isun" in oe_name and n == "isun_gray")
    data.overlap_sets = overlap + (OE_HELDOUT_NAME,)
    return data


# ================================================================================================ training
def build_model(cfg: DensityOEConfig) -> PixelCNNPPModel:
    """A fresh PixelCNN++ for ``cfg`` or, with ``baseline_checkpoint``, the saved model (its shape is checked)."""
    if cfg.baseline_checkpoint:
        model = PixelCNNPPModel.from_pretrained(cfg.baseline_checkpoint)
        want = cfg.model_config()
        if (model.config.image_channels, model.config.image_size) != (want.image_channels, want.image_size):
            raise ValueError(f"baseline_checkpoint {cfg.baseline_checkpoint!r} is a {model.config.image_channels}-channel "
                             f"{model.config.image_size}px model; {cfg.dataset} needs {want.image_channels} channels, {want.image_size}px")
        return model
    return PixelCNNPPModel(cfg.model_config())


def training_arguments(cfg: DensityOEConfig, stage: Stage, output_dir: str | Path) -> DensityOETrainingArguments:
    """Arguments of ``stage``: its learning rate, length, ``oe_lambda`` and checkpoint folder
    (:meth:`oe_common.experiments.experiment.Stage.training_arguments`); AdamW without weight decay, cosine schedule, no evaluation
    during training (the last weights are kept), TF32 on GPUs (no bf16: docs/modules.md). Every ``cfg.save_steps``
    steps (and at the end) a checkpoint in ``<output_dir>/checkpoints/<stage>/`` (safetensors weights + optimizer,
    scheduler, RNG, outlier stream and margin counts; the newest one kept) that ``--resume`` continues from."""
    return DensityOETrainingArguments(
        **shared_training_arguments(stage, output_dir, cfg),
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        eval_strategy="no",
        save_steps=cfg.save_steps,
        save_only_model=False,  # optimizer / scheduler / RNG state too: needed to resume
        logging_steps=cfg.logging_steps,
        tf32=True if torch.cuda.is_available() else None,
        dataloader_num_workers=cfg.num_workers,
        disable_tqdm=False,
        oe_margin_per_subpixel=cfg.margin_per_subpixel,
        oe_batch_ratio=1.0,  # equal in / outlier batch sizes
        oe_concat_forward=cfg.oe_concat_forward,
        oe_seed=cfg.seed + 1,
    )


# ================================================================================================ evaluation
def score_sets(trainer: DensityOETrainer, sets: Mapping[str, Dataset], desc: str = "scoring") -> dict[str, np.ndarray]:
    """Bits per dimension of every image of every set: ``{name: (n,) float64}``."""
    return {name: trainer.compute_scores(ds, SCORE) for name, ds in tqdm(list(sets.items()), desc=desc, leave=False)}


def bits_per_dim_summary(scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per set (``scores`` must hold ``"test"``, the in-distribution test images): mean and median bits/dim, the
    fraction of its images below the in-distribution median, and ``more_likely_than_in``: its MEAN bits/dim is lower
    than the in-distribution test mean (the failure of likelihood-based detection the paper's OE experiment fixes)."""
    if "test" not in scores:
        raise ValueError("scores need the in-distribution 'test' set")
    in_mean, in_median = float(np.mean(scores["test"])), float(np.median(scores["test"]))
    summary = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        summary[name] = {
            "mean": float(values.mean()), "median": float(np.median(values)), "n": int(values.size),
            "frac_below_in_median": float((values < in_median).mean()),
            "more_likely_than_in": bool(values.mean() < in_mean) if name != "test" else None,
        }
    return summary


def evaluate_density(scores: Mapping[str, np.ndarray], data: DensityData, cfg: DensityOEConfig, stage: str) -> list[dict[str, Any]]:
    """Detection records of one model: every unseen set + ``mean`` (over them), then the overlap rows
    (:func:`oe_vision.detection_tables.unseen_and_overlap_records`).

    Fields: :meth:`oe_common.maths.metrics.OODTable.records` (``task``, ``dataset``, ``model`` = ``pixelcnn++``, ``stage``,
    ``score`` = ``bits_per_dim``, ``ood_set``, ``fpr95`` (or the ``recall_level``'s), ``auroc``, ``aupr`` (anomalies
    positive), ``aupr_in``, stds over draws and what ran; a set smaller than ``len(test) // ratio`` is an error unless
    ``cfg.allow_small_sets``), ``oe_source_overlap``, and the likelihood check: ``mean_bits_per_dim``,
    ``median_bits_per_dim``, ``in_mean_bits_per_dim``, ``frac_below_in_median``, ``more_likely_than_in`` (for ``mean``:
    the number of unseen sets more likely than D_in, ``n_more_likely_than_in``). Metric values are fractions.
    """
    summary = bits_per_dim_summary(scores)
    records, _ = unseen_and_overlap_records(scores["test"], scores, data.mean_sets, [n for n in data.overlap_sets if n in scores], cfg,
                                            cfg.recall_level, task="detection", dataset=cfg.dataset, model=MODEL, stage=stage, score=SCORE)
    in_mean = summary["test"]["mean"]
    for record in records:
        record["in_mean_bits_per_dim"] = in_mean
        if record["ood_set"] == "mean":
            means = [summary[n]["mean"] for n in data.mean_sets]
            record["mean_bits_per_dim"] = float(np.mean(means))
            record["n_more_likely_than_in"] = int(sum(summary[n]["more_likely_than_in"] for n in data.mean_sets))
            continue
        s = summary[record["ood_set"]]
        record.update(mean_bits_per_dim=s["mean"], median_bits_per_dim=s["median"], frac_below_in_median=s["frac_below_in_median"],
                      more_likely_than_in=s["more_likely_than_in"])
    return records


# ================================================================================================ Markdown
def table5_markdown(records: Sequence[Mapping[str, Any]], fpr_key: str = "fpr95") -> str:
    """Paper Table 5 layout: per anomaly set ``baseline → OE`` for FPR / AUROC / AUPR (percentages), the ``mean``,
    the paper's CIFAR-10 means (labelled as the paper's), then the overlap rows (marked †, not in the mean). A set that
    did not run at the requested base rate and draws is labelled with what ran (``mnist [1:10, 1 draw]``)."""
    base, oe = records_by_set(records, "baseline"), records_by_set(records, "oe")
    label = fpr_key.upper()
    lines = [f"| D_out^test | {label} ↓ | AUROC ↑ | AUPR ↑ |", "|---|---|---|---|"]

    def row(ood_set: str) -> str:
        b, o = base[ood_set], oe.get(ood_set)
        cells = [f"{percent_cell(b[k])} → {percent_cell(o[k]) if o else '–'}" for k in (fpr_key, "auroc", "aupr")]
        return "| " + " | ".join([row_label(ood_set, b), *cells]) + " |"

    lines += [row(n) for n in base if n != "mean" and not base[n]["oe_source_overlap"]]
    if "mean" in base:
        lines.append(row("mean"))
    paper = PAPER_TABLE5_MEAN
    lines.append("| *paper, PixelCNN++ on CIFAR-10, mean (their sets)* | " + " | ".join(f"*{paper[k][0]} → {paper[k][1]}*" for k in ("fpr95", "auroc", "aupr")) + " |")
    lines += [row(n) for n in base if n != "mean" and base[n]["oe_source_overlap"]]
    return "\n".join(lines)


def likelihood_markdown(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], data: DensityData) -> str:
    """Mean / median bits per dim per set for each model and whether the set is MORE LIKELY than D_in (lower mean)."""
    models = [m for m in ("baseline", "oe") if m in summaries]
    header = ["set"]
    for m in models:
        header += [f"{m}: mean bits/dim", f"{m}: median", f"{m}: below D_in median", f"{m}: more likely than D_in"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ["test", *data.ood, OE_HELDOUT_NAME]:
        label = "**D_in test**" if name == "test" else (f"{name} †" if name in data.overlap_sets else name)
        cells = [label]
        for m in models:
            s = summaries[m][name]
            flag = "" if s["more_likely_than_in"] is None else ("**yes**" if s["more_likely_than_in"] else "no")
            cells += [f"{s['mean']:.3f}", f"{s['median']:.3f}", f"{s['frac_below_in_median'] * 100:.1f}%", flag]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _margin_sentence(cfg: DensityOEConfig, active_fraction: float | None) -> str:
    """How often the margin term had a gradient during OE fine-tuning, with what a near-zero fraction means."""
    if active_fraction is None:
        return "The margin term's activity was not recorded (no OE training step ran)."
    sentence = (
        f"The margin ({cfg.margin_per_subpixel:g} nat/subpixel = {cfg.margin_per_subpixel / math.log(2):.2f} bits/dim) was not yet met "
        f"(so the margin term had a gradient) on {percent_cell(active_fraction)}% of the (in, outlier) training pairs."
    )
    if active_fraction < 0.01:
        sentence += " Near 0: the outliers were already that much less likely, and OE fine-tuning acted as further likelihood training."
    return sentence


def _markdown_report(cfg: DensityOEConfig, data: DensityData, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    title = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[cfg.dataset]
    test_bpd, seconds = meta["test_bits_per_dim"], meta["seconds"]
    before = meta["more_likely_than_in_before_oe"]
    gap = meta["oe_source_gap_bits_per_dim"]
    model = meta["model"]
    parts = [
        f"# PixelCNN++ with Outlier Exposure on {title} (paper Table 5 layout)",
        "",
        f"PixelCNN++ `{cfg.model_preset}` preset {model['overrides']} ({model['parameters'] / 1e6:.2f} M parameters); OE source "
        f"`{data.oe_source_name}` ({len(data.oe_train)} training images); commit `{meta['commit']}`; {meta['hardware']}; {meta['date']}.",
        f"Score: bits per dimension (higher = more anomalous). {protocol_sentence(records, 'D_in test images')} "
        f"Values in %, `baseline → OE`. OE: likelihood + margin "
        f"`max(0, {cfg.margin_per_subpixel:g}·D + nll_in − nll_out)`, λ = {cfg.oe_lambda:g}, equal in/outlier batches of {cfg.batch_size}.",
        "",
        "| model | D_in test bits/dim | train steps | train seconds | scoring seconds |",
        "|---|---|---|---|---|",
    ]
    steps = meta.get("training_steps", {})
    for m in ("baseline", "oe"):
        parts.append(f"| {m} | {test_bpd[m]:.3f} | {steps_cell(steps.get(m, {})) or 'loaded'} | {seconds.get(m + '_train', 0):.0f} | {seconds.get(m + '_eval', 0):.0f} |")
    parts += time_budget_notes(steps)
    parts += [
        "",
        f"## Detection (score bits/dim; ours on {title}, the paper's row on CIFAR-10)",
        "",
        table5_markdown(records, cfg.fpr_key),
        "",
        "† shares the OE source's distribution (not an unseen anomaly); not in the mean.",
        "",
        "## Likelihood check: which anomaly sets does the model find MORE likely than D_in?",
        "",
        likelihood_markdown(meta["bits_per_dim_summary"], data),
        "",
        "Sets with a lower mean bits/dim (higher likelihood) than the D_in test images BEFORE OE: "
        + (", ".join(f"`{n}`" for n in before) if before else "none") + ".",
        f"Mean bits/dim gap on held-out OE-source images (out − in): baseline {gap['baseline']:.3f} → OE {gap['oe']:.3f}. "
        + _margin_sentence(cfg, meta["oe_margin_active_fraction"]),
    ]
    return "\n".join(parts) + "\n"


# ================================================================================================ run
def _num_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


class PixelCNNDensityExperiment(StagedExperiment):
    """The PixelCNN++ OE experiment (docs/modules.md) on :func:`oe_common.experiments.experiment.run_experiment`: stage
    ``baseline`` (likelihood; not trained when ``baseline_checkpoint`` gives it), stage ``oe`` (likelihood + margin on
    ``data.oe_train``, continuing the baseline), both scored by bits/dim on :meth:`DensityData.eval_sets`."""

    config: DensityOEConfig
    data: DensityData

    def stages(self) -> list[Stage]:
        cfg = self.config
        return [cfg.stage("baseline", "baseline", train=not cfg.baseline_checkpoint), cfg.stage("oe", "oe", init="baseline")]

    def load_data(self, data_dir: str | Path | None) -> DensityData:
        return load_density_data(self.config, data_dir)

    def build_model(self, stage: Stage) -> PixelCNNPPModel:
        return build_model(self.config)

    def make_trainer(self, stage: Stage, model: PixelCNNPPModel, output_dir: Path) -> DensityOETrainer:
        return DensityOETrainer(model=model, args=training_arguments(self.config, stage, output_dir), train_dataset=self.data.train,
                                data_collator=density_collate, outlier_dataset=self.data.oe_train if stage.uses_outliers else None,
                                callbacks=stage.callbacks())

    def evaluate(self, stage: Stage, model: PixelCNNPPModel, trainer: DensityOETrainer) -> StageResult:
        """Records of :func:`evaluate_density`, the margin's activity (``None`` without outliers); arrays: bits/dim per set."""
        scores = score_sets(trainer, self.data.eval_sets(), desc=f"scoring {stage.name}")
        margin_active = trainer.margin_active_fraction if stage.uses_outliers else None
        return StageResult({"records": evaluate_density(scores, self.data, self.config, stage.name), "margin_active": margin_active}, scores)

    def report(self, results: Mapping[str, StageResult], models: StageModels, seconds: dict[str, float], output_dir: Path,
               is_main: bool) -> dict[str, Any]:
        cfg, data = self.config, self.data
        records = all_records(results)
        scores = {stage: result.arrays for stage, result in results.items()}
        summaries = {m: bits_per_dim_summary(s) for m, s in scores.items()}
        meta = run_meta(
            seconds, config=dataclasses.asdict(cfg), dataset=cfg.dataset, data=data.stats(), score=SCORE,
            model={"preset": cfg.model_preset, "overrides": dict(cfg.model_overrides), "parameters": _num_parameters(models["baseline"]),
                   "baseline_checkpoint": cfg.baseline_checkpoint},
            test_bits_per_dim={m: summaries[m]["test"]["mean"] for m in scores}, bits_per_dim_summary=summaries,
            more_likely_than_in_before_oe=[n for n in data.ood if summaries["baseline"][n]["more_likely_than_in"]],
            more_likely_than_in_after_oe=[n for n in data.ood if summaries["oe"][n]["more_likely_than_in"]],
            oe_source_gap_bits_per_dim={m: summaries[m][OE_HELDOUT_NAME]["mean"] - summaries[m]["test"]["mean"] for m in scores},
            oe_margin_active_fraction=results["oe"].state["margin_active"],
            **stage_logs(results),
            paper_table5_cifar10_mean={k: list(v) for k, v in PAPER_TABLE5_MEAN.items()},
        )
        paths = write_results(output_dir, records, meta, _markdown_report(cfg, data, records, meta))
        for stage, by_set in scores.items():
            out = {n: s for n, s in by_set.items() if n != "test"}
            title = f"PixelCNN++ {cfg.dataset} {stage}: bits/dim"
            paths.update(plot_roc_and_histogram(by_set["test"], out, output_dir, stage, title))
        return {"records": records, "meta": meta, "paths": paths, "scores": scores, "data": data}


def run_density_oe(cfg: DensityOEConfig, output_dir: str | Path, data_dir: str | Path | None = None, data: DensityData | None = None,
                   overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run :class:`PixelCNNDensityExperiment` with ``cfg.num_threads`` torch CPU threads (restored afterwards): baseline
    likelihood training (or ``baseline_checkpoint``), OE fine-tuning, evaluation of both; writes results, plots and
    (``save_models``) both models into ``output_dir``.

    ``output_dir`` must be new or empty, unless ``overwrite`` (its contents are deleted first) or ``resume`` (an
    interrupted run there continues: a finished baseline is loaded, the interrupted stage continues from its last
    checkpoint, every ``cfg.save_steps`` steps); see :func:`oe_common.experiments.experiment.run_experiment`.

    Returns ``{"records", "meta", "paths", "scores": {model: {set: bits/dim}}, "data"}``.
    """
    threads_before = torch.get_num_threads()
    if cfg.num_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.num_threads)
    try:
        return run_experiment(PixelCNNDensityExperiment(cfg), output_dir, data_dir, data, overwrite=overwrite, resume=resume)
    finally:
        torch.set_num_threads(threads_before)
