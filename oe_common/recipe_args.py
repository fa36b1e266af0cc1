"""Recipe command lines generated from the experiment config dataclasses (``transformers.HfArgumentParser``).

Details: docs/experiments.md, section ``oe_common.recipe_args``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from transformers import HfArgumentParser

from .arg_types import positive_float, positive_int
from .recipe_guard import add_run_folder_args, recipe_guard

__all__ = ["RecipeArguments", "PRESET_HELP", "flag", "config_flags", "build_recipe_parser", "parse_recipe_args", "run_recipe"]

_DEFAULT_CHECK = {int: positive_int, float: positive_float}
#: What the usual preset names mean (a recipe describes its other presets with ``build_recipe_parser(preset_help=)``).
PRESET_HELP = {"test": "seconds", "tiny": "CPU in minutes", "paper": "the paper's settings, GPU"}


def flag(help: str | None = None, arg_type: Callable[[str], Any] | None = None, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata for the generated flag: ``help``, the parse-time check ``arg_type``, other ``add_argument``
    keywords (``choices``, ``aliases``)."""
    meta = dict(argparse_kwargs)
    if help is not None:
        meta["help"] = help
    if arg_type is not None:
        meta["arg_type"] = arg_type
    return meta


@dataclasses.dataclass
class RecipeArguments:
    """The arguments every recipe takes besides its config's fields."""

    preset: str = dataclasses.field(default="tiny", metadata=flag("named settings"))  # help: build_recipe_parser (the recipe's presets)
    data_dir: str | None = dataclasses.field(default=None, metadata=flag("corpora folder (default: $OE_DATA_DIR)"))
    output_dir: str | None = dataclasses.field(default=None, metadata=flag("where results go (default: runs/<recipe>_<preset>)"))
    threads: int | None = dataclasses.field(default=None, metadata=flag("torch CPU threads (CPU runs only)"))
    overwrite: bool = False  # set by the --overwrite / --resume group (add_run_folder_args), not generated
    resume: bool = False


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag_type(tp: Any) -> Any | None:
    """The generated field's type for a config field's type, or ``None`` when it gets no flag."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[args[0] if args else str]
    if tp in (int, float, str, bool):
        return tp
    return None


def config_flags(config_cls: type, exclude: Sequence[str] = ()) -> type:
    """A dataclass with one field per command-line setting of ``config_cls``: same name, default ``None``."""
    hints = typing.get_type_hints(config_cls)
    fields = []
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name in exclude:
            continue
        tp = _flag_type(hints[field.name])
        if tp is None:
            continue
        fields.append((field.name, tp | None, dataclasses.field(default=None, metadata=dict(field.metadata))))
    return dataclasses.make_dataclass(f"{config_cls.__name__}Flags", fields)


def _finish_actions(parser: argparse.ArgumentParser, flags_cls: type) -> None:
    """Parse-time checks on the numeric flags and ``--name`` / ``--no-name`` for the bool ones."""
    hints = typing.get_type_hints(flags_cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(flags_cls)}
    for action in list(parser._actions):
        if action.dest not in meta:
            continue
        action.option_strings.sort(key=lambda option: "_" in option)  # --data-dir first: usage and errors show it
        tp = _unwrap_optional(hints[action.dest])
        if tp is bool:
            action.nargs, action.const = "?", True
            parser.add_argument(f"--no-{action.dest.replace('_', '-')}", f"--no_{action.dest}", dest=action.dest,
                                action="store_false", default=None, help=f"set {action.dest} to false")
        elif tp in _DEFAULT_CHECK:
            action.type = meta[action.dest].get("arg_type", _DEFAULT_CHECK[tp])


def build_recipe_parser(config_cls: type, *, prog: str, description: str, presets: Sequence[str], default_preset: str = "tiny",
                        exclude: Sequence[str] = (), extra: Sequence[type] = (), preset_help: Mapping[str, str] | None = None) -> HfArgumentParser:
    """The recipe's parser: :class:`RecipeArguments`, ``--overwrite`` / ``--resume``, one flag per field of
    ``config_cls`` (minus ``exclude``) and the fields of the ``extra`` dataclasses (recipe-specific flags).

    ``--help`` lists the recipe's ``presets`` (described by ``preset_help``, else :data:`PRESET_HELP`) and no
    ``(default: None)``: a config flag that is not given takes the preset's value."""
    flags_cls = config_flags(config_cls, exclude)
    recipe_fields = [f for f in dataclasses.fields(RecipeArguments) if f.name not in ("overwrite", "resume")]
    recipe_cls = dataclasses.make_dataclass("RecipeArgumentsFlags", [(f.name, f.type, f) for f in recipe_fields])
    classes = (recipe_cls, flags_cls, *extra)
    parser = HfArgumentParser([_without_checks(cls) for cls in classes], prog=prog, description=description)
    parser.formatter_class = _DefaultsHelpFormatter  # HfArgumentParser's adds "(default: None)" to every flag
    described = {**PRESET_HELP, **(preset_help or {})}
    for action in parser._actions:
        if action.dest == "preset":
            action.choices, action.default = tuple(presets), default_preset
            action.help = (f"named settings ({'; '.join(f'{name}: {described[name]}' if name in described else name for name in presets)}; "
                           f"default: {default_preset})")
    for cls in classes:
        _finish_actions(parser, cls)
    add_run_folder_args(parser)
    parser.set_defaults(_oe_config_flags=flags_cls, _oe_extra=tuple(extra))
    return parser


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to a flag's help only where there is a default to show: not ``None`` (a config flag not
    given takes the preset's value), not a switch, and not one its help already states."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if (text and action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def _without_checks(cls: type) -> type:
    """``cls`` with the ``arg_type`` metadata removed (not an ``add_argument`` keyword; :func:`_finish_actions`
    applies it)."""
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(cls.__name__, [
        (f.name, hints[f.name], dataclasses.field(default=f.default, metadata={k: v for k, v in f.metadata.items() if k != "arg_type"}))
        for f in dataclasses.fields(cls)])


