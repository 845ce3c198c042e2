"""The two ways of colorizing a chapter that the benchmark compares, on the same `ColorFlow` engine.

- `run_baseline`: the original's behaviour — one page per call, the reference pool embedded again
  for every page, the "manga" / "" prompts encoded again for every call (the text encoder stays
  loaded for that), no batching, no cache, library-default attention and memory layout.
- `run_ours`: what the product does — the pool embedded once (cached on disk by content hash),
  prompt embeddings computed once at load, all pages prepared together and batched through the
  UNet + guider, memory freed between stages, speed settings applied by `performance.configure`
  (which `ColorFlow.load` calls with its ``speed`` options).

Both draw page i's randomness from seed + i, so they must give the same pages (within float
tolerances); tests/benchmarks/test_baseline_equivalence.py checks this on tiny models.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

from colorflow_core.colorize.prompts import NEGATIVE_PROMPT, PROMPT
from colorflow_core.engine import ColorFlow, ColorizeSettings
from colorflow_core.release.sd import encode_clip_prompts
from colorflow_core.sizes import PageSize

MODES = ("baseline", "ours")  # run_baseline, run_ours
STAGES = ("retrieval", "icp", "gsrp")


@dataclass
class StageTimer:
    """Wall time per stage, summed over pages; waits for queued GPU work at each boundary."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class ChapterOutput:
    canvases: list[Image.Image]   # 2W x 2H ICP results
    pages: list[Image.Image]      # 1.5W x 1.5H GSRP results


class PromptEncoder:
    """The base's CLIP text encoder kept loaded, as the original keeps it, to encode every call."""

    def __init__(self, base: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        base = Path(base)
        self.text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", torch_dtype=dtype).to(device).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")

    def set_prompts(self, flow: ColorFlow) -> None:
        """Encode "" and "manga" now and hand them to the pipeline, as a per-call encode would."""
        flow.pipeline.set_prompt_embeds(*encode_clip_prompts(self.text_encoder, self.tokenizer,
                                                             [NEGATIVE_PROMPT, PROMPT]))


def run_baseline(flow: ColorFlow, prompts: PromptEncoder, pages: Sequence[Image.Image],
                 references: Sequence[Image.Image], size: PageSize, settings: ColorizeSettings,
                 timer: StageTimer) -> ChapterOutput:
    """One page at a time, everything recomputed per page (the original's per-page flow)."""
    canvases, images = [], []
    for i, page in enumerate(pages):
        seed = settings.seed + i
        with timer.stage("retrieval"):
            pool = flow.reference_pool(references, size)
            contexts = flow.prepare([page], pool, size, top_k=settings.top_k, seed=seed,
                                    generator_device=settings.generator_device)
        with timer.stage("icp"):
            prompts.set_prompts(flow)
            canvas = flow.colorize(contexts, replace(settings, seed=seed, batch_size=1))
        with timer.stage("gsrp"):
            images += flow.upscale(contexts, canvas, seed=seed, generator_device=settings.generator_device)
        canvases += canvas
    return ChapterOutput(canvases, images)


def run_ours(flow: ColorFlow, pages: Sequence[Image.Image], references: Sequence[Image.Image], size: PageSize,
             settings: ColorizeSettings, timer: StageTimer, cache_dir: str | Path) -> ChapterOutput:
    """The whole chapter at once: pool once (disk cache), pages batched, memory freed between stages."""
    with timer.stage("retrieval"):
        pool = flow.reference_pool(references, size, cache_dir=cache_dir)
        contexts = flow.prepare(pages, pool, size, top_k=settings.top_k, seed=settings.seed,
                                generator_device=settings.generator_device)
    with timer.stage("icp"):
        canvases = flow.colorize(contexts, settings)
    flow.free()
    with timer.stage("gsrp"):
        images = flow.upscale(contexts, canvases, seed=settings.seed, generator_device=settings.generator_device)
    flow.free()
    return ChapterOutput(canvases, images)
