"""``OETrainer``: Outlier Exposure as a ``transformers.Trainer`` subclass.

Details: docs/modules.md, section ``oe_common.training.trainer``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, RemoveColumnsCollator, get_last_checkpoint
from transformers.utils import logging

from . import evaluation
from ..experiments._checks import check_oe_lambda
from .batch_padding import LABEL_PAD_VALUE, concatenate_batches, pad_token_labels, tokenizer_pad_values
from .callbacks import TIME_BUDGET_STATE_NAME, find_time_budget
from ..experiments.files import make_readable
from ..maths.losses import energy_oe_loss, joint_token_oe_loss, oe_uniform_loss
from .outlier_stream import OUTLIER_STREAM_STATE_NAME, OutlierStream, is_streaming, resume_position, stream_position
from ..maths.scores import LOGIT_SCORE_NAMES, shift_labels

__all__ = ["OETrainingArguments", "OETrainer", "CheckpointResumeMixin", "OE_LOSSES", "read_checkpoint_json"]

logger = logging.get_logger(__name__)

#: Accepted values of ``OETrainingArguments.oe_loss``.
OE_LOSSES = ("uniform", "energy")

_LABEL_KEYS = ("labels", "label", "label_ids")


def _cannot_concatenate_message(in_batch: Mapping[str, Any], outlier_batch: Mapping[str, Any]) -> str:
    """The one-time warning of an OE step that cannot run the two batches in one forward pass."""

    def shapes(batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in batch.items()}

    return (
        f"OETrainer: in-distribution batch {shapes(in_batch)} and outlier batch {shapes(outlier_batch)} "
        "cannot be concatenated (different keys, dtypes or shapes past the batch dim); using two forward passes. "
        "Pad both to the same length (or give the trainer a tokenizer with a pad token and batches with an "
        "attention_mask) for one joint pass, or set oe_concat_forward=False to silence this."
    )


def _problem_type(logits: torch.Tensor, labels: torch.Tensor) -> str:
    """The ``config.problem_type`` that ``transformers``' sequence classifiers infer when it is unset."""
    if logits.shape[-1] == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        return "single_label_classification"
    return "multi_label_classification"


def read_checkpoint_json(checkpoint: str, name: str) -> Any:
    """The value that ``OETrainer.checkpoint_states`` saved as ``name`` in the checkpoint folder ``checkpoint``;
    ``None`` when the file is not there (a checkpoint saved without that state)."""
    path = os.path.join(checkpoint, name)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _vocabulary_size(model: nn.Module) -> int | None:
    """The smallest of the model's input / output embedding rows and ``config.vocab_size`` (``None``: none known)."""
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


