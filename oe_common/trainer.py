"""``OETrainer``: Outlier Exposure as a ``transformers.Trainer`` subclass.

Details: docs/modules.md, section ``oe_common.trainer``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from . import metrics as oe_metrics
from .batch_padding import LABEL_PAD_VALUE, pad_to_length, tokenizer_pad_values
from .callbacks import TimeBudgetCallback
from .files import make_readable
from .losses import energy_oe_loss, joint_token_oe_loss, oe_uniform_loss
from .outlier_stream import OutlierStream, is_streaming
from .scores import LOGIT_SCORE_NAMES, SCORE_NAMES, example_scores, shift_labels

__all__ = ["OETrainingArguments", "OETrainer", "OE_LOSSES", "SCORE_NAMES", "OUTLIER_STREAM_STATE_NAME"]

logger = logging.get_logger(__name__)

#: Accepted values of ``OETrainingArguments.oe_loss``.
OE_LOSSES = ("uniform", "energy")

_LABEL_KEYS = ("labels", "label", "label_ids")

#: File in every checkpoint folder that records where the outlier stream stood (read when resuming).
OUTLIER_STREAM_STATE_NAME = "oe_outlier_stream.json"
#: File in a checkpoint folder that records a :class:`TimeBudgetCallback`'s plan and seconds used (read when resuming).
TIME_BUDGET_STATE_NAME = "oe_time_budget.json"


def _shapes(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in batch.items()}


class _KeepKeysCollator:
    """Drops the columns ``model.forward`` does not take, then collates (like the Trainer's RemoveColumnsCollator;
    a class, so that DataLoader workers can pickle it)."""

    def __init__(self, collator: Any, keys: set[str]):
        self.collator, self.keys = collator, keys

    def __call__(self, features: list[Any]) -> Any:
        if features and isinstance(features[0], Mapping):
            features = [{k: v for k, v in f.items() if k in self.keys} for f in features]
        return self.collator(features)


def _validate_oe_fields(args: "OETrainingArguments") -> None:
    if not (isinstance(args.oe_lambda, (int, float)) and math.isfinite(args.oe_lambda) and args.oe_lambda >= 0):
        raise ValueError(f"oe_lambda must be a finite number >= 0, got {args.oe_lambda!r}")
    if args.oe_loss not in OE_LOSSES:
        raise ValueError(f"oe_loss must be one of {OE_LOSSES}, got {args.oe_loss!r}")
    if args.oe_batch_size is not None and args.oe_batch_size < 1:
        raise ValueError(f"oe_batch_size must be >= 1 (or None for per_device_train_batch_size * oe_batch_ratio), got {args.oe_batch_size}")
    if not (args.oe_batch_ratio > 0 and math.isfinite(args.oe_batch_ratio)):
        raise ValueError(f"oe_batch_ratio must be > 0, got {args.oe_batch_ratio!r}")
    if args.oe_shuffle_buffer_size < 1:
        raise ValueError(f"oe_shuffle_buffer_size must be >= 1, got {args.oe_shuffle_buffer_size}")


@dataclass
class OETrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the Outlier Exposure settings (all prefixed ``oe_``).

    The outlier batch size per device is ``oe_batch_size`` if set, else
    ``max(1, round(per_device_train_batch_size * oe_batch_ratio))``: use ``oe_batch_ratio=2`` for the paper's
    vision setting (128 in-distribution + 256 outliers per step), 1 for language models (the default).
    """

    oe_lambda: float = field(default=0.5, metadata={"help": "Weight of the OE term (paper: 0.5 vision and LMs, 1.0 text classifiers)."})
    oe_loss: str = field(default="uniform", metadata={"help": "OE term: 'uniform' (cross-entropy to uniform) or 'energy' (Liu et al. 2020)."})
    oe_energy_m_in: float = field(default=-25.0, metadata={"help": "Energy OE: in-distribution energies are pushed below this margin."})
    oe_energy_m_out: float = field(default=-7.0, metadata={"help": "Energy OE: outlier energies are pushed above this margin."})
    oe_batch_size: Optional[int] = field(default=None, metadata={"help": "Outlier batch size per device (default: per_device_train_batch_size * oe_batch_ratio)."})
    oe_batch_ratio: float = field(default=1.0, metadata={"help": "Outliers per in-distribution example when oe_batch_size is None (2 for the paper's vision setting, 1 for LMs)."})
    oe_concat_forward: bool = field(
        default=True,
        metadata={"help": "One forward pass over the concatenated in+outlier batch (BatchNorm sees both); batches of different "
                          "lengths are padded to the longer one with the tokenizer's pad values; two passes when that is not possible."},
    )
    oe_seed: Optional[int] = field(default=None, metadata={"help": "Seed of the outlier stream's shuffling (default: seed)."})
    oe_shuffle_buffer_size: int = field(default=1000, metadata={"help": "Shuffle buffer (examples) for streaming outlier datasets."})

    def __post_init__(self):
        super().__post_init__()
        _validate_oe_fields(self)

    @property
    def outlier_batch_size(self) -> int:
        """The per-device outlier batch size actually used."""
        if self.oe_batch_size is not None:
            return int(self.oe_batch_size)
        return max(1, int(round(self.per_device_train_batch_size * self.oe_batch_ratio)))

    @property
    def outlier_seed(self) -> int:
        """The seed of the outlier stream's shuffling actually used: ``oe_seed`` if set, else ``seed``."""
        return self.seed if self.oe_seed is None else self.oe_seed


