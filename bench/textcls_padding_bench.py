"""Real (non-padding) tokens per second of the text-classifier recipe's training steps: batches padded to
``--max-length`` (before) vs to their longest text (``--padding longest``) vs that plus ``--group-by-length``.

The steps are those of CLINC150's ``full`` preset (``preset_config("full", dataset="clinc150", model=...)``: MiniLM
with frozen word embeddings, head at 10x the learning rate, batch 32, max_length 24; OE: + 32 WikiText-2 train
sentences of the preset's 20,000), built by the recipe's own ``TextClsExperiment.make_trainer`` (its collator, sampler,
optimizer): for each method a copy of the same model, and per stage (``baseline``: in-distribution only; ``oe``: in +
outliers, ONE forward pass) ``--steps`` steps of ``trainer.training_step`` + gradient clipping + optimizer step.

Batches: each method's own training dataloader (the Trainer's seeded sampler; ``group_by_length``: its
``LengthGroupedSampler``) is collated for one epoch and the batches at the same ``--steps`` random positions are kept,
so that a grouped epoch's long and short batches are sampled alike; ``max_length`` and ``longest`` then see the very
same texts. Outlier batches: each OE trainer's own seeded outlier stream (the same for every method). The methods
alternate step by step (their order rotated), so a change of the machine's load hits all of them alike; one untimed
warm-up step each. Reported per stage and method: rows x mean padded length, real tokens per step, median seconds per
step, real tokens/s = all real tokens / all step seconds, and the ratio of that to ``max_length``'s.

    python bench/textcls_padding_bench.py [--model minilm|gru] [--steps 16] [--threads 1] [--tiny]

``minilm`` needs the checkpoint in the Hugging Face cache (``oe fetch-checkpoint all-minilm-l6-v2``; the GRU reads its
tokenizer too). ``--tiny``: a toy GRU and a few hundred texts, for the smoke test only.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oe_common.experiments.experiment import Stage  # noqa: E402
from oe_text.textcls import textcls_experiment as tx  # noqa: E402
from oe_text.lm.data import seeded_subset_indices  # noqa: E402
from oe_text.textcls.textcls_data import load_textcls, wikitext_sentences  # noqa: E402

METHODS = (("max_length", "max_length", False), ("longest", "longest", False), ("longest + group_by_length", "longest", True))


def load_uptime() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def build_data(cfg: tx.TextClsConfig, data_dir: str | None, tiny: bool) -> types.SimpleNamespace:
    """What make_trainer reads: the tokenizer, the tokenized CLINC150 train split and WikiText-2 outliers (as the
    recipe's load_data makes them, without the evaluation sets)."""
    exp = tx.TextClsExperiment(cfg)
    train = load_textcls(cfg.dataset, data_dir, seed=cfg.seed).splits["train"]
    if tiny:
        train = train.select(range(300))
    tokenizer = tx.load_tokenizer(cfg.model)
    tokenizer.padding_side = "right"

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=cfg.max_length)

    sentences = wikitext_sentences("train", data_dir)
    sentences = sentences.select(seeded_subset_indices(len(sentences), 300 if tiny else cfg.outlier_examples, cfg.seed + 1))
    del exp
    return types.SimpleNamespace(
        tokenizer=tokenizer, train=train.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels").with_format("torch"),
        outliers=sentences.map(tokenize, batched=True, remove_columns=["text"]).with_format("torch"), extra_outliers=None)


def make_model(cfg: tx.TextClsConfig, data: Any, tiny: bool) -> torch.nn.Module:
    exp = tx.TextClsExperiment(cfg)
    exp.data = types.SimpleNamespace(label_names=[str(i) for i in range(int(max(data.train["labels"])) + 1)], tokenizer=data.tokenizer)
    torch.manual_seed(0)
    if tiny:
        from oe_text import GRUClassifierConfig, GRUForSequenceClassification

        return GRUForSequenceClassification(GRUClassifierConfig(vocab_size=len(data.tokenizer), embedding_size=8, hidden_size=8,
                                                                num_labels=len(exp.data.label_names)))
    return exp.build_model(Stage("baseline", cfg.baseline_lr))


