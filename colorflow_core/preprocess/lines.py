"""Manga line extraction: the release's `LE/erika.pth` network `res_skip`
(MangaLineExtraction architecture) and its wrapper.

The module tree mirrors the original's attribute names so the released state dict loads strictly.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputError
from ..weights import load_state_dict_file, load_strict
from .holder import NetworkHolder

LINE_EXTRACTOR_FILE = "LE/erika.pth"  # path inside the release folder
PAD_MULTIPLE = 16
PAD_VALUE = 1.0  # the original fills the padding with 1.0 on the raw 0..255 scale (not white)


class _BnReluConv(nn.Module):
    """BN(eps 1e-3) -> LeakyReLU(0.2) -> conv, optionally followed by nearest x2 upsampling."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.BatchNorm2d(cin, eps=1e-3),
            nn.LeakyReLU(0.2),
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2),
        ]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Shortcut(nn.Module):
    """Identity add, or a 1x1 projection (strided, or followed by x2 upsampling) when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.model: nn.Sequential | None = None
        if upsample and cin != cout:
            self.model = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.Upsample(scale_factor=2, mode="nearest"))
        elif not upsample and (cin != cout or stride != 1):
            self.model = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x if self.model is None else self.model(x)) + y


class _BasicBlock(nn.Module):
    """y = shortcut(x) + residual(conv1(x)); the "up" variant doubles the resolution in conv1."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = _BnReluConv(cin, cout, 3, stride=stride, upsample=upsample)
        self.residual = _BnReluConv(cout, cout, 3)
        self.shortcut = _Shortcut(cin, cout, stride=stride, upsample=upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x, self.residual(self.conv1(x)))


class _Stage(nn.Module):
    """n basic blocks; a down stage strides in its last block, an up stage upsamples in its first."""

    def __init__(self, cin: int, cout: int, n: int, mode: str) -> None:
        super().__init__()
        blocks = []
        for i in range(n):
            stride = 2 if mode == "down" and i == n - 1 else 1
            blocks.append(_BasicBlock(cin if i == 0 else cout, cout, stride=stride, upsample=mode == "up" and i == 0))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResSkip(nn.Module):
    """`res_skip`: a residual U-Net on raw 0..255 gray (H, W multiples of 16), no final activation."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = _Stage(1, 24, 2, "flat")
        self.block1 = _Stage(24, 48, 3, "down")
        self.block2 = _Stage(48, 96, 5, "down")
        self.block3 = _Stage(96, 192, 7, "down")
        self.block4 = _Stage(192, 384, 12, "down")
        self.block5 = _Stage(384, 192, 7, "up")
        self.block6 = _Stage(192, 96, 5, "up")
        self.block7 = _Stage(96, 48, 3, "up")
        self.block8 = _Stage(48, 24, 2, "up")
        self.block9 = _Stage(24, 16, 2, "flat")
        self.conv15 = _BnReluConv(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.block0(x)
        x1 = self.block1(x0)
        x2 = self.block2(x1)
        x3 = self.block3(x2)
        y = self.block5(self.block4(x3)) + x3  # identity skips: the original's res1..res4
        y = self.block6(y) + x2
        y = self.block7(y) + x1
        y = self.block8(y) + x0
        return self.conv15(self.block9(y))


def _gray_array(gray: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) float32 on the 0..255 scale; PIL images go through PIL's luma like the original's flow."""
    if isinstance(gray, Image.Image):
        return np.asarray(gray.convert("L"), dtype=np.float32)
    array = np.asarray(gray)
    if array.ndim != 2 or array.size == 0:
        raise InputError(f"line extraction needs a 2-D gray image, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise InputError("line extraction needs finite numeric gray values")
    if array.min() < 0 or array.max() > 255:
        raise InputError(f"gray values must lie in 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.float32)


class LineExtractor(NetworkHolder):
    """The line network in eval mode plus the original's padding, clamping and cropping."""

    def __init__(self, network: ResSkip, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.network = network.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    def networks(self) -> dict[str, nn.Module]:
        return {"line_extractor": self.network}

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "LineExtractor":
        """Load `LE/erika.pth` strictly (a wrong or truncated file raises WeightsError naming it)."""
        network = ResSkip()
        load_strict(network, load_state_dict_file(path), path)
        return cls(network, device, dtype)

    @torch.no_grad()
    def line_map(self, gray: Image.Image | np.ndarray) -> np.ndarray:
        """Float line image (H, W) in 0..255 before the final uint8 truncation (the parity quantity)."""
        array = _gray_array(gray)
        h, w = array.shape
        ph, pw = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
        padded = np.full((ph, pw), PAD_VALUE, dtype=np.float32)
        padded[:h, :w] = array
        x = torch.from_numpy(padded)[None, None].to(device=self.device, dtype=self.dtype)
        y = self.network(x).float().clamp(0, 255)[0, 0, :h, :w]
        return y.cpu().numpy()

    def extract_lines(self, gray: Image.Image | np.ndarray) -> Image.Image:
        """Line image as PIL `L`, truncated to uint8 like the original."""
        return Image.fromarray(self.line_map(gray).astype(np.uint8))
