"""Chat decode speed on CPU: transformers vs llama.cpp, raw libraries vs llmos's engines.

Same GGUF (SmolLM2-135M-Instruct Q4_1), same chat prompt rendered from the GGUF's template,
greedy, 128 new tokens asked for, the same thread count for everyone, one invocation:

  (a) raw transformers     ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=…)`` (dequantised
                           to float32) + ``apply_chat_template`` + ``model.generate``
  (b) llmos transformers   ``api.chat`` on an alias loaded with ``--engine transformers`` (what
                           ``%%llm chat`` runs: streaming, stats line)
  (c) raw llama-cpp-python ``Llama(model_path=…).create_chat_completion`` (its own GGUF template)
  (d) llmos llama.cpp      ``api.chat`` on an alias loaded with ``--engine llama.cpp``

Each competitor runs in its own fresh process (so its peak RSS is its own): load, one warm-up
call, then ``--repeats`` timed calls. tokens/s = completion tokens / wall time of the call (prompt
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


def raw_transformers(d: Path, threads: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")

    def call(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        return out.shape[1] - ids["input_ids"].shape[1], time.perf_counter() - t0

    call(8)
    runs = [call(TOKENS) for _ in range(repeats)]
    ttft = statistics.median(call(1)[1] for _ in range(repeats))
    return {"runs": runs, "ttft_s": ttft}


def raw_llama_cpp(d: Path, threads: int, repeats: int) -> dict:
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
    runs = [call() for _ in range(repeats)]
    ttft = statistics.median(first() for _ in range(repeats))
    return {"runs": runs, "ttft_s": ttft}


def llmos(engine: str, threads: int, repeats: int) -> dict:
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
    timed = [call() for _ in range(repeats)]
    return {"runs": [r for r, _ in timed], "ttft_s": statistics.median(t for _, t in timed)}


COMPETITORS = {"a": "raw transformers", "b": "llmos transformers", "c": "raw llama-cpp-python", "d": "llmos llama.cpp"}


def child(which: str, threads: int, repeats: int) -> None:
    from llmos_jupyter.pull import ensure_pulled

    d = Path(ensure_pulled("smollm2-135m-instruct"))
    res = {"a": lambda: raw_transformers(d, threads, repeats), "b": lambda: llmos("transformers", threads, repeats),
           "c": lambda: raw_llama_cpp(d, threads, repeats), "d": lambda: llmos("llama.cpp", threads, repeats)}[which]()
    res["peak_rss"] = peak_rss()
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=sorted(COMPETITORS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads, args.repeats)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    rows = {}
    for key, name in COMPETITORS.items():
        out = subprocess.run([sys.executable, __file__, "--child", key, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, env=env)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
        r = json.loads(line[-1][7:])
        tps = statistics.median(n / s for n, s in r["runs"])
        rows[key] = {"tokens": statistics.median(n for n, _ in r["runs"]), "tokens_per_s": tps, "ttft_s": r["ttft_s"],
                     "peak_rss": r["peak_rss"]}
        print(f"({key}) {name:22s} {rows[key]['tokens']:5.0f} tokens  {tps:7.1f} tokens/s  first token "
              f"{r['ttft_s'] * 1000:6.0f} ms  peak RSS {r['peak_rss'] / 2**20:6.0f} MiB", flush=True)
    t = {k: v["tokens_per_s"] for k, v in rows.items()}
    print(f"\n{args.threads} threads, median of {args.repeats}, {TOKENS} new tokens asked for")
    for label, num, den, target in (("(b)/(a) llmos transformers vs raw", "b", "a", 0.95),
                                    ("(d)/(c) llmos llama.cpp vs raw", "d", "c", 0.95),
                                    ("(d)/(a) llmos llama.cpp vs raw transformers", "d", "a", 6.0)):
        ratio = t[num] / t[den]
        print(f"{label:45s} {ratio:6.2f}x  (target ≥ {target}: {'met' if ratio >= target else 'NOT met'})")


if __name__ == "__main__":
    main()
