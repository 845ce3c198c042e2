"""`testing.write_release`: the written release loads through the real loaders, every LoRA tensor lands."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel, UNet2DConditionModel
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from colorflow_core.colorize.lora import infer_lora_rank, normalize_lora_keys
from colorflow_core.engine import ColorFlow, ColorizeSettings
from colorflow_core.errors import InputError
from colorflow_core.preprocess.styles import STYLES
from colorflow_core.release.paths import PIXART_STYLES, ReleasePaths
from colorflow_core.release.pixart import LORA_FILE, load_pixart_style
from colorflow_core.release.sd import load_graysd, load_sd_base
from colorflow_core.sizes import PageSize
from colorflow_core.testing import base_folder, write_release
from colorflow_core.testing.pixart import transformer_config
from colorflow_core.testing.sd import model_config
from colorflow_core.weights import load_state_dict_file


@pytest.fixture(scope="module")
def full_tiny(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"), styles=STYLES, screentone=True, line_extractor=True)


def test_every_style_loads_and_runs_through_the_engine(full_tiny) -> None:
    paths = ReleasePaths(full_tiny)
    paths.require(["graysd", "graysd_fusion", "image_encoder", "screenstyle", "line_extractor",
                   *PIXART_STYLES, *(f"{s}_fusion" for s in PIXART_STYLES)])
    loaded: dict[str, ColorFlow] = {}
    for style in STYLES:  # each reuses the previous one's shared networks, as a multi-style session does
        loaded[style] = ColorFlow.load(style, full_tiny, base_folder(full_tiny, style), device="cpu",
                                       reuse=next(reversed(loaded.values()), None))
    # one page through every stage of a PixArt style: the shared fusion net fits the PixArt VAE (the CLI
    # test runs screenstyle pages)
    size = PageSize(64, 64)
    rng = np.random.default_rng(0)
    page = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    reference = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    sketch = loaded["sketch"]
    [result] = sketch.run([page], sketch.reference_pool([reference], size), size, ColorizeSettings(steps=1))
    assert result.image.size == size.guide and result.canvas.size == size.canvas


def test_every_sd_lora_tensor_lands(full_tiny) -> None:
    base = load_sd_base(base_folder(full_tiny, "screenstyle"))
    paths = ReleasePaths(full_tiny)
    load_graysd(paths, base.unet)  # raises unless file and adapter match tensor for tensor
    written = normalize_lora_keys(load_state_dict_file(paths.graysd_lora))
    state = base.unet.state_dict()
    assert written and len(written) == sum(".lora_" in k for k in state)
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor), name
        assert tensor.abs().min() > 0  # random and non-zero (the B matrices too)
    assert infer_lora_rank(written) == 4  # the tiny default


@pytest.mark.parametrize("style", PIXART_STYLES)
def test_every_pixart_lora_tensor_lands(full_tiny, style) -> None:
    components = load_pixart_style(full_tiny, base_folder(full_tiny, style), style)
    assert components.lora_tensors == len(load_state_dict_file(full_tiny / style / LORA_FILE))


def test_only_the_asked_parts_are_written(tmp_path) -> None:
    root = write_release(tmp_path, styles=("sketch",), lora_rank=8)
    paths = ReleasePaths(root)
    paths.require(["sketch", "sketch_fusion", "image_encoder"])
    assert paths.missing(["graysd"]) and paths.missing(["shading"])
    assert paths.missing(["screenstyle"]) and paths.missing(["line_extractor"])  # big: only when asked
    assert not base_folder(root, "screenstyle").exists()
    assert infer_lora_rank(load_state_dict_file(paths.style_lora("sketch"))) == 8


@pytest.mark.parametrize("kwargs", [{"scale": "huge"}, {"styles": ("watercolour",)}, {"styles": ()}])
def test_bad_arguments_are_refused(tmp_path, kwargs) -> None:
    with pytest.raises(InputError):
        write_release(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def _meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("part", ["unet", "vae", "image_encoder"])
def test_reduced_scale_keeps_the_full_structure_with_fewer_channels(part) -> None:
    """Same layers and parameter names as the full networks, every tensor narrower or equal."""
    build = {
        "unet": lambda c: UNet2DConditionModel.from_config(c),
        "vae": lambda c: AutoencoderKL.from_config(c),
        "image_encoder": lambda c: CLIPVisionModelWithProjection(CLIPVisionConfig(**c)),
    }[part]
    full = _meta(lambda: build(model_config(part, "full"))).state_dict()
    reduced = _meta(lambda: build(model_config(part, "reduced"))).state_dict()
    assert list(reduced) == list(full)
    assert all(r.dim() == f.dim() and all(a <= b for a, b in zip(r.shape, f.shape))
               for r, f in zip(reduced.values(), full.values()))
    assert sum(r.numel() for r in reduced.values()) < sum(f.numel() for f in full.values()) / 4


def test_reduced_pixart_keeps_the_full_structure() -> None:
    full = _meta(lambda: PixArtTransformer2DModel(**transformer_config("full"))).state_dict()
    reduced = _meta(lambda: PixArtTransformer2DModel(**transformer_config("reduced"))).state_dict()
    assert list(reduced) == list(full)
    assert sum(r.numel() for r in reduced.values()) < sum(f.numel() for f in full.values()) / 4
