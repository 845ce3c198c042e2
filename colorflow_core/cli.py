"""Headless front end: ``python -m colorflow_core colorize PAGES... --refs REFS --out OUT``.

A chapter is processed page by page in a fixed order; each finished page is written at once
(atomically, `files.atomic_write`), and a re-run skips pages whose output is a finished PNG. Output and
cache folders are checked before anything loads; a write problem is one ``error: cannot write ...``
line (exit 2) that says how many pages were finished. Page k of the sorted chapter always
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
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn, Sequence

from tqdm import tqdm

from .engine import (DEFAULT_GUIDANCE, MAX_GUIDANCE, MAX_GUIDER_SCALE, MAX_STEPS, ColorFlow,
                     ColorizeSettings)
from .errors import ColorFlowError, InputError, OutputError
from .files import check_writable_folder, save_image_atomic
from .images import (IMAGE_SUFFIXES, MAX_PIXELS_OPTION, broken_links, check_image_files, describe_broken_links,
                     list_image_files, load_image, max_image_pixels, natural_sort_key, set_max_image_pixels)
from .performance import OFFLOAD_MODES, SpeedOptions, page_runs
from .preprocess.styles import STYLES
from .retrieval import MAX_TOP_K
from .seeding import GENERATOR_DEVICES, MAX_SEED
from .sizes import parse_size

SHEETS_DIR = "sheets"
POOL_CACHE_DIR = ".colorflow/pool_cache"  # under OUT: a resumed chapter reuses its reference embeddings
# Pages per engine call when --batch-size is not given: outputs appear after each chunk's diffusion,
# and the engine's automatic batch size works within a chunk.
DEFAULT_CHUNK = {"cpu": 4, "cuda": 16}
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# ColorizeSettings field → the option a command-line user typed (engine messages name the field)
OPTION_NAMES = {"steps": "--steps", "guidance_scale": "--guidance", "guider_scale": "--guider-scale",
                "seed": "--seed", "top_k": "--top-k", "batch_size": "--batch-size",
                "generator_device": "--generator-device"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error form: usage, then ``error: ...`` as the last line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m colorflow_core", description="ColorFlow colorization (headless).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    p.add_argument("--generator-device", choices=GENERATOR_DEVICES, default=defaults.generator_device,
                   help=f"where the random draws are made (default {defaults.generator_device}: the same pages on "
                        f"every machine); cuda reproduces the original demo's draws on an NVIDIA GPU")
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
    p.add_argument("--skip-bad", action="store_true",
                   help="colour the readable pages when some pages or references cannot be used (they are listed "
                        "in a warning); default: every page and reference is checked before any model loads, and "
                        "one bad file stops the run with a list of all of them")
    p.add_argument(MAX_PIXELS_OPTION, type=int, metavar="N", default=None,
                   help=f"largest image accepted, in pixels (width x height); larger files are refused as possible "
                        f"decompression bombs (default {max_image_pixels():,}, Pillow's limit)")
    return parser


def collect_pages(inputs: Sequence[str]) -> list[Path]:
    """Page files from files and folders, naturally sorted by name; non-images skipped with a warning."""
    pages: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = list(item.iterdir())
            found = [p for p in entries if _is_image(p)]  # sorted with the other pages below
            skipped = sorted(p.name for p in entries if p.is_file() and p not in found and not p.name.startswith("."))
            if skipped:
                _warn(f"skipping {len(skipped)} non-image file(s) in {item}: {', '.join(skipped)}")
            broken = broken_links(item)
            if broken:
                _warn(describe_broken_links(item, broken))
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


def check_inputs(pages: list[Path], todo: list[int], ref_files: list[Path],
                 skip_bad: bool) -> tuple[list[int], list[Path]]:
    """Decode every page still to do and every reference before any model loads.

    Every bad file is reported at once: an InputError listing them, or with ``skip_bad`` a warning,
    and the good pages (keeping their chapter index, so their seeds do not move) and references.
    """
    bad_pages = check_image_files([pages[k] for k in todo], "page")
    bad_refs = check_image_files(ref_files, "colour reference")
    problems = [*bad_pages.values(), *bad_refs.values()]
    if not problems:
        return todo, ref_files
    listing = "\n".join(f"  {message}" for message in problems)
    if not skip_bad:
        raise InputError(f"{len(problems)} unreadable or unusable input file(s); nothing was coloured:\n{listing}\n"
                         f"fix or remove them, or run again with --skip-bad to colour the other pages")
    _warn(f"skipping {len(problems)} unreadable or unusable input file(s) (--skip-bad):\n{listing}")
    good_refs = [p for p in ref_files if p not in bad_refs]
    if not good_refs:
        raise InputError("no usable colour reference is left: every reference file is unreadable or unusable")
    good = [k for k in todo if pages[k] not in bad_pages]
    if not good:
        raise InputError("no usable page is left to colour: every remaining page is unreadable or unusable")
    return good, good_refs


def output_paths(out: Path, page: Path) -> tuple[Path, Path]:
    """(coloured page, retrieval sheet) for a page."""
    return out / f"{page.stem}.png", out / SHEETS_DIR / f"{page.stem}_canvas.png"


def page_done(path: Path) -> bool:
    """A page is done when its output is a regular, non-empty PNG file (not a folder, not an empty
    or foreign file of that name)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def parse_size_option(text: str):
    """--size → PageSize; a refusal names the option and suggests the nearest usable size."""
    try:
        return parse_size(text)
    except InputError as exc:
        try:
            hint = f"; the nearest usable size is {parse_size(text, snap=True)}"
        except InputError:
            hint = ""
        raise InputError(f"--size {text}: {exc}{hint}") from exc


