"""Argument parsing shared by ``recipes/ptb_word_oe.py`` and ``recipes/ptb_char_oe.py``."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from oe_common.data_dir import exit_on_data_error
from oe_common.arg_types import non_negative_float, non_negative_int, positive_float, positive_int
from oe_common.run_folder import add_run_folder_args, recipe_guard

from .data import DEFAULT_PROTOCOLS, PROTOCOLS
from .pipeline import PRESET_NAMES, preset_config, run_text_oe


def build_parser(level: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"ptb_{level}_oe.py",
        description=f"PTB {level}-level LM: baseline, OE fine-tuning on WikiText-2, evaluation on the English Web Treebank.",
    )
    parser.add_argument("--preset", choices=PRESET_NAMES, default="tiny", help="tiny: CPU in minutes; paper: full GPU run; test: seconds (smoke)")
    parser.add_argument("--data-dir", default=None, help="corpora folder (default: $OE_DATA_DIR)")
    parser.add_argument("--output-dir", default=None, help=f"where results go (default: runs/ptb_{level}_<preset>)")
    parser.add_argument("--model", choices=("lstm", "transformer"), default=None, help="model family (default: the preset's; paper: lstm, tiny/test: transformer)")
    parser.add_argument("--model-preset", default=None, help="size preset of oe_text.models (default: the preset's)")
    add_run_folder_args(parser)
    parser.add_argument("--seed", type=non_negative_int, default=None)
    parser.add_argument("--baseline-max-steps", type=positive_int, default=None)
    parser.add_argument("--oe-max-steps", type=positive_int, default=None)
    parser.add_argument("--baseline-max-minutes", type=positive_float, default=None,
                        help="wall-clock budget of baseline training (minutes): re-planned to fit, hard stop at the budget, so that a fixed-length GPU session still evaluates")
    parser.add_argument("--oe-max-minutes", type=positive_float, default=None, help="the same for OE fine-tuning")
    parser.add_argument("--baseline-epochs", type=positive_float, default=None)
    parser.add_argument("--oe-epochs", type=positive_float, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--oe-lambda", type=non_negative_float, default=None)
    parser.add_argument("--oe-loss", choices=("uniform", "energy"), default=None)
    parser.add_argument("--n-draws", type=positive_int, default=None)
    parser.add_argument("--allow-small-sets", action="store_true", default=None,
                        help="use an EWT domain with fewer than n_in // 5 windows whole (labelled in the tables) instead of stopping")
    choices = [p for p in PROTOCOLS if level == "char" or p in DEFAULT_PROTOCOLS["word"]]
    parser.add_argument("--protocols", nargs="+", choices=choices, default=None,
                        help=f"EWT protocols to evaluate, the first is the headline (default: {' '.join(DEFAULT_PROTOCOLS[level])}; see docs/text.md)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (CPU runs only)")
    return parser


@exit_on_data_error
def main(level: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(level)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = {
        "model": args.model,
        "model_preset": args.model_preset,
        "seed": args.seed,
        "baseline_max_steps": args.baseline_max_steps,
        "oe_max_steps": args.oe_max_steps,
        "baseline_max_minutes": args.baseline_max_minutes,
        "oe_max_minutes": args.oe_max_minutes,
        "baseline_epochs": args.baseline_epochs,
        "oe_epochs": args.oe_epochs,
        "batch_size": args.batch_size,
        "oe_lambda": args.oe_lambda,
        "oe_loss": args.oe_loss,
        "n_draws": args.n_draws,
        "allow_small_sets": args.allow_small_sets,
        "protocols": tuple(args.protocols) if args.protocols else None,
    }
    cfg = preset_config(level, args.preset, **overrides)
    output_dir = args.output_dir or os.path.join("runs", f"ptb_{level}_{args.preset}")
    with recipe_guard(parser.prog, output_dir, argv, None if argv is None else f"recipes/{parser.prog}"):
        result = run_text_oe(cfg, output_dir, data_dir=args.data_dir, overwrite=args.overwrite, resume=args.resume)
    if "paths" in result:
        print(result["paths"]["markdown"].read_text())
        print(f"results written to {output_dir}")
    return result
