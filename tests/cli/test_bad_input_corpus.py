"""The project's own corpus of bad and unusual inputs, swept through the CLI and the nodes (issue #11).

"Done when: a run over the same kinds of bad input ends with no traceback, no exit 1, and no silent
loss." Every case of the corpus is run in-process on a tiny random release and checked for the three
invariants (the details of each refusal are the per-defect tests' business: test_bad_inputs.py,
test_cli_outputs.py, test_nodes_bad_inputs.py):

CLI (`cli.main`):
  * no uncaught exception and no "Traceback" on stderr;
  * exit 0, 2 or 130 (never 1 or anything else); on 2 the message starting with "error:" is the last
    thing on stderr (README: a list of bad files may follow it on the next lines), on 130 the
    "interrupted" message;
  * no silent loss: on exit 0 every input page has its OUT/<stem>.png (a regular, non-empty PNG) or is
    named on stderr; no *.tmp file anywhere under OUT; no PNG under OUT is all black.
Nodes (the node classes outside ComfyUI):
  * either a result (IMAGE tensors: finite, in 0..1, one per page, not all black) or a ColorFlowError
    whose message names the node and the input, widget or file; nothing else escapes.

The model is loaded once per release (ColorFlow.load is memoised for the module), so a case costs
only its own pages: 64x64, one step, no screentone, one or two pages.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core import cli
from colorflow_core.engine import MAX_SEED, ColorFlow
from colorflow_core.errors import ColorFlowError
from colorflow_core.images import IMAGE_SUFFIXES
from colorflow_core.sizes import PageSize
from colorflow_core.testing import write_release
from nodes import comfy as comfy_glue
from nodes.colorize import InContextColorize
from nodes.pool import CollectReferences
from nodes.preprocess import ExtractLineArt, ScreentonePreprocess
from nodes.retrieve import RetrievedPages, RetrieveReferences
from nodes.sequence import LoadImageSequence
from nodes.upscale import GuidedUpscale
from tests.support import bad_inputs as bad

pytestmark = pytest.mark.usefixtures("outside_comfyui")

# ==== shared: one tiny release, one engine per release ============================================


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("corpus_release") / "tiny")


@pytest.fixture(scope="module")
def engines() -> dict:
    return {}


@pytest.fixture(scope="module")
def engine(release, engines):
    """The clean release's engine, shared by the CLI cases (through the memoised load) and the nodes."""
    key = (str(release), "cpu")
    if key not in engines:
        engines[key] = ColorFlow.load("screenstyle", release=release, base=release / "base", device="cpu",
                                      dtype="fp32", screentone=False)
    return engines[key]


@pytest.fixture
def memoised_load(engine, engines, monkeypatch):
    """ColorFlow.load as the CLI calls it, but each release is loaded once for the whole module.

    A release that fails to load (missing, corrupt or malicious weights) is not memoised: each case
    meets the real refusal."""
    real = ColorFlow.load

    def load(cls, style, release=None, base=None, **kwargs):
        key = (str(release), "cpu")
        if style != "screenstyle" or kwargs.get("screentone", True) or kwargs.get("device") not in (None, "cpu"):
            return real(style, release=release, base=base, **kwargs)
        if key not in engines:
            engines[key] = real(style, release=release, base=base, **kwargs)
        return engines[key]

    monkeypatch.setattr(ColorFlow, "load", classmethod(load))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # --max-image-pixels is global


# ==== the CLI corpus ===============================================================================


