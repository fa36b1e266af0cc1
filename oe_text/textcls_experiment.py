"""Text classifiers with Outlier Exposure (issue #12): intents (CLINC150), sentiment (SST-2), questions (TREC-50).

Details: docs/modules.md, section ``oe_text.textcls_experiment``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from oe_common.arg_types import non_negative_float, non_negative_int
from oe_common.callbacks import check_time_budget
from oe_common.data_dir import MissingDataError
from oe_common.experiment import Stage, StagedExperiment, StageModels, StageResult, all_records, run_experiment, shared_training_arguments
from oe_common.feature_scores import MahalanobisScore
from oe_common.metrics import OODTable, evaluate_ood, misclassification_metrics
from oe_common.presets import preset_settings
from oe_common.recipe_args import flag
from oe_common.reporting import (
    detection_records,
    plot_roc_and_histogram,
    protocol_sentence,
    run_meta,
    steps_cell,
    time_budget_notes,
    write_results,
)
from oe_common.scores import LOGIT_SCORE_NAMES, example_scores
from oe_common.trainer import OETrainer, OETrainingArguments

from .hub_checkpoints import MINILM_REPO_ID, MINILM_REVISION, check_cached_minilm
from .data import seeded_subset_indices
from .textcls_data import load_ood_texts, load_textcls, wikitext_sentences

__all__ = ["TextClsConfig", "TextClsExperiment", "PRESET_NAMES", "TEXTCLS_SCORES", "preset_config", "run_textcls_oe", "check_max_length",
           "ood_set_names", "fixed_length_collator", "DETECTOR_TARGET_FPR"]

PRESET_NAMES = ("test", "tiny", "full")
DATASETS = ("clinc150", "sst2", "trec")
#: Logit scores (oe_common.scores registry) + the feature score; every one "higher = more anomalous".
TEXTCLS_SCORES = ("msp", "max_logit", "energy", "uniform_xent", "mahalanobis")
#: False-alarm rate of the saved detector's threshold on the validation in-distribution texts.
DETECTOR_TARGET_FPR = 0.05
_LOGIT_SCORES = tuple(s for s in TEXTCLS_SCORES if s in LOGIT_SCORE_NAMES)
_RECALLS = {"fpr90": 0.90, "fpr95": 0.95}
#: Default ``max_length`` per dataset (MiniLM tokens with [CLS]/[SEP]; 99th percentile of the train texts: CLINC150
#: 22, TREC 28, SST-2 45).
_MAX_LENGTH = {"clinc150": 24, "trec": 32, "sst2": 64}


@dataclasses.dataclass
class TextClsConfig:
    """Everything a text-classification OE run depends on. ``*_max_steps > 0`` overrides ``*_epochs``."""

    dataset: str = dataclasses.field(default="clinc150", metadata=flag("in-distribution set", choices=DATASETS))
    model: str = dataclasses.field(default="minilm", metadata=flag(
        "minilm (all-MiniLM-L6-v2, fine-tuned), gru (the paper's 2-layer GRU, from scratch) or any "
        "AutoModelForSequenceClassification checkpoint name"))
    baseline_lr: float = 1e-4
    baseline_epochs: float = 1.0
    baseline_max_steps: int = -1
    baseline_max_minutes: float | None = dataclasses.field(default=None, metadata=flag(
        "wall-clock budget of baseline training (minutes): re-planned to fit, hard stop at the budget"))
    oe_lr: float = 5e-5
    oe_epochs: float = 1.0  # measured in in-distribution batches
    oe_max_steps: int = -1
    oe_max_minutes: float | None = dataclasses.field(default=None, metadata=flag("the same for OE fine-tuning"))
    oe_lambda: float = dataclasses.field(default=1.0, metadata=flag(arg_type=non_negative_float))
    oe_loss: str = dataclasses.field(default="uniform", metadata=flag(choices=("uniform", "energy")))
    max_length: int | None = None  # tokens per text (None: _MAX_LENGTH of the dataset)
    batch_size: int = 32  # in-distribution texts per step; as many outlier sentences
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    freeze_embeddings: bool = dataclasses.field(default=True, metadata=flag(
        "freeze the word embeddings of a pretrained model (not the GRU)"))
    head_lr_scale: float = dataclasses.field(default=1.0, metadata=flag(
        "learning rate of the new classification head (model.classifier) = this x the stage's learning rate"))
    train_examples: int | None = None  # caps (None = all): the first N training texts
    test_examples: int | None = None  # a seeded subset of the in-distribution test texts (smoke tests only)
    ood_examples: int | None = None  # a seeded subset of each anomaly set (the protocol draws n_in // 5 anyway)
    outlier_examples: int | None = None  # a seeded subset of the WikiText-2 sentences
    mahalanobis_examples: int | None = None  # a seeded subset of the training texts for the class means/covariance
    validation_examples: int | None = None  # the detector threshold's validation texts
    n_draws: int = 10
    allow_small_sets: bool = True  # TREC test (500) < CLINC150's n_in // 5 (900): used whole, labelled
    detector_score: str = dataclasses.field(default="msp", metadata=flag(choices=TEXTCLS_SCORES))
    save_steps: int = 500  # checkpoint interval (resume state)
    seed: int = dataclasses.field(default=0, metadata=flag(arg_type=non_negative_int))

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.oe_loss not in ("uniform", "energy"):
            raise ValueError(f"oe_loss must be 'uniform' or 'energy', got {self.oe_loss!r}")
        if not self.oe_lambda >= 0:
            raise ValueError(f"oe_lambda must be >= 0, got {self.oe_lambda}")
        if self.detector_score not in TEXTCLS_SCORES:
            raise ValueError(f"detector_score must be one of {TEXTCLS_SCORES}, got {self.detector_score!r}")
        for name in ("baseline_max_minutes", "oe_max_minutes"):
            check_time_budget(name, getattr(self, name))
        if self.max_length is None:
            self.max_length = _MAX_LENGTH[self.dataset]

    @property
    def is_gru(self) -> bool:
        return self.model == "gru"


# Presets: "test" (unit tests, seconds, GRU-sized caps), "tiny" (<= 5 min on the 2-core CPU), "full" (the issue's
# targets on the 2-core CPU, each stage under a wall-clock budget so that a loaded machine still ends on time).
# Keyed by preset, then by model family (pretrained transformer / the GRU from scratch).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "test": {
        "transformer": dict(baseline_max_steps=6, oe_max_steps=4, batch_size=8, train_examples=200, test_examples=100,
                            ood_examples=40, outlier_examples=200, mahalanobis_examples=200, validation_examples=50,
                            n_draws=2, eval_batch_size=64, save_steps=1000),
        "gru": dict(baseline_lr=1e-2, oe_lr=5e-3, baseline_epochs=4, oe_epochs=1, batch_size=32, train_examples=800,
                    max_length=24, test_examples=200, ood_examples=60, outlier_examples=1000, mahalanobis_examples=None,
                    validation_examples=100, n_draws=2, eval_batch_size=128, save_steps=10_000),
    },
    "tiny": {
        "transformer": dict(baseline_lr=3e-4, oe_lr=5e-5, head_lr_scale=10.0, baseline_max_steps=120, oe_max_steps=40, batch_size=32,
                            baseline_max_minutes=1.5, oe_max_minutes=0.75, test_examples=1000, ood_examples=400,
                            outlier_examples=3000, mahalanobis_examples=1500, validation_examples=300, n_draws=10),
        "gru": dict(baseline_lr=5e-3, oe_lr=2e-3, baseline_epochs=3, oe_epochs=1, batch_size=32,
                    baseline_max_minutes=1.5, oe_max_minutes=0.75, test_examples=1000, ood_examples=400,
                    outlier_examples=20000, mahalanobis_examples=5000, validation_examples=300, n_draws=10),
    },
    # MiniLM's new 150-way head learns slowly at the encoder's rate (tiny CLINC150, 90 steps: 45% accuracy at lr 6e-4,
    # 48% at 3e-4 with the head at 10x): head_lr_scale=10.
    # full: measured on the shared 2-core CPU (load ~5), one torch thread: a MiniLM step of 32 + 32 texts x 24 tokens
    # took 1.8-2.1 s (5.9 s with two threads); evaluation ~200 texts/s. The budgets keep a CLINC150 run <= 30 min.
    "full": {
        "transformer": dict(baseline_lr=2e-4, oe_lr=5e-5, head_lr_scale=10.0, baseline_epochs=3, oe_epochs=1, batch_size=32,
                            baseline_max_minutes=13.0, oe_max_minutes=8.0, ood_examples=1000, outlier_examples=20000,
                            mahalanobis_examples=5000, validation_examples=1000, n_draws=10),
        "gru": dict(baseline_lr=5e-3, oe_lr=2e-3, baseline_epochs=10, oe_epochs=3, batch_size=32,
                    baseline_max_minutes=8.0, oe_max_minutes=4.0, ood_examples=2000, outlier_examples=50000,
                    mahalanobis_examples=20000, validation_examples=1000, n_draws=10),
    },
}


def preset_config(preset: str, **overrides: Any) -> TextClsConfig:
    """The :class:`TextClsConfig` of a named preset (``test``, ``tiny``, ``full``) with ``overrides`` applied
    (``None`` = not given); ``model`` (default ``minilm``) picks the preset's model-family settings."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {PRESET_NAMES}")
    family = "gru" if overrides.get("model") == "gru" else "transformer"
    return TextClsConfig(**preset_settings(TextClsConfig, {preset: _PRESETS[preset][family]}, preset, overrides))


