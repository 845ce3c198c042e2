"""Error types that reach users as one clear message (CLI exit text, ComfyUI error dialog)."""
from __future__ import annotations

import math


class ColorFlowError(Exception):
    """Base class: every error this package raises on purpose is one of these."""


class WeightsError(ColorFlowError):
    """A model file is missing, truncated, or does not match the network it should fill."""


class InputError(ColorFlowError, ValueError):
    """An image, size or parameter given by the user cannot be used."""


class OutputError(ColorFlowError, OSError):
    """An output or cache file cannot be written (a file in the way, read-only, disk full...).

    Also an OSError, so code that tolerates unwritable locations (``except OSError``) still does.
    """


class NumericalError(ColorFlowError):
    """A stage produced NaN or infinite values (bad weights, or a float16 overflow): the page is not written.

    ``pages``: the pages concerned, as indices (from 0) into the call that raised it, or as labels once
    a caller that knows the pages' names has relabelled them (`named`); ``hint``: what to try.
    """

    def __init__(self, stage: str, pages: list, hint: str = "") -> None:
        self.stage, self.pages, self.hint = stage, list(pages), hint
        shown = ", ".join(f"page {p + 1}" if isinstance(p, int) else str(p) for p in self.pages)
        super().__init__(f"{stage} produced non-finite values (NaN or infinity) for {shown}, so no image was "
                         f"written for it: a black page is not a result. {hint}".rstrip())

    def named(self, labels: list) -> "NumericalError":
        """The same error with page indices replaced by ``labels[index]``."""
        return NumericalError(self.stage, [labels[p] if isinstance(p, int) and 0 <= p < len(labels) else p
                                           for p in self.pages], self.hint)

    def shifted(self, offset: int) -> "NumericalError":
        """The same error for pages ``offset`` further on (a batch inside a longer call)."""
        return NumericalError(self.stage, [p + offset if isinstance(p, int) else p for p in self.pages], self.hint)


def check_number(name: str, value: object, low: float, high: float, integer: bool = False) -> None:
    """``value`` must be a (finite) number in [low, high]; integers where ``integer``. The one range check
    of the engine, the CLI and the nodes: an InputError naming ``name`` and the limits otherwise."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise InputError(f"{name} must be {kind} between {_limit(low)} and {_limit(high)}, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {_limit(low)} and {_limit(high)}, got {value!r}")


def _limit(value: float) -> str:
    """A limit as the user would type it: integers in full (never 9.22337e+18), floats short (30, 0.5)."""
    return str(value) if isinstance(value, int) else f"{value:g}"
