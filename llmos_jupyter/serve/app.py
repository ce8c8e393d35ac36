"""The FastAPI application of ``%llm serve``: routes, authentication, body limit, SSE streaming.

``create_app(hub)`` builds the app over a :class:`~.server.Hub` (the server's settings, token,
counters and per-model queues). Routes (all under ``/v1``, all need ``Authorization: Bearer
TOKEN``):

=========================  =============================================================
``GET  /v1/models``        the served models (``id`` = the kernel's alias), with task and engine
``POST /v1/chat/completions``  chat (``stream`` → SSE ``data: {chunk}`` lines, then ``data: [DONE]``)
``POST /v1/completions``   text completion (one prompt), streamed the same way
``POST /v1/embeddings``    strings or token ids → vectors (``float`` or ``base64``)
``POST /v1/classify``      labels and probabilities from a ``seq-cls`` model (vLLM's shape)
=========================  =============================================================

Streaming follows OpenAI's chunks
(https://platform.openai.com/docs/api-reference/chat-streaming): the first chunk carries
``delta.role = "assistant"``; the chunk with the last piece of text carries ``finish_reason``
(``stop`` or ``length``; one piece is held back until the next arrives, so the last one is
known); with ``stream_options.include_usage`` every chunk has ``usage: null`` and one extra
final chunk has empty ``choices`` and the ``usage`` (what LangChain's usage accounting reads;
langchainjs PR #5761). A client that goes away mid-stream cancels its decode at the next token.

The body is read by the route itself (capped at ``max_body_bytes`` → 413), decoded and checked
with the models of :mod:`.protocol`, so every mistake is one 400 naming the field. Nothing in a
request is executed or read from disk; CORS headers are not sent (browsers on other origins
cannot call it), and there are no OpenAPI/docs routes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json

from fastapi import FastAPI, Request  # this module is imported only when a server starts
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .workers import Ticket, need_task

POLL_S = 0.25  # how often a request waiting in the queue checks that its client is still there
DRAIN_BYTES = 64 * 2**20  # an over-long body is read (and dropped) up to this, so the client sees the 413


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def create_app(hub):
    """The FastAPI app serving ``hub``'s models (see the module docstring)."""
    app = FastAPI(title="llmos", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app, hub)
    _add_model_routes(app, hub)
    _add_generation_routes(app, hub)
    _add_embed_classify_routes(app, hub)
    return app


# ---------------------------------------------------------------------- errors, auth, body
def _error_response(err: P.APIError):
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _add_error_handlers(app, hub) -> None:
    @app.exception_handler(P.APIError)
    async def _api_error(request, exc: P.APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        msg = (
            (
                "no such route; this server has GET /v1/models and POST /v1/chat/completions, /v1/completions, "
                "/v1/embeddings, /v1/classify"
            )
            if exc.status_code == 404
            else str(exc.detail)
        )
        return _error_response(P.APIError(exc.status_code, msg))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        hub.log(f"llmos serve: unexpected {type(exc).__name__}: {exc}")
        return _error_response(P.APIError(500, f"llmos failed: {type(exc).__name__}", code="internal_error"))


def _authorize(hub, request: Request) -> None:
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if not auth:
        raise P.APIError(
            401,
            "missing API key; pass the token `%llm serve` printed as api_key (header Authorization: Bearer TOKEN)",
            code="missing_api_key",
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), hub.token.encode()):
        raise P.APIError(
            401,
            "invalid API key; use the token of this server's current start (`%llm serve status` shows it)",
            code="invalid_api_key",
        )


async def _body_of(hub, request: Request, model: type):
    """The authorized request's body, read up to ``max_body_bytes`` (413 past it), parsed as ``model``."""
    _authorize(hub, request)
    cap = hub.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n <= cap:
            chunks.append(chunk)
        elif n > DRAIN_BYTES:
            break
    if n > cap or (declared.isdigit() and int(declared) > cap):
        raise P.APIError(
            413,
            f"the request body is {n:,} bytes; this server takes at most {cap:,} "
            f"(split the input over several requests)",
            code="request_too_large",
        )
    return P.parse(model, b"".join(chunks))


