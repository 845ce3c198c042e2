"""Extract Line Art and Screentone Preprocess: ColorFlow's style preprocessing as standalone nodes.

They show (and let a user reuse or edit) the condition the diffusion model sees, without loading a
whole style. Pages keep their own size (the original first fits them to 1.5W x 1.5H). The release
networks are loaded once per release onto ComfyUI's offload device, moved to the compute device
only while a node runs, and moved back afterwards: they are small next to the diffusion models, so
they need not stay in VRAM between runs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from PIL import Image

from colorflow_core.errors import WeightsError, check_number
from colorflow_core.images import check_page
from colorflow_core.preprocess.holder import NetworkHolder
from colorflow_core.preprocess.shading import DARK_BELOW, FLAT_GRAY, LINE_ABOVE, MID_BELOW
from colorflow_core.runtime.seeding import check_generator_device

from . import comfy
from .colorize import WIDGET_MAX_SEED, generator_device_input
from .model import list_releases, resolve_release
from .tensors import images_from_tensors, tensor_from_images
from .widgets import widget_errors

if TYPE_CHECKING:  # release.py imports diffusers: only when a node runs, not at ComfyUI start-up
    from colorflow_core.release.paths import ReleasePaths

# (kind, release folder) -> (the files' (path, mtime, size) when loaded, the loaded preprocessor)
_CACHE: dict[tuple[str, str], tuple[tuple, NetworkHolder]] = {}
# kind -> its release.COMPONENTS name
_KINDS = {"lines": "line_extractor", "screentone": "screenstyle"}


def _require(release: str, kind: str) -> ReleasePaths:
    """The release's paths once its ``kind`` files are there, else one WeightsError naming each missing
    file and where it goes (before any work)."""
    from colorflow_core.release.paths import ReleasePaths

    paths = ReleasePaths(resolve_release(release))
    paths.require([_KINDS[kind]])
    return paths


def _compute_device() -> torch.device:
    from colorflow_core.runtime.performance import resolve_device

    return resolve_device(comfy.load_device())


def _preprocessor(kind: str, paths: ReleasePaths) -> NetworkHolder:
    """The cached preprocessor of ``kind`` for this release, reloaded when one of its files changed."""
    from colorflow_core.preprocess.lines import LineExtractor
    from colorflow_core.preprocess.screentone import ScreenStyleConverter

    files = [paths.line_extractor] if kind == "lines" else [paths.screenstyle_generator, paths.screenvae_decoder]
    stamp = tuple((str(f), os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
    key = (kind, str(Path(paths.root).resolve()))
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    device = comfy.offload_device()  # fp32 as in the engine: the line net works on raw 0..255 values
    loaded = LineExtractor.from_file(files[0], device) if kind == "lines" else \
        ScreenStyleConverter.from_release(paths.root, device)
    _CACHE[key] = (stamp, loaded)
    return loaded


@contextmanager
def _on_compute_device(holder: NetworkHolder) -> Iterator[NetworkHolder]:
    """The preprocessor on the compute device for the duration of one node run, then back offloaded."""
    device = _compute_device()
    comfy.make_room(holder.networks().values(), device)
    try:
        yield holder.to(device)
    finally:
        holder.to(comfy.offload_device())
        comfy.empty_cache()


def _pages(images, node: str) -> list[Image.Image]:
    pages = images_from_tensors(images, f"{node}: images")
    for i, page in enumerate(pages):
        check_page(page, f"{node}: image {i + 1}")
    return pages


def _run(kind: str, release: str, pages: list[Image.Image], work: Callable[[NetworkHolder, int, Image.Image], Image.Image]):
    """``work(preprocessor, i, page)`` for every page with progress and cancel checks → IMAGE batch."""
    paths = _require(release, kind)
    progress = comfy.progress_callback(len(pages))
    results = []
    with _on_compute_device(_preprocessor(kind, paths)) as preprocessor:
        for i, page in enumerate(pages):
            comfy.check_interrupt()
            results.append(work(preprocessor, i, page))
            progress(i + 1, len(pages))
    return (tensor_from_images(results),)


def _validate_release(release: str | None, kind: str) -> bool | str:
    """Missing release files get the actionable message before anything runs."""
    if release is None:  # connected from another node: checked when the node runs
        return True
    try:
        _require(release, kind)
    except WeightsError as exc:
        return str(exc)
    return True


def _release_input(what: str) -> tuple:
    return (list_releases(), {
        "tooltip": f"The ColorFlow release folder inside models/colorflow; its {what} is used.",
    })


def _level(name: str, value: float) -> float:
    check_number(f"Extract Line Art: {name} (a gray level)", value, 0, 255)
    return value


class ExtractLineArt:
    """The line image ColorFlow's sketch styles are conditioned on (the release's `LE/erika.pth`), or
    with `shading` on the Sketch+Shading condition: black where the page is dark, flat gray on the
    mid-tone background."""

    DESCRIPTION = (
        "Extracts the line art of each image with ColorFlow's line network (LE/erika.pth of the release): the "
        "condition of the sketch style. With shading on, dark areas are filled black and mid-tones flat gray "
        "(the shading style's condition). Images keep their size; colour images are converted to gray first."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "extract"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("lines",)
    OUTPUT_TOOLTIPS = ("The line images (gray, white paper, dark lines), same size and order as the input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Pages or frames to extract line art from (colour or gray)."}),
                "release": _release_input("line extractor LE/erika.pth"),
                "shading": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Off: pure line art (sketch style). On: the Sketch+Shading condition, lines plus "
                               "black dark areas and flat-gray mid-tones (shading style).",
                }),
            },
            "optional": {
                "dark_below": ("FLOAT", {
                    "default": DARK_BELOW, "min": 0.0, "max": 255.0, "step": 0.5,
                    "tooltip": "Shading: page gray below this becomes black (ColorFlow: 76.5 = 0.3 x 255).",
                }),
                "line_above": ("INT", {
                    "default": LINE_ABOVE, "min": 0, "max": 255,
                    "tooltip": "Shading: line-image values above this count as paper, not line (ColorFlow: 125).",
                }),
                "mid_below": ("INT", {
                    "default": MID_BELOW, "min": 0, "max": 255,
                    "tooltip": "Shading: paper where the page gray lies between dark_below and this becomes "
                               "flat gray (ColorFlow: 145).",
                }),
                "flat_gray": ("INT", {
                    "default": FLAT_GRAY, "min": 0, "max": 255,
                    "tooltip": "Shading: the gray level of the mid-tone areas (ColorFlow: 125).",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, release=None):
        return _validate_release(release, "lines")

    def extract(self, images, release: str, shading: bool = False, dark_below: float = DARK_BELOW,
                line_above: int = LINE_ABOVE, mid_below: int = MID_BELOW, flat_gray: int = FLAT_GRAY):
        from colorflow_core.preprocess.shading import shade_sketch

        levels = {name: _level(name, value) for name, value in (
            ("dark_below", dark_below), ("line_above", line_above), ("mid_below", mid_below), ("flat_gray", flat_gray))}
        pages = _pages(images, "Extract Line Art")

        def work(extractor, _i: int, page: Image.Image) -> Image.Image:
            gray = page.convert("L")
            lines = extractor.extract_lines(gray)
            return shade_sketch(lines, gray, **levels) if shading else lines.convert("RGB")

        return _run("lines", release, pages, work)


class ScreentonePreprocess:
    """The GrayImage(ScreenStyle) condition: the page rendered as screentone by the release's
    ScreenStyle networks, blended 50/50 with the page's gray."""

    DESCRIPTION = (
        "Renders each image as screentoned manga with ColorFlow's ScreenStyle networks (ScreenStyle/ of the "
        "release) and, with blend on, mixes it 50/50 with the image's gray: the condition ColorFlow's screenstyle "
        "model is given. Images keep their size; image i uses seed + i."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "preprocess"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The screentone renditions (blended or raw), same size and order as the input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Pages to convert (colour or gray)."}),
                "release": _release_input("ScreenStyle/ networks (generator and ScreenVAE decoder)"),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": WIDGET_MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the screentone noise; image i uses seed + i (as Retrieve References' "
                               "preprocess_seed).",
                }),
                "blend": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "On: 50/50 blend of the screentone and the page gray (the diffusion condition). "
                               "Off: the raw screentone.",
                }),
            },
            "optional": {
                "generator_device": generator_device_input("the screentone noise"),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, release=None):
        return _validate_release(release, "screentone")

    def preprocess(self, images, release: str, seed: int, blend: bool = True, generator_device: str = "cpu"):
        check_number("Screentone Preprocess: seed", seed, 0, WIDGET_MAX_SEED, integer=True)
        with widget_errors("Screentone Preprocess"):
            check_generator_device(generator_device)
        pages = _pages(images, "Screentone Preprocess")

        def work(converter, i: int, page: Image.Image) -> Image.Image:
            convert = converter.screenstyle_condition if blend else converter.to_screentone
            return convert(page, seed + i, generator_device)

        return _run("screentone", release, pages, work)


PREPROCESS_NODE_CLASS_MAPPINGS = {
    "ColorFlowExtractLineArt": ExtractLineArt,
    "ColorFlowScreentonePreprocess": ScreentonePreprocess,
}
PREPROCESS_NODE_DISPLAY_NAME_MAPPINGS = {
    "ColorFlowExtractLineArt": "Extract Line Art (ColorFlow)",
    "ColorFlowScreentonePreprocess": "Screentone Preprocess (ColorFlow)",
}
