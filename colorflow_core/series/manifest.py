"""A series: many chapters, each a set of pages with its own colour references.

Two ways to describe one (``colorize-series SERIES``):

* a **folder of chapter folders**, each holding ``pages/`` and ``refs/``::

      SERIES/
        ch01/pages/p1.png ...   ch01/refs/hero.png ...
        ch02/pages/...          ch02/refs/...

  Chapters are the sub-folders that hold both, in natural order (``ch2`` before ``ch10``); hidden
  folders and folders with neither (an output folder inside SERIES, notes) are skipped, a folder
  with only one of the two is refused.
* a **manifest**, ``.json`` or ``.csv``, listing (chapter, pages, refs, out):

  - JSON: ``{"chapters": [{"chapter": "ch01", "pages": "ch01/pages", "refs": "ch01/refs"}, ...]}``
    (or just the list); ``pages`` is one folder / file or a list of them, ``out`` is optional;
  - CSV: a header row ``chapter,pages,refs,out`` (``out`` optional), one row per chapter; rows
    repeating a chapter add pages to it (same refs and out).

  Relative paths are relative to the manifest's folder. ``out`` defaults to ``OUT/<chapter>``.

Chapter NAME's pages go to ``OUT/NAME/<stem>.png`` (sheets and pool cache as the single-chapter CLI lays
them out under its --out), so a series run and ``colorize NAME/pages --refs NAME/refs --out OUT/NAME``
produce the same tree. Every location may be a local path or a URI (see `storage`).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from . import storage

MANIFEST_KEYS = ("chapter", "pages", "refs", "out")
PAGES_DIR, REFS_DIR = "pages", "refs"


@dataclass(frozen=True)
class Chapter:
    name: str
    pages: tuple[str, ...]  # page files and/or folders
    refs: str               # folder of colour references
    out: str                # output folder (OUT/<name> unless the manifest says otherwise)


def read_series(source: str, out: str, warn: storage.Warn) -> list[Chapter]:
    """The chapters of SERIES (a folder of chapter folders, or a .json / .csv manifest), outputs under ``out``."""
    suffix = Path(storage.name(source)).suffix.lower()
    if storage.is_dir(source):
        chapters = _from_folder(source, out, warn)
    elif suffix in (".json", ".csv"):
        if not storage.is_file(source):
            raise InputError(f"series manifest not found: {source}")
        text = storage.read_text(source)
        rows = _json_rows(source, text) if suffix == ".json" else _csv_rows(source, text)
        chapters = _from_rows(source, rows, out)
    elif storage.is_file(source):
        raise InputError(f"{source}: a series is a folder of chapter folders (each with {PAGES_DIR}/ and "
                         f"{REFS_DIR}/) or a .json / .csv manifest")
    else:
        raise InputError(f"series folder or manifest not found: {source}")
    _check_unique(source, chapters)
    return chapters


def _from_folder(source: str, out: str, warn: storage.Warn) -> list[Chapter]:
    chapters, ignored = [], []
    for folder in _subfolders(source):
        folder_name = storage.name(folder)
        has_pages = storage.is_dir(storage.join(folder, PAGES_DIR))
        has_refs = storage.is_dir(storage.join(folder, REFS_DIR))
        if has_pages and has_refs:
            chapters.append(Chapter(folder_name, (storage.join(folder, PAGES_DIR),), storage.join(folder, REFS_DIR),
                                    storage.join(out, folder_name)))
        elif has_pages or has_refs:
            missing = REFS_DIR if has_pages else PAGES_DIR
            raise InputError(f"chapter folder {folder} has {PAGES_DIR if has_pages else REFS_DIR}/ but no {missing}/: "
                             f"each chapter folder holds {PAGES_DIR}/ (the pages) and {REFS_DIR}/ (its colour "
                             f"references)")
        elif not _same(folder, out):
            ignored.append(folder_name)
    if ignored:
        warn(f"skipping {len(ignored)} folder(s) of {source} without {PAGES_DIR}/ and {REFS_DIR}/: {', '.join(ignored)}")
    if not chapters:
        hint = (f"; {source} itself holds {PAGES_DIR}/ and {REFS_DIR}/, i.e. it is one chapter: colour it with "
                f"colorize {storage.join(source, PAGES_DIR)} --refs {storage.join(source, REFS_DIR)} --out OUT"
                if storage.is_dir(storage.join(source, PAGES_DIR)) else "")
        raise InputError(f"no chapter folders in {source}: expected sub-folders each holding {PAGES_DIR}/ and "
                         f"{REFS_DIR}/{hint}")
    return chapters


def _subfolders(source: str) -> list[str]:
    if storage.is_uri(source):
        found = [loc for loc, is_file in storage._listing(source) if not is_file]
    else:
        found = [str(p) for p in Path(source).iterdir() if p.is_dir()]
    found = [f for f in found if not storage.name(f).startswith(".")]
    return sorted(found, key=lambda f: (storage.natural_sort_key(Path(storage.name(f))), f))


def _same(a: str, b: str) -> bool:
    if storage.is_uri(a) or storage.is_uri(b):
        return a.rstrip("/") == b.rstrip("/")
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _json_rows(source: str, text: str) -> list[tuple[str, dict]]:
    """(where, entry) for each chapter entry of a JSON manifest."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"chapters"})
        if unknown or not isinstance(data.get("chapters"), list):
            raise InputError(f"{source}: expected {{\"chapters\": [...]}} or a list of chapters"
                             + (f"; unknown key(s) {', '.join(map(repr, unknown))}" if unknown else ""))
        data = data["chapters"]
    if not isinstance(data, list):
        raise InputError(f"{source}: expected {{\"chapters\": [...]}} or a list of chapters")
    rows = []
    for k, entry in enumerate(data, start=1):
        where = f"{source} chapter {k}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object with keys {', '.join(MANIFEST_KEYS)}, got {entry!r}")
        if isinstance(entry.get("chapter"), str):
            where += f" ({entry['chapter']!r})"
        pages = entry.get("pages")
        if isinstance(pages, str):
            entry = {**entry, "pages": [pages]}
        elif pages is not None and not (isinstance(pages, list) and pages and all(isinstance(p, str) for p in pages)):
            raise InputError(f"{where}: 'pages' must be a folder or file, or a non-empty list of them, got {pages!r}")
        rows.append((where, entry))
    return rows


