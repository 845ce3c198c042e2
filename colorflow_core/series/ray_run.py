"""The series run on Ray: pages streamed through a Ray Data pipeline, after `plan` (driver, no model)
and `pools` (each chapter's references embedded once into the CLI's pool cache).

Pages: ``read`` (plain tasks: fetch + decode, 0 CPU so they never wait behind the actors) →
``colorize`` (an actor pool, one actor per worker, each `ColorFlow.load` once; a chapter's pool is
read from its cache once per actor; preprocess, retrieve, colorize and upscale through
`ColorFlow.run`) → ``write`` (plain tasks: the CLI's files of a page, the page last, each
atomically).

Page k of a chapter always uses seed + k (as the CLI), whichever actor or batch it lands in, so the
pages equal a single-process run's (up to single 8-bit levels from batch composition). Ray Data's
actor fault tolerance (``max_restarts=-1``, ``max_task_retries=-1``: a dead actor is restarted and its
batches are retried) covers killed workers and lost nodes; the write task skips a page that is already
done, so a retried page is written exactly once, and temporary files a killed writer left are swept.
A page that cannot be used fails alone, with its name and reason; every other page completes.
"""
from __future__ import annotations

import pickle
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ColorFlowError, InputError
from . import storage
from .plan import ChapterPlan, PageOutcome, RunOptions, page_rows, set_pixel_limit
from .pools import REFERENCES_FAILED

IO_CPUS = 0  # read / write tasks: I/O bound; 0 CPUs so they run beside actors that hold every CPU


def _encode(image) -> tuple[bytes, str, int, int]:
    return image.tobytes(), image.mode, image.width, image.height


def _decode(data: bytes, mode: str, width: int, height: int):
    from PIL import Image

    return Image.frombytes(str(mode), (int(width), int(height)), bytes(data))


def _column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def read_pages(batch: dict[str, np.ndarray], max_image_pixels: int | None) -> dict[str, np.ndarray]:
    """Plain task: fetch and decode each page (8-bit RGB / L, as the stages normalise it). Takes plain
    values only: unpickling RunOptions would import the engine into every I/O worker."""
    set_pixel_limit(max_image_pixels)
    pixels, modes, widths, heights, errors = [], [], [], [], []
    for page in batch["page"]:
        try:
            data, mode, width, height = _encode(storage.read_image(str(page), "page"))
            error = ""
        except InputError as exc:
            data, mode, width, height, error = b"", "", 0, 0, str(exc)
        pixels.append(data)
        modes.append(mode)
        widths.append(width)
        heights.append(height)
        errors.append(error)
    return {**batch, "pixels": _column(pixels), "mode": np.array(modes, dtype=object),
            "width": np.array(widths, dtype=np.int64), "height": np.array(heights, dtype=np.int64),
            "error": np.array(errors, dtype=object), "bad_input": np.array([bool(e) for e in errors])}


class PageWorker:
    """One actor per worker: the engine is loaded once, in the constructor, and kept for every batch."""

    def __init__(self, options: RunOptions, pools: dict[str, list]) -> None:
        from ..engine import ColorFlow

        set_pixel_limit(options.max_image_pixels)
        self.options = options
        self.pool_refs = pools
        self.pools: dict[str, Any] = {}
        self.ref_names: dict[str, list[str]] = {}
        self.engine = ColorFlow.load(**options.load)

    def _pool(self, chapter: str):
        """The chapter's pool, once per actor: from the pool cache its references were embedded into
        (`build_pools`; waits for that), or embedded here when the chapter has no cache folder."""
        if chapter not in self.pools:
            import ray

            (ref,), cache_dir = self.pool_refs[chapter]
            error, refs = ray.get(ref)
            if error:
                self.pools[chapter] = InputError(f"{REFERENCES_FAILED}{error}")
            else:
                images = [storage.pool_reference(r) for r in refs]
                self.ref_names[chapter] = [storage.name(r) for r in refs]
                self.pools[chapter] = self.engine.reference_pool(images, self.options.size, cache_dir=cache_dir)
        pool = self.pools[chapter]
        if isinstance(pool, Exception):
            raise pool
        return pool

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..runtime.performance import page_runs

        n = len(batch["page"])
        errors = [str(e) for e in batch["error"]]
        files: list[bytes] = [b""] * n
        by_chapter: dict[str, list[int]] = defaultdict(list)
        for row in range(n):
            if not errors[row]:
                by_chapter[str(batch["chapter"][row])].append(row)
        for chapter, rows in by_chapter.items():
            rows.sort(key=lambda r: int(batch["index"][r]))
            runs = page_runs(rows, self.options.chunk,
                             lambda a, b: int(batch["index"][b]) == int(batch["index"][a]) + 1)
            for run in runs:
                try:
                    done = self._colorize(chapter, run, batch)
                except Exception:  # noqa: BLE001 - isolate the page at fault: each page of the run alone
                    done = {}
                    for row in run:
                        try:
                            done.update(self._colorize(chapter, [row], batch))
                        except Exception as exc:  # noqa: BLE001 - this page fails, the others go on
                            errors[row] = _describe(exc)
                for row, page_files in done.items():
                    files[row] = pickle.dumps(page_files, protocol=pickle.HIGHEST_PROTOCOL)
        out = {key: batch[key] for key in ("chapter", "index", "page", "bad_input")}
        out["error"] = np.array(errors, dtype=object)
        out["files"] = _column(files)
        return out

    def _colorize(self, chapter: str, run: list[int], batch: dict[str, np.ndarray]) -> dict[int, list]:
        """Pages ``run`` (consecutive pages of one chapter) through `ColorFlow.run`; page k: seed + k.
        Returns each page's files to write (`page_files`)."""
        first = int(batch["index"][run[0]])
        settings = replace(self.options.settings, seed=self.options.settings.seed + first)
        images = [_decode(batch["pixels"][r], batch["mode"][r], batch["width"][r], batch["height"][r]) for r in run]
        names = [storage.stem(str(batch["page"][r])) for r in run]
        pool = self._pool(chapter)
        results = self.engine.run(images, pool, self.options.size, settings, names=names)
        return {row: page_files(result, str(batch["out"][row]), str(batch["page"][row]), str(batch["label"][row]),
                                self.ref_names[chapter], self.options.sheets)
                for row, result in zip(run, results)}


