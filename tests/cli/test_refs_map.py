"""The CLI's retrieval records (OUT/retrieval/<stem>.json), in-context sheets (OUT/sheets/<stem>_icp.png)
and ``--refs-map`` (pin / exclude references per page), on a tiny random release."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorflow_core import chapter, cli
from colorflow_core.engine import ColorFlow
from colorflow_core.errors import InputError
from colorflow_core.retrieve.record import RetrievalRecord
from colorflow_core.upscale.decoder import centre_crop

REFS = ("hero_a.png", "villain_b.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Two references A and B; page p1 is random, page p2 is reference A in gray (so it picks A when free)."""
    folder = tmp_path_factory.mktemp("inputs")
    pages, refs = folder / "pages", folder / "refs"
    pages.mkdir()
    refs.mkdir()
    rng = np.random.default_rng(3)
    a = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    b = Image.new("RGB", (64, 64), (30, 200, 90))
    a.save(refs / REFS[0])
    b.save(refs / REFS[1])
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(pages / "p1.png")
    a.convert("L").save(pages / "p2.png")
    return pages, refs


def _args(release: Path, pages: Path, refs: Path, out: Path, *extra: str) -> list[str]:
    return ["colorize", str(pages), "--refs", str(refs), "--out", str(out), "--release", str(release),
            "--base", str(release / "base"), "--size", "64x64", "--steps", "1", "--no-screentone",
            "--device", "cpu", *extra]


def _records(out: Path) -> dict[str, RetrievalRecord]:
    return {p.stem: RetrievalRecord.from_json(p.read_text(), str(p)) for p in sorted((out / "retrieval").glob("*.json"))}


def _used(record: RetrievalRecord) -> set[str]:
    return {c.reference for c in record.cells}


@pytest.fixture(scope="module")
def free_run(release, inputs, tmp_path_factory) -> tuple[Path, list[tuple[str, str]], dict]:
    """A run without a map; the order of its writes and its canvases are recorded."""
    pages, refs = inputs
    out = tmp_path_factory.mktemp("free") / "out"
    writes: list[tuple[str, str]] = []
    canvases: dict[str, Image.Image] = {}
    real_save, real_bytes, real_run = chapter.save_image_atomic, chapter.write_bytes_atomic, ColorFlow.run

    def run(self, *args, **kwargs):
        results = real_run(self, *args, **kwargs)
        canvases.update({r.name: r.canvas for r in results})
        return results

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chapter, "save_image_atomic", lambda image, path: (writes.append(("png", str(path))),
                                                                 real_save(image, path)))
        mp.setattr(chapter, "write_bytes_atomic", lambda path, data: (writes.append(("json", str(path))),
                                                                  real_bytes(path, data)))
        mp.setattr(ColorFlow, "run", run)
        assert cli.main(_args(release, pages, refs, out)) == 0
    return out, writes, canvases


def test_records_and_icp_sheets_are_written_before_the_page(free_run, inputs):
    out, writes, canvases = free_run
    records = _records(out)
    assert set(records) == {"p1", "p2"}
    for stem, record in records.items():
        assert record.page == stem and not Path(record.page_file).is_absolute()  # relative to OUT
        assert (out / record.page_file).resolve() == (inputs[0] / f"{stem}.png").resolve()
        assert record.size == (64, 64) and record.top_k == 3 and len(record.cells) == 12
        assert _used(record) <= set(REFS)
        assert {c.reference_index for c in record.cells} <= {0, 1}
        assert all(REFS[c.reference_index] == c.reference for c in record.cells)
        data = json.loads((out / "retrieval" / f"{stem}.json").read_text())
        assert data["format"] == "colorflow-retrieval/1" and data["best_similarity"] == record.best_similarity
        icp = Image.open(out / "sheets" / f"{stem}_icp.png")
        assert icp.size == (64, 64)  # W x H: the in-context result before GSRP (the page is 96 x 96)
        assert np.array_equal(np.asarray(icp.convert("RGB")), np.asarray(centre_crop(canvases[stem]).convert("RGB")))
        # the page PNG comes last: its existence marks the page as done
        mine = [w for w in writes if Path(w[1]).stem.startswith(stem)]
        assert [Path(p).relative_to(out).as_posix() for _, p in mine] == [
            f"retrieval/{stem}.json", f"sheets/{stem}_canvas.png", f"sheets/{stem}_icp.png", f"{stem}.png"]
    assert "hero_a.png" in _used(records["p2"])  # free, p2 (reference A in gray) retrieves A
    assert not list(out.rglob("*.tmp"))


