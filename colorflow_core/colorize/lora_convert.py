"""The release's UNet LoRA (peft/diffusers names, alpha / rank = 1) as a kohya-style LoRA state dict.

ComfyUI's own LoRA patching (and every LoRA loader built on it) reads the kohya layout
``lora_unet_<diffusers module path with "_">.lora_down.weight / .lora_up.weight / .alpha`` for
SD1.5 UNets. Converting to it lets the ColorFlow LoRA stack with a user's LoRAs, carry a strength,
and be saved as an ordinary ``models/loras`` file. Pure tensor renaming: nothing here imports
ComfyUI, and no tensor values change (alpha keeps the release's scaling alpha / rank).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import WeightsError
from .lora import ADAPTER_NAME, normalize_lora_keys

KOHYA_UNET_PREFIX = "lora_unet_"
_LORA_KEY = re.compile(rf"^(?P<module>.+)\.lora_(?P<which>[AB])\.{ADAPTER_NAME}\.weight$")


def kohya_module_name(module: str) -> str:
    """``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` → ``lora_unet_down_blocks_0_…_to_q``."""
    return KOHYA_UNET_PREFIX + module.replace(".", "_")


def unet_lora_to_kohya(state_dict: Mapping[str, torch.Tensor], alpha: float | None = None,
                       source: object = None) -> dict[str, torch.Tensor]:
    """Rename a diffusers/peft UNet LoRA to kohya keys; ``alpha`` defaults to the rank (scaling 1, as released).

    Every tensor must be a LoRA A/B matrix of a module that has both: a file carrying fine-tuned base
    weights (``…base_layer.*``) or DoRA/bias terms cannot be expressed as a weight-delta LoRA, so it is
    refused with a ``WeightsError`` instead of being converted partially. ``source`` names the file in errors.
    """
    what = f"the LoRA file {source}" if source is not None else "the LoRA file"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other: list[str] = []
    for key, tensor in normalize_lora_keys(state_dict).items():
        match = _LORA_KEY.match(key)
        if match is None:
            other.append(key)
            continue
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if other:
        shown = ", ".join(sorted(other)[:5]) + (f" (+{len(other) - 5} more)" if len(other) > 5 else "")
        raise WeightsError(f"{what} holds tensors that are not LoRA A/B matrices ({shown}); "
                           "only pure LoRA files can be applied through ComfyUI's LoRA patching")
    if not pairs:
        raise WeightsError(f"{what} holds no LoRA tensors (no '...lora_A...' / '...lora_B...' keys): is it a LoRA file?")

    out: dict[str, torch.Tensor] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise WeightsError(f"LoRA module {module!r} has lora_{''.join(sorted(ab))} but not both A and B")
        down, up = ab["A"], ab["B"]
        rank = down.shape[0]
        if up.ndim < 2 or up.shape[1] != rank:
            raise WeightsError(f"LoRA module {module!r}: A {tuple(down.shape)} and B {tuple(up.shape)} ranks differ")
        name = kohya_module_name(module)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    return out
