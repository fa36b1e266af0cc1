"""oe_common.maths.calibration against hand-computed small cases and a grid search."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oe_common.maths.calibration import calibration_errors, calibration_report, fit_temperature, rescale_01, soft_f1


def test_fit_temperature_matches_grid_search():
    torch.manual_seed(0)
    logits = torch.randn(400, 10, dtype=torch.float64) * 4
    labels = torch.randint(0, 10, (400,))
    labels[:200] = logits[:200].argmax(1)  # 50%+ accuracy, over-confident logits
    t = fit_temperature(logits, labels)
    grid = np.linspace(0.2, 10, 9801)
    nll = [F.cross_entropy(logits / g, labels).item() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], abs=2e-3)
    assert t > 1.0  # over-confident model needs T > 1


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="outside"):
        logits = torch.eye(3) * 5  # always right: NLL keeps falling as T -> 0
        fit_temperature(logits, torch.arange(3))


def test_rescale_01():
    assert rescale_01([0.1, 1.0, 0.55], 10).tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_calibration_errors_hand_computed_with_remainder_bin():
    # 5 examples, bin_size 2 -> bins {0.1, 0.2}, {0.6, 0.7, 0.9}: the remainder joins the last bin.
    confidence = [0.9, 0.1, 0.7, 0.2, 0.6]
    correct = [1, 0, 1, 1, 0]
    gap1 = 0.5 - 0.15  # bin 1: acc 1/2, conf 0.15
    gap2 = 2 / 3 - (0.6 + 0.7 + 0.9) / 3
    got = calibration_errors(confidence, correct, bin_size=2)
    assert got["rms"] == pytest.approx(math.sqrt(2 / 5 * gap1**2 + 3 / 5 * gap2**2))
    assert got["mav"] == pytest.approx(2 / 5 * abs(gap1) + 3 / 5 * abs(gap2))
    # every bin counts: dropping the last bin (the released code's bug) would give |gap1| alone
    assert got["mav"] != pytest.approx(abs(gap1))


def test_calibration_errors_perfect_and_fewer_than_one_bin():
    conf = np.full(300, 0.8)
    correct = np.r_[np.ones(240, bool), np.zeros(60, bool)]
    assert calibration_errors(conf, correct, bin_size=300)["rms"] == pytest.approx(0.0, abs=1e-12)
    # with bins of 100 (stable sort keeps the tied order) the bins are 100% / 100% / 40% accurate
    expected_rms = math.sqrt(2 / 3 * 0.2**2 + 1 / 3 * 0.4**2)
    assert calibration_errors(conf, correct, bin_size=100)["rms"] == pytest.approx(expected_rms)
    assert calibration_errors([0.9, 0.9], [1, 0], bin_size=100)["mav"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="one flag per prediction"):
        calibration_errors([0.9, 0.9], [1])


def test_soft_f1_hand_computed():
    c = np.array([0.9, 0.2, 0.6])
    correct = np.array([True, False, False])
    tp = 0.8 + 0.4
    fp = 0.1
    fn = 0.2 + 0.6
    assert soft_f1(c, correct) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_calibration_report_counts_anomalies_as_wrong():
    in_logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    in_labels = torch.tensor([0, 1, 1])
    out_logits = torch.tensor([[4.0, 0.0]])
    report = calibration_report(in_logits, in_labels, out_logits, bin_size=100)
    c_in = torch.softmax(in_logits, -1).max(-1).values.tolist()
    c_out = torch.softmax(out_logits, -1).max(-1).values.item()
    conf = c_in + [c_out]
    acc = (1 + 1 + 0 + 0) / 4
    assert report["mav"] == pytest.approx(abs(acc - np.mean(conf)))
    assert report["n_out"] == 1 and report["accuracy_in"] == pytest.approx(2 / 3)
    rescaled = calibration_report(in_logits, in_labels, out_logits, temperature=2.0, rescale=True)
    conf2 = (torch.softmax(torch.cat([in_logits, out_logits]) / 2, -1).max(-1).values.numpy() - 0.5) / 0.5
    assert rescaled["mav"] == pytest.approx(abs(acc - conf2.mean()), abs=1e-6)
    assert rescaled["soft_f1"] == pytest.approx(soft_f1(conf2, [1, 1, 0, 0]), abs=1e-6)
