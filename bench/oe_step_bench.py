"""Cost of one OE training step vs the same tokens through a plain language-model step, measured in the same run.

Reference: ``model(input_ids=x, labels=x).loss.backward()`` on ``2B`` windows (the model's own shifted
cross-entropy). OE: :meth:`oe_common.trainer.OETrainer.compute_loss` + backward on ``B`` in-distribution windows
paired with ``B`` outlier windows (one concatenated forward pass, cross-entropy on the first half, the
cross-entropy-to-uniform term on every token of the second). Both see the same number of tokens, so a ratio near 1
means the OE term itself costs little; the breakdown times the two loss terms alone on fixed logits.

    python bench/oe_step_bench.py [--kind transformer|lstm] [--preset tiny] [--vocab 10000] [--batch 32] [--seq-len 70]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from oe_common.losses import oe_uniform_loss
from oe_common.trainer import OETrainer, OETrainingArguments
from oe_text.models import build_language_model


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="transformer", choices=("transformer", "lstm"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=32, help="B: in-distribution windows (the reference uses 2B)")
    parser.add_argument("--seq-len", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_language_model(args.kind, args.vocab, args.preset).to(device).train()
    shape = (args.batch, args.seq_len + 1)
    x_in = torch.randint(0, args.vocab, shape, device=device)
    x_out = torch.randint(0, args.vocab, shape, device=device)
    both = torch.cat([x_in, x_out])

    def reference_step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=both, labels=both).loss.backward()

    with tempfile.TemporaryDirectory() as out:
        targs = OETrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=1, report_to="none",
                                    use_cpu=device.type == "cpu", disable_tqdm=True)
        outliers = [{"input_ids": row} for row in x_out.cpu()]
        trainer = OETrainer(model=model, args=targs, train_dataset=[{"input_ids": r, "labels": r} for r in x_in.cpu()],
                            outlier_dataset=outliers)
        trainer.model.train()
        inputs = {"input_ids": x_in, "labels": x_in}

        def oe_step() -> None:
            model.zero_grad(set_to_none=True)
            trainer.compute_loss(model, inputs).backward()

        reference = median_time(reference_step, args.repeats)
        oe = median_time(oe_step, args.repeats)

        logits = torch.randn(args.batch, args.seq_len + 1, args.vocab, device=device, requires_grad=True)

        def ce_term() -> None:  # the trainer's own in-distribution term (causal shift by the labels)
            trainer._cross_entropy(model, logits, x_in).backward()

        def oe_term() -> None:
            oe_uniform_loss(logits).backward()

        ce_time, oe_time = median_time(ce_term, args.repeats), median_time(oe_term, args.repeats)
    print(f"# OE step vs plain LM step ({args.kind}/{args.preset}, vocab {args.vocab}, {args.batch}+{args.batch} x {args.seq_len + 1} tokens)")
    print(f"# {platform.machine()} {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| step | median ms | ratio to reference |")
    print("|---|---|---|")
    print(f"| reference: model loss on 2B windows | {reference * 1e3:.1f} | 1.00 |")
    print(f"| OETrainer.compute_loss on B + B | {oe * 1e3:.1f} | {oe / reference:.2f} |")
    print(f"| (alone) cross-entropy on B windows of logits | {ce_time * 1e3:.1f} | {ce_time / reference:.2f} |")
    print(f"| (alone) OE uniform term on B windows of logits | {oe_time * 1e3:.1f} | {oe_time / reference:.2f} |")


if __name__ == "__main__":
    main()
