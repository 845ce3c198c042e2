"""Retrieval (RAP) against the outputs the original code produced on the parity cases."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorflow_core.images import list_image_files, load_image, process_image
from colorflow_core.retrieve.canvas import retrieve
from colorflow_core.retrieve.encoders import CLIPImageEncoder
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.retrieve.references import crop_patches
from colorflow_core.sizes import PageSize
from tests.support.parity import parity_params

EMBEDDING_TOL = 1e-4  # parity README: embeddings and similarities


def _size(case: Path) -> PageSize:
    meta = json.loads((case / "case.json").read_text())
    return PageSize(meta["target_width"], meta["target_height"])


def _references(case: Path) -> list[Image.Image]:
    files = [p for p in list_image_files(case / "inputs") if p.name.startswith("ref")]
    return [load_image(p) for p in files]


@lru_cache(maxsize=None)
def _run(case: Path):
    """Encoder, pool and result for a case, computed once per test session."""
    size = _size(case)
    encoder = CLIPImageEncoder.from_pretrained(case / "weights" / "image_encoder")
    pool = ReferencePool.build(_references(case), encoder, size)
    result = retrieve(load_image(case / "inputs" / "page.png"), pool, encoder, size, top_k=3)
    return encoder, pool, result


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("case", parity_params("sd"))
def test_fitted_query_images_pixel_exact(case):
    size = _size(case)
    page = load_image(case / "inputs" / "page.png")
    bw = process_image(page, size.width, size.height)
    vae = process_image(page, *size.guide)
    np.testing.assert_array_equal(np.asarray(bw), _png(case / "expected" / "query_image_bw.png"))
    np.testing.assert_array_equal(np.asarray(vae), _png(case / "expected" / "query_image_vae.png"))
    np.testing.assert_array_equal(np.asarray(_run(case)[2].query_image), np.asarray(bw))


@pytest.mark.parametrize("case", parity_params("sd"))
def test_embeddings_and_similarities(case):
    encoder, pool, result = _run(case)
    expected = case / "expected"
    query = encoder.embed(crop_patches(result.query_image, pool.size)).numpy()
    np.testing.assert_allclose(query, np.load(expected / "query_embeddings.npy"), rtol=0, atol=EMBEDDING_TOL)
    np.testing.assert_allclose(
        pool.embeddings.numpy(), np.load(expected / "reference_embeddings.npy"), rtol=0, atol=EMBEDDING_TOL
    )
    np.testing.assert_allclose(
        result.similarities.numpy(), np.load(expected / "cosine_similarities.npy"), rtol=0, atol=EMBEDDING_TOL
    )


@pytest.mark.parametrize("case", parity_params("sd"))
def test_patch_sizes_and_top_k_exact(case):
    _, pool, result = _run(case)
    recorded = json.loads((case / "expected" / "retrieval.json").read_text())
    query_patches = crop_patches(result.query_image, pool.size)
    assert [list(p.size) for p in query_patches] == recorded["query_patch_sizes"]
    assert [list(p.size) for p in pool.patches] == recorded["reference_patch_sizes"]
    assert result.top_k_indices.tolist() == recorded["top_k_indices"]


@pytest.mark.parametrize("case", parity_params("sd"))
def test_canvas_and_mask_pixel_exact(case):
    _, _, result = _run(case)
    np.testing.assert_array_equal(np.asarray(result.canvas), _png(case / "expected" / "canvas.png"))
    expected_mask = _png(case / "expected" / "canvas_mask.png")
    for channel in range(3):  # the original's mask is RGB with equal channels; ours is its 'L'
        np.testing.assert_array_equal(np.asarray(result.mask), expected_mask[..., channel])


@pytest.mark.parametrize("case", parity_params("pixart"))
def test_pixart_case_top_k_and_canvas(case):
    if not (case / "expected" / "canvas.png").is_file():
        pytest.skip(f"{case.name} records no canvas.png")
    _, _, result = _run(case)
    recorded = json.loads((case / "expected" / "retrieval.json").read_text())
    assert result.top_k_indices.tolist() == recorded["top_k_indices"]
    np.testing.assert_array_equal(np.asarray(result.canvas), _png(case / "expected" / "canvas.png"))
