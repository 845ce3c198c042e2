"""A tiny random-weight ColorFlow release (screenstyle without ScreenVAE) for the node and server tests."""
from __future__ import annotations

import shutil
from pathlib import Path


def write_tiny_release(release: Path, base: Path) -> None:
    """``release``: GraySD/ (guider, LoRA, GSRP fusion) + image_encoder/; ``base``: a tiny SD1.5-shaped
    diffusers folder (where ComfyUI's model folders keep it, apart from the release)."""
    from colorflow_core.testing import SD_BASE_DIR, write_release

    write_release(release)
    shutil.move(str(release / SD_BASE_DIR), str(base))


# What turns a shipped workflow into a seconds-long CPU run on the release written above (64x96
# pages, two of them, fp32; the tiny release has no ScreenVAE).
TINY_RUN = {
    ("ColorFlowLoadModel", "release"): "tiny",
    ("ColorFlowLoadModel", "base"): "diffusers/sd_tiny",
    ("ColorFlowLoadModel", "dtype"): "fp32",
    ("ColorFlowLoadModel", "screentone"): False,
    ("ColorFlowLoadImageSequence", "limit"): 2,
    ("ColorFlowRetrieveReferences", "size"): "custom",
    ("ColorFlowRetrieveReferences", "width"): 64,
    ("ColorFlowRetrieveReferences", "height"): 96,
}
