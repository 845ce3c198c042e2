"""benchmarks/flops.py predicts a chapter's FLOPs from per-network counts on the meta device and the
samples each flow sends through each network; both must agree with the FLOPs counted over a real run
of the two flows (benchmarks/flows.py) on tiny models, network by network."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import (  # noqa: E402
    FP32_ON_GPU,
    STAGE_OF,
    by_stage,
    chapter_flops,
    floor_seconds,
    main,
    network_flops,
    samples_per_chapter,
)
from benchmarks.flows import PromptEncoder, StageTimer, run_baseline, run_ours  # noqa: E402
from benchmarks.inputs import synthetic_chapter  # noqa: E402
from benchmarks.synthetic_release import write_release  # noqa: E402
from colorflow_core.engine import ColorFlow, ColorizeSettings  # noqa: E402
from colorflow_core.sizes import (
    PageSize,  # noqa: E402
    vae_scale_factor,  # noqa: E402
)

SIZE = PageSize(128, 192)
PAGES, REFERENCES, STEPS, LORA_RANK = 2, 3, 2, 4


class NetworkFlops:
    """FLOPs per network over a run: each network's forward counted by its own FlopCounterMode
    (the VAE's encoder and decoder apart, keyed by the size they run at, as flops.py keys them)."""

    def __init__(self, flow: ColorFlow, prompts: PromptEncoder) -> None:
        vae = flow.pipeline.vae
        networks = {"image_encoder": flow.encoder.model, "text_encoder": prompts.text_encoder,
                         "guider": flow.pipeline.guider, "unet": flow.pipeline.unet, "fusion": flow.upscaler.fusion,
                         "vae_encoder": vae.encoder, "vae_decoder": vae.decoder, **flow.screentone.networks()}
        self.canvas_hw = SIZE.canvas[::-1]
        self.flops: Counter[str] = Counter()
        self.handles = []
        for name, net in networks.items():
            self.handles.append(net.register_forward_pre_hook(self._start, with_kwargs=True))
            self.handles.append(net.register_forward_hook(self._stop(name), with_kwargs=True))
        # quant_conv / post_quant_conv run outside encoder / decoder: count them with their side
        self.handles.append(vae.quant_conv.register_forward_pre_hook(self._start, with_kwargs=True))
        self.handles.append(vae.quant_conv.register_forward_hook(self._stop("vae_encoder", quant=True), with_kwargs=True))
        self.handles.append(vae.post_quant_conv.register_forward_pre_hook(self._start, with_kwargs=True))
        self.handles.append(vae.post_quant_conv.register_forward_hook(self._stop("vae_decoder", quant=True),
                                                                      with_kwargs=True))
        self.factor = vae_scale_factor(vae)

    def _start(self, module, args, kwargs):
        module._flop_counter = FlopCounterMode(display=False)
        module._flop_counter.__enter__()
        first = args[0] if args else next(iter(kwargs.values()))
        module._flop_input_hw = tuple(first.shape[-2:]) if isinstance(first, torch.Tensor) else None

    def _stop(self, name: str, quant: bool = False):
        def hook(module, args, kwargs, output):
            counter = module.__dict__.pop("_flop_counter")
            counter.__exit__(None, None, None)
            hw = module.__dict__.pop("_flop_input_hw")
            key = name
            if name.startswith("vae_"):
                pixels = hw if name == "vae_encoder" and not quant else (hw[0] * self.factor, hw[1] * self.factor)
                key = f"{name}@{'canvas' if pixels == self.canvas_hw else 'guide'}"
            self.flops[key] += counter.get_total_flops()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    root = write_release(tmp_path_factory.mktemp("release"), "tiny", lora_rank=LORA_RANK)
    flow = ColorFlow.load("screenstyle", root, root / "base", device="cpu", screentone=True)
    device = torch.device("cpu")
    prompts = PromptEncoder(root / "base", device, torch.float32)
    pages, references = synthetic_chapter(PAGES, REFERENCES, SIZE, seed=5)
    settings = ColorizeSettings(steps=STEPS, seed=2)
    runs = {}
    for mode in ("baseline", "ours"):
        recorder = NetworkFlops(flow, prompts)
        # the math attention kernel is made of matrix products FlopCounterMode counts, as on the meta
        # device; the CPU's fused kernel has no FLOP formula and would be counted as zero
        try:
            with sdpa_kernel(SDPBackend.MATH):
                if mode == "baseline":
                    run_baseline(flow, prompts, pages, references, SIZE, settings, StageTimer(device))
                else:
                    run_ours(flow, pages, references, SIZE, settings, StageTimer(device),
                             tmp_path_factory.mktemp("cache"))
        finally:
            recorder.remove()
        runs[mode] = dict(recorder.flops)
    return runs, network_flops(SIZE, "tiny", lora_rank=LORA_RANK)


@pytest.mark.parametrize("mode", ["baseline", "ours"])
def test_predicted_flops_match_a_real_run_network_by_network(counted, mode: str) -> None:
    runs, per_sample = counted
    predicted = chapter_flops(per_sample, samples_per_chapter(mode, PAGES, REFERENCES, STEPS))
    measured = runs[mode]
    assert set(predicted) == set(measured)
    for name, flops in predicted.items():
        assert flops > 0 and measured[name] == pytest.approx(flops, rel=1e-3), name


def test_ours_saves_the_pool_and_prompt_work_and_nothing_else(counted) -> None:
    runs, _ = counted
    base, ours = runs["baseline"], runs["ours"]
    assert base["image_encoder"] > ours["image_encoder"] and "text_encoder" in base and "text_encoder" not in ours
    for name in set(ours) - {"image_encoder"}:
        assert ours[name] == pytest.approx(base[name], rel=1e-3), name  # same pages, same denoising work


def test_stages_and_floor_follow_the_network_table() -> None:
    chapter = {name: 10**12 for name in STAGE_OF}
    stages = by_stage(chapter)
    assert sum(stages.values()) == sum(chapter.values()) and stages["icp"] == 5 * 10**12
    fp32 = len(FP32_ON_GPU)
    assert floor_seconds(chapter, {"fp16": 1.0, "fp32": 0.5}) == pytest.approx(2 * fp32 + len(chapter) - fp32)


def test_the_script_writes_its_report(tmp_path: Path) -> None:
    report = main(["--pages", "2", "--refs", "3", "--size", "128x192", "--steps", "1", "--scale", "tiny",
                   "--out", str(tmp_path)])
    assert report["compute_ratio"] > 1 and report["floor_ratio"] > 1
    assert len(list(tmp_path.glob("flops-tiny-*.json"))) == 1
    main(["--pages", "2", "--refs", "3", "--size", "128x192", "--steps", "1", "--scale", "tiny", "--no-screentone",
          "--out", str(tmp_path)])
    assert len(list(tmp_path.glob("flops-tiny-*.json"))) == 2  # another setting, another file
    with pytest.raises(SystemExit):
        main(["--peak", "fp8=1", "--out", str(tmp_path)])
