"""The SD1.5 ColorGuider: a BrushNet-style branch built from upstream blocks.

The ColorGuider of the ColorFlow paper (arXiv 2412.11815), section "In-context Colorization
Pipeline".

A UNet-shaped encoder/decoder without cross-attention and without an output head; every
intermediate activation passes through its own 1x1 "zero" conv and becomes a residual that
`injection.py` adds into the base UNet. Attribute names equal the original's so the released
`GraySD/` state dict loads strictly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from torch import nn

from ...errors import InputError, WeightsError
from ...weights import load_state_dict_file, load_strict
from ..conditioning import CONDITIONING_CHANNELS

CLASS_NAME = "ColorGuiderSDModel"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_ATTN_DOWN, _PLAIN_DOWN = "SelfAttnDownBlock2D", "DownBlock2D"
_ATTN_UP, _PLAIN_UP = "SelfAttnUpBlock2D", "UpBlock2D"
_MID = "UNetMidBlock2DSelfAttn"
# Config keys the release stores (inherited from BrushNet) that must keep their inert values here.
_MUST_BE_NULL = (
    "encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "num_class_embeds", "projection_class_embeddings_input_dim",
)


@dataclass
class GuiderResiduals:
    """What the guider adds into the UNet: 12 down residuals, the mid residual, 15 up residuals."""

    down: list[torch.Tensor]
    mid: torch.Tensor
    up: list[torch.Tensor]


def _per_block(value: int | Sequence[int], n: int, key: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise WeightsError(f"guider config: {key} has {len(values)} entries for {n} blocks")
    return values


def _zero_conv(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=1)


class ColorGuiderSDModel(ModelMixin, ConfigMixin):
    """ColorGuider for SD1.5 (`GraySD/`); `forward` returns the residuals for one UNet call."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (_ATTN_DOWN, _ATTN_DOWN, _ATTN_DOWN, _PLAIN_DOWN),
        mid_block_type: str | None = _MID,
        up_block_types: tuple[str, ...] = (_PLAIN_UP, _ATTN_UP, _ATTN_UP, _ATTN_UP),
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        brushnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        super().__init__()
        self._check_config(locals())
        n = len(block_out_channels)
        # As in diffusers' UNet: a config without num_attention_heads means attention_head_dim heads.
        heads = _per_block(num_attention_heads or attention_head_dim, n, "num_attention_heads")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        t_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        temb = block_out_channels[0] * 4
        common = dict(
            temb_channels=temb, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )
        attn_common = dict(
            cross_attention_dim=None, use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
        )

        self.conv_in_condition = nn.Conv2d(in_channels + conditioning_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        down_channels = [block_out_channels[0]]
        out_ch = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            add_down = i < n - 1
            kw = dict(common, in_channels=in_ch, out_channels=out_ch, num_layers=layers[i],
                      add_downsample=add_down, downsample_padding=downsample_padding)
            if kind == _ATTN_DOWN:
                block = CrossAttnDownBlock2D(**kw, **attn_common, transformer_layers_per_block=t_layers[i],
                                             num_attention_heads=heads[i], only_cross_attention=only_cross_attention)
            else:
                block = DownBlock2D(**kw)
            self.down_blocks.append(block)
            down_channels += [out_ch] * (layers[i] + int(add_down))

        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=block_out_channels[-1], **common, **attn_common, output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=t_layers[-1], num_attention_heads=heads[-1],
        )

        self.up_blocks = nn.ModuleList()
        up_channels: list[int] = []
        rev_ch, rev_heads = list(reversed(block_out_channels)), list(reversed(heads))
        rev_layers, rev_t_layers = list(reversed(layers)), list(reversed(t_layers))
        out_ch = rev_ch[0]
        for i, kind in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            add_up = i < n - 1
            kw = dict(common, in_channels=in_ch, out_channels=out_ch, prev_output_channel=prev_ch,
                      num_layers=rev_layers[i] + 1, add_upsample=add_up, resolution_idx=i)
            if kind == _ATTN_UP:
                block = CrossAttnUpBlock2D(**kw, **attn_common, transformer_layers_per_block=rev_t_layers[i],
                                           num_attention_heads=rev_heads[i], only_cross_attention=only_cross_attention)
            else:
                block = UpBlock2D(**kw)
            self.up_blocks.append(block)
            up_channels += [out_ch] * (rev_layers[i] + 1 + int(add_up))

        self.brushnet_down_blocks = nn.ModuleList(_zero_conv(c) for c in down_channels)
        self.brushnet_mid_block = _zero_conv(block_out_channels[-1])
        self.brushnet_up_blocks = nn.ModuleList(_zero_conv(c) for c in up_channels)

    @staticmethod
    def _check_config(args: dict) -> None:
        """Refuse configs this port cannot honour instead of silently building a different network."""
        n = len(args["block_out_channels"])
        problems = []
        if len(args["down_block_types"]) != n or len(args["up_block_types"]) != n:
            problems.append(f"{n} block_out_channels but {len(args['down_block_types'])} down / "
                            f"{len(args['up_block_types'])} up block types")
        problems += [f"down block type {t!r}" for t in args["down_block_types"] if t not in (_ATTN_DOWN, _PLAIN_DOWN)]
        problems += [f"up block type {t!r}" for t in args["up_block_types"] if t not in (_ATTN_UP, _PLAIN_UP)]
        if args["mid_block_type"] != _MID:
            problems.append(f"mid_block_type {args['mid_block_type']!r} (expected {_MID!r})")
        if args["brushnet_conditioning_channel_order"] not in ("rgb", "bgr"):
            problems.append(f"brushnet_conditioning_channel_order {args['brushnet_conditioning_channel_order']!r}")
        if isinstance(args["conditioning_channels"], bool) or args["conditioning_channels"] not in CONDITIONING_CHANNELS:
            problems.append(f"conditioning_channels {args['conditioning_channels']!r} (the pipeline builds "
                            f"{' or '.join(map(str, CONDITIONING_CHANNELS))}: canvas + mask, or canvas without "
                            f"page + mask + page only)")
        problems += [f"{k}={args[k]!r} (only null is supported)" for k in _MUST_BE_NULL if args[k] is not None]
        if problems:
            raise WeightsError(f"unsupported {CLASS_NAME} config: " + "; ".join(problems))

    @classmethod
    def from_release_folder(
        cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> "ColorGuiderSDModel":
        """Load `GraySD/` (config.json + diffusion_pytorch_model.{safetensors,bin}) strictly."""
        folder = Path(folder)
        config_file = folder / cls.config_name
        if not config_file.is_file():
            raise WeightsError(f"guider config not found: {config_file}")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{config_file} is not valid JSON ({exc}): download it again") from exc
        if config.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise WeightsError(f"{config_file} describes a {config['_class_name']}, not a {CLASS_NAME}")
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise WeightsError(f"guider weights not found in {folder} (expected one of {', '.join(WEIGHT_NAMES)})")
        state = load_state_dict_file(weights)
        try:
            with torch.device("meta"):  # no random init of ~842M parameters that are overwritten anyway
                model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        except WeightsError as exc:
            raise WeightsError(f"{config_file}: {exc}. Download {folder.name}/ of TencentARC/ColorFlow again.") from exc
        # nn.Module.to: diffusers' ModelMixin.to warns about fp32-only modules on any dtype cast, and
        # this model has none.
        model = nn.Module.to(model, dtype=dtype).to_empty(device=device)
        load_strict(model, state, weights)
        return model.eval()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        conditioning: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> GuiderResiduals:
        """Residuals for noisy latents ``sample`` (B,4,h,w) and ``conditioning`` (B,C,h,w)."""
        expected = self.config.conditioning_channels
        if conditioning.ndim != 4 or conditioning.shape[1] != expected:
            raise InputError(f"guider conditioning must be (B, {expected}, h, w), got {tuple(conditioning.shape)}")
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise InputError(f"guider sample must be (B, {self.config.in_channels}, h, w), got {tuple(sample.shape)}")
        if conditioning.shape[0] != sample.shape[0] or conditioning.shape[2:] != sample.shape[2:]:
            raise InputError(f"guider conditioning {tuple(conditioning.shape)} does not match sample {tuple(sample.shape)}")
        if self.config.brushnet_conditioning_channel_order == "bgr":
            conditioning = torch.flip(conditioning, dims=[1])

        emb = self.time_embedding(self.time_proj(self._timesteps(timestep, sample)).to(sample.dtype))
        h = self.conv_in_condition(torch.cat([sample, conditioning], dim=1))
        feats = [h]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h, return_dict=False)[0]
                feats.append(h)
            for down in block.downsamplers or ():
                h = down(h)
                feats.append(h)

        h = self.mid_block(h, emb)
        mid = self.brushnet_mid_block(h) * conditioning_scale

        skips = list(feats)
        ups = []
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h, return_dict=False)[0]
                ups.append(h)
            for up in block.upsamplers or ():
                h = up(h, skips[-1].shape[2:])
                ups.append(h)

        down = [conv(f) * conditioning_scale for conv, f in zip(self.brushnet_down_blocks, feats)]
        up = [conv(u) * conditioning_scale for conv, u in zip(self.brushnet_up_blocks, ups)]
        return GuiderResiduals(down=down, mid=mid, up=up)

    @staticmethod
    def _timesteps(timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """A scalar or (B,) timestep broadcast to the batch, as the UNet does."""
        if not torch.is_tensor(timestep):
            dtype = torch.float32 if isinstance(timestep, float) else torch.int64
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1)
        if timestep.shape[0] not in (1, sample.shape[0]):
            raise InputError(f"timestep has {timestep.shape[0]} entries for a batch of {sample.shape[0]}")
        return timestep.expand(sample.shape[0])
