"""The reference pool's on-disk cache: the pool file format (safetensors: embeddings + metadata), writing
and reading one, and the file-stat index that maps reference files (path, size, times, inode) to a pool's content
key so a cache hit on files reads none of them.

Its own module because the file formats and the index are about the cache directory, not about building
or using a pool; `ReferencePool` calls these to save, load and look pools up.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ..errors import InputError, OutputError
from ..files import write_bytes_atomic
from ..sizes import PageSize
from .references import ReferenceSource

if TYPE_CHECKING:
    from .pool import ReferencePool

logger = logging.getLogger(__name__)

POOL_FORMAT = "colorflow-reference-pool/1"
INDEX_FORMAT = "colorflow-reference-pool-index/1"


def stat_index(cache_dir: Path, sources: list[ReferenceSource], size: PageSize, identity: str) -> Path | None:
    """The index entry for references given as files, named by a hash of each file's resolved path,
    size, modification and change times and inode (any edit, copy or replacement changes one of them;
    a rename or ``touch`` only costs a re-read). None when a reference is an image or cannot be stat'ed."""
    digest = hashlib.sha256(f"{INDEX_FORMAT}|{size}|{identity}|{len(sources)}".encode())
    for source in sources:
        if not source.from_path:
            return None
        try:
            st = os.stat(source.path)  # type: ignore[arg-type]
            resolved = os.path.realpath(source.path)  # type: ignore[arg-type]
        except OSError:
            return None
        digest.update(f"|{resolved}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}".encode())
    return cache_dir / f"index-{digest.hexdigest()}.json"


def read_index(index: Path) -> str | None:
    """The content key an index entry records, or None when it is not a usable entry. Raises what reading
    and parsing it raise (OSError, ValueError, KeyError, TypeError): the caller treats those as a miss."""
    entry = json.loads(index.read_text(encoding="utf-8"))
    key = entry["content_key"]
    if entry.get("format") != INDEX_FORMAT or not isinstance(key, str) or not key.isalnum():
        return None
    return key


def write_index(index: Path | None, key: str) -> None:
    if index is None:
        return
    try:
        write_bytes_atomic(index, json.dumps({"format": INDEX_FORMAT, "content_key": key}).encode())
    except OutputError as exc:  # only a speed-up (e.g. a read-only shared cache): the next run reads the references
        logger.debug("could not write the reference pool index %s: %s", index, exc)


def save_quietly(pool: ReferencePool, path: Path) -> None:
    try:
        pool.save(path)
    except OutputError as exc:
        logger.debug("could not update the reference pool cache entry %s: %s", path, exc)


def write_pool_file(path: str | os.PathLike, embeddings: torch.Tensor, size: PageSize, content_key: str,
                    encoder_identity: str, reference_digests: list[str] | None) -> None:
    """Write a pool's embeddings + metadata as safetensors, atomically (`files.write_bytes_atomic`).
    `OutputError` when it cannot be written."""
    metadata = {
        "format": POOL_FORMAT,
        "width": str(size.width),
        "height": str(size.height),
        "content_key": content_key,
        "encoder_identity": encoder_identity,
    }
    if reference_digests is not None:
        metadata["reference_digests"] = json.dumps(reference_digests)
    data = safetensors_bytes({"embeddings": embeddings.detach().cpu().contiguous()}, metadata=metadata)
    write_bytes_atomic(path, data)


def read_pool_file(path: Path) -> tuple[torch.Tensor, dict[str, str], PageSize]:
    """Embeddings, metadata and page size of a saved pool, or InputError when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings") if "embeddings" in handle.keys() else None
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path} is not a readable reference pool file: {exc}") from exc
    required = ("width", "height", "content_key", "encoder_identity")
    if metadata.get("format") != POOL_FORMAT or embeddings is None or not all(k in metadata for k in required):
        raise InputError(f"{path} is not a ColorFlow reference pool file")
    try:
        size = PageSize(int(metadata["width"]), int(metadata["height"]))
    except (ValueError, InputError) as exc:
        raise InputError(f"{path} records an unusable page size: {exc}") from exc
    return embeddings, metadata, size
