"""The vision OE pipeline end to end (MNIST ``test`` preset: a real MNIST subset, iSUN outliers) and the
confidence-branch + OE trainer.

The end-to-end run (module fixture, about 30-40 s on a 2-core CPU) trains baseline, OE, branch and branch + OE
models; the tests then read its outputs. torch runs single-threaded in this module (faster under CPU contention;
restored afterwards).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oe_common.training.trainer import OETrainingArguments
from oe_vision import MnistConvNetConfig, MnistConvNetForImageClassification
from oe_vision.confidence_trainer import BRANCH_LOGIT_BOUND, ConfidenceBranchOETrainer
from oe_vision.data import image_collate
from oe_vision.classifier_experiment import TensorImageDataset, preset_config, run_vision_oe

REQUIRED = ("task", "dataset", "model", "stage", "score", "ood_set", "auroc", "aupr", "fpr99", "fpr95", "n_in", "n_out")
FRACTIONS = ("auroc", "aupr", "aupr_in", "fpr99", "fpr95")


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


@pytest.fixture(scope="module")
def mnist_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist_oe")
    cfg = preset_config("mnist", "test")
    with pytest.MonkeyPatch.context() as mp:  # the run needs no network: make sure the Hub is never asked
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        result = run_vision_oe(cfg, out, data_dir=data_dir)
    return cfg, out, result


def _mean(records, stage, score, key="auroc"):
    (row,) = [r for r in records if r["stage"] == stage and r["score"] == score and r["ood_set"] == "mean"]
    return row[key]


def test_oe_improves_mean_auroc_over_the_msp_baseline(mnist_run):
    cfg, _, result = mnist_run
    records = result["records"]
    base, oe = _mean(records, "baseline", "msp"), _mean(records, "oe", "msp")
    assert oe > base + 0.02, f"OE mean AUROC {oe:.3f} vs baseline {base:.3f}"
    assert _mean(records, "oe", "msp", "fpr99") < _mean(records, "baseline", "msp", "fpr99")
    # branch + OE beats the branch alone with the branch score
    assert _mean(records, "branch_oe", "branch") > _mean(records, "branch", "branch") + 0.02


def test_results_json_fields_fractions_and_means(mnist_run):
    cfg, out, result = mnist_run
    saved = json.loads((out / "results.json").read_text())
    records, meta = saved["records"], saved["meta"]
    assert records == json.loads(json.dumps(result["records"]))
    data = result["data"]
    assert data.overlap_sets == ("isun_gray",) and "isun_gray" not in data.mean_sets  # iSUN is the OE source
    expected = {("baseline", "msp"), ("baseline", "uniform_xent"), ("oe", "msp"), ("oe", "uniform_xent"),
                ("branch", "msp"), ("branch", "branch"), ("branch_oe", "msp"), ("branch_oe", "branch")}
    assert {(r["stage"], r["score"]) for r in records} == expected
    assert {(r["task"], r["model"]) for r in records} == {("detection", "convnet")}
    for r in records:
        assert set(REQUIRED) <= set(r), sorted(set(REQUIRED) - set(r))
        for key in FRACTIONS:
            assert 0.0 <= r[key] <= 1.0, (r["stage"], r["ood_set"], key, r[key])
        assert r["n_in"] == 1000 and r["n_out"] == (200 if r["ood_set"] != "mean" else 200 * len(data.mean_sets))
    for model, score in expected:
        rows = {r["ood_set"]: r for r in records if r["stage"] == model and r["score"] == score}
        assert set(rows) == {*data.ood, "mean"}
        assert rows["isun_gray"]["oe_source_overlap"] and not rows["gaussian"]["oe_source_overlap"]
        # the mean row averages the unseen sets only
        assert rows["mean"]["auroc"] == pytest.approx(np.mean([rows[s]["auroc"] for s in data.mean_sets]))
        assert rows["mean"]["fpr95"] <= rows["mean"]["fpr99"]  # a lower recall needs a lower (or equal) FPR
    for stage in ("baseline", "oe", "branch", "branch_oe"):
        assert 0.5 < meta["test_accuracy"][stage] <= 1.0
        assert meta["test_error"][stage] == pytest.approx(1 - meta["test_accuracy"][stage])
        assert meta["seconds"][f"{stage}_train"] > 0
    assert [(r["task"], r["model"], r["stage"]) for r in meta["misclassification"]] == [("misclassification", "convnet", s) for s in ("baseline", "oe")]
    for r in meta["misclassification"]:
        assert "domain" not in r and "ood_set" not in r
        assert 0.5 < r["auroc"] <= 1.0 and 0 < r["aupr_err"] <= 1 and 0 < r["aupr_succ"] <= 1
    markdown = (out / "results.md").read_text()
    assert "Table 8 layout" in markdown and "Table 9 layout" in markdown and "Table 3 layout" in markdown and "Table 7 layout" in markdown
    for name in ("roc_baseline", "hist_oe", "roc_branch_oe", "reliability_baseline_temperature", "reliability_oe_temperature_rescale01"):
        assert (out / f"{name}.png").stat().st_size > 1000
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(out / "oe_model")
    x = data.test.pixel_values[:8]
    expected_logits = result["outputs"]["oe"]["test"]["logits"][:8]
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(pixel_values=x).logits, expected_logits, atol=1e-5)
    from oe_common.deployment.detector import OODDetector

    detector = OODDetector.from_pretrained(out / "detector", device="cpu", progress=False)
    assert detector.score_name == "msp" and detector.threshold_info["achieved_fpr"] <= 0.05
    # the card's evaluation is the OE stage's table of the unseen sets (the records' numbers, no overlap set)
    card = {row["name"]: (row["auroc"], row["fpr"]) for row in detector.evaluation["rows"]}
    oe_msp = [r for r in result["records"] if (r["stage"], r["score"], r["oe_source_overlap"]) == ("oe", "msp", False)]
    assert card == {r["ood_set"]: (r["auroc"], r[cfg.fpr_key]) for r in oe_msp}
    assert detector.training["outlier_dataset"] == data.oe_source_name and detector.training["oe_lambda"] == cfg.oe_lambda
    expected_msp = -torch.softmax(expected_logits.double(), -1).amax(-1).numpy()
    assert np.allclose(detector.score(x), expected_msp, atol=1e-5)


def test_calibration_stage(mnist_run):
    cfg, _, result = mnist_run
    meta, data, outputs = result["meta"], result["data"], result["outputs"]
    temps = meta["temperatures"]
    assert set(temps) == {"baseline", "oe"}
    for model, t in temps.items():
        assert 0 < t < 100 and math.isfinite(t)
        # t minimises the held-out NLL of softmax(z / t)
        logits, labels = outputs[model]["holdout"]["logits"].double(), data.holdout.labels
        nll = lambda temp, logits=logits, labels=labels: float(F.cross_entropy(logits / temp, labels))  # noqa: E731
        assert nll(t) <= min(nll(t * 1.1), nll(t / 1.1))
    calib = meta["calibration"]
    for r in calib:
        assert 0 <= r["mav"] <= r["rms"] + 1e-12 <= 1 + 1e-12  # mean |gap| <= root mean square gap
        assert 0 <= r["soft_f1"] <= 1
    mean = {(r["model"], r["method"]): r for r in calib if r["domain"] == "mean"}
    assert mean[("oe", "temperature+rescale01")]["rms"] < mean[("baseline", "temperature")]["rms"]
    assert mean[("oe", "temperature+rescale01")]["soft_f1"] > mean[("baseline", "temperature")]["soft_f1"]
    per_set = [r["rms"] for r in calib if r["model"] == "baseline" and r["method"] == "temperature" and r["in_mean"]]
    assert mean[("baseline", "temperature")]["rms"] == pytest.approx(np.mean(per_set))


def _branch_trainer(tmp_path, n_in=8, n_out=6):
    torch.manual_seed(0)
    config = MnistConvNetConfig(confidence_branch=True, conv_dropout=0.0, dropout=0.0)
    model = MnistConvNetForImageClassification(config)
    train = TensorImageDataset(torch.rand(n_in, 1, 28, 28), torch.arange(n_in) % 10)
    outliers = TensorImageDataset(torch.rand(n_out, 1, 28, 28), torch.full((n_out,), -1))
    args = OETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, oe_batch_size=3, oe_lambda=0.5,
                               oe_concat_forward=False, report_to="none", use_cpu=True)
    trainer = ConfidenceBranchOETrainer(model=model, args=args, train_dataset=train, data_collator=image_collate, outlier_dataset=outliers)
    return trainer, model, train, outliers


def test_confidence_branch_oe_trainer_adds_half_the_mean_log_confidence(tmp_path):
    trainer, model, train, outliers = _branch_trainer(tmp_path)
    inputs = image_collate([train[i] for i in range(4)])
    out_batch = {"pixel_values": outliers.pixel_values[:3]}
    trainer.next_outlier_batch = lambda: out_batch  # a fixed outlier batch
    lam = model.confidence_lambda.clone()
    model.train()

    torch.manual_seed(123)  # the same hint mask in both computations
    loss = trainer.compute_loss(model, inputs)
    model.confidence_lambda.copy_(lam)  # the model adapts lambda after each forward with labels
    torch.manual_seed(123)
    in_loss = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"]).loss
    branch_out = model(pixel_values=out_batch["pixel_values"]).confidence_logits
    expected = in_loss + 0.5 * torch.log(torch.sigmoid(branch_out)).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert abs(float((loss - in_loss).detach())) > 1e-3  # the term is really there
    assert float(trainer._oe_log_sums[1]) == pytest.approx(float(torch.log(torch.sigmoid(branch_out)).mean().detach()), abs=1e-5)

    # b is clamped at 1e-12 (DeVries & Taylor's clamp): very confident "outlier" logits stop adding gradient
    with torch.no_grad():
        model.confidence.bias.fill_(-1000.0)
    model.zero_grad()
    term = trainer.oe_term(model(pixel_values=out_batch["pixel_values"]).confidence_logits[:, None], None, None, None)
    assert float(term.detach()) == pytest.approx(-BRANCH_LOGIT_BOUND, rel=1e-6)
    term.backward()
    assert float(model.confidence.bias.grad.abs().sum()) == 0.0


def test_confidence_branch_oe_trainer_rejects_bad_settings(tmp_path):
    model = MnistConvNetForImageClassification(MnistConvNetConfig())
    data = TensorImageDataset(torch.rand(4, 1, 28, 28), torch.arange(4))
    args = OETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, oe_concat_forward=False, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="confidence branch"):
        ConfidenceBranchOETrainer(model=model, args=args, train_dataset=data, data_collator=image_collate, outlier_dataset=data)
    branch_model = MnistConvNetForImageClassification(MnistConvNetConfig(confidence_branch=True))
    concat = OETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="oe_concat_forward=False"):
        ConfidenceBranchOETrainer(model=branch_model, args=concat, train_dataset=data, data_collator=image_collate, outlier_dataset=data)


def test_presets_and_recipes():
    paper = preset_config("cifar10", "paper")
    assert (paper.model, paper.wrn_depth, paper.wrn_widen_factor, paper.batch_size, paper.oe_batch_size) == ("wrn", 40, 2, 128, 256)
    assert (paper.lr, paper.baseline_epochs, paper.oe_lr, paper.oe_epochs, paper.oe_source, paper.fpr_key) == (0.1, 100, 0.001, 10, "isun", "fpr95")
    mnist = preset_config("mnist", "paper")
    assert (mnist.batch_size, mnist.oe_batch_size, mnist.lr, mnist.baseline_epochs, mnist.oe_epochs, mnist.oe_lambda) == (50, 100, 0.01, 10, 5, 0.5)
    assert (mnist.momentum, mnist.weight_decay, mnist.holdout_size, mnist.n_draws, mnist.fpr_key) == (0.9, 5e-4, 6000, 10, "fpr99")
    assert preset_config("mnist", "paper", oe_from_scratch=True).stages == ("baseline", "oe", "oe_scratch", "branch", "branch_oe")
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("mnist", "short")
    with pytest.raises(ValueError, match="oe_source"):
        preset_config("cifar10", "paper", oe_source="cifar10")
    from oe_common.deployment.plugins import recipes

    registered = recipes()
    assert (registered["mnist"].target, registered["mnist"].kwargs) == ("oe_vision.recipe_cli:main", {"dataset": "mnist"})
    assert registered["cifar10"].kwargs == {"dataset": "cifar10"}


def test_time_budgets_cut_every_stage_and_the_report_says_so(data_dir, tmp_path):
    cfg = preset_config("mnist", "test", baseline_max_minutes=1e-9, oe_max_minutes=1e-9, branch=False, calibration=False,
                        save_models=False, n_draws=1)
    result = run_vision_oe(cfg, tmp_path, data_dir=data_dir)
    steps = result["meta"]["training_steps"]
    assert set(steps) == {"baseline", "oe"}
    assert steps["baseline"]["steps"] == 1 and steps["baseline"]["planned_steps"] == cfg.baseline_max_steps
    assert steps["oe"]["steps"] == 1 and steps["oe"]["planned_steps"] == cfg.oe_max_steps
    assert all(s["stopped_by_time_budget"] for s in steps.values())
    md = (tmp_path / "results.md").read_text()
    assert f"| 1 of {cfg.oe_max_steps} (time budget) |" in md and "`baseline` stopped by its time budget" in md
    with pytest.raises(ValueError, match="oe_max_minutes must be a positive"):
        preset_config("mnist", "test", oe_max_minutes=-1.0)
