"""What the report reads from an output folder: the pages, their retrieval records, the references.

Nothing here raises on a bad or missing file: a page without a record, a record that is not JSON or
not of the expected format, a reference that no longer exists are all carried as "missing" with the
reason, so the report shows the chapter as it is.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..images import IMAGE_SUFFIXES, list_image_files, natural_sort_key

RECORD_FORMAT = "colorflow-retrieval/1"
RETRIEVAL_DIR = "retrieval"
SHEETS_DIR = "sheets"


@dataclass
class Reference:
    """One column of the usage heatmap."""

    name: str                 # as shown: the path relative to the references folder, else the file name
    path: Path | None         # the file, when known


@dataclass
class Cell:
    """One canvas cell of a page's record."""

    query_patch: int | None
    rank: int | None
    cell: tuple[int, int] | None
    reference: int             # column in `Chapter.references`
    patch: str
    similarity: float | None


@dataclass
class Page:
    stem: str
    input_path: Path | None
    record_path: Path
    record_error: str | None = None       # why there is no usable record (None: it was read)
    cells: list[Cell] = field(default_factory=list)
    best_similarity: float | None = None

    @property
    def usage(self) -> Counter[int]:
        """Canvas cells per reference column."""
        return Counter(c.reference for c in self.cells)


@dataclass
class Chapter:
    out: Path
    pages: list[Page]
    references: list[Reference]

    def usage_matrix(self) -> list[list[int]]:
        """pages x references: canvas cells each page took from each reference."""
        rows = []
        for page in self.pages:
            usage = page.usage
            rows.append([usage.get(j, 0) for j in range(len(self.references))])
        return rows

    def unused(self) -> list[int]:
        """Reference columns no page with a record used."""
        used = {c.reference for page in self.pages for c in page.cells}
        return [j for j in range(len(self.references)) if j not in used]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Columns:
    """Reference columns: the given files first (in pool order), then names only records know."""

    def __init__(self, ref_files: Sequence[str | os.PathLike] | None, refs_dir: str | os.PathLike | None) -> None:
        self.refs_dir = Path(refs_dir) if refs_dir is not None else None
        files: list[Path]
        if ref_files is not None:
            files = [Path(p) for p in ref_files]
        elif self.refs_dir is not None:
            try:
                files = list_image_files(self.refs_dir, warn=lambda _message: None)
            except InputError:
                files = []
        else:
            files = []
        self.given = len(files)
        self.columns: list[Reference] = []
        self.by_name: dict[str, int] = {}
        self.by_basename: dict[str, int] = {}
        for path in files:
            self._add(self._display(path), path)

    def _display(self, path: Path) -> str:
        if self.refs_dir is not None:
            try:
                relative = Path(os.path.relpath(path, self.refs_dir)).as_posix()
            except ValueError:  # another drive
                relative = ""
            if relative and not relative.startswith("../"):
                return relative
        return path.name

    def _add(self, name: str, path: Path | None) -> int:
        index = len(self.columns)
        self.columns.append(Reference(name, path))
        self.by_name.setdefault(name, index)
        self.by_basename.setdefault(Path(name).name, index)
        return index

    def find(self, name: Any, index: Any) -> int:
        if isinstance(name, str) and name:
            key = Path(name).as_posix()
            for table, candidate in ((self.by_name, key), (self.by_basename, Path(key).name)):
                if candidate in table:
                    return table[candidate]
            path = None
            if self.refs_dir is not None and (self.refs_dir / key).is_file():
                path = self.refs_dir / key
            elif Path(key).is_absolute() and Path(key).is_file():
                path = Path(key)
            return self._add(key, path)
        number = _integer(index)
        if number is not None and 0 <= number < self.given:
            return number
        label = f"reference #{number + 1}" if number is not None else "unknown reference"
        if label in self.by_name:
            return self.by_name[label]
        return self._add(label, None)


def _read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, "no retrieval record (page not retrieved yet)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"unreadable retrieval record: {exc}"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None, f"not a {RECORD_FORMAT} retrieval record"
    if not isinstance(record.get("cells"), list):
        return None, "retrieval record without cells"
    return record, None


def _page_stems(out: Path) -> list[str]:
    stems = set()
    for folder, pattern, suffix in ((out / RETRIEVAL_DIR, "*.json", ".json"), (out, "*.png", ".png"),
                                    (out / SHEETS_DIR, "*_canvas.png", "_canvas.png")):
        if folder.is_dir():
            stems.update(p.name[: -len(suffix)] for p in folder.glob(pattern) if not p.name.startswith("."))
    return sorted(stems, key=lambda s: natural_sort_key(Path(s)))


def read_chapter(out: str | os.PathLike, pages: Sequence[str | os.PathLike] | None = None,
                 ref_files: Sequence[str | os.PathLike] | None = None,
                 refs_dir: str | os.PathLike | None = None) -> Chapter:
    """The chapter as the output folder holds it.

    ``pages``: the page files of the chapter, in order (a page not finished yet is shown as such);
    None: every page that has a record or an output in ``out``. A string without an image suffix is
    taken as a page name (stem). ``ref_files``: the reference files in pool order (a record's
    ``reference_index`` counts in it); None: the image files of ``refs_dir``.
    """
    out = Path(out)
    columns = _Columns(ref_files, refs_dir)
    entries: list[tuple[str, Path | None]] = []
    if pages is None:
        entries = [(stem, None) for stem in _page_stems(out)]
    else:
        for item in pages:
            path = Path(item)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((path.stem, path))
            else:
                entries.append((path.name, None))
    result = []
    for stem, input_path in entries:
        record_path = out / RETRIEVAL_DIR / f"{stem}.json"
        record, error = _read_record(record_path)
        page = Page(stem, input_path, record_path, error)
        if record is not None:
            if input_path is None and isinstance(record.get("page_file"), str) and record["page_file"]:
                given = Path(record["page_file"])
                page.input_path = given if given.is_absolute() else out / given
            for raw in record["cells"]:
                if not isinstance(raw, dict):
                    continue
                cell = raw.get("cell")
                where = (tuple(cell) if isinstance(cell, list) and len(cell) == 2
                         and all(_integer(v) is not None for v in cell) else None)
                page.cells.append(Cell(
                    query_patch=_integer(raw.get("query_patch")),
                    rank=_integer(raw.get("rank")),
                    cell=where,  # type: ignore[arg-type]
                    reference=columns.find(raw.get("reference"), raw.get("reference_index")),
                    patch=str(raw.get("patch", "")),
                    similarity=_number(raw.get("similarity")),
                ))
            best = _number(record.get("best_similarity"))
            if best is None:
                scores = [c.similarity for c in page.cells if c.similarity is not None]
                best = max(scores) if scores else None
            page.best_similarity = best
        result.append(page)
    return Chapter(out, result, columns.columns)
