"""``argparse`` types for the recipes' numeric flags: a bad value is a usage error at parse time (exit code 2).

Each function takes the flag's text and returns the value, or raises ``argparse.ArgumentTypeError``, which argparse
prints as ``<prog>: error: argument --flag: <message>``. Every recipe parser uses these (one definition)::

    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--oe-lambda", type=non_negative_float)

Floats must also be finite (``nan`` / ``inf`` are refused).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float", "probability"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(name: str, parse: Callable[[str], Any], accept: Callable[[Any], bool], requirement: str, doc: str) -> Callable[[str], Any]:
    """The check ``name``: ``parse(text)``, refused unless ``accept(value)`` with ``must be <requirement>, got '<text>'``."""

    def check(text: str) -> Any:
        value = parse(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    check.__name__ = check.__qualname__ = name
    check.__doc__ = doc
    return check


positive_int = _checked("positive_int", _int, lambda v: v >= 1, "a positive integer (>= 1)",
                        "An integer >= 1 (steps, sizes, batch sizes, draws, threads).")
non_negative_int = _checked("non_negative_int", _int, lambda v: v >= 0, "an integer >= 0", "An integer >= 0 (seeds, DataLoader workers).")
positive_float = _checked("positive_float", _float, lambda v: v > 0, "a number > 0", "A finite number > 0 (learning rates, epochs, minutes).")
non_negative_float = _checked("non_negative_float", _float, lambda v: v >= 0, "a number >= 0", "A finite number >= 0 (loss weights, margins).")
probability = _checked("probability", _float, lambda v: 0 < v < 1, "a number strictly between 0 and 1",
                       "A number strictly between 0 and 1 (rates, recall levels).")
