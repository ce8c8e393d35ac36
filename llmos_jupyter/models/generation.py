"""Text generation with streaming: ``generate`` (plain prompt) and ``chat`` (chat template).

Streaming runs ``model.generate`` in a worker thread with transformers'
``TextIteratorStreamer`` (https://huggingface.co/docs/transformers/internal/generation_utils#transformers.TextIteratorStreamer)
and yields text pieces to the caller as they are produced. If ``generate`` raises in the
worker (C11), the stream is closed at once and the caller gets the real error as one line; the
model stays usable.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator

from ..errors import LLMOSError, UsageError


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` (``[{"role", "content"}]``) with the tokenizer's chat template.

    Raises:
        LLMOSError: the tokenizer has no chat template (C10) — one line naming the fix.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise LLMOSError("this model's tokenizer has no chat template, so chat cannot format turns; "
                         "use `%llm generate ALIAS PROMPT` for plain completion, or load an instruct/chat model")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError("each chat message must be a dict with 'role' and 'content'")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors from a template (e.g. roles it does not allow)
        raise LLMOSError(f"the chat template rejected these messages: {str(e).splitlines()[0][:160]}") from None


def _gen_kwargs(max_new_tokens, temperature, top_p, do_sample, extra) -> dict:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be a whole number ≥ 1, got {max_new_tokens!r}")
    if do_sample is None:
        do_sample = bool(temperature and temperature > 0)
    kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        kw["temperature"] = float(temperature or 1.0)
        if top_p is not None:
            kw["top_p"] = float(top_p)
    kw.update(extra or {})
    return kw


def stream(model, tokenizer, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
           top_p: float | None = None, do_sample: bool | None = None, timeout: float = 300.0,
           add_special_tokens: bool = True, **extra) -> Iterator[str]:
    """Yield the decoded continuation of ``prompt`` piece by piece as it is generated.

    Greedy by default (``temperature=0``). The worker thread keeps the calling cell as its
    output parent. Errors raised by ``generate`` come back here within about a second as
    :class:`LLMOSError` (one line), and the stream ends (C11).

    Raises:
        UsageError: bad generation settings detected before starting.
        LLMOSError: ``generate`` failed in the worker.
    """
    import torch
    from transformers import TextIteratorStreamer

    kw = _gen_kwargs(max_new_tokens, temperature, top_p, do_sample, extra)
    if kw.get("num_beams", 1) > 1:
        raise UsageError("beam search cannot stream; drop num_beams or use stream=False")
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    failure: list[BaseException] = []

    from ..resources.jobs import keep_output_parent

    @keep_output_parent
    def work():
        try:
            with torch.inference_mode():
                model.generate(**enc, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **kw)
        except BaseException as e:  # hand it to the caller, then close the stream
            failure.append(e)
            streamer.on_finalized_text("", stream_end=True)

    worker = threading.Thread(target=work, daemon=True, name="llmos-generate")
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        worker.join(timeout=5)
    if failure:
        e = failure[0]
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LLMOSError(f"generation failed: {type(e).__name__}: {msg[:200]}")


def complete(model, tokenizer, prompt: str, *, on_text: Callable[[str], None] | None = None, **kw) -> str:
    """Run :func:`stream` to the end, calling ``on_text(piece)`` for each piece; return the text."""
    parts = []
    for piece in stream(model, tokenizer, prompt, **kw):
        parts.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(parts)
