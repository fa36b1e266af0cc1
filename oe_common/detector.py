"""``OODDetector``: a trained model + its preprocessing + an anomaly score + a threshold, saved as a Hub checkpoint.

Details: docs/modules.md, section ``oe_common.detector``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .files import sha256_file
from .metrics import OODTable, as_score_array, evaluate_ood
from .feature_scores import MAHALANOBIS_NAME, MahalanobisScore, classifier_input_features
from .plugins import ENTRY_POINT_GROUP, load_plugins
from .thresholds import check_threshold, check_threshold_target, threshold_for_fpr, threshold_for_tpr
from .preprocessing import (
    DetectorCheckpointError,
    DetectorInputError,
    DetectorPreprocessing,
    preprocessing_class,
    preprocessing_classes,
    read_checkpoint_json,
    some_indices,
)
from .scores import FEATURE_SCORES, SCORE_NAMES, causal_shift, example_scores

__all__ = [
    "OODDetector",
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
    "IMAGE_SUFFIXES",
]

logger = logging.getLogger(__name__)

DETECTOR_CONFIG_NAME = "detector_config.json"
#: Key of ``detector_config.json``: ``{file name relative to the folder: sha256}`` of every file the save wrote.
FILE_HASHES_KEY = "file_sha256"
MODEL_CARD_NAME = "README.md"
MODEL_CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")
_FORMAT = "oe.OODDetector"
_VERSION = 1

TEXT_TASKS = ("causal-lm", "text-classification")
TASKS = TEXT_TASKS + ("image-classification",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Default score per task: the LM's mean NLL (paper section 2), -MSP for classifiers (Table 1).
DEFAULT_SCORE = {"causal-lm": "nll", "text-classification": "msp", "image-classification": "msp"}
#: Default batch size (windows for text, images for vision).
DEFAULT_BATCH_SIZE = {"causal-lm": 32, "text-classification": 64, "image-classification": 256}
#: Auto class per task (no trust_remote_code: the model type must be registered).
_AUTO_CLASS = {
    "causal-lm": "AutoModelForCausalLM",
    "text-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
#: Keys of ``evaluation`` that :meth:`OODDetector.accuracy` writes.
_ACCURACY_KEYS = ("accuracy", "accuracy_n", "accuracy_data")
#: A progress bar is shown automatically from this many batches on (``progress=None``).
PROGRESS_MIN_BATCHES = 20

# =============================================================================================== preprocessing
def _preprocessing_class(task: str, kind: str | None = None) -> type[DetectorPreprocessing]:
    """The preprocessing class of ``task`` named ``kind`` (a saved spec's ``"type"``; None: the task's default)."""
    load_plugins()
    cls = preprocessing_class(task, kind)
    if cls is None:
        known = [c.kind for c in preprocessing_classes(task)]
        if kind is not None and known:
            raise DetectorCheckpointError(f"preprocessing type {kind!r} does not serve task {task!r}; known types: {known}")
        raise TypeError(
            f"no preprocessing is registered for task {task!r}: install the package that provides it (it registers "
            f"on import through the {ENTRY_POINT_GROUP!r} entry points)"
        )
    return cls


def _spec_class(task: str, spec: Mapping[str, Any]) -> type[DetectorPreprocessing]:
    """The class that wrote a saved preprocessing ``spec`` (by its ``"type"``)."""
    kind = spec.get("type")
    return _preprocessing_class(task, None if kind is None else str(kind))


# =============================================================================================== hub helpers
def _truthy_env(name: str) -> bool:
    value = os.environ.get(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (in the environment now, or when ``huggingface_hub`` was imported)."""
    if _truthy_env("HF_HUB_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else with a path shape is a (missing) local folder."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None, token: Any, cache_dir: Any) -> Path:
    """A local folder holding the checkpoint: the folder itself, or a ``snapshot_download`` of a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DetectorCheckpointError(f"{str(name_or_path)!r} is a file; give the checkpoint FOLDER (the one with {DETECTOR_CONFIG_NAME})")
        return path
    name = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise DetectorCheckpointError(f"checkpoint folder {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception as exc:
        raise DetectorCheckpointError(f"{name!r} is neither an existing folder nor a valid Hub repo id ({exc})") from None
    offline = hub_offline()
    try:
        local = snapshot_download(
            name,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=["*.json", "*.safetensors", "README.md", "*.txt", "*.model"],  # + tokenizer vocab / merges / sentencepiece files
            local_files_only=offline,
        )
    except Exception as exc:  # offline, no connection, repo not found, gated, ...: re-raise with what to do
        kind = type(exc).__name__
        if offline:
            hint = (
                f"HF_HUB_OFFLINE is set and {name!r} (revision {revision or 'main'}) is not in the local Hugging Face "
                "cache. Pass a local checkpoint folder, or unset HF_HUB_OFFLINE on a machine with network access."
            )
        elif "NotFound" in kind or "RepositoryNotFound" in kind:
            hint = f"the Hub has no repo {name!r} you can read (check the id and revision; private repos need a token / `hf auth login`)."
        else:
            hint = "the Hub could not be reached (no network?). Pass a local checkpoint folder or retry with network access."
        raise RuntimeError(f"cannot load detector {name!r} from the Hugging Face Hub: {hint} [{kind}: {exc}]") from exc
    return Path(local)


# =============================================================================================== the detector
def task_of_architecture(name: str) -> str | None:
    """The detector task of a model class name (``config.json``'s ``architectures``), None when unknown."""
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith("ForImageClassification"):
        return "image-classification"
    return None


def _infer_task(model: torch.nn.Module) -> str:
    name = type(model).__name__
    task = task_of_architecture(name)
    if task is None:
        raise ValueError(f"cannot tell the task of a {name}; pass task= one of {TASKS}")
    return task


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    return logits


class OODDetector:
    """An anomaly detector: ``model`` + ``preprocessing`` + ``score`` + ``threshold`` (flag = ``score > threshold``).

    Args:
        model: a trained ``transformers`` model: causal LM, text sequence classifier or image classifier.
        preprocessing: the task's registered preprocessing (:mod:`oe_common.preprocessing`):
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
            preprocessing = _preprocessing_class(self.task)()  # images: no resizing / normalisation
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
            raise TypeError(f"mahalanobis must be a fitted oe_common.feature_scores.MahalanobisScore, got {type(mahalanobis).__name__}")
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
    def _progress_bar(self, n_batches: int, desc: str):
        from tqdm.auto import tqdm

        show = self.progress if self.progress is not None else n_batches >= PROGRESS_MIN_BATCHES
        return tqdm(total=n_batches, desc=desc, unit="batch", disable=not show, leave=False)

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
        when the preprocessing cuts a long text into several rows, as in :meth:`accuracy`).
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

        ``scores``: the weighted mean of the input's row scores (:meth:`_row_scores`; all zeros when False).
        ``logits`` (classifiers): the mean of the input's row logits weighted by :meth:`_row_weights`.
        """
        feature_score = scores and self.score_name in FEATURE_SCORES
        if feature_score and self.mahalanobis is None:
            raise ValueError(
                f"score={self.score_name!r} needs class means and a covariance fitted on training data: call "
                "detector.fit_mahalanobis(train_inputs, train_labels) first"
            )
        n, n_batches, batches = self.preprocessing.batches(inputs, self.task, self.batch_size)
        sums, weights = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
        logit_sums: np.ndarray | None = None
        if n == 0:
            return sums, np.zeros((0, 0)) if logits else None
        with self._progress_bar(n_batches, desc) as bar:
            for model_inputs, owners in batches:
                model_inputs = {k: v.to(self.device) for k, v in model_inputs.items()}
                if feature_score:
                    values, counts, row_logits = self._feature_row_scores(model_inputs)
                else:
                    row_logits = _logits(self.model(**model_inputs))
                    if scores:
                        values, counts = self._row_scores(row_logits, model_inputs)
                    else:
                        counts = self._row_weights(model_inputs, len(row_logits), row_logits.device)
                        values = torch.zeros_like(counts)
                np.add.at(sums, owners, (values.double() * counts).cpu().numpy())
                np.add.at(weights, owners, counts.cpu().numpy())
                if logits:  # classifiers: counts are the row weights (real tokens of a text row, 1 for an image)
                    if logit_sums is None:
                        logit_sums = np.zeros((n, row_logits.shape[-1]), dtype=np.float64)
                    np.add.at(logit_sums, owners, (row_logits.double() * counts.to(row_logits.device)[:, None]).cpu().numpy())
                bar.update(1)
        return sums / weights, None if logit_sums is None else logit_sums / weights[:, None]

    @staticmethod
    def _row_weights(model_inputs: Mapping[str, torch.Tensor], n_rows: int, device: torch.device) -> torch.Tensor:
        """A classifier row's weight in the mean over an input's rows: its number of real tokens (text), else 1."""
        mask = model_inputs.get("attention_mask")
        return mask.sum(-1).double() if mask is not None else torch.ones(n_rows, dtype=torch.float64, device=device)

    @property
    def feature_head(self) -> str:
        """The module whose input is the penultimate feature (``score_kwargs["head"]``, default ``"classifier"``)."""
        return str(self.score_kwargs.get("head", "classifier"))

    def _features(self, model_inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """``(B, D)`` penultimate features of one batch and the model's output of that forward pass
        (:func:`~oe_common.feature_scores.classifier_input_features`)."""
        try:
            self.model.get_submodule(self.feature_head)
        except AttributeError:
            raise ValueError(
                f"{type(self.model).__name__} has no module {self.feature_head!r} whose input is the penultimate feature; "
                "pass score_kwargs={'head': '<name of the final linear layer>'}"
            ) from None
        return classifier_input_features(self.model, model_inputs, self.feature_head, return_output=True)

    def _feature_row_scores(self, model_inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per batch row: ``min_k`` Mahalanobis distance of its feature (float64), its weight (:meth:`_row_weights`)
        and its logits (the same forward pass)."""
        assert self.mahalanobis is not None
        features, output = self._features(model_inputs)
        values = self.mahalanobis.distances(features).amin(dim=1)  # (B,) float64 on the CPU
        return values, self._row_weights(model_inputs, len(features), features.device).cpu(), _logits(output)

    @torch.inference_mode()
    def fit_mahalanobis(self, inputs: Any, labels: Any, *, num_classes: int | None = None, rcond: float = 1e-10) -> MahalanobisScore:
        """Fit the ``"mahalanobis"`` score on the in-distribution TRAINING data and keep it (saved with the detector).

        ``inputs`` are raw inputs as :meth:`score` takes them, ``labels`` their integer classes ``(N,)``. Every row the
        preprocessing makes of an input (one per text with a tokenizer; the windows of a long text with a vocabulary)
        contributes its penultimate feature ``x`` (the input of ``model.<head>``, :attr:`feature_head`) with the
        input's label. Then (:class:`~oe_common.feature_scores.MahalanobisScore`) ``mu_k`` = class means,
        ``Sigma`` = the shared covariance of ``x - mu_y``, and ``score(x) = min_k sqrt((x - mu_k)^T pinv(Sigma) (x - mu_k))``.
        ``num_classes`` defaults to ``model.config.num_labels``; every class needs an example. Returns the fitted score;
        set ``detector.score_name = "mahalanobis"`` (or construct with ``score="mahalanobis"``) to use it.
        """
        if self.task == "causal-lm":
            raise ValueError("fit_mahalanobis needs a classifier (text-classification or image-classification), not a causal LM")
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class ids, got dtype {y.dtype}")
        n, n_batches, batches = self.preprocessing.batches(inputs, self.task, self.batch_size)
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), one per input, got {y.shape}")
        if n == 0:
            raise ValueError("fit_mahalanobis needs at least one training input")
        features, row_labels = [], []
        with self._progress_bar(n_batches, "features for mahalanobis") as bar:
            for model_inputs, owners in batches:
                model_inputs = {k: v.to(self.device) for k, v in model_inputs.items()}
                features.append(self._features(model_inputs)[0].double().cpu())
                row_labels.append(y[owners])
                bar.update(1)
        if num_classes is None:
            num_classes = getattr(getattr(self.model, "config", None), "num_labels", None)
        self.mahalanobis = MahalanobisScore(rcond=rcond).fit(torch.cat(features), np.concatenate(row_labels), num_classes=num_classes)
        return self.mahalanobis

    @torch.inference_mode()
    def accuracy(self, inputs: Any, labels: Any, *, data: str | None = None, store: bool = True) -> float:
        """Classification accuracy on labelled in-distribution inputs: ``mean(argmax_k z_k == y)``, in ``[0, 1]``.

        An input spanning several rows (a long text's windows) is predicted from the token-weighted mean of its rows'
        logits. With ``store=True`` it is kept in ``evaluation`` (``accuracy``, ``accuracy_n``, ``accuracy_data`` =
        ``data``, e.g. ``"clinc150 test"``), saved in the config and shown on the model card.
        """
        if self.task == "causal-lm":
            raise ValueError("accuracy needs a classifier, not a causal LM")
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        logits = self._forward_pass(inputs, scores=False, logits=True, desc="accuracy")[1]
        assert logits is not None
        n = len(logits)
        if y.shape != (n,) or n == 0:
            raise ValueError(f"labels must have shape ({n},), one per input (and n > 0), got {y.shape}")
        value = float(np.mean(logits.argmax(axis=1) == y))
        if store:
            self.evaluation = {**(self.evaluation or {}), "accuracy": value, "accuracy_n": int(n), "accuracy_data": data}
        return value

    def _row_scores(self, logits: torch.Tensor, model_inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per batch row: its score and its weight in the mean over an input's rows (:func:`~oe_common.scores.example_scores`).

        Causal LM window: the mean over its ``T_w`` predicted tokens, weight ``T_w`` (so an input's score is the mean over
        all its predicted tokens); text classifier chunk: weight = its number of tokens; image: weight 1.
        """
        mask = model_inputs.get("attention_mask")
        targets = None
        if self.task == "causal-lm":
            logits, targets, mask = causal_shift(logits, model_inputs["input_ids"], mask)
            counts = mask.sum(-1)
        else:
            counts = self._row_weights(model_inputs, len(logits), logits.device)
            mask = None  # (B, K) classifier logits have no positions
        values = example_scores(logits, (self.score_name,), targets=targets, mask=mask, **self.score_kwargs)[self.score_name]
        return values, counts.double()

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
    def fit_threshold(
        self,
        in_data: Any,
        out_data: Any = None,
        *,
        target_fpr: float | None = None,
        target_tpr: float | None = None,
    ) -> float:
        """Fit ``threshold`` on HELD-OUT data (never on the test anomalies you report); returns it.

        Give exactly one target:

        * ``target_fpr=f``: flag at most a fraction ``f`` of ``in_data`` (:func:`threshold_for_fpr`);
          ``out_data``, if given, is only used to report the achieved TPR.
        * ``target_tpr=r``: flag at least a fraction ``r`` of the anomalies ``out_data`` (required) with the
          highest such threshold (:func:`threshold_for_tpr`).

        ``in_data`` / ``out_data`` are raw inputs (anything :meth:`score` takes). For precomputed scores use
        :meth:`fit_threshold_from_scores`. The rule and the achieved rates are kept in ``threshold_info``.
        The target is checked before any scoring (which can take long).
        """
        check_threshold_target(target_fpr, target_tpr, out_data is not None)
        in_scores = self.score(in_data)
        out_scores = None if out_data is None else self.score(out_data)
        return self.fit_threshold_from_scores(in_scores, out_scores, target_fpr=target_fpr, target_tpr=target_tpr)

    def fit_threshold_from_scores(
        self,
        in_scores: Any,
        out_scores: Any = None,
        *,
        target_fpr: float | None = None,
        target_tpr: float | None = None,
    ) -> float:
        """:meth:`fit_threshold` on precomputed scores (``(n,)`` in-distribution, optional ``(m,)`` anomalies)."""
        rule, target = check_threshold_target(target_fpr, target_tpr, out_scores is not None)
        ins = as_score_array(in_scores, "in_scores")
        outs = None if out_scores is None else as_score_array(out_scores, "out_scores")
        threshold = threshold_for_fpr(ins, target) if rule == "target_fpr" else threshold_for_tpr(ins, outs, target)
        info: dict[str, Any] = {"rule": rule, rule: target}
        info.update({"n_in": int(ins.size), "achieved_fpr": float(np.mean(ins > threshold))})
        if outs is not None:
            info.update({"n_out": int(outs.size), "achieved_tpr": float(np.mean(outs > threshold))})
        self.threshold = threshold
        self.threshold_info = info
        return threshold

    def evaluate(
        self,
        in_data: Any,
        out_data_by_set: Mapping[str, Any],
        *,
        recall_level: float | None = None,
        n_draws: int = 1,
        ratio: int = 5,
        seed: int = 0,
        store: bool = True,
        allow_small_sets: bool = False,
    ) -> OODTable:
        """Score the test data and run :func:`oe_common.metrics.evaluate_ood` (1 : ``ratio`` base rate; a set with
        fewer than ``len(in) // ratio`` examples is an error unless ``allow_small_sets``).

        ``recall_level`` defaults to 0.90 for text (FPR90) and 0.95 for images (FPR95), as in the paper.
        With ``store=True`` the table is kept in ``evaluation`` (saved in the config and on the model card).
        """
        level = recall_level if recall_level is not None else (0.90 if self.is_text else 0.95)
        in_scores = self.score(in_data)
        out_scores = {name: self.score(data) for name, data in out_data_by_set.items()}
        table = evaluate_ood(in_scores, out_scores, n_draws=n_draws, ratio=ratio, seed=seed, recall_level=level,
                             allow_small_sets=allow_small_sets)
        table.meta.update({"score": self.score_name})
        if store:  # a stored accuracy (:meth:`accuracy`) stays
            kept = {k: v for k, v in (self.evaluation or {}).items() if k in _ACCURACY_KEYS}
            self.evaluation = {**table.to_dict(), **kept}
        return table

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        """The content of ``detector_config.json``."""
        from . import __version__

        config = getattr(self.model, "config", None)
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "oe_version": __version__,
            "task": self.task,
            "model_type": getattr(config, "model_type", None),
            "architecture": type(self.model).__name__,
            "score": self.score_name,
            "score_kwargs": self.score_kwargs,
            "threshold": self.threshold,
            "threshold_info": self.threshold_info,
            "preprocessing": self.preprocessing.to_dict(),
            "mahalanobis_file": MAHALANOBIS_NAME if self.mahalanobis is not None else None,
            "training": self.training,
            "evaluation": self.evaluation,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write the checkpoint (layout: docs/detector.md, "Evaluating, saving and sharing") into ``save_directory`` (created if needed).

        The model goes to the folder ROOT through its own ``save_pretrained`` (safetensors); no pickle file is
        written. ``repo_id`` only changes the usage snippet on the model card. Returns the folder.

        Into a folder that already holds files: weights of an earlier save (``model.safetensors``, its
        ``.index.json`` and ``model-XXXXX-of-YYYYY.safetensors`` shards) are removed first, so a stale index or
        single file can never be loaded in place of the new weights. A ``README.md`` is overwritten only when it
        is a card this toolkit wrote (:func:`~oe_common.model_card.is_oe_model_card`); any other ``README.md``
        is the user's, and the save is refused before anything is written.

        ``detector_config.json`` is written last and records the sha256 of every other file this save wrote (key
        ``file_sha256``); :meth:`from_pretrained` checks them, so a file changed afterwards (e.g. a tokenizer with two
        ids swapped) does not load.

        Raises:
            DetectorCheckpointError: the folder holds pickled weights or a ``README.md`` that is not ours.
        """
        from .model_card import is_oe_model_card, render_model_card

        folder = Path(save_directory)
        card_path = folder / MODEL_CARD_NAME
        if card_path.is_dir() or (card_path.exists() and not is_oe_model_card(_read_text_or_empty(card_path))):
            raise DetectorCheckpointError(
                f"{card_path} exists and is not an oe model card; refusing to overwrite it: move it away or save the "
                "detector into another folder"
            )
        for stale in _PICKLE_WEIGHTS:  # never leave pickled weights next to ours
            if (folder / stale).exists():
                raise DetectorCheckpointError(f"{folder / stale} exists: refusing to save a detector next to pickled weights")
        folder.mkdir(parents=True, exist_ok=True)
        before = _file_stats(folder)
        for path in folder.iterdir():  # an earlier save's weights (transformers keeps a stale index or single file)
            if path.name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME, MAHALANOBIS_NAME) or _SHARD_RE.fullmatch(path.name):
                path.unlink()
        self.model.save_pretrained(folder)
        if self.mahalanobis is not None:
            self.mahalanobis.save(folder)
        if not (folder / WEIGHTS_NAME).is_file() and not (folder / WEIGHTS_INDEX_NAME).is_file():
            raise DetectorCheckpointError(f"the model's save_pretrained wrote no {WEIGHTS_NAME} in {folder}")
        config = self.to_config()
        self.preprocessing.save(folder)
        model_config = self.model.config.to_dict() if hasattr(self.model, "config") else {}
        num_parameters = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        card = render_model_card(config, model_config=model_config, repo_id=repo_id, num_parameters=num_parameters)
        (folder / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
        # the files this save wrote: the detector's own (whatever the file system's timestamp resolution) and any other
        # new or changed one (e.g. a generation_config.json of the model's save_pretrained)
        spec = config["preprocessing"]
        own = {MODEL_CONFIG_NAME, MODEL_CARD_NAME, *self.preprocessing.required_files(spec), *(p.name for p in _weight_files(folder))}
        own |= {n for n in (WEIGHTS_INDEX_NAME, MAHALANOBIS_NAME) if (folder / n).is_file()}
        changed = {name for name, stat in _file_stats(folder).items() if before.get(name) != stat}
        written = sorted((own | changed) - {DETECTOR_CONFIG_NAME})
        config[FILE_HASHES_KEY] = {name: sha256_file(folder / name) for name in written}
        (folder / DETECTOR_CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "OODDetector":
        """Load a detector from a local folder or a Hub repo id (``snapshot_download``; ``revision`` = branch/tag/commit).

        Safetensors only, no ``trust_remote_code``. The ``oe.plugins`` packages are imported first, so their model
        types are registered with the Auto classes.

        Raises:
            DetectorCheckpointError: the folder lacks a file (all missing files named), holds only pickled
                weights, or names a model type no imported package registers.
            RuntimeError: a Hub id that cannot be fetched (offline / no network / not found), saying what to do.
        """
        folder = _resolve_checkpoint(name_or_path, revision, token, cache_dir)
        missing = [n for n in (DETECTOR_CONFIG_NAME, MODEL_CONFIG_NAME) if not (folder / n).is_file()]
        has_weights = (folder / WEIGHTS_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file()
        if not has_weights:
            pickled = [n for n in _PICKLE_WEIGHTS if (folder / n).exists()]
            if pickled:
                raise DetectorCheckpointError(
                    f"{folder} has only pickle-based weights {pickled}; OODDetector loads safetensors only "
                    f"({WEIGHTS_NAME}). Re-save the model with save_pretrained() from a trusted environment."
                )
            missing.append(WEIGHTS_NAME)
        config = None
        hashes: dict[str, str] = {}
        if (folder / DETECTOR_CONFIG_NAME).is_file():
            config = read_checkpoint_json(folder / DETECTOR_CONFIG_NAME)
            if config.get("format") != _FORMAT:
                raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME} is not an OODDetector config (format={config.get('format')!r})")
            if int(config.get("version", 0)) > _VERSION:
                raise DetectorCheckpointError(f"detector config version {config.get('version')} is newer than this code ({_VERSION}); upgrade oe")
            if config.get("task") in TASKS:
                spec = dict(config.get("preprocessing") or {})
                missing += [n for n in _spec_class(config["task"], spec).required_files(spec) if not (folder / n).is_file()]
            if config.get("mahalanobis_file") not in (None, MAHALANOBIS_NAME):
                raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME}: mahalanobis_file must be {MAHALANOBIS_NAME!r} or null")
            if config.get("mahalanobis_file") and not (folder / MAHALANOBIS_NAME).is_file():
                missing.append(MAHALANOBIS_NAME)
            hashes = _recorded_hashes(config, folder)
            missing += [n for n in hashes if n not in missing and not (folder / n).is_file()]
        if missing:
            raise DetectorCheckpointError(f"checkpoint {str(name_or_path)!r} is missing {', '.join(missing)} (looked in {folder})")
        assert config is not None
        task = config.get("task")
        if task not in TASKS:
            raise DetectorCheckpointError(f"{DETECTOR_CONFIG_NAME}: unknown task {task!r}; known: {TASKS}")
        threshold = config.get("threshold")
        try:
            None if threshold is None else check_threshold(threshold)
        except ValueError:
            raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME}: \"threshold\" must be a finite number or null, got {threshold!r} "
                                          "(with NaN / Infinity nothing is ever flagged); fit the threshold again or set it to null") from None
        # Every file is checked before use so that a corrupt one is NAMED (not a traceback from a library).
        spec = dict(config.get("preprocessing") or {})
        try:
            preprocessing = _spec_class(task, spec).from_config(spec, folder)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, DetectorCheckpointError):
                raise
            raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME}: bad preprocessing spec: {exc}") from None
        _check_weight_files(folder)
        mahalanobis = _load_mahalanobis(folder) if config.get("mahalanobis_file") else None
        model = _load_model(folder, task)
        _check_finite_weights(model, folder)
        # after the checks above, so that a truncated or unreadable file keeps its own message
        _check_file_hashes(folder, hashes)
        try:
            detector = cls(
                model,
                preprocessing,
                score=config.get("score"),
                threshold=threshold,
                task=task,
                score_kwargs=config.get("score_kwargs"),
                training=config.get("training"),
                evaluation=config.get("evaluation"),
                threshold_info=config.get("threshold_info"),
                mahalanobis=mahalanobis,
                device=device,
                batch_size=batch_size,
                progress=progress,
            )
        except (ValueError, TypeError) as exc:  # e.g. an unknown score, a vocabulary larger than the model
            files = ", ".join([DETECTOR_CONFIG_NAME, *_spec_class(task, spec).required_files(spec), MODEL_CONFIG_NAME])
            raise DetectorCheckpointError(f"checkpoint {folder} is inconsistent ({files}): {exc}") from None
        detector.checkpoint_folder = folder
        return detector

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload OE detector",
    ) -> str:
        """Save into a temporary folder and upload it (``HfApi().create_repo`` + ``upload_folder``); returns the URL.

        Raises:
            RuntimeError: ``HF_HUB_OFFLINE`` is set, the Hub cannot be reached, or it refuses the upload (no
                token, no permission), with what to do; nothing is uploaded.
        """
        if hub_offline():
            raise RuntimeError(
                f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set. Unset it on a machine with network access and a "
                "Hugging Face token (`hf auth login` or HF_TOKEN), or save_pretrained(dir) now and upload the folder later."
            )
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="oe-detector-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            try:
                url = api.create_repo(repo_id, private=private, exist_ok=True)
                api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
            except Exception as exc:
                kind = type(exc).__name__
                raise RuntimeError(
                    f"cannot push the detector to {repo_id!r}: {kind}: {exc}. Check the network connection, that you are "
                    "logged in (`hf auth login` or HF_TOKEN) with write access, or save_pretrained(dir) and upload later."
                ) from exc
        return str(url)


# =============================================================================================== loading helpers
def _read_text_or_empty(path: Path) -> str:
    """The UTF-8 text of ``path``; ``""`` when it cannot be read or decoded (callers treat that as "not ours")."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _file_stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    """``{path relative to folder: (inode, size, mtime_ns)}`` of every regular file under ``folder``."""
    stats = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            stats[path.relative_to(folder).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stats


def _recorded_hashes(config: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """The ``file_sha256`` map of a detector config; a folder saved before hashes were recorded loads with a warning."""
    hashes = config.get(FILE_HASHES_KEY)
    path = folder / DETECTOR_CONFIG_NAME
    if hashes is None:
        logger.warning("%s records no file hashes (saved by an older oe): its files cannot be checked; save the detector "
                       "again to record them", path)
        return {}
    if not isinstance(hashes, dict) or not all(
        isinstance(name, str) and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
        and not name.startswith("/") and ".." not in name.split("/") for name, digest in hashes.items()
    ):
        raise DetectorCheckpointError(f"{path}: \"{FILE_HASHES_KEY}\" must map relative file names to sha256 hex digests; "
                                      "the file is corrupt: save or download the detector again")
    return dict(hashes)


def _check_file_hashes(folder: Path, hashes: Mapping[str, str]) -> None:
    """Every file ``hashes`` names has that sha256: a file changed after the save is named, with what to do."""
    for name, want in sorted(hashes.items()):
        got = sha256_file(folder / name)
        if got != want:
            raise DetectorCheckpointError(
                f"{folder / name}: sha256 {got[:12]}... differs from {want[:12]}... recorded in {DETECTOR_CONFIG_NAME} when the "
                "detector was saved: the file was changed or corrupted; restore it, or save or download the detector again"
            )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: ``model.safetensors``, else the shards its index lists."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    index = folder / WEIGHTS_INDEX_NAME
    weight_map = read_checkpoint_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DetectorCheckpointError(f"{index} has no weight_map: the file is corrupt; save or download the checkpoint again")
    return [folder / str(name) for name in sorted(set(weight_map.values()))]


def _check_weight_files(folder: Path) -> None:
    """Read the header of every weight file: an empty, truncated or corrupt file is named, with what to do."""
    from safetensors import safe_open

    for path in _weight_files(folder):
        if not path.is_file():
            raise DetectorCheckpointError(f"{path} is missing (listed in {folder / WEIGHTS_INDEX_NAME}); save or download the checkpoint again")
        if path.stat().st_size == 0:
            raise DetectorCheckpointError(f"{path} is empty: the weights were never written completely; save or download the checkpoint again")
        try:
            with safe_open(str(path), framework="pt") as f:  # checks the header and that the data covers it
                f.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for bad files
            reason = " ".join(str(exc).split())
            raise DetectorCheckpointError(
                f"{path} is not a readable safetensors file ({reason}): it is truncated or corrupt; save or download the checkpoint again"
            ) from None


def _load_mahalanobis(folder: Path) -> MahalanobisScore:
    """The fitted :class:`MahalanobisScore` of a checkpoint; a corrupt or inconsistent file is named."""
    path = folder / MAHALANOBIS_NAME
    try:
        return MahalanobisScore.load(folder)
    except Exception as exc:  # safetensors' own error type, a missing tensor, a bad covariance
        reason = " ".join(str(exc).split())
        raise DetectorCheckpointError(
            f"{path} is not a readable Mahalanobis statistics file ({reason}): fit_mahalanobis and save the detector again"
        ) from None


def _check_finite_weights(model: torch.nn.Module, folder: Path) -> None:
    """Refuse NaN / inf in any floating-point parameter or buffer: every score would be NaN (counted as normal)."""
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        where = ", ".join(str(p) for p in _weight_files(folder))
        raise DetectorCheckpointError(
            f"{where}: {len(bad)} weight tensor(s) hold NaN/inf values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "the model is unusable (training diverged or the file is corrupt)"
        )


def _load_model(folder: Path, task: str) -> torch.nn.Module:
    """The model of ``folder`` via the task's Auto class: safetensors only, no remote code."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    load_plugins()
    model_config = read_checkpoint_json(folder / MODEL_CONFIG_NAME)
    model_type = model_config.get("model_type")
    if not model_type:
        raise DetectorCheckpointError(f"{folder / MODEL_CONFIG_NAME} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise DetectorCheckpointError(
            f"unknown model_type {model_type!r} in {folder / MODEL_CONFIG_NAME}: neither transformers nor an "
            f"installed {ENTRY_POINT_GROUP!r} package registers it, and OODDetector never runs remote code "
            "(trust_remote_code). Install (or import) the package that defines the model and registers it with the "
            "Auto classes."
        )
    auto_cls = getattr(transformers, _AUTO_CLASS[task])
    try:
        return auto_cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise DetectorCheckpointError(f"cannot load the {model_type!r} model in {folder} as {_AUTO_CLASS[task]}: {reason}") from exc
