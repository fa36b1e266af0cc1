"""oe_common.maths.feature_scores.KNNScore: deep nearest neighbours on L2-normalised features (Sun et al. 2022)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oe_common.maths.feature_scores import KNNScore
from oe_common.maths.scores import FEATURE_SCORES, SCORE_NAMES


def _reference(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest Euclidean distance between normalised rows, by scikit-learn's brute-force neighbours."""
    from sklearn.neighbors import NearestNeighbors

    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(unit(train)).kneighbors(unit(test))
    return dist[:, -1]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_score_equals_scikit_learn_neighbours_on_normalised_features(k):
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 16)), rng.normal(size=(50, 16)) * 3.0
    det = KNNScore(k=k, chunk_size=7).fit(train)
    np.testing.assert_allclose(det.score(test), _reference(train, test, k), rtol=1e-9, atol=1e-12)
    # scale-free: multiplying a feature by a positive constant does not change its score
    np.testing.assert_allclose(det.score(test * 5.0), det.score(test), rtol=1e-12)


def test_knn_score_is_higher_far_from_the_training_directions():
    rng = np.random.default_rng(1)
    train = np.abs(rng.normal(size=(300, 8))) + np.r_[np.full(4, 3.0), np.zeros(4)]  # a cone of directions
    near = np.abs(rng.normal(size=(40, 8))) + np.r_[np.full(4, 3.0), np.zeros(4)]
    far = np.abs(rng.normal(size=(40, 8))) + np.r_[np.zeros(4), np.full(4, 3.0)]
    det = KNNScore(k=5).fit(torch.as_tensor(train))
    assert det.score(far).min() > det.score(near).max()


def test_knn_score_is_registered_and_checks_its_input():
    assert FEATURE_SCORES["knn"] is KNNScore and "knn" in SCORE_NAMES
    with pytest.raises(ValueError, match="k must be"):
        KNNScore(k=0)
    with pytest.raises(ValueError, match="at least 5"):
        KNNScore(k=5).fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="all-zero"):
        KNNScore(k=1).fit(np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        KNNScore().score(np.ones((1, 2)))
    with pytest.raises(ValueError, match="dims"):
        KNNScore(k=1).fit(np.ones((3, 2))).score(np.ones((1, 3)))


def test_the_detector_refuses_the_knn_score_it_cannot_save():
    from transformers import BertTokenizer

    from oe_common.deployment.detector import OODDetector
    from oe_text import GRUClassifierConfig, GRUForSequenceClassification
    from oe_text.textcls.tokenizer_preprocessing import TokenizerPreprocessing

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat"])})
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=6, embedding_size=4, hidden_size=4, num_labels=2))
    with pytest.raises(ValueError, match="'knn' is not saved"):
        OODDetector(model, TokenizerPreprocessing(tok), score="knn", device="cpu")
