"""Tiny models and synthetic data shared by the trainer tests and the multi-process script (no downloads).

Classifier task: 3 classes, sequences of 8 tokens; class k uses tokens 4k+4 .. 4k+7. Outliers use tokens
16 .. 31, which no in-distribution example contains. LM task: in-distribution sequences count upwards mod 16
from a random start, outliers are uniformly random tokens 16 .. 31.
"""

from __future__ import annotations

import numpy as np
import torch

VOCAB = 32
SEQ_LEN = 8


def tiny_bert_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2_lm(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def classifier_rows(n: int, seed: int, outliers: bool = False, with_ids: bool = False) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    if outliers:
        ids = rng.integers(16, VOCAB, (n, SEQ_LEN))
        rows = {"input_ids": ids.tolist(), "attention_mask": np.ones((n, SEQ_LEN), dtype=int).tolist()}
    else:
        labels = rng.integers(0, 3, n)
        ids = 4 + 4 * labels[:, None] + rng.integers(0, 4, (n, SEQ_LEN))
        rows = {"input_ids": ids.tolist(), "attention_mask": np.ones((n, SEQ_LEN), dtype=int).tolist(), "labels": labels.tolist()}
    if with_ids:
        rows["id"] = list(range(n))
    return rows


def lm_rows(n: int, seed: int, outliers: bool = False, seq_len: int = SEQ_LEN) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    if outliers:
        ids = rng.integers(16, VOCAB, (n, seq_len))
    else:
        ids = (rng.integers(0, 16, (n, 1)) + np.arange(seq_len)[None, :]) % 16
    rows = {"input_ids": ids.tolist(), "attention_mask": np.ones((n, seq_len), dtype=int).tolist()}
    if not outliers:
        rows["labels"] = ids.tolist()
    return rows


def hf_dataset(rows: dict[str, list]):
    import datasets

    return datasets.Dataset.from_dict(rows)
