"""Speed of the llmos_triton fused attention against PyTorch SDPA's backends, and end to end.

One command on a CUDA machine (about 3-5 minutes on an H200, most of it first-time compilation
and autotuning; Triton caches both for the next run):

    .venv/bin/python benchmarks/benchmark_attention.py            # kernels table + end to end
    .venv/bin/python benchmarks/benchmark_attention.py --quick    # S in {1k, 4k, 16k}, no e2e
    .venv/bin/python benchmarks/benchmark_attention.py --attn triton --e2e-only   # one model run

Kernel table: TFLOP/s in bf16 for forward ("fwd") and forward + backward ("fwd+bwd") with
FLOPs = 4 * B * H * S_q * S_k * D (x 0.5 causal; backward 2.5x forward, so fwd+bwd = 3.5x),
for ours and SDPA's flash, efficient and cuDNN backends ("-" where a backend refuses a shape),
over the shapes of Triton's fused-attention tutorial (B=4, H=32, D=64), B*S = 16k with
H*D = 2048, D = 128, and a GQA row (H=32, H_kv=8, D=128), S from 512 to 16k, causal on and off.
End to end: a randomly initialised ~1.2B Llama (or --model PATH) in bf16, training tokens/s
(forward + backward) and greedy generation tokens/s, with attn_implementation "llmos_triton"
vs "sdpa" (--attn picks one or both).

Without CUDA it says so, runs a tiny forward + backward through Triton's CPU interpreter as a
smoke test (TRITON_INTERPRET=1, seconds), prints that result and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the kernel module's import (triton.jit reads it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from llmos_jupyter.ops import attention, registration  # noqa: E402

S_ALL = [512, 1024, 2048, 4096, 8192, 16384]
S_QUICK = [1024, 4096, 16384]


def attention_flops(B, H, S_q, S_k, D, causal: bool, mode: str) -> float:
    """FLOPs of attention: 2 matmuls of 2*S_q*S_k*D each per head; half when causal;
    the backward does 2.5x the forward's work (5 matmuls vs 2)."""
    f = 4.0 * B * H * S_q * S_k * D * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)


