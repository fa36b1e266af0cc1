"""One output folder holds one run: never mixed with another, marked while incomplete, resumable after an interrupt.

Details: docs/modules.md, section ``oe_common.run_folder``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .files import atomic_write_text, make_readable, sha256_file

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RunFolder",
    "RunFolderError",
    "add_run_folder_args",
    "is_main_process",
    "read_manifest",
    "recipe_guard",
    "resume_command",
    "interruption_message",
    "Terminated",
]

MANIFEST_NAME = "run_manifest.json"
#: The run's lock file (``filelock``), held by the main process for the run's lifetime; it stays in the folder.
LOCK_NAME = ".run.lock"
_STAGES_DIR = "stages"
_CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: ``written_by`` of every manifest this module writes; with a ``run_id`` it marks a folder ``--overwrite`` may clear.
_WRITER = "oe_common.run_folder"
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)  # a folder this process may not write
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


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
    path = Path(folder) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


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
        is_main = is_main_process()
        if not is_main:  # the main process checks, locks (and may be writing the manifest now); the others only read
            previous = read_manifest(path) if path.is_dir() else None
            return cls._opened(path, config, data, previous if resume else None, [], command, is_main, None)
        _check_folder(path, config, data, overwrite, resume, locked=False)  # refuse a folder that is not ours before writing
        lock = _acquire_lock(path)
        try:
            previous, kept = _check_folder(path, config, data, overwrite, resume, locked=True)
            return cls._opened(path, config, data, previous, kept, command, is_main, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _opened(cls, path: Path, config: dict[str, Any], data: dict[str, Any] | None, previous: dict[str, Any] | None,
                kept: list[str], command: Sequence[str] | None, is_main: bool, lock: Any) -> "RunFolder":
        """The folder with its new manifest (written by the main process); ``previous``: the run it resumes."""
        resuming = previous is not None
        manifest = {
            "status": "running",
            "stage": None,
            "stages_done": list(previous.get("stages_done", [])) if resuming else [],
            "stage_models": dict(previous.get("stage_models", {})) if resuming else {},
            "command": list(sys.argv if command is None else command),
            "config": config,
            "data": data,
            "started": previous.get("started", _now()) if resuming else _now(),
            "updated": _now(),
            "resumed": int(previous.get("resumed", 0)) + 1 if resuming else 0,
            "written_by": _WRITER,
            "run_id": previous.get("run_id") if resuming and _is_ours(previous) else uuid.uuid4().hex,
            "process": {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()},
            "kept": kept,
            "made": [],
            "attempts": list(previous.get("attempts", [])) if resuming else [],
        }
        folder = cls(path, manifest, is_main, lock)
        if is_main:
            try:
                folder._write()
            except BaseException:
                folder.close()
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
        """The newest complete checkpoint (``checkpoint-N`` with ``trainer_state.json``, written last by the Trainer)
        in ``checkpoints/<stage>/``, or ``None``: pass it as ``trainer.train(resume_from_checkpoint=...)``."""
        return _last_checkpoint(self.path / _CHECKPOINTS_DIR / stage)

    def drop_checkpoints(self, stage: str) -> None:
        """Delete ``checkpoints/<stage>/`` (and ``checkpoints/`` once empty; main process only): call it after
        :meth:`finish_stage` for a stage whose checkpoints are resume state only (its model and outputs are saved)."""
        if not self.is_main:
            return
        folder = self.path / _CHECKPOINTS_DIR
        shutil.rmtree(folder / stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty

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
        if not self.is_main:
            self.manifest["stages_done"].append(stage)
            return
        folder = self.path / _STAGES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        leaves = _flatten(arrays or {})
        index = [{"path": keys, "kind": kind} for keys, kind, _ in leaves]
        tensors = {str(i): value for i, (_, kind, value) in enumerate(leaves) if kind != "none"}
        if tensors:
            from safetensors.torch import save_file

            save_file(tensors, str(folder / f"{stage}.safetensors"))
            make_readable(folder / f"{stage}.safetensors")
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
            if leaf["kind"] == "numpy":
                value = value.numpy()
            node = arrays
            for key in leaf["path"][:-1]:
                node = node.setdefault(key, {})
            node[leaf["path"][-1]] = value
        return saved["state"], arrays

    def stage_model_dir(self, stage: str) -> Path | None:
        """The folder of ``stage``'s saved model (see :meth:`finish_stage`), or ``None``."""
        rel = self.manifest["stage_models"].get(stage)
        return None if rel is None else self.path / rel

    def load_stage_model(self, stage: str, like: Any) -> Any:
        """``stage``'s saved model, loaded with ``type(like).from_pretrained`` (safetensors)."""
        folder = self.stage_model_dir(stage)
        if folder is None or not folder.is_dir():
            raise RunFolderError(f"cannot resume: the model of finished stage {stage!r} was not saved in {str(self.path)!r}; rerun with --overwrite")
        return type(like).from_pretrained(str(folder))

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
        process; idempotent). :func:`oe_common.experiment.run_experiment` calls it however the run ends."""
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


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    steps = sorted(((_checkpoint_step(p), p) for p in folder.iterdir() if _checkpoint_step(p) is not None), reverse=True)
    for _, path in steps:
        try:  # written last by the Trainer; cut short (a full disk) it does not parse
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


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
        if err.errno in _WRITE_ERRNOS:
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


def _check_folder(path: Path, config: dict[str, Any], data: dict[str, Any] | None, overwrite: bool, resume: bool,
                  locked: bool) -> tuple[dict[str, Any] | None, list[str]]:
    """Refuse what the flags cannot do with ``path``; ``(the manifest of the run to resume or None, the names to keep)``.
    Unlocked, only a non-empty folder without a manifest of ours is checked (nothing is written before the lock);
    locked, ``--overwrite`` deletes the files the previous run made (its manifest's ``made``) and keeps the others."""
    entries = _entries(path)
    if not entries:
        return None, []
    previous = read_manifest(path)
    if not locked and _is_ours(previous):
        return None, []
    if resume:
        _check_resumable(path, previous, config, data)
        return previous, list(previous.get("kept", []))
    if overwrite:
        if not _is_ours(previous):
            raise RunFolderError(f"--overwrite refused: {str(path)!r} holds no {MANIFEST_NAME} written by a recipe run, so nothing "
                                 "is deleted; delete the folder yourself or choose another --output-dir")
        return None, _clear(path, previous, entries)
    what = ("a complete run" if previous.get("status") == "complete" else f"an incomplete run (stopped in stage {previous.get('stage')!r})") if previous else "files (" + ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "") + ")"
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
            and os.sep not in name} | {MANIFEST_NAME, _CHECKPOINTS_DIR, _STAGES_DIR}
    for name in entries:
        entry = path / name
        if name not in made:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
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


