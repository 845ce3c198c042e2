"""Each chapter's references embedded once, before any page: one task per worker's share of the
chapters loads `ColorFlow` once and fills the CLI's content-keyed pool cache
(``OUT/NAME/.colorflow/pool_cache``); the actors then read the pools from there, so a chapter's
references are never embedded per page."""
from __future__ import annotations

from ..errors import ColorFlowError, InputError
from . import storage
from .plan import ChapterPlan, RunOptions, set_pixel_limit

REFERENCES_FAILED = "the chapter's references cannot be used: "


def build_pools(options: RunOptions, jobs: list[tuple[str, list[str], str | None]]) -> tuple:
    """Ray task body: check each job's (chapter, reference files, cache folder) references and embed
    them into the chapter's pool cache, loading the engine once (only if some chapter has a cache).

    Returns (statuses, chapter_1, ..., chapter_n), each its own object (``num_returns``), so actors
    can wait on their chapters while they load: statuses = (fatal, warnings); fatal = "" or (error
    class name, message) when the engine cannot load at all (missing weights: the run stops);
    chapter_i = (error or "", the usable reference files). The actors then read the pool from the
    cache (`ReferencePool.cached`: a hit, no embedding): each chapter's references are embedded once.
    """
    set_pixel_limit(options.max_image_pixels)
    from ..engine import ColorFlow

    warnings: list[str] = []
    chapters: list[tuple[str, list[str]]] = []
    engine = None
    for chapter_name, ref_files, cache_dir in jobs:
        images, good, problems = [], [], []
        for ref in ref_files:
            try:
                storage.check_reference(ref)
                images.append(storage.pool_reference(ref))
                good.append(ref)
            except InputError as exc:
                problems.append(str(exc))
        if problems:
            listing = "\n".join(f"  {p}" for p in problems)
            if not options.skip_bad or not images:
                reason = ("no usable colour reference is left" if not images and options.skip_bad
                          else f"{len(problems)} unreadable or unusable colour reference(s) (--skip-bad colours "
                               f"the pages with the others)")
                chapters.append((f"{reason}:\n{listing}", []))
                continue
            warnings.append(f"chapter {chapter_name}: skipping {len(problems)} unusable colour reference(s) "
                            f"(--skip-bad):\n{listing}")
        if cache_dir is not None:
            if engine is None:
                try:
                    engine = ColorFlow.load(**options.load)
                except ColorFlowError as exc:
                    failed = (str(exc), [])
                    return ((type(exc).__name__, str(exc)), warnings), *([failed] * len(jobs))
            try:
                engine.reference_pool(images, options.size, cache_dir=cache_dir)
            except ColorFlowError as exc:
                chapters.append((str(exc), []))
                continue
        chapters.append(("", good))
    return ("", warnings), *chapters


def embed_references(ray, plans: list[ChapterPlan], options: RunOptions, workers: int,
                     resources: dict[str, float]) -> tuple[dict[str, tuple], list]:
    """Start `build_pools` over the chapters with pages to do, at most ``workers`` tasks, and return at
    once: ({chapter: ([its build_pools ObjectRef], cache folder)}, [statuses ObjectRef per task]). The
    page actors wait on their chapters while they load, so embedding and model loading overlap."""
    todo = [p for p in plans if p.todo]
    task = ray.remote(build_pools)
    chapters, statuses = {}, []
    for i in range(min(workers, len(todo))):
        group = todo[i::workers]
        jobs = [(p.chapter.name, p.refs, p.cache_dir) for p in group]
        refs = task.options(num_returns=1 + len(jobs), max_retries=3, **resources).remote(options, jobs)
        statuses.append(refs[0])
        for plan, chapter_ref in zip(group, refs[1:]):
            chapters[plan.chapter.name] = ([chapter_ref], plan.cache_dir)  # in a list: passed on unresolved
    return chapters, statuses


def reference_statuses(ray, statuses: list, chapters: dict[str, tuple]) -> tuple[dict[str, str], dict[str, list[str]],
                                                                                list[str]]:
    """({chapter: error}, {chapter: usable reference files}, warnings) of the `build_pools` tasks; the
    fatal error of one, raised."""
    warnings: list[str] = []
    for fatal, notes in ray.get(statuses):
        if fatal:
            from .. import errors as error_classes

            cls = getattr(error_classes, fatal[0], ColorFlowError)
            raise (cls if isinstance(cls, type) and issubclass(cls, ColorFlowError) else ColorFlowError)(fatal[1])
        warnings += notes
    errors, refs = {}, {}
    for name, ((ref,), _cache) in chapters.items():
        error, good = ray.get(ref)
        if error:
            errors[name] = error
        refs[name] = good
    return errors, refs, warnings
