"""Pinning / excluding references per page: the map's parsing and resolution (`retrieve.pinning`) and the
masking of the similarity matrix in `canvas.retrieve_many` (the pool is never embedded again)."""
from __future__ import annotations

import json

import pytest
import torch

from colorflow_core.errors import InputError
from colorflow_core.retrieve.canvas import retrieve, retrieve_many
from colorflow_core.retrieve.pinning import (
    PageRule,
    parse_refs_map,
    parse_refs_map_text,
    read_refs_map,
    resolve_refs_map,
)
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.sizes import PageSize
from tests.retrieve.test_retrieval import StatsEncoder, _random_image

SIZE = PageSize(64, 96)
PAGES = ["p1", "p2", "p3", "p9"]
REFS = ["hero_sheet.png", "cover.jpg", "villain_a.png", "villain_b.png", "extra.png"]
SRC = "--refs-map map.json"


def _resolve(data, pages=PAGES, refs=REFS, top_k=3, **kw):
    return resolve_refs_map(parse_refs_map(data, SRC), pages, refs, source=SRC, top_k=top_k, **kw)


# ---- the map ------------------------------------------------------------------------------------

def test_pin_exclude_only_and_the_rest_untouched():
    allowed = _resolve({"p3": ["hero_sheet.png", "cover.jpg"], "p9": {"exclude": ["villain*"]},
                        "p1": {"only": ["*.png"], "exclude": ["extra.png"]}})
    assert allowed == [frozenset({0, 2, 3}), None, frozenset({0, 1}), frozenset({0, 1, 4})]


def test_globs_match_names_with_or_without_extension_and_numbers_count_from_1():
    assert _resolve({"p2": ["hero_sheet", "cover"]})[1] == frozenset({0, 1})
    assert _resolve({"p2": ["villain_?"]})[1] == frozenset({2, 3})
    assert _resolve({"p2": [2, "extra.png"]})[1] == frozenset({1, 4})
    assert _resolve({"p2": ["Hero*"]}, refs=["Hero.png", "hero.png"])[1] == frozenset({0})  # case-sensitive


def test_page_numbers_only_where_asked():
    assert _resolve({"2": [1]}, page_numbers=True)[1] == frozenset({0})
    assert _resolve({"p9": [1]}, page_numbers=True)[3] == frozenset({0})  # names still work
    with pytest.raises(InputError, match="'2' is not a page of the chapter"):
        _resolve({"2": [1]})
    with pytest.raises(InputError, match="'p2' and '2' name the same page"):
        _resolve({"p2": [1], "2": [2]}, page_numbers=True)


@pytest.mark.parametrize("data, message", [
    ({"p7": ["cover.jpg"]},
     f"{SRC}: 'p7' is not a page of the chapter (its pages: p1, p2, p3, p9)"),
    ({"p3": ["hero.png"]},
     f"{SRC}: page 'p3': 'hero.png' matches no reference (the references: hero_sheet.png, cover.jpg, "
     f"villain_a.png, villain_b.png, extra.png)"),
    ({"p3": {"exclude": ["goblin*"]}}, f"{SRC}: page 'p3': 'goblin*' matches no reference"),
    ({"p3": [9]}, f"{SRC}: page 'p3': reference number 9 is not in the pool (1..5)"),
    ({"p3": {"exclude": ["*"]}},
     f"{SRC}: page 'p3' is left with 0 reference(s), 0 candidate patches, fewer than top_k = 3: that is an "
     f"error, top_k is not lowered; pin more references or exclude fewer"),
    ({"p3": {"only": ["cover.jpg"], "exclude": ["cover*"]}}, f"{SRC}: page 'p3' is left with 0 reference"),
])
def test_resolution_errors_are_exact(data, message):
    with pytest.raises(InputError) as caught:
        _resolve(data)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unnamed_references_say_to_use_numbers():
    with pytest.raises(InputError, match=r"matches no reference \(the pool's references have no file names: use "
                                         r"their numbers 1\.\.2\)"):
        _resolve({"p1": ["hero*"]}, refs=[None, None])
    assert _resolve({"p1": [2]}, refs=[None, None])[0] == frozenset({1})


