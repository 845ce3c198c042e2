"""The pack's own ComfyUI socket types, each spelled once: a node's output connects only to inputs of
the same type string, so every node names them through these constants."""
from __future__ import annotations

MODEL_TYPE = "COLORFLOW_MODEL"  # Load ColorFlow Model → Retrieve References, In-Context Colorize, Guided Upscale
POOL_TYPE = "COLORFLOW_POOL"  # Reference Pool → Retrieve References
CONTEXT_TYPE = "COLORFLOW_CONTEXT"  # Retrieve References → In-Context Colorize, Guided Upscale, ColorFlow Apply
NATIVE_RELEASE_TYPE = "COLORFLOW_NATIVE_RELEASE"  # Load Guider + LoRA (native) → ColorFlow Apply
