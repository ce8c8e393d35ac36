"""Side-panel protocol (comm target ``llmos``) in a real kernel, with a fake API provider.

Run: ``.venv/bin/python -m pytest tests/comm -q``. See ``llmos_jupyter/comm.py`` for the protocol.
"""

from __future__ import annotations

import time

MODEL_KEYS = {
    "alias",
    "task",
    "source",
    "dtype",
    "device",
    "params",
    "estimated_bytes",
    "bytes",
    "state",
    "pinned",
    "keep_alive",
    "last_used",
}
JOB_KEYS = {"id", "kind", "target", "state", "progress", "step", "total_steps", "loss", "samples_per_s", "eta_s"}


def is_state(d):
    return d.get("type") == "state"


def test_snapshot_on_open_has_the_protocol_shape(panel):
    panel.run("fake.load('tiny', 4096); fake.start_job(7, total_steps=4)")
    cid = panel.open()
    _, snap, _ = panel.wait_for(is_state, comm_id=cid)
    assert snap["version"] == 1
    assert set(snap) >= {"type", "version", "seq", "time", "models", "jobs", "datasets", "hardware"}
    (model,) = snap["models"]
    assert MODEL_KEYS <= set(model)
    assert model["alias"] == "tiny" and model["bytes"] == {"cpu": 4096}
    (job,) = snap["jobs"]
    assert JOB_KEYS <= set(job)
    assert job["loss"] is None  # NaN is not JSON: it travels as null
    assert snap["datasets"] == [{"name": "reviews", "version": 1, "rows": 33530, "fingerprint": "ab12"}]
    hw = snap["hardware"]
    assert {"cpu_percent", "ram_used", "ram_total", "gpus"} <= set(hw)
    assert {"index", "name", "util", "mem_used", "mem_total", "temperature"} <= set(hw["gpus"][0])


def test_update_within_one_second_of_a_load(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.execute("fake.load('tiny', 2_000_000)")
    t, snap, _ = panel.wait_for(lambda d: is_state(d) and d["models"], comm_id=cid, since=t0)
    assert t - t0 < 1.0, f"state update took {t - t0:.2f}s"
    assert snap["models"][0]["bytes"] == {"cpu": 2_000_000}


def test_updates_flow_while_a_long_cell_runs(panel):
    cid = panel.open({"hardware_interval_s": 0.5})
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    msg_id = panel.execute(
        "import time\nfake.start_job('ft', total_steps=20)\n"
        "for _ in range(20):\n    time.sleep(0.15)\n    fake.step_job('ft')\n"
    )
    panel.wait_reply(msg_id)
    busy_end = max(
        t
        for t, m in panel.iopub
        if m["msg_type"] == "status"
        and m["content"]["execution_state"] == "idle"
        and m["parent_header"].get("msg_id") == msg_id
    )
    during = [(t, d) for t, d, _ in panel.comm_msgs(cid, "state", since=t0) if t < busy_end]
    progress = [d["jobs"][0]["progress"] for _, d in during if d["jobs"]]
    assert len(progress) >= 5, progress
    assert progress == sorted(progress) and progress[-1] > progress[0]
    # throttled: never more than 4 state messages in any one-second window (+1 for edges)
    times = [t for t, _ in during]
    assert max(sum(1 for u in times if s <= u < s + 1.0) for s in times) <= 5
    hw = [t for t, _, _ in panel.comm_msgs(cid, "hardware", since=t0) if t < busy_end]
    assert len(hw) >= 3, "hardware pushes stopped while the cell ran"


def test_pushes_are_not_attributed_to_the_running_cell(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.run("import time\nfake.load('a')\ntime.sleep(0.6)")
    pushed = panel.comm_msgs(cid, "state", since=t0)
    assert pushed and all(m["parent_header"] == {} for _, _, m in pushed)


def test_hardware_every_two_seconds_by_default(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.run("import time; time.sleep(4.5)")
    hw = [t for t, _, _ in panel.comm_msgs(cid, "hardware", since=t0)]
    assert 2 <= len(hw) <= 3, hw
    assert all(1.5 < b - a < 2.6 for a, b in zip(hw, hw[1:]))


def test_state_pushes_are_throttled_to_four_per_second(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.run(
        "import time\nfake.start_job(1, total_steps=10**6)\nt = time.time()\n"
        "while time.time() - t < 2.0:\n    fake.step_job(1)\n"
    )
    panel.pump(0.5)
    n = len(panel.comm_msgs(cid, "state", since=t0))
    assert 3 <= n <= 4 * 2.5 + 2, n


def test_unknown_action_gets_an_error_reply(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    panel.send(cid, {"type": "action", "action": "rm -rf", "target": "x", "id": "r1"})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == "r1", comm_id=cid, type_="error")
    assert "unknown action 'rm -rf'" in err["message"] and "unload" in err["message"]
    assert err["action"] == "rm -rf" and err["target"] == "x"


def test_unknown_target_gets_the_api_error_reply(panel):
    panel.run("fake.load('tiny')")
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    panel.send(cid, {"type": "action", "action": "unload", "target": "tinny", "id": 3})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == 3, comm_id=cid, type_="error")
    assert err["message"] == "unknown model 'tinny' (did you mean: tiny?); see `%llm ps`"
    panel.send(cid, {"type": "action", "action": "cancel", "target": "", "id": 4})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == 4, comm_id=cid, type_="error")
    assert err["message"] == "cancel needs a target (a job id)"
    panel.send(cid, {"type": "action", "action": "refresh", "target": "gpu9", "id": 5})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == 5, comm_id=cid, type_="error")
    assert "unknown refresh target 'gpu9'" in err["message"]
    panel.send(cid, {"type": "action", "action": "unload", "target": "x" * 300, "id": 6})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == 6, comm_id=cid, type_="error")
    assert "longer than 256" in err["message"] and len(err["target"]) == 256


