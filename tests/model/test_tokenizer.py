"""The Qwen tokenizer rebuilt offline from dashscope's ranks, and vocabulary subsets."""

from __future__ import annotations

import json

import pytest

from stts_train.config import load_config
from stts_train.errors import STTSError
from stts_train.models.tokenizer import (
    SubsetTokenizer,
    build_subset,
    load_tokenizer,
    qwen_tokenizer,
    subset_overrides,
)


def test_known_qwen_ids_and_round_trip():
    tok = qwen_tokenizer()
    assert tok.encode("Hello", add_special_tokens=False).ids == [9707]
    assert tok.encode(" world", add_special_tokens=False).ids == [1879]
    assert tok.token_to_id("<|im_start|>") == 151644 and tok.token_to_id("<|im_end|>") == 151645
    # Molmo2's extra tokens sit where transformers' Molmo2Config expects them
    assert [
        tok.token_to_id(t)
        for t in ("<im_start>", "<im_end>", "<im_patch>", "<frame_start>", "<frame_end>")
    ] == [151936, 151937, 151938, 151943, 151944]
    for text in [
        "naïve café 北京 12.5",
        "<|im_start|>user\n<frame_start><im_patch><frame_end>?<|im_end|>",
        "  spaces\n\n",
    ]:
        assert (
            tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            == text
        )


def test_subset_tokenizer_matches_full_tokenization(tmp_path):
    base = qwen_tokenizer()
    texts = ["Which digit moves?", "left", " 0.5 "]
    base_ids, vocab_size = build_subset(texts, base)
    sub = SubsetTokenizer(base, base_ids)
    for text in texts:
        ids = sub.encode(text).ids
        assert [base_ids[i] for i in ids] == base.encode(text, add_special_tokens=False).ids
        assert sub.decode(ids) == text
        assert max(ids) < vocab_size  # text tokens are all predictable
    assert sub.token_to_id("<im_patch>") >= vocab_size  # Molmo2 tokens come after
    with pytest.raises(STTSError, match="not in the vocabulary subset"):
        sub.encode("elephant")
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"base_ids": base_ids}))
    job = load_config("configs/demo.yaml", subset_overrides(str(path), base_ids, vocab_size, base))
    assert job.model.llm.total_vocab_size == len(base_ids)
    loaded = load_tokenizer(job.model)
    assert loaded.encode("left").ids == sub.encode("left").ids
