"""GSRP fusion network `FusionNet` with per-page BatchNorm statistics.

The original never calls ``.eval()`` on this network, so its BatchNorm layers normalise with the
statistics of the (batch-1) image being processed and the stored running statistics are never
read. Normalising each sample with its own statistics (a batch-1 training-mode BatchNorm = an
instance norm over H, W with the BN affine parameters, biased variance) reproduces that for any
batch size, keeps pages independent of each other, and leaves the stored statistics untouched.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from ..weights import load_state_dict_file, load_strict

SD_VAE_CHANNELS = (128, 128, 256, 512, 512)
BLOCKS_PER_LEVEL = 4


class PageBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` (same state dict) normalising each sample with its own statistics.

    ``use_running_stats=True`` gives eval-mode behaviour (stored statistics) instead.
    """

    def __init__(self, num_features: int, use_running_stats: bool = False) -> None:
        super().__init__(num_features, eps=1e-5, momentum=0.1, affine=True)
        self.use_running_stats = use_running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)


class ResNetBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN plus a (1x1 conv + BN when the width changes) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, use_running_stats: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = PageBatchNorm2d(out_channels, use_running_stats)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = PageBatchNorm2d(out_channels, use_running_stats)
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                PageBatchNorm2d(out_channels, use_running_stats),
            )
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class LevelResNet(nn.Module):
    """One level: ``block1`` (in -> out) then ``block2..4`` (out -> out).

    The original calls this class "TwoLayerResNet"; the attribute names are what the file holds.
    """

    def __init__(self, in_channels: int, out_channels: int, use_running_stats: bool = False) -> None:
        super().__init__()
        self.block1 = ResNetBlock(in_channels, out_channels, use_running_stats)
        self.block2 = ResNetBlock(out_channels, out_channels, use_running_stats)
        self.block3 = ResNetBlock(out_channels, out_channels, use_running_stats)
        self.block4 = ResNetBlock(out_channels, out_channels, use_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block4(self.block3(self.block2(self.block1(x))))


def level_widths(channels: Sequence[int]) -> list[tuple[int, int]]:
    """(in, out) of each level: ``2 * c[i]`` -> ``c[min(n - 1, i + 2)]``, matching the VAE decoder inputs."""
    last = len(channels) - 1
    return [(2 * c, channels[min(last, i + 2)]) for i, c in enumerate(channels)]


class FusionNet(nn.Module):
    """Fuses the colour and guide VAE-encoder features of each level into what the decoder adds."""

    def __init__(self, channels: Sequence[int] = SD_VAE_CHANNELS, use_running_stats: bool = False) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if len(self.channels) < 1 or any(c < 1 for c in self.channels):
            raise InputError(f"FusionNet channels must be positive widths, got {channels!r}")
        self.two_layer_resnets = nn.ModuleList(
            LevelResNet(i, o, use_running_stats) for i, o in level_widths(self.channels)
        )

    @property
    def use_running_stats(self) -> bool:
        return next(m for m in self.modules() if isinstance(m, PageBatchNorm2d)).use_running_stats

    @use_running_stats.setter
    def use_running_stats(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, PageBatchNorm2d):
                m.use_running_stats = bool(value)

    def forward(self, color_features: Sequence[torch.Tensor], guide_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per level ``net_i(cat([colour_i, guide_i], dim=1))`` (colour first, as the original)."""
        n = len(self.two_layer_resnets)
        if len(color_features) != n or len(guide_features) != n:
            raise ValueError(
                f"expected {n} feature levels for colour and guide, got {len(color_features)} and {len(guide_features)}"
            )
        return [net(torch.cat([c, g], dim=1)) for net, c, g in zip(self.two_layer_resnets, color_features, guide_features)]

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        channels: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        use_running_stats: bool = False,
    ) -> "FusionNet":
        """Load ``MultiResNetModel.bin`` strictly (the original used ``strict=False``; we fail loudly).

        ``channels`` defaults to what the file says (``block1.conv1`` of level i takes ``2 * c[i]``).
        """
        state = load_state_dict_file(path)
        if channels is None:
            channels = infer_channels(state, path)
        with torch.device("meta"):
            model = cls(channels, use_running_stats)
        model.to_empty(device="cpu")
        load_strict(model, state, path)
        return model.to(device=device, dtype=dtype).requires_grad_(False)


_LEVEL_KEY = re.compile(r"^two_layer_resnets\.(\d+)\.block1\.conv1\.weight$")


def infer_channels(state: dict[str, torch.Tensor], source: str | os.PathLike) -> tuple[int, ...]:
    """Level widths from a state dict: the input of level i's first conv is ``2 * c[i]``."""
    found = {int(m.group(1)): state[k] for k in state if (m := _LEVEL_KEY.match(k))}
    levels = sorted(found)
    if not levels or levels != list(range(len(levels))):
        raise WeightsError(
            f"{source} is not a MultiResNetModel file: it should hold two_layer_resnets.<i>.block1.conv1.weight "
            f"for levels 0, 1, ... (found levels {levels}). Download it again from the official release."
        )
    inputs = [tuple(found[i].shape) for i in levels]
    if any(len(shape) != 4 or shape[1] % 2 for shape in inputs):
        raise WeightsError(f"{source}: the first convolutions have shapes {inputs}; a MultiResNetModel file has "
                           f"4-D weights taking an even number (colour + guide) of channels")
    return tuple(shape[1] // 2 for shape in inputs)
