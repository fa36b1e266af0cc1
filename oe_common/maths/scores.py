"""Anomaly scores from logits. Convention: HIGHER score = MORE anomalous (anomalies are the positive class).

Details: docs/modules.md, section ``oe_common.maths.scores``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..experiments._checks import check_logits, check_mask
from .feature_scores import KNNScore, MahalanobisScore

__all__ = [
    "msp_score",
    "uniform_xent_score",
    "max_logit_score",
    "energy_score",
    "token_nll",
    "sequence_nll_score",
    "sequence_uniform_xent_score",
    "sequence_scores",
    "shift_labels",
    "causal_shift",
    "example_scores",
    "SCORES",
    "FEATURE_SCORES",
    "OUTPUT_SCORES",
    "abnormality_score",
    "output_score",
    "LOGIT_SCORE_NAMES",
    "SCORE_NAMES",
    "MahalanobisScore",
    "KNNScore",
]


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017): ``-max_k softmax(z)_k``. Shape ``(...)``."""
    logits = check_logits(logits)
    return -torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def uniform_xent_score(logits: torch.Tensor) -> torch.Tensor:
    """Negative cross-entropy to the uniform distribution: ``mean_k(z_k) - logsumexp(z)`` = ``(1/K) sum_k log p_k``.

    Equals ``-(KL(U || p) + log K)``; maximal (``-log K``) for a uniform prediction. Shape ``(...)``.
    """
    logits = check_logits(logits).float()
    return logits.mean(dim=-1) - torch.logsumexp(logits, dim=-1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Negative maximum logit (Hendrycks et al. 2022): ``-max_k z_k``. Shape ``(...)``."""
    return -check_logits(logits).float().amax(dim=-1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy (Liu et al. 2020): ``E(z) = -T * logsumexp(z / T)``. Shape ``(...)``.

    In-distribution inputs get low (very negative) energy, anomalies higher energy.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = check_logits(logits).float()
    return -temperature * torch.logsumexp(logits / temperature, dim=-1)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level negative log-likelihood in nats: ``logsumexp(z_t) - z_t[y_t]``.

    Args:
        logits: ``(B, L, V)``, ALREADY ALIGNED with ``targets`` (for a causal LM: logits[:, :-1] vs ids[:, 1:]).
        targets: ``(B, L)`` integer ids in ``[0, V)``; positions equal to ``-100`` get NLL 0 (use a mask to exclude them).
    Returns:
        ``(B, L)`` float tensor.
    """
    logits = check_logits(logits, min_dim=3)
    _check_targets(targets, logits)
    return _nll_from_lse(torch.logsumexp(logits.float(), dim=-1), logits, targets)


def _check_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)} (need logits.shape[:-1])")
    bad = int(((targets < 0) & (targets != -100) | (targets >= logits.shape[-1])).sum().item())
    if bad:
        raise ValueError(f"{bad} target id(s) outside [0, {logits.shape[-1]}) (and not -100); the vocabulary does not match the model")


