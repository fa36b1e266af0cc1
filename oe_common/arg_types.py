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


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, sizes, batch sizes, draws, threads)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, DataLoader workers)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, epochs, minutes)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (loss weights, margins)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number strictly between 0 and 1 (rates, recall levels)."""
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text!r}")
    return value
