"""Sketch_Shading thresholds against an independent integer formulation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.preprocess.shading import shade_sketch

PAGE_VALUES = [0, 50, 76, 77, 100, 144, 145, 200, 255]
LINE_VALUES = [0, 60, 124, 125, 126, 200, 255]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Every (page, line) pair of boundary values, as two gray images of the same size."""
    page, lines = np.meshgrid(PAGE_VALUES, LINE_VALUES, indexing="ij")
    return page.astype(np.uint8), lines.astype(np.uint8)


def test_thresholds_on_boundary_values():
    page, lines = _grid()
    # gray <= 76 is "below 0.3*255"; 77..144 is the mid-tone band; lines > 125 are background
    expected = np.where(page <= 76, 0, np.where((lines >= 126) & (page >= 77) & (page <= 144), 125, lines))
    shaded = shade_sketch(Image.fromarray(lines).convert("RGB"), Image.fromarray(page).convert("RGB"))
    assert shaded.mode == "RGB" and shaded.size == (page.shape[1], page.shape[0])
    for channel in range(3):
        assert np.array_equal(np.asarray(shaded)[:, :, channel], expected)


def test_parameters_are_exposed():
    page, lines = _grid()
    shaded = shade_sketch(Image.fromarray(lines), Image.fromarray(page), dark_below=10, flat_gray=200)
    expected = np.where(page < 10, 0, np.where((lines > 125) & (page > 10) & (page < 145), 200, lines))
    assert np.array_equal(np.asarray(shaded.convert("L")), expected)


def test_size_mismatch_is_refused():
    with pytest.raises(InputError):
        shade_sketch(Image.new("L", (8, 8)), Image.new("L", (8, 9)))
