"""The pack in a real ComfyUI server (CPU, loopback only), on tiny random weights.

Needs a ComfyUI checkout: set COMFYUI_DIR to it and COMFYUI_PYTHON to an interpreter that has
ComfyUI's requirements plus ours (default: the interpreter running pytest). Skipped otherwise.
The server gets a temporary --base-directory: our pack linked into its custom_nodes/, a tiny
release in models/colorflow/tiny/, a tiny SD1.5-shaped base in models/diffusers/sd_tiny/.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from tests.support.comfy_server import PACK_NAME, REPO, base_with_pack, running_server
from tests.support.comfy_tiny import TINY_RUN, write_tiny_release
from tests.support.comfy_workflow import FREE_CHOICE, load_workflow, to_api, validate_workflow

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
TINY = {**TINY_RUN, ("ColorFlowInContextColorize", "steps"): 2}

if not COMFYUI_DIR:
    pytest.skip("COMFYUI_DIR is not set: point it to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) "
                "to run the real-ComfyUI test; see 'Testing with a real ComfyUI' in README.md", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = base_with_pack(tmp_path_factory.mktemp("comfy_base"))
    write_tiny_release(base / "models" / "colorflow" / "tiny", base / "models" / "diffusers" / "sd_tiny")
    with running_server(base) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_imports_and_every_node_is_listed(server, object_info):
    from nodes import NODE_CLASS_MAPPINGS

    log = server.log.read_text(errors="replace")
    pack_lines = [line for line in log.splitlines() if PACK_NAME in line]
    assert pack_lines, f"the pack was not loaded:\n{server.log_tail()}"
    assert not any("IMPORT FAILED" in line for line in pack_lines), "\n".join(pack_lines)
    for name in NODE_CLASS_MAPPINGS:
        assert name in object_info, f"{name} missing from /object_info"
        assert object_info[name]["python_module"] == f"custom_nodes.{PACK_NAME}"
        assert object_info[name]["category"] == "ColorFlow"
    assert object_info["ColorFlowLoadModel"]["input"]["required"]["release"][0] == ["tiny"]
    assert "diffusers/sd_tiny" in object_info["ColorFlowLoadModel"]["input"]["required"]["base"][0]


@pytest.mark.parametrize("name", ["manga_sequence.json", "storyboard_sequence.json"])
def test_workflows_match_the_servers_definitions(object_info, name):
    definitions = {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in object_info.items()}
    assert validate_workflow(load_workflow(REPO / "workflows" / name), definitions, FREE_CHOICE) == []


def test_workflow_templates_are_listed(server):
    templates = server.get("/workflow_templates")
    assert set(templates.get(PACK_NAME, [])) >= {"manga_sequence", "storyboard_sequence"}


def _manga_prompt(object_info) -> dict:
    definitions = {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in object_info.items()}
    return to_api(load_workflow(REPO / "workflows" / "manga_sequence.json"), definitions, TINY)


def test_manga_workflow_runs(server, object_info):
    prompt = _manga_prompt(object_info)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    saved = {}
    for node_id, output in entry["outputs"].items():
        if prompt[node_id]["class_type"] == "SaveImage":
            prefix = prompt[node_id]["inputs"]["filename_prefix"]
            saved[prefix] = [server.base / "output" / i["subfolder"] / i["filename"] for i in output["images"]]
    assert set(saved) == {"colorflow/manga", "colorflow/manga_hires"}
    assert [Image.open(p).size for p in saved["colorflow/manga"]] == [(64, 96)] * 2
    assert [Image.open(p).size for p in saved["colorflow/manga_hires"]] == [(96, 144)] * 2
    previews = [o for k, o in entry["outputs"].items() if prompt[k]["class_type"] == "PreviewImage"]
    assert len(previews) == 1 and len(previews[0]["images"]) == 2  # one canvas per page


@pytest.fixture(scope="module")
def sketch_run(server) -> dict:
    """The sketch style added to the server's tiny release (PixArt guider + LoRA, line extractor) and a
    tiny PixArt-alpha base in models/diffusers/pixart_tiny (the node lists both as they appear), and the
    overrides that run the storyboard workflow on them: one 96x64 frame, 2 steps."""
    from colorflow_core.testing.pixart import write_pixart_base, write_pixart_style
    from colorflow_core.testing.preprocess import write_line_extractor

    release = server.base / "models" / "colorflow" / "tiny"
    write_pixart_style(release, "sketch", "tiny", seed=70)
    write_line_extractor(release, None, 80)
    base = write_pixart_base(server.base / "models" / "diffusers" / "pixart_tiny", "tiny", seed=60)
    # the hub folder's index, by which the node lists diffusers folders (the synthetic base has none)
    (base / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtAlphaPipeline", "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "transformer": ["diffusers", "PixArtTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return {**TINY, ("ColorFlowLoadModel", "base"): "diffusers/pixart_tiny", ("ColorFlowLoadImageSequence", "limit"): 1,
            ("ColorFlowRetrieveReferences", "width"): 96, ("ColorFlowRetrieveReferences", "height"): 64}


def _saved_pixels(server, prompt: dict, entry: dict) -> dict[str, list]:
    """{SaveImage prefix: the saved images' pixels} of a finished run."""
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    saved = {}
    for node_id, output in entry["outputs"].items():
        if prompt[node_id]["class_type"] == "SaveImage":
            files = [server.base / "output" / i["subfolder"] / i["filename"] for i in output["images"]]
            saved[prompt[node_id]["inputs"]["filename_prefix"]] = [list(Image.open(f).convert("RGB").getdata())
                                                                   for f in files]
    return saved


def test_cfg_zero_takes_the_sketch_styles_default(server, object_info, sketch_run):
    """The storyboard workflow (style sketch, PixArt) leaves cfg at 0: its pages are those of an explicit
    4.5 (PixArt's default), not those of 7.5 (SD1.5's, the node's old default) nor of CFG off (1.0)."""
    definitions = {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in object_info.items()}
    workflow = load_workflow(REPO / "workflows" / "storyboard_sequence.json")
    runs = {}
    for cfg in (None, 4.5, 7.5, 1.0):  # None: the workflow's own value
        overrides = dict(sketch_run) if cfg is None else {**sketch_run, ("ColorFlowInContextColorize", "cfg"): cfg}
        prompt = to_api(workflow, definitions, overrides)
        colorize = next(e for e in prompt.values() if e["class_type"] == "ColorFlowInContextColorize")
        assert colorize["inputs"]["cfg"] == (0 if cfg is None else cfg)
        runs[cfg] = _saved_pixels(server, prompt, server.run(prompt))
    assert set(runs[None]) == {"colorflow/storyboard", "colorflow/storyboard_hires"}
    assert runs[None] == runs[4.5]
    assert runs[None]["colorflow/storyboard"] != runs[7.5]["colorflow/storyboard"]
    assert runs[None]["colorflow/storyboard"] != runs[1.0]["colorflow/storyboard"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine where torch finds no GPU")
def test_cuda_draws_without_a_gpu_are_refused_clearly(server, object_info):
    prompt = _manga_prompt(object_info)
    upscale = next(k for k, v in prompt.items() if v["class_type"] == "ColorFlowGuidedUpscale")
    prompt[upscale]["inputs"]["generator_device"] = "cuda"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "ColorFlowGuidedUpscale"
    assert error["exception_type"] == "colorflow_core.errors.InputError"
    assert error["exception_message"].startswith("Guided Upscale: generator_device 'cuda' needs an NVIDIA GPU")


def test_bad_input_reaches_the_user_as_a_clear_message(server, object_info):
    # Before running: a missing release folder is refused by validation with an actionable text.
    prompt = _manga_prompt(object_info)
    loader = next(k for k, v in prompt.items() if v["class_type"] == "ColorFlowLoadModel")
    prompt[loader]["inputs"]["release"] = "gone"
    status, answer = server.post("/prompt", {"prompt": prompt})
    assert status == 400
    assert "'gone' was not found" in json.dumps(answer["node_errors"]) and "TencentARC/ColorFlow" in json.dumps(answer)

    # While running: Guided Upscale given 1 coloured page for a 2-page context.
    prompt = _manga_prompt(object_info)
    upscale = next(k for k, v in prompt.items() if v["class_type"] == "ColorFlowGuidedUpscale")
    pages = next(k for k, v in prompt.items() if v["class_type"] == "ColorFlowLoadImageSequence")
    prompt["900"] = {"class_type": "ColorFlowRetrieveReferences", "inputs": dict(
        next(v for v in prompt.values() if v["class_type"] == "ColorFlowRetrieveReferences")["inputs"])}
    prompt["901"] = {"class_type": "ColorFlowLoadImageSequence",
                     "inputs": dict(prompt[pages]["inputs"], limit=1)}
    prompt["900"]["inputs"].update(pages=["901", 0], names=["901", 1])
    prompt["902"] = {"class_type": "ColorFlowInContextColorize", "inputs": dict(
        next(v for v in prompt.values() if v["class_type"] == "ColorFlowInContextColorize")["inputs"],
        context=["900", 0])}
    prompt[upscale]["inputs"]["colored"] = ["902", 0]
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["exception_type"] == "colorflow_core.errors.InputError"
    assert error["exception_message"].startswith("Guided Upscale: 1 coloured pages but the context holds 2")


def test_sd9_release_runs_the_manga_workflow(server):
    """A release whose GraySD/ guider has 9 conditioning channels (a second release beside the server's
    5-channel one, on the same tiny base) runs the manga workflow end to end; its guider acts."""
    import shutil

    from colorflow_core.testing import SD_BASE_DIR, write_release

    release = server.base / "models" / "colorflow" / "tiny_sd9"
    write_release(release, guider_channels=9)
    shutil.rmtree(release / SD_BASE_DIR)  # the server's diffusers/sd_tiny is the same base (same seed)
    info = server.get("/object_info")  # the release list as it is now
    definitions = {k: {"input": v["input"], "output": tuple(v["output"])} for k, v in info.items()}
    workflow = load_workflow(REPO / "workflows" / "manga_sequence.json")
    runs = {}
    for name in ("tiny", "tiny_sd9"):
        prompt = to_api(workflow, definitions, {**TINY, ("ColorFlowLoadModel", "release"): name})
        runs[name] = _saved_pixels(server, prompt, server.run(prompt))
    assert [len(p) for p in runs["tiny_sd9"]["colorflow/manga_hires"]] == [96 * 144] * 2
    assert runs["tiny_sd9"]["colorflow/manga"] != runs["tiny"]["colorflow/manga"]
