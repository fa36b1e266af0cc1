"""Outlier Exposure losses. Every loss is MINIMISED and returns a scalar tensor.

Full objective (paper eq. 1): ``E_in[L(f(x), y)] + lambda * E_OE[L_OE(f(x'))]``; the functions here are the
``L_OE`` terms (``lambda`` is applied by the caller, e.g. :class:`oe_common.training.trainer.OETrainer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..experiments._checks import check_logits, check_mask

__all__ = ["oe_uniform_loss", "uniform_cross_entropy", "joint_token_oe_loss", "energy_oe_loss", "confidence_branch_oe_loss", "density_margin_loss",
           "density_oe_loss", "pixelcnn_oe_loss", "BRANCH_EPS"]


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


class _JointTokenLosses(torch.autograd.Function):
    """Both terms of a language-model OE step from ONE ``(B_in + B_out, L, V)`` logits tensor; see
    :func:`joint_token_oe_loss`. The forward pass computes the gradient too, from one fused softmax over all rows, and
    saves it instead of the logits; the backward pass hands it over. So no split of the logits, no concatenation of
    two gradients, no zero-filled one-hot gradient (``F.cross_entropy``'s backward) and few full-size passes."""

    @staticmethod
    def forward(ctx, logits, labels, out_mask, oe_weight):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        n_in_rows = labels.numel()
        targets = labels.reshape(-1)
        valid_in = targets != -100
        safe = torch.where(valid_in, targets, 0).unsqueeze(1)
        # counts, weights and sums in float32 (at least): bf16 holds integers exactly only up to 256 (257 -> 256)
        acc = torch.promote_types(logits.dtype, torch.float32)
        count_in = valid_in.sum().to(acc).clamp_min(1.0)  # no valid label: loss_in = 0 and no gradient from it
        valid_out = None if out_mask is None else out_mask.reshape(-1)
        count_out = flat.shape[0] - n_in_rows if valid_out is None else valid_out.sum().to(acc)
        # gradient weight per row: 1/count_in on valid in-distribution tokens, oe_weight/count_out on valid outlier ones
        weight_in = (valid_in.to(acc) / count_in).unsqueeze(1)
        weight_out = oe_weight / count_out
        if valid_out is not None:
            weight_out = (valid_out.to(acc) * weight_out).unsqueeze(1)

        grad = torch.softmax(flat, -1)
        high, at = flat.max(-1, keepdim=True)
        lse = (high - grad.gather(1, at).log_()).squeeze(1)  # softmax at the max is 1 / sum exp(z - max)
        loss_in_rows = lse[:n_in_rows] - flat[:n_in_rows].gather(1, safe).squeeze(1)
        loss_in = torch.where(valid_in, loss_in_rows, 0.0).to(acc).sum() / count_in
        loss_out_rows = lse[n_in_rows:] - flat[n_in_rows:].mean(-1)
        if valid_out is None:
            loss_oe = loss_out_rows.to(acc).mean()
        else:
            loss_oe = torch.where(valid_out, loss_out_rows, 0.0).to(acc).sum() / count_out

        grad_in, grad_out = grad[:n_in_rows], grad[n_in_rows:]
        at_label = ((grad_in.gather(1, safe).to(acc) - 1.0) * weight_in).to(grad.dtype)  # w (softmax - 1), rounded once
        grad_in.mul_(weight_in).scatter_(1, safe, at_label)  # w (softmax - onehot)
        if valid_out is None:
            grad_out.mul_(weight_out).sub_(weight_out / vocab)  # w (softmax - 1/K)
        else:
            torch.addcmul(-weight_out / vocab, grad_out, weight_out, out=grad_out)
        ctx.save_for_backward(grad)
        ctx.shape = logits.shape
        loss = (loss_in + oe_weight * loss_oe).to(logits.dtype)
        loss_in, loss_oe = loss_in.to(logits.dtype), loss_oe.to(logits.dtype)
        ctx.mark_non_differentiable(loss_in, loss_oe)
        return loss, loss_in, loss_oe

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_in, _grad_oe):
        (grad,) = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
            # the usual case: hand over the saved gradient itself (autograd never writes into it: a leaf's .grad
            # gets a copy while the graph holds it), sparing a full-size allocation and its page faults
            return grad.reshape(ctx.shape), None, None, None
        return (grad * grad_loss).reshape(ctx.shape), None, None, None


