"""The server in-process, on tiny models: bad inputs, limits, cancel, unload, batching, stop.

Each bad input gets its status and one message in the OpenAI error shape, and the server still
answers afterwards. The kernel-side behaviour (a real kernel running ``%llm serve``) is in
``test_kernel_serve.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest


def _post(status, path, body, token="__ok__", **kw):
    headers = {} if token is None else {"Authorization": f"Bearer {status['token'] if token == '__ok__' else token}"}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return httpx.post(
        status["url"] + path, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw
    )


def _error(r, status: int, *words, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "\n" not in err["message"] and err["message"]
    for w in words:
        assert w in err["message"], err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def _still_up(status):
    r = _post(
        status,
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 4}


def test_bad_inputs_each_get_their_status_and_one_message(served):
    api, s = served
    _error(_post(s, "/v1/chat/completions", CHAT, token=None), 401, "missing API key")
    _error(_post(s, "/v1/chat/completions", CHAT, token="llmos-wrong"), 401, "invalid API key")
    _error(_post(s, "/v1/chat/completions", dict(CHAT, model="nope")), 404, "not loaded", param="model")
    err = _error(
        _post(s, "/v1/chat/completions", dict(CHAT, model="all-minilm-l6-v2")),
        404,
        "never loads models",
        "`%llm load all-minilm-l6-v2`",
    )
    assert err["code"] == "model_not_found"
    _error(_post(s, "/v1/chat/completions", dict(CHAT, messages=[])), 400, "messages is empty", param="messages")
    _error(
        _post(s, "/v1/chat/completions", dict(CHAT, messages=[{"role": "robot", "content": "x"}])),
        400,
        "not one of system, user, assistant",
        param="messages[0].role",
    )
    _error(
        _post(s, "/v1/chat/completions", dict(CHAT, messages=[{"content": "x"}])),
        400,
        "required",
        param="messages[0].role",
    )
    for bad in (0, -1):
        _error(_post(s, "/v1/chat/completions", dict(CHAT, max_tokens=bad)), 400, "at least 1", param="max_tokens")
    _error(
        _post(s, "/v1/chat/completions", dict(CHAT, max_completion_tokens=0)),
        400,
        "at least 1",
        param="max_completion_tokens",
    )
    _error(_post(s, "/v1/chat/completions", dict(CHAT, n=3)), 400, "n must be 1", param="n")
    _error(_post(s, "/v1/chat/completions", '{"model": "tiny", "messages": [}'), 400, "not valid JSON")
    _error(_post(s, "/v1/chat/completions", "[1, 2]"), 400, "JSON list")
    _error(_post(s, "/v1/chat/completions", dict(CHAT, temperature=5)), 400, "temperature", param="temperature")
    _error(_post(s, "/v1/chat/completions", dict(CHAT, tools=[{"type": "function"}])), 400, "tools")
    _error(_post(s, "/v1/chat/completions", dict(CHAT, model="bert")), 400, "embedding model", "/v1/embeddings")
    _error(_post(s, "/v1/embeddings", {"model": "tiny", "input": "x"}), 400, "causal-lm model")
    _error(_post(s, "/v1/embeddings", {"model": "bert", "input": [[1, 2, 10**6]]}), 400, "outside this model's")
    _error(_post(s, "/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}), 400, "one prompt per request")
    # an empty text is refused here as api.embed / api.classify / chat refuse it
    _error(_post(s, "/v1/embeddings", {"model": "bert", "input": ""}), 400, "empty text", param="input")
    _error(_post(s, "/v1/embeddings", {"model": "bert", "input": ["ok", " "]}), 400, "input[1] is an empty text")
    _error(_post(s, "/v1/classify", {"model": "bert", "input": ["ok", ""]}), 400, "empty text", param="input")
    _error(
        _post(s, "/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "  "}])),
        400,
        "last user message is empty",
        param="messages[0].content",
    )
    big = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x" * (5 * 10**6)}]))
    _error(_post(s, "/v1/chat/completions", big), 413, "at most")
    _error(httpx.get(s["url"] + "/nowhere", headers={"Authorization": f"Bearer {s['token']}"}), 404, "no such route")
    _still_up(s)
    # max_tokens far beyond the context window is capped to what the window leaves (128 positions here)
    r = _post(s, "/v1/chat/completions", dict(CHAT, max_tokens=10**9))
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["prompt_tokens"] + u["completion_tokens"] == 128 and r.json()["choices"][0]["finish_reason"] == "length"
    st = api.serve_status()  # refused requests never reached a queue; the unknown token id did
    assert st["failed"] == 1 and st["requests"] == 2


def test_stream_chunks_usage_and_equal_text(served, talkative_llama):
    from openai import OpenAI
    from transformers import AutoTokenizer

    api, s = served
    client = OpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in content][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert content[-1].choices[0].delta.content  # the last content chunk carries the finish reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    tok = AutoTokenizer.from_pretrained(talkative_llama)
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    n = len(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens == n
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"
    # text completions stream the same way
    parts = list(client.completions.create(model="tiny", prompt="the quick brown", max_tokens=6, stream=True))
    done = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=6)
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text
    assert parts[-1].choices[0].finish_reason == done.choices[0].finish_reason == "length"


def test_embeddings_strings_lists_and_token_ids(served, tiny_bert):
    import numpy as np
    from openai import OpenAI

    api, s = served
    client = OpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
    want = api.embed("bert", ["great movie", "awful film"])
    got = client.embeddings.create(model="bert", input=["great movie", "awful film"])  # the client asks for base64
    assert np.allclose([d.embedding for d in got.data], want, atol=1e-6)
    one = client.embeddings.create(model="bert", input="great movie", encoding_format="float")
    assert np.allclose(one.data[0].embedding, want[0], atol=1e-6)
    tok = api.manager().get("bert").tokenizer
    ids = [tok("great movie")["input_ids"], tok("awful film")["input_ids"]]
    by_ids = client.embeddings.create(model="bert", input=ids, encoding_format="float")
    assert np.allclose([d.embedding for d in by_ids.data], want, atol=1e-6)
    assert by_ids.usage.prompt_tokens == got.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    flat = client.embeddings.create(model="bert", input=ids[0], encoding_format="float")
    assert np.allclose(flat.data[0].embedding, want[0], atol=1e-6)


def test_classify_route_matches_cells(fresh_api, tiny_bert):
    api = fresh_api
    api.load(str(tiny_bert), alias="cls", task="seq-cls", labels=["neg", "pos"])
    s = api.serve(models=["cls"])
    try:
        r = _post(s, "/v1/classify", {"model": "cls", "input": ["great movie", "awful film"]})
        assert r.status_code == 200, r.text
        want = api.classify("cls", ["great movie", "awful film"]).data
        for row, w in zip(r.json()["data"], want):
            assert row["label"] == w["label"] and row["scores"] == pytest.approx(w["scores"], abs=1e-6)
            assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-5)
        models = httpx.get(s["base_url"] + "/models", headers={"Authorization": f"Bearer {s['token']}"}).json()
        assert [m["id"] for m in models["data"]] == ["cls"] and models["data"][0]["task"] == "seq-cls"
    finally:
        api.serve_stop()


def test_client_cut_mid_stream_stops_decoding_and_frees_the_slot(served, long_talkative):
    api, s = served
    api.load(str(long_talkative), alias="long")
    body = {"model": "long", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000, "stream": True}
    headers = {"Authorization": f"Bearer {s['token']}"}
    with httpx.stream("POST", s["base_url"] + "/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(8)]
        assert any("delta" in g for g in got)
        assert api.serve_status()["in_flight"] == 1
    deadline = time.time() + 10
    while time.time() < deadline and (api.serve_status()["in_flight"] or api.manager().get("long").users):
        time.sleep(0.05)
    assert api.serve_status()["in_flight"] == 0 and api.manager().get("long").users == 0
    gen = api.manager().get("long").last_generation
    assert gen["finish_reason"] == "cancelled" and gen["completion_tokens"] < 10000
    _still_up(s)


def test_request_while_the_model_is_being_unloaded(served, long_talkative):
    from llmos_jupyter.errors import UsageError

    api, s = served
    api.load(str(long_talkative), alias="long")
    body = {"model": "long", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000, "stream": True}
    headers = {"Authorization": f"Bearer {s['token']}"}
    with httpx.stream("POST", s["base_url"] + "/chat/completions", json=body, headers=headers, timeout=60) as r:
        next(r.iter_lines())
        with pytest.raises(UsageError, match="in use"):
            api.unload("long")  # a request holds it, as a running cell would
    deadline = time.time() + 10
    while time.time() < deadline and api.manager().get("long").users:
        time.sleep(0.05)
    api.unload("long")
    _error(_post(s, "/v1/chat/completions", dict(CHAT, model="long")), 404, "not loaded")
    # unloads racing with a stream of requests: each answer is a 200 or a one-line 404, never a 500
    api.load(str(long_talkative), alias="long")
    codes = []

    def fire():
        for _ in range(10):
            codes.append(_post(s, "/v1/chat/completions", dict(CHAT, model="long", max_tokens=3)).status_code)

    t = threading.Thread(target=fire)
    t.start()
    unloaded = False
    while t.is_alive() and not unloaded:
        try:
            api.unload("long")
            unloaded = True
        except UsageError:
            time.sleep(0.005)
    t.join(60)
    assert unloaded and set(codes) <= {200, 404} and 404 in codes, codes
    _still_up(s)


def test_a_burst_of_200_is_bounded(served):
    import asyncio

    api, s = served
    body = dict(CHAT, max_tokens=3)

    async def burst():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            limits=limits, timeout=120, headers={"Authorization": f"Bearer {s['token']}"}
        ) as c:
            return await asyncio.gather(*[c.post(s["base_url"] + "/chat/completions", json=body) for _ in range(200)])

    t0 = time.perf_counter()
    replies = asyncio.run(burst())
    wall = time.perf_counter() - t0
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503}, set(codes)
    assert codes.count(503) > 0 and codes.count(200) >= 8
    refused = [r for r in replies if r.status_code == 503]
    assert all(r.json()["error"]["code"] in ("queue_full",) and r.headers.get("retry-after") for r in refused)
    st = api.serve_status()
    assert st["requests"] == codes.count(200) and st["in_flight"] == 0 and st["queued"] == 0
    assert wall < 120
    _still_up(s)


def test_batched_requests_answer_as_alone(fresh_api, talkative_llama):
    from llmos_jupyter.serve.server import ServeSettings, start, stop

    api = fresh_api
    api.load(str(talkative_llama), alias="tiny")
    prompts = ["hello world", "the quick brown fox jumps over the lazy dog", "great", "a gorgeous, witty movie"]
    alone = [str(api.generate("tiny", p, max_new_tokens=12, stream=False, verbose=False)) for p in prompts]
    hub = start(api.manager(), ServeSettings(batch_window_s=0.5))  # a wide window: the 4 requests surely meet
    try:
        s = {"url": hub.url, "token": hub.token}
        out = [None] * 4

        def ask(i):
            out[i] = _post(s, "/v1/completions", {"model": "tiny", "prompt": prompts[i], "max_tokens": 12}).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [o["choices"][0]["text"] for o in out] == alone
        assert hub.summary()["batches"] == 1 and hub.summary()["mean_batch"] == 4
    finally:
        stop()


def test_start_stop_port_and_options(fresh_api, talkative_llama, capsys):
    from llmos_jupyter.errors import NotFoundError, UsageError
    from llmos_jupyter.serve.server import host_warning

    api = fresh_api
    api.load(str(talkative_llama), alias="tiny")
    with pytest.raises(NotFoundError, match="load it before serving it"):
        api.serve(models="tiny,ghost")
    s = api.serve(host="localhost", models="tiny")
    assert "warning" not in capsys.readouterr().err  # localhost is loopback
    try:
        with pytest.raises(UsageError, match="already running"):
            api.serve()
        busy = s["port"]
    finally:
        stopped = api.serve_stop()
    assert "stopped the server" in stopped.text
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", busy))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        with pytest.raises(UsageError, match="is in use"):
            api.serve(port=sock.getsockname()[1])
    assert api.serve_status().data["running"] is False and api.serve_stop().text == "no server is running"
    capsys.readouterr()
    with pytest.raises(UsageError, match=r"^cannot listen on notahost\.invalid:0 \(.*\); use host='127\.0\.0\.1'$"):
        api.serve(host="notahost.invalid")
    assert capsys.readouterr().err == ""  # a user's report: it warned "serving on notahost" first
    assert host_warning("127.0.0.5") is None and host_warning("::1") is None
    assert "reachable from other machines" in host_warning("0.0.0.0")
