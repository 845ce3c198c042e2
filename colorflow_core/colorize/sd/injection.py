"""Adding the ColorGuider's residuals into an upstream SD UNet by hooks.

The original forked `UNet2DConditionModel.forward`; hooks on the upstream model reproduce it exactly:
residual 0 is added to the input of `down_blocks[0]` (so the first skip keeps the plain conv_in
output), residuals 1..11 to the outputs of every attention (or resnet, in blocks without attention)
and downsampler — those sums become the skips — the mid residual to `mid_block`'s output, and the
15 up residuals to every up-block layer and upsampler output. ControlNet / T2I residual arguments of
the UNet keep working alongside.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.utils.hooks import RemovableHandle

from ...errors import InputError, WeightsError
from .guider import GuiderResiduals


def _layer_points(blocks: nn.ModuleList, prefix: str, sampler: str) -> list[tuple[str, nn.Module]]:
    """Each block's per-layer output module (attention if any, else resnet), then its sampler."""
    points = []
    for i, block in enumerate(blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            if attentions is not None:
                points.append((f"{prefix}.{i}.attentions.{j}", attentions[j]))
            else:
                points.append((f"{prefix}.{i}.resnets.{j}", resnet))
        for k, module in enumerate(getattr(block, sampler) or ()):
            points.append((f"{prefix}.{i}.{sampler}.{k}", module))
    return points


def _checked(name: str, value: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    if value.shape != residual.shape:
        raise InputError(
            f"guider residual for {name} has shape {tuple(residual.shape)} but the UNet produces "
            f"{tuple(value.shape)} there: run the guider on the same latents (batch and size) as the UNet"
        )
    return value + residual.to(dtype=value.dtype)


def _add_to_output(name: str, residual: torch.Tensor) -> Callable[..., Any]:
    """Forward hook adding ``residual`` to a tensor, tuple or `Transformer2DModelOutput` result."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return _checked(name, output, residual)
        if isinstance(output, tuple):  # Transformer2DModel with return_dict=False: (sample,)
            return (_checked(name, output[0], residual),) + tuple(output[1:])
        if dataclasses.is_dataclass(output) and hasattr(output, "sample"):  # Transformer2DModelOutput
            return dataclasses.replace(output, sample=_checked(name, output.sample, residual))
        raise TypeError(f"cannot add a guider residual to the {type(output).__name__} returned by {name}")

    return hook


def _add_to_input(name: str, residual: torch.Tensor) -> Callable[..., Any]:
    """Pre-hook adding ``residual`` to a block's `hidden_states` (passed by keyword or first)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs, hidden_states=_checked(name, kwargs["hidden_states"], residual))
        else:
            args = (_checked(name, args[0], residual),) + tuple(args[1:])
        return args, kwargs

    return hook


@contextmanager
def inject_guider_residuals(
    unet: UNet2DConditionModel, residuals: GuiderResiduals | None
) -> Iterator[UNet2DConditionModel]:
    """Within the block, every forward of ``unet`` adds ``residuals`` (None: nothing is added)."""
    handles: list[RemovableHandle] = []
    try:
        if residuals is not None:
            down_points = _layer_points(unet.down_blocks, "down_blocks", "downsamplers")
            up_points = _layer_points(unet.up_blocks, "up_blocks", "upsamplers")
            if len(residuals.down) != len(down_points) + 1 or len(residuals.up) != len(up_points):
                raise WeightsError(
                    f"the guider gives {len(residuals.down)} down / {len(residuals.up)} up residuals but this UNet "
                    f"has {len(down_points) + 1} / {len(up_points)} injection points: guider and base UNet do not fit"
                )
            handles.append(unet.down_blocks[0].register_forward_pre_hook(
                _add_to_input("down_blocks.0 input", residuals.down[0]), with_kwargs=True))
            for (name, module), residual in zip(down_points, residuals.down[1:]):
                handles.append(module.register_forward_hook(_add_to_output(name, residual)))
            handles.append(unet.mid_block.register_forward_hook(_add_to_output("mid_block", residuals.mid)))
            for (name, module), residual in zip(up_points, residuals.up):
                handles.append(module.register_forward_hook(_add_to_output(name, residual)))
        yield unet
    finally:
        for handle in handles:
            handle.remove()
