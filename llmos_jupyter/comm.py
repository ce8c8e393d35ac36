"""Side-panel protocol: the kernel end of the comm target ``llmos``.

The JupyterLab panel (``labextension/``) opens a comm to the target ``llmos`` in the kernel of
the active notebook. From then on, while at least one such comm is open:

Kernel -> panel (``comm_msg`` data, all JSON)::

    {"type": "state", "version": 1, "seq": n, "time": epoch_s,
     "models": [...], "jobs": [...], "datasets": [...], "hardware": {...}, "server": {...} | null}
        on open, on every state change (throttled to <= 4/s), and in reply to ``refresh``;
        ``server`` is the ``%llm serve`` server (url, base_url, models, requests, failed,
        in_flight, queued, tokens_per_s, ...) or null when none runs (never its token)
    {"type": "hardware", "version": 1, "seq": n, "time": epoch_s, "hardware": {...}}
        every ``hardware_interval_s`` (default 2 s)
    {"type": "ack", "version": 1, "action": a, "target": t, "id": i}
        after an action succeeded
    {"type": "error", "version": 1, "message": "...", "action": a, "target": t, "id": i}
        for an unknown action, a missing or unknown target, or a failed action

Panel -> kernel::

    {"type": "action", "action": "unload" | "cancel" | "refresh" | "stop-server", "target": "...",
     "id": "..."}

``id`` is optional and echoed back. Structurally malformed messages (not an object, ``type``
not ``"action"``, a field of the wrong JSON type) are ignored with a log line; they never raise.
Nothing in the protocol executes code: actions map onto ``api.unload``, ``api.cancel``,
``api.serve_stop`` (``stop-server``; no target) and a fresh snapshot, nothing else.

The comm open message may carry ``{"hardware_interval_s": x}`` (0.5 <= x <= 60; the panel's
"refresh interval" setting). The shortest interval among the open comms wins.

Pushes come from one daemon thread, so the panel keeps moving while a cell runs (a foreground
fine-tune still moves its progress bar). Incoming actions are handled on the thread of the shell
they arrive on: JupyterLab >= 4.4 sends a comm's messages on a kernel subshell (JEP 91,
ipykernel >= 7), so Cancel and Unload act while a cell runs — a foreground fine-tune stops at its
next step. Without subshells they wait for the running cell; for a job whose summary says
``"foreground": true`` the panel then sends the kernel interrupt instead (``cancelRoute`` in
``labextension/src/protocol.ts``).

Usage: ``load_ipython_extension`` calls :func:`register`; tests swap the data source with
:func:`set_provider`. The API is imported lazily, so ``%load_ext`` stays light.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

TARGET = "llmos"
VERSION = 1
ACTIONS = ("cancel", "refresh", "stop-server", "unload")
REFRESH_TARGETS = ("", "all", "state", "hardware")
HARDWARE_INTERVAL_S = 2.0  # the contract's default; the panel may ask for 0.5 .. 60 s
HARDWARE_INTERVAL_RANGE = (0.5, 60.0)
MIN_STATE_INTERVAL_S = 0.25  # <= 4 state messages per second, however many events arrive
MAX_FIELD_LEN = 256  # longer action/target/id strings are answered with an error, not used
THREAD_NAME = "llmos-comm-push"


def _api() -> Any:
    """Return the data source: the provider set by :func:`set_provider`, else ``llmos_jupyter.api``."""
    if _hub.provider is not None:
        return _hub.provider
    from llmos_jupyter import api  # lazy: keeps `%load_ext` free of heavy imports

    return api


def _is_user_error(exc: BaseException) -> bool:
    try:
        from llmos_jupyter.errors import LLMOSError
    except Exception:  # pragma: no cover - errors.py always ships
        return False
    return isinstance(exc, LLMOSError)


def jsonable(obj: Any, depth: int = 0) -> Any:
    """Return ``obj`` as plain JSON: NaN/inf -> None, numpy/torch scalars -> Python numbers,
    tuples/sets -> lists, dict keys -> str, anything else -> ``str(obj)``. Depth is capped at 8.

    >>> jsonable({"loss": float("nan"), 1: (2, 3)})
    {'loss': None, '1': [2, 3]}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if depth >= 8:
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in obj]
    item = getattr(obj, "item", None)  # numpy / torch 0-d values
    if callable(item):
        try:
            return jsonable(item(), depth + 1)
        except Exception:
            pass
    return str(obj)


