"""Error types that reach users as one clear message (CLI exit text, ComfyUI error dialog)."""
from __future__ import annotations


class ColorFlowError(Exception):
    """Base class: every error this package raises on purpose is one of these."""


class WeightsError(ColorFlowError):
    """A model file is missing, truncated, or does not match the network it should fill."""


class InputError(ColorFlowError, ValueError):
    """An image, size or parameter given by the user cannot be used."""
