"""Headless front end: ``python -m colorflow_core colorize PAGES... --refs REFS --out OUT``.

A chapter is processed page by page in a fixed order; each finished page is written at once
(atomically), and a re-run skips pages whose output exists. Page k of the sorted chapter always
uses ``seed + k``, so a resumed run produces exactly the pages an uninterrupted one would.
Per page: ``OUT/<stem>.png`` (the coloured page, 1.5W x 1.5H after GSRP) and, unless --no-sheets,
``OUT/sheets/<stem>_canvas.png`` (the retrieval sheet: the INPUT canvas the diffusion model saw,
i.e. the gray page in the centre surrounded by the retrieved reference patches in their colours).
The reference embeddings are cached under ``OUT/.colorflow/pool_cache``, so a resumed run does
not embed the references again.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm import tqdm

from .engine import DEFAULT_GUIDANCE, MAX_GUIDANCE, MAX_GUIDER_SCALE, MAX_STEPS, ColorFlow, ColorizeSettings
from .errors import ColorFlowError, InputError
from .images import IMAGE_SUFFIXES, list_image_files, load_image, natural_sort_key
from .performance import OFFLOAD_MODES, SpeedOptions
from .preprocess.styles import STYLES
from .retrieval import MAX_TOP_K
from .sizes import parse_size

SHEETS_DIR = "sheets"
POOL_CACHE_DIR = ".colorflow/pool_cache"  # under OUT: a resumed chapter reuses its reference embeddings
# Pages per engine call when --batch-size is not given: outputs appear after each chunk's diffusion,
# and the engine's automatic batch size works within a chunk.
DEFAULT_CHUNK = {"cpu": 4, "cuda": 16}
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m colorflow_core", description="ColorFlow colorization (headless).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("colorize", help="colorize manga pages with reference images",
                       description="Colorize a chapter: every page with the references' colours. Finished pages "
                                   "are skipped, so an interrupted run resumes where it stopped.")
    defaults = ColorizeSettings()
    p.add_argument("pages", nargs="+", help="page image files and/or folders of pages (processed in natural order: "
                                            "p2 before p10)")
    p.add_argument("--refs", required=True, metavar="DIR", help="folder of colour reference images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--style", choices=STYLES, default="screenstyle",
                   help="screenstyle: gray manga pages (SD1.5); sketch / shading: line art (PixArt) "
                        "(default screenstyle)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="ColorFlow release folder (default: $COLORFLOW_MODELS, else the hub cache)")
    p.add_argument("--base", default=None, metavar="PATH",
                   help="base model: SD1.5 diffusers folder or single .safetensors file (screenstyle), PixArt-alpha "
                        "diffusers folder (sketch, shading); default: the hub cache")
    p.add_argument("--download", action="store_true", help="download missing weights from the Hugging Face hub")
    p.add_argument("--size", default="512x800", metavar="WxH",
                   help="page size WxH in multiples of 32; outputs are 1.5 times larger (default 512x800)")
    p.add_argument("--steps", type=int, metavar="N", default=defaults.steps,
                   help=f"denoising steps (1-{MAX_STEPS}, default {defaults.steps})")
    p.add_argument("--guidance", type=float, metavar="G", default=None,
                   help=f"classifier-free guidance scale (0-{MAX_GUIDANCE:g}; default "
                        f"{DEFAULT_GUIDANCE['screenstyle']:g} for screenstyle, {DEFAULT_GUIDANCE['sketch']:g} for "
                        f"sketch / shading; 1 or less turns guidance off)")
    p.add_argument("--guider-scale", type=float, metavar="S", default=defaults.guider_scale,
                   help=f"strength of the ColorGuider's page conditioning (0-{MAX_GUIDER_SCALE:g}, "
                        f"default {defaults.guider_scale:g})")
    p.add_argument("--top-k", type=int, metavar="K", default=defaults.top_k,
                   help=f"reference patches retrieved per page patch (1-{MAX_TOP_K}, default {defaults.top_k})")
    p.add_argument("--seed", type=int, metavar="N", default=defaults.seed,
                   help=f"random seed: page i of the sorted chapter uses seed + i, so a resumed run gives the "
                        f"same pages (default {defaults.seed})")
    p.add_argument("--no-screentone", action="store_true",
                   help="skip the ScreenStyle preprocessing (screenstyle: use the gray page itself as the condition)")
    p.add_argument("--sheets", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also write each page's retrieval sheet to OUT/{SHEETS_DIR}/ (default: on)")
    p.add_argument("--pool-cache", default=None, metavar="DIR",
                   help=f"folder for the reference embeddings (default OUT/{POOL_CACHE_DIR}): a re-run with the "
                        f"same references does not embed them again")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the networks run (default auto: CUDA when available)")
    p.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                   help="network precision (default auto: fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, metavar="N", default=None,
                   help="pages per diffusion batch (default: chosen from free memory)")
    p.add_argument("--offload", choices=("auto", *OFFLOAD_MODES), default="auto",
                   help="keep networks off the GPU until used: none, model (whole networks), sequential (layer by "
                        "layer, least memory, slowest); default auto: from free GPU memory")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (faster on long chapters once the first pages have "
                        "paid the compile time; needs the networks resident: --offload none or auto)")
    return parser


def collect_pages(inputs: Sequence[str]) -> list[Path]:
    """Page files from files and folders, naturally sorted by name; non-images skipped with a warning."""
    pages: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_image_files(item) if any(_is_image(p) for p in item.iterdir()) else []
            skipped = sorted(p.name for p in item.iterdir()
                             if p.is_file() and p not in found and not p.name.startswith("."))
            if skipped:
                _warn(f"skipping {len(skipped)} non-image file(s) in {item}: {', '.join(skipped)}")
            pages += found
        elif item.is_file():
            if _is_image(item):
                pages.append(item)
            else:
                _warn(f"skipping {item}: not an image file")
        else:
            raise InputError(f"page file or folder not found: {item}")
    if not pages:
        raise InputError(f"no page images found in {', '.join(inputs)}")
    pages = sorted(dict.fromkeys(pages), key=lambda p: (natural_sort_key(p), str(p)))
    stems: dict[str, Path] = {}
    for page in pages:
        if page.stem in stems:
            raise InputError(f"two pages would write the same output {page.stem}.png: {stems[page.stem]} and {page}")
        stems[page.stem] = page
    return pages


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def output_paths(out: Path, page: Path) -> tuple[Path, Path]:
    """(coloured page, retrieval sheet) for a page."""
    return out / f"{page.stem}.png", out / SHEETS_DIR / f"{page.stem}_canvas.png"


def save_atomic(image: Image.Image, path: Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a partial PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _runs(indices: list[int], chunk: int) -> list[list[int]]:
    """Split chapter indices into runs of consecutive indices, each at most ``chunk`` long."""
    runs: list[list[int]] = []
    for k in indices:
        if runs and runs[-1][-1] == k - 1 and len(runs[-1]) < chunk:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def colorize_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    size = parse_size(args.size)
    settings = ColorizeSettings(steps=args.steps, guidance_scale=args.guidance, guider_scale=args.guider_scale,
                                seed=args.seed, top_k=args.top_k, batch_size=args.batch_size)
    settings.validate()
    pages = collect_pages(args.pages)
    ref_files = list_image_files(args.refs)
    out = Path(args.out)
    todo = [k for k, page in enumerate(pages) if not output_paths(out, page)[0].exists()]
    skipped = len(pages) - len(todo)
    if skipped:
        print(f"{skipped} of {len(pages)} pages already done in {out}; skipping them", file=sys.stderr)
    finished = 0
    bar = None
    try:
        if todo:
            engine = ColorFlow.load(args.style, release=args.models, base=args.base,
                                    device=None if args.device == "auto" else args.device, dtype=args.dtype,
                                    screentone=not args.no_screentone, allow_download=args.download,
                                    speed=SpeedOptions(offload=args.offload, compile=args.compile))
            with tqdm(total=len(ref_files), unit="ref", desc="references", file=sys.stderr, leave=False) as refs_bar:
                pool = engine.reference_pool([load_image(p) for p in ref_files], size,
                                             cache_dir=args.pool_cache or out / POOL_CACHE_DIR,
                                             progress=lambda done, _total: refs_bar.update(done - refs_bar.n))
            bar = tqdm(total=len(todo) * args.steps, unit="step", desc="colorize", file=sys.stderr)
            for run in _runs(todo, args.batch_size or DEFAULT_CHUNK.get(engine.device.type, 4)):
                base_done = bar.n
                run_settings = replace(settings, seed=args.seed + run[0])  # page k of the chapter: seed + k
                contexts = engine.prepare([load_image(pages[k]) for k in run], pool, size, top_k=args.top_k,
                                          seed=run_settings.seed, names=[pages[k].stem for k in run])
                canvases = engine.colorize(contexts, run_settings,
                                           progress=lambda done, _total: bar.update(base_done + done - bar.n))
                for j, k in enumerate(run):
                    result = engine.upscale([contexts[j]], [canvases[j]], seed=args.seed + k)[0]
                    page_out, sheet_out = output_paths(out, pages[k])
                    if args.sheets:
                        save_atomic(contexts[j].retrieval.canvas, sheet_out)
                    save_atomic(result, page_out)  # last: its existence marks the page as done
                    finished += 1
                    bar.set_postfix_str(f"{skipped + finished}/{len(pages)} pages")
    except KeyboardInterrupt:
        print(f"\ninterrupted: {finished} of {len(todo)} remaining page(s) finished and saved in {out}; "
              f"run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    print(f"done: {finished} page(s) written, {skipped} skipped (already done) in {time.monotonic() - started:.1f} s; "
          f"output in {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; ColorFlowError → one line on stderr and exit code 2 (no traceback)."""
    args = build_parser().parse_args(argv)  # the only command is "colorize" (argparse exits 2 on misuse)
    try:
        return colorize_command(args)
    except ColorFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
