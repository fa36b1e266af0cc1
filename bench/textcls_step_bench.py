"""Time per training step and tokens/s of OETrainer on a text classifier vs plain PyTorch loops, in the same run.

Same model (``minilm``: all-MiniLM-L6-v2 with a fresh 150-way head; ``gru``: the paper's 2-layer GRU classifier),
same batch (``--batch`` CLINC150 train utterances and, for OE, as many WikiText-2 train sentences, tokenized by the
model's tokenizer, truncated to ``--max-length`` tokens), same optimizer (the one the ``Trainer`` builds: ``torch.optim.AdamW``,
fused where torch supports it, ``--lr``, no weight decay; gradients clipped to ``--max-grad-norm`` as the ``Trainer``
does by default). Four steps are timed:

1. plain loop: ``logits = model(**x_in).logits``; ``F.cross_entropy(logits, y)``; backward; clip; ``AdamW.step``.
   The hand loops take the optimizer from ``Trainer.get_optimizer_cls_and_kwargs``, so that the AdamW
   implementation (fused or not) is not part of the difference.
2. plain loop, the OE objective by hand: ONE forward over the rows of ``x_in`` and ``x_out`` concatenated (the two
   batches padded to their common length), ``CE(logits_in, y) + lambda * mean_rows(logsumexp(z_out) - mean(z_out))``
   (cross-entropy from the uniform distribution to ``softmax(z_out)``); backward; clip; step.
3. ``OETrainer.train()`` (``max_steps`` = warm-up + steps; no evaluation, saving or logging), timed step end to step
   end by a callback, so each step includes what the real loop pays around it (collation, batch fetch, the outlier
   stream, clipping, the scheduler), without and with ``outlier_dataset`` (``oe_lambda = lambda``). The train set is
   the batch repeated and read sequentially, so every step sees the same rows; the outlier set is the outlier rows,
   so every outlier batch holds the same sentences.

The machine may be shared, so the methods alternate step by step: after each trainer step the callback runs one step
of the matching hand loop ((1) beside (3) without outliers, (2) beside (3) with them), timed on its own and left
out of the trainer's interval. Run one after the other, the ratios moved between 0.2 and 2.5 on a loaded machine.

``--padding longest`` (default, ``DataCollatorWithPadding``'s) pads each batch to its longest row: the
in-distribution and outlier batches then differ in length; OETrainer pads both to the longer one with the collator's
tokenizer (since commit 77ab885; before, it fell back to two forward passes) and the hand loop (2) does the same, so
both run one pass (the table says which OETrainer ran). ``--padding max_length`` pads everything to ``--max-length``.

Reported: median seconds per step over ``--steps`` steps after ``--warmup`` steps; tokens/s = real (non-padding)
tokens per step / median step time; the ratios (3)/(1) and (3 with OE)/(2) (1.00 = the trainer costs nothing
beyond the hand loop); torch's thread count; the machine's load before and after (``uptime``).

    python bench/textcls_step_bench.py [--model minilm|gru] [--random-init] [--freeze-embeddings] [--steps 10]
        [--warmup 2] [--threads N] [--batch 32] [--max-length 32] [--padding longest|max_length]

``minilm`` needs the checkpoint in the Hugging Face cache (``oe fetch-checkpoint all-minilm-l6-v2``); with
``--random-init`` a randomly initialised BERT of the same shape is used instead (and, when the checkpoint's tokenizer
is not cached either, a word-level tokenizer built from the benchmark's own texts, which gives a few fewer tokens per
row than WordPiece). ``--tiny`` shrinks either model to a toy size (for the smoke test, not for measurements).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from oe_common.training.batch_padding import pad_to_length, tokenizer_pad_values
from oe_common.training.trainer import OETrainer, OETrainingArguments
from oe_text.textcls.hub_checkpoints import MINILM_REPO_ID, MINILM_REVISION
from oe_text.textcls.textcls_data import load_textcls, wikitext_sentences

#: all-MiniLM-L6-v2's shape (its config.json), for --random-init.
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                    max_position_embeddings=512, type_vocab_size=2)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_GRU = dict(embedding_size=16, hidden_size=32)


def load_uptime() -> str:
    """``uptime``'s line (its load averages), or ``os.getloadavg()`` where there is no ``uptime``."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(TrainerCallback):
    """Times ``Trainer.train``'s steps, step end to step end, and runs one step of each hand loop in ``between``
    (timed on its own, and not counted in the trainer's step) after every trainer step: the methods alternate step by
    step, so a change in the machine's load hits all of them alike. The first trainer interval starts at train begin."""

    def __init__(self, device: torch.device, between: dict[str, Callable[[], None]]):
        self.device, self.between = device, between
        self.trainer_times: list[float] = []
        self.times: dict[str, list[float]] = {key: [] for key in between}
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        now = time.perf_counter()
        self.trainer_times.append(now - self.start)
        for key, step in self.between.items():
            begin = time.perf_counter()
            step()
            sync(self.device)
            self.times[key].append(time.perf_counter() - begin)
        self.start = time.perf_counter()


