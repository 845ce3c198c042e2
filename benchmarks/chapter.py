"""Chapter-scale throughput: the original's per-page flow against ours, side by side in one run.

    python -m benchmarks.chapter                      # GPU: 50 pages, 40 references, 512x800, 10 steps
    python -m benchmarks.chapter --quick              # CPU: 4 pages, 6 references, 256x384, 2 steps, reduced nets

Models are random-weight releases (benchmarks/synthetic_release.py) written once under --workdir;
speed does not depend on weight values. See benchmarks/README.md for what is measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from colorflow_core.engine import ColorFlow, ColorizeSettings
from colorflow_core.runtime import performance
from colorflow_core.sizes import PageSize, parse_size

from .flows import MODES, STAGES, ChapterOutput, PromptEncoder, StageTimer, run_baseline, run_ours
from .inputs import synthetic_chapter
from .memory import peak_rss_bytes
from .synthetic_release import SCALES, write_release

HERE = Path(__file__).resolve().parent
CPU_NEEDS_A_SCALE = ("no GPU: the default setting is the issue's GPU one (full-size models, 50 pages at 512x800, "
                     "10 steps), which a CPU needs days for (python -m benchmarks.flops counts it). Use --quick "
                     "(reduced models, 4 pages, minutes), or pass --scale to run a setting of your own.")
QUICK = {"pages": 4, "refs": 6, "size": "256x384", "steps": 2, "scale": "reduced", "warmup": 0}


@dataclass
class Config:
    pages: int
    refs: int
    size: str
    steps: int
    scale: str
    device: str
    dtype: str
    offload: str
    channels_last: bool | None
    compile: bool
    batch_size: int | None
    warmup: int
    repeats: int
    seed: int
    screentone: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=50)
    p.add_argument("--refs", type=int, default=40, help="reference images in the chapter's pool")
    p.add_argument("--size", default="512x800", help="page size WxH (multiples of 32)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="model size (default on a GPU: full = SD1.5 / ViT-H; a CPU run names one, or uses --quick)")
    p.add_argument("--quick", action="store_true",
                   help="CPU preset: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + " (explicit flags win)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="ours' dtype (auto: fp16 on CUDA, fp32 on CPU); "
                   "the baseline always uses auto, as the original")
    p.add_argument("--offload", default="auto", choices=("auto",) + performance.OFFLOAD_MODES,
                   help="ours' offload mode (auto: chosen from free VRAM)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--compile", action="store_true", help="regional torch.compile for ours")
    p.add_argument("--batch-size", type=int, default=None,
                   help="ours' pages per UNet batch (default: from free memory)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pages each mode runs first (CUDA init, autotune)")
    p.add_argument("--repeats", type=int, default=1,
                   help="time the chapter this many times per mode and keep the fastest (noisy shared machines)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-screentone", action="store_true", help="skip the ScreenStyle preprocessing in both modes")
    p.add_argument("--modes", default="baseline,ours", help="comma list of " + ", ".join(MODES))
    p.add_argument("--profile", action="store_true",
                   help="print the top operators of one page of ours (torch profiler)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--workdir", type=Path, default=HERE / "results" / "releases",
                   help="where the random-weight releases are written (reused between runs)")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


# ---- measurements ---------------------------------------------------------------------------------

class PeakMemory:
    """Peak GPU memory allocated by torch, or the process's peak resident set on a CPU run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: writing 5 resets the peak RSS (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "peak RSS since process start (could not reset)"

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss_bytes()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return info


# ---- one mode ---------------------------------------------------------------------------------------

def _load(root: Path, device: torch.device, dtype: str, screentone: bool,
          speed: performance.SpeedOptions) -> ColorFlow:
    return ColorFlow.load("screenstyle", root, root / "base", device=device, dtype=dtype, screentone=screentone,
                          speed=speed)


def _options(cfg: Config) -> performance.SpeedOptions:
    return performance.SpeedOptions(offload=cfg.offload, channels_last=cfg.channels_last, compile=cfg.compile)


# The original's placement: everything resident, diffusers' default attention and memory layout.
BASELINE_SPEED = performance.SpeedOptions(offload="none", channels_last=False)


