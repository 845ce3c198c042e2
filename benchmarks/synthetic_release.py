"""The benchmark's random-weight screenstyle release (`colorflow_core.testing.write_release`),
written once per work folder: speed does not depend on weight values, so ``full`` (SD1.5, ViT-H,
rank-64 LoRA) measures what the real weights would and ``reduced`` lets a CPU finish a chapter.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from colorflow_core import testing
from colorflow_core.testing.sd import SCALES

__all__ = ["SCALES", "write_release"]
_DONE = "benchmark-release.json"  # written last: a folder without it is incomplete and rewritten


def write_release(root: str | Path, scale: str = "full", lora_rank: int = 64, seed: int = 0) -> Path:
    """A complete screenstyle release (with ScreenStyle) under ``root``, SD base in ``root/base``;
    reused when a previous call with the same arguments finished it."""
    root = Path(root)
    marker = root / _DONE
    wanted = {"scale": scale, "lora_rank": lora_rank, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    if root.exists():
        shutil.rmtree(root)
    testing.write_release(root, scale=scale, seed=seed, lora_rank=lora_rank, screentone=True)
    marker.write_text(json.dumps(wanted))
    return root
