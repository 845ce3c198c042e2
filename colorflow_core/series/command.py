"""``python -m colorflow_core colorize-series SERIES --out OUT --ray {local,auto,ADDRESS} --workers N ...``

Ray is optional (``requirements-cluster.txt``): it is imported only when this command runs, and
without it the command prints one ``error: ...`` line saying what to install (exit 2).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import ColorFlowError, InputError
from . import storage
from .manifest import read_series
from .pools import REFERENCES_FAILED

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
INSTALL_HINT = 'pip install -r requirements-cluster.txt (or: pip install "ray[data]>=2.60")'
DEFAULT_CHUNK = {"cpu": 4, "cuda": 16}  # = cli.DEFAULT_CHUNK  TODO(lead): import from ..chapter


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``colorize-series`` sub-command to the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "colorize-series", help="colorize many chapters on a Ray cluster (pip install -r requirements-cluster.txt)",
        description="Colorize a series: every chapter's pages with its own references, spread over Ray workers "
                    "(one actor per worker, models loaded once). Finished pages are skipped, so a re-run resumes; "
                    "a page that fails is named, and the others complete.")
    p.add_argument("series", metavar="SERIES",
                   help="folder of chapter folders (each with pages/ and refs/), or a .json / .csv manifest of "
                        "(chapter, pages, refs, out); local paths or URIs (file://, s3://, ...)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: chapter NAME goes to OUT/NAME/ (as colorize --out OUT/NAME would write it)")
    p.add_argument("--ray", default="local", metavar="{local,auto,ADDRESS}",
                   help="local: start Ray on this machine; auto: connect to the cluster of $RAY_ADDRESS (or the one "
                        "`ray start` runs here); ADDRESS: connect to that head (host:6379, ray://host:10001) "
                        "(default local)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="colorize actors, each with its own copy of the models (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="F",
                   help="GPUs per worker, fractions share one GPU (0.5: two workers per GPU); default 1 when the "
                        "cluster has GPUs and --device is not cpu, else 0")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="F",
                   help="CPUs reserved per worker (its torch threads; default 1)")
    from ..cli import add_colorize_options  # the options of colorize, shared

    add_colorize_options(p)
    p.set_defaults(handler=series_command)
    return p


def load_options(args: argparse.Namespace) -> dict:
    """`ColorFlow.load` keyword arguments from the colorize options (as the CLI loads the engine)."""
    from ..runtime.performance import SpeedOptions

    return {"style": args.style, "release": args.release, "base": args.base, "encoder": args.encoder, "device": None if args.device == "auto" else args.device, "dtype": args.dtype,
            "screentone": not args.no_screentone, "allow_download": args.download,
            "speed": SpeedOptions(offload=args.offload, compile=args.compile)}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _import_ray():
    """ray and ray.data, or None when Ray is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return None
    return ray


