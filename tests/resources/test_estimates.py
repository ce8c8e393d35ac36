"""Estimate before load vs bytes measured after: within 10% for tiny configs (fast) and for the
packaged MiniLM and SmolLM2 (slow). Prints each error so a run shows the figures (``-s``).

Run: ``.venv/bin/python -m pytest tests/resources/test_estimates.py -q -s [-m slow]``.
"""

from __future__ import annotations

import pytest
from tiny_kit import save_tiny

from llmos_jupyter.resources.memory import format_size


@pytest.fixture(scope="module")
def tiny_tied_llama(tmp_path_factory):
    """A tiny Llama with tied input/output embeddings (shared storage must be counted once)."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama-tied", "llama", tie_word_embeddings=True)


def check(api, spec: str, task: str, **kw) -> float:
    """Tensor estimate vs tensor bytes (returned), and the real-cost estimate vs the real cost
    measured at load, as ``ps`` shows it (within 10%)."""
    from llmos_jupyter.models.loading import estimate

    est = estimate(spec, task)
    api.load(spec, alias="x", task=task, engine="transformers", **kw)
    rec = api.manager().get("x")
    measured = sum(rec.bytes.values())
    err = (est["bytes"] - measured) / measured
    real = sum(rec.real_bytes.values())
    real_err = (est["real_bytes"] - real) / real
    print(
        f"\nestimate {spec.split('/')[-1]} ({task}): tensors estimated {est['bytes']:,} B, measured {measured:,} B, "
        f"error {err * 100:+.2f}%; real cost estimated {est['real_bytes']:,} B, measured {real:,} B, "
        f"error {real_err * 100:+.2f}%"
    )
    assert rec.estimated_bytes == est["real_bytes"] and rec.params == est["params"]
    row = api.ps().rows[0]
    assert row[api.ps().columns.index("error")] == f"{real_err * 100:+.1f}%"
    assert row[api.ps().columns.index("tensors")] == format_size(measured)
    api.unload("x")
    assert abs(err) <= 0.10, (spec, est, measured)
    # in this long-lived test process memory freed by earlier tests is reused, so a load's RSS
    # growth reads up to ~12% low; the 10% claim is checked in fresh processes
    # (tests/models/test_engines.py::test_real_cost_matches_a_fresh_process)
    assert abs(real_err) <= 0.15, (spec, est, real)
    return err


@pytest.mark.parametrize(
    "kind, task", [("llama", "causal-lm"), ("bert", "embedding"), ("bert", "seq-cls"), ("llama", "seq-cls")]
)
def test_tiny_configs(fresh_api, tiny_llama, tiny_bert, kind, task, tensor_costs):
    path = tiny_llama if kind == "llama" else tiny_bert
    check(fresh_api, str(path), task, **({"labels": "negative,positive"} if task == "seq-cls" else {}))


def test_tiny_tied_embeddings(fresh_api, tiny_tied_llama, tensor_costs):
    check(fresh_api, str(tiny_tied_llama), "causal-lm")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seq-cls", "embedding"])
def test_minilm(fresh_api, pulled, task):
    err = check(fresh_api, "all-minilm-l6-v2", task, **({"labels": "negative,positive"} if task == "seq-cls" else {}))
    assert abs(err) < 0.01  # meta-device build of the same config: only buffers can differ


@pytest.mark.slow
def test_smollm2_gguf(fresh_api, pulled):
    err = check(fresh_api, "smollm2-135m-instruct", "causal-lm")
    assert abs(err) < 0.01  # tensor table × 4 bytes (float32 after dequantisation)
