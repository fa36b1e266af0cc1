"""Detection records of the vision pipelines (classifiers and PixelCNN++): the unseen anomaly sets with their ``mean``,
then the sets that share the OE source's distribution, and the Markdown row labels of those records.

Both pipelines score the in-distribution test set against every anomaly set; a set drawn from the OE source's
distribution (``isun_gray`` with iSUN outliers, PixelCNN++'s held-out OE-source images) is not an unseen anomaly type:
it is reported, marked ``oe_source_overlap``, and left out of the ``mean``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from oe_common.maths.metrics import OODTable, evaluate_ood
from oe_common.experiments.reporting import sampling_note

__all__ = ["unseen_and_overlap_records", "records_by_set", "row_label"]


def unseen_and_overlap_records(
    in_scores: np.ndarray, out_scores: Mapping[str, np.ndarray], mean_sets: Sequence[str], overlap_sets: Sequence[str], cfg: Any,
    recall_level: float | Sequence[float], **fields: Any,
) -> tuple[list[dict[str, Any]], OODTable]:
    """Detection records (:meth:`OODTable.records` with ``fields`` and ``oe_source_overlap``) of one model and score.

    ``mean_sets`` are evaluated in one :func:`evaluate_ood` call seeded with ``cfg.seed`` (their rows + ``mean``);
    ``overlap_sets`` in a second one seeded with ``cfg.seed + 1`` (their rows only). Both use ``cfg.n_draws``,
    ``cfg.ratio``, ``cfg.allow_small_sets`` and every level of ``recall_level``. Returns ``(records, the unseen sets'
    table)``: that table is what a detector card shows as its evaluation.
    """
    options = dict(n_draws=cfg.n_draws, ratio=cfg.ratio, recall_level=recall_level, allow_small_sets=cfg.allow_small_sets)
    table = evaluate_ood(in_scores, {n: out_scores[n] for n in mean_sets}, seed=cfg.seed, **options)
    records = table.records(**fields, oe_source_overlap=False)
    if overlap_sets:
        extra = evaluate_ood(in_scores, {n: out_scores[n] for n in overlap_sets}, seed=cfg.seed + 1, **options)
        records += [r for r in extra.records(**fields, oe_source_overlap=True) if r["ood_set"] != "mean"]
    return records, table


def records_by_set(records: Sequence[Mapping[str, Any]], stage: str, score: str | None = None) -> dict[str, Mapping[str, Any]]:
    """``{ood_set: record}`` of the detection records of ``stage`` (and ``score``, when given), in record order."""
    return {r["ood_set"]: r for r in records if "ood_set" in r and r["stage"] == stage and (score is None or r["score"] == score)}


def row_label(ood_set: str, record: Mapping[str, Any] | None) -> str:
    """A table row's label: ``**mean**``, ``isun_gray †`` (an overlap set), plus what ran when it was not the
    requested base rate and draws (``mnist [1:10, 1 draw]``: :func:`oe_common.experiments.reporting.sampling_note`)."""
    if ood_set == "mean":
        return "**mean**"
    name = f"{ood_set} †" if record is not None and record.get("oe_source_overlap") else ood_set
    note = sampling_note(record) if record is not None else ""
    return f"{name} [{note}]" if note else name
