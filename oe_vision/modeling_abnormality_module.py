"""The abnormality module of the MSP baseline paper (Hendrycks & Gimpel, ICLR 2017, Sec. 4, Table 11), as a HF model.

A trained image classifier ``f`` (kept frozen), an auxiliary decoder ``g`` that reconstructs the input from one of
the classifier's hidden layers, and a small head ``h`` that reads what the two produce::

    z      = f(x)                         classifier logits            (B, K)
    u      = flatten(hidden_states[l])    classifier features, layer l (B, D)   (default l = -2)
    x_hat  = g(u)                         reconstruction               (B, C, H, W)
    r      = flatten((x - x_hat) ** 2)    per-pixel squared residual   (B, C*H*W)
    a      = h([z, r, u])                 abnormality logit            (B,)

``sigmoid(a)`` is the probability that ``x`` is abnormal: the anomaly score ``"abnormality"`` of
:mod:`oe_common.maths.scores` (higher = more anomalous). Decoder: ``Linear(D, b) -> GELU -> [Linear -> GELU]* ->
Linear(., C*H*W)`` (``decoder_sizes = (b, ...)``); head: ``Linear(K + C*H*W + D, n1) -> GELU -> ... -> Linear(., 1)``.

Training (:mod:`oe_vision.abnormality_trainer`) runs in two parts, each with every other part frozen
(``requires_grad=False`` and kept in eval mode, so dropout and batch-norm statistics do not move either):
:meth:`AbnormalityModuleForImageClassification.set_trainable_part` ``("decoder")`` then ``("head")``. The
classifier is never trained here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .modeling_mnist_convnet import torch_default_init_

__all__ = [
    "AbnormalityModuleConfig",
    "AbnormalityModuleOutput",
    "AbnormalityModuleForImageClassification",
    "abnormality_head_loss",
    "reconstruction_loss",
    "TRAINABLE_PARTS",
]

#: Parts that :meth:`AbnormalityModuleForImageClassification.set_trainable_part` can unfreeze (``None``: none).
TRAINABLE_PARTS = ("decoder", "head")


def reconstruction_loss(reconstruction: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error ``mean((x - x_hat)^2)`` over every pixel of the batch (float32 scalar)."""
    return F.mse_loss(reconstruction.float(), pixel_values.float())


def abnormality_head_loss(abnormality_logits: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the head: ``mean_i [softplus(a_i) - y_i * a_i]`` (``y = 1``: abnormal), float32."""
    return F.binary_cross_entropy_with_logits(abnormality_logits.float().reshape(-1), abnormal.float().reshape(-1))


class AbnormalityModuleConfig(PretrainedConfig):
    """Configuration of :class:`AbnormalityModuleForImageClassification`.

    Args:
        classifier_config: the wrapped classifier's config as a dict (``PretrainedConfig.to_dict()``; its
            ``model_type`` must be registered with ``AutoModelForImageClassification``), or a config.
        feature_layer: index into the classifier's ``hidden_states`` that the decoder and head read (-2: for the MNIST
            ConvNet, the 320-d pooled features of the second convolution; the notebook's MLP read its second of
            three hidden layers, also one below the penultimate).
        feature_size: size of that layer, flattened (320 for the MNIST ConvNet).
        decoder_sizes: widths of the decoder's hidden layers (the first is the bottleneck).
        head_sizes: widths of the head's hidden layers.
    """

    model_type = "oe_abnormality_module"

    def __init__(
        self,
        classifier_config: dict[str, Any] | PretrainedConfig | None = None,
        feature_layer: int = -2,
        feature_size: int = 320,
        decoder_sizes: tuple[int, ...] | list[int] = (128, 256, 256),
        head_sizes: tuple[int, ...] | list[int] = (512, 128),
        **kwargs,
    ):
        if isinstance(classifier_config, PretrainedConfig):
            classifier_config = classifier_config.to_dict()
        self.classifier_config = dict(classifier_config or {"model_type": "oe_mnist_convnet", "num_labels": 10})
        if "model_type" not in self.classifier_config:
            raise ValueError("classifier_config needs a 'model_type' (a registered image classifier)")
        self.feature_layer = int(feature_layer)
        self.feature_size = int(feature_size)
        self.decoder_sizes = [int(s) for s in decoder_sizes]
        self.head_sizes = [int(s) for s in head_sizes]
        if self.feature_size < 1 or not self.decoder_sizes or min(self.decoder_sizes + self.head_sizes, default=1) < 1:
            raise ValueError("feature_size and every decoder / head width must be >= 1 (and decoder_sizes non-empty)")
        kwargs.setdefault("num_labels", int(self.classifier_config.get("num_labels") or len(self.classifier_config.get("id2label") or {}) or 2))
        for key in ("id2label", "label2id"):
            kwargs.setdefault(key, self.classifier_config.get(key))
        if kwargs.get("id2label") is None:
            kwargs.pop("id2label")
            kwargs.pop("label2id", None)
        super().__init__(**kwargs)

    def build_classifier_config(self) -> PretrainedConfig:
        """The wrapped classifier's config object."""
        values = dict(self.classifier_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)


