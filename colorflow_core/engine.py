"""`ColorFlow`: the one facade the CLI, the ComfyUI nodes and the benchmarks call.

It wires the stages together (style preprocessing → retrieval → in-context colorization → GSRP),
owns the loaded networks of one style, and validates user settings up front so a bad value is an
`InputError` naming the setting, never a crash in the middle of a chapter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch
from PIL import Image
from torch import nn

from .colorize.batching import PageBatchPipeline
from .colorize.sd.pipeline import ColorFlowSDPipeline
from .errors import InputError, NumericalError, WeightsError, check_number
from .images import image_source
from .options import MAX_BATCH_SIZE, MAX_CFG, MAX_GUIDER_STRENGTH, MAX_STEPS
from .preprocess import STYLES, LineExtractor, ScreenStyleConverter, prepare_page
from .release.paths import PIXART_STYLES, ReleasePaths, find_release
from .release.pixart import load_pixart_style
from .retrieve.canvas import MAX_TOP_K, RetrievalResult, retrieve_many
from .retrieve.encoders import ImageEncoder, load_encoder, parse_encoder
from .retrieve.pool import ReferencePool
from .runtime import performance
from .runtime.seeding import MAX_SEED, check_generator_device
from .sizes import PRESETS, PageSize
from .upscale.decoder import GuidedUpscaler, centre_crop
from .upscale.fusion import FusionNet

ProgressFn = Callable[[int, int], None]
InterruptFn = Callable[[], None]

# The offload mode is chosen at load, before any page size is known: plan for the official page area
# (all presets are 512x800-sized).
PLANNING_SIZE = PRESETS["512x800"]


@dataclass
class ColorizeSettings:
    """User knobs of one colorization run (defaults = the original demo's)."""

    steps: int = 10                      # 1..options.MAX_STEPS
    cfg: float | None = None             # None: the style's options.DEFAULT_CFG; ≤ 1 runs without CFG
    guider_strength: float = 1.0            # ColorGuider conditioning scale, 0..5
    seed: int = 0                        # page i uses seed + i (ARCHITECTURE "Random draws")
    top_k: int = 3                       # 1..3 reference patches per page patch
    batch_size: int | None = None        # pages per UNet batch; None = chosen from free memory
    generator_device: str = "cpu"        # seeding.GENERATOR_DEVICES; "cuda" reproduces the original demo's draws
                                         # on an NVIDIA GPU (InputError without one)

    def validate(self) -> None:
        """Raise one InputError naming the first unusable setting."""
        check_number("steps", self.steps, 1, MAX_STEPS, integer=True)
        if self.cfg is not None:
            check_number("cfg", self.cfg, 0.0, MAX_CFG)
        check_number("guider_strength", self.guider_strength, 0.0, MAX_GUIDER_STRENGTH)
        check_number("seed", self.seed, 0, MAX_SEED, integer=True)
        check_number("top_k", self.top_k, 1, MAX_TOP_K, integer=True)
        if self.batch_size is not None:
            check_number("batch_size", self.batch_size, 1, MAX_BATCH_SIZE, integer=True)
        check_generator_device(self.generator_device)


@dataclass
class PageContext:
    """Retrieve References → In-Context Colorize: everything later stages need about one page."""

    size: PageSize
    condition: Image.Image          # 1.5W x 1.5H, the preprocessed page (diffusion condition); the page
                                    # as given for screenstyle without screentone (preprocess.prepare_page)
    guide: Image.Image              # 1.5W x 1.5H, the GSRP guide
    retrieval: RetrievalResult      # canvas (2W x 2H), mask, placements, scores
    name: str = ""                  # page name (file stem) for outputs


@dataclass
class PageResult:
    """One finished page."""

    name: str
    image: Image.Image              # 1.5W x 1.5H coloured page (GSRP output)
    canvas: Image.Image             # 2W x 2H colorized canvas (ICP output)
    context: PageContext = field(repr=False)


def page_label(index: int, name: str = "", image: Image.Image | None = None) -> str:
    """How messages name page ``index`` (from 0) of a call: its number, name and file where known."""
    source = image_source(image) if image is not None else None
    label = f"page {name!r}" if name else f"page {index + 1}"
    return label + (f" ({source})" if source else "")


def _components(style: str, screentone: bool, release_encoder: bool) -> list[str]:
    """Release components (release.COMPONENTS names) a style needs (the image encoder only for ``clip``)."""
    encoder = ["image_encoder"] if release_encoder else []
    if style == "screenstyle":
        return ["graysd", "graysd_fusion", *encoder] + (["screenstyle"] if screentone else [])
    return [style, f"{style}_fusion", *encoder, "line_extractor"]


class ColorFlow:
    """The loaded networks of one style plus the stage functions. Build with `ColorFlow.load`."""

    def __init__(self, style: str, pipeline: PageBatchPipeline, encoder: ImageEncoder, upscaler: GuidedUpscaler,
                 screentone: ScreenStyleConverter | None, lines: LineExtractor | None,
                 device: torch.device, dtype: torch.dtype, offload: performance.Offload,
                 fusion_file: Path | None = None, encoder_spec: str | None = None) -> None:
        self.style, self.pipeline, self.encoder, self.upscaler = style, pipeline, encoder, upscaler
        self.screentone, self.lines = screentone, lines
        self.device, self.dtype = device, dtype
        self.offload = offload
        self.fusion_file = fusion_file
        self.encoder_spec = encoder_spec  # the `encoder` option it was loaded with (None: an ImageEncoder given)

    @classmethod
    def load(cls, style: str = "screenstyle", release: str | Path | None = None, base: str | Path | None = None, *,
             device: str | torch.device | None = None, dtype: str | torch.dtype = "auto",
             encoder: str | ImageEncoder = "clip", screentone: bool = True, allow_download: bool = False,
             reuse: "ColorFlow | None" = None,
             speed: performance.SpeedOptions = performance.SpeedOptions()) -> "ColorFlow":
        """Load a style from the release (``release`` None → `release.find_release`).

        ``base``: the SD1.5 folder / single file (screenstyle) or the PixArt-alpha folder (sketch,
        shading); None → the hub default. ``screentone=False`` (screenstyle only) skips the ScreenStyle
        conversion: the gray page itself is the condition. ``reuse`` shares the image encoder, GSRP
        fusion net and preprocessing nets of another loaded ColorFlow (same device and dtype).
        ``speed``: `performance.configure` places the big nets (offload by free memory, SDPA, ...).
        """
        if style not in STYLES:
            raise InputError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
        if isinstance(encoder, str):
            parse_encoder(encoder)  # a bad spec is refused before anything loads
        dev = performance.resolve_device(device)
        dt = performance.resolve_dtype(dtype, dev)
        if reuse is not None and (reuse.device != dev or reuse.dtype != dt):
            raise InputError(f"cannot reuse networks on {reuse.device}/{reuse.dtype} for a model on {dev}/{dt}")
        needed = _components(style, screentone, release_encoder=encoder == "clip")
        root = find_release(release, allow_download=allow_download, components=needed)
        paths = ReleasePaths(root)
        try:
            paths.require(needed)  # one WeightsError listing every missing file before anything loads
        except WeightsError as exc:
            if "screenstyle" in needed and paths.missing(["screenstyle"]):
                raise WeightsError(f"{exc}\nThe ScreenStyle networks serve only the screentone conversion: for pages "
                                   f"that already are gray manga, turn it off (screentone=False, CLI --no-screentone)."
                                   ) from exc
            raise

        # The big nets load on the CPU; performance.configure then places them (resident or offloaded).
        pipeline: PageBatchPipeline
        if style in PIXART_STYLES:
            pipeline = load_pixart_style(root, base, style, "cpu", dt, prompt_device=dev).pipeline()
            fusion_file = paths.style_fusion(style)
        else:
            pipeline = ColorFlowSDPipeline.from_release(root, base, "cpu", dt, allow_download=allow_download)
            fusion_file = paths.graysd_fusion
        big = list(pipeline.networks().values())

        if not isinstance(encoder, str):
            image_encoder = encoder
        elif reuse is not None and reuse.encoder_spec == encoder:
            image_encoder = reuse.encoder  # placed by the other load
        else:  # fp32 as in the original (retrieval scores are compared across pages)
            image_encoder = load_encoder(encoder, paths.image_encoder, device="cpu")
            image_encoder.identity  # noqa: B018 the pool cache key hashes the weights: now, before offload moves them
            image_encoder.device = dev
            big.insert(0, image_encoder.model)
        # configure places the nets (or hooks them); their holders only build inputs on the device
        pipeline.device = dev
        offload = performance.configure(big, dev, pipeline.page_bytes(PLANNING_SIZE.latent), speed)

        if reuse is not None and reuse.fusion_file == fusion_file:
            fusion = reuse.upscaler.fusion
        else:
            fusion = FusionNet.from_file(fusion_file, dtype=dt, device=dev)
        upscaler = GuidedUpscaler(pipeline.vae, fusion, dev, dt)

        converter = getattr(reuse, "screentone", None) if style == "screenstyle" and screentone else None
        if style == "screenstyle" and screentone and converter is None:
            converter = ScreenStyleConverter.from_release(root, dev)
        lines = getattr(reuse, "lines", None) if style in PIXART_STYLES else None
        if style in PIXART_STYLES and lines is None:
            lines = LineExtractor.from_file(paths.line_extractor, dev)
        return cls(style, pipeline, image_encoder, upscaler, converter, lines, dev, dt, offload, fusion_file,
                   encoder_spec=encoder if isinstance(encoder, str) else None)

    # ---- stages ----

    def reference_pool(self, references: Sequence[Image.Image | str | os.PathLike], size: PageSize,
                       cache_dir: str | Path | None = None, progress: ProgressFn | None = None) -> ReferencePool:
        """Embed every reference patch once (cached under ``cache_dir`` when given). References given as
        files are read a few at a time and cut again only for the patches a page shows."""
        if cache_dir is not None:
            return ReferencePool.cached(references, self.encoder, size, cache_dir, progress=progress)
        return ReferencePool.build(references, self.encoder, size, progress=progress)

    def prepare(self, pages: Sequence[Image.Image], pool: ReferencePool, size: PageSize, *, top_k: int = 3,
                seed: int = 0, names: Sequence[str] | None = None, progress: ProgressFn | None = None,
                generator_device: str = "cpu",
                allowed: Sequence[Collection[int] | None] | None = None) -> list[PageContext]:
        """Style preprocessing (page i seeded seed + i) and retrieval → one context per page.

        ``allowed``: per page, the pool reference indices it may retrieve from (None: the whole pool;
        see `retrieve.pinning`), masked in the similarity matrix (`canvas.retrieve_many`).
        """
        check_number("top_k", top_k, 1, MAX_TOP_K, integer=True)
        check_number("seed", seed, 0, MAX_SEED, integer=True)
        check_generator_device(generator_device)
        names = list(names) if names is not None else [""] * len(pages)
        if len(names) != len(pages):
            raise InputError(f"{len(names)} names for {len(pages)} pages")
        if allowed is not None and len(allowed) != len(pages):
            raise InputError(f"{len(allowed)} allowed-reference entries for {len(pages)} pages")
        conditions, guides = [], []
        for i, page in enumerate(pages):
            try:
                prepared = prepare_page(page, self.style, size, screentone=self.screentone, lines=self.lines,
                                        seed=seed + i, generator_device=generator_device)
            except InputError as exc:
                raise InputError(f"{page_label(i, names[i], page)}: {exc}") from exc
            conditions.append(prepared.condition)
            guides.append(prepared.guide)
            if progress is not None:
                progress(i + 1, len(pages))
        results = retrieve_many(conditions, pool, self.encoder, size, top_k, allowed=allowed)
        return [PageContext(size, c, g, r, name) for c, g, r, name in zip(conditions, guides, results, names)]

    def colorize(self, contexts: Sequence[PageContext], settings: ColorizeSettings = ColorizeSettings(),
                 progress: ProgressFn | None = None, check_interrupt: InterruptFn | None = None) -> list[Image.Image]:
        """In-context colorization of each context's canvas → 2W x 2H canvases (page i: settings.seed + i)."""
        settings.validate()
        if len({c.size for c in contexts}) > 1:
            raise InputError("all pages of one colorize call must share one page size")
        if not contexts:
            return []
        batch = settings.batch_size or self.auto_batch_size(contexts[0].size, len(contexts))
        try:
            return self.pipeline([c.retrieval.canvas for c in contexts], [c.retrieval.mask for c in contexts],
                                 steps=settings.steps, cfg=settings.cfg,
                                 guider_strength=settings.guider_strength, seed=settings.seed,
                                 generator_device=settings.generator_device, batch_size=batch, progress=progress,
                                 check_interrupt=check_interrupt)
        except NumericalError as exc:
            raise exc.named([page_label(i, c.name) for i, c in enumerate(contexts)]) from None

    def auto_batch_size(self, size: PageSize, pages: int) -> int:
        """Pages per diffusion batch at this page size, from free memory less what offloading reserves."""
        return self.pipeline.auto_batch_size(size.canvas, pages, self.offload.free_bytes())

    def upscale(self, contexts: Sequence[PageContext], colored: Sequence[Image.Image], seed: int = 0,
                progress: ProgressFn | None = None, check_interrupt: InterruptFn | None = None,
                generator_device: str = "cpu") -> list[Image.Image]:
        """GSRP (page i: seed + i + 5): each coloured page at 1.5x, guided by its context's guide.

        ``colored[i]`` is the whole 2W x 2H colorized canvas (its centre is the page) or the W x H page.
        """
        check_number("seed", seed, 0, MAX_SEED, integer=True)
        check_generator_device(generator_device)
        if len(contexts) != len(colored):
            raise InputError(f"{len(colored)} colorized canvases or pages for {len(contexts)} pages")
        if not contexts:
            return []
        pages = []
        for ctx, image in zip(contexts, colored):
            if image.size not in (ctx.size.canvas, (ctx.size.width, ctx.size.height)):
                raise InputError(f"coloured image is {image.size}, expected the canvas {ctx.size.canvas} or the page "
                                 f"{(ctx.size.width, ctx.size.height)} for pages of {ctx.size}")
            pages.append(centre_crop(image) if image.size == ctx.size.canvas else image)
        guides = [ctx.guide for ctx in contexts]
        try:
            return self.upscaler(pages, guides, seeds=seed, progress=progress, check_interrupt=check_interrupt,
                                 batch_size=self.upscaler.auto_batch_size(guides, self.offload.free_bytes()),
                                 generator_device=generator_device)
        except NumericalError as exc:
            raise exc.named([page_label(i, c.name) for i, c in enumerate(contexts)]) from None

    def run(self, pages: Sequence[Image.Image], pool: ReferencePool, size: PageSize,
            settings: ColorizeSettings = ColorizeSettings(), progress: ProgressFn | None = None,
            check_interrupt: InterruptFn | None = None, names: Sequence[str] | None = None,
            allowed: Sequence[Collection[int] | None] | None = None) -> list[PageResult]:
        """All stages for a batch of pages; progress counts pages (prepare) + pages x steps + pages (GSRP).
        ``allowed``: per page, the references it may retrieve from (`prepare`)."""
        settings.validate()
        n = len(pages)
        total = n * (settings.steps + 2)

        def offset(start: int) -> ProgressFn | None:
            return None if progress is None else (lambda done, _total: progress(start + done, total))

        contexts = self.prepare(pages, pool, size, top_k=settings.top_k, seed=settings.seed, names=names,
                                progress=offset(0), generator_device=settings.generator_device, allowed=allowed)
        canvases = self.colorize(contexts, settings, progress=offset(n), check_interrupt=check_interrupt)
        self.free()
        if check_interrupt is not None:
            check_interrupt()
        images = self.upscale(contexts, canvases, seed=settings.seed, progress=offset(n + n * settings.steps),
                              check_interrupt=check_interrupt, generator_device=settings.generator_device)
        return [PageResult(ctx.name, image, canvas, ctx) for ctx, image, canvas in zip(contexts, images, canvases)]

    # ---- networks and memory ----

    def networks(self) -> dict[str, nn.Module]:
        """Every network the engine runs, by name, each once (for ComfyUI's ModelPatcher container)."""
        nets = dict(self.pipeline.networks())
        model = getattr(self.encoder, "model", None)
        if isinstance(model, nn.Module):
            nets["image_encoder"] = model
        nets["fusion"] = self.upscaler.fusion
        for holder in (self.screentone, self.lines):
            if holder is not None:
                nets.update(holder.networks())
        return nets

    def to(self, device: str | torch.device) -> "ColorFlow":
        """Move every network (e.g. ComfyUI offloading to CPU between runs); offload hooks come off first."""
        dev = performance.resolve_device(device)
        self.offload.remove()
        self.offload = performance.Offload(self.offload.models, "none", dev)
        self.pipeline.to(dev)
        self.encoder.to(dev)
        self.upscaler.fusion.to(dev)
        self.upscaler.device = dev
        for holder in (self.screentone, self.lines):
            if holder is not None:
                holder.to(dev)
        self.device = dev
        return self

    def free(self) -> None:
        """Return cached GPU memory between stages (Python garbage first, so freed tensors are released)."""
        performance.release_memory(self.device)
