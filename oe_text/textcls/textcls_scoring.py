"""Every anomaly score of the text-classifier recipe, from one forward pass per batch of texts.

Logit scores (:func:`oe_common.maths.scores.example_scores`) and the feature scores :class:`MahalanobisScore` /
:class:`KNNScore` (:mod:`oe_common.maths.feature_scores`) on two feature kinds: ``classifier``, the input of
``model.classifier`` (MiniLM: the pooler output; GRU: the last state), and ``mean``, the mean over the real tokens of
the last hidden layer (score names with the suffix ``_mean``). Every score is "higher = more anomalous".

The batches are the detector's (``preprocessing.batches``), so a logit or ``mahalanobis`` score equals what a saved
:class:`~oe_common.deployment.detector.OODDetector` computes. The detector runs one score per pass and saves neither k-NN banks
nor mean-pooled features, which is why the evaluation has this loop (:func:`forward_texts`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from oe_common.maths.feature_scores import KNNScore, MahalanobisScore, classifier_input_features
from oe_common.maths.scores import example_scores

__all__ = ["FEATURE_KINDS", "forward_texts", "fit_feature_scores", "score_texts"]

#: Feature kind -> the suffix of its score names (``mahalanobis``, ``knn``; ``mahalanobis_mean``, ``knn_mean``).
FEATURE_KINDS = {"classifier": "", "mean": "_mean"}


@torch.inference_mode()
def forward_texts(model: torch.nn.Module, preprocessing: Any, texts: Sequence[str], batch_size: int,
                  desc: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(logits (N, K), {"classifier": (N, D), "mean": (N, H)})`` of raw ``texts``, in order, from ONE forward pass
    per batch of ``preprocessing``: ``classifier`` is the input of ``model.classifier``
    (:func:`~oe_common.maths.feature_scores.classifier_input_features`), ``mean`` the mean of the last hidden layer over the
    real tokens (``sum_t m_t h_t / sum_t m_t``, ``m`` the attention mask). Float32, as the model computes them."""
    model.eval()
    device = next(model.parameters()).device
    n, n_batches, batches = preprocessing.batches(list(texts), "text-classification", batch_size)
    out: dict[str, np.ndarray] = {}
    for inputs, owners in tqdm(batches, total=n_batches, desc=desc, leave=False, disable=n_batches < 5):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        features, output = classifier_input_features(model, {**inputs, "output_hidden_states": True}, return_output=True)
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        batch = {"logits": output.logits, "classifier": features,
                 "mean": (output.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp_min(1)}
        for key, value in batch.items():
            out.setdefault(key, np.zeros((n, value.shape[1]), np.float32))[owners] = value.float().cpu().numpy()
    if not out:
        raise ValueError(f"{desc}: no texts to score")
    return out.pop("logits"), out


def fit_feature_scores(model: torch.nn.Module, preprocessing: Any, texts: Sequence[str], labels: np.ndarray, knn_k: int,
                       batch_size: int, desc: str) -> tuple[dict[str, tuple[str, Any]], np.ndarray]:
    """Mahalanobis and k-NN (``k = min(knn_k, N)``) on both feature kinds of the training ``texts`` with their class
    ids ``labels`` (N,): ``({score name: (feature kind, fitted score)}, the classes present)``. The class means are
    over the classes ``labels`` holds (a capped subset may miss a rare class)."""
    _, feats = forward_texts(model, preprocessing, texts, batch_size, desc)
    present, fit_labels = np.unique(labels, return_inverse=True)
    fitted: dict[str, tuple[str, Any]] = {}
    for kind, suffix in FEATURE_KINDS.items():
        fitted["mahalanobis" + suffix] = (kind, MahalanobisScore().fit(feats[kind], fit_labels, num_classes=len(present)))
        fitted["knn" + suffix] = (kind, KNNScore(k=min(knn_k, len(texts))).fit(feats[kind]))
    return fitted, present


def score_texts(model: torch.nn.Module, preprocessing: Any, texts: Sequence[str], logit_scores: Sequence[str],
                feature_scores: Mapping[str, tuple[str, Any]], batch_size: int, desc: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({score: (N,) float64}, logits (N, K))``: the ``logit_scores`` and the fitted ``feature_scores``
    (:func:`fit_feature_scores`) of ``texts``."""
    logits, feats = forward_texts(model, preprocessing, texts, batch_size, desc)
    scores = {k: v.double().numpy() for k, v in example_scores(torch.from_numpy(logits), logit_scores).items()}
    for name, (kind, fitted) in feature_scores.items():
        scores[name] = np.asarray(fitted.score(feats[kind]), dtype=np.float64)
    return scores, logits
