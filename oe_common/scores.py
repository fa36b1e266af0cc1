"""Anomaly scores from logits. Convention: HIGHER score = MORE anomalous (anomalies are the positive class).

All functions take ``logits`` of shape ``(..., K)`` (last dim = classes or vocabulary) and return a tensor of
shape ``(...)``. The per-sequence scores take ``(B, L, V)`` logits and return ``(B,)``.

===================  =========================================================  ==========================
name                 formula (z = logits, p = softmax(z))                       uniform p scores
===================  =========================================================  ==========================
msp_score            ``-max_k p_k``                                             highest (= -1/K)
uniform_xent_score   ``-H(U, p) = (1/K) sum_k log p_k = mean(z) - logsumexp(z)``  highest (= -log K)
max_logit_score      ``-max_k z_k``                                             n/a (scale dependent)
energy_score         ``E(z) = -T * logsumexp(z / T)``                           n/a
===================  =========================================================  ==========================

``H(U, p) = KL(U || p) + log K`` is the OE training loss; it is smallest for a uniform prediction, hence the
minus sign so that uniform predictions (what OE teaches the model to output on outliers) score highest.
"""

from __future__ import annotations

import torch

from ._checks import check_logits, check_mask
from .feature_scores import MahalanobisScore

__all__ = [
    "msp_score",
    "uniform_xent_score",
    "max_logit_score",
    "energy_score",
    "token_nll",
    "sequence_nll_score",
    "sequence_uniform_xent_score",
    "sequence_scores",
    "SCORES",
    "MahalanobisScore",
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


#: Classifier scores by name (all take logits, higher = more anomalous).
SCORES = {
    "msp": msp_score,
    "uniform_xent": uniform_xent_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
}
