"""A chapter on disk: its pages in reading order, where each page's outputs go, when a page is done,
and the checks made before any model loads. Shared by ``colorize`` and ``colorize-series``, so both
write the same tree:

``OUT/<stem>.png`` (the coloured page, 1.5W x 1.5H after GSRP; written last, so its existence marks
the page as done), ``OUT/retrieval/<stem>.json`` (the page's retrieval record, `retrieve.record`),
and with sheets ``OUT/sheets/<stem>_canvas.png`` (the input canvas: the page amid its retrieved
references) and ``OUT/sheets/<stem>_icp.png`` (the in-context result before GSRP). Reference
embeddings are cached under ``OUT/.colorflow/pool_cache``.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from .errors import InputError, OutputError
from .files import check_writable_folder, save_image_atomic, write_bytes_atomic
from .images import IMAGE_SUFFIXES, broken_links, check_image_files, describe_broken_links, natural_sort_key
from .runtime.seeding import MAX_SEED

T = TypeVar("T")
SHEETS_DIR = "sheets"
RETRIEVAL_DIR = "retrieval"  # OUT/retrieval/<stem>.json: the page's retrieval record
POOL_CACHE_DIR = ".colorflow/pool_cache"  # under OUT: a resumed chapter reuses its reference embeddings
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)


def collect_pages(inputs: Sequence[str]) -> list[Path]:
    """Page files from files and folders, naturally sorted by name; non-images skipped with a warning."""
    pages: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = list(item.iterdir())
            found = [p for p in entries if is_page_file(p)]  # sorted with the other pages below
            skipped = sorted(p.name for p in entries if p.is_file() and p not in found and not p.name.startswith("."))
            if skipped:
                warn(f"skipping {len(skipped)} non-image file(s) in {item}: {', '.join(skipped)}")
            broken = broken_links(item)
            if broken:
                warn(describe_broken_links(item, broken))
            pages += found
        elif item.is_file():
            if is_page_file(item):
                pages.append(item)
            else:
                warn(f"skipping {item}: not an image file")
        else:
            raise InputError(f"page file or folder not found: {item}")
    return in_reading_order(pages, inputs)


def in_reading_order(pages: list[T], inputs: Sequence[str],
                     file_name: Callable[[T], str] = lambda p: p.name) -> list[T]:
    """``pages`` (paths, or locations whose file name ``file_name`` gives) without repeats, in natural
    order of their names; InputError when there are none, or when two would write the same output."""
    if not pages:
        raise InputError(f"no page images found in {', '.join(inputs)}")
    pages = sorted(dict.fromkeys(pages), key=lambda p: (natural_sort_key(Path(file_name(p))), str(p)))
    stems: dict[str, T] = {}
    for page in pages:
        stem = Path(file_name(page)).stem
        if stem in stems:
            raise InputError(f"two pages would write the same output {stem}.png: {stems[stem]} and {page}")
        stems[stem] = page
    return pages


def is_page_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_inputs(pages: list[Path], todo: list[int], ref_files: list[Path],
                 skip_bad: bool) -> tuple[list[int], list[Path]]:
    """Decode every page still to do and every reference before any model loads.

    Every bad file is reported at once: an InputError listing them, or with ``skip_bad`` a warning,
    and the good pages (keeping their chapter index, so their seeds do not move) and references.
    """
    bad_pages = check_image_files([pages[k] for k in todo], "page")
    bad_refs = check_image_files(ref_files, "colour reference")
    problems = [*bad_pages.values(), *bad_refs.values()]
    if not problems:
        return todo, ref_files
    listing = "\n".join(f"  {message}" for message in problems)
    if not skip_bad:
        raise InputError(f"{len(problems)} unreadable or unusable input file(s); nothing was coloured:\n{listing}\n"
                         f"fix or remove them, or run again with --skip-bad to colour the other pages")
    warn(f"skipping {len(problems)} unreadable or unusable input file(s) (--skip-bad):\n{listing}")
    good_refs = [p for p in ref_files if p not in bad_refs]
    if not good_refs:
        raise InputError("no usable colour reference is left: every reference file is unreadable or unusable")
    good = [k for k in todo if pages[k] not in bad_pages]
    if not good:
        raise InputError("no usable page is left to colour: every remaining page is unreadable or unusable")
    return good, good_refs


def output_paths(out: Path, page: Path) -> tuple[Path, Path]:
    """(coloured page, retrieval sheet) for a page."""
    return out / f"{page.stem}.png", out / SHEETS_DIR / f"{page.stem}_canvas.png"


def record_path(out: Path, page: Path) -> Path:
    """The page's retrieval record (written always)."""
    return out / RETRIEVAL_DIR / f"{page.stem}.json"


