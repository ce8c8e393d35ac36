"""Keep-alive (Ollama's ``keep_alive``): durations, the reaper, ``0`` = after each call, ``%llm ps``.

Run: ``.venv/bin/python -m pytest tests/resources/test_keepalive.py -q``. Expiry is driven with
``ModelManager.reap(now=...)`` (no sleeping); one test waits for the real reaper thread.
"""

from __future__ import annotations

import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter.errors import UsageError
from llmos_jupyter.resources.memory import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        (90, 90.0),
        ("0", 0.0),
        (0, 0.0),
        ("-1", None),
        (-1, None),
        (None, None),
        (" 10 m ", 600.0),
        ("2.5s", 2.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["lots", "10x", "m", "", "10m5", "1h 2", True])
def test_bad_duration_is_one_line(bad):
    with pytest.raises(UsageError) as e:
        parse_duration(bad)
    assert "is not a duration" in str(e.value) and "-1 (forever)" in str(e.value) and "\n" not in str(e.value)


def test_format_duration():
    assert [format_duration(s) for s in (None, 0, 2.5, 90, 600, 5400, 3601)] == [
        "forever",
        "0s",
        "2.5s",
        "1m30s",
        "10m",
        "1h30m",
        "1h1s",
    ]


@pytest.fixture
def shell(fresh_api):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    return ip


def test_magic_keep_alive_shows_in_ps_and_expires(shell, fresh_api, tiny_llama, capsys):
    shell.run_line_magic("llm", f"load {tiny_llama} --task causal-lm --as a --keep-alive 10m")
    shell.run_line_magic("llm", f"load {tiny_llama} --task causal-lm --as b")  # default: forever
    m = fresh_api.manager()
    a, b = m.get("a"), m.get("b")
    assert (a.keep_alive, b.keep_alive) == (600.0, None)
    assert a.expires_at() == pytest.approx(a.last_used + 600) and b.expires_at() is None

    table = shell.run_line_magic("llm", "ps")
    rows = {r[0]: dict(zip(table.columns, r)) for r in table.rows}
    assert rows["a"]["keep-alive"] == "10m" and rows["a"]["expires"] in ("in 10m", "in 9m59s")
    assert rows["b"]["keep-alive"] == "forever" and rows["b"]["expires"] == "-"
    assert "keep-alive" in table._repr_mimebundle_()["text/html"]

    assert m.reap(now=a.last_used + 599) == []  # not yet
    capsys.readouterr()
    (res,) = m.reap(now=a.last_used + 601)  # past 10 min idle
    assert res["alias"] == "a" and res["reason"] == "keep-alive" and res["measured_bytes"] == sum(a.bytes.values())
    assert m.aliases() == ["b"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"llmos: unloaded 'a' after 10m1s idle (keep-alive 10m); {res['real_bytes'] / 1024:.2f} KiB released"
    ]
    ev = [e for e in fresh_api.events().history if e["type"] == "expire"]
    assert [(e["alias"], e["reason"]) for e in ev] == [("a", "keep-alive")]
    assert m.reap(now=time.time() + 10**9) == []  # forever stays forever


def test_bad_keep_alive_in_magic_is_one_line(shell, fresh_api, tiny_llama, capsys):
    shell.run_line_magic("llm", f"load {tiny_llama} --task causal-lm --as a --keep-alive soon")
    err = capsys.readouterr().err
    assert err == "llmos: 'soon' is not a duration; write e.g. 30s, 10m, 1h, 0 (after each call) or -1 (forever)\n"
    assert fresh_api.manager().aliases() == []


def test_reaper_never_unloads_pinned_or_in_use(fresh_api, tiny_llama):
    api, m = fresh_api, fresh_api.manager()
    for alias in ("pinned", "busy", "idle"):
        api.load(str(tiny_llama), alias=alias, task="causal-lm", keep_alive="1s", pin=alias == "pinned")
    later = time.time() + 3600
    with m.use("busy"):
        assert [r["alias"] for r in m.reap(now=later)] == ["idle"]
        assert sorted(m.aliases()) == ["busy", "pinned"]
    assert m.reap(now=time.time() + 0.5) == []  # busy's 1 s clock restarted when its call ended
    assert [r["alias"] for r in m.reap(now=time.time() + 2)] == ["busy"]
    assert m.aliases() == ["pinned"] and m.get("pinned").expires_at() is None
    api.pin("pinned", False)  # unpinned: it becomes due one keep-alive after the unpin
    assert [r["alias"] for r in m.reap(now=time.time() + 2)] == ["pinned"]


def test_keep_alive_zero_unloads_right_after_each_call(fresh_api, tiny_llama, capsys):
    api, m = fresh_api, fresh_api.manager()
    api.load(str(tiny_llama), alias="once", task="causal-lm", keep_alive=0)
    assert m.reap(now=time.time() + 3600) == []  # loaded but not called yet: it stays
    table = api.ps()
    assert table.rows[0][table.columns.index("expires")] == "after each call"
    capsys.readouterr()
    text = api.generate("once", "hello world", max_new_tokens=4, stream=False)
    assert isinstance(text, str)
    assert m.aliases() == []
    err = capsys.readouterr().err
    assert err.startswith("llmos: unloaded 'once' after the call (keep-alive 0s); ") and err.count("\n") == 1
    with pytest.raises(Exception, match="unknown model 'once'"):
        api.generate("once", "again", max_new_tokens=2, stream=False)


def test_reaper_thread_unloads_and_then_stops(fresh_api, tiny_llama):
    api, m = fresh_api, fresh_api.manager()
    api.load(str(tiny_llama), alias="forever", task="causal-lm")
    assert m._reaper is None  # nothing timed: no thread
    api.load(str(tiny_llama), alias="short", task="causal-lm", keep_alive="0.3s")
    reaper = m._reaper
    assert isinstance(reaper, threading.Thread) and reaper.daemon and reaper.name == "llmos-reaper"
    deadline = time.time() + 30  # a liveness bound, not a speed assertion
    while "short" in m.aliases() and time.time() < deadline:
        time.sleep(0.05)
    assert m.aliases() == ["forever"]
    reaper.join(timeout=30)
    assert not reaper.is_alive() and m._reaper is None  # stops when no model is timed
    assert [e["alias"] for e in api.events().history if e["type"] == "expire"] == ["short"]
