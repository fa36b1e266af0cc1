"""The vision classifier OE experiment (paper Tables 1, 2, 3, 7, 8, 9): a :class:`oe_common.experiments.experiment.StagedExperiment`;
the recipes only parse arguments.

Details: docs/modules.md, section ``oe_vision.classifier_experiment``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from oe_common.experiments.arg_types import non_negative_float, non_negative_int
from oe_common.experiments.experiment import (Stage, StagedExperiment, StageModels, StageResult, all_records, run_experiment,
                                  shared_training_arguments, stage_logs)
from oe_common.experiments.presets import StageSettings, apply_preset, stage_default
from oe_common.experiments.recipe_args import flag
from oe_common.deployment.detector import OODDetector
from oe_common.maths.metrics import OODTable, evaluate_ood, misclassification_metrics
from oe_common.experiments.reporting import (
    percent_cell,
    plot_roc_and_histogram,
    protocol_sentence,
    run_meta,
    steps_cell,
    time_budget_notes,
    write_results,
)
from oe_common.maths.scores import OUTPUT_SCORES, example_scores, output_score
from oe_common.training.trainer import OETrainer, OETrainingArguments

from . import data as vdata
from .data import TensorImageDataset
from .detection_tables import records_by_set, row_label, unseen_and_overlap_records
from .abnormality_trainer import AbnormalityModuleTrainer, NoisedImageDataset
from .calibration_tables import reliability_diagrams, run_calibration, table7_markdown
from .confidence import confidence_branch_score
from .confidence_trainer import ConfidenceBranchOETrainer
from .modeling_abnormality_module import AbnormalityModuleForImageClassification, reconstruction_loss
from .modeling_mnist_convnet import MnistConvNetConfig, MnistConvNetForImageClassification
from .modeling_wide_resnet import WideResNetConfig, WideResNetForImageClassification
from .preprocessing import ImagePreprocessing
from .paper_results import (MSP_MISCLASSIFICATION, MSP_TABLE11_MEAN_AUROC, MSP_TABLE11_NOTEBOOK, OE_SCRATCH_CIFAR10, PAPER_ONLY_ROWS, TABLE3,
                            detection_table, scores_table)
from .synthetic import SyntheticImageDataset

__all__ = [
    "DATASETS",
    "STAGES",
    "PRESET_NAMES",
    "CIFAR10_CLASSES",
    "VisionOEConfig",
    "VisionData",
    "TensorImageDataset",
    "preset_config",
    "materialize",
    "load_vision_data",
    "build_model",
    "training_arguments",
    "VisionClassifierExperiment",
    "collect_outputs",
    "anomaly_scores",
    "evaluate_detection",
    "misclassification_record",
    "recall_levels",
    "table11_records",
    "detection_markdown",
    "scores_markdown",
    "stages_markdown",
    "table3_markdown",
    "run_vision_oe",
]

DATASETS = ("mnist", "cifar10")
#: Training stages in the order :func:`run_vision_oe` runs them (the abnormality module's two right after the
#: baseline: they copy its weights before ``oe`` fine-tunes it in place).
STAGES = ("baseline", "abnormality_decoder", "abnormality", "oe", "oe_scratch", "branch", "branch_oe")
#: Scores of the abnormality module's stage: the softmax baseline of its (frozen) classifier, and its own head.
ABNORMALITY_SCORES = ("msp", "abnormality")
CLASSIFIER_SCORES = ("msp", "uniform_xent")
BRANCH_SCORES = ("msp", "branch")
#: The score of a stage's saved detector and of its ROC / histogram plots (every other stage: ``msp``).
_DETECTOR_SCORES = {"abnormality": "abnormality", "branch": "branch", "branch_oe": "branch"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclasses.dataclass
class VisionOEConfig(StageSettings):
    """Everything a vision OE run depends on (the stage settings: :class:`~oe_common.experiments.presets.StageSettings`).
    ``baseline_*`` settings also apply to ``oe_scratch`` and ``branch``; ``oe_*`` settings to ``branch_oe``.
    """

    baseline_lr_field = "lr"  # the from-scratch stages' learning rate (StageSettings.stage)
    dataset: str = dataclasses.field(default="mnist", metadata=flag(command_line=False))  # the recipe's
    model: str | None = None  # "convnet" | "wrn"; None: convnet for MNIST, wrn for CIFAR-10
    wrn_depth: int = 40
    wrn_widen_factor: int = 2
    wrn_dropout: float = dataclasses.field(default=0.3, metadata=flag(arg_type=non_negative_float))
    # data
    oe_source: str = dataclasses.field(default="isun", metadata=flag(  # CIFAR-10: "isun" only
        "OE outliers: CIFAR-10 train in gray 28x28 (MNIST paper preset) or iSUN (test/tiny presets)", choices=("cifar10", "isun", "auto")))
    holdout_size: int = 6000  # training images held out (never trained on); the temperature is fitted on them
    train_size: int | None = dataclasses.field(default=None, metadata=flag("cap on the training images (after the hold-out; default: all)"))
    test_size: int | None = dataclasses.field(default=None, metadata=flag("cap on the test images (smoke runs only; default: all, the paper's protocol)"))
    ood_size: int | None = dataclasses.field(default=None, metadata=flag("cap per anomaly set (default: real sets in full, synthetic sets of 10,000)"))
    oe_pool_size: int | None = None  # cap on the OE source (None = all of it)
    augment: bool = True  # CIFAR-10: flip + crop(32, pad 4) for the training set and the OE source
    # optimisation
    batch_size: int = dataclasses.field(default=50, metadata=flag("in-distribution images per step"))
    oe_batch_size: int = dataclasses.field(default=100, metadata=flag("outliers per step"))
    eval_batch_size: int = 500
    lr: float = dataclasses.field(default=0.01, metadata=flag("learning rate of the from-scratch stages"))
    momentum: float = dataclasses.field(default=0.9, metadata=flag(arg_type=non_negative_float))
    weight_decay: float = dataclasses.field(default=5e-4, metadata=flag(arg_type=non_negative_float))  # the paper's value; the released OE MNIST script used none
    baseline_epochs: float = 10.0
    oe_lr: float = dataclasses.field(default=0.01, metadata=flag("learning rate of the fine-tuning stages"))
    oe_epochs: float = 5.0
    baseline_max_minutes: float | None = stage_default("baseline_max_minutes", None, help=(
        "wall-clock budget (minutes) of each from-scratch stage (baseline, oe_scratch, branch): re-planned to fit, hard stop at the budget"))
    oe_max_minutes: float | None = stage_default("oe_max_minutes", None, help="the same for each fine-tuning stage (oe, branch_oe)")
    oe_lambda: float = stage_default("oe_lambda", 0.5)
    branch_oe_lambda: float = dataclasses.field(default=0.5, metadata=flag(arg_type=non_negative_float))
    # stages
    oe_from_scratch: bool = dataclasses.field(default=False, metadata=flag("also train a model with OE from scratch"))
    branch: bool = dataclasses.field(default=True, metadata=flag("run the confidence-branch stages (Table 3)"))
    calibration: bool = dataclasses.field(default=True, metadata=flag("run the calibration stage (Table 7)"))
    abnormality_module: bool = dataclasses.field(default=False, metadata=flag(
        "MNIST: also train the MSP paper's abnormality module on the baseline (decoder, then head; MSP paper Table 11)"))
    abnormality_lr: float = dataclasses.field(default=1e-3, metadata=flag("Adam learning rate of the abnormality module's decoder and head"))
    abnormality_decoder_epochs: float = 10.0
    abnormality_decoder_max_steps: int = -1
    abnormality_head_epochs: float = 5.0
    abnormality_head_max_steps: int = -1
    abnormality_head_lambda: float = dataclasses.field(default=2.0, metadata=flag(
        "weight of the noised images' term in the head's loss (2 with oe_batch_size = 2 * batch_size: every image alike)",
        arg_type=non_negative_float))
    # evaluation
    scores: tuple[str, ...] = CLASSIFIER_SCORES
    n_draws: int = 10
    ratio: int = 5
    recall_level: float = 0.99  # the FPR shown in the Markdown tables (both FPR95 and FPR99 are recorded)
    allow_small_sets: bool = dataclasses.field(default=False, metadata=flag(
        "use an anomaly set with fewer than len(test) // ratio images whole (labelled in the tables) instead of stopping"))
    # runtime
    bf16: bool = False
    num_workers: int = dataclasses.field(default=0, metadata=flag("DataLoader workers", arg_type=non_negative_int))
    logging_steps: int = 50
    save_steps: int = dataclasses.field(default=1000, metadata=flag(  # best a multiple of logging_steps
        "a resumable checkpoint every this many steps of each stage (default: the preset's)"))
    save_models: bool = True
    seed: int = dataclasses.field(default=0, metadata=flag(arg_type=non_negative_int))
    cifar_dir: str | None = dataclasses.field(default=None, metadata=flag("folder with CIFAR-10's train-0*.npz / test.npz (default: $OE_CIFAR10_DIR, then <data_dir>/cifar10)"))

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.model is None:
            self.model = "convnet" if self.dataset == "mnist" else "wrn"
        if self.model not in ("convnet", "wrn"):
            raise ValueError(f"model must be 'convnet' or 'wrn', got {self.model!r}")
        if self.model == "convnet" and self.dataset != "mnist":
            raise ValueError("the MNIST ConvNet takes 1x28x28 inputs: use model='wrn' for CIFAR-10")
        sources = ("cifar10", "isun", "auto") if self.dataset == "mnist" else ("isun",)
        if self.oe_source not in sources:
            raise ValueError(f"oe_source for {self.dataset} must be one of {sources}, got {self.oe_source!r}")
        unknown = set(self.scores) - set(CLASSIFIER_SCORES)
        if unknown or not self.scores:
            raise ValueError(f"scores must be a non-empty subset of {CLASSIFIER_SCORES}, got {self.scores!r}")
        self.scores = tuple(self.scores)
        if self.recall_level not in (0.95, 0.99):
            raise ValueError(f"recall_level must be 0.95 or 0.99, got {self.recall_level}")
        for name in ("branch_oe_lambda", "weight_decay", "momentum"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "oe_batch_size", "eval_batch_size", "n_draws", "ratio", "holdout_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "test_size", "ood_size", "oe_pool_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.baseline_max_steps <= 0 and not self.baseline_epochs > 0 or self.oe_max_steps <= 0 and not self.oe_epochs > 0:
            raise ValueError("give epochs > 0 or max_steps > 0 for both the baseline and the OE stages")
        if self.abnormality_module and self.model != "convnet":
            raise ValueError("abnormality_module is built for the MNIST ConvNet (dataset='mnist', model='convnet')")
        if self.abnormality_module and not (self.abnormality_lr > 0 and (self.abnormality_decoder_epochs > 0 or self.abnormality_decoder_max_steps > 0)
                                            and (self.abnormality_head_epochs > 0 or self.abnormality_head_max_steps > 0)):
            raise ValueError("abnormality_module needs abnormality_lr > 0 and epochs > 0 or max_steps > 0 for its decoder and head")
        super().__post_init__()

    @property
    def fpr_key(self) -> str:
        """``"fpr99"`` or ``"fpr95"``: the FPR the Markdown tables show."""
        return f"fpr{round(self.recall_level * 100)}"

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this configuration runs, in order."""
        return tuple(s for s in STAGES if s in ("baseline", "oe") or (s == "oe_scratch" and self.oe_from_scratch) or (s.startswith("branch") and self.branch)
                     or (s.startswith("abnormality") and self.abnormality_module))


