"""Retrieve References' retrieval records (STRING), annotated canvases (IMAGE) and pinned_references, on
the tiny random release (no ComfyUI needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.retrieve.record import records_from_json
from nodes.pool import CollectReferences
from nodes.retrieve import PREVIEW_SIDE, RetrieveReferences
from nodes.types import CONTEXT_TYPE
from tests.nodes.test_nodes import H, W, _page, model, tiny  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("outside_comfyui")

FOLDER_REFS = ("hero.png", "villain.png")


@pytest.fixture(scope="module")
def named_pool(tmp_path_factory):
    """One connected reference (no name) then a folder of two (named)."""
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(5)
    for name in FOLDER_REFS:
        Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).save(folder / name)
    connected = torch.rand(1, 40, 50, 3, generator=torch.Generator().manual_seed(8))
    return CollectReferences().build(references=[connected], folder=[str(folder)])[0]


def _run(model, pool, pages, names=None, pinned=None, top_k=3):
    return RetrieveReferences().retrieve([model], pages, [pool], ["custom"], [W], [H], [top_k], [0],
                                         names=names, pinned_references=None if pinned is None else [pinned])


def test_outputs_keep_their_order_and_add_records_and_previews():
    assert RetrieveReferences.RETURN_TYPES == (CONTEXT_TYPE, "IMAGE", "MASK", "STRING", "IMAGE")
    assert RetrieveReferences.RETURN_NAMES == ("context", "canvases", "masks", "retrieval", "annotated_canvases")
    kind, options = RetrieveReferences.INPUT_TYPES()["optional"]["pinned_references"]
    assert kind == "STRING" and options["multiline"] and options["default"] == ""


def test_pool_names_folder_references_only(named_pool):
    assert named_pool.names == [None, *FOLDER_REFS]


def test_records_and_annotated_canvases(model, named_pool):
    pages = [_page(1, (80, 120)), _page(3, (200, 100))]
    context, canvases, _, text, annotated = _run(model, named_pool, pages, names=["ch1", "ch2"])
    records = records_from_json(text)
    assert [r.page for r in records] == ["ch1", "ch2"] and all(r.page_file is None for r in records)
    for record, ctx in zip(records, context.pages):
        assert record.size == (W, H) and len(record.cells) == 12
        assert {(c.query_patch, c.rank): c.reference_index for c in record.cells} == \
            {(p.query_patch, p.rank): p.reference_index for p in ctx.retrieval.placements}
        for cell in record.cells:  # named by file when the pool read them from a folder, else null
            assert cell.reference == ([None, *FOLDER_REFS][cell.reference_index])
    assert isinstance(json.loads(text), list)
    # one batch of previews, all of one size, the canvas at most PREVIEW_SIDE a side, labelled
    assert annotated.shape[0] == 2 and annotated.shape[-1] == 3 and annotated.dtype == torch.float32
    assert max(annotated.shape[1:3]) <= PREVIEW_SIDE
    assert annotated.shape[1] / annotated.shape[2] == pytest.approx(canvases.shape[1] / canvases.shape[2], rel=0.05)
    plain = torch.nn.functional.interpolate(canvases.permute(0, 3, 1, 2), size=tuple(annotated.shape[1:3]),
                                            mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    assert (annotated - plain).abs().amax() > 0.5  # the labels (white on black) are drawn on it


def test_pinned_references_change_only_the_named_pages(model, named_pool):
    pages = [_page(1, (64, 96)), _page(2, (64, 96))]
    free = records_from_json(_run(model, named_pool, pages)[3])
    uses = [sum(c.reference_index == i for c in free[1].cells) for i in range(3)]
    target = uses.index(min(uses))  # the reference page 2 uses least when free
    assert {c.reference_index for c in free[1].cells} != {target}
    for pinned in (json.dumps({"2": [target + 1]}), json.dumps({"page2": [target + 1]})):
        records = records_from_json(_run(model, named_pool, pages, pinned=pinned)[3])
        assert {c.reference_index for c in records[1].cells} == {target}
        assert records[0] == free[0]
    excluded = records_from_json(_run(model, named_pool, pages, pinned='{"1": {"exclude": ["hero*", 1]}}')[3])
    assert {c.reference for c in excluded[0].cells} == {"villain.png"}
    assert excluded[1] == free[1]
    assert records_from_json(_run(model, named_pool, pages, pinned="  ")[3]) == free  # blank: no pinning


@pytest.mark.parametrize("pinned, message", [
    ('{"3": [1]}', "Retrieve References: pinned_references: '3' is not a page of the chapter (its pages: 1..2 or "
                   "page1, page2)"),
    ('{"1": ["cover*"]}', "Retrieve References: pinned_references: page '1': 'cover*' matches no reference (the "
                          "references: hero.png, villain.png)"),
    ('{"1": [4]}', "Retrieve References: pinned_references: page '1': reference number 4 is not in the pool (1..3)"),
    ("{1: 2}", "Retrieve References: pinned_references: not valid JSON"),
])
def test_bad_pins_are_refused_before_any_model_runs(named_pool, pinned, message):
    pages = [_page(1, (64, 96)), _page(2, (64, 96))]
    with pytest.raises(InputError) as caught:
        _run(None, named_pool, pages, pinned=pinned)  # no model: refused before one is needed
    assert str(caught.value).startswith(message), str(caught.value)
