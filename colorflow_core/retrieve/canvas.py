"""Retrieval for a page (RAP, arXiv 2412.11815): its 4 overlapping query patches each pick their
top-k most similar pool patches (cosine similarity of the image embeddings), stitched around the
page into the 2W x 2H in-context canvas; the mask marks the page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import InputError
from ..images import process_image
from ..sizes import PageSize
from .encoders import ImageEncoder
from .pool import ReferencePool
from .references import QUERY_PATCH_KINDS, crop_patches, labelled

logger = logging.getLogger(__name__)


# (row, col) of the canvas cell for [query patch][rank]: best picks next to the page.
PLACEMENT_TABLE: tuple[tuple[tuple[int, int], ...], ...] = (
    ((1, 0), (0, 1), (0, 0)),
    ((1, 3), (0, 2), (0, 3)),
    ((2, 0), (3, 1), (3, 0)),
    ((2, 3), (3, 2), (3, 3)),
)
MAX_TOP_K = len(PLACEMENT_TABLE[0])

# The original's assets/mask.png: 512x512, white (page) on rows/cols 128..383, black elsewhere.
_MASK_SOURCE_SIZE = 512
_MASK_SQUARE = (128, 384)
_LABEL_CHARS = 16  # a reference's file name on the retrieval sheet, shortened beyond this


@dataclass(frozen=True)
class Placement:
    """One reference patch placed on the canvas, for inspection."""

    query_patch: int
    rank: int
    pool_patch_index: int
    reference_index: int
    patch_kind: str
    cell: tuple[int, int]  # (row, col) in the 4x4 grid
    score: float


@dataclass
class RetrievalResult:
    """Everything retrieval produced for one page."""

    size: PageSize
    query_image: Image.Image  # W x H RGB
    canvas: Image.Image  # 2W x 2H RGB
    mask: Image.Image  # 2W x 2H 'L', 255 = page region
    similarities: torch.Tensor  # (4, N); -inf where a reference was not allowed for the page
    top_k_indices: torch.Tensor  # (4, k) int64, best first
    top_k_scores: torch.Tensor  # (4, k)
    placements: list[Placement] = field(default_factory=list)

    def retrieval_sheet(self, max_side: int = 768,
                        reference_names: Sequence[str | None] | None = None) -> Image.Image:
        """The canvas at most ``max_side`` px on its long side, each placed patch labelled with
        "r<reference number> <score>" (or "<file name> <score>" when ``reference_names[i]`` names pool
        reference i): a quick visual check of what the page was coloured from."""
        sheet = self.canvas.copy()
        sheet.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        scale_x, scale_y = sheet.width / self.canvas.width, sheet.height / self.canvas.height
        cell_w, cell_h = self.size.cell
        draw = ImageDraw.Draw(sheet)
        for p in self.placements:
            row, col = p.cell
            origin = (round(col * cell_w * scale_x) + 2, round(row * cell_h * scale_y) + 2)
            name = reference_names[p.reference_index] if reference_names is not None \
                and p.reference_index < len(reference_names) else None
            label = f"{_short_name(name) if name else f'r{p.reference_index + 1}'} {p.score:.2f}"
            draw.rectangle(draw.textbbox(origin, label), fill="black")
            draw.text(origin, label, fill="white")
        return sheet


def _short_name(name: str, limit: int = _LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[:limit - 2] + ".."  # ASCII: any default font draws it


def canvas_mask(size: PageSize) -> Image.Image:
    """The original's mask resized to 2W x 2H with PIL bicubic: 'L', 255 on the page."""
    mask = Image.new("L", (_MASK_SOURCE_SIZE, _MASK_SOURCE_SIZE), 0)
    low, high = _MASK_SQUARE
    mask.paste(255, (low, low, high, high))
    return mask.resize(size.canvas, Image.Resampling.BICUBIC)


