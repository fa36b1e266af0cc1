"""Training the MSP paper's abnormality module (:mod:`oe_vision.modeling_abnormality_module`) with :class:`OETrainer`.

Two parts, each a stage of the staged runner, each with every other part frozen:

* ``decoder``: ``loss = mean((x - x_hat)^2)`` on clean in-distribution training images (no outliers).
* ``head``: an OE-shaped stage: the in-distribution batch is clean training images (target 0), the "outlier" batch
  is noised training images from :class:`NoisedImageDataset` (target 1)::

      loss = mean_in softplus(a) + lambda * mean_noised softplus(-a)

  (binary cross-entropy with logits; ``lambda = 2`` with twice as many noised as clean images per step weighs every
  image alike, as the authors' notebook's single mean over a 1:2 clean:noised batch does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from oe_common.training.trainer import OETrainer

from .modeling_abnormality_module import AbnormalityModuleForImageClassification, abnormality_head_loss, reconstruction_loss
from .synthetic import derive_seed, gaussian_blur

__all__ = ["NOISE_KINDS", "corrupt", "NoisedImageDataset", "AbnormalityModuleTrainer"]

#: Corruptions of :func:`corrupt` and how often :class:`NoisedImageDataset` draws each.
NOISE_KINDS = {"additive_gaussian": 0.5, "blur": 0.25, "rotate": 0.25}


def corrupt(x: torch.Tensor, kind: str, label: int, generator: torch.Generator) -> torch.Tensor:
    """One noised copy of a clean ``(C, H, W)`` image in [0, 1] (the head's training anomalies).

    * ``additive_gaussian``: ``x + N(0, s^2)`` per pixel, ``s ~ U(0.9, 1.2)``, not clipped;
    * ``blur``: Gaussian blur with ``sigma ~ 5 * U(0.9, 1.0)`` pixels (:func:`oe_vision.synthetic.gaussian_blur`);
    * ``rotate``: a 90 or 270 degree rotation; for class 0 (a zero looks like a zero rotated) additive
      ``N(0, 1)`` noise instead.
    The settings are the authors' notebook's.
    """
    u = float(torch.rand((), generator=generator))
    if kind == "rotate" and label == 0:
        kind, u = "additive_gaussian", None
    if kind == "additive_gaussian":
        std = 1.0 if u is None else 0.9 + 0.3 * u
        return x + std * torch.randn(x.shape, generator=generator)
    if kind == "blur":
        return gaussian_blur(x, sigma=5.0 * (0.9 + 0.1 * u))
    if kind == "rotate":
        return torch.rot90(x, k=1 if u < 0.5 else 3, dims=(-2, -1))
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(NOISE_KINDS)}")


class NoisedImageDataset(Dataset):
    """Item ``i``: a noised copy of ``base[i]`` and the label :data:`oe_vision.data.OOD_LABEL` (-1).

    The corruption (kind drawn with the probabilities of :data:`NOISE_KINDS`, then its parameters) is a function of
    ``(seed, i)`` alone: the same item is the same image in every epoch and process.
    """

    def __init__(self, base: Dataset, seed: int = 0, name: str = "noised"):
        if len(base) == 0:
            raise ValueError("NoisedImageDataset needs a non-empty base dataset")
        self.base, self.seed, self.name = base, int(seed), name
        self._kinds = list(NOISE_KINDS)
        self._cumulative = torch.tensor(list(NOISE_KINDS.values())).cumsum(0)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.base[index]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, 0xAB, int(index)))
        kind = self._kinds[int(torch.searchsorted(self._cumulative, torch.rand((), generator=gen) * self._cumulative[-1], right=True))]
        return corrupt(x, kind, int(label), gen), -1


class AbnormalityModuleTrainer(OETrainer):
    """:class:`OETrainer` for one part of an :class:`AbnormalityModuleForImageClassification` (``part``:
    ``"decoder"`` or ``"head"``; the trainer unfreezes that part and freezes the rest, see the module docstring).

    ``decoder``: give no ``outlier_dataset``; the loss is :func:`reconstruction_loss`. ``head``: give the noised
    images as ``outlier_dataset``; ``oe_lambda`` weighs their term. Build the optimizer over the trainable
    parameters only (or let the Trainer build it: frozen parameters get no gradient).
    """

    def __init__(self, *args: Any, part: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, AbnormalityModuleForImageClassification):
            raise TypeError(f"AbnormalityModuleTrainer trains an AbnormalityModuleForImageClassification, got {type(model).__name__}")
        if part == "head" and self.outlier_dataset is None:
            raise ValueError("the head part needs the noised images as outlier_dataset (target 1 against clean images' 0)")
        if part == "decoder" and self.outlier_dataset is not None:
            raise ValueError("the decoder part trains on clean images only: give no outlier_dataset")
        model.set_trainable_part(part)
        self.part = part

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``decoder``: :func:`reconstruction_loss` of the clean batch; ``head``: the OE-shaped loss of
        :class:`OETrainer` with :meth:`in_distribution_loss` and :meth:`oe_term` below."""
        if self.part != "decoder":
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        outputs = model(**self._model_inputs(inputs))
        loss = reconstruction_loss(outputs["reconstruction"], inputs["pixel_values"])
        return (loss, outputs) if return_outputs else loss

    def logits_and_mask(self, outputs: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, None]:
        """The head's abnormality logits as ``(B, 1)`` (not the class logits), no mask."""
        return outputs["abnormality_logits"].reshape(-1, 1), None

    def in_distribution_loss(self, model: nn.Module, outputs: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
        """``mean_in softplus(a)``: the head's BCE with target 0 (clean) on the in-distribution batch."""
        logits = outputs["logits"] if outputs.get("abnormality_logits") is None else outputs["abnormality_logits"]
        return abnormality_head_loss(logits, torch.zeros(logits.shape[0], device=logits.device))

    def oe_term(self, out_logits: torch.Tensor, out_mask: torch.Tensor | None, in_logits: torch.Tensor, in_mask: torch.Tensor | None) -> torch.Tensor:
        """``mean_noised softplus(-a)``: the head's BCE with target 1 (abnormal) on the noised batch."""
        return abnormality_head_loss(out_logits, torch.ones(out_logits.shape[0], device=out_logits.device))