@dataclass
class AbnormalityModuleOutput(ModelOutput):
    """``loss`` (head BCE, with ``abnormal_labels``), ``logits`` ``(B, K)`` of the classifier, ``abnormality_logits``
    ``(B,)`` (``sigmoid`` = probability of abnormal) and ``reconstruction`` ``(B, C, H, W)``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    abnormality_logits: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


def _mlp(sizes: list[int]) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> GELU -> ... -> Linear(sizes[-2], sizes[-1])`` (no activation at the end)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class AbnormalityModulePreTrainedModel(PreTrainedModel):
    config_class = AbnormalityModuleConfig
    config: AbnormalityModuleConfig
    base_model_prefix = "abnormality_module"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # decoder and head: torch's defaults; the wrapped classifier's modules were initialised by its own post_init
        if not any(module is m for m in self.classifier.modules()):
            torch_default_init_(module)


class AbnormalityModuleForImageClassification(AbnormalityModulePreTrainedModel):
    """Classifier + decoder + abnormality head; ``forward(pixel_values, abnormal_labels=None)``.

    ``logits`` are the classifier's, so every logit score (``msp``, ...) still works on this model; the
    ``abnormality`` score reads ``abnormality_logits``. ``from_classifier`` wraps a trained classifier.
    """

    def __init__(self, config: AbnormalityModuleConfig):
        super().__init__(config)
        classifier_config = config.build_classifier_config()
        self.classifier = AutoModelForImageClassification.from_config(classifier_config)
        channels = int(getattr(classifier_config, "num_channels", 1))
        side = int(getattr(classifier_config, "image_size", 28))
        self.image_shape = (channels, side, side)
        pixels = channels * side * side
        num_labels = int(classifier_config.num_labels)
        self.decoder = _mlp([config.feature_size, *config.decoder_sizes, pixels])
        self.head = _mlp([num_labels + pixels + config.feature_size, *config.head_sizes, 1])
        self.trainable_part: str | None = None
        self.post_init()
        self.set_trainable_part(None)

    @classmethod
    def from_classifier(cls, classifier: PreTrainedModel, **config_kwargs: Any) -> "AbnormalityModuleForImageClassification":
        """A new module around a COPY of ``classifier``'s weights (the given model is left untouched)."""
        module = cls(AbnormalityModuleConfig(classifier_config=classifier.config.to_dict(), **config_kwargs))
        module.classifier.load_state_dict(classifier.state_dict())
        return module.to(next(classifier.parameters()).device)

    def set_trainable_part(self, part: str | None) -> None:
        """Unfreeze ``part`` (``"decoder"`` or ``"head"``) and freeze everything else; ``None`` freezes all.

        Frozen parts get ``requires_grad=False`` and stay in eval mode under ``model.train()``.
        """
        if part is not None and part not in TRAINABLE_PARTS:
            raise ValueError(f"part must be one of {TRAINABLE_PARTS} or None, got {part!r}")
        self.trainable_part = part
        for name, module in (("classifier", self.classifier), ("decoder", self.decoder), ("head", self.head)):
            module.requires_grad_(name == part)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AbnormalityModuleForImageClassification":
        super().train(mode)
        for name, module in (("classifier", self.classifier), ("decoder", self.decoder), ("head", self.head)):
            if name != getattr(self, "trainable_part", None):
                module.eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        abnormal_labels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> AbnormalityModuleOutput | tuple:
        """``pixel_values`` ``(B, C, H, W)``; ``abnormal_labels`` ``(B,)`` (1 = abnormal) gives ``loss`` =
        :func:`abnormality_head_loss`. ``labels`` (class ids) are accepted and ignored (the classifier is frozen)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        with torch.no_grad():  # the classifier is never trained here
            out = self.classifier(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        logits = out.logits
        features = out.hidden_states[self.config.feature_layer].flatten(1)
        if features.shape[1] != self.config.feature_size:
            raise ValueError(f"classifier hidden_states[{self.config.feature_layer}] has {features.shape[1]} features, "
                             f"config.feature_size is {self.config.feature_size}")
        reconstruction = self.decoder(features).reshape(-1, *self.image_shape)
        residual = (pixel_values - reconstruction).pow(2).flatten(1)
        abnormality_logits = self.head(torch.cat([logits, residual, features], dim=1)).squeeze(-1)
        loss = abnormality_head_loss(abnormality_logits, abnormal_labels) if abnormal_labels is not None else None
        output = AbnormalityModuleOutput(loss=loss, logits=logits, abnormality_logits=abnormality_logits, reconstruction=reconstruction)
        return output if return_dict else output.to_tuple()
