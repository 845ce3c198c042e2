"""The node classes without ComfyUI: definitions, tensor conventions, and every stage on tiny weights."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from colorflow_core.engine import ColorizeSettings
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.images import pil_to_tensor
from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from nodes import comfy as comfy_glue
from nodes.colorize import InContextColorize
from nodes.model import NO_RELEASE, LoadColorFlowModel
from nodes.pool import CollectReferences
from nodes.retrieve import RetrieveReferences
from nodes.sequence import LoadImageSequence
from nodes.tensors import images_from_tensors
from nodes.upscale import GuidedUpscale
from tests.support.comfy_tiny import write_tiny_release

pytestmark = pytest.mark.usefixtures("outside_comfyui")

W, H = 64, 96  # the smallest page size the tiny UNet accepts (multiples of 32)


# ---- definitions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_definition(name):
    cls = NODE_CLASS_MAPPINGS[name]
    assert name in NODE_DISPLAY_NAME_MAPPINGS
    assert cls.CATEGORY == "ColorFlow" and cls.DESCRIPTION.strip()
    assert callable(getattr(cls, cls.FUNCTION))
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional", "hidden"} and "required" in inputs
    for section in ("required", "optional"):
        for input_name, spec in inputs.get(section, {}).items():
            kind, options = spec[0], spec[1]
            assert isinstance(kind, (str, list)), input_name
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if isinstance(kind, list):
                assert kind and options.get("default", kind[0]) in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], input_name
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    for attribute in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        if hasattr(cls, attribute):
            assert len(getattr(cls, attribute)) == len(cls.RETURN_TYPES), attribute


# ---- tensor conventions --------------------------------------------------------------------------

def test_images_from_tensors_accepts_comfy_layouts():
    batch = torch.rand(2, 10, 12, 3)
    images = images_from_tensors(batch, "t")
    assert [im.size for im in images] == [(12, 10), (12, 10)] and images[0].mode == "RGB"
    mixed = images_from_tensors([torch.rand(1, 10, 12, 3), torch.rand(1, 20, 8, 3)], "t")
    assert [im.size for im in mixed] == [(12, 10), (8, 20)]
    gray = images_from_tensors(torch.full((1, 4, 4, 1), 0.5), "t")[0]
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (128, 128, 128)
    rgba = torch.zeros(1, 4, 4, 4)  # fully transparent: composited on white paper
    assert images_from_tensors(rgba, "t")[0].getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(0, 8, 8, 3), "empty"),
    ([], "empty"),
    (torch.zeros(1, 8, 8, 2), "channels"),
    (torch.zeros(8, 8), "shape"),
])
def test_images_from_tensors_rejects(bad, message):
    with pytest.raises(InputError, match=message):
        images_from_tensors(bad, "t")


# ---- Load Image Sequence -------------------------------------------------------------------------

def test_load_image_sequence_natural_order(tmp_path):
    for name, size in (("p10.png", (30, 40)), ("p2.png", (50, 20)), ("p1.png", (16, 16)), ("notes.txt", None)):
        if size is None:
            (tmp_path / name).write_text("not an image")
        else:
            Image.new("L", size, 90).save(tmp_path / name)
    images, names = LoadImageSequence().load(str(tmp_path))
    assert names == ["p1", "p2", "p10"]
    assert [tuple(t.shape) for t in images] == [(1, 16, 16, 3), (1, 20, 50, 3), (1, 40, 30, 3)]
    assert torch.allclose(images[1], torch.full_like(images[1], 90 / 255))
    _, names = LoadImageSequence().load(str(tmp_path), start=1, limit=1)
    assert names == ["p2"]


def test_load_image_sequence_bad_folders(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    for folder, message in ((tmp_path, "no image files"), (tmp_path / "missing", "not found"), ("", "no folder")):
        assert message in LoadImageSequence.VALIDATE_INPUTS(folder=str(folder) if folder else "")
        with pytest.raises(InputError, match=message):
            LoadImageSequence().load(str(folder) if folder else "")


# ---- the stages on a tiny random release ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_release(root / "colorflow" / "tiny", root / "sd_tiny")
    return root


@pytest.fixture
def models_env(tiny, monkeypatch):
    monkeypatch.setenv("COLORFLOW_MODELS", str(tiny / "colorflow"))
    return tiny


@pytest.fixture(scope="module")
def model(tiny):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLORFLOW_MODELS", str(tiny / "colorflow"))
        (handle,) = LoadColorFlowModel().load("screenstyle", "tiny", str(tiny / "sd_tiny"), "fp32",
                                              screentone=False)
    return handle


def _page(seed: int, size: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gray = torch.rand(1, size[1], size[0], 1, generator=g)
    return gray.expand(-1, -1, -1, 3).contiguous()  # a gray page as ComfyUI gives it: 3 equal channels


@pytest.fixture(scope="module")
def pool():
    refs = torch.rand(3, 40, 50, 3, generator=torch.Generator().manual_seed(7))
    return CollectReferences().build(references=[refs], folder=[""])[0]


def _retrieve(model, pool, pages):
    return RetrieveReferences().retrieve(
        [model], pages, [pool], ["custom"], [W], [H], [3], [0], names=None)


def _colorize(model, context, seed=0, steps=1):
    return InContextColorize().colorize(model, context, steps=steps, cfg=7.5, guider_strength=1.0, seed=seed)


def test_release_listing_and_missing_release(models_env, tmp_path, monkeypatch):
    from nodes.model import list_releases, resolve_release

    assert list_releases() == ["tiny"]
    assert resolve_release("tiny") == models_env / "colorflow" / "tiny"
    message = LoadColorFlowModel.VALIDATE_INPUTS(release="gone")
    assert "'gone' was not found" in message and "TencentARC/ColorFlow" in message
    monkeypatch.setenv("COLORFLOW_MODELS", str(tmp_path))
    assert list_releases() == [NO_RELEASE]
    with pytest.raises(WeightsError, match="no ColorFlow release was found"):
        LoadColorFlowModel().load("screenstyle", NO_RELEASE, "hub default", "fp32")


def test_stages_end_to_end(model, pool):
    """Pages of different sizes (a list) → contexts, canvases, masks → coloured pages → 1.5x pages."""
    pages = [_page(1, (80, 120)), _page(3, (200, 100))]
    context, canvases, masks, records, annotated = _retrieve(model, pool, pages)
    assert len(context) == 2 and context.size.width == W
    assert tuple(canvases.shape) == (2, 2 * H, 2 * W, 3) and canvases.dtype == torch.float32
    assert tuple(masks.shape) == (2, 2 * H, 2 * W)
    assert masks[:, H, W].eq(1).all() and masks[:, 0, 0].eq(0).all()  # white = the page, in the centre

    colored, full = _colorize(model, context)
    assert tuple(colored.shape) == (2, H, W, 3) and tuple(full.shape) == (2, 2 * H, 2 * W, 3)
    assert 0 <= colored.min() and colored.max() <= 1
    assert torch.equal(colored, full[:, H // 2:H // 2 + H, W // 2:W // 2 + W])  # the page is the centre

    (hires,) = GuidedUpscale().upscale(model, colored, context, seed=0)
    assert tuple(hires.shape) == (2, H * 3 // 2, W * 3 // 2, 3)

    # The same through the engine directly (the nodes add nothing but conversion).
    engine = model.engine
    expected = engine.upscale(context.pages, engine.colorize(context.pages, ColorizeSettings(steps=1, seed=0)))
    assert torch.equal(hires, torch.stack([pil_to_tensor(e) for e in expected]))


def test_every_network_is_handed_to_comfyui(model):
    """The ModelPatcher container must hold (and so move) every network the engine runs."""
    engine = model.engine
    container = comfy_glue.ColorFlowNetworks(engine.networks())
    held = {id(p) for p in container.parameters()}
    for net in (engine.pipeline.unet, engine.pipeline.guider, engine.pipeline.vae, engine.encoder.model,
                engine.upscaler.fusion):
        assert all(id(p) in held for p in net.parameters())
    assert model.use() is engine  # outside ComfyUI: the engine as loaded, no patcher
    assert model.patcher is None


def test_seed_of_page_i_is_seed_plus_i(model, pool):
    """Page i uses seed + i: the second page of a batch equals that page alone with seed + 1."""
    pages = [_page(1, (64, 96)), _page(2, (64, 96))]
    both, _ = _colorize(model, _retrieve(model, pool, pages)[0], seed=5)
    alone, _ = _colorize(model, _retrieve(model, pool, pages[1:])[0], seed=6)
    assert torch.equal(both[1], alone[0])
    other, _ = _colorize(model, _retrieve(model, pool, pages[1:])[0], seed=5)
    assert not torch.equal(both[1], other[0])


def test_progress_and_interruption(model, pool, monkeypatch):
    context = _retrieve(model, pool, [_page(1, (64, 96))])[0]
    calls = []
    monkeypatch.setattr(comfy_glue, "progress_callback", lambda total: lambda done, count: calls.append((done, count)))
    _colorize(model, context, steps=2)
    assert calls[-1] == (2, 2) and [d for d, _ in calls] == sorted(d for d, _ in calls)  # pages x steps

    class Cancelled(Exception):
        pass

    checks = []

    def cancel_on_second():
        checks.append(1)
        if len(checks) == 2:
            raise Cancelled

    monkeypatch.setattr(comfy_glue, "check_interrupt", cancel_on_second)
    with pytest.raises(Cancelled):
        _colorize(model, context, steps=2)


# ---- bad input gives a clear message -------------------------------------------------------------

def test_empty_reference_pool():
    with pytest.raises(InputError, match="empty"):
        CollectReferences().build(references=[torch.zeros(0, 8, 8, 3)])
    with pytest.raises(InputError, match="reference pool is empty"):
        CollectReferences().build(folder=[""])


def test_reference_folder_without_images(tmp_path):
    assert "no image files" in CollectReferences.VALIDATE_INPUTS(folder=[str(tmp_path)])
    with pytest.raises(InputError, match="no image files"):
        CollectReferences().build(folder=[str(tmp_path)])


def test_one_pixel_page(model, pool):
    with pytest.raises(InputError, match="too small"):
        _retrieve(model, pool, [torch.rand(1, 1, 1, 3)])


def test_upscale_batch_mismatch(model, pool):
    context = _retrieve(model, pool, [_page(1, (64, 96)), _page(2, (64, 96))])[0]
    with pytest.raises(InputError, match="2 original pages"):
        GuidedUpscale().upscale(model, torch.rand(3, H, W, 3), context, seed=0)
    with pytest.raises(InputError, match="too small"):
        GuidedUpscale().upscale(model, torch.rand(2, 1, 1, 3), context, seed=0)


def test_custom_size_is_snapped():
    from nodes.retrieve import page_size

    assert (page_size("custom", 70, 100).width, page_size("custom", 70, 100).height) == (64, 96)
    assert page_size("512x800", 1, 1).height == 800
    with pytest.raises(InputError):
        page_size("huge", 64, 64)
    assert math.isfinite(page_size("custom", 5000, 5000).width)


# ---- cfg follows the loaded style; where the random draws are made --------------------------------

def test_cfg_defaults_to_the_styles_own_value_and_says_so():
    from colorflow_core.options import DEFAULT_CFG

    cfg = InContextColorize.INPUT_TYPES()["required"]["cfg"][1]
    assert cfg["default"] == 0 and cfg["min"] == 0
    tooltip = cfg["tooltip"]
    assert "0 (the default) = the loaded style's own default" in tooltip
    for style, value in DEFAULT_CFG.items():  # the values the engine really uses, each named
        assert f"{value:g} for {style}" in tooltip or f"{value:g} for sketch and shading" in tooltip, style
    assert "1.0" in tooltip and "off" in tooltip  # how to turn CFG off now that 0 means "default"


@pytest.mark.parametrize("cfg, expected", [(0, None), (0.0, None), (1.0, 1.0), (0.5, 0.5), (4.5, 4.5), (7.5, 7.5)])
def test_cfg_reaches_the_engine(model, pool, monkeypatch, cfg, expected):
    """0 → cfg None (the engine picks the style's default); anything else as given (≤ 1: no CFG)."""
    seen = []
    real = type(model.engine).colorize

    def spy(self, contexts, settings, **kwargs):
        seen.append(settings)
        return real(self, contexts, settings, **kwargs)

    monkeypatch.setattr(type(model.engine), "colorize", spy)
    context = _retrieve(model, pool, [_page(1, (64, 96))])[0]
    InContextColorize().colorize(model, context, steps=1, cfg=cfg, guider_strength=1.0, seed=0)
    assert seen[0].cfg == expected and seen[0].generator_device == "cpu"


def test_cfg_zero_gives_the_screenstyle_default(model, pool):
    """On the SD1.5 (screenstyle) model cfg 0 colours exactly as 7.5, not as 4.5 or without CFG (1.0)."""
    context = _retrieve(model, pool, [_page(1, (64, 96))])[0]

    def run(cfg):
        return InContextColorize().colorize(model, context, steps=1, cfg=cfg, guider_strength=1.0, seed=0)[0]

    default = run(0.0)
    assert torch.equal(default, run(7.5))
    assert not torch.equal(default, run(4.5)) and not torch.equal(default, run(1.0))


def test_generator_device_is_an_optional_input_everywhere_pages_are_drawn():
    from colorflow_core.runtime.seeding import GENERATOR_DEVICES
    from nodes.preprocess import ScreentonePreprocess

    for cls in (InContextColorize, GuidedUpscale, RetrieveReferences, ScreentonePreprocess):
        kind, options = cls.INPUT_TYPES()["optional"]["generator_device"]
        assert kind == list(GENERATOR_DEVICES) == ["cpu", "cuda"] and options["default"] == "cpu", cls
        assert "NVIDIA GPU" in options["tooltip"]


def test_generator_device_reaches_the_engine(model, pool, monkeypatch):
    """Each node hands its generator_device to the engine call that makes the draws."""
    engine_cls = type(model.engine)
    seen = {}
    for name in ("prepare", "colorize", "upscale"):
        real = getattr(engine_cls, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            settings = args[1] if _name == "colorize" else None
            seen[_name] = settings.generator_device if settings is not None else kwargs["generator_device"]
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(engine_cls, name, spy)
    context = RetrieveReferences().retrieve([model], [_page(1, (64, 96))], [pool], ["custom"], [W], [H], [3], [0],
                                            names=None, generator_device=["cpu"])[0]
    colored, _ = InContextColorize().colorize(model, context, steps=1, cfg=0, guider_strength=1.0, seed=0,
                                              generator_device="cpu")
    GuidedUpscale().upscale(model, colored, context, seed=0, generator_device="cpu")
    assert seen == {"prepare": "cpu", "colorize": "cpu", "upscale": "cpu"}


def test_cuda_draws_without_a_gpu_are_refused_clearly(model, pool, monkeypatch):
    """No GPU (as on this CPU machine; forced so the test means the same on a GPU machine): one
    InputError naming the option and the way out, before any network runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = _retrieve(model, pool, [_page(1, (64, 96))])[0]
    message = "generator_device 'cuda' needs an NVIDIA GPU.*use 'cpu'"
    with pytest.raises(InputError, match=message):
        InContextColorize().colorize(model, context, steps=1, cfg=0, guider_strength=1.0, seed=0,
                                     generator_device="cuda")
    with pytest.raises(InputError, match=message):
        GuidedUpscale().upscale(model, torch.rand(1, H, W, 3), context, seed=0, generator_device="cuda")
    with pytest.raises(InputError, match=message):
        RetrieveReferences().retrieve([model], [_page(1, (64, 96))], [pool], ["custom"], [W], [H], [3], [0],
                                      generator_device=["cuda"])
    with pytest.raises(InputError, match="generator_device must be one of cpu, cuda"):
        InContextColorize().colorize(model, context, steps=1, cfg=0, guider_strength=1.0, seed=0,
                                     generator_device="mps")
