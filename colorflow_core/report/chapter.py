"""`write_report`: OUT/report.html, one static page over what a colorize run left in OUT.

Per page: the input, its in-context canvas (what the model saw), the in-context result, the hi-res
result, and the references it took patches from. For the chapter: the pages x references usage
heatmap (OUT/report/usage.png), the references no page used, and the pages whose best similarity
is low. Images are relative links (the report opens offline, and moves with OUT); references and
input pages are shown through small JPEG thumbnails under OUT/report/thumbs/ (made once per file
version; browsers cannot show every input format, e.g. TIFF), each linked to its file.
"""
from __future__ import annotations

import hashlib
import html
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from PIL import Image, ImageOps

from ..files import save_image_atomic, write_bytes_atomic
from ..images import normalize_mode
from .heatmap import draw_heatmap
from .records import SHEETS_DIR, Chapter, Page, read_chapter

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
REPORT_DIR = "report"           # OUT/report/: usage.png and thumbs/
HEATMAP_FILE = "usage.png"
THUMBS_DIR = "thumbs"
THUMB_SIDE = {"reference": 160, "page": 360}
# A page is flagged when its best similarity is below ABSOLUTE_FLOOR, or more than MEDIAN_MARGIN below
# the chapter's median best similarity (cosine similarity of the image encoder's embeddings).
ABSOLUTE_FLOOR = 0.5
MEDIAN_MARGIN = 0.1

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1600px}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.note{color:#555;max-width:70em} .flag{color:#a40000;font-weight:bold}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;text-align:center} figcaption{font-size:.85em;color:#444}
figure img{max-width:360px;max-height:480px;border:1px solid #ccc}
.missing{width:200px;height:120px;border:2px dashed #bbb;color:#888;display:flex;align-items:center;
 justify-content:center;text-align:center;font-size:.85em;padding:4px}
.refs{display:flex;flex-wrap:wrap;gap:10px} .ref{width:170px;font-size:.8em;text-align:center;word-break:break-all}
.ref img{max-width:160px;max-height:160px;border:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.heatmap{max-width:100%;border:1px solid #ccc} nav a{margin-right:.6em}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _link(target: Path, out: Path) -> str:
    """``target`` as a link from OUT/report.html: relative (URL-quoted), or a file:// URI across drives."""
    target_abs = os.path.abspath(target)
    try:
        relative = os.path.relpath(target_abs, os.path.abspath(out))
    except ValueError:  # another drive (Windows)
        return Path(target_abs).as_uri()
    return quote(Path(relative).as_posix(), safe="/")


def _shown_path(path: Path, out: Path) -> str:
    """A path as a reader wants to see it: relative to OUT when that is short, else as given."""
    try:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(out))
    except ValueError:
        return str(path)
    return Path(relative).as_posix() if not relative.startswith("..") else str(path)


class _Thumbs:
    """JPEG thumbnails under OUT/report/thumbs/, named by the source's path, size and mtime (so made
    once per file version); thumbnails of files no longer shown are removed."""

    def __init__(self, out: Path) -> None:
        self.folder = out / REPORT_DIR / THUMBS_DIR
        self.used: set[str] = set()

    def get(self, source: Path | None, kind: str) -> Path | None:
        if source is None:
            return None
        try:
            st = source.stat()
        except OSError:
            return None
        side = THUMB_SIDE[kind]
        key = hashlib.sha1(f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()
        target = self.folder / f"{key[:20]}.jpg"
        self.used.add(target.name)
        if target.is_file():
            return target
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(source) as img:
                    if getattr(img, "n_frames", 1) > 1:
                        img.seek(0)
                    img.draft("RGB", (2 * side, 2 * side))  # JPEG: decode at a reduced scale, fast
                    img.load()
                    image = normalize_mode(ImageOps.exif_transpose(img)).convert("RGB")
            image.thumbnail((side, side), Image.Resampling.BICUBIC)
        except Exception as exc:  # noqa: BLE001 (any unreadable file is shown as missing, never a crash)
            logger.info("no thumbnail for %s: %s", source, exc)
            self.used.discard(target.name)
            return None
        save_image_atomic(image, target, format="JPEG")
        return target

    def prune(self) -> None:
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("*.jpg"):
            if path.name not in self.used:
                path.unlink(missing_ok=True)


def low_similarity_threshold(best: Sequence[float], threshold: float | None = None) -> float:
    """The best similarity below which a page is flagged: ``threshold`` when given, else
    max(ABSOLUTE_FLOOR, chapter median - MEDIAN_MARGIN)."""
    if threshold is not None:
        return float(threshold)
    if not best:
        return ABSOLUTE_FLOOR
    return max(ABSOLUTE_FLOOR, statistics.median(best) - MEDIAN_MARGIN)


def _figure(out: Path, path: Path | None, caption: str, what: str, thumbs: _Thumbs | None = None) -> str:
    shown = path
    if path is not None and thumbs is not None:
        shown = thumbs.get(path, "page")
    if path is None or shown is None or not path.is_file():
        where = f": {_shown_path(path, out)}" if path is not None else ""
        return (f'<figure><div class="missing">missing{_e(where)}<br>({_e(what)})</div>'
                f"<figcaption>{_e(caption)}</figcaption></figure>")
    return (f'<figure><a href="{_e(_link(path, out))}"><img src="{_e(_link(shown, out))}" alt="{_e(caption)}" '
            f'loading="lazy"></a><figcaption>{_e(caption)}</figcaption></figure>')


def _reference_card(out: Path, chapter: Chapter, j: int, thumbs: _Thumbs, detail: str) -> str:
    ref = chapter.references[j]
    thumb = thumbs.get(ref.path, "reference")
    title = f"{j + 1}. {ref.name}"
    if thumb is None:
        why = "file not found" if ref.path is None or not ref.path.is_file() else "unreadable"
        body = f'<div class="missing" style="width:150px;height:90px">missing ({_e(why)})</div>'
    else:
        body = (f'<a href="{_e(_link(ref.path, out))}"><img src="{_e(_link(thumb, out))}" alt="{_e(ref.name)}" '
                f'loading="lazy"></a>')
    return f'<div class="ref" data-reference="{j + 1}">{body}<div>{_e(title)}</div><div>{_e(detail)}</div></div>'


def _page_section(out: Path, chapter: Chapter, index: int, page: Page, thumbs: _Thumbs,
                  threshold: float) -> str:
    stem = page.stem
    parts = [f'<section class="page" id="page-{index + 1}" data-page="{_e(stem)}">', f"<h3>{_e(stem)}</h3>"]
    if page.best_similarity is not None:
        flag = (' <span class="flag">low: probably something no reference shows</span>'
                if page.best_similarity < threshold else "")
        parts.append(f"<p>best similarity {page.best_similarity:.3f}{flag}</p>")
    figures = [
        _figure(out, page.input_path, "input page", "the page file is not known or not found", thumbs),
        _figure(out, out / SHEETS_DIR / f"{stem}_canvas.png", "canvas (what the model saw)",
                "no retrieval sheet: page not finished, or run with --no-sheets"),
        _figure(out, out / SHEETS_DIR / f"{stem}_icp.png", "in-context result (W x H)",
                "page not finished, or run with --no-sheets"),
        _figure(out, out / f"{stem}.png", "hi-res result (1.5x)", "page not finished"),
    ]
    parts.append(f'<div class="figs">{"".join(figures)}</div>')
    if page.record_error is not None:
        parts.append(f'<p class="note">references: {_e(page.record_error)} ({_e(_shown_path(page.record_path, out))})</p>')
    else:
        usage = page.usage
        best: dict[int, float] = {}
        for c in page.cells:
            if c.similarity is not None:
                best[c.reference] = max(best.get(c.reference, c.similarity), c.similarity)
        cards = [
            _reference_card(out, chapter, j, thumbs,
                            f"{n} cell{'s' if n != 1 else ''}" + (f", best {best[j]:.3f}" if j in best else ""))
            for j, n in sorted(usage.items(), key=lambda item: (-item[1], item[0]))
        ]
        parts.append(f'<h4>References used ({len(usage)})</h4><div class="refs">{"".join(cards)}</div>')
        rows = "".join(
            f"<tr><td>{_e('' if c.query_patch is None else c.query_patch + 1)}</td>"
            f"<td>{_e('' if c.rank is None else c.rank + 1)}</td>"
            f"<td>{_e('' if c.cell is None else f'{c.cell[0]},{c.cell[1]}')}</td>"
            f"<td>{_e(f'{c.reference + 1}. {chapter.references[c.reference].name}')}</td>"
            f"<td>{_e(c.patch)}</td><td>{_e('' if c.similarity is None else f'{c.similarity:.3f}')}</td></tr>"
            for c in page.cells
        )
        parts.append("<details><summary>canvas cells</summary><table><tr><th>page patch</th><th>rank</th>"
                     "<th>cell (row,col)</th><th>reference</th><th>patch</th><th>similarity</th></tr>"
                     f"{rows}</table></details>")
    parts.append("</section>")
    return "".join(parts)


def write_report(out_dir: str | os.PathLike, *, pages: Sequence[str | os.PathLike] | None = None,
                 ref_files: Sequence[str | os.PathLike] | None = None, refs_dir: str | os.PathLike | None = None,
                 low_similarity: float | None = None, title: str = "ColorFlow chapter report") -> Path:
    """Write OUT/report.html (+ OUT/report/usage.png and thumbnails) and return its path.

    ``pages``: the chapter's page files in order (pages not finished are shown as missing; None:
    the pages found in OUT). ``ref_files``: the reference files in pool order (the `--refs` files);
    ``refs_dir``: their folder (names are shown relative to it; it is listed when ``ref_files`` is
    None). ``low_similarity``: flag pages whose best similarity is below this (None: below
    max(0.5, the chapter median - 0.1)). Every file is written atomically; only `OutputError` (a file
    cannot be written) is raised: missing or unreadable inputs are shown as missing.
    """
    out = Path(out_dir)
    chapter = read_chapter(out, pages=pages, ref_files=ref_files, refs_dir=refs_dir)
    thumbs = _Thumbs(out)
    recorded = [p for p in chapter.pages if p.record_error is None]
    best = [p.best_similarity for p in recorded if p.best_similarity is not None]
    threshold = low_similarity_threshold(best, low_similarity)
    matrix = chapter.usage_matrix()
    heatmap = draw_heatmap([row if page.record_error is None else None for row, page in zip(matrix, chapter.pages)],
                           [p.stem for p in chapter.pages], [r.name for r in chapter.references])
    heatmap_path = out / REPORT_DIR / HEATMAP_FILE
    save_image_atomic(heatmap, heatmap_path)

    finished = sum((out / f"{p.stem}.png").is_file() for p in chapter.pages)
    rule = (f"below {threshold:.3f}, the threshold given" if low_similarity is not None else
            f"below {threshold:.3f}: the chapter's median best similarity"
            + (f" ({statistics.median(best):.3f})" if best else "")
            + f" less {MEDIAN_MARGIN}, and never less than {ABSOLUTE_FLOOR}")
    low = [(i, p) for i, p in enumerate(chapter.pages) if p.best_similarity is not None and p.best_similarity < threshold]
    unused = chapter.unused()

    body = [f"<h1>{_e(title)}</h1>",
            (f'<p class="note">{len(chapter.pages)} page(s): {finished} finished, {len(recorded)} with a retrieval '
             f"record; {len(chapter.references)} reference(s). Written {_e(time.strftime('%Y-%m-%d %H:%M'))}.</p>"),
            "<nav>" + "".join(f'<a href="#page-{i + 1}">{_e(p.stem)}</a>' for i, p in enumerate(chapter.pages))
            + "</nav>"]
    body.append('<section id="usage"><h2>Reference usage</h2><p class="note">Rows are pages, columns references '
                "(numbered as below). A cell's colour is how many of the page's canvas cells came from that "
                "reference: white none, darkest the most any page took from one reference; a gray row is a page "
                "without a retrieval record.</p>"
                f'<a href="{_e(_link(heatmap_path, out))}"><img class="heatmap" src="{_e(_link(heatmap_path, out))}" '
                f'alt="pages x references usage heatmap" width="{heatmap.width}" height="{heatmap.height}"></a>'
                "</section>")
    counts = [sum(row[j] for row in matrix) for j in range(len(chapter.references))]
    pages_using = [sum(1 for row in matrix if row[j]) for j in range(len(chapter.references))]
    scope = f" of the {len(recorded)} page(s) with a record" if len(recorded) < len(chapter.pages) else ""
    if unused:
        cards = "".join(_reference_card(out, chapter, j, thumbs, "unused") for j in unused)
        unused_html = (f'<p class="note">{len(unused)} reference(s) no page{_e(scope)} took a patch from: candidates '
                       f"to drop (fewer references: faster embedding, fewer distractors).</p>"
                       f'<div class="refs">{cards}</div>')
    else:
        unused_html = f'<p class="note">Every reference was used by at least one page{_e(scope)}.</p>'
    body.append(f'<section id="unused"><h2>Unused references</h2>{unused_html}</section>')
    explanation = (f"A page's best similarity is the highest cosine similarity between one of its 4 page patches "
                   f"and any reference patch (image-encoder embeddings). A page is listed when it is {rule}: "
                   f"relative to the chapter because the scale depends on the encoder and the drawing style, with a "
                   f"floor because a whole chapter can be poorly covered. A low page probably shows a character or "
                   f"scene no reference covers: add a reference for it, or pin one (--refs-map).")
    if low:
        items = "".join(f'<li><a href="#page-{i + 1}">{_e(p.stem)}</a>: {p.best_similarity:.3f}</li>' for i, p in low)
        low_html = f"<ul>{items}</ul>"
    else:
        low_html = '<p class="note">No page is below the threshold.</p>' if best else \
            '<p class="note">No page has a retrieval record yet.</p>'
    body.append(f'<section id="low-similarity"><h2>Pages with low similarity</h2><p class="note">{_e(explanation)}'
                f"</p>{low_html}</section>")
    ref_cards = "".join(
        _reference_card(out, chapter, j, thumbs, f"{counts[j]} cell(s) on {pages_using[j]} page(s)")
        for j in range(len(chapter.references)))
    body.append(f'<section id="references"><h2>References</h2><div class="refs">{ref_cards}</div></section>')
    sections = "".join(_page_section(out, chapter, i, p, thumbs, threshold) for i, p in enumerate(chapter.pages))
    body.append(f'<section id="pages"><h2>Pages</h2>{sections}</section>')

    document = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    target = out / REPORT_FILE
    write_bytes_atomic(target, document.encode("utf-8"))
    try:
        thumbs.prune()
    except OSError as exc:  # stale thumbnails are harmless
        logger.info("could not remove old thumbnails: %s", exc)
    return target


