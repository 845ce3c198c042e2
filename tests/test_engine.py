"""The ColorFlow facade: settings validation, loading errors, and the whole chain on the parity cases."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.engine import ColorFlow, ColorizeSettings, PageResult
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.images import list_image_files, load_image
from colorflow_core.runtime.seeding import GSRP_SEED_OFFSET
from colorflow_core.sizes import PageSize
from colorflow_core.upscale.decoder import centre_crop, guided_decode, to_model_input, to_uint8_image
from tests.support.parity import parity_params

# ---- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"steps": 0}, {"steps": 10000}, {"steps": 2.5}, {"steps": True},
    {"guider_strength": -1.0}, {"guider_strength": math.nan}, {"guider_strength": math.inf}, {"guider_strength": 6.0},
    {"cfg": math.nan}, {"cfg": -0.5}, {"cfg": 31.0},
    {"top_k": 5}, {"top_k": 0}, {"seed": -1}, {"seed": 2**64}, {"batch_size": 0},
    {"generator_device": "nonsense"},
])
def test_bad_settings_raise_input_error(bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(InputError, match=name):
        ColorizeSettings(**bad).validate()


def test_cuda_generator_without_a_gpu_is_a_clear_input_error(monkeypatch) -> None:
    """generator_device "cuda" needs a GPU torch can use: without one (forced here, so the test means the
    same on a GPU machine) an InputError says so and names the way out, for settings and both stages."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = "generator_device 'cuda' needs an NVIDIA GPU.*use 'cpu'"
    with pytest.raises(InputError, match=message):
        ColorizeSettings(generator_device="cuda").validate()
    engine = ColorFlow.__new__(ColorFlow)  # the checks come before any network is touched
    with pytest.raises(InputError, match=message):
        engine.prepare([], None, PageSize(64, 64), generator_device="cuda")
    with pytest.raises(InputError, match=message):
        engine.upscale([], [], generator_device="cuda")
    ColorizeSettings(generator_device="cpu").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ColorizeSettings(generator_device="cuda").validate()  # with a GPU it is a valid choice


def test_default_and_edge_settings_are_accepted() -> None:
    ColorizeSettings().validate()
    ColorizeSettings(steps=1, cfg=0.0, guider_strength=0.0, top_k=1, seed=0, batch_size=1).validate()
    ColorizeSettings(steps=200, cfg=30, guider_strength=5, top_k=3, seed=2**63 - 1).validate()


def test_device_and_dtype_are_checked_before_anything_loads(tmp_path: Path) -> None:
    """performance.resolve_device / resolve_dtype decide (tests/test_performance.py has their rules);
    a bad choice is an InputError even when the release folder is empty."""
    with pytest.raises(InputError, match="dtype"):
        ColorFlow.load("screenstyle", tmp_path, device="cpu", dtype="fp8")
    with pytest.raises(InputError, match="float16"):  # fp16 on the CPU is refused, not run slowly
        ColorFlow.load("screenstyle", tmp_path, device="cpu", dtype="fp16")
    with pytest.raises(InputError, match="device"):
        ColorFlow.load("screenstyle", tmp_path, device="tpu")


# ---- loading errors ----------------------------------------------------------------------------


def test_unknown_style_and_encoder() -> None:
    with pytest.raises(InputError, match="style"):
        ColorFlow.load("watercolor", device="cpu")
    with pytest.raises(InputError, match="encoder"):
        ColorFlow.load("screenstyle", device="cpu", encoder="dino")


def test_missing_release_files_are_listed_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        ColorFlow.load("screenstyle", tmp_path, device="cpu")
    message = str(info.value)
    for needed in ("GraySD/config.json", "GraySD/unet_lora.bin", "MultiResNetModel.bin", "image_encoder",
                   "ScreenStyle"):
        assert needed in message


@pytest.mark.parametrize("case", parity_params("sd"))
def test_screentone_needs_the_screenstyle_weights(case: Path) -> None:
    """The sd cases ship no ScreenStyle networks: screentone=True must say so, not fall back."""
    with pytest.raises(WeightsError, match="ScreenStyle") as info:
        ColorFlow.load("screenstyle", case / "weights", case / "weights" / "base", device="cpu", screentone=True)
    assert "--no-screentone" in str(info.value)


# ---- the whole chain on the parity cases ---------------------------------------------------------


