"""Tiny models built from configs for the optimisation tests (no files, no downloads).

* ``tiny_bert_cls()``: a random 2-layer BertForSequenceClassification, hidden 32, 4 heads of 8,
  FFN 64, 2 labels, in eval mode.
* ``tiny_llama_lm()``: a random 2-layer LlamaForCausalLM, hidden 32, 4 query heads sharing 2
  key/value heads (grouped), head_dim 8, FFN 64, in eval mode.
* ``ids``: a fixed batch of token ids with a padded row, ``(3, 7)`` with its attention mask.
"""

from __future__ import annotations

import pytest


def make_bert(seed: int = 0, **cfg):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        **{
            **dict(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=32,
                num_labels=2,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            ),
            **cfg,
        }
    )
    return BertForSequenceClassification(config).eval()


def make_llama(seed: int = 0, **cfg):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            **dict(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                tie_word_embeddings=True,
            ),
            **cfg,
        }
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_bert_cls():
    return make_bert


@pytest.fixture
def tiny_llama_lm():
    return make_llama


@pytest.fixture
def ids():
    import torch

    x = torch.tensor([[2, 5, 9, 11, 3, 0, 0], [2, 7, 7, 8, 12, 13, 3], [2, 40, 3, 0, 0, 0, 0]])
    return {"input_ids": x, "attention_mask": (x != 0).long()}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one intra-op thread (two threads only add barriers on a shared machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
