"""Reading pages and references, normalising their pixel modes, and fitting them to a page size.

`process_image` is the original's fitting rule (a plain resize, or a centre crop first when the
aspect ratio differs too much) and is pixel-exact for RGB and L inputs. Everything else here exists
so that any file a user drops in (PNG with alpha, 16-bit scans, palette GIFs, CMYK JPEGs) reaches
it as plain 8-bit RGB or L, or fails with a message naming the file instead of a crash deep inside
PIL or torch.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Files that `list_image_files` treats as pages; everything else in a folder is skipped.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Below this a "page" carries no usable content, and `process_image`'s crop arithmetic degenerates.
MIN_PAGE_SIDE = 8

# Aspect distortion the original accepts before it centre-crops instead.
_MAX_ASPECT_ERROR = 0.15

logger = logging.getLogger(__name__)

# What the CLI's --max-image-pixels sets (`set_max_image_pixels`); shown in the "too large" message.
MAX_PIXELS_OPTION = "--max-image-pixels"
# Attribute `load_image` puts on the images it returns: the file they came from, for messages.
_SOURCE_ATTR = "colorflow_source"

_ALPHA_MODES = {"RGBA": "RGBA", "RGBa": "RGBA", "LA": "LA", "La": "LA", "PA": "RGBA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, oriented as its EXIF tag says (as viewers show it).

    Decoding happens here, not lazily later, so a truncated or corrupt file is reported with its
    name instead of failing in the middle of a batch. Files holding several frames (multi-page TIFF,
    animated GIF / PNG / WebP) are refused: taking the first frame would drop the others silently.
    Images larger than `max_image_pixels` are refused as possible decompression bombs. The returned
    image remembers its file (`image_source`), so later messages can name it.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_symlink():
            raise InputError(f"{path} is a broken symbolic link (its target does not exist, or the link loops)")
        raise InputError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the hard limit is checked below
            with Image.open(path) as img:
                frames = getattr(img, "n_frames", 1)
                if frames > 1:
                    raise InputError(
                        f"{path} holds {frames} frames (a multi-page TIFF or an animated image); ColorFlow colours "
                        f"single images and would lose every frame after the first: save one file per page "
                        f"(e.g. {path.stem}_f001{path.suffix}, {path.stem}_f002{path.suffix}, ...)"
                    )
                img.load()
                image = ImageOps.exif_transpose(img)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(_too_large(path, exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
            f"give a PNG, JPEG, WebP, BMP, TIFF or GIF file"
        ) from exc
    setattr(image, _SOURCE_ATTR, str(path))
    return image


def max_image_pixels() -> int | None:
    """The largest image `load_image` accepts, in pixels (Pillow's decompression-bomb limit:
    2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 178956970 by default); None: no limit."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(2 * limit)


