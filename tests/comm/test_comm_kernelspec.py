"""The "LLM OS (Python 3)" kernelspec (kernels/llmos) and the comm over the real API.

Starts the kernel from ``kernels/llmos/kernel.json`` exactly as Jupyter would (``python`` in
argv becomes this interpreter) and checks that ``%llm`` works without ``%load_ext`` and that the
side panel gets a snapshot of the real ``llmos_jupyter.api``.
"""

from __future__ import annotations

import json
import time

import pytest
from comm_kernel import ROOT, start_kernel, stop_kernel

SPEC = ROOT / "kernels" / "llmos" / "kernel.json"


def test_kernelspec_names_the_kernel_and_loads_the_extension():
    spec = json.loads(SPEC.read_text())
    assert spec["display_name"] == "LLM OS (Python 3)"
    assert spec["language"] == "python"
    assert spec["argv"][:3] == ["python", "-m", "ipykernel_launcher"]
    assert "{connection_file}" in spec["argv"]
    assert "--ext=llmos_jupyter" in spec["argv"]


@pytest.fixture(scope="module")
def llmos_kernel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llmos-kernel")
    client, log_file = start_kernel(tmp, "llmos", kernel_spec_dirs=[str(ROOT / "kernels")])
    yield client
    stop_kernel(client, log_file)


def test_llm_ps_works_without_load_ext(llmos_kernel):
    k = llmos_kernel
    out = k.run("print('llmos_jupyter' in get_ipython().extension_manager.loaded)")
    assert k.stream_text(out["parent_header"]["msg_id"]).strip() == "True", k.log_text()
    reply = k.run("%llm ps")
    assert reply["content"]["status"] == "ok"
    msg_id = reply["parent_header"]["msg_id"]
    errors = [
        m
        for _, m in k.iopub
        if m["parent_header"].get("msg_id") == msg_id
        and (m["msg_type"] == "error" or (m["msg_type"] == "stream" and m["content"]["name"] == "stderr"))
    ]
    assert errors == []


def test_panel_gets_a_snapshot_of_the_real_api(llmos_kernel):
    k = llmos_kernel
    cid = k.open()
    _, snap, _ = k.wait_for(lambda d: d.get("type") in ("state", "error"), comm_id=cid, timeout=30)
    assert snap["type"] == "state", snap
    assert isinstance(snap["models"], list) and isinstance(snap["jobs"], list)
    assert isinstance(snap["datasets"], list)
    hw = snap["hardware"]
    assert {"cpu_percent", "ram_used", "ram_total", "gpus"} <= set(hw), hw
    assert hw["ram_total"] > 0
    t0 = time.monotonic()
    k.send(cid, {"type": "action", "action": "unload", "target": "no-such-model", "id": "x"})
    _, err, _ = k.wait_for(lambda d: d.get("id") == "x", comm_id=cid, type_="error", since=t0)
    assert "no-such-model" in err["message"]
    k.close(cid)


def test_load_and_unload_through_the_panel_with_the_real_api(llmos_kernel, tmp_path):
    k = llmos_kernel
    k.run(f"import tiny_kit; tiny_kit.save_tiny({str(tmp_path / 'tiny')!r}, 'llama')", timeout=120)
    cid = k.open()
    k.wait_for(lambda d: d.get("type") == "state", comm_id=cid, timeout=30)
    t0 = time.monotonic()
    reply = k.run(f"%llm load {tmp_path / 'tiny'} --task causal-lm --as tiny", timeout=120)
    t_done = max(
        t
        for t, m in k.iopub
        if m["msg_type"] == "status"
        and m["parent_header"].get("msg_id") == reply["parent_header"]["msg_id"]
        and m["content"]["execution_state"] == "idle"
    )
    # snapshots sent while it loads show it "loading"; the one that counts shows it ready
    t, snap, _ = k.wait_for(
        lambda d: d.get("type") == "state" and any(m["alias"] == "tiny" and m["state"] == "ready" for m in d["models"]),
        comm_id=cid,
        since=t0,
        timeout=5,
    )
    assert t - t_done < 1.0, f"panel saw the load {t - t_done:.2f}s after the cell ended"
    (model,) = [m for m in snap["models"] if m["alias"] == "tiny"]
    assert model["task"] == "causal-lm" and model["state"] == "ready"
    assert sum(model["bytes"].values()) > 0, model

    t0 = time.monotonic()
    k.send(cid, {"type": "action", "action": "unload", "target": "tiny", "id": "u1"})
    k.wait_for(lambda d: d.get("id") == "u1", comm_id=cid, type_="ack", since=t0, timeout=30)
    k.wait_for(lambda d: d.get("type") == "state" and not d["models"], comm_id=cid, since=t0)
    out = k.run("from llmos_jupyter import api; print(len(api.state()['models']))")
    assert k.stream_text(out["parent_header"]["msg_id"]).strip() == "0"
    k.close(cid)
