"""The OE paper's text classifier (2-layer GRU, appendix "Text classification") as a Hugging Face ``PreTrainedModel``.

Architecture, sizes from the paper's released code (``NLP_classification/train.py``: ``ClfGRU``)::

    input_ids (B, L) -> embedding (vocab_size x 50) -> GRU, 2 layers, 128 hidden, unidirectional, batch first
        -> h_n of the LAST layer at each sequence's last real token (B, 128)  = the pooled / penultimate feature
        -> dropout (classifier_dropout, 0 in the paper) -> linear 128 -> num_labels = logits (B, K)

Any tokenizer works (``vocab_size`` = ``len(tokenizer)``, ``pad_token_id`` = its pad id); the paper used a
10,000-word torchtext vocabulary, the recipes use the same tokenizer as the pretrained model so both models read
identical ids. Padding: the GRU runs on ``pack_padded_sequence`` with the lengths ``attention_mask.sum(1)``, so
padding never changes the logits; ``attention_mask`` rows must be RIGHT-padded (``1..1 0..0``, the Hugging Face
tokenizers' default) and hold at least one real token. Without a mask every position is real.

Initialisation = PyTorch defaults, as the paper's code: embedding ``N(0, 1)`` (pad row 0), GRU
``U(-1/sqrt(H), 1/sqrt(H))``, linear ``nn.Linear``'s default. The head is called ``classifier`` as in BERT, so
"the classifier's input" is the penultimate feature for both models (a forward hook on ``model.classifier``).

``forward`` returns :class:`~transformers.modeling_outputs.SequenceClassifierOutput`; with ``labels`` the loss is
the ``transformers`` sequence-classification loss (``config.problem_type``: cross-entropy for integer labels).
``output_hidden_states=True`` adds ``(embeddings, last GRU layer outputs)``, each ``(B, L, ·)``, zero at padding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

__all__ = ["GRUClassifierConfig", "GRUForSequenceClassification", "register_auto_classes"]

MODEL_TYPE = "oe_gru_classifier"


class GRUClassifierConfig(PretrainedConfig):
    r"""Configuration of :class:`GRUForSequenceClassification`; defaults are the paper's ``ClfGRU``.

    Args:
        vocab_size: tokenizer size (``len(tokenizer)``).
        embedding_size: embedding width (paper: 50).
        hidden_size: GRU width (paper: 128).
        num_hidden_layers: stacked GRU layers (paper: 2).
        gru_dropout: dropout between GRU layers (``nn.GRU``'s ``dropout``; paper: 0).
        classifier_dropout: dropout on the pooled feature before the linear head (paper: 0).
        num_labels / id2label / label2id / problem_type / pad_token_id: as in every ``transformers`` config.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    embedding_size: int = 50
    hidden_size: int = 128
    num_hidden_layers: int = 2
    gru_dropout: float = 0.0
    classifier_dropout: float = 0.0
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GRUClassifierConfig.{name} must be a positive int, got {value!r}")
        for name in ("gru_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"GRUClassifierConfig.{name} must be a probability in [0, 1), got {value!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"GRUClassifierConfig.pad_token_id={self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")


class GRUForSequenceClassification(PreTrainedModel):
    """2-layer GRU text classifier: ``forward(input_ids, attention_mask=None, labels=None)`` -> logits ``(B, K)``."""

    config_class = GRUClassifierConfig
    config: GRUClassifierConfig
    base_model_prefix = "gru_classifier"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    def __init__(self, config: GRUClassifierConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.gru = nn.GRU(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_hidden_layers,
            dropout=config.gru_dropout if config.num_hidden_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's defaults (the paper's code did not re-initialise anything)."""
        if isinstance(module, nn.Embedding):
            _init.normal_(module.weight, 0.0, 1.0)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                _init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.GRU):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for weight in module.parameters():
                _init.uniform_(weight, -bound, bound)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)  # kaiming_uniform(a=sqrt(5)) and the bias rule reduce to this
            _init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                _init.uniform_(module.bias, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        """Logits ``(B, num_labels)`` from the last layer's state at each row's last real token.

        ``token_type_ids`` / ``position_ids`` / ``output_attentions`` (what BERT-style tokenizers and the
        ``Trainer`` may pass) are accepted and ignored; any other keyword is an error.
        """
        for ignored in ("token_type_ids", "position_ids", "output_attentions", "num_items_in_batch"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"GRUForSequenceClassification.forward got unexpected argument(s): {sorted(kwargs)}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
            inputs_embeds = self.embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        lengths = _lengths(attention_mask, batch, length, inputs_embeds.device)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict

        packed = pack_padded_sequence(inputs_embeds, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, h_n = self.gru(packed)
        pooled = h_n[-1]  # (B, H): the last layer at each row's last real token, rows in input order
        logits = self.classifier(self.dropout(pooled))

        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        hidden_states = None
        if output_hidden_states:
            outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=length)
            mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
            hidden_states = (inputs_embeds * mask[..., None].to(inputs_embeds.dtype), outputs)
        if not return_dict:
            out = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


def _lengths(attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Real tokens per row, from a right-padded ``attention_mask`` (all ``length`` without one)."""
    if attention_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, length)}")
    mask = attention_mask.bool()
    if length > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError(
            "GRUForSequenceClassification needs RIGHT-padded batches (attention_mask rows 1..1 0..0); "
            "use the tokenizer's padding_side='right'"
        )
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError(f"rows {torch.nonzero(lengths == 0).flatten().tolist()[:10]} of the batch have no real token")
    return lengths


def register_auto_classes() -> None:
    """Register ``oe_gru_classifier`` with ``AutoConfig`` / ``AutoModelForSequenceClassification`` (idempotent)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    AutoConfig.register(MODEL_TYPE, GRUClassifierConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(GRUClassifierConfig, GRUForSequenceClassification, exist_ok=True)
