"""Planning a series run on the driver (no model): each chapter's pages as the CLI collects them, the
pages already done skipped (the CLI's `page_done` rule), output folders checked, leftover temporary
files swept; the run's options; the chapter reports at the end."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ColorFlowError, InputError
from . import storage
from .manifest import Chapter


@dataclass
class ChapterPlan:
    chapter: Chapter
    pages: list[str]
    todo: list[int]
    cache_dir: str | None                  # local folder of the pool cache; None: no cache (object-store OUT)
    refs: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.pages) - len(self.todo)

    def page_output(self, k: int) -> str:
        """Page k's coloured page (its existence marks it done), as the CLI names it."""
        return storage.join(self.chapter.out, f"{storage.stem(self.pages[k])}.png")

    def label(self, k: int) -> str:
        """How page k's retrieval record names its file (the CLI's `page_file_label`; a URI as it is)."""
        if storage.is_uri(self.pages[k]) or storage.is_uri(self.chapter.out):
            return self.pages[k]
        from .. import chapter as layout

        return layout.page_file_label(Path(self.pages[k]), Path(self.chapter.out))


@dataclass
class RunOptions:
    """What the workers need to know (picklable): how to load the engine and colour the pages."""

    load: dict[str, Any]       # ColorFlow.load keyword arguments
    size: Any                  # PageSize
    settings: Any              # ColorizeSettings (seed: the chapter's seed; page k uses seed + k)
    sheets: bool = True
    skip_bad: bool = False
    max_image_pixels: int | None = None
    chunk: int = 4             # pages per actor call (consecutive pages of a chapter share a diffusion batch)


@dataclass
class PageOutcome:
    chapter: str
    page: str
    status: str                # "written" | "failed" | "bad input" (unusable input with --skip-bad)
    error: str = ""
    finished: float = 0.0


def plan_chapter(chapter: Chapter, seed: int, sheets: bool, pool_cache: str | None,
                 warn: storage.Warn) -> ChapterPlan:
    """Pages, pages still to do, and checked output folders of one chapter; InputError / OutputError
    naming the chapter when it cannot run at all."""
    from .. import chapter as layout

    try:
        pages = storage.collect_pages(list(chapter.pages), warn)
        layout.check_seed_range(seed, len(pages))
        out_local = None if storage.is_uri(chapter.out) else storage.local_path(chapter.out)
        plan = ChapterPlan(chapter, pages, [], None)
        if out_local is not None and not any(map(storage.is_uri, pages)):
            layout.check_output_folder(out_local, [Path(p) for p in pages], chapter.refs)
        plan.todo = [k for k in range(len(pages)) if not storage.page_done(plan.page_output(k))]
        if pool_cache:
            plan.cache_dir = pool_cache
        elif storage.local_path(chapter.out) is not None:
            plan.cache_dir = str(storage.local_path(chapter.out) / layout.POOL_CACHE_DIR)
        if plan.todo:
            plan.refs = storage.image_files(chapter.refs, warn)
            if not plan.refs:
                raise InputError(f"no colour reference images in {chapter.refs}")
            if out_local is not None:
                layout.check_output_locations(out_local, [Path(storage.name(p)) for p in pages], plan.todo, sheets,
                                           Path(plan.cache_dir) if plan.cache_dir else out_local / layout.POOL_CACHE_DIR)
            else:
                storage.check_writable(chapter.out)
                if plan.cache_dir:
                    storage.check_writable(plan.cache_dir)
        sweep(plan)  # temporary files a writer killed in an earlier run left
        return plan
    except ColorFlowError as exc:
        raise type(exc)(f"chapter {chapter.name}: {exc}") from exc


def sweep(plan: ChapterPlan) -> None:
    """Remove the temporary files killed writers left in the chapter's output folders."""
    from .. import chapter as layout

    for sub in ("", layout.SHEETS_DIR, layout.RETRIEVAL_DIR):
        storage.sweep_temp_files(storage.join(plan.chapter.out, sub) if sub else plan.chapter.out)
    if plan.cache_dir:
        storage.sweep_temp_files(plan.cache_dir)


def write_reports(plans: list[ChapterPlan], refs: dict[str, list[str]], warn: storage.Warn) -> None:
    """The CLI's chapter report (``OUT/report.html``) for every chapter that had pages to do (a local
    or file:// OUT; an object store gets none)."""
    from ..report.chapter import write_report

    for plan in plans:
        out = storage.local_path(plan.chapter.out)
        pages = [storage.local_path(p) for p in plan.pages]
        ref_files = [storage.local_path(r) for r in refs.get(plan.chapter.name, plan.refs)]
        if not plan.todo or out is None or None in pages or None in ref_files:
            continue
        refs_dir = storage.local_path(plan.chapter.refs)
        try:
            write_report(out, pages=pages, ref_files=ref_files, refs_dir=refs_dir)
        except ColorFlowError as exc:
            warn(f"chapter {plan.chapter.name}: report not written: {exc}")


def page_rows(plans: list[ChapterPlan]) -> list[dict[str, Any]]:
    rows = []
    for plan in plans:
        for k in plan.todo:
            rows.append({"chapter": plan.chapter.name, "index": k, "page": plan.pages[k], "out": plan.chapter.out,
                         "label": plan.label(k)})
    return rows


def set_pixel_limit(limit: int | None) -> None:
    """``--max-image-pixels`` in a Ray worker process (each has its own Pillow)."""
    if limit is not None:
        from ..images import set_max_image_pixels

        set_max_image_pixels(limit)
