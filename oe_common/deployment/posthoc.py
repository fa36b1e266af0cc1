"""Post-hoc detectors for any fine-tuned classifier, no training: ``oe build-detector`` (Mahalanobis statistics from a
labelled training file, a threshold from a validation file, saved as a detector folder).

A *plain model folder* is what ``model.save_pretrained(folder)`` + ``tokenizer.save_pretrained(folder)`` write for a
fine-tuned ``AutoModelForSequenceClassification`` (``config.json``, safetensors weights, the files the model reads
its inputs with) and has no ``detector_config.json``; :func:`oe_common.deployment.detector_io.load_detector` (``kind="model"``)
reads it as a detector (the packages of the ``oe.plugins`` group say how its inputs are read).

Details: docs/detector.md, section "Post-hoc detector for your own fine-tuned classifier".
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..experiments.data_integrity import file_sha256
from .detector import OODDetector
from .detector_io import MODEL_CONFIG_NAME, resolve_checkpoint, load_detector, read_model_config
from ..maths.scores import FEATURE_SCORES
from ..experiments.table_files import TableFileError, read_columns, text_column

__all__ = [
    "DEFAULT_TARGET_FPR",
    "OutputFolderError",
    "build_detector",
    "check_output_folder",
    "label_ids",
    "read_labelled_texts",
]

#: ``oe build-detector``'s threshold rule: at most this fraction of the validation texts is flagged.
DEFAULT_TARGET_FPR = 0.05
_INTEGER = re.compile(r"[+-]?\d+")


class OutputFolderError(ValueError):
    """The output folder cannot receive a new detector (inside the model folder, not empty, a file)."""


# =============================================================================================== labelled files
def _label_names(config: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """``(label2id, num_labels)`` of a model config (``LABEL_i`` names when it has none, as transformers does)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()} or {v: k for k, v in id2label.items()}
    return label2id, len(id2label)


