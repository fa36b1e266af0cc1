"""One output folder holds one run: never mixed with another, marked while incomplete, resumable after an interrupt.

Details: docs/modules.md, section ``oe_common.experiments.run_folder``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import shlex
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .files import atomic_write_text, make_readable, sha256_file

__all__ = ["CHECKPOINTS_DIR", "LOCK_NAME", "MANIFEST_NAME", "RunFolder", "RunFolderError", "is_main_process", "newest_checkpoint", "read_manifest"]

MANIFEST_NAME = "run_manifest.json"
#: The run's lock file (``filelock``), held by the main process for the run's lifetime; it stays in the folder.
LOCK_NAME = ".run.lock"
_STAGES_DIR = "stages"
#: Where a stage's Trainer checkpoints go: ``<output_dir>/checkpoints/<stage>/checkpoint-N``.
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: ``written_by`` of every manifest this module writes; with a ``run_id`` it marks a folder ``--overwrite`` may clear.
_WRITER = "oe_common.experiments.run_folder"
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: ``OSError.errno`` of a folder this process may not write.
WRITE_DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


class RunFolderError(ValueError):
    """An output folder that cannot be used as asked (one line: what is wrong and which flag to pass)."""


def is_main_process() -> bool:
    """Whether this is the main process (``RANK`` unset or 0: a single process, or rank 0 of ``accelerate launch``)."""
    return os.environ.get("RANK", "0") == "0"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths and other objects strings)."""
    return json.loads(json.dumps(value, default=str))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``run_manifest.json``, or ``None`` when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def newest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (its ``trainer_state.json``, which the Trainer writes last,
    parses; one cut short, e.g. by a full disk, does not), or ``None``. ``transformers``' ``get_last_checkpoint``
    takes the newest whether or not it is complete."""
    folder = Path(folder)
    steps = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else ())
             if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    for _, path in sorted(steps, reverse=True):
        with contextlib.suppress(OSError, ValueError):
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
    return None


class RunFolder:
    """The output folder of one run and its ``run_manifest.json`` (see docs/modules.md)."""

    def __init__(self, path: Path, manifest: dict[str, Any], is_main: bool, lock: Any = None):
        self.path, self.manifest, self.is_main, self._lock = path, manifest, is_main, lock

    # ---- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, config: Mapping[str, Any], *, overwrite: bool = False, resume: bool = False,
             command: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None) -> "RunFolder":
        """Open ``path`` for a run of ``config`` (a JSON-able dict, e.g. ``dataclasses.asdict(cfg)``) that reads the
        data folder ``data_dir`` (``None``: none, e.g. data given in memory). The main process holds the folder's
        lock (:data:`LOCK_NAME`) until :meth:`close` (or :meth:`complete`, or its exit).

        Raises:
            RunFolderError: both flags; a non-empty folder without a flag; a folder held by a live run; ``overwrite``
                on a folder whose manifest this module did not write; ``resume`` on a folder without a manifest, with
                a complete run, another configuration or another data folder; a folder inside the data folder; a
                folder this process may not write.
        """
        if overwrite and resume:
            raise RunFolderError("--overwrite and --resume exclude each other: --resume continues the run in the folder, --overwrite deletes it")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"output folder {str(path)!r} is a file; give a folder")
        config = _jsonable(dict(config))
        data = _data_record(data_dir)
        if data is not None and Path(data["dir"]) in (path.resolve(), *path.resolve().parents):
            raise RunFolderError(f"output folder {str(path)!r} is inside the data folder {data['dir']!r}, which runs only read; "
                                 "choose an --output-dir outside it")
        if not is_main_process():  # the main process checks, locks (and may be writing the manifest now); the others only read
            previous = read_manifest(path) if resume and path.is_dir() else None
            return cls(path, _new_manifest(previous, [], config, data, command), is_main=False)
        if not _is_ours(read_manifest(path)):  # refuse a folder that is not a run's before writing even the lock file
            _check_folder(path, config, data, overwrite, resume)
        lock = _acquire_lock(path)
        try:
            previous, kept = _check_folder(path, config, data, overwrite, resume)
            folder = cls(path, _new_manifest(previous, kept, config, data, command), True, lock)
            folder._write()
        except BaseException:
            lock.release()
            raise
        return folder

    def record_attempt(self, attempt: Mapping[str, Any]) -> None:
        """Append this process's attempt (e.g. its commit and start time) to the manifest's ``attempts``."""
        self.manifest["attempts"].append(_jsonable(dict(attempt)))
        self._write()

    # ---- stages ----------------------------------------------------------------------------------------------
    def stage_done(self, stage: str) -> bool:
        """Whether ``stage`` finished in an earlier attempt (its state can be loaded with :meth:`load_stage`)."""
        return stage in self.manifest["stages_done"]

    def start_stage(self, stage: str) -> None:
        """Record that ``stage`` is running (named in the interrupt message and the manifest)."""
        self.manifest["stage"] = stage
        self._write()

    def last_checkpoint(self, stage: str) -> str | None:
        """The newest complete checkpoint in ``checkpoints/<stage>/`` (:func:`newest_checkpoint`), or ``None``: pass it
        as ``trainer.train(resume_from_checkpoint=...)``."""
        return newest_checkpoint(self.path / CHECKPOINTS_DIR / stage)

    def drop_checkpoints(self, stage: str) -> None:
        """Delete ``checkpoints/<stage>/`` (and ``checkpoints/`` once empty; main process only): call it after
        :meth:`finish_stage` for a stage whose checkpoints are resume state only (its model and outputs are saved)."""
        if self.is_main:
            shutil.rmtree(self.path / CHECKPOINTS_DIR / stage, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.path / CHECKPOINTS_DIR).rmdir()  # only when empty

    def finish_stage(self, stage: str, state: Mapping[str, Any], arrays: Mapping[str, Any] | None = None, *,
                     model_dir: str | os.PathLike | None = None, model: Any = None) -> None:
        """Save what later steps need of ``stage`` (main process only), then mark it done.

        Args:
            state: JSON-able values (records, metrics, seconds, ...), returned by :meth:`load_stage` as read back
                from JSON (tuples become lists).
            arrays: a nested mapping (any depth) of numpy arrays / torch tensors / ``None``, returned as saved
                (same nesting, numpy or torch as given, ``None`` kept); stored as safetensors, nothing pickled.
            model_dir: where the pipeline saved the stage's model (a ``save_pretrained`` folder), if it did.
            model: otherwise the model, saved to ``stages/<stage>_model`` (only when a later stage continues from it).
        """
        if self.is_main:
            folder = self.path / _STAGES_DIR
            folder.mkdir(parents=True, exist_ok=True)
            leaves = _flatten(arrays or {})
            tensors = {str(i): value for i, (_, kind, value) in enumerate(leaves) if kind != "none"}
            if tensors:
                from safetensors.torch import save_file

                save_file(tensors, str(folder / f"{stage}.safetensors"))
                make_readable(folder / f"{stage}.safetensors")
            index = [{"path": keys, "kind": kind} for keys, kind, _ in leaves]
            atomic_write_text(folder / f"{stage}.json", json.dumps({"state": _jsonable(dict(state)), "arrays": index}, indent=1) + "\n")
            if model_dir is None and model is not None:
                model_dir = folder / f"{stage}_model"
                model.save_pretrained(model_dir)
                make_readable(model_dir)
            if model_dir is not None:
                self.manifest["stage_models"][stage] = os.path.relpath(model_dir, self.path)
        self.manifest["stages_done"].append(stage)
        self._write()

    def load_stage(self, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(state, arrays)`` as given to :meth:`finish_stage` by an earlier attempt."""
        folder = self.path / _STAGES_DIR
        try:
            saved = json.loads((folder / f"{stage}.json").read_text())
        except (OSError, ValueError) as err:
            raise RunFolderError(f"cannot resume: the saved state of stage {stage!r} ({folder / (stage + '.json')}) is missing or "
                                 f"unreadable ({err}); rerun with --overwrite") from None
        tensors: dict[str, Any] = {}
        if any(leaf["kind"] != "none" for leaf in saved["arrays"]):
            from safetensors.torch import load_file

            tensors = load_file(str(folder / f"{stage}.safetensors"))
        arrays: dict[str, Any] = {}
        for i, leaf in enumerate(saved["arrays"]):
            value = None if leaf["kind"] == "none" else tensors[str(i)]
            node = arrays
            for key in leaf["path"][:-1]:
                node = node.setdefault(key, {})
            node[leaf["path"][-1]] = value.numpy() if leaf["kind"] == "numpy" else value
        return saved["state"], arrays

    def load_stage_model(self, stage: str, like: Any) -> Any:
        """``stage``'s saved model (see :meth:`finish_stage`), loaded with ``type(like).from_pretrained`` (safetensors)."""
        rel = self.manifest["stage_models"].get(stage)
        if rel is None or not (self.path / rel).is_dir():
            raise RunFolderError(f"cannot resume: the model of finished stage {stage!r} was not saved in {str(self.path)!r}; rerun with --overwrite")
        return type(like).from_pretrained(str(self.path / rel))

    # ---- the end ---------------------------------------------------------------------------------------------
    def complete(self) -> None:
        """Mark the run complete (the manifest's last write), drop the resume state ``stages/``, release the lock."""
        self.manifest.update(status="complete", stage=None, finished=_now())
        self._write()
        if self.is_main:
            shutil.rmtree(self.path / _STAGES_DIR, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Record the files the run made so far (for a later ``--overwrite``) and release the folder's lock (main
        process; idempotent). :func:`oe_common.experiments.experiment.run_experiment` calls it however the run ends."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):  # e.g. the disk is full: the lock is released all the same
            self._write()
        self._lock.release()
        self._lock = None

    def _write(self) -> None:
        if self.is_main:
            self.manifest["updated"] = _now()
            kept = set(self.manifest["kept"]) | {LOCK_NAME}
            self.manifest["made"] = sorted({MANIFEST_NAME} | {name for name in _entries(self.path) if name not in kept})
            atomic_write_text(self.path / MANIFEST_NAME, json.dumps(self.manifest, indent=2, default=str) + "\n")


