"""What a rank of a distributed fine-tune needs beyond the one-process loop: its process group,
its share of each global batch, the sums and agreements between ranks, and the DDP / FSDP2 wrap.

:func:`~.finetune.finetune` takes a :class:`RankGroup` as ``dist=`` and otherwise runs the same
code in one process or N (``training/rank_main.py`` builds the group in each rank that
``torchrun`` or ``accelerate launch`` started; ``training/launch.py`` starts them from the kernel).

Same rows as one process. A global batch of B rows comes from the same seeded
``length_grouped_batches`` the one-process run uses; rank r of N takes the r-th contiguous slice
of it (:func:`shard_rows`), so step t trains on exactly the rows step t of a one-process run
trains on. ``torch.utils.data.DistributedSampler(shuffle=True, seed=s)`` would instead shuffle
the whole set and deal rows round-robin to the ranks: other batches than one process with seed s.

Same loss. Each rank sums the per-row loss of its slice (per response token for causal-lm) and
divides by the row (token) count of the *global* batch, then multiplies by N because DDP and FSDP
average gradients over ranks. The all-reduced gradient is then the gradient of the global mean,
also when slices are unequal (B not a multiple of N, the last batch of an epoch). DDP's usual
recipe, a per-rank mean averaged over ranks, equals the global mean only when every rank holds
the same number of rows (tokens). A rank whose slice is empty (a final batch with fewer rows
than ranks) runs the batch's first row with weight 0, so it still joins the gradient all-reduce.

Backends: gloo on CPU, nccl on CUDA (one GPU per local rank). Parallelism: DDP
(``torch.nn.parallel.DistributedDataParallel``) by default; FSDP2 (``torch.distributed.fsdp.fully_shard``,
https://docs.pytorch.org/docs/stable/distributed.fsdp.fully_shard.html) shards parameters,
gradients and optimizer state, one unit per transformer block (the model's ``_no_split_modules``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional

import numpy as np

BACKENDS = ("gloo", "nccl")


def shard_rows(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous slice of a global batch ``rows`` (``(B,)`` row indices).

    ``numpy.array_split``: the first ``B % world_size`` ranks get ``B // world_size + 1`` rows,
    the others ``B // world_size``; concatenating the slices in rank order gives ``rows`` back.

    >>> [s.tolist() for s in (shard_rows(np.arange(5), r, 2) for r in range(2))]
    [[0, 1, 2], [3, 4]]
    """
    return np.array_split(rows, world_size)[rank]


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank``'s random stream (dropout masks) in a run seeded ``seed``:
    ``seed`` itself on rank 0 (so one rank draws what one process draws), a distinct stream per
    other rank (NumPy's ``SeedSequence`` of ``(seed, rank)``)."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


@dataclass
class RankGroup:
    """This process's place in a distributed run, and the collective operations the loop uses.

    Attributes:
        rank: global rank, 0 .. world_size-1; local_rank: rank on this machine.
        world_size: processes in the run (nodes × processes per node).
        backend: ``gloo`` (CPU) or ``nccl`` (CUDA).
        device: where this rank's model lives (``cuda:<local_rank>`` with nccl, else cpu).
        fsdp: shard parameters with FSDP2 instead of replicating them with DDP.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: Any
    fsdp: bool = False

    @classmethod
    def from_env(cls, backend: str, *, fsdp: bool = False, timeout_s: float = 600.0) -> "RankGroup":
        """Join the process group of the ranks ``torchrun`` / ``accelerate launch`` started
        (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in the
        environment), with ``backend`` and a collective timeout of ``timeout_s`` seconds."""
        import torch
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local,
            backend=backend,
            device=device,
            fsdp=fsdp,
        )

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that writes progress events and checkpoints."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters are sharded (FSDP2): forwards, state dicts and checkpoints are collective."""
        return self.fsdp

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's slice of the global batch ``rows`` (:func:`shard_rows`)."""
        return shard_rows(rows, self.rank, self.world_size)

    # ------------------------------------------------------------------ collectives
    def sum(self, value: float) -> float:
        """Σ over ranks of ``value`` (float64 all-reduce)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a stop request must be agreed,
        or one rank would wait forever in the next step's all-reduce)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ model wrapping
    def wrap(self, loss_module: Any, model: Any) -> Any:
        """Make ``loss_module`` (a module whose forward returns a summed loss and which holds
        ``model``) train across the ranks.

        DDP: wraps ``loss_module`` (replicas start from rank 0's weights, broadcast at
        construction; gradients are averaged in buckets during backward). FSDP2:
        ``fully_shard`` on each transformer block of ``model``, then on ``model`` itself (its
        forward gathers the parameters the blocks do not own); ``loss_module`` is returned
        unwrapped. Every parameter that requires a gradient must get one in every step.
        """
        if not self.fsdp:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers (position ids) are equal in every replica: no per-forward broadcast
            sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}
            )
            return DDP(loss_module, device_ids=ids, find_unused_parameters=False, **sync)
        from torch.distributed.fsdp import fully_shard

        blocks = block_classes(model)
        for mod in list(model.modules()):
            if mod is not model and type(mod).__name__ in blocks:
                fully_shard(mod)
        fully_shard(model)
        return loss_module

    @contextlib.contextmanager
    def no_sync(self, fwd: Any, model: Any, skip: bool) -> Iterator[None]:
        """With ``skip`` True, accumulate this micro-batch's gradients locally (no all-reduce):
        DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``."""
        if not skip:
            yield
            return
        if self.fsdp:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
            return
        with fwd.no_sync():
            yield

    def full_state_dict(self, model: Any) -> Optional[dict[str, Any]]:
        """FSDP2: the whole model's state dict on CPU, on rank 0 (None elsewhere); a collective
        every rank must call. DDP: None (each replica holds every weight)."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.main else None


def block_classes(model: Any) -> set[str]:
    """Class names of the transformer blocks FSDP2 shards one by one: the names in
    ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (comma-separated; ``accelerate launch`` sets it from its FSDP
    config), else the model's (or peft base model's) ``_no_split_modules`` (e.g.
    ``LlamaDecoderLayer``), else the class of the repeated entries of its ``nn.ModuleList``s
    (BERT's ``encoder.layer``: ``BertLayer``)."""
    from torch import nn

    env = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
    if env:
        return {c.strip() for c in env.split(",") if c.strip()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = {n for n in (getattr(base, "_no_split_modules", None) or []) if "Embedding" not in n}
    if names:
        return names
    out: set[str] = set()
    for mod in base.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1 and len({type(m) for m in mod}) == 1:
            out.add(type(mod[0]).__name__)
    return out