def _nll_from_lse(lse: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``lse - z[y]`` with 0 where ``targets == -100`` (no log-softmax tensor of the full vocabulary is built)."""
    ignored = targets == -100
    picked = logits.gather(-1, targets.masked_fill(ignored, 0).long().unsqueeze(-1)).squeeze(-1).float()
    return (lse - picked).masked_fill(ignored, 0.0)


def _masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1)


def sequence_nll_score(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence mean token NLL (nats) over valid positions: ``(1/|M_b|) sum_{t in M_b} nll_{b,t}``. Shape ``(B,)``.

    ``mask`` defaults to ``targets != -100``. Divide by ``ln 2`` for bits per token (word / character).
    """
    return sequence_scores(logits, targets, mask, ("nll",))["nll"]


def sequence_uniform_xent_score(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence mean over valid positions of the token-level :func:`uniform_xent_score`. Shape ``(B,)``.

    This is the score the OE authors' language-model code recorded.
    """
    return sequence_scores(logits, None, mask, ("uniform_xent",))["uniform_xent"]


def sequence_scores(
    logits: torch.Tensor, targets: torch.Tensor | None, mask: torch.Tensor | None, names: tuple[str, ...] = ("nll", "uniform_xent")
) -> dict[str, torch.Tensor]:
    """Several per-sequence scores from ONE ``logsumexp`` over the vocabulary: ``{name: (B,)}``.

    ``"nll"`` (needs ``targets``, aligned with ``logits``) and ``"uniform_xent"`` are per-sequence means over the
    valid positions of ``mask`` (default: ``targets != -100``, or every position without targets).
    """
    logits = check_logits(logits, min_dim=3)
    unknown = set(names) - {"nll", "uniform_xent"}
    if unknown:
        raise ValueError(f"unknown sequence score(s) {sorted(unknown)}; choose from ('nll', 'uniform_xent')")
    if targets is not None:
        _check_targets(targets, logits)
    elif "nll" in names:
        raise ValueError("the 'nll' score needs targets")
    if mask is None:
        mask = targets != -100 if targets is not None else torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    mask = check_mask(mask, logits.shape[:-1])
    lse = torch.logsumexp(logits.float(), dim=-1)
    result = {}
    if "nll" in names:
        result["nll"] = _masked_row_mean(_nll_from_lse(lse, logits, targets), mask)
    if "uniform_xent" in names:
        result["uniform_xent"] = _masked_row_mean(logits.float().mean(dim=-1) - lse, mask)
    return result


#: Classifier (and token-level) scores by name (all take logits, higher = more anomalous).
SCORES = {
    "msp": msp_score,
    "uniform_xent": uniform_xent_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
}
#: Feature scores: they need statistics of the model's penultimate features fitted on training data, so they cannot
#: be computed from one batch's logits (:func:`example_scores` refuses them). ``OODDetector`` computes them
#: (``score="mahalanobis"`` after ``fit_mahalanobis``; :mod:`oe_common.maths.feature_scores`). ``"knn"`` (normalised
#: features, k-th nearest training neighbour) is computed by pipelines from the same features; ``OODDetector`` does
#: not save it yet and refuses it.
FEATURE_SCORES = {"mahalanobis": MahalanobisScore, "knn": KNNScore}


def abnormality_score(abnormality_logits: torch.Tensor) -> torch.Tensor:
    """Probability of "abnormal" from a model's own abnormality head (the MSP paper's abnormality module):
    ``sigmoid(a)``, computed in float64 (float32 saturates at 1 for logits above ~17). Shape ``(B,)``."""
    logits = check_logits(abnormality_logits)
    return torch.sigmoid(logits.double()).reshape(-1)


#: Output scores: models that carry their own anomaly head return its logit in a named output field; the score is a
#: function of that field (not of the class logits). ``name -> (output field, function)``.
OUTPUT_SCORES = {"abnormality": ("abnormality_logits", abnormality_score)}


def output_score(name: str, outputs: object) -> torch.Tensor:
    """The output score ``name`` (:data:`OUTPUT_SCORES`) of one batch of model ``outputs``, shape ``(B,)``."""
    field, function = OUTPUT_SCORES[name]
    value = outputs.get(field) if isinstance(outputs, Mapping) else getattr(outputs, field, None)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"score {name!r} needs a model whose output has {field!r} (a model with its own {name} head); "
                         f"{type(outputs).__name__} has none")
    return function(value)


#: The names computable from logits alone (what :func:`example_scores` and ``OETrainer`` take): :data:`SCORES` plus
#: ``"nll"`` (language models only: it needs the target ids).
LOGIT_SCORE_NAMES = (*SCORES, "nll")
#: THE registry of score names: the logit scores, then the feature scores, then the output scores. Pipelines may
#: offer a subset as their default selection; they validate it against this tuple.
SCORE_NAMES = (*LOGIT_SCORE_NAMES, *FEATURE_SCORES, *OUTPUT_SCORES)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with a causal LM's logits: ``out[:, t] = labels[:, t+1]``, ``-100`` at the last position.

    The Hugging Face causal-LM convention (position ``t`` predicts token ``t+1``): ``(B, L)`` -> ``(B, L)``, so the
    loss can use the logits unsliced. :func:`causal_shift` builds on it for the scores.
    """
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def causal_shift(
    logits: torch.Tensor, targets: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Align a causal LM's logits with the tokens they predict, dropping the last position (it predicts nothing).

    Args:
        logits: ``(B, L, V)``.
        targets: optional ``(B, L)`` ids the logits were computed from (or labels, ``-100`` = ignore).
        mask: optional ``(B, L)``, 1 = real token, 0 = padding (default: every position is real).
    Returns:
        ``logits[:, :-1]`` (a view), the ``(B, L-1)`` int64 targets ``targets[:, 1:]`` with ``-100`` wherever the
        position or its target is padding (``None`` without targets), and the ``(B, L-1)`` bool mask
        ``mask[:, :-1] & mask[:, 1:]`` of the scored positions.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, length, vocab), got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("need sequences of at least 2 tokens: the first token is never predicted")
    for name, value in (("targets", targets), ("mask", mask)):
        if value is not None and tuple(value.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"{name} shape {tuple(value.shape)} does not match logits {tuple(logits.shape)} (need logits.shape[:2])")
    real = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device) if mask is None else mask.to(logits.device).bool()
    valid = real[:, :-1] & real[:, 1:]
    if targets is not None:
        # the last column of shift_labels is all -100 (nothing left to predict): dropped with the last logits
        targets = shift_labels(targets.to(logits.device).long())[:, :-1].masked_fill(~valid, -100)
    return logits[:, :-1], targets, valid


