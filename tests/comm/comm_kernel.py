"""Drive a real ipykernel with jupyter_client, speaking the side-panel protocol like the panel.

Imported by ``tests/comm``'s conftest and tests (a module name of its own: several conftest.py
files share the name ``conftest``).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class KernelError(AssertionError):
    pass


class Client:
    """Talks to one kernel: runs cells, opens ``llmos`` comms, and records every IOPub message
    with the monotonic time it arrived (``self.iopub``)."""

    def __init__(self, km, kc, log_path: Path):
        self.km, self.kc, self.log_path = km, kc, log_path
        self.iopub: list[tuple[float, dict]] = []
        self.comm_ids: list[str] = []

    # -- IOPub ------------------------------------------------------------------------------
    def pump(self, seconds: float = 0.0) -> None:
        """Read IOPub for ``seconds`` (at least everything already waiting)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            try:
                msg = self.kc.get_iopub_msg(timeout=max(left, 0.01))
            except Exception:  # queue.Empty
                if time.monotonic() >= end:
                    return
                continue
            self.iopub.append((time.monotonic(), msg))

    def comm_msgs(self, comm_id: str | None = None, type_: str | None = None, since: float = 0.0):
        out = []
        for t, msg in self.iopub:
            if t < since or msg["msg_type"] != "comm_msg":
                continue
            content = msg["content"]
            if comm_id and content.get("comm_id") != comm_id:
                continue
            data = content.get("data") or {}
            if type_ and data.get("type") != type_:
                continue
            out.append((t, data, msg))
        return out

    def wait_for(self, predicate, timeout: float = 5.0, comm_id=None, type_=None, since=0.0):
        """Pump until a comm message matching ``predicate(data)`` arrives; return (t, data, msg)."""
        end = time.monotonic() + timeout
        while True:
            for item in self.comm_msgs(comm_id, type_, since):
                if predicate(item[1]):
                    return item
            if time.monotonic() >= end:
                seen = [d for _, d, _ in self.comm_msgs(comm_id, None, since)]
                raise AssertionError(f"no matching {type_ or 'comm'} message in {timeout}s; saw {seen[-5:]}")
            self.pump(0.05)

    # -- shell ------------------------------------------------------------------------------
    def execute(self, code: str) -> str:
        return self.kc.execute(code, store_history=False)

    def wait_reply(self, msg_id: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.0)
            try:
                reply = self.kc.get_shell_msg(timeout=0.05)
            except Exception:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                self.pump(0.05)
                if reply["content"]["status"] != "ok":
                    tb = "\n".join(reply["content"].get("traceback", []))
                    raise KernelError(f"cell failed: {reply['content'].get('evalue')}\n{tb}")
                return reply
        raise AssertionError(f"no execute_reply in {timeout}s")

    def run(self, code: str, timeout: float = 60.0) -> dict:
        return self.wait_reply(self.execute(code), timeout)

    def stream_text(self, msg_id: str) -> str:
        return "".join(
            m["content"].get("text", "")
            for _, m in self.iopub
            if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id
        )

    # -- comms ------------------------------------------------------------------------------
    def _send(self, msg_type: str, content: dict) -> None:
        self.kc.shell_channel.send(self.kc.session.msg(msg_type, content))

    def open(self, data: dict | None = None) -> str:
        comm_id = uuid.uuid4().hex
        self.comm_ids.append(comm_id)
        self._send("comm_open", {"comm_id": comm_id, "target_name": "llmos", "data": data or {}})
        return comm_id

    def send(self, comm_id: str, data) -> None:
        self._send("comm_msg", {"comm_id": comm_id, "data": data})

    def close(self, comm_id: str) -> None:
        self._send("comm_close", {"comm_id": comm_id, "data": {}})
        if comm_id in self.comm_ids:
            self.comm_ids.remove(comm_id)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_kernel(
    tmp: Path, kernel_name: str = "python3", extra_env: dict | None = None, kernel_spec_dirs: list[str] | None = None
):
    from jupyter_client import KernelManager

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    env["LLMOS_HOME"] = str(tmp / "llmos_home")
    env.update(extra_env or {})
    km = KernelManager(kernel_name=kernel_name)
    if kernel_spec_dirs:
        km.kernel_spec_manager.kernel_dirs = kernel_spec_dirs
    log_path = tmp / f"kernel-{uuid.uuid4().hex[:8]}.log"
    log_file = open(log_path, "wb")
    km.start_kernel(env=env, cwd=str(tmp), stdout=log_file, stderr=log_file)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return Client(km, kc, log_path), log_file


def stop_kernel(client: Client, log_file) -> None:
    client.kc.stop_channels()
    client.km.shutdown_kernel(now=True)
    log_file.close()
