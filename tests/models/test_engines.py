"""The two inference engines behave alike (models/engines): streaming equals non-streaming, the
end token never reaches the text, the context window is enforced in one line, bad engine
choices are one line and leave nothing loaded, and memory is accounted at its real cost.

Hard case from users' reports: llama-cpp-python only picks a chat format from GGUF metadata in
newer versions, and models with several end tokens kept generating past one of them (printing
``<|eot_id|>`` and whole fake turns). Our llama.cpp engine renders the GGUF's own template the
way transformers' ``apply_chat_template`` does and stops at every end-of-generation token.
"""

from __future__ import annotations

import os

import pytest

from llmos_jupyter.errors import LLMOSError, UsageError

pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is part of `make install`")

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture
def smol(fresh_api, pulled):
    fresh_api.load("smollm2-135m-instruct", alias="smol")
    return fresh_api


def test_auto_picks_llama_cpp_for_a_gguf_causal_lm(smol):
    rec = smol.manager().get("smol")
    assert rec.engine == "llama.cpp" and rec.model is None and rec.n_ctx == 4096
    import psutil

    assert rec.threads == psutil.cpu_count(logical=False)  # the physical cores, not a fixed number
    row = [r for r in smol.ps().data if r["alias"] == "smol"][0]
    assert row["engine"] == "llama.cpp" and row["real_bytes"]["cpu"] > row["bytes"]["cpu"]  # + KV cache, buffers


