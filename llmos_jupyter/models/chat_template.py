"""Chat templates, rendered the same way whichever engine serves the model.

* :func:`render_chat` renders with a transformers tokenizer's ``apply_chat_template``.
* :func:`render_template` renders a chat template given as text (a GGUF's
  ``tokenizer.chat_template``) the way transformers does — Jinja2's sandbox with
  ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``strftime_now`` and ``tojson``
  (https://huggingface.co/docs/transformers/main/en/chat_templating_writing) — without
  importing transformers, so the llama.cpp engine renders the same prompt token for token.
"""

from __future__ import annotations

from ..errors import LLMOSError, UsageError

NO_TEMPLATE = (
    "this model's tokenizer has no chat template, so chat cannot format turns; "
    "use `%llm generate ALIAS PROMPT` for plain completion, or load an instruct/chat model"
)


def check_messages(messages: list[dict]) -> None:
    """Raise one line unless every message is ``{"role": str, "content": str}``."""
    if not isinstance(messages, list) or not messages:
        raise UsageError("chat needs a non-empty list of messages [{'role': 'user', 'content': '...'}]")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError("each chat message must be a dict with 'role' and 'content'")


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` (``[{"role", "content"}]``) with the tokenizer's chat template.

    Raises:
        LLMOSError: the tokenizer has no chat template — one line naming the fix (transformers
            would raise a ValueError deep inside ``apply_chat_template``).
        UsageError: a message is not a ``{"role", "content"}`` dict.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise LLMOSError(NO_TEMPLATE)
    check_messages(messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors from a template (e.g. roles it does not allow)
        raise LLMOSError(f"the chat template rejected these messages: {str(e).splitlines()[0][:160]}") from None


_ENV: dict = {}


def _environment():
    """The Jinja2 environment transformers renders chat templates in (built once)."""
    if "env" not in _ENV:
        import json
        from datetime import datetime

        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _ENV["env"] = env
    return _ENV["env"]


def render_template(
    template: str | None, messages: list[dict], *, add_generation_prompt: bool = True, special: dict | None = None
) -> str:
    """Render ``messages`` with the Jinja chat ``template`` as transformers' ``apply_chat_template``
    does (same environment, same variables: ``messages``, ``add_generation_prompt`` and the
    special tokens in ``special``, e.g. ``{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}``).

    Raises:
        LLMOSError: no template (one line naming the fix), or the template rejected the messages.
        UsageError: a message is not a ``{"role", "content"}`` dict.
    """
    if not template:
        raise LLMOSError(NO_TEMPLATE)
    check_messages(messages)
    try:
        compiled = _environment().from_string(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **(special or {}))
    except Exception as e:
        raise LLMOSError(f"the chat template rejected these messages: {str(e).splitlines()[0][:160]}") from None
