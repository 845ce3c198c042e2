"""Release LoRA adapters (alpha = rank): injected with peft, loaded strictly, optionally merged.

The original adds the adapter and then loads the `.bin` with ``strict=False``, so a file whose names
do not match silently contributes nothing. Here every tensor of the file must land on a parameter of
the same shape and every LoRA parameter must be filled, or the adapter is removed again and one
``WeightsError`` names what did not fit.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model  # top-level since peft 0.13; peft.functional is newer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import WeightsError
from ..weights import compare_state_dicts, describe_mismatch

ADAPTER_NAME = "default"

SD_UNET_LORA_TARGETS: list[str] = ["to_k", "to_q", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
PIXART_LORA_TARGETS: list[str] = [
    "to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out",
    "ff.net.0.proj", "ff.net.2", "proj", "linear", "linear_1", "linear_2",
]

# Wrapper prefixes seen in saved LoRA files (peft PeftModel, diffusers pipelines); stripped repeatedly.
_PREFIXES = ("base_model.model.", "unet.", "transformer.")
# peft's saved form drops the adapter name: `...lora_A.weight` -> `...lora_A.default.weight`.
_NO_ADAPTER_NAME = re.compile(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.(weight|bias)$")
_LORA_MARK = ".lora_"


def normalize_lora_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the key forms a LoRA file may use onto the names peft gives adapter "default"."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    stripped = True
        name = _NO_ADAPTER_NAME.sub(rf".\1.{ADAPTER_NAME}.\2", name)
        if name in out:
            raise WeightsError(f"LoRA file has two tensors for {name!r} (one of them is {key!r})")
        out[name] = value
    return out


def infer_lora_rank(state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike | None = None) -> int:
    """The rank shared by every `lora_A` matrix of the file (its first dimension); ``source`` names
    the file in errors."""
    what = f"the LoRA file {source}" if source is not None else "the LoRA file"
    ranks = {int(v.shape[0]) for k, v in normalize_lora_keys(state_dict).items() if ".lora_A." in k}
    if not ranks:
        keys = sorted(state_dict)
        shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
        raise WeightsError(f"{what} holds no LoRA tensors (no '...lora_A...' keys; it has {shown or 'no tensors'}): "
                           f"is it a LoRA file? Download the official file again.")
    if len(ranks) > 1:
        raise WeightsError(f"{what} mixes ranks {sorted(ranks)}; expected one rank")
    return ranks.pop()


def _lora_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def add_lora_adapter(model: nn.Module, *, rank: int, alpha: float, target_modules: Iterable[str]) -> None:
    """Wrap the target modules with a gaussian-initialised LoRA adapter "default" (the release's config)."""
    if _lora_layers(model):
        raise WeightsError(f"{type(model).__name__} already carries a LoRA adapter; load a fresh model")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: none of the target modules exists in this model
        remove_lora(model)
        raise WeightsError(f"cannot add the LoRA adapter to {type(model).__name__}: {exc}") from exc


def _unload(model: nn.Module, merge: bool) -> None:
    """Put every wrapped module's base layer back (after folding W += B·A·scale into it if ``merge``)."""
    for name, layer in _lora_layers(model):
        if merge:
            layer.merge(adapter_names=[ADAPTER_NAME])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


def remove_lora(model: nn.Module) -> None:
    """Drop the adapter entirely, leaving the model as it was before `add_lora_adapter`."""
    _unload(model, merge=False)


def merge_lora(model: nn.Module) -> None:
    """Fold the adapter into the base weights and unwrap the modules: same output, no adapter overhead."""
    if not _lora_layers(model):
        raise WeightsError(f"{type(model).__name__} carries no LoRA adapter to merge")
    _unload(model, merge=True)


def inject_lora(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    rank: int,
    alpha: float,
    target_modules: Iterable[str],
    source: str | os.PathLike,
) -> int:
    """Add the adapter and fill it from ``state_dict``; returns the number of tensors loaded.

    Full state dicts are accepted too: their `…base_layer.*` (and other base) tensors are loaded into
    the model as long as each name and shape exists there.
    """
    tensors = normalize_lora_keys(state_dict)
    add_lora_adapter(model, rank=rank, alpha=alpha, target_modules=target_modules)
    try:
        expected = model.state_dict()
        lora_names = {k for k in expected if _LORA_MARK in k}
        missing, unexpected, misshapen = compare_state_dicts(expected, tensors)
        missing = [k for k in missing if k in lora_names]  # base weights may come from the UNet itself
        if missing or unexpected or misshapen:
            raise WeightsError(
                f"LoRA (rank {rank}, {len(lora_names)} adapter tensors expected, "
                f"{len(set(tensors) & lora_names)} matched): " + describe_mismatch(source, missing, unexpected, misshapen)
            )
        model.load_state_dict(tensors, strict=False)
    except BaseException:
        remove_lora(model)
        raise
    return len(tensors)
