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

__all__ = ["LABEL_PAD_VALUE", "tokenizer_pad_values", "pad_to_length"]

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
        out[key] = F.pad(x, (0, extra) if side == "right" else (extra, 0), value=pad_values[key])
        padded = True
    if padded and "attention_mask" not in batch:
        return None
    return out
