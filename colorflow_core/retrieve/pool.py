"""The reference pool of retrieval (RAP, the paper's Retrieval-Augmented Pipeline): every colour
reference cut into 5 patches (the whole reference fitted to the page size + its 4 overlapping crops)
and embedded once.

Reference embeddings depend only on the references, the page size and the encoder, so a
`ReferencePool` embeds them once for a whole chapter and can be saved and reused by content key.

A pool holds the embeddings, not the patches: what it keeps of each reference is its *source* (the
file it was read from, or the image itself when it has no file) and a digest of its fitted pixels.
`ReferencePool.patch(index)` cuts a retrieved patch on demand, from a small LRU of fitted references,
so a pool of 1,000 references costs its embeddings (kilobytes per reference), not 4 GB of patches.
References are read, fitted and embedded a few at a time, so building a pool never holds them all.
One reference (source, fitting, digest, patch geometry) is `references`; the cache files are `pool_cache`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image

from ..errors import InputError, OutputError
from ..sizes import PageSize
from .encoders import ImageEncoder
from .pool_cache import POOL_FORMAT, read_index, read_pool_file, save_quietly, stat_index, write_index, write_pool_file
from .references import (
    PATCHES_PER_REFERENCE,
    REFERENCE_PATCH_KINDS,
    Reference,
    ReferenceSource,
    crop_patches,
    fitted_digest,
    reference_patch_boxes,
    reference_sources,
)

logger = logging.getLogger(__name__)

# References read, fitted and embedded per encoder call while building a pool: progress / interruption
# granularity, and the most references a build holds at once.
_REFS_PER_CALL = 8
# Fitted references `ReferencePool.patch` keeps (LRU): a page's 12 picks come from at most 12 references.
PATCH_CACHE_REFERENCES = 16
# On a cold cache miss the references are read twice (once for the content key, once to embed them)
# unless their fitted images fit in this budget between the two passes.
_KEEP_FITTED_BYTES = 64 * 2**20

Progress = Callable[[int, int], None]


class _Pass:
    """One pass over the references in order: each is read, fitted, digested and (with an encoder)
    its 5 patches embedded, ``_REFS_PER_CALL`` references at a time, then dropped (unless kept within
    ``keep_bytes`` for a second pass). Iterating yields ``(fitted,)`` per reference: the "cut" that
    `ReferencePool._key` hashes."""

    def __init__(self, sources: list[ReferenceSource], size: PageSize, encoder: ImageEncoder | None = None, *,
                 kept: list[Image.Image | None] | None = None, keep_bytes: int = 0,
                 progress: Progress | None = None, check_interrupt: Callable[[], None] | None = None) -> None:
        self.sources, self.size, self.encoder = sources, size, encoder
        self.given = kept
        self.keep_left = keep_bytes
        self.kept: list[Image.Image | None] = [None] * len(sources)
        self.progress, self.check_interrupt = progress, check_interrupt
        self.digests: list[str] = []
        self.chunks: list[torch.Tensor] = []
        self.started = self.done = False

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[tuple[Image.Image]]:
        if self.started:
            raise RuntimeError("a reference pass runs once")
        self.started = True
        batch: list[Image.Image] = []
        last = len(self.sources) - 1
        for i, source in enumerate(self.sources):
            if i % _REFS_PER_CALL == 0 and self.check_interrupt is not None:
                self.check_interrupt()
            fitted = self.given[i] if self.given is not None and self.given[i] is not None else source.fit(self.size)
            if self.given is not None:
                self.given[i] = None  # kept by the first pass: released as soon as it is used
            self.digests.append(fitted_digest(fitted))
            nbytes = fitted.width * fitted.height * len(fitted.getbands())
            if nbytes <= self.keep_left:
                self.kept[i] = fitted
                self.keep_left -= nbytes
            if self.encoder is not None:
                batch += [fitted] + crop_patches(fitted, self.size)
            yield (fitted,)
            if self.encoder is not None and (i % _REFS_PER_CALL == _REFS_PER_CALL - 1 or i == last):
                self.chunks.append(self.encoder.embed(batch))
                batch = []
                if self.progress is not None:
                    self.progress(i + 1, len(self.sources))
        self.done = True

    def finish(self) -> _Pass:
        """Run whatever iteration did not (e.g. a `_key` that did not look at the pixels)."""
        if not self.started:
            for _ in self:
                pass
        if not self.done:
            raise RuntimeError("a reference pass stopped half-way")
        return self

    def embeddings(self) -> torch.Tensor:
        return torch.cat(self.finish().chunks)


class _PatchView(SequenceABC):
    """``pool.patches``: every pool patch, cut on demand (`ReferencePool.patch`); nothing is stored."""

    def __init__(self, pool: ReferencePool) -> None:
        self._pool = pool

    def __len__(self) -> int:
        return len(self._pool)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._pool.patch(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return self._pool.patch(index)


@dataclass(eq=False)
class ReferencePool:
    """Reference patch embeddings, built once per (references, size, encoder), plus what it takes to
    cut a patch again (`patch`).

    Saved pools hold the embeddings and metadata only (with a digest per fitted reference); the
    patches are cut from the references when retrieval picks them (exact: the digest is checked).
    """

    size: PageSize
    embeddings: torch.Tensor  # (N, d) float32, CPU
    reference_index: list[int]
    patch_kind: list[str]
    content_key: str
    encoder_identity: str
    sources: list[ReferenceSource] = field(repr=False)
    reference_digests: list[str] | None = field(default=None, repr=False)
    cache_references: int = field(default=PATCH_CACHE_REFERENCES, repr=False)

    def __post_init__(self) -> None:
        self._fitted: OrderedDict[int, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.reference_index)

    def __getstate__(self) -> dict[str, object]:  # pickling / deepcopy: without the lock and the LRU
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_fitted"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def reference_count(self) -> int:
        return len(self.sources)

    def reference_path(self, reference: int) -> Path | None:
        """The file reference ``reference`` (from 0) was read from, or None for an image made in memory."""
        return self.sources[reference].path

    @property
    def patches(self) -> _PatchView:
        """All patches as a read-only sequence, each cut when indexed (prefer `patch`)."""
        return _PatchView(self)

    def patch(self, index: int) -> Image.Image:
        """Pool patch ``index`` (a new image): its reference fitted to W x H (kept in a small LRU),
        then cut to its box. InputError when the reference's file can no longer be read or its
        pixels changed since it was embedded."""
        if not 0 <= index < len(self):
            raise IndexError(f"pool patch {index} out of range 0..{len(self) - 1}")
        fitted = self.fitted_reference(self.reference_index[index])
        box = reference_patch_boxes(self.size)[REFERENCE_PATCH_KINDS.index(self.patch_kind[index])]
        return fitted.crop(box)

    def prefetch(self, indices: Iterable[int], workers: int | None = None) -> None:
        """Fit the references of these pool patches in parallel threads (PIL decodes and resizes
        without holding the GIL), so the `patch` calls that follow (a page's canvas) find them in the
        LRU. Errors are those `patch` would raise."""
        wanted = list(dict.fromkeys(self.reference_index[i] for i in indices))[: max(1, self.cache_references)]
        with self._lock:
            missing = [r for r in wanted if r not in self._fitted]
        workers = min(len(missing), workers or os.cpu_count() or 1)
        if workers <= 1:
            for reference in missing:
                self.fitted_reference(reference)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="colorflow-pool") as pool:
            list(pool.map(self.fitted_reference, missing))

    def fitted_reference(self, reference: int) -> Image.Image:
        """Reference ``reference`` (from 0) fitted to W x H, as embedded (shared: do not modify it)."""
        with self._lock:
            fitted = self._fitted.get(reference)
            if fitted is not None:
                self._fitted.move_to_end(reference)
                return fitted
        source = self.sources[reference]
        fitted = source.fit(self.size)
        if self.reference_digests is not None and fitted_digest(fitted) != self.reference_digests[reference]:
            raise InputError(f"{source.label} changed since the reference pool was embedded; build the pool again "
                             f"(the command line does so when run again)")
        with self._lock:
            self._fitted[reference] = fitted
            self._fitted.move_to_end(reference)
            while len(self._fitted) > max(1, self.cache_references):
                self._fitted.popitem(last=False)
        return fitted

    # ---- building -------------------------------------------------------------------------------

    @staticmethod
    def _cut(references: Sequence[Image.Image], size: PageSize) -> list[list[Image.Image]]:
        """Per reference: its 5 patches (the first is the fitted W x H reference), all in memory."""
        return [[f] + crop_patches(f, size) for f in (s.fit(size) for s in reference_sources(references))]

    @staticmethod
    def _key(cut: Sequence[Sequence[Image.Image]], size: PageSize, encoder_identity: str) -> str:
        """sha256 over the fitted references' pixels, the page size and the encoder identity.

        The fitted W x H images are exactly what gets embedded, so an edit the fitting crops away
        (or a re-save in another file format) keeps the key; any edit that reaches a patch changes it.
        ``cut`` yields per reference a sequence whose first item is the fitted reference.
        """
        digest = hashlib.sha256(f"{POOL_FORMAT}|{size}|{encoder_identity}|{len(cut)}".encode())
        for patches in cut:
            fitted = patches[0]
            digest.update(f"|{fitted.mode}|{fitted.size}|".encode())
            digest.update(fitted.tobytes())
        return digest.hexdigest()

    @classmethod
    def _assemble(cls, cut: list[list[Image.Image]], embeddings: torch.Tensor, size: PageSize, key: str,
                  identity: str) -> ReferencePool:
        """A pool over already cut references (their fitted images are kept in memory)."""
        sources = [ReferenceSource(patches[0], i + 1, prefitted=True) for i, patches in enumerate(cut)]
        return cls._from_sources(sources, embeddings, size, key, identity, None)

    @classmethod
    def _from_sources(cls, sources: list[ReferenceSource], embeddings: torch.Tensor, size: PageSize, key: str,
                      identity: str, digests: list[str] | None) -> ReferencePool:
        return cls(
            size=size,
            embeddings=embeddings,
            reference_index=[i for i in range(len(sources)) for _ in REFERENCE_PATCH_KINDS],
            patch_kind=list(REFERENCE_PATCH_KINDS) * len(sources),
            content_key=key,
            encoder_identity=identity,
            sources=sources,
            reference_digests=digests,
        )

    @classmethod
    def build(
        cls,
        references: Sequence[Reference],
        encoder: ImageEncoder,
        size: PageSize,
        progress: Progress | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> ReferencePool:
        """Fit, cut and embed every reference patch once; progress counts references.

        ``references``: images and/or image file paths (files are read a few at a time and not kept).
        """
        sources = reference_sources(references)
        return cls._build(sources, encoder, size, None, progress, check_interrupt)

    @classmethod
    def _build(cls, sources: list[ReferenceSource], encoder: ImageEncoder, size: PageSize,
               kept: list[Image.Image | None] | None, progress: Progress | None,
               check_interrupt: Callable[[], None] | None) -> ReferencePool:
        identity = encoder.identity
        scan = _Pass(sources, size, encoder, kept=kept, progress=progress, check_interrupt=check_interrupt)
        key = cls._key(scan, size, identity)
        embeddings = scan.embeddings()
        return cls._from_sources(sources, embeddings, size, key, identity, scan.digests)

    # ---- saving and loading ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write embeddings + metadata as safetensors, atomically under a unique temporary name (a crash
        leaves no half file; processes sharing a cache never trip over each other's temporary files).
        `OutputError` when it cannot be written."""
        write_pool_file(path, self.embeddings, self.size, self.content_key, self.encoder_identity,
                        self.reference_digests)

    @classmethod
    def load(cls, path: str | os.PathLike, references: Sequence[Reference]) -> ReferencePool:
        """Load a saved pool; ``references`` must be the images (or files) it was built from (checked by key)."""
        path = Path(path)
        embeddings, metadata, size = read_pool_file(path)
        sources = reference_sources(references)
        scan = _Pass(sources, size)
        key = cls._key(scan, size, metadata["encoder_identity"])
        return cls._checked(path, embeddings, metadata, sources, size, key, scan.finish().digests)

    @classmethod
    def _checked(cls, path: Path, embeddings: torch.Tensor, metadata: dict[str, str], sources: list[ReferenceSource],
                 size: PageSize, key: str, digests: list[str] | None) -> ReferencePool:
        """The pool of a read file, after checking it holds these references' embeddings."""
        identity = metadata["encoder_identity"]
        if key != metadata["content_key"]:
            raise InputError(
                f"{path} was built from other reference images (or another page size / encoder) "
                f"than the ones given; build the pool again"
            )
        if embeddings.ndim != 2 or embeddings.shape[0] != PATCHES_PER_REFERENCE * len(sources):
            raise InputError(f"{path} holds {tuple(embeddings.shape)} embeddings for {len(sources)} references")
        return cls._from_sources(sources, embeddings.to(torch.float32), size, key, identity, digests)

    @classmethod
    def cached(
        cls,
        references: Sequence[Reference],
        encoder: ImageEncoder,
        size: PageSize,
        cache_dir: str | os.PathLike,
        progress: Progress | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> ReferencePool:
        """Reuse the pool saved under ``cache_dir`` for these exact references/size/encoder, or build
        and save it. An unreadable cache entry is rebuilt (and logged), never trusted.

        References given as file paths are not even read when nothing changed: a small index entry
        maps their (path, size, mtime, ctime, inode) to the content key (`stat_index`). Otherwise
        (images, or changed files) the key is computed from the fitted pixels as always.
        """
        sources = reference_sources(references)
        identity = encoder.identity
        cache_dir = Path(cache_dir)
        index = stat_index(cache_dir, sources, size, identity)
        if index is not None:
            pool = cls._from_index(index, cache_dir, sources, size, identity)
            if pool is not None:
                return pool
        scan = _Pass(sources, size, keep_bytes=_KEEP_FITTED_BYTES, check_interrupt=check_interrupt)
        key = cls._key(scan, size, identity)
        scan.finish()
        path = cache_dir / f"pool-{key}.safetensors"
        if path.exists() and not path.is_file():  # found now, not after the embedding
            raise OutputError(f"cannot write {path}: it is a folder (or another non-file), not a pool cache file")
        if path.is_file():
            try:
                embeddings, metadata, _ = read_pool_file(path)
                pool = cls._checked(path, embeddings, metadata, sources, size, key, scan.digests)
                if index is not None and "reference_digests" not in metadata:  # an older entry: add the
                    save_quietly(pool, path)                                    # digests the index needs
                write_index(index, key)
                return pool
            except InputError as exc:
                logger.warning("rebuilding the reference pool cache entry %s: %s", path, exc)
        pool = cls._build(sources, encoder, size, scan.kept, progress, check_interrupt)
        pool.save(path)
        write_index(index, pool.content_key)
        return pool

    @classmethod
    def _from_index(cls, index: Path, cache_dir: Path, sources: list[ReferenceSource], size: PageSize,
                    identity: str) -> ReferencePool | None:
        """The pool an index entry points to, or None (a miss: the caller reads the references)."""
        try:
            key = read_index(index)
            if key is None:
                return None
            path = cache_dir / f"pool-{key}.safetensors"
            if not path.is_file():
                return None
            embeddings, metadata, saved_size = read_pool_file(path)
            digests = json.loads(metadata.get("reference_digests", "null"))
            if (saved_size != size or metadata["encoder_identity"] != identity or not isinstance(digests, list)
                    or len(digests) != len(sources)):
                return None
            return cls._checked(path, embeddings, metadata, sources, size, key, digests)
        except (OSError, ValueError, KeyError, TypeError, InputError) as exc:
            logger.debug("reference pool index %s not used: %s", index, exc)
            return None
