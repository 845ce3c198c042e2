"""Adding the PixArt ColorGuider's block outputs to an upstream `PixArtTransformer2DModel` by
forward hooks, instead of the original's forked transformer forward."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from ...errors import InputError

log = logging.getLogger(__name__)


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
