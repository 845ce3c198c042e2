"""prepare_page: condition and guide of each style, with tiny / random networks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.images import process_image
from colorflow_core.preprocess.lines import LineExtractor, ResSkip
from colorflow_core.preprocess.screentone import ScreenCodeGenerator, ScreenDecoder, ScreenStyleConverter
from colorflow_core.preprocess.shading import shade_sketch
from colorflow_core.preprocess.styles import STYLES, prepare_page
from colorflow_core.sizes import PageSize
from colorflow_core.testing.preprocess import fill_random, line_extractor_rule
from tests.support.parity import parity_params

SIZE = PageSize(64, 64)  # guide size 96 x 96


@pytest.fixture(scope="module")
def lines() -> LineExtractor:
    return LineExtractor(fill_random(ResSkip(), 1000, line_extractor_rule))


@pytest.fixture(scope="module")
def converter() -> ScreenStyleConverter:
    return ScreenStyleConverter(fill_random(ScreenCodeGenerator(ngf=4), 10), fill_random(ScreenDecoder(ngf=4), 20))


@pytest.fixture(scope="module")
def page() -> Image.Image:
    """A colour page of another size and aspect (within 15 %, so it is resized straight)."""
    yy, xx = np.mgrid[0:110, 0:100]
    rgb = np.stack([(xx * 5) % 256, (yy * 3) % 256, ((xx - yy) * 7) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture(scope="module")
def q15_gray(page) -> Image.Image:
    return process_image(page, *SIZE.guide).convert("L")


@pytest.fixture(scope="module")
def sketch(page, lines):
    return prepare_page(page, "sketch", SIZE, screentone=None, lines=lines)


def _equal(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_style_names():
    assert STYLES == ("screenstyle", "sketch", "shading")


def test_screenstyle_without_converter_is_the_gray_page(page, q15_gray):
    """Identity: the condition is the gray page as given (retrieval fits it once, as the fixtures do);
    the guide is its 1.5W x 1.5H fit."""
    prepared = prepare_page(page, "screenstyle", SIZE, screentone=None, lines=None)
    assert _equal(prepared.condition, page.convert("L").convert("RGB"))
    assert _equal(prepared.guide, q15_gray.convert("RGB"))


def test_screenstyle_with_converter(page, converter):
    prepared = prepare_page(page, "screenstyle", SIZE, screentone=converter, lines=None, seed=4)
    assert prepared.condition is prepared.guide and prepared.condition.size == SIZE.guide
    assert _equal(prepared.condition, converter.screenstyle_condition(process_image(page, *SIZE.guide), 4))
    other = prepare_page(page, "screenstyle", SIZE, screentone=converter, lines=None, seed=5)
    assert not _equal(prepared.condition, other.condition)


def test_sketch_lines_of_the_gray_page(sketch, q15_gray, lines):
    assert sketch.condition is sketch.guide and sketch.condition.size == SIZE.guide
    assert _equal(sketch.condition, lines.extract_lines(q15_gray).convert("RGB"))


def test_colour_page_is_converted_to_gray_first(sketch, q15_gray, lines):
    """A colour page gives the same lines as its gray Q15 given as the page (already 1.5W x 1.5H)."""
    from_gray = prepare_page(q15_gray, "sketch", SIZE, screentone=None, lines=lines)
    assert _equal(sketch.condition, from_gray.condition)


def test_shading_condition_and_line_guide(page, sketch, q15_gray, lines):
    prepared = prepare_page(page, "shading", SIZE, screentone=None, lines=lines)
    assert _equal(prepared.guide, sketch.guide)
    assert _equal(prepared.condition, shade_sketch(sketch.guide, q15_gray))
    assert not _equal(prepared.condition, prepared.guide)


@pytest.mark.parametrize("style", ["sketch", "shading"])
def test_line_styles_need_the_line_extractor(page, style):
    with pytest.raises(WeightsError, match="LE/erika.pth"):
        prepare_page(page, style, SIZE, screentone=None, lines=None)


def test_bad_input(page):
    with pytest.raises(InputError, match="unknown style"):
        prepare_page(page, "GrayImage", SIZE, screentone=None, lines=None)
    with pytest.raises(InputError):
        prepare_page(np.zeros((96, 96, 3), dtype=np.uint8), "screenstyle", SIZE, screentone=None, lines=None)
    with pytest.raises(InputError):
        prepare_page(Image.new("RGB", (2, 2)), "screenstyle", SIZE, screentone=None, lines=None)


@pytest.mark.parametrize("case", parity_params("sd"))
def test_identity_preprocessing_gives_the_sd_guide(case):
    """sd_tiny: screenstyle without conversion = the page as gray RGB at 1.5W x 1.5H (its GSRP guide)."""
    meta = json.loads((case / "case.json").read_text())
    size = PageSize(meta["target_width"], meta["target_height"])
    page = Image.open(case / "inputs" / "page.png")
    prepared = prepare_page(page, "screenstyle", size, screentone=None, lines=None)
    assert _equal(prepared.guide, Image.open(case / "expected" / "query_image_vae.png").convert("RGB"))
    assert _equal(prepared.condition, page.convert("L").convert("RGB"))  # the fixture's unfitted query
