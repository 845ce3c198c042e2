"""ColorFlow core: retrieval-augmented colorization of black-and-white image sequences.

Nothing here imports ComfyUI; `nodes/` and `cli.py` are thin layers over this package.
"""
from .errors import ColorFlowError, InputError, WeightsError
from .sizes import PRESETS, PageSize, parse_size

__all__ = ["ColorFlowError", "InputError", "WeightsError", "PRESETS", "PageSize", "parse_size"]
