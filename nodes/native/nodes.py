"""The native nodes: Load ColorFlow (Native), ColorFlow Apply (patch the user's SD1.5 MODEL for
ComfyUI's own KSampler) and ColorFlow Crop + Upscale. The patching itself is `patch`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from colorflow_core.errors import InputError, WeightsError
from colorflow_core.options import MAX_GUIDER_STRENGTH
from colorflow_core.runtime.seeding import page_seeds

from .. import comfy as comfy_env
from ..colorize import WIDGET_MAX_SEED
from ..model import list_releases, resolve_release
from ..tensors import images_from_tensors, tensor_from_images
from ..types import CONTEXT_TYPE, MODEL_TYPE, NATIVE_RELEASE_TYPE
from . import patch  # its comfy modules are bound when a node runs
from .patch import GUIDER_FOLDER, check_sd15, conditioning_latents, load_native_release, patch_model, require_comfy

if TYPE_CHECKING:  # diffusers is imported when a node runs, not when ComfyUI loads the pack
    pass


def _contexts(context: Any) -> list[Any]:
    """The PageContext list of Retrieve References' COLORFLOW_CONTEXT output."""
    pages = list(getattr(context, "pages", None) or [])
    if not pages or not all(hasattr(p, "retrieval") for p in pages):
        raise InputError("context: connect the context output of Retrieve References (ColorFlow)")
    return pages


class ColorFlowNativeLoader:
    """Loads the guider and LoRA of a ColorFlow release for ColorFlow Apply."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"release": (list_releases(), {
            "tooltip": "The ColorFlow release folder inside models/colorflow (GraySD/ is used)."})}}

    RETURN_TYPES = (NATIVE_RELEASE_TYPE,)
    RETURN_NAMES = ("colorflow_release",)
    FUNCTION = "load"
    CATEGORY = "ColorFlow"
    DESCRIPTION = "Loads the ColorGuider (GraySD/) and the ColorFlow UNet LoRA for ColorFlow Apply."

    def load(self, release: str):
        folder = resolve_release(release)
        if not (folder / GUIDER_FOLDER).is_dir():
            raise WeightsError(f"the release {folder} has no {GUIDER_FOLDER}/ (the SD1.5 guider and LoRA); "
                               "download GraySD/ of TencentARC/ColorFlow into it")
        return (load_native_release(folder),)


class ColorFlowApply:
    """Patches an SD1.5 MODEL with the ColorGuider and the ColorFlow LoRA for ComfyUI's own samplers."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5 model, after any LoraLoader chain."}),
            "clip": ("CLIP", {"tooltip": "Encodes the ColorFlow prompts 'manga' / ''."}),
            "vae": ("VAE", {"tooltip": "The SD1.5 VAE: encodes the canvases for the guider."}),
            "context": (CONTEXT_TYPE, {"tooltip": "From ColorFlow Retrieve References."}),
            "colorflow_release": (NATIVE_RELEASE_TYPE, {"tooltip": "From ColorFlow Load Guider + LoRA (native)."}),
            "guider_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": MAX_GUIDER_STRENGTH, "step": 0.05,
                                          "tooltip": "Scale of the ColorGuider residuals (1 = the original)."}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                                        "tooltip": "Strength of the ColorFlow UNet LoRA (1 = the original)."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "The guider acts from this point of the schedule on."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "The guider acts up to this point of the schedule."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": WIDGET_MAX_SEED, "control_after_generate": True,
                             "tooltip": "Page i's conditioning posterior sample uses seed + i."}),
        }}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "negative", "latent")
    FUNCTION = "apply"
    CATEGORY = "ColorFlow"
    DESCRIPTION = ("ColorFlow on ComfyUI's sampling: connect model/positive/negative/latent to a KSampler "
                   "(one canvas latent per page), VAE-decode, then ColorFlow Crop and Upscale.")

    def apply(self, model, clip, vae, context, colorflow_release, guider_strength, lora_strength,
              start_percent, end_percent, seed):
        require_comfy()
        check_sd15(model)
        if clip is None:
            raise InputError("clip is empty: the checkpoint has no text encoder; connect an SD1.5 CLIP")
        pages = _contexts(context)
        sizes = {p.retrieval.canvas.size for p in pages}
        if len(sizes) != 1:
            raise InputError(f"the pages' canvases differ in size {sorted(sizes)}: ColorFlow Apply batches "
                             "pages of one size; retrieve pages of different sizes separately")
        for p in pages:
            if p.retrieval.mask.size != p.retrieval.canvas.size:
                raise InputError(f"page {p.name!r}: mask {p.retrieval.mask.size} and canvas {p.retrieval.canvas.size} differ")
        scale = model.get_model_object("latent_format").scale_factor
        channels = colorflow_release.guider.model.guider.config.conditioning_channels
        cond = conditioning_latents(vae, [p.retrieval.canvas for p in pages], [p.retrieval.mask for p in pages],
                                    page_seeds(seed, len(pages)), scale, channels)
        patched = patch_model(model, colorflow_release.guider, cond, strength=guider_strength,
                              kohya_lora=colorflow_release.lora, lora_strength=lora_strength,
                              start_percent=start_percent, end_percent=end_percent)
        from colorflow_core.colorize.prompts import NEGATIVE_PROMPT, PROMPT

        positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE_PROMPT))
        latent = torch.zeros((len(pages), 4) + tuple(cond.shape[-2:]), device=patch.model_management.intermediate_device())
        return (patched, positive, negative, {"samples": latent})


