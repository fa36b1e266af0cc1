"""The command line of ``recipes/mnist_oe.py`` and ``recipes/cifar10_oe.py``: generated from :class:`VisionOEConfig`
(:func:`oe_common.recipe_args.build_recipe_parser`)."""

from __future__ import annotations

import os
from typing import Sequence

from transformers import HfArgumentParser

from oe_common.data_dir import exit_on_data_error
from oe_common.recipe_args import build_recipe_parser, parse_recipe_args, run_recipe

from .classifier_experiment import PRESET_NAMES, VisionOEConfig, preset_config, run_vision_oe

_DESCRIPTIONS = {
    "mnist": "MNIST ConvNet: MSP baseline, OE fine-tuning, confidence branch (+ OE), calibration; paper Tables 3, 7, 8, 9.",
    "cifar10": "CIFAR-10 Wide ResNet: MSP baseline, OE fine-tuning on iSUN, calibration; paper Tables 1, 2, 7 (3 with --branch).",
}


def build_parser(dataset: str) -> HfArgumentParser:
    return build_recipe_parser(VisionOEConfig, prog=f"{dataset}_oe.py", description=_DESCRIPTIONS[dataset], presets=PRESET_NAMES[dataset],
                               exclude=("dataset",), preset_help={"short": "CIFAR-10 on one GPU with limited time"})


@exit_on_data_error
def main(dataset: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(dataset)
    args, cfg, _ = parse_recipe_args(parser, argv, lambda preset, overrides: preset_config(dataset, preset, **overrides))
    return run_recipe(parser.prog, args, cfg, run_vision_oe, os.path.join("runs", f"{dataset}_{args.preset}"), argv)
