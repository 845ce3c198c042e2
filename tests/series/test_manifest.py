"""Series manifests (folder layout, JSON, CSV) and their errors; storage rules; the command without Ray.

No Ray instance is started here (the Ray runs are in test_ray_run.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from colorflow_core import chapter as layout
from colorflow_core import cli
from colorflow_core.errors import InputError
from colorflow_core.series import storage
from colorflow_core.series.manifest import Chapter, read_series
from tests.series.support import write_series


def _read(source, out="OUT") -> tuple[list[Chapter], list[str]]:
    warnings: list[str] = []
    return read_series(str(source), str(out), warnings.append), warnings


def test_folder_layout_lists_chapters_in_natural_order(tmp_path) -> None:
    series = write_series(tmp_path / "s", chapters=["ch10", "ch2", "ch1"], pages=["p1.png"])
    (series / "notes").mkdir()  # no pages/ nor refs/: skipped with a warning
    (series / ".hidden").mkdir()
    chapters, warnings = _read(series, tmp_path / "out")
    assert [c.name for c in chapters] == ["ch1", "ch2", "ch10"]
    assert chapters[0] == Chapter("ch1", (str(series / "ch1" / "pages"),), str(series / "ch1" / "refs"),
                                  str(tmp_path / "out" / "ch1"))
    assert len(warnings) == 1 and "notes" in warnings[0] and ".hidden" not in warnings[0]


def test_folder_layout_errors(tmp_path) -> None:
    series = write_series(tmp_path / "s", chapters=["ch1"], pages=["p1.png"])
    (series / "ch2" / "pages").mkdir(parents=True)
    with pytest.raises(InputError, match=r"ch2 has pages/ but no refs/"):
        _read(series)
    with pytest.raises(InputError, match="no chapter folders in .*it is one chapter: colour it with colorize"):
        _read(series / "ch1")
    with pytest.raises(InputError, match="series folder or manifest not found"):
        _read(tmp_path / "missing")
    (tmp_path / "series.txt").write_text("x")
    with pytest.raises(InputError, match=r"series\.txt: a series is a folder of chapter folders"):
        _read(tmp_path / "series.txt")


def test_json_manifest_paths_are_relative_to_it(tmp_path) -> None:
    manifest = tmp_path / "m" / "series.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"chapters": [
        {"chapter": "a", "pages": "a/pages", "refs": "a/refs"},
        {"chapter": "b", "pages": ["b/p1.png", "/abs/p2.png"], "refs": "/abs/refs", "out": "colour/b"},
        {"chapter": "s3", "pages": "s3://bucket/s3/pages", "refs": "s3://bucket/s3/refs"}]}))
    chapters, _ = _read(manifest, "/o")
    base = manifest.parent
    assert chapters == [
        Chapter("a", (str(base / "a/pages"),), str(base / "a/refs"), "/o/a"),
        Chapter("b", (str(base / "b/p1.png"), "/abs/p2.png"), "/abs/refs", str(base / "colour/b")),
        Chapter("s3", ("s3://bucket/s3/pages",), "s3://bucket/s3/refs", "/o/s3")]
    manifest.write_text(json.dumps([{"chapter": "a", "pages": "a", "refs": "r"}]))  # a bare list works too
    assert [c.name for c in _read(manifest)[0]] == ["a"]


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ('{"chapter": []}', r"expected \{\"chapters\": \[...\]\} or a list of chapters; unknown key\(s\) 'chapter'"),
    ('[{"chapter": "a", "pages": "p", "refs": "r", "page": "x"}]', r"chapter 1 \('a'\): unknown key\(s\) 'page'"),
    ('[{"chapter": "a", "refs": "r"}]', r"chapter 1 \('a'\): 'pages' is missing or empty"),
    ('[{"chapter": "a", "pages": [], "refs": "r"}]', r"chapter 1 \('a'\): 'pages' must be a folder or file"),
    ('[{"chapter": "../x", "pages": "p", "refs": "r"}]', r"chapter name '../x' must be one folder name"),
    ('[{"chapter": "a", "pages": "p", "refs": "r"}, {"chapter": "b", "pages": "q", "refs": "r", "out": "OUT/a"}]',
     "chapters 'a' and 'b' would write the same output folder"),
    ('[{"chapter": "a", "pages": "p", "refs": "r"}, {"chapter": "a", "pages": "q", "refs": "other"}]',
     r"chapter 2 \('a'\): chapter 'a' appears again with other refs or out"),
    ("[]", "lists no chapters"),
])
def test_json_manifest_errors_name_the_entry(tmp_path, content, message) -> None:
    manifest = tmp_path / "series.json"
    manifest.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        _read(manifest, tmp_path / "OUT")
    assert str(manifest) in str(info.value)


def test_csv_manifest_rows_and_errors(tmp_path) -> None:
    manifest = tmp_path / "series.csv"
    manifest.write_text("chapter,pages,refs,out\nch1,ch1/pages,refs,\nch1,extra/p9.png,refs,\n\nch2,ch2/pages,refs,x/2\n")
    chapters, _ = _read(manifest, "/o")
    assert chapters == [Chapter("ch1", (str(tmp_path / "ch1/pages"), str(tmp_path / "extra/p9.png")),
                                str(tmp_path / "refs"), "/o/ch1"),
                        Chapter("ch2", (str(tmp_path / "ch2/pages"),), str(tmp_path / "refs"), str(tmp_path / "x/2"))]
    for content, message in [
        ("chapter,page,refs\n", r"row 1: the header must name the columns chapter, pages, refs"),
        ("chapter,pages,refs\nch1,p\n", r"row 2: 2 column\(s\), the header has 3"),
        ("chapter,pages,refs\nch1,,r\n", r"row 2: 'pages' is missing or empty"),
        ("chapter,pages,refs\nch1,p,r\nch1,q,other\n", r"row 3: chapter 'ch1' appears again with other refs"),
        ("", "is empty: expected a header row"),
    ]:
        manifest.write_text(content)
        with pytest.raises(InputError, match=message):
            _read(manifest)


def test_page_done_is_the_clis_rule(tmp_path) -> None:
    png, empty, foreign, folder = (tmp_path / n for n in ("a.png", "b.png", "c.png", "d.png"))
    Image.new("RGB", (4, 4)).save(png)
    empty.write_bytes(b"")
    foreign.write_bytes(b"JFIF not a png")
    folder.mkdir()
    for path in (png, empty, foreign, folder, tmp_path / "missing.png"):
        assert storage.page_done(str(path)) == layout.page_done(path) == storage.page_done(path.as_uri()), path


def test_uri_writes_are_atomic_and_stale_temporaries_swept(tmp_path) -> None:
    target = (tmp_path / "out" / "p1.png").as_uri()
    storage.write_png(Image.new("RGB", (4, 4), (1, 2, 3)), target)
    storage.write_bytes(b"{}\n", (tmp_path / "out" / "r" / "p1.json").as_uri())
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["p1.json", "p1.png", "r"]
    assert Image.open(tmp_path / "out" / "p1.png").getpixel((0, 0)) == (1, 2, 3)
    stale = tmp_path / "out" / ".p2.png.0123456789ab.tmp"  # what a killed writer leaves
    stale.write_bytes(b"half")
    (tmp_path / "out" / "keep.tmp").write_bytes(b"not ours")
    assert storage.sweep_temp_files((tmp_path / "out").as_uri()) == 1
    assert not stale.exists() and (tmp_path / "out" / "keep.tmp").exists()
    stale.write_bytes(b"half")
    assert storage.sweep_temp_files(str(tmp_path / "out")) == 1


def test_uri_pages_are_collected_like_local_ones(tmp_path, capsys) -> None:
    series = write_series(tmp_path / "s", chapters=["ch1"], pages=["p10.png", "p2.png", "p1.png"])
    (series / "ch1" / "pages" / "notes.txt").write_text("x")
    local = storage.collect_pages([str(series / "ch1" / "pages")], print)
    uri = storage.collect_pages([(series / "ch1" / "pages").as_uri()], lambda m: None)
    assert [storage.name(p) for p in uri] == [storage.name(p) for p in local] == ["p1.png", "p2.png", "p10.png"]
    assert uri[0] == (series / "ch1" / "pages" / "p1.png").as_uri()
    image = storage.read_image(uri[0])
    assert image.size == Image.open(local[0]).size
    (series / "ch1" / "pages" / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=r"file://.*p2\.png is not a readable image"):
        storage.read_image(uri[1])


def test_without_ray_the_command_says_what_to_install(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    series = write_series(tmp_path / "series")
    assert cli.main(["colorize-series", str(series), "--out", str(tmp_path / "o")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: colorize-series needs Ray, which is not installed: pip install -r requirements-cluster.txt "
                   '(or: pip install "ray[data]>=2.60")']


def test_bad_options_and_series_are_one_error_line(capsys, tmp_path) -> None:
    assert cli.main(["colorize-series", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --workers must be at least 1, got 0"
    assert cli.main(["colorize-series", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: series folder or manifest not found")


def test_requirements_cluster_names_ray_data_with_its_floor() -> None:
    text = (Path(__file__).resolve().parents[2] / "requirements-cluster.txt").read_text()
    assert "ray[data]>=2.60.0" in text
