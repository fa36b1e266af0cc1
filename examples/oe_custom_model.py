"""Outlier Exposure on a model built from a local config (no download): a complete, runnable example.

A tiny BERT sequence classifier (``--model classifier``) or a tiny GPT-2 language model (``--model causal_lm``)
is trained on synthetic in-distribution data with OE on synthetic outliers, then evaluated against unseen
anomalies with the paper's 1:5 base rate. Replace ``make_data`` with your own tokenized datasets.

    python examples/oe_custom_model.py --model causal_lm --max-steps 200
    python examples/oe_custom_model.py --baseline                      # the MSP baseline: same trainer, no outliers
    accelerate launch examples/oe_custom_model.py --max-steps 200      # GPUs, as configured by `accelerate config`
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/oe_custom_model.py --max-steps 200   # 2 CPU processes

(``accelerate launch --cpu --num_processes 2`` starts a single process; use torchrun for several CPU processes.)
"""

from __future__ import annotations

import argparse

import datasets
import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    default_data_collator,
)

from oe_common.training.trainer import OETrainer, OETrainingArguments

VOCAB, SEQ_LEN, NUM_CLASSES = 64, 16, 4


def make_model(kind: str, seed: int) -> torch.nn.Module:
    """A randomly initialised model from a local config: nothing is downloaded."""
    torch.manual_seed(seed)
    if kind == "classifier":
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=SEQ_LEN, num_labels=NUM_CLASSES,
        )
        return BertForSequenceClassification(config)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(config)


def make_data(kind: str, n: int, seed: int, source: str) -> datasets.Dataset:
    """Synthetic token sequences of length SEQ_LEN.

    ``source``: "in" (tokens 0..31; classifier: class k uses tokens 8k..8k+7; LM: counting sequences mod 32),
    "outlier" (OE training outliers: uniform tokens 32..63) or "anomaly" (test anomalies, unseen in training:
    in-distribution sequences with half of their tokens replaced by tokens 32..63).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    if kind == "classifier":
        ids = 8 * labels[:, None] + rng.integers(0, 8, (n, SEQ_LEN))
    else:
        ids = (rng.integers(0, 32, (n, 1)) + np.arange(SEQ_LEN)[None, :]) % 32
    if source == "outlier":
        ids = rng.integers(32, VOCAB, (n, SEQ_LEN))
    elif source == "anomaly":
        replace = rng.random((n, SEQ_LEN)) < 0.5
        ids = np.where(replace, rng.integers(32, VOCAB, (n, SEQ_LEN)), ids)
    columns = {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()}
    if source == "in":
        columns["labels"] = labels.tolist() if kind == "classifier" else ids.tolist()
    return datasets.Dataset.from_dict(columns)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["classifier", "causal_lm"], default="classifier")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="in-distribution examples per device and step")
    parser.add_argument("--oe-lambda", type=float, default=0.5)
    parser.add_argument("--oe-loss", choices=["uniform", "energy"], default="uniform")
    parser.add_argument("--baseline", action="store_true", help="train without outliers (the MSP baseline)")
    parser.add_argument("--output-dir", default="outputs/oe_custom_model")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    opts = parse_args(argv)
    args = OETrainingArguments(
        output_dir=opts.output_dir,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=64,
        max_steps=opts.max_steps,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        logging_steps=max(1, opts.max_steps // 5),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=opts.seed,
        oe_lambda=opts.oe_lambda,
        oe_loss=opts.oe_loss,
        oe_batch_ratio=1.0,  # 2.0 for the paper's vision setting (128 in + 256 outliers)
    )
    trainer = OETrainer(
        model=make_model(opts.model, opts.seed),
        args=args,
        train_dataset=make_data(opts.model, 2048, seed=1, source="in"),
        outlier_dataset=None if opts.baseline else make_data(opts.model, 4096, seed=2, source="outlier"),
        data_collator=default_data_collator,
    )
    trainer.train()
    score = "msp" if opts.model == "classifier" else "nll"
    table = trainer.evaluate_ood(
        make_data(opts.model, 500, seed=3, source="in"),
        # "half-replaced" is unlike anything seen in training; "random" comes from the OE outliers' distribution
        {"half-replaced": make_data(opts.model, 200, seed=4, source="anomaly"), "random": make_data(opts.model, 200, seed=5, source="outlier")},
        score=score,
        recall_level=0.95,
    )
    if trainer.is_world_process_zero():
        print(f"{'baseline' if opts.baseline else 'OE'} ({opts.model}, score={score}, {opts.max_steps} steps)")
        print(table.to_markdown())
    return table


if __name__ == "__main__":
    try:
        main()
    finally:
        # Tear the process group down (torchrun / accelerate launch); without it ~1 run in 3 ends with SIGABRT.
        from accelerate import PartialState

        PartialState().destroy_process_group()
