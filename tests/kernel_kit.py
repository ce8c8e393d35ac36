"""A real ipykernel driven over ZMQ (jupyter_client), for tests whose behaviour depends on a
kernel: threads, comms, display, servers."""

from __future__ import annotations

import os
import queue
import time

from jupyter_client.manager import start_new_kernel


class Kernel:
    """A real ipykernel driven over ZMQ; ``run`` returns the iopub messages of one cell."""

    def __init__(self, home=None):
        """Start ``python3`` with this process's environment; with ``home``, ``LLMOS_HOME=home``
        (a test that writes runs, checkpoints or datasets gives one of its own)."""
        env = {**os.environ, **({"LLMOS_HOME": str(home)} if home is not None else {})}
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)
        self.pending = []

    def run(self, code: str, timeout: float = 300) -> list[dict]:
        msg_id = self.kc.execute(code)
        msgs = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            self.pending.append(m)
            if m["parent_header"].get("msg_id") == msg_id:
                msgs.append(m)
                if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    return msgs
        raise TimeoutError(code)

    def drain(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            try:
                self.pending.append(self.kc.get_iopub_msg(timeout=0.2))
            except queue.Empty:
                pass

    def stdout(self, msgs) -> str:
        return "".join(
            m["content"]["text"] for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def errors(self, msgs):
        return [m["content"] for m in msgs if m["msg_type"] == "error"]

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
