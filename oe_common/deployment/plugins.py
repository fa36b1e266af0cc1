"""Packages that extend the toolkit, found through one entry-point group, and the recipes and ``oe`` subcommands they
register.

``oe_common`` is the bottom layer and knows no package above it by name. A package that adds models, detector
preprocessing, training recipes or commands declares itself in the ``oe.plugins`` entry-point group of its
``pyproject.toml``::

    [project.entry-points."oe.plugins"]
    my_package = "my_package"

and does its registering on import: model types with the ``transformers`` Auto classes,
:func:`oe_common.deployment.preprocessing.register_preprocessing`, :func:`register_recipe` (``oe train NAME``) and
:func:`register_command` (``oe NAME``). :func:`load_plugins` imports every declared module; the detector calls it
before it loads a model, the CLI before it builds its parser.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

__all__ = ["ENTRY_POINT_GROUP", "Command", "Recipe", "commands", "load_plugins", "recipes", "register_command", "register_recipe"]

logger = logging.getLogger(__name__)

#: The entry-point group that names the modules to import (each registers what it provides on import).
ENTRY_POINT_GROUP = "oe.plugins"


def load_plugins() -> None:
    """Import every module of the :data:`ENTRY_POINT_GROUP` entry points (a no-op for those already imported).

    A module that fails to import is logged and skipped, so one broken package does not hide the others.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not hide the others
            logger.warning("could not load %s entry point %r: %s", ENTRY_POINT_GROUP, ep.value, exc)


@dataclass(frozen=True)
class Recipe:
    """A training recipe ``oe train NAME`` runs: ``target`` is ``"module:function"``, called as
    ``function(**kwargs, argv=RECIPE_ARGS)`` (the ``main`` that ``recipes/*.py`` calls). The module is imported
    only when the recipe runs, so listing recipes stays cheap."""

    name: str
    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        """The recipe's function with its keyword arguments bound (``ImportError`` when its module is missing)."""
        module_name, _, function = self.target.partition(":")
        module = importlib.import_module(module_name)
        return functools.partial(getattr(module, function), **self.kwargs)

    def describe(self) -> str:
        """``"module.function(key='value')"``: what ``oe train --list`` prints."""
        call = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.target.replace(':', '.')}({call})"


_RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str, target: str, **kwargs: Any) -> Recipe:
    """Register ``oe train NAME``: ``target`` = ``"module:function"``, ``kwargs`` bound when it runs (idempotent)."""
    if ":" not in target:
        raise ValueError(f"recipe target must be 'module:function', got {target!r}")
    recipe = Recipe(name, target, dict(kwargs))
    _RECIPES[name] = recipe
    return recipe


def recipes() -> dict[str, Recipe]:
    """Every registered recipe by name, in registration order (plugins loaded first)."""
    load_plugins()
    return dict(_RECIPES)


class Command(NamedTuple):
    """A subcommand ``oe NAME`` a package adds: ``add_arguments(parser)`` declares its flags, ``run(args)`` does the
    work and returns the exit code (a user error: raise :class:`oe_common.deployment.cli.CliError`, one line)."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str | None = None


_COMMANDS: dict[str, Command] = {}


def register_command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int],
                     help: str, description: str | None = None) -> Command:
    """Register the subcommand ``oe NAME`` (idempotent: the last registration of a name wins)."""
    command = _COMMANDS[name] = Command(add_arguments, run, help, description)
    return command


def commands() -> dict[str, Command]:
    """Every registered subcommand by name, in registration order (plugins loaded first)."""
    load_plugins()
    return dict(_COMMANDS)
