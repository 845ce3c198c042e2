"""In-context colorization on PixArt-alpha for the Sketch / Sketch_Shading styles.

ICP ("In-context Colorization Pipeline" of the ColorFlow paper, arXiv 2412.11815) on PixArt.

Differences from the original, all keeping a page's numbers identical to a batch-1 run of it:
- the T5 embeddings of "manga" / "" are a cache file (`PromptEmbeddings`); T5-XXL (~9 GB) is loaded
  only when no cache exists, once, and the result is saved;
- the guider outputs reach the upstream `PixArtTransformer2DModel` through forward hooks
  (`inject_pixart_controls`) instead of a forked forward;
- each canvas half is VAE-encoded once and its posterior sampled with two draws, one per CFG half,
  from a generator seeded with ``seed + i`` (ARCHITECTURE "Random draws"): image_A's (2,4,h,w)
  first, then image_B's, exactly the original's global-RNG order;
- guidance ≤ 1 runs a single conditional pass (as upstream PixArt decides CFG), the guider output
  can be scaled (``guider_scale``, 1.0 = the original).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from torch import nn

from .batching import PageBatchPipeline, move
from .conditioning import SPLIT_CANVAS
from .errors import InputError, WeightsError
from .guider_pixart import ColorGuiderPixArtModel
from .lora import PIXART_LORA_TARGETS, infer_lora_rank, inject_lora, merge_lora
from .pipeline import NEGATIVE_PROMPT, PROMPT
from .release import PIXART_STYLES
from .upscale import vae_scale_factor
from .weights import load_state_dict_file

log = logging.getLogger(__name__)

PIXART_HUB_REPO = "PixArt-alpha/PixArt-XL-2-1024-MS"
PROMPT_CACHE_NAME = "prompt_embeds_manga.safetensors"
LORA_FILE = "transformer_lora.bin"
MAX_SEQUENCE_LENGTH = 120
# Working memory of one page (both CFG halves, transformer + guider) per latent pixel and per byte of
# the compute dtype (performance.page_working_bytes): more than the UNet's, for the 2x2-patch tokens.
WORKING_BYTES_PER_LATENT_PIXEL = 64 * 1024


# ---------------------------------------------------------------------------------------------
# Guider → transformer injection (guider block outputs added to the transformer's hidden states)


@contextmanager
def inject_pixart_controls(
    transformer: PixArtTransformer2DModel, controls: Sequence[torch.Tensor]
) -> Iterator[PixArtTransformer2DModel]:
    """Add ``controls[k]`` to the hidden states after `transformer_blocks[k]` (k < len(controls));
    the later blocks run unchanged. Hooks are removed on exit, also after an error."""
    blocks = transformer.transformer_blocks
    if len(controls) > len(blocks):
        raise InputError(f"{len(controls)} guider outputs for a transformer of {len(blocks)} blocks")

    def adder(k: int, control: torch.Tensor) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if output.shape != control.shape:
                raise InputError(
                    f"guider output {k} has shape {tuple(control.shape)} but transformer block {k} "
                    f"produces {tuple(output.shape)}: run the guider on the same latents as the transformer"
                )
            return output + control.to(output.dtype)

        return hook

    handles = [blocks[k].register_forward_hook(adder(k, c)) for k, c in enumerate(controls)]
    try:
        yield transformer
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# T5 prompt cache


@dataclass
class PromptEmbeddings:
    """T5 embeddings (1, L, C) and attention masks (1, L) of "manga" and of the negative "".

    A constant of the base model: computed once with T5 and stored as safetensors."""

    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_prompt_attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("prompt", "negative_prompt"):
            embeds, mask = getattr(self, f"{name}_embeds"), getattr(self, f"{name}_attention_mask")
            if embeds.ndim != 3 or embeds.shape[0] != 1 or mask.shape != embeds.shape[:2]:
                raise WeightsError(
                    f"prompt cache: {name}_embeds {tuple(embeds.shape)} and {name}_attention_mask "
                    f"{tuple(mask.shape)} do not form (1, L, C) embeddings with a (1, L) mask"
                )
        if self.negative_prompt_embeds.shape != self.prompt_embeds.shape:
            raise WeightsError(
                f"prompt cache: negative embeddings {tuple(self.negative_prompt_embeds.shape)} differ "
                f"from the prompt's {tuple(self.prompt_embeds.shape)}"
            )

    @property
    def width(self) -> int:
        return int(self.prompt_embeds.shape[-1])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PromptEmbeddings":
        state = load_state_dict_file(path)
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise WeightsError(f"{path} is not a ColorFlow prompt cache: missing {', '.join(missing)}")
        return cls(**{n: state[n] for n in names})

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache atomically (`files.atomic_write`); OutputError (an OSError) when it cannot."""
        from safetensors.torch import save

        from .files import write_bytes_atomic

        tensors = {f.name: getattr(self, f.name).detach().cpu().contiguous() for f in fields(self)}
        write_bytes_atomic(path, save(tensors))

    def check_for(self, transformer: PixArtTransformer2DModel, source: str | os.PathLike = "prompt cache") -> None:
        """Refuse embeddings from another text encoder than the one this transformer was trained with."""
        expected = transformer.config.caption_channels
        if expected is not None and self.width != expected:
            raise WeightsError(
                f"{source}: the prompt embeddings are {self.width} wide but the transformer expects "
                f"caption_channels = {expected}. The cache was made for another model: delete it so it "
                f"is computed again with this base's T5 text encoder."
            )

    def cfg_batch(self, pages: int, cfg: bool, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and masks for ``pages`` pages, ordered [negative × pages, prompt × pages] with CFG."""
        embeds = [self.negative_prompt_embeds] * pages * cfg + [self.prompt_embeds] * pages
        masks = [self.negative_prompt_attention_mask] * pages * cfg + [self.prompt_attention_mask] * pages
        return torch.cat(embeds).to(device, dtype), torch.cat(masks).to(device)


@torch.no_grad()
def encode_manga_prompt(text_encoder: nn.Module, tokenizer: Any, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> PromptEmbeddings:
    """T5 embeddings of "manga" and "" padded to ``max_sequence_length``, as PixArt's pipeline does."""
    device = next(text_encoder.parameters()).device

    def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenizer([text], padding="max_length", max_length=max_sequence_length, truncation=True,
                           add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return embeds.float().cpu(), mask.cpu()

    prompt, prompt_mask = encode(PROMPT)
    negative, negative_mask = encode(NEGATIVE_PROMPT)
    return PromptEmbeddings(prompt, prompt_mask, negative, negative_mask)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class PixArtBatch:
    """Per-batch denoising state: latents (B,4,h,w), CFG-ordered 9-channel conditioning and micro-conditions."""

    latents: torch.Tensor
    conditioning: torch.Tensor  # (2B,9,h,w) [uncond pages..., cond pages...] or (B,9,h,w) without CFG
    added_cond_kwargs: dict[str, torch.Tensor]


class ColorFlowPixArtPipeline(PageBatchPipeline):
    """PixArt-alpha transformer (LoRA already applied) + PixArt ColorGuider + VAE, driven by DPM-Solver++."""

    default_guidance = 4.5
    scheduler_class = DPMSolverMultistepScheduler
    bytes_per_latent_pixel = WORKING_BYTES_PER_LATENT_PIXEL

    def __init__(self, transformer: PixArtTransformer2DModel, guider: ColorGuiderPixArtModel, vae: AutoencoderKL,
                 scheduler: Any, prompt: PromptEmbeddings, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        prompt.check_for(transformer)
        check_guider_fits(guider, transformer)
        self.transformer, self.guider, self.vae, self.prompt = transformer, guider, vae, prompt
        self.scheduler_config = dict(scheduler.config)
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor(vae))
        self.to(device, dtype)

    def networks(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "guider": self.guider, "transformer": self.transformer}  # in the order a page uses them

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def conditioning_channels(self) -> int:
        """Always [image_A (4), mask (1), image_B (4)]: the PixArt pipeline of the original has no other layout."""
        return SPLIT_CANVAS

    def micro_conditions(self, canvas_size: tuple[int, int], batch: int) -> dict[str, torch.Tensor]:
        """`resolution` = (2H, 2W) and `aspect_ratio` = 2H/2W of the canvas, one row per batch entry."""
        width, height = canvas_size
        resolution = torch.tensor([[float(height), float(width)]]).repeat(batch, 1)
        aspect_ratio = torch.tensor([[float(height / width)]]).repeat(batch, 1)
        return {"resolution": resolution.to(self.device, self.dtype), "aspect_ratio": aspect_ratio.to(self.device, self.dtype)}

    def prepare(self, canvases: Sequence[Image.Image], masks: Sequence[Image.Image], seeds: Sequence[int],
                cfg: bool, generator_device: str = "cpu", init_noise_sigma: float = 1.0) -> PixArtBatch:
        """Initial latents, 9-channel conditioning (`PageBatchPipeline.prepare_pages`) and micro-conditions."""
        latents, conditioning = self.prepare_pages(canvases, masks, seeds, cfg, generator_device, init_noise_sigma)
        return PixArtBatch(latents, conditioning, self.micro_conditions(canvases[0].size, conditioning.shape[0]))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, conditioning: torch.Tensor | None,
                added_cond_kwargs: dict[str, torch.Tensor], cfg: bool, guider_scale: float = 1.0) -> torch.Tensor:
        """Raw transformer output (learned sigma included) for ``x`` = [uncond pages, cond pages] when
        ``cfg``, else cond pages only; ``conditioning=None`` runs without the guider."""
        rows = x.shape[0]
        timestep = t.reshape(-1)[:1].to(self.device).expand(rows)
        embeds, mask = self.prompt.cfg_batch(rows // 2 if cfg else rows, cfg, self.device, self.dtype)
        controls: list[torch.Tensor] = []
        if conditioning is not None:
            controls = [c * guider_scale for c in
                        self.guider(torch.cat([x, conditioning], dim=1), timestep, added_cond_kwargs)]
        with inject_pixart_controls(self.transformer, controls):
            return self.transformer(x, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
                                    added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]

    @torch.no_grad()
    def step(self, scheduler: DPMSolverMultistepScheduler, t: torch.Tensor, batch: PixArtBatch,
             guidance_scale: float, guider_scale: float) -> torch.Tensor:
        """One guided denoising step on the whole batch; updates and returns ``batch.latents``."""
        cfg = batch.conditioning.shape[0] == 2 * batch.latents.shape[0]
        x = torch.cat([batch.latents] * 2) if cfg else batch.latents
        x = scheduler.scale_model_input(x, t)
        out = self.predict(x, t, batch.conditioning, batch.added_cond_kwargs, cfg, guider_scale)
        if cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        if out.shape[1] == 2 * self.latent_channels:  # learned sigma: dropped after guidance, as upstream
            out = out[:, : self.latent_channels]
        batch.latents = scheduler.step(out, t, batch.latents, return_dict=False)[0]
        return batch.latents


def check_guider_fits(guider: ColorGuiderPixArtModel, transformer: PixArtTransformer2DModel) -> None:
    """The guider must see the transformer's latents and produce its hidden width, for at most its depth."""
    g, t = guider.config, transformer.config
    problems = []
    if g.num_attention_heads * g.attention_head_dim != t.num_attention_heads * t.attention_head_dim:
        problems.append(f"hidden width {g.num_attention_heads * g.attention_head_dim} vs "
                        f"{t.num_attention_heads * t.attention_head_dim}")
    if g.in_channels != t.in_channels or g.patch_size != t.patch_size:
        problems.append(f"latent channels/patch {g.in_channels}/{g.patch_size} vs {t.in_channels}/{t.patch_size}")
    if g.cond_channels != SPLIT_CANVAS:
        problems.append(f"{g.cond_channels} conditioning channels (the PixArt pipeline builds {SPLIT_CANVAS})")
    if guider.num_controls > len(transformer.transformer_blocks):
        problems.append(f"{guider.num_controls} guider blocks for {len(transformer.transformer_blocks)} transformer blocks")
    if problems:
        raise WeightsError("the PixArt ColorGuider does not fit this base transformer: " + "; ".join(problems)
                           + f". Use the base it was trained with ({PIXART_HUB_REPO}).")


# ---------------------------------------------------------------------------------------------
# Loading a style (`sketch/` or `shading/` of the release on a PixArt-alpha base)


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
