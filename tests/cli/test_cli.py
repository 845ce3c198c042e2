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
from colorflow_core.errors import InputError
from colorflow_core.retrieve.encoders import CLIPImageEncoder
from colorflow_core.retrieve.references import PATCHES_PER_REFERENCE, QUERY_PATCH_KINDS
from colorflow_core.runtime.performance import SpeedOptions
from colorflow_core.testing import write_release
from tests.support.parity import REPO_ROOT

PAGE_NAMES = ["p1.png", "p2.png", "p10.png"]
REFERENCES = 2


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
    for k in range(REFERENCES):
        Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(refs / f"ref{k}.png")
    return pages, refs


def _args(release: Path, pages: Path | str, refs: Path | str, out: Path, *extra: str) -> list[str]:
    return ["colorize", str(pages), "--refs", str(refs), "--out", str(out), "--release", str(release),
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


def test_colorize_writes_pages_and_sheets_then_resumes(release, inputs, tmp_path, capsys, monkeypatch) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    embedded = _count_embedded_images(monkeypatch)
    assert cli.main(_args(release, pages, refs, out)) == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err and "done: 3 page(s) written, 0 skipped" in err
    for name in PAGE_NAMES:
        stem = Path(name).stem
        page, sheet = out / f"{stem}.png", out / "sheets" / f"{stem}_canvas.png"
        assert Image.open(page).size == (96, 96)  # 1.5 x 64
        assert Image.open(sheet).size == (128, 128)  # the 2W x 2H retrieval canvas
    assert not list(out.rglob("*.tmp"))
    assert list((out / cli.POOL_CACHE_DIR).glob("*.safetensors"))
    assert sum(embedded) == REFERENCES * PATCHES_PER_REFERENCE + len(PAGE_NAMES) * len(QUERY_PATCH_KINDS)
    first = {name: _pixels(out / f"{Path(name).stem}.png") for name in PAGE_NAMES}
    assert np.abs(first["p1.png"] - first["p2.png"]).max() > 0

    # everything done: a re-run loads nothing (a bogus release folder is never looked at)
    assert cli.main(_args(tmp_path / "no-such-release", pages, refs, out)) == 0
    assert "3 of 3 pages already done" in capsys.readouterr().err

    # a lost page is redone with its chapter seed (seed + its index), identical to the first run, and
    # the references come from the pool cache: only the page's own patches are embedded
    (out / "p2.png").unlink()
    mtime = (out / "p10.png").stat().st_mtime_ns
    embedded.clear()
    assert cli.main(_args(release, pages, refs, out)) == 0
    assert "done: 1 page(s) written, 2 skipped" in capsys.readouterr().err
    assert sum(embedded) == len(QUERY_PATCH_KINDS)
    # (alone instead of in a batch of 3: float noise ≤ 1e-4 may flip an 8-bit rounding here and there)
    diff = np.abs(_pixels(out / "p2.png") - first["p2.png"])
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert (out / "p10.png").stat().st_mtime_ns == mtime


def _count_embedded_images(monkeypatch) -> list[int]:
    """Number of images of each image-encoder call (references: 5 patches each, pages: 4)."""
    counts: list[int] = []
    real = CLIPImageEncoder.embed

    def counting(self, images):
        counts.append(len(images))
        return real(self, images)

    monkeypatch.setattr(CLIPImageEncoder, "embed", counting)
    return counts


def test_options_reach_the_engine(release, inputs, tmp_path, capsys, monkeypatch) -> None:
    pages, refs = inputs
    out, cache = tmp_path / "out", tmp_path / "cache"
    seen: dict[str, object] = {}
    real_load, real_prepare, real_colorize = ColorFlow.load, ColorFlow.prepare, ColorFlow.colorize
    real_upscale = ColorFlow.upscale

    def load(*args, **kwargs):
        seen["load"] = kwargs
        return real_load(*args, **kwargs)

    def prepare(self, *args, **kwargs):
        contexts = real_prepare(self, *args, **kwargs)
        seen.setdefault("top_k", []).extend(ctx.retrieval.top_k_indices.shape[1] for ctx in contexts)
        seen.setdefault("generator_device", []).append(kwargs["generator_device"])
        return contexts

    def upscale(self, *args, **kwargs):
        seen.setdefault("generator_device", []).append(kwargs["generator_device"])
        return real_upscale(self, *args, **kwargs)

    def colorize(self, contexts, settings, **kwargs):
        seen.setdefault("colorize", []).append(settings)
        return real_colorize(self, contexts, settings, **kwargs)

    monkeypatch.setattr(ColorFlow, "load", load)
    monkeypatch.setattr(ColorFlow, "prepare", prepare)
    monkeypatch.setattr(ColorFlow, "colorize", colorize)
    monkeypatch.setattr(ColorFlow, "upscale", upscale)
    extra = ["--cfg", "3", "--guider-strength", "0.5", "--top-k", "1", "--seed", "5", "--offload", "none",
             "--no-sheets", "--pool-cache", str(cache), "--batch-size", "2", "--generator-device", "cpu"]
    assert cli.main(_args(release, pages, refs, out, *extra)) == 0
    assert seen["load"]["speed"] == SpeedOptions(offload="none", compile=False)
    assert [s.seed for s in seen["colorize"]] == [5, 7]  # runs of 2 pages: pages 0-1, then page 2
    for settings in seen["colorize"]:
        assert (settings.cfg, settings.guider_strength, settings.top_k, settings.batch_size) == (3, 0.5, 1, 2)
        assert settings.generator_device == "cpu"
    assert seen["generator_device"] == ["cpu"] * 4  # prepare and upscale once per run (ColorFlow.run)
    assert seen["top_k"] == [1, 1, 1]  # one reference patch retrieved per page patch
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PAGE_NAMES)
    assert not (out / "sheets").exists() and not (out / cli.POOL_CACHE_DIR).exists()
    assert list(cache.glob("*.safetensors"))


