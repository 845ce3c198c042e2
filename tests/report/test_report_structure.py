"""The chapter report's structure, without a browser: sections, links, heatmap, lists (answers known
from tests/report/chapter.py)."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from colorflow_core.report import heatmap_layout, low_similarity_threshold, write_report
from colorflow_core.report.heatmap import DARK, EMPTY, NO_RECORD
from tests.report.chapter import PAGES, REFS, build_chapter


class Parsed(HTMLParser):
    """Headings, links, images and the text of each section (by id) and page section (by data-page)."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": []}
        self.links: list[str] = []
        self.images: list[str] = []
        self.sections: dict[str, str] = {}
        self.pages: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, section key) stack of open sections
        self._heading: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            key = attrs.get("data-page") or attrs.get("id")
            if attrs.get("class") == "page":
                self.pages.append(attrs["data-page"])
                key = "page:" + attrs["data-page"]
            self._open.append((tag, key))
            self.sections.setdefault(key, "")
        if tag in self.headings:
            self._heading = tag
            self.headings[tag].append("")
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "section":
            self._open.pop()
        if tag == self._heading:
            self._heading = None

    def handle_data(self, data):
        if self._heading:
            self.headings[self._heading][-1] += data
        for _, key in self._open:
            self.sections[key] += data


@pytest.fixture()
def chapter(tmp_path):
    return build_chapter(tmp_path)


def _parse(path: Path) -> Parsed:
    parsed = Parsed()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def _resolve(out: Path, link: str) -> Path:
    url = urlparse(link)
    if url.scheme == "file":
        return Path(unquote(url.path))
    assert not url.scheme and not link.startswith("/"), f"not a relative link: {link}"
    return out / unquote(link)


def test_report_structure(chapter):
    out, page_files, ref_files, refs_dir = chapter
    path = write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir)
    assert path == out / "report.html"
    parsed = _parse(path)
    assert parsed.pages == PAGES
    assert parsed.headings["h3"] == PAGES
    assert {"Reference usage", "Unused references", "Pages with low similarity", "References", "Pages"} <= set(
        parsed.headings["h2"])
    # every relative link and image resolves to an existing file
    targets = [link for link in parsed.links if not link.startswith("#")] + parsed.images
    assert targets
    for link in targets:
        assert _resolve(out, link).is_file(), link
    assert not any(urlparse(link).scheme for link in targets), "everything here is reachable relatively"
    # the usage heatmap: pages x references
    heatmap = out / "report" / "usage.png"
    assert "report/usage.png" in parsed.images
    layout = heatmap_layout(len(PAGES), len(REFS))
    image = Image.open(heatmap).convert("RGB")
    assert image.size == layout.size

    def centre(page: int, ref: int):
        x0, y0, x1, y1 = layout.cell_box(page, ref)
        return image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2 if layout.cell_h < 12 else y0 + 1))

    assert centre(1, 0) == DARK, "p2 took all 12 cells from hero: the maximum"
    assert centre(0, 0) not in (EMPTY, DARK) and centre(0, 1) not in (EMPTY, DARK)
    assert centre(0, 2) == EMPTY and centre(0, 3) == EMPTY
    assert centre(2, 2) == DARK, "p3's reference given by index only"
    assert all(centre(3, j) == NO_RECORD for j in range(len(REFS))), "p10 has no record"
    assert all(centre(i, 3) == EMPTY for i in range(3)), "nobody used a&b <c>"
    # unused references, low-similarity pages
    assert "a&b <c>.png" in parsed.sections["unused"]
    assert not any(name in parsed.sections["unused"] for name in REFS[:3])
    low = parsed.sections["low-similarity"]
    assert "p3: 0.300" in low and "p1:" not in low and "p2:" not in low
    assert "0.780" in low, "the rule, with its threshold, is explained"
    # per page: what is there and what is missing
    assert parsed.sections["page:p1"].count("missing") == 0
    assert "hero.png" in parsed.sections["page:p1"] and "villain one.png" in parsed.sections["page:p1"]
    assert parsed.sections["page:p3"].count("missing") == 2, "in-context and hi-res results not written yet"
    assert "ünï.png" in parsed.sections["page:p3"]
    assert parsed.sections["page:p10"].count("missing") == 3 and "no retrieval record" in parsed.sections["page:p10"]


def test_names_are_escaped_and_links_quoted(chapter):
    out, page_files, ref_files, refs_dir = chapter
    raw = write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir).read_text(encoding="utf-8")
    assert "a&b <c>" not in raw and "a&amp;b &lt;c&gt;" in raw
    assert "refs/a%26b%20%3Cc%3E.png" in raw and "villain%20one.png" in raw and "%C3%BCn%C3%AF.png" in raw


