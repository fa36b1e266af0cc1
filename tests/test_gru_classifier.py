"""The paper's GRU text classifier (oe_text.textcls.modeling_gru_classifier): sizes, padding, loss, Auto classes, OETrainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

import oe_text  # noqa: F401 - registers the Auto classes
from oe_common.training.trainer import OETrainer, OETrainingArguments
from oe_text.textcls.modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
V = 41


def small(num_labels: int = 3, **kw) -> GRUForSequenceClassification:
    torch.manual_seed(0)
    return GRUForSequenceClassification(GRUClassifierConfig(vocab_size=V, num_labels=num_labels, pad_token_id=0, **kw))


def test_paper_sizes_and_init():
    model = GRUForSequenceClassification(GRUClassifierConfig(vocab_size=10000, num_labels=50))
    assert model.embeddings.weight.shape == (10000, 50)
    assert (model.gru.input_size, model.gru.hidden_size, model.gru.num_layers) == (50, 128, 2)
    assert not model.gru.bidirectional and model.gru.batch_first
    assert model.classifier.in_features == 128 and model.classifier.out_features == 50
    emb = model.embeddings.weight.detach()
    assert torch.all(emb[0] == 0)  # pad row
    assert abs(float(emb[1:].std()) - 1.0) < 0.02  # PyTorch's N(0, 1) embedding default, as the paper's code
    bound = 1 / 128**0.5
    assert all(float(p.detach().abs().max()) <= bound for p in model.gru.parameters())


def test_matches_plain_pytorch_gru_and_ignores_padding():
    """Logits = linear(h_n of layer 2) of an nn.GRU run on each sequence alone: padding changes nothing."""
    model = small().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0], [11, 12, 13, 0, 0]])
    mask = (ids != 0).long()
    out = model(input_ids=ids, attention_mask=mask, return_dict=True)
    assert isinstance(out, SequenceClassifierOutput) and out.logits.shape == (3, 3)
    for row in range(3):
        n = int(mask[row].sum())
        _, h_n = model.gru(model.embeddings(ids[row : row + 1, :n]))
        expected = model.classifier(h_n[-1])
        torch.testing.assert_close(out.logits[row : row + 1], expected, rtol=1e-5, atol=1e-6)
    # padding tokens with other ids (not the pad id) must not change anything either
    noisy = ids.clone()
    noisy[mask == 0] = 17
    torch.testing.assert_close(model(input_ids=noisy, attention_mask=mask).logits, out.logits)


def test_loss_and_hidden_states():
    model = small()
    ids = torch.tensor([[5, 6, 7], [3, 4, 0]])
    mask = (ids != 0).long()
    labels = torch.tensor([2, 0])
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    emb, top = out.hidden_states
    assert emb.shape == (2, 3, 50) and top.shape == (2, 3, 128)
    assert torch.all(emb[1, 2] == 0) and torch.all(top[1, 2] == 0)
    out.loss.backward()
    assert model.embeddings.weight.grad is not None
    loss_t, logits_t = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    torch.testing.assert_close(loss_t, out.loss)


def test_bad_inputs():
    model = small()
    with pytest.raises(ValueError, match="RIGHT-padded"):
        model(input_ids=torch.tensor([[0, 5, 6]]), attention_mask=torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="no real token"):
        model(input_ids=torch.tensor([[5, 6], [0, 0]]), attention_mask=torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(TypeError, match="unexpected"):
        model(input_ids=torch.tensor([[5]]), bogus=1)
    with pytest.raises(ValueError, match="pad_token_id"):
        GRUClassifierConfig(vocab_size=10, pad_token_id=10)
    with pytest.raises(ValueError, match="hidden_size"):
        GRUClassifierConfig(hidden_size=0)
    # BERT-style tokenizers also return token_type_ids: accepted and ignored
    model(input_ids=torch.tensor([[5, 6]]), token_type_ids=torch.tensor([[0, 0]]))


def test_auto_classes_save_and_reload(tmp_path):
    model = small(num_labels=4, classifier_dropout=0.1).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "oe_gru_classifier"
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert type(again) is GRUForSequenceClassification and again.config.classifier_dropout == 0.1
    ids = torch.tensor([[5, 6, 7], [3, 4, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits)


class _CharTokenizerCollator:
    """Right-pads token ids (what DataCollatorWithPadding does with a real tokenizer)."""

    def __call__(self, features):
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), n, dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


def test_one_oe_step_with_oetrainer(tmp_path):
    """OETrainer trains the GRU with outliers: finite loss, weights move, OE term logged."""
    rng = np.random.default_rng(0)
    ind = Dataset.from_dict({"input_ids": [list(rng.integers(1, V, size=int(rng.integers(2, 9)))) for _ in range(8)], "labels": [0, 1, 2, 0, 1, 2, 0, 1]})
    out = Dataset.from_dict({"input_ids": [list(rng.integers(1, V, size=int(rng.integers(2, 9)))) for _ in range(8)]})
    model = small()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = OETrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, oe_lambda=1.0,
        report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = OETrainer(model=model, args=args, train_dataset=ind, outlier_dataset=out, data_collator=_CharTokenizerCollator())
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    logs = [h for h in trainer.state.log_history if "loss_oe" in h]
    assert logs and all(np.isfinite(h["loss_oe"]) and h["loss_oe"] >= np.log(3) - 1e-4 for h in logs)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "classifier.weight" in changed and any(k.startswith("gru.") for k in changed)

