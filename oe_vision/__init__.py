"""oe_vision: vision models and data for Outlier Exposure.

Details: docs/modules.md, section ``oe_vision.__init__``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from oe_common.deployment.plugins import register_recipe

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
from .modeling_abnormality_module import AbnormalityModuleConfig, AbnormalityModuleForImageClassification
from .modeling_wide_resnet import WRN_PRESETS, WideResNetConfig, WideResNetForImageClassification, WideResNetModel, WideResNetPreTrainedModel
from .modeling_pixelcnnpp import PixelCNNPPConfig, PixelCNNPPModel
from .preprocessing import ImagePreprocessing  # registers it with oe_common.deployment.preprocessing


def _register(config_cls, *, image_classification=None, base=None) -> None:
    """Register a config (and its models) with the Auto classes; idempotent (safe on re-import)."""
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    if image_classification is not None:
        AutoModelForImageClassification.register(config_cls, image_classification, exist_ok=True)
    if base is not None:
        AutoModel.register(config_cls, base, exist_ok=True)


_register(WideResNetConfig, image_classification=WideResNetForImageClassification, base=WideResNetModel)
_register(MnistConvNetConfig, image_classification=MnistConvNetForImageClassification)
_register(AbnormalityModuleConfig, image_classification=AbnormalityModuleForImageClassification)
# `oe train NAME`: this package's recipes (their modules are imported only when one runs).
register_recipe("mnist", "oe_vision.recipe_cli:main", dataset="mnist")
register_recipe("cifar10", "oe_vision.recipe_cli:main", dataset="cifar10")
register_recipe("pixelcnn", "oe_vision.density_recipe:main")

__all__ = [
    "DEFAULT_CONFIDENCE_BUDGET", "DEFAULT_CONFIDENCE_LAMBDA", "ConfidenceBranchLoss", "ConfidenceImageClassifierOutput",
    "confidence_branch_loss", "confidence_branch_score", "update_confidence_lambda", "MnistConvNetConfig",
    "MnistConvNetForImageClassification", "MnistConvNetPreTrainedModel", "AbnormalityModuleConfig",
    "AbnormalityModuleForImageClassification", "WRN_PRESETS", "WideResNetConfig",
    "WideResNetForImageClassification", "WideResNetModel", "WideResNetPreTrainedModel", "PixelCNNPPConfig", "PixelCNNPPModel",
    "ImagePreprocessing",
]
