"""LineExtractor: the original's padding (1.0 on the raw 0..255 scale), clamp, crop and truncation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.preprocess.lines import LineExtractor, ResSkip
from colorflow_core.testing.preprocess import fill_random, line_extractor_rule


@pytest.fixture(scope="module")
def network() -> ResSkip:
    # the parity recipe keeps the output inside 0..255 (with some clamping), unlike a default init
    return fill_random(ResSkip(), 1000, line_extractor_rule).eval()


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """48 x 37: neither side a multiple of 16, so padding and cropping both happen."""
    return np.random.default_rng(0).integers(0, 256, (48, 37)).astype(np.float32)


@pytest.fixture(scope="module")
def line_map(network, gray) -> np.ndarray:
    return LineExtractor(network).line_map(gray)


def test_padding_is_one_on_the_raw_scale(network, gray, line_map):
    padded = torch.tensor([1.0, 255.0]).view(2, 1, 1, 1).repeat(1, 1, 48, 48)  # right pad, then a wrong one
    padded[:, 0, :, :37] = torch.from_numpy(gray)
    with torch.no_grad():
        right, wrong = network(padded).clamp(0, 255)[:, 0, :, :37].numpy()
    assert line_map.shape == gray.shape and line_map.dtype == np.float32
    np.testing.assert_allclose(line_map, right, atol=1e-3)
    assert np.abs(line_map - wrong).max() > 1e-2  # the padding reaches kept pixels: a wrong value is caught


def test_extract_lines_truncates_and_accepts_pil(network, gray, line_map):
    as_rgb = Image.fromarray(gray.astype(np.uint8)).convert("RGB")  # gray RGB: PIL's luma is exact
    lines = LineExtractor(network).extract_lines(as_rgb)
    assert lines.mode == "L" and lines.size == (37, 48)
    assert np.array_equal(np.asarray(lines), line_map.astype(np.uint8))
    assert not np.array_equal(np.asarray(lines), np.rint(line_map).astype(np.uint8))  # truncation, not rounding


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3)), np.zeros((0, 5)), np.full((4, 4), 300.0), np.full((4, 4), np.nan), np.full((4, 4), "a")],
    ids=["3-D", "empty", "above 255", "nan", "strings"],
)
def test_bad_input_is_refused(network, bad):
    with pytest.raises(InputError):
        LineExtractor(network).line_map(bad)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="erika.pth"):
        LineExtractor.from_file(tmp_path / "LE" / "erika.pth")


def test_wrong_file_names_the_problem(tmp_path):
    path = tmp_path / "erika.pth"
    # a 3-channel first conv (an RGB line network) and nothing else
    torch.save({"block0.model.0.conv1.model.2.weight": torch.zeros(24, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as error:
        LineExtractor.from_file(path)
    message = str(error.value)
    assert str(path) in message and "wrong shape" in message and "missing" in message
