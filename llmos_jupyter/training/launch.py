"""Distributed fine-tuning from the kernel: ranks started by ``torchrun`` or ``accelerate launch``
as subprocesses of a background job, and the same run exported for a cluster.

The kernel never forks itself into ranks and never joins a process group (so it works after CUDA
was initialised in the kernel, where ``accelerate.notebook_launcher``'s fork breaks):

1. :func:`write_spec` puts what the ranks need in the run folder (``<run>/launch/``): the alias's
   current weights as safetensors (a LoRA adapter folder next to them when the alias carries
   adapters; weights never trained, like a new classification head, left out so each rank
   initialises them from the run seed exactly as the kernel would), the tokenizer, and
   ``spec.json`` naming the dataset version's saved Arrow folder, the splits, the config and
   where to write.
2. :func:`torchrun_command` / :func:`accelerate_command` build ``python -m torch.distributed.run
   --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT ... -m
   llmos_jupyter.training.rank_main SPEC`` (or the ``accelerate launch`` equivalent);
   :class:`~.supervisor.Supervisor` starts it in a new session and watches it: it reads rank 0's
   progress events (``<run>/events.jsonl``, see :mod:`.rank_main`), counts the ranks alive, and on a
   cancel sends SIGTERM to every rank (they stop together at the next step boundary and rank 0
   writes a resumable checkpoint), then SIGKILL to whatever is left after ``grace_s`` seconds.
   Per-rank logs: ``<run>/logs/rank<R>.log``; the launcher's own: ``<run>/logs/launcher.log``.
3. :func:`load_trained` puts the checkpoint's weights into the alias (hot swap), as a run in the
   kernel leaves them.

A rank that dies ends the run as failed: :func:`~.supervisor.failure_reason` names it
(torchrun's root-cause record) with its last log line. :func:`export_launch` writes the same spec plus an entry script,
the torchrun lines for N nodes, a Slurm script and an ``accelerate launch`` FSDP config into a
folder, for a run outside Jupyter (``docs/distributed.md``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UsageError
from .distributed import BACKENDS
from .supervisor import ENTRY, GRACE_S, DistributedResult, Supervisor, run_summary

LAUNCHERS = ("torchrun", "accelerate")
SPEC = "spec.json"
DEFAULT_PORT = 29500  # torchrun's default rendezvous port, for exported launches


@dataclass
class LaunchConfig:
    """How a fine-tune is spread over processes.

    Args:
        nproc: ranks per node (default 1; ``--nproc``). Each rank is one process: on CUDA one
            GPU each (nccl), on a CPU they share the cores (gloo).
        nnodes: machines (default 1; ``--nnodes``). A kernel starts this machine's ranks; an
            exported launch gives the command for each node.
        backend: ``gloo`` or ``nccl`` (default: nccl for a model on a GPU, gloo on a CPU).
        launcher: ``torchrun`` (default; ``python -m torch.distributed.run``) or ``accelerate``
            (``accelerate launch`` with a generated config file; it runs torchrun underneath).
        fsdp: shard parameters, gradients and optimizer state (FSDP2) instead of replicating the
            model in every rank (DDP).
        rdzv_endpoint: ``HOST:PORT`` of the rendezvous (default: ``127.0.0.1`` and a free port
            for a kernel launch, ``127.0.0.1:29500`` in an export).

    Raises:
        UsageError: a value out of range, one line naming the flag.
    """

    nproc: int = 1
    nnodes: int = 1
    backend: Optional[str] = None
    launcher: str = "torchrun"
    fsdp: bool = False
    rdzv_endpoint: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("nproc", "nnodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(
                    f"--{name} {v} is not allowed: it counts processes, a whole number >= 1; e.g. --{name} 2"
                )
        if self.backend is not None and self.backend not in BACKENDS:
            raise UsageError(
                f"--backend {self.backend} is not a torch.distributed backend here; use gloo (CPU) or nccl (CUDA GPUs)"
            )
        if self.launcher not in LAUNCHERS:
            raise UsageError(f"--launcher {self.launcher} is not known; use torchrun or accelerate")
        if self.rdzv_endpoint is not None:
            host, _, port = str(self.rdzv_endpoint).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(
                    f"--rdzv-endpoint {self.rdzv_endpoint} is not HOST:PORT; e.g. --rdzv-endpoint 127.0.0.1:29500"
                )

    @property
    def world_size(self) -> int:
        """Ranks in the run: ``nnodes × nproc``."""
        return self.nnodes * self.nproc

    def endpoint(self, default_port: Optional[int] = None) -> tuple[str, int]:
        """(host, port) of the rendezvous; ``default_port`` when none was given (a free one when
        that is None too)."""
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            return host, int(port)
        return "127.0.0.1", default_port if default_port is not None else free_port()

    def record(self, backend: str) -> dict[str, Any]:
        """What the run registry keeps about the launch."""
        return {
            "world_size": self.world_size,
            "nproc_per_node": self.nproc,
            "nnodes": self.nnodes,
            "backend": backend,
            "launcher": self.launcher,
            "fsdp": self.fsdp,
        }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound (another process listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def default_backend(device: str) -> str:
    """nccl for a model on a CUDA device, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def check_launch(lc: LaunchConfig, *, backend: str, n_train: int, config: Any, resume: bool, kernel: bool) -> None:
    """Refuse, in one line each, a launch that cannot run: nccl without GPUs or with more local
    ranks than GPUs, more ranks than training rows or than rows per global batch, FSDP with
    best-model tracking or ``--resume``, a rendezvous port already taken (kernel launches of one
    node), several nodes from the kernel without ``--rdzv-endpoint`` or with ``accelerate``.

    Raises:
        UsageError: the reason and the fix.
    """
    if backend == "nccl":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--backend nccl needs CUDA GPUs and this machine has none; use --backend gloo (the default on a CPU)"
            )
        if lc.nproc > torch.cuda.device_count():
            raise UsageError(
                f"--nproc {lc.nproc} with nccl needs {lc.nproc} GPUs per node, this machine has "
                f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()}"
            )
    if lc.world_size > n_train:
        raise UsageError(
            f"{lc.world_size} ranks for {n_train} training rows: every rank needs rows; "
            f"use --nproc {max(1, n_train // lc.nnodes)} or fewer"
        )
    if lc.world_size > config.batch_size:
        raise UsageError(
            f"{lc.world_size} ranks share each global batch of --batch-size {config.batch_size} rows; "
            f"use --batch-size {lc.world_size} or more, or fewer ranks"
        )
    if lc.fsdp and config.track_best:
        raise UsageError("--fsdp keeps no unsharded copy of the best weights; drop --patience/--metric, or drop --fsdp")
    if lc.fsdp and resume:
        raise UsageError("an --fsdp run cannot --resume yet (its optimizer state is sharded); resume without --fsdp")
    if kernel and lc.nnodes > 1 and lc.launcher == "accelerate":
        raise UsageError(
            "--launcher accelerate starts one node from the kernel; for several nodes use "
            "--launcher torchrun, or --export-launch DIR for the accelerate launch line of every node"
        )
    if kernel and lc.nnodes > 1 and not lc.rdzv_endpoint:
        raise UsageError(
            f"--nnodes {lc.nnodes} needs --rdzv-endpoint HOST:PORT with an address of this machine "
            f"the other nodes reach; or write the commands for every node with --export-launch DIR"
        )
    if kernel and lc.rdzv_endpoint:
        host, port = lc.endpoint()
        if host in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()) and port_in_use(host, port):
            raise UsageError(
                f"the rendezvous port {port} is already in use on {host}; pick a free one with "
                f"--rdzv-endpoint {host}:{free_port()}, or leave the flag out"
            )


