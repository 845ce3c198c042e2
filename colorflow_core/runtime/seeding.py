"""The per-page random draws of docs/ARCHITECTURE.md "Random draws", in one place.

Page i of a call started with ``seed`` uses ``seed + i``, plus a fixed offset per kind of draw, and
every draw comes from a fresh generator on ``generator_device`` ("cpu" by default, so results do not
depend on the GPU). A page's result therefore never depends on its batch or its neighbours.
"""
from __future__ import annotations

import torch

from ..errors import InputError

SCREENTONE_SEED_OFFSET = 3  # the ScreenVAE decoder noise
GSRP_SEED_OFFSET = 5  # the GSRP posterior sample
# The largest seed any page of a call may use: page i draws with seed + i plus an offset above, which
# stays inside the 64-bit seed range torch's generators take (2**64 - 1).
MAX_SEED = 2**63 - 1
# The ComfyUI nodes' seed widgets stop far lower (2**48 - 1): the frontend holds numbers as JavaScript
# doubles (exact only up to 2**53), and a node run's pages use seed + i, so seed + pages stays below MAX_SEED.
WIDGET_MAX_SEED = 0xFFFFFFFFFFFF
# Where the generators live: "cpu" (the default: results do not depend on the GPU) or "cuda" (the
# original demo's draws, which came from the global CUDA RNG; needs an NVIDIA GPU).
GENERATOR_DEVICES = ("cpu", "cuda")


def check_generator_device(generator_device: object) -> str:
    """``generator_device`` if usable, else an InputError saying why (cuda without a GPU included)."""
    if generator_device not in GENERATOR_DEVICES:
        raise InputError(f"generator_device must be one of {', '.join(GENERATOR_DEVICES)}, got {generator_device!r}")
    if generator_device == "cuda" and not torch.cuda.is_available():
        raise InputError("generator_device 'cuda' needs an NVIDIA GPU that torch can use, and torch finds none "
                         "(torch.cuda.is_available() is False); use 'cpu' (the default: the draws then do not "
                         "depend on the GPU)")
    return str(generator_device)


def page_seeds(seed: int, count: int) -> list[int]:
    """``seed + i`` for page i of a call."""
    return [seed + i for i in range(count)]


def page_generator(seed: int, generator_device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded with ``seed``: the same stream as the global RNG right after
    ``torch.manual_seed(seed)``, which the original used."""
    return torch.Generator(generator_device).manual_seed(seed)


def seeded_randn(shape: tuple[int, ...], seed: int, generator_device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normal float32 draws from a fresh generator seeded with ``seed``, returned on the CPU."""
    generator = page_generator(seed, generator_device)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).cpu()
