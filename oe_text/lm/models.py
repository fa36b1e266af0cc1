"""Language-model factory for the PTB experiments (and ``shifted_logits_and_targets``, kept for its callers).

Main names: :func:`build_language_model` (``kind`` ``"lstm"``: the AWD-LSTM of :mod:`oe_text.lm.modeling_awd_lstm`,
or ``"transformer"``: a small GPT-2), :data:`PRESETS` (config fields by kind and preset; ``**overrides`` replace
any field, an unknown name is an error), :data:`MODEL_KINDS`. Why the AWD-LSTM instead of the paper's QRNN, and
every preset with its measured parameter count and CPU speed: docs/text.md ("Models").
"""

from __future__ import annotations

import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from oe_common.maths.scores import causal_shift

from .modeling_awd_lstm import AWDLSTMConfig, AWDLSTMForCausalLM

__all__ = ["PRESETS", "MODEL_KINDS", "build_language_model", "shifted_logits_and_targets"]

MODEL_KINDS = ("lstm", "transformer")

#: Config fields of every preset, by kind then preset name (``vocab_size`` is supplied by the caller).
PRESETS: dict[str, dict[str, dict]] = {
    "lstm": {
        "tiny": dict(
            embedding_size=128, hidden_size=256, num_hidden_layers=2, tie_word_embeddings=True,
            embedding_dropout=0.0, input_dropout=0.1, hidden_dropout=0.1, output_dropout=0.1, weight_dropout=0.1,
        ),
        "small": dict(
            embedding_size=256, hidden_size=768, num_hidden_layers=3, tie_word_embeddings=True,
            embedding_dropout=0.1, input_dropout=0.3, hidden_dropout=0.2, output_dropout=0.3, weight_dropout=0.4,
        ),
        "paper": dict(
            embedding_size=400, hidden_size=1150, num_hidden_layers=3, tie_word_embeddings=True,
            embedding_dropout=0.1, input_dropout=0.4, hidden_dropout=0.25, output_dropout=0.4, weight_dropout=0.5,
        ),
        "paper_char": dict(
            embedding_size=200, hidden_size=1000, num_hidden_layers=3, tie_word_embeddings=True,
            embedding_dropout=0.0, input_dropout=0.1, hidden_dropout=0.25, output_dropout=0.1, weight_dropout=0.5,
        ),
    },
    "transformer": {
        "tiny": dict(n_embd=128, n_layer=2, n_head=4, n_positions=256, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
        "small": dict(n_embd=256, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
        "paper": dict(n_embd=512, n_layer=6, n_head=8, n_positions=256, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.1),
    },
}

# Settings every GPT-2 preset shares: no downloads, no GPT-2 BPE special ids (they would be out of a small vocab).
_GPT2_COMMON = dict(
    tie_word_embeddings=True, use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    activation_function="gelu_new",
)


def build_language_model(kind: str, vocab_size: int, preset: str = "tiny", **overrides) -> PreTrainedModel:
    """A freshly initialised causal LM: ``AWDLSTMForCausalLM`` (``kind="lstm"``) or ``GPT2LMHeadModel``
    (``kind="transformer"``) built from a local config (nothing is downloaded).

    Both return ``logits`` ``(B, L, vocab_size)`` and take ``labels`` (HF causal shift, -100 ignored), so
    ``transformers.Trainer`` trains them. Set the seed (``transformers.set_seed``) before calling for a
    reproducible initialisation. The presets and their parameter counts: docs/text.md, "Models".
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    presets = PRESETS[kind]
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; available: {sorted(presets)}")
    settings = copy.deepcopy(presets[preset])
    if kind == "transformer":
        settings = {**_GPT2_COMMON, **settings}
    config_cls = AWDLSTMConfig if kind == "lstm" else GPT2Config
    defaults = config_cls()
    unknown = sorted(k for k in overrides if not hasattr(defaults, k))
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s) in overrides: {unknown}")
    settings.update(overrides)
    settings["vocab_size"] = vocab_size
    if kind == "lstm":
        return AWDLSTMForCausalLM(AWDLSTMConfig(**settings))
    config = GPT2Config(**settings)
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    model = GPT2LMHeadModel(config)
    # transformers derives the loss from the class name; "GPT2LMHeadModel" matches none and logs a warning
    # before falling back to the causal-LM loss. Name it explicitly (same loss, no warning).
    model.loss_type = "ForCausalLM"
    return model


def shifted_logits_and_targets(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with the tokens they predict: ``(logits[:, :-1], input_ids[:, 1:])``.

    :func:`oe_common.maths.scores.causal_shift` without its mask: targets at padded positions are ``-100``. The pair
    feeds :func:`oe_common.maths.scores.sequence_nll_score` directly, and the per-sequence NLL of an unpadded sequence
    equals the model's own ``loss`` with ``labels=input_ids``; the position mask is ``targets != -100``.
    Shapes: ``(B, L, V)`` logits and ``(B, L)`` ids in, ``(B, L-1, V)`` (a view) and ``(B, L-1)`` int64 out.
    """
    shifted, targets, _ = causal_shift(logits, input_ids, attention_mask)
    return shifted, targets
