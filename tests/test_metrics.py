"""oe_common.maths.metrics against scikit-learn (the reference), on random data with many ties."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oe_common.maths.metrics import bootstrap_ood_metrics, evaluate_ood, fpr_at_recall, misclassification_metrics, ood_metrics, sample_base_rate


def sklearn_reference(in_scores, out_scores, recall_level):
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    s = np.r_[in_scores, out_scores].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "fpr": fpr[np.searchsorted(tpr, recall_level, side="left")],
    }


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 3), (500, 100), (3000, 4000)])
@pytest.mark.parametrize("n_levels", [2, 5, 40, None])
@pytest.mark.parametrize("recall_level", [0.9, 0.95, 0.99, 1.0])
def test_equals_sklearn_with_ties(n_in, n_out, n_levels, recall_level):
    rng = np.random.default_rng(n_in * 31 + n_out + (n_levels or 0))
    if n_levels is None:
        in_scores, out_scores = rng.normal(size=n_in), rng.normal(0.7, 1.0, size=n_out)
    else:  # heavy ties: integer scores, shared between both sides
        in_scores, out_scores = rng.integers(0, n_levels, n_in), rng.integers(0, n_levels, n_out) + 1
    ours = ood_metrics(in_scores, out_scores, recall_level)
    ref = sklearn_reference(in_scores, out_scores, recall_level)
    for key in ("auroc", "aupr_out", "aupr_in", "fpr"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert fpr_at_recall(in_scores, out_scores, recall_level) == ours["fpr"]


def assert_matches_sklearn(in_scores, out_scores, recall_level=0.95):
    ours = ood_metrics(in_scores, out_scores, recall_level)
    ref = sklearn_reference(np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64), recall_level)
    assert set(ours) == {"auroc", "aupr_out", "aupr_in", "fpr"}
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    return ours


@pytest.mark.parametrize(
    "in_scores,out_scores",
    [
        ([3.0] * 5, [3.0] * 4),  # all scores equal: one threshold
        ([2.0], [1.0]),  # one each, anomaly below
        ([1.0], [1.0]),  # one each, tied
        ([0.5], [0.1, 0.9, 0.5, 0.5]),  # one in-distribution score
        ([0.1, 0.9, 0.5, 0.5], [0.5]),  # one anomaly
        (np.arange(10.0), np.arange(5.0, 15.0)),  # distinct within each side, five values on both sides
        ([-0.0, 1.0], [0.0, 2.0]),  # -0.0 == 0.0 is a tie
        ([1e300, -1e300, 0.0], [-1e-300, 1e-300, 5e-324]),  # extremes and subnormals
    ],
)
@pytest.mark.parametrize("recall_level", [0.5, 0.95, 1.0])
def test_small_and_degenerate_sets_equal_sklearn(in_scores, out_scores, recall_level):
    assert_matches_sklearn(in_scores, out_scores, recall_level)


@pytest.mark.parametrize("ties", [True, False])
def test_large_sets_equal_sklearn_to_1e12(ties):
    rng = np.random.default_rng(11)
    in_scores, out_scores = rng.normal(size=60_000), rng.normal(0.8, 1.2, size=45_000)
    if ties:  # ties inside each side and across sides, over many distinct values
        in_scores, out_scores = np.round(in_scores, 2), np.round(out_scores, 2)
    assert_matches_sklearn(in_scores, out_scores, 0.95)


def test_float32_input_gives_the_float64_result():
    rng = np.random.default_rng(2)
    in32 = rng.normal(size=20_000).astype(np.float32)  # float32 draws: repeated values on each side and across
    out32 = rng.normal(1.0, 1.0, size=7_000).astype(np.float32)
    in32[:50], out32[:50] = in32[50:100], in32[100:150]
    expected = assert_matches_sklearn(in32, out32)
    assert ood_metrics(in32.astype(np.float64), out32.astype(np.float64)) == expected
    assert ood_metrics(torch.from_numpy(in32), torch.from_numpy(out32)) == expected
    assert ood_metrics(in32, out32.astype(np.float64)) == expected  # mixed dtypes
    with pytest.raises(ValueError, match="1 NaN/inf"):
        ood_metrics(np.r_[in32, np.float32("nan")], out32)


def test_orientation_anomalies_positive_higher_is_anomalous():
    in_scores, out_scores = np.arange(10.0), np.arange(10.0) + 100
    m = ood_metrics(in_scores, out_scores)
    assert m == {"auroc": 1.0, "aupr_out": 1.0, "aupr_in": 1.0, "fpr": 0.0}
    flipped = ood_metrics(out_scores, in_scores)
    assert flipped["auroc"] == 0.0 and flipped["fpr"] == 1.0


def test_fpr_is_first_point_reaching_recall_not_closest():
    # anomalies at 10, 9, 8, 7 ; in-distribution at 9.5 and 6.5.
    # TPR reaches 0.75 at threshold 8 (FPR 0.5); recall 0.7 must NOT pick the point at TPR 0.5.
    in_scores, out_scores = [9.5, 6.5], [10, 9, 8, 7]
    assert fpr_at_recall(in_scores, out_scores, 0.7) == 0.5
    assert fpr_at_recall(in_scores, out_scores, 0.5) == 0.5
    assert fpr_at_recall(in_scores, out_scores, 0.25) == 0.0
    assert fpr_at_recall(in_scores, out_scores, 1.0) == 0.5


def test_accepts_lists_numpy_and_tensors():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=20)
    expected = ood_metrics(a, b)
    assert ood_metrics(list(a), list(b)) == expected
    got = ood_metrics(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got == expected
    if torch.cuda.is_available():
        assert ood_metrics(torch.tensor(a).cuda(), torch.tensor(b).cuda()) == expected


@pytest.mark.parametrize(
    "in_scores,out_scores,kwargs,match",
    [
        ([0.1, float("nan"), float("nan")], [0.2], {}, "2 NaN/inf"),
        ([0.1], [float("inf")], {}, "1 NaN/inf"),
        ([], [0.2], {}, "empty"),
        ([0.1], [], {}, "empty"),
        ([[0.1, 0.2]], [0.3], {}, "1-D"),
        ([0.1], [0.2], {"recall_level": 0.0}, "recall_level"),
        ([0.1], [0.2], {"recall_level": 1.5}, "recall_level"),
    ],
)
def test_bad_input_raises(in_scores, out_scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ood_metrics(in_scores, out_scores, **kwargs)


def test_sample_base_rate_draws_one_fifth_without_replacement():
    out_scores = np.arange(1000.0)
    rng = np.random.default_rng(0)
    draw = sample_base_rate(out_scores, n_in=2003, rng=rng)
    assert draw.size == 2003 // 5
    assert np.unique(draw).size == draw.size
    with pytest.raises(ValueError, match="only 10 anomaly scores, fewer than n_in // 5 = 20"):
        sample_base_rate(np.arange(10.0), n_in=100, rng=rng)
    assert sample_base_rate(np.arange(10.0), n_in=100, rng=rng, allow_small_sets=True).size == 10


def test_evaluate_ood_protocol_matches_manual_draws():
    rng = np.random.default_rng(3)
    in_scores = rng.normal(size=1000)
    sets = {"near": rng.normal(0.5, 1, 3000), "far": rng.normal(3, 1, 500)}
    table = evaluate_ood(in_scores, sets, n_draws=4, seed=7, recall_level=0.9)
    assert table.names == ["near", "far", "mean"]
    for index, (name, scores) in enumerate(sets.items()):
        draw_rng = np.random.default_rng([7, index])
        manual = [ood_metrics(in_scores, sample_base_rate(scores, 1000, draw_rng), 0.9) for _ in range(4)]
        assert table[name]["auroc"] == pytest.approx(np.mean([m["auroc"] for m in manual]), abs=1e-12)
        assert table[name]["fpr_std"] == pytest.approx(np.std([m["fpr"] for m in manual]), abs=1e-12)
        assert table[name]["n_out"] == 200
    assert table["mean"]["aupr_out"] == pytest.approx((table["near"]["aupr_out"] + table["far"]["aupr_out"]) / 2)
    assert table["far"]["auroc"] > table["near"]["auroc"]
    # deterministic given the seed, different for another seed
    assert evaluate_ood(in_scores, sets, n_draws=4, seed=7, recall_level=0.9).rows == table.rows
    assert evaluate_ood(in_scores, sets, n_draws=4, seed=8, recall_level=0.9)["near"]["auroc"] != table["near"]["auroc"]


def test_table_renders_markdown_and_json():
    table = evaluate_ood(np.arange(100.0), {"a": np.arange(100.0) + 50}, n_draws=2, recall_level=0.9)
    md = table.to_markdown()
    assert "FPR90" in md and "| **mean** |" in md and "±" in md
    auroc_cell = md.splitlines()[2].split("|")[3].strip()
    assert float(auroc_cell.split("±")[0]) == pytest.approx(table["a"]["auroc"] * 100, abs=0.01)
    import json

    data = json.loads(table.to_json())
    assert data["rows"][0]["name"] == "a" and data["recall_level"] == 0.9
    with pytest.raises(ValueError, match="reserved"):
        evaluate_ood(np.arange(10.0), {"mean": np.arange(5.0)})


def test_misclassification_metrics_errors_are_positive():
    rng = np.random.default_rng(5)
    confidence = rng.uniform(size=400)
    correct = rng.uniform(size=400) < confidence  # confident predictions are more often right
    m = misclassification_metrics(confidence, correct)
    errors = ~correct
    assert m["auroc"] == pytest.approx(roc_auc_score(errors, -confidence), abs=1e-12)
    assert m["aupr_err"] == pytest.approx(average_precision_score(errors, -confidence), abs=1e-12)
    assert m["aupr_succ"] == pytest.approx(average_precision_score(correct, confidence), abs=1e-12)
    assert m["auroc"] > 0.6
    with pytest.raises(ValueError, match="both errors and correct"):
        misclassification_metrics(confidence, np.ones(400, bool))
    with pytest.raises(ValueError, match="one flag per prediction"):
        misclassification_metrics(confidence, correct[:-1])


def _delong_auroc_se(in_scores, out_scores):
    """DeLong et al. 1988's standard error of the AUROC from placement values (ties count one half)."""
    x, y = np.asarray(out_scores)[:, None], np.asarray(in_scores)[None, :]
    psi = (x > y) + 0.5 * (x == y)
    v_out, v_in = psi.mean(1), psi.mean(0)
    return np.sqrt(v_out.var(ddof=1) / v_out.size + v_in.var(ddof=1) / v_in.size)


