"""Feature-space anomaly scores: fitted on in-distribution features, "higher = more anomalous" like :mod:`.scores`.

:class:`MahalanobisScore` (Lee et al., NeurIPS 2018; the strongest detector of much NLP OOD work, e.g. Zhou et
al. 2021, Podolskiy et al. 2021): on penultimate (pooled) features ``x in R^D`` of the training set with labels
``y in {0..K-1}``::

    mu_k   = mean of the features of class k                                   (K, D)
    Sigma  = (1/N) sum_i (x_i - mu_{y_i}) (x_i - mu_{y_i})^T                   shared (tied) covariance, (D, D)
    P      = pinv(Sigma)    (eigenvalues below rcond * max eigenvalue are dropped, as in scipy.linalg.pinvh)
    score(x) = min_k sqrt((x - mu_k)^T P (x - mu_k))                           (N,), >= 0

``Sigma`` is the maximum-likelihood estimate of the class-centred features (scikit-learn's
``EmpiricalCovariance(assume_centered=True)``). Distances are computed by whitening: with ``Sigma = V diag(l) V^T``,
``W = V[:, kept] / sqrt(l[kept])`` and ``d_k(x)^2 = ||(x - mu_k) W||^2``, in float64.

:func:`classifier_input_features` extracts the penultimate features of a sequence classifier (the input of its
``classifier`` head).

:class:`KNNScore` (Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors"): with
L2-normalised features ``u = x / ||x||`` and the normalised training features ``U_train`` (N, D)::

    score(x) = || u - u_(k) ||_2      the distance to the k-th nearest normalised training feature     (N,), >= 0

(no labels, no covariance; ``k`` is a setting, chosen on validation data).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..experiments.files import make_readable

__all__ = [
    "MahalanobisScore",
    "KNNScore",
    "classifier_input_features",
    "fit_mahalanobis",
    "integer_labels",
    "model_logits",
    "penultimate_features",
    "row_weights",
    "MAHALANOBIS_NAME",
]

#: The file :meth:`MahalanobisScore.save` writes (and an ``OODDetector`` folder holds after ``fit_mahalanobis``).
MAHALANOBIS_NAME = "mahalanobis.safetensors"


def _as_float64(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array of features, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold numbers, got {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN/inf values")
    return t


class MahalanobisScore:
    """Class means + shared covariance fitted on training features; ``score`` = min-class Mahalanobis distance.

    >>> det = MahalanobisScore().fit(train_features, train_labels)       # doctest: +SKIP
    >>> det(test_features)                                               # (N,), higher = more anomalous
    """

    def __init__(self, rcond: float = 1e-10):
        if not 0 <= rcond < 1:
            raise ValueError(f"rcond must be in [0, 1), got {rcond!r}")
        self.rcond = float(rcond)
        self.means: torch.Tensor | None = None  # (K, D) float64
        self.covariance: torch.Tensor | None = None  # (D, D) float64
        self._whiten: torch.Tensor | None = None  # (D, r) float64

    @property
    def is_fitted(self) -> bool:
        return self.means is not None

    def fit(self, features: Any, labels: Any, num_classes: int | None = None) -> "MahalanobisScore":
        """Fit on ``features`` ``(N, D)`` with integer ``labels`` ``(N,)`` in ``[0, num_classes)``.

        Every class in ``range(num_classes)`` (default ``max(labels) + 1``) must have at least one example.
        """
        x = _as_float64(features, "features")
        y = torch.as_tensor(integer_labels(labels, check=False))
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be ({x.shape[0]},) to match the features, got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {y.dtype}")
        y = y.long()
        k = int(y.max()) + 1 if num_classes is None else int(num_classes)
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise ValueError(f"labels must be in [0, {k}), got values in [{int(y.min())}, {int(y.max())}]")
        counts = torch.bincount(y, minlength=k)
        if bool((counts == 0).any()):
            raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()[:10]} have no training example")
        means = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts[:, None]
        centred = x - means[y]
        self.set_parameters(means, centred.T @ centred / x.shape[0])
        return self

    def set_parameters(self, means: torch.Tensor, covariance: torch.Tensor) -> "MahalanobisScore":
        """Use given class ``means`` ``(K, D)`` and shared ``covariance`` ``(D, D)`` (e.g. loaded from disk)."""
        means = _as_float64(means, "means")
        cov = _as_float64(covariance, "covariance")
        if cov.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"covariance must be ({means.shape[1]}, {means.shape[1]}), got {tuple(cov.shape)}")
        cov = (cov + cov.T) / 2
        eigvals, eigvecs = torch.linalg.eigh(cov)
        keep = eigvals > self.rcond * float(eigvals.max().clamp_min(0))
        if not bool(keep.any()):
            raise ValueError("the covariance of the features is zero: every training feature equals its class mean")
        self.means, self.covariance = means, cov
        self._whiten = eigvecs[:, keep] / eigvals[keep].sqrt()
        return self

    def distances(self, features: Any, squared: bool = False) -> torch.Tensor:
        """Mahalanobis distance of every row to every class mean: ``(N, K)`` float64 (squared if asked)."""
        if self._whiten is None or self.means is None:
            raise RuntimeError("MahalanobisScore is not fitted: call fit(features, labels) first")
        x = _as_float64(features, "features")
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"features have {x.shape[1]} dims, the detector was fitted on {self.means.shape[1]}")
        z, m = x @ self._whiten, self.means @ self._whiten
        d2 = ((z * z).sum(1, keepdim=True) - 2 * z @ m.T + (m * m).sum(1)[None, :]).clamp_min_(0)
        return d2 if squared else d2.sqrt()

    def score(self, features: Any) -> torch.Tensor | np.ndarray:
        """``min_k d_k(x)`` per row, ``(N,)``: a tensor (float32) for a tensor input, else a float64 numpy array."""
        dist = self.distances(features).amin(dim=1)
        if isinstance(features, torch.Tensor):
            return dist.to(device=features.device, dtype=torch.float32)
        return dist.numpy()

    __call__ = score

    def predict_class(self, features: Any) -> torch.Tensor:
        """Index of the nearest class mean (the generative classifier's prediction), ``(N,)``."""
        return self.distances(features, squared=True).argmin(dim=1)

    # ---- persistence (safetensors only) -------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``mahalanobis.safetensors`` (means, covariance, rcond) into ``directory``; returns the file."""
        from safetensors.torch import save_file

        if self.means is None or self.covariance is None:
            raise RuntimeError("MahalanobisScore is not fitted: nothing to save")
        path = Path(directory) / MAHALANOBIS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"means": self.means.contiguous(), "covariance": self.covariance.contiguous()}, str(path), metadata={"rcond": repr(self.rcond)})
        make_readable(path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "MahalanobisScore":
        """The detector saved by :meth:`save` in ``directory``."""
        from safetensors import safe_open

        path = Path(directory) / MAHALANOBIS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (written by MahalanobisScore.save)")
        with safe_open(str(path), framework="pt") as f:
            rcond = float((f.metadata() or {}).get("rcond", "1e-10"))
            means, cov = f.get_tensor("means"), f.get_tensor("covariance")
        return cls(rcond=rcond).set_parameters(means, cov)


class KNNScore:
    """Deep nearest neighbours (Sun et al. 2022): distance of the L2-normalised feature to its ``k``-th nearest
    L2-normalised training feature; higher = more anomalous.

    >>> det = KNNScore(k=10).fit(train_features)                          # doctest: +SKIP
    >>> det.score(test_features)                                          # (N,)
    """

    def __init__(self, k: int = 10, chunk_size: int = 1024):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self.chunk_size = int(chunk_size)
        self.bank: torch.Tensor | None = None  # (N, D) float64, rows of unit norm

    @property
    def is_fitted(self) -> bool:
        return self.bank is not None

    @staticmethod
    def normalise(features: Any, name: str = "features") -> torch.Tensor:
        """``x / ||x||`` per row, float64 ``(N, D)``; a zero row is refused (it has no direction)."""
        x = _as_float64(features, name)
        norms = x.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError(f"{name} has {int((norms == 0).sum())} all-zero row(s): the k-NN score needs a direction")
        return x / norms

    def fit(self, features: Any, labels: Any = None, num_classes: int | None = None) -> "KNNScore":
        """Keep the normalised training ``features`` ``(N, D)``, ``N >= k`` (``labels`` are not used: the score
        takes the same arguments as :meth:`MahalanobisScore.fit`)."""
        bank = self.normalise(features, "features")
        if bank.shape[0] < self.k:
            raise ValueError(f"k = {self.k} needs at least {self.k} training features, got {bank.shape[0]}")
        self.bank = bank
        return self

    def score(self, features: Any) -> np.ndarray:
        """``||u - u_(k)||`` per row, ``(N,)`` float64 numpy array."""
        if self.bank is None:
            raise RuntimeError("KNNScore is not fitted: call fit(train_features) first")
        u = self.normalise(features)
        if u.shape[1] != self.bank.shape[1]:
            raise ValueError(f"features have {u.shape[1]} dims, the score was fitted on {self.bank.shape[1]}")
        out = []
        for start in range(0, u.shape[0], self.chunk_size):
            sims = u[start:start + self.chunk_size] @ self.bank.T  # cosine similarity; ||u - v||^2 = 2 - 2 u.v
            kth = sims.topk(self.k, dim=1).values[:, -1]
            out.append((2 - 2 * kth).clamp_min(0).sqrt())
        return torch.cat(out).numpy()

    __call__ = score


def classifier_input_features(
    model: torch.nn.Module, inputs: Mapping[str, Any], head: str = "classifier", *, return_output: bool = False
) -> Any:
    """The penultimate features of a sequence classifier: what its head module ``head`` receives, ``(B, D)``
    (with ``return_output=True``: ``(features, the model's output of that forward pass)``).

    Runs ``model(**inputs)`` once (no gradient, the model's current train/eval mode) with a forward pre-hook on
    ``model.<head>``. For ``BertForSequenceClassification`` (and the toolkit's GRU classifier) the head is
    ``classifier`` and its input is the pooled feature (BERT: ``dropout(pooler_output)``, the identity in eval
    mode; GRU: the last layer's final state). Heads that receive a ``(B, L, D)`` sequence (e.g. RoBERTa's
    classification head) are rejected: choose the pooling for those explicitly.
    """
    module = model.get_submodule(head)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            output = model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"model.{head} ran {len(captured)} times in one forward pass; expected once")
    features = captured[0]
    if features.dim() != 2:
        raise ValueError(f"model.{head} receives a {tuple(features.shape)} tensor, not (batch, features); pool it explicitly")
    return (features, output) if return_output else features


