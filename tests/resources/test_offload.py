"""Offload before unload: the decision (GPU victim + CPU room → offload; otherwise unload) on a
CPU-only machine with tiny models. The GPU move itself runs in ``benchmarks/gpu_check_manager.py``.

Run: ``.venv/bin/python -m pytest tests/resources/test_offload.py -q``.
"""

from __future__ import annotations

import time

import pytest

from llmos_jupyter.errors import UsageError
from llmos_jupyter.resources.manager import ModelRecord


@pytest.fixture
def loaded(fresh_api, tiny_llama, tensor_costs):
    fresh_api.load(str(tiny_llama), alias="a", task="causal-lm")
    return fresh_api, fresh_api.manager(), sum(fresh_api.manager().get("a").bytes.values())


def gpu_record(nbytes: int, alias: str = "g") -> ModelRecord:
    """What the manager holds for an idle model resident on cuda:0 (no GPU needed to decide)."""
    return ModelRecord(
        alias=alias,
        source="x",
        task="causal-lm",
        state="ready",
        device="cuda:0",
        home_device="cuda:0",
        bytes={"cuda:0": nbytes},
    )


def test_gpu_victim_is_offloaded_when_the_cpu_budget_admits_it(loaded):
    api, m, size = loaded
    m.set_budget("cpu", size + 10 * size)
    assert m.eviction_action(gpu_record(5 * size), "cuda:0") == "offload"


def test_gpu_victim_is_unloaded_when_the_cpu_budget_is_full(loaded):
    api, m, size = loaded
    m.set_budget("cpu", size + 4 * size)  # 'a' holds size; 5×size more would exceed it
    assert m.eviction_action(gpu_record(5 * size), "cuda:0") == "unload"
    assert m.get("a").state == "ready"  # deciding never evicts anything on the CPU
    with m.use("a"):  # even with 'a' busy the answer is the same
        assert m.eviction_action(gpu_record(5 * size), "cuda:0") == "unload"


def test_cpu_eviction_unloads_and_nothing_is_offloaded(loaded, tiny_llama, capsys):
    api, m, size = loaded
    assert m.eviction_action(m.get("a"), "cpu") == "unload"
    time.sleep(0.01)
    api.load(str(tiny_llama), alias="b", task="causal-lm")
    api.budget(cpu=int(size * 2.5))
    api.load(str(tiny_llama), alias="c", task="causal-lm")  # evicts the LRU 'a' by unloading it
    assert sorted(m.aliases()) == ["b", "c"] and all(r["state"] == "ready" for r in m.ps())
    out = capsys.readouterr().out
    assert f"llmos: evicted 'a' ({size / 1024:.2f} KiB on cpu) to make room for 'c'" in out and "offload" not in out
    types = [e["type"] for e in api.events().history]
    assert "evict" in types and "offload" not in types


def test_offload_of_a_cpu_model_is_refused_in_one_line(loaded):
    api, m, size = loaded
    with pytest.raises(UsageError) as e:
        m.offload("a")
    assert str(e.value) == "'a' is already on the cpu (ready)"


def test_a_call_on_an_offloaded_model_moves_it_back(loaded, capsys):
    """The restore path's bookkeeping, with the CPU as the home device (no GPU here): the record
    is put in the state an offload leaves, and the next call brings it back to 'ready'."""
    api, m, size = loaded
    rec = m.get("a")
    rec.state, rec.home_device = "offloaded", "cpu"
    assert api.ps().rows[0][api.ps().columns.index("device")] == "cpu (from cpu)"
    text = api.generate("a", "hello world", max_new_tokens=3, stream=False)
    assert isinstance(text, str) and rec.state == "ready" and rec.device == "cpu"
    assert sum(rec.bytes.values()) == size
    assert "llmos: moved 'a' back to cpu" in capsys.readouterr().out
    (ev,) = [e for e in api.events().history if e["type"] == "restore"]
    assert ev["alias"] == "a" and ev["bytes"] == {"cpu": size}
