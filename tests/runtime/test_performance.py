"""Runtime placement and speed settings: choices from injected memory numbers, and proof that
channels-last, SDPA, offload hooks and regional compilation leave the numbers unchanged."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
from colorflow_core.colorize.sd.injection import inject_guider_residuals
from colorflow_core.errors import InputError
from colorflow_core.runtime import performance as perf
from colorflow_core.testing.sd import guider_config_from_unet, model_config, random_state_dict

GB = 10**9
# Full-size fp16 weights of the four big nets (UNet, guider, CLIP ViT-H, VAE), 512x800 page working set.
FULL_MODELS = [int(1.72 * GB), int(1.40 * GB), int(1.26 * GB), int(0.17 * GB)]
PAGE = perf.page_working_bytes((200, 128), torch.float16)


@pytest.fixture(scope="module")
def nets() -> tuple[UNet2DConditionModel, ColorGuiderSDModel]:
    config = model_config("unet", "tiny")
    unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(random_state_dict(unet, seed=1))
    guider = ColorGuiderSDModel.from_config(guider_config_from_unet(config))
    guider.load_state_dict(random_state_dict(guider, seed=2))
    return unet.eval(), guider.eval()


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(batch, 4, 16, 24, generator=g),
        "cond": torch.randn(batch, 5, 16, 24, generator=g),
        "text": torch.randn(batch, 77, 32, generator=g),
        "t": torch.tensor(500),
    }


@torch.no_grad()
def _guided_eps(unet: nn.Module, guider: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    residuals = guider(inputs["x"], inputs["t"], inputs["cond"], conditioning_scale=1.0)
    with inject_guider_residuals(unet, residuals):
        return unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["text"], return_dict=False)[0]


# ---- device / dtype -------------------------------------------------------------------------------

def test_auto_dtype_is_fp32_on_cpu_and_fp16_on_cuda() -> None:
    assert perf.resolve_dtype("auto", "cpu") == torch.float32
    assert perf.resolve_dtype("auto", "cuda") == torch.float16
    assert perf.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert perf.resolve_dtype(torch.float32, "cuda") == torch.float32


@pytest.mark.parametrize("bad", ["fp8", "int8", torch.int64, 3])
def test_bad_dtype_is_an_input_error(bad) -> None:
    with pytest.raises(InputError, match="dtype"):
        perf.resolve_dtype(bad, "cpu")


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(InputError, match="CPU"):
        perf.resolve_dtype("fp16", "cpu")


def test_device_resolution() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert perf.resolve_device(None).type == expected
    with pytest.raises(InputError, match="unknown device"):
        perf.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            perf.resolve_device("cuda")


# ---- sizes, batch, offload from injected memory numbers ------------------------------------------

def test_module_bytes_counts_parameters_in_the_target_dtype() -> None:
    layer = nn.Linear(10, 20)
    assert perf.module_bytes(layer) == (10 * 20 + 20) * 4
    assert perf.module_bytes(layer, torch.float16) == (10 * 20 + 20) * 2


def test_page_working_memory_scales_with_area_and_dtype() -> None:
    base = perf.page_working_bytes((100, 64), torch.float32)
    assert perf.page_working_bytes((200, 64), torch.float32) == 2 * base
    assert perf.page_working_bytes((100, 64), torch.float16) * 2 == base


def test_batch_size_on_cpu_is_capped_and_never_exceeds_the_pages() -> None:
    assert perf.choose_batch_size(50, "cpu", PAGE) == perf.CPU_MAX_BATCH
    assert perf.choose_batch_size(1, "cpu", PAGE) == 1
    assert perf.choose_batch_size(0, "cpu", PAGE) == 1


@pytest.mark.parametrize("free_gb", [0.5, 3, 10, 24, 70])
def test_batch_size_on_cuda_fits_the_free_memory(free_gb: float) -> None:
    free = int(free_gb * GB)
    size = perf.choose_batch_size(50, "cuda", PAGE, free_bytes=free)
    assert 1 <= size <= perf.CUDA_MAX_BATCH
    if size > 1:  # a batch above one always fits the budget...
        assert size * PAGE <= perf.MEMORY_BUDGET_FRACTION * free
    if size < perf.CUDA_MAX_BATCH:  # ...and one more page would not
        assert (size + 1) * PAGE > perf.MEMORY_BUDGET_FRACTION * free
    assert perf.choose_batch_size(3, "cuda", PAGE, free_bytes=free) <= 3


def test_bad_batch_inputs_are_input_errors() -> None:
    with pytest.raises(InputError):
        perf.choose_batch_size(-1, "cpu", PAGE)
    with pytest.raises(InputError):
        perf.choose_batch_size(4, "cuda", 0, free_bytes=GB)


@pytest.mark.parametrize(
    ("free_gb", "expected"),
    [(80, "none"), (9, "none"), (6, "model"), (4.5, "model"), (3, "sequential"), (0.5, "sequential")],
)
def test_offload_mode_follows_free_memory(free_gb: float, expected: str) -> None:
    free = int(free_gb * GB)
    mode = perf.choose_offload(free, FULL_MODELS, PAGE)
    assert mode == expected
    # the decision is consistent with what each mode needs resident
    if mode == "none":
        assert free >= sum(FULL_MODELS) + PAGE
    elif mode == "model":
        assert max(FULL_MODELS) + PAGE <= free < sum(FULL_MODELS) + PAGE
    else:
        assert free < max(FULL_MODELS) + PAGE


def test_offload_mode_can_be_forced_and_cpu_needs_none() -> None:
    assert perf.choose_offload(int(80 * GB), FULL_MODELS, PAGE, requested="sequential") == "sequential"
    assert perf.choose_offload(0, FULL_MODELS, PAGE, requested="none") == "none"
    assert perf.choose_offload(None, FULL_MODELS, PAGE) == "none"
    with pytest.raises(InputError, match="offload"):
        perf.choose_offload(GB, FULL_MODELS, PAGE, requested="disk")


# ---- speed settings leave results unchanged ------------------------------------------------------

def test_channels_last_gives_the_same_prediction(nets) -> None:
    unet, guider = nets
    inputs = _inputs()
    reference = _guided_eps(unet, guider, inputs)
    perf.to_channels_last(unet, guider)
    try:
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(_guided_eps(unet, guider, inputs), reference, atol=1e-5, rtol=0)
    finally:
        unet.to(memory_format=torch.contiguous_format)
        guider.to(memory_format=torch.contiguous_format)


def _processors(*models: nn.Module) -> list:
    return [m.processor for model in models for m in model.modules() if isinstance(m, Attention)]


def test_sdpa_matches_the_classic_attention(nets) -> None:
    unet, guider = nets
    inputs = _inputs()
    for model in (unet, guider):
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())
    classic = _guided_eps(unet, guider, inputs)
    count = len(_processors(unet, guider))
    assert perf.use_sdpa(unet, guider) == count > 0
    assert all(isinstance(p, AttnProcessor2_0) for p in _processors(unet, guider))
    assert torch.allclose(_guided_eps(unet, guider, inputs), classic, atol=1e-5, rtol=0)
    assert perf.use_sdpa(unet, guider) == 0  # already SDPA: nothing to do


@pytest.mark.parametrize("mode", ["sequential", "model"])
def test_offload_hooks_keep_results_and_come_off(nets, mode: str) -> None:
    unet, guider = nets
    inputs = _inputs()
    reference = _guided_eps(unet, guider, inputs)
    offload = perf.Offload([guider, unet], mode, "cpu")
    try:
        if mode == "sequential":  # weights live in accelerate's map until a layer runs
            assert unet.conv_in.weight.device.type == "meta"
        assert torch.equal(_guided_eps(unet, guider, inputs), reference)
    finally:
        offload.remove()
    assert unet.conv_in.weight.device.type == "cpu"
    assert not hasattr(unet, "_hf_hook")
    assert torch.equal(_guided_eps(unet, guider, inputs), reference)


def test_model_offload_keeps_one_model_on_the_device(nets) -> None:
    """Running one model of the group (its forward, or the VAE's encode, which diffusers routes
    through the same hook) first sends every other one back to the CPU. On a CPU run the moves are
    recorded, since CPU and execution device coincide."""
    unet, guider = nets
    vae = AutoencoderKL.from_config(model_config("vae", "tiny")).eval()
    moves: list[str] = []
    group = {"vae": vae, "guider": guider, "unet": unet}
    offload = perf.Offload(list(group.values()), "model", "cpu")
    try:
        for name, model in group.items():
            def recording_to(*args, _name=name, _to=model.to, **kwargs):
                moves.append(f"{_name}->{args[0] if args else kwargs.get('device')}")
                return _to(*args, **kwargs)

            model.to = recording_to
        with torch.no_grad():
            vae.encode(torch.zeros(1, 3, 32, 32))
        assert sorted(moves) == ["guider->cpu", "unet->cpu"]
        moves.clear()
        _guided_eps(unet, guider, _inputs())
        # the guider ran first (VAE and UNet sent back), then the UNet (VAE and guider sent back)
        assert moves == ["vae->cpu", "unet->cpu", "vae->cpu", "guider->cpu"]
        assert offload.reserve_bytes() == max(perf.module_bytes(m) for m in group.values())
    finally:
        for model in group.values():
            model.__dict__.pop("to", None)
        offload.remove()
    assert not any(hasattr(m, "_hf_hook") for m in group.values())


def test_configure_places_models_and_refuses_compile_with_offload(nets) -> None:
    unet, guider = nets
    offload = perf.configure([guider, unet], "cpu", PAGE)
    assert offload.mode == "none" and offload.reserve_bytes() == 0  # a CPU has no device memory budget
    assert not unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # CUDA only by default
    with pytest.raises(InputError, match="compile"):
        perf.configure([guider, unet], "cpu", PAGE, perf.SpeedOptions(offload="model", compile=True))


def test_regional_compile_keeps_results_and_hooks_working(nets) -> None:
    """Compiled blocks keep hooks outside the compiled code: the per-step residual hooks (around the
    blocks) and PixArt-style hooks on a compiled block itself both apply, with new values each step."""
    unet, guider = nets
    compiled = UNet2DConditionModel.from_config(model_config("unet", "tiny"))
    compiled.load_state_dict(unet.state_dict())
    compiled.eval()
    expected_blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in compiled.modules())
    assert perf.compile_blocks(compiled, backend="eager") == expected_blocks > 0

    def first_block(model: nn.Module) -> nn.Module:
        return next(m for m in model.modules() if type(m).__name__ == "BasicTransformerBlock")

    for step in (0, 1):  # different residuals and hook values each step: both must be applied
        inputs = _inputs()
        inputs["cond"] = inputs["cond"] + step
        results = []
        for model in (compiled, unet):
            handle = first_block(model).register_forward_hook(lambda _m, _a, out, s=step: out + 0.5 * s)
            try:
                results.append(_guided_eps(model, guider, inputs))
            finally:
                handle.remove()
        assert torch.allclose(results[0], results[1], atol=1e-5, rtol=0)