class ColorFlowCropUpscale:
    """Decoded canvases → each page's centre crop → Guided Upscale (GSRP) with the page's guide."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "colorflow_model": (MODEL_TYPE, {"tooltip": "The loaded ColorFlow model (its GSRP networks)."}),
            "context": (CONTEXT_TYPE, {"tooltip": "The same context ColorFlow Apply used."}),
            "canvases": ("IMAGE", {"tooltip": "VAEDecode of the KSampler output: one canvas per page."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": WIDGET_MAX_SEED, "control_after_generate": True,
                             "tooltip": "Seed of the GSRP posterior sample; page i uses seed + i + 5."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pages",)
    FUNCTION = "upscale"
    CATEGORY = "ColorFlow"
    DESCRIPTION = "Crops each page out of its decoded canvas and runs ColorFlow's Guided Upscale (1.5x)."

    def upscale(self, colorflow_model, context, canvases, seed):
        pages = _contexts(context)
        images = images_from_tensors(canvases, "canvases")
        if len(images) != len(pages):
            raise InputError(f"ColorFlow Crop and Upscale: {len(images)} decoded canvases for a context of "
                             f"{len(pages)} pages; connect the context ColorFlow Apply used")
        for image, page in zip(images, pages):
            if image.size != page.retrieval.canvas.size:
                raise InputError(f"ColorFlow Crop and Upscale: page {page.name!r}: decoded canvas is {image.size[0]}x{image.size[1]} but its "
                                 f"canvas is {page.retrieval.canvas.size[0]}x{page.retrieval.canvas.size[1]}")
        try:
            engine = colorflow_model.use()
            results = engine.upscale(pages, images, seed=seed, progress=comfy_env.progress_callback(len(pages)))
        finally:
            colorflow_model.done()
        return (tensor_from_images(results),)


NATIVE_NODE_CLASS_MAPPINGS = {
    "ColorFlowNativeLoader": ColorFlowNativeLoader,
    "ColorFlowApply": ColorFlowApply,
    "ColorFlowCropUpscale": ColorFlowCropUpscale,
}
NATIVE_NODE_DISPLAY_NAME_MAPPINGS = {
    "ColorFlowNativeLoader": "ColorFlow Load Guider + LoRA (native)",
    "ColorFlowApply": "ColorFlow Apply",
    "ColorFlowCropUpscale": "ColorFlow Crop and Upscale",
}
