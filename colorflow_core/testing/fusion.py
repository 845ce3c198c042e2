"""A random-weight ``MultiResNetModel.bin`` in the release's format, for tests and benchmarks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..upscale.fusion import FusionNet

FILE_NAME = "MultiResNetModel.bin"


def write_fusion_net(folder: str | os.PathLike, channels: Sequence[int], seed: int = 0) -> Path:
    """Write ``folder/MultiResNetModel.bin`` (``torch.save`` of the state dict, as released).

    Every parameter and running statistic is random and non-zero, so a loader or a BatchNorm mode
    that ignores any of them changes the result. Conv weights are scaled by 1/sqrt(fan-in) to keep
    activations of order one through the 4-block levels.
    """
    with torch.device("meta"):
        layout = FusionNet(channels).state_dict()
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, meta in layout.items():
        shape = tuple(meta.shape)
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = 1 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            state[name] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=g) / fan_in**0.5
        elif name.endswith("weight"):
            state[name] = 1 + torch.randn(shape, generator=g) * 0.1
        else:
            state[name] = torch.randn(shape, generator=g) * 0.02
    path = Path(folder) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
