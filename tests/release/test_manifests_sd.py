"""Full-size layouts on the meta device == the original's manifests: the real release will load."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from colorflow_core.colorize.lora import SD_UNET_LORA_TARGETS, add_lora_adapter
from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
from colorflow_core.testing.sd import guider_config_from_unet, model_config
from tests.support.parity import parity_root

MANIFESTS = parity_root() / "manifests"
pytestmark = pytest.mark.skipif(not MANIFESTS.is_dir(), reason=f"no manifests under {MANIFESTS}")


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    entries = {k: tuple(shape) for k, shape in data["entries"]}
    assert len(entries) == data["count"] == len(data["entries"])
    return entries


def layout(model: torch.nn.Module, only: str | None = None) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if only is None or only in k}


def assert_same_layout(ours: dict, theirs: dict) -> None:
    assert sorted(set(theirs) - set(ours)) == [], "missing from our network"
    assert sorted(set(ours) - set(theirs)) == [], "not in the release layout"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shapes differ"


def test_colorguider_sd15_full_size():
    config = json.loads((MANIFESTS / "colorguider_sd15_config.json").read_text())
    with torch.device("meta"):
        guider = ColorGuiderSDModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    expected = manifest("colorguider_sd15")
    assert_same_layout(layout(guider), expected)
    assert sum(v.numel() for v in guider.state_dict().values()) == 842_081_920


def test_guider_config_derived_from_the_sd15_unet_matches():
    """The synthetic writer's `from_unet` equivalent builds the released layout from SD1.5's config."""
    with torch.device("meta"):
        guider = ColorGuiderSDModel.from_config(guider_config_from_unet(model_config("unet", "full")))
    assert_same_layout(layout(guider), manifest("colorguider_sd15"))


def test_sd15_unet_lora_r64():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(model_config("unet", "full"))
        add_lora_adapter(unet, rank=64, alpha=64, target_modules=SD_UNET_LORA_TARGETS)
    ours = layout(unet, only=".lora_")
    assert_same_layout(ours, manifest("unet_lora_sd15_r64"))
    assert sum(torch.Size(s).numel() for s in ours.values()) == 23_937_024
