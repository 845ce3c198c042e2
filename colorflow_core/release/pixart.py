"""Loading a sketch / shading style of the release (`sketch/`, `shading/`) on a PixArt-alpha base:
transformer + LoRA, PixArt ColorGuider, VAE, scheduler and the cached prompt embeddings."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

from ..colorize.batching import move
from ..colorize.lora import PIXART_LORA_TARGETS, infer_lora_rank, inject_lora, merge_lora
from ..colorize.pixart.guider import ColorGuiderPixArtModel
from ..colorize.pixart.pipeline import ColorFlowPixArtPipeline, check_guider_fits
from ..colorize.pixart.prompts import PIXART_HUB_REPO, PROMPT_CACHE_NAME, PromptEmbeddings, encode_manga_prompt
from ..errors import InputError, WeightsError
from ..weights import load_state_dict_file
from .paths import PIXART_STYLES

log = logging.getLogger(__name__)


LORA_FILE = "transformer_lora.bin"


@dataclass
class PixArtComponents:
    """What `ColorFlowPixArtPipeline` is built from, as loaded by `load_pixart_style`."""

    transformer: PixArtTransformer2DModel
    guider: ColorGuiderPixArtModel
    vae: AutoencoderKL
    scheduler: DPMSolverMultistepScheduler
    prompt: PromptEmbeddings
    device: torch.device
    dtype: torch.dtype
    lora_tensors: int  # LoRA tensors of `transformer_lora.bin` that landed (all of them, or loading failed)

    def pipeline(self) -> ColorFlowPixArtPipeline:
        return ColorFlowPixArtPipeline(self.transformer, self.guider, self.vae, self.scheduler, self.prompt,
                                       self.device, self.dtype)


def resolve_pixart_base(base: str | os.PathLike | None) -> Path:
    """An explicit PixArt-alpha diffusers folder, or the hub cache's `PixArt-alpha/PixArt-XL-2-1024-MS`."""
    if base is not None:
        folder = Path(base)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(PIXART_HUB_REPO, local_files_only=True))
        except Exception as exc:  # not in the cache (huggingface_hub raises several types for that)
            raise WeightsError(
                f"the PixArt-alpha base {PIXART_HUB_REPO} is not in the Hugging Face cache. Download it "
                f"(`huggingface-cli download {PIXART_HUB_REPO}`; transformer/, vae/, scheduler/ and, once, "
                f"text_encoder/ + tokenizer/ for the prompt cache) or pass its folder as base."
            ) from exc
    missing = [sub for sub in ("transformer", "vae", "scheduler") if not (folder / sub / _config_name(sub)).is_file()]
    if missing:
        raise WeightsError(
            f"{folder} is not a PixArt-alpha diffusers folder: missing {', '.join(m + '/' for m in missing)}. "
            f"Download {PIXART_HUB_REPO} (transformer/, vae/, scheduler/) and pass that folder as base."
        )
    return folder


def _config_name(sub: str) -> str:
    return "scheduler_config.json" if sub == "scheduler" else "config.json"


def _from_pretrained(loader: Callable[..., Any], folder: Path, **kwargs: Any) -> Any:
    """diffusers / transformers loading with the folder named in the error."""
    try:
        return loader(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise WeightsError(f"{folder} could not be loaded ({type(exc).__name__}: {exc}). "
                           f"Download it again from {PIXART_HUB_REPO}.") from exc


def load_prompt_cache(style_folder: Path, base_folder: Path, save_to: Path,
                      transformer: PixArtTransformer2DModel, device: torch.device,
                      dtype: torch.dtype) -> PromptEmbeddings:
    """The cached "manga" / "" T5 embeddings (style folder first, then next to the base), checked
    against ``transformer``; without a cache, T5 is loaded from the base once (never otherwise) and
    its embeddings are saved to ``save_to``."""
    for folder in (style_folder, base_folder):
        if (folder / PROMPT_CACHE_NAME).is_file():
            prompt = PromptEmbeddings.load(folder / PROMPT_CACHE_NAME)
            prompt.check_for(transformer, folder / PROMPT_CACHE_NAME)
            return prompt
    if not (base_folder / "text_encoder").is_dir() or not (base_folder / "tokenizer").is_dir():
        raise WeightsError(
            f"no prompt cache ({PROMPT_CACHE_NAME} in {style_folder} or {base_folder}) and no T5 to make one: "
            f"{base_folder} needs text_encoder/ and tokenizer/ from {PIXART_HUB_REPO} (needed once)."
        )
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, base_folder / "tokenizer")
    text_encoder = _from_pretrained(T5EncoderModel.from_pretrained, base_folder / "text_encoder", torch_dtype=dtype)
    prompt = encode_manga_prompt(text_encoder.to(device).eval(), tokenizer)
    del text_encoder
    prompt.check_for(transformer, base_folder / "text_encoder")
    try:
        prompt.save(save_to / PROMPT_CACHE_NAME)
    except OSError as exc:  # read-only location: keep working, T5 runs again next time
        log.warning("could not save the prompt cache to %s (%s); T5 will be loaded again next time", save_to, exc)
    return prompt


def load_pixart_style(release_root: str | os.PathLike, base: str | os.PathLike | None, style: str = "sketch",
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                      merge: bool = False, prompt_device: torch.device | str | None = None) -> PixArtComponents:
    """Load the PixArt base with the style's LoRA, the style's guider, the VAE, scheduler and prompt cache.

    ``merge`` folds the LoRA into the base weights (in float32, before casting): same output, faster.
    ``prompt_device``: where T5 runs if the prompt cache must be made (default ``device``; the engine
    loads the nets on the CPU for offloading but still wants T5 on the GPU).
    """
    if style not in PIXART_STYLES:
        raise InputError(f"PixArt style must be one of {', '.join(PIXART_STYLES)}, got {style!r}")
    style_folder = Path(release_root) / style
    if not (style_folder / "config.json").is_file() or not (style_folder / LORA_FILE).is_file():
        raise WeightsError(
            f"{style_folder} is incomplete: it needs config.json, diffusion_pytorch_model.bin and {LORA_FILE} "
            f"from the TencentARC/ColorFlow release ({style}/). Download that folder into {Path(release_root)}."
        )
    base_folder = resolve_pixart_base(base)
    device = torch.device(device)

    guider = ColorGuiderPixArtModel.from_release_folder(style_folder, torch.float32)
    transformer = _from_pretrained(PixArtTransformer2DModel.from_pretrained, base_folder / "transformer",
                                   torch_dtype=torch.float32)
    check_guider_fits(guider, transformer)
    lora = load_state_dict_file(style_folder / LORA_FILE)
    rank = infer_lora_rank(lora, style_folder / LORA_FILE)  # the release: 128, alpha = rank
    landed = inject_lora(transformer, lora, rank=rank, alpha=rank, target_modules=PIXART_LORA_TARGETS,
                         source=style_folder / LORA_FILE)
    if merge:
        merge_lora(transformer)
    vae = _from_pretrained(AutoencoderKL.from_pretrained, base_folder / "vae", torch_dtype=torch.float32)
    scheduler = _from_pretrained(DPMSolverMultistepScheduler.from_pretrained, base_folder / "scheduler")
    prompt = load_prompt_cache(style_folder, base_folder, base_folder if base is not None else style_folder,
                               transformer, torch.device(prompt_device or device), dtype)
    for net in (transformer, guider, vae):
        move(net, device, dtype).eval()
    return PixArtComponents(transformer, guider, vae, scheduler, prompt, device, dtype, landed)
