"""Command line of ``recipes/pixelcnn_oe.py``: ``HfArgumentParser((RecipeArguments, DensityOEConfig,
PixelCNNSizeArguments))`` (:class:`oe_common.experiments.recipe_args.RecipeArgumentParser`; ``--threads`` sets ``num_threads``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from oe_common.experiments.data_dir import exit_on_data_error
from oe_common.experiments.recipe_args import RecipeArgumentParser, RecipeArguments, parse_recipe_args, run_recipe

from .density_experiment import PRESET_NAMES, DensityOEConfig, preset_config, run_density_oe
PROG = "pixelcnn_oe.py"


@dataclasses.dataclass
class PixelCNNSizeArguments:
    """PixelCNN++ config fields the command line can set (``--nr-filters`` ...): they replace the preset's model fields
    (merged into ``model_overrides``)."""

    nr_resnet: int | None = None
    nr_filters: int | None = None
    nr_logistic_mix: int | None = None


def build_parser() -> RecipeArgumentParser:
    """The recipe's command line: :class:`DensityOEConfig` (``--threads`` sets ``num_threads``) and :class:`PixelCNNSizeArguments`."""
    return RecipeArgumentParser(
        DensityOEConfig, prog=PROG, presets=PRESET_NAMES, extra=(PixelCNNSizeArguments,),
        description="PixelCNN++ density model: likelihood baseline, OE fine-tuning with the margin loss, detection by bits/dim (paper Table 5).",
    )


def make_config(preset: str, overrides: Mapping[str, Any]) -> DensityOEConfig:
    """``preset_config`` of the given ``--dataset`` (default mnist; it chooses the preset table) and flags."""
    overrides = dict(overrides)
    return preset_config(overrides.pop("dataset", None) or "mnist", preset, **overrides)


def parse_args(argv: Sequence[str] | None = None) -> tuple[RecipeArguments, DensityOEConfig]:
    """``(recipe arguments, config)`` of a command line: the preset with the given flags applied (``--threads`` sets
    ``num_threads``, ``--nr-filters`` etc. update its model fields). A refused configuration is a usage error."""
    parser = build_parser()
    recipe, cfg, model_fields = parse_recipe_args(parser, argv, make_config)
    changes: dict[str, Any] = {"num_threads": recipe.threads} if recipe.threads is not None else {}
    model_fields = {k: v for k, v in model_fields.items() if v is not None}
    if model_fields:
        changes["model_overrides"] = {**cfg.model_overrides, **model_fields}
    try:
        return recipe, dataclasses.replace(cfg, **changes)
    except ValueError as err:
        parser.error(str(err))


@exit_on_data_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``recipes/pixelcnn_oe.py``: prints the Markdown report and the wall time."""
    recipe, cfg = parse_args(argv)
    return run_recipe(PROG, recipe, cfg, run_density_oe, os.path.join("runs", f"pixelcnn_{cfg.dataset}_{recipe.preset}"), argv,
                      set_threads=False, wall_time=True)  # --threads is cfg.num_threads (set for the run, restored)
