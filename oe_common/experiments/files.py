"""Writing files so that a reader sees either the old content or the new one, never a half-written file; file digests."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "make_readable", "new_file_mode", "sha256_file"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file in ``path``'s folder, then rename it over ``path``.

    The file gets the permissions of a new file under the current umask (``mkstemp`` creates ``0600``). Raises
    ``OSError`` as the file system does; the temporary file is removed on any failure.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (64 lower-case hex digits) of the bytes of ``path`` (symlinks followed), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:  # chunked by hand: hashlib.file_digest needs Python 3.11 (we support 3.10)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_file_mode() -> int:
    """The permissions of a new file under the current umask (``0o666 & ~umask``, e.g. ``0o644``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def make_readable(path: str | os.PathLike) -> None:
    """Give the ``*.safetensors`` files at ``path`` (a file, or a folder searched recursively) the permissions of a
    new file (:func:`new_file_mode`): safetensors writes them ``0600``, readable by their owner only."""
    path = Path(path)
    files = [path] if path.is_file() else path.rglob("*.safetensors") if path.is_dir() else []
    mode = new_file_mode()
    for file in files:
        if file.suffix == ".safetensors" and file.is_file() and not file.is_symlink():
            os.chmod(file, mode)
