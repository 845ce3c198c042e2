"""Shared helpers of the native-path tests: a real ComfyUI from $COMFYUI_DIR and random-weight nets.

Import this module only after `comfy_or_skip()`; it needs ComfyUI's own requirements (einops,
torchsde, ...), e.g. `COMFYUI_DIR=... <comfy venv>/bin/python -m pytest tests/nodes/test_native*.py`.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch

_COMFY_NEEDS = ("einops", "torchsde", "scipy")


def comfy_or_skip() -> str:
    """The ComfyUI checkout to test against, put on sys.path; skips the module with the reason if unusable."""
    folder = os.environ.get("COMFYUI_DIR")
    if not folder:
        pytest.skip("COMFYUI_DIR is not set: the native-path tests need a real ComfyUI checkout", allow_module_level=True)
    if not os.path.isfile(os.path.join(folder, "comfy", "model_patcher.py")):
        pytest.skip(f"COMFYUI_DIR={folder} is not a ComfyUI checkout (no comfy/model_patcher.py)", allow_module_level=True)
    missing = [m for m in _COMFY_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"this Python lacks ComfyUI's requirements {missing}: run with ComfyUI's environment",
                    allow_module_level=True)
    if folder not in sys.path:
        sys.path.append(folder)  # appended: ComfyUI's top-level `nodes.py` must not shadow our `nodes/`
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    return folder


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-variance random weights everywhere (norm scales around 1), so every part of a net matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1:
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return module


def sd15_sigma(t: int) -> float:
    """SD1.5's sigma at integer timestep t (scaled-linear betas 0.00085 → 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1.0 - betas, dim=0)
    return float(((1 - alphas[t]) / alphas[t]).sqrt())
