"""The chapter report in a real browser: Debian's chromium driven by Playwright, offline, from file://.

Skips (with the reason) when Playwright or a chromium executable is missing; CI installs both
(`pip install playwright`, `apt-get install -y chromium`), so there it runs. Playwright's own browser
download is never used: the system chromium is launched through ``executable_path``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from colorflow_core.report import write_report
from tests.report.chapter import PAGES, build_chapter

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    given = os.environ.get("COLORFLOW_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright); the structure tests still ran")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install -y chromium, or set COLORFLOW_CHROMIUM)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def test_report_loads_in_chromium_without_broken_images(tmp_path, browser):
    out, page_files, ref_files, refs_dir = build_chapter(tmp_path)
    report = write_report(out, pages=page_files, ref_files=ref_files, refs_dir=refs_dir)
    page = browser.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(report.resolve().as_uri(), wait_until="load")
    # lazy images load when scrolled to: load them all now, then wait until every one is done
    page.evaluate("() => { for (const img of document.images) img.loading = 'eager'; }")
    page.wait_for_function("() => Array.from(document.images).every(img => img.complete)", timeout=20_000)
    images = page.evaluate(
        "() => Array.from(document.images).map(img => [img.getAttribute('src'), img.naturalWidth])")
    assert len(images) >= 1 + 4 + 3  # heatmap, references, pages
    broken = [src for src, width in images if width <= 0]
    assert not broken, f"broken images: {broken}"
    assert not failed and not errors
    assert page.locator("h1").inner_text() == "ColorFlow chapter report"
    h2 = page.locator("h2").all_inner_texts()
    for heading in ("Reference usage", "Unused references", "Pages with low similarity", "References", "Pages"):
        assert heading in h2
    assert page.locator("section.page h3").all_inner_texts() == PAGES
    heatmap = page.locator("img.heatmap")
    assert heatmap.evaluate("img => img.naturalWidth") > 0
    assert "a&b <c>.png" in page.locator("#unused").inner_text()
    assert "p3" in page.locator("#low-similarity").inner_text()
    page.close()
