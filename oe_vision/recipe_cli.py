"""The command line of ``recipes/mnist_oe.py`` and ``recipes/cifar10_oe.py``: generated from :class:`VisionOEConfig`
(:func:`oe_common.recipe_args.build_recipe_parser`)."""

from __future__ import annotations

import os
from typing import Sequence

from transformers import HfArgumentParser

from oe_common.data_dir import exit_on_data_error
from oe_common.recipe_args import build_recipe_parser, parse_recipe_args
from oe_common.run_folder import recipe_guard

from .classifier_experiment import PRESET_NAMES, VisionOEConfig, preset_config, run_vision_oe

_DESCRIPTIONS = {
    "mnist": "MNIST ConvNet: MSP baseline, OE fine-tuning, confidence branch (+ OE), calibration; paper Tables 3, 7, 8, 9.",
    "cifar10": "CIFAR-10 Wide ResNet: MSP baseline, OE fine-tuning on iSUN, calibration; paper Tables 1, 2, 7 (3 with --branch).",
}


def build_parser(dataset: str) -> HfArgumentParser:
    return build_recipe_parser(VisionOEConfig, prog=f"{dataset}_oe.py", description=_DESCRIPTIONS[dataset], presets=PRESET_NAMES[dataset],
                               exclude=("dataset",))


@exit_on_data_error
def main(dataset: str, argv: Sequence[str] | None = None) -> dict:
    parser = build_parser(dataset)
    args, cfg, _ = parse_recipe_args(parser, argv, lambda preset, overrides: preset_config(dataset, preset, **overrides))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    output_dir = args.output_dir or os.path.join("runs", f"{dataset}_{args.preset}")
    with recipe_guard(parser.prog, output_dir, argv, None if argv is None else f"recipes/{parser.prog}"):
        result = run_vision_oe(cfg, output_dir, data_dir=args.data_dir, overwrite=args.overwrite, resume=args.resume)
    print(result["paths"]["markdown"].read_text())
    print(f"results written to {output_dir}")
    return result
