"""Fixtures of the `%llm serve` tests: tiny models that answer at length, a served in-process API."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def save_talkative(tiny: Path, path: Path) -> Path:
    """``tiny_llama`` whose end token's output row is zero: its logit is 0 while the largest of
    the other 300 random logits is positive, so greedy answers run to ``max_tokens``
    (``finish_reason == "length"``), as the streaming-usage tests need."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def talkative_llama(tmp_path_factory, tiny_llama) -> Path:
    return save_talkative(tiny_llama, tmp_path_factory.mktemp("tiny") / "talkative")


@pytest.fixture(scope="session")
def long_talkative(tmp_path_factory, long_tiny_llama) -> Path:
    """``talkative_llama`` with 16,384 positions: a stream that runs for many seconds."""
    return save_talkative(long_tiny_llama, tmp_path_factory.mktemp("tiny") / "long_talkative")


@pytest.fixture
def served(fresh_api, talkative_llama, tiny_bert):
    """An in-process server over a fresh API with ``tiny`` (causal-lm, transformers) and ``bert``
    (embedding) loaded; yields ``(api, status)``; stopped afterwards."""
    api = fresh_api
    api.load(str(talkative_llama), alias="tiny")
    api.load(str(tiny_bert), alias="bert", task="embedding")
    status = api.serve()
    try:
        yield api, status
    finally:
        api.serve_stop()