def latent_mask(mask: Image.Image, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Guider mask channel (1, 1, h, w): 1 - R/255 bilinearly downsampled (align_corners False,
    no antialias), i.e. 0 on the page and 1 on the references."""
    red = mask.getchannel(0) if mask.mode != "L" else mask
    values = torch.from_numpy(np.asarray(red, dtype=np.float32) / 255.0)[None, None]
    return F.interpolate(1.0 - values, size=tuple(latent_hw), mode="bilinear", align_corners=False)


def _check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(
            f"top_k must be 1, 2 or {MAX_TOP_K} (the canvas has {MAX_TOP_K} slots per page patch), got {top_k!r}"
        )


def _stitch(query: Image.Image, pool: ReferencePool, top_k_indices: torch.Tensor, size: PageSize) -> Image.Image:
    """The in-context canvas: the page in the centre 2x2 cells, picks in 1-px white-framed cells."""
    canvas = Image.new("RGB", size.canvas, "white")
    canvas.paste(query, (size.width // 2, size.height // 2))
    cell_w, cell_h = size.cell
    for q, row_indices in enumerate(top_k_indices.tolist()):
        for rank, index in enumerate(row_indices):
            row, col = PLACEMENT_TABLE[q][rank]
            patch = pool.patch(index).resize((cell_w - 2, cell_h - 2), Image.Resampling.BICUBIC)
            canvas.paste(patch, (cell_w * col + 1, cell_h * row + 1))
    return canvas


def _allowed_patches(pool: ReferencePool, references: Collection[int] | None, top_k: int,
                     page: int) -> torch.Tensor | None:
    """(N,) bool: the pool patches of the allowed references (None: all of them)."""
    if references is None:
        return None
    count = len(set(pool.reference_index))
    bad = sorted(r for r in references if not (isinstance(r, int) and 0 <= r < count))
    if bad:
        raise InputError(f"page {page + 1}: allowed reference indices {bad} are not in the pool of {count} references")
    owners = torch.as_tensor(pool.reference_index, dtype=torch.int64)
    keep = torch.isin(owners, torch.as_tensor(sorted(references), dtype=torch.int64))
    if int(keep.sum()) < top_k:
        raise InputError(f"page {page + 1} is left with {int(keep.sum())} candidate reference patches, fewer than "
                         f"top_k = {top_k}: allow more references")
    return keep


def retrieve_many(
    conditions: Sequence[Image.Image],
    pool: ReferencePool,
    encoder: ImageEncoder,
    size: PageSize,
    top_k: int = 3,
    allowed: Sequence[Collection[int] | None] | None = None,
) -> list[RetrievalResult]:
    """Retrieve for many pages, embedding all their query patches in one encoder call.

    ``allowed``: per page, the pool reference indices (from 0) it may retrieve from, or None for the
    whole pool (`pinning.resolve_refs_map` makes it). The others are masked out of the similarity
    matrix (-inf before top-k); the pool is never embedded again.
    """
    _check_top_k(top_k)
    if pool.size != size:
        raise InputError(f"the reference pool was built for pages of {pool.size}, not {size}: build it again")
    if pool.encoder_identity != encoder.identity:
        raise InputError("the reference pool was embedded with another image encoder: build it again")
    if allowed is not None and len(allowed) != len(conditions):
        raise InputError(f"{len(allowed)} allowed-reference entries for {len(conditions)} pages")
    keep = [None if allowed is None else _allowed_patches(pool, allowed[page], top_k, page)
            for page in range(len(conditions))]
    if not conditions:
        return []
    queries = [
        labelled(process_image, c, size.width, size.height, label=f"page {i + 1}") for i, c in enumerate(conditions)
    ]
    query_patches = [crop_patches(q, size) for q in queries]
    embeddings = encoder.embed([p for patches in query_patches for p in patches])
    mask = canvas_mask(size)
    results = []
    for page, query in enumerate(queries):
        q = embeddings[page * len(QUERY_PATCH_KINDS):(page + 1) * len(QUERY_PATCH_KINDS)]
        sims = F.cosine_similarity(q[:, None, :], pool.embeddings[None, :, :], dim=-1)
        if keep[page] is not None:
            sims = sims.masked_fill(~keep[page], float("-inf"))
        scores, order = torch.sort(sims, dim=1, descending=True, stable=True)
        top_idx, top_scores = order[:, :top_k], scores[:, :top_k]
        pool.prefetch(top_idx.flatten().tolist())  # the references this canvas shows, read in parallel
        placements = [
            Placement(
                query_patch=qi,
                rank=rank,
                pool_patch_index=index,
                reference_index=pool.reference_index[index],
                patch_kind=pool.patch_kind[index],
                cell=PLACEMENT_TABLE[qi][rank],
                score=float(top_scores[qi, rank]),
            )
            for qi in range(len(QUERY_PATCH_KINDS))
            for rank, index in enumerate(top_idx[qi].tolist())
        ]
        results.append(RetrievalResult(
            size=size,
            query_image=query,
            canvas=_stitch(query, pool, top_idx, size),
            mask=mask.copy(),
            similarities=sims,
            top_k_indices=top_idx,
            top_k_scores=top_scores,
            placements=placements,
        ))
    return results


def retrieve(
    condition: Image.Image,
    pool: ReferencePool,
    encoder: ImageEncoder,
    size: PageSize,
    top_k: int = 3,
    allowed: Collection[int] | None = None,
) -> RetrievalResult:
    """Retrieve the top-k reference patches for one page and stitch its canvas and mask (``allowed``:
    the reference indices it may use, None = all; see `retrieve_many`)."""
    return retrieve_many([condition], pool, encoder, size, top_k, allowed=None if allowed is None else [allowed])[0]
