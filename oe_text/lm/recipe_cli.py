"""Command line of ``recipes/ptb_word_oe.py`` and ``recipes/ptb_char_oe.py``: ``HfArgumentParser((RecipeArguments,
TextOEConfig))`` (:class:`oe_common.experiments.recipe_args.RecipeArgumentParser`; every field but ``level`` is a flag)."""

from __future__ import annotations

import os
from typing import Sequence

from oe_common.experiments.data_dir import exit_on_data_error
from oe_common.experiments.recipe_args import RecipeArgumentParser, parse_recipe_args, run_recipe

from .lm_experiment import PRESET_NAMES, TextOEConfig, allowed_protocols, preset_config, run_text_oe


def build_parser(level: str) -> RecipeArgumentParser:
    return RecipeArgumentParser(
        TextOEConfig, prog=f"ptb_{level}_oe.py", presets=PRESET_NAMES,
        choices={"protocols": allowed_protocols(level)},  # the word recipe has no `spelled`
        description=f"PTB {level}-level LM: baseline, OE fine-tuning on WikiText-2, evaluation on the English Web Treebank.",
    )


@exit_on_data_error
def main(level: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(level)
    args, cfg, _ = parse_recipe_args(parser, argv, lambda preset, given: preset_config(level, preset, **given))
    return run_recipe(parser.prog, args, cfg, run_text_oe, os.path.join("runs", f"ptb_{level}_{args.preset}"), argv)
