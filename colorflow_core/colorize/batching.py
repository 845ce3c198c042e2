"""The page-batch driver shared by the SD and PixArt in-context colorization pipelines.

Both colorize canvases the same way around their own networks: check the call, cut the pages into
batches, per batch prepare latents + conditioning and run the scheduler's steps, decode and convert.
Subclasses supply the scheduler class, `prepare` and `step`. Page i always draws with seed + i
(`seeding`), so a page never depends on the batch size or its neighbours.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputError, NumericalError
from ..finite import check_finite
from ..runtime import performance
from ..runtime.seeding import page_seeds, seeded_randn
from .conditioning import conditioning_images, guider_conditioning

ProgressFn = Callable[[int, int], None]


def move(net: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Plain `nn.Module.to`: diffusers' `ModelMixin.to` warns on every dtype cast (even with no
    float32-only modules), which would repeat on each load and device move."""
    return nn.Module.to(net, device, dtype)


def float_image_to_pil(array: np.ndarray) -> Image.Image:
    """Float (H,W,3) in [0,1] → 8-bit RGB by rounding, as diffusers' postprocess does."""
    return Image.fromarray((array * 255).round().astype(np.uint8))


def check_call(canvases: Sequence[Image.Image], masks: Sequence[Image.Image], steps: int, multiple: int) -> None:
    """One InputError for a call the pipelines cannot run (before any network work)."""
    if len(canvases) != len(masks):
        raise InputError(f"{len(canvases)} canvases but {len(masks)} masks")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if len({c.size for c in canvases}) > 1:
        raise InputError(f"all canvases of one call must have the same size, got {sorted({c.size for c in canvases})}")
    for canvas, mask in zip(canvases, masks):
        if canvas.size != mask.size:
            raise InputError(f"canvas {canvas.size} and mask {mask.size} differ in size")
        if canvas.size[0] % multiple or canvas.size[1] % multiple:
            raise InputError(f"canvas size {canvas.size} must be a multiple of {multiple} on both sides")


