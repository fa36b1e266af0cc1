"""The `evaluate` module loads from its file path with the Hub switched off and matches ood_metrics."""

import numpy as np
import pytest

from oe_common.evaluate_modules import OOD_DETECTION_PATH
from oe_common.maths.metrics import ood_metrics


def test_evaluate_load_offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=300)
    labels = (rng.uniform(size=300) < 0.3).astype(int)
    scores[labels == 1] += 1.0
    metric = evaluate.load(OOD_DETECTION_PATH)
    result = metric.compute(predictions=scores, references=labels, recall_level=0.9)
    expected = ood_metrics(scores[labels == 0], scores[labels == 1], recall_level=0.9)
    assert result == pytest.approx(expected, abs=1e-12)
    # batched use, as in a Trainer's compute_metrics loop
    for start in range(0, 300, 100):
        metric.add_batch(predictions=scores[start : start + 100], references=labels[start : start + 100])
    assert metric.compute(recall_level=0.9) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="references must be 0"):
        metric.compute(predictions=[0.1, 0.2], references=[0, 2])