# ================================================================================================ command line
def add_run_folder_args(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` and ``--resume`` (mutually exclusive), as every recipe takes them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true",
                       help="delete what the output folder holds (a previous run) before starting; without it a non-empty folder is refused")
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in the output folder: finished stages are loaded, the running one continues "
                            "from its last checkpoint (same flags needed; a missing or empty folder starts a new run)")


def resume_command(argv: Sequence[str] | None = None, script: str | None = None) -> str:
    """The shell command that resumes this run: the same arguments without ``--overwrite``, plus ``--resume``.

    ``argv``: the recipe's arguments (default ``sys.argv[1:]``); ``script``: its path (default ``sys.argv[0]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    script = script if script is not None else sys.argv[0]
    args = [a for a in args if not (len(a) > 3 and "--overwrite".startswith(a))]  # argparse accepts unique prefixes
    if not any(len(a) > 3 and "--resume".startswith(a) for a in args):
        args.append("--resume")
    launcher = ["accelerate", "launch"] if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ["python"]
    return shlex.join([*launcher, script, *args])


def interruption_message(output_dir: str | os.PathLike, command: str) -> str:
    """One line: where the run stopped, what ``--resume`` will do, and the command."""
    manifest = read_manifest(output_dir)
    stage = manifest.get("stage") if manifest else None
    if stage is None:
        where = "interrupted before the first stage"
    else:
        done = manifest.get("stages_done", [])
        checkpoint = _last_checkpoint(Path(output_dir) / _CHECKPOINTS_DIR / stage)
        step = _checkpoint_step(Path(checkpoint)) if checkpoint else None
        then = f"stage {stage!r} continues from its checkpoint at step {step}" if step is not None else f"stage {stage!r} restarts from its beginning"
        where = f"interrupted in stage {stage!r}" + (f" (finished: {', '.join(done)})" if done else "") + f"; --resume: {then}"
    return f"{where}. To resume: {command}"


def _clear_progress_bars() -> None:
    """Erase the progress bars an interrupt left open (tqdm's, as Trainer and the pipelines use), so the message
    starts on a clean line and no bar is drawn again after it."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop) inside :func:`recipe_guard`: handled like Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the block runs (elsewhere: nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_failure(err: BaseException) -> str | None:
    """What a failed write means, or ``None`` for any other error: ``"full"`` (no space left: ``OSError`` ENOSPC /
    EDQUOT, or a safetensors / torch writer error that says so) or ``"denied"`` (the file system refuses writes)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return "full"
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            return "denied"
        text = str(err)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return "full"  # safetensors' SafetensorError, torch's writer: the OS error is only in the message
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def recipe_guard(prog: str, output_dir: str | os.PathLike, argv: Sequence[str] | None = None, script: str | None = None) -> Iterator[None]:
    """Around a recipe's run: Ctrl-C or SIGTERM -> one line with the resume command on stderr, exit code 130 (143
    for SIGTERM), no traceback; :class:`RunFolderError` -> ``<prog>: error: <message>``, exit code 1; a full disk or a
    folder the process may not write -> one error line with the resume command, exit code 1.

    ``argv`` / ``script``: as :func:`resume_command` (a recipe's ``main(argv)`` called from Python passes its
    ``argv`` and ``recipes/<prog>``).
    """
    try:
        with _sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as err:
        _clear_progress_bars()
        if is_main_process():
            print(interruption_message(output_dir, resume_command(argv, script)), file=sys.stderr, flush=True)
        raise SystemExit(143 if isinstance(err, Terminated) else 130) from None
    except RunFolderError as err:
        if is_main_process():
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception as err:
        failure = _write_failure(err)
        if failure is None:
            raise
        _clear_progress_bars()
        if is_main_process():
            what = (f"no space left on the device of {str(output_dir)!r} ({_one_line(err)}): free some space" if failure == "full"
                    else f"permission denied ({_one_line(err)}): fix the folder's permissions")
            line = interruption_message(output_dir, resume_command(argv, script)).replace("interrupted", "stopped", 1)
            print(f"{prog}: error: {what}; {line}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__
