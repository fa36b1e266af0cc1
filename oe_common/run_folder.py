"""One output folder holds one run: never mixed with another, marked while incomplete, resumable after an interrupt.

Details: docs/modules.md, section ``oe_common.run_folder``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .files import atomic_write_text

__all__ = [
    "MANIFEST_NAME",
    "RunFolder",
    "RunFolderError",
    "add_run_folder_args",
    "is_main_process",
    "read_manifest",
    "recipe_guard",
    "resume_command",
    "interruption_message",
]

MANIFEST_NAME = "run_manifest.json"
_STAGES_DIR = "stages"
_CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_RUN_MARKERS = (MANIFEST_NAME, "results.json", _CHECKPOINTS_DIR)


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

    def __init__(self, path: Path, manifest: dict[str, Any], is_main: bool):
        self.path, self.manifest, self.is_main = path, manifest, is_main

    # ---- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, config: Mapping[str, Any], *, overwrite: bool = False, resume: bool = False,
             command: Sequence[str] | None = None) -> "RunFolder":
        """Open ``path`` for a run of ``config`` (a JSON-able dict, e.g. ``dataclasses.asdict(cfg)``).

        Raises:
            RunFolderError: both flags; a non-empty folder without a flag; ``overwrite`` on a folder that holds no
                recipe run; ``resume`` on a folder without a manifest, with a complete run or another configuration.
        """
        if overwrite and resume:
            raise RunFolderError("--overwrite and --resume exclude each other: --resume continues the run in the folder, --overwrite deletes it")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"output folder {str(path)!r} is a file; give a folder")
        config = _jsonable(dict(config))
        is_main = is_main_process()
        entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        previous = read_manifest(path) if entries else None
        if not is_main:  # the main process checks (and may be writing the manifest now); the others only read
            entries = [MANIFEST_NAME] if resume and previous is not None else []
        elif entries and resume:
            _check_resumable(path, previous, config)
        elif entries and overwrite:
            if not set(entries) & set(_RUN_MARKERS):
                raise RunFolderError(f"--overwrite refused: {str(path)!r} holds files but no recipe run (no {MANIFEST_NAME}, results.json "
                                     "or checkpoints/), so nothing is deleted; choose a new or empty --output-dir")
            _clear(path)
        elif entries:
            what = ("a complete run" if previous.get("status") == "complete" else f"an incomplete run (stopped in stage {previous.get('stage')!r})") if previous else "files (" + ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "") + ")"
            raise RunFolderError(f"output folder {str(path)!r} already holds {what}; pass --overwrite to delete and replace it, "
                                 "--resume to continue it, or choose another --output-dir")
        resuming = bool(entries) and resume
        manifest = {
            "status": "running",
            "stage": None,
            "stages_done": list(previous.get("stages_done", [])) if resuming else [],
            "stage_models": dict(previous.get("stage_models", {})) if resuming else {},
            "command": list(sys.argv if command is None else command),
            "config": config,
            "started": previous.get("started", _now()) if resuming else _now(),
            "updated": _now(),
            "resumed": int(previous.get("resumed", 0)) + 1 if resuming else 0,
            "attempts": list(previous.get("attempts", [])) if resuming else [],
        }
        folder = cls(path, manifest, is_main)
        if is_main:
            path.mkdir(parents=True, exist_ok=True)
            folder._write()
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
        atomic_write_text(folder / f"{stage}.json", json.dumps({"state": _jsonable(dict(state)), "arrays": index}, indent=1) + "\n")
        if model_dir is None and model is not None:
            model_dir = folder / f"{stage}_model"
            model.save_pretrained(model_dir)
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
        """Mark the run complete (the manifest's last write), then drop the resume state ``stages/``."""
        self.manifest.update(status="complete", stage=None, finished=_now())
        self._write()
        if self.is_main:
            shutil.rmtree(self.path / _STAGES_DIR, ignore_errors=True)

    def _write(self) -> None:
        if self.is_main:
            self.manifest["updated"] = _now()
            atomic_write_text(self.path / MANIFEST_NAME, json.dumps(self.manifest, indent=2, default=str) + "\n")


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    steps = sorted(((_checkpoint_step(p), p) for p in folder.iterdir() if _checkpoint_step(p) is not None), reverse=True)
    for _, path in steps:
        if (path / "trainer_state.json").is_file():
            return str(path)
    return None


def _check_resumable(path: Path, previous: dict[str, Any] | None, config: dict[str, Any]) -> None:
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


def _clear(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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


@contextlib.contextmanager
def recipe_guard(prog: str, output_dir: str | os.PathLike, argv: Sequence[str] | None = None, script: str | None = None) -> Iterator[None]:
    """Around a recipe's run: Ctrl-C -> one line with the resume command on stderr, exit code 130, no traceback;
    :class:`RunFolderError` -> ``<prog>: error: <message>``, exit code 1.

    ``argv`` / ``script``: as :func:`resume_command` (a recipe's ``main(argv)`` called from Python passes its
    ``argv`` and ``recipes/<prog>``).
    """
    try:
        yield
    except KeyboardInterrupt:
        _clear_progress_bars()
        if is_main_process():
            print(interruption_message(output_dir, resume_command(argv, script)), file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except RunFolderError as err:
        if is_main_process():
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