class OETrainer(Trainer):
    """A ``transformers.Trainer`` that adds ``oe_lambda * L_OE`` on a stream of outlier batches.

    Args (beyond ``Trainer``'s):
        outlier_dataset: ``D_out^OE``: a ``datasets.Dataset``, a streaming ``datasets.IterableDataset`` or a torch
            ``Dataset``; ``None`` gives a plain ``Trainer``. It is cycled forever (independently of the
            in-distribution epochs), shuffled with ``oe_seed`` (reshuffled at each wrap) and sharded across
            processes so that no two processes see the same outlier example.
        outlier_data_collator: collates outlier examples; default: ``data_collator``. A custom collator receives
            the raw examples (all columns); keys of its output that ``model.forward`` does not accept are dropped,
            and so are labels (outliers have none).

    Raises at construction: ``args`` is not an :class:`OETrainingArguments` (with outliers), a bad ``oe_*``
    setting, a streaming train or outlier dataset without ``max_steps``, an outlier dataset (or a process's shard)
    that yields nothing, a first outlier batch that is not a dict or has token ids outside the model's vocabulary.
    """

    #: Score names that :meth:`compute_scores` / :meth:`evaluate_ood` accept (a subclass with its own
    #: :meth:`score_batch_many` sets its own).
    score_names: tuple[str, ...] = LOGIT_SCORE_NAMES  # feature scores (mahalanobis) need fitting: OODDetector
    #: The score of :meth:`score_batch`, :meth:`compute_scores` and :meth:`evaluate_ood` when none is named
    #: (a subclass for other models sets its own, e.g. bits per dimension for density models).
    default_score: str = "msp"

    def __init__(self, *args: Any, outlier_dataset: Any = None, outlier_data_collator: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.outlier_dataset = outlier_dataset
        self.outlier_data_collator = outlier_data_collator
        self._outlier_stream: OutlierStream | None = None
        self._oe_log_sums: torch.Tensor | None = None  # [sum loss_in, sum loss_oe, micro-batches] since the last log
        self._oe_forward_keys = self._forward_parameter_names()
        # pad values of the tokenizer, to pad the in-distribution and outlier batches to one length (one forward pass)
        tokenizer = self.processing_class if self.processing_class is not None else getattr(self.data_collator, "tokenizer", None)
        self._oe_padding = tokenizer_pad_values(tokenizer) if tokenizer is not None else None
        self._warned_no_concat = False
        self._outlier_skip_examples = 0  # set when resuming from a checkpoint

        if self.train_dataset is not None and is_streaming(self.train_dataset) and self.args.max_steps <= 0:
            raise ValueError("the train dataset is streaming (no length): set max_steps > 0 in the training arguments")
        if outlier_dataset is None:
            self._oe_in_loss_func = None
            return

        if not isinstance(self.args, OETrainingArguments):
            raise TypeError(f"OETrainer with an outlier_dataset needs OETrainingArguments, got {type(self.args).__name__}")
        _validate_oe_fields(self.args)
        if is_streaming(outlier_dataset) and self.args.max_steps <= 0:
            raise ValueError(
                "the outlier dataset is streaming (no length): set max_steps > 0 in the training arguments "
                "so that the length of the run does not depend on it"
            )
        # Every term of the loss is a per-micro-batch mean, and the Trainer divides it by the number of
        # accumulation steps: with equal micro-batches, k accumulated steps of batch b == one step of batch k*b.
        # A user `compute_loss_func` is used for the in-distribution term (see `in_distribution_loss`), but is
        # hidden from the Trainer, which would otherwise skip that division.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False  # read by transformers 5.23; 5.17 decides from the two settings above
        self._oe_in_loss_func, self.compute_loss_func = self.compute_loss_func, None
        self._check_first_outlier_batch()

    # ---- the outlier stream -------------------------------------------------------------------------------
    def _forward_parameter_names(self) -> set[str] | None:
        """Named parameters of the (unwrapped) model's forward; ``None`` = do not filter batch keys."""
        if not self.args.remove_unused_columns:
            return None
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        params = inspect.signature(model.forward).parameters.values()
        return {p.name for p in params if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}

    def _model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` without labels and without keys that ``model.forward`` does not accept."""
        keys = self._oe_forward_keys
        return {k: v for k, v in batch.items() if k not in _LABEL_KEYS and k not in self.label_names and (keys is None or k in keys)}

    def _outlier_collate_fn(self):
        if self.outlier_data_collator is not None:
            return self.outlier_data_collator
        if self._oe_forward_keys is None:
            return self.data_collator
        return _KeepKeysCollator(self.data_collator, self._oe_forward_keys)

    def _make_outlier_stream(self, num_workers: int | None = None, skip_examples: int = 0) -> OutlierStream:
        args = self.args
        return OutlierStream(
            self.outlier_dataset,
            batch_size=args.outlier_batch_size,
            collate_fn=self._outlier_collate_fn(),
            seed=args.outlier_seed,
            rank=args.process_index,
            world_size=args.world_size,
            shuffle_buffer_size=args.oe_shuffle_buffer_size,
            num_workers=args.dataloader_num_workers if num_workers is None else num_workers,
            pin_memory=args.dataloader_pin_memory and args.device.type != "cpu",
            skip_examples=skip_examples,
        )

    @property
    def outlier_stream(self) -> OutlierStream | None:
        """This process's outlier stream (created at the first training step); ``None`` without outliers."""
        if self._outlier_stream is None and self.outlier_dataset is not None:
            self._outlier_stream = self._make_outlier_stream(skip_examples=self._outlier_skip_examples)
        return self._outlier_stream

    # ---- checkpoints: the outlier stream's position --------------------------------------------------------
    def _outlier_stream_state(self) -> dict[str, Any]:
        stream = self._outlier_stream
        return {
            "examples_drawn_per_process": stream.examples_drawn if stream is not None else self._outlier_skip_examples,
            "oe_seed": self.args.outlier_seed,
            "world_size": self.args.world_size,
        }

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model`` (also what every checkpoint saves the model with); the safetensors files it writes
        get the permissions of a new file (safetensors writes them ``0600``)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and folder is not None and os.path.isdir(folder):
            make_readable(folder)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint plus :data:`OUTLIER_STREAM_STATE_NAME` (the outlier stream's position), so that
        ``train(resume_from_checkpoint=...)`` continues the outlier stream instead of restarting it."""
        super()._save_checkpoint(model, trial)
        if self.outlier_dataset is not None:
            self._write_checkpoint_json(trial, OUTLIER_STREAM_STATE_NAME, self._outlier_stream_state())
        budget = self._time_budget()
        if budget is not None:
            self._write_checkpoint_json(trial, TIME_BUDGET_STATE_NAME, budget.resume_state())

    def _time_budget(self) -> TimeBudgetCallback | None:
        return next((c for c in self.callback_handler.callbacks if isinstance(c, TimeBudgetCallback)), None)

    def _restore_time_budget(self, checkpoint: str) -> None:
        """Give the run's :class:`TimeBudgetCallback` the plan and seconds saved in ``checkpoint`` (see :meth:`train`)."""
        budget = self._time_budget()
        if budget is None:
            return
        saved = self._read_checkpoint_json(checkpoint, TIME_BUDGET_STATE_NAME)
        if saved is None:
            logger.warning(f"OETrainer: {checkpoint} has no {TIME_BUDGET_STATE_NAME} (saved without a time budget): the "
                           "budget counts from now and the schedule is planned afresh")
            return
        budget.load_resume_state(saved)

    def _write_checkpoint_json(self, trial: Any, name: str, value: Any) -> None:
        """Write ``value`` as ``name`` into the checkpoint folder just saved (main process; subclasses add their own
        resume state this way)."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, name), "w") as handle:
                json.dump(value, handle, indent=2)

    @staticmethod
    def _read_checkpoint_json(checkpoint: str, name: str) -> Any:
        """The value :meth:`_write_checkpoint_json` wrote as ``name`` into ``checkpoint``; ``None`` when the file is
        not there (a checkpoint saved without that state)."""
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            return json.load(handle)

    def _restore_outlier_stream(self, checkpoint: str) -> None:
        """Position the outlier stream where it stood when ``checkpoint`` was saved (see :meth:`train`)."""
        self._outlier_stream, self._outlier_skip_examples = None, 0
        saved = self._read_checkpoint_json(checkpoint, OUTLIER_STREAM_STATE_NAME)
        if saved is None:
            logger.warning(
                f"OETrainer: {checkpoint} has no {OUTLIER_STREAM_STATE_NAME} (saved without outliers, or by another "
                "trainer): the outlier stream starts from its first batch"
            )
            return
        now = self._outlier_stream_state()
        if (saved.get("oe_seed"), saved.get("world_size")) != (now["oe_seed"], now["world_size"]):
            logger.warning(
                f"OETrainer: the checkpoint's outlier stream had oe_seed={saved.get('oe_seed')}, "
                f"world_size={saved.get('world_size')}; this run has oe_seed={now['oe_seed']}, "
                f"world_size={now['world_size']}, so its position does not carry over: the outlier stream starts "
                "from its first batch"
            )
            return
        self._outlier_skip_examples = int(saved["examples_drawn_per_process"])

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval: list[str] | None = None, **kwargs: Any):
        """``Trainer.train``; when resuming, the outlier stream and a :class:`TimeBudgetCallback`'s plan and seconds
        used also continue from the checkpoint.

        Every process skips the outlier examples it had drawn before the checkpoint (map-style sets jump there at
        no cost; streaming sets read past them), so a resumed run sees the same outlier batches as an
        uninterrupted one (given the same ``oe_seed`` and number of processes; otherwise a warning is logged and the
        stream restarts).
        """
        if resume_from_checkpoint not in (None, False):
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is not None:  # Trainer raises its own error for a missing checkpoint
                if self.outlier_dataset is not None:
                    self._restore_outlier_stream(str(checkpoint))
                self._restore_time_budget(str(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer._run_epoch``, or nothing when the state (resumed from a checkpoint saved at the last step, e.g. a
        run interrupted while scoring) is already at ``max_steps``: Trainer would run one step past it before checking."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """``Trainer``'s warnings after loading a checkpoint (resume, best model), minus tied weights.

        A checkpoint stores a tied decoder weight once (as the embedding), so ``load_state_dict(strict=False)``
        reports it missing although it shares its tensor with a loaded one; ``Trainer`` then warns "There were
        missing keys" for every tied causal LM (GPT-2 included). A missing key is dropped here only when the
        model's parameter under that name IS the tensor of a parameter that was loaded; anything else still warns.
        """
        missing = list(getattr(load_result, "missing_keys", None) or [])
        if missing:
            model = self.accelerator.unwrap_model(self.model)
            names_by_tensor: dict[int, set[str]] = {}
            for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
                names_by_tensor.setdefault(id(tensor), set()).add(name)
            missing_set = set(missing)
            aliases = {name: names for names in names_by_tensor.values() for name in names}
            still_missing = [key for key in missing if not (aliases.get(key, set()) - missing_set)]
            if len(still_missing) != len(missing):
                load_result = load_result._replace(missing_keys=still_missing) if hasattr(load_result, "_replace") else load_result
        super()._issue_warnings_after_load(load_result)

    def next_outlier_batch(self) -> dict[str, Any]:
        """The next outlier batch of this process, as model inputs on the training device."""
        batch = next(self.outlier_stream)
        if not isinstance(batch, Mapping):
            raise TypeError(f"the outlier collator must return a dict of model inputs, got {type(batch).__name__}")
        return self._prepare_inputs(self._model_inputs(batch))

    def _input_vocab_size(self) -> int | None:
        model = self.accelerator.unwrap_model(self.model)
        sizes = []
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            try:
                module = getattr(model, getter)()
            except (AttributeError, NotImplementedError):
                module = None
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                sizes.append(int(weight.shape[0]))
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if isinstance(vocab, int) and vocab > 0:
            sizes.append(vocab)
        return min(sizes) if sizes else None

    def _check_first_outlier_batch(self) -> None:
        """Draw one batch now (from a throw-away stream) so that bad outlier data fails before training."""
        batch = next(self._make_outlier_stream(num_workers=0))
        if not isinstance(batch, Mapping):
            raise TypeError(f"the outlier collator must return a dict of model inputs, got {type(batch).__name__}")
        inputs = self._model_inputs(batch)
        if not inputs:
            raise ValueError(
                f"the first outlier batch has no model input (keys: {sorted(batch)}; "
                f"accepted by model.forward: {sorted(self._oe_forward_keys or [])}); check the outlier dataset's columns"
            )
        ids = inputs.get("input_ids")
        vocab = self._input_vocab_size()
        if isinstance(ids, torch.Tensor) and ids.numel() and vocab is not None:
            low, high = int(ids.min()), int(ids.max())
            if high >= vocab or low < 0:
                raise ValueError(
                    f"outlier token ids span [{low}, {high}] but the model's vocabulary has {vocab} entries: the outlier "
                    "set was tokenized with another vocabulary (map it to the in-distribution vocabulary, e.g. unknown "
                    "words to <unk>)"
                )

    # ---- hooks ---------------------------------------------------------------------------------------------
    def is_causal_lm(self, model: nn.Module) -> bool:
        """Whether token-level logits at position t predict token t+1 (losses and scores are then shifted).

        Default: true for ``transformers`` causal LMs (``*ForCausalLM``, ``*LMHeadModel``, ``loss_type ==
        "ForCausalLM"``). Override for a custom language model.
        """
        model = self.accelerator.unwrap_model(model)
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        name = type(model).__name__
        return getattr(model, "loss_type", None) == "ForCausalLM" or name.endswith(("ForCausalLM", "LMHeadModel"))

    def logits_and_mask(self, outputs: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of a forward pass and the mask of real positions.

        Default: ``outputs["logits"]`` (tuple outputs: the first tensor of 2+ dims); for token-level logits ``(B, L, V)``
        the mask is ``batch["attention_mask"]`` (``None`` when absent: every position is real); ``None`` for
        ``(B, K)`` classifier logits. Override when your model returns its logits elsewhere.
        """
        if isinstance(outputs, Mapping) and "logits" in outputs:
            logits = outputs["logits"]
        elif isinstance(outputs, torch.Tensor):
            logits = outputs
        elif isinstance(outputs, (tuple, list)) and any(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in outputs):
            logits = next(t for t in outputs if isinstance(t, torch.Tensor) and t.dim() >= 2)  # skips a leading loss
        else:
            raise TypeError(f"cannot find logits in the model's outputs ({type(outputs).__name__}); override OETrainer.logits_and_mask")
        mask = None
        attention_mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if logits.dim() == 3 and isinstance(attention_mask, torch.Tensor) and tuple(attention_mask.shape) == tuple(logits.shape[:2]):
            mask = attention_mask.bool()
        return logits, mask

    def in_distribution_loss(self, model: nn.Module, outputs: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
        """``L_in`` for one in-distribution micro-batch, as a mean over its examples (or tokens).

        ``outputs`` are the model's outputs for ``inputs``, or, after a concatenated forward pass, a
        ``ModelOutput`` holding only the in-distribution ``logits`` (the model then computed no loss). Order of
        preference: the ``compute_loss_func`` given to the trainer, the label smoother
        (``label_smoothing_factor``), the loss the model returned, and finally cross-entropy from the logits
        (shifted for causal LMs; ``config.problem_type`` decides for sequence classifiers as in ``transformers``).
        """
        labels = inputs.get("labels")
        if self._oe_in_loss_func is not None:
            return self._oe_in_loss_func(outputs, labels, num_items_in_batch=None)
        if self.label_smoother is not None and labels is not None:
            return self.label_smoother(outputs, labels, shift_labels=self.is_causal_lm(model))
        if isinstance(outputs, Mapping) and outputs.get("loss") is not None:
            return outputs["loss"]
        if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor) and outputs[0].dim() == 0:
            return outputs[0]  # tuple outputs (return_dict=False) start with the loss
        if labels is None:
            raise ValueError("the in-distribution batch has no 'labels' and the model returned no loss")
        logits, _ = self.logits_and_mask(outputs, inputs)
        return self._cross_entropy(model, logits, labels)

    def _aligned_token_labels(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        """Token labels aligned with the logits: for causal LMs position t predicts token t+1, so the labels are shifted
        (the last position gets -100) rather than the logits sliced, which would copy them and zero-fill a full-size
        gradient."""
        return shift_labels(labels) if self.is_causal_lm(model) else labels

    def _fusable_token_losses(self, logits: torch.Tensor, inputs: Mapping[str, Any], n_in: int) -> bool:
        """Whether the OE step's two terms are the defaults on token-level logits, so that
        :func:`~oe_common.losses.joint_token_oe_loss` computes them together (same values, one pass)."""
        labels = inputs.get("labels")
        cls = type(self)
        return (
            self.args.oe_loss == "uniform"
            and logits.dim() == 3
            and isinstance(labels, torch.Tensor)
            and not labels.is_floating_point()
            and tuple(labels.shape) == (n_in, logits.shape[1])
            and self._oe_in_loss_func is None
            and self.label_smoother is None
            and cls.in_distribution_loss is OETrainer.in_distribution_loss
            and cls._cross_entropy is OETrainer._cross_entropy
            and cls.oe_term is OETrainer.oe_term
        )

    def _cross_entropy(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() >= 3:  # token level
            labels = self._aligned_token_labels(model, labels)
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=-100)
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        problem = getattr(config, "problem_type", None)
        if problem is None:
            if logits.shape[-1] == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return F.mse_loss(logits.float().squeeze(), labels.float().squeeze())
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=-100)

    def outlier_logits(self, model: nn.Module, outlier_batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward pass over an outlier batch on its own: ``(logits, mask)`` as :meth:`logits_and_mask` returns.

        Used when ``oe_concat_forward=False`` or when the two batches cannot be concatenated. Override it (and set
        ``oe_concat_forward=False``) for a model whose outlier pass differs from its normal one.
        """
        return self.logits_and_mask(model(**outlier_batch), outlier_batch)

    def oe_term(
        self,
        out_logits: torch.Tensor,
        out_mask: torch.Tensor | None,
        in_logits: torch.Tensor,
        in_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``L_OE`` (before ``oe_lambda``): ``oe_uniform_loss(out)`` or ``energy_oe_loss(in, out)``, in float32."""
        if self.args.oe_loss == "energy":
            return energy_oe_loss(
                in_logits.float(), out_logits.float(), self.args.oe_energy_m_in, self.args.oe_energy_m_out, in_mask=in_mask, out_mask=out_mask
            )
        return oe_uniform_loss(out_logits.float(), out_mask)

    # ---- the loss ------------------------------------------------------------------------------------------
    @staticmethod
    def _concatenate(a: Mapping[str, Any], b: Mapping[str, Any], padding: tuple[Mapping[str, int], str] | None = None) -> dict[str, torch.Tensor] | None:
        """``a`` and ``b`` stacked along the batch dim, or ``None`` if their keys, dtypes or shapes differ.

        With ``padding`` (``(pad values, side)``, :func:`~oe_common.batch_padding.tokenizer_pad_values`), batches whose
        ``(B, L)`` tensors differ in ``L`` are first padded to the longer ``L``
        (:func:`~oe_common.batch_padding.pad_to_length`), so the joint batch is padded to its longest text."""
        if set(a) != set(b) or not a:
            return None
        if padding is not None:
            lengths = [x.shape[1] for x in (*a.values(), *b.values()) if isinstance(x, torch.Tensor) and x.dim() >= 2]
            if lengths and min(lengths) != max(lengths):
                a, b = pad_to_length(a, max(lengths), *padding), pad_to_length(b, max(lengths), *padding)
                if a is None or b is None:
                    return None
        joint = {}
        for key, x in a.items():
            y = b[key]
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.dim() == 0:
                return None
            if x.shape[1:] != y.shape[1:] or x.dtype != y.dtype:
                return None
            joint[key] = torch.cat([x, y])
        return joint

    def _in_distribution_forward(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[Any, torch.Tensor]:
        """Forward pass over the in-distribution batch alone: ``(outputs, L_in)``."""
        forward_inputs = inputs
        if self._oe_in_loss_func is not None or self.label_smoother is not None:
            forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}  # the loss is computed outside
        outputs = model(**forward_inputs)
        return outputs, self.in_distribution_loss(model, outputs, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """In-distribution loss + ``oe_lambda * L_OE`` while training with outliers. In evaluation (``eval_loss``)
        the in-distribution loss alone; without outliers exactly ``Trainer.compute_loss``."""
        if self.outlier_dataset is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training:
            outputs, loss = self._in_distribution_forward(model, inputs)
            return (loss, outputs) if return_outputs else loss

        outlier_batch = self.next_outlier_batch()
        in_model_inputs = self._model_inputs(inputs)
        joint = self._concatenate(in_model_inputs, outlier_batch, self._oe_padding) if self.args.oe_concat_forward else None
        if joint is not None:
            inputs = self._pad_token_labels(inputs, joint)
        if self.args.oe_concat_forward and joint is None and not self._warned_no_concat:
            self._warned_no_concat = True
            logger.warning(
                f"OETrainer: in-distribution batch {_shapes(in_model_inputs)} and outlier batch {_shapes(outlier_batch)} "
                "cannot be concatenated (different keys, dtypes or shapes past the batch dim); using two forward passes. "
                "Pad both to the same length (or give the trainer a tokenizer with a pad token and batches with an "
                "attention_mask) for one joint pass, or set oe_concat_forward=False to silence this."
            )

        loss = None
        if joint is not None:
            n_in = next(iter(in_model_inputs.values())).shape[0]
            logits, mask = self.logits_and_mask(model(**joint), joint)
            if self._fusable_token_losses(logits, inputs, n_in):
                # language model, default losses: both terms and their gradient in one pass over the joint logits
                labels = self._aligned_token_labels(model, inputs["labels"])
                out_mask = None if mask is None else mask[n_in:]
                loss, loss_in, loss_oe = joint_token_oe_loss(logits.float(), labels, out_mask, self.args.oe_lambda)
                outputs = ModelOutput(logits=logits[:n_in])
            else:
                # split, not two slices: the backward then concatenates two gradients instead of zero-filling and
                # adding two full-size ones
                in_logits, out_logits = logits.split([n_in, logits.shape[0] - n_in])
                in_mask, out_mask = (None, None) if mask is None else mask.split([n_in, mask.shape[0] - n_in])
                outputs = ModelOutput(logits=in_logits)
                loss_in = self.in_distribution_loss(model, outputs, inputs)
        else:
            outputs, loss_in = self._in_distribution_forward(model, inputs)
            in_logits, in_mask = self.logits_and_mask(outputs, inputs)
            out_logits, out_mask = self.outlier_logits(model, outlier_batch)

        if loss is None:
            loss_oe = self.oe_term(out_logits, out_mask, in_logits, in_mask)
            loss = loss_in + self.args.oe_lambda * loss_oe

        record = torch.stack([loss_in.detach().float(), loss_oe.detach().float(), torch.ones((), device=loss_in.device)])
        self._oe_log_sums = record if self._oe_log_sums is None else self._oe_log_sums + record
        return (loss, outputs) if return_outputs else loss

    def _pad_token_labels(self, inputs: Mapping[str, Any], joint: Mapping[str, torch.Tensor]) -> Mapping[str, Any]:
        """``inputs`` with token-level ``labels`` ``(B_in, L_in)`` padded with -100 to the joint batch's length (the
        in-distribution rows were padded to it on the tokenizer's side)."""
        labels = inputs.get("labels")
        ids = joint.get("input_ids", joint.get("attention_mask"))
        if not (isinstance(labels, torch.Tensor) and labels.dim() == 2 and isinstance(ids, torch.Tensor) and ids.dim() == 2):
            return inputs
        extra = ids.shape[1] - labels.shape[1]
        if extra <= 0 or self._oe_padding is None:
            return inputs
        side = self._oe_padding[1]
        return {**inputs, "labels": F.pad(labels, (0, extra) if side == "right" else (extra, 0), value=LABEL_PAD_VALUE)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``loss_in`` and ``loss_oe`` (means over the logging interval and all processes) to training logs."""
        if "loss" in logs and self._oe_log_sums is not None:
            totals = self.accelerator.gather(self._oe_log_sums.unsqueeze(0)).reshape(-1, 3).sum(0)
            self._oe_log_sums = None
            if totals[2] > 0:
                logs["loss_in"] = float(totals[0] / totals[2])
                logs["loss_oe"] = float(totals[1] / totals[2])
        super().log(logs, start_time)

    # ---- anomaly scores ------------------------------------------------------------------------------------
    def score_batch(self, model: nn.Module, batch: Mapping[str, Any], score: str | None = None) -> torch.Tensor:
        """Per-example anomaly scores (higher = more anomalous) of one prepared batch, shape ``(B,)``.

        Classifiers: the ``oe_common.scores`` function of that name on ``(B, K)`` logits (``"nll"`` needs a language
        model). Token-level logits: a per-sequence mean over real positions -- for causal LMs position t scores the
        prediction of token t+1 (``"nll"`` = mean token NLL, ``"uniform_xent"`` = mean cross-entropy-to-uniform
        score, the others the mean of their token-level score): :func:`oe_common.scores.example_scores`.
        ``None``: :attr:`default_score`.
        """
        score = self.default_score if score is None else score
        return self.score_batch_many(model, batch, (score,))[score]

    def _check_score_names(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.score_names:
                raise ValueError(f"score must be one of {self.score_names}, got {name!r}")

    def score_batch_many(self, model: nn.Module, batch: Mapping[str, Any], scores: Sequence[str]) -> dict[str, torch.Tensor]:
        """Several scores of one batch from ONE forward pass: ``{name: (B,)}`` (see :meth:`score_batch`).

        This is the hook to override for other kinds of model (e.g. density models): :meth:`score_batch`,
        :meth:`compute_scores` and :meth:`evaluate_ood` all go through it, and accept the names in ``score_names``.
        """
        self._check_score_names(scores)
        labels = batch.get("labels")
        logits, mask = self.logits_and_mask(model(**self._model_inputs(batch)), batch)
        targets = labels if isinstance(labels, torch.Tensor) else batch.get("input_ids")
        return example_scores(logits, scores, targets=targets, mask=mask, causal=self.is_causal_lm(model))

    @torch.no_grad()
    def compute_scores(self, dataset: Any, score: str | Sequence[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """Anomaly score of every example of ``dataset``, in dataset order, as a float64 array.

        ``score`` may also be a list of names: then every batch goes through the model ONCE and a dict
        ``{name: array}`` is returned. Batches go through ``get_test_dataloader`` (``data_collator``,
        ``per_device_eval_batch_size``); with several processes each scores its share and the scores are gathered
        with ``gather_for_metrics``, which drops the samples repeated to even out the last batches: every process
        returns the single-process array. ``None``: :attr:`default_score`.
        """
        score = self.default_score if score is None else score
        names = (score,) if isinstance(score, str) else tuple(score)
        if not names:
            raise ValueError("give at least one score name")
        self._check_score_names(names)
        dataloader = self.get_test_dataloader(dataset)
        model = self.model
        was_training = model.training
        model.eval()
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        try:
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                with self.accelerator.autocast():
                    batch_scores = self.score_batch_many(model, batch, names)
                for name in names:
                    chunks[name].append(self.accelerator.gather_for_metrics(batch_scores[name].float()).cpu())
        finally:
            model.train(was_training)
        if not chunks[names[0]]:
            raise ValueError("the dataset to score is empty")
        arrays = {name: torch.cat(parts).double().numpy() for name, parts in chunks.items()}
        return arrays[score] if isinstance(score, str) else arrays

    def evaluate_ood(
        self,
        in_dataset: Any,
        ood_datasets: Mapping[str, Any],
        score: str | None = None,
        n_draws: int = 1,
        recall_level: float = 0.95,
        seed: int = 0,
        ratio: int = 5,
        allow_small_sets: bool = False,
    ) -> oe_metrics.OODTable:
        """Detection table of ``in_dataset`` against each anomaly set (``oe_common.metrics.evaluate_ood``).

        Scores come from :meth:`compute_scores`; each anomaly set is subsampled to ``len(in) // ratio`` examples
        (the paper's 1:5 base rate), ``n_draws`` times with ``seed``. ``table.meta["score"]`` records the score. A
        smaller set is an error unless ``allow_small_sets`` (then used whole; its row says what ran). ``score=None``:
        :attr:`default_score`.
        """
        score = self.default_score if score is None else score
        if not ood_datasets:
            raise ValueError("ood_datasets is empty: give at least one anomaly set, e.g. {'ewt-email': dataset}")
        oe_metrics.check_n_draws(n_draws)  # before the (long) scoring
        in_scores = self.compute_scores(in_dataset, score)
        out_scores = {name: self.compute_scores(dataset, score) for name, dataset in ood_datasets.items()}
        table = oe_metrics.evaluate_ood(in_scores, out_scores, n_draws=n_draws, ratio=ratio, seed=seed, recall_level=recall_level,
                                        allow_small_sets=allow_small_sets)
        table.meta["score"] = score
        return table