# ------------------------------------------------------------------------------ the spec
def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def write_model(model: Any, tokenizer: Any, folder: Path, *, task: str) -> dict[str, Any]:
    """Write the model the ranks start from into ``folder``: ``model/`` (config, tokenizer,
    ``model.safetensors``) and, for a peft model, ``adapter/`` (its LoRA adapters and saved
    head). A seq-cls model's never-trained weights (:func:`~.finetune.untrained_head_params`)
    are left out of the file, so a rank initialises them from the run seed as the kernel would.
    The ``padding_idx`` of every embedding is recorded too: a loader that sets
    ``config.pad_token_id`` after building the model (Llama-type models get their eos as pad)
    leaves an embedding without one, and a model rebuilt from that config would get one (and a
    zero gradient on that row).

    Returns:
        ``{"path", "adapter", "untrained", "padding_idx"}`` (paths relative to ``folder``).
    """
    from torch import nn

    from ..models.loading import quiet_transformers
    from .export import quiet_saving
    from .finetune import untrained_head_params
    from .resume import _base_param_name

    mdir = folder / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    untrained: list[str] = []
    with quiet_transformers(), quiet_saving():
        if _is_peft(model):
            base = model.get_base_model()
            sd = {}
            for name, t in model.state_dict().items():
                n = _base_param_name(name)
                if n is not None:
                    sd[n] = t
            base.save_pretrained(mdir, state_dict=sd)
            model.save_pretrained(folder / "adapter")
        else:
            if task == "seq-cls":
                untrained = untrained_head_params(model)
            sd = {k: v for k, v in model.state_dict().items() if k not in set(untrained)}
            model.save_pretrained(mdir, state_dict=sd)
        tokenizer.save_pretrained(mdir)
    base = model.get_base_model() if _is_peft(model) else model
    pads = {n: m.padding_idx for n, m in base.named_modules() if isinstance(m, nn.Embedding)}
    return {
        "path": "model",
        "adapter": "adapter" if _is_peft(model) else None,
        "untrained": untrained,
        "padding_idx": pads,
    }