def test_bootstrap_std_matches_delong_and_interval_brackets_the_value():
    rng = np.random.default_rng(3)
    in_scores, out_scores = rng.normal(0.0, 1.0, 1500), rng.normal(1.5, 1.0, 300)
    result = bootstrap_ood_metrics(in_scores, out_scores, n_resamples=400, seed=1)
    auroc = result["auroc"]
    assert auroc["value"] == pytest.approx(roc_auc_score(np.r_[np.zeros(1500), np.ones(300)], np.r_[in_scores, out_scores]), abs=1e-12)
    assert auroc["std"] == pytest.approx(_delong_auroc_se(in_scores, out_scores), rel=0.2)
    assert auroc["low"] < auroc["value"] < auroc["high"]
    assert result["fpr"]["low"] <= result["fpr"]["value"] <= result["fpr"]["high"]
    assert result["fpr"]["std"] > 0
    assert result["meta"] == {"n_resamples": 400, "confidence": 0.95}


def test_bootstrap_replicates_resample_each_side_at_its_own_size():
    rng = np.random.default_rng(4)
    in_scores, out_scores = rng.normal(0.0, 1.0, 50), rng.normal(1.0, 1.0, 20)
    result = bootstrap_ood_metrics(in_scores, out_scores, n_resamples=30, confidence=0.8, seed=7)
    draws, replicates = np.random.default_rng(7), []
    for _ in range(30):
        m = ood_metrics(in_scores[draws.integers(0, 50, 50)], out_scores[draws.integers(0, 20, 20)])
        replicates.append((m["auroc"], m["fpr"]))
    replicates = np.array(replicates)
    for j, key in enumerate(("auroc", "fpr")):
        assert result[key]["low"] == pytest.approx(np.quantile(replicates[:, j], 0.1), abs=1e-12)
        assert result[key]["high"] == pytest.approx(np.quantile(replicates[:, j], 0.9), abs=1e-12)
        assert result[key]["std"] == pytest.approx(replicates[:, j].std(ddof=1), abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [({"n_resamples": 1}, "n_resamples"), ({"n_resamples": 2.5}, "n_resamples"),
                                           ({"confidence": 1.0}, "confidence")])
def test_bootstrap_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ood_metrics([0.1, 0.2], [0.3], **kwargs)
