"""benchmarks/chapter.py as a user runs it: both modes timed in one run, report + plot written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.chapter import CPU_NEEDS_A_SCALE, main  # noqa: E402


def test_a_tiny_chapter_reports_both_modes_and_their_ratio(tmp_path: Path) -> None:
    report = main(["--scale", "tiny", "--pages", "2", "--refs", "2", "--size", "128x192", "--steps", "1",
                   "--warmup", "0", "--device", "cpu", "--no-screentone",
                   "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")])
    for mode in ("baseline", "ours"):
        result = report["modes"][mode]
        assert result["per_page_s"] > 0 and result["pages_per_minute"] > 0
        assert set(result["stages_s"]) == {"retrieval", "icp", "gsrp"} and result["peak_memory_bytes"] > 0
    assert report["speedup_pages_per_minute"] > 0
    assert report["max_level_difference"]["canvases"] <= 1  # same seeds, same pages
    [written] = (tmp_path / "out").glob("chapter-cpu-tiny-*.json")
    assert json.loads(written.read_text())["config"]["pages"] == 2
    assert written.with_suffix(".png").is_file()


def test_a_cpu_run_must_choose_its_setting(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--device", "cpu", "--out", str(tmp_path), "--workdir", str(tmp_path)])
    assert stopped.value.code == CPU_NEEDS_A_SCALE
    assert not any(tmp_path.iterdir())  # nothing written before the refusal
