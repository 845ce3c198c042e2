"""Extract Line Art / Screentone Preprocess on random release networks, and style switching in
Load ColorFlow Model sharing the networks two styles have in common."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.preprocess.lines import LINE_EXTRACTOR_FILE, LineExtractor
from colorflow_core.preprocess.screentone import G_RGB2INTSCR_FILE, ScreenStyleConverter
from nodes import comfy as comfy_glue
from nodes import model as model_node
from nodes import preprocess
from nodes.preprocess import PREPROCESS_NODE_CLASS_MAPPINGS, PREPROCESS_NODE_DISPLAY_NAME_MAPPINGS

pytestmark = pytest.mark.usefixtures("outside_comfyui")

H, W = 32, 48


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/colorflow/tiny: every style at the tiny scale with the line extractor (its fixed size) and
    the ScreenStyle networks, bases inside; models/colorflow/partial: a release without LE/, ScreenStyle/."""
    from colorflow_core.testing import write_release

    root = tmp_path_factory.mktemp("models")
    write_release(root / "colorflow" / "tiny", styles=("screenstyle", "sketch", "shading"), seed=3,
                  screentone=True, line_extractor=True)
    (root / "colorflow" / "partial" / "GraySD").mkdir(parents=True)
    return root


@pytest.fixture(autouse=True)
def models_env(models, monkeypatch):
    monkeypatch.setenv("COLORFLOW_MODELS", str(models / "colorflow"))
    return models


def _pages(n: int = 2, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 colour pages [n, H, W, 3] spanning every gray level (gradient + noise), and as an IMAGE."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, W)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 40, (n, H, W, 3)), 0, 255).astype(np.uint8)
    return pixels, torch.from_numpy(pixels.astype(np.float32) / 255)


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).convert("L")


def _levels(image: torch.Tensor) -> np.ndarray:
    return np.rint(image.numpy() * 255).astype(np.int64)


# ---- definitions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PREPROCESS_NODE_CLASS_MAPPINGS))
def test_node_definition(name):
    cls = PREPROCESS_NODE_CLASS_MAPPINGS[name]
    assert PREPROCESS_NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(ColorFlow)")
    assert cls.CATEGORY == "ColorFlow" and cls.DESCRIPTION.strip()
    assert callable(getattr(cls, cls.FUNCTION))
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional"} and "images" in inputs["required"]
    assert inputs["required"]["release"][0] == ["partial", "tiny"]
    for section in inputs.values():
        for input_name, (kind, options) in section.items():
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], input_name
    assert cls.RETURN_TYPES == ("IMAGE",)
    assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == 1
    assert cls.VALIDATE_INPUTS(release="tiny") is True


def test_shading_widgets_default_to_the_spec_thresholds():
    optional = preprocess.ExtractLineArt.INPUT_TYPES()["optional"]
    assert {k: v[1]["default"] for k, v in optional.items()} == {
        "dark_below": 0.3 * 255, "line_above": 125, "mid_below": 145, "flat_gray": 125}


# ---- Extract Line Art ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extractor(models):
    return LineExtractor.from_file(models / "colorflow" / "tiny" / LINE_EXTRACTOR_FILE)


def test_extract_line_art_is_the_line_network_per_page(extractor):
    pixels, images = _pages()
    (lines,) = preprocess.ExtractLineArt().extract(images, "tiny")
    assert lines.shape == (2, H, W, 3) and lines.dtype == torch.float32
    assert torch.equal(lines[..., 0], lines[..., 1]) and torch.equal(lines[..., 0], lines[..., 2])
    for i in range(2):
        want = np.asarray(extractor.extract_lines(_gray(pixels[i])), dtype=np.int64)
        np.testing.assert_array_equal(_levels(lines[i, ..., 0]), want)
    assert not np.array_equal(_levels(lines[0]), _levels(lines[1]))


