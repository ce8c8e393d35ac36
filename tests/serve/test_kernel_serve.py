"""`%llm serve` in a real kernel (jupyter_client), called with the real `openai` client.

* tiny models: chat, completions, embeddings (string, list, token ids), the models list, usage
  equal to the tokenizer's counts, streamed text equal to non-streamed text, sync and async
  clients; the server survives a kernel interrupt; `%unload_ext` and kernel shutdown free the port.
* a fine-tune job trains while 4 clients stream: every request completes, the job's progress
  keeps moving, and the kernel answers cells meanwhile.
* real SmolLM2 on both engines and MiniLM (slow): the streaming case clients depend on — with
  ``max_tokens=8`` and ``stream_options.include_usage`` the deltas join to the non-streamed
  answer, ``finish_reason`` is ``length`` and the final usage chunk says 8 completion tokens and
  the tokenizer's count of the rendered prompt (LangChain's usage accounting reads that chunk:
  langchainjs PR #5761); concurrent requests to the transformers engine are batched and answer
  as they do one by one.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest
from home_kit import linked_home
from kernel_kit import Kernel


def _serve(kernel, line: str) -> dict:
    msgs = kernel.run(line)
    text = json.dumps([m["content"] for m in msgs])
    assert not kernel.errors(msgs), text
    out = kernel.run(
        "import json as _j; from llmos_jupyter import api as _llm\n"
        "print(_j.dumps({k: _llm.serve_status()[k] for k in ('base_url', 'token', 'port', 'models')}))"
    )
    return json.loads(kernel.stdout(out).strip().splitlines()[-1])


def _value(kernel, expr: str):
    out = kernel.run(f"print(_j.dumps({expr}))")
    assert not kernel.errors(out), kernel.errors(out)
    return json.loads(kernel.stdout(out).strip().splitlines()[-1])


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` and a new server can bind it (SO_REUSEADDR, as servers do)."""
    with socket.socket() as c:
        if c.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def kernel(tmp_path):
    k = Kernel(linked_home(tmp_path))
    yield k
    k.close()


def test_openai_client_against_a_kernel(kernel, talkative_llama, tiny_bert):
    import numpy as np
    from openai import AsyncOpenAI, OpenAI
    from transformers import AutoTokenizer

    setup = kernel.run(
        f"%load_ext llmos_jupyter\n%llm load {talkative_llama} --as tiny\n"
        f"%llm load {tiny_bert} --task embedding --as bert"
    )
    assert not kernel.errors(setup)
    s = _serve(kernel, "%llm serve")
    assert s["models"] == ["tiny", "bert"] and s["base_url"].startswith("http://127.0.0.1:")
    client = OpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny", "bert"]

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the capital of france?"}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    tok = AutoTokenizer.from_pretrained(talkative_llama)
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    n_prompt = len(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens == n_prompt
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason == "length"

    comp = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=5)
    assert comp.usage.prompt_tokens == len(tok("the quick brown fox")["input_ids"])
    assert comp.usage.completion_tokens == 5

    texts = ["great movie", "awful film"]
    want = np.array(_value(kernel, f"_llm.embed('bert', {texts!r}).tolist()"))
    one = client.embeddings.create(model="bert", input=texts[0])
    many = client.embeddings.create(model="bert", input=texts)
    btok = AutoTokenizer.from_pretrained(tiny_bert)
    ids = [btok(t)["input_ids"] for t in texts]
    by_ids = client.embeddings.create(model="bert", input=ids)
    assert np.allclose(one.data[0].embedding, want[0], atol=1e-5)
    assert np.allclose([d.embedding for d in many.data], want, atol=1e-5)
    assert np.allclose([d.embedding for d in by_ids.data], want, atol=1e-5)
    assert many.usage.prompt_tokens == by_ids.usage.prompt_tokens == sum(map(len, ids))

    async def async_calls():
        ac = AsyncOpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
        plain = await ac.chat.completions.create(model="tiny", messages=msgs, max_tokens=8)
        stream = await ac.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        emb = await ac.embeddings.create(model="bert", input=texts)
        await ac.close()
        return plain.choices[0].message.content, text, [d.embedding for d in emb.data]

    plain, streamed, emb = asyncio.run(async_calls())
    assert plain == streamed == whole.choices[0].message.content
    assert np.allclose(emb, want, atol=1e-5)

    # a kernel interrupt reaches the main thread only: the server keeps serving
    kernel.kc.execute("import time; time.sleep(60)")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    kernel.drain(1.0)
    assert (
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8).choices[0].message.content
        == whole.choices[0].message.content
    )
    st = _value(kernel, "{k: _llm.serve_status()[k] for k in ('requests', 'failed', 'in_flight', 'queued')}")
    assert st == {"requests": 10, "failed": 0, "in_flight": 0, "queued": 0}

    # %unload_ext stops it and frees the port; kernel shutdown does too
    kernel.run("%unload_ext llmos_jupyter")
    assert _port_free(s["port"])
    kernel.run("%load_ext llmos_jupyter")
    s2 = _serve(kernel, "%llm serve --models tiny")
    assert s2["token"] != s["token"] and s2["models"] == ["tiny"]
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)
    deadline = time.time() + 15
    while time.time() < deadline and not _port_free(s2["port"]):
        time.sleep(0.2)
    assert _port_free(s2["port"])


