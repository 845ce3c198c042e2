"""release.load_sd_base on a single-file SD1.5 checkpoint (original LDM/CompVis keys) + a diffusers config folder.

The checkpoint is the tiny diffusers base converted with ComfyUI's own key maps (tests/native_tiny.py),
so this module needs ComfyUI like the other native tests:
`COMFYUI_DIR=... <comfy venv>/bin/python -m pytest tests/release/test_release_single_file.py`.
"""
from __future__ import annotations

import pytest
import torch

from tests.support.native import comfy_or_skip

comfy_or_skip()

from safetensors.torch import save_file  # noqa: E402

from colorflow_core.errors import WeightsError  # noqa: E402
from colorflow_core.release.sd import encode_clip_prompts, load_sd_base  # noqa: E402
from colorflow_core.testing.sd import write_sd_base  # noqa: E402
from tests.support.native_tiny import ldm_checkpoint  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """(the tiny base from its diffusers folder, the same weights loaded from one LDM .safetensors file)."""
    root = tmp_path_factory.mktemp("single_file")
    folder = write_sd_base(root / "base", "tiny", seed=3)
    reference = load_sd_base(folder)
    checkpoint = ldm_checkpoint(reference.unet, reference.vae, reference.text_encoder)
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in checkpoint)
    assert "first_stage_model.encoder.down.0.block.0.conv1.weight" in checkpoint
    assert checkpoint["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # ldm 1x1 conv
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint
    diffusers_names = ("down_blocks.", "up_blocks.", "mid_block.", ".resnets.", ".attentions.")
    assert not any(n in k for k in checkpoint for n in diffusers_names)  # no diffusers names left
    file = root / "tiny_sd15.safetensors"
    save_file(checkpoint, str(file))
    return reference, load_sd_base(file, config=folder), checkpoint, folder


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_single_file_weights_all_land(bases):
    reference, single, _, _ = bases
    for part in ("unet", "vae", "text_encoder"):
        ref, got = getattr(reference, part).state_dict(), getattr(single, part).state_dict()
        assert set(got) == set(ref), part
        assert not any(t.is_meta for t in got.values()), part
        worst = max(_max_diff(got[k].float(), ref[k].float()) for k in ref)
        assert worst == 0.0, f"{part}: weights differ by {worst}"
    assert type(single.scheduler_config) is dict
    assert single.scheduler_config["_class_name"] == reference.scheduler_config["_class_name"]
    assert single.tokenizer(["manga"]).input_ids == reference.tokenizer(["manga"]).input_ids


@torch.no_grad()
def test_single_file_outputs_match_the_folder(bases):
    reference, single, _, _ = bases
    g = torch.Generator().manual_seed(0)
    prompts = ["", "a manga page"]
    embeds = encode_clip_prompts(reference.text_encoder, reference.tokenizer, prompts)
    assert _max_diff(encode_clip_prompts(single.text_encoder, single.tokenizer, prompts), embeds) <= TOL

    x = torch.randn(2, 4, 8, 8, generator=g)
    assert _max_diff(single.unet(x, 700, embeds).sample, reference.unet(x, 700, embeds).sample) <= TOL

    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    latents = reference.vae.encode(image).latent_dist.mean
    assert _max_diff(single.vae.encode(image).latent_dist.mean, latents) <= TOL
    assert _max_diff(single.vae.decode(latents).sample, reference.vae.decode(latents).sample) <= TOL


def test_checkpoint_missing_weights_is_refused_clearly(bases, tmp_path):
    _, _, checkpoint, folder = bases
    partial = dict(checkpoint)
    for key in [k for k in partial if k.startswith("model.diffusion_model.out.")]:
        del partial[key]
    file = tmp_path / "partial.safetensors"
    save_file(partial, str(file))
    with pytest.raises(WeightsError, match="not a complete SD1.5 model"):
        load_sd_base(file, config=folder)
