"""The run registry: one SQLite row per fine-tune / evaluation run, plus a JSON manifest next to
the run's checkpoint.

``LLMOS_HOME/runs.sqlite`` holds table ``runs`` (schema below). Every write is one transaction:
a run is inserted as "running" by :meth:`RunRegistry.start` and updated in a single statement by
:meth:`RunRegistry.finish`, so a reader sees either the running row or the finished one, never
half of it. A run whose process died while "running" is marked "failed" the next time the
registry is opened on the same host. :meth:`RunRegistry.track` wraps a run so an exception
records it as failed (KeyboardInterrupt as interrupted) before propagating.

>>> reg = RunRegistry()                                                      # doctest: +SKIP
>>> with reg.track("finetune", model="all-minilm-l6-v2", dataset="rt", config=cfg.to_dict(),
...                seed=cfg.seed, data_fingerprint=ds._fingerprint) as run:  # doctest: +SKIP
...     res = finetune(..., run_dir=reg.run_dir(run.id), run_id=run.id)
...     run.finish_from(res)
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import platform
import secrets
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

from ..display import Rendered, fmt_value, kv_html
from ..errors import UsageError, unknown

RUN_STATUSES = ("running", "completed", "failed", "interrupted", "cancelled", "diverged")
FINAL_STATUSES = RUN_STATUSES[1:]
MANIFEST = "manifest.json"
PACKAGES = (
    "llmos-jupyter",
    "torch",
    "transformers",
    "datasets",
    "peft",
    "accelerate",
    "safetensors",
    "tokenizers",
    "numpy",
)
_PREFIX = {"finetune": "ft", "evaluate": "ev", "export": "ex"}
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: ids are read aloud and typed

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    model            TEXT,
    dataset          TEXT,
    config           TEXT NOT NULL,      -- JSON
    seed             INTEGER,
    data_fingerprint TEXT,
    status           TEXT NOT NULL
                     CHECK (status IN ('running','completed','failed','interrupted','cancelled','diverged')),
    created_at       TEXT NOT NULL,      -- ISO 8601, UTC
    finished_at      TEXT,
    wall_s           REAL,
    metrics          TEXT,               -- JSON
    checkpoint       TEXT,
    checkpoint_sha256 TEXT,
    error            TEXT,
    packages         TEXT NOT NULL,      -- JSON {name: version}
    hardware         TEXT NOT NULL,      -- JSON
    host             TEXT NOT NULL,
    pid              INTEGER NOT NULL,
    -- distributed: JSON {world_size, nproc_per_node, nnodes, backend, launcher, fsdp}, NULL for one process
    distributed      TEXT,
    resumed_by       TEXT                -- id of the run that resumed this one (at most one)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
"""
_COLUMNS = (
    "id",
    "kind",
    "model",
    "dataset",
    "config",
    "seed",
    "data_fingerprint",
    "status",
    "created_at",
    "finished_at",
    "wall_s",
    "metrics",
    "checkpoint",
    "checkpoint_sha256",
    "error",
    "packages",
    "hardware",
    "host",
    "pid",
    "distributed",
    "resumed_by",
)
_JSON = ("config", "metrics", "packages", "hardware", "distributed")


