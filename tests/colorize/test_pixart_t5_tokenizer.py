"""The one-time PixArt prompt cache with a T5 tokenizer shipped as a SentencePiece `spiece.model`
(as PixArt-XL-2-1024-MS ships it): transformers 5 reads it only with sentencepiece + protobuf,
which is why requirements.txt lists them."""
from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

from colorflow_core.colorize.pixart.prompts import MAX_SEQUENCE_LENGTH, PROMPT_CACHE_NAME
from colorflow_core.release.pixart import load_pixart_style
from colorflow_core.testing.pixart import write_pixart_base, write_pixart_style

VOCAB = 24


def _spiece_tokenizer(folder: Path) -> "spm.SentencePieceProcessor":
    folder.mkdir(parents=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("manga pages in colour\n" * 40 + "a comic of drawings\n" * 40)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": MAX_SEQUENCE_LENGTH, "extra_ids": 0}))
    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))


def test_prompt_cache_is_made_with_a_sentencepiece_t5_tokenizer(tmp_path):
    from transformers import T5Config, T5EncoderModel

    base = write_pixart_base(tmp_path / "base", text_encoder=True)
    width = T5Config.from_pretrained(base / "text_encoder").d_model
    T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=3,
                            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
                   ).save_pretrained(base / "text_encoder")
    for f in (base / "tokenizer").iterdir():
        f.unlink()
    (base / "tokenizer").rmdir()
    processor = _spiece_tokenizer(base / "tokenizer")
    root = tmp_path / "release"
    write_pixart_style(root, "sketch", seed=1, prompt_cache=False)

    parts = load_pixart_style(root, base, "sketch")

    assert (base / PROMPT_CACHE_NAME).is_file()
    prompt = parts.prompt
    assert prompt.prompt_embeds.shape[:2] == (1, MAX_SEQUENCE_LENGTH)
    # "manga" → its SentencePiece pieces plus T5's </s>; "" → </s> alone
    assert int(prompt.prompt_attention_mask.sum()) == len(processor.encode("manga")) + 1
    assert int(prompt.negative_prompt_attention_mask.sum()) == 1