def _new_manifest(previous: Mapping[str, Any] | None, kept: list[str], config: dict[str, Any], data: dict[str, Any] | None,
                  command: Sequence[str] | None) -> dict[str, Any]:
    """The manifest of a run starting now: a new one, or the next attempt at ``previous`` (the run it resumes)."""
    was = previous or {}
    return {
        "status": "running",
        "stage": None,
        "stages_done": list(was.get("stages_done", [])),
        "stage_models": dict(was.get("stage_models", {})),
        "command": list(sys.argv if command is None else command),
        "config": config,
        "data": data,
        "started": was.get("started", _now()),
        "updated": _now(),
        "resumed": int(was.get("resumed", 0)) + 1 if previous is not None else 0,
        "written_by": _WRITER,
        "run_id": was["run_id"] if _is_ours(previous) else uuid.uuid4().hex,
        "process": {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()},
        "kept": kept,
        "made": [],
        "attempts": list(was.get("attempts", [])),
    }


def _entries(path: Path) -> list[str]:
    """The names in ``path`` (none when it is missing), without the lock file."""
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME) if path.is_dir() else []


def _is_ours(manifest: Mapping[str, Any] | None) -> bool:
    """Whether ``manifest`` was written by :class:`RunFolder` (its marker and a run id): only then does ``made`` say
    which files a run made."""
    return (isinstance(manifest, Mapping) and manifest.get("written_by") == _WRITER and isinstance(manifest.get("run_id"), str)
            and bool(_RUN_ID_RE.match(manifest["run_id"])))


