"""The resource manager: the one owner of loaded models in this kernel.

Policy (DESIGN.md, "Resource manager policy"):

* **Estimate before load** (:func:`llmos_jupyter.models.loading.estimate`), then **admit** when
  the estimate fits the device budget (default 90% of the device's memory) *and* is ≤ 80% of
  the memory free right now (Ollama's scheduler rule).
* Otherwise **evict** idle models — never pinned, never in use — choosing the smallest set that
  frees enough, least recently used first. Each eviction is reported in one line.
* **Unload really frees** (C06): the manager's references, IPython's output history (``Out``,
  ``_``, ``__``, ``___``, ``_N``), ``sys.last_traceback``, and the tensors' storage itself (so
  autograd graphs that still point at the weights do not keep them); then ``gc`` and the
  allocator caches. The memory that came back is measured and reported.
* A failed load (bad file, OOM) leaves no record behind and gives its memory back.
* Every state change emits one event on :attr:`ModelManager.events`.
"""
from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import LLMOSError, ResourceError, UsageError, unknown
from .events import EventBus
from .memory import format_size, parse_size, process_rss


@dataclass
class ModelRecord:
    """What the manager knows about one model (see DESIGN.md for the fields)."""

    alias: str
    source: str
    task: str
    state: str = "loading"  # loading | ready | offloaded | error
    dtype: str | None = None
    device: str | None = None
    params: int | None = None
    estimated_bytes: int | None = None
    bytes: dict = field(default_factory=dict)
    load_s: float | None = None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    use_count: int = 0
    users: int = 0
    pinned: bool = False
    keep_alive: float | None = None  # seconds; None = forever
    labels: list | None = None
    quantization: str | None = None
    model: object = None
    tokenizer: object = None
    chat_history: list = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-safe view for ``%llm ps``, widgets and the side panel."""
        return {
            "alias": self.alias, "task": self.task, "source": self.source, "state": self.state,
            "dtype": self.dtype, "device": self.device, "params": self.params,
            "estimated_bytes": self.estimated_bytes, "bytes": dict(self.bytes),
            "pinned": self.pinned, "users": self.users, "use_count": self.use_count,
            "keep_alive": self.keep_alive, "last_used": self.last_used, "load_s": self.load_s,
            "labels": self.labels, "quantization": self.quantization,
        }


def _device_capacity(device: str) -> tuple[int, int]:
    """``(total, free)`` bytes of ``device`` now (psutil for CPU, CUDA's mem_get_info for GPUs)."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total), int(free)
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def _malloc_trim() -> None:
    """Ask glibc to hand freed heap pages back to the OS (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _refers_to(obj, targets: set[int], depth: int = 2) -> bool:
    if id(obj) in targets:
        return True
    if depth <= 0:
        return False
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_refers_to(o, targets, depth - 1) for o in list(obj)[:1000])
    if isinstance(obj, dict):
        return any(_refers_to(o, targets, depth - 1) for o in list(obj.values())[:1000])
    inner = getattr(obj, "__dict__", None)
    if isinstance(inner, dict) and not isinstance(obj, type):
        return any(id(v) in targets for v in inner.values())
    return False


def _forget_in_ipython(targets: set[int]) -> int:
    """Drop IPython output-history entries that hold one of ``targets``; returns how many."""
    try:
        from IPython import get_ipython
    except ImportError:
        return 0
    ip = get_ipython()
    if ip is None:
        return 0
    dropped = 0
    ns = ip.user_ns
    out = ns.get("_oh") or ns.get("Out") or {}
    hidden = getattr(ip, "user_ns_hidden", {})  # IPython's push() keeps a second reference here
    for k in [k for k, v in list(out.items()) if _refers_to(v, targets)]:
        out.pop(k, None)
        ns.pop(f"_{k}", None)
        hidden.pop(f"_{k}", None)
        dropped += 1
    for name in [n for n, v in list(hidden.items()) if _refers_to(v, targets)]:
        hidden[name] = ""
    dh = getattr(ip, "displayhook", None)
    for name in ("_", "__", "___"):
        if _refers_to(ns.get(name), targets):
            ns[name] = ""
            dropped += 1
        if dh is not None and _refers_to(getattr(dh, name, None), targets):
            setattr(dh, name, "")
    return dropped


def _forget_last_error() -> None:
    """Clear the locals of the frames of the last error (``sys.last_*`` and IPython's last
    execution result): a traceback keeps every argument of every frame alive."""
    import traceback

    excs = [getattr(sys, "last_value", None), getattr(sys, "last_exc", None)]
    try:
        from IPython import get_ipython

        ip = get_ipython()
        res = getattr(ip, "last_execution_result", None)
        if res is not None:
            excs += [res.error_in_exec, res.error_before_exec]
        itb = getattr(ip, "InteractiveTB", None)  # ultratb keeps the last traceback in .tb
        if getattr(itb, "tb", None) is not None:
            traceback.clear_frames(itb.tb)
            itb.tb = None
    except ImportError:
        pass
    for exc in excs:
        tb = getattr(exc, "__traceback__", None)
        if tb is not None:
            traceback.clear_frames(tb)
    tb = getattr(sys, "last_traceback", None)
    if tb is not None:
        traceback.clear_frames(tb)
    for name in ("last_traceback", "last_value", "last_type", "last_exc"):
        if getattr(sys, name, None) is not None:
            try:
                setattr(sys, name, None)
            except AttributeError:
                pass


def _release_tensors(module) -> None:
    """Free the storage of every parameter and buffer, even where an autograd graph or a view
    still references it (``untyped_storage().resize_(0)``; ``.data`` swap for storages that
    cannot be resized, e.g. memory-mapped files)."""
    import torch

    for t in list(module.parameters()) + list(module.buffers()):
        try:
            t.untyped_storage().resize_(0)
        except RuntimeError:
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)


class ModelManager:
    """Owns the models of this kernel; thread-safe.

    Args:
        events: the bus to emit on (a new one by default).

    Attributes:
        budgets: bytes allowed per device (``{"cpu": n, "cuda:0": m}``); unset devices default to
            90% of their total memory.
    """

    BUDGET_FRACTION = 0.90  # default budget: 90% of the device's memory (DESIGN.md)
    FREE_FRACTION = 0.80    # admit only when the estimate is ≤ 80% of free memory (Ollama)

    def __init__(self, events: EventBus | None = None):
        self.events = events or EventBus()
        self._lock = threading.RLock()
        self._models: dict[str, ModelRecord] = {}
        self.budgets: dict[str, int] = {}

    # ----------------------------------------------------------------- queries
    def aliases(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, alias: str) -> ModelRecord:
        """The record of ``alias`` (ready or offloaded).

        Raises:
            NotFoundError: no model has that alias.
        """
        with self._lock:
            rec = self._models.get(alias)
        if rec is None or rec.state in ("loading", "error"):
            raise unknown("model", alias, self.aliases(),
                          f"load it with `%llm load NAME --as {alias}`; `%llm ps` lists what is loaded")
        return rec

    def ps(self) -> list[dict]:
        """Summaries of every model, most recently used first."""
        with self._lock:
            recs = sorted(self._models.values(), key=lambda r: -r.last_used)
            return [r.summary() for r in recs]

    def budget(self, device: str) -> int:
        """The byte budget of ``device`` (explicit, or 90% of its total memory)."""
        if device in self.budgets:
            return self.budgets[device]
        total, _ = _device_capacity(device)
        return int(total * self.BUDGET_FRACTION)

    def set_budget(self, device: str, size) -> int:
        """Set the budget of ``device`` (``"cpu"``, ``"cuda:0"``) from a size such as ``"8GiB"``."""
        n = parse_size(size)
        with self._lock:
            self.budgets[device] = n
        self.events.emit("budget", device=device, bytes=n)
        return n

    def used(self, device: str, exclude: str | None = None) -> int:
        """Bytes the manager's models hold on ``device`` (measured, or estimated while loading)."""
        with self._lock:
            total = 0
            for r in self._models.values():
                if r.alias == exclude:
                    continue
                if r.bytes:
                    total += r.bytes.get(device, 0)
                elif r.device == device and r.estimated_bytes:
                    total += r.estimated_bytes
            return total

    # ---------------------------------------------------------------- admission
    def _evictable(self, device: str, exclude: str | None) -> list[ModelRecord]:
        return [r for r in self._models.values()
                if r.alias != exclude and r.state == "ready" and not r.pinned and r.users == 0
                and r.bytes.get(device, 0) > 0]

    def plan_admission(self, device: str, need: int, exclude: str | None = None) -> list[ModelRecord]:
        """Return the idle models to evict so that ``need`` bytes fit on ``device``.

        Rule: fits when ``used + need ≤ budget`` and ``need ≤ 80% of (free + what eviction
        frees)``. Chooses, among idle unpinned models, the smallest set that frees enough,
        preferring least recently used (greedy over LRU order, then dropping any model the rest
        already cover).

        Raises:
            ResourceError: it cannot fit even after evicting every idle model.
        """
        with self._lock:
            budget = self.budget(device)
            used = self.used(device, exclude=exclude)
            _, free = _device_capacity(device)

            def fits(freed: int) -> bool:
                return used - freed + need <= budget and need <= self.FREE_FRACTION * (free + freed)

            if fits(0):
                return []
            chosen, freed = [], 0
            for r in sorted(self._evictable(device, exclude), key=lambda r: r.last_used):
                chosen.append(r)
                freed += r.bytes.get(device, 0)
                if fits(freed):
                    break
            if not fits(freed):
                raise ResourceError(
                    f"{format_size(need)} does not fit on {device}: budget {format_size(budget)}, "
                    f"in use {format_size(used)}, free {format_size(free)}, evictable {format_size(freed)}; "
                    f"raise it with `%llm budget --{device.split(':')[0]} SIZE` or `%llm unload ALIAS`")
            for r in sorted(chosen, key=lambda r: r.bytes.get(device, 0)):  # drop the redundant
                rest = freed - r.bytes.get(device, 0)
                if fits(rest):
                    chosen.remove(r)
                    freed = rest
            return chosen

    # -------------------------------------------------------------------- load
    def load(self, spec: str, *, alias: str | None = None, task: str | None = None, labels=None,
             dtype: str | None = None, device: str | None = None, attn: str | None = None,
             replace: bool = False, pin: bool = False, keep_alive: float | None = None,
             trust_remote_code: bool = False, allow_pickle: bool = False, notify=print) -> ModelRecord:
        """Estimate, admit (evicting if needed), load and register a model under ``alias``.

        ``replace=True`` swaps the model behind an existing alias (hot swap); calls already
        running on the old one finish on it. On any error nothing is registered and the memory
        is given back.

        Raises:
            UsageError: alias taken without ``replace``.
            ResourceError: it does not fit the budget even after eviction.
            LLMOSError: the source cannot be loaded.
        """
        from ..models import loading

        alias = alias or spec.rstrip("/").split("/")[-1].removesuffix(".gguf")
        with self._lock:
            old = self._models.get(alias)
            if old is not None and not replace:
                raise UsageError(f"alias '{alias}' is already loaded; use `--as OTHER` or `--replace`")
            if old is not None and old.state == "loading":
                raise UsageError(f"'{alias}' is still loading; wait for it, then retry")
        est = loading.estimate(spec, task, dtype)
        dev = device or est["device"]
        victims = self.plan_admission(dev, est["bytes"], exclude=alias if replace else None)
        for v in victims:
            freed = self.unload(v.alias, reason="evict")
            notify(f"llmos: evicted '{v.alias}' ({format_size(freed['measured_bytes'])} on {dev}) "
                   f"to make room for '{alias}' ({format_size(est['bytes'])})")
        rec = ModelRecord(alias=alias, source=spec, task=est["task"], dtype=est["dtype"], device=dev,
                          params=est["params"], estimated_bytes=est["bytes"], pinned=pin, keep_alive=keep_alive)
        key = alias if not replace or old is None else f"{alias} (loading)"
        with self._lock:
            self._models[key] = rec
        self.events.emit("loading", alias=alias, estimated_bytes=est["bytes"], device=dev)
        try:
            loaded = loading.load(spec, task, labels=labels, dtype=dtype, device=device,
                                  attn_implementation=attn, trust_remote_code=trust_remote_code,
                                  allow_pickle=allow_pickle)
        except BaseException as e:
            with self._lock:
                self._models.pop(key, None)
            rec.model = rec.tokenizer = None
            gc.collect()
            self._empty_caches()
            self.events.emit("error", alias=alias, message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            if isinstance(e, MemoryError) and not isinstance(e, LLMOSError):
                raise ResourceError(f"out of memory while loading '{alias}'; nothing was kept — "
                                    f"free memory with `%llm unload ALIAS` or lower `%llm budget`") from None
            raise
        from .memory import module_bytes

        rec.model, rec.tokenizer = loaded.model, loaded.tokenizer
        rec.task, rec.dtype, rec.device = loaded.task, loaded.dtype, loaded.device
        rec.params, rec.load_s, rec.labels = loaded.params, loaded.load_s, loaded.labels
        rec.quantization = loaded.quantization
        rec.bytes = module_bytes(loaded.model)
        rec.state, rec.last_used = "ready", time.time()
        with self._lock:
            self._models.pop(key, None)
            self._models[alias] = rec
        if replace and old is not None:
            self._retire(old)
        self.events.emit("load", alias=alias, bytes=rec.bytes, params=rec.params, load_s=rec.load_s)
        return rec

    def _retire(self, old: ModelRecord) -> None:
        """Free a replaced model once its in-flight users are done."""
        def wait_then_free():
            while old.users > 0:
                time.sleep(0.05)
            self._free_record(old)

        if old.users == 0:
            self._free_record(old)
        else:
            threading.Thread(target=wait_then_free, daemon=True, name=f"llmos-retire-{old.alias}").start()

    # ------------------------------------------------------------------ use
    @contextlib.contextmanager
    def use(self, alias: str):
        """Hold ``alias`` for the duration of a call or job (it cannot be evicted or unloaded)."""
        with self._lock:
            rec = self.get(alias)
            rec.users += 1
            rec.use_count += 1
            rec.last_used = time.time()
        try:
            yield rec
        finally:
            with self._lock:
                rec.users -= 1
                rec.last_used = time.time()

    def pin(self, alias: str, pinned: bool = True) -> ModelRecord:
        """Pin (never evicted) or unpin ``alias``."""
        rec = self.get(alias)
        rec.pinned = pinned
        self.events.emit("pin", alias=alias, pinned=pinned)
        return rec

    # --------------------------------------------------------------- unload
    def _empty_caches(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        _malloc_trim()

    def _free_record(self, rec: ModelRecord) -> None:
        model = rec.model
        targets = set()
        if model is not None:
            targets = {id(model), id(rec.tokenizer), id(rec)}
            targets |= {id(m) for m in model.modules()}
            _release_tensors(model)
        rec.model = rec.tokenizer = None
        rec.chat_history = []
        _forget_in_ipython(targets)
        _forget_last_error()
        del model
        gc.collect()
        self._empty_caches()

    def unload(self, alias: str, *, reason: str = "unload") -> dict:
        """Unload ``alias`` and give its memory back.

        Returns:
            ``{"alias", "measured_bytes" (the model's tensors), "rss_freed" (process RSS drop,
            bytes), "reason"}``.

        Raises:
            NotFoundError: unknown alias.
            UsageError: the model is in use by a running call or job.
        """
        with self._lock:
            rec = self.get(alias)
            if rec.users > 0:
                raise UsageError(f"'{alias}' is in use by a running call or job; cancel it first (`%llm jobs`)")
            self._models.pop(alias, None)
        measured = sum(rec.bytes.values())
        rss0 = process_rss()
        self._free_record(rec)
        rss1 = process_rss()
        self.events.emit("unload" if reason == "unload" else "evict", alias=alias, bytes=measured,
                         rss_freed=rss0 - rss1)
        return {"alias": alias, "measured_bytes": measured, "rss_freed": rss0 - rss1, "reason": reason}
