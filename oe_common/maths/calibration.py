"""Calibration under distribution shift (paper §4.4, App. C).

* confidence ``c = max_k softmax(z / T)_k``, ``T`` fitted on held-out in-distribution data (:func:`fit_temperature`);
* 0-1 posterior rescaling ``(c - 1/K) / (1 - 1/K)`` (:func:`rescale_01`);
* RMS / MAV calibration error with adaptive bins of ``bin_size`` examples (:func:`calibration_errors`);
* soft F1 (:func:`soft_f1`);
* the paper's test mixture, in-distribution test set plus anomalies counted as wrong (:func:`calibration_report`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..experiments._checks import check_logits
from .metrics import as_score_array

__all__ = ["fit_temperature", "rescale_01", "calibration_errors", "soft_f1", "calibration_report", "max_softmax_confidence"]


def _nll_and_slope(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """Mean NLL of ``softmax(beta * z)`` and its derivative in ``beta`` (= E_p[z] - z_y, averaged)."""
    scaled = beta * logits
    log_probs = scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)
    label_logits = logits.gather(1, labels[:, None]).squeeze(1)
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1).mean()
    slope = ((log_probs.exp() * logits).sum(-1) - label_logits).mean()
    return float(nll), float(slope)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, t_min: float = 1e-2, t_max: float = 1e2, tol: float = 1e-10) -> float:
    """Temperature ``T > 0`` minimising the mean NLL of ``softmax(z / T)`` on held-out data.

    The NLL is convex in ``beta = 1/T`` (a log-sum-exp minus a linear term), so its derivative
    ``E_{softmax(beta z)}[z] - z_y`` is non-decreasing; bisection on its sign finds the minimum.

    Args:
        logits: ``(N, K)`` held-out in-distribution logits.
        labels: ``(N,)`` class indices.
        t_min, t_max: search bracket; a minimum at the edge raises (the data then do not pin T down).
    """
    logits = check_logits(torch.as_tensor(logits), min_dim=2).double()
    labels = torch.as_tensor(labels).long()
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}]")
    lo, hi = 1.0 / t_max, 1.0 / t_min
    if _nll_and_slope(logits, labels, lo)[1] >= 0 or _nll_and_slope(logits, labels, hi)[1] <= 0:
        raise ValueError(f"the NLL minimum over T lies outside [{t_min}, {t_max}] (e.g. 100% or chance-level accuracy); widen the bracket or check the data")
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if _nll_and_slope(logits, labels, mid)[1] > 0:
            hi = mid
        else:
            lo = mid
    return 1.0 / (0.5 * (lo + hi))


def max_softmax_confidence(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """``max_k softmax(z / T)_k`` as a float64 array of shape ``(N,)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = check_logits(torch.as_tensor(logits)).double()
    return torch.softmax(logits / temperature, dim=-1).amax(-1).cpu().numpy()