def label_ids(values: Sequence[Any], config: Mapping[str, Any], path: str | os.PathLike, column: str) -> np.ndarray:
    """Class ids ``(N,)`` of the labels ``values`` (one column of ``path``), through the model config's ``label2id``.

    A label is first looked up by name (``str(label)`` in ``label2id``: ``"positive"``, or ``"7"`` for a model
    whose labels are digit strings); else an integer (or a string of one) in ``[0, num_labels)`` is a class id.

    Raises:
        TableFileError: labels the model does not know, named with their first row (rows from 1, data order),
            and the model's labels.
    """
    label2id, num_labels = _label_names(config)
    ids, unknown = [], {}
    for row, value in enumerate(values, 1):
        key = str(value)
        if value is not None and not isinstance(value, bool) and key in label2id:
            ids.append(label2id[key])
        elif (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and _INTEGER.fullmatch(value.strip())):
            if 0 <= int(value) < num_labels:
                ids.append(int(value))
            else:
                unknown.setdefault(key, row)
        else:
            unknown.setdefault(key, row)
    if unknown:
        shown = ", ".join(f"{label!r} (row {row})" for label, row in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        names = list(label2id)
        known = ", ".join(map(repr, names[:20])) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
        raise TableFileError(
            f"{path}: column {column!r} has label(s) the model does not know: {shown}{more}; the model's labels "
            f"({MODEL_CONFIG_NAME} label2id): {known}, or class ids 0..{num_labels - 1}"
        )
    return np.asarray(ids, dtype=np.int64)


def read_labelled_texts(
    path: str | os.PathLike, text_col: str, label_col: str | None = None, config: Mapping[str, Any] | None = None
) -> tuple[list[str], np.ndarray | None]:
    """The texts of ``path`` (column ``text_col``) and, with ``label_col``, their class ids (:func:`label_ids`).

    Raises:
        TableFileError / MissingColumnError: as :func:`oe_common.experiments.table_files.read_columns`; empty texts (rows
            named); unknown labels.
    """
    columns = read_columns(path, [text_col] if label_col is None else [text_col, label_col])
    texts = text_column(columns[text_col], path, text_col)
    if label_col is None:
        return texts, None
    return texts, label_ids(columns[label_col], config or {}, path, label_col)


def _file_record(path: str | os.PathLike, rows: int, **columns: str) -> dict[str, Any]:
    """Provenance of a data file: as given, its SHA-256, rows used and columns read."""
    return {"file": str(path), "sha256": file_sha256(path), "rows": rows, **columns}


# =============================================================================================== building
def check_output_folder(output: str | os.PathLike, model_folder: str | os.PathLike) -> Path:
    """``output`` as a Path, after checking that a new detector can go there: not the model folder or inside it,
    not a file, and empty if it exists (a folder never mixes two detectors).

    Raises:
        OutputFolderError: naming the folder and what to do.
    """
    out, model = Path(output).expanduser().resolve(), Path(model_folder).expanduser().resolve()
    if out == model or model in out.parents:
        raise OutputFolderError(f"output folder {str(output)!r} is inside the model folder {str(model_folder)!r}; give a folder outside it")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {str(output)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputFolderError(f"output folder {str(output)!r} is not empty; give a new or empty folder (one folder holds one detector)")
    return out


def _save_atomically(detector: OODDetector, output: Path) -> Path:
    """Save into a hidden sibling folder and rename it to ``output`` at the end: a failure leaves no half folder."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.partial-"))
    try:
        detector.save_pretrained(partial)
        if output.is_dir():  # checked empty by check_output_folder
            output.rmdir()
        os.rename(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output


def build_detector(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    revision: str | None = None,
    score: str | None = None,
    train_file: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    validation_file: str | os.PathLike | None = None,
    target_fpr: float = DEFAULT_TARGET_FPR,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> OODDetector:
    """``oe build-detector``: a detector folder for the fine-tuned classifier ``model`` (a plain folder or Hub id;
    a detector folder's model also, its own score and threshold ignored), without training. Returns the detector,
    saved in ``output``. ``max_length``: see :func:`oe_common.deployment.detector_io.load_detector`.

    1. Check everything before anything is written: the output folder (:func:`check_output_folder`), the model's
       ``config.json``, the data files (columns, empty texts, labels mapped through ``label2id``: :func:`label_ids`),
       then load the model (:func:`oe_common.deployment.detector_io.load_detector`, ``kind="model"``).
    2. With ``train_file``: fit the ``mahalanobis`` statistics on its texts and labels (every class needs a row),
       :meth:`OODDetector.fit_mahalanobis`; the score ``mahalanobis`` is then available (``score`` default ``msp``).
    3. With ``validation_file``: threshold flagging at most ``target_fpr`` of its texts (:meth:`OODDetector.fit_threshold`,
       the texts only; a label column is not needed). Without it the detector has no threshold.
    4. Record what it was fitted on (files, SHA-256, rows, columns) in ``training`` / ``threshold_info`` and save
       the folder atomically.

    Raises:
        OutputFolderError, TableFileError (MissingColumnError), DetectorCheckpointError, ValueError, RuntimeError.
    """
    if score in FEATURE_SCORES and train_file is None:
        raise ValueError(f"score {score!r} needs a training file to fit its statistics on: give --train-file (and its columns)")
    if not 0.0 <= float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr!r}")
    folder = resolve_checkpoint(model, revision, None, None)
    out = check_output_folder(output, folder)
    config = read_model_config(folder)
    train = None if train_file is None else read_labelled_texts(train_file, text_column, label_column, config)
    validation = None if validation_file is None else read_labelled_texts(validation_file, text_column)[0]
    if train is not None:
        label2id, num_labels = _label_names(config)
        absent = sorted(set(range(num_labels)) - set(train[1].tolist()))
        if absent:
            names = {v: k for k, v in label2id.items()}
            shown = ", ".join(repr(names.get(i, i)) for i in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise TableFileError(f"{train_file}: the Mahalanobis score needs at least one row of every class; no row has label {shown}")
    detector = load_detector(folder, kind="model", score=score, max_length=max_length, base_model=str(model), device=device,
                             batch_size=batch_size, progress=progress)
    if revision is not None:
        detector.training["base_model_revision"] = revision
    if train is not None:
        detector.fit_mahalanobis(*train)
        detector.training["mahalanobis_data"] = _file_record(train_file, len(train[0]), text_column=text_column, label_column=label_column)
    if validation is not None:
        detector.fit_threshold(validation, target_fpr=target_fpr)
        detector.threshold_info["data"] = f"column {text_column!r} of {validation_file}"
        detector.training["threshold_data"] = _file_record(validation_file, len(validation), text_column=text_column)
    else:
        detector.training["threshold_data"] = "none: no validation file was given, so the detector has no threshold"
    _save_atomically(detector, out)
    return detector
