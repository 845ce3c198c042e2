"""The native graph (ColorFlow Apply → KSampler with a LoraLoader and a ControlNet) in a real ComfyUI server.

Needs COMFYUI_DIR (a ComfyUI checkout) and a Python with ComfyUI's requirements plus ours (this
interpreter, or COMFYUI_PYTHON for the server). The server gets a temporary --base-directory holding
our pack, the self-contained tiny release (retrieval + Guided Upscale), and the native tiny files:
an SD1.5-detected checkpoint, a style LoRA, a ControlNet and a GraySD/-only release (tests/native_tiny.py).
"""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.support.native import comfy_or_skip

comfy_or_skip()

from tests.support.comfy_server import REPO, base_with_pack, running_server  # noqa: E402
from tests.support.comfy_tiny import TINY_RUN, write_tiny_release  # noqa: E402
from tests.support.comfy_workflow import FREE_CHOICE, load_workflow, to_api, validate_workflow  # noqa: E402
from tests.support.native_tiny import write_native_files  # noqa: E402

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

WORKFLOW = REPO / "workflows" / "manga_sequence_native.json"
NATIVE_NODES = ("ColorFlowNativeLoader", "ColorFlowApply", "ColorFlowCropUpscale")
PAGE, CANVAS, HIRES = (64, 96), (128, 192), (96, 144)


def _tiny_overrides(names: dict[str, str]) -> dict[tuple[str, str], object]:
    return {
        ("CheckpointLoaderSimple", "ckpt_name"): names["checkpoint"],
        ("LoraLoader", "lora_name"): names["lora"],
        ("ControlNetLoader", "control_net_name"): names["controlnet"],
        ("ColorFlowNativeLoader", "release"): names["release"],
        **TINY_RUN,
        ("KSampler", "steps"): 2,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = base_with_pack(tmp_path_factory.mktemp("comfy_native"))
    models = base / "models"
    write_tiny_release(models / "colorflow" / "tiny", models / "diffusers" / "sd_tiny")
    names = write_native_files(models)
    with running_server(base) as srv:
        srv.names = names
        yield srv


@pytest.fixture(scope="module")
def definitions(server):
    info = server.get("/object_info")
    missing = [n for n in NATIVE_NODES if n not in info]
    assert not missing, f"native nodes not registered by the pack: {missing}\n{server.log_tail()}"
    return {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in info.items()}


def _prompt(server, definitions) -> dict:
    return to_api(load_workflow(WORKFLOW), definitions, _tiny_overrides(server.names))


def _node(prompt: dict, kind: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == kind)


def _error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"], indent=1)[-3000:]
    return next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")


def test_native_workflow_matches_the_servers_definitions(definitions):
    assert validate_workflow(load_workflow(WORKFLOW), definitions, FREE_CHOICE) == []
    kinds = {n["type"] for n in load_workflow(WORKFLOW)["nodes"]}
    assert {"KSampler", "LoraLoader", "ControlNetApplyAdvanced", "ControlNetLoader", "VAEDecode"} <= kinds


def _run_images(server, prompt: dict) -> dict[str, list[Image.Image]]:
    """Run ``prompt``; the images of every Save/Preview node by filename prefix (previews by node id)."""
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    saved = {}
    for node_id, output in entry["outputs"].items():
        if prompt[node_id]["class_type"] in ("SaveImage", "PreviewImage"):
            files = [server.base / ("output" if i["type"] == "output" else "temp") / i["subfolder"] / i["filename"]
                     for i in output["images"]]
            saved[prompt[node_id]["inputs"].get("filename_prefix", node_id)] = [Image.open(f).copy() for f in files]
    return saved


def test_native_workflow_runs_with_ksampler_lora_and_controlnet(server, definitions):
    prompt = _prompt(server, definitions)
    saved = _run_images(server, prompt)
    pages = saved.pop("colorflow/manga_native")
    assert [p.size for p in pages] == [HIRES] * 2
    previews = sorted(([im.size for im in images] for images in saved.values()))
    assert previews == [[CANVAS] * 2, [CANVAS] * 2]  # the retrieved and the colourised canvases
    assert "lora key not loaded" not in server.log.read_text(errors="replace")

    # the guider and the ColorFlow LoRA really act inside the server's KSampler
    apply = _node(prompt, "ColorFlowApply")
    prompt[apply]["inputs"].update(guider_strength=0.0, lora_strength=0.0)
    plain = _run_images(server, prompt)["colorflow/manga_native"]
    assert any(a.tobytes() != b.tobytes() for a, b in zip(pages, plain))


def test_latent_of_another_size_is_refused(server, definitions):
    prompt = _prompt(server, definitions)
    prompt["900"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    prompt[_node(prompt, "KSampler")]["inputs"]["latent_image"] = ["900", 0]
    error = _error(server.run(prompt))
    assert error["exception_type"] == "colorflow_core.errors.InputError"
    assert "the sampled latent is 64x64 px but the canvas is 128x192" in error["exception_message"]


def test_latent_batch_of_another_page_count_is_refused(server, definitions):
    prompt = _prompt(server, definitions)
    prompt["900"] = {"class_type": "EmptyLatentImage", "inputs": {"width": CANVAS[0], "height": CANVAS[1],
                                                                  "batch_size": 1}}
    prompt[_node(prompt, "KSampler")]["inputs"]["latent_image"] = ["900", 0]
    error = _error(server.run(prompt))
    assert error["exception_type"] == "colorflow_core.errors.InputError"
    assert "1 page(s) per prompt but the retrieval context has 2" in error["exception_message"]


def test_context_of_another_page_count_is_refused_by_crop_and_upscale(server, definitions):
    prompt = _prompt(server, definitions)
    retrieve, pages = _node(prompt, "ColorFlowRetrieveReferences"), _node(prompt, "ColorFlowLoadImageSequence")
    prompt["901"] = {"class_type": "ColorFlowLoadImageSequence", "inputs": dict(prompt[pages]["inputs"], limit=1)}
    prompt["900"] = {"class_type": "ColorFlowRetrieveReferences",
                     "inputs": dict(prompt[retrieve]["inputs"], pages=["901", 0], names=["901", 1])}
    prompt[_node(prompt, "ColorFlowCropUpscale")]["inputs"]["context"] = ["900", 0]
    error = _error(server.run(prompt))
    assert error["exception_type"] == "colorflow_core.errors.InputError"
    assert error["exception_message"].startswith("ColorFlow Crop and Upscale: 2 decoded canvases for a context of 1 pages")


def test_sd9_release_runs_the_native_workflow(server, definitions):
    """A release whose GraySD/ guider has 9 conditioning channels runs through ColorFlow Apply and the
    server's KSampler, and its guider acts (its pages differ from the 5-channel release's)."""
    from tests.support.native_tiny import DIFFUSERS_UNET, LORA_RANK, write_graysd

    write_graysd(server.base / "models" / "colorflow" / "native_tiny_sd9", DIFFUSERS_UNET, seed=16,
                 lora_rank=LORA_RANK, guider_channels=9)
    info = server.get("/object_info")  # the release list as it is now
    fresh = {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in info.items()}
    five = _run_images(server, _prompt(server, fresh))["colorflow/manga_native"]
    prompt = to_api(load_workflow(WORKFLOW), fresh,
                    {**_tiny_overrides(server.names), ("ColorFlowNativeLoader", "release"): "native_tiny_sd9"})
    nine = _run_images(server, prompt)["colorflow/manga_native"]
    assert [p.size for p in nine] == [HIRES] * 2
    assert any(a.tobytes() != b.tobytes() for a, b in zip(nine, five))