class PageBatchPipeline(ABC):
    """In-context colorization of canvases in page batches; the subclass owns the networks.

    Attributes the subclass sets: ``vae``, ``image_processor`` (a `VaeImageProcessor`),
    ``scheduler_config``, ``device`` (where inputs are built) and ``dtype``.
    """

    default_cfg: float  # the original pipeline's CFG scale
    scheduler_class: Any  # a diffusers multistep scheduler class (fresh per batch: it keeps history)
    bytes_per_latent_pixel: int = performance.BYTES_PER_LATENT_PIXEL_PER_DTYPE_BYTE

    vae: Any
    image_processor: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every network the pipeline runs, by name."""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of the denoised latents."""

    @property
    @abstractmethod
    def conditioning_channels(self) -> int:
        """The guider's conditioning channels (`conditioning.CONDITIONING_CHANNELS`)."""

    @abstractmethod
    def prepare(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                use_cfg: bool, generator_device: str = "cpu", init_noise_sigma: float = 1.0) -> Any:
        """Initial latents (``.latents``) and conditioning of one page batch."""

    @abstractmethod
    def step(self, scheduler: Any, t: torch.Tensor, batch: Any, cfg: float,
             guider_strength: float) -> torch.Tensor:
        """One guided denoising step on the whole batch; updates and returns ``batch.latents``."""

    @property
    def vae_scale_factor(self) -> int:
        return int(self.image_processor.config.vae_scale_factor)

    @torch.no_grad()
    def prepare_pages(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                      use_cfg: bool, generator_device: str = "cpu",
                      init_noise_sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial latents (B,c,h,w) and guider conditioning of a page batch, CFG-ordered:
        (2B,C,h,w) [uncond pages..., cond pages...], or (B,C,h,w) without CFG.

        Page i's initial latents and its conditioning posterior draws each come from a generator
        seeded with its seed, as the original's generator and global RNG were after seeding."""
        latents, cond_u, cond_c = [], [], []
        for canvas, mask, seed in zip(canvases, masks, seeds):
            width, height = canvas.size
            h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
            latents.append(seeded_randn((1, self.latent_channels, h, w), seed, generator_device) * init_noise_sigma)
            posteriors = []
            for image in conditioning_images(canvas, self.conditioning_channels):
                posterior = self.vae.encode(self.image_processor.preprocess(image).to(self.device, self.vae.dtype)).latent_dist
                posteriors.append((posterior.mean, posterior.std))
            cond = guider_conditioning(posteriors, mask, seed, self.vae.config.scaling_factor, generator_device)
            cond_u.append(cond[0:1])
            cond_c.append(cond[1:2])
        conditioning = torch.cat(cond_u + cond_c) if use_cfg else torch.cat(cond_c)
        return torch.cat(latents).to(self.device, self.dtype), conditioning.to(self.device, self.dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PageBatchPipeline":
        """Move (and optionally cast) the networks; prompt embeddings are cast per call."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for net in self.networks().values():
            move(net, self.device, self.dtype)
        return self

    def make_scheduler(self, steps: int) -> Any:
        """A fresh scheduler from the base config with its timesteps set; one per batch."""
        scheduler = self.scheduler_class.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → float images (B,3,H,W) in [0,1], one page at a time to bound VAE memory."""
        out = []
        for z in latents.split(1):
            x = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
            out.append((x.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def page_bytes(self, latent_hw: tuple[int, int]) -> int:
        """Estimated working memory of one page at this latent size (performance.page_working_bytes)."""
        return performance.page_working_bytes(latent_hw, self.dtype, self.bytes_per_latent_pixel)

    def auto_batch_size(self, canvas_size: tuple[int, int], pages: int, free_bytes: int | None = None) -> int:
        """Pages per batch for canvases of ``canvas_size`` (W, H), from performance.choose_batch_size."""
        width, height = canvas_size
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        return performance.choose_batch_size(pages, self.device, self.page_bytes(latent), free_bytes)

    def __call__(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], steps: int = 10,
                 cfg: float | None = None, guider_strength: float = 1.0, seed: int = 0,
                 generator_device: str = "cpu", batch_size: int | None = None,
                 progress: ProgressFn | None = None, check_interrupt: Callable[[], None] | None = None,
                 output_type: Literal["pil", "np"] = "pil") -> list[Image.Image] | list[np.ndarray]:
        """Colorize canvases (2W x 2H, all the same size) whose mask (PIL 'L', 255 = page) marks the
        region to paint. Page i uses ``seed + i``; ``cfg`` None = ``default_cfg``, ≤ 1
        runs a single conditional pass. ``output_type="np"`` returns float (2H,2W,3) arrays in [0,1]
        instead of the 8-bit (rounded) images."""
        check_call(canvases, masks, steps, 2 * self.vae_scale_factor)
        if not canvases:
            return []
        guidance = self.default_cfg if cfg is None else cfg
        n = len(canvases)
        size = batch_size or self.auto_batch_size(canvases[0].size, n)
        if size < 1:
            raise InputError(f"batch size must be at least 1, got {size}")
        use_cfg = guidance > 1.0
        seeds = page_seeds(seed, n)
        results: list[Any] = []
        done, total = 0, n * steps
        for idx in performance.page_runs(range(n), size):
            start = idx[0]
            scheduler = self.make_scheduler(steps)
            batch = self.prepare([canvases[i] for i in idx], [masks[i] for i in idx], [seeds[i] for i in idx],
                                 use_cfg, generator_device, scheduler.init_noise_sigma)
            for t in scheduler.timesteps:
                if check_interrupt is not None:
                    check_interrupt()
                self.step(scheduler, t, batch, guidance, guider_strength)
                done += len(idx)
                if progress is not None:
                    progress(done, total)
            try:  # NaN would become black pixels: fail the pages instead (finite.check_finite)
                check_finite(batch.latents, "in-context colorization (the denoised latents)", self.dtype)
                decoded = self.decode(batch.latents)
                check_finite(decoded, "in-context colorization (the VAE-decoded image)", self.dtype)
            except NumericalError as exc:
                raise exc.shifted(start) from None
            images = decoded.permute(0, 2, 3, 1).cpu().numpy()
            results.extend(images if output_type == "np" else [float_image_to_pil(a) for a in images])
        return results
