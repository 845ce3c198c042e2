"""`ColorFlow`: the one facade the CLI, the ComfyUI nodes and the benchmarks call.

It wires the stages together (style preprocessing → retrieval → in-context colorization → GSRP),
owns the loaded networks of one style, and validates user settings up front so a bad value is an
`InputError` naming the setting, never a crash in the middle of a chapter.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from .encoders import CLIPImageEncoder, ImageEncoder
from .errors import InputError, WeightsError
from .fusion import MultiHiddenResNetModel
from .images import normalize_mode
from .pipeline import ColorFlowSDPipeline
from .pixart import ColorFlowPixArtPipeline, load_pixart_style
from .preprocess import STYLES, LineExtractor, ScreenStyleConverter, prepare_page
from .release import PIXART_STYLES, ReleasePaths, find_release
from .retrieval import MAX_TOP_K, ReferencePool, RetrievalResult, retrieve_many
from .sizes import PageSize
from .upscale import GuidedUpscaler, centre_crop

ProgressFn = Callable[[int, int], None]
InterruptFn = Callable[[], None]

DEFAULT_GUIDANCE = {"screenstyle": 7.5, "sketch": 4.5, "shading": 4.5}  # the original's per-pipeline defaults
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_GUIDER_SCALE = 5.0
MAX_SEED = 2**63 - 1  # page i draws with seed + i + 5: stays inside torch's 64-bit seed range
ENCODERS = ("clip",)
_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "float32": torch.float32}


def _check_number(name: str, value: object, low: float, high: float, integer: bool = False) -> None:
    """``value`` must be a (finite) number in [low, high]; integers where ``integer``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise InputError(f"{name} must be {kind} between {low:g} and {high:g}, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value!r}")


