"""Inference while a background fine-tune runs: other models are served; the model being trained
refuses calls in one line naming the job (decision: a model under training is in train mode
with weights changing every step — serving it would give answers from no checkpoint at all).

Run: ``.venv/bin/python -m pytest tests/resources/test_jobs.py -q``.
"""

from __future__ import annotations

import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter.errors import UsageError

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
    * 8
]


def _wait(cond, what: str, limit_s: float = 120.0):
    deadline = time.time() + limit_s  # a liveness bound, not a speed assertion
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def training(fresh_api, tiny_bert, tiny_llama):
    """'trainee' fine-tuning in a background job (long enough to be caught running), plus an
    idle classifier 'clf' and a causal LM 'gen'."""
    api = fresh_api
    for alias in ("trainee", "clf"):
        api.load(str(tiny_bert), alias=alias, task="seq-cls", labels="negative,positive")
    api.load(str(tiny_llama), alias="gen", task="causal-lm")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    job = api.finetune("trainee", "toy", epochs=500, batch_size=4, lr=1e-3, progress=False, background=True)
    _wait(lambda: job.state == "running" and job.step >= 2, "the job to take two steps")
    yield api, job
    job.cancel()
    job.wait(120)


def test_other_models_are_served_during_training(training):
    api, job = training
    step0 = job.step
    table = api.classify("clf", ["great movie", "awful film"])
    text = api.generate("gen", "hello world", max_new_tokens=5, stream=False)
    emb = api.embed("clf", "great movie")
    assert [d["label"] for d in table.data] and all(d["label"] in ("negative", "positive") for d in table.data)
    assert all(sum(d["scores"].values()) == pytest.approx(1.0, abs=1e-5) for d in table.data)
    assert isinstance(text, str) and emb.shape == (1, 32)
    assert job.state == "running" and job.error is None  # the job went on meanwhile
    _wait(lambda: job.step > step0, "the job to keep stepping")
    (row,) = [r for r in api.ps().data if r["alias"] == "trainee"]
    assert row["training"] == job.id and api.manager().get("trainee").exclusive == job.id


def test_the_model_in_training_refuses_calls_in_one_line(training, capsys):
    api, job = training
    msg = (
        f"'trainee' is being fine-tuned by {job.id}; wait with `%llm job wait {job.id}`, stop it with "
        f"`%llm job cancel {job.id}`, or load a second copy with `%llm load "
    )
    with pytest.raises(UsageError) as e:
        api.classify("trainee", "great movie")
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)
    for call in (
        lambda: api.embed("trainee", "x"),
        lambda: api.unload("trainee"),
        lambda: api.evaluate("trainee", "toy"),
    ):
        with pytest.raises(UsageError):
            call()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    capsys.readouterr()
    ip.run_line_magic("llm", "classify trainee great movie")
    err = capsys.readouterr().err
    assert err.startswith(f"llmos: {msg}") and err.count("\n") == 1
    assert job.state == "running"
    _wait(lambda: job.eta_s is not None, "the job's first time estimate")
    api.cancel(job.id)
    job.wait(120)
    assert job.state == "cancelled" and api.manager().get("trainee").exclusive is None
    # a user's report: `%llm jobs` still showed the time left of a job that had stopped
    assert job.eta_s is None and [r for r in api.jobs().rows if r[0] == job.id][0][8] == "-"
    table = api.classify("trainee", "great movie")  # served again once the job has ended
    assert table.data[0]["label"] in ("negative", "positive")


def test_a_foreground_fine_tune_behind_a_job_says_it_waits(training, capsys):
    """A user's report: a foreground fine-tune started while a background job trained on the same
    device blocked the cell without a word. Now one note names the job and how to stop it."""
    import threading

    api, job = training
    _wait(lambda: job.step > 0, "the background job to step")
    capsys.readouterr()
    threading.Timer(1.0, job.cancel).start()  # the user cancels the background job meanwhile
    r = api.finetune("clf", "toy", epochs=1, batch_size=8, progress=False)
    assert r.status == "completed" and job.state == "cancelled"
    wait, stopped = capsys.readouterr().err.splitlines()
    assert wait.startswith(f"llmos: note: {job.id} (finetune 'trainee', ") and wait.endswith(
        f"%) holds cpu; this cell waits for it to end (`%llm job cancel {job.id}` stops it)"
    ), wait
    # and the cancelled run says what 'trainee' keeps and how to continue it
    run = api.registry().get(job.result.id)
    assert stopped == (
        f"llmos: note: run {run.id} stopped at step {job.step}/{job.total_steps}; 'trainee' keeps the weights "
        f"of that step — continue this run with resume='{run.id}'"
    )
    assert run.status == "interrupted"  # the registry row of a run stopped at a step boundary


def test_a_second_training_job_on_the_same_device_queues(training):
    api, job = training
    second = api.finetune("clf", "toy", epochs=1, batch_size=8, progress=False, background=True)
    assert second.state == "queued" and job.state == "running"
    assert api.classify("clf", "great movie").data  # queued, so 'clf' is still served
    job.cancel()
    second.wait(120)
    assert second.state == "done", second.error
