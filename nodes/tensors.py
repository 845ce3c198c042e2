"""ComfyUI IMAGE / MASK tensors <-> the PIL images the core works on.

ComfyUI's IMAGE is float32 [B, H, W, C] in 0..1 (C = 3; grayscale pictures arrive as 3 equal
channels, some nodes emit 1 or 4 channels) and MASK is [B, H, W]. A batch shares one H x W, so
pages of different sizes travel as a list of batches: `images_from_tensors` accepts both.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.images import normalize_mode, pil_to_tensor, tensor_to_pil


def _one_image(tensor: torch.Tensor, what: str) -> Image.Image:
    """[H, W, C] with C in 1, 3, 4 → PIL; RGBA is composited on white like an RGBA file would be."""
    if tensor.shape[-1] == 4:
        data = (torch.nan_to_num(tensor.detach().float().cpu(), nan=0.0).clamp(0, 1) * 255).round().to(torch.uint8)
        return normalize_mode(Image.fromarray(data.numpy(), "RGBA"))
    if tensor.shape[-1] not in (1, 3):
        raise InputError(f"{what}: an image has {tensor.shape[-1]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return tensor_to_pil(tensor)


# IMAGE values outside 0..1 by more than this are not rounding overshoot (of a resampler, a sharpen
# node) but another scale, e.g. a 0..255 image: converting would clamp it to an almost white page.
RANGE_TOLERANCE = 0.5


def check_image_values(batch: torch.Tensor, what: str, first: int = 1) -> None:
    """Refuse NaN / infinite values and values far outside 0..1 (``first``: the number of the batch's
    first image in the input, for the message), instead of turning them into black or white pixels."""
    data = batch.detach()
    if not data.is_floating_point():
        data = data.float()
    finite = torch.isfinite(data).flatten(1).all(dim=1)
    if not bool(finite.all()):
        k = first + int((~finite).nonzero()[0])
        raise InputError(f"{what}: image {k} holds NaN or infinite values (the node that made it failed, e.g. a "
                         f"float16 overflow); it would come out black. Check that node, or re-run it in higher "
                         f"precision")
    if data.numel():
        low, high = float(data.min()), float(data.max())
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise InputError(f"{what}: values range from {low:g} to {high:g}, but IMAGE values lie in 0..1 (is it a "
                             f"0..255 image? divide it by 255 first)")


def images_from_tensors(images: torch.Tensor | Sequence[torch.Tensor], what: str) -> list[Image.Image]:
    """Every image of an IMAGE batch, or of a list of batches (pages of different sizes), in order.

    NaN / infinite values and values far outside 0..1 are refused (`check_image_values`)."""
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    result: list[Image.Image] = []
    for batch in batches:
        if not isinstance(batch, torch.Tensor):
            raise InputError(f"{what}: expected an IMAGE input, got {type(batch).__name__}")
        if batch.ndim == 3:  # a single [H, W, C] image
            batch = batch.unsqueeze(0)
        if batch.ndim != 4:
            raise InputError(f"{what}: expected IMAGE tensors [batch, height, width, channels], got shape {tuple(batch.shape)}")
        check_image_values(batch, what, first=len(result) + 1)
        result.extend(_one_image(image, what) for image in batch)
    if not result:
        raise InputError(f"{what}: the image batch is empty; connect at least one image")
    return result


def tensor_from_images(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size → IMAGE [B, H, W, 3] float32 on the CPU."""
    sizes = {img.size for img in images}
    if len(sizes) != 1:
        raise InputError(f"cannot batch images of different sizes {sorted(sizes)}")
    return torch.stack([pil_to_tensor(img) for img in images])


def mask_from_images(masks: Sequence[Image.Image]) -> torch.Tensor:
    """PIL L masks (255 = on) of one size → MASK [B, H, W] float32 in 0..1."""
    return torch.stack([torch.from_numpy(np.asarray(m.convert("L"), dtype=np.float32) / 255.0) for m in masks])
