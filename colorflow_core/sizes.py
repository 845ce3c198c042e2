"""Page sizes and the geometry every stage derives from them.

The original offers three sizes; the rules are size-generic. Width and height must be multiples of
32 so the canvas latent (2W/8 x 2H/8) survives the UNet's three downsamplings, the 1.5x GSRP size is
a multiple of 8, and the mask/cell/crop arithmetic stays exact.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import InputError

SIZE_MULTIPLE = 32
MIN_SIDE = 64
MAX_SIDE = 2048

# The SD / PixArt VAE downsampling, a fixed fact of both architectures (`vae_scale_factor` reads it
# from a loaded VAE).
LATENT_SCALE = 8

@dataclass(frozen=True)
class PageSize:
    """Target page size W x H (width first, as the original's "WxH" strings)."""

    width: int
    height: int

    def __post_init__(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"page {name} must be an integer, got {value!r}")
            if value < MIN_SIDE or value > MAX_SIDE or value % SIZE_MULTIPLE:
                raise InputError(
                    f"page {name} {value} is not usable: it must be a multiple of {SIZE_MULTIPLE} "
                    f"between {MIN_SIDE} and {MAX_SIDE}"
                )

    @classmethod
    def snap(cls, width: float, height: float) -> "PageSize":
        """Round any requested size to the nearest usable one (multiples of 32, 64..2048)."""
        if not all(math.isfinite(v) and v > 0 for v in (width, height)):
            raise InputError(f"page size must be positive, got {width} x {height}")

        def one(v: float) -> int:
            snapped = int(round(v / SIZE_MULTIPLE)) * SIZE_MULTIPLE
            return max(MIN_SIDE, min(MAX_SIDE, snapped))

        return cls(one(width), one(height))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def canvas(self) -> tuple[int, int]:
        """In-context canvas (2W, 2H)."""
        return (2 * self.width, 2 * self.height)

    @property
    def cell(self) -> tuple[int, int]:
        """One of the 4x4 canvas cells (W/2, H/2)."""
        return (self.width // 2, self.height // 2)

    @property
    def crop(self) -> tuple[int, int]:
        """Query/reference crop size (W//4*3, H//4*3)."""
        return (self.width // 4 * 3, self.height // 4 * 3)

    @property
    def stride(self) -> tuple[int, int]:
        """Crop strides (W//4, H//4)."""
        return (self.width // 4, self.height // 4)

    @property
    def crop_boxes(self) -> list[tuple[int, int, int, int]]:
        """The 4 overlapping crops (`crop` at `stride`) as (left, top, right, bottom) boxes, row-major:
        the query patches of a page and the crop patches of a reference."""
        crop_w, crop_h = self.crop
        stride_x, stride_y = self.stride
        return [(x, y, x + crop_w, y + crop_h)
                for y in range(0, self.height - crop_h + 1, stride_y)
                for x in range(0, self.width - crop_w + 1, stride_x)]

    @property
    def guide(self) -> tuple[int, int]:
        """Preprocessing / GSRP size (1.5W, 1.5H)."""
        return (int(1.5 * self.width), int(1.5 * self.height))

    @property
    def latent(self) -> tuple[int, int]:
        """Canvas latent size as (h, w) = (2H/8, 2W/8): geometry known before any VAE loads."""
        return (2 * self.height // LATENT_SCALE, 2 * self.width // LATENT_SCALE)


PRESETS: dict[str, PageSize] = {
    "640x640": PageSize(640, 640),
    "512x800": PageSize(512, 800),
    "800x512": PageSize(800, 512),
}

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str, snap: bool = False) -> PageSize:
    """Parse "WxH"; with ``snap`` any size is rounded to a usable one instead of refused."""
    match = _SIZE_RE.match(text or "")
    if not match:
        raise InputError(f"size {text!r} is not of the form WIDTHxHEIGHT, e.g. 512x800")
    width, height = int(match.group(1)), int(match.group(2))
    return PageSize.snap(width, height) if snap else PageSize(width, height)


def vae_scale_factor(vae: Any) -> int:
    """How much the encoder downsamples (8 for the SD / PixArt VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
