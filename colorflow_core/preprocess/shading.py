"""Sketch_Shading condition: flat gray tones and black areas painted onto the line image."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import InputError

DARK_BELOW = 0.3 * 255  # page gray below this becomes black (76.5, so gray <= 76)
LINE_ABOVE = 125  # line-image values above this are "not a line" (background)
MID_BELOW = 145  # page gray in (DARK_BELOW, MID_BELOW) is a mid-tone
FLAT_GRAY = 125  # value given to mid-tone background pixels


def shade_sketch(
    lines: Image.Image,
    gray_page: Image.Image,
    dark_below: float = DARK_BELOW,
    line_above: float = LINE_ABOVE,
    mid_below: float = MID_BELOW,
    flat_gray: int = FLAT_GRAY,
) -> Image.Image:
    """Shaded sketch as gray RGB: black where the page is dark, flat gray on mid-tone background.

    Both images are compared as 8-bit grays of the same size, in the original's order (black first,
    then flat gray on what is still brighter than ``line_above``).
    """
    if lines.size != gray_page.size:
        raise InputError(f"line image {lines.size} and page {gray_page.size} must have the same size")
    page = np.asarray(gray_page.convert("L"))
    shaded = np.array(lines.convert("L"))
    shaded[page < dark_below] = 0
    shaded[(shaded > line_above) & (page < mid_below) & (page > dark_below)] = flat_gray
    return Image.fromarray(shaded).convert("RGB")
