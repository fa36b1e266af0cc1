"""Issue #22 item 1 / 2: one record schema from ``OODTable.records``, several recall levels from one evaluation, the
converter of older records, and the runner's one detector hook."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest

from oe_common.experiments.experiment import Stage, StagedExperiment, StageResult, run_experiment
from oe_common.maths.metrics import evaluate_ood, fpr_key

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=400), {"near": rng.normal(0.5, 1, 300), "far": rng.normal(2, 1, 80)}


def test_several_recall_levels_equal_one_evaluation_per_level():
    in_scores, out = _sets()
    both = evaluate_ood(in_scores, out, n_draws=3, seed=7, recall_level=(0.90, 0.95))
    for level in (0.90, 0.95):
        one = evaluate_ood(in_scores, out, n_draws=3, seed=7, recall_level=level)
        for row, single in zip(both.rows, one.rows, strict=True):
            assert row[fpr_key(level)] == single["fpr"] and row[fpr_key(level) + "_std"] == single["fpr_std"]
            assert all(row[k] == single[k] for k in ("auroc", "aupr_out", "aupr_in", "auroc_std", "n_out", "n_draws"))
    assert both.recall_level == 0.90 and both.recall_levels == (0.90, 0.95) and both.fpr_label == "FPR90"
    assert [r["fpr"] for r in both.rows] == [r["fpr90"] for r in both.rows]
    with pytest.raises(ValueError, match="recall_level"):
        evaluate_ood(in_scores, out, recall_level=(0.9, 1.5))


def test_records_are_the_one_schema():
    in_scores, out = _sets(1)
    table = evaluate_ood(in_scores, out, n_draws=2, recall_level=(0.90, 0.95))
    records = table.records(task="detection", dataset="d", model="m", stage="oe", score="msp")
    assert [r["ood_set"] for r in records] == ["near", "far", "mean"]
    for record, row in zip(records, table.rows, strict=True):
        assert {"dataset", "model", "stage", "score", "ood_set", "auroc", "aupr", "aupr_in", "fpr90", "fpr95", "n_in", "n_out",
                "n_draws", "sampling"} <= set(record)
        assert "domain" not in record and "draws" not in record
        assert (record["aupr"], record["fpr95"], record["fpr90_std"]) == (row["aupr_out"], row["fpr95"], row["fpr90_std"])
    assert records[1]["n_draws"] == 1 and records[1]["sampling"] == "1:5, 1 draw"  # "far" (80 = 400 // 5 scores) is drawn whole
    # a table read back from its dict (a detector card) gives the same records
    data = table.to_dict()
    assert data["recall_levels"] == [0.90, 0.95]


def test_older_records_are_renamed_to_the_schema_and_numbers_kept():
    tool = _tool("upgrade_records")
    lm = {"level": "word", "protocol": "paper", "model": "oe", "score": "nll", "domain": "email", "auroc": 0.9, "n_out": 5}
    vision = {"dataset": "mnist", "model": "baseline", "score": "msp", "domain": "mean", "auroc": 0.8, "n_out": 9}
    density = {"dataset": "cifar10", "model": "oe", "score": "bits_per_dim", "domain": "svhn", "auroc": 0.7, "n_out": 3}
    textcls = {"task": "detection", "dataset": "clinc150", "model": "minilm", "stage": "oe", "score": "msp", "ood_set": "oos_test",
               "draws": 1, "n_draws": 1, "auroc": 0.95, "n_out": 4}
    data = {"records": [lm, vision, density, textcls], "meta": {"config": {"model": "transformer"}}}
    new = tool.upgrade_results(data)["records"]
    assert new[0] == {"level": "word", "protocol": "paper", "model": "transformer", "stage": "oe", "score": "nll", "ood_set": "email",
                      "auroc": 0.9, "n_out": 5, "dataset": "ptb", "task": "detection"}
    assert (new[1]["model"], new[1]["stage"], new[1]["ood_set"]) == ("convnet", "baseline", "mean")
    assert (new[2]["model"], new[2]["stage"]) == ("pixelcnn++", "oe")
    assert new[3] == {k: v for k, v in textcls.items() if k != "draws"}
    assert tool.upgrade_results({"records": new, "meta": data["meta"]})["records"] == new  # idempotent


def test_compare_results_upgrades_the_before_side(tmp_path):
    compare = _tool("compare_results")
    old = {"records": [{"model": "oe", "score": "msp", "dataset": "mnist", "domain": "a", "auroc": 0.5, "n_out": 2}], "meta": {}}
    new = {"records": [{"task": "detection", "dataset": "mnist", "model": "convnet", "stage": "oe", "score": "msp", "ood_set": "a",
                        "auroc": 0.5, "n_out": 2, "fpr90": 0.1}]}
    for side, data in (("before", old), ("after", new)):
        (tmp_path / side / "run").mkdir(parents=True)
        (tmp_path / side / "run" / "results.json").write_text(json.dumps(data))
    args = [str(tmp_path / "before"), str(tmp_path / "after")]
    assert compare.main(args) == 1  # renamed keys differ without the upgrade
    assert compare.main(["--upgrade-before", *args]) == 0  # fpr90 is only added
    new["records"][0]["auroc"] = 0.6
    (tmp_path / "after" / "run" / "results.json").write_text(json.dumps(new))
    assert compare.main(["--upgrade-before", *args]) == 1


@dataclasses.dataclass
class _Config:
    seed: int = 0
    save_models: bool = False
    oe_lambda: float = 0.5
    note: str | None = None


class _SavedDetector:
    def __init__(self, training):
        self.training = training

    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "detector_config.json").write_text(json.dumps({"training": self.training}))
        return Path(folder)


class _NoTraining(StagedExperiment):
    def __init__(self, config, with_detector):
        super().__init__(config)
        self.with_detector = with_detector

    def stages(self):
        return [Stage("baseline", 1.0, train=False)]

    def load_data(self, data_dir):
        return {}

    def build_model(self, stage):
        return object()

    def make_trainer(self, stage, model, output_dir):
        return types.SimpleNamespace(state=types.SimpleNamespace(log_history=[]))

    def evaluate(self, stage, model, trainer):
        return StageResult({"records": []}, {})

    def report(self, results, models, seconds, output_dir, is_main):
        return {"records": []}

    def detector(self, results, models):
        return _SavedDetector(self.provenance(in_distribution_dataset="toy")) if self.with_detector else None


def test_the_runner_saves_the_one_detector(tmp_path):
    out = run_experiment(_NoTraining(_Config(), with_detector=True), tmp_path / "a", data={})
    assert out["paths"]["detector"] == tmp_path / "a" / "detector"
    training = json.loads((tmp_path / "a" / "detector" / "detector_config.json").read_text())["training"]
    assert training == {"in_distribution_dataset": "toy", "seed": 0, "save_models": False, "oe_lambda": 0.5}  # unset fields left out
    out = run_experiment(_NoTraining(_Config(), with_detector=False), tmp_path / "b", data={})
    assert "paths" not in out and not (tmp_path / "b" / "detector").exists()