def test_unload_action_removes_the_model(panel):
    panel.run("fake.load('tiny'); fake.load('other')")
    cid = panel.open()
    panel.wait_for(lambda d: is_state(d) and len(d["models"]) == 2, comm_id=cid)
    panel.send(cid, {"type": "action", "action": "unload", "target": "tiny", "id": "u"})
    panel.wait_for(lambda d: d.get("id") == "u", comm_id=cid, type_="ack")
    _, snap, _ = panel.wait_for(lambda d: is_state(d) and len(d["models"]) == 1, comm_id=cid)
    assert snap["models"][0]["alias"] == "other"
    out = panel.run("print(sorted(fake.models))")
    assert "['other']" in panel.stream_text(out["parent_header"]["msg_id"])


def test_cancel_action_maps_the_string_id_to_the_job(panel):
    panel.run("fake.start_job(7)")
    cid = panel.open()
    panel.wait_for(lambda d: is_state(d) and d["jobs"], comm_id=cid)
    panel.send(cid, {"type": "action", "action": "cancel", "target": "7"})
    panel.wait_for(lambda d: d["target"] == "7", comm_id=cid, type_="ack")
    panel.wait_for(lambda d: is_state(d) and d["jobs"][0]["state"] == "cancelled", comm_id=cid)


def test_server_field_and_stop_server_action(panel):
    cid = panel.open()
    _, snap, _ = panel.wait_for(is_state, comm_id=cid)
    assert snap["server"] is None
    panel.execute("fake.serve(['tiny', 'minilm'])")
    _, snap, _ = panel.wait_for(lambda d: is_state(d) and d["server"], comm_id=cid)
    assert snap["server"] == {
        "url": "http://127.0.0.1:8765",
        "base_url": "http://127.0.0.1:8765/v1",
        "models": ["tiny", "minilm"],
        "requests": 12,
        "failed": 1,
        "in_flight": 2,
        "queued": 3,
        "tokens_per_s": 41.5,
    }  # never the token
    panel.send(cid, {"type": "action", "action": "stop-server", "target": "", "id": "s1"})
    panel.wait_for(lambda d: d.get("id") == "s1", comm_id=cid, type_="ack")
    panel.wait_for(lambda d: is_state(d) and d["server"] is None, comm_id=cid)


def test_refresh_sends_a_fresh_snapshot(panel):
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.send(cid, {"type": "action", "action": "refresh"})
    # state messages come only on a change or a refresh, so any state after t0 answers the refresh
    panel.wait_for(is_state, comm_id=cid, since=t0, timeout=10.0)


