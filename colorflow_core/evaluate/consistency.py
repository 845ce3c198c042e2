"""Colour consistency: how far the colours painted on a page are from the references retrieved for it.

Input per page: the coloured page, its retrieval record (``<stem>.json``, format
``colorflow-retrieval/1``: for each query patch of the W x H page, its box and the top-k reference
patches, each a box in the reference after `images.process_image(ref, W, H)`) and the reference files.

The score, in CIEDE2000 units (ΔE00; about 1 is a just-noticeable difference, above 10 clearly
another colour): for every query region, each *coloured* pixel of the prediction (CIELAB chroma
C* >= `CHROMA_MIN`; paper, ink and screentone grays are left out) is compared with the closest colour
among all pixels of the reference patches retrieved for that region (the palette the model was shown
in its canvas); a page's score is the mean of these nearest-palette ΔE00 over the coloured pixels of
all its regions, the chapter's the mean over pages. Lower is more consistent.

Why not the ΔE00 of mean colours: a region's mean is dominated by paper and mixes distinct colours (red
hair and a blue coat average to a gray found in neither), so wrong colours can average out. Why not a
histogram distance: it needs bin choices and punishes a region that shows only part of what its
reference patches show, which is normal. Nearest-palette ΔE00 asks the question consistency is about
-- is each colour painted here one that the references retrieved for this region contain? -- and is
one-directional on purpose. Colour conversion and ΔE00 are scikit-image's (``rgb2lab``,
``deltaE_ciede2000``); the nearest palette colour is found among the `NEIGHBOURS` nearest in
Euclidean Lab (scipy's cKDTree), then ranked by ΔE00.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RECORD_FORMAT = "colorflow-retrieval/1"
CHROMA_MIN = 10.0  # C* below this is neutral (paper, ink, screentone)
MIN_COLOURED_FRACTION = 0.01  # a page with fewer coloured pixels in its regions has no score
MAX_SIDE = 128  # regions and reference patches are box-downsampled to at most this many pixels a side
NEIGHBOURS = 8


class RecordError(ValueError):
    """A retrieval record or a file it names cannot be used; the message says which and why."""


@dataclass
class PageConsistency:
    page: str
    delta_e: float  # mean nearest-palette ΔE00 over the coloured pixels
    coloured_fraction: float  # of the pixels of the page's regions
    regions: list[dict[str, Any]] = field(default_factory=list)


def _box(value: Any, width: int, height: int, what: str) -> tuple[int, int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise RecordError(f"{what} must be 4 integers [left, top, right, bottom], got {value!r}")
    left, top, right, bottom = value
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise RecordError(f"{what} {list(value)} is not a box inside {width}x{height}")
    return left, top, right, bottom


def read_record(path: Path, stem: str) -> dict[str, Any]:
    """Load and check ``path`` as the record of page ``stem``; RecordError naming what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"retrieval record {path} cannot be read: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"{path} is not a {RECORD_FORMAT} record (format: {found!r})")
    if record.get("page") != stem:
        raise RecordError(f"{path} is the record of page {record.get('page')!r}, not of {stem!r}")
    size = record.get("size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise RecordError(f"{path}: size must be [W, H] (positive integers), got {size!r}")
    cells = record.get("cells")
    if not isinstance(cells, list) or not cells:
        raise RecordError(f"{path}: no cells (retrieved patches) in the record")
    width, height = size
    for k, cell in enumerate(cells):
        what = f"{path}: cells[{k}]"
        if not isinstance(cell, dict):
            raise RecordError(f"{what} is not an object")
        if not isinstance(cell.get("query_patch"), int):
            raise RecordError(f"{what}: query_patch must be an integer, got {cell.get('query_patch')!r}")
        _box(cell.get("query_box"), width, height, f"{what}: query_box")
        _box(cell.get("patch_box"), width, height, f"{what}: patch_box")
        name = cell.get("reference")
        if name is None:
            raise RecordError(f"{what}: the reference has no file name (null: an image connected in ComfyUI, "
                              f"not a file), and the consistency score reads the reference files")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise RecordError(f"{what}: reference must be a file name in the references folder, got {name!r}")
    return record


def _lab(img: Image.Image) -> np.ndarray:
    """RGB image → (N, 3) float64 CIELAB (D65) pixels, after box-downsampling to `MAX_SIDE`."""
    from skimage.color import rgb2lab

    img = img.convert("RGB")
    if max(img.size) > MAX_SIDE:
        scale = MAX_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BOX)
    return rgb2lab(np.asarray(img)).reshape(-1, 3)


