"""Outlier Exposure losses. Every loss is MINIMISED and returns a scalar tensor.

Full objective (paper eq. 1): ``E_in[L(f(x), y)] + lambda * E_OE[L_OE(f(x'))]``; the functions here are the
``L_OE`` terms (``lambda`` is applied by the caller, e.g. :class:`oe_common.trainer.OETrainer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._checks import check_logits, check_mask

__all__ = ["oe_uniform_loss", "uniform_cross_entropy", "energy_oe_loss", "confidence_branch_oe_loss", "density_margin_loss", "BRANCH_EPS"]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return values[mask].mean()


class _UniformCrossEntropy(torch.autograd.Function):
    """``H(U, softmax(z)) = logsumexp(z) - mean_k z_k`` over the last dim, with a one-pass backward
    ``dH/dz = softmax(z) - 1/K`` (autograd's version of the two terms allocates and sums several full-size
    gradients: measured ~1.6x slower for language-model logits, see ``bench/oe_step_bench.py``)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse)
        return lse - logits.mean(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        logits, lse = ctx.saved_tensors
        grad = torch.exp(logits - lse.unsqueeze(-1))
        grad.sub_(1.0 / logits.shape[-1]).mul_(grad_output.unsqueeze(-1))
        return grad


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position ``H(U, softmax(z)) = logsumexp(z) - mean_k z_k``: shape ``logits.shape[:-1]``."""
    return _UniformCrossEntropy.apply(logits)


def oe_uniform_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy from the uniform distribution to ``softmax(z)``, averaged over outlier positions.

    ``L = mean_{valid positions} [logsumexp(z) - mean_k z_k]`` = ``mean [KL(U || p) + log K]`` (same gradient as KL).

    Args:
        logits: ``(N, K)`` for classifiers or ``(B, L, V)`` for language models.
        mask: optional bool mask of shape ``logits.shape[:-1]``; False = padding. Rows of only padding raise.
    """
    logits = check_logits(logits)
    mask = check_mask(mask, logits.shape[:-1])
    return _masked_mean(uniform_cross_entropy(logits), mask)


def energy_oe_loss(
    in_logits: torch.Tensor,
    out_logits: torch.Tensor,
    m_in: float = -25.0,
    m_out: float = -7.0,
    in_mask: torch.Tensor | None = None,
    out_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Energy-bounded OE loss (Liu et al. 2020) with ``E(z) = -logsumexp(z)``.

    ``L = mean_in relu(E_in - m_in)^2 + mean_out relu(m_out - E_out)^2``: in-distribution energies are pushed
    below ``m_in``, outlier energies above ``m_out``. (Liu et al. weight this term by 0.1: set ``oe_lambda``.)
    """
    in_logits, out_logits = check_logits(in_logits, "in_logits"), check_logits(out_logits, "out_logits")
    in_mask = check_mask(in_mask, in_logits.shape[:-1], "in_mask")
    out_mask = check_mask(out_mask, out_logits.shape[:-1], "out_mask")
    energy_in = -torch.logsumexp(in_logits, dim=-1)
    energy_out = -torch.logsumexp(out_logits, dim=-1)
    return _masked_mean(F.relu(energy_in - m_in) ** 2, in_mask) + _masked_mean(F.relu(m_out - energy_out) ** 2, out_mask)


#: Clamp of the confidence ``b`` before the log in :func:`confidence_branch_oe_loss`, as DeVries & Taylor's code clamps ``b``.
BRANCH_EPS = 1e-12


def confidence_branch_oe_loss(branch_logits_out: torch.Tensor, eps: float = BRANCH_EPS) -> torch.Tensor:
    """OE term for a confidence branch (DeVries & Taylor 2018): ``E_OE[log clamp(b(x), eps, 1 - eps)]``, ``b = sigmoid(logit)``.

    Minimising it drives the confidence ``b`` to 0 on outliers; the paper adds it with weight 0.5. The clamp (their
    code's ``eps = 1e-12``) bounds it below by ``log(eps)`` (about -27.6): unclamped, ``E[log b]`` is unbounded below
    and training diverges (branch logits of outliers reached -1e24 within 20 steps in our runs); outliers with
    ``b < eps`` add no gradient. Computed as ``mean(logsigmoid(clamp(logit, logit(eps), logit(1 - eps))))`` (the same,
    as ``sigmoid`` is monotone, and stable), in float32 for half-precision input. Input shape ``(N,)`` or ``(N, 1)``.
    """
    if not isinstance(branch_logits_out, torch.Tensor) or branch_logits_out.numel() == 0:
        raise ValueError("branch_logits_out must be a non-empty tensor of confidence-branch logits")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    logits = branch_logits_out.reshape(-1)
    bad = int((~torch.isfinite(logits)).sum().item())
    if bad:
        raise ValueError(f"branch_logits_out contains {bad} NaN/inf value(s)")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    bound = math.log((1.0 - eps) / eps)  # logit(1 - eps) = -logit(eps)
    return F.logsigmoid(logits.clamp(-bound, bound)).mean()


def density_margin_loss(nll_in: torch.Tensor, nll_out: torch.Tensor, margin: float) -> torch.Tensor:
    """Margin ranking loss for density models with OE: ``mean_i max(0, margin + nll_in_i - nll_out_i)``.

    Args:
        nll_in: ``(N,)`` negative log-likelihoods (nats, summed over the subpixels of each image) of in-distribution data.
        nll_out: ``(N,)`` the same for outliers, paired element-wise with ``nll_in``.
        margin: in nats for the whole example; the paper uses ``1 * D`` (1 nat per subpixel, D subpixels).
    """
    if nll_in.shape != nll_out.shape or nll_in.dim() != 1:
        raise ValueError(f"nll_in and nll_out must be 1-D of the same length (paired examples), got {tuple(nll_in.shape)} and {tuple(nll_out.shape)}")
    if nll_in.numel() == 0:
        raise ValueError("density_margin_loss needs at least one pair")
    bad = int((~torch.isfinite(nll_in)).sum().item() + (~torch.isfinite(nll_out)).sum().item())
    if bad:
        raise ValueError(f"nll_in/nll_out contain {bad} NaN/inf value(s)")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return F.relu(margin + nll_in - nll_out).mean()