class _Hub:
    """Process-wide comm state: open comms, the subscription and the push thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.comms: dict[str, Any] = {}  # comm_id -> comm
        self.intervals: dict[str, float] = {}  # comm_id -> requested hardware interval
        self.manager: Any = None  # the comm manager the target is registered on
        self.provider: Any = None
        self.unsubscribe: Callable[[], Any] | None = None
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.dirty = False
        self.seq = 0
        self.last_state = 0.0  # monotonic time of the last state push
        self.last_hardware = 0.0  # monotonic time of the last hardware sample
        self.hardware: dict = {}
        self.last_error = ""

    # -- data -------------------------------------------------------------------------------
    def sample_hardware(self) -> dict:
        try:
            hw = jsonable(_api().hardware())
            if not isinstance(hw, dict):
                raise TypeError(f"hardware() returned {type(hw).__name__}, not a dict")
        except Exception as exc:
            hw = {
                "cpu_percent": None,
                "ram_used": None,
                "ram_total": None,
                "gpus": [],
                "error": f"hardware unavailable: {exc}",
            }
        self.hardware = hw
        self.last_hardware = time.monotonic()
        return hw

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def snapshot(self, fresh_hardware: bool = False) -> dict:
        """Build a ``state`` message. Raises whatever ``api.state()`` raises."""
        state = _api().state()
        if not isinstance(state, dict):
            raise TypeError(f"state() returned {type(state).__name__}, not a dict")
        hw = self.sample_hardware() if fresh_hardware or not self.hardware else self.hardware
        msg = {"type": "state", "version": VERSION, "seq": self.next_seq(), "time": time.time()}
        for key in ("models", "jobs", "datasets"):
            value = state.get(key) or []
            msg[key] = jsonable(list(value) if isinstance(value, (list, tuple)) else [])
        msg["hardware"] = hw
        server = state.get("server")
        if isinstance(server, dict):
            server = jsonable({k: v for k, v in server.items() if k != "token"})  # the panel never sees the token
        msg["server"] = server if isinstance(server, dict) else None
        return msg

    def hardware_message(self) -> dict:
        return {
            "type": "hardware",
            "version": VERSION,
            "seq": self.next_seq(),
            "time": time.time(),
            "hardware": self.sample_hardware(),
        }

    # -- sending ----------------------------------------------------------------------------
    @staticmethod
    def send(comm: Any, payload: dict) -> None:
        try:
            comm.send(payload)
        except Exception:  # a comm closing under us, a kernel shutting down
            log.debug("llmos comm send failed", exc_info=True)

    def broadcast(self, payload: dict) -> None:
        with self.lock:
            comms = list(self.comms.values())
        for comm in comms:
            self.send(comm, payload)

    def interval(self) -> float:
        with self.lock:
            return min(self.intervals.values(), default=HARDWARE_INTERVAL_S)

    # -- events -----------------------------------------------------------------------------
    def on_event(self, event: Any = None) -> None:
        """``api.subscribe`` callback; may run on any thread, so it only flags and wakes."""
        self.dirty = True
        self.wake.set()

    def subscribe(self) -> None:
        with self.lock:
            if self.unsubscribe is not None:
                return
            try:
                self.unsubscribe = _api().subscribe(self.on_event) or (lambda: None)
            except Exception as exc:
                # Without events, the push thread re-sends state on every hardware tick.
                log.warning("llmos panel: cannot subscribe to state changes (%s); polling", exc)

    def drop_subscription(self) -> None:
        with self.lock:
            unsubscribe, self.unsubscribe = self.unsubscribe, None
        if unsubscribe is not None:
            try:
                unsubscribe()
            except Exception:
                log.debug("llmos unsubscribe failed", exc_info=True)

    # -- comm lifecycle ---------------------------------------------------------------------
    def on_open(self, comm: Any, open_msg: dict) -> None:
        data = _content_data(open_msg)
        interval = HARDWARE_INTERVAL_S
        asked = data.get("hardware_interval_s") if isinstance(data, dict) else None
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and math.isfinite(asked):
            lo, hi = HARDWARE_INTERVAL_RANGE
            interval = min(max(float(asked), lo), hi)
        comm_id = getattr(comm, "comm_id", None) or str(id(comm))
        with self.lock:
            self.comms[comm_id] = comm
            self.intervals[comm_id] = interval
        comm.on_msg(lambda msg: self.on_msg(comm, msg))
        comm.on_close(lambda msg: self.on_close(comm_id))
        self.subscribe()
        try:
            self.send(comm, self.snapshot(fresh_hardware=True))
            with self.lock:
                self.last_state = time.monotonic()
        except Exception as exc:
            self.send(comm, _error(f"llmos state unavailable: {exc}"))
        self.ensure_thread()

    def on_close(self, comm_id: str) -> None:
        with self.lock:
            self.comms.pop(comm_id, None)
            self.intervals.pop(comm_id, None)
            last = not self.comms
        if last:
            self.drop_subscription()

    def on_msg(self, comm: Any, msg: Any) -> None:
        """Validate one panel message and run its action. Never raises."""
        try:
            self._handle(comm, _content_data(msg))
        except Exception:  # a bug here must not reach ipykernel's "Exception in comm_msg"
            log.exception("llmos comm: unexpected failure handling a panel message")

    def _handle(self, comm: Any, data: Any) -> None:
        if not isinstance(data, dict) or data.get("type") != "action":
            log.info("llmos comm: ignored a message that is not an action: %.200r", data)
            return
        action, target, req_id = data.get("action"), data.get("target"), data.get("id")
        if (
            not isinstance(action, str)
            or not isinstance(target, (str, type(None)))
            or not isinstance(req_id, (str, int, type(None)))
            or isinstance(req_id, bool)
        ):
            log.info("llmos comm: ignored a malformed action: %.200r", data)
            return
        target = target or ""
        if isinstance(req_id, str) and len(req_id) > MAX_FIELD_LEN:
            req_id = None
        echo = {"action": action[:64], "target": target[:MAX_FIELD_LEN], "id": req_id}
        if action not in ACTIONS:
            self.send(comm, _error(f"unknown action '{action[:64]}' (known: {', '.join(ACTIONS)})", **echo))
            return
        if len(target) > MAX_FIELD_LEN:
            self.send(comm, _error(f"{action} target is longer than {MAX_FIELD_LEN} characters", **echo))
            return
        if action == "refresh":
            if target not in REFRESH_TARGETS:
                self.send(
                    comm, _error(f"unknown refresh target '{target}' (known: state, hardware, all or empty)", **echo)
                )
                return
            try:
                self.send(comm, self.snapshot(fresh_hardware=True))
            except Exception as exc:
                self.send(comm, _error(f"llmos state unavailable: {exc}", **echo))
            return
        if action == "stop-server":
            try:
                _api().serve_stop()
            except Exception as exc:
                self.send(comm, _error(f"stop-server failed: {exc}", **echo))
            else:
                self.send(comm, {"type": "ack", "version": VERSION, **echo})
            self.on_event()
            return
        if not target:
            what = "a model alias" if action == "unload" else "a job id"
            self.send(comm, _error(f"{action} needs a target ({what})", **echo))
            return
        try:
            api = _api()
            if action == "unload":
                api.unload(target)
            else:
                api.cancel(self._job_id(target))
        except Exception as exc:
            if not _is_user_error(exc):
                log.warning("llmos comm: %s %r failed", action, target, exc_info=True)
                exc = f"{action} '{target}' failed: {type(exc).__name__}: {exc}"
            self.send(comm, _error(str(exc), **echo))
        else:
            self.send(comm, {"type": "ack", "version": VERSION, **echo})
        self.on_event()  # push the new state promptly even if the API emitted no event

    def _job_id(self, target: str) -> Any:
        """Map the panel's string id back to the job's own id (which may be an int)."""
        try:
            for job in _api().state().get("jobs") or []:
                if isinstance(job, dict) and str(job.get("id")) == target:
                    return job.get("id")
        except Exception:
            pass
        return target  # unknown: let api.cancel raise its own one-line error

    # -- push thread ------------------------------------------------------------------------
    def ensure_thread(self) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                self.wake.set()
                return
            self.thread = threading.Thread(target=self.run, name=THREAD_NAME, daemon=True)
            self.thread.start()

    def run(self) -> None:
        from llmos_jupyter.resources.jobs import detach_output

        detach_output()
        while True:
            try:
                self.wake.wait(self.step())
                self.wake.clear()
            except Exception:  # keep the panel alive whatever one push did
                log.exception("llmos comm push thread")
                time.sleep(1.0)

    def step(self) -> float | None:
        """Push what is due; return how long to sleep (None: until woken)."""
        with self.lock:
            if not self.comms:
                self.dirty = False
                return None
            polling = self.unsubscribe is None
        now = time.monotonic()
        interval = self.interval()
        if now - self.last_hardware >= interval:
            msg = self.hardware_message()
            if polling:
                self.dirty = True  # no events: refresh state with each hardware tick
            else:
                self.broadcast(msg)
        if self.dirty and now - self.last_state >= MIN_STATE_INTERVAL_S:
            self.dirty = False
            try:
                self.broadcast(self.snapshot())
                self.last_error = ""
            except Exception as exc:
                text = f"llmos state unavailable: {exc}"
                if text != self.last_error:
                    self.last_error = text
                    self.broadcast(_error(text))
            self.last_state = time.monotonic()
        now = time.monotonic()
        wait = self.last_hardware + interval - now
        if self.dirty:
            wait = min(wait, self.last_state + MIN_STATE_INTERVAL_S - now)
        return max(wait, 0.01)


_hub = _Hub()


def _content_data(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return None
    content = msg.get("content")
    return content.get("data") if isinstance(content, dict) else None


def _error(message: str, action: str | None = None, target: str | None = None, id: Any = None) -> dict:
    return {
        "type": "error",
        "version": VERSION,
        "message": " ".join(str(message).split()),
        "action": action,
        "target": target,
        "id": id,
    }


def register(ip: Any = None) -> bool:
    """Register the comm target ``llmos`` on ``ip.kernel.comm_manager``.

    Idempotent: calling it again with the same kernel does nothing. In a shell without a kernel
    (a terminal ``InteractiveShell``) it does nothing and returns False. The push thread starts
    with the first panel that connects, and only one ever runs.

    Returns True when the target is registered.
    """
    if ip is None:
        try:
            from IPython import get_ipython

            ip = get_ipython()
        except Exception:
            return False
    manager = getattr(getattr(ip, "kernel", None), "comm_manager", None)
    if manager is None or not hasattr(manager, "register_target"):
        return False
    with _hub.lock:
        if _hub.manager is not manager:
            manager.register_target(TARGET, _hub.on_open)
            _hub.manager = manager
    return True


def set_provider(provider: Any = None) -> None:
    """Use ``provider`` instead of ``llmos_jupyter.api`` (the protocol tests' fake API, which
    drives edge cases such as NaN losses and event floods); None restores the API.

    A provider has ``state()``, ``hardware()``, ``subscribe(callback) -> unsubscribe``,
    ``unload(alias)``, ``cancel(job_id)`` and ``serve_stop()`` with the API's meaning.
    """
    _hub.drop_subscription()
    with _hub.lock:
        _hub.provider = provider
        _hub.hardware = {}
        has_comms = bool(_hub.comms)
    if has_comms:
        _hub.subscribe()
        _hub.on_event()


def open_comms() -> int:
    """Number of panels connected to this kernel."""
    with _hub.lock:
        return len(_hub.comms)
