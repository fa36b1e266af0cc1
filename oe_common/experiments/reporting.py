"""What every recipe writes: ``results.json`` (records + meta), a Markdown table and PNG plots.

A *record* is one row of a results table, flat and JSON-friendly, e.g. for text::

    {"dataset": "ptb", "model": "transformer", "stage": "oe", "score": "nll", "ood_set": "email", "level": "word",
     "protocol": "paper", "fpr90": 0.01, "auroc": 0.99, "aupr": 0.98, "aupr_in": 0.99, "n_in": 1177, "n_out": 235}

Detection records come from :meth:`oe_common.maths.metrics.OODTable.records` (the one schema of every pipeline).

Metric values are fractions; ``fpr<N>`` is named after the recall level (FPR90, FPR95, FPR99). ``meta`` holds the
commit, hardware, date, library versions and seconds per stage, so every number can be traced to a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .files import atomic_write_text
from ..maths.metrics import as_score_array, roc_curve_points

__all__ = [
    "sampling_note",
    "protocol_sentence",
    "steps_cell",
    "time_budget_notes",
    "run_meta",
    "current_attempt",
    "recorded_attempts",
    "write_results",
    "records_to_markdown",
    "percent_cell",
    "plot_roc_curves",
    "plot_score_histograms",
    "plot_roc_and_histogram",
    "plot_reliability_diagram",
    "remove_empty_dirs",
]


def sampling_note(record: Mapping[str, Any]) -> str:
    """``""`` when a detection record ran as requested, else what ran (``"1:10, 1 draw"``) for a table label."""
    if record.get("ood_set") == "mean" or "sampling" not in record:
        return ""
    as_requested = not record.get("capped") and record.get("n_draws") == record.get("n_draws_requested")
    return "" if as_requested else record["sampling"]


def protocol_sentence(records: Sequence[Mapping[str, Any]], in_name: str = "in-distribution test examples", set_fields: Sequence[str] = ()) -> str:
    """One sentence, from the records, of the base rate and draws that ran, e.g. ``"All 10000 in-distribution test
    examples vs 2000 anomalies per set (1:5), 10 draws; except isun_gray: 2000 (1:5, the whole set), 1 draw."``

    Sets that ran differently from the most common protocol are listed; a capped set (fewer anomalies than the
    requested base rate needs: ``allow_small_sets``) says so. Records of several models / scores share their sets'
    protocol (they score the same data), so each set is described once; ``set_fields`` are record fields that, with
    ``ood_set``, name a set (e.g. ``("protocol",)`` for the text recipes' ``paper/email``).
    """
    per_set: dict[str, Mapping[str, Any]] = {}
    for record in records:
        if record.get("ood_set") != "mean" and "n_out" in record:
            name = "/".join([*(str(record[f]) for f in set_fields if f in record), str(record.get("ood_set"))])
            per_set.setdefault(name, record)
    if not per_set:
        return ""

    def describe(r: Mapping[str, Any]) -> str:
        draws = int(r.get("n_draws", 1))
        whole = r.get("n_out_available") is not None and r["n_out"] == r["n_out_available"]
        rate = str(r.get("base_rate", ""))
        if r.get("capped"):
            rate += f", capped: the set has only {r['n_out']} of the {r.get('n_out_wanted')} wanted"
        elif whole and int(r.get("n_draws_requested", draws)) > 1:
            rate += ", the whole set, so every draw is the same"
        return f"{r['n_out']} anomalies ({rate}), {draws} draw{'' if draws == 1 else 's'}"

    described = {name: describe(r) for name, r in per_set.items()}
    counts: dict[str, tuple[int, bool]] = {}  # the most common description; on a tie, one that ran as requested
    for name, text in described.items():
        counts[text] = (counts.get(text, (0, False))[0] + 1, not sampling_note(per_set[name]))
    common = max(counts, key=lambda text: counts[text])
    n_in = sorted({int(r["n_in"]) for r in per_set.values()})
    sentence = f"All {'/'.join(str(n) for n in n_in)} {in_name} vs {common} per set"
    others = [f"{name}: {text}" for name, text in described.items() if text != common]
    if others:
        sentence += "; except " + "; ".join(others)
    return sentence + "."


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: The commit of the code that runs: read when the module is imported, i.e. when the run starts (HEAD may move
#: while a long run goes on; ``run_meta`` then also records ``commit_at_end``).
_COMMIT_AT_START = _git_commit()


def _hardware() -> str:
    import torch

    cpu = f"{platform.machine()} CPU x{os.cpu_count()}"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()} + {cpu}"
    return cpu


#: The attempts of the run whose report is being written (set by the runner, :func:`recorded_attempts`).
_ATTEMPTS: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("oe_run_attempts", default=None)


def current_attempt() -> dict[str, Any]:
    """This process's attempt at a run: ``{"commit", "started" (UTC, now), "hardware"}``."""
    return {"commit": _COMMIT_AT_START, "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "hardware": _hardware()}


@contextlib.contextmanager
def recorded_attempts(attempts: Sequence[Mapping[str, Any]]) -> Iterator[None]:
    """While inside, :func:`run_meta` records ``attempts`` (every attempt of a resumed run, first to last)."""
    token = _ATTEMPTS.set([dict(a) for a in attempts])
    try:
        yield
    finally:
        _ATTEMPTS.reset(token)


def run_meta(stage_seconds: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """Provenance of a run: commit, hardware, UTC date, library versions, seconds per stage, plus ``extra``.

    ``commit`` is this process's (the attempt that writes the report); ``attempts`` lists every attempt of the run,
    first to last, with its commit and start time (a resumed run has several; :func:`recorded_attempts`)."""
    import torch
    import transformers

    at_end = _git_commit()
    moved = {"commit_at_end": at_end} if at_end != _COMMIT_AT_START else {}
    attempts = _ATTEMPTS.get()
    return {
        "commit": _COMMIT_AT_START,
        **moved,
        "attempts": attempts if attempts is not None else [current_attempt()],
        "hardware": _hardware(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "seconds": {k: round(float(v), 1) for k, v in (stage_seconds or {}).items()},
        **extra,
    }


def percent_cell(value: Any, digits: int = 1, missing: str = "") -> str:
    """A fraction as a Markdown table cell in percent (``0.973`` -> ``"97.3"``); ``missing`` for ``None`` / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value * 100:.{digits}f}"


def records_to_markdown(records: Sequence[Mapping[str, Any]], columns: Sequence[str], percent: Iterable[str] = (), digits: int = 1) -> str:
    """A Markdown table of ``columns`` from ``records``; columns named in ``percent`` are shown x100."""
    percent = set(percent)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column, "")
            if isinstance(value, float):
                value = percent_cell(value, digits, missing="nan") if column in percent else f"{value:.4g}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steps_cell(report: Mapping[str, Any]) -> str:
    """``"812"``, or ``"812 of 2000 (time budget)"`` when a :class:`oe_common.training.callbacks.TimeBudgetCallback` shortened
    or stopped the stage; ``report`` is :func:`oe_common.training.callbacks.training_steps_report`'s dict (``""`` without one)."""
    if "steps" not in report:
        return ""
    if report.get("stopped_by_time_budget") or report.get("shortened_by_time_budget"):
        return f"{report['steps']} of {report['planned_steps']} (time budget)"
    return str(report["steps"])


def time_budget_notes(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines (empty list if none) saying which stages a time budget shortened or stopped, e.g.
    ``reports = {"baseline": training_steps_report(trainer), "oe": ...}``."""
    notes = []
    for stage, report in reports.items():
        minutes = report.get("time_budget_minutes")
        if report.get("shortened_by_time_budget"):
            notes.append(
                f"- `{stage}` was shortened by its time budget ({minutes:g} min): after timing its first steps the run "
                f"and its learning-rate schedule were re-planned from {report['planned_steps']} to {report['fitted_steps']} steps"
                + (f", and it still had to stop at step {report['steps']}." if report.get("stopped_by_time_budget") else ".")
            )
        elif report.get("stopped_by_time_budget"):
            notes.append(
                f"- `{stage}` stopped by its time budget ({minutes:g} min) after step {report['steps']} of "
                f"{report['planned_steps']} planned (its learning-rate schedule was planned for all of them)."
            )
    return ["", *notes] if notes else []


def write_results(out_dir: str | os.PathLike, records: list[dict[str, Any]], meta: dict[str, Any], markdown: str) -> dict[str, Path]:
    """Write ``results.json`` (``{"records": [...], "meta": {...}}``) and ``results.md`` into ``out_dir``.

    Each file is written whole or not at all (a temporary file renamed over it). Whether the folder's run is
    complete is said by its ``run_manifest.json`` (:mod:`oe_common.experiments.run_folder`), which the pipelines mark complete
    after everything else is written.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    atomic_write_text(json_path, json.dumps({"records": records, "meta": meta}, indent=2) + "\n")
    atomic_write_text(md_path, markdown.rstrip() + "\n")
    return {"json": json_path, "markdown": md_path}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrapped_title(title: str, width: int) -> str:
    """``title`` broken into lines of at most ``width`` characters, so a long one is not cut at the figure's edge."""
    return "\n".join(textwrap.wrap(title, width)) if title else ""


def plot_roc_curves(in_scores: Any, out_scores_by_set: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """One ROC curve per anomaly set (anomalies positive) in a single PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, out_scores in out_scores_by_set.items():
        fpr, tpr = roc_curve_points(in_scores, out_scores)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false positive rate (in-distribution flagged)", ylabel="true positive rate (anomalies flagged)",
           title=_wrapped_title(title, 48))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_score_histograms(in_scores: Any, out_scores_by_set: Mapping[str, Any], path: str | os.PathLike, title: str = "", bins: int = 50) -> Path:
    """Histograms of in-distribution vs anomaly scores (density-normalised) in one PNG."""
    plt = _pyplot()
    in_array = as_score_array(in_scores, "in_scores")
    arrays = {name: as_score_array(s, name) for name, s in out_scores_by_set.items()}
    edges = np.histogram_bin_edges(np.concatenate([in_array, *arrays.values()]), bins=bins)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(in_array, bins=edges, density=True, alpha=0.5, label="in-distribution", color="black")
    for name, scores in arrays.items():
        ax.hist(scores, bins=edges, density=True, histtype="step", linewidth=1.3, label=name)
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="density", title=_wrapped_title(title, 60))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_roc_and_histogram(in_scores: Any, out_scores_by_set: Mapping[str, Any], output_dir: str | os.PathLike, key: str,
                           title: str = "") -> dict[str, Path]:
    """:func:`plot_roc_curves` and :func:`plot_score_histograms` into ``<output_dir>/roc_<key>.png`` and
    ``hist_<key>.png``; returns ``{"roc_<key>": path, "hist_<key>": path}``."""
    return {f"{kind}_{key}": plot(in_scores, out_scores_by_set, Path(output_dir) / f"{kind}_{key}.png", title)
            for kind, plot in (("roc", plot_roc_curves), ("hist", plot_score_histograms))}


def plot_reliability_diagram(confidence: Any, correct: Any, path: str | os.PathLike, bin_size: int = 100, title: str = "") -> Path:
    """Accuracy vs mean confidence per adaptive bin (the bins of :func:`oe_common.maths.calibration.calibration_errors`)."""
    plt = _pyplot()
    c = as_score_array(confidence, "confidence")
    ok = np.asarray(correct, dtype=float)
    order = np.argsort(c, kind="stable")
    c, ok = c[order], ok[order]
    n_bins = max(1, c.size // bin_size)
    edges = [b * bin_size for b in range(n_bins)] + [c.size]
    conf = [c[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    acc = [ok[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.plot(conf, acc, "o-", markersize=3)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=_wrapped_title(title, 48))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def remove_empty_dirs(folder: str | Path) -> None:
    """Remove ``folder`` and then its parent, each only if empty (a ``Trainer`` creates its ``output_dir`` even
    when a run saves nothing there); stops at the first folder that is not empty or does not exist."""
    folder = Path(folder)
    for path in (folder, folder.parent):
        try:
            path.rmdir()
        except OSError:
            return