def rescale_01(confidence: Any, num_classes: int) -> np.ndarray:
    """0-1 posterior rescaling: ``(c - 1/K) / (1 - 1/K)``, mapping ``[1/K, 1]`` onto ``[0, 1]``."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    c = as_score_array(confidence, "confidence")
    return (c - 1.0 / num_classes) / (1.0 - 1.0 / num_classes)


def _confidence_and_correct(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = as_score_array(confidence, "confidence")
    ok = np.asarray(correct.detach().cpu() if hasattr(correct, "detach") else correct)
    if ok.shape != c.shape:
        raise ValueError(f"confidence has {c.size} values but correct has shape {ok.shape}; give one flag per prediction")
    if ok.dtype != bool:
        if not np.isin(ok, (0, 1)).all():
            raise ValueError("correct must be boolean (or 0/1)")
        ok = ok.astype(bool)
    return c, ok


def calibration_errors(confidence: Any, correct: Any, bin_size: int = 100) -> dict[str, float]:
    """RMS and mean-absolute (MAV) calibration error with adaptive bins.

    Sort by confidence; cut consecutive bins of ``bin_size`` examples; the remainder (< ``bin_size``) joins the
    last bin; EVERY bin is counted (the released code drops the last bin: not copied). With ``n_b`` examples,
    accuracy ``acc_b`` and mean confidence ``conf_b`` in bin b:

    ``rms = sqrt(sum_b n_b/n (acc_b - conf_b)^2)``, ``mav = sum_b n_b/n |acc_b - conf_b|``.
    """
    c, ok = _confidence_and_correct(confidence, correct)
    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    order = np.argsort(c, kind="stable")
    c, ok = c[order], ok[order].astype(np.float64)
    n_bins = max(1, c.size // bin_size)
    edges = [b * bin_size for b in range(n_bins)] + [c.size]
    sq, ab = 0.0, 0.0
    for start, stop in zip(edges[:-1], edges[1:]):
        gap = ok[start:stop].mean() - c[start:stop].mean()
        weight = (stop - start) / c.size
        sq += weight * gap * gap
        ab += weight * abs(gap)
    return {"rms": float(math.sqrt(sq)), "mav": float(ab)}


def soft_f1(confidence: Any, correct: Any) -> float:
    """Soft F1 for detecting wrong predictions with ``1 - c`` as the soft "wrong" vote.

    ``tp = sum (1-c_i)[wrong_i]``, ``fp = sum (1-c_i)[right_i]``, ``fn = sum c_i [wrong_i]``, ``F1 = 2tp / (2tp + fp + fn)``.
    """
    c, ok = _confidence_and_correct(confidence, correct)
    wrong = ~ok
    tp = float(((1 - c) * wrong).sum())
    fp = float(((1 - c) * ok).sum())
    fn = float((c * wrong).sum())
    if 2 * tp + fp + fn == 0:
        raise ValueError("soft F1 is undefined: no wrong predictions and every confidence is 1")
    return 2 * tp / (2 * tp + fp + fn)


def calibration_report(
    in_logits: torch.Tensor,
    in_labels: torch.Tensor,
    out_logits: torch.Tensor | None = None,
    temperature: float | None = None,
    rescale: bool = False,
    bin_size: int = 100,
) -> dict[str, float]:
    """Calibration on the paper's mixture: in-distribution test examples plus anomalies counted as WRONG.

    ``out_logits`` should already be drawn at the wanted base rate (the paper: ``len(in) // 5``).
    Returns ``{"rms", "mav", "soft_f1", "temperature", "n_in", "n_out", "accuracy_in"}``.
    """
    in_logits = check_logits(torch.as_tensor(in_logits), "in_logits", min_dim=2)
    in_labels = torch.as_tensor(in_labels)
    if in_labels.shape != in_logits.shape[:1]:
        raise ValueError(f"in_labels has shape {tuple(in_labels.shape)}, expected ({in_logits.shape[0]},)")
    t = 1.0 if temperature is None else float(temperature)
    conf = [max_softmax_confidence(in_logits, t)]
    correct = [(in_logits.argmax(-1).cpu() == in_labels.cpu()).numpy()]
    n_out = 0
    if out_logits is not None:
        out_logits = check_logits(torch.as_tensor(out_logits), "out_logits", min_dim=2)
        if out_logits.shape[-1] != in_logits.shape[-1]:
            raise ValueError(f"out_logits have {out_logits.shape[-1]} classes, in_logits {in_logits.shape[-1]}")
        conf.append(max_softmax_confidence(out_logits, t))
        correct.append(np.zeros(out_logits.shape[0], dtype=bool))
        n_out = out_logits.shape[0]
    c, ok = np.concatenate(conf), np.concatenate(correct)
    if rescale:
        c = rescale_01(c, in_logits.shape[-1])
    return {
        **calibration_errors(c, ok, bin_size),
        "soft_f1": soft_f1(c, ok),
        "temperature": t,
        "n_in": int(in_logits.shape[0]),
        "n_out": int(n_out),
        "accuracy_in": float(correct[0].mean()),
    }