def joint_token_oe_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    out_mask: torch.Tensor | None = None,
    oe_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One language-model OE step's loss from the joint logits of ``B_in`` in-distribution + ``B_out`` outlier windows.

    ``loss = loss_in + oe_weight * loss_oe`` with

    * ``loss_in  = mean_{labels != -100} [logsumexp(z) - z_label]`` over the first ``B_in`` rows (``F.cross_entropy``
      with ``ignore_index=-100``); 0, with no gradient, when no label is valid (``F.cross_entropy`` gives NaN there);
    * ``loss_oe  = mean_{out_mask} [logsumexp(z) - mean_k z_k]`` over the other rows (:func:`oe_uniform_loss`).

    Counts, weights and sums are float32 (float64 for float64 logits) whatever the logits' dtype; the per-element
    softmax and gradient stay in the logits' dtype (half precision keeps its memory saving).

    Args:
        logits: ``(B_in + B_out, L, V)`` floating point (in-distribution rows first).
        labels: ``(B_in, L)`` targets aligned with the logits (already shifted for a causal LM), -100 = ignore.
        out_mask: optional bool ``(B_out, L)``; False = padding. Rows of only padding raise.
        oe_weight: ``lambda`` of the OE term.

    Returns:
        ``(loss, loss_in, loss_oe)``: ``loss`` carries the gradient, the two terms are detached (for logging).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point (B_in + B_out, L, V) tensor, got {getattr(logits, 'shape', type(logits))}")
    n_in = labels.shape[0] if labels.dim() == 2 else -1
    if labels.dim() != 2 or tuple(labels.shape) != (n_in, logits.shape[1]) or not 0 < n_in < logits.shape[0]:
        raise ValueError(f"labels must be (B_in, L) with 0 < B_in < {logits.shape[0]} and L = {logits.shape[1]}, got {tuple(labels.shape)}")
    out_mask = check_mask(out_mask, torch.Size([logits.shape[0] - n_in, logits.shape[1]]), "out_mask")
    loss, loss_in, loss_oe = _JointTokenLosses.apply(logits, labels.long(), out_mask, float(oe_weight))
    if not torch.isfinite(loss_oe):
        check_logits(logits[n_in:], "logits")  # names the NaN/inf count, as oe_uniform_loss does
    return loss, loss_in, loss_oe


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


def density_oe_loss(
    nll_in: torch.Tensor, nll_out: torch.Tensor, num_subpixels: int, oe_lambda: float = 1.0, margin_per_subpixel: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OE objective of a density model (PixelCNN++, paper Sec. 4.3): likelihood plus margin, per subpixel.

    With ``D = num_subpixels`` and ``n = min(B, B')``::

        loss_in = mean_{i<B} nll_in_i / D
        loss_oe = mean_{i<n} max(0, m * D + nll_in_i - nll_out_i) / D        (density_margin_loss, m = margin_per_subpixel)
        loss    = loss_in + oe_lambda * loss_oe

    Dividing by ``D`` makes ``loss_in`` the model's own ``output.loss`` (mean nats per subpixel), so the learning
    rates of likelihood training apply (paper: ``oe_lambda = 1``, ``m = 1``).

    Args:
        nll_in: ``(B,)`` per-image nll (nats, summed over subpixels) of in-distribution images; all enter ``loss_in``.
        nll_out: ``(B',)`` the same for outliers, paired element-wise with the first ``n`` in-distribution images.
        num_subpixels: ``D = C * H * W``.

    Returns:
        ``(loss, loss_in, loss_oe)``, scalars (the margin term in float32).
    """
    if num_subpixels <= 0:
        raise ValueError(f"num_subpixels must be positive, got {num_subpixels}")
    n = min(len(nll_in), len(nll_out))
    loss_in = nll_in.mean() / num_subpixels
    loss_oe = density_margin_loss(nll_in[:n].float(), nll_out[:n].float(), margin_per_subpixel * num_subpixels) / num_subpixels
    return loss_in + oe_lambda * loss_oe, loss_in, loss_oe


def pixelcnn_oe_loss(
    nll_in: torch.Tensor,
    nll_out: torch.Tensor,
    num_subpixels: int,
    margin_per_subpixel: float = 1.0,
    oe_lambda: float = 1.0,
) -> torch.Tensor:
    """:func:`density_oe_loss` of paired batches (``nll_in`` and ``nll_out`` both ``(N,)``), the total only:
    ``[ mean_i nll_in_i + oe_lambda * mean_i max(0, m*D + nll_in_i - nll_out_i) ] / D``."""
    if nll_in.shape != nll_out.shape:
        raise ValueError(f"nll_in and nll_out must be paired (same shape), got {tuple(nll_in.shape)} and {tuple(nll_out.shape)}")
    return density_oe_loss(nll_in, nll_out, num_subpixels, oe_lambda, margin_per_subpixel)[0]
