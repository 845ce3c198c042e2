"""A crafted output folder whose report answers are known (used by the structure and browser tests).

Pages p1, p2, p3, p10 (natural order); references hero, villain one, ünï, "a&b <c>" (pool order).
* p1: finished; 8 cells from hero, 4 from villain one; best 0.91.
* p2: finished, its input is a TIFF; 12 cells from hero (the chapter maximum); best 0.88.
* p3: not finished (canvas only); 12 cells from ünï given by index only (reference null); best 0.30:
  the one low page (median 0.88 - 0.1 = 0.78 > 0.5).
* p10: nothing but its input: no record, no outputs.
* "a&b <c>" is used by no page.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

PAGES = ["p1", "p2", "p3", "p10"]
REFS = ["hero.png", "villain one.png", "ünï.png", "a&b <c>.png"]
W, H = 64, 96


def _cells(plan: list[tuple[str | None, int]], best: float) -> list[dict]:
    cells = []
    cell_table = [[(1, 0), (0, 1), (0, 0)], [(1, 3), (0, 2), (0, 3)], [(2, 0), (3, 1), (3, 0)],
                  [(2, 3), (3, 2), (3, 3)]]
    names = iter([name for name, n in plan for _ in range(n)])
    indices = iter([REFS.index(name) if name else 2 for name, n in plan for _ in range(n)])
    for q in range(4):
        for rank in range(3):
            cells.append({"query_patch": q, "query_box": [0, 0, 48, 72], "rank": rank, "cell": list(cell_table[q][rank]),
                          "reference": next(names), "reference_index": next(indices),
                          "patch": "whole" if rank == 0 else "top-left", "patch_box": [0, 0, W, H],
                          "similarity": round(best - 0.01 * (q + rank), 4)})
    return cells


def _record(page: str, page_file: str, plan, best: float) -> dict:
    return {"format": "colorflow-retrieval/1", "page": page, "page_file": page_file, "size": [W, H], "top_k": 3,
            "best_similarity": best, "cells": _cells(plan, best)}


def build_chapter(root: Path) -> tuple[Path, list[Path], list[Path], Path]:
    """(OUT, page files, reference files, refs folder) under ``root``."""
    pages_dir, refs_dir, out = root / "pages", root / "refs", root / "out"
    for folder in (pages_dir, refs_dir, out / "sheets", out / "retrieval"):
        folder.mkdir(parents=True)
    page_files = []
    for i, stem in enumerate(PAGES):
        path = pages_dir / (f"{stem}.tif" if stem == "p2" else f"{stem}.png")
        Image.new("L", (W + 10, H + 20), 40 * i + 60).save(path)
        page_files.append(path)
    ref_files = []
    for i, name in enumerate(REFS):
        path = refs_dir / name
        Image.new("RGB", (80, 120), (60 * i, 200 - 40 * i, 90)).save(path)
        ref_files.append(path)
    colour = Image.new("RGB", (W * 3 // 2, H * 3 // 2), (200, 120, 80))
    for stem in ("p1", "p2"):
        colour.save(out / f"{stem}.png")
        Image.new("RGB", (W, H), (190, 110, 70)).save(out / "sheets" / f"{stem}_icp.png")
    for stem in ("p1", "p2", "p3"):
        Image.new("RGB", (2 * W, 2 * H), (250, 250, 250)).save(out / "sheets" / f"{stem}_canvas.png")
    records = {
        "p1": _record("p1", "../pages/p1.png", [("hero.png", 8), ("villain one.png", 4)], 0.91),
        "p2": _record("p2", str(page_files[1]), [("hero.png", 12)], 0.88),
        "p3": _record("p3", "../pages/p3.png", [(None, 12)], 0.30),
    }
    for stem, record in records.items():
        (out / "retrieval" / f"{stem}.json").write_text(json.dumps(record), encoding="utf-8")
    return out, page_files, ref_files, refs_dir
