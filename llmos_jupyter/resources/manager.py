"""The resource manager: the one owner of loaded models in this kernel.

Policy (see docs/architecture.md, "Resources"):

* **Estimate before load** (:func:`llmos_jupyter.models.loading.estimate`), then **admit** when
  the estimate fits the device budget (default 90% of the device's memory) *and* is ≤ 80% of
  the memory free right now (Ollama's scheduler rule).
* Otherwise **evict** idle models — never pinned, never in use — choosing the smallest set that
  frees enough, least recently used first. Each eviction is reported in one line.
* **Unload really frees**: the manager's references, IPython's output history (``Out``,
  ``_``, ``__``, ``___``, ``_N``), ``sys.last_traceback``, and the tensors' storage itself (so
  autograd graphs that still point at the weights do not keep them); then ``gc`` and the
  allocator caches. The memory that came back is measured and reported.
* **Offload before unload**: an evicted model that sits on a GPU moves to the CPU (state
  ``offloaded``) when the CPU budget admits it without evicting anything there; the next call
  (:meth:`ModelManager.use`) moves it back, evicting or offloading others on the GPU if needed.
  On the CPU, or when the CPU is full, eviction unloads.
* **Keep-alive** (Ollama's ``keep_alive``): ``None`` (``-1``, the notebook default) keeps a model
  until it is unloaded; ``N`` seconds unloads it after N idle seconds (a daemon reaper thread,
  started only while such a model exists); ``0`` unloads it right after each call. The reaper
  never touches a pinned or in-use model and reports each unload in one line (stderr + event).
* **Training is exclusive**: while a job trains a model (``use(alias, exclusive=job_id)``), other
  calls on that model are refused with one line naming the job; other models are served.
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

from ..errors import LLMOSError, ResourceError, UsageError, opt, unknown
from .events import EventBus
from .memory import format_duration, format_size, parse_duration, parse_size, process_rss


@dataclass
class ModelRecord:
    """What the manager knows about one model: its alias, source, task, engine, device, state, memory and use."""

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
    keep_alive: float | None = None  # seconds idle before unload; None = forever; 0 = after each call
    home_device: str | None = None  # where it was loaded (an offloaded model returns there)
    exclusive: str | None = None  # id of the job training it (other calls are refused)
    labels: list | None = None
    quantization: str | None = None
    model: object = None
    tokenizer: object = None
    chat_history: list = field(default_factory=list)
    run_id: str | None = None  # the fine-tuning run that produced the current weights, if any
    engine: str = "transformers"  # which engine serves generate/chat: transformers | llama.cpp
    server: object = None  # the Engine instance (llama.cpp), or a cached TransformersEngine
    real_bytes: dict = field(default_factory=dict)  # what holding it really costs, per device (RSS/CUDA delta)
    n_ctx: int | None = None  # context window (positions) of the serving engine
    threads: int | None = None  # llama.cpp decode threads
    gguf_path: str | None = None  # the GGUF file llama.cpp serves (or transformers loaded)
    attached_from: tuple | None = None  # (bytes, real_bytes, dtype, run_id) before attach_weights
    last_generation: dict | None = None  # tokens, tokens/s, time to first token of the last call
    noted: set = field(default_factory=set)  # one-time notes already shown for this model (e.g. "head")
    optimized: dict | None = None  # the recipe of an optimised copy: {"from", "quantize", "prune", ...}

    def inference(self):
        """The :class:`~llmos_jupyter.models.engines.base.Engine` that serves generate/chat: the
        llama.cpp engine, or a transformers engine over the current ``model`` (re-made when the
        model object changed, e.g. wrapped by LoRA)."""
        if self.engine == "llama.cpp":
            return self.server
        if self.server is None or getattr(self.server, "model", None) is not self.model:
            from ..models.engines.hf import TransformersEngine

            self.server = TransformersEngine(self.model, self.tokenizer)
        return self.server

    def cost(self, device: str) -> int:
        """Bytes this model holds on ``device``: the real cost when measured, else tensor bytes."""
        return self.real_bytes.get(device) or self.bytes.get(device, 0)

    def summary(self) -> dict:
        """JSON-safe view for ``%llm ps``, widgets and the side panel."""
        return {
            "alias": self.alias,
            "task": self.task,
            "source": self.source,
            "state": self.state,
            "dtype": self.dtype,
            "device": self.device,
            "params": self.params,
            "estimated_bytes": self.estimated_bytes,
            "bytes": dict(self.bytes),
            "pinned": self.pinned,
            "users": self.users,
            "use_count": self.use_count,
            "keep_alive": self.keep_alive,
            "last_used": self.last_used,
            "load_s": self.load_s,
            "labels": self.labels,
            "quantization": self.quantization,
            "home_device": self.home_device,
            "training": self.exclusive,
            "expires_at": self.expires_at(),
            "engine": self.engine,
            "real_bytes": dict(self.real_bytes),
            "n_ctx": self.n_ctx,
            "threads": self.threads,
            "last_generation": dict(self.last_generation) if self.last_generation else None,
            "optimized": dict(self.optimized) if self.optimized else None,
        }

    def expires_at(self) -> float | None:
        """Epoch seconds at which the reaper unloads this model if it stays idle; ``None`` when it
        never expires on a timer (forever, ``keep_alive=0``, pinned)."""
        if self.keep_alive is None or self.keep_alive <= 0 or self.pinned:
            return None
        return self.last_used + self.keep_alive

    def expired(self, now: float) -> bool:
        """Due for the reaper at ``now``: idle, unpinned, not training, and past its keep-alive
        (``keep_alive=0`` models count once they have served a call)."""
        if self.state not in ("ready", "offloaded") or self.pinned or self.users > 0 or self.exclusive:
            return False
        if self.keep_alive == 0:
            return self.use_count > 0
        exp = self.expires_at()
        return exp is not None and now >= exp


def _device_capacity(device: str) -> tuple[int, int]:
    """``(total, free)`` bytes of ``device`` now (psutil for CPU, CUDA's mem_get_info for GPUs)."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total), int(free)
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def _device_allocated(device: str) -> int | None:
    """Bytes the CUDA caching allocator has handed out on ``device`` (``None`` for the CPU, or when
    torch is not imported yet: this never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated(torch.device(device)))


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


def gguf_file(src) -> str:
    """The path of the GGUF file of a resolved source.

    Raises:
        UsageError: the source is not a GGUF file.
    """
    import os

    if not getattr(src, "gguf_file", None):
        raise UsageError(
            f"{src.spec} is not a GGUF file; llama.cpp serves GGUF files (load with {opt('engine', 'transformers')})"
        )
    return os.path.join(src.path, src.gguf_file)


def _real_usage(device: str | None) -> dict:
    """What the process holds now: ``{"cpu": RSS}`` plus ``{"cuda:N": reserved}`` for a GPU
    ``device`` (glibc's free lists handed back first, so the figure is what is really held)."""
    _malloc_trim()
    out = {"cpu": process_rss()}
    torch = sys.modules.get("torch")
    if device and str(device).startswith("cuda") and torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize(torch.device(device))
        out[str(device)] = int(torch.cuda.memory_reserved(torch.device(device)))
    return out


SMALL_MODEL_BYTES = 16 * 2**20  # below this, an RSS delta is mostly allocator noise (MiBs either way)


def _real_delta(before: dict, after: dict, tensor_bytes: dict, estimate: int | None = None) -> dict:
    """Real cost per device where the model's tensors are: the growth of RSS (CPU) or of the
    CUDA reserved pool between ``before`` and ``after``; never below the tensor bytes there
    (another thread may have freed memory meanwhile). For a model under
    :data:`SMALL_MODEL_BYTES` of tensors, the growth is allocator noise (glibc arenas, CUDA's
    2 MiB blocks), so the pre-load ``estimate`` of the real cost is kept instead when given."""
    out = {}
    for dev, n in tensor_bytes.items():
        if n < SMALL_MODEL_BYTES and estimate is not None:
            out[dev] = max(int(n), int(estimate))
            continue
        grown = after.get(dev, 0) - before.get(dev, 0)
        out[dev] = max(int(grown), int(n))
    return out


class ModelManager:
    """Owns the models of this kernel; thread-safe.

    Args:
        events: the bus to emit on (a new one by default).

    Attributes:
        budgets: bytes allowed per device (``{"cpu": n, "cuda:0": m}``); unset devices default to
            90% of their total memory.
    """

    BUDGET_FRACTION = 0.90  # default budget: 90% of the device's memory
    FREE_FRACTION = 0.80  # admit only when the estimate is ≤ 80% of free memory (Ollama)
    REAP_MAX_SLEEP_S = 5.0  # the reaper wakes at the next expiry, or at least this often

    def __init__(self, events: EventBus | None = None):
        self.events = events or EventBus()
        self._lock = threading.RLock()
        self._models: dict[str, ModelRecord] = {}
        self.budgets: dict[str, int] = {}
        self._reaper: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

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
            raise unknown(
                "model",
                alias,
                self.aliases(),
                f"load it with `%llm load NAME --as {alias}`; `%llm ps` lists what is loaded",
            )
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
        """Set the budget of ``device`` (``"cpu"``, ``"cuda:0"``) from a size such as ``"8GiB"``;
        ``None`` puts back the default (:data:`BUDGET_FRACTION` of its memory). Returns the bytes."""
        with self._lock:
            if size is None:
                self.budgets.pop(device, None)
            else:
                self.budgets[device] = parse_size(size)
        n = self.budget(device)
        self.events.emit("budget", device=device, bytes=n)
        return n

    def used(self, device: str, exclude: str | None = None) -> int:
        """Bytes the manager's models hold on ``device`` (measured, or estimated while loading)."""
        with self._lock:
            total = 0
            for r in self._models.values():
                if r.alias == exclude:
                    continue
                if r.bytes or r.real_bytes:
                    total += r.cost(device)
                elif r.device == device and r.estimated_bytes:
                    total += r.estimated_bytes
            return total

    # ---------------------------------------------------------------- admission
    def _evictable(self, device: str, exclude: str | None) -> list[ModelRecord]:
        return [
            r
            for r in self._models.values()
            if r.alias != exclude
            and r.state in ("ready", "offloaded")
            and not r.pinned
            and r.users == 0
            and not r.exclusive
            and r.cost(device) > 0
        ]

    def eviction_action(self, rec: ModelRecord, device: str) -> str:
        """What evicting ``rec`` from ``device`` does: ``"offload"`` (move it to the CPU) when
        ``device`` is a GPU and the CPU admits its bytes without evicting anything there (CPU
        budget and the 80%-of-free rule); otherwise ``"unload"``. CPU-only machines always unload."""
        nbytes = rec.bytes.get(device, 0)
        if device == "cpu" or rec.state != "ready" or nbytes <= 0:
            return "unload"
        try:
            return "offload" if not self.plan_admission("cpu", nbytes, exclude=rec.alias) else "unload"
        except ResourceError:
            return "unload"

    def _evict(self, rec: ModelRecord, device: str, for_alias: str, need: int, notify) -> dict:
        """Offload or unload ``rec`` to make room on ``device``; reports one line via ``notify``."""
        if self.eviction_action(rec, device) == "offload":
            r = self.offload(rec.alias)
            notify(
                f"llmos: offloaded '{rec.alias}' to cpu ({format_size(r['measured_bytes'])} off {device}) "
                f"to make room for '{for_alias}' ({format_size(need)}); the next call moves it back"
            )
            return r
        r = self.unload(rec.alias, reason="evict")
        notify(
            f"llmos: evicted '{rec.alias}' ({format_size(r['real_bytes'])} on {device}) "
            f"to make room for '{for_alias}' ({format_size(need)})"
        )
        return r

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
                freed += r.cost(device)
                if fits(freed):
                    break
            if not fits(freed):
                raise ResourceError(
                    f"{format_size(need)} does not fit on {device}: budget {format_size(budget)}, "
                    f"in use {format_size(used)}, free {format_size(free)}, evictable {format_size(freed)}; "
                    f"raise it with `%llm budget --{device.split(':')[0]} SIZE` or `%llm unload ALIAS`"
                )
            for r in sorted(chosen, key=lambda r: r.cost(device)):  # drop the redundant
                rest = freed - r.cost(device)
                if fits(rest):
                    chosen.remove(r)
                    freed = rest
            return chosen

    # -------------------------------------------------------------------- load
    def load(
        self,
        spec: str,
        *,
        alias: str | None = None,
        task: str | None = None,
        labels=None,
        dtype: str | None = None,
        device: str | None = None,
        attn: str | None = None,
        replace: bool = False,
        pin: bool = False,
        keep_alive: float | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        engine: str | None = None,
        n_ctx: int | None = None,
        threads: int | None = None,
        notify=print,
    ) -> ModelRecord:
        """Estimate, admit (evicting if needed), load and register a model under ``alias``.

        ``engine`` (``auto`` | ``transformers`` | ``llama.cpp``, see
        :func:`llmos_jupyter.models.engines.choose`) picks what serves it; ``n_ctx`` and
        ``threads`` size a llama.cpp context (default: ``min(context_length, 4096)`` and the
        physical cores). Admission uses the estimated *real* cost (tensors + tokenizer for
        transformers; weights + KV cache + buffers for llama.cpp); after the load the real cost
        is measured (process RSS delta; CUDA reserved delta on a GPU) into ``real_bytes``.

        ``replace=True`` swaps the model behind an existing alias (hot swap); calls already
        running on the old one finish on it. On any error nothing is registered and the memory
        is given back.

        Raises:
            UsageError: alias taken without ``replace``; an engine that cannot serve this source
                or task; ``n_ctx`` beyond the model's limit.
            ResourceError: it does not fit the budget even after eviction.
            LLMOSError: the source cannot be loaded; the engine is not installed.
        """
        from ..models import engines, loading
        from .hardware import check_device, check_dtype

        keep_alive = parse_duration(keep_alive)
        dtype = check_dtype(dtype)  # one line naming the dtypes / devices there are, before anything loads
        if device not in (None, "auto", "cpu"):
            device = check_device(device)
        alias = alias or str(spec).rstrip("/").split("/")[-1].removesuffix(".gguf")
        old = self._check_alias(alias, replace)
        src = loading.resolve_source(spec)
        task = loading.resolve_task(src, task)  # the catalog's, the architectures'; an encoder never generates
        eng = engines.choose(engine, kind=src.kind, task=task, spec=spec, notify=lambda m: print(m, file=sys.stderr))
        est, dtype = self._estimate(eng, src, spec, task, dtype=dtype, device=device, n_ctx=n_ctx, threads=threads)
        dev = device if device not in (None, "auto") else est["device"]
        need = est["real_bytes"]
        with self._lock:
            victims = self.plan_admission(dev, need, exclude=alias if replace else None)
            for v in victims:
                self._evict(v, dev, alias, need, notify)
        rec = ModelRecord(
            alias=alias,
            source=spec,
            task=est["task"],
            dtype=est["dtype"],
            device=dev,
            params=est["params"],
            estimated_bytes=need,
            pinned=pin,
            keep_alive=keep_alive,
            home_device=dev,
            engine=eng,
        )
        key = alias if not replace or old is None else f"{alias} (loading)"
        with self._lock:
            self._models[key] = rec
        self.events.emit("loading", alias=alias, estimated_bytes=need, device=dev, engine=eng)
        self._load_weights(
            rec,
            key,
            src,
            spec,
            task,
            labels=labels,
            dtype=dtype,
            device=device,
            attn=attn,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            n_ctx=n_ctx,
            threads=threads,
        )
        rec.state, rec.last_used = "ready", time.time()
        with self._lock:
            self._models.pop(key, None)
            self._models[alias] = rec
        if replace and old is not None:
            self._retire(old)
        self.events.emit(
            "load",
            alias=alias,
            bytes=rec.bytes,
            real_bytes=rec.real_bytes,
            params=rec.params,
            load_s=rec.load_s,
            keep_alive=rec.keep_alive,
            engine=rec.engine,
        )
        if keep_alive is not None and keep_alive > 0:
            self._ensure_reaper()
        return rec

    def _check_alias(self, alias: str, replace: bool) -> ModelRecord | None:
        """The record ``alias`` holds now (None if free); refuses a taken alias without
        ``replace``, one still loading, or one a fine-tune holds."""
        with self._lock:
            old = self._models.get(alias)
            if old is not None and not replace:
                raise UsageError(f"alias '{alias}' is already loaded; use `--as OTHER` or `--replace`")
            if old is not None and old.state == "loading":
                raise UsageError(f"'{alias}' is still loading; wait for it, then retry")
            if old is not None and old.exclusive:  # swapping weights under a running fine-tune
                raise UsageError(
                    f"'{alias}' is being fine-tuned by {old.exclusive}; wait with `%llm job wait "
                    f"{old.exclusive}`, stop it with `%llm job cancel {old.exclusive}`, or load as another alias"
                )
        return old

    @staticmethod
    def _estimate(eng: str, src, spec: str, task: str, *, dtype, device, n_ctx, threads) -> tuple[dict, str | None]:
        """``(estimate, dtype)`` before anything loads: the llama.cpp plan of the GGUF (weights + KV
        cache + buffers), or transformers' meta-device estimate (with the dtype the load will pick
        for an explicit device). Refuses options the chosen engine does not take."""
        from ..models import loading

        if eng == "llama.cpp":
            if device not in (None, "auto", "cpu"):
                raise UsageError(
                    f"this build of the llama.cpp engine runs on the cpu; drop {opt('device', device)}, "
                    f"or load with {opt('engine', 'transformers')} {opt('device', device)}"
                )
            if dtype is not None:
                raise UsageError(
                    f"llama.cpp serves the GGUF's own weights ({src.gguf_file}), so {opt('dtype', dtype)} "
                    f"does not apply; drop it, or load with {opt('engine', 'transformers')} "
                    f"{opt('dtype', dtype)}"
                )
            from ..models.engines import llamacpp

            plan = llamacpp.plan(gguf_file(src), n_ctx)
            return {
                "params": plan["params"],
                "bytes": plan["tensor_bytes"],
                "real_bytes": plan["bytes"],
                "dtype": "gguf",
                "device": "cpu",
                "task": "causal-lm",
            }, dtype
        if n_ctx is not None or threads is not None:
            raise UsageError(
                f"{opt('n_ctx')} and {opt('threads')} size a llama.cpp context; drop them for "
                f"{opt('engine', 'transformers')}"
            )
        if device not in (None, "auto") and dtype in (None, "auto"):
            from .hardware import choose_device_dtype  # the dtype the load will pick for that device

            dtype = choose_device_dtype(device, None)[1]
        return loading.estimate(spec, task, dtype), dtype

    def _load_weights(
        self,
        rec: ModelRecord,
        key: str,
        src,
        spec: str,
        task: str,
        *,
        labels,
        dtype,
        device,
        attn,
        trust_remote_code: bool,
        allow_pickle: bool,
        n_ctx,
        threads,
    ) -> None:
        """Load the admitted record's weights with its engine. On any error the record is
        dropped, its memory given back, an ``error`` event sent, and a MemoryError becomes one
        ResourceError line."""
        try:
            if rec.engine == "llama.cpp":
                self._load_llamacpp(rec, gguf_file(src), n_ctx=n_ctx, threads=threads)
            else:
                self._load_transformers(
                    rec,
                    spec,
                    task,
                    labels=labels,
                    dtype=dtype,
                    device=device,
                    attn_implementation=attn,
                    trust_remote_code=trust_remote_code,
                    allow_pickle=allow_pickle,
                )
                if getattr(src, "gguf_file", None):
                    rec.gguf_path = gguf_file(src)  # its tokenizer metadata travels into a GGUF export
        except BaseException as e:
            with self._lock:
                self._models.pop(key, None)
            self._free_record(rec)
            self.events.emit("error", alias=rec.alias, message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            if isinstance(e, MemoryError) and not isinstance(e, LLMOSError):
                raise ResourceError(
                    f"out of memory while loading '{rec.alias}'; nothing was kept — "
                    f"free memory with `%llm unload ALIAS` or lower `%llm budget`"
                ) from None
            raise

    def make_room(self, device: str, need: int, for_alias: str, *, exclude: str | None = None, notify=print) -> None:
        """Evict idle models until ``need`` bytes fit on ``device`` (the rule of
        :meth:`plan_admission`), one line per eviction via ``notify``.

        Raises:
            ResourceError: it cannot fit even after evicting every idle model (nothing evicted).
        """
        with self._lock:
            for v in self.plan_admission(device, need, exclude=exclude):
                self._evict(v, device, for_alias, need, notify)

    def register(
        self,
        alias: str,
        model,
        tokenizer,
        *,
        source: str,
        task: str,
        real_bytes: dict,
        labels=None,
        dtype: str | None = None,
        quantization: str | None = None,
        optimized: dict | None = None,
        run_id: str | None = None,
        keep_alive=None,
        notify=print,
    ) -> ModelRecord:
        """Register a model built in this process (an optimised copy, say) under a new ``alias``,
        like a load: admitted on its measured real cost (evicting idle models as for a load),
        then served, listed, evicted, kept alive and unloaded like any other.

        Args:
            model / tokenizer: the transformers model (on its device, eval mode) and tokenizer.
            source / task / labels / dtype / quantization: as for a loaded model (``source``
                says where it came from, e.g. ``"minilm (optimize: int8)"``).
            real_bytes: what building it cost, per device (RSS / CUDA growth measured by the
                caller the way :meth:`load` measures, see :func:`_real_delta`).
            optimized: the recipe that made it (shown by ``ps`` and the side panel).
            run_id: the run that produced it (``export`` writes its manifest).
            keep_alive: as for :meth:`load`.

        Raises:
            UsageError: ``alias`` is taken. ResourceError: it does not fit even after evicting
                every idle model (nothing is registered; the caller still owns ``model``).
        """
        from .memory import count_params, module_bytes

        keep_alive = parse_duration(keep_alive)
        tensors = module_bytes(model)
        device = next(iter(tensors), "cpu")
        real = {d: max(int(real_bytes.get(d, 0)), int(n)) for d, n in tensors.items()}
        with self._lock:
            if alias in self._models:
                raise UsageError(
                    f"alias '{alias}' is already loaded; pick another with --as NAME or `%llm unload {alias}` first"
                )
            self.make_room(device, real.get(device, 0), alias, exclude=alias, notify=notify)
            rec = ModelRecord(
                alias=alias,
                source=source,
                task=task,
                state="ready",
                dtype=dtype,
                device=device,
                params=count_params(model),
                estimated_bytes=real.get(device),
                bytes=tensors,
                real_bytes=real,
                load_s=0.0,
                keep_alive=keep_alive,
                home_device=device,
                labels=labels,
                quantization=quantization,
                model=model,
                tokenizer=tokenizer,
                run_id=run_id,
                optimized=dict(optimized) if optimized else None,
            )
            if task == "causal-lm":
                rec.n_ctx = rec.inference().n_ctx
            self._models[alias] = rec
        self.events.emit(
            "load",
            alias=alias,
            bytes=rec.bytes,
            real_bytes=rec.real_bytes,
            params=rec.params,
            load_s=0.0,
            keep_alive=rec.keep_alive,
            engine=rec.engine,
            optimized=rec.optimized,
        )
        if keep_alive is not None and keep_alive > 0:
            self._ensure_reaper()
        return rec

    def _load_transformers(self, rec: ModelRecord, spec: str, task, **kw) -> None:
        """Load with transformers into ``rec`` and measure what it really cost."""
        from ..models import loading
        from .memory import module_bytes

        loading.prepare(spec)  # libraries imported first: their memory is not the model's
        before = _real_usage(kw.get("device"))
        loaded = loading.load(spec, task, **kw)
        rec.model, rec.tokenizer = loaded.model, loaded.tokenizer
        rec.task, rec.dtype, rec.device = loaded.task, loaded.dtype, loaded.device
        rec.home_device = loaded.device
        rec.params, rec.load_s, rec.labels = loaded.params, loaded.load_s, loaded.labels
        rec.quantization = loaded.quantization
        rec.bytes = module_bytes(loaded.model)
        rec.real_bytes = _real_delta(before, _real_usage(loaded.device), rec.bytes, rec.estimated_bytes)
        if rec.task == "causal-lm":
            rec.n_ctx = rec.inference().n_ctx

    def _load_llamacpp(self, rec: ModelRecord, path: str, *, n_ctx=None, threads=None) -> None:
        """Load a GGUF with llama.cpp into ``rec`` (weights paged in by one decode) and measure
        what it really cost."""
        import llama_cpp  # noqa: F401  (the library's own memory is not the model's)

        from ..models.engines.llamacpp import LlamaCppEngine, physical_cores

        t0 = time.perf_counter()
        before = _real_usage("cpu")
        server = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=threads or physical_cores())
        rec.server = server
        server.warm_up()
        fp = server.footprint()
        rec.gguf_path, rec.n_ctx, rec.threads = path, server.n_ctx, server.n_threads
        rec.bytes = dict(fp["tensor_bytes"])
        rec.real_bytes = _real_delta(before, _real_usage("cpu"), rec.bytes)
        rec.quantization, rec.device, rec.home_device = "gguf", "cpu", "cpu"
        rec.load_s = time.perf_counter() - t0

    def attach_weights(self, alias: str, notify=print) -> ModelRecord:
        """Give a llama.cpp alias the transformers weights of the GGUF it serves (dequantised to
        float32), for fine-tuning, loss evaluation and Hugging Face export; a no-op when it
        has them. Admission as for a load: the estimated real cost must fit (evicting idle
        models); the measured cost is added to the alias's ``real_bytes``.

        Raises:
            NotFoundError: unknown alias. UsageError: the alias is in use.
            ResourceError: the weights do not fit. LLMOSError: transformers cannot read the GGUF.
        """
        from ..models import loading
        from .memory import module_bytes

        rec = self.get(alias)
        if rec.model is not None:
            return rec
        if rec.users > 0 or rec.exclusive:
            raise UsageError(f"'{alias}' is serving a call or a job; retry when it is idle")
        est = loading.estimate(rec.gguf_path, "causal-lm", "float32")
        with self._lock:
            for v in self.plan_admission("cpu", est["real_bytes"] + rec.cost("cpu"), exclude=alias):
                self._evict(v, "cpu", alias, est["real_bytes"], notify)
        loading.prepare(rec.gguf_path)
        before = _real_usage("cpu")
        loaded = loading.load(rec.gguf_path, "causal-lm", dtype="float32", device="cpu")
        tensors = module_bytes(loaded.model)
        real = _real_delta(before, _real_usage("cpu"), tensors)
        with self._lock:
            rec.attached_from = (dict(rec.bytes), dict(rec.real_bytes), rec.dtype, rec.run_id)
            rec.model, rec.tokenizer = loaded.model, loaded.tokenizer
            rec.bytes = {"cpu": rec.bytes.get("cpu", 0) + tensors.get("cpu", 0)}
            rec.real_bytes = {"cpu": rec.cost("cpu") + real.get("cpu", 0)}
            rec.dtype = "gguf + float32"
        self.events.emit("weights", alias=alias, bytes=rec.bytes, real_bytes=rec.real_bytes)
        return rec

    def detach_weights(self, alias: str) -> bool:
        """Drop the transformers weights :meth:`attach_weights` gave a llama.cpp alias: it serves
        its GGUF as before, and its bytes, real cost and dtype go back to what they were. Nothing
        happens (False) when the alias is gone, a job trains it, or a fine-tune has changed those
        weights since (they are then the alias's trained weights, kept).

        Returns:
            True when the weights were dropped.
        """
        with self._lock:
            rec = self._models.get(alias)
            if rec is None or rec.attached_from is None or rec.model is None or rec.exclusive:
                return False
            bytes_, real, dtype, run_id = rec.attached_from
            if rec.run_id != run_id:
                return False
            model, rec.model, rec.tokenizer, rec.attached_from = rec.model, None, None, None
            rec.bytes, rec.real_bytes, rec.dtype = bytes_, real, dtype
        _forget_in_ipython({id(model)} | {id(m) for m in model.modules()})
        del model
        gc.collect()
        self._empty_caches()
        self.events.emit("weights", alias=alias, bytes=rec.bytes, real_bytes=rec.real_bytes)
        return True

    @contextlib.contextmanager
    def borrowed_weights(self, alias: str, needed: bool = True, notify=print):
        """For the block: the transformers weights of llama.cpp alias ``alias`` (see
        :meth:`attach_weights`), dropped again after it when this block attached them (an
        export, a loss evaluation, an optimize; a fine-tune keeps them: they become its result).
        Yields True when this block attached them; a no-op (False) for a transformers alias, an
        alias that has them already, or ``needed=False``.

        Raises:
            as :meth:`attach_weights`.
        """
        rec = self.get(alias)
        attach = needed and rec.model is None and rec.engine == "llama.cpp"
        if attach:
            self.attach_weights(alias, notify)
        try:
            yield attach
        finally:
            if attach:
                self.detach_weights(alias)

    def swap_gguf(self, rec: ModelRecord, path: str) -> None:
        """Serve ``rec`` (a llama.cpp alias) from the GGUF at ``path`` from now on (hot swap
        after a fine-tune): a new llama.cpp context with the same ``n_ctx`` and threads, the old
        one closed, the conversation cleared; the real cost changes by the measured RSS change.

        Raises:
            LLMOSError: llama.cpp cannot load ``path`` (the old context keeps serving).
        """
        from ..models.engines.llamacpp import LlamaCppEngine

        old = rec.server
        cost0, before = rec.cost("cpu"), _real_usage("cpu")["cpu"]
        old_tensors = old.footprint()["tensor_bytes"].get("cpu", 0) if old is not None else 0
        new = LlamaCppEngine(path, n_ctx=rec.n_ctx, n_threads=rec.threads)
        new.warm_up()
        with self._lock:
            rec.server, rec.gguf_path, rec.chat_history = new, str(path), []
            rec.bytes = {"cpu": rec.bytes.get("cpu", 0) - old_tensors + new.footprint()["tensor_bytes"]["cpu"]}
        if old is not None:
            old.close()
        with self._lock:
            rec.real_bytes = {"cpu": max(rec.bytes["cpu"], cost0 + _real_usage("cpu")["cpu"] - before)}
        self.events.emit("swap", alias=rec.alias, path=str(path), bytes=rec.bytes, real_bytes=rec.real_bytes)

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
    def use(self, alias: str, *, exclusive: str | None = None, notify=print):
        """Hold ``alias`` for the duration of a call or job (it cannot be evicted or unloaded).

        An offloaded model is moved back to its device first (evicting or offloading idle models
        there if needed; one line via ``notify``). ``exclusive`` (a job id) marks the model as
        being trained: until the block ends every other ``use`` of it is refused. With
        ``keep_alive=0`` the model is unloaded when the last user leaves.

        Raises:
            NotFoundError: unknown alias.
            UsageError: the model is being trained by a job (or, for ``exclusive``, is serving calls).
            ResourceError: an offloaded model no longer fits its device.
        """
        with self._lock:
            rec = self.get(alias)
            if rec.exclusive is not None and rec.exclusive != exclusive:
                raise UsageError(
                    f"'{alias}' is being fine-tuned by {rec.exclusive}; wait with "
                    f"`%llm job wait {rec.exclusive}`, stop it with `%llm job cancel {rec.exclusive}`, "
                    f"or load a second copy with `%llm load {rec.source} --as OTHER`"
                )
            if exclusive is not None and rec.users > 0:
                raise UsageError(f"'{alias}' is serving {rec.users} running call(s); train it when they finish")
            if rec.state == "offloaded":
                self._restore(rec, notify)
            if exclusive is not None:
                rec.exclusive = exclusive
            rec.users += 1
            rec.use_count += 1
            rec.last_used = time.time()
        try:
            yield rec
        finally:
            with self._lock:
                rec.users -= 1
                rec.last_used = time.time()
                if exclusive is not None:
                    rec.exclusive = None
                after_call = rec.keep_alive == 0 and rec.expired(rec.last_used) and self._models.get(alias) is rec
            if after_call:
                self._expire(rec, "after the call")
            elif rec.keep_alive:
                self._wake.set()

    def pin(self, alias: str, pinned: bool = True) -> ModelRecord:
        """Pin (never evicted) or unpin ``alias``."""
        rec = self.get(alias)
        with self._lock:
            rec.pinned = pinned
            rec.last_used = time.time() if not pinned else rec.last_used  # unpinning restarts the clock
        self.events.emit("pin", alias=alias, pinned=pinned)
        self._wake.set()
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
        server, rec.server = rec.server, None
        if server is not None and getattr(server, "name", None) == "llama.cpp":
            server.close()
        del server
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
            ``{"alias", "measured_bytes" (the model's tensors), "real_bytes" (its real cost, what
            admission counted), "rss_freed" (process RSS drop, bytes), "reason"}``.

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
        real = sum(rec.cost(d) for d in rec.bytes)
        gpus = [d for d in rec.bytes if d != "cpu"]
        alloc0 = {d: _device_allocated(d) for d in gpus}
        rss0 = process_rss()
        self._free_record(rec)
        rss1 = process_rss()
        device_freed = {d: a - _device_allocated(d) for d, a in alloc0.items() if a is not None}
        kind = {"unload": "unload", "evict": "evict", "keep-alive": "expire"}.get(reason, "unload")
        self.events.emit(
            kind, alias=alias, bytes=measured, rss_freed=rss0 - rss1, device_freed=device_freed, reason=reason
        )
        return {
            "alias": alias,
            "measured_bytes": measured,
            "real_bytes": real,
            "rss_freed": rss0 - rss1,
            "device_freed": device_freed,
            "reason": reason,
        }

    # -------------------------------------------------------------- offload
    def offload(self, alias: str) -> dict:
        """Move an idle model from its GPU to the CPU (state ``offloaded``); the next
        :meth:`use` moves it back.

        Returns:
            ``{"alias", "from", "measured_bytes" (bytes that left the GPU), "device_freed"
            (CUDA allocator drop, bytes; ``None`` off CUDA)}``.

        Raises:
            NotFoundError: unknown alias. UsageError: in use, training, or already on the CPU.
        """
        from .memory import module_bytes

        with self._lock:
            rec = self.get(alias)
            src = rec.device or "cpu"
            if rec.users > 0 or rec.exclusive:
                raise UsageError(f"'{alias}' is in use by a running call or job; offload it when it is idle")
            if rec.state != "ready" or src == "cpu" or rec.model is None:
                raise UsageError(f"'{alias}' is already on the cpu ({rec.state})")
            moved = rec.bytes.get(src, 0)
            alloc0 = _device_allocated(src)
            rec.model.to("cpu")
            rec.device, rec.state, rec.home_device = "cpu", "offloaded", rec.home_device or src
            rec.bytes = module_bytes(rec.model)
            rec.real_bytes = {}  # measured at load for its home device; tensor bytes until it is back
            gc.collect()
            self._empty_caches()
            alloc1 = _device_allocated(src)
        freed = None if alloc0 is None or alloc1 is None else alloc0 - alloc1
        self.events.emit("offload", alias=alias, device=src, bytes=moved, device_freed=freed)
        return {"alias": alias, "from": src, "measured_bytes": moved, "device_freed": freed}

    def _restore(self, rec: ModelRecord, notify) -> None:
        """Move an offloaded model back to its home device (caller holds the lock)."""
        from .memory import module_bytes

        home = rec.home_device or "cpu"
        need = sum(rec.bytes.values())
        for v in self.plan_admission(home, need, exclude=rec.alias):
            self._evict(v, home, rec.alias, need, notify)
        t0 = time.perf_counter()
        rec.model.to(home)
        rec.device, rec.state = home, "ready"
        rec.bytes = module_bytes(rec.model)
        rec.real_bytes = {}
        _malloc_trim()
        self.events.emit("restore", alias=rec.alias, device=home, bytes=rec.bytes, seconds=time.perf_counter() - t0)
        notify(f"llmos: moved '{rec.alias}' back to {home} ({format_size(need)}, {time.perf_counter() - t0:.2f} s)")

    # ------------------------------------------------------------- keep-alive
    def _expire(self, rec: ModelRecord, why: str, now: float | None = None) -> dict | None:
        """Unload ``rec`` for its keep-alive unless it became busy, pinned or replaced meanwhile
        (checked at ``now``, default the clock); reports one line on stderr (and the ``expire`` event)."""
        with self._lock:
            if self._models.get(rec.alias) is not rec or not rec.expired(time.time() if now is None else now):
                return None
            try:
                r = self.unload(rec.alias, reason="keep-alive")
            except LLMOSError:
                return None
        print(
            f"llmos: unloaded '{rec.alias}' {why} (keep-alive {format_duration(rec.keep_alive)}); "
            f"{format_size(r['real_bytes'])} released",
            file=sys.stderr,
            flush=True,
        )
        return r

    def reap(self, now: float | None = None) -> list[dict]:
        """Unload every model whose keep-alive has run out at ``now`` (default: the clock);
        never a pinned, in-use or training model. The reaper thread calls this; tests may too.

        Returns:
            The :meth:`unload` results, one per model unloaded.
        """
        now = time.time() if now is None else now
        with self._lock:
            due = [r for r in self._models.values() if r.expired(now)]
        out = []
        for r in due:
            res = self._expire(r, f"after {format_duration(round(now - r.last_used, 1))} idle", now)
            if res is not None:
                out.append(res)
        return out

    def _next_due_s(self) -> float | None:
        """Seconds until the next timed expiry; ``None`` when no model has a finite keep-alive."""
        with self._lock:
            timed = [r for r in self._models.values() if r.keep_alive is not None and r.keep_alive > 0]
            if not timed:
                return None
            due = [r.expires_at() for r in timed if r.expires_at() is not None and r.users == 0]
        return max(0.0, min(due) - time.time()) if due else self.REAP_MAX_SLEEP_S

    def _ensure_reaper(self) -> None:
        """Start the daemon reaper thread if it is not running (it stops when nothing is timed)."""
        with self._lock:
            self._wake.set()
            if self._closed or (self._reaper is not None and self._reaper.is_alive()):
                return
            self._reaper = threading.Thread(target=self._reap_loop, daemon=True, name="llmos-reaper")
            self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._closed:
            self._wake.clear()
            try:
                self.reap()
            except Exception:  # a reaper must never die of one bad record
                pass
            with self._lock:
                delay = self._next_due_s()
                if delay is None:
                    self._reaper = None
                    return
            self._wake.wait(min(max(delay, 0.02), self.REAP_MAX_SLEEP_S))

    def close(self) -> None:
        """Stop the reaper thread (models stay loaded)."""
        self._closed = True
        self._wake.set()