def write_spec(
    folder: Path,
    *,
    model: Any,
    tokenizer: Any,
    task: str,
    labels: Optional[list[str]],
    dtype: str,
    data: dict[str, Any],
    config: dict[str, Any],
    output_dir: str,
    backend: Optional[str],
    fsdp: bool,
    run_id: Optional[str] = None,
    resume_from: Optional[str] = None,
    supervisor_pid: Optional[int] = None,
    threads: Optional[int] = None,
    echo: bool = False,
) -> Path:
    """Write ``folder/spec.json`` and the model it names (:func:`write_model`).

    Args:
        data: ``{"path": Arrow folder of the dataset version, "train_split", "eval_split",
            "label_map" (model class id of each dataset class id, or None), "text_column",
            "label_column", "prompt_column", "response_column", "name", "version",
            "fingerprint"}``; a relative path is relative to ``folder``.
        config: the :class:`~.config.FinetuneConfig` as a dict.
        output_dir: where the ranks write the checkpoint, events and logs (relative to ``folder``
            or absolute).
        backend: ``gloo``/``nccl`` or None (the rank picks: nccl when it sees CUDA).
        supervisor_pid: the kernel's pid: ranks on this machine stop when it is gone.
        threads: torch intra-op threads per rank (None: torchrun's ``OMP_NUM_THREADS``).
        echo: rank 0 also prints progress lines on its terminal (exported runs).

    Returns:
        The spec's path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    m = write_model(model, tokenizer, folder, task=task)
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if _is_peft(model):
        attn = getattr(model.get_base_model().config, "_attn_implementation", None)
    spec = {
        "format": 1,
        "run_id": run_id,
        "task": task,
        "model": dict(
            m,
            labels=labels,
            dtype=dtype,
            attn_implementation=attn if attn in ("sdpa", "eager", "llmos_triton") else None,
        ),
        "data": data,
        "config": config,
        "output_dir": output_dir,
        "resume_from": resume_from,
        "backend": backend,
        "fsdp": fsdp,
        "supervisor_pid": supervisor_pid,
        "supervisor_host": socket.gethostname() if supervisor_pid else None,
        "threads": threads,
        "echo": echo,
    }
    path = folder / SPEC
    path.write_text(json.dumps(spec, indent=2, default=str))
    return path


# ------------------------------------------------------------------------------ commands
def torchrun_command(
    lc: LaunchConfig,
    entry: list[str],
    *,
    host: str,
    port: int,
    run_id: str,
    node_rank: Optional[int] = None,
    python: Optional[str] = None,
) -> list[str]:
    """The ``torchrun`` argv for one node.

    ``node_rank`` None: c10d rendezvous (elastic; ranks assigned as agents join), the kernel's
    single-node launch. An int: static rendezvous with this node's rank (rank 0 lives on node 0,
    which hosts the rendezvous store at ``host:port``), the exported per-node lines.
    ``python`` given: ``python -m torch.distributed.run``; else the ``torchrun`` script.
    """
    head = [python, "-m", "torch.distributed.run"] if python else ["torchrun"]
    cmd = head + ["--nnodes", str(lc.nnodes), "--nproc-per-node", str(lc.nproc)]
    if node_rank is None:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{host}:{port}", "--rdzv-id", run_id]
    else:
        cmd += [
            "--node-rank",
            str(node_rank),
            "--rdzv-backend",
            "static",
            "--rdzv-endpoint",
            f"{host}:{port}",
            "--rdzv-id",
            run_id,
        ]
    return cmd + ["--max-restarts", "0", "--monitor-interval", "0.5"] + entry


def accelerate_config(
    lc: LaunchConfig, *, host: str, port: int, machine_rank: int = 0, wrap: Optional[list[str]] = None
) -> str:
    """An ``accelerate launch --config_file`` YAML for this launch: FSDP (version 2, one unit per
    transformer block ``wrap``, full state dict on save) with ``fsdp``, else multi-process DDP.
    Keys as ``accelerate config`` writes them (https://huggingface.co/docs/accelerate/usage_guides/fsdp)."""
    lines = [
        "compute_environment: LOCAL_MACHINE",
        f"distributed_type: {'FSDP' if lc.fsdp else 'MULTI_GPU'}",
        f"num_machines: {lc.nnodes}",
        f"num_processes: {lc.world_size}",
        f"machine_rank: {machine_rank}",
        f"main_process_ip: {host}",
        f"main_process_port: {port}",
        "rdzv_backend: static",
        "same_network: true",
        "mixed_precision: 'no'",
        "use_cpu: false",
    ]
    if lc.fsdp:
        lines += [
            "fsdp_config:",
            "  fsdp_version: 2",
            "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP",
            f"  fsdp_transformer_layer_cls_to_wrap: {','.join(wrap or [])}",
            "  fsdp_reshard_after_forward: true",
            "  fsdp_state_dict_type: FULL_STATE_DICT",
            "  fsdp_cpu_ram_efficient_loading: false",
        ]
    return "\n".join(lines) + "\n"


def accelerate_command(
    config_file: str, entry: list[str], *, python: Optional[str] = None, machine_rank: Optional[int] = None
) -> list[str]:
    """The ``accelerate launch`` argv with ``config_file`` (``python -m accelerate.commands.launch``
    when ``python`` is given). ``entry``: ``["-m", module, spec]`` or ``[script]``."""
    head = [python, "-m", "accelerate.commands.launch"] if python else ["accelerate", "launch"]
    cmd = head + ["--config_file", config_file]
    if machine_rank is not None:
        cmd += ["--machine_rank", str(machine_rank)]
    return cmd + (["--module"] + entry[1:] if entry[0] == "-m" else entry)


def load_trained(model: Any, checkpoint: Path, config: Any) -> Any:
    """Put the trained weights of ``checkpoint`` into the kernel's ``model`` in place and return
    the model the alias now holds: for LoRA the model is wrapped with the run's adapters first
    (peft), as a run in the kernel leaves it. Trained parameters are marked, so a later run does
    not re-initialise the head."""
    from .checkpoint import load_weights
    from .finetune import _wrap_lora, reinit_untrained_head

    if config.task == "seq-cls" and not _is_peft(model):  # what the ranks did first (LoRA keeps the original head)
        reinit_untrained_head(model, config.seed)
    if config.method == "lora":
        model = _wrap_lora(model, config)
    load_weights(model, checkpoint)
    for p in model.parameters():
        if p.requires_grad:
            p._llmos_trained = True
    return model


def distributed_env(threads: Optional[int]) -> dict[str, str]:
    """Environment for the launcher: ``OMP_NUM_THREADS`` (torchrun otherwise sets 1 with a
    banner), a short agent shutdown timeout (a failed rank's peers are stopped within seconds),
    no tokenizer fork warnings, and in a source checkout its folder first on ``PYTHONPATH`` so the
    ranks import the same llmos as the kernel."""
    env = {
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(GRACE_S) + 5),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():  # a source checkout (never put site-packages before the stdlib)
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + rest)
    return env


