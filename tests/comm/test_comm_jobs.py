"""Real jobs over the side-panel protocol: a real kernel (jupyter_client) with the real
``llmos_jupyter.api`` fine-tuning a tiny random BERT (seq-cls, 2 labels) on 200 synthetic rows.

* a background fine-tune returns at once and its progress, loss and samples/s reach the panel
  while the kernel is idle, up to ``done``;
* a foreground fine-tune's progress reaches the panel while its cell is still running;
* a ``cancel`` action sent through the comm stops a running background fine-tune (``cancelled``).
"""

from __future__ import annotations

import json
import math
import time

import pytest
from comm_kernel import start_kernel, stop_kernel

N_ROWS, TEST_SHARE, BATCH = 200, 0.25, 4
N_TRAIN = N_ROWS - int(N_ROWS * TEST_SHARE)
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)
OPTS = f"--batch-size {BATCH} --max-length 16 --seed 0"


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    """A plain ipykernel with ``%load_ext llmos_jupyter``, the model ``tiny`` and dataset ``ds``."""
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    tmp = tmp_path_factory.mktemp("jobs-kernel")
    # One torch thread: on a small shared machine, OpenMP threads spinning against other
    # processes make each step many times slower (the panel protocol is what is tested here).
    client, log_file = start_kernel(tmp, NATIVE_KERNEL_NAME, extra_env={"OMP_NUM_THREADS": "1"})
    client.run("%load_ext llmos_jupyter")
    client.run(
        f"import tiny_kit\ntiny_kit.save_tiny({str(tmp / 'bert')!r}, 'bert-cls')\n"
        f"rows = tiny_kit.sentiment_rows({N_ROWS})",
        timeout=120,
    )
    for line in (
        f"%llm load {tmp / 'bert'} --task seq-cls --labels negative,positive --as tiny",
        "%llm data load rows --as ds",
        f"%llm data split ds --test {TEST_SHARE}",
    ):
        reply = client.run(line, timeout=180)
        assert not _stderr(client, reply), (line, _stderr(client, reply))
    yield client
    stop_kernel(client, log_file)


def _stderr(k, reply) -> str:
    mid = reply["parent_header"]["msg_id"]
    return "".join(
        m["content"].get("text", "")
        for _, m in k.iopub
        if m["parent_header"].get("msg_id") == mid
        and m["msg_type"] == "stream"
        and m["content"]["name"] == "stderr"
        and "Writing model shards" not in m["content"].get("text", "")
    )


def _print(k, code: str, timeout: float = 120.0) -> str:
    reply = k.run(code, timeout=timeout)
    return k.stream_text(reply["parent_header"]["msg_id"]).strip()


def _jobs_in(k, cid, job_id, since=0.0):
    """(arrival time, job summary) of ``job_id`` in every state message since ``since``."""
    return [(t, j) for t, d, _ in k.comm_msgs(cid, "state", since) for j in d["jobs"] if j["id"] == job_id]


def _idle_at(k, msg_id) -> float:
    return max(
        t
        for t, m in k.iopub
        if m["msg_type"] == "status"
        and m["parent_header"].get("msg_id") == msg_id
        and m["content"]["execution_state"] == "idle"
    )


def _open(k):
    cid = k.open({"hardware_interval_s": 0.5})
    k.wait_for(lambda d: d.get("type") == "state", comm_id=cid, timeout=30)
    return cid


def test_background_finetune_streams_progress_to_done(k):
    cid = _open(k)
    t0 = time.monotonic()
    reply = k.run(
        "from llmos_jupyter import api\n"
        "job = api.finetune('tiny', 'ds', epochs=8, batch_size=4, max_length=16, seed=0,"
        " background=True, progress=False)\nprint(job.id)"
    )
    job_id = k.stream_text(reply["parent_header"]["msg_id"]).strip()
    cell_done = _idle_at(k, reply["parent_header"]["msg_id"])
    t_end, last, _ = k.wait_for(
        lambda d: (
            d.get("type") == "state"
            and any(j["id"] == job_id and j["state"] not in ("queued", "running") for j in d["jobs"])
        ),
        comm_id=cid,
        since=t0,
        timeout=240,
    )
    seen = _jobs_in(k, cid, job_id, since=t0)
    (final,) = [j for j in last["jobs"] if j["id"] == job_id]
    assert final["state"] == "done", final
    assert final["kind"] == "finetune" and final["target"] == "tiny"
    assert final["progress"] == 1.0
    assert final["step"] == final["total_steps"] == 8 * STEPS_PER_EPOCH
    assert isinstance(final["loss"], float) and math.isfinite(final["loss"]) and final["loss"] > 0
    assert final["samples_per_s"] > 0 and final["eta_s"] == 0

    # Progress arrived while the kernel was idle (the cell returned at once), and it moved.
    running = [(t, j) for t, j in seen if j["state"] == "running" and j["step"] > 0]
    after_cell = [j["progress"] for t, j in running if t > cell_done]
    assert len(set(after_cell)) >= 2, [j["progress"] for _, j in seen]
    progress = [j["progress"] for _, j in seen]
    assert progress == sorted(progress), progress
    assert all(isinstance(j["loss"], float) and j["samples_per_s"] > 0 for _, j in running)
    assert cell_done < t_end

    # The panel's last word agrees with the kernel's own records.
    kernel = json.loads(
        _print(
            k, "import json\nres = api.job_wait(job.id)\nprint(json.dumps({'job': job.summary(), 'run': res.status}))"
        )
    )
    assert kernel["run"] == "completed"
    assert {key: kernel["job"][key] for key in final} == final
    k.close(cid)


