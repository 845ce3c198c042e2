"""Headless front end: ``python -m colorflow_core colorize PAGES... --refs REFS --out OUT`` (and the
``evaluate`` and ``colorize-series`` commands).

A chapter is processed in runs of pages in a fixed order (`engine.ColorFlow.run`); each finished
page is written at once and atomically (`chapter.write_page`: the tree it writes is described
there), and a re-run skips pages whose output is a finished PNG. Output and cache folders are
checked before anything loads; a write problem is one ``error: cannot write ...`` line (exit 2) that
says how many pages were finished. Page k of the sorted chapter always uses ``seed + k``, so a
resumed run produces exactly the pages an uninterrupted one would. ``--refs-map MAP.json`` pins or
excludes references per page (`retrieve.pinning`). At the end, ``OUT/report.html`` shows the chapter
(`report`).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import NoReturn, Sequence

from tqdm import tqdm

from .chapter import (
    POOL_CACHE_DIR,
    SHEETS_DIR,
    check_inputs,
    check_output_folder,
    check_output_locations,
    check_seed_range,
    collect_pages,
    output_paths,
    page_done,
    warn,
    write_page,
)
from .engine import ColorFlow, ColorizeSettings
from .errors import ColorFlowError, InputError, OutputError
from .evaluate.command import add_parser as add_evaluate_parser
from .images import (
    MAX_PIXELS_OPTION,
    list_image_files,
    load_image,
    max_image_pixels,
    set_max_image_pixels,
)
from .options import DEFAULT_CFG, DEFAULT_ENCODER, ENCODER_HELP, MAX_CFG, MAX_GUIDER_STRENGTH, MAX_STEPS, cli_flag
from .preprocess.styles import STYLES
from .report.chapter import write_report
from .retrieve.canvas import MAX_TOP_K
from .retrieve.pinning import read_refs_map, resolve_refs_map
from .runtime.performance import OFFLOAD_MODES, SpeedOptions, page_runs
from .runtime.seeding import GENERATOR_DEVICES
from .series.command import add_parser as add_series_parser
from .sizes import parse_size

# Pages per engine call when --batch-size is not given: outputs appear after each chunk's diffusion,
# and the engine's automatic batch size works within a chunk.
DEFAULT_CHUNK = {"cpu": 4, "cuda": 16}
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


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
    p.add_argument("pages", nargs="+", help="page image files and/or folders of pages (processed in natural order: "
                                            "p2 before p10)")
    p.add_argument("--refs", required=True, metavar="DIR", help="folder of colour reference images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    add_refs_map_option(p)
    add_colorize_options(p)
    p.set_defaults(handler=colorize_command)
    add_evaluate_parser(sub)
    add_series_parser(sub)
    return parser


def add_refs_map_option(p: argparse.ArgumentParser) -> None:
    """``--refs-map MAP.json``: the references each named page may use (keys: page file stems)."""
    p.add_argument("--refs-map", default=None, metavar="MAP.json",
                   help='pin or exclude references per page: a JSON object of page stem → reference file names '
                        'or globs, e.g. {"p3": ["hero_sheet.png", "cover.jpg"], "p9": {"exclude": ["villain*"]}} '
                        '(a list pins: only those are candidates; {"exclude": [...]} removes; pages not named use '
                        'every reference; default: none)')


def add_colorize_options(p: argparse.ArgumentParser) -> None:
    """The options of a colorization run (model, size, settings, speed, input checks), shared by
    ``colorize`` and ``colorize-series``."""
    defaults = ColorizeSettings()
    p.add_argument("--style", choices=STYLES, default="screenstyle",
                   help="screenstyle: gray manga pages (SD1.5); sketch / shading: line art (PixArt) "
                        "(default screenstyle)")
    p.add_argument("--release", default=None, metavar="DIR",
                   help="ColorFlow release folder (default: $COLORFLOW_MODELS, else the hub cache)")
    p.add_argument("--base", default=None, metavar="PATH",
                   help="base model: SD1.5 diffusers folder or single .safetensors file (screenstyle), PixArt-alpha "
                        "diffusers folder (sketch, shading); default: the hub cache")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, metavar="SPEC",
                   help=f"retrieval image encoder: {ENCODER_HELP} (default {DEFAULT_ENCODER})")
    p.add_argument("--download", action="store_true", help="download missing weights from the Hugging Face hub")
    p.add_argument("--size", default="512x800", metavar="WxH",
                   help="page size WxH in multiples of 32; outputs are 1.5 times larger (default 512x800)")
    p.add_argument("--steps", type=int, metavar="N", default=defaults.steps,
                   help=f"denoising steps (1-{MAX_STEPS}, default {defaults.steps})")
    p.add_argument("--cfg", type=float, metavar="G", default=None,
                   help=f"classifier-free guidance scale (0-{MAX_CFG:g}; default "
                        f"{DEFAULT_CFG['screenstyle']:g} for screenstyle, {DEFAULT_CFG['sketch']:g} for "
                        f"sketch / shading; 1 or less turns guidance off)")
    p.add_argument("--guider-strength", type=float, metavar="S", default=defaults.guider_strength,
                   help=f"strength of the ColorGuider's page conditioning (0-{MAX_GUIDER_STRENGTH:g}, "
                        f"default {defaults.guider_strength:g})")
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


def resolve_refs_map_option(path: str | None, pages: Sequence[Path], ref_files: Sequence[Path],
                            top_k: int) -> list[frozenset[int] | None] | None:
    """--refs-map → per chapter page, the allowed reference indices (None: all); None without a map."""
    if path is None:
        return None
    source = f"--refs-map {path}"
    rules = read_refs_map(path, source)
    return resolve_refs_map(rules, [p.stem for p in pages], [p.name for p in ref_files], source=source, top_k=top_k)


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
        for name in (f.name for f in fields(ColorizeSettings)):
            if message.startswith(f"{name} "):
                raise InputError(cli_flag(name) + message[len(name):]) from exc
        raise


def settings_from_args(args: argparse.Namespace) -> ColorizeSettings:
    """The run's `ColorizeSettings` from the parsed options (same names), checked; a refusal names the flag."""
    settings = ColorizeSettings(**{f.name: getattr(args, f.name) for f in fields(ColorizeSettings)})
    validate_options(settings)
    return settings