@dataclass
class ColorizeSettings:
    """User knobs of one colorization run (defaults = the original demo's)."""

    steps: int = 10                      # 1..200
    guidance_scale: float | None = None  # None: 7.5 (SD) / 4.5 (PixArt); ≤ 1 runs without CFG
    guider_scale: float = 1.0            # ColorGuider conditioning scale, 0..5
    seed: int = 0                        # page i uses seed + i (ARCHITECTURE "Random draws")
    top_k: int = 3                       # 1..3 reference patches per page patch
    batch_size: int | None = None        # pages per UNet batch; None = chosen from free memory
    generator_device: str = "cpu"        # "cuda" reproduces the original demo's draws on a GPU

    def validate(self) -> None:
        """Raise one InputError naming the first unusable setting."""
        _check_number("steps", self.steps, 1, MAX_STEPS, integer=True)
        if self.guidance_scale is not None:
            _check_number("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE)
        _check_number("guider_scale", self.guider_scale, 0.0, MAX_GUIDER_SCALE)
        _check_number("seed", self.seed, 0, MAX_SEED, integer=True)
        _check_number("top_k", self.top_k, 1, MAX_TOP_K, integer=True)
        if self.batch_size is not None:
            _check_number("batch_size", self.batch_size, 1, 1024, integer=True)
        try:
            torch.Generator(self.generator_device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"generator_device {self.generator_device!r} cannot hold a random generator: {exc}") from exc


@dataclass
class PageContext:
    """Retrieve References → In-Context Colorize: everything later stages need about one page."""

    size: PageSize
    condition: Image.Image          # 1.5W x 1.5H, the preprocessed page (diffusion condition);
                                    # the page as given for screenstyle without screentone (see prepare)
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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/"auto" → CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was asked for but torch sees no CUDA GPU: use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" → fp16 on CUDA, fp32 elsewhere; "fp16"/"bf16"/"fp32" or a torch dtype as given."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InputError(f"dtype {dtype} is not supported: use fp16, bf16 or fp32")
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use auto, fp16, bf16 or fp32")
    return _DTYPES[dtype]


def _components(style: str, screentone: bool) -> list[str]:
    """Release components (release.COMPONENTS names) a style needs."""
    if style == "screenstyle":
        return ["graysd", "graysd_fusion", "image_encoder"] + (["screenstyle"] if screentone else [])
    return [style, f"{style}_fusion", "image_encoder", "line_extractor"]


def _move_nets(holder: object, device: torch.device, *attributes: str) -> None:
    """Move the networks of a preprocessing wrapper that keeps them plus its ``device``."""
    for name in attributes:
        getattr(holder, name).to(device)
    holder.device = device


class ColorFlow:
    """The loaded networks of one style plus the stage functions. Build with `ColorFlow.load`."""

    def __init__(self, style: str, pipeline: ColorFlowSDPipeline | ColorFlowPixArtPipeline, encoder: ImageEncoder, upscaler: GuidedUpscaler,
                 screentone: ScreenStyleConverter | None, lines: LineExtractor | None,
                 device: torch.device, dtype: torch.dtype, fusion_file: Path | None = None) -> None:
        self.style, self.pipeline, self.encoder, self.upscaler = style, pipeline, encoder, upscaler
        self.screentone, self.lines = screentone, lines
        self.device, self.dtype = device, dtype
        self.fusion_file = fusion_file

    @classmethod
    def load(cls, style: str = "screenstyle", release: str | Path | None = None, base: str | Path | None = None, *,
             device: str | torch.device | None = None, dtype: str | torch.dtype = "auto",
             encoder: str | ImageEncoder = "clip", screentone: bool = True, allow_download: bool = False,
             reuse: "ColorFlow | None" = None) -> "ColorFlow":
        """Load a style from the release (``release`` None → `release.find_release`).

        ``base``: the SD1.5 folder / single file (screenstyle) or the PixArt-alpha folder (sketch,
        shading); None → the hub default. ``screentone=False`` (screenstyle only) skips the ScreenStyle
        conversion: the gray page itself is the condition. ``reuse`` shares the image encoder, GSRP
        fusion net and preprocessing nets of another loaded ColorFlow (same device and dtype).
        """
        if style not in STYLES:
            raise InputError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
        if isinstance(encoder, str) and encoder not in ENCODERS:
            raise InputError(f"unknown encoder {encoder!r}; expected one of {', '.join(ENCODERS)} or an ImageEncoder")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        if reuse is not None and (reuse.device != dev or reuse.dtype != dt):
            raise InputError(f"cannot reuse networks on {reuse.device}/{reuse.dtype} for a model on {dev}/{dt}")
        needed = _components(style, screentone)
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

        if style in PIXART_STYLES:
            pipeline = load_pixart_style(root, base, style, dev, dt).pipeline()
            fusion_file = paths.style_multires(style)
        else:
            pipeline = ColorFlowSDPipeline.from_release(root, base, dev, dt, allow_download=allow_download)
            fusion_file = paths.graysd_multires

        if not isinstance(encoder, str):
            image_encoder = encoder
        elif reuse is not None and isinstance(reuse.encoder, CLIPImageEncoder):
            image_encoder = reuse.encoder
        else:  # CLIP stays fp32 as in the original (retrieval scores are compared across pages)
            image_encoder = CLIPImageEncoder.from_pretrained(paths.image_encoder, device=dev)

        if reuse is not None and reuse.fusion_file == fusion_file:
            fusion = reuse.upscaler.fusion
        else:
            fusion = MultiHiddenResNetModel.from_file(fusion_file, dtype=dt, device=dev)
        upscaler = GuidedUpscaler(pipeline.vae, fusion, dev, dt)

        converter = getattr(reuse, "screentone", None) if style == "screenstyle" and screentone else None
        if style == "screenstyle" and screentone and converter is None:
            converter = ScreenStyleConverter.from_release(root, dev)
        lines = getattr(reuse, "lines", None) if style in PIXART_STYLES else None
        if style in PIXART_STYLES and lines is None:
            lines = LineExtractor.from_file(paths.line_extractor, dev)
        return cls(style, pipeline, image_encoder, upscaler, converter, lines, dev, dt, fusion_file)

    # ---- stages ----

    def reference_pool(self, references: Sequence[Image.Image], size: PageSize, cache_dir: str | Path | None = None,
                       progress: ProgressFn | None = None) -> ReferencePool:
        """Embed every reference patch once (cached under ``cache_dir`` when given)."""
        if cache_dir is not None:
            return ReferencePool.cached(references, self.encoder, size, cache_dir, progress=progress)
        return ReferencePool.build(references, self.encoder, size, progress=progress)

    def prepare(self, pages: Sequence[Image.Image], pool: ReferencePool, size: PageSize, *, top_k: int = 3,
                seed: int = 0, names: Sequence[str] | None = None, progress: ProgressFn | None = None,
                generator_device: str = "cpu") -> list[PageContext]:
        """Style preprocessing (page i seeded seed + i) and retrieval → one context per page."""
        _check_number("top_k", top_k, 1, MAX_TOP_K, integer=True)
        _check_number("seed", seed, 0, MAX_SEED, integer=True)
        names = list(names) if names is not None else [""] * len(pages)
        if len(names) != len(pages):
            raise InputError(f"{len(names)} names for {len(pages)} pages")
        conditions, guides = [], []
        for i, page in enumerate(pages):
            prepared = prepare_page(page, self.style, size, screentone=self.screentone, lines=self.lines,
                                    seed=seed + i, generator_device=generator_device)
            conditions.append(self._identity_condition(page) if self._identity else prepared.condition)
            guides.append(prepared.guide)
            if progress is not None:
                progress(i + 1, len(pages))
        results = retrieve_many(conditions, pool, self.encoder, size, top_k)
        return [PageContext(size, c, g, r, name) for c, g, r, name in zip(conditions, guides, results, names)]

    @property
    def _identity(self) -> bool:
        """screenstyle with the conversion turned off: the parity fixtures' identity preprocessing."""
        return self.style == "screenstyle" and self.screentone is None

    @staticmethod
    def _identity_condition(page: Image.Image) -> Image.Image:
        """The gray page itself, NOT first fitted to 1.5W x 1.5H: retrieval fits it to W x H in one
        resize, as the fixtures do (a 1.5x detour changes the query by up to ~30 levels and with it
        the retrieved patches). The GSRP guide stays the 1.5x fit."""
        return normalize_mode(page).convert("L").convert("RGB")

    def colorize(self, contexts: Sequence[PageContext], settings: ColorizeSettings = ColorizeSettings(),
                 progress: ProgressFn | None = None, check_interrupt: InterruptFn | None = None) -> list[Image.Image]:
        """In-context colorization of each context's canvas → 2W x 2H canvases (page i: settings.seed + i)."""
        settings.validate()
        if len({c.size for c in contexts}) > 1:
            raise InputError("all pages of one colorize call must share one page size")
        guidance = settings.guidance_scale if settings.guidance_scale is not None else DEFAULT_GUIDANCE[self.style]
        return self.pipeline([c.retrieval.canvas for c in contexts], [c.retrieval.mask for c in contexts],
                             steps=settings.steps, guidance_scale=guidance, guider_scale=settings.guider_scale,
                             seed=settings.seed, generator_device=settings.generator_device,
                             batch_size=settings.batch_size, progress=progress, check_interrupt=check_interrupt)

    def upscale(self, contexts: Sequence[PageContext], canvases: Sequence[Image.Image], seed: int = 0,
                progress: ProgressFn | None = None, generator_device: str = "cpu") -> list[Image.Image]:
        """GSRP: the centre of each colorized canvas, 1.5x, guided by the page's guide (seed + i + 5)."""
        _check_number("seed", seed, 0, MAX_SEED, integer=True)
        if len(contexts) != len(canvases):
            raise InputError(f"{len(canvases)} colorized canvases for {len(contexts)} pages")
        for ctx, canvas in zip(contexts, canvases):
            if canvas.size != ctx.size.canvas:
                raise InputError(f"colorized canvas is {canvas.size}, expected {ctx.size.canvas} for pages of {ctx.size}")
        self.upscaler.generator_device = torch.device(generator_device)
        return self.upscaler([centre_crop(c) for c in canvases], [ctx.guide for ctx in contexts], seeds=seed,
                             progress=progress)

    def run(self, pages: Sequence[Image.Image], pool: ReferencePool, size: PageSize,
            settings: ColorizeSettings = ColorizeSettings(), progress: ProgressFn | None = None,
            check_interrupt: InterruptFn | None = None, names: Sequence[str] | None = None) -> list[PageResult]:
        """All stages for a batch of pages; progress counts pages (prepare) + pages x steps + pages (GSRP)."""
        settings.validate()
        n = len(pages)
        total = n * (settings.steps + 2)

        def offset(start: int) -> ProgressFn | None:
            return None if progress is None else (lambda done, _total: progress(start + done, total))

        contexts = self.prepare(pages, pool, size, top_k=settings.top_k, seed=settings.seed, names=names,
                                progress=offset(0), generator_device=settings.generator_device)
        canvases = self.colorize(contexts, settings, progress=offset(n), check_interrupt=check_interrupt)
        self.free()
        if check_interrupt is not None:
            check_interrupt()
        images = self.upscale(contexts, canvases, seed=settings.seed, progress=offset(n + n * settings.steps),
                              generator_device=settings.generator_device)
        return [PageResult(ctx.name, image, canvas, ctx) for ctx, image, canvas in zip(contexts, images, canvases)]

    # ---- memory ----

    def to(self, device: str | torch.device) -> "ColorFlow":
        """Move every network (e.g. ComfyUI offloading to CPU between runs)."""
        dev = resolve_device(device)
        self.pipeline.to(dev)
        self.encoder.to(dev)
        self.upscaler.fusion.to(dev)
        self.upscaler.device = dev
        if self.screentone is not None:
            _move_nets(self.screentone, dev, "generator", "decoder")
        if self.lines is not None:
            _move_nets(self.lines, dev, "network")
        self.device = dev
        return self

    def free(self) -> None:
        """Return cached GPU memory between stages (Python garbage first, so freed tensors are released)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

