"""The user settings of a colorization run: one name each, shared by the engine (`ColorizeSettings`
fields), the ComfyUI widgets and the CLI (the same name as a dashed flag), with their limits.

A light module (no torch): the nodes read the limits here when ComfyUI loads the pack.
"""
from __future__ import annotations

from .errors import InputError

MAX_STEPS = 200
MAX_CFG = 30.0
MAX_GUIDER_STRENGTH = 5.0
MAX_BATCH_SIZE = 1024
# The original's per-style classifier-free guidance (SD1.5: 7.5, PixArt-alpha: 4.5).
DEFAULT_CFG = {"screenstyle": 7.5, "sketch": 4.5, "shading": 4.5}


def cli_flag(setting: str) -> str:
    """The command-line flag of a setting: its name, dashed (``guider_strength`` → ``--guider-strength``)."""
    return "--" + setting.replace("_", "-")


DEFAULT_ENCODER = "clip"
OPEN_CLIP_PREFIX = "open_clip:"
ENCODER_HELP = ("clip (the release's image_encoder/, as the original) or open_clip:MODEL@WEIGHTS, any open_clip "
                "model with a checkpoint file or an open_clip pretrained tag (a tag downloads once)")


def parse_encoder(spec: str) -> tuple[str, str | None]:
    """``"clip"`` → ("clip", None); ``"open_clip:MODEL@WEIGHTS"`` → (MODEL, WEIGHTS). InputError otherwise."""
    if spec == "clip":
        return "clip", None
    model, _, weights = spec[len(OPEN_CLIP_PREFIX):].partition("@") if spec.startswith(OPEN_CLIP_PREFIX) else ("", "", "")
    if not model or not weights:
        raise InputError(f"encoder {spec!r} is not {ENCODER_HELP}; e.g. open_clip:ViT-B-32@/models/vit_b_32.bin")
    return model, weights

