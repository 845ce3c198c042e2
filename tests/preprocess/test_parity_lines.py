"""Line extraction parity: `LE/erika.pth` rebuilt from the case manifest reproduces the original."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from colorflow_core.preprocess.lines import LINE_EXTRACTOR_FILE, LineExtractor
from colorflow_core.testing.preprocess import write_line_extractor
from tests.support.parity import parity_params

TOLERANCE = 1e-2  # parity README, 0..255 scale


@pytest.fixture(scope="session")
def rebuilt_line_extractors(tmp_path_factory) -> dict[Path, Path]:
    """case folder -> rebuilt erika.pth (172 MB each, written once per session)."""
    cache: dict[Path, Path] = {}

    def get(case: Path) -> Path:
        if case not in cache:
            manifest = case / "weights" / "LE" / "erika_manifest.json"
            seed_base = json.loads(manifest.read_text())["seed_base"]
            release = tmp_path_factory.mktemp(f"release_{case.name}")
            cache[case] = write_line_extractor(release, manifest, seed_base)
        return cache[case]

    return get


@pytest.mark.parametrize("case", parity_params("sd"))
def test_line_output_matches_original(case: Path, rebuilt_line_extractors):
    if not (case / "weights" / "LE" / "erika_manifest.json").is_file():
        pytest.skip(f"{case.name} has no LE/erika_manifest.json")
    path = rebuilt_line_extractors(case)
    assert path.relative_to(path.parents[1]).as_posix() == LINE_EXTRACTOR_FILE
    extractor = LineExtractor.from_file(path)
    gray = np.load(case / "expected" / "line_input.npy")
    expected = np.load(case / "expected" / "line_output.npy")
    got = extractor.line_map(gray)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE
    # the 8-bit image is the truncation of that map, as in the original
    lines = np.asarray(extractor.extract_lines(gray))
    assert np.array_equal(lines, got.astype(np.uint8))