def ood_set_names(dataset: str) -> list[str]:
    """The anomaly sets of ``dataset``: CLINC150's out-of-scope queries (CLINC150 only), the other sets' test
    texts, Multi30K and the five EWT domains."""
    from .data import EWT_DOMAINS

    own = ["clinc150_oos"] if dataset == "clinc150" else []
    return own + [d for d in DATASETS if d != dataset] + ["multi30k"] + [f"ewt_{d}" for d in EWT_DOMAINS]


def fixed_length_collator(tokenizer: Any, max_length: int) -> Any:
    """Pads every batch to ``max_length`` (right): in-distribution and outlier batches then have one shape and
    ``OETrainer`` concatenates them into ONE forward pass."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)


@dataclasses.dataclass
class TextClsData:
    """What a run reads: tokenizer, in-distribution splits, label names, WikiText-2 outliers, anomaly sets."""

    tokenizer: Any
    label_names: list[str]
    train: Any  # datasets.Dataset (text, label) + tokenized columns
    train_texts: list[str]
    train_labels: np.ndarray
    validation_texts: list[str]
    test_texts: list[str]
    test_labels: np.ndarray
    outliers: Any  # datasets.Dataset of tokenized WikiText-2 sentences
    ood: dict[str, list[str]]


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (``minilm`` and ``gru``: all-MiniLM-L6-v2's); a missing checkpoint is a one-line
    :class:`MissingDataError` naming the command that places it."""
    from transformers import AutoTokenizer

    repo, revision = (MINILM_REPO_ID, MINILM_REVISION) if model in ("minilm", "gru") else (model, None)
    if model in ("minilm", "gru"):
        check_cached_minilm()  # the weights build_model loads next are checked here too
    try:
        return AutoTokenizer.from_pretrained(repo, revision=revision)
    except OSError as exc:
        raise _missing_checkpoint(model, exc) from None


