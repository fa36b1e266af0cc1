"""``OODDetector``: a trained model + its preprocessing + an anomaly score + a threshold, saved as a Hub checkpoint.

Details: docs/modules.md, section ``oe_common.deployment.detector``; saving and loading: :mod:`oe_common.deployment.detector_io`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..maths.metrics import OODTable, evaluate_ood
from ..maths.feature_scores import (
    MahalanobisScore,
    fit_mahalanobis,
    integer_labels,
    model_logits,
    penultimate_features,
    row_weights,
)
from .detector_io import (
    DETECTOR_CONFIG_NAME,
    MODEL_CARD_NAME,
    TASKS,
    TEXT_TASKS,
    load_detector,
    push_detector,
    save_detector,
    task_of_architecture,
)
from .plugins import load_plugins
from ..maths.thresholds import check_threshold, check_threshold_target, fit_threshold, threshold_for_fpr, threshold_for_tpr
from .preprocessing import (
    DetectorCheckpointError,
    DetectorInputError,
    DetectorPreprocessing,
    preprocessing_class,
    preprocessing_classes,
    read_checkpoint_json,
    some_indices,
)
from ..maths.scores import FEATURE_SCORES, OUTPUT_SCORES, SCORE_NAMES, causal_shift, example_scores, output_score

__all__ = [
    "OODDetector",
    "accuracy",
    "DetectorInputError",
    "DetectorCheckpointError",
    "threshold_for_fpr",
    "threshold_for_tpr",
    "read_checkpoint_json",
    "TASKS",
    "TEXT_TASKS",
    "SCORE_NAMES",
    "DETECTOR_CONFIG_NAME",
    "MODEL_CARD_NAME",
]

#: Default score per task: the LM's mean NLL (paper section 2), -MSP for classifiers (Table 1).
DEFAULT_SCORE = {"causal-lm": "nll", "text-classification": "msp", "image-classification": "msp"}
#: Default batch size (windows for text, images for vision).
DEFAULT_BATCH_SIZE = {"causal-lm": 32, "text-classification": 64, "image-classification": 256}
#: Keys of ``evaluation`` that :func:`accuracy` writes.
_ACCURACY_KEYS = ("accuracy", "accuracy_n", "accuracy_data")
#: A progress bar is shown automatically from this many batches on (``progress=None``).
PROGRESS_MIN_BATCHES = 20


def _infer_task(model: torch.nn.Module) -> str:
    name = type(model).__name__
    task = task_of_architecture(name)
    if task is None:
        raise ValueError(f"cannot tell the task of a {name}; pass task= one of {TASKS}")
    return task


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OODDetector:
    """An anomaly detector: ``model`` + ``preprocessing`` + ``score`` + ``threshold`` (flag = ``score > threshold``).

    Args:
        model: a trained ``transformers`` model: causal LM, text sequence classifier or image classifier.
        preprocessing: the task's registered preprocessing (:mod:`oe_common.deployment.preprocessing`):
            the text package's ``TextPreprocessing`` / ``TokenizerPreprocessing`` or the image package's ``ImagePreprocessing``
            (images; default: no resizing / normalisation, scale to ``[0, 1]``).
        score: one of :data:`SCORE_NAMES` (``nll`` for causal LMs only); default ``nll`` for LMs, ``msp`` else.
        threshold: decision threshold, or None until :meth:`fit_threshold` (``predict`` needs one).
        task: ``"causal-lm"``, ``"text-classification"`` or ``"image-classification"``; inferred from the model
            class name when None.
        score_kwargs: extra arguments of the score (``{"temperature": T}`` for ``energy``).
        training: OE hyper-parameters and provenance (``oe_lambda``, ``oe_loss``, ``outlier_dataset``,
            ``in_distribution_dataset``, epochs, ...), saved in the config and shown on the model card.
        evaluation: detection results (``OODTable.to_dict()``), normally set by :meth:`evaluate`.
        threshold_info: how the threshold was fitted (rule, target, achieved rates), normally set by :meth:`fit_threshold`.
        mahalanobis: the fitted :class:`~oe_common.maths.feature_scores.MahalanobisScore` of ``score="mahalanobis"``
            (or :meth:`fit_mahalanobis` later), held like any other setting and saved with the detector.
        device: where the model runs (default ``cuda`` when available, else ``cpu``).
        batch_size: windows (text) / images per forward pass (default by task, :data:`DEFAULT_BATCH_SIZE`).
        progress: tqdm progress bar: True / False, or None = automatic (from :data:`PROGRESS_MIN_BATCHES` batches).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: DetectorPreprocessing | None = None,
        *,
        score: str | None = None,
        threshold: float | None = None,
        task: str | None = None,
        score_kwargs: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        threshold_info: Mapping[str, Any] | None = None,
        mahalanobis: MahalanobisScore | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ):
        self.task = _infer_task(model) if task is None else task
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        load_plugins()
        if preprocessing is None and self.task not in TEXT_TASKS:
            preprocessing = preprocessing_class(self.task)()  # images: no resizing / normalisation
        classes = preprocessing_classes(self.task)
        if not isinstance(preprocessing, classes):
            names = " or ".join(f"{c.__name__}(...)" for c in classes)
            raise TypeError(f"a {self.task} detector needs preprocessing={names}, got {type(preprocessing).__name__}")
        self.preprocessing = preprocessing.resolved(self.task)
        self.score_name = DEFAULT_SCORE[self.task] if score is None else score
        if self.score_name not in SCORE_NAMES:
            raise ValueError(f"unknown score {self.score_name!r}; choose one of {SCORE_NAMES}")
        if self.score_name == "nll" and self.task != "causal-lm":
            raise ValueError("score 'nll' needs a causal language model; classifiers use msp / uniform_xent / max_logit / energy")
        if self.score_name in FEATURE_SCORES and self.task == "causal-lm":
            raise ValueError(f"score {self.score_name!r} needs a classifier's penultimate features; a causal LM has none")
        if self.score_name in FEATURE_SCORES and self.score_name != "mahalanobis":
            raise ValueError(f"score {self.score_name!r} is not saved by OODDetector yet; use 'mahalanobis' or a logit score")
        self.score_kwargs = dict(score_kwargs or {})
        allowed = {"energy": {"temperature"}, "mahalanobis": {"head"}}.get(self.score_name, set())
        unknown = sorted(set(self.score_kwargs) - allowed)
        if unknown:
            raise ValueError(f"score {self.score_name!r} takes no argument(s) {unknown}")
        if mahalanobis is not None and not isinstance(mahalanobis, MahalanobisScore):
            raise TypeError(f"mahalanobis must be a fitted oe_common.maths.feature_scores.MahalanobisScore, got {type(mahalanobis).__name__}")
        if mahalanobis is not None and not mahalanobis.is_fitted:
            raise ValueError("mahalanobis must be fitted: MahalanobisScore().fit(features, labels) or detector.fit_mahalanobis(...)")
        self.mahalanobis = mahalanobis
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.threshold_info = dict(threshold_info or {})
        self.training = dict(training or {})
        self.evaluation = None if evaluation is None else dict(evaluation)
        self.batch_size = DEFAULT_BATCH_SIZE[self.task] if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.progress = progress
        #: the folder :meth:`from_pretrained` loaded (a Hub id's snapshot in the cache); None for a detector built in memory
        self.checkpoint_folder: Path | None = None
        self.device = _default_device() if device is None else torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocessing.check_model(self.model, self.task)

    # ------------------------------------------------------------------ properties
    @property
    def vocab(self):
        """The vocabulary (text tasks), else None."""
        return getattr(self.preprocessing, "vocab", None)

    @property
    def is_text(self) -> bool:
        return self.task in TEXT_TASKS

    def __repr__(self) -> str:
        return (
            f"OODDetector(task={self.task!r}, model={type(self.model).__name__}, score={self.score_name!r}, "
            f"threshold={self.threshold!r}, device={str(self.device)!r})"
        )

    def to(self, device: str | torch.device) -> "OODDetector":
        """Move the model to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    # ------------------------------------------------------------------ scoring
    def _batches(self, inputs: Any, desc: str) -> tuple[int, Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]]:
        """``(number of inputs, batches)``: the preprocessing's ``(model_inputs, owners)`` with the model inputs on
        :attr:`device`, behind a tqdm progress bar (shown per ``progress``; automatic: from :data:`PROGRESS_MIN_BATCHES`)."""
        from tqdm.auto import tqdm

        n, n_batches, batches = self.preprocessing.batches(inputs, self.task, self.batch_size)

        def on_device():
            show = self.progress if self.progress is not None else n_batches >= PROGRESS_MIN_BATCHES
            with tqdm(total=n_batches, desc=desc, unit="batch", disable=not show, leave=False) as bar:
                for model_inputs, owners in batches:
                    yield {k: v.to(self.device) for k, v in model_inputs.items()}, owners
                    bar.update(1)

        return n, on_device()

    @torch.inference_mode()
    def score(self, inputs: Any) -> np.ndarray:
        """Anomaly scores (higher = more anomalous), float64 array of shape ``(N,)``.

        Args:
            inputs: text tasks: a str or a sequence of str (one example each); images: a sequence of image
                paths / PIL images / uint8 arrays (HW or HWC) / uint8 CHW tensors, or a float tensor
                ``(N, C, H, W)`` that is already preprocessed.
        Raises:
            DetectorInputError: inputs that cannot be scored (empty texts, over-long texts with
                ``long_text="error"``, unreadable images), with their 0-based indices.
        """
        return self._forward_pass(inputs, scores=True, logits=False, desc=f"scoring {self.preprocessing.kind}s")[0]

    @torch.inference_mode()
    def score_and_predict(self, inputs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classifiers: the anomaly scores and what the model predicts, from ONE forward pass over the inputs.

        Returns ``(scores, label_ids, probabilities)``, each ``(N,)``: :meth:`score`'s float64 scores, the predicted
        class ``argmax_k z_k`` (int64; its name is ``model.config.id2label[id]``) and its softmax probability
        ``softmax(z)_id`` (float64), where ``z`` is the input's logits (the token-weighted mean of its rows' logits
        when the preprocessing cuts a long text into several rows, as in :func:`accuracy`).
        """
        if self.task == "causal-lm":
            raise ValueError("score_and_predict needs a classifier; a causal LM predicts tokens, not a label")
        scores, logits = self._forward_pass(inputs, scores=True, logits=True, desc=f"scoring {self.preprocessing.kind}s")
        assert logits is not None
        probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        label_ids = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
        return scores, label_ids.astype(np.int64), probabilities[np.arange(len(label_ids)), label_ids]

    def _forward_pass(self, inputs: Any, *, scores: bool, logits: bool, desc: str) -> tuple[np.ndarray, np.ndarray | None]:
        """One pass over the preprocessing's batches; per input, ``(score (N,), mean logits (N, K) or None)``.

        ``scores``: the weighted mean of the input's row scores (:meth:`_rows`; all zeros when False).
        ``logits`` (classifiers): the mean of the input's row logits, weighted as the scores.
        """
        if scores and self.score_name in FEATURE_SCORES and self.mahalanobis is None:
            raise ValueError(
                f"score={self.score_name!r} needs class means and a covariance fitted on training data: call "
                "detector.fit_mahalanobis(train_inputs, train_labels) first"
            )
        n, batches = self._batches(inputs, desc)
        sums, weights = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
        logit_sums: np.ndarray | None = None
        if n == 0:
            return sums, np.zeros((0, 0)) if logits else None
        for model_inputs, owners in batches:
            values, counts, row_logits = self._rows(model_inputs, scores)
            np.add.at(sums, owners, (values.double() * counts).cpu().numpy())
            np.add.at(weights, owners, counts.cpu().numpy())
            if logits:  # classifiers: counts are the row weights (real tokens of a text row, 1 for an image)
                if logit_sums is None:
                    logit_sums = np.zeros((n, row_logits.shape[-1]), dtype=np.float64)
                np.add.at(logit_sums, owners, (row_logits.double() * counts.to(row_logits.device)[:, None]).cpu().numpy())
        return sums / weights, None if logit_sums is None else logit_sums / weights[:, None]

    def _rows(self, model_inputs: Mapping[str, torch.Tensor], scores: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch, per row: its score (zeros without ``scores``), its weight in the mean over an input's rows and
        its logits, from one forward pass.

        Causal LM window: the mean over its ``T_w`` predicted tokens, weight ``T_w`` (so an input's score is the mean
        over all its predicted tokens); classifier row: :func:`~oe_common.maths.feature_scores.row_weights` (text: its
        number of tokens; image: 1). Scores: :func:`~oe_common.maths.scores.example_scores` of the logits, the model's own
        anomaly head (:data:`~oe_common.maths.scores.OUTPUT_SCORES`), or the fitted Mahalanobis score's ``min_k`` distance
        of the row's penultimate feature (the input of ``model.<head>``, ``score_kwargs["head"]``, default
        ``"classifier"``).
        """
        if scores and self.score_name in FEATURE_SCORES:
            assert self.mahalanobis is not None
            features, output = penultimate_features(self.model, model_inputs, self.feature_head)
            values = self.mahalanobis.distances(features).amin(dim=1)  # (B,) float64 on the CPU
            return values, row_weights(model_inputs, len(features), features.device).cpu(), model_logits(output)
        output = self.model(**model_inputs)
        logits = model_logits(output)
        if scores and self.score_name in OUTPUT_SCORES:  # the model's own anomaly head
            values = output_score(self.score_name, output)
            return values, row_weights(model_inputs, len(values), values.device), logits
        if scores and self.task == "causal-lm":
            shifted, targets, mask = causal_shift(logits, model_inputs["input_ids"], model_inputs.get("attention_mask"))
            values = example_scores(shifted, (self.score_name,), targets=targets, mask=mask, **self.score_kwargs)[self.score_name]
            return values, mask.sum(-1).double(), logits
        counts = row_weights(model_inputs, len(logits), logits.device)
        if not scores:
            return torch.zeros_like(counts), counts, logits
        return example_scores(logits, (self.score_name,), **self.score_kwargs)[self.score_name], counts, logits

    @property
    def feature_head(self) -> str:
        """The module whose input is the penultimate feature (``score_kwargs["head"]``, default ``"classifier"``)."""
        return str(self.score_kwargs.get("head", "classifier"))

    @torch.inference_mode()
    def fit_mahalanobis(self, inputs: Any, labels: Any, *, num_classes: int | None = None, rcond: float = 1e-10) -> MahalanobisScore:
        """Fit the ``"mahalanobis"`` score on the in-distribution TRAINING data and keep it (saved with the detector).

        ``inputs`` are raw inputs as :meth:`score` takes them, ``labels`` their integer classes ``(N,)``; every row the
        preprocessing makes of an input contributes its penultimate feature with the input's label
        (:func:`~oe_common.maths.feature_scores.fit_mahalanobis`: class means ``mu_k``, shared covariance ``Sigma``, ``score(x)
        = min_k sqrt((x - mu_k)^T pinv(Sigma) (x - mu_k))``). ``num_classes`` defaults to ``model.config.num_labels``;
        every class needs an example. Returns the fitted score (used with ``score="mahalanobis"``).
        """
        if self.task == "causal-lm":
            raise ValueError("fit_mahalanobis needs a classifier (text-classification or image-classification), not a causal LM")
        y = integer_labels(labels)
        n, batches = self._batches(inputs, "features for mahalanobis")
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), one per input, got {y.shape}")
        if n == 0:
            raise ValueError("fit_mahalanobis needs at least one training input")
        self.mahalanobis = fit_mahalanobis(self.model, batches, y, head=self.feature_head, num_classes=num_classes, rcond=rcond)
        return self.mahalanobis

    def predict(self, inputs: Any) -> np.ndarray:
        """``score(inputs) > threshold`` as a bool array (True = anomaly)."""
        return self.predict_from_scores(self.score(inputs))

    def predict_from_scores(self, scores: Any) -> np.ndarray:
        """``scores > threshold`` (bool array); needs a threshold (:meth:`fit_threshold` or ``threshold=``).

        Raises:
            ValueError: a NaN score (``NaN > t`` is False, so it would silently count as normal).
        """
        if self.threshold is None:
            raise ValueError("this detector has no threshold: call fit_threshold(in_data, target_fpr=...) or set .threshold")
        threshold = check_threshold(self.threshold)
        values = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
        nan = np.flatnonzero(np.isnan(values.ravel()))
        if nan.size:
            raise ValueError(f"{nan.size} NaN score(s) (index {some_indices(nan.tolist())}): a NaN is neither normal nor anomalous; "
                             "check the model (e.g. NaN weights) and the inputs")
        return values > threshold

    # ------------------------------------------------------------------ thresholds and evaluation
    def fit_threshold(self, in_data: Any, out_data: Any = None, *, target_fpr: float | None = None,
                      target_tpr: float | None = None) -> float:
        """Fit ``threshold`` on HELD-OUT raw inputs (anything :meth:`score` takes; never the test anomalies you report)
        for exactly one target: ``target_fpr`` (flag at most that fraction of ``in_data``) or ``target_tpr`` (flag at
        least that fraction of the anomalies ``out_data``), :func:`oe_common.maths.thresholds.fit_threshold`; returns it.
        The target is checked before any scoring (which can take long)."""
        check_threshold_target(target_fpr, target_tpr, out_data is not None)
        in_scores = self.score(in_data)
        out_scores = None if out_data is None else self.score(out_data)
        return self.fit_threshold_from_scores(in_scores, out_scores, target_fpr=target_fpr, target_tpr=target_tpr)

    def fit_threshold_from_scores(self, in_scores: Any, out_scores: Any = None, *, target_fpr: float | None = None,
                                  target_tpr: float | None = None) -> float:
        """:meth:`fit_threshold` on precomputed scores (``(n,)`` in-distribution, optional ``(m,)`` anomalies); the
        rule and the achieved rates are kept in ``threshold_info``."""
        self.threshold, self.threshold_info = fit_threshold(in_scores, out_scores, target_fpr=target_fpr, target_tpr=target_tpr)
        return self.threshold

    def evaluate(self, in_data: Any, out_data_by_set: Mapping[str, Any], *, recall_level: float | None = None, n_draws: int = 1,
                 ratio: int = 5, seed: int = 0, store: bool = True, allow_small_sets: bool = False) -> OODTable:
        """Score the test data (raw inputs: anything :meth:`score` takes) and evaluate the scores (:meth:`evaluate_scores`)."""
        in_scores = self.score(in_data)
        out_scores = {name: self.score(data) for name, data in out_data_by_set.items()}
        return self.evaluate_scores(in_scores, out_scores, recall_level=recall_level, n_draws=n_draws, ratio=ratio, seed=seed,
                                    store=store, allow_small_sets=allow_small_sets)

    def evaluate_scores(self, in_scores: Any, out_scores_by_set: Mapping[str, Any], *, recall_level: float | None = None,
                        n_draws: int = 1, ratio: int = 5, seed: int = 0, store: bool = True,
                        allow_small_sets: bool = False) -> OODTable:
        """:func:`oe_common.maths.metrics.evaluate_ood` of this detector's test scores (1 : ``ratio`` base rate; a set with
        fewer than ``len(in) // ratio`` examples is an error unless ``allow_small_sets``), ``meta["score"]`` set.

        ``recall_level`` defaults to 0.90 for text (FPR90) and 0.95 for images (FPR95), as in the paper.
        With ``store=True`` the table is kept in ``evaluation`` (saved in the config and on the model card).
        """
        level = recall_level if recall_level is not None else (0.90 if self.is_text else 0.95)
        table = evaluate_ood(in_scores, out_scores_by_set, n_draws=n_draws, ratio=ratio, seed=seed, recall_level=level,
                             allow_small_sets=allow_small_sets)
        table.meta.update({"score": self.score_name})
        if store:  # a stored accuracy (:func:`accuracy`) stays
            kept = {k: v for k, v in (self.evaluation or {}).items() if k in _ACCURACY_KEYS}
            self.evaluation = {**table.to_dict(), **kept}
        return table

    # ------------------------------------------------------------------ persistence (oe_common.deployment.detector_io)
    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write the checkpoint into ``save_directory``; returns the folder (:func:`oe_common.deployment.detector_io.save_detector`:
        safetensors only, the sha256 of every written file recorded; ``repo_id`` only changes the card's snippet)."""
        return save_detector(self, save_directory, repo_id=repo_id)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None, *,
                        device: str | torch.device | None = None, batch_size: int | None = None, progress: bool | None = None,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None) -> "OODDetector":
        """Load a detector from a local folder or a Hub repo id (``revision`` = branch/tag/commit); every file is checked
        and a bad one named (:func:`oe_common.deployment.detector_io.load_detector`: safetensors only, no remote code)."""
        return load_detector(name_or_path, revision, kind="detector", device=device, batch_size=batch_size, progress=progress,
                             token=token, cache_dir=cache_dir, cls=cls)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None, revision: str | None = None,
                    commit_message: str = "Upload OE detector") -> str:
        """Save into a temporary folder and upload it to the Hub; returns the URL (:func:`oe_common.deployment.detector_io.push_detector`)."""
        return push_detector(self, repo_id, private=private, token=token, revision=revision, commit_message=commit_message)


