"""`python -m colorflow_core colorize` on a tiny random release: outputs, order, resume, errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorflow_core import cli
from colorflow_core.engine import ColorFlow
from colorflow_core.synthetic.fusion import write_multiresnet
from colorflow_core.synthetic.sd import model_config, write_sd_release
from conftest import REPO_ROOT

PAGE_NAMES = ["p1.png", "p2.png", "p10.png"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release")
    write_sd_release(root, "tiny")
    vae_channels = model_config("vae", "tiny")["block_out_channels"]
    write_multiresnet(root / "GraySD", (vae_channels[0], *vae_channels))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    pages, refs = folder / "pages", folder / "refs"
    pages.mkdir()
    refs.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate(PAGE_NAMES):  # distinct gray pages (odd sizes: they get fitted)
        Image.fromarray(rng.integers(0, 256, (70 + k, 60), dtype=np.uint8)).save(pages / name)
    (pages / "notes.txt").write_text("not a page")
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(refs / f"ref{k}.png")
    return pages, refs


def _args(release: Path, pages: Path | str, refs: Path | str, out: Path, *extra: str) -> list[str]:
    return ["colorize", str(pages), "--refs", str(refs), "--out", str(out), "--models", str(release),
            "--base", str(release / "base"), "--size", "64x64", "--steps", "1", "--no-screentone",
            "--device", "cpu", *extra]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_pages_are_collected_in_natural_order_and_non_images_skipped(inputs, capsys) -> None:
    pages, _ = inputs
    found = cli.collect_pages([str(pages)])
    assert [p.name for p in found] == PAGE_NAMES
    assert "notes.txt" in capsys.readouterr().err
    # explicit files in any order end up in the same chapter order
    assert cli.collect_pages([str(pages / "p10.png"), str(pages / "p2.png"), str(pages / "p1.png")]) == found


def test_colorize_writes_pages_and_sheets_then_resumes(release, inputs, tmp_path, capsys) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    assert cli.main(_args(release, pages, refs, out)) == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err
    for name in PAGE_NAMES:
        stem = Path(name).stem
        page, sheet = out / f"{stem}.png", out / "sheets" / f"{stem}_canvas.png"
        assert Image.open(page).size == (96, 96)  # 1.5 x 64
        assert Image.open(sheet).size == (128, 128)  # the 2W x 2H retrieval canvas
    assert not list(out.rglob("*.tmp"))
    first = {name: _pixels(out / f"{Path(name).stem}.png") for name in PAGE_NAMES}
    assert np.abs(first["p1.png"] - first["p2.png"]).max() > 0

    # everything done: a re-run loads nothing (a bogus release folder is never looked at)
    assert cli.main(_args(tmp_path / "no-such-release", pages, refs, out)) == 0
    assert "3 of 3 pages already done" in capsys.readouterr().err

    # a lost page is redone with its chapter seed (seed + its index), identical to the first run
    (out / "p2.png").unlink()
    mtime = (out / "p10.png").stat().st_mtime_ns
    assert cli.main(_args(release, pages, refs, out)) == 0
    # (alone instead of in a batch of 3: float noise ≤ 1e-4 may flip an 8-bit rounding here and there)
    diff = np.abs(_pixels(out / "p2.png") - first["p2.png"])
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert (out / "p10.png").stat().st_mtime_ns == mtime


def test_interrupt_keeps_finished_pages(release, inputs, tmp_path, capsys, monkeypatch) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    real_upscale = ColorFlow.upscale
    calls = []

    def upscale_then_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_upscale(self, *args, **kwargs)

    monkeypatch.setattr(ColorFlow, "upscale", upscale_then_stop)
    assert cli.main(_args(release, pages, refs, out)) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted: 1 of 3" in err and "Traceback" not in err
    assert (out / "p1.png").is_file() and not (out / "p2.png").exists()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("problem, expected", [
    ("missing_refs", "folder not found"),
    ("empty_refs", "no image files"),
    ("no_pages", "no page images"),
    ("missing_models", "release files missing"),
    ("bad_size", "size"),
    ("bad_steps", "steps"),
])
def test_errors_are_one_line_and_exit_2(problem, expected, release, inputs, tmp_path, capsys) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    extra: list[str] = []
    models = release
    if problem == "missing_refs":
        refs = tmp_path / "nowhere"
    elif problem == "empty_refs":
        refs = tmp_path / "empty"
        refs.mkdir()
    elif problem == "no_pages":
        pages = tmp_path / "only_text"
        pages.mkdir()
        (pages / "readme.txt").write_text("x")
    elif problem == "missing_models":
        models = tmp_path / "empty_release"
        models.mkdir()
    elif problem == "bad_size":
        extra = ["--size", "100x100"]
    elif problem == "bad_steps":
        extra = ["--steps", "0"]
    assert cli.main(_args(models, pages, refs, out, *extra)) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert ("\n" + err).count("\nerror: ") == 1  # one error message (a file list may follow on its lines)
    assert not list(out.glob("*.png")) if out.exists() else True


def test_missing_model_files_are_named_together(release, inputs, tmp_path, capsys) -> None:
    pages, refs = inputs
    models = tmp_path / "partial"
    (models / "GraySD").mkdir(parents=True)
    (models / "GraySD" / "config.json").write_text((release / "GraySD" / "config.json").read_text())
    assert cli.main(_args(models, pages, refs, tmp_path / "out")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    for missing in ("GraySD/unet_lora.bin", "MultiResNetModel.bin", "image_encoder/config.json"):
        assert missing in err
    assert "GraySD/config.json" not in err.replace("GraySD/config.json (", "")  # present: not listed


def test_module_entry_point_exits_2_without_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "colorflow_core", "colorize", str(tmp_path / "nothing.png"), "--refs",
         str(tmp_path), "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
