"""Detection metrics for anomaly scores.

Details: docs/modules.md, section ``oe_common.maths.metrics``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ood_metrics",
    "fpr_at_recall",
    "sample_base_rate",
    "evaluate_ood",
    "check_n_draws",
    "OODTable",
    "base_rate_label",
    "sampling_label",
    "draw_summary",
    "mean_summary",
    "misclassification_metrics",
    "bootstrap_ood_metrics",
    "as_score_array",
    "roc_curve_points",
    "fpr_key",
]

METRIC_KEYS = ("auroc", "aupr_out", "aupr_in", "fpr")


def as_score_array(scores: Any, name: str = "scores") -> np.ndarray:
    """Convert a list / numpy array / torch tensor (CPU or GPU) of scores to a finite 1-D float64 array.

    Raises:
        ValueError: the input is not 1-D, is empty, or holds NaN/inf (the message gives the count).
    """
    if hasattr(scores, "detach"):  # torch.Tensor, possibly on a GPU
        scores = scores.detach().cpu().double().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per example), got shape {array.shape}; flatten or pick a score per example")
    if array.size == 0:
        raise ValueError(f"{name} is empty: both the in-distribution and the anomaly side need at least one score")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s) out of {array.size}; fix the model or the score before computing metrics")
    return array


def _real_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (Python or NumPy), else None.

    Bools are not numbers here (``True`` is not a rate). A NumPy float keeps its decimal value
    (``np.float32(0.95)`` -> ``0.95``, not ``0.949999988...``) through its shortest repr.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(str(value)) if isinstance(value, np.floating) else float(value)


def _check_recall_level(recall_level: float) -> float:
    value = _real_number(recall_level)
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(f"recall_level must be a number in (0, 1] (e.g. 0.95 for FPR95), got {recall_level!r}")
    return value


@dataclass(frozen=True)
class _GroupedCurve:
    """Counts per distinct score, thresholds in DESCENDING score order.

    ``tps[k]`` / ``fps[k]``: anomalies / in-distribution examples scored >= the k-th distinct score.
    """

    tps: np.ndarray
    fps: np.ndarray
    n_out: int
    n_in: int


def _grouped_curve(in_scores: np.ndarray, out_scores: np.ndarray) -> _GroupedCurve:
    scores = np.concatenate([out_scores, in_scores])
    is_out = np.zeros(scores.size, dtype=np.int64)
    is_out[: out_scores.size] = 1
    order = np.argsort(scores)[::-1]  # the one sort; ties are grouped below, so its stability does not matter
    sorted_scores = scores[order]
    last_of_group = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    last_of_group = np.append(last_of_group, scores.size - 1)
    tps = np.cumsum(is_out[order])[last_of_group]
    fps = last_of_group + 1 - tps
    return _GroupedCurve(tps=tps, fps=fps, n_out=out_scores.size, n_in=in_scores.size)


def _sortable(scores: Any, name: str) -> np.ndarray:
    """Validated 1-D scores to sort. float32 input stays float32 (half the bytes to sort and merge, and every
    comparison -- hence every metric -- is the same as after a float64 cast); anything else is
    :func:`as_score_array`'s float64."""
    if hasattr(scores, "detach") and str(scores.dtype) == "torch.float32":
        scores = scores.detach().cpu().numpy()
    if isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.ndim == 1 and scores.size:
        if np.isfinite(scores).all():
            return scores
    return as_score_array(scores, name)


def _fpr_at_recall_sorted(in_sorted: np.ndarray, out_sorted: np.ndarray, recall_level: float) -> float:
    """FPR at the first ROC point (descending thresholds) whose TPR ``= T / N_out >= recall_level``.

    That point's threshold is the ``T*``-th largest anomaly score, ``T*`` the least count passing the test (done in
    float64 exactly as ``tps / tps[-1]`` in scikit-learn, so the boundary case agrees bit for bit).
    """
    n_out = out_sorted.size
    needed = min(max(int(np.ceil(recall_level * n_out)), 1), n_out)
    while needed > 1 and (needed - 1) / n_out >= recall_level:
        needed -= 1
    while needed / n_out < recall_level:
        needed += 1
    threshold = out_sorted[n_out - needed]
    return (in_sorted.size - int(np.searchsorted(in_sorted, threshold, side="left"))) / in_sorted.size


