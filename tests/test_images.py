"""Image loading, mode normalisation, page fitting (`process_image`), folders and tensor conversion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.images import (
    check_page,
    list_image_files,
    load_image,
    natural_sort_key,
    normalize_mode,
    pil_to_tensor,
    process_image,
    tensor_to_pil,
)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


# ---------------------------------------------------------------- load_image

def test_load_image_reads_and_decodes(tmp_path):
    path = tmp_path / "page.png"
    Image.new("RGB", (20, 30), (10, 20, 30)).save(path)
    img = load_image(path)
    assert img.size == (20, 30) and img.getpixel((5, 5)) == (10, 20, 30)


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_load_image_bad_file_names_it(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="broken.png"):
        load_image(path)


def test_load_image_truncated_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.png"):
        load_image(cut)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


# ---------------------------------------------------------------- normalize_mode

def test_rgba_transparent_background_becomes_white_not_hidden_black():
    data = np.zeros((4, 4, 4), dtype=np.uint8)  # RGB black everywhere ...
    data[0, 0] = (200, 10, 10, 255)  # ... one opaque red pixel
    data[0, 1] = (0, 0, 0, 128)  # half-transparent black over white paper
    out = normalize_mode(Image.fromarray(data, "RGBA"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (200, 10, 10)
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert all(abs(v - 255 * (1 - 128 / 255)) <= 1 for v in out.getpixel((1, 0)))


def test_la_composites_to_gray():
    img = Image.merge("LA", (Image.new("L", (3, 3), 0), Image.new("L", (3, 3), 0)))
    out = normalize_mode(img)
    assert out.mode == "L" and set(out.getdata()) == {255}


def test_palette_with_transparency_and_pa():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0
    out = normalize_mode(img)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((2, 2)) == (255, 255, 255)
    pa = normalize_mode(img.convert("PA"))
    assert pa.getpixel((0, 0)) == (255, 0, 0) and pa.getpixel((2, 2)) == (255, 255, 255)


def test_palette_without_transparency_is_rgb():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    out = normalize_mode(img)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (0, 128, 255)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_scaled_by_257(mode):
    values = np.array([[0, 257 * 100], [65535, 257 * 37]], dtype=np.uint16)
    img = Image.new(mode, (2, 2))
    for (y, x), v in np.ndenumerate(values):
        img.putpixel((x, y), int(v))
    out = normalize_mode(img)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[0, 100], [255, 37]])


def test_sixteen_bit_png_roundtrip(tmp_path):
    path = tmp_path / "scan16.png"
    Image.fromarray(np.array([[0, 257 * 200]], dtype=np.uint16)).save(path)
    np.testing.assert_array_equal(np.asarray(normalize_mode(load_image(path))), [[0, 200]])


def test_int32_out_of_16_bit_range_is_stretched():
    img = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(normalize_mode(img)), [[0, 128, 255]])


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(normalize_mode(unit)), [[0, 128, 255]])
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(normalize_mode(wide)), [[0, 128, 255, 128]])


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "RGBX"])
def test_other_colour_modes_become_rgb(mode):
    if mode == "LAB":
        img = Image.new("LAB", (5, 5), (128, 128, 128))
    else:
        img = Image.new("RGB", (5, 5), (30, 140, 220)).convert(mode)
    out = normalize_mode(img)
    assert out.mode == "RGB" and out.size == (5, 5)
    if mode == "LAB":  # L* = 50, a* = b* = 0: sRGB mid gray 119
        assert all(abs(v - 119) <= 1 for v in out.getpixel((0, 0)))
    else:
        assert all(abs(a - b) <= 2 for a, b in zip(out.getpixel((0, 0)), (30, 140, 220)))


def test_bilevel_becomes_l():
    out = normalize_mode(Image.new("1", (3, 3), 1))
    assert out.mode == "L" and set(out.getdata()) == {255}


# ---------------------------------------------------------------- check_page / process_image

@pytest.mark.parametrize("wh", [(1, 1), (7, 100), (100, 7)])
def test_tiny_pages_refused(wh):
    with pytest.raises(InputError, match="too small"):
        check_page(Image.new("L", wh))
    with pytest.raises(InputError, match="too small"):
        process_image(Image.new("L", wh), 64, 96)


def test_eight_pixel_page_accepted():
    assert process_image(Image.new("L", (8, 8), 50), 64, 96).size == (64, 96)


def test_near_ratio_resized_straight():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (160, 100, 3), dtype=np.uint8))  # 0.625 vs 0.667: 6 % off
    expected = img.resize((64, 96), Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(process_image(img, 64, 96)), np.asarray(expected))


def test_twenty_to_one_strip_is_centre_cropped():
    data = np.zeros((20, 400, 3), dtype=np.uint8)
    data[:, :, 2] = 255  # blue ends
    data[:, 160:240] = (255, 0, 0)  # red centre, wider than the 13-px crop of ratio 64:96
    out = process_image(Image.fromarray(data), 64, 96)
    assert out.size == (64, 96)
    assert set(out.getdata()) == {(255, 0, 0)}


def test_one_to_twenty_strip_is_centre_cropped():
    data = np.zeros((400, 20), dtype=np.uint8)
    data[180:220] = 200
    out = process_image(Image.fromarray(data), 96, 64)
    assert out.mode == "RGB" and set(out.getdata()) == {(200, 200, 200)}


def test_extreme_target_ratio_on_thin_source_does_not_crash():
    # 8 px wide page fitted to a 32:1 size: the crop is clamped to 1 px instead of 0 px.
    out = process_image(Image.new("L", (8, 1000), 10), 2048, 64)
    assert out.size == (2048, 64)


def test_small_reference_is_upscaled_and_rgba_page_on_white():
    assert process_image(Image.new("RGB", (10, 12), "red"), 64, 96).getpixel((30, 40)) == (255, 0, 0)
    out = process_image(Image.new("RGBA", (64, 96), (0, 0, 0, 0)), 64, 96)
    assert set(out.getdata()) == {(255, 255, 255)}


# ---------------------------------------------------------------- folders

def test_list_image_files_natural_order_skips_others(tmp_path):
    for name in ["page10.png", "page2.jpg", "Page3.PNG", "page1.webp", "notes.txt", ".hidden.png", "cover.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["cover.jpeg", "page1.webp", "page2.jpg", "Page3.PNG", "page10.png"]


def test_natural_sort_key_compares_digit_runs_as_numbers():
    names = ["ch2_p10.png", "ch10_p1.png", "ch2_p9.png", "CH2_P1.png", "ch2_p01b.png"]
    ordered = sorted((Path(n) for n in names), key=natural_sort_key)
    assert [p.name for p in ordered] == ["CH2_P1.png", "ch2_p01b.png", "ch2_p9.png", "ch2_p10.png", "ch10_p1.png"]


def test_list_image_files_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no image files"):
        list_image_files(tmp_path)
    with pytest.raises(InputError, match="not found"):
        list_image_files(tmp_path / "missing")


# ---------------------------------------------------------------- tensors

def test_tensor_roundtrip_is_exact():
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8))
    tensor = pil_to_tensor(img)
    assert tensor.shape == (7, 5, 3) and tensor.dtype == torch.float32
    assert 0 <= float(tensor.min()) and float(tensor.max()) <= 1
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(img))


def test_tensor_helpers_gray_and_clamping():
    assert pil_to_tensor(Image.new("L", (3, 2), 255)).shape == (2, 3, 3)
    out = tensor_to_pil(torch.tensor([[[-1.0], [2.0]]]))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    with pytest.raises(InputError, match="shape"):
        tensor_to_pil(torch.zeros(1, 4, 4, 3))
