"""Calibration under distribution shift for the vision recipes (paper Sec. 4.4, App. C, Table 7).

Details: docs/modules.md, section ``oe_vision.calibration_tables``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from oe_common.maths.calibration import calibration_report, fit_temperature, max_softmax_confidence, rescale_01
from oe_common.maths.metrics import draw_summary, mean_summary, sample_base_rate
from oe_common.experiments.reporting import plot_reliability_diagram

from .paper_results import TABLE7

__all__ = ["CALIBRATION_METHODS", "TABLE7_COLUMNS", "mixture_calibration", "run_calibration", "table7_markdown", "reliability_diagrams"]

#: ``method name -> rescale``.
CALIBRATION_METHODS: dict[str, bool] = {"temperature": False, "temperature+rescale01": True}
#: Table 7 columns as ``(model, method)``.
TABLE7_COLUMNS: tuple[tuple[str, str], ...] = (("baseline", "temperature"), ("baseline", "temperature+rescale01"), ("oe", "temperature+rescale01"))
_METRICS = ("rms", "mav", "soft_f1")


def mixture_calibration(
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    ood_logits: Mapping[str, torch.Tensor],
    temperature: float,
    rescale: bool,
    mean_sets: Sequence[str],
    n_draws: int = 10,
    ratio: int = 5,
    seed: int = 0,
    bin_size: int = 100,
    allow_small_sets: bool = False,
) -> dict[str, dict[str, float]]:
    """Calibration on the paper's mixture for every anomaly set, plus ``"mean"`` (over ``mean_sets``) and
    ``"test_only"`` (the in-distribution test set alone, no anomalies).

    Anomalies are drawn as :func:`oe_common.maths.metrics.sample_base_rate` draws them: a set smaller than
    ``n_in // ratio`` is an error unless ``allow_small_sets``, and is then used whole.

    Returns ``{domain: {"rms", "mav", "soft_f1", "<metric>_std", "n_in", "n_out", "n_out_wanted", "n_out_available",
    "capped", "base_rate", "n_draws"}}`` (fractions; std over draws; the mean row averages the per-set means and stds).
    ``n_draws`` counts DISTINCT draws, as in :class:`oe_common.maths.metrics.OODTable`: 1 for a set used whole.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    missing = sorted(set(mean_sets) - set(ood_logits))
    if missing or not mean_sets:
        raise ValueError(f"mean_sets must be a non-empty subset of the anomaly sets; unknown: {missing}")
    n_in = int(test_logits.shape[0])
    wanted = n_in // ratio
    rows: dict[str, dict[str, Any]] = {}
    for set_index, (name, logits) in enumerate(ood_logits.items()):
        rng = np.random.default_rng([seed, set_index, 7])
        n_set = int(logits.shape[0])
        whole_set = n_set <= wanted  # every draw would take the whole set: one distinct draw
        draws = []
        for _ in range(1 if whole_set else n_draws):
            idx = sample_base_rate(np.arange(n_set), n_in, rng, ratio, allow_small_sets).astype(np.int64)
            draws.append(calibration_report(test_logits, test_labels, logits[torch.as_tensor(idx)], temperature, rescale, bin_size))
        rows[name] = draw_summary(draws, _METRICS, n_in, int(draws[0]["n_out"]), n_set, ratio)
    rows["mean"] = mean_summary([rows[s] for s in mean_sets], _METRICS)
    alone = calibration_report(test_logits, test_labels, None, temperature, rescale, bin_size)
    rows["test_only"] = {**{k: alone[k] for k in _METRICS}, "n_in": n_in, "n_out": 0, "n_draws": 1}
    return rows


