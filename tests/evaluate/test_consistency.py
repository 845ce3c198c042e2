"""The consistency score (colorflow_core.evaluate.consistency) from retrieval records we write here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorflow_core.evaluate.consistency import RECORD_FORMAT, chapter_consistency
from colorflow_core.images import process_image
from tests.evaluate.support import PAGE_H, PAGE_W, write_pages

OUT_W, OUT_H = PAGE_W * 3 // 2, PAGE_H * 3 // 2  # colorize writes 1.5x the page size
RED, BLUE, YELLOW, SKIN = (210, 30, 40), (30, 60, 200), (240, 210, 40), (240, 190, 160)


def blocks(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical stripes of ``colours`` on a white page with a black frame (ink and paper, as in manga)."""
    img = np.full((height, width, 3), 255, np.uint8)
    for k, colour in enumerate(colours):
        img[height // 6:height * 5 // 6, width * k // len(colours):width * (k + 1) // len(colours)] = colour
    img[:2], img[-2:], img[:, :2], img[:, -2:] = 0, 0, 0, 0
    return Image.fromarray(img)


def cell(query: int, box: list[int], reference: str, rank: int = 0, patch_box: list[int] | None = None) -> dict:
    return {"query_patch": query, "query_box": box, "rank": rank, "cell": [1, 0], "reference": reference,
            "reference_index": 0, "patch": "whole", "patch_box": patch_box or [0, 0, PAGE_W, PAGE_H],
            "similarity": 0.8}


def write_record(folder: Path, page: str, cells: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": RECORD_FORMAT, "page": page, "size": [PAGE_W, PAGE_H], "top_k": 1, "cells": cells}
    (folder / f"{page}.json").write_text(json.dumps(record))


def hue_rotated(img: Image.Image, turn: float = 1 / 3) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    h = h.point(lambda x: (x + round(256 * turn)) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


@pytest.fixture
def chapter(tmp_path):
    """References (another size than the page, so process_image really fits them) and 4 query boxes."""
    refs = tmp_path / "refs"
    refs.mkdir()
    blocks(128, 200, [RED, BLUE, YELLOW, SKIN]).save(refs / "hero.png")
    crop_w, crop_h = PAGE_W * 3 // 4, PAGE_H * 3 // 4  # the retrieval's 4 overlapping query patches
    boxes = [[x, y, x + crop_w, y + crop_h] for y in (0, PAGE_H // 4) for x in (0, PAGE_W // 4)]
    return tmp_path, refs, [cell(q, box, "hero.png") for q, box in enumerate(boxes)]


def test_exact_colours_score_low_and_hue_rotated_high(chapter):
    root, refs, cells = chapter
    exact = process_image(Image.open(refs / "hero.png"), PAGE_W, PAGE_H).resize((OUT_W, OUT_H), Image.BICUBIC)
    pred = write_pages(root / "pred", {"p1": exact, "p2": hue_rotated(exact)})
    for page in ("p1", "p2"):
        write_record(root / "records", page, cells)
    scores, skipped = chapter_consistency({"p1": pred / "p1.png", "p2": pred / "p2.png"}, root / "records", refs)
    assert skipped == {}
    assert scores["p1"].delta_e < 2.0  # only resampling blends at the stripe edges differ
    assert scores["p2"].delta_e > 15.0  # red -> green, blue -> red, yellow -> cyan-ish: none in the palette
    assert 0.3 < scores["p1"].coloured_fraction < 0.9  # paper and ink are left out


def test_query_boxes_are_scaled_to_the_output_and_matched_to_their_own_references(tmp_path):
    """Left half red, right half blue; the left query retrieved the red reference, the right one the blue. With
    boxes scaled to the 1.5x output each region holds only its own colour; unscaled, the right box would take
    red pixels, and swapped records put every pixel against the wrong palette."""
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (50, 80), RED).save(refs / "red.png")
    Image.new("RGB", (50, 80), BLUE).save(refs / "blue.png")
    page = np.zeros((OUT_H, OUT_W, 3), np.uint8)
    page[:, :OUT_W // 2], page[:, OUT_W // 2:] = RED, BLUE
    pred = write_pages(tmp_path / "pred", {"p1": Image.fromarray(page)})
    left, right = [0, 0, PAGE_W // 2, PAGE_H], [PAGE_W // 2, 0, PAGE_W, PAGE_H]
    write_record(tmp_path / "good", "p1", [cell(0, left, "red.png"), cell(1, right, "blue.png")])
    write_record(tmp_path / "swapped", "p1", [cell(0, left, "blue.png"), cell(1, right, "red.png")])
    good, _ = chapter_consistency({"p1": pred / "p1.png"}, tmp_path / "good", refs)
    swapped, _ = chapter_consistency({"p1": pred / "p1.png"}, tmp_path / "swapped", refs)
    assert good["p1"].delta_e == pytest.approx(0.0, abs=1e-6)
    assert swapped["p1"].delta_e > 30.0


def test_pages_without_a_usable_record_are_named_and_skipped(chapter):
    root, refs, cells = chapter
    exact = process_image(Image.open(refs / "hero.png"), PAGE_W, PAGE_H).resize((OUT_W, OUT_H), Image.BICUBIC)
    gray = exact.convert("L").convert("RGB")
    pages = {"ok": exact, "norecord": exact, "wrongpage": exact, "badref": exact, "badbox": exact, "gray": gray}
    pred = write_pages(root / "pred", pages)
    records = root / "records"
    write_record(records, "ok", cells)
    write_record(records, "gray", cells)
    write_record(records, "badref", [cell(0, [0, 0, 10, 10], "villain.png")])
    write_record(records, "badbox", [cell(0, [0, 0, PAGE_W + 1, 10], "hero.png")])
    write_record(records, "other", cells)
    (records / "other.json").rename(records / "wrongpage.json")
    scores, skipped = chapter_consistency({stem: pred / f"{stem}.png" for stem in pages}, records, refs)
    assert list(scores) == ["ok"]
    assert set(skipped) == {"norecord", "wrongpage", "badref", "badbox", "gray"}
    assert "no retrieval record" in skipped["norecord"]
    assert "record of page 'other'" in skipped["wrongpage"]
    assert "villain.png" in skipped["badref"]
    assert "not a box inside 64x96" in skipped["badbox"]
    assert "colourless" in skipped["gray"]


def test_records_written_by_the_retrieval_record_module_are_read(chapter):
    """The contract with `retrieve.record` (what colorize writes to OUT/retrieval/<stem>.json): its JSON, with
    its extra fields ("crop k" patch names, page_file, best_similarity), is scored; a null reference is named."""
    from colorflow_core.retrieve.record import CellRecord, RetrievalRecord, patch_box
    from colorflow_core.sizes import PageSize

    root, refs, _ = chapter
    size = PageSize(PAGE_W, PAGE_H)
    exact = process_image(Image.open(refs / "hero.png"), PAGE_W, PAGE_H).resize((OUT_W, OUT_H), Image.BICUBIC)
    pred = write_pages(root / "pred", {"p1": exact, "p2": exact})
    records = root / "retrieval"
    records.mkdir()
    for page, name in (("p1", "hero.png"), ("p2", None)):
        cells = tuple(CellRecord(query_patch=q, query_box=box, rank=0, cell=(1, 0), reference=name, reference_index=0,
                                 patch=f"crop {q + 1}", patch_box=patch_box(size, q + 1), similarity=0.9)
                      for q, box in enumerate(size.crop_boxes))
        record = RetrievalRecord(page=page, page_file=f"../pages/{page}.png", size=(PAGE_W, PAGE_H), top_k=1,
                                 cells=cells)
        (records / f"{page}.json").write_text(record.to_json(indent=1))
    scores, skipped = chapter_consistency({"p1": pred / "p1.png", "p2": pred / "p2.png"}, records, refs)
    assert list(scores) == ["p1"] and scores["p1"].delta_e < 2.0
    assert "no file name" in skipped["p2"]