def _runs(indices: list[int], chunk: int) -> list[list[int]]:
    """Split chapter indices into runs of consecutive indices, each at most ``chunk`` long."""
    return page_runs(indices, chunk, lambda previous, k: k == previous + 1)


def colorize_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    size = parse_size_option(args.size)
    settings = settings_from_args(args)
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    pages = collect_pages(args.pages)
    check_seed_range(args.seed, len(pages))
    ref_files = list_image_files(args.refs, warn=warn)
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
    allowed = resolve_refs_map_option(getattr(args, "refs_map", None), pages, ref_files,
                                      settings.top_k)  # before any model loads
    ref_names = [p.name for p in ref_files]
    finished = 0
    bar = None
    try:
        if todo:
            engine = ColorFlow.load(args.style, release=args.release, base=args.base,
                                    device=None if args.device == "auto" else args.device, dtype=args.dtype,
                                    screentone=not args.no_screentone, allow_download=args.download,
                                    encoder=args.encoder,
                                    speed=SpeedOptions(offload=args.offload, compile=args.compile))
            with tqdm(total=len(ref_files), unit="ref", desc="references", file=sys.stderr, leave=False) as refs_bar:
                pool = engine.reference_pool(ref_files, size,
                                             cache_dir=cache_dir,
                                             progress=lambda done, _total: refs_bar.update(done - refs_bar.n))
            # per page: preprocess + retrieve, the denoising steps, GSRP (engine.ColorFlow.run)
            bar = tqdm(total=len(todo) * (args.steps + 2), unit="step", desc="colorize", file=sys.stderr)
            for run in _runs(todo, args.batch_size or DEFAULT_CHUNK.get(engine.device.type, 4)):
                base_done = bar.n
                results = engine.run([load_image(pages[k]) for k in run], pool, size,
                                     replace(settings, seed=args.seed + run[0]),  # page k of the chapter: seed + k
                                     progress=lambda done, _total: bar.update(base_done + done - bar.n),
                                     names=[pages[k].stem for k in run],
                                     allowed=None if allowed is None else [allowed[k] for k in run])
                for k, result in zip(run, results):
                    write_page(out, pages[k], result, ref_names, args.sheets)
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
    try:  # the chapter report covers every page, also when all were done before
        write_report(out, pages=pages, ref_files=ref_files, refs_dir=args.refs)
    except ColorFlowError as exc:
        warn(f"report not written: {exc}")
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
        args = build_parser().parse_args(argv)  # argparse exits 2 on misuse
        return args.handler(args)
    except ColorFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted before any page was started: nothing was coloured; run the same command again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
