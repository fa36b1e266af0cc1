"""Decision thresholds for an anomaly score: flag an input when ``score > t``.

Two rules, both on held-out scores and both exact on the observed values (no interpolation):
:func:`threshold_for_fpr` caps the false-alarm rate on in-distribution data, :func:`threshold_for_tpr` reaches a
detection rate on held-out anomalies. :func:`fit_threshold` applies one of them and records what it achieved;
:class:`~oe_common.deployment.detector.OODDetector` fits its threshold with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .metrics import _real_number, as_score_array

__all__ = ["check_threshold", "check_threshold_target", "fit_threshold", "threshold_for_fpr", "threshold_for_tpr"]


def _check_target_fpr(target_fpr: Any) -> float:
    value = _real_number(target_fpr)
    if value is None or not 0.0 <= value < 1.0:
        raise ValueError(f"target_fpr must be a number in [0, 1), got {target_fpr!r}")
    return value


def _check_target_tpr(target_tpr: Any) -> float:
    value = _real_number(target_tpr)
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(f"target_tpr must be a number in (0, 1], got {target_tpr!r}")
    return value


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float; NaN / inf refused (``score > NaN`` is always False: nothing would ever be flagged)."""
    value = _real_number(threshold)
    if value is None or not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
    return value


def check_threshold_target(target_fpr: Any, target_tpr: Any, has_out_data: bool) -> tuple[str, float]:
    """``("target_fpr" | "target_tpr", value)``: exactly one valid target; ``target_tpr`` needs anomalies."""
    if (target_fpr is None) == (target_tpr is None):
        raise ValueError("give exactly one of target_fpr (in-distribution data only) or target_tpr (needs out_data)")
    if target_fpr is not None:
        return "target_fpr", _check_target_fpr(target_fpr)
    if not has_out_data:
        raise ValueError(
            "target_tpr needs held-out anomalies: fit_threshold(in_data, out_data, target_tpr=...); "
            "with in-distribution data only use target_fpr"
        )
    return "target_tpr", _check_target_tpr(target_tpr)


def threshold_for_fpr(in_scores: Any, target_fpr: float) -> float:
    """Threshold flagging at most ``target_fpr`` of the held-out in-distribution ``in_scores`` (flag = ``score > t``).

    Rule: with ``n`` scores sorted ascending ``s_(1) <= ... <= s_(n)`` and ``k = floor(target_fpr * n)`` (the
    largest allowed number of flagged examples), ``t = s_(n-k)``: the (1 - f) quantile, taken on the observed
    values. Then ``#{s_i > t} <= k`` (strictly fewer when several scores tie at ``t``: ties are never flagged,
    the conservative choice), and every ``t' < t`` flags ``#{s_i >= t} >= k + 1`` examples, more than allowed.

    Args:
        in_scores: ``(n,)`` anomaly scores of held-out in-distribution examples.
        target_fpr: allowed false-positive rate, in ``[0, 1)``.
    """
    target_fpr = _check_target_fpr(target_fpr)
    scores = np.sort(as_score_array(in_scores, "in_scores"))
    n = scores.size
    k = int(math.floor(round(target_fpr * n, 9)))  # round(): 0.29 * 100 = 28.999999999999996 must give 29
    return float(scores[n - k - 1])


def threshold_for_tpr(in_scores: Any, out_scores: Any, target_tpr: float) -> float:
    """Highest threshold flagging at least ``ceil(target_tpr * m)`` of the ``m`` held-out anomalies (flag = ``score > t``).

    With ``j = ceil(target_tpr * m)`` and ``o*`` the ``j``-th largest anomaly score, ``t`` is the largest
    observed score (in-distribution or anomaly) strictly below ``o*`` (``nextafter(o*, -inf)`` when there is
    none). The flagged set on the fitting data is then ``{score >= o*}``: the first ROC point whose TPR reaches
    ``target_tpr``, so the in-distribution flag rate equals :func:`oe_common.maths.metrics.fpr_at_recall`.

    Args:
        in_scores: ``(n,)`` held-out in-distribution scores (used for the candidate thresholds).
        out_scores: ``(m,)`` held-out anomaly scores.
        target_tpr: fraction of anomalies to detect, in ``(0, 1]``.
    """
    target_tpr = _check_target_tpr(target_tpr)
    ins = as_score_array(in_scores, "in_scores")
    outs = np.sort(as_score_array(out_scores, "out_scores"))
    m = outs.size
    j = max(1, int(math.ceil(round(target_tpr * m, 9))))
    o_star = outs[m - j]
    pooled = np.concatenate([ins, outs])
    below = pooled[pooled < o_star]
    return float(below.max()) if below.size else float(np.nextafter(o_star, -np.inf))


def fit_threshold(
    in_scores: Any, out_scores: Any = None, *, target_fpr: float | None = None, target_tpr: float | None = None
) -> tuple[float, dict[str, Any]]:
    """``(threshold, info)`` from HELD-OUT scores (never the test anomalies you report), for exactly one target:

    * ``target_fpr=f``: flag at most a fraction ``f`` of the in-distribution ``in_scores`` ``(n,)``
      (:func:`threshold_for_fpr`); ``out_scores`` ``(m,)``, if given, only report the achieved TPR.
    * ``target_tpr=r``: flag at least a fraction ``r`` of the anomalies ``out_scores`` (required) with the highest
      such threshold (:func:`threshold_for_tpr`).

    ``info`` records the rule and the achieved rates: ``{"rule", <rule>: target, "n_in", "achieved_fpr"}`` (+
    ``"n_out", "achieved_tpr"`` with anomalies).
    """
    rule, target = check_threshold_target(target_fpr, target_tpr, out_scores is not None)
    ins = as_score_array(in_scores, "in_scores")
    outs = None if out_scores is None else as_score_array(out_scores, "out_scores")
    threshold = threshold_for_fpr(ins, target) if rule == "target_fpr" else threshold_for_tpr(ins, outs, target)
    info: dict[str, Any] = {"rule": rule, rule: target}
    info.update({"n_in": int(ins.size), "achieved_fpr": float(np.mean(ins > threshold))})
    if outs is not None:
        info.update({"n_out": int(outs.size), "achieved_tpr": float(np.mean(outs > threshold))})
    return threshold, info
