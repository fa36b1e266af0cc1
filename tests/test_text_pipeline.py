"""End-to-end PTB word-level OE on real data at the `test` preset, plus the pipeline's building blocks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from oe_text.lm.lm_experiment import TextOEConfig, evaluate_scores, preset_config, run_text_oe, table6_markdown


TORCH_THREADS = 1  # small models: see the conftest fixture _torch_threads


@pytest.fixture(scope="module")
def word_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("ptb_word_test")
    result = run_text_oe(preset_config("word", "test"), out, data_dir=data_dir)
    return out, result


def _mean(records, protocol, score, stage):
    (row,) = [r for r in records if (r["protocol"], r["score"], r["stage"], r["ood_set"]) == (protocol, score, stage, "mean")]
    return row


@pytest.mark.slow
def test_oe_raises_mean_auroc_on_paper_protocol(word_run):
    _, result = word_run
    records = result["records"]
    base_nll, oe_nll = _mean(records, "paper", "nll", "baseline"), _mean(records, "paper", "nll", "oe")
    assert oe_nll["auroc"] > base_nll["auroc"] + 0.05, (base_nll["auroc"], oe_nll["auroc"])
    base_ux, oe_ux = _mean(records, "paper", "uniform_xent", "baseline"), _mean(records, "paper", "uniform_xent", "oe")
    assert oe_ux["auroc"] > base_ux["auroc"], (base_ux["auroc"], oe_ux["auroc"])


@pytest.mark.slow
def test_results_files_and_records(word_run, data_dir):
    out, result = word_run
    data = json.loads((out / "results.json").read_text())
    records = data["records"]
    assert {r["protocol"] for r in records} == {"paper", "clean"}
    assert {r["stage"] for r in records} == {"baseline", "oe"} and {r["score"] for r in records} == {"nll", "uniform_xent"}
    domains = {"answers", "email", "newsgroup", "reviews", "weblog", "mean", "control"}
    assert {r["ood_set"] for r in records} == domains
    assert len(records) == 2 * 2 * 2 * len(domains)
    for r in records:
        assert (r["task"], r["dataset"], r["model"], r["level"]) == ("detection", "ptb", "transformer", "word")
        for key in ("fpr90", "auroc", "aupr"):
            assert 0.0 <= r[key] <= 1.0
        assert ("control" in r) == (r["ood_set"] == "control")
        per_domain = r["n_in"] // 5  # the paper's 1:5 base rate; the mean row counts the anomalies of all 5 domains
        assert r["n_out"] == (5 * per_domain if r["ood_set"] == "mean" else per_domain)
    meta = data["meta"]
    for key in ("commit", "hardware", "date", "seconds", "test_quality"):
        assert key in meta
    quality = meta["test_quality"]["baseline"]
    assert quality["bits_per_token"] == pytest.approx(quality["nll_nats"] / math.log(2))
    assert quality["perplexity"] == pytest.approx(math.exp(quality["nll_nats"]))
    md = (out / "results.md").read_text()
    assert "perplexity" in md and "paper" in md and md.count("| **mean** |") == 4
    for name in ("roc_oe_paper.png", "hist_baseline_clean.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_saved_models_reload_from_safetensors_with_their_vocabulary(word_run):
    from transformers import AutoModelForCausalLM

    import oe_text  # noqa: F401  (registers the model types)
    from oe_text.lm.vocab import Vocabulary

    out, _ = word_run
    model = AutoModelForCausalLM.from_pretrained(out / "oe_model").eval()
    vocab = Vocabulary.load(out / "oe_model" / "vocab.json")
    assert len(vocab) == 10_000 and model.config.vocab_size == 10_000
    files = {p.name for p in out.joinpath("oe_model").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickled weights or arguments


def test_evaluate_scores_and_table_layout():
    rng = np.random.default_rng(0)
    cfg = TextOEConfig(protocols=("paper",), scores=("nll",), n_draws=2)
    scores = {"nll": {"ptb/test": rng.normal(size=100), "paper/email": rng.normal(3, 1, 50), "paper/weblog": rng.normal(0, 1, 50)}}
    records = evaluate_scores(scores, cfg, "baseline")
    by_domain = {r["ood_set"]: r for r in records}
    assert set(by_domain) == {"email", "weblog", "mean"}
    assert by_domain["email"]["auroc"] > 0.9 > by_domain["weblog"]["auroc"]
    assert by_domain["mean"]["auroc"] == pytest.approx((by_domain["email"]["auroc"] + by_domain["weblog"]["auroc"]) / 2)
    oe = [dict(r, stage="oe", auroc=1.0) for r in records]
    md = table6_markdown(records + oe, "word", "paper", "nll")
    email = [line for line in md.splitlines() if line.startswith("| email")][0]
    assert f"{by_domain['email']['auroc'] * 100:.1f} → 100.0" in email
    assert "73.5 → 99.2" in email  # the paper's Table 6 email AUROC, shown beside ours


def test_preset_config_rejects_unknown_settings():
    assert preset_config("char", "tiny").level == "char"
    with pytest.raises(ValueError, match="unknown setting"):
        preset_config("word", "tiny", learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("word", "huge")
    with pytest.raises(ValueError, match="unknown score"):
        TextOEConfig(scores=("msp",))


@pytest.mark.slow
def test_time_budgets_stop_both_stages_and_the_report_says_so(tmp_path, data_dir):
    cfg = preset_config("word", "test", baseline_max_minutes=1e-9, oe_max_minutes=1e-9, ewt_windows=20, test_windows=50, n_draws=1)
    result = run_text_oe(cfg, tmp_path, data_dir=data_dir)
    quality = result["meta"]["test_quality"]
    for stage, planned in (("baseline", cfg.baseline_max_steps), ("oe", cfg.oe_max_steps)):
        assert quality[stage]["steps"] == 1 and quality[stage]["planned_steps"] == planned
        assert quality[stage]["stopped_by_time_budget"] and quality[stage]["time_budget_minutes"] == 1e-9
    md = (tmp_path / "results.md").read_text()
    assert f"| 1 of {cfg.baseline_max_steps} (time budget) |" in md and "`oe` stopped by its time budget" in md
    assert {r["stage"] for r in result["records"]} == {"baseline", "oe"}  # evaluation still ran after the cut


def test_time_budget_must_be_positive():
    with pytest.raises(ValueError, match="baseline_max_minutes must be a positive"):
        preset_config("word", "test", baseline_max_minutes=0)
