"""Checks that a loader reads the corpus it expects, so that wrong data stops a run with one line naming the file.

Details: docs/modules.md, section ``oe_common.experiments.data_integrity``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .data_dir import DataError
from .files import atomic_write_text, sha256_file

__all__ = [
    "SKIP_ENV",
    "CHECKSUM_FILE",
    "DataIntegrityError",
    "checks_enabled",
    "cache_file",
    "file_sha256",
    "expected_sha256",
    "verify_checksums",
    "check_counts",
    "reading",
]

logger = logging.getLogger(__name__)

#: Environment variable that switches the checksum and content checks off (``1``, ``true``, ``yes``, ``on``).
SKIP_ENV = "OE_SKIP_DATA_CHECKS"
#: The checksum list a data folder ships (``sha256sum`` format).
CHECKSUM_FILE = "SHA256SUMS"
_SEARCH_LEVELS = 3  # the file's folder and two above: <data>/SHA256SUMS lists <data>/ptb/ptb.train.txt
_RACY_NS = 2_000_000_000  # a digest of a file modified < 2 s ago is not cached: a same-size rewrite in the same
# timestamp tick would keep size and mtime_ns (git's "racily clean" rule)
_OPT_OUT = f"or set {SKIP_ENV}=1 to use it anyway (e.g. your own corpus)"


class DataIntegrityError(DataError, ValueError):
    """A corpus file is there but wrong: checksum mismatch, unexpected size, or undecodable."""


def checks_enabled() -> bool:
    """False when ``$OE_SKIP_DATA_CHECKS`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(SKIP_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


# ============================================================================================ checksum cache
def cache_file() -> Path:
    """``$XDG_CACHE_HOME/oe/sha256.json`` (``~/.cache/oe/sha256.json`` when ``XDG_CACHE_HOME`` is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "oe" / "sha256.json"


_WARNED: set[str] = set()


def _read_cache(path: Path) -> dict[str, list]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("entries", {})
        return {k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 3}
    except (OSError, ValueError, AttributeError):  # absent, unreadable or garbled: start afresh
        return {}


def _store(key: str, entry: list) -> None:
    """Add one digest to the cache file (merged with what other processes wrote; atomic replace)."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = entry
        atomic_write_text(path, json.dumps({"version": 1, "entries": entries}))
    except OSError as exc:
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            logger.warning("cannot write the checksum cache %s (%s): corpora are re-hashed on every run", path, exc)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of ``path``, from the cache file when the file's resolved path, size and ``mtime_ns`` match."""
    real = Path(path).resolve()
    st = real.stat()
    hit = _read_cache(cache_file()).get(str(real))
    if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
        return hit[2]
    digest = sha256_file(real)
    if time.time_ns() - st.st_mtime_ns >= _RACY_NS:
        _store(str(real), [st.st_size, st.st_mtime_ns, digest])
    return digest


# ============================================================================================ checksum lists
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


@functools.lru_cache(maxsize=16)
def _read_sha256sums(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of a ``sha256sum``-format file (parsed once per file change: ``size`` and
    ``mtime_ns`` are part of the cache key)."""
    table: dict[str, str] = {}
    with reading(path):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _SUMS_LINE.match(line)
        if not m:
            raise DataIntegrityError(
                f"{path}:{lineno}: not a sha256sum line ('<64 hex digits>  <relative path>'); restore the file, {_OPT_OUT}"
            )
        name = m.group(2)
        table[name[2:] if name.startswith("./") else name] = m.group(1).lower()
    return table


def expected_sha256(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(SHA256SUMS file, expected hex)`` from the nearest checksum list that names ``path``, else None.

    Lists are looked for in the file's folder and up to two folders above, along the path as given (not resolved:
    a folder of symlinks to the corpora is checked against its own ``SHA256SUMS``).
    """
    p = Path(os.path.abspath(path))
    for folder in list(p.parents)[:_SEARCH_LEVELS]:
        sums = folder / CHECKSUM_FILE
        if sums.is_file():
            st = sums.stat()
            digest = _read_sha256sums(str(sums), st.st_size, st.st_mtime_ns).get(p.relative_to(folder).as_posix())
            if digest is not None:
                return sums, digest
    return None


def verify_checksums(paths: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`DataIntegrityError` for the first file of ``paths`` whose SHA-256 differs from its listing.

    Files no ``SHA256SUMS`` lists are not checked; nothing is checked when ``$OE_SKIP_DATA_CHECKS`` is set.
    """
    if not checks_enabled():
        return
    for path in paths:
        listed = expected_sha256(path)
        if listed is None:
            continue
        sums, want = listed
        got = file_sha256(path)
        if got != want:
            raise DataIntegrityError(
                f"{path}: SHA-256 {got[:12]}... does not match {want[:12]}... listed in {sums}: the file is corrupt, "
                f"truncated or another version. Restore the original (check all with `cd {sums.parent} && sha256sum -c "
                f"{CHECKSUM_FILE}`), {_OPT_OUT}"
            )


# ============================================================================================ content
def check_counts(path: str | os.PathLike, found: Mapping[str, int], expected: Mapping[str, int] | None) -> None:
    """Raise :class:`DataIntegrityError` when a count read from ``path`` differs from the known corpus size.

    ``found`` / ``expected``: ``{"lines": n, "tokens": m, ...}`` (only keys of ``expected`` are compared;
    ``expected=None``: not a known corpus, nothing to compare). Skipped when ``$OE_SKIP_DATA_CHECKS`` is set.
    """
    if not expected or not checks_enabled():
        return
    bad = [k for k in expected if found.get(k) != expected[k]]
    if bad:
        read = ", ".join(f"{found.get(k, 0):,} {k}" for k in bad)
        want = ", ".join(f"{expected[k]:,}" for k in bad)
        raise DataIntegrityError(
            f"{path}: read {read} where this corpus has {want} (data/README.md): the file is truncated, corrupt or "
            f"another version. Restore the original, {_OPT_OUT}"
        )


# ============================================================================================ decoding
@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of decoding ``path`` inside the block into a one-line :class:`DataIntegrityError`.

    Covers non-UTF-8 text, truncated / corrupt gzip, zip and tar archives, unreadable images. Not switched off by
    ``$OE_SKIP_DATA_CHECKS``: such a file cannot be read at all.
    """
    todo = "replace it with a good copy (data/README.md says where each corpus comes from)"
    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start] if exc.start < len(exc.object) else None
        what = f"byte 0x{byte:02x}" if isinstance(byte, int) else "a byte"
        raise DataIntegrityError(f"{path}: not UTF-8 text ({what} is not valid UTF-8); {todo}") from None
    except (EOFError, zlib.error) as exc:
        raise DataIntegrityError(f"{path}: the compressed data is truncated or corrupt ({exc}); {todo}") from None
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DataIntegrityError(f"{path}: not a readable archive ({type(exc).__name__}: {exc}); {todo}") from None
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise DataIntegrityError(f"{path}: cannot be read ({exc.strerror}); fix its permissions") from None
    except OSError as exc:  # gzip.BadGzipFile, PIL.UnidentifiedImageError, a truncated image, an I/O error, ...
        raise DataIntegrityError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); {todo}") from None
