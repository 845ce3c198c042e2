"""Guided Super-Resolution Pipeline (GSRP) on an upstream diffusers ``AutoencoderKL``.

GSRP is the "Guided Super-Resolution Pipeline" of the ColorFlow paper (arXiv 2412.11815).

The original patched diffusers' VAE to return encoder features and to add fused features in the
decoder. Here the same points are reached with hooks: forward hooks capture the outputs of
``encoder.conv_in`` and ``encoder.down_blocks[0..3]``; forward pre-hooks add the fused levels
4, 3, 2, 1, 0 to the inputs of ``decoder.mid_block`` and ``decoder.up_blocks[0..3]``.

Random draws: page i's posterior noise comes from a fresh generator seeded ``seed_i +
GSRP_SEED_OFFSET`` (5; `seeding`, docs/ARCHITECTURE.md). The parity fixture's saved sample was drawn from the global RNG after
``manual_seed(seed + 5)`` *and* after building the fusion network (its default init consumes that
RNG); that depends on the network's size, so we do not imitate it (tests/upscale/test_parity_gsrp.py replays it).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from ..errors import InputError, NumericalError, WeightsError
from ..finite import check_finite
from ..images import normalize_mode, pil_to_tensor
from ..runtime import performance
from ..runtime.seeding import GSRP_SEED_OFFSET, page_generator, page_seeds
from ..sizes import vae_scale_factor
from .fusion import FusionNet

# Working memory of one page per guide pixel and per byte of the dtype (performance.page_working_bytes):
# the VAE encoder runs on colour and guide, the decoder at full size with the fused levels added.
WORKING_BYTES_PER_PIXEL = 2 * 1024


def centre_crop(canvas: Image.Image) -> Image.Image:
    """The W x H query region in the middle of a 2W x 2H canvas (the original's arithmetic)."""
    width, height = canvas.size
    new_w, new_h = width // 2, height // 2
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return canvas.crop((left, top, left + new_w, top + new_h))


def vae_feature_channels(vae: AutoencoderKL) -> tuple[int, ...]:
    """Widths of the 5 captured encoder features (conv_in, then each down block) = the fusion channels."""
    block_out = tuple(vae.config.block_out_channels)
    return (block_out[0],) + block_out


@contextmanager
def _untiled(vae: AutoencoderKL) -> Iterator[None]:
    """Tiling or slicing would run the hooked blocks per tile / per sample: force both off for the call."""
    saved = (vae.use_tiling, vae.use_slicing)
    vae.use_tiling = vae.use_slicing = False
    try:
        yield
    finally:
        vae.use_tiling, vae.use_slicing = saved


def encode_with_features(vae: AutoencoderKL, x: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
    """Posterior of ``x`` (in [-1, 1]) plus the outputs of encoder.conv_in and encoder.down_blocks[i]."""
    points = [vae.encoder.conv_in, *vae.encoder.down_blocks]
    captured: dict[int, torch.Tensor] = {}

    def capture(index: int) -> Callable:
        def hook(_module, _args, output):
            captured[index] = output
        return hook

    handles = [point.register_forward_hook(capture(i)) for i, point in enumerate(points)]
    try:
        with _untiled(vae):
            posterior = vae.encode(x).latent_dist
    finally:
        for handle in handles:
            handle.remove()
    return posterior, [captured[i] for i in range(len(points))]


def decode_with_features(vae: AutoencoderKL, z: torch.Tensor, fused: Sequence[torch.Tensor]) -> torch.Tensor:
    """Decode ``z`` (no scaling factor) adding fused levels deepest first to the mid/up block inputs."""
    points = [vae.decoder.mid_block, *vae.decoder.up_blocks]
    if len(fused) != len(points):
        raise ValueError(f"{len(fused)} fused levels for {len(points)} decoder injection points")

    def add(extra: torch.Tensor) -> Callable:
        def pre_hook(_module, args):
            return (args[0] + extra,) + tuple(args[1:])
        return pre_hook

    handles = [point.register_forward_pre_hook(add(level)) for point, level in zip(points, reversed(fused))]
    try:
        with _untiled(vae):
            return vae.decode(z).sample
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class GuidedDecode:
    """What one guided decode produced: the image (clamped to [-1, 1]), the decoded latent, the fused levels."""

    image: torch.Tensor
    latent: torch.Tensor
    fused: list[torch.Tensor]


def posterior_sample(posterior: DiagonalGaussianDistribution, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``mean + std * eps``, sample i's eps drawn alone from ``generators[i]`` (in the model dtype, as the
    original drew it), so a page's sample never depends on its neighbours."""
    mean = posterior.mean
    if len(generators) != mean.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {mean.shape[0]}")
    shape = (1, *mean.shape[1:])
    eps = torch.cat([torch.randn(shape, generator=g, device=g.device, dtype=mean.dtype) for g in generators])
    return mean + posterior.std * eps.to(mean.device)


@torch.no_grad()
def guided_decode(
    vae: AutoencoderKL,
    fusion: FusionNet,
    color: torch.Tensor,
    guide: torch.Tensor,
    latent: torch.Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> GuidedDecode:
    """GSRP on tensors: ``color`` and ``guide`` (B, 3, H, W) in [-1, 1], H and W multiples of 8.

    The decoded latent is ``latent`` when given, else a posterior sample drawn with ``generators``
    (one per sample), else the posterior mean.
    """
    if color.shape != guide.shape or color.ndim != 4 or color.shape[1] != 3:
        raise InputError(f"colour {tuple(color.shape)} and guide {tuple(guide.shape)} must both be (B, 3, H, W)")
    check_size(color.shape[-1], color.shape[-2], vae_scale_factor(vae), "GSRP input")
    posterior, color_features = encode_with_features(vae, color)
    _, guide_features = encode_with_features(vae, guide)
    fused = fusion(color_features, guide_features)
    if latent is None:
        latent = posterior_sample(posterior, generators) if generators is not None else posterior.mean
    image = decode_with_features(vae, latent.to(posterior.mean), fused).clamp(-1, 1)
    return GuidedDecode(image=image, latent=latent, fused=fused)


def check_size(width: int, height: int, factor: int, what: str) -> None:
    """Every encoder level must halve exactly, or the fused levels would not fit the decoder's inputs."""
    if width % factor or height % factor or width <= 0 or height <= 0:
        raise InputError(
            f"{what} is {width}x{height}: GSRP needs width and height that are positive multiples of "
            f"{factor} (the VAE downsamples by {factor}); use a page size that is a multiple of 32"
        )


def to_model_input(image: Image.Image, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] as ToTensor + Normalize(0.5, 0.5) computes it; any mode (alpha on white)."""
    x = pil_to_tensor(image).permute(2, 0, 1)[None].sub(0.5).div(0.5)
    return x.to(device=device, dtype=dtype)


def to_uint8_image(y: torch.Tensor) -> Image.Image:
    """The final 8-bit conversion: ``trunc((y * 0.5 + 0.5) * 255)`` computed in ``y``'s dtype
    (fp16 in the demo: the fp16 product rounds first, e.g. 254.97 -> 255.0, exactly as the original's
    numpy fp16 arithmetic)."""
    scaled = (y * 0.5 + 0.5) * 255
    array = scaled.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


class GuidedUpscaler:
    """Upscales colourised pages to 1.5x with the gray guide's detail (GSRP).

    ``vae`` and ``fusion`` must already live on ``device`` in ``dtype`` (or be placed by offload
    hooks); inputs are built there. Each page's result is independent of the batch.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        fusion: FusionNet,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        expected = vae_feature_channels(vae)
        if tuple(fusion.channels) != expected:
            raise WeightsError(
                f"MultiResNetModel has level widths {tuple(fusion.channels)} but this VAE's encoder features are "
                f"{expected}: the fusion weights do not belong to this VAE"
            )
        self.vae, self.fusion = vae, fusion
        self.device, self.dtype = torch.device(device), dtype

    def __call__(
        self,
        colored: Sequence[Image.Image],
        guides: Sequence[Image.Image],
        seeds: Sequence[int] | int = 0,
        sample_posterior: bool = True,
        progress: Callable[[int, int], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
        batch_size: int | None = None,
        generator_device: torch.device | str = "cpu",
    ) -> list[Image.Image]:
        """Page i: ``colored[i]`` (the W x H centre crop, see ``centre_crop``) guided by ``guides[i]``
        (1.5W x 1.5H, any mode). ``seeds`` is one seed per page, or an int s meaning s + i for page i;
        the posterior sample uses a generator on ``generator_device`` seeded ``seed_i + 5``.
        ``batch_size`` None: `auto_batch_size`."""
        if len(colored) != len(guides):
            raise InputError(f"{len(colored)} coloured pages but {len(guides)} guides: give one guide per page")
        seeds = self._page_seeds(seeds, len(colored))
        for i, guide in enumerate(guides):
            check_size(guide.width, guide.height, vae_scale_factor(self.vae), f"guide {i}")
        if not guides:
            return []
        if batch_size is None:
            batch_size = self.auto_batch_size(guides)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Image.Image] = []
        for start, stop in self._batches(guides, batch_size):
            if check_interrupt is not None:
                check_interrupt()
            generators = [page_generator(s + GSRP_SEED_OFFSET, generator_device) for s in seeds[start:stop]] \
                if sample_posterior else None
            try:
                results.extend(self._upscale(colored[start:stop], guides[start:stop], generators))
            except NumericalError as exc:
                raise exc.shifted(start) from None
            if progress is not None:
                progress(len(results), len(guides))
        return results

    def page_bytes(self, guide_size: tuple[int, int]) -> int:
        """Estimated working memory of one page with a guide of ``guide_size`` (W, H)."""
        return performance.page_working_bytes(guide_size[::-1], self.dtype, WORKING_BYTES_PER_PIXEL)

    def auto_batch_size(self, guides: Sequence[Image.Image], free_bytes: int | None = None) -> int:
        """Pages per batch for these guides (sized for the largest) from performance.choose_batch_size,
        with GSRP's own CUDA cap."""
        largest = max((g.size for g in guides), key=lambda size: size[0] * size[1], default=(0, 0))
        return performance.choose_batch_size(len(guides), self.device, self.page_bytes(largest), free_bytes,
                                             performance.GSRP_CUDA_MAX_BATCH)

    @staticmethod
    def _batches(guides: Sequence[Image.Image], batch_size: int) -> list[tuple[int, int]]:
        """(start, stop) of runs of at most ``batch_size`` consecutive pages that share a guide size."""
        runs = performance.page_runs(range(len(guides)), batch_size, lambda a, b: guides[a].size == guides[b].size)
        return [(run[0], run[-1] + 1) for run in runs]

    @staticmethod
    def _page_seeds(seeds: Sequence[int] | int, count: int) -> list[int]:
        if isinstance(seeds, int):
            return page_seeds(seeds, count)
        seeds = [int(s) for s in seeds]
        if len(seeds) != count:
            raise InputError(f"{len(seeds)} seeds for {count} pages: give one seed per page or a single int")
        return seeds

    def _upscale(
        self, colored: Sequence[Image.Image], guides: Sequence[Image.Image], generators: list[torch.Generator] | None
    ) -> list[Image.Image]:
        color = torch.cat([to_model_input(normalize_mode(c).convert("RGB").resize(g.size), self.device, self.dtype)
                           for c, g in zip(colored, guides)])
        guide = torch.cat([to_model_input(g, self.device, self.dtype) for g in guides])
        decoded = guided_decode(self.vae, self.fusion, color, guide, generators=generators)
        check_finite(decoded.image, "GSRP (the guided upscale)", self.dtype)  # NaN would become black pixels
        return [to_uint8_image(y) for y in decoded.image]
