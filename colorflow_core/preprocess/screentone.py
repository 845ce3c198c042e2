"""ScreenStyle "colour -> screentone manga" conversion for the GrayImage(ScreenStyle) style.

Two release networks: the generator `G_RGB2INTSCR` (gray + RGB -> 4-channel screen code) and the
ScreenVAE decoder (screen code -> screentone). Module trees mirror the original's attribute names
so the released files load strictly. Deliberate differences from the original (parity README): the
decoder runs with dropout off and its noise comes from an explicit, seeded generator.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import InputError, WeightsError
from ..runtime.seeding import SCREENTONE_SEED_OFFSET, page_generator
from ..weights import load_state_dict_file, load_strict
from .holder import NetworkHolder

G_RGB2INTSCR_FILE = "ScreenStyle/color2manga/color2manga_cycle_ganstft/latest_net_G_RGB2INTSCR.pth"
SCREENVAE_DEC_FILE = "ScreenStyle/ScreenVAE/latest_net_dec.pth"
SCREENVAE_ENC_FILE = "ScreenStyle/ScreenVAE/latest_net_enc.pth"  # shipped but never run (AtoB path)

INPUT_MULTIPLE = 256  # the generator halves the resolution 8 times
DECODER_MULTIPLE = 128  # the decoder halves it 7 times
RGB_PAD = (255, 0, 0)  # the original's `fill=255` on an RGB image pads with red, not white
GRAY_PAD = 255
SLOPE = 0.2


class _LayerNorm(nn.Module):
    """Parameter-free layer norm over (C, H, W) per sample, as the original's per-call LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[1:], eps=1e-5)


def _refresh_after_load(module: _SpectralConv2d, _incompatible_keys: object) -> None:
    module.refresh_weight()


class _SpectralConv2d(nn.Module):
    """A conv stored like `torch.nn.utils.spectral_norm` (weight_orig, weight_u, weight_v).

    In eval mode spectral norm does no power iteration: the weight is weight_orig / (u . W v) with
    the stored vectors, so it is computed once whenever a state dict is loaded.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.bias = nn.Parameter(torch.empty(cout))
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, 3, 3))
        self.register_buffer("weight_u", torch.empty(cout))
        self.register_buffer("weight_v", torch.empty(cin * 9))
        self.register_buffer("weight", torch.empty(cout, cin, 3, 3), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @torch.no_grad()
    def refresh_weight(self) -> None:
        sigma = torch.dot(self.weight_u, torch.mv(self.weight_orig.flatten(1), self.weight_v))
        self.weight.copy_(self.weight_orig / sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride)


class _ApplyNoise(nn.Module):
    """x + w * N(0, 1) + b on the first half of the channels (the second half of w, b is zeroed)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keep = (torch.arange(x.shape[1], device=x.device) < x.shape[1] // 2).to(x.dtype)
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
        return x + (self.weight * keep).view(1, -1, 1, 1) * noise + (self.bias * keep).view(1, -1, 1, 1)


class _Level(nn.Module):
    """One U-Net level. Non-outermost levels start with a LeakyReLU that the original applies in
    place, so their skip carries leaky_relu(x), not x: added (generator) or concatenated (decoder)."""

    def __init__(self, layers: list[nn.Module], channels: int, skip: str = "", noise: bool = False) -> None:
        super().__init__()
        self.noiseblock = _ApplyNoise(channels)  # present in every level of the release files
        self.model = nn.Sequential(*layers)
        self.skip = skip
        self.noise = noise

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.skip:
            return self._run(x, 0, generator)
        x = self.model[0](x)
        y = self._run(x, 1, generator)
        if self.noise:
            y = self.noiseblock(y, generator)
        return y + x if self.skip == "add" else torch.cat([y, x], 1)

    def _run(self, x: torch.Tensor, start: int, generator: torch.Generator | None) -> torch.Tensor:
        for layer in list(self.model)[start:]:
            x = layer(x, generator) if isinstance(layer, _Level) else layer(x)
        return x


def _down(conv: type, cin: int, cout: int) -> list[nn.Module]:
    return [nn.ReplicationPad2d(1), conv(cin, cout, 2)]


def _bilinear_up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(cin, cout, 1)]


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(SLOPE)


