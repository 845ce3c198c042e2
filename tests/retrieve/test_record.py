"""The retrieval record (`retrieve.record`): built from a RetrievalResult's placements, its boxes are the
patches retrieval really used, and its JSON is exactly the documented colorflow-retrieval/1 format."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from colorflow_core.errors import InputError
from colorflow_core.images import process_image
from colorflow_core.retrieve.canvas import retrieve, retrieve_many
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.retrieve.record import (
    RECORD_FORMAT,
    CellRecord,
    RetrievalRecord,
    patch_name,
    patch_number,
    records_from_json,
    records_to_json,
)
from colorflow_core.retrieve.references import REFERENCE_PATCH_KINDS, crop_patches, reference_patches
from colorflow_core.sizes import PRESETS, PageSize
from tests.retrieve.test_retrieval import StatsEncoder, _random_image

SIZE = PageSize(64, 96)
NAMES = ["hero.png", "villain.png", "cover.jpg"]
BRIEF_EXAMPLE = """{"format": "colorflow-retrieval/1", "page": "p3", "page_file": "pages/p3.png", "size": [512, 800],
 "top_k": 3, "best_similarity": 0.91,
 "cells": [{"query_patch": 0, "query_box": [0, 0, 384, 600], "rank": 0, "cell": [1, 0],
            "reference": "hero.png", "reference_index": 2, "patch": "whole", "patch_box": [0, 0, 512, 800],
            "similarity": 0.83}]}"""


@pytest.fixture(scope="module")
def references():
    return [_random_image(10 + k, (80 + 10 * k, 110)) for k in range(3)]


@pytest.fixture(scope="module")
def result(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    return pool, retrieve(_random_image(99, (70, 100), "L"), pool, StatsEncoder(), SIZE, top_k=3)


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_record_follows_the_placements(references, result):
    pool, res = result
    record = RetrievalRecord.from_result(res, "p3", "pages/p3.png", NAMES)
    assert (record.page, record.page_file, record.size, record.top_k) == ("p3", "pages/p3.png", (64, 96), 3)
    assert len(record.cells) == 4 * 3 == len(res.placements)
    assert [(c.query_patch, c.rank) for c in record.cells] == [(q, r) for q in range(4) for r in range(3)]
    by_slot = {(p.query_patch, p.rank): p for p in res.placements}
    queries = crop_patches(res.query_image, SIZE)
    for cell in record.cells:
        placement = by_slot[cell.query_patch, cell.rank]
        assert cell.cell == placement.cell and cell.reference_index == placement.reference_index
        assert cell.reference == NAMES[placement.reference_index]
        assert cell.similarity == pytest.approx(float(res.similarities[cell.query_patch, placement.pool_patch_index]),
                                                abs=1e-6)
        assert cell.similarity == pytest.approx(float(res.top_k_scores[cell.query_patch, cell.rank]), abs=1e-6)
        # the boxes cut exactly the patches retrieval compared
        assert np.array_equal(_pixels(res.query_image.crop(cell.query_box)), _pixels(queries[cell.query_patch]))
        fitted = process_image(references[cell.reference_index], SIZE.width, SIZE.height)
        patch = reference_patches(references[cell.reference_index], SIZE)[patch_number(cell.patch)]
        assert np.array_equal(_pixels(fitted.crop(cell.patch_box)), _pixels(patch))
        assert REFERENCE_PATCH_KINDS.index(pool.patch_kind[placement.pool_patch_index]) == patch_number(cell.patch)
    assert record.best_similarity == max(c.similarity for c in record.cells)
    assert record.best_similarity == pytest.approx(float(res.top_k_scores[:, 0].max()), abs=1e-6)


def test_patch_names_and_boxes():
    assert [patch_name(k) for k in range(5)] == ["whole", "crop 1", "crop 2", "crop 3", "crop 4"]
    assert [patch_number(patch_name(k)) for k in range(5)] == list(range(5))
    for bad in ("crop 0", "crop 5", "top-left", "Whole", "crop"):
        with pytest.raises(InputError, match="patch must be"):
            patch_number(bad)
    size = PRESETS["512x800"]
    assert size.crop_boxes == [(0, 0, 384, 600), (128, 0, 512, 600), (0, 200, 384, 800), (128, 200, 512, 800)]


def test_json_is_exactly_the_documented_format(result):
    _, res = result
    record = RetrievalRecord.from_result(res, "p3", "pages/p3.png", [None, "villain.png", None])
    data = json.loads(record.to_json())
    assert list(data) == ["format", "page", "page_file", "size", "top_k", "best_similarity", "cells"]
    assert data["format"] == RECORD_FORMAT == "colorflow-retrieval/1"
    assert data["size"] == [64, 96] and data["top_k"] == 3 and isinstance(data["best_similarity"], float)
    cell = data["cells"][0]
    assert list(cell) == ["query_patch", "query_box", "rank", "cell", "reference", "reference_index", "patch",
                          "patch_box", "similarity"]
    assert cell["query_box"] == [0, 0, 48, 72] and cell["rank"] == 0 and cell["cell"] == [1, 0]
    named = {c["reference"] for c in data["cells"]}
    assert named <= {None, "villain.png"}
    assert all((c["reference"] == "villain.png") == (c["reference_index"] == 1) for c in data["cells"])
    # no names at all: every reference is null, its index always there
    anonymous = json.loads(RetrievalRecord.from_result(res, "page1").to_json())
    assert anonymous["page_file"] is None
    assert all(c["reference"] is None and isinstance(c["reference_index"], int) for c in anonymous["cells"])


def test_round_trip(result):
    _, res = result
    record = RetrievalRecord.from_result(res, "p3", "../pages/p3.png", NAMES)
    assert RetrievalRecord.from_json(record.to_json()) == record
    assert RetrievalRecord.from_json(record.to_json(indent=1).encode()) == record
    assert records_from_json(records_to_json([record, record])) == [record, record]
    example = RetrievalRecord.from_json(BRIEF_EXAMPLE)
    assert example.cells[0] == CellRecord(0, (0, 0, 384, 600), 0, (1, 0), "hero.png", 2, "whole", (0, 0, 512, 800),
                                          0.83)
    assert json.loads(example.to_json())["cells"] == json.loads(BRIEF_EXAMPLE)["cells"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="colorflow-retrieval/2"), "is not a ColorFlow retrieval record"),
    (lambda d: d.pop("cells"), "'cells' is missing"),
    (lambda d: d.update(size=[512]), "size must be a list of 2 integers"),
    (lambda d: d["cells"][0].update(patch="crop 9"), r"cells\[0\]: patch must be"),
    (lambda d: d["cells"][0].update(reference=3), r"cells\[0\]: reference must be a file name or null"),
    (lambda d: d["cells"][0].update(similarity="high"), r"cells\[0\]: similarity must be a finite number"),
    (lambda d: d["cells"][0].pop("query_box"), r"cells\[0\]: 'query_box' is missing"),
])
def test_bad_records_are_refused(change, message):
    data = json.loads(BRIEF_EXAMPLE)
    change(data)
    with pytest.raises(InputError, match=message):
        RetrievalRecord.from_json(json.dumps(data), "r.json")
    with pytest.raises(InputError, match="r.json is not valid JSON"):
        RetrievalRecord.from_json("{", "r.json")


def test_many_pages_give_one_record_each(references):
    pool = ReferencePool.build(references, StatsEncoder(), SIZE)
    pages = [_random_image(50 + k, (64, 96), "L") for k in range(2)]
    results = retrieve_many(pages, pool, StatsEncoder(), SIZE, top_k=2)
    records = [RetrievalRecord.from_result(r, f"p{k}") for k, r in enumerate(results)]
    assert [len(r.cells) for r in records] == [8, 8] and [r.top_k for r in records] == [2, 2]


def test_reading_records_needs_no_torch():
    code = ("import sys; from colorflow_core.retrieve import record, pinning; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
