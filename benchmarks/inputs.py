"""Synthetic chapters: gray 'pages' and colour 'references' with panel-like shapes, deterministic.

Sizes vary as in real scans (pages about 1.6x the target size, references of mixed aspect), so
the fitting / resizing work of a real chapter is part of what is timed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from colorflow_core.sizes import PageSize


def _drawing(rng: np.random.Generator, width: int, height: int, colour: bool) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(12, 24))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        fill = tuple(rng.integers(0, 256, 3).tolist()) if colour else (int(rng.integers(0, 256)),) * 3
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + 1, y1 + 1), fill=fill, outline="black", width=max(1, width // 200))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def synthetic_chapter(pages: int, references: int, size: PageSize, seed: int = 0
                      ) -> tuple[list[Image.Image], list[Image.Image]]:
    """``pages`` gray pages (mode L) and ``references`` colour images (RGB)."""
    rng = np.random.default_rng(seed)
    page_w, page_h = size.width * 8 // 5, size.height * 8 // 5
    gray = [_drawing(rng, page_w, page_h, colour=False).convert("L") for _ in range(pages)]
    colour = []
    for _ in range(references):
        scale = float(rng.uniform(0.7, 1.8))
        aspect = float(rng.uniform(0.6, 1.6))
        colour.append(_drawing(rng, max(64, int(size.width * scale * aspect)), max(64, int(size.height * scale)),
                               colour=True))
    return gray, colour
