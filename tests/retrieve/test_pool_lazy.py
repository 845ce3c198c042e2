"""Large pools: a pool keeps embeddings + sources, cuts patches on demand, and a cache hit on
reference files reads none of them."""
from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.images import load_image
from colorflow_core.retrieve import references as references_module
from colorflow_core.retrieve.canvas import retrieve
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.retrieve.references import PATCHES_PER_REFERENCE, reference_patch_boxes, reference_patches
from colorflow_core.sizes import PageSize
from tests.retrieve.test_retrieval import StatsEncoder, _random_image

SIZE = PageSize(64, 96)


@pytest.fixture()
def ref_files(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    paths = []
    for i in range(5):
        path = folder / f"ref{i}.png"
        _random_image(60 + i, (70 + 9 * i, 100 + 5 * i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def loads(monkeypatch):
    """Counts the files the pool decodes (`references` reads them)."""
    seen: list[str] = []
    real = references_module.load_image

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(references_module, "load_image", counting)
    return seen


def _expected_patches(paths):
    return [p for path in paths for p in reference_patches(load_image(path), SIZE)]


def test_patch_boxes_match_the_cut():
    fitted = _random_image(1, (64, 96))
    boxes = reference_patch_boxes(SIZE)
    assert len(boxes) == PATCHES_PER_REFERENCE and boxes[0] == (0, 0, 64, 96)
    for box, patch in zip(boxes, reference_patches(fitted, SIZE)):
        assert fitted.crop(box).tobytes() == patch.tobytes()


def test_pool_from_files_keeps_no_images_and_cuts_exact_patches(ref_files, loads):
    encoder = StatsEncoder()
    pool = ReferencePool.build(ref_files, encoder, SIZE)
    assert loads == [p.name for p in ref_files], "each file read once while building"
    assert all(s.image is None for s in pool.sources) and not pool._fitted
    assert [pool.reference_path(i) for i in range(5)] == ref_files
    expected = _expected_patches(ref_files)
    assert len(pool) == len(expected) == 25
    assert [pool.patch(i).tobytes() for i in range(25)] == [p.tobytes() for p in expected]
    assert [p.tobytes() for p in pool.patches] == [p.tobytes() for p in expected]
    images = ReferencePool.build([load_image(p) for p in ref_files], StatsEncoder(), SIZE)
    assert images.content_key == pool.content_key and torch.equal(images.embeddings, pool.embeddings)
    with pytest.raises(IndexError):
        pool.patch(25)


def test_patch_cache_is_bounded(ref_files, loads):
    pool = ReferencePool.build(ref_files, StatsEncoder(), SIZE)
    pool.cache_references = 2
    loads.clear()
    for index in range(len(pool)):
        pool.patch(index)
        assert len(pool._fitted) <= 2
    assert loads == [p.name for p in ref_files], "patches of one reference share one read"
    pool.patch(0)
    assert len(loads) == 6, "evicted: read again"


def test_images_read_from_files_are_not_kept_alive(ref_files, loads):
    images = [load_image(p) for p in ref_files]
    pool = ReferencePool.build(images, StatsEncoder(), SIZE)
    assert loads == [] and all(s.image is None for s in pool.sources)
    first = pool.patch(7).tobytes()  # the caller still holds the images: no read
    assert loads == []
    del images
    gc.collect()
    pool._fitted.clear()
    assert pool.patch(7).tobytes() == first and loads == ["ref1.png"]


def test_images_made_in_memory_are_kept():
    refs = [_random_image(i, (64, 96)) for i in range(2)]
    pool = ReferencePool.build(refs, StatsEncoder(), SIZE)
    assert [s.image for s in pool.sources] == refs
    assert pool.patch(5).tobytes() == reference_patches(refs[1], SIZE)[0].tobytes()


def test_changed_or_missing_reference_file_is_an_input_error(ref_files):
    pool = ReferencePool.build(ref_files, StatsEncoder(), SIZE)
    _random_image(99, (80, 110)).save(ref_files[1])
    with pytest.raises(InputError, match=r"colour reference 2 \(.*ref1.png\) changed since the reference pool"):
        pool.patch(5)
    ref_files[2].unlink()
    with pytest.raises(InputError, match="colour reference 3: image file not found: .*ref2.png"):
        pool.patch(10)
    assert pool.patch(0).size == (64, 96)


def test_canvas_from_a_file_pool_matches_an_image_pool(ref_files):
    page = _random_image(5, (64, 96), "L")
    from_files = retrieve(page, ReferencePool.build(ref_files, StatsEncoder(), SIZE), StatsEncoder(), SIZE)
    in_memory = [reference_patches(load_image(p), SIZE)[0].copy() for p in ref_files]  # no file attached
    from_images = retrieve(page, ReferencePool.build(in_memory, StatsEncoder(), SIZE), StatsEncoder(), SIZE)
    assert from_files.top_k_indices.tolist() == from_images.top_k_indices.tolist()
    assert from_files.canvas.tobytes() == from_images.canvas.tobytes()


def test_cache_hit_on_files_reads_no_reference(tmp_path, ref_files, loads):
    encoder = StatsEncoder()
    cache = tmp_path / "cache"
    first = ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert sum(encoder.calls) == 25 and len(loads) == 5, "cold: read once (kept between key and embedding)"
    assert len(list(cache.glob("index-*.json"))) == 1
    loads.clear()
    again = ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert loads == [] and sum(encoder.calls) == 25, "warm: no reference decoded, nothing embedded"
    assert again.content_key == first.content_key and torch.equal(again.embeddings, first.embeddings)
    assert again.patch(12).tobytes() == first.patch(12).tobytes()
    # same pixels, new times: read again (the key is by content), not embedded again
    os.utime(ref_files[0], ns=(1, 1))
    loads.clear()
    ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert len(loads) == 5 and sum(encoder.calls) == 25
    loads.clear()
    ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert loads == [], "the new times are indexed"
    # new pixels: embedded again
    _random_image(77, (70, 100)).save(ref_files[0])
    ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert sum(encoder.calls) == 50
    # images (not paths) always hash their pixels, and reuse the same entry
    loads.clear()
    images = ReferencePool.cached([load_image(p) for p in ref_files], encoder, SIZE, cache)
    assert sum(encoder.calls) == 50 and len(list(cache.glob("pool-*.safetensors"))) == 2
    assert images.content_key != first.content_key


def test_index_never_trusted_against_the_pool_file(tmp_path, ref_files, loads):
    encoder = StatsEncoder()
    cache = tmp_path / "cache"
    pool = ReferencePool.cached(ref_files, encoder, SIZE, cache)
    (index,) = cache.glob("index-*.json")
    (entry,) = cache.glob("pool-*.safetensors")
    for bad in ('{"format": "colorflow-reference-pool-index/1", "content_key": "../x"}', "garbage", "[]"):
        index.write_text(bad)
        loads.clear()
        assert ReferencePool.cached(ref_files, encoder, SIZE, cache).content_key == pool.content_key
        assert len(loads) == 5 and sum(encoder.calls) == 25
    entry.unlink()
    loads.clear()
    ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert sum(encoder.calls) == 50, "an index pointing to a missing entry is a miss"


def test_older_cache_entry_without_digests_is_used_and_upgraded(tmp_path, ref_files, loads):
    encoder = StatsEncoder()
    cache = tmp_path / "cache"
    pool = ReferencePool.build(ref_files, encoder, SIZE)
    pool.reference_digests = None
    pool.save(cache / f"pool-{pool.content_key}.safetensors")
    loaded = ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert sum(encoder.calls) == 25 and loaded.content_key == pool.content_key
    loads.clear()
    ReferencePool.cached(ref_files, encoder, SIZE, cache)
    assert loads == [] and sum(encoder.calls) == 25


def test_load_from_files_checks_the_key(tmp_path, ref_files):
    pool = ReferencePool.build(ref_files, StatsEncoder(), SIZE)
    path = tmp_path / "pool.safetensors"
    pool.save(path)
    loaded = ReferencePool.load(path, ref_files)
    assert loaded.reference_digests == pool.reference_digests
    with pytest.raises(InputError, match="other reference images"):
        ReferencePool.load(path, ref_files[::-1])


def test_build_reads_references_a_few_at_a_time(tmp_path, monkeypatch):
    """Building never holds more than one encoder call's references (8) plus the one being read."""
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for i in range(20):
        paths.append(folder / f"r{i}.png")
        _random_image(i, (64, 96)).save(paths[-1])
    live: list[int] = []
    alive = set()
    real = references_module.load_image

    def tracking(path):
        image = real(path)
        alive.add(id(image))
        import weakref
        weakref.finalize(image, alive.discard, id(image))
        live.append(len(alive))
        return image

    monkeypatch.setattr(references_module, "load_image", tracking)
    ReferencePool.build(paths, StatsEncoder(), SIZE)
    assert max(live) <= 2, "a decoded file is dropped once fitted"


def test_bad_reference_types_and_empty_pool():
    with pytest.raises(InputError, match="colour reference 1: expected an image or an image file path"):
        ReferencePool.build([42], StatsEncoder(), SIZE)  # type: ignore[list-item]
    with pytest.raises(InputError, match="the reference pool is empty"):
        ReferencePool.build([], StatsEncoder(), SIZE)


def test_saved_metadata_has_one_digest_per_reference(tmp_path, ref_files):
    from safetensors import safe_open

    pool = ReferencePool.build(ref_files, StatsEncoder(), SIZE)
    path = tmp_path / "p.safetensors"
    pool.save(path)
    with safe_open(str(path), framework="pt") as handle:
        digests = json.loads(handle.metadata()["reference_digests"])
    assert digests == pool.reference_digests and len(digests) == 5 and len(set(digests)) == 5


def test_retrieval_works_on_a_large_pool_of_small_files(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    paths = []
    for i in range(40):
        paths.append(folder / f"r{i}.png")
        Image.fromarray(np.full((96, 64, 3), (i * 6, 255 - i * 6, (i * 37) % 256), np.uint8)).save(paths[-1])
    pool = ReferencePool.build(paths, StatsEncoder(), SIZE)
    target = Image.open(paths[23]).convert("L")
    result = retrieve(target, pool, StatsEncoder(), SIZE)
    assert len(pool._fitted) <= pool.cache_references
    assert result.canvas.size == SIZE.canvas


def test_prefetch_fills_the_cache_in_parallel(ref_files, loads):
    pool = ReferencePool.build(ref_files, StatsEncoder(), SIZE)
    loads.clear()
    pool.prefetch([0, 6, 7, 23, 11], workers=3)
    assert sorted(loads) == ["ref0.png", "ref1.png", "ref2.png", "ref4.png"]
    assert set(pool._fitted) == {0, 1, 2, 4}
    loads.clear()
    expected = _expected_patches(ref_files)
    assert pool.patch(23).tobytes() == expected[23].tobytes() and loads == []
    pool.prefetch([24, 3], workers=1)
    assert loads == [], "already cached"
    ref_files[3].unlink()
    with pytest.raises(InputError, match="ref3.png"):
        pool.prefetch([15, 0])


def test_pool_pickles_and_deep_copies(ref_files):
    import copy
    import pickle

    images = [load_image(p) for p in ref_files[:2]] + [_random_image(8, (64, 96))]
    pool = ReferencePool.build(images + ref_files[2:], StatsEncoder(), SIZE)
    pool.patch(0)
    for clone in (pickle.loads(pickle.dumps(pool)), copy.deepcopy(pool)):
        assert not clone._fitted and torch.equal(clone.embeddings, pool.embeddings)
        assert [clone.patch(i).tobytes() for i in range(len(pool))] == [pool.patch(i).tobytes() for i in range(len(pool))]
