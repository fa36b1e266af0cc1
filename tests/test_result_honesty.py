"""Result files say what ran (issue 14, items 11 and 12).

* A set too small for the requested base rate is an error unless ``allow_small_sets``; then every record and table
  says the base rate and the number of DISTINCT draws that ran (a draw that takes a whole set is made once).
* The Markdown headings come from the records, not from the configuration's intent.
* ``confidence_branch_oe_loss`` is bounded below by ``log(eps)`` when called directly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oe_common.maths.losses import BRANCH_EPS, confidence_branch_oe_loss
from oe_common.maths.metrics import evaluate_ood, ood_metrics, sample_base_rate
from oe_common.experiments.reporting import sampling_note, protocol_sentence


def _scores(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, n)


# ---------------------------------------------------------------------------------------------- evaluate_ood
def test_too_small_set_is_an_error_naming_the_set():
    with pytest.raises(ValueError, match=r"anomaly set 'small' has 100 scores, fewer than n_in // 5 = 200.*allow_small_sets=True") as err:
        evaluate_ood(_scores(0, 1000), {"big": _scores(1, 3000, 1), "small": _scores(2, 100, 1)}, n_draws=3)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="fewer than n_in // 5"):
        sample_base_rate(_scores(2, 100), n_in=1000, rng=np.random.default_rng(0))


def test_allowed_small_set_records_the_base_rate_and_one_draw():
    in_scores, small = _scores(0, 1000), _scores(2, 100, 1)
    table = evaluate_ood(in_scores, {"big": _scores(1, 3000, 1), "small": small}, n_draws=4, allow_small_sets=True)
    row = table["small"]
    assert (row["n_in"], row["n_out"], row["n_out_wanted"], row["n_out_available"]) == (1000, 100, 200, 100)
    assert row["capped"] is True and row["n_draws"] == 1 and row["base_rate"] == "1:10"
    assert row["auroc"] == pytest.approx(ood_metrics(in_scores, small)["auroc"], abs=1e-12) and row["auroc_std"] == 0.0
    big = table["big"]
    assert (big["n_out"], big["capped"], big["n_draws"], big["base_rate"]) == (200, False, 4, "1:5")
    mean = table["mean"]
    assert mean["capped"] is True and mean["n_draws"] == 1 and mean["n_out"] == 300
    md = table.to_markdown()
    assert "| small [1:10, 1 draw] |" in md and "| big |" in md
    assert table.sampling == "big 1:5, 4 draws; small 1:10, 1 draw"
    assert table.to_dict()["allow_small_sets"] is True and table.to_dict()["sampling"] == table.sampling


def test_a_draw_of_a_whole_set_is_one_draw():
    """A set of exactly ``n_in // 5`` is not capped, but every draw holds all of it: one distinct draw."""
    table = evaluate_ood(_scores(0, 1000), {"whole": _scores(3, 200, 1), "big": _scores(1, 3000, 1)}, n_draws=10)
    assert (table["whole"]["capped"], table["whole"]["n_draws"], table["whole"]["base_rate"]) == (False, 1, "1:5")
    assert table["big"]["n_draws"] == 10
    assert "| whole [1:5, 1 draw] |" in table.to_markdown()


def test_records_and_heading_sentence_say_what_ran():
    table = evaluate_ood(_scores(0, 1000), {"a": _scores(1, 3000, 1), "b": _scores(4, 3000, 2), "c": _scores(5, 120, 2)},
                         n_draws=10, allow_small_sets=True)
    records = table.records(model="oe", protocol="paper")
    by = {r["ood_set"]: r for r in records}
    assert by["c"]["protocol"] == "paper"  # the caller's fields are not overwritten
    assert (by["c"]["n_out"], by["c"]["n_out_wanted"], by["c"]["capped"], by["c"]["n_draws"], by["c"]["n_draws_requested"]) == (120, 200, True, 1, 10)
    assert by["c"]["sampling"] == "1:8.33, 1 draw" and sampling_note(by["c"]) == "1:8.33, 1 draw"
    assert sampling_note(by["a"]) == "" and sampling_note(by["mean"]) == ""
    sentence = protocol_sentence(records, "test images")
    assert sentence.startswith("All 1000 test images vs 200 anomalies (1:5), 10 draws per set; except c: 120 anomalies (1:8.33, capped")
    assert "10 draws of" not in sentence