def icp_sheet_path(out: Path, page: Path) -> Path:
    """The page's in-context result before GSRP (written with the sheets)."""
    return out / SHEETS_DIR / f"{page.stem}_icp.png"


def page_file_label(page: Path, out: Path) -> str:
    """How a record names its page file: relative to OUT (POSIX separators), else absolute."""
    try:
        return Path(os.path.relpath(os.path.abspath(page), os.path.abspath(out))).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(page)).as_posix()


def page_done(path: Path) -> bool:
    """A page is done when its output is a regular, non-empty PNG file (not a folder, not an empty
    or foreign file of that name)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def check_seed_range(seed: int, pages: int) -> None:
    """Page i of the chapter uses seed + i: the last page's seed must be in range too."""
    if seed > MAX_SEED - (pages - 1):
        raise InputError(f"--seed {seed} is too large for {pages} pages: page i uses seed + i, so the seed must be "
                         f"at most {MAX_SEED - (pages - 1)}")


def same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def check_output_folder(out: Path, pages: Sequence[Path], refs: str) -> None:
    """Refuse an output folder that holds pages (their outputs would be taken as done pages, or as pages
    next time) or is the references folder."""
    holders = {page.parent for page in pages}
    for folder in holders:
        if same_folder(folder, out) or same_folder(folder, out / SHEETS_DIR):
            raise InputError(f"--out {out} holds the pages to colour ({folder}); choose another output folder, "
                             f"e.g. {out / 'colour'}")
    if same_folder(Path(refs), out):
        raise InputError(f"--out {out} is the --refs folder; choose another output folder, e.g. {out / 'colour'}")


def check_output_locations(out: Path, pages: Sequence[Path], todo: Sequence[int], sheets: bool,
                           cache_dir: Path) -> None:
    """Before anything loads: every output and cache folder can be created and written, no folder (or
    other non-file) sits where an output goes, and every output name fits the file system.

    OutputError ("cannot write PATH: reason") otherwise; a regular file in the way that is not a
    finished page (empty, not a PNG) is only warned about, and overwritten.
    """
    for k in todo:
        extra = [record_path(out, pages[k])] + ([icp_sheet_path(out, pages[k])] if sheets else [])
        for path in [*output_paths(out, pages[k])[: 2 if sheets else 1], *extra]:
            if len(os.fsencode(path.name)) > NAME_MAX:
                raise OutputError(f"cannot write {path}: its name would be {len(os.fsencode(path.name))} bytes long, "
                                  f"too long for a file name (at most {NAME_MAX}); give page {pages[k].name} a "
                                  f"shorter name" + ("" if path.name.endswith(".png") and path.parent == out
                                                     else " or run with --no-sheets"))
            if path.exists() and not path.is_file():
                raise OutputError(f"cannot write {path}: a folder (or other non-file) of that name is in the way; "
                                  f"move it away")
            if path.parent == out and path.exists() and not page_done(path):
                warn(f"{path} is empty or not a PNG image: colouring page {pages[k].name} again")
    check_writable_folder(out)
    check_writable_folder(out / RETRIEVAL_DIR)
    if sheets:
        check_writable_folder(out / SHEETS_DIR)
    check_writable_folder(cache_dir)


def write_page(out: Path, page: Path, result, reference_names: Sequence[str], sheets: bool) -> None:
    """Write one finished page (an `engine.PageResult`): its record, its sheets, then the page itself,
    whose existence marks it as done."""
    from .retrieve.record import RetrievalRecord
    from .upscale.decoder import centre_crop

    page_out, sheet_out = output_paths(out, page)
    record = RetrievalRecord.from_result(result.context.retrieval, page.stem, page_file_label(page, out),
                                         reference_names)
    write_bytes_atomic(record_path(out, page), (record.to_json(indent=1) + "\n").encode())
    if sheets:
        save_image_atomic(result.context.retrieval.canvas, sheet_out)
        save_image_atomic(centre_crop(result.canvas), icp_sheet_path(out, page))
    save_image_atomic(result.image, page_out)
