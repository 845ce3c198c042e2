"""Page sizes and their derived geometry, checked against the original's three sizes."""
from __future__ import annotations

import pytest

from colorflow_core.errors import InputError
from colorflow_core.sizes import PRESETS, PageSize, parse_size

# The original's per-size geometry: size → (guide, canvas, cell, crop, stride, latent (h, w))
SPEC_TABLE = {
    "640x640": ((960, 960), (1280, 1280), (320, 320), (480, 480), (160, 160), (160, 160)),
    "512x800": ((768, 1200), (1024, 1600), (256, 400), (384, 600), (128, 200), (200, 128)),
    "800x512": ((1200, 768), (1600, 1024), (400, 256), (600, 384), (200, 128), (128, 200)),
}


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_preset_geometry_matches_spec(name):
    size = PRESETS[name]
    assert str(size) == name
    assert (size.guide, size.canvas, size.cell, size.crop, size.stride, size.latent) == SPEC_TABLE[name]


def test_pasted_patch_and_crop_fit_in_page():
    for size in PRESETS.values():
        cell_w, cell_h = size.cell
        assert (cell_w - 2, cell_h - 2) in {(318, 318), (254, 398), (398, 254)}
        crop_w, crop_h = size.crop
        stride_x, stride_y = size.stride
        assert crop_w + stride_x == size.width and crop_h + stride_y == size.height


@pytest.mark.parametrize(
    "text,expected", [("512x800", (512, 800)), (" 640 X 640 ", (640, 640)), ("800×512", (800, 512))]
)
def test_parse_size(text, expected):
    size = parse_size(text)
    assert (size.width, size.height) == expected


@pytest.mark.parametrize("text", ["", "512", "512x", "ax b", "512x800x3", "-512x800"])
def test_parse_size_rejects_malformed(text):
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        parse_size(text)


@pytest.mark.parametrize("width,height", [(500, 800), (32, 800), (512, 4096), (0, 512)])
def test_unusable_sizes_refused(width, height):
    with pytest.raises(InputError, match="multiple of 32"):
        PageSize(width, height)


def test_non_integer_size_refused():
    with pytest.raises(InputError, match="integer"):
        PageSize(512.0, 800)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="integer"):
        PageSize(True, 800)  # type: ignore[arg-type]


def test_snap():
    assert PageSize.snap(500, 790) == PageSize(512, 800)
    assert PageSize.snap(10, 10_000) == PageSize(64, 2048)
    assert parse_size("1000x700", snap=True) == PageSize(992, 704)
    for bad in [(0, 100), (-5, 100), (float("nan"), 100), (100, float("inf"))]:
        with pytest.raises(InputError, match="positive"):
            PageSize.snap(*bad)


def test_small_sizes_keep_exact_geometry():
    size = PageSize(64, 96)  # the parity cases' size
    assert size.canvas == (128, 192) and size.crop == (48, 72) and size.stride == (16, 24)
    assert size.guide == (96, 144) and size.latent == (24, 16)