def test_input_pages_are_shown_through_thumbnails(chapter):
    out, page_files, ref_files, refs_dir = chapter
    parsed = _parse(write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir))
    thumbs = [src for src in parsed.images if src.startswith("report/thumbs/")]
    assert len(thumbs) >= len(PAGES) + len(REFS) - 1
    assert "../pages/p2.tif" in parsed.links, "the TIFF input is linked, its JPEG thumbnail shown"
    for src in thumbs:
        assert Image.open(out / src).format == "JPEG"


def test_without_pages_or_file_list_the_folder_is_read(chapter):
    out, _, _, refs_dir = chapter
    parsed = _parse(write_report(out, refs_dir=refs_dir))
    assert parsed.pages == ["p1", "p2", "p3"], "found from the outputs and records; p10 left no trace"
    assert "a&b <c>.png" in parsed.sections["unused"]
    assert "p1.png" in parsed.sections["page:p1"] or parsed.sections["page:p1"].count("missing") == 0
    bare = _parse(write_report(out))  # no references folder at all: the names the records give
    assert "hero.png" in bare.sections["references"] and "reference #3" in bare.sections["references"]


def test_threshold_parameter_and_rule():
    assert low_similarity_threshold([0.9, 0.88, 0.3]) == pytest.approx(0.78)
    assert low_similarity_threshold([0.4, 0.45, 0.5]) == 0.5, "the absolute floor"
    assert low_similarity_threshold([]) == 0.5
    assert low_similarity_threshold([0.9], 0.95) == 0.95


def test_explicit_threshold(chapter):
    out, page_files, ref_files, refs_dir = chapter
    parsed = _parse(write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir, low_similarity=0.9))
    low = parsed.sections["low-similarity"]
    assert "p2: 0.880" in low and "p3: 0.300" in low and "p1:" not in low and "threshold given" in low


def test_broken_and_foreign_records_never_crash(chapter):
    out, page_files, ref_files, refs_dir = chapter
    (out / "retrieval" / "p1.json").write_text("{not json", encoding="utf-8")
    (out / "retrieval" / "p2.json").write_text(json.dumps({"format": "other/9", "cells": []}), encoding="utf-8")
    record = json.loads((out / "retrieval" / "p3.json").read_text(encoding="utf-8"))
    record["cells"] += ["junk", {"reference": 7, "similarity": "high"}, {"reference_index": 99}]
    record["best_similarity"] = None
    (out / "retrieval" / "p3.json").write_text(json.dumps(record), encoding="utf-8")
    ref_files[0].unlink()  # a reference gone since the run
    (out / "sheets" / "p1_canvas.png").write_bytes(b"not a png")
    parsed = _parse(write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir))
    assert parsed.pages == PAGES
    assert "unreadable retrieval record" in parsed.sections["page:p1"]
    assert "not a colorflow-retrieval/1 retrieval record" in parsed.sections["page:p2"]
    assert "p3: 0.300" in parsed.sections["low-similarity"], "best similarity from the cells when not given"
    assert "reference #100" in parsed.sections["page:p3"]
    assert "file not found" in parsed.sections["references"]


def test_empty_output_folder(tmp_path):
    parsed = _parse(write_report(tmp_path / "new"))
    assert parsed.pages == [] and "No page has a retrieval record yet." in parsed.sections["low-similarity"]
    assert Image.open(tmp_path / "new" / "report" / "usage.png").size == heatmap_layout(0, 0).size


def test_rewrite_is_atomic_and_prunes_old_thumbnails(chapter):
    out, page_files, ref_files, refs_dir = chapter
    write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir)
    before = sorted(p.name for p in (out / "report" / "thumbs").iterdir())
    Image.new("RGB", (90, 90), "red").save(ref_files[0])  # a new version of hero.png
    write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir)
    after = sorted(p.name for p in (out / "report" / "thumbs").iterdir())
    assert len(after) == len(before) and after != before
    assert not [p for p in out.rglob("*.tmp")]


def test_many_references_keep_the_heatmap_bounded(tmp_path):
    out = tmp_path / "out"
    (out / "retrieval").mkdir(parents=True)
    refs = [f"r{j}.png" for j in range(1000)]
    cells = [{"rank": 0, "reference": refs[(7 * i) % 1000], "similarity": 0.8} for i in range(12)]
    for i in range(50):
        (out / "retrieval" / f"p{i}.json").write_text(json.dumps(
            {"format": "colorflow-retrieval/1", "page": f"p{i}", "best_similarity": 0.8, "cells": cells}))
    write_report(out, ref_files=[tmp_path / r for r in refs])
    size = Image.open(out / "report" / "usage.png").size
    assert size == heatmap_layout(50, 1000).size and max(size) <= 4200
