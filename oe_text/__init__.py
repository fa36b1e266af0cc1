"""oe_text: Outlier Exposure for language models (PTB word / character level, paper section 5).

Details: docs/modules.md, section ``oe_text.__init__``.
"""

from oe_common.deployment.plugins import register_recipe

from .lm.modeling_awd_lstm import (
    AWDLSTMConfig,
    AWDLSTMForCausalLM,
    AWDLSTMModel,
    AWDLSTMPreTrainedModel,
    register_auto_classes,
)
from .textcls import hub_checkpoints  # noqa: F401 - registers the Hub checkpoints (oe fetch-checkpoint)
from .textcls.modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification
from .textcls.modeling_gru_classifier import register_auto_classes as _register_gru
from .lm.models import MODEL_KINDS, PRESETS, build_language_model, shifted_logits_and_targets
from .lm.preprocessing import TextPreprocessing  # registers it with oe_common.deployment.preprocessing
from .textcls.tokenizer_preprocessing import TokenizerPreprocessing  # registered after TextPreprocessing (the default)

register_auto_classes()
_register_gru()
# `oe train NAME`: this package's recipes (their modules are imported only when one runs).
register_recipe("ptb-word", "oe_text.lm.recipe_cli:main", level="word")
register_recipe("ptb-char", "oe_text.lm.recipe_cli:main", level="char")
register_recipe("text-classification", "oe_text.textcls.textcls_recipe:main")

__all__ = [
    "AWDLSTMConfig",
    "AWDLSTMForCausalLM",
    "AWDLSTMModel",
    "AWDLSTMPreTrainedModel",
    "GRUClassifierConfig",
    "GRUForSequenceClassification",
    "MODEL_KINDS",
    "PRESETS",
    "TextPreprocessing",
    "TokenizerPreprocessing",
    "build_language_model",
    "register_auto_classes",
    "shifted_logits_and_targets",
]
