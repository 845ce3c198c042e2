"""Random-weight Sketch / Sketch_Shading releases and PixArt-alpha bases in the official layout.

Every tensor is random and non-zero (the guider's adapters and the LoRA B matrices too), so tests
exercise every part; "tiny" matches the parity fixture's sizes, "full" the real PixArt-XL-2 sizes,
"reduced" keeps PixArt-XL-2's 28 blocks and T5 width with a quarter of the width. The VAE is the SD
one of the same scale (PixArt-alpha uses the SD VAE), so one GSRP fusion net fits every style.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

from ..colorize.lora import PIXART_LORA_TARGETS, add_lora_adapter
from ..colorize.pixart.guider import ALIAS, ColorGuiderPixArtModel
from ..colorize.pixart.prompts import MAX_SEQUENCE_LENGTH, PROMPT_CACHE_NAME, PromptEmbeddings
from ..errors import InputError
from ..release.paths import PIXART_STYLES
from ..release.pixart import LORA_FILE
from .sd import SCALES, model_config

DIFFUSERS_VERSION = "0.31.0.dev0"

_TRANSFORMER: dict[str, dict[str, Any]] = {
    "tiny": dict(num_attention_heads=3, attention_head_dim=8, num_layers=4, sample_size=32,
                 cross_attention_dim=24, caption_channels=24),
    "reduced": dict(num_attention_heads=16, attention_head_dim=18, num_layers=28, sample_size=128,
                    cross_attention_dim=288, caption_channels=4096),
    "full": dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=128,
                 cross_attention_dim=1152, caption_channels=4096),
}
_TRANSFORMER_COMMON = dict(in_channels=4, out_channels=8, patch_size=2, activation_fn="gelu-approximate",
                           attention_bias=True, attention_type="default", dropout=0.0, norm_elementwise_affine=False,
                           norm_eps=1e-6, norm_num_groups=32, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                           upcast_attention=False, interpolation_scale=None, use_additional_conditions=True)
# DPM-Solver++ as PixArt-XL-2-1024-MS ships it.
_SCHEDULER = dict(algorithm_type="dpmsolver++", beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  num_train_timesteps=1000, prediction_type="epsilon", solver_order=2, solver_type="midpoint",
                  lower_order_final=True, timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero")
_PROMPT_LENGTH = {"tiny": 12, "reduced": MAX_SEQUENCE_LENGTH, "full": MAX_SEQUENCE_LENGTH}
_TOKENS_KEPT = {"prompt": 2, "negative_prompt": 1}  # "manga</s>" and "</s>"


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise InputError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


def transformer_config(scale: str) -> dict[str, Any]:
    _check_scale(scale)
    return {**_TRANSFORMER_COMMON, **_TRANSFORMER[scale]}


def guider_config(scale: str) -> dict[str, Any]:
    """The transformer's config with 9 conditioning channels, as the release's guider config."""
    return {**transformer_config(scale), "cond_channels": 9}


def _random_like(shapes: dict[str, torch.Size], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Non-zero random tensors: weights ~ N(0, 1/fan_in), vectors ~ N(0, 0.02²)."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = max(1, shape[1:].numel())
            out[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
        else:
            out[name] = torch.randn(shape, generator=g) * 0.02
    return out


def _meta_shapes(module: torch.nn.Module, keep: str = "") -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items() if keep in k}


def _write_json(path: Path, data: dict[str, Any], class_name: str) -> None:
    path.write_text(json.dumps({"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **data}, indent=2))


def write_pixart_style(release_root: str | os.PathLike, style: str = "sketch", scale: str = "tiny", seed: int = 0,
                       lora_rank: int = 4, *, prompt_cache: bool = True) -> Path:
    """Write `<release_root>/<style>/`: guider config + `.bin` weights (with the `after_proj` alias),
    `transformer_lora.bin` (rank ``lora_rank``, the official targets) and, if ``prompt_cache``,
    `prompt_embeds_manga.safetensors`. Returns the style folder."""
    if style not in PIXART_STYLES:
        raise InputError(f"style must be one of {', '.join(PIXART_STYLES)}, got {style!r}")
    _check_scale(scale)
    folder = Path(release_root) / style
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    config = guider_config(scale)
    with torch.device("meta"):
        guider = ColorGuiderPixArtModel(**config)
        transformer = PixArtTransformer2DModel(**transformer_config(scale))
    guider_state = _random_like({k: s for k, s in _meta_shapes(guider).items() if not k.startswith(ALIAS)}, g)
    last = f"adapter_linear.{guider.num_controls - 1}"
    for suffix in ("weight", "bias"):  # the original's alias: same values as the last adapter
        guider_state[f"{ALIAS}.{suffix}"] = guider_state[f"{last}.{suffix}"].clone()
    _write_json(folder / "config.json", config, type(guider).__name__)
    torch.save(guider_state, folder / "diffusion_pytorch_model.bin")

    add_lora_adapter(transformer, rank=lora_rank, alpha=lora_rank, target_modules=PIXART_LORA_TARGETS)
    torch.save(_random_like(_meta_shapes(transformer, ".lora_"), g), folder / LORA_FILE)

    if prompt_cache:
        random_prompt_cache(scale, g).save(folder / PROMPT_CACHE_NAME)
    return folder


def random_prompt_cache(scale: str, g: torch.Generator) -> PromptEmbeddings:
    """Embeddings of the scale's T5 width and sequence length, masks keeping the first tokens."""
    length, width = _PROMPT_LENGTH[scale], transformer_config(scale)["caption_channels"]
    parts = {}
    for name, kept in _TOKENS_KEPT.items():
        mask = torch.zeros(1, length, dtype=torch.int64)
        mask[:, :kept] = 1
        parts[f"{name}_embeds"] = torch.randn(1, length, width, generator=g) * 0.1
        parts[f"{name}_attention_mask"] = mask
    return PromptEmbeddings(**parts)


def write_pixart_base(folder: str | os.PathLike, scale: str = "tiny", seed: int = 0, *,
                      text_encoder: bool = False) -> Path:
    """Write a PixArt-alpha diffusers folder: `transformer/`, `vae/`, `scheduler/` and, for the tiny
    scale only (a random T5-XXL would be ~19 GB), a tiny T5 `text_encoder/` + word-level `tokenizer/`."""
    _check_scale(scale)
    if text_encoder and scale != "tiny":
        raise InputError("a synthetic T5 text encoder is only written at the tiny scale")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        PixArtTransformer2DModel(**transformer_config(scale)).save_pretrained(folder / "transformer")
        AutoencoderKL.from_config(model_config("vae", scale)).save_pretrained(folder / "vae")
        DPMSolverMultistepScheduler(**_SCHEDULER).save_pretrained(folder / "scheduler")
        if text_encoder:
            _write_tiny_t5(folder, transformer_config(scale)["caption_channels"])
    return folder


def _write_tiny_t5(folder: Path, width: int) -> None:
    """A small T5 encoder (random) and a word-level tokenizer appending `</s>` as T5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "manga": 3, "page": 4, "colour": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=MAX_SEQUENCE_LENGTH).save_pretrained(folder / "tokenizer")
    config = T5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=3,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(folder / "text_encoder")
