"""Watching the ranks of a distributed fine-tune from the kernel: the launcher process and its
ranks, rank 0's progress events, the cancel (SIGTERM, then SIGKILL), and what the end means.

:class:`Supervisor` runs a ``torchrun`` / ``accelerate launch`` command (built by
:mod:`.launch`) in a new session and returns an :class:`Outcome`; :func:`run_summary` turns it
into a :class:`DistributedResult` (completed, cancelled, interrupted, failed with
:func:`failure_reason`, or refused). Every process the command started is gone when
:meth:`Supervisor.run` returns, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import LLMOSError
from .rank_main import EVENTS

ENTRY = "llmos_jupyter.training.rank_main"  # the module every rank runs
GRACE_S = 5.0  # cancel: SIGTERM, then SIGKILL to every rank still alive after this many seconds


@dataclass
class Outcome:
    """How a launch ended: the launcher's exit code, the ``end`` event of rank 0 (None when it
    never came), ``error`` events, whether a cancel was sent, the rank pids seen."""

    returncode: int
    end: Optional[dict[str, Any]]
    errors: list[dict[str, Any]]
    cancelled: bool
    pids: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    interrupted: bool = False  # the cancel came from a Ctrl-C / kernel interrupt of the cell
    gone: list[list[int]] = field(default_factory=list)  # rank pids seen to end, poll by poll


class Supervisor:
    """Start a launcher command in its own session and watch it to the end.

    Args:
        cmd: the argv (:func:`~.launch.torchrun_command` / :func:`~.launch.accelerate_command`).
        run_dir: the run folder (``events.jsonl``, ``logs/``).
        env: extra environment variables.
        on_event: called with every event dict rank 0 writes, in order.
        on_ranks: called with (rank pids, how many are alive) when that changes.
        should_stop: polled; True starts the cancel (SIGTERM to the ranks, SIGKILL after ``grace_s``).
        grace_s: seconds between SIGTERM and SIGKILL on a cancel (default 5).
        poll_s: how often the events file and the processes are read (default 0.1 s).
    """

    def __init__(
        self,
        cmd: list[str],
        run_dir: Path,
        *,
        env: Optional[dict[str, str]] = None,
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
        on_ranks: Optional[Callable[[list[int], int], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        grace_s: float = GRACE_S,
        poll_s: float = 0.1,
    ):
        self.cmd, self.run_dir, self.env = cmd, Path(run_dir), dict(env or {})
        self.on_event, self.on_ranks, self.should_stop = on_event, on_ranks, should_stop
        self.grace_s, self.poll_s = grace_s, poll_s
        self.events_path = self.run_dir / EVENTS
        self.log_path = self.run_dir / "logs" / "launcher.log"
        self._offset = 0
        self._pids: dict[int, Any] = {}  # pid -> psutil.Process of every descendant seen
        self._ranks: set[int] = set()  # the pids among them that run a rank
        self._gone: list[list[int]] = []  # rank pids seen to end, poll by poll

    def _read_events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        with open(self.events_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _scan(self, root: Any) -> None:
        import psutil

        try:
            for p in root.children(recursive=True):
                if p.pid not in self._pids:
                    self._pids[p.pid] = p
                if p.pid not in self._ranks and _is_rank(p):
                    self._ranks.add(p.pid)
        except psutil.Error:
            pass

    def _alive(self) -> list[Any]:
        import psutil

        out = []
        for p in self._pids.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def _signal(self, procs: list[Any], sig: int) -> None:
        for p in procs:
            try:
                p.send_signal(sig)
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass

    def run(self) -> Outcome:
        """Run the command to its end (the cancel included) and return the :class:`Outcome`.
        Every process it started is gone when this returns."""
        import subprocess

        import psutil

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **self.env)
        events: list[dict[str, Any]] = []
        cancelled = interrupted = False
        deadline: Optional[float] = None
        last_ranks = None
        killed: list[int] = []
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.run_dir), start_new_session=True
            )
        root = psutil.Process(proc.pid)

        def cancel() -> None:
            nonlocal cancelled, deadline
            cancelled, deadline = True, time.monotonic() + self.grace_s
            # the ranks agree to stop at the next step boundary and rank 0 writes a resumable checkpoint
            self._signal([p for p in self._alive() if p.pid in self._ranks], signal.SIGTERM)

        try:
            while True:
                try:
                    self._scan(root)
                    for ev in self._read_events():
                        events.append(ev)
                        if self.on_event is not None:
                            self.on_event(ev)
                    ranks = [p for p in self._alive() if p.pid in self._ranks]
                    ended = sorted(self._ranks - {q.pid for q in ranks} - {p for batch in self._gone for p in batch})
                    if ended:
                        self._gone.append(ended)
                    state = (tuple(sorted(self._ranks)), len(ranks))
                    if self.on_ranks is not None and state != last_ranks:
                        last_ranks = state
                        self.on_ranks(list(state[0]), state[1])
                    if proc.poll() is not None:
                        break
                    if not cancelled and self.should_stop is not None and self.should_stop():
                        cancel()
                    if deadline is not None and time.monotonic() > deadline:
                        left = self._alive()
                        killed += [p.pid for p in left]
                        self._signal(left + [root], signal.SIGKILL)
                        deadline = None
                    time.sleep(self.poll_s)
                except KeyboardInterrupt:  # Ctrl-C in the cell: stop like a cancel; a second one kills
                    if cancelled:
                        raise
                    interrupted = True
                    cancel()
        finally:
            self._finish(proc, root, killed)
        for ev in self._read_events():
            events.append(ev)
            if self.on_event is not None:
                self.on_event(ev)
        if self.on_ranks is not None:
            self.on_ranks(sorted(self._ranks), 0)
        end = next((e for e in reversed(events) if e.get("event") == "end"), None)
        return Outcome(
            returncode=proc.returncode,
            end=end,
            errors=[e for e in events if e.get("event") == "error"],
            cancelled=cancelled,
            pids=sorted(self._pids),
            killed=killed,
            interrupted=interrupted,
            gone=list(self._gone),
        )

    def _finish(self, proc: Any, root: Any, killed: list[int]) -> None:
        """Leave no process behind: wait briefly for the launcher's children, then SIGKILL them."""
        import psutil

        self._scan(root)
        if proc.poll() is None:  # an exception in the loop above (e.g. a KeyboardInterrupt)
            self._signal(self._alive() + [root], signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace_s)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            proc.kill()
            proc.wait()
        left = self._alive()
        if left:
            _, alive = psutil.wait_procs(left, timeout=1.0)
            killed += [p.pid for p in alive]
            self._signal(alive, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=5.0)