def nearest_palette_delta_e(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """For each Lab pixel (N, 3), the smallest ΔE00 to a colour of ``palette`` (M, 3) → (N,)."""
    from scipy.spatial import cKDTree
    from skimage.color import deltaE_ciede2000

    if len(pixels) == 0:
        return np.zeros(0)
    k = min(NEIGHBOURS, len(palette))
    _, index = cKDTree(palette).query(pixels, k=k)
    index = np.asarray(index).reshape(len(pixels), k)
    candidates = palette[index]  # (N, k, 3)
    repeated = np.repeat(pixels[:, None, :], k, axis=1)
    return deltaE_ciede2000(repeated, candidates, channel_axis=-1).min(axis=1)


class _References:
    """Reference files fitted to a page size once (`images.process_image`), as retrieval saw them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fitted: dict[tuple[str, int, int], Image.Image] = {}

    def fitted(self, name: str, width: int, height: int) -> Image.Image:
        key = (name, width, height)
        if key not in self._fitted:
            from ..errors import InputError
            from ..images import load_image, process_image

            path = self.folder / name
            if not path.is_file():
                raise RecordError(f"reference {name} (named in the record) is not in {self.folder}")
            try:
                self._fitted[key] = process_image(load_image(path), width, height)
            except InputError as exc:
                raise RecordError(f"reference {name} cannot be used: {exc}") from exc
        return self._fitted[key]


def page_consistency(prediction: Image.Image, record: dict[str, Any], references: _References) -> PageConsistency:
    """The score of one page from its checked record (`read_record`). Query boxes are in the W x H page
    of the record and are scaled to the prediction's size (ColorFlow writes 1.5W x 1.5H)."""
    width, height = record["size"]
    scale_x, scale_y = prediction.width / width, prediction.height / height
    by_query: dict[int, list[dict[str, Any]]] = {}
    for cell in record["cells"]:
        by_query.setdefault(cell["query_patch"], []).append(cell)
    distances, total, regions = [], 0, []
    for query, cells in sorted(by_query.items()):
        left, top, right, bottom = cells[0]["query_box"]
        box = (round(left * scale_x), round(top * scale_y), round(right * scale_x), round(bottom * scale_y))
        pixels = _lab(prediction.crop(box))
        palette = np.concatenate([_lab(references.fitted(c["reference"], width, height).crop(tuple(c["patch_box"])))
                                  for c in cells])
        coloured = pixels[np.hypot(pixels[:, 1], pixels[:, 2]) >= CHROMA_MIN]
        region = nearest_palette_delta_e(coloured, palette)
        distances.append(region)
        total += len(pixels)
        regions.append({"query_patch": query, "coloured_fraction": len(coloured) / len(pixels),
                        "delta_e": float(region.mean()) if len(region) else None,
                        "references": sorted({c["reference"] for c in cells})})
    found = np.concatenate(distances)
    fraction = len(found) / total if total else 0.0
    value = float(found.mean()) if fraction >= MIN_COLOURED_FRACTION else math.nan
    return PageConsistency(record["page"], value, fraction, regions)


def chapter_consistency(predictions: dict[str, Path], retrieval_dir: str | os.PathLike,
                        refs_dir: str | os.PathLike) -> tuple[dict[str, PageConsistency], dict[str, str]]:
    """Score every predicted page (stem → file) that has a usable record in ``retrieval_dir``.

    Returns (scores by page, reason by skipped page): a page without a record, with an unusable
    record or reference, unreadable, or with (almost) no coloured pixels is skipped and named.
    """
    from ..errors import InputError
    from .pairing import read_rgb

    retrieval_dir, references = Path(retrieval_dir), _References(Path(refs_dir))
    scores, skipped = {}, {}
    for stem, pred_path in predictions.items():
        record_path = retrieval_dir / f"{stem}.json"
        if not record_path.is_file():
            skipped[stem] = f"no retrieval record {record_path}"
            continue
        try:
            record = read_record(record_path, stem)
            score = page_consistency(read_rgb(pred_path), record, references)
        except (RecordError, InputError) as exc:
            skipped[stem] = str(exc)
            continue
        if math.isnan(score.delta_e):
            skipped[stem] = (f"prediction {pred_path.name} is (almost) colourless: {score.coloured_fraction:.2%} of "
                             f"its region pixels have chroma C* >= {CHROMA_MIN:g}")
            continue
        scores[stem] = score
    return scores, skipped
