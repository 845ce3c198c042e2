"""In-context colorization (ICP) on SD1.5 + ColorGuider, batched over pages.

ICP is the "In-context Colorization Pipeline" of the ColorFlow paper (arXiv 2412.11815).

Differences from the original, all keeping a page's numbers identical to a batch-1 run of it:
- the "manga" / "" prompt embeddings are computed once at load (the original encodes them on
  every call); the text encoder is not kept;
- each conditioning image (the canvas, or for a 9-channel guider the canvas without its page and
  the page alone: `conditioning`) is VAE-encoded once and its posterior sampled with two different
  draws, one per CFG half (the original encodes two identical copies and samples both from the
  global RNG);
- every random draw comes from an explicit generator seeded with ``seed + i`` for page i
  (ARCHITECTURE "Random draws"), so results do not depend on batch size or neighbours;
- guidance ≤ 1 runs a single conditional pass (the original's batch-2 mask breaks there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from diffusers import UniPCMultistepScheduler
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from ...options import DEFAULT_CFG
from ...release.paths import ReleasePaths
from ...release.sd import encode_clip_prompts, load_graysd, load_sd_base
from ...sizes import vae_scale_factor
from ..batching import PageBatchPipeline
from ..prompts import NEGATIVE_PROMPT, PROMPT
from .injection import inject_guider_residuals


@dataclass
class PreparedBatch:
    """Per-batch denoising state: latents (B,4,h,w) and the CFG-ordered guider conditioning."""

    latents: torch.Tensor
    conditioning: torch.Tensor  # (2B,C,h,w) [uncond pages..., cond pages...] or (B,C,h,w) without CFG


class ColorFlowSDPipeline(PageBatchPipeline):
    """SD1.5 UNet (LoRA already injected) + ColorGuider + VAE, driven by UniPC."""

    default_cfg = DEFAULT_CFG["screenstyle"]
    scheduler_class = UniPCMultistepScheduler

    def __init__(self, unet: torch.nn.Module, guider: torch.nn.Module, vae: torch.nn.Module,
                 negative_embeds: torch.Tensor, prompt_embeds: torch.Tensor,
                 scheduler_config: Mapping[str, Any], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        """``negative_embeds`` / ``prompt_embeds``: the CLIP embeddings of "" and "manga" (see
        `encode_clip_prompts`), so no text encoder is held."""
        self.unet, self.guider, self.vae = unet, guider, vae
        self.scheduler_config = dict(scheduler_config)
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor(vae))
        self.set_prompt_embeds(negative_embeds, prompt_embeds)
        self.to(device, dtype)

    def set_prompt_embeds(self, negative: torch.Tensor, prompt: torch.Tensor) -> None:
        """Use these (77, c) or (1, 77, c) embeddings of NEGATIVE_PROMPT and PROMPT from now on."""
        self.negative_embeds = negative.reshape(1, *negative.shape[-2:])
        self.prompt_embeds = prompt.reshape(1, *prompt.shape[-2:])

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "guider": self.guider, "unet": self.unet}  # in the order a page uses them

    @classmethod
    def from_release(cls, release_root: str | os.PathLike, base: str | os.PathLike | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                     allow_download: bool = False, merge_lora: bool = False) -> "ColorFlowSDPipeline":
        """SD1.5 base (release.load_sd_base) + `GraySD/` guider and UNet LoRA (release.load_graysd).

        The LoRA is added in float32 before the cast; the text encoder is used once for the prompt
        embeddings and not kept.
        """
        sd = load_sd_base(base, torch.float32, "cpu", allow_download=allow_download)
        guider = load_graysd(ReleasePaths(release_root), sd.unet, torch.float32, "cpu", merge=merge_lora)
        negative, prompt = encode_clip_prompts(sd.text_encoder, sd.tokenizer, [NEGATIVE_PROMPT, PROMPT])
        return cls(sd.unet, guider, sd.vae, negative, prompt, sd.scheduler_config, device, dtype)

    # ---- the stages, public so tests can drive single steps ----

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def conditioning_channels(self) -> int:
        """5 ([canvas, mask]) or 9 ([canvas without page, mask, page only]), from the guider's config."""
        return int(self.guider.config.conditioning_channels)

    def prepare(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                use_cfg: bool, generator_device: str = "cpu", init_noise_sigma: float = 1.0) -> PreparedBatch:
        """Initial latents and guider conditioning of a page batch (`PageBatchPipeline.prepare_pages`)."""
        return PreparedBatch(*self.prepare_pages(canvases, masks, seeds, use_cfg, generator_device, init_noise_sigma))

    @torch.no_grad()
    def step(self, scheduler: UniPCMultistepScheduler, t: torch.Tensor, batch: PreparedBatch,
             cfg: float, guider_strength: float) -> torch.Tensor:
        """One guided denoising step on the whole batch; updates and returns ``batch.latents``."""
        b = batch.latents.shape[0]
        use_cfg = batch.conditioning.shape[0] == 2 * b
        x = torch.cat([batch.latents] * 2) if use_cfg else batch.latents
        x = scheduler.scale_model_input(x, t)
        text = torch.cat([self.negative_embeds] * b * use_cfg + [self.prompt_embeds] * b).to(self.device, self.dtype)
        residuals = self.guider(x, t, batch.conditioning, conditioning_scale=guider_strength)
        with inject_guider_residuals(self.unet, residuals):
            eps = self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
        if use_cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
        batch.latents = scheduler.step(eps, t, batch.latents, return_dict=False)[0]
        return batch.latents