def run_calibration(
    outputs: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]],
    labels: Mapping[str, torch.Tensor],
    ood_names: Sequence[str],
    mean_sets: Sequence[str],
    n_draws: int,
    ratio: int,
    seed: int,
    dataset: str,
    allow_small_sets: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Fit ``T`` per model on ``"holdout"`` and evaluate both methods on every mixture.

    Args:
        outputs: ``{model: {set: {"logits": (N, K)}}}`` with sets ``"holdout"``, ``"test"`` and ``ood_names``.
        labels: ``{"holdout": (N,), "test": (N,)}``.

    Returns:
        ``(records, temperatures)``: one flat record per model, method and domain (``dataset``, ``model``,
        ``method``, ``domain``, ``temperature``, ``rms``, ``mav``, ``soft_f1``, stds, counts), and ``{model: T}``.
    """
    records: list[dict[str, Any]] = []
    temperatures: dict[str, float] = {}
    for model, by_set in outputs.items():
        temperature = fit_temperature(by_set["holdout"]["logits"], labels["holdout"])
        temperatures[model] = temperature
        ood = {name: by_set[name]["logits"] for name in ood_names}
        for method, rescale in CALIBRATION_METHODS.items():
            rows = mixture_calibration(by_set["test"]["logits"], labels["test"], ood, temperature, rescale, mean_sets, n_draws, ratio, seed,
                                       allow_small_sets=allow_small_sets)
            for domain, row in rows.items():
                records.append({"dataset": dataset, "model": model, "method": method, "domain": domain, "temperature": temperature,
                                "in_mean": domain in mean_sets, **row})
    return records, temperatures


def table7_markdown(records: Sequence[Mapping[str, Any]], dataset: str) -> str:
    """Table 7 layout (mean over the anomaly sets), ours beside the paper's row for ``dataset`` when it has one."""
    paper = TABLE7.get(dataset)
    names = {("baseline", "temperature"): "baseline (temperature tuned)", ("baseline", "temperature+rescale01"): "baseline + 0-1 rescaling",
             ("oe", "temperature+rescale01"): "OE + 0-1 rescaling (its own T)"}
    lines = ["| method | T | RMS calib. error ↓ | MAV calib. error ↓ | Soft F1 ↑ | paper RMS | paper MAV | paper Soft F1 |", "|---|---|---|---|---|---|---|---|"]
    for column, (model, method) in enumerate(TABLE7_COLUMNS):
        r = next((r for r in records if (r["model"], r["method"], r["domain"]) == (model, method, "mean")), None)
        if r is None:
            continue
        ref = [f"{paper[k][column]:.1f}" for k in _METRICS] if paper else ["–"] * 3
        lines.append(f"| {names[(model, method)]} | {r['temperature']:.3f} | {r['rms'] * 100:.1f} | {r['mav'] * 100:.1f} | {r['soft_f1'] * 100:.1f} | " + " | ".join(ref) + " |")
    return "\n".join(lines)


def reliability_diagrams(
    outputs: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]],
    labels: torch.Tensor,
    temperatures: Mapping[str, float],
    mean_sets: Sequence[str],
    out_dir: str | Path,
    ratio: int = 5,
    seed: int = 0,
    title_prefix: str = "",
) -> dict[str, Path]:
    """Reliability diagrams (accuracy vs confidence, adaptive bins of 100) of the Table 7 columns on ONE pooled
    mixture: the test set plus ``len(test) // ratio`` anomalies drawn evenly from ``mean_sets`` (seeded)."""
    out_dir = Path(out_dir)
    n_in = int(labels.shape[0])
    per_set = max(1, (n_in // ratio) // len(mean_sets))
    reference = next(iter(outputs.values()))
    picks = {}  # the same anomalies for every model
    for i, name in enumerate(mean_sets):
        n_set = int(reference[name]["logits"].shape[0])
        picks[name] = torch.as_tensor(np.random.default_rng([seed, 11, i]).choice(n_set, size=min(per_set, n_set), replace=False))
    paths = {}
    for model, method in TABLE7_COLUMNS:
        if model not in outputs:
            continue
        by_set = outputs[model]
        pooled = [by_set[name]["logits"][idx] for name, idx in picks.items()]
        logits = torch.cat([by_set["test"]["logits"], *pooled])
        n_out = sum(p.shape[0] for p in pooled)
        correct = np.concatenate([(by_set["test"]["logits"].argmax(-1) == labels).numpy(), np.zeros(n_out, dtype=bool)])
        confidence = max_softmax_confidence(logits, temperatures[model])
        if CALIBRATION_METHODS[method]:
            confidence = rescale_01(confidence, logits.shape[-1])
        key = f"reliability_{model}_{method.replace('+', '_')}"
        title = f"{title_prefix}{model}, {method}\nT = {temperatures[model]:.2f}; {n_in} in + {n_out} anomalies (wrong)"
        paths[key] = plot_reliability_diagram(confidence, correct, out_dir / f"{key}.png", title=title)
    return paths