@pytest.mark.parametrize("levels", [
    {},  # the spec's defaults: 76.5, 125, 145, 125
    {"dark_below": 100.0, "line_above": 140, "mid_below": 200, "flat_gray": 30},
])
def test_shading_option_applies_the_thresholds_to_the_lines(levels):
    dark, line, mid, flat = (levels.get(k, d) for k, d in (
        ("dark_below", 76.5), ("line_above", 125), ("mid_below", 145), ("flat_gray", 125)))
    pixels, images = _pages()
    node = preprocess.ExtractLineArt()
    (lines,) = node.extract(images, "tiny")
    (shaded,) = node.extract(images, "tiny", True, **levels)
    assert shaded.shape == lines.shape
    for i in range(2):
        page = np.asarray(_gray(pixels[i]), dtype=np.float64)
        want = _levels(lines[i, ..., 0])
        want = np.where(page < dark, 0, want)
        want = np.where((want > line) & (page > dark) & (page < mid), flat, want)
        got = _levels(shaded[i])
        for c in range(3):
            np.testing.assert_array_equal(got[..., c], want)
        assert (got[..., 0] == 0).sum() > (_levels(lines[i, ..., 0]) == 0).sum()  # black areas were painted
        assert (got[..., 0] == flat).sum() > (_levels(lines[i, ..., 0]) == flat).sum()  # and flat mid-tones


@pytest.mark.parametrize("name, value", [("dark_below", float("nan")), ("line_above", 300), ("flat_gray", -1)])
def test_bad_threshold_is_refused(name, value):
    with pytest.raises(InputError, match=name):
        preprocess.ExtractLineArt().extract(_pages(1)[1], "tiny", True, **{name: value})


# ---- Screentone Preprocess -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def converter(models):
    return ScreenStyleConverter.from_release(models / "colorflow" / "tiny")


@pytest.mark.parametrize("blend, pages", [(True, 2), (False, 1)])
def test_screentone_is_the_converter_with_seed_plus_page_index(converter, blend, pages):
    pixels, _ = _pages(1)
    images = torch.from_numpy(np.repeat(pixels, pages, 0).astype(np.float32) / 255)  # the same page again
    (out,) = preprocess.ScreentonePreprocess().preprocess(images, "tiny", 7, blend)
    assert out.shape == (pages, H, W, 3)
    convert = converter.screenstyle_condition if blend else converter.to_screentone
    page = Image.fromarray(pixels[0])
    for i in range(pages):
        want = np.asarray(convert(page, 7 + i), dtype=np.int64)
        np.testing.assert_array_equal(_levels(out[i]), want)
    if pages > 1:
        assert not np.array_equal(_levels(out[0]), _levels(out[1]))  # page i draws its own noise


def test_screentone_generator_device(monkeypatch):
    """The node's generator_device reaches the converter's noise draw; cuda without a GPU (forced, so the
    test means the same on a GPU machine) is refused before any network loads."""
    seen = []
    real = ScreenStyleConverter.screenstyle_condition

    def spy(self, q15, seed, generator_device="unset"):
        seen.append(generator_device)
        return real(self, q15, seed, generator_device)

    monkeypatch.setattr(ScreenStyleConverter, "screenstyle_condition", spy)
    preprocess.ScreentonePreprocess().preprocess(_pages(1)[1], "tiny", 0, True, generator_device="cpu")
    assert seen == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="generator_device 'cuda' needs an NVIDIA GPU"):
        preprocess.ScreentonePreprocess().preprocess(_pages(1)[1], "partial", 0, True, generator_device="cuda")


# ---- errors, cache, devices, progress, cancel ----------------------------------------------------

def test_missing_release_files_give_the_weights_error(models):
    partial = models / "colorflow" / "partial"
    images = _pages(1)[1]
    with pytest.raises(WeightsError, match=LINE_EXTRACTOR_FILE) as lines_error:
        preprocess.ExtractLineArt().extract(images, "partial")
    with pytest.raises(WeightsError, match="ScreenVAE") as screen_error:
        preprocess.ScreentonePreprocess().preprocess(images, "partial", 0)
    for error in (lines_error, screen_error):
        assert str(partial) in str(error.value) and "huggingface.co/TencentARC/ColorFlow" in str(error.value)
    assert LINE_EXTRACTOR_FILE in preprocess.ExtractLineArt.VALIDATE_INPUTS(release="partial")
    assert G_RGB2INTSCR_FILE in preprocess.ScreentonePreprocess.VALIDATE_INPUTS(release="partial")
    with pytest.raises(WeightsError, match="not found"):
        preprocess.ExtractLineArt().extract(images, "elsewhere")


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 1, 1, 3), "too small"),
    (torch.rand(2, 5, 40, 3), "too small"),
    (torch.rand(1, 8, 8, 2), "channels"),
    ("page.png", "IMAGE"),
    (torch.zeros(0, 8, 8, 3), "empty"),
])
def test_bad_images_are_refused(images, message):
    with pytest.raises(InputError, match=message):
        preprocess.ExtractLineArt().extract(images, "tiny")
    with pytest.raises(InputError, match=message):
        preprocess.ScreentonePreprocess().preprocess(images, "tiny", 0)


