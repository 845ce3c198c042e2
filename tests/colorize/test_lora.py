"""lora.py: strict LoRA loading (no silent half-matches), key forms, removal after failure, merging."""
from __future__ import annotations

import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

from colorflow_core.colorize.lora import (
    PIXART_LORA_TARGETS,
    SD_UNET_LORA_TARGETS,
    add_lora_adapter,
    infer_lora_rank,
    inject_lora,
    merge_lora,
    normalize_lora_keys,
    remove_lora,
)
from colorflow_core.errors import WeightsError
from colorflow_core.testing.sd import model_config, random_state_dict, unet_lora_state_dict

RANK = 4


@pytest.fixture(scope="module")
def unet_config():
    return model_config("unet", "tiny")


@pytest.fixture(scope="module")
def lora_file(unet_config):
    return unet_lora_state_dict(unet_config, RANK, seed=3)


@pytest.fixture
def unet(unet_config):
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(unet_config).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)


def run(unet, inputs):
    with torch.no_grad():
        return unet(inputs[0], 500, inputs[1]).sample


def inject(unet, state, source="unet_lora.bin"):
    return inject_lora(unet, state, rank=RANK, alpha=RANK, target_modules=SD_UNET_LORA_TARGETS, source=source)


def test_file_layout_matches_the_release(lora_file):
    # 16 attention blocks would be SD1.5; the tiny UNet has the same block types: 6 down, 1 mid, 9 up.
    assert len(lora_file) == 16 * 10 * 2
    assert all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in lora_file)
    assert infer_lora_rank(lora_file) == RANK


def test_normalize_key_forms():
    t = torch.zeros(1)
    keys = normalize_lora_keys({
        "base_model.model.a.to_q.lora_A.weight": t,
        "unet.b.to_k.lora_B.weight": t,
        "transformer.transformer_blocks.0.attn1.to_v.lora_A.default.weight": t,
        "c.to_out.0.base_layer.weight": t,
    })
    assert set(keys) == {
        "a.to_q.lora_A.default.weight", "b.to_k.lora_B.default.weight",
        "transformer_blocks.0.attn1.to_v.lora_A.default.weight", "c.to_out.0.base_layer.weight",
    }
    with pytest.raises(WeightsError, match="two tensors"):
        normalize_lora_keys({"unet.x.lora_A.weight": t, "x.lora_A.default.weight": t})


def test_infer_rank_errors():
    with pytest.raises(WeightsError, match="no LoRA tensors"):
        infer_lora_rank({"conv.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="mixes ranks"):
        infer_lora_rank({"a.lora_A.weight": torch.zeros(4, 3), "b.lora_A.weight": torch.zeros(8, 3)})


def test_full_file_loads_and_changes_the_output(unet, lora_file, inputs):
    plain = run(unet, inputs)
    assert inject(unet, lora_file) == len(lora_file)
    state = unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in lora_file.items())
    assert not torch.allclose(run(unet, inputs), plain, atol=1e-3)


def test_peft_saved_key_form_loads_the_same(unet_config, lora_file, inputs):
    results = []
    for state in (lora_file, {"base_model.model." + k.replace(".default", ""): v for k, v in lora_file.items()}):
        torch.manual_seed(0)
        model = UNet2DConditionModel.from_config(unet_config).eval()
        assert inject(model, state) == len(lora_file)
        results.append(run(model, inputs))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def assert_pristine(unet, names_before, plain, inputs):
    assert sorted(unet.state_dict()) == names_before
    assert not hasattr(unet, "peft_config")
    torch.testing.assert_close(run(unet, inputs), plain, rtol=0, atol=0)


def test_partial_file_fails_with_names_and_leaves_no_adapter(unet, lora_file, inputs):
    names, plain = sorted(unet.state_dict()), run(unet, inputs)
    dropped = sorted(lora_file)[:3]
    partial = {k: v for k, v in lora_file.items() if k not in dropped}
    with pytest.raises(WeightsError) as err:
        inject(unet, partial, source="partial.bin")
    message = str(err.value)
    assert "partial.bin" in message and f"{len(partial)} matched" in message
    assert all(name in message for name in dropped)
    assert_pristine(unet, names, plain, inputs)
    # After the failure a complete file still loads.
    assert inject(unet, lora_file) == len(lora_file)


def test_unrelated_or_misshapen_files_fail(unet, lora_file, inputs):
    names, plain = sorted(unet.state_dict()), run(unet, inputs)
    foreign = {f"lora_unet_block_{i}.lora_down.weight": v for i, v in enumerate(lora_file.values())}
    with pytest.raises(WeightsError, match="0 matched") as err:
        inject(unet, foreign, source="foreign.bin")
    assert "unexpected lora_unet_block_0.lora_down.weight" in str(err.value)
    assert_pristine(unet, names, plain, inputs)

    first = sorted(lora_file)[0]
    wrong = dict(lora_file, **{first: torch.zeros(RANK + 1, *lora_file[first].shape[1:])})
    with pytest.raises(WeightsError, match="wrong shape"):
        inject(unet, wrong)
    assert_pristine(unet, names, plain, inputs)


def test_full_state_dict_with_base_layers_loads_them(unet, lora_file, inputs):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    base = unet.get_submodule(name).weight
    new_base = torch.randn_like(base)
    inject(unet, dict(lora_file, **{f"{name}.base_layer.weight": new_base}))
    assert torch.equal(unet.get_submodule(name).base_layer.weight, new_base)


def test_merge_gives_the_same_output_without_adapter(unet, lora_file, inputs):
    names = sorted(unet.state_dict())
    inject(unet, lora_file)
    with_adapter = run(unet, inputs)
    merge_lora(unet)
    assert sorted(unet.state_dict()) == names
    torch.testing.assert_close(run(unet, inputs), with_adapter, rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsError, match="no LoRA adapter"):
        merge_lora(unet)


def test_second_injection_is_refused(unet, lora_file):
    inject(unet, lora_file)
    with pytest.raises(WeightsError, match="already carries"):
        inject(unet, lora_file)


def test_pixart_transformer_without_add_adapter():
    """PixArtTransformer2DModel has no add_adapter; peft's inject_adapter_in_model gives the same names."""
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  sample_size=8, patch_size=2, norm_type="ada_norm_single", norm_elementwise_affine=False,
                  norm_eps=1e-6, caption_channels=12, cross_attention_dim=16, num_embeds_ada_norm=1000,
                  use_additional_conditions=True)
    with torch.device("meta"):
        template = PixArtTransformer2DModel(**config)
        add_lora_adapter(template, rank=RANK, alpha=RANK, target_modules=PIXART_LORA_TARGETS)
    state = random_state_dict(template, seed=5, only=".lora_")
    assert "pos_embed.proj.lora_A.default.weight" in state  # the conv LoRA on the patch embedding
    model = PixArtTransformer2DModel(**config)
    assert inject_lora(model, state, rank=RANK, alpha=RANK, target_modules=PIXART_LORA_TARGETS,
                       source="transformer_lora.bin") == len(state)
    remove_lora(model)
    assert not any(".lora_" in k for k in model.state_dict())