class ScreenCodeGenerator(nn.Module):
    """`G_RGB2INTSCR` (unet_256, additive skips, spectral-norm 3x3 convs): [gray, RGB] -> tanh code."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, ngf: int = 48) -> None:
        super().__init__()
        conv = _SpectralConv2d
        inner = 8 * ngf
        level = _Level(
            [_lrelu(), *_down(conv, inner, inner), _lrelu(), *_bilinear_up(inner, inner), _LayerNorm(),
             _lrelu(), nn.ReplicationPad2d(1), conv(inner, inner, 1), _LayerNorm()],
            inner, skip="add",
        )
        for outer, inner_c in [(inner, inner)] * 3 + [(4 * ngf, inner), (2 * ngf, 4 * ngf), (ngf, 2 * ngf)]:
            level = _Level(
                [_lrelu(), *_down(conv, outer, inner_c), _LayerNorm(), level, _lrelu(),
                 *_bilinear_up(inner_c, outer), _LayerNorm(), _lrelu(), nn.ReplicationPad2d(1),
                 conv(outer, outer, 1), _LayerNorm()],
                outer, skip="add",
            )
        self.model = _Level(
            [*_down(conv, in_channels, ngf), level, _lrelu(), *_bilinear_up(ngf, out_channels), _LayerNorm(),
             _lrelu(), nn.ReplicationPad2d(1), conv(out_channels, out_channels, 1)],
            out_channels,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.model(x))


def _plain_conv(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 3, stride=stride)


class ScreenDecoder(nn.Module):
    """ScreenVAE decoder (unet_128_G, concatenated skips, noise at the 48/96/192 levels).

    Dropout is omitted (the eval-mode behaviour); noise is drawn from ``generator`` innermost level
    first, the order in which the levels finish.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 1, ngf: int = 48) -> None:
        super().__init__()
        inner = 8 * ngf
        level = _Level(
            [_lrelu(), *_down(_plain_conv, inner, inner), _lrelu(), *_bilinear_up(inner, inner), _LayerNorm(),
             _lrelu(), nn.ReplicationPad2d(1), nn.Conv2d(inner, inner, 3), _LayerNorm()],
            inner, skip="cat",
        )
        for _ in range(2):
            level = _Level(
                [_lrelu(), *_down(_plain_conv, inner, inner), _LayerNorm(), level, _lrelu(),
                 *_bilinear_up(2 * inner, inner), _LayerNorm(), _lrelu(), nn.ReplicationPad2d(1),
                 nn.Conv2d(inner, inner, 3), _LayerNorm()],
                inner, skip="cat",
            )
        for outer, inner_c in [(4 * ngf, inner), (2 * ngf, 4 * ngf), (ngf, 2 * ngf)]:
            level = _Level(
                [_lrelu(), *_down(_plain_conv, outer, inner_c), _LayerNorm(), level, _lrelu(),
                 nn.ConvTranspose2d(2 * inner_c, outer, 4, stride=2, padding=1), _LayerNorm(), _lrelu(),
                 nn.ReplicationPad2d(1), nn.Conv2d(outer, outer, 3), _LayerNorm()],
                outer, skip="cat", noise=True,
            )
        self.model = _Level(
            [*_down(_plain_conv, in_channels, ngf), level, _lrelu(),
             nn.ConvTranspose2d(2 * ngf, ngf, 4, stride=2, padding=1), _LayerNorm(), _lrelu(),
             nn.ReplicationPad2d(3), nn.Conv2d(ngf, out_channels, 7)],
            out_channels,
        )

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model(x, generator)


