"""Padding two tokenized batches to one length, so that an OE step runs them in ONE forward pass.

A collator that pads each batch to its own longest row (``DataCollatorWithPadding``'s default) gives the
in-distribution batch ``(B_in, L_in)`` and the outlier batch ``(B_out, L_out)``; :func:`pad_to_length` pads the
shorter one to ``L = max(L_in, L_out)`` with the values the tokenizer pads with, on the tokenizer's side, so the
joint batch is padded to the longest text it holds. With an attention mask the padded positions are masked, so a
model's outputs at the real tokens (and a classifier's logits) do not change, up to float rounding.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

__all__ = ["LABEL_PAD_VALUE", "tokenizer_pad_values", "pad_to_length", "concatenate_batches", "pad_token_labels"]

#: Pad value of token-level labels: ignored by cross-entropy (``ignore_index``) and by the OE losses.
LABEL_PAD_VALUE = -100


def tokenizer_pad_values(tokenizer: Any) -> tuple[dict[str, int], str] | None:
    """``({input name: pad value}, padding side)`` of a Hugging Face tokenizer, ``None`` without a pad token.

    The values are those ``tokenizer.pad`` writes: ``input_ids`` the pad token id, ``attention_mask`` 0,
    ``token_type_ids`` the pad token type id, ``special_tokens_mask`` 1.
    """
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if not isinstance(pad_id, int):
        return None
    side = getattr(tokenizer, "padding_side", "right")
    values = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
              "special_tokens_mask": 1}
    return values, side if side in ("left", "right") else "right"


def pad_to_length(batch: Mapping[str, torch.Tensor], length: int, pad_values: Mapping[str, int], side: str = "right") -> dict[str, torch.Tensor] | None:
    """``batch`` with every ``(B, L)`` tensor padded to ``(B, length)`` on ``side`` with its value in ``pad_values``.

    Returns ``None`` when a tensor that needs padding has no pad value or is not 2-D, or when padding is needed but
    the batch has no ``attention_mask`` (the padded positions would then be read as real tokens).
    """
    out: dict[str, torch.Tensor] = {}
    padded = False
    for key, x in batch.items():
        extra = length - x.shape[1] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 0
        if extra < 0:
            return None
        if extra == 0:
            out[key] = x
            continue
        if key not in pad_values or x.dim() != 2:
            return None
        out[key] = _pad_last_dim(x, extra, pad_values[key], side)
        padded = True
    if padded and "attention_mask" not in batch:
        return None
    return out


def _pad_last_dim(x: torch.Tensor, extra: int, value: int, side: str) -> torch.Tensor:
    return F.pad(x, (0, extra) if side == "right" else (extra, 0), value=value)


def concatenate_batches(a: Mapping[str, Any], b: Mapping[str, Any], padding: tuple[Mapping[str, int], str] | None = None) -> dict[str, torch.Tensor] | None:
    """``a`` and ``b`` stacked along the batch dim, or ``None`` if their keys, dtypes or shapes differ.

    With ``padding`` (``(pad values, side)``, :func:`tokenizer_pad_values`), batches whose ``(B, L)`` tensors differ
    in ``L`` are first padded to the longer ``L`` (:func:`pad_to_length`), so the joint batch is padded to its
    longest text."""
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


def pad_token_labels(inputs: Mapping[str, Any], joint: Mapping[str, torch.Tensor], side: str) -> Mapping[str, Any]:
    """``inputs`` with token-level ``labels`` ``(B_in, L_in)`` padded with :data:`LABEL_PAD_VALUE` on ``side`` to the
    length of the joint batch of :func:`concatenate_batches` (whose in-distribution rows were padded to it)."""
    labels = inputs.get("labels")
    ids = joint.get("input_ids", joint.get("attention_mask"))
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 2 and isinstance(ids, torch.Tensor) and ids.dim() == 2):
        return inputs
    extra = ids.shape[1] - labels.shape[1]
    return {**inputs, "labels": _pad_last_dim(labels, extra, LABEL_PAD_VALUE, side)} if extra > 0 else inputs
