"""Argument parsing shared by ``recipes/mnist_oe.py`` and ``recipes/cifar10_oe.py``."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from oe_common.data_dir import exit_on_data_error
from oe_common.arg_types import non_negative_float, non_negative_int, positive_float, positive_int
from oe_common.run_folder import add_run_folder_args, recipe_guard

from .pipeline import PRESET_NAMES, preset_config, run_vision_oe

_DESCRIPTIONS = {
    "mnist": "MNIST ConvNet: MSP baseline, OE fine-tuning, confidence branch (+ OE), calibration; paper Tables 3, 7, 8, 9.",
    "cifar10": "CIFAR-10 Wide ResNet: MSP baseline, OE fine-tuning on iSUN, calibration; paper Tables 1, 2, 7 (3 with --branch).",
}


def build_parser(dataset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{dataset}_oe.py", description=_DESCRIPTIONS[dataset])
    presets = PRESET_NAMES[dataset]
    parser.add_argument("--preset", choices=presets, default="tiny",
                        help="test: seconds (smoke); tiny: CPU in minutes; " + ("short: one GPU, limited time; " if "short" in presets else "") + "paper: the paper's settings (GPU)")
    parser.add_argument("--data-dir", default=None, help="corpora folder (default: $OE_DATA_DIR)")
    parser.add_argument("--cifar-dir", default=None, help="folder with CIFAR-10's train-0*.npz / test.npz (default: $OE_CIFAR10_DIR)")
    parser.add_argument("--output-dir", default=None, help=f"where results go (default: runs/{dataset}_<preset>)")
    add_run_folder_args(parser)
    parser.add_argument("--seed", type=non_negative_int, default=None)
    if dataset == "mnist":
        parser.add_argument("--oe-source", choices=("cifar10", "isun", "auto"), default=None,
                            help="OE outliers: CIFAR-10 train in gray 28x28 (paper preset) or iSUN (test/tiny presets)")
    parser.add_argument("--oe-from-scratch", action="store_true", default=None, help="also train a model with OE from scratch")
    parser.add_argument("--branch", dest="branch", action="store_true", default=None, help="run the confidence-branch stages (Table 3)")
    parser.add_argument("--no-branch", dest="branch", action="store_false", help="skip the confidence-branch stages")
    parser.add_argument("--no-calibration", dest="calibration", action="store_false", default=None, help="skip the calibration stage")
    parser.add_argument("--baseline-epochs", type=positive_float, default=None)
    parser.add_argument("--oe-epochs", type=positive_float, default=None)
    parser.add_argument("--baseline-max-steps", type=positive_int, default=None)
    parser.add_argument("--oe-max-steps", type=positive_int, default=None)
    parser.add_argument("--baseline-max-minutes", type=positive_float, default=None,
                        help="wall-clock budget (minutes) of each from-scratch stage (baseline, oe_scratch, branch): re-planned to fit, hard stop at the budget")
    parser.add_argument("--oe-max-minutes", type=positive_float, default=None, help="the same for each fine-tuning stage (oe, branch_oe)")
    parser.add_argument("--lr", type=positive_float, default=None, help="learning rate of the from-scratch stages")
    parser.add_argument("--oe-lr", type=positive_float, default=None, help="learning rate of the fine-tuning stages")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="in-distribution images per step")
    parser.add_argument("--oe-batch-size", type=positive_int, default=None, help="outliers per step")
    parser.add_argument("--oe-lambda", type=non_negative_float, default=None)
    parser.add_argument("--train-size", type=positive_int, default=None, help="cap on the training images (after the hold-out)")
    parser.add_argument("--test-size", type=positive_int, default=None, help="cap on the test images (smoke runs only)")
    parser.add_argument("--ood-size", type=positive_int, default=None, help="cap per anomaly set")
    parser.add_argument("--n-draws", type=positive_int, default=None)
    parser.add_argument("--allow-small-sets", action="store_true", default=None,
                        help="use an anomaly set with fewer than len(test) // 5 images whole (labelled in the tables) instead of stopping")
    parser.add_argument("--num-workers", type=non_negative_int, default=None, help="DataLoader workers")
    parser.add_argument("--no-save-models", dest="save_models", action="store_false", default=None)
    parser.add_argument("--save-steps", type=positive_int, default=None, help="a resumable checkpoint every this many steps of each stage (default: the preset's)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (CPU runs only)")
    return parser


@exit_on_data_error
def main(dataset: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(dataset)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = {
        key: getattr(args, key, None)
        for key in (
            "seed", "oe_source", "oe_from_scratch", "branch", "calibration", "baseline_epochs", "oe_epochs", "baseline_max_steps",
            "oe_max_steps", "baseline_max_minutes", "oe_max_minutes", "lr", "oe_lr", "batch_size", "oe_batch_size", "oe_lambda", "train_size", "test_size", "ood_size", "n_draws", "allow_small_sets",
            "num_workers", "save_models", "save_steps", "cifar_dir",
        )
    }
    cfg = preset_config(dataset, args.preset, **overrides)
    output_dir = args.output_dir or os.path.join("runs", f"{dataset}_{args.preset}")
    with recipe_guard(parser.prog, output_dir, argv, None if argv is None else f"recipes/{parser.prog}"):
        result = run_vision_oe(cfg, output_dir, data_dir=args.data_dir, overwrite=args.overwrite, resume=args.resume)
    print(result["paths"]["markdown"].read_text())
    print(f"results written to {output_dir}")
    return result
