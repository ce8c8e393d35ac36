"""`%llm serve` under concurrent streaming clients, against `python -m llama_cpp.server`.

Three OpenAI-compatible servers on the same GGUF (SmolLM2-135M-Instruct Q4_1), each in its own
process on 127.0.0.1, one after the other in one invocation:

  (a) llmos, transformers engine  ``api.load(..., engine="transformers")`` + ``api.serve()``:
                                  concurrent requests are batched into one ``generate``
  (b) llmos, llama.cpp engine     ``api.load(..., engine="llama.cpp")`` + ``api.serve()``: a queue
  (c) llama-cpp-python's server   ``python -m llama_cpp.server --model FILE --interrupt_requests
                                  False`` (its default lets a new request cut the running one
                                  short); needs the ``bench`` extra: sse-starlette,
                                  starlette-context, pydantic-settings

For 1, 4 and 8 concurrent clients, ``--requests`` streamed chat requests in all (default 16,
shared out among the clients) of ``--tokens`` greedy tokens (default 64; ``temperature=0``, the
same prompts for everyone). Per configuration: requests/s, aggregate completion tokens/s,
p50/p95 time to first token and latency, failed requests. Then the ratios of aggregate
tokens/s at 8 clients vs 1 (targets: transformers ≥ 2, batching; llama.cpp ≥ 1) and llmos
llama.cpp vs llama_cpp.server. Completion tokens are the server's usage figure when it sends
one (``stream_options.include_usage``), else the number of content chunks. Loopback only;
every request has a timeout and every server process is stopped at the end.

Run::

    .venv/bin/python benchmarks/benchmark_serve.py                     # 16 requests x 64 tokens
    .venv/bin/python benchmarks/benchmark_serve.py --requests 32 --only a,b

The machine may be shared: the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Describe, in detail, how a steam engine works.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Explain the rules of chess to a beginner, step by step.",
    "Tell a long story about a robot lost in a big city.",
    "Describe a busy market in the morning, with every sound and smell.",
    "Write a long essay about why people enjoy music.",
    "Explain how bread is made, from wheat in the field to the loaf.",
]
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600

LLMOS_SERVER = """
import json, sys
from llmos_jupyter import api
kw = {{"threads": int(sys.argv[3])}} if sys.argv[2] == "llama.cpp" else {{}}
api.load(sys.argv[1], engine=sys.argv[2], alias="smol", **kw)
s = api.serve()
print("READY " + json.dumps({{"base_url": s["base_url"], "token": s["token"]}}), flush=True)
sys.stdin.read()
api.serve_stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llmos(path: Path, engine: str, threads: int):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", LLMOS_SERVER.format(), str(path), engine, str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            info = json.loads(line[6:])
            return proc, info["base_url"], info["token"], "smol"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"llmos {engine} server did not start")


def start_llama_cpp_server(path: Path, threads: int):
    import tempfile

    import httpx

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # llama.cpp logs a lot at load: a pipe would fill and block it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            # by default a new request interrupts the one decoding: queue them instead
            "--interrupt_requests",
            "False",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                "llama_cpp.server exited: "
                + log.read()[-500:]
                + "\n(install the bench extra: pip install -e '.[bench]')"
            )
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url, "none", str(path)
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start")


