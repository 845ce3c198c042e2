"""ComfyUI entry point of the ColorFlow node pack (V1 API: NODE_CLASS_MAPPINGS).

ComfyUI imports this folder as a package from custom_nodes/. The library `colorflow_core` lives
beside it; the pack folder is appended (not prepended) to sys.path so `import colorflow_core`
works without shadowing ComfyUI's own top-level modules (`nodes`, `comfy`, `utils`).
pytest never imports this file: the tests live in tests/ and import `nodes` / `colorflow_core`
from the repository root directly.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
