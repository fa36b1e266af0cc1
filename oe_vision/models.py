"""All ``oe_vision`` classifiers and confidence-branch helpers in one namespace (re-exports)."""

from .confidence import (
    DEFAULT_CONFIDENCE_BUDGET,
    DEFAULT_CONFIDENCE_LAMBDA,
    ConfidenceBranchLoss,
    ConfidenceImageClassifierOutput,
    confidence_branch_loss,
    confidence_branch_score,
    update_confidence_lambda,
)
from .modeling_mnist_convnet import MnistConvNetConfig, MnistConvNetForImageClassification, MnistConvNetPreTrainedModel
from .modeling_wide_resnet import (
    WRN_PRESETS,
    WideResNetConfig,
    WideResNetForImageClassification,
    WideResNetModel,
    WideResNetPreTrainedModel,
)

__all__ = [
    "DEFAULT_CONFIDENCE_BUDGET",
    "DEFAULT_CONFIDENCE_LAMBDA",
    "ConfidenceBranchLoss",
    "ConfidenceImageClassifierOutput",
    "confidence_branch_loss",
    "confidence_branch_score",
    "update_confidence_lambda",
    "MnistConvNetConfig",
    "MnistConvNetForImageClassification",
    "MnistConvNetPreTrainedModel",
    "WRN_PRESETS",
    "WideResNetConfig",
    "WideResNetForImageClassification",
    "WideResNetModel",
    "WideResNetPreTrainedModel",
]
