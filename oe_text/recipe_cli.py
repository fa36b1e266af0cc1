"""Argument parsing shared by ``recipes/ptb_word_oe.py`` and ``recipes/ptb_char_oe.py``."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

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
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--baseline-max-steps", type=int, default=None)
    parser.add_argument("--oe-max-steps", type=int, default=None)
    parser.add_argument("--baseline-max-minutes", type=float, default=None,
                        help="wall-clock budget of baseline training (minutes): re-planned to fit, hard stop at the budget, so that a fixed-length GPU session still evaluates")
    parser.add_argument("--oe-max-minutes", type=float, default=None, help="the same for OE fine-tuning")
    parser.add_argument("--baseline-epochs", type=float, default=None)
    parser.add_argument("--oe-epochs", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--oe-lambda", type=float, default=None)
    parser.add_argument("--oe-loss", choices=("uniform", "energy"), default=None)
    parser.add_argument("--n-draws", type=int, default=None)
    choices = [p for p in PROTOCOLS if level == "char" or p in DEFAULT_PROTOCOLS["word"]]
    parser.add_argument("--protocols", nargs="+", choices=choices, default=None,
                        help=f"EWT protocols to evaluate, the first is the headline (default: {' '.join(DEFAULT_PROTOCOLS[level])}; see docs/text.md)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs only)")
    return parser


def main(level: str, argv: Sequence[str] | None = None) -> dict:
    args = build_parser(level).parse_args(argv)
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
        "protocols": tuple(args.protocols) if args.protocols else None,
    }
    cfg = preset_config(level, args.preset, **overrides)
    output_dir = args.output_dir or os.path.join("runs", f"ptb_{level}_{args.preset}")
    result = run_text_oe(cfg, output_dir, data_dir=args.data_dir)
    if "paths" in result:
        print(result["paths"]["markdown"].read_text())
        print(f"results written to {output_dir}")
    return result
