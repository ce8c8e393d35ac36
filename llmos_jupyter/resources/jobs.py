"""Background work that stays attached to the cell that started it.

ipykernel routes output by the *parent header* of the request being handled. A thread started
from a cell sees the last parent set from any thread, so its later output lands in whichever
cell runs then. :func:`keep_output_parent` captures the starting cell's parent when the
function is wrapped and sets it as the *thread's own* parent inside the thread (ipykernel ≥ 6.?
``ZMQInteractiveShell.set_thread_parent``; older kernels fall back to the streams'
thread-local setters). See ``ipykernel/zmqshell.py`` and ``ipykernel/iostream.py``.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..display import Rendered


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    return ip if getattr(ip, "kernel", None) is not None else None


def current_parent():
    """The parent header of the running cell (``None`` outside ipykernel)."""
    ip = _shell()
    if ip is None:
        return None
    try:
        return ip.get_parent()
    except AttributeError:
        return getattr(ip, "parent_header", None)


def set_output_parent(parent) -> None:
    """Route this thread's stdout/stderr/display output to the cell of ``parent``.

    Only the calling thread is affected; the main thread's parent is left alone.
    """
    ip = _shell()
    if ip is None or not parent:
        return
    if hasattr(ip, "set_thread_parent"):
        ip.set_thread_parent(parent)
        return
    for obj in (sys.stdout, sys.stderr, getattr(ip, "display_pub", None), getattr(ip, "displayhook", None)):
        setter = getattr(obj, "set_thread_parent", None)
        if setter is not None:
            try:
                setter(parent)
            except Exception:
                pass


def detach_output() -> None:
    """Give this thread an empty parent header, so what it prints or sends is not attributed to
    whichever cell happens to be running (ipykernel >= 7 keeps the shell parent in a ContextVar
    that threads otherwise inherit from the last request). For threads that belong to no cell:
    the side panel's push thread, the ``%llm serve`` threads. Best effort: older kernels keep the
    old routing."""
    try:
        from ipykernel.kernelbase import Kernel

        if Kernel.initialized():
            var = getattr(Kernel.instance(), "_shell_parent", None)
            if var is not None and hasattr(var, "set"):
                var.set({})
    except Exception:
        pass


def keep_output_parent(fn):
    """Wrap ``fn`` (to be run in another thread) so its output goes to the cell that wrapped it,
    and its error hints name options the way that cell did (``--flag`` under ``%llm``)."""
    from ..errors import on_surface, surface

    parent, where = current_parent(), surface()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        set_output_parent(parent)
        with on_surface(where):
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- jobs

_ids = itertools.count(1)


@dataclass
class Job(Rendered):
    """One unit of long work (a fine-tune, an evaluation) with live progress.

    ``state``: ``queued → running → done | failed | cancelled | interrupted | diverged``.
    ``progress`` is 0..1; ``eta_s`` and ``samples_per_s`` come from the training loop.
    ``foreground``: the job runs in the cell that started it (it blocks that cell); a side panel
    whose messages cannot reach a busy kernel stops it with the kernel interrupt instead.
    A distributed fine-tune (ranks in subprocesses, ``training/launch.py``) also reports
    ``world_size``, the pids of its local ranks and how many are alive (``ranks_alive``), and its
    ``launcher``.
    """

    kind: str
    target: str
    device: str = "cpu"
    id: str = field(default_factory=lambda: f"job-{next(_ids)}")
    state: str = "queued"
    progress: float = 0.0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    world_size: int = 1
    ranks_alive: int | None = None
    pids: list = field(default_factory=list)
    launcher: str | None = None
    result: object = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    foreground: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the job to stop at its next step boundary (a queued job never starts)."""
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None):
        """Block until the job ends; returns its result (re-raises nothing: see ``error``)."""
        self._done.wait(timeout)
        return self.result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __repr__(self) -> str:
        """One line for a cell result: ``job-1: finetune minilm, running 40% (step 4/10)``."""
        extra = f" — {self.error}" if self.error else ""
        steps = f" (step {self.step}/{self.total_steps})" if self.total_steps else ""
        if self.launcher:
            alive = f" ({self.ranks_alive} alive here)" if self.ranks_alive is not None else ""
            steps += f", {self.world_size} ranks{alive}"
        return (
            f"{self.id}: {self.kind} {self.target}, {self.state} {self.progress * 100:.0f}%{steps}{extra}; "
            f"`%llm jobs`, `%llm job wait {self.id}`, `%llm job cancel {self.id}`"
        )

    def summary(self) -> dict:
        """JSON-safe view for ``%llm jobs`` and the side panel."""
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "device": self.device,
            "state": self.state,
            "progress": self.progress,
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self.loss,
            "samples_per_s": self.samples_per_s,
            "eta_s": self.eta_s,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "world_size": self.world_size,
            "ranks_alive": self.ranks_alive,
            "pids": list(self.pids),
            "launcher": self.launcher,
            "foreground": self.foreground,
        }


