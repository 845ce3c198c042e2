"""PixArt Sketch path against the original's outputs (parity README, pixart_tiny): loaded through the
same loader as the real release."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.release.paths import PIXART_STYLES
from colorflow_core.release.pixart import load_pixart_style
from colorflow_core.retrieve.canvas import canvas_mask
from colorflow_core.sizes import PageSize
from tests.support.parity import parity_params

STEP_TOL = 1e-4
IMAGE_TOL = 2e-3


def _style(case: Path) -> str:
    meta = json.loads((case / "case.json").read_text())
    return meta.get("style") or next(s for s in PIXART_STYLES if (case / "weights" / s).is_dir())


@pytest.fixture(scope="module", params=parity_params("pixart"))
def loaded(request):
    case: Path = request.param
    weights = case / "weights"
    components = load_pixart_style(weights, weights / "base", _style(case))
    return case, components


def _step_inputs(case: Path, device: torch.device):
    expected = case / "expected"
    step = json.loads((expected / "step.json").read_text())
    x = torch.from_numpy(np.load(expected / "step_x.npy"))
    cond = torch.from_numpy(np.load(expected / "step_cond.npy"))
    added = {
        "resolution": torch.tensor([step["resolution"]] * 2, dtype=torch.float32),
        "aspect_ratio": torch.tensor([[step["aspect_ratio"]]] * 2, dtype=torch.float32),
    }
    return torch.cat([x, x]), torch.cat([cond, cond]), torch.tensor(step["timestep"]), added


def test_all_lora_tensors_landed(loaded):
    case, components = loaded
    meta = json.loads((case / "case.json").read_text())
    assert components.lora_tensors == meta["lora_keys"]
    lora_params = [n for n, _ in components.transformer.named_parameters() if ".lora_" in n]
    assert len(lora_params) == meta["lora_keys"]


def test_micro_conditions_match_step_json(loaded):
    case, components = loaded
    expected = json.loads((case / "expected" / "step.json").read_text())
    meta = json.loads((case / "case.json").read_text())
    canvas = PageSize(meta["target_width"], meta["target_height"]).canvas
    kw = components.pipeline().micro_conditions(canvas, 2)
    assert kw["resolution"].tolist() == [expected["resolution"]] * 2
    assert kw["aspect_ratio"].tolist() == [[pytest.approx(expected["aspect_ratio"])]] * 2


def test_one_step(loaded):
    case, components = loaded
    pipe = components.pipeline()
    x, cond, t, added = _step_inputs(case, pipe.device)
    with torch.no_grad():
        controls = pipe.guider(torch.cat([x, cond], 1), t.expand(2), added)
    reference = np.load(case / "expected" / "step_guider_outputs.npz")
    assert len(controls) == len(reference.files)
    for k, control in enumerate(controls):
        np.testing.assert_allclose(control.numpy(), reference[f"block_{k}"], rtol=0, atol=STEP_TOL)
    with_guider = pipe.predict(x, t, cond, added, use_cfg=True)
    np.testing.assert_allclose(with_guider.numpy(), np.load(case / "expected" / "step_noise_pred.npy"),
                               rtol=0, atol=STEP_TOL)
    without = pipe.predict(x, t, None, added, use_cfg=True)
    np.testing.assert_allclose(without.numpy(), np.load(case / "expected" / "step_noise_pred_no_guider.npy"),
                               rtol=0, atol=STEP_TOL)


def test_full_pipeline(loaded):
    case, components = loaded
    meta = json.loads((case / "case.json").read_text())
    run = json.loads((case / "expected" / "pipeline.json").read_text())
    pipe = components.pipeline()
    assert pipe.make_scheduler(run["steps"]).timesteps.tolist() == run["timesteps"]
    canvas = Image.open(case / "expected" / "canvas.png").convert("RGB")
    mask = canvas_mask(PageSize(meta["target_width"], meta["target_height"]))
    image = pipe([canvas], [mask], steps=run["steps"], cfg=run["guidance_scale"],
                 seed=run["seed"], output_type="np")[0]
    np.testing.assert_allclose(image, np.load(case / "expected" / "pipeline_image.npy"), rtol=0, atol=IMAGE_TOL)


def test_merged_lora_gives_the_same_prediction(loaded):
    case, components = loaded
    weights = case / "weights"
    merged = load_pixart_style(weights, weights / "base", _style(case), merge=True).pipeline()
    assert not any(".lora_" in n for n, _ in merged.transformer.named_parameters())
    x, cond, t, added = _step_inputs(case, merged.device)
    np.testing.assert_allclose(merged.predict(x, t, cond, added, use_cfg=True).numpy(),
                               np.load(case / "expected" / "step_noise_pred.npy"), rtol=0, atol=STEP_TOL)