def validate_options(settings: ColorizeSettings) -> None:
    """`ColorizeSettings.validate`, its messages naming the command-line option instead of the field."""
    try:
        settings.validate()
    except InputError as exc:
        message = str(exc)
        for name, option in OPTION_NAMES.items():
            if message.startswith(f"{name} "):
                raise InputError(option + message[len(name):]) from exc
        raise


def check_seed_range(seed: int, pages: int) -> None:
    """Page i of the chapter uses seed + i: the last page's seed must be in range too."""
    if seed > MAX_SEED - (pages - 1):
        raise InputError(f"--seed {seed} is too large for {pages} pages: page i uses seed + i, so the seed must be "
                         f"at most {MAX_SEED - (pages - 1)}")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def check_output_folder(out: Path, pages: Sequence[Path], refs: str) -> None:
    """Refuse an output folder that holds pages (their outputs would be taken as done pages, or as pages
    next time) or is the references folder."""
    holders = {page.parent for page in pages}
    for folder in holders:
        if _same_folder(folder, out) or _same_folder(folder, out / SHEETS_DIR):
            raise InputError(f"--out {out} holds the pages to colour ({folder}); choose another output folder, "
                             f"e.g. {out / 'colour'}")
    if _same_folder(Path(refs), out):
        raise InputError(f"--out {out} is the --refs folder; choose another output folder, e.g. {out / 'colour'}")


def check_output_locations(out: Path, pages: Sequence[Path], todo: Sequence[int], sheets: bool,
                           cache_dir: Path) -> None:
    """Before anything loads: every output and cache folder can be created and written, no folder (or
    other non-file) sits where an output goes, and every output name fits the file system.

    OutputError ("cannot write PATH: reason") otherwise; a regular file in the way that is not a
    finished page (empty, not a PNG) is only warned about, and overwritten.
    """
    for k in todo:
        for path in output_paths(out, pages[k])[: 2 if sheets else 1]:
            if len(os.fsencode(path.name)) > NAME_MAX:
                raise OutputError(f"cannot write {path}: its name would be {len(os.fsencode(path.name))} bytes long, "
                                  f"too long for a file name (at most {NAME_MAX}); give page {pages[k].name} a "
                                  f"shorter name" + ("" if path.name.endswith(".png") and path.parent == out
                                                     else " or run with --no-sheets"))
            if path.exists() and not path.is_file():
                raise OutputError(f"cannot write {path}: a folder (or other non-file) of that name is in the way; "
                                  f"move it away")
            if path.parent == out and path.exists() and not page_done(path):
                _warn(f"{path} is empty or not a PNG image: colouring page {pages[k].name} again")
    check_writable_folder(out)
    if sheets:
        check_writable_folder(out / SHEETS_DIR)
    check_writable_folder(cache_dir)