def package_versions() -> dict[str, Optional[str]]:
    """Installed versions of the packages a result depends on (None when absent), plus Python."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("llmos-jupyter") is None:  # running from a source checkout
        from .._version import __version__

        out["llmos-jupyter"] = __version__
    return out


def hardware_summary() -> dict[str, Any]:
    """OS, CPU, cores, RAM (bytes) and, when torch is already imported and sees CUDA, the GPUs."""
    import psutil

    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_logical": psutil.cpu_count(logical=True),
        "cpu_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "gpus": [],
    }
    torch = sys.modules.get("torch")  # never import torch just to describe the machine
    if torch is not None:
        hw["torch_threads"] = torch.get_num_threads()
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    p = torch.cuda.get_device_properties(i)
                    hw["gpus"].append({"name": p.name, "memory_bytes": int(p.total_memory)})
    return hw


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def already_resumed(prev_id: str, by: Optional[str]) -> str:
    """The one line refusing a second resume of run ``prev_id``."""
    return (
        f"run {prev_id} was already resumed by run {by}; a run is resumed once — resume {by} instead if it "
        f"was stopped too (`%llm runs show {by}`), or start a new run"
    )


def _json_safe(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a registry written by an older version to :data:`SCHEMA`: the ``resumed_by`` column
    and the ``diverged`` status (SQLite cannot change a CHECK, so the table is rebuilt and every
    row copied, in one transaction); the ``distributed`` column (added in place)."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()[0]
    if "'diverged'" in sql:
        if "distributed" not in {r[1] for r in db.execute("PRAGMA table_info(runs)")}:
            db.execute("ALTER TABLE runs ADD COLUMN distributed TEXT")
            db.commit()
        return
    old = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    keep = ", ".join(c for c in _COLUMNS if c in old)
    new_table = SCHEMA.split(";")[0].replace("IF NOT EXISTS runs", "runs_new")
    db.executescript(
        f"BEGIN IMMEDIATE; {new_table}; INSERT INTO runs_new ({keep}) SELECT {keep} FROM runs; "
        f"DROP TABLE runs; ALTER TABLE runs_new RENAME TO runs; "
        f"CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at); COMMIT;"
    )


@dataclass
class Run(Rendered):
    """One row of the registry. ``config``, ``metrics``, ``packages``, ``hardware`` are dicts;
    ``distributed`` too: ``{world_size, nproc_per_node, nnodes, backend, launcher, fsdp}`` for a
    run whose ranks ran in subprocesses (``training/launch.py``), ``{}`` for one process."""

    id: str
    kind: str
    model: Optional[str]
    dataset: Optional[str]
    config: dict[str, Any]
    seed: Optional[int]
    data_fingerprint: Optional[str]
    status: str
    created_at: str
    finished_at: Optional[str]
    wall_s: Optional[float]
    metrics: dict[str, Any]
    checkpoint: Optional[str]
    checkpoint_sha256: Optional[str]
    error: Optional[str]
    packages: dict[str, Any] = field(repr=False)
    hardware: dict[str, Any] = field(repr=False)
    host: str = field(repr=False, default="")
    pid: int = field(repr=False, default=0)
    distributed: dict[str, Any] = field(repr=False, default_factory=dict)
    resumed_by: Optional[str] = None  # the run that continued this one (``--resume``), if any

    def manifest(self) -> dict[str, Any]:
        """The provenance record written as ``manifest.json`` next to the checkpoint."""
        return {
            "run_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "dataset": self.dataset,
            "config": self.config,
            "seed": self.seed,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "wall_s": self.wall_s,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "error": self.error,
            "packages": self.packages,
            "hardware": self.hardware,
            "distributed": self.distributed or None,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "resumed_from": self.config.get("resumed_from"),
            "resumed_by": self.resumed_by,
        }

    def __str__(self) -> str:
        m = ", ".join(f"{k} {fmt_value(v)}" for k, v in self.metrics.items())
        link = f" (resumed by {self.resumed_by})" if self.resumed_by else ""
        return (
            f"{self.id} {self.kind} {self.status}{link} model={self.model} dataset={self.dataset} seed={self.seed} {m}"
        ).strip()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython text consoles: the table, not the repr
        p.text(str(self))

    def _repr_html_(self) -> str:
        rows = [(k, v) for k, v in self.manifest().items() if k not in ("packages", "hardware")]
        return kv_html(rows, "llmos-run")


class RunList(list, Rendered):
    """A list of :class:`Run` that renders as a table (newest first)."""

    _cols = (
        "id",
        "kind",
        "status",
        "model",
        "dataset",
        "seed",
        "ranks",
        "accuracy",
        "macro_f1",
        "wall_s",
        "created_at",
    )

    def _cells(self, r: Run) -> list[str]:
        def fixed(v: Any, digits: int) -> str:  # one column, one format: 1.0000 / 0.8500, not 1 / 0.85
            return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else fmt_value(v)

        vals = {
            "accuracy": fixed(r.metrics.get("accuracy"), 4),
            "macro_f1": fixed(r.metrics.get("macro_f1"), 4),
            "wall_s": fixed(r.wall_s, 1),
            "ranks": (r.distributed or {}).get("world_size", 1),
            "status": r.status + (f" → {r.resumed_by}" if r.resumed_by else ""),
        }
        return [fmt_value(vals[c] if c in vals else getattr(r, c)) for c in self._cols]

    def __str__(self) -> str:
        if not self:
            return "no runs yet; start one with %llm finetune"
        table = [list(self._cols)] + [self._cells(r) for r in self]
        w = [max(len(row[i]) for row in table) for i in range(len(self._cols))]
        return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in table)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython text consoles: the table, not the repr
        p.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self._cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in self._cells(r)) + "</tr>" for r in self)
        return f"<table class='llmos-runs'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class RunComparison(Rendered):
    """Field-by-field comparison of two runs: ``rows`` = (field, a, b, delta or None, differs)."""

    a: Run
    b: Run
    rows: list[tuple[str, Any, Any, Optional[float], bool]]

    def differences(self) -> list[str]:
        """Names of the fields whose values differ."""
        return [r[0] for r in self.rows if r[4]]

    def __str__(self) -> str:
        table = [["field", self.a.id, self.b.id, "delta"]] + [
            [f, fmt_value(x), fmt_value(y), "" if d is None else f"{d:+.4g}"] for f, x, y, d, _ in self.rows
        ]
        w = [max(len(row[i]) for row in table) for i in range(4)]
        mark = [" "] + ["*" if r[4] else " " for r in self.rows]
        return "\n".join(
            m + " " + "  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for m, row in zip(mark, table)
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython text consoles: the table, not the repr
        p.text(str(self))

    def _repr_html_(self) -> str:
        e = html.escape
        bold = ' style="font-weight:bold"'
        body = "".join(
            f"<tr{bold if d_ else ''}><th "
            f"style='text-align:left'>{e(f)}</th><td>{e(fmt_value(x))}</td><td>{e(fmt_value(y))}</td>"
            f"<td>{'' if d is None else f'{d:+.4g}'}</td></tr>"
            for f, x, y, d, d_ in self.rows
        )
        head = f"<tr><th>field</th><th>{e(self.a.id)}</th><th>{e(self.b.id)}</th><th>delta (b - a)</th></tr>"
        return f"<table class='llmos-compare'><thead>{head}</thead><tbody>{body}</tbody></table>"


class RunHandle:
    """What :meth:`RunRegistry.track` yields: the run id and a way to finish it."""

    def __init__(self, registry: "RunRegistry", run_id: str):
        self.registry, self.id, self.finished = registry, run_id, False

    def finish(self, status: str, **kw: Any) -> Run:
        """:meth:`RunRegistry.finish` for this run."""
        run = self.registry.finish(self.id, status, **kw)
        self.finished = True
        return run

    def finish_from(self, result: Any) -> Run:
        """Finish from a ``FinetuneResult`` (status, metrics, wall_s, checkpoint, sha256)."""
        return self.finish(
            result.status,
            metrics=result.metrics,
            wall_s=result.wall_s,
            checkpoint=str(result.checkpoint) if result.checkpoint else None,
            checkpoint_sha256=result.checkpoint_sha256,
        )


class RunRegistry:
    """Runs recorded in SQLite (default ``LLMOS_HOME/runs.sqlite``).

    Safe to use from several threads and processes: each call opens its own connection
    (30 s busy timeout) and writes inside one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, path: Optional[os.PathLike | str] = None):
        if path is None:
            from ..paths import home

            path = home() / "runs.sqlite"
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")  # idempotent
            _migrate(db)
        finally:
            db.close()
        self._reap()

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[Run]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs {sql}", args).fetchall()
        finally:
            db.close()
        out = []
        for row in rows:
            d = dict(zip(_COLUMNS, row))
            for k in _JSON:
                d[k] = json.loads(d[k]) if d[k] else {}
            out.append(Run(**d))
        return out

    def _reap(self) -> None:
        """Mark this host's "running" rows whose process is gone as failed."""
        host = socket.gethostname()
        stale = [
            r
            for r in self._rows("WHERE status = 'running' AND host = ?", (host,))
            if r.pid != os.getpid() and not _pid_alive(r.pid)
        ]
        for r in stale:
            with self._tx() as db:
                db.execute(
                    "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                    (_now(), f"the process (pid {r.pid}) ended before the run finished", r.id),
                )

    def _discard(self, run_id: str) -> bool:
        """Delete the row of a run that never wrote a checkpoint (its folder, if empty, too);
        False (nothing deleted) when it has one."""
        import shutil

        d = self.run_dir(run_id)
        if d.is_dir() and any(d.rglob("*.safetensors")):
            return False
        with self._tx() as db:
            db.execute("DELETE FROM runs WHERE id = ? AND status = 'running'", (run_id,))
            db.execute("UPDATE runs SET resumed_by = NULL WHERE resumed_by = ?", (run_id,))  # a refused resume
        shutil.rmtree(d, ignore_errors=True)
        return True

    def run_dir(self, run_id: str) -> Path:
        """Where run ``run_id`` keeps its checkpoint and manifest: ``LLMOS_HOME/checkpoints/<id>``
        (``<registry folder>/checkpoints/<id>`` for a registry outside LLMOS_HOME)."""
        return self.path.parent / "checkpoints" / run_id

    # ------------------------------------------------------------------ API
    def start(
        self,
        kind: str,
        model: Optional[str],
        dataset: Optional[str],
        config: dict[str, Any],
        seed: Optional[int],
        data_fingerprint: Optional[str],
        *,
        run_id: Optional[str] = None,
        distributed: Optional[dict[str, Any]] = None,
    ) -> str:
        """Record a new run as "running" and return its id, e.g. ``ft-251129-k3xp``
        (kind prefix, UTC date, 4 random letters; drawn from ``secrets``, so seeding Python's
        ``random`` never makes two runs collide).

        ``distributed``: the launch of a run whose ranks run in subprocesses (world_size,
        nproc_per_node, nnodes, backend, launcher, fsdp); None for one process.

        Raises:
            UsageError: on an empty kind or an id already taken.
        """
        if not kind or not isinstance(kind, str):
            raise UsageError("a run needs a kind, e.g. 'finetune' or 'evaluate'")
        cfg = _json_safe(dict(config or {}))
        packages, hardware = package_versions(), hardware_summary()
        for attempt in range(20):
            rid = (
                run_id
                or f"{_PREFIX.get(kind, kind[:2])}-{datetime.now(timezone.utc):%y%m%d}-"
                f"{''.join(secrets.choice(_ALPHABET) for _ in range(4 + attempt // 5))}"
            )
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO runs (id, kind, model, dataset, config, seed, data_fingerprint, status,"
                        " created_at, packages, hardware, host, pid, distributed)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                        (
                            rid,
                            kind,
                            model,
                            dataset,
                            json.dumps(cfg),
                            seed,
                            data_fingerprint,
                            _now(),
                            json.dumps(packages),
                            json.dumps(hardware),
                            socket.gethostname(),
                            os.getpid(),
                            json.dumps(_json_safe(distributed)) if distributed else None,
                        ),
                    )
                return rid
            except sqlite3.IntegrityError:
                if run_id is not None:
                    raise UsageError(
                        f"run id {run_id!r} is already taken; pick another or leave run_id unset"
                    ) from None
        raise RuntimeError("could not draw a free run id")  # pragma: no cover - 31**4 ids a day

    def finish(
        self,
        run_id: str,
        status: str,
        metrics: Optional[dict[str, Any]] = None,
        wall_s: Optional[float] = None,
        checkpoint: Optional[os.PathLike | str] = None,
        checkpoint_sha256: Optional[str] = None,
        *,
        error: Optional[str] = None,
    ) -> Run:
        """Record the end of a run, in one transaction, and write its manifest.

        The manifest (config, seed, data fingerprint, package versions, hardware, metrics, wall
        time, checkpoint sha256) goes to ``manifest.json`` next to the checkpoint (in the
        checkpoint's parent directory). It is written to a temporary file inside the transaction
        (a failure rolls the row back) and renamed into place after the commit.

        Args:
            status: one of "completed", "failed", "interrupted", "cancelled", "diverged".
            metrics: JSON-serialisable numbers (e.g. ``EvalResult.to_metrics()``).
            wall_s: seconds the run took.
            checkpoint: checkpoint directory or file, or None.
            checkpoint_sha256: hex sha256 of the checkpoint's weights.
            error: one line for failed runs.

        Raises:
            UsageError: unknown status. NotFoundError: unknown run id. UsageError: the run has
            already finished.
        """
        if status not in FINAL_STATUSES:
            raise UsageError(f"status {status!r} is not a final run status; use one of: {', '.join(FINAL_STATUSES)}")
        run = self.get(run_id)
        if run.status != "running":
            raise UsageError(f"run {run_id} already finished ({run.status}); start a new run to record another result")
        ck = str(Path(checkpoint).resolve()) if checkpoint is not None else None
        run.status, run.finished_at, run.wall_s = status, _now(), (float(wall_s) if wall_s is not None else None)
        run.metrics, run.checkpoint, run.checkpoint_sha256 = _json_safe(dict(metrics or {})), ck, checkpoint_sha256
        run.error = " ".join(str(error).split()) if error else None
        manifest_path = Path(ck).parent / MANIFEST if ck else None
        tmp = manifest_path.with_name(f".{MANIFEST}.{os.getpid()}.{run.id}.tmp") if manifest_path else None
        try:
            with self._tx() as db:
                cur = db.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, wall_s = ?, metrics = ?, checkpoint = ?, "
                    "checkpoint_sha256 = ?, error = ?"
                    " WHERE id = ? AND status = 'running'",
                    (
                        run.status,
                        run.finished_at,
                        run.wall_s,
                        json.dumps(run.metrics),
                        ck,
                        checkpoint_sha256,
                        run.error,
                        run.id,
                    ),
                )
                if cur.rowcount != 1:
                    raise UsageError(f"run {run_id} already finished; start a new run to record another result")
                if status == "failed":  # a resume that failed frees the run it resumed for another try
                    db.execute("UPDATE runs SET resumed_by = NULL WHERE resumed_by = ?", (run.id,))
                if tmp is not None:  # written before COMMIT: a failure here rolls the row back
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_text(json.dumps(run.manifest(), indent=2, default=str))
            if tmp is not None:
                os.replace(tmp, manifest_path)  # after COMMIT: an atomic rename
        finally:
            if tmp is not None and tmp.exists():
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return run

    def link_resume(self, prev_id: str, run_id: str) -> None:
        """Record that run ``run_id`` resumes run ``prev_id`` (``prev.resumed_by``; the new run's
        config carries ``resumed_from``). A run is resumed at most once: the link is set in one
        statement only where none exists, so two resumes of the same run cannot both start.

        Raises:
            UsageError: ``prev_id`` was already resumed (names the run that did).
        """
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET resumed_by = ? WHERE id = ? AND resumed_by IS NULL", (run_id, prev_id))
            if cur.rowcount != 1:
                row = db.execute("SELECT resumed_by FROM runs WHERE id = ?", (prev_id,)).fetchone()
                raise UsageError(already_resumed(prev_id, row[0] if row else None))

    def get(self, run_id: str) -> Run:
        """The run with this id (or the only one starting with it).

        Raises:
            NotFoundError: no such run (with the closest ids).
        """
        rows = self._rows("WHERE id = ?", (run_id,))
        if not rows:
            rows = self._rows("WHERE id LIKE ? ORDER BY created_at DESC", (str(run_id).replace("%", "") + "%",))
            if len(rows) != 1:
                ids = [r.id for r in self._rows("ORDER BY created_at DESC LIMIT 200")]
                raise unknown("run", run_id, ids, "see %llm runs for the ids")
        return rows[0]

    def list(self, limit: int = 20, *, kind: Optional[str] = None, status: Optional[str] = None) -> RunList:
        """The newest ``limit`` runs (optionally of one kind / status), newest first."""
        where, args = [], []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if status:
            where.append("status = ?")
            args.append(status)
        sql = (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return RunList(self._rows(sql, (*args, int(limit))))

    def compare(self, a: str, b: str) -> RunComparison:
        """Compare two runs field by field: model, dataset, seed, data fingerprint, every config
        key, every metric (numeric delta = b - a), wall time, checkpoint sha256."""
        ra, rb = self.get(a), self.get(b)
        rows: list[tuple[str, Any, Any, Optional[float], bool]] = []

        def add(name: str, x: Any, y: Any) -> None:
            num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
            rows.append((name, x, y, (y - x) if num else None, x != y))

        for f in ("kind", "status", "model", "dataset", "seed", "data_fingerprint"):
            add(f, getattr(ra, f), getattr(rb, f))
        for k in sorted(set(ra.config) | set(rb.config)):
            add(f"config.{k}", ra.config.get(k), rb.config.get(k))
        for k in sorted(set(ra.metrics) | set(rb.metrics)):
            add(f"metrics.{k}", ra.metrics.get(k), rb.metrics.get(k))
        for k in sorted(set(ra.distributed) | set(rb.distributed)):
            add(f"distributed.{k}", ra.distributed.get(k), rb.distributed.get(k))
        add("wall_s", ra.wall_s, rb.wall_s)
        add("checkpoint_sha256", ra.checkpoint_sha256, rb.checkpoint_sha256)
        for k in sorted(set(ra.packages) | set(rb.packages)):
            if ra.packages.get(k) != rb.packages.get(k):
                add(f"packages.{k}", ra.packages.get(k), rb.packages.get(k))
        return RunComparison(ra, rb, rows)

    @contextlib.contextmanager
    def track(
        self,
        kind: str,
        model: Optional[str],
        dataset: Optional[str],
        config: dict[str, Any],
        seed: Optional[int],
        data_fingerprint: Optional[str],
        *,
        distributed: Optional[dict[str, Any]] = None,
    ) -> Iterator[RunHandle]:
        """``start`` a run; yield a :class:`RunHandle`; if the block raises before the run is
        finished, record it as "failed" (KeyboardInterrupt: "interrupted") with the error's first
        line, then re-raise. A block that ends without finishing records "completed"."""
        t0 = time.perf_counter()
        h = RunHandle(self, self.start(kind, model, dataset, config, seed, data_fingerprint, distributed=distributed))
        try:
            yield h
        except BaseException as e:
            from ..errors import UsageError

            if not h.finished and isinstance(e, UsageError) and self._discard(h.id):
                raise  # a user error before any checkpoint: no run happened, nothing is kept
            if not h.finished:
                st = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
                with contextlib.suppress(Exception):
                    h.finish(st, wall_s=time.perf_counter() - t0, error=msg)
            raise
        if not h.finished:
            h.finish("completed", wall_s=time.perf_counter() - t0)
