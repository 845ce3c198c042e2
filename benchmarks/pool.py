"""Large reference pools: does a page cost the same with 10, 200 or 1,000 references?

    python -m benchmarks.pool                              # 10, 200 and 1,000 references, 512x800, tiny encoder
    python -m benchmarks.pool --sizes 10,50 --size 256x384 --pages 4

Every pool size runs in a fresh subprocess (so its peak RSS is its own) on the same synthetic colour
references (PNG files of mixed sizes about 0.7-1.8x the page, written once under --workdir) and the
same synthetic gray pages. The image encoder is a random-weight CLIP vision tower (`--scale tiny`,
default, or `reduced`): the encoder's own cost is not the question, the pool's is. Per size:

* ``embed_s``: the one-off pool build from the files (read, fit, hash, embed, save to a cold cache);
* ``reload_s``: the same call again, as a resumed chapter makes it (a cache hit: no file is read);
* ``page_ms``: median per-page retrieval (query patches embedded, similarity to every pool patch,
  top-k, canvas stitched from patches cut on demand) over ``--pages`` pages, after one warm-up page;
  ``page_cpu_ms`` the same in CPU time of the process (steadier on a busy machine), and
  ``reference_reads_per_page`` how many reference files a page read again to cut its patches (at most
  the 12 canvas cells; fewer when the pool's LRU of fitted references already holds them);
* ``peak_rss_mb``: the subprocess's peak resident set (VmHWM), ``base_rss_mb`` the same before the
  pool was built (Python, torch and the encoder), so the pool's share is the difference;
* ``old_patches_mb``: what the previous design held in RAM for the same pool (every patch as an
  image), for comparison.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .memory import peak_rss_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SIZES = (10, 200, 1000)
_MARK = "POOL-BENCH-RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="pool sizes (references), comma list")
    p.add_argument("--pages", type=int, default=20, help="timed pages per pool size")
    p.add_argument("--size", default="512x800", help="page size WxH (multiples of 32)")
    p.add_argument("--scale", choices=("tiny", "reduced"), default="tiny", help="random-weight image encoder size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--workdir", type=Path, default=HERE / "results" / "pool",
                   help="where the reference files and the encoder are written (reused between runs)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one pool size, in this process
    return p.parse_args(argv)


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def reference_files(workdir: Path, count: int, size, seed: int) -> list[Path]:
    """``count`` synthetic colour references as PNG files (written once, reused by later runs)."""
    from PIL import Image

    from .inputs import _drawing

    folder = workdir / f"refs-{size}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ref{i:04d}.png" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        print(f"writing {len(missing)} reference files under {folder} ...", flush=True)
    for i in missing:
        rng = np.random.default_rng([seed, i])
        scale, aspect = float(rng.uniform(0.7, 1.8)), float(rng.uniform(0.6, 1.6))
        width = max(64, int(size.width * scale * aspect))
        height = max(64, int(size.height * scale))
        image: Image.Image = _drawing(rng, width, height, colour=True)
        tmp = paths[i].with_suffix(".tmp")
        image.save(tmp, format="PNG")
        tmp.replace(paths[i])
    return paths


def encoder_folder(workdir: Path, scale: str) -> Path:
    from colorflow_core.testing.sd import write_image_encoder

    folder = workdir / f"encoder-{scale}"
    if not (folder / "image_encoder" / "config.json").is_file():
        write_image_encoder(folder, scale, seed=20)
    return folder / "image_encoder"


def measure(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One pool size, in this process (the parent runs it in a fresh subprocess)."""
    import torch

    from colorflow_core.retrieve.canvas import retrieve
    from colorflow_core.retrieve.encoders import CLIPImageEncoder
    from colorflow_core.retrieve.pool import ReferencePool
    from colorflow_core.sizes import parse_size

    from .inputs import synthetic_chapter

    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = parse_size(args.size)
    paths = reference_files(args.workdir, count, size, args.seed)
    encoder = CLIPImageEncoder.from_pretrained(encoder_folder(args.workdir, args.scale))
    encoder.identity  # noqa: B018 hashed once, outside the timings
    pages, _ = synthetic_chapter(args.pages + 1, 0, size, seed=args.seed + 1)
    base = peak_rss_bytes()
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as cache:
        started = time.perf_counter()
        ReferencePool.cached(paths, encoder, size, cache)
        embed_s = time.perf_counter() - started
        started = time.perf_counter()
        pool = ReferencePool.cached(paths, encoder, size, cache)
        reload_s = time.perf_counter() - started
        reads = _count_reads()
        times, cpu, page_reads = [], [], []
        for i, page in enumerate(pages):
            before, started, started_cpu = len(reads), time.perf_counter(), time.process_time()
            retrieve(page, pool, encoder, size)
            if i:  # the first page is a warm-up
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
                page_reads.append(len(reads) - before)
    crop_w, crop_h = size.crop
    old_bytes = count * 3 * (size.width * size.height + 4 * crop_w * crop_h)
    return {
        "references": count,
        "embed_s": round(embed_s, 2),
        "embed_ms_per_reference": round(1000 * embed_s / count, 1),
        "reload_s": round(reload_s, 3),
        "page_ms": round(1000 * statistics.median(times), 1),
        "page_ms_max": round(1000 * max(times), 1),
        "page_cpu_ms": round(1000 * statistics.median(cpu), 1),
        "reference_reads_per_page": round(statistics.mean(page_reads), 1),
        "base_rss_mb": _mb(base),
        "peak_rss_mb": _mb(peak_rss_bytes()),
        "pool_embeddings_mb": _mb(pool.embeddings.numel() * pool.embeddings.element_size()),
        "old_patches_mb": _mb(old_bytes),
    }


