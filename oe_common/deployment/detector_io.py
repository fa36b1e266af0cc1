"""Saving and loading :class:`~oe_common.deployment.detector.OODDetector` folders: the checkpoint layout, the checks that name a
bad file, and the Hub download / upload.

A detector folder is a Hub checkpoint (layout: docs/detector.md, "Evaluating, saving and sharing"): the model's own
``config.json`` + safetensors weights at the root, ``detector_config.json`` (score, threshold, preprocessing spec,
training and evaluation records, the sha256 of every file the save wrote), the preprocessing's files, optional
Mahalanobis statistics and a model card. Loading never unpickles and never runs remote code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..maths.feature_scores import MAHALANOBIS_NAME, MahalanobisScore
from ..experiments.files import make_readable, sha256_file
from .model_card import POST_HOC_METHOD, is_oe_model_card, render_model_card
from .plugins import ENTRY_POINT_GROUP, load_plugins
from .preprocessing import DetectorCheckpointError, DetectorPreprocessing, preprocessing_class, preprocessing_classes, read_checkpoint_json
from ..maths.scores import FEATURE_SCORES
from ..maths.thresholds import check_threshold

__all__ = [
    "DETECTOR_CONFIG_NAME",
    "FILE_HASHES_KEY",
    "MODEL_CARD_NAME",
    "MODEL_CONFIG_NAME",
    "TASKS",
    "TEXT_TASKS",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "detector_config",
    "hub_offline",
    "load_detector",
    "read_model_config",
    "task_of_architecture",
    "push_detector",
    "resolve_checkpoint",
    "save_detector",
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
#: Auto class per task (no trust_remote_code: the model type must be registered).
_AUTO_CLASS = {
    "causal-lm": "AutoModelForCausalLM",
    "text-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}


# =============================================================================================== preprocessing classes
def _spec_class(task: str, spec: Mapping[str, Any]) -> type[DetectorPreprocessing]:
    """The class that wrote a saved preprocessing ``spec`` (by its ``"type"``)."""
    kind = spec.get("type")
    return preprocessing_class(task, None if kind is None else str(kind))


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


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None, token: Any, cache_dir: Any) -> Path:
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


# =============================================================================================== save / load / push
def detector_config(detector: Any) -> dict[str, Any]:
    """The content of ``detector_config.json`` for ``detector`` (an :class:`~oe_common.deployment.detector.OODDetector`)."""
    from .. import __version__

    config = getattr(detector.model, "config", None)
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "oe_version": __version__,
        "task": detector.task,
        "model_type": getattr(config, "model_type", None),
        "architecture": type(detector.model).__name__,
        "score": detector.score_name,
        "score_kwargs": detector.score_kwargs,
        "threshold": detector.threshold,
        "threshold_info": detector.threshold_info,
        "preprocessing": detector.preprocessing.to_dict(),
        "mahalanobis_file": MAHALANOBIS_NAME if detector.mahalanobis is not None else None,
        "training": detector.training,
        "evaluation": detector.evaluation,
    }


def save_detector(detector: Any, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write the checkpoint (layout: docs/detector.md, "Evaluating, saving and sharing") into ``save_directory`` (created if needed).

    The model goes to the folder ROOT through its own ``save_pretrained`` (safetensors); no pickle file is
    written. ``repo_id`` only changes the usage snippet on the model card. Returns the folder.

    Into a folder that already holds files: weights of an earlier save (``model.safetensors``, its
    ``.index.json`` and ``model-XXXXX-of-YYYYY.safetensors`` shards) are removed first, so a stale index or
    single file can never be loaded in place of the new weights. A ``README.md`` is overwritten only when it
    is a card this toolkit wrote (:func:`~oe_common.deployment.model_card.is_oe_model_card`); any other ``README.md``
    is the user's, and the save is refused before anything is written.

    ``detector_config.json`` is written last and records the sha256 of every other file this save wrote (key
    ``file_sha256``); :func:`load_detector` checks them, so a file changed afterwards (e.g. a tokenizer with two
    ids swapped) does not load.

    Raises:
        DetectorCheckpointError: the folder holds pickled weights or a ``README.md`` that is not ours.
    """
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
    detector.model.save_pretrained(folder)
    if detector.mahalanobis is not None:
        detector.mahalanobis.save(folder)
    make_readable(folder)  # safetensors writes 0600
    if not (folder / WEIGHTS_NAME).is_file() and not (folder / WEIGHTS_INDEX_NAME).is_file():
        raise DetectorCheckpointError(f"the model's save_pretrained wrote no {WEIGHTS_NAME} in {folder}")
    config = detector_config(detector)
    detector.preprocessing.save(folder)
    model_config = detector.model.config.to_dict() if hasattr(detector.model, "config") else {}
    num_parameters = sum(p.numel() for p in {id(p): p for p in detector.model.parameters()}.values())
    card = render_model_card(config, model_config=model_config, repo_id=repo_id, num_parameters=num_parameters)
    (folder / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
    # the files this save wrote: the detector's own (whatever the file system's timestamp resolution) and any other
    # new or changed one (e.g. a generation_config.json of the model's save_pretrained)
    spec = config["preprocessing"]
    own = {MODEL_CONFIG_NAME, MODEL_CARD_NAME, *detector.preprocessing.required_files(spec), *(p.name for p in _weight_files(folder))}
    own |= {n for n in (WEIGHTS_INDEX_NAME, MAHALANOBIS_NAME) if (folder / n).is_file()}
    changed = {name for name, stat in _file_stats(folder).items() if before.get(name) != stat}
    written = sorted((own | changed) - {DETECTOR_CONFIG_NAME})
    config[FILE_HASHES_KEY] = {name: sha256_file(folder / name) for name in written}
    (folder / DETECTOR_CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def _has_safetensors(folder: Path) -> bool:
    """Whether ``folder`` holds safetensors weights (``model.safetensors`` or a sharded index); a folder whose only
    weights are pickle-based is refused (they are never loaded)."""
    if (folder / WEIGHTS_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file():
        return True
    pickled = [n for n in _PICKLE_WEIGHTS if (folder / n).exists()]
    if pickled:
        raise DetectorCheckpointError(
            f"{folder} has only pickle-based weights {pickled}; only safetensors are loaded ({WEIGHTS_NAME}). "
            "Re-save the model with save_pretrained() from a trusted environment."
        )
    return False


def task_of_architecture(name: str) -> str | None:
    """The detector task of a model class name (``config.json``'s ``architectures``), None when unknown."""
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith("ForImageClassification"):
        return "image-classification"
    return None


def load_detector(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    kind: str = "auto",
    score: str | None = None,
    max_length: int | None = None,
    base_model: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    cls: type | None = None,
) -> Any:
    """THE loader: a detector (``cls``, default :class:`~oe_common.deployment.detector.OODDetector`) from a local folder or a Hub
    repo id (``snapshot_download``; ``revision`` = branch/tag/commit). Safetensors only, no ``trust_remote_code``;
    every file is checked before use, so that a bad one is NAMED; the ``oe.plugins`` packages are imported first.

    ``kind``:

    * ``"detector"``: a detector folder (:meth:`OODDetector.from_pretrained`): ``detector_config.json`` (score,
      threshold, preprocessing, the sha256 of every file the save wrote), the model and the preprocessing's files.
    * ``"model"``: the model and preprocessing of a PLAIN model folder (what ``model.save_pretrained`` +
      ``tokenizer.save_pretrained`` write; a detector folder's ``detector_config.json`` is ignored), as a detector
      with no threshold and no fitted statistics: task from ``config.json``'s ``architectures``, preprocessing from
      the first class registered for that task whose ``from_model_folder`` builds one; ``score`` defaults to the
      task's, ``max_length`` replaces the preprocessing's own (refused for one without), ``base_model`` (default
      ``name_or_path``) is recorded in ``training``.
    * ``"auto"`` (``oe score`` / ``oe eval``): ``"detector"`` when the folder has ``detector_config.json`` (or no
      ``config.json``), else ``"model"``.

    Raises:
        DetectorCheckpointError: a missing file (all missing files named), pickle-only weights, a model type no
            imported package registers, a corrupt or changed file, a ``config.json`` naming no known task, no
            registered preprocessing that reads a plain folder.
        ValueError: ``score`` differs from a saved detector's (its threshold belongs to its own score) or
            ``max_length`` is given for one; with ``"auto"``, ``score`` is a feature score for a plain model (it has
            no fitted statistics).
        RuntimeError: a Hub id that cannot be fetched (offline / no network / not found), saying what to do.
    """
    if kind not in ("auto", "detector", "model"):
        raise ValueError(f"kind must be 'auto', 'detector' or 'model', got {kind!r}")
    if cls is None:
        from .detector import OODDetector as cls
    folder = resolve_checkpoint(name_or_path, revision, token, cache_dir)
    runtime = {"device": device, "batch_size": batch_size, "progress": progress}
    if kind == "auto":
        kind = "detector" if (folder / DETECTOR_CONFIG_NAME).is_file() or not (folder / MODEL_CONFIG_NAME).is_file() else "model"
        if kind == "model" and score in FEATURE_SCORES:
            raise ValueError(
                f"score {score!r} needs statistics fitted on training data, which a plain model folder has none of: build a "
                f"detector with `oe build-detector --model {name_or_path} --train-file FILE --score {score} --output DIR`"
            )
    if kind == "detector" and max_length is not None:
        raise ValueError(f"{name_or_path} is a detector folder: it keeps the preprocessing it was saved with (max_length is for plain model folders)")
    if kind == "model":
        model, preprocessing, task = _load_model_folder(folder, max_length)
        training = {"method": POST_HOC_METHOD, "base_model": str(base_model if base_model is not None else name_or_path)}
        return cls(model, preprocessing, score=score, task=task, training=training, **runtime)
    detector = _load_detector_folder(cls, folder, name_or_path, runtime)
    if score is not None and score != detector.score_name:
        raise ValueError(
            f"{name_or_path} is a detector saved with score {detector.score_name!r} (its threshold belongs to that score); "
            "a score can be chosen only for a plain model folder"
        )
    return detector


def _load_detector_folder(cls: type, folder: Path, name_or_path: str | os.PathLike, runtime: Mapping[str, Any]) -> Any:
    """The detector saved in ``folder`` (:func:`load_detector`'s ``"detector"`` kind)."""
    missing = [n for n in (DETECTOR_CONFIG_NAME, MODEL_CONFIG_NAME) if not (folder / n).is_file()]
    if not _has_safetensors(folder):
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
    spec = dict(config.get("preprocessing") or {})
    try:
        preprocessing = _spec_class(task, spec).from_config(spec, folder)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, DetectorCheckpointError):
            raise
        raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME}: bad preprocessing spec: {exc}") from None
    model = _load_model(folder, task)
    mahalanobis = _load_mahalanobis(folder) if config.get("mahalanobis_file") else None
    # after the checks above, so that a truncated or unreadable file keeps its own message
    _check_file_hashes(folder, hashes)
    settings = {key: config.get(key) for key in ("score", "score_kwargs", "training", "evaluation", "threshold_info")}
    try:
        detector = cls(model, preprocessing, threshold=threshold, task=task, mahalanobis=mahalanobis, **settings, **runtime)
    except (ValueError, TypeError) as exc:  # e.g. an unknown score, a vocabulary larger than the model
        files = ", ".join([DETECTOR_CONFIG_NAME, *_spec_class(task, spec).required_files(spec), MODEL_CONFIG_NAME])
        raise DetectorCheckpointError(f"checkpoint {folder} is inconsistent ({files}): {exc}") from None
    detector.checkpoint_folder = folder
    return detector


def read_model_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder (a missing or corrupt file is named)."""
    path = folder / MODEL_CONFIG_NAME
    if not path.is_file():
        raise DetectorCheckpointError(f"{folder} has neither {DETECTOR_CONFIG_NAME} (a detector) nor {MODEL_CONFIG_NAME} (a model)")
    return read_checkpoint_json(path)


def _load_model_folder(folder: Path, max_length: int | None) -> tuple[torch.nn.Module, DetectorPreprocessing, str]:
    """``(model, preprocessing, task)`` of the plain model in ``folder`` (:func:`load_detector`'s ``"model"`` kind)."""
    config = read_model_config(folder)
    architectures = config.get("architectures") or []
    tasks = {task_of_architecture(str(name)) for name in architectures} - {None}
    if len(tasks) != 1:
        raise DetectorCheckpointError(
            f"{folder / MODEL_CONFIG_NAME}: architectures {architectures} name no single classifier or language model "
            f"(e.g. 'BertForSequenceClassification'), and the folder has no {DETECTOR_CONFIG_NAME}; save the model with "
            "save_pretrained() after fine-tuning"
        )
    task = tasks.pop()
    if not _has_safetensors(folder):
        raise DetectorCheckpointError(f"model folder {folder} is missing {WEIGHTS_NAME}")
    load_plugins()
    preprocessing = None
    for preprocessing_cls in preprocessing_classes(task):
        preprocessing = preprocessing_cls.from_model_folder(folder, config)
        if preprocessing is not None:
            break
    if preprocessing is None:
        raise DetectorCheckpointError(
            f"no installed {ENTRY_POINT_GROUP!r} package builds a {task} detector from a plain model folder ({folder}); "
            "build the detector in Python (OODDetector(model, preprocessing)) and save it with save_pretrained()"
        )
    if max_length is not None:
        if not (dataclasses.is_dataclass(preprocessing) and "max_length" in {f.name for f in dataclasses.fields(preprocessing)}):
            raise ValueError(f"max_length does not apply to {type(preprocessing).__name__} (the preprocessing of {folder})")
        preprocessing = dataclasses.replace(preprocessing, max_length=max_length)  # validated again
    return _load_model(folder, task), preprocessing, task


def push_detector(
    detector: Any,
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
        save_detector(detector, tmp, repo_id=repo_id)
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
    """The model of ``folder`` via the task's Auto class: safetensors only, no remote code; every weight file's header
    is read first and NaN / inf weights are refused (each bad file named)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    _check_weight_files(folder)
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
        model = auto_cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise DetectorCheckpointError(f"cannot load the {model_type!r} model in {folder} as {_AUTO_CLASS[task]}: {reason}") from exc
    _check_finite_weights(model, folder)
    return model