def threads_per_rank(nproc: int, backend: str) -> int:
    """CPU ranks share the physical cores: ``max(1, cores // nproc)``; GPU ranks get 1 each
    (their work is on the device)."""
    import psutil

    if backend == "nccl":
        return 1
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, cores // nproc)


def launch_command(
    lc: LaunchConfig, spec: Path, *, host: str, port: int, run_id: str, run_dir: Path, wrap: Optional[list[str]] = None
) -> list[str]:
    """The argv a kernel launch runs (this machine is node 0; the same Python as the kernel)."""
    entry = ["-m", ENTRY, str(spec)]
    if lc.launcher == "accelerate":
        cfg = Path(run_dir) / "launch" / "accelerate.yaml"
        cfg.write_text(accelerate_config(lc, host=host, port=port, wrap=wrap))
        return accelerate_command(str(cfg), entry, python=sys.executable)
    return torchrun_command(lc, entry, host=host, port=port, run_id=run_id, python=sys.executable)


# ------------------------------------------------------------------------------ export
def export_launch(
    folder: os.PathLike | str,
    *,
    model: Any,
    tokenizer: Any,
    task: str,
    labels: Optional[list[str]],
    dtype: str,
    dataset_dir: str,
    data: dict[str, Any],
    config: dict[str, Any],
    lc: LaunchConfig,
    name: str,
) -> dict[str, Any]:
    """Write everything a cluster user needs to run this fine-tune outside Jupyter into ``folder``
    (which must not exist or be empty): ``spec.json``, ``model/`` (+ ``adapter/``), ``data/`` (a
    copy of the dataset version's Arrow folder), ``train.py`` (the entry script), ``launch.sh``
    (torchrun for one node: ``bash launch.sh NODE_RANK``), ``slurm.sbatch``,
    ``accelerate_fsdp.yaml`` and ``README.md``. The run writes into ``folder/output``.

    Returns:
        ``{"path", "files", "commands"}``: ``commands`` holds the exact torchrun line of each node.

    Raises:
        UsageError: ``folder`` is a file or a non-empty folder.
    """
    from .distributed import block_classes

    out = Path(folder).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"{out} is not an empty folder; --export-launch writes a new one: pick another path or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(dataset_dir, out / "data")
        write_spec(
            out,
            model=model,
            tokenizer=tokenizer,
            task=task,
            labels=labels,
            dtype=dtype,
            data=dict(data, path="data"),
            config=config,
            output_dir="output",
            backend=lc.backend,
            fsdp=lc.fsdp,
            run_id=None,
            echo=True,
        )
        host, port = lc.endpoint(DEFAULT_PORT)
        rid = f"llmos-{name}"
        (out / "train.py").write_text(_ENTRY_SCRIPT.format(name=name))
        lines = [
            shlex.join(torchrun_command(lc, ["train.py"], host=host, port=port, run_id=rid, node_rank=k))
            for k in range(lc.nnodes)
        ]
        node_line = torchrun_command(lc, ["train.py"], host=host, port=port, run_id=rid, node_rank=0)
        node_line[node_line.index("--node-rank") + 1] = '"$NODE_RANK"'
        (out / "launch.sh").write_text(
            _LAUNCH_SH.format(
                nnodes=lc.nnodes,
                host=host,
                line=" ".join(a if a == '"$NODE_RANK"' else shlex.quote(a) for a in node_line),
            )
        )
        (out / "slurm.sbatch").write_text(_SLURM.format(nnodes=lc.nnodes, nproc=lc.nproc, port=port, name=name))
        wrap = sorted(block_classes(model))
        fsdp = LaunchConfig(nproc=lc.nproc, nnodes=lc.nnodes, fsdp=True, rdzv_endpoint=f"{host}:{port}")
        (out / "accelerate_fsdp.yaml").write_text(accelerate_config(fsdp, host=host, port=port, wrap=wrap))
        acc = [
            shlex.join(accelerate_command("accelerate_fsdp.yaml", ["train.py"], machine_rank=k))
            for k in range(lc.nnodes)
        ]
        (out / "README.md").write_text(
            _README.format(
                name=name,
                nnodes=lc.nnodes,
                world=lc.world_size,
                host=host,
                torchrun="\n".join(lines),
                accelerate="\n".join(acc),
            )
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.iterdir())
    return {"path": str(out.resolve()), "files": files, "commands": lines, "accelerate": acc}


