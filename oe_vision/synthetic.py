"""Synthetic test anomalies of the OE paper (Sec. 5, "Vision"), deterministic and lazily indexable.

Details: docs/modules.md, section ``oe_vision.synthetic``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

__all__ = [
    "KINDS",
    "derive_seed",
    "generate",
    "blur_kernel_size",
    "gaussian_blur",
    "SyntheticImageDataset",
]

_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys with splitmix64 (deterministic across runs and platforms)."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (int(key) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def _check(n: int, shape: Sequence[int]) -> tuple[int, ...]:
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes (e.g. (1, 28, 28)), got {shape}")
    return shape


def _per_example(kind: str, indices: Sequence[int], seed: int, shape: tuple[int, ...], draw: Callable) -> torch.Tensor:
    """Stack ``draw(shape, generator)`` for every index, each with its own generator seeded from (seed, kind, index)."""
    stream = _STREAMS[kind]
    out = torch.empty((len(indices), *shape), dtype=torch.float32)
    for row, index in enumerate(indices):
        gen = torch.Generator().manual_seed(derive_seed(seed, stream, index))
        out[row] = draw(shape, gen)
    return out


def _gaussian(indices, seed, shape, mean: float = 0.5, std: float = 0.5, low: float | None = 0.0, high: float | None = 1.0):
    x = _per_example("gaussian", indices, seed, shape, lambda s, g: torch.randn(s, generator=g))
    x = x * std + mean
    return x.clamp(low, high) if (low is not None or high is not None) else x


def _uniform(indices, seed, shape, low: float = 0.0, high: float = 1.0):
    if not low < high:
        raise ValueError(f"uniform noise needs low < high, got low={low}, high={high}")
    return _per_example("uniform", indices, seed, shape, lambda s, g: torch.rand(s, generator=g)) * (high - low) + low


def _bernoulli(indices, seed, shape, p: float = 0.5):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return _per_example("bernoulli", indices, seed, shape, lambda s, g: (torch.rand(s, generator=g) < p).float())


def _rademacher(indices, seed, shape):
    return _per_example("rademacher", indices, seed, shape, lambda s, g: (torch.rand(s, generator=g) < 0.5).float() * 2 - 1)


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size ``2 * ceil(3 * sigma) + 1`` used by :func:`blobs` (11 for sigma = 1.5)."""
    return 2 * math.ceil(3 * sigma) + 1


