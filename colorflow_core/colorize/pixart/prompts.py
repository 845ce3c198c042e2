"""The T5 embeddings of PixArt's prompts ("manga" and the empty negative prompt), as a cache file.

They are a constant of the base model: T5-XXL (~9 GB) is loaded only when no cache exists, once,
and the result is saved next to the style (`release.pixart.load_prompt_cache`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from ...errors import WeightsError
from ...weights import load_state_dict_file
from ..prompts import NEGATIVE_PROMPT, PROMPT

log = logging.getLogger(__name__)


PIXART_HUB_REPO = "PixArt-alpha/PixArt-XL-2-1024-MS"
PROMPT_CACHE_NAME = "prompt_embeds_manga.safetensors"
MAX_SEQUENCE_LENGTH = 120


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

        from ...files import write_bytes_atomic

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
