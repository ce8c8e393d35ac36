"""Distributed fine-tuning on CUDA: nccl ranks, one per GPU of the machine, DDP and FSDP2, against
the same run in one process on one GPU. Skipped without CUDA.

Run on a CUDA machine:  .venv/bin/python -m pytest tests/training/test_distributed_gpu.py -q -s -m gpu
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPUs (nccl)"),
]

ROWS = [
    {"text": t, "label": y}
    for t, y in [
        ("great movie", 1),
        ("awful film", 0),
        ("a gorgeous, witty, seductive movie", 1),
        ("this film was a complete waste of two hours", 0),
        ("hello world great", 1),
        ("the lazy dog awful", 0),
    ]
    * 16
]


def _losses(run) -> list[float]:
    return json.loads((Path(run.checkpoint) / "trainer_state.json").read_text())["train_loss"]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_all_gpus_train_like_one_gpu(fresh_api, tmp_path, fsdp):
    from tiny_kit import save_tiny

    api = fresh_api
    n = torch.cuda.device_count()
    path = str(save_tiny(tmp_path / "bert", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    for alias in ("one", "all"):
        api.load(path, alias=alias, task="seq-cls", labels="negative,positive", device="cuda:0", dtype="float32")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    opts = dict(epochs=2, batch_size=8 * n + 1, lr=1e-3, seed=4, progress=False)  # unequal slices on purpose
    a = api.finetune("one", "toy", **opts)
    b = api.finetune("all", "toy", nproc=n, fsdp=fsdp, **opts)
    assert b.status == "completed" and b.distributed["backend"] == "nccl" and b.distributed["world_size"] == n
    rel = max(abs(x - y) / abs(x) for x, y in zip(_losses(a), _losses(b)))
    print(f"\n{n} GPU rank(s) ({'fsdp' if fsdp else 'ddp'}) vs 1 process: worst loss difference {rel:.2e} relative")
    assert rel < 1e-4
    assert api.evaluate("all", "toy", batch_size=64, max_length=128).to_metrics()["n"] == b.metrics["n"]
