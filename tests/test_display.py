"""Result objects: a Message's figures read like a dict (a user did ``dict(api.serve_status())``)."""

from llmos_jupyter.display import Message, fmt_value, kv_html


def test_message_fields_read_like_a_dict():
    m = Message("serving on http://127.0.0.1:1", url="http://127.0.0.1:1", token="t", requests=0)
    assert dict(m) == {"url": "http://127.0.0.1:1", "token": "t", "requests": 0}
    assert "token" in m and "nope" not in m and m.get("nope", 7) == 7 and m["requests"] == 0
    assert list(m) == ["url", "token", "requests"] and bool(Message("no figures"))
    assert repr(m) == "serving on http://127.0.0.1:1"


def test_one_value_format_and_key_value_table():
    assert [fmt_value(v) for v in (None, 0.123456, {"a": 1}, 3)] == ["-", "0.1235", '{"a": 1}', "3"]
    assert kv_html([("a<b", 1.0)], "x") == (
        "<table class='x'><tr><th style='text-align:left'>a&lt;b</th><td style='text-align:left'>1</td></tr></table>"
    )
