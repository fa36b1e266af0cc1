"""Where the toolkit finds corpora: an explicit argument, else ``$OE_DATA_DIR``.

Corpora are never copied into the repository. Every loader calls :func:`resolve_data_dir`
and :func:`require_files`, so a missing corpus always produces the same kind of error: one
that names the directory searched, the files expected, and how to provide them. Data that is
there but wrong (checksum, counts, encoding) raises :class:`oe_common.experiments.data_integrity.DataIntegrityError`;
both are :class:`DataError`, which the recipes print as one line before exiting with status 1.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, TypeVar

ENV_VAR = "OE_DATA_DIR"
_F = TypeVar("_F", bound=Callable)


class DataError(Exception):
    """A corpus is missing or wrong; the message is one line naming the file and saying what to do."""


class MissingDataError(DataError, FileNotFoundError):
    """A corpus the caller asked for is not in the data directory."""


def exit_on_data_error(main: _F) -> _F:
    """Decorator for a recipe's ``main``: a :class:`DataError` ends the program with one line on stderr
    (``<script>: error: <message>``) and exit status 1 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DataError as exc:
            print(f"{Path(sys.argv[0]).name or 'oe'}: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory: ``data_dir`` if given, else ``$OE_DATA_DIR``.

    Raises:
        MissingDataError: neither is set, or the directory does not exist.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not chosen:
        raise MissingDataError(
            f"No data directory given. Pass data_dir=... (or --data-dir) or set {ENV_VAR} to the folder "
            "holding the corpora (ptb/, wikitext-2/, ewt/, mnist/, ...), e.g. `export OE_DATA_DIR=../shared/data`."
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"Data directory {str(path)!r} does not exist (from {'argument' if data_dir is not None else ENV_VAR}).")
    return path


def require_files(folder: Path, names: Iterable[str], corpus: str, hint: str = "") -> list[Path]:
    """Return ``folder / name`` for every name, or raise one error listing all missing files.

    Args:
        folder: the corpus folder inside the data directory (e.g. ``<data_dir>/ptb``).
        names: file names expected in it.
        corpus: a human name for the corpus, used in the message.
        hint: how to obtain the files (appended to the message).
    """
    paths = [folder / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingDataError(
            f"{corpus}: missing {len(missing)} file(s) in {str(folder)!r}: {', '.join(missing)}. "
            f"Put them there (the data directory comes from data_dir=... or ${ENV_VAR}). {hint}".rstrip()
        )
    return paths