@pytest.mark.parametrize("extra, speed", [
    ([], SpeedOptions()),
    (["--compile", "--offload", "none"], SpeedOptions(offload="none", compile=True)),
    (["--offload", "sequential"], SpeedOptions(offload="sequential")),
])
def test_speed_options(extra, speed, release, inputs, tmp_path, capsys, monkeypatch) -> None:
    pages, refs = inputs
    seen = {}

    def load(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr(ColorFlow, "load", load)
    assert cli.main(_args(release, pages, refs, tmp_path / "out", *extra)) == cli.EXIT_ERROR
    assert seen["speed"] == speed
    assert "error: stop here" in capsys.readouterr().err


def test_generator_device_option(release, inputs, tmp_path, capsys, monkeypatch) -> None:
    """--generator-device: cpu by default (and in --help); cuda without a GPU (forced here, so the test
    means the same on a GPU machine) is one clear error, exit 2, before anything loads."""
    pages, refs = inputs
    parser = cli.build_parser()
    assert parser.parse_args(["colorize", "p", "--refs", "r", "--out", "o"]).generator_device == "cpu"
    help_text = " ".join(parser._subparsers._group_actions[0].choices["colorize"].format_help().split())
    assert "--generator-device {cpu,cuda}" in help_text and "default cpu" in help_text

    def load(*args, **kwargs):
        raise AssertionError("nothing may load when the generator device is unusable")

    monkeypatch.setattr(ColorFlow, "load", load)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "out"
    assert cli.main(_args(release, pages, refs, out, "--generator-device", "cuda")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "error: --generator-device 'cuda' needs an NVIDIA GPU" in err and "use 'cpu'" in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(_args(release, pages, refs, out, "--generator-device", "mps"))
    assert exc.value.code == 2 and "invalid choice: 'mps'" in capsys.readouterr().err


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
    # one page per run: the second run's GSRP is interrupted, after page 1 was written
    assert cli.main(_args(release, pages, refs, out, "--batch-size", "1")) == cli.EXIT_INTERRUPTED
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
    ("bad_steps", "--steps"),
    ("bad_guidance", "--cfg"),
    ("bad_guider_scale", "--guider-strength"),
    ("bad_top_k", "--top-k"),
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
    elif problem == "bad_guidance":
        extra = ["--cfg", "nan"]
    elif problem == "bad_guider_scale":
        extra = ["--guider-strength", "-1"]
    elif problem == "bad_top_k":
        extra = ["--top-k", "4"]
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


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = cli.build_parser()
    colorize = next(a for a in parser._subparsers._group_actions[0].choices.values())
    for action in colorize._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help text"
    help_text = " ".join(colorize.format_help().split())
    for phrase in ("denoising steps (1-200, default 10)", "uses seed + i", "default 7.5 for screenstyle, 4.5",
                   "(1-3, default 3)", "default OUT/.colorflow/pool_cache"):
        assert phrase in help_text


def test_sd9_release_runs_through_the_cli(inputs, tmp_path, capsys) -> None:
    """A release whose GraySD/ guider has 9 conditioning channels colours every page (before the
    9-channel conditioning existed, it loaded and then failed at the first denoising step)."""
    release9 = write_release(tmp_path / "release_sd9", guider_channels=9)
    pages, refs = inputs
    out = tmp_path / "out"
    assert cli.main(_args(release9, pages, refs, out)) == 0
    assert "done: 3 page(s) written, 0 skipped" in capsys.readouterr().err
    for name in PAGE_NAMES:
        assert Image.open(out / f"{Path(name).stem}.png").size == (96, 96)


def test_a_guider_of_another_channel_count_is_refused_before_any_page(inputs, tmp_path, capsys) -> None:
    release = write_release(tmp_path / "release_sd7")
    config = release / "GraySD" / "config.json"
    config.write_text(config.read_text().replace('"conditioning_channels": 5', '"conditioning_channels": 7'))
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"error: {config}: " in err and "conditioning_channels 7" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.png"))
