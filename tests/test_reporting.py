"""Records, results files and plots written by recipes."""

import json

import numpy as np
import pytest

from oe_common.maths.metrics import evaluate_ood, roc_curve_points
from oe_common.experiments.reporting import (
    plot_reliability_diagram,
    plot_roc_curves,
    plot_score_histograms,
    records_to_markdown,
    run_meta,
    write_results,
)


def test_records_carry_fpr_name_and_fields(tmp_path):
    rng = np.random.default_rng(0)
    table = evaluate_ood(rng.normal(size=100), {"a": rng.normal(2, 1, 50), "b": rng.normal(1, 1, 50)}, recall_level=0.9)
    records = table.records(level="word", model="oe", score="nll")
    assert [r["ood_set"] for r in records] == ["a", "b", "mean"]
    assert records[0]["fpr90"] == table["a"]["fpr"] and records[0]["aupr"] == table["a"]["aupr_out"]
    assert all(r["level"] == "word" and r["model"] == "oe" for r in records)
    md = records_to_markdown(records, ["ood_set", "fpr90", "auroc"], percent=["fpr90", "auroc"])
    assert f"{records[0]['auroc'] * 100:.1f}" in md.splitlines()[2]
    paths = write_results(tmp_path, records, run_meta({"train": 1.23}), md)
    data = json.loads(paths["json"].read_text())
    assert data["records"] == records and data["meta"]["seconds"] == {"train": 1.2} and "commit" in data["meta"]


def test_roc_points_and_plots(tmp_path):
    fpr, tpr = roc_curve_points([0.0, 1.0], [0.5, 2.0])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    rng = np.random.default_rng(1)
    for plot in (plot_roc_curves, plot_score_histograms):
        path = plot(rng.normal(size=200), {"x": rng.normal(1, 1, 40)}, tmp_path / f"{plot.__name__}.png")
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    path = plot_reliability_diagram(rng.uniform(size=300), rng.uniform(size=300) < 0.5, tmp_path / "rel.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="NaN"):
        plot_roc_curves([0.0, float("nan")], {"x": [1.0]}, tmp_path / "bad.png")


def test_remove_empty_dirs_removes_only_empty_folders(tmp_path):
    from oe_common.experiments.reporting import remove_empty_dirs

    (tmp_path / "a" / "checkpoints" / "stage").mkdir(parents=True)
    remove_empty_dirs(tmp_path / "a" / "checkpoints" / "stage")
    assert not (tmp_path / "a" / "checkpoints").exists() and (tmp_path / "a").is_dir()  # folder and parent only
    (tmp_path / "b" / "stage").mkdir(parents=True)
    (tmp_path / "b" / "keep.txt").write_text("x")
    remove_empty_dirs(tmp_path / "b" / "stage")
    assert not (tmp_path / "b" / "stage").exists() and (tmp_path / "b" / "keep.txt").exists()
    remove_empty_dirs(tmp_path / "missing")  # no error
