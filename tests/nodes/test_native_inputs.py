"""ColorFlow Apply's refusals and its CFG/page batch layout, against a real ComfyUI's classes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.support.native import comfy_or_skip

comfy_or_skip()

import comfy.supported_models as supported_models  # noqa: E402

from colorflow_core.errors import InputError  # noqa: E402
from nodes.native.nodes import ColorFlowApply
from nodes.native.patch import _GuiderWrapper, check_sd15, conditioning_latents, patch_model  # noqa: E402

pytestmark = pytest.mark.comfyui


def _model_of(config) -> SimpleNamespace:
    """A MODEL whose ``.model.model_config`` is ComfyUI's config object of that family (no weights)."""
    return SimpleNamespace(model=SimpleNamespace(model_config=config, diffusion_model=None))


@pytest.mark.parametrize("family, config", [
    ("SDXL", supported_models.SDXL({"context_dim": 2048, "adm_in_channels": 2816})),
    ("Flux", supported_models.Flux({"image_model": "flux"})),
])
def test_other_model_families_are_refused_naming_sd15(family, config):
    with pytest.raises(InputError, match=rf"supports Stable Diffusion 1\.5 models only.*this MODEL is {family}\b"):
        check_sd15(_model_of(config))
    with pytest.raises(InputError, match="Stable Diffusion 1.5"):  # the node refuses before any work
        ColorFlowApply().apply(_model_of(config), None, None, None, None, 1.0, 1.0, 0.0, 1.0, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=math.nan), "guider strength"),
    (dict(strength=-1.0), "guider strength"),
    (dict(lora_strength=9.0), "LoRA strength"),
    (dict(start_percent=0.6, end_percent=0.4), "after end percent"),
])
def test_bad_numbers_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        patch_model(None, None, torch.zeros(1, 2, 5, 8, 8), **kwargs)


def test_a_vae_other_than_sd15s_is_refused():
    with pytest.raises(InputError, match="SD1.5 VAE"):
        conditioning_latents(SimpleNamespace(latent_channels=16), [], [], [], 0.18215, 5)


def _wrapper(pages: int = 2, h: int = 4, w: int = 6) -> _GuiderWrapper:
    cond = torch.arange(pages * 2, dtype=torch.float32).reshape(pages, 2, 1, 1, 1).expand(pages, 2, 5, h, w)
    return _GuiderWrapper(None, cond.clone(), 1.0, (1e9, 0.0), None)


@pytest.mark.parametrize("chunks", [[0, 1], [1, 0], [0], [1], [1, 0, 0]])
def test_conditioning_follows_cond_or_uncond_and_page_order(chunks):
    wrapper = _wrapper()
    x = torch.zeros(2 * len(chunks), 4, 4, 6)
    got = wrapper.batch_conditioning(x, {"cond_or_uncond": chunks})[:, 0, 0, 0]
    # page p's draw 0 (value 2p) goes with the negative prompt (index 1), draw 1 (2p + 1) with a positive
    expected = [2 * p + (0 if c == 1 else 1) for c in chunks for p in range(2)]
    assert got.tolist() == expected


def test_latent_size_and_page_count_mismatches_are_refused():
    wrapper = _wrapper()
    with pytest.raises(InputError, match="1 page\\(s\\) per prompt but the retrieval context has 2"):
        wrapper.batch_conditioning(torch.zeros(2, 4, 4, 6), {"cond_or_uncond": [0, 1]})
    with pytest.raises(InputError, match="the sampled latent is 64x64 px but the canvas is 48x32"):
        wrapper.batch_conditioning(torch.zeros(4, 4, 8, 8), {"cond_or_uncond": [0, 1]})
    with pytest.raises(InputError, match="cond_or_uncond"):
        wrapper.batch_conditioning(torch.zeros(4, 4, 4, 6), {})


@pytest.mark.slow
@pytest.mark.parametrize("channels", [5, 9], ids=["sd5_whole_canvas", "sd9_split_canvas"])
def test_conditioning_latents_equal_the_diffusers_posterior_sample(channels):
    """ComfyUI's VAE gives the guider what our pipeline gives it: per conditioning image
    (mean + std · randn(seed + i), drawn in image order) · 0.18215, with the mask after the first."""
    import comfy.sd
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from colorflow_core.colorize.conditioning import split_canvas
    from colorflow_core.retrieve.canvas import canvas_mask, latent_mask
    from colorflow_core.sizes import PageSize
    from tests.support.native import fill_random
    from tests.support.native_tiny import SD_VAE

    vae = fill_random(AutoencoderKL(**SD_VAE).eval(), seed=3)
    comfy_vae = comfy.sd.VAE(sd=vae.state_dict())
    size = PageSize(64, 64)
    g = torch.Generator().manual_seed(5)
    canvases = [Image.fromarray((torch.rand(*size.canvas[::-1], 3, generator=g) * 255).byte().numpy()) for _ in range(2)]
    masks = [canvas_mask(size)] * 2
    got = conditioning_latents(comfy_vae, canvases, masks, [10, 11], 0.18215, channels)

    h, w = size.latent
    assert got.shape == (2, 2, channels, h, w)
    for i, canvas in enumerate(canvases):
        draws = torch.Generator().manual_seed(10 + i)
        samples = []
        for image in ([canvas] if channels == 5 else split_canvas(canvas)):
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            with torch.no_grad():
                posterior = vae.encode(pixels * 2 - 1).latent_dist
            samples.append((posterior.mean + posterior.std * torch.randn((2, 4, h, w), generator=draws)) * 0.18215)
        expected = torch.cat([samples[0], latent_mask(masks[i], (h, w)).expand(2, 1, h, w), *samples[1:]], dim=1)
        assert (got[i] - expected).abs().max().item() <= 1e-4