def _distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(distinct values, count of values <= each)`` of an ascending array; ``(the array, None)`` if no value repeats."""
    last = np.empty(sorted_values.size, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=last[:-1])
    last[-1] = True
    if last.all():
        return sorted_values, None
    ends = np.flatnonzero(last)
    return sorted_values[ends], ends + 1


def _take_count(cum: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    """``[0, *cum][index]``: how many scores the first ``index`` distinct values hold (``index`` itself if no ties)."""
    if cum is None:
        return index
    return np.concatenate([[0], cum])[index]


def _weighted_sum(values: np.ndarray, cum: np.ndarray | None) -> float:
    """``sum_u values_u c_u`` with ``c_u`` the scores per distinct value (all 1 without ties)."""
    return float(np.sum(values) if cum is None else np.sum(values * np.diff(cum, prepend=0)))


def fpr_key(recall_level: float) -> str:
    """``"fpr95"`` for ``recall_level = 0.95``: the name of the FPR at that recall in rows and records."""
    return f"fpr{round(recall_level * 100):d}"


def _metrics_sorted(in_sorted: np.ndarray, out_sorted: np.ndarray, recall_level: float,
                    more_levels: Sequence[float] = ()) -> dict[str, float]:
    """The four metrics from the two sides each sorted ascending (values only: no argsort of the scores); with
    ``more_levels``, also ``fpr<N>`` (:func:`fpr_key`) at each of those recall levels, from the same two sides.

    Each side is reduced to its distinct values ``u`` with counts ``c`` (a linear scan), and one stable merge of the
    two lists (timsort on two sorted runs: linear) gives, for each distinct value of one side, how many distinct
    values of the other side lie below it (in-distribution first among equal values). Then with exact integer
    counts ``#in<``, ``#in<=``, ``#out<``, ``#out<=`` (``N = N_in + N_out``):

    * ``auroc    = sum_{u out} c_u (#in<(u) + #in<=(u)) / (2 N_in N_out)`` (ties count half, scikit-learn's
      trapezoid);
    * ``aupr_out = sum_{u out} c_u T_u / (T_u + N_in - #in<(u)) / N_out`` with ``T_u = N_out - #out<(u)`` anomalies
      ``>= u`` (``sum_k (R_k - R_{k-1}) P_k`` over descending thresholds);
    * ``aupr_in  = sum_{u in} c_u #in<=(u) / (#in<=(u) + #out<=(u)) / N_in`` (in-distribution positive, scores
      negated).
    """
    n_in, n_out = in_sorted.size, out_sorted.size
    fpr = _fpr_at_recall_sorted(in_sorted, out_sorted, recall_level)
    fprs = {fpr_key(level): _fpr_at_recall_sorted(in_sorted, out_sorted, level) for level in more_levels}
    in_values, in_cum = _distinct(in_sorted)
    out_values, out_cum = _distinct(out_sorted)
    m_in, m_out = in_values.size, out_values.size
    order = np.argsort(np.concatenate([in_values, out_values]), kind="stable")
    is_out = order >= m_in
    del order

    # anomalies' side: distinct in-distribution values <= u (they come first among equals), < u when the last equals u
    in_le = np.flatnonzero(is_out)
    in_le -= np.arange(m_out)
    tied = in_values[np.maximum(in_le - 1, 0)] == out_values
    tied &= in_le > 0
    in_lt = in_le - tied
    count_le, count_lt = _take_count(in_cum, in_le), _take_count(in_cum, in_lt)
    del in_le, in_lt, tied
    auroc = _weighted_sum(count_lt + count_le, out_cum) / (2 * n_in * n_out)
    del count_le
    above = n_out - _take_count(out_cum, np.arange(m_out))  # anomalies >= u
    ratios = above / (above + (n_in - count_lt))
    del above, count_lt
    aupr_out = _weighted_sum(ratios, out_cum) / n_out
    del ratios

    # in-distribution side: distinct anomaly values < u, <= u when the next one equals u
    out_lt = np.flatnonzero(~is_out)
    out_lt -= np.arange(m_in)
    del is_out
    tied = out_values[np.minimum(out_lt, m_out - 1)] == in_values
    tied &= out_lt < m_out
    out_le = out_lt + tied
    del out_lt, tied
    in_le_count = np.arange(1, n_in + 1) if in_cum is None else in_cum
    ratios = in_le_count / (in_le_count + _take_count(out_cum, out_le))
    del out_le
    aupr_in = _weighted_sum(ratios, in_cum) / n_in
    return {"auroc": auroc, "aupr_out": aupr_out, "aupr_in": aupr_in, "fpr": fpr, **fprs}


def ood_metrics(in_scores: Any, out_scores: Any, recall_level: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR (anomalies positive and in-distribution positive) and FPR at ``recall_level``.

    Args:
        in_scores: ``(N_in,)`` anomaly scores of in-distribution examples (list, numpy array or torch tensor).
        out_scores: ``(N_out,)`` anomaly scores of anomalies.
        recall_level: fraction of anomalies to detect for the FPR (0.95 -> FPR95).

    Returns:
        ``{"auroc", "aupr_out", "aupr_in", "fpr"}``, each a fraction in ``[0, 1]``.
    """
    recall_level = _check_recall_level(recall_level)
    in_sorted = np.sort(_sortable(in_scores, "in_scores"))
    out_sorted = np.sort(_sortable(out_scores, "out_scores"))
    return _metrics_sorted(in_sorted, out_sorted, recall_level)


