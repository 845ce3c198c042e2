"""Reference Pool: the colour references of a chapter, embedded once per page size and model."""
from __future__ import annotations

import weakref

from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.images import check_page, load_image, normalize_mode
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.sizes import PageSize

from . import comfy
from .paths import folder_images
from .tensors import images_from_tensors
from .types import POOL_TYPE


class ChapterReferences:
    """The references plus their embedded pools. ComfyUI caches this node output while its inputs
    stay the same, so the embeddings (computed by the first Retrieve References that needs them,
    per page size and model) are reused by every later run of the graph; with a cache folder they
    also survive a server restart."""

    def __init__(self, references: list[Image.Image], names: list[str | None] | None = None) -> None:
        if not references:
            raise InputError("Reference Pool: the reference pool is empty; connect colour reference images or "
                             "give a folder of them")
        self.references = references
        # names[i]: reference i's file name (from a folder), None for a connected image
        self.names: list[str | None] = list(names) if names is not None else [None] * len(references)
        if len(self.names) != len(references):
            raise InputError(f"Reference Pool: {len(self.names)} names for {len(references)} references")
        self._pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __len__(self) -> int:
        return len(self.references)

    def embedded(self, model: comfy.ManagedModel, size: PageSize, progress=None) -> ReferencePool:
        """The pool for ``size`` embedded with ``model``'s image encoder (built on first use)."""
        by_size = self._pools.setdefault(model, {})
        if size not in by_size:
            engine = model.use()
            by_size[size] = engine.reference_pool(self.references, size, cache_dir=comfy.cache_dir(),
                                                  progress=progress)
        return by_size[size]

    def __repr__(self) -> str:
        return f"ColorFlow reference pool ({len(self.references)} references)"


class CollectReferences:
    """Collects colour references from an IMAGE input (one batch or a list of images of any sizes)
    and/or a folder."""

    DESCRIPTION = (
        "Collects the colour references of a sequence (character sheets, coloured pages): connected images "
        "and/or every image of a folder. Their patch embeddings are computed once, by the first Retrieve "
        "References run for a page size, and reused by later runs (also cached on disk in ComfyUI's user "
        "folder)."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "build"
    INPUT_IS_LIST = True
    RETURN_TYPES = (POOL_TYPE,)
    RETURN_NAMES = ("pool",)
    OUTPUT_TOOLTIPS = ("The reference pool, for Retrieve References.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {},
            "optional": {
                "references": ("IMAGE", {
                    "tooltip": "Colour reference images: a batch, or a list of different sizes (e.g. from "
                               "Load Image Sequence).",
                }),
                "folder": ("STRING", {
                    "default": "",
                    "tooltip": "Optional folder of colour references (absolute, or relative to ComfyUI's input "
                               "folder, then the ColorFlow pack folder); added after the connected images.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        for text in folder or []:
            if text and text.strip():
                try:
                    folder_images(text, "Reference Pool")
                except InputError as exc:
                    return str(exc)
        return True

    def build(self, references=None, folder=None):
        images: list[Image.Image] = []
        names: list[str | None] = []
        if references:
            for i, image in enumerate(images_from_tensors(references, "Reference Pool: references")):
                check_page(image, f"Reference Pool: reference {i + 1}")
                images.append(image)
                names.append(None)
        for text in folder or []:
            if text and text.strip():
                for path in folder_images(text, "Reference Pool", warn=True):
                    try:
                        image = load_image(path)
                        check_page(normalize_mode(image), f"reference {path}")
                    except InputError as exc:
                        raise InputError(f"Reference Pool: {exc}") from exc
                    images.append(image)
                    names.append(path.name)
        return (ChapterReferences(images, names),)