def one_request(client, url: str, token: str, model: str, prompt: str, tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, chunks, usage = None, 0, None
    with client.stream(
        "POST",
        url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
    ) as r:
        if r.status_code != 200:
            return {"ok": False, "why": f"HTTP {r.status_code}"}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if "error" in d:
                return {"ok": False, "why": d["error"].get("message", "error")}
            if d.get("usage"):
                usage = d["usage"]
            for c in d.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - t0
    n = usage["completion_tokens"] if usage else chunks
    return {"ok": n > 0, "ttft": first, "latency": time.perf_counter() - t0, "tokens": n, "why": "no tokens"}


def run_clients(url: str, token: str, model: str, clients: int, requests: int, tokens: int) -> dict:
    import httpx

    todo = list(range(requests))
    lock = threading.Lock()
    results = []

    def client_loop():
        with httpx.Client() as client:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                try:
                    res = one_request(client, url, token, model, PROMPTS[i % len(PROMPTS)], tokens)
                except Exception as e:  # counted as a failed request
                    res = {"ok": False, "why": repr(e)}
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S * requests)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")

    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    return {
        "clients": clients,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "why": sorted({r["why"] for r in results if not r["ok"]}),
        "wall_s": wall,
        "req_per_s": len(ok) / wall,
        "tok_per_s": sum(r["tokens"] for r in ok) / wall,
        "tokens": sum(r["tokens"] for r in ok),
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p95": pct(ttft, 0.95),
        "lat_p50": pct(lat, 0.5),
        "lat_p95": pct(lat, 0.95),
        "median_tokens": statistics.median([r["tokens"] for r in ok]) if ok else 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16, help="streamed requests per configuration (default 16)")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request, greedy (default 64)")
    ap.add_argument("--clients", default="1,4,8", help="concurrent clients to try (default 1,4,8)")
    ap.add_argument("--threads", type=int, default=None, help="decode threads (default: the physical cores)")
    ap.add_argument(
        "--only",
        default="a,b,c",
        help="which servers: a (llmos transformers), b (llmos llama.cpp), c (llama_cpp.server)",
    )
    args = ap.parse_args()
    from llmos_jupyter.models.engines.llamacpp import physical_cores
    from llmos_jupyter.pull import ensure_pulled

    threads = args.threads or physical_cores()
    path = Path(ensure_pulled("smollm2-135m-instruct")) / GGUF
    clients = [int(c) for c in args.clients.split(",")]
    servers = {
        "a": ("llmos transformers", lambda: start_llmos(path, "transformers", threads)),
        "b": ("llmos llama.cpp", lambda: start_llmos(path, "llama.cpp", threads)),
        "c": ("llama_cpp.server", lambda: start_llama_cpp_server(path, threads)),
    }
    load0 = os.getloadavg()
    print(
        f"SmolLM2-135M-Instruct Q4_1, {threads} threads, {args.requests} streamed requests x {args.tokens} greedy "
        f"tokens per configuration; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} "
        f"on {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = {}
    for key in args.only.split(","):
        name, start = servers[key]
        proc, url, token, model = start()
        try:
            run_clients(url, token, model, 1, 1, 8)  # warm-up (weights paged in, caches allocated)
            for c in clients:
                r = run_clients(url, token, model, c, args.requests, args.tokens)
                rows[(key, c)] = r
                print(
                    f"{name:<20} {c:>2} clients: {r['req_per_s']:5.2f} req/s  {r['tok_per_s']:6.1f} tok/s  "
                    f"TTFT p50 {r['ttft_p50']:.2f} s p95 {r['ttft_p95']:.2f} s  latency p50 {r['lat_p50']:.2f} s "
                    f"p95 {r['lat_p95']:.2f} s  ({r['tokens']} tokens, median {r['median_tokens']:.0f}/request, "
                    f"{r['failed']} failed{(': ' + '; '.join(r['why'])) if r['failed'] else ''})",
                    flush=True,
                )
        finally:
            if proc.stdin:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if key == "c":
                proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    load1 = os.getloadavg()
    print()
    print("| server | clients | req/s | tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (key, c), r in rows.items():
        print(
            f"| {servers[key][0]} | {c} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | {r['ttft_p50']:.2f} s | "
            f"{r['ttft_p95']:.2f} s | {r['lat_p50']:.2f} s | {r['lat_p95']:.2f} s | {r['failed']} |"
        )
    print()
    lo, hi = min(clients), max(clients)
    for key in args.only.split(","):
        if (key, lo) in rows and (key, hi) in rows:
            ratio = rows[(key, hi)]["tok_per_s"] / rows[(key, lo)]["tok_per_s"]
            target = {"a": " (target ≥ 2: batching)", "b": " (target ≥ 1)"}.get(key, "")
            print(f"{servers[key][0]}: aggregate tokens/s at {hi} clients / {lo} client = {ratio:.2f}x{target}")
    for c in clients:
        if ("b", c) in rows and ("c", c) in rows:
            print(
                f"llmos llama.cpp / llama_cpp.server at {c} clients: "
                f"{rows[('b', c)]['tok_per_s'] / rows[('c', c)]['tok_per_s']:.2f}x tokens/s"
            )
    failed = sum(r["failed"] for r in rows.values())
    print(f"failed requests: {failed}; load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
