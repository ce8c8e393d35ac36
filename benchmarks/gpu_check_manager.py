"""GPU check of the resource manager: budgets, offload to CPU, move back, unload, memory returned.

    .venv/bin/python benchmarks/gpu_check_manager.py [--hidden 1024 --layers 8]

On a CUDA machine: builds one random Llama from a config (~94M params at the defaults, ~190 MB
in bf16; nothing downloaded), loads it twice as 'a' and 'b' on cuda:0 under a GPU budget of
1.5 models, so loading 'b' must evict 'a' — which, with CPU room, is an *offload* to the CPU.
A call on 'a' then moves it back (offloading 'b'). With the CPU budget then shrunk, a call on
'b' forces an eviction that must *unload* 'a'. Prints estimate vs measured device bytes and the
CUDA memory that came back at each step (``torch.cuda.memory_allocated``), then ``RESULT`` lines;
exit status 1 if a check fails (estimate error > 10%, < 90% of a model's bytes returned).
Without CUDA it says it needs CUDA and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check_manager: needs CUDA (torch.cuda.is_available() is False); nothing checked")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="llmos-gpu-check-"))
    os.environ.setdefault("LLMOS_HOME", str(tmp / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmark_ps import save_tiny_model

    from llmos_jupyter import api
    from llmos_jupyter.resources.memory import format_size

    dev = "cuda:0"
    m = api.manager()
    path = save_tiny_model(
        tmp / "llama",
        "llama",
        hidden=args.hidden,
        layers=args.layers,
        intermediate=int(args.hidden * 2.75),
        heads=max(4, args.hidden // 64),
    )
    failures: list[str] = []
    alloc = lambda: torch.cuda.memory_allocated(dev)  # noqa: E731

    def report(alias: str) -> None:
        rec = m.get(alias)
        measured = sum(rec.bytes.values())
        err = (rec.estimated_bytes - measured) / measured
        print(
            f"  {alias}: {rec.state} on {rec.device}; estimated {format_size(rec.estimated_bytes)}, measured "
            f"{', '.join(f'{d} {format_size(b)}' for d, b in rec.bytes.items())} (error {err * 100:+.2f}%)"
        )
        if abs(err) > 0.10:
            failures.append(f"estimate error {err * 100:+.1f}% for {alias}")

    base = alloc()
    api.load(str(path), alias="probe", task="causal-lm", device=dev)
    size = m.get("probe").bytes[dev]
    api.unload("probe")
    print(f"model: {format_size(size)} on {dev} ({torch.cuda.get_device_name(0)})")
    api.budget(gpu=f"0:{int(size * 1.5)}")
    print(f"GPU budget: {format_size(int(size * 1.5))} (1.5 models)")

    api.load(str(path), alias="a", task="causal-lm", device=dev)
    report("a")
    a0 = alloc()
    api.load(str(path), alias="b", task="causal-lm", device=dev)  # must offload 'a'
    ev = [e for e in api.events().history if e["type"] == "offload" and e["alias"] == "a"]
    report("a")
    report("b")
    if m.get("a").state != "offloaded" or not ev:
        failures.append("'a' was not offloaded when 'b' needed the room")
    else:
        back = ev[-1]["device_freed"]
        print(
            f"RESULT offload 'a': {format_size(back)} of CUDA memory came back for {format_size(size)} measured "
            f"({back / size * 100:.1f}%)"
        )
        if back < 0.9 * size:
            failures.append(f"offload returned only {back / size * 100:.1f}% of 'a'")

    text = api.generate("a", "hello world", max_new_tokens=4, stream=False)  # moves 'a' back, offloads 'b'
    report("a")
    report("b")
    if m.get("a").state != "ready" or m.get("a").device != dev or m.get("b").state != "offloaded":
        failures.append("a call on offloaded 'a' did not move it back (and offload 'b')")
    print(f"RESULT restore 'a' on call: generated {len(text)} chars; states a={m.get('a').state} b={m.get('b').state}")

    api.budget(cpu=m.used("cpu") + size // 2)  # no CPU room: the next eviction must unload
    before = alloc()
    api.generate("b", "hello world", max_new_tokens=4, stream=False)
    (ev_unload,) = [e for e in api.events().history if e["type"] == "evict" and e["alias"] == "a"] or [None]
    if ev_unload is None or "a" in m.aliases():
        failures.append("with the CPU full, eviction of 'a' did not unload it")
    else:
        back = ev_unload["device_freed"].get(dev, 0)
        print(
            f"RESULT unload 'a' on eviction (CPU full): {format_size(back)} of CUDA memory came back for "
            f"{format_size(size)} measured ({back / size * 100:.1f}%)"
        )
        if back < 0.9 * size:
            failures.append(f"unload returned only {back / size * 100:.1f}% of 'a'")
    report("b")
    print(f"  CUDA allocated: {format_size(before)} before the call on 'b', {format_size(alloc())} after")

    api.unload("b")
    left = alloc() - base
    print(
        f"RESULT all unloaded: CUDA allocated {format_size(left)} above the start (a model is {format_size(size)}); "
        f"peak with 'a' loaded {format_size(a0 - base)}"
    )
    if left > 0.1 * size:
        failures.append(f"{format_size(left)} still allocated after unloading everything")
    for f in failures:
        print(f"FAIL {f}")
    print("gpu_check_manager: " + ("ok" if not failures else f"{len(failures)} check(s) failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
