"""oe_text: Outlier Exposure for language models (PTB word / character level, paper section 5).

Importing ``oe_text`` registers the AWD-LSTM model type ``"oe_awd_lstm"`` with ``AutoConfig``, ``AutoModel``
and ``AutoModelForCausalLM``, so a saved model loads with ``AutoModelForCausalLM.from_pretrained(path)``
(no ``trust_remote_code``), the paper's GRU text classifier ``"oe_gru_classifier"`` with ``AutoConfig`` and
``AutoModelForSequenceClassification``, and the Hub checkpoints of :mod:`oe_text.hub_checkpoints`; it also
registers :class:`~oe_text.preprocessing.TextPreprocessing` as the preprocessing of the ``OODDetector`` text tasks
and :class:`~oe_text.tokenizer_preprocessing.TokenizerPreprocessing` (a Hugging Face tokenizer; raw strings into a
text classifier) for ``text-classification`` (:mod:`oe_common.preprocessing`).

The data pipeline is imported explicitly as ``oe_text.data`` (``from oe_text import data`` /
``import oe_text.data``); it is deliberately not imported here so that using the models does not pull in
the corpus loaders.
"""

from .modeling_awd_lstm import (
    AWDLSTMConfig,
    AWDLSTMForCausalLM,
    AWDLSTMModel,
    AWDLSTMPreTrainedModel,
    register_auto_classes,
)
from . import hub_checkpoints  # noqa: F401 - registers the Hub checkpoints (oe fetch-checkpoint)
from .modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification
from .modeling_gru_classifier import register_auto_classes as _register_gru
from .models import MODEL_KINDS, PRESETS, build_language_model, shifted_logits_and_targets
from .preprocessing import TextPreprocessing  # registers it with oe_common.preprocessing
from .tokenizer_preprocessing import TokenizerPreprocessing  # registered after TextPreprocessing (the default)

register_auto_classes()
_register_gru()

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
