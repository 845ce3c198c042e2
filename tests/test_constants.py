"""Constants live once (issue #12): the node widgets and socket types agree with the core's limits."""
from __future__ import annotations

import pytest

from colorflow_core.performance import page_runs
from colorflow_core.retrieval import MAX_TOP_K
from colorflow_core.seeding import MAX_SEED, WIDGET_MAX_SEED
from nodes import NODE_CLASS_MAPPINGS
from nodes import types as socket_types

pytestmark = pytest.mark.usefixtures("outside_comfyui")


def _inputs():
    for name, cls in sorted(NODE_CLASS_MAPPINGS.items()):
        inputs = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, spec in inputs.get(section, {}).items():
                yield name, input_name, spec


def test_every_seed_widget_stops_at_the_widget_maximum():
    seeds = {(name, input_name): spec[1]["max"] for name, input_name, spec in _inputs() if input_name.endswith("seed")}
    assert len(seeds) >= 5
    assert set(seeds.values()) == {WIDGET_MAX_SEED}, seeds
    # exact in ComfyUI's frontend (JavaScript doubles), and seed + i of any run's pages stays a valid seed
    assert WIDGET_MAX_SEED < 2**53 and WIDGET_MAX_SEED + 10**9 <= MAX_SEED < 2**64 - 5


def test_the_top_k_widget_stops_at_the_core_maximum():
    (spec,) = [spec for _, input_name, spec in _inputs() if input_name == "top_k"]
    assert spec[1]["max"] == MAX_TOP_K


def test_node_socket_types_are_the_shared_constants():
    shared = {value for key, value in vars(socket_types).items() if key.endswith("_TYPE")}
    used = {kind for _, _, (kind, *_) in _inputs() if isinstance(kind, str) and kind.startswith("COLORFLOW_")}
    used |= {kind for cls in NODE_CLASS_MAPPINGS.values() for kind in cls.RETURN_TYPES if kind.startswith("COLORFLOW_")}
    assert used == shared


def test_page_runs():
    assert page_runs(range(5), 2) == [[0, 1], [2, 3], [4]]
    assert page_runs([0, 1, 2, 4, 5, 6, 7], 3, lambda a, b: b == a + 1) == [[0, 1, 2], [4, 5, 6], [7]]
    assert page_runs("aabbb", 2, lambda a, b: a == b) == [["a", "a"], ["b", "b"], ["b"]]
    assert page_runs([], 4) == []