# ---------------------------------------------------------------------- tickets
def _ticket(hub, kind: str, alias: str, payload: dict) -> tuple[Ticket, asyncio.Queue]:
    """Submit one job to ``alias``'s worker; its events arrive on the returned queue."""
    loop, q = asyncio.get_running_loop(), asyncio.Queue()

    def post(ev):
        try:
            loop.call_soon_threadsafe(q.put_nowait, ev)
        except RuntimeError:  # the loop closed: the server stopped
            pass

    t = Ticket(kind, alias, payload, post)
    hub.submit(t)
    return t, q


async def _next_event(request: Request, t: Ticket, q: asyncio.Queue):
    """The next event of ``t``; cancels it and returns None if the client went away."""
    while True:
        try:
            return await asyncio.wait_for(q.get(), POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                t.cancel.set()
                return None


# ---------------------------------------------------------------------- models
def _add_model_routes(app, hub) -> None:
    @app.get("/v1/models")
    async def list_models(request: Request):
        _authorize(hub, request)
        return JSONResponse(P.ModelList(data=hub.model_cards()).model_dump())

    @app.get("/v1/models/{alias}")
    async def get_model(alias: str, request: Request):
        _authorize(hub, request)
        for card in hub.model_cards():
            if card.id == alias:
                return JSONResponse(card.model_dump())
        hub.resolve(alias)  # raises the 404 with its hint
        raise P.APIError(404, f"model '{alias}' is not served", param="model", code="model_not_found")


# ---------------------------------------------------------------------- generation
def _settings_of(req: P._Sampling, limit):
    from ..models.engines.base import GenerationSettings

    return GenerationSettings(
        max_new_tokens=limit if limit is not None else 1 << 30,
        temperature=req.temperature or 0.0,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stops,
    ).check()


def _add_generation_routes(app, hub) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generation(hub, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generation(hub, request, chat=False)


async def _generation(hub, request: Request, chat: bool):
    """One chat or text completion: queued on the model's worker, answered whole or streamed."""
    req = await _body_of(hub, request, P.ChatCompletionRequest if chat else P.CompletionRequest)
    checked = req.check()
    need_task(hub.resolve(req.model), "causal-lm", "/v1/chat/completions" if chat else "/v1/completions")
    payload = {"settings": _settings_of(req, req.limit if chat else req.max_tokens)}
    payload["messages" if chat else "prompt"] = checked
    t, q = _ticket(hub, "chat" if chat else "completion", req.model, payload)
    first = await _next_event(request, t, q)
    if first is None:
        return JSONResponse({}, status_code=499)
    if first[0] == "error":
        return _error_response(first[1])
    prompt_tokens = first[1]["prompt_tokens"]
    ident, created = P.new_id("chatcmpl" if chat else "cmpl"), P.now()
    if req.stream:
        return StreamingResponse(
            _stream(t, q, req, chat, ident, created, prompt_tokens),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _whole_answer(request, t, q, req, chat, ident, created, prompt_tokens)


async def _whole_answer(
    request, t: Ticket, q: asyncio.Queue, req, chat: bool, ident: str, created: int, prompt_tokens: int
):
    """The JSON response of a non-streamed completion (499 if the client went away)."""
    parts = []
    while True:
        ev = await _next_event(request, t, q)
        if ev is None:
            return JSONResponse({}, status_code=499)
        if ev[0] == "piece":
            parts.append(ev[1])
        elif ev[0] == "error":
            return _error_response(ev[1])
        else:
            stats = ev[1]
            break
    text = "".join(parts)
    usage = P.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=stats.completion_tokens,
        total_tokens=prompt_tokens + stats.completion_tokens,
    )
    if chat:
        out = P.ChatCompletion(
            id=ident,
            created=created,
            model=req.model,
            usage=usage,
            choices=[P.ChatChoice(message=P.ChatMessageOut(content=text), finish_reason=stats.finish_reason)],
        )
    else:
        out = P.Completion(
            id=ident,
            created=created,
            model=req.model,
            usage=usage,
            choices=[P.CompletionChoice(text=text, finish_reason=stats.finish_reason)],
        )
    return JSONResponse(out.model_dump())


async def _stream(t: Ticket, q: asyncio.Queue, req, chat: bool, ident: str, created: int, prompt_tokens: int):
    """SSE lines of one streamed answer (see the module docstring for the chunk rules)."""
    usage_null = {"usage": None} if req.include_usage else {}
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text, finish=None, role=False):
        if chat:
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return (
            "data: "
            + _dumps(
                {
                    "id": ident,
                    "object": obj,
                    "created": created,
                    "model": req.model,
                    "system_fingerprint": None,
                    "choices": [choice],
                    **usage_null,
                }
            )
            + "\n\n"
        )

    try:
        if chat:
            yield chunk("", role=True)
        held = None
        while True:
            ev = await q.get()
            if ev[0] == "piece":
                if held is not None:
                    yield chunk(held)
                held = ev[1]
            elif ev[0] == "error":
                yield "data: " + _dumps(ev[1].body()) + "\n\n"
                return
            else:
                stats = ev[1]
                yield chunk(held, finish=stats.finish_reason)
                if req.include_usage:
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": stats.completion_tokens,
                        "total_tokens": prompt_tokens + stats.completion_tokens,
                    }
                    yield (
                        "data: "
                        + _dumps(
                            {
                                "id": ident,
                                "object": obj,
                                "created": created,
                                "model": req.model,
                                "system_fingerprint": None,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                        + "\n\n"
                    )
                yield "data: [DONE]\n\n"
                return
    finally:  # a client gone mid-stream closes this generator: its decode stops at the next token
        t.cancel.set()


# ---------------------------------------------------------------------- embed, classify
async def _one_shot(hub, request: Request, kind: str, alias: str, payload: dict):
    """The result of one embed/classify job; None if the client went away, its APIError raised."""
    need_task(
        hub.resolve(alias),
        "embedding" if kind == "embed" else "seq-cls",
        "/v1/embeddings" if kind == "embed" else "/v1/classify",
    )
    t, q = _ticket(hub, kind, alias, payload)
    ev = await _next_event(request, t, q)
    if ev is None:
        return None
    if ev[0] == "error":
        raise ev[1]
    return ev[1]


def _add_embed_classify_routes(app, hub) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = await _body_of(hub, request, P.EmbeddingRequest)
        inputs, token_ids = req.check()
        res = await _one_shot(hub, request, "embed", req.model, {"inputs": inputs, "token_ids": token_ids})
        if res is None:
            return JSONResponse({}, status_code=499)
        return JSONResponse(_embedding_list(req, res).model_dump())

    @app.post("/v1/classify")
    async def classify(request: Request):
        req = await _body_of(hub, request, P.ClassifyRequest)
        inputs = req.check()
        res = await _one_shot(hub, request, "classify", req.model, {"inputs": inputs})
        if res is None:
            return JSONResponse({}, status_code=499)
        return JSONResponse(_classification_list(req, res).model_dump())


def _embedding_list(req: P.EmbeddingRequest, res: dict) -> P.EmbeddingList:
    vectors = res["vectors"]
    if req.dimensions is not None and req.dimensions != vectors.shape[1]:
        raise P.APIError(
            400,
            f"dimensions={req.dimensions}, but '{req.model}' gives {vectors.shape[1]}-"
            f"dimensional vectors; leave dimensions out",
            param="dimensions",
        )
    if req.encoding_format == "base64":  # little-endian float32, as the openai client decodes it
        data = [
            P.Embedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode())
            for i, v in enumerate(vectors)
        ]
    else:
        data = [P.Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    usage = P.EmbeddingUsage(prompt_tokens=res["tokens"], total_tokens=res["tokens"])
    return P.EmbeddingList(data=data, model=req.model, usage=usage)


def _classification_list(req: P.ClassifyRequest, res: dict) -> P.ClassificationList:
    labels, probs = res["labels"], res["probs"]
    data = []
    for i, p in enumerate(probs):
        k = int(p.argmax())
        data.append(
            P.Classification(
                index=i,
                label=labels[k],
                probs=[float(x) for x in p],
                scores={labels[j]: float(p[j]) for j in range(len(labels))},
                num_classes=len(labels),
            )
        )
    usage = P.EmbeddingUsage(prompt_tokens=res["tokens"], total_tokens=res["tokens"])
    return P.ClassificationList(id=P.new_id("classify"), created=P.now(), model=req.model, data=data, usage=usage)
