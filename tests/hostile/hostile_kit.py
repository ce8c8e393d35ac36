"""Helpers of the hostile-input tests (imported by their conftest and modules under this name, as
``tests/comm`` does: several conftest.py files share the name ``conftest``): one module per kind
of fault a new user can hit.

* ``test_runaway.py`` — work that keeps running after the user stopped it;
* ``test_silently_wrong.py`` — results that look fine but are wrong;
* ``test_data_lost.py`` — files or data destroyed;
* ``test_half_states.py`` — the manager or the run registry left inconsistent;
* ``test_one_line_errors.py`` — tracebacks and unclear lines instead of one line naming the fix.

Every test drives the same surfaces a user does (``%llm`` in an ``InteractiveShell``, the Python
API, or a real kernel through ``jupyter_client`` where the behaviour depends on one) and then
checks that the manager is consistent: :func:`assert_consistent`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid

# 40 labelled rows (a positive or a negative word among filler): 30 train / 10 test after the split.
ROWS = [{"text": f"{'good great fine' if i % 2 else 'bad awful dull'} movie {i}", "label": i % 2} for i in range(40)]


def tiny_classifier(api, tiny_bert, alias: str = "tb"):
    """Load the tiny BERT as a 2-label classifier ``alias`` and the split dataset ``rows``."""
    api.load(str(tiny_bert), alias=alias, task="seq-cls", labels="neg,pos")
    api.data_load(ROWS, name="rows")
    api.data_split("rows", test=0.25, seed=0)
    return api


# Threads llmos starts for work that must end with it (generation workers, background jobs).
WORK_THREADS = ("llmos-generate", "llmos-job-")


def live_work_threads() -> list[str]:
    """Names of llmos work threads still alive in this process."""
    return [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(WORK_THREADS)]


def assert_consistent(api) -> None:
    """The manager, the job table and the run registry agree and nothing is left running:
    every model ready (or offloaded), unused and not held by a job; every job finished; no run
    "running"; no generation or job thread alive."""
    for m in api.manager().ps():
        assert m["state"] in ("ready", "offloaded") and m["users"] == 0 and not m["training"], m
    for j in api._state["jobs"].jobs.values() if "jobs" in api._state else ():
        assert j.done, j
    assert not [r.id for r in api.registry().list(100) if r.status == "running"]
    deadline = time.time() + 5
    while live_work_threads() and time.time() < deadline:
        time.sleep(0.05)
    assert live_work_threads() == []


# Runs in a kernel: the same checks, printed as JSON (see Kernel.consistent).
CONSISTENT = """
import json as _j, threading as _t, time as _tm
from llmos_jupyter import api as _api
_d = _tm.time() + 5
_alive = lambda: [t.name for t in _t.enumerate()
                  if t.is_alive() and t.name.startswith(("llmos-generate", "llmos-job-"))]
while _alive() and _tm.time() < _d:
    _tm.sleep(0.05)
print(_j.dumps({"models": [[m["alias"], m["state"], m["users"], m["training"]] for m in _api.manager().ps()],
                "jobs": [[j.id, j.state] for j in (_api._state["jobs"].jobs.values() if "jobs" in _api._state else ())],
                "running_runs": [r.id for r in _api.registry().list(100) if r.status == "running"],
                "threads": _alive()}))
"""


class Kernel:
    """A real ipykernel over ZMQ (``jupyter_client``), with ``LLMOS_HOME`` of its own.

    ``run`` executes a cell and returns ``{"out", "err", "errors", "display"}`` (``display``: the
    text/plain of its displays and result); ``start`` sends one without
    waiting; ``subshell()`` creates a kernel subshell (JEP 91) and ``comm_*`` talk to the
    ``llmos`` comm target on it, as JupyterLab's side panel does.
    """

    def __init__(self, home, env: dict | None = None):
        from jupyter_client.manager import start_new_kernel

        env = {**os.environ, "LLMOS_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)
        self.messages: list[dict] = []

    def _iopub(self, timeout: float):
        """Yield IOPub messages (kept in ``self.messages``) for at most ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            self.messages.append(m)
            yield m

    def _collect(self, msg_id: str, timeout: float, until_idle: bool = True) -> dict:
        out, err, errors, shown = [], [], [], []
        for m in self._iopub(timeout):
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            t, c = m["msg_type"], m["content"]
            if t == "stream":
                (out if c["name"] == "stdout" else err).append(c["text"])
            elif t == "error":
                errors.append(f"{c['ename']}: {c['evalue']}")
            elif t in ("display_data", "execute_result"):
                shown.append(c["data"].get("text/plain", ""))
            elif t == "status" and c["execution_state"] == "idle" and until_idle:
                return {"out": "".join(out), "err": "".join(err), "errors": errors, "display": "\n".join(shown)}
        raise TimeoutError(f"no idle after {timeout} s")

    def run(self, code: str, timeout: float = 300) -> dict:
        return self._collect(self.kc.execute(code), timeout)

    def ok(self, code: str, timeout: float = 300) -> dict:
        r = self.run(code, timeout)
        assert not r["errors"], r
        return r

    def start(self, code: str) -> str:
        return self.kc.execute(code)

    def wait(self, msg_id: str, timeout: float = 60) -> dict:
        return self._collect(msg_id, timeout)

    def wait_streams(self, msg_id: str, n: int, timeout: float = 120) -> int:
        """Read IOPub until the cell ``msg_id`` has printed ``n`` stream messages (it keeps running)."""
        seen = 0
        for m in self._iopub(timeout):
            if m["parent_header"].get("msg_id") == msg_id:
                if m["msg_type"] == "stream":
                    seen += 1
                assert not (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"), "cell ended"
            if seen >= n:
                break
        return seen

    def consistent(self) -> dict:
        r = self.ok(CONSISTENT)
        state = json.loads(r["out"].strip().splitlines()[-1])
        assert all(s in ("ready", "offloaded") and u == 0 and not t for _, s, u, t in state["models"]), state
        assert state["running_runs"] == [] and state["threads"] == [], state
        return state

    # -- the side panel's comm on a subshell ------------------------------------------------
    def subshell(self) -> str:
        self.kc.control_channel.send(self.kc.session.msg("create_subshell_request", {}))
        return self.kc.control_channel.get_msg(timeout=10)["content"]["subshell_id"]

    def _send(self, subshell_id: str, msg_type: str, content: dict) -> None:
        msg = self.kc.session.msg(msg_type, content)
        msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)

    def comm_open(self, subshell_id: str) -> str:
        comm_id = uuid.uuid4().hex
        self._send(subshell_id, "comm_open", {"comm_id": comm_id, "target_name": "llmos", "data": {}})
        return comm_id

    def comm_action(self, subshell_id: str, comm_id: str, action: str, target: str) -> None:
        self._send(
            subshell_id,
            "comm_msg",
            {"comm_id": comm_id, "data": {"type": "action", "action": action, "target": target, "id": "t1"}},
        )

    def comm_wait(self, predicate, timeout: float = 10) -> dict:
        """The next comm message whose data satisfies ``predicate`` (IOPub read meanwhile)."""
        for m in self._iopub(timeout):
            if m["msg_type"] == "comm_msg" and predicate(m["content"]["data"]):
                return m["content"]["data"]
        raise TimeoutError("no such comm message")

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def one_line(err: str, *expected: str) -> str:
    """Assert ``err`` is one ``llmos:`` line (no traceback) containing each of ``expected``."""
    assert err.count("\n") == 1 and err.startswith("llmos: ") and "Traceback" not in err, err
    for e in expected:
        assert e in err, (e, err)
    return err