def run_mode(mode: str, cfg: Config, root: Path, pages: list, warm: list, refs: list, device: torch.device,
             workdir: Path) -> tuple[dict[str, Any], ChapterOutput, ColorFlow]:
    size = parse_size(cfg.size)
    settings = ColorizeSettings(steps=cfg.steps, seed=cfg.seed)
    started = time.perf_counter()
    if mode == "baseline":
        flow = _load(root, device, "auto", cfg.screentone, BASELINE_SPEED)
    else:
        flow = _load(root, device, cfg.dtype, cfg.screentone, _options(cfg))
    extra: dict[str, Any] = {}
    if mode == "baseline":
        prompts = PromptEncoder(root / "base", device, flow.dtype)

        def chapter(chunk: list, timer: StageTimer) -> ChapterOutput:
            return run_baseline(flow, prompts, chunk, refs, size, settings, timer)
    else:
        settings.batch_size = cfg.batch_size
        extra["offload"] = flow.offload.mode
        extra["batch_size"] = cfg.batch_size or flow.auto_batch_size(size, len(pages))
        cache = workdir / "pool-cache"

        def chapter(chunk: list, timer: StageTimer) -> ChapterOutput:
            shutil.rmtree(cache, ignore_errors=True)  # cold: every timed run builds the pool once
            return run_ours(flow, chunk, refs, size, settings, timer, cache)
    load_s = time.perf_counter() - started
    if warm:  # separate pages and pool cache, so the timed run starts cold where it should
        warm_cache = Path(tempfile.mkdtemp(prefix="warmup-", dir=workdir))
        if mode == "ours":
            run_ours(flow, warm, refs, size, settings, StageTimer(device), warm_cache)
        else:
            chapter(warm, StageTimer(device))
        shutil.rmtree(warm_cache)
    memory = PeakMemory(device)
    gc.collect()
    memory.reset()
    runs = []
    for _ in range(cfg.repeats):
        timer = StageTimer(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        output = chapter(pages, timer)
        runs.append((time.perf_counter() - started, timer, time.process_time() - cpu_started))
    total, timer, cpu_time = min(runs, key=lambda run: run[0])
    result = {"load_s": round(load_s, 2), "runs_s": [round(r[0], 3) for r in runs], "total_s": round(total, 3),
              "process_cpu_s": round(cpu_time, 3), "per_page_s": round(total / len(pages), 3),
              "pages_per_minute": round(60 * len(pages) / total, 3),
              "stages_s": {k: round(v, 3) for k, v in timer.seconds.items()},
              "peak_memory_bytes": memory.read(), "peak_memory_kind": memory.kind,
              "dtype": str(flow.dtype).replace("torch.", ""), **extra}
    if mode == "ours":
        started = time.perf_counter()
        flow.reference_pool(refs, size, cache_dir=cache)
        result["pool_cache_reload_s"] = round(time.perf_counter() - started, 3)
        shutil.rmtree(cache)
    return result, output, flow


def profile_page(flow: ColorFlow, cfg: Config, pages: list, refs: list, device: torch.device, out: Path) -> str:
    """Top operators of one page of ours (all stages), sorted by self time on the device doing the work."""
    from torch.profiler import ProfilerActivity, profile

    size = parse_size(cfg.size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    cache = Path(tempfile.mkdtemp(prefix="profile-", dir=out))
    with profile(activities=activities) as prof:
        run_ours(flow, pages[:1], refs, size, ColorizeSettings(steps=cfg.steps, seed=cfg.seed), StageTimer(device),
                 cache)
    shutil.rmtree(cache)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=20)


# ---- report -----------------------------------------------------------------------------------------

_COLOURS = {"retrieval": (86, 150, 214), "icp": (232, 125, 60), "gsrp": (96, 179, 104)}


def write_plot(results: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    """Horizontal stacked bars: seconds per page in each stage, one bar per mode (PIL only)."""
    width, left, bar_h, top = 900, 110, 46, 60
    height = top + len(results) * (bar_h + 24) + 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black")
    draw.text((10, 28), "seconds per page, by stage", fill=(90, 90, 90))
    pages = {m: r["total_s"] / r["per_page_s"] if r["per_page_s"] else 1 for m, r in results.items()}
    longest = max(sum(r["stages_s"].values()) / pages[m] for m, r in results.items()) or 1.0
    scale = (width - left - 120) / longest
    for row, (mode, r) in enumerate(results.items()):
        y = top + row * (bar_h + 24)
        draw.text((10, y + bar_h // 2 - 6), mode, fill="black")
        x = left
        for stage in STAGES:
            w = r["stages_s"][stage] / pages[mode] * scale
            draw.rectangle((x, y, x + w, y + bar_h), fill=_COLOURS[stage])
            x += w
        draw.text((x + 8, y + bar_h // 2 - 6), f"{r['per_page_s']:.2f} s", fill="black")
    y = top + len(results) * (bar_h + 24) + 10
    for i, stage in enumerate(STAGES):
        draw.rectangle((left + i * 150, y, left + i * 150 + 14, y + 14), fill=_COLOURS[stage])
        draw.text((left + i * 150 + 20, y + 1), stage, fill="black")
    img.save(path)


def max_level_difference(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = performance.resolve_device(args.device)
    if args.scale is None:
        if device.type != "cuda":
            raise SystemExit(CPU_NEEDS_A_SCALE)
        args.scale = "full"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes must list some of {MODES}")
    if min(args.pages, args.refs, args.steps, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--pages, --refs, --steps and --repeats must be at least 1, --warmup at least 0")
    size: PageSize = parse_size(args.size)
    cfg = Config(pages=args.pages, refs=args.refs, size=str(size), steps=args.steps, scale=args.scale,
                 device=str(device), dtype=args.dtype, offload=args.offload,
                 channels_last={"auto": None, "on": True, "off": False}[args.channels_last], compile=args.compile,
                 batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, seed=args.seed,
                 screentone=not args.no_screentone)
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"writing / reusing the {cfg.scale} random-weight release under {args.workdir} ...", flush=True)
    root = write_release(args.workdir / f"release-{cfg.scale}", cfg.scale)
    pages, refs = synthetic_chapter(cfg.pages + cfg.warmup, cfg.refs, size, seed=cfg.seed)
    warm, pages = pages[:cfg.warmup], pages[cfg.warmup:]

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, ChapterOutput] = {}
    flow = None
    for mode in modes:
        print(f"[{mode}] {cfg.pages} pages x {cfg.refs} references at {size}, {cfg.steps} steps, "
              f"{cfg.scale} models on {device} ...", flush=True)
        flow = None
        gc.collect()
        performance.release_memory(device)
        results[mode], outputs[mode], flow = run_mode(mode, cfg, root, pages, warm, refs, device, args.workdir)
        print(f"[{mode}] " + json.dumps(results[mode]), flush=True)

    report: dict[str, Any] = {"measured": f"{cfg.scale} random-weight models", "config": asdict(cfg),
                              "machine": machine(device), "modes": results}
    if set(MODES) <= set(results):
        report["speedup_pages_per_minute"] = round(results["ours"]["pages_per_minute"]
                                                   / results["baseline"]["pages_per_minute"], 3)
        report["max_level_difference"] = {
            "canvases": max_level_difference(outputs["baseline"].canvases, outputs["ours"].canvases),
            "pages": max_level_difference(outputs["baseline"].pages, outputs["ours"].pages),
        }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"chapter-{device.type}-{cfg.scale}-{stamp}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    title = (f"ColorFlow chapter benchmark: {cfg.pages} pages, {cfg.refs} refs, {size}, {cfg.steps} steps, "
             f"{cfg.scale} models, {report['machine'].get('gpu', 'CPU')}")
    write_plot(results, title, args.out / f"{name}.png")
    if "speedup_pages_per_minute" in report:
        print(f"ours / baseline pages per minute: {report['speedup_pages_per_minute']}x; "
              f"max difference {report['max_level_difference']} (8-bit levels)")
    print(f"wrote {args.out / name}.json and .png")
    if args.profile:
        if flow is None or modes[-1] != "ours":
            flow = _load(root, device, cfg.dtype, cfg.screentone, _options(cfg))
        table = profile_page(flow, cfg, pages, refs, device, args.out)
        (args.out / f"{name}-profile.txt").write_text(table)
        print(table)
    return report


if __name__ == "__main__":
    main()
