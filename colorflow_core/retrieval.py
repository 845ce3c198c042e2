"""Retrieval-Augmented Pipeline (RAP): patches, a reusable reference pool, top-k, canvas, mask.

RAP is the "Retrieval-Augmented Pipeline" of the ColorFlow paper (arXiv 2412.11815).

A page is cut into 4 overlapping query patches; every reference into 5 patches (whole + the same 4
crops). Each query patch picks its top-k most similar reference patches (cosine similarity of CLIP
embeddings), which are stitched around the page into a 2W x 2H canvas; the mask marks the page.

Reference embeddings depend only on the references, the page size and the encoder, so a
`ReferencePool` embeds them once for a whole chapter and can be saved and reused by content key.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .encoders import ImageEncoder
from .errors import InputError, OutputError
from .files import write_bytes_atomic
from .images import image_source, process_image
from .sizes import PageSize

logger = logging.getLogger(__name__)

QUERY_PATCH_KINDS = ("top-left", "top-right", "bottom-left", "bottom-right")
REFERENCE_PATCH_KINDS = ("whole",) + QUERY_PATCH_KINDS
PATCHES_PER_REFERENCE = len(REFERENCE_PATCH_KINDS)

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

_POOL_FORMAT = "colorflow-reference-pool/1"
# References embedded per encoder call while building a pool: progress / interruption granularity.
_REFS_PER_CALL = 8

Progress = Callable[[int, int], None]
T = TypeVar("T")


def crop_patches(image: Image.Image, size: PageSize) -> list[Image.Image]:
    """The 4 overlapping crops (W//4*3 x H//4*3, stride W//4, H//4) of a W x H image, row-major."""
    crop_w, crop_h = size.crop
    stride_x, stride_y = size.stride
    return [
        image.crop((x, y, x + crop_w, y + crop_h))
        for y in range(0, size.height - crop_h + 1, stride_y)
        for x in range(0, size.width - crop_w + 1, stride_x)
    ]


def reference_patches(reference: Image.Image, size: PageSize) -> list[Image.Image]:
    """A reference fitted to W x H (`process_image`, so small ones are upscaled) → whole + 4 crops."""
    fitted = process_image(reference, size.width, size.height)
    return [fitted] + crop_patches(fitted, size)


def _describe(label: str, image: Image.Image) -> str:
    """``label``, plus the file the image was read from when `images.load_image` read it."""
    source = image_source(image)
    return f"{label} ({source})" if source else label


def _labelled(fit: Callable[..., T], *args: object, label: str) -> T:
    """Run a fitting step; an InputError says which of several images it was about."""
    try:
        return fit(*args)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from exc


@dataclass
class ReferencePool:
    """Reference patches with their embeddings, built once per (references, size, encoder).

    Saved pools hold the embeddings and metadata only; the patches are re-cut from the references
    on load (cheap and exact), which keeps files small and avoids storing user images twice.
    """

    size: PageSize
    patches: list[Image.Image]
    embeddings: torch.Tensor  # (N, d) float32, CPU
    reference_index: list[int]
    patch_kind: list[str]
    content_key: str
    encoder_identity: str

    def __len__(self) -> int:
        return len(self.patches)

    @staticmethod
    def _cut(references: Sequence[Image.Image], size: PageSize) -> list[list[Image.Image]]:
        """Per reference: its 5 patches (the first is the fitted W x H reference)."""
        if not references:
            raise InputError("the reference pool is empty: give at least one colour reference image")
        return [
            _labelled(reference_patches, ref, size, label=_describe(f"colour reference {i + 1}", ref))
            for i, ref in enumerate(references)
        ]

    @staticmethod
    def _key(cut: list[list[Image.Image]], size: PageSize, encoder_identity: str) -> str:
        """sha256 over the fitted references' pixels, the page size and the encoder identity.

        The fitted W x H images are exactly what gets embedded, so an edit the fitting crops away
        (or a re-save in another file format) keeps the key; any edit that reaches a patch changes it.
        """
        digest = hashlib.sha256(f"{_POOL_FORMAT}|{size}|{encoder_identity}|{len(cut)}".encode())
        for patches in cut:
            fitted = patches[0]
            digest.update(f"|{fitted.mode}|{fitted.size}|".encode())
            digest.update(fitted.tobytes())
        return digest.hexdigest()

    @classmethod
    def _assemble(
        cls, cut: list[list[Image.Image]], embeddings: torch.Tensor, size: PageSize, key: str, identity: str
    ) -> "ReferencePool":
        return cls(
            size=size,
            patches=[p for patches in cut for p in patches],
            embeddings=embeddings,
            reference_index=[i for i in range(len(cut)) for _ in REFERENCE_PATCH_KINDS],
            patch_kind=list(REFERENCE_PATCH_KINDS) * len(cut),
            content_key=key,
            encoder_identity=identity,
        )

    @classmethod
    def build(
        cls,
        references: Sequence[Image.Image],
        encoder: ImageEncoder,
        size: PageSize,
        progress: Progress | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> "ReferencePool":
        """Fit, cut and embed every reference patch once; progress counts references."""
        return cls._build_cut(cls._cut(references, size), encoder, size, progress, check_interrupt)

    @classmethod
    def _build_cut(
        cls,
        cut: list[list[Image.Image]],
        encoder: ImageEncoder,
        size: PageSize,
        progress: Progress | None,
        check_interrupt: Callable[[], None] | None,
    ) -> "ReferencePool":
        chunks = []
        for start in range(0, len(cut), _REFS_PER_CALL):
            if check_interrupt is not None:
                check_interrupt()
            group = cut[start:start + _REFS_PER_CALL]
            chunks.append(encoder.embed([p for patches in group for p in patches]))
            if progress is not None:
                progress(start + len(group), len(cut))
        identity = encoder.identity
        return cls._assemble(cut, torch.cat(chunks), size, cls._key(cut, size, identity), identity)

    def save(self, path: str | os.PathLike) -> None:
        """Write embeddings + metadata as safetensors, atomically under a unique temporary name (a crash
        leaves no half file; processes sharing a cache never trip over each other's temporary files).
        `OutputError` when it cannot be written."""
        metadata = {
            "format": _POOL_FORMAT,
            "width": str(self.size.width),
            "height": str(self.size.height),
            "content_key": self.content_key,
            "encoder_identity": self.encoder_identity,
        }
        data = safetensors_bytes({"embeddings": self.embeddings.detach().cpu().contiguous()}, metadata=metadata)
        write_bytes_atomic(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike, references: Sequence[Image.Image]) -> "ReferencePool":
        """Load a saved pool; ``references`` must be the images it was built from (checked by key)."""
        path = Path(path)
        embeddings, metadata, size = _read_pool_file(path)
        return cls._load_cut(path, embeddings, metadata, cls._cut(references, size), size)

    @classmethod
    def _load_cut(
        cls,
        path: Path,
        embeddings: torch.Tensor,
        metadata: dict[str, str],
        cut: list[list[Image.Image]],
        size: PageSize,
    ) -> "ReferencePool":
        identity = metadata["encoder_identity"]
        key = cls._key(cut, size, identity)
        if key != metadata["content_key"]:
            raise InputError(
                f"{path} was built from other reference images (or another page size / encoder) "
                f"than the ones given; build the pool again"
            )
        if embeddings.ndim != 2 or embeddings.shape[0] != PATCHES_PER_REFERENCE * len(cut):
            raise InputError(f"{path} holds {tuple(embeddings.shape)} embeddings for {len(cut)} references")
        return cls._assemble(cut, embeddings.to(torch.float32), size, key, identity)

    @classmethod
    def cached(
        cls,
        references: Sequence[Image.Image],
        encoder: ImageEncoder,
        size: PageSize,
        cache_dir: str | os.PathLike,
        progress: Progress | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> "ReferencePool":
        """Reuse the pool saved under ``cache_dir`` for these exact references/size/encoder, or build
        and save it. An unreadable cache entry is rebuilt (and logged), never trusted."""
        cut = cls._cut(references, size)
        key = cls._key(cut, size, encoder.identity)
        path = Path(cache_dir) / f"pool-{key}.safetensors"
        if path.exists() and not path.is_file():  # found now, not after the embedding
            raise OutputError(f"cannot write {path}: it is a folder (or another non-file), not a pool cache file")
        if path.is_file():
            try:
                embeddings, metadata, _ = _read_pool_file(path)
                return cls._load_cut(path, embeddings, metadata, cut, size)  # the key check covers the size
            except InputError as exc:
                logger.warning("rebuilding the reference pool cache entry %s: %s", path, exc)
        pool = cls._build_cut(cut, encoder, size, progress, check_interrupt)
        pool.save(path)
        return pool


def _read_pool_file(path: Path) -> tuple[torch.Tensor, dict[str, str], PageSize]:
    """Embeddings, metadata and page size of a saved pool, or InputError when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings") if "embeddings" in handle.keys() else None
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path} is not a readable reference pool file: {exc}") from exc
    required = ("width", "height", "content_key", "encoder_identity")
    if metadata.get("format") != _POOL_FORMAT or embeddings is None or not all(k in metadata for k in required):
        raise InputError(f"{path} is not a ColorFlow reference pool file")
    try:
        size = PageSize(int(metadata["width"]), int(metadata["height"]))
    except (ValueError, InputError) as exc:
        raise InputError(f"{path} records an unusable page size: {exc}") from exc
    return embeddings, metadata, size


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
    similarities: torch.Tensor  # (4, N)
    top_k_indices: torch.Tensor  # (4, k) int64, best first
    top_k_scores: torch.Tensor  # (4, k)
    placements: list[Placement] = field(default_factory=list)

    def retrieval_sheet(self, max_side: int = 768) -> Image.Image:
        """The canvas at most ``max_side`` px on its long side, each placed patch labelled with
        "r<reference number> <score>": a quick visual check of what the page was coloured from."""
        sheet = self.canvas.copy()
        sheet.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        scale_x, scale_y = sheet.width / self.canvas.width, sheet.height / self.canvas.height
        cell_w, cell_h = self.size.cell
        draw = ImageDraw.Draw(sheet)
        for p in self.placements:
            row, col = p.cell
            origin = (round(col * cell_w * scale_x) + 2, round(row * cell_h * scale_y) + 2)
            label = f"r{p.reference_index + 1} {p.score:.2f}"
            draw.rectangle(draw.textbbox(origin, label), fill="black")
            draw.text(origin, label, fill="white")
        return sheet


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
            patch = pool.patches[index].resize((cell_w - 2, cell_h - 2), Image.Resampling.BICUBIC)
            canvas.paste(patch, (cell_w * col + 1, cell_h * row + 1))
    return canvas


def retrieve_many(
    conditions: Sequence[Image.Image],
    pool: ReferencePool,
    encoder: ImageEncoder,
    size: PageSize,
    top_k: int = 3,
) -> list[RetrievalResult]:
    """Retrieve for many pages, embedding all their query patches in one encoder call."""
    _check_top_k(top_k)
    if pool.size != size:
        raise InputError(f"the reference pool was built for pages of {pool.size}, not {size}: build it again")
    if pool.encoder_identity != encoder.identity:
        raise InputError("the reference pool was embedded with another image encoder: build it again")
    if not conditions:
        return []
    queries = [
        _labelled(process_image, c, size.width, size.height, label=f"page {i + 1}") for i, c in enumerate(conditions)
    ]
    query_patches = [crop_patches(q, size) for q in queries]
    embeddings = encoder.embed([p for patches in query_patches for p in patches])
    mask = canvas_mask(size)
    results = []
    for page, query in enumerate(queries):
        q = embeddings[page * len(QUERY_PATCH_KINDS):(page + 1) * len(QUERY_PATCH_KINDS)]
        sims = F.cosine_similarity(q[:, None, :], pool.embeddings[None, :, :], dim=-1)
        scores, order = torch.sort(sims, dim=1, descending=True, stable=True)
        top_idx, top_scores = order[:, :top_k], scores[:, :top_k]
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
) -> RetrievalResult:
    """Retrieve the top-k reference patches for one page and stitch its canvas and mask."""
    return retrieve_many([condition], pool, encoder, size, top_k)[0]