def integer_labels(labels: Any, *, check: bool = True) -> np.ndarray:
    """``labels`` (a tensor, array or sequence) as a numpy array; with ``check`` only integer class ids pass."""
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if check and y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class ids, got dtype {y.dtype}")
    return y


def model_logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: ``output.logits``, else its first element (a tuple), else the output itself."""
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    return logits


def row_weights(model_inputs: Mapping[str, torch.Tensor], n_rows: int, device: torch.device) -> torch.Tensor:
    """A classifier row's weight in the mean over an input's rows: its number of real tokens (text), else 1. ``(B,)``
    float64."""
    mask = model_inputs.get("attention_mask")
    return mask.sum(-1).double() if mask is not None else torch.ones(n_rows, dtype=torch.float64, device=device)


def penultimate_features(model: torch.nn.Module, model_inputs: Mapping[str, torch.Tensor], head: str) -> tuple[torch.Tensor, Any]:
    """``(B, D)`` penultimate features of one batch (the input of ``model.<head>``) and the model's output of that
    forward pass (:func:`classifier_input_features`); a model without ``head`` is named with what to pass."""
    try:
        model.get_submodule(head)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no module {head!r} whose input is the penultimate feature; "
            "pass score_kwargs={'head': '<name of the final linear layer>'}"
        ) from None
    return classifier_input_features(model, model_inputs, head, return_output=True)


def fit_mahalanobis(
    model: torch.nn.Module,
    batches: Iterable[tuple[Mapping[str, torch.Tensor], np.ndarray]],
    labels: np.ndarray,
    *,
    head: str = "classifier",
    num_classes: int | None = None,
    rcond: float = 1e-10,
) -> MahalanobisScore:
    """A :class:`MahalanobisScore` fitted on the penultimate features (:func:`penultimate_features`) of every row of
    ``batches`` (``(model_inputs, owners)`` as a detector preprocessing yields them), each row labelled with its
    input's class ``labels[owner]``. ``num_classes`` defaults to ``model.config.num_labels``."""
    features, row_labels = [], []
    for model_inputs, owners in batches:
        features.append(penultimate_features(model, model_inputs, head)[0].double().cpu())
        row_labels.append(labels[owners])
    if num_classes is None:
        num_classes = getattr(getattr(model, "config", None), "num_labels", None)
    return MahalanobisScore(rcond=rcond).fit(torch.cat(features), np.concatenate(row_labels), num_classes=num_classes)
