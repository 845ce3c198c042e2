"""Bad inputs in the nodes: one clear message naming the input, the widget or the file (issue #11)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from colorflow_core.errors import InputError
from colorflow_core.sizes import PageSize
from nodes.colorize import InContextColorize
from nodes.pool import CollectReferences
from nodes.retrieve import RetrievedPages, RetrieveReferences
from nodes.sequence import LoadImageSequence
from nodes.tensors import images_from_tensors

pytestmark = pytest.mark.usefixtures("outside_comfyui")


def _pages(folder: Path, names=("p1.png", "p2.png")) -> Path:
    for name in names:
        Image.new("L", (30, 40), 90).save(folder / name)
    return folder


# ---- 6: multi-frame files in Load Image Sequence -------------------------------------------------

@pytest.mark.parametrize("name", ["scan.tiff", "anim.gif"])
def test_load_image_sequence_refuses_multi_frame_files(name, tmp_path):
    _pages(tmp_path)
    frames = [Image.new("L", (30, 40), 60 * i) for i in range(2)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="2 frames") as err:
        LoadImageSequence().load(str(tmp_path))
    assert name in str(err.value) and "Load Image Sequence" in str(err.value)


# ---- 7: dangling symlinks in Load Image Sequence -------------------------------------------------

def test_load_image_sequence_warns_about_broken_links(tmp_path, caplog):
    _pages(tmp_path)
    os.symlink(tmp_path / "gone.png", tmp_path / "p3.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    with caplog.at_level(logging.WARNING, logger="colorflow"):
        _, names = LoadImageSequence().load(str(tmp_path))
    assert names == ["p1", "p2"]
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "p3.png" in text and "loop.png" in text and "Load Image Sequence" in text


# ---- 10: NaN and 0..255 IMAGE tensors ------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    (torch.full((1, 8, 8, 3), float("inf")), "NaN"),
    (torch.full((1, 8, 8, 3), 200.0), "0..1"),
    (torch.full((1, 8, 8, 3), 200, dtype=torch.uint8), "0..1"),
    (torch.full((1, 8, 8, 3), -3.0), "0..1"),
    ([torch.rand(1, 8, 8, 3), torch.full((1, 8, 8, 4), float("nan"))], "NaN"),
])
def test_images_from_tensors_refuses_non_finite_and_out_of_range(bad, message):
    with pytest.raises(InputError, match=message) as err:
        images_from_tensors(bad, "Retrieve References: pages")
    assert "Retrieve References: pages" in str(err.value)


def test_images_from_tensors_tolerates_rounding_overshoot():
    near = torch.rand(1, 8, 8, 3) * 1.002 - 0.001
    assert images_from_tensors(near, "t")[0].size == (8, 8)
    binary = torch.ones(1, 8, 8, 3, dtype=torch.uint8)  # a 0/1 mask-like IMAGE
    assert images_from_tensors(binary, "t")[0].getpixel((0, 0)) == (255, 255, 255)


def test_reference_pool_refuses_nan_references():
    with pytest.raises(InputError, match="Reference Pool: references.*NaN"):
        CollectReferences().build(references=[torch.full((1, 8, 8, 3), float("nan"))])


def test_preprocess_and_upscale_inputs_are_checked():
    from nodes.preprocess import _pages as preprocess_pages

    with pytest.raises(InputError, match="Extract Line Art: images.*NaN"):
        preprocess_pages(torch.full((1, 16, 16, 3), float("nan")), "Extract Line Art")


# ---- 11: tiny pages and references name the page or file -----------------------------------------

@pytest.fixture
def pool():
    return CollectReferences().build(references=[torch.rand(2, 40, 50, 3)], folder=[""])[0]


def _retrieve(pool, pages, names=None, **widgets):
    values = dict(size="custom", width=64, height=96, top_k=3, preprocess_seed=0) | widgets
    return RetrieveReferences().retrieve([None], pages, [pool], [values["size"]], [values["width"]],
                                         [values["height"]], [values["top_k"]], [values["preprocess_seed"]],
                                         names=names)


def test_retrieve_names_the_tiny_page_before_any_model_runs(pool):
    pages = [torch.rand(1, 40, 30, 3), torch.rand(1, 1, 1, 3)]
    with pytest.raises(InputError, match="1x1 px is too small") as err:
        _retrieve(pool, pages, names=["ch1_p1", "ch1_p2"])
    assert "Retrieve References" in str(err.value) and "ch1_p2" in str(err.value)
    with pytest.raises(InputError, match="page 2"):
        _retrieve(pool, pages)


def test_reference_pool_names_the_tiny_reference_file(tmp_path):
    _pages(tmp_path, ["ok.png"])
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputError, match="too small") as err:
        CollectReferences().build(folder=[str(tmp_path)])
    assert "dot.png" in str(err.value)
    with pytest.raises(InputError, match="reference 2.*too small"):
        CollectReferences().build(references=[torch.rand(1, 40, 40, 3), torch.rand(1, 2, 2, 3)])


# ---- 16: messages name the widgets the user sees ---------------------------------------------------

@pytest.mark.parametrize("widgets, name", [
    (dict(cfg=50.0), "cfg"),
    (dict(guider_strength=9.0), "guider_strength"),
    (dict(steps=0), "steps"),
])
def test_colorize_errors_name_the_widget(widgets, name):
    values = dict(steps=1, cfg=7.5, guider_strength=1.0, seed=0) | widgets
    context = RetrievedPages(PageSize(64, 96), [object()])
    with pytest.raises(InputError) as err:
        InContextColorize().colorize(None, context, **values)
    message = str(err.value)
    assert message.startswith(f"In-Context Colorize: {name} must be")


def test_retrieve_errors_name_the_widget(pool):
    page = [torch.rand(1, 40, 30, 3)]
    with pytest.raises(InputError, match=r"preprocess_seed must be") as err:
        _retrieve(pool, page, preprocess_seed=-1)
    assert "Retrieve References" in str(err.value)
    with pytest.raises(InputError, match=r"top_k must be"):
        _retrieve(pool, page, top_k=7)
    with pytest.raises(InputError) as err:
        _retrieve(pool, page, size="333x333")
    assert "size" in str(err.value) and "PageSize" not in str(err.value)
