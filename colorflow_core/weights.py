"""Reading weight files safely and loading them strictly, with errors that name the file."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .errors import WeightsError

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors or a pickle (``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif path.suffix in PICKLE_SUFFIXES:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unknown weight format {path.suffix!r} (expected .safetensors, .bin or .pth)")
    except WeightsError:
        raise
    except Exception as exc:  # corrupt, truncated, or a pickle holding more than tensors
        raise WeightsError(_unreadable(path, exc)) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def _unreadable(path: Path, exc: Exception) -> str:
    """Why a weight file could not be read, without torch's advice to turn the pickle protection off."""
    text = str(exc)
    if "Weights only load failed" in text:  # torch's safe unpickler refused the file
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found is not None or "global" in text.lower():
            what = f" (it refers to {found.group(1)})" if found else ""
            return (f"{path} contains Python code{what} besides the weights, so it was not loaded: unpickling it "
                    f"could run that code. Weight files hold only tensors; get this file from the official "
                    f"release again (or a .safetensors version of it).")
        detail = "the pickle data is damaged"
    elif "weights_only" in text:  # never pass on advice to disable the protection
        detail = type(exc).__name__
    else:
        detail = f"{type(exc).__name__}: {text}"
    return (f"{path} could not be read ({detail}). The file is truncated or corrupt: delete it and download it "
            f"again.")


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    ignore: Iterable[str] = (),
) -> None:
    """Load every tensor, or raise one ``WeightsError`` listing what is missing, extra or misshapen."""
    ignored = set(ignore)
    state = {k: v for k, v in state_dict.items() if k not in ignored}
    missing, unexpected, misshapen = compare_state_dicts(module.state_dict(), state)
    if missing or unexpected or misshapen:
        raise WeightsError(describe_mismatch(source, missing, unexpected, misshapen))
    module.load_state_dict(state, strict=True)


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Names of ``given`` against the ``expected`` layout: (missing, unexpected, wrong shape)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshapen = sorted(
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(given) & set(expected)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    return missing, unexpected, misshapen


def describe_mismatch(
    source: str | os.PathLike, missing: list[str], unexpected: list[str], misshapen: list[str] = ()
) -> str:
    """One readable paragraph about a state dict that does not fit its network."""

    def head(names: list[str]) -> str:
        shown = ", ".join(names[:8])
        return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    parts = [f"{source} does not match the network it should fill:"]
    if missing:
        parts.append(f"missing {head(missing)}")
    if unexpected:
        parts.append(f"unexpected {head(unexpected)}")
    if misshapen:
        parts.append(f"wrong shape {head(list(misshapen))}")
    parts.append("Is it the right file (and complete)? Download it again from the official release.")
    return " ".join(parts)
