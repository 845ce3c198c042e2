"""ComfyUI's template browser shows `workflows/<name>.jpg` as the picture of `workflows/<name>.json`:
every shipped workflow has one, small, made by workflows/examples/make_examples.py --thumbnails."""
from __future__ import annotations

import importlib.util
import sys

import pytest
from PIL import Image

from tests.support.parity import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def _make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", REPO_ROOT / "workflows" / "examples" / "make_examples.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses need it there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_every_workflow_has_a_small_jpeg_thumbnail(workflow):
    thumbnail = workflow.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} missing: run python workflows/examples/make_examples.py --thumbnails"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.height == _make_examples().THUMBNAIL_HEIGHT and image.width <= 4 * image.height
    assert thumbnail.stat().st_size < 64 * 1024


def test_the_thumbnail_script_covers_exactly_the_shipped_workflows(tmp_path):
    module = _make_examples()
    assert set(module.THUMBNAIL_SOURCES) == {w.stem for w in WORKFLOWS}
    module.write_thumbnails(tmp_path)
    for workflow in WORKFLOWS:
        with Image.open(tmp_path / f"{workflow.stem}.jpg") as fresh, Image.open(workflow.with_suffix(".jpg")) as shipped:
            assert fresh.size == shipped.size
