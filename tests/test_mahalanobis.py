"""MahalanobisScore (oe_common.maths.feature_scores) against scikit-learn / numpy reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance

from oe_common.maths.feature_scores import MahalanobisScore
from oe_common.maths.scores import MahalanobisScore as ReExported


def blobs(seed: int = 0, n_per_class: int = 60, k: int = 4, d: int = 6):
    """Gaussian classes with distinct means and a shared, correlated covariance."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, size=(k, d))
    mix = rng.normal(size=(d, d))
    x = np.concatenate([rng.normal(size=(n_per_class, d)) @ mix + means[c] for c in range(k)])
    y = np.repeat(np.arange(k), n_per_class)
    return x, y


def sklearn_reference(x_train, y_train, x_test):
    """min_k sqrt(Mahalanobis^2) with sklearn's tied covariance of the class-centred training features."""
    k = y_train.max() + 1
    means = np.stack([x_train[y_train == c].mean(0) for c in range(k)])
    cov = EmpiricalCovariance(assume_centered=True).fit(x_train - means[y_train])
    d2 = np.stack([cov.mahalanobis(x_test - means[c]) for c in range(k)], axis=1)
    return np.sqrt(d2.min(1)), means, cov.covariance_


def test_matches_sklearn_and_numpy_formula():
    x, y = blobs()
    x_test = np.random.default_rng(1).normal(0, 4, size=(50, x.shape[1]))
    det = MahalanobisScore().fit(x, y)
    ref, means, cov = sklearn_reference(x, y, x_test)
    np.testing.assert_allclose(det.means.numpy(), means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(det.covariance.numpy(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(det.score(x_test), ref, rtol=1e-8)
    # explicit formula with numpy's inverse, every class
    inv = np.linalg.inv(cov)
    diff = x_test[:, None, :] - means[None]
    d2 = np.einsum("nkd,de,nke->nk", diff, inv, diff)
    np.testing.assert_allclose(det.distances(x_test, squared=True).numpy(), d2, rtol=1e-8)
    np.testing.assert_array_equal(det.predict_class(x_test).numpy(), d2.argmin(1))


def test_higher_for_far_points_and_tensor_io():
    x, y = blobs(seed=2)
    det = MahalanobisScore().fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    near = torch.tensor(det.means.numpy()[:, :], dtype=torch.float32)  # the class means themselves: distance 0
    far = near + 100.0
    s_near, s_far = det(near), det(far)
    assert isinstance(s_near, torch.Tensor) and s_near.dtype == torch.float32 and s_near.shape == (4,)
    assert torch.all(s_near < 1e-3) and torch.all(s_far > 10 * s_near.max() + 1)


def test_singular_covariance_uses_pseudo_inverse():
    """Features confined to a subspace (as after a low-rank layer): pinv, matching sklearn (which uses pinvh)."""
    x, y = blobs(seed=3, d=4)
    lift = np.random.default_rng(4).normal(size=(4, 7))  # 7-dim features of rank 4
    x7 = x @ lift
    x_test = np.random.default_rng(5).normal(size=(20, 4)) @ lift
    det = MahalanobisScore(rcond=1e-9).fit(x7, y)
    ref, _, _ = sklearn_reference(x7, y, x_test)
    np.testing.assert_allclose(det.score(x_test), ref, rtol=1e-6)


def test_save_load_roundtrip(tmp_path):
    x, y = blobs(seed=6)
    det = MahalanobisScore().fit(x, y)
    path = det.save(tmp_path)
    assert path.name == "mahalanobis.safetensors"
    again = MahalanobisScore.load(tmp_path)
    np.testing.assert_allclose(again.score(x), det.score(x), rtol=1e-12)  # float64, recomputed from the loaded statistics
    assert ReExported is MahalanobisScore


@pytest.mark.parametrize(
    "features,labels,message",
    [
        (np.zeros((3, 2)), np.array([0, 0, 2]), "classes \\[1\\] have no training example"),
        (np.ones((3, 2)), np.array([0, 1]), "labels must be"),
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
        (np.ones((2, 2)), np.array([0.0, 1.0]), "integers"),
    ],
)
def test_bad_inputs(features, labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MahalanobisScore().fit(features, labels)


def test_unfitted_and_wrong_width():
    with pytest.raises(RuntimeError, match="not fitted"):
        MahalanobisScore().score(np.ones((1, 2)))
    x, y = blobs()
    with pytest.raises(ValueError, match="6"):
        MahalanobisScore().fit(x, y).score(np.ones((1, 5)))


def test_classifier_input_features_gru_and_bert():
    """The head's input: the GRU's last-layer final state; BERT's pooler output (eval mode)."""
    from transformers import BertConfig, BertForSequenceClassification

    from oe_common.maths.feature_scores import classifier_input_features
    from oe_text.textcls.modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification

    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 8], [3, 4, 0, 0]])
    mask = (ids != 0).long()
    gru = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=20, num_labels=3)).eval()
    feats = classifier_input_features(gru, {"input_ids": ids, "attention_mask": mask})
    _, h_n = gru.gru(gru.embeddings(ids[1:, :2]))
    torch.testing.assert_close(feats[1:], h_n[-1])
    assert feats.shape == (2, 128) and not feats.requires_grad

    bert = BertForSequenceClassification(
        BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3)
    ).eval()
    feats = classifier_input_features(bert, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(feats, bert.bert(input_ids=ids, attention_mask=mask).pooler_output)
    # fit + score on those features works end to end
    det = MahalanobisScore().fit(feats, torch.tensor([0, 0]))
    assert det(feats).shape == (2,)
    with pytest.raises(AttributeError):
        classifier_input_features(bert, {"input_ids": ids}, head="no_such_head")


def test_zero_covariance_is_an_error():
    with pytest.raises(ValueError, match="covariance of the features is zero"):
        MahalanobisScore().fit(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, 1]))  # one example per class
