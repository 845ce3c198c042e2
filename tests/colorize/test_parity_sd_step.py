"""Parity: one guided SD step on every "sd" case, loaded through the release loader (README tolerances)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from colorflow_core.colorize.sd.injection import inject_guider_residuals
from colorflow_core.release.paths import ReleasePaths
from colorflow_core.release.sd import encode_clip_prompts, load_graysd, load_sd_base
from tests.support.parity import parity_params

TOL = 1e-4


def close(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    actual = actual.detach().float().numpy()
    assert actual.shape == expected.shape, what
    diff = float(np.abs(actual - expected).max())
    assert diff <= TOL, f"{what}: max abs difference {diff}"


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
@pytest.mark.parametrize("case", parity_params("sd"))
def test_one_guided_step(case, merge):
    expected = case / "expected"
    weights = case / "weights"
    x = torch.from_numpy(np.load(expected / "step_x.npy"))
    cond = torch.from_numpy(np.load(expected / "step_cond.npy"))
    timestep = json.loads((expected / "step.json").read_text())["timestep"]
    x2, cond2 = torch.cat([x, x]), torch.cat([cond, cond])  # the CFG batch: negative first

    base = load_sd_base(weights / "base")
    embeds = encode_clip_prompts(base.text_encoder, base.tokenizer, ["", "manga"])
    close(embeds, np.load(expected / "step_prompt_embeds.npy"), "prompt embeddings")
    with torch.no_grad():
        close(base.unet(x2, timestep, embeds).sample, np.load(expected / "upstream_unet_plain.npy"), "plain UNet")

    guider = load_graysd(ReleasePaths(weights), base.unet, merge=merge)
    with torch.no_grad():
        res = guider(x2, timestep, cond2, conditioning_scale=1.0)
        stored = np.load(expected / "step_guider_residuals.npz")
        assert len(res.down) == sum(k.startswith("down_") for k in stored.files)
        assert len(res.up) == sum(k.startswith("up_") for k in stored.files)
        for i, r in enumerate(res.down):
            close(r, stored[f"down_{i}"], f"down residual {i}")
        close(res.mid, stored["mid"], "mid residual")
        for i, r in enumerate(res.up):
            close(r, stored[f"up_{i}"], f"up residual {i}")

        close(base.unet(x2, timestep, embeds).sample, np.load(expected / "step_noise_pred_no_guider.npy"),
              "UNet + LoRA without guider")
        with inject_guider_residuals(base.unet, res):
            close(base.unet(x2, timestep, embeds).sample, np.load(expected / "step_noise_pred.npy"),
                  "UNet + LoRA + guider residuals")