def series_command(args: argparse.Namespace) -> int:
    from .. import cli
    from .plan import RunOptions, plan_chapter, sweep, write_reports
    from .pools import embed_references, reference_statuses
    from .ray_run import run_pages

    started = time.monotonic()
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker:g}")
    if args.cpus_per_worker < 0:
        raise InputError(f"--cpus-per-worker must be 0 or more, got {args.cpus_per_worker:g}")
    size = cli.parse_size_option(args.size)
    settings = cli.settings_from_args(args)
    if args.max_image_pixels is not None:
        from ..images import set_max_image_pixels

        set_max_image_pixels(args.max_image_pixels)
    out = storage.absolute(args.out)
    chapters = read_series(storage.absolute(args.series), out, _warn)
    pool_cache = storage.absolute(args.pool_cache) if args.pool_cache else None
    plans = [plan_chapter(c, args.seed, args.sheets, pool_cache, _warn) for c in chapters]
    ray = _import_ray()  # after every argument and the series were checked: those errors come first
    if ray is None:
        print(f"error: colorize-series needs Ray, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_ERROR
    todo = sum(len(p.todo) for p in plans)
    for plan in plans:
        if plan.skipped:
            print(f"chapter {plan.chapter.name}: {plan.skipped} of {len(plan.pages)} pages already done; skipping "
                  f"them", file=sys.stderr)
    outcomes = []
    failed_chapters: dict[str, str] = {}
    if todo:
        started_ray = _connect(ray, args.ray)
        try:
            gpus = _gpus_per_worker(ray, args)
            resources = {"num_cpus": args.cpus_per_worker, "num_gpus": gpus}
            chunk = args.batch_size or DEFAULT_CHUNK["cuda" if gpus > 0 else "cpu"]
            chunk = max(1, min(chunk, math.ceil(todo / args.workers)))  # every worker gets pages
            options = RunOptions(load_options(args), size, settings, sheets=args.sheets, skip_bad=args.skip_bad,
                                 max_image_pixels=args.max_image_pixels, chunk=chunk)
            pools, statuses = embed_references(ray, plans, options, args.workers, resources)
            try:
                for outcome in run_pages(ray, plans, options, pools, args.workers, resources):
                    outcomes.append(outcome)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray gave up (e.g. actors dying on start): keep the tally
                reference_statuses(ray, statuses, pools)  # the cause, when the engine cannot load (missing weights)
                _summary(plans, outcomes, failed_chapters, started)
                print(f"error: the Ray run stopped: {type(exc).__name__}: {_first_line(exc)} "
                      f"({sum(o.status == 'written' for o in outcomes)} page(s) written; run the same command again "
                      f"to resume)", file=sys.stderr)
                return EXIT_ERROR
            failed_chapters, good_refs, notes = reference_statuses(ray, statuses, pools)
            for note in notes:
                _warn(note)
            write_reports(plans, good_refs, _warn)  # as the CLI ends a chapter
        except KeyboardInterrupt:
            written = sum(o.status == "written" for o in outcomes)
            print(f"\ninterrupted: {written} page(s) finished and saved; run the same command again to resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            for plan in plans:
                sweep(plan)
            if started_ray:
                ray.shutdown()
    return _summary(plans, outcomes, failed_chapters, started, skip_bad=args.skip_bad)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _connect(ray, where: str) -> bool:
    """Start or join Ray; True when this call started it (and so shuts it down at the end)."""
    if ray.is_initialized():
        return False
    if where == "local":
        ray.init(address="local")
        return True
    package = str(Path(__file__).resolve().parents[1])
    runtime_env = {"py_modules": [package], "excludes": ["__pycache__", "*.pyc"]}  # this very code on every node
    try:
        ray.init(address="auto" if where == "auto" else where, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ColorFlowError(f"--ray {where}: cannot connect to a Ray cluster: {_first_line(exc)} (start one with "
                             f"`ray start --head`, or use --ray local)") from exc
    return True


def _gpus_per_worker(ray, args: argparse.Namespace) -> float:
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if args.gpus_per_worker is not None:
        if args.gpus_per_worker > 0 and cluster_gpus == 0:
            raise ColorFlowError(f"--gpus-per-worker {args.gpus_per_worker:g}: the Ray cluster has no GPU")
        return args.gpus_per_worker
    if args.device == "cpu":
        return 0.0
    if args.device == "cuda" and cluster_gpus == 0:
        raise ColorFlowError("--device cuda: the Ray cluster has no GPU")
    return 1.0 if cluster_gpus else 0.0


def _summary(plans, outcomes, failed_chapters: dict[str, str], started: float, skip_bad: bool = False) -> int:
    """Per-chapter table (pages, written, skipped, failed, pages/min) and the exit status."""
    tally: dict[str, Counter] = defaultdict(Counter)
    last: dict[str, float] = {}
    for o in outcomes:
        tally[o.chapter][o.status] += 1
        last[o.chapter] = max(last.get(o.chapter, 0.0), o.finished)
    elapsed_start = time.time() - (time.monotonic() - started)
    rows = []
    for plan in plans:
        name = plan.chapter.name
        failed = tally[name]["failed"]
        written = tally[name]["written"]
        minutes = (last[name] - elapsed_start) / 60 if name in last else 0
        rate = f"{written / minutes:.1f}" if written and minutes > 0 else "-"
        rows.append((name, str(len(plan.pages)), str(written), str(plan.skipped), str(failed),
                     str(tally[name]["bad input"]), rate))
    header = ("chapter", "pages", "written", "skipped", "failed", "bad input", "pages/min")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=sys.stderr)
    failures = [(o.chapter, o.page, o.error) for o in outcomes if o.status == "failed"
                or (o.status == "bad input" and not skip_bad)]
    for chapter, error in failed_chapters.items():  # its pages' errors all say so: said once
        print(f"failed: chapter {chapter}: every page to do: its references cannot be used: {error}", file=sys.stderr)
    by_chapter = [f for f in failures if f[0] in failed_chapters and f[2].startswith(REFERENCES_FAILED)]
    failures = [f for f in failures if f not in by_chapter]
    for chapter, page, error in failures:
        print(f"failed: chapter {chapter}: page {storage.name(page)}: {error}", file=sys.stderr)
    bad = [(o.chapter, o.page, o.error) for o in outcomes if o.status == "bad input" and skip_bad]
    for chapter, page, error in bad:
        _warn(f"chapter {chapter}: skipped unusable page {storage.name(page)} (--skip-bad): {error}")
    written = sum(o.status == "written" for o in outcomes)
    skipped = sum(p.skipped for p in plans)
    if failures or by_chapter:
        named = [f"{c}/{storage.name(p)}" for c, p, _ in failures + by_chapter]
        shown = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
        count = len(named)
        print(f"error: {count} page(s) failed: {shown} ({written} written, {skipped} already done; fix them and run "
              f"the same command again)", file=sys.stderr)
        return EXIT_ERROR
    print(f"done: {written} page(s) written, {skipped} skipped (already done) in {len(plans)} chapter(s) in "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
