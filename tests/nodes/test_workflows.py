"""The shipped workflows load and convert against our node definitions (no ComfyUI needed)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.support.comfy_workflow import (
    CORE_NODES,
    FREE_CHOICE,
    FRONTEND_ONLY,
    definitions_from_classes,
    extra_widget_values,
    is_widget,
    load_workflow,
    ordered_inputs,
    to_api,
    validate_workflow,
)

REPO = Path(__file__).resolve().parents[2]
# Every shipped workflow (checked against our node classes + the core nodes ComfyUI 0.8 defines).
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def definitions():
    from nodes import NODE_CLASS_MAPPINGS

    return {**CORE_NODES, **definitions_from_classes(NODE_CLASS_MAPPINGS)}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path, definitions):
    workflow = load_workflow(path)
    assert workflow.get("version") == 0.4
    assert validate_workflow(workflow, definitions, FREE_CHOICE) == []
    used = {node["type"] for node in workflow["nodes"]} - FRONTEND_ONLY
    assert {"ColorFlowLoadModel", "ColorFlowRetrieveReferences", "SaveImage"} <= used
    # self-contained graphs colorize with our node, native ones with the user's KSampler
    assert "ColorFlowInContextColorize" in used or {"ColorFlowApply", "KSampler", "ColorFlowCropUpscale"} <= used


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_folders_exist(path):
    """Every folder a shipped workflow reads is shipped with the pack and holds images."""
    from nodes.paths import folder_images

    for node in load_workflow(path)["nodes"]:
        if node["type"] in ("ColorFlowLoadImageSequence", "ColorFlowReferencePool") and node["widgets_values"][0]:
            assert folder_images(node["widgets_values"][0], node["type"]), node


def test_validator_catches_broken_workflows(definitions):
    """The checker itself fails on each kind of defect (so a pass above means something)."""
    good = load_workflow(REPO / "workflows" / "manga_sequence.json")

    def broken(change):
        workflow = copy.deepcopy(good)
        change(workflow)
        return validate_workflow(workflow, definitions, FREE_CHOICE)

    def node(workflow, kind):
        return next(n for n in workflow["nodes"] if n["type"] == kind)

    assert broken(lambda w: node(w, "ColorFlowInContextColorize").update(type="NoSuchNode"))
    assert broken(lambda w: node(w, "ColorFlowInContextColorize")["widgets_values"].pop())
    assert broken(lambda w: node(w, "ColorFlowInContextColorize")["widgets_values"].__setitem__(0, 0))  # steps < 1
    assert broken(lambda w: node(w, "ColorFlowInContextColorize")["widgets_values"].__setitem__(1, "high"))
    assert broken(lambda w: node(w, "ColorFlowRetrieveReferences")["widgets_values"].__setitem__(0, "1x1"))
    assert broken(lambda w: w["links"][0].__setitem__(5, "IMAGE"))  # wrong link type
    assert broken(lambda w: w["links"].pop())  # dangling input link
    assert broken(lambda w: node(w, "ColorFlowGuidedUpscale")["inputs"][1].update(link=None))  # required missing


def test_api_conversion(definitions):
    workflow = load_workflow(REPO / "workflows" / "manga_sequence.json")
    prompt = to_api(workflow, definitions, {("ColorFlowInContextColorize", "steps"): 2})
    kinds = {entry["class_type"] for entry in prompt.values()}
    assert "Note" not in kinds and "LoadImage" not in kinds  # frontend-only and muted nodes dropped
    colorize = next(e for e in prompt.values() if e["class_type"] == "ColorFlowInContextColorize")
    assert colorize["inputs"]["steps"] == 2 and colorize["inputs"]["seed"] == 0
    assert colorize["inputs"]["batch_size"] == 0 and colorize["inputs"]["generator_device"] == "cpu"  # after "fixed"
    pool = next(e for e in prompt.values() if e["class_type"] == "ColorFlowReferencePool")
    assert "references" not in pool["inputs"]  # its source is muted
    retrieve_id, retrieve = next((k, e) for k, e in prompt.items() if e["class_type"] == "ColorFlowRetrieveReferences")
    assert retrieve["inputs"]["pool"][0] in prompt and isinstance(retrieve["inputs"]["pool"][1], int)
    assert colorize["inputs"]["context"] == [retrieve_id, 0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_leave_cfg_and_draws_at_the_defaults(path, definitions):
    """cfg 0 = the loaded style's own default (7.5 screenstyle, 4.5 sketch / shading), so a workflow
    whose style is switched never keeps the other pipeline's guidance; the draws are made on the CPU."""
    prompt = to_api(load_workflow(path), definitions)
    for entry in prompt.values():
        if entry["class_type"] == "ColorFlowInContextColorize":
            assert entry["inputs"]["cfg"] == 0
        if "generator_device" in entry["inputs"]:
            assert entry["inputs"]["generator_device"] == "cpu", entry["class_type"]


SEED_INPUTS = ("seed", "noise_seed")  # ComfyUI's frontend gives these a control widget ("randomize" unless saved)


def test_every_seed_input_declares_its_control(definitions):
    """So the shipped workflows can save the control's mode (else the frontend adds one set to randomize)."""
    from nodes import NODE_CLASS_MAPPINGS

    for kind in NODE_CLASS_MAPPINGS:
        for name, _, options in ordered_inputs(definitions[kind]):
            if name in SEED_INPUTS:
                assert options.get("control_after_generate"), f"{kind}.{name}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_shipped_seeds_are_fixed(path, definitions):
    """A shipped workflow gives the same pages on every run: no seed control set to randomize."""
    controls = 0
    for node in load_workflow(path)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        values, position = node.get("widgets_values") or [], 0
        for name, input_type, options in ordered_inputs(definitions[node["type"]]):
            if not is_widget(input_type, options):
                continue
            if options.get("control_after_generate"):
                controls += 1
                assert values[position + 1] == "fixed", f"node {node['id']} ({node['type']}).{name}: {values[position + 1]!r}"
            position += 1 + extra_widget_values(input_type, options)
    assert controls >= 2  # colorize (or KSampler + Apply) and the upscale


TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT = 30, 20, 24  # LiteGraph's title bar, slot row and widget row


def _box(node: dict) -> tuple[float, float, float, float]:
    """The node's rectangle on the canvas, title bar included (``pos`` is the body's top-left corner)."""
    (x, y), (width, height) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def _least_height(node: dict, definition: dict) -> int:
    """What the frontend needs for the node's slot rows and widget rows (it grows a node to that)."""
    widgets = sum(1 + extra_widget_values(t, o) for _, t, o in ordered_inputs(definition) if is_widget(t, o))
    slots = max(len(node.get("inputs") or []) - widgets, len(node.get("outputs") or []), 0)
    return slots * SLOT_HEIGHT + widgets * WIDGET_HEIGHT


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_nodes_do_not_overlap_at_the_default_zoom(path, definitions):
    nodes = load_workflow(path)["nodes"]
    for node in nodes:
        if node["type"] not in FRONTEND_ONLY and node["type"] in definitions:
            assert node["size"][1] >= _least_height(node, definitions[node["type"]]), f"node {node['id']} too short"
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _box(a), _box(b)
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), \
                f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})"
