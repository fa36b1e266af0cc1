"""Language-model factory for the PTB experiments (and ``shifted_logits_and_targets``, kept for its callers).

Model family
------------
The OE paper's language models are QRNNs (Merity et al.; the released code: 4 layers of 1550 units, 400-d
embedding, tied weights, AWD dropouts). We use the **AWD-LSTM** family instead (Merity, Keskar & Socher 2018,
:mod:`oe_text.modeling_awd_lstm`): same authors and codebase (``awd-lstm-lm``), same regularisers (embedding /
locked / weight dropout, tied embedding) and PTB perplexity in the same range (the 24M-parameter AWD-LSTM
reports 57.3 test perplexity on PTB words, 58.8 without fine-tuning; the QRNN is that codebase's faster
variant, not a more accurate one). Why not the QRNN itself: it needs a custom CUDA kernel (``torchqrnn`` via
cupy/pynvrtc) that is unmaintained and absent from current PyTorch, whereas the LSTM runs on the stock cuDNN
kernel and on a CPU. The paper leaves the model family to us as long as quality matches.
A small GPT-2 (``kind="transformer"``) is offered as a modern alternative.

Presets and their measured parameter counts (unique parameters, tied weights counted once;
``model.num_parameters()``), for the PTB word vocabulary (10,000) and a PTB character vocabulary (50):

=============  ===========  ====================================================================  ===========  ==========
kind           preset       architecture                                                           V = 10,000   V = 50
=============  ===========  ====================================================================  ===========  ==========
lstm           tiny         emb 128, 2 LSTM layers (256, 128), tied; light dropouts                1,882,896    599,346
lstm           small        emb 256, 3 LSTM layers (768, 768, 256), tied; AWD dropouts x 3/4       11,497,232   8,940,082
lstm           paper        emb 400, 3 LSTM layers (1150, 1150, 400), tied; AWD PTB-word dropouts  24,221,600   20,231,650
lstm           paper_char   emb 200, 3 LSTM layers (1000, 1000, 200), tied; AWD PTB-char dropouts  15,787,600   13,787,650
transformer    tiny         GPT-2: 2 layers, d 128, 4 heads, 256 positions, tied                    1,709,568    435,968
transformer    small        GPT-2: 4 layers, d 256, 4 heads, 256 positions, tied                    5,785,088    3,237,888
transformer    paper        GPT-2: 6 layers, d 512, 8 heads, 256 positions, tied                    24,166,400   19,072,000
=============  ===========  ====================================================================  ===========  ==========

(``tests/test_text_models.py::test_preset_parameter_counts`` re-measures every row.)

* ``tiny`` is for CPU CI. Measured on this project's 2-core CPU machine while idle (Adam, batch 32): LSTM word
  level (V 10,000, 70 tokens) 0.33 s/step, so 300 steps ~ 100 s; LSTM char level (V 50, 150 tokens) 0.17 s/step;
  GPT-2 word level 0.34 s/step. ~65% of the word-level step is the 10,000-way decoder and softmax. When other jobs
  share the cores, ``torch.set_num_threads(1)`` was several times faster than 2 threads for these small models.
* ``paper`` is the AWD-LSTM PTB word-level model: dropouts output 0.4 / hidden 0.25 / input 0.4 / embedding 0.1 /
  weight 0.5 (awd-lstm-lm README recipe: NT-ASGD lr 30, batch 20, bptt 70, 500 epochs).
* ``paper_char`` is the AWD-LSTM PTB character-level model (Merity et al. 2018b: emb 200, 3 x 1000,
  dropouts output 0.1 / hidden 0.25 / input 0.1 / embedding 0 / weight 0.5; Adam lr 2e-3, bptt 150).
* Every GPT-2 preset has ``n_positions = 256`` (>= 151, so char windows of 150 + 1 fit) and ``use_cache=False``.

``**overrides`` of :func:`build_language_model` replace any field of the preset's config (an unknown name is
an error).
"""

from __future__ import annotations

import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from oe_common.scores import causal_shift

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
    reproducible initialisation. See the module docstring for the presets and their parameter counts.
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

    :func:`oe_common.scores.causal_shift` without its mask: targets at padded positions are ``-100``. The pair
    feeds :func:`oe_common.scores.sequence_nll_score` directly, and the per-sequence NLL of an unpadded sequence
    equals the model's own ``loss`` with ``labels=input_ids``; the position mask is ``targets != -100``.
    Shapes: ``(B, L, V)`` logits and ``(B, L)`` ids in, ``(B, L-1, V)`` (a view) and ``(B, L-1)`` int64 out.
    """
    shifted, targets, _ = causal_shift(logits, input_ids, attention_mask)
    return shifted, targets
