"""``TextPreprocessing``: how raw text becomes language-model or classifier input for an ``OODDetector``.

Registered with :mod:`oe_common.deployment.preprocessing` when ``oe_text`` is imported (for the tasks ``causal-lm`` and
``text-classification``). The rules (ids, ``<eos>``, windows of over-long texts) are in ``docs/detector.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from oe_common.deployment.preprocessing import (
    DetectorCheckpointError,
    DetectorInputError,
    DetectorPreprocessing,
    ScoringBatches,
    read_checkpoint_json,
    register_preprocessing,
    some_indices,
)

from .normalize import CHAR_NORMALIZERS, NORMALIZERS, normalize_text
from .vocab import Vocabulary
from .windows import make_windows

__all__ = ["TextPreprocessing", "VOCAB_NAME", "LONG_TEXT_MODES", "text_list", "longest_first_batches"]

VOCAB_NAME = "vocab.json"
LONG_TEXT_MODES = ("window", "truncate", "error")


def text_list(inputs: Any) -> list[str]:
    """A str or a sequence of str (one input each) as a list; TypeError naming the first input that is not a str."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text inputs must be str, got {type(text).__name__} at index {index}")
    return texts


def longest_first_batches(n_inputs: int, lengths: Sequence[int], batch_size: int, make_batch: Callable) -> ScoringBatches:
    """Rows ``0..len(lengths)-1`` sorted longest first (similar lengths share a batch) and cut into batches of
    ``batch_size``; ``make_batch(rows)`` gives each batch's ``(model inputs, owner input index per row)``."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    batches = (make_batch(order[start : start + batch_size]) for start in range(0, len(order), batch_size))
    return ScoringBatches(n_inputs, math.ceil(len(order) / batch_size), batches)


@dataclass
class TextPreprocessing(DetectorPreprocessing):
    """How raw text becomes model input. Everything but ``vocab`` is saved in ``detector_config.json``.

    Args:
        vocab: the :class:`oe_text.lm.vocab.Vocabulary` the model was trained with (saved as ``vocab.json``).
        normalizer: a name in :data:`oe_text.lm.normalize.NORMALIZERS` (see :func:`~oe_text.lm.normalize.normalize_text`).
        seq_len: language models: predicted tokens per window (70 word / 150 char, as in training);
            classifiers: tokens per input.
        prepend_eos / append_eos: add ``<eos>`` before / after the tokens (``None``: both for a causal LM,
            neither for a classifier).
        long_text: what to do with texts longer than one window: ``"window"`` / ``"truncate"`` / ``"error"``
            (``None``: ``"window"`` for a causal LM, ``"truncate"`` for a classifier).
    """

    kind = "text"
    tasks = ("causal-lm", "text-classification")

    vocab: Any
    normalizer: str = "whitespace"
    seq_len: int = 70
    prepend_eos: bool | None = None
    append_eos: bool | None = None
    long_text: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocabulary):
            raise TypeError(f"vocab must be an oe_text.lm.vocab.Vocabulary, got {type(self.vocab).__name__}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {self.normalizer!r}; choose one of {tuple(NORMALIZERS)}")
        if self.normalizer in CHAR_NORMALIZERS and self.vocab.level != "char":
            raise ValueError(f"normalizer {self.normalizer!r} produces characters but the vocabulary is {self.vocab.level}-level")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {self.seq_len!r}")
        self.seq_len = int(self.seq_len)
        if self.long_text is not None and self.long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text must be one of {LONG_TEXT_MODES}, got {self.long_text!r}")

    def resolved(self, task: str) -> "TextPreprocessing":
        """A copy with the task's defaults filled in for the ``None`` fields."""
        lm = task == "causal-lm"
        return TextPreprocessing(
            vocab=self.vocab,
            normalizer=self.normalizer,
            seq_len=self.seq_len,
            prepend_eos=lm if self.prepend_eos is None else bool(self.prepend_eos),
            append_eos=lm if self.append_eos is None else bool(self.append_eos),
            long_text=("window" if lm else "truncate") if self.long_text is None else self.long_text,
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "level": self.vocab.level,
            "vocab_file": VOCAB_NAME,
            "vocab_size": len(self.vocab),
            "normalizer": self.normalizer,
            "seq_len": self.seq_len,
            "prepend_eos": self.prepend_eos,
            "append_eos": self.append_eos,
            "long_text": self.long_text,
        }

    @classmethod
    def required_files(cls, spec: Mapping[str, Any]) -> list[str]:
        return [spec.get("vocab_file", VOCAB_NAME)]

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], folder: Path) -> "TextPreprocessing":
        path = folder / spec.get("vocab_file", VOCAB_NAME)
        data = read_checkpoint_json(path)
        try:
            vocab = Vocabulary.from_dict(data)
        except KeyError as exc:
            raise DetectorCheckpointError(f"{path} is not a valid vocabulary: missing field {exc}") from None
        except (ValueError, TypeError) as exc:
            raise DetectorCheckpointError(f"{path} is not a valid vocabulary: {exc}") from None
        keys = ("normalizer", "seq_len", "prepend_eos", "append_eos", "long_text")
        return cls(vocab=vocab, **{k: spec[k] for k in keys if k in spec})

    def save(self, folder: Path) -> None:
        self.vocab.save(folder / VOCAB_NAME)

    def check_model(self, model: torch.nn.Module, task: str) -> None:
        config = getattr(model, "config", None)
        vocab_size = getattr(config, "vocab_size", None)
        if vocab_size is not None and len(self.vocab) > vocab_size:
            raise ValueError(f"the vocabulary has {len(self.vocab)} tokens but the model only {vocab_size}")
        width = self.seq_len + (1 if task == "causal-lm" else 0)
        n_pos = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if n_pos is not None and width > n_pos:
            raise ValueError(f"windows of {width} ids do not fit the model's {n_pos} positions; lower seq_len")

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text (normalised, ``<eos>`` added as configured).

        Raises:
            DetectorInputError: naming every text (0-based index) that is empty after normalisation or holds
                tokens that the vocabulary cannot encode.
        """
        vocab = self.vocab
        charset = vocab.symbols() if vocab.level == "char" else None
        empty, unencodable, ids_list = [], {}, []
        for index, text in enumerate(text_list(texts)):
            tokens = normalize_text(text, self.normalizer, charset)
            if not tokens:
                empty.append(index)
                ids_list.append(None)
                continue
            if vocab.unk is None:
                bad = sorted({t for t in tokens if t not in vocab.stoi})
                if bad:
                    unencodable[index] = bad
                    ids_list.append(None)
                    continue
            if self.prepend_eos:
                tokens = [vocab.eos, *tokens]
            if self.append_eos:
                tokens = [*tokens, vocab.eos]
            ids_list.append(vocab.encode(tokens))
        if empty or unencodable:
            parts = []
            if empty:
                what = "empty" if self.normalizer == "whitespace" else f"empty after the {self.normalizer!r} normalisation"
                parts.append(f"{len(empty)} input(s) {what} at index {some_indices(empty)}")
            if unencodable:
                detail = "; ".join(f"index {i}: {toks[:5]}" for i, toks in list(unencodable.items())[:5])
                parts.append(f"{len(unencodable)} input(s) with tokens not in the {vocab.level} vocabulary (it has no unk) ({detail})")
            raise DetectorInputError("; ".join(parts), sorted(empty + list(unencodable)))
        return ids_list

    def windows(self, ids_list: list[np.ndarray], task: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Cut each text's ids into windows; returns the windows (real ids only) and their owner text index.

        Causal LM: windows of ``seq_len + 1`` ids as :func:`oe_text.lm.windows.make_windows` cuts a stream (the first
        id of each is context only, a final lone id is dropped); classifiers: chunks of ``seq_len`` ids.
        """
        lm = task == "causal-lm"
        width = self.seq_len + 1 if lm else self.seq_len
        too_long = [i for i, ids in enumerate(ids_list) if ids.size > width]
        if too_long and self.long_text == "error":
            unit = "predicted tokens" if lm else "tokens"
            sizes = ", ".join(f"index {i}: {ids_list[i].size - (1 if lm else 0)}" for i in too_long[:5])
            raise DetectorInputError(
                f"{len(too_long)} input(s) longer than seq_len={self.seq_len} {unit} ({sizes}); "
                "shorten them or use long_text='window' / 'truncate'",
                too_long,
            )
        windows, owners, nothing = [], [], []
        for index, ids in enumerate(ids_list):
            if lm:
                arrays = make_windows(ids, self.seq_len, pad_id=self.vocab.eos_id)
                rows = [row[: int(mask.sum())] for row, mask in zip(arrays["input_ids"], arrays["attention_mask"], strict=True)]
            else:
                rows = [ids[start : start + width] for start in range(0, ids.size, width)]
            if self.long_text == "truncate":
                rows = rows[:1]
            if not rows:
                nothing.append(index)
            windows.extend(rows)
            owners.extend([index] * len(rows))
        if nothing:
            raise DetectorInputError(f"{len(nothing)} input(s) have a single token and nothing to predict (index {some_indices(nothing)})", nothing)
        return windows, np.asarray(owners, dtype=np.int64)

    def batches(self, inputs: Any, task: str, batch_size: int) -> ScoringBatches:
        """A str or a sequence of str (one input each) -> padded ``input_ids`` / ``attention_mask`` batches of windows,
        longest first (similar lengths share a batch); padding is ``<eos>`` with mask 0."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            return ScoringBatches(0, 0, iter(()))
        windows, owners = self.windows(self.encode(texts), task)
        pad_id = self.vocab.eos_id

        def make_batch(chunk: list[int]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
            length = max(windows[k].size for k in chunk)
            input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, k in enumerate(chunk):
                w = torch.from_numpy(np.asarray(windows[k], dtype=np.int64))
                input_ids[row, : w.numel()] = w
                mask[row, : w.numel()] = 1
            return {"input_ids": input_ids, "attention_mask": mask}, owners[chunk]

        return longest_first_batches(len(texts), [w.size for w in windows], batch_size, make_batch)


register_preprocessing(TextPreprocessing)
