"""guider.py: the SD ColorGuider's structure, residual layout, inputs and strict release loading."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.testing.sd import guider_config_from_unet, model_config, write_graysd

H, W = 16, 8


@pytest.fixture(scope="module")
def config():
    return guider_config_from_unet(model_config("unet", "tiny"))


@pytest.fixture(scope="module")
def guider(config):
    torch.manual_seed(0)
    return ColorGuiderSDModel.from_config(config).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 4, H, W, generator=g), torch.randn(2, 5, H, W, generator=g)


def run(guider, inputs, t=500, scale=1.0):
    with torch.no_grad():
        return guider(inputs[0], t, inputs[1], conditioning_scale=scale)


def flat(res):
    return res.down + [res.mid] + res.up


def test_residual_layout_follows_spec(guider, inputs):
    """Block table: channels per index and the resolution ladder (tiny channels 32,32,64,64)."""
    res = run(guider, inputs)
    c = [32, 32, 64, 64]
    down = [(c[0], 1)] * 3 + [(c[0], 2)] + [(c[1], 2)] * 2 + [(c[1], 4)] + [(c[2], 4)] * 2 + [(c[2], 8)] + [(c[3], 8)] * 2
    up = [(c[3], 8)] * 3 + [(c[3], 4)] + [(c[2], 4)] * 3 + [(c[2], 2)] + [(c[1], 2)] * 3 + [(c[1], 1)] + [(c[0], 1)] * 3
    assert [tuple(r.shape) for r in res.down] == [(2, ch, H // f, W // f) for ch, f in down]
    assert tuple(res.mid.shape) == (2, c[3], H // 8, W // 8)
    assert [tuple(r.shape) for r in res.up] == [(2, ch, H // f, W // f) for ch, f in up]
    # No cross-attention anywhere, no output head.
    names = [n for n, _ in guider.named_parameters()]
    assert not any(".attn2." in n or ".norm2." in n and "transformer_blocks" in n for n in names)
    assert not any(n.startswith(("conv_out", "conv_norm_out")) for n in names)


def test_timestep_forms_agree(guider, inputs):
    scalar = run(guider, inputs, t=321)
    for t in (torch.tensor(321), torch.tensor([321, 321]), 321.0):
        for a, b in zip(flat(scalar), flat(run(guider, inputs, t=t))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(InputError, match="timestep"):
        run(guider, inputs, t=torch.tensor([1, 2, 3]))


def test_conditioning_scale_is_linear(guider, inputs):
    for a, b in zip(flat(run(guider, inputs, scale=0.5)), flat(run(guider, inputs))):
        torch.testing.assert_close(a, 0.5 * b)


def test_bad_inputs_are_refused(guider, inputs):
    x, cond = inputs
    with pytest.raises(InputError, match=r"\(B, 5, h, w\)"):
        guider(x, 1, cond[:, :4])
    with pytest.raises(InputError, match="does not match"):
        guider(x, 1, cond[:1])
    with pytest.raises(InputError, match=r"\(B, 4, h, w\)"):
        guider(torch.cat([x, x], 1), 1, cond)


def test_bgr_order_flips_the_whole_conditioning(config, guider, inputs):
    bgr = ColorGuiderSDModel.from_config(dict(config, brushnet_conditioning_channel_order="bgr")).eval()
    bgr.load_state_dict(guider.state_dict())
    flipped = (inputs[0], torch.flip(inputs[1], dims=[1]))
    for a, b in zip(flat(run(bgr, inputs)), flat(run(guider, flipped))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nine_channel_variant(config):
    model = ColorGuiderSDModel.from_config(dict(config, conditioning_channels=9))
    assert tuple(model.conv_in_condition.weight.shape[:2]) == (32, 13)
    with torch.no_grad():
        res = model(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 9, 8, 8))
    assert len(res.down) == 12 and len(res.up) == 15


def test_unsupported_config_is_refused(config):
    with pytest.raises(WeightsError, match="mid_block_type"):
        ColorGuiderSDModel.from_config(dict(config, mid_block_type="UNetMidBlock2DCrossAttn"))
    with pytest.raises(WeightsError, match="class_embed_type"):
        ColorGuiderSDModel.from_config(dict(config, class_embed_type="timestep"))


def test_release_folder_loading(tmp_path, inputs):
    folder = write_graysd(tmp_path, seed=4)
    model = ColorGuiderSDModel.from_release_folder(folder)
    stored = torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert not model.training

    half = ColorGuiderSDModel.from_release_folder(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}

    # A converted .safetensors copy wins over the .bin.
    converted = {k: v + 1 for k, v in stored.items()}
    save_file(converted, str(folder / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(ColorGuiderSDModel.from_release_folder(folder).conv_in_condition.weight,
                       converted["conv_in_condition.weight"])


def test_release_folder_errors(tmp_path):
    folder = write_graysd(tmp_path, seed=4)
    bin_file = folder / "diffusion_pytorch_model.bin"
    stored = torch.load(bin_file, weights_only=True)
    del stored["brushnet_mid_block.bias"]
    torch.save(stored, bin_file)
    with pytest.raises(WeightsError, match="missing brushnet_mid_block.bias"):
        ColorGuiderSDModel.from_release_folder(folder)

    bin_file.unlink()
    with pytest.raises(WeightsError, match="guider weights not found"):
        ColorGuiderSDModel.from_release_folder(folder)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, _class_name="ControlNetModel")))
    with pytest.raises(WeightsError, match="ControlNetModel"):
        ColorGuiderSDModel.from_release_folder(folder)
    with pytest.raises(WeightsError, match="config not found"):
        ColorGuiderSDModel.from_release_folder(tmp_path / "nowhere")
