"""Full SD ICP parity (parity README "Full pipeline"): our pipeline, loaded through the release loaders
from each sd case's `weights/`, against what the original code recorded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorflow_core.colorize.sd.pipeline import ColorFlowSDPipeline
from tests.support.parity import parity_params

STEP_TOL = 2e-3  # README tolerances: step latents and the pipeline image
IMAGE_LEVELS = 1  # an 8-bit rounding may flip where the float image sits on a .5 boundary


def _load_case(case: Path) -> tuple[ColorFlowSDPipeline, dict, dict]:
    weights = case / "weights"
    pipe = ColorFlowSDPipeline.from_release(weights, weights / "base")
    meta = json.loads((case / "case.json").read_text())
    run = json.loads((case / "expected" / "pipeline.json").read_text())
    return pipe, meta, run


def _canvas_and_mask(case: Path) -> tuple[Image.Image, Image.Image]:
    expected = case / "expected"
    return Image.open(expected / "canvas.png").convert("RGB"), Image.open(expected / "canvas_mask.png")


@pytest.mark.parametrize("case", parity_params("sd"))
def test_prompt_embeddings_match(case: Path) -> None:
    pipe, _, _ = _load_case(case)
    expected = np.load(case / "expected" / "step_prompt_embeds.npy")  # [negative "", "manga"]
    ours = np.concatenate([pipe.negative_embeds.numpy(), pipe.prompt_embeds.numpy()])
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4


@pytest.mark.parametrize("case", parity_params("sd"))
def test_every_step_and_the_image_match(case: Path) -> None:
    pipe, _, run = _load_case(case)
    expected = case / "expected"
    canvas, mask = _canvas_and_mask(case)
    scheduler = pipe.make_scheduler(run["steps"])
    assert scheduler.timesteps.tolist() == run["timesteps"]

    batch = pipe.prepare([canvas], [mask], [run["seed"]], use_cfg=run["guidance_scale"] > 1)
    step_latents = np.load(expected / "pipeline_step_latents.npy")
    assert step_latents.shape[0] == len(run["timesteps"])
    for k, t in enumerate(scheduler.timesteps):
        latents = pipe.step(scheduler, t, batch, run["guidance_scale"], 1.0)
        diff = np.abs(latents.numpy() - step_latents[k]).max()
        assert diff <= STEP_TOL, f"step {k} (t={int(t)}): max abs diff {diff}"

    image = pipe.decode(batch.latents)[0].permute(1, 2, 0).numpy()
    expected_image = np.load(expected / "pipeline_image.npy")
    assert image.shape == expected_image.shape
    assert np.abs(image - expected_image).max() <= STEP_TOL


@pytest.mark.parametrize("case", parity_params("sd"))
def test_call_reproduces_the_pipeline_png(case: Path) -> None:
    pipe, _, run = _load_case(case)
    canvas, mask = _canvas_and_mask(case)
    out = pipe([canvas], [mask], steps=run["steps"], cfg=run["guidance_scale"], seed=run["seed"])[0]
    expected = np.asarray(Image.open(case / "expected" / "pipeline_image.png").convert("RGB"), dtype=np.int16)
    ours = np.asarray(out, dtype=np.int16)
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)
    assert diff.max() <= IMAGE_LEVELS
    assert (diff > 0).mean() < 0.01  # "mostly" exact: only rounding-boundary pixels may flip
