"""Load Image Sequence: a folder of pages as images, in reading order, with their file names."""
from __future__ import annotations

import hashlib

from colorflow_core.errors import InputError
from colorflow_core.images import load_image, pil_to_tensor

from .paths import folder_images


class LoadImageSequence:
    """Core LoadImage reads one file; a chapter is a folder. Pages keep their own sizes: the output
    is a list of single-image batches (ComfyUI runs per-image nodes once per page), and the
    ColorFlow nodes take the whole list, fitting each page to the chosen page size themselves."""

    DESCRIPTION = (
        "Loads every image of a folder in natural order (page2 before page10), skipping non-images and "
        "hidden files. Pages may have different sizes: they come out as a list of images (each keeps its "
        "size; grayscale pages become 3 equal channels like core Load Image) plus their file names. "
        "Relative folders are looked up in ComfyUI's input folder, then in the ColorFlow pack folder."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "names")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_TOOLTIPS = (
        "The pages in order, one image per page at its own size (a list).",
        "The file name (without extension) of each page, same order.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {
                    "default": "workflows/examples/manga/pages",
                    "tooltip": "Folder of page images: absolute, or relative to ComfyUI's input folder "
                               "(then to the ColorFlow pack folder).",
                }),
                "start": ("INT", {
                    "default": 0, "min": 0, "max": 100000,
                    "tooltip": "Skip this many images at the start (0 = begin with the first).",
                }),
                "limit": ("INT", {
                    "default": 0, "min": 0, "max": 100000,
                    "tooltip": "Load at most this many images (0 = all the rest).",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        """Report a missing or image-less folder before anything runs."""
        if folder is None:  # linked from another node: checked when it runs
            return True
        try:
            folder_images(folder, "Load Image Sequence")
        except InputError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, folder, start=0, limit=0):
        """Re-run when a file in the folder is added, removed or rewritten."""
        digest = hashlib.sha256(f"{start}|{limit}".encode())
        try:
            for path in folder_images(folder, "Load Image Sequence"):
                stat = path.stat()
                digest.update(f"|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except InputError as exc:
            digest.update(str(exc).encode())
        return digest.hexdigest()

    def load(self, folder: str, start: int = 0, limit: int = 0):
        files = folder_images(folder, "Load Image Sequence", warn=True)
        chosen = files[start:start + limit] if limit else files[start:]
        if not chosen:
            raise InputError(f"Load Image Sequence: start={start} skips all {len(files)} images of {folder!r}")
        try:  # a multi-frame file (multi-page TIFF, animated GIF) is refused, never cut to its first frame
            images = [pil_to_tensor(load_image(path)).unsqueeze(0) for path in chosen]
        except InputError as exc:
            raise InputError(f"Load Image Sequence: {exc}") from exc
        return (images, [path.stem for path in chosen])