def set_max_image_pixels(limit: int) -> None:
    """Raise (or lower) the decompression-bomb limit for this process (CLI ``--max-image-pixels``)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"{MAX_PIXELS_OPTION} must be a positive number of pixels (width x height), got {limit!r}")
    Image.MAX_IMAGE_PIXELS = limit / 2  # Pillow refuses images above twice this value


def _too_large(path: Path, exc: Exception) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(match.group(1)):,} pixels)" if match else ""
    limit = max_image_pixels()
    return (
        f"{path} is larger{size} than Pillow's decompression-bomb limit of {limit:,} pixels (a protection against "
        f"files that expand to huge images). If you trust the file, raise the limit: on the command line with "
        f"{MAX_PIXELS_OPTION} N (N = width x height or more), in Python with PIL.Image.MAX_IMAGE_PIXELS"
    )


def image_source(img: Image.Image) -> str | None:
    """The file `load_image` read ``img`` from, or None for images made in memory."""
    return getattr(img, _SOURCE_ATTR, None)


def check_image_files(paths: Iterable[str | os.PathLike], what: str = "image") -> dict[Path, str]:
    """Decode every file as the stages will (`load_image`, `normalize_mode`, `check_page`) and return
    {file: message} for those that cannot be used, all of them (nothing is raised): run before any
    model so a bad page deep in a chapter is reported up front, together with every other one."""
    problems: dict[Path, str] = {}
    for path in map(Path, paths):
        try:
            check_page(normalize_mode(load_image(path)), f"{what} {path}")
        except InputError as exc:
            problems[path] = str(exc)
    return problems


def normalize_mode(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB or L, whatever mode it was stored in.

    Transparency is composited onto WHITE: a transparent manga page or reference background is
    paper. (The original's ``convert('RGB')`` would instead reveal whatever RGB hides under alpha 0,
    often black, and the page would come out with a black background.) 16-bit and 32-bit integer
    images and float images are scaled to 8 bit by their value range (see `_to_8bit`).
    """
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "P" and "transparency" in img.info:
        mode = "PA"
    if mode in _ALPHA_MODES:
        with_alpha = img if img.mode == _ALPHA_MODES[mode] else img.convert(_ALPHA_MODES[mode])
        base_mode = "L" if _ALPHA_MODES[mode] == "LA" else "RGB"
        background = Image.new(base_mode, img.size, 255 if base_mode == "L" else (255, 255, 255))
        background.paste(with_alpha.convert(base_mode), mask=with_alpha.getchannel("A"))
        return background
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _to_8bit(img)
    if mode == "1":
        return img.convert("L")
    try:
        return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
    except (ValueError, OSError) as exc:
        raise InputError(f"images of mode {img.mode!r} are not supported; save the image as RGB or grayscale") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a single-channel 16-bit / 32-bit / float image to 8-bit L.

    16-bit modes use the full 16-bit range (/257, so 65535 → 255). Mode "I" is how 16-bit PNGs and
    TIFFs often open: values within 0..65535 are read as 16-bit; anything else is stretched from its
    minimum to its maximum. Float ("F") images in 0..1 are multiplied by 255, in 0..255 kept, and
    otherwise stretched from minimum to maximum; NaN counts as 0.
    """
    data = np.asarray(img).astype(np.float64)
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and low >= 0 and high <= 65535):
        scaled = data / 257.0
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = data * 255.0
    elif img.mode == "F" and low >= 0 and high <= 255:
        scaled = data
    else:
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def check_page(img: Image.Image, what: str = "image") -> None:
    """Refuse images too small to carry a page (a 1x1 placeholder, a stray icon).

    Extreme aspect ratios (a 20:1 strip) are accepted: `process_image` centre-crops them to the
    target ratio like the original does.
    """
    width, height = img.size
    if min(width, height) < MIN_PAGE_SIDE:
        raise InputError(
            f"{what} of {width}x{height} px is too small: every side must be at least {MIN_PAGE_SIDE} px"
        )


def process_image(img: Image.Image, width: int, height: int) -> Image.Image:
    """Fit an image to ``width`` x ``height`` exactly as the original's `process_image`.

    Within 15 % of the target aspect ratio the image is resized straight (slight distortion);
    otherwise it is centre-cropped to the target ratio first. Resampling is bicubic. Differences
    from the original, both only where it misbehaved: the mode is normalised first (alpha on white,
    not dropped; palette images are converted to RGB and so resized bicubic, not nearest), and a
    crop is at least 1 px wide (the original would crash on a 0-px crop of a very thin image).
    An image smaller than the target (a small reference) is simply upscaled.
    """
    img = normalize_mode(img)
    check_page(img)
    src_w, src_h = img.size
    ratio, target_ratio = src_w / src_h, width / height
    if abs(ratio - target_ratio) / target_ratio >= _MAX_ASPECT_ERROR:
        if ratio > target_ratio:
            new_w = max(1, int(src_h * target_ratio))
            left = int((src_w - new_w) / 2)
            img = img.crop((left, 0, left + new_w, src_h))
        else:
            new_h = max(1, int(src_w / target_ratio))
            top = int((src_h - new_h) / 2)
            img = img.crop((0, top, src_w, top + new_h))
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    return img.convert("RGB")


def natural_sort_key(path: Path) -> list[object]:
    """Sort key that orders "page2" before "page10" (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", path.name.lower())
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def broken_links(folder: str | os.PathLike) -> list[Path]:
    """Symbolic links directly inside ``folder`` that lead nowhere (dangling, or looping), natural order."""
    folder = Path(folder)
    found = []
    for p in folder.iterdir():
        if p.name.startswith(".") or not p.is_symlink():
            continue
        try:
            p.stat()
        except OSError:  # missing target, or ELOOP
            found.append(p)
    return sorted(found, key=natural_sort_key)


def describe_broken_links(folder: str | os.PathLike, links: Iterable[Path]) -> str:
    """The warning for `broken_links`: names each link."""
    names = [p.name for p in links]
    return (f"skipping {len(names)} broken symbolic link(s) in {folder} (the target is missing or the link loops): "
            f"{', '.join(names)}")


def list_image_files(folder: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[Path]:
    """The image files directly inside ``folder`` in natural order; other files are skipped.

    Hidden files (".DS_Store", macOS "._page1.png" resource forks) are skipped too. Broken symbolic
    links are skipped with a warning naming them (``warn``, default: this module's logger).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    files = [
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    broken = broken_links(folder)
    if broken:
        (warn or logger.warning)(describe_broken_links(folder, broken))
    if not files:
        links = f"; {len(broken)} broken symbolic link(s) skipped: {', '.join(p.name for p in broken)}" if broken else ""
        raise InputError(
            f"{folder} holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){links}"
        )
    return sorted(files, key=natural_sort_key)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode) → float32 tensor (H, W, 3) in [0, 1], the layout ComfyUI images use."""
    rgb = normalize_mode(img).convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (H, W, C) in [0, 1] (C = 1 or 3; or (H, W)) → 8-bit RGB PIL image.

    Values are clamped and rounded (not truncated) so that `pil_to_tensor` → `tensor_to_pil`
    gives back the same pixels.
    """
    if tensor.ndim == 2:
        tensor = tensor[..., None]
    if tensor.ndim != 3 or tensor.shape[-1] not in (1, 3):
        raise InputError(f"expected an image tensor of shape (H, W, 3) or (H, W, 1), got {tuple(tensor.shape)}")
    data = torch.nan_to_num(tensor.detach().to("cpu", torch.float32), nan=0.0)
    data = (data.clamp(0, 1) * 255).round().to(torch.uint8)
    if data.shape[-1] == 1:
        data = data.expand(-1, -1, 3)
    return Image.fromarray(data.contiguous().numpy())
