"""Retrieval: patches, reference pools (build / save / load / cache), top-k, canvas, mask, encoders."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.retrieve.canvas import PLACEMENT_TABLE, canvas_mask, latent_mask, retrieve, retrieve_many
from colorflow_core.retrieve.encoders import CLIPImageEncoder, OpenCLIPImageEncoder, clip_preprocess
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.retrieve.references import REFERENCE_PATCH_KINDS, crop_patches
from colorflow_core.sizes import PRESETS, PageSize

SIZE = PageSize(64, 96)


def _random_image(seed: int, wh: tuple[int, int] = (70, 100), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    data = rng.integers(0, 256, (wh[1], wh[0], channels), dtype=np.uint8)
    # Smooth blobs so patches differ in content, not only in noise.
    data[: wh[1] // 2] //= 2
    return Image.fromarray(data.squeeze(-1) if channels == 1 else data)


class StatsEncoder:
    """Deterministic stand-in: per-channel means and stds of the image (identical images → identical
    vectors, bit for bit), with a call log."""

    def __init__(self, tag: str = "stats") -> None:
        self.identity = f"test-{tag}"
        self.calls: list[int] = []

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        self.calls.append(len(images))
        rows = []
        for img in images:
            data = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
            rows.append(np.concatenate([data.mean((0, 1)), data.std((0, 1)), [0.1]]))
        return torch.tensor(np.array(rows), dtype=torch.float32)

    def to(self, device):
        return self


class CountingEncoder:
    """Wraps a real encoder and counts its embed calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def identity(self) -> str:
        return self.inner.identity

    def embed(self, images):
        self.calls.append(len(images))
        return self.inner.embed(images)

    def to(self, device):
        self.inner.to(device)
        return self


def _tiny_clip(seed: int = 0, batch_size: int = 32) -> CLIPImageEncoder:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        image_size=224, patch_size=32, projection_dim=8,
    )
    return CLIPImageEncoder(CLIPVisionModelWithProjection(config), batch_size=batch_size)


@pytest.fixture(scope="module")
def clip_encoder() -> CLIPImageEncoder:
    return _tiny_clip()


@pytest.fixture()
def references() -> list[Image.Image]:
    return [_random_image(10 + i, (60 + 13 * i, 90 + 7 * i)) for i in range(3)]


# ---------------------------------------------------------------- patches

def test_crop_patches_offsets_row_major():
    data = np.arange(96 * 64, dtype=np.int32).reshape(96, 64)
    img = Image.fromarray(data)
    patches = crop_patches(img, SIZE)
    assert [p.size for p in patches] == [(48, 72)] * 4
    offsets = [(0, 0), (16, 0), (0, 24), (16, 24)]  # (x, y): TL, TR, BL, BR
    for patch, (x, y) in zip(patches, offsets):
        assert patch.getpixel((0, 0)) == data[y, x]