def shape_sets(s_values):
    """(label, B, H, H_kv, S, D) rows of the kernel table."""
    rows = []
    for S in s_values:
        rows.append(("tutorial", 4, 32, 32, S, 64))
    for S in s_values:
        rows.append(("16k-tok", max(1, 16384 // S), 16, 16, S, 128))
    for S in s_values:
        rows.append(("gqa-4:1", max(1, 16384 // S), 32, 8, S, 128))
    return rows


def _providers():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def ours(q, k, v, causal):
        return attention.flash_attention(q, k, v, causal=causal)

    def sdpa(backend):
        def run(q, k, v, causal):
            with sdpa_kernel([backend]):
                gqa = dict(enable_gqa=True) if k.shape[1] != q.shape[1] else {}
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)

        return run

    return {
        "ours": ours,
        "flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    }


def bench_kernels(s_values, modes=("fwd", "fwd+bwd")) -> None:
    from triton.testing import do_bench

    providers = _providers()
    print(f"\nattention kernels, bf16, TFLOP/s ({torch.cuda.get_device_name(0)})")
    head = f"{'shape':9s} {'B':>3s} {'H':>3s} {'Hkv':>3s} {'S':>6s} {'D':>4s} {'causal':>6s} {'mode':>8s}"
    print(head + "".join(f"{p:>10s}" for p in providers) + f"{'ours/best':>10s}")
    for label, B, H, H_kv, S, D in shape_sets(s_values):
        q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, H_kv, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, H_kv, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for causal in (False, True):
            for mode in modes:
                cells, tflops = [], {}
                for name, fn in providers.items():
                    try:
                        if mode == "fwd":

                            def step(fn=fn):
                                with torch.no_grad():
                                    fn(q, k, v, causal)
                        else:
                            o = fn(q, k, v, causal)
                            do = torch.randn_like(o)

                            def step(fn=fn, do=do):
                                fn(q, k, v, causal).backward(do)

                        ms = do_bench(step, warmup=10, rep=40, grad_to_none=[q, k, v])
                        tflops[name] = attention_flops(B, H, S, S, D, causal, mode) / (ms * 1e-3) / 1e12
                        cells.append(f"{tflops[name]:10.1f}")
                    except RuntimeError:  # backend refuses this shape / dtype / GQA
                        cells.append(f"{'-':>10s}")
                others = [t for n, t in tflops.items() if n != "ours"]
                ratio = f"{tflops['ours'] / max(others):10.2f}" if "ours" in tflops and others else f"{'-':>10s}"
                print(
                    f"{label:9s} {B:3d} {H:3d} {H_kv:3d} {S:6d} {D:4d} {str(causal):>6s} {mode:>8s}"
                    + "".join(cells)
                    + ratio,
                    flush=True,
                )
        q = k = v = None  # free the inputs before the next size (the closures above read these names)
        torch.cuda.empty_cache()


def bench_end_to_end(impls, model_path: str | None) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    registration.register()
    print(
        "\nend to end, bf16: training = forward+backward tokens/s (B=4, S=2048); "
        "generate = new tokens/s (B=16, prompt 256, 128 new, greedy)"
    )
    for impl in impls:
        name = {"triton": attention.NAME, "sdpa": "sdpa"}[impl]
        if model_path:
            model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation=name, dtype=torch.bfloat16)
        else:  # ~1.2B Llama-3.2-1B-like shape, random weights (no download needed)
            torch.manual_seed(0)
            cfg = LlamaConfig(
                vocab_size=32000,
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=64,
                max_position_embeddings=4096,
            )
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=name, dtype=torch.bfloat16)
        model = model.cuda()
        vocab = model.config.vocab_size
        ids = torch.randint(3, vocab, (4, 2048), device="cuda")

        def train_step():
            model(input_ids=ids, labels=ids).loss.backward()

        train_step()  # compile + autotune
        torch.cuda.synchronize()
        t0, n = time.perf_counter(), 3
        for _ in range(n):
            train_step()
        torch.cuda.synchronize()
        train_tps = n * ids.numel() / (time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)

        prompt = torch.randint(3, vocab, (16, 256), device="cuda")
        gen = dict(
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=128,
            min_new_tokens=128,
            do_sample=False,
            pad_token_id=0,
        )
        with torch.no_grad():
            model.generate(prompt, **dict(gen, max_new_tokens=8, min_new_tokens=8))  # warm up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(prompt, **gen)
            torch.cuda.synchronize()
        gen_tps = 16 * 128 / (time.perf_counter() - t0)
        print(f"  --attn {impl:6s}  training {train_tps:10.0f} tok/s   generate {gen_tps:8.0f} tok/s", flush=True)
        model = None  # free it before the next implementation (train_step reads this name)
        torch.cuda.empty_cache()


def cpu_smoke() -> None:
    """Tiny forward + backward through the interpreter, checked against PyTorch SDPA."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 17, 16, requires_grad=True)
    k = torch.randn(1, 2, 17, 16, requires_grad=True)
    v = torch.randn(1, 2, 17, 16, requires_grad=True)
    t0 = time.perf_counter()
    out = attention.flash_attention(q, k, v, causal=True)
    out.sum().backward()
    took = time.perf_counter() - t0
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref.sum().backward()
    err = max([(out - ref).abs().max().item()] + [(a - t.grad).abs().max().item() for a, t in zip(grads, (q, k, v))])
    print(
        f"interpreter smoke test: B=1 H=4 H_kv=2 S=17 D=16 causal fp32 forward+backward in {took:.1f}s, "
        f"max |ours - SDPA| over out, dq, dk, dv = {err:.2e} ({'ok' if err < 1e-4 else 'MISMATCH'})"
    )
    if err >= 1e-4:
        raise SystemExit(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="S in {1k, 4k, 16k} and no end-to-end run")
    parser.add_argument(
        "--attn",
        choices=["triton", "sdpa", "both"],
        default="both",
        help="attention implementation(s) for the end-to-end run (default both)",
    )
    parser.add_argument("--e2e-only", action="store_true", help="skip the kernel table")
    parser.add_argument("--kernels-only", action="store_true", help="skip the end-to-end run")
    parser.add_argument(
        "--model",
        default=None,
        help="local checkpoint for the end-to-end run (default: a random ~1.2B Llama built from its config)",
    )
    parser.add_argument(
        "--no-smoke", action="store_true", help="on a CPU-only machine, skip the interpreter smoke test"
    )
    args = parser.parse_args(argv)

    ok, why = attention.is_available()
    if not torch.cuda.is_available():
        print(
            "benchmark_attention: the speed table needs a CUDA GPU and there is none here; "
            "run this script on a CUDA machine (one command, no arguments)."
        )
        if not args.no_smoke and ok:
            cpu_smoke()
        return 0
    if not ok:
        print(f"benchmark_attention: the Triton kernels cannot run: {why}")
        return 1
    t0 = time.perf_counter()
    if not args.e2e_only:
        bench_kernels(S_QUICK if args.quick else S_ALL)
    if not (args.kernels_only or args.quick):
        bench_end_to_end(["triton", "sdpa"] if args.attn == "both" else [args.attn], args.model)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