def model_max_positions(model: str) -> int | None:
    """How many token positions ``model``'s checkpoint has (``max_position_embeddings`` of its config, read from the
    local cache); ``None`` when it has no such limit (the GRU) or its config is not available (loading the model
    then fails with its own message)."""
    if model == "gru":
        return None
    from transformers import AutoConfig

    repo, revision = (MINILM_REPO_ID, MINILM_REVISION) if model == "minilm" else (model, None)
    try:
        config = AutoConfig.from_pretrained(repo, revision=revision)
    except (OSError, ValueError):
        return None
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def check_max_length(config: TextClsConfig) -> TextClsConfig:
    """``config``, or ``ValueError`` when its ``max_length`` exceeds the model's positions (the run would fail at its
    first step): the recipe checks it at parse time."""
    positions = model_max_positions(config.model)
    if positions is not None and config.max_length > positions:
        raise ValueError(f"--max-length {config.max_length} is longer than the {positions} token positions of the model "
                         f"{config.model!r}; give --max-length {positions} or less")
    return config


def _missing_checkpoint(model: str, exc: Exception) -> MissingDataError:
    if model in ("minilm", "gru"):
        return MissingDataError(f"the checkpoint {MINILM_REPO_ID}@{MINILM_REVISION[:8]} is not in the Hugging Face cache "
                                "and the Hub is not reachable: run `oe fetch-checkpoint all-minilm-l6-v2` first")
    return MissingDataError(f"cannot load the checkpoint {model!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


class TextClsExperiment(StagedExperiment):
    """Baseline then OE fine-tuning of a text classifier; see the module docstring."""

    config: TextClsConfig

    # ---- stages and data -----------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage("baseline", c.baseline_lr, c.baseline_epochs, c.baseline_max_steps, c.baseline_max_minutes),
            Stage("oe", c.oe_lr, c.oe_epochs, c.oe_max_steps, c.oe_max_minutes, oe_lambda=c.oe_lambda, init="baseline"),
        ]

    def load_data(self, data_dir: str | Path | None) -> TextClsData:
        c = self.config
        tokenizer = load_tokenizer(c.model)
        tokenizer.padding_side = "right"  # the GRU reads lengths from a right-padded mask
        cls_data = load_textcls(c.dataset, data_dir, seed=c.seed)
        splits = cls_data.splits
        train = splits["train"]
        if c.train_examples is not None and c.train_examples < len(train):
            train = train.select(range(c.train_examples))

        def tokenize(batch: Mapping[str, list[str]]) -> Any:
            return tokenizer(batch["text"], truncation=True, max_length=c.max_length)

        train_tok = train.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
        sentences = wikitext_sentences("train", data_dir)
        sentences = sentences.select(seeded_subset_indices(len(sentences), c.outlier_examples, c.seed + 1))
        outliers = sentences.map(tokenize, batched=True, remove_columns=["text"])
        test = splits["test"]
        test_idx = seeded_subset_indices(len(test), c.test_examples, c.seed + 2)
        validation = splits["validation"]["text"]
        ood = {}
        for index, name in enumerate(ood_set_names(c.dataset)):
            texts = load_ood_texts(name, data_dir)["text"]
            ood[name] = [texts[i] for i in seeded_subset_indices(len(texts), c.ood_examples, c.seed + 10 + index)]
        return TextClsData(
            tokenizer=tokenizer, label_names=cls_data.label_names, train=train_tok.with_format("torch"),
            train_texts=list(train["text"]), train_labels=np.asarray(train["label"]),
            validation_texts=[validation[i] for i in seeded_subset_indices(len(validation), c.validation_examples, c.seed + 3)],
            test_texts=[test["text"][i] for i in test_idx], test_labels=np.asarray(test["label"])[test_idx],
            outliers=outliers.with_format("torch"), ood=ood)

    # ---- model and trainer ---------------------------------------------------------------------------------------
    def build_model(self, stage: Stage) -> torch.nn.Module:
        c, data = self.config, self.data
        labels = {"num_labels": len(data.label_names), "id2label": dict(enumerate(data.label_names)),
                  "label2id": {name: i for i, name in enumerate(data.label_names)}}
        if c.is_gru:
            from .modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification

            return GRUForSequenceClassification(GRUClassifierConfig(
                vocab_size=len(data.tokenizer), pad_token_id=data.tokenizer.pad_token_id, **labels))
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        repo, revision = (MINILM_REPO_ID, MINILM_REVISION) if c.model == "minilm" else (c.model, None)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "newly initialized classifier" load report is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(repo, revision=revision, **labels)
        except OSError as exc:
            raise _missing_checkpoint(c.model, exc) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if c.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def make_trainer(self, stage: Stage, model: torch.nn.Module, output_dir: Path) -> OETrainer:
        c, data = self.config, self.data
        if c.freeze_embeddings and not c.is_gru:  # a model loaded from a stage folder (resume) is frozen here too
            model.get_input_embeddings().weight.requires_grad_(False)
        args = OETrainingArguments(
            **{**shared_training_arguments(stage, output_dir, c), "lr_scheduler_type": "linear"},
            weight_decay=c.weight_decay,
            warmup_steps=c.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers >= 5
            eval_strategy="no",
            save_steps=c.save_steps,
            logging_steps=25,
            oe_loss=c.oe_loss,
            oe_batch_ratio=1.0,
            dataloader_num_workers=0,
        )
        trainer = OETrainer(model=model, args=args, train_dataset=data.train, processing_class=data.tokenizer,
                            data_collator=fixed_length_collator(data.tokenizer, c.max_length),
                            outlier_dataset=data.outliers if stage.uses_outliers else None, callbacks=stage.callbacks())
        if c.head_lr_scale != 1.0:
            trainer.optimizer = _optimizer_with_head_lr(trainer, model, c.head_lr_scale)
        return trainer

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def _preprocessing(self) -> Any:
        from .tokenizer_preprocessing import TokenizerPreprocessing

        return TokenizerPreprocessing(self.data.tokenizer, max_length=self.config.max_length)

    @torch.inference_mode()
    def forward_texts(self, model: torch.nn.Module, texts: Sequence[str], desc: str) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (N, K), pooled features (N, D))`` of raw ``texts``, in order, from ONE forward pass per batch
        (the features are the input of ``model.classifier``, caught by a forward pre-hook)."""
        model.eval()
        device = next(model.parameters()).device
        n, n_batches, batches = self._preprocessing().batches(list(texts), "text-classification", self.config.eval_batch_size)
        logits_out: np.ndarray | None = None
        feats_out: np.ndarray | None = None
        captured: list[torch.Tensor] = []
        handle = model.get_submodule("classifier").register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            for inputs, owners in tqdm(batches, total=n_batches, desc=desc, leave=False, disable=n_batches < 5):
                captured.clear()
                logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()
                feats = captured[0].float().cpu().numpy()
                if feats.ndim != 2:
                    raise ValueError(f"model.classifier receives a {feats.shape} tensor, not (batch, features)")
                if logits_out is None:
                    logits_out = np.zeros((n, logits.shape[1]), np.float32)
                    feats_out = np.zeros((n, feats.shape[1]), np.float32)
                logits_out[owners], feats_out[owners] = logits, feats
        finally:
            handle.remove()
        assert logits_out is not None and feats_out is not None
        return logits_out, feats_out

    def score_texts(self, model: torch.nn.Module, texts: Sequence[str], mahalanobis: MahalanobisScore, desc: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``({score: (N,)}, logits)`` for every name of :data:`TEXTCLS_SCORES`."""
        logits, feats = self.forward_texts(model, texts, desc)
        scores = {k: v.double().numpy() for k, v in example_scores(torch.from_numpy(logits), _LOGIT_SCORES).items()}
        scores["mahalanobis"] = np.asarray(mahalanobis.score(feats), dtype=np.float64)
        return scores, logits

    def evaluate(self, stage: Stage, model: torch.nn.Module, trainer: Any) -> StageResult:
        c, data = self.config, self.data
        fit_idx = seeded_subset_indices(len(data.train_texts), c.mahalanobis_examples, c.seed + 4)
        _, train_feats = self.forward_texts(model, [data.train_texts[i] for i in fit_idx], f"{stage.name}: train features")
        # class means over the classes the fitting texts hold (a capped subset may miss a rare class)
        present, fit_labels = np.unique(data.train_labels[fit_idx], return_inverse=True)
        mahalanobis = MahalanobisScore().fit(train_feats, fit_labels, num_classes=len(present))
        test_scores, test_logits = self.score_texts(model, data.test_texts, mahalanobis, f"{stage.name}: test")
        val_scores, _ = self.score_texts(model, data.validation_texts, mahalanobis, f"{stage.name}: validation")
        ood_scores = {name: self.score_texts(model, texts, mahalanobis, f"{stage.name}: {name}")[0] for name, texts in data.ood.items()}

        fields = {"dataset": c.dataset, "model": c.model, "stage": stage.name}
        correct = test_logits.argmax(1) == data.test_labels
        records: list[dict[str, Any]] = [{"task": "accuracy", **fields, "accuracy": float(correct.mean()), "n": int(correct.size)}]
        tables: dict[str, Any] = {}
        for score in TEXTCLS_SCORES:
            out = {name: s[score] for name, s in ood_scores.items()}
            by_recall = {key: evaluate_ood(test_scores[score], out, n_draws=c.n_draws, seed=c.seed, recall_level=level,
                                           allow_small_sets=c.allow_small_sets) for key, level in _RECALLS.items()}
            records += _detection_records(by_recall, {"task": "detection", **fields, "score": score})
            tables[score] = by_recall["fpr95"].to_dict()
            if 0 < correct.sum() < correct.size:  # misclassification: errors positive, confidence = -score
                mis = misclassification_metrics(-test_scores[score], correct)
                records.append({"task": "misclassification", **fields, "score": score, "auroc": mis["auroc"],
                                "aupr": mis["aupr_err"], "aupr_succ": mis["aupr_succ"],
                                "n_errors": int((~correct).sum()), "n": int(correct.size)})
        state = {"records": records, "accuracy": float(correct.mean()), "tables": tables,
                 "mahalanobis_examples": int(fit_idx.size), "mahalanobis_classes": int(present.size)}
        arrays = {"test": test_scores, "validation": val_scores, "ood": ood_scores,
                  "mahalanobis": {"means": mahalanobis.means, "covariance": mahalanobis.covariance}}
        return StageResult(state, arrays)

    # ---- report --------------------------------------------------------------------------------------------------
    def report(self, results: Mapping[str, StageResult], models: StageModels, seconds: dict[str, float],
               output_dir: Path, is_main: bool) -> dict[str, Any]:
        c, data = self.config, self.data
        records = all_records(results)
        steps = {name: result.state.get("training_steps", {}) for name, result in results.items()}
        meta = run_meta(seconds, config=dataclasses.asdict(c), training_steps=steps,
                        n_texts={"train": len(data.train_texts), "test": len(data.test_texts),
                                 "validation": len(data.validation_texts), "outliers": len(data.outliers),
                                 **{name: len(texts) for name, texts in data.ood.items()}},
                        mahalanobis_examples=results["oe"].state.get("mahalanobis_examples"),
                        values="fractions", torch_threads=torch.get_num_threads())
        # arrays: per stage the scores of every text ({"test" | "validation": {score: (N,)}, "ood": {set: {score: (N,)}}})
        outcome: dict[str, Any] = {"records": records, "meta": meta, "arrays": {k: r.arrays for k, r in results.items()}}
        if not is_main:
            return outcome
        paths = write_results(output_dir, records, meta, results_markdown(records, meta))
        for name, result in results.items():
            by_set = {set_name: s[c.detector_score] for set_name, s in result.arrays["ood"].items()}
            title = f"{c.dataset} {c.model} {name}, score {c.detector_score}"
            paths.update(plot_roc_and_histogram(result.arrays["test"][c.detector_score], by_set, output_dir, name, title))
        paths["detector"] = self.save_detector(models["oe"], results["oe"], output_dir / "detector")
        outcome["paths"] = paths
        return outcome

    def save_detector(self, model: torch.nn.Module, result: StageResult, folder: Path) -> Path:
        """The OE model as an :class:`~oe_common.detector.OODDetector` (score ``detector_score``, the tokenizer saved
        in the folder, the fitted Mahalanobis statistics), threshold flagging :data:`DETECTOR_TARGET_FPR` of the
        validation texts, the stage's detection table (FPR95) and test accuracy on the card."""
        from oe_common.detector import OODDetector

        c, data = self.config, self.data
        maha = result.arrays["mahalanobis"]
        mahalanobis = MahalanobisScore().set_parameters(torch.as_tensor(maha["means"]), torch.as_tensor(maha["covariance"]))
        training = {"in_distribution_dataset": c.dataset, "outlier_dataset": "wikitext-2 sentences", "model": c.model,
                    "oe_lambda": c.oe_lambda, "oe_loss": c.oe_loss, "baseline_lr": c.baseline_lr, "oe_lr": c.oe_lr,
                    "max_length": c.max_length, "seed": c.seed, "recipe": "recipes/textcls_oe.py"}
        table = dict(result.state["tables"][c.detector_score])
        table["meta"] = {**table.get("meta", {}), "score": c.detector_score,
                         "examples": f"{c.dataset} test texts against the anomaly sets of the recipe's results.json"}
        evaluation = {**table, "accuracy": result.state["accuracy"], "accuracy_n": len(data.test_texts),
                      "accuracy_data": f"{c.dataset} test"}
        detector = OODDetector(model, self._preprocessing(), score=c.detector_score, training=training, evaluation=evaluation,
                               mahalanobis=mahalanobis, device=next(model.parameters()).device,
                               batch_size=c.eval_batch_size, progress=False)
        detector.fit_threshold_from_scores(result.arrays["validation"][c.detector_score], target_fpr=DETECTOR_TARGET_FPR)
        detector.threshold_info["data"] = f"{len(data.validation_texts)} {c.dataset} validation texts"
        return detector.save_pretrained(folder)


