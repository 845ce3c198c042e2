"""Bad inputs reach the user as one clear message naming the file (issue #11, core and CLI part).

Multi-frame files, dangling symlinks, tiny or corrupt pages, decompression bombs, malicious pickles,
LoRA files with foreign keys, and NaN results (never written as black pages).
"""
from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core import cli
from colorflow_core.colorize.lora import infer_lora_rank
from colorflow_core.engine import ColorFlow, ColorizeSettings
from colorflow_core.errors import ColorFlowError, InputError, NumericalError, WeightsError
from colorflow_core.images import check_image_files, list_image_files, load_image
from colorflow_core.retrieve.canvas import RetrievalResult, canvas_mask
from colorflow_core.sizes import PageSize
from colorflow_core.testing import write_release
from colorflow_core.weights import load_state_dict_file

SIZE = "64x64"


def _gray(path: Path, size=(60, 70), value: int | None = None) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    data = rng.integers(0, 256, size[::-1], dtype=np.uint8) if value is None else np.full(size[::-1], value, np.uint8)
    Image.fromarray(data).save(path)
    return path


def _multi_frame(path: Path, frames: int = 3) -> Path:
    images = [Image.new("L", (40, 50), 40 * i) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def _truncated(path: Path) -> Path:
    _gray(path, (120, 160))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def chapter(tmp_path) -> tuple[Path, Path]:
    pages, refs = tmp_path / "pages", tmp_path / "refs"
    pages.mkdir()
    refs.mkdir()
    for name in ("p1.png", "p2.png", "p3.png"):
        _gray(pages / name)
    for name in ("r1.png", "r2.png"):
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(refs / name)
    return pages, refs


def _argv(pages, refs, out, *extra) -> list[str]:
    return ["colorize", str(pages), "--refs", str(refs), "--out", str(out), "--size", SIZE, "--steps", "1",
            "--no-screentone", "--device", "cpu", *extra]


class FakeEngine:
    """Stands in for ColorFlow.load in the CLI: records what reached it, colours nothing."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.pages: list[str] = []
        self.references = 0

    def reference_pool(self, references, size, cache_dir=None, progress=None):
        self.references = len(references)
        return object()

    def prepare(self, pages, pool, size, *, top_k=3, seed=0, names=None, progress=None, generator_device="cpu",
                allowed=None):
        self.pages += list(names)
        canvas = Image.new("RGB", size.canvas, "white")
        retrieval = RetrievalResult(size, Image.new("RGB", (size.width, size.height)), canvas, canvas_mask(size),
                                    torch.zeros(4, 1), torch.zeros(4, top_k, dtype=torch.long), torch.zeros(4, top_k))
        return [SimpleNamespace(name=n, size=size, retrieval=retrieval) for n in names]

    def colorize(self, contexts, settings, progress=None, check_interrupt=None):
        return [c.retrieval.canvas for c in contexts]

    def upscale(self, contexts, canvases, seed=0, progress=None, check_interrupt=None, generator_device="cpu"):
        return [Image.new("RGB", c.size.guide, "red") for c in contexts]

    run = ColorFlow.run  # the engine's own orchestration over the fake stages

    def free(self) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch) -> FakeEngine:
    engine = FakeEngine()
    monkeypatch.setattr(ColorFlow, "load", classmethod(lambda cls, *a, **k: engine))
    return engine


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the inputs are bad")

    monkeypatch.setattr(ColorFlow, "load", refuse)


# ---- 6: multi-frame files ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["scan.tif", "anim.gif"])
def test_multi_frame_files_are_refused_not_cut_to_their_first_frame(name, chapter, tmp_path, capsys, no_model):
    pages, refs = chapter
    _multi_frame(pages / name)
    with pytest.raises(InputError, match=r"3 frames") as err:
        load_image(pages / name)
    assert name in str(err.value)
    assert cli.main(_argv(pages, refs, tmp_path / "out")) == 2
    message = capsys.readouterr().err
    assert name in message and "3 frames" in message and "one file per page" in message


def test_single_frame_gif_and_tiff_still_load(tmp_path):
    for name in ("one.gif", "one.tif"):
        Image.new("L", (20, 30), 99).save(tmp_path / name)
        assert load_image(tmp_path / name).size == (20, 30)


# ---- 7: dangling symlinks and loops --------------------------------------------------------------

def test_dangling_symlinks_and_loops_are_named_in_a_warning(chapter, capsys):
    pages, _ = chapter
    os.symlink(pages / "gone.png", pages / "p4.png")
    os.symlink(pages / "loop.png", pages / "loop.png")
    found = cli.collect_pages([str(pages)])
    assert [p.name for p in found] == ["p1.png", "p2.png", "p3.png"]
    err = capsys.readouterr().err
    assert "warning:" in err and "p4.png" in err and "loop.png" in err


def test_list_image_files_reports_broken_links(tmp_path):
    _gray(tmp_path / "a.png")
    os.symlink(tmp_path / "missing.png", tmp_path / "b.png")
    warnings: list[str] = []
    assert [p.name for p in list_image_files(tmp_path, warn=warnings.append)] == ["a.png"]
    assert len(warnings) == 1 and "b.png" in warnings[0] and "link" in warnings[0]


# ---- 11: tiny images name their file ---------------------------------------------------------------

def test_tiny_page_and_reference_name_their_files(chapter, tmp_path, capsys, no_model):
    pages, refs = chapter
    _gray(pages / "p2.png", (1, 1))
    _gray(refs / "dot.png", (1, 1))
    assert cli.main(_argv(pages, refs, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "1x1 px is too small" in err
    assert str(pages / "p2.png") in err and str(refs / "dot.png") in err


def test_reference_pool_names_the_reference_file(tmp_path):
    from colorflow_core.retrieve.pool import ReferencePool

    tiny = load_image(_gray(tmp_path / "dot.png", (1, 1)))
    with pytest.raises(InputError, match="too small") as err:
        ReferencePool._cut([load_image(_gray(tmp_path / "ok.png")), tiny], PageSize(64, 64))
    assert "colour reference 2" in str(err.value) and "dot.png" in str(err.value)


# ---- 12: LoRA without LoRA keys names the file ---------------------------------------------------

def test_lora_without_lora_keys_names_the_file(tmp_path):
    state = {"renamed.down.weight": torch.zeros(4, 8), "renamed.up.weight": torch.zeros(8, 4)}
    with pytest.raises(WeightsError, match="holds no LoRA tensors") as err:
        infer_lora_rank(state, source=tmp_path / "unet_lora.bin")
    assert "unet_lora.bin" in str(err.value)


def test_release_with_renamed_lora_keys_names_the_file(tmp_path_factory):
    release = write_release(tmp_path_factory.mktemp("renamed_lora"))
    lora = release / "GraySD" / "unet_lora.bin"
    state = torch.load(lora, weights_only=True)
    torch.save({k.replace("lora_A", "down").replace("lora_B", "up"): v for k, v in state.items()}, lora)
    with pytest.raises(WeightsError, match="holds no LoRA tensors") as err:
        ColorFlow.load("screenstyle", release=release, base=release / "base", device="cpu", screentone=False)
    assert str(lora) in str(err.value)


# ---- 13: malicious pickles -------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_advice_to_disable_the_protection(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "unet_lora.bin"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError) as err:
        load_state_dict_file(path)
    message = str(err.value)
    assert not marker.exists()
    assert str(path) in message and "code" in message and "not loaded" in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert "truncated or corrupt" not in message


def test_truncated_pickle_is_still_called_corrupt(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"weight": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match="truncated or corrupt") as err:
        load_state_dict_file(path)
    assert "weights_only" not in str(err.value)


# ---- 15: decompression bombs -----------------------------------------------------------------------

def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height, written in chunks (no huge buffer)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    compressor, parts = zlib.compressobj(9), []
    for _ in range(0, height, 500):
        parts.append(compressor.compress(row * 500))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def test_huge_png_is_called_too_large_not_unreadable(tmp_path):
    path = _huge_png(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(InputError) as err:
        load_image(path)
    message = str(err.value)
    assert "huge.png" in message and "decompression-bomb limit" in message and "--max-image-pixels" in message
    assert "not a readable image" not in message


def test_max_image_pixels_option_raises_the_limit(chapter, tmp_path, capsys, fake_engine, monkeypatch):
    pages, refs = chapter
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every 60x70 page is now "too large"
    assert cli.main(_argv(pages, refs, tmp_path / "out")) == 2
    assert "decompression-bomb limit" in capsys.readouterr().err
    assert cli.main(_argv(pages, refs, tmp_path / "out", "--max-image-pixels", "100000")) == 0
    assert fake_engine.pages == ["p1", "p2", "p3"]
    assert cli.main(_argv(pages, refs, tmp_path / "out2", "--max-image-pixels", "0")) == 2
    assert "--max-image-pixels" in capsys.readouterr().err


def test_readme_documents_the_new_options():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for option in ("--max-image-pixels", "--skip-bad"):
        assert f"| `{option}" in readme


# ---- 18: every page and reference is checked before any model runs -------------------------------

def test_all_bad_files_are_reported_before_any_model_loads(chapter, tmp_path, capsys, no_model):
    pages, refs = chapter
    for k in range(4, 9):
        _gray(pages / f"p{k}.png")
    _truncated(pages / "p7.png")
    (pages / "p5.png").write_bytes(b"not a png at all")
    _truncated(refs / "r2.png")
    assert cli.main(_argv(pages, refs, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    for bad in (pages / "p5.png", pages / "p7.png", refs / "r2.png"):
        assert str(bad) in err
    assert "3 unreadable" in err and "--skip-bad" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_skip_bad_colours_the_good_pages_with_their_chapter_seeds(chapter, tmp_path, capsys, fake_engine, monkeypatch):
    pages, refs = chapter
    _truncated(pages / "p2.png")
    _truncated(refs / "r2.png")
    seeds = []
    original = FakeEngine.prepare

    def prepare(self, pages_, pool, size, **kwargs):
        seeds.append((list(kwargs["names"]), kwargs["seed"]))
        return original(self, pages_, pool, size, **kwargs)

    monkeypatch.setattr(FakeEngine, "prepare", prepare)
    out = tmp_path / "out"
    assert cli.main(_argv(pages, refs, out, "--skip-bad", "--seed", "10")) == 0
    err = capsys.readouterr().err
    assert "p2.png" in err and "r2.png" in err and "skipping" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["p1.png", "p3.png"]
    assert fake_engine.references == 1
    assert seeds == [(["p1"], 10), (["p3"], 12)]  # page k of the sorted chapter keeps seed + k


def test_skip_bad_with_no_good_reference_still_fails(chapter, tmp_path, capsys, fake_engine):
    pages, refs = chapter
    for ref in refs.iterdir():
        _truncated(ref)
    assert cli.main(_argv(pages, refs, tmp_path / "out", "--skip-bad")) == 2
    assert "reference" in capsys.readouterr().err


def test_check_image_files_decodes_every_file(tmp_path):
    good = _gray(tmp_path / "good.png")
    bad = _truncated(tmp_path / "bad.png")
    problems = check_image_files([good, bad], "page")
    assert list(problems) == [bad] and "bad.png" in problems[bad]


# ---- 9: NaN results are an error naming the stage, never a black page ----------------------------

@pytest.fixture(scope="module")
def clean_release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))


def _poisoned_copy(release: Path, tmp_path: Path, rel: str) -> Path:
    copy = tmp_path / "poisoned"
    shutil.copytree(release, copy)
    state = torch.load(copy / rel, weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               copy / rel)
    return copy


def test_nan_lora_fails_the_page_naming_the_stage(clean_release, chapter, tmp_path, capsys):
    pages, refs = chapter
    release = _poisoned_copy(clean_release, tmp_path, "GraySD/unet_lora.bin")
    out = tmp_path / "out"
    code = cli.main(_argv(pages, refs, out, "--release", str(release), "--base", str(release / "base")))
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite" in err and "in-context colorization" in err and "p1" in err
    assert not list(out.glob("*.png"))  # no black page written as a success


def test_nan_in_gsrp_is_an_error_naming_the_stage(clean_release, tmp_path):
    engine = ColorFlow.load("screenstyle", release=clean_release, base=clean_release / "base", device="cpu",
                            screentone=False)
    size = PageSize(64, 64)
    pool = engine.reference_pool([Image.new("RGB", (40, 50), "blue")], size)
    contexts = engine.prepare([Image.new("L", (60, 70), 128)], pool, size, names=["p9"])
    canvases = engine.colorize(contexts, ColorizeSettings(steps=1))
    with torch.no_grad():
        for p in engine.upscaler.fusion.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NumericalError) as err:
        engine.upscale(contexts, canvases)
    assert "GSRP" in str(err.value) and "p9" in str(err.value)
    assert isinstance(err.value, ColorFlowError)


def test_float16_nan_suggests_another_precision():
    from colorflow_core.finite import check_finite

    values = torch.zeros(3, 4, 2, 2, dtype=torch.float16)
    values[2, 0, 0, 0] = float("inf")
    check_finite(values[:2], "stage", torch.float16)  # finite pages pass
    with pytest.raises(NumericalError) as err:
        check_finite(values, "in-context colorization (the denoised latents)", torch.float16)
    assert err.value.pages == [2] and "page 3" in str(err.value)
    assert "bf16" in str(err.value) and "fp32" in str(err.value)
    named = err.value.shifted(1).named(["a", "b", "c", "page 'p4'"])
    assert "page 'p4'" in str(named) and "in-context colorization" in str(named)
    with pytest.raises(NumericalError) as err:
        check_finite(values, "GSRP", torch.float32)
    assert "bf16" not in str(err.value) and "weight" in str(err.value)
