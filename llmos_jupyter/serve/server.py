"""The ``%llm serve`` server: uvicorn in a daemon thread of the kernel, its token and counters.

:func:`start` binds a socket (127.0.0.1 and a free port unless told otherwise), makes a fresh
random token, and runs ``uvicorn.Server`` on it in a daemon thread named ``llmos-serve`` (its
own asyncio loop), so cells keep running while it serves and a kernel interrupt — which only
reaches the main thread — leaves it up. :func:`stop` asks uvicorn to exit, cancels what is
decoding, joins the thread and closes the socket, so the port is free again; it runs on
``%llm serve stop``, ``%unload_ext llmos_jupyter`` and at interpreter exit (``atexit``, which
a kernel shutdown runs).

Security (https://www.uvicorn.org/settings/, https://fastapi.tiangolo.com/):

* loopback only unless a host is given explicitly (then a warning line);
* a token of 32 random bytes (``secrets.token_urlsafe``) per start, required on every request
  and compared in constant time (``hmac.compare_digest``);
* bodies over ``max_body_bytes`` → 413, ``max_tokens`` capped by the context window, at most
  ``max_queue`` waiting requests per model (→ 503) and ``limit_concurrency`` connections;
* no CORS, no docs routes, nothing that executes code or reads files.
"""

from __future__ import annotations

import atexit
import collections
import ipaddress
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import UsageError, opt
from .protocol import APIError

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
RATE_WINDOW_S = 60.0  # `tokens/s` in status: completion tokens of the last minute