_ENTRY_SCRIPT = '''"""Fine-tune {name}, exported by llmos-jupyter (`%llm finetune ... --export-launch`).

Run it on every node with torchrun (see README.md / launch.sh): each rank reads spec.json next to
this file, trains its slice of every global batch, and rank 0 writes output/checkpoint.
Needs `pip install llmos-jupyter` (the same version) on every node.
"""
from pathlib import Path

from llmos_jupyter.training.rank_main import run

if __name__ == "__main__":
    run([str(Path(__file__).resolve().with_name("spec.json"))])
'''

_LAUNCH_SH = """#!/usr/bin/env bash
# Start this node's ranks: bash launch.sh NODE_RANK   (0 on {host}, then 1 .. {nnodes}-1 on the others)
# Run it from this folder, on a filesystem every node shares (the checkpoint goes to output/).
set -euo pipefail
cd "$(dirname "$0")"
NODE_RANK="${{1:?usage: bash launch.sh NODE_RANK}}"
exec {line}
"""

_SLURM = """#!/usr/bin/env bash
# Slurm example: {nnodes} node(s) x {nproc} rank(s). Submit from this folder: sbatch slurm.sbatch
# (on a shared filesystem). The first node of the allocation hosts the c10d rendezvous.
#SBATCH --job-name=llmos-{name}
#SBATCH --nodes={nnodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={nproc}
#SBATCH --output=output/slurm-%j.log
set -euo pipefail
mkdir -p output
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node {nproc} \\
  --rdzv-backend c10d --rdzv-endpoint "$HEAD:{port}" --rdzv-id "$SLURM_JOB_ID" \\
  --max-restarts 0 train.py
"""