def _csv_rows(source: str, text: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text))
    header = None
    rows = []
    for line_no, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            unknown = [c for c in header if c not in MANIFEST_KEYS]
            missing = [c for c in ("chapter", "pages", "refs") if c not in header]
            if unknown or missing or len(set(header)) != len(header):
                raise InputError(f"{source} row {line_no}: the header must name the columns chapter, pages, refs "
                                 f"and optionally out, got {','.join(row)}")
            continue
        where = f"{source} row {line_no}"
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} column(s), the header has {len(header)}")
        entry = {key: cell.strip() for key, cell in zip(header, row)}
        if not entry.get("out"):
            entry.pop("out", None)
        entry["pages"] = [entry["pages"]] if entry.get("pages") else None
        rows.append((where, entry))
    if header is None:
        raise InputError(f"{source} is empty: expected a header row chapter,pages,refs[,out] and one row per chapter")
    return rows


def _from_rows(source: str, rows: list[tuple[str, dict]], out: str) -> list[Chapter]:
    base = storage.parent(source)
    merged: dict[str, Chapter] = {}
    for where, entry in rows:
        unknown = sorted(set(entry) - set(MANIFEST_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(MANIFEST_KEYS)}")
        for key in ("chapter", "pages", "refs"):
            if not entry.get(key):
                raise InputError(f"{where}: '{key}' is missing or empty")
        for key in ("chapter", "refs", "out"):
            if key in entry and not isinstance(entry[key], str):
                raise InputError(f"{where}: '{key}' must be a string, got {entry[key]!r}")
        chapter_name = entry["chapter"]
        _check_name(where, chapter_name)
        chapter = Chapter(chapter_name, tuple(_resolve(base, p) for p in entry["pages"]), _resolve(base, entry["refs"]),
                          _resolve(base, entry["out"]) if entry.get("out") else storage.join(out, chapter_name))
        if chapter_name in merged:  # CSV: a chapter over several rows; JSON: a repeated entry
            first = merged[chapter_name]
            if (first.refs, first.out) != (chapter.refs, chapter.out):
                raise InputError(f"{where}: chapter {chapter_name!r} appears again with other refs or out; one chapter "
                                 f"has one references folder and one output folder")
            chapter = Chapter(chapter_name, first.pages + chapter.pages, first.refs, first.out)
        merged[chapter_name] = chapter
    if not merged:
        raise InputError(f"{source} lists no chapters")
    return list(merged.values())


def _check_name(where: str, chapter_name: str) -> None:
    if chapter_name in (".", "..") or any(sep in chapter_name for sep in "/\\") or chapter_name != chapter_name.strip():
        raise InputError(f"{where}: chapter name {chapter_name!r} must be one folder name (no '/', '\\', '.' or '..', "
                         f"no leading or trailing spaces): its pages go to OUT/<chapter>/")


def _resolve(base: str, location: str) -> str:
    """A manifest's location: absolute, a URI, or relative to the manifest's folder."""
    if storage.is_uri(location) or Path(location).expanduser().is_absolute():
        return location if storage.is_uri(location) else str(Path(location).expanduser())
    return storage.join(base, location)


def _check_unique(source: str, chapters: list[Chapter]) -> None:
    outs: dict[str, str] = {}
    for chapter in chapters:
        key = chapter.out.rstrip("/") if storage.is_uri(chapter.out) else str(Path(chapter.out).resolve())
        if key in outs:
            raise InputError(f"{source}: chapters {outs[key]!r} and {chapter.name!r} would write the same output "
                             f"folder {chapter.out}")
        outs[key] = chapter.name
