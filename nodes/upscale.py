"""Guided Upscale: GSRP, the coloured pages brought to 1.5x with the original pages' detail."""
from __future__ import annotations

from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.images import check_page
from colorflow_core.runtime.seeding import check_generator_device

from . import comfy
from .colorize import WIDGET_MAX_SEED, generator_device_input
from .tensors import images_from_tensors, tensor_from_images
from .types import CONTEXT_TYPE, MODEL_TYPE
from .widgets import widget_errors


class GuidedUpscale:
    """Fuses the VAE features of each coloured page with those of its original (preprocessed) page
    and decodes at 1.5x: sharp line work from the original, colours from the diffusion result."""

    DESCRIPTION = (
        "Upscales the coloured pages to 1.5 x the page size, guided by the original pages (as Retrieve "
        "References preprocessed them, carried in the context) so the line work stays sharp. Give the pages "
        "in the same order and number as the context (In-Context Colorize's output does that)."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "upscale"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The high-resolution coloured pages (1.5W x 1.5H), in order.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From Load ColorFlow Model."}),
                "colored": ("IMAGE", {"tooltip": "The coloured pages (In-Context Colorize's colored output, or "
                                                 "edited versions of it), one per context page, in order. Whole "
                                                 "canvases are centre-cropped; other sizes are resized to the page size."}),
                "context": (CONTEXT_TYPE, {"tooltip": "From Retrieve References: holds the original "
                                                             "pages the upscale is guided by."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": WIDGET_MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the VAE posterior sample; page i draws with seed + i + 5 "
                                            "(the original's offset for this stage)."}),
            },
            "optional": {
                "generator_device": generator_device_input("the VAE posterior samples"),
            },
        }

    def upscale(self, model, colored, context, seed: int, generator_device: str = "cpu"):
        with widget_errors("Guided Upscale"):
            check_generator_device(generator_device)
        pages = images_from_tensors(colored, "Guided Upscale: colored")
        if len(pages) != len(context):
            raise InputError(
                f"Guided Upscale: {len(pages)} coloured pages but the context holds {len(context)} original pages; "
                f"connect the colored output of the In-Context Colorize that used this context"
            )
        for i, (page, ctx) in enumerate(zip(pages, context.pages)):
            check_page(page, f"Guided Upscale: coloured page {i + 1}")
            if page.size not in (ctx.size.canvas, (ctx.size.width, ctx.size.height)):  # an edited page
                pages[i] = page.resize((ctx.size.width, ctx.size.height), Image.Resampling.BICUBIC)
        try:
            engine = model.use()
            results = engine.upscale(context.pages, pages, seed=seed, progress=comfy.progress_callback(len(pages)),
                                     check_interrupt=comfy.check_interrupt, generator_device=generator_device)
        finally:
            model.done()
        return (tensor_from_images(results),)
