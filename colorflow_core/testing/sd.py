"""Random-weight SD1.5 base, `GraySD/` guider + LoRA and `image_encoder/` in the official layout.

Tiny (tests), reduced (the SD1.5 block structure with fewer channels: CPU benchmarks) or full size
(benchmarks: the real SD1.5 / CLIP configs). Networks are built on the meta
device only to learn their state-dict layout, so a full-size release costs no random init twice.
Every tensor is random and non-zero, the guider's zero-convs and the LoRA B matrices included, so a
test exercises each of them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from ..colorize.lora import SD_UNET_LORA_TARGETS, add_lora_adapter
from ..colorize.sd.guider import ColorGuiderSDModel
from ..errors import InputError

CONFIGS: dict[str, Any] = json.loads((Path(__file__).with_name("sd_configs.json")).read_text())
SCALES = ("tiny", "reduced", "full")
# Guider (BrushNet) block names for the UNet's cross-attention blocks (as the original's ColorGuider names them).
_GUIDER_BLOCK = {
    "CrossAttnDownBlock2D": "SelfAttnDownBlock2D", "DownBlock2D": "DownBlock2D",
    "CrossAttnUpBlock2D": "SelfAttnUpBlock2D", "UpBlock2D": "UpBlock2D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock2DSelfAttn",
}
_UNET_KEYS_KEPT = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
    "use_linear_projection", "upcast_attention", "resnet_time_scale_shift",
)


def model_config(part: str, scale: str = "tiny") -> dict[str, Any]:
    """The config of ``part`` (unet, vae, text_encoder, image_encoder) at ``scale``."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    return dict(CONFIGS[scale][part])


def random_tensor(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Non-zero values of a sane magnitude: norm scales near 1, small biases, fan-in scaled matrices."""
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if "norm" in name and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.02 * torch.randn(shape, generator=g)


def random_state_dict(model: nn.Module, seed: int, only: str | None = None) -> dict[str, torch.Tensor]:
    """Random tensors for every state-dict entry of ``model`` (or those whose name contains ``only``)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: random_tensor(name, tuple(t.shape), g)
        for name, t in model.state_dict().items()
        if only is None or only in name
    }


def _safetensors(state: Mapping[str, torch.Tensor], file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(file), metadata={"format": "pt"})


def _pickle(state: Mapping[str, torch.Tensor], file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), file)


def _write_diffusers(cls: Any, config: dict, folder: Path, seed: int) -> nn.Module:
    with torch.device("meta"):
        model = cls.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    _safetensors(random_state_dict(model, seed), folder / "diffusion_pytorch_model.safetensors")
    return model


def _write_transformers(cls: Any, config_cls: Any, config: dict, folder: Path, seed: int) -> None:
    cfg = config_cls(**config)
    with torch.device("meta"):
        model = cls(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.architectures = [cls.__name__]
    cfg.save_pretrained(folder)
    _safetensors(random_state_dict(model, seed), folder / "model.safetensors")


def _write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over single letters (no merges): any lower-case word tokenizes."""
    folder.mkdir(parents=True, exist_ok=True)
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab = {bos: 0, eos: 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, clean_up_tokenization_spaces=False,
             errors="replace"), indent=1))


def write_sd_base(folder: str | os.PathLike, scale: str = "tiny", seed: int = 0) -> Path:
    """A diffusers-layout SD1.5-shaped base (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    _write_diffusers(UNet2DConditionModel, model_config("unet", scale), folder / "unet", seed)
    _write_diffusers(AutoencoderKL, model_config("vae", scale), folder / "vae", seed + 1)
    _write_transformers(CLIPTextModel, CLIPTextConfig, model_config("text_encoder", scale),
                        folder / "text_encoder", seed + 2)
    _write_tokenizer(folder / "tokenizer")
    PNDMScheduler.from_config(CONFIGS["scheduler"]).save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=1))
    return folder


def guider_config_from_unet(unet_config: Mapping[str, Any], conditioning_channels: int = 5) -> dict[str, Any]:
    """The ColorGuider config the original derives from a base UNet (`from_unet`)."""
    config = {k: unet_config[k] for k in _UNET_KEYS_KEPT if k in unet_config}
    config["conditioning_channels"] = conditioning_channels
    config["down_block_types"] = [_GUIDER_BLOCK[t] for t in unet_config["down_block_types"]]
    config["mid_block_type"] = _GUIDER_BLOCK[unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"]
    config["up_block_types"] = [_GUIDER_BLOCK[t] for t in unet_config["up_block_types"]]
    return config


def unet_lora_state_dict(unet_config: Mapping[str, Any], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Random LoRA tensors named as the official adapter names them (`<module>.lora_A.default.weight`)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        add_lora_adapter(unet, rank=rank, alpha=rank, target_modules=SD_UNET_LORA_TARGETS)
    return random_state_dict(unet, seed, only=".lora_")


def write_graysd(
    folder: str | os.PathLike,
    unet_config: Mapping[str, Any] | None = None,
    scale: str = "tiny",
    seed: int = 0,
    lora_rank: int = 4,
    guider_channels: int = 5,
) -> Path:
    """`<folder>/GraySD/`: config.json + diffusion_pytorch_model.bin (guider) + unet_lora.bin.

    ``unet_config`` is the base UNet's (default: the ``scale`` one); the guider mirrors it.
    ``guider_channels``: its conditioning channels, 5 or 9 (nobody outside knows the release's).
    """
    unet_config = dict(unet_config) if unet_config is not None else model_config("unet", scale)
    out = Path(folder) / "GraySD"
    with torch.device("meta"):
        guider = ColorGuiderSDModel.from_config(guider_config_from_unet(unet_config, guider_channels))
    out.mkdir(parents=True, exist_ok=True)
    guider.save_config(out)
    _pickle(random_state_dict(guider, seed), out / "diffusion_pytorch_model.bin")
    _pickle(unet_lora_state_dict(unet_config, lora_rank, seed + 1), out / "unet_lora.bin")
    return out


def write_image_encoder(folder: str | os.PathLike, scale: str = "tiny", seed: int = 0) -> Path:
    """`<folder>/image_encoder/`: a transformers CLIPVisionModelWithProjection (config + safetensors)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    out = Path(folder) / "image_encoder"
    _write_transformers(CLIPVisionModelWithProjection, CLIPVisionConfig, model_config("image_encoder", scale), out, seed)
    return out


def write_sd_release(root: str | os.PathLike, scale: str = "tiny", seed: int = 0, lora_rank: int = 4,
                     guider_channels: int = 5) -> Path:
    """`<root>/base/` (the SD1.5 base) plus the release's `GraySD/` and `image_encoder/` under ``root``.

    Without the GSRP fusion net and the preprocessing networks: `testing.write_release` composes
    those in.
    """
    root = Path(root)
    write_sd_base(root / "base", scale, seed)
    write_graysd(root, model_config("unet", scale), scale, seed + 10, lora_rank, guider_channels)
    write_image_encoder(root, scale, seed + 20)
    return root