def roc_curve_points(in_scores: Any, out_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of every distinct threshold, starting at ``(0, 0)`` (for plotting ROC curves)."""
    curve = _grouped_curve(as_score_array(in_scores, "in_scores"), as_score_array(out_scores, "out_scores"))
    return np.concatenate([[0.0], curve.fps / curve.n_in]), np.concatenate([[0.0], curve.tps / curve.n_out])


def fpr_at_recall(in_scores: Any, out_scores: Any, recall_level: float = 0.95) -> float:
    """Fraction of in-distribution examples flagged at the first ROC point whose TPR >= ``recall_level``."""
    return ood_metrics(in_scores, out_scores, recall_level)["fpr"]


def sample_base_rate(out_scores: Any, n_in: int, rng: np.random.Generator, ratio: int = 5, allow_small_sets: bool = False) -> np.ndarray:
    """Draw ``n_in // ratio`` anomaly scores without replacement (the paper's 1 : ``ratio`` base rate).

    Raises:
        ValueError: fewer than ``n_in // ratio`` anomalies exist, unless ``allow_small_sets``: then all of them are
            used, a lower base rate that :func:`evaluate_ood` records (``capped``, ``base_rate``) and labels.
    """
    out_scores = as_score_array(out_scores, "out_scores")
    wanted = _wanted_anomalies(n_in, ratio)
    if out_scores.size < wanted:
        if not allow_small_sets:
            raise ValueError(_too_small_message([f"only {out_scores.size} anomaly scores"], n_in, ratio, wanted))
        return out_scores.copy()
    return out_scores[rng.choice(out_scores.size, size=wanted, replace=False)]


def _wanted_anomalies(n_in: int, ratio: int) -> int:
    if not (isinstance(ratio, (int, np.integer)) and not isinstance(ratio, bool) and ratio >= 1):
        raise ValueError(f"ratio must be an integer >= 1 (5 for the paper's 1:5 base rate), got {ratio!r}")
    wanted = n_in // ratio
    if wanted < 1:
        raise ValueError(f"{n_in} in-distribution scores give n_in // {ratio} = 0 anomalies; use more in-distribution data")
    return int(wanted)


def _too_small_message(sets: list[str], n_in: int, ratio: int, wanted: int) -> str:
    return (
        f"{'; '.join(sets)}, fewer than n_in // {ratio} = {wanted} (n_in = {n_in}): the 1:{ratio} base rate cannot be drawn; "
        f"give more anomalies (or fewer in-distribution examples), or pass allow_small_sets=True to use each small set whole "
        f"(a lower base rate, one distinct draw, labelled in the table)"
    )


def base_rate_label(n_in: int, n_out: int, ratio: int, capped: bool) -> str:
    """``"1:5"`` for the requested 1 : ``ratio``; a capped set's achieved ``1 : n_in / n_out`` (``"1:10"``, ``"1:3.33"``)."""
    return f"1:{n_in / n_out:.3g}" if capped else f"1:{ratio}"


def sampling_label(base_rate: str, n_draws: int) -> str:
    """``"1:10, 1 draw"``: the base rate and the number of distinct draws that ran."""
    return f"{base_rate}, {n_draws} draw{'' if n_draws == 1 else 's'}"


def draw_summary(draws: Sequence[Mapping[str, float]], keys: Sequence[str], n_in: int, n_out: int, n_available: int,
                 ratio: int) -> dict[str, Any]:
    """One anomaly set's row: what ran (``n_in``, ``n_out`` per draw, ``n_out_wanted = n_in // ratio``,
    ``n_out_available``, ``capped``, distinct ``n_draws``, ``base_rate``) and, per key, the mean and ``_std`` over
    ``draws``."""
    wanted = n_in // ratio
    capped = n_out < wanted
    row: dict[str, Any] = {"n_in": int(n_in), "n_out": int(n_out), "n_out_wanted": wanted, "n_out_available": int(n_available),
                           "capped": capped, "n_draws": len(draws), "base_rate": base_rate_label(n_in, n_out, ratio, capped)}
    for key in keys:
        values = np.array([d[key] for d in draws])
        row[key], row[key + "_std"] = float(values.mean()), float(values.std())
    return row


def mean_summary(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """The ``"mean"`` row over set rows of :func:`draw_summary`: counts summed, ``capped`` if any set is, the fewest
    distinct draws, the one base rate (or ``"mixed"``), and per key the mean of the means and of the stds."""
    labels = {r["base_rate"] for r in rows}
    row: dict[str, Any] = {
        "n_in": rows[0]["n_in"], **{k: int(sum(r[k] for r in rows)) for k in ("n_out", "n_out_wanted", "n_out_available")},
        "capped": any(r["capped"] for r in rows), "n_draws": min(r["n_draws"] for r in rows),
        "base_rate": labels.pop() if len(labels) == 1 else "mixed",
    }
    for key in keys:
        row[key] = float(np.mean([r[key] for r in rows]))
        row[key + "_std"] = float(np.mean([r[key + "_std"] for r in rows]))
    return row


@dataclass
class OODTable:
    """Detection results per anomaly set plus a ``"mean"`` row over sets.

    ``rows``: one dict per set with ``name``, each metric of :data:`METRIC_KEYS` (mean over draws),
    ``<metric>_std`` (standard deviation over draws, 0 for one draw) and what actually ran: ``n_in``, ``n_out``
    (anomalies per draw), ``n_out_wanted`` (``n_in // ratio``), ``n_out_available`` (the set's size), ``capped``
    (``n_out < n_out_wanted``: only with ``allow_small_sets``), ``n_draws`` (DISTINCT draws: 1 when a draw takes
    the whole set, as every draw would be the same) and ``base_rate`` (``"1:5"``; a capped set's achieved rate).
    The ``"mean"`` row sums the counts, takes the fewest draws and ``capped`` of any set.
    ``n_draws`` / ``ratio`` of the table are the requested values. ``fpr`` is the FPR at ``recall_level``; every row
    also has ``fpr<N>`` (and ``fpr<N>_std``) for each of ``recall_levels`` (:func:`fpr_key`), from the same draws.
    """

    rows: list[dict[str, Any]]
    recall_level: float
    n_draws: int
    ratio: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)
    allow_small_sets: bool = False
    recall_levels: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.recall_levels = tuple(self.recall_levels) or (self.recall_level,)

    @property
    def fpr_label(self) -> str:
        """``"FPR95"`` for ``recall_level = 0.95``."""
        return fpr_key(self.recall_level).upper()

    def records(self, **fields: Any) -> list[dict[str, Any]]:
        """The table as results records, one per row: the one record schema of every pipeline.

        Each record is ``fields`` (e.g. ``dataset``, ``model``, ``stage``, ``score``) followed by ``ood_set`` (the set's
        name, or ``"mean"``), ``auroc``, ``aupr`` (anomalies positive), ``aupr_in``, ``fpr<N>`` for each recall level,
        their ``_std`` over draws, and what ran: ``n_in``, ``n_out`` (anomalies per draw), ``n_out_wanted``,
        ``n_out_available``, ``capped``, ``base_rate`` (``"1:5"``), ``n_draws`` (distinct draws),
        ``n_draws_requested`` and ``sampling`` (``"1:5, 10 draws"``).
        """
        return [self._record(row, fields) for row in self.rows]

    def _record(self, row: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
        fprs = [fpr_key(level) for level in self.recall_levels]
        rates = {key: row.get(key, row["fpr"]) for key in fprs}  # rows saved before recall_levels: their one FPR
        return {
            **fields, "ood_set": row["name"], **rates, "auroc": row["auroc"], "aupr": row["aupr_out"], "aupr_in": row["aupr_in"],
            **{f"{key}_std": row.get(f"{key}_std", row["fpr_std"]) for key in fprs},
            "auroc_std": row["auroc_std"], "aupr_std": row["aupr_out_std"], "n_in": row["n_in"], "n_out": row["n_out"],
            "n_out_wanted": row.get("n_out_wanted", row["n_in"] // self.ratio), "n_out_available": row.get("n_out_available"),
            "capped": bool(row.get("capped", False)), "base_rate": row.get("base_rate", f"1:{self.ratio}"),
            "n_draws": int(row.get("n_draws", self.n_draws)), "n_draws_requested": self.n_draws, "sampling": self.row_sampling(row),
        }

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.rows]

    def __getitem__(self, name: str) -> dict[str, Any]:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {self.names}")

    def row_sampling(self, row: Mapping[str, Any]) -> str:
        """``"1:10, 1 draw"``: the base rate and distinct draws that ran for ``row`` (tables saved before these
        fields existed give the requested values)."""
        return sampling_label(row.get("base_rate", f"1:{self.ratio}"), int(row.get("n_draws", self.n_draws)))

    def ran_as_requested(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` got the requested base rate and number of distinct draws."""
        return not row.get("capped", False) and int(row.get("n_draws", self.n_draws)) == self.n_draws

    @property
    def sampling(self) -> str:
        """What ran, e.g. ``"1:5, 10 draws"``, or per set where the sets differ (``"gaussian 1:5, 10 draws; isun 1:10, 1 draw"``)."""
        sets = [row for row in self.rows if row["name"] != "mean"]
        labels = {row["name"]: self.row_sampling(row) for row in sets}
        if len(set(labels.values())) == 1:
            return next(iter(labels.values()))
        return "; ".join(f"{name} {label}" for name, label in labels.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall_level": self.recall_level,
            "recall_levels": list(self.recall_levels),
            "n_draws": self.n_draws,
            "ratio": self.ratio,
            "seed": self.seed,
            "allow_small_sets": self.allow_small_sets,
            "sampling": self.sampling,
            "meta": self.meta,
            "rows": self.rows,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    def to_markdown(self, percent: bool = True, digits: int = 2, with_std: bool | None = None) -> str:
        """Render as a Markdown table (values x100 when ``percent``); ``± std`` when several distinct draws were made.

        A set that did not run as requested (capped, or fewer distinct draws) is labelled with what ran:
        ``mnist [1:10, 1 draw]``.
        """
        with_std = any(int(row.get("n_draws", self.n_draws)) > 1 for row in self.rows) if with_std is None else with_std
        scale = 100.0 if percent else 1.0
        headers = ["D_out^test", self.fpr_label + " ↓", "AUROC ↑", "AUPR ↑"]
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in self.rows:
            cells = []
            for key in ("fpr", "auroc", "aupr_out"):
                cell = f"{row[key] * scale:.{digits}f}"
                if with_std:
                    cell += f" ± {row[key + '_std'] * scale:.{digits}f}"
                cells.append(cell)
            if row["name"] == "mean":
                name = "**mean**"
            else:
                name = row["name"] if self.ran_as_requested(row) else f"{row['name']} [{self.row_sampling(row)}]"
            lines.append("| " + " | ".join([name, *cells]) + " |")
        return "\n".join(lines)


def check_n_draws(n_draws: Any) -> None:
    """Raise ``ValueError`` unless ``n_draws`` is a whole number >= 1 (an ``int``, not ``1.5`` or ``True``)."""
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws must be a whole number of draws >= 1, got {n_draws!r}")


def evaluate_ood(
    in_scores: Any,
    out_scores_by_set: Mapping[str, Any],
    n_draws: int = 1,
    ratio: int = 5,
    seed: int = 0,
    recall_level: float | Sequence[float] = 0.95,
    allow_small_sets: bool = False,
) -> OODTable:
    """The paper's protocol: all in-distribution scores against ``len(in) // ratio`` anomalies per set.

    ``recall_level``: one level, or several (e.g. ``(0.90, 0.95)``): then every row has the FPR at each, from the
    same draws (``fpr`` is the first level's); the table's ``recall_level`` is the first.

    For each anomaly set, ``n_draws`` independent draws (seeded with ``seed``; the same generator state
    sequence for every call with the same arguments) give metrics whose mean and standard deviation are
    reported; the final ``"mean"`` row averages the per-set means (and per-set stds). A draw that takes a whole set
    is made once (every draw would be the same): the row's ``n_draws`` counts the distinct draws.

    Raises:
        ValueError: a set has fewer than ``len(in) // ratio`` scores, unless ``allow_small_sets``: then such a set is
            used whole (``capped``; its row's ``base_rate`` and the table label say which rate ran).
    """
    levels = tuple(_check_recall_level(level) for level in (recall_level if isinstance(recall_level, (list, tuple)) else [recall_level]))
    if not levels:
        raise ValueError("recall_level: give at least one recall level, e.g. 0.95")
    recall_level = levels[0]
    metric_keys = (*METRIC_KEYS, *(fpr_key(level) for level in levels))
    if not out_scores_by_set:
        raise ValueError("out_scores_by_set is empty: give at least one anomaly set, e.g. {'gaussian': scores}")
    check_n_draws(n_draws)
    if "mean" in out_scores_by_set:
        raise ValueError("'mean' is reserved for the average row; rename that anomaly set")
    in_array = as_score_array(in_scores, "in_scores")
    wanted = _wanted_anomalies(in_array.size, ratio)
    arrays = {name: as_score_array(scores, f"out_scores[{name!r}]") for name, scores in out_scores_by_set.items()}
    small = [f"anomaly set {name!r} has {array.size} scores" for name, array in arrays.items() if array.size < wanted]
    if small and not allow_small_sets:
        raise ValueError(_too_small_message(small, in_array.size, ratio, wanted))
    in_sorted = np.sort(in_array)  # once per call: every draw shares the in-distribution side
    rows = []
    for set_index, (name, out_array) in enumerate(arrays.items()):
        rng = np.random.default_rng([seed, set_index])
        n_out = min(wanted, out_array.size)
        distinct = 1 if n_out == out_array.size else n_draws
        draws = []
        for _ in range(distinct):
            sample = sample_base_rate(out_array, in_array.size, rng, ratio, allow_small_sets=allow_small_sets)
            draws.append(_metrics_sorted(in_sorted, np.sort(sample), recall_level, levels))
        rows.append({"name": name, **draw_summary(draws, metric_keys, in_array.size, n_out, out_array.size, ratio)})
    rows.append({"name": "mean", **mean_summary(rows, metric_keys)})
    return OODTable(rows=rows, recall_level=recall_level, n_draws=n_draws, ratio=ratio, seed=seed, allow_small_sets=allow_small_sets,
                    recall_levels=levels)


def misclassification_metrics(confidence: Any, correct: Any) -> dict[str, float]:
    """Misclassification detection (Hendrycks & Gimpel 2017): errors are POSITIVE, scored by ``-confidence``.

    Returns ``{"auroc", "aupr_err", "aupr_succ"}``: AUROC, average precision with errors positive, and
    average precision with correct predictions positive (scored by ``confidence``).
    """
    confidence = as_score_array(confidence, "confidence")
    correct = np.asarray(correct.detach().cpu() if hasattr(correct, "detach") else correct)
    if correct.shape != confidence.shape:
        raise ValueError(f"confidence has {confidence.size} values but correct has shape {correct.shape}; give one flag per prediction")
    if correct.dtype != bool:
        if not np.isin(correct, (0, 1)).all():
            raise ValueError("correct must be boolean (or 0/1): True where the prediction was right")
        correct = correct.astype(bool)
    n_err = int((~correct).sum())
    if n_err == 0 or n_err == correct.size:
        raise ValueError(
            f"misclassification metrics need both errors and correct predictions; got {n_err} error(s) out of {correct.size}"
        )
    result = ood_metrics(-confidence[correct], -confidence[~correct])
    return {"auroc": result["auroc"], "aupr_err": result["aupr_out"], "aupr_succ": result["aupr_in"]}


def bootstrap_ood_metrics(in_scores: Any, out_scores: Any, n_resamples: int = 1000, confidence: float = 0.95,
                          recall_level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """How much AUROC and FPR move with the test set: a stratified percentile bootstrap of :func:`ood_metrics`.

    Each of ``n_resamples`` replicates draws ``N_in`` in-distribution scores and ``N_out`` anomaly scores, each set
    with replacement from itself (the two sizes stay fixed), and computes :func:`ood_metrics` on them. This measures
    the uncertainty of a number that comes from finite test sets with one trained model; it says nothing about
    training-seed variation.

    Args:
        in_scores: ``(N_in,)`` anomaly scores of in-distribution examples.
        out_scores: ``(N_out,)`` anomaly scores of anomalies.
        n_resamples: bootstrap replicates (>= 2).
        confidence: the interval's coverage, in ``(0, 1)``.
        recall_level: for the FPR, as in :func:`ood_metrics`.
        seed: of the ``numpy`` generator that draws the replicates.

    Returns:
        ``{"auroc": {...}, "fpr": {...}}``, each ``{"value": the metric on the full sets, "std": the replicates'
        standard deviation, "low", "high": the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the
        replicates}``, fractions, plus ``"n_resamples"`` / ``"confidence"`` under ``"meta"``.
    """
    if not isinstance(n_resamples, (int, np.integer)) or isinstance(n_resamples, bool) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    in_array, out_array = _sortable(in_scores, "in_scores"), _sortable(out_scores, "out_scores")
    full = ood_metrics(in_array, out_array, recall_level)
    rng = np.random.default_rng(seed)
    replicates = np.empty((int(n_resamples), 2))
    for i in range(int(n_resamples)):
        m = ood_metrics(in_array[rng.integers(0, in_array.size, in_array.size)],
                        out_array[rng.integers(0, out_array.size, out_array.size)], recall_level)
        replicates[i] = m["auroc"], m["fpr"]
    tail = (1.0 - float(confidence)) / 2.0
    result: dict[str, dict[str, float]] = {}
    for j, key in enumerate(("auroc", "fpr")):
        low, high = np.quantile(replicates[:, j], [tail, 1.0 - tail])
        result[key] = {"value": float(full[key]), "std": float(replicates[:, j].std(ddof=1)), "low": float(low), "high": float(high)}
    result["meta"] = {"n_resamples": int(n_resamples), "confidence": float(confidence)}
    return result
