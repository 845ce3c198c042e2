"""ColorFlowSDPipeline behaviour beyond parity: batch independence, guidance ≤ 1, progress, interruption."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from colorflow_core.colorize.sd.pipeline import ColorFlowSDPipeline
from colorflow_core.errors import InputError
from tests.support.parity import parity_params

STEPS = 2


@pytest.fixture(scope="module", params=parity_params("sd"))
def setup(request) -> tuple[ColorFlowSDPipeline, list[Image.Image], list[Image.Image]]:
    case: Path = request.param
    pipe = ColorFlowSDPipeline.from_release(case / "weights", case / "weights" / "base")
    canvas = Image.open(case / "expected" / "canvas.png").convert("RGB")
    mask = Image.open(case / "expected" / "canvas_mask.png").convert("L")
    canvases = [canvas, ImageOps.mirror(canvas), ImageOps.invert(canvas)]
    return pipe, canvases, [mask] * 3


def test_text_encoder_is_dropped_after_loading(setup) -> None:
    pipe, _, _ = setup
    assert not hasattr(pipe, "text_encoder") and not hasattr(pipe, "tokenizer")
    assert pipe.prompt_embeds.shape == pipe.negative_embeds.shape


def test_a_page_does_not_depend_on_its_batch(setup) -> None:
    pipe, canvases, masks = setup
    calls: list[tuple[int, int]] = []
    together = pipe(canvases, masks, steps=STEPS, seed=7, batch_size=3, output_type="np")
    pairs = pipe(canvases, masks, steps=STEPS, seed=7, batch_size=2, output_type="np",
                 progress=lambda done, total: calls.append((done, total)))
    for i, (canvas, mask) in enumerate(zip(canvases, masks)):
        alone = pipe([canvas], [mask], steps=STEPS, seed=7 + i, batch_size=1, output_type="np")[0]
        assert np.abs(together[i] - alone).max() <= 1e-4
        assert np.abs(pairs[i] - alone).max() <= 1e-4
    # the pages really differ (a batch returning one page three times would pass the above only by luck)
    assert np.abs(together[0] - together[1]).max() > 1e-2
    # progress counts pages x steps, growing, over the whole call
    assert [d for d, _ in calls] == [2, 4, 5, 6] and {t for _, t in calls} == {3 * STEPS}


def test_guidance_one_is_a_single_conditional_pass(setup) -> None:
    """CFG with scale 1 reduces to the conditional prediction, so the single pass (which uses the cond
    half's conditioning draw) must equal a CFG batch run at scale 1."""
    pipe, canvases, masks = setup
    single = pipe(canvases[:1], masks[:1], steps=STEPS, cfg=1.0, seed=5, output_type="np")[0]

    batch = pipe.prepare(canvases[:1], masks[:1], [5], use_cfg=True)
    assert batch.conditioning.shape[0] == 2
    scheduler = pipe.make_scheduler(STEPS)
    for t in scheduler.timesteps:
        pipe.step(scheduler, t, batch, 1.0, 1.0)
    reference = pipe.decode(batch.latents)[0].permute(1, 2, 0).numpy()
    assert np.abs(single - reference).max() <= 1e-4


def test_pil_output_is_the_rounded_float_image(setup) -> None:
    pipe, canvases, masks = setup
    as_np = pipe(canvases[:1], masks[:1], steps=1, seed=2, output_type="np")[0]
    as_pil = pipe(canvases[:1], masks[:1], steps=1, seed=2)[0]
    assert as_pil.mode == "RGB" and as_pil.size == canvases[0].size
    assert np.array_equal(np.asarray(as_pil), (as_np * 255).round().astype(np.uint8))


def test_check_interrupt_stops_between_steps(setup) -> None:
    pipe, canvases, masks = setup

    class Stop(Exception):
        pass

    seen = []

    def check() -> None:
        seen.append(1)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        pipe(canvases, masks, steps=STEPS, check_interrupt=check)
    assert len(seen) == 2


def test_bad_calls_raise_input_error(setup) -> None:
    pipe, canvases, masks = setup
    with pytest.raises(InputError, match="masks"):
        pipe(canvases, masks[:1], steps=1)
    with pytest.raises(InputError, match="steps"):
        pipe(canvases[:1], masks[:1], steps=0)
    with pytest.raises(InputError, match="differ in size"):
        pipe(canvases[:1], [masks[0].resize((64, 64))], steps=1)
