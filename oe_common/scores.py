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
import torch.nn.functional as F

from ._checks import check_logits, check_mask

__all__ = [
    "msp_score",
    "uniform_xent_score",
    "max_logit_score",
    "energy_score",
    "token_nll",
    "sequence_nll_score",
    "sequence_uniform_xent_score",
    "SCORES",
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
        targets: ``(B, L)`` integer ids; positions equal to ``-100`` get NLL 0 (use a mask to exclude them).
    Returns:
        ``(B, L)`` float tensor.
    """
    logits = check_logits(logits, min_dim=3)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)} (need logits.shape[:-1])")
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), reduction="none", ignore_index=-100)
    return flat.view(targets.shape)


def _masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1)


def sequence_nll_score(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence mean token NLL (nats) over valid positions: ``(1/|M_b|) sum_{t in M_b} nll_{b,t}``. Shape ``(B,)``.

    ``mask`` defaults to ``targets != -100``. Divide by ``ln 2`` for bits per token (word / character).
    """
    nll = token_nll(logits, targets)
    mask = check_mask(targets != -100 if mask is None else mask, nll.shape)
    return _masked_row_mean(nll, mask)


def sequence_uniform_xent_score(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence mean over valid positions of the token-level :func:`uniform_xent_score`. Shape ``(B,)``.

    This is the score the OE authors' language-model code recorded.
    """
    per_token = uniform_xent_score(check_logits(logits, min_dim=3))
    mask = check_mask(torch.ones_like(per_token, dtype=torch.bool) if mask is None else mask, per_token.shape)
    return _masked_row_mean(per_token, mask)


#: Classifier scores by name (all take logits, higher = more anomalous).
SCORES = {
    "msp": msp_score,
    "uniform_xent": uniform_xent_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
}
