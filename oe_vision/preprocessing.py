"""``ImagePreprocessing``: the image pipeline of an ``OODDetector``, as a small JSON spec.

Registered with :mod:`oe_common.deployment.preprocessing` when ``oe_vision`` is imported (task ``image-classification``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from oe_common.deployment.preprocessing import DetectorCheckpointError, DetectorInputError, DetectorPreprocessing, ScoringBatches, register_preprocessing

__all__ = ["ImagePreprocessing"]


@dataclass
class ImagePreprocessing(DetectorPreprocessing):
    """A JSON-serialisable description of the image pipeline (:func:`oe_vision.data.image_transform` arguments).

    ``size`` (side in pixels), ``channels`` (1 grayscale / 3 RGB), ``invert``, ``mean`` / ``std``
    (per-channel ``Normalize``, both or neither), ``center_crop`` (resize the shorter side then crop).
    No augmentation is ever applied at scoring time.
    """

    kind = "image"
    tasks = ("image-classification",)

    size: int | None = None
    channels: int | None = None
    invert: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    center_crop: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1):
            raise ValueError(f"size must be a positive int or None, got {self.size!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (or neither)")
        self.mean = None if self.mean is None else [float(v) for v in self.mean]
        self.std = None if self.std is None else [float(v) for v in self.std]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], folder: Path) -> "ImagePreprocessing":
        allowed = {"size", "channels", "invert", "mean", "std", "center_crop"}
        unknown = sorted(set(spec) - allowed - {"type"})
        if unknown:
            raise DetectorCheckpointError(f"unknown image preprocessing field(s) {unknown}; known: {sorted(allowed)}")
        return cls(**{k: spec[k] for k in allowed if k in spec})

    def transform(self) -> Callable:
        """The torchvision v2 pipeline (input: PIL image, HWC uint8 array or CHW uint8 tensor)."""
        from .data import image_transform

        return image_transform(
            size=self.size, channels=self.channels, invert=self.invert, mean=self.mean, std=self.std, center_crop=self.center_crop
        )

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def load_image(self, item: Any, index: int) -> Any:
        """A path / PIL image converted to :attr:`pil_mode`, or a uint8 array / tensor as it is."""
        from PIL import Image, UnidentifiedImageError

        if isinstance(item, (str, os.PathLike)):
            try:
                with Image.open(item) as img:
                    return img.convert(self.pil_mode)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DetectorInputError(f"cannot read image {str(item)!r} (index {index}): {exc}", [index]) from None
        if isinstance(item, Image.Image):
            return item.convert(self.pil_mode)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            if item.dtype not in (np.uint8, torch.uint8):
                raise DetectorInputError(
                    f"image array at index {index} has dtype {item.dtype}; give uint8 images, or a preprocessed float "
                    "tensor (N, C, H, W) for the whole batch",
                    [index],
                )
            return item
        raise DetectorInputError(f"unsupported image input of type {type(item).__name__} at index {index}", [index])

    def batches(self, inputs: Any, task: str, batch_size: int) -> ScoringBatches:
        """Image paths / PIL images / uint8 arrays (HW or HWC) / uint8 CHW tensors, or a preprocessed float tensor
        ``(N, C, H, W)`` -> float32 ``pixel_values`` batches (images are read and transformed lazily)."""
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            if inputs.dim() != 4:
                raise DetectorInputError(f"a preprocessed image tensor must be (N, C, H, W), got shape {tuple(inputs.shape)}")
            n = len(inputs)

            def make_batches() -> Iterator:
                for s in range(0, n, batch_size):
                    yield {"pixel_values": inputs[s : s + batch_size].float()}, np.arange(s, min(s + batch_size, n))

        else:
            if isinstance(inputs, (str, os.PathLike)):
                raise TypeError("give a list of image paths (OODDetector.score does not list folders; see oe_common.deployment.cli.list_images)")
            items = list(inputs)
            n = len(items)
            transform = self.transform()

            def make_batches() -> Iterator:
                for s in range(0, n, batch_size):
                    tensors = [transform(self.load_image(item, s + k)) for k, item in enumerate(items[s : s + batch_size])]
                    shapes = {tuple(t.shape) for t in tensors}
                    if len(shapes) > 1:
                        raise DetectorInputError(
                            f"images {s}..{s + len(tensors) - 1} have different shapes after preprocessing {sorted(shapes)}; "
                            "set ImagePreprocessing(size=...)"
                        )
                    yield {"pixel_values": torch.stack(tensors).float()}, np.arange(s, s + len(tensors))

        return ScoringBatches(n, math.ceil(n / batch_size), make_batches())


register_preprocessing(ImagePreprocessing)
