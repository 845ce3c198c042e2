"""The patched ComfyUI MODEL computes what our diffusers UNet + ColorGuider + LoRA compute.

A full-size SD1.5 UNet (random weights) is built with diffusers, then loaded into a real ComfyUI from
its state dict. One Euler step through ComfyUI's own sampler (CFG 7.5, so the negative and positive
prompts form one batch) evaluates the model once; its noise prediction for every CFG half and page is
compared with the diffusers computation on the same inputs (2 pages, different guider conditioning
per page and per CFG half, so any batch-layout or uncond/cond mix-up shows).
"""
from __future__ import annotations

import gc

import pytest
import torch

from tests.support.native import comfy_or_skip, fill_random, sd15_sigma

comfy_or_skip()

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from colorflow_core.colorize.lora import SD_UNET_LORA_TARGETS, add_lora_adapter, remove_lora  # noqa: E402
from colorflow_core.colorize.lora_convert import unet_lora_to_kohya  # noqa: E402
from colorflow_core.colorize.sd.guider import ColorGuiderSDModel  # noqa: E402
from colorflow_core.colorize.sd.injection import inject_guider_residuals  # noqa: E402
from colorflow_core.errors import InputError  # noqa: E402
from nodes.native.patch import make_guider_patcher, patch_model  # noqa: E402

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

PAGES, H, W = 2, 8, 8
T, CFG, STRENGTH, RANK = 600, 7.5, 0.8, 4
TOL = 1e-4


def _meta_built(cls, **config):
    with torch.device("meta"):
        model = cls(**config)
    return model.to_empty(device="cpu").eval()