def benchmark_texts(batch: int, data_dir: str | None, seed: int = 0) -> tuple[list[str], list[int], list[str], int]:
    """``batch`` CLINC150 train utterances (a seeded draw over all intents), their labels, ``batch`` WikiText-2 train
    sentences (seeded draw), and the number of intents."""
    clinc = load_textcls("clinc150", data_dir)
    rng = np.random.default_rng(seed)
    train = clinc.splits["train"]
    rows = train.select(sorted(rng.choice(len(train), size=batch, replace=False).tolist()))
    wiki = wikitext_sentences("train", data_dir)
    out = wiki.select(sorted(rng.choice(len(wiki), size=batch, replace=False).tolist()))
    return list(rows["text"]), [int(y) for y in rows["label"]], list(out["text"]), clinc.num_labels


def word_level_tokenizer(texts: Sequence[str]):
    """A lower-casing word-level BERT-style tokenizer (``[CLS] ... [SEP]``) whose vocabulary is ``texts``' words."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.BertPreTokenizer()
    norm = normalizers.BertNormalizer(lowercase=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {w: i for i, w in enumerate(specials + words)}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer, core.pre_tokenizer = norm, pre
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def build_tokenizer(args: argparse.Namespace, texts: Sequence[str]) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION, local_files_only=True)
        return tok, f"{MINILM_REPO_ID}@{MINILM_REVISION[:7]} (WordPiece)"
    except OSError:
        if not args.random_init:
            sys.exit(f"textcls_step_bench: {MINILM_REPO_ID} is not in the Hugging Face cache: place it with "
                     "`oe fetch-checkpoint all-minilm-l6-v2`, or pass --random-init")
    return word_level_tokenizer(texts), "word-level, built from the benchmark texts (checkpoint not cached)"


def build_model(args: argparse.Namespace, tok: Any, num_labels: int) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if args.model == "gru":
        from oe_text.textcls.modeling_gru_classifier import GRUClassifierConfig, GRUForSequenceClassification

        config = GRUClassifierConfig(vocab_size=len(tok), num_labels=num_labels, pad_token_id=tok.pad_token_id,
                                     **(TINY_GRU if args.tiny else {}))
        return GRUForSequenceClassification(config), "GRU classifier (random init, as trained from scratch)"
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if args.random_init or args.tiny:
        shape = {**MINILM_SHAPE, "vocab_size": max(len(tok), MINILM_SHAPE["vocab_size"])}
        if args.tiny:
            shape.update(TINY_BERT, vocab_size=len(tok))
        config = BertConfig(**shape, num_labels=num_labels, pad_token_id=tok.pad_token_id)
        return BertForSequenceClassification(config), "BERT, random init" + (" (tiny)" if args.tiny else " (MiniLM-L6 shape)")
    model = AutoModelForSequenceClassification.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION, num_labels=num_labels,
                                                               local_files_only=True)
    return model, f"{MINILM_REPO_ID}@{MINILM_REVISION[:7]} + new {num_labels}-way head"


def training_args(args: argparse.Namespace, output_dir: str, device: torch.device) -> OETrainingArguments:
    """OETrainer's arguments: no evaluation, saving or logging; constant learning rate; batches read in order."""
    return OETrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
        learning_rate=args.lr, weight_decay=0.0, lr_scheduler_type="constant", max_grad_norm=args.max_grad_norm,
        oe_lambda=args.oe_lambda, train_sampling_strategy="sequential", eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        use_cpu=device.type == "cpu",
    )


