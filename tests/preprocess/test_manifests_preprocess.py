"""Our preprocessing networks, built at full size on the meta device, have the release layouts."""
from __future__ import annotations

import pytest
import torch

from colorflow_core.preprocess.lines import ResSkip
from colorflow_core.preprocess.screentone import ScreenCodeGenerator, ScreenDecoder
from colorflow_core.testing.preprocess import read_manifest
from tests.support.parity import parity_root

MANIFESTS = parity_root() / "manifests"


@pytest.mark.skipif(not MANIFESTS.is_dir(), reason=f"no parity manifests under {MANIFESTS}")
@pytest.mark.parametrize(
    "network_class, manifest, prefix",
    [
        (ResSkip, "line_extractor_res_skip.json", ""),
        (ScreenCodeGenerator, "screenstyle_G_RGB2INTSCR.json", ""),
        (ScreenDecoder, "screenstyle_ScreenVAE.json", "dec."),
    ],
    ids=["LE/erika.pth", "latest_net_G_RGB2INTSCR.pth", "latest_net_dec.pth"],
)
def test_state_dict_layout_equals_manifest(network_class, manifest, prefix):
    with torch.device("meta"):
        network = network_class()
    ours = [(name, tuple(t.shape)) for name, t in network.state_dict().items()]
    expected = read_manifest(MANIFESTS / manifest, prefix)
    assert len(expected) > 0
    assert dict(ours) == dict(expected)
    assert ours == expected  # same order too: files saved from our networks list entries like the release
