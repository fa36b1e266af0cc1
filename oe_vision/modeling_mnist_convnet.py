"""The small MNIST ConvNet of the OE paper / code (the classic PyTorch MNIST example network), as a HF model.

``conv5 1->10, maxpool2, ReLU; conv5 10->20, Dropout2d(0.5), maxpool2, ReLU; flatten (320 for 28x28);
FC 320->50, ReLU, dropout(0.5); FC 50->10``. Input: ``(B, 1, 28, 28)`` in ``[0, 1]`` (no standardisation, as in the
OE MNIST code). 21,840 parameters for 10 classes. Initialisation: PyTorch's defaults (what the reference code used):
weights Kaiming-uniform with ``a = sqrt(5)``, biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

``confidence_branch=True`` adds DeVries & Taylor's confidence head ``confidence: Linear(50, 1)`` on the same
(post-dropout) 50-d features the classifier reads; see :mod:`oe_vision.confidence`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .confidence import (
    DEFAULT_CONFIDENCE_BUDGET,
    DEFAULT_CONFIDENCE_LAMBDA,
    ConfidenceImageClassifierOutput,
    classification_outputs,
    label_kwargs,
)

try:  # transformers >= 5
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    init = torch.nn.init

__all__ = ["MnistConvNetConfig", "MnistConvNetPreTrainedModel", "MnistConvNetForImageClassification"]


@torch.no_grad()
def torch_default_init_(module: nn.Module) -> None:
    """torch's ``reset_parameters()`` of a ``Conv2d`` / ``Linear`` (other modules: nothing), written with init
    functions that skip already-loaded tensors: weight Kaiming-uniform ``a = sqrt(5)``, bias ``U(+-1/sqrt(fan_in))``."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(module.bias, -bound, bound)


class MnistConvNetConfig(PretrainedConfig):
    """Configuration of :class:`MnistConvNetForImageClassification`.

    Args:
        num_labels: classes (default 10).
        num_channels: input channels (1).
        image_size: input side (28); the flattened size is ``20 * s * s`` with ``s = ((image_size - 4) // 2 - 4) // 2``.
        conv_channels: output channels of the two convolutions (10, 20).
        kernel_size: convolution kernel (5).
        hidden_size: width of the first FC layer (50).
        conv_dropout: ``Dropout2d`` probability after the second convolution (0.5).
        dropout: dropout probability after the first FC layer (0.5).
        confidence_branch, confidence_lambda, confidence_budget, confidence_adapt_lambda: as in
            :class:`oe_vision.modeling_wide_resnet.WideResNetConfig`.
    """

    model_type = "oe_mnist_convnet"

    def __init__(
        self,
        num_labels: int | None = None,
        num_channels: int = 1,
        image_size: int = 28,
        conv_channels: tuple[int, int] | list[int] = (10, 20),
        kernel_size: int = 5,
        hidden_size: int = 50,
        conv_dropout: float = 0.5,
        dropout: float = 0.5,
        confidence_branch: bool = False,
        confidence_lambda: float = DEFAULT_CONFIDENCE_LAMBDA,
        confidence_budget: float = DEFAULT_CONFIDENCE_BUDGET,
        confidence_adapt_lambda: bool = True,
        **kwargs,
    ):
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.conv_channels = [int(c) for c in conv_channels]
        self.kernel_size = int(kernel_size)
        self.hidden_size = int(hidden_size)
        self.conv_dropout = float(conv_dropout)
        self.dropout = float(dropout)
        self.confidence_branch = bool(confidence_branch)
        self.confidence_lambda = float(confidence_lambda)
        self.confidence_budget = float(confidence_budget)
        self.confidence_adapt_lambda = bool(confidence_adapt_lambda)
        if len(self.conv_channels) != 2:
            raise ValueError(f"conv_channels must have two entries, got {self.conv_channels}")
        if self.feature_side < 1:
            raise ValueError(f"image_size {image_size} is too small for two conv{kernel_size} + maxpool2 stages")
        super().__init__(**label_kwargs(num_labels, kwargs))

    @property
    def feature_side(self) -> int:
        """Spatial side after the two ``conv(k) -> maxpool2`` stages (4 for 28x28)."""
        side = (self.image_size - self.kernel_size + 1) // 2
        return (side - self.kernel_size + 1) // 2

    @property
    def flat_size(self) -> int:
        """Flattened feature size before the first FC layer (320 for 28x28)."""
        return self.conv_channels[1] * self.feature_side**2


class MnistConvNetPreTrainedModel(PreTrainedModel):
    config_class = MnistConvNetConfig
    config: MnistConvNetConfig
    base_model_prefix = "convnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        torch_default_init_(module)
        if getattr(module, "confidence_lambda", None) is not None:
            init.constant_(module.confidence_lambda, self.config.confidence_lambda)


class MnistConvNetForImageClassification(MnistConvNetPreTrainedModel):
    """The OE paper's MNIST ConvNet; ``forward(pixel_values, labels=None)`` like any HF image classifier.

    Module names follow the reference code: ``conv1, conv2, conv2_drop, fc1, fc2`` (+ ``confidence``).
    ``hidden_states`` (when requested): the two pooled conv feature maps and the 50-d FC features.
    """

    def __init__(self, config: MnistConvNetConfig):
        super().__init__(config)
        c1, c2 = config.conv_channels
        self.num_labels = config.num_labels
        self.conv1 = nn.Conv2d(config.num_channels, c1, kernel_size=config.kernel_size)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=config.kernel_size)
        self.conv2_drop = nn.Dropout2d(config.conv_dropout)
        self.fc1 = nn.Linear(config.flat_size, config.hidden_size)
        self.fc_drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.hidden_size, config.num_labels)
        if config.confidence_branch:
            self.confidence = nn.Linear(config.hidden_size, 1)
            self.register_buffer("confidence_lambda", torch.tensor(config.confidence_lambda, dtype=torch.float32))
        else:
            self.confidence = None
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ConfidenceImageClassifierOutput | tuple:
        """``pixel_values`` ``(B, 1, 28, 28)`` in [0, 1], ``labels`` ``(B,)`` -> logits ``(B, num_labels)``."""
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cfg = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"pixel_values must be (B, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        h1 = F.relu(F.max_pool2d(self.conv1(pixel_values), 2))
        h2 = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(h1)), 2))
        features = self.fc_drop(F.relu(self.fc1(h2.flatten(1))))
        logits = self.fc2(features)
        confidence_logits = self.confidence(features).squeeze(-1) if self.confidence is not None else None
        loss = classification_outputs(self, logits, confidence_logits, labels)
        out = ConfidenceImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=(h1, h2, features) if output_hidden_states else None,
            confidence_logits=confidence_logits,
        )
        return out if return_dict else out.to_tuple()
