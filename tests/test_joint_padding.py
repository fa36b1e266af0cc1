"""OETrainer with batches padded each to its own longest row: the in-distribution and outlier batches are padded to
the longer of the two (oe_common.training.batch_padding) and run in ONE forward pass, with the loss of the unpadded texts."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertTokenizer, DataCollatorForLanguageModeling, DataCollatorWithPadding

from _oe_tiny import VOCAB, hf_dataset, tiny_bert_classifier, tiny_gpt2_lm
from oe_common.training.batch_padding import pad_to_length, tokenizer_pad_values
from oe_common.training.trainer import OETrainer, OETrainingArguments

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def tokenizer(padding_side: str = "right") -> BertTokenizer:
    """A tokenizer whose ids are those of tests/_oe_tiny.py's models ([PAD] = 0)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, VOCAB)]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.padding_side = padding_side
    return tok


def rows(lengths, seed: int, labels: bool) -> dict[str, list]:
    """Rows of the given lengths (ids 5..31, all real tokens), labelled 0..2 when ``labels``."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(5, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    out = {"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}
    if labels:
        out["labels"] = [i % 3 for i in range(len(lengths))]
    return out


def collator(tok, lm: bool):
    """Pads each batch to its longest row; language models: token labels = ids, -100 at padding."""
    return DataCollatorForLanguageModeling(tok, mlm=False) if lm else DataCollatorWithPadding(tok)


def args(tmp_path, **overrides) -> OETrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, learning_rate=0.1,
                    optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, warmup_steps=0, save_strategy="no",
                    report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
                    train_sampling_strategy="sequential", oe_lambda=0.5)
    settings.update(overrides)
    return OETrainingArguments(**settings)


def forward_shapes(model) -> list[tuple[int, ...]]:
    """Records the ``input_ids`` shape of every forward call of ``model``."""
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return shapes


IN_LENGTHS, OUT_LENGTHS = [3, 5, 2, 4], [7, 2, 6, 3]


MODELS = [(tiny_bert_classifier, False), (tiny_gpt2_lm, True)]


@pytest.mark.parametrize("make_model, lm", MODELS, ids=["classifier", "causal_lm"])
def test_oe_step_is_one_forward_padded_to_the_longest_text_of_the_joint_batch(tmp_path, caplog, make_model, lm):
    tok = tokenizer()
    model = make_model()
    shapes = forward_shapes(model)
    trainer = OETrainer(model=model, args=args(tmp_path), train_dataset=hf_dataset(rows(IN_LENGTHS, 1, not lm)),
                        outlier_dataset=hf_dataset(rows(OUT_LENGTHS, 2, False)), processing_class=tok,
                        data_collator=collator(tok, lm))
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "cannot be concatenated" not in caplog.text
    assert shapes == [(8, 7)]  # one pass: 4 + 4 rows, padded to the longest of both batches (7), not beyond


@pytest.mark.parametrize("make_model, lm", MODELS, ids=["classifier", "causal_lm"])
def test_loss_of_the_jointly_padded_batch_equals_the_loss_without_extra_padding(tmp_path, make_model, lm):
    """compute_loss on batches padded to their own longest rows (then jointly to 7) == on both padded further to 12
    == the loss of each text through the model on its own (no padding at all): the padding is masked."""
    from oe_common.maths.losses import oe_uniform_loss

    tok = tokenizer()
    model = make_model().train()  # the tiny models have no dropout
    trainer = OETrainer(model=model, args=args(tmp_path), train_dataset=hf_dataset(rows(IN_LENGTHS, 1, not lm)),
                        outlier_dataset=hf_dataset(rows(OUT_LENGTHS, 2, False)), processing_class=tok)
    table_in, table_out = rows(IN_LENGTHS, 1, not lm), rows(OUT_LENGTHS, 2, False)
    in_rows = [{k: v[i] for k, v in table_in.items()} for i in range(4)]
    out_rows = [{k: v[i] for k, v in table_out.items()} for i in range(4)]
    collate = collator(tok, lm)
    values, side = tokenizer_pad_values(tok)

    def loss(length: int | None) -> float:
        ins, outs = collate(in_rows), collate(out_rows)
        outs.pop("labels", None)
        if length is not None:
            ins = pad_to_length(ins, length, {**values, "labels": -100}, side)
            outs = pad_to_length(outs, length, values, side)
        trainer.next_outlier_batch = lambda: dict(outs)
        with torch.no_grad():
            return float(trainer.compute_loss(model, dict(ins)))

    longest, padded = loss(None), loss(12)
    assert longest == pytest.approx(padded, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([r["input_ids"]])).logits for r in in_rows + out_rows]
    if lm:  # token means: position t predicts token t+1 (in); every position of every outlier (out)
        ce = sum(torch.nn.functional.cross_entropy(z[0, :-1], torch.tensor(r["input_ids"][1:]), reduction="sum")
                 for z, r in zip(logits[:4], in_rows))
        loss_in = ce / sum(len(r["input_ids"]) - 1 for r in in_rows)
        loss_oe = sum(oe_uniform_loss(z) * z.shape[1] for z in logits[4:]) / sum(OUT_LENGTHS)
    else:
        loss_in = torch.nn.functional.cross_entropy(torch.cat(logits[:4]), torch.tensor([r["labels"] for r in in_rows]))
        loss_oe = oe_uniform_loss(torch.cat(logits[4:]))
    assert longest == pytest.approx(float(loss_in + 0.5 * loss_oe), rel=1e-5, abs=1e-6)


def test_pad_to_length_uses_the_tokenizers_values_and_side_and_refuses_what_it_cannot_pad():
    values, side = tokenizer_pad_values(tokenizer("left"))
    assert side == "left" and values["input_ids"] == 0 and values["attention_mask"] == 0
    batch = {"input_ids": torch.tensor([[7, 8]]), "attention_mask": torch.tensor([[1, 1]])}
    left = pad_to_length(batch, 4, values, side)
    assert left["input_ids"].tolist() == [[0, 0, 7, 8]] and left["attention_mask"].tolist() == [[0, 0, 1, 1]]
    right = pad_to_length({**batch, "token_type_ids": torch.tensor([[0, 0]])}, 3, {**values, "input_ids": 5}, "right")
    assert right["input_ids"].tolist() == [[7, 8, 5]] and right["token_type_ids"].tolist() == [[0, 0, 0]]
    assert pad_to_length({"input_ids": batch["input_ids"]}, 3, values) is None  # no mask: padding would be read as text
    assert pad_to_length({**batch, "position_ids": torch.tensor([[0, 1]])}, 3, values) is None  # no pad value known
    assert pad_to_length(batch, 1, values) is None  # longer than the length asked
    assert tokenizer_pad_values(object()) is None