def test_foreground_finetune_moves_the_panel_while_its_cell_runs(k):
    cid = _open(k)
    before = {j["id"] for t, d, _ in k.comm_msgs(cid, "state") for j in d["jobs"]}
    t0 = time.monotonic()
    msg_id = k.execute(f"%llm finetune tiny ds --epochs 6 {OPTS} --no-progress")
    reply = k.wait_reply(msg_id, timeout=240)
    assert reply["content"]["status"] == "ok"
    busy_end = _idle_at(k, msg_id)
    during = [
        (t, j, m)
        for t, d, m in k.comm_msgs(cid, "state", since=t0)
        if t < busy_end
        for j in d["jobs"]
        if j["id"] not in before
    ]
    assert during, "no job update reached the panel while the foreground fine-tune ran"
    ids = {j["id"] for _, j, _ in during}
    assert len(ids) == 1, ids
    moving = [j["progress"] for _, j, _ in during if j["state"] == "running" and j["step"] > 0]
    assert len(set(moving)) >= 2, moving
    assert all(m["parent_header"] == {} for _, _, m in during)  # pushed by the comm's thread
    (job_id,) = ids
    final = json.loads(_print(k, f"import json\nprint(json.dumps(api.scheduler().get({job_id!r}).summary()))"))
    assert final["state"] == "done" and final["step"] == 6 * STEPS_PER_EPOCH
    k.close(cid)


def test_cancel_through_the_comm_stops_a_real_background_finetune(k):
    cid = _open(k)
    t0 = time.monotonic()
    job_id = _print(
        k,
        "job2 = api.finetune('tiny', 'ds', epochs=200, batch_size=4, max_length=16,"
        " seed=0, background=True, progress=False)\nprint(job2.id)",
    )
    total = 200 * STEPS_PER_EPOCH
    k.wait_for(
        lambda d: (
            d.get("type") == "state"
            and any(j["id"] == job_id and j["state"] == "running" and j["step"] > 0 for j in d["jobs"])
        ),
        comm_id=cid,
        since=t0,
        timeout=120,
    )

    # An unknown job id is an error reply; the real one is acknowledged and ends "cancelled".
    k.send(cid, {"type": "action", "action": "cancel", "target": "job-999999", "id": "bad"})
    _, err, _ = k.wait_for(lambda d: d.get("id") == "bad", comm_id=cid, type_="error", timeout=30)
    assert "unknown job 'job-999999'" in err["message"]
    t_cancel = time.monotonic()
    k.send(cid, {"type": "action", "action": "cancel", "target": job_id, "id": "c1"})
    _, ack, _ = k.wait_for(lambda d: d.get("id") == "c1", comm_id=cid, type_="ack", timeout=30)
    assert ack["action"] == "cancel" and ack["target"] == job_id
    _, snap, _ = k.wait_for(
        lambda d: d.get("type") == "state" and any(j["id"] == job_id and j["state"] == "cancelled" for j in d["jobs"]),
        comm_id=cid,
        since=t_cancel,
        timeout=60,
    )
    (ended,) = [j for j in snap["jobs"] if j["id"] == job_id]
    assert 0 < ended["step"] < total and ended["progress"] < 1.0

    kernel = json.loads(
        _print(
            k,
            "import json\njob2.wait(60)\n"
            "print(json.dumps({'job': job2.summary(), 'done': job2.done,"
            " 'run': job2.result.status}))",
        )
    )
    assert kernel["done"] and kernel["job"]["state"] == "cancelled"
    assert kernel["job"]["step"] == ended["step"]  # it stopped: no step after the cancel landed
    assert kernel["run"] == "interrupted"  # the run registry records the stop
    table = _print(k, "print(api.jobs())")
    assert job_id in table and "cancelled" in table
    k.close(cid)