@pytest.fixture(scope="module", params=parity_params("sd"))
def loaded(request):
    case: Path = request.param
    meta = json.loads((case / "case.json").read_text())
    engine = ColorFlow.load("screenstyle", case / "weights", case / "weights" / "base", device="cpu",
                            screentone=False)
    size = PageSize(meta["target_width"], meta["target_height"])
    refs = [load_image(p) for p in list_image_files(case / "inputs") if p.name.startswith("ref")]
    return case, meta, engine, size, engine.reference_pool(refs, size)


def _levels(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))


def test_engine_reproduces_the_original_end_to_end(loaded) -> None:
    case, meta, engine, size, pool = loaded
    expected = case / "expected"
    page = load_image(case / "inputs" / "page.png")

    [ctx] = engine.prepare([page], pool, size, top_k=3, seed=meta["seed"], names=["page"])
    recorded = json.loads((expected / "retrieval.json").read_text())
    assert ctx.retrieval.top_k_indices.tolist() == recorded["top_k_indices"]
    assert _levels(ctx.retrieval.canvas, Image.open(expected / "canvas.png")).max() == 0
    assert _levels(ctx.guide, Image.open(expected / "query_image_vae.png")).max() == 0
    assert ctx.name == "page" and ctx.guide.size == size.guide

    settings = ColorizeSettings(steps=meta["steps"], seed=meta["seed"])
    [canvas] = engine.colorize([ctx], settings)
    diff = _levels(canvas, Image.open(expected / "pipeline_image.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01

    gsrp_input = centre_crop(canvas).resize(size.guide, Image.Resampling.BICUBIC)
    diff = _levels(gsrp_input, Image.open(expected / "gsrp_input_color.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01

    [result] = engine.upscale([ctx], [canvas], seed=meta["seed"])
    assert result.size == size.guide and result.mode == "RGB"
    # The fixture's GSRP latent came from a different RNG state (README); ours is the posterior sampled
    # with Generator().manual_seed(seed + 5): recompute that independently from the same networks.
    color, guide = (to_model_input(img, "cpu", torch.float32) for img in (gsrp_input, ctx.guide))
    with torch.no_grad():
        mean_run = guided_decode(engine.upscaler.vae, engine.upscaler.fusion, color, guide)
        posterior = engine.upscaler.vae.encode(color).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(meta["seed"] + GSRP_SEED_OFFSET))
    with torch.no_grad():
        sampled = guided_decode(engine.upscaler.vae, engine.upscaler.fusion, color, guide,
                                latent=posterior.mean + posterior.std * eps)
    assert _levels(result, to_uint8_image(sampled.image[0])).max() <= 1
    assert _levels(result, to_uint8_image(mean_run.image[0])).max() > 0  # the sample, not the mean

    # the W x H page itself gives what its whole canvas gives
    [from_page] = engine.upscale([ctx], [centre_crop(canvas)], seed=meta["seed"])
    assert _levels(from_page, result).max() == 0

    # run() chains the same stages with the same seeds
    [full] = engine.run([page], pool, size, settings, names=["page"])
    assert isinstance(full, PageResult) and full.name == "page"
    assert _levels(full.canvas, canvas).max() == 0 and _levels(full.image, result).max() == 0


def test_page_seeds_follow_the_page_index(loaded) -> None:
    """Page i of a call uses seed + i: the second page of a call from seed s is the first of a call from s + 1."""
    case, meta, engine, size, pool = loaded
    page = load_image(case / "inputs" / "page.png")
    settings = ColorizeSettings(steps=1, seed=4)
    calls: list[tuple[int, int]] = []
    both = engine.run([page, page], pool, size, settings, progress=lambda d, t: calls.append((d, t)))
    [second] = engine.run([page], pool, size, ColorizeSettings(steps=1, seed=5))
    # batch-of-2 vs batch-of-1 float noise (≤1e-4) may flip an 8-bit rounding here and there
    same = _levels(both[1].image, second.image)
    assert same.max() <= 1 and (same > 0).mean() < 0.01
    assert _levels(both[0].image, second.image).max() > 8
    assert calls[-1] == (2 * (1 + 2), 2 * (1 + 2))  # prepare + pages x steps + GSRP
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_stage_inputs_are_checked(loaded) -> None:
    case, meta, engine, size, pool = loaded
    page = load_image(case / "inputs" / "page.png")
    with pytest.raises(InputError, match="top_k"):
        engine.prepare([page], pool, size, top_k=5)
    with pytest.raises(InputError, match="steps"):
        engine.colorize([], ColorizeSettings(steps=0))
    [ctx] = engine.prepare([page], pool, size)
    with pytest.raises(InputError, match="canvases"):
        engine.upscale([ctx], [])
    with pytest.raises(InputError, match="expected"):
        engine.upscale([ctx], [Image.new("RGB", (64, 64))])
    with pytest.raises(InputError, match="names"):
        engine.prepare([page], pool, size, names=["a", "b"])


def test_to_and_free_keep_the_engine_usable(loaded) -> None:
    _, _, engine, _, _ = loaded
    assert engine.offload.mode == "none"  # a CPU has no memory budget: everything stays resident
    assert engine.to("cpu") is engine
    engine.free()
    assert engine.device == torch.device("cpu") and engine.offload.mode == "none"
    assert next(engine.pipeline.unet.parameters()).device.type == "cpu"


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_engine_gives_the_same_pages(loaded, mode: str) -> None:
    """Offload hooks (forced here; a CPU never needs them) change placement only: same pool identity,
    canvases and pages as the resident engine; `to()` takes the hooks off."""
    from colorflow_core.runtime import performance

    case, meta, engine, size, pool = loaded
    page = load_image(case / "inputs" / "page.png")
    settings = ColorizeSettings(steps=1, seed=meta["seed"])
    [want] = engine.run([page], pool, size, settings)
    other = ColorFlow.load("screenstyle", case / "weights", case / "weights" / "base", device="cpu",
                           screentone=False, speed=performance.SpeedOptions(offload=mode))
    assert other.offload.mode == mode and other.encoder.identity == engine.encoder.identity
    refs = [load_image(p) for p in list_image_files(case / "inputs") if p.name.startswith("ref")]
    other_pool = other.reference_pool(refs, size)  # the image encoder runs under the hooks too
    assert torch.equal(other_pool.embeddings, pool.embeddings)
    [got] = other.run([page], other_pool, size, settings)
    assert _levels(got.canvas, want.canvas).max() == 0 and _levels(got.image, want.image).max() == 0
    other.to("cpu")
    assert other.offload.mode == "none"
    assert all(p.device.type == "cpu" for net in other.networks().values() for p in net.parameters())


def test_networks_are_every_net_once_and_no_text_encoder(loaded) -> None:
    from transformers import CLIPTextModel

    _, _, engine, _, _ = loaded
    nets = engine.networks()
    assert nets["unet"] is engine.pipeline.unet and nets["vae"] is engine.upscaler.vae
    assert nets["image_encoder"] is engine.encoder.model and nets["fusion"] is engine.upscaler.fusion
    assert len({id(n) for n in nets.values()}) == len(nets)
    assert not any(isinstance(m, CLIPTextModel) for net in nets.values() for m in net.modules())
    assert not any(isinstance(v, CLIPTextModel) for v in vars(engine.pipeline).values())


def test_a_bfloat16_engine_runs_the_whole_chain_close_to_float32(loaded) -> None:
    """The reduced-precision path a GPU takes (fp16 there; bf16 is what a CPU can run): every dtype
    hand-over (VAE, guider residuals, LoRA, fusion, scheduler) works, CLIP stays fp32 so the retrieval
    is the same, and the pages stay close to fp32's (bf16 keeps 8 bits of mantissa)."""
    case, meta, engine, size, pool = loaded
    half = ColorFlow.load("screenstyle", case / "weights", case / "weights" / "base", device="cpu", dtype="bf16",
                          screentone=False)
    nets = half.networks()
    assert {p.dtype for name in ("unet", "guider", "vae", "fusion") for p in nets[name].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in nets["image_encoder"].parameters()} == {torch.float32}
    page = load_image(case / "inputs" / "page.png")
    settings = ColorizeSettings(steps=meta["steps"], seed=meta["seed"])
    [want] = engine.run([page], pool, size, settings)
    half_pool = half.reference_pool([load_image(p) for p in list_image_files(case / "inputs")
                                     if p.name.startswith("ref")], size)
    assert torch.equal(half_pool.embeddings, pool.embeddings)
    [got] = half.run([page], half_pool, size, settings)
    for a, b in ((got.canvas, want.canvas), (got.image, want.image)):
        assert a.size == b.size and _levels(a, b).mean() < 6
    assert np.asarray(got.image).std() > 10  # a real picture, not a flat failure


# ---- the PixArt styles ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=parity_params("pixart"))
def pixart_release(request, tmp_path_factory) -> tuple[Path, Path]:
    """The case's weights plus the line extractor the sketch styles need (rebuilt from the sd case's
    manifest, README "LE/"), and `shading/` as a copy of the case's style folder."""
    from colorflow_core.testing.preprocess import write_line_extractor
    from tests.support.parity import parity_cases

    case: Path = request.param
    manifests = [c / "weights" / "LE" / "erika_manifest.json" for c in parity_cases("sd")]
    if not manifests or not manifests[0].is_file():
        pytest.skip("no line extractor manifest in the sd parity cases")
    root = tmp_path_factory.mktemp("pixart_release")
    style = json.loads((case / "case.json").read_text()).get("style", "sketch")
    for sub in ("GraySD", "image_encoder", "base", style):
        (root / sub).symlink_to(case / "weights" / sub, target_is_directory=True)
    (root / "shading" if style == "sketch" else root / "sketch").symlink_to(case / "weights" / style)
    seed_base = json.loads(manifests[0].read_text())["seed_base"]
    write_line_extractor(root, manifests[0], seed_base)
    return case, root


def test_pixart_style_runs_end_to_end_and_shares_networks(pixart_release) -> None:
    case, root = pixart_release
    meta = json.loads((case / "case.json").read_text())
    size = PageSize(meta["target_width"], meta["target_height"])
    engine = ColorFlow.load("sketch", root, root / "base", device="cpu")
    refs = [load_image(p) for p in list_image_files(case / "inputs") if p.name.startswith("ref")]
    pool = engine.reference_pool(refs, size)
    [ctx] = engine.prepare([load_image(case / "inputs" / "page.png")], pool, size)
    assert ctx.condition.size == ctx.guide.size == size.guide
    assert _levels(ctx.condition, ctx.guide).max() == 0  # sketch: condition = guide = the line image

    # guidance None means the PixArt default 4.5
    [canvas] = engine.colorize([ctx], ColorizeSettings(steps=1))
    [direct] = engine.pipeline([ctx.retrieval.canvas], [ctx.retrieval.mask], steps=1, cfg=4.5)
    assert _levels(canvas, direct).max() == 0
    [image] = engine.upscale([ctx], [canvas])
    assert image.size == size.guide

    assert set(engine.networks()) == {"vae", "guider", "transformer", "image_encoder", "fusion", "line_extractor"}

    other = ColorFlow.load("shading", root, root / "base", device="cpu", reuse=engine)
    assert other.encoder is engine.encoder and other.lines is engine.lines
    assert other.upscaler.fusion is engine.upscaler.fusion
    assert other.pipeline is not engine.pipeline


@pytest.mark.parametrize("case", parity_params("sd"))
def test_screentone_conversion_is_wired_with_the_page_seed(case: Path, tmp_path: Path) -> None:
    """With ScreenStyle networks present, page i's condition = guide = the converter's output for the
    page fitted to 1.5W x 1.5H with seed + i (checked against the converter called directly)."""
    from colorflow_core.images import process_image
    from colorflow_core.preprocess.screentone import G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE
    from colorflow_core.testing.preprocess import write_screenstyle

    for sub in ("GraySD", "image_encoder", "base"):
        (tmp_path / sub).symlink_to(case / "weights" / sub, target_is_directory=True)
    write_screenstyle(tmp_path, {G_RGB2INTSCR_FILE: 5000, SCREENVAE_DEC_FILE: 7000}, None)
    meta = json.loads((case / "case.json").read_text())
    size = PageSize(meta["target_width"], meta["target_height"])
    engine = ColorFlow.load("screenstyle", tmp_path, tmp_path / "base", device="cpu", screentone=True)
    assert engine.screentone is not None
    refs = [load_image(p) for p in list_image_files(case / "inputs") if p.name.startswith("ref")]
    page = load_image(case / "inputs" / "page.png")
    contexts = engine.prepare([page, page], engine.reference_pool(refs, size), size, seed=3)
    q15 = process_image(page, *size.guide)
    for i, ctx in enumerate(contexts):
        want = engine.screentone.screenstyle_condition(q15, 3 + i)
        assert _levels(ctx.condition, want).max() == 0 and _levels(ctx.guide, want).max() == 0
    assert _levels(contexts[0].condition, q15.convert("L")).max() > 0  # not the identity