def parse_recipe_args(parser: HfArgumentParser, argv: Sequence[str] | None,
                      make_config: Callable[[str, dict[str, Any]], Any]) -> tuple[RecipeArguments, Any, dict[str, Any]]:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``(recipe arguments, config, extra values)``.

    ``make_config(preset, overrides)`` builds the config from the preset and the given flags (``None`` = not
    given); a ``ValueError`` it raises becomes a usage error (exit code 2) naming the problem.
    """
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    flags_cls, extra = values.pop("_oe_config_flags"), values.pop("_oe_extra")
    recipe = RecipeArguments(**{f.name: values.pop(f.name) for f in dataclasses.fields(RecipeArguments)})
    extra_values = {f.name: values.pop(f.name) for cls in extra for f in dataclasses.fields(cls)}
    overrides = {}
    for name in (f.name for f in dataclasses.fields(flags_cls)):
        value = values.pop(name)
        overrides[name] = tuple(value) if isinstance(value, list) else value  # several values: the config's tuples
    try:
        config = make_config(recipe.preset, overrides)
    except ValueError as err:
        parser.error(str(err))
    return recipe, config, extra_values


def run_recipe(prog: str, recipe: RecipeArguments, config: Any, run_fn: Callable[..., dict[str, Any]], default_output_dir: str,
               argv: Sequence[str] | None, *, set_threads: bool = True, wall_time: bool = False) -> dict[str, Any]:
    """What every recipe's ``main`` does after parsing: ``torch.set_num_threads(--threads)`` (unless the config holds
    the thread count, ``set_threads=False``), ``run_fn(config, output_dir, data_dir=, overwrite=, resume=)`` inside
    :func:`oe_common.recipe_guard.recipe_guard` (``--output-dir``, else ``default_output_dir``), then the Markdown
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
