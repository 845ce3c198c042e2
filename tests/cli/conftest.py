"""The tiny random release the CLI tests colour with (built once per test module)."""
from __future__ import annotations

from pathlib import Path

import pytest

from colorflow_core.testing import write_release


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))