def _is_rank(p: Any) -> bool:
    """A process running :mod:`.rank_main` (a rank, as opposed to the launcher agent)."""
    try:
        return ENTRY in p.cmdline()
    except Exception:  # noqa: BLE001 - gone
        return False


# one failure record of torchrun's ChildFailedError report ("rank : 1 (local_rank: 1)", "exitcode : -9 (pid: 42)")
_RECORD = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank.*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.S)


def last_line(path: Path) -> str:
    """The last non-empty line of a text file ('' when absent)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def failure_reason(run_dir: Path, outcome: Outcome) -> str:
    """One line saying which rank failed first and why, with its ``error`` event or last log line.

    The culprit among torchrun's failure records (launcher log) is the failed rank whose process
    the supervisor saw end first (the peers of a dead rank fail a moment later, in their next
    collective, and the agent stops the rest); among ranks that ended in the same poll, one
    killed by a signal other than the agent's SIGTERM (OOM killer, ``kill -9``). Without that
    observation: a rank killed by such a signal, else torchrun's "root cause". Without records:
    the first ``error`` event, else the launcher's last log line.
    """
    logs = Path(run_dir) / "logs"
    text = (logs / "launcher.log").read_text(errors="replace") if (logs / "launcher.log").exists() else ""
    records = {int(pid): (int(rank), int(code)) for rank, code, pid in _RECORD.findall(text)}
    if records:

        def signalled(p: int) -> bool:
            return records[p][1] < 0 and -records[p][1] != signal.SIGTERM

        first = next(
            ([p for p in batch if p in records] for batch in outcome.gone if any(p in records for p in batch)), []
        )
        root = _RECORD.search(text[text.find("Root Cause") :]) if "Root Cause" in text else None
        fallback = [int(root.group(3)) if root else next(iter(records))]
        pid = sorted(
            first or [p for p in records if signalled(p)] or fallback, key=lambda p: (not signalled(p), records[p][0])
        )[0]
        rank, code = records[pid]
        err = next((e["error"] for e in outcome.errors if e.get("rank") == rank), None) or last_line(
            logs / f"rank{rank}.log"
        )
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        return f"rank {rank} (pid {pid}) {how}" + (f"; its last log line: {err}" if err else "")
    if outcome.errors:
        e = outcome.errors[0]
        return f"rank {e.get('rank')} failed: {e.get('error')}"
    tail = last_line(logs / "launcher.log")
    return f"the launcher exited with status {outcome.returncode}" + (f": {tail}" if tail else "")


# ------------------------------------------------------------------------------ results
@dataclass
class DistributedResult:
    """What a distributed run did, read from rank 0's ``end`` event (the fields
    ``RunHandle.finish_from`` and the progress view read from a ``FinetuneResult``)."""

    status: str
    steps: int = 0
    total_steps: int = 0
    epochs: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_bytes: Optional[int] = None
    peak_device_bytes: Optional[int] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    error: Optional[str] = None
    distributed: dict[str, Any] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    @classmethod
    def from_end(cls, status: str, end: Optional[dict[str, Any]], **kw: Any) -> "DistributedResult":
        r = (end or {}).get("result") or {}
        names = set(cls.__dataclass_fields__)
        return cls(status=status, **{k: v for k, v in r.items() if k in names and k != "status"}, **kw)


def run_summary(outcome: Outcome, run_dir: Path, record: dict[str, Any]) -> DistributedResult:
    """The :class:`DistributedResult` of a finished :class:`Supervisor` run: ``completed``,
    ``cancelled`` (a cancel was sent; the checkpoint is resumable when one was written) or
    ``failed`` (with :func:`failure_reason`), ``interrupted`` (Ctrl-C) or ``refused`` (a rank refused the
    input). ``record``: the launch as the registry keeps it (``LaunchConfig.record``)."""
    rec = record
    end = outcome.end
    status = (end or {}).get("status")
    refused = [e for e in outcome.errors if e.get("refused")]
    if refused:  # a rank refused the input before training (one line, like the kernel's own checks)
        return DistributedResult(status="refused", error=refused[0].get("error"), distributed=rec, pids=outcome.pids)
    if outcome.interrupted and status in (None, "interrupted", "failed") and not outcome.errors:
        res = DistributedResult.from_end("interrupted", end, distributed=rec, pids=outcome.pids)
    elif outcome.cancelled and status in (None, "interrupted", "failed") and not outcome.errors:
        res = DistributedResult.from_end("cancelled", end, distributed=rec, pids=outcome.pids)
    elif status == "completed" and outcome.returncode == 0:
        res = DistributedResult.from_end("completed", end, distributed=rec, pids=outcome.pids)
    elif status == "interrupted" and outcome.returncode == 0 and not outcome.errors:  # stopped by the ranks' own signal
        res = DistributedResult.from_end("interrupted", end, distributed=rec, pids=outcome.pids)
    else:
        res = DistributedResult.from_end(
            "failed", end, distributed=rec, pids=outcome.pids, error=failure_reason(run_dir, outcome)
        )
    ck = Path(run_dir) / "checkpoint"
    if res.checkpoint is None and (ck / "trainer_state.json").exists():  # written before a failure
        state = json.loads((ck / "trainer_state.json").read_text())
        res.checkpoint, res.checkpoint_sha256 = str(ck), state.get("checkpoint_sha256")
        res.steps, res.train_loss = int(state.get("steps") or 0), list(state.get("train_loss") or [])
    return res


def refuse_if_failed(res: DistributedResult) -> None:
    """Raise the one-line :class:`LLMOSError` of a failed run (after it was recorded)."""
    if res.status == "failed":
        raise LLMOSError(f"distributed fine-tune failed: {res.error}")