def _without_tied_missing_keys(model: nn.Module, load_result: Any) -> Any:
    """``load_result`` without the missing keys whose parameter IS the tensor of a parameter that was loaded.

    A checkpoint stores a tied decoder weight once (as the embedding), so ``load_state_dict(strict=False)`` reports
    it missing although it shares its tensor with a loaded one; anything else stays missing.
    """
    missing = list(getattr(load_result, "missing_keys", None) or [])
    if not missing or not hasattr(load_result, "_replace"):
        return load_result
    names_by_tensor: dict[int, set[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names_by_tensor.setdefault(id(tensor), set()).add(name)
    missing_set = set(missing)
    aliases = {name: names for names in names_by_tensor.values() for name in names}
    still_missing = [key for key in missing if not (aliases.get(key, set()) - missing_set)]
    return load_result._replace(missing_keys=still_missing) if len(still_missing) != len(missing) else load_result


def _validate_oe_fields(args: "OETrainingArguments") -> None:
    check_oe_lambda(args.oe_lambda)
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


class CheckpointResumeMixin:
    """What :class:`OETrainer` adds to a ``transformers.Trainer``'s checkpoints (mix it in before ``Trainer``).

    * Extra resume state: every checkpoint folder also gets the JSON files of :meth:`checkpoint_states` (main
      process), and ``train(resume_from_checkpoint=...)`` hands them back to :meth:`load_checkpoint_states` first.
      Here: a ``TimeBudgetCallback``'s plan and seconds used, so a resumed run keeps its plan and counts on from
      the seconds used. A subclass adds its own state by extending both methods.
    * The safetensors files ``save_model`` writes get the permissions of a new file (safetensors writes ``0600``).
    * A run resumed from a checkpoint saved at its last step trains no further step.
    * No "missing keys" warning for tied weights on loading a checkpoint.
    """

    def checkpoint_states(self) -> dict[str, Any]:
        """``{file name: JSON-able value}`` that every checkpoint folder gets beside ``Trainer``'s files (main process)
        and :meth:`load_checkpoint_states` reads back: a ``TimeBudgetCallback``'s
        :data:`~oe_common.training.callbacks.TIME_BUDGET_STATE_NAME`."""
        budget = find_time_budget(self.callback_handler.callbacks)
        return {} if budget is None else {TIME_BUDGET_STATE_NAME: budget.resume_state()}

    def load_checkpoint_states(self, checkpoint: str) -> None:
        """Continue from the :meth:`checkpoint_states` saved in the folder ``checkpoint``."""
        budget = find_time_budget(self.callback_handler.callbacks)
        if budget is not None:
            budget.load_resume_state(read_checkpoint_json(checkpoint, TIME_BUDGET_STATE_NAME), checkpoint)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint plus the files of :meth:`checkpoint_states`."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            for name, value in self.checkpoint_states().items():
                with open(os.path.join(folder, name), "w") as handle:
                    json.dump(value, handle, indent=2)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval: list[str] | None = None, **kwargs: Any):
        """``Trainer.train``; when resuming, the :meth:`checkpoint_states` also continue from the checkpoint."""
        checkpoint = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        if checkpoint not in (None, False):  # Trainer raises its own error for a missing checkpoint
            self.load_checkpoint_states(str(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model`` (also what every checkpoint saves the model with), then the files made readable."""
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and folder is not None and os.path.isdir(folder):
            make_readable(folder)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer._run_epoch``, or nothing when the state (resumed from a checkpoint saved at the last step, e.g. a
        run interrupted while scoring) is already at ``max_steps``: Trainer would run one step past it before checking."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """``Trainer``'s warnings after loading a checkpoint (resume, best model), minus tied weights (which it would
        report as "missing keys" for every tied causal LM, GPT-2 included): :func:`_without_tied_missing_keys`."""
        super()._issue_warnings_after_load(_without_tied_missing_keys(self.accelerator.unwrap_model(self.model), load_result))


class OETrainer(CheckpointResumeMixin, Trainer):
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
        return RemoveColumnsCollator(self.data_collator, self._oe_forward_keys)  # the columns model.forward takes

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

    def checkpoint_states(self) -> dict[str, Any]:
        """:class:`CheckpointResumeMixin`'s plus the outlier stream's position
        (:data:`~oe_common.training.outlier_stream.OUTLIER_STREAM_STATE_NAME`)."""
        states = super().checkpoint_states()
        if self.outlier_dataset is not None:
            drawn = self._outlier_stream.examples_drawn if self._outlier_stream is not None else self._outlier_skip_examples
            states[OUTLIER_STREAM_STATE_NAME] = stream_position(drawn, self.args.outlier_seed, self.args.world_size)
        return states

    def load_checkpoint_states(self, checkpoint: str) -> None:
        """:class:`CheckpointResumeMixin`'s; then every process skips the outlier examples it had drawn before the
        checkpoint (map-style sets jump there at no cost; streaming sets read past them), so a resumed run sees the
        same outlier batches as an uninterrupted one (given the same ``oe_seed`` and number of processes; otherwise
        a warning is logged and the stream restarts)."""
        super().load_checkpoint_states(checkpoint)
        if self.outlier_dataset is not None:
            saved = read_checkpoint_json(checkpoint, OUTLIER_STREAM_STATE_NAME)
            self._outlier_stream = None
            self._outlier_skip_examples = resume_position(saved, self.args.outlier_seed, self.args.world_size, checkpoint)

    def _outlier_inputs(self, batch: Any) -> dict[str, Any]:
        """The model inputs of a collated outlier batch (which must be a dict)."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"the outlier collator must return a dict of model inputs, got {type(batch).__name__}")
        return self._model_inputs(batch)

    def next_outlier_batch(self) -> dict[str, Any]:
        """The next outlier batch of this process, as model inputs on the training device."""
        return self._prepare_inputs(self._outlier_inputs(next(self.outlier_stream)))

    def _check_first_outlier_batch(self) -> None:
        """Draw one batch now (from a throw-away stream) so that bad outlier data fails before training."""
        batch = next(self._make_outlier_stream(num_workers=0))
        inputs = self._outlier_inputs(batch)
        if not inputs:
            raise ValueError(
                f"the first outlier batch has no model input (keys: {sorted(batch)}; "
                f"accepted by model.forward: {sorted(self._oe_forward_keys or [])}); check the outlier dataset's columns"
            )
        ids = inputs.get("input_ids")
        vocab = _vocabulary_size(self.accelerator.unwrap_model(self.model))
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
        :func:`~oe_common.maths.losses.joint_token_oe_loss` computes them together (same values, one pass)."""
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
        """The loss from the logits: token-level cross-entropy (shifted for causal LMs), else the loss of
        ``config.problem_type`` (:func:`_problem_type` when unset), in float32."""
        if logits.dim() >= 3:  # token level
            labels, problem = self._aligned_token_labels(model, labels), "single_label_classification"
        else:
            problem = getattr(getattr(self.accelerator.unwrap_model(model), "config", None), "problem_type", None)
            problem = _problem_type(logits, labels) if problem is None else problem
        if problem == "regression":
            return F.mse_loss(logits.float().squeeze(), labels.float().squeeze())
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=LABEL_PAD_VALUE)

    def outlier_logits(self, model: nn.Module, outlier_batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward pass over an outlier batch on its own: ``(logits, mask)`` as :meth:`logits_and_mask` returns.

        Used when ``oe_concat_forward=False`` or when the two batches cannot be concatenated. Override it (and set
        ``oe_concat_forward=False``) for a model whose outlier pass differs from its normal one.
        """
        return self.logits_and_mask(model(**outlier_batch), outlier_batch)

    def oe_term(self, out_logits: torch.Tensor, out_mask: torch.Tensor | None, in_logits: torch.Tensor, in_mask: torch.Tensor | None) -> torch.Tensor:
        """``L_OE`` (before ``oe_lambda``): ``oe_uniform_loss(out)`` or ``energy_oe_loss(in, out)``, in float32."""
        if self.args.oe_loss == "energy":
            return energy_oe_loss(
                in_logits.float(), out_logits.float(), self.args.oe_energy_m_in, self.args.oe_energy_m_out, in_mask=in_mask, out_mask=out_mask
            )
        return oe_uniform_loss(out_logits.float(), out_mask)

    # ---- the loss ------------------------------------------------------------------------------------------
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
        joint = concatenate_batches(in_model_inputs, outlier_batch, self._oe_padding) if self.args.oe_concat_forward else None
        if joint is not None and self._oe_padding is not None:
            inputs = pad_token_labels(inputs, joint, side=self._oe_padding[1])
        if self.args.oe_concat_forward and joint is None and not self._warned_no_concat:
            self._warned_no_concat = True
            logger.warning(_cannot_concatenate_message(in_model_inputs, outlier_batch))

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

        self.record_loss_terms(loss_in, loss_oe)
        return (loss, outputs) if return_outputs else loss

    def record_loss_terms(self, loss_in: torch.Tensor, loss_oe: torch.Tensor) -> None:
        """Add one micro-batch's two terms to the sums that :meth:`log` averages into ``loss_in`` / ``loss_oe``."""
        record = torch.stack([loss_in.detach().float(), loss_oe.detach().float(), torch.ones((), device=loss_in.device)])
        self._oe_log_sums = record if self._oe_log_sums is None else self._oe_log_sums + record

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``loss_in`` and ``loss_oe`` (means over the logging interval and all processes) to training logs."""
        if "loss" in logs and self._oe_log_sums is not None:
            totals = self.accelerator.gather(self._oe_log_sums.unsqueeze(0)).reshape(-1, 3).sum(0)
            self._oe_log_sums = None
            if totals[2] > 0:
                logs["loss_in"] = float(totals[0] / totals[2])
                logs["loss_oe"] = float(totals[1] / totals[2])
        super().log(logs, start_time)

    # ---- anomaly scores: oe_common.training.evaluation ---------------------------------------------------------------
    #: Score names that :meth:`compute_scores` / :meth:`evaluate_ood` accept.
    score_names: tuple[str, ...] = LOGIT_SCORE_NAMES  # feature scores (mahalanobis) need fitting: OODDetector
    #: The score of :meth:`compute_scores` and :meth:`evaluate_ood` when none is named.
    default_score: str = "msp"
    #: The hook behind every score: ``score_batch_many(model, batch, names) -> {name: (B,)}``, the scores of one
    #: prepared batch from ONE forward pass (default :func:`oe_common.training.evaluation.logit_scores`). Override it, with
    #: :attr:`score_names` and :attr:`default_score`, for another kind of model (e.g. bits per dimension for density
    #: models).
    score_batch_many = evaluation.logit_scores
    compute_scores = evaluation.compute_scores
    evaluate_ood = evaluation.evaluate_ood
