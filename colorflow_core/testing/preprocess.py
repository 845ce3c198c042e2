"""Random-weight preprocessing networks in the official release paths (parity README recipes).

Entry k of a manifest is drawn from its own `torch.Generator().manual_seed(seed_base + k)`, so a
file is reproducible entry by entry and matches the parity fixtures' rebuilt weights exactly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import InputError
from ..preprocess.lines import LINE_EXTRACTOR_FILE, ResSkip
from ..preprocess.screentone import (
    G_RGB2INTSCR_FILE,
    SCREENVAE_DEC_FILE,
    SCREENVAE_ENC_FILE,
    ScreenCodeGenerator,
    ScreenDecoder,
)

Rule = Callable[[str, tuple[int, ...], torch.Generator], torch.Tensor]


def _common(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor | None:
    """BatchNorm statistics, drawn the same way by both recipes."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if name.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if name.endswith("running_var"):
        return 1 + torch.rand(shape, generator=g)
    return None


def line_extractor_rule(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """The `LE/erika_manifest.json` recipe (large last conv and bias 128 keep the output in 0..255)."""
    tensor = _common(name, shape, g)
    if tensor is not None:
        return tensor
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) * (30.0 if name == "conv15.model.2.weight" else 0.03)
    if name == "conv15.model.2.bias":
        return torch.full(shape, 128.0)
    if name.endswith(".model.0.weight"):
        return 1 + torch.randn(shape, generator=g) * 0.1
    return torch.randn(shape, generator=g) * 0.02


def screenstyle_rule(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """The ScreenStyle recipe of the parity README."""
    tensor = _common(name, shape, g)
    if tensor is not None:
        return tensor
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) * 0.05
    if name.endswith("weight") or name.endswith("gamma"):
        return 1 + torch.randn(shape, generator=g) * 0.1
    return torch.randn(shape, generator=g) * 0.02


def random_state_dict(entries: list[tuple[str, tuple[int, ...]]], seed_base: int, rule: Rule) -> dict[str, torch.Tensor]:
    """Entry k from `Generator().manual_seed(seed_base + k)`, in manifest order."""
    return {
        name: rule(name, shape, torch.Generator().manual_seed(seed_base + k))
        for k, (name, shape) in enumerate(entries)
    }


def read_manifest(path: str | os.PathLike, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) entries of a manifest; with ``prefix`` only those names, prefix removed."""
    entries = json.loads(Path(path).read_text())["entries"]
    return [
        (entry[0][len(prefix):], tuple(entry[1]))
        for entry in entries
        if entry[0].startswith(prefix)
    ]


def network_entries(network_class: type[torch.nn.Module]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) entries of one of our networks, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        network = network_class()
    return [(name, tuple(t.shape)) for name, t in network.state_dict().items()]


def _save(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    return path


def write_line_extractor(
    release_root: str | os.PathLike, manifest_path: str | os.PathLike | None, seed_base: int
) -> Path:
    """Write `LE/erika.pth` (about 172 MB at the fixed network size) under ``release_root``.

    ``manifest_path`` None: the entries of our own `ResSkip` (for synthetic releases without the
    parity manifests; the manifest test proves both layouts equal).
    """
    entries = network_entries(ResSkip) if manifest_path is None else read_manifest(manifest_path)
    state = random_state_dict(entries, seed_base, line_extractor_rule)
    return _save(state, Path(release_root) / LINE_EXTRACTOR_FILE)


# release file -> (manifest file name, prefix of its entries in that manifest, our network or None)
_SCREENSTYLE_SOURCES = {
    G_RGB2INTSCR_FILE: ("screenstyle_G_RGB2INTSCR.json", "", ScreenCodeGenerator),
    SCREENVAE_ENC_FILE: ("screenstyle_ScreenVAE.json", "enc.", None),
    SCREENVAE_DEC_FILE: ("screenstyle_ScreenVAE.json", "dec.", ScreenDecoder),
}


def write_screenstyle(
    release_root: str | os.PathLike, recipe: Mapping[str, int], manifests_dir: str | os.PathLike | None
) -> list[Path]:
    """Write each ScreenStyle file of ``recipe`` (release path -> seed_base), e.g. a case.json's.

    ``manifests_dir`` None: the entries of our own networks (the encoder, which we never run,
    then needs the manifests).
    """
    unknown = sorted(set(recipe) - set(_SCREENSTYLE_SOURCES))
    if unknown:
        raise InputError(f"no ScreenStyle manifest for {unknown}; known files: {sorted(_SCREENSTYLE_SOURCES)}")
    written = []
    for rel_path, seed_base in recipe.items():
        manifest, prefix, network_class = _SCREENSTYLE_SOURCES[rel_path]
        if manifests_dir is not None:
            entries = read_manifest(Path(manifests_dir) / manifest, prefix)
        elif network_class is not None:
            entries = network_entries(network_class)
        else:
            raise InputError(f"{rel_path} can only be written from the parity manifests (manifests_dir)")
        written.append(_save(random_state_dict(entries, seed_base, screenstyle_rule), Path(release_root) / rel_path))
    return written


def fill_random(network: torch.nn.Module, seed_base: int, rule: Rule = screenstyle_rule) -> torch.nn.Module:
    """Load random weights drawn by ``rule`` into ``network`` (any width, e.g. tiny test networks)."""
    entries = [(name, tuple(t.shape)) for name, t in network.state_dict().items()]
    network.load_state_dict(random_state_dict(entries, seed_base, rule))
    return network