# Presets. "test": the unit test (seconds to a minute on a busy CPU; real MNIST subset, iSUN outliers); "tiny": a
# 2-core CPU in a few minutes (MNIST: iSUN outliers, so CIFAR is not needed); "short": CIFAR-10 on one GPU in
# limited time; "paper": the paper's settings on a GPU.
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "test": dict(oe_source="isun", holdout_size=500, train_size=2000, test_size=1000, ood_size=300, oe_pool_size=2000,
                     baseline_max_steps=400, oe_max_steps=80, n_draws=3, logging_steps=50, save_steps=50,
                     abnormality_decoder_max_steps=60, abnormality_head_max_steps=60),
        "tiny": dict(oe_source="isun", holdout_size=6000, ood_size=4000, baseline_epochs=2.0, oe_epochs=1.0, logging_steps=200,
                     save_steps=400, abnormality_decoder_epochs=1.0, abnormality_head_epochs=1.0),
        "paper": dict(oe_source="cifar10", holdout_size=6000, baseline_epochs=10.0, oe_epochs=5.0, eval_batch_size=1000,
                      num_workers=4, logging_steps=100, save_steps=2000),
    },
    "cifar10": {
        "test": dict(wrn_depth=10, wrn_widen_factor=1, holdout_size=128, train_size=256, test_size=250, ood_size=100, oe_pool_size=512,
                     batch_size=32, oe_batch_size=64, lr=0.1, oe_lr=0.001, baseline_max_steps=4, oe_max_steps=2, n_draws=2,
                     eval_batch_size=125, recall_level=0.95, branch=False, logging_steps=2, save_steps=2),
        "tiny": dict(wrn_depth=16, wrn_widen_factor=2, holdout_size=1000, train_size=5000, test_size=2000, ood_size=1000,
                     batch_size=64, oe_batch_size=128, lr=0.1, oe_lr=0.01, baseline_epochs=2.0, oe_epochs=1.0, eval_batch_size=250,
                     recall_level=0.95, branch=False, logging_steps=20, save_steps=40),
        "short": dict(holdout_size=5000, batch_size=128, oe_batch_size=256, lr=0.1, oe_lr=0.001, baseline_epochs=15.0, oe_epochs=3.0,
                      eval_batch_size=1000, recall_level=0.95, branch=False, bf16=True, num_workers=8, logging_steps=50,
                      save_steps=1000),
        "paper": dict(holdout_size=5000, batch_size=128, oe_batch_size=256, lr=0.1, oe_lr=0.001, baseline_epochs=100.0, oe_epochs=10.0,
                      eval_batch_size=1000, recall_level=0.95, branch=False, bf16=True, num_workers=8, logging_steps=100,
                      save_steps=2000),
    },
}


PRESET_NAMES: dict[str, tuple[str, ...]] = {dataset: tuple(presets) for dataset, presets in _PRESETS.items()}


def preset_config(dataset: str, preset: str, **overrides: Any) -> VisionOEConfig:
    """The :class:`VisionOEConfig` of a named preset with ``overrides`` applied (``None`` values are ignored)."""
    if dataset not in _PRESETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return apply_preset(VisionOEConfig, _PRESETS[dataset], preset, overrides, dataset=dataset)


# ================================================================================================ data
_DETERMINISTIC_STEPS = (v2.ToImage, v2.Resize, v2.CenterCrop, v2.Grayscale, v2.RGB, v2.ToDtype, v2.Normalize, v2.ToPureTensor)


def _is_deterministic(transform: Any) -> bool:
    """Whether a ``v2.Compose`` has only deterministic, batch-safe steps (``RandomInvert(p=1)`` counts as one)."""
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, v2.Compose) or steps is None:
        return False
    return all(isinstance(t, _DETERMINISTIC_STEPS) or (isinstance(t, v2.RandomInvert) and t.p >= 1.0) for t in steps)


