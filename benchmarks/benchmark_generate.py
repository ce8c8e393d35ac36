"""Chat decode speed on CPU: transformers vs llama.cpp, raw libraries vs llmos's engines.

Same GGUF (SmolLM2-135M-Instruct Q4_1), same chat prompt rendered from the GGUF's template,
greedy, 128 new tokens asked for, the same thread count for everyone, one invocation:

  (a) raw transformers     ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=…)`` (dequantised
                           to float32) + ``apply_chat_template`` + ``model.generate``
  (b) llmos transformers   ``api.chat`` on an alias loaded with ``--engine transformers`` (what
                           ``%%llm chat`` runs: streaming, stats line)
  (c) raw llama-cpp-python ``Llama(model_path=…).create_chat_completion`` (its own GGUF template)
  (d) llmos llama.cpp      ``api.chat`` on an alias loaded with ``--engine llama.cpp``

Each competitor runs in its own fresh process (so its peak RSS is its own): load and one warm-up
call each, then ``--repeats`` rounds in which the four take turns, one timed call each (so load
from elsewhere on the machine hits all of them alike). tokens/s = completion tokens / wall time of the call (prompt
evaluation included, as a user waits for it); time to first token from a separate streamed (or
1-token) call. Prints the median of each, peak RSS, and the ratios the engines issue targets:
(b)/(a) ≥ 0.95, (d)/(c) ≥ 0.95, (d)/(a) ≥ 6.

Run::

    .venv/bin/python benchmarks/benchmark_generate.py                 # 2 threads, 3 repeats
    .venv/bin/python benchmarks/benchmark_generate.py --threads 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."
TOKENS = 128


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def raw_transformers(d: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")

    def call(n=TOKENS):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        return out.shape[1] - ids["input_ids"].shape[1], time.perf_counter() - t0

    call(8)
    return lambda: (call(), call(1)[1])


def raw_llama_cpp(d: Path, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(d / GGUF), n_ctx=4096, n_threads=threads, verbose=False)
    msgs = [{"role": "user", "content": PROMPT}]

    def call():
        t0 = time.perf_counter()
        out = llm.create_chat_completion(msgs, max_tokens=TOKENS, temperature=0.0)
        return out["usage"]["completion_tokens"], time.perf_counter() - t0

    def first():
        t0 = time.perf_counter()
        for chunk in llm.create_chat_completion(msgs, max_tokens=TOKENS, temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                return time.perf_counter() - t0

    call()
    return lambda: (call(), first())


def llmos(engine: str, threads: int):
    import contextlib
    import io

    from llmos_jupyter import api

    if engine == "transformers":
        import torch

        torch.set_num_threads(threads)
        api.load("smollm2-135m-instruct", alias="m", engine="transformers")
    else:
        api.load("smollm2-135m-instruct", alias="m", engine="llama.cpp", threads=threads)

    def call():
        with contextlib.redirect_stdout(io.StringIO()):  # streamed to the cell, as %%llm chat does
            t0 = time.perf_counter()
            reply = api.chat("m", PROMPT, reset=True, max_new_tokens=TOKENS)
            wall = time.perf_counter() - t0
        return (reply.stats.completion_tokens, wall), reply.stats.ttft_s

    call()
    return call


COMPETITORS = {"a": "raw transformers", "b": "llmos transformers", "c": "raw llama-cpp-python", "d": "llmos llama.cpp"}


def child(which: str, threads: int) -> None:
    """Load once, say READY, then time one call per line read from stdin (one JSON line back)."""
    from llmos_jupyter.pull import ensure_pulled

    d = Path(ensure_pulled("smollm2-135m-instruct"))
    timed = {
        "a": lambda: raw_transformers(d, threads),
        "b": lambda: llmos("transformers", threads),
        "c": lambda: raw_llama_cpp(d, threads),
        "d": lambda: llmos("llama.cpp", threads),
    }[which]()
    print("READY", flush=True)
    for _ in sys.stdin:
        (n, wall), ttft = timed()
        print("RESULT " + json.dumps({"tokens": n, "wall_s": wall, "ttft_s": ttft, "peak_rss": peak_rss()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=sorted(COMPETITORS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    procs = {}
    for key in COMPETITORS:  # one process each, loaded one after the other (idle ones use no CPU)
        p = subprocess.Popen(
            [sys.executable, __file__, "--child", key, "--threads", str(args.threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        while (line := p.stdout.readline()) and line.strip() != "READY":
            pass
        if not line:
            sys.exit(f"{COMPETITORS[key]} failed to load")
        procs[key] = p
    runs = {k: [] for k in COMPETITORS}
    for _ in range(args.repeats):  # round-robin, so load from elsewhere hits every competitor alike
        for key, p in procs.items():
            p.stdin.write("go\n")
            p.stdin.flush()
            while not (line := p.stdout.readline()).startswith("RESULT "):
                if not line:
                    sys.exit(f"{COMPETITORS[key]} failed")
            runs[key].append(json.loads(line[7:]))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    t = {}
    for key, name in COMPETITORS.items():
        r = runs[key]
        t[key] = statistics.median(x["tokens"] / x["wall_s"] for x in r)
        ttft = statistics.median(x["ttft_s"] for x in r)
        print(
            f"({key}) {name:22s} {statistics.median(x['tokens'] for x in r):5.0f} tokens  {t[key]:7.1f} tokens/s  "
            f"first token {ttft * 1000:6.0f} ms  peak RSS {r[-1]['peak_rss'] / 2**20:6.0f} MiB",
            flush=True,
        )
    print(f"\n{args.threads} threads, median of {args.repeats} round-robin rounds, {TOKENS} new tokens asked for")
    for label, num, den, target in (
        ("(b)/(a) llmos transformers vs raw", "b", "a", 0.95),
        ("(d)/(c) llmos llama.cpp vs raw", "d", "c", 0.95),
        ("(d)/(a) llmos llama.cpp vs raw transformers", "d", "a", 6.0),
    ):
        ratio = t[num] / t[den]
        print(f"{label:45s} {ratio:6.2f}x  (target ≥ {target}: {'met' if ratio >= target else 'NOT met'})")


if __name__ == "__main__":
    main()
