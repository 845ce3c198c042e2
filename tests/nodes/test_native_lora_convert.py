"""The release's UNet LoRA renamed to the kohya keys ComfyUI's LoRA patching reads (no ComfyUI needed)."""
from __future__ import annotations

import pytest
import torch

from colorflow_core.colorize.lora import normalize_lora_keys
from colorflow_core.colorize.lora_convert import kohya_module_name, unet_lora_to_kohya
from colorflow_core.errors import WeightsError
from colorflow_core.weights import load_state_dict_file
from tests.support.parity import parity_params


@pytest.mark.parametrize("case", parity_params("sd"))
def test_release_lora_converts_tensor_for_tensor(case):
    source = load_state_dict_file(case / "weights" / "GraySD" / "unet_lora.bin")
    peft = normalize_lora_keys(source)
    kohya = unet_lora_to_kohya(source)
    modules = {k.split(".lora_")[0] for k in peft}
    assert len(kohya) == 3 * len(modules)  # down, up, alpha per module
    for module in modules:
        name = kohya_module_name(module)
        assert torch.equal(kohya[f"{name}.lora_down.weight"], peft[f"{module}.lora_A.default.weight"])
        assert torch.equal(kohya[f"{name}.lora_up.weight"], peft[f"{module}.lora_B.default.weight"])
        # the release's scaling alpha / rank = 1 survives as alpha = rank
        assert kohya[f"{name}.alpha"].item() == peft[f"{module}.lora_A.default.weight"].shape[0]


def test_module_names_follow_kohya():
    assert kohya_module_name("down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj") == \
        "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj"


def test_peft_saved_form_and_prefixes_are_accepted():
    a, b = torch.randn(2, 8), torch.randn(6, 2)
    out = unet_lora_to_kohya({"base_model.model.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": a,
                              "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": b}, alpha=4.0)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    assert set(out) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert out[f"{name}.alpha"].item() == 4.0


@pytest.mark.parametrize("state, message", [
    ({"up_blocks.1.attentions.0.proj_in.base_layer.weight": torch.zeros(2, 2)}, "not LoRA A/B matrices"),
    ({"x.to_q.lora_A.default.weight": torch.zeros(2, 4)}, "not both A and B"),
    ({"x.to_q.lora_A.default.weight": torch.zeros(2, 4), "x.to_q.lora_B.default.weight": torch.zeros(4, 3)},
     "ranks differ"),
    ({}, "no LoRA tensors"),
])
def test_files_that_cannot_be_a_comfyui_lora_are_refused(state, message):
    with pytest.raises(WeightsError, match=message):
        unet_lora_to_kohya(state)
