"""Wide Residual Network (Zagoruyko & Komodakis 2016) as used by the Outlier Exposure code, as a HF model.

Details: docs/modules.md, section ``oe_vision.modeling_wide_resnet``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .confidence import (
    DEFAULT_CONFIDENCE_BUDGET,
    DEFAULT_CONFIDENCE_LAMBDA,
    ConfidenceImageClassifierOutput,
    classification_outputs,
    label_kwargs,
)

try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    init = torch.nn.init

__all__ = [
    "WRN_PRESETS",
    "WideResNetConfig",
    "WideResNetPreTrainedModel",
    "WideResNetModel",
    "WideResNetForImageClassification",
]

#: Named Wide ResNet settings: ``"depth-k"`` -> config kwargs.
WRN_PRESETS: dict[str, dict] = {
    "40-2": {"depth": 40, "widen_factor": 2, "dropout": 0.3},
    "40-4": {"depth": 40, "widen_factor": 4, "dropout": 0.3},
    "16-4": {"depth": 16, "widen_factor": 4, "dropout": 0.4},
}


class WideResNetConfig(PretrainedConfig):
    """Configuration of :class:`WideResNetForImageClassification`.

    Args:
        depth: total depth ``6n + 4`` (``n`` blocks per stage), e.g. 40 or 16.
        widen_factor: ``k``; stage widths are ``16k, 32k, 64k``.
        dropout: dropout probability between the two convolutions of every block.
        num_labels: number of classes (default 10; ``id2label`` / ``label2id`` as in any HF config).
        num_channels: input channels (3 for RGB, 1 for grayscale).
        image_size: nominal input side (informational: pooling is global, any size >= 4 works).
        confidence_branch: add DeVries & Taylor's confidence head.
        confidence_lambda: initial weight ``lambda_c`` of the ``-log b`` penalty (stored in the model's
            ``confidence_lambda`` buffer, which the training loss adapts).
        confidence_budget: budget ``beta`` for ``-log b``.
        confidence_adapt_lambda: update ``confidence_lambda`` after each training forward with labels.
    """

    model_type = "oe_wide_resnet"

    def __init__(
        self,
        depth: int = 40,
        widen_factor: int = 2,
        dropout: float = 0.3,
        num_labels: int | None = None,
        num_channels: int = 3,
        image_size: int = 32,
        confidence_branch: bool = False,
        confidence_lambda: float = DEFAULT_CONFIDENCE_LAMBDA,
        confidence_budget: float = DEFAULT_CONFIDENCE_BUDGET,
        confidence_adapt_lambda: bool = True,
        **kwargs,
    ):
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth = int(depth)
        self.widen_factor = int(widen_factor)
        self.dropout = float(dropout)
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.confidence_branch = bool(confidence_branch)
        self.confidence_lambda = float(confidence_lambda)
        self.confidence_budget = float(confidence_budget)
        self.confidence_adapt_lambda = bool(confidence_adapt_lambda)
        super().__init__(**label_kwargs(num_labels, kwargs))

    @property
    def widths(self) -> list[int]:
        """Channel widths ``[16, 16k, 32k, 64k]``."""
        k = self.widen_factor
        return [16, 16 * k, 32 * k, 64 * k]

    @property
    def blocks_per_stage(self) -> int:
        """``n = (depth - 4) / 6``."""
        return (self.depth - 4) // 6

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "WideResNetConfig":
        """Config for a named preset (``"40-2"``, ``"40-4"``, ``"16-4"``; a ``"wrn-"`` prefix is accepted)."""
        key = name.lower().removeprefix("wrn-").removeprefix("wrn")
        if key not in WRN_PRESETS:
            raise ValueError(f"unknown Wide ResNet preset {name!r}; known: {', '.join(WRN_PRESETS)}")
        return cls(**{**WRN_PRESETS[key], **overrides})


class WideResNetBasicBlock(nn.Module):
    """Pre-activation basic block: ``BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3`` + (projected) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv_shortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
            if in_planes != out_planes or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(pre)))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(pre)
        return shortcut + out


class WideResNetStage(nn.Module):
    """``n`` basic blocks; the first one changes width / stride (the reference code's ``NetworkBlock``)."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideResNetBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNetPreTrainedModel(PreTrainedModel):
    config_class = WideResNetConfig
    config: WideResNetConfig
    base_model_prefix = "wide_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["WideResNetBasicBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # torch's default Linear init, as in the OE code
            if module.bias is not None:
                init.zeros_(module.bias)
        if getattr(module, "confidence_lambda", None) is not None:
            init.constant_(module.confidence_lambda, self.config.confidence_lambda)


class WideResNetModel(WideResNetPreTrainedModel):
    """Wide ResNet feature extractor: returns the final BN-ReLU feature map and its global average pool."""

    def __init__(self, config: WideResNetConfig):
        super().__init__(config)
        w = config.widths
        n = config.blocks_per_stage
        self.conv1 = nn.Conv2d(config.num_channels, w[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideResNetStage(n, w[0], w[1], 1, config.dropout)
        self.block2 = WideResNetStage(n, w[1], w[2], 2, config.dropout)
        self.block3 = WideResNetStage(n, w[2], w[3], 2, config.dropout)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        """``pixel_values`` ``(B, C, H, W)`` -> ``last_hidden_state`` ``(B, 64k, H/4, W/4)``, ``pooler_output`` ``(B, 64k)``.

        ``hidden_states`` (when requested): outputs of the stem and of the three stages.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (B, {self.config.num_channels}, H, W), got shape {tuple(pixel_values.shape)}"
            )
        hidden = self.conv1(pixel_values)
        states = [hidden]
        for stage in (self.block1, self.block2, self.block3):
            hidden = stage(hidden)
            states.append(hidden)
        last = self.relu(self.bn1(hidden))
        pooled = self.pool(last).flatten(1)
        out = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last, pooler_output=pooled, hidden_states=tuple(states) if output_hidden_states else None
        )
        return out if return_dict else out.to_tuple()


class WideResNetForImageClassification(WideResNetPreTrainedModel):
    """Wide ResNet classifier (logits; cross-entropy loss when ``labels`` are given), optional confidence branch.

    With ``config.confidence_branch`` the output also carries ``confidence_logits`` ``(B,)`` and, in training mode
    with labels, the loss is DeVries & Taylor's (see :func:`oe_vision.confidence.confidence_branch_loss`), weighted by
    the ``confidence_lambda`` buffer which is adapted in place after each such forward. In eval mode the loss is
    plain cross-entropy.
    """

    def __init__(self, config: WideResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.wide_resnet = WideResNetModel(config)
        features = config.widths[-1]
        self.classifier = nn.Linear(features, config.num_labels)
        if config.confidence_branch:
            self.confidence = nn.Linear(features, 1)
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
        """``pixel_values`` ``(B, C, H, W)`` (normalised), ``labels`` ``(B,)`` -> logits ``(B, num_labels)``."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        base = self.wide_resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(base.pooler_output)
        confidence_logits = self.confidence(base.pooler_output).squeeze(-1) if self.confidence is not None else None
        loss = classification_outputs(self, logits, confidence_logits, labels)
        out = ConfidenceImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=base.hidden_states, confidence_logits=confidence_logits
        )
        return out if return_dict else out.to_tuple()