def test_finetune_while_four_clients_stream(kernel, talkative_llama, tiny_bert):
    from openai import OpenAI

    setup = kernel.run(
        f"%load_ext llmos_jupyter\n%llm load {talkative_llama} --as tiny\n"
        f"%llm load {tiny_bert} --task seq-cls --labels negative,positive --as cls\n"
        "import random as _r\n_r.seed(0)\n"
        "rows = [{'text': ' '.join(_r.choice(['good', 'bad', 'film', 'plot', 'great', 'awful']) for _ in range(12)),"
        " 'label': _r.choice(['negative', 'positive'])} for _ in range(2000)]\n"
        "%llm data load rows --as synth"
    )
    assert not kernel.errors(setup), kernel.errors(setup)
    s = _serve(kernel, "%llm serve --models tiny")
    kernel.run(
        "job = _llm.finetune('cls', 'synth', epochs=1, batch_size=8, eval_split=None, progress=False, background=True)"
    )
    client = OpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
    results, errors = [], []

    def stream_client(i):
        try:
            for _ in range(4):
                chunks = list(
                    client.chat.completions.create(
                        model="tiny",
                        messages=[{"role": "user", "content": f"client {i}"}],
                        max_tokens=32,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                results.append(chunks[-1].usage.completion_tokens)
        except Exception as e:  # reported by the assertion below
            errors.append(repr(e))

    deadline = time.time() + 120
    while _value(kernel, "job.step") == 0 and time.time() < deadline:  # the job is past its set-up: training
        time.sleep(0.2)
    threads = [threading.Thread(target=stream_client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    steps, cell_s = [], []
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        steps.append(_value(kernel, "[job.step, job.state]"))
        cell_s.append(time.perf_counter() - t0)
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert not errors and results == [32] * 16, (errors, results)
    during = [st for st, state in steps if state == "running"]
    assert len(set(during)) >= 3 and during == sorted(during), steps  # progress kept moving while they streamed
    assert max(cell_s) < 10, cell_s  # the kernel answered cells all along
    kernel.run("job.wait(300)")
    assert _value(kernel, "job.state") == "done"
    kernel.run("%llm serve stop")
    assert _port_free(s["port"])


@pytest.mark.slow
def test_real_models_on_both_engines(kernel, pulled):
    import numpy as np
    from openai import OpenAI

    setup = kernel.run(
        "%load_ext llmos_jupyter\n"
        "%llm load smollm2-135m-instruct --as smol\n"
        "%llm load smollm2-135m-instruct --engine transformers --as smol-hf\n"
        "%llm load all-minilm-l6-v2 --task embedding --as minilm"
    )
    assert not kernel.errors(setup), kernel.errors(setup)
    s = _serve(kernel, "%llm serve --models smol,smol-hf,minilm")
    client = OpenAI(base_url=s["base_url"], api_key=s["token"], max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    # the rendered prompt counted by transformers' own tokenizer (apply_chat_template)
    n_prompt = _value(
        kernel,
        "len(_llm.manager().get('smol-hf').tokenizer.apply_chat_template("
        "[{'role': 'user', 'content': 'hi'}], add_generation_prompt=True, tokenize=True)"
        "['input_ids'])",
    )
    for alias in ("smol", "smol-hf"):
        chunks = list(
            client.chat.completions.create(
                model=alias, messages=msgs, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
        )
        whole = client.chat.completions.create(model=alias, messages=msgs, max_tokens=8)
        content = [c for c in chunks if c.choices]
        assert content[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content, alias
        assert content[-1].choices[0].finish_reason == "length" and content[-1].choices[0].delta.content
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens == n_prompt, alias
        assert "<|im_end|>" not in whole.choices[0].message.content
    # concurrent requests to the transformers engine share one generate and answer as they do alone
    prompts = ["What is the capital of France?", "Name a colour.", "Say hello in French."]
    alone = [
        client.chat.completions.create(model="smol-hf", messages=[{"role": "user", "content": p}], max_tokens=10)
        .choices[0]
        .message.content
        for p in prompts
    ]
    before = _value(kernel, "_llm.serve_status()['batches']")
    together = [None] * 3

    def ask(i):
        msg = [{"role": "user", "content": prompts[i]}]
        reply = client.chat.completions.create(model="smol-hf", messages=msg, max_tokens=10)
        together[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    assert _value(kernel, "_llm.serve_status()['batches']") - before < 3  # at least two of them shared a generate
    want = np.array(_value(kernel, "_llm.embed('minilm', ['a gorgeous movie', 'a dull film']).tolist()"))
    got = client.embeddings.create(model="minilm", input=["a gorgeous movie", "a dull film"])
    assert np.allclose([d.embedding for d in got.data], want, atol=1e-5) and len(got.data[0].embedding) == 384
    assert re.match(r"http://127\.0\.0\.1:\d+/v1", s["base_url"])
    kernel.run("%llm serve stop")
    assert _port_free(s["port"])