MALFORMED = [
    None,
    42,
    "unload tiny",
    [1, 2],
    {},
    {"type": "unload"},
    {"type": "action"},
    {"type": "action", "action": 5},
    {"type": "action", "action": None},
    {"type": "action", "action": "unload", "target": ["tiny"]},
    {"type": "action", "action": "unload", "target": {"$ne": 1}},
    {"type": "action", "action": "cancel", "target": "1", "id": True},
    {"type": "action", "action": "cancel", "target": "1", "id": [1]},
]


def test_malformed_messages_are_ignored_without_an_exception(panel):
    panel.run("fake.load('tiny')")
    cid = panel.open()
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    for bad in MALFORMED:
        panel.send(cid, bad)
    # raw comm_msg content without "data" at all
    panel._send("comm_msg", {"comm_id": cid})
    panel.pump(0.5)
    replies = [d for _, d, _ in panel.comm_msgs(cid, since=t0) if d.get("type") in ("error", "ack")]
    assert replies == []
    panel.send(cid, {"type": "action", "action": "refresh", "target": "", "id": "after"})
    _, snap, _ = panel.wait_for(lambda d: is_state(d), comm_id=cid, since=t0)
    assert [m["alias"] for m in snap["models"]] == ["tiny"]  # nothing was unloaded
    log = panel.log_text()[panel.log_mark :]
    assert "Traceback" not in log and "Exception in comm_msg" not in log, log


def test_no_pushes_after_the_panel_closes(panel):
    cid = panel.open({"hardware_interval_s": 0.5})
    panel.wait_for(is_state, comm_id=cid)
    panel.close(cid)
    panel.run(
        "import time\nfor _ in range(50):\n    if not llmos_comm.open_comms(): break\n"
        "    time.sleep(0.02)\nassert llmos_comm.open_comms() == 0\nfake.load('late')"
    )
    t0 = time.monotonic()
    panel.pump(1.2)
    assert panel.comm_msgs(cid, since=t0) == []
    out = panel.run("print(len(fake.listeners))")  # unsubscribed with the last panel
    assert panel.stream_text(out["parent_header"]["msg_id"]).strip() == "0"


def test_two_panels_share_one_push_thread(panel):
    panel.run("llmos_comm.register(get_ipython()); llmos_comm.register(get_ipython())")
    a, b = panel.open(), panel.open({"hardware_interval_s": "fast"})  # bad interval: default
    panel.wait_for(is_state, comm_id=a)
    panel.wait_for(is_state, comm_id=b)
    t0 = time.monotonic()
    panel.run("fake.load('shared')")
    for cid in (a, b):
        panel.wait_for(lambda d: is_state(d) and d["models"], comm_id=cid, since=t0)
    out = panel.run(
        "import threading\n"
        "print(sum(t.name == llmos_comm.THREAD_NAME for t in threading.enumerate()),"
        " len(fake.listeners))"
    )
    assert panel.stream_text(out["parent_header"]["msg_id"]).split() == ["1", "1"]


def test_without_events_the_state_is_polled(panel):
    panel.run("fake = comm_fake_api.NoEventsAPI(); llmos_comm.set_provider(fake)")
    cid = panel.open({"hardware_interval_s": 0.5})
    panel.wait_for(is_state, comm_id=cid)
    t0 = time.monotonic()
    panel.run("fake.load('polled')")
    t, _, _ = panel.wait_for(lambda d: is_state(d) and d["models"], comm_id=cid, since=t0)
    assert t - t0 < 1.5


def test_broken_providers_answer_with_errors_not_exceptions(panel):
    panel.run("fake.fail_hardware = True")
    cid = panel.open()
    _, snap, _ = panel.wait_for(is_state, comm_id=cid)
    assert snap["hardware"]["error"] == "hardware unavailable: NVML not found"
    panel.run("fake.state = lambda: 1/0")
    panel.send(cid, {"type": "action", "action": "refresh", "id": "r"})
    _, err, _ = panel.wait_for(lambda d: d.get("id") == "r", comm_id=cid, type_="error")
    assert err["message"] == "llmos state unavailable: division by zero"
    log = panel.log_text()[panel.log_mark :]
    assert "Traceback" not in log, log