_README = """# {name}: a fine-tune exported by llmos-jupyter

`spec.json` names the model (`model/`, the weights the notebook alias held), the data (`data/`, the
dataset version's Arrow folder), the fine-tuning config and the output folder (`output/`). `train.py`
runs one rank; torchrun starts {world} of them ({nnodes} node(s)).

## torchrun, one line per node (static rendezvous at {host}; rank 0 on node 0)

```
{torchrun}
```

Replace `{host}` with node 0's address when the nodes are separate machines; `bash launch.sh NODE_RANK`
runs the line of that node. Progress prints on node 0; logs: `output/logs/rank<R>.log`; result:
`output/checkpoint` (load it in a notebook with `llmos_jupyter.training.load_checkpoint`).

## Slurm

`sbatch slurm.sbatch` (c10d rendezvous on the allocation's first node).

## accelerate launch with FSDP

`accelerate_fsdp.yaml` shards the model with FSDP2 (one unit per transformer block):

```
{accelerate}
```
"""


def run_distributed(
    model: Any,
    tokenizer: Any,
    *,
    lc: LaunchConfig,
    backend: str,
    task: str,
    labels: Optional[list[str]],
    dtype: str,
    data: dict[str, Any],
    config: Any,
    run_dir: os.PathLike | str,
    run_id: str,
    resume_from: Optional[os.PathLike | str] = None,
    progress: Any = None,
    job_update: Optional[Callable[..., None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> DistributedResult:
    """Fine-tune in ``lc.world_size`` ranks started from this process and wait for the end.

    Writes the spec into ``run_dir/launch`` (:func:`write_spec`), runs the launcher under a
    :class:`Supervisor` and feeds rank 0's events to ``progress`` (the ``finetune`` callback
    protocol: ``on_begin``, ``on_step``, ``on_eval``, ``on_end``) and the rank pids / ranks
    alive / world size to ``job_update(**fields)``. The spec's copy of the weights is deleted at
    the end (the checkpoint holds the result).

    Returns:
        :class:`DistributedResult` with status ``completed``, ``cancelled`` (``should_stop``),
        ``interrupted`` (Ctrl-C), ``failed`` (with ``error``) or ``refused`` (a rank refused the
        input; ``error`` is the one-line reason). The kernel's ``model`` is not changed (see
        :func:`load_trained`).
    """
    from .distributed import block_classes
    from .finetune import _Callback

    run_dir = Path(run_dir)
    folder = run_dir / "launch"
    cb = _Callback(progress)
    update = job_update or (lambda **f: None)
    threads = threads_per_rank(lc.nproc, backend)
    t0 = time.perf_counter()
    try:
        spec = write_spec(
            folder,
            model=model,
            tokenizer=tokenizer,
            task=task,
            labels=labels,
            dtype=dtype,
            data=data,
            config=config.to_dict(),
            output_dir=str(run_dir),
            backend=backend,
            fsdp=lc.fsdp,
            run_id=run_id,
            resume_from=str(resume_from) if resume_from is not None else None,
            supervisor_pid=os.getpid(),
            threads=threads,
        )
        host, port = lc.endpoint()
        cmd = launch_command(
            lc,
            spec,
            host=host,
            port=port,
            run_id=run_id,
            run_dir=run_dir,
            wrap=sorted(block_classes(model)) if lc.fsdp else None,
        )
        if lc.nnodes > 1:  # this machine is one node; the others join the same rendezvous
            other = torchrun_command(lc, ["-m", ENTRY, str(spec)], host=host, port=port, run_id=run_id, python="python")
            print(
                f"llmos: waiting for {lc.nnodes - 1} more node(s); on each, with {run_dir} on a shared filesystem, "
                f"run: {shlex.join(other)}",
                flush=True,
            )

        def on_event(ev: dict[str, Any]) -> None:
            kind = ev.get("event")
            if kind == "begin":
                update(world_size=int(ev.get("world_size") or lc.world_size))
                cb("on_begin", ev["total_steps"], ev["total_samples"], ev.get("run_id"))
            elif kind == "step":
                cb("on_step", ev["step"], ev["loss"], ev["lr"], ev["samples_per_s"], ev["eta_s"])
            elif kind == "eval":
                cb("on_eval", ev["step"], ev["epoch"], ev["metrics"])

        sup = Supervisor(
            cmd,
            run_dir,
            env=distributed_env(threads),
            on_event=on_event,
            on_ranks=lambda pids, alive: update(pids=pids, ranks_alive=alive),
            should_stop=should_stop,
        )
        outcome = sup.run()
    finally:
        for sub in ("model", "adapter"):
            shutil.rmtree(folder / sub, ignore_errors=True)
    res = run_summary(outcome, run_dir, lc.record(backend))
    res.wall_s = time.perf_counter() - t0
    cb("on_end", {"completed": "completed", "failed": "failed"}.get(res.status, "interrupted"), res)
    return res
