"""Resource manager policy on tiny random models: admission, LRU eviction, pins, failures."""

from __future__ import annotations

import time

import pytest

from llmos_jupyter.errors import ResourceError, UsageError


@pytest.fixture
def sized(fresh_api, tiny_llama, tensor_costs):
    """The measured bytes of one tiny Llama, and a loader for aliases a, b, c..."""
    fresh_api.load(str(tiny_llama), alias="probe", task="causal-lm")
    size = sum(fresh_api.manager().get("probe").bytes.values())
    fresh_api.unload("probe")

    def load(alias, **kw):
        fresh_api.load(str(tiny_llama), alias=alias, task="causal-lm", **kw)
        time.sleep(0.01)  # distinct last-used times

    return fresh_api, size, load


def test_estimate_within_10_percent(fresh_api, tiny_llama, tiny_bert):
    from llmos_jupyter.models.loading import estimate

    for path, task in ((tiny_llama, "causal-lm"), (tiny_bert, "embedding")):
        est = estimate(str(path), task)
        fresh_api.load(str(path), alias="x", task=task)
        measured = sum(fresh_api.manager().get("x").bytes.values())
        assert abs(est["bytes"] - measured) / measured <= 0.10, (path, est, measured)
        fresh_api.unload("x")


def test_lru_idle_model_is_evicted(sized, capsys):
    api, size, load = sized
    api.budget(cpu=int(size * 2.5))
    load("a")
    load("b")
    with api.manager().use("a"):  # a is now the most recently used
        pass
    load("c")
    assert sorted(api.manager().aliases()) == ["a", "c"]
    assert "evicted 'b'" in capsys.readouterr().out
    events = [e for e in api.events().history if e["type"] == "evict"]
    assert [e["alias"] for e in events] == ["b"]


def test_pinned_and_in_use_are_never_evicted(sized):
    api, size, load = sized
    api.budget(cpu=int(size * 2.5))
    load("a", pin=True)
    load("b")
    with api.manager().use("b"):
        with pytest.raises(ResourceError) as e:
            load("c")
    assert "does not fit" in str(e.value) and "\n" not in str(e.value)
    assert sorted(api.manager().aliases()) == ["a", "b"]
    load("c")  # b is idle again: it goes, the pinned a stays
    assert sorted(api.manager().aliases()) == ["a", "c"]


def test_inadmissible_load_leaves_manager_unchanged(sized):
    api, size, load = sized
    load("a")
    before = api.manager().ps()
    api.budget(cpu=int(size * 0.5))
    with pytest.raises(ResourceError, match="budget"):
        load("b")
    assert [m["alias"] for m in api.manager().ps()] == [m["alias"] for m in before]


def test_a_budget_set_to_zero_goes_back_to_the_default(sized, capsys):
    """A user's report: after ``%llm budget --cpu 0`` nothing said how to get the default back.
    ``default`` puts back 90% of the device's memory (and lets the refused load in)."""
    import psutil

    api, size, load = sized
    load("a")
    capsys.readouterr()
    table = api.budget(cpu=0)
    assert capsys.readouterr().err.endswith(
        "the next load there evicts idle models (cpu='default' puts the default back)\n"
    )
    assert table.note == "cpu='default' puts a device's default back"
    api.unload("a")
    with pytest.raises(ResourceError, match="budget"):
        load("a")
    table = api.budget(cpu="default")
    (row,) = [r for r in table.rows if r[0] == "cpu"]
    assert row[3] == "default (90%)" and "cpu" not in api.manager().budgets and table.note == ""
    assert api.manager().budget("cpu") == int(psutil.virtual_memory().total * 0.90)
    load("a")
    assert api.manager().aliases() == ["a"]


def test_oom_during_load_leaves_nothing(sized, monkeypatch):
    api, size, load = sized
    from llmos_jupyter.models import loading
    from llmos_jupyter.resources.memory import process_rss

    real = loading.load

    def oom(*a, **kw):
        loaded = real(*a, **kw)
        blob = bytearray(64 * 2**20)  # memory taken during the load...
        del loaded, blob
        raise MemoryError("injected")  # ...then the allocator gives up

    monkeypatch.setattr(loading, "load", oom)
    rss0 = process_rss()
    with pytest.raises(ResourceError, match="out of memory while loading 'x'; nothing was kept"):
        load("x")
    assert api.manager().ps() == [] and api.manager().used("cpu") == 0
    assert process_rss() - rss0 < 32 * 2**20
    assert api.events().history[-1]["type"] == "error"


def test_alias_taken_and_hot_swap(sized, tiny_bert):
    api, size, load = sized
    load("a")
    with pytest.raises(UsageError, match="already loaded"):
        load("a")
    old = api.manager().get("a").model
    api.load(str(tiny_bert), alias="a", task="embedding", replace=True)
    rec = api.manager().get("a")
    assert rec.task == "embedding" and rec.model is not old
    assert api.manager().aliases() == ["a"]


def test_parse_size_units():
    from llmos_jupyter.resources.memory import parse_size

    assert parse_size("2GiB") == 2 * 2**30 and parse_size("2GB") == 2 * 10**9 and parse_size("512") == 512
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")


def test_no_hot_swap_under_a_running_fine_tune(sized, tiny_bert):
    """`--replace` of an alias a job is training is refused like unload; the model stays as it was."""
    api, size, load = sized
    load("a")
    m = api.manager()
    with m.use("a", exclusive="job-7") as rec:  # what a fine-tune job holds while it trains
        before = rec.model
        with pytest.raises(UsageError, match="being fine-tuned by job-7"):
            api.load(str(tiny_bert), alias="a", task="embedding", replace=True)
        assert m.get("a").model is before and m.aliases() == ["a"]
    assert m.get("a").exclusive is None and m.get("a").model is before
