"""Series throughput on Ray: pages/min of ``colorize-series`` with 1 and 2 workers against the plain CLI.

    python -m benchmarks.series                       # CPU: 2 chapters x 8 pages, 128x128, 4 steps, tiny models
    python -m benchmarks.series --pages 24 --workers 1,2,4

The CLI colours the chapters one after another in this process (a model load per chapter, as a user
running it per chapter would); each series run starts its own local Ray instance (``--ray local``), so
its wall time includes Ray's start-up, the reference pass and every actor's model load: the fixed
cost a series pays once, whatever its length. Each worker gets an equal share of the CPU cores
(``--cpus-per-worker``), so 1 worker has the same cores as the CLI. Overhead per page = (series wall
- CLI wall) / pages. Models are tiny random-weight releases (`colorflow_core.testing`); speed, not
colour, is measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from colorflow_core.testing import write_release

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chapters", type=int, default=2)
    p.add_argument("--pages", type=int, default=8, help="pages per chapter")
    p.add_argument("--refs", type=int, default=3, help="references per chapter")
    p.add_argument("--size", default="128x128")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--workers", default="1,2", help="comma list of worker counts")
    p.add_argument("--repeats", type=int, default=1, help="run every setting this many times, keep the fastest")
    p.add_argument("--workdir", type=Path, default=None, help="where the release and outputs go (default: a temp dir)")
    return p.parse_args(argv)


def write_series(root: Path, chapters: int, pages: int, refs: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(1, chapters + 1):
        for sub in ("pages", "refs"):
            (root / f"ch{c}" / sub).mkdir(parents=True)
        for k in range(1, pages + 1):
            Image.fromarray(rng.integers(0, 256, (180, 120), dtype=np.uint8)).save(root / f"ch{c}" / "pages" / f"p{k}.png")
        for k in range(refs):
            Image.fromarray(rng.integers(0, 256, (150, 100, 3), dtype=np.uint8)).save(root / f"ch{c}" / "refs" / f"r{k}.png")
    return root


SERIES_MAIN = "import sys; from colorflow_core.cli import main; sys.exit(main(sys.argv[1:]))"


def _timed(commands: list[list[str]]) -> float:
    """Wall time of running ``commands`` one after another, each a fresh Python process (as a user would)."""
    started = time.perf_counter()
    for argv in commands:
        done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="colorflow-series-bench-"))
    shutil.rmtree(work / "runs", ignore_errors=True)
    release = write_release(work / "release") if not (work / "release").is_dir() else work / "release"
    series = work / "runs" / "series"
    write_series(series, args.chapters, args.pages, args.refs)
    model = ["--release", str(release), "--base", str(release / "base"), "--size", args.size, "--steps",
             str(args.steps), "--no-screentone", "--device", "cpu"]
    total = args.chapters * args.pages
    cores = os.cpu_count() or 1

    def cli_run(out: Path) -> list[list[str]]:
        return [["-m", "colorflow_core", "colorize", str(series / f"ch{c}" / "pages"), "--refs",
                 str(series / f"ch{c}" / "refs"), "--out", str(out / f"ch{c}"), *model]
                for c in range(1, args.chapters + 1)]

    def series_run(out: Path, workers: int) -> list[list[str]]:
        share = max(1.0, cores / workers)  # every worker an equal share of the cores: 1 worker has them all
        return [["-c", SERIES_MAIN, "colorize-series", str(series), "--out", str(out), "--ray", "local", "--workers",
                 str(workers), "--cpus-per-worker", f"{share:g}", *model]]

    settings = [("plain CLI, one command per chapter", lambda out: cli_run(out))]
    for workers in (int(w) for w in args.workers.split(",")):
        settings.append((f"colorize-series --workers {workers} ({max(1.0, cores / workers):g} CPU each)",
                         lambda out, w=workers: series_run(out, w)))
    best = {name: float("inf") for name, _ in settings}
    for repeat in range(args.repeats):  # interleaved: a busy machine slows every setting alike
        for i, (name, commands) in enumerate(settings):
            out = work / "runs" / f"out{i}_{repeat}"
            best[name] = min(best[name], _timed(commands(out)))
    rows = list(best.items())
    cli_wall = rows[0][1]
    print(f"{args.chapters} chapters x {args.pages} pages ({total} pages), {args.size}, {args.steps} steps, tiny "
          f"models, {cores} CPU cores ({platform.processor() or platform.machine()}), Python {platform.python_version()}")
    print()
    print("| run | wall (s) | pages/min | overhead per page vs CLI (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, wall in rows:
        overhead = "-" if wall is cli_wall else f"{(wall - cli_wall) / total:+.2f}"
        print(f"| {name} | {wall:.1f} | {total / wall * 60:.1f} | {overhead} |")


if __name__ == "__main__":
    main()
