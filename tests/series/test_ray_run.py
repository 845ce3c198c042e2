"""`colorize-series` on a local Ray instance (2 CPUs, 2 actors, tiny random-weight models): the pages of a
single-process CLI run, a killed actor, a resumed run that does nothing, a bad page, a file:// series.

One Ray instance serves the whole module (starting Ray costs seconds); each run takes well under a
minute on two CPU cores.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="colorize-series needs Ray: pip install -r requirements-cluster.txt")

from colorflow_core import chapter as layout  # noqa: E402
from colorflow_core import cli
from colorflow_core.engine import ColorFlow  # noqa: E402
from colorflow_core.series import pools, ray_run  # noqa: E402
from colorflow_core.testing import write_release  # noqa: E402
from tests.series.support import CHAPTERS, PAGE_NAMES, model_args, pixels, tree, write_series  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]

ACTOR_TITLE = b"MapBatches(PageWorker)"  # in the process title Ray gives each colorize actor


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; colorize-series joins it instead of starting one."""
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return write_series(tmp_path_factory.mktemp("series"))


def _series(release: Path, series: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["colorize-series", str(series), "--out", str(out), "--ray", "local", "--workers", "2",
            *model_args(release), *extra]


@pytest.fixture(scope="module")
def series_run(local_ray, release, series, tmp_path_factory):
    """One series run (2 chapters x 3 pages, 2 actors) and its stderr."""
    out = tmp_path_factory.mktemp("series_out")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(_series(release, series, out))
    return code, out, err.getvalue()


def test_series_equals_the_single_process_cli(series_run, release, series, tmp_path) -> None:
    code, out, err = series_run
    assert code == 0, err
    assert "done: 6 page(s) written, 0 skipped" in err
    for chapter in CHAPTERS:
        assert f"{chapter}      3      3        0        0" in err  # the per-chapter summary row
        single = tmp_path / chapter
        assert cli.main(["colorize", str(series / chapter / "pages"), "--refs", str(series / chapter / "refs"),
                         "--out", str(single), *model_args(release)]) == 0
        # the same tree: pages, sheets, retrieval records, and the pool cache (same content key)
        assert tree(out / chapter) == tree(single)
        assert len(list((out / chapter / layout.POOL_CACHE_DIR).glob("pool-*.safetensors"))) == 1  # embedded once
        for name in tree(single):
            if name.endswith(".png"):
                diff = np.abs(pixels(out / chapter / name) - pixels(single / name))
                assert diff.max() <= 1, name  # batches of other sizes: single 8-bit levels at most
            elif name.startswith("retrieval/"):  # the page's retrieval record
                ours, theirs = (json.loads((folder / name).read_text()) for folder in (out / chapter, single))
                assert ours.keys() == theirs.keys() and ours["page"] == theirs["page"], name
                # the same patches retrieved (similarities may differ in their last rounded digit)
                assert [{k: v for k, v in c.items() if k != "similarity"} for c in ours["cells"]] == \
                    [{k: v for k, v in c.items() if k != "similarity"} for c in theirs["cells"]], name
    assert not [p for p in out.rglob("*.tmp")]


def test_rerun_after_completion_loads_no_model_and_writes_nothing(series_run, release, series, monkeypatch,
                                                                   capsys) -> None:
    code, out, _ = series_run
    assert code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def refuse(*_args, **_kwargs):
        raise AssertionError("nothing may load or run when every page is done")

    monkeypatch.setattr(ColorFlow, "load", refuse)
    monkeypatch.setattr(pools, "embed_references", refuse)
    monkeypatch.setattr(ray_run, "run_pages", refuse)
    assert cli.main(_series(release, series, out)) == 0
    err = capsys.readouterr().err
    assert "chapter ch1: 3 of 3 pages already done" in err and "done: 0 page(s) written, 6 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _actor_pids() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if ACTOR_TITLE in title:
                found.append(int(entry))
    return found


def test_a_killed_actor_and_a_bad_page_on_a_file_uri_series(local_ray, release, series, tmp_path, capsys) -> None:
    """One run (Ray start-up is the slow part) checks three things: an actor killed mid-run is replaced
    and its pages retried, each page written once, no temporary file left; a bad page in chapter 2
    fails alone, named, and every other page completes (exit 2); a series given as file:// URIs."""
    copy = tmp_path / "series"
    shutil.copytree(series, copy)
    (copy / "ch2" / "pages" / "p2.png").write_bytes((copy / "ch2" / "pages" / "p2.png").read_bytes()[:60])  # cut off
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor_after_the_first_page() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(out.glob("*/p*.png")):
            time.sleep(0.05)
        pids = _actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)  # from outside, as the OOM killer or a lost node would
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one_actor_after_the_first_page, daemon=True)
    killer.start()
    # one page per actor call, 3 steps: the other pages are still in flight when the first one lands
    code = cli.main(_series(release, copy.as_uri(), out.as_uri(), "--batch-size", "1", "--steps", "3"))
    killer.join(timeout=5)
    err = capsys.readouterr().err
    assert killed, "no colorize actor was found to kill"
    assert code == cli.EXIT_ERROR, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 page(s) failed: ch2/p2.png (5 written, 0 already done"), last
    assert "failed: chapter ch2: page p2.png:" in err and "p2.png" in err.split("failed: chapter ch2: page p2.png:")[1]
    for chapter in CHAPTERS:
        expected = [n for n in PAGE_NAMES if not (chapter == "ch2" and n == "p2.png")]
        assert sorted(p.name for p in (out / chapter).glob("*.png")) == sorted(expected)
        assert sorted(p.name for p in (out / chapter / "sheets").glob("*_canvas.png")) == sorted(
            f"{Path(n).stem}_canvas.png" for n in expected)
        assert len(list((out / chapter / layout.POOL_CACHE_DIR).glob("pool-*.safetensors"))) == 1  # the CLI's cache
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
