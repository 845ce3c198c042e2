"""Reading ComfyUI UI-format workflows without ComfyUI: validation against node definitions and
conversion to the API format the server runs (what the frontend does when the user queues).

A node definition is what ComfyUI's /object_info gives per class: {"input": INPUT_TYPES(),
"output": RETURN_TYPES}; `definitions_from_classes` builds the same from node classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# Frontend-only nodes: never sent to the server.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MODE_MUTED, MODE_BYPASSED = 2, 4
# Combo inputs whose lists depend on the user's disk (model folders, uploads): any string is fine in
# a shipped workflow.
FREE_CHOICE = frozenset({
    "ColorFlowLoadModel.release", "ColorFlowLoadModel.base", "ColorFlowNativeLoader.release",
    "ColorFlowExtractLineArt.release", "ColorFlowScreentonePreprocess.release", "LoadImage.image",
    "CheckpointLoaderSimple.ckpt_name", "LoraLoader.lora_name", "ControlNetLoader.control_net_name",
})

# The core nodes our workflows use, as ComfyUI 0.8 defines them (captured from its nodes.py); the
# real-ComfyUI tests check the workflows against the server's own /object_info as well.
CORE_NODES: dict[str, dict[str, Any]] = {
    name: definition
    for name, definition in json.loads((Path(__file__).resolve().parents[1] / "data" / "comfyui_core_nodes.json").read_text()).items()
    if not name.startswith("_")
}


def definitions_from_classes(classes: dict[str, type]) -> dict[str, dict[str, Any]]:
    return {name: {"input": cls.INPUT_TYPES(), "output": tuple(cls.RETURN_TYPES)} for name, cls in classes.items()}


def ordered_inputs(definition: dict[str, Any]) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of every input, required first, in declaration order."""
    inputs = definition["input"]
    result = []
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            spec = list(spec)
            result.append((name, spec[0], spec[1] if len(spec) > 1 and spec[1] else {}))
    return result


def is_widget(input_type: Any, options: dict) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(input_type, list) or input_type == "COMBO" or input_type in WIDGET_TYPES


def extra_widget_values(input_type: Any, options: dict) -> int:
    """Values the frontend stores after a widget's own: the seed control mode, the upload button."""
    return int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))


def widget_map(node: dict, definition: dict) -> tuple[dict[str, Any], list[str]]:
    """{input name: widget value} of a UI node, and the errors found reading widgets_values."""
    values = list(node.get("widgets_values") or [])
    result, errors, position = {}, [], 0
    for name, input_type, options in ordered_inputs(definition):
        if not is_widget(input_type, options):
            continue
        if position >= len(values):
            errors.append(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
            continue
        result[name] = values[position]
        position += 1 + extra_widget_values(input_type, options)
    if position != len(values):
        errors.append(f"node {node['id']} ({node['type']}): {len(values)} widget values, expected {position}")
    return result, errors


def check_value(name: str, input_type: Any, options: dict, value: Any) -> str | None:
    """Why ``value`` is not acceptable for the input (None if it is)."""
    choices = input_type if isinstance(input_type, list) else options.get("options")
    if choices is not None:
        return None if value in choices else f"{name}={value!r} not in {choices}"
    kinds = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}
    expected = kinds.get(input_type)
    if expected is None:
        return None
    if not isinstance(value, expected) or (input_type != "BOOLEAN" and isinstance(value, bool)):
        return f"{name}={value!r} is not {input_type}"
    if "min" in options and value < options["min"]:
        return f"{name}={value!r} below min {options['min']}"
    if "max" in options and value > options["max"]:
        return f"{name}={value!r} above max {options['max']}"
    return None


