"""AWD-LSTM language model (Merity, Keskar & Socher, ICLR 2018) as a Hugging Face ``PreTrainedModel``.

Details: docs/modules.md, section ``oe_text.lm.modeling_awd_lstm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

__all__ = [
    "AWDLSTMConfig",
    "AWDLSTMLayer",
    "AWDLSTMModel",
    "AWDLSTMPreTrainedModel",
    "AWDLSTMForCausalLM",
    "LockedDropout",
    "pack_contiguous",
    "register_auto_classes",
]

MODEL_TYPE = "oe_awd_lstm"


class AWDLSTMConfig(PretrainedConfig):
    r"""Configuration of :class:`AWDLSTMForCausalLM`. Defaults are the AWD-LSTM PTB word-level setting.

    Args:
        vocab_size: number of tokens (word or character vocabulary).
        embedding_size: embedding width (AWD ``emsize``, 400). With ``tie_word_embeddings`` the last LSTM layer
            outputs this many features so the decoder can share the embedding matrix.
        hidden_size: width of every LSTM layer except the last when tied (AWD ``nhid``, 1150).
        num_hidden_layers: number of stacked LSTM layers (AWD ``nlayers``, 3).
        embedding_dropout: probability of dropping a whole word type (AWD ``dropoute``, 0.1).
        input_dropout: locked dropout on the embeddings (AWD ``dropouti``, 0.4 for PTB word level).
        hidden_dropout: locked dropout between LSTM layers (AWD ``dropouth``, 0.25).
        output_dropout: locked dropout on the last LSTM layer's output (AWD ``dropout``, 0.4).
        weight_dropout: DropConnect on the hidden-to-hidden matrices (AWD ``wdrop``, 0.5).
        initializer_range: embedding / decoder weights are drawn from ``U(-r, r)`` (AWD: 0.1); LSTM weights use
            PyTorch's LSTM default ``U(-1/sqrt(H), 1/sqrt(H))`` with ``H`` the layer's hidden size.
        tie_word_embeddings: share the decoder weight with the input embedding (AWD default: yes).
    Every dropout may be 0.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 10000
    embedding_size: int = 400
    hidden_size: int = 1150
    num_hidden_layers: int = 3
    embedding_dropout: float = 0.1
    input_dropout: float = 0.4
    hidden_dropout: float = 0.25
    output_dropout: float = 0.4
    weight_dropout: float = 0.5
    initializer_range: float = 0.1
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AWDLSTMConfig.{name} must be a positive int, got {value!r}")
        for name in ("embedding_dropout", "input_dropout", "hidden_dropout", "output_dropout", "weight_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"AWDLSTMConfig.{name} must be a probability in [0, 1), got {value!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"AWDLSTMConfig.initializer_range must be > 0, got {self.initializer_range!r}")

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """``(input_size, hidden_size)`` of each LSTM layer (the AWD-LSTM rule: the last layer outputs
        ``embedding_size`` when the decoder is tied to the embedding, ``hidden_size`` otherwise)."""
        sizes = []
        for layer in range(self.num_hidden_layers):
            in_size = self.embedding_size if layer == 0 else self.hidden_size
            last = layer == self.num_hidden_layers - 1
            out_size = (self.embedding_size if self.tie_word_embeddings else self.hidden_size) if last else self.hidden_size
            sizes.append((in_size, out_size))
        return sizes

    @property
    def output_size(self) -> int:
        """Width of the features fed to the decoder."""
        return self.layer_sizes[-1][1]


class LockedDropout(nn.Module):
    """Variational dropout: one mask per (sequence, feature), shared over time. Input ``(B, L, D)``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def pack_contiguous(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy ``weights`` into ONE new contiguous buffer (in the given order) and return views into it.

    Differentiable (gradients flow back to the originals through ``torch.cat``). Used on CUDA with the order
    ``[w_ih, w_hh, b_ih, b_hh]``, which is cuDNN's packed layout for a single-layer LSTM: cuDNN then runs on the
    buffer as is instead of re-packing the weights itself (and warning "weights are not part of single
    contiguous chunk of memory") at every call.
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    views, offset = [], 0
    for w in weights:
        views.append(flat[offset : offset + w.numel()].view(w.shape))
        offset += w.numel()
    return views


class AWDLSTMLayer(nn.Module):
    """One unidirectional, batch-first LSTM layer with DropConnect on ``weight_hh``; starts from a zero state.

    Parameters use ``nn.LSTM``'s layout (gates ``i, f, g, o``): ``weight_ih (4H, I)``, ``weight_hh (4H, H)``,
    ``bias_ih (4H)``, ``bias_hh (4H)``. ``weight_hh`` is the *raw* (undropped) matrix.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0):
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.weight_dropout = float(weight_dropout)
        gates = 4 * self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, self.hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates))
        self.bias_hh = nn.Parameter(torch.empty(gates))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's ``nn.LSTM`` default: every weight and bias ``U(-1/sqrt(H), 1/sqrt(H))``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            _init.uniform_(p, -bound, bound)

    def recurrent_weight(self) -> torch.Tensor:
        """The hidden-to-hidden matrix used by this forward pass (DropConnect-ed in training mode)."""
        if self.training and self.weight_dropout > 0.0:
            return F.dropout(self.weight_hh, p=self.weight_dropout, training=True)
        return self.weight_hh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, L, input_size)`` -> ``(B, L, hidden_size)``; zero initial state for every sequence."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"AWDLSTMLayer expects (batch, length, {self.input_size}) inputs, got {tuple(x.shape)}")
        zeros = x.new_zeros(1, x.shape[0], self.hidden_size)
        weights = [self.weight_ih, self.recurrent_weight(), self.bias_ih, self.bias_hh]
        if x.is_cuda:
            weights = pack_contiguous(weights)
        # torch._VF.lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        output, _, _ = torch._VF.lstm(x, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
        return output

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, weight_dropout={self.weight_dropout}"


class AWDLSTMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the HF plumbing shared by :class:`AWDLSTMModel` and the LM head model."""

    config_class = AWDLSTMConfig
    config: AWDLSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["AWDLSTMLayer"]
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """AWD-LSTM init: embedding / decoder weights ``U(-r, r)`` (``r = initializer_range``), decoder bias 0,
        LSTM layers PyTorch's default ``U(-1/sqrt(H), 1/sqrt(H))``."""
        r = self.config.initializer_range
        if isinstance(module, AWDLSTMLayer):
            module.reset_parameters()
        elif isinstance(module, nn.Embedding):
            _init.uniform_(module.weight, -r, r)
        elif isinstance(module, nn.Linear):
            _init.uniform_(module.weight, -r, r)
            if module.bias is not None:
                _init.zeros_(module.bias)


class AWDLSTMModel(AWDLSTMPreTrainedModel):
    """Embedding + stacked LSTM layers with the AWD dropouts; returns the (output-dropped) last layer features."""

    def __init__(self, config: AWDLSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.layers = nn.ModuleList(
            AWDLSTMLayer(in_size, out_size, config.weight_dropout) for in_size, out_size in config.layer_sizes
        )
        self.input_dropout = LockedDropout(config.input_dropout)
        self.hidden_dropout = LockedDropout(config.hidden_dropout)
        self.output_dropout = LockedDropout(config.output_dropout)
        self.embedding_dropout = float(config.embedding_dropout)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        p = self.embedding_dropout
        if self.training and p > 0.0:
            # One keep/drop draw per vocabulary entry (AWD ``embedded_dropout``): all occurrences of a dropped
            # word type in this batch get a zero vector. Same as masking rows of the weight, without the V x E copy.
            keep = embeds.new_empty(self.embed_tokens.num_embeddings).bernoulli_(1.0 - p).div_(1.0 - p)
            embeds = embeds * keep[input_ids].unsqueeze(-1)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        """``last_hidden_state``: ``(B, L, output_size)``, after the output locked dropout.

        ``hidden_states`` (when asked): the embedding output and each LSTM layer's output, before the locked
        dropouts. ``attention_mask`` must be right padding (1...1 0...0 per row); padded positions only see
        earlier tokens so they never influence real ones.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
            inputs_embeds = self._embed(input_ids)
        if attention_mask is not None:
            _check_right_padding(attention_mask, inputs_embeds.shape[:2])
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict

        all_hidden = [inputs_embeds] if output_hidden_states else None
        hidden = self.input_dropout(inputs_embeds)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if output_hidden_states:
                all_hidden.append(hidden)
            if index < len(self.layers) - 1:
                hidden = self.hidden_dropout(hidden)
        hidden = self.output_dropout(hidden)

        hidden_states = tuple(all_hidden) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (hidden, hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=hidden_states)


class AWDLSTMForCausalLM(AWDLSTMPreTrainedModel):
    """AWD-LSTM with a (tied) linear decoder: ``forward(input_ids, attention_mask=None, labels=None)``.

    Returns :class:`~transformers.modeling_outputs.CausalLMOutput` with ``logits`` ``(B, L, vocab_size)`` and,
    when ``labels`` are given, ``loss`` = mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``
    over labels != -100 (HF causal shift; pass ``labels=input_ids`` with padding set to -100).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AWDLSTMConfig):
        super().__init__(config)
        self.model = AWDLSTMModel(config)
        self.lm_head = nn.Linear(config.output_size, config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput | tuple:
        """Logits for every position; loss from ``labels`` (shifted inside, -100 ignored).

        Extra keyword arguments: ``num_items_in_batch`` (passed by ``Trainer``: the loss becomes
        ``sum / num_items_in_batch`` so gradient accumulation is exact) and ``shift_labels`` (already shifted
        targets, HF convention). ``use_cache`` / ``output_attentions`` / ``past_key_values`` /
        ``cache_position`` / ``logits_to_keep`` are accepted and ignored (no cache, no attention).
        Anything else is an error rather than silently ignored.
        """
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "shift_labels") if k in kwargs}
        for ignored in ("use_cache", "output_attentions", "past_key_values", "cache_position", "logits_to_keep"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"AWDLSTMForCausalLM.forward got unexpected argument(s): {sorted(kwargs)}")
        return_dict = self.config.return_dict if return_dict is None else return_dict

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)

        loss = None
        if labels is not None or "shift_labels" in loss_kwargs:
            if labels is not None and labels.shape != logits.shape[:2]:
                raise ValueError(f"labels shape {tuple(labels.shape)} does not match the input {tuple(logits.shape[:2])}")
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)

        if not return_dict:
            out = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def _check_right_padding(attention_mask: torch.Tensor, shape: torch.Size) -> None:
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(shape)}")
    mask = attention_mask.bool()
    # A 0 followed by a 1 in a row = left padding or a hole: the LSTM state would then depend on padding.
    if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError(
            "AWDLSTM needs RIGHT-padded batches (attention_mask rows of the form 1..1 0..0): an LSTM reads the "
            "padding before the real tokens otherwise. Use padding_side='right'."
        )


def register_auto_classes() -> None:
    """Register ``oe_awd_lstm`` with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(MODEL_TYPE, AWDLSTMConfig, exist_ok=True)
    AutoModel.register(AWDLSTMConfig, AWDLSTMModel, exist_ok=True)
    AutoModelForCausalLM.register(AWDLSTMConfig, AWDLSTMForCausalLM, exist_ok=True)