@pytest.fixture(scope="module")
def case():
    """Inputs, the diffusers references, and the ComfyUI model loaded from the same UNet weights."""
    g = torch.Generator().manual_seed(7)
    sigma = sd15_sigma(T)
    inputs = {
        "noise": torch.randn((PAGES, 4, H, W), generator=g),
        "cond": torch.randn((PAGES, 2, 5, H, W), generator=g),  # [uncond, cond] per page
        "cond9": torch.randn((PAGES, 2, 9, H, W), generator=g),  # the same for a 9-channel guider
        "positive": torch.randn((1, 77, 768), generator=g),
        "negative": torch.randn((1, 77, 768), generator=g),
        "sigma": sigma,
    }
    unet = fill_random(_meta_built(UNet2DConditionModel, cross_attention_dim=768), seed=1)
    base_state = dict(unet.state_dict())
    guider = fill_random(_meta_built(ColorGuiderSDModel), seed=2)
    # A 9-channel guider differs only in conv_in_condition's input channels: it shares every other
    # tensor with the 5-channel one (no second full-size copy in memory).
    with torch.device("meta"):
        guider9 = ColorGuiderSDModel(conditioning_channels=9)
    conv_in = guider.conv_in_condition.weight
    guider9.load_state_dict(dict(guider.state_dict(), **{"conv_in_condition.weight": torch.randn(
        conv_in.shape[0], 4 + 9, *conv_in.shape[2:], generator=g) * conv_in.std()}), assign=True)
    guider9.eval()

    add_lora_adapter(unet, rank=RANK, alpha=RANK, target_modules=SD_UNET_LORA_TARGETS)
    lora = {k: v for k, v in unet.state_dict().items() if ".lora_" in k}
    with torch.no_grad():
        for k, v in lora.items():
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    lora = {k: v.clone() for k, v in lora.items()}

    x = sigma * inputs["noise"]  # the sampler's start from an all-zero latent: noise * sigma
    x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5  # ComfyUI's c_in * x = diffusers' scaled input
    text = torch.cat([inputs["negative"]] * PAGES + [inputs["positive"]] * PAGES)

    def noise_pred(with_guider: ColorGuiderSDModel | None, page_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(2P,4,h,w) [negative-prompt pages, positive-prompt pages], as the original's CFG batch."""
        with torch.no_grad():
            residuals = None
            if with_guider is not None:
                cond = torch.cat([page_cond[:, 0], page_cond[:, 1]])
                residuals = with_guider(x_in, T, cond, conditioning_scale=STRENGTH)
            with inject_guider_residuals(unet, residuals):
                return unet(x_in, T, encoder_hidden_states=text).sample

    refs = {"colorflow": noise_pred(guider, inputs["cond"]), "colorflow9": noise_pred(guider9, inputs["cond9"]),
            "lora_only": noise_pred(None)}
    remove_lora(unet)
    refs["plain"] = noise_pred(None)
    del unet
    gc.collect()

    comfy_model = comfy.sd.load_diffusion_model_state_dict(base_state)
    del base_state
    gc.collect()
    assert type(comfy_model.model.model_config).__name__ == "SD15"
    yield {"inputs": inputs, "refs": refs, "model": comfy_model, "guider": make_guider_patcher(guider),
           "guider9": make_guider_patcher(guider9), "lora": unet_lora_to_kohya(lora)}


def _one_step(model, inputs) -> torch.Tensor:
    """One ComfyUI Euler step sigma → 0; returns its model evaluation's noise prediction as
    (2P,4,h,w) [negative-prompt pages, positive-prompt pages], read off at ComfyUI's apply_model."""
    sigma = inputs["sigma"]
    calls = []

    def record(apply_model, args):
        denoised = apply_model(args["input"], args["timestep"], **args["c"])
        calls.append((list(args["cond_or_uncond"]), (args["input"] - denoised) / sigma))
        return denoised

    model = model.clone()
    model.set_model_unet_function_wrapper(record)
    comfy.sample.sample_custom(
        model, inputs["noise"], CFG, comfy.samplers.ksampler("euler"), torch.tensor([sigma, 0.0]),
        [[inputs["positive"], {}]], [[inputs["negative"], {}]],
        torch.zeros((PAGES, 4, H, W)), disable_pbar=True, seed=0)
    assert len(calls) == 1, "ComfyUI should evaluate both CFG halves in one batch here"
    order, eps = calls[0]
    halves = dict(zip(order, eps.chunk(len(order))))
    return torch.cat([halves[1], halves[0]])  # conds index 1 = negative prompt, 0 = positive


def test_patched_model_equals_diffusers_guider_and_lora(case):
    patched = patch_model(case["model"], case["guider"], case["inputs"]["cond"], strength=STRENGTH,
                          kohya_lora=case["lora"], lora_strength=1.0)
    got = _one_step(patched, case["inputs"])
    refs = case["refs"]
    # the guider and the LoRA each change the result far beyond the tolerance, so the test can fail
    assert (refs["colorflow"] - refs["lora_only"]).abs().max() > 100 * TOL
    assert (refs["lora_only"] - refs["plain"]).abs().max() > 100 * TOL
    assert (got - refs["colorflow"]).abs().max().item() <= TOL


def test_sd9_patched_model_equals_diffusers_guider_and_lora(case):
    """The same with a 9-channel guider ([canvas without page, mask, page only] conditioning)."""
    patched = patch_model(case["model"], case["guider9"], case["inputs"]["cond9"], strength=STRENGTH,
                          kohya_lora=case["lora"], lora_strength=1.0)
    got = _one_step(patched, case["inputs"])
    refs = case["refs"]
    assert (refs["colorflow9"] - refs["colorflow"]).abs().max() > 100 * TOL  # a different guider, a different result
    assert (got - refs["colorflow9"]).abs().max().item() <= TOL
    with pytest.raises(InputError, match=r"\(pages, 2, 9, h, w\)"):  # 5-channel conditioning for a 9-channel guider
        patch_model(case["model"], case["guider9"], case["inputs"]["cond"])


def test_unpatched_comfy_model_equals_diffusers_unet(case):
    """The harness itself: ComfyUI's UNet, sigma→timestep mapping and c_in scaling match diffusers'."""
    got = _one_step(case["model"], case["inputs"])
    assert (got - case["refs"]["plain"]).abs().max().item() <= TOL


def test_zero_strength_without_lora_equals_unpatched_model(case):
    patched = patch_model(case["model"], case["guider"], case["inputs"]["cond"], strength=0.0)
    plain = _one_step(case["model"], case["inputs"])
    assert torch.equal(_one_step(patched, case["inputs"]), plain)


def test_lora_strength_zero_and_end_percent_zero_give_plain_model(case):
    """Guider gated off for the whole schedule (end 0 %) and LoRA strength 0: the base model again."""
    patched = patch_model(case["model"], case["guider"], case["inputs"]["cond"], strength=1.0,
                          kohya_lora=case["lora"], lora_strength=0.0, start_percent=0.0, end_percent=0.0)
    assert (_one_step(patched, case["inputs"]) - case["refs"]["plain"]).abs().max().item() <= TOL


def test_lora_only_matches_diffusers_lora(case):
    """Guider outside its window (start 99 %), LoRA on: ComfyUI's LoRA patching equals the peft adapter."""
    patched = patch_model(case["model"], case["guider"], case["inputs"]["cond"], strength=1.0,
                          kohya_lora=case["lora"], lora_strength=1.0, start_percent=0.99, end_percent=1.0)
    assert (_one_step(patched, case["inputs"]) - case["refs"]["lora_only"]).abs().max().item() <= TOL
