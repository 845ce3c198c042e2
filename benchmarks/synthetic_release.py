"""Random-weight GrayImage (screenstyle) releases for the benchmark, at three scales.

- ``full``: the real SD1.5 UNet / VAE / text encoder, the SD1.5 ColorGuider, the CLIP ViT-H image
  encoder (synthetic.sd's full configs) and a rank-64 LoRA, as the real release. Speed does not
  depend on weight values, so this measures what the real weights would.
- ``reduced``: the same networks and block structure with fewer channels (UNet/guider /5, VAE /4,
  image encoder /4 in width, all 32 layers kept), so a CPU finishes a chapter in minutes.
- ``tiny``: the parity fixtures' shapes (tests).
The ScreenStyle networks have one (the real) size at every scale.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from colorflow_core.preprocess.screentone import G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE
from colorflow_core.synthetic.fusion import write_multiresnet
from colorflow_core.synthetic.preprocess import write_screenstyle
from colorflow_core.synthetic.sd import (
    model_config,
    random_state_dict,
    write_graysd,
    write_sd_base,
    write_sd_release,
)

SCALES = ("tiny", "reduced", "full")
_DONE = "benchmark-release.json"  # written last: a folder without it is incomplete and rewritten


def reduced_configs() -> dict[str, dict[str, Any]]:
    """SD1.5 / CLIP ViT-H configs with narrower layers (group norms and head counts still divide)."""
    unet = model_config("unet", "full")
    unet["block_out_channels"] = [c // 5 for c in unet["block_out_channels"]]  # 64, 128, 256, 256
    vae = model_config("vae", "full")
    vae["block_out_channels"] = [c // 4 for c in vae["block_out_channels"]]  # 32, 64, 128, 128
    image = model_config("image_encoder", "full")
    image.update(hidden_size=image["hidden_size"] // 4, intermediate_size=image["intermediate_size"] // 4,
                 projection_dim=image["projection_dim"] // 4)
    return {"unet": unet, "vae": vae, "text_encoder": model_config("text_encoder", "full"), "image_encoder": image}


def _write_model(model: torch.nn.Module, folder: Path, weights_name: str, seed: int) -> None:
    """Config (diffusers ``save_config`` / transformers ``config.save_pretrained``) + random safetensors."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if hasattr(model, "save_config"):
        model.save_config(folder)
    else:
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in random_state_dict(model, seed).items()}, str(folder / weights_name),
              metadata={"format": "pt"})


def _write_reduced(root: Path, lora_rank: int, seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    configs = reduced_configs()
    base = write_sd_base(root / "base", "tiny", seed)  # tokenizer, scheduler, model_index; nets replaced below
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["image_encoder"]))
    _write_model(unet, base / "unet", "diffusion_pytorch_model.safetensors", seed)
    _write_model(vae, base / "vae", "diffusion_pytorch_model.safetensors", seed + 1)
    _write_model(text, base / "text_encoder", "model.safetensors", seed + 2)
    _write_model(image, root / "image_encoder", "model.safetensors", seed + 20)
    write_graysd(root, configs["unet"], seed=seed + 10, lora_rank=lora_rank)
    return configs["vae"]


def write_release(root: str | Path, scale: str = "full", lora_rank: int = 64, seed: int = 0) -> Path:
    """A complete screenstyle release under ``root`` (SD base in ``root/base``); reused when present."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    root = Path(root)
    marker = root / _DONE
    wanted = {"scale": scale, "lora_rank": lora_rank, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    if root.exists():
        shutil.rmtree(root)
    if scale == "reduced":
        vae_config = _write_reduced(root, lora_rank, seed)
    else:
        write_sd_release(root, scale, seed, lora_rank)
        vae_config = model_config("vae", scale)
    channels = vae_config["block_out_channels"]
    write_multiresnet(root / "GraySD", [channels[0], *channels], seed=seed + 30)
    write_screenstyle(root, {G_RGB2INTSCR_FILE: seed + 40, SCREENVAE_DEC_FILE: seed + 50}, None)
    marker.write_text(json.dumps(wanted))
    return root