def _unwrap(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """``(base dataset, indices into it)`` through any chain of ``Subset``s (``None`` = all of it, in order)."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        own = [int(i) for i in dataset.indices]
        indices = own if indices is None else [own[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def materialize(dataset: Dataset, desc: str = "", batch_size: int = 512, num_workers: int = 0) -> TensorImageDataset:
    """Run ``dataset``'s transforms once and keep the results as a :class:`TensorImageDataset`.

    For deterministic pipelines only (evaluation sets, MNIST training data): every model then reads the same
    tensors. Fast paths, both checked against per-item results on the first examples: an
    :class:`~oe_vision.data.ImageArrayDataset` (or a ``Subset`` of one) with a deterministic ``v2`` pipeline is
    transformed in chunks of images at once; a whole :class:`~oe_vision.synthetic.SyntheticImageDataset` (no
    transform) is generated in bulk. Anything else goes through a ``DataLoader`` item by item.
    """
    name = getattr(dataset, "name", "") or desc
    base, indices = _unwrap(dataset)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"cannot materialize an empty dataset ({name})")
    pixels: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    if isinstance(base, vdata.ImageArrayDataset) and _is_deterministic(base.transform):
        index = torch.arange(len(base)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        chunks = [base.transform(base.images[index[s : s + 4096]]) for s in range(0, n, 4096)]
        pixels, labels = torch.cat(chunks).float().contiguous(), base.labels[index].clone()
    elif isinstance(base, SyntheticImageDataset) and base.transform is None and (indices is None or indices == list(range(len(base)))):
        pixels, labels = base.materialize(), torch.full((n,), base.label, dtype=torch.long)
    if pixels is not None:
        for i in range(min(4, n)):  # the fast path must equal the per-item pipeline
            if not torch.equal(pixels[i], dataset[i][0]):
                pixels = None
                break
    if pixels is None:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=vdata.image_collate)
        batches = [b for b in tqdm(loader, desc=f"preparing {name}", leave=False)]
        pixels = torch.cat([b["pixel_values"] for b in batches]).float().contiguous()
        labels = torch.cat([b["labels"] for b in batches])
    return TensorImageDataset(pixels, labels, name=name)


@dataclasses.dataclass
class VisionData:
    """The data of one run. ``train`` and ``oe_source`` are model-ready datasets of ``(pixel_values, label)``;
    evaluation sets are materialized. ``overlap_sets``: anomaly sets that share the OE source's distribution."""

    dataset: str
    train: Dataset
    holdout: TensorImageDataset
    test: TensorImageDataset
    ood: dict[str, TensorImageDataset]
    oe_source: Dataset
    oe_source_name: str
    overlap_sets: tuple[str, ...]
    num_labels: int = 10
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The MSP paper's Table 11 anomaly sets (only with ``abnormality_module``).
    table11: dict[str, TensorImageDataset] = dataclasses.field(default_factory=dict)

    @property
    def mean_sets(self) -> tuple[str, ...]:
        """Anomaly sets that enter the ``mean`` rows (all but :attr:`overlap_sets`)."""
        return tuple(name for name in self.ood if name not in self.overlap_sets)

    def eval_sets(self, table11: bool = False) -> dict[str, TensorImageDataset]:
        """``{"test", "holdout", <anomaly sets>}`` (``table11``: the Table 11 sets instead): what a model is run on."""
        return {"test": self.test, "holdout": self.holdout, **(self.table11 if table11 else self.ood)}

    def stats(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train),
            "n_holdout": len(self.holdout),
            "n_test": len(self.test),
            "n_ood": {name: len(ds) for name, ds in self.ood.items()},
            "oe_source": self.oe_source_name,
            "n_oe_source": len(self.oe_source),
            "mean_sets": list(self.mean_sets),
            "overlap_sets": list(self.overlap_sets),
            **({"n_table11": {name: len(ds) for name, ds in self.table11.items()}} if self.table11 else {}),
        }


def _split_train(n: int, holdout: int, train_cap: int | None, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)`` into ``(train, holdout)`` indices (sorted); ``train`` capped at ``train_cap``."""
    if holdout >= n:
        raise ValueError(f"holdout_size {holdout} leaves no training data out of {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 12345)).tolist()
    held, rest = perm[:holdout], perm[holdout:]
    if train_cap is not None:
        rest = rest[:train_cap]
    return sorted(rest), sorted(held)


def load_vision_data(cfg: VisionOEConfig, data_dir: str | Path | None = None) -> VisionData:
    """Load, split, subset and preprocess the data of ``cfg`` (see :mod:`oe_vision.data` for every set).

    MNIST: 60,000 training images -> ``holdout_size`` held out + the rest (capped at ``train_size``); OE source
    CIFAR-10 train in grayscale 28x28 (``oe_source="cifar10"``; needs ``$OE_CIFAR10_DIR`` or ``cifar_dir``) or
    iSUN's OE part (``"isun"``; then the ``isun_gray`` test set is an overlap set). CIFAR-10: the same split of the
    50,000 training images (the hold-out without augmentation); OE source iSUN's OE part (6,921 images).
    """
    seed = cfg.seed
    if cfg.dataset == "mnist":
        full_train, test = vdata.mnist_in_distribution(data_dir)
        plain_train = full_train
        oe = vdata.mnist_oe_source(data_dir, source=cfg.oe_source, cifar_dir=cfg.cifar_dir)
        ood = vdata.mnist_ood_sets(data_dir, n=None, seed=seed)
        preprocessing = {"size": 28, "channels": 1}
    else:
        full_train, test = vdata.cifar10_in_distribution(cfg.cifar_dir, data_dir, augment=cfg.augment)
        plain_train = full_train
        if cfg.augment:  # the same images without augmentation (shared storage): the hold-out must not be augmented
            plain_train = copy.copy(full_train)
            plain_train.transform = test.transform
        oe = vdata.cifar10_oe_source(data_dir, augment=cfg.augment)
        ood = vdata.cifar10_ood_sets(data_dir, n=None, seed=seed)
        preprocessing = {"size": 32, "channels": 3, "mean": list(vdata.CIFAR10_MEAN), "std": list(vdata.CIFAR10_STD)}
    oe_name = getattr(oe, "name", "oe")
    train_idx, holdout_idx = _split_train(len(full_train), cfg.holdout_size, cfg.train_size, seed)
    train: Dataset = Subset(full_train, train_idx)
    oe_source: Dataset = vdata.capped(oe, cfg.oe_pool_size, seed, 101)
    if cfg.dataset == "mnist":  # deterministic pipelines: transform once
        train = materialize(train, "mnist-train", num_workers=cfg.num_workers)
        oe_source = materialize(oe_source, oe_name, num_workers=cfg.num_workers)
    holdout = materialize(Subset(plain_train, holdout_idx), f"{cfg.dataset}-holdout", num_workers=cfg.num_workers)
    test_set = materialize(vdata.capped(test, cfg.test_size, seed, 102), f"{cfg.dataset}-test", num_workers=cfg.num_workers)
    ood_sets = {
        name: materialize(vdata.capped(ds, cfg.ood_size, seed, 200 + i), name, num_workers=cfg.num_workers)
        for i, (name, ds) in enumerate(tqdm(list(ood.items()), desc="anomaly sets", leave=False))
    }
    overlap = tuple(name for name in ood_sets if cfg.dataset == "mnist" and "isun" in oe_name and name == "isun_gray")
    table11: dict[str, TensorImageDataset] = {}
    if cfg.abnormality_module:  # the same subset as the detection tables' set where both have it (omniglot, notmnist)
        table11 = {name: ood_sets.get(name) or materialize(vdata.capped(ds, cfg.ood_size, seed, 300 + i), name, num_workers=cfg.num_workers)
                   for i, (name, ds) in enumerate(vdata.mnist_msp_table11_sets(data_dir, cfg.cifar_dir, seed).items())}
    return VisionData(cfg.dataset, train, holdout, test_set, ood_sets, oe_source, oe_name, overlap, 10, preprocessing, table11)


# ================================================================================================ abnormality module
def _abnormality_module(classifier: PreTrainedModel) -> AbnormalityModuleForImageClassification:
    """A new abnormality module around a copy of the MNIST ConvNet ``classifier``'s weights (decoder and head fresh)."""
    return AbnormalityModuleForImageClassification.from_classifier(classifier, feature_size=classifier.config.flat_size)


