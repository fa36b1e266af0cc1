"""``oe_common`` is the bottom layer: it neither imports nor names ``oe_text`` / ``oe_vision`` (issues #13, #22).

Two checks on every module of ``oe_common``:

* imports, found by parsing the source with ``ast`` (module level, inside functions and classes, relative imports
  resolved), together with ``importlib.import_module("...")`` / ``__import__("...")`` calls on a constant string;
* names: the source text (code, strings, docstrings, comments) contains neither package name, so no table of
  their modules or classes can hide there. The packages above register what is theirs on import, and
  ``oe_common.deployment.plugins`` finds them through the ``oe.plugins`` entry-point group.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER_PACKAGES = ("oe_text", "oe_vision")
IMPORT_FUNCTIONS = ("import_module", "__import__")
OE_COMMON_FILES = sorted((ROOT / "oe_common").rglob("*.py"))


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source``, the code of module ``module`` (dotted name)."""
    package = module.split(".")[:-1]  # the package a relative import starts from (also for __init__)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # "from .. import x": each x may be a module
                found += [(node.lineno, ".".join([*base, alias.name])) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in IMPORT_FUNCTIONS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def upward_imports(source: str, module: str) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(source, module) if name.split(".")[0] in UPPER_PACKAGES]


def upward_names(source: str) -> list[str]:
    """``"line N: text"`` for every line of ``source`` that names an upper package (as a word: ``oe_text``, not
    ``my_oe_texts``)."""
    pattern = re.compile(r"\b(?:" + "|".join(UPPER_PACKAGES) + r")\b")
    return [f"line {i}: {line.strip()}" for i, line in enumerate(source.splitlines(), 1) if pattern.search(line)]


def test_the_parser_finds_every_kind_of_upward_import():
    source = (
        "import importlib\n"
        "import oe_text\n"
        "from oe_vision.data import image_transform\n"
        "def f():\n"
        "    from oe_text.lm.vocab import Vocabulary\n"
        "    return importlib.import_module('oe_vision')\n"
        "class C:\n"
        "    def g(self):\n"
        "        return __import__('oe_text.lm.windows')\n"
        "from ... import oe_text\n"
        "from ..maths.scores import msp_score\n"
        "importlib.import_module(name)\n"
    )
    found = upward_imports(source, "oe_common.deployment.detector")
    assert sorted(found) == [
        "line 10: oe_text", "line 2: oe_text", "line 3: oe_vision.data", "line 5: oe_text.lm.vocab", "line 6: oe_vision",
        "line 9: oe_text.lm.windows",
    ]
    assert (11, "oe_common.maths.scores") in imported_modules(source, "oe_common.deployment.detector")  # relative imports resolved


def test_the_name_check_finds_names_in_strings_and_tables_but_not_inside_other_words():
    source = 'RECIPES = {"mnist": ("oe_vision.recipe_cli", "main")}\n# see oe_text\nmy_oe_texts = 1\nx = "oe_textual"\n'
    assert upward_names(source) == ['line 1: RECIPES = {"mnist": ("oe_vision.recipe_cli", "main")}', "line 2: # see oe_text"]


@pytest.mark.parametrize("path", OE_COMMON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_oe_common_never_imports_a_modality_package(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    bad = upward_imports(path.read_text(encoding="utf-8"), module)
    assert not bad, f"{path.relative_to(ROOT)} imports upward (oe_common is the bottom layer): {bad}"


@pytest.mark.parametrize("path", OE_COMMON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_oe_common_never_names_a_modality_package(path):
    bad = upward_names(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.relative_to(ROOT)} names a package above it (register from that package instead): {bad}"
