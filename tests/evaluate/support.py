"""Helpers of the `evaluate` tests: small pages on disk, feature extractors for FID."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

PAGE_W, PAGE_H = 64, 96  # small pages: every test here runs in well under a second of metric time


def random_pages(count: int, seed: int = 0, size: tuple[int, int] = (PAGE_W, PAGE_H)) -> list[Image.Image]:
    """Pages of smooth random colour blobs (noise upscaled), unlike one another."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
            for _ in range(count)]


def write_pages(folder: Path, pages: dict[str, Image.Image], suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, img in pages.items():
        img.save(folder / f"{stem}{suffix}")
    return folder


class TinyFeatures(nn.Module):
    """A fixed random conv + pooling: uint8 (N, 3, H, W) → (N, 8), any size (FID's feature= module)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.float() / 255)).mean(dim=(2, 3))


class MeanColour(nn.Module):
    """Features = the mean of each channel in 0-255 units: FID then has a closed form (see the test)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double().mean(dim=(2, 3))