def make_optimizer(model: torch.nn.Module, targs: OETrainingArguments) -> torch.optim.Optimizer:
    """The optimizer the Trainer builds from ``targs`` (class and keywords, e.g. ``AdamW(fused=True)``), on the
    trainable parameters in one group (weight decay is 0, so the Trainer's two groups step identically)."""
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(targs)
    return cls([p for p in model.parameters() if p.requires_grad], **{**kwargs, "weight_decay": 0.0})


def plain_loop_step(model0: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor], args: argparse.Namespace,
                    targs: OETrainingArguments, device: torch.device) -> Callable[[], None]:
    """One step of a plain loop on its own copy of ``model0``: zero grads, ``loss_fn(model)``, backward, clip, step."""
    model = copy.deepcopy(model0).to(device).train()
    opt = make_optimizer(model, targs)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()

    return step


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "gru"))
    parser.add_argument("--random-init", action="store_true", help="MiniLM: a random BERT of the same shape (no checkpoint needed)")
    parser.add_argument("--tiny", action="store_true", help="a toy-sized model (smoke test only)")
    parser.add_argument("--freeze-embeddings", action="store_true", help="no gradient / optimizer state for the word embeddings")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (>= 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=32, help="in-distribution rows per step (and as many outlier rows)")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--padding", default="longest", choices=("longest", "max_length"))
    parser.add_argument("--oe-lambda", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clipping in every method (the Trainer's default; 0 = off)")
    parser.add_argument("--data-dir", default=None, help="the corpora (default: $OE_DATA_DIR)")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "batch", "max_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print its table; returns the median seconds per step by method key."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = load_uptime()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    in_texts, in_labels, out_texts, num_labels = benchmark_texts(args.batch, args.data_dir)
    tok, tok_desc = build_tokenizer(args, in_texts + out_texts)
    model0, model_desc = build_model(args, tok, num_labels)
    if args.freeze_embeddings:
        model0.get_input_embeddings().weight.requires_grad_(False)
    n_params = sum(p.numel() for p in model0.parameters())
    n_train = sum(p.numel() for p in model0.parameters() if p.requires_grad)

    def encode(texts: list[str]) -> list[dict[str, list[int]]]:
        enc = tok(texts, truncation=True, max_length=args.max_length)
        return [{k: enc[k][i] for k in enc} for i in range(len(texts))]

    in_rows = [{**row, "labels": y} for row, y in zip(encode(in_texts), in_labels, strict=True)]
    out_rows = encode(out_texts)
    pad_kw = {"padding": "max_length", "max_length": args.max_length} if args.padding == "max_length" else {}
    collator = DataCollatorWithPadding(tok, **pad_kw)
    x_in = {k: v.to(device) for k, v in collator(in_rows).items()}
    y = x_in.pop("labels")
    x_out = {k: v.to(device) for k, v in collator(out_rows).items()}
    joint_len = max(x_in["input_ids"].shape[1], x_out["input_ids"].shape[1])
    pad_values = tokenizer_pad_values(tok)
    joint = {k: torch.cat([a, b]) for (k, a), b in zip(pad_to_length(x_in, joint_len, *pad_values).items(),
                                                        pad_to_length(x_out, joint_len, *pad_values).values(), strict=True)}
    real_in = int(x_in["attention_mask"].sum())
    real_out = int(x_out["attention_mask"].sum())

    results: dict[str, list[float]] = {}

    # (1) and (2): plain PyTorch loops
    def plain_loss(model: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(**x_in).logits, y)

    def plain_oe_loss(model: torch.nn.Module) -> torch.Tensor:
        logits = model(**joint).logits.float()
        z_in, z_out = logits[: args.batch], logits[args.batch:]
        return F.cross_entropy(z_in, y) + args.oe_lambda * (torch.logsumexp(z_out, -1) - z_out.mean(-1)).mean()

    # (3) OETrainer's own loop, each of its steps followed by one step of the matching hand loop (1) or (2)
    concat_used = None
    for key, hand_key, loss_fn, outliers in (("trainer", "plain", plain_loss, None), ("trainer_oe", "plain_oe", plain_oe_loss, out_rows)):
        with tempfile.TemporaryDirectory() as out_dir:
            targs = training_args(args, out_dir, device)
            optimizer_desc = f"{Trainer.get_optimizer_cls_and_kwargs(targs)[0].__name__} ({targs.optim.value})"
            timer = StepTimer(device, {hand_key: plain_loop_step(model0, loss_fn, args, targs, device)})
            trainer = OETrainer(model=copy.deepcopy(model0), args=targs, train_dataset=in_rows * (args.warmup + args.steps),
                                outlier_dataset=outliers, data_collator=collator, callbacks=[timer])
            trainer.train()
            if outliers is not None:
                concat_used = not trainer._warned_no_concat
        results[key] = timer.trainer_times[args.warmup:]
        results[hand_key] = timer.times[hand_key][args.warmup:]
        del trainer, timer
    load_after = load_uptime()

    med = {k: statistics.median(v) for k, v in results.items()}
    L_in, L_out = x_in["input_ids"].shape[1], x_out["input_ids"].shape[1]
    B = args.batch
    rows = [
        ("plain", "(1) plain loop, in-distribution", f"{B}x{L_in}", real_in),
        ("plain_oe", "(2) plain loop, OE by hand (one concatenated pass)", f"{2 * B}x{joint_len}", real_in + real_out),
        ("trainer", "(3) OETrainer.train, no outliers", f"{B}x{L_in}", real_in),
        ("trainer_oe", "(3) OETrainer.train, with outliers (" + ("one concatenated pass" if concat_used else "two passes") + ")",
         f"{B}x{L_in} + {B}x{L_out}", real_in + real_out),
    ]
    print(f"# text-classifier step: OETrainer vs plain PyTorch ({args.model}{', tiny' if args.tiny else ''})")
    print(f"# model: {model_desc}; {n_params / 1e6:.2f}M parameters, {n_train / 1e6:.2f}M trained"
          + (" (word embeddings frozen)" if args.freeze_embeddings else ""))
    print(f"# tokenizer: {tok_desc}; batch {B} CLINC150 train utterances + {B} WikiText-2 train sentences, "
          f"max {args.max_length} tokens, padding={args.padding}; {optimizer_desc} lr {args.lr}, clip {args.max_grad_norm}, lambda {args.oe_lambda}")
    print(f"# {platform.machine()} {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, torch threads {torch.get_num_threads()}, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"# load before: {load_before}")
    print(f"# load after:  {load_after}")
    print("| step | rows x tokens | real tokens/step | median s/step | tokens/s |")
    print("|---|---|---:|---:|---:|")
    for key, label, shape, real in rows:
        print(f"| {label} | {shape} | {real} | {med[key]:.3f} | {real / med[key]:,.0f} |")
    print(f"ratio (3)/(1), no outliers: {med['trainer'] / med['plain']:.2f}")
    print(f"ratio (3 with OE)/(2): {med['trainer_oe'] / med['plain_oe']:.2f}")
    return med


if __name__ == "__main__":
    main()