@torch.no_grad()
def _reconstruction_mse(model: AbnormalityModuleForImageClassification, images: TensorImageDataset, batch_size: int) -> float:
    """The mean squared reconstruction error of the abnormality module's decoder over ``images`` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    errors = [reconstruction_loss(model(pixel_values=x.to(device)).reconstruction, x.to(device)).item() * len(x)
              for x in images.pixel_values.split(batch_size)]
    return sum(errors) / len(images)


def table11_records(outputs: Mapping[str, Mapping[str, torch.Tensor | None]], data: VisionData, cfg: VisionOEConfig, stage: str,
                    score: str) -> tuple[list[dict[str, Any]], OODTable]:
    """Detection records on the MSP paper's Table 11 sets with that paper's protocol: the whole test set against each
    WHOLE anomaly set (one draw; base rate ``n_out / (n_in + n_out)``, about 1:1), every set + ``mean``; FPR95 and
    FPR99, AUROC, AUPR-Out (``aupr``) and AUPR-In (``aupr_in``). ``paper_table: "msp_table11"`` in every record.
    Returns ``(records, table)``."""
    in_scores = anomaly_scores(outputs["test"], score)
    out = {name: anomaly_scores(outputs[name], score) for name in data.table11}
    table = evaluate_ood(in_scores, out, n_draws=1, ratio=1, seed=cfg.seed, recall_level=recall_levels(cfg), allow_small_sets=True)
    table.meta["score"] = score
    return table.records(**_record_fields(cfg, stage, score), paper_table="msp_table11"), table


def table11_markdown(records: Sequence[Mapping[str, Any]], stage: str = "abnormality") -> str:
    """MSP paper Table 11 layout: per set, softmax (``msp``) / abnormality module for AUROC, AUPR-In, AUPR-Out, and
    the authors' notebook's printed values beside (the paper gives the means only)."""
    msp, module = records_by_set(records, stage, "msp"), records_by_set(records, stage, "abnormality")
    lines = ["| D_out | AUROC ↑ softmax / module | AUPR-In ↑ softmax / module | AUPR-Out ↑ softmax / module | "
             "notebook AUROC | notebook AUPR-In | notebook AUPR-Out |", "|---|---|---|---|---|---|---|"]
    for ood_set, m in msp.items():
        a = module.get(ood_set, {})
        cells = [f"{_percent(m[k])} / {_percent(a.get(k))}" for k in ("auroc", "aupr_in", "aupr")]
        ref = MSP_TABLE11_NOTEBOOK.get(ood_set)
        if ood_set == "mean":
            means = {k: [sum(v[k][i] for v in MSP_TABLE11_NOTEBOOK.values()) / len(MSP_TABLE11_NOTEBOOK) for i in (0, 1)]
                     for k in ("auroc", "aupr_in", "aupr")}
            cells += [f"{means[k][0]:.1f} / {means[k][1]:.1f}" for k in ("auroc", "aupr_in", "aupr")]
        else:
            cells += [f"{ref[k][0]:.1f} / {ref[k][1]:.1f}" for k in ("auroc", "aupr_in", "aupr")] if ref else ["–"] * 3
        n = f" ({m['n_out']} vs {m['n_in']})" if ood_set != "mean" else ""
        lines.append("| " + " | ".join([("**mean**" if ood_set == "mean" else ood_set + n), *cells]) + " |")
    paper = MSP_TABLE11_MEAN_AUROC
    lines.append(f"| paper (MSP paper Table 11) mean | {paper[0]:.0f} / {paper[1]:.0f} | – | – | | | |")
    return "\n".join(lines)


def table11_notes(cfg: VisionOEConfig, meta: Mapping[str, Any]) -> list[str]:
    """The notes under the Table 11 section of ``results.md``: protocol and what the module's stages ran."""
    steps = meta.get("training_steps", {})
    return [
        "Softmax = the MSP of the module's frozen classifier (the baseline's weights); module = `sigmoid` of its head "
        "(the `abnormality` score). Protocol of the MSP paper: the whole MNIST test set against each whole anomaly set (one "
        "draw, base rate about 1:1, omniglot 5,840 images); anomalies positive for AUROC and AUPR-Out, MNIST positive for "
        "AUPR-In. The 'notebook' columns are the values printed in the authors' notebook (softmax / module), not ours; the "
        "paper itself reports the means only (its row).",
        f"Module: decoder {steps_cell(steps.get('abnormality_decoder', {}))} steps, head {steps_cell(steps.get('abnormality', {}))} "
        f"steps, Adam lr {cfg.abnormality_lr}, {cfg.batch_size} clean + {cfg.oe_batch_size} noised training images per head "
        f"step, noised term weight {cfg.abnormality_head_lambda}.",
    ]


# ================================================================================================ training
def build_model(cfg: VisionOEConfig, confidence_branch: bool = False) -> PreTrainedModel:
    """A freshly initialised classifier for ``cfg`` (10 classes), optionally with a confidence branch."""
    labels = [str(d) for d in range(10)] if cfg.dataset == "mnist" else list(CIFAR10_CLASSES)
    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    if cfg.model == "convnet":
        config = MnistConvNetConfig(num_labels=10, id2label=id2label, label2id=label2id, confidence_branch=confidence_branch)
        return MnistConvNetForImageClassification(config)
    config = WideResNetConfig(
        depth=cfg.wrn_depth, widen_factor=cfg.wrn_widen_factor, dropout=cfg.wrn_dropout, num_labels=10,
        num_channels=3 if cfg.dataset == "cifar10" else 1, image_size=32 if cfg.dataset == "cifar10" else 28,
        id2label=id2label, label2id=label2id, confidence_branch=confidence_branch,
    )
    return WideResNetForImageClassification(config)


def training_arguments(cfg: VisionOEConfig, stage: Stage, output_dir: str | Path) -> OETrainingArguments:
    """The ``OETrainingArguments`` of one stage (its lr, length and OE weight: :meth:`Stage.training_arguments`): no
    evaluation during training (the paper keeps the last epoch's weights); cosine schedule without warm-up; no
    gradient clipping. Every ``cfg.save_steps`` steps (and at the end) a checkpoint in
    ``<output_dir>/checkpoints/<stage>/`` (safetensors weights + optimizer, scheduler, RNG and outlier stream state;
    the newest one kept) that ``--resume`` continues from."""
    return OETrainingArguments(
        **shared_training_arguments(stage, output_dir, cfg),
        weight_decay=cfg.weight_decay,  # informational: the optimizer is built by make_trainer
        max_grad_norm=0.0,
        warmup_steps=0,
        eval_strategy="no",
        save_steps=cfg.save_steps,
        save_only_model=False,  # optimizer / scheduler / RNG state too: needed to resume
        logging_steps=cfg.logging_steps,
        bf16=cfg.bf16 and torch.cuda.is_available(),
        dataloader_num_workers=cfg.num_workers,
        dataloader_persistent_workers=cfg.num_workers > 0,
        disable_tqdm=False,
        oe_batch_size=cfg.oe_batch_size,
        oe_concat_forward=stage.name != "branch_oe",
    )


