"""PixArt ICP: control injection, the T5 prompt cache, loading errors and batch independence."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core.colorize.pixart.injection import inject_pixart_controls
from colorflow_core.colorize.pixart.prompts import (
    MAX_SEQUENCE_LENGTH,
    PROMPT_CACHE_NAME,
    PromptEmbeddings,
    encode_manga_prompt,
)
from colorflow_core.errors import InputError, WeightsError
from colorflow_core.release.pixart import load_pixart_style
from colorflow_core.retrieve.canvas import canvas_mask
from colorflow_core.sizes import PageSize
from colorflow_core.testing.pixart import write_pixart_base, write_pixart_style

SIZE = PageSize(64, 64)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixart")
    write_pixart_style(root / "release", "sketch", seed=1)
    write_pixart_base(root / "base", text_encoder=True)
    return root


@pytest.fixture(scope="module")
def pipe(release):
    return load_pixart_style(release / "release", release / "base", "sketch").pipeline()


def _canvas(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = SIZE.canvas
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _transformer_inputs(pipe, rows: int = 2):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(rows, 4, 16, 16, generator=g)
    t = torch.tensor(500)
    return x, t, pipe.micro_conditions(SIZE.canvas, rows)


# ---- injection ----

def test_controls_are_added_after_their_blocks_and_removed_on_exit(pipe):
    transformer = pipe.transformer
    x, t, kw = _transformer_inputs(pipe)
    blocks = transformer.transformer_blocks
    seen = {}
    recorders = [blocks[k].register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(k, o.clone()))
                 for k in range(len(blocks))]
    try:
        plain = pipe.predict(x, t, None, kw, use_cfg=True)
        plain_outputs = dict(seen)
        tokens = plain_outputs[0].shape
        controls = [torch.full(tokens, 0.5), torch.full(tokens, -0.25)]
        with inject_pixart_controls(transformer, controls):
            pipe.predict(x, t, None, kw, use_cfg=True)
            # recorders were registered first, so they see block outputs before the additions
            block0_raw = seen[0]
        # block 0 saw the same input, so its raw output is unchanged; the addition fed block 1
        torch.testing.assert_close(block0_raw, plain_outputs[0])
        assert not torch.allclose(seen[1], plain_outputs[1])
        after = pipe.predict(x, t, None, kw, use_cfg=True)
    finally:
        for handle in recorders:
            handle.remove()
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    assert all(not b._forward_hooks for b in blocks)


def test_zero_controls_change_nothing(pipe):
    x, t, kw = _transformer_inputs(pipe)
    plain = pipe.predict(x, t, None, kw, use_cfg=True)
    tokens = (2, 64, pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim)
    with inject_pixart_controls(pipe.transformer, [torch.zeros(tokens)] * 2):
        torch.testing.assert_close(pipe.predict(x, t, None, kw, use_cfg=True), plain, rtol=0, atol=0)


def test_bad_controls(pipe):
    x, t, kw = _transformer_inputs(pipe)
    too_many = [torch.zeros(1)] * (len(pipe.transformer.transformer_blocks) + 1)
    with pytest.raises(InputError, match="guider outputs for a transformer"):
        with inject_pixart_controls(pipe.transformer, too_many):
            pass
    with pytest.raises(InputError, match="guider output 0 has shape"):
        with inject_pixart_controls(pipe.transformer, [torch.zeros(2, 3, 4)]):
            pipe.predict(x, t, None, kw, use_cfg=True)
    assert all(not b._forward_hooks for b in pipe.transformer.transformer_blocks)


# ---- prompt cache ----

def test_prompt_cache_round_trip(tmp_path, pipe):
    path = tmp_path / PROMPT_CACHE_NAME
    pipe.prompt.save(path)
    loaded = PromptEmbeddings.load(path)
    for name in ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"):
        assert torch.equal(getattr(loaded, name), getattr(pipe.prompt, name))


def test_prompt_cache_with_missing_or_misshapen_entries(tmp_path, pipe):
    from safetensors.torch import save_file

    save_file({"prompt_embeds": pipe.prompt.prompt_embeds.contiguous()}, str(tmp_path / "a.safetensors"))
    with pytest.raises(WeightsError, match="missing prompt_attention_mask"):
        PromptEmbeddings.load(tmp_path / "a.safetensors")
    with pytest.raises(WeightsError, match="do not form"):
        PromptEmbeddings(torch.zeros(1, 5, 8), torch.ones(1, 4), torch.zeros(1, 5, 8), torch.ones(1, 5))


def test_encode_manga_prompt_matches_t5(release):
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(release / "base" / "tokenizer")
    t5 = T5EncoderModel.from_pretrained(release / "base" / "text_encoder").eval()
    prompt = encode_manga_prompt(t5, tokenizer)
    assert prompt.prompt_embeds.shape == (1, MAX_SEQUENCE_LENGTH, t5.config.d_model)
    assert prompt.prompt_attention_mask.sum() == 2 and prompt.negative_prompt_attention_mask.sum() == 1  # "manga</s>", "</s>"
    ids = torch.full((1, MAX_SEQUENCE_LENGTH), tokenizer.pad_token_id)
    ids[0, :2] = torch.tensor(tokenizer.convert_tokens_to_ids(["manga", "</s>"]))
    mask = (torch.arange(MAX_SEQUENCE_LENGTH) < 2).long()[None]
    with torch.no_grad():
        reference = t5(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(prompt.prompt_embeds, reference)


def test_cache_is_computed_once_then_t5_is_never_loaded(release, tmp_path, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(release / "base", base)
    root = tmp_path / "release"
    write_pixart_style(root, "shading", seed=2, prompt_cache=False)
    first = load_pixart_style(root, base, "shading")
    assert (base / PROMPT_CACHE_NAME).is_file()
    assert first.prompt.prompt_embeds.shape[1] == MAX_SEQUENCE_LENGTH

    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("T5 must not be loaded when the cache exists")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    second = load_pixart_style(root, base, "shading")
    assert torch.equal(second.prompt.prompt_embeds, first.prompt.prompt_embeds)


def test_cache_from_another_model_is_refused(release, tmp_path):
    root = tmp_path / "release"
    folder = write_pixart_style(root, "sketch", seed=1)
    PromptEmbeddings(torch.zeros(1, 6, 40), torch.ones(1, 6, dtype=torch.int64),
                     torch.zeros(1, 6, 40), torch.ones(1, 6, dtype=torch.int64)).save(folder / PROMPT_CACHE_NAME)
    with pytest.raises(WeightsError, match="40 wide but the transformer expects caption_channels = 24"):
        load_pixart_style(root, release / "base", "sketch")


# ---- loading errors ----

def test_missing_style_folder(release, tmp_path):
    with pytest.raises(WeightsError, match="shading.*TencentARC/ColorFlow release"):
        load_pixart_style(tmp_path, release / "base", "shading")
    with pytest.raises(InputError, match="style"):
        load_pixart_style(release / "release", release / "base", "screenstyle")


def test_missing_base_parts(release, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(release / "base", base)
    shutil.rmtree(base / "vae")
    with pytest.raises(WeightsError, match="missing vae/"):
        load_pixart_style(release / "release", base, "sketch")


def test_no_cache_and_no_t5(release, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(release / "base", base, ignore=shutil.ignore_patterns("text_encoder", PROMPT_CACHE_NAME))
    root = tmp_path / "release"
    write_pixart_style(root, "sketch", prompt_cache=False)
    with pytest.raises(WeightsError, match="no prompt cache.*text_encoder/ and tokenizer/"):
        load_pixart_style(root, base, "sketch")


# ---- the pipeline ----

def test_page_result_does_not_depend_on_the_batch(pipe):
    canvases, mask = [_canvas(1), _canvas(2)], canvas_mask(SIZE)
    calls = []
    batched = pipe(canvases, [mask] * 2, steps=2, seed=7, batch_size=2, output_type="np",
                   progress=lambda d, t: calls.append((d, t)))
    alone = pipe(canvases[1:], [mask], steps=2, seed=8, output_type="np")[0]  # page 1 of the batch used seed 7 + 1
    np.testing.assert_allclose(batched[1], alone, rtol=0, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-2
    assert calls == [(2, 4), (4, 4)]


def test_pil_output(pipe):
    images = pipe([_canvas(0)], [canvas_mask(SIZE)], steps=1)
    assert len(images) == 1 and images[0].size == SIZE.canvas and images[0].mode == "RGB"


def test_interrupt_between_steps(pipe):
    class Stop(Exception):
        pass

    def check():
        raise Stop

    with pytest.raises(Stop):
        pipe([_canvas(0)], [canvas_mask(SIZE)], steps=2, check_interrupt=check)


def test_bad_pipeline_input(pipe):
    canvas, mask = _canvas(0), canvas_mask(SIZE)
    with pytest.raises(InputError, match="masks"):
        pipe([canvas], [], steps=1)
    with pytest.raises(InputError, match="steps"):
        pipe([canvas], [mask], steps=0)
    with pytest.raises(InputError, match="differ in size"):
        pipe([canvas], [mask.resize((64, 64))], steps=1)
    with pytest.raises(InputError, match="same size"):
        pipe([canvas, canvas.resize((64, 64))], [mask, mask.resize((64, 64))], steps=1)
    odd = canvas.resize((100, 128))
    with pytest.raises(InputError, match="multiple of 16"):
        pipe([odd], [mask.resize((100, 128))], steps=1)


def test_missing_hub_base_says_what_to_download(release, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(WeightsError, match="PixArt-alpha/PixArt-XL-2-1024-MS is not in the Hugging Face cache"):
        load_pixart_style(release / "release", None, "sketch")
