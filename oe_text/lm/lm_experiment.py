"""The PTB language-model OE experiment (paper Table 6) as library code; the recipes only parse arguments.

Details: docs/modules.md, section ``oe_text.lm.lm_experiment``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from oe_common.experiments.arg_types import non_negative_float, non_negative_int, probability
from oe_common.experiments.experiment import (Stage, StagedExperiment, StageModels, StageResult, all_records, run_experiment,
                                  shared_training_arguments, train_log)
from oe_common.deployment.detector import OODDetector
from oe_common.maths.metrics import OODTable, evaluate_ood
from oe_common.experiments.presets import StageSettings, apply_preset, stage_default
from oe_common.experiments.reporting import (
    percent_cell,
    plot_roc_and_histogram,
    sampling_note,
    protocol_sentence,
    run_meta,
    steps_cell,
    time_budget_notes,
    write_results,
)
from oe_common.training.callbacks import training_steps_report
from oe_common.maths import scores as oe_scores
from oe_common.experiments.recipe_args import flag
from oe_common.training.trainer import OE_LOSSES, OETrainer, OETrainingArguments

from .controls import CONTROL_SET
from .data import DEFAULT_PROTOCOLS, PROTOCOLS, TextOEData, load_text_oe_data, seeded_subset_indices
from .models import build_language_model
from .paper_results import TABLE6
from .preprocessing import TextPreprocessing

__all__ = [
    "TextOEConfig", "PRESET_NAMES", "preset_config", "PTBLanguageModelExperiment", "score_model", "detection_tables", "table_records",
    "evaluate_scores", "run_text_oe", "table6_markdown", "stream_lines", "allowed_protocols", "DETECTOR_TARGET_FPR",
]

#: ``dataset`` of the records (``level`` says word or char).
PTB_DATASET = "ptb"
#: The scores this pipeline computes and reports: a selection of the registry ``oe_common.maths.scores.SCORE_NAMES``.
TEXT_SCORES = ("nll", "uniform_xent")
#: False-alarm rate of the saved detector's threshold, fitted on the PTB validation sentences.
DETECTOR_TARGET_FPR = 0.05
#: Normaliser of the saved detector per level: how it reads raw English, the way the EWT protocol
#: :data:`DETECTOR_PROTOCOL` reads EWT (word: ``ptb``, PTB conventions; char: ``spelled``, no vocabulary cut).
DETECTOR_NORMALIZER = {"word": "ptb", "char": "spelled"}
#: The EWT protocol whose records go on the detector's card (the one its normaliser reproduces).
DETECTOR_PROTOCOL = {"word": "clean", "char": "spelled"}
#: Normaliser that reads PTB's own lines exactly as training did (identity on them): the threshold is fitted on
#: PTB validation sentences read this way (``spelled`` would turn PTB's ``N`` / ``<unk>`` into letters).
PTB_LINE_NORMALIZER = {"word": "ptb", "char": "ptb_char"}


def allowed_protocols(level: str) -> tuple[str, ...]:
    """The EWT protocols a ``level`` model can read: all at char level; not ``spelled`` (no vocabulary cut) at word level."""
    return PROTOCOLS if level == "char" else DEFAULT_PROTOCOLS["word"]


@dataclasses.dataclass
class TextOEConfig(StageSettings):
    """Everything a PTB OE run depends on (the stage settings: :class:`~oe_common.experiments.presets.StageSettings`). Each field
    is also a recipe flag (``--oe-max-steps``; :class:`oe_common.experiments.recipe_args.RecipeArgumentParser`), except ``level``."""

    level: str = field(default="word", metadata=flag(command_line=False))
    model: str = field(default="lstm", metadata=flag("model family (default: the preset's; paper: lstm, tiny/test: transformer)",
                                                     choices=("lstm", "transformer")))
    model_preset: str = field(default="tiny", metadata=flag("size preset of oe_text.lm.models (default: the preset's)"))
    seq_len: int | None = None  # predicted tokens per window; None = 70 (word) / 150 (char)
    batch_size: int = 32  # in-distribution windows per device and step
    eval_batch_size: int = 64
    optimizer: str = "adamw_torch"
    baseline_lr: float = 2e-3
    baseline_max_minutes: float | None = stage_default("baseline_max_minutes", None, help=(
        "wall-clock budget of baseline training (minutes): re-planned to fit, hard stop at the budget, so that a fixed-length GPU session still evaluates"))
    oe_lr: float = 1e-3
    oe_epochs: float = 5.0  # measured in PTB batches, as the paper's fine-tuning
    oe_lambda: float = stage_default("oe_lambda", 0.5)  # the released LM code's value; the paper's text says 1.0 for NLP
    oe_loss: str = field(default="uniform", metadata=flag(choices=OE_LOSSES))
    weight_decay: float = field(default=1.2e-6, metadata=flag(arg_type=non_negative_float))
    max_grad_norm: float = 0.25
    warmup_ratio: float = field(default=0.02, metadata=flag(arg_type=non_negative_float))
    eval_steps: int = 200  # PTB validation every this many baseline steps; the best checkpoint is kept
    oe_eval_steps: int | None = None  # the same for OE fine-tuning (default: eval_steps)
    bf16: bool = False
    train_windows: int | None = None  # use only the first N PTB train windows (None = all)
    valid_windows: int | None = None
    test_windows: int | None = None  # only for smoke tests: the paper uses every PTB test window
    ewt_windows: int | None = None  # cap per EWT domain: a seeded random subset (None = all)
    protocols: tuple[str, ...] | None = field(default=None, metadata=flag(  # None = oe_text.lm.data.DEFAULT_PROTOCOLS[level]
        "EWT protocols to evaluate; the headline is the one whose control is nearest 50 (default: paper clean; char level: spelled paper clean; see docs/text.md)",
        choices=PROTOCOLS))
    scores: tuple[str, ...] = field(default=TEXT_SCORES, metadata=flag(choices=TEXT_SCORES))
    n_draws: int = 10
    recall_level: float = field(default=0.90, metadata=flag(arg_type=probability))
    allow_small_sets: bool = field(default=False, metadata=flag(
        "use an EWT domain with fewer than n_in // 5 windows whole (labelled in the tables) instead of stopping"))
    seed: int = field(default=0, metadata=flag(arg_type=non_negative_int))

    def __post_init__(self) -> None:
        if self.level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {self.level!r}")
        self.protocols = DEFAULT_PROTOCOLS[self.level] if self.protocols is None else tuple(self.protocols)
        allowed = allowed_protocols(self.level)
        if not self.protocols or set(self.protocols) - set(allowed):
            raise ValueError(f"protocols must be a non-empty subset of {allowed} at {self.level} level, got {self.protocols}")
        unknown = set(self.scores) - (set(TEXT_SCORES) & set(oe_scores.SCORE_NAMES))
        if unknown:
            raise ValueError(f"unknown score(s) {sorted(unknown)}; text scores are {TEXT_SCORES}")
        super().__post_init__()


# Presets. "test" is for the unit tests (about a minute on a 2-core CPU); "tiny" is the README's main job (a 2-core
# CPU, < 10 minutes, real data); "paper" is the full GPU configuration (AWD-LSTM 3 x 1150, all data).
# test/tiny use the small GPT-2 (model="transformer"): measured on the 2-core CPU at the same cost per step, it
# left the unigram plateau far sooner than the tiny AWD-LSTM (PTB train loss after 200 steps of 32 x 70 tokens:
# 5.85 vs 6.45 nats), and a CPU budget of a few hundred steps is all these presets have. `--model lstm` runs the
# paper-faithful AWD-LSTM family at any preset; "paper" uses it by default.
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "word": {
        "test": dict(model="transformer", model_preset="tiny", batch_size=16, baseline_max_steps=90, oe_max_steps=45,
                     eval_steps=45, oe_eval_steps=45, baseline_lr=3e-3, oe_lr=2e-3, train_windows=1600,
                     valid_windows=64, test_windows=150, ewt_windows=60, n_draws=3, eval_batch_size=50),
        "tiny": dict(model="transformer", model_preset="tiny", batch_size=32, baseline_max_steps=400, oe_max_steps=100,
                     eval_steps=100, oe_eval_steps=50, baseline_lr=3e-3, oe_lr=1e-3, valid_windows=128, ewt_windows=400),
        "paper": dict(model_preset="paper", batch_size=64, baseline_epochs=40, oe_epochs=5, baseline_lr=2e-3, oe_lr=5e-4,
                      eval_steps=400, bf16=True, eval_batch_size=128),
    },
    "char": {
        "test": dict(model="transformer", model_preset="tiny", batch_size=16, baseline_max_steps=90, oe_max_steps=45,
                     eval_steps=45, oe_eval_steps=45, baseline_lr=3e-3, oe_lr=2e-3, train_windows=800,
                     valid_windows=32, test_windows=120, ewt_windows=60, n_draws=3, eval_batch_size=50),
        # char tiny: 1000 + 300 steps (7 min on the 2-core CPU); at 400 + 150 the model stayed at 2.9 bpc
        "tiny": dict(model="transformer", model_preset="tiny", batch_size=32, baseline_max_steps=1000, oe_max_steps=300,
                     eval_steps=100, oe_eval_steps=50, baseline_lr=3e-3, oe_lr=1e-3, valid_windows=128, ewt_windows=600),
        "paper": dict(model_preset="paper_char", batch_size=64, baseline_epochs=30, oe_epochs=5, baseline_lr=2e-3,
                      oe_lr=5e-4, eval_steps=1000, bf16=True, eval_batch_size=128),
    },
}


PRESET_NAMES = tuple(_PRESETS["word"])


def preset_config(level: str, preset: str, **overrides: Any) -> TextOEConfig:
    """The :class:`TextOEConfig` of a named preset (``test``, ``tiny``, ``paper``) with ``overrides`` applied."""
    if level not in _PRESETS:
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    return apply_preset(TextOEConfig, _PRESETS[level], preset, overrides, level=level)


def _first(dataset: Any, n: int | None) -> Any:
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


def _seeded_subset(dataset: Any, n: int | None, seed: int) -> Any:
    return dataset if n is None or n >= len(dataset) else dataset.select(seeded_subset_indices(len(dataset), n, seed))


def _eval_sets(data: TextOEData, cfg: TextOEConfig) -> dict[str, Any]:
    """``{"ptb/test": ds, "<protocol>/<domain>": ds, ..., "control/<protocol>": ds}`` (with the caps of ``cfg``),
    torch-formatted.

    ``ewt_windows`` caps each domain, and each protocol's control (PTB test rewritten to the protocol's writing of
    rare words, :mod:`oe_text.lm.controls`), with a seeded random subset of its windows (the evaluation protocol draws
    ``n_in // 5`` of them per draw anyway); ``test_windows`` takes the first PTB test windows (smoke tests only),
    and the first windows of each control.
    """
    sets = {"ptb/test": _first(data.ptb_test, cfg.test_windows)}
    for protocol in cfg.protocols:
        for index, (domain, dataset) in enumerate(data.ewt[protocol].items()):
            sets[f"{protocol}/{domain}"] = _seeded_subset(dataset, cfg.ewt_windows, cfg.seed + index)
        if protocol in data.controls:
            sets[f"{CONTROL_SET}/{protocol}"] = _seeded_subset(_first(data.controls[protocol], cfg.test_windows), cfg.ewt_windows, cfg.seed)
    return {name: ds.with_format("torch") for name, ds in sets.items()}


def score_model(trainer: OETrainer, sets: Mapping[str, Any], scores: tuple[str, ...], desc: str = "scoring") -> dict[str, dict[str, np.ndarray]]:
    """``{score: {set_name: per-window scores}}`` for every set (one forward pass per set for all scores)."""
    result: dict[str, dict[str, np.ndarray]] = {score: {} for score in scores}
    for name in tqdm(list(sets), desc=desc, disable=not trainer.is_world_process_zero()):
        for score, values in trainer.compute_scores(sets[name], list(scores)).items():
            result[score][name] = values
    return result


def _token_weighted_nll(window_nll: np.ndarray, dataset: Any) -> float:
    """Mean NLL per predicted token over all windows (windows have ``sum(mask) - 1`` predicted tokens)."""
    predicted = np.asarray(dataset["attention_mask"]).sum(-1) - 1
    return float((window_nll * predicted).sum() / predicted.sum())


def _protocol_sets(by_set: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """``{domain: scores}`` of the sets named ``<protocol>/<domain>`` in ``by_set``."""
    return {name.split("/", 1)[1]: s for name, s in by_set.items() if name.startswith(protocol + "/")}


def detection_tables(scores: Mapping[str, Mapping[str, np.ndarray]], cfg: TextOEConfig) -> dict[tuple[str, str, str], OODTable]:
    """The paper protocol of :func:`oe_common.maths.metrics.evaluate_ood` for every protocol and score of one model.

    ``{(protocol, score, "ewt"): PTB test against the protocol's EWT domains and their mean}``, and, where ``scores``
    has the set ``control/<protocol>``, ``(protocol, score, "control")``: PTB test against that control under the same
    protocol. A domain too small for the 1:5 base rate is an error unless ``cfg.allow_small_sets``."""
    evaluate = functools.partial(evaluate_ood, n_draws=cfg.n_draws, seed=cfg.seed, recall_level=cfg.recall_level,
                                 allow_small_sets=cfg.allow_small_sets)
    tables = {}
    for protocol in cfg.protocols:
        for score, by_set in scores.items():
            tables[protocol, score, "ewt"] = evaluate(by_set["ptb/test"], _protocol_sets(by_set, protocol))
            control = by_set.get(f"{CONTROL_SET}/{protocol}")
            if control is not None:
                tables[protocol, score, CONTROL_SET] = evaluate(by_set["ptb/test"], {CONTROL_SET: control})
    return tables


def table_records(tables: Mapping[tuple[str, str, str], OODTable], cfg: TextOEConfig, stage: str,
                  controls: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The detection records of :func:`detection_tables` (:meth:`oe_common.maths.metrics.OODTable.records`: dataset ``ptb``,
    model ``cfg.model``, ``stage``, ``score``, ``level``, ``protocol``; each says what ran). A control gives one record,
    ``ood_set == "control"``, with ``control`` = ``controls[protocol]`` (what was compared)."""
    records = []
    for (protocol, score, group), table in tables.items():
        rows = table.records(task="detection", dataset=PTB_DATASET, model=cfg.model, stage=stage, score=score, level=cfg.level,
                             protocol=protocol)
        records += [{**rows[0], "control": (controls or {}).get(protocol, "")}] if group == CONTROL_SET else rows
    return records


def evaluate_scores(scores: Mapping[str, Mapping[str, np.ndarray]], cfg: TextOEConfig, stage: str,
                    controls: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The detection records of one stage's scores ``{score: {set: array}}``: :func:`table_records` of
    :func:`detection_tables`."""
    return table_records(detection_tables(scores, cfg), cfg, stage, controls)


def detector_protocol(cfg: TextOEConfig) -> str:
    """The EWT protocol of the detector's card: :data:`DETECTOR_PROTOCOL` when it ran, else the first protocol run."""
    return DETECTOR_PROTOCOL[cfg.level] if DETECTOR_PROTOCOL[cfg.level] in cfg.protocols else cfg.protocols[0]


def _select(records: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """The records whose ``fields`` have the given values."""
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


def is_control(record: Mapping[str, Any]) -> bool:
    """Whether a detection record is a protocol control (:func:`detection_tables`), not an EWT domain or mean."""
    return record.get("ood_set") == CONTROL_SET


def control_explains(record: Mapping[str, Any], control_auroc: float) -> float | None:
    """Share of a record's AUROC above chance that its protocol's control reaches: ``(c - 0.5) / (a - 0.5)``
    (1 = the writing of rare words alone separates as well). ``None`` when ``a < 0.52``: at or below chance, or so
    near it that the ratio is noise (a = 50.4 gave 1573%)."""
    margin = record["auroc"] - 0.5
    return (control_auroc - 0.5) / margin if margin >= 0.02 else None


def _explains_cell(record: Mapping[str, Any], control: Mapping[str, Any]) -> str:
    """:func:`control_explains` as a table cell: ``"67%"``, or ``"n/a"`` near chance."""
    value = control_explains(record, control["auroc"])
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _change_cell(baseline: Mapping[str, Any], oe: Mapping[str, Any], key: str) -> str:
    """``"97.6 → 99.4"``: a metric of the baseline and the OE record, in percent."""
    return f"{percent_cell(baseline[key])} → {percent_cell(oe[key])}"


def headline_protocol(records: list[dict[str, Any]], protocols: tuple[str, ...], score: str) -> str:
    """The protocol whose control AUROC (``score``, mean over the stages) is nearest 50; the first protocol when
    no control ran. Ties go to the earlier protocol."""
    def distance(protocol: str) -> float:
        values = [abs(r["auroc"] - 0.5) for r in _select(records, ood_set=CONTROL_SET, protocol=protocol, score=score)]
        return float(np.mean(values)) if values else math.inf
    return min(protocols, key=lambda p: (distance(p), protocols.index(p)))


def table6_markdown(records: list[dict[str, Any]], level: str, protocol: str, score: str, fpr_key: str = "fpr90") -> str:
    """Table 6 layout: per domain ``baseline -> OE`` for FPR90 / AUROC / AUPR, the paper's numbers beside them.

    A domain that did not run at the requested base rate and draws is labelled with what ran (``email [1:10, 1 draw]``)."""
    base, oe = ({r["ood_set"]: r for r in _select(records, level=level, protocol=protocol, score=score, stage=stage)}
                for stage in ("baseline", "oe"))
    controls = {"baseline": base.pop(CONTROL_SET, None), "oe": oe.pop(CONTROL_SET, None)}
    paper = TABLE6.get(level, {})
    explained = all(controls.values())
    lines = [
        "| D_out^test | FPR90 ↓ ours | AUROC ↑ ours | AUPR ↑ ours | FPR90 paper | AUROC paper | AUPR paper |"
        + (" control explains |" if explained else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if explained else ""),
    ]
    for domain in base:
        cells = [_change_cell(base[domain], oe[domain], k) for k in (fpr_key, "auroc", "aupr")] if domain in oe else ["", "", ""]
        ref = paper.get(domain)
        cells += [f"{ref[k][0]} → {ref[k][1]}" for k in ("fpr90", "auroc", "aupr")] if ref else ["", "", ""]
        if explained:
            cells.append(f"{_explains_cell(base[domain], controls['baseline'])} → {_explains_cell(oe[domain], controls['oe'])}"
                         if domain in oe else "")
        note = sampling_note(base[domain])
        name = f"**{domain}**" if domain == "mean" else (f"{domain} [{note}]" if note else domain)
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def controls_markdown(records: list[dict[str, Any]], level: str, protocols: tuple[str, ...], scores: tuple[str, ...]) -> list[str]:
    """The "Protocol controls" section: per protocol and score, the control AUROC of each stage, the mean EWT
    AUROC, and the share of that AUROC above chance the control explains (:func:`control_explains`)."""
    if not _select(records, ood_set=CONTROL_SET, level=level):
        return []
    parts = ["", "## Protocol controls", "",
             "Each protocol's control is PTB test against PTB test rewritten to that protocol's writing of rare words "
             "(oe_text.lm.controls; same model, score, base rate and draws as the domains): 50 = the writing carries no "
             "signal. 'explains' = (control − 50) / (mean EWT AUROC − 50), baseline → OE.", "",
             "| protocol | score | control | control AUROC | mean EWT AUROC | explains |", "|---|---|---|---|---|---|"]
    for protocol in protocols:
        for score in scores:
            control, means = ({r["stage"]: r for r in _select(records, level=level, protocol=protocol, score=score, ood_set=name)}
                              for name in (CONTROL_SET, "mean"))
            if set(control) != {"baseline", "oe"} or set(means) != {"baseline", "oe"}:
                continue
            shares = " → ".join(_explains_cell(means[stage], control[stage]) for stage in ("baseline", "oe"))
            parts.append(f"| {protocol} | {score} | {control['baseline'].get('control', '')} | "
                         f"{_change_cell(control['baseline'], control['oe'], 'auroc')} | "
                         f"{_change_cell(means['baseline'], means['oe'], 'auroc')} | {shares} |")
    return parts


def _markdown_report(cfg: TextOEConfig, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    unit = "word" if cfg.level == "word" else "character"
    quality = meta["test_quality"]
    headline = headline_protocol(records, cfg.protocols, cfg.scores[0])
    order = (headline, *[p for p in cfg.protocols if p != headline])
    parts = [
        f"# PTB {cfg.level}-level OE: baseline → OE (Table 6 layout)",
        "",
        f"Model `{cfg.model}` preset `{cfg.model_preset}`; seq_len {meta['seq_len']}; commit `{meta['commit']}`; "
        f"{meta['hardware']}; {meta['date']}. Values are percentages, the mean over the draws. "
        + protocol_sentence([r for r in records if not is_control(r)], "PTB test windows", set_fields=("protocol",))
        + " 'paper' columns are the OE paper's Table 6 numbers (their protocol).",
        "",
        f"Headline protocol: `{headline}`"
        + (" (its control, score " + f"`{cfg.scores[0]}`, is nearest 50; see Protocol controls)." if any(map(is_control, records))
           else " (the first protocol run; no controls ran)."),
        "",
        "| model | PTB test perplexity | bits per " + unit + " | train steps | train seconds | train tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for model in ("baseline", "oe"):
        q = quality[model]
        parts.append(f"| {model} | {q['perplexity']:.2f} | {q['bits_per_token']:.3f} | {steps_cell(q)} | {meta['seconds'].get(model + '_train', 0):.0f} | {q['train_tokens_per_second']:.0f} |")
    parts += time_budget_notes(quality)
    parts += controls_markdown(records, cfg.level, order, cfg.scores)
    for protocol in order:
        for score in cfg.scores:
            parts += ["", f"## EWT protocol `{protocol}`, score `{score}`", "", table6_markdown(records, cfg.level, protocol, score)]
    return "\n".join(parts) + "\n"



class PTBLanguageModelExperiment(StagedExperiment):
    """The PTB language-model OE experiment: a baseline LM trained on PTB, then OE fine-tuning of that model on
    PTB + WikiText-2, each scored on PTB test and the EWT domains; the report is Table 6, the detector
    (:meth:`detector`) the OE model with its threshold."""

    config: TextOEConfig
    data: TextOEData

    def stages(self) -> list[Stage]:
        cfg = self.config
        return [cfg.stage("baseline", "baseline"), cfg.stage("oe", "oe", init="baseline")]

    def load_data(self, data_dir: str | Path | None) -> TextOEData:
        cfg = self.config
        return load_text_oe_data(cfg.level, data_dir, protocol=cfg.protocols, seq_len=cfg.seq_len)

    @functools.cached_property
    def eval_sets(self) -> dict[str, Any]:
        """:func:`_eval_sets` of the loaded data."""
        return _eval_sets(self.data, self.config)

    def build_model(self, stage: Stage) -> torch.nn.Module:
        return build_language_model(self.config.model, len(self.data.vocab), self.config.model_preset)

    def training_arguments(self, stage: Stage, output_dir: Path) -> OETrainingArguments:
        """The stage's arguments: PTB validation and a checkpoint every ``eval_steps`` (``oe_eval_steps``, when set,
        for the OE stage), the best one by PTB validation loss loaded at the end."""
        cfg = self.config
        eval_steps = {"oe": cfg.oe_eval_steps}.get(stage.name) or cfg.eval_steps
        return OETrainingArguments(
            **shared_training_arguments(stage, output_dir, cfg),
            optim=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers >= 5
            eval_strategy="steps",
            eval_steps=eval_steps,
            save_steps=eval_steps,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            logging_steps=max(1, min(50, eval_steps // 2)),
            bf16=cfg.bf16 and torch.cuda.is_available(),
            oe_loss=cfg.oe_loss,
            oe_batch_ratio=1.0,
            dataloader_num_workers=0,
        )

    def make_trainer(self, stage: Stage, model: torch.nn.Module, output_dir: Path) -> OETrainer:
        """PTB train windows (plus WikiText-2 outliers in the OE stage); PTB validation picks the checkpoint."""
        cfg, data = self.config, self.data
        return OETrainer(
            model=model,
            args=self.training_arguments(stage, output_dir),
            train_dataset=_first(data.ptb_train, cfg.train_windows).with_format("torch"),
            eval_dataset=_first(data.ptb_valid, cfg.valid_windows).with_format("torch"),
            outlier_dataset=data.wikitext_train.with_format("torch") if stage.uses_outliers else None,
            callbacks=stage.callbacks(),
        )

    def evaluate(self, stage: Stage, model: torch.nn.Module, trainer: OETrainer) -> StageResult:
        """Scores of every evaluation set (the stage's arrays), ``quality`` (PTB test perplexity and bits per token
        from the token-weighted ``nll``, training throughput and steps) and the detection results
        (:meth:`detection_result`)."""
        cfg, sets = self.config, self.eval_sets
        scores = score_model(trainer, sets, cfg.scores, desc=f"scoring {stage.name}")
        nll = _token_weighted_nll(scores["nll"]["ptb/test"], sets["ptb/test"]) if "nll" in cfg.scores else float("nan")
        quality = {
            "perplexity": math.exp(nll),
            "bits_per_token": nll / math.log(2),
            "nll_nats": nll,
            "train_tokens_per_second": train_log(trainer).get("train_samples_per_second", 0.0) * self.data.seq_len,
            "best_valid_loss": float(trainer.state.best_metric) if trainer.state.best_metric is not None else float("nan"),
            **training_steps_report(trainer),
        }
        return self.detection_result(stage.name, scores, quality)

    def detection_result(self, stage: str, scores: Mapping[str, Mapping[str, np.ndarray]],
                         quality: dict[str, Any] | None = None) -> StageResult:
        """A stage's result from its scores ``{score: {set: array}}`` (its arrays): ``state["records"]``
        (:func:`table_records`; a control's record says what was compared, from ``data.stats["controls"]``),
        ``state["card_evaluation"]`` (the ``nll`` table under :func:`detector_protocol` as ``OODTable.to_dict()``, for
        the detector's card; ``None`` without ``nll``) and ``state["quality"]``."""
        cfg = self.config
        tables = detection_tables(scores, cfg)
        controls = {p: c["description"] for p, c in self.data.stats.get("controls", {}).items()}
        protocol = detector_protocol(cfg)
        card = tables.get((protocol, "nll", "ewt"))
        if card is not None:
            card.meta.update(score="nll", protocol=protocol, examples=f"PTB test windows against EWT {protocol} windows of "
                             f"{self.data.seq_len} {cfg.level} tokens (the recipe's results.json)")
        return StageResult({"quality": quality or {}, "records": table_records(tables, cfg, stage, controls),
                            "card_evaluation": None if card is None else card.to_dict()}, dict(scores))

    def save_model(self, stage: Stage, model: torch.nn.Module, trainer: OETrainer, output_dir: Path) -> Path:
        """safetensors + config + the vocabulary; no pickled training arguments (``Trainer.save_model`` adds them)."""
        folder = output_dir / f"{stage.name}{self.model_dir_suffix}"
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(folder)
        self.data.vocab.save(folder / "vocab.json")
        return folder

    def report(self, results: Mapping[str, StageResult], models: StageModels, seconds: dict[str, float],
               output_dir: Path, is_main: bool) -> dict[str, Any]:
        """``results.json`` / ``results.md`` (Table 6), ROC and histogram PNGs of the first score."""
        cfg, data, sets = self.config, self.data, self.eval_sets
        records = all_records(results)
        quality = {name: result.state["quality"] for name, result in results.items()}
        meta = run_meta(seconds, config=dataclasses.asdict(cfg), seq_len=data.seq_len, test_quality=quality,
                        n_windows={name: len(ds) for name, ds in sets.items()}, data_stats=data.stats)
        result: dict[str, Any] = {"records": records, "meta": meta}
        if not is_main:
            return result
        paths = write_results(output_dir, records, meta, _markdown_report(cfg, records, meta))
        for stage, stage_result in results.items():
            by_set = stage_result.arrays[cfg.scores[0]]
            for protocol in cfg.protocols:
                title = f"PTB {cfg.level} {stage}, EWT {protocol}, score {cfg.scores[0]}"
                paths.update(plot_roc_and_histogram(by_set["ptb/test"], _protocol_sets(by_set, protocol), output_dir,
                                                    f"{stage}_{protocol}", title))
        result["paths"] = paths
        return result

    def detector(self, results: Mapping[str, StageResult], models: StageModels) -> OODDetector:
        """The OE language model as an :class:`oe_common.deployment.detector.OODDetector` (``oe score --model FOLDER``).

        * preprocessing: the PTB vocabulary, normaliser :data:`DETECTOR_NORMALIZER` (raw English read the way the
          evaluation read EWT: ``ptb`` at word level, ``spelled`` at char level), windows of ``data.seq_len`` tokens;
        * score ``nll``: mean NLL per predicted token of a sentence (``<eos>`` before and after it);
        * threshold: flags :data:`DETECTOR_TARGET_FPR` of the PTB VALIDATION sentences (held out from training; it
          only chose the checkpoint), read as in training (:data:`PTB_LINE_NORMALIZER`). With ``valid_windows`` set
          (the CPU presets) only the complete sentences inside those windows are used, the validation data the run
          itself used;
        * evaluation on the card: the ``oe`` stage's ``nll`` table under :func:`detector_protocol` (the protocol the
          normaliser reproduces), measured on windows of ``seq_len`` tokens, as the card says.
        """
        cfg, data, model = self.config, self.data, models["oe"]
        protocol = detector_protocol(cfg)
        training = self.provenance(in_distribution_dataset="ptb" if cfg.level == "word" else "ptb-char", outlier_dataset="wikitext-2",
                                   test_anomaly_datasets=[f"ewt/{protocol}/{d}" for d in data.ewt.get(protocol, {})],
                                   recipe=f"recipes/ptb_{cfg.level}_oe.py")

        def nll_detector(normalizer: str, **card: Any) -> OODDetector:
            preprocessing = TextPreprocessing(data.vocab, normalizer=normalizer, seq_len=data.seq_len)
            return OODDetector(model, preprocessing, score="nll", device=next(model.parameters()).device,
                               batch_size=cfg.eval_batch_size, progress=False, **card)

        detector = nll_detector(DETECTOR_NORMALIZER[cfg.level], training=training, evaluation=results["oe"].state.get("card_evaluation"))
        valid = data.streams["ptb/valid"]
        if cfg.valid_windows is not None:  # windows are consecutive chunks of seq_len + 1 ids (oe_text.lm.windows)
            valid = valid[: cfg.valid_windows * (data.seq_len + 1)]
        in_scores = nll_detector(PTB_LINE_NORMALIZER[cfg.level]).score(stream_lines(valid, data.vocab))
        detector.fit_threshold_from_scores(in_scores, target_fpr=DETECTOR_TARGET_FPR)
        detector.threshold_info["data"] = (f"PTB validation sentences, one example per line, read as in training "
                                           f"(normaliser {PTB_LINE_NORMALIZER[cfg.level]!r})")
        return detector


def run_text_oe(cfg: TextOEConfig, output_dir: str | Path, data_dir: str | Path | None = None, data: TextOEData | None = None,
                overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run baseline training, OE fine-tuning and the evaluation of both; write results, plots and models.

    ``output_dir`` must be new or empty, unless ``overwrite`` (its contents are deleted first) or ``resume`` (an
    interrupted run there continues: finished stages are loaded, the running one continues from its last checkpoint);
    see :func:`oe_common.experiments.experiment.run_experiment`. ``data``: an already loaded :class:`TextOEData` (tests).

    Returns ``{"records": [...], "meta": {...}, "paths": {...}}`` (also on non-main processes, without paths).
    """
    return run_experiment(PTBLanguageModelExperiment(cfg), output_dir, data_dir=data_dir, data=data, overwrite=overwrite, resume=resume)


def stream_lines(stream: np.ndarray, vocab: Any) -> list[str]:
    """The lines of a corpus stream (ids with ``<eos>`` after each line) as raw text, one str per line.

    Word level: the tokens joined by spaces (PTB's own line). Char level: the characters joined, with the word
    separator ``_`` turned back into spaces, i.e. the PTB word line it was spelled from.
    """
    from .normalize import WORD_SEP

    ids = np.asarray(stream)
    ends = np.flatnonzero(ids == vocab.eos_id)
    lines, start = [], 0
    for end in ends:
        tokens = vocab.decode(ids[start:end])
        start = end + 1
        if tokens:
            lines.append(" ".join(tokens) if vocab.level == "word" else "".join(tokens).replace(WORD_SEP, " "))
    return lines

