"""The command line of ``recipes/mnist_oe.py`` and ``recipes/cifar10_oe.py``: ``HfArgumentParser((RecipeArguments,
VisionOEConfig))`` (:class:`oe_common.experiments.recipe_args.RecipeArgumentParser`; every field but ``dataset`` is a flag)."""

from __future__ import annotations

import os
from typing import Sequence

from oe_common.experiments.data_dir import exit_on_data_error
from oe_common.experiments.recipe_args import RecipeArgumentParser, parse_recipe_args, run_recipe

from .classifier_experiment import PRESET_NAMES, VisionOEConfig, preset_config, run_vision_oe

_DESCRIPTIONS = {
    "mnist": "MNIST ConvNet: MSP baseline, OE fine-tuning, confidence branch (+ OE), calibration; paper Tables 3, 7, 8, 9.",
    "cifar10": "CIFAR-10 Wide ResNet: MSP baseline, OE fine-tuning on iSUN, calibration; paper Tables 1, 2, 7 (3 with --branch).",
}


def build_parser(dataset: str) -> RecipeArgumentParser:
    return RecipeArgumentParser(VisionOEConfig, prog=f"{dataset}_oe.py", description=_DESCRIPTIONS[dataset], presets=PRESET_NAMES[dataset],
                                preset_help={"short": "CIFAR-10 on one GPU with limited time"})


@exit_on_data_error
def main(dataset: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(dataset)
    args, cfg, _ = parse_recipe_args(parser, argv, lambda preset, given: preset_config(dataset, preset, **given))
    return run_recipe(parser.prog, args, cfg, run_vision_oe, os.path.join("runs", f"{dataset}_{args.preset}"), argv)
