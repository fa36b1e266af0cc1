"""A recipe's command-line side of its run folder: the ``--overwrite`` / ``--resume`` flags, and the guard that turns
an interrupt, a refused folder or a failed write into one line (with the command that resumes the run) and an exit code.

Details: docs/modules.md, section ``oe_common.experiments.run_folder``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .run_folder import CHECKPOINTS_DIR, WRITE_DENIED_ERRNOS, RunFolderError, is_main_process, newest_checkpoint, read_manifest

__all__ = ["Terminated", "add_run_folder_args", "interruption_message", "recipe_guard", "resume_command"]

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


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
    args = [a for a in args if not (len(a) > 3 and "--overwrite".startswith(a))]  # argparse accepts unique prefixes
    if not any(len(a) > 3 and "--resume".startswith(a) for a in args):
        args.append("--resume")
    launcher = ["accelerate", "launch"] if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ["python"]
    return shlex.join([*launcher, script if script is not None else sys.argv[0], *args])


def interruption_message(output_dir: str | os.PathLike, command: str) -> str:
    """One line: where the run stopped, what ``--resume`` will do, and the command."""
    manifest = read_manifest(output_dir) or {}
    stage = manifest.get("stage")
    if stage is None:
        return f"interrupted before the first stage. To resume: {command}"
    done = manifest.get("stages_done", [])
    checkpoint = newest_checkpoint(Path(output_dir) / CHECKPOINTS_DIR / stage)
    then = (f"stage {stage!r} continues from its checkpoint at step {checkpoint.rsplit('-', 1)[1]}" if checkpoint
            else f"stage {stage!r} restarts from its beginning")
    return f"interrupted in stage {stage!r}" + (f" (finished: {', '.join(done)})" if done else "") + f"; --resume: {then}. To resume: {command}"


def _clear_progress_bars() -> None:
    """Erase the progress bars an interrupt left open (tqdm's, as Trainer and the pipelines use), so the message
    starts on a clean line and no bar is drawn again after it."""
    from tqdm import tqdm

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


def _write_failure(err: BaseException | None) -> str | None:
    """What a failed write means, or ``None`` for any other error: ``"full"`` (no space left: ``OSError`` ENOSPC /
    EDQUOT, or a safetensors / torch writer error that says so) or ``"denied"`` (the file system refuses writes)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return "full"
        if isinstance(err, OSError) and err.errno in WRITE_DENIED_ERRNOS:
            return "denied"
        if any(text in str(err) for text in ("No space left on device", "StorageFull", "Disk quota exceeded")):
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
            detail = " ".join(str(err).split())[:300] or type(err).__name__
            what = (f"no space left on the device of {str(output_dir)!r} ({detail}): free some space" if failure == "full"
                    else f"permission denied ({detail}): fix the folder's permissions")
            line = interruption_message(output_dir, resume_command(argv, script)).replace("interrupted", "stopped", 1)
            print(f"{prog}: error: {what}; {line}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
