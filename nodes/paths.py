"""Resolving the folder paths users type into nodes (page folders, reference folders)."""
from __future__ import annotations

from pathlib import Path

from colorflow_core.errors import InputError
from colorflow_core.images import list_image_files

from . import comfy

PACK_ROOT = Path(__file__).resolve().parents[1]


def resolve_folder(text: str, what: str) -> Path:
    """An absolute folder, or one relative to ComfyUI's input folder, else to this pack's folder
    (so the shipped workflows find ``workflows/examples/...`` out of the box)."""
    text = (text or "").strip().strip('"')
    if not text:
        raise InputError(f"{what}: no folder given; type the path of a folder of images")
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [base / path for base in (*comfy.input_roots(), PACK_ROOT)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"{what}: folder {text!r} not found (looked at {tried})")


def folder_images(text: str, what: str, warn: bool = False) -> list[Path]:
    """The image files of a folder in natural order ("page2" before "page10"); InputError if none.

    ``warn``: log skipped broken symbolic links (by name) to ComfyUI's console; off for the checks
    ComfyUI runs before a node (VALIDATE_INPUTS, IS_CHANGED), so each run warns once.
    """
    folder = resolve_folder(text, what)
    try:
        return list_image_files(folder, warn=(lambda message: comfy.log.warning("%s: %s", what, message))
                                if warn else (lambda message: None))
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