def test_pool_layout(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    assert len(pool) == 15 and pool.embeddings.shape == (15, 7)
    assert pool.reference_index == [0] * 5 + [1] * 5 + [2] * 5
    assert pool.patch_kind == list(REFERENCE_PATCH_KINDS) * 3
    assert pool.patches[5].size == (64, 96) and pool.patches[6].size == (48, 72)


def test_empty_pool_refused():
    with pytest.raises(InputError, match="the reference pool is empty: give at least one colour reference image"):
        ReferencePool.build([], StatsEncoder(), SIZE)


def test_reference_smaller_than_a_patch_is_upscaled():
    tiny = Image.new("RGB", (12, 10), (0, 200, 0))  # smaller than the 48x72 patch
    pool = ReferencePool.build([tiny], StatsEncoder(), SIZE)
    assert [p.size for p in pool.patches] == [(64, 96)] + [(48, 72)] * 4
    assert pool.patches[0].getpixel((32, 48)) == (0, 200, 0)


def test_bad_reference_is_named(references):
    with pytest.raises(InputError, match="colour reference 2: .*too small"):
        ReferencePool.build([references[0], Image.new("RGB", (1, 1))], StatsEncoder(), SIZE)


def test_references_of_any_mode(references):
    rgba = Image.new("RGBA", (64, 96), (0, 0, 0, 0))
    sixteen = Image.fromarray(np.full((96, 64), 257 * 90, dtype=np.uint16))
    palette = references[0].convert("P")
    cmyk = references[1].convert("CMYK")
    la = references[2].convert("LA")
    pool = ReferencePool.build([rgba, sixteen, palette, cmyk, la], StatsEncoder(), SIZE)
    assert len(pool) == 25 and all(p.mode == "RGB" for p in pool.patches)
    assert pool.patches[0].getpixel((1, 1)) == (255, 255, 255)  # transparent → white paper
    assert pool.patches[5].getpixel((1, 1)) == (90, 90, 90)


def test_build_progress_and_interrupt():
    refs = [_random_image(i, (64, 96)) for i in range(10)]
    seen = []
    ReferencePool.build(refs, StatsEncoder(), SIZE, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (10, 10) and all(t == 10 for _, t in seen)

    class Stop(Exception):
        pass

    def interrupt():
        raise Stop

    with pytest.raises(Stop):
        ReferencePool.build(refs, StatsEncoder(), SIZE, check_interrupt=interrupt)


# ---------------------------------------------------------------- retrieve

def test_retrieve_result_is_consistent(references, clip_encoder):
    pool = ReferencePool.build(references, clip_encoder, SIZE)
    page = _random_image(99, (100, 150), "L")
    result = retrieve(page, pool, clip_encoder, SIZE)
    assert result.query_image.size == (64, 96) and result.canvas.size == (128, 192) and result.mask.mode == "L"
    assert result.similarities.shape == (4, 15) and result.top_k_indices.shape == (4, 3)
    expected = torch.nn.functional.cosine_similarity(
        clip_encoder.embed(crop_patches(result.query_image, SIZE))[:, None], pool.embeddings[None], dim=-1
    )
    torch.testing.assert_close(result.similarities, expected)
    for q in range(4):
        ranked = sorted(range(15), key=lambda j: (-float(result.similarities[q, j]), j))[:3]
        assert result.top_k_indices[q].tolist() == ranked
    assert len(result.placements) == 12
    for p in result.placements:
        assert p.cell == PLACEMENT_TABLE[p.query_patch][p.rank]
        assert p.reference_index == p.pool_patch_index // 5
        assert p.patch_kind == REFERENCE_PATCH_KINDS[p.pool_patch_index % 5]
        assert p.score == pytest.approx(float(result.similarities[p.query_patch, p.pool_patch_index]))
    sheet = result.retrieval_sheet(max_side=96)
    assert max(sheet.size) == 96


def test_canvas_layout(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    page = _random_image(5, (64, 96))
    result = retrieve(page, pool, StatsEncoder(), SIZE)
    canvas = np.asarray(result.canvas)
    np.testing.assert_array_equal(canvas[48:144, 32:96], np.asarray(page))  # query at (W/2, H/2)
    for p in result.placements:
        row, col = p.cell
        cell = canvas[48 * row:48 * (row + 1), 32 * col:32 * (col + 1)]
        frame = np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]])
        assert (frame == 255).all(), "1-px white frame around every reference cell"
        pasted = pool.patches[p.pool_patch_index].resize((30, 46), Image.BICUBIC)
        np.testing.assert_array_equal(cell[1:-1, 1:-1], np.asarray(pasted))


def test_stable_tie_break_lower_index_first():
    ref = _random_image(3, (64, 96))
    pool = ReferencePool.build([ref, ref.copy()], StatsEncoder(), SIZE)  # patches j and j+5 tie exactly
    result = retrieve(_random_image(4, (64, 96)), pool, StatsEncoder(), SIZE)
    for q, row in enumerate(result.top_k_indices.tolist()):
        assert result.similarities[q, row[0]] == result.similarities[q, row[0] + 5]
        assert row[0] < 5 and row[1] == row[0] + 5, "of two equal scores the lower patch index comes first"