@torch.inference_mode()
def accuracy(detector: OODDetector, inputs: Any, labels: Any, *, data: str | None = None, store: bool = True) -> float:
    """A classifier detector's accuracy on labelled in-distribution inputs: ``mean(argmax_k z_k == y)``, in ``[0, 1]``.

    An input spanning several rows (a long text's windows) is predicted from the token-weighted mean of its rows'
    logits. With ``store=True`` it is kept in ``detector.evaluation`` (``accuracy``, ``accuracy_n``, ``accuracy_data``
    = ``data``, e.g. ``"clinc150 test"``), saved in the config and shown on the model card.
    """
    if detector.task == "causal-lm":
        raise ValueError("accuracy needs a classifier, not a causal LM")
    y = integer_labels(labels, check=False)
    logits = detector._forward_pass(inputs, scores=False, logits=True, desc="accuracy")[1]
    assert logits is not None
    n = len(logits)
    if y.shape != (n,) or n == 0:
        raise ValueError(f"labels must have shape ({n},), one per input (and n > 0), got {y.shape}")
    value = float(np.mean(logits.argmax(axis=1) == y))
    if store:
        detector.evaluation = {**(detector.evaluation or {}), "accuracy": value, "accuracy_n": int(n), "accuracy_data": data}
    return value