@dataclass
class ServeSettings:
    """What one server start was asked for.

    Attributes:
        host: address to bind (default ``127.0.0.1``; anything not loopback gets a warning).
        port: TCP port (default 0 = a free one).
        models: aliases served (default ``None`` = every model loaded in the kernel, now or later).
        max_queue: requests that may wait per model before 503 (default 32).
        max_batch: transformers requests decoded together in one ``generate`` (default 8; 1 = off).
        batch_window_s: how long the first request of a batch waits for others (default 0.01 s).
        max_body_bytes: request bodies above this get 413 (default 4 MiB).
        limit_concurrency: open connections uvicorn accepts before answering 503 (default 256).
    """

    host: str = "127.0.0.1"
    port: int = 0
    models: Optional[tuple] = None
    max_queue: int = 32
    max_batch: int = 8
    batch_window_s: float = 0.01
    max_body_bytes: int = 4 * 2**20
    limit_concurrency: int = 256

    def check(self) -> "ServeSettings":
        """Raises UsageError on a value out of range (one line naming the option)."""
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UsageError(f"{opt('port')} must be a whole number 0..65535 (0 = a free port), got {self.port!r}")
        for name, lo in (("max_queue", 1), ("max_batch", 1), ("max_body_bytes", 1024), ("limit_concurrency", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UsageError(f"{name} must be a whole number ≥ {lo}, got {v!r}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise UsageError(f"{opt('host')} must be an address, e.g. {opt('host', '127.0.0.1')}")
        return self


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost`` are loopback; anything else is reachable from outside."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> Optional[str]:
    """The warning line for a host that is not loopback (``None`` for loopback)."""
    if is_loopback(host):
        return None
    return (
        f"llmos: warning: serving on {host}, reachable from other machines on this network; anyone who has "
        f"the token can use the kernel's models (the default, 127.0.0.1, is reachable from this machine only)"
    )


@dataclass
class _Counters:
    served: int = 0
    failed: int = 0
    tokens: int = 0
    batches: int = 0
    batched_rows: int = 0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10000))  # (time, tokens)


class Hub:
    """What the app and the workers share: the manager, settings, token, queues and counters.

    Args:
        manager: the kernel's :class:`~llmos_jupyter.resources.manager.ModelManager`.
        settings: the checked :class:`ServeSettings`.
    """

    def __init__(self, manager, settings: ServeSettings, *, threads: Optional[int] = None):
        self.manager, self.settings = manager, settings
        self.token = "llmos-" + secrets.token_urlsafe(32)
        self.started = time.time()
        self.workers: dict = {}
        self.lock = threading.Lock()
        self.counters = _Counters()
        self.logs: collections.deque = collections.deque(maxlen=200)
        self.threads = threads
        self._last_event = 0.0

    # ------------------------------------------------------------ model lookup
    def served_aliases(self) -> list[str]:
        loaded = [a for a in self.manager.aliases() if not a.endswith(" (loading)")]
        if self.settings.models is None:
            return loaded
        return [a for a in self.settings.models if a in loaded]

    def resolve(self, alias: str):
        """The record of a served, loaded ``alias``.

        Raises:
            APIError: 404 (not served, not loaded — with the `%llm load` hint; never loads it),
                503 (still loading).
        """
        from .. import catalog
        from ..errors import NotFoundError, close_matches

        if not isinstance(alias, str) or not alias:
            raise APIError(400, "model is required: one of GET /v1/models", param="model")
        served = self.served_aliases()
        if self.settings.models is not None and alias not in self.settings.models:
            raise APIError(
                404,
                f"model '{alias}' is not served here{close_matches(alias, served)}; this server serves "
                f"{', '.join(self.settings.models)} (`%llm serve --models A,B` chooses)",
                param="model",
                code="model_not_found",
            )
        try:
            rec = self.manager.get(alias)
        except NotFoundError:
            if alias in catalog.CATALOG:
                hint = (
                    f"model '{alias}' is not loaded in the kernel; this server never loads models: run "
                    f"`%llm load {alias}` in the notebook first"
                )
            else:
                hint = (
                    f"model '{alias}' is not loaded in the kernel{close_matches(alias, served)}; load it there "
                    f"with `%llm load NAME --as {alias}`"
                )
            loaded = f" (served now: {', '.join(served)})" if served else " (no model is loaded)"
            raise APIError(404, hint + loaded, param="model", code="model_not_found") from None
        return rec

    def model_cards(self) -> list:
        from .protocol import ModelCard

        out = []
        for alias in self.served_aliases():
            try:
                rec = self.manager.get(alias)
            except Exception:
                continue
            out.append(
                ModelCard(
                    id=alias, created=int(rec.loaded_at), task=rec.task, engine=rec.engine, context_length=rec.n_ctx
                )
            )
        return out

    # ----------------------------------------------------------------- queues
    def submit(self, ticket) -> None:
        """Queue ``ticket`` on its model's worker (503 when that queue is full)."""
        from .workers import ModelWorker

        with self.lock:
            if self.closed:
                raise APIError(503, "the server is stopping", code="server_stopping")
            w = self.workers.get(ticket.alias)
            if w is None:
                w = self.workers[ticket.alias] = ModelWorker(self, ticket.alias)
        w.submit(ticket)
        self.changed()

    closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            workers = list(self.workers.values())
        for w in workers:
            w.stop()

    def count(self, ticket, *, tokens: int = 0, error: bool = False) -> None:
        with self.lock:
            c = self.counters
            if error:
                c.failed += 1
            else:
                c.served += 1
                c.tokens += tokens
                c.recent.append((time.monotonic(), tokens))

    def batched(self, rows: int) -> None:
        with self.lock:
            self.counters.batches += 1
            self.counters.batched_rows += rows

    # ----------------------------------------------------------------- status
    def summary(self) -> dict:
        """JSON-safe status: url, models, requests served/failed, in flight, queued, tokens/s."""
        per_model, in_flight, queued = {}, 0, 0
        with self.lock:
            workers = dict(self.workers)
            c = self.counters
            now = time.monotonic()
            window = min(RATE_WINDOW_S, max(time.time() - self.started, 1e-9))
            recent = sum(n for t, n in c.recent if now - t <= RATE_WINDOW_S)
            served, failed, tokens, batches, rows = c.served, c.failed, c.tokens, c.batches, c.batched_rows
        for alias, w in workers.items():
            r, q = w.counts()
            per_model[alias] = {"in_flight": r, "queued": q}
            in_flight, queued = in_flight + r, queued + q
        return {
            "url": self.url,
            "base_url": self.url + "/v1",
            "host": self.settings.host,
            "port": self.port,
            "models": self.served_aliases(),
            "only": list(self.settings.models) if self.settings.models else None,
            "requests": served,
            "failed": failed,
            "in_flight": in_flight,
            "queued": queued,
            "completion_tokens": tokens,
            "tokens_per_s": recent / window,
            "batches": batches,
            "mean_batch": rows / batches if batches else None,
            "per_model": per_model,
            "started": self.started,
            "max_queue": self.settings.max_queue,
            "max_batch": self.settings.max_batch,
        }

    url = ""
    port = 0

    # ------------------------------------------------------------- plumbing
    def log(self, line: str) -> None:
        """Keep a line for `serve status` (workers never print into whatever cell is running)."""
        self.logs.append(f"{time.strftime('%H:%M:%S')} {line}")

    def changed(self) -> None:
        """Tell the side panel (throttled: ≤ 2 events/s; the comm throttles its pushes too)."""
        now = time.monotonic()
        if now - self._last_event >= 0.5:
            self._last_event = now
            self.manager.events.emit("serve", **{k: v for k, v in self.summary().items() if k != "per_model"})

    @staticmethod
    def detach_output() -> None:
        """Nothing a serving thread prints lands in whichever cell is running."""
        from ..resources.jobs import detach_output

        detach_output()

    def set_threads(self) -> None:
        """Use the kernel's torch thread count in this thread (OpenMP's setting is per thread)."""
        torch = sys.modules.get("torch")
        if torch is not None and self.threads:
            torch.set_num_threads(self.threads)


class Server:
    """One running server: its socket, its uvicorn instance and its thread."""

    def __init__(self, hub: Hub, sock: socket.socket):
        import uvicorn

        from .app import create_app

        self.hub, self.sock = hub, sock
        s = hub.settings
        config = uvicorn.Config(
            create_app(hub),
            log_level="warning",
            access_log=False,
            lifespan="off",
            limit_concurrency=s.limit_concurrency,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
        )
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name="llmos-serve")
        self.error: Optional[BaseException] = None

    def _run(self) -> None:
        self.hub.detach_output()
        try:
            self.uvicorn.run(sockets=[self.sock])
        except BaseException as e:  # reported by start() or status
            self.error = e

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.uvicorn.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.uvicorn.started:
            self.stop()
            why = f": {type(self.error).__name__}: {self.error}" if self.error else ""
            raise UsageError(f"the server did not start{why}; check `%llm serve status`, or pick another {opt('port')}")

    def stop(self) -> None:
        self.hub.close()  # waiting requests get 503, decoding ones are cancelled at their next token
        self.uvicorn.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        if self.thread.is_alive():
            self.uvicorn.force_exit = True
            self.thread.join(STOP_TIMEOUT_S)
        try:
            self.sock.close()
        except OSError:
            pass