# ---------------------------------------------------------------------------------------------- pipelines
def test_text_pipeline_errors_on_small_domains_and_labels_them_when_allowed():
    from oe_text.lm.lm_experiment import TextOEConfig, _markdown_report, evaluate_scores, table6_markdown

    scores = {"nll": {"ptb/test": _scores(0, 100), "paper/email": _scores(1, 10, 2), "paper/reviews": _scores(2, 50, 2)}}
    with pytest.raises(ValueError, match="'email' has 10 scores"):
        evaluate_scores(scores, TextOEConfig(protocols=("paper",), scores=("nll",), n_draws=3), "baseline")
    cfg = TextOEConfig(protocols=("paper",), scores=("nll",), n_draws=3, allow_small_sets=True)
    records = evaluate_scores(scores, cfg, "baseline") + evaluate_scores(scores, cfg, "oe")
    email = next(r for r in records if r["ood_set"] == "email")
    assert (email["n_out"], email["capped"], email["n_draws"], email["base_rate"]) == (10, True, 1, "1:10")
    assert "| email [1:10, 1 draw] |" in table6_markdown(records, "word", "paper", "nll")
    quality = {"perplexity": 100.0, "bits_per_token": 6.6, "train_tokens_per_second": 1.0}
    meta = {"test_quality": {"baseline": quality, "oe": quality}, "seq_len": 70, "commit": "c", "hardware": "h", "date": "d", "seconds": {}}
    report = _markdown_report(cfg, records, meta)
    assert "All 100 PTB test windows vs 20 anomalies (1:5), 3 draws per set; except paper/email: 10 anomalies (1:10, capped" in report
    assert "mean over 3 draws" not in report


def test_vision_detection_records_and_labels_what_ran():
    from oe_vision.classifier_experiment import detection_markdown, evaluate_detection, preset_config

    gen = torch.Generator().manual_seed(0)
    outputs = {"test": {"logits": torch.randn(500, 10, generator=gen) * 4}, "noise": {"logits": torch.randn(300, 10, generator=gen)},
               "tiny_set": {"logits": torch.randn(40, 10, generator=gen)}}
    data = SimpleNamespace(ood={"noise": None, "tiny_set": None}, mean_sets=("noise", "tiny_set"), overlap_sets=())
    with pytest.raises(ValueError, match="'tiny_set' has 40 scores, fewer than n_in // 5 = 100"):
        evaluate_detection(outputs, data, preset_config("mnist", "test"), "baseline", "msp")
    cfg = preset_config("mnist", "test", allow_small_sets=True)
    records = evaluate_detection(outputs, data, cfg, "baseline", "msp")[0]
    tiny = next(r for r in records if r["ood_set"] == "tiny_set")
    assert (tiny["n_out"], tiny["capped"], tiny["n_draws"], tiny["base_rate"]) == (40, True, 1, "1:12.5")
    assert "fpr95" in tiny and "fpr99" in tiny
    assert "| tiny_set [1:12.5, 1 draw] |" in detection_markdown(records, "mnist", "fpr99")


def test_density_detection_records_and_labels_what_ran():
    from oe_vision.density_experiment import evaluate_density, preset_config, table5_markdown

    scores = {"test": _scores(0, 150, 3), "gaussian": _scores(1, 60, 5), "small": _scores(2, 30, 5), "oe_source_heldout": _scores(3, 60, 4)}
    data = SimpleNamespace(mean_sets=("gaussian", "small"), overlap_sets=("oe_source_heldout",))
    cfg = preset_config("mnist", "test", n_draws=2)
    records = evaluate_density(scores, data, cfg, "baseline") + evaluate_density(scores, data, cfg, "oe")
    by = {r["ood_set"]: r for r in records if r["stage"] == "baseline"}
    assert (by["small"]["n_out"], by["small"]["capped"], by["small"]["n_draws"]) == (30, False, 1)  # 150 // 5 = 30: the whole set
    assert by["gaussian"]["n_draws"] == 2
    assert "| small [1:5, 1 draw] |" in table5_markdown(records)
    with pytest.raises(ValueError, match="'small' has 30 scores, fewer than n_in // 5 = 40"):
        evaluate_density({**scores, "test": _scores(0, 200, 3)}, data, cfg, "baseline")


@pytest.mark.parametrize("module", ["oe_vision.recipe_cli", "oe_text.lm.recipe_cli", "oe_vision.density_recipe"])
def test_recipes_take_allow_small_sets(module):
    import importlib

    mod = importlib.import_module(module)
    parser = mod.build_parser("cifar10" if module == "oe_vision.recipe_cli" else "word") if module != "oe_vision.density_recipe" else mod.build_parser()
    assert parser.parse_args(["--allow-small-sets"]).allow_small_sets is True
    assert parser.parse_args([]).allow_small_sets is None  # the preset's value (False)


def test_oe_eval_takes_allow_small_sets_and_the_api_forwards_it():
    import inspect

    from oe_common.deployment import cli
    from oe_common.deployment.detector import OODDetector
    from oe_common.training.trainer import OETrainer

    argv = ["eval", "--model", "m", "--in", "a.txt", "--out", "b.txt"]
    assert cli.build_parser().parse_args([*argv, "--allow-small-sets"]).allow_small_sets is True
    assert cli.build_parser().parse_args(argv).allow_small_sets is False
    for method in (OETrainer.evaluate_ood, OODDetector.evaluate):
        assert inspect.signature(method).parameters["allow_small_sets"].default is False


