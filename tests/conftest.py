"""Fixtures every test area shares: a fixed torch seed, and the node adapter outside ComfyUI."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="module")
def outside_comfyui():
    """The node adapter's plain fallbacks, even when the native tests (COMFYUI_DIR) already made
    ComfyUI importable in this process (module scope: the modules' own model fixtures need it)."""
    from nodes import comfy as comfy_glue

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(comfy_glue, "IN_COMFYUI", False)
        yield
