"""Confidence branch + Outlier Exposure (paper Sec. 4.2, Table 3): :class:`ConfidenceBranchOETrainer`.

Details: docs/modules.md, section ``oe_vision.confidence_trainer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from oe_common.maths.losses import BRANCH_EPS, confidence_branch_oe_loss
from oe_common.training.trainer import OETrainer

__all__ = ["ConfidenceBranchOETrainer", "branch_logits", "BRANCH_EPS", "BRANCH_LOGIT_BOUND"]

#: ``BRANCH_EPS`` (1e-12, from :mod:`oe_common.maths.losses`) clamps ``b`` before the log in the OE term, as DeVries &
#: Taylor's code clamps ``b``; equivalently the branch logits are clamped to ``[-bound, bound]``, ``bound =
#: logit(1 - eps) = -logit(eps)`` (about 27.6).
BRANCH_LOGIT_BOUND = math.log((1 - BRANCH_EPS) / BRANCH_EPS)


def branch_logits(outputs: Any) -> torch.Tensor:
    """The confidence-branch logits ``c`` ``(B,)`` of a model output (``confidence_logits``); raises if absent."""
    logits = outputs.get("confidence_logits") if isinstance(outputs, Mapping) else getattr(outputs, "confidence_logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ValueError("the model returned no confidence_logits: build it with config.confidence_branch=True")
    return logits.reshape(-1)


class ConfidenceBranchOETrainer(OETrainer):
    """:class:`~oe_common.training.trainer.OETrainer` whose OE term acts on the confidence branch: ``+ oe_lambda * E_OE[log b]``.

    Requirements (checked at construction when an ``outlier_dataset`` is given): the model has a confidence branch,
    ``args.oe_concat_forward`` is False, ``args.oe_loss == "uniform"`` (the field is not used: the term is fixed),
    no ``label_smoothing_factor`` and no ``compute_loss_func`` (the in-distribution loss must be the model's own).
    Without outliers it is a plain ``Trainer`` (DeVries & Taylor's training alone).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.outlier_dataset is None:
            return
        model = self.accelerator.unwrap_model(self.model)
        if not getattr(getattr(model, "config", None), "confidence_branch", False):
            raise ValueError("ConfidenceBranchOETrainer needs a model with a confidence branch (config.confidence_branch=True)")
        if self.args.oe_concat_forward:
            raise ValueError(
                "ConfidenceBranchOETrainer needs oe_concat_forward=False: the in-distribution pass must carry the labels "
                "so that the model computes its confidence-branch loss"
            )
        if self.args.oe_loss != "uniform":
            raise ValueError(f"oe_loss={self.args.oe_loss!r} is not used by ConfidenceBranchOETrainer (its term is E_OE[log b]); leave it 'uniform'")
        if self.label_smoother is not None or self._oe_in_loss_func is not None:
            raise ValueError("ConfidenceBranchOETrainer uses the model's own loss: no label_smoothing_factor / compute_loss_func")

    def outlier_logits(self, model: nn.Module, outlier_batch: Mapping[str, Any]) -> tuple[torch.Tensor, None]:
        """Forward pass over the outliers; returns the BRANCH logits as ``(B, 1)`` (not the class logits), no mask."""
        return branch_logits(model(**outlier_batch))[:, None], None

    def oe_term(self, out_logits: torch.Tensor, out_mask: torch.Tensor | None, in_logits: torch.Tensor, in_mask: torch.Tensor | None) -> torch.Tensor:
        """``E_OE[log b(x')]`` with ``b`` clamped to ``[eps, 1 - eps]`` (minimised: drives ``b`` to 0 on outliers).

        :func:`oe_common.maths.losses.confidence_branch_oe_loss` (which clamps, the clamp of DeVries & Taylor's code,
        ``eps = 1e-12``: outliers with ``b < eps`` add no gradient; unclamped, ``E[log b]`` is unbounded below and
        training diverges) on float32 logits.
        """
        return confidence_branch_oe_loss(out_logits.float(), eps=BRANCH_EPS)
