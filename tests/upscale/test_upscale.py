"""GSRP on a tiny random VAE: hook points, hook hygiene, batching, seeds and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.testing.fusion import write_fusion_net
from colorflow_core.upscale.decoder import (
    GuidedUpscaler,
    centre_crop,
    decode_with_features,
    encode_with_features,
    guided_decode,
    posterior_sample,
    to_model_input,
    to_uint8_image,
    vae_feature_channels,
)
from colorflow_core.upscale.fusion import FusionNet, level_widths

GUIDE = (48, 32)  # guides must be multiples of 8 (the VAE's factor)
CROP = (32, 24)  # the coloured crop is resized to the guide's size, so any size works


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    model = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def fusion(vae, tmp_path_factory) -> FusionNet:
    path = write_fusion_net(tmp_path_factory.mktemp("gsrp"), vae_feature_channels(vae), seed=1)
    return FusionNet.from_file(path)


def random_image(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(data.squeeze(-1) if channels == 1 else data, mode)


def pages(count: int) -> tuple[list[Image.Image], list[Image.Image]]:
    return [random_image(CROP, 10 + i) for i in range(count)], [random_image(GUIDE, 20 + i) for i in range(count)]


def no_hooks(vae: AutoencoderKL) -> bool:
    points = [vae.encoder.conv_in, *vae.encoder.down_blocks, vae.decoder.mid_block, *vae.decoder.up_blocks]
    return all(not p._forward_hooks and not p._forward_pre_hooks for p in points)


def test_centre_crop_is_the_middle_quarter():
    canvas = random_image((64, 48), 0)
    expected = np.asarray(canvas)[12:36, 16:48]
    assert np.array_equal(np.asarray(centre_crop(canvas)), expected)


def test_encoder_features_are_conv_in_and_down_block_outputs(vae):
    x = torch.rand(2, 3, *GUIDE[::-1]) * 2 - 1
    with torch.no_grad():
        posterior, feats = encode_with_features(vae, x)
        h = vae.encoder.conv_in(x)
        expected = [h]
        for block in vae.encoder.down_blocks:
            h = block(h)
            expected.append(h)
        plain = vae.encode(x).latent_dist
    assert [f.shape[1] for f in feats] == list(vae_feature_channels(vae))
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(posterior.mean, plain.mean, rtol=0, atol=0)
    assert no_hooks(vae)


def test_decoder_gets_fused_levels_deepest_first(vae):
    z = torch.randn(1, 4, GUIDE[1] // 8, GUIDE[0] // 8)
    with torch.no_grad():
        _, feats = encode_with_features(vae, torch.zeros(1, 3, *GUIDE[::-1]))
        widths = [out for _, out in level_widths(vae_feature_channels(vae))]
        fused = [torch.randn(1, c, *f.shape[-2:]) for c, f in zip(widths, feats)]
        got = decode_with_features(vae, z, fused)
        d = vae.decoder
        h = d.conv_in(vae.post_quant_conv(z))
        h = d.mid_block(h + fused[4])
        for block, level in zip(d.up_blocks, (3, 2, 1, 0)):
            h = block(h + fused[level])
        want = d.conv_out(d.conv_act(d.conv_norm_out(h)))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert no_hooks(vae)


def test_tiling_forced_off_during_the_call_and_restored(vae, fusion):
    seen = []
    handle = vae.encoder.conv_in.register_forward_hook(lambda *_: seen.append((vae.use_tiling, vae.use_slicing)))
    vae.enable_tiling()
    vae.enable_slicing()
    try:
        colored, guides = pages(2)
        GuidedUpscaler(vae, fusion)(colored, guides)
        assert seen and all(state == (False, False) for state in seen)
        assert vae.use_tiling and vae.use_slicing
    finally:
        handle.remove()
        vae.disable_tiling()
        vae.disable_slicing()


def test_hooks_removed_even_on_error(vae):
    vae.enable_tiling()
    try:
        with pytest.raises(RuntimeError):
            encode_with_features(vae, torch.zeros(1, 5, 16, 16))  # wrong channel count fails inside the VAE
        assert no_hooks(vae) and vae.use_tiling
        z = torch.zeros(1, 4, 2, 2)
        with pytest.raises(RuntimeError):
            decode_with_features(vae, z, [torch.zeros(1, 3, 1, 1)] * 5)  # wrong shapes fail in a hook
        assert no_hooks(vae) and vae.use_tiling
    finally:
        vae.disable_tiling()


def test_batch_independence_and_stats_untouched(vae, fusion):
    colored, guides = pages(3)
    before = {k: v.clone() for k, v in fusion.state_dict().items()}
    color = torch.cat([to_model_input(c.resize(GUIDE), "cpu", torch.float32) for c in colored])
    guide = torch.cat([to_model_input(g, "cpu", torch.float32) for g in guides])
    gens = lambda i: torch.Generator().manual_seed(100 + i)  # noqa: E731
    together = guided_decode(vae, fusion, color, guide, generators=[gens(i) for i in range(3)])
    for i in range(3):
        alone = guided_decode(vae, fusion, color[i : i + 1], guide[i : i + 1], generators=[gens(i)])
        torch.testing.assert_close(together.image[i : i + 1], alone.image, rtol=0, atol=1e-5)
        torch.testing.assert_close(together.latent[i : i + 1], alone.latent, rtol=0, atol=1e-5)
    for name, tensor in fusion.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    batched = GuidedUpscaler(vae, fusion)(colored, guides, seeds=[5, 6, 7], batch_size=3)
    singles = [GuidedUpscaler(vae, fusion)([c], [g], seeds=[s])[0] for c, g, s in zip(colored, guides, (5, 6, 7))]
    for a, b in zip(batched, singles):
        assert a.size == GUIDE and a.mode == "RGB"
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_seed_convention(vae, fusion):
    """Page i of a call with seed s draws its posterior noise from Generator().manual_seed(s + i + 5)."""
    colored, guides = pages(2)
    got = GuidedUpscaler(vae, fusion)(colored, guides, seeds=7)
    color = to_model_input(colored[1].resize(GUIDE), "cpu", torch.float32)
    guide = to_model_input(guides[1], "cpu", torch.float32)
    with torch.no_grad():
        posterior, _ = encode_with_features(vae, color)
        eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7 + 1 + 5))
        latent = posterior.mean + posterior.std * eps
    want = guided_decode(vae, fusion, color, guide, latent=latent).image[0]
    assert np.abs(np.asarray(got[1], dtype=int) - np.asarray(to_uint8_image(want), dtype=int)).max() <= 1
    # a different seed gives a different page; the posterior mean is seed-free
    other = GuidedUpscaler(vae, fusion)(colored[1:], guides[1:], seeds=[9])[0]
    assert not np.array_equal(np.asarray(other), np.asarray(got[1]))
    mode_a = GuidedUpscaler(vae, fusion)(colored[1:], guides[1:], seeds=[1], sample_posterior=False)[0]
    mode_b = GuidedUpscaler(vae, fusion)(colored[1:], guides[1:], seeds=[2], sample_posterior=False)[0]
    assert np.array_equal(np.asarray(mode_a), np.asarray(mode_b))


def test_posterior_sample_draws_each_page_alone(vae):
    with torch.no_grad():
        posterior, _ = encode_with_features(vae, torch.rand(2, 3, 16, 16))
    z = posterior_sample(posterior, [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)])
    eps1 = torch.randn((1, 4, 2, 2), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(z[1:], posterior.mean[1:] + posterior.std[1:] * eps1)


def test_guides_of_any_mode(vae, fusion):
    colored, guides = pages(1)
    gray = guides[0].convert("L")
    a = GuidedUpscaler(vae, fusion)(colored, [gray])[0]
    b = GuidedUpscaler(vae, fusion)(colored, [gray.convert("RGB")])[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_output_is_truncated_not_rounded():
    y = torch.full((3, 1, 2), 2 * (254.9 / 255) - 1)
    y[:, 0, 1] = 1.5  # clamps to 255
    out = np.asarray(to_uint8_image(y))
    assert out[0, 0].tolist() == [254] * 3 and out[0, 1].tolist() == [255] * 3


def test_progress_and_interrupt(vae, fusion):
    colored, guides = pages(3)
    calls = []
    GuidedUpscaler(vae, fusion)(colored, guides, progress=lambda d, t: calls.append((d, t)), batch_size=2)
    assert calls == [(2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def interrupt():
        raise Stop

    with pytest.raises(Stop):
        GuidedUpscaler(vae, fusion)(colored, guides, check_interrupt=interrupt)


def test_pages_of_different_sizes_in_one_call(vae, fusion):
    colored, guides = pages(2)
    guides[1] = random_image((40, 40), 5)
    out = GuidedUpscaler(vae, fusion)(colored, guides, batch_size=4)
    assert [o.size for o in out] == [GUIDE, (40, 40)]


def test_bad_input(vae, fusion):
    upscaler = GuidedUpscaler(vae, fusion)
    colored, guides = pages(2)
    with pytest.raises(InputError, match="2 coloured pages but 1 guides"):
        upscaler(colored, guides[:1])
    with pytest.raises(InputError, match="multiple"):
        upscaler(colored[:1], [random_image((50, 32), 0)])
    with pytest.raises(InputError, match="seeds"):
        upscaler(colored, guides, seeds=[1])
    with pytest.raises(InputError, match="multiple"):
        guided_decode(vae, fusion, torch.zeros(1, 3, 20, 20), torch.zeros(1, 3, 20, 20))
    with pytest.raises(InputError, match="must both be"):
        guided_decode(vae, fusion, torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 24))
    with pytest.raises(InputError, match="batch_size"):
        upscaler(colored, guides, batch_size=0)


def test_fusion_for_another_vae_is_refused(vae, tmp_path):
    other = FusionNet.from_file(write_fusion_net(tmp_path, (4, 4, 8, 16, 16)))
    with pytest.raises(WeightsError, match="do not belong to this VAE"):
        GuidedUpscaler(vae, other)