def test_export_and_loss_of_a_llama_cpp_alias_leave_its_memory_as_it_was(smol, tmp_path):
    """A user's report: `%llm ps` showed a llama.cpp alias 513 MiB bigger for good after one HF
    export. The transformers weights of its GGUF are read for the call and dropped after it: the
    alias's accounting is as before, the model object is freed, and calls that read them again
    do not pile up memory."""
    import gc
    import weakref

    import psutil

    api, m = smol, smol.manager()

    def row():
        r = [r for r in api.ps().data if r["alias"] == "smol"][0]
        return r["bytes"], r["real_bytes"], r["dtype"]

    before = row()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not empty"):  # refused before reading any weights
        api.export("smol", str(tmp_path / "taken"))
    assert row() == before and m.get("smol").attached_from is None
    api.export("smol", str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size > 500 * 2**20  # float32 weights were read
    assert row() == before and m.get("smol").model is None
    rss1 = psutil.Process().memory_info().rss  # torch and transformers are imported by now
    api.data_load([{"prompt": "The capital of France is", "response": " Paris."}] * 4, name="qa")
    loss = api.evaluate("smol", "qa", split="train")
    assert 0 < loss.loss < 10 and row() == before and m.get("smol").model is None
    api.export("smol", str(tmp_path / "hf2"))
    grown = psutil.Process().memory_info().rss - rss1
    print(f"RSS after a loss evaluation and a second export: {grown / 2**20:+.0f} MiB (the weights: 513 MiB each)")
    assert grown < 400 * 2**20  # ~140 MiB here (allocator slack); one copy kept would be 513 MiB
    model = weakref.ref(m.attach_weights("smol").model)
    assert row() != before and m.detach_weights("smol") is True
    gc.collect()
    assert model() is None and row() == before
    assert "Paris" in api.generate("smol", "The capital of France is", max_new_tokens=8, stream=False)


def test_llama_cpp_renders_the_transformers_prompt_and_stops_at_im_end(smol, pulled):
    from transformers import AutoTokenizer

    engine = smol.manager().get("smol").inference()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    tok = AutoTokenizer.from_pretrained(pulled["smollm2-135m-instruct"], gguf_file=GGUF)
    hf_text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert engine.render_chat(msgs) == hf_text and hf_text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    hf_ids = tok(hf_text, add_special_tokens=False)["input_ids"]
    assert engine.tokenize(hf_text, add_special_tokens=False) == hf_ids and len(hf_ids) == 37
    # the Q4_1 file's greedy answer to the France question flips at its first token (a near tie:
    # 0.09 logits) into a list that runs past 200 tokens, so the stop is checked on a short answer
    first = smol.chat("smol", "What is 2 + 2?", max_new_tokens=64, stream=False)
    assert first.stats.finish_reason == "stop" and first.stats.completion_tokens < 64
    assert "4" in first and "<|im_end|>" not in first and "<|im_start|>" not in first
    second = smol.chat("smol", "And 3 + 3?", max_new_tokens=64, stream=False)
    assert "<|im_end|>" not in second and second.strip()
    assert [m["role"] for m in smol.chat_history("smol")] == ["user", "assistant", "user", "assistant"]


def test_llama_cpp_greedy_equals_plain_llama_cpp_python_and_streaming(smol, pulled, capsys):
    from llama_cpp import Llama

    prompt = "The three primary colours are"
    streamed = smol.generate("smol", prompt, max_new_tokens=40)
    out = capsys.readouterr().out
    assert out.startswith(streamed) and "tokens/s" in out and "first token" in out  # the dim stats line
    plain = smol.generate("smol", prompt, max_new_tokens=40, stream=False)
    assert streamed == plain and streamed.stats.completion_tokens == 40
    llm = Llama(model_path=str(pulled["smollm2-135m-instruct"] / GGUF), n_ctx=512, n_threads=2, verbose=False)
    ref = llm.create_completion(prompt, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    llm.close()
    assert plain == ref


def test_transformers_streaming_equals_its_own_generate(fresh_api, tiny_llama):
    import torch

    fresh_api.load(str(tiny_llama), alias="t", task="causal-lm")
    rec = fresh_api.manager().get("t")
    engine = rec.inference()
    pieces = list(engine.stream("the quick brown", fresh_api._settings(12, 0.0, extra={"min_new_tokens": 12})))
    assert len(pieces) > 1
    ids = rec.tokenizer("the quick brown", return_tensors="pt")
    with torch.no_grad():
        gen = rec.model.generate(**ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    ref = rec.tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == ref
    assert fresh_api.generate("t", "the quick brown", max_new_tokens=12, min_new_tokens=12, stream=False) == ref


def test_end_token_never_reaches_the_text_on_transformers(fresh_api, tiny_llama):
    """A tiny random model whose only likely token is <|im_end|>: the answer stops before it."""
    import torch

    fresh_api.load(str(tiny_llama), alias="t", task="causal-lm")
    rec = fresh_api.manager().get("t")
    eos = rec.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        rec.model.lm_head.weight.zero_()
        rec.model.lm_head.weight[eos] = 1.0  # every hidden state scores the end token highest…
        rec.model.model.norm.weight.fill_(1.0)
    out = fresh_api.chat("t", "hello world", max_new_tokens=8, stream=False)
    assert out.stats.finish_reason in ("stop", "length") and "<|im_end|>" not in out


def test_sampling_settings_and_seed(smol):
    a = smol.generate("smol", "Once upon a time", max_new_tokens=24, temperature=0.9, top_p=0.9, seed=7, stream=False)
    b = smol.generate("smol", "Once upon a time", max_new_tokens=24, temperature=0.9, top_p=0.9, seed=7, stream=False)
    c = smol.generate("smol", "Once upon a time", max_new_tokens=24, temperature=0.9, top_p=0.9, seed=8, stream=False)
    assert a == b and a != c
    with pytest.raises(UsageError, match="top_p"):
        smol.generate("smol", "x", top_p=1.5)


@pytest.mark.parametrize("engine", ["llama.cpp", "transformers"])
def test_prompt_longer_than_the_context_is_one_line(fresh_api, pulled, tiny_llama, engine):
    """Today's transformers answer to a 10,000-word prompt was three junk tokens; now one line."""
    if engine == "llama.cpp":
        fresh_api.load("smollm2-135m-instruct", alias="m", n_ctx=512)
        limit = 512
    else:
        fresh_api.load(str(tiny_llama), alias="m", task="causal-lm")  # max_position_embeddings 128
        limit = 128
    with pytest.raises(UsageError) as e:
        fresh_api.generate("m", "word " * 10_000, stream=False)
    msg = str(e.value)
    assert f"context window is {limit:,} positions" in msg and "\n" not in msg
    assert fresh_api.manager().get("m").users == 0
    out = fresh_api.generate("m", "hello world " * 4, max_new_tokens=10_000, stream=False)
    assert out.stats.capped_from == 10_000 and out.stats.prompt_tokens + out.stats.completion_tokens <= limit


def test_bad_engine_choices_are_one_line_and_load_nothing(fresh_api, pulled, tiny_llama, tmp_path, monkeypatch, capsys):
    from llmos_jupyter.models import engines

    cases = [
        (dict(spec=str(tiny_llama), task="causal-lm", engine="llama.cpp"), "serves GGUF files"),
        (dict(spec="smollm2-135m-instruct", task="seq-cls", engine="llama.cpp"), "causal-lm models only"),
        (dict(spec="smollm2-135m-instruct", n_ctx=100_000), "more than this model allows (8,192 positions"),
        (dict(spec="smollm2-135m-instruct", engine="vllm"), "use engine='auto', transformers or llama.cpp"),
        (dict(spec="smollm2-135m-instruct", engine="transformers", n_ctx=512), "drop them for engine='transformers'"),
    ]
    for kw, text in cases:
        spec = kw.pop("spec")
        with pytest.raises((UsageError, LLMOSError)) as e:
            fresh_api.load(spec, alias="x", **kw)
        assert text in str(e.value) and "\n" not in str(e.value), (kw, str(e.value))
        assert fresh_api.manager().ps() == [] and fresh_api.manager().used("cpu") == 0
    cut = tmp_path / "cut.gguf"
    with open(pulled["smollm2-135m-instruct"] / GGUF, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    with pytest.raises(LLMOSError, match="truncated or corrupt"):
        fresh_api.load(str(cut), alias="x", engine="llama.cpp")
    assert fresh_api.manager().ps() == []
    # the extra not installed: llama.cpp asked for → one line naming it; auto → transformers + a one-time hint
    monkeypatch.setattr(engines, "installed", lambda: {"transformers": "5", "llama.cpp": None})
    monkeypatch.setattr(engines, "_hinted", set())
    with pytest.raises(LLMOSError, match=r"pip install 'llmos-jupyter\[llamacpp\]'"):
        fresh_api.load("smollm2-135m-instruct", alias="x", engine="llama.cpp")
    assert engines.choose("auto", kind="gguf", task="causal-lm", spec="s", notify=print) == "transformers"
    assert engines.choose("auto", kind="gguf", task="causal-lm", spec="s", notify=print) == "transformers"
    assert capsys.readouterr().out.count("[llamacpp]") == 1


def test_eviction_admits_on_the_real_cost(fresh_api, pulled):
    """llama.cpp's SmolLM2 holds ~92 MiB of tensors but ~215 MiB really (KV cache, buffers): with a
    300 MiB budget, MiniLM (~100 MiB real) only fits once SmolLM2 is evicted — on tensor bytes
    (92 + 87 MiB) both would have fitted."""
    fresh_api.load("smollm2-135m-instruct", alias="smol")
    smol = fresh_api.manager().get("smol")
    assert smol.bytes["cpu"] < 100 * 2**20 < 200 * 2**20 < smol.cost("cpu")
    fresh_api.budget(cpu="300MiB")
    fresh_api.load("all-minilm-l6-v2", alias="mini")
    assert fresh_api.manager().aliases() == ["mini"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,engine",
    [
        ("all-minilm-l6-v2", "transformers"),
        ("smollm2-135m-instruct", "transformers"),
        ("smollm2-135m-instruct", "llama.cpp"),
    ],
)
def test_real_cost_matches_a_fresh_process(pulled, spec, engine, tmp_path):
    """`ps` real cost (and the estimate before load) within 10% of the RSS a separate, fresh
    process gains by loading the same model with the plain library — after importing the
    library and the architecture's modelling code, which every model of that kind shares."""
    import json
    import subprocess
    import sys

    home = os.environ["LLMOS_HOME"]
    d = pulled[spec]
    if engine == "llama.cpp":
        plain = (
            f"import llama_cpp, psutil; p = psutil.Process(); r0 = p.memory_info().rss; "
            f"m = llama_cpp.Llama(model_path={str(d / GGUF)!r}, n_ctx=4096, n_threads=2, verbose=False); "
            f"m.eval(m.tokenize(b'hello')); print(p.memory_info().rss - r0)"
        )
    elif spec == "all-minilm-l6-v2":
        plain = (
            f"import torch, transformers, psutil; from transformers import AutoModel, AutoTokenizer; "
            f"import transformers.models.bert.modeling_bert; "
            f"p = psutil.Process(); r0 = p.memory_info().rss; m = AutoModel.from_pretrained({str(d)!r}); "
            f"t = AutoTokenizer.from_pretrained({str(d)!r}); m(**t(['a first call pages the weights in'], "
            f"return_tensors='pt')); print(p.memory_info().rss - r0)"
        )
    else:
        plain = (
            f"import torch, transformers, gguf, psutil; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"import transformers.models.llama.modeling_llama, transformers.modeling_gguf_pytorch_utils; "
            f"p = psutil.Process(); r0 = p.memory_info().rss; "
            f"m = AutoModelForCausalLM.from_pretrained({str(d)!r}, gguf_file={GGUF!r}, dtype=torch.float32); "
            f"t = AutoTokenizer.from_pretrained({str(d)!r}, gguf_file={GGUF!r}); print(p.memory_info().rss - r0)"
        )
    # once per process, not per model: the libraries, the manager and the meta-device estimate are
    # set up first; both RSS readings follow a malloc_trim, as the manager's own readings do (glibc's
    # free lists are not memory the model holds)
    ours = (
        f"import json, psutil; from llmos_jupyter import api; from llmos_jupyter.models import loading; "
        f"from llmos_jupyter.resources.manager import _malloc_trim; "
        f"loading.prepare({spec!r}); import llama_cpp; api.manager(); loading.estimate({spec!r}, None, None); "
        f"_malloc_trim(); p = psutil.Process(); r0 = p.memory_info().rss; "
        f"api.load({spec!r}, alias='m', engine={engine!r}); _malloc_trim(); r1 = p.memory_info().rss; "
        f"r = api.manager().get('m'); print(json.dumps([r.estimated_bytes, r.real_bytes['cpu'], r1 - r0]))"
    )
    env = dict(os.environ, LLMOS_HOME=home, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ref = int(
        subprocess.run(
            [sys.executable, "-c", plain], capture_output=True, text=True, env=env, check=True, timeout=300
        ).stdout.split()[-1]
    )
    est, real, whole = json.loads(
        subprocess.run(
            [sys.executable, "-c", ours], capture_output=True, text=True, env=env, check=True, timeout=300
        ).stdout.splitlines()[-1]
    )
    assert abs(real - whole) / whole < 0.10, (real, whole)  # nothing the load keeps escapes the measurement
    assert abs(est - real) / real < 0.10, (est, real)
    if spec == "all-minilm-l6-v2":
        # plain transformers may leave MiniLM's safetensors memory-mapped, so embedding rows no text
        # used are never paged in (79 MB resident vs 87 MB of tensors on one machine, 107 MB on
        # another); llmos holds them all, so only the upper side of the 10% band applies
        assert ref <= 1.10 * real, (ref, real)
    else:
        assert abs(real - ref) / ref < 0.10, (real, ref)
