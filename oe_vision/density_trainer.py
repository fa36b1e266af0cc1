"""Outlier Exposure for density models (PixelCNN++, paper Sec. 4.3 / Table 5) as an ``OETrainer`` subclass.

Details: docs/modules.md, section ``oe_vision.density_trainer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from oe_common.maths.losses import density_oe_loss
from oe_common.training.trainer import OETrainer, OETrainingArguments, read_checkpoint_json

__all__ = [
    "DENSITY_SCORE_NAMES",
    "MARGIN_COUNTS_NAME",
    "DensityOETrainingArguments",
    "DensityOETrainer",
    "density_collate",
    "to_uint8_pixels",
]

#: Scores of :meth:`DensityOETrainer.compute_scores`: bits per subpixel (the paper's) and nats per image.
DENSITY_SCORE_NAMES = ("bits_per_dim", "nll")
#: File in every checkpoint folder with the run's margin counts so far (read when resuming).
MARGIN_COUNTS_NAME = "oe_margin_counts.json"


def to_uint8_pixels(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images unchanged; floats in ``[0, 1]`` -> ``round(255 x)`` as ``uint8`` (values outside are clamped).

    Resized / synthetic images are thereby snapped to the 256 levels the discretized likelihood is defined on.
    """
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {images.dtype}")
    return torch.round(images.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def density_collate(batch: Sequence[Any]) -> dict[str, torch.Tensor]:
    """``[(image, label), ...]`` (image ``uint8`` or ``[0, 1]`` float, ``(C, H, W)``) or ``[{"pixel_values": ...}]``
    -> ``{"pixel_values": uint8 (B, C, H, W), "labels": (B,)}`` (labels ``-1`` when the examples have none)."""
    if not batch:
        raise ValueError("density_collate got an empty batch")
    if isinstance(batch[0], Mapping):
        pixels = [b["pixel_values"] for b in batch]
        labels = [int(b.get("labels", b.get("label", -1))) for b in batch]
    else:
        pixels, labels = zip(*((b[0], b[1]) for b in batch), strict=True)
    images = torch.stack([torch.as_tensor(p) for p in pixels])
    if images.dim() != 4:
        raise ValueError(f"images must be (C, H, W) each, got a stack of shape {tuple(images.shape)}")
    return {"pixel_values": to_uint8_pixels(images), "labels": torch.as_tensor(labels, dtype=torch.int64)}


@dataclass
class DensityOETrainingArguments(OETrainingArguments):
    """``OETrainingArguments`` for density-model OE. Differences: ``oe_lambda`` defaults to 1 (the paper adds the margin
    term to the likelihood with equal weight), and ``oe_margin_per_subpixel`` (``m``, paper: 1 nat per subpixel).
    ``oe_batch_ratio`` stays 1 (equal in / outlier batch sizes, the paper's pairing). ``oe_loss`` is not used."""

    oe_lambda: float = field(default=1.0, metadata={"help": "Weight of the margin term (paper: 1, likelihood and margin summed)."})
    oe_margin_per_subpixel: float = field(default=1.0, metadata={"help": "Margin m in nats per subpixel; the margin is m * D nats per image."})

    def __post_init__(self):
        super().__post_init__()
        m = self.oe_margin_per_subpixel
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
            raise ValueError(f"oe_margin_per_subpixel must be a finite number >= 0, got {m!r}")


class DensityOETrainer(OETrainer):
    """``OETrainer`` for models whose forward returns a per-image ``nll`` (nats): PixelCNN++ (``PixelCNNPPModel``).

    Without ``outlier_dataset`` it is plain maximum-likelihood training (the model's ``loss``, mean nats per
    subpixel) plus :meth:`compute_scores` with the density scores. With outliers, the loss of docs/modules.md.
    ``args`` must then be :class:`DensityOETrainingArguments`. Use ``data_collator=density_collate`` with image
    datasets of ``(image, label)`` pairs.

    Training logs get ``loss_in`` (nats per subpixel), ``loss_oe`` (margin term per subpixel, before ``oe_lambda``) and
    ``oe_margin_active`` (fraction of pairs whose margin is not met yet); :attr:`margin_active_fraction` over the run.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._margin_interval: torch.Tensor | None = None  # [active pairs, pairs] since the last log
        self._margin_total: torch.Tensor | None = None  # the same over the whole run (this process)
        if self.outlier_dataset is not None and not isinstance(self.args, DensityOETrainingArguments):
            raise TypeError(
                f"DensityOETrainer with an outlier_dataset needs DensityOETrainingArguments (margin, oe_lambda=1 default), "
                f"got {type(self.args).__name__}"
            )

    # ---- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _pixels(batch: Mapping[str, Any], what: str) -> torch.Tensor:
        x = batch.get("pixel_values") if isinstance(batch, Mapping) else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"the {what} batch needs 'pixel_values' of shape (B, C, H, W); got keys {sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__}")
        return x

    @staticmethod
    def _model_scale(x: torch.Tensor) -> torch.Tensor:
        """uint8 -> the model's float scale ``[-1, 1]`` (so that uint8 and float batches can be concatenated)."""
        return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x

    @staticmethod
    def _nll(outputs: Any) -> torch.Tensor:
        nll = outputs.get("nll") if isinstance(outputs, Mapping) else None
        if not isinstance(nll, torch.Tensor) or nll.dim() != 1:
            raise TypeError("the model must return a per-image 'nll' (B,) in nats (e.g. PixelCNNPPModel with return_loss=True)")
        return nll

    @property
    def margin_per_subpixel(self) -> float:
        return float(getattr(self.args, "oe_margin_per_subpixel", 1.0))

    def density_nll_pair(self, model: nn.Module, x_in: torch.Tensor, x_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image nll (nats) of ``x_in`` ``(B,)`` and ``x_out`` ``(B',)``: one forward over both or two (``oe_concat_forward``)."""
        if self.args.oe_concat_forward:
            same = x_in.dtype == x_out.dtype
            joint = torch.cat([x_in, x_out] if same else [self._model_scale(x_in), self._model_scale(x_out)])
            nll = self._nll(model(pixel_values=joint))
            return nll[: len(x_in)], nll[len(x_in) :]
        return self._nll(model(pixel_values=x_in)), self._nll(model(pixel_values=x_out))

    # ---- the loss ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Likelihood loss (the model's) without outliers or in evaluation; with outliers while training, likelihood +
        ``oe_lambda`` * margin term, both per subpixel (docs/modules.md)."""
        if self.outlier_dataset is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        x_in = self._pixels(inputs, "in-distribution")
        x_out = self._pixels(self.next_outlier_batch(), "outlier")
        if x_in.shape[1:] != x_out.shape[1:]:
            raise ValueError(
                f"in-distribution images {tuple(x_in.shape[1:])} and outliers {tuple(x_out.shape[1:])} differ in shape: the "
                "margin compares per-image nll, so both must have the same number of subpixels (resize the outliers)"
            )
        x_out = x_out[: len(x_in)]  # extra outliers would not enter the loss: skip their forward pass
        nll_in, nll_out = self.density_nll_pair(model, x_in, x_out)
        num_subpixels = int(x_in[0].numel())
        loss, loss_in, loss_oe = density_oe_loss(nll_in, nll_out, num_subpixels, self.args.oe_lambda, self.margin_per_subpixel)

        self.record_loss_terms(loss_in, loss_oe)
        n = len(nll_out)
        active = (self.margin_per_subpixel * num_subpixels + nll_in[:n].detach() - nll_out.detach() > 0).float().sum()
        counts = torch.stack([active, torch.full_like(active, n)])
        self._margin_interval = counts if self._margin_interval is None else self._margin_interval + counts
        self._margin_total = counts if self._margin_total is None else self._margin_total + counts
        if return_outputs:
            outputs = {"loss": loss_in, "nll": nll_in, "bits_per_dim": nll_in / (num_subpixels * math.log(2.0))}
            return loss, outputs
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``oe_margin_active``: the fraction of (in, outlier) pairs whose margin was NOT yet met (the pairs that
        get a gradient from the margin term) since the last log, over all processes."""
        if "loss" in logs and self._margin_interval is not None:
            totals = self.accelerator.gather(self._margin_interval.unsqueeze(0)).reshape(-1, 2).sum(0)
            self._margin_interval = None
            if totals[1] > 0:
                logs["oe_margin_active"] = float(totals[0] / totals[1])
        super().log(logs, start_time)

    @property
    def margin_active_fraction(self) -> float | None:
        """Fraction of this process's (in, outlier) training pairs with an active margin term over the whole run
        (``None`` before any OE step). Near 0: the outliers are already ``m`` nats per subpixel less likely, the
        margin term does nothing and OE fine-tuning is plain likelihood training."""
        if self._margin_total is None or self._margin_total[1] == 0:
            return None
        return float(self._margin_total[0] / self._margin_total[1])

    # ---- checkpoints: the margin counts ----------------------------------------------------------------------
    def checkpoint_states(self) -> dict[str, Any]:
        """``OETrainer``'s plus :data:`MARGIN_COUNTS_NAME` (``[active pairs, pairs]`` so far, main process), so that a
        resumed run's :attr:`margin_active_fraction` covers every step, not only those after the resume."""
        states = super().checkpoint_states()
        if self._margin_total is not None:
            states[MARGIN_COUNTS_NAME] = {"active_pairs": float(self._margin_total[0]), "pairs": float(self._margin_total[1])}
        return states

    def load_checkpoint_states(self, checkpoint: str) -> None:
        """``OETrainer``'s; the margin counts also continue from the checkpoint (other processes than the main one
        restart theirs: only the main process saves them)."""
        super().load_checkpoint_states(checkpoint)
        saved = read_checkpoint_json(checkpoint, MARGIN_COUNTS_NAME)
        if saved is not None:
            self._margin_total = torch.tensor([saved["active_pairs"], saved["pairs"]], device=self.args.device)

    # ---- anomaly scores ------------------------------------------------------------------------------------
    score_names = DENSITY_SCORE_NAMES
    default_score = "bits_per_dim"

    def score_batch_many(self, model: nn.Module, batch: Mapping[str, Any], scores: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{name: (B,)}`` anomaly scores of one prepared batch from one forward pass: ``"bits_per_dim"`` =
        ``nll / (D ln 2)`` and/or ``"nll"`` (nats). :func:`oe_common.training.evaluation.compute_scores` batches, gathers and
        orders them."""
        x = self._pixels(batch, "scored")
        nll = self._nll(model(pixel_values=x)).float()
        by_name = {"nll": nll, "bits_per_dim": nll / (x[0].numel() * math.log(2.0))}
        return {name: by_name[name] for name in scores}
