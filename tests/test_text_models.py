"""Language models of oe_text: AWD-LSTM (HF PreTrainedModel) and the GPT-2 option. CPU, no data, < 60 s."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPT2LMHeadModel

import oe_text
from oe_common.maths.scores import sequence_nll_score
from oe_text import (
    PRESETS,
    AWDLSTMConfig,
    AWDLSTMForCausalLM,
    AWDLSTMModel,
    build_language_model,
    shifted_logits_and_targets,
)
from oe_text.lm.modeling_awd_lstm import AWDLSTMLayer, pack_contiguous

V = 37  # small vocabulary: fast, and not a multiple of anything


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def small_lstm(**overrides) -> AWDLSTMForCausalLM:
    """3-layer AWD-LSTM with every dropout ON (AWD values) unless overridden."""
    settings = dict(
        vocab_size=V, embedding_size=16, hidden_size=24, num_hidden_layers=3,
        embedding_dropout=0.1, input_dropout=0.4, hidden_dropout=0.25, output_dropout=0.4, weight_dropout=0.5,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return AWDLSTMForCausalLM(AWDLSTMConfig(**settings))


def no_dropout(model_kind: str = "lstm"):
    if model_kind == "lstm":
        return small_lstm(embedding_dropout=0.0, input_dropout=0.0, hidden_dropout=0.0, output_dropout=0.0, weight_dropout=0.0)
    torch.manual_seed(0)
    return build_language_model("transformer", V, "tiny", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, length), generator=g)


# --------------------------------------------------------------------------------------------- registration


def test_auto_registration():
    config = AutoConfig.for_model("oe_awd_lstm", vocab_size=V, embedding_size=8, hidden_size=12, num_hidden_layers=2)
    assert isinstance(config, AWDLSTMConfig) and config.model_type == "oe_awd_lstm"
    assert config.vocab_size == V and config.layer_sizes == [(8, 12), (12, 8)]
    lm = AutoModelForCausalLM.from_config(config)
    assert type(lm) is AWDLSTMForCausalLM
    assert type(AutoModel.from_config(config)) is AWDLSTMModel
    oe_text.register_auto_classes()  # idempotent: a second registration is not an error


def test_config_defaults_are_awd_lstm_ptb_and_validated():
    c = AWDLSTMConfig()
    assert (c.embedding_size, c.hidden_size, c.num_hidden_layers, c.tie_word_embeddings) == (400, 1150, 3, True)
    assert (c.output_dropout, c.hidden_dropout, c.input_dropout, c.embedding_dropout, c.weight_dropout) == (0.4, 0.25, 0.4, 0.1, 0.5)
    assert AWDLSTMConfig(tie_word_embeddings=False).layer_sizes[-1] == (1150, 1150)
    with pytest.raises(ValueError, match="weight_dropout"):
        AWDLSTMConfig(weight_dropout=1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        AWDLSTMConfig(hidden_size=0)


# ------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_round_trip_is_exact(tmp_path, tied):
    model = small_lstm(tie_word_embeddings=tied)
    model.train()
    x = ids(4, 12)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x, labels=x).loss.backward()
    opt.step()  # weights (and the decoder bias) away from their initial values
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    stored = load_file(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not tied)  # a tied decoder is stored once, as the embedding

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is AWDLSTMForCausalLM
    assert loaded.config.to_dict() == model.config.to_dict() or loaded.config.to_diff_dict() == model.config.to_diff_dict()
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    model.eval(), loaded.eval()
    with torch.no_grad():
        # weights bit-identical; outputs to float rounding (unaligned loaded tensors change the BLAS summation order)
        torch.testing.assert_close(model(x).logits, loaded(x).logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- causality, state, padding


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_causal(kind):
    model = no_dropout(kind).eval()
    x = ids(2, 16)
    t = 7
    y = x.clone()
    y[:, t + 1] = (y[:, t + 1] + 1) % V
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_no_state_carried_between_calls():
    model = small_lstm().eval()  # dropouts configured but inactive in eval mode
    x = ids(3, 20)
    with torch.no_grad():
        first = model(x).logits
        second = model(x).logits
        assert torch.equal(first, second)
        model(ids(5, 33, seed=7))  # something else in between
        alone = model(x[1:2]).logits
        in_other_batch = model(torch.cat([ids(2, 20, seed=9), x[1:2]])).logits[2:3]
    torch.testing.assert_close(alone, first[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(in_other_batch, alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_right_padding_does_not_change_real_token_logits(kind):
    model = no_dropout(kind).eval()
    lengths = [13, 5, 9]
    seqs = [ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    L = max(lengths)
    batch = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
        batch[i, len(s):] = 3  # arbitrary pad id: must not matter
        mask[i, : len(s)] = 1
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            alone = model(s[None]).logits[0]
            torch.testing.assert_close(padded[i, : len(s)], alone, rtol=0, atol=2e-5)


def test_left_padding_is_rejected():
    model = small_lstm().eval()
    x = ids(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="RIGHT-padded"):
        model(x, attention_mask=mask)


# -------------------------------------------------------------------------------------------------- loss


def test_loss_is_hand_computed_shifted_cross_entropy():
    model = small_lstm().eval()
    x = ids(3, 11)
    labels = x.clone()
    labels[0, 4] = -100
    labels[2, 8:] = -100
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 11, V)
    lp = torch.log_softmax(out.logits.double(), dim=-1)
    total, count = 0.0, 0
    for b in range(3):
        for t in range(10):  # position t predicts token t + 1
            if labels[b, t + 1] != -100:
                total -= lp[b, t, labels[b, t + 1]].item()
                count += 1
    assert count == 3 * 10 - 1 - 3
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    # Trainer's gradient-accumulation form: sum / num_items_in_batch
    n = torch.tensor(50)
    assert model(x, labels=labels, num_items_in_batch=n).loss.item() == pytest.approx(total / 50, rel=1e-5)
    with pytest.raises(TypeError, match="unexpected"):
        model(x, labels=labels, token_type_ids=x)


def test_return_tuple_and_hidden_states():
    model = small_lstm().eval()
    x = ids(2, 5)
    out = model(x, labels=x, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + 3
    assert [h.shape[-1] for h in out.hidden_states] == [16, 24, 24, 16]
    loss, logits, hidden = model(x, labels=x, output_hidden_states=True, return_dict=False)
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)


# ---------------------------------------------------------------------------------------- tied weights


def test_tied_weights_share_storage_through_an_optimizer_step():
    model = small_lstm()
    emb, dec = model.get_input_embeddings(), model.get_output_embeddings()
    assert dec.weight is emb.weight and dec.weight.data_ptr() == emb.weight.data_ptr()
    before = emb.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    x = ids(4, 10)
    model(x, labels=x).loss.backward()
    opt.step()
    assert not torch.equal(emb.weight, before)
    assert dec.weight is emb.weight and torch.equal(dec.weight, emb.weight)
    untied = small_lstm(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert untied.lm_head.in_features == 24


# -------------------------------------------------------------------------------------------- dropouts


def test_weight_dropout_active_in_train_off_in_eval():
    only_wdrop = dict(embedding_dropout=0.0, input_dropout=0.0, hidden_dropout=0.0, output_dropout=0.0)
    model = small_lstm(weight_dropout=0.5, **only_wdrop)
    layer = model.model.layers[0]
    model.train()
    dropped = layer.recurrent_weight()
    zero_frac = (dropped == 0).float().mean().item()
    assert 0.4 < zero_frac < 0.6
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2.0 * layer.weight_hh[kept])  # rescaled by 1 / (1 - p)
    x = ids(2, 15)
    torch.manual_seed(1)
    train_a = model(x).logits
    torch.manual_seed(2)
    train_b = model(x).logits
    assert not torch.allclose(train_a, train_b)  # a new DropConnect mask each forward
    # the gradient reaches the raw weight only where the mask kept it
    model.zero_grad()
    torch.manual_seed(3)
    model(x, labels=x).loss.backward()
    assert layer.weight_hh.grad is not None and (layer.weight_hh.grad == 0).float().mean() > 0.3
    model.eval()
    assert layer.recurrent_weight() is layer.weight_hh
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
    # with every dropout 0, train mode == eval mode
    plain = small_lstm(weight_dropout=0.0, **only_wdrop)
    with torch.no_grad():
        assert torch.equal(plain.train()(x).logits, plain.eval()(x).logits)


def test_embedding_dropout_drops_whole_word_types():
    model = small_lstm(embedding_dropout=0.5)
    model.train()
    x = torch.arange(V).repeat(1, 3)  # every type three times
    torch.manual_seed(0)
    emb = model.model._embed(x)[0]  # (3V, E)
    dropped = (emb == 0).all(-1).view(3, V)
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])  # per type, not per token


def test_pack_contiguous_is_exact_and_differentiable():
    """The CUDA path hands cuDNN views into one buffer; on CPU check it is numerically the plain call."""
    layer = AWDLSTMLayer(6, 5, weight_dropout=0.0)
    x = torch.randn(3, 7, 6)
    h0 = torch.zeros(1, 3, 5)
    plain = [layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh]
    out_plain = torch._VF.lstm(x, (h0, h0), plain, True, 1, 0.0, True, False, True)[0]
    grads_plain = torch.autograd.grad(out_plain.sum(), plain)
    packed = pack_contiguous(plain)
    assert all(p.shape == q.shape for p, q in zip(packed, plain))
    assert packed[1].data_ptr() == packed[0].data_ptr() + 4 * packed[0].numel()  # one buffer, in order
    out_packed = torch._VF.lstm(x, (h0, h0), packed, True, 1, 0.0, True, False, True)[0]
    grads_packed = torch.autograd.grad(out_packed.sum(), plain)
    assert torch.equal(out_plain, out_packed)
    for a, b in zip(grads_plain, grads_packed):
        assert torch.equal(a, b)
    # and it is what nn.LSTM computes with the same weights
    ref = torch.nn.LSTM(6, 5, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(layer, name))
    torch.testing.assert_close(ref(x)[0], layer(x), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN path)")
def test_cuda_cudnn_path_with_weight_dropout():
    model = small_lstm()
    x = ids(4, 30)
    cpu_logits = model.eval()(x).logits
    model = model.cuda().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "RNN module weights are not part of single contiguous chunk"
        loss = model(x.cuda(), labels=x.cuda()).loss
        loss.backward()
    assert model.model.layers[0].weight_hh.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x.cuda()).logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ scoring helper and equality


def test_shifted_logits_and_targets_matches_model_loss():
    model = small_lstm().eval()
    x = ids(1, 25)
    with torch.no_grad():
        out = model(x, labels=x)
    logits, targets = shifted_logits_and_targets(out.logits, x)
    assert logits.shape == (1, 24, V) and torch.equal(targets, x[:, 1:])
    torch.testing.assert_close(sequence_nll_score(logits, targets)[0], out.loss, rtol=1e-6, atol=1e-6)

    # padded batch: each row's NLL equals that sequence's own loss
    lengths = [25, 8, 17]
    seqs = [x[0]] + [ids(1, n, seed=20 + n)[0] for n in lengths[1:]]
    batch = torch.zeros(3, 25, dtype=torch.long)
    mask = torch.zeros(3, 25, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)], mask[i, : len(s)] = s, 1
    with torch.no_grad():
        logits, targets = shifted_logits_and_targets(model(batch, attention_mask=mask).logits, batch, mask)
        assert (targets == -100).sum().item() == (25 - 8) + (25 - 17)
        nll = sequence_nll_score(logits, targets)
        for i, s in enumerate(seqs):
            own = model(s[None], labels=s[None]).loss
            torch.testing.assert_close(nll[i], own, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        shifted_logits_and_targets(out.logits, x[:, :-1])


# ------------------------------------------------------------------------------------- factory / presets


def test_gpt2_option_shapes_and_labels():
    torch.manual_seed(0)
    model = build_language_model("transformer", 50, "tiny")
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_positions >= 151
    x = torch.randint(0, 50, (2, 151))
    labels = x.clone()
    labels[1, 100:] = -100
    out = model(x, attention_mask=torch.ones_like(x), labels=labels)
    assert out.logits.shape == (2, 151, 50) and torch.isfinite(out.loss)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_build_language_model_presets_and_errors():
    lstm = build_language_model("lstm", 100, "paper", weight_dropout=0.3)
    assert isinstance(lstm, AWDLSTMForCausalLM)
    assert lstm.config.layer_sizes == [(400, 1150), (1150, 1150), (1150, 400)]
    assert lstm.config.weight_dropout == 0.3 and lstm.config.output_dropout == 0.4
    with pytest.raises(ValueError, match="kind"):
        build_language_model("qrnn", 100)
    with pytest.raises(ValueError, match="preset"):
        build_language_model("lstm", 100, "huge")
    with pytest.raises(ValueError, match="unknown"):
        build_language_model("lstm", 100, "tiny", hiden_size=3)
    with pytest.raises(ValueError, match="unknown"):
        build_language_model("transformer", 100, "tiny", hidden_dropout=0.1)


#: Measured ``num_parameters()`` (tied weights once) for vocabularies 10,000 (PTB words) and 50 (PTB chars):
#: the table in the docstring of oe_text.lm.models.
EXPECTED_PARAMS = {
    ("lstm", "tiny"): (1_882_896, 599_346),
    ("lstm", "small"): (11_497_232, 8_940_082),
    ("lstm", "paper"): (24_221_600, 20_231_650),
    ("lstm", "paper_char"): (15_787_600, 13_787_650),
    ("transformer", "tiny"): (1_709_568, 435_968),
    ("transformer", "small"): (5_785_088, 3_237_888),
    ("transformer", "paper"): (24_166_400, 19_072_000),
}


def test_preset_parameter_counts():
    assert set(EXPECTED_PARAMS) == {(k, p) for k in PRESETS for p in PRESETS[k]}
    with torch.device("meta"):  # shapes only: no memory, no init time
        for (kind, preset), expected in EXPECTED_PARAMS.items():
            got = tuple(build_language_model(kind, v, preset).num_parameters() for v in (10_000, 50))
            assert got == expected, (kind, preset, got)


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_tiny_overfit(kind):
    """The ``tiny`` preset (dropouts on) memorises one repeated sequence: eval loss falls by more than half."""
    torch.manual_seed(0)
    model = build_language_model(kind, V, "tiny")
    x = ids(1, 24).repeat(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return model(x, labels=x).loss.item()

    start = eval_loss()
    assert start == pytest.approx(torch.log(torch.tensor(float(V))).item(), abs=0.3)  # ~uniform at init
    model.train()
    for _ in range(50):
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    assert end < 0.5 * start, (start, end)  # measured: lstm 3.61 -> 1.00, transformer 3.67 -> 0.12


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_hf_trainer_trains_and_saves(tmp_path, kind):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = build_language_model(kind, V, "tiny")
    x = ids(1, 20).repeat(32, 1)
    data = Dataset.from_dict({"input_ids": x.tolist(), "labels": x.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged[-1] < logged[0]
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert type(reloaded) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), reloaded.state_dict()[key]), key
