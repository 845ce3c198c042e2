"""In-context colorization (ICP) on SD1.5 + ColorGuider (spec §5), batched over pages.

Differences from the original, all keeping a page's numbers identical to a batch-1 run of it:
- the "manga" / "" prompt embeddings are computed once at construction (§11.19), so the text
  encoder can be dropped afterwards;
- each canvas is VAE-encoded once and its posterior sampled with two different draws, one per CFG
  half (the original encodes two identical copies and samples both from the global RNG, §11.3/7);
- every random draw comes from an explicit generator seeded with ``seed + i`` for page i
  (ARCHITECTURE "Random draws"), so results do not depend on batch size or neighbours;
- guidance ≤ 1 runs a single conditional pass (the original's batch-2 mask breaks there, §11.7).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .errors import InputError
from .injection import inject_guider_residuals
from .release import ReleasePaths, load_graysd, load_sd_base
from .retrieval import latent_mask

PROMPT = "manga"
NEGATIVE_PROMPT = ""
ProgressFn = Callable[[int, int], None]

# Rough activation cost of one page (both CFG halves, UNet + guider) per latent pixel and per byte of
# the compute dtype; used only to pick a batch size from free CUDA memory.
_BYTES_PER_LATENT_PIXEL_PER_DTYPE_BYTE = 48 * 1024
_CPU_MAX_BATCH = 4
_CUDA_MAX_BATCH = 16


@dataclass
class PreparedBatch:
    """Per-batch denoising state: latents (B,4,h,w) and the CFG-ordered guider conditioning."""

    latents: torch.Tensor
    conditioning: torch.Tensor  # (2B,5,h,w) [uncond pages..., cond pages...] or (B,5,h,w) without CFG


class ColorFlowSDPipeline:
    """SD1.5 UNet (LoRA already injected) + ColorGuider + VAE, driven by UniPC."""

    def __init__(self, unet: torch.nn.Module, guider: torch.nn.Module, vae: torch.nn.Module,
                 text_encoder: torch.nn.Module | None, tokenizer: Any,
                 scheduler_config: Mapping[str, Any], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.unet, self.guider, self.vae = unet, guider, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.device, self.dtype = torch.device(device), dtype
        self.image_processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))
        self.negative_embeds, self.prompt_embeds = self._encode_prompts([NEGATIVE_PROMPT, PROMPT])
        self.to(self.device, dtype)

    @torch.no_grad()
    def _encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """CLIP last_hidden_state of each prompt, padded to the tokenizer's max length (diffusers' rule)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise InputError("the text encoder was dropped before the prompt embeddings were computed")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        te_device = next(self.text_encoder.parameters()).device
        embeds = self.text_encoder(ids.to(te_device))[0]
        return [e[None] for e in embeds]

    def drop_text_encoder(self) -> None:
        """Release the text encoder: the two prompt embeddings are all the pipeline needs."""
        self.text_encoder = None
        self.tokenizer = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ColorFlowSDPipeline":
        """Move (and optionally cast) the nets and cached embeddings."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for net in (self.unet, self.guider, self.vae):
            # cast only when needed: diffusers warns on every dtype `.to()` of a ModelMixin
            if net.dtype == self.dtype:
                net.to(self.device)
            else:
                net.to(self.device, self.dtype)
        self.negative_embeds = self.negative_embeds.to(self.device, self.dtype)
        self.prompt_embeds = self.prompt_embeds.to(self.device, self.dtype)
        return self

    @classmethod
    def from_release(cls, release_root: str | os.PathLike, base: str | os.PathLike | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                     allow_download: bool = False, merge_lora: bool = False) -> "ColorFlowSDPipeline":
        """SD1.5 base (release.load_sd_base) + `GraySD/` guider and UNet LoRA (release.load_graysd).

        The LoRA is added in float32 before the cast; the text encoder is dropped after the prompt
        embeddings are computed.
        """
        sd = load_sd_base(base, torch.float32, "cpu", allow_download=allow_download)
        guider = load_graysd(ReleasePaths(release_root), sd.unet, torch.float32, "cpu", merge=merge_lora)
        pipe = cls(sd.unet, guider, sd.vae, sd.text_encoder, sd.tokenizer, sd.scheduler_config, device, dtype)
        pipe.drop_text_encoder()
        return pipe

    # ---- the three stages, public so tests can drive single steps ----

    def make_scheduler(self, steps: int) -> UniPCMultistepScheduler:
        """A fresh UniPC (it keeps multistep history) with its timesteps set; one per batch."""
        scheduler = UniPCMultistepScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def prepare(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                cfg: bool, generator_device: str = "cpu", init_noise_sigma: float = 1.0) -> PreparedBatch:
        """Initial latents and 5-channel conditioning of a page batch (spec §5 steps 1-5)."""
        latents, cond_u, cond_c = [], [], []
        for canvas, mask, seed in zip(canvases, masks, seeds):
            pixels = self.image_processor.preprocess(canvas.convert("RGB")).to(self.device, self.vae.dtype)
            h, w = pixels.shape[-2] // self.image_processor.config.vae_scale_factor, \
                pixels.shape[-1] // self.image_processor.config.vae_scale_factor
            latents.append(_randn((1, 4, h, w), seed, generator_device) * init_noise_sigma)
            posterior = self.vae.encode(pixels).latent_dist
            noise = _randn((2, 4, h, w), seed, generator_device).to(self.device, posterior.mean.dtype)
            sample = (posterior.mean + posterior.std * noise) * self.vae.config.scaling_factor
            m = latent_mask(mask, (h, w)).to(self.device, sample.dtype).expand(2, 1, h, w)
            cond = torch.cat([sample, m], dim=1)
            cond_u.append(cond[0:1])
            cond_c.append(cond[1:2])
        conditioning = torch.cat(cond_u + cond_c) if cfg else torch.cat(cond_c)
        return PreparedBatch(torch.cat(latents).to(self.device, self.dtype), conditioning.to(self.device, self.dtype))

    @torch.no_grad()
    def step(self, scheduler: UniPCMultistepScheduler, t: torch.Tensor, batch: PreparedBatch,
             guidance_scale: float, guider_scale: float) -> torch.Tensor:
        """One guided denoising step on the whole batch; updates and returns ``batch.latents``."""
        b = batch.latents.shape[0]
        cfg = batch.conditioning.shape[0] == 2 * b
        x = torch.cat([batch.latents] * 2) if cfg else batch.latents
        x = scheduler.scale_model_input(x, t)
        text = torch.cat([self.negative_embeds] * b + [self.prompt_embeds] * b) if cfg \
            else torch.cat([self.prompt_embeds] * b)
        residuals = self.guider(x, t, batch.conditioning, conditioning_scale=guider_scale)
        with inject_guider_residuals(self.unet, residuals):
            eps = self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        batch.latents = scheduler.step(eps, t, batch.latents, return_dict=False)[0]
        return batch.latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → float images (B,3,H,W) in [0,1], one page at a time to bound VAE memory."""
        out = []
        for z in latents.split(1):
            x = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
            out.append((x.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # ---- the whole ICP ----

    def __call__(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], steps: int = 10,
                 guidance_scale: float = 7.5, guider_scale: float = 1.0, seed: int = 0,
                 generator_device: str = "cpu", batch_size: int | None = None,
                 progress: ProgressFn | None = None, check_interrupt: Callable[[], None] | None = None,
                 output_type: Literal["pil", "np"] = "pil") -> list[Image.Image] | list[np.ndarray]:
        """Colorize canvases (2W x 2H) whose mask (PIL 'L', 255 = page) marks the region to paint.

        Page i uses ``seed + i``. ``output_type="np"`` returns float (2H,2W,3) arrays in [0,1]
        instead of the 8-bit (rounded) images.
        """
        if len(canvases) != len(masks):
            raise InputError(f"{len(canvases)} canvases but {len(masks)} masks")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive integer, got {steps!r}")
        if len({c.size for c in canvases}) > 1:
            raise InputError(f"all canvases of one call must have the same size, got {sorted({c.size for c in canvases})}")
        for canvas, mask in zip(canvases, masks):
            if canvas.size != mask.size:
                raise InputError(f"canvas {canvas.size} and mask {mask.size} differ in size")
        n = len(canvases)
        size = batch_size or self.auto_batch_size(canvases, n)
        if size < 1:
            raise InputError(f"batch size must be at least 1, got {size}")
        cfg = guidance_scale > 1.0
        results: list[Any] = []
        done, total = 0, n * steps
        for start in range(0, n, size):
            idx = range(start, min(start + size, n))
            scheduler = self.make_scheduler(steps)
            batch = self.prepare([canvases[i] for i in idx], [masks[i] for i in idx],
                                 [seed + i for i in idx], cfg, generator_device, scheduler.init_noise_sigma)
            for t in scheduler.timesteps:
                if check_interrupt is not None:
                    check_interrupt()
                self.step(scheduler, t, batch, guidance_scale, guider_scale)
                done += len(idx)
                if progress is not None:
                    progress(done, total)
            images = self.decode(batch.latents).permute(0, 2, 3, 1).cpu().numpy()
            results.extend(images if output_type == "np" else [_to_pil(a) for a in images])
        return results

    def auto_batch_size(self, canvases: Sequence[Image.Image], n: int) -> int:
        """Pages per UNet batch: all (≤4) on CPU; on CUDA as many as ~70 % of free memory allows."""
        if n == 0:
            return 1
        if self.device.type != "cuda":
            return min(n, _CPU_MAX_BATCH)
        free, _ = torch.cuda.mem_get_info(self.device)
        w, h = canvases[0].size
        elem = torch.finfo(self.dtype).bits // 8
        per_page = (w // 8) * (h // 8) * _BYTES_PER_LATENT_PIXEL_PER_DTYPE_BYTE * elem
        return max(1, min(n, _CUDA_MAX_BATCH, math.floor(0.7 * free / per_page)))


def _randn(shape: tuple[int, ...], seed: int, generator_device: str) -> torch.Tensor:
    """Standard normal draws from a fresh generator seeded with ``seed`` (float32, on CPU)."""
    gen = torch.Generator(generator_device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=generator_device, dtype=torch.float32).cpu()


def _to_pil(array: np.ndarray) -> Image.Image:
    """Float (H,W,3) in [0,1] → 8-bit RGB by rounding, as diffusers' postprocess does."""
    return Image.fromarray((array * 255).round().astype(np.uint8))
