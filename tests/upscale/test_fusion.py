"""FusionNet: release layout, strict loading, and the BatchNorm semantics of the original."""
from __future__ import annotations

import copy
import json
import types

import pytest
import torch
from torch import nn

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.testing.fusion import write_fusion_net
from colorflow_core.upscale.fusion import FusionNet, PageBatchNorm2d, level_widths
from tests.support.parity import parity_root

CHANNELS = (4, 4, 8, 16, 16)
# Spatial sizes of the five levels for a 32 x 24 image (scales 1, 1/2, 1/4, 1/8, 1/8).
SIZES = ((32, 24), (16, 12), (8, 6), (4, 3), (4, 3))


def features(batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SIZES)]


@pytest.fixture
def model_file(tmp_path):
    return write_fusion_net(tmp_path, CHANNELS, seed=3)


def as_torch_batchnorm(model: nn.Module, training: bool) -> nn.Module:
    """A copy whose norms run torch's own BatchNorm2d forward (the original's module) in the given mode."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, PageBatchNorm2d):
            m.forward = types.MethodType(nn.BatchNorm2d.forward, m)
    return ref.train(training)


def test_full_size_layout_matches_release_manifest():
    path = parity_root() / "manifests" / "multiresnet_sd_vae.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (set COLORFLOW_PARITY_DIR)")
    manifest = json.loads(path.read_text())
    with torch.device("meta"):
        model = FusionNet()
    got = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    assert got == manifest["entries"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["params"]


def test_level_widths_follow_the_decoder():
    assert level_widths((128, 128, 256, 512, 512)) == [(256, 256), (256, 512), (512, 512), (1024, 512), (1024, 512)]


def test_from_file_infers_channels_and_loads_every_tensor(model_file):
    model = FusionNet.from_file(model_file)
    assert model.channels == CHANNELS
    saved = torch.load(model_file, weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert not any(p.requires_grad for p in model.parameters())


def test_from_file_dtype_and_explicit_channels(model_file):
    model = FusionNet.from_file(model_file, channels=CHANNELS, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_wrong_channels_name_the_file(model_file):
    with pytest.raises(WeightsError, match="MultiResNetModel.bin") as err:
        FusionNet.from_file(model_file, channels=(4, 4, 8, 16, 32))
    assert "wrong shape" in str(err.value)


def test_truncated_file_names_the_file(model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="MultiResNetModel.bin"):
        FusionNet.from_file(model_file)


def test_missing_tensor_names_the_file_and_key(model_file):
    state = torch.load(model_file, weights_only=True)
    del state["two_layer_resnets.2.block3.bn2.running_var"]
    torch.save(state, model_file)
    with pytest.raises(WeightsError, match="two_layer_resnets.2.block3.bn2.running_var") as err:
        FusionNet.from_file(model_file)
    assert "MultiResNetModel.bin" in str(err.value)


def test_unrelated_file_is_refused(tmp_path):
    path = tmp_path / "MultiResNetModel.bin"
    torch.save({"conv.weight": torch.ones(2, 2, 3, 3)}, path)
    with pytest.raises(WeightsError, match="not a MultiResNetModel file"):
        FusionNet.from_file(path)


def test_bad_channels_are_an_input_error():
    with pytest.raises(InputError):
        FusionNet((4, 0, 8))


def test_default_matches_torch_batchnorm_in_training_mode_on_one_page(model_file):
    """The original runs the net in training mode on a batch of 1: batch statistics, biased variance."""
    model = FusionNet.from_file(model_file)
    reference = as_torch_batchnorm(model, training=True)
    color, guide = features(1, 0), features(1, 1)
    with torch.no_grad():
        ours, theirs = model(color, guide), reference(color, guide)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # The original's module also rewrote its running statistics; ours must not.
    assert not torch.equal(reference.state_dict()["two_layer_resnets.0.block1.bn1.running_mean"],
                           model.state_dict()["two_layer_resnets.0.block1.bn1.running_mean"])


def test_pages_are_normalised_independently_and_stats_untouched(model_file):
    model = FusionNet.from_file(model_file)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    color, guide = features(3, 0), features(3, 1)
    with torch.no_grad():
        together = model(color, guide)
        alone = [model([c[i : i + 1] for c in color], [g[i : i + 1] for g in guide]) for i in range(3)]
    for level, batch in enumerate(together):
        torch.testing.assert_close(batch, torch.cat([a[level] for a in alone]), rtol=0, atol=1e-5)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_running_stats_option_matches_eval_mode(model_file):
    model = FusionNet.from_file(model_file, use_running_stats=True)
    assert model.use_running_stats
    reference = as_torch_batchnorm(model, training=False)
    color, guide = features(2, 0), features(2, 1)
    with torch.no_grad():
        ours, theirs = model(color, guide), reference(color, guide)
        model.use_running_stats = False
        per_page = model(color, guide)
    for a, b, c in zip(ours, theirs, per_page):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert max((a - c).abs().max().item() for a, c in zip(ours, per_page)) > 1e-2


def test_wrong_number_of_levels_is_refused(model_file):
    model = FusionNet.from_file(model_file)
    with pytest.raises(ValueError, match="5 feature levels"):
        model(features(1, 0)[:4], features(1, 1)[:4])


def test_synthetic_file_is_all_non_zero(model_file):
    state = torch.load(model_file, weights_only=True)
    assert len(state) == len(FusionNet(CHANNELS).state_dict())
    for name, tensor in state.items():
        if not name.endswith("num_batches_tracked"):
            assert bool((tensor != 0).all()), name
