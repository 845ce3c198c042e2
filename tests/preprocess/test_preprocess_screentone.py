"""ScreenStyle building blocks and converter behaviour, on tiny networks (ngf=4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.preprocess.screentone import (
    G_RGB2INTSCR_FILE,
    SCREENVAE_DEC_FILE,
    ScreenCodeGenerator,
    ScreenDecoder,
    ScreenStyleConverter,
    _ApplyNoise,
    _Level,
    _padded,
    _SpectralConv2d,
)
from colorflow_core.testing.preprocess import fill_random, write_screenstyle


@pytest.fixture(scope="module")
def converter() -> ScreenStyleConverter:
    return ScreenStyleConverter(fill_random(ScreenCodeGenerator(ngf=4), 10), fill_random(ScreenDecoder(ngf=4), 20))


@pytest.fixture(scope="module")
def page() -> Image.Image:
    """A colour page that is not a multiple of 256 (padding happens) and has structure."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:90, 0:70]
    base = np.stack([xx * 3, yy * 2, (xx + yy) * 2], axis=-1) % 256
    return Image.fromarray((base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8))


def test_spectral_weight_uses_stored_vectors():
    conv = _SpectralConv2d(3, 5, stride=1)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    u_svd, s, vh = torch.linalg.svd(weight.flatten(1))
    state = {"bias": torch.randn(5), "weight_orig": weight.float(), "weight_u": u_svd[:, 0].float(),
             "weight_v": vh[0].float()}
    conv.load_state_dict(state)
    # with the top singular vectors stored, the weight is normalised by the largest singular value
    torch.testing.assert_close(conv.weight.double(), weight / s[0], atol=1e-5, rtol=1e-5)
    # with other stored vectors, by u . W v (no power iteration, as in eval mode)
    u, v = torch.randn(5, dtype=torch.float64), torch.randn(27, dtype=torch.float64)
    conv.load_state_dict({**state, "weight_u": u.float(), "weight_v": v.float()})
    torch.testing.assert_close(conv.weight.double(), weight / (u @ weight.flatten(1) @ v), atol=1e-4, rtol=1e-4)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, state["bias"]))


def test_noise_reaches_only_the_first_half_of_the_channels():
    noise_block = _ApplyNoise(6)
    noise_block.load_state_dict({"weight": torch.rand(6) + 0.5, "bias": torch.rand(6) + 0.5})
    x = torch.randn(1, 6, 4, 5)
    out = noise_block(x, torch.Generator().manual_seed(7))
    drawn = torch.randn((1, 6, 4, 5), generator=torch.Generator().manual_seed(7))
    expected_first = x[:, :3] + noise_block.weight[:3].view(1, 3, 1, 1) * drawn[:, :3] + noise_block.bias[:3].view(1, 3, 1, 1)
    torch.testing.assert_close(out[:, :3], expected_first.detach())
    assert torch.equal(out[:, 3:], x[:, 3:])


@pytest.mark.parametrize("skip", ["add", "cat"])
def test_skip_carries_the_activated_input(skip):
    """The original's first LeakyReLU runs in place, so the skip sees leaky_relu(x), not x."""
    level = _Level([nn.LeakyReLU(0.2), nn.Identity()], channels=2, skip=skip)
    x = torch.randn(1, 2, 3, 3)
    activated = F.leaky_relu(x, 0.2)
    expected = activated + activated if skip == "add" else torch.cat([activated, activated], 1)
    torch.testing.assert_close(level(x), expected)


def test_padding_colours_and_sizes():
    rgb = np.full((300, 256, 3), 7, dtype=np.uint8)
    padded = _padded(rgb, (255, 0, 0))
    assert padded.shape == (512, 256, 3)  # next multiple of 256; an exact multiple stays
    assert (padded[300:] == (255, 0, 0)).all() and (padded[:300] == 7).all()
    gray = _padded(rgb[:, :, :1], (255,))
    assert gray.shape == (512, 256, 1) and (gray[300:] == 255).all()


def test_screentone_is_seeded_by_the_page_seed_only(converter, page):
    first = converter.to_screentone(page, seed=5)
    torch.manual_seed(999)  # the global RNG plays no part
    assert np.array_equal(np.asarray(first), np.asarray(converter.to_screentone(page, seed=5)))
    assert not np.array_equal(np.asarray(first), np.asarray(converter.to_screentone(page, seed=6)))


def test_screentone_image_is_the_truncated_tensor(converter, page):
    code, screen = converter.screen_tensors(page, seed=1)
    assert code.shape == (1, 4, 90, 70) and screen.shape == (1, 1, 90, 70)
    assert code.abs().max() <= 1 and screen.abs().max() <= 1
    image = converter.to_screentone(page, seed=1)
    assert image.mode == "RGB" and image.size == page.size
    expected = np.trunc((screen[0, 0].numpy() + 1) / 2 * 255).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(np.asarray(image)[:, :, channel], expected)


def test_condition_is_the_half_blend_of_the_grays(converter, page):
    screen = np.asarray(converter.to_screentone(page, seed=2).convert("L"), dtype=np.float64)
    gray = np.asarray(page.convert("L"), dtype=np.float64)
    expected = np.trunc(screen + 0.5 * (gray - screen)).astype(np.uint8)
    condition = converter.screenstyle_condition(page, seed=2)
    assert condition.mode == "RGB"
    for channel in range(3):
        assert np.array_equal(np.asarray(condition)[:, :, channel], expected)


def test_non_image_input_is_refused(converter):
    with pytest.raises(InputError):
        converter.screen_tensors(np.zeros((8, 8, 3), dtype=np.uint8), seed=0)


def test_missing_release_files_are_named(tmp_path):
    with pytest.raises(WeightsError) as error:
        ScreenStyleConverter.from_release(tmp_path)
    message = str(error.value)
    assert str(tmp_path / G_RGB2INTSCR_FILE) in message and str(tmp_path / SCREENVAE_DEC_FILE) in message
    write_screenstyle(tmp_path, {G_RGB2INTSCR_FILE: 0}, None)
    with pytest.raises(WeightsError) as error:
        ScreenStyleConverter.from_release(tmp_path)
    assert SCREENVAE_DEC_FILE in str(error.value) and G_RGB2INTSCR_FILE not in str(error.value)


def test_wrong_file_is_refused(tmp_path):
    write_screenstyle(tmp_path, {G_RGB2INTSCR_FILE: 0, SCREENVAE_DEC_FILE: 1}, None)
    ScreenStyleConverter.from_release(tmp_path)  # the pair written from our own layouts loads
    path = tmp_path / G_RGB2INTSCR_FILE
    state = torch.load(path, weights_only=True)
    state["model.model.1.weight_orig"] = torch.zeros(48, 3, 3, 3)  # an RGB-only generator
    torch.save(state, path)
    with pytest.raises(WeightsError, match="model.model.1.weight_orig"):
        ScreenStyleConverter.from_release(tmp_path)
    torch.save(torch.load(tmp_path / SCREENVAE_DEC_FILE, weights_only=True), path)  # files swapped
    with pytest.raises(WeightsError, match="missing"):
        ScreenStyleConverter.from_release(tmp_path)