def test_networks_are_cached_and_reloaded_when_the_file_changes(models):
    from colorflow_core.release.paths import ReleasePaths

    paths = ReleasePaths(models / "colorflow" / "tiny")
    first = preprocess._preprocessor("lines", paths)
    assert preprocess._preprocessor("lines", paths) is first
    stat = os.stat(paths.line_extractor)
    os.utime(paths.line_extractor, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert preprocess._preprocessor("lines", paths) is not first


def test_progress_cancel_and_offload(monkeypatch):
    """Progress per page, cancel between pages, and the networks offloaded afterwards even on a cancel
    (the compute device is told apart from the offload device by a marker, as both are the CPU here)."""
    compute, offload = torch.device("cpu", 0), torch.device("cpu")
    monkeypatch.setattr(preprocess, "_compute_device", lambda: compute)
    monkeypatch.setattr(comfy_glue, "offload_device", lambda: offload)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(comfy_glue, "progress_callback", lambda total: lambda done, n: calls.append((done, n)))
    preprocess.ExtractLineArt().extract(_pages(3)[1], "tiny")
    assert calls == [(1, 3), (2, 3), (3, 3)]

    class Cancelled(Exception):
        pass

    checks = []

    def cancel_on_second_page():
        checks.append(1)
        if len(checks) == 2:
            raise Cancelled

    monkeypatch.setattr(comfy_glue, "check_interrupt", cancel_on_second_page)
    calls.clear()
    with pytest.raises(Cancelled):
        preprocess.ScreentonePreprocess().preprocess(_pages(3)[1], "tiny", 0)
    assert calls == [(1, 3)]  # stopped before the second page
    assert checks == [1, 1]
    for _, loaded in preprocess._CACHE.values():
        assert loaded.device == offload


# ---- style switching in Load ColorFlow Model ----------------------------------------------------

def _base(models, style: str) -> str:
    from colorflow_core.testing import base_folder

    return str(base_folder(models / "colorflow" / "tiny", style))


def test_switching_styles_shares_the_common_networks(models):
    """The sketch styles use GraySD's fusion net (as the hub release does), so all three share it."""
    loader = model_node.LoadColorFlowModel()
    (screen,) = loader.load("screenstyle", "tiny", _base(models, "screenstyle"), "fp32", screentone=True)
    (sketch,) = loader.load("sketch", "tiny", _base(models, "sketch"), "fp32")
    (shading,) = loader.load("shading", "tiny", _base(models, "shading"), "fp32")
    a, b, c = screen.engine, sketch.engine, shading.engine
    assert b.encoder is a.encoder and c.encoder is a.encoder
    assert b.upscaler.fusion is a.upscaler.fusion and c.upscaler.fusion is a.upscaler.fusion
    assert c.lines is b.lines is not None  # the line extractor too, between the sketch styles
    assert b.pipeline is not a.pipeline and c.pipeline is not b.pipeline
    device = a.device
    assert model_node.last_loaded(models / "colorflow" / "tiny", device, torch.float32) is c
    assert model_node.last_loaded(models / "colorflow" / "tiny", device, torch.float16) is None


def test_loaded_models_are_held_weakly(models):
    """ComfyUI must stay able to free a model it dropped: the registry alone keeps nothing alive."""
    release = models / "colorflow" / "tiny"
    (handle,) = model_node.LoadColorFlowModel().load("screenstyle", "tiny", _base(models, "screenstyle"), "fp32",
                                                     screentone=False)
    device = handle.engine.device
    assert model_node.last_loaded(release, device, torch.float32) is handle.engine
    del handle
    gc.collect()
    assert model_node.last_loaded(release, device, torch.float32) is None
