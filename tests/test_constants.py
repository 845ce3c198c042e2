"""Constants live once (issue #12): the node widgets and socket types agree with the core's limits."""
from __future__ import annotations

import pytest

from colorflow_core.retrieve.canvas import MAX_TOP_K
from colorflow_core.runtime.performance import page_runs
from colorflow_core.runtime.seeding import MAX_SEED, WIDGET_MAX_SEED
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


def test_one_name_per_setting_across_engine_cli_and_nodes():
    """Every ColorizeSettings field is the CLI flag of the same name, and the In-Context Colorize
    widgets that set it carry that name too, with the engine's limits (options.py)."""
    from dataclasses import fields

    from colorflow_core import options
    from colorflow_core.cli import build_parser
    from colorflow_core.engine import ColorizeSettings

    colorize = build_parser()._subparsers._group_actions[0].choices["colorize"]
    flags = {flag for action in colorize._actions for flag in action.option_strings}
    settings = [f.name for f in fields(ColorizeSettings)]
    assert {options.cli_flag(name) for name in settings} <= flags
    assert not flags & {"--guidance", "--guider-scale", "--models"}
    widgets = NODE_CLASS_MAPPINGS["ColorFlowInContextColorize"].INPUT_TYPES()
    widgets = {**widgets["required"], **widgets["optional"]}
    assert {"steps", "cfg", "guider_strength", "seed", "batch_size", "generator_device"} <= set(settings) & set(widgets)
    assert (widgets["steps"][1]["max"], widgets["cfg"][1]["max"], widgets["guider_strength"][1]["max"]) == (
        options.MAX_STEPS, options.MAX_CFG, options.MAX_GUIDER_STRENGTH)
    native = NODE_CLASS_MAPPINGS["ColorFlowApply"].INPUT_TYPES()["required"]
    assert native["guider_strength"][1]["max"] == options.MAX_GUIDER_STRENGTH
