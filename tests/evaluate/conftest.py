"""Fixtures of the `evaluate` tests: a tiny FID feature extractor, a tiny CLIP image encoder release."""
from __future__ import annotations

from pathlib import Path

import pytest
from tests.evaluate.support import TinyFeatures
from torch import nn


@pytest.fixture
def tiny_features() -> nn.Module:
    return TinyFeatures()


@pytest.fixture(scope="session")
def encoder_release(tmp_path_factory) -> Path:
    """A release folder holding only the tiny random-weight `image_encoder/` (colorflow_core.testing)."""
    from colorflow_core.testing import write_image_encoder

    root = tmp_path_factory.mktemp("release")
    write_image_encoder(root, "tiny", seed=7)
    return root
