"""A tiny random-weight ColorFlow release (screenstyle without ScreenVAE) for the node and server tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_tiny_release(release: Path, base: Path) -> None:
    """``release``: GraySD/ (guider, LoRA, GSRP fusion) + image_encoder/; ``base``: a tiny SD1.5-shaped
    diffusers folder. Every weight is random (colorflow_core.synthetic)."""
    from colorflow_core.synthetic.fusion import write_multiresnet
    from colorflow_core.synthetic.sd import write_sd_release

    write_sd_release(release)
    shutil.move(str(release / "base"), str(base))
    block_out = json.loads((base / "vae" / "config.json").read_text())["block_out_channels"]
    write_multiresnet(release / "GraySD", [block_out[0], *block_out])
