"""Compute per page, counted: what each flow of `chapter.py` spends, by stage and network, at full size.

    python -m benchmarks.flops                        # 50 pages, 40 references, 512x800, 10 steps
    python -m benchmarks.flops --pages 4 --refs 6 --size 256x384 --steps 2

Timings need the machine; FLOPs do not. The full-size networks (SD1.5 UNet + LoRA, the ColorGuider,
the VAE, CLIP ViT-H, the fusion net) run on PyTorch's meta device (shapes only: no weights, no
memory, seconds) under `torch.utils.flop_counter.FlopCounterMode`, at the shapes a page of `--size`
gives; the ScreenStyle networks have one size at every scale and run for real on one blank page.
Each network's FLOPs per sample times the samples a flow sends through it (`samples_per_chapter`)
gives the chapter. tests/benchmarks/test_benchmark_flops.py checks both against the FLOPs counted over a real
run of the two flows on tiny models. FlopCounterMode counts matrix products, convolutions and
attention, not element-wise work (norms, activations, the scheduler), which is small beside them.

The "floor" is that compute at a GPU's peak dense throughput (default: the H100 SXM datasheet's 989
TFLOP/s fp16 tensor cores, 67 TFLOP/s fp32 — the CLIP image encoder and ScreenStyle nets run in
fp32 in both flows). It is a lower bound, not a prediction: real kernels reach a fraction of peak.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from colorflow_core.colorize.lora import SD_UNET_LORA_TARGETS, add_lora_adapter
from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
from colorflow_core.retrieve.references import PATCHES_PER_REFERENCE, QUERY_PATCH_KINDS
from colorflow_core.sizes import PageSize, parse_size, vae_scale_factor
from colorflow_core.testing.sd import SCALES, guider_config_from_unet, model_config
from colorflow_core.upscale.decoder import encode_with_features, vae_feature_channels

from .flows import MODES, STAGES

HERE = Path(__file__).resolve().parent
# network call -> the stage `chapter.py` times it in
STAGE_OF = {
    "image_encoder": "retrieval", "screentone_generator": "retrieval", "screentone_decoder": "retrieval",
    "text_encoder": "icp", "vae_encoder@canvas": "icp", "guider": "icp", "unet": "icp", "vae_decoder@canvas": "icp",
    "vae_encoder@guide": "gsrp", "fusion": "gsrp", "vae_decoder@guide": "gsrp",
}
FP32_ON_GPU = {"image_encoder", "screentone_generator", "screentone_decoder"}  # the rest runs in fp16 by default
H100_SXM_PEAK_TFLOPS = {"fp16": 989.0, "fp32": 67.0}
PROMPTS_PER_CALL = 2  # "" and "manga", encoded again for every page by the baseline


def samples_per_chapter(mode: str, pages: int, refs: int, steps: int, *, cfg: bool = True,
                        screentone: bool = True) -> dict[str, int]:
    """Samples each network sees over a chapter (batching changes how they are grouped, not how many)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pool = PATCHES_PER_REFERENCE * refs
    denoise = steps * (2 if cfg else 1) * pages
    counts = {
        "image_encoder": (pool * pages if mode == "baseline" else pool) + len(QUERY_PATCH_KINDS) * pages,
        "vae_encoder@canvas": pages, "guider": denoise, "unet": denoise, "vae_decoder@canvas": pages,
        "vae_encoder@guide": 2 * pages, "fusion": pages, "vae_decoder@guide": pages,  # colour + guide encoded
    }
    if mode == "baseline":
        counts["text_encoder"] = PROMPTS_PER_CALL * pages
    if screentone:
        counts["screentone_generator"] = counts["screentone_decoder"] = pages
    return counts


