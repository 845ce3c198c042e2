"""The PixArt ColorGuider built at full size (meta device) has exactly the release's state-dict layout."""
from __future__ import annotations

import json

import pytest
import torch

from colorflow_core.colorize.pixart.guider import ALIAS, ColorGuiderPixArtModel
from tests.support.parity import parity_root

MANIFESTS = parity_root() / "manifests"


def _manifest(name: str) -> dict:
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found (set COLORFLOW_PARITY_DIR)")
    return json.loads(path.read_text())


def test_guider_layout_matches_release_manifest():
    manifest = _manifest("colorguider_pixart_xl2")
    config = {k: v for k, v in _manifest("colorguider_pixart_xl2_config").items() if not k.startswith("_")}
    with torch.device("meta"):
        model = ColorGuiderPixArtModel(**config)
    ours = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    assert ours == [(name, list(shape)) for name, shape in manifest["entries"]]  # names, shapes and order
    assert len(ours) == manifest["count"] == 228
    assert sum(torch.Size(s).numel() for _, s in ours) == manifest["params"]
    # the alias is the last adapter itself, not a 15th trainable layer
    assert model.after_proj is model.adapter_linear[-1]
    assert model.num_controls == config["num_layers"] // 2 == 14
    assert sum(1 for n, _ in ours if n.startswith(ALIAS + ".")) == 2
