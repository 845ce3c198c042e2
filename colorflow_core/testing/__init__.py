"""Random-weight releases in the official layout (tests, benchmarks, the ComfyUI end-to-end test).

`sd.py`: SD1.5 base, `GraySD/` guider + LoRA, `image_encoder/`; `fusion.py`: the GSRP fusion net;
`pixart.py`: PixArt-alpha base and `sketch/` / `shading/`; `preprocess.py`: line extractor and
ScreenStyle networks. `write_release` composes them, so the real weights are never needed.
For tests and benchmarks only: no production module imports this package (tests/test_layering.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..preprocess.screentone import G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE
from ..preprocess.styles import STYLES
from ..release.paths import PIXART_STYLES
from .fusion import write_fusion_net
from .pixart import write_pixart_base, write_pixart_style
from .preprocess import write_line_extractor, write_screenstyle
from .sd import SCALES, model_config, write_image_encoder, write_sd_release

SD_BASE_DIR = "base"  # the SD1.5 base (screenstyle) under the release root
PIXART_BASE_DIR = "pixart_base"  # the PixArt-alpha base (sketch, shading)
# LoRA ranks when none is asked: small at tiny, the released files' ranks otherwise.
DEFAULT_LORA_RANK = {"tiny": {"sd": 4, "pixart": 4}, "reduced": {"sd": 64, "pixart": 128},
                     "full": {"sd": 64, "pixart": 128}}


def write_release(
    root: str | os.PathLike,
    *,
    scale: str = "tiny",
    styles: Sequence[str] = ("screenstyle",),
    seed: int = 0,
    lora_rank: int | None = None,
    screentone: bool = False,
    line_extractor: bool = False,
    guider_channels: int = 5,
) -> Path:
    """Write a release for ``styles`` under ``root`` and return ``root``.

    Always `GraySD/MultiResNetModel.bin` (the GSRP fusion net of every style, its channels from the
    scale's VAE) and `image_encoder/`; screenstyle adds `base/` (SD1.5) and the `GraySD/` guider and
    LoRA; sketch / shading add their folders and `pixart_base/`. ``screentone`` (`ScreenStyle/`)
    and ``line_extractor`` (`LE/erika.pth`) are off by default: they are 100-170 MB at any scale.
    ``lora_rank`` None: `DEFAULT_LORA_RANK`. ``guider_channels``: the `GraySD/` guider's
    conditioning channels (5 or 9).
    """
    if scale not in SCALES:
        raise InputError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    unknown = sorted(set(styles) - set(STYLES))
    if unknown or not styles:
        raise InputError(f"styles must be a non-empty selection of {', '.join(STYLES)}, got {list(styles)}")
    root = Path(root)
    ranks = DEFAULT_LORA_RANK[scale]
    if "screenstyle" in styles:
        write_sd_release(root, scale, seed, lora_rank or ranks["sd"], guider_channels)
    else:
        write_image_encoder(root, scale, seed + 20)
    vae_channels = model_config("vae", scale)["block_out_channels"]
    write_fusion_net(root / "GraySD", [vae_channels[0], *vae_channels], seed=seed + 30)
    if screentone:
        write_screenstyle(root, {G_RGB2INTSCR_FILE: seed + 40, SCREENVAE_DEC_FILE: seed + 50}, None)
    pixart_styles = [s for s in PIXART_STYLES if s in styles]
    if pixart_styles:
        write_pixart_base(root / PIXART_BASE_DIR, scale, seed + 60)
    for k, style in enumerate(pixart_styles):
        write_pixart_style(root, style, scale, seed + 70 + k, lora_rank or ranks["pixart"])
    if line_extractor:
        write_line_extractor(root, None, seed + 80)
    return root


def base_folder(root: str | os.PathLike, style: str) -> Path:
    """The base model folder ``write_release`` wrote for ``style`` (the engine's ``base`` argument)."""
    if style not in STYLES:
        raise InputError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    return Path(root) / (PIXART_BASE_DIR if style in PIXART_STYLES else SD_BASE_DIR)
