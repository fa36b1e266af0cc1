"""The evaluation path of a model trained with :class:`~oe_common.training.trainer.OETrainer`: per-example anomaly scores of
a dataset, and the paper's detection table built from them.

Every function takes the trainer first: it supplies the batches (``get_test_dataloader``: ``data_collator``,
``per_device_eval_batch_size``), the device and processes (``accelerator``) and the scores of one batch (its hook
``score_batch_many``, by default :func:`logit_scores`; a trainer for another kind of model, e.g. a density model,
overrides the hook and sets its own ``score_names`` and ``default_score``). ``OETrainer.compute_scores`` and
``OETrainer.evaluate_ood`` are these functions as methods.

Convention: HIGHER score = MORE anomalous (:mod:`oe_common.maths.scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..maths import metrics as oe_metrics
from ..maths.scores import example_scores

if TYPE_CHECKING:
    from .trainer import OETrainer

__all__ = ["logit_scores", "compute_scores", "evaluate_ood"]


def _score_names(trainer: OETrainer, score: str | Sequence[str] | None) -> tuple[str, ...]:
    """``score`` (``None``: the trainer's ``default_score``) as a tuple of names, each checked against the trainer's
    ``score_names``."""
    score = trainer.default_score if score is None else score
    names = (score,) if isinstance(score, str) else tuple(score)
    if not names:
        raise ValueError("give at least one score name")
    for name in names:
        if name not in trainer.score_names:
            raise ValueError(f"score must be one of {trainer.score_names}, got {name!r}")
    return names


def logit_scores(trainer: OETrainer, model: nn.Module, batch: Mapping[str, Any], scores: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: (B,)}`` scores of one prepared batch from ONE forward pass (``OETrainer.score_batch_many``'s default).

    Classifiers: the :mod:`oe_common.maths.scores` function of that name on ``(B, K)`` logits (``"nll"`` needs a language
    model). Token-level logits ``(B, L, V)``: a per-sequence mean over real positions (``trainer.logits_and_mask``)
    -- for causal LMs position t scores the prediction of token t+1 (``"nll"`` = mean token NLL, ``"uniform_xent"``
    = mean cross-entropy-to-uniform score, the others the mean of their token-level score):
    :func:`oe_common.maths.scores.example_scores`.
    """
    labels = batch.get("labels")
    logits, mask = trainer.logits_and_mask(model(**trainer._model_inputs(batch)), batch)
    targets = labels if isinstance(labels, torch.Tensor) else batch.get("input_ids")
    return example_scores(logits, scores, targets=targets, mask=mask, causal=trainer.is_causal_lm(model))


@torch.no_grad()
def compute_scores(trainer: OETrainer, dataset: Any, score: str | Sequence[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Anomaly score of every example of ``dataset``, in dataset order, as a float64 array ``(N,)``.

    ``score`` may also be a list of names: then every batch goes through the model ONCE and a dict
    ``{name: (N,)}`` is returned. ``None``: the trainer's ``default_score``. With several processes each scores its
    share and the scores are gathered with ``gather_for_metrics``, which drops the samples repeated to even out the
    last batches: every process returns the single-process array.
    """
    names = _score_names(trainer, score)
    dataloader = trainer.get_test_dataloader(dataset)
    model = trainer.model
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    try:
        for batch in dataloader:
            batch = trainer._prepare_inputs(batch)
            with trainer.accelerator.autocast():
                batch_scores = trainer.score_batch_many(model, batch, names)
            for name in names:
                chunks[name].append(trainer.accelerator.gather_for_metrics(batch_scores[name].float()).cpu())
    finally:
        model.train(was_training)
    if not chunks[names[0]]:
        raise ValueError("the dataset to score is empty")
    arrays = {name: torch.cat(parts).double().numpy() for name, parts in chunks.items()}
    return arrays[names[0]] if score is None or isinstance(score, str) else arrays


def evaluate_ood(
    trainer: OETrainer,
    in_dataset: Any,
    ood_datasets: Mapping[str, Any],
    score: str | None = None,
    n_draws: int = 1,
    recall_level: float | Sequence[float] = 0.95,
    seed: int = 0,
    ratio: int = 5,
    allow_small_sets: bool = False,
) -> oe_metrics.OODTable:
    """Detection table of ``in_dataset`` against each anomaly set (:func:`oe_common.maths.metrics.evaluate_ood`).

    Scores come from :func:`compute_scores`; each anomaly set is subsampled to ``len(in) // ratio`` examples
    (the paper's 1:5 base rate), ``n_draws`` times with ``seed``; several ``recall_level`` values give every
    ``fpr<N>`` from the same draws. ``table.meta["score"]`` records the score. A
    smaller set is an error unless ``allow_small_sets`` (then used whole; its row says what ran). ``score=None``:
    the trainer's ``default_score``.
    """
    score = trainer.default_score if score is None else score
    if not ood_datasets:
        raise ValueError("ood_datasets is empty: give at least one anomaly set, e.g. {'ewt-email': dataset}")
    oe_metrics.check_n_draws(n_draws)  # before the (long) scoring
    in_scores = compute_scores(trainer, in_dataset, score)
    out_scores = {name: compute_scores(trainer, dataset, score) for name, dataset in ood_datasets.items()}
    table = oe_metrics.evaluate_ood(in_scores, out_scores, n_draws=n_draws, ratio=ratio, seed=seed, recall_level=recall_level,
                                    allow_small_sets=allow_small_sets)
    table.meta["score"] = score
    return table