def _data_record(data_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"dir": resolved path, "sha256sums": SHA-256 of its SHA256SUMS (None without one)}``, or ``None``."""
    if data_dir is None:
        return None
    folder = Path(data_dir).expanduser().resolve()
    try:
        sums = sha256_file(folder / "SHA256SUMS")
    except OSError:
        sums = None
    return {"dir": str(folder), "sha256sums": sums}


def _acquire_lock(path: Path) -> Any:
    """The folder's lock, held (the folder is created); a live holder or an unwritable folder is a RunFolderError."""
    from filelock import FileLock, Timeout

    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / LOCK_NAME).touch()
    except OSError as err:
        if err.errno in WRITE_DENIED_ERRNOS:
            raise RunFolderError(f"cannot write to output folder {str(path)!r} ({err.strerror}); choose a writable --output-dir") from None
        raise
    lock = FileLock(str(path / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = (read_manifest(path) or {}).get("process") or {}
        who = (f"process {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}" if holder
               else f"another process (it holds {path / LOCK_NAME})")
        raise RunFolderError(f"output folder {str(path)!r} is in use by a live run: {who}; wait for it to end or stop it, "
                             "or choose another --output-dir") from None
    return lock


def _check_folder(path: Path, config: dict[str, Any], data: dict[str, Any] | None, overwrite: bool,
                  resume: bool) -> tuple[dict[str, Any] | None, list[str]]:
    """Refuse what the flags cannot do with ``path``; ``(the manifest of the run to resume or None, the names to keep)``.
    ``--overwrite`` deletes the files the previous run made (its manifest's ``made``) and keeps the others."""
    entries = _entries(path)
    if not entries:
        return None, []
    previous = read_manifest(path)
    if resume:
        _check_resumable(path, previous, config, data)
        return previous, list(previous.get("kept", []))
    if overwrite and _is_ours(previous):
        return None, _clear(path, previous, entries)
    if overwrite:
        raise RunFolderError(f"--overwrite refused: {str(path)!r} holds no {MANIFEST_NAME} written by a recipe run, so nothing "
                             "is deleted; delete the folder yourself or choose another --output-dir")
    if previous is None:
        what = "files (" + ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "") + ")"
    else:
        what = "a complete run" if previous.get("status") == "complete" else f"an incomplete run (stopped in stage {previous.get('stage')!r})"
    raise RunFolderError(f"output folder {str(path)!r} already holds {what}; pass --overwrite to delete and replace it, "
                         "--resume to continue it, or choose another --output-dir")


def _check_resumable(path: Path, previous: dict[str, Any] | None, config: dict[str, Any], data: dict[str, Any] | None) -> None:
    if previous is None:
        raise RunFolderError(f"cannot resume: {str(path)!r} holds no readable {MANIFEST_NAME} (not a run, or one made before runs "
                             "were resumable); pass --overwrite to replace it or choose another --output-dir")
    if previous.get("status") == "complete":
        raise RunFolderError(f"nothing to resume: {str(path)!r} holds a complete run; pass --overwrite to run it again or choose another --output-dir")
    old = previous.get("config", {})
    changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise RunFolderError(f"cannot resume {str(path)!r} with another configuration ({diff}); resume with the original flags "
                             "or pass --overwrite")
    was = previous.get("data")
    if was and data and was.get("dir") != data["dir"]:
        raise RunFolderError(f"cannot resume {str(path)!r} with another data folder: it was started with {was.get('dir')!r}, this "
                             f"command reads {data['dir']!r}; resume with --data-dir {shlex.quote(str(was.get('dir')))}, or pass "
                             "--overwrite to start again with the new one")
    if was and data and was.get("sha256sums") != data["sha256sums"]:
        raise RunFolderError(f"cannot resume {str(path)!r}: the SHA256SUMS of the data folder {data['dir']!r} changed since the run "
                             "started (other corpora); put the original corpora back, or pass --overwrite to start again")


def _clear(path: Path, previous: Mapping[str, Any], entries: Sequence[str]) -> list[str]:
    """Delete the entries of ``path`` that the previous run made (``made`` of its manifest, and this module's own:
    the manifest, ``checkpoints/`` and ``stages/``, which a killed run may have written after its last record);
    returns the others (kept)."""
    made = {name for name in previous.get("made", []) if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and os.sep not in name} | {MANIFEST_NAME, CHECKPOINTS_DIR, _STAGES_DIR}
    for name in entries:
        entry = path / name
        if name in made and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif name in made:
            entry.unlink()
    return [name for name in entries if name not in made]


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[list[str], str, Any]]:
    """``[(key path, kind, contiguous CPU tensor or None)]``; kind is ``"torch"``, ``"numpy"`` or ``"none"``."""
    import torch

    leaves = []
    for key, value in tree.items():
        keys = (*prefix, str(key))
        if isinstance(value, Mapping):
            leaves += _flatten(value, keys)
        elif value is None:
            leaves.append((list(keys), "none", None))
        elif isinstance(value, torch.Tensor):
            leaves.append((list(keys), "torch", value.detach().cpu().contiguous()))
        else:
            leaves.append((list(keys), "numpy", torch.from_numpy(np.ascontiguousarray(value))))
    return leaves
