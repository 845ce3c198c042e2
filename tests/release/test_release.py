"""release.py: locating the release, one clear error for missing files, loading base + GraySD."""
from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from colorflow_core.colorize.sd.injection import inject_guider_residuals
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.release.paths import (
    COMPONENTS,
    MODELS_ENV,
    RELEASE_REPO,
    ReleasePaths,
    download_patterns,
    find_release,
)
from colorflow_core.release.sd import encode_clip_prompts, load_graysd, load_sd_base
from colorflow_core.testing.sd import write_sd_release


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    return write_sd_release(tmp_path_factory.mktemp("release"), seed=7)


@pytest.fixture
def release_copy(tiny_release, tmp_path):
    return shutil.copytree(tiny_release, tmp_path / "release")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty hub cache and no $COLORFLOW_MODELS: nothing can be found locally."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv(MODELS_ENV, raising=False)
    return tmp_path / "hub"


def fake_hub_snapshot(cache, repo, files):
    """A hub cache entry as huggingface_hub lays it out (refs/main -> snapshots/<commit>/...)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    snapshot = repo_dir / "snapshots" / "0123abcd"
    for f in files:
        (snapshot / f).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / f).write_bytes(b"x")
    return snapshot


def test_missing_files_are_listed_in_one_error(tmp_path):
    paths = ReleasePaths(tmp_path)
    (tmp_path / "GraySD").mkdir()
    (tmp_path / "GraySD" / "config.json").write_text("{}")
    with pytest.raises(WeightsError) as err:
        paths.require(["graysd", "image_encoder", "screenstyle", "sketch_fusion"])
    message = str(err.value)
    for name in ("GraySD/diffusion_pytorch_model.safetensors or GraySD/diffusion_pytorch_model.bin",
                 "GraySD/unet_lora.bin", "image_encoder/config.json", "image_encoder/model.safetensors",
                 "latest_net_G_RGB2INTSCR.pth", "ScreenStyle/ScreenVAE/latest_net_dec.pth",
                 "sketch/MultiResNetModel.bin or GraySD/MultiResNetModel.bin"):
        assert name in message
    assert "GraySD/config.json" not in message  # present
    assert f"Put the {RELEASE_REPO} release" in message and str(tmp_path) in message
    assert "--release" in message and MODELS_ENV in message
    with pytest.raises(InputError, match="unknown release component"):
        paths.require(["graysd", "nonsense"])


def test_resolved_paths(tmp_path):
    paths = ReleasePaths(tmp_path)
    assert paths.graysd_guider == tmp_path / "GraySD/diffusion_pytorch_model.bin"
    (tmp_path / "GraySD").mkdir()
    (tmp_path / "GraySD/diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert paths.graysd_guider == tmp_path / "GraySD/diffusion_pytorch_model.safetensors"
    # Sketch / shading fusion nets: the style folder first, then GraySD's (the hub deleted theirs).
    assert paths.style_fusion("sketch") == tmp_path / "GraySD/MultiResNetModel.bin"
    (tmp_path / "sketch").mkdir()
    (tmp_path / "sketch/MultiResNetModel.bin").write_bytes(b"x")
    assert paths.style_fusion("sketch") == tmp_path / "sketch/MultiResNetModel.bin"
    assert paths.style_lora("shading") == tmp_path / "shading/transformer_lora.bin"
    assert paths.screenvae_decoder == tmp_path / "ScreenStyle/ScreenVAE/latest_net_dec.pth"
    assert paths.line_extractor == tmp_path / "LE/erika.pth"
    with pytest.raises(InputError):
        paths.style_dir("GraySD")


def test_find_release_explicit_env_and_errors(tmp_path, empty_hub, monkeypatch):
    explicit, env = tmp_path / "a", tmp_path / "b"
    explicit.mkdir(), env.mkdir()
    with pytest.raises(WeightsError, match="ColorFlow release was not found"):
        find_release()
    monkeypatch.setenv(MODELS_ENV, str(env))
    assert find_release() == env
    assert find_release(explicit) == explicit  # an explicit folder wins
    with pytest.raises(WeightsError, match="does not exist"):
        find_release(tmp_path / "missing")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "gone"))
    with pytest.raises(WeightsError, match=MODELS_ENV):
        find_release()


def test_find_release_in_hub_cache(empty_hub):
    snapshot = fake_hub_snapshot(empty_hub, RELEASE_REPO, ["GraySD/config.json"])
    assert find_release() == snapshot


def test_download_uses_per_component_patterns(empty_hub, monkeypatch):
    calls = []

    def fake_download(repo, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo, allow_patterns, local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(empty_hub / "downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(WeightsError, match="not found"):
        find_release(components=["graysd"])
    assert all(local for _, _, local in calls)  # no download unless allowed
    assert find_release(allow_download=True, progress=False, components=["graysd"]) == empty_hub / "downloaded"
    repo, patterns, local = calls[-1]
    assert repo == RELEASE_REPO and not local and patterns == download_patterns(["graysd"])
    assert "GraySD/unet_lora.bin" in patterns and not any(p.startswith(("sketch", "LE")) for p in patterns)

    def offline(repo, **kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(WeightsError, match="could not download"):
        find_release(allow_download=True, progress=False, components=["graysd"])


def test_every_component_has_patterns():
    assert set(download_patterns(COMPONENTS)) >= {"LE/erika.pth", "GraySD/MultiResNetModel.bin",
                                                   "shading/transformer_lora.bin", "image_encoder/config.json"}


def test_synthetic_release_runs_one_guided_step(tiny_release):
    base = load_sd_base(tiny_release / "base")
    assert base.scheduler_config["_class_name"] == "PNDMScheduler"
    paths = ReleasePaths(tiny_release)
    paths.require(["graysd", "image_encoder"])
    guider = load_graysd(paths, base.unet)
    embeds = encode_clip_prompts(base.text_encoder, base.tokenizer, ["", "manga"])
    assert embeds.shape == (2, 77, base.text_encoder.config.hidden_size)
    x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        res = guider(x, 800, cond)
        with inject_guider_residuals(base.unet, res):
            guided = base.unet(x, 800, embeds).sample
        unguided = base.unet(x, 800, embeds).sample
    assert guided.shape == x.shape and torch.isfinite(guided).all()
    assert not torch.allclose(guided, unguided, atol=1e-3)


def test_truncated_lora_is_named(release_copy):
    lora = release_copy / "GraySD/unet_lora.bin"
    lora.write_bytes(lora.read_bytes()[:1000])
    base = load_sd_base(release_copy / "base")
    with pytest.raises(WeightsError, match="unet_lora.bin"):
        load_graysd(ReleasePaths(release_copy), base.unet)
    assert not any(".lora_" in k for k in base.unet.state_dict())


def test_base_folder_errors(release_copy):
    weights = release_copy / "base/unet/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="unet") as err:
        load_sd_base(release_copy / "base")
    assert "truncated" in str(err.value)
    (release_copy / "base/tokenizer/merges.txt").unlink()
    with pytest.raises(WeightsError, match="tokenizer/merges.txt"):
        load_sd_base(release_copy / "base")
    with pytest.raises(WeightsError, match="does not exist"):
        load_sd_base(release_copy / "nowhere")


def test_base_from_hub_needs_cache_or_download(empty_hub):
    with pytest.raises(WeightsError, match="not in the hub cache"):
        load_sd_base(None)


def test_single_file_base_errors(tmp_path, tiny_release, empty_hub):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"not_a_unet.weight": torch.zeros(2)}, str(checkpoint))
    with pytest.raises(WeightsError, match="needs the SD1.5 configs"):
        load_sd_base(checkpoint)
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_sd_base(checkpoint, config=tiny_release / "base")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match=".safetensors"):
        load_sd_base(tmp_path / "model.ckpt")
