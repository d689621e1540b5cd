"""Numeric command-line options, refused by argparse itself (exit 2, one line naming the option) when out of range:
a negative CPU count or seed, zero repeats or an infinite timeout would otherwise fail deep inside Ray, numpy or a
measurement, or be ignored."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int option in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def number(low: float, *, above: bool = False) -> Callable[[str], float]:
    """A finite float option >= low (> low with `above`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if above else '>='} {low:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


SEED = integer(0, 2**32 - 1)  # numpy's SeedSequence takes non-negative seeds
COUNT = integer(1)  # CPUs, GPUs, trials, epochs, repeats, threads