@pytest.mark.parametrize("text, message", [
    ("{", f"{SRC}: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    ('["p3"]', f"{SRC}: expected a JSON object mapping pages to references, e.g. "),
    ('{"p3": "hero.png"}', f'{SRC}: page \'p3\': expected a list of reference names (or {{"exclude": [...]}}), '
                           f'got "hero.png"'),
    ('{"p3": []}', f"{SRC}: page 'p3': an empty list pins no reference"),
    ('{"p3": {"pin": ["a"]}}', f"{SRC}: page 'p3': expected the keys \"only\" and/or \"exclude\", got 'pin'"),
    ('{"p3": {}}', f"{SRC}: page 'p3': expected the keys \"only\" and/or \"exclude\", got an empty object"),
    ('{"p3": {"exclude": "villain*"}}', f"{SRC}: page 'p3': 'exclude' must be a list of reference names"),
    ('{"p3": [null]}', f"{SRC}: page 'p3': null is not a reference name, glob or number"),
    ('{"p3": [true]}', f"{SRC}: page 'p3': true is not a reference name, glob or number"),
    ('{"p3": ["a"], "p3": ["b"]}', f"{SRC}: page 'p3' is given twice"),
])
def test_shape_errors_are_exact(text, message):
    with pytest.raises(InputError) as caught:
        parse_refs_map_text(text, SRC)
    assert str(caught.value).startswith(message), str(caught.value)


def test_blank_text_and_files(tmp_path):
    assert parse_refs_map_text("  \n", SRC) == {}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"p3": ["a.png"], "p9": {"exclude": ["v*"]}}))
    assert read_refs_map(path) == {"p3": PageRule(only=("a.png",)), "p9": PageRule(exclude=("v*",))}
    with pytest.raises(InputError, match=f"^{tmp_path / 'nope.json'}: file not found$"):
        read_refs_map(tmp_path / "nope.json")
    with pytest.raises(InputError, match="^--refs-map x: cannot be read"):
        read_refs_map(tmp_path, "--refs-map x")


# ---- masking in retrieval -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool_and_pages():
    refs = [_random_image(20 + k, (70, 100)) for k in range(3)]
    pool = ReferencePool.build(refs, StatsEncoder(), SIZE)
    # page k is reference k itself (in gray): unrestricted, it retrieves mostly its own reference
    pages = [refs[0].convert("L"), refs[1].convert("L")]
    return pool, pages


def test_masking_restricts_one_page_and_leaves_the_other(pool_and_pages):
    pool, pages = pool_and_pages
    encoder = StatsEncoder()
    free = retrieve_many(pages, pool, encoder, SIZE)
    assert {p.reference_index for p in free[0].placements} != {2}
    encoder.calls.clear()
    pinned = retrieve_many(pages, pool, encoder, SIZE, allowed=[{2}, None])
    assert encoder.calls == [2 * 4]  # only the pages' query patches: the pool is not embedded again
    assert {p.reference_index for p in pinned[0].placements} == {2}
    assert torch.isinf(pinned[0].similarities[:, :10]).all() and torch.isfinite(pinned[0].similarities[:, 10:]).all()
    assert torch.equal(pinned[1].top_k_indices, free[1].top_k_indices)  # page 2 unchanged
    assert pinned[1].placements == free[1].placements
    assert torch.equal(pinned[0].similarities[:, 10:], free[0].similarities[:, 10:])  # scores themselves unchanged

    excluded = retrieve(pages[1], pool, StatsEncoder(), SIZE, allowed={0, 2})
    assert 1 not in {p.reference_index for p in excluded.placements}


def test_masking_errors(pool_and_pages):
    pool, pages = pool_and_pages
    with pytest.raises(InputError, match="1 allowed-reference entries for 2 pages"):
        retrieve_many(pages, pool, StatsEncoder(), SIZE, allowed=[None])
    with pytest.raises(InputError, match=r"page 1: allowed reference indices \[3\] are not in the pool of 3"):
        retrieve_many(pages, pool, StatsEncoder(), SIZE, allowed=[{3}, None])
    with pytest.raises(InputError, match="page 2 is left with 0 candidate reference patches, fewer than top_k = 3"):
        retrieve_many(pages, pool, StatsEncoder(), SIZE, allowed=[None, set()])