def _count(run: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def _meta(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta")


def network_flops(size: PageSize, scale: str = "full", lora_rank: int = 64, screentone: bool = True) -> dict[str, int]:
    """FLOPs of one sample through each network at the shapes of a ``size`` page (``scale``: model size;
    the ScreenStyle nets only with ``screentone``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from colorflow_core.upscale.fusion import FusionNet

    with torch.device("meta"):
        unet_config = model_config("unet", scale)
        unet = UNet2DConditionModel.from_config(unet_config).eval()
        if lora_rank:  # the product runs the release LoRA unmerged, as the original
            add_lora_adapter(unet, rank=lora_rank, alpha=lora_rank, target_modules=SD_UNET_LORA_TARGETS)
        guider = ColorGuiderSDModel.from_config(guider_config_from_unet(unet_config)).eval()
        vae = AutoencoderKL.from_config(model_config("vae", scale)).eval()
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**model_config("image_encoder", scale))).eval()
        text_config = CLIPTextConfig(**model_config("text_encoder", scale))
        text_encoder = CLIPTextModel(text_config).eval()
        fusion = FusionNet(vae_feature_channels(vae)).eval()

    factor = vae_scale_factor(vae)
    (cw, ch), (gw, gh) = size.canvas, size.guide
    h, w = ch // factor, cw // factor
    x, t = _meta(1, unet.config.in_channels, h, w), torch.tensor(500.0, device="meta")
    text = _meta(1, text_config.max_position_embeddings, unet.config.cross_attention_dim)
    cond = _meta(1, guider.config.conditioning_channels, h, w)
    pixels = image_encoder.config.image_size
    _, features = encode_with_features(vae, _meta(1, 3, gh, gw))
    counts = {
        "image_encoder": _count(lambda: image_encoder(pixel_values=_meta(1, 3, pixels, pixels))),
        "text_encoder": _count(lambda: text_encoder(
            input_ids=torch.zeros(1, text_config.max_position_embeddings, dtype=torch.long, device="meta"))),
        "vae_encoder@canvas": _count(lambda: vae.encode(_meta(1, 3, ch, cw))),
        "guider": _count(lambda: guider(x, t, cond)),
        "unet": _count(lambda: unet(x, t, encoder_hidden_states=text)),
        "vae_decoder@canvas": _count(lambda: vae.decode(_meta(1, vae.config.latent_channels, h, w))),
        "vae_encoder@guide": _count(lambda: vae.encode(_meta(1, 3, gh, gw))),
        "fusion": _count(lambda: fusion(features, features)),
        "vae_decoder@guide": _count(lambda: vae.decode(_meta(1, vae.config.latent_channels, gh // factor, gw // factor))),
    }
    if screentone:
        counts.update(screenstyle_flops(size))
    return counts


def screenstyle_flops(size: PageSize) -> dict[str, int]:
    """FLOPs of the ScreenStyle generator and decoder on one blank page, run for real on the CPU
    (their randomly drawn noise does not run on the meta device; they are small)."""
    from colorflow_core.preprocess.screentone import ScreenCodeGenerator, ScreenDecoder, ScreenStyleConverter

    converter = ScreenStyleConverter(ScreenCodeGenerator(), ScreenDecoder())
    counts: dict[str, int] = {}
    for name, network in converter.networks().items():
        def counted(_module, _args, _output, _name=name) -> None:
            counts[_name] = counter.get_total_flops() - sum(counts.values())

        network.register_forward_hook(counted)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        converter.screen_tensors(Image.new("L", size.guide, 255), seed=0)
    return {name: int(flops) for name, flops in counts.items()}


def chapter_flops(flops: dict[str, int], samples: dict[str, int]) -> dict[str, int]:
    """FLOPs per network over a chapter."""
    return {name: flops[name] * n for name, n in samples.items()}


def by_stage(chapter: dict[str, int]) -> dict[str, int]:
    stages = dict.fromkeys(STAGES, 0)
    for name, value in chapter.items():
        stages[STAGE_OF[name]] += value
    return stages


def floor_seconds(chapter: dict[str, int], peak_tflops: dict[str, float]) -> float:
    """The chapter's compute at peak throughput (fp32 networks at the fp32 peak, the rest at fp16's)."""
    return sum(v / (peak_tflops["fp32" if k in FP32_ON_GPU else "fp16"] * 1e12) for k, v in chapter.items())


def parse_peak(text: str) -> dict[str, float]:
    peak = dict(H100_SXM_PEAK_TFLOPS)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in peak or not value:
            raise argparse.ArgumentTypeError(f"--peak takes fp16=TFLOPS,fp32=TFLOPS, got {item!r}")
        peak[key] = float(value)
    return peak


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=50)
    p.add_argument("--refs", type=int, default=40)
    p.add_argument("--size", default="512x800")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scale", choices=SCALES, default="full")
    p.add_argument("--no-screentone", action="store_true")
    p.add_argument("--peak", type=parse_peak, default=dict(H100_SXM_PEAK_TFLOPS),
                   help="peak dense TFLOP/s for the floor (default H100 SXM: fp16=989,fp32=67)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if args.pages < 1 or args.refs < 1 or args.steps < 1:
        p.error("--pages, --refs and --steps must be at least 1")
    size = parse_size(args.size)
    started = time.perf_counter()
    per_sample = network_flops(size, args.scale, screentone=not args.no_screentone)
    report: dict = {"setting": {"pages": args.pages, "refs": args.refs, "size": str(size), "steps": args.steps,
                                "scale": args.scale, "screentone": not args.no_screentone, "peak_tflops": args.peak},
                    "per_sample_gflop": {k: round(v / 1e9, 2) for k, v in per_sample.items()}, "modes": {}}
    totals = {}
    for mode in MODES:
        chapter = chapter_flops(per_sample, samples_per_chapter(mode, args.pages, args.refs, args.steps,
                                                                screentone=not args.no_screentone))
        totals[mode] = (sum(chapter.values()), floor_seconds(chapter, args.peak))
        report["modes"][mode] = {
            "tflop_per_page": round(totals[mode][0] / args.pages / 1e12, 3),
            "stages_tflop_per_page": {k: round(v / args.pages / 1e12, 3) for k, v in by_stage(chapter).items()},
            "networks_tflop_per_page": {k: round(v / args.pages / 1e12, 3) for k, v in chapter.items()},
            "floor_s_per_page": round(totals[mode][1] / args.pages, 4),
        }
    report["compute_ratio"] = round(totals["baseline"][0] / totals["ours"][0], 3)
    report["floor_ratio"] = round(totals["baseline"][1] / totals["ours"][1], 3)
    for mode, r in report["modes"].items():
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_tflop_per_page"].items())
        print(f"[{mode}] {r['tflop_per_page']} TFLOP/page ({stages}); floor {r['floor_s_per_page']} s/page")
    print(f"compute ratio baseline/ours {report['compute_ratio']}x; floor ratio {report['floor_ratio']}x "
          f"(counted in {time.perf_counter() - started:.1f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    tone = "-noscreentone" if args.no_screentone else ""
    out = args.out / f"flops-{args.scale}-{size}-{args.pages}p-{args.refs}r-{args.steps}s{tone}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
