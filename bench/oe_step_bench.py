"""Cost of one OE training step vs the same tokens through a plain language-model step, measured in the same run.

Reference: ``model(input_ids=x, labels=x).loss.backward()`` on ``2B`` windows (the model's own shifted
cross-entropy). OE: :meth:`oe_common.training.trainer.OETrainer.compute_loss` + backward on ``B`` in-distribution windows
paired with ``B`` outlier windows (one concatenated forward pass; for a language model with the default losses both
terms come from :func:`oe_common.maths.losses.joint_token_oe_loss` over the joint logits). Both see the same number of
tokens, so a ratio near 1 means the OE term itself costs little; the breakdown times the loss terms alone on fixed
logits. The two steps are timed alternately (reference, OE, reference, ...) so that load on a shared machine hits
both alike; the ratio is of the medians.

    python bench/oe_step_bench.py [--kind transformer|lstm] [--preset tiny] [--vocab 10000] [--batch 32] [--seq-len 70]
                                  [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from oe_common.maths.losses import joint_token_oe_loss, oe_uniform_loss
from oe_common.training.trainer import OETrainer, OETrainingArguments
from oe_text.lm.models import build_language_model


def median_times(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, run in turn ``repeats`` times after ``warmup`` turns."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="transformer", choices=("transformer", "lstm"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=32, help="B: in-distribution windows (the reference uses 2B)")
    parser.add_argument("--seq-len", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

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

        reference, oe = median_times([reference_step, oe_step], args.repeats)

        logits = torch.randn(args.batch, args.seq_len + 1, args.vocab, device=device, requires_grad=True)
        joint_logits = torch.randn(2 * args.batch, args.seq_len + 1, args.vocab, device=device, requires_grad=True)
        shifted = torch.nn.functional.pad(x_in[:, 1:], (0, 1), value=-100)

        def ce_term() -> None:  # the trainer's own in-distribution term (causal shift by the labels)
            trainer._cross_entropy(model, logits, x_in).backward()

        def oe_term() -> None:
            oe_uniform_loss(logits).backward()

        def ref_term() -> None:  # what the reference step computes after the model: cross-entropy on all 2B windows
            trainer._cross_entropy(model, joint_logits, both).backward()

        def joint_term() -> None:
            joint_token_oe_loss(joint_logits, shifted, oe_weight=trainer.args.oe_lambda)[0].backward()

        ce_time, oe_time, ref_time, joint_time = median_times([ce_term, oe_term, ref_term, joint_term], args.repeats)
    print(f"# OE step vs plain LM step ({args.kind}/{args.preset}, vocab {args.vocab}, {args.batch}+{args.batch} x {args.seq_len + 1} tokens)")
    print(f"# {platform.machine()} {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| step | median ms | ratio to reference |")
    print("|---|---|---|")
    print(f"| reference: model loss on 2B windows | {reference * 1e3:.1f} | 1.00 |")
    print(f"| OETrainer.compute_loss on B + B | {oe * 1e3:.1f} | {oe / reference:.2f} |")
    print(f"| (alone) cross-entropy on B windows of logits | {ce_time * 1e3:.1f} | {ce_time / reference:.2f} |")
    print(f"| (alone) OE uniform term on B windows of logits | {oe_time * 1e3:.1f} | {oe_time / reference:.2f} |")
    print(f"| (alone) cross-entropy on 2B windows of logits | {ref_time * 1e3:.1f} | {ref_time / reference:.2f} |")
    print(f"| (alone) joint_token_oe_loss on B + B windows of logits | {joint_time * 1e3:.1f} | {joint_time / reference:.2f} |")


if __name__ == "__main__":
    main()