class JobScheduler:
    """Runs jobs: at most one training job per device at a time, the rest queued in order.

    Foreground jobs run in the calling thread (:meth:`run_here`) but still hold their device's
    slot, so a background job on the same device waits for them. Background jobs run in a
    daemon thread that keeps the starting cell as its output parent.

    Args:
        emit: ``emit(type, **fields)`` — the manager's event bus.
    """

    def __init__(self, emit: Callable[..., dict]):
        self._emit = emit
        self._lock = threading.Lock()
        self._slots: dict[str, threading.Lock] = {}
        self.jobs: dict[str, Job] = {}

    def _slot(self, device: str) -> threading.Lock:
        with self._lock:
            return self._slots.setdefault(device, threading.Lock())

    def update(self, job: Job, **fields) -> None:
        """Set progress fields and emit one ``job`` event."""
        for k, v in fields.items():
            setattr(job, k, v)
        self._emit("job", **job.summary())

    def _execute(self, job: Job, fn: Callable[[Job], object]) -> None:
        slot = self._slot(job.device)
        with slot:
            if job.should_stop():
                self.update(job, state="cancelled", finished=time.time())
                job._done.set()
                return
            self.update(job, state="running")
            try:
                job.result = fn(job)
                res = job.result
                status = res.get("status") if isinstance(res, dict) else getattr(res, "status", None)
                state = status if status in ("failed", "cancelled", "interrupted", "diverged") else "done"
                if job.should_stop() and state in ("done", "interrupted"):
                    state = "cancelled"  # the loop reports a requested stop as "interrupted"
                done = state == "done"  # a stopped job has no time left to estimate
                self.update(
                    job,
                    state=state,
                    finished=time.time(),
                    progress=1.0 if done else job.progress,
                    eta_s=job.eta_s if done else None,
                )
            except BaseException as e:  # recorded on the job; the caller decides what to show
                job.error = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.update(
                    job,
                    state="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                    finished=time.time(),
                    eta_s=None,
                )
                if job._raise_in_caller:
                    job._exc = e
            finally:
                job._done.set()

    def _say_waiting(self, job: Job) -> None:
        """When another job holds ``job``'s device, say on stderr (once) that this cell waits for it
        and how to stop it, instead of blocking without a word."""
        if not self._slot(job.device).locked():
            return
        ahead = [j for j in self.jobs.values() if j is not job and j.device == job.device and j.state == "running"]
        if ahead:
            a = ahead[0]
            print(
                f"llmos: note: {a.id} ({a.kind} '{a.target}', {a.progress * 100:.0f}%) holds {job.device}; this cell "
                f"waits for it to end (`%llm job cancel {a.id}` stops it)"
                + (", then trains on its result" if a.target == job.target and a.kind == job.kind else ""),
                file=sys.stderr,
                flush=True,
            )

    def run_here(self, job: Job, fn: Callable[[Job], object]):
        """Run ``fn(job)`` now, in this thread, holding the device slot; re-raise its error."""
        job._raise_in_caller = True
        job._exc = None
        job.foreground = True
        self.jobs[job.id] = job
        self._emit("job", **job.summary())
        self._say_waiting(job)
        self._execute(job, fn)
        if job._exc is not None:
            from ..errors import UsageError

            if isinstance(job._exc, UsageError):  # refused input: it was never a job worth listing
                self.jobs.pop(job.id, None)
                self._emit("job_removed", id=job.id)
            raise job._exc
        return job.result

    def submit(self, job: Job, fn: Callable[[Job], object]) -> Job:
        """Queue ``fn(job)`` to run in a background thread; returns the job at once."""
        job._raise_in_caller = False
        self.jobs[job.id] = job
        self._emit("job", **job.summary())
        worker = threading.Thread(
            target=keep_output_parent(lambda: self._execute(job, fn)), daemon=True, name=f"llmos-{job.id}"
        )
        worker.start()
        return job

    def get(self, job_id: str) -> Job:
        from ..errors import unknown

        job = self.jobs.get(job_id)
        if job is None:
            raise unknown("job", job_id, list(self.jobs), "`%llm jobs` lists them")
        return job