def test_top_k_bounds(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    page = _random_image(6, (64, 96))
    for bad in (0, 4, -1, 2.0):
        with pytest.raises(InputError, match="top_k"):
            retrieve(page, pool, StatsEncoder(), SIZE, top_k=bad)
    one = retrieve(page, pool, StatsEncoder(), SIZE, top_k=1)
    assert one.top_k_indices.shape == (4, 1) and len(one.placements) == 4
    canvas = np.asarray(one.canvas)
    for q in range(4):
        for row, col in PLACEMENT_TABLE[q][1:]:
            assert (canvas[48 * row:48 * (row + 1), 32 * col:32 * (col + 1)] == 255).all()


def test_pool_must_match_size_and_encoder(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    page = _random_image(7)
    with pytest.raises(InputError, match="built for pages of 64x96"):
        retrieve(page, pool, StatsEncoder(), PageSize(96, 64))
    with pytest.raises(InputError, match="another image encoder"):
        retrieve(page, pool, StatsEncoder("other"), SIZE)


def test_bad_pages_refused(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    with pytest.raises(InputError, match="page 2: .*too small"):
        retrieve_many([Image.new("L", (64, 96)), Image.new("L", (1, 1))], pool, StatsEncoder(), SIZE)
    strip = retrieve(Image.new("L", (400, 20), 90), pool, StatsEncoder(), SIZE)  # 20:1: centre-cropped
    assert set(strip.query_image.getdata()) == {(90, 90, 90)}


def test_retrieve_many_one_encoder_call(references, clip_encoder):
    pool = ReferencePool.build(references, clip_encoder, SIZE)
    pages = [_random_image(20 + i, (64, 96), "L") for i in range(3)]
    counting = CountingEncoder(clip_encoder)
    batch = retrieve_many(pages, pool, counting, SIZE)
    assert counting.calls == [12]
    for page, result in zip(pages, batch):
        single = retrieve(page, pool, clip_encoder, SIZE)
        assert single.top_k_indices.tolist() == result.top_k_indices.tolist()
        torch.testing.assert_close(single.similarities, result.similarities, atol=1e-5, rtol=0)
        assert single.canvas.tobytes() == result.canvas.tobytes()
    assert retrieve_many([], pool, clip_encoder, SIZE) == []


# ---------------------------------------------------------------- mask

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_latent_mask_binary_at_official_sizes(name):
    size = PRESETS[name]
    mask = canvas_mask(size)
    assert mask.mode == "L" and mask.size == size.canvas
    latent = latent_mask(mask, size.latent)
    h, w = size.latent
    assert latent.shape == (1, 1, h, w) and latent.dtype == torch.float32
    expected = torch.ones(1, 1, h, w)
    expected[..., size.height // 16:3 * size.height // 16, size.width // 16:3 * size.width // 16] = 0
    torch.testing.assert_close(latent, expected, atol=0, rtol=0)  # the mask is exactly binary


def test_mask_from_rgb_uses_red_channel():
    size = PageSize(64, 96)
    gray = canvas_mask(size)
    torch.testing.assert_close(latent_mask(gray.convert("RGB"), size.latent), latent_mask(gray, size.latent))
    assert gray.getpixel((64, 96)) == 255 and gray.getpixel((0, 0)) == 0


# ---------------------------------------------------------------- save / load / cache

def test_save_load_roundtrip(tmp_path, references, clip_encoder):
    pool = ReferencePool.build(references, clip_encoder, SIZE)
    path = tmp_path / "pool.safetensors"
    pool.save(path)
    loaded = ReferencePool.load(path, references)
    assert torch.equal(loaded.embeddings, pool.embeddings)
    assert loaded.content_key == pool.content_key and loaded.size == SIZE
    assert [p.tobytes() for p in loaded.patches] == [p.tobytes() for p in pool.patches]
    page = _random_image(30, (80, 120), "L")
    a, b = retrieve(page, pool, clip_encoder, SIZE), retrieve(page, loaded, clip_encoder, SIZE)
    assert a.top_k_indices.tolist() == b.top_k_indices.tolist()
    assert torch.equal(a.similarities, b.similarities)
    assert a.canvas.tobytes() == b.canvas.tobytes()


def test_load_refuses_other_references_and_bad_files(tmp_path, references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    path = tmp_path / "pool.safetensors"
    pool.save(path)
    with pytest.raises(InputError, match="other reference images"):
        ReferencePool.load(path, references[:2])
    changed = [r.copy() for r in references]
    changed[1].putpixel((3, 3), (1, 2, 3))
    with pytest.raises(InputError, match="other reference images"):
        ReferencePool.load(path, changed)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match="broken.safetensors"):
        ReferencePool.load(broken, references)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"embeddings": torch.zeros(15, 7)}, str(foreign))
    with pytest.raises(InputError, match="not a ColorFlow reference pool"):
        ReferencePool.load(foreign, references)


def test_cache_reuses_and_reembeds_on_change(tmp_path, references, clip_encoder):
    counting = CountingEncoder(clip_encoder)
    first = ReferencePool.cached(references, counting, SIZE, tmp_path)
    assert sum(counting.calls) == 15
    again = ReferencePool.cached([r.copy() for r in references], counting, SIZE, tmp_path)
    assert sum(counting.calls) == 15, "encoder must not run again for the same references"
    assert torch.equal(again.embeddings, first.embeddings)
    cropped_away = [r.copy() for r in references]
    cropped_away[2].putpixel((0, 0), (255, 0, 255))  # 86x104 is centre-cropped: this pixel is never seen
    ReferencePool.cached(cropped_away, counting, SIZE, tmp_path)
    assert sum(counting.calls) == 15, "the key covers what is embedded: the fitted references"
    changed = [r.copy() for r in references]
    changed[2].putpixel((43, 52), (255, 0, 255))
    ReferencePool.cached(changed, counting, SIZE, tmp_path)
    assert sum(counting.calls) == 30
    ReferencePool.cached(references, counting, PageSize(96, 64), tmp_path)
    assert sum(counting.calls) == 45
    other = CountingEncoder(_tiny_clip(seed=1))
    ReferencePool.cached(references, other, SIZE, tmp_path)
    assert sum(other.calls) == 15, "another encoder's weights must not reuse the cache"
    assert len(list(tmp_path.glob("pool-*.safetensors"))) == 4


def test_cache_rebuilds_corrupt_entry(tmp_path, references):
    encoder = StatsEncoder()
    pool = ReferencePool.cached(references, encoder, SIZE, tmp_path)
    (entry,) = tmp_path.glob("pool-*.safetensors")
    entry.write_bytes(b"garbage")
    rebuilt = ReferencePool.cached(references, encoder, SIZE, tmp_path)
    assert len(encoder.calls) == 2 and torch.equal(rebuilt.embeddings, pool.embeddings)
    assert ReferencePool.load(entry, references).content_key == pool.content_key


# ---------------------------------------------------------------- encoders

def test_clip_preprocess_matches_transformers_pil_backend():
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL implementation
        from transformers import CLIPImageProcessor as Processor
    processor = Processor()
    images = [
        _random_image(40, (48, 72)),
        _random_image(41, (600, 384)),
        _random_image(42, (300, 300)),
        _random_image(43, (100, 50), "L"),
    ]
    expected = processor(images, return_tensors="pt").pixel_values
    ours = torch.from_numpy(np.stack([clip_preprocess(img) for img in images]))
    assert ours.shape == (4, 3, 224, 224)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_clip_encoder_batches(references):
    encoder = _tiny_clip(batch_size=2)
    sizes = []
    encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    images = [_random_image(i, (40, 60)) for i in range(5)]
    out = encoder.embed(images)
    assert sizes == [2, 2, 1] and out.shape == (5, 8) and out.dtype == torch.float32
    whole = _tiny_clip(batch_size=32).embed(images)
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="batch_size"):
        _tiny_clip(batch_size=0)


def test_clip_identity_follows_weights_and_dtype():
    a, b, c = _tiny_clip(seed=0), _tiny_clip(seed=0), _tiny_clip(seed=1)
    assert a.identity == b.identity != c.identity
    from transformers import CLIPVisionModelWithProjection

    half = CLIPImageEncoder(CLIPVisionModelWithProjection(a.model.config), dtype=torch.bfloat16)
    half.model.load_state_dict(a.model.state_dict())
    assert half.identity != a.identity


def test_clip_from_pretrained_roundtrip_and_errors(tmp_path):
    encoder = _tiny_clip()
    encoder.model.save_pretrained(tmp_path / "image_encoder")
    loaded = CLIPImageEncoder.from_pretrained(tmp_path / "image_encoder")
    assert loaded.identity == encoder.identity
    with pytest.raises(WeightsError, match="no config.json"):
        CLIPImageEncoder.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(encoder.model.config.to_dict()))
    with pytest.raises(WeightsError, match="could not load"):
        CLIPImageEncoder.from_pretrained(tmp_path / "empty")


@pytest.fixture(scope="module")
def tiny_open_clip_name(tmp_path_factory) -> str:
    import open_clip

    name = "colorflow-test-tiny-vit"
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip") / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def test_open_clip_encoder_end_to_end(tmp_path, references, tiny_open_clip_name):
    torch.manual_seed(0)
    encoder = OpenCLIPImageEncoder(tiny_open_clip_name)
    pool = ReferencePool.build(references, encoder, SIZE)
    assert pool.embeddings.shape == (15, 16)
    result = retrieve(_random_image(50, (64, 96), "L"), pool, encoder, SIZE, top_k=2)
    assert result.top_k_indices.shape == (4, 2) and result.canvas.size == (128, 192)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(encoder.model.state_dict(), checkpoint)
    reloaded = OpenCLIPImageEncoder(tiny_open_clip_name, pretrained=checkpoint)
    assert reloaded.identity == encoder.identity and reloaded.identity.startswith("open-clip[")
    torch.testing.assert_close(reloaded.embed(pool.patches[:3]), pool.embeddings[:3])
    with pytest.raises(WeightsError, match="could not create open_clip model"):
        OpenCLIPImageEncoder(tiny_open_clip_name, pretrained=tmp_path / "missing.pt")
