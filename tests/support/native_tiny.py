"""Tiny random-weight files for the native-path server test, in the formats ComfyUI's core loaders read.

- an SD1.5 checkpoint ComfyUI detects as SD15 (UNet: model_channels 320, two levels instead of
  four; the SD VAE and CLIP-L text encoder at their real shapes, which ComfyUI's loaders fix);
- a kohya-style style LoRA and an ldm-format ControlNet for that UNet;
- a ColorFlow release folder holding only ``GraySD/`` (`testing.sd.write_graysd` for that UNet: a
  ColorGuider of the same two-level shape and a ColorFlow UNet LoRA in the release's peft key form).
Needs ComfyUI importable (see native_support.comfy_or_skip): its own key maps and ControlNet class
build the ldm-format files.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from colorflow_core.testing.sd import write_graysd
from tests.support.native import fill_random

DIFFUSERS_UNET = dict(block_out_channels=(320, 320), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                      cross_attention_dim=768, attention_head_dim=8, sample_size=16)
# The same UNet in the terms of ComfyUI's diffusers → ldm key map (comfy.utils.unet_to_diffusers).
COMFY_KEYS_CONFIG = {"num_res_blocks": [2, 2], "channel_mult": [1, 1], "transformer_depth": [1, 1, 0, 0],
                     "transformer_depth_output": [1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1}
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                        projection_dim=768)
LORA_RANK = 4


def _meta(cls, *args, **kwargs):
    with torch.device("meta"):
        model = cls(*args, **kwargs)
    return model.to_empty(device="cpu").eval()


def _ldm_unet(unet: UNet2DConditionModel, keys_config: dict = COMFY_KEYS_CONFIG) -> dict[str, torch.Tensor]:
    import comfy.utils

    key_map = comfy.utils.unet_to_diffusers(keys_config)
    state = unet.state_dict()
    unmapped = sorted(set(state) - set(key_map))
    assert not unmapped, f"tiny UNet keys without an ldm name: {unmapped[:5]}"
    return {f"model.diffusion_model.{key_map[k]}": v for k, v in state.items()}


def comfy_keys_config(unet_config) -> dict:
    """A diffusers SD1.x-style UNet config in the terms of comfy.utils.unet_to_diffusers (cf. COMFY_KEYS_CONFIG)."""
    n, base = unet_config["layers_per_block"], unet_config["block_out_channels"][0]
    attn = [int(t.startswith("CrossAttn")) for t in unet_config["down_block_types"]]
    attn_up = [int(t.startswith("CrossAttn")) for t in reversed(unet_config["up_block_types"])]
    return {"num_res_blocks": [n] * len(attn), "channel_mult": [c // base for c in unet_config["block_out_channels"]],
            "transformer_depth": [d for d in attn for _ in range(n)],
            "transformer_depth_output": [d for d in attn_up for _ in range(n + 1)], "transformer_depth_middle": 1}


def ldm_checkpoint(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """A full SD1.x single-file checkpoint in the original LDM/CompVis key layout (ComfyUI's key maps):
    ``model.diffusion_model.*``, ``first_stage_model.*`` (ldm VAE names, 1x1-conv attention) and
    ``cond_stage_model.transformer.text_model.*``."""
    import comfy.diffusers_convert

    checkpoint = _ldm_unet(unet, comfy_keys_config(unet.config))
    ldm_vae = comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict())
    checkpoint.update({f"first_stage_model.{k}": v for k, v in ldm_vae.items()})
    for k, v in text_encoder.state_dict().items():  # transformers >= 5.6 drops the `text_model.` level
        checkpoint[f"cond_stage_model.transformer.{k if k.startswith('text_model.') else 'text_model.' + k}"] = v
    return {k: v.contiguous() for k, v in checkpoint.items()}


def _controlnet(ldm_unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A random ControlNet built by ComfyUI's own class from the UNet's detected config (ldm keys)."""
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops

    config = dict(comfy.model_detection.model_config_from_unet(ldm_unet, "model.diffusion_model.").unet_config)
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, device="cpu", dtype=torch.float32,
                                     operations=comfy.ops.disable_weight_init)
    fill_random(net, seed=13)
    return {f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}


def _style_lora(unet: UNet2DConditionModel, seed: int) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every cross-attention key projection (what a user's style LoRA touches)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.randn((LORA_RANK, module.in_features), generator=g) * 0.1
            out[f"{key}.lora_up.weight"] = torch.randn((module.out_features, LORA_RANK), generator=g) * 0.1
            out[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    return out


def write_native_files(models: Path, release_name: str = "native_tiny") -> dict[str, str]:
    """Write every file under ``models`` (a ComfyUI models/ folder); returns the names to pick in the nodes."""
    unet = fill_random(_meta(UNet2DConditionModel, **DIFFUSERS_UNET), seed=11)
    ldm_unet = _ldm_unet(unet)
    vae = fill_random(_meta(AutoencoderKL, **SD_VAE), seed=12)
    clip = fill_random(_meta(CLIPTextModel, CLIP_L), seed=14)
    checkpoint = dict(ldm_unet)
    checkpoint.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    checkpoint.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.state_dict().items()})
    names = {"checkpoint": "tiny_sd15.safetensors", "lora": "tiny_style_lora.safetensors",
             "controlnet": "tiny_controlnet.safetensors", "release": release_name}
    for folder, name, state in (("checkpoints", names["checkpoint"], checkpoint),
                                ("loras", names["lora"], _style_lora(unet, seed=15)),
                                ("controlnet", names["controlnet"], _controlnet(ldm_unet))):
        (models / folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(models / folder / name))

    # the release's guider and UNet LoRA, mirroring this UNet (`from_unet`, the release's LoRA key form)
    write_graysd(models / "colorflow" / release_name, DIFFUSERS_UNET, seed=16, lora_rank=LORA_RANK)
    return names
