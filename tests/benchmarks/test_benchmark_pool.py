"""benchmarks/pool.py as a user runs it, at a tiny size: one fresh subprocess per pool size, a table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.pool import COLUMNS, main


def test_tiny_pool_benchmark_reports_every_size(tmp_path: Path) -> None:
    report = main(["--sizes", "2,5", "--pages", "2", "--size", "64x96", "--out", str(tmp_path / "out"),
                   "--workdir", str(tmp_path / "work")])
    rows = report["rows"]
    assert [row["references"] for row in rows] == [2, 5]
    for row in rows:
        assert row["embed_s"] > 0 and row["page_ms"] > 0 and row["reload_s"] >= 0
        assert row["peak_rss_mb"] >= row["base_rss_mb"] > 0
    assert rows[1]["old_patches_mb"] > rows[0]["old_patches_mb"]
    assert report["page_ms_ratio_largest_to_smallest"] > 0
    header = report["table"].splitlines()[0]
    assert all(title in header for _, title in COLUMNS)
    [written] = (tmp_path / "out").glob("pool-64x96-*.json")
    assert json.loads(written.read_text())["rows"] == rows
    assert len(list((tmp_path / "work").glob("refs-*/ref*.png"))) == 5, "the files are written once, for the largest"


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        main(["--sizes", "ten", "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--sizes"):
        main(["--sizes", "0", "--workdir", str(tmp_path)])