def _optimizer_with_head_lr(trainer: OETrainer, model: torch.nn.Module, scale: float) -> torch.optim.Optimizer:
    """The optimizer ``Trainer.create_optimizer`` would build (its class, weight-decay split), with the parameters of
    ``model.classifier`` in groups of learning rate ``scale * learning_rate``; the Trainer's schedule multiplies every
    group's rate by the same factor."""
    decay = set(trainer.get_decay_parameter_names(model))
    head = {id(p) for p in model.get_submodule("classifier").parameters()}
    lr, wd = trainer.args.learning_rate, trainer.args.weight_decay
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head, name in decay), []).append(p)
    cls, kwargs = OETrainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return cls([{"params": ps, "lr": lr * scale if is_head else lr, "weight_decay": wd if decays else 0.0}
                for (is_head, decays), ps in groups.items()], lr=lr, **kwargs)


def _detection_records(by_recall: Mapping[str, OODTable], fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per anomaly set (and ``"mean"``) with FPR90 and FPR95 from two tables of the same draws."""
    merged = []
    rows90 = detection_records(by_recall["fpr90"], **fields)
    rows95 = detection_records(by_recall["fpr95"], **fields)
    for r90, r95 in zip(rows90, rows95, strict=True):
        record = {**r90, "fpr95": r95["fpr95"], "fpr95_std": r95["fpr95_std"]}
        record["ood_set"] = record.pop("domain")
        record["draws"] = record["n_draws"]
        merged.append(record)
    return merged


# =============================================================================================== Markdown
def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}"


def best_score(records: Sequence[Mapping[str, Any]], stage: str, ood_set: str = "mean") -> Mapping[str, Any]:
    """The detection record of ``stage`` on ``ood_set`` with the highest AUROC over the scores."""
    rows = [r for r in records if r.get("task") == "detection" and r["stage"] == stage and r["ood_set"] == ood_set]
    return max(rows, key=lambda r: r["auroc"])


def results_markdown(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """``results.md``: accuracy, detection per anomaly set (baseline → OE, every score), best score,
    misclassification detection."""
    cfg = meta["config"]
    det = [r for r in records if r.get("task") == "detection"]
    acc = {r["stage"]: r for r in records if r.get("task") == "accuracy"}
    steps = meta.get("training_steps", {})
    parts = [
        f"# {cfg['dataset']} / {cfg['model']}: baseline → OE",
        "",
        f"Commit `{meta['commit']}`; {meta['hardware']}, {meta.get('torch_threads')} torch threads; {meta['date']}; "
        f"total {meta['seconds'].get('total', 0):.0f} s. Values are percentages (results.json: fractions), the mean over "
        "the draws. " + protocol_sentence([{**r, "domain": r["ood_set"]} for r in det], f"{cfg['dataset']} test texts")
        + f" Outliers for OE: WikiText-2 sentences, λ = {cfg['oe_lambda']}, loss {cfg['oe_loss']}; max_length {cfg['max_length']}.",
        "",
        "| stage | test accuracy | train steps | train seconds | eval seconds |",
        "|---|---|---|---|---|",
    ]
    for stage in ("baseline", "oe"):
        if stage in acc:
            parts.append(f"| {stage} | {_pct(acc[stage]['accuracy'])} | {steps_cell(steps.get(stage, {}))} | "
                         f"{meta['seconds'].get(stage + '_train', 0):.0f} | {meta['seconds'].get(stage + '_eval', 0):.0f} |")
    parts += time_budget_notes(steps)
    parts += ["", "## Best score (highest mean AUROC per stage)", "",
              "| stage | score | AUROC | FPR95 | FPR90 | AUPR |", "|---|---|---|---|---|---|"]
    for stage in ("baseline", "oe"):
        b = best_score(det, stage)
        parts.append(f"| {stage} | {b['score']} | {_pct(b['auroc'])} | {_pct(b['fpr95'])} | {_pct(b['fpr90'])} | {_pct(b['aupr'])} |")
    if any(r["ood_set"] == "clinc150_oos" for r in det):
        parts += ["", "CLINC150 out-of-scope test queries (`clinc150_oos`), best score per stage:", ""]
        parts += ["| stage | score | AUROC | FPR95 | AUPR |", "|---|---|---|---|---|"]
        for stage in ("baseline", "oe"):
            b = best_score(det, stage, "clinc150_oos")
            parts.append(f"| {stage} | {b['score']} | {_pct(b['auroc'])} | {_pct(b['fpr95'])} | {_pct(b['aupr'])} |")
    for score in TEXTCLS_SCORES:
        parts += ["", f"## Detection, score `{score}` (baseline → OE)", "",
                  "| anomaly set | AUROC ↑ | FPR95 ↓ | FPR90 ↓ | AUPR ↑ |", "|---|---|---|---|---|"]
        base = {r["ood_set"]: r for r in det if r["stage"] == "baseline" and r["score"] == score}
        oe = {r["ood_set"]: r for r in det if r["stage"] == "oe" and r["score"] == score}
        for name, b in base.items():
            o = oe.get(name, {})
            cells = [f"{_pct(b[k])} → {_pct(o.get(k))}" for k in ("auroc", "fpr95", "fpr90", "aupr")]
            parts.append("| " + " | ".join([f"**{name}**" if name == "mean" else name, *cells]) + " |")
    mis = {(r["stage"], r["score"]): r for r in records if r.get("task") == "misclassification"}
    if mis:
        parts += ["", "## Misclassification detection (test errors positive; baseline → OE)", "",
                  "| score | AUROC ↑ | AUPR (errors) ↑ |", "|---|---|---|"]
        for score in TEXTCLS_SCORES:
            b, o = mis.get(("baseline", score)), mis.get(("oe", score))
            if b:
                parts.append(f"| {score} | {_pct(b['auroc'])} → {_pct(o and o['auroc'])} | {_pct(b['aupr'])} → {_pct(o and o['aupr'])} |")
    return "\n".join(parts) + "\n"


def run_textcls_oe(cfg: TextClsConfig, output_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                   overwrite: bool = False, resume: bool = False, data: TextClsData | None = None) -> dict[str, Any]:
    """Baseline, OE fine-tuning, evaluation and report in ``output_dir`` (:func:`oe_common.experiment.run_experiment`).

    Returns ``{"records": [...], "meta": {...}, "arrays": {stage: scores}, "paths": {...}}`` (paths on the main
    process only)."""
    return run_experiment(TextClsExperiment(cfg), output_dir, data_dir=data_dir, data=data, overwrite=overwrite, resume=resume)