# ---------------------------------------------------------------------------------------------- confidence-branch OE loss
def test_confidence_branch_oe_loss_is_the_clamped_formula():
    """``mean(log clamp(sigmoid(c), eps, 1 - eps))``, bounded below by ``log(eps)`` without any caller's clamp."""
    c = torch.tensor([-1e24, -1000.0, -30.0, -27.0, -3.0, 0.0, 2.5, 30.0, 1000.0], dtype=torch.float64, requires_grad=True)
    expected = torch.log(torch.sigmoid(c.detach()).clamp(BRANCH_EPS, 1 - BRANCH_EPS)).mean()
    loss = confidence_branch_oe_loss(c)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert confidence_branch_oe_loss(torch.tensor([-1e24])).item() == pytest.approx(math.log(BRANCH_EPS), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, c)
    assert torch.all(grad[[0, 1, 2, 7, 8]] == 0) and torch.all(grad[3:7] > 0)  # clamped outliers add no gradient
    assert confidence_branch_oe_loss(torch.tensor([-1e6]), eps=1e-3).item() == pytest.approx(math.log(1e-3), rel=1e-5)
    half = confidence_branch_oe_loss(torch.full((4, 1), -200.0, dtype=torch.bfloat16))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(math.log(BRANCH_EPS), rel=1e-4)
    with pytest.raises(ValueError, match="eps"):
        confidence_branch_oe_loss(torch.zeros(2), eps=0.0)


def test_calibration_mixtures_refuse_small_sets_and_record_what_ran():
    """The Table 7 mixtures draw anomalies like ``evaluate_ood``: a too-small set is an error unless allowed, and then
    it is used whole, once, and recorded as capped (before: silently ``min(wanted, available)``, ``n_draws`` as asked)."""
    from oe_vision.calibration_tables import mixture_calibration

    g = torch.Generator().manual_seed(0)
    test, labels = torch.randn(100, 10, generator=g), torch.randint(0, 10, (100,), generator=g)
    ood = {"big": torch.randn(50, 10, generator=g), "small": torch.randn(8, 10, generator=g)}
    with pytest.raises(ValueError, match="allow_small_sets"):
        mixture_calibration(test, labels, ood, 1.0, False, ["big", "small"], n_draws=5)
    rows = mixture_calibration(test, labels, ood, 1.0, False, ["big", "small"], n_draws=5, allow_small_sets=True)
    assert (rows["big"]["n_out"], rows["big"]["capped"], rows["big"]["base_rate"], rows["big"]["n_draws"]) == (20, False, "1:5", 5)
    assert rows["big"]["rms_std"] > 0
    assert (rows["small"]["n_out"], rows["small"]["capped"], rows["small"]["base_rate"], rows["small"]["n_draws"]) == (8, True, "1:12.5", 1)
    assert rows["small"]["rms_std"] == 0.0
    assert rows["mean"]["capped"] and rows["mean"]["n_draws"] == 1 and rows["mean"]["base_rate"] == "mixed"
    uncapped = mixture_calibration(test, labels, {"big": ood["big"]}, 1.0, False, ["big"], n_draws=2)
    assert uncapped["mean"]["base_rate"] == "1:5" and not uncapped["mean"]["capped"]


# ---------------------------------------------------------------------------------------------- committed results
def _committed_results():
    import json
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("records") and "meta" in data:
            yield path.name, data


def test_committed_results_count_a_draw_of_a_whole_set_once():
    """Issue 24 item 10: ``cifar10.json`` said ``n_draws: 10`` where each draw took the whole 1,000-image set (std
    1e-16): one distinct draw. Every committed record whose anomaly set (size from the file's meta) was used whole
    must say 1 draw, and say how many were asked for."""
    checked = 0
    for name, data in _committed_results():
        meta = data["meta"]
        sizes = {**(meta.get("data", {}).get("n_ood") or {}), **meta.get("n_windows", {})}
        for r in data["records"]:
            name_ = r.get("ood_set", r.get("domain"))
            size = sizes.get(name_, sizes.get(f"{r.get('protocol')}/{name_}"))
            if "n_draws" not in r or name_ == "mean" or size is None:
                continue
            checked += 1
            if r["n_out"] >= size:
                assert r["n_draws"] == 1 and r.get("n_draws_requested", 1) >= 1, (name, name_, r["n_draws"])
    assert checked > 100


def test_the_upgrade_tool_writes_what_today_s_records_say(tmp_path, repo_script):
    """tools/upgrade_draw_records.py turns an old record (``n_draws`` as requested) into what OODTable.records
    writes today for the same sets."""
    tool = repo_script("tools/upgrade_draw_records.py")
    table = evaluate_ood(_scores(0, 500), {"whole": _scores(1, 100, 1), "small": _scores(2, 60, 1), "big": _scores(3, 400, 1)},
                         n_draws=4, allow_small_sets=True)
    today = table.records(model="baseline", score="msp")
    keys = ("n_out_wanted", "n_out_available", "capped", "base_rate", "n_draws", "n_draws_requested", "sampling")
    old = [{k: v for k, v in r.items() if k not in keys} | {"n_draws": 4} for r in today]
    data = {"records": old, "meta": {"config": {"ratio": 5}, "data": {"n_ood": {"whole": 100, "small": 60, "big": 400}}}}
    assert tool.upgrade(data) == len(today)
    assert [{k: r[k] for k in keys} for r in data["records"]] == [{k: r[k] for k in keys} for r in today]
