"""A few OE training steps of a tiny classifier, then scores and an OOD table; one JSON report per process.

Runs unchanged as::

    python tests/_mp_train_script.py --out DIR
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 tests/_mp_train_script.py --out DIR
    accelerate launch tests/_mp_train_script.py --out DIR

Each process writes ``DIR/rank{R}.json`` (world size, the ids of the outlier examples it trained on, its scores
and table) and ``DIR/weights{R}.pt`` (its final weights); process 0 also saves the model to ``DIR/model``.
Used by tests/test_trainer_multiprocess.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch
from transformers import default_data_collator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _oe_tiny import classifier_rows, hf_dataset, tiny_bert_classifier  # noqa: E402

from oe_common.training.callbacks import TimeBudgetCallback  # noqa: E402
from oe_common.training.trainer import OETrainer, OETrainingArguments  # noqa: E402

N_EVAL_IN, N_EVAL_OUT = 13, 11  # not multiples of 2 processes x batch 4: the last batches get padded


def eval_sets():
    return hf_dataset(classifier_rows(N_EVAL_IN, seed=3)), hf_dataset(classifier_rows(N_EVAL_OUT, seed=4, outliers=True))


def budget_callbacks(over_at_step: int, fit: bool) -> list[TimeBudgetCallback]:
    """``[]``, or a time budget with a fake clock that differs between the processes:

    * ``over_at_step``: a 1-second budget whose clock reads 0 except on process 1 from the end of that step;
    * ``fit``: a 10-second ``fit_schedule`` budget (4 probe steps) whose clock ticks 0.5 s per step on process 0 and
      1 s on process 1, so the two would re-plan to 18 and 9 steps on their own.
    """
    reads, rank = itertools.count(), int(os.environ.get("RANK", "0"))  # read 0: train begin; read k: end of step k
    if fit:
        return [TimeBudgetCallback(10.0, fit_schedule=True, probe_steps=4, clock=lambda: next(reads) * (1.0 if rank == 1 else 0.5))]
    if not over_at_step:
        return []
    return [TimeBudgetCallback(1.0, clock=lambda: 1e9 if rank == 1 and next(reads) >= over_at_step else 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--two-forwards", action="store_true", help="oe_concat_forward=False")
    parser.add_argument("--rank1-over-budget-at", type=int, default=0,
                        help="a time budget whose (fake) clock runs out on process 1 only, at the end of this step")
    parser.add_argument("--fit-budget", action="store_true", help="a fit_schedule time budget whose clock runs twice as fast on process 1")
    opts = parser.parse_args()
    out = Path(opts.out)
    torch.set_num_threads(1)

    seen: list[int] = []

    def recording_collator(features):  # outlier collator: records which outlier examples this process used
        seen.extend(int(f["id"]) for f in features)
        return default_data_collator([{k: v for k, v in f.items() if k != "id"} for f in features])

    args = OETrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=opts.steps, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
        logging_steps=2, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        use_cpu=not torch.cuda.is_available(), oe_concat_forward=not opts.two_forwards,
    )
    trainer = OETrainer(
        model=tiny_bert_classifier(), args=args,
        train_dataset=hf_dataset(classifier_rows(64, seed=1)),
        outlier_dataset=hf_dataset(classifier_rows(40, seed=2, outliers=True, with_ids=True)),
        outlier_data_collator=recording_collator,
        callbacks=budget_callbacks(opts.rank1_over_budget_at, opts.fit_budget),
    )
    seen.clear()  # the construction-time check drew one batch from a throw-away stream
    trainer.train()
    outlier_ids = list(seen)

    test_in, test_out = eval_sets()
    scores = trainer.compute_scores(test_in, "msp").tolist()
    table = trainer.evaluate_ood(test_in, {"random": test_out}, score="msp", n_draws=3)
    rank = trainer.args.process_index
    report = {
        "rank": rank, "world_size": trainer.args.world_size, "outlier_ids": outlier_ids, "scores_in": scores,
        "table": table.to_dict(), "log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, out / f"weights{rank}.pt")
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out / "model")
    trainer.accelerator.end_training()  # destroys the process group: without it, exits sometimes abort


if __name__ == "__main__":
    main()
