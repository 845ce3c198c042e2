"""injection.py: residual hooks on an upstream UNet (exactness is proven by the parity step test)."""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from colorflow_core.colorize.sd.guider import ColorGuiderSDModel, GuiderResiduals
from colorflow_core.colorize.sd.injection import inject_guider_residuals
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.testing.sd import guider_config_from_unet, model_config


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = model_config("unet", "tiny")
    return UNet2DConditionModel.from_config(config).eval(), ColorGuiderSDModel.from_config(guider_config_from_unet(config)).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)


@pytest.fixture(scope="module")
def residuals(models, inputs):
    with torch.no_grad():
        return models[1](inputs[0], 500, inputs[1])


def unet_out(unet, inputs, **kw):
    with torch.no_grad():
        return unet(inputs[0], 500, inputs[2], **kw).sample


def zeros_like(res: GuiderResiduals) -> GuiderResiduals:
    return GuiderResiduals([torch.zeros_like(r) for r in res.down], torch.zeros_like(res.mid),
                           [torch.zeros_like(r) for r in res.up])


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def controlnet_residuals(residuals):
    g = torch.Generator().manual_seed(9)
    return dict(down_block_additional_residuals=tuple(torch.randn(r.shape, generator=g) for r in residuals.down),
                mid_block_additional_residual=torch.randn(residuals.mid.shape, generator=g))


def test_guider_free_path_is_the_plain_unet(models, inputs, residuals):
    unet = models[0]
    plain = unet_out(unet, inputs)
    for res in (None, zeros_like(residuals)):
        with inject_guider_residuals(unet, res):
            torch.testing.assert_close(unet_out(unet, inputs), plain, rtol=0, atol=0)
    with inject_guider_residuals(unet, residuals):
        guided = unet_out(unet, inputs)
    assert not torch.allclose(guided, plain, atol=1e-3)
    # Each part of the residuals matters: dropping only the first (pre-hook) one changes the result.
    partial = GuiderResiduals([torch.zeros_like(residuals.down[0])] + residuals.down[1:], residuals.mid, residuals.up)
    with inject_guider_residuals(unet, partial):
        assert not torch.allclose(unet_out(unet, inputs), guided, atol=1e-4)


def test_controlnet_residuals_still_apply(models, inputs, residuals):
    unet = models[0]
    extra = controlnet_residuals(residuals)
    with_controlnet = unet_out(unet, inputs, **extra)
    assert not torch.allclose(with_controlnet, unet_out(unet, inputs), atol=1e-3)
    with inject_guider_residuals(unet, zeros_like(residuals)):
        torch.testing.assert_close(unet_out(unet, inputs, **extra), with_controlnet, rtol=0, atol=0)
    with inject_guider_residuals(unet, residuals):
        guided = unet_out(unet, inputs)
        both = unet_out(unet, inputs, **extra)
    assert not torch.allclose(both, guided, atol=1e-3)
    assert not torch.allclose(both, with_controlnet, atol=1e-3)


def test_hooks_are_removed_on_exit_and_on_error(models, inputs, residuals):
    unet = models[0]
    before = hook_count(unet)
    with inject_guider_residuals(unet, residuals):
        assert hook_count(unet) == before + 1 + 11 + 1 + 15
    assert hook_count(unet) == before
    with pytest.raises(RuntimeError, match="boom"):
        with inject_guider_residuals(unet, residuals):
            raise RuntimeError("boom")
    assert hook_count(unet) == before


def test_transformer_output_forms_are_rebuilt(models, residuals):
    """An attention hook keeps the caller's return form: tuple or Transformer2DModelOutput."""
    unet = models[0]
    attention = unet.down_blocks[0].attentions[0]
    h = torch.randn(residuals.down[1].shape)
    context = torch.randn(1, 5, 32)
    with torch.no_grad():
        plain = attention(h, encoder_hidden_states=context, return_dict=False)[0]
        with inject_guider_residuals(unet, residuals):
            as_tuple = attention(h, encoder_hidden_states=context, return_dict=False)
            as_output = attention(h, encoder_hidden_states=context, return_dict=True)
    assert isinstance(as_tuple, tuple) and isinstance(as_output, Transformer2DModelOutput)
    torch.testing.assert_close(as_tuple[0], plain + residuals.down[1], rtol=0, atol=0)
    torch.testing.assert_close(as_output.sample, plain + residuals.down[1], rtol=0, atol=0)


def test_mismatches_are_reported(models, inputs, residuals):
    unet = models[0]
    short = GuiderResiduals(residuals.down[:-1], residuals.mid, residuals.up)
    with pytest.raises(WeightsError, match="do not fit"):
        with inject_guider_residuals(unet, short):
            pass
    assert hook_count(unet) == 0
    batch2 = (torch.cat([inputs[0]] * 2), None, torch.cat([inputs[2]] * 2))
    with pytest.raises(InputError, match="same latents"):
        with inject_guider_residuals(unet, residuals):
            unet_out(unet, batch2)
    assert hook_count(unet) == 0