# ================================================================================================ evaluation
@torch.no_grad()
def collect_outputs(
    model: PreTrainedModel, sets: Mapping[str, TensorImageDataset], batch_size: int, desc: str = "scoring", bf16: bool = False
) -> dict[str, dict[str, torch.Tensor | None]]:
    """One eval-mode pass over every set: ``{set: {"logits": (N, K), "confidence_logits": (N,) or None}}`` (float32, CPU),
    plus ``"abnormality_logits": (N,)`` for an abnormality module."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result: dict[str, dict[str, torch.Tensor | None]] = {}
    total = sum(math.ceil(len(ds) / batch_size) for ds in sets.values())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    try:
        with tqdm(total=total, desc=desc) as bar:
            for name, ds in sets.items():
                logits, branch, abnormal = [], [], []
                for start in range(0, len(ds), batch_size):
                    x = ds.pixel_values[start : start + batch_size].to(device, non_blocking=True)
                    with autocast:
                        out = model(pixel_values=x)
                    logits.append(out.logits.float().cpu())
                    if getattr(out, "confidence_logits", None) is not None:
                        branch.append(out.confidence_logits.float().reshape(-1).cpu())
                    if getattr(out, "abnormality_logits", None) is not None:
                        abnormal.append(out.abnormality_logits.float().reshape(-1).cpu())
                    bar.update(1)
                result[name] = {"logits": torch.cat(logits), "confidence_logits": torch.cat(branch) if branch else None}
                if abnormal:
                    result[name]["abnormality_logits"] = torch.cat(abnormal)
    finally:
        model.train(was_training)
    return result


def anomaly_scores(outputs: Mapping[str, torch.Tensor | None], score: str) -> np.ndarray:
    """Per-example anomaly scores (higher = more anomalous) from :func:`collect_outputs` of one set.

    ``branch``: ``1 - b(x)`` of the confidence branch; an output score (``abnormality``: ``sigmoid(a)`` of the
    abnormality module's head) is :func:`oe_common.maths.scores.output_score`; any other name (``msp``: ``-max_k softmax(z)_k``,
    ``uniform_xent``: ``(1/K) sum_k log softmax(z)_k``, ...) is :func:`oe_common.maths.scores.example_scores` of the logits.
    """
    if score == "branch":
        if outputs.get("confidence_logits") is None:
            raise ValueError("score 'branch' needs a model with a confidence branch")
        return confidence_branch_score(outputs["confidence_logits"]).double().numpy()
    if score in OUTPUT_SCORES:
        return output_score(score, outputs).double().numpy()
    return example_scores(outputs["logits"], (score,))[score].double().numpy()


def recall_levels(cfg: VisionOEConfig) -> tuple[float, float]:
    """The FPR levels of every detection table: ``cfg.recall_level`` first (the tables' ``fpr``, shown in the Markdown
    tables), then the other of 0.95 / 0.99. Both come from the same draws (one :func:`evaluate_ood` call)."""
    return (cfg.recall_level, 0.95 if cfg.recall_level == 0.99 else 0.99)


def _record_fields(cfg: VisionOEConfig, stage: str, score: str) -> dict[str, Any]:
    """The fields that name a detection record of this pipeline: task, dataset, architecture, stage, score."""
    return dict(task="detection", dataset=cfg.dataset, model=cfg.model, stage=stage, score=score)


def evaluate_detection(
    outputs: Mapping[str, Mapping[str, torch.Tensor | None]], data: VisionData, cfg: VisionOEConfig, stage: str, score: str
) -> tuple[list[dict[str, Any]], OODTable]:
    """Detection records of one model and score: every unseen set + ``mean`` (over them), then overlap sets.

    Returns ``(records, the unseen sets' table)``. Records: :meth:`oe_common.maths.metrics.OODTable.records` (``task``,
    ``dataset``, ``model`` = the architecture, ``stage``, ``score``, ``ood_set``, ``fpr99``, ``fpr95``, ``auroc``, ``aupr``
    (anomalies positive), ``aupr_in``, stds over draws and what ran) plus ``oe_source_overlap``
    (:func:`oe_vision.detection_tables.unseen_and_overlap_records`); metric values are fractions. A set smaller than
    ``len(test) // ratio`` is an error unless ``cfg.allow_small_sets``.
    """
    in_scores = anomaly_scores(outputs["test"], score)
    out = {name: anomaly_scores(outputs[name], score) for name in data.ood}
    records, table = unseen_and_overlap_records(in_scores, out, data.mean_sets, data.overlap_sets, cfg, recall_levels(cfg),
                                                **_record_fields(cfg, stage, score))
    table.meta["score"] = score
    return records, table


def misclassification_record(outputs: Mapping[str, Mapping[str, torch.Tensor | None]], labels: torch.Tensor, cfg: VisionOEConfig,
                             stage: str) -> dict[str, Any]:
    """Misclassification detection on the test set with the MSP (errors positive): AUROC, AUPR-Err, AUPR-Succ
    (``task: "misclassification"``)."""
    logits = outputs["test"]["logits"]
    correct = (logits.argmax(-1) == labels).numpy()
    confidence = torch.softmax(logits.double(), -1).amax(-1).numpy()
    record: dict[str, Any] = {"task": "misclassification", "dataset": cfg.dataset, "model": cfg.model, "stage": stage, "score": "msp",
                              "test_error": float(1 - correct.mean()), "n": int(correct.size)}
    try:
        record.update(misclassification_metrics(confidence, correct))
    except ValueError as err:  # no error (or no correct prediction) on the test set
        record.update({"auroc": None, "aupr_err": None, "aupr_succ": None, "note": str(err)})
    return record


# ================================================================================================ Markdown
#: A fraction as a table cell in percent, ``–`` when there is none.
_percent = functools.partial(percent_cell, missing="–")


def detection_markdown(records: Sequence[Mapping[str, Any]], dataset: str, fpr_key: str, score: str = "msp") -> str:
    """Table 8 (MNIST) / Table 1 (CIFAR-10) layout: per set ``baseline -> OE`` with ``score``, the paper's rows beside."""
    base, oe = records_by_set(records, "baseline", score), records_by_set(records, "oe", score)
    paper = detection_table(dataset)
    paper_fpr = "fpr99" if dataset == "mnist" else "fpr95"
    label = fpr_key.upper()
    lines = [
        f"| D_out^test | {label} ↓ ours | AUROC ↑ ours | AUPR ↑ ours | {paper_fpr.upper()} ↓ paper | AUROC ↑ paper | AUPR ↑ paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for ood_set, b in base.items():
        o = oe.get(ood_set)
        cells = [f"{_percent(b[k])} → {_percent(o[k])}" if o else _percent(b[k]) for k in (fpr_key, "auroc", "aupr")]
        ref = paper.get(ood_set)
        cells += [f"{ref[k][0]} → {ref[k][1]}" for k in (paper_fpr, "auroc", "aupr")] if ref else ["–"] * 3
        lines.append("| " + " | ".join([row_label(ood_set, b), *cells]) + " |")
    return "\n".join(lines)


def scores_markdown(records: Sequence[Mapping[str, Any]], dataset: str, fpr_key: str, model: str = "oe") -> str:
    """Table 9 (MNIST) / Table 2 (CIFAR-10) layout: the OE model's MSP vs KL[U||p] (``uniform_xent``) scores."""
    msp, kl = records_by_set(records, model, "msp"), records_by_set(records, model, "uniform_xent")
    label = fpr_key.upper()
    lines = [f"| D_out^test | {label} ↓ MSP | {label} ↓ KL[U‖p] | AUROC ↑ MSP | AUROC ↑ KL[U‖p] | AUPR ↑ MSP | AUPR ↑ KL[U‖p] |", "|---|---|---|---|---|---|---|"]
    for ood_set, m in msp.items():
        k = kl.get(ood_set, {})
        cells = [c for key in (fpr_key, "auroc", "aupr") for c in (_percent(m[key]), _percent(k.get(key)))]
        lines.append("| " + " | ".join([row_label(ood_set, m), *cells]) + " |")
    paper = scores_table(dataset)
    if paper:
        paper_fpr = "fpr99" if dataset == "mnist" else "fpr95"
        cells = [f"{v:.1f}" for key in (paper_fpr, "auroc", "aupr") for v in paper[key]]
        lines.append(f"| paper mean ({paper_fpr.upper()}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stages_markdown(records: Sequence[Mapping[str, Any]], columns: Mapping[str, tuple[str, str]], fpr_key: str,
                    set_names: Sequence[str] | None = None) -> str:
    """Per set, FPR / AUROC / AUPR of several models side by side (``a / b / c`` in each cell; ``–`` where one has no row).

    Args:
        columns: ``{header: (stage, score)}``, in column order.
        fpr_key: ``"fpr99"`` or ``"fpr95"``.
        set_names: rows, then ``mean`` (default: every set of the first column, in record order).
    """
    tables = {header: records_by_set(records, stage, score) for header, (stage, score) in columns.items()}
    label, head = fpr_key.upper(), " / ".join(columns)
    lines = [f"| D_out^test | {label} ↓ {head} | AUROC ↑ {head} | AUPR ↑ {head} |", "|---|---|---|---|"]
    for ood_set in next(iter(tables.values())) if set_names is None else [*set_names, "mean"]:
        record = next((rows[ood_set] for rows in tables.values() if ood_set in rows), None)
        cells = [" / ".join(_percent(rows.get(ood_set, {}).get(k)) for rows in tables.values()) for k in (fpr_key, "auroc", "aupr")]
        lines.append("| " + " | ".join([row_label(ood_set, record), *cells]) + " |")
    return "\n".join(lines)


def _misclassification_markdown(records: Sequence[Mapping[str, Any]], dataset: str) -> str:
    lines = ["| model | test error | AUROC ↑ | AUPR-Err ↑ | AUPR-Succ ↑ |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['stage']} | {r['test_error'] * 100:.2f} | {_percent(r['auroc'])} | {_percent(r['aupr_err'])} | {_percent(r['aupr_succ'])} |")
    ref = MSP_MISCLASSIFICATION.get(dataset)
    if ref:
        lines.append(f"| paper (MSP paper, {dataset}) | {ref['test_error']:.2f} | {ref['auroc']:.0f} | {ref['aupr_err']:.0f} | {ref['aupr_succ']:.0f} |")
    return "\n".join(lines)


def table3_markdown(records: Sequence[Mapping[str, Any]], fpr_key: str, set_names: Sequence[str]) -> str:
    """Table 3 layout: MSP (baseline) -> confidence branch -> branch + OE (score ``1 - b(x)``) for FPR / AUROC / AUPR,
    per unseen set (``set_names``) and mean, then the paper's CIFAR-10 mean (:func:`stages_markdown`)."""
    columns = {"MSP": ("baseline", "msp"), "branch": ("branch", "branch"), "+OE": ("branch_oe", "branch")}
    paper = TABLE3["cifar10"]
    return stages_markdown(records, columns, fpr_key, set_names) + (
        "\n| paper CIFAR-10 mean (WRN 40-4, FPR95) | " + " | ".join(" / ".join(f"{v:.1f}" for v in paper[k]) for k in ("fpr95", "auroc", "aupr")) + " |")


_TITLES = {"mnist": "MNIST (ConvNet)", "cifar10": "CIFAR-10 (Wide ResNet)"}


def _markdown_report(cfg: VisionOEConfig, data: VisionData, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    fpr = cfg.fpr_key.upper()
    model_desc = "ConvNet (conv5 1→10, conv5 10→20, FC 320→50→10)" if cfg.model == "convnet" else f"WRN-{cfg.wrn_depth}-{cfg.wrn_widen_factor} (dropout {cfg.wrn_dropout})"
    stats = meta["data"]
    table_no = ("8", "9") if cfg.dataset == "mnist" else ("1", "2")
    parts = [
        f"# {_TITLES[cfg.dataset]}: MSP baseline → Outlier Exposure",
        "",
        f"Model {model_desc}; commit `{meta['commit']}`; {meta['hardware']}; {meta['date']}. Values are percentages; detection "
        f"metrics (anomalies positive) are means over the draws. {protocol_sentence([r for r in records if 'paper_table' not in r], 'test images')} Columns marked "
        "'paper' are the OE paper's numbers (its models, OE source and anomaly sets), shown for reference.",
        "",
        f"Data: {stats['n_train']} training images ({stats['n_holdout']} more held out, never trained on); OE source "
        f"`{stats['oe_source']}` ({stats['n_oe_source']} images); anomaly sets: "
        + ", ".join(f"{n} ({c})" for n, c in stats["n_ood"].items()) + ".",
        "",
        "| model | test accuracy | test error | train steps | train seconds |",
        "|---|---|---|---|---|",
    ]
    steps = meta.get("training_steps", {})
    for stage in cfg.stages:
        if stage not in meta["test_accuracy"]:  # the abnormality module's decoder: no classifier of its own
            parts.append(f"| {stage} | – | – | {steps_cell(steps.get(stage, {}))} | {meta['seconds'].get(stage + '_train', 0):.0f} |")
            continue
        parts.append(f"| {stage} | {meta['test_accuracy'][stage] * 100:.2f} | {meta['test_error'][stage] * 100:.2f} | "
                     f"{steps_cell(steps.get(stage, {}))} | {meta['seconds'].get(stage + '_train', 0):.0f} |")
    parts += time_budget_notes(steps)
    parts += ["", f"## Detection, MSP score: baseline → OE (Table {table_no[0]} layout)", "", detection_markdown(records, cfg.dataset, cfg.fpr_key)]
    if "uniform_xent" in cfg.scores and "msp" in cfg.scores:
        parts += ["", f"## OE model: MSP vs KL[U‖p] score (Table {table_no[1]} layout)", "", scores_markdown(records, cfg.dataset, cfg.fpr_key)]
    if cfg.oe_from_scratch:
        parts += ["", "## OE fine-tuned vs OE from scratch (MSP score)", "", stages_markdown(records, {m: (m, "msp") for m in ("baseline", "oe", "oe_scratch")}, cfg.fpr_key)]
        if cfg.dataset == "cifar10":
            parts.append(f"\nPaper, CIFAR-10 OE from scratch: mean FPR95 {OE_SCRATCH_CIFAR10['fpr95']}, AUROC {OE_SCRATCH_CIFAR10['auroc']}.")
    if cfg.branch:
        branch_msp = records_by_set(records, "branch", "msp").get("mean")
        parts += ["", "## Confidence branch (Table 3 layout; score 1 − b(x) for branch and branch + OE)", "", table3_markdown(records, cfg.fpr_key, data.mean_sets), ""]
        if branch_msp:
            parts.append(f"MSP of the branch-trained classifier (the paper's Table 3 'baseline' column): mean {fpr} {_percent(branch_msp[cfg.fpr_key])}, "
                         f"AUROC {_percent(branch_msp['auroc'])}, AUPR {_percent(branch_msp['aupr'])}. The paper has no MNIST row; its CIFAR-10 row uses FPR95.")
    if cfg.abnormality_module:
        parts += ["", "## MSP paper Table 11: softmax baseline vs abnormality module (MNIST)", "", table11_markdown(records), "",
                  *table11_notes(cfg, meta)]
    parts += ["", "## Misclassification detection with the MSP (errors positive)", "", _misclassification_markdown(meta["misclassification"], cfg.dataset)]
    if meta.get("calibration"):
        temps = ", ".join(f"{m} T = {t:.3f}" for m, t in meta["temperatures"].items())
        parts += ["", "## Calibration on test + the detection tables' anomaly draws per set, anomalies counted wrong (Table 7 layout)", "",
                  table7_markdown(meta["calibration"], cfg.dataset), "",
                  f"Temperatures fitted on the {stats['n_holdout']} held-out training images: {temps}. Mean over the unseen anomaly sets "
                  "of the mean over the draws (the base rate and distinct draws of the detection tables above); adaptive bins of "
                  "100 examples, every bin counted."]
    if meta.get("calibration_skipped"):
        parts += ["", "## Calibration", "", meta["calibration_skipped"]]
    parts += ["", "## Notes", ""]
    parts += [f"- {line}" for line in _notes(cfg, data)]
    return "\n".join(parts) + "\n"


def _notes(cfg: VisionOEConfig, data: VisionData) -> list[str]:
    notes = []
    if data.overlap_sets:
        notes.append(f"† {', '.join(data.overlap_sets)}: same distribution as the OE source ({data.oe_source_name}), so not an unseen "
                     "anomaly type; reported, but left out of every mean.")
    paper_only = PAPER_ONLY_ROWS.get(cfg.dataset, {})
    ours_only = [n for n in data.ood if n not in detection_table(cfg.dataset)]
    if paper_only:
        notes.append("Paper rows without a counterpart here (in the paper's mean, not in ours): " + "; ".join(paper_only.values()) + ".")
    if ours_only:
        notes.append("Our sets without a paper row: " + ", ".join(ours_only) + ". The means therefore average different set lists.")
    if cfg.save_models:
        notes.append("The OE model is also saved as an OODDetector (`detector/`, MSP score, threshold at 5% FPR on the held-out "
                     "images): `oe score --model <output-dir>/detector --input <folder of images>`.")
    if cfg.dataset == "mnist" and "cifar10" in data.oe_source_name:
        notes.append("OE source: CIFAR-10 train in grayscale 28x28, a stand-in for the paper's 80 Million Tiny Images (withdrawn; "
                     "CIFAR-10 is a subset of it). The paper's CIFAR-10bw test set is therefore the OE source here: isun_gray "
                     "(natural scenes in grayscale) takes its place.")
    elif cfg.dataset == "mnist":
        notes.append("OE source: iSUN's 6,921-image OE part in grayscale 28x28, a SMALL stand-in for the paper's 80 Million Tiny "
                     "Images (withdrawn); the paper preset uses CIFAR-10 train in grayscale instead. isun_gray (iSUN's disjoint "
                     "test part) stands in for the paper's CIFAR-10bw row but shares the OE source's distribution (†).")
    else:
        notes.append("OE source: iSUN's 6,921-image OE part, a SMALL stand-in for the paper's 80 Million Tiny Images (withdrawn).")
    notes.append(f"One baseline serves detection and calibration: it is trained without the {len(data.holdout)} held-out images "
                 "(the paper trained a separate calibration model on the reduced set).")
    if cfg.branch:
        notes.append("Confidence-branch models use the same architecture and schedule as the baseline (the paper: WRN 40-4 "
                     "trained with DeVries & Taylor's code); branch + OE is fine-tuned from the branch model with the OE "
                     f"stage's schedule, adding {cfg.branch_oe_lambda} * E_OE[log b(x)].")
    return notes


# ================================================================================================ the experiment
class VisionClassifierExperiment(StagedExperiment):
    """The classifier experiment of ``config`` (a :class:`VisionOEConfig`) for :func:`oe_common.experiments.experiment.run_experiment`."""

    config: VisionOEConfig
    data: VisionData

    def stages(self) -> list[Stage]:
        """``baseline`` / ``oe_scratch`` / ``branch`` from scratch with the ``baseline_*`` schedule and ``lr``; ``oe``
        (from the baseline) and ``branch_oe`` (from the branch model) with the ``oe_*`` schedule and ``oe_lr``."""
        cfg = self.config
        every = {"baseline": cfg.stage("baseline", "baseline"), "oe": cfg.stage("oe", "oe", init="baseline"),
                 "oe_scratch": cfg.stage("oe_scratch", "baseline", oe_lambda=cfg.oe_lambda), "branch": cfg.stage("branch", "baseline"),
                 "branch_oe": cfg.stage("branch_oe", "oe", oe_lambda=cfg.branch_oe_lambda, init="branch"),
                 "abnormality_decoder": Stage("abnormality_decoder", cfg.abnormality_lr, cfg.abnormality_decoder_epochs,
                                              cfg.abnormality_decoder_max_steps, init="baseline"),
                 "abnormality": Stage("abnormality", cfg.abnormality_lr, cfg.abnormality_head_epochs, cfg.abnormality_head_max_steps,
                                      oe_lambda=cfg.abnormality_head_lambda, init="abnormality_decoder")}
        return [every[name] for name in cfg.stages]

    def load_data(self, data_dir: str | Path | None) -> VisionData:
        return load_vision_data(self.config, data_dir)

    def build_model(self, stage: Stage) -> PreTrainedModel:
        if stage.name.startswith("abnormality"):  # the class a finished stage's saved module is loaded as
            return _abnormality_module(build_model(self.config))
        return build_model(self.config, confidence_branch=stage.name.startswith("branch"))

    def continue_model(self, stage: Stage, model: PreTrainedModel) -> PreTrainedModel:
        """``abnormality_decoder``: a new abnormality module around a COPY of the baseline's weights (the baseline
        itself goes on to ``oe``); every other stage continues its ``init`` model in place."""
        return _abnormality_module(model) if stage.name == "abnormality_decoder" else model

    def make_trainer(self, stage: Stage, model: PreTrainedModel, output_dir: Path) -> OETrainer:
        """Optimizer: ``torch.optim.SGD(model.parameters(), lr, momentum, nesterov=True, weight_decay)`` (decay on
        every parameter, as the OE code); the Trainer adds the cosine schedule. ``branch``/``branch_oe`` use
        :class:`~oe_vision.confidence_trainer.ConfidenceBranchOETrainer`; the others :class:`OETrainer`."""
        cfg, branch = self.config, stage.name.startswith("branch")
        args = training_arguments(cfg, stage, output_dir)
        if stage.name.startswith("abnormality"):
            return self._abnormality_trainer(stage, model, args)
        if branch != bool(getattr(model.config, "confidence_branch", False)):
            raise ValueError(f"stage {stage.name!r} needs a model {'with' if branch else 'without'} a confidence branch")
        model.to(args.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=stage.learning_rate, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay)
        return (ConfidenceBranchOETrainer if branch else OETrainer)(
            model=model, args=args, train_dataset=self.data.train, data_collator=vdata.image_collate,
            outlier_dataset=self.data.oe_source if stage.uses_outliers else None, optimizers=(optimizer, None), callbacks=stage.callbacks(),
        )

    def _abnormality_trainer(self, stage: Stage, model: PreTrainedModel, args: OETrainingArguments) -> AbnormalityModuleTrainer:
        """Adam (``abnormality_lr``, no weight decay, as the authors' notebook) over the trainable part only: the decoder
        on clean training images, then the head on clean (0) vs noised (1) training images, the batch sizes of the
        OE stages (``batch_size`` clean + ``oe_batch_size`` noised per step)."""
        part = "decoder" if stage.name == "abnormality_decoder" else "head"
        model.set_trainable_part(part)
        model.to(args.device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=stage.learning_rate)
        noised = NoisedImageDataset(self.data.train, seed=self.config.seed) if part == "head" else None
        return AbnormalityModuleTrainer(model=model, args=args, train_dataset=self.data.train, data_collator=vdata.image_collate,
                                        outlier_dataset=noised, optimizers=(optimizer, None), callbacks=stage.callbacks(), part=part)

    def evaluate(self, stage: Stage, model: PreTrainedModel, trainer: OETrainer) -> StageResult:
        """One pass over the test, hold-out and anomaly sets (the arrays: :func:`collect_outputs`), then detection
        records for every score of the stage; ``state["tables"]``: ``{score: the unseen sets' OODTable.to_dict()}``.
        ``abnormality``: the Table 11 sets (:func:`table11_records`) for ``msp`` and ``abnormality``;
        ``abnormality_decoder``: only the test images' mean squared reconstruction error."""
        cfg, data = self.config, self.data
        if stage.name == "abnormality_decoder":
            return StageResult({"records": [], "test_reconstruction_mse": _reconstruction_mse(model, data.test, cfg.eval_batch_size)})
        table11 = stage.name == "abnormality"
        outputs = collect_outputs(model, data.eval_sets(table11), cfg.eval_batch_size, desc=f"scoring {stage.name}", bf16=cfg.bf16)
        scores = ABNORMALITY_SCORES if table11 else BRANCH_SCORES if stage.name.startswith("branch") else cfg.scores
        evaluated = {score: (table11_records if table11 else evaluate_detection)(outputs, data, cfg, stage.name, score) for score in scores}
        return StageResult({"records": [r for records, _ in evaluated.values() for r in records],
                            "tables": {score: table.to_dict() for score, (_, table) in evaluated.items()}}, outputs)

    def report(self, results: Mapping[str, StageResult], models: StageModels, seconds: dict[str, float], output_dir: Path,
               is_main: bool) -> dict[str, Any]:
        """Misclassification, calibration, ``results.json`` / ``results.md`` and ROC / histogram PNGs."""
        cfg, data = self.config, self.data
        outputs = {name: result.arrays for name, result in results.items()}
        records = all_records(results)
        test_labels = data.test.labels
        accuracy = {s: float((o["test"]["logits"].argmax(-1) == test_labels).float().mean()) for s, o in outputs.items() if "test" in o}
        classifiers = [s for s in cfg.stages if not s.startswith(("branch", "abnormality"))]
        misclassification = [misclassification_record(outputs[s], test_labels, cfg, s) for s in classifiers]
        calibration: list[dict[str, Any]] = []
        temperatures: dict[str, float] = {}
        paths: dict[str, Path] = {}
        calibration_skipped: str | None = None
        if cfg.calibration:
            t0 = time.perf_counter()
            try:
                calibration, temperatures = run_calibration(
                    {m: outputs[m] for m in ("baseline", "oe")}, {"test": test_labels, "holdout": data.holdout.labels},
                    list(data.ood), data.mean_sets, cfg.n_draws, cfg.ratio, cfg.seed, cfg.dataset, allow_small_sets=cfg.allow_small_sets,
                )
            except ValueError as err:  # e.g. a smoke run's chance-level model: no finite temperature minimises the NLL
                calibration_skipped = f"calibration skipped: {err}"
                warnings.warn(calibration_skipped, stacklevel=2)
            else:
                paths.update(reliability_diagrams({m: outputs[m] for m in ("baseline", "oe")}, test_labels, temperatures, data.mean_sets,
                                                  output_dir, cfg.ratio, cfg.seed, title_prefix=f"{cfg.dataset}: "))
            seconds["calibration"] = time.perf_counter() - t0
            seconds["total"] += seconds["calibration"]

        meta = run_meta(
            seconds, config=dataclasses.asdict(cfg), dataset=cfg.dataset, data=data.stats(), test_accuracy=accuracy,
            test_error={s: 1.0 - a for s, a in accuracy.items()}, misclassification=misclassification, calibration=calibration,
            temperatures=temperatures, calibration_skipped=calibration_skipped,
            **stage_logs(results),
        )
        paths.update(write_results(output_dir, records, meta, _markdown_report(cfg, data, records, meta)))
        for stage in (s for s in cfg.stages if s != "abnormality_decoder"):
            score = _DETECTOR_SCORES.get(stage, "msp")
            in_scores = anomaly_scores(outputs[stage]["test"], score)
            out = {name: anomaly_scores(outputs[stage][name], score) for name in (data.table11 if stage == "abnormality" else data.ood)}
            paths.update(plot_roc_and_histogram(in_scores, out, output_dir, stage, f"{cfg.dataset} {stage}, score {score}"))
        return {"records": records, "meta": meta, "paths": paths, "outputs": outputs, "data": data}

    def detector(self, results: Mapping[str, StageResult], models: StageModels) -> dict[str, OODDetector] | None:
        """With ``save_models``: ``detector/``, the OE model with the MSP score, and (``abnormality_module``)
        ``abnormality_detector/``, the abnormality module with its ``abnormality`` score. Each threshold flags 5% of
        the HELD-OUT training images; each card's evaluation is its stage's table of that score (the OE model: the
        unseen anomaly sets; the module: the Table 11 sets)."""
        cfg, data = self.config, self.data
        if not cfg.save_models:
            return None
        recipe = f"recipes/{cfg.dataset}_oe.py"
        detectors = {"detector": self._detector("oe", results, models, self.provenance(
            in_distribution_dataset=cfg.dataset, outlier_dataset=data.oe_source_name, oe_loss="uniform",
            test_anomaly_datasets=list(data.mean_sets), recipe=recipe))}
        if cfg.abnormality_module:
            detectors["abnormality_detector"] = self._detector("abnormality", results, models, self.provenance(
                method="abnormality module (Hendrycks & Gimpel 2017)", in_distribution_dataset=cfg.dataset,
                outlier_dataset="noised training images", test_anomaly_datasets=list(data.table11), recipe=f"{recipe} --abnormality-module"))
        return detectors

    def _detector(self, stage: str, results: Mapping[str, StageResult], models: StageModels, training: dict[str, Any]) -> OODDetector:
        """The :class:`OODDetector` of ``stage``'s model and score (:data:`_DETECTOR_SCORES`), threshold at 5% FPR on the
        hold-out images (``target_fpr`` of :meth:`OODDetector.fit_threshold_from_scores`)."""
        score, model = _DETECTOR_SCORES.get(stage, "msp"), models[stage]
        detector = OODDetector(model, ImagePreprocessing(**self.data.preprocessing), score=score, training=training,
                               evaluation=results[stage].state["tables"][score], device=next(model.parameters()).device, progress=False)
        detector.fit_threshold_from_scores(anomaly_scores(results[stage].arrays["holdout"], score), target_fpr=0.05)
        return detector


def run_vision_oe(cfg: VisionOEConfig, output_dir: str | Path, data_dir: str | Path | None = None, data: VisionData | None = None,
                  overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train every stage of ``cfg``, evaluate each model, write results, plots and models into ``output_dir``
    (:func:`oe_common.experiments.experiment.run_experiment` of a :class:`VisionClassifierExperiment`).

    ``output_dir`` must be new or empty, unless ``overwrite`` (its contents are deleted first) or ``resume`` (an
    interrupted run there continues: finished stages are loaded, the interrupted one continues from its last checkpoint,
    every ``cfg.save_steps`` steps); see
    :class:`oe_common.experiments.run_folder.RunFolder` (``run_manifest.json`` says whether the folder's run is complete).

    Returns ``{"records": [...], "meta": {...}, "paths": {...}, "outputs": {model: {set: {"logits", ...}}}, "data": VisionData}``.
    """
    return run_experiment(VisionClassifierExperiment(cfg), output_dir, data_dir=data_dir, data=data, overwrite=overwrite, resume=resume)