def _runs(indices: list[int], chunk: int) -> list[list[int]]:
    """Split chapter indices into runs of consecutive indices, each at most ``chunk`` long."""
    return page_runs(indices, chunk, lambda previous, k: k == previous + 1)


def colorize_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    size = parse_size_option(args.size)
    settings = ColorizeSettings(steps=args.steps, guidance_scale=args.guidance, guider_scale=args.guider_scale,
                                seed=args.seed, top_k=args.top_k, batch_size=args.batch_size,
                                generator_device=args.generator_device)
    validate_options(settings)
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    pages = collect_pages(args.pages)
    check_seed_range(args.seed, len(pages))
    ref_files = list_image_files(args.refs, warn=_warn)
    out = Path(args.out)
    check_output_folder(out, pages, args.refs)
    todo = [k for k, page in enumerate(pages) if not page_done(output_paths(out, page)[0])]
    skipped = len(pages) - len(todo)
    if skipped:
        print(f"{skipped} of {len(pages)} pages already done in {out}; skipping them", file=sys.stderr)
    cache_dir = Path(args.pool_cache) if args.pool_cache else out / POOL_CACHE_DIR
    if todo:  # before any model loads: every output and cache folder can be written, every input decodes
        check_output_locations(out, pages, todo, args.sheets, cache_dir)
        todo, ref_files = check_inputs(pages, todo, ref_files, args.skip_bad)
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
                                             cache_dir=cache_dir,
                                             progress=lambda done, _total: refs_bar.update(done - refs_bar.n))
            bar = tqdm(total=len(todo) * args.steps, unit="step", desc="colorize", file=sys.stderr)
            for run in _runs(todo, args.batch_size or DEFAULT_CHUNK.get(engine.device.type, 4)):
                base_done = bar.n
                run_settings = replace(settings, seed=args.seed + run[0])  # page k of the chapter: seed + k
                contexts = engine.prepare([load_image(pages[k]) for k in run], pool, size, top_k=args.top_k,
                                          seed=run_settings.seed, names=[pages[k].stem for k in run],
                                          generator_device=settings.generator_device)
                canvases = engine.colorize(contexts, run_settings,
                                           progress=lambda done, _total: bar.update(base_done + done - bar.n))
                for j, k in enumerate(run):
                    result = engine.upscale([contexts[j]], [canvases[j]], seed=args.seed + k,
                                            generator_device=settings.generator_device)[0]
                    page_out, sheet_out = output_paths(out, pages[k])
                    if args.sheets:
                        save_image_atomic(contexts[j].retrieval.canvas, sheet_out)
                    save_image_atomic(result, page_out)  # last: its existence marks the page as done
                    finished += 1
                    bar.set_postfix_str(f"{skipped + finished}/{len(pages)} pages")
    except KeyboardInterrupt:
        _close_bar(bar)
        print(f"\ninterrupted: {finished} of {len(todo)} remaining page(s) finished and saved in {out}; "
              f"run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ColorFlowError as exc:
        _close_bar(bar, keep=False)  # the error is the last line on stderr, not a stale progress bar
        if not (finished or isinstance(exc, OutputError)):
            raise
        print(f"error: {exc} ({finished} of {len(todo)} remaining page(s) finished and saved in {out}; run the "
              f"same command again to resume)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        _close_bar(bar)
    print(f"done: {finished} page(s) written, {skipped} skipped (already done) in {time.monotonic() - started:.1f} s; "
          f"output in {out}", file=sys.stderr)
    return 0


def _close_bar(bar: tqdm | None, keep: bool = True) -> None:
    """Close a progress bar (again: a no-op); ``keep=False`` clears it from the terminal."""
    if bar is not None:
        if not keep:
            bar.leave = False
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; ColorFlowError → one line on stderr and exit code 2 (no traceback); Ctrl-C at any
    moment → exit code 130."""
    try:
        args = build_parser().parse_args(argv)  # the only command is "colorize" (argparse exits 2 on misuse)
        return colorize_command(args)
    except ColorFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted before any page was started: nothing was coloured; run the same command again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