@dataclass
class Chapter:
    """One CLI run: a folder of pages (p1.png, a good page), a folder of references, an output folder."""

    root: Path
    release: Path
    pages: Path = field(init=False)
    refs: Path = field(init=False)
    out: Path = field(init=False)
    page_args: list[str] = field(init=False)
    extra: list[str] = field(default_factory=list)
    models: Path | None = None
    post: Callable[[], None] | None = None  # a case's own extra check, after the run

    def __post_init__(self) -> None:
        self.pages, self.refs, self.out = self.root / "pages", self.root / "refs", self.root / "out"
        self.pages.mkdir()
        self.refs.mkdir()
        bad.gray(self.pages / "p1.png")
        bad.colour(self.refs / "r1.png")
        self.page_args = [str(self.pages)]
        self.models = self.release

    def argv(self) -> list[str]:
        return ["colorize", *self.page_args, "--refs", str(self.refs), "--out", str(self.out),
                "--release", str(self.models), "--base", str(self.models / "base"), "--size", "64x64",
                "--steps", "1", "--no-screentone", "--device", "cpu", *self.extra]

    def input_pages(self) -> list[Path]:
        """Every page the user gave: image-named entries of the page folders (links included), and files."""
        found: list[Path] = []
        for arg in map(Path, self.page_args):
            if arg.is_dir():
                found += [p for p in arg.iterdir()
                          if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
            elif arg.exists() or arg.is_symlink():
                found.append(arg)
        return found


def _release_copy(release: Path, dest: Path, rel: str) -> Path:
    """A copy of the release made of links to its files, except ``rel``, which is a real copy to spoil."""
    shutil.copytree(release, dest, copy_function=os.symlink)
    (dest / rel).unlink()
    shutil.copyfile(release / rel, dest / rel)
    return dest


class _Payload:
    """A pickle that would create a folder when loaded with full unpickling."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --- the case builders: each spoils a fresh Chapter ------------------------------------------------

def _add_page(builder, name: str, *args, skip_bad: bool = False):
    def build(ch: Chapter) -> None:
        builder(ch.pages / name, *args)
        if skip_bad:
            ch.extra.append("--skip-bad")
    return build


def _add_ref(builder, name: str, skip_bad: bool = False):
    def build(ch: Chapter) -> None:
        builder(ch.refs / name)
        if skip_bad:
            bad.colour(ch.refs / "r2.png", seed=3)
            ch.extra.append("--skip-bad")
    return build


def _mode(mode: str, name: str):
    def build(ch: Chapter) -> None:
        (ch.pages / "p1.png").unlink()
        bad.mode_image(ch.pages / name, mode)
    return build


def _options(*extra: str):
    def build(ch: Chapter) -> None:
        ch.extra += list(extra)
    return build


def _broken_links(ch: Chapter) -> None:
    bad.dangling_link(ch.pages / "p2.png")
    bad.looping_link(ch.pages / "p3.png")


def _renamed(name: str):
    def build(ch: Chapter) -> None:
        (ch.pages / "p1.png").rename(ch.pages / name)
    return build


def _duplicate_stems(ch: Chapter) -> None:
    Image.open(ch.pages / "p1.png").convert("RGB").save(ch.pages / "p1.jpg")


def _empty_pages(ch: Chapter) -> None:
    (ch.pages / "p1.png").unlink()


def _empty_refs(ch: Chapter) -> None:
    (ch.refs / "r1.png").unlink()


def _pages_missing(ch: Chapter) -> None:
    ch.page_args = [str(ch.root / "no-such-pages")]


def _refs_missing(ch: Chapter) -> None:
    shutil.rmtree(ch.refs)


def _out_is_file(ch: Chapter) -> None:
    ch.out.write_text("a file, not a folder")


def _out_is_pages(ch: Chapter) -> None:
    ch.out = ch.pages


def _out_is_refs(ch: Chapter) -> None:
    ch.out = ch.refs


def _out_page_is_folder(ch: Chapter) -> None:
    (ch.out / "p1.png").mkdir(parents=True)


def _out_page_is_empty(ch: Chapter) -> None:
    ch.out.mkdir()
    (ch.out / "p1.png").write_bytes(b"")


def _seed_at_limit(ch: Chapter) -> None:
    bad.gray(ch.pages / "p2.png", seed=5)
    ch.extra += ["--seed", str(MAX_SEED - 1)]  # the last page uses exactly 2**63 - 1


def _seed_past_limit(ch: Chapter) -> None:
    bad.gray(ch.pages / "p2.png", seed=5)
    ch.extra += ["--seed", str(MAX_SEED)]  # the second page would use 2**63


def _nan_lora(ch: Chapter) -> None:
    rel = "GraySD/unet_lora.bin"
    ch.models = _release_copy(ch.release, ch.root / "release", rel)
    state = torch.load(ch.models / rel, weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               ch.models / rel)


def _malicious_pickle(ch: Chapter) -> None:
    rel = "GraySD/unet_lora.bin"
    ch.models = _release_copy(ch.release, ch.root / "release", rel)
    marker = ch.root / "pwned"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(marker))}, ch.models / rel)

    def not_executed() -> None:
        assert not marker.exists(), "the pickle's code ran"
    ch.post = not_executed


def _missing_weight(rel: str):
    def build(ch: Chapter) -> None:
        ch.models = _release_copy(ch.release, ch.root / "release", rel)
        (ch.models / rel).unlink()
    return build


def _truncated_weight(ch: Chapter) -> None:
    rel = "GraySD/unet_lora.bin"
    ch.models = _release_copy(ch.release, ch.root / "release", rel)
    data = (ch.models / rel).read_bytes()
    (ch.models / rel).write_bytes(data[: len(data) // 3])


def _models_missing(ch: Chapter) -> None:
    ch.models = ch.root / "no-such-release"


OK, ERR = 0, 2

CLI_CORPUS = [
    # -- unreadable or unusable files --------------------------------------------------------------
    pytest.param(_add_page(bad.corrupt_png, "p2.png"), ERR, id="file-corrupt-png"),
    pytest.param(_add_page(bad.truncated_png, "p2.png"), ERR, id="file-truncated-png"),
    pytest.param(_add_page(bad.truncated_png, "p2.png", skip_bad=True), OK, id="file-truncated-png-skip-bad"),
    pytest.param(_add_page(bad.zero_bytes, "p2.png"), ERR, id="file-zero-bytes"),
    pytest.param(_add_page(bad.text_as_png, "p2.png"), ERR, id="file-text-named-png"),
    pytest.param(_add_page(bad.tiny, "p2.png"), ERR, id="file-page-1x1"),
    pytest.param(_add_page(bad.tiny, "p2.png", skip_bad=True), OK, id="file-page-1x1-skip-bad"),
    pytest.param(_add_ref(bad.tiny, "dot.png"), ERR, id="file-reference-1x1"),
    pytest.param(_add_ref(bad.truncated_png, "r0.png", skip_bad=True), OK, id="file-reference-truncated-skip-bad"),
    pytest.param(_add_page(bad.bomb_png, "p2.png"), ERR, id="file-decompression-bomb"),
    pytest.param(_add_page(bad.multi_frame, "p2.tif"), ERR, id="file-multi-frame-tiff"),
    pytest.param(_add_page(bad.multi_frame, "p2.gif"), ERR, id="file-animated-gif"),
    # -- pixel modes (each chapter is the one unusual page) -----------------------------------------
    pytest.param(_mode("CMYK", "p1.jpg"), OK, id="mode-cmyk-jpeg"),
    pytest.param(_mode("LA", "p1.png"), OK, id="mode-la"),
    pytest.param(_mode("P", "p1.gif"), OK, id="mode-palette"),
    pytest.param(_mode("P-transparent", "p1.png"), OK, id="mode-palette-transparent"),
    pytest.param(_mode("I;16", "p1.png"), OK, id="mode-i16-gray-png"),
    pytest.param(_mode("RGB16", "p1.png"), OK, id="mode-16bit-rgb-png"),
    pytest.param(_mode("RGBA", "p1.png"), OK, id="mode-rgba-transparent"),
    pytest.param(_mode("1", "p1.bmp"), OK, id="mode-bilevel"),
    pytest.param(_mode("F", "p1.tif"), OK, id="mode-float-tiff"),
    # -- links and names ----------------------------------------------------------------------------
    pytest.param(_broken_links, OK, id="link-dangling-and-loop"),
    pytest.param(_renamed("página 一 (final).png"), OK, id="name-unicode-and-spaces"),
    pytest.param(_renamed("a" * 240 + ".png"), OK, id="name-240-chars"),
    pytest.param(_renamed("b" * 250 + ".png"), ERR, id="name-250-chars-no-room-for-sheet"),
    pytest.param(_duplicate_stems, ERR, id="name-duplicate-stems"),
    # -- folders ------------------------------------------------------------------------------------
    pytest.param(_empty_pages, ERR, id="folder-pages-empty"),
    pytest.param(_empty_refs, ERR, id="folder-refs-empty"),
    pytest.param(_pages_missing, ERR, id="folder-pages-missing"),
    pytest.param(_refs_missing, ERR, id="folder-refs-missing"),
    pytest.param(_out_is_file, ERR, id="folder-out-is-a-file"),
    pytest.param(_out_is_pages, ERR, id="folder-out-is-the-pages-folder"),
    pytest.param(_out_is_refs, ERR, id="folder-out-is-the-refs-folder"),
    pytest.param(_out_page_is_folder, ERR, id="folder-out-page-is-a-folder"),
    pytest.param(_out_page_is_empty, OK, id="folder-out-page-is-an-empty-file"),
    # -- option values ------------------------------------------------------------------------------
    pytest.param(_options("--size", "huge"), ERR, id="option-size-unknown"),
    pytest.param(_options("--size", "65x65"), ERR, id="option-size-not-multiple-of-32"),
    pytest.param(_options("--steps", "0"), ERR, id="option-steps-0"),
    pytest.param(_options("--steps", "201"), ERR, id="option-steps-201"),
    pytest.param(_options("--seed", "-1"), ERR, id="option-seed-negative"),
    pytest.param(_seed_at_limit, OK, id="option-seed-at-2**63-1"),
    pytest.param(_seed_past_limit, ERR, id="option-seed-past-2**63-1"),
    pytest.param(_options("--cfg", "nan"), ERR, id="option-guidance-nan"),
    pytest.param(_options("--cfg", "inf"), ERR, id="option-guidance-inf"),
    pytest.param(_options("--cfg", "-1"), ERR, id="option-guidance-negative"),
    pytest.param(_options("--cfg", "31"), ERR, id="option-guidance-31"),
    pytest.param(_options("--cfg", "0"), OK, id="option-guidance-0-off"),
    pytest.param(_options("--guider-strength", "nan"), ERR, id="option-guider-scale-nan"),
    pytest.param(_options("--top-k", "0"), ERR, id="option-top-k-0"),
    pytest.param(_options("--batch-size", "0"), ERR, id="option-batch-size-0"),
    pytest.param(_options("--max-image-pixels", "0"), ERR, id="option-max-image-pixels-0"),
    pytest.param(_options("--steps", "ten"), ERR, id="option-steps-not-a-number"),
    # -- weights ------------------------------------------------------------------------------------
    pytest.param(_nan_lora, ERR, id="weights-nan-lora"),
    pytest.param(_malicious_pickle, ERR, id="weights-malicious-pickle"),
    pytest.param(_missing_weight("GraySD/unet_lora.bin"), ERR, id="weights-missing-lora"),
    pytest.param(_missing_weight("GraySD/MultiResNetModel.bin"), ERR, id="weights-missing-gsrp"),
    pytest.param(_truncated_weight, ERR, id="weights-truncated-lora"),
    pytest.param(_models_missing, ERR, id="weights-release-folder-missing"),
]


def _run_cli(ch: Chapter, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(ch.argv())
    except SystemExit as exc:  # argparse: usage errors exit 2 by SystemExit
        code = exc.code
    return code, capsys.readouterr().err


def _check_cli_invariants(ch: Chapter, code, err: str) -> None:
    # 1. no traceback, and only the documented exit codes
    assert "Traceback" not in err, err
    assert code in (0, 2, 130), f"exit {code!r}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:  # the error message is the last thing on stderr (its file list may follow on more lines)
        starts = [k for k, line in enumerate(lines) if line.startswith("error:")]
        assert starts, err
        assert all(line.startswith("  ") or not line.startswith(("warning:", "done:", "interrupted"))
                   and ": error: " not in line for line in lines[starts[-1] + 1:]), err
        assert not any("%|" in line for line in lines[starts[-1] + 1:]), err  # no progress bar after it
    elif code == 130:
        assert lines and lines[-1].lstrip().startswith("interrupted"), err
    # 2. no half-written or black outputs anywhere under OUT
    if ch.out.is_dir():
        for folder, _dirs, files in os.walk(ch.out):
            for name in files:
                path = Path(folder) / name
                assert not name.endswith(".tmp"), f"temporary file left behind: {path}"
                if name.lower().endswith(".png") and path.is_file() and path.stat().st_size:
                    with Image.open(path) as img:
                        pixels = np.asarray(img.convert("RGB"))
                    assert pixels.max() > 0, f"all-black output {path}"
    # 3. on success, every input page is done or named on stderr
    if code == 0:
        for page in ch.input_pages():
            output = ch.out / f"{page.stem}.png"
            done = cli.page_done(output) and output.stat().st_size > 0
            assert done or page.name in err, f"page {page} has no output and no warning\n{err}"


@pytest.mark.parametrize("spoil, expected", CLI_CORPUS)
def test_cli_corpus(spoil, expected, release, memoised_load, tmp_path, capsys):
    ch = Chapter(tmp_path, release)
    spoil(ch)
    code, err = _run_cli(ch, capsys)
    _check_cli_invariants(ch, code, err)
    assert code == expected, err
    if ch.post:
        ch.post()


# ==== the node corpus ==============================================================================

W = H = 64


@pytest.fixture(scope="module")
def model(engine):
    return comfy_glue.ManagedModel(engine, "tiny corpus release")


@pytest.fixture(scope="module")
def pool():
    refs = torch.rand(2, 40, 50, 3, generator=torch.Generator().manual_seed(7))
    return CollectReferences().build(references=[refs], folder=[""])[0]


@pytest.fixture(scope="module")
def context(model, pool):
    page = torch.rand(1, 70, 60, 1, generator=torch.Generator().manual_seed(1)).expand(-1, -1, -1, 3)
    return _retrieve(model, pool, [page.contiguous()])[0]


def _retrieve(model, pool, pages, **widgets):
    v = dict(size="custom", width=W, height=H, top_k=3, preprocess_seed=0, names=None,
             generator_device=None) | widgets
    return RetrieveReferences().retrieve([model], pages, [pool], [v["size"]], [v["width"]], [v["height"]],
                                         [v["top_k"]], [v["preprocess_seed"]], names=v["names"],
                                         generator_device=v["generator_device"])


def _colorize(model, context, **widgets):
    v = dict(steps=1, cfg=0.0, guider_strength=1.0, seed=0) | widgets
    return InContextColorize().colorize(model, context, **v)


def _fake_context() -> RetrievedPages:
    """A context for the widget checks, which come before any page is touched."""
    return RetrievedPages(PageSize(W, H), [object()])


def _page(h=70, w=60, c=3, scale=1.0, dtype=torch.float32, fill=None) -> torch.Tensor:
    if fill is not None:
        return torch.full((1, h, w, c), fill, dtype=dtype)
    data = torch.rand(1, h, w, c, generator=torch.Generator().manual_seed(h * w + c)) * scale
    return data.to(dtype)


def _uint8_page() -> torch.Tensor:
    return (torch.rand(1, 70, 60, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)


# (run(model, pool, context) -> outputs, expected pages or None for an error, words the message must hold)
NODE_CORPUS = [
    # -- Retrieve References: the pages IMAGE ---------------------------------------------------------
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(fill=float("nan"))), None,
                 ["Retrieve References: pages", "NaN"], id="retrieve-nan-image"),
    pytest.param(lambda m, p, c: _retrieve(m, p, [_page(), _page(fill=float("inf"))]), None,
                 ["Retrieve References: pages", "image 2"], id="retrieve-inf-second-image"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(scale=255.0)), None,
                 ["Retrieve References: pages", "0..255"], id="retrieve-0..255-float"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _uint8_page()), None,
                 ["Retrieve References: pages", "0..255"], id="retrieve-0..255-uint8"),
    pytest.param(lambda m, p, c: _retrieve(m, p, torch.zeros(0, 64, 64, 3)), None,
                 ["Retrieve References: pages", "empty"], id="retrieve-empty-batch"),
    pytest.param(lambda m, p, c: _retrieve(m, p, []), None,
                 ["Retrieve References: pages", "empty"], id="retrieve-empty-list"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(c=2)), None,
                 ["Retrieve References: pages", "2 channels"], id="retrieve-2-channels"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(c=5)), None,
                 ["Retrieve References: pages", "5 channels"], id="retrieve-5-channels"),
    pytest.param(lambda m, p, c: _retrieve(m, p, torch.rand(64, 64)), None,
                 ["Retrieve References: pages", "shape"], id="retrieve-2d-tensor"),
    pytest.param(lambda m, p, c: _retrieve(m, p, [_page(), _page(1, 1)], names=["a", "b"]), None,
                 ["Retrieve References: page 2 (b)", "1x1"], id="retrieve-1x1-page"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), names=["a", "b"]), None,
                 ["Retrieve References", "names"], id="retrieve-names-mismatch"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), top_k=0), None,
                 ["Retrieve References", "top_k"], id="retrieve-widget-top-k-0"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), preprocess_seed=-1), None,
                 ["Retrieve References", "preprocess_seed"], id="retrieve-widget-seed-negative"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), size="333x333"), None,
                 ["Retrieve References", "size"], id="retrieve-widget-size-unknown"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), width=float("nan")), None,
                 ["Retrieve References", "size"], id="retrieve-widget-width-nan"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(), generator_device=["mps"]), None,
                 ["Retrieve References", "generator_device"], id="retrieve-widget-generator-mps"),
    pytest.param(lambda m, p, c: _retrieve(m, p, _page(c=1)), 1, [], id="retrieve-ok-1-channel"),
    pytest.param(lambda m, p, c: _retrieve(m, p, [_page(c=4), _page(200, 10)]), 2, [],
                 id="retrieve-ok-rgba-and-20:1-strip"),
    # -- Reference Pool ----------------------------------------------------------------------------
    pytest.param(lambda m, p, c: CollectReferences().build(references=[_page(fill=float("nan"))]), None,
                 ["Reference Pool: references", "NaN"], id="pool-nan-reference"),
    pytest.param(lambda m, p, c: CollectReferences().build(references=[_uint8_page()]), None,
                 ["Reference Pool: references", "0..255"], id="pool-0..255-reference"),
    pytest.param(lambda m, p, c: CollectReferences().build(references=[torch.zeros(0, 8, 8, 3)]), None,
                 ["Reference Pool", "empty"], id="pool-empty-batch"),
    pytest.param(lambda m, p, c: CollectReferences().build(references=[_page(), _page(1, 1)]), None,
                 ["reference 2", "too small"], id="pool-1x1-reference"),
    # -- In-Context Colorize widgets ----------------------------------------------------------------
    *[pytest.param((lambda w: lambda m, p, c: _colorize(m, _fake_context(), **w))(widgets), None,
                   ["In-Context Colorize", name], id=f"colorize-widget-{label}")
      for label, widgets, name in [
          ("steps-0", dict(steps=0), "steps"),
          ("steps-201", dict(steps=201), "steps"),
          ("cfg-negative", dict(cfg=-1.0), "cfg"),
          ("cfg-nan", dict(cfg=float("nan")), "cfg"),
          ("cfg-31", dict(cfg=31.0), "cfg"),
          ("guider-strength-nan", dict(guider_strength=float("nan")), "guider_strength"),
          ("seed-negative", dict(seed=-1), "seed"),
          ("seed-past-2**63-1", dict(seed=MAX_SEED + 1), "seed"),
          ("batch-size-negative", dict(batch_size=-1), "batch_size"),
          ("generator-mps", dict(generator_device="mps"), "generator_device"),
      ]],
    pytest.param(lambda m, p, c: _colorize(m, c, cfg=1.0), 1, [], id="colorize-ok-cfg-1-off"),
    # -- Guided Upscale ---------------------------------------------------------------------------
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, _page(H, W, fill=float("nan")), c, seed=0), None,
                 ["Guided Upscale: colored", "NaN"], id="upscale-nan-colored"),
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, _page(H, W, scale=255.0), c, seed=0), None,
                 ["Guided Upscale: colored", "0..255"], id="upscale-0..255-colored"),
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, torch.rand(2, H, W, 3), c, seed=0), None,
                 ["Guided Upscale", "2 coloured pages"], id="upscale-count-mismatch"),
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, torch.rand(1, 1, 1, 3), c, seed=0), None,
                 ["Guided Upscale: coloured page 1", "too small"], id="upscale-1x1-colored"),
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, torch.rand(1, H, W, 3), c, seed=-1), None,
                 ["seed", "-1"], id="upscale-widget-seed-negative"),  # (the engine's message: no node name)
    pytest.param(lambda m, p, c: GuidedUpscale().upscale(m, torch.rand(1, 50, 40, 3), c, seed=0), 1, [],
                 id="upscale-ok-edited-size"),
    # -- Extract Line Art / Screentone Preprocess (refused before their networks are needed) ---------
    pytest.param(lambda m, p, c: ExtractLineArt().extract(_page(fill=float("nan")), "tiny"), None,
                 ["Extract Line Art: images", "NaN"], id="lineart-nan-image"),
    pytest.param(lambda m, p, c: ExtractLineArt().extract(_page(1, 1), "tiny"), None,
                 ["Extract Line Art: image 1", "too small"], id="lineart-1x1-image"),
    pytest.param(lambda m, p, c: ExtractLineArt().extract(_page(), "tiny", dark_below=float("nan")), None,
                 ["Extract Line Art", "dark_below"], id="lineart-widget-dark-below-nan"),
    pytest.param(lambda m, p, c: ExtractLineArt().extract(_page(), "gone"), None,
                 ["gone"], id="lineart-release-missing"),
    pytest.param(lambda m, p, c: ExtractLineArt().extract(_page(), "tiny"), None,
                 ["erika.pth"], id="lineart-release-without-line-extractor"),
    pytest.param(lambda m, p, c: ScreentonePreprocess().preprocess(_page(), "tiny", seed=-1), None,
                 ["Screentone Preprocess", "seed"], id="screentone-widget-seed-negative"),
    pytest.param(lambda m, p, c: ScreentonePreprocess().preprocess(_uint8_page(), "tiny", seed=0), None,
                 ["Screentone Preprocess: images", "0..255"], id="screentone-0..255-image"),
    pytest.param(lambda m, p, c: ScreentonePreprocess().preprocess(_page(), "tiny", seed=0), None,
                 ["ScreenStyle"], id="screentone-release-without-screenstyle"),
]


def _check_node_output(outputs, pages: int) -> None:
    tensors = [o for o in outputs if isinstance(o, torch.Tensor) and o.ndim == 4]
    assert tensors, outputs
    for tensor in tensors:
        assert tensor.shape[0] == pages and tensor.shape[-1] == 3
        assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1
        assert tensor.flatten(1).amax(dim=1).gt(0).all(), "an all-black image"


@pytest.mark.parametrize("run, pages, words", NODE_CORPUS)
def test_node_corpus(run, pages, words, model, pool, context, release, monkeypatch):
    monkeypatch.setenv("COLORFLOW_MODELS", str(release.parent))
    if pages is None:
        with pytest.raises(ColorFlowError) as err:  # anything else escapes and fails the test
            run(model, pool, context)
        for word in words:
            assert word in str(err.value), str(err.value)
    else:
        _check_node_output(run(model, pool, context), pages)


# -- Load Image Sequence and Reference Pool over the file corpus -------------------------------------

FILE_CORPUS = [
    pytest.param(bad.corrupt_png, "x.png", False, id="corrupt-png"),
    pytest.param(bad.truncated_png, "x.png", False, id="truncated-png"),
    pytest.param(bad.zero_bytes, "x.png", False, id="zero-bytes"),
    pytest.param(bad.text_as_png, "x.png", False, id="text-named-png"),
    pytest.param(bad.bomb_png, "x.png", False, id="decompression-bomb"),
    pytest.param(bad.multi_frame, "x.tif", False, id="multi-frame-tiff"),
    pytest.param(bad.multi_frame, "x.gif", False, id="animated-gif"),
    pytest.param(bad.tiny, "x.png", True, id="1x1"),
    pytest.param(lambda path: bad.mode_image(path, "CMYK"), "x.jpg", True, id="mode-cmyk"),
    pytest.param(lambda path: bad.mode_image(path, "I;16"), "x.png", True, id="mode-i16"),
    pytest.param(lambda path: bad.mode_image(path, "RGBA"), "x.png", True, id="mode-rgba"),
    pytest.param(bad.dangling_link, "x.png", None, id="dangling-link"),
    pytest.param(bad.looping_link, "x.png", None, id="looping-link"),
    pytest.param(bad.gray, "página 一.png", True, id="unicode-name"),
]


@pytest.mark.parametrize("builder, name, loads", FILE_CORPUS)
def test_load_image_sequence_corpus(builder, name, loads, tmp_path, caplog):
    """Every file is loaded, or refused with its name, or (a broken link) skipped with a warning naming it."""
    bad.gray(tmp_path / "p1.png")
    builder(tmp_path / name)
    node = "Load Image Sequence"
    if loads is False:
        with pytest.raises(ColorFlowError) as err:
            LoadImageSequence().load(str(tmp_path))
        assert node in str(err.value) and name in str(err.value), str(err.value)
        return
    with caplog.at_level("WARNING", logger="colorflow"):
        images, names = LoadImageSequence().load(str(tmp_path))
    if loads is None:
        assert names == ["p1"]
        assert name in caplog.text
    else:
        assert sorted(names) == sorted(["p1", Path(name).stem])
        for image in images:
            assert image.ndim == 4 and image.shape[-1] == 3 and torch.isfinite(image).all()
            assert 0 <= image.min() and image.max() <= 1 and image.max() > 0


@pytest.mark.parametrize("builder, name, loads", FILE_CORPUS)
def test_reference_pool_folder_corpus(builder, name, loads, tmp_path, caplog):
    """A reference folder holding the file: used, refused naming it, or (a broken link) skipped with a warning."""
    bad.colour(tmp_path / "r1.png")
    builder(tmp_path / name)
    usable = loads is True and builder is not bad.tiny
    with caplog.at_level("WARNING", logger="colorflow"):
        try:
            (pool,) = CollectReferences().build(folder=[str(tmp_path)])
        except ColorFlowError as exc:
            assert not usable, str(exc)
            assert name in str(exc), str(exc)
            return
    assert len(pool) == (2 if usable else 1)
    if not usable:
        assert name in caplog.text

