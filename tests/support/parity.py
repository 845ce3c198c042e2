"""The parity case folders (`$COLORFLOW_PARITY_DIR`, default ../shared/parity) and their pytest params."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def parity_root() -> Path:
    """`$COLORFLOW_PARITY_DIR`, default `../shared/parity` relative to the repository root."""
    return Path(os.environ.get("COLORFLOW_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))


def parity_cases(kind: str) -> list[Path]:
    """Every case folder under the parity root whose case.json and layout say it is of ``kind``.

    kind: "sd" (weights/GraySD), "pixart" (weights/sketch or weights/shading), "screenstyle"
    (a ``weights_recipe`` in case.json).
    """
    root = parity_root()
    if not root.is_dir():
        return []
    found = []
    for case_json in sorted(root.glob("*/case.json")):
        case = case_json.parent
        meta = json.loads(case_json.read_text())
        if kind == "sd" and (case / "weights" / "GraySD" / "config.json").is_file():
            found.append(case)
        elif kind == "pixart" and any((case / "weights" / s / "config.json").is_file() for s in ("sketch", "shading")):
            found.append(case)
        elif kind == "screenstyle" and "weights_recipe" in meta:
            found.append(case)
    return found


def parity_params(kind: str):
    """pytest params over the cases of ``kind``; one skipped param with the reason when there are none."""
    cases = parity_cases(kind)
    if not cases:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no {kind} parity case found under {parity_root()} (set COLORFLOW_PARITY_DIR)"))]
    return [pytest.param(c, id=c.name) for c in cases]
