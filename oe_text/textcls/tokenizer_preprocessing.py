"""``TokenizerPreprocessing``: raw strings -> a text classifier's input through a Hugging Face tokenizer.

Registered with :mod:`oe_common.deployment.preprocessing` for the task ``text-classification`` beside the vocabulary-based
:class:`~oe_text.lm.preprocessing.TextPreprocessing`; a saved detector names its class by the spec's ``"type"``
(``"tokenizer"`` here, ``"text"`` there). The tokenizer is saved into the detector folder with its own
``save_pretrained`` (``tokenizer.json``, ``tokenizer_config.json``, ... at the folder root, so
``AutoTokenizer.from_pretrained(folder)`` also loads it by hand) and loaded with
``AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)``.

Rules (one row per input, no windows):

* each text is tokenized with the tokenizer's special tokens (``[CLS] ... [SEP]`` for BERT) and **truncated** to
  ``max_length`` ids (saved in the spec; the tokenizer's ``truncation_side``, normally the end of the text is cut);
* texts are sorted longest first and cut into batches of ``batch_size``; each batch is **right-padded** to its
  longest row (``attention_mask`` 0 at padding; the toolkit's GRU classifier needs right padding, and for
  attention models the side does not change the logits);
* a text that is empty or only whitespace is an error (:class:`~oe_common.deployment.detector.DetectorInputError`, indices
  named), as for the vocabulary-based preprocessing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

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

from ..lm.preprocessing import longest_first_batches, text_list

__all__ = ["TokenizerPreprocessing", "TOKENIZER_CONFIG_NAME"]

#: Written by every ``save_pretrained`` of a tokenizer; the one file a tokenizer spec always requires.
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
#: ``max_length`` of a plain model folder's tokenizer when neither it nor the model states a limit.
DEFAULT_MAX_LENGTH = 512
#: Files one of which a saved tokenizer has (``save_pretrained`` writes the first; older Hub repos may hold only a vocabulary).
_TOKENIZER_FILES = (TOKENIZER_CONFIG_NAME, "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
_MAX_SANE_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30 (transformers' VERY_LARGE_INTEGER)


def _auto_tokenizer(folder: Path, error: Callable[[str], str]) -> Any:
    """``AutoTokenizer.from_pretrained(folder)`` offline and without remote code; a failure is a
    DetectorCheckpointError ``error("<exception type>: <reason>")``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers / transformers raise many types for missing or bad files
        raise DetectorCheckpointError(error(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")) from None


@dataclass
class TokenizerPreprocessing(DetectorPreprocessing):
    """How raw strings become classifier input: a Hugging Face tokenizer, truncation, right padding.

    Args:
        tokenizer: a ``transformers`` tokenizer (``AutoTokenizer.from_pretrained(...)``); saved into the detector
            folder with its ``save_pretrained``. Its padding side is set to ``"right"``.
        max_length: at most this many ids per text (special tokens included); longer texts are truncated.
    """

    kind = "tokenizer"
    tasks = ("text-classification",)

    tokenizer: Any
    max_length: int = 128
    _files: list[str] | None = field(default=None, init=False, repr=False, compare=False)  # saved_files(), found once

    def __post_init__(self) -> None:
        from transformers import PreTrainedTokenizerBase

        if not isinstance(self.tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"tokenizer must be a transformers tokenizer (AutoTokenizer.from_pretrained), got {type(self.tokenizer).__name__}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, (int, np.integer)) or self.max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {self.max_length!r}")
        self.max_length = int(self.max_length)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer ({type(self.tokenizer).__name__}) has no pad token; set tokenizer.pad_token first")
        self.tokenizer.padding_side = "right"  # the GRU classifier reads lengths from a right-padded mask

    def __repr__(self) -> str:
        return f"TokenizerPreprocessing(tokenizer={type(self.tokenizer).__name__}({len(self.tokenizer)} tokens), max_length={self.max_length})"

    # ------------------------------------------------------------------ persistence
    def saved_files(self) -> list[str]:
        """The file names ``tokenizer.save_pretrained`` writes (found once by saving into a temporary folder)."""
        if self._files is None:
            with tempfile.TemporaryDirectory(prefix="oe-tokenizer-") as tmp:
                self.tokenizer.save_pretrained(tmp)
                self._files = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
        return list(self._files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "tokenizer_class": type(self.tokenizer).__name__,
            "tokenizer_files": self.saved_files(),
            "vocab_size": len(self.tokenizer),
            "max_length": self.max_length,
            "padding_side": "right",
        }

    @classmethod
    def required_files(cls, spec: Mapping[str, Any]) -> list[str]:
        files = spec.get("tokenizer_files") or [TOKENIZER_CONFIG_NAME]
        return [str(name) for name in files]

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], folder: Path) -> "TokenizerPreprocessing":
        files = cls.required_files(spec)
        for name in files:  # a corrupt JSON file is named here, not deep inside the tokenizers library
            if name.endswith(".json"):
                read_checkpoint_json(folder / name)
        tokenizer = _auto_tokenizer(folder, lambda reason: f"cannot load the tokenizer in {folder} ({', '.join(files)}): {reason}; save the detector again")
        saved = spec.get("vocab_size")
        if saved is not None and saved != len(tokenizer):
            raise DetectorCheckpointError(
                f"the tokenizer in {folder} ({', '.join(files)}) has {len(tokenizer)} tokens, {saved} when it was saved: "
                "the files are corrupt or were replaced; save the detector again"
            )
        return cls(tokenizer=tokenizer, max_length=spec.get("max_length", 128))

    @classmethod
    def from_model_folder(cls, folder: Path, model_config: Mapping[str, Any]) -> "TokenizerPreprocessing":
        """A fine-tuned classifier's own tokenizer, saved beside it (``tokenizer.save_pretrained(folder)``), loaded
        offline without remote code. ``max_length`` = the smaller of the tokenizer's ``model_max_length`` and the
        model's ``max_position_embeddings`` (either ignored when unset / huge; :data:`DEFAULT_MAX_LENGTH` when both are)."""
        save_hint = "save it beside the model with tokenizer.save_pretrained(folder)"
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            # without its files, AutoTokenizer builds an EMPTY tokenizer of the model type (special tokens only)
            raise DetectorCheckpointError(
                f"cannot load the tokenizer of the model folder {folder}: it has none of {', '.join(_TOKENIZER_FILES)}; {save_hint}"
            )
        tokenizer = _auto_tokenizer(folder, lambda reason: f"cannot load the tokenizer of the model folder {folder} ({reason}); {save_hint}")
        limits = [tokenizer.model_max_length, model_config.get("max_position_embeddings")]
        usable = [int(n) for n in limits if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= _MAX_SANE_LENGTH]
        try:
            return cls(tokenizer=tokenizer, max_length=min(usable, default=DEFAULT_MAX_LENGTH))
        except ValueError as exc:  # e.g. no pad token
            raise DetectorCheckpointError(f"the tokenizer of the model folder {folder} cannot be used: {exc}") from None

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)

    def check_model(self, model: torch.nn.Module, task: str) -> None:
        config = getattr(model, "config", None)
        vocab_size = getattr(config, "vocab_size", None)
        if vocab_size is not None and len(self.tokenizer) > vocab_size:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the model only {vocab_size}")
        n_pos = getattr(config, "max_position_embeddings", None)
        if n_pos is not None and self.max_length > n_pos:
            raise ValueError(f"max_length={self.max_length} does not fit the model's {n_pos} positions; lower max_length")

    # ------------------------------------------------------------------ encoding
    def batches(self, inputs: Any, task: str, batch_size: int) -> ScoringBatches:
        """A str or a sequence of str -> right-padded batches of the tokenizer's model inputs, longest first."""
        texts = text_list(inputs)
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise DetectorInputError(f"{len(empty)} input(s) empty or only whitespace at index {some_indices(empty)}", empty)
        if not texts:
            return ScoringBatches(0, 0, iter(()))
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        rows = [{key: encoded[key][i] for key in encoded.keys()} for i in range(len(texts))]

        def make_batch(chunk: list[int]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
            batch = self.tokenizer.pad([rows[k] for k in chunk], padding="longest", padding_side="right", return_tensors="pt")
            return {key: value.long() for key, value in batch.items()}, np.asarray(chunk, dtype=np.int64)

        return longest_first_batches(len(texts), [len(row["input_ids"]) for row in rows], batch_size, make_batch)

register_preprocessing(TokenizerPreprocessing)
