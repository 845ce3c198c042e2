"""The ColorGuider's conditioning latents: which images of a canvas are VAE-encoded, and how their
posterior samples and the mask are stacked.

The original SD pipeline branches on the guider's ``conditioning_channels``:

* **5**: ``[enc(canvas), mask]``: the whole canvas (references around the page) and the mask;
* **9**: ``[enc(A), mask, enc(B)]``: A is the canvas with its centre page painted black, B a black
  canvas that holds only the page. The PixArt pipeline always uses this layout.

Each encoded image contributes a posterior sample per CFG half (the original encoded two identical
copies and sampled both from the global RNG, image A first, then B). Here the draws come, in that
order, from one generator seeded with the page's seed, so a page never depends on its batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..errors import WeightsError
from ..retrieve.canvas import latent_mask
from ..runtime.seeding import page_generator

WHOLE_CANVAS = 5  # [enc(canvas), mask]
SPLIT_CANVAS = 9  # [enc(canvas without page), mask, enc(page only)]
CONDITIONING_CHANNELS = (WHOLE_CANVAS, SPLIT_CANVAS)
CFG_COPIES = 2  # one posterior draw per CFG half: [uncond, cond]


def split_canvas(canvas: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(A, B) of a 2W x 2H canvas: A = the canvas with its centre W x H page painted black,
    B = a black canvas holding only that page."""
    width, height = canvas.size[0] // 2, canvas.size[1] // 2
    box = (width // 2, height // 2, width // 2 + width, height // 2 + height)
    image_a = canvas.copy()
    image_a.paste((0, 0, 0), box)
    image_b = Image.new("RGB", canvas.size, (0, 0, 0))
    image_b.paste(canvas.crop(box), box[:2])
    return image_a, image_b


def conditioning_images(canvas: Image.Image, channels: int) -> list[Image.Image]:
    """The RGB images to VAE-encode for a guider of ``channels`` conditioning channels, in draw order."""
    canvas = canvas.convert("RGB")
    if channels == WHOLE_CANVAS:
        return [canvas]
    if channels == SPLIT_CANVAS:
        return list(split_canvas(canvas))
    raise WeightsError(f"a guider with {channels!r} conditioning channels: ColorFlow builds "
                       f"{' or '.join(map(str, CONDITIONING_CHANNELS))}")  # configs are checked on load


def guider_conditioning(posteriors: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: Image.Image, seed: int,
                        scaling_factor: float, generator_device: str = "cpu") -> torch.Tensor:
    """(2, 4k+1, h, w): a page's [uncond, cond] guider conditioning from the VAE posteriors
    (mean, std), each (1,4,h,w), of its `conditioning_images`: the first image's samples, the mask
    channel, then the other images' samples. Samples are × ``scaling_factor``; the draws
    ``randn((2,4,h,w))`` per image come in order from one generator seeded with ``seed``."""
    generator = page_generator(seed, generator_device)
    samples = []
    for mean, std in posteriors:
        noise = torch.randn((CFG_COPIES, *mean.shape[1:]), generator=generator, device=generator.device,
                            dtype=torch.float32).to(mean.device, mean.dtype)
        samples.append((mean + std * noise) * scaling_factor)
    h, w = samples[0].shape[-2:]
    m = latent_mask(mask, (h, w)).to(samples[0].device, samples[0].dtype).expand(CFG_COPIES, 1, h, w)
    return torch.cat([samples[0], m, *samples[1:]], dim=1)