def example_scores(
    logits: torch.Tensor,
    names: Sequence[str],
    *,
    targets: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-example anomaly scores of one batch of model outputs, ``{name: (B,)}`` (higher = more anomalous).

    * ``(B, K)`` classifier logits: ``SCORES[name](logits)`` (``"nll"`` is refused: it needs a language model).
    * ``(B, L, V)`` token logits: the per-sequence mean ``s_b = (1/|M_b|) sum_{t in M_b} s_{b,t}`` over the real
      positions ``M_b`` of ``mask`` (default: all). With ``causal=True`` position ``t`` scores the prediction of
      token ``t+1`` (:func:`causal_shift`). ``"nll"`` is the mean token NLL against ``targets`` (the input ids;
      ``-100`` = ignored: with ``"nll"`` among ``names`` those positions are dropped for every score);
      ``"uniform_xent"`` and ``"nll"`` share one ``logsumexp`` (:func:`sequence_scores`); the others average their
      token-level score.

    ``temperature`` is the energy score's ``T``. Names must be in :data:`LOGIT_SCORE_NAMES` (a feature score of
    :data:`FEATURE_SCORES` is refused: it needs fitted feature statistics).
    """
    own_head = [name for name in names if name in OUTPUT_SCORES]
    if own_head:
        raise ValueError(f"score(s) {own_head} read a model's own head, not logits: use OODDetector(score=...) or "
                         "oe_common.maths.scores.output_score(name, model_outputs)")
    features = [name for name in names if name in FEATURE_SCORES]
    if features:
        raise ValueError(f"score(s) {features} need the model's features and fitted statistics, not logits: "
                         "use OODDetector(score='mahalanobis') after detector.fit_mahalanobis(train_inputs, train_labels)")
    unknown = [name for name in names if name not in LOGIT_SCORE_NAMES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; choose from {LOGIT_SCORE_NAMES}")
    kwargs: Mapping[str, Mapping] = {"energy": {"temperature": temperature}}
    if logits.dim() == 2:
        if "nll" in names:
            raise ValueError("score='nll' needs token-level (language-model) logits; classifiers have msp, uniform_xent, energy, max_logit")
        return {name: SCORES[name](logits, **kwargs.get(name, {})) for name in names}
    if logits.dim() != 3:
        raise ValueError(f"expected (B, K) or (B, L, V) logits, got shape {tuple(logits.shape)}")
    if causal:
        logits, targets, mask = causal_shift(logits, targets, mask)
    else:
        mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device) if mask is None else mask.bool()
    result: dict[str, torch.Tensor] = {}
    sequence_names = tuple(name for name in names if name in ("nll", "uniform_xent"))
    if sequence_names:
        if "nll" in sequence_names:
            if not isinstance(targets, torch.Tensor):
                raise ValueError("score='nll' needs the target ids ('input_ids' or 'labels')")
            mask = mask & (targets != -100)
            targets = targets.masked_fill(~mask, -100)
        result.update(sequence_scores(logits, targets if "nll" in sequence_names else None, mask, sequence_names))
    for name in names:
        if name in result:
            continue
        per_token = SCORES[name](logits, **kwargs.get(name, {}))
        if not bool(mask.any(-1).all()):
            raise ValueError("a sequence has no real position to score (too short, or only padding)")
        weights = mask.to(per_token.dtype)
        result[name] = (per_token * weights).sum(-1) / weights.sum(-1)
    return result