_lock = threading.Lock()
_current: Optional[Server] = None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        UsageError: the port is taken or the host cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # as uvicorn does: a restart may reuse the port while closed connections sit in TIME_WAIT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if port and e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UsageError(
                f"port {port} is in use; pick another {opt('port')} or leave it out for a free one"
            ) from None
        raise UsageError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); use {opt('host', '127.0.0.1')}"
        ) from None
    sock.set_inheritable(False)
    return sock


def start(manager, settings: ServeSettings, *, threads: Optional[int] = None, notify=None) -> Hub:
    """Start the server of this process (one at a time).

    Returns:
        Its :class:`Hub` (``hub.url``, ``hub.token``, ``hub.summary()``).

    Raises:
        UsageError: one is already running; bad settings; the port is taken; an alias of
            ``settings.models`` is not loaded.
    """
    global _current
    settings.check()
    with _lock:
        if _current is not None and _current.thread.is_alive():
            raise UsageError(
                f"a server is already running at {_current.hub.url}; `%llm serve stop` first (or `%llm serve status`)"
            )
        if settings.models is not None:
            from ..errors import unknown

            for alias in settings.models:
                if alias not in manager.aliases():
                    raise unknown(
                        "model",
                        alias,
                        manager.aliases(),
                        f"load it before serving it (`%llm load NAME --as {alias}`), or drop it from {opt('models')}",
                    )
        sock = bind(settings.host, settings.port)  # a host that cannot be bound fails before any warning
        warning = host_warning(settings.host)
        if warning and notify is not None:
            notify(warning)
        hub = Hub(manager, settings, threads=threads)
        hub.port = sock.getsockname()[1]
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        hub.url = f"http://{shown}:{hub.port}"
        server = Server(hub, sock)
        server.start()
        _current = server
    manager.events.emit("serve", **{k: v for k, v in hub.summary().items() if k != "per_model"}, state="started")
    return hub


def stop() -> Optional[dict]:
    """Stop the running server (no-op when none); returns its last status, or ``None``."""
    global _current
    with _lock:
        server, _current = _current, None
    if server is None:
        return None
    summary = server.hub.summary()
    server.stop()
    server.hub.manager.events.emit("serve", state="stopped", url=summary["url"])
    return summary


def current() -> Optional[Hub]:
    """The running server's hub, or ``None``."""
    with _lock:
        s = _current
    return s.hub if s is not None and s.thread.is_alive() else None


atexit.register(stop)  # a kernel shutdown ends the interpreter: close the socket first
