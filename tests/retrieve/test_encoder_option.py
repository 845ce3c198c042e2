"""The `encoder` option (engine, CLI --encoder, Load ColorFlow Model): the release's CLIP, or any
open_clip model with its own weights, chosen by one spec string."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core import cli
from colorflow_core.engine import ColorFlow
from colorflow_core.errors import InputError
from colorflow_core.options import parse_encoder
from colorflow_core.retrieve.encoders import OpenCLIPImageEncoder
from colorflow_core.sizes import PageSize
from colorflow_core.testing import write_release

TINY_OPEN_CLIP = "colorflow-test-encoder-option"


@pytest.mark.parametrize("spec, parsed", [
    ("clip", ("clip", None)),
    ("open_clip:ViT-B-32@laion2b_s34b_b79k", ("ViT-B-32", "laion2b_s34b_b79k")),
    ("open_clip:ViT-B-32@/models/a@b.bin", ("ViT-B-32", "/models/a@b.bin")),
])
def test_encoder_specs_parse(spec, parsed):
    assert parse_encoder(spec) == parsed


@pytest.mark.parametrize("spec", ["", "CLIP", "open_clip:", "open_clip:ViT-B-32", "open_clip:@weights.bin", "dino"])
def test_bad_encoder_specs_are_refused_with_an_example(spec):
    with pytest.raises(InputError, match="open_clip:MODEL@WEIGHTS.*e.g. open_clip:"):
        parse_encoder(spec)


@pytest.fixture(scope="module")
def open_clip_release(tmp_path_factory) -> tuple[Path, str]:
    """A tiny release WITHOUT image_encoder/, and a tiny open_clip model + checkpoint as the encoder."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_OPEN_CLIP}.json")
    torch.manual_seed(3)
    checkpoint = folder / "tiny_open_clip.pt"
    torch.save(OpenCLIPImageEncoder(TINY_OPEN_CLIP).model.state_dict(), checkpoint)
    release = write_release(folder / "release")
    shutil.rmtree(release / "image_encoder")
    return release, f"open_clip:{TINY_OPEN_CLIP}@{checkpoint}"


def _images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)) for _ in range(count)]


def test_open_clip_encoder_runs_retrieval_without_the_release_encoder(open_clip_release):
    release, spec = open_clip_release
    with pytest.raises(Exception, match="image_encoder"):  # the default still needs the release's CLIP
        ColorFlow.load("screenstyle", release=release, base=release / "base", screentone=False)
    engine = ColorFlow.load("screenstyle", release=release, base=release / "base", screentone=False, encoder=spec)
    assert isinstance(engine.encoder, OpenCLIPImageEncoder) and engine.encoder_spec == spec
    size = PageSize(64, 96)
    pool = engine.reference_pool(_images(2, 1), size)
    assert pool.encoder_identity.startswith(f"open-clip[{TINY_OPEN_CLIP}]") and pool.embeddings.shape[1] == 16
    (context,) = engine.prepare(_images(1, 2), pool, size, top_k=2)
    assert context.retrieval.top_k_indices.shape == (4, 2)
    again = ColorFlow.load("screenstyle", release=release, base=release / "base", screentone=False, encoder=spec,
                           reuse=engine)
    assert again.encoder is engine.encoder  # same spec: shared, not loaded twice


def test_cli_encoder_option(open_clip_release, tmp_path, capsys):
    release, spec = open_clip_release
    pages, refs, out = tmp_path / "pages", tmp_path / "refs", tmp_path / "out"
    pages.mkdir(), refs.mkdir()
    for k, image in enumerate(_images(1, 4)):
        image.save(pages / f"p{k + 1}.png")
    for k, image in enumerate(_images(2, 5)):
        image.save(refs / f"r{k + 1}.png")
    common = [str(pages), "--refs", str(refs), "--out", str(out), "--release", str(release), "--base",
              str(release / "base"), "--size", "64x96", "--steps", "1", "--no-screentone"]
    assert cli.main(["colorize", *common, "--encoder", "open_clip:nothing"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: encoder 'open_clip:nothing'")
    assert not out.exists() or not any(out.glob("*.png"))
    assert cli.main(["colorize", *common, "--encoder", spec]) == 0
    assert Image.open(out / "p1.png").size == (96, 144)
