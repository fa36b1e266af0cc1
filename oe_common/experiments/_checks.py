"""Input validation shared by scores, losses and metrics: clear errors, never a silent wrong number."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_oe_lambda(value: Any) -> float:
    """The one check of ``oe_lambda``, the weight of the OE term in ``L_in + oe_lambda * L_OE``: a finite number >= 0."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"oe_lambda must be a finite number >= 0, got {value!r}")
    return value


def check_logits(logits: torch.Tensor, name: str = "logits", min_dim: int = 1) -> torch.Tensor:
    """Validate a floating-point tensor whose LAST dim is classes / vocabulary."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim(s) (last = classes), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    if logits.shape[-1] < 1 or logits.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(logits.shape)}")
    # Fast path: one reduction (a NaN/inf anywhere makes the sum non-finite); the exact count only when it trips,
    # since a sum of large finite values can overflow too.
    if not torch.isfinite(logits.sum(dtype=torch.float32)):
        bad = int((~torch.isfinite(logits)).sum().item())
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/inf value(s); check the model's outputs (e.g. an fp16 overflow)")
    return logits


def check_mask(mask: torch.Tensor | None, shape: torch.Size, name: str = "mask") -> torch.Tensor | None:
    """Validate a position mask of ``shape`` (the logits' shape without the class dim); returns it as bool.

    Rows (everything but the last mask dim) with no valid position are rejected: a sequence made only of
    padding has no tokens to average over.
    """
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the logits need {tuple(shape)} (logits shape without the class dim)")
    mask = mask.bool()
    if mask.dim() >= 1:
        flat = mask.reshape(-1, mask.shape[-1]) if mask.dim() >= 2 else mask.reshape(1, -1)
        empty = int((flat.sum(-1) == 0).sum().item())
        if empty:
            raise ValueError(f"{name}: {empty} row(s) contain only padding (no valid position); drop them before scoring")
    return mask