def page_files(result, out: str, page: str, label: str, ref_names: list[str], sheets: bool) -> list[tuple]:
    """The files the CLI writes for one page, in its order (the page last: its existence marks the page
    done): (location, "png", (pixels, mode, width, height)) or (location, "bytes", data)."""
    from .. import chapter as layout
    from ..retrieve.record import RetrievalRecord
    from ..upscale.decoder import centre_crop

    page_path, base = Path(storage.name(page)), Path("")

    def at(path: Path) -> str:  # the CLI's name for this output, under this chapter's OUT
        return storage.join(out, *path.parts)

    record = RetrievalRecord.from_result(result.context.retrieval, page_path.stem, label, ref_names)
    files: list[tuple] = [(at(layout.record_path(base, page_path)), "bytes", (record.to_json(indent=1) + "\n").encode())]
    page_out, sheet_out = layout.output_paths(base, page_path)
    if sheets:
        files.append((at(sheet_out), "png", _encode(result.context.retrieval.canvas)))
        files.append((at(layout.icp_sheet_path(base, page_path)), "png", _encode(centre_crop(result.canvas))))
    files.append((at(page_out), "png", _encode(result.image)))
    return files


def _describe(exc: Exception) -> str:
    if isinstance(exc, ColorFlowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (unexpected: please report it)"


def write_pages(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Plain task: a page's files in the CLI's order, the page last, each atomically. A page already
    done (a retried batch whose first attempt got this far) is not written again: exactly once."""
    from ..errors import OutputError

    statuses, errors, finished = [], [], []
    for row in range(len(batch["page"])):
        error = str(batch["error"][row])
        status = "bad input" if batch["bad_input"][row] else "failed"
        if not error:
            files = pickle.loads(bytes(batch["files"][row]))
            try:
                if not storage.page_done(files[-1][0]):
                    for location, kind, payload in files:
                        if kind == "png":
                            storage.write_png(_decode(*payload), location)
                        else:
                            storage.write_bytes(payload, location)
                status = "written"
            except OutputError as exc:
                status, error = "failed", str(exc)
        statuses.append(status)
        errors.append(error)
        finished.append(time.time())
    return {"chapter": batch["chapter"], "page": batch["page"], "status": np.array(statuses, dtype=object),
            "error": np.array(errors, dtype=object), "finished": np.array(finished, dtype=np.float64)}


def run_pages(ray, plans: list[ChapterPlan], options: RunOptions, pools: dict[str, Any], workers: int,
              actor_resources: dict[str, float]):
    """Stream every page to do through read → colorize (actor pool) → write; yields a `PageOutcome` per page."""
    import ray.data

    rows = page_rows(plans)
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    io_tasks = ray.data.TaskPoolStrategy(size=min(2 * workers, len(rows)))  # a few reused processes
    ds = ds.map_batches(read_pages, fn_kwargs={"max_image_pixels": options.max_image_pixels}, batch_size=1, batch_format="numpy",
                        compute=io_tasks, num_cpus=IO_CPUS)
    # One actor per worker; Ray Data restarts a dead actor and retries its batches (max_restarts=-1,
    # max_task_retries=-1 are its defaults for actor pools).
    ds = ds.map_batches(PageWorker, fn_constructor_kwargs={"options": options, "pools": pools},
                        batch_size=options.chunk, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=workers), **actor_resources)
    ds = ds.map_batches(write_pages, batch_size=1, batch_format="numpy", compute=io_tasks, num_cpus=IO_CPUS)
    for row in ds.iter_rows():
        yield PageOutcome(str(row["chapter"]), str(row["page"]), str(row["status"]), str(row["error"]),
                          float(row["finished"]))
