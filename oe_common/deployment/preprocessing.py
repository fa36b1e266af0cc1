"""How raw inputs become model inputs for an :class:`~oe_common.deployment.detector.OODDetector`: the interface, its registry,
and the errors a preprocessing raises (bad inputs, a broken checkpoint file).

Details: docs/modules.md, section ``oe_common.deployment.preprocessing``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "DetectorCheckpointError",
    "DetectorInputError",
    "DetectorPreprocessing",
    "ScoringBatches",
    "preprocessing_class",
    "preprocessing_classes",
    "read_checkpoint_json",
    "register_preprocessing",
    "some_indices",
]


class ScoringBatches(NamedTuple):
    """``batches`` yields ``(model_inputs, owners)``: the forward pass's keyword arguments (CPU tensors) and, per row,
    the 0-based index of the input it belongs to (an input may span several rows, e.g. the windows of a long text)."""

    n_inputs: int
    n_batches: int
    batches: Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]


class DetectorPreprocessing:
    """Base class of a detector's preprocessing: ``kind`` is the ``"type"`` saved in ``detector_config.json``, ``tasks``
    the detector tasks it serves. Subclasses implement :meth:`from_config`, :meth:`to_dict` and :meth:`batches`."""

    kind: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def required_files(cls, spec: Mapping[str, Any]) -> list[str]:
        """Files besides the model that a checkpoint saved with this ``spec`` holds (named when missing)."""
        return []

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], folder: Path) -> "DetectorPreprocessing":
        """Rebuild from the saved spec (:meth:`to_dict`) and the checkpoint ``folder`` (:meth:`save`'s files)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable spec saved in ``detector_config.json`` (with ``"type": kind``)."""
        raise NotImplementedError

    @classmethod
    def from_model_folder(cls, folder: Path, model_config: Mapping[str, Any]) -> "DetectorPreprocessing | None":
        """The preprocessing of a PLAIN model folder (a fine-tuned model's ``save_pretrained`` output: ``config.json``
        = ``model_config``, weights and the files the model reads its inputs with, no detector config), or None when
        this class cannot build one from such a folder (the default). Raise :class:`DetectorCheckpointError` naming
        the folder when the class applies but a file it needs is missing or broken."""
        return None

    def save(self, folder: Path) -> None:
        """Write the files besides the spec (e.g. a vocabulary) into ``folder``."""

    def resolved(self, task: str) -> "DetectorPreprocessing":
        """A copy with the task's defaults filled in (default: ``self``)."""
        return self

    def check_model(self, model: torch.nn.Module, task: str) -> None:
        """Raise ``ValueError`` when the model cannot take these inputs (e.g. a vocabulary larger than the model's)."""

    def batches(self, inputs: Any, task: str, batch_size: int) -> ScoringBatches:
        """Raw inputs -> batches of at most ``batch_size`` rows."""
        raise NotImplementedError


class DetectorInputError(ValueError):
    """Some inputs cannot be scored (empty text, unknown characters, over-long text, unreadable image).

    ``indices`` holds the 0-based positions of the offending inputs (so a command line can name the lines).
    """

    def __init__(self, message: str, indices: Sequence[int] = ()):
        super().__init__(message)
        self.indices = list(indices)


class DetectorCheckpointError(ValueError):
    """A checkpoint folder / Hub repo cannot be loaded (missing file, unknown model type, pickle-only weights)."""


def some_indices(indices: Sequence[int], limit: int = 10) -> str:
    """``"3, 7, 9"``: the first ``limit`` indices for an error message, then how many more."""
    shown = ", ".join(str(i) for i in list(indices)[:limit])
    return shown + (f", ... ({len(indices) - limit} more)" if len(indices) > limit else "")


def read_checkpoint_json(path: Path) -> dict[str, Any]:
    """The JSON object in checkpoint file ``path``; any defect is a :class:`DetectorCheckpointError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorCheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DetectorCheckpointError(f"{path} must hold a JSON object")
    return data


_REGISTRY: dict[str, type[DetectorPreprocessing]] = {}


def register_preprocessing(cls: type[DetectorPreprocessing]) -> type[DetectorPreprocessing]:
    """Register a :class:`DetectorPreprocessing` subclass under its ``kind`` (idempotent; usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, DetectorPreprocessing)) or not cls.kind or not cls.tasks:
        raise TypeError(f"register a DetectorPreprocessing subclass with a kind and tasks, got {cls!r}")
    _REGISTRY[cls.kind] = cls
    return cls


def preprocessing_classes(task: str) -> tuple[type[DetectorPreprocessing], ...]:
    """Every registered preprocessing class serving ``task``, in registration order."""
    return tuple(cls for cls in _REGISTRY.values() if task in cls.tasks)


def preprocessing_class(task: str, kind: str | None = None) -> type[DetectorPreprocessing]:
    """The registered class serving ``task`` whose ``kind`` is ``kind`` (a saved spec's ``"type"``; None: the task's
    first registered class), after importing the ``oe.plugins`` packages.

    Raises:
        DetectorCheckpointError: ``kind`` does not serve ``task`` (a saved spec that names another task's type).
        TypeError: no imported package registers a preprocessing for ``task`` (saying what to install).
    """
    from .plugins import ENTRY_POINT_GROUP, load_plugins

    load_plugins()
    classes = preprocessing_classes(task)
    if kind is None:
        found = classes[0] if classes else None
    else:
        found = next((cls for cls in classes if cls.kind == kind), None)
    if found is None:
        if kind is not None and classes:
            raise DetectorCheckpointError(f"preprocessing type {kind!r} does not serve task {task!r}; known types: {[c.kind for c in classes]}")
        raise TypeError(
            f"no preprocessing is registered for task {task!r}: install the package that provides it (it registers "
            f"on import through the {ENTRY_POINT_GROUP!r} entry points)"
        )
    return found