def validate_workflow(workflow: dict, definitions: dict[str, dict], free_choice: set[str] = frozenset()) -> list[str]:
    """Every problem that would stop the frontend from loading or the server from running it.

    ``free_choice``: combo inputs ("Type.input") whose lists depend on the user's files (model
    folders, uploaded images), so any string is accepted there.
    """
    errors: list[str] = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        errors.append("duplicate node ids")
    links = {link[0]: link for link in workflow.get("links", [])}
    if workflow.get("last_node_id", 0) < max(nodes, default=0):
        errors.append("last_node_id is smaller than a node id")
    if workflow.get("last_link_id", 0) < max(links, default=0):
        errors.append("last_link_id is smaller than a link id")
    for node in nodes.values():
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if kind not in definitions:
            errors.append(f"node {node['id']}: unknown node type {kind!r}")
            continue
        definition = definitions[kind]
        specs = {name: (t, o) for name, t, o in ordered_inputs(definition)}
        required = set((definition["input"].get("required") or {}))
        widgets, widget_errors = widget_map(node, definition)
        errors += widget_errors
        for name, value in widgets.items():
            if f"{kind}.{name}" in free_choice:
                if not isinstance(value, str):
                    errors.append(f"node {node['id']} ({kind}): {name}={value!r} is not a string")
                continue
            problem = check_value(name, *specs[name], value)
            if problem:
                errors.append(f"node {node['id']} ({kind}): {problem}")
        linked = set()
        for slot in node.get("inputs", []):
            name = slot["name"]
            if name not in specs:
                errors.append(f"node {node['id']} ({kind}): unknown input {name!r}")
                continue
            if slot.get("link") is None:
                continue
            link = links.get(slot["link"])
            if link is None:
                errors.append(f"node {node['id']} ({kind}): input {name!r} uses missing link {slot['link']}")
                continue
            _, origin, origin_slot, target, target_slot, link_type = link
            expected_type = specs[name][0]
            origin_node = nodes.get(origin)
            if target != node["id"] or node["inputs"][target_slot]["name"] != name:
                errors.append(f"link {link[0]}: target does not match node {node['id']} input {name!r}")
            if origin_node is None:
                errors.append(f"link {link[0]}: origin node {origin} missing")
                continue
            origin_outputs = definitions.get(origin_node["type"], {}).get("output", ())
            if origin_slot >= len(origin_outputs) or origin_outputs[origin_slot] != expected_type:
                errors.append(f"link {link[0]}: {origin_node['type']} output {origin_slot} does not give "
                              f"{expected_type} for {kind}.{name}")
            if link_type != expected_type:
                errors.append(f"link {link[0]}: type {link_type!r}, input {kind}.{name} expects {expected_type!r}")
            out_slot = origin_node["outputs"][origin_slot] if origin_slot < len(origin_node.get("outputs", [])) else None
            if out_slot is None or link[0] not in (out_slot.get("links") or []):
                errors.append(f"link {link[0]}: not listed in the outputs of node {origin}")
            linked.add(name)
        for name in required - linked:
            if not is_widget(*specs[name]) and node.get("mode", 0) == 0:
                errors.append(f"node {node['id']} ({kind}): required input {name!r} is not connected")
    for link_id, (_, origin, origin_slot, target, target_slot, _) in links.items():
        target_node = nodes.get(target)
        if target_node is None or target_slot >= len(target_node.get("inputs", [])) \
                or target_node["inputs"][target_slot].get("link") != link_id:
            errors.append(f"link {link_id}: not attached to input {target_slot} of node {target}")
    return errors


def to_api(workflow: dict, definitions: dict[str, dict], overrides: dict[tuple[str, str], Any] | None = None) -> dict:
    """The API-format prompt the frontend would queue: muted / frontend-only nodes dropped, links
    from them removed, widgets by name. ``overrides``: {(node type, input name): value}."""
    overrides = overrides or {}
    active = {node["id"]: node for node in workflow["nodes"]
              if node["type"] not in FRONTEND_ONLY and node.get("mode", 0) not in (MODE_MUTED, MODE_BYPASSED)}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node_id, node in active.items():
        definition = definitions[node["type"]]
        inputs, _ = widget_map(node, definition)
        for slot in node.get("inputs", []):
            link = links.get(slot.get("link"))
            if link is not None and link[1] in active:
                inputs[slot["name"]] = [str(link[1]), link[2]]
        for (kind, name), value in overrides.items():
            if kind == node["type"]:
                inputs[name] = value
        prompt[str(node_id)] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())
