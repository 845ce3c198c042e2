"""ColorFlow core: retrieval-augmented colorization of black-and-white image sequences.

Nothing here imports ComfyUI; `nodes/` and `cli.py` are thin layers over this package.

The names below are imported on first use (PEP 562), so that ``python -m colorflow_core`` runs
nothing before its Ctrl-C handling is in place (`__main__`).
"""
from __future__ import annotations

_EXPORTS = {"ColorFlowError": "errors", "InputError": "errors", "OutputError": "errors", "WeightsError": "errors",
            "PRESETS": "sizes", "PageSize": "sizes", "parse_size": "sizes"}

__all__ = ["ColorFlowError", "InputError", "OutputError", "WeightsError", "PRESETS", "PageSize", "parse_size"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
