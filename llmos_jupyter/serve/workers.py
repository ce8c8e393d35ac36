"""Per-model request queues and the threads that run them through the resource manager.

Every HTTP request becomes a :class:`Ticket` on the queue of its model (one
:class:`ModelWorker` per alias, started on the first request). The worker takes tickets in
arrival order and runs each inside ``manager.use(alias)`` — the same path a cell takes — so
keep-alive, pins, refcounts and eviction treat a served request like a cell's call, and a model
that is not loaded is never loaded here.

* **bounded**: at most ``max_queue`` tickets wait per model; one more is refused at once with
  503 and ``Retry-After`` (:class:`~.protocol.APIError`), never queued without bound;
* **batching** (transformers causal LMs): tickets that arrive together — waiting in the queue
  when the worker is free, or within ``batch_window_s`` of the first — with the same sampling
  settings are decoded in one ``generate`` (up to ``max_batch`` rows;
  :meth:`~llmos_jupyter.models.engines.hf.TransformersEngine.generate_batch`), each row left
  padded with its own mask, so every answer equals the one the prompt gets alone;
* **llama.cpp**: one ticket at a time (its context holds one sequence);
* **cancel**: a ticket's ``cancel`` event (set when the client goes away) stops its decoding at
  the next token and frees its slot; the model's refcount drops as soon as the row ends.

Events reach the request's asyncio task through ``loop.call_soon_threadsafe``: ``("start",
{"prompt_tokens"})``, ``("piece", text)``, ``("done", stats)``, ``("result", value)`` and
``("error", APIError)``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import ContextLengthError, LLMOSError, NotFoundError, ResourceError, UsageError, on_surface
from .protocol import APIError

IDLE_EXIT_S = 30.0  # a worker with nothing to do for this long ends its thread (a new one starts on demand)


@dataclass
class Ticket:
    """One request waiting for or running on its model.

    Attributes:
        kind: ``chat`` | ``completion`` | ``embed`` | ``classify``.
        payload: ``messages`` or ``prompt`` and ``settings`` (generation); ``inputs`` and
            ``token_ids`` (embed); ``inputs`` (classify).
        cancel: set when the client is gone; the decode stops at its next token.
    """

    kind: str
    alias: str
    payload: dict
    post: Callable[[tuple], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued | running | done
    created: float = field(default_factory=time.monotonic)

    def send(self, kind: str, value: Any = None) -> None:
        self.post((kind, value))


def to_api_error(e: BaseException, alias: str, during: str = "", *, param: str | None = None) -> APIError:
    """Map an llmos error to its HTTP answer: unknown model 404, user mistake 400 (an input longer
    than the context window: code ``context_length_exceeded`` on ``param``), training job or memory
    503, anything else 500 (a failure of llmos, never the user's)."""
    if isinstance(e, APIError):
        return e
    msg = str(e)
    if isinstance(e, ContextLengthError):
        return APIError(400, msg, param=param, code="context_length_exceeded")
    if isinstance(e, NotFoundError):
        return APIError(
            404,
            f"model '{alias}' is not loaded in the kernel{during}; load it there with "
            f"`%llm load NAME --as {alias}` (this server never loads models)",
            param="model",
            code="model_not_found",
        )
    if isinstance(e, UsageError) and "fine-tuned by" in msg:
        return APIError(
            503,
            f"'{alias}' is being fine-tuned in the kernel; retry when the job ends",
            code="model_busy",
            headers={"Retry-After": "5"},
        )
    if isinstance(e, UsageError):
        return APIError(400, msg)
    if isinstance(e, ResourceError):
        return APIError(503, msg, code="insufficient_memory")
    if isinstance(e, LLMOSError):
        return APIError(500 if msg.startswith("generation failed") else 400, msg)
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return APIError(500, f"llmos failed: {type(e).__name__}: {first[:200]}", code="internal_error")


ROUTES = {
    "causal-lm": "/v1/chat/completions or /v1/completions",
    "embedding": "/v1/embeddings",
    "seq-cls": "/v1/classify",
}


def need_task(rec, task: str, route: str) -> None:
    """Raise a 400 naming the right route when ``rec`` is not a ``task`` model."""
    if rec.task != task:

        def a(word: str) -> str:
            return ("an " if word[:1] in "aeiou" else "a ") + word

        raise APIError(
            400,
            f"'{rec.alias}' is {a(rec.task)} model and {route} needs {a(task)} model; "
            f"call {ROUTES.get(rec.task, 'another route')} with it",
            param="model",
            code="wrong_model_task",
        )


class ModelWorker:
    """The queue and the thread that serve one alias (see the module docstring).

    Args:
        hub: the server's shared state (manager, settings, counters).
        alias: the model this worker serves.
    """

    def __init__(self, hub, alias: str):
        self.hub, self.alias = hub, alias
        self.pending: collections.deque[Ticket] = collections.deque()
        self.running: list[Ticket] = []
        self.cond = threading.Condition()
        self.thread: Optional[threading.Thread] = None
        self.stopping = False
        self.holds: dict = {}  # id(ticket) -> its manager.use() context (the worker thread's only)

    # ----------------------------------------------------------------- queue
    def submit(self, ticket: Ticket) -> None:
        """Queue ``ticket`` (starting the thread if needed).

        Raises:
            APIError: 503 when ``max_queue`` tickets already wait for this model.
        """
        with self.cond:
            if self.stopping:
                raise APIError(503, "the server is stopping", code="server_stopping")
            if len(self.pending) >= self.hub.settings.max_queue:
                raise APIError(
                    503,
                    f"'{self.alias}' has {len(self.pending)} requests waiting (the queue's limit); retry shortly",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
            self.pending.append(ticket)
            self.cond.notify()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, daemon=True, name=f"llmos-serve-{self.alias}")
                self.thread.start()

    def counts(self) -> tuple[int, int]:
        """``(running, queued)`` tickets."""
        with self.cond:
            return len(self.running), len(self.pending)

    def stop(self) -> None:
        """Refuse new tickets, fail the waiting ones (503), cancel the running ones."""
        with self.cond:
            self.stopping = True
            waiting, self.pending = list(self.pending), collections.deque()
            for t in self.running:
                t.cancel.set()
            self.cond.notify_all()
        for t in waiting:
            self._fail(t, APIError(503, "the server stopped", code="server_stopping"))

    def _take(self) -> list[Ticket]:
        """Wait for work; return the tickets to run together ([] when the thread should end)."""
        s = self.hub.settings
        with self.cond:
            deadline = time.monotonic() + IDLE_EXIT_S
            while not self.pending and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.thread = None
                    return []
                self.cond.wait(left)
            if self.stopping:
                return []
            first = self.pending[0]
            if first.kind not in ("chat", "completion") or not self._batches():
                return [self.pending.popleft()]
            # a short window lets the rest of a burst of concurrent requests join this batch
            end = time.monotonic() + s.batch_window_s
            while len(self.pending) < s.max_batch and not self.stopping and time.monotonic() < end:
                self.cond.wait(max(end - time.monotonic(), 0.0))
            from ..models.engines.hf import _sampling_key

            first = self.pending[0]
            key = _sampling_key(first.payload["settings"])
            alone = not first.payload["settings"].greedy and first.payload["settings"].seed is not None
            batch = [self.pending.popleft()]
            if not alone:
                for t in list(self.pending):
                    if len(batch) >= s.max_batch:
                        break
                    st = t.payload["settings"] if t.kind in ("chat", "completion") else None
                    if st is not None and _sampling_key(st) == key and (st.greedy or st.seed is None):
                        self.pending.remove(t)
                        batch.append(t)
            return batch

    def _batches(self) -> bool:
        """Does this alias decode with transformers (so tickets can share one ``generate``)?"""
        try:
            rec = self.hub.manager.get(self.alias)
        except NotFoundError:
            return False
        return rec.engine == "transformers" and rec.task == "causal-lm" and self.hub.settings.max_batch > 1

    # ------------------------------------------------------------------ run
    def _loop(self) -> None:
        with on_surface("http"):  # hints name request fields, not %llm flags or Python keywords
            self._serve()

    def _serve(self) -> None:
        self.hub.detach_output()
        self.hub.set_threads()
        while True:
            batch = self._take()
            if not batch:
                return
            with self.cond:
                self.running.extend(batch)
                for t in batch:
                    t.state = "running"
            self.hub.changed()
            try:
                self._run(batch)
            except BaseException as e:  # a worker must survive anything one request does
                for t in batch:
                    self._fail(t, to_api_error(e, self.alias))
            finally:
                with self.cond:
                    for t in batch:
                        if t in self.running:
                            self.running.remove(t)
                self.hub.changed()

    def _fail(self, t: Ticket, err: APIError) -> None:
        if t.state != "done":
            self._release(t)
            t.state = "done"
            self.hub.count(t, error=True)
            t.send("error", err)

    def _finish(self, t: Ticket, kind: str, value: Any, tokens: int = 0) -> None:
        if t.state != "done":
            self._release(t)
            t.state = "done"
            self.hub.count(t, tokens=tokens)
            t.send(kind, value)

    def _release(self, t: Ticket) -> None:
        """Drop ``t``'s hold on the model and its slot *before* its client hears the end, so a
        cell that unloads the model right after a response never finds it in use."""
        cm = self.holds.pop(id(t), None)
        if cm is not None:
            cm.__exit__(None, None, None)
        with self.cond:
            if t in self.running:
                self.running.remove(t)
        self.hub.changed()

    def _run(self, batch: list[Ticket]) -> None:
        m = self.hub.manager
        rec = None
        try:
            for t in batch:  # one hold per request, as one call per cell
                if t.cancel.is_set():
                    self._fail(t, APIError(499, "the client closed the request", code="client_closed"))
                    continue
                try:
                    cm = m.use(self.alias, notify=self.hub.log)
                    rec = cm.__enter__()
                except BaseException as e:
                    self._fail(
                        t,
                        to_api_error(
                            e,
                            self.alias,
                            " (it was unloaded while the request waited)" if isinstance(e, NotFoundError) else "",
                        ),
                    )
                    continue
                self.holds[id(t)] = cm
            live = [t for t in batch if id(t) in self.holds]
            if not live:
                return
            kind = live[0].kind
            if kind in ("chat", "completion"):
                self._generate(rec, live)
            elif kind == "embed":
                self._embed(rec, live[0])
            else:
                self._classify(rec, live[0])
        finally:
            for t in batch:  # whatever happened, no hold outlives its request
                if id(t) in self.holds:
                    self._release(t)

    # ------------------------------------------------------------ generation
    def _need(self, rec, task: str, route: str) -> None:
        need_task(rec, task, route)

    def _prompt(self, engine, t: Ticket) -> tuple[str, bool]:
        """The text to continue and whether the tokenizer adds its special tokens."""
        if t.kind == "chat":
            return engine.render_chat(t.payload["messages"]), False
        return t.payload["prompt"], True

    def _generate(self, rec, batch: list[Ticket]) -> None:
        route = "/v1/chat/completions" if batch[0].kind == "chat" else "/v1/completions"
        engine = rec.inference()
        prepared = []
        for t in batch:
            try:
                self._need(rec, "causal-lm", route)
                prompt, special = self._prompt(engine, t)
                prepared.append((t, engine.prepare(prompt, t.payload["settings"], add_special_tokens=special)))
            except BaseException as e:
                self._fail(t, to_api_error(e, self.alias, param="messages" if t.kind == "chat" else "prompt"))
        if not prepared:
            return
        if rec.engine == "transformers":
            self._generate_batch(rec, engine, prepared)
            return
        for t, (ids, settings, stats) in prepared:  # llama.cpp: one sequence at a time
            if t.cancel.is_set():
                self._fail(t, APIError(499, "the client closed the request", code="client_closed"))
                continue
            stream = engine.stream(
                self._prompt(engine, t)[0], settings, add_special_tokens=t.kind != "chat", cancel=t.cancel
            )
            t.send("start", {"prompt_tokens": stream.stats.prompt_tokens})
            try:
                for piece in stream:
                    t.send("piece", piece)
            except BaseException as e:
                self._fail(t, to_api_error(e, self.alias))
            else:
                stream.close()
                self._done(rec, t, stream.stats)
            finally:
                stream.close()

    def _generate_batch(self, rec, engine, prepared: list) -> None:
        from ..models.engines.hf import BatchRow

        rows = []
        for t, (ids, settings, stats) in prepared:

            def on_done(t=t, stats=stats):  # the model's refcount drops as this row ends
                self._done(rec, t, stats)

            rows.append(
                BatchRow(
                    ids, settings, stats, on_piece=lambda s, t=t: t.send("piece", s), cancel=t.cancel, on_done=on_done
                )
            )
            t.send("start", {"prompt_tokens": stats.prompt_tokens})
        self.hub.batched(len(rows))
        try:
            engine.generate_batch(rows)
        except BaseException as e:
            err = to_api_error(e, self.alias)
            for t, _ in prepared:
                self._fail(t, err)

    def _done(self, rec, t: Ticket, stats) -> None:
        rec.last_generation = dict(stats.to_dict(), tokens=stats.completion_tokens)
        if stats.finish_reason == "cancelled":
            self._fail(t, APIError(499, "the client closed the request", code="client_closed"))
            return
        self._finish(t, "done", stats, tokens=stats.completion_tokens)

    # ------------------------------------------------------- embed, classify
    @staticmethod
    def _fit(rec, texts: list[str], max_length: int = 256) -> tuple[int, int]:
        """The rule for texts longer than an encoder reads, over HTTP. A cell reads the first
        ``min(max_length, the model's positions)`` tokens and prints a note (``models.text_limits.fit_texts``);
        no note reaches an HTTP client, so here such a text is refused with a 400 naming the first
        one (as OpenAI's embeddings route refuses an input over its limit), and every text that is
        accepted gets exactly the vectors or labels a cell gives. Returns ``(token limit, tokens in
        all)``."""
        from ..models.text_limits import model_positions

        limit = min(max_length, model_positions(rec))
        lengths = [len(ids) for ids in rec.tokenizer(list(texts), truncation=False)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > limit:
                raise APIError(
                    400,
                    f"input[{i}] is {n:,} tokens but '{rec.alias}' reads at most {limit:,} here; "
                    f"shorten it or split it over several inputs",
                    param="input",
                    code="context_length_exceeded",
                )
        return limit, sum(lengths)

    def _embed(self, rec, t: Ticket) -> None:
        from ..models.embedding import embed, embed_ids

        self._need(rec, "embedding", "/v1/embeddings")
        inputs, token_ids = t.payload["inputs"], t.payload["token_ids"]
        model = getattr(rec.model, "base_model", rec.model)
        tok = rec.tokenizer
        if token_ids:
            vocab = int(getattr(model.config, "vocab_size", 0) or len(tok))
            limit = int(getattr(model.config, "max_position_embeddings", 0) or 512)
            for i, seq in enumerate(inputs):
                bad_ids = [x for x in seq if not 0 <= x < vocab]
                if bad_ids:
                    raise APIError(
                        400,
                        f"input[{i}] has token id {bad_ids[0]} outside this model's vocabulary "
                        f"(0..{vocab - 1}); send text, or ids from its own tokenizer",
                        param="input",
                    )
                if len(seq) > limit:
                    raise APIError(
                        400,
                        f"input[{i}] has {len(seq)} tokens; this model takes at most {limit}",
                        param="input",
                        code="context_length_exceeded",
                    )
            vectors = embed_ids(model, inputs, pad_id=tok.pad_token_id)
            tokens = sum(len(seq) for seq in inputs)
        else:
            max_length, tokens = self._fit(rec, inputs)
            vectors = embed(model, tok, inputs, max_length=max_length)
        self._finish(t, "result", {"vectors": vectors, "tokens": tokens})

    def _classify(self, rec, t: Ticket) -> None:
        from ..models.classify import probabilities

        self._need(rec, "seq-cls", "/v1/classify")
        max_length, _ = self._fit(rec, t.payload["inputs"])
        probs, counts = probabilities(rec.model, rec.tokenizer, t.payload["inputs"], max_length=max_length)
        self._finish(t, "result", {"probs": probs, "labels": list(rec.labels or []), "tokens": sum(counts)})
