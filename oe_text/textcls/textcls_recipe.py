"""Command line of ``recipes/textcls_oe.py`` / ``oe train text-classification``: ``HfArgumentParser((RecipeArguments,
TextClsConfig))`` (:class:`oe_common.experiments.recipe_args.RecipeArgumentParser`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from oe_common.experiments.data_dir import exit_on_data_error
from oe_common.experiments.table_files import MissingColumnError
from oe_common.experiments.recipe_args import RecipeArgumentParser, parse_recipe_args, run_recipe

from .textcls_files import DatasetSourceError
from .textcls_experiment import PRESET_NAMES, TextClsConfig, check_max_length, preset_config, run_textcls_oe

PROG = "textcls_oe.py"


def build_parser() -> RecipeArgumentParser:
    return RecipeArgumentParser(
        TextClsConfig, prog=PROG, presets=PRESET_NAMES,
        preset_help={"full": "all training texts, 2-core CPU under time budgets (~30 min)"},
        description="Text classifier (CLINC150 / SST-2 / TREC-50, or your own labelled files / datasets: --train-file, "
                    "--dataset; MiniLM, the paper's GRU or any checkpoint): baseline, OE fine-tuning on WikiText-2 sentences, "
                    "detection of other sets, Multi30K, EWT, CLINC150's out-of-scope queries and your --ood-file sets.")


@exit_on_data_error
def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    recipe, cfg, _ = parse_recipe_args(parser, argv, lambda preset, given: check_max_length(preset_config(preset, **given)))
    name = Path(cfg.dataset.rstrip("/")).name or "data"  # a Hub id or a folder: its last part
    try:
        return run_recipe(PROG, recipe, cfg, run_textcls_oe,
                          os.path.join("runs", f"textcls_{name}_{cfg.model.replace('/', '_')}_{recipe.preset}"), argv)
    except (MissingColumnError, DatasetSourceError) as exc:  # a wrong --text-column / --label-column / --dataset: usage errors
        parser.exit(2, f"{PROG}: error: {exc}\n")