def _to_unit_range(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> (1, C, H, W) in [-1, 1] the way ToTensor + Normalize(0.5, 0.5) computes it."""
    t = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div(255)
    return ((t - 0.5) / 0.5)[None]


def _padded(array: np.ndarray, fill: tuple[int, ...]) -> np.ndarray:
    """Place the page top-left on a canvas of the next multiples of 256 filled with ``fill``."""
    h, w = array.shape[:2]
    ph, pw = -(-h // INPUT_MULTIPLE) * INPUT_MULTIPLE, -(-w // INPUT_MULTIPLE) * INPUT_MULTIPLE
    canvas = np.empty((ph, pw, array.shape[2]), dtype=np.uint8)
    canvas[:] = np.asarray(fill, dtype=np.uint8)
    canvas[:h, :w] = array
    return canvas


class ScreenStyleConverter(NetworkHolder):
    """Colour (or gray) page -> screentone rendition, and the GrayImage(ScreenStyle) condition
    (the screentone blended 50/50 with the gray page).

    The original halves pages taller than 2500 px first (never at the official sizes); here every
    page is converted at its own size, so the condition always matches the page.
    """

    def __init__(
        self,
        generator: ScreenCodeGenerator,
        decoder: ScreenDecoder,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = generator.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.decoder = decoder.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    def networks(self) -> dict[str, nn.Module]:
        return {"screentone_generator": self.generator, "screentone_decoder": self.decoder}

    @classmethod
    def from_release(
        cls, release_root: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "ScreenStyleConverter":
        """Load both networks strictly from the official release layout under ``release_root``."""
        root = Path(release_root)
        missing = [f for f in (G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE) if not (root / f).is_file()]
        if missing:
            raise WeightsError(
                "the GrayImage(ScreenStyle) style needs the ScreenStyle networks, missing: "
                + ", ".join(str(root / f) for f in missing)
                + ". Download them from the TencentARC/ColorFlow release (same relative paths) into "
                f"{root}, or turn the screentone conversion off explicitly (CLI: --no-screentone)."
            )
        networks = []
        for network, rel_path in ((ScreenCodeGenerator(), G_RGB2INTSCR_FILE), (ScreenDecoder(), SCREENVAE_DEC_FILE)):
            load_strict(network, load_state_dict_file(root / rel_path), root / rel_path)
            networks.append(network)
        return cls(*networks, device=device, dtype=dtype)

    @torch.no_grad()
    def screen_tensors(
        self, q15: Image.Image, seed: int, generator_device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(screen code (1,4,h,w), screentone (1,1,h,w) in [-1,1]), cropped to the page; float32 CPU.

        The decoder noise comes from `seeding.page_generator(seed + SCREENTONE_SEED_OFFSET)`.
        """
        if not isinstance(q15, Image.Image):
            raise InputError(f"the screentone conversion needs a PIL image, got {type(q15).__name__}")
        rgb = np.asarray(q15.convert("RGB"))
        gray = np.asarray(q15.convert("L"))[:, :, None]
        h, w = gray.shape[:2]
        rgb_t = _to_unit_range(_padded(rgb, RGB_PAD)).to(self.device, self.dtype)
        gray_t = _to_unit_range(_padded(gray, (GRAY_PAD,))).to(self.device, self.dtype)
        code = self.generator(torch.cat([gray_t, rgb_t], 1))
        hp, wp = code.shape[-2:]
        extra_h = (hp // DECODER_MULTIPLE + 1) * DECODER_MULTIPLE - hp  # always at least one block
        extra_w = (wp // DECODER_MULTIPLE + 1) * DECODER_MULTIPLE - wp
        noise = page_generator(seed + SCREENTONE_SEED_OFFSET, generator_device)
        decoded = self.decoder(F.pad(code, (0, extra_w, 0, extra_h), mode="replicate"), noise)[:, :, :hp, :wp]
        luminance = (gray_t + 1) / 2
        screen = torch.clamp((decoded + 1) * luminance - 1, -1, 1)
        screen = 2 * (((screen + 1) / 2) * luminance) - 1  # the original applies the luminance twice
        return code[:, :, :h, :w].float().cpu(), screen[:, :, :h, :w].float().cpu()

    def to_screentone(self, q15: Image.Image, seed: int, generator_device: str | torch.device = "cpu") -> Image.Image:
        """Screentone rendition of ``q15`` as gray RGB, 8-bit by truncation like the original."""
        screen = self.screen_tensors(q15, seed, generator_device)[1][0, 0].numpy()
        return Image.fromarray(((screen + 1) / 2 * 255).astype(np.uint8)).convert("RGB")

    def screenstyle_condition(
        self, q15: Image.Image, seed: int, generator_device: str | torch.device = "cpu"
    ) -> Image.Image:
        """The GrayImage(ScreenStyle) condition and GSRP guide: 50/50 blend of screentone and page grays."""
        screen = self.to_screentone(q15, seed, generator_device)
        return Image.blend(screen.convert("L").convert("RGB"), q15.convert("L").convert("RGB"), 0.5)
