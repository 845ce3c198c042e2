"""The ColorFlow ComfyUI nodes: thin wrappers (argument checks, tensor conversion, progress,
interruption, memory management) over `colorflow_core`, which does all the work."""
from __future__ import annotations

from .colorize import InContextColorize
from .comfy import register_model_folder
from .model import LoadColorFlowModel
from .native.nodes import NATIVE_NODE_CLASS_MAPPINGS, NATIVE_NODE_DISPLAY_NAME_MAPPINGS
from .pool import CollectReferences
from .preprocess import PREPROCESS_NODE_CLASS_MAPPINGS, PREPROCESS_NODE_DISPLAY_NAME_MAPPINGS
from .retrieve import RetrieveReferences
from .sequence import LoadImageSequence
from .upscale import GuidedUpscale

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "ColorFlowLoadModel": LoadColorFlowModel,
    "ColorFlowReferencePool": CollectReferences,
    "ColorFlowRetrieveReferences": RetrieveReferences,
    "ColorFlowInContextColorize": InContextColorize,
    "ColorFlowGuidedUpscale": GuidedUpscale,
    "ColorFlowLoadImageSequence": LoadImageSequence,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ColorFlowLoadModel": "Load ColorFlow Model",
    "ColorFlowReferencePool": "Reference Pool (ColorFlow)",
    "ColorFlowRetrieveReferences": "Retrieve References (ColorFlow)",
    "ColorFlowInContextColorize": "In-Context Colorize (ColorFlow)",
    "ColorFlowGuidedUpscale": "Guided Upscale (ColorFlow)",
    "ColorFlowLoadImageSequence": "Load Image Sequence (ColorFlow)",
}

# Standalone preprocessing (line art, Sketch+Shading, screentone), e.g. for a lineart ControlNet.
NODE_CLASS_MAPPINGS.update(PREPROCESS_NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(PREPROCESS_NODE_DISPLAY_NAME_MAPPINGS)

# The native path (ColorFlow as a patch on a ComfyUI MODEL, for KSampler / LoRA / ControlNet graphs).
NODE_CLASS_MAPPINGS.update(NATIVE_NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(NATIVE_NODE_DISPLAY_NAME_MAPPINGS)
