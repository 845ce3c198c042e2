"""Loading the SD1.5 base (a diffusers folder or one .safetensors file) and the release's GraySD
style on it: ColorGuider, UNet LoRA and the CLIP prompt embeddings."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..colorize.lora import SD_UNET_LORA_TARGETS, infer_lora_rank, inject_lora, merge_lora
from ..colorize.sd.guider import ColorGuiderSDModel
from ..errors import WeightsError
from ..weights import load_state_dict_file
from .paths import SD15_REPO, ReleasePaths, hub_snapshot

SD_BASE_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    # component: groups of alternatives that must each be present
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": (("vocab.json",), ("merges.txt",)),
    "scheduler": (("scheduler_config.json",),),
}
SD_CONFIG_PATTERNS = ["model_index.json", "*/*.json", "tokenizer/*"]
SD_WEIGHT_PATTERNS = SD_CONFIG_PATTERNS + [
    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]


@dataclass
class SDBase:
    """The SD1.5 components ColorFlow uses (scheduler as its config: the pipeline builds UniPC from it)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict = field(default_factory=dict)


@torch.no_grad()
def encode_clip_prompts(text_encoder: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP last hidden states (len(prompts), 77, c), padded to the tokenizer's max length as SD does."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def _missing_base_files(folder: Path) -> list[str]:
    missing = []
    for component, groups in SD_BASE_FILES.items():
        for group in groups:
            if not any((folder / component / name).is_file() for name in group):
                missing.append(f"{component}/" + " or ".join(group))
    return missing


def _load_part(what: Path, load: Any) -> Any:
    try:
        return load()
    except WeightsError:
        raise
    except Exception as exc:  # truncated / corrupt file, bad config, a checkpoint lacking weights
        raise WeightsError(
            f"{what} could not be loaded ({type(exc).__name__}: {exc}). A file in it is truncated or corrupt, or "
            f"it is not a complete SD1.5 model (weights missing): download it again or pick an SD1.5 base."
        ) from exc


def _load_sd_folder(folder: Path, dtype: torch.dtype, device: str | torch.device) -> SDBase:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = _missing_base_files(folder)
    if missing:
        raise WeightsError(
            f"SD1.5 base folder {folder} is incomplete: missing {', '.join(missing)}. Use a diffusers-layout "
            f"SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. {SD15_REPO}."
        )
    unet = _load_part(folder / "unet", lambda: UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype))
    vae = _load_part(folder / "vae", lambda: AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype))
    text_encoder = _load_part(folder / "text_encoder",
                              lambda: CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype))
    tokenizer = _load_part(folder / "tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer"))
    scheduler_config = _load_part(folder / "scheduler",
                                  lambda: json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
    return SDBase(unet.to(device).eval(), vae.to(device).eval(), text_encoder.to(device).eval(), tokenizer,
                  scheduler_config)


def _all_weights_loaded(pipe: Any) -> Any:
    """``pipe``, after checking that the file filled every weight: diffusers 0.32 leaves weights that
    a single file lacks on the meta device instead of raising as later releases do."""
    missing = [f"{part}.{name}" for part in ("unet", "vae", "text_encoder")
               for name, p in getattr(pipe, part).named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{len(missing)} weights missing from the file, e.g. {', '.join(missing[:3])}")
    return pipe


def _load_sd_single_file(file: Path, config: Path | None, dtype: torch.dtype, device: str | torch.device) -> SDBase:
    """A single-file SD1.5 checkpoint; configs and tokenizer come from a diffusers SD1.5 folder."""
    from diffusers import StableDiffusionPipeline

    config = config or hub_snapshot(SD15_REPO, SD_CONFIG_PATTERNS, download=False, progress=False)
    if config is None or not (Path(config) / "model_index.json").is_file():
        raise WeightsError(
            f"{file} is a single-file checkpoint; loading it needs the SD1.5 configs and tokenizer, which were not "
            f"found offline. Download the small config files of {SD15_REPO} once (model_index.json, */*.json, "
            f"tokenizer/) or pass a diffusers-layout SD1.5 folder as the base instead."
        )
    pipe = _load_part(file, lambda: _all_weights_loaded(StableDiffusionPipeline.from_single_file(
        str(file), config=str(config), local_files_only=True, torch_dtype=dtype,
        safety_checker=None, requires_safety_checker=False)))
    return SDBase(pipe.unet.to(device).eval(), pipe.vae.to(device).eval(), pipe.text_encoder.to(device).eval(),
                  pipe.tokenizer, dict(pipe.scheduler.config))


def load_sd_base(
    base: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    config: str | os.PathLike | None = None,
    allow_download: bool = False,
    progress: bool = True,
) -> SDBase:
    """Load the SD1.5 base from a diffusers folder, a single `.safetensors` file, or (None) the hub."""
    if base is None:
        folder = hub_snapshot(SD15_REPO, SD_WEIGHT_PATTERNS, download=False, progress=progress)
        if folder is None or _missing_base_files(folder):
            if not allow_download:
                raise WeightsError(
                    f"the SD1.5 base ({SD15_REPO}) is not in the hub cache: allow the download, or pass a "
                    f"diffusers-layout SD1.5 folder or a single SD1.5 .safetensors file as the base."
                )
            folder = hub_snapshot(SD15_REPO, SD_WEIGHT_PATTERNS, download=True, progress=progress)
        return _load_sd_folder(folder, dtype, device)
    path = Path(base).expanduser()
    if path.is_dir():
        return _load_sd_folder(path, dtype, device)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path}: a single-file SD1.5 base must be a .safetensors file")
        return _load_sd_single_file(path, Path(config) if config else None, dtype, device)
    raise WeightsError(f"SD1.5 base {path} does not exist")


def load_graysd(
    paths: ReleasePaths,
    unet: Any,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    merge: bool = False,
) -> ColorGuiderSDModel:
    """Load the SD ColorGuider and add the release LoRA to ``unet`` (every LoRA tensor must land).

    ``merge`` folds the LoRA into the UNet weights (faster; the adapter can no longer be removed).
    """
    paths.require(["graysd"])
    guider = ColorGuiderSDModel.from_release_folder(paths.graysd, dtype=dtype, device=device)
    state = load_state_dict_file(paths.graysd_lora)
    rank = infer_lora_rank(state, paths.graysd_lora)  # the official file is rank 64, alpha 64 (scale 1)
    inject_lora(unet, state, rank=rank, alpha=rank, target_modules=SD_UNET_LORA_TARGETS, source=paths.graysd_lora)
    if merge:
        merge_lora(unet)
    return guider
