"""The ComfyUI adapter of the self-contained nodes: they reach ComfyUI (``comfy.*``,
``folder_paths``) only through this module. (`native.py`, which patches ComfyUI's own model
objects, imports ``comfy`` itself.)

Everything ComfyUI-specific the self-contained nodes need goes through here: the model folders, the progress bar,
the cancel button and the GPU memory manager. Outside ComfyUI (the CI tests, a plain Python
session) each has a plain fallback: folders from ``$COLORFLOW_MODELS``, progress logged at debug
level, no interruption, and the engine's own device handling.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

try:  # inside a running ComfyUI
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:  # tests, scripts: no ComfyUI on the path
    model_management = model_patcher = comfy_utils = folder_paths = None

log = logging.getLogger("colorflow")

IN_COMFYUI = folder_paths is not None
MODEL_FOLDER = "colorflow"  # models/colorflow, extendable in extra_model_paths.yaml


def register_model_folder() -> None:
    """Register ``models/colorflow`` with ComfyUI (kept if extra_model_paths.yaml already added paths)."""
    if IN_COMFYUI:
        folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_roots() -> list[Path]:
    """Folders searched for ColorFlow releases: ComfyUI's ``colorflow`` paths, else ``$COLORFLOW_MODELS``."""
    if IN_COMFYUI:
        return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
    env = os.environ.get("COLORFLOW_MODELS")
    return [Path(env)] if env else []


def base_model_roots() -> dict[str, list[Path]]:
    """Where a user keeps SD1.5 bases: ComfyUI's ``checkpoints`` (single files) and ``diffusers`` folders."""
    if not IN_COMFYUI:
        return {"checkpoints": [], "diffusers": []}
    return {kind: [Path(p) for p in folder_paths.get_folder_paths(kind)] for kind in ("checkpoints", "diffusers")}


def input_roots() -> list[Path]:
    """Where relative folder paths typed into a node are looked up first: ComfyUI's input folder."""
    return [Path(folder_paths.get_input_directory())] if IN_COMFYUI else []


def cache_dir() -> str | None:
    """Where reference-pool embeddings are kept across server restarts (None: in memory only)."""
    if not IN_COMFYUI:
        return None
    return os.path.join(folder_paths.get_user_directory(), "colorflow", "pool_cache")


def progress_callback(total: int) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback driving the node's progress bar in the frontend."""
    if IN_COMFYUI:
        bar = comfy_utils.ProgressBar(total)
        return lambda done, count: bar.update_absolute(done, count)
    return lambda done, count: log.debug("progress %d/%d", done, count)


def check_interrupt() -> None:
    """Raise ComfyUI's interruption exception when the user pressed cancel (no-op outside ComfyUI)."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()


def load_device() -> torch.device | None:
    """The device ComfyUI computes on (honours --cpu); None outside ComfyUI: the engine decides."""
    return model_management.get_torch_device() if IN_COMFYUI else None


def offload_device() -> torch.device:
    """Where idle networks wait: ComfyUI's offload device (the CPU unless --highvram), else the CPU."""
    return model_management.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def make_room(modules: Iterable[torch.nn.Module], device: torch.device) -> None:
    """Before moving ``modules`` to ``device``: ComfyUI unloads its own models until they fit."""
    if IN_COMFYUI:
        needed = sum(model_management.module_size(m) for m in modules) + model_management.minimum_inference_memory()
        model_management.free_memory(needed, device)


def empty_cache() -> None:
    """Give cached GPU memory back after a node's work (ComfyUI's way; nothing outside it)."""
    if IN_COMFYUI:
        model_management.soft_empty_cache()


class ColorFlowNetworks(torch.nn.Module):
    """A container of the engine's networks, so ComfyUI's ModelPatcher sees (and moves) all of them."""

    def __init__(self, networks: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleDict(networks)


class ManagedModel:
    """A loaded ColorFlow engine plus, inside ComfyUI, a ModelPatcher that lets ComfyUI's memory
    manager offload its networks to the CPU when another node needs the GPU.

    ``use()`` is called by every node before it runs the engine: it asks ComfyUI to (re)load the
    networks onto the compute device (fully: these are plain torch modules, not ComfyUI's
    cast-on-the-fly layers, so a partial load would split a network across devices) and points
    the engine at that device. ``done()`` returns cached GPU memory afterwards.
    """

    def __init__(self, engine, description: str) -> None:
        self.engine = engine
        self.description = description
        self.patcher = None
        if IN_COMFYUI:
            self.patcher = model_patcher.ModelPatcher(
                ColorFlowNetworks(engine.networks()),
                load_device=model_management.get_torch_device(),
                offload_device=model_management.unet_offload_device(),
            )

    def use(self):
        """The engine, on the compute device ComfyUI chose, ready to run."""
        if self.patcher is not None:
            model_management.load_models_gpu([self.patcher], force_full_load=True)
            self.engine.to(self.patcher.load_device)
        return self.engine

    def done(self) -> None:
        """After a node's work: let the engine drop its caches and give cached GPU memory back."""
        self.engine.free()
        empty_cache()

    def __repr__(self) -> str:
        return f"ColorFlow model ({self.description})"