def test_pinning_changes_only_the_named_page(free_run, release, inputs, tmp_path):
    pages, refs = inputs
    free = _records(free_run[0])
    refs_map = tmp_path / "map.json"
    refs_map.write_text(json.dumps({"p2": ["villain_b.png"]}))
    out = tmp_path / "pinned"
    assert cli.main(_args(release, pages, refs, out, "--refs-map", str(refs_map), "--no-sheets")) == 0
    pinned = _records(out)
    assert _used(pinned["p2"]) == {"villain_b.png"}  # every cell of p2 comes from B
    assert pinned["p1"] == free["p1"]  # p1 is not in the map: the whole pool, the same picks
    # the page really was coloured from another canvas
    assert not np.array_equal(np.asarray(Image.open(out / "p2.png")), np.asarray(Image.open(free_run[0] / "p2.png")))
    assert not (out / "sheets").exists()


def test_excluding_a_reference(free_run, release, inputs, tmp_path):
    pages, refs = inputs
    refs_map = tmp_path / "map.json"
    refs_map.write_text(json.dumps({"p2": {"exclude": ["hero*"]}, "p1": {"only": ["*.png"]}}))
    out = tmp_path / "excluded"
    assert cli.main(_args(release, pages, refs, out, "--refs-map", str(refs_map), "--no-sheets")) == 0
    records = _records(out)
    assert _used(records["p2"]) == {"villain_b.png"}
    assert records["p1"] == _records(free_run[0])["p1"]


@pytest.mark.parametrize("content, message", [
    ('{"p2": ["villain_b.png"', "not valid JSON (Expecting ',' delimiter at line 1, column 24)"),
    ('["p2"]', "expected a JSON object mapping pages to references"),
    ('{"p7": ["villain_b.png"]}', "'p7' is not a page of the chapter (its pages: p1, p2)"),
    ('{"p2": ["goblin*"]}', "page 'p2': 'goblin*' matches no reference (the references: hero_a.png, villain_b.png)"),
    ('{"p2": {"exclude": ["*"]}}', "page 'p2' is left with 0 reference(s), 0 candidate patches, fewer than top_k = 3: "
                                   "that is an error, top_k is not lowered"),
])
def test_map_errors_are_one_line_naming_the_map_before_loading(content, message, release, inputs, tmp_path,
                                                               capsys, monkeypatch):
    pages, refs = inputs
    loads: list[object] = []

    def load(*args, **kwargs):
        loads.append(kwargs)
        raise InputError("models were loaded")

    monkeypatch.setattr(ColorFlow, "load", load)
    refs_map = tmp_path / "map.json"
    refs_map.write_text(content)
    assert cli.main(_args(release, pages, refs, tmp_path / "out", "--refs-map", str(refs_map))) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len([x for x in lines if x.startswith("error: ")]) == 1
    assert lines[-1].startswith(f"error: --refs-map {refs_map}: {message}"), lines[-1]
    assert not loads


def test_missing_map_file(release, inputs, tmp_path, capsys):
    pages, refs = inputs
    missing = tmp_path / "nope.json"
    assert cli.main(_args(release, pages, refs, tmp_path / "out", "--refs-map", str(missing))) == cli.EXIT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --refs-map {missing}: file not found"