class Runner:
    """One method in one stage: its trainer (from make_trainer), optimizer, scheduler and its sampled batches."""

    def __init__(self, cfg: tx.TextClsConfig, data: Any, model0: torch.nn.Module, stage: Stage, positions: Sequence[int], out: str):
        exp = tx.TextClsExperiment(cfg)
        exp.data = data
        self.model = copy.deepcopy(model0)
        self.trainer = exp.make_trainer(stage, self.model, Path(out))
        self.trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train in newer transformers
        batches = list(self.trainer.get_train_dataloader())
        self.batches = [batches[p] for p in positions]
        self.real: list[int] = []
        self.padded: list[int] = []
        self.times: list[float] = []
        self._outlier_tokens = 0  # real tokens of the outlier batch the last step drew
        if self.trainer.outlier_dataset is not None:
            draw = self.trainer.next_outlier_batch

            def counted() -> dict[str, torch.Tensor]:
                batch = draw()
                self._outlier_tokens = int(batch["attention_mask"].sum())
                return batch

            self.trainer.next_outlier_batch = counted
        self.shapes: list[tuple[int, int]] = []
        self.model.register_forward_pre_hook(self._shape, with_kwargs=True)

    def _shape(self, _module, _args, kwargs) -> None:
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    def step(self, i: int, timed: bool) -> None:
        trainer, batch = self.trainer, self.batches[i]
        self.shapes.clear()
        start = time.perf_counter()
        trainer.training_step(self.model, batch)
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        if len(self.shapes) != 1:
            raise RuntimeError(f"expected ONE forward pass per step, got {self.shapes}")
        if timed:
            rows, length = self.shapes[0]
            self.times.append(seconds)
            self.real.append(int(batch["attention_mask"].sum()) + self._outlier_tokens)
            self.padded.append(rows * length)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "gru"))
    parser.add_argument("--steps", type=int, default=16, help="timed steps per method and stage")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the full preset's measurement used 1)")
    parser.add_argument("--stages", default="baseline,oe")
    parser.add_argument("--tiny", action="store_true", help="a toy GRU on a few hundred texts (smoke test only)")
    parser.add_argument("--data-dir", default=None, help="the corpora (default: $OE_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Runs the benchmark and prints its tables; returns ``{stage: {method: real tokens/s}}``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load_uptime()
    base = tx.preset_config("full", dataset="clinc150", model="gru" if args.tiny else args.model)
    data = build_data(base, args.data_dir, args.tiny)
    model0 = make_model(base, data, args.tiny)
    n_batches = -(-len(data.train) // base.batch_size)
    positions = sorted(np.random.default_rng(0).choice(n_batches, size=min(args.steps + 1, n_batches), replace=False).tolist())
    lengths_in = [len(x) for x in data.train["input_ids"]]
    lengths_out = [len(x) for x in data.outliers["input_ids"]]
    results: dict[str, dict[str, float]] = {}
    print(f"# CLINC150 `full` preset steps, {args.model if not args.tiny else 'toy GRU (--tiny)'}: batch {base.batch_size} "
          f"(+ {base.batch_size} outliers in oe), max_length {base.max_length}, lr {base.baseline_lr} / {base.oe_lr}, head x{base.head_lr_scale}, "
          f"word embeddings {'frozen' if base.freeze_embeddings else 'trained'}")
    print(f"# texts: {len(lengths_in):,} CLINC150 train, mean {np.mean(lengths_in):.1f} tokens (max {max(lengths_in)}); "
          f"{len(lengths_out):,} WikiText-2 outliers, mean {np.mean(lengths_out):.1f} tokens, "
          f"{np.mean(np.array(lengths_out) == base.max_length) * 100:.0f}% at max_length")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); "
          f"{args.steps} timed steps per method at the same random batch positions of the epoch, methods alternating")
    with tempfile.TemporaryDirectory() as out:
        for stage_name in args.stages.split(","):
            uses_outliers = stage_name == "oe"
            stage = Stage(stage_name, base.oe_lr if uses_outliers else base.baseline_lr, max_steps=1000,
                          oe_lambda=base.oe_lambda if uses_outliers else None)
            runners = {}
            for label, padding, group in METHODS:
                cfg = tx.preset_config("full", dataset="clinc150", model=base.model, padding=padding, group_by_length=group)
                runners[label] = Runner(cfg, data, model0, stage, positions, os.path.join(out, f"{stage_name}_{padding}_{group}"))
            for i in range(len(positions)):
                order = list(runners.values())
                order = order[i % len(order):] + order[: i % len(order)]
                for runner in order:
                    runner.step(i, timed=i > 0)  # the first position: one untimed warm-up step each
            print(f"\n## stage `{stage_name}`" + (" (in-distribution + outliers, one forward pass per step)" if uses_outliers else ""))
            print("| padding | rows x mean length | real tokens/step | padded tokens/step | median s/step | real tokens/s | ratio to max_length |")
            print("|---|---|---:|---:|---:|---:|---:|")
            speed = {label: sum(r.real) / sum(r.times) for label, r in runners.items()}
            for label, r in runners.items():
                rows = 2 * base.batch_size if uses_outliers else base.batch_size
                print(f"| {label} | {rows} x {np.mean(r.padded) / rows:.1f} | {np.mean(r.real):.0f} | {np.mean(r.padded):.0f} | "
                      f"{statistics.median(r.times):.3f} | {speed[label]:,.0f} | {speed[label] / speed['max_length']:.2f} |")
            results[stage_name] = speed
            del runners
    print(f"\n# load average before: {load_before}; after: {load_uptime()}")
    return results


if __name__ == "__main__":
    main()
