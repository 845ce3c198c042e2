"""PixArt ColorGuider: loading the release folder (strict, alias handling) and its forward contract."""
from __future__ import annotations

import json

import pytest
import torch

from colorflow_core.colorize.pixart.guider import ColorGuiderPixArtModel
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.testing.pixart import guider_config, write_pixart_style


@pytest.fixture(scope="module")
def style_folder(tmp_path_factory):
    return write_pixart_style(tmp_path_factory.mktemp("release"), "sketch", seed=3)


def _inputs(batch: int = 2, h: int = 12, w: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 13, h, w, generator=g)
    t = torch.tensor([999, 500])[:batch]
    kw = {"resolution": torch.tensor([[8.0 * h, 8.0 * w]] * batch), "aspect_ratio": torch.tensor([[h / w]] * batch)}
    return x, t, kw


def test_loads_release_folder_and_returns_one_output_per_block(style_folder):
    model = ColorGuiderPixArtModel.from_release_folder(style_folder)
    state = torch.load(style_folder / "diffusion_pytorch_model.bin", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    x, t, kw = _inputs()
    with torch.no_grad():
        out = model(x, t, kw)
    cfg = guider_config("tiny")
    assert len(out) == cfg["num_layers"] // 2
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert all(o.shape == (2, 12 // 2 * 8 // 2, inner) for o in out)
    assert all(o.abs().sum() > 0 for o in out)


def test_fresh_guider_adds_nothing():
    """Zero-initialised adapters: an untrained guider leaves the transformer unchanged."""
    model = ColorGuiderPixArtModel(**guider_config("tiny"))
    x, t, kw = _inputs()
    with torch.no_grad():
        assert all(torch.count_nonzero(o) == 0 for o in model(x, t, kw))


def test_dtype_argument(style_folder):
    model = ColorGuiderPixArtModel.from_release_folder(style_folder, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def _rewrite(folder, tmp_path, edit):
    target = tmp_path / "sketch"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    state = torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, target / "diffusion_pytorch_model.bin")
    return target


def test_file_without_alias_loads_the_same(style_folder, tmp_path):
    def drop(state):
        del state["after_proj.weight"], state["after_proj.bias"]

    a = ColorGuiderPixArtModel.from_release_folder(style_folder)
    b = ColorGuiderPixArtModel.from_release_folder(_rewrite(style_folder, tmp_path, drop))
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), name


def test_alias_differing_from_last_adapter_is_refused(style_folder, tmp_path):
    def corrupt(state):
        state["after_proj.bias"] = state["after_proj.bias"] + 1

    with pytest.raises(WeightsError, match="after_proj.bias differs from adapter_linear.1.bias"):
        ColorGuiderPixArtModel.from_release_folder(_rewrite(style_folder, tmp_path, corrupt))


def test_missing_tensor_is_named(style_folder, tmp_path):
    def drop(state):
        del state["transformer_blocks.0.attn1.to_q.weight"]

    with pytest.raises(WeightsError, match="missing transformer_blocks.0.attn1.to_q.weight"):
        ColorGuiderPixArtModel.from_release_folder(_rewrite(style_folder, tmp_path, drop))


def test_missing_folder_or_weights(tmp_path):
    with pytest.raises(WeightsError, match="config.json"):
        ColorGuiderPixArtModel.from_release_folder(tmp_path / "sketch")
    (tmp_path / "sketch").mkdir()
    (tmp_path / "sketch" / "config.json").write_text(json.dumps(guider_config("tiny")))
    with pytest.raises(WeightsError, match="no guider weights"):
        ColorGuiderPixArtModel.from_release_folder(tmp_path / "sketch")


def test_wrong_input_channels(style_folder):
    model = ColorGuiderPixArtModel.from_release_folder(style_folder)
    x, t, kw = _inputs()
    with pytest.raises(InputError, match="expects"):
        model(x[:, :9], t, kw)
    with pytest.raises(InputError, match="added_cond_kwargs"):
        model(x, t, None)
