"""The guider's conditioning (colorflow_core.conditioning): which images are encoded, the draw order,
and which guider configs a release may carry. Parity with the original's 9-channel images runs over
every sd case whose guider has 9 conditioning channels (`-k sd9` selects the sd9_tiny case)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.colorize.conditioning import conditioning_images, guider_conditioning, split_canvas
from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
from colorflow_core.errors import WeightsError
from colorflow_core.retrieve.canvas import canvas_mask, latent_mask
from colorflow_core.sizes import PageSize
from tests.support.parity import parity_cases

SIZE = PageSize(64, 96)


def _canvas(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    width, height = SIZE.canvas
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).byte().numpy())


def test_split_canvas_blacks_out_the_page_and_keeps_only_the_page():
    canvas = _canvas(0)
    a, b = split_canvas(canvas)
    arr, arr_a, arr_b = (np.asarray(i) for i in (canvas, a, b))
    w, h = SIZE.width, SIZE.height
    centre = (slice(h // 2, h // 2 + h), slice(w // 2, w // 2 + w))
    assert (arr_a[centre] == 0).all() and (arr_b[centre] == arr[centre]).all()
    outside = np.ones(arr.shape[:2], bool)
    outside[centre] = False
    assert (arr_a[outside] == arr[outside]).all() and (arr_b[outside] == 0).all()


def test_conditioning_images_follow_the_channel_count():
    canvas = _canvas(1)
    (whole,) = conditioning_images(canvas, 5)
    assert np.array_equal(np.asarray(whole), np.asarray(canvas))
    a, b = conditioning_images(canvas, 9)
    assert [np.asarray(i).tolist() for i in (a, b)] == [np.asarray(i).tolist() for i in split_canvas(canvas)]
    with pytest.raises(WeightsError, match="7 conditioning channels"):
        conditioning_images(canvas, 7)


@pytest.mark.parametrize("images", [1, 2], ids=["sd5", "sd9"])
def test_draws_come_in_image_order_from_the_page_seed(images):
    h, w = SIZE.latent
    means = [torch.randn(1, 4, h, w) for _ in range(images)]
    stds = [torch.rand(1, 4, h, w) + 0.5 for _ in range(images)]
    mask = canvas_mask(SIZE)
    got = guider_conditioning(list(zip(means, stds)), mask, seed=42, scaling_factor=0.5)
    assert got.shape == (2, 4 * images + 1, h, w)
    draws = torch.Generator().manual_seed(42)
    samples = [(m + s * torch.randn((2, 4, h, w), generator=draws)) * 0.5 for m, s in zip(means, stds)]
    expected = torch.cat([samples[0], latent_mask(mask, (h, w)).expand(2, 1, h, w), *samples[1:]], dim=1)
    assert torch.equal(got, expected)
    assert not torch.equal(got[0], got[1])  # the two CFG halves get different draws


def _nine_channel_cases() -> list:
    cases = [c for c in parity_cases("sd")
             if json.loads((c / "weights" / "GraySD" / "config.json").read_text())["conditioning_channels"] == 9]
    if not cases:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no sd case with a 9-channel guider"))]
    return [pytest.param(c, id=c.name) for c in cases]


@pytest.mark.parametrize("case", _nine_channel_cases())
def test_images_a_and_b_match_the_original(case: Path):
    expected = case / "expected"
    canvas = Image.open(expected / "canvas.png").convert("RGB")
    a, b = conditioning_images(canvas, 9)
    for ours, name in ((a, "canvas_without_page.png"), (b, "page_only.png")):
        theirs = np.asarray(Image.open(expected / name).convert("RGB"))
        assert np.array_equal(np.asarray(ours), theirs), name


@pytest.mark.parametrize("channels", [0, 4, 7, 13, True, "9"])
def test_a_guider_config_of_another_channel_count_is_refused_at_load(tmp_path, channels):
    case = parity_cases("sd")[0] if parity_cases("sd") else pytest.skip("no sd parity case")
    folder = tmp_path / "GraySD"
    shutil.copytree(case / "weights" / "GraySD", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, conditioning_channels=channels)))
    with pytest.raises(WeightsError) as error:
        ColorGuiderSDModel.from_release_folder(folder)
    message = str(error.value)
    assert str(folder / "config.json") in message and "conditioning_channels" in message
    assert "5 or 9" in message
