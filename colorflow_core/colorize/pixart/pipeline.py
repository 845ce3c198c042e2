"""In-context colorization (ICP, arXiv 2412.11815) on PixArt-alpha for the sketch / shading styles.

Differences from the original, all keeping a page's numbers identical to a batch-1 run of it:
- the T5 prompt embeddings come from a cache file (`prompts.PromptEmbeddings`);
- the guider outputs reach the upstream transformer through forward hooks (`injection`);
- each canvas half is VAE-encoded once and its posterior sampled with two draws, one per CFG half,
  from a generator seeded with ``seed + i`` (ARCHITECTURE "Random draws"): image_A's (2,4,h,w)
  first, then image_B's, exactly the original's global-RNG order;
- use_cfg ≤ 1 runs a single conditional pass (as upstream PixArt decides CFG), and the guider output
  can be scaled (``guider_strength``, 1.0 = the original).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from torch import nn

from ...errors import WeightsError
from ...options import DEFAULT_CFG
from ...sizes import vae_scale_factor
from ..batching import PageBatchPipeline
from ..conditioning import SPLIT_CANVAS
from .guider import ColorGuiderPixArtModel
from .injection import inject_pixart_controls
from .prompts import PIXART_HUB_REPO, PromptEmbeddings

log = logging.getLogger(__name__)


# Working memory of one page (both CFG halves, transformer + guider) per latent pixel and per byte of
# the compute dtype (performance.page_working_bytes): more than the UNet's, for the 2x2-patch tokens.
WORKING_BYTES_PER_LATENT_PIXEL = 64 * 1024


@dataclass
class PixArtBatch:
    """Per-batch denoising state: latents (B,4,h,w), CFG-ordered 9-channel conditioning and micro-conditions."""

    latents: torch.Tensor
    conditioning: torch.Tensor  # (2B,9,h,w) [uncond pages..., cond pages...] or (B,9,h,w) without CFG
    added_cond_kwargs: dict[str, torch.Tensor]


class ColorFlowPixArtPipeline(PageBatchPipeline):
    """PixArt-alpha transformer (LoRA already applied) + PixArt ColorGuider + VAE, driven by DPM-Solver++."""

    default_cfg = DEFAULT_CFG["sketch"]
    scheduler_class = DPMSolverMultistepScheduler
    bytes_per_latent_pixel = WORKING_BYTES_PER_LATENT_PIXEL

    def __init__(self, transformer: PixArtTransformer2DModel, guider: ColorGuiderPixArtModel, vae: AutoencoderKL,
                 scheduler: Any, prompt: PromptEmbeddings, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        prompt.check_for(transformer)
        check_guider_fits(guider, transformer)
        self.transformer, self.guider, self.vae, self.prompt = transformer, guider, vae, prompt
        self.scheduler_config = dict(scheduler.config)
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor(vae))
        self.to(device, dtype)

    def networks(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "guider": self.guider, "transformer": self.transformer}  # in the order a page uses them

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def conditioning_channels(self) -> int:
        """Always [image_A (4), mask (1), image_B (4)]: the PixArt pipeline of the original has no other layout."""
        return SPLIT_CANVAS

    def micro_conditions(self, canvas_size: tuple[int, int], batch: int) -> dict[str, torch.Tensor]:
        """`resolution` = (2H, 2W) and `aspect_ratio` = 2H/2W of the canvas, one row per batch entry."""
        width, height = canvas_size
        resolution = torch.tensor([[float(height), float(width)]]).repeat(batch, 1)
        aspect_ratio = torch.tensor([[float(height / width)]]).repeat(batch, 1)
        return {"resolution": resolution.to(self.device, self.dtype), "aspect_ratio": aspect_ratio.to(self.device, self.dtype)}

    def prepare(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                use_cfg: bool, generator_device: str = "cpu", init_noise_sigma: float = 1.0) -> PixArtBatch:
        """Initial latents, 9-channel conditioning (`PageBatchPipeline.prepare_pages`) and micro-conditions."""
        latents, conditioning = self.prepare_pages(canvases, masks, seeds, use_cfg, generator_device, init_noise_sigma)
        return PixArtBatch(latents, conditioning, self.micro_conditions(canvases[0].size, conditioning.shape[0]))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, conditioning: torch.Tensor | None,
                added_cond_kwargs: dict[str, torch.Tensor], use_cfg: bool, guider_strength: float = 1.0) -> torch.Tensor:
        """Raw transformer output (learned sigma included) for ``x`` = [uncond pages, cond pages] when
        ``use_cfg``, else cond pages only; ``conditioning=None`` runs without the guider."""
        rows = x.shape[0]
        timestep = t.reshape(-1)[:1].to(self.device).expand(rows)
        embeds, mask = self.prompt.cfg_batch(rows // 2 if use_cfg else rows, use_cfg, self.device, self.dtype)
        controls: list[torch.Tensor] = []
        if conditioning is not None:
            controls = [c * guider_strength for c in
                        self.guider(torch.cat([x, conditioning], dim=1), timestep, added_cond_kwargs)]
        with inject_pixart_controls(self.transformer, controls):
            return self.transformer(x, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
                                    added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]

    @torch.no_grad()
    def step(self, scheduler: DPMSolverMultistepScheduler, t: torch.Tensor, batch: PixArtBatch,
             cfg: float, guider_strength: float) -> torch.Tensor:
        """One guided denoising step on the whole batch; updates and returns ``batch.latents``."""
        use_cfg = batch.conditioning.shape[0] == 2 * batch.latents.shape[0]
        x = torch.cat([batch.latents] * 2) if use_cfg else batch.latents
        x = scheduler.scale_model_input(x, t)
        out = self.predict(x, t, batch.conditioning, batch.added_cond_kwargs, use_cfg, guider_strength)
        if use_cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + cfg * (out_c - out_u)
        if out.shape[1] == 2 * self.latent_channels:  # learned sigma: dropped after guidance, as upstream
            out = out[:, : self.latent_channels]
        batch.latents = scheduler.step(out, t, batch.latents, return_dict=False)[0]
        return batch.latents


def check_guider_fits(guider: ColorGuiderPixArtModel, transformer: PixArtTransformer2DModel) -> None:
    """The guider must see the transformer's latents and produce its hidden width, for at most its depth."""
    g, t = guider.config, transformer.config
    problems = []
    if g.num_attention_heads * g.attention_head_dim != t.num_attention_heads * t.attention_head_dim:
        problems.append(f"hidden width {g.num_attention_heads * g.attention_head_dim} vs "
                        f"{t.num_attention_heads * t.attention_head_dim}")
    if g.in_channels != t.in_channels or g.patch_size != t.patch_size:
        problems.append(f"latent channels/patch {g.in_channels}/{g.patch_size} vs {t.in_channels}/{t.patch_size}")
    if g.cond_channels != SPLIT_CANVAS:
        problems.append(f"{g.cond_channels} conditioning channels (the PixArt pipeline builds {SPLIT_CANVAS})")
    if guider.num_controls > len(transformer.transformer_blocks):
        problems.append(f"{guider.num_controls} guider blocks for {len(transformer.transformer_blocks)} transformer blocks")
    if problems:
        raise WeightsError("the PixArt ColorGuider does not fit this base transformer: " + "; ".join(problems)
                           + f". Use the base it was trained with ({PIXART_HUB_REPO}).")