def _gaussian_kernel1d(sigma: float, size: int) -> torch.Tensor:
    # the kernel of torchvision's gaussian_blur: exp(-x^2 / (2 sigma^2)) at x = -r..r, normalised to sum 1
    x = torch.linspace(-(size // 2), size // 2, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Per-channel Gaussian blur of ``(..., H, W)`` images, reflect padding: the filter of torchvision's
    ``gaussian_blur`` (same kernel and padding), applied separably as sums of shifted slices.

    Separable sums of shifted slices instead of torchvision's 2-D ``conv2d`` (and ``F.pad``, advanced indexing): on
    small images those use the intra-op thread pool and took tens of milliseconds per image on a busy 2-core machine;
    this takes well under one.
    """
    k = blur_kernel_size(sigma) if kernel_size is None else int(kernel_size)
    if k % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {k}")
    r = k // 2
    weights = _gaussian_kernel1d(float(sigma), k).tolist()
    shape = x.shape
    x = x.reshape(-1, 1, *shape[-2:])
    for dim in (-1, -2):
        size = x.shape[dim]
        if r >= size:
            raise ValueError(f"kernel_size {k} is too large for images of side {size} (reflect padding needs {r} < {size})")
        # reflect padding ("dcb|abcd|cba"), as F.pad(mode="reflect") (slow on small tensors when threaded)
        padded = torch.cat([x.narrow(dim, 1, r).flip(dim), x, x.narrow(dim, size - 1 - r, r).flip(dim)], dim)
        out = padded.narrow(dim, 0, size) * weights[0]
        for j in range(1, k):
            out = out + padded.narrow(dim, j, size) * weights[j]
        x = out
    return x.reshape(shape)


def _blobs(indices, seed, shape, p: float = 0.7, sigma: float = 1.5, threshold: float = 0.75, signed: bool = False):
    if len(shape) != 3:
        raise ValueError(f"blobs need a (C, H, W) shape, got {shape}")
    x = _per_example("blobs", indices, seed, shape, lambda s, g: (torch.rand(s, generator=g) < p).float())
    if len(indices):
        x = gaussian_blur(x, sigma)
    x = torch.where(x < threshold, torch.zeros_like(x), x)
    return x * 2 - 1 if signed else x


_IMPLS = {"gaussian": _gaussian, "uniform": _uniform, "bernoulli": _bernoulli, "rademacher": _rademacher, "blobs": _blobs}
_STREAMS = {"gaussian": 1, "bernoulli": 2, "rademacher": 3, "blobs": 4, "uniform": 5}
#: Names accepted by :func:`generate` and :class:`SyntheticImageDataset`.
KINDS = tuple(_IMPLS)


def generate(kind: str, n: int, seed: int = 0, shape: Sequence[int] = (1, 28, 28), **params) -> torch.Tensor:
    """``(n, *shape)`` float32 anomalies of ``kind`` (one of :data:`KINDS`); ``params`` go to that generator:

    * ``gaussian``: ``clip(N(mean, std^2), low, high)`` (``mean=0.5, std=0.5, low=0, high=1``, the MNIST set; CIFAR:
      ``mean=0, low=-1, high=1``; ``low=high=None``: unclipped);
    * ``uniform``: independent ``U[low, high)`` pixels (``low=0, high=1``, the MSP paper's "Uniform");
    * ``bernoulli``: independent Bernoulli(``p=0.5``) pixels in ``{0, 1}``;
    * ``rademacher``: independent pixels in ``{-1, +1}``;
    * ``blobs``: Bernoulli(``p=0.7``) image, per-channel Gaussian blur (``sigma=1.5``), values below
      ``threshold=0.75`` set to 0; ``signed=True`` maps the result to ``2x - 1`` (the OE CIFAR code's version).
    """
    if kind not in _IMPLS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known: {', '.join(KINDS)}")
    shape = _check(n, shape)
    return _IMPLS[kind](range(int(n)), int(seed), shape, **params)


class SyntheticImageDataset(Dataset):
    """``n`` synthetic anomalies generated on demand; item ``i`` is ``(generate(kind, n, seed, shape)[i], label)``.

    Args:
        kind: one of :data:`KINDS`.
        n: number of examples.
        seed: base seed.
        shape: ``(C, H, W)``.
        label: label returned with every example (default -1, "no class").
        transform: optional callable applied to each ``(C, H, W)`` tensor.
        **params: generator parameters (e.g. ``mean=0, low=-1, high=1`` or ``signed=True``).
    """

    def __init__(
        self,
        kind: str,
        n: int,
        seed: int = 0,
        shape: Sequence[int] = (1, 28, 28),
        label: int = -1,
        transform: Callable | None = None,
        name: str | None = None,
        **params,
    ):
        generate(kind, 0, seed, shape, **params)  # validate kind, shape and params now, not in a worker
        self.kind, self.n, self.seed, self.shape = kind, int(n), int(seed), _check(n, shape)
        self.label, self.transform, self.params = int(label), transform, dict(params)
        self.name = name or kind

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} examples")
        x = _IMPLS[self.kind]([index], self.seed, self.shape, **self.params)[0]
        return (self.transform(x) if self.transform is not None else x), self.label

    def materialize(self) -> torch.Tensor:
        """All ``n`` examples as one ``(n, *shape)`` tensor (before ``transform``)."""
        return generate(self.kind, self.n, self.seed, self.shape, **self.params)

    def __repr__(self) -> str:
        return f"SyntheticImageDataset(kind={self.kind!r}, n={self.n}, seed={self.seed}, shape={self.shape}, params={self.params})"
