"""The PixArt ColorGuider (ColorFlow paper, arXiv 2412.11815): a half-depth, text-free PixArt branch
whose per-block outputs are added to the main transformer's hidden states (injection:
`pixart.inject_pixart_controls`).

Built from upstream diffusers blocks with the original attribute names, so the released
`sketch/` and `shading/` state dicts load strictly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from ...errors import InputError, WeightsError
from ...weights import load_state_dict_file, load_strict

# The original assigns every new adapter to `self.after_proj` inside its construction loop, so the
# state dict carries `after_proj.*` as a second name of the last adapter. We keep that alias (the
# release files and the manifest list it) but never read it on load: it must equal the last adapter.
ALIAS = "after_proj"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class ColorGuiderPixArtModel(ModelMixin, ConfigMixin):
    """Patch embedding of 4 noisy-latent + `cond_channels` conditioning channels, AdaLN-single
    timestep/micro-condition embedding, `num_layers // 2` self-attention blocks, one adapter each."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        cond_channels: int = 5,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 128,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | None = None,
        use_additional_conditions: bool | None = None,
        caption_channels: int | None = None,
        attention_type: str | None = "default",
    ):
        super().__init__()
        if norm_type != "ada_norm_single":
            raise WeightsError(f"ColorGuiderPixArtModel supports norm_type 'ada_norm_single' only, got {norm_type!r}")
        inner_dim = num_attention_heads * attention_head_dim
        if use_additional_conditions is None:
            use_additional_conditions = sample_size == 128
        self.use_additional_conditions = use_additional_conditions
        if interpolation_scale is None:
            interpolation_scale = max(sample_size // 64, 1)

        self.pos_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels + cond_channels,
            embed_dim=inner_dim,
            interpolation_scale=interpolation_scale,
        )
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                dropout=dropout,
                cross_attention_dim=None,  # the guider sees no text
                activation_fn=activation_fn,
                num_embeds_ada_norm=num_embeds_ada_norm,
                attention_bias=attention_bias,
                upcast_attention=upcast_attention,
                norm_type=norm_type,
                norm_elementwise_affine=norm_elementwise_affine,
                norm_eps=norm_eps,
                attention_type=attention_type,
            )
            for _ in range(num_layers // 2)
        )
        adapters = [nn.Linear(inner_dim, inner_dim) for _ in range(num_layers // 2)]
        for adapter in adapters:  # zero-initialised: an untrained guider changes nothing
            nn.init.zeros_(adapter.weight)
            nn.init.zeros_(adapter.bias)
        # Registered before `adapter_linear`, as in the original, so the state-dict order matches.
        self.after_proj = adapters[-1]
        self.adapter_linear = nn.ModuleList(adapters)
        self.adaln_single = AdaLayerNormSingle(inner_dim, use_additional_conditions=use_additional_conditions)

    @property
    def num_controls(self) -> int:
        return len(self.adapter_linear)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """hidden_states: (B, in+cond, h, w); timestep: (B,); added_cond_kwargs: `resolution` (B, 2),
        `aspect_ratio` (B, 1). Returns one (B, h/p * w/p, inner_dim) tensor per block."""
        expected = self.config.in_channels + self.config.cond_channels
        if hidden_states.ndim != 4 or hidden_states.shape[1] != expected:
            raise InputError(
                f"ColorGuiderPixArtModel expects (B, {expected}, h, w) input, got {tuple(hidden_states.shape)}"
            )
        if self.use_additional_conditions and added_cond_kwargs is None:
            raise InputError("this guider needs added_cond_kwargs with 'resolution' and 'aspect_ratio'")
        batch = hidden_states.shape[0]
        tokens = self.pos_embed(hidden_states)
        modulation, _ = self.adaln_single(timestep, added_cond_kwargs, batch_size=batch, hidden_dtype=tokens.dtype)
        controls = []
        for block, adapter in zip(self.transformer_blocks, self.adapter_linear):
            tokens = block(tokens, timestep=modulation)
            controls.append(adapter(tokens))
        return controls

    @classmethod
    def from_release_folder(
        cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32
    ) -> "ColorGuiderPixArtModel":
        """Load `sketch/` or `shading/` of the release: `config.json` + the guider weights."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise WeightsError(
                f"{config_path} not found: the PixArt ColorGuider folder needs config.json and "
                f"diffusion_pytorch_model.bin from the TencentARC/ColorFlow release ({folder.name}/)."
            )
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{config_path} is not a readable JSON config ({exc}); download it again") from exc
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise WeightsError(
                f"no guider weights in {folder}: expected one of {', '.join(WEIGHT_NAMES)} "
                f"(TencentARC/ColorFlow, {folder.name}/)"
            )
        state = load_state_dict_file(weights)
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{config_path} does not describe a PixArt ColorGuider: {exc}") from exc
        load_strict(model, resolve_alias(state, model.num_controls, weights), weights)
        return nn.Module.to(model, dtype=dtype).eval()  # ModelMixin.to warns on any dtype cast


def resolve_alias(
    state: dict[str, torch.Tensor], num_controls: int, source: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """Drop the file's `after_proj.*` (after checking it repeats the last adapter) and refill the
    alias from the adapter itself, so a file with or without the alias loads the same way."""
    last = f"adapter_linear.{num_controls - 1}"
    out = {k: v for k, v in state.items() if not k.startswith(ALIAS + ".")}
    for suffix in ("weight", "bias"):
        alias, target = state.get(f"{ALIAS}.{suffix}"), state.get(f"{last}.{suffix}")
        if alias is not None and target is not None and (alias.shape != target.shape or not torch.equal(alias, target)):
            raise WeightsError(
                f"{source}: {ALIAS}.{suffix} differs from {last}.{suffix}; in the release it is a copy "
                f"of the last adapter. The file is not a ColorFlow guider or is corrupt."
            )
        if target is not None:
            out[f"{ALIAS}.{suffix}"] = target
    return out
