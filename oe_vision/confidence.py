"""Confidence branch of DeVries & Taylor (2018), "Learning Confidence for Out-of-Distribution Detection".

Details: docs/modules.md, section ``oe_vision.confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import ImageClassifierOutput

__all__ = [
    "ConfidenceImageClassifierOutput",
    "ConfidenceBranchLoss",
    "confidence_branch_loss",
    "update_confidence_lambda",
    "confidence_branch_score",
    "DEFAULT_CONFIDENCE_LAMBDA",
    "DEFAULT_CONFIDENCE_BUDGET",
]

#: Initial ``lambda_c`` of DeVries & Taylor's code.
DEFAULT_CONFIDENCE_LAMBDA = 0.1
#: Budget ``beta`` for ``-log b`` (DeVries & Taylor's default, used by the OE paper's experiments).
DEFAULT_CONFIDENCE_BUDGET = 0.3


@dataclass
class ConfidenceImageClassifierOutput(ImageClassifierOutput):
    """:class:`~transformers.modeling_outputs.ImageClassifierOutput` plus the confidence-branch logit.

    Attributes:
        loss: scalar, present when ``labels`` were given.
        logits: ``(B, num_labels)`` classifier logits.
        hidden_states: per-stage feature maps when ``output_hidden_states=True``.
        confidence_logits: ``(B,)`` logit ``c`` of the confidence branch (``b = sigmoid(c)``); ``None`` when the
            model has no branch.
    """

    confidence_logits: torch.FloatTensor | None = None


class ConfidenceBranchLoss(NamedTuple):
    """Result of :func:`confidence_branch_loss`; ``loss = nll + lambda * confidence_penalty``."""

    loss: torch.Tensor
    nll: torch.Tensor
    confidence_penalty: torch.Tensor


def confidence_branch_loss(
    logits: torch.Tensor,
    branch_logit: torch.Tensor,
    labels: torch.Tensor,
    lmbda: float | torch.Tensor = DEFAULT_CONFIDENCE_LAMBDA,
    hint_mask: torch.Tensor | None = None,
    hint_prob: float = 0.5,
    eps: float = 1e-12,
    generator: torch.Generator | None = None,
) -> ConfidenceBranchLoss:
    """DeVries & Taylor's training loss for a classifier with a confidence branch (see docs/modules.md).

    Args:
        logits: ``(B, K)`` classifier logits.
        branch_logit: ``(B,)`` or ``(B, 1)`` confidence-branch logits ``c``.
        labels: ``(B,)`` integer class labels in ``[0, K)``.
        lmbda: weight ``lambda_c`` of the ``-log b`` penalty (float or 0-dim tensor, e.g. the model's
            ``confidence_lambda`` buffer).
        hint_mask: optional ``(B,)`` bool/0-1 mask, 1 = this example gets hints (uses ``b``), 0 = ``b`` replaced
            by 1. Default: drawn as Bernoulli(``hint_prob``) with ``generator``.
        hint_prob: probability of a hint when ``hint_mask`` is drawn (0.5 in DeVries & Taylor).
        eps: clamp for ``p`` and ``b`` (their code: 1e-12).
        generator: RNG for the hint mask (default: torch's global RNG).

    Returns:
        :class:`ConfidenceBranchLoss` ``(loss, nll, confidence_penalty)``; ``confidence_penalty = mean(-log b)`` is
        what :func:`update_confidence_lambda` compares with the budget.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape
    branch_logit = branch_logit.reshape(-1)
    if branch_logit.numel() != batch:
        raise ValueError(f"branch_logit has {branch_logit.numel()} values for a batch of {batch}")
    labels = labels.reshape(-1).long()
    if labels.numel() != batch:
        raise ValueError(f"labels has {labels.numel()} values for a batch of {batch}")
    if batch and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got min {int(labels.min())}, max {int(labels.max())}")

    probs = torch.softmax(logits.float(), dim=-1).clamp(eps, 1.0 - eps)
    confidence = torch.sigmoid(branch_logit.float()).clamp(eps, 1.0 - eps)
    if hint_mask is None:
        hint_mask = torch.bernoulli(torch.full((batch,), float(hint_prob), device=logits.device), generator=generator)
    else:
        hint_mask = hint_mask.reshape(-1).to(device=logits.device, dtype=confidence.dtype)
        if hint_mask.numel() != batch:
            raise ValueError(f"hint_mask has {hint_mask.numel()} values for a batch of {batch}")
    conf = confidence * hint_mask + (1.0 - hint_mask)
    onehot = F.one_hot(labels, num_classes).to(probs.dtype)
    interpolated = conf[:, None] * probs + (1.0 - conf[:, None]) * onehot
    nll = F.nll_loss(torch.log(interpolated), labels)
    penalty = (-torch.log(confidence)).mean()
    return ConfidenceBranchLoss(loss=nll + lmbda * penalty, nll=nll, confidence_penalty=penalty)


def update_confidence_lambda(
    lmbda: float | torch.Tensor,
    confidence_penalty: float | torch.Tensor,
    budget: float = DEFAULT_CONFIDENCE_BUDGET,
    rate: float = 0.01,
) -> float | torch.Tensor:
    """DeVries & Taylor's budget rule: ``lambda / (1 + rate)`` if ``budget > penalty`` else ``lambda / (1 - rate)``.

    When the confidence penalty ``mean(-log b)`` is under budget the penalty weight shrinks (the branch may lower
    its confidence and ask for more hints); over budget it grows. Returns the same kind it was given: a float for a
    float, a tensor for a tensor (computed with ``torch.where``, so no host-device synchronisation).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if isinstance(lmbda, torch.Tensor):
        penalty = torch.as_tensor(confidence_penalty, device=lmbda.device).detach().to(lmbda.dtype)
        return torch.where(penalty < budget, lmbda / (1.0 + rate), lmbda / (1.0 - rate))
    penalty = float(confidence_penalty.detach()) if isinstance(confidence_penalty, torch.Tensor) else float(confidence_penalty)
    return lmbda / (1.0 + rate) if budget > penalty else lmbda / (1.0 - rate)


def confidence_branch_score(confidence_logits: torch.Tensor) -> torch.Tensor:
    """Anomaly score of a confidence branch: ``1 - b(x) = 1 - sigmoid(c) = sigmoid(-c)``; higher = more anomalous.

    Accepts ``(B,)`` or ``(B, 1)`` logits and returns ``(B,)`` float32.
    """
    if not isinstance(confidence_logits, torch.Tensor) or confidence_logits.numel() == 0:
        raise ValueError("confidence_logits must be a non-empty tensor")
    if confidence_logits.dim() == 2 and confidence_logits.shape[1] == 1:
        confidence_logits = confidence_logits[:, 0]
    if confidence_logits.dim() != 1:
        raise ValueError(f"confidence_logits must be (B,) or (B, 1), got shape {tuple(confidence_logits.shape)}")
    return torch.sigmoid(-confidence_logits.float())


def classification_outputs(
    model: torch.nn.Module,
    logits: torch.Tensor,
    confidence_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> torch.Tensor | None:
    """Loss shared by the ``oe_vision`` classifiers (internal helper).

    * no branch: cross-entropy;
    * branch, training mode: :func:`confidence_branch_loss` with the model's ``confidence_lambda`` buffer, which is
      then updated in place by :func:`update_confidence_lambda` (when ``config.confidence_adapt_lambda``);
    * branch, eval mode: plain cross-entropy of the classifier (deterministic, comparable with a baseline).
    """
    if labels is None:
        return None
    labels = labels.to(logits.device)
    if confidence_logits is None or not model.training:
        return F.cross_entropy(logits.float(), labels.long())
    # clone: the buffer is updated in place below, after autograd has saved lambda for the backward pass
    result = confidence_branch_loss(logits, confidence_logits, labels, lmbda=model.confidence_lambda.clone())
    if getattr(model.config, "confidence_adapt_lambda", True):
        with torch.no_grad():
            model.confidence_lambda.copy_(
                update_confidence_lambda(model.confidence_lambda, result.confidence_penalty, budget=model.config.confidence_budget)
            )
    return result.loss


def label_kwargs(num_labels: int | None, kwargs: dict, default: int = 10) -> dict:
    """Config helper (internal): default ``num_labels`` without contradicting an ``id2label`` being loaded."""
    if num_labels is None and "id2label" not in kwargs:
        num_labels = default
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    return kwargs
