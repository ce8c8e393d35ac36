"""The HTTP protocol of ``%llm serve``: request and response schemas per route, and errors.

The single source of truth for what the server accepts and returns. Shapes follow OpenAI's API
reference (https://platform.openai.com/docs/api-reference/chat, ``/completions``,
``/embeddings``, ``/models``), as vLLM's ``entrypoints/openai/protocol.py`` and
llama-cpp-python's ``server/types.py`` model them with pydantic:

* unknown request fields are ignored (clients send many optional ones); known fields that
  llmos does not implement are refused with a 400 naming the field when they ask for something
  other than the default (``n`` > 1, ``logprobs``, ``tools``, penalties ≠ 0 …);
* every error is ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status of
  :class:`APIError` (one message, naming the fix);
* ``POST /v1/classify`` (not an OpenAI route; shaped like vLLM's ``/classify``) classifies text
  with a ``seq-cls`` model.

Nothing here imports torch or the engines; :func:`parse` turns a JSON body into a checked model.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROLES = ("system", "user", "assistant", "developer")  # developer: OpenAI's newer name for system


# ---------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``, the body of every non-2xx answer."""

    error: ErrorBody


_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answer: HTTP ``status`` and one ``message``; ``param`` names the field at fault.

    Args:
        status: 400 bad request, 401 missing/wrong token, 404 unknown model or route, 413 body
            too large, 503 queue full / model busy, 500 a failure of llmos (never a user's mistake).
        message: one line naming the fix.
        param: the request field at fault (``"messages[1].role"``), if any.
        code: a short machine-readable reason (``model_not_found``, ``invalid_api_key`` …).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, " ".join(str(message).split()), param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return ErrorResponse(
            error=ErrorBody(
                message=self.message,
                type=_ERROR_TYPE.get(self.status, "server_error"),
                param=self.param,
                code=self.code,
            )
        ).model_dump()


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 naming ``param``."""
    return APIError(400, message, param=param, code=code)


# --------------------------------------------------------------------------- requests
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: str
    text: Optional[str] = None


class ChatMessage(_Request):
    role: str
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def text(self, i: int) -> str:
        """The message's text (a list of text parts is joined); refuses images, audio, tools."""
        if self.content is None:
            raise bad(f"messages[{i}].content is missing; give the message's text", f"messages[{i}].content")
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise bad(
                    f"messages[{i}].content[{j}] is a '{part.type}' part; this server takes text parts only",
                    f"messages[{i}].content[{j}].type",
                )
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields chat and text completions share."""

    model: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    n: Optional[int] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict] = None
    user: Optional[str] = None

    def check_sampling(self, max_tokens: int | None) -> None:
        """Refuse values outside their range and options llmos does not implement (400)."""
        if max_tokens is not None and max_tokens < 1:
            name = "max_completion_tokens" if getattr(self, "max_completion_tokens", None) is not None else "max_tokens"
            raise bad(
                f"{name} must be at least 1 (got {max_tokens}); leave it out to generate until the end "
                f"token or the context window",
                name,
            )
        if self.n not in (None, 1):
            raise bad(f"n must be 1 (got {self.n}); send {self.n} requests instead", "n")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise bad(f"temperature must be between 0 and 2 (got {self.temperature}); 0 is greedy", "temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1] (got {self.top_p})", "top_p")
        if self.seed is not None and self.seed < 0:
            raise bad(f"seed must be ≥ 0 (got {self.seed})", "seed")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise bad("stop takes up to 4 non-empty strings", "stop")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad(f"{name} is not supported by this server; leave it out", name)
        if self.logit_bias:
            raise bad("logit_bias is not supported by this server; leave it out", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise bad("stream_options goes with stream=true", "stream_options")

    @property
    def stops(self) -> tuple:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list] = None
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None

    def check(self) -> list[dict]:
        """Validate; return the messages as ``[{"role", "content"}]`` (``developer`` → ``system``)."""
        self.check_sampling(self.limit)
        if self.logprobs:
            raise bad("logprobs is not supported by this server; leave it out", "logprobs")
        if self.tools or self.tool_choice not in (None, "none"):
            raise bad("tools are not supported by this server; leave tools and tool_choice out", "tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad("response_format other than text is not supported by this server", "response_format")
        if not self.messages:
            raise bad('messages is empty; send at least one {"role": "user", "content": ...} message', "messages")
        out = []
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise bad(
                    f"messages[{i}].role '{m.role}' is not one of system, user, assistant, developer",
                    f"messages[{i}].role",
                )
            out.append({"role": "system" if m.role == "developer" else m.role, "content": m.text(i)})
        if out[-1]["role"] == "user" and isinstance(out[-1]["content"], str) and not out[-1]["content"].strip():
            raise bad("the last user message is empty; write something to answer", f"messages[{len(out) - 1}].content")
        if out[-1]["role"] == "assistant":
            raise bad(
                "the last message is the assistant's; end with a user message to get an answer",
                f"messages[{len(out) - 1}].role",
            )
        return out

    @property
    def limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (one prompt per request)."""

    prompt: Union[str, list[str]]
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None
    logprobs: Optional[int] = None

    def check(self) -> str:
        """Validate; return the prompt text."""
        self.check_sampling(self.max_tokens)
        for name in ("echo", "suffix", "logprobs"):
            if getattr(self, name):
                raise bad(f"{name} is not supported by this server; leave it out", name)
        if self.best_of not in (None, 1):
            raise bad("best_of must be 1", "best_of")
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad(f"prompt is a list of {len(prompt)}; send one prompt per request", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise bad("prompt is empty; give some text to continue", "prompt")
        return prompt


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: a string, a list of strings, a list of token ids or a list of
    lists of token ids (ids of the model's own vocabulary)."""

    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None

    def check(self) -> tuple[list, bool]:
        """Validate; return ``(inputs, are_token_ids)`` — a list of strings or of id lists."""
        x = self.input
        if isinstance(x, str):
            x = [x]
        if not x:
            raise bad("input is empty; give a string, a list of strings or token ids", "input")
        if all(isinstance(v, int) for v in x):
            x = [x]
        ids = not isinstance(x[0], str)
        if ids and any(not seq for seq in x):
            raise bad("input has an empty list of token ids", "input")
        if len(x) > 2048:
            raise bad(f"input has {len(x)} items; send at most 2048 per request", "input")
        if not ids:
            _no_empty_text(x)
        return list(x), ids


class ClassifyRequest(_Request):
    """``POST /v1/classify``: labels and probabilities from a ``seq-cls`` model."""

    model: str
    input: Union[str, list[str]]

    def check(self) -> list[str]:
        x = [self.input] if isinstance(self.input, str) else list(self.input)
        if not x:
            raise bad("input is empty; give a string or a list of strings", "input")
        if len(x) > 2048:
            raise bad(f"input has {len(x)} items; send at most 2048 per request", "input")
        _no_empty_text(x)
        return x


def _no_empty_text(texts: list, param: str = "input") -> None:
    """An empty or whitespace-only text is refused, as ``api.embed`` / ``api.classify`` refuse it."""
    for i, t in enumerate(texts):
        if isinstance(t, str) and not t.strip():
            where = param if len(texts) == 1 else f"{param}[{i}]"
            raise bad(f"{where} is an empty text; give some words", param)


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Decode a JSON body into ``model``.

    Raises:
        APIError: 400 for malformed JSON (with the position) or the first field that fails
            validation (its path as ``param``).
    """
    try:
        data = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise bad(f"the body is a JSON {type(data).__name__}; send a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _loc(err.get("loc", ()))
        if err.get("type") == "missing":
            raise bad(f"{loc} is required", loc) from None
        raise bad(f"{loc}: {err.get('msg', 'invalid value')}", loc) from None


def _loc(loc: tuple) -> str:
    """``("messages", 0, "role")`` → ``messages[0].role`` (pydantic's union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not any(c in part for c in "[]-"):
            out += ("." if out else "") + part
    return out or "body"


# --------------------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: Optional[str] = None
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: Optional[str] = None
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Optional[str] = None


class Completion(BaseModel):
    """A text completion; also each streamed chunk (``object`` stays ``text_completion``, as OpenAI sends)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: Optional[str] = None
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # str: base64 of little-endian float32


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Classification(BaseModel):
    index: int
    label: str
    probs: list[float]
    scores: dict[str, float]
    num_classes: int


class ClassificationList(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Classification]
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmos"
    task: str = Field(description="causal-lm | seq-cls | embedding: which routes serve it")
    engine: str
    context_length: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    """``chatcmpl-…`` / ``cmpl-…`` / ``classify-…`` ids, as OpenAI names them."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
