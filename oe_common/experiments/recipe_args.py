"""Recipe command lines, the transformers ``run_glue.py`` pattern: ``HfArgumentParser((RecipeArguments, XConfig, ...))``.

Details: docs/experiments.md, section ``oe_common.experiments.recipe_args``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from typing import Any, Callable, Mapping, Sequence

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .arg_types import positive_float, positive_int
from .recipe_guard import add_run_folder_args, recipe_guard

__all__ = ["RecipeArguments", "RecipeArgumentParser", "PRESET_HELP", "flag", "parse_recipe_args", "run_recipe"]

#: The parse-time check of a number field whose metadata names none (``flag(arg_type=)``).
_DEFAULT_CHECK = {int: positive_int, float: positive_float}
#: What the usual preset names mean (a recipe describes its other presets with ``RecipeArgumentParser(preset_help=)``).
PRESET_HELP = {"test": "seconds", "tiny": "CPU in minutes", "paper": "the paper's settings, GPU"}


def flag(help: str | None = None, arg_type: Callable[[str], Any] | None = None, command_line: bool = True,
         **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata for the field's flag: ``help``, the parse-time check ``arg_type`` (default: ``positive_int`` /
    ``positive_float`` for numbers), ``command_line=False`` for a field without a flag, other ``add_argument``
    keywords (``choices``, ``aliases``, ``action``)."""
    meta = dict(argparse_kwargs)
    if help is not None:
        meta["help"] = help
    if arg_type is not None:
        meta["arg_type"] = arg_type
    if not command_line:
        meta["command_line"] = False
    return meta


@dataclasses.dataclass
class RecipeArguments:
    """The arguments every recipe takes besides its config's fields."""

    preset: str = dataclasses.field(default="tiny", metadata=flag("named settings"))  # RecipeArgumentParser: the recipe's presets
    data_dir: str | None = dataclasses.field(default=None, metadata=flag("corpora folder (default: $OE_DATA_DIR)"))
    output_dir: str | None = dataclasses.field(default=None, metadata=flag("where results go (default: runs/<recipe>_<preset>)"))
    threads: int | None = dataclasses.field(default=None, metadata=flag("torch CPU threads (CPU runs only)"))
    overwrite: bool = dataclasses.field(default=False, metadata=flag(command_line=False))  # --overwrite | --resume:
    resume: bool = dataclasses.field(default=False, metadata=flag(command_line=False))  # run_folder.add_run_folder_args


