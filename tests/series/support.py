"""Helpers of the series tests: a tiny series on disk and the arguments of a tiny run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PAGE_NAMES = ["p1.png", "p2.png", "p10.png"]
CHAPTERS = ["ch1", "ch2"]
REFERENCES = 2
TINY = ["--size", "64x64", "--steps", "1", "--no-screentone", "--device", "cpu"]


def write_series(root: Path, chapters=CHAPTERS, pages=PAGE_NAMES, seed: int = 0) -> Path:
    """SERIES/<chapter>/pages/*.png (distinct gray pages) and SERIES/<chapter>/refs/*.png."""
    rng = np.random.default_rng(seed)
    for chapter in chapters:
        (root / chapter / "pages").mkdir(parents=True)
        (root / chapter / "refs").mkdir(parents=True)
        for k, name in enumerate(pages):
            Image.fromarray(rng.integers(0, 256, (70 + k, 60), dtype=np.uint8)).save(root / chapter / "pages" / name)
        for k in range(REFERENCES):
            Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(root / chapter / "refs" / f"ref{k}.png")
    return root


def model_args(release: Path) -> list[str]:
    return ["--release", str(release), "--base", str(release / "base"), *TINY]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def tree(root: Path) -> set[str]:
    """Every file under ``root``, relative, POSIX."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