def _count_reads() -> list[str]:
    """Every reference file the pool reads again (to cut a patch) from now on, in this process."""
    from colorflow_core.retrieve import references as references_module

    reads: list[str] = []
    real = references_module.load_image

    def counting(path):
        reads.append(str(path))
        return real(path)

    references_module.load_image = counting
    return reads


def _run_child(count: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.pool", "--child", str(count), "--pages", str(args.pages),
               "--size", args.size, "--scale", args.scale, "--seed", str(args.seed), "--workdir", str(args.workdir)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {count}-reference run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if not lines:
        raise SystemExit(f"the {count}-reference run printed no result:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(lines[-1][len(_MARK):])


COLUMNS = (("references", "references"), ("embed_s", "one-off embedding (s)"),
           ("embed_ms_per_reference", "per reference (ms)"), ("reload_s", "cached reload (s)"),
           ("page_ms", "per-page retrieval (ms, median)"), ("page_cpu_ms", "per-page CPU (ms, median)"),
           ("reference_reads_per_page", "references re-read per page"), ("peak_rss_mb", "peak RSS (MB)"),
           ("base_rss_mb", "RSS before the pool (MB)"), ("old_patches_mb", "patches the old pool held (MB)"))


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (README)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "| " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[key]:,}" if isinstance(row[key], int) else f"{row[key]}"
                                        for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.child is not None:
        result = measure(args.child, args)
        print(_MARK + json.dumps(result), flush=True)
        return result
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--sizes must be a comma list of numbers, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 1 or args.pages < 1:
        raise SystemExit("--sizes must list pool sizes of at least 1, and --pages must be at least 1")
    from colorflow_core.sizes import parse_size

    size = parse_size(args.size)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference_files(args.workdir, max(sizes), size, args.seed)  # once, before any timing
    encoder_folder(args.workdir, args.scale)
    rows = []
    for count in sizes:
        print(f"[{count} references] ...", flush=True)
        rows.append(_run_child(count, args))
        print(f"[{count} references] " + json.dumps(rows[-1]), flush=True)
    report = {"config": {"sizes": sizes, "pages": args.pages, "size": str(size), "scale": args.scale,
                         "seed": args.seed},
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": _cpus()},
              "rows": rows}
    if len(rows) > 1:
        report["page_ms_ratio_largest_to_smallest"] = round(rows[-1]["page_ms"] / rows[0]["page_ms"], 2)
        report["peak_rss_ratio_largest_to_smallest"] = round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2)
    report["table"] = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pool-{size}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(report["table"])
    print(f"written: {path}")
    return report


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    main()
