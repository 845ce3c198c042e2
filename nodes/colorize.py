"""In-Context Colorize: the diffusion stage, every page of the context in one node run."""
from __future__ import annotations

from colorflow_core.errors import InputError
from colorflow_core.options import DEFAULT_CFG, MAX_CFG, MAX_GUIDER_STRENGTH, MAX_STEPS
from colorflow_core.runtime.seeding import GENERATOR_DEVICES, WIDGET_MAX_SEED

from . import comfy
from .tensors import tensor_from_images
from .types import CONTEXT_TYPE, MODEL_TYPE
from .widgets import widget_errors

STYLE_DEFAULT_CFG = 0.0  # the widget's "use the loaded style's own cfg" value
CFG_TOOLTIP = (
    "Classifier-free guidance scale. 0 (the default) = the loaded style's own default, as in the original: "
    f"{DEFAULT_CFG['screenstyle']:g} for screenstyle (SD1.5), {DEFAULT_CFG['sketch']:g} for sketch and shading "
    "(PixArt). Any value above 1 is used as given; "
    "a value above 0 and up to 1 (e.g. 1.0) turns classifier-free guidance off (one pass per step, faster)."
)


def generator_device_input(what: str) -> tuple:
    """The optional generator_device input (one name across the CLI, the nodes and the engine)."""
    return (list(GENERATOR_DEVICES), {
        "default": GENERATOR_DEVICES[0],
        "tooltip": f"Where the random draws of {what} are made. cpu (default): the same result on every machine. "
                   f"cuda: the original demo's draws, on an NVIDIA GPU (an error without one).",
    })


def engine_cfg(cfg: float) -> float | None:
    """The engine's cfg for the node's cfg: None (the style's default) for 0."""
    return None if cfg == STYLE_DEFAULT_CFG else cfg


class InContextColorize:
    """Denoises each page's canvas with the ColorGuider; the page is the centre of the result."""

    DESCRIPTION = (
        "Colours every page of the context with in-context diffusion: the retrieved references around the page "
        "steer its colours. Page i uses seed + i, so a page's result does not depend on the batch or its "
        "neighbours. Outputs the coloured pages (W x H, same order as the input) and the full canvases."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "colorize"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("colored", "canvases")
    OUTPUT_TOOLTIPS = (
        "The coloured pages (W x H), one per input page in order: connect to Guided Upscale or Save Image.",
        "The whole denoised canvases (2W x 2H), for inspection.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From Load ColorFlow Model (the one used for Retrieve "
                                                         "References)."}),
                "context": (CONTEXT_TYPE, {"tooltip": "From Retrieve References."}),
                "steps": ("INT", {"default": 10, "min": 1, "max": MAX_STEPS,
                                  "tooltip": "Denoising steps (UniPC); the original demo uses 10."}),
                "cfg": ("FLOAT", {"default": STYLE_DEFAULT_CFG, "min": 0.0, "max": MAX_CFG, "step": 0.1, "round": 0.01,
                                  "tooltip": CFG_TOOLTIP}),
                "guider_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": MAX_GUIDER_STRENGTH, "step": 0.05,
                                              "tooltip": "ColorGuider conditioning scale: how strongly the page "
                                                         "and references steer the diffusion (1.0 = as trained)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": WIDGET_MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Random seed; page i uses seed + i."}),
            },
            "optional": {
                "batch_size": ("INT", {"default": 0, "min": 0, "max": 64,
                                       "tooltip": "Pages denoised together (0 = chosen from free memory)."}),
                "generator_device": generator_device_input("the initial noise and the conditioning samples"),
            },
        }

    def colorize(self, model, context, steps: int, cfg: float, guider_strength: float, seed: int,
                 batch_size: int = 0, generator_device: str = GENERATOR_DEVICES[0]):
        from colorflow_core.engine import ColorizeSettings
        from colorflow_core.upscale.decoder import centre_crop

        if len(context) == 0:
            raise InputError("In-Context Colorize: the context holds no pages")
        settings = ColorizeSettings(steps=steps, cfg=engine_cfg(cfg), guider_strength=guider_strength,
                                    seed=seed, batch_size=batch_size or None, generator_device=generator_device)
        with widget_errors("In-Context Colorize"):
            settings.validate()  # before the model moves to the GPU
        try:
            engine = model.use()
            canvases = engine.colorize(context.pages, settings,
                                       progress=comfy.progress_callback(len(context) * steps),
                                       check_interrupt=comfy.check_interrupt)
        finally:
            model.done()
        pages = [centre_crop(canvas) for canvas in canvases]
        return (tensor_from_images(pages), tensor_from_images(canvases))