class RecipeArgumentParser(HfArgumentParser):
    """``HfArgumentParser((RecipeArguments, config_cls, *extra))`` with ``--preset`` (one of ``presets``, described by
    ``preset_help``, else :data:`PRESET_HELP`) and ``--overwrite`` | ``--resume``; ``choices`` narrows a field's
    choices for this recipe (``{"protocols": (...)}``).

    The flags follow the fields' metadata (:func:`flag`); besides HfArgumentParser's rules a number is checked at parse
    time, a ``tuple`` field takes several values, every ``bool`` field has ``--no-name`` and a config flag that is not
    given is ``None``: it keeps the preset's value (:func:`parse_recipe_args`)."""

    def __init__(self, config_cls: type, *, prog: str, description: str, presets: Sequence[str], default_preset: str = "tiny",
                 extra: Sequence[type] = (), preset_help: Mapping[str, str] | None = None,
                 choices: Mapping[str, Sequence[str]] | None = None) -> None:
        described = {**PRESET_HELP, **(preset_help or {})}
        # read by add_argument, which super().__init__ calls
        self.recipe_choices = {**(choices or {}), "preset": tuple(presets)}
        self.preset_settings = dict(default=default_preset, help=(
            f"named settings ({'; '.join(f'{name}: {described[name]}' if name in described else name for name in presets)}; "
            f"default: {default_preset})"))
        super().__init__((RecipeArguments, config_cls, *extra), prog=prog, description=description, formatter_class=argparse.HelpFormatter)
        add_run_folder_args(self)
        self.set_defaults(**{f.name: None for cls in (config_cls, *extra) for f in dataclasses.fields(cls)})

    def add_argument(self, *option_strings: str, command_line: bool = True, arg_type: Callable[[str], Any] | None = None,
                     **kwargs: Any) -> argparse.Action | None:
        """``ArgumentParser.add_argument`` with the field metadata that is not an ``add_argument`` keyword applied."""
        if not command_line or (kwargs.get("action") == "store_false" and option_strings[0].startswith("--no_")):
            return None  # no flag; or HfArgumentParser's --no_name of a true bool: every bool gets the one below
        kind, name = kwargs.get("type"), option_strings[0][2:]
        if name in self.recipe_choices:
            kwargs["choices"] = tuple(self.recipe_choices[name])
        if name == "preset":
            kwargs.update(self.preset_settings)
        if typing.get_origin(kind) is tuple:
            kwargs.update(type=typing.get_args(kind)[0], nargs="+")
        elif kind in _DEFAULT_CHECK:
            kwargs["type"] = arg_type or _DEFAULT_CHECK[kind]
        # --data-dir before --data_dir: usage and errors show the first
        action = super().add_argument(*sorted(option_strings, key=lambda option: "_" in option), **kwargs)
        if kind is string_to_bool:
            super().add_argument(f"--no-{action.dest.replace('_', '-')}", f"--no_{action.dest}", dest=action.dest,
                                 action="store_false", default=None, help=f"set {action.dest} to false")
        return action


def parse_recipe_args(parser: RecipeArgumentParser, argv: Sequence[str] | None,
                      make_config: Callable[[str, dict[str, Any]], Any]) -> tuple[RecipeArguments, Any, dict[str, Any]]:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``(recipe arguments, config, extra values)``.

    ``make_config(preset, given)`` builds the config from the preset and the config flags given (several values as a
    tuple); a ``ValueError`` it raises becomes a usage error (exit code 2) naming the problem.
    """
    values = vars(parser.parse_args(argv))
    recipe = RecipeArguments(**{f.name: values.pop(f.name) for f in dataclasses.fields(RecipeArguments)})
    extra_values = {f.name: values.pop(f.name) for cls in parser.dataclass_types[2:] for f in dataclasses.fields(cls)}
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items() if value is not None}
    try:
        config = make_config(recipe.preset, given)
    except ValueError as err:
        parser.error(str(err))
    return recipe, config, extra_values


def run_recipe(prog: str, recipe: RecipeArguments, config: Any, run_fn: Callable[..., dict[str, Any]], default_output_dir: str,
               argv: Sequence[str] | None, *, set_threads: bool = True, wall_time: bool = False) -> dict[str, Any]:
    """What every recipe's ``main`` does after parsing: ``torch.set_num_threads(--threads)`` (unless the config holds
    the thread count, ``set_threads=False``), ``run_fn(config, output_dir, data_dir=, overwrite=, resume=)`` inside
    :func:`oe_common.experiments.recipe_guard.recipe_guard` (``--output-dir``, else ``default_output_dir``), then the Markdown
    report and where it was written (with the wall time when ``wall_time``) printed by the main process."""
    started = time.perf_counter()
    if set_threads and recipe.threads:
        import torch

        torch.set_num_threads(recipe.threads)
    output_dir = recipe.output_dir or default_output_dir
    with recipe_guard(prog, output_dir, argv, None if argv is None else f"recipes/{prog}"):
        result = run_fn(config, output_dir, data_dir=recipe.data_dir, overwrite=recipe.overwrite, resume=recipe.resume)
    if "paths" in result:
        print(result["paths"]["markdown"].read_text())
        took = f"; wall time {time.perf_counter() - started:.0f} s" if wall_time else ""
        print(f"results written to {output_dir}{took}")
    return result
