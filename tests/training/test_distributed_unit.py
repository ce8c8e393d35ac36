"""Distributed fine-tuning without starting ranks: how a global batch is cut, the loss
normalisation, evaluation batches, launch checks, the spec, the export, the registry column.

The launched runs (torchrun, gloo on 127.0.0.1) are in ``test_distributed.py``.
Run: ``.venv/bin/python -m pytest tests/training/test_distributed_unit.py -q``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3

import numpy as np
import pytest
import torch

from llmos_jupyter.errors import UsageError
from llmos_jupyter.training.batching import length_grouped_batches, tokenize_column
from llmos_jupyter.training.distributed import block_classes, rank_seed, shard_rows
from llmos_jupyter.training.evaluate import eval_batches, merge_batches, rank_batches
from llmos_jupyter.training.finetune import _loss_module, _train_step

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
    * 6
]


def test_ranks_take_slices_of_the_one_process_batches_not_a_round_robin_deal():
    """N ranks × B/N rows see exactly the rows one process sees with batch B, step by step.
    DistributedSampler(shuffle=True, seed) shuffles the whole set and deals rows round-robin: the
    rows two ranks see together at step 0 are not a batch of the one-process run with that seed."""
    from torch.utils.data import DistributedSampler

    lengths = np.random.default_rng(1).integers(3, 60, size=256)
    one = length_grouped_batches(lengths, 32, seed=(0, 0))
    for world in (2, 3, 5):
        for batch in one:
            parts = [shard_rows(batch, r, world) for r in range(world)]
            assert np.array_equal(np.concatenate(parts), batch)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    dealt = [list(DistributedSampler(range(256), num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    step0 = set(dealt[0][:16]) | set(dealt[1][:16])
    overlap = max(len(step0 & set(b.tolist())) for b in one)
    print(f"DistributedSampler's step-0 rows: at most {overlap} of 32 in any one-process batch")
    assert overlap < 32
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(4)}) == 4


class _Rank:
    """The parts of a RankGroup that ``_train_step`` uses, for one simulated rank (no process group)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def shard(self, rows):
        return shard_rows(rows, self.rank, self.world_size)

    def sum(self, value):  # the all-reduce is done by the test, over the simulated ranks
        return value

    def no_sync(self, fwd, model, skip):
        return contextlib.nullcontext()


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("lm", [False, True])
def test_global_count_scaling_gives_the_one_process_gradient_for_unequal_slices(
    lm, tiny_model, tiny_tokenizer, tiny_llama
):
    """5 rows on 2 ranks (3 + 2; causal-lm: unequal response tokens too): each rank divides its loss
    sum by the global count and multiplies by 2, DDP averages → the one-process gradient and loss.
    The textbook per-rank mean, averaged over ranks, is another (wrong) gradient."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos_jupyter.training.sft import tokenize_pairs

    if lm:
        tok_ = AutoTokenizer.from_pretrained(tiny_llama)
        ds = datasets.Dataset.from_dict(
            {
                "prompt": ["great movie", "awful", "hello world", "the lazy dog", "a film"],
                "response": ["positive", "negative film", "positive yes", "negative", "positive good one"],
            }
        )
        tok = tokenize_pairs(tok_, ds, "prompt", "response", 64)
        labels, pad = None, tok_.eos_token_id

        def make():
            torch.manual_seed(0)
            return AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    else:
        ds = datasets.Dataset.from_dict(
            {"text": [r["text"] for r in ROWS[:5]], "label": [r["label"] for r in ROWS[:5]]}
        )
        tok = tokenize_column(tiny_tokenizer, ds, "text", 32)
        labels, pad = np.array(ds["label"]), tiny_tokenizer.pad_token_id

        def make():
            return tiny_model(dropout=0.0).train()

    group = [np.arange(5)]
    one = make()
    loss1, n1, _, _, _ = _train_step(_loss_module(one, lm), one, group, tok, tok.lengths, labels, pad, "cpu", lm)
    g1 = _grads(one)
    per_rank, losses = [], []
    for r in range(2):
        m = make()
        loss, n, _, _, _ = _train_step(
            _loss_module(m, lm), m, group, tok, tok.lengths, labels, pad, "cpu", lm, _Rank(r, 2)
        )
        per_rank.append(_grads(m))
        losses.append(loss)
        assert n == 5
    ddp = [(a + b) / 2 for a, b in zip(*per_rank)]  # what DDP's all-reduce hands every rank
    worst = max(float((a - b).abs().max()) for a, b in zip(ddp, g1))
    print(f"lm={lm}: max |grad(2 ranks) - grad(1 process)| = {worst:.2e}; loss {sum(losses):.6f} vs {loss1:.6f}")
    assert worst < 1e-6 and abs(sum(losses) - loss1) < 1e-6 and n1 == 5
    # the textbook recipe: each rank's own mean, averaged over ranks
    textbook = []
    for r in range(2):
        m = make()
        rows = shard_rows(group[0], r, 2)
        _train_step(_loss_module(m, lm), m, [rows], tok, tok.lengths, labels, pad, "cpu", lm)
        textbook.append(_grads(m))
    off = max(float((((a + b) / 2) - c).abs().max()) for a, b, c in zip(*textbook, g1))
    print(f"lm={lm}: the per-rank-mean average is off by {off:.2e}")
    assert off > 100 * worst


def test_evaluation_batches_count_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 40, size=203)
    batches = eval_batches(lengths, 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(203))

    class G:
        def __init__(self, rank, world, sharded):
            self.rank, self.world_size, self.sharded = rank, world, sharded

    for world in (2, 3, 4):
        for sharded in (False, True):
            mine = [rank_batches(len(batches), G(r, world, sharded)) for r in range(world)]
            if sharded:  # every rank runs the same number of forwards (FSDP collectives)
                assert len({len(m) for m in mine}) == 1
            parts = [[(i, i * 10) for i in m] for m in mine]
            assert merge_batches(parts, len(batches)) == [i * 10 for i in range(len(batches))]
    with pytest.raises(RuntimeError, match="lost batch 1"):
        merge_batches([[(0, 0)], [(2, 2)]], 3)


def test_launch_checks_are_one_line_each():
    from llmos_jupyter.training.config import FinetuneConfig
    from llmos_jupyter.training.launch import LaunchConfig, check_launch

    for kw, msg in [
        (dict(nproc=0), "--nproc 0 is not allowed"),
        (dict(nnodes=-1), "--nnodes -1"),
        (dict(backend="mpi"), "gloo"),
        (dict(launcher="deepspeed"), "torchrun or accelerate"),
        (dict(rdzv_endpoint="nohost"), "HOST:PORT"),
    ]:
        with pytest.raises(UsageError, match=msg) as e:
            LaunchConfig(**kw)
        assert "\n" not in str(e.value)
    cfg = FinetuneConfig(batch_size=4)
    ok = dict(backend="gloo", n_train=100, config=cfg, resume=False, kernel=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cases = [
            (LaunchConfig(nproc=2, backend="nccl"), dict(backend="nccl"), "nccl needs CUDA GPUs"),
            (LaunchConfig(nproc=3), dict(n_train=2), "3 ranks for 2 training rows"),
            (LaunchConfig(nproc=5), {}, "--batch-size 5 or more"),
            (
                LaunchConfig(nproc=2, fsdp=True),
                dict(config=FinetuneConfig(batch_size=4, eval_every=2, metric_for_best="loss")),
                "--fsdp keeps no",
            ),
            (LaunchConfig(nproc=2, fsdp=True), dict(resume=True), "cannot --resume"),
            (LaunchConfig(nproc=1, nnodes=2), {}, "needs --rdzv-endpoint"),
            (LaunchConfig(nproc=1, nnodes=2, launcher="accelerate"), {}, "accelerate starts one node"),
            (LaunchConfig(nproc=2, rdzv_endpoint=f"127.0.0.1:{busy}"), {}, f"port {busy} is already in use"),
        ]
        for lc, over, msg in cases:
            if "CUDA" in msg and torch.cuda.is_available():
                continue
            with pytest.raises(UsageError, match=msg) as e:
                check_launch(lc, **(ok | over))
            assert "\n" not in str(e.value)
    check_launch(LaunchConfig(nproc=2, nnodes=2), **(ok | dict(kernel=False)))  # an export needs no endpoint


def test_api_refuses_bad_launches_before_anything_is_written(fresh_api, tiny_bert, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    api = fresh_api
    api.load(str(tiny_bert), alias="m", task="seq-cls", labels="negative,positive")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    n_train = len(api.store().get("toy").splits["train"])
    cases = [
        (dict(nproc=0), "--nproc 0 is not allowed"),
        (dict(nproc=n_train + 1, batch_size=64), f"{n_train + 1} ranks for {n_train} training rows"),
        (dict(nproc=2, backend="nccl"), "nccl needs CUDA"),
        (dict(backend="gloo"), "--backend goes with --nproc"),
        (dict(export_launch="x", resume="ft-1"), "drop --resume"),
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cases.append((dict(nproc=2, rdzv_endpoint=f"127.0.0.1:{s.getsockname()[1]}"), "already in use"))
        for kw, msg in cases:
            with pytest.raises(UsageError, match=msg) as e:
                api.finetune("m", "toy", progress=False, **kw)
            assert "\n" not in str(e.value)
    with api.manager().use("m", exclusive="job-41"):  # a job trains it
        with pytest.raises(UsageError, match="being fine-tuned by job-41") as e:
            api.finetune("m", "toy", nproc=2, progress=False)
    assert len(api.runs(100)) == 0 and not (api.registry().path.parent / "checkpoints").exists()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    capsys.readouterr()
    ip.run_line_magic("llm", "finetune m toy --nproc 0 --no-progress")
    out, err = capsys.readouterr()
    assert err.strip().startswith("llmos: --nproc 0 is not allowed") and len(err.strip().splitlines()) == 1


def test_magic_launch_flags_reach_the_api(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from llmos_jupyter import api

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    seen = {}
    monkeypatch.setattr(api, "finetune", lambda alias, dataset, **kw: seen.update(kw))
    ip.run_line_magic(
        "llm",
        "finetune m toy --nproc 2 --nnodes 2 --backend gloo --launcher accelerate --fsdp "
        "--rdzv-endpoint 127.0.0.1:29511 --export-launch out/launch --no-progress",
    )
    want = dict(
        nproc=2,
        nnodes=2,
        backend="gloo",
        launcher="accelerate",
        fsdp=True,
        rdzv_endpoint="127.0.0.1:29511",
        export_launch="out/launch",
    )
    assert {k: seen[k] for k in want} == want
    seen.clear()
    ip.run_line_magic("llm", "finetune m toy --no-progress")
    assert "nproc" not in seen and "fsdp" not in seen


def test_spec_hands_the_ranks_the_alias_weights(fresh_api, tiny_bert, tiny_llama, tmp_path):
    """The rank rebuilds the kernel's model from the spec: a never-trained head is left out (the
    rank initialises it from the seed, as the kernel would); a LoRA alias comes back with its
    base weights, adapters and trained head, trainable; a Llama whose pad token the loader set
    after building it keeps an embedding without padding_idx (else the eos row, the pad, would get
    no gradient in the ranks)."""
    from llmos_jupyter.training.finetune import reinit_untrained_head, untrained_head_params
    from llmos_jupyter.training.launch import write_spec
    from llmos_jupyter.training.rank_main import load_model, read_spec

    api = fresh_api
    api.load(str(tiny_bert), alias="m", task="seq-cls", labels="negative,positive")
    rec = api.manager().get("m")
    data = {"path": "unused", "train_split": "train"}
    spec = write_spec(
        tmp_path / "a",
        model=rec.model,
        tokenizer=rec.tokenizer,
        task="seq-cls",
        labels=rec.labels,
        dtype=rec.dtype,
        data=data,
        config={},
        output_dir="out",
        backend="gloo",
        fsdp=False,
    )
    s = read_spec(spec)
    assert s["model"]["untrained"] == untrained_head_params(rec.model) != []
    model, _ = load_model(s, "cpu")
    assert untrained_head_params(model) == untrained_head_params(rec.model)
    reinit_untrained_head(model, 3)
    reinit_untrained_head(rec.model, 3)
    for (n, a), (_, b) in zip(rec.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n

    api.load(str(tiny_llama), alias="lm", task="causal-lm")
    lm = api.manager().get("lm")
    assert lm.model.config.pad_token_id is not None and lm.model.model.embed_tokens.padding_idx is None
    spec = write_spec(
        tmp_path / "lm",
        model=lm.model,
        tokenizer=lm.tokenizer,
        task="causal-lm",
        labels=None,
        dtype=lm.dtype,
        data=data,
        config={},
        output_dir="out",
        backend="gloo",
        fsdp=False,
    )
    model, _ = load_model(read_spec(spec), "cpu")
    assert model.model.embed_tokens.padding_idx is None
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), model.state_dict().values()))

    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    api.finetune("m", "toy", method="lora", max_steps=2, batch_size=4, lr=1e-2, progress=False)
    rec = api.manager().get("m")
    assert hasattr(rec.model, "peft_config")
    spec = write_spec(
        tmp_path / "b",
        model=rec.model,
        tokenizer=rec.tokenizer,
        task="seq-cls",
        labels=rec.labels,
        dtype=rec.dtype,
        data=data,
        config={},
        output_dir="out",
        backend="gloo",
        fsdp=False,
    )
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").is_file()
    model, _ = load_model(read_spec(spec), "cpu")
    want, got = rec.model.state_dict(), model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def trainable(m):
        return {n for n, p in m.named_parameters() if p.requires_grad}

    assert trainable(model) == trainable(rec.model)


def test_export_writes_spec_script_commands_slurm_and_fsdp_config(fresh_api, tiny_bert, tmp_path):
    import yaml

    api = fresh_api
    api.load(str(tiny_bert), alias="m", task="seq-cls", labels="negative,positive")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    out = tmp_path / "launch"
    msg = api.finetune(
        "m", "toy", export_launch=str(out), nproc=2, nnodes=2, rdzv_endpoint="10.1.2.3:29555", progress=False
    )
    assert sorted(msg.data["files"]) == sorted(
        ["README.md", "accelerate_fsdp.yaml", "data", "launch.sh", "model", "slurm.sbatch", "spec.json", "train.py"]
    )
    spec = json.loads((out / "spec.json").read_text())
    assert spec["model"]["path"] == "model" and spec["data"]["path"] == "data" and spec["output_dir"] == "output"
    n_train = len(api.store().get("toy").splits["train"])  # the default batch of 32 is cut to the rows
    assert spec["config"]["batch_size"] == min(32, n_train) and spec["echo"] is True and spec["supervisor_pid"] is None
    cmds = msg.data["commands"]
    assert len(cmds) == 2
    assert all("--rdzv-endpoint 10.1.2.3:29555" in c and "--nnodes 2" in c and "--nproc-per-node 2" in c for c in cmds)
    assert "--node-rank 0" in cmds[0] and "--node-rank 1" in cmds[1] and cmds[0].startswith("torchrun ")
    assert '--node-rank "$NODE_RANK"' in (out / "launch.sh").read_text()
    acc = yaml.safe_load((out / "accelerate_fsdp.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 4 and acc["num_machines"] == 2
    fsdp = acc["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    assert "srun torchrun" in (out / "slurm.sbatch").read_text()
    assert "rank_main import run" in (out / "train.py").read_text()
    assert all(c in (out / "README.md").read_text() for c in cmds)
    from datasets import load_from_disk

    assert load_from_disk(str(out / "data"))["train"].num_rows == len(api.store().get("toy").splits["train"])
    with pytest.raises(UsageError, match="not an empty folder"):
        api.finetune("m", "toy", export_launch=str(out), progress=False)
    assert len(api.runs(100)) == 0
    assert block_classes(api.manager().get("m").model) == {"BertLayer"}


def test_registry_records_the_launch_and_reads_an_older_registry(tmp_path):
    from llmos_jupyter.training.runs import SCHEMA, RunRegistry

    path = tmp_path / "runs.sqlite"
    old = re.sub(r"\n\s*-- distributed:[^\n]*\n\s*distributed\s+TEXT,", "", SCHEMA)  # before the column
    assert "distributed" not in old
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO runs (id, kind, config, status, created_at, packages, hardware, host, pid) "
        "VALUES ('ft-old', 'finetune', '{}', 'completed', '2025-01-01T00:00:00+00:00', '{}', '{}', 'h', 1)"
    )
    db.commit()
    db.close()
    reg = RunRegistry(path)
    assert reg.get("ft-old").distributed == {}
    launch = {
        "world_size": 2,
        "nproc_per_node": 2,
        "nnodes": 1,
        "backend": "gloo",
        "launcher": "torchrun",
        "fsdp": False,
    }
    rid = reg.start("finetune", "m", "toy@v2", {}, 0, "fp", distributed=launch)
    run = reg.finish(rid, "completed", checkpoint=tmp_path / "checkpoints" / rid / "checkpoint")
    assert reg.get(rid).distributed == launch and run.manifest()["distributed"] == launch
    assert json.loads((tmp_path / "checkpoints" / rid / "manifest.json").read_text())["distributed"] == launch
    table = str(reg.list())
    assert table.splitlines()[0].split()[6] == "ranks" and table.splitlines()[1].split()[6] == "2"
    assert "distributed.world_size" in reg.compare("ft-old", rid).differences()


def test_jobs_table_shows_world_size_and_ranks_alive(fresh_api):
    from llmos_jupyter.resources.jobs import Job

    api = fresh_api
    job = Job(kind="finetune", target="m", world_size=2, launcher="torchrun")
    api.scheduler().jobs[job.id] = job
    api.scheduler().update(job, ranks_alive=1, pids=[11, 12])
    row = api.jobs().rows[0]
    assert row[-1] == "2 (1 alive)" and "2 ranks (1 alive here)" in repr(job)
    assert api.state()["jobs"][0]["world_size"] == 2 and api.state()["jobs"][0]["pids"] == [11, 12]


def test_a_rank_refusal_is_one_line_and_a_failure_is_recorded(fresh_api, tiny_bert, monkeypatch):
    """What the API does with the end of a distributed run, the ranks replaced by their result: a
    refusal (a rank's one-line UsageError) keeps no run; a failure records the run as failed with
    the reason and its checkpoint, and raises the reason in one line."""
    from llmos_jupyter.errors import LLMOSError
    from llmos_jupyter.training import launch
    from llmos_jupyter.training.supervisor import DistributedResult

    api = fresh_api
    api.load(str(tiny_bert), alias="m", task="seq-cls", labels="negative,positive")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    before = {n: p.detach().clone() for n, p in api.manager().get("m").model.named_parameters()}
    monkeypatch.setattr(
        launch,
        "run_distributed",
        lambda *a, **k: DistributedResult(
            status="refused", error="the model has num_labels=1; reload it with 2 labels"
        ),
    )
    with pytest.raises(UsageError, match="^the model has num_labels=1; reload it with 2 labels$"):
        api.finetune("m", "toy", nproc=2, batch_size=4, progress=False)
    assert len(api.runs(100)) == 0 and api.jobs().rows == []

    def failed(*a, run_dir, **k):
        ck = run_dir / "checkpoint"
        ck.mkdir(parents=True)
        return DistributedResult(
            status="failed",
            error="rank 1 (pid 7) was killed by SIGKILL",
            checkpoint=str(ck),
            checkpoint_sha256="ab",
            steps=3,
        )

    monkeypatch.setattr(launch, "run_distributed", failed)
    with pytest.raises(LLMOSError, match="^distributed fine-tune failed: rank 1 .pid 7. was killed by SIGKILL$"):
        api.finetune("m", "toy", nproc=2, batch_size=4, progress=False)
    run = api.runs(1)[0]
    assert run.status == "failed" and run.error == "rank 1 (pid 7) was killed by SIGKILL"
    assert run.checkpoint.endswith("checkpoint") and run.distributed["world_size"] == 2
    after = dict(api.manager().get("m").model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # a failed run leaves the alias as it was
    assert api.manager().get("m").exclusive is None
